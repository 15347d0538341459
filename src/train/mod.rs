//! Training: the fused Adam/AdamW optimiser, learning-rate schedules, the mapper loop, a small
//! CLIP trained from scratch, and the `metrics.jsonl` both loops write.

pub mod adam;
pub mod clip;
pub mod clip_layout;
pub mod gan;
pub mod import;
pub mod mapper;
mod mapper_graph;
pub mod metrics;
pub mod schedule;

pub use adam::{Adam, AdamConfig};
pub use schedule::Schedule;
