//! Layers with named parameters (names as in the PyTorch references) and the parameter store.

pub mod params;

pub use params::{load_safetensors, save_safetensors, Param, ParamStore};
