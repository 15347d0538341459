//! The test harness shared by every op's tests: devices to run one test body on, seeded random
//! data, tolerance checks and an f64 finite-difference gradient check.
//!
//! A device test needs a CUDA device: a GPU, or the CUDA simulator (`sim/`, a stand-in libcuda
//! that runs the kernels on the CPU; `scripts/test` builds it and puts it on the library path).
//! With neither, a device test fails, unless `MINDREADER_ALLOW_DEVICE_SKIP=1` lets it skip.
//! `MINDREADER_REQUIRE_GPU=1` (set by `scripts/gpu-check` on the GPU machine) also refuses the
//! simulator. When `MINDREADER_DEVICE_LOG` names a file, every device test appends one line to
//! it (`ran`/`skipped`, the test, the device or the reason), which `scripts/test` counts.

use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

use rand::{Rng, SeedableRng};

use crate::tensor::{set_poison_outputs, Device};

/// The CUDA device for device tests, with kernel outputs poisoned (NaN-filled) before every
/// launch. Panics when there is none, unless skipping is allowed (then None, after logging it).
pub fn gpu() -> Option<Device> {
    static GPU: OnceLock<Result<Device, String>> = OnceLock::new();
    let found = GPU.get_or_init(|| {
        if crate::kernels::KERNELS.is_empty() {
            return Err(format!(
                "this binary holds no kernels ({})",
                crate::kernels::NVCC_STATUS
            ));
        }
        Device::cuda(0).map_err(|e| e.to_string())
    });
    let require_gpu = std::env::var("MINDREADER_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match found {
        Ok(d) => {
            if require_gpu && d.is_simulated() {
                panic!(
                    "MINDREADER_REQUIRE_GPU=1 but cuda:0 is the CUDA simulator ({}), not a GPU",
                    d.name()
                );
            }
            set_poison_outputs(true);
            log_device_test("ran", &d.name());
            Some(d.clone())
        }
        Err(why) => {
            if require_gpu {
                panic!("MINDREADER_REQUIRE_GPU=1 but no GPU: {why}");
            }
            if !std::env::var("MINDREADER_ALLOW_DEVICE_SKIP").is_ok_and(|v| v == "1") {
                panic!(
                    "this device test needs a CUDA device and there is none: {why}. Build the CUDA simulator \
                     (`python3 sim/build.py`) and run with LD_LIBRARY_PATH=target/sim, as scripts/test does, \
                     or set MINDREADER_ALLOW_DEVICE_SKIP=1 to skip device tests (they are counted as skipped)"
                );
            }
            eprintln!(
                "skipping the CUDA half of this test (MINDREADER_ALLOW_DEVICE_SKIP=1): {why}"
            );
            log_device_test("skipped", why);
            None
        }
    }
}

/// cuda:0 as [`gpu`] finds it, but with a stream of its own: for tests that capture CUDA graphs,
/// since a capture records whatever is queued on its stream, and the other device tests of the
/// binary run in parallel on the shared one.
pub fn gpu_own_stream() -> Option<Device> {
    gpu()?;
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => panic!("cuda:0 worked once but not again: {e}"),
    }
}

/// The CUDA simulator, for the tests of the simulator itself (`tests/simulator.rs`): None, logged
/// as a skip, when cuda:0 is a real GPU (the planted-bug kernels exist only in the simulator);
/// otherwise as [`gpu`] (no device fails unless skipping is allowed).
pub fn simulator() -> Option<Device> {
    let d = gpu()?;
    if d.is_simulated() {
        return Some(d);
    }
    eprintln!(
        "skipping: cuda:0 is a real GPU ({}); this test checks the CUDA simulator",
        d.name()
    );
    log_device_test("skipped", "a real GPU, not the simulator");
    None
}

/// One line per device test (the test's name is its libtest thread's name) in
/// `$MINDREADER_DEVICE_LOG`, when set: `ran|skipped <TAB> test <TAB> device or reason`.
fn log_device_test(outcome: &str, detail: &str) {
    static LOG: Mutex<()> = Mutex::new(());
    let Some(path) = std::env::var_os("MINDREADER_DEVICE_LOG") else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("main").to_string();
    let binary = std::env::args().next().unwrap_or_default();
    let binary = std::path::Path::new(&binary)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _guard = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{outcome}\t{binary}::{test}\t{detail}");
    }
}

/// True when device tests run on the CUDA simulator: the few tests whose full sizes would take
/// minutes there use smaller ones that still cross every tile edge.
pub fn on_simulator() -> bool {
    gpu().is_some_and(|d| d.is_simulated())
}

/// The CPU, then the CUDA device (a GPU or the simulator): run the same test body on each.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    d.extend(gpu());
    d
}

/// Awkward sizes for parity tests: not multiples of any tile or block.
pub fn parity_sizes() -> [usize; 5] {
    [1, 7, 33, 1000, 4097]
}

/// Row lengths for the row-wise kernels (softmax, layer norm, L2 normalisation): the awkward
/// parity sizes plus one length in each width class of their warp-per-row variants (≤ 128, 256,
/// 512, 768 values per row), so every variant runs in its parity test.
pub fn row_sizes() -> Vec<usize> {
    vec![1, 7, 33, 100, 200, 500, 700, 1000, 4097]
}

/// `n` values uniform in [-1, 1) from a seed.
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| everywhere (and no NaN), naming the first offender.
pub fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let bad = !g.is_finite() && w.is_finite() || err > atol + rtol * w.abs();
        assert!(
            !bad,
            "{what}: element {i}: got {g}, want {w} (|err| {err}, rtol {rtol}, atol {atol})"
        );
        if err > worst.1 {
            worst = (i, err);
        }
    }
}

/// Central-difference check of `analytic` = ∇f(x), all in f64.
pub fn gradcheck(name: &str, f: impl Fn(&[f64]) -> f64, x: &[f64], analytic: &[f64]) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let eps = 1e-6;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + eps;
        let fp = f(&xp);
        xp[i] = x[i] - eps;
        let fm = f(&xp);
        xp[i] = x[i];
        let numeric = (fp - fm) / (2.0 * eps);
        let err = (numeric - analytic[i]).abs();
        assert!(
            err <= 1e-6 + 1e-5 * numeric.abs().max(analytic[i].abs()),
            "{name}: d/dx[{i}]: analytic {} vs finite difference {numeric} (|err| {err})",
            analytic[i]
        );
    }
}

/// Where fixtures live: `$MINDREADER_FIXTURES`, else `tests/fixtures` under the working directory
/// (never a compiled-in path: test binaries also run on the GPU machine).
pub fn fixtures_dir() -> std::path::PathBuf {
    std::env::var_os("MINDREADER_FIXTURES")
        .map(Into::into)
        .unwrap_or_else(|| "tests/fixtures".into())
}

/// bf16 parity of one op: `inputs` (f32, on the CPU) are rounded to bf16; `op` runs on them on
/// the CPU (the f32 twin between a widening and one rounding) and, when there is a GPU, on the
/// same bf16 values there (the bf16 kernels). Both outputs must be bf16, and close: each is one
/// rounding of an f32 result that differs only in summation order, so they agree to a bf16 ulp
/// (2⁻⁸ relative) where the sums do. Returns false when device tests are allowed to skip and
/// there is no CUDA device.
pub fn bf16_parity(
    what: &str,
    inputs: &[crate::Tensor],
    rtol: f32,
    atol: f32,
    op: impl Fn(&[crate::Tensor]) -> crate::Result<crate::Tensor>,
) -> bool {
    use crate::tensor::DType;
    let cpu: Vec<crate::Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::BF16).unwrap())
        .collect();
    let want = op(&cpu).unwrap_or_else(|e| panic!("{what} on the CPU: {e}"));
    assert_eq!(
        want.dtype(),
        DType::BF16,
        "{what}: the CPU output is not bf16"
    );
    let Some(g) = gpu() else { return false };
    let on_gpu: Vec<crate::Tensor> = cpu.iter().map(|t| t.to_device(&g).unwrap()).collect();
    let got = op(&on_gpu).unwrap_or_else(|e| panic!("{what} on {g}: {e}"));
    assert_eq!(
        (got.dtype(), got.shape()),
        (DType::BF16, want.shape()),
        "{what} on {g}"
    );
    assert_close(
        &got.to_vec_f32().unwrap(),
        &want.to_vec_f32().unwrap(),
        rtol,
        atol,
        &format!("bf16 {what} on {g}"),
    );
    true
}
