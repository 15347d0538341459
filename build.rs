//! Compiles every `kernels/*.cu` with nvcc into a fatbin (sm_90 SASS + compute_90 PTX) and embeds
//! them in the binary through `$OUT_DIR/kernels.rs`.
//!
//! nvcc is looked for in `$NVCC`, `$CUDA_HOME/bin`, `PATH`, then the project-local venv that
//! `scripts/install-nvcc` makes (`.venv-nvcc`, the pinned PyPI nvcc). Without nvcc the build still
//! succeeds as a CPU-only binary, with a warning; `MINDREADER_REQUIRE_KERNELS=1` (set by CI and the
//! README's test command) turns that into an error. A kernel that fails to compile always fails
//! the build. ptxas's register/spill report for each kernel is embedded too (`mindreader info`),
//! and, when `nvdisasm` sits beside nvcc (scripts/install-nvcc installs it), the number of
//! tensor-core instructions (HMMA, HGMMA) in each kernel's SASS, so a tensor-core kernel that
//! compiled to something else shows.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCH_FLAGS: &[&str] = &["-gencode=arch=compute_90,code=[sm_90,compute_90]"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "PATH", "MINDREADER_REQUIRE_KERNELS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    sources.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    sources.sort();
    for entry in fs::read_dir(&kernel_dir).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    let require = env::var("MINDREADER_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
    let mut table = String::new();
    let status;
    match find_nvcc(&manifest) {
        None => {
            status =
                "built without nvcc: no kernels embedded (CPU only). Run `scripts/install-nvcc` \
                      (pinned PyPI nvcc into .venv-nvcc) or set NVCC / CUDA_HOME, then rebuild."
                    .to_string();
            if require {
                panic!("MINDREADER_REQUIRE_KERNELS=1 but nvcc was not found (looked in $NVCC, $CUDA_HOME/bin, PATH, .venv-nvcc). Run scripts/install-nvcc.");
            }
            println!("cargo:warning=mindreader: nvcc not found; building a CPU-only binary. Run scripts/install-nvcc to embed the CUDA kernels.");
        }
        Some(nvcc) => {
            let version = nvcc_version(&nvcc);
            // Compile in parallel: one thread per kernel file.
            let results: Vec<(String, Result<String, String>)> = std::thread::scope(|s| {
                let handles: Vec<_> = sources
                    .iter()
                    .map(|src| {
                        let nvcc = &nvcc;
                        let out_dir = &out_dir;
                        let kernel_dir = &kernel_dir;
                        s.spawn(move || {
                            let name = src
                                .file_stem()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned();
                            (
                                name.clone(),
                                compile(
                                    nvcc,
                                    src,
                                    kernel_dir,
                                    &out_dir.join(format!("{name}.fatbin")),
                                ),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("nvcc thread"))
                    .collect()
            });
            let mut failures = String::new();
            for (name, res) in &results {
                match res {
                    Ok(report) => {
                        let report_path = out_dir.join(format!("{name}.ptxas.txt"));
                        fs::write(&report_path, report).expect("write ptxas report");
                        let cubin = out_dir.join(format!("keep-{name}/{name}.sm_90.cubin"));
                        let sass_path = out_dir.join(format!("{name}.sass.txt"));
                        fs::write(&sass_path, tensor_core_counts(&nvcc, &cubin))
                            .expect("write SASS counts");
                        writeln!(
                            table,
                            "    Kernel {{ family: {name:?}, fatbin: include_bytes!({fat:?}), ptxas: include_str!({rep:?}), sass: include_str!({sass:?}) }},",
                            fat = out_dir.join(format!("{name}.fatbin")).display().to_string(),
                            rep = report_path.display().to_string(),
                            sass = sass_path.display().to_string(),
                        )
                        .unwrap();
                    }
                    Err(e) => writeln!(failures, "--- kernels/{name}.cu ---\n{e}").unwrap(),
                }
            }
            if !failures.is_empty() {
                panic!("nvcc failed to compile kernels:\n{failures}");
            }
            status = format!(
                "compiled by {} ({version}) for sm_90 + compute_90 PTX",
                nvcc.display()
            );
        }
    }
    let generated = format!(
        "/// Every kernel family compiled into this binary.\npub static KERNELS: &[Kernel] = &[\n{table}];\n/// How the kernels were (or were not) built.\npub const NVCC_STATUS: &str = {status:?};\n"
    );
    fs::write(out_dir.join("kernels.rs"), generated).expect("write kernels.rs");
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = env::var("NVCC") {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        candidates.push(Path::new(&home).join("bin/nvcc"));
    }
    if let Ok(path) = env::var("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    if let Ok(libs) = fs::read_dir(manifest.join(".venv-nvcc/lib")) {
        for py in libs.flatten() {
            candidates.push(py.path().join("site-packages/nvidia/cu13/bin/nvcc"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn nvcc_version(nvcc: &Path) -> String {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().last().map(str::to_string))
        .unwrap_or_else(|| "unknown version".into())
}

/// `kernel count` lines: the tensor-core instructions (HMMA, HGMMA) of every kernel in the cubin's
/// SASS, by the nvdisasm beside nvcc; "unavailable" when there is none (or it fails).
fn tensor_core_counts(nvcc: &Path, cubin: &Path) -> String {
    let nvdisasm = nvcc.with_file_name("nvdisasm");
    let Some(sass) = Command::new(&nvdisasm)
        .arg(cubin)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
    else {
        return "unavailable\n".into();
    };
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in sass.lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix(".text.")
            .and_then(|l| l.strip_suffix(':'))
        {
            counts.push((name.to_string(), 0));
        } else if let Some((_, n)) = counts.last_mut() {
            let op = line.split("*/").nth(1).unwrap_or("").trim_start();
            let op = op
                .strip_prefix('@')
                .map_or(op, |o| o.split_once(' ').map_or("", |x| x.1));
            if op.starts_with("HMMA") || op.starts_with("HGMMA") {
                *n += 1;
            }
        }
    }
    counts.iter().map(|(k, n)| format!("{k} {n}\n")).collect()
}

/// Returns ptxas's resource report on success, nvcc's output on failure. The intermediate files
/// (the cubin for `tensor_core_counts`) stay in `keep-<name>/` beside `out`.
fn compile(nvcc: &Path, src: &Path, include: &Path, out: &Path) -> Result<String, String> {
    let stem = src.file_stem().unwrap_or_default().to_string_lossy();
    let keep = out.with_file_name(format!("keep-{stem}"));
    fs::create_dir_all(&keep).map_err(|e| format!("creating {}: {e}", keep.display()))?;
    let output = Command::new(nvcc)
        .args([
            "--fatbin",
            "-O3",
            "-std=c++17",
            "-lineinfo",
            "-Xptxas",
            "-v",
            "--keep",
        ])
        .arg("--keep-dir")
        .arg(&keep)
        .args(ARCH_FLAGS)
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
