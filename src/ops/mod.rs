//! Op families, one file each (math, CPU twin, CUDA launch, backward, tests).
//!
//! Every public op takes the `Tape` first and records its backward when an input is tracked.
//! The CPU twins are generic over `Real` so that the gradient checks run them in f64.

pub mod attention;
pub mod augment;
pub mod concat;
pub mod conv1d;
pub mod elementwise;
pub mod embedding;
pub mod image;
pub mod l2norm;
pub mod loss;
pub mod layernorm;
pub mod matmul;
pub mod reduce;
pub mod softmax;
pub mod transpose;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The float types the CPU twins run in: f32 for real work, f64 for gradient checks.
pub trait Real: num_traits::Float + ndarray::LinalgScalar + std::iter::Sum + Send + Sync + std::fmt::Debug + 'static {
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

/// Errors unless every tensor is on the first one's device.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    let first = ts[0].device();
    for t in &ts[1..] {
        if !t.device().same(first) {
            return Err(Error::DeviceMismatch { op, a: first.to_string(), b: t.device().to_string() });
        }
    }
    Ok(())
}

/// Errors unless the shapes are equal.
pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

/// `shape` viewed as `[outer, shape[axis], inner]`.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}
