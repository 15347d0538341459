//! Mind Reader's training augmentations on f32 RGB images `[B, 3, H, W]` with values in [0, 1]
//! (torchvision's `ToTensor` range, before `Normalize`): augment first, normalise after, as
//! torchvision composes them.
//!
//! Every op comes in two forms: one that applies explicit per-image parameters (`hflip(x, &flags)`)
//! and a seeded `random_*` one that draws those parameters on the host, one `crate::rng` stream
//! per image (`Rng::stream(seed, stage::AUGMENT, …)`, stable across machines and rayon schedules),
//! then calls the first. The CPU twin and the CUDA kernel therefore receive identical parameters
//! and are directly comparable. A probability `p` applies the op to each image independently.
//!
//! **Horizontal flip** (p = 0.5): `y[b,c,i,j] = x[b,c,i,W−1−j]` where image b is flipped, else
//! `y = x`. Kernel `hflip_f32`: one thread per output element, reads x once and writes y once
//! (8 bytes per element in f32).
//!
//! **Random resized crop** (scale 0.8–1, ratio 3/4–4/3): torchvision's
//! `RandomResizedCrop.get_params`, draw for draw: up to ten tries of a target area
//! `A = H·W·U(scale)` and an aspect `r = exp(U(ln ratio))`, `w = round(√(A·r))`,
//! `h = round(√(A/r))` (round half to even); the first that fits gets `top = U{0..H−h}`,
//! `left = U{0..W−w}`; else the centre crop clamped to the ratio range. The crop is resampled
//! back to H × W with bilinear interpolation, `align_corners = False`: output row i samples
//! `s = max((i + ½)·h/H − ½, 0)`, rows `⌊s⌋` and `min(⌊s⌋ + 1, h − 1)` with weights `1 − f`, `f`
//! (f = s − ⌊s⌋), likewise for columns. The crop is never larger than the image, so this is an
//! upsample and torchvision's antialiasing changes nothing. Tap indices and weights are computed
//! on the host (f64, stored as i32/f32) and shared by both backends. Kernel `resized_crop_f32`:
//! one thread per output element, 4 taps (neighbouring threads share them through the cache),
//! one write: ≈ 8 bytes of DRAM traffic per element plus the tables.
//!
//! **Grayscale** (p = 0.2): torchvision's tensor `rgb_to_grayscale`,
//! `l = 0.2989·r + 0.587·g + 0.114·b` (ITU-R 601-2 luma with torchvision's digits; PIL's integer
//! path uses 0.299), replicated to the 3 channels. Kernel `grayscale_f32`: one thread per pixel,
//! reads its 3 channels, writes 3: 24 bytes per pixel.
//!
//! **Colour jitter** (p = 0.4): torchvision's `ColorJitter(0.4, 0.4, 0.2, 0.1)`, the ranges in
//! Mind Reader's `nsd_utils.get_img_trans` (sklin93/mind-reader): factors
//! `brightness, contrast ∈ U(0.6, 1.4)`, `saturation ∈ U(0.8, 1.2)`, `hue ∈ U(−0.1, 0.1)`,
//! applied in a random order (torchvision's `randperm(4)`), each as torchvision's tensor
//! functional with `blend(a, b, f) = clamp(f·a + (1 − f)·b, 0, 1)`:
//! brightness `blend(x, 0, f)`; contrast `blend(x, mean(luma(x)), f)` with the mean over the
//! whole image; saturation `blend(x, luma(x), f)` per pixel; hue: RGB → HSV (torchvision's
//! `_rgb2hsv`), `h ← (h + f) mod 1`, HSV → RGB (`_hsv2rgb`). Kernel `color_jitter_f32`: one
//! 256-thread block per image (the contrast step needs the image's mean, a block reduction);
//! each thread owns the same pixels through all four steps, so no step waits on another thread's
//! pixels; reads x once, then reads and writes y in place per step: ≤ 8 + 4·8 bytes per element.
//!
//! **Gaussian blur** (p = 0.5): torchvision's `GaussianBlur(kernel_size = 23)` with its default
//! `sigma ∈ U(0.1, 2.0)`, one σ for both axes: taps `x_k = k − 11`, `w_k ∝ exp(−½(x_k/σ)²)`
//! normalised to sum 1 (computed on the host in f64, stored f32), reflect padding (`−1 → 1`,
//! `W → W − 2`, repeated for images narrower than the kernel; a 1-pixel axis stays itself).
//! torchvision convolves with the 23×23 outer product; we apply the same kernel separably
//! (rows, then columns: equal up to f32 rounding). Kernels `blur_h_f32`, `blur_v_f32`: one
//! thread per output element, 23 taps each through the cache; read and write once per pass:
//! 16 bytes per element plus the intermediate.
//!
//! **Cutout** (always, in Mind Reader's augmented branch): Mind Reader's own `RandomMask(0.3)`,
//! exactly: "30 %" is the square's *side* as a fraction of each image side, not its area. With
//! centre `(cy, cx) ∈ U[0, 1)²` and `m = 0.15`, rows `max(0, round((cy − m)·H)) ..
//! min(H − 1, round((cy + m)·H))` and columns likewise with W (half-open, Python's
//! round-half-even) are set to 0 — at most ≈ 9 % of the area, less where the square leaves the
//! image; the reference's `min(H − 1, …)` means the last row and column are never masked, kept
//! here. Kernel `cutout_f32`: one thread per element, reads once and writes once (8 bytes).
//!
//! **The chain** `mind_reader_augment`, in the order of Mind Reader's `get_img_trans` (which
//! builds a new transform per sample, so every draw is per image): with probability 0.9
//! (`extra_aug`) the image is augmented by random resized crop → flip (0.5) → colour jitter
//! (0.4) → grayscale (0.2) → blur (0.5) → cutout; otherwise it passes unchanged. (The reference's
//! `ToTensor` and `Resize((256, 256))` come before, outside this module.) Each image draws all
//! its parameters from one stream, `Rng::stream(seed, AUGMENT, b << 8)`, in that order.
//!
//! No backward: augmentations act on data, before anything is tracked.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::rng::{stage, Rng};
use crate::tensor::{launch, launch_1d, upload, Device, Storage, Tensor};

/// Tags that separate the streams of the `random_*` ops, so that calling several of them with
/// one seed draws independent parameters.
mod tag {
    pub const HFLIP: u64 = 1;
    pub const CROP: u64 = 2;
    pub const GRAY: u64 = 3;
    pub const JITTER: u64 = 4;
    pub const BLUR: u64 = 5;
    pub const CUTOUT: u64 = 6;
}

/// `[B, H, W]` of a batch of RGB images `[B, 3, H, W]` with H, W ≥ 1.
fn image_dims(op: &'static str, x: &Tensor) -> Result<[usize; 3]> {
    match *x.shape() {
        [b, 3, h, w] if h > 0 && w > 0 => Ok([b, h, w]),
        _ => Err(Error::shape(
            op,
            format!(
                "images must be f32 [B, 3, H, W] with H, W ≥ 1, got {:?}",
                x.shape()
            ),
        )),
    }
}

/// Errors unless there is one parameter per image.
fn one_per_image(op: &'static str, params: usize, batch: usize) -> Result<()> {
    if params != batch {
        return Err(Error::shape(
            op,
            format!("{params} per-image parameters for a batch of {batch} images"),
        ));
    }
    Ok(())
}

/// Draws one value per image, each from its own stream of `seed`.
fn per_image<T>(seed: u64, tag: u64, batch: usize, mut draw: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    (0..batch)
        .map(|b| {
            draw(&mut Rng::stream(
                seed,
                stage::AUGMENT,
                ((b as u64) << 8) | tag,
            ))
        })
        .collect()
}

/// torchvision's luma weights for `rgb_to_grayscale` on tensors.
pub const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

/// One image's colour jitter: the four adjustments in `order` (0 brightness, 1 contrast,
/// 2 saturation, 3 hue) with their factors. Identity factors: 1, 1, 1, 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    pub order: [u8; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl Jitter {
    /// torchvision's `ColorJitter(brightness, contrast, saturation, hue).get_params`: a random
    /// order, then factors `U(max(0, 1 − b), 1 + b)`, likewise contrast and saturation, and
    /// `U(−hue, hue)`.
    pub fn sample(
        rng: &mut Rng,
        brightness: f32,
        contrast: f32,
        saturation: f32,
        hue: f32,
    ) -> Jitter {
        let mut order = [0, 1, 2, 3];
        rng.shuffle(&mut order);
        let mut around_one = |d: f32| rng.uniform((1.0 - d).max(0.0), 1.0 + d);
        let (brightness, contrast, saturation) = (
            around_one(brightness),
            around_one(contrast),
            around_one(saturation),
        );
        Jitter {
            order,
            brightness,
            contrast,
            saturation,
            hue: rng.uniform(-hue, hue),
        }
    }

    /// The factor of adjustment `op`.
    fn factor(&self, op: u8) -> f32 {
        [self.brightness, self.contrast, self.saturation, self.hue][op as usize]
    }

    /// `[on, brightness, contrast, saturation, hue, order…]` as the kernel reads it.
    fn packed(j: Option<&Jitter>) -> [f32; 9] {
        match j {
            None => [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0],
            Some(j) => {
                let o = j.order.map(f32::from);
                [
                    1.0,
                    j.brightness,
                    j.contrast,
                    j.saturation,
                    j.hue,
                    o[0],
                    o[1],
                    o[2],
                    o[3],
                ]
            }
        }
    }
}

/// torchvision's 1-D Gaussian kernel of odd size `k` and standard deviation `sigma`.
pub fn gaussian_kernel(k: usize, sigma: f32) -> Vec<f32> {
    let half = (k as f64 - 1.0) * 0.5;
    let pdf: Vec<f64> = (0..k)
        .map(|i| (-0.5 * ((i as f64 - half) / sigma as f64).powi(2)).exp())
        .collect();
    let sum: f64 = pdf.iter().sum();
    pdf.iter().map(|p| (p / sum) as f32).collect()
}

/// Reflect padding's source index for `i` on an axis of length `n` (torch's `reflect` mode,
/// repeated until inside; `n = 1` maps everything to 0).
pub fn reflect(mut i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    while i < 0 || i >= n {
        i = if i < 0 { -i } else { 2 * (n - 1) - i };
    }
    i as usize
}

/// A zeroed rectangle: rows `top .. bottom`, columns `left .. right` (half-open, may be empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutout {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Cutout {
    /// Mind Reader's `RandomMask(ratio)` on an `h × w` image (see the module doc).
    pub fn sample(rng: &mut Rng, h: usize, w: usize, ratio: f32) -> Cutout {
        let cy = rng.f32() as f64;
        Cutout::at(cy, rng.f32() as f64, h, w, ratio)
    }

    /// `RandomMask(ratio)` once its two centres are drawn: `cy` (its first draw, `cx` in the
    /// reference, which indexes the tensor's H axis) for the rows and `cx` for the columns.
    pub fn at(cy: f64, cx: f64, h: usize, w: usize, ratio: f32) -> Cutout {
        let m = ratio as f64 / 2.0;
        let span = |c: f64, n: usize| {
            let start = ((c - m) * n as f64).round_ties_even().max(0.0) as usize;
            let end = (((c + m) * n as f64).round_ties_even() as usize).min(n - 1);
            (start, end.max(start))
        };
        let ((top, bottom), (left, right)) = (span(cy, h), span(cx, w));
        Cutout {
            top,
            bottom,
            left,
            right,
        }
    }

    fn contains(&self, i: usize, j: usize) -> bool {
        (self.top..self.bottom).contains(&i) && (self.left..self.right).contains(&j)
    }
}

/// A crop window of an image: rows `top .. top + height`, columns `left .. left + width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl Crop {
    /// The whole `h × w` image.
    pub fn full(h: usize, w: usize) -> Crop {
        Crop {
            top: 0,
            left: 0,
            height: h,
            width: w,
        }
    }

    /// torchvision's `RandomResizedCrop.get_params(img, scale, ratio)` for an `h × w` image.
    pub fn sample(rng: &mut Rng, h: usize, w: usize, scale: (f32, f32), ratio: (f32, f32)) -> Crop {
        let area = (h * w) as f64;
        let (lo, hi) = ((ratio.0 as f64).ln(), (ratio.1 as f64).ln());
        for _ in 0..10 {
            let target = area * rng.uniform(scale.0, scale.1) as f64;
            let aspect = (lo + (hi - lo) * rng.f32() as f64).exp();
            let cw = (target * aspect).sqrt().round_ties_even() as usize;
            let ch = (target / aspect).sqrt().round_ties_even() as usize;
            if 0 < cw && cw <= w && 0 < ch && ch <= h {
                let top = rng.below(h - ch + 1);
                let left = rng.below(w - cw + 1);
                return Crop {
                    top,
                    left,
                    height: ch,
                    width: cw,
                };
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < ratio.0 as f64 {
            (((w as f64) / ratio.0 as f64).round_ties_even() as usize, w)
        } else if in_ratio > ratio.1 as f64 {
            (h, ((h as f64) * ratio.1 as f64).round_ties_even() as usize)
        } else {
            (h, w)
        };
        let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
        Crop {
            top: (h - ch) / 2,
            left: (w - cw) / 2,
            height: ch,
            width: cw,
        }
    }
}

/// Bilinear taps along one axis for every image: output `o` of image `b` reads input indices
/// `i0[b·n + o]`, `i1[…]` (absolute, crop offset included) with weights `1 − f`, `f`.
#[derive(Debug, Default)]
struct Taps {
    i0: Vec<i32>,
    i1: Vec<i32>,
    f: Vec<f32>,
}

impl Taps {
    /// Appends the taps resampling `start .. start + len` to `n` outputs (`align_corners = False`).
    fn push(&mut self, start: usize, len: usize, n: usize) {
        let scale = len as f64 / n as f64;
        for o in 0..n {
            let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(len - 1);
            let i1 = (i0 + 1).min(len - 1);
            self.i0.push((start + i0) as i32);
            self.i1.push((start + i1) as i32);
            self.f.push((s - i0 as f64) as f32);
        }
    }
}

/// Rows and columns taps of every image's crop resampled back to `h × w`.
fn crop_taps(crops: &[Crop], h: usize, w: usize) -> (Taps, Taps) {
    let (mut rows, mut cols) = (Taps::default(), Taps::default());
    for c in crops {
        rows.push(c.top, c.height, h);
        cols.push(c.left, c.width, w);
    }
    (rows, cols)
}

/// The CPU twins: plain loops over planar `[B, 3, H, W]` f32 buffers, one rayon task per image.
pub mod cpu {
    use super::*;

    /// Reverses the columns of the images whose flag is set.
    pub fn hflip(x: &[f32], flip: &[bool], [_, h, w]: [usize; 3]) -> Vec<f32> {
        let mut y = x.to_vec();
        y.par_chunks_mut(3 * h * w).zip(flip).for_each(|(img, &f)| {
            if f {
                img.chunks_mut(w).for_each(<[f32]>::reverse);
            }
        });
        y
    }

    /// The luma of one pixel, summed in the kernel's order.
    #[inline]
    pub fn luma(r: f32, g: f32, b: f32) -> f32 {
        LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
    }

    /// Replaces the flagged images by their luma in all three channels.
    pub fn grayscale(x: &[f32], gray: &[bool], [_, h, w]: [usize; 3]) -> Vec<f32> {
        let mut y = x.to_vec();
        let hw = h * w;
        y.par_chunks_mut(3 * hw).zip(gray).for_each(|(img, &g)| {
            if g {
                for p in 0..hw {
                    let l = luma(img[p], img[hw + p], img[2 * hw + p]);
                    (img[p], img[hw + p], img[2 * hw + p]) = (l, l, l);
                }
            }
        });
        y
    }

    /// torchvision's `_blend`: `clamp(f·a + (1 − f)·b, 0, 1)`.
    #[inline]
    fn blend(a: f32, b: f32, f: f32) -> f32 {
        (f * a + (1.0 - f) * b).clamp(0.0, 1.0)
    }

    /// torchvision's `adjust_hue` on one pixel: `_rgb2hsv`, shift, `_hsv2rgb`, in its f32 steps.
    pub fn hue_shift([r, g, b]: [f32; 3], shift: f32) -> [f32; 3] {
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let eqc = maxc == minc;
        let cr = maxc - minc;
        let s = cr / if eqc { 1.0 } else { maxc };
        let crd = if eqc { 1.0 } else { cr };
        let (rc, gc, bc) = ((maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd);
        let h = if maxc == r {
            bc - gc
        } else if maxc == g {
            2.0 + rc - bc
        } else {
            4.0 + gc - rc
        };
        let h = (h / 6.0 + 1.0) % 1.0;
        let h = h + shift;
        let h = h - h.floor();
        let v = maxc;
        let i6 = (h * 6.0).floor();
        let f = h * 6.0 - i6;
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        match (i6 as i32).rem_euclid(6) {
            0 => [v, t, p],
            1 => [q, v, p],
            2 => [p, v, t],
            3 => [p, q, v],
            4 => [t, p, v],
            _ => [v, p, q],
        }
    }

    /// Colour jitter of one planar `[3, hw]` image in place.
    pub fn jitter_image(img: &mut [f32], j: &Jitter) {
        let hw = img.len() / 3;
        let (r, rest) = img.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        for &op in &j.order {
            let f = j.factor(op);
            match op {
                0 => r
                    .iter_mut()
                    .chain(g.iter_mut())
                    .chain(b.iter_mut())
                    .for_each(|v| *v = blend(*v, 0.0, f)),
                1 => {
                    let sum: f64 = (0..hw).map(|p| luma(r[p], g[p], b[p]) as f64).sum();
                    let mean = (sum / hw as f64) as f32;
                    r.iter_mut()
                        .chain(g.iter_mut())
                        .chain(b.iter_mut())
                        .for_each(|v| *v = blend(*v, mean, f));
                }
                2 => {
                    for p in 0..hw {
                        let l = luma(r[p], g[p], b[p]);
                        (r[p], g[p], b[p]) =
                            (blend(r[p], l, f), blend(g[p], l, f), blend(b[p], l, f));
                    }
                }
                _ => {
                    for p in 0..hw {
                        [r[p], g[p], b[p]] = hue_shift([r[p], g[p], b[p]], f);
                    }
                }
            }
        }
    }

    /// Separable blur of the images with weights (`weights[b]` = Some(k taps)), reflect padding.
    pub fn blur(x: &[f32], weights: &[Option<Vec<f32>>], [_, h, w]: [usize; 3]) -> Vec<f32> {
        let mut y = x.to_vec();
        y.par_chunks_mut(3 * h * w)
            .zip(weights)
            .for_each(|(img, k)| {
                let Some(k) = k else { return };
                let half = (k.len() / 2) as i64;
                for plane in img.chunks_mut(h * w) {
                    let mut tmp = vec![0f32; h * w];
                    for i in 0..h {
                        for j in 0..w {
                            let mut acc = 0f32;
                            for (t, &kt) in k.iter().enumerate() {
                                acc += kt * plane[i * w + reflect(j as i64 + t as i64 - half, w)];
                            }
                            tmp[i * w + j] = acc;
                        }
                    }
                    for i in 0..h {
                        for j in 0..w {
                            let mut acc = 0f32;
                            for (t, &kt) in k.iter().enumerate() {
                                acc += kt * tmp[reflect(i as i64 + t as i64 - half, h) * w + j];
                            }
                            plane[i * w + j] = acc;
                        }
                    }
                }
            });
        y
    }

    /// Zeroes each image's rectangle in every channel.
    pub fn cutout(x: &[f32], rects: &[Option<Cutout>], [_, h, w]: [usize; 3]) -> Vec<f32> {
        let mut y = x.to_vec();
        y.par_chunks_mut(3 * h * w).zip(rects).for_each(|(img, r)| {
            let Some(r) = r else { return };
            for plane in img.chunks_mut(h * w) {
                for (p, v) in plane.iter_mut().enumerate() {
                    if r.contains(p / w, p % w) {
                        *v = 0.0;
                    }
                }
            }
        });
        y
    }

    /// `y = (1 − fy)·((1 − fx)·p00 + fx·p01) + fy·((1 − fx)·p10 + fx·p11)`, the kernel's order.
    #[inline]
    pub(super) fn bilinear(p00: f32, p01: f32, p10: f32, p11: f32, fy: f32, fx: f32) -> f32 {
        (1.0 - fy) * ((1.0 - fx) * p00 + fx * p01) + fy * ((1.0 - fx) * p10 + fx * p11)
    }

    /// Bilinear resample of each image's crop (as tap tables) back to `h × w`.
    pub(super) fn resized_crop(
        x: &[f32],
        rows: &Taps,
        cols: &Taps,
        [_, h, w]: [usize; 3],
    ) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(3 * h * w)
            .zip(x.par_chunks(3 * h * w))
            .enumerate()
            .for_each(|(b, (out, img))| {
                for (out, plane) in out.chunks_mut(h * w).zip(img.chunks(h * w)) {
                    for i in 0..h {
                        let r = b * h + i;
                        let (r0, r1, fy) =
                            (rows.i0[r] as usize * w, rows.i1[r] as usize * w, rows.f[r]);
                        for j in 0..w {
                            let k = b * w + j;
                            let (c0, c1, fx) =
                                (cols.i0[k] as usize, cols.i1[k] as usize, cols.f[k]);
                            out[i * w + j] = bilinear(
                                plane[r0 + c0],
                                plane[r0 + c1],
                                plane[r1 + c0],
                                plane[r1 + c1],
                                fy,
                                fx,
                            );
                        }
                    }
                }
            });
        y
    }
}

/// Horizontal flip of the images whose flag is set (`flip.len()` = B).
pub fn hflip(x: &Tensor, flip: &[bool]) -> Result<Tensor> {
    let dims @ [b, h, w] = image_dims("hflip", x)?;
    one_per_image("hflip", flip.len(), b)?;
    let s = x.storage();
    match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::hflip(s.cpu_f32("hflip")?, flip, dims),
            x.shape(),
            x.device(),
        ),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let flags = upload(gpu, &flip.iter().map(|&f| f as i32).collect::<Vec<_>>())?;
            let mut y = gpu.alloc::<f32>(n)?;
            let (bb, hh, ww) = (b as u32, h as u32, w as u32);
            // SAFETY: writes the n = B·3·H·W elements of y; reads x at the same row, column W−1−j
            // or j < W, and one flag per image.
            launch!(
                gpu,
                "augment",
                "hflip_f32",
                launch_1d(n),
                s.cuda_f32("hflip")?,
                &mut y,
                &flags,
                &bb,
                &hh,
                &ww
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// torchvision's `RandomHorizontalFlip(p)`, each image independently; Mind Reader uses p = 0.5.
pub fn random_hflip(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let [b, _, _] = image_dims("random_hflip", x)?;
    hflip(x, &per_image(seed, tag::HFLIP, b, |r| r.chance(p)))
}

/// Crops each image to its window and resamples it bilinearly back to H × W
/// (`crops.len()` = B, each window inside its image and non-empty).
pub fn resized_crop(x: &Tensor, crops: &[Crop]) -> Result<Tensor> {
    let dims @ [b, h, w] = image_dims("resized_crop", x)?;
    one_per_image("resized_crop", crops.len(), b)?;
    if let Some(c) = crops
        .iter()
        .find(|c| c.height == 0 || c.width == 0 || c.top + c.height > h || c.left + c.width > w)
    {
        return Err(Error::Invalid(format!(
            "resized_crop: window {c:?} is empty or outside a {h}×{w} image"
        )));
    }
    let (rows, cols) = crop_taps(crops, h, w);
    let s = x.storage();
    match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::resized_crop(s.cpu_f32("resized_crop")?, &rows, &cols, dims),
            x.shape(),
            x.device(),
        ),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let op = "resized_crop";
            let (r0, r1, rf) = (
                upload(gpu, &rows.i0)?,
                upload(gpu, &rows.i1)?,
                upload(gpu, &rows.f)?,
            );
            let (c0, c1, cf) = (
                upload(gpu, &cols.i0)?,
                upload(gpu, &cols.i1)?,
                upload(gpu, &cols.f)?,
            );
            let mut y = gpu.alloc::<f32>(n)?;
            let (bb, hh, ww) = (b as u32, h as u32, w as u32);
            // SAFETY: writes the n = B·3·H·W elements of y; the B·H row and B·W column tables
            // hold indices < H and < W (checked windows), so every tap lies in its own plane.
            launch!(
                gpu,
                "augment",
                "resized_crop_f32",
                launch_1d(n),
                s.cuda_f32(op)?,
                &mut y,
                &r0,
                &r1,
                &rf,
                &c0,
                &c1,
                &cf,
                &bb,
                &hh,
                &ww
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// The flagged images (`gray.len()` = B) become grayscale, replicated to 3 channels.
pub fn grayscale(x: &Tensor, gray: &[bool]) -> Result<Tensor> {
    let dims @ [b, h, w] = image_dims("grayscale", x)?;
    one_per_image("grayscale", gray.len(), b)?;
    let s = x.storage();
    match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::grayscale(s.cpu_f32("grayscale")?, gray, dims),
            x.shape(),
            x.device(),
        ),
        Device::Cuda(gpu) => {
            let flags = upload(gpu, &gray.iter().map(|&g| g as i32).collect::<Vec<_>>())?;
            let mut y = gpu.alloc::<f32>(x.numel())?;
            let (bb, hh, ww) = (b as u32, h as u32, w as u32);
            let [l0, l1, l2] = LUMA;
            // SAFETY: one thread per pixel of the B·H·W; each reads and writes its own 3 channels
            // of image b < B, and one flag per image.
            launch!(
                gpu,
                "augment",
                "grayscale_f32",
                launch_1d(b * h * w),
                s.cuda_f32("grayscale")?,
                &mut y,
                &flags,
                &bb,
                &hh,
                &ww,
                &l0,
                &l1,
                &l2
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// torchvision's `RandomGrayscale(p)` (3 output channels), each image independently; Mind Reader
/// uses p = 0.2.
pub fn random_grayscale(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let [b, _, _] = image_dims("random_grayscale", x)?;
    grayscale(x, &per_image(seed, tag::GRAY, b, |r| r.chance(p)))
}

/// Colour jitter of the images with parameters (`jitter.len()` = B; `None` leaves an image as is).
pub fn color_jitter(x: &Tensor, jitter: &[Option<Jitter>]) -> Result<Tensor> {
    let [b, h, w] = image_dims("color_jitter", x)?;
    one_per_image("color_jitter", jitter.len(), b)?;
    if let Some(j) = jitter.iter().flatten().find(|j| {
        let mut seen = j.order;
        seen.sort_unstable();
        seen != [0, 1, 2, 3]
    }) {
        return Err(Error::Invalid(format!(
            "color_jitter: order {:?} is not a permutation of 0..4",
            j.order
        )));
    }
    let s = x.storage();
    match x.device() {
        Device::Cpu => {
            let mut y = s.cpu_f32("color_jitter")?.to_vec();
            y.par_chunks_mut(3 * h * w)
                .zip(jitter)
                .for_each(|(img, j)| {
                    if let Some(j) = j {
                        cpu::jitter_image(img, j)
                    }
                });
            Tensor::from_vec(y, x.shape(), x.device())
        }
        Device::Cuda(gpu) => {
            let mut y = gpu.alloc::<f32>(x.numel())?;
            if b == 0 {
                return Ok(Tensor::from_storage(
                    Storage::CudaF32(y),
                    x.shape(),
                    x.device(),
                ));
            }
            let params: Vec<f32> = jitter
                .iter()
                .flat_map(|j| Jitter::packed(j.as_ref()))
                .collect();
            let params = upload(gpu, &params)?;
            let (hh, ww) = (h as u32, w as u32);
            // One block per image: the contrast step reduces over the whole image.
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (b as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: block b < B reads and writes only image b's 3·H·W elements of x and y, and
            // its 9 parameters; orders are checked permutations of 0..4.
            launch!(
                gpu,
                "augment",
                "color_jitter_f32",
                cfg,
                s.cuda_f32("color_jitter")?,
                &mut y,
                &params,
                &hh,
                &ww
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// torchvision's `RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`, each
/// image independently; Mind Reader uses p = 0.4 with (0.4, 0.4, 0.2, 0.1).
pub fn random_color_jitter(
    x: &Tensor,
    p: f32,
    [bf, cf, sf, hf]: [f32; 4],
    seed: u64,
) -> Result<Tensor> {
    let [b, _, _] = image_dims("random_color_jitter", x)?;
    color_jitter(
        x,
        &per_image(seed, tag::JITTER, b, |r| {
            r.chance(p).then(|| Jitter::sample(r, bf, cf, sf, hf))
        }),
    )
}

/// Gaussian blur with a `kernel`-tap (odd) kernel of each image's σ (`sigma.len()` = B; `None`
/// leaves an image as is), reflect padding.
pub fn gaussian_blur(x: &Tensor, kernel: usize, sigma: &[Option<f32>]) -> Result<Tensor> {
    let dims @ [b, h, w] = image_dims("gaussian_blur", x)?;
    one_per_image("gaussian_blur", sigma.len(), b)?;
    if kernel % 2 == 0 || sigma.iter().flatten().any(|&s| !(s > 0.0 && s.is_finite())) {
        return Err(Error::Invalid(format!(
            "gaussian_blur: kernel size {kernel} must be odd and every σ positive"
        )));
    }
    let weights: Vec<Option<Vec<f32>>> = sigma
        .iter()
        .map(|s| s.map(|s| gaussian_kernel(kernel, s)))
        .collect();
    let s = x.storage();
    match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::blur(s.cpu_f32("gaussian_blur")?, &weights, dims),
            x.shape(),
            x.device(),
        ),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let op = "gaussian_blur";
            let on: Vec<i32> = weights.iter().map(|k| k.is_some() as i32).collect();
            let table: Vec<f32> = weights
                .iter()
                .flat_map(|k| k.clone().unwrap_or_else(|| vec![0.0; kernel]))
                .collect();
            let (on, table) = (upload(gpu, &on)?, upload(gpu, &table)?);
            let mut tmp = gpu.alloc::<f32>(n)?;
            let mut y = gpu.alloc::<f32>(n)?;
            let (bb, hh, ww, kk) = (b as u32, h as u32, w as u32, kernel as u32);
            // SAFETY: writes the n = B·3·H·W elements of tmp; reads x within each plane (reflected
            // column indices < W) and B·kernel weights, one flag per image.
            launch!(
                gpu,
                "augment",
                "blur_h_f32",
                launch_1d(n),
                s.cuda_f32(op)?,
                &mut tmp,
                &table,
                &on,
                &bb,
                &hh,
                &ww,
                &kk
            )?;
            // SAFETY: writes the n elements of y; reads tmp within each plane (reflected rows < H).
            launch!(
                gpu,
                "augment",
                "blur_v_f32",
                launch_1d(n),
                &tmp,
                &mut y,
                &table,
                &on,
                &bb,
                &hh,
                &ww,
                &kk
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// torchvision's `RandomApply([GaussianBlur(kernel, sigma)], p)` with `σ ∈ U(sigma)`, each image
/// independently; Mind Reader uses p = 0.5, kernel 23 and torchvision's default σ ∈ (0.1, 2.0).
pub fn random_gaussian_blur(
    x: &Tensor,
    p: f32,
    kernel: usize,
    sigma: (f32, f32),
    seed: u64,
) -> Result<Tensor> {
    let [b, _, _] = image_dims("random_gaussian_blur", x)?;
    gaussian_blur(
        x,
        kernel,
        &per_image(seed, tag::BLUR, b, |r| {
            r.chance(p).then(|| r.uniform(sigma.0, sigma.1))
        }),
    )
}

/// Zeroes each image's rectangle (`rects.len()` = B; `None` leaves an image as is).
pub fn cutout(x: &Tensor, rects: &[Option<Cutout>]) -> Result<Tensor> {
    let dims @ [b, h, w] = image_dims("cutout", x)?;
    one_per_image("cutout", rects.len(), b)?;
    if let Some(r) = rects
        .iter()
        .flatten()
        .find(|r| r.top > r.bottom || r.left > r.right || r.bottom > h || r.right > w)
    {
        return Err(Error::Invalid(format!(
            "cutout: rectangle {r:?} is not inside a {h}×{w} image"
        )));
    }
    let s = x.storage();
    match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::cutout(s.cpu_f32("cutout")?, rects, dims),
            x.shape(),
            x.device(),
        ),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let table: Vec<i32> = rects
                .iter()
                .flat_map(|r| {
                    r.map_or([0; 4], |r| {
                        [r.top, r.bottom, r.left, r.right].map(|v| v as i32)
                    })
                })
                .collect();
            let table = upload(gpu, &table)?;
            let mut y = gpu.alloc::<f32>(n)?;
            let (bb, hh, ww) = (b as u32, h as u32, w as u32);
            // SAFETY: writes the n = B·3·H·W elements of y, reads the same element of x and the
            // 4 bounds of its image.
            launch!(
                gpu,
                "augment",
                "cutout_f32",
                launch_1d(n),
                s.cuda_f32("cutout")?,
                &mut y,
                &table,
                &bb,
                &hh,
                &ww
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// Mind Reader's `RandomMask(ratio)` applied with probability `p`, each image independently;
/// Mind Reader uses ratio 0.3 and applies it to every augmented image (p = 1).
pub fn random_cutout(x: &Tensor, p: f32, ratio: f32, seed: u64) -> Result<Tensor> {
    let [b, h, w] = image_dims("random_cutout", x)?;
    cutout(
        x,
        &per_image(seed, tag::CUTOUT, b, |r| {
            r.chance(p).then(|| Cutout::sample(r, h, w, ratio))
        }),
    )
}

/// Mind Reader's augmentation parameters (`nsd_utils.get_img_trans` defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MindReaderAugment {
    /// Probability that an image is augmented at all (`extra_aug`).
    pub p_augment: f32,
    pub crop_scale: (f32, f32),
    pub crop_ratio: (f32, f32),
    pub p_flip: f32,
    pub p_jitter: f32,
    /// Brightness, contrast, saturation, hue.
    pub jitter: [f32; 4],
    pub p_gray: f32,
    pub p_blur: f32,
    pub blur_kernel: usize,
    pub blur_sigma: (f32, f32),
    pub cutout_ratio: f32,
}

impl Default for MindReaderAugment {
    fn default() -> Self {
        MindReaderAugment {
            p_augment: 0.9,
            crop_scale: (0.8, 1.0),
            crop_ratio: (0.75, 4.0 / 3.0),
            p_flip: 0.5,
            p_jitter: 0.4,
            jitter: [0.4, 0.4, 0.2, 0.1],
            p_gray: 0.2,
            p_blur: 0.5,
            blur_kernel: 23,
            blur_sigma: (0.1, 2.0),
            cutout_ratio: 0.3,
        }
    }
}

/// One image's draws for the whole chain; `None` / `false` / the full crop where a step is off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageAugment {
    pub crop: Crop,
    pub flip: bool,
    pub jitter: Option<Jitter>,
    pub gray: bool,
    pub blur_sigma: Option<f32>,
    pub cutout: Option<Cutout>,
}

/// The seed of augmented view `k` of a dataset under `seed` (`screen-captions --augment-views`
/// and `inspect --augment-sheet` draw the same views from it).
pub fn view_seed(seed: u64, k: usize) -> u64 {
    Rng::stream(seed, stage::AUGMENT_VIEW, k as u64).next_u64()
}

impl ImageAugment {
    /// The draws in a few words, for labels: "crop 220×231 @(9,4) flip jitter gray blur σ1.3 cutout".
    pub fn describe(&self, h: usize, w: usize) -> String {
        let mut parts = Vec::new();
        let c = self.crop;
        if c != Crop::full(h, w) {
            parts.push(format!(
                "crop {}x{} @({},{})",
                c.height, c.width, c.top, c.left
            ));
        }
        if self.flip {
            parts.push("flip".into());
        }
        if self.jitter.is_some() {
            parts.push("jitter".into());
        }
        if self.gray {
            parts.push("gray".into());
        }
        if let Some(s) = self.blur_sigma {
            parts.push(format!("blur {s:.1}"));
        }
        if self.cutout.is_some() {
            parts.push("cutout".into());
        }
        if parts.is_empty() {
            "unchanged".into()
        } else {
            parts.join(" ")
        }
    }
}

impl MindReaderAugment {
    /// Draws image `index`'s parameters for an `h × w` image.
    pub fn sample(&self, seed: u64, index: usize, h: usize, w: usize) -> ImageAugment {
        let r = &mut Rng::stream(seed, stage::AUGMENT, (index as u64) << 8);
        if !r.chance(self.p_augment) {
            return ImageAugment {
                crop: Crop::full(h, w),
                flip: false,
                jitter: None,
                gray: false,
                blur_sigma: None,
                cutout: None,
            };
        }
        let crop = Crop::sample(r, h, w, self.crop_scale, self.crop_ratio);
        let flip = r.chance(self.p_flip);
        let [bf, cf, sf, hf] = self.jitter;
        let jitter = r
            .chance(self.p_jitter)
            .then(|| Jitter::sample(r, bf, cf, sf, hf));
        let gray = r.chance(self.p_gray);
        let blur_sigma = r
            .chance(self.p_blur)
            .then(|| r.uniform(self.blur_sigma.0, self.blur_sigma.1));
        let cutout = Some(Cutout::sample(r, h, w, self.cutout_ratio));
        ImageAugment {
            crop,
            flip,
            jitter,
            gray,
            blur_sigma,
            cutout,
        }
    }

    /// Applies the chain to `[0, 1]` images `[B, 3, H, W]` on their device.
    pub fn apply(&self, x: &Tensor, seed: u64) -> Result<Tensor> {
        self.apply_indexed(x, seed, 0)
    }

    /// `apply` where image i of the batch draws as image `first + i`: a dataset augmented in
    /// batches gets the same parameters per stimulus whatever the batch size.
    pub fn apply_indexed(&self, x: &Tensor, seed: u64, first: usize) -> Result<Tensor> {
        let [b, h, w] = image_dims("mind_reader_augment", x)?;
        let p: Vec<ImageAugment> = (0..b).map(|i| self.sample(seed, first + i, h, w)).collect();
        self.apply_params(x, &p)
    }

    /// The chain with every image's draws given (`p.len()` = B).
    pub fn apply_params(&self, x: &Tensor, p: &[ImageAugment]) -> Result<Tensor> {
        let [b, _, _] = image_dims("mind_reader_augment", x)?;
        one_per_image("mind_reader_augment", p.len(), b)?;
        let x = resized_crop(x, &p.iter().map(|a| a.crop).collect::<Vec<_>>())?;
        let x = hflip(&x, &p.iter().map(|a| a.flip).collect::<Vec<_>>())?;
        let x = color_jitter(&x, &p.iter().map(|a| a.jitter).collect::<Vec<_>>())?;
        let x = grayscale(&x, &p.iter().map(|a| a.gray).collect::<Vec<_>>())?;
        let x = gaussian_blur(
            &x,
            self.blur_kernel,
            &p.iter().map(|a| a.blur_sigma).collect::<Vec<_>>(),
        )?;
        cutout(&x, &p.iter().map(|a| a.cutout).collect::<Vec<_>>())
    }
}

/// torchvision's `ToTensor` on 8-bit `[B, H, W, 3]` pixels: planar f32 `[B, 3, H, W]`, `v / 255`.
pub fn unit_planar(pixels: &[u8], [b, h, w]: [usize; 3]) -> Result<Vec<f32>> {
    if pixels.len() != b * h * w * 3 {
        return Err(Error::shape(
            "unit_planar",
            format!("{} bytes for [{b}, {h}, {w}, 3] pixels", pixels.len()),
        ));
    }
    let hw = h * w;
    let mut out = vec![0f32; pixels.len()];
    out.par_chunks_mut(3 * hw)
        .zip(pixels.par_chunks(3 * hw))
        .for_each(|(planes, px)| {
            for (p, rgb) in px.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    planes[c * hw + p] = rgb[c] as f32 / 255.0;
                }
            }
        });
    Ok(out)
}

/// torchvision's `ToPILImage` on `[0, 1]` planar f32 `[B, 3, H, W]`: `(v·255)` truncated to u8
/// (its `pic.mul(255).byte()`), interleaved `[B, H, W, 3]`. Mind Reader augments tensors and
/// hands CLIP a PIL image, so the augmented pixels pass through exactly this quantisation.
pub fn to_pil_u8(planar: &[f32], [b, h, w]: [usize; 3]) -> Result<Vec<u8>> {
    if planar.len() != b * 3 * h * w {
        return Err(Error::shape(
            "to_pil_u8",
            format!("{} values for [{b}, 3, {h}, {w}] images", planar.len()),
        ));
    }
    let hw = h * w;
    let mut out = vec![0u8; planar.len()];
    out.par_chunks_mut(3 * hw)
        .zip(planar.par_chunks(3 * hw))
        .for_each(|(px, planes)| {
            for (p, rgb) in px.chunks_exact_mut(3).enumerate() {
                for c in 0..3 {
                    // `as u8` saturates (NaN → 0), like a clamp to [0, 255] then truncation.
                    rgb[c] = (planes[c * hw + p] * 255.0) as u8;
                }
            }
        });
    Ok(out)
}

/// Mind Reader's training augmentation of `[0, 1]` images `[B, 3, H, W]` (see the module doc),
/// on `device`; normalise (e.g. by CLIP's mean/std) afterwards.
pub fn mind_reader_augment(images: &Tensor, seed: u64, device: &Device) -> Result<Tensor> {
    MindReaderAugment::default().apply(&images.to_device(device)?, seed)
}

/// torchvision's `RandomResizedCrop((H, W), scale, ratio)` with bilinear resampling, each image
/// its own window; Mind Reader uses scale (0.8, 1) and torchvision's default ratio (3/4, 4/3).
pub fn random_resized_crop(
    x: &Tensor,
    scale: (f32, f32),
    ratio: (f32, f32),
    seed: u64,
) -> Result<Tensor> {
    let [b, h, w] = image_dims("random_resized_crop", x)?;
    if !(0.0 < scale.0
        && scale.0 <= scale.1
        && scale.1 <= 1.0
        && 0.0 < ratio.0
        && ratio.0 <= ratio.1)
    {
        return Err(Error::Invalid(format!("random_resized_crop: need 0 < scale {scale:?} ≤ 1 and 0 < ratio {ratio:?}, each (lo, hi) ordered")));
    }
    resized_crop(
        x,
        &per_image(seed, tag::CROP, b, |r| Crop::sample(r, h, w, scale, ratio)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, random_vec};

    /// Awkward image sizes for parity: odd, prime, single-pixel, wider and taller than a block.
    const PARITY_SHAPES: [[usize; 4]; 5] = [
        [1, 3, 1, 1],
        [3, 3, 7, 33],
        [2, 3, 33, 7],
        [5, 3, 37, 53],
        [2, 3, 67, 129],
    ];

    /// [0, 1) images from a seed.
    fn unit_images(shape: [usize; 4], seed: u64) -> Vec<f32> {
        random_vec(shape.iter().product(), seed)
            .into_iter()
            .map(|v| 0.5 * v + 0.5)
            .collect()
    }

    fn tensor(v: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor {
        Tensor::from_vec(v, &shape, device).unwrap()
    }

    /// Runs `op` on the CPU and the GPU (when there is one) over the parity shapes.
    fn cuda_matches_cpu(
        name: &str,
        rtol: f32,
        atol: f32,
        op: impl Fn(&Tensor, u64) -> Result<Tensor>,
    ) {
        let Some(gpu) = gpu() else { return };
        for (k, shape) in PARITY_SHAPES.into_iter().enumerate() {
            let v = unit_images(shape, 100 + k as u64);
            let want = op(&tensor(v.clone(), shape, &Device::Cpu), k as u64)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let got = op(&tensor(v, shape, &gpu), k as u64)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_close(&got, &want, rtol, atol, &format!("{name} {shape:?}"));
        }
    }

    /// Same seed → same output; another seed → another output (16 images make a coincidence
    /// of all per-image draws negligible).
    fn seeded(op: impl Fn(&Tensor, u64) -> Result<Tensor>) {
        let shape = [16, 3, 9, 11];
        let x = tensor(unit_images(shape, 5), shape, &Device::Cpu);
        let a = op(&x, 1).unwrap().to_vec_f32().unwrap();
        assert_eq!(a, op(&x, 1).unwrap().to_vec_f32().unwrap());
        assert_ne!(a, op(&x, 2).unwrap().to_vec_f32().unwrap());
    }

    #[test]
    fn hflip_reverses_columns_of_flagged_images() {
        for d in devices() {
            let shape = [2, 3, 2, 3];
            let x: Vec<f32> = (0..36).map(|v| v as f32).collect();
            let y = hflip(&tensor(x.clone(), shape, &d), &[true, false])
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_eq!(&y[..6], &[2.0, 1.0, 0.0, 5.0, 4.0, 3.0], "{d}");
            assert_eq!(&y[15..18], &[17.0, 16.0, 15.0], "{d}");
            assert_eq!(&y[18..], &x[18..], "{d}: the second image is not flipped");
        }
    }

    #[test]
    fn crop_of_the_whole_image_is_the_identity() {
        for d in devices() {
            for shape in [[2, 3, 5, 5], [1, 3, 4, 7]] {
                let v = unit_images(shape, 3);
                let crops = vec![Crop::full(shape[2], shape[3]); shape[0]];
                let y = resized_crop(&tensor(v.clone(), shape, &d), &crops)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                assert_eq!(y, v, "{d} {shape:?}");
            }
            // Scale 1 and ratio 1 on a square image can only draw the whole image.
            let shape = [4, 3, 6, 6];
            let v = unit_images(shape, 4);
            let y = random_resized_crop(&tensor(v.clone(), shape, &d), (1.0, 1.0), (1.0, 1.0), 9)
                .unwrap();
            assert_eq!(y.to_vec_f32().unwrap(), v, "{d}");
        }
    }

    #[test]
    fn crop_upsamples_bilinearly() {
        // The 2×2 window at (1, 1) of a 4×4 column ramp [0, 1, 2, 3] resampled to 4×4 samples
        // columns 1 + max((j + ½)/2 − ½, 0) = 1, 1.25, 1.75, 2 (align_corners = False).
        let shape = [1, 3, 4, 4];
        let v: Vec<f32> = (0..48).map(|k| (k % 4) as f32).collect();
        let y = resized_crop(
            &tensor(v, shape, &Device::Cpu),
            &[Crop {
                top: 1,
                left: 1,
                height: 2,
                width: 2,
            }],
        )
        .unwrap();
        let y = y.to_vec_f32().unwrap();
        for i in 0..4 {
            assert_eq!(&y[i * 4..i * 4 + 4], &[1.0, 1.25, 1.75, 2.0]);
        }
    }

    #[test]
    fn crops_follow_torchvision_ranges() {
        let mut rng = Rng::new(11);
        for _ in 0..2000 {
            let (h, w) = (37, 53);
            let c = Crop::sample(&mut rng, h, w, (0.8, 1.0), (0.75, 4.0 / 3.0));
            assert!(
                c.top + c.height <= h && c.left + c.width <= w && c.height > 0 && c.width > 0,
                "{c:?}"
            );
            let area = (c.height * c.width) as f64 / (h * w) as f64;
            assert!((0.75..=1.0).contains(&area), "{c:?}: area {area}");
        }
        assert!(random_resized_crop(
            &tensor(vec![0.0; 12], [1, 3, 2, 2], &Device::Cpu),
            (0.8, 1.5),
            (0.75, 1.3),
            0
        )
        .is_err());
        let x = tensor(vec![0.0; 12], [1, 3, 2, 2], &Device::Cpu);
        assert!(resized_crop(
            &x,
            &[Crop {
                top: 1,
                left: 0,
                height: 2,
                width: 2
            }]
        )
        .is_err());
    }

    #[test]
    fn random_resized_crop_is_seeded() {
        seeded(|x, s| random_resized_crop(x, (0.8, 1.0), (0.75, 4.0 / 3.0), s));
    }

    #[test]
    fn resized_crop_cuda_matches_cpu() {
        cuda_matches_cpu("resized_crop", 1e-6, 1e-6, |x, s| {
            random_resized_crop(x, (0.8, 1.0), (0.75, 4.0 / 3.0), s)
        });
    }

    #[test]
    fn grayscale_channels_equal_the_luma() {
        for d in devices() {
            let shape = [2, 3, 1, 2];
            let x = vec![
                1.0, 0.0, 0.0, 1.0, 0.0, 0.5, /* image 2 */ 0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
            ];
            let y = grayscale(&tensor(x.clone(), shape, &d), &[true, false])
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let (l0, l1) = (0.2989, 0.587 + 0.114 * 0.5);
            assert_close(
                &y[..6],
                &[l0, l1, l0, l1, l0, l1],
                1e-6,
                0.0,
                &d.to_string(),
            );
            assert_eq!(&y[6..], &x[6..], "{d}: the second image keeps its colours");
        }
    }

    #[test]
    fn random_grayscale_is_seeded() {
        seeded(|x, s| random_grayscale(x, 0.5, s));
    }

    #[test]
    fn grayscale_cuda_matches_cpu() {
        cuda_matches_cpu("grayscale", 1e-6, 1e-7, |x, s| random_grayscale(x, 0.5, s));
    }

    /// A jitter doing only `op` with factor `f` first (the others at identity after it).
    fn only(op: u8, f: f32) -> Jitter {
        let mut j = Jitter {
            order: [op, (op + 1) % 4, (op + 2) % 4, (op + 3) % 4],
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            hue: 0.0,
        };
        match op {
            0 => j.brightness = f,
            1 => j.contrast = f,
            2 => j.saturation = f,
            _ => j.hue = f,
        }
        j
    }

    #[test]
    fn jitter_adjustments_follow_torchvision() {
        // Two pixels: pure red and (0.2, 0.4, 0.6).
        let x = vec![1.0, 0.2, 0.0, 0.4, 0.0, 0.6];
        let l = [0.2989, 0.2989 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6];
        let mean = (l[0] + l[1]) / 2.0;
        let cases: [(Jitter, Vec<f32>); 6] = [
            (only(0, 0.5), vec![0.5, 0.1, 0.0, 0.2, 0.0, 0.3]),
            (only(0, 2.0), vec![1.0, 0.4, 0.0, 0.8, 0.0, 1.0]),
            (only(1, 0.0), vec![mean; 6]),
            (only(2, 0.0), vec![l[0], l[1], l[0], l[1], l[0], l[1]]),
            // Hue +1/3: red → green; (0.2, 0.4, 0.6) (h = 7/12) → h = 11/12, (0.6, 0.2, 0.4).
            (only(3, 1.0 / 3.0), vec![0.0, 0.6, 1.0, 0.2, 0.0, 0.4]),
            (only(3, 0.0), x.clone()),
        ];
        for d in devices() {
            for (j, want) in &cases {
                let y = color_jitter(&tensor(x.clone(), [1, 3, 1, 2], &d), &[Some(*j)])
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                assert_close(&y, want, 1e-5, 1e-6, &format!("{d} {j:?}"));
            }
            let y = color_jitter(&tensor(x.clone(), [1, 3, 1, 2], &d), &[None])
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_eq!(y, x, "{d}: no jitter");
        }
        let bad = Jitter {
            order: [0, 0, 1, 2],
            ..only(0, 1.0)
        };
        assert!(color_jitter(&tensor(x, [1, 3, 1, 2], &Device::Cpu), &[Some(bad)]).is_err());
    }

    #[test]
    fn jitter_factors_lie_in_mind_readers_ranges() {
        let mut rng = Rng::new(4);
        for _ in 0..1000 {
            let j = Jitter::sample(&mut rng, 0.4, 0.4, 0.2, 0.1);
            assert!(
                (0.6..1.4).contains(&j.brightness) && (0.6..1.4).contains(&j.contrast),
                "{j:?}"
            );
            assert!(
                (0.8..1.2).contains(&j.saturation) && (-0.1..0.1).contains(&j.hue),
                "{j:?}"
            );
            let mut o = j.order;
            o.sort_unstable();
            assert_eq!(o, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn random_color_jitter_is_seeded() {
        seeded(|x, s| random_color_jitter(x, 0.5, [0.4, 0.4, 0.2, 0.1], s));
    }

    #[test]
    fn color_jitter_cuda_matches_cpu() {
        cuda_matches_cpu("color_jitter", 1e-5, 1e-5, |x, s| {
            random_color_jitter(x, 0.8, [0.4, 0.4, 0.2, 0.1], s)
        });
    }

    #[test]
    fn blur_keeps_a_constant_image_and_spreads_a_point_by_the_kernel() {
        let k = gaussian_kernel(23, 1.5);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6 && k[0] == k[22] && k[11] > k[10]);
        for d in devices() {
            let shape = [2, 3, 5, 30];
            let y = gaussian_blur(
                &tensor(vec![0.7; 900], shape, &d),
                23,
                &[Some(0.1), Some(2.0)],
            )
            .unwrap();
            assert_close(
                &y.to_vec_f32().unwrap(),
                &[0.7; 900],
                1e-6,
                0.0,
                &format!("{d}: constant"),
            );
            // A point in the middle of a 25×25 image (no padding reached) becomes k ⊗ k.
            let mut x = vec![0.0; 3 * 625];
            x[12 * 25 + 12] = 1.0;
            let y = gaussian_blur(&tensor(x.clone(), [1, 3, 25, 25], &d), 23, &[Some(1.0)])
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let k = gaussian_kernel(23, 1.0);
            for (i, j) in [(12, 12), (1, 12), (12, 23), (5, 17)] {
                assert!(
                    (y[i * 25 + j] - k[i - 1] * k[j - 1]).abs() < 1e-7,
                    "{d}: ({i}, {j})"
                );
            }
            let y = gaussian_blur(&tensor(x.clone(), [1, 3, 25, 25], &d), 23, &[None])
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_eq!(y, x, "{d}: no blur");
        }
        assert_eq!(
            [-1, -2, 0, 4, 5, 6, 13].map(|i| reflect(i, 5)),
            [1, 2, 0, 4, 3, 2, 3]
        );
        assert_eq!(reflect(-7, 1), 0);
        let x = tensor(vec![0.0; 12], [1, 3, 2, 2], &Device::Cpu);
        assert!(
            gaussian_blur(&x, 22, &[Some(1.0)]).is_err()
                && gaussian_blur(&x, 23, &[Some(0.0)]).is_err()
        );
    }

    #[test]
    fn random_gaussian_blur_is_seeded() {
        seeded(|x, s| random_gaussian_blur(x, 0.5, 23, (0.1, 2.0), s));
    }

    #[test]
    fn gaussian_blur_cuda_matches_cpu() {
        cuda_matches_cpu("gaussian_blur", 1e-5, 1e-6, |x, s| {
            random_gaussian_blur(x, 0.8, 23, (0.1, 2.0), s)
        });
    }

    #[test]
    fn cutout_zeroes_its_rectangle_only() {
        for d in devices() {
            let shape = [1, 3, 4, 5];
            let r = Cutout {
                top: 1,
                bottom: 3,
                left: 2,
                right: 4,
            };
            let y = cutout(&tensor(vec![0.5; 60], shape, &d), &[Some(r)])
                .unwrap()
                .to_vec_f32()
                .unwrap();
            for (k, &v) in y.iter().enumerate() {
                let (i, j) = ((k / 5) % 4, k % 5);
                assert_eq!(
                    v,
                    if (1..3).contains(&i) && (2..4).contains(&j) {
                        0.0
                    } else {
                        0.5
                    },
                    "{d} ({i}, {j})"
                );
            }
        }
        // Sides at most 30 % of the image sides; the last row and column are never masked.
        let mut rng = Rng::new(8);
        for _ in 0..1000 {
            let c = Cutout::sample(&mut rng, 100, 60, 0.3);
            assert!(
                c.bottom - c.top <= 30 && c.right - c.left <= 18 && c.bottom <= 99 && c.right <= 59,
                "{c:?}"
            );
        }
        let x = tensor(vec![0.0; 12], [1, 3, 2, 2], &Device::Cpu);
        assert!(cutout(
            &x,
            &[Some(Cutout {
                top: 0,
                bottom: 3,
                left: 0,
                right: 1
            })]
        )
        .is_err());
    }

    #[test]
    fn random_cutout_is_seeded() {
        seeded(|x, s| random_cutout(x, 1.0, 0.3, s));
    }

    #[test]
    fn cutout_cuda_matches_cpu() {
        cuda_matches_cpu("cutout", 0.0, 0.0, |x, s| random_cutout(x, 0.8, 0.3, s));
    }

    #[test]
    fn chain_draws_per_image_in_mind_readers_proportions() {
        let cfg = MindReaderAugment::default();
        let n = 20_000;
        let draws: Vec<ImageAugment> = (0..n).map(|i| cfg.sample(3, i, 64, 64)).collect();
        let frac = |f: &dyn Fn(&ImageAugment) -> bool| {
            draws.iter().filter(|a| f(a)).count() as f64 / n as f64
        };
        let augmented = frac(&|a| a.cutout.is_some());
        assert!((augmented - 0.9).abs() < 0.01, "augmented {augmented}");
        for (got, want) in [
            (frac(&|a| a.flip), 0.45),
            (frac(&|a| a.jitter.is_some()), 0.36),
            (frac(&|a| a.gray), 0.18),
            (frac(&|a| a.blur_sigma.is_some()), 0.45),
        ] {
            assert!((got - want).abs() < 0.015, "{got} vs {want}");
        }
        assert_eq!(cfg.sample(3, 7, 64, 64), draws[7]);
    }

    #[test]
    fn mind_reader_augment_is_seeded_and_stays_in_range() {
        seeded(|x, s| mind_reader_augment(x, s, &Device::Cpu));
        let shape = [8, 3, 24, 24];
        let y = mind_reader_augment(
            &tensor(unit_images(shape, 2), shape, &Device::Cpu),
            5,
            &Device::Cpu,
        )
        .unwrap();
        assert!(y
            .to_vec_f32()
            .unwrap()
            .iter()
            .all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn mind_reader_augment_cuda_matches_cpu() {
        cuda_matches_cpu("mind_reader_augment", 1e-4, 1e-5, |x, s| {
            mind_reader_augment(x, s, x.device())
        });
    }

    #[test]
    fn indexed_draws_do_not_depend_on_the_batching() {
        let (shape, seed) = ([4, 3, 9, 11], 7);
        let x = tensor(unit_images(shape, 3), shape, &Device::Cpu);
        let aug = MindReaderAugment::default();
        let whole = aug.apply(&x, seed).unwrap().to_vec_f32().unwrap();
        let half = 3 * 9 * 11 * 2;
        let xv = x.to_vec_f32().unwrap();
        let second = tensor(xv[half..].to_vec(), [2, 3, 9, 11], &Device::Cpu);
        let tail = aug
            .apply_indexed(&second, seed, 2)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_eq!(
            &whole[half..],
            &tail[..],
            "images 2 and 3 drew other parameters in a batch of their own"
        );
    }

    #[test]
    fn to_tensor_and_to_pil_round_trip_8_bit_pixels() {
        let px: Vec<u8> = (0..2 * 5 * 3 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let planar = unit_planar(&px, [2, 5, 3]).unwrap();
        // Channel 1 of pixel (0, 1) of image 0 sits at plane 1, offset 1.
        assert_eq!(planar[5 * 3 + 1], px[3 + 1] as f32 / 255.0);
        assert_eq!(to_pil_u8(&planar, [2, 5, 3]).unwrap(), px);
        // Every level survives v/255·255 in f32 and the truncation.
        let levels: Vec<u8> = (0..=255).flat_map(|v| [v, v, v]).collect();
        assert_eq!(
            to_pil_u8(&unit_planar(&levels, [1, 1, 256]).unwrap(), [1, 1, 256]).unwrap(),
            levels
        );
        // ToPILImage truncates: 0.5·255 = 127.5 becomes 127.
        assert_eq!(
            to_pil_u8(&[0.5, 1.0, 0.0], [1, 1, 1]).unwrap(),
            vec![127, 255, 0]
        );
        assert!(unit_planar(&px, [2, 5, 4]).is_err());
        assert!(to_pil_u8(&planar, [1, 5, 3]).is_err());
    }

    #[test]
    fn random_hflip_is_seeded() {
        seeded(|x, s| random_hflip(x, 0.5, s));
    }

    #[test]
    fn wrong_shapes_and_parameter_counts_are_errors() {
        let x = tensor(vec![0.0; 12], [1, 3, 2, 2], &Device::Cpu);
        assert!(hflip(&x, &[true, false]).is_err());
        let gray = Tensor::from_vec(vec![0.0; 4], &[1, 1, 2, 2], &Device::Cpu).unwrap();
        assert!(random_hflip(&gray, 0.5, 0).is_err());
    }

    #[test]
    fn hflip_cuda_matches_cpu() {
        cuda_matches_cpu("hflip", 0.0, 0.0, |x, s| random_hflip(x, 0.5, s));
    }
}
