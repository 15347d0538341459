//! Evaluation: retrieval metrics and the files evaluations read and write.

pub mod image_metrics;
pub mod images;
pub mod npy;
pub mod plot;
pub mod probe;
pub mod retrieval;

pub use retrieval::{retrieval, Retrieval};
