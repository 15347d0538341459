//! mindreader: reconstruct the images a person saw from their fMRI (after Mind Reader, Lin,
//! Sprague & Singh, NeurIPS 2022) on a from-scratch CUDA kernel engine with CPU twins.
//!
//! Layers, each using only those above it: `kernels` (embedded CUDA) → `tensor` → `ops` →
//! `autograd` → `nn` → `models` → `data` → `train` / `eval` → the `mindreader` binary; `rng`,
//! `fsio` and `pickle` (checkpoints read as data) use none of them and serve all. See the Architecture section of README.md.

pub mod autograd;
pub mod bench;
pub mod data;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod ops;
pub mod pickle;
pub mod rng;
pub mod tensor;
pub mod train;

#[doc(hidden)]
pub mod testing;

pub use autograd::{Gradients, Tape};
pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
