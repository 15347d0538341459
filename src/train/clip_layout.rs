//! `train-clip`'s layout term. Trained contrastively on a small world for a minute, CLIP tells a
//! batch's pairs apart by their colours and backgrounds and keeps little of where things are
//! (docs/results.md: a linear probe reads the main object's quadrant off its space at about
//! 32%, chance 25%, against 86% off the pixels); the real CLIP learned layout from 400M pairs.
//! So a linear head reads a `g×g` thumbnail (block means of the CLIP-normalised pixels) off
//! each unit image embedding, and `layout_weight · MSE` joins the contrastive loss. The head is
//! not part of CLIP: it lives in the checkpoint, never in `model.safetensors`.

use super::clip::{ClipData, ClipTrainConfig};
use crate::autograd::Tape;
use crate::error::Result;
use crate::models::clip::Clip;
use crate::ops::image::cpu::normalize as clip_normalize;
use crate::ops::l2norm::l2_normalize;
use crate::ops::loss::mse;
use crate::ops::matmul;
use crate::tensor::{Device, Tensor};

/// `[B, g·g·3]` thumbnails of `stimuli`: the mean of each `(H/g)×(W/g)` block of the
/// CLIP-normalised pixels, blocks row by row, RGB within a block (`g` divides H and W).
pub fn thumbnails(data: &ClipData, stimuli: &[u32], g: usize) -> Vec<f32> {
    let [h, w] = data.image_size;
    let (bh, bw) = (h / g, w / g);
    let mut out = vec![0f32; stimuli.len() * g * g * 3];
    for (thumb, &s) in out.chunks_mut(g * g * 3).zip(stimuli) {
        let image = &data.images[s as usize * h * w * 3..][..h * w * 3];
        for (i, px) in image.chunks(3).enumerate() {
            let cell = (i / w / bh) * g + (i % w) / bw;
            for (c, &v) in px.iter().enumerate() {
                thumb[cell * 3 + c] += clip_normalize(v, c);
            }
        }
    }
    let area = (bh * bw) as f32;
    out.iter_mut().for_each(|v| *v /= area);
    out
}

/// The layout term's linear head, `[g·g·3, projection_dim]`: a thumbnail read off each unit
/// image embedding. Trained with CLIP (in its store, so Adam and the checkpoint hold it) but
/// not a CLIP weight: `model.safetensors` leaves it out.
pub(super) struct LayoutHead {
    weight: Tensor,
    grid: usize,
}

pub(super) const LAYOUT_HEAD: &str = "layout_head.weight";

impl LayoutHead {
    /// The head of `cfg` (None without the term), added to `clip`'s store. N(0, 1): a unit row
    /// in gives thumbnail values of about unit variance, as CLIP's normalisation gives pixels.
    pub(super) fn new(
        clip: &mut Clip,
        cfg: &ClipTrainConfig,
        device: &Device,
    ) -> Result<Option<LayoutHead>> {
        if cfg.layout_weight == 0.0 {
            return Ok(None);
        }
        let g = cfg.layout_grid;
        let shape = [g * g * 3, clip.config.projection_dim];
        let draw = Tensor::randn(&shape, 1.0, cfg.seed ^ 0x1A70_u64, device)?;
        let weight = clip.store.insert(LAYOUT_HEAD, draw)?;
        Ok(Some(LayoutHead { weight, grid: g }))
    }

    /// MSE between the thumbnails read off `image_features` and those of `stimuli`.
    pub(super) fn loss(
        &self,
        tape: &mut Tape,
        image_features: &Tensor,
        data: &ClipData,
        stimuli: &[u32],
    ) -> Result<Tensor> {
        let g = self.grid;
        let thumbs = Tensor::from_vec(
            thumbnails(data, stimuli, g),
            &[stimuli.len(), g * g * 3],
            image_features.device(),
        )?;
        let unit = l2_normalize(tape, image_features, 1e-12)?;
        let read = matmul::linear_act(tape, &unit, &self.weight, None, None)?;
        mse(tape, &read, &thumbs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::clip::tests::{temp, tiny, world_of};
    use crate::train::clip::train_clip;

    /// A 4×4 image in 2×2 blocks: each thumbnail cell is its block's mean normalised pixel.
    #[test]
    fn thumbnails_are_block_means_of_the_normalised_pixels() {
        let (h, w, g) = (4, 4, 2);
        let pixel = |y: usize, x: usize, c: usize| (y * 40 + x * 10 + c * 3) as u8;
        let mut images = vec![0u8; 2 * h * w * 3];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    images[h * w * 3 + (y * w + x) * 3 + c] = pixel(y, x, c);
                }
            }
        }
        let data = ClipData {
            images,
            image_size: [h, w],
            captions: vec![vec!["a".into()]; 2],
            train: vec![0, 1],
            test: vec![0, 1],
        };
        let t = thumbnails(&data, &[1, 0], g);
        assert_eq!(t.len(), 2 * g * g * 3);
        for (cy, cx, c) in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 0)] {
            let want: f32 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                .iter()
                .map(|&(dy, dx)| clip_normalize(pixel(2 * cy + dy, 2 * cx + dx, c), c))
                .sum::<f32>()
                / 4.0;
            let got = t[(cy * g + cx) * 3 + c];
            assert!(
                (got - want).abs() < 1e-6,
                "cell ({cy},{cx}) c{c}: {got} vs {want}"
            );
        }
        // Stimulus 0 is black: every cell is the normalised zero.
        for (k, &v) in t[g * g * 3..].iter().enumerate() {
            assert!((v - clip_normalize(0, k % 3)).abs() < 1e-6);
        }
    }

    /// With the layout term, the head reads the test images' thumbnails off their embeddings
    /// better than the training thumbnails' mean does (it generalises); without it there is no
    /// head, no layout figure and the fingerprint of runs from before the term.
    #[test]
    fn the_layout_term_puts_the_thumbnail_in_the_image_embedding() {
        let data = world_of(300);
        let cfg = ClipTrainConfig {
            epochs: 20,
            batch: 16,
            ..tiny()
        };
        let dir = temp("layout");
        let (clip, hist) = train_clip(&cfg, &data, &dir, false, &Device::Cpu, &mut ()).unwrap();
        let g = cfg.layout_grid;
        let d = g * g * 3;
        let (train_t, test_t) = (
            thumbnails(&data, &data.train, g),
            thumbnails(&data, &data.test, g),
        );
        let mean: Vec<f64> = (0..d)
            .map(|j| {
                train_t
                    .iter()
                    .skip(j)
                    .step_by(d)
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / data.train.len() as f64
            })
            .collect();
        let baseline = test_t
            .iter()
            .enumerate()
            .map(|(k, &v)| (v as f64 - mean[k % d]).powi(2))
            .sum::<f64>()
            / test_t.len() as f64;
        let (first, last) = (hist[0].layout_loss.unwrap(), hist[19].layout_loss.unwrap());
        assert!(last.0 < first.0, "{hist:?}");
        assert!(
            last.1 < 0.5 * baseline,
            "val layout MSE {} vs the mean's {baseline}",
            last.1
        );
        assert!(clip.store.get(LAYOUT_HEAD).is_ok());
        let (saved, _) = crate::nn::load_safetensors(&dir.weights()).unwrap();
        assert!(saved.iter().all(|(n, _)| n != LAYOUT_HEAD));
        assert_eq!(saved.len() + 1, clip.store.len());
        let (ckpt, _) = crate::nn::load_safetensors(&dir.checkpoint()).unwrap();
        assert!(ckpt.iter().any(|(n, _)| n == LAYOUT_HEAD));

        let off = ClipTrainConfig {
            layout_weight: 0.0,
            epochs: 1,
            ..tiny()
        };
        let (clip, hist) = train_clip(&off, &data, &dir, false, &Device::Cpu, &mut ()).unwrap();
        assert!(hist[0].layout_loss.is_none() && clip.store.get(LAYOUT_HEAD).is_err());
        assert!(
            !off.fingerprint().contains("layout"),
            "{}",
            off.fingerprint()
        );
        assert!(cfg.fingerprint().contains("layout_weight: 4.0"));
        for (bad, want) in [(f32::NAN, "--layout-weight"), (-1.0, "--layout-weight")] {
            let c = ClipTrainConfig {
                layout_weight: bad,
                ..tiny()
            };
            let err = train_clip(&c, &data, &dir, false, &Device::Cpu, &mut ())
                .err()
                .unwrap();
            assert!(err.to_string().contains(want), "{err}");
        }
        let c = ClipTrainConfig {
            layout_grid: 3,
            ..tiny()
        };
        let err = train_clip(&c, &data, &dir, false, &Device::Cpu, &mut ())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("--layout-grid 3 must divide"),
            "{err}"
        );
        std::fs::remove_dir_all(dir.0).ok();
    }
}
