//! Models built from ops: the Mind Reader mapper (later: CLIP, Lafite).

pub mod clip;
pub mod mapper;

pub use mapper::{Mapper, MapperConfig};
