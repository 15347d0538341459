//! The precision of f32 matrix products on the GPU: the user's choice (`--precision`), with
//! PyTorch's switches as the reference points.
//!
//! - `f32`: every product on the FP32 SIMT tile (`matmul_f32`), as PyTorch's matmul by default
//!   (`torch.backends.cuda.matmul.allow_tf32 = False`).
//! - `tf32`: operands rounded to TensorFloat-32 (`cvt.rna`: 10 mantissa bits, to nearest, ties
//!   away from zero) and multiplied on the tensor cores with f32 accumulation, as PyTorch with
//!   `allow_tf32 = True` (cuDNN's convolutions' default).
//! - `bf16`: operands rounded to bfloat16 (to nearest even), f32 accumulation and f32 results, as
//!   a linear under `torch.autocast(dtype=torch.bfloat16)` that is then read back in f32.
//!
//! Tensors, weights and optimiser state stay f32; only the products' inputs are rounded, in the
//! kernel, on their way into shared memory or into the fragments (`ops::matmul_tc`). Forward and
//! both backward products of `matmul` and `linear` follow the setting. The CPU twins always
//! compute in f32: there are no tensor cores to be faithful to, and rounding there would only
//! lose accuracy. `round_operand` is the twin of the kernels' rounding, for parity tests.
//!
//! The setting is process-wide (`set_default`, from the CLI), with a scoped per-thread override
//! (`with`) so tests running in parallel can each pick one.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use half::bf16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Tf32,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Precision {
        Precision::ALL[(c as usize).min(2)]
    }

    /// The f32 value the tensor cores multiply for `x` at this precision.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Tf32 => round_tf32(x),
            Precision::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision `{other}`: expected f32, tf32 or bf16"
            )),
        }
    }
}

static DEFAULT: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static OVERRIDE: Cell<Option<Precision>> = const { Cell::new(None) };
}

/// Sets the process-wide precision (the CLI's `--precision`).
pub fn set_default(p: Precision) {
    DEFAULT.store(p.code(), Ordering::Relaxed);
}

/// The precision products on this thread run at now.
pub fn current() -> Precision {
    OVERRIDE
        .with(Cell::get)
        .unwrap_or_else(|| Precision::from_code(DEFAULT.load(Ordering::Relaxed)))
}

/// Runs `f` with this thread's products at `p`, then restores the previous setting.
pub fn with<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Precision>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(p))));
    f()
}

/// Of a kernel's three builds `[f32, tensor-core tf32, tensor-core bf16]` (the implicit GEMMs of
/// conv1d and conv2d come in these, from one template), the one this thread's precision runs.
pub fn pick(variants: [&'static str; 3]) -> &'static str {
    variants[current() as usize]
}

/// `cvt.rna.tf32.f32`: the nearest value with 10 mantissa bits, ties away from zero; infinities
/// and NaNs unchanged.
pub fn round_tf32(x: f32) -> f32 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return x;
    }
    f32::from_bits(u.wrapping_add(0x1000) & 0xffff_e000)
}

/// Every element rounded as the tensor cores see it at `p`.
pub fn round_operand(p: Precision, xs: &[f32]) -> Vec<f32> {
    xs.iter().map(|&x| p.round(x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_rounds_to_ten_mantissa_bits_ties_away() {
        // 1 + 2⁻¹⁰ is a tf32 value; 1 + 2⁻¹¹ is halfway between 1 and it and rounds away.
        assert_eq!(round_tf32(1.0), 1.0);
        assert_eq!(round_tf32(1.0 + 2f32.powi(-10)), 1.0 + 2f32.powi(-10));
        assert_eq!(round_tf32(1.0 + 2f32.powi(-11)), 1.0 + 2f32.powi(-10));
        assert_eq!(round_tf32(-(1.0 + 2f32.powi(-11))), -(1.0 + 2f32.powi(-10)));
        assert_eq!(round_tf32(1.0 + 2f32.powi(-12)), 1.0);
        assert_eq!(round_tf32(f32::INFINITY), f32::INFINITY);
        assert!(round_tf32(f32::NAN).is_nan());
        for x in [0.1f32, -3.7, 1e-30, 12345.678] {
            let r = round_tf32(x);
            assert_eq!(r.to_bits() & 0x1fff, 0, "{x}");
            assert!((r - x).abs() <= x.abs() * 2f32.powi(-11), "{x} → {r}");
        }
    }

    #[test]
    fn the_override_is_scoped_and_parses() {
        assert_eq!("TF32".parse::<Precision>(), Ok(Precision::Tf32));
        assert!("fp8"
            .parse::<Precision>()
            .unwrap_err()
            .contains("f32, tf32 or bf16"));
        let outside = current();
        let inner = with(Precision::Bf16, || {
            with(Precision::Tf32, current);
            current()
        });
        assert_eq!(inner, Precision::Bf16);
        assert_eq!(current(), outside);
        assert_eq!(Precision::Bf16.round(1.0 + 2f32.powi(-9)), 1.0);
    }
}
