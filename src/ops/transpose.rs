//! Layout ops: `reshape` (no copy) and `transpose` of two axes.
//!
//! transpose: x viewed as `[A, n_i, B, n_j, C]` becomes `[A, n_j, B, n_i, C]`; its backward is
//! the same transpose of dy. reshape: same buffer, new shape; backward reshapes dy back.
//! Traffic: transpose reads and writes every element once (8 B/element in f32); reshape moves
//! nothing. Kernel: `kernels/transpose.cu`, one thread per output element (coalesced writes).

use cudarc::driver::PushKernelArg;

use super::{bf16_on_cpu, narrow, widen, Real};

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{
    alloc_storage, arg_buffer, arg_buffer_mut, kernel_for, launch_1d, Device, Tensor,
};

pub mod cpu {
    use super::Real;

    /// `[A, ni, B, nj, C]` → `[A, nj, B, ni, C]`. Parallel over A; 32×32 tiles over (i, j) so
    /// that both the reads and the writes stay in cache when C is small.
    pub fn transpose<T: Real>(
        x: &[T],
        a: usize,
        ni: usize,
        b: usize,
        nj: usize,
        c: usize,
    ) -> Vec<T> {
        use rayon::prelude::*;
        const TILE: usize = 32;
        let mut y = vec![T::zero(); x.len()];
        let per_a = ni * b * nj * c;
        debug_assert_eq!(x.len(), a * per_a);
        if per_a == 0 {
            return y;
        }
        y.par_chunks_mut(per_a)
            .zip(x.par_chunks(per_a))
            .for_each(|(ya, xa)| {
                for bb in 0..b {
                    for j0 in (0..nj).step_by(TILE) {
                        for i0 in (0..ni).step_by(TILE) {
                            for j in j0..(j0 + TILE).min(nj) {
                                for i in i0..(i0 + TILE).min(ni) {
                                    let src = ((i * b + bb) * nj + j) * c;
                                    let dst = ((j * b + bb) * ni + i) * c;
                                    if c == 1 {
                                        ya[dst] = xa[src];
                                    } else {
                                        ya[dst..dst + c].copy_from_slice(&xa[src..src + c]);
                                    }
                                }
                            }
                        }
                    }
                }
            });
        y
    }
}

/// The `[A, n_i, B, n_j, C]` view of `shape` for axes `i < j`.
fn five_dims(shape: &[usize], i: usize, j: usize) -> [usize; 5] {
    let p = |r: std::ops::Range<usize>| shape[r].iter().product::<usize>();
    [
        p(0..i),
        shape[i],
        p(i + 1..j),
        shape[j],
        p(j + 1..shape.len()),
    ]
}

pub(crate) fn transpose_raw(x: &Tensor, axis0: usize, axis1: usize) -> Result<Tensor> {
    let (i, j) = (axis0.min(axis1), axis0.max(axis1));
    let mut shape = x.shape().to_vec();
    if i == j {
        return x.reshaped(&shape);
    }
    shape.swap(i, j);
    let [a, ni, b, nj, c] = five_dims(x.shape(), i, j);
    if bf16_on_cpu(x) {
        // A copy: widening and narrowing back are exact.
        return narrow(&transpose_raw(&widen(x)?, axis0, axis1)?);
    }
    match x.device() {
        Device::Cpu => {
            let s = x.storage();
            Tensor::from_vec(
                cpu::transpose(s.cpu_f32("transpose")?, a, ni, b, nj, c),
                &shape,
                x.device(),
            )
        }
        Device::Cuda(gpu) => {
            let n = x.numel();
            // bf16 moves as 2-byte bits.
            let name = kernel_for("transpose", x.dtype(), "transpose_f32", "transpose_b16")?;
            let s = x.storage();
            let mut y = alloc_storage(gpu, x.dtype(), n)?;
            let f = gpu.function("transpose", name)?;
            let mut lb = gpu.stream.launch_builder(&f);
            arg_buffer(&mut lb, &s, "transpose")?;
            arg_buffer_mut(&mut lb, &mut y, "transpose")?;
            let d = [a as u32, ni as u32, b as u32, nj as u32, c as u32];
            lb.arg(&d[0]).arg(&d[1]).arg(&d[2]).arg(&d[3]).arg(&d[4]);
            // SAFETY: one thread per output element; the source index is a permutation within n.
            unsafe { lb.launch(launch_1d(n)) }.map_err(|e| Error::cuda(name, e))?;
            Ok(Tensor::from_storage(y, &shape, x.device()))
        }
    }
}

/// Swaps two axes (negative axes count from the end). Copies.
pub fn transpose(tape: &mut Tape, x: &Tensor, axis0: isize, axis1: isize) -> Result<Tensor> {
    let (a0, a1) = (x.axis(axis0)?, x.axis(axis1)?);
    let y = transpose_raw(x, a0, a1)?;
    tape.record(&[x], &y, move |dy| {
        Ok(vec![Some(transpose_raw(dy, a0, a1)?)])
    });
    Ok(y)
}

/// The same values under another shape with equal element count (no copy).
pub fn reshape(tape: &mut Tape, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let y = x.reshaped(shape)?;
    let from = x.shape().to_vec();
    tape.record(&[x], &y, move |dy| Ok(vec![Some(dy.reshaped(&from)?)]));
    Ok(y)
}

/// Resolves a shape with at most one `-1` (inferred) dimension for `numel` elements.
pub fn infer_shape(numel: usize, shape: &[isize]) -> Result<Vec<usize>> {
    let known: usize = shape
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let holes = shape.iter().filter(|&&d| d < 0).count();
    if holes > 1
        || (holes == 1 && (known == 0 || numel % known != 0))
        || (holes == 0 && known != numel)
    {
        return Err(Error::shape(
            "reshape",
            format!("cannot view {numel} elements as {shape:?}"),
        ));
    }
    Ok(shape
        .iter()
        .map(|&d| if d < 0 { numel / known } else { d as usize })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, parity_sizes, random_vec};

    #[test]
    fn transpose_is_its_own_inverse_and_moves_values() {
        let x: Vec<f64> = (0..24).map(|v| v as f64).collect();
        // [2,3,4] swap axes 0 and 2 → [4,3,2]: y[c,b,a] = x[a,b,c].
        let y = cpu::transpose(&x, 1, 2, 3, 4, 1);
        for a in 0..2 {
            for b in 0..3 {
                for c in 0..4 {
                    assert_eq!(y[(c * 3 + b) * 2 + a], x[(a * 3 + b) * 4 + c]);
                }
            }
        }
        assert_eq!(cpu::transpose(&y, 1, 4, 3, 2, 1), x);
    }

    #[test]
    fn transpose_backward_is_the_finite_difference_gradient() {
        // loss = Σ w ⊙ transpose(x); its gradient is transpose(w) back along the same axes.
        let (a, ni, b, nj, c) = (2, 3, 2, 4, 2);
        let x: Vec<f64> = random_vec(96, 1).iter().map(|&v| v as f64).collect();
        let w: Vec<f64> = random_vec(96, 2).iter().map(|&v| v as f64).collect();
        let loss = |x: &[f64]| {
            cpu::transpose(x, a, ni, b, nj, c)
                .iter()
                .zip(&w)
                .map(|(p, q)| p * q)
                .sum::<f64>()
        };
        crate::testing::gradcheck("transpose", loss, &x, &cpu::transpose(&w, a, nj, b, ni, c));
    }

    #[test]
    fn transpose_and_reshape_backward_on_every_device() {
        for device in devices() {
            let xv = random_vec(60, 1);
            let x = Tensor::from_slice(&xv, &[3, 4, 5], &device).unwrap();
            let w = Tensor::from_vec(random_vec(60, 2), &[5, 12], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            let t = transpose(&mut tape, &x, 0, -1).unwrap();
            assert_eq!(t.shape(), &[5, 4, 3]);
            let r = reshape(&mut tape, &t, &[5, 12]).unwrap();
            let p = crate::ops::elementwise::mul(&mut tape, &r, &w).unwrap();
            let loss = crate::ops::reduce::sum_all(&mut tape, &p).unwrap();
            let g = tape
                .backward(&loss)
                .unwrap()
                .get(&x)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            // d loss / d x[a,b,c] = w[c, b*3 + a]
            let wv = w.to_vec_f32().unwrap();
            let want: Vec<f32> = (0..60)
                .map(|k| (k / 20, (k / 5) % 4, k % 5))
                .map(|(a, b, c)| wv[c * 12 + b * 3 + a])
                .collect();
            assert_close(&g, &want, 0.0, 0.0, &format!("transpose grad on {device}"));
        }
    }

    #[test]
    fn transpose_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in parity_sizes() {
            let shape = [2, n, 3, 5];
            let xv = random_vec(shape.iter().product(), n as u64);
            for (a0, a1) in [(0, 1), (1, 3), (0, 3), (2, 3)] {
                let run = |d: &Device| {
                    transpose_raw(&Tensor::from_slice(&xv, &shape, d).unwrap(), a0, a1)
                        .unwrap()
                        .to_vec_f32()
                        .unwrap()
                };
                assert_close(
                    &run(&gpu),
                    &run(&Device::Cpu),
                    0.0,
                    0.0,
                    &format!("transpose {shape:?} ({a0},{a1})"),
                );
            }
        }
    }

    #[test]
    fn reshape_checks_element_count() {
        let x = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
        assert!(reshape(&mut Tape::new(), &x, &[4, 2]).is_err());
        assert_eq!(infer_shape(6, &[-1, 2]).unwrap(), vec![3, 2]);
        assert!(infer_shape(6, &[-1, 4]).is_err());
    }

    /// bf16 transposes move bits: identical on both devices (and equal to the f32 transpose).
    #[test]
    fn bf16_transpose_cuda_matches_cpu() {
        let x =
            Tensor::from_vec(random_vec(3 * 5 * 7 * 2, 1), &[3, 5, 7, 2], &Device::Cpu).unwrap();
        for (a0, a1) in [(0, 1), (1, 3), (0, 3), (2, 3)] {
            crate::testing::bf16_parity(
                &format!("transpose {a0}↔{a1}"),
                std::slice::from_ref(&x),
                0.0,
                0.0,
                |t| transpose(&mut Tape::inference(), &t[0], a0, a1),
            );
            let want = transpose(
                &mut Tape::inference(),
                &x.to_dtype(crate::tensor::DType::BF16)
                    .unwrap()
                    .to_dtype(crate::tensor::DType::F32)
                    .unwrap(),
                a0,
                a1,
            )
            .unwrap();
            let got = transpose(
                &mut Tape::inference(),
                &x.to_dtype(crate::tensor::DType::BF16).unwrap(),
                a0,
                a1,
            )
            .unwrap();
            assert_eq!(got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
        }
    }
}
