//! CLIP (Radford et al. 2021) as Hugging Face `transformers` defines it (`CLIPModel`): a vision
//! transformer and a causal text transformer, each projected into one joint embedding space.
//!
//! - `vision.rs`: patches (the stride-p conv as a matmul) → [class token; patches] + positions →
//!   `pre_layrnorm` → encoder → `post_layernorm` of the class token → `visual_projection`.
//! - `text.rs`: token + position embeddings → causal encoder → `final_layer_norm` → the token at
//!   the highest id (the EOS) → `text_projection`.
//! - here: the pre-norm encoder layer both towers share, loading, and `logits_per_image`.
//!
//! Field names are the state_dict's, so `model.safetensors` loads by name. Every step is a
//! recorded op: with a watched input, gradients flow to the pixels (the GAN's CLIP losses push
//! through a frozen CLIP) and to the weights.

pub mod config;
pub mod text;
pub mod vision;

use std::path::Path;

pub use config::{ClipConfig, TextConfig, TowerConfig, VisionConfig};
pub use text::TextTransformer;
pub use vision::VisionTransformer;

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::nn::{load_safetensors, ParamStore};
pub(crate) use crate::nn::{LayerNorm, Linear, Params};
use crate::ops::{
    attention::attention, elementwise as ew, l2norm::l2_normalize, layernorm::add_layer_norm,
    matmul, transpose,
};
use crate::tensor::{DType, Device, Tensor};

/// `CLIPAttention`: q/k/v projections, per-head scaled-dot-product attention, out projection.
pub(crate) struct SelfAttn {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttn {
    /// x `[B, T, W]` → `[B, T, W]`.
    fn forward(&self, tape: &mut Tape, x: &Tensor, causal: bool) -> Result<Tensor> {
        let (b, t, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let h = self.heads;
        // [B, T, W] → [B, T, H, Dh] → [B, H, T, Dh]
        let split = |tape: &mut Tape, proj: &Linear| -> Result<Tensor> {
            let y = proj.forward(tape, x)?;
            let y = transpose::reshape(tape, &y, &[b, t, h, w / h])?;
            transpose::transpose(tape, &y, 1, 2)
        };
        let q = split(tape, &self.q_proj)?;
        let k = split(tape, &self.k_proj)?;
        let v = split(tape, &self.v_proj)?;
        let o = attention(tape, &q, &k, &v, causal)?;
        let o = transpose::transpose(tape, &o, 1, 2)?;
        let o = transpose::reshape(tape, &o, &[b, t, w])?;
        self.out_proj.forward(tape, &o)
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and quick_gelu MLP, each with a residual.
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttn,
    layer_norm2: LayerNorm,
    mlp_fc1: Linear,
    mlp_fc2: Linear,
}

impl EncoderLayer {
    fn new(p: &mut Params, name: &str, c: &TowerConfig) -> Result<EncoderLayer> {
        let (w, m) = (c.hidden_size, c.intermediate_size);
        let attn = |p: &mut Params, proj: &str| {
            Linear::new(p, &format!("{name}.self_attn.{proj}"), w, w, true)
        };
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::new(p, &format!("{name}.layer_norm1"), w, c.layer_norm_eps)?,
            self_attn: SelfAttn {
                q_proj: attn(p, "q_proj")?,
                k_proj: attn(p, "k_proj")?,
                v_proj: attn(p, "v_proj")?,
                out_proj: attn(p, "out_proj")?,
                heads: c.num_attention_heads,
            },
            layer_norm2: LayerNorm::new(p, &format!("{name}.layer_norm2"), w, c.layer_norm_eps)?,
            mlp_fc1: Linear::new(p, &format!("{name}.mlp.fc1"), m, w, true)?,
            mlp_fc2: Linear::new(p, &format!("{name}.mlp.fc2"), w, m, true)?,
        })
    }

    fn forward(&self, tape: &mut Tape, x: &Tensor, causal: bool) -> Result<Tensor> {
        let h = self.layer_norm1.forward(tape, x)?;
        let h = self.self_attn.forward(tape, &h, causal)?;
        // x = x + attn(…) and layer_norm2(x) in one pass over the rows.
        let ln2 = &self.layer_norm2;
        let (x, h) = add_layer_norm(tape, x, &h, Some(&ln2.weight), Some(&ln2.bias), ln2.eps)?;
        let h = self.mlp_fc1.forward_act(tape, &h, ew::Unary::QuickGelu)?;
        let h = self.mlp_fc2.forward(tape, &h)?;
        ew::add(tape, &x, &h)
    }
}

/// `CLIPEncoder`: `encoder.layers.{i}`.
pub(crate) struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(p: &mut Params, name: &str, c: &TowerConfig) -> Result<Encoder> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(p, &format!("{name}.layers.{i}"), c))
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    pub fn forward(&self, tape: &mut Tape, x: &Tensor, causal: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(tape, &x, causal)?;
        }
        Ok(x)
    }
}

/// A whole `CLIPModel`: both towers, both projections and the logit scale.
pub struct Clip {
    pub config: ClipConfig,
    /// Every parameter under its Hugging Face name (watch them to train or fine-tune).
    pub store: ParamStore,
    vision_model: VisionTransformer,
    text_model: TextTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    /// log of the logits' temperature (scalar; `logits = exp(logit_scale)·cos`).
    logit_scale: Tensor,
}

impl Clip {
    /// A zero-initialised model of this shape on `device` (its store lists every expected tensor).
    pub fn zeros(config: ClipConfig, device: &Device) -> Result<Clip> {
        let mut store = ParamStore::new();
        let mut p = Params::zeros(&mut store, device);
        let vision_model = VisionTransformer::new(&mut p, "vision_model", &config.vision)?;
        let text_model = TextTransformer::new(&mut p, "text_model", &config.text)?;
        let visual_projection = Linear::new(
            &mut p,
            "visual_projection",
            config.projection_dim,
            config.vision.tower.hidden_size,
            false,
        )?;
        let text_projection = Linear::new(
            &mut p,
            "text_projection",
            config.projection_dim,
            config.text.tower.hidden_size,
            false,
        )?;
        let logit_scale = p.get("logit_scale", &[])?;
        Ok(Clip {
            config,
            store,
            vision_model,
            text_model,
            visual_projection,
            text_projection,
            logit_scale,
        })
    }

    /// Loads a Hugging Face CLIP directory (`config.json` + `model.safetensors`, f32/bf16/f16
    /// stored, converted to f32) onto `device`. A missing file, a missing or mis-shaped tensor,
    /// or an unsupported config is an error naming the file (and the tensor).
    pub fn load(dir: &Path, device: &Device) -> Result<Clip> {
        let config = ClipConfig::load(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::file(&weights, "missing: a CLIP directory needs model.safetensors (save_pretrained with safe_serialization)"));
        }
        let (tensors, _) = load_safetensors(&weights)?;
        let mut clip = Clip::zeros(config, device)?;
        // Extra tensors (e.g. an older transformers' position_ids buffers) are ignored.
        clip.store.assign_from(tensors, "", &weights)?;
        Ok(clip)
    }

    /// `load`, with every weight converted to `dtype` on the device. bf16 is for inference:
    /// activations are bf16 between ops with f32 arithmetic inside each (f32 accumulation in
    /// every GEMM, f32 statistics in the layer norms, f32 softmax in attention); there is no
    /// backward in bf16.
    pub fn load_as(dir: &Path, device: &Device, dtype: DType) -> Result<Clip> {
        let mut clip = Clip::load(dir, device)?;
        clip.store.convert(dtype)?;
        Ok(clip)
    }

    /// Fresh weights, the same on every device for a seed, drawn as CLIP's own initialisation
    /// (Hugging Face `CLIPPreTrainedModel._init_weights`, factor 1): see [`init_of`]. Scaling
    /// by width matters at the small widths `train-clip` uses: with N(0, 0.02²) everywhere a
    /// width-64 tower's pooled token is almost all class (or end-of-text) embedding, every
    /// image embeds alike, and the contrastive loss sits at ln B for the first hundreds of steps.
    /// One departure: the image position embeddings start as large as a patch token, so that
    /// where a patch is counts as much as what it shows.
    pub fn init_random(&mut self, seed: u64) -> Result<()> {
        for (i, p) in self.store.iter().enumerate() {
            let t = match init_of(&self.config, &p.name) {
                Init::Constant(v) => Tensor::full(v, p.value.shape(), p.value.device())?,
                Init::Normal(std) => Tensor::randn(
                    p.value.shape(),
                    std,
                    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (1000 + i as u64),
                    p.value.device(),
                )?,
            };
            p.value.set_storage_from(t.to_dtype(p.value.dtype())?)?;
        }
        Ok(())
    }

    /// The dtype the weights (and so the activations) are in.
    pub fn dtype(&self) -> DType {
        self.logit_scale.dtype()
    }

    /// Projected image features `[B, projection_dim]` (HF `get_image_features`: not normalised)
    /// of pixels `[B, 3, H, W]` already preprocessed (resized, cropped, normalised). Pixels of
    /// another dtype than the model's are converted first (not recorded: bf16 has no backward).
    /// The features are in the model's dtype.
    pub fn encode_image(&self, tape: &mut Tape, pixels: &Tensor) -> Result<Tensor> {
        let cast;
        let pixels = if pixels.dtype() == self.dtype() {
            pixels
        } else {
            cast = pixels.to_dtype(self.dtype())?;
            &cast
        };
        let pooled = self.vision_model.forward(tape, pixels)?;
        self.visual_projection.forward(tape, &pooled)
    }

    /// Projected text features `[B, projection_dim]` (HF `get_text_features`) of token ids laid
    /// out as `[B, context]` row by row (`ids.len()` = B·context).
    pub fn encode_text(&self, tape: &mut Tape, ids: &[u32], context: usize) -> Result<Tensor> {
        let pooled = self.text_model.forward(tape, ids, context)?;
        self.text_projection.forward(tape, &pooled)
    }

    /// `exp(logit_scale)·cos(image_i, text_j)`: `[B_img, B_txt]` from the two feature batches.
    /// Recorded through `logit_scale` too, so training CLIP contrastively learns its temperature.
    /// bf16 features (from a bf16 model) are widened to f32 first, unrecorded.
    pub fn logits_per_image(
        &self,
        tape: &mut Tape,
        image_features: &Tensor,
        text_features: &Tensor,
    ) -> Result<Tensor> {
        let (image_features, text_features) = (
            image_features.to_dtype(DType::F32)?,
            text_features.to_dtype(DType::F32)?,
        );
        let i = l2_normalize(tape, &image_features, 1e-12)?;
        let t = l2_normalize(tape, &text_features, 1e-12)?;
        let cos = matmul::matmul(tape, &i, &t, false, true)?;
        let logit_scale = self.logit_scale.to_dtype(DType::F32)?;
        let scale = ew::exp(tape, &logit_scale)?;
        ew::scale_by(tape, &cos, &scale)
    }
}

/// How one freshly initialised CLIP parameter is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    Constant(f32),
    Normal(f32),
}

/// CLIP's initialisation of the parameter `name` (Hugging Face `_init_weights` with
/// `initializer_range` 0.02 and `initializer_factor` 1): the layer norms' gains 1, every bias 0,
/// `logit_scale` ln(1/0.07); the token, patch and text position embeddings N(0, 0.02²); the
/// image position embeddings, unlike Hugging Face's, at the scale of a p-pixel patch token,
/// N(0, 3·p²·0.02²); the class embedding N(0, 1/w); attention's q, k, v N(0, 1/(2·layers·w))
/// and its output N(0, 1/w); the MLP's fc1 N(0, 1/(2w)) and fc2 N(0, 1/(2·layers·w)); each
/// projection N(0, 1/w), with w the tower's width.
fn init_of(config: &ClipConfig, name: &str) -> Init {
    if name == "logit_scale" {
        return Init::Constant((1.0f32 / 0.07).ln());
    }
    let is_norm = ["layer_norm", "layrnorm", "layernorm"]
        .iter()
        .any(|n| name.contains(n));
    if is_norm && name.ends_with("weight") {
        return Init::Constant(1.0);
    }
    if name.ends_with("bias") {
        return Init::Constant(0.0);
    }
    let tower = if name.starts_with("vision_model") || name.starts_with("visual_projection") {
        &config.vision.tower
    } else {
        &config.text.tower
    };
    let width = tower.hidden_size as f32;
    let depth = (2 * tower.num_hidden_layers).max(1) as f32;
    let has = |parts: &[&str]| parts.iter().any(|p| name.contains(p));
    let std = if name == "vision_model.embeddings.position_embedding.weight" {
        // A patch token at initialisation: 3·patch² pixels of about unit variance (CLIP's
        // normalisation) through N(0, 0.02²) weights. At 0.02 a token's place is a few percent
        // of it and the world's small CLIPs learn a bag of patch colours (docs/results.md).
        let patch = config.vision.patch_size as f32;
        0.02 * patch * 3f32.sqrt()
    } else if name.ends_with("class_embedding") {
        width.powf(-0.5)
    } else if has(&["q_proj", "k_proj", "v_proj", "mlp.fc2"]) {
        (width * depth).powf(-0.5)
    } else if has(&["out_proj", "_projection.weight"]) {
        width.powf(-0.5)
    } else if name.contains("mlp.fc1") {
        (2.0 * width).powf(-0.5)
    } else {
        0.02
    };
    Init::Normal(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisation_follows_clips_by_width_and_depth() {
        let json = crate::train::clip::ClipTrainConfig::default().hf_config(32);
        let config = ClipConfig::from_json(&json.to_string(), Path::new("config.json")).unwrap();
        let (w, layers) = (64.0f32, 2.0f32);
        let cases = [
            ("logit_scale", Init::Constant((1.0f32 / 0.07).ln())),
            ("vision_model.pre_layrnorm.weight", Init::Constant(1.0)),
            ("text_model.final_layer_norm.bias", Init::Constant(0.0)),
            (
                "vision_model.encoder.layers.0.mlp.fc1.bias",
                Init::Constant(0.0),
            ),
            (
                "vision_model.embeddings.class_embedding",
                Init::Normal(1.0 / w.sqrt()),
            ),
            (
                "vision_model.embeddings.patch_embedding.weight",
                Init::Normal(0.02),
            ),
            (
                "text_model.embeddings.token_embedding.weight",
                Init::Normal(0.02),
            ),
            (
                "text_model.encoder.layers.1.self_attn.q_proj.weight",
                Init::Normal(1.0 / (2.0 * layers * w).sqrt()),
            ),
            (
                "text_model.encoder.layers.1.self_attn.out_proj.weight",
                Init::Normal(1.0 / w.sqrt()),
            ),
            (
                "vision_model.encoder.layers.0.mlp.fc1.weight",
                Init::Normal(1.0 / (2.0 * w).sqrt()),
            ),
            (
                "vision_model.encoder.layers.0.mlp.fc2.weight",
                Init::Normal(1.0 / (2.0 * layers * w).sqrt()),
            ),
            (
                "vision_model.embeddings.position_embedding.weight",
                Init::Normal(0.02 * (3.0f32 * 64.0).sqrt()),
            ),
            (
                "text_model.embeddings.position_embedding.weight",
                Init::Normal(0.02),
            ),
            ("visual_projection.weight", Init::Normal(1.0 / w.sqrt())),
            ("text_projection.weight", Init::Normal(1.0 / w.sqrt())),
        ];
        for (name, want) in cases {
            match (init_of(&config, name), want) {
                (Init::Constant(a), Init::Constant(b)) => assert_eq!(a, b, "{name}"),
                (Init::Normal(a), Init::Normal(b)) => {
                    assert!((a - b).abs() < 1e-6, "{name}: {a} vs {b}")
                }
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
    }
}
