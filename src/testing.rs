//! The test harness shared by every op's tests: devices to run one test body on, seeded random
//! data, tolerance checks and an f64 finite-difference gradient check.
//!
//! GPU tests skip with a printed reason when no GPU is usable, unless `MINDREADER_REQUIRE_GPU=1`
//! (set by `scripts/gpu-check` on the GPU machine), which makes a missing GPU a failure.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};

use crate::tensor::{set_poison_outputs, Device};

/// The GPU for parity tests, with kernel outputs poisoned (NaN-filled) before every launch.
pub fn gpu() -> Option<Device> {
    static GPU: OnceLock<Result<Device, String>> = OnceLock::new();
    let found = GPU.get_or_init(|| {
        if crate::kernels::KERNELS.is_empty() {
            return Err(format!("this binary holds no kernels ({})", crate::kernels::NVCC_STATUS));
        }
        Device::cuda(0).map_err(|e| e.to_string())
    });
    match found {
        Ok(d) => {
            set_poison_outputs(true);
            Some(d.clone())
        }
        Err(why) => {
            if std::env::var("MINDREADER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("MINDREADER_REQUIRE_GPU=1 but no GPU: {why}");
            }
            eprintln!("skipping the CUDA half of this test: {why}");
            None
        }
    }
}

/// The CPU, then the GPU when there is one: run the same test body on each.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    d.extend(gpu());
    d
}

/// Awkward sizes for parity tests: not multiples of any tile or block.
pub fn parity_sizes() -> [usize; 5] {
    [1, 7, 33, 1000, 4097]
}

/// `n` values uniform in [-1, 1) from a seed.
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| everywhere (and no NaN), naming the first offender.
pub fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let bad = !g.is_finite() && w.is_finite() || err > atol + rtol * w.abs();
        assert!(!bad, "{what}: element {i}: got {g}, want {w} (|err| {err}, rtol {rtol}, atol {atol})");
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
    std::env::var_os("MINDREADER_FIXTURES").map(Into::into).unwrap_or_else(|| "tests/fixtures".into())
}

/// bf16 parity of one op: `inputs` (f32, on the CPU) are rounded to bf16; `op` runs on them on
/// the CPU (the f32 twin between a widening and one rounding) and, when there is a GPU, on the
/// same bf16 values there (the bf16 kernels). Both outputs must be bf16, and close: each is one
/// rounding of an f32 result that differs only in summation order, so they agree to a bf16 ulp
/// (2⁻⁸ relative) where the sums do. Returns false (after printing why) when there is no GPU.
pub fn bf16_parity(what: &str, inputs: &[crate::Tensor], rtol: f32, atol: f32, op: impl Fn(&[crate::Tensor]) -> crate::Result<crate::Tensor>) -> bool {
    use crate::tensor::DType;
    let cpu: Vec<crate::Tensor> = inputs.iter().map(|t| t.to_dtype(DType::BF16).unwrap()).collect();
    let want = op(&cpu).unwrap_or_else(|e| panic!("{what} on the CPU: {e}"));
    assert_eq!(want.dtype(), DType::BF16, "{what}: the CPU output is not bf16");
    let Some(g) = gpu() else { return false };
    let on_gpu: Vec<crate::Tensor> = cpu.iter().map(|t| t.to_device(&g).unwrap()).collect();
    let got = op(&on_gpu).unwrap_or_else(|e| panic!("{what} on {g}: {e}"));
    assert_eq!((got.dtype(), got.shape()), (DType::BF16, want.shape()), "{what} on {g}");
    assert_close(&got.to_vec_f32().unwrap(), &want.to_vec_f32().unwrap(), rtol, atol, &format!("bf16 {what} on {g}"));
    true
}
