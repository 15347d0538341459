//! 2-D convolution with PyTorch's `conv2d` semantics (NCHW, cross-correlation, zero padding,
//! stride, groups), its transpose (`conv_transpose2d`, the generator's stride-2 upsampling), f32.
//!
//! Forward: x `[B, Cin, H, W]`, weight `[Cout, Cin/G, KH, KW]`, stride s, padding (ph, pw);
//! `OH = (H + 2ph − KH)/s + 1` (likewise OW) and, for co in group g = co / (Cout/G),
//! `y[b, co, oy, ox] = Σ_{ci, ky, kx} w[co, ci, ky, kx] · x[b, g·Cin/G + ci, oy·s + ky − ph, ox·s + kx − pw]`
//! (x = 0 outside the image). As a GEMM per (batch item, group): `y_bg = W_g · cols_bg`, with
//! `cols[(ci, ky, kx), (oy, ox)]` the im2col gather.
//!
//! Backward, with `G = dL/dy`: `dx_bg = col2im(W_gᵀ · G_bg)` and `dW_g = Σ_b G_bg · cols_bgᵀ`; the
//! bias gradient is `Σ_{b, oy, ox} G`.
//!
//! The transposed convolution is the adjoint: `conv_transpose2d(x, w, s, p)` with weight
//! `[Cin, Cout/G, KH, KW]` is exactly `dx` of the convolution that maps its output back to x
//! (output `[B, Cout, (H − 1)·s − 2p + KH, …]`), so it runs on the same three kernels with the
//! roles swapped: its forward is the dx kernel, its dx the forward kernel, its dW the dW kernel.
//!
//! Every kernel also takes two optional `[B, C]` scales, one per input channel and one per output
//! channel, applied inside the loaders and the store (`y = os ⊙ conv(is ⊙ x)`): that is how the
//! modulated convolution (`ops::modconv`) modulates and demodulates without writing a per-sample
//! weight tensor. Plain convolutions pass none. The forward pass can also finish StyleGAN2's layer
//! (noise, bias, activation, gain, clamp) as it stores y: `ops::conv_epilogue`.
//!
//! Cost: each of forward, dx and dW is `2·B·Cout·OH·OW·(Cin/G)·KH·KW` FLOPs; ideal traffic reads x
//! and W and writes y once. The CUDA kernels (`kernels/conv2d.cu`) are implicit GEMMs on the
//! shared 64×64 tile of `kernels/gemm_tile.cuh` (no im2col buffer on the GPU); dW splits its long
//! k = B·OH·OW over grid z into at most 64 MB of partial sums added in a fixed order
//! (deterministic). The CPU twin does im2col + GEMM (ndarray) per (batch item, group), rayon over
//! the batch.

use cudarc::driver::{DeviceRepr, PushKernelArg};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::{same_device, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::conv_epilogue::{BiasAct, EpiArgs, Held};
use crate::ops::elementwise::{bias_add_raw, bias_grad_raw};
use crate::ops::reduce::{reduce_axis_raw, Reduce};
use crate::tensor::{Device, Storage, Tensor};

/// The sizes of one convolution, checked. For a transposed convolution this is the geometry of
/// the convolution it is the adjoint of (its "x" is the transposed conv's output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub ph: usize,
    pub pw: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

fn shape_err<T>(detail: String) -> Result<T> {
    Err(Error::shape("conv2d", detail))
}

impl Conv2d {
    /// Checks x `[B, Cin, H, W]` against weight `[Cout, Cin/G, KH, KW]`, stride, padding, groups.
    pub fn new(
        x: &[usize],
        weight: &[usize],
        stride: usize,
        (ph, pw): (usize, usize),
        groups: usize,
    ) -> Result<Conv2d> {
        let &[batch, cin, h, w] = x else {
            return shape_err(format!("x must be [B, C, H, W], got shape {x:?}"));
        };
        let &[cout, cin_g, kh, kw] = weight else {
            return shape_err(format!(
                "weight must be [Cout, Cin/groups, KH, KW], got shape {weight:?}"
            ));
        };
        if groups == 0 || cin % groups != 0 || cout % groups != 0 {
            return shape_err(format!(
                "{groups} groups must divide both {cin} input and {cout} output channels"
            ));
        }
        if cin_g * groups != cin {
            return shape_err(format!(
                "weight {weight:?} expects {} input channels ({cin_g} per group × {groups} groups) but x {x:?} has {cin}",
                cin_g * groups
            ));
        }
        if kh == 0 || kw == 0 || stride == 0 {
            return shape_err(format!(
                "kernel {kh}×{kw} and stride {stride} must be at least 1"
            ));
        }
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        if kh > hp || kw > wp {
            return shape_err(format!(
                "kernel {kh}×{kw} is larger than the padded input {hp}×{wp} (x {x:?}, padding ({ph}, {pw}))"
            ));
        }
        Ok(Conv2d {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            ph,
            pw,
            groups,
            oh: (hp - kh) / stride + 1,
            ow: (wp - kw) / stride + 1,
        })
    }

    /// The geometry behind `conv_transpose2d(x, weight)`: x `[B, Cin, H, W]`, weight
    /// `[Cin, Cout/G, KH, KW]`; the transposed output `[B, Cout, (H−1)·s − 2p + KH, …]` is this
    /// convolution's input and x its output.
    pub fn transposed(
        x: &[usize],
        weight: &[usize],
        stride: usize,
        (ph, pw): (usize, usize),
        groups: usize,
    ) -> Result<Conv2d> {
        let &[batch, cin, h, w] = x else {
            return shape_err(format!("x must be [B, C, H, W], got shape {x:?}"));
        };
        let &[wcin, cout_g, kh, kw] = weight else {
            return shape_err(format!(
                "transposed weight must be [Cin, Cout/groups, KH, KW], got shape {weight:?}"
            ));
        };
        if wcin != cin || h == 0 || w == 0 || stride == 0 {
            return shape_err(format!(
                "conv_transpose2d: x {x:?} and weight {weight:?} (want weight [{cin}, Cout/groups, KH, KW], stride ≥ 1)"
            ));
        }
        let (oh, ow) = ((h - 1) * stride + kh, (w - 1) * stride + kw);
        if oh <= 2 * ph || ow <= 2 * pw {
            return shape_err(format!(
                "conv_transpose2d: padding ({ph}, {pw}) leaves no output for x {x:?}, weight {weight:?}"
            ));
        }
        let out = [batch, cout_g * groups, oh - 2 * ph, ow - 2 * pw];
        let d = Conv2d::new(&out, &[cin, cout_g, kh, kw], stride, (ph, pw), groups)?;
        debug_assert_eq!((d.oh, d.ow), (h, w));
        Ok(d)
    }

    pub fn cin_g(&self) -> usize {
        self.cin / self.groups
    }
    pub fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    pub fn x_len(&self) -> usize {
        self.batch * self.cin * self.h * self.w
    }
    pub fn w_len(&self) -> usize {
        self.cout * self.cin_g() * self.kh * self.kw
    }
    pub fn y_len(&self) -> usize {
        self.batch * self.cout * self.oh * self.ow
    }
    pub fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.cin, self.h, self.w]
    }
    pub fn w_shape(&self) -> [usize; 4] {
        [self.cout, self.cin_g(), self.kh, self.kw]
    }
    pub fn y_shape(&self) -> [usize; 4] {
        [self.batch, self.cout, self.oh, self.ow]
    }
    /// FLOPs of the forward (each gradient costs the same).
    pub fn flops(&self) -> usize {
        2 * self.y_len() * self.cin_g() * self.kh * self.kw
    }

    /// The input row/column that output position o, tap k reads, or None in the padding.
    fn src(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
        (o * stride + k).checked_sub(pad).filter(|&p| p < len)
    }
}

/// The CPU twins: im2col + GEMM per (batch item, group), generic so gradient checks run in f64.
pub mod cpu {
    use super::*;

    fn view_err(e: ndarray::ShapeError) -> Error {
        Error::shape("conv2d", e.to_string())
    }

    fn check(what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::shape(
                "conv2d",
                format!("{what} holds {got} elements, expected {want}"),
            ));
        }
        Ok(())
    }

    /// Output pixels per im2col tile: the gathered columns of one tile (K × TILE floats, a few
    /// MB at Lafite's widest layers) stay in cache for the GEMM that reads them, instead of one
    /// K × OH·OW buffer per image (300 MB for a 128-channel 3×3 layer at 256²).
    pub const TILE: usize = 2048;

    /// For one tile row (ky, kx): the runs of output pixels that lie on one output row and read
    /// inside the image, as `(q, iy, ox range)` with q the tile offset of the run's first pixel.
    fn runs(
        d: &Conv2d,
        ky: usize,
        kx: usize,
        p0: usize,
        n: usize,
        mut f: impl FnMut(usize, usize, usize, usize),
    ) {
        // ox reads ix = ox·s + kx − pw, inside [0, W) for ox in [lo, hi).
        let lo = d.pw.saturating_sub(kx).div_ceil(d.stride);
        let hi = (d.w + d.pw).saturating_sub(kx).div_ceil(d.stride).min(d.ow);
        let mut q = 0;
        while q < n {
            let (oy, ox0) = ((p0 + q) / d.ow, (p0 + q) % d.ow);
            let len = (d.ow - ox0).min(n - q);
            if let Some(iy) = Conv2d::src(oy, ky, d.stride, d.ph, d.h) {
                let (a, b) = (ox0.max(lo), (ox0 + len).min(hi));
                if a < b {
                    f(q + a - ox0, iy, a, b);
                }
            }
            q += len;
        }
    }

    /// `cols[((ci·KH + ky)·KW + kx)·n + (p − p0)] = x[ci, oy·s + ky − ph, ox·s + kx − pw]` for the
    /// output pixels p = oy·OW + ox in `p0..p0 + n` of one (batch item, group): `xg` holds that
    /// group's Cin/G channels. Rows are copied run by run (contiguous at stride 1).
    pub fn im2col<T: Real>(xg: &[T], d: &Conv2d, p0: usize, n: usize) -> Vec<T> {
        let mut cols = vec![T::zero(); d.cin_g() * d.kh * d.kw * n];
        for ci in 0..d.cin_g() {
            let plane = &xg[ci * d.h * d.w..][..d.h * d.w];
            for ky in 0..d.kh {
                for kx in 0..d.kw {
                    let row = &mut cols[((ci * d.kh + ky) * d.kw + kx) * n..][..n];
                    runs(d, ky, kx, p0, n, |q, iy, a, b| {
                        let src = &plane[iy * d.w..][..d.w];
                        let ix0 = a * d.stride + kx - d.pw;
                        if d.stride == 1 {
                            row[q..q + b - a].copy_from_slice(&src[ix0..ix0 + b - a]);
                        } else {
                            for (k, c) in row[q..q + b - a].iter_mut().enumerate() {
                                *c = src[ix0 + k * d.stride];
                            }
                        }
                    });
                }
            }
        }
        cols
    }

    /// The adjoint of `im2col` for the same tile: adds each entry back to its pixel.
    pub fn col2im<T: Real>(cols: &[T], d: &Conv2d, p0: usize, n: usize, dxg: &mut [T]) {
        for ci in 0..d.cin_g() {
            let plane = &mut dxg[ci * d.h * d.w..][..d.h * d.w];
            for ky in 0..d.kh {
                for kx in 0..d.kw {
                    let row = &cols[((ci * d.kh + ky) * d.kw + kx) * n..][..n];
                    runs(d, ky, kx, p0, n, |q, iy, a, b| {
                        let dst = &mut plane[iy * d.w..][..d.w];
                        let ix0 = a * d.stride + kx - d.pw;
                        for (k, &c) in row[q..q + b - a].iter().enumerate() {
                            let at = ix0 + k * d.stride;
                            dst[at] = dst[at] + c;
                        }
                    });
                }
            }
        }
    }

    /// True for 1×1, stride 1, no padding: im2col is the identity (D's skips after their filter,
    /// ToRGB, fromrgb).
    fn pointwise(d: &Conv2d) -> bool {
        d.kh == 1 && d.kw == 1 && d.stride == 1 && d.ph == 0 && d.pw == 0
    }

    /// The slices of group g: its x channels, its weight rows.
    fn group<T>(v: &[T], g: usize, len: usize) -> &[T] {
        &v[g * len..][..len]
    }

    /// The tiles `(p0, n)` of the output pixels.
    fn tiles(d: &Conv2d) -> impl Iterator<Item = (usize, usize)> {
        let p = d.oh * d.ow;
        (0..p).step_by(TILE).map(move |p0| (p0, TILE.min(p - p0)))
    }

    /// A `[rows, n]` view of columns p0.. of a row-major `[rows, p]` buffer.
    fn cols_of<T>(
        v: &[T],
        rows: usize,
        p: usize,
        p0: usize,
        n: usize,
    ) -> Result<ArrayView2<'_, T>> {
        let v = ArrayView2::from_shape((rows, p), v).map_err(view_err)?;
        Ok(v.slice_move(ndarray::s![.., p0..p0 + n]))
    }

    /// `y = conv2d(x, w)` (no bias).
    pub fn conv2d<T: Real>(x: &[T], w: &[T], d: &Conv2d) -> Result<Vec<T>> {
        check("x", x.len(), d.x_len())?;
        check("weight", w.len(), d.w_len())?;
        let mut y = vec![T::zero(); d.y_len()];
        if y.is_empty() {
            return Ok(y);
        }
        let (kk, p, hw) = (d.cin_g() * d.kh * d.kw, d.oh * d.ow, d.h * d.w);
        let cg = d.cout_g();
        y.par_chunks_mut(d.cout * p)
            .enumerate()
            .try_for_each(|(b, yb)| -> Result<()> {
                let xb = &x[b * d.cin * hw..][..d.cin * hw];
                for g in 0..d.groups {
                    let wv =
                        ArrayView2::from_shape((cg, kk), group(w, g, cg * kk)).map_err(view_err)?;
                    let yg = &mut yb[g * cg * p..][..cg * p];
                    let mut yv = ArrayViewMut2::from_shape((cg, p), yg).map_err(view_err)?;
                    let xg = group(xb, g, d.cin_g() * hw);
                    if pointwise(d) {
                        // im2col of a 1×1, stride-1, unpadded conv is x itself.
                        let xv = ArrayView2::from_shape((kk, p), xg).map_err(view_err)?;
                        general_mat_mul(T::one(), &wv, &xv, T::zero(), &mut yv);
                        continue;
                    }
                    for (p0, n) in tiles(d) {
                        let cols = im2col(xg, d, p0, n);
                        let cv = ArrayView2::from_shape((kk, n), &cols[..]).map_err(view_err)?;
                        let mut out = yv.slice_mut(ndarray::s![.., p0..p0 + n]);
                        general_mat_mul(T::one(), &wv, &cv, T::zero(), &mut out);
                    }
                }
                Ok(())
            })?;
        Ok(y)
    }

    /// `dx = col2im(Wᵀ · dy)` per (batch item, group), tile by tile.
    pub fn conv2d_dx<T: Real>(dy: &[T], w: &[T], d: &Conv2d) -> Result<Vec<T>> {
        check("dy", dy.len(), d.y_len())?;
        check("weight", w.len(), d.w_len())?;
        let mut dx = vec![T::zero(); d.x_len()];
        if dx.is_empty() {
            return Ok(dx);
        }
        let (kk, p, hw) = (d.cin_g() * d.kh * d.kw, d.oh * d.ow, d.h * d.w);
        let cg = d.cout_g();
        dx.par_chunks_mut(d.cin * hw)
            .enumerate()
            .try_for_each(|(b, dxb)| -> Result<()> {
                let dyb = &dy[b * d.cout * p..][..d.cout * p];
                for g in 0..d.groups {
                    let wv =
                        ArrayView2::from_shape((cg, kk), group(w, g, cg * kk)).map_err(view_err)?;
                    let dxg = &mut dxb[g * d.cin_g() * hw..][..d.cin_g() * hw];
                    if pointwise(d) {
                        let dyv = ArrayView2::from_shape((cg, p), group(dyb, g, cg * p))
                            .map_err(view_err)?;
                        let mut dv = ArrayViewMut2::from_shape((kk, p), dxg).map_err(view_err)?;
                        general_mat_mul(T::one(), &wv.t(), &dyv, T::zero(), &mut dv);
                        continue;
                    }
                    for (p0, n) in tiles(d) {
                        let dyv = cols_of(group(dyb, g, cg * p), cg, p, p0, n)?;
                        let mut dcols = vec![T::zero(); kk * n];
                        let mut dv =
                            ArrayViewMut2::from_shape((kk, n), &mut dcols[..]).map_err(view_err)?;
                        general_mat_mul(T::one(), &wv.t(), &dyv, T::zero(), &mut dv);
                        col2im(&dcols, d, p0, n, dxg);
                    }
                }
                Ok(())
            })?;
        Ok(dx)
    }

    /// `dW_g = Σ_b dy_bg · im2col(x_bg)ᵀ`, shaped `[Cout, Cin/G, KH, KW]`; batch items are summed
    /// in fixed chunks, in order, so the result does not depend on the thread count.
    pub fn conv2d_dw<T: Real>(dy: &[T], x: &[T], d: &Conv2d) -> Result<Vec<T>> {
        check("dy", dy.len(), d.y_len())?;
        check("x", x.len(), d.x_len())?;
        let (kk, p, hw) = (d.cin_g() * d.kh * d.kw, d.oh * d.ow, d.h * d.w);
        let cg = d.cout_g();
        const ITEMS: usize = 4;
        let starts: Vec<usize> = (0..d.batch).step_by(ITEMS).collect();
        let partials = starts
            .par_iter()
            .map(|&b0| -> Result<Vec<T>> {
                let mut acc = vec![T::zero(); d.w_len()];
                for b in b0..(b0 + ITEMS).min(d.batch) {
                    let xb = &x[b * d.cin * hw..][..d.cin * hw];
                    let dyb = &dy[b * d.cout * p..][..d.cout * p];
                    for g in 0..d.groups {
                        let ag = &mut acc[g * cg * kk..][..cg * kk];
                        let mut av = ArrayViewMut2::from_shape((cg, kk), ag).map_err(view_err)?;
                        let xg = group(xb, g, d.cin_g() * hw);
                        if pointwise(d) {
                            let xv = ArrayView2::from_shape((kk, p), xg).map_err(view_err)?;
                            let dyv = ArrayView2::from_shape((cg, p), group(dyb, g, cg * p))
                                .map_err(view_err)?;
                            general_mat_mul(T::one(), &dyv, &xv.t(), T::one(), &mut av);
                            continue;
                        }
                        for (p0, n) in tiles(d) {
                            let cols = im2col(xg, d, p0, n);
                            let cv =
                                ArrayView2::from_shape((kk, n), &cols[..]).map_err(view_err)?;
                            let dyv = cols_of(group(dyb, g, cg * p), cg, p, p0, n)?;
                            general_mat_mul(T::one(), &dyv, &cv.t(), T::one(), &mut av);
                        }
                    }
                }
                Ok(acc)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut dw = vec![T::zero(); d.w_len()];
        for part in partials {
            for (s, v) in dw.iter_mut().zip(part) {
                *s = *s + v;
            }
        }
        Ok(dw)
    }

    /// `v[b, c, ·] · s[b, c]` for v `[B, C, inner]` (a copy only when there is a scale).
    pub fn scale_channels<'a>(
        v: &'a [f32],
        s: Option<&[f32]>,
        inner: usize,
    ) -> std::borrow::Cow<'a, [f32]> {
        match s {
            None => std::borrow::Cow::Borrowed(v),
            Some(s) => {
                // s is [B, C]: row r of v (one channel of one sample) takes s[r].
                let mut out = v.to_vec();
                out.par_chunks_mut(inner.max(1))
                    .zip(s.par_iter())
                    .for_each(|(row, &k)| row.iter_mut().for_each(|x| *x *= k));
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

/// The kernels' geometry argument (`struct Geom` in `kernels/conv2d.cu`), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Geom {
    b: i32,
    cin: i32,
    h: i32,
    w: i32,
    cout: i32,
    kh: i32,
    kw: i32,
    stride: i32,
    ph: i32,
    pw: i32,
    oh: i32,
    ow: i32,
    groups: i32,
}

// SAFETY: Geom is #[repr(C)], plain i32s, the layout of the CUDA struct.
unsafe impl DeviceRepr for Geom {}

/// The geometry as the kernels' ints, or an error when something does not fit.
fn geom(d: &Conv2d) -> Result<Geom> {
    // Below 2³⁰, so sums of indices in the kernels stay inside an int.
    let fits = |v: usize| v < 1 << 30;
    let big = [
        d.batch * d.groups,
        d.cin * d.h * d.w,
        d.cout * d.oh * d.ow,
        d.cin_g() * d.kh * d.kw,
        d.cout_g() * d.kh * d.kw,
        d.batch * d.oh * d.ow,
        (d.h + 2 * d.ph) * d.stride,
        (d.w + 2 * d.pw) * d.stride,
    ];
    if !big.iter().all(|&v| fits(v))
        || d.cin_g().div_ceil(64) > 65535
        || d.cout_g().div_ceil(64) > 65535
    {
        return shape_err(format!(
            "{d:?} is too large for the CUDA kernels (sizes < 2³⁰, channels per group ≤ 65535·64)"
        ));
    }
    let i = |v: usize| v as i32;
    Ok(Geom {
        b: i(d.batch),
        cin: i(d.cin),
        h: i(d.h),
        w: i(d.w),
        cout: i(d.cout),
        kh: i(d.kh),
        kw: i(d.kw),
        stride: i(d.stride),
        ph: i(d.ph),
        pw: i(d.pw),
        oh: i(d.oh),
        ow: i(d.ow),
        groups: i(d.groups),
    })
}

/// How dW's k = B·OH·OW is cut for split-K: `(chunk, splits)`, chunk a multiple of 16; enough
/// splits for about 1024 blocks, at least 256 k per split, at most 2²⁴ floats of partial sums.
pub(crate) fn dw_split(d: &Conv2d) -> (usize, usize) {
    let k = d.batch * d.oh * d.ow;
    let n_w = d.w_len();
    let tiles = d.groups * d.cout_g().div_ceil(64) * (d.cin_g() * d.kh * d.kw).div_ceil(64);
    let want = (1024 / tiles.max(1))
        .min(k.div_ceil(256))
        .min((1 << 24) / n_w.max(1))
        .max(1);
    let chunk = (k.div_ceil(want).div_ceil(16) * 16).max(16);
    (chunk, k.div_ceil(chunk).max(1))
}

/// Optional per-channel scales `[B, C]` of a launch: per input channel and per output channel.
#[derive(Clone, Copy, Default)]
pub(crate) struct Scales<'a> {
    pub input: Option<&'a Tensor>,
    pub output: Option<&'a Tensor>,
}

impl<'a> Scales<'a> {
    fn check(&self, d: &Conv2d) -> Result<()> {
        for (what, s, c) in [
            ("input", self.input, d.cin),
            ("output", self.output, d.cout),
        ] {
            if let Some(s) = s {
                if s.shape() != [d.batch, c] {
                    return shape_err(format!(
                        "{what} scale {:?}, want [{}, {c}]",
                        s.shape(),
                        d.batch
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Which of the three kernels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pass {
    Forward,
    Dx,
    Dw,
}

/// The forward pass's epilogue and whether to keep its input u (the scaled convolution).
type Tail<'a> = Option<(&'a BiasAct<'a>, bool)>;

/// Runs one pass. Forward: `a` = x, result y (and, when `tail` asks, u). Dx: `a` = dy, result
/// dx. Dw: `a` = dy, `b` = x, result dW. `b` is the weight for Forward and Dx.
fn run(
    pass: Pass,
    a: &Tensor,
    b: &Tensor,
    sc: Scales,
    tail: Tail,
    d: &Conv2d,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "conv2d";
    same_device(OP, &[a, b])?;
    sc.check(d)?;
    let tail = match tail {
        Some((epi, keep)) if pass == Pass::Forward => {
            let noise_batched = epi.check(d.y_shape(), a)?;
            Some((epi, keep, noise_batched))
        }
        Some(_) => {
            return Err(Error::Invalid(format!(
                "conv2d: an epilogue is for the forward pass, not {pass:?}"
            )))
        }
        None => None,
    };
    let (out_shape, out_len) = match pass {
        Pass::Forward => (d.y_shape(), d.y_len()),
        Pass::Dx => (d.x_shape(), d.x_len()),
        Pass::Dw => (d.w_shape(), d.w_len()),
    };
    match a.device() {
        Device::Cpu => {
            let (sa, sb) = (a.storage(), b.storage());
            let (va, vb) = (sa.cpu_f32(OP)?, sb.cpu_f32(OP)?);
            let (si, so) = (
                sc.input.map(|s| s.to_vec_f32()).transpose()?,
                sc.output.map(|s| s.to_vec_f32()).transpose()?,
            );
            let (hw, p) = (d.h * d.w, d.oh * d.ow);
            let mut kept = None;
            let out = match pass {
                Pass::Forward => {
                    let xs = cpu::scale_channels(va, si.as_deref(), hw);
                    let y = cpu::conv2d(&xs, vb, d)?;
                    let u = cpu::scale_channels(&y, so.as_deref(), p).into_owned();
                    match tail {
                        None => u,
                        Some((epi, keep, _)) => {
                            let y = epi.apply_cpu(&u, d.y_shape())?;
                            if keep {
                                kept = Some(Tensor::from_vec(u, &out_shape, a.device())?);
                            }
                            y
                        }
                    }
                }
                Pass::Dx => {
                    let dys = cpu::scale_channels(va, so.as_deref(), p);
                    let dx = cpu::conv2d_dx(&dys, vb, d)?;
                    cpu::scale_channels(&dx, si.as_deref(), hw).into_owned()
                }
                Pass::Dw => {
                    let dys = cpu::scale_channels(va, so.as_deref(), p);
                    let xs = cpu::scale_channels(vb, si.as_deref(), hw);
                    cpu::conv2d_dw(&dys, &xs, d)?
                }
            };
            Ok((Tensor::from_vec(out, &out_shape, a.device())?, kept))
        }
        Device::Cuda(gpu) => {
            let g = geom(d)?;
            let (sa, sb) = (a.storage(), b.storage());
            let (va, vb) = (sa.cuda_f32(OP)?, sb.cuda_f32(OP)?);
            let (si, so) = (
                sc.input.map(|s| s.storage()),
                sc.output.map(|s| s.storage()),
            );
            let (si, so) = (
                si.as_ref().map(|s| s.cuda_f32(OP)).transpose()?,
                so.as_ref().map(|s| s.cuda_f32(OP)).transpose()?,
            );
            let null = 0u64; // a null device pointer: no scale
            let (chunk, splits) = dw_split(d);
            let unscaled = sc.input.is_none() && sc.output.is_none();
            let (builds, grid, len) = match pass {
                Pass::Forward => (
                    [
                        "conv2d_fwd_f32",
                        "conv2d_fwd_tc_tf32",
                        "conv2d_fwd_tc_bf16",
                        "conv2d_fwd_tc_pipe_tf32",
                        "conv2d_fwd_tc_pipe_bf16",
                    ],
                    super::gemm_tile_grid(d.cout_g(), d.oh * d.ow, d.batch * d.groups),
                    out_len,
                ),
                Pass::Dx => (
                    [
                        "conv2d_dx_f32",
                        "conv2d_dx_tc_tf32",
                        "conv2d_dx_tc_bf16",
                        "conv2d_dx_tc_pipe_tf32",
                        "conv2d_dx_tc_pipe_bf16",
                    ],
                    super::gemm_tile_grid(d.cin_g(), d.h * d.w, d.batch * d.groups),
                    out_len,
                ),
                Pass::Dw => (
                    [
                        "conv2d_dw_f32",
                        "conv2d_dw_tc_tf32",
                        "conv2d_dw_tc_bf16",
                        "conv2d_dw_tc_pipe_tf32",
                        "conv2d_dw_tc_pipe_bf16",
                    ],
                    super::gemm_tile_grid(d.cout_g(), d.cin_g() * d.kh * d.kw, d.groups * splits),
                    splits * out_len,
                ),
            };
            // The pipelined dW reads no scales (they depend on two of its GEMM indices).
            let pipelinable = pass != Pass::Dw || unscaled;
            let (name, cfg) = super::conv_tc::pick(gpu, "conv2d", builds, pipelinable, grid)?;
            let mut out = gpu.alloc::<f32>(len)?;
            let keep = tail.is_some_and(|(_, keep, _)| keep);
            let mut pre = if keep {
                Some(gpu.alloc::<f32>(len)?)
            } else {
                None
            };
            let epi_args = match tail {
                Some((epi, _, batched)) => epi.kernel_args(batched),
                None => EpiArgs::NONE,
            };
            let held = Held::new(tail.map(|(epi, _, _)| epi));
            let parts = held.pointers(OP)?;
            if len > 0 {
                let (chunk_i, splits_i) = (chunk as i32, splits as i32);
                let f = gpu.function("conv2d", name)?;
                let mut lb = gpu.stream.launch_builder(&f);
                lb.arg(va).arg(vb).arg(&mut out);
                match si {
                    Some(s) => lb.arg(s),
                    None => lb.arg(&null),
                };
                match so {
                    Some(s) => lb.arg(s),
                    None => lb.arg(&null),
                };
                lb.arg(&g);
                if pass == Pass::Dw {
                    lb.arg(&chunk_i).arg(&splits_i);
                }
                if pass == Pass::Forward {
                    for p in parts {
                        match p {
                            Some(s) => lb.arg(s),
                            None => lb.arg(&null),
                        };
                    }
                    match pre.as_mut() {
                        Some(s) => lb.arg(s),
                        None => lb.arg(&null),
                    };
                    lb.arg(&epi_args);
                }
                // SAFETY: a, b hold the tensors Conv2d::new checked against d (x, w, dy of their
                // shapes); the scales are [B, C] (checked) or null and never read; the loaders read
                // only inside x / dy / w; each kernel writes every element of `out`, allocated with
                // `len` floats (dW: splits partial sums of Cout·Cin/G·KH·KW). The pipelined builds copy
                // the same elements by cp.async into the shared memory `conv_tc::pick` opted into
                // and set in `cfg`, and are not picked for a dW with scales (they would ignore them).
                // The forward's epilogue pointers were checked by `BiasAct::check` (bias [Cout],
                // noise [B, 1, OH, OW] or [OH, OW] as `epi_args` says, strength one float) or are
                // null; `pre`, when given, holds `len` floats like `out`.
                unsafe { lb.launch(cfg) }.map_err(|e| Error::cuda(name, e))?;
            }
            let pre =
                pre.map(|p| Tensor::from_storage(Storage::CudaF32(p), &out_shape, a.device()));
            let rows = if pass == Pass::Dw { splits } else { 1 };
            let out = Tensor::from_storage(Storage::CudaF32(out), &[rows, out_len], a.device());
            let out = if pass == Pass::Dw && splits > 1 {
                reduce_axis_raw(&out, 0, Reduce::Sum, 1.0)?
            } else {
                out
            };
            Ok((out.reshaped(&out_shape)?, pre))
        }
    }
}

/// `os ⊙ conv2d(is ⊙ x, w)` without recording.
pub(crate) fn conv2d_fwd_raw(x: &Tensor, w: &Tensor, sc: Scales, d: &Conv2d) -> Result<Tensor> {
    Ok(run(Pass::Forward, x, w, sc, None, d)?.0)
}

/// `epi(u)` for `u = os ⊙ conv2d(is ⊙ x, w)` in one pass, without recording; and u itself when
/// `keep_u` (the modulated convolution's backward needs it).
pub(crate) fn conv2d_fwd_epilogue_raw(
    x: &Tensor,
    w: &Tensor,
    sc: Scales,
    epi: &BiasAct,
    keep_u: bool,
    d: &Conv2d,
) -> Result<(Tensor, Option<Tensor>)> {
    run(Pass::Forward, x, w, sc, Some((epi, keep_u)), d)
}

/// `is ⊙ dx` of the convolution for the gradient `os ⊙ dy`, without recording (also the
/// transposed convolution's forward).
pub(crate) fn conv2d_dx_raw(dy: &Tensor, w: &Tensor, sc: Scales, d: &Conv2d) -> Result<Tensor> {
    Ok(run(Pass::Dx, dy, w, sc, None, d)?.0)
}

/// dW of the convolution for the gradient `os ⊙ dy` and input `is ⊙ x`, without recording.
pub(crate) fn conv2d_dw_raw(dy: &Tensor, x: &Tensor, sc: Scales, d: &Conv2d) -> Result<Tensor> {
    Ok(run(Pass::Dw, dy, x, sc, None, d)?.0)
}

fn check_bias(bias: Option<&Tensor>, x: &Tensor, c: usize) -> Result<()> {
    if let Some(b) = bias {
        if b.shape() != [c] {
            return shape_err(format!(
                "bias {:?} for {c} output channels (want [{c}])",
                b.shape()
            ));
        }
        same_device("conv2d", &[x, b])?;
    }
    Ok(())
}

/// `y = conv2d(x, weight) + bias`: x `[B, Cin, H, W]`, weight `[Cout, Cin/groups, KH, KW]`, bias
/// `[Cout]`, as PyTorch's `F.conv2d(x, w, b, stride, padding, groups=groups)`. Recorded.
pub fn conv2d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    let d = Conv2d::new(x.shape(), weight.shape(), stride, padding, groups)?;
    check_bias(bias, x, d.cout)?;
    let y = conv2d_fwd_raw(x, weight, Scales::default(), &d)?;
    let y = match bias {
        Some(b) => bias_add_raw(&y, b, 1)?,
        None => y,
    };
    let (need_x, need_w) = (tape.needs_grad(&[x]), tape.needs_grad(&[weight]));
    let need_b = bias.map(|b| tape.needs_grad(&[b]));
    let (xc, wc) = (x.clone(), weight.clone());
    let inputs: Vec<&Tensor> = [x, weight].into_iter().chain(bias).collect();
    tape.record(&inputs, &y, move |dy| {
        let none = Scales::default();
        let dx = need_x
            .then(|| conv2d_dx_raw(dy, &wc, none, &d))
            .transpose()?;
        let dw = need_w
            .then(|| conv2d_dw_raw(dy, &xc, none, &d))
            .transpose()?;
        let mut grads = vec![dx, dw];
        if let Some(nb) = need_b {
            grads.push(
                nb.then(|| bias_grad_raw(dy, d.batch, d.cout, d.oh * d.ow))
                    .transpose()?,
            );
        }
        Ok(grads)
    });
    Ok(y)
}

/// `y = conv_transpose2d(x, weight) + bias`: x `[B, Cin, H, W]`, weight `[Cin, Cout/groups, KH, KW]`,
/// y `[B, Cout, (H−1)·stride − 2·padding + KH, …]`, as PyTorch's `F.conv_transpose2d` (no
/// output padding). Recorded.
pub fn conv_transpose2d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    let d = Conv2d::transposed(x.shape(), weight.shape(), stride, padding, groups)?;
    check_bias(bias, x, d.cin)?;
    let y = conv2d_dx_raw(x, weight, Scales::default(), &d)?;
    let y = match bias {
        Some(b) => bias_add_raw(&y, b, 1)?,
        None => y,
    };
    let (need_x, need_w) = (tape.needs_grad(&[x]), tape.needs_grad(&[weight]));
    let need_b = bias.map(|b| tape.needs_grad(&[b]));
    let (xc, wc) = (x.clone(), weight.clone());
    let inputs: Vec<&Tensor> = [x, weight].into_iter().chain(bias).collect();
    tape.record(&inputs, &y, move |dy| {
        let none = Scales::default();
        // The adjoint's adjoint: dx is the convolution of dy, dW the convolution's dW with the
        // roles of "input" (dy here) and "output gradient" (x here) as in the forward geometry.
        let dx = need_x
            .then(|| conv2d_fwd_raw(dy, &wc, none, &d))
            .transpose()?;
        let dw = need_w
            .then(|| conv2d_dw_raw(&xc, dy, none, &d))
            .transpose()?;
        let mut grads = vec![dx, dw];
        if let Some(nb) = need_b {
            grads.push(
                nb.then(|| bias_grad_raw(dy, d.batch, d.cin, d.h * d.w))
                    .transpose()?,
            );
        }
        Ok(grads)
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, random_vec};

    /// (KH, KW, stride, ph, pw, groups): the networks' 3×3 same, 1×1, 3×3 stride 2 unpadded
    /// (D's downsampling after its filter), and awkward ones: stride > kernel, rectangular, groups.
    const GEOMETRIES: [(usize, usize, usize, usize, usize, usize); 6] = [
        (3, 3, 1, 1, 1, 1),
        (1, 1, 1, 0, 0, 1),
        (3, 3, 2, 0, 0, 1),
        (2, 3, 3, 1, 2, 1),
        (3, 3, 2, 1, 1, 2),
        (1, 2, 1, 0, 1, 3),
    ];

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn dims(
        b: usize,
        cin: usize,
        (h, w): (usize, usize),
        cout: usize,
        (kh, kw, s, ph, pw, g): (usize, usize, usize, usize, usize, usize),
    ) -> Result<Conv2d> {
        Conv2d::new(
            &[b, cin * g, h, w],
            &[cout * g, cin, kh, kw],
            s,
            (ph, pw),
            g,
        )
    }

    /// (x, w, loss weights g) in f64.
    fn inputs(d: &Conv2d, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        (
            f64s(&random_vec(d.x_len(), seed)),
            f64s(&random_vec(d.w_len(), seed + 1)),
            f64s(&random_vec(d.y_len(), seed + 2)),
        )
    }

    /// y by the definition: an independent check of im2col's indexing and the groups.
    fn naive(x: &[f64], w: &[f64], d: &Conv2d) -> Vec<f64> {
        let mut y = Vec::new();
        for b in 0..d.batch {
            for co in 0..d.cout {
                let g = co / d.cout_g();
                for oy in 0..d.oh {
                    for ox in 0..d.ow {
                        let mut acc = 0.0;
                        for ci in 0..d.cin_g() {
                            for ky in 0..d.kh {
                                for kx in 0..d.kw {
                                    let iy = (oy * d.stride + ky) as isize - d.ph as isize;
                                    let ix = (ox * d.stride + kx) as isize - d.pw as isize;
                                    if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize
                                    {
                                        continue;
                                    }
                                    let c = g * d.cin_g() + ci;
                                    acc += w[((co * d.cin_g() + ci) * d.kh + ky) * d.kw + kx]
                                        * x[((b * d.cin + c) * d.h + iy as usize) * d.w
                                            + ix as usize];
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv2d_twin_matches_the_definition() {
        for geo in GEOMETRIES {
            for hw in [(5, 6), (8, 8), (9, 7)] {
                let d = dims(2, 2, hw, 3, geo).unwrap();
                let (x, w, _) = inputs(&d, 1);
                let got = cpu::conv2d(&x, &w, &d).unwrap();
                assert_close(
                    &f32s(&got),
                    &f32s(&naive(&x, &w, &d)),
                    1e-12,
                    1e-12,
                    &format!("{d:?}"),
                );
            }
        }
    }

    #[test]
    fn conv2d_gradients_match_finite_differences() {
        for geo in GEOMETRIES {
            let d = dims(2, 2, (6, 5), 2, geo).unwrap();
            let (x, w, g) = inputs(&d, 5);
            let loss = |x: &[f64], w: &[f64]| {
                cpu::conv2d(x, w, &d)
                    .unwrap()
                    .iter()
                    .zip(&g)
                    .map(|(y, g)| y * g)
                    .sum::<f64>()
            };
            gradcheck(
                &format!("dx {d:?}"),
                |v| loss(v, &w),
                &x,
                &cpu::conv2d_dx(&g, &w, &d).unwrap(),
            );
            gradcheck(
                &format!("dW {d:?}"),
                |v| loss(&x, v),
                &w,
                &cpu::conv2d_dw(&g, &x, &d).unwrap(),
            );
        }
    }

    /// The transposed convolution against its definition:
    /// `y[b, o, iy·s + ky − p, ix·s + kx − p] += w[i, o, ky, kx] · x[b, i, iy, ix]` (groups 1).
    #[test]
    fn conv_transpose2d_matches_the_definition() {
        for device in devices() {
            for (s, p, k) in [(2, 0, 3), (2, 1, 3), (1, 1, 3), (3, 0, 2)] {
                let (b, cin, cout, h, w) = (2, 3, 4, 5, 4);
                let xv = random_vec(b * cin * h * w, 3);
                let wv = random_vec(cin * cout * k * k, 4);
                let (oh, ow) = ((h - 1) * s + k - 2 * p, (w - 1) * s + k - 2 * p);
                let mut want = vec![0.0f64; b * cout * oh * ow];
                for bb in 0..b {
                    for i in 0..cin {
                        for iy in 0..h {
                            for ix in 0..w {
                                for o in 0..cout {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let (y, x) = (
                                                (iy * s + ky) as isize - p as isize,
                                                (ix * s + kx) as isize - p as isize,
                                            );
                                            if y < 0
                                                || x < 0
                                                || y >= oh as isize
                                                || x >= ow as isize
                                            {
                                                continue;
                                            }
                                            want[((bb * cout + o) * oh + y as usize) * ow
                                                + x as usize] +=
                                                wv[((i * cout + o) * k + ky) * k + kx] as f64
                                                    * xv[((bb * cin + i) * h + iy) * w + ix] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                let x = Tensor::from_vec(xv, &[b, cin, h, w], &device).unwrap();
                let wt = Tensor::from_vec(wv, &[cin, cout, k, k], &device).unwrap();
                let y = conv_transpose2d(&mut Tape::new(), &x, &wt, None, s, (p, p), 1).unwrap();
                assert_eq!(y.shape(), &[b, cout, oh, ow]);
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &f32s(&want),
                    1e-5,
                    1e-5,
                    &format!("s {s} p {p} k {k} on {device}"),
                );
            }
        }
    }

    /// Forward, dx, dW and db through the tape on every device, against the f64 twin; the
    /// transposed convolution too (its gradients are the convolution's passes with roles swapped).
    #[test]
    fn conv2d_backward_through_tape_on_every_device() {
        for device in devices() {
            for geo in GEOMETRIES {
                let d = dims(3, 2, (7, 6), 2, geo).unwrap();
                let (xv, wv, gv) = inputs(&d, 9);
                let bv = random_vec(d.cout, 11);
                let x = Tensor::from_vec(f32s(&xv), &d.x_shape(), &device).unwrap();
                let w = Tensor::from_vec(f32s(&wv), &d.w_shape(), &device).unwrap();
                let bias = Tensor::from_slice(&bv, &[d.cout], &device).unwrap();
                let mut tape = Tape::new();
                for t in [&x, &w, &bias] {
                    tape.watch(t);
                }
                let (s, ph, pw, g) = (geo.2, geo.3, geo.4, geo.5);
                let y = conv2d(&mut tape, &x, &w, Some(&bias), s, (ph, pw), g).unwrap();
                let gt = Tensor::from_vec(f32s(&gv), y.shape(), &device).unwrap();
                let yg = crate::ops::elementwise::mul(&mut tape, &y, &gt).unwrap();
                let loss = crate::ops::reduce::sum_all(&mut tape, &yg).unwrap();
                let grads = tape.backward(&loss).unwrap();
                let what = format!("{d:?} on {device}");
                let mut want_y = cpu::conv2d(&xv, &wv, &d).unwrap();
                let p = d.oh * d.ow;
                for (i, v) in want_y.iter_mut().enumerate() {
                    *v += bv[i / p % d.cout] as f64;
                }
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &f32s(&want_y),
                    1e-5,
                    1e-5,
                    &format!("y {what}"),
                );
                let want_dx = cpu::conv2d_dx(&gv, &wv, &d).unwrap();
                assert_close(
                    &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                    &f32s(&want_dx),
                    1e-5,
                    1e-5,
                    &format!("dx {what}"),
                );
                let want_dw = cpu::conv2d_dw(&gv, &xv, &d).unwrap();
                assert_close(
                    &grads.get(&w).unwrap().to_vec_f32().unwrap(),
                    &f32s(&want_dw),
                    1e-5,
                    1e-5,
                    &format!("dW {what}"),
                );
                let want_db =
                    crate::ops::elementwise::cpu::bias_grad(&f32s(&gv), d.batch, d.cout, p);
                assert_close(
                    &grads.get(&bias).unwrap().to_vec_f32().unwrap(),
                    &want_db,
                    1e-5,
                    1e-5,
                    &format!("db {what}"),
                );

                // The transposed convolution of the same geometry maps y-shaped tensors to x-shaped
                // ones (when no remainder of the strided input is dropped: no output padding).
                if Conv2d::transposed(&d.y_shape(), &d.w_shape(), s, (ph, pw), g).unwrap() != d {
                    continue;
                }
                let mut tape = Tape::new();
                let gy = Tensor::from_vec(f32s(&gv), &d.y_shape(), &device).unwrap();
                tape.watch(&gy);
                tape.watch(&w);
                let t = conv_transpose2d(&mut tape, &gy, &w, None, s, (ph, pw), g).unwrap();
                assert_close(
                    &t.to_vec_f32().unwrap(),
                    &f32s(&want_dx),
                    1e-5,
                    1e-5,
                    &format!("transposed {what}"),
                );
                let gx = Tensor::from_vec(f32s(&xv), t.shape(), &device).unwrap();
                let tg = crate::ops::elementwise::mul(&mut tape, &t, &gx).unwrap();
                let loss = crate::ops::reduce::sum_all(&mut tape, &tg).unwrap();
                let grads = tape.backward(&loss).unwrap();
                // Σ x ⊙ convᵀ(gy) = Σ gy ⊙ conv(x): d/d(gy) = conv(x), d/dW the convolution's dW.
                assert_close(
                    &grads.get(&gy).unwrap().to_vec_f32().unwrap(),
                    &f32s(&cpu::conv2d(&xv, &wv, &d).unwrap()),
                    1e-5,
                    1e-5,
                    &format!("transposed dx {what}"),
                );
                assert_close(
                    &grads.get(&w).unwrap().to_vec_f32().unwrap(),
                    &f32s(&want_dw),
                    1e-5,
                    1e-5,
                    &format!("transposed dW {what}"),
                );
            }
        }
    }

    /// The GPU's three passes, with and without per-channel scales, against the f64 twin.
    fn check_cuda(gpu: &Device, d: &Conv2d, seed: u64) {
        let (xv, wv, gv) = inputs(d, seed);
        let x = Tensor::from_vec(f32s(&xv), &d.x_shape(), gpu).unwrap();
        let w = Tensor::from_vec(f32s(&wv), &d.w_shape(), gpu).unwrap();
        let dy = Tensor::from_vec(f32s(&gv), &d.y_shape(), gpu).unwrap();
        let isv = random_vec(d.batch * d.cin, seed + 7);
        let osv = random_vec(d.batch * d.cout, seed + 8);
        let is = Tensor::from_slice(&isv, &[d.batch, d.cin], gpu).unwrap();
        let os = Tensor::from_slice(&osv, &[d.batch, d.cout], gpu).unwrap();
        let what = format!("{d:?} (dW split {:?})", dw_split(d));
        let atol = |k: usize| 1e-5 * (k.max(1) as f32).sqrt();
        let (hw, p) = (d.h * d.w, d.oh * d.ow);
        for scaled in [false, true] {
            let sc = if scaled {
                Scales {
                    input: Some(&is),
                    output: Some(&os),
                }
            } else {
                Scales::default()
            };
            let si = scaled.then_some(&isv[..]);
            let so = scaled.then_some(&osv[..]);
            let xs = cpu::scale_channels(&f32s(&xv), si, hw).into_owned();
            let dys = cpu::scale_channels(&f32s(&gv), so, p).into_owned();
            let want_y = cpu::conv2d(&f64s(&xs), &wv, d).unwrap();
            let want_y = cpu::scale_channels(&f32s(&want_y), so, p).into_owned();
            let y = conv2d_fwd_raw(&x, &w, sc, d).unwrap();
            assert_close(
                &y.to_vec_f32().unwrap(),
                &want_y,
                1e-4,
                atol(d.cin_g() * d.kh * d.kw),
                &format!("y scaled {scaled} {what}"),
            );
            let want_dx = cpu::conv2d_dx(&f64s(&dys), &wv, d).unwrap();
            let want_dx = cpu::scale_channels(&f32s(&want_dx), si, hw).into_owned();
            let dx = conv2d_dx_raw(&dy, &w, sc, d).unwrap();
            assert_close(
                &dx.to_vec_f32().unwrap(),
                &want_dx,
                1e-4,
                atol(d.cout_g() * d.kh * d.kw),
                &format!("dx scaled {scaled} {what}"),
            );
            let want_dw = cpu::conv2d_dw(&f64s(&dys), &f64s(&xs), d).unwrap();
            let dw = conv2d_dw_raw(&dy, &x, sc, d).unwrap();
            assert_eq!(dw.shape(), &d.w_shape());
            assert_close(
                &dw.to_vec_f32().unwrap(),
                &f32s(&want_dw),
                1e-4,
                atol(d.batch * p),
                &format!("dW scaled {scaled} {what}"),
            );
        }
    }

    #[test]
    fn conv2d_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        let big = if crate::testing::on_simulator() {
            70
        } else {
            130
        };
        for (hw, batch) in [((1, 1), 1), ((5, 7), 2), ((9, 9), 3)] {
            for (cin, cout) in [(1, 3), (5, 5), (big, 2), (3, big)] {
                for geo in GEOMETRIES {
                    let Ok(d) = dims(batch, cin, hw, cout, geo) else {
                        continue;
                    };
                    check_cuda(&gpu, &d, (hw.0 * 100 + cin + cout) as u64);
                }
            }
        }
        // Lafite's layer kinds at a small size: 3×3 same on 16², the stride-2 3×3 after D's
        // filter (18² → 8²), and a 1×1 on 16² with more than one tile of channels and pixels.
        for (cin, cout, hw, geo) in [
            (64, 64, (16, 16), (3, 3, 1, 1, 1, 1)),
            (32, 64, (18, 18), (3, 3, 2, 0, 0, 1)),
            (65, 3, (16, 16), (1, 1, 1, 0, 0, 1)),
        ] {
            check_cuda(&gpu, &dims(2, cin, hw, cout, geo).unwrap(), 42);
        }
    }

    #[test]
    fn dw_split_covers_k_in_chunks_of_whole_slabs() {
        for (b, hw, cin, cout, geo) in [
            (1, (1, 1), 1, 1, (1, 1, 1, 0, 0, 1)),
            (16, (256, 256), 64, 3, (1, 1, 1, 0, 0, 1)),
            (16, (128, 128), 128, 128, (3, 3, 1, 1, 1, 1)),
            (3, (9, 9), 2, 2, (3, 3, 2, 1, 1, 2)),
        ] {
            let d = dims(b, cin, hw, cout, geo).unwrap();
            let (chunk, splits) = dw_split(&d);
            let k = d.batch * d.oh * d.ow;
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
    }

    #[test]
    fn bad_shapes_are_errors() {
        let t = |s: &[usize]| Tensor::zeros(s, &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        let x = t(&[2, 4, 8, 8]);
        let err = conv2d(&mut tape, &x, &t(&[3, 3, 3, 3]), None, 1, (1, 1), 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expects 3 input channels") && err.contains("has 4"),
            "{err}"
        );
        let err = conv2d(&mut tape, &x, &t(&[3, 4, 11, 3]), None, 1, (1, 1), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than the padded input"), "{err}");
        let err = conv2d(&mut tape, &x, &t(&[3, 2, 3, 3]), None, 1, (1, 1), 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("groups must divide"), "{err}");
        assert!(conv2d(&mut tape, &x, &t(&[4, 2, 3, 3]), None, 1, (1, 1), 2).is_ok());
        assert!(conv2d(&mut tape, &x, &t(&[4, 4, 3]), None, 1, (1, 1), 1).is_err());
        assert!(conv2d(
            &mut tape,
            &t(&[4, 8, 8]),
            &t(&[4, 4, 3, 3]),
            None,
            1,
            (1, 1),
            1
        )
        .is_err());
        assert!(conv2d(&mut tape, &x, &t(&[4, 4, 3, 3]), None, 0, (1, 1), 1).is_err());
        assert!(conv2d(
            &mut tape,
            &x,
            &t(&[4, 4, 3, 3]),
            Some(&t(&[3])),
            1,
            (1, 1),
            1
        )
        .is_err());
        assert!(conv_transpose2d(&mut tape, &x, &t(&[3, 4, 3, 3]), None, 2, (0, 0), 1).is_err());
        assert!(conv_transpose2d(&mut tape, &x, &t(&[4, 3, 3, 3]), None, 2, (0, 0), 1).is_ok());
        assert!(conv_transpose2d(
            &mut tape,
            &t(&[1, 1, 1, 1]),
            &t(&[1, 1, 1, 1]),
            None,
            1,
            (1, 1),
            1
        )
        .is_err());
    }
}
