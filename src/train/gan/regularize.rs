//! R1 and path-length regularisation, whose parameter gradients are gradients of a gradient.
//!
//! The tape has first-order backward only, so the second-order term is a finite-difference
//! Hessian–vector product. Both penalties have the form `P(θ) = φ(∇ᵤ F(u, θ))` for an input `u`
//! (real images for R1, the per-layer latents for path length), so
//!
//! ```text
//! dP/dθ = (∂g/∂θ)ᵀ v = ∂²F/∂θ∂u · v ≈ [∇θ F(u + εv) − ∇θ F(u − εv)] / 2ε,   v = ∂φ/∂g
//! ```
//!
//! two extra first-order passes (central difference, error O(ε²) on the smooth parts). ε is set
//! relative to v's scale. Every number here, ε included, is computed on the device: a
//! regularised step waits for the GPU no more often than a plain one (the penalties are read
//! with the step's other loss terms). The test checks the result against the exact double backward of the
//! reference (a fixture) and against finite differences of the penalty itself.

use crate::autograd::{Gradients, Tape};
use crate::error::{Error, Result};
use crate::models::lafite::{Discriminator, Generator};
use crate::nn::{NoiseMode, ParamStore};
use crate::ops::bias_act::pattern;
use crate::ops::channels::broadcast_mul;
use crate::ops::elementwise as ew;
use crate::ops::reduce::{self, sum_all};
use crate::tensor::Tensor;

use super::loss::StyleMix;

/// The input perturbation relative to v's root mean square: small enough that the smooth
/// nonlinearities (minibatch stddev, demodulation) stay quadratic over it, large enough that
/// f32 rounding in the two gradients does not dominate their difference. Checked against the
/// reference's exact double backward (tests/gan.rs); path length's latents need the larger step.
const R1_STEP: f32 = 1e-3;
const PL_STEP: f32 = 1e-2;

/// Adds `scale · (plus − minus)` to every parameter's accumulated gradient (`scale` one number
/// on the device).
fn accumulate_difference(
    params: &mut ParamStore,
    plus: &Gradients,
    minus: &Gradients,
    scale: &Tensor,
) -> Result<()> {
    let mut off = Tape::inference();
    for p in params.iter_mut() {
        let (Some(a), Some(b)) = (plus.get(&p.value), minus.get(&p.value)) else {
            continue;
        };
        let d = ew::sub(&mut off, a, b)?;
        let d = ew::scale_by(&mut off, &d, scale)?;
        p.grad = Some(match p.grad.take() {
            Some(prev) => prev.accumulate(&d)?,
            None => d,
        });
    }
    Ok(())
}

/// `Σ t²`, one number on t's device.
fn sum_of_squares(t: &Tensor) -> Result<Tensor> {
    let mut off = Tape::inference();
    let sq = ew::square(&mut off, t)?;
    sum_all(&mut off, &sq)
}

/// `√m` and `1/√m` of a mean square m (one number on the device), m held above the smallest
/// normal f32: an all-zero v then steps by 0 and its difference is 0, as no regularisation.
fn root_and_inverse(mean_square: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut off = Tape::inference();
    let m = ew::clamp(&mut off, mean_square, f32::MIN_POSITIVE, f32::INFINITY)?;
    Ok((ew::sqrt(&mut off, &m)?, ew::rsqrt(&mut off, &m)?))
}

/// What R1 measured, each one number on the device.
pub struct R1 {
    /// mean over the batch of ‖∇ₓ Σ logits‖² per image (`Loss/r1_penalty`).
    pub penalty: Tensor,
    /// `γ/2 · penalty` (`Loss/D/reg`, before the gain).
    pub loss: Tensor,
}

/// R1 (loss.py 686–700): `gain · mean_i γ/2 ‖∇_{x_i} Σ_j D(x, c)_j‖²` on real images, with the
/// reference's batch sum (the logit's batch-dot term couples the rows). Adds its gradient to
/// D's accumulated gradients.
pub fn r1(
    d: &Discriminator,
    params: &mut ParamStore,
    real: &Tensor,
    fts: &Tensor,
    gamma: f32,
    gain: f32,
) -> Result<R1> {
    let n = real.shape()[0];
    let logit_sum = |tape: &mut Tape, x: &Tensor| -> Result<Tensor> {
        let out = d.forward(tape, x, fts)?;
        sum_all(tape, &out.logits)
    };
    let x = ew::scale(&mut Tape::inference(), real, 1.0)?;
    let mut tape = Tape::new();
    tape.watch(&x);
    let (f, pat) = pattern::record(|| logit_sum(&mut tape, &x));
    let grads = tape.backward(&f?)?;
    let g = grads
        .get(&x)
        .cloned()
        .ok_or_else(|| Error::Invalid("R1: no gradient reached the images".into()))?;
    let mut off = Tape::inference();
    let sq = sum_of_squares(&g)?;
    let penalty = ew::scale(&mut off, &sq, 1.0 / n as f32)?;
    let out = R1 {
        loss: ew::scale(&mut off, &penalty, gamma / 2.0)?,
        penalty,
    };
    // ε = R1_STEP / rms(g).
    let mean_square = ew::scale(&mut off, &sq, 1.0 / g.numel() as f32)?;
    let (rms, inv_rms) = root_and_inverse(&mean_square)?;
    let pass = |sign: f32| -> Result<Gradients> {
        let mut off = Tape::inference();
        let eps = ew::scale(&mut off, &inv_rms, sign * R1_STEP)?;
        let step = ew::scale_by(&mut off, &g, &eps)?;
        let xs = ew::add(&mut off, real, &step)?;
        let mut tape = Tape::new();
        params.watch_all(&mut tape);
        let f = pattern::replay(&pat, || logit_sum(&mut tape, &xs))?;
        tape.backward(&f)
    };
    let (plus, minus) = (pass(1.0)?, pass(-1.0)?);
    // d/dθ of gain·γ/(2n)·‖g‖² is gain·γ/n · (∂g/∂θ)ᵀ g; over the difference's 2ε.
    let scale = ew::scale(&mut off, &rms, gain * gamma / n as f32 / (2.0 * R1_STEP))?;
    accumulate_difference(params, &plus, &minus, &scale)?;
    Ok(out)
}

/// What path length measured, each number on the device.
pub struct PathLength {
    /// mean of `(‖J_wᵀ y‖ − a)²` (`Loss/pl_penalty`).
    pub penalty: Tensor,
    /// the mean length ‖J_wᵀ y‖ this batch.
    pub length: Tensor,
    /// the updated running mean a (the reference's `pl_mean`).
    pub mean: Tensor,
    /// the mapped w of z, for `w_avg`.
    pub w: Tensor,
}

/// Path length's `y = pl_noise/√(H·W)` for images of side `r`, from the host's `randn` draw.
pub fn path_length_y(pl_noise: &[f32], r: usize) -> Vec<f32> {
    pl_noise.iter().map(|v| v / r as f32).collect()
}

/// Path-length regularisation (loss.py 622–646) on a batch already shrunk: lengths
/// `√(mean_k ‖∂(Σ G(w)·y)/∂w_k‖²)` per image with `y = pl_noise/√(H·W)`, the running mean
/// updated by `decay` (and differentiated through, as the reference's graph is), penalty
/// `gain · weight · mean (len − a)²`. Adds its gradient to G's accumulated gradients (mapping
/// included: the latents are the mapping's outputs).
#[allow(clippy::too_many_arguments)]
pub fn path_length(
    g: &Generator,
    params: &mut ParamStore,
    z: &Tensor,
    fts: &Tensor,
    mixing: Option<&StyleMix>,
    noise: NoiseMode,
    y: &Tensor,
    pl_mean: &Tensor,
    weight: f32,
    decay: f32,
    gain: f32,
) -> Result<PathLength> {
    let num_ws = g.config.num_ws();
    let (b, w_dim) = (z.shape()[0], g.config.w_dim);
    let r = g.config.img_resolution;
    let device = z.device().clone();
    if y.shape() != [b, g.config.img_channels, r, r] || pl_mean.numel() != 1 {
        return Err(Error::shape(
            "path_length",
            format!(
                "y {:?} for {b} images of {r}², pl_mean {:?}",
                y.shape(),
                pl_mean.shape()
            ),
        ));
    }
    // The latents as the mapping makes them (recorded on `tape` when it watches G).
    let latents = |tape: &mut Tape| -> Result<(Tensor, Vec<Tensor>)> {
        let w = g.mapping.forward(tape, z, 1.0)?;
        let ws = StyleMix::latents(mixing, tape, g, &w)?;
        Ok((w, ws))
    };
    let noise_sum = |tape: &mut Tape, ws: &[Tensor]| -> Result<Tensor> {
        let img = g.synthesis(tape, ws, fts, noise)?;
        let p = ew::mul(tape, &img, &y)?;
        sum_all(tape, &p)
    };

    // Pass 0: ∂S/∂w_k with each layer's latent its own leaf.
    let mut tape = Tape::new();
    let (base, pat) = pattern::record(|| -> Result<_> {
        let (w, base) = latents(&mut Tape::inference())?;
        let leaves: Vec<Tensor> = base
            .iter()
            .map(|w| ew::scale(&mut Tape::inference(), w, 1.0))
            .collect::<Result<_>>()?;
        for l in &leaves {
            tape.watch(l);
        }
        let s = noise_sum(&mut tape, &leaves)?;
        Ok((w, leaves, s))
    });
    let (w, leaves, s) = base?;
    let grads = tape.backward(&s)?;
    let zeros = Tensor::zeros(&[b, w_dim], &device)?;
    let gk: Vec<&Tensor> = leaves
        .iter()
        .map(|l| grads.get(l).unwrap_or(&zeros))
        .collect();
    // Everything below is a few numbers per image, computed on the device.
    let mut off = Tape::inference();
    let off = &mut off;
    // len_j = √(mean_k ‖g_jk‖²).
    let mut ss = Tensor::zeros(&[b], &device)?;
    for g in &gk {
        let sq = ew::square(off, g)?;
        let row = reduce::sum(off, &sq, 1)?;
        ss = ew::add(off, &ss, &row)?;
    }
    let ms = ew::scale(off, &ss, 1.0 / num_ws as f32)?;
    let lengths = ew::sqrt(off, &ms)?;
    let total_len = sum_all(off, &lengths)?;
    let mean_len = ew::scale(off, &total_len, 1.0 / b as f32)?;
    // a = lerp(pl_mean, mean len, decay).
    let pl_mean = pl_mean.reshaped(mean_len.shape())?;
    let a = ew::sub(off, &mean_len, &pl_mean)?;
    let a = ew::scale(off, &a, decay)?;
    let a = ew::add(off, &a, &pl_mean)?;
    let ones = Tensor::full(1.0, &[b], &device)?;
    let a_each = ew::scale_by(off, &ones, &a)?;
    let dev = ew::sub(off, &lengths, &a_each)?;
    let penalty = ew::scale(off, &sum_of_squares(&dev)?, 1.0 / b as f32)?;
    let out = PathLength {
        penalty,
        length: mean_len,
        mean: a,
        w,
    };
    // ∂L/∂len_j for L = gain·weight·mean_i (len_i − a)², a = lerp(pl_mean, mean len, decay):
    // coef·(dev_j − decay/b·Σ dev).
    let coef = gain * weight * 2.0 / b as f32;
    let total_dev = sum_all(off, &dev)?;
    let shared = ew::scale(off, &total_dev, decay / b as f32)?;
    let shared_each = ew::scale_by(off, &ones, &shared)?;
    let dlen = ew::sub(off, &dev, &shared_each)?;
    let dlen = ew::scale(off, &dlen, coef)?;
    // v_jk = ∂L/∂g_jk = ∂L/∂len_j · g_jk / (num_ws · len_j); a zero length has zero g.
    let (_, inv_len) = root_and_inverse(&ms)?;
    let per_image = ew::mul(off, &dlen, &inv_len)?;
    let per_image = ew::scale(off, &per_image, 1.0 / num_ws as f32)?;
    let v: Vec<Tensor> = gk
        .iter()
        .map(|g| broadcast_mul(off, g, &per_image))
        .collect::<Result<_>>()?;
    let mut vv = Tensor::zeros(&[], &device)?;
    for vk in &v {
        let sq = sum_of_squares(vk)?;
        vv = ew::add(off, &vv, &sq)?;
    }
    // ε = PL_STEP / rms(v).
    let count = (num_ws * b * w_dim) as f32;
    let mean_square = ew::scale(off, &vv, 1.0 / count)?;
    let (rms, inv_rms) = root_and_inverse(&mean_square)?;
    let pass = |sign: f32| -> Result<Gradients> {
        let mut tape = Tape::new();
        params.watch_all(&mut tape);
        let s = pattern::replay(&pat, || -> Result<Tensor> {
            let (_, ws) = latents(&mut tape)?;
            let mut off = Tape::inference();
            let eps = ew::scale(&mut off, &inv_rms, sign * PL_STEP)?;
            let shifted: Vec<Tensor> = ws
                .iter()
                .zip(&v)
                .map(|(w, vk)| {
                    let step = ew::scale_by(&mut off, vk, &eps)?;
                    ew::add(&mut tape, w, &step)
                })
                .collect::<Result<_>>()?;
            noise_sum(&mut tape, &shifted)
        })?;
        tape.backward(&s)
    };
    let (plus, minus) = (pass(1.0)?, pass(-1.0)?);
    let scale = ew::scale(off, &rms, 1.0 / (2.0 * PL_STEP))?;
    accumulate_difference(params, &plus, &minus, &scale)?;
    Ok(out)
}
