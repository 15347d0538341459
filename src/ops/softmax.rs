//! Softmax and log-softmax over the last axis.
//!
//! x is viewed as `[rows, n]` (n = the last dimension). Per row, with `m = max_j x_j` (subtracting
//! it keeps `exp` from overflowing and changes nothing mathematically):
//! `softmax:     y_j = exp(x_j − m) / Σ_k exp(x_k − m)`;
//! `log_softmax: y_j = (x_j − m) − log Σ_k exp(x_k − m)`.
//! Backward, from y alone: softmax `dx = y ⊙ (dy − Σ_j dy_j·y_j)`; log_softmax `dx = dy − exp(y)·Σ_j dy_j`.
//! `-inf` logits (masks) get weight 0; a row of only `-inf` gives NaN, as in PyTorch.
//!
//! Memory traffic: forward reads x once and writes y once (8 B/element in f32); backward reads y
//! and dy and writes dx (12 B/element). Kernels: `kernels/softmax.cu`. Rows up to 1024 wide get one
//! warp each with the row held in registers (attention's 50–77 keys would leave most of a block
//! idle); longer rows get one 512-thread block each, the row staged in shared memory when it fits
//! (`SMEM_CACHE_BYTES`), else re-read from L2 in the second pass.

use cudarc::driver::PushKernelArg;

use super::{block_per_row, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

/// The warp-per-row kernels: (widest row, forward, backward). Row j of lane l is x[l + 32k], k < VPT.
const WARP_KERNELS: [(usize, &str, &str); 7] = [
    (32, "softmax_fwd_w1_f32", "softmax_bwd_w1_f32"),
    (64, "softmax_fwd_w2_f32", "softmax_bwd_w2_f32"),
    (128, "softmax_fwd_w4_f32", "softmax_bwd_w4_f32"),
    (256, "softmax_fwd_w8_f32", "softmax_bwd_w8_f32"),
    (512, "softmax_fwd_w16_f32", "softmax_bwd_w16_f32"),
    (768, "softmax_fwd_w24_f32", "softmax_bwd_w24_f32"),
    (1024, "softmax_fwd_w32_f32", "softmax_bwd_w32_f32"),
];

/// Dynamic shared memory a block-per-row kernel may use to keep its row (under the 48 KiB that
/// needs no opt-in, leaving room for the reduction scratch).
const SMEM_CACHE_BYTES: usize = 44 * 1024;

/// The CPU twins, generic so gradient checks run them in f64.
pub mod cpu {
    use super::Real;
    use rayon::prelude::*;

    /// Softmax (or log-softmax) of each length-`n` row of `x`.
    pub fn softmax<T: Real>(x: &[T], n: usize, log: bool) -> Vec<T> {
        let mut y = vec![T::zero(); x.len()];
        if n == 0 {
            return y;
        }
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(yr, xr)| {
                let m = xr.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
                let s: T = xr.iter().map(|&v| (v - m).exp()).sum();
                for (yj, &xj) in yr.iter_mut().zip(xr) {
                    *yj = if log {
                        (xj - m) - s.ln()
                    } else {
                        (xj - m).exp() / s
                    };
                }
            });
        y
    }

    /// dx from the forward's output y and dy, row by row.
    pub fn softmax_bwd<T: Real>(y: &[T], dy: &[T], n: usize, log: bool) -> Vec<T> {
        let mut dx = vec![T::zero(); y.len()];
        if n == 0 {
            return dx;
        }
        dx.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(dy.par_chunks(n)))
            .for_each(|(dxr, (yr, gr))| {
                let dot: T = if log {
                    gr.iter().copied().sum()
                } else {
                    gr.iter().zip(yr).map(|(&g, &v)| g * v).sum()
                };
                for ((d, &v), &g) in dxr.iter_mut().zip(yr).zip(gr) {
                    *d = if log {
                        g - v.exp() * dot
                    } else {
                        v * (g - dot)
                    };
                }
            });
        dx
    }
}

/// (rows, n): x viewed as `[rows, last dimension]`.
fn rows_and_cols(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
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
    Ok((rows, n))
}

/// The warp-per-row kernel pair for rows of `n`, if n ≤ 1024.
fn warp_kernels(n: usize) -> Option<(&'static str, &'static str)> {
    WARP_KERNELS.iter().find(|w| n <= w.0).map(|w| (w.1, w.2))
}

/// y = softmax(x) (or log-softmax) over the last axis, without recording.
pub(crate) fn softmax_raw(x: &Tensor, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    let (rows, n) = rows_and_cols(op, x)?;
    let s = x.storage();
    match x.device() {
        Device::Cpu => {
            Tensor::from_vec(cpu::softmax(s.cpu_f32(op)?, n, log), x.shape(), x.device())
        }
        Device::Cuda(gpu) => {
            let xs = s.cuda_f32(op)?;
            let mut y = gpu.alloc::<f32>(x.numel())?;
            if rows > 0 && n > 0 {
                let (r, nn, l) = (rows as u32, n as u32, log as i32);
                match warp_kernels(n) {
                    Some((name, _)) => {
                        let f = gpu.function("softmax", name)?;
                        // SAFETY: warp w owns rows w, w + warps, … < rows and reads/writes only
                        // j < n of each; x and y hold rows·n floats.
                        unsafe {
                            gpu.stream
                                .launch_builder(&f)
                                .arg(xs)
                                .arg(&mut y)
                                .arg(&r)
                                .arg(&nn)
                                .arg(&l)
                                .launch(launch_1d(rows * 32))
                        }
                        .map_err(|e| Error::cuda(name, e))?;
                    }
                    None => {
                        let cache = n * 4 <= SMEM_CACHE_BYTES;
                        let cfg = block_per_row(rows, if cache { n * 4 } else { 0 });
                        let c = cache as i32;
                        // SAFETY: block b owns rows b, b + grid, … < rows and touches j < n of each;
                        // with cache = 1 it uses row_cache[0..n), which the launch provides.
                        launch!(
                            gpu,
                            "softmax",
                            "softmax_fwd_block_f32",
                            cfg,
                            xs,
                            &mut y,
                            &r,
                            &nn,
                            &l,
                            &c
                        )?;
                    }
                }
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// dx from y = softmax_raw(x, log) and dy, without recording.
pub(crate) fn softmax_bwd_raw(y: &Tensor, dy: &Tensor, log: bool) -> Result<Tensor> {
    let op = if log {
        "log_softmax backward"
    } else {
        "softmax backward"
    };
    super::same_device(op, &[y, dy])?;
    super::same_shape(op, y, dy)?;
    let (rows, n) = rows_and_cols(op, y)?;
    let (ys, gs) = (y.storage(), dy.storage());
    match y.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::softmax_bwd(ys.cpu_f32(op)?, gs.cpu_f32(op)?, n, log),
            y.shape(),
            y.device(),
        ),
        Device::Cuda(gpu) => {
            let (yb, gb) = (ys.cuda_f32(op)?, gs.cuda_f32(op)?);
            let mut dx = gpu.alloc::<f32>(y.numel())?;
            if rows > 0 && n > 0 {
                let (r, nn, l) = (rows as u32, n as u32, log as i32);
                match warp_kernels(n) {
                    Some((_, name)) => {
                        let f = gpu.function("softmax", name)?;
                        // SAFETY: warp w owns rows w, w + warps, … < rows and reads/writes only
                        // j < n of each; y, dy and dx hold rows·n floats.
                        unsafe {
                            gpu.stream
                                .launch_builder(&f)
                                .arg(yb)
                                .arg(gb)
                                .arg(&mut dx)
                                .arg(&r)
                                .arg(&nn)
                                .arg(&l)
                                .launch(launch_1d(rows * 32))
                        }
                        .map_err(|e| Error::cuda(name, e))?;
                    }
                    None => {
                        let cache = n * 8 <= SMEM_CACHE_BYTES;
                        let cfg = block_per_row(rows, if cache { n * 8 } else { 0 });
                        let c = cache as i32;
                        // SAFETY: block b owns rows b, b + grid, … < rows and touches j < n of each;
                        // with cache = 1 it uses row_cache[0..2n), which the launch provides.
                        launch!(
                            gpu,
                            "softmax",
                            "softmax_bwd_block_f32",
                            cfg,
                            yb,
                            gb,
                            &mut dx,
                            &r,
                            &nn,
                            &l,
                            &c
                        )?;
                    }
                }
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(dx),
                y.shape(),
                y.device(),
            ))
        }
    }
}

fn softmax_like(tape: &mut Tape, x: &Tensor, log: bool) -> Result<Tensor> {
    let y = softmax_raw(x, log)?;
    let yc = y.clone();
    tape.record(&[x], &y, move |dy| {
        Ok(vec![Some(softmax_bwd_raw(&yc, dy, log)?)])
    });
    Ok(y)
}

/// y = softmax(x) over the last axis; dx = y ⊙ (dy − Σ dy ⊙ y).
pub fn softmax(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    softmax_like(tape, x, false)
}

/// y = log_softmax(x) over the last axis; dx = dy − exp(y)·Σ dy.
pub fn log_softmax(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    softmax_like(tape, x, true)
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
    fn softmax_gradients_match_finite_differences() {
        let (rows, n) = (3, 7);
        let x: Vec<f64> = random_vec(rows * n, 1)
            .iter()
            .map(|&v| v as f64 * 3.0)
            .collect();
        let w = f64s(&random_vec(rows * n, 2));
        for log in [false, true] {
            // loss = Σ w ⊙ f(x)
            let loss = |x: &[f64]| {
                cpu::softmax(x, n, log)
                    .iter()
                    .zip(&w)
                    .map(|(y, w)| y * w)
                    .sum::<f64>()
            };
            let analytic = cpu::softmax_bwd(&cpu::softmax(&x, n, log), &w, n, log);
            gradcheck(
                if log { "log_softmax" } else { "softmax" },
                loss,
                &x,
                &analytic,
            );
        }
    }

    #[test]
    fn softmax_through_tape_on_every_device() {
        let shape = [2, 3, 5];
        let xv: Vec<f32> = random_vec(30, 3).iter().map(|v| v * 4.0).collect();
        let wv = random_vec(30, 4);
        for device in devices() {
            for log in [false, true] {
                let what = format!(
                    "{} on {device}",
                    if log { "log_softmax" } else { "softmax" }
                );
                let x = Tensor::from_slice(&xv, &shape, &device).unwrap();
                let w = Tensor::from_slice(&wv, &shape, &device).unwrap();
                let mut tape = Tape::new();
                tape.watch(&x);
                let y = if log {
                    log_softmax(&mut tape, &x)
                } else {
                    softmax(&mut tape, &x)
                }
                .unwrap();
                assert_eq!(y.shape(), &shape);
                let yw = mul(&mut tape, &y, &w).unwrap();
                let loss = sum_all(&mut tape, &yw).unwrap();
                let dx = tape
                    .backward(&loss)
                    .unwrap()
                    .get(&x)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();

                // Forward straight from the definition (no max subtraction: these inputs are small).
                let yv = y.to_vec_f32().unwrap();
                let mut want = Vec::new();
                for row in xv.chunks(5) {
                    let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
                    want.extend(row.iter().map(|&v| {
                        if log {
                            (v as f64 - z.ln()) as f32
                        } else {
                            ((v as f64).exp() / z) as f32
                        }
                    }));
                }
                assert_close(&yv, &want, 1e-5, 1e-6, &format!("{what}: forward"));
                assert_close(
                    &dx,
                    &cpu::softmax_bwd(&yv, &wv, 5, log),
                    1e-5,
                    1e-6,
                    &format!("{what}: backward"),
                );
            }
        }
    }

    #[test]
    fn softmax_is_stable_and_honours_masks_on_every_device() {
        let inf = f32::INFINITY;
        // Huge logits would overflow exp without the max subtraction; -inf entries are masked out.
        let xv = [1000.0, 1001.0, 1002.0, -inf, 0.0, -inf, 2.0, -inf];
        let e = |v: f32| v.exp();
        let z0 = e(-2.0) + e(-1.0) + 1.0;
        let z1 = 1.0 + e(2.0);
        let want = [
            e(-2.0) / z0,
            e(-1.0) / z0,
            1.0 / z0,
            0.0,
            1.0 / z1,
            0.0,
            e(2.0) / z1,
            0.0,
        ];
        for device in devices() {
            let x = Tensor::from_slice(&xv, &[2, 4], &device).unwrap();
            let y = softmax(&mut Tape::new(), &x).unwrap().to_vec_f32().unwrap();
            assert_close(&y, &want, 1e-6, 1e-7, &format!("softmax on {device}"));
            let ly = log_softmax(&mut Tape::new(), &x)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_eq!(ly[3], -inf, "masked log-probability on {device}");
            assert_close(
                &[ly[0], ly[6]],
                &[want[0].ln(), want[6].ln()],
                1e-6,
                1e-6,
                &format!("log_softmax on {device}"),
            );
        }
    }

    /// Rows × columns at awkward sizes, plus 6000 (backward past its shared-memory cache) and
    /// 20000 (forward past it too), forward and backward, rtol 1e-5. Forward atol covers y ≈ 1/n.
    /// Backward atol is 1e-5 of the largest |dx|: `dy − Σ dy·y` (or `dy − exp(y)·Σ dy`) cancels,
    /// so an element's error is relative to the row's reduction, not to the element (the f32 CPU
    /// twin alone is within half of this of its f64 run at every size here).
    #[test]
    fn softmax_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        let cols: Vec<usize> = crate::testing::row_sizes()
            .into_iter()
            .chain([6000, 20000])
            .collect();
        for &n in &cols {
            for rows in [1, 3, 65] {
                let xv: Vec<f32> = random_vec(rows * n, (rows * n) as u64)
                    .iter()
                    .map(|v| v * 5.0)
                    .collect();
                let gv = random_vec(rows * n, 1_000_003); // not a seed the x above can take
                for log in [false, true] {
                    let run = |d: &Device| {
                        let x = Tensor::from_slice(&xv, &[rows, n], d).unwrap();
                        let dy = Tensor::from_slice(&gv, &[rows, n], d).unwrap();
                        let y = softmax_raw(&x, log).unwrap();
                        let dx = softmax_bwd_raw(&y, &dy, log).unwrap();
                        (y.to_vec_f32().unwrap(), dx.to_vec_f32().unwrap())
                    };
                    let (yc, dxc) = run(&Device::Cpu);
                    let (yg, dxg) = run(&gpu);
                    let what =
                        format!("{} {rows}×{n}", if log { "log_softmax" } else { "softmax" });
                    let y_atol = if log { 1e-5 } else { 1e-7 };
                    assert_close(&yg, &yc, 1e-5, y_atol, &format!("{what} forward"));
                    let dx_scale = dxc.iter().fold(0f32, |a, v| a.max(v.abs()));
                    assert_close(
                        &dxg,
                        &dxc,
                        1e-5,
                        1e-5 * dx_scale,
                        &format!("{what} backward"),
                    );
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let scalar = Tensor::full(1.0, &[], &Device::Cpu).unwrap();
        let err = softmax(&mut Tape::new(), &scalar).unwrap_err().to_string();
        assert!(err.contains("scalar"), "{err}");
        let half = Tensor::zeros(&[2, 3], &Device::Cpu)
            .unwrap()
            .to_dtype(crate::tensor::DType::BF16)
            .unwrap();
        assert!(log_softmax(&mut Tape::new(), &half).is_err());
        let y = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
        let dy = Tensor::zeros(&[3, 2], &Device::Cpu).unwrap();
        assert!(softmax_bwd_raw(&y, &dy, false).is_err());
    }

    #[test]
    fn empty_tensors_pass_through() {
        for device in devices() {
            for shape in [[0, 5], [3, 0]] {
                let x = Tensor::zeros(&shape, &device).unwrap();
                let y = softmax(&mut Tape::new(), &x).unwrap();
                assert_eq!(y.shape(), &shape);
                assert!(y.to_vec_f32().unwrap().is_empty());
            }
        }
    }
}
