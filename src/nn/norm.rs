//! Normalisation layers.

use super::Params;
use crate::autograd::Tape;
use crate::error::Result;
use crate::ops::layernorm::layer_norm;
use crate::tensor::Tensor;

/// `nn.LayerNorm` over the last axis (`{name}.weight`, `{name}.bias`).
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(p: &mut Params, name: &str, n: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: p.full(&format!("{name}.weight"), &[n], 1.0)?,
            bias: p.get(&format!("{name}.bias"), &[n])?,
            eps,
        })
    }

    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        layer_norm(tape, x, Some(&self.weight), Some(&self.bias), self.eps)
    }
}
