//! Multi-head scaled-dot-product attention (PyTorch `F.scaled_dot_product_attention`).
//!
//! q, k, v are `[B, H, T, D]` (viewed as `[BH, T, D]`); per (b, h), with `s = 1/√D`:
//! `S = s·Q·Kᵀ (+ mask)`, `P = softmax_rows(S)`, `O = P·V`. The causal mask sets `S[i, j] = −∞`
//! for `j > i` (CLIP's text encoder). The forward also keeps `lse[i] = log Σ_j exp(S[i, j])`, so
//! P can be recomputed as `exp(S − lse)` without a second softmax.
//! Backward, with `δ_i = Σ_d dO[i, d]·O[i, d]` (= Σ_j dP[i, j]·P[i, j]):
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − δ)`, `dQ = s·dS·K`, `dK = s·dSᵀ·Q`.
//!
//! Forward kernel (`kernels/attention.cu`): fused, flash-attention style — one block per
//! (bh, 16-query tile), keys/values streamed through shared memory 32 at a time, online softmax;
//! the T×T score matrix is never written to global memory. f32 or bf16 in and out (bf16: f32
//! tiles, scores and lse inside; inference only), D ≤ 128.
//! Forward on the tensor cores (`attention_fwd_tc_*`, D ≤ 64): the same flash-attention loop with
//! 64-query blocks, q, k, v rounded to bf16 and both products on mma.sync (P rounded to bf16
//! between them, as PyTorch's bf16 SDPA does), softmax and lse in f32. f32 tensors take it under
//! `--precision bf16`; bf16 tensors when `BF16_FORWARD` says so.
//! Backward on the GPU, two variants side by side (`BackwardKernel`, chosen by `BACKWARD`):
//! - composed from device ops: `S = Q·Kᵀ` (the tiled matmul), one elementwise kernel turning S
//!   into P with the saved lse, then matmuls and the softmax backward kernel. It materialises
//!   `[BH, T, T]` twice (P and dP): fine for CLIP's T ≤ 257.
//! - fused (FlashAttention-2 style): `δ = rowsum(dO ⊙ O)`, then one kernel per 8-key tile that
//!   streams query tiles and accumulates dK, dV, and one per 8-query tile that streams key tiles
//!   and accumulates dQ; each recomputes its P tile from q, k and lse. Nothing T×T reaches global
//!   memory and every output element has one writer (deterministic, no atomics). Not yet run on
//!   a GPU, so not the default: `fused_backward_cuda_matches_cpu` and the bench decide.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::Real;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::{elementwise::scale_raw, matmul::matmul_raw, softmax::softmax_bwd_raw};
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

/// Forward kernels by the widest head dim they hold (32·DC).
const FWD_KERNELS: [(usize, &str, &str); 3] = [
    (32, "attention_fwd_dc1_f32", "attention_fwd_dc1_bf16"),
    (64, "attention_fwd_dc2_f32", "attention_fwd_dc2_bf16"),
    (128, "attention_fwd_dc4_f32", "attention_fwd_dc4_bf16"),
];
/// Queries per block of the forward kernel (`ATT_QTILE` in the .cu file).
const Q_TILE: usize = 16;
/// The tensor-core forward kernels by the widest head dim they hold (`attention_fwd_tc`).
const TC_FWD_KERNELS: [(usize, &str, &str); 2] = [
    (
        32,
        "attention_fwd_tc_hd32_f32",
        "attention_fwd_tc_hd32_bf16",
    ),
    (
        64,
        "attention_fwd_tc_hd64_f32",
        "attention_fwd_tc_hd64_bf16",
    ),
];
/// Queries per block of the tensor-core forward (`ATT_TC_Q`).
const TC_Q_TILE: usize = 64;

/// The GPU forward's two kernel families: `Simt` (f32 math on every element, any head dim ≤
/// 128) and `TensorCore` (`attention_fwd_tc_*`: q, k, v and P rounded to bf16, the two products
/// on mma.sync with f32 accumulation; head dim ≤ 64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardKernel {
    Simt,
    TensorCore,
}

/// The forward for bf16 tensors. Both kernels round the same operands; the tensor-core one also
/// rounds P, as PyTorch's bf16 flash attention does. It stays off until a lent GPU's bench
/// (`attention bf16 tensorcore` against `attention bf16`) shows it wins. f32 tensors take the
/// tensor cores when `--precision bf16` asks for them.
pub const BF16_FORWARD: ForwardKernel = ForwardKernel::Simt;

/// The GPU forward kernel for a dtype under the current precision.
fn forward_kernel(bf16: bool) -> ForwardKernel {
    match (bf16, super::precision::current()) {
        (true, _) => BF16_FORWARD,
        (false, super::precision::Precision::Bf16) => ForwardKernel::TensorCore,
        (false, _) => ForwardKernel::Simt,
    }
}

/// The CPU twins, generic so the gradient check runs them in f64. Buffers are `[BH, T, D]`.
pub mod cpu {
    use super::Real;
    use rayon::prelude::*;

    /// P for one head: `[T, T]` row softmax of `scale·Q·Kᵀ` (masked), and lse per row.
    fn probs<T: Real>(q: &[T], k: &[T], t: usize, d: usize, causal: bool) -> (Vec<T>, Vec<T>) {
        let scale = T::c(1.0 / (d as f64).sqrt());
        let mut p = vec![T::zero(); t * t];
        let mut lse = vec![T::zero(); t];
        for i in 0..t {
            let row = &mut p[i * t..(i + 1) * t];
            let keys = if causal { i + 1 } else { t };
            for (j, s) in row.iter_mut().enumerate().take(keys) {
                *s = (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum::<T>() * scale;
            }
            let m = row[..keys].iter().fold(T::neg_infinity(), |a, &b| a.max(b));
            let z: T = row[..keys].iter().map(|&s| (s - m).exp()).sum();
            lse[i] = m + z.ln();
            for s in row[..keys].iter_mut() {
                *s = (*s - lse[i]).exp();
            }
            // Masked entries stay 0.
        }
        (p, lse)
    }

    /// O = softmax(scale·Q·Kᵀ + mask)·V, and lse `[BH, T]`.
    pub fn attention<T: Real>(
        q: &[T],
        k: &[T],
        v: &[T],
        bh: usize,
        t: usize,
        d: usize,
        causal: bool,
    ) -> (Vec<T>, Vec<T>) {
        let mut o = vec![T::zero(); bh * t * d];
        let mut lse = vec![T::zero(); bh * t];
        if t * d == 0 {
            return (o, lse);
        }
        o.par_chunks_mut(t * d)
            .zip(lse.par_chunks_mut(t))
            .enumerate()
            .for_each(|(z, (oz, lz))| {
                let r = z * t * d..(z + 1) * t * d;
                let (p, l) = probs(&q[r.clone()], &k[r.clone()], t, d, causal);
                lz.copy_from_slice(&l);
                let vz = &v[r];
                for i in 0..t {
                    for c in 0..d {
                        oz[i * d + c] = (0..t).map(|j| p[i * t + j] * vz[j * d + c]).sum();
                    }
                }
            });
        (o, lse)
    }

    /// (dQ, dK, dV) given dO, recomputing P from Q and K.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd<T: Real>(
        q: &[T],
        k: &[T],
        v: &[T],
        dout: &[T],
        bh: usize,
        t: usize,
        d: usize,
        causal: bool,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let n = bh * t * d;
        let (mut dq, mut dk, mut dv) = (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
        if t * d == 0 {
            return (dq, dk, dv);
        }
        let scale = T::c(1.0 / (d as f64).sqrt());
        dq.par_chunks_mut(t * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(z, ((dqz, dkz), dvz))| {
                let r = z * t * d..(z + 1) * t * d;
                let (qz, kz, vz, gz) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &dout[r]);
                let (p, _) = probs(qz, kz, t, d, causal);
                // dP = dO·Vᵀ, then dS = P ⊙ (dP − Σ_j dP·P) in place.
                let mut ds = vec![T::zero(); t * t];
                for i in 0..t {
                    for j in 0..t {
                        ds[i * t + j] = (0..d).map(|c| gz[i * d + c] * vz[j * d + c]).sum();
                    }
                    let delta: T = (0..t).map(|j| ds[i * t + j] * p[i * t + j]).sum();
                    for j in 0..t {
                        ds[i * t + j] = p[i * t + j] * (ds[i * t + j] - delta);
                    }
                }
                for i in 0..t {
                    for c in 0..d {
                        dqz[i * d + c] =
                            (0..t).map(|j| ds[i * t + j] * kz[j * d + c]).sum::<T>() * scale;
                        dkz[i * d + c] =
                            (0..t).map(|j| ds[j * t + i] * qz[j * d + c]).sum::<T>() * scale;
                        dvz[i * d + c] = (0..t).map(|j| p[j * t + i] * gz[j * d + c]).sum();
                    }
                }
            });
        (dq, dk, dv)
    }
}

/// (BH, T, D) of q, k, v, all `[B, H, T, D]` on one device.
fn dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(usize, usize, usize)> {
    super::same_device("attention", &[q, k, v])?;
    if q.rank() != 4 || q.shape() != k.shape() || q.shape() != v.shape() {
        return Err(Error::shape(
            "attention",
            format!(
                "q, k, v must share a [B, H, T, D] shape, got {:?}, {:?}, {:?}",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        ));
    }
    let s = q.shape();
    Ok((s[0] * s[1], s[2], s[3]))
}

/// (O, lse) without recording.
pub(crate) fn attention_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let kernel = forward_kernel(q.dtype() == crate::tensor::DType::BF16);
    attention_raw_with(kernel, q, k, v, causal)
}

/// `attention_raw` with the GPU kernel family chosen (the CPU always runs its twin). A head dim
/// above the tensor-core kernels' 64 takes the SIMT kernel.
pub(crate) fn attention_raw_with(
    kernel: ForwardKernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let (bh, t, d) = dims(q, k, v)?;
    super::same_dtype(OP, &[q, k, v])?;
    if super::bf16_on_cpu(q) {
        let (o, lse) = attention_raw(
            &super::widen(q)?,
            &super::widen(k)?,
            &super::widen(v)?,
            causal,
        )?;
        return Ok((super::narrow(&o)?, lse));
    }
    let bf16 = q.dtype() == crate::tensor::DType::BF16;
    let (sq, sk, sv) = (q.storage(), k.storage(), v.storage());
    match q.device() {
        Device::Cpu => {
            let (o, lse) = cpu::attention(
                sq.cpu_f32(OP)?,
                sk.cpu_f32(OP)?,
                sv.cpu_f32(OP)?,
                bh,
                t,
                d,
                causal,
            );
            Ok((
                Tensor::from_vec(o, q.shape(), q.device())?,
                Tensor::from_vec(lse, &[bh, t], q.device())?,
            ))
        }
        Device::Cuda(gpu) => {
            let tensor_core = TC_FWD_KERNELS
                .iter()
                .find(|f| kernel == ForwardKernel::TensorCore && d <= f.0);
            let (kernels, q_tile) = match tensor_core {
                Some(_) => (&TC_FWD_KERNELS[..], TC_Q_TILE),
                None => (&FWD_KERNELS[..], Q_TILE),
            };
            let Some(&(_, name_f32, name_bf16)) = kernels.iter().find(|f| d <= f.0) else {
                return Err(Error::shape(
                    OP,
                    format!("head dim {d} is above the CUDA kernel's 128"),
                ));
            };
            if bh > 65535 || t > u32::MAX as usize / 2 {
                return Err(Error::shape(OP, format!("{bh} batch·heads (max 65535) or {t} tokens is too many for the CUDA kernel")));
            }
            let n = bh * t * d;
            let mut o = crate::tensor::alloc_storage(gpu, q.dtype(), n)?;
            let mut lse = gpu.alloc::<f32>(bh * t)?;
            if n > 0 {
                // One 128-thread block per (query tile, bh); shared memory is static (SIMT
                // ≤ 40.5 KiB, tensor cores ≤ 27 KiB).
                let cfg = LaunchConfig {
                    grid_dim: (t.div_ceil(q_tile) as u32, bh as u32, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                let name = if bf16 { name_bf16 } else { name_f32 };
                let f = gpu.function("attention", name)?;
                let (tt, dd, scale, c) =
                    (t as u32, d as u32, 1.0 / (d as f32).sqrt(), causal as i32);
                let mut b = gpu.stream.launch_builder(&f);
                match &mut o {
                    Storage::CudaBF16(out) => b
                        .arg(sq.cuda_bf16(OP)?)
                        .arg(sk.cuda_bf16(OP)?)
                        .arg(sv.cuda_bf16(OP)?)
                        .arg(out),
                    out => b
                        .arg(sq.cuda_f32(OP)?)
                        .arg(sk.cuda_f32(OP)?)
                        .arg(sv.cuda_f32(OP)?)
                        .arg(out.cuda_f32_mut(OP)?),
                };
                b.arg(&mut lse).arg(&tt).arg(&dd).arg(&scale).arg(&c);
                // SAFETY: q, k, v hold BH·T·D elements of the kernel's dtype and o too, lse BH·T
                // floats; block (x, y) reads rows < T of head y only and writes the o/lse rows
                // q0..q0+tile < T of head y; d ≤ the kernel's widest head dim.
                unsafe { b.launch(cfg) }.map_err(|e| Error::cuda(name, e))?;
            }
            Ok((
                Tensor::from_storage(o, q.shape(), q.device()),
                Tensor::from_storage(Storage::CudaF32(lse), &[bh, t], q.device()),
            ))
        }
    }
}

/// The two CUDA backward variants, kept side by side until a lent GPU's benchmark picks one
/// (a kernel lab, as in llm.c): `Composed` (matmuls + softmax backward, materialises `[BH, T, T]`
/// twice; built from kernels that each have their own parity test) and `Fused`
/// (`attention_bwd_dkdv_*` + `attention_bwd_dq_*`: P recomputed in tiles, nothing T×T in memory,
/// no atomics). Neither has run on a GPU yet (no session so far had one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardKernel {
    Composed,
    Fused,
}

/// What `attention`'s backward uses on a GPU. `Composed` until the fused kernels have passed
/// their GPU parity test (`fused_backward_cuda_matches_cpu`) and won the benchmark.
pub const BACKWARD: BackwardKernel = BackwardKernel::Composed;

/// Fused backward kernels by the widest head dim they hold: (D, dK/dV kernel, dQ kernel).
const BWD_KERNELS: [(usize, &str, &str); 3] = [
    (32, "attention_bwd_dkdv_dc1_f32", "attention_bwd_dq_dc1_f32"),
    (64, "attention_bwd_dkdv_dc2_f32", "attention_bwd_dq_dc2_f32"),
    (
        128,
        "attention_bwd_dkdv_dc4_f32",
        "attention_bwd_dq_dc4_f32",
    ),
];
/// Keys per dK/dV block and queries per dQ block (`BWD_KPB`, `BWD_QPB` in the .cu file).
const BWD_TILE: usize = 8;

/// (dQ, dK, dV) without recording, from the inputs, the forward's output and lse, and dO.
pub(crate) fn attention_bwd_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    attention_bwd_with(BACKWARD, q, k, v, o, lse, dout, causal)
}

/// `attention_bwd_raw` with the GPU variant chosen (the CPU always runs its twin).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_bwd_with(
    kernel: BackwardKernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention backward";
    let (bh, t, d) = dims(q, k, v)?;
    super::f32_for_backward(OP, q)?;
    super::same_shape(OP, q, dout)?;
    super::same_shape(OP, q, o)?;
    if let (Device::Cuda(gpu), BackwardKernel::Fused) = (q.device(), kernel) {
        return attention_bwd_fused(gpu, q, k, v, o, lse, dout, causal, (bh, t, d));
    }
    match q.device() {
        Device::Cpu => {
            let (sq, sk, sv, sg) = (q.storage(), k.storage(), v.storage(), dout.storage());
            let (dq, dk, dv) = cpu::attention_bwd(
                sq.cpu_f32(OP)?,
                sk.cpu_f32(OP)?,
                sv.cpu_f32(OP)?,
                sg.cpu_f32(OP)?,
                bh,
                t,
                d,
                causal,
            );
            let s = q.shape();
            Ok((
                Tensor::from_vec(dq, s, q.device())?,
                Tensor::from_vec(dk, s, q.device())?,
                Tensor::from_vec(dv, s, q.device())?,
            ))
        }
        Device::Cuda(gpu) => {
            let view = |x: &Tensor| x.reshaped(&[bh, t, d]);
            let (q3, k3, v3, g3) = (view(q)?, view(k)?, view(v)?, view(dout)?);
            let p = matmul_raw(&q3, &k3, false, true)?; // S = Q·Kᵀ, [BH, T, T]
            if bh * t > 0 {
                let (b, tt, scale, c) =
                    (bh as u32, t as u32, 1.0 / (d as f32).sqrt(), causal as i32);
                let mut sp = p.storage_mut();
                let ls = lse.storage();
                // SAFETY: p holds BH·T·T floats (fresh, owned here), lse BH·T; one thread per element.
                launch!(
                    gpu,
                    "attention",
                    "attention_probs_f32",
                    launch_1d(bh * t * t),
                    sp.cuda_f32_mut(OP)?,
                    ls.cuda_f32(OP)?,
                    &b,
                    &tt,
                    &scale,
                    &c
                )?;
            }
            let dv = matmul_raw(&p, &g3, true, false)?; // Pᵀ·dO
            let dp = matmul_raw(&g3, &v3, false, true)?; // dO·Vᵀ
            let ds = softmax_bwd_raw(&p, &dp, false)?; // P ⊙ (dP − Σ dP·P)
            let scale = 1.0 / (d as f32).sqrt();
            let dq = scale_raw(&matmul_raw(&ds, &k3, false, false)?, scale)?;
            let dk = scale_raw(&matmul_raw(&ds, &q3, true, false)?, scale)?;
            let s = q.shape();
            Ok((dq.reshaped(s)?, dk.reshaped(s)?, dv.reshaped(s)?))
        }
    }
}

/// The fused backward: δ = rowsum(dO ⊙ O), then the dK/dV and dQ kernels.
#[allow(clippy::too_many_arguments)]
fn attention_bwd_fused(
    gpu: &crate::tensor::Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    causal: bool,
    (bh, t, d): (usize, usize, usize),
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention backward";
    let Some(&(_, dkdv_name, dq_name)) = BWD_KERNELS.iter().find(|f| d <= f.0) else {
        return Err(Error::shape(
            OP,
            format!("head dim {d} is above the CUDA kernel's 128"),
        ));
    };
    if bh > 65535 || t > u32::MAX as usize / 2 {
        return Err(Error::shape(
            OP,
            format!("{bh} batch·heads (max 65535) or {t} tokens is too many for the CUDA kernel"),
        ));
    }
    if lse.shape() != [bh, t] {
        return Err(Error::shape(
            OP,
            format!(
                "lse {:?} for {bh} heads of {t} tokens (want [{bh}, {t}])",
                lse.shape()
            ),
        ));
    }
    let n = bh * t * d;
    let (mut dq, mut dk, mut dv, mut delta) = (
        gpu.alloc::<f32>(n)?,
        gpu.alloc::<f32>(n)?,
        gpu.alloc::<f32>(n)?,
        gpu.alloc::<f32>(bh * t)?,
    );
    if n > 0 {
        let (sq, sk, sv, so, sl, sg) = (
            q.storage(),
            k.storage(),
            v.storage(),
            o.storage(),
            lse.storage(),
            dout.storage(),
        );
        let (qs, ks, vs, os, ls, gs) = (
            sq.cuda_f32(OP)?,
            sk.cuda_f32(OP)?,
            sv.cuda_f32(OP)?,
            so.cuda_f32(OP)?,
            sl.cuda_f32(OP)?,
            sg.cuda_f32(OP)?,
        );
        let (rows, dd) = ((bh * t) as u64, d as u32);
        // SAFETY: one warp per row r < BH·T (grid-stride) reads D of o and dO, writes delta[r].
        launch!(
            gpu,
            "attention",
            "attention_delta_f32",
            launch_1d(bh * t * 32),
            os,
            gs,
            &mut delta,
            &rows,
            &dd
        )?;
        let (tt, scale, c) = (t as u32, 1.0 / (d as f32).sqrt(), causal as i32);
        let cfg = LaunchConfig {
            grid_dim: (t.div_ceil(BWD_TILE) as u32, bh as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = gpu.function("attention", dkdv_name)?;
        // SAFETY: block (x, y) reads rows < T of head y of q, k, v, dO, lse, delta and writes
        // dk/dv rows 8x..8x+8 < T of head y only (one writer per element); d ≤ 32·DC.
        unsafe {
            gpu.stream
                .launch_builder(&f)
                .arg(qs)
                .arg(ks)
                .arg(vs)
                .arg(gs)
                .arg(ls)
                .arg(&delta)
                .arg(&mut dk)
                .arg(&mut dv)
                .arg(&tt)
                .arg(&dd)
                .arg(&scale)
                .arg(&c)
                .launch(cfg)
        }
        .map_err(|e| Error::cuda(dkdv_name, e))?;
        let f = gpu.function("attention", dq_name)?;
        // SAFETY: as above, writing dq rows 8x..8x+8 < T of head y only.
        unsafe {
            gpu.stream
                .launch_builder(&f)
                .arg(qs)
                .arg(ks)
                .arg(vs)
                .arg(gs)
                .arg(ls)
                .arg(&delta)
                .arg(&mut dq)
                .arg(&tt)
                .arg(&dd)
                .arg(&scale)
                .arg(&c)
                .launch(cfg)
        }
        .map_err(|e| Error::cuda(dq_name, e))?;
    }
    let (s, dev) = (q.shape(), q.device());
    Ok((
        Tensor::from_storage(Storage::CudaF32(dq), s, dev),
        Tensor::from_storage(Storage::CudaF32(dk), s, dev),
        Tensor::from_storage(Storage::CudaF32(dv), s, dev),
    ))
}

/// `softmax(Q·Kᵀ/√D + mask)·V` per head for q, k, v `[B, H, T, D]`; causal masks keys after the
/// query. Recorded: gradients flow to q, k and v.
pub fn attention(
    tape: &mut Tape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
) -> Result<Tensor> {
    let (o, lse) = attention_raw(q, k, v, causal)?;
    let (qc, kc, vc, oc) = (q.clone(), k.clone(), v.clone(), o.clone());
    tape.record(&[q, k, v], &o, move |dout| {
        let (dq, dk, dv) = attention_bwd_raw(&qc, &kc, &vc, &oc, &lse, dout, causal)?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    });
    Ok(o)
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
    fn attention_gradients_match_finite_differences() {
        let (bh, t, d) = (2, 5, 3);
        let n = bh * t * d;
        let (q, k, v) = (
            f64s(&random_vec(n, 1)),
            f64s(&random_vec(n, 2)),
            f64s(&random_vec(n, 3)),
        );
        let w = f64s(&random_vec(n, 4));
        for causal in [false, true] {
            let (dq, dk, dv) = cpu::attention_bwd(&q, &k, &v, &w, bh, t, d, causal);
            let dot = |o: Vec<f64>| o.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
            gradcheck(
                "attention dq",
                |x| dot(cpu::attention(x, &k, &v, bh, t, d, causal).0),
                &q,
                &dq,
            );
            gradcheck(
                "attention dk",
                |x| dot(cpu::attention(&q, x, &v, bh, t, d, causal).0),
                &k,
                &dk,
            );
            gradcheck(
                "attention dv",
                |x| dot(cpu::attention(&q, &k, x, bh, t, d, causal).0),
                &v,
                &dv,
            );
        }
    }

    /// The twin against the definition on a hand-sized case: causal row 0 attends only to key 0.
    #[test]
    fn causal_first_row_copies_the_first_value() {
        let (t, d) = (3, 2);
        let (q, k, v) = (random_vec(6, 5), random_vec(6, 6), random_vec(6, 7));
        let (o, _) = cpu::attention(&q, &k, &v, 1, t, d, true);
        assert_close(&o[..2], &v[..2], 1e-6, 1e-7, "row 0");
        // Non-causal row 1 by hand.
        let (o, _) = cpu::attention(&q, &k, &v, 1, t, d, false);
        let s: Vec<f32> = (0..t)
            .map(|j| (q[2] * k[2 * j] + q[3] * k[2 * j + 1]) / (d as f32).sqrt())
            .collect();
        let z: f32 = s.iter().map(|x| x.exp()).sum();
        let want: Vec<f32> = (0..d)
            .map(|c| (0..t).map(|j| s[j].exp() / z * v[2 * j + c]).sum())
            .collect();
        assert_close(&o[2..4], &want, 1e-5, 1e-6, "row 1");
    }

    #[test]
    fn attention_through_tape_on_every_device() {
        let shape = [2, 3, 7, 8];
        let n: usize = shape.iter().product();
        let (qv, kv, vv, wv) = (
            random_vec(n, 11),
            random_vec(n, 12),
            random_vec(n, 13),
            random_vec(n, 14),
        );
        for device in devices() {
            for causal in [false, true] {
                let what = format!("attention causal={causal} on {device}");
                let t = |v: &[f32]| Tensor::from_slice(v, &shape, &device).unwrap();
                let (q, k, v, w) = (t(&qv), t(&kv), t(&vv), t(&wv));
                let mut tape = Tape::new();
                for x in [&q, &k, &v] {
                    tape.watch(x);
                }
                let o = attention(&mut tape, &q, &k, &v, causal).unwrap();
                let ow = mul(&mut tape, &o, &w).unwrap();
                let loss = sum_all(&mut tape, &ow).unwrap();
                let g = tape.backward(&loss).unwrap();
                let (bh, tt, d) = (6, 7, 8);
                let (wo, _) = cpu::attention(&qv, &kv, &vv, bh, tt, d, causal);
                let (wq, wk, wvv) = cpu::attention_bwd(&qv, &kv, &vv, &wv, bh, tt, d, causal);
                assert_close(
                    &o.to_vec_f32().unwrap(),
                    &wo,
                    1e-5,
                    1e-6,
                    &format!("{what}: forward"),
                );
                for (x, want, name) in [(&q, &wq, "dq"), (&k, &wk, "dk"), (&v, &wvv, "dv")] {
                    assert_close(
                        &g.get(x).unwrap().to_vec_f32().unwrap(),
                        want,
                        1e-4,
                        1e-5,
                        &format!("{what}: {name}"),
                    );
                }
            }
        }
    }

    /// T at 1, 7, 50, 77 (CLIP text), 257 (ViT-B/16's tokens: several key tiles, a partial query
    /// tile); D 32 and 64; causal and not. Forward rtol 1e-5; backward atol scaled by its largest |value|.
    #[test]
    fn attention_cuda_matches_cpu() {
        cuda_matches_cpu_with(BackwardKernel::Composed);
    }

    /// The fused backward kernels against the CPU twin, at the same sizes plus D = 24 and 100
    /// (partial head-dim chunks) and T = 9 (one partial 8-row tile).
    #[test]
    fn fused_backward_cuda_matches_cpu() {
        cuda_matches_cpu_with(BackwardKernel::Fused);
    }

    fn cuda_matches_cpu_with(kernel: BackwardKernel) {
        let Some(gpu) = gpu() else { return };
        // T = 257 crosses the 32-key tiles eight times; on the simulator (T² warp reductions) 130
        // still crosses them four times and ends mid-tile.
        let long = if crate::testing::on_simulator() {
            130
        } else {
            257
        };
        let (ts, ds): (&[usize], &[usize]) = match kernel {
            BackwardKernel::Composed => (&[1, 7, 50, 77, long], &[32, 64]),
            BackwardKernel::Fused => (&[1, 7, 9, 50, 77, long], &[24, 32, 64, 100]),
        };
        for &t in ts {
            for &d in ds {
                for causal in [false, true] {
                    let shape = [2, 3, t, d];
                    let n: usize = shape.iter().product();
                    let seed = (t * 1000 + d) as u64;
                    let (qv, kv, vv, gv) = (
                        random_vec(n, seed),
                        random_vec(n, seed + 1),
                        random_vec(n, seed + 2),
                        random_vec(n, seed + 3),
                    );
                    let run = |dev: &Device| {
                        let x = |v: &[f32]| Tensor::from_slice(v, &shape, dev).unwrap();
                        let (q, k, v, g) = (x(&qv), x(&kv), x(&vv), x(&gv));
                        let (o, lse) = attention_raw(&q, &k, &v, causal).unwrap();
                        let (dq, dk, dv) =
                            attention_bwd_with(kernel, &q, &k, &v, &o, &lse, &g, causal).unwrap();
                        [o, lse, dq, dk, dv].map(|t| t.to_vec_f32().unwrap())
                    };
                    let (c, g) = (run(&Device::Cpu), run(&gpu));
                    for (i, name) in ["o", "lse", "dq", "dk", "dv"].iter().enumerate() {
                        let scale = c[i].iter().fold(0f32, |a, v| a.max(v.abs()));
                        let what =
                            format!("{kernel:?} backward: {name} T={t} D={d} causal={causal}");
                        assert_close(&g[i], &c[i], 1e-5, 1e-5 * scale.max(1.0), &what);
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let a = Tensor::zeros(&[1, 2, 3, 4], &Device::Cpu).unwrap();
        let b = Tensor::zeros(&[1, 2, 4, 4], &Device::Cpu).unwrap();
        let err = attention(&mut Tape::new(), &a, &b, &a, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[B, H, T, D]"), "{err}");
        let r3 = Tensor::zeros(&[2, 3, 4], &Device::Cpu).unwrap();
        assert!(attention(&mut Tape::new(), &r3, &r3, &r3, true).is_err());
    }

    /// The tensor-core forward against the CPU twin on bf16-rounded q, k, v: the only other
    /// rounding is P's (to bf16, before P·V), so O is within 2⁻⁸·max|v| and lse (computed from
    /// the unrounded P) within f32 summation order.
    #[test]
    fn tensor_core_forward_matches_the_twin_on_rounded_operands() {
        let Some(dev) = gpu() else { return };
        use crate::ops::precision::{round_operand, Precision};
        // Not multiples of the 64-query / 64-key tiles; head dims below and at each kernel's width.
        for t in [1, 7, 50, 65, 130] {
            for d in [24, 32, 64] {
                for causal in [false, true] {
                    let shape = [2, 3, t, d];
                    let n: usize = shape.iter().product();
                    let seed = (t * 1000 + d) as u64 + 7;
                    let qkv = [0, 1, 2].map(|i| random_vec(n, seed + i));
                    let rounded = qkv.clone().map(|v| round_operand(Precision::Bf16, &v));
                    let on = |vs: &[Vec<f32>; 3], dev: &Device| {
                        vs.clone()
                            .map(|v| Tensor::from_vec(v, &shape, dev).unwrap())
                    };
                    let [q, k, v] = on(&rounded, &Device::Cpu);
                    let (o_want, lse_want) = attention_raw(&q, &k, &v, causal).unwrap();
                    let what = format!("T={t} D={d} causal={causal}");
                    let [q, k, v] = on(&qkv, &dev);
                    let (o, lse) =
                        attention_raw_with(ForwardKernel::TensorCore, &q, &k, &v, causal).unwrap();
                    let vmax = rounded[2].iter().fold(0f32, |a, x| a.max(x.abs()));
                    let o_want = o_want.to_vec_f32().unwrap();
                    let o = o.to_vec_f32().unwrap();
                    assert_close(&o, &o_want, 0.0, vmax / 256.0, &format!("o, {what}"));
                    let lse = lse.to_vec_f32().unwrap();
                    assert_close(
                        &lse,
                        &lse_want.to_vec_f32().unwrap(),
                        1e-5,
                        1e-5,
                        &format!("lse, {what}"),
                    );
                    // P's rounding shows: the kernel really ran on the tensor-core path.
                    if t >= 50 {
                        assert!(
                            o.iter().zip(&o_want).any(|(a, b)| a != b),
                            "{what}: O equals the f32 twin bit for bit"
                        );
                    }
                    // bf16 tensors take the same kernel: O rounded once more at the store.
                    let [q, k, v] =
                        [&q, &k, &v].map(|x| x.to_dtype(crate::tensor::DType::BF16).unwrap());
                    let (o16, _) =
                        attention_raw_with(ForwardKernel::TensorCore, &q, &k, &v, causal).unwrap();
                    assert_close(
                        &o16.to_vec_f32().unwrap(),
                        &o,
                        2f32.powi(-8),
                        1e-6,
                        &format!("bf16 o, {what}"),
                    );
                }
            }
        }
    }

    #[test]
    fn f32_attention_takes_the_tensor_cores_under_precision_bf16_up_to_head_dim_64() {
        use crate::ops::precision::{self, Precision};
        assert_eq!(
            precision::with(Precision::Bf16, || forward_kernel(false)),
            ForwardKernel::TensorCore
        );
        assert_eq!(
            precision::with(Precision::Tf32, || forward_kernel(false)),
            ForwardKernel::Simt
        );
        assert_eq!(
            precision::with(Precision::F32, || forward_kernel(false)),
            ForwardKernel::Simt
        );
        assert_eq!(forward_kernel(true), BF16_FORWARD);
        let Some(dev) = gpu() else { return };
        // Above 64 the SIMT kernel runs whatever was asked: the two give the same bits.
        let shape = [1, 2, 9, 100];
        let x = |seed| Tensor::from_vec(random_vec(900 * 2, seed), &shape, &dev).unwrap();
        let (q, k, v) = (x(1), x(2), x(3));
        let run = |kernel| {
            attention_raw_with(kernel, &q, &k, &v, true)
                .unwrap()
                .0
                .to_vec_f32()
                .unwrap()
        };
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(run(ForwardKernel::TensorCore)),
            bits(run(ForwardKernel::Simt))
        );
    }

    /// bf16 attention (each head-dim class, causal and not) against the CPU path.
    #[test]
    fn bf16_attention_cuda_matches_cpu() {
        for (t, d) in [(7, 24), (50, 64), (77, 64), (33, 100)] {
            for causal in [false, true] {
                let shape = [2, 3, t, d];
                let n = 2 * 3 * t * d;
                let r = |seed| Tensor::from_vec(random_vec(n, seed), &shape, &Device::Cpu).unwrap();
                crate::testing::bf16_parity(
                    &format!("attention T {t} D {d} causal {causal}"),
                    &[r(1), r(2), r(3)],
                    2e-2,
                    1e-2,
                    |x| attention(&mut Tape::inference(), &x[0], &x[1], &x[2], causal),
                );
            }
        }
    }
}
