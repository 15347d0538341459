//! L2 normalisation over the last axis (PyTorch `F.normalize(x, p=2, dim=-1, eps)`; its default
//! eps is 1e-12). CLIP embeddings and the mapper's targets are normalised this way.
//!
//! x is viewed as `[rows, n]`. Per row: `‖x‖ = √(Σ_j x_j²)`, `y = x / max(‖x‖, eps)`; the forward
//! keeps ‖x‖ per row for the backward. Backward: where `‖x‖ > eps`,
//! `dx = (dy − y·Σ_j dy_j·y_j) / ‖x‖` (the projection of dy off y, scaled); otherwise y = x/eps is
//! linear and `dx = dy / eps`. A NaN norm stays NaN (the max does not swallow it).
//!
//! Memory traffic: forward reads x once and writes y once (8 B/element, plus 4 B per row);
//! backward reads y and dy and writes dx (12 B/element). Kernels: `kernels/l2norm.cu`. Rows up to
//! 1024 wide get one warp each with the row in registers (CLIP's 512-wide embeddings would idle
//! most of a block); longer rows get one 512-thread block each, the row staged in shared memory
//! when it fits, else re-read from L2 in the second pass.

use cudarc::driver::PushKernelArg;

use super::{block_per_row, same_device, same_shape, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

/// PyTorch's default eps for `F.normalize`.
pub const DEFAULT_EPS: f32 = 1e-12;

/// The warp-per-row kernels: (widest row, forward, backward).
const WARP_KERNELS: [(usize, &str, &str); 7] = [
    (32, "l2norm_fwd_w1_f32", "l2norm_bwd_w1_f32"),
    (64, "l2norm_fwd_w2_f32", "l2norm_bwd_w2_f32"),
    (128, "l2norm_fwd_w4_f32", "l2norm_bwd_w4_f32"),
    (256, "l2norm_fwd_w8_f32", "l2norm_bwd_w8_f32"),
    (512, "l2norm_fwd_w16_f32", "l2norm_bwd_w16_f32"),
    (768, "l2norm_fwd_w24_f32", "l2norm_bwd_w24_f32"),
    (1024, "l2norm_fwd_w32_f32", "l2norm_bwd_w32_f32"),
];

/// Dynamic shared memory a block-per-row kernel may use to keep its row (under the 48 KiB that
/// needs no opt-in, leaving room for the reduction scratch).
const SMEM_CACHE_BYTES: usize = 44 * 1024;

/// The CPU twins, generic so gradient checks run them in f64.
pub mod cpu {
    use super::Real;
    use rayon::prelude::*;

    /// (y, ‖x‖ per row) for each length-`n` row of x.
    pub fn l2_normalize<T: Real>(x: &[T], n: usize, eps: T) -> (Vec<T>, Vec<T>) {
        let mut y = vec![T::zero(); x.len()];
        if n == 0 {
            return (y, Vec::new());
        }
        let norms = y
            .par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .map(|(yr, xr)| {
                let norm = xr.iter().map(|&v| v * v).sum::<T>().sqrt();
                let d = if norm < eps { eps } else { norm };
                for (yj, &xj) in yr.iter_mut().zip(xr) {
                    *yj = xj / d;
                }
                norm
            })
            .collect();
        (y, norms)
    }

    /// dx from the forward's y and row norms and dy.
    pub fn l2_normalize_bwd<T: Real>(y: &[T], dy: &[T], norm: &[T], n: usize, eps: T) -> Vec<T> {
        let mut dx = vec![T::zero(); y.len()];
        if n == 0 {
            return dx;
        }
        dx.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(dy.par_chunks(n)))
            .zip(norm.par_iter())
            .for_each(|((dxr, (yr, gr)), &nrm)| {
                let dot: T = gr.iter().zip(yr).map(|(&g, &v)| g * v).sum();
                for ((d, &v), &g) in dxr.iter_mut().zip(yr).zip(gr) {
                    *d = if nrm > eps {
                        (g - v * dot) / nrm
                    } else {
                        g / eps
                    };
                }
            });
        dx
    }
}

/// (rows, n) after checking x and eps.
fn check(op: &'static str, x: &Tensor, eps: f32) -> Result<(usize, usize)> {
    let Some((&n, lead)) = x.shape().split_last() else {
        return Err(Error::shape(
            op,
            "needs at least one axis (the last is normalised), got a scalar",
        ));
    };
    let rows: usize = lead.iter().product();
    if rows > u32::MAX as usize || n > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("{:?} has more than 2³² rows or columns", x.shape()),
        ));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::Invalid(format!(
            "{op}: eps must be finite and ≥ 0, got {eps}"
        )));
    }
    Ok((rows, n))
}

/// The warp-per-row kernel pair for rows of `n`, if n ≤ 1024.
fn warp_kernels(n: usize) -> Option<(&'static str, &'static str)> {
    WARP_KERNELS.iter().find(|w| n <= w.0).map(|w| (w.1, w.2))
}

/// (y, ‖x‖ of shape `[rows]`) without recording.
pub(crate) fn l2_normalize_raw(x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let op = "l2_normalize";
    let (rows, n) = check(op, x, eps)?;
    let s = x.storage();
    let d = x.device();
    match d {
        Device::Cpu => {
            let (y, norm) = cpu::l2_normalize(s.cpu_f32(op)?, n, eps);
            let norm = if n == 0 { vec![0.0; rows] } else { norm };
            Ok((
                Tensor::from_vec(y, x.shape(), d)?,
                Tensor::from_vec(norm, &[rows], d)?,
            ))
        }
        Device::Cuda(gpu) => {
            let xb = s.cuda_f32(op)?;
            if x.numel() == 0 {
                return Ok((Tensor::zeros(x.shape(), d)?, Tensor::zeros(&[rows], d)?));
            }
            let (mut y, mut norm) = (gpu.alloc::<f32>(x.numel())?, gpu.alloc::<f32>(rows)?);
            let (r, nn) = (rows as u32, n as u32);
            match warp_kernels(n) {
                Some((name, _)) => {
                    let f = gpu.function("l2norm", name)?;
                    let mut b = gpu.stream.launch_builder(&f);
                    b.arg(xb)
                        .arg(&mut y)
                        .arg(&mut norm)
                        .arg(&r)
                        .arg(&nn)
                        .arg(&eps);
                    // SAFETY: warp w owns rows w, w + warps, … < rows: reads j < n of x, writes
                    // j < n of y and norm[row] (length rows).
                    unsafe { b.launch(launch_1d(rows * 32)) }.map_err(|e| Error::cuda(name, e))?;
                }
                None => {
                    let cache = n * 4 <= SMEM_CACHE_BYTES;
                    let cfg = block_per_row(rows, if cache { n * 4 } else { 0 });
                    let c = cache as i32;
                    // SAFETY: block b owns rows b, b + grid, … < rows, touching j < n of x and y and
                    // norm[row]; with cache = 1 it uses row_cache[0..n), which the launch provides.
                    launch!(
                        gpu,
                        "l2norm",
                        "l2norm_fwd_block_f32",
                        cfg,
                        xb,
                        &mut y,
                        &mut norm,
                        &r,
                        &nn,
                        &eps,
                        &c
                    )?;
                }
            }
            Ok((
                Tensor::from_storage(Storage::CudaF32(y), x.shape(), d),
                Tensor::from_storage(Storage::CudaF32(norm), &[rows], d),
            ))
        }
    }
}

/// dx from the forward's y and ‖x‖ and dy, without recording.
pub(crate) fn l2_normalize_bwd_raw(
    y: &Tensor,
    dy: &Tensor,
    norm: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let op = "l2_normalize backward";
    let (rows, n) = check(op, y, eps)?;
    same_shape(op, y, dy)?;
    same_device(op, &[y, dy, norm])?;
    if norm.shape() != [rows] {
        return Err(Error::shape(
            op,
            format!("norm {:?} for {rows} rows", norm.shape()),
        ));
    }
    let (ys, gs, ns) = (y.storage(), dy.storage(), norm.storage());
    let d = y.device();
    match d {
        Device::Cpu => Tensor::from_vec(
            cpu::l2_normalize_bwd(ys.cpu_f32(op)?, gs.cpu_f32(op)?, ns.cpu_f32(op)?, n, eps),
            y.shape(),
            d,
        ),
        Device::Cuda(gpu) => {
            let (yb, gb, nb) = (ys.cuda_f32(op)?, gs.cuda_f32(op)?, ns.cuda_f32(op)?);
            if y.numel() == 0 {
                return Tensor::zeros(y.shape(), d);
            }
            let mut dx = gpu.alloc::<f32>(y.numel())?;
            let (r, nn) = (rows as u32, n as u32);
            match warp_kernels(n) {
                Some((_, name)) => {
                    let f = gpu.function("l2norm", name)?;
                    let mut b = gpu.stream.launch_builder(&f);
                    b.arg(yb)
                        .arg(gb)
                        .arg(nb)
                        .arg(&mut dx)
                        .arg(&r)
                        .arg(&nn)
                        .arg(&eps);
                    // SAFETY: warp w owns rows w, w + warps, … < rows: reads j < n of y and dy and
                    // norm[row] (length rows), writes j < n of dx.
                    unsafe { b.launch(launch_1d(rows * 32)) }.map_err(|e| Error::cuda(name, e))?;
                }
                None => {
                    let cache = n * 8 <= SMEM_CACHE_BYTES;
                    let cfg = block_per_row(rows, if cache { n * 8 } else { 0 });
                    let c = cache as i32;
                    // SAFETY: block b owns rows b, b + grid, … < rows, touching j < n of y, dy, dx and
                    // norm[row]; with cache = 1 it uses row_cache[0..2n), which the launch provides.
                    launch!(
                        gpu,
                        "l2norm",
                        "l2norm_bwd_block_f32",
                        cfg,
                        yb,
                        gb,
                        nb,
                        &mut dx,
                        &r,
                        &nn,
                        &eps,
                        &c
                    )?;
                }
            }
            Ok(Tensor::from_storage(Storage::CudaF32(dx), y.shape(), d))
        }
    }
}

/// `y = x / max(‖x‖₂, eps)` over the last axis (PyTorch `F.normalize`; `DEFAULT_EPS` = 1e-12).
pub fn l2_normalize(tape: &mut Tape, x: &Tensor, eps: f32) -> Result<Tensor> {
    let (y, norm) = l2_normalize_raw(x, eps)?;
    let yc = y.clone();
    tape.record(&[x], &y, move |dy| {
        Ok(vec![Some(l2_normalize_bwd_raw(&yc, dy, &norm, eps)?)])
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{elementwise::mul, reduce::sum_all};
    use crate::testing::{assert_close, devices, gpu, gradcheck, random_vec};

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    #[test]
    fn l2_normalize_gradients_match_finite_differences() {
        let n = 5;
        // Rows: two ordinary, one with ‖x‖ ≈ 1e-5 < eps, one of zeros (both on the y = x/eps side).
        let mut x: Vec<f64> = f64s(&random_vec(4 * n, 1))
            .iter()
            .map(|v| 2.0 * v)
            .collect();
        for v in &mut x[2 * n..3 * n] {
            *v *= 1e-5;
        }
        x[3 * n..].fill(0.0);
        let w = f64s(&random_vec(4 * n, 2));
        for eps in [1e-3, DEFAULT_EPS as f64] {
            // loss = Σ w ⊙ l2_normalize(x)
            let loss = |x: &[f64]| {
                cpu::l2_normalize(x, n, eps)
                    .0
                    .iter()
                    .zip(&w)
                    .map(|(y, w)| y * w)
                    .sum::<f64>()
            };
            let (y, norm) = cpu::l2_normalize(&x, n, eps);
            let analytic = cpu::l2_normalize_bwd(&y, &w, &norm, n, eps);
            // At eps 1e-12 the last two rows sit where a 1e-6 finite-difference step crosses the
            // kink at ‖x‖ = eps or spans a curvature of 1/‖x‖²: check the ordinary rows only.
            let rows = if eps == 1e-3 { 4 } else { 2 };
            gradcheck(
                &format!("l2_normalize eps {eps}"),
                loss,
                &x[..rows * n],
                &analytic[..rows * n],
            );
        }
    }

    #[test]
    fn l2_normalize_through_tape_on_every_device() {
        let (shape, n) = ([2, 3, 4], 4);
        let mut xv: Vec<f32> = random_vec(24, 3).iter().map(|v| 3.0 * v).collect();
        xv[4..8].fill(0.0); // a zero row: y = 0, dx = dy/eps
        let wv = random_vec(24, 4);
        let eps = 1e-6;
        for device in devices() {
            let x = Tensor::from_slice(&xv, &shape, &device).unwrap();
            let w = Tensor::from_slice(&wv, &shape, &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            let y = l2_normalize(&mut tape, &x, eps).unwrap();
            let yw = mul(&mut tape, &y, &w).unwrap();
            let loss = sum_all(&mut tape, &yw).unwrap();
            let dx = tape
                .backward(&loss)
                .unwrap()
                .get(&x)
                .unwrap()
                .to_vec_f32()
                .unwrap();

            // Forward straight from the definition, in f64.
            let mut want = Vec::new();
            for row in xv.chunks(n) {
                let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                want.extend(
                    row.iter()
                        .map(|&v| (v as f64 / norm.max(eps as f64)) as f32),
                );
            }
            let yv = y.to_vec_f32().unwrap();
            assert_close(&yv, &want, 1e-6, 1e-7, &format!("forward on {device}"));
            let norms: Vec<f32> = xv
                .chunks(n)
                .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
                .collect();
            assert_close(
                &dx,
                &cpu::l2_normalize_bwd(&yv, &wv, &norms, n, eps),
                1e-5,
                1e-6,
                &format!("backward on {device}"),
            );
            assert_close(
                &dx[4..8],
                &wv[4..8].iter().map(|w| w / eps).collect::<Vec<_>>(),
                1e-6,
                0.0,
                "zero row",
            );
        }
    }

    /// Rows × columns at awkward sizes (row 1 of every multi-row case is zeros: the eps branch),
    /// plus 6000 (backward past its shared-memory cache) and 20000 (forward past it too). rtol
    /// 1e-5. y needs no atol beyond denormals: y_j = x_j / ‖x‖ has no cancellation. dx gets 1e-5
    /// of the largest |dx|: `dy − y·Σ dy·y` cancels, so an element's error is relative to the sum.
    #[test]
    fn l2_normalize_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        let cols: Vec<usize> = crate::testing::row_sizes()
            .into_iter()
            .chain([6000, 20000])
            .collect();
        for &n in &cols {
            for rows in [1, 3, 65] {
                let mut xv = random_vec(rows * n, (rows * n) as u64);
                if rows > 1 {
                    xv[n..2 * n].fill(0.0);
                }
                let gv = random_vec(rows * n, 1_000_003); // not a seed the x above can take
                let run = |d: &Device| {
                    let x = Tensor::from_slice(&xv, &[rows, n], d).unwrap();
                    let dy = Tensor::from_slice(&gv, &[rows, n], d).unwrap();
                    let (y, norm) = l2_normalize_raw(&x, DEFAULT_EPS).unwrap();
                    let dx = l2_normalize_bwd_raw(&y, &dy, &norm, DEFAULT_EPS).unwrap();
                    [y, norm, dx].map(|t| t.to_vec_f32().unwrap())
                };
                let (c, g) = (run(&Device::Cpu), run(&gpu));
                let what = format!("l2_normalize {rows}×{n}");
                assert_close(&g[0], &c[0], 1e-5, 1e-30, &format!("{what}: y"));
                assert_close(&g[1], &c[1], 1e-5, 1e-30, &format!("{what}: norm"));
                // The zero row's dx is dy/1e-12: scale the atol per row, not over the whole tensor.
                for (k, (dg, dc)) in g[2].chunks(n).zip(c[2].chunks(n)).enumerate() {
                    let scale = dc.iter().fold(0f32, |a, v| a.max(v.abs()));
                    assert_close(dg, dc, 1e-5, 1e-5 * scale, &format!("{what}: dx row {k}"));
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = Tensor::zeros(&[2, 4], &Device::Cpu).unwrap();
        let err = l2_normalize(&mut Tape::new(), &x, -1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("eps must be finite and ≥ 0"), "{err}");
        assert!(l2_normalize(&mut Tape::new(), &x, f32::INFINITY).is_err());
        let scalar = Tensor::full(1.0, &[], &Device::Cpu).unwrap();
        assert!(l2_normalize(&mut Tape::new(), &scalar, DEFAULT_EPS).is_err());
        let half = x.to_dtype(crate::tensor::DType::BF16).unwrap();
        assert!(l2_normalize(&mut Tape::new(), &half, DEFAULT_EPS).is_err());
    }

    #[test]
    fn empty_tensors_pass_through() {
        for device in devices() {
            for shape in [[0, 5], [3, 0]] {
                let x = Tensor::zeros(&shape, &device).unwrap();
                let (y, norm) = l2_normalize_raw(&x, DEFAULT_EPS).unwrap();
                assert_eq!((y.shape(), norm.shape()), (&shape[..], &[shape[0]][..]));
                assert!(y.to_vec_f32().unwrap().is_empty());
            }
        }
    }
}
