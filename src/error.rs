//! The library's typed errors: each names the op, tensor or file and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: dtype {got} is not supported (expected {expected})")]
    DType {
        op: &'static str,
        got: crate::tensor::DType,
        expected: &'static str,
    },
    #[error("{op}: tensors are on different devices ({a} and {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },
    #[error("no usable CUDA device: {0}")]
    NoGpu(String),
    #[error("CUDA error in {context}: {message}")]
    Cuda { context: String, message: String },
    #[error("kernel family `{0}` is not embedded in this binary ({status})", status = crate::kernels::NVCC_STATUS)]
    MissingKernel(String),
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A problem with one dataset (or attribute) inside an HDF5 file: names the file, the
    /// dataset's path inside it and what was wrong, so a user can find it with `h5ls`.
    #[error("{}: dataset `{dataset}`: {message}", path.display())]
    Dataset {
        path: PathBuf,
        dataset: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn dataset(
        path: impl Into<PathBuf>,
        dataset: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Dataset {
            path: path.into(),
            dataset: dataset.into(),
            message: message.into(),
        }
    }
    pub fn cuda(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Cuda {
            context: context.into(),
            message: e.to_string(),
        }
    }
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::cuda("driver call", e)
    }
}
