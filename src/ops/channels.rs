//! Products broadcast over channels and pixels: the small ops around StyleGAN2's convolutions.
//!
//! - `broadcast_mul(x, s)`: `y[i] = x[i]·s[i / inner]` where s's shape is a prefix of x's (a
//!   per-sample, per-channel or per-row scale). `dx = dy·s`, `ds[r] = Σ_{i in r} dy·x` (a row dot).
//! - `rowdot(a, b)` (raw): `out[r] = Σ_j a[r, j]·b[r, j]`, used by those gradients and by
//!   `ops::modconv`'s.
//! - `add_noise(x, noise, strength)`: StyleGAN2's noise injection, `y = x + strength·noise` with
//!   noise `[N, 1, H, W]` (random mode) or `[H, W]` (the layer's `noise_const`) broadcast over
//!   channels (and samples); strength is a learned scalar `[]`. `dx = dy`,
//!   `dstrength = Σ dy·noise` (noise itself gets no gradient: it is a buffer or a fresh draw).
//! - `normalize_2nd_moment(x)`: the mapping network's input normalisation,
//!   `x·rsqrt(mean_j x² + eps)` over axis 1 of `[N, D]`, composed of recorded ops.
//!
//! All read their inputs once and write once (`kernels/channels.cu`).

use super::same_device;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::elementwise as ew;
use crate::ops::reduce::{reduce_axis_raw, Reduce};
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

/// The CPU twins.
pub mod cpu {
    use rayon::prelude::*;

    pub fn broadcast_mul(x: &[f32], s: &[f32]) -> Vec<f32> {
        let inner = x.len() / s.len().max(1);
        let mut y = x.to_vec();
        y.par_chunks_mut(inner.max(1))
            .zip(s.par_iter())
            .for_each(|(row, &k)| row.iter_mut().for_each(|v| *v *= k));
        y
    }

    pub fn rowdot(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
        if n == 0 {
            return Vec::new();
        }
        a.chunks(n)
            .zip(b.chunks(n))
            .map(|(ra, rb)| ra.iter().zip(rb).map(|(x, y)| x * y).sum())
            .collect()
    }

    pub fn add_noise(x: &[f32], noise: &[f32], strength: f32, c: usize, p: usize) -> Vec<f32> {
        let batched = noise.len() != p;
        x.par_iter()
            .enumerate()
            .map(|(i, &v)| {
                let b = if batched { i / (c * p) } else { 0 };
                v + strength * noise[b * p + i % p]
            })
            .collect()
    }
}

/// `y = x ⊙ s` broadcast, without recording. s's shape must be a prefix of x's.
pub(crate) fn broadcast_mul_raw(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    const OP: &str = "broadcast_mul";
    same_device(OP, &[x, s])?;
    if x.shape()[..s.rank().min(x.rank())] != *s.shape() || s.rank() > x.rank() {
        return Err(Error::shape(
            OP,
            format!(
                "the scale's shape {:?} must be a prefix of x's {:?}",
                s.shape(),
                x.shape()
            ),
        ));
    }
    match x.device() {
        Device::Cpu => {
            let (sx, ss) = (x.storage(), s.storage());
            Tensor::from_vec(
                cpu::broadcast_mul(sx.cpu_f32(OP)?, ss.cpu_f32(OP)?),
                x.shape(),
                x.device(),
            )
        }
        Device::Cuda(gpu) => {
            let (n, inner) = (x.numel() as u64, (x.numel() / s.numel().max(1)) as u64);
            let (sx, ss) = (x.storage(), s.storage());
            let mut y = gpu.alloc::<f32>(x.numel())?;
            if n > 0 {
                // SAFETY: x and y hold n floats, s n / inner (its shape is a prefix of x's).
                launch!(
                    gpu,
                    "channels",
                    "broadcast_mul_f32",
                    launch_1d(x.numel()),
                    sx.cuda_f32(OP)?,
                    ss.cuda_f32(OP)?,
                    &mut y,
                    &n,
                    &inner
                )?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// `out[r] = Σ_j a[r, j]·b[r, j]` for a, b viewed as `[rows, n]` (same shape), shaped `out_shape`.
pub(crate) fn rowdot_raw(a: &Tensor, b: &Tensor, n: usize, out_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "rowdot";
    same_device(OP, &[a, b])?;
    super::same_shape(OP, a, b)?;
    let rows: usize = out_shape.iter().product();
    if rows * n != a.numel() {
        return Err(Error::shape(
            OP,
            format!("{:?} is not {rows} rows of {n}", a.shape()),
        ));
    }
    match a.device() {
        Device::Cpu => {
            let (sa, sb) = (a.storage(), b.storage());
            Tensor::from_vec(
                cpu::rowdot(sa.cpu_f32(OP)?, sb.cpu_f32(OP)?, n),
                out_shape,
                a.device(),
            )
        }
        Device::Cuda(gpu) => {
            let (sa, sb) = (a.storage(), b.storage());
            let mut out = gpu.alloc::<f32>(rows)?;
            if rows > 0 {
                let (r, nn) = (rows as u64, n as u64);
                let cfg = super::warp_per_row(rows);
                // SAFETY: a and b hold rows·n floats, out rows; warp r reads row r only.
                launch!(
                    gpu,
                    "channels",
                    "rowdot_f32",
                    cfg,
                    sa.cuda_f32(OP)?,
                    sb.cuda_f32(OP)?,
                    &mut out,
                    &r,
                    &nn
                )?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(out),
                out_shape,
                a.device(),
            ))
        }
    }
}

/// `y = x ⊙ s` with s broadcast over x's trailing axes (s's shape is a prefix of x's). Recorded.
pub fn broadcast_mul(tape: &mut Tape, x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let y = broadcast_mul_raw(x, s)?;
    let need_s = tape.needs_grad(&[s]);
    let (xc, sc) = (x.clone(), s.clone());
    tape.record(&[x, s], &y, move |dy| {
        let dx = broadcast_mul_raw(dy, &sc)?;
        let inner = xc.numel() / sc.numel().max(1);
        let ds = need_s
            .then(|| rowdot_raw(dy, &xc, inner, sc.shape()))
            .transpose()?;
        Ok(vec![Some(dx), ds])
    });
    Ok(y)
}

/// `y = x + strength·noise`: x `[N, C, H, W]`, noise `[N, 1, H, W]` or `[H, W]`, strength `[]`
/// (or `[1]`). Recorded: dx = dy, dstrength = Σ dy·noise; the noise gets none.
pub fn add_noise(tape: &mut Tape, x: &Tensor, noise: &Tensor, strength: &Tensor) -> Result<Tensor> {
    const OP: &str = "add_noise";
    same_device(OP, &[x, noise, strength])?;
    let &[n, c, h, w] = x.shape() else {
        return Err(Error::shape(
            OP,
            format!("x must be [N, C, H, W], got {:?}", x.shape()),
        ));
    };
    let batched = match noise.shape() {
        s if s == [n, 1, h, w] => true,
        s if s == [h, w] => false,
        s => {
            return Err(Error::shape(
                OP,
                format!(
                    "noise {s:?} for x {:?}: want [{n}, 1, {h}, {w}] or [{h}, {w}]",
                    x.shape()
                ),
            ))
        }
    };
    if strength.numel() != 1 {
        return Err(Error::shape(
            OP,
            format!(
                "the strength must be one number, got shape {:?}",
                strength.shape()
            ),
        ));
    }
    let p = h * w;
    let y = match x.device() {
        Device::Cpu => {
            let (sx, sn) = (x.storage(), noise.storage());
            Tensor::from_vec(
                cpu::add_noise(sx.cpu_f32(OP)?, sn.cpu_f32(OP)?, strength.scalar()?, c, p),
                x.shape(),
                x.device(),
            )?
        }
        Device::Cuda(gpu) => {
            let (sx, sn, ss) = (x.storage(), noise.storage(), strength.storage());
            let mut y = gpu.alloc::<f32>(x.numel())?;
            if x.numel() > 0 {
                let (nn, cc, pp, b) = (x.numel() as u64, c as u64, p as u64, batched as i32);
                // SAFETY: x, y hold N·C·P floats, noise N·P (batched) or P, strength one.
                launch!(
                    gpu,
                    "channels",
                    "add_noise_f32",
                    launch_1d(x.numel()),
                    sx.cuda_f32(OP)?,
                    sn.cuda_f32(OP)?,
                    ss.cuda_f32(OP)?,
                    &mut y,
                    &nn,
                    &cc,
                    &pp,
                    &b
                )?;
            }
            Tensor::from_storage(Storage::CudaF32(y), x.shape(), x.device())
        }
    };
    let (noise_c, strength_shape) = (noise.clone(), strength.shape().to_vec());
    tape.record(&[x, strength], &y, move |dy| {
        let ds = noise_strength_grad_raw(dy, &noise_c, &strength_shape)?;
        Ok(vec![Some(dy.clone()), Some(ds)])
    });
    Ok(y)
}

/// `Σ dy·noise` for `x + strength·noise` (see `add_noise`): dy `[N, C, H, W]`, noise
/// `[N, 1, H, W]` or `[H, W]`; shaped like the strength.
pub(crate) fn noise_strength_grad_raw(
    dy: &Tensor,
    noise: &Tensor,
    strength_shape: &[usize],
) -> Result<Tensor> {
    let &[n, c, h, w] = dy.shape() else {
        return Err(Error::shape(
            "add_noise backward",
            format!("dy must be [N, C, H, W], got {:?}", dy.shape()),
        ));
    };
    let p = h * w;
    // Σ over channels, then (shared noise) over samples, then the dot with the noise.
    let per_pixel = reduce_axis_raw(&dy.reshaped(&[n, c, p])?, 1, Reduce::Sum, 1.0)?;
    let shared = noise.shape() == [h, w];
    let per_pixel = if shared {
        reduce_axis_raw(&per_pixel, 0, Reduce::Sum, 1.0)?
    } else {
        per_pixel
    };
    let flat = noise.reshaped(per_pixel.shape())?;
    let total = per_pixel.numel();
    let ds = rowdot_raw(
        &per_pixel.reshaped(&[total])?,
        &flat.reshaped(&[total])?,
        total,
        &[1],
    )?;
    ds.reshaped(strength_shape)
}

/// StyleGAN2's `normalize_2nd_moment(x, dim=1, eps)` for x `[N, D]`: `x·rsqrt(mean_j x² + eps)`.
pub fn normalize_2nd_moment(tape: &mut Tape, x: &Tensor, eps: f32) -> Result<Tensor> {
    if x.rank() != 2 {
        return Err(Error::shape(
            "normalize_2nd_moment",
            format!("x must be [N, D], got {:?}", x.shape()),
        ));
    }
    let sq = ew::square(tape, x)?;
    let m = crate::ops::reduce::mean(tape, &sq, 1)?;
    let m_eps = ew::add_scalar(tape, &m, eps)?;
    let r = ew::rsqrt(tape, &m_eps)?;
    broadcast_mul(tape, x, &r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gradcheck, random_vec};

    #[test]
    fn broadcast_mul_and_its_gradients_on_every_device() {
        for device in devices() {
            for (xs, ss) in [
                (vec![3usize, 4, 5, 6], vec![3usize, 4]),
                (vec![5, 7], vec![5]),
                (vec![2, 3], vec![2, 3]),
                (vec![40, 33], vec![40]),
            ] {
                let (n, m): (usize, usize) = (xs.iter().product(), ss.iter().product());
                let (xv, sv, gv) = (random_vec(n, 1), random_vec(m, 2), random_vec(n, 3));
                let x = Tensor::from_slice(&xv, &xs, &device).unwrap();
                let s = Tensor::from_slice(&sv, &ss, &device).unwrap();
                let mut tape = Tape::new();
                tape.watch(&x);
                tape.watch(&s);
                let y = broadcast_mul(&mut tape, &x, &s).unwrap();
                let what = format!("{xs:?} by {ss:?} on {device}");
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &cpu::broadcast_mul(&xv, &sv),
                    1e-6,
                    1e-6,
                    &what,
                );
                let grads = tape
                    .backward_with(&y, Tensor::from_slice(&gv, &xs, &device).unwrap())
                    .unwrap();
                assert_close(
                    &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                    &cpu::broadcast_mul(&gv, &sv),
                    1e-6,
                    1e-6,
                    &format!("dx {what}"),
                );
                let ds = cpu::rowdot(&gv, &xv, n / m);
                assert_close(
                    &grads.get(&s).unwrap().to_vec_f32().unwrap(),
                    &ds,
                    1e-5,
                    1e-5,
                    &format!("ds {what}"),
                );
            }
            let bad = broadcast_mul(
                &mut Tape::new(),
                &Tensor::zeros(&[2, 3], &device).unwrap(),
                &Tensor::zeros(&[3], &device).unwrap(),
            );
            assert!(bad.unwrap_err().to_string().contains("prefix"));
        }
    }

    #[test]
    fn add_noise_and_its_strength_gradient_on_every_device() {
        for device in devices() {
            for batched in [true, false] {
                let (n, c, h, w) = (3, 4, 5, 6);
                let nshape = if batched {
                    vec![n, 1, h, w]
                } else {
                    vec![h, w]
                };
                let xv = random_vec(n * c * h * w, 1);
                let nv = random_vec(nshape.iter().product(), 2);
                let gv = random_vec(xv.len(), 3);
                let x = Tensor::from_slice(&xv, &[n, c, h, w], &device).unwrap();
                let noise = Tensor::from_slice(&nv, &nshape, &device).unwrap();
                let strength = Tensor::from_slice(&[0.3], &[], &device).unwrap();
                let mut tape = Tape::new();
                tape.watch(&x);
                tape.watch(&strength);
                let y = add_noise(&mut tape, &x, &noise, &strength).unwrap();
                let what = format!("batched {batched} on {device}");
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &cpu::add_noise(&xv, &nv, 0.3, c, h * w),
                    1e-6,
                    1e-6,
                    &what,
                );
                let grads = tape
                    .backward_with(&y, Tensor::from_slice(&gv, &[n, c, h, w], &device).unwrap())
                    .unwrap();
                assert_close(
                    &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                    &gv,
                    0.0,
                    0.0,
                    &format!("dx {what}"),
                );
                let want: f32 = cpu::add_noise(&vec![0.0; xv.len()], &nv, 1.0, c, h * w)
                    .iter()
                    .zip(&gv)
                    .map(|(a, b)| a * b)
                    .sum();
                let ds = grads.get(&strength).unwrap();
                assert_eq!(ds.shape(), &[] as &[usize]);
                assert_close(
                    &ds.to_vec_f32().unwrap(),
                    &[want],
                    1e-5,
                    1e-5,
                    &format!("dstrength {what}"),
                );
            }
            let x = Tensor::zeros(&[2, 3, 4, 4], &device).unwrap();
            let s = Tensor::zeros(&[], &device).unwrap();
            assert!(add_noise(
                &mut Tape::new(),
                &x,
                &Tensor::zeros(&[2, 3, 4, 4], &device).unwrap(),
                &s
            )
            .is_err());
        }
    }

    /// The f64 definition and its analytic gradient, checked by finite differences; the recorded
    /// composition must give both.
    #[test]
    fn normalize_2nd_moment_matches_its_definition_and_gradient() {
        let (n, d, eps) = (3, 7, 1e-8);
        let def = |x: &[f64]| -> Vec<f64> {
            x.chunks(d)
                .flat_map(|r| {
                    let m = r.iter().map(|v| v * v).sum::<f64>() / d as f64;
                    r.iter()
                        .map(move |v| v / (m + eps).sqrt())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let xv: Vec<f32> = random_vec(n * d, 4).iter().map(|v| v * 2.0).collect();
        let gv = random_vec(n * d, 5);
        let x64: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
        let g64: Vec<f64> = gv.iter().map(|&v| v as f64).collect();
        // Analytic: dx = r·(g − x·r²·mean(g ⊙ x)) per row, r = rsqrt(mean x² + eps).
        let analytic: Vec<f64> = x64
            .chunks(d)
            .zip(g64.chunks(d))
            .flat_map(|(r, g)| {
                let m = r.iter().map(|v| v * v).sum::<f64>() / d as f64;
                let inv = 1.0 / (m + eps).sqrt();
                let gx = r.iter().zip(g).map(|(a, b)| a * b).sum::<f64>() / d as f64;
                r.iter()
                    .zip(g)
                    .map(move |(xv, gv)| inv * (gv - xv * inv * inv * gx))
                    .collect::<Vec<_>>()
            })
            .collect();
        gradcheck(
            "normalize_2nd_moment",
            |x| def(x).iter().zip(&g64).map(|(a, b)| a * b).sum(),
            &x64,
            &analytic,
        );
        for device in devices() {
            let x = Tensor::from_slice(&xv, &[n, d], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            let y = normalize_2nd_moment(&mut tape, &x, eps as f32).unwrap();
            let want: Vec<f32> = def(&x64).iter().map(|&v| v as f32).collect();
            assert_close(
                &y.to_vec_f32().unwrap(),
                &want,
                1e-5,
                1e-6,
                &format!("y on {device}"),
            );
            let grads = tape
                .backward_with(&y, Tensor::from_slice(&gv, &[n, d], &device).unwrap())
                .unwrap();
            let want: Vec<f32> = analytic.iter().map(|&v| v as f32).collect();
            assert_close(
                &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                &want,
                1e-4,
                1e-5,
                &format!("dx on {device}"),
            );
            // A zero row stays zero (z = 0 in the generator's fixtures).
            let z = normalize_2nd_moment(
                &mut Tape::new(),
                &Tensor::zeros(&[2, 4], &device).unwrap(),
                1e-8,
            )
            .unwrap();
            assert!(z.to_vec_f32().unwrap().iter().all(|&v| v == 0.0));
        }
    }
}
