//! Lafite's conditioned StyleGAN2 synthesis layers (the mind-reader fork's `SynthesisLayer` and
//! `ToRGBLayer`, conditioning structures 2 and 4).
//!
//! Every layer turns the CLIP condition into its own style: the condition `fts` goes through a
//! small MLP (`pre_0`: F → (F+512)/2, `pre_1`: → 512, both lrelu with lr multiplier 0.01), is
//! concatenated with w (condition first) and mapped by `affine_0` (w_dim + 512 → in_channels, bias
//! initialised to 1) to the modulation styles. Structure 4 takes two conditions in one `fts` of
//! width F + F2 (the image mapper's and the caption mapper's outputs), runs the second through
//! its own `pre_01`/`pre_11`, and merges the two with an elementwise max before `affine_0`.

use std::collections::BTreeMap;

use super::{FullyConnected, Params};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::bias_act::Act;
use crate::ops::concat::{concat, slice};
use crate::ops::conv_epilogue::{BiasAct, Noise};
use crate::ops::elementwise as ew;
use crate::ops::modconv::{modulated_conv2d, modulated_conv2d_bias_act, Resample};
use crate::ops::upfirdn2d::{filter_size, setup_filter, upfirdn2d_bias_act};
use crate::tensor::{randn_vec, Tensor};

/// The per-layer noise of a synthesis layer (the reference's `noise_mode`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseMode<'a> {
    /// The layer's fixed `noise_const` buffer.
    Const,
    /// Fresh N(0, 1) noise per sample, drawn from this seed (mixed with the layer's name).
    Random(u64),
    /// Noise drawn beforehand, each layer's under its name: the same values as `Random` of the
    /// bank's seed, held in buffers that a CUDA graph reads (nothing is uploaded while it runs).
    Given(&'a NoiseBank),
    /// No noise.
    None,
}

/// Each synthesis layer's noise `[N, 1, r, r]` for one draw, by layer name.
#[derive(Debug, Default)]
pub struct NoiseBank(pub BTreeMap<String, Tensor>);

/// Two banks are the same noise when they are the same bank.
impl PartialEq for NoiseBank {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl NoiseBank {
    /// What `NoiseMode::Random(seed)` draws for `n` samples in the layers `(name, resolution)`,
    /// on the host, in the bank's order.
    pub fn draw(layers: &[(String, usize)], n: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
        layers
            .iter()
            .map(|(name, r)| {
                let v = randn_vec(n * r * r, 1.0, seed ^ super::name_hash(name));
                (name.clone(), v)
            })
            .collect()
    }

    fn get(&self, layer: &str) -> Result<&Tensor> {
        self.0
            .get(layer)
            .ok_or_else(|| Error::Invalid(format!("the given noise has nothing for layer {layer}")))
    }
}

/// How a layer reads the condition: the structure (2: one condition of width `f_dim`; 4: two,
/// `f_dim` + `f_dim2`) and the learning-rate multiplier of its MLPs (the fork's 0.01).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conditioning {
    pub structure: u32,
    pub f_dim: usize,
    pub f_dim2: usize,
    pub lr_multiplier: f32,
}

/// The conditioning MLPs and the affine map to styles of one layer.
pub struct Condition {
    pub pre_0: FullyConnected,
    pub pre_1: FullyConnected,
    /// Structure 4's second condition.
    pub second: Option<(FullyConnected, FullyConnected)>,
    pub affine_0: FullyConnected,
    pub f_dim: usize,
    pub f_dim2: usize,
}

impl Condition {
    pub fn new(
        p: &mut Params,
        name: &str,
        spec: Conditioning,
        w_dim: usize,
        out: usize,
    ) -> Result<Condition> {
        let Conditioning {
            structure,
            f_dim,
            f_dim2,
            lr_multiplier,
        } = spec;
        let mlp = |p: &mut Params,
                   a: &str,
                   b: &str,
                   f: usize|
         -> Result<(FullyConnected, FullyConnected)> {
            let mid = (f + 512) / 2;
            Ok((
                FullyConnected::new(
                    p,
                    &format!("{name}.{a}"),
                    f,
                    mid,
                    true,
                    Act::LRELU,
                    lr_multiplier,
                    0.0,
                )?,
                FullyConnected::new(
                    p,
                    &format!("{name}.{b}"),
                    mid,
                    512,
                    true,
                    Act::LRELU,
                    lr_multiplier,
                    0.0,
                )?,
            ))
        };
        let (pre_0, pre_1) = mlp(p, "pre_0", "pre_1", f_dim)?;
        let second = match structure {
            2 => None,
            4 => Some(mlp(p, "pre_01", "pre_11", f_dim2)?),
            other => {
                return Err(Error::Invalid(format!(
                    "{name}: conditioning structure {other} is not supported (2: one condition, 4: two)"
                )))
            }
        };
        let affine_0 = FullyConnected::new(
            p,
            &format!("{name}.affine_0"),
            w_dim + 512,
            out,
            true,
            Act::Linear,
            1.0,
            1.0,
        )?;
        Ok(Condition {
            pre_0,
            pre_1,
            second,
            affine_0,
            f_dim,
            f_dim2,
        })
    }

    /// The width of `fts` this layer reads.
    pub fn fts_width(&self) -> usize {
        self.f_dim
            + if self.second.is_some() {
                self.f_dim2
            } else {
                0
            }
    }

    /// styles `[N, out]` from w `[N, w_dim]` and fts `[N, F (+ F2)]`.
    pub fn styles(&self, tape: &mut Tape, w: &Tensor, fts: &Tensor) -> Result<Tensor> {
        let width = fts.shape().get(1).copied().unwrap_or(0);
        if fts.rank() != 2 || width < self.fts_width() || fts.shape()[0] != w.shape()[0] {
            return Err(Error::shape(
                "synthesis condition",
                format!(
                    "fts {:?} for w {:?}: want [N, {}]",
                    fts.shape(),
                    w.shape(),
                    self.fts_width()
                ),
            ));
        }
        let h = match &self.second {
            None if width == self.f_dim => self.pre_0.forward(tape, fts)?,
            _ => {
                let f1 = slice(tape, fts, 1, 0, self.f_dim)?;
                self.pre_0.forward(tape, &f1)?
            }
        };
        let mut h = self.pre_1.forward(tape, &h)?;
        if let Some((pre_01, pre_11)) = &self.second {
            let f2 = slice(tape, fts, 1, self.f_dim, self.f_dim2)?;
            let h2 = pre_01.forward(tape, &f2)?;
            let h2 = pre_11.forward(tape, &h2)?;
            h = ew::maximum(tape, &h, &h2)?;
        }
        let hw = concat(tape, &[&h, w], 1)?;
        self.affine_0.forward(tape, &hw)
    }
}

/// One modulated 3×3 layer: `styles → modulated conv (demodulated; ×2 transposed + filter when
/// up) → + noise·noise_strength → bias_act(lrelu, gain √2, clamp ±conv_clamp)`.
pub struct SynthesisLayer {
    pub name: String,
    pub cond: Condition,
    pub weight: Tensor,
    pub bias: Tensor,
    pub noise_const: Tensor,
    pub noise_strength: Tensor,
    pub resample_filter: Tensor,
    pub up: bool,
    pub resolution: usize,
    pub conv_clamp: Option<f32>,
}

impl SynthesisLayer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &mut Params,
        name: &str,
        cin: usize,
        cout: usize,
        w_dim: usize,
        resolution: usize,
        up: bool,
        conv_clamp: Option<f32>,
        spec: Conditioning,
    ) -> Result<SynthesisLayer> {
        let cond = Condition::new(p, name, spec, w_dim, cin)?;
        let f = setup_filter(&[1.0, 3.0, 3.0, 1.0], p.device)?;
        Ok(SynthesisLayer {
            name: name.to_string(),
            resample_filter: p.buffer(&format!("{name}.resample_filter"), f)?,
            cond,
            weight: p.randn(&format!("{name}.weight"), &[cout, cin, 3, 3], 1.0)?,
            noise_const: p
                .randn_buffer(&format!("{name}.noise_const"), &[resolution, resolution])?,
            noise_strength: p.get(&format!("{name}.noise_strength"), &[])?,
            bias: p.get(&format!("{name}.bias"), &[cout])?,
            up,
            resolution,
            conv_clamp,
        })
    }

    /// x `[N, in, r/up, r/up]`, w `[N, w_dim]`, fts `[N, F]` → `[N, out, r, r]`.
    pub fn forward(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        w: &Tensor,
        fts: &Tensor,
        noise: NoiseMode,
    ) -> Result<Tensor> {
        let styles = self.cond.styles(tape, w, fts)?;
        let r = self.resolution;
        let random;
        let noise = match noise {
            NoiseMode::None => None,
            NoiseMode::Const => Some(&self.noise_const),
            NoiseMode::Random(seed) => {
                let n = x.shape().first().copied().unwrap_or(0);
                let seed = seed ^ super::name_hash(&self.name);
                random = Tensor::randn(&[n, 1, r, r], 1.0, seed, x.device())?;
                Some(&random)
            }
            NoiseMode::Given(bank) => Some(bank.get(&self.name)?),
        };
        let noise = noise.map(|noise| Noise {
            noise,
            strength: &self.noise_strength,
        });
        // The reference clamps at conv_clamp times the forward's `gain` argument (1 in the skip
        // generator), not times the activation's √2.
        let epi = BiasAct::new(
            Some(&self.bias),
            Act::LRELU,
            Act::LRELU.default_gain(),
            self.conv_clamp,
        )
        .with_noise(noise);
        let resolution_err = || {
            Error::shape(
                "synthesis layer",
                format!(
                    "{}: input {:?} does not give resolution {r}",
                    self.name,
                    x.shape(),
                ),
            )
        };
        if !self.up {
            // conv → noise → bias_act in the convolution's store.
            if x.shape().get(2) != Some(&r) {
                return Err(resolution_err());
            }
            let same = 1;
            return modulated_conv2d_bias_act(tape, x, &self.weight, &styles, true, same, epi);
        }
        let y = modulated_conv2d(tape, x, &self.weight, &styles, true, Resample::Up2)?;
        // conv2d_resample's padding after the transposed 3×3 (padding 1, up 2):
        // 1 + (fw + 1)/2 − 2 on each side, 1 for the 4-tap filter.
        let (fw, _) = filter_size(&self.resample_filter)?;
        let pad = 1 + (fw as i64 + 1) / 2 - 2;
        if y.shape()[2] as i64 + 2 * pad + 1 - fw as i64 != r as i64 {
            return Err(resolution_err());
        }
        // The filter, then noise → bias_act in its store.
        let f = &self.resample_filter;
        upfirdn2d_bias_act(tape, &y, f, 1, 1, [pad; 4], false, 4.0, epi)
    }
}

/// The 1×1 modulated convolution to RGB: no demodulation, the styles scaled by 1/√in, linear
/// activation, clamp `conv_clamp` (no gain).
pub struct ToRgb {
    pub cond: Condition,
    pub weight: Tensor,
    pub bias: Tensor,
    pub weight_gain: f32,
    pub conv_clamp: Option<f32>,
}

impl ToRgb {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &mut Params,
        name: &str,
        cin: usize,
        channels: usize,
        w_dim: usize,
        conv_clamp: Option<f32>,
        spec: Conditioning,
    ) -> Result<ToRgb> {
        Ok(ToRgb {
            cond: Condition::new(p, name, spec, w_dim, cin)?,
            weight: p.randn(&format!("{name}.weight"), &[channels, cin, 1, 1], 1.0)?,
            bias: p.get(&format!("{name}.bias"), &[channels])?,
            weight_gain: 1.0 / (cin as f32).sqrt(),
            conv_clamp,
        })
    }

    pub fn forward(&self, tape: &mut Tape, x: &Tensor, w: &Tensor, fts: &Tensor) -> Result<Tensor> {
        let styles = self.cond.styles(tape, w, fts)?;
        let styles = ew::scale(tape, &styles, self.weight_gain)?;
        let epi = BiasAct::new(Some(&self.bias), Act::Linear, 1.0, self.conv_clamp);
        modulated_conv2d_bias_act(tape, x, &self.weight, &styles, false, 0, epi)
    }
}
