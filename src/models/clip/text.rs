//! `CLIPTextTransformer`: token ids `[B, T]` → the final hidden state at each row's EOS `[B, width]`.
//!
//! `embeddings.token_embedding[id] + embeddings.position_embedding[t]` → `encoder` with a causal
//! mask → `final_layer_norm` → the row at the position of the highest token id (OpenAI CLIP's
//! EOS pooling; with several equal maxima — HF pads with EOS — the first, as `torch.argmax`).
//! No padding mask: tokens after the EOS cannot reach it through the causal mask.

use super::{Encoder, LayerNorm, Params, TextConfig};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::{elementwise as ew, embedding::embedding, transpose};
use crate::tensor::Tensor;

pub struct TextTransformer {
    config: TextConfig,
    embeddings_token_embedding: Tensor,
    embeddings_position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
}

/// Per row of `ids` (`context` tokens each), the index of its first highest id.
pub fn eos_positions(ids: &[u32], context: usize) -> Vec<usize> {
    ids.chunks(context.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(0, |best, (i, &id)| if id > row[best] { i } else { best })
        })
        .collect()
}

impl TextTransformer {
    pub(crate) fn new(p: &mut Params, name: &str, c: &TextConfig) -> Result<TextTransformer> {
        let w = c.tower.hidden_size;
        Ok(TextTransformer {
            config: c.clone(),
            embeddings_token_embedding: p.get(
                &format!("{name}.embeddings.token_embedding.weight"),
                &[c.vocab_size, w],
            )?,
            embeddings_position_embedding: p.get(
                &format!("{name}.embeddings.position_embedding.weight"),
                &[c.max_position_embeddings, w],
            )?,
            encoder: Encoder::new(p, &format!("{name}.encoder"), &c.tower)?,
            final_layer_norm: LayerNorm::new(
                p,
                &format!("{name}.final_layer_norm"),
                w,
                c.tower.layer_norm_eps,
            )?,
        })
    }

    /// ids `[B, context]` row-major → pooled `[B, width]`.
    pub fn forward(&self, tape: &mut Tape, ids: &[u32], context: usize) -> Result<Tensor> {
        let c = &self.config;
        if context == 0
            || context > c.max_position_embeddings
            || ids.is_empty()
            || ids.len() % context != 0
        {
            return Err(Error::shape(
                "clip text",
                format!("{} ids as rows of {context} tokens (want a whole number of rows, 1 ≤ context ≤ {})", ids.len(), c.max_position_embeddings),
            ));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::shape(
                "clip text",
                format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab_size
                ),
            ));
        }
        let (b, w) = (ids.len() / context, c.tower.hidden_size);
        let tok = embedding(tape, &self.embeddings_token_embedding, ids)?;
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..context as u32).collect();
        let pos = embedding(tape, &self.embeddings_position_embedding, &positions)?;
        let x = ew::add(tape, &tok, &pos)?;
        let x = transpose::reshape(tape, &x, &[b, context, w])?;
        let x = self.encoder.forward(tape, &x, true)?;
        let x = self.final_layer_norm.forward(tape, &x)?;
        let rows = transpose::reshape(tape, &x, &[b * context, w])?;
        let eos: Vec<u32> = eos_positions(ids, context)
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * context + p) as u32)
            .collect();
        embedding(tape, &rows, &eos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_is_the_first_highest_id() {
        assert_eq!(
            eos_positions(&[49406, 5, 49407, 0, 0, 7, 9, 49407, 49407, 49407], 5),
            [2, 2]
        );
    }
}
