//! Which scene factors a reconstruction recovered: the main object's colour, shape and position,
//! the object count and the background kind, read off the picture by a linear probe.
//!
//! The probe is fitted on the dataset's *seen* training images, so it reads pictures of the world
//! the way a person would; applied to the seen test images it gives the probe's own ceiling, and
//! applied to reconstructions it says what they show. Only synthetic worlds have the ground truth
//! (`scene/*`). The features are the picture's CLIP image embedding (when a CLIP is given), its
//! 8×8 box-averaged colours and a map of where each of the world's object colours is (see
//! `probe_features`); the classifier is ridge regression to one-hot codes, its ridge chosen on a
//! fifth of the training images. A hand-written Cholesky solve keeps the tree free of
//! a linear-algebra crate for one small symmetric system.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use crate::data::{AuxData, DatasetFile};
use crate::rng::Rng;

/// One factor: a class per stimulus.
#[derive(Clone, Debug, PartialEq)]
pub struct Factor {
    pub name: &'static str,
    /// Class names, in code order.
    pub classes: Vec<String>,
    /// The class of every stimulus of the dataset.
    pub labels: Vec<usize>,
}

/// The factors of a synthetic world's stimuli; `None` for a dataset without `scene/` arrays.
/// "Main object" is the largest one (the one a caption names first).
pub fn scene_factors(file: &DatasetFile) -> Result<Option<Vec<Factor>>> {
    let has = |n: &str| file.summary().scene.iter().any(|(a, _)| a == n);
    if !["shape", "colour", "geometry", "object_count", "background"]
        .iter()
        .all(|n| has(n))
    {
        return Ok(None);
    }
    let u8s = |name: &str| -> Result<Vec<u8>> {
        match file.scene_array(name)?.data {
            AuxData::U8(v) => Ok(v),
            AuxData::F32(_) => anyhow::bail!("scene/{name} should be uint8"),
        }
    };
    let geometry = match file.scene_array("geometry")?.data {
        AuxData::F32(v) => v,
        AuxData::U8(_) => anyhow::bail!("scene/geometry should be float32"),
    };
    let (shape, colour, count, background) = (
        u8s("shape")?,
        u8s("colour")?,
        u8s("object_count")?,
        u8s("background")?,
    );
    Ok(Some(factors_from_arrays(
        &shape,
        &colour,
        &geometry,
        &count,
        &background,
    )?))
}

/// The factors from the raw `scene/` arrays (layout in docs/dataset.md).
pub fn factors_from_arrays(
    shape: &[u8],
    colour: &[u8],
    geometry: &[f32],
    count: &[u8],
    background: &[u8],
) -> Result<Vec<Factor>> {
    use crate::data::synth::scene::{BACKGROUND_KINDS, COLOURS, MAX_OBJECTS, SHAPES};
    let m = count.len();
    let k = MAX_OBJECTS;
    ensure!(
        shape.len() == m * k
            && colour.len() == m * k
            && geometry.len() == m * k * 4
            && background.len() == m * 4,
        "scene arrays of inconsistent lengths"
    );
    let mut main = Vec::with_capacity(m);
    for i in 0..m {
        let n = count[i] as usize;
        ensure!((1..=k).contains(&n), "stimulus {i}: object count {n}");
        let largest = (0..n)
            .max_by(|&a, &b| {
                geometry[(i * k + a) * 4 + 2].total_cmp(&geometry[(i * k + b) * 4 + 2])
            })
            .unwrap_or(0);
        main.push(i * k + largest);
    }
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let quadrant = |j: usize| {
        let (x, y) = (geometry[j * 4], geometry[j * 4 + 1]);
        (x >= 0.5) as usize + 2 * (y >= 0.5) as usize
    };
    Ok(vec![
        Factor {
            name: "colour",
            classes: COLOURS.iter().map(|(c, _)| c.to_string()).collect(),
            labels: main.iter().map(|&j| colour[j] as usize).collect(),
        },
        Factor {
            name: "shape",
            classes: names(&SHAPES),
            labels: main.iter().map(|&j| shape[j] as usize).collect(),
        },
        Factor {
            name: "position",
            classes: names(&["top left", "top right", "bottom left", "bottom right"]),
            labels: main.iter().map(|&j| quadrant(j)).collect(),
        },
        Factor {
            name: "count",
            classes: names(&["1", "2", "3"]),
            labels: count.iter().map(|&c| c as usize - 1).collect(),
        },
        Factor {
            name: "background",
            classes: names(&BACKGROUND_KINDS),
            labels: (0..m).map(|i| background[i * 4] as usize).collect(),
        },
    ])
}

/// The probe's input for `n` pictures of `[n, h, w, 3]` pixels in [0, 1]: the (L2-normalised)
/// CLIP image embeddings when given, the 8×8 box-averaged colours, and where each object colour
/// is: every pixel goes to its nearest colour of the world's palettes (object colours and the
/// muted background colours are disjoint by design), giving per object colour its share of the
/// picture and its share of each 4×4 cell, and the share of object pixels in each 8×8 cell.
pub fn probe_features(
    pixels: &[f32],
    [n, h, w]: [usize; 3],
    embeddings: Option<(&[f32], usize)>,
) -> (Vec<f32>, usize) {
    use crate::data::synth::scene::{BACKGROUND_COLOURS, COLOURS};
    let palette: Vec<[f32; 3]> = COLOURS
        .iter()
        .chain(BACKGROUND_COLOURS.iter())
        .map(|(_, c)| c.map(|v| v as f32 / 255.0))
        .collect();
    let objects = COLOURS.len();
    let cells = 8.min(h).min(w);
    let coarse = 4.min(h).min(w);
    let d_emb = embeddings.map_or(0, |(_, d)| d);
    let d_rgb = cells * cells * 3;
    let d_mask = cells * cells;
    let d_colour = objects * (1 + coarse * coarse);
    let d = d_emb + d_rgb + d_mask + d_colour + SHAPE_FEATURES;
    let mut out = vec![0f32; n * d];
    let (mut per_cell, mut per_coarse) = (vec![0f32; cells * cells], vec![0f32; coarse * coarse]);
    for y in 0..h {
        for x in 0..w {
            per_cell[(y * cells / h) * cells + x * cells / w] += 1.0;
            per_coarse[(y * coarse / h) * coarse + x * coarse / w] += 1.0;
        }
    }
    for i in 0..n {
        let row = &mut out[i * d..(i + 1) * d];
        if let Some((e, de)) = embeddings {
            let e = &e[i * de..(i + 1) * de];
            let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for (o, v) in row[..de].iter_mut().zip(e) {
                *o = v / norm;
            }
        }
        let (rgb, rest) = row[d_emb..].split_at_mut(d_rgb);
        let (mask, rest) = rest.split_at_mut(d_mask);
        let (colour, shape) = rest.split_at_mut(d_colour);
        let img = &pixels[i * h * w * 3..(i + 1) * h * w * 3];
        let mut nearest_of = vec![usize::MAX; h * w];
        for y in 0..h {
            for x in 0..w {
                let px = &img[(y * w + x) * 3..][..3];
                let cell = (y * cells / h) * cells + x * cells / w;
                for c in 0..3 {
                    rgb[cell * 3 + c] += px[c] / per_cell[cell];
                }
                let nearest = (0..palette.len())
                    .min_by(|&a, &b| {
                        let dist = |k: usize| -> f32 {
                            (0..3).map(|c| (px[c] - palette[k][c]).powi(2)).sum()
                        };
                        dist(a).total_cmp(&dist(b))
                    })
                    .unwrap_or(0);
                if nearest < objects {
                    nearest_of[y * w + x] = nearest;
                    mask[cell] += 1.0 / per_cell[cell];
                    let block = (y * coarse / h) * coarse + x * coarse / w;
                    let base = nearest * (1 + coarse * coarse);
                    colour[base] += 1.0 / (h * w) as f32;
                    colour[base + 1 + block] += 1.0 / per_coarse[block];
                }
            }
        }
        // The outline of the most common object colour (the main object, mostly).
        let top = (0..objects).max_by(|&a, &b| {
            colour[a * (1 + coarse * coarse)].total_cmp(&colour[b * (1 + coarse * coarse)])
        });
        if let Some(top) = top {
            let region: Vec<bool> = nearest_of.iter().map(|&k| k == top).collect();
            shape.copy_from_slice(&shape_descriptors(&region, h, w));
        }
    }
    (out, d)
}

/// Length of `shape_descriptors`.
const SHAPE_FEATURES: usize = 10;

/// Rotation- and scale-invariant descriptors of a binary region: the seven Hu moments (as
/// sign·log₁₀|h|), how much of its bounding box and of its enclosing circle it fills, and whether
/// its centroid lies inside it (rings and crosses differ from discs and squares there).
fn shape_descriptors(region: &[bool], h: usize, w: usize) -> [f32; SHAPE_FEATURES] {
    let pts: Vec<(f64, f64)> = (0..h * w)
        .filter(|&p| region[p])
        .map(|p| ((p % w) as f64, (p / w) as f64))
        .collect();
    let mut out = [0f32; SHAPE_FEATURES];
    if pts.len() < 3 {
        return out;
    }
    let m00 = pts.len() as f64;
    let (cx, cy) = (
        pts.iter().map(|p| p.0).sum::<f64>() / m00,
        pts.iter().map(|p| p.1).sum::<f64>() / m00,
    );
    let mu = |p: i32, q: i32| -> f64 {
        pts.iter()
            .map(|&(x, y)| (x - cx).powi(p) * (y - cy).powi(q))
            .sum::<f64>()
    };
    let eta = |p: i32, q: i32| mu(p, q) / m00.powf(1.0 + (p + q) as f64 / 2.0);
    let (n20, n02, n11) = (eta(2, 0), eta(0, 2), eta(1, 1));
    let (n30, n03, n21, n12) = (eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2));
    let hu = [
        n20 + n02,
        (n20 - n02).powi(2) + 4.0 * n11 * n11,
        (n30 - 3.0 * n12).powi(2) + (3.0 * n21 - n03).powi(2),
        (n30 + n12).powi(2) + (n21 + n03).powi(2),
        (n30 - 3.0 * n12) * (n30 + n12) * ((n30 + n12).powi(2) - 3.0 * (n21 + n03).powi(2))
            + (3.0 * n21 - n03) * (n21 + n03) * (3.0 * (n30 + n12).powi(2) - (n21 + n03).powi(2)),
        (n20 - n02) * ((n30 + n12).powi(2) - (n21 + n03).powi(2))
            + 4.0 * n11 * (n30 + n12) * (n21 + n03),
        (3.0 * n21 - n03) * (n30 + n12) * ((n30 + n12).powi(2) - 3.0 * (n21 + n03).powi(2))
            - (n30 - 3.0 * n12) * (n21 + n03) * (3.0 * (n30 + n12).powi(2) - (n21 + n03).powi(2)),
    ];
    for (o, v) in out.iter_mut().zip(hu) {
        *o = (v.signum() * (v.abs() + 1e-12).log10()) as f32;
    }
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    out[7] = (m00 / ((x1 - x0 + 1.0) * (y1 - y0 + 1.0))) as f32;
    let r2 = pts
        .iter()
        .map(|&(x, y)| (x - cx).powi(2) + (y - cy).powi(2))
        .fold(0.0, f64::max);
    out[8] = (m00 / (std::f64::consts::PI * (r2 + 0.5))) as f32;
    let centre = (cy.round() as usize).min(h - 1) * w + (cx.round() as usize).min(w - 1);
    out[9] = region[centre] as u8 as f32;
    out
}

/// A soft copy of `[n, h, w, 3]` pictures (a 3×3 box blur): the probe is fitted on the seen images
/// and on these, so that it also reads the softer pictures a generator draws.
pub fn blurred(pixels: &[f32], [n, h, w]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0f32; pixels.len()];
    for i in 0..n {
        let img = &pixels[i * h * w * 3..(i + 1) * h * w * 3];
        let dst = &mut out[i * h * w * 3..(i + 1) * h * w * 3];
        for y in 0..h {
            for x in 0..w {
                let (mut acc, mut k) = ([0f32; 3], 0.0);
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        for c in 0..3 {
                            acc[c] += img[(yy * w + xx) * 3 + c];
                        }
                        k += 1.0;
                    }
                }
                for c in 0..3 {
                    dst[(y * w + x) * 3 + c] = acc[c] / k;
                }
            }
        }
    }
    out
}

/// A fitted linear probe: standardise, then `argmax(x·W + b)`.
#[derive(Clone, Debug)]
pub struct Probe {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// `[d + 1, classes]`, the bias last.
    weights: Vec<f64>,
    classes: usize,
    /// The ridge chosen on the held-out fifth (relative to the row count).
    pub lambda: f64,
}

impl Probe {
    /// Fits one probe per head (labels, classes) on `x` (`[n, d]`): each ridge of a small grid is
    /// fitted on four fifths (a seeded shuffle) and scored on the rest; the best, per head, is
    /// refitted on all rows. The Gram matrix is shared by every head and ridge.
    pub fn fit(x: &[f32], d: usize, heads: &[(&[usize], usize)], seed: u64) -> Result<Vec<Probe>> {
        let n = x.len() / d.max(1);
        ensure!(
            n >= 10 && x.len() == n * d,
            "a probe needs ≥ 10 rows of {d} features"
        );
        for (labels, classes) in heads {
            ensure!(labels.len() == n, "{} labels for {n} rows", labels.len());
            ensure!(labels.iter().all(|l| l < classes), "a label out of range");
        }
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(seed).shuffle(&mut order);
        let (val, fit) = order.split_at(n / 5);
        let part = Normal::new(x, d, fit);
        let mut best = vec![(f64::NEG_INFINITY, 1.0); heads.len()];
        let held_out = gather(x, d, val);
        for lambda in [1e-4, 1e-3, 1e-2, 1e-1, 1.0] {
            // One factorisation per ridge, shared by every head.
            let factor = part.factor(lambda, fit.len())?;
            for (h, (labels, classes)) in heads.iter().enumerate() {
                let p = part.solve(&factor, x, d, fit, labels, *classes, lambda);
                let pred = p.predict(&held_out, d);
                let acc = val
                    .iter()
                    .zip(&pred)
                    .filter(|(&i, &p)| labels[i] == p)
                    .count() as f64;
                if acc > best[h].0 {
                    best[h] = (acc, lambda);
                }
            }
        }
        let whole = Normal::new(x, d, &order);
        // Refit on every row: one factorisation per ridge that some head chose.
        let mut factors: Vec<(f64, Vec<f64>)> = Vec::new();
        heads
            .iter()
            .zip(best)
            .map(|((labels, classes), (_, lambda))| {
                let at = match factors.iter().position(|(l, _)| *l == lambda) {
                    Some(at) => at,
                    None => {
                        factors.push((lambda, whole.factor(lambda, order.len())?));
                        factors.len() - 1
                    }
                };
                Ok(whole.solve(&factors[at].1, x, d, &order, labels, *classes, lambda))
            })
            .collect()
    }

    /// The class of every row of `x` (`[n, d]`).
    pub fn predict(&self, x: &[f32], d: usize) -> Vec<usize> {
        let k = self.classes;
        x.chunks(d)
            .map(|row| {
                let mut score = self.weights[d * k..(d + 1) * k].to_vec();
                for (j, &v) in row.iter().enumerate() {
                    let z = (v as f64 - self.mean[j]) * self.scale[j];
                    for (s, w) in score.iter_mut().zip(&self.weights[j * k..(j + 1) * k]) {
                        *s += z * w;
                    }
                }
                (0..k)
                    .max_by(|&a, &b| score[a].total_cmp(&score[b]))
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// The rows `rows` of `x` (`[n, d]`).
fn gather(x: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Standardisation and the Gram matrix of `[z, 1]` over a set of rows.
struct Normal {
    mean: Vec<f64>,
    scale: Vec<f64>,
    gram: Vec<f64>,
}

impl Normal {
    fn new(x: &[f32], d: usize, rows: &[usize]) -> Normal {
        let n = rows.len() as f64;
        let mut mean = vec![0f64; d];
        for &i in rows {
            for (m, &v) in mean.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                *m += v as f64 / n;
            }
        }
        let mut scale = vec![0f64; d];
        for &i in rows {
            for j in 0..d {
                scale[j] += (x[i * d + j] as f64 - mean[j]).powi(2) / n;
            }
        }
        for s in &mut scale {
            *s = if *s > 1e-12 { 1.0 / s.sqrt() } else { 0.0 };
        }
        // Standardised rows, stored column by column, so each Gram entry is one dot product
        // over the rows in their order (the same sums as accumulating row by row).
        let (e, n) = (d + 1, rows.len());
        let mut columns = vec![0f64; e * n];
        let mut z = vec![0f64; e];
        for (r, &i) in rows.iter().enumerate() {
            Normal::standardise(&mean, &scale, &x[i * d..(i + 1) * d], &mut z);
            for (p, &zp) in z.iter().enumerate() {
                columns[p * n + r] = zp;
            }
        }
        let mut gram = vec![0f64; e * e];
        gram.par_chunks_mut(e).enumerate().for_each(|(p, row)| {
            let zp = &columns[p * n..(p + 1) * n];
            for (q, g) in row.iter_mut().enumerate().take(p + 1) {
                *g = zp
                    .iter()
                    .zip(&columns[q * n..(q + 1) * n])
                    .fold(0.0, |acc, (a, b)| acc + a * b);
            }
        });
        for p in 0..e {
            for q in 0..p {
                gram[q * e + p] = gram[p * e + q];
            }
        }
        Normal { mean, scale, gram }
    }

    fn standardise(mean: &[f64], scale: &[f64], row: &[f32], z: &mut [f64]) {
        for j in 0..row.len() {
            z[j] = (row[j] as f64 - mean[j]) * scale[j];
        }
        z[row.len()] = 1.0;
    }

    /// The Cholesky factor of `ZᵀZ + λ·n·I` over `rows` rows (no ridge on the bias).
    fn factor(&self, lambda: f64, rows: usize) -> Result<Vec<f64>> {
        let e = self.mean.len() + 1;
        let mut a = self.gram.clone();
        for p in 0..e - 1 {
            a[p * e + p] += lambda * rows as f64;
        }
        cholesky(&a, e)
    }

    /// Ridge regression to one-hot codes: (ZᵀZ + λ·n·I) W = Zᵀ Y, with `factor` from
    /// [`Normal::factor`] at the same λ and rows.
    #[allow(clippy::too_many_arguments)]
    fn solve(
        &self,
        factor: &[f64],
        x: &[f32],
        d: usize,
        rows: &[usize],
        labels: &[usize],
        classes: usize,
        lambda: f64,
    ) -> Probe {
        let e = d + 1;
        let mut b = vec![0f64; e * classes];
        let mut z = vec![0f64; e];
        for &i in rows {
            Normal::standardise(&self.mean, &self.scale, &x[i * d..(i + 1) * d], &mut z);
            for p in 0..e {
                b[p * classes + labels[i]] += z[p];
            }
        }
        Probe {
            mean: self.mean.clone(),
            scale: self.scale.clone(),
            weights: cholesky_apply(factor, &b, e, classes),
            classes,
            lambda,
        }
    }
}

/// The lower Cholesky factor `L` (`[e, e]`, `L·Lᵀ = A`) of a symmetric positive-definite `A`.
fn cholesky(a: &[f64], e: usize) -> Result<Vec<f64>> {
    let mut l = vec![0f64; e * e];
    for i in 0..e {
        for j in 0..=i {
            let dot = l[i * e..i * e + j]
                .iter()
                .zip(&l[j * e..j * e + j])
                .fold(0.0, |acc, (a, b)| acc + a * b);
            let s = a[i * e + j] - dot;
            if i == j {
                ensure!(
                    s > 0.0,
                    "the probe's normal equations are not positive definite"
                );
                l[i * e + i] = s.sqrt();
            } else {
                l[i * e + j] = s / l[j * e + j];
            }
        }
    }
    Ok(l)
}

/// Solves `L·Lᵀ X = B` for `B` (`[e, k]`), `L` from [`cholesky`].
fn cholesky_apply(l: &[f64], b: &[f64], e: usize, k: usize) -> Vec<f64> {
    let mut x = b.to_vec();
    for c in 0..k {
        for i in 0..e {
            let s = x[i * k + c] - (0..i).map(|p| l[i * e + p] * x[p * k + c]).sum::<f64>();
            x[i * k + c] = s / l[i * e + i];
        }
        for i in (0..e).rev() {
            let s = x[i * k + c] - (i + 1..e).map(|p| l[p * e + i] * x[p * k + c]).sum::<f64>();
            x[i * k + c] = s / l[i * e + i];
        }
    }
    x
}

/// Solves `A X = B` for symmetric positive-definite `A` (`[e, e]`) and `B` (`[e, k]`).
#[cfg(test)]
fn cholesky_solve(a: &[f64], b: &[f64], e: usize, k: usize) -> Result<Vec<f64>> {
    Ok(cholesky_apply(&cholesky(a, e)?, b, e, k))
}

/// The (at most) `keep` columns of `x` (`[M, d]`) whose values over the rows `rows` vary most,
/// in column order; ties go to the lower column. For fMRI whose trials are z-scored per session,
/// the repeat-averaged response varies most where the signal is strongest, so these are the
/// most reliable voxels.
pub fn most_varying_columns(x: &[f32], d: usize, rows: &[usize], keep: usize) -> Vec<usize> {
    let mut columns: Vec<usize> = (0..d).collect();
    if d <= keep {
        return columns;
    }
    let n = rows.len().max(1) as f64;
    let spread: Vec<f64> = (0..d)
        .into_par_iter()
        .map(|j| {
            let mean = rows.iter().map(|&r| x[r * d + j] as f64).sum::<f64>() / n;
            rows.iter()
                .map(|&r| (x[r * d + j] as f64 - mean).powi(2))
                .sum::<f64>()
        })
        .collect();
    columns.sort_by(|&a, &b| spread[b].total_cmp(&spread[a]).then(a.cmp(&b)));
    columns.truncate(keep);
    columns.sort_unstable();
    columns
}

/// The share of `predicted` equal to `truth`.
pub fn accuracy(predicted: &[usize], truth: &[usize]) -> f64 {
    let hits = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    hits as f64 / truth.len().max(1) as f64
}

/// The accuracy of always answering the most frequent class of `train` (the probe's chance).
pub fn majority_rate(train: &[usize], test: &[usize], classes: usize) -> f64 {
    let mut counts = vec![0usize; classes];
    train.iter().for_each(|&l| counts[l] += 1);
    let top = (0..classes).max_by_key(|&c| counts[c]).unwrap_or(0);
    accuracy(&vec![top; test.len()], test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_varying_columns_are_kept_in_order() {
        // 4 rows × 5 columns; column spreads over rows 0, 1, 3: 0, 8, 2, 8, 0.5
        #[rustfmt::skip]
        let x = [
            1.0, 0.0, 1.0, 4.0, 0.0,
            1.0, 4.0, 2.0, 0.0, 1.0,
            9.0, 9.0, 9.0, 9.0, 9.0,
            1.0, 2.0, 3.0, 2.0, 0.5,
        ];
        assert_eq!(most_varying_columns(&x, 5, &[0, 1, 3], 3), vec![1, 2, 3]);
        assert_eq!(most_varying_columns(&x, 5, &[0, 1, 3], 1), vec![1]);
        assert_eq!(
            most_varying_columns(&x, 5, &[0, 1, 3], 9),
            vec![0, 1, 2, 3, 4]
        );
        // over rows 1 and 2 instead, column 3 varies most (40.5 against 32, 12.5, 24.5, 32)
        assert_eq!(most_varying_columns(&x, 5, &[1, 2], 1), vec![3]);
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        // A = [[4, 2], [2, 3]], B = [[2], [1]] → X = [[0.5], [0]].
        let x = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[2.0, 1.0], 2, 1).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
        assert!(cholesky_solve(&[1.0, 2.0, 2.0, 1.0], &[1.0, 1.0], 2, 1).is_err());
    }

    #[test]
    fn the_probe_reads_a_separable_factor_and_chance_is_the_majority() {
        // Three classes, each a bump on its own feature, plus noise features.
        let mut rng = Rng::new(3);
        let (n, d) = (300, 6);
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let mut x = vec![0f32; n * d];
        rng.fill_normal(&mut x);
        for (i, &l) in labels.iter().enumerate() {
            x[i * d + l] += 4.0;
        }
        let p = Probe::fit(&x, d, &[(&labels, 3)], 0).unwrap();
        assert!(accuracy(&p[0].predict(&x, d), &labels) > 0.95);
        assert_eq!(accuracy(&[0, 1, 2, 2], &[0, 1, 1, 2]), 0.75);
        assert_eq!(majority_rate(&[1, 1, 0], &[1, 0, 2, 1], 3), 0.5);
    }

    #[test]
    fn factors_are_read_off_the_largest_object() {
        // Stimulus 0: two objects, the second (a blue square at the bottom right) larger.
        // Stimulus 1: one red circle at the top left on a texture.
        let e = 255;
        let shape = [0, 1, e, 0, e, e];
        let colour = [0, 4, e, 0, e, e];
        let mut geometry = vec![0f32; 24];
        geometry[..4].copy_from_slice(&[0.2, 0.2, 0.1, 0.0]);
        geometry[4..8].copy_from_slice(&[0.7, 0.8, 0.2, 0.0]);
        geometry[12..16].copy_from_slice(&[0.3, 0.4, 0.15, 0.0]);
        let f = factors_from_arrays(
            &shape,
            &colour,
            &geometry,
            &[2, 1],
            &[0, e, 1, 1, 2, 0, 3, 3],
        )
        .unwrap();
        let labels = |name| f.iter().find(|x| x.name == name).unwrap().labels.clone();
        assert_eq!(labels("colour"), [4, 0]);
        assert_eq!(labels("shape"), [1, 0]);
        assert_eq!(labels("position"), [3, 0]);
        assert_eq!(labels("count"), [1, 0]);
        assert_eq!(labels("background"), [0, 2]);
    }

    /// A disc fills π/4 of its bounding box and holds its centre; a ring does not; a square fills
    /// its box; Hu's first moment of a disc is 1/(2π).
    #[test]
    fn shape_descriptors_tell_discs_rings_and_squares_apart() {
        let (h, w) = (32, 32);
        let region = |f: &dyn Fn(f64, f64) -> bool| -> Vec<bool> {
            (0..h * w)
                .map(|p| f((p % w) as f64 - 15.5, (p / w) as f64 - 15.5))
                .collect()
        };
        let disc = shape_descriptors(&region(&|x, y| x * x + y * y < 100.0), h, w);
        let ring = shape_descriptors(
            &region(&|x, y| (36.0..100.0).contains(&(x * x + y * y))),
            h,
            w,
        );
        let square = shape_descriptors(&region(&|x, y| x.abs() < 8.0 && y.abs() < 8.0), h, w);
        assert!((disc[7] - 0.785).abs() < 0.03, "{disc:?}");
        assert!((square[7] - 1.0).abs() < 1e-6, "{square:?}");
        assert_eq!((disc[9], ring[9], square[9]), (1.0, 0.0, 1.0));
        let hu1 = 10f32.powf(disc[0]);
        assert!(
            (hu1 - 1.0 / (2.0 * std::f32::consts::PI)).abs() < 0.005,
            "{hu1}"
        );
        assert!(ring[0] > disc[0], "a ring spreads its mass further out");
        let b = blurred(&[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [1, 1, 2]);
        assert!(b.iter().all(|&v| (v - 0.5).abs() < 1e-6), "{b:?}");
    }

    #[test]
    fn features_pool_colours_into_an_eight_by_eight_grid() {
        // A 16×16 picture, red on the left half: cells of column < 4 are red.
        let (h, w) = (16, 16);
        let mut px = vec![0f32; h * w * 3];
        for y in 0..h {
            for x in 0..w / 2 {
                px[(y * w + x) * 3] = 1.0;
            }
        }
        let emb = [3.0f32, 4.0];
        let (f, d) = probe_features(&px, [1, h, w], Some((&emb, 2)));
        assert_eq!(d, 2 + 192 + 64 + 8 * 17 + SHAPE_FEATURES);
        assert!((f[0] - 0.6).abs() < 1e-6 && (f[1] - 0.8).abs() < 1e-6);
        assert_eq!(f[2], 1.0, "cell (0, 0) red");
        assert_eq!(f[2 + 4 * 3], 0.0, "cell (0, 4) black");
        // Pure red (255, 0, 0) is nearest the palette's red; pure black the palette's black.
        let mask = &f[2 + 192..2 + 256];
        assert!(
            mask.iter().all(|&m| m == 1.0),
            "every pixel is an object colour"
        );
        let colour = &f[2 + 256..2 + 256 + 8 * 17];
        assert_eq!(colour[0], 0.5, "half the picture is red");
        assert_eq!(colour[1], 1.0, "red fills the top-left 4×4 cell");
        assert_eq!(colour[1 + 2], 0.0, "and not the top-right one");
        assert_eq!(colour[7 * 17], 0.5, "the other half is black");
    }
}
