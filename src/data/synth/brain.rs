//! The simulated subject: an encoding model with the broad structure of visual cortex.
//!
//! Each stimulus is described by a feature vector φ = [early-visual maps ‖ object features]:
//! - early-visual maps: a `GRID`×`GRID` grid over the image with five channels per cell
//!   (RMS luminance contrast, mean luminance, red–green and blue–yellow opponency, and figure:
//!   how much of the cell the objects cover);
//! - object features: each shape's and colour's presence, each (colour, shape) identity's
//!   presence (weighted by how much of the object is visible) and the object count, one-hot.
//!
//! A voxel is a weight vector over φ. Early-visual voxels have a population receptive field: a
//! Gaussian at a visual-field position (more of them near the fovea, larger away from it) over
//! the grid, responding mostly to contrast, partly to colour, and more where a figure stands
//! than where the background does: figure–ground modulation, which in V1–V4 enhances the
//! response to an object's surface over the same texture as background (Lamme 1995; Poort et
//! al. 2012), so early cortex says where the objects are even on a textured background.
//! Higher-level voxels are tuned to one identity, one or two shapes, one or two colours, or a
//! preferred count (a Gaussian numerosity curve), with weak mixed selectivity to everything
//! else and a weak response to figures in a broad receptive field (lateral occipital cortex
//! keeps coarse position information, Schwarzlose et al. 2008). A voxel's clean response over
//! the stimuli is z-scored, then scaled by its own SNR (signal std / noise std), so trial noise
//! of unit variance gives a known per-voxel reliability.

use ndarray::{s, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::scene::{Scene, COLOURS, MAX_OBJECTS, SHAPES};
use crate::error::{Error, Result};
use crate::rng::{stage, Rng};

/// Cells per side of the early-visual feature grid.
pub const GRID: usize = 16;
/// Contrast, luminance, red–green, blue–yellow, figure.
pub const CHANNELS: usize = 5;
/// The figure channel's index.
const FIGURE: usize = 4;
/// Length of the early-visual part of φ.
pub const EARLY_FEATURES: usize = CHANNELS * GRID * GRID;
/// Length of the object part of φ.
pub const OBJECT_FEATURES: usize =
    SHAPES.len() + COLOURS.len() + SHAPES.len() * COLOURS.len() + MAX_OBJECTS;
/// Length of φ.
pub const FEATURES: usize = EARLY_FEATURES + OBJECT_FEATURES;

/// The early-visual maps of an `[size, size, 3]` image (size ≥ `GRID`) and its `[size, size]`
/// figure coverage (`render::figure_map`), channel-major: index = channel·GRID² + row·GRID +
/// column.
pub fn visual_features(img: &[u8], figure: &[f32], size: usize) -> Vec<f32> {
    let g = GRID;
    let mut sum = vec![[0f32; 6]; g * g]; // L, L², R−G, B−Y, figure, count
    for py in 0..size {
        let cy = py * g / size;
        for px in 0..size {
            let cx = px * g / size;
            let p = &img[(py * size + px) * 3..][..3];
            let (r, gr, b) = (
                p[0] as f32 / 255.0,
                p[1] as f32 / 255.0,
                p[2] as f32 / 255.0,
            );
            let l = 0.299 * r + 0.587 * gr + 0.114 * b;
            let acc = &mut sum[cy * g + cx];
            acc[0] += l;
            acc[1] += l * l;
            acc[2] += r - gr;
            acc[3] += b - 0.5 * (r + gr);
            acc[4] += figure[py * size + px];
            acc[5] += 1.0;
        }
    }
    let mut f = vec![0f32; EARLY_FEATURES];
    for (cell, acc) in sum.iter().enumerate() {
        let n = acc[5].max(1.0);
        let mean = acc[0] / n;
        f[cell] = (acc[1] / n - mean * mean).max(0.0).sqrt();
        f[g * g + cell] = mean;
        f[2 * g * g + cell] = acc[2] / n;
        f[3 * g * g + cell] = acc[3] / n;
        f[FIGURE * g * g + cell] = acc[4] / n;
    }
    f
}

/// The object part of φ: shape presence, colour presence, identity presence (each the largest
/// visible fraction among matching objects: a half-hidden square drives square voxels half as
/// much) and the count, one-hot.
pub fn object_features(scene: &Scene) -> Vec<f32> {
    let mut f = vec![0f32; OBJECT_FEATURES];
    let (ns, nc) = (SHAPES.len(), COLOURS.len());
    for (o, &vis) in scene.objects.iter().zip(&scene.visible) {
        for i in [o.shape, ns + o.colour, ns + nc + o.colour * ns + o.shape] {
            f[i] = f[i].max(vis);
        }
    }
    f[ns + nc + ns * nc + scene.objects.len() - 1] = 1.0;
    f
}

/// What a voxel is tuned to (ground truth about the simulated subject).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tuning {
    /// Population receptive field at (x, y) with width sigma, fractions of the image width.
    Early {
        x: f32,
        y: f32,
        sigma: f32,
    },
    Identity {
        colour: usize,
        shape: usize,
    },
    Shape,
    Colour,
    Count {
        preferred: usize,
    },
}

/// The simulated subject: one weight row over φ per voxel, and each voxel's SNR.
pub struct Subject {
    pub tuning: Vec<Tuning>,
    /// `[voxels, FEATURES]` row-major.
    pub weights: Vec<f32>,
    /// Per-voxel signal std / noise std; averages to the world's `snr`.
    pub snr: Vec<f32>,
}

/// `data` as `[rows, FEATURES]`, or an error that says which array had the wrong length.
fn features_view<'a>(rows: usize, data: &'a [f32], what: &str) -> Result<ArrayView2<'a, f32>> {
    ArrayView2::from_shape((rows, FEATURES), data).map_err(|_| {
        Error::shape(
            "synthetic brain",
            format!("{what}: {} values for {rows} × {FEATURES}", data.len()),
        )
    })
}

impl Subject {
    /// `voxels` voxels, `early_fraction` of them early-visual, drawn from `seed`'s voxel streams.
    pub fn new(seed: u64, voxels: usize, early_fraction: f32, snr: f32) -> Subject {
        let rows: Vec<(Tuning, Vec<f32>, f32)> = (0..voxels)
            .into_par_iter()
            .map(|v| {
                let mut rng = Rng::stream(seed, stage::VOXEL, v as u64);
                let mut w = vec![0f32; FEATURES];
                let tuning = if rng.f32() < early_fraction {
                    early_voxel(&mut rng, &mut w)
                } else {
                    object_voxel(&mut rng, &mut w)
                };
                // Reliability varies a lot across real voxels: a skewed gain with mean ≈ 1.
                let gain = (0.25 - 0.75 * (1.0 - rng.f32()).ln()).min(4.0);
                (tuning, w, snr * gain)
            })
            .collect();
        let mut s = Subject {
            tuning: Vec::with_capacity(voxels),
            weights: Vec::with_capacity(voxels * FEATURES),
            snr: Vec::with_capacity(voxels),
        };
        for (t, w, g) in rows {
            s.tuning.push(t);
            s.weights.extend(w);
            s.snr.push(g);
        }
        s
    }

    pub fn voxels(&self) -> usize {
        self.snr.len()
    }

    /// Each stimulus's noise-free response `[M, V]`: φ·Wᵀ, z-scored per voxel over the
    /// stimuli, times the voxel's SNR. `phi` is `[M, FEATURES]`.
    pub fn signal(&self, phi: &[f32], stimuli: usize) -> Result<Vec<f32>> {
        let v = self.voxels();
        let phi = features_view(stimuli, phi, "stimulus features")?;
        let w = features_view(v, &self.weights, "voxel weights")?;
        let mut out = vec![0f32; stimuli * v];
        // Row blocks in parallel; each block is one cache-friendly GEMM.
        const ROWS: usize = 128;
        out.par_chunks_mut(ROWS * v.max(1))
            .enumerate()
            .try_for_each(|(i, block)| {
                let rows = block.len() / v;
                let a = phi.slice(s![i * ROWS..i * ROWS + rows, ..]);
                let mut c = ArrayViewMut2::from_shape((rows, v), block).map_err(|e| {
                    Error::shape("synthetic brain", format!("signal block {i}: {e}"))
                })?;
                ndarray::linalg::general_mat_mul(1.0, &a, &w.t(), 0.0, &mut c);
                Ok::<(), Error>(())
            })?;
        let (mean, std) = column_moments(&out, v);
        let scale: Vec<f32> = (0..v)
            .map(|j| {
                if std[j] > 1e-12 {
                    self.snr[j] / std[j] as f32
                } else {
                    0.0
                }
            })
            .collect();
        out.par_chunks_mut(v).for_each(|row| {
            for j in 0..v {
                row[j] = (row[j] - mean[j] as f32) * scale[j];
            }
        });
        Ok(out)
    }
}

/// Per-column mean and (population) std of a row-major matrix, accumulated in f64.
pub fn column_moments(x: &[f32], width: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / width.max(1);
    let (s1, s2) = x
        .par_chunks(width * 64)
        .map(|block| {
            let (mut a, mut b) = (vec![0f64; width], vec![0f64; width]);
            for row in block.chunks(width) {
                for j in 0..width {
                    let y = row[j] as f64;
                    a[j] += y;
                    b[j] += y * y;
                }
            }
            (a, b)
        })
        .reduce(
            || (vec![0f64; width], vec![0f64; width]),
            |(mut a, mut b), (c, d)| {
                for j in 0..width {
                    a[j] += c[j];
                    b[j] += d[j];
                }
                (a, b)
            },
        );
    let n = rows.max(1) as f64;
    let mean: Vec<f64> = s1.iter().map(|a| a / n).collect();
    let std = s2
        .iter()
        .zip(&mean)
        .map(|(b, m)| (b / n - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}

/// A Gaussian over the grid's cell centres at (x, y), normalised to sum 1.
fn gaussian_grid(x: f32, y: f32, sigma: f32) -> Vec<f32> {
    let g = GRID;
    let mut w: Vec<f32> = (0..g * g)
        .map(|c| {
            let (cx, cy) = (
                ((c % g) as f32 + 0.5) / g as f32,
                ((c / g) as f32 + 0.5) / g as f32,
            );
            (-((cx - x).powi(2) + (cy - y).powi(2)) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = w.iter().sum::<f32>().max(1e-12);
    w.iter_mut().for_each(|a| *a /= total);
    w
}

/// Figure–ground modulation's weight beside contrast's (about 1): a cell's figure coverage
/// varies over the stimuli about this much more than its contrast does, so this gives the two
/// comparable shares of an early voxel's response.
const FIGURE_GAIN: f32 = 0.3;

fn early_voxel(rng: &mut Rng, w: &mut [f32]) -> Tuning {
    // Eccentricity uniform in radius: voxel density falls off away from the fovea, and
    // receptive fields grow with eccentricity, as in V1–V3.
    let ecc = 0.65 * rng.f32();
    let angle = rng.uniform(0.0, std::f32::consts::TAU);
    let (x, y) = (0.5 + ecc * angle.cos(), 0.5 + ecc * angle.sin());
    let sigma = 0.035 + 0.15 * ecc;
    let prf = gaussian_grid(x, y, sigma);
    let channel = [
        rng.uniform(0.6, 1.4),
        0.4 * rng.normal(),
        0.6 * rng.normal(),
        0.6 * rng.normal(),
        FIGURE_GAIN * rng.uniform(0.5, 1.5),
    ];
    for (c, &a) in channel.iter().enumerate() {
        for (cell, &p) in prf.iter().enumerate() {
            w[c * GRID * GRID + cell] = a * p;
        }
    }
    Tuning::Early { x, y, sigma }
}

fn object_voxel(rng: &mut Rng, w: &mut [f32]) -> Tuning {
    let (ns, nc) = (SHAPES.len(), COLOURS.len());
    let obj = &mut w[EARLY_FEATURES..];
    // Mixed selectivity: a little of everything.
    for x in obj.iter_mut() {
        *x = 0.12 * rng.normal();
    }
    let tuning = match rng.below(4) {
        0 => {
            let (colour, shape) = (rng.below(nc), rng.below(ns));
            obj[ns + nc + colour * ns + shape] += 1.0;
            Tuning::Identity { colour, shape }
        }
        1 => {
            obj[rng.below(ns)] += 1.0;
            if rng.chance(0.5) {
                obj[rng.below(ns)] += 0.5;
            }
            Tuning::Shape
        }
        2 => {
            obj[ns + rng.below(nc)] += 1.0;
            if rng.chance(0.5) {
                obj[ns + rng.below(nc)] += 0.5;
            }
            Tuning::Colour
        }
        _ => {
            let preferred = 1 + rng.below(MAX_OBJECTS);
            for n in 1..=MAX_OBJECTS {
                let d = n as f32 - preferred as f32;
                obj[ns + nc + ns * nc + n - 1] += (-d * d / (2.0 * 0.8 * 0.8)).exp();
            }
            Tuning::Count { preferred }
        }
    };
    // A weak, broad response to contrast anywhere near the centre of the visual field, and to
    // figures in a broad receptive field somewhere in it.
    let broad = gaussian_grid(0.5, 0.5, 0.3);
    let k = 0.3 * rng.f32();
    for (cell, &p) in broad.iter().enumerate() {
        w[cell] += k * p;
    }
    let (x, y) = (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8));
    let field = gaussian_grid(x, y, 0.2);
    let k = FIGURE_GAIN * rng.f32();
    for (cell, &p) in field.iter().enumerate() {
        w[FIGURE * GRID * GRID + cell] += k * p;
    }
    tuning
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_has_no_contrast() {
        let img = vec![100u8; 32 * 32 * 3];
        let f = visual_features(&img, &[0.0; 32 * 32], 32);
        assert!(f[..GRID * GRID].iter().all(|&c| c.abs() < 1e-6));
        assert!(f[GRID * GRID..2 * GRID * GRID]
            .iter()
            .all(|&l| (l - 100.0 / 255.0).abs() < 1e-5));
    }

    #[test]
    fn the_figure_channel_is_each_cells_object_coverage() {
        // an object over the left half of a flat 32-px image, half covering the column at 15
        let img = vec![100u8; 32 * 32 * 3];
        let figure: Vec<f32> = (0..32 * 32)
            .map(|i| match i % 32 {
                0..=14 => 1.0,
                15 => 0.5,
                _ => 0.0,
            })
            .collect();
        let f = visual_features(&img, &figure, 32);
        let map = &f[FIGURE * GRID * GRID..(FIGURE + 1) * GRID * GRID];
        for row in 0..GRID {
            for col in 0..GRID {
                // cells are 2 px wide: cell 7 holds columns 14 (covered) and 15 (half)
                let want = match col {
                    0..=6 => 1.0,
                    7 => 0.75,
                    _ => 0.0,
                };
                assert_eq!(map[row * GRID + col], want, "cell ({row}, {col})");
            }
        }
    }

    #[test]
    fn signal_is_z_scored_and_scaled_by_snr() {
        let subject = Subject::new(1, 50, 0.5, 0.7);
        let m = 40;
        let mut phi = vec![0f32; m * FEATURES];
        Rng::new(2).fill_normal(&mut phi);
        let sig = subject.signal(&phi, m).unwrap();
        let (mean, std) = column_moments(&sig, 50);
        for j in 0..50 {
            assert!(mean[j].abs() < 1e-4, "voxel {j} mean {}", mean[j]);
            assert!(
                (std[j] - subject.snr[j] as f64).abs() < 1e-3,
                "voxel {j} std {} snr {}",
                std[j],
                subject.snr[j]
            );
        }
        let mean_snr = subject.snr.iter().sum::<f32>() / 50.0;
        assert!((0.4..1.0).contains(&mean_snr), "mean snr {mean_snr}");
    }
}
