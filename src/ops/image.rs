//! Image preprocessing for CLIP: u8 `[B, H, W, 3]` → normalised f32 `[B, 3, N, N]`, as OpenAI's
//! `clip.load` preprocesses a PIL image:
//! `Resize(N, BICUBIC) → CenterCrop(N) → ToTensor() → Normalize(CLIP_MEAN, CLIP_STD)`.
//!
//! **Resize** is PIL's `Image.resize(…, BICUBIC)` (what torchvision's `Resize` calls on a PIL
//! image), reproduced integer for integer — not torchvision's tensor bicubic, which differs:
//! - the shorter side becomes N, the longer `⌊N·long/short⌋` (torchvision's size rule);
//! - separable cubic convolution with a = −0.5, `k(x) = (a+2)|x|³ − (a+3)|x|² + 1` on |x| < 1,
//!   `a(|x|³ − 5|x|² + 8|x| − 4)` on 1 ≤ |x| < 2; when shrinking by s > 1 the kernel is stretched
//!   to support 2s and its argument divided by s (PIL's antialiasing), weights renormalised to sum 1;
//! - output pixel `o` of a pass is centred at `(o + ½)·scale` in the input; taps `xmin..xmin+count`
//!   with `xmin = trunc(centre − support + ½)` clipped to the image (PIL's `precompute_coeffs`, in f64);
//! - weights become fixed point with 22 fractional bits (round half away from zero); each pass is
//!   `clamp((2²¹ + Σ pixel·weight) >> 22, 0, 255)`: the horizontal pass first, rounded to u8, then
//!   the vertical pass on that, rounded to u8 again.
//!
//! **CenterCrop**: offsets `round((side − N)/2)` with Python's round half to even. Only the
//! cropped output is computed (each output pixel depends only on its own taps, so this is exact).
//! **ToTensor/Normalize**: `(v/255 − mean[c]) / std[c]` in f32, per channel.
//!
//! The tap weights are computed once on the host (f64, as PIL does) and shared by both backends,
//! so the CUDA result is bit-identical to the CPU twin. Kernels (`kernels/image.cu`): the
//! horizontal pass writes a u8 `[B, rows, N, 3]` buffer for just the input rows the crop needs;
//! the vertical pass reads it and writes the normalised planar f32 output: one thread per output
//! element in each, reads ≤ ⌈2s⌉·2+1 taps.
//!
//! No backward: the input is u8 pixels.

use cudarc::driver::PushKernelArg;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{launch_1d, upload, Device, Storage, Tensor};

/// CLIP's per-channel normalisation, digits as published in OpenAI's `clip/clip.py`.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// PIL's fixed-point precision for 8-bit resampling (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// PIL's bicubic kernel, a = −0.5.
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// One resampling pass's taps: output `o` reads inputs `start[o] .. start[o] + count[o]` with the
/// fixed-point weights `weights[o·ksize ..]`.
#[derive(Clone, Debug, PartialEq)]
struct Taps {
    ksize: usize,
    start: Vec<i32>,
    count: Vec<i32>,
    weights: Vec<i32>,
}

impl Taps {
    /// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size → out_size` over the whole
    /// input, keeping outputs `first .. first + n` only.
    fn pil(in_size: usize, out_size: usize, first: usize, n: usize) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut t = Taps {
            ksize,
            start: Vec::with_capacity(n),
            count: Vec::with_capacity(n),
            weights: vec![0; n * ksize],
        };
        for (o, xx) in (first..first + n).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // `(int)` in C truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let ss = 1.0 / filterscale;
            let w: Vec<f64> = (0..xmax)
                .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = w.iter().sum();
            for (x, &wx) in w.iter().enumerate() {
                let k = if ww != 0.0 { wx / ww } else { wx };
                let fixed = k * (1u32 << PRECISION_BITS) as f64;
                t.weights[o * ksize + x] = if k < 0.0 {
                    (-0.5 + fixed) as i32
                } else {
                    (0.5 + fixed) as i32
                };
            }
            t.start.push(xmin as i32);
            t.count.push(xmax.max(0) as i32);
        }
        t
    }
}

/// PIL's `clip8`: the fixed-point sum (already holding the ½ rounding term) back to u8.
#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Python's `round` (half to even) of `x / 2` for a non-negative integer `x`.
fn half_round_even(x: usize) -> usize {
    let q = x / 2;
    if x % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// The size after torchvision's `Resize(n)`: shorter side n, longer `int(n·long/short)`.
pub fn resized_size(h: usize, w: usize, n: usize) -> (usize, usize) {
    let long_of = |short: usize, long: usize| (n as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (long_of(w, h), n)
    } else {
        (n, long_of(h, w))
    }
}

/// Everything both backends need: sizes and the two passes' taps, rows relative to `row0`.
struct Plan {
    batch: usize,
    h: usize,
    w: usize,
    n: usize,
    /// The input rows the crop needs: `row0 .. row0 + rows`.
    row0: usize,
    rows: usize,
    horizontal: Taps,
    vertical: Taps,
}

impl Plan {
    fn new(shape: [usize; 4], n: usize, pixels: usize) -> Result<Plan> {
        let [batch, h, w, c] = shape;
        if c != 3 || h == 0 || w == 0 {
            return Err(Error::shape(
                "clip_preprocess",
                format!("images must be u8 [B, H, W, 3] with H, W ≥ 1, got {shape:?}"),
            ));
        }
        if pixels != batch * h * w * 3 {
            return Err(Error::shape(
                "clip_preprocess",
                format!("{pixels} bytes for images of shape {shape:?}"),
            ));
        }
        if n == 0 {
            return Err(Error::Invalid(
                "clip_preprocess: output size must be at least 1".into(),
            ));
        }
        let (rh, rw) = resized_size(h, w, n);
        let (top, left) = (half_round_even(rh - n), half_round_even(rw - n));
        let horizontal = Taps::pil(w, rw, left, n);
        let mut vertical = Taps::pil(h, rh, top, n);
        let row0 = *vertical.start.iter().min().unwrap_or(&0) as usize;
        let row_end = vertical
            .start
            .iter()
            .zip(&vertical.count)
            .map(|(s, c)| (s + c) as usize)
            .max()
            .unwrap_or(row0);
        for s in vertical.start.iter_mut() {
            *s -= row0 as i32;
        }
        Ok(Plan {
            batch,
            h,
            w,
            n,
            row0,
            rows: row_end - row0,
            horizontal,
            vertical,
        })
    }
}

/// The CPU twin: PIL's two u8 passes over the cropped region, then ToTensor and Normalize.
pub mod cpu {
    use super::*;

    pub(super) fn preprocess(images: &[u8], p: &Plan) -> Vec<f32> {
        let (n, w, rows) = (p.n, p.w, p.rows);
        let mut out = vec![0f32; p.batch * 3 * n * n];
        out.par_chunks_mut(3 * n * n)
            .enumerate()
            .for_each(|(b, out)| {
                let img = &images[b * p.h * w * 3..(b + 1) * p.h * w * 3];
                // Horizontal pass: [rows, n, 3] u8.
                let mut tmp = vec![0u8; rows * n * 3];
                for r in 0..rows {
                    let src = &img[(p.row0 + r) * w * 3..][..w * 3];
                    for j in 0..n {
                        let (s, cnt) = (
                            p.horizontal.start[j] as usize,
                            p.horizontal.count[j] as usize,
                        );
                        let k = &p.horizontal.weights[j * p.horizontal.ksize..][..cnt];
                        for c in 0..3 {
                            let mut ss = 1i32 << (PRECISION_BITS - 1);
                            for (x, &kx) in k.iter().enumerate() {
                                ss += src[(s + x) * 3 + c] as i32 * kx;
                            }
                            tmp[(r * n + j) * 3 + c] = clip8(ss);
                        }
                    }
                }
                // Vertical pass, then scale and normalise into planar [3, n, n].
                for i in 0..n {
                    let (s, cnt) = (p.vertical.start[i] as usize, p.vertical.count[i] as usize);
                    let k = &p.vertical.weights[i * p.vertical.ksize..][..cnt];
                    for j in 0..n {
                        for c in 0..3 {
                            let mut ss = 1i32 << (PRECISION_BITS - 1);
                            for (y, &ky) in k.iter().enumerate() {
                                ss += tmp[((s + y) * n + j) * 3 + c] as i32 * ky;
                            }
                            out[(c * n + i) * n + j] = normalize(clip8(ss), c);
                        }
                    }
                }
            });
        out
    }

    /// ToTensor then Normalize, in f32 as torchvision does.
    #[inline]
    pub fn normalize(v: u8, c: usize) -> f32 {
        (v as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
    }
}

/// CLIP's preprocessing of u8 RGB images `[B, H, W, 3]` (row-major, as the dataset stores
/// `/images`) to normalised f32 `[B, 3, size, size]` on `device`. CLIP ViT-B/32 uses size 224.
pub fn clip_preprocess(
    images: &[u8],
    shape: [usize; 4],
    size: usize,
    device: &Device,
) -> Result<Tensor> {
    let p = Plan::new(shape, size, images.len())?;
    let n = p.n;
    let out_shape = [p.batch, 3, n, n];
    match device {
        Device::Cpu => Tensor::from_vec(cpu::preprocess(images, &p), &out_shape, device),
        Device::Cuda(gpu) => {
            let img = upload(gpu, images)?;
            let (hs, hc, hw) = (
                upload(gpu, &p.horizontal.start)?,
                upload(gpu, &p.horizontal.count)?,
                upload(gpu, &p.horizontal.weights)?,
            );
            let (vs, vc, vw) = (
                upload(gpu, &p.vertical.start)?,
                upload(gpu, &p.vertical.count)?,
                upload(gpu, &p.vertical.weights)?,
            );
            let tmp_len = p.batch * p.rows * n * 3;
            let mut tmp = gpu.alloc::<u8>(tmp_len)?;
            let (b, h, w, row0, rows, nn) = (
                p.batch as u32,
                p.h as u32,
                p.w as u32,
                p.row0 as u32,
                p.rows as u32,
                n as u32,
            );
            let (hk, vk) = (p.horizontal.ksize as u32, p.vertical.ksize as u32);
            let f = gpu.function("image", "resize_h_u8")?;
            // SAFETY: writes B·rows·n·3 bytes of tmp; reads image rows row0..row0+rows < H of each
            // of the B images at columns start[j]..start[j]+count[j] ≤ W, and n·ksize weights.
            unsafe {
                gpu.stream
                    .launch_builder(&f)
                    .arg(&img)
                    .arg(&mut tmp)
                    .arg(&hs)
                    .arg(&hc)
                    .arg(&hw)
                    .arg(&b)
                    .arg(&h)
                    .arg(&w)
                    .arg(&row0)
                    .arg(&rows)
                    .arg(&nn)
                    .arg(&hk)
                    .launch(launch_1d(tmp_len))
            }
            .map_err(|e| Error::cuda("resize_h_u8", e))?;
            let out_len = p.batch * 3 * n * n;
            let mut out = gpu.alloc::<f32>(out_len)?;
            let mean = CLIP_MEAN;
            let std = CLIP_STD;
            let f = gpu.function("image", "resize_v_normalize_f32")?;
            // SAFETY: writes B·3·n·n floats of out; reads tmp rows start[i]..start[i]+count[i] ≤ rows
            // of each of the B blocks of [rows, n, 3], and n·ksize weights.
            unsafe {
                gpu.stream
                    .launch_builder(&f)
                    .arg(&tmp)
                    .arg(&mut out)
                    .arg(&vs)
                    .arg(&vc)
                    .arg(&vw)
                    .arg(&b)
                    .arg(&rows)
                    .arg(&nn)
                    .arg(&vk)
                    .arg(&mean[0])
                    .arg(&mean[1])
                    .arg(&mean[2])
                    .arg(&std[0])
                    .arg(&std[1])
                    .arg(&std[2])
                    .launch(launch_1d(out_len))
            }
            .map_err(|e| Error::cuda("resize_v_normalize_f32", e))?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(out),
                &out_shape,
                device,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu};
    use rand::{Rng, SeedableRng};

    fn random_images(shape: [usize; 4], seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..shape.iter().product::<usize>())
            .map(|_| rng.gen())
            .collect()
    }

    #[test]
    fn sizes_and_crop_offsets_follow_torchvision() {
        assert_eq!(resized_size(37, 53, 224), (224, 320));
        assert_eq!(resized_size(300, 200, 224), (336, 224));
        assert_eq!(resized_size(64, 64, 224), (224, 224));
        // Python: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2.
        assert_eq!([1, 3, 5, 4].map(half_round_even), [0, 2, 2, 2]);
    }

    #[test]
    fn same_size_is_the_identity_resample() {
        let shape = [1, 6, 6, 3];
        let img = random_images(shape, 1);
        let y = clip_preprocess(&img, shape, 6, &Device::Cpu)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        for c in 0..3 {
            for i in 0..36 {
                assert_eq!(y[c * 36 + i], cpu::normalize(img[i * 3 + c], c));
            }
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (inn, out) in [(37, 224), (317, 32), (5, 8), (224, 224), (1000, 7)] {
            let t = Taps::pil(inn, out, 0, out);
            for o in 0..out {
                let s: i32 = t.weights[o * t.ksize..][..t.count[o] as usize].iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.ksize as i32,
                    "{inn}→{out} output {o}: {s}"
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(clip_preprocess(&[0; 12], [1, 2, 2, 3], 4, &Device::Cpu).is_ok());
        assert!(clip_preprocess(&[0; 11], [1, 2, 2, 3], 4, &Device::Cpu).is_err());
        assert!(clip_preprocess(&[0; 16], [1, 2, 2, 4], 4, &Device::Cpu).is_err());
        assert!(clip_preprocess(&[0; 12], [1, 2, 2, 3], 0, &Device::Cpu).is_err());
    }

    #[test]
    fn clip_preprocess_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for (shape, n) in [
            ([1, 37, 53, 3], 224),
            ([3, 64, 64, 3], 224),
            ([2, 300, 200, 3], 224),
            ([1, 251, 317, 3], 32),
            ([2, 5, 3, 3], 8),
            ([1, 1, 1, 3], 1),
        ] {
            let img = random_images(shape, n as u64);
            let want = clip_preprocess(&img, shape, n, &Device::Cpu)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let got = clip_preprocess(&img, shape, n, &gpu)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            // Integer passes on shared weights, the same f32 normalisation: identical up to rounding of the division.
            assert_close(&got, &want, 1e-6, 1e-6, &format!("{shape:?} → {n}"));
        }
    }
}
