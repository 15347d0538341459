//! Layers with named parameters (names as in the PyTorch references, so real checkpoints load by
//! name) and the parameter store. Every model takes its layers from here: the mapper its
//! `Conv1d`, CLIP its `Linear` and `LayerNorm`, Lafite the StyleGAN2 layers (`FullyConnected` with
//! equalised learning rate, `Conv2dLayer` with resampling, the modulated `SynthesisLayer` and
//! `ToRgb`).

pub mod conv;
pub mod linear;
pub mod norm;
pub mod params;
pub mod synthesis;

pub use conv::{conv2d_resample, Conv1d, Conv2dLayer};
pub use linear::{FullyConnected, Linear};
pub use norm::LayerNorm;
pub use params::{load_safetensors, save_safetensors, Param, ParamStore};
pub use synthesis::{Condition, Conditioning, NoiseBank, NoiseMode, SynthesisLayer, ToRgb};

use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// Where a model's layers register their tensors as they are built: trainable parameters in
/// `store`, fixed buffers (StyleGAN2's `resample_filter`, `noise_const`, `w_avg`) in `buffers`.
/// With no seed every tensor starts at zero (a checkpoint then fills it by name); with a seed,
/// each layer's own initialisation, drawn per tensor name so the result does not depend on the
/// order of construction.
pub struct Params<'a> {
    pub store: &'a mut ParamStore,
    pub buffers: Option<&'a mut ParamStore>,
    pub device: &'a Device,
    pub seed: Option<u64>,
}

impl<'a> Params<'a> {
    /// Zero-filled parameters (to be loaded), no buffers.
    pub fn zeros(store: &'a mut ParamStore, device: &'a Device) -> Params<'a> {
        Params {
            store,
            buffers: None,
            device,
            seed: None,
        }
    }

    /// A zero-filled parameter (filled later by name).
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.insert(name, Tensor::zeros(shape, self.device)?)
    }

    /// A parameter drawn from N(0, std²) when seeded, else zeros.
    pub fn randn(&mut self, name: &str, shape: &[usize], std: f32) -> Result<Tensor> {
        let t = self.randn_tensor(name, shape, std)?;
        self.store.insert(name, t)
    }

    /// A parameter filled with `value` when seeded, else zeros.
    pub fn full(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = match self.seed {
            Some(_) => Tensor::full(value, shape, self.device)?,
            None => Tensor::zeros(shape, self.device)?,
        };
        self.store.insert(name, t)
    }

    /// A buffer with this value (always: buffers such as filters are part of the architecture).
    pub fn buffer(&mut self, name: &str, value: Tensor) -> Result<Tensor> {
        match self.buffers.as_deref_mut() {
            Some(b) => b.insert(name, value),
            None => Err(Error::Invalid(format!(
                "buffer `{name}`: this model keeps no buffers"
            ))),
        }
    }

    /// A buffer drawn from N(0, 1) when seeded, else zeros (e.g. `noise_const`).
    pub fn randn_buffer(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.randn_tensor(name, shape, 1.0)?;
        self.buffer(name, t)
    }

    fn randn_tensor(&self, name: &str, shape: &[usize], std: f32) -> Result<Tensor> {
        match self.seed {
            Some(seed) => Tensor::randn(shape, std, seed ^ name_hash(name), self.device),
            None => Tensor::zeros(shape, self.device),
        }
    }
}

/// FNV-1a of a tensor name: a seed per name, stable across builds and platforms.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
