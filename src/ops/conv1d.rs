//! 1-D convolution with PyTorch's `Conv1d` semantics (cross-correlation, zero padding), f32.
//!
//! Forward: x `[B, Cin, L]`, weight `[Cout, Cin, K]`, bias `[Cout]`, stride s, padding p;
//! `Lout = (L + 2p − K) / s + 1` and
//! `y[b, co, l] = bias[co] + Σ_{ci, k} w[co, ci, k] · x[b, ci, l·s + k − p]` (x = 0 outside [0, L)).
//! As a GEMM per batch item: `y_b [Cout, Lout] = W [Cout, Cin·K] · cols_b [Cin·K, Lout]`, with
//! `cols_b[(ci, k), l] = x[b, ci, l·s + k − p]` (im2col).
//!
//! Backward, with `G = dL/dy`:
//! `dx_b = col2im(Wᵀ · G_b)`: `dx[b, ci, j] = Σ_{co, k} w[co, ci, k] · G[b, co, (j + p − k)/s]`
//! over the k where `j + p − k` is a non-negative multiple of s below `Lout·s`;
//! `dW = Σ_b G_b · cols_bᵀ`: `dW[co, ci, k] = Σ_{b, l} G[b, co, l] · x[b, ci, l·s + k − p]`;
//! `db[co] = Σ_{b, l} G[b, co, l]`.
//!
//! Cost: each of forward, dx and dW is `2·B·Cout·Lout·Cin·K` FLOPs. Ideal traffic: read x and W,
//! write y (`4·(|x| + |W| + |y|)` bytes), likewise for each gradient. The CUDA kernels
//! (`kernels/conv1d.cu`) are implicit GEMMs on the shared 64×64 tile of `kernels/gemm_tile.cuh`:
//! their loaders gather x / dy in place (padding is a 0 from the loader), so no im2col buffer
//! exists on the GPU. The forward and dx put the batch on grid z (M = Cout or Cin, N = Lout or L);
//! dW is one product with k = B·Lout, split over grid z into at most 64 MB of partial sums that
//! `reduce_axis_raw` then adds in a fixed order (deterministic). The CPU twin does im2col + GEMM
//! (ndarray) per batch item, rayon over the batch.
//!
//! `conv1d_fused` applies the bias, a residual add and a ReLU as the forward stores y
//! (`Epilogue`), the same numbers as the separate ops; its backward reads the ReLU's mask off y.

use cudarc::driver::PushKernelArg;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::{same_device, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::elementwise::{bias_grad_raw, unary_bwd_raw, Unary};
use crate::ops::reduce::{reduce_axis_raw, Reduce};
use crate::tensor::{launch, Device, Storage, Tensor};

/// The sizes of one convolution, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1d {
    pub batch: usize,
    pub cin: usize,
    pub len: usize,
    pub cout: usize,
    pub ksize: usize,
    pub stride: usize,
    pub padding: usize,
    pub lout: usize,
}

impl Conv1d {
    /// Checks x `[B, Cin, L]` against weight `[Cout, Cin, K]`, stride and padding.
    pub fn new(x: &[usize], weight: &[usize], stride: usize, padding: usize) -> Result<Conv1d> {
        let err = |detail: String| Err(Error::shape("conv1d", detail));
        let &[batch, cin, len] = x else {
            return err(format!("x must be [B, Cin, L], got shape {x:?}"));
        };
        let &[cout, wcin, ksize] = weight else {
            return err(format!(
                "weight must be [Cout, Cin, K], got shape {weight:?}"
            ));
        };
        if wcin != cin {
            return err(format!(
                "weight {weight:?} expects {wcin} input channels but x {x:?} has {cin}"
            ));
        }
        if ksize == 0 || stride == 0 {
            return err(format!(
                "kernel size {ksize} and stride {stride} must be at least 1"
            ));
        }
        let padded = len + 2 * padding;
        if ksize > padded {
            return err(format!("kernel of size {ksize} is longer than the padded input (L {len} + 2·padding {padding} = {padded})"));
        }
        Ok(Conv1d {
            batch,
            cin,
            len,
            cout,
            ksize,
            stride,
            padding,
            lout: (padded - ksize) / stride + 1,
        })
    }

    pub fn x_len(&self) -> usize {
        self.batch * self.cin * self.len
    }
    pub fn w_len(&self) -> usize {
        self.cout * self.cin * self.ksize
    }
    pub fn y_len(&self) -> usize {
        self.batch * self.cout * self.lout
    }
    pub fn y_shape(&self) -> [usize; 3] {
        [self.batch, self.cout, self.lout]
    }
    /// FLOPs of the forward (each gradient costs the same).
    pub fn flops(&self) -> usize {
        2 * self.batch * self.cout * self.lout * self.cin * self.ksize
    }

    /// The x position that output l, tap k reads, or None in the padding.
    fn src(&self, l: usize, k: usize) -> Option<usize> {
        (l * self.stride + k)
            .checked_sub(self.padding)
            .filter(|&pos| pos < self.len)
    }
}

/// The CPU twins: im2col + GEMM per batch item, generic so gradient checks run them in f64.
pub mod cpu {
    use super::*;

    fn view_err(e: ndarray::ShapeError) -> Error {
        Error::shape("conv1d", e.to_string())
    }

    fn check(what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::shape(
                "conv1d",
                format!("{what} holds {got} elements, expected {want}"),
            ));
        }
        Ok(())
    }

    /// True for k1 s1 p0: im2col is the identity and col2im a plain add, so both are skipped.
    fn pointwise(d: &Conv1d) -> bool {
        d.ksize == 1 && d.stride == 1 && d.padding == 0
    }

    /// `im2col` without a copy for pointwise convolutions (the mapper's widest layers).
    fn cols_of<'a, T: Real>(xb: &'a [T], d: &Conv1d) -> std::borrow::Cow<'a, [T]> {
        if pointwise(d) {
            std::borrow::Cow::Borrowed(xb)
        } else {
            std::borrow::Cow::Owned(im2col(xb, d))
        }
    }

    /// `cols[(ci·K + k)·Lout + l] = x_b[ci, l·s + k − p]` (0 in the padding) for one batch item.
    pub fn im2col<T: Real>(xb: &[T], d: &Conv1d) -> Vec<T> {
        let mut cols = vec![T::zero(); d.cin * d.ksize * d.lout];
        for ci in 0..d.cin {
            for k in 0..d.ksize {
                let row = &mut cols[(ci * d.ksize + k) * d.lout..][..d.lout];
                for (l, c) in row.iter_mut().enumerate() {
                    if let Some(pos) = d.src(l, k) {
                        *c = xb[ci * d.len + pos];
                    }
                }
            }
        }
        cols
    }

    /// The adjoint of `im2col`: `dx_b[ci, l·s + k − p] += cols[(ci·K + k)·Lout + l]`.
    pub fn col2im<T: Real>(cols: &[T], d: &Conv1d, dxb: &mut [T]) {
        for ci in 0..d.cin {
            for k in 0..d.ksize {
                let row = &cols[(ci * d.ksize + k) * d.lout..][..d.lout];
                for (l, &c) in row.iter().enumerate() {
                    if let Some(pos) = d.src(l, k) {
                        dxb[ci * d.len + pos] = dxb[ci * d.len + pos] + c;
                    }
                }
            }
        }
    }

    /// `y = W · im2col(x) (+ bias)` per batch item.
    pub fn conv1d<T: Real>(x: &[T], w: &[T], bias: Option<&[T]>, d: &Conv1d) -> Result<Vec<T>> {
        check("x", x.len(), d.x_len())?;
        check("weight", w.len(), d.w_len())?;
        if let Some(b) = bias {
            check("bias", b.len(), d.cout)?;
        }
        let mut y = vec![T::zero(); d.y_len()];
        if y.is_empty() {
            return Ok(y);
        }
        let kk = d.cin * d.ksize;
        let wv = ArrayView2::from_shape((d.cout, kk), w).map_err(view_err)?;
        y.par_chunks_mut(d.cout * d.lout)
            .enumerate()
            .try_for_each(|(b, yb)| -> Result<()> {
                let cols = cols_of(&x[b * d.cin * d.len..][..d.cin * d.len], d);
                let cv = ArrayView2::from_shape((kk, d.lout), &cols[..]).map_err(view_err)?;
                general_mat_mul(
                    T::one(),
                    &wv,
                    &cv,
                    T::zero(),
                    &mut ArrayViewMut2::from_shape((d.cout, d.lout), &mut yb[..])
                        .map_err(view_err)?,
                );
                if let Some(bias) = bias {
                    for (row, &bc) in yb.chunks_mut(d.lout).zip(bias) {
                        row.iter_mut().for_each(|v| *v = *v + bc);
                    }
                }
                Ok(())
            })?;
        Ok(y)
    }

    /// `relu?((conv1d(x, w) + bias) + residual)`: the fused forward's twin, each part in the
    /// order the separate ops apply it (and ReLU as `unary_fwd`'s).
    pub fn conv1d_epilogue<T: Real>(
        x: &[T],
        w: &[T],
        bias: Option<&[T]>,
        residual: Option<&[T]>,
        relu: bool,
        d: &Conv1d,
    ) -> Result<Vec<T>> {
        let mut y = conv1d(x, w, bias, d)?;
        if let Some(r) = residual {
            check("residual", r.len(), d.y_len())?;
            y.par_iter_mut().zip(r).for_each(|(v, &r)| *v = *v + r);
        }
        if relu {
            let relu = crate::ops::elementwise::Unary::Relu;
            y.par_iter_mut()
                .for_each(|v| *v = crate::ops::elementwise::cpu::unary_fwd(relu, *v));
        }
        Ok(y)
    }

    /// `dx_b = col2im(Wᵀ · dy_b)` per batch item.
    pub fn conv1d_dx<T: Real>(dy: &[T], w: &[T], d: &Conv1d) -> Result<Vec<T>> {
        check("dy", dy.len(), d.y_len())?;
        check("weight", w.len(), d.w_len())?;
        let mut dx = vec![T::zero(); d.x_len()];
        if dx.is_empty() {
            return Ok(dx);
        }
        let kk = d.cin * d.ksize;
        let wv = ArrayView2::from_shape((d.cout, kk), w).map_err(view_err)?;
        dx.par_chunks_mut(d.cin * d.len)
            .enumerate()
            .try_for_each(|(b, dxb)| -> Result<()> {
                let dyv = ArrayView2::from_shape(
                    (d.cout, d.lout),
                    &dy[b * d.cout * d.lout..][..d.cout * d.lout],
                )
                .map_err(view_err)?;
                if pointwise(d) {
                    // dx_b = Wᵀ · dy_b directly: col2im of a pointwise conv is the identity.
                    general_mat_mul(
                        T::one(),
                        &wv.t(),
                        &dyv,
                        T::zero(),
                        &mut ArrayViewMut2::from_shape((kk, d.lout), &mut dxb[..])
                            .map_err(view_err)?,
                    );
                    return Ok(());
                }
                let mut dcols = vec![T::zero(); kk * d.lout];
                general_mat_mul(
                    T::one(),
                    &wv.t(),
                    &dyv,
                    T::zero(),
                    &mut ArrayViewMut2::from_shape((kk, d.lout), &mut dcols[..])
                        .map_err(view_err)?,
                );
                col2im(&dcols, d, dxb);
                Ok(())
            })?;
        Ok(dx)
    }

    /// `dW = Σ_b dy_b · im2col(x_b)ᵀ`, shaped `[Cout, Cin, K]`.
    pub fn conv1d_dw<T: Real>(dy: &[T], x: &[T], d: &Conv1d) -> Result<Vec<T>> {
        check("dy", dy.len(), d.y_len())?;
        check("x", x.len(), d.x_len())?;
        let kk = d.cin * d.ksize;
        // A fixed number of batch items per parallel task, added in order: the same sum on every
        // machine whatever its thread count.
        const ITEMS: usize = 8;
        let starts: Vec<usize> = (0..d.batch).step_by(ITEMS).collect();
        let partials = starts
            .par_iter()
            .map(|&b0| -> Result<Vec<T>> {
                let mut acc = vec![T::zero(); d.cout * kk];
                let mut av =
                    ArrayViewMut2::from_shape((d.cout, kk), &mut acc[..]).map_err(view_err)?;
                for b in b0..(b0 + ITEMS).min(d.batch) {
                    let cols = cols_of(&x[b * d.cin * d.len..][..d.cin * d.len], d);
                    let cv = ArrayView2::from_shape((kk, d.lout), &cols[..]).map_err(view_err)?;
                    let dyv = ArrayView2::from_shape(
                        (d.cout, d.lout),
                        &dy[b * d.cout * d.lout..][..d.cout * d.lout],
                    )
                    .map_err(view_err)?;
                    general_mat_mul(T::one(), &dyv, &cv.t(), T::one(), &mut av);
                }
                Ok(acc)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut dw = vec![T::zero(); d.cout * kk];
        for p in partials {
            for (s, v) in dw.iter_mut().zip(p) {
                *s = *s + v;
            }
        }
        Ok(dw)
    }

    /// `db[co] = Σ_{b, l} dy[b, co, l]`.
    pub fn conv1d_db<T: Real>(dy: &[T], d: &Conv1d) -> Vec<T> {
        crate::ops::elementwise::cpu::bias_grad(dy, d.batch, d.cout, d.lout)
    }
}

/// The launch sizes as the kernels' ints, or an error when something does not fit.
/// Order: B, Cin, L, Cout, K, stride, padding, Lout.
fn kernel_ints(d: &Conv1d) -> Result<[i32; 8]> {
    // Below 2³⁰, so index sums in the kernels (k + 16, l·s + k) stay inside an int.
    let fits = |v: usize| v < 1 << 30;
    let products = [
        d.len + 2 * d.padding,
        d.cin * d.ksize,
        d.cout * d.ksize,
        d.batch * d.lout,
        d.stride,
    ];
    if !products.iter().all(|&v| fits(v))
        || d.cin.div_ceil(64) > 65535
        || d.cout.div_ceil(64) > 65535
    {
        return Err(Error::shape(
            "conv1d",
            format!("{d:?} is too large for the CUDA kernels (sizes < 2³⁰, channels ≤ 65535·64)"),
        ));
    }
    let v = [
        d.batch, d.cin, d.len, d.cout, d.ksize, d.stride, d.padding, d.lout,
    ];
    Ok(v.map(|x| x as i32))
}

/// How dW's k = B·Lout is cut for split-K: `(chunk, splits)`, chunk a multiple of 16. Enough
/// splits to give the GPU about 1024 blocks, but at least 256 k per split and at most 2²⁴
/// floats (64 MB) of partial sums.
pub(crate) fn dw_split(d: &Conv1d) -> (usize, usize) {
    let k = d.batch * d.lout;
    let n_w = d.cout * d.cin * d.ksize;
    let tiles = d.cout.div_ceil(64) * (d.cin * d.ksize).div_ceil(64);
    let want = (1024 / tiles.max(1))
        .min(k.div_ceil(256))
        .min((1 << 24) / n_w.max(1))
        .max(1);
    let chunk = (k.div_ceil(want).div_ceil(16) * 16).max(16);
    (chunk, k.div_ceil(chunk).max(1))
}

/// What the forward applies to each output as it stores it, in one pass over y:
/// `y = relu?((conv + bias) + residual)`, the mapper's conv → bias → residual add → ReLU
/// (otherwise three more passes over y, each a read and a write of the whole activation). Every
/// part is optional; they are applied in that order, so the result is the separate ops' bit for
/// bit.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[Cout]`.
    pub bias: Option<&'a Tensor>,
    /// `[B, Cout, Lout]`, y's shape.
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

/// `y = conv1d(x, w)` (no bias) without recording.
#[cfg(test)]
pub(crate) fn conv1d_raw(x: &Tensor, w: &Tensor, d: &Conv1d) -> Result<Tensor> {
    conv1d_epilogue_raw(x, w, Epilogue::default(), d)
}

/// `y = epilogue(conv1d(x, w))` without recording; the epilogue's tensors checked by the caller.
fn conv1d_epilogue_raw(x: &Tensor, w: &Tensor, epi: Epilogue, d: &Conv1d) -> Result<Tensor> {
    const OP: &str = "conv1d";
    same_device(OP, &[x, w])?;
    let (sx, sw) = (x.storage(), w.storage());
    let (sb, sr) = (
        epi.bias.map(|t| t.storage()),
        epi.residual.map(|t| t.storage()),
    );
    match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::conv1d_epilogue(
                sx.cpu_f32(OP)?,
                sw.cpu_f32(OP)?,
                sb.as_ref().map(|s| s.cpu_f32(OP)).transpose()?,
                sr.as_ref().map(|s| s.cpu_f32(OP)).transpose()?,
                epi.relu,
                d,
            )?,
            &d.y_shape(),
            x.device(),
        ),
        Device::Cuda(gpu) => {
            let (xs, ws) = (sx.cuda_f32(OP)?, sw.cuda_f32(OP)?);
            let (bs, rs) = (
                sb.as_ref().map(|s| s.cuda_f32(OP)).transpose()?,
                sr.as_ref().map(|s| s.cuda_f32(OP)).transpose()?,
            );
            let [b, cin, len, cout, ks, stride, pad, lout] = kernel_ints(d)?;
            let relu = epi.relu as i32;
            let null = 0u64; // a null device pointer: no bias / no residual
            let mut y = gpu.alloc::<f32>(d.y_len())?;
            if d.y_len() > 0 {
                let (name, cfg) = super::conv_tc::pick(
                    gpu,
                    "conv1d",
                    [
                        "conv1d_fwd_f32",
                        "conv1d_fwd_tc_tf32",
                        "conv1d_fwd_tc_bf16",
                        "conv1d_fwd_tc_pipe_tf32",
                        "conv1d_fwd_tc_pipe_bf16",
                    ],
                    true,
                    super::gemm_tile_grid(d.cout, d.lout, d.batch),
                )?;
                let f = gpu.function("conv1d", name)?;
                let mut lb = gpu.stream.launch_builder(&f);
                lb.arg(xs).arg(ws);
                match bs {
                    Some(s) => lb.arg(s),
                    None => lb.arg(&null),
                };
                match rs {
                    Some(s) => lb.arg(s),
                    None => lb.arg(&null),
                };
                lb.arg(&relu).arg(&mut y);
                for v in [&b, &cin, &len, &cout, &ks, &stride, &pad, &lout] {
                    lb.arg(v);
                }
                // SAFETY: x, w hold B·Cin·L and Cout·Cin·K floats (shapes checked by Conv1d::new);
                // bias holds Cout and the residual B·Cout·Lout floats (checked by the caller), or
                // they are null and never read; the loaders read x only at 0 ≤ pos < L, and the
                // tile writes (and reads the residual at) y[b, co, l] for co < Cout, l < Lout. A
                // pipelined build copies the same elements by cp.async into the shared memory
                // `conv_tc::pick` opted into and set in `cfg`.
                unsafe { lb.launch(cfg) }.map_err(|e| Error::cuda(name, e))?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                &d.y_shape(),
                x.device(),
            ))
        }
    }
}

/// dL/dx without recording.
pub(crate) fn conv1d_dx_raw(dy: &Tensor, w: &Tensor, d: &Conv1d) -> Result<Tensor> {
    const OP: &str = "conv1d backward";
    let (sdy, sw) = (dy.storage(), w.storage());
    let shape = [d.batch, d.cin, d.len];
    match dy.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::conv1d_dx(sdy.cpu_f32(OP)?, sw.cpu_f32(OP)?, d)?,
            &shape,
            dy.device(),
        ),
        Device::Cuda(gpu) => {
            let (dys, ws) = (sdy.cuda_f32(OP)?, sw.cuda_f32(OP)?);
            let [b, cin, len, cout, ks, stride, pad, lout] = kernel_ints(d)?;
            let mut dx = gpu.alloc::<f32>(d.x_len())?;
            if d.x_len() > 0 {
                let (name, grid) = super::conv_tc::pick(
                    gpu,
                    "conv1d",
                    [
                        "conv1d_dx_f32",
                        "conv1d_dx_tc_tf32",
                        "conv1d_dx_tc_bf16",
                        "conv1d_dx_tc_pipe_tf32",
                        "conv1d_dx_tc_pipe_bf16",
                    ],
                    true,
                    super::gemm_tile_grid(d.cin, d.len, d.batch),
                )?;
                // SAFETY: dy holds B·Cout·Lout floats, read only at 0 ≤ l < Lout; w as in the forward;
                // the tile writes every dx[b, ci, j], ci < Cin, j < L.
                // A pipelined build copies the same elements by cp.async into the shared memory
                // `conv_tc::pick` opted into and set in `grid`.
                launch!(
                    gpu, "conv1d", name, grid, dys, ws, &mut dx, &b, &cin, &len, &cout, &ks,
                    &stride, &pad, &lout
                )?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(dx),
                &shape,
                dy.device(),
            ))
        }
    }
}

/// dL/dW without recording.
pub(crate) fn conv1d_dw_raw(dy: &Tensor, x: &Tensor, d: &Conv1d) -> Result<Tensor> {
    const OP: &str = "conv1d backward";
    let (sdy, sx) = (dy.storage(), x.storage());
    let shape = [d.cout, d.cin, d.ksize];
    match dy.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::conv1d_dw(sdy.cpu_f32(OP)?, sx.cpu_f32(OP)?, d)?,
            &shape,
            dy.device(),
        ),
        Device::Cuda(gpu) => {
            let (dys, xs) = (sdy.cuda_f32(OP)?, sx.cuda_f32(OP)?);
            let [b, cin, len, cout, ks, stride, pad, lout] = kernel_ints(d)?;
            let (chunk, splits) = dw_split(d);
            let n_w = d.w_len();
            let mut partial = gpu.alloc::<f32>(splits * n_w)?;
            if n_w > 0 {
                let (chunk_i, splits_i) = (chunk as i32, splits as i32);
                let (name, grid) = super::conv_tc::pick(
                    gpu,
                    "conv1d",
                    [
                        "conv1d_dw_f32",
                        "conv1d_dw_tc_tf32",
                        "conv1d_dw_tc_bf16",
                        "conv1d_dw_tc_pipe_tf32",
                        "conv1d_dw_tc_pipe_bf16",
                    ],
                    true,
                    super::gemm_tile_grid(d.cout, d.cin * d.ksize, splits),
                )?;
                // SAFETY: split z reads k in [z·chunk, min(B·Lout, (z+1)·chunk)), i.e. dy[b, co, l] with
                // b < B, l < Lout, and x only at 0 ≤ pos < L; it writes partial[z, co, n], z < splits.
                // A pipelined build copies the same elements by cp.async into the shared memory
                // `conv_tc::pick` opted into and set in `grid`.
                launch!(
                    gpu,
                    "conv1d",
                    name,
                    grid,
                    dys,
                    xs,
                    &mut partial,
                    &b,
                    &cin,
                    &len,
                    &cout,
                    &ks,
                    &stride,
                    &pad,
                    &lout,
                    &chunk_i,
                    &splits_i
                )?;
            }
            let partial =
                Tensor::from_storage(Storage::CudaF32(partial), &[splits, n_w], dy.device());
            let dw = if splits == 1 {
                partial
            } else {
                reduce_axis_raw(&partial, 0, Reduce::Sum, 1.0)?
            };
            dw.reshaped(&shape)
        }
    }
}

/// `y = conv1d(x, weight) + bias`: x `[B, Cin, L]`, weight `[Cout, Cin, K]`, bias `[Cout]`,
/// y `[B, Cout, (L + 2·padding − K)/stride + 1]`, as PyTorch's `nn.Conv1d`. Recorded.
pub fn conv1d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let epi = Epilogue {
        bias,
        ..Epilogue::default()
    };
    conv1d_fused(tape, x, weight, stride, padding, epi)
}

/// `y = relu?((conv1d(x, weight) + bias) + residual)` in one kernel (see `Epilogue`), the same
/// numbers as `conv1d`, `elementwise::add` and `elementwise::relu` one after another, forward
/// and backward. Recorded: the ReLU's gradient mask is read off y (y > 0 exactly where the
/// pre-activation is), so nothing more is kept than y.
pub fn conv1d_fused(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    epi: Epilogue,
) -> Result<Tensor> {
    let d = Conv1d::new(x.shape(), weight.shape(), stride, padding)?;
    if let Some(b) = epi.bias {
        if b.shape() != [d.cout] {
            return Err(Error::shape(
                "conv1d",
                format!(
                    "bias {:?} for {} output channels (want [{}])",
                    b.shape(),
                    d.cout,
                    d.cout
                ),
            ));
        }
        same_device("conv1d", &[x, b])?;
    }
    if let Some(r) = epi.residual {
        if r.shape() != d.y_shape() {
            return Err(Error::shape(
                "conv1d",
                format!(
                    "residual {:?} for an output of shape {:?}",
                    r.shape(),
                    d.y_shape()
                ),
            ));
        }
        same_device("conv1d", &[x, r])?;
    }
    let y = conv1d_epilogue_raw(x, weight, epi, &d)?;
    // Only the gradients some watched tensor depends on are computed (the network input's dx,
    // as big as the first layer's work, usually is not).
    let (need_x, need_w) = (tape.needs_grad(&[x]), tape.needs_grad(&[weight]));
    let need_b = epi.bias.map(|b| tape.needs_grad(&[b]));
    let has_residual = epi.residual.is_some();
    let (xc, wc) = (x.clone(), weight.clone());
    let y_kept = epi.relu.then(|| y.clone());
    let inputs: Vec<&Tensor> = [x, weight]
        .into_iter()
        .chain(epi.bias)
        .chain(epi.residual)
        .collect();
    tape.record(&inputs, &y, move |dy| {
        // dL/d(pre-activation): relu's backward, which reads only whether its input was > 0.
        let dpre = match &y_kept {
            Some(y) => unary_bwd_raw(Unary::Relu, y, y, dy)?,
            None => dy.clone(),
        };
        let dx = if need_x {
            Some(conv1d_dx_raw(&dpre, &wc, &d)?)
        } else {
            None
        };
        let dw = if need_w {
            Some(conv1d_dw_raw(&dpre, &xc, &d)?)
        } else {
            None
        };
        let mut grads = vec![dx, dw];
        if let Some(nb) = need_b {
            grads.push(if nb {
                Some(bias_grad_raw(&dpre, d.batch, d.cout, d.lout)?)
            } else {
                None
            });
        }
        if has_residual {
            grads.push(Some(dpre));
        }
        Ok(grads)
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, random_vec};

    /// (K, stride, padding) of the mapper's layers, and two with gaps (stride > K) and no padding.
    const GEOMETRIES: [(usize, usize, usize); 5] =
        [(1, 1, 0), (3, 1, 1), (4, 2, 1), (2, 3, 2), (3, 2, 0)];

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn dims(
        b: usize,
        cin: usize,
        len: usize,
        cout: usize,
        (k, s, p): (usize, usize, usize),
    ) -> Result<Conv1d> {
        Conv1d::new(&[b, cin, len], &[cout, cin, k], s, p)
    }

    /// (x, w, bias, weights for loss = Σ g ⊙ y) in f64.
    fn inputs(d: &Conv1d, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        (
            f64s(&random_vec(d.x_len(), seed)),
            f64s(&random_vec(d.w_len(), seed + 1)),
            f64s(&random_vec(d.cout, seed + 2)),
            f64s(&random_vec(d.y_len(), seed + 3)),
        )
    }

    /// y by the definition, an independent check of im2col's indexing.
    fn naive(x: &[f64], w: &[f64], bias: &[f64], d: &Conv1d) -> Vec<f64> {
        let mut y = Vec::new();
        for b in 0..d.batch {
            for co in 0..d.cout {
                for l in 0..d.lout {
                    let mut acc = bias[co];
                    for ci in 0..d.cin {
                        for k in 0..d.ksize {
                            let pos = (l * d.stride + k) as isize - d.padding as isize;
                            if pos >= 0 && (pos as usize) < d.len {
                                acc += w[(co * d.cin + ci) * d.ksize + k]
                                    * x[(b * d.cin + ci) * d.len + pos as usize];
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
        y
    }

    #[test]
    fn conv1d_twin_matches_the_definition() {
        for geo in GEOMETRIES {
            for len in [5, 8, 9] {
                let d = dims(2, 3, len, 4, geo).unwrap();
                assert_eq!(d.lout, (len + 2 * geo.2 - geo.0) / geo.1 + 1);
                let (x, w, bias, _) = inputs(&d, 1);
                let got = cpu::conv1d(&x, &w, Some(&bias), &d).unwrap();
                assert_close(
                    &f32s(&got),
                    &f32s(&naive(&x, &w, &bias, &d)),
                    1e-12,
                    1e-12,
                    &format!("{d:?}"),
                );
            }
        }
    }

    #[test]
    fn conv1d_gradients_match_finite_differences() {
        for geo in GEOMETRIES {
            for len in [7, 9] {
                let d = dims(2, 3, len, 2, geo).unwrap();
                let (x, w, bias, g) = inputs(&d, 5);
                let loss = |x: &[f64], w: &[f64], bias: &[f64]| {
                    cpu::conv1d(x, w, Some(bias), &d)
                        .unwrap()
                        .iter()
                        .zip(&g)
                        .map(|(y, g)| y * g)
                        .sum::<f64>()
                };
                let what = format!("{d:?}");
                gradcheck(
                    &format!("dx {what}"),
                    |v| loss(v, &w, &bias),
                    &x,
                    &cpu::conv1d_dx(&g, &w, &d).unwrap(),
                );
                gradcheck(
                    &format!("dW {what}"),
                    |v| loss(&x, v, &bias),
                    &w,
                    &cpu::conv1d_dw(&g, &x, &d).unwrap(),
                );
                gradcheck(
                    &format!("db {what}"),
                    |v| loss(&x, &w, v),
                    &bias,
                    &cpu::conv1d_db(&g, &d),
                );
            }
        }
    }

    #[test]
    fn fused_epilogue_gradients_match_finite_differences() {
        for geo in [(3, 1, 1), (4, 2, 1)] {
            let d = dims(2, 3, 9, 4, geo).unwrap();
            let (x, w, bias, g) = inputs(&d, 31);
            let res = f64s(&random_vec(d.y_len(), 35));
            let twin = |x: &[f64], w: &[f64], b: &[f64], r: &[f64]| {
                cpu::conv1d_epilogue(x, w, Some(b), Some(r), true, &d).unwrap()
            };
            let loss = |x: &[f64], w: &[f64], b: &[f64], r: &[f64]| {
                twin(x, w, b, r)
                    .iter()
                    .zip(&g)
                    .map(|(y, g)| y * g)
                    .sum::<f64>()
            };
            // Some outputs on each side of the ReLU's kink, or the mask is not tested.
            let y = twin(&x, &w, &bias, &res);
            assert!(y.iter().any(|&v| v == 0.0) && y.iter().any(|&v| v > 0.0));
            let dpre: Vec<f64> = y
                .iter()
                .zip(&g)
                .map(|(&y, &g)| if y > 0.0 { g } else { 0.0 })
                .collect();
            let what = format!("{d:?}");
            gradcheck(
                &format!("dx {what}"),
                |v| loss(v, &w, &bias, &res),
                &x,
                &cpu::conv1d_dx(&dpre, &w, &d).unwrap(),
            );
            gradcheck(
                &format!("dW {what}"),
                |v| loss(&x, v, &bias, &res),
                &w,
                &cpu::conv1d_dw(&dpre, &x, &d).unwrap(),
            );
            gradcheck(
                &format!("db {what}"),
                |v| loss(&x, &w, v, &res),
                &bias,
                &cpu::conv1d_db(&dpre, &d),
            );
            gradcheck(
                &format!("dres {what}"),
                |v| loss(&x, &w, &bias, v),
                &res,
                &dpre,
            );
        }
    }

    /// The fused op against conv1d, add and relu one after another: equal outputs and gradients
    /// for every combination of the epilogue's parts, on every device and (on a GPU) at every
    /// precision, so the tensor-core and pipelined builds' epilogues are covered too.
    #[test]
    fn fused_epilogue_equals_the_separate_ops_on_every_device() {
        use crate::ops::elementwise as ew;
        use crate::ops::precision::{self, Precision};
        for device in devices() {
            let precisions: &[Precision] = match device {
                Device::Cpu => &[Precision::F32],
                Device::Cuda(_) => &Precision::ALL,
            };
            // Cout and Lout off the 64-wide tile; a strided stem-like geometry.
            for geo in [(3, 1, 1), (4, 2, 1)] {
                let d = dims(2, 5, 135, 66, geo).unwrap();
                let t = |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s, &device).unwrap();
                let x = t(random_vec(d.x_len(), 41), &[d.batch, d.cin, d.len]);
                let w = t(random_vec(d.w_len(), 42), &[d.cout, d.cin, d.ksize]);
                let b = t(random_vec(d.cout, 43), &[d.cout]);
                let r = t(random_vec(d.y_len(), 44), &d.y_shape());
                let g = t(random_vec(d.y_len(), 45), &d.y_shape());
                for &p in precisions {
                    for parts in 0..8 {
                        let (bias, residual, relu) = (
                            (parts & 1 != 0).then_some(&b),
                            (parts & 2 != 0).then_some(&r),
                            parts & 4 != 0,
                        );
                        let run = |fused: bool| {
                            precision::with(p, || {
                                let mut tape = Tape::new();
                                for v in [&x, &w, &b, &r] {
                                    tape.watch(v);
                                }
                                let y = if fused {
                                    let epi = Epilogue {
                                        bias,
                                        residual,
                                        relu,
                                    };
                                    conv1d_fused(&mut tape, &x, &w, geo.1, geo.2, epi).unwrap()
                                } else {
                                    let mut y =
                                        conv1d(&mut tape, &x, &w, bias, geo.1, geo.2).unwrap();
                                    if let Some(r) = residual {
                                        y = ew::add(&mut tape, &y, r).unwrap();
                                    }
                                    if relu {
                                        y = ew::relu(&mut tape, &y).unwrap();
                                    }
                                    y
                                };
                                let grads = tape.backward_with(&y, g.clone()).unwrap();
                                let mut out = vec![y.to_vec_f32().unwrap()];
                                for v in [&x, &w, &b, &r] {
                                    out.push(
                                        grads
                                            .get(v)
                                            .map(|t| t.to_vec_f32().unwrap())
                                            .unwrap_or_default(),
                                    );
                                }
                                out
                            })
                        };
                        let (fused, separate) = (run(true), run(false));
                        for (i, name) in ["y", "dx", "dW", "db", "dres"].iter().enumerate() {
                            assert!(
                                fused[i] == separate[i],
                                "{name} on {device} at {p}, bias {} residual {} relu {relu}, {d:?}",
                                bias.is_some(),
                                residual.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fused_epilogue_checks_its_shapes() {
        let cpu = Device::Cpu;
        let d = dims(2, 3, 9, 4, (3, 1, 1)).unwrap();
        let x = Tensor::zeros(&[d.batch, d.cin, d.len], &cpu).unwrap();
        let w = Tensor::zeros(&[d.cout, d.cin, d.ksize], &cpu).unwrap();
        let wrong = Tensor::zeros(&[d.batch, d.cout, d.lout + 1], &cpu).unwrap();
        let epi = Epilogue {
            residual: Some(&wrong),
            ..Epilogue::default()
        };
        let e = conv1d_fused(&mut Tape::inference(), &x, &w, 1, 1, epi)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("residual") && e.contains(&format!("{:?}", d.y_shape())),
            "{e}"
        );
    }

    #[test]
    fn conv1d_backward_through_tape_on_every_device() {
        for device in devices() {
            for geo in GEOMETRIES {
                let d = dims(3, 2, 11, 4, geo).unwrap();
                let (xv, wv, bv, gv) = inputs(&d, 9);
                let x = Tensor::from_vec(f32s(&xv), &[d.batch, d.cin, d.len], &device).unwrap();
                let w = Tensor::from_vec(f32s(&wv), &[d.cout, d.cin, d.ksize], &device).unwrap();
                let bias = Tensor::from_vec(f32s(&bv), &[d.cout], &device).unwrap();
                let mut tape = Tape::new();
                for t in [&x, &w, &bias] {
                    tape.watch(t);
                }
                let y = conv1d(&mut tape, &x, &w, Some(&bias), geo.1, geo.2).unwrap();
                assert_eq!(y.shape(), &d.y_shape());
                let g = Tensor::from_vec(f32s(&gv), y.shape(), &device).unwrap();
                let yg = crate::ops::elementwise::mul(&mut tape, &y, &g).unwrap();
                let loss = crate::ops::reduce::sum_all(&mut tape, &yg).unwrap();
                let grads = tape.backward(&loss).unwrap();
                let what = format!("{d:?} on {device}");
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &f32s(&cpu::conv1d(&xv, &wv, Some(&bv), &d).unwrap()),
                    1e-5,
                    1e-5,
                    &format!("y {what}"),
                );
                assert_close(
                    &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                    &f32s(&cpu::conv1d_dx(&gv, &wv, &d).unwrap()),
                    1e-5,
                    1e-5,
                    &format!("dx {what}"),
                );
                assert_close(
                    &grads.get(&w).unwrap().to_vec_f32().unwrap(),
                    &f32s(&cpu::conv1d_dw(&gv, &xv, &d).unwrap()),
                    1e-5,
                    1e-5,
                    &format!("dW {what}"),
                );
                assert_close(
                    &grads.get(&bias).unwrap().to_vec_f32().unwrap(),
                    &f32s(&cpu::conv1d_db(&gv, &d)),
                    1e-5,
                    1e-5,
                    &format!("db {what}"),
                );
                assert_eq!(grads.get(&w).unwrap().shape(), w.shape());
            }
        }
    }

    #[test]
    fn conv1d_skips_the_gradients_nobody_watches() {
        for device in devices() {
            let x = Tensor::from_slice(&random_vec(2 * 3 * 8, 1), &[2, 3, 8], &device).unwrap();
            let w = Tensor::from_slice(&random_vec(4 * 3 * 3, 2), &[4, 3, 3], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&w);
            let y = conv1d(&mut tape, &x, &w, None, 1, 1).unwrap();
            let loss = crate::ops::reduce::sum_all(&mut tape, &y).unwrap();
            let grads = tape.backward(&loss).unwrap();
            assert!(grads.get(&x).is_none());
            assert_eq!(grads.get(&w).unwrap().shape(), &[4, 3, 3]);
        }
    }

    /// Compares the GPU's forward, dx and dW (and the bias path) with the f64 twin.
    fn check_cuda(gpu: &Device, d: &Conv1d, seed: u64) {
        let (xv, wv, bv, gv) = inputs(d, seed);
        let x = Tensor::from_vec(f32s(&xv), &[d.batch, d.cin, d.len], gpu).unwrap();
        let w = Tensor::from_vec(f32s(&wv), &[d.cout, d.cin, d.ksize], gpu).unwrap();
        let bias = Tensor::from_vec(f32s(&bv), &[d.cout], gpu).unwrap();
        let dy = Tensor::from_vec(f32s(&gv), &d.y_shape(), gpu).unwrap();
        let what = format!("{d:?} (dW split {:?})", dw_split(d));
        // Rounding grows with the length of each sum: allow ~√k f32 ulps of slack on top of rtol.
        let atol = |k: usize| 1e-5 * (k.max(1) as f32).sqrt();
        let y = conv1d(
            &mut Tape::inference(),
            &x,
            &w,
            Some(&bias),
            d.stride,
            d.padding,
        )
        .unwrap();
        assert_close(
            &y.to_vec_f32().unwrap(),
            &f32s(&cpu::conv1d(&xv, &wv, Some(&bv), d).unwrap()),
            1e-4,
            atol(d.cin * d.ksize),
            &format!("y {what}"),
        );
        let dx = conv1d_dx_raw(&dy, &w, d).unwrap();
        assert_close(
            &dx.to_vec_f32().unwrap(),
            &f32s(&cpu::conv1d_dx(&gv, &wv, d).unwrap()),
            1e-4,
            atol(d.cout * d.ksize),
            &format!("dx {what}"),
        );
        let dw = conv1d_dw_raw(&dy, &x, d).unwrap();
        assert_eq!(dw.shape(), &[d.cout, d.cin, d.ksize]);
        assert_close(
            &dw.to_vec_f32().unwrap(),
            &f32s(&cpu::conv1d_dw(&gv, &xv, d).unwrap()),
            1e-4,
            atol(d.batch * d.lout),
            &format!("dW {what}"),
        );
    }

    #[test]
    fn conv1d_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        // On the simulator 130 stands in for 1000: both cross the 64-wide tiles more than once.
        let long = if crate::testing::on_simulator() {
            130
        } else {
            1000
        };
        for len in [1, 7, 33, long] {
            for batch in [1, 3] {
                for (cin, cout) in [(1, 64), (5, 5), (64, 1), (64, 64), (3, 70)] {
                    for geo in GEOMETRIES {
                        // (L = 1 is shorter than some kernels: those shapes are errors, tested below.)
                        let Ok(d) = dims(batch, cin, len, cout, geo) else {
                            continue;
                        };
                        check_cuda(&gpu, &d, (len * 100 + cin + cout) as u64);
                    }
                }
            }
        }
    }

    #[test]
    fn conv1d_cuda_matches_cpu_at_mapper_sizes() {
        let Some(gpu) = gpu() else { return };
        // The Mind Reader mapper's layers (V = 15744) at batch 2: the first conv, a residual conv,
        // the widening k1 conv, and the voxel-mixing k1 conv on the transposed activations. On the
        // simulator (minutes at full size) the lengths shrink ~15× and keep their shapes' kinds:
        // the stem's split-k dW, the k3 halo, the 512-wide k1, the long-K voxel mixing.
        let shapes: [(usize, usize, usize, (usize, usize, usize)); 4] =
            if crate::testing::on_simulator() {
                [
                    (1, 64, 1037, (4, 2, 1)),
                    (64, 64, 518, (3, 1, 1)),
                    (64, 512, 518, (1, 1, 0)),
                    (518, 128, 100, (1, 1, 0)),
                ]
            } else {
                [
                    (1, 64, 15744, (4, 2, 1)),
                    (64, 64, 7872, (3, 1, 1)),
                    (64, 512, 7872, (1, 1, 0)),
                    (7872, 128, 512, (1, 1, 0)),
                ]
            };
        for (cin, cout, len, geo) in shapes {
            check_cuda(&gpu, &dims(2, cin, len, cout, geo).unwrap(), 42);
        }
    }

    #[test]
    fn dw_split_covers_k_in_chunks_of_whole_slabs() {
        for (batch, len, cin, cout, geo) in [
            (1, 1, 1, 1, (1, 1, 0)),
            (3, 1000, 5, 5, (3, 1, 1)),
            (128, 15744, 1, 64, (4, 2, 1)),
            (128, 512, 7872, 128, (1, 1, 0)),
        ] {
            let d = dims(batch, cin, len, cout, geo).unwrap();
            let (chunk, splits) = dw_split(&d);
            let k = d.batch * d.lout;
            assert_eq!(chunk % 16, 0, "{d:?}");
            assert!(
                splits * chunk >= k && (splits - 1) * chunk < k,
                "{d:?}: {splits} × {chunk} for k = {k}"
            );
            assert!(
                splits * d.w_len() <= 1 << 24 || splits == 1,
                "{d:?}: partial buffer too big"
            );
        }
        // The mapper's first layer has few output tiles and a long k: it must split.
        assert!(dw_split(&dims(128, 1, 15744, 64, (4, 2, 1)).unwrap()).1 > 100);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let t = |s: &[usize]| Tensor::zeros(s, &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        let x = t(&[2, 3, 8]);
        let err = conv1d(&mut tape, &x, &t(&[4, 2, 3]), None, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expects 2 input channels") && err.contains("has 3"),
            "{err}"
        );
        let err = conv1d(&mut tape, &x, &t(&[4, 3, 11]), None, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than the padded input"), "{err}");
        assert!(conv1d(&mut tape, &x, &t(&[4, 3, 10]), None, 1, 1).is_ok());
        assert!(conv1d(&mut tape, &x, &t(&[4, 3]), None, 1, 1).is_err());
        assert!(conv1d(&mut tape, &t(&[3, 8]), &t(&[4, 3, 3]), None, 1, 1).is_err());
        assert!(conv1d(&mut tape, &x, &t(&[4, 3, 3]), None, 0, 1).is_err());
        assert!(conv1d(&mut tape, &x, &t(&[4, 3, 3]), Some(&t(&[3])), 1, 1).is_err());
        let x16 = x.to_dtype(crate::tensor::DType::BF16).unwrap();
        let err = conv1d(&mut tape, &x16, &t(&[4, 3, 3]), None, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bf16"), "{err}");
    }

    #[test]
    fn pytorch_conv1d_example() {
        // torch.nn.functional.conv1d(torch.arange(1., 6.).view(1, 1, 5), torch.tensor([[[1., 0., -1.]]]),
        //                            bias=torch.tensor([0.5]), stride=2, padding=1) = [[[-1.5, -1.5, 4.5]]]
        for device in devices() {
            let x = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1, 1, 5], &device).unwrap();
            let w = Tensor::from_slice(&[1.0, 0.0, -1.0], &[1, 1, 3], &device).unwrap();
            let b = Tensor::from_slice(&[0.5], &[1], &device).unwrap();
            let y = conv1d(&mut Tape::new(), &x, &w, Some(&b), 2, 1).unwrap();
            assert_eq!(y.shape(), &[1, 1, 3]);
            assert_close(
                &y.to_vec_f32().unwrap(),
                &[-1.5, -1.5, 4.5],
                1e-6,
                1e-6,
                &format!("on {device}"),
            );
        }
    }
}
