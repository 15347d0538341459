//! The field's reconstruction metrics (the low- and high-level columns of the MindEye and
//! Brain-Diffuser tables), computed in f64 on host arrays.
//!
//! - **Pixel correlation**: Pearson r between a reconstruction and its seen image over every
//!   pixel and channel, averaged over pairs.
//! - **SSIM** exactly as scikit-image's `structural_similarity` computes it: local means,
//!   variances and covariance under a Gaussian (σ, truncated at 3.5σ) or uniform window with
//!   scipy's `reflect` boundary, the SSIM map cropped by the window's half width, averaged per
//!   channel. The field calls it with `gaussian_weights=True, sigma=1.5,
//!   use_sample_covariance=False` ([`SsimOptions::field`]).
//! - **2-way identification**: for each reconstruction, the fraction of other stimuli whose
//!   features correlate less with it than its own stimulus' features do (chance 0.5); on pixels,
//!   or on any feature space (CLIP image embeddings).

/// One image: `[h, w, c]` row-major (channels last, as scikit-image takes them), values in any
/// range (say which with `data_range`).
#[derive(Clone, Copy)]
pub struct ImageRef<'a> {
    pub data: &'a [f32],
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

/// How SSIM windows its statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SsimOptions {
    /// Gaussian window of this σ; `None`: a uniform window of `win_size`.
    pub gaussian_sigma: Option<f64>,
    /// The uniform window's side (scikit-image's default 7).
    pub win_size: usize,
    /// Divide the local (co)variances by N − 1 instead of N.
    pub use_sample_covariance: bool,
    /// The value range of the images (1 for [0, 1], 255 for bytes, 2 for [−1, 1]).
    pub data_range: f64,
}

impl SsimOptions {
    /// What MindEye and Brain-Diffuser pass: Gaussian σ 1.5, population covariance.
    pub fn field(data_range: f64) -> SsimOptions {
        SsimOptions {
            gaussian_sigma: Some(1.5),
            win_size: 7,
            use_sample_covariance: false,
            data_range,
        }
    }

    /// scikit-image's defaults: a 7×7 uniform window, sample covariance.
    pub fn skimage_default(data_range: f64) -> SsimOptions {
        SsimOptions {
            gaussian_sigma: None,
            win_size: 7,
            use_sample_covariance: true,
            data_range,
        }
    }

    /// The 1-D window weights (normalised) and their count.
    fn window(&self) -> Vec<f64> {
        match self.gaussian_sigma {
            Some(sigma) => {
                // scipy.ndimage.gaussian_filter: radius = int(truncate·σ + 0.5), truncate 4 by
                // default but scikit-image passes 3.5
                let radius = (3.5 * sigma + 0.5) as i64;
                let w: Vec<f64> = (-radius..=radius)
                    .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
                    .collect();
                let s: f64 = w.iter().sum();
                w.into_iter().map(|v| v / s).collect()
            }
            None => vec![1.0 / self.win_size as f64; self.win_size],
        }
    }
}

/// scipy's `reflect` boundary (d c b a | a b c d | d c b a) for index `i` of a length-`n` axis.
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// A separable filter of one `[h, w]` plane with `k` along both axes (`origin` at the centre).
fn filter2(plane: &[f64], h: usize, w: usize, k: &[f64]) -> Vec<f64> {
    let r = (k.len() / 2) as i64;
    // one 1-D pass: element (y, x) from its neighbours along x (`across`) or along y
    let pass = |src: &[f64], across: bool| -> Vec<f64> {
        (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                k.iter()
                    .enumerate()
                    .map(|(j, &kj)| {
                        let d = j as i64 - r;
                        let at = if across {
                            y * w + reflect(x as i64 + d, w)
                        } else {
                            reflect(y as i64 + d, h) * w + x
                        };
                        kj * src[at]
                    })
                    .sum()
            })
            .collect()
    };
    pass(&pass(plane, true), false)
}

/// Mean SSIM of two images of one shape (averaged over channels), as scikit-image computes it.
pub fn ssim(a: ImageRef, b: ImageRef, opt: &SsimOptions) -> Result<f64, String> {
    let (h, w, c) = (a.height, a.width, a.channels);
    if (b.height, b.width, b.channels) != (h, w, c) {
        return Err(format!(
            "ssim: images differ in shape ({h}×{w}×{c} and {}×{}×{})",
            b.height, b.width, b.channels
        ));
    }
    if a.data.len() != h * w * c || b.data.len() != h * w * c {
        return Err("ssim: data does not match the stated shape".into());
    }
    let k = opt.window();
    let win = match opt.gaussian_sigma {
        Some(_) => k.len(),
        None => opt.win_size,
    };
    if win > h || win > w {
        return Err(format!(
            "ssim: a {win}-pixel window does not fit a {h}×{w} image (scikit-image refuses it too)"
        ));
    }
    let np = (win * win) as f64;
    let cov_norm = if opt.use_sample_covariance {
        np / (np - 1.0)
    } else {
        1.0
    };
    let (c1, c2) = (
        (0.01 * opt.data_range).powi(2),
        (0.03 * opt.data_range).powi(2),
    );
    let pad = (win - 1) / 2;
    let mut total = 0.0;
    for ch in 0..c {
        let plane = |img: &ImageRef| -> Vec<f64> {
            (0..h * w).map(|i| img.data[i * c + ch] as f64).collect()
        };
        let (x, y) = (plane(&a), plane(&b));
        let prod =
            |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(u, v)| u * v).collect() };
        let ux = filter2(&x, h, w, &k);
        let uy = filter2(&y, h, w, &k);
        let uxx = filter2(&prod(&x, &x), h, w, &k);
        let uyy = filter2(&prod(&y, &y), h, w, &k);
        let uxy = filter2(&prod(&x, &y), h, w, &k);
        let mut sum = 0.0;
        let mut count = 0usize;
        for yy in pad..h - pad {
            for xx in pad..w - pad {
                let i = yy * w + xx;
                let vx = cov_norm * (uxx[i] - ux[i] * ux[i]);
                let vy = cov_norm * (uyy[i] - uy[i] * uy[i]);
                let vxy = cov_norm * (uxy[i] - ux[i] * uy[i]);
                let num = (2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2);
                let den = (ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2);
                sum += num / den;
                count += 1;
            }
        }
        total += sum / count as f64;
    }
    Ok(total / c as f64)
}

/// Pearson correlation of two equally long vectors (0 when either is constant).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Mean pixel correlation of paired rows (`recon[i]` with `seen[i]`, each `dim` long).
pub fn pixel_correlation(recon: &[f32], seen: &[f32], dim: usize) -> f64 {
    let n = recon.len() / dim;
    (0..n)
        .map(|i| {
            pearson(
                &recon[i * dim..(i + 1) * dim],
                &seen[i * dim..(i + 1) * dim],
            )
        })
        .sum::<f64>()
        / n.max(1) as f64
}

/// 2-way identification: for each i, the fraction of j ≠ i with
/// corr(recon_i, true_i) > corr(recon_i, true_j); averaged over i. Chance is 0.5.
pub fn two_way_identification(recon: &[f32], truth: &[f32], dim: usize) -> f64 {
    let n = recon.len() / dim;
    if n < 2 {
        return f64::NAN;
    }
    fn row(m: &[f32], i: usize, dim: usize) -> &[f32] {
        &m[i * dim..(i + 1) * dim]
    }
    let mut total = 0.0;
    for i in 0..n {
        let own = pearson(row(recon, i, dim), row(truth, i, dim));
        let wins = (0..n)
            .filter(|&j| j != i && pearson(row(recon, i, dim), row(truth, j, dim)) < own)
            .count();
        total += wins as f64 / (n - 1) as f64;
    }
    total / n as f64
}

/// Box-averages `[n, h, w, c]` images down by an integer `factor` per side (the seen image to a
/// small generator's resolution).
pub fn box_downsample(x: &[f32], [n, h, w, c]: [usize; 4], factor: usize) -> Vec<f32> {
    let (oh, ow) = (h / factor, w / factor);
    let norm = 1.0 / (factor * factor) as f32;
    let mut out = vec![0.0; n * oh * ow * c];
    for i in 0..n {
        for y in 0..oh * factor {
            for x_ in 0..ow * factor {
                for ch in 0..c {
                    out[((i * oh + y / factor) * ow + x_ / factor) * c + ch] +=
                        norm * x[((i * h + y) * w + x_) * c + ch];
                }
            }
        }
    }
    out
}

/// The low-level metrics of `n` reconstruction/seen pairs, `[n, h, w, c]` in [0, 1].
#[derive(Clone, Copy, Debug)]
pub struct PixelMetrics {
    pub pixel_correlation: f64,
    pub ssim: f64,
    /// 2-way identification on raw pixels (chance 0.5).
    pub two_way_pixels: f64,
}

pub fn pixel_metrics(
    recon: &[f32],
    seen: &[f32],
    [n, h, w, c]: [usize; 4],
) -> Result<PixelMetrics, String> {
    let dim = h * w * c;
    if recon.len() != n * dim || seen.len() != n * dim {
        return Err(format!(
            "pixel metrics: {} and {} values for {n} images of {h}×{w}×{c}",
            recon.len(),
            seen.len()
        ));
    }
    let opt = SsimOptions::field(1.0);
    let mut ssim_sum = 0.0;
    for i in 0..n {
        let [a, b] = [recon, seen].map(|d| ImageRef {
            data: &d[i * dim..(i + 1) * dim],
            height: h,
            width: w,
            channels: c,
        });
        ssim_sum += ssim(a, b, &opt)?;
    }
    Ok(PixelMetrics {
        pixel_correlation: pixel_correlation(recon, seen, dim),
        ssim: ssim_sum / n.max(1) as f64,
        two_way_pixels: two_way_identification(recon, seen, dim),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_is_scipys_half_sample_symmetric_boundary() {
        let idx: Vec<usize> = (-4..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]);
    }

    #[test]
    fn identical_images_have_ssim_one_and_correlation_one() {
        let data: Vec<f32> = (0..12 * 11 * 3)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        let img = ImageRef {
            data: &data,
            height: 12,
            width: 11,
            channels: 3,
        };
        for opt in [SsimOptions::field(1.0), SsimOptions::skimage_default(1.0)] {
            assert!((ssim(img, img, &opt).unwrap() - 1.0).abs() < 1e-12);
        }
        assert!((pixel_correlation(&data, &data, data.len()) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn box_downsample_averages_blocks() {
        // one 4×2 single-channel image, factor 2 → 2×1
        let x = [0.0, 2.0, 4.0, 6.0, 1.0, 1.0, 3.0, 5.0];
        assert_eq!(box_downsample(&x, [1, 4, 2, 1], 2), vec![3.0, 2.5]);
    }

    #[test]
    fn two_way_identification_by_hand() {
        // recon 0 matches truth 0; recon 1 correlates better with truth 0 than with truth 1;
        // recon 2 matches truth 2.
        let truth = [1.0, 2.0, 3.0, 3.0, 1.0, 2.0, 2.0, 3.0, 1.0];
        let recon = [1.0, 2.0, 3.1, 1.0, 2.0, 3.0, 2.0, 3.0, 1.0];
        // recon0: own r≈1 beats r(truth1) and r(truth2): 2/2; recon1: own r(1,2,3 vs 3,1,2) = −0.5,
        // r with truth0 = 1, with truth2 = −0.5 (a tie is not a win): 0/2; recon2: 2/2
        let v = two_way_identification(&recon, &truth, 3);
        assert!((v - 2.0 / 3.0).abs() < 1e-12, "{v}");
    }
}

#[cfg(test)]
mod skimage_parity {
    use super::*;

    fn image<'a>(data: &'a [f32], shape: &[usize]) -> ImageRef<'a> {
        ImageRef {
            data,
            height: shape[0],
            width: shape[1],
            channels: shape[2],
        }
    }

    /// tests/fixtures/ssim.json, made by scripts/make_ssim_fixture.py with scikit-image 0.24.
    #[test]
    fn ssim_matches_scikit_image() {
        let path = crate::testing::fixtures_dir().join("ssim.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut checked = 0;
        for img in v["images"].as_array().unwrap() {
            let shape: Vec<usize> = serde_json::from_value(img["shape"].clone()).unwrap();
            let read = |k: &str| -> Vec<f32> { serde_json::from_value(img[k].clone()).unwrap() };
            let (a, b) = (read("a"), read("b"));
            for (key, want) in img["ssim"].as_object().unwrap() {
                let (name, range) = key.split_once('/').unwrap();
                let range: f64 = range.parse().unwrap();
                let opt = match name {
                    "field" => SsimOptions::field(range),
                    _ => SsimOptions::skimage_default(range),
                };
                let got = ssim(image(&a, &shape), image(&b, &shape), &opt).unwrap();
                let want = want.as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-9,
                    "{shape:?} {key}: {got} vs scikit-image {want}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 12);
    }
}
