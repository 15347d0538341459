//! `concat` along an axis and `slice` of a range of an axis.
//!
//! Both are one copy of `[outer, len, inner]` blocks between tensors viewed as `[outer, n, inner]`
//! (`kernels/concat.cu::copy_axis_f32`). concat's backward slices dy back into its inputs; slice's
//! backward writes dy into zeros of the input's shape. Traffic: 8 B per moved element in f32.

use super::{same_device, split_at_axis, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

pub mod cpu {
    use super::Real;

    /// `copy_axis` for any copyable element (bf16 rows move as bits).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_axis_bits<T: Copy>(
        src: &[T],
        dst: &mut [T],
        outer: usize,
        n_src: usize,
        n_dst: usize,
        inner: usize,
        src_off: usize,
        dst_off: usize,
        len: usize,
    ) {
        for o in 0..outer {
            let s = &src[(o * n_src + src_off) * inner..][..len * inner];
            dst[(o * n_dst + dst_off) * inner..][..len * inner].copy_from_slice(s);
        }
    }

    /// `dst[o, dst_off + i, r] = src[o, src_off + i, r]` for `i < len`.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_axis<T: Real>(
        src: &[T],
        dst: &mut [T],
        outer: usize,
        n_src: usize,
        n_dst: usize,
        inner: usize,
        src_off: usize,
        dst_off: usize,
        len: usize,
    ) {
        copy_axis_bits(src, dst, outer, n_src, n_dst, inner, src_off, dst_off, len)
    }
}

/// Copies `len` rows of `src` (from `src_off` along `axis`) into `dst` at `dst_off`.
/// `dst` must be a fresh tensor that no one else has seen yet (outputs under construction).
fn copy_axis_into(
    src: &Tensor,
    dst: &Tensor,
    axis: usize,
    src_off: usize,
    dst_off: usize,
    len: usize,
) -> Result<()> {
    let (outer, n_src, inner) = split_at_axis(src.shape(), axis);
    let n_dst = dst.shape()[axis];
    if outer * len * inner == 0 {
        return Ok(());
    }
    let s = src.storage();
    let mut d = dst.storage_mut();
    if s.dtype() != d.dtype() {
        return Err(Error::Invalid(format!(
            "concat: inputs are {} and {}: convert one so all have the same dtype",
            d.dtype(),
            s.dtype()
        )));
    }
    match (src.device(), &*s, &mut *d) {
        (Device::Cpu, Storage::CpuBF16(sv), Storage::CpuBF16(dv)) => {
            cpu::copy_axis_bits(sv, dv, outer, n_src, n_dst, inner, src_off, dst_off, len)
        }
        (Device::Cpu, _, _) => cpu::copy_axis(
            s.cpu_f32("concat")?,
            d.cpu_f32_mut("concat")?,
            outer,
            n_src,
            n_dst,
            inner,
            src_off,
            dst_off,
            len,
        ),
        (Device::Cuda(gpu), Storage::CudaBF16(sv), Storage::CudaBF16(dv)) => {
            let a = [outer, n_src, n_dst, inner, src_off, dst_off, len].map(|v| v as u32);
            // SAFETY: as copy_axis_f32, on 2-byte elements.
            launch!(
                gpu,
                "concat",
                "copy_axis_b16",
                launch_1d(outer * len * inner),
                sv,
                dv,
                &a[0],
                &a[1],
                &a[2],
                &a[3],
                &a[4],
                &a[5],
                &a[6]
            )?;
        }
        (Device::Cuda(gpu), _, _) => {
            let a = [outer, n_src, n_dst, inner, src_off, dst_off, len].map(|v| v as u32);
            // SAFETY: offsets + len lie within n_src and n_dst (checked by callers).
            launch!(
                gpu,
                "concat",
                "copy_axis_f32",
                launch_1d(outer * len * inner),
                s.cuda_f32("concat")?,
                d.cuda_f32_mut("concat")?,
                &a[0],
                &a[1],
                &a[2],
                &a[3],
                &a[4],
                &a[5],
                &a[6]
            )?;
        }
    }
    Ok(())
}

pub(crate) fn slice_raw(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    if start + len > x.shape()[axis] {
        return Err(Error::shape(
            "slice",
            format!(
                "rows {start}..{} of axis {axis} of {:?}",
                start + len,
                x.shape()
            ),
        ));
    }
    let mut shape = x.shape().to_vec();
    shape[axis] = len;
    let y = Tensor::zeros_dtype(&shape, x.dtype(), x.device())?;
    copy_axis_into(x, &y, axis, start, 0, len)?;
    Ok(y)
}

/// Rows `start .. start + len` of `axis`.
pub fn slice(tape: &mut Tape, x: &Tensor, axis: isize, start: usize, len: usize) -> Result<Tensor> {
    let a = x.axis(axis)?;
    let y = slice_raw(x, a, start, len)?;
    let shape = x.shape().to_vec();
    tape.record(&[x], &y, move |dy| {
        let dx = Tensor::zeros_dtype(&shape, dy.dtype(), dy.device())?;
        copy_axis_into(dy, &dx, a, 0, start, len)?;
        Ok(vec![Some(dx)])
    });
    Ok(y)
}

/// Joins tensors along `axis`; all other dimensions must agree.
pub fn concat(tape: &mut Tape, xs: &[&Tensor], axis: isize) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| Error::Invalid("concat of no tensors".into()))?;
    same_device("concat", xs)?;
    let a = first.axis(axis)?;
    let mut shape = first.shape().to_vec();
    shape[a] = 0;
    for x in xs {
        let ok = x.rank() == first.rank()
            && x.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(k, (p, q))| k == a || p == q);
        if !ok {
            return Err(Error::shape(
                "concat",
                format!("{:?} and {:?} along axis {a}", first.shape(), x.shape()),
            ));
        }
        shape[a] += x.shape()[a];
    }
    let y = Tensor::zeros_dtype(&shape, first.dtype(), first.device())?;
    let mut offsets = Vec::with_capacity(xs.len());
    let mut off = 0;
    for x in xs {
        copy_axis_into(x, &y, a, 0, off, x.shape()[a])?;
        offsets.push((off, x.shape()[a]));
        off += x.shape()[a];
    }
    tape.record(xs, &y, move |dy| {
        offsets
            .iter()
            .map(|&(o, n)| slice_raw(dy, a, o, n).map(Some))
            .collect()
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, parity_sizes, random_vec};

    #[test]
    fn copy_axis_adjoint_is_the_finite_difference_gradient() {
        // slice: y = rows 1..4 of axis 1 of x [2, 5, 3]; loss = Σ w ⊙ y; dx = w scattered back.
        let x: Vec<f64> = random_vec(30, 1).iter().map(|&v| v as f64).collect();
        let w: Vec<f64> = random_vec(18, 2).iter().map(|&v| v as f64).collect();
        let loss = |x: &[f64]| {
            let mut y = vec![0.0; 18];
            cpu::copy_axis(x, &mut y, 2, 5, 3, 3, 1, 0, 3);
            y.iter().zip(&w).map(|(p, q)| p * q).sum::<f64>()
        };
        let mut dx = vec![0.0; 30];
        cpu::copy_axis(&w, &mut dx, 2, 3, 5, 3, 0, 1, 3);
        crate::testing::gradcheck("slice", loss, &x, &dx);
    }

    #[test]
    fn concat_then_slice_round_trips_with_gradients() {
        for device in devices() {
            let (av, bv) = (random_vec(2 * 3 * 4, 1), random_vec(2 * 5 * 4, 2));
            let a = Tensor::from_slice(&av, &[2, 3, 4], &device).unwrap();
            let b = Tensor::from_slice(&bv, &[2, 5, 4], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&a);
            tape.watch(&b);
            let c = concat(&mut tape, &[&a, &b], 1).unwrap();
            assert_eq!(c.shape(), &[2, 8, 4]);
            let back = slice(&mut tape, &c, 1, 3, 5).unwrap();
            assert_close(
                &back.to_vec_f32().unwrap(),
                &bv,
                0.0,
                0.0,
                "slice of concat",
            );
            let sq = crate::ops::elementwise::square(&mut tape, &back).unwrap();
            let loss = crate::ops::reduce::sum_all(&mut tape, &sq).unwrap();
            let g = tape.backward(&loss).unwrap();
            assert_close(
                &g.get(&a).unwrap().to_vec_f32().unwrap(),
                &[0.0; 24],
                0.0,
                0.0,
                "da",
            );
            let want: Vec<f32> = bv.iter().map(|v| 2.0 * v).collect();
            assert_close(
                &g.get(&b).unwrap().to_vec_f32().unwrap(),
                &want,
                1e-6,
                0.0,
                &format!("db on {device}"),
            );
        }
    }

    #[test]
    fn concat_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in parity_sizes() {
            let (av, bv) = (random_vec(3 * n * 2, 1), random_vec(3 * 7 * 2, 2));
            let run = |d: &Device| {
                let a = Tensor::from_slice(&av, &[3, n, 2], d).unwrap();
                let b = Tensor::from_slice(&bv, &[3, 7, 2], d).unwrap();
                let c = concat(&mut Tape::inference(), &[&a, &b, &a], 1).unwrap();
                let mut out = c.to_vec_f32().unwrap();
                out.extend(slice_raw(&c, 1, n / 2, n).unwrap().to_vec_f32().unwrap());
                out
            };
            assert_close(
                &run(&gpu),
                &run(&Device::Cpu),
                0.0,
                0.0,
                &format!("concat n={n}"),
            );
        }
    }

    #[test]
    fn bad_concat_and_slice_are_errors() {
        let a = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
        let b = Tensor::zeros(&[3, 3], &Device::Cpu).unwrap();
        assert!(concat(&mut Tape::new(), &[&a, &b], 1).is_err());
        assert!(concat(&mut Tape::new(), &[], 0).is_err());
        assert!(slice(&mut Tape::new(), &a, 1, 2, 2).is_err());
    }

    /// bf16 concat and slice move bits: identical on both devices.
    #[test]
    fn bf16_concat_and_slice_cuda_match_cpu() {
        let t = |shape: &[usize], seed| {
            Tensor::from_vec(
                random_vec(shape.iter().product(), seed),
                shape,
                &Device::Cpu,
            )
            .unwrap()
        };
        let (a, b) = (t(&[2, 3, 5], 1), t(&[2, 4, 5], 2));
        crate::testing::bf16_parity("concat axis 1", &[a.clone(), b], 0.0, 0.0, |x| {
            concat(&mut Tape::inference(), &[&x[0], &x[1]], 1)
        });
        crate::testing::bf16_parity("slice axis 2", &[a], 0.0, 0.0, |x| {
            slice(&mut Tape::inference(), &x[0], 2, 1, 3)
        });
    }
}
