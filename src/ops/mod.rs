//! Op families, one file each (math, CPU twin, CUDA launch, backward, tests).
//!
//! Every public op takes the `Tape` first and records its backward when an input is tracked.
//! The CPU twins are generic over `Real` so that the gradient checks run them in f64.

pub mod attention;
pub mod augment;
pub mod bias_act;
pub mod channels;
pub mod concat;
pub mod conv1d;
pub mod conv2d;
pub mod conv_epilogue;
mod conv_tc;
pub mod elementwise;
pub mod embedding;
pub mod image;
pub mod l2norm;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod matmul_tc;
pub mod mbstd;
pub mod modconv;
pub mod precision;
pub mod reduce;
pub mod softmax;
pub mod transpose;
pub mod upfirdn2d;

use cudarc::driver::LaunchConfig;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The float types the CPU twins run in: f32 for real work, f64 for gradient checks.
pub trait Real:
    num_traits::Float + ndarray::LinalgScalar + std::iter::Sum + Send + Sync + std::fmt::Debug + 'static
{
    fn erf(self) -> Self;
    /// A constant in this type.
    fn c(x: f64) -> Self;
}

impl Real for f32 {
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn c(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn c(x: f64) -> Self {
        x
    }
}

/// The launch shape of the row-wise kernels' block-per-row variants (softmax, L2
/// normalisation, layer norm, for rows too long for a warp): one 512-thread block per row, the
/// grid capped at 65535·8 blocks (each block then strides over rows b, b + grid, …), with `smem`
/// bytes of dynamic shared memory to cache the row (0 when the row is re-read instead).
pub(crate) fn block_per_row(rows: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, 65535 * 8) as u32, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// The launch shape of the warp-per-row kernels that reduce short rows (modconv's demodulation,
/// `rowdot`): eight warps per 256-thread block, one row each, the grid capped at 65535·8 blocks
/// (warps then stride over rows).
pub(crate) fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).clamp(1, 65535 * 8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch shape of the implicit GEMMs on `kernels/gemm_tile.cuh` (conv1d, conv2d): 256-thread
/// blocks, one per 64×64 tile of the `m × n` output, `z` on grid z (blocks loop past 65535).
pub(crate) fn gemm_tile_grid(m: usize, n: usize, z: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(64) as u32,
            m.div_ceil(64) as u32,
            z.clamp(1, 65535) as u32,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Errors unless every tensor is on the first one's device.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    let first = ts[0].device();
    for t in &ts[1..] {
        if !t.device().same(first) {
            return Err(Error::DeviceMismatch {
                op,
                a: first.to_string(),
                b: t.device().to_string(),
            });
        }
    }
    Ok(())
}

/// Errors unless the shapes are equal.
pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

/// `shape` viewed as `[outer, shape[axis], inner]`.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Errors unless every tensor has the first one's dtype.
pub(crate) fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    let first = ts[0].dtype();
    if let Some(t) = ts[1..].iter().find(|t| t.dtype() != first) {
        return Err(Error::Invalid(format!(
            "{op}: inputs are {first} and {}: convert one so all have the same dtype",
            t.dtype()
        )));
    }
    Ok(())
}

/// bf16 on the CPU is its f32 twin on widened inputs with the output rounded once (`narrow`):
/// what the bf16 kernels do, bf16 storage between ops and f32 arithmetic inside each.
pub(crate) fn widen(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

pub(crate) fn narrow(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)
}

/// True for a bf16 tensor on the CPU (the ops then run their f32 twin through `widen`/`narrow`).
pub(crate) fn bf16_on_cpu(t: &Tensor) -> bool {
    !t.device().is_cuda() && t.dtype() == DType::BF16
}

/// Errors for dtypes an op has no kernel for.
pub(crate) fn f32_or_bf16(op: &'static str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::BF16 => Ok(()),
        other => Err(Error::DType {
            op,
            got: other,
            expected: "f32 or bf16",
        }),
    }
}

/// Backward passes run in f32 only: bf16 is for inference.
pub(crate) fn f32_for_backward(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            got: t.dtype(),
            expected: "f32 (bf16 is inference-only: no backward)",
        });
    }
    Ok(())
}
