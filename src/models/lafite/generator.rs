//! Lafite's generator as the mind-reader fork builds it (`training/networks.py`: `Generator`,
//! `MappingNetwork`, `SynthesisNetwork`, `SynthesisBlock`; skip architecture).
//!
//! 1. `mapping`: z → `normalize_2nd_moment` → `fc0 … fc{L−1}` (lrelu, lr ×0.01) → w; truncation
//!    `w_avg + ψ·(w − w_avg)`; one w per synthesis layer (`num_ws = 2·log2 R − 2`).
//! 2. `synthesis.b4`: the learned `const` `[C, 4, 4]` → `conv1` → `torgb`.
//! 3. `synthesis.b{res}` for res = 8 … R: `conv0` (×2 up) → `conv1` → `torgb`, the image so far
//!    upsampled (`upsample2d`) and the block's RGB added (the skip architecture). A block reads
//!    its convolutions' ws and the next one for its ToRGB (shared with the next block's conv0).
//!
//! Every synthesis layer and ToRGB reads the condition `fts` through its own MLP
//! (`nn::synthesis::Condition`). Parameter and buffer names are the fork's state_dict's.

use super::config::GeneratorConfig;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::nn::{FullyConnected, NoiseMode, Params, SynthesisLayer, ToRgb};
use crate::ops::bias_act::Act;
use crate::ops::channels::normalize_2nd_moment;
use crate::ops::concat::concat;
use crate::ops::elementwise as ew;
use crate::ops::transpose::reshape;
use crate::ops::upfirdn2d::{setup_filter, upsample2d};
use crate::tensor::Tensor;

/// z → w, with the tracked average `w_avg` for truncation.
pub struct MappingNetwork {
    pub fcs: Vec<FullyConnected>,
    pub w_avg: Tensor,
}

impl MappingNetwork {
    fn new(p: &mut Params, c: &GeneratorConfig) -> Result<MappingNetwork> {
        let mut fcs = Vec::new();
        for i in 0..c.mapping_layers {
            let inp = if i == 0 {
                c.z_dim
            } else {
                c.mapping_layer_features
            };
            let out = if i + 1 == c.mapping_layers {
                c.w_dim
            } else {
                c.mapping_layer_features
            };
            fcs.push(FullyConnected::new(
                p,
                &format!("mapping.fc{i}"),
                inp,
                out,
                true,
                Act::LRELU,
                c.mapping_lr_multiplier,
                0.0,
            )?);
        }
        let w_avg = p.buffer("mapping.w_avg", Tensor::zeros(&[c.w_dim], p.device)?)?;
        Ok(MappingNetwork { fcs, w_avg })
    }

    /// z `[N, z_dim]` → w `[N, w_dim]`, truncated towards `w_avg` by ψ (1 = none).
    pub fn forward(&self, tape: &mut Tape, z: &Tensor, psi: f32) -> Result<Tensor> {
        let mut x = normalize_2nd_moment(tape, z, 1e-8)?;
        for fc in &self.fcs {
            x = fc.forward(tape, &x)?;
        }
        if psi == 1.0 {
            return Ok(x);
        }
        // w_avg.lerp(x, ψ) = ψ·x + (1 − ψ)·w_avg.
        let shifted = ew::scale(tape, &self.w_avg, 1.0 - psi)?;
        let x = ew::scale(tape, &x, psi)?;
        ew::bias_add(tape, &x, &shifted, -1)
    }
}

/// One resolution of the synthesis network.
pub struct SynthesisBlock {
    pub resolution: usize,
    /// `[C, 4, 4]`, the first block only.
    pub constant: Option<Tensor>,
    pub conv0: Option<SynthesisLayer>,
    pub conv1: SynthesisLayer,
    pub torgb: ToRgb,
    pub resample_filter: Tensor,
}

impl SynthesisBlock {
    fn new(p: &mut Params, c: &GeneratorConfig, res: usize) -> Result<SynthesisBlock> {
        let name = format!("synthesis.b{res}");
        let out = c.channels(res);
        let (spec, clamp) = (c.conditioning(), c.conv_clamp);
        let layer = |p: &mut Params, which: &str, cin: usize, up: bool| {
            let n = format!("{name}.{which}");
            SynthesisLayer::new(p, &n, cin, out, c.w_dim, res, up, clamp, spec)
        };
        let (constant, conv0) = if res == 4 {
            (
                Some(p.randn(&format!("{name}.const"), &[out, 4, 4], 1.0)?),
                None,
            )
        } else {
            (None, Some(layer(p, "conv0", c.channels(res / 2), true)?))
        };
        let conv1 = layer(p, "conv1", out, false)?;
        let torgb_name = format!("{name}.torgb");
        let torgb = ToRgb::new(p, &torgb_name, out, c.img_channels, c.w_dim, clamp, spec)?;
        let filter = setup_filter(&[1.0, 3.0, 3.0, 1.0], p.device)?;
        let resample_filter = p.buffer(&format!("{name}.resample_filter"), filter)?;
        Ok(SynthesisBlock {
            resolution: res,
            constant,
            conv0,
            conv1,
            torgb,
            resample_filter,
        })
    }

    fn num_conv(&self) -> usize {
        1 + self.conv0.is_some() as usize
    }

    /// (x, img) → (x, img) at this resolution; `ws` holds num_conv + 1 latents.
    fn forward(
        &self,
        tape: &mut Tape,
        x: Option<&Tensor>,
        img: Option<&Tensor>,
        ws: &[Tensor],
        fts: &Tensor,
        noise: NoiseMode,
    ) -> Result<(Tensor, Tensor)> {
        let x = match (&self.constant, &self.conv0, x) {
            (Some(c), _, _) => {
                let n = ws[0].shape()[0];
                let one = reshape(tape, c, &[1, c.shape()[0], 4, 4])?;
                let copies: Vec<&Tensor> = std::iter::repeat_n(&one, n).collect();
                let x = concat(tape, &copies, 0)?;
                self.conv1.forward(tape, &x, &ws[0], fts, noise)?
            }
            (None, Some(conv0), Some(x)) => {
                let x = conv0.forward(tape, x, &ws[0], fts, noise)?;
                self.conv1.forward(tape, &x, &ws[1], fts, noise)?
            }
            _ => unreachable!("a block after the first always receives x"),
        };
        let y = self.torgb.forward(tape, &x, &ws[self.num_conv()], fts)?;
        let img = match img {
            Some(img) => {
                let up = upsample2d(tape, img, &self.resample_filter, 2)?;
                ew::add(tape, &up, &y)?
            }
            None => y,
        };
        Ok((x, img))
    }
}

/// The whole generator: `mapping`, `synthesis.b4 … b{R}`.
pub struct Generator {
    pub config: GeneratorConfig,
    pub mapping: MappingNetwork,
    pub blocks: Vec<SynthesisBlock>,
}

impl Generator {
    /// Registers every parameter (in `p.store`) and buffer (in `p.buffers`) under the fork's names.
    pub fn new(p: &mut Params, config: GeneratorConfig) -> Result<Generator> {
        let blocks = config
            .resolutions()
            .into_iter()
            .map(|res| SynthesisBlock::new(p, &config, res))
            .collect::<Result<Vec<_>>>()?;
        let mapping = MappingNetwork::new(p, &config)?;
        Ok(Generator {
            config,
            mapping,
            blocks,
        })
    }

    /// Every synthesis layer that adds noise, as (name, resolution): what a [`NoiseBank`] holds.
    ///
    /// [`NoiseBank`]: crate::nn::NoiseBank
    pub fn noise_layers(&self) -> Vec<(String, usize)> {
        self.blocks
            .iter()
            .flat_map(|b| b.conv0.iter().chain([&b.conv1]))
            .map(|l| (l.name.clone(), l.resolution))
            .collect()
    }

    /// The synthesis network on per-layer latents `ws` (`num_ws` tensors `[N, w_dim]`; style
    /// mixing passes different ones) and the condition fts `[N, F (+ F2)]` → images `[N, C, R, R]`.
    pub fn synthesis(
        &self,
        tape: &mut Tape,
        ws: &[Tensor],
        fts: &Tensor,
        noise: NoiseMode,
    ) -> Result<Tensor> {
        if ws.len() != self.config.num_ws() {
            return Err(Error::Invalid(format!(
                "synthesis needs {} ws, got {}",
                self.config.num_ws(),
                ws.len()
            )));
        }
        let (mut x, mut img): (Option<Tensor>, Option<Tensor>) = (None, None);
        let mut at = 0;
        for block in &self.blocks {
            let n = block.num_conv();
            let (nx, ni) = block.forward(
                tape,
                x.as_ref(),
                img.as_ref(),
                &ws[at..at + n + 1],
                fts,
                noise,
            )?;
            (x, img) = (Some(nx), Some(ni));
            at += n;
        }
        img.ok_or_else(|| Error::Invalid("the generator has no blocks".into()))
    }

    /// z `[N, z_dim]` and the condition fts → images `[N, C, R, R]` in the generator's range
    /// (about [−1, 1], not clamped), truncated by ψ (1 = none).
    pub fn forward(
        &self,
        tape: &mut Tape,
        z: &Tensor,
        fts: &Tensor,
        psi: f32,
        noise: NoiseMode,
    ) -> Result<Tensor> {
        let c = &self.config;
        if z.rank() != 2 || z.shape()[1] != c.z_dim {
            return Err(Error::shape(
                "generator",
                format!("z must be [N, {}], got {:?}", c.z_dim, z.shape()),
            ));
        }
        if fts.rank() != 2 || fts.shape() != [z.shape()[0], c.fts_width()] {
            return Err(Error::shape(
                "generator",
                format!(
                    "fts must be [{}, {}] (structure {}), got {:?}",
                    z.shape()[0],
                    c.fts_width(),
                    c.structure,
                    fts.shape()
                ),
            ));
        }
        let w = self.mapping.forward(tape, z, psi)?;
        let ws = vec![w; c.num_ws()];
        self.synthesis(tape, &ws, fts, noise)
    }
}
