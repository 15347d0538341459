//! Mind Reader's mapper losses, fused: each forward also computes d(loss)/d(pred), so the
//! backward only scales that by the incoming scalar gradient. Targets are constants (no gradient).
//!
//! For prediction x and target y of shape `[B, D]` (rows are samples):
//! - `mse = Σ(x−y)² / (B·D)` (torch MSELoss);
//! - `cosine = (1/B)·Σ_rows (1 − cos)`, `cos = x·y / sqrt((‖x‖²+ε)(‖y‖²+ε))`, ε = 1e-12
//!   (torch CosineEmbeddingLoss with target 1, as the reference's `cos_sim_loss`);
//! - `mse_cos(w) = (1−w)·mse + w·cosine` (Mind Reader: w = 0.6);
//! - `contrastive(τ, λ)`: `S = cos(x_i, y_j)/τ` over the batch (norms clamped at 1e-8, torch
//!   cosine_similarity), `L = −(1/B)·Σ_i [λ·log softmax_row(S)_ii + (1−λ)·log softmax_col(S)_ii]`
//!   (τ = 0.5, λ = 0.5); `dS_ij = −(1/B)[λ(δ_ij − P^row_ij) + (1−λ)(δ_ij − P^col_ij)]`, then back
//!   through S = x̂ŷᵀ/τ and the row normalisation;
//! - `mse_cos_contrastive = (1−p)·mse_cos(w) + p·contrastive` (p = 0.5).
//!
//! Kernels (`kernels/loss.cu`): `mse_cos_f32` one block per row, reading x and y once (plus a
//! cached second read) and writing dx once; the contrastive loss is normalisation + one matmul +
//! two log-Σ-exp passes + one fused gradient kernel over the B×B matrix.

use cudarc::driver::LaunchConfig;

use super::{same_device, same_shape, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::{elementwise as ew, l2norm, matmul, reduce};
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

/// Mind Reader's defaults for the mapper losses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    /// Weight of (1 − cos) against MSE.
    pub cos_weight: f32,
    /// Contrastive temperature τ.
    pub temperature: f32,
    /// Mix of row (brain→image) and column (image→brain) softmax.
    pub lambda: f32,
    /// Weight of the contrastive term against mse_cos.
    pub contrastive_weight: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            cos_weight: 0.6,
            temperature: 0.5,
            lambda: 0.5,
            contrastive_weight: 0.5,
        }
    }
}

pub mod cpu {
    use super::Real;

    /// (loss, dL/dx) of mse_cos for `[b, d]` rows.
    pub fn mse_cos<T: Real>(x: &[T], y: &[T], b: usize, d: usize, w: T) -> (T, Vec<T>) {
        let c = T::c;
        let n = c((b * d) as f64);
        let bb = c(b as f64);
        let mut loss = T::zero();
        let mut dx = vec![T::zero(); b * d];
        for r in 0..b {
            let (xr, yr) = (&x[r * d..][..d], &y[r * d..][..d]);
            let dot: T = xr.iter().zip(yr).map(|(&a, &b)| a * b).sum();
            let m1 = xr.iter().map(|&a| a * a).sum::<T>() + c(1e-12);
            let m2 = yr.iter().map(|&a| a * a).sum::<T>() + c(1e-12);
            let sq: T = xr.iter().zip(yr).map(|(&a, &b)| (a - b) * (a - b)).sum();
            let denom = (m1 * m2).sqrt();
            let cos = dot / denom;
            loss = loss + (T::one() - w) * sq / n + w * (T::one() - cos) / bb;
            for j in 0..d {
                dx[r * d + j] = (T::one() - w) * c(2.0) * (xr[j] - yr[j]) / n
                    - (w / bb) * (yr[j] / denom - cos * xr[j] / m1);
            }
        }
        (loss, dx)
    }

    /// (loss, dL/dS) of the InfoNCE terms for a `[b, b]` similarity matrix already divided by τ.
    pub fn infonce_from_sim<T: Real>(s: &[T], b: usize, lam: T) -> (T, Vec<T>) {
        let lse = |get: &dyn Fn(usize) -> T| {
            let m = (0..b).map(get).fold(T::neg_infinity(), T::max);
            m + (0..b).map(|j| (get(j) - m).exp()).sum::<T>().ln()
        };
        let row: Vec<T> = (0..b).map(|i| lse(&|j| s[i * b + j])).collect();
        let col: Vec<T> = (0..b).map(|j| lse(&|i| s[i * b + j])).collect();
        let bb = T::c(b as f64);
        let mut loss = T::zero();
        let mut ds = vec![T::zero(); b * b];
        for i in 0..b {
            for j in 0..b {
                let v = s[i * b + j];
                let delta = if i == j { T::one() } else { T::zero() };
                ds[i * b + j] = -(lam * (delta - (v - row[i]).exp())
                    + (T::one() - lam) * (delta - (v - col[j]).exp()))
                    / bb;
            }
            let v = s[i * b + i];
            loss = loss - (lam * (v - row[i]) + (T::one() - lam) * (v - col[i])) / bb;
        }
        (loss, ds)
    }

    /// Rows divided by max(‖row‖, eps).
    pub fn normalize_rows<T: Real>(x: &[T], b: usize, d: usize, eps: T) -> (Vec<T>, Vec<T>) {
        let mut y = x.to_vec();
        let mut norms = Vec::with_capacity(b);
        for r in 0..b {
            let n = x[r * d..][..d]
                .iter()
                .map(|&a| a * a)
                .sum::<T>()
                .sqrt()
                .max(eps);
            y[r * d..][..d].iter_mut().for_each(|v| *v = *v / n);
            norms.push(n);
        }
        (y, norms)
    }

    /// (loss, dL/dx) of the contrastive loss, written out in full (the oracle for the composed op).
    pub fn contrastive<T: Real>(
        x: &[T],
        y: &[T],
        b: usize,
        d: usize,
        tau: T,
        lam: T,
    ) -> (T, Vec<T>) {
        let eps = T::c(1e-8);
        let (xh, xn) = normalize_rows(x, b, d, eps);
        let (yh, _) = normalize_rows(y, b, d, eps);
        let mut s = vec![T::zero(); b * b];
        for i in 0..b {
            for j in 0..b {
                s[i * b + j] = (0..d).map(|k| xh[i * d + k] * yh[j * d + k]).sum::<T>() / tau;
            }
        }
        let (loss, ds) = infonce_from_sim(&s, b, lam);
        let mut dx = vec![T::zero(); b * d];
        for i in 0..b {
            let dxh: Vec<T> = (0..d)
                .map(|k| (0..b).map(|j| ds[i * b + j] * yh[j * d + k]).sum::<T>() / tau)
                .collect();
            let proj: T = (0..d).map(|k| dxh[k] * xh[i * d + k]).sum();
            for k in 0..d {
                dx[i * d + k] = (dxh[k] - xh[i * d + k] * proj) / xn[i];
            }
        }
        (loss, dx)
    }
}

fn check_pair(op: &'static str, pred: &Tensor, target: &Tensor) -> Result<(usize, usize)> {
    same_device(op, &[pred, target])?;
    same_shape(op, pred, target)?;
    if pred.rank() != 2 || pred.shape()[0] == 0 {
        return Err(Error::shape(
            op,
            format!(
                "expected [batch, dim] with batch ≥ 1, got {:?}",
                pred.shape()
            ),
        ));
    }
    Ok((pred.shape()[0], pred.shape()[1]))
}

/// Records a fused loss whose gradient with respect to `pred` was computed in the forward.
fn record_fused(tape: &mut Tape, pred: &Tensor, loss: &Tensor, grad: Tensor) {
    tape.record(&[pred], loss, move |dy| {
        Ok(vec![Some(ew::scale_by_raw(&grad, dy)?)])
    });
}

/// (1−w)·MSE + w·(1 − cos); w = 0 is plain MSE, w = 1 the cosine loss.
pub fn mse_cos(tape: &mut Tape, pred: &Tensor, target: &Tensor, w: f32) -> Result<Tensor> {
    let (b, d) = check_pair("mse_cos", pred, target)?;
    let (loss, grad) = match pred.device() {
        Device::Cpu => {
            let (ps, ts) = (pred.storage(), target.storage());
            let (l, g) = cpu::mse_cos(ps.cpu_f32("mse_cos")?, ts.cpu_f32("mse_cos")?, b, d, w);
            (
                Tensor::from_vec(vec![l], &[], pred.device())?,
                Tensor::from_vec(g, pred.shape(), pred.device())?,
            )
        }
        Device::Cuda(gpu) => {
            let (ps, ts) = (pred.storage(), target.storage());
            let mut dx = gpu.alloc::<f32>(b * d)?;
            let mut rows = gpu.alloc::<f32>(b)?;
            let cfg = LaunchConfig {
                grid_dim: (b as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (bb, dd) = (b as u32, d as u32);
            // SAFETY: block r reads row r of x and y (d each), writes row r of dx and rows[r].
            launch!(
                gpu,
                "loss",
                "mse_cos_f32",
                cfg,
                ps.cuda_f32("mse_cos")?,
                ts.cuda_f32("mse_cos")?,
                &mut dx,
                &mut rows,
                &bb,
                &dd,
                &w
            )?;
            let rows = Tensor::from_storage(Storage::CudaF32(rows), &[b], pred.device());
            (
                reduce::sum_all_raw(&rows, 1.0)?,
                Tensor::from_storage(Storage::CudaF32(dx), pred.shape(), pred.device()),
            )
        }
    };
    record_fused(tape, pred, &loss, grad);
    Ok(loss)
}

pub fn mse(tape: &mut Tape, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    mse_cos(tape, pred, target, 0.0)
}

pub fn cosine(tape: &mut Tape, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    mse_cos(tape, pred, target, 1.0)
}

/// (loss, dL/dS) of the InfoNCE terms of a `[B, B]` similarity matrix (already /τ).
fn infonce_raw(s: &Tensor, lam: f32) -> Result<(Tensor, Tensor)> {
    let b = s.shape()[0];
    match s.device() {
        Device::Cpu => {
            let st = s.storage();
            let (l, ds) = cpu::infonce_from_sim(st.cpu_f32("contrastive")?, b, lam);
            Ok((
                Tensor::from_vec(vec![l], &[], s.device())?,
                Tensor::from_vec(ds, s.shape(), s.device())?,
            ))
        }
        Device::Cuda(gpu) => {
            let st = s.storage();
            let sv = st.cuda_f32("contrastive")?;
            let (mut row, mut col) = (gpu.alloc::<f32>(b)?, gpu.alloc::<f32>(b)?);
            let cfg = LaunchConfig {
                grid_dim: (b as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let bb = b as u32;
            // SAFETY: block k reads row (or column) k of the b×b matrix, writes lse[k].
            launch!(
                gpu,
                "loss",
                "logsumexp_axis_f32",
                cfg,
                sv,
                &mut row,
                &bb,
                &0i32
            )?;
            launch!(
                gpu,
                "loss",
                "logsumexp_axis_f32",
                cfg,
                sv,
                &mut col,
                &bb,
                &1i32
            )?;
            let mut ds = gpu.alloc::<f32>(b * b)?;
            let mut diag = gpu.alloc::<f32>(b)?;
            // SAFETY: one thread per matrix entry; diagonal threads write diag[i].
            launch!(
                gpu,
                "loss",
                "infonce_grad_f32",
                launch_1d(b * b),
                sv,
                &row,
                &col,
                &mut ds,
                &mut diag,
                &bb,
                &lam
            )?;
            let diag = Tensor::from_storage(Storage::CudaF32(diag), &[b], s.device());
            Ok((
                reduce::sum_all_raw(&diag, 1.0)?,
                Tensor::from_storage(Storage::CudaF32(ds), s.shape(), s.device()),
            ))
        }
    }
}

/// The InfoNCE loss of a `[b, b]` similarity matrix already divided by τ, the positives on its
/// diagonal: `−(1/b)·Σ_i (λ·log softmax_row(S)[i, i] + (1 − λ)·log softmax_column(S)[i, i])`,
/// one fused kernel forward and backward (`infonce_grad_f32`).
pub fn infonce(tape: &mut Tape, s: &Tensor, lam: f32) -> Result<Tensor> {
    if s.rank() != 2 || s.shape()[0] != s.shape()[1] {
        return Err(Error::shape(
            "infonce",
            format!("the similarities must be [b, b], got {:?}", s.shape()),
        ));
    }
    let (loss, ds) = infonce_raw(s, lam)?;
    record_fused(tape, s, &loss, ds);
    Ok(loss)
}

/// The batch InfoNCE loss between predictions and targets (Mind Reader's `contrastive_loss`).
pub fn contrastive(
    tape: &mut Tape,
    pred: &Tensor,
    target: &Tensor,
    tau: f32,
    lam: f32,
) -> Result<Tensor> {
    check_pair("contrastive", pred, target)?;
    if tau <= 0.0 {
        return Err(Error::Invalid(format!(
            "contrastive: temperature must be positive, got {tau}"
        )));
    }
    // The similarity matrix is built on an inner tape so its backward gives dL/dpred from dL/dS.
    let mut inner = Tape::new();
    inner.watch(pred);
    let p_hat = l2norm::l2_normalize(&mut inner, pred, 1e-8)?;
    let t_hat = l2norm::l2_normalize(&mut Tape::inference(), target, 1e-8)?;
    let sim = matmul::matmul(&mut inner, &p_hat, &t_hat, false, true)?;
    let s = ew::scale(&mut inner, &sim, 1.0 / tau)?;
    let (loss, ds) = infonce_raw(&s, lam)?;
    let grad = inner
        .backward_with(&s, ds)?
        .get(pred)
        .cloned()
        .ok_or_else(|| Error::Invalid("contrastive: no gradient reached the prediction".into()))?;
    record_fused(tape, pred, &loss, grad);
    Ok(loss)
}

/// (1−p)·mse_cos(w) + p·contrastive(τ, λ) with `cfg`'s weights.
pub fn mse_cos_contrastive(
    tape: &mut Tape,
    pred: &Tensor,
    target: &Tensor,
    cfg: &LossConfig,
) -> Result<Tensor> {
    let a = mse_cos(tape, pred, target, cfg.cos_weight)?;
    let b = contrastive(tape, pred, target, cfg.temperature, cfg.lambda)?;
    let a = ew::scale(tape, &a, 1.0 - cfg.contrastive_weight)?;
    let b = ew::scale(tape, &b, cfg.contrastive_weight)?;
    ew::add(tape, &a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, random_vec};

    fn f64s(v: Vec<f32>) -> Vec<f64> {
        v.into_iter().map(|a| a as f64).collect()
    }

    #[test]
    fn mse_cos_gradient_matches_finite_differences() {
        let (b, d) = (5, 7);
        let (x, y) = (f64s(random_vec(b * d, 1)), f64s(random_vec(b * d, 2)));
        for w in [0.0, 0.6, 1.0] {
            let (_, g) = cpu::mse_cos(&x, &y, b, d, w);
            gradcheck(
                &format!("mse_cos w={w}"),
                |x| cpu::mse_cos(x, &y, b, d, w).0,
                &x,
                &g,
            );
        }
    }

    #[test]
    fn contrastive_gradient_matches_finite_differences() {
        let (b, d) = (6, 5);
        let (x, y) = (f64s(random_vec(b * d, 3)), f64s(random_vec(b * d, 4)));
        for (tau, lam) in [(0.5, 0.5), (0.1, 1.0), (1.0, 0.0)] {
            let (_, g) = cpu::contrastive(&x, &y, b, d, tau, lam);
            gradcheck(
                &format!("contrastive τ={tau} λ={lam}"),
                |x| cpu::contrastive(x, &y, b, d, tau, lam).0,
                &x,
                &g,
            );
        }
    }

    #[test]
    fn known_values() {
        // Identical rows: cos = 1, MSE = 0. Orthogonal unit rows: cos = 0.
        let x = [1.0f64, 0.0, 0.0, 1.0];
        assert!(cpu::mse_cos(&x, &x, 2, 2, 0.6).0.abs() < 1e-9);
        let y = [0.0f64, 1.0, 1.0, 0.0];
        assert!((cpu::mse_cos(&x, &y, 2, 2, 1.0).0 - 1.0).abs() < 1e-9);
        // Equal similarities everywhere: InfoNCE = log B.
        let (l, _) = cpu::infonce_from_sim(&[0.3f64; 16], 4, 0.5);
        assert!((l - 4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn fused_losses_through_tape_match_twins_on_every_device() {
        let (b, d) = (9, 13);
        let (xv, yv) = (random_vec(b * d, 5), random_vec(b * d, 6));
        let cfg = LossConfig::default();
        let (l1, g1) = cpu::mse_cos(&xv, &yv, b, d, cfg.cos_weight);
        let (l2, g2) = cpu::contrastive(&xv, &yv, b, d, cfg.temperature, cfg.lambda);
        let want_loss = (1.0 - cfg.contrastive_weight) * l1 + cfg.contrastive_weight * l2;
        let want_grad: Vec<f32> = g1
            .iter()
            .zip(&g2)
            .map(|(a, c)| (1.0 - cfg.contrastive_weight) * a + cfg.contrastive_weight * c)
            .collect();
        for device in devices() {
            let x = Tensor::from_slice(&xv, &[b, d], &device).unwrap();
            let y = Tensor::from_slice(&yv, &[b, d], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            let loss = mse_cos_contrastive(&mut tape, &x, &y, &cfg).unwrap();
            assert_close(
                &[loss.scalar().unwrap()],
                &[want_loss],
                1e-5,
                1e-6,
                &format!("loss on {device}"),
            );
            let g = tape
                .backward(&loss)
                .unwrap()
                .get(&x)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_close(&g, &want_grad, 1e-4, 1e-6, &format!("grad on {device}"));
        }
    }

    #[test]
    fn loss_cuda_matches_cpu_at_awkward_sizes() {
        let Some(gpu) = gpu() else { return };
        for (b, d) in [(1, 1), (7, 33), (128, 512), (33, 1000)] {
            let (xv, yv) = (random_vec(b * d, b as u64), random_vec(b * d, d as u64));
            let run = |dev: &Device| {
                let x = Tensor::from_slice(&xv, &[b, d], dev).unwrap();
                let y = Tensor::from_slice(&yv, &[b, d], dev).unwrap();
                let mut out = Vec::new();
                for f in [0usize, 1] {
                    let mut tape = Tape::new();
                    tape.watch(&x);
                    let l = if f == 0 {
                        mse_cos(&mut tape, &x, &y, 0.6).unwrap()
                    } else {
                        contrastive(&mut tape, &x, &y, 0.5, 0.5).unwrap()
                    };
                    out.push(l.scalar().unwrap());
                    out.extend(
                        tape.backward(&l)
                            .unwrap()
                            .get(&x)
                            .unwrap()
                            .to_vec_f32()
                            .unwrap(),
                    );
                }
                out
            };
            assert_close(
                &run(&gpu),
                &run(&Device::Cpu),
                1e-4,
                1e-6,
                &format!("losses b={b} d={d}"),
            );
        }
    }

    #[test]
    fn mismatched_or_empty_inputs_are_errors() {
        let a = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
        let b = Tensor::zeros(&[2, 4], &Device::Cpu).unwrap();
        assert!(mse_cos(&mut Tape::new(), &a, &b, 0.5).is_err());
        let e = Tensor::zeros(&[0, 3], &Device::Cpu).unwrap();
        assert!(contrastive(&mut Tape::new(), &e, &e, 0.5, 0.5).is_err());
        assert!(contrastive(&mut Tape::new(), &a, &a, 0.0, 0.5).is_err());
    }
}
