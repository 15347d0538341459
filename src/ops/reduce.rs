//! Reductions: sum, mean and max over one axis, and sum/mean over the whole tensor.
//!
//! x is viewed as `[outer, n, inner]` around the reduced axis; `y[o, r] = Σ_j x[o, j, r]` (·1/n
//! for mean) or `max_j x[o, j, r]`. Backward: sum/mean broadcast dy back along the axis
//! (`dx[o, j, r] = dy[o, r]·scale`); max sends dy to the first maximal element of each column.
//!
//! Traffic: reads x once (4 B/element), writes outer·inner values. Kernels: `kernels/reduce.cu`;
//! one block per row when inner = 1 (contiguous), one thread per column otherwise (coalesced
//! across inner); the whole-tensor sum is two passes (block partials, then one row).

use cudarc::driver::LaunchConfig;

use super::{split_at_axis, Real};
use crate::autograd::Tape;
use crate::error::Result;
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reduce {
    Sum,
    Max,
}

pub mod cpu {
    use super::{Real, Reduce};

    pub fn reduce_axis<T: Real>(
        x: &[T],
        outer: usize,
        n: usize,
        inner: usize,
        kind: Reduce,
        scale: T,
    ) -> Vec<T> {
        let mut y = vec![
            if kind == Reduce::Sum {
                T::zero()
            } else {
                T::neg_infinity()
            };
            outer * inner
        ];
        for o in 0..outer {
            for j in 0..n {
                let row = &x[(o * n + j) * inner..][..inner];
                for (acc, &v) in y[o * inner..][..inner].iter_mut().zip(row) {
                    *acc = if kind == Reduce::Sum {
                        *acc + v
                    } else {
                        acc.max(v)
                    };
                }
            }
        }
        y.iter().map(|&v| v * scale).collect()
    }

    pub fn broadcast_axis<T: Real>(
        dy: &[T],
        outer: usize,
        n: usize,
        inner: usize,
        scale: T,
    ) -> Vec<T> {
        let mut dx = Vec::with_capacity(outer * n * inner);
        for o in 0..outer {
            for _ in 0..n {
                dx.extend(dy[o * inner..][..inner].iter().map(|&v| v * scale));
            }
        }
        dx
    }

    pub fn max_bwd<T: Real>(
        x: &[T],
        y: &[T],
        dy: &[T],
        outer: usize,
        n: usize,
        inner: usize,
    ) -> Vec<T> {
        let mut dx = vec![T::zero(); x.len()];
        for o in 0..outer {
            for r in 0..inner {
                if let Some(j) = (0..n).find(|&j| x[(o * n + j) * inner + r] == y[o * inner + r]) {
                    dx[(o * n + j) * inner + r] = dy[o * inner + r];
                }
            }
        }
        dx
    }
}

/// Reduces over `axis` (removed from the shape) without recording.
pub(crate) fn reduce_axis_raw(x: &Tensor, axis: usize, kind: Reduce, scale: f32) -> Result<Tensor> {
    let (outer, n, inner) = split_at_axis(x.shape(), axis);
    let mut shape = x.shape().to_vec();
    shape.remove(axis);
    match x.device() {
        Device::Cpu => {
            let s = x.storage();
            Tensor::from_vec(
                cpu::reduce_axis(s.cpu_f32("reduce")?, outer, n, inner, kind, scale),
                &shape,
                x.device(),
            )
        }
        Device::Cuda(gpu) => {
            let s = x.storage();
            let xs = s.cuda_f32("reduce")?;
            let mut y = gpu.alloc::<f32>(outer * inner)?;
            let op = kind as i32;
            if inner == 1 {
                let cfg = LaunchConfig {
                    grid_dim: (outer.max(1) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let (rows, nn) = (outer as u32, n as u64);
                // SAFETY: block `row` reads x[row·n .. (row+1)·n], writes y[row].
                launch!(
                    gpu,
                    "reduce",
                    "reduce_rows_f32",
                    cfg,
                    xs,
                    &mut y,
                    &rows,
                    &nn,
                    &op,
                    &scale
                )?;
            } else {
                let (o, nn, i) = (outer as u32, n as u32, inner as u32);
                // SAFETY: thread (o, r) reads column x[o, :, r], writes y[o, r].
                launch!(
                    gpu,
                    "reduce",
                    "reduce_cols_f32",
                    launch_1d(outer * inner),
                    xs,
                    &mut y,
                    &o,
                    &nn,
                    &i,
                    &op,
                    &scale
                )?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                &shape,
                x.device(),
            ))
        }
    }
}

/// Σ of all elements (times `scale`) as a one-element tensor of shape `[]`.
pub(crate) fn sum_all_raw(x: &Tensor, scale: f32) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => {
            let s = x.storage();
            // f64 accumulation: the loss of a big batch should not depend on summation order.
            let total: f64 = s.cpu_f32("sum")?.iter().map(|&v| v as f64).sum();
            Tensor::from_vec(vec![total as f32 * scale], &[], x.device())
        }
        Device::Cuda(gpu) => {
            let n = x.numel();
            let blocks = n.div_ceil(256).clamp(1, 1024);
            let s = x.storage();
            let mut partials = gpu.alloc::<f32>(blocks)?;
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let nn = n as u64;
            // SAFETY: grid-stride over n inputs; block b writes partials[b], b < blocks.
            launch!(
                gpu,
                "reduce",
                "partial_sum_f32",
                cfg,
                s.cuda_f32("sum")?,
                &mut partials,
                &nn
            )?;
            let mut y = gpu.alloc::<f32>(1)?;
            let one = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (rows, nb, op) = (1u32, blocks as u64, 0i32);
            // SAFETY: one block reads the `blocks` partials, writes y[0].
            launch!(
                gpu,
                "reduce",
                "reduce_rows_f32",
                one,
                &partials,
                &mut y,
                &rows,
                &nb,
                &op,
                &scale
            )?;
            Ok(Tensor::from_storage(Storage::CudaF32(y), &[], x.device()))
        }
    }
}

/// dx = dy broadcast along `axis` of `shape`, times `scale`.
pub(crate) fn broadcast_axis_raw(
    dy: &Tensor,
    shape: &[usize],
    axis: usize,
    scale: f32,
) -> Result<Tensor> {
    let (outer, n, inner) = split_at_axis(shape, axis);
    match dy.device() {
        Device::Cpu => {
            let s = dy.storage();
            Tensor::from_vec(
                cpu::broadcast_axis(s.cpu_f32("reduce backward")?, outer, n, inner, scale),
                shape,
                dy.device(),
            )
        }
        Device::Cuda(gpu) => {
            let total = outer * n * inner;
            let s = dy.storage();
            let mut dx = gpu.alloc::<f32>(total)?;
            let (o, nn, i) = (outer as u32, n as u32, inner as u32);
            // SAFETY: writes every element of dx [outer, n, inner], reads dy [outer, inner].
            launch!(
                gpu,
                "reduce",
                "broadcast_axis_f32",
                launch_1d(total),
                s.cuda_f32("reduce backward")?,
                &mut dx,
                &o,
                &nn,
                &i,
                &scale
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(dx),
                shape,
                dy.device(),
            ))
        }
    }
}

fn max_bwd_raw(x: &Tensor, y: &Tensor, dy: &Tensor, axis: usize) -> Result<Tensor> {
    let (outer, n, inner) = split_at_axis(x.shape(), axis);
    let (xs, ys, dys) = (x.storage(), y.storage(), dy.storage());
    let op = "max backward";
    match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::max_bwd(
                xs.cpu_f32(op)?,
                ys.cpu_f32(op)?,
                dys.cpu_f32(op)?,
                outer,
                n,
                inner,
            ),
            x.shape(),
            x.device(),
        ),
        Device::Cuda(gpu) => {
            let mut dx = gpu.alloc::<f32>(x.numel())?;
            let (o, nn, i) = (outer as u32, n as u32, inner as u32);
            // SAFETY: thread (o, r) writes the whole column dx[o, :, r].
            launch!(
                gpu,
                "reduce",
                "max_bwd_f32",
                launch_1d(outer * inner),
                xs.cuda_f32(op)?,
                ys.cuda_f32(op)?,
                dys.cuda_f32(op)?,
                &mut dx,
                &o,
                &nn,
                &i
            )?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(dx),
                x.shape(),
                x.device(),
            ))
        }
    }
}

fn sum_like(tape: &mut Tape, x: &Tensor, axis: isize, mean: bool) -> Result<Tensor> {
    let a = x.axis(axis)?;
    let n = x.shape()[a];
    let scale = if mean { 1.0 / n.max(1) as f32 } else { 1.0 };
    let y = reduce_axis_raw(x, a, Reduce::Sum, scale)?;
    let shape = x.shape().to_vec();
    tape.record(&[x], &y, move |dy| {
        Ok(vec![Some(broadcast_axis_raw(dy, &shape, a, scale)?)])
    });
    Ok(y)
}

/// Σ over `axis` (the axis is removed).
pub fn sum(tape: &mut Tape, x: &Tensor, axis: isize) -> Result<Tensor> {
    sum_like(tape, x, axis, false)
}

/// Mean over `axis` (the axis is removed).
pub fn mean(tape: &mut Tape, x: &Tensor, axis: isize) -> Result<Tensor> {
    sum_like(tape, x, axis, true)
}

/// Maximum over `axis` (the axis is removed); the gradient goes to the first maximum.
pub fn max(tape: &mut Tape, x: &Tensor, axis: isize) -> Result<Tensor> {
    let a = x.axis(axis)?;
    let y = reduce_axis_raw(x, a, Reduce::Max, 1.0)?;
    let (xc, yc) = (x.clone(), y.clone());
    tape.record(&[x], &y, move |dy| {
        Ok(vec![Some(max_bwd_raw(&xc, &yc, dy, a)?)])
    });
    Ok(y)
}

fn sum_all_like(tape: &mut Tape, x: &Tensor, scale: f32) -> Result<Tensor> {
    let y = sum_all_raw(x, scale)?;
    let shape = x.shape().to_vec();
    tape.record(&[x], &y, move |dy| {
        let flat = dy.reshaped(&[1])?;
        Ok(vec![Some(
            broadcast_axis_raw(&flat, &[1, shape.iter().product()], 1, scale)?.reshaped(&shape)?,
        )])
    });
    Ok(y)
}

/// Σ of every element, shape `[]`.
pub fn sum_all(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    sum_all_like(tape, x, 1.0)
}

/// Mean of every element, shape `[]`.
pub fn mean_all(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    sum_all_like(tape, x, 1.0 / x.numel().max(1) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, parity_sizes, random_vec};

    #[test]
    fn reduce_gradients_match_finite_differences() {
        let (outer, n, inner) = (3, 5, 4);
        let x: Vec<f64> = random_vec(60, 1).iter().map(|&v| v as f64).collect();
        let w: Vec<f64> = random_vec(12, 2).iter().map(|&v| v as f64).collect();
        for (kind, scale) in [(Reduce::Sum, 1.0), (Reduce::Sum, 0.2), (Reduce::Max, 1.0)] {
            let loss = |x: &[f64]| {
                cpu::reduce_axis(x, outer, n, inner, kind, scale)
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            };
            let analytic = match kind {
                Reduce::Sum => cpu::broadcast_axis(&w, outer, n, inner, scale),
                Reduce::Max => cpu::max_bwd(
                    &x,
                    &cpu::reduce_axis(&x, outer, n, inner, kind, 1.0),
                    &w,
                    outer,
                    n,
                    inner,
                ),
            };
            gradcheck(&format!("{kind:?} ×{scale}"), loss, &x, &analytic);
        }
    }

    #[test]
    fn reductions_through_tape_on_every_device() {
        for device in devices() {
            let xv = random_vec(24, 5);
            let x = Tensor::from_slice(&xv, &[2, 3, 4], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            let m = mean(&mut tape, &x, 1).unwrap();
            assert_eq!(m.shape(), &[2, 4]);
            let mx = max(&mut tape, &x, -1).unwrap();
            assert_eq!(mx.shape(), &[2, 3]);
            let (sm, smx) = (
                sum_all(&mut tape, &m).unwrap(),
                sum_all(&mut tape, &mx).unwrap(),
            );
            let total = crate::ops::elementwise::add(&mut tape, &sm, &smx).unwrap();
            let g = tape
                .backward(&total)
                .unwrap()
                .get(&x)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let mut want = vec![1.0 / 3.0; 24];
            for row in 0..6 {
                let r = &xv[row * 4..][..4];
                let j = (0..4).fold(0, |b, j| if r[j] > r[b] { j } else { b });
                want[row * 4 + j] += 1.0;
            }
            assert_close(&g, &want, 1e-5, 1e-6, &format!("grad on {device}"));
            let want_mean: Vec<f32> = (0..8)
                .map(|k| {
                    (0..3)
                        .map(|j| xv[(k / 4) * 12 + j * 4 + k % 4])
                        .sum::<f32>()
                        / 3.0
                })
                .collect();
            assert_close(&m.to_vec_f32().unwrap(), &want_mean, 1e-5, 1e-6, "mean");
        }
    }

    #[test]
    fn reduce_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in parity_sizes() {
            for shape in [[n, 3, 1], [2, n, 1], [3, 5, n]] {
                let len: usize = shape.iter().product();
                let xv = random_vec(len, n as u64);
                let run = |d: &Device| {
                    let x = Tensor::from_slice(&xv, &shape, d).unwrap();
                    let mut out = Vec::new();
                    for axis in 0..3 {
                        let s = reduce_axis_raw(&x, axis, Reduce::Sum, 0.5).unwrap();
                        let m = reduce_axis_raw(&x, axis, Reduce::Max, 1.0).unwrap();
                        out.extend(s.to_vec_f32().unwrap());
                        out.extend(m.to_vec_f32().unwrap());
                        out.extend(
                            broadcast_axis_raw(&s, &shape, axis, 2.0)
                                .unwrap()
                                .to_vec_f32()
                                .unwrap(),
                        );
                        out.extend(max_bwd_raw(&x, &m, &m, axis).unwrap().to_vec_f32().unwrap());
                    }
                    out.extend(sum_all_raw(&x, 1.0).unwrap().to_vec_f32().unwrap());
                    out
                };
                assert_close(
                    &run(&gpu),
                    &run(&Device::Cpu),
                    1e-4,
                    1e-4,
                    &format!("reduce {shape:?}"),
                );
            }
        }
    }
}
