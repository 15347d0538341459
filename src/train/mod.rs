//! Training: the fused Adam/AdamW optimiser and learning-rate schedules.

pub mod adam;
pub mod mapper;
pub mod schedule;

pub use adam::{Adam, AdamConfig};
pub use schedule::Schedule;
