//! `CLIPVisionTransformer`: pixels `[B, C, H, W]` → pooled class token `[B, width]`.
//!
//! 1. `embeddings.patch_embedding`: Conv2d(C → width, kernel p, stride p, no bias). Stride = kernel,
//!    so it is a matmul: the image is cut into `[B, g², C·p·p]` patches (ordered c, ky, kx like the
//!    conv weight) by reshape and three axis swaps, times the weight viewed as `[width, C·p·p]`.
//! 2. `[class_embedding; patches] + position_embedding` (positions 0..g²).
//! 3. `pre_layrnorm` (HF's spelling) → `encoder` (bidirectional) → token 0 → `post_layernorm`.

use super::{Encoder, LayerNorm, Params, VisionConfig};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::{
    concat::{concat, slice},
    elementwise as ew,
    matmul::linear_act,
    transpose,
};
use crate::tensor::Tensor;

pub struct VisionTransformer {
    config: VisionConfig,
    embeddings_class_embedding: Tensor,
    embeddings_patch_embedding: Tensor,
    embeddings_position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
}

impl VisionTransformer {
    pub(crate) fn new(p: &mut Params, name: &str, c: &VisionConfig) -> Result<VisionTransformer> {
        let (w, eps, patch) = (c.tower.hidden_size, c.tower.layer_norm_eps, c.patch_size);
        Ok(VisionTransformer {
            config: c.clone(),
            embeddings_class_embedding: p
                .get(&format!("{name}.embeddings.class_embedding"), &[w])?,
            embeddings_patch_embedding: p.get(
                &format!("{name}.embeddings.patch_embedding.weight"),
                &[w, c.num_channels, patch, patch],
            )?,
            embeddings_position_embedding: p.get(
                &format!("{name}.embeddings.position_embedding.weight"),
                &[c.num_positions(), w],
            )?,
            pre_layrnorm: LayerNorm::new(p, &format!("{name}.pre_layrnorm"), w, eps)?,
            encoder: Encoder::new(p, &format!("{name}.encoder"), &c.tower)?,
            post_layernorm: LayerNorm::new(p, &format!("{name}.post_layernorm"), w, eps)?,
        })
    }

    /// Pixels `[B, C, H, W]` (H = W = image_size) → `post_layernorm(class token)` `[B, width]`.
    pub fn forward(&self, tape: &mut Tape, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (ch, s, p, g, w) = (
            c.num_channels,
            c.image_size,
            c.patch_size,
            c.grid(),
            c.tower.hidden_size,
        );
        if pixels.rank() != 4 || pixels.shape()[1..] != [ch, s, s] {
            return Err(Error::shape(
                "clip vision",
                format!(
                    "expected pixels [batch, {ch}, {s}, {s}], got {:?}",
                    pixels.shape()
                ),
            ));
        }
        let b = pixels.shape()[0];
        // [B, C, g, p, g, p] → [B, g, C, p, g, p] → [B, g, g, p, C, p] → [B, g, g, C, p, p]
        let x = transpose::reshape(tape, pixels, &[b, ch, g, p, g, p])?;
        let x = transpose::transpose(tape, &x, 1, 2)?;
        let x = transpose::transpose(tape, &x, 2, 4)?;
        let x = transpose::transpose(tape, &x, 3, 4)?;
        let x = transpose::reshape(tape, &x, &[b, g * g, ch * p * p])?;
        let weight = transpose::reshape(tape, &self.embeddings_patch_embedding, &[w, ch * p * p])?;
        let patches = linear_act(tape, &x, &weight, None, None)?; // [B, g², W]

        let cls = transpose::reshape(tape, &self.embeddings_class_embedding, &[1, 1, w])?;
        let cls_rows = vec![&cls; b];
        let cls = concat(tape, &cls_rows, 0)?; // [B, 1, W]
        let x = concat(tape, &[&cls, &patches], 1)?; // [B, n, W]
        let n = c.num_positions();
        // Every image's tokens + the position table: a bias over the flattened [B, n·W] rows
        // (no ids to upload, so a CUDA graph can hold it).
        let rows = transpose::reshape(tape, &x, &[b, n * w])?;
        let pos = transpose::reshape(tape, &self.embeddings_position_embedding, &[n * w])?;
        let x = ew::bias_add(tape, &rows, &pos, 1)?;
        let x = transpose::reshape(tape, &x, &[b, n, w])?;

        let x = self.pre_layrnorm.forward(tape, &x)?;
        let x = self.encoder.forward(tape, &x, false)?;
        // Token 0 of each image.
        let first = slice(tape, &x, 1, 0, 1)?;
        let pooled = transpose::reshape(tape, &first, &[b, w])?;
        self.post_layernorm.forward(tape, &pooled)
    }
}
