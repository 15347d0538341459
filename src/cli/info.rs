//! `mindreader info`: what this binary holds and what it can run on.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use mindreader::kernels::{self, KERNELS};
use mindreader::pickle::{Checkpoint, Container, Entry};
use mindreader::tensor::{why_no_gpu, Gpu};

#[derive(Args)]
pub struct InfoArgs {
    /// A checkpoint to list instead: a network snapshot `.pkl` or a PyTorch `.pth` (its networks,
    /// their classes and init_kwargs, every tensor's name, dtype and shape). Nothing is converted
    /// and nothing in the file is executed.
    pub file: Option<PathBuf>,
    /// Also list every kernel with its registers and spill bytes (ptxas -v) and its tensor-core instructions (HMMA/HGMMA in the SASS, by nvdisasm).
    #[arg(long)]
    pub kernels: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    if let Some(file) = &args.file {
        return list_checkpoint(file);
    }
    println!("mindreader {}", env!("CARGO_PKG_VERSION"));
    println!("kernels: {}", kernels::NVCC_STATUS);
    if KERNELS.is_empty() {
        println!("  no CUDA kernels embedded: this binary runs on the CPU only");
    } else {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.family).collect();
        println!("  {} families embedded: {}", names.len(), names.join(", "));
        if args.kernels {
            for k in KERNELS {
                for (name, regs, spill) in kernels::resource_usage(k) {
                    let warn = if spill > 0 { "  <- spills" } else { "" };
                    let tc = match kernels::tensor_core_instructions(k, &name) {
                        Some(0) => "-".to_string(),
                        Some(n) => format!("{n} HMMA"),
                        None => "SASS n/a".to_string(),
                    };
                    println!(
                        "  {:<14} {:<34} {:>3} registers {:>5} B spilled {tc:>9}{warn}",
                        k.family, name, regs, spill
                    );
                }
            }
        }
    }
    println!("cpu: {} threads (rayon)", rayon::current_num_threads());
    match why_no_gpu() {
        Some(why) => println!("gpu: none ({why}); everything runs on the CPU twins"),
        None => {
            let count = cudarc::driver::CudaContext::device_count().unwrap_or(0);
            for ordinal in 0..count as usize {
                match Gpu::open(ordinal) {
                    Ok(gpu) if gpu.is_simulated() => {
                        println!("gpu cuda:{ordinal}: SIMULATED — {} (sim/): every kernel runs on the CPU from its own source, with bounds and race checks; no times from it are GPU figures", gpu.name());
                    }
                    Ok(gpu) => {
                        let mem = gpu
                            .ctx
                            .total_mem()
                            .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
                            .unwrap_or_else(|e| e.to_string());
                        let sms = gpu.ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).unwrap_or(0);
                        let (major, minor) = gpu.ctx.compute_capability().unwrap_or((0, 0));
                        println!("gpu cuda:{ordinal}: {}, {mem}, {sms} SMs, compute capability {major}.{minor}", gpu.name());
                        if major < 9 && !KERNELS.is_empty() {
                            println!("  note: kernels are built for sm_90 (+ compute_90 PTX); this GPU is older and cannot load them");
                        }
                    }
                    Err(e) => println!("gpu cuda:{ordinal}: unusable ({e})"),
                }
            }
        }
    }
    Ok(())
}

/// `mindreader info FILE`: what a `.pkl`/`.pth` holds.
fn list_checkpoint(path: &Path) -> Result<()> {
    let mut ck = Checkpoint::open(path)?;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let container = match ck.file.container {
        Container::Zip => "a torch.save zip",
        Container::LegacyTorch => "a legacy torch.save stream",
        Container::Pickle => "a pickle (pickle.dump)",
    };
    let size = if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{bytes} bytes")
    };
    println!("{}: {container}, {size}", path.display());
    let keys: Vec<String> = ck.entries.iter().map(|e| e.key().to_string()).collect();
    for key in keys {
        let label = if key.is_empty() { "(root)" } else { &key };
        match ck.entry(&key) {
            Some(Entry::Data { value, .. }) => {
                let text = value.to_string();
                let short: String = text.chars().take(100).collect();
                let more = if text.chars().count() > 100 {
                    "…"
                } else {
                    ""
                };
                println!("{label}: {short}{more}");
                continue;
            }
            Some(Entry::Module {
                module,
                init_kwargs,
                ..
            }) => {
                let kind = if module.persistent {
                    "persistent class (source embedded)"
                } else {
                    "module"
                };
                println!("{label}: {} — {kind}", module.class);
                if let Some(kw) = init_kwargs {
                    println!("  init_kwargs: {kw}");
                }
            }
            Some(Entry::StateDict { .. }) => println!("{label}: a state_dict"),
            None => continue,
        }
        let tensors = ck.read_tensors(&key)?;
        let total: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
        println!("  {} tensors, {total} elements", tensors.len());
        for (name, t) in &tensors {
            println!("    {:<48} {:<8} {:?}", name, t.dtype.name(), t.shape);
        }
    }
    Ok(())
}
