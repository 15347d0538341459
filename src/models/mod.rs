//! Models built from `nn` layers: the Mind Reader mapper, CLIP (vision and text towers,
//! tokenizer), Lafite (generator and discriminator).

pub mod clip;
pub mod clip_tokenizer;
pub mod lafite;
pub mod mapper;

pub use mapper::{Mapper, MapperConfig};
