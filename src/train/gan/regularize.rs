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
//! relative to v's scale. The test checks the result against the exact double backward of the
//! reference (a fixture) and against finite differences of the penalty itself.

use crate::autograd::{Gradients, Tape};
use crate::error::{Error, Result};
use crate::models::lafite::{Discriminator, Generator};
use crate::nn::{NoiseMode, ParamStore};
use crate::ops::bias_act::pattern;
use crate::ops::elementwise as ew;
use crate::ops::reduce::sum_all;
use crate::tensor::Tensor;

use super::loss::Mixing;

/// The input perturbation relative to v's root mean square: small enough that the smooth
/// nonlinearities (minibatch stddev, demodulation) stay quadratic over it, large enough that
/// f32 rounding in the two gradients does not dominate their difference. Checked against the
/// reference's exact double backward (tests/gan.rs); path length's latents need the larger step.
const R1_STEP: f32 = 1e-3;
const PL_STEP: f32 = 1e-2;

/// Adds `scale · (plus − minus)` to every parameter's accumulated gradient.
fn accumulate_difference(
    params: &mut ParamStore,
    plus: &Gradients,
    minus: &Gradients,
    scale: f32,
) -> Result<()> {
    let mut off = Tape::inference();
    for p in params.iter_mut() {
        let (Some(a), Some(b)) = (plus.get(&p.value), minus.get(&p.value)) else {
            continue;
        };
        let d = ew::sub(&mut off, a, b)?;
        let d = ew::scale(&mut off, &d, scale)?;
        p.grad = Some(match p.grad.take() {
            Some(prev) => prev.accumulate(&d)?,
            None => d,
        });
    }
    Ok(())
}

fn sum_of_squares(t: &Tensor) -> Result<f64> {
    let mut off = Tape::inference();
    let sq = ew::square(&mut off, t)?;
    Ok(sum_all(&mut off, &sq)?.scalar()? as f64)
}

/// What R1 measured.
pub struct R1 {
    /// mean over the batch of ‖∇ₓ Σ logits‖² per image (`Loss/r1_penalty`).
    pub penalty: f64,
    /// `γ/2 · penalty` (`Loss/D/reg`, before the gain).
    pub loss: f64,
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
    let sq = sum_of_squares(&g)?;
    let penalty = sq / n as f64;
    let out = R1 {
        penalty,
        loss: penalty * gamma as f64 / 2.0,
    };
    if sq == 0.0 || !sq.is_finite() {
        return Ok(out);
    }
    let eps = R1_STEP / (sq / g.numel() as f64).sqrt() as f32;
    let pass = |sign: f32| -> Result<Gradients> {
        let mut off = Tape::inference();
        let step = ew::scale(&mut off, &g, sign * eps)?;
        let xs = ew::add(&mut off, real, &step)?;
        let mut tape = Tape::new();
        params.watch_all(&mut tape);
        let f = pattern::replay(&pat, || logit_sum(&mut tape, &xs))?;
        tape.backward(&f)
    };
    let (plus, minus) = (pass(1.0)?, pass(-1.0)?);
    // d/dθ of gain·γ/(2n)·‖g‖² is gain·γ/n · (∂g/∂θ)ᵀ g.
    let scale = gain * gamma / n as f32 / (2.0 * eps);
    accumulate_difference(params, &plus, &minus, scale)?;
    Ok(out)
}

/// What path length measured.
pub struct PathLength {
    /// mean of `(‖J_wᵀ y‖ − a)²` (`Loss/pl_penalty`).
    pub penalty: f64,
    /// the mean length ‖J_wᵀ y‖ this batch.
    pub length: f64,
    /// the updated running mean a (the reference's `pl_mean`).
    pub mean: f32,
    /// the mapped w of z, for `w_avg`.
    pub w: Tensor,
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
    mixing: Option<&Mixing>,
    noise: NoiseMode,
    pl_noise: &[f32],
    pl_mean: f32,
    weight: f32,
    decay: f32,
    gain: f32,
) -> Result<PathLength> {
    let num_ws = g.config.num_ws();
    let (b, w_dim) = (z.shape()[0], g.config.w_dim);
    let r = g.config.img_resolution;
    let device = z.device().clone();
    let y: Vec<f32> = pl_noise.iter().map(|v| v / r as f32).collect();
    let y = Tensor::from_vec(y, &[b, g.config.img_channels, r, r], &device)?;
    // The latents as the mapping makes them (recorded on `tape` when it watches G).
    let latents = |tape: &mut Tape| -> Result<(Tensor, Vec<Tensor>)> {
        let w = g.mapping.forward(tape, z, 1.0)?;
        let mut ws = vec![w.clone(); num_ws];
        if let Some(m) = mixing.filter(|m| m.cutoff < num_ws) {
            let z2 = Tensor::from_vec(m.z2.clone(), z.shape(), &device)?;
            let w2 = g.mapping.forward(tape, &z2, 1.0)?;
            for w in &mut ws[m.cutoff..] {
                *w = w2.clone();
            }
        }
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
    let gk: Vec<Vec<f32>> = leaves
        .iter()
        .map(|l| match grads.get(l) {
            Some(t) => t.to_vec_f32(),
            None => Ok(vec![0.0; b * w_dim]),
        })
        .collect::<Result<_>>()?;
    let lengths: Vec<f64> = (0..b)
        .map(|i| {
            let ss: f64 = gk
                .iter()
                .map(|gv| {
                    gv[i * w_dim..][..w_dim]
                        .iter()
                        .map(|&v| (v as f64) * (v as f64))
                        .sum::<f64>()
                })
                .sum();
            (ss / num_ws as f64).sqrt()
        })
        .collect();
    let mean_len = lengths.iter().sum::<f64>() / b as f64;
    let a = pl_mean as f64 + decay as f64 * (mean_len - pl_mean as f64);
    let dev: Vec<f64> = lengths.iter().map(|l| l - a).collect();
    let penalty = dev.iter().map(|d| d * d).sum::<f64>() / b as f64;
    let out = PathLength {
        penalty,
        length: mean_len,
        mean: a as f32,
        w,
    };
    // ∂L/∂len_j for L = gain·weight·mean_i (len_i − a)², a = lerp(pl_mean, mean len, decay).
    let total_dev: f64 = dev.iter().sum();
    let coef = gain as f64 * weight as f64 * 2.0 / b as f64;
    let dlen: Vec<f64> = dev
        .iter()
        .map(|d| coef * (d - decay as f64 / b as f64 * total_dev))
        .collect();
    // v_jk = ∂L/∂g_jk = ∂L/∂len_j · g_jk / (num_ws · len_j).
    let v: Vec<Vec<f32>> = gk
        .iter()
        .map(|gv| {
            gv.iter()
                .enumerate()
                .map(|(e, &x)| {
                    let j = e / w_dim;
                    if lengths[j] > 0.0 {
                        (dlen[j] * x as f64 / (num_ws as f64 * lengths[j])) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let vv: f64 = v.iter().flatten().map(|&x| (x as f64) * (x as f64)).sum();
    if vv == 0.0 || !vv.is_finite() {
        return Ok(out);
    }
    let eps = PL_STEP / (vv / (num_ws * b * w_dim) as f64).sqrt() as f32;
    let pass = |sign: f32| -> Result<Gradients> {
        let mut tape = Tape::new();
        params.watch_all(&mut tape);
        let s = pattern::replay(&pat, || -> Result<Tensor> {
            let (_, ws) = latents(&mut tape)?;
            let shifted: Vec<Tensor> = ws
                .iter()
                .zip(&v)
                .map(|(w, vk)| {
                    let step: Vec<f32> = vk.iter().map(|x| x * sign * eps).collect();
                    let step = Tensor::from_vec(step, &[b, w_dim], &device)?;
                    ew::add(&mut tape, w, &step)
                })
                .collect::<Result<_>>()?;
            noise_sum(&mut tape, &shifted)
        })?;
        tape.backward(&s)
    };
    let (plus, minus) = (pass(1.0)?, pass(-1.0)?);
    accumulate_difference(params, &plus, &minus, 1.0 / (2.0 * eps))?;
    Ok(out)
}
