//! Lafite's three-head discriminator as the mind-reader fork builds it (`training/networks.py`:
//! `Discriminator`, `DiscriminatorBlock` with the resnet architecture, `DiscriminatorEpilogue`).
//!
//! 1. `b{R}` … `b8`: `fromrgb` (1×1, first block only) → `skip` (1×1 ↓2, no bias, gain √0.5) beside
//!    `conv0` (3×3) → `conv1` (3×3 ↓2, gain √0.5), summed.
//! 2. `b4`, the epilogue (always f32): minibatch stddev → `conv` (3×3, C+1 → C) → `fc`
//!    (16·C → C, lrelu) → `out` (C → 1): the real/fake logit; the semantic heads `fts` (C → F) and,
//!    for structure 4, `fts2` (C → F2) read the same fc output.
//!
//! The reference's quirk, kept because its training depends on it: the logit adds ONE scalar to
//! every row, the sum over the whole batch of `d_fts·fts` (structure 4: `0.5·Σ d_fts·c₁ +
//! 0.5·Σ d_fts2·c₂`), not a per-sample dot product. `d_fts` is L2-normalised only with `use_norm`.

use super::config::DiscriminatorConfig;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::nn::{Conv2dLayer, FullyConnected, Params};
use crate::ops::bias_act::Act;
use crate::ops::concat::slice;
use crate::ops::elementwise as ew;
use crate::ops::l2norm::l2_normalize;
use crate::ops::mbstd::minibatch_stddev;
use crate::ops::reduce::sum_all;
use crate::ops::transpose::reshape;
use crate::ops::upfirdn2d::setup_filter;
use crate::tensor::Tensor;

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// One residual block of the discriminator (halves the resolution).
pub struct DiscriminatorBlock {
    pub resolution: usize,
    pub fromrgb: Option<Conv2dLayer>,
    pub conv0: Conv2dLayer,
    pub conv1: Conv2dLayer,
    pub skip: Conv2dLayer,
    pub resample_filter: Tensor,
}

impl DiscriminatorBlock {
    fn new(p: &mut Params, c: &DiscriminatorConfig, res: usize) -> Result<DiscriminatorBlock> {
        let name = format!("b{res}");
        let (tmp, out, clamp) = (c.channels(res), c.channels(res / 2), c.conv_clamp);
        let fromrgb = if res == c.img_resolution {
            let n = format!("{name}.fromrgb");
            Some(Conv2dLayer::new(
                p,
                &n,
                c.img_channels,
                tmp,
                1,
                true,
                Act::LRELU,
                1,
                clamp,
            )?)
        } else {
            None
        };
        let conv0 = Conv2dLayer::new(
            p,
            &format!("{name}.conv0"),
            tmp,
            tmp,
            3,
            true,
            Act::LRELU,
            1,
            clamp,
        )?;
        let conv1 = Conv2dLayer::new(
            p,
            &format!("{name}.conv1"),
            tmp,
            out,
            3,
            true,
            Act::LRELU,
            2,
            clamp,
        )?;
        let skip = Conv2dLayer::new(
            p,
            &format!("{name}.skip"),
            tmp,
            out,
            1,
            false,
            Act::Linear,
            2,
            None,
        )?;
        let filter = setup_filter(&[1.0, 3.0, 3.0, 1.0], p.device)?;
        let resample_filter = p.buffer(&format!("{name}.resample_filter"), filter)?;
        Ok(DiscriminatorBlock {
            resolution: res,
            fromrgb,
            conv0,
            conv1,
            skip,
            resample_filter,
        })
    }

    fn forward(&self, tape: &mut Tape, x: Option<&Tensor>, img: &Tensor) -> Result<Tensor> {
        let x = match (&self.fromrgb, x) {
            (Some(fromrgb), _) => fromrgb.forward(tape, img, 1.0)?,
            (None, Some(x)) => x.clone(),
            (None, None) => unreachable!("blocks after the first receive x"),
        };
        let y = self.skip.forward(tape, &x, SQRT_HALF)?;
        let h = self.conv0.forward(tape, &x, 1.0)?;
        let h = self.conv1.forward(tape, &h, SQRT_HALF)?;
        ew::add(tape, &y, &h)
    }
}

/// The 4×4 epilogue: minibatch stddev, conv, fc and the three heads.
pub struct Epilogue {
    pub conv: Conv2dLayer,
    pub fc: FullyConnected,
    pub out: FullyConnected,
    pub fts: FullyConnected,
    pub fts2: Option<FullyConnected>,
}

/// D's outputs: the real/fake logit `[N, 1]` and the semantic features `[N, F]` (and `[N, F2]`).
pub struct DiscriminatorOutput {
    pub logits: Tensor,
    pub d_fts: Tensor,
    pub d_fts2: Option<Tensor>,
}

/// The discriminator: `b{R}` … `b8` and the epilogue `b4`.
pub struct Discriminator {
    pub config: DiscriminatorConfig,
    pub blocks: Vec<DiscriminatorBlock>,
    pub epilogue: Epilogue,
}

impl Discriminator {
    pub fn new(p: &mut Params, config: DiscriminatorConfig) -> Result<Discriminator> {
        let blocks = config
            .resolutions()
            .into_iter()
            .map(|res| DiscriminatorBlock::new(p, &config, res))
            .collect::<Result<Vec<_>>>()?;
        let c4 = config.channels(4);
        let f = config.mbstd_num_channels;
        let epilogue = Epilogue {
            conv: Conv2dLayer::new(
                p,
                "b4.conv",
                c4 + f,
                c4,
                3,
                true,
                Act::LRELU,
                1,
                config.conv_clamp,
            )?,
            fc: FullyConnected::new(p, "b4.fc", c4 * 16, c4, true, Act::LRELU, 1.0, 0.0)?,
            out: FullyConnected::linear(p, "b4.out", c4, 1)?,
            fts: FullyConnected::linear(p, "b4.fts", c4, config.f_dim)?,
            fts2: (config.structure == 4)
                .then(|| FullyConnected::linear(p, "b4.fts2", c4, config.f_dim2))
                .transpose()?,
        };
        Ok(Discriminator {
            config,
            blocks,
            epilogue,
        })
    }

    /// Images `[N, C, R, R]` and their conditions `fts` `[N, F (+ F2)]` → logits and features.
    pub fn forward(
        &self,
        tape: &mut Tape,
        img: &Tensor,
        fts: &Tensor,
    ) -> Result<DiscriminatorOutput> {
        let c = &self.config;
        let r = c.img_resolution;
        if img.rank() != 4 || img.shape()[1..] != [c.img_channels, r, r] {
            return Err(Error::shape(
                "discriminator",
                format!(
                    "images must be [N, {}, {r}, {r}], got {:?}",
                    c.img_channels,
                    img.shape()
                ),
            ));
        }
        let n = img.shape()[0];
        let width = c.f_dim + c.f_dim2;
        if fts.shape() != [n, width] {
            return Err(Error::shape(
                "discriminator",
                format!(
                    "fts must be [{n}, {width}] (structure {}), got {:?}",
                    c.structure,
                    fts.shape()
                ),
            ));
        }
        let mut x: Option<Tensor> = None;
        for block in &self.blocks {
            x = Some(block.forward(tape, x.as_ref(), img)?);
        }
        let x = x.ok_or_else(|| Error::Invalid("the discriminator has no blocks".into()))?;
        let e = &self.epilogue;
        let x = minibatch_stddev(tape, &x, c.mbstd_group_size, c.mbstd_num_channels)?;
        let x = e.conv.forward(tape, &x, 1.0)?;
        let flat = reshape(tape, &x, &[n, x.numel() / n.max(1)])?;
        let fc = e.fc.forward(tape, &flat)?;
        let logits = e.out.forward(tape, &fc)?;
        let head = |tape: &mut Tape, layer: &FullyConnected| -> Result<Tensor> {
            let d = layer.forward(tape, &fc)?;
            if c.use_norm {
                l2_normalize(tape, &d, 1e-12)
            } else {
                Ok(d)
            }
        };
        let d_fts = head(tape, &e.fts)?;
        // Σ over the batch of d·c, one scalar (times `weight`) for every row.
        let batch_dot =
            |tape: &mut Tape, d: &Tensor, cond: &Tensor, weight: f32| -> Result<Tensor> {
                let prod = ew::mul(tape, d, cond)?;
                let s = sum_all(tape, &prod)?;
                let s = ew::scale(tape, &s, weight)?;
                reshape(tape, &s, &[1])
            };
        let (shift, d_fts2) = match &e.fts2 {
            None => (batch_dot(tape, &d_fts, fts, 1.0)?, None),
            Some(fts2) => {
                let d2 = head(tape, fts2)?;
                let c1 = slice(tape, fts, 1, 0, c.f_dim)?;
                let c2 = slice(tape, fts, 1, c.f_dim, c.f_dim2)?;
                let a = batch_dot(tape, &d_fts, &c1, 0.5)?;
                let b = batch_dot(tape, &d2, &c2, 0.5)?;
                (ew::add(tape, &a, &b)?, Some(d2))
            }
        };
        let logits = ew::bias_add(tape, &logits, &shift, 1)?;
        Ok(DiscriminatorOutput {
            logits,
            d_fts,
            d_fts2,
        })
    }
}
