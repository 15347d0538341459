//! Models built from ops: the Mind Reader mapper, CLIP (vision and text towers, tokenizer);
//! later Lafite.

pub mod clip;
pub mod clip_tokenizer;
pub mod mapper;

pub use mapper::{Mapper, MapperConfig};
