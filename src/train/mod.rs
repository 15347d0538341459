//! Training: the fused Adam/AdamW optimiser, learning-rate schedules, the mapper loop and a
//! small CLIP trained from scratch.

pub mod adam;
pub mod clip;
pub mod mapper;
pub mod schedule;

pub use adam::{Adam, AdamConfig};
pub use schedule::Schedule;
