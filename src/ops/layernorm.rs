//! Layer normalisation over the last axis (PyTorch `nn.LayerNorm` over one trailing dimension).
//!
//! x is viewed as `[rows, n]`. Per row: `μ = Σ_j x_j / n`, `σ² = Σ_j (x_j − μ)² / n` (biased, as
//! PyTorch), `rstd = 1/√(σ² + eps)`, `x̂ = (x − μ)·rstd`, `y = x̂ ⊙ γ + β` (γ, β of length n, each
//! optional; CLIP uses eps = 1e-5). The forward keeps μ and rstd per row for the backward.
//! Backward, with `g = dy ⊙ γ` (or dy without γ):
//! `dx = rstd·(g − mean_j(g) − x̂ ⊙ mean_j(g ⊙ x̂))`, `dγ = Σ_rows dy ⊙ x̂`, `dβ = Σ_rows dy`.
//!
//! Memory traffic: forward reads x once and writes y once (8 B/element, plus γ, β and 8 B per
//! row); the dx pass reads x and dy and writes dx (12 B/element); dγ/dβ read x and dy once more
//! (8 B/element). Kernels: `kernels/layernorm.cu`. Rows up to 1024 wide get one warp each with the
//! row in registers (CLIP's 512 and 768 fill a warp's registers exactly, and a block per row would
//! idle most of its threads on them); longer rows get one 512-thread block each, the row staged in
//! shared memory when it fits. dγ/dβ: 32×8 blocks over (32 columns × a chunk of rows) write
//! per-chunk partial sums, coalesced over columns, then one thread per column adds the chunks.
//!
//! `add_layer_norm` fuses a pre-LN transformer's residual add with the norm after it:
//! `s = x + r`, `y = layer_norm(s)`, reading x and r and writing s and y (16 B/element in f32,
//! against 12 + 8 for the two ops). bf16 (inference): x, γ, β, y in bf16, statistics in f32.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{bf16_on_cpu, block_per_row, narrow, same_device, same_dtype, widen, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{
    alloc_storage, arg_buffer, arg_buffer_mut, launch, launch_1d, DType, Device, Storage, Tensor,
};

/// The warp-per-row kernels: (widest row, forward, backward dx, bf16 forward).
const WARP_KERNELS: [(usize, &str, &str, &str); 7] = [
    (
        32,
        "layernorm_fwd_w1_f32",
        "layernorm_bwd_w1_f32",
        "layernorm_fwd_w1_bf16",
    ),
    (
        64,
        "layernorm_fwd_w2_f32",
        "layernorm_bwd_w2_f32",
        "layernorm_fwd_w2_bf16",
    ),
    (
        128,
        "layernorm_fwd_w4_f32",
        "layernorm_bwd_w4_f32",
        "layernorm_fwd_w4_bf16",
    ),
    (
        256,
        "layernorm_fwd_w8_f32",
        "layernorm_bwd_w8_f32",
        "layernorm_fwd_w8_bf16",
    ),
    (
        512,
        "layernorm_fwd_w16_f32",
        "layernorm_bwd_w16_f32",
        "layernorm_fwd_w16_bf16",
    ),
    (
        768,
        "layernorm_fwd_w24_f32",
        "layernorm_bwd_w24_f32",
        "layernorm_fwd_w24_bf16",
    ),
    (
        1024,
        "layernorm_fwd_w32_f32",
        "layernorm_bwd_w32_f32",
        "layernorm_fwd_w32_bf16",
    ),
];

/// The fused residual-add + layer norm warp kernels: (widest row, f32, bf16).
const ADD_WARP_KERNELS: [(usize, &str, &str); 7] = [
    (32, "add_layernorm_fwd_w1_f32", "add_layernorm_fwd_w1_bf16"),
    (64, "add_layernorm_fwd_w2_f32", "add_layernorm_fwd_w2_bf16"),
    (128, "add_layernorm_fwd_w4_f32", "add_layernorm_fwd_w4_bf16"),
    (256, "add_layernorm_fwd_w8_f32", "add_layernorm_fwd_w8_bf16"),
    (
        512,
        "add_layernorm_fwd_w16_f32",
        "add_layernorm_fwd_w16_bf16",
    ),
    (
        768,
        "add_layernorm_fwd_w24_f32",
        "add_layernorm_fwd_w24_bf16",
    ),
    (
        1024,
        "add_layernorm_fwd_w32_f32",
        "add_layernorm_fwd_w32_bf16",
    ),
];

/// Dynamic shared memory a block-per-row kernel may use to keep its row (under the 48 KiB that
/// needs no opt-in, leaving room for the reduction scratch).
const SMEM_CACHE_BYTES: usize = 44 * 1024;

/// The CPU twins, generic so gradient checks run them in f64. Rows are `n > 0` wide.
pub mod cpu {
    use super::Real;
    use rayon::prelude::*;

    /// (y, mean, rstd) of each length-`n` row of x.
    pub fn layer_norm<T: Real>(
        x: &[T],
        n: usize,
        gamma: Option<&[T]>,
        beta: Option<&[T]>,
        eps: T,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        if n == 0 {
            return (Vec::new(), Vec::new(), Vec::new());
        }
        let nf = T::c(n as f64);
        let (mean, rstd): (Vec<T>, Vec<T>) = x
            .par_chunks(n)
            .map(|xr| {
                let mu = xr.iter().copied().sum::<T>() / nf;
                let var = xr.iter().map(|&v| (v - mu) * (v - mu)).sum::<T>() / nf;
                (mu, T::one() / (var + eps).sqrt())
            })
            .unzip();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .zip(mean.par_iter().zip(&rstd))
            .for_each(|((yr, xr), (&mu, &r))| {
                for (j, (yj, &xj)) in yr.iter_mut().zip(xr).enumerate() {
                    let xh = (xj - mu) * r;
                    *yj = gamma.map_or(xh, |g| xh * g[j]) + beta.map_or(T::zero(), |b| b[j]);
                }
            });
        (y, mean, rstd)
    }

    /// (dx, dgamma, dbeta) from the forward's input, mean and rstd and dy.
    pub fn layer_norm_bwd<T: Real>(
        x: &[T],
        dy: &[T],
        n: usize,
        gamma: Option<&[T]>,
        mean: &[T],
        rstd: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let mut dx = vec![T::zero(); x.len()];
        let (mut dgamma, mut dbeta) = (vec![T::zero(); n], vec![T::zero(); n]);
        if n == 0 {
            return (dx, dgamma, dbeta);
        }
        let nf = T::c(n as f64);
        let rows = dx
            .par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
            .zip(mean.par_iter().zip(rstd));
        rows.for_each(|((dxr, (xr, gr)), (&mu, &r))| {
            let xh: Vec<T> = xr.iter().map(|&v| (v - mu) * r).collect();
            let g: Vec<T> = gr
                .iter()
                .enumerate()
                .map(|(j, &d)| gamma.map_or(d, |gm| d * gm[j]))
                .collect();
            let mg = g.iter().copied().sum::<T>() / nf;
            let mgx = g.iter().zip(&xh).map(|(&a, &b)| a * b).sum::<T>() / nf;
            for (j, d) in dxr.iter_mut().enumerate() {
                *d = r * (g[j] - mg - xh[j] * mgx);
            }
        });
        for (row, (xr, gr)) in x.chunks(n).zip(dy.chunks(n)).enumerate() {
            for j in 0..n {
                dgamma[j] = dgamma[j] + gr[j] * ((xr[j] - mean[row]) * rstd[row]);
                dbeta[j] = dbeta[j] + gr[j];
            }
        }
        (dx, dgamma, dbeta)
    }
}

/// (rows, n) after checking x, γ, β and eps.
fn check(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(usize, usize)> {
    let op = "layer_norm";
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
    let mut on_device = vec![x];
    for (name, p) in [("gamma", gamma), ("beta", beta)] {
        if let Some(p) = p {
            if p.shape() != [n] {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name} has shape {:?}, expected [{n}] (the last axis of input {:?})",
                        p.shape(),
                        x.shape()
                    ),
                ));
            }
            on_device.push(p);
        }
    }
    same_device(op, &on_device)?;
    same_dtype(op, &on_device)?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::Invalid(format!(
            "layer_norm: eps must be finite and ≥ 0, got {eps}"
        )));
    }
    Ok((rows, n))
}

/// The warp-per-row kernel pair for rows of `n`, if n ≤ 1024.
fn warp_kernels(n: usize) -> Option<(&'static str, &'static str)> {
    WARP_KERNELS.iter().find(|w| n <= w.0).map(|w| (w.1, w.2))
}

/// The forward of a tensor with no elements: an empty y, and zero statistics for its rows.
fn empty_forward(x: &Tensor, rows: usize) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        Tensor::zeros_dtype(x.shape(), x.dtype(), x.device())?,
        Tensor::zeros(&[rows], x.device())?,
        Tensor::zeros(&[rows], x.device())?,
    ))
}

/// (y, mean, rstd) without recording; mean and rstd have shape `[rows]`.
pub(crate) fn layer_norm_raw(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm";
    let (rows, n) = check(x, gamma, beta, eps)?;
    if bf16_on_cpu(x) {
        let (g, b) = (gamma.map(widen).transpose()?, beta.map(widen).transpose()?);
        let (y, mean, rstd) = layer_norm_raw(&widen(x)?, g.as_ref(), b.as_ref(), eps)?;
        return Ok((narrow(&y)?, mean, rstd));
    }
    let (xs, gs, bs) = (
        x.storage(),
        gamma.map(|t| t.storage()),
        beta.map(|t| t.storage()),
    );
    match x.device() {
        Device::Cpu => {
            let gv = gs.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
            let bv = bs.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
            let xv = xs.cpu_f32(op)?;
            if x.numel() == 0 {
                return empty_forward(x, rows);
            }
            let (y, mean, rstd) = cpu::layer_norm(xv, n, gv, bv, eps);
            Ok((
                Tensor::from_vec(y, x.shape(), x.device())?,
                Tensor::from_vec(mean, &[rows], x.device())?,
                Tensor::from_vec(rstd, &[rows], x.device())?,
            ))
        }
        Device::Cuda(gpu) => {
            if x.numel() == 0 {
                return empty_forward(x, rows);
            }
            // f32 or bf16 x, γ, β and y (the kernels' twins by dtype); mean and rstd are f32.
            let bf16 = match x.dtype() {
                DType::F32 => false,
                DType::BF16 => true,
                other => {
                    return Err(Error::DType {
                        op,
                        got: other,
                        expected: "f32 or bf16",
                    })
                }
            };
            let mut y = alloc_storage(gpu, x.dtype(), x.numel())?;
            let (mut mean, mut rstd) = (gpu.alloc::<f32>(rows)?, gpu.alloc::<f32>(rows)?);
            let (r, nn, hg, hb) = (
                rows as u32,
                n as u32,
                gamma.is_some() as i32,
                beta.is_some() as i32,
            );
            let warp = WARP_KERNELS.iter().find(|w| n <= w.0);
            // The block kernel's row cache holds f32 values whatever the input dtype.
            let cache = n * 4 <= SMEM_CACHE_BYTES;
            let (name, cfg) = match (warp, bf16) {
                (Some(w), false) => (w.1, launch_1d(rows * 32)),
                (Some(w), true) => (w.3, launch_1d(rows * 32)),
                (None, false) => (
                    "layernorm_fwd_block_f32",
                    block_per_row(rows, if cache { n * 4 } else { 0 }),
                ),
                (None, true) => (
                    "layernorm_fwd_block_bf16",
                    block_per_row(rows, if cache { n * 4 } else { 0 }),
                ),
            };
            let f = gpu.function("layernorm", name)?;
            let mut b = gpu.stream.launch_builder(&f);
            // Absent γ/β: the kernel gets has_gamma/has_beta = 0 and x as a dummy it never reads.
            arg_buffer(&mut b, &xs, op)?;
            arg_buffer(&mut b, gs.as_deref().unwrap_or(&xs), op)?;
            arg_buffer(&mut b, bs.as_deref().unwrap_or(&xs), op)?;
            arg_buffer_mut(&mut b, &mut y, op)?;
            b.arg(&mut mean)
                .arg(&mut rstd)
                .arg(&r)
                .arg(&nn)
                .arg(&eps)
                .arg(&hg)
                .arg(&hb);
            let c = cache as i32;
            if warp.is_none() {
                b.arg(&c);
            }
            // SAFETY: warp kernels: warp w owns rows w, w + warps, … < rows, reading j < n of x, γ
            // and β (length n) and writing j < n of y and mean[row], rstd[row] (length rows).
            // Block kernels: block b owns rows b, b + grid, … < rows likewise; with cache = 1 it
            // uses row_cache[0..n) floats, which cfg provides. Buffers match the kernel's dtype.
            unsafe { b.launch(cfg) }.map_err(|e| Error::cuda(name, e))?;
            let d = x.device();
            Ok((
                Tensor::from_storage(y, x.shape(), d),
                Tensor::from_storage(Storage::CudaF32(mean), &[rows], d),
                Tensor::from_storage(Storage::CudaF32(rstd), &[rows], d),
            ))
        }
    }
}

/// dx, and (dγ, dβ) when `params`, from the forward's x, γ, mean and rstd, without recording.
pub(crate) fn layer_norm_bwd_raw(
    x: &Tensor,
    gamma: Option<&Tensor>,
    dy: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    params: bool,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let op = "layer_norm backward";
    let (rows, n) = check(x, gamma, None, 0.0)?;
    super::same_shape(op, x, dy)?;
    same_device(op, &[x, dy, mean, rstd])?;
    if mean.shape() != [rows] || rstd.shape() != [rows] {
        return Err(Error::shape(
            op,
            format!(
                "mean {:?} and rstd {:?} for {rows} rows",
                mean.shape(),
                rstd.shape()
            ),
        ));
    }
    let d = x.device();
    if x.numel() == 0 {
        let zeros = || Tensor::zeros(&[n], d);
        return Ok((
            Tensor::zeros(x.shape(), d)?,
            if params {
                Some((zeros()?, zeros()?))
            } else {
                None
            },
        ));
    }
    let (xs, gs, dys, ms, rs) = (
        x.storage(),
        gamma.map(|t| t.storage()),
        dy.storage(),
        mean.storage(),
        rstd.storage(),
    );
    match d {
        Device::Cpu => {
            let gv = gs.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
            let (dx, dg, db) = cpu::layer_norm_bwd(
                xs.cpu_f32(op)?,
                dys.cpu_f32(op)?,
                n,
                gv,
                ms.cpu_f32(op)?,
                rs.cpu_f32(op)?,
            );
            let p = if params {
                Some((
                    Tensor::from_vec(dg, &[n], d)?,
                    Tensor::from_vec(db, &[n], d)?,
                ))
            } else {
                None
            };
            Ok((Tensor::from_vec(dx, x.shape(), d)?, p))
        }
        Device::Cuda(gpu) => {
            let (xb, dyb, mb, rb) = (
                xs.cuda_f32(op)?,
                dys.cuda_f32(op)?,
                ms.cuda_f32(op)?,
                rs.cuda_f32(op)?,
            );
            // Absent γ: has_gamma = 0 and x as a dummy pointer the kernel never reads.
            let gb = gs
                .as_ref()
                .map(|s| s.cuda_f32(op))
                .transpose()?
                .unwrap_or(xb);
            let mut dx = gpu.alloc::<f32>(x.numel())?;
            let (r, nn, hg) = (rows as u32, n as u32, gamma.is_some() as i32);
            match warp_kernels(n) {
                Some((_, name)) => {
                    let f = gpu.function("layernorm", name)?;
                    let mut b = gpu.stream.launch_builder(&f);
                    b.arg(xb)
                        .arg(gb)
                        .arg(dyb)
                        .arg(mb)
                        .arg(rb)
                        .arg(&mut dx)
                        .arg(&r)
                        .arg(&nn)
                        .arg(&hg);
                    // SAFETY: warp w owns rows w, w + warps, … < rows: reads j < n of x, dy and γ
                    // (length n) and mean[row], rstd[row]; writes j < n of dx.
                    unsafe { b.launch(launch_1d(rows * 32)) }.map_err(|e| Error::cuda(name, e))?;
                }
                None => {
                    let cache = n * 8 <= SMEM_CACHE_BYTES;
                    let cfg = block_per_row(rows, if cache { n * 8 } else { 0 });
                    let c = cache as i32;
                    // SAFETY: block b owns rows b, b + grid, … < rows, touching j < n of x, dy, γ, dx
                    // and mean[row], rstd[row]; with cache = 1 it uses row_cache[0..2n), which the launch provides.
                    launch!(
                        gpu,
                        "layernorm",
                        "layernorm_bwd_block_f32",
                        cfg,
                        xb,
                        gb,
                        dyb,
                        mb,
                        rb,
                        &mut dx,
                        &r,
                        &nn,
                        &hg,
                        &c
                    )?;
                }
            }
            let dx = Tensor::from_storage(Storage::CudaF32(dx), x.shape(), d);
            if !params {
                return Ok((dx, None));
            }
            // At least 64 rows per chunk, at most 1024 chunks (grid.y ≤ 65535).
            let rows_per_chunk = rows.div_ceil(1024).max(64);
            let chunks = rows.div_ceil(rows_per_chunk);
            let mut partials = gpu.alloc::<f32>(2 * chunks * n)?;
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(32) as u32, chunks as u32, 1),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            };
            let rpc = rows_per_chunk as u32;
            // SAFETY: block (bx, by) reads columns bx·32 + tx < n of rows [by·rpc, min(rows, (by+1)·rpc))
            // of x and dy, and mean/rstd of those rows; writes partials[by·n + c] and
            // partials[(chunks + by)·n + c], inside the 2·chunks·n allocated (by < chunks = grid.y).
            launch!(
                gpu,
                "layernorm",
                "layernorm_param_grad_partial_f32",
                cfg,
                xb,
                dyb,
                mb,
                rb,
                &mut partials,
                &r,
                &nn,
                &rpc
            )?;
            let (mut dgamma, mut dbeta) = (gpu.alloc::<f32>(n)?, gpu.alloc::<f32>(n)?);
            let ch = chunks as u32;
            // SAFETY: thread c < n reads partials[k·n + c] and partials[(chunks + k)·n + c] for
            // k < chunks (2·chunks·n allocated) and writes dgamma[c], dbeta[c] (n each).
            launch!(
                gpu,
                "layernorm",
                "layernorm_param_grad_finish_f32",
                launch_1d(n),
                &partials,
                &mut dgamma,
                &mut dbeta,
                &ch,
                &nn
            )?;
            Ok((
                dx,
                Some((
                    Tensor::from_storage(Storage::CudaF32(dgamma), &[n], d),
                    Tensor::from_storage(Storage::CudaF32(dbeta), &[n], d),
                )),
            ))
        }
    }
}

/// `y = (x − μ)/√(σ² + eps) ⊙ γ + β` over the last axis (PyTorch `nn.LayerNorm`; γ and β optional,
/// each of the last axis's length). Gradients flow to x, γ and β.
pub fn layer_norm(
    tape: &mut Tape,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let (y, mean, rstd) = layer_norm_raw(x, gamma, beta, eps)?;
    record_layer_norm(tape, x, gamma, beta, &y, mean, rstd);
    Ok(y)
}

/// `(s, y)` with `s = x + r` and `y = layer_norm(s)`: a pre-LN transformer's residual add and
/// the norm after it in one pass over the rows (`add_layernorm_fwd_*`, rows up to 1024 wide on
/// the GPU; wider rows and the CPU run the add and the norm one after the other, which is the
/// same arithmetic: the kernel normalises the stored, rounded s). Recorded as the two ops it
/// fuses, so gradients reach x, r, γ and β exactly as through `add` then `layer_norm`.
pub fn add_layer_norm(
    tape: &mut Tape,
    x: &Tensor,
    r: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    super::same_shape("add_layer_norm", x, r)?;
    let (rows, n) = check(x, gamma, beta, eps)?;
    same_device("add_layer_norm", &[x, r])?;
    same_dtype("add_layer_norm", &[x, r])?;
    let fused = match (x.device(), x.numel() > 0) {
        (Device::Cuda(gpu), true) => ADD_WARP_KERNELS.iter().find(|w| n <= w.0).map(|w| (gpu, w)),
        _ => None,
    };
    let (s, (y, mean, rstd)) = match fused {
        None => {
            let s = crate::ops::elementwise::add_raw(x, r)?;
            let out = layer_norm_raw(&s, gamma, beta, eps)?;
            (s, out)
        }
        Some((gpu, w)) => {
            let op = "add_layer_norm";
            let bf16 = match x.dtype() {
                DType::F32 => false,
                DType::BF16 => true,
                other => {
                    return Err(Error::DType {
                        op,
                        got: other,
                        expected: "f32 or bf16",
                    })
                }
            };
            let (mut sum, mut y) = (
                alloc_storage(gpu, x.dtype(), x.numel())?,
                alloc_storage(gpu, x.dtype(), x.numel())?,
            );
            let (mut mean, mut rstd) = (gpu.alloc::<f32>(rows)?, gpu.alloc::<f32>(rows)?);
            let (rr, nn, hg, hb) = (
                rows as u32,
                n as u32,
                gamma.is_some() as i32,
                beta.is_some() as i32,
            );
            let name = if bf16 { w.2 } else { w.1 };
            let (xs, rs, gs, bs) = (
                x.storage(),
                r.storage(),
                gamma.map(|t| t.storage()),
                beta.map(|t| t.storage()),
            );
            let f = gpu.function("layernorm", name)?;
            let mut b = gpu.stream.launch_builder(&f);
            arg_buffer(&mut b, &xs, op)?;
            arg_buffer(&mut b, &rs, op)?;
            arg_buffer_mut(&mut b, &mut sum, op)?;
            arg_buffer(&mut b, gs.as_deref().unwrap_or(&xs), op)?;
            arg_buffer(&mut b, bs.as_deref().unwrap_or(&xs), op)?;
            arg_buffer_mut(&mut b, &mut y, op)?;
            b.arg(&mut mean)
                .arg(&mut rstd)
                .arg(&rr)
                .arg(&nn)
                .arg(&eps)
                .arg(&hg)
                .arg(&hb);
            // SAFETY: as layernorm_fwd_w*: warp w owns rows w, w + warps, … < rows, reading j < n of
            // x, r, γ, β and writing j < n of s and y, and mean[row], rstd[row]. Buffers match the
            // kernel's dtype; absent γ/β are dummies never read.
            unsafe { b.launch(launch_1d(rows * 32)) }.map_err(|e| Error::cuda(name, e))?;
            let d = x.device();
            (
                Tensor::from_storage(sum, x.shape(), d),
                (
                    Tensor::from_storage(y, x.shape(), d),
                    Tensor::from_storage(Storage::CudaF32(mean), &[rows], d),
                    Tensor::from_storage(Storage::CudaF32(rstd), &[rows], d),
                ),
            )
        }
    };
    tape.record(&[x, r], &s, |ds| {
        Ok(vec![Some(ds.clone()), Some(ds.clone())])
    });
    record_layer_norm(tape, &s, gamma, beta, &y, mean, rstd);
    Ok((s, y))
}

/// Records `y = layer_norm(x)` (from its saved statistics) on the tape.
fn record_layer_norm(
    tape: &mut Tape,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    y: &Tensor,
    mean: Tensor,
    rstd: Tensor,
) {
    let mut inputs = vec![x];
    inputs.extend(gamma);
    inputs.extend(beta);
    let (xc, gc) = (x.clone(), gamma.cloned());
    let (has_gamma, has_beta) = (gamma.is_some(), beta.is_some());
    tape.record(&inputs, y, move |dy| {
        let (dx, params) =
            layer_norm_bwd_raw(&xc, gc.as_ref(), dy, &mean, &rstd, has_gamma || has_beta)?;
        let mut grads = vec![Some(dx)];
        if let Some((dgamma, dbeta)) = params {
            if has_gamma {
                grads.push(Some(dgamma));
            }
            if has_beta {
                grads.push(Some(dbeta));
            }
        }
        Ok(grads)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{elementwise::mul, reduce::sum_all};
    use crate::testing::{assert_close, devices, gpu, gradcheck, random_vec};

    const EPS: f32 = 1e-5;
    const COMBOS: [(bool, bool); 4] = [(true, true), (false, false), (true, false), (false, true)];

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// γ near 1 (as trained) so that no column's gradient vanishes.
    fn gamma_vec(n: usize, seed: u64) -> Vec<f32> {
        random_vec(n, seed).iter().map(|v| 1.0 + 0.5 * v).collect()
    }

    #[test]
    fn layer_norm_gradients_match_finite_differences() {
        let (rows, n) = (3, 6);
        let x: Vec<f64> = random_vec(rows * n, 1)
            .iter()
            .map(|&v| v as f64 * 2.0)
            .collect();
        let (g, b) = (f64s(&gamma_vec(n, 2)), f64s(&random_vec(n, 3)));
        let w = f64s(&random_vec(rows * n, 4));
        for (has_g, has_b) in COMBOS {
            // Parameters p = [x, γ (if any), β (if any)]; loss = Σ w ⊙ layer_norm(x; γ, β).
            let split = |p: &[f64]| {
                let (xs, rest) = p.split_at(rows * n);
                let (gs, bs) = rest.split_at(if has_g { n } else { 0 });
                (
                    xs.to_vec(),
                    has_g.then(|| gs.to_vec()),
                    has_b.then(|| bs.to_vec()),
                )
            };
            let loss = |p: &[f64]| {
                let (xs, gs, bs) = split(p);
                let (y, _, _) = cpu::layer_norm(&xs, n, gs.as_deref(), bs.as_deref(), EPS as f64);
                y.iter().zip(&w).map(|(y, w)| y * w).sum::<f64>()
            };
            let mut p = x.clone();
            if has_g {
                p.extend(&g);
            }
            if has_b {
                p.extend(&b);
            }
            let gamma = has_g.then_some(g.as_slice());
            let (_, mean, rstd) =
                cpu::layer_norm(&x, n, gamma, has_b.then_some(b.as_slice()), EPS as f64);
            let (dx, dg, db) = cpu::layer_norm_bwd(&x, &w, n, gamma, &mean, &rstd);
            let mut analytic = dx;
            if has_g {
                analytic.extend(dg);
            }
            if has_b {
                analytic.extend(db);
            }
            gradcheck(
                &format!("layer_norm γ {has_g} β {has_b}"),
                loss,
                &p,
                &analytic,
            );
        }
    }

    #[test]
    fn layer_norm_through_tape_on_every_device() {
        let (shape, n) = ([2, 3, 8], 8);
        let xv: Vec<f32> = random_vec(48, 5).iter().map(|v| 3.0 * v + 0.5).collect();
        let (gv, bv, wv) = (gamma_vec(n, 6), random_vec(n, 7), random_vec(48, 8));
        for device in devices() {
            for (has_g, has_b) in COMBOS {
                let what = format!("layer_norm γ {has_g} β {has_b} on {device}");
                let x = Tensor::from_slice(&xv, &shape, &device).unwrap();
                let gamma = Tensor::from_slice(&gv, &[n], &device).unwrap();
                let beta = Tensor::from_slice(&bv, &[n], &device).unwrap();
                let w = Tensor::from_slice(&wv, &shape, &device).unwrap();
                let mut tape = Tape::new();
                for t in [&x, &gamma, &beta] {
                    tape.watch(t);
                }
                let y = layer_norm(
                    &mut tape,
                    &x,
                    has_g.then_some(&gamma),
                    has_b.then_some(&beta),
                    EPS,
                )
                .unwrap();
                let yw = mul(&mut tape, &y, &w).unwrap();
                let loss = sum_all(&mut tape, &yw).unwrap();
                let grads = tape.backward(&loss).unwrap();

                // Forward straight from the definition, in f64.
                let mut want = Vec::new();
                for row in xv.chunks(n) {
                    let mu = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                    let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / n as f64;
                    for (j, &v) in row.iter().enumerate() {
                        let xh = (v as f64 - mu) / (var + EPS as f64).sqrt();
                        let g = if has_g { gv[j] as f64 } else { 1.0 };
                        let b = if has_b { bv[j] as f64 } else { 0.0 };
                        want.push((xh * g + b) as f32);
                    }
                }
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &want,
                    1e-5,
                    1e-5,
                    &format!("{what}: forward"),
                );

                let (_, mean, rstd) = cpu::layer_norm(&xv, n, None, None, EPS);
                let (dx, dg, db) =
                    cpu::layer_norm_bwd(&xv, &wv, n, has_g.then_some(gv.as_slice()), &mean, &rstd);
                let got = |t: &Tensor| grads.get(t).map(|g| g.to_vec_f32().unwrap());
                assert_close(&got(&x).unwrap(), &dx, 1e-5, 1e-5, &format!("{what}: dx"));
                assert_eq!(got(&gamma).is_some(), has_g, "{what}: dγ present");
                assert_eq!(got(&beta).is_some(), has_b, "{what}: dβ present");
                if has_g {
                    assert_close(
                        &got(&gamma).unwrap(),
                        &dg,
                        1e-5,
                        1e-5,
                        &format!("{what}: dγ"),
                    );
                }
                if has_b {
                    assert_close(
                        &got(&beta).unwrap(),
                        &db,
                        1e-5,
                        1e-5,
                        &format!("{what}: dβ"),
                    );
                }
            }
        }
    }

    /// Rows × columns at awkward sizes, plus 6000 (dx past its shared-memory cache) and 20000
    /// (forward past it too), forward and backward. rtol 1e-5, but 4e-5 past 1024 columns: the
    /// CPU twin's sequential f32 sums of ≥ 4097 terms alone drift up to 0.6e-5 (relative, in y)
    /// from its f64 run, and the GPU's tree sums differ again. atol = rtol on y, mean and rstd
    /// (O(1) values that may cross zero); rtol × the largest |dx| on dx, whose
    /// `g − mean(g) − x̂·mean(g·x̂)` cancels, so an element's error is relative to the row's sums;
    /// likewise for dγ and dβ (sums over rows of terms of both signs).
    #[test]
    fn layer_norm_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        let cols: Vec<usize> = crate::testing::row_sizes()
            .into_iter()
            .chain([6000, 20000])
            .collect();
        for &n in &cols {
            for rows in [1, 3, 65] {
                let xv: Vec<f32> = random_vec(rows * n, (rows * n) as u64)
                    .iter()
                    .map(|v| 2.0 * v + 0.3)
                    .collect();
                let (gv, bv, dyv) = (
                    gamma_vec(n, 11),
                    random_vec(n, 12),
                    random_vec(rows * n, 1_000_003),
                );
                for (has_g, has_b) in [(true, true), (false, false), (false, true)] {
                    let run = |d: &Device| {
                        let x = Tensor::from_slice(&xv, &[rows, n], d).unwrap();
                        let gamma = Tensor::from_slice(&gv, &[n], d).unwrap();
                        let beta = Tensor::from_slice(&bv, &[n], d).unwrap();
                        let dy = Tensor::from_slice(&dyv, &[rows, n], d).unwrap();
                        let g = has_g.then_some(&gamma);
                        let (y, mean, rstd) =
                            layer_norm_raw(&x, g, has_b.then_some(&beta), EPS).unwrap();
                        let (dx, p) = layer_norm_bwd_raw(&x, g, &dy, &mean, &rstd, true).unwrap();
                        let (dg, db) = p.unwrap();
                        [y, mean, rstd, dx, dg, db].map(|t| t.to_vec_f32().unwrap())
                    };
                    let (c, g) = (run(&Device::Cpu), run(&gpu));
                    let what = format!("layer_norm γ {has_g} β {has_b} {rows}×{n}");
                    let rtol = if n > 1024 { 4e-5 } else { 1e-5 };
                    for (k, name) in ["y", "mean", "rstd", "dx", "dγ", "dβ"].iter().enumerate() {
                        let scale = c[k].iter().fold(0f32, |a, v| a.max(v.abs()));
                        let atol = if k < 3 { rtol } else { rtol * scale };
                        assert_close(&g[k], &c[k], rtol, atol, &format!("{what}: {name}"));
                    }
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cpu = Device::Cpu;
        let x = Tensor::zeros(&[2, 4], &cpu).unwrap();
        let g5 = Tensor::zeros(&[5], &cpu).unwrap();
        let err = layer_norm(&mut Tape::new(), &x, Some(&g5), None, EPS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gamma has shape [5], expected [4]"), "{err}");
        let b14 = Tensor::zeros(&[1, 4], &cpu).unwrap();
        let err = layer_norm(&mut Tape::new(), &x, None, Some(&b14), EPS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("beta has shape [1, 4]"), "{err}");
        assert!(layer_norm(&mut Tape::new(), &x, None, None, -1.0).is_err());
        assert!(layer_norm(&mut Tape::new(), &x, None, None, f32::NAN).is_err());
        let scalar = Tensor::full(1.0, &[], &cpu).unwrap();
        assert!(layer_norm(&mut Tape::new(), &scalar, None, None, EPS).is_err());
        let half = x.to_dtype(crate::tensor::DType::F16).unwrap();
        assert!(layer_norm(&mut Tape::new(), &half, None, None, EPS).is_err());
    }

    #[test]
    fn empty_tensors_pass_through() {
        for device in devices() {
            let x = Tensor::zeros(&[0, 4], &device).unwrap();
            let gamma = Tensor::full(1.0, &[4], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            tape.watch(&gamma);
            let y = layer_norm(&mut tape, &x, Some(&gamma), None, EPS).unwrap();
            assert_eq!(y.shape(), &[0, 4]);
            let loss = sum_all(&mut tape, &y).unwrap();
            let dg = tape
                .backward(&loss)
                .unwrap()
                .get(&gamma)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            assert_eq!(dg, vec![0.0; 4], "no rows, no gradient, on {device}");
        }
    }

    /// bf16 layer norm (warp kernels up to 1024 wide, block kernel beyond) against the CPU path.
    #[test]
    fn bf16_layer_norm_cuda_matches_cpu() {
        for n in crate::testing::row_sizes() {
            let rows = 5;
            let x = Tensor::from_vec(random_vec(rows * n, 1), &[rows, n], &Device::Cpu).unwrap();
            let g = Tensor::from_vec(gamma_vec(n, 2), &[n], &Device::Cpu).unwrap();
            let b = Tensor::from_vec(random_vec(n, 3), &[n], &Device::Cpu).unwrap();
            crate::testing::bf16_parity(
                &format!("layer_norm [{rows}, {n}]"),
                &[x, g, b],
                1e-2,
                2e-2,
                |t| layer_norm(&mut Tape::inference(), &t[0], Some(&t[1]), Some(&t[2]), EPS),
            );
        }
    }

    /// The fused residual add + layer norm equals `add` then `layer_norm` on every device:
    /// values bit for bit on the CPU (it is the same arithmetic) and to f32 rounding on the GPU,
    /// and the gradients to x, r, γ and β through the tape; bf16 against the CPU bf16 path.
    #[test]
    fn add_layer_norm_equals_add_then_layer_norm() {
        for n in crate::testing::row_sizes()
            .into_iter()
            .filter(|&n| n > 1)
            .chain([1100])
        {
            let rows = 6;
            let (xv, rv, gv, bv, wv) = (
                random_vec(rows * n, 1),
                random_vec(rows * n, 2),
                gamma_vec(n, 3),
                random_vec(n, 4),
                random_vec(rows * n, 5),
            );
            let run = |device: &Device, fused: bool| {
                let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, device).unwrap();
                let (x, r, g, b, w) = (
                    t(&xv, &[rows, n]),
                    t(&rv, &[rows, n]),
                    t(&gv, &[n]),
                    t(&bv, &[n]),
                    t(&wv, &[rows, n]),
                );
                let mut tape = Tape::new();
                for p in [&x, &r, &g, &b] {
                    tape.watch(p);
                }
                let (s, y) = if fused {
                    add_layer_norm(&mut tape, &x, &r, Some(&g), Some(&b), EPS).unwrap()
                } else {
                    let s = crate::ops::elementwise::add(&mut tape, &x, &r).unwrap();
                    let y = layer_norm(&mut tape, &s, Some(&g), Some(&b), EPS).unwrap();
                    (s, y)
                };
                // The loss uses both outputs, as a transformer layer does (s feeds the next residual).
                let ys = crate::ops::elementwise::add(&mut tape, &y, &s).unwrap();
                let yw = mul(&mut tape, &ys, &w).unwrap();
                let loss = sum_all(&mut tape, &yw).unwrap();
                let grads = tape.backward(&loss).unwrap();
                let mut out = vec![s.to_vec_f32().unwrap(), y.to_vec_f32().unwrap()];
                out.extend([&x, &r, &g, &b].map(|p| grads.get(p).unwrap().to_vec_f32().unwrap()));
                out
            };
            for device in devices() {
                let (fused, plain) = (run(&device, true), run(&device, false));
                for (i, name) in ["s", "y", "dx", "dr", "dgamma", "dbeta"].iter().enumerate() {
                    let tol = if device.is_cuda() { 1e-5 } else { 0.0 };
                    assert_close(
                        &fused[i],
                        &plain[i],
                        tol,
                        tol,
                        &format!("add_layer_norm {name} n={n} on {device}"),
                    );
                }
            }
            let t =
                |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &Device::Cpu).unwrap();
            let inputs = [
                t(&xv, &[rows, n]),
                t(&rv, &[rows, n]),
                t(&gv, &[n]),
                t(&bv, &[n]),
            ];
            for part in [0, 1] {
                crate::testing::bf16_parity(
                    &format!("add_layer_norm output {part} n={n}"),
                    &inputs,
                    1e-2,
                    2e-2,
                    |p| {
                        let (s, y) = add_layer_norm(
                            &mut Tape::inference(),
                            &p[0],
                            &p[1],
                            Some(&p[2]),
                            Some(&p[3]),
                            EPS,
                        )?;
                        Ok(if part == 0 { s } else { y })
                    },
                );
            }
        }
        let (a, b) = (
            Tensor::zeros(&[2, 3], &Device::Cpu).unwrap(),
            Tensor::zeros(&[3, 2], &Device::Cpu).unwrap(),
        );
        assert!(add_layer_norm(&mut Tape::new(), &a, &b, None, None, EPS).is_err());
    }
}
