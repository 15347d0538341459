//! Batched matrix multiply and `linear`.
//!
//! Forward: `C[z] = op(A[z]) · op(B[z])` for z in the batch, op = identity or transpose:
//! `C[z][m, n] = Σ_k opA[z][m, k] · opB[z][k, n]`. A is `[batch, M, K]` (`[batch, K, M]` when
//! `trans_a`), B is `[batch, K, N]` (`[batch, N, K]` when `trans_b`), C is `[batch, M, N]`.
//! Rank-2 operands are batch 1, and an operand with batch 1 is broadcast over the other's batch
//! (shared weights); C is rank 2 only when both operands are.
//!
//! Backward, with `G = dL/dC`: `d opA = G · opBᵀ` and `d opB = opAᵀ · G`, arranged for the flags:
//! `dA = G · opBᵀ` (`[M, K]`), or `opB · Gᵀ` when `trans_a` (`[K, M]`);
//! `dB = opAᵀ · G` (`[K, N]`), or `Gᵀ · opA` when `trans_b` (`[N, K]`).
//! Each is itself a matmul with flags; an operand broadcast over the batch gets the sum over the
//! batch of its per-item gradients. When B is broadcast and A is not transposed, the batch folds
//! into the product's k (`[batch·M, K]ᵀ · [batch·M, N]`), so no `[batch, K, N]` intermediate.
//!
//! Cost: `2·batch·M·N·K` FLOPs; the ideal traffic is one read of A and B and one write of C
//! (`4·(|A| + |B| + |C|)` bytes in f32, half that in bf16). The CUDA kernel (`kernels/matmul.cu`
//! on the tile in `kernels/gemm_tile.cuh`) re-reads each operand once per 64-wide tile of the
//! other side, mostly from L2: 32 FLOPs per element staged through shared memory.
//! f32 and bf16 (same dtype in and out, f32 accumulation); the backward is f32 only.
//!
//! `linear_act`: `y = act(x·Wᵀ + b)` with the bias add and the activation in the GEMM's store
//! epilogue (`matmul_bias_act_f32`), so the pre-activation `p` never makes a separate round trip
//! through memory. Per element of y, f32, forward: `linear` + activation writes the product
//! (4 B), then reads and writes it for the bias (8 B) and for the activation (8 B), 20 B in three
//! launches; fused it is one launch writing y (4 B), plus p (4 B) only when the tape needs it for
//! the backward. For CLIP's MLP (`fc1` + quick_gelu, y is `[tokens, 4·width]`) that saves two
//! passes over `[tokens, 4·width]` per layer in inference (16 B/element: 2.4 MB per ViT-B/32
//! image per layer, 50 tokens × 3072) and 12 B/element when training; FLOPs are unchanged (the
//! bias and activation are computed either way). The backward moves the same bytes as the
//! unfused ops: `dp = act'(p)·dy` reads p, y, dy and writes dp, `db` reads dp, then the matmul
//! backward.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::{same_device, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::elementwise::{bias_grad_raw, cpu as ew_cpu, unary_bwd_raw, Unary};
use crate::ops::reduce::{reduce_axis_raw, Reduce};
use crate::tensor::{arg_buffer, arg_buffer_mut, launch, DType, Device, Storage, Tensor};

/// The sizes of one batched product, resolved from the operand shapes and the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    /// Batch of the output: the larger of the operands' batches.
    pub batch: usize,
    /// Batch of A (1 or `batch`); 1 with `batch > 1` means A is broadcast.
    pub batch_a: usize,
    /// Batch of B (1 or `batch`).
    pub batch_b: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// Which tensor a backward product reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operand {
    A,
    B,
    /// The output gradient dL/dC.
    Dc,
}

/// One gradient as a product: `lhs`, `rhs` multiplied as `gemm` says, then summed over the
/// batch when `sum_batch` (the operand was broadcast).
#[derive(Clone, Copy, Debug)]
struct GradPlan {
    lhs: Operand,
    rhs: Operand,
    gemm: Gemm,
    sum_batch: bool,
}

impl Gemm {
    /// Checks the shapes of A and B (rank 2 or 3) against the flags.
    pub fn new(a: &[usize], b: &[usize], trans_a: bool, trans_b: bool) -> Result<Gemm> {
        let split = |name: &str, s: &[usize]| -> Result<(usize, usize, usize)> {
            match *s {
                [r, c] => Ok((1, r, c)),
                [z, r, c] => Ok((z, r, c)),
                _ => Err(Error::shape(
                    "matmul",
                    format!("{name} must have rank 2 or 3, got shape {s:?}"),
                )),
            }
        };
        let (batch_a, ra, ca) = split("A", a)?;
        let (batch_b, rb, cb) = split("B", b)?;
        let (m, ka) = if trans_a { (ca, ra) } else { (ra, ca) };
        let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
        if ka != kb {
            return Err(Error::shape(
                "matmul",
                format!(
                    "A {a:?}{} is {m}×{ka} and B {b:?}{} is {kb}×{n}: inner sizes {ka} and {kb} differ",
                    if trans_a { " transposed" } else { "" },
                    if trans_b { " transposed" } else { "" }
                ),
            ));
        }
        if batch_a != batch_b && batch_a != 1 && batch_b != 1 {
            return Err(Error::shape(
                "matmul",
                format!("batch sizes differ: A {a:?}, B {b:?} (one of them may be 1 to broadcast)"),
            ));
        }
        Ok(Gemm {
            batch: batch_a.max(batch_b),
            batch_a,
            batch_b,
            m,
            n,
            k: ka,
            trans_a,
            trans_b,
        })
    }

    /// Elements of A, B and C.
    fn lens(&self) -> (usize, usize, usize) {
        (
            self.batch_a * self.m * self.k,
            self.batch_b * self.k * self.n,
            self.batch * self.m * self.n,
        )
    }

    /// FLOPs of the product (multiply and add counted separately).
    pub fn flops(&self) -> usize {
        2 * self.batch * self.m * self.n * self.k
    }

    /// dA as a product of {B, dC}.
    fn grad_a(&self) -> GradPlan {
        let Gemm {
            batch,
            batch_b,
            m,
            n,
            k,
            trans_a,
            trans_b,
            ..
        } = *self;
        let sum_batch = self.batch_a != batch;
        if !trans_a {
            // dA [M, K] = dC [M, N] · opBᵀ, opBᵀ = B when trans_b (B is [N, K]), else Bᵀ.
            let gemm = Gemm {
                batch,
                batch_a: batch,
                batch_b,
                m,
                n: k,
                k: n,
                trans_a: false,
                trans_b: !trans_b,
            };
            GradPlan {
                lhs: Operand::Dc,
                rhs: Operand::B,
                gemm,
                sum_batch,
            }
        } else {
            // dA [K, M] = opB [K, N] · dCᵀ.
            let gemm = Gemm {
                batch,
                batch_a: batch_b,
                batch_b: batch,
                m: k,
                n: m,
                k: n,
                trans_a: trans_b,
                trans_b: true,
            };
            GradPlan {
                lhs: Operand::B,
                rhs: Operand::Dc,
                gemm,
                sum_batch,
            }
        }
    }

    /// dB as a product of {A, dC}.
    fn grad_b(&self) -> GradPlan {
        let Gemm {
            batch,
            batch_a,
            m,
            n,
            k,
            trans_a,
            trans_b,
            ..
        } = *self;
        let broadcast = self.batch_b != batch;
        if broadcast && !trans_a {
            // Σ_z over [M, K]/[M, N] items = one product over the stacked rows [batch·M, ·].
            let folded = Gemm {
                batch: 1,
                batch_a: 1,
                batch_b: 1,
                m: 0,
                n: 0,
                k: batch * m,
                trans_a: true,
                trans_b: false,
            };
            return if !trans_b {
                // dB [K, N] = A2ᵀ · dC2.
                GradPlan {
                    lhs: Operand::A,
                    rhs: Operand::Dc,
                    gemm: Gemm { m: k, n, ..folded },
                    sum_batch: false,
                }
            } else {
                // dB [N, K] = dC2ᵀ · A2.
                GradPlan {
                    lhs: Operand::Dc,
                    rhs: Operand::A,
                    gemm: Gemm {
                        m: n,
                        n: k,
                        ..folded
                    },
                    sum_batch: false,
                }
            };
        }
        if !trans_b {
            // dB [K, N] = opAᵀ · dC, opAᵀ = A when trans_a (A is [K, M]), else Aᵀ.
            let gemm = Gemm {
                batch,
                batch_a,
                batch_b: batch,
                m: k,
                n,
                k: m,
                trans_a: !trans_a,
                trans_b: false,
            };
            GradPlan {
                lhs: Operand::A,
                rhs: Operand::Dc,
                gemm,
                sum_batch: broadcast,
            }
        } else {
            // dB [N, K] = dCᵀ · opA.
            let gemm = Gemm {
                batch,
                batch_a: batch,
                batch_b: batch_a,
                m: n,
                n: k,
                k: m,
                trans_a: true,
                trans_b: trans_a,
            };
            GradPlan {
                lhs: Operand::Dc,
                rhs: Operand::A,
                gemm,
                sum_batch: broadcast,
            }
        }
    }
}

/// The CPU twin: ndarray's GEMM on (transposed) views per batch item, rayon over the batch.
pub mod cpu {
    use super::*;

    /// Rows of C per parallel task when a single product is split by rows.
    const ROWS_PER_TASK: usize = 256;

    /// `C = op(A) · op(B)` for row-major buffers laid out as `g` says.
    pub fn matmul<T: Real>(a: &[T], b: &[T], g: &Gemm) -> Result<Vec<T>> {
        let (a_len, b_len, c_len) = g.lens();
        if a.len() != a_len || b.len() != b_len {
            return Err(Error::shape(
                "matmul",
                format!("buffers of {} and {} elements for {g:?}", a.len(), b.len()),
            ));
        }
        let mut c = vec![T::zero(); c_len];
        if c_len == 0 {
            return Ok(c);
        }
        let (m, n, k) = (g.m, g.n, g.k);
        let a_dims = if g.trans_a { (k, m) } else { (m, k) };
        let b_dims = if g.trans_b { (n, k) } else { (k, n) };
        let view_err = |e: ndarray::ShapeError| Error::shape("matmul", e.to_string());
        if g.batch == 1 && m >= 2 * ROWS_PER_TASK {
            // One tall product (a linear over many rows): split its rows across the threads, in
            // fixed-size blocks, so the sums do not depend on the thread count.
            let av = ArrayView2::from_shape(a_dims, a).map_err(view_err)?;
            let bv = ArrayView2::from_shape(b_dims, b).map_err(view_err)?;
            let av = if g.trans_a { av.t() } else { av };
            let bv = if g.trans_b { bv.t() } else { bv };
            c.par_chunks_mut(ROWS_PER_TASK * n)
                .enumerate()
                .try_for_each(|(i, ci)| -> Result<()> {
                    let rows = ci.len() / n;
                    let r0 = i * ROWS_PER_TASK;
                    let ai = av.slice(ndarray::s![r0..r0 + rows, ..]);
                    let mut cv = ArrayViewMut2::from_shape((rows, n), ci).map_err(view_err)?;
                    general_mat_mul(T::one(), &ai, &bv, T::zero(), &mut cv);
                    Ok(())
                })?;
            return Ok(c);
        }
        c.par_chunks_mut(m * n)
            .enumerate()
            .try_for_each(|(z, cz)| -> Result<()> {
                let za = if g.batch_a == 1 { 0 } else { z };
                let zb = if g.batch_b == 1 { 0 } else { z };
                let av =
                    ArrayView2::from_shape(a_dims, &a[za * m * k..][..m * k]).map_err(view_err)?;
                let bv =
                    ArrayView2::from_shape(b_dims, &b[zb * k * n..][..k * n]).map_err(view_err)?;
                let av = if g.trans_a { av.t() } else { av };
                let bv = if g.trans_b { bv.t() } else { bv };
                let mut cv = ArrayViewMut2::from_shape((m, n), cz).map_err(view_err)?;
                general_mat_mul(T::one(), &av, &bv, T::zero(), &mut cv);
                Ok(())
            })?;
        Ok(c)
    }

    fn grad<T: Real>(plan: super::GradPlan, a: &[T], b: &[T], dc: &[T]) -> Result<Vec<T>> {
        let pick = |o: Operand| match o {
            Operand::A => a,
            Operand::B => b,
            Operand::Dc => dc,
        };
        let full = matmul(pick(plan.lhs), pick(plan.rhs), &plan.gemm)?;
        if !plan.sum_batch {
            return Ok(full);
        }
        let item = plan.gemm.m * plan.gemm.n;
        let mut sum = vec![T::zero(); item];
        for chunk in full.chunks(item.max(1)) {
            for (s, &v) in sum.iter_mut().zip(chunk) {
                *s = *s + v;
            }
        }
        Ok(sum)
    }

    /// `(dA, dB)` given `dC`, each laid out like its operand (summed over the batch if broadcast).
    pub fn matmul_bwd<T: Real>(a: &[T], b: &[T], dc: &[T], g: &Gemm) -> Result<(Vec<T>, Vec<T>)> {
        if dc.len() != g.lens().2 {
            return Err(Error::shape(
                "matmul backward",
                format!("dC of {} elements for {g:?}", dc.len()),
            ));
        }
        Ok((grad(g.grad_a(), a, b, dc)?, grad(g.grad_b(), a, b, dc)?))
    }

    /// `linear_act`'s forward for x `[M, K]`, W `[N, K]` (`g` is `[M, K]·[N, K]ᵀ`): the matmul
    /// twin, then the bias, then the activation. Returns `(pre, y)`, `pre = x·Wᵀ + b`, `y = act(pre)`.
    pub fn linear_act<T: Real>(
        x: &[T],
        w: &[T],
        bias: Option<&[T]>,
        act: Option<Unary>,
        g: &Gemm,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let mut pre = matmul(x, w, g)?;
        if let Some(b) = bias {
            for row in pre.chunks_mut(g.n.max(1)) {
                for (p, &bv) in row.iter_mut().zip(b) {
                    *p = *p + bv;
                }
            }
        }
        let y = match act {
            Some(op) => pre.par_iter().map(|&p| ew_cpu::unary_fwd(op, p)).collect(),
            None => pre.clone(),
        };
        Ok((pre, y))
    }

    /// `(dx, dW, db)` of `linear_act` given dy: `dpre = act'(pre)·dy`, then the matmul backward
    /// and `db[n] = Σ_m dpre[m, n]`.
    pub fn linear_act_bwd<T: Real>(
        x: &[T],
        w: &[T],
        pre: &[T],
        y: &[T],
        dy: &[T],
        act: Option<Unary>,
        g: &Gemm,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let dpre: Vec<T> = match act {
            Some(op) => pre
                .iter()
                .zip(y)
                .zip(dy)
                .map(|((&p, &yv), &d)| ew_cpu::unary_bwd(op, p, yv, d))
                .collect(),
            None => dy.to_vec(),
        };
        let (dx, dw) = matmul_bwd(x, w, &dpre, g)?;
        Ok((dx, dw, ew_cpu::bias_grad(&dpre, g.m, g.n, 1)))
    }
}

/// The launch of `kernels/gemm_tile.cuh`'s kernels for `g`: one 256-thread block per 64×64
/// output tile, the batch on z (blocks loop past 65535). Errors when `g` is too large.
fn tile_grid(op: &'static str, g: &Gemm) -> Result<LaunchConfig> {
    // Below 2³⁰, so index sums in the kernel (k + 16, m0 + 63) stay inside an int.
    let fits = |v: usize| v < 1 << 30;
    let (tiles_n, tiles_m) = (g.n.div_ceil(64), g.m.div_ceil(64));
    if !(fits(g.m) && fits(g.n) && fits(g.k) && fits(g.batch)) || tiles_m > 65535 {
        return Err(Error::shape(
            op,
            format!("{g:?} is too large for the CUDA kernel (sizes < 2³⁰, M ≤ 65535·64)"),
        ));
    }
    Ok(LaunchConfig {
        grid_dim: (tiles_n as u32, tiles_m as u32, g.batch.min(65535) as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `C = op(A) · op(B)` for an already checked `g`, into a tensor of shape `out_shape`.
fn gemm_raw(a: &Tensor, b: &Tensor, g: &Gemm, out_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "matmul";
    same_device(OP, &[a, b])?;
    let (a_len, b_len, c_len) = g.lens();
    if a.numel() != a_len || b.numel() != b_len || out_shape.iter().product::<usize>() != c_len {
        return Err(Error::shape(
            OP,
            format!("A {:?} and B {:?} do not hold {g:?}", a.shape(), b.shape()),
        ));
    }
    if a.dtype() != b.dtype() {
        return Err(Error::Invalid(format!(
            "matmul: A is {} but B is {}: convert one so both have the same dtype",
            a.dtype(),
            b.dtype()
        )));
    }
    match a.device() {
        Device::Cpu => {
            let (sa, sb) = (a.storage(), b.storage());
            let storage = match (&*sa, &*sb) {
                (Storage::CpuF32(av), Storage::CpuF32(bv)) => {
                    Storage::CpuF32(cpu::matmul(av, bv, g)?)
                }
                (Storage::CpuBF16(av), Storage::CpuBF16(bv)) => {
                    // f32 accumulation over the exact bf16 values, one rounding at the end (as on the GPU).
                    let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
                    let c = cpu::matmul(&widen(av), &widen(bv), g)?;
                    Storage::CpuBF16(c.into_iter().map(bf16::from_f32).collect())
                }
                (other, _) => {
                    return Err(Error::DType {
                        op: OP,
                        got: other.dtype(),
                        expected: "f32 or bf16",
                    })
                }
            };
            Ok(Tensor::from_storage(storage, out_shape, a.device()))
        }
        Device::Cuda(gpu) => {
            let cfg = tile_grid(OP, g)?;
            let (sa, sb) = (a.storage(), b.storage());
            if c_len == 0 {
                // Nothing to compute (M, N or the batch is 0): an empty output, no launch.
                let storage = match &*sa {
                    Storage::CudaBF16(_) => Storage::CudaBF16(gpu.alloc::<bf16>(0)?),
                    _ => Storage::CudaF32(gpu.alloc::<f32>(0)?),
                };
                return Ok(Tensor::from_storage(storage, out_shape, a.device()));
            }
            let (batch, m, n, k) = (g.batch as i32, g.m as i32, g.n as i32, g.k as i32);
            let stride_a = if g.batch_a == 1 {
                0u64
            } else {
                (g.m * g.k) as u64
            };
            let stride_b = if g.batch_b == 1 {
                0u64
            } else {
                (g.k * g.n) as u64
            };
            let (ta, tb) = (g.trans_a as i32, g.trans_b as i32);
            // --precision tf32|bf16: f32 operands on the tensor cores (ops::precision).
            let tensor_core = super::matmul_tc::kernel(super::precision::current());
            let storage = match (&*sa, &*sb) {
                (Storage::CudaF32(av), Storage::CudaF32(bv)) if tensor_core.is_some() => {
                    let name = tensor_core.unwrap_or_default();
                    let (c, _) = super::matmul_tc::gemm(gpu, name, av, bv, None, None, false, g)?;
                    Storage::CudaF32(c)
                }
                (Storage::CudaF32(av), Storage::CudaF32(bv)) => {
                    let mut c = gpu.alloc::<f32>(c_len)?;
                    // SAFETY: A holds batch_a·M·K and B batch_b·K·N elements (checked above, stride 0 when
                    // broadcast); the tile reads only m < M, n < N, k < K and writes C[z, m, n], z < batch.
                    launch!(
                        gpu,
                        "matmul",
                        "matmul_f32",
                        cfg,
                        av,
                        bv,
                        &mut c,
                        &batch,
                        &m,
                        &n,
                        &k,
                        &stride_a,
                        &stride_b,
                        &ta,
                        &tb
                    )?;
                    Storage::CudaF32(c)
                }
                (Storage::CudaBF16(av), Storage::CudaBF16(bv)) => {
                    let mut c = gpu.alloc::<bf16>(c_len)?;
                    // SAFETY: as for matmul_f32, with 2-byte elements.
                    launch!(
                        gpu,
                        "matmul",
                        "matmul_bf16",
                        cfg,
                        av,
                        bv,
                        &mut c,
                        &batch,
                        &m,
                        &n,
                        &k,
                        &stride_a,
                        &stride_b,
                        &ta,
                        &tb
                    )?;
                    Storage::CudaBF16(c)
                }
                (other, _) => {
                    return Err(Error::DType {
                        op: OP,
                        got: other.dtype(),
                        expected: "f32 or bf16",
                    })
                }
            };
            Ok(Tensor::from_storage(storage, out_shape, a.device()))
        }
    }
}

/// The output shape: `[batch, M, N]`, or `[M, N]` when both operands are rank 2.
fn out_shape(a: &Tensor, b: &Tensor, g: &Gemm) -> Vec<usize> {
    if a.rank() == 2 && b.rank() == 2 {
        vec![g.m, g.n]
    } else {
        vec![g.batch, g.m, g.n]
    }
}

/// `C = op(A) · op(B)` without recording.
#[allow(dead_code)] // for the ops and models that multiply without a tape (attention, inference)
pub(crate) fn matmul_raw(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let g = Gemm::new(a.shape(), b.shape(), trans_a, trans_b)?;
    gemm_raw(a, b, &g, &out_shape(a, b, &g))
}

/// One input's gradient on the tensors' device, shaped like `like`.
fn grad_raw(plan: GradPlan, a: &Tensor, b: &Tensor, dc: &Tensor, like: &Tensor) -> Result<Tensor> {
    let pick = |o: Operand| match o {
        Operand::A => a,
        Operand::B => b,
        Operand::Dc => dc,
    };
    let g = plan.gemm;
    let full = gemm_raw(pick(plan.lhs), pick(plan.rhs), &g, &[g.batch, g.m, g.n])?;
    let grad = if plan.sum_batch {
        reduce_axis_raw(&full, 0, Reduce::Sum, 1.0)?
    } else {
        full
    };
    grad.reshaped(like.shape())
}

/// `C = op(A) · op(B)`, batched, recorded. See the module doc for shapes and broadcasting.
pub fn matmul(
    tape: &mut Tape,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor> {
    let g = Gemm::new(a.shape(), b.shape(), trans_a, trans_b)?;
    let c = gemm_raw(a, b, &g, &out_shape(a, b, &g))?;
    // Only the gradients some watched tensor depends on are computed.
    let (need_a, need_b) = (tape.needs_grad(&[a]), tape.needs_grad(&[b]));
    let (ac, bc) = (a.clone(), b.clone());
    tape.record(&[a, b], &c, move |dc| {
        for t in [&ac, &bc, dc] {
            if t.dtype() != DType::F32 {
                return Err(Error::DType {
                    op: "matmul backward",
                    got: t.dtype(),
                    expected: "f32 (bf16 matmul has no backward yet)",
                });
            }
        }
        let da = if need_a {
            Some(grad_raw(g.grad_a(), &ac, &bc, dc, &ac)?)
        } else {
            None
        };
        let db = if need_b {
            Some(grad_raw(g.grad_b(), &ac, &bc, dc, &bc)?)
        } else {
            None
        };
        Ok(vec![da, db])
    });
    Ok(c)
}

/// PyTorch's `nn.Linear`: `y = x · Wᵀ + b` for x `[N, in]` (or `[batch, N, in]`), weight
/// `[out, in]`, bias `[out]`; y is `[N, out]` (`[batch, N, out]`).
pub fn linear(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (x_in, w_in) = (x.shape().last().copied(), weight.shape().get(1).copied());
    if weight.rank() != 2 || !matches!(x.rank(), 2 | 3) || x_in != w_in {
        return Err(Error::shape(
            "linear",
            format!(
                "x {:?} (want [N, in] or [batch, N, in]) and weight {:?} (want [out, in])",
                x.shape(),
                weight.shape()
            ),
        ));
    }
    let y = matmul(tape, x, weight, false, true)?;
    match bias {
        Some(b) => crate::ops::elementwise::bias_add(tape, &y, b, -1),
        None => Ok(y),
    }
}

/// The GPU kernels of a bf16 `linear_act`, kept side by side until a lent GPU's benchmark picks
/// one: `Simt` (`matmul_bias_act_bf16`, the tile the f32 kernels share, so the better-trodden
/// path) and
/// `TensorCore` (`matmul_bias_act_bf16_tc`: mma.sync m16n8k16 with cp.async double buffering;
/// its SASS holds HMMA.16816.F32.BF16, LDSM and LDGSTS.128 and no local memory, but it has not
/// yet run on a GPU). `TensorCore` needs K % 8 == 0 and falls back to `Simt` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Linear {
    Simt,
    TensorCore,
}

/// What bf16 `linear_act` uses on a GPU: `Simt` until `bf16_linear_act_cuda_matches_cpu` has
/// passed for `TensorCore` on a GPU and the bench (`linear bf16 …`) says it wins.
pub const BF16_LINEAR: Bf16Linear = Bf16Linear::Simt;

/// `y = act(x·Wᵀ + b)` for x `[M, K]`, W `[N, K]` on their device, and the pre-activation
/// `x·Wᵀ + b` when `keep_pre` (else only y is written).
fn linear_act_raw(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Unary>,
    g: &Gemm,
    keep_pre: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    linear_act_raw_with(BF16_LINEAR, x, w, bias, act, g, keep_pre)
}

/// `linear_act_raw` with the bf16 GPU kernel chosen.
pub(crate) fn linear_act_raw_with(
    kernel: Bf16Linear,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Unary>,
    g: &Gemm,
    keep_pre: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "linear_act";
    let shape = [g.m, g.n];
    if let (Device::Cuda(gpu), DType::BF16, Bf16Linear::TensorCore, true) =
        (x.device(), x.dtype(), kernel, g.k % 8 == 0)
    {
        if aligned16(gpu, x)? && aligned16(gpu, w)? {
            return linear_bf16_tensor_core(gpu, x, w, bias, act, g);
        }
    }
    if super::bf16_on_cpu(x) {
        let b = bias.map(super::widen).transpose()?;
        let (y, _) = linear_act_raw(
            &super::widen(x)?,
            &super::widen(w)?,
            b.as_ref(),
            act,
            g,
            false,
        )?;
        return Ok((super::narrow(&y)?, None));
    }
    match x.device() {
        Device::Cpu => {
            let (xs, ws, bs) = (x.storage(), w.storage(), bias.map(|b| b.storage()));
            let bv = match &bs {
                Some(s) => Some(s.cpu_f32(OP)?),
                None => None,
            };
            let (pre, y) = cpu::linear_act(xs.cpu_f32(OP)?, ws.cpu_f32(OP)?, bv, act, g)?;
            let pre = if keep_pre {
                Some(Tensor::from_vec(pre, &shape, x.device())?)
            } else {
                None
            };
            Ok((Tensor::from_vec(y, &shape, x.device())?, pre))
        }
        Device::Cuda(gpu) => {
            if let (DType::F32, Some(name)) = (
                x.dtype(),
                super::matmul_tc::kernel(super::precision::current()),
            ) {
                let (xs, ws, bs) = (x.storage(), w.storage(), bias.map(|b| b.storage()));
                let bv = match &bs {
                    Some(s) => Some(s.cuda_f32(OP)?),
                    None => None,
                };
                // keep_pre is asked only with an activation (linear_act): without one y is pre.
                let (y, pre) = super::matmul_tc::gemm(
                    gpu,
                    name,
                    xs.cuda_f32(OP)?,
                    ws.cuda_f32(OP)?,
                    bv,
                    act,
                    keep_pre,
                    &Gemm {
                        trans_b: true,
                        ..*g
                    },
                )?;
                let pre =
                    pre.map(|p| Tensor::from_storage(Storage::CudaF32(p), &shape, x.device()));
                return Ok((
                    Tensor::from_storage(Storage::CudaF32(y), &shape, x.device()),
                    pre,
                ));
            }
            let cfg = tile_grid(OP, g)?;
            let len = g.m * g.n;
            // f32 or bf16 throughout (checked by linear_act); bf16 never keeps the pre-activation.
            let (bf16, name) = match x.dtype() {
                DType::BF16 => (true, "matmul_bias_act_bf16"),
                _ => (false, "matmul_bias_act_f32"),
            };
            let mut y = crate::tensor::alloc_storage(gpu, x.dtype(), len)?;
            let mut pre = if keep_pre && !bf16 {
                Some(crate::tensor::alloc_storage(gpu, x.dtype(), len)?)
            } else {
                None
            };
            if len > 0 {
                let (code, alpha, beta) = act.map_or((-1, 0.0, 0.0), Unary::code);
                let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
                let null = 0u64; // a null device pointer: no bias / no pre-activation output
                let (xs, ws, bs) = (x.storage(), w.storage(), bias.map(|b| b.storage()));
                let f = gpu.function("matmul", name)?;
                let mut lb = gpu.stream.launch_builder(&f);
                arg_buffer(&mut lb, &xs, OP)?;
                arg_buffer(&mut lb, &ws, OP)?;
                match &bs {
                    Some(s) => arg_buffer(&mut lb, s, OP)?,
                    None => {
                        lb.arg(&null);
                    }
                };
                arg_buffer_mut(&mut lb, &mut y, OP)?;
                match pre.as_mut() {
                    Some(p) => arg_buffer_mut(&mut lb, p, OP)?,
                    None => {
                        lb.arg(&null);
                    }
                };
                lb.arg(&m).arg(&n).arg(&k).arg(&code).arg(&alpha).arg(&beta);
                // SAFETY: x holds M·K, W N·K and bias N elements of the kernel's dtype (checked by
                // linear_act; null when absent, never read); the tile reads only m < M, n < N,
                // k < K and writes y[m, n] (and pre[m, n] when non-null, allocated with M·N
                // elements) for m < M, n < N.
                unsafe { lb.launch(cfg) }.map_err(|e| Error::cuda(name, e))?;
            }
            let pre = pre.map(|p| Tensor::from_storage(p, &shape, x.device()));
            Ok((Tensor::from_storage(y, &shape, x.device()), pre))
        }
    }
}

/// Whether a bf16 GPU buffer starts on a 16-byte boundary (the tensor-core kernel's 16-byte
/// cp.async copies need it; whole allocations always do, a future view with an offset may not).
fn aligned16(gpu: &crate::tensor::Gpu, t: &Tensor) -> Result<bool> {
    use cudarc::driver::DevicePtr;
    let s = t.storage();
    let (ptr, _sync) = s.cuda_bf16("linear_act")?.device_ptr(&gpu.stream);
    Ok(ptr % 16 == 0)
}

/// The tensor-core bf16 linear (`matmul_bias_act_bf16_tc`); the caller checked K % 8 == 0 and
/// that x and W start 16-byte aligned.
fn linear_bf16_tensor_core(
    gpu: &crate::tensor::Gpu,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Unary>,
    g: &Gemm,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "linear_act";
    let fits = |v: usize| v < 1 << 30;
    if !(fits(g.m) && fits(g.n) && fits(g.k)) || g.m.div_ceil(128) > 65535 {
        return Err(Error::shape(
            OP,
            format!("{g:?} is too large for the CUDA kernel (sizes < 2³⁰, M ≤ 65535·128)"),
        ));
    }
    let len = g.m * g.n;
    let mut y = gpu.alloc::<bf16>(len)?;
    if len > 0 {
        let cfg = LaunchConfig {
            grid_dim: (g.n.div_ceil(128) as u32, g.m.div_ceil(128) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (code, alpha, beta) = act.map_or((-1, 0.0, 0.0), Unary::code);
        let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
        let null = 0u64;
        let (xs, ws, bs) = (x.storage(), w.storage(), bias.map(|b| b.storage()));
        let f = gpu.function("matmul", "matmul_bias_act_bf16_tc")?;
        let mut lb = gpu.stream.launch_builder(&f);
        lb.arg(xs.cuda_bf16(OP)?).arg(ws.cuda_bf16(OP)?);
        match &bs {
            Some(s) => lb.arg(s.cuda_bf16(OP)?),
            None => lb.arg(&null),
        };
        lb.arg(&mut y)
            .arg(&m)
            .arg(&n)
            .arg(&k)
            .arg(&code)
            .arg(&alpha)
            .arg(&beta);
        // SAFETY: x holds M·K and W N·K bf16 (K % 8 == 0, allocations 256-byte aligned, so every
        // 16-byte cp.async source is aligned); copies past M, N or K read nothing (zero-fill);
        // y[m, n] is written for m < M, n < N only; bias (N) is null when absent.
        unsafe { lb.launch(cfg) }.map_err(|e| Error::cuda("matmul_bias_act_bf16_tc", e))?;
    }
    Ok((
        Tensor::from_storage(Storage::CudaBF16(y), &[g.m, g.n], x.device()),
        None,
    ))
}

/// `y = act(x·Wᵀ + b)`: `linear` with its bias add and activation fused into the GEMM's store,
/// for x `[.., in]`, weight `[out, in]`, bias `[out]`; y is `[.., out]`. f32, or bf16 for
/// inference (bf16 in and out, f32 accumulation, bias and activation; one rounding).
///
/// Forward: one GEMM whose epilogue adds the bias and applies `act` in registers; the
/// pre-activation `p = x·Wᵀ + b` is written too only when the tape will need it (some input
/// is watched and `act` is set). Backward: `dp = act'(p)·dy` (`unary_bwd_raw`), then the matmul
/// backward `dx = dp·W`, `dW = dpᵀ·x`, and `db = Σ_rows dp` (`bias_grad_raw`).
///
/// Traffic per element of y (`[rows, out]`), f32: unfused `linear` + activation writes the
/// product (4 B), reads and writes it for the bias (8 B) and again for the activation (8 B):
/// 20 B; fused, 4 B (inference) or 8 B (training: y and p). The backward's traffic is the
/// same as the unfused ops' (the activation backward reads p, y, dy and writes dp; the bias
/// gradient reads dp). FLOPs are unchanged: `2·rows·in·out` for the product, plus the bias
/// and activation per element of y.
pub fn linear_act(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Unary>,
) -> Result<Tensor> {
    const OP: &str = "linear_act";
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    same_device(OP, &inputs)?;
    let (x_in, w_in) = (x.shape().last().copied(), weight.shape().get(1).copied());
    if weight.rank() != 2 || x.rank() == 0 || x_in != w_in {
        return Err(Error::shape(
            OP,
            format!(
                "x {:?} (want [.., in]) and weight {:?} (want [out, in])",
                x.shape(),
                weight.shape()
            ),
        ));
    }
    let (k, n) = (weight.shape()[1], weight.shape()[0]);
    if let Some(b) = bias {
        if b.rank() != 1 || b.numel() != n {
            return Err(Error::shape(
                OP,
                format!(
                    "bias {:?} for weight {:?} (want [{n}])",
                    b.shape(),
                    weight.shape()
                ),
            ));
        }
    }
    super::f32_or_bf16(OP, x)?;
    super::same_dtype(OP, &inputs)?;
    let rows: usize = x.shape()[..x.rank() - 1].iter().product();
    let x2 = x.reshaped(&[rows, k])?;
    let g = Gemm::new(&[rows, k], weight.shape(), false, true)?;
    if x.dtype() == DType::BF16 && tape.needs_grad(&inputs) {
        return Err(Error::DType {
            op: OP,
            got: DType::BF16,
            expected: "f32 when gradients are needed (bf16 is inference-only)",
        });
    }
    let keep_pre = act.is_some() && tape.needs_grad(&inputs);
    let (y2, pre) = linear_act_raw(&x2, weight, bias, act, &g, keep_pre)?;
    let mut y_shape = x.shape().to_vec();
    if let Some(last) = y_shape.last_mut() {
        *last = n;
    }
    let y = y2.reshaped(&y_shape)?;

    let (need_x, need_w) = (tape.needs_grad(&[x]), tape.needs_grad(&[weight]));
    let need_b = bias.is_some_and(|b| tape.needs_grad(&[b]));
    let (xc, wc, yc, has_bias) = (x2.clone(), weight.clone(), y2, bias.is_some());
    let x_shape = x.shape().to_vec();
    tape.record(&inputs, &y, move |dy| {
        let dy = dy.reshaped(&[rows, n])?;
        let dp = match (act, &pre) {
            (None, _) => dy,
            (Some(op), Some(p)) => unary_bwd_raw(op, p, &yc, &dy)?,
            (Some(_), None) => {
                return Err(Error::Invalid(
                    "linear_act backward: the pre-activation was not kept".into(),
                ))
            }
        };
        let dx = if need_x {
            Some(grad_raw(g.grad_a(), &xc, &wc, &dp, &xc)?.reshaped(&x_shape)?)
        } else {
            None
        };
        let dw = if need_w {
            Some(grad_raw(g.grad_b(), &xc, &wc, &dp, &wc)?)
        } else {
            None
        };
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(if need_b {
                Some(bias_grad_raw(&dp, rows, n, 1)?)
            } else {
                None
            });
        }
        Ok(grads)
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, random_vec};

    const FLAGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

    /// Operand shapes for `g` (rank 3 unless the batch is 1 and `rank2`).
    fn shapes(g: &Gemm) -> (Vec<usize>, Vec<usize>) {
        let a = if g.trans_a {
            [g.batch_a, g.k, g.m]
        } else {
            [g.batch_a, g.m, g.k]
        };
        let b = if g.trans_b {
            [g.batch_b, g.n, g.k]
        } else {
            [g.batch_b, g.k, g.n]
        };
        (a.to_vec(), b.to_vec())
    }

    fn gemm(
        batch_a: usize,
        batch_b: usize,
        m: usize,
        n: usize,
        k: usize,
        (trans_a, trans_b): (bool, bool),
    ) -> Gemm {
        let (a, b) = shapes(&Gemm {
            batch: 0,
            batch_a,
            batch_b,
            m,
            n,
            k,
            trans_a,
            trans_b,
        });
        Gemm::new(&a, &b, trans_a, trans_b).unwrap()
    }

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// (A, B, weights for loss = Σ w ⊙ C) as f64 for `g`.
    fn inputs(g: &Gemm, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (a_len, b_len, c_len) = g.lens();
        (
            f64s(&random_vec(a_len, seed)),
            f64s(&random_vec(b_len, seed + 1)),
            f64s(&random_vec(c_len, seed + 2)),
        )
    }

    /// Σ_k a·b by the definition, as an independent check of the twin's indexing.
    fn naive(a: &[f64], b: &[f64], g: &Gemm) -> Vec<f64> {
        let mut c = vec![0.0; g.lens().2];
        for z in 0..g.batch {
            let (za, zb) = (
                if g.batch_a == 1 { 0 } else { z },
                if g.batch_b == 1 { 0 } else { z },
            );
            for m in 0..g.m {
                for n in 0..g.n {
                    c[(z * g.m + m) * g.n + n] = (0..g.k)
                        .map(|k| {
                            let av = a[za * g.m * g.k
                                + if g.trans_a { k * g.m + m } else { m * g.k + k }];
                            let bv = b[zb * g.k * g.n
                                + if g.trans_b { n * g.k + k } else { k * g.n + n }];
                            av * bv
                        })
                        .sum();
                }
            }
        }
        c
    }

    #[test]
    fn matmul_twin_matches_the_definition() {
        for flags in FLAGS {
            for (ba, bb) in [(1, 1), (3, 3), (3, 1), (1, 3)] {
                let g = gemm(ba, bb, 4, 5, 3, flags);
                let (a, b, _) = inputs(&g, 1);
                let got = cpu::matmul(&a, &b, &g).unwrap();
                let want = naive(&a, &b, &g);
                assert_close(&f32s(&got), &f32s(&want), 1e-12, 1e-12, &format!("{g:?}"));
            }
        }
    }

    #[test]
    fn matmul_gradients_match_finite_differences() {
        let mut cases: Vec<Gemm> = FLAGS.iter().map(|&f| gemm(2, 2, 3, 4, 5, f)).collect();
        for f in FLAGS {
            cases.push(gemm(3, 1, 3, 2, 4, f)); // B broadcast (shared weights)
            cases.push(gemm(1, 3, 2, 3, 4, f)); // A broadcast
        }
        for g in cases {
            let (a, b, w) = inputs(&g, 7);
            let (da, db) = cpu::matmul_bwd(&a, &b, &w, &g).unwrap();
            let loss = |a: &[f64], b: &[f64]| {
                cpu::matmul(a, b, &g)
                    .unwrap()
                    .iter()
                    .zip(&w)
                    .map(|(c, w)| c * w)
                    .sum::<f64>()
            };
            gradcheck(&format!("dA {g:?}"), |x| loss(x, &b), &a, &da);
            gradcheck(&format!("dB {g:?}"), |x| loss(&a, x), &b, &db);
        }
    }

    #[test]
    fn matmul_backward_through_tape_on_every_device() {
        for device in devices() {
            for flags in FLAGS {
                for (ba, bb, rank2) in [(1, 1, true), (2, 2, false), (3, 1, false), (1, 3, false)] {
                    let g = gemm(ba, bb, 5, 3, 4, flags);
                    let (a_shape, b_shape) = shapes(&g);
                    let (a_shape, b_shape) = if rank2 {
                        (a_shape[1..].to_vec(), b_shape[1..].to_vec())
                    } else {
                        (a_shape, b_shape)
                    };
                    let (av, bv, wv) = inputs(&g, 11);
                    let a = Tensor::from_vec(f32s(&av), &a_shape, &device).unwrap();
                    let b = Tensor::from_vec(f32s(&bv), &b_shape, &device).unwrap();
                    let mut tape = Tape::new();
                    tape.watch(&a);
                    tape.watch(&b);
                    let c = matmul(&mut tape, &a, &b, flags.0, flags.1).unwrap();
                    let want_shape = if rank2 {
                        vec![g.m, g.n]
                    } else {
                        vec![g.batch, g.m, g.n]
                    };
                    assert_eq!(c.shape(), &want_shape[..]);
                    let w = Tensor::from_vec(f32s(&wv), c.shape(), &device).unwrap();
                    let cw = crate::ops::elementwise::mul(&mut tape, &c, &w).unwrap();
                    let loss = crate::ops::reduce::sum_all(&mut tape, &cw).unwrap();
                    let grads = tape.backward(&loss).unwrap();
                    let (da, db) = cpu::matmul_bwd(&av, &bv, &wv, &g).unwrap();
                    let what = format!("{g:?} on {device}");
                    assert_close(
                        &c.to_vec_f32().unwrap(),
                        &f32s(&cpu::matmul(&av, &bv, &g).unwrap()),
                        1e-5,
                        1e-5,
                        &format!("C {what}"),
                    );
                    let ga = grads.get(&a).unwrap();
                    let gb = grads.get(&b).unwrap();
                    assert_eq!(ga.shape(), a.shape());
                    assert_eq!(gb.shape(), b.shape());
                    assert_close(
                        &ga.to_vec_f32().unwrap(),
                        &f32s(&da),
                        1e-5,
                        1e-5,
                        &format!("dA {what}"),
                    );
                    assert_close(
                        &gb.to_vec_f32().unwrap(),
                        &f32s(&db),
                        1e-5,
                        1e-5,
                        &format!("dB {what}"),
                    );
                }
            }
        }
    }

    #[test]
    fn linear_is_x_times_weight_transposed_plus_bias() {
        for device in devices() {
            let (xv, wv, bv) = (random_vec(4 * 3, 1), random_vec(2 * 3, 2), random_vec(2, 3));
            let x = Tensor::from_slice(&xv, &[4, 3], &device).unwrap();
            let w = Tensor::from_slice(&wv, &[2, 3], &device).unwrap();
            let b = Tensor::from_slice(&bv, &[2], &device).unwrap();
            let mut tape = Tape::new();
            for t in [&x, &w, &b] {
                tape.watch(t);
            }
            let y = linear(&mut tape, &x, &w, Some(&b)).unwrap();
            assert_eq!(y.shape(), &[4, 2]);
            let want: Vec<f32> = (0..8)
                .map(|i| {
                    (0..3)
                        .map(|j| xv[(i / 2) * 3 + j] * wv[(i % 2) * 3 + j])
                        .sum::<f32>()
                        + bv[i % 2]
                })
                .collect();
            assert_close(
                &y.to_vec_f32().unwrap(),
                &want,
                1e-5,
                1e-6,
                &format!("linear on {device}"),
            );
            let loss = crate::ops::reduce::sum_all(&mut tape, &y).unwrap();
            let g = tape.backward(&loss).unwrap();
            // dW[o, j] = Σ_n x[n, j]; db = N; dx[n, j] = Σ_o W[o, j].
            let dw: Vec<f32> = (0..6)
                .map(|i| (0..4).map(|n| xv[n * 3 + i % 3]).sum())
                .collect();
            let dx: Vec<f32> = (0..12).map(|i| wv[i % 3] + wv[3 + i % 3]).collect();
            assert_close(
                &g.get(&w).unwrap().to_vec_f32().unwrap(),
                &dw,
                1e-5,
                1e-6,
                "dW",
            );
            assert_close(
                &g.get(&x).unwrap().to_vec_f32().unwrap(),
                &dx,
                1e-5,
                1e-6,
                "dx",
            );
            assert_close(
                &g.get(&b).unwrap().to_vec_f32().unwrap(),
                &[4.0, 4.0],
                1e-5,
                1e-6,
                "db",
            );
            // A batched x shares the weight across the batch.
            let x3 = Tensor::from_slice(&random_vec(2 * 4 * 3, 4), &[2, 4, 3], &device).unwrap();
            assert_eq!(
                linear(&mut Tape::new(), &x3, &w, Some(&b)).unwrap().shape(),
                &[2, 4, 2]
            );
        }
    }

    #[test]
    fn bf16_on_the_cpu_rounds_an_f32_accumulation() {
        let g = gemm(2, 1, 7, 5, 33, (false, true));
        let (a_shape, b_shape) = shapes(&g);
        let (av, bv, _) = inputs(&g, 3);
        let a = Tensor::from_vec(f32s(&av), &a_shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let b = Tensor::from_vec(f32s(&bv), &b_shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let c = matmul_raw(&a, &b, false, true).unwrap();
        assert_eq!(c.dtype(), DType::BF16);
        let want = cpu::matmul(
            &f64s(&a.to_vec_f32().unwrap()),
            &f64s(&b.to_vec_f32().unwrap()),
            &g,
        )
        .unwrap();
        assert_close(
            &c.to_vec_f32().unwrap(),
            &f32s(&want),
            1e-2,
            1e-3,
            "bf16 matmul",
        );
        // The backward is f32 only: a clear error, not a panic.
        let mut tape = Tape::new();
        tape.watch(&a);
        let c = matmul(&mut tape, &a, &b, false, true).unwrap();
        let Err(err) = tape.backward_with(&c, Tensor::full(1.0, c.shape(), &Device::Cpu).unwrap())
        else {
            panic!("bf16 backward ran")
        };
        let err = err.to_string();
        assert!(
            err.contains("matmul backward") && err.contains("bf16"),
            "{err}"
        );
    }

    #[test]
    fn matmul_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        const SIZES: [usize; 5] = [1, 7, 33, 65, 130];
        for (i, &m) in SIZES.iter().enumerate() {
            for (j, &n) in SIZES.iter().enumerate() {
                let k = SIZES[(i + 2 * j + 1) % SIZES.len()];
                for flags in FLAGS {
                    for (ba, bb) in [(1, 1), (3, 3), (3, 1), (1, 3)] {
                        let g = gemm(ba, bb, m, n, k, flags);
                        let (a_shape, b_shape) = shapes(&g);
                        let (av, bv, _) = inputs(&g, (m * 1000 + n * 10 + k) as u64);
                        let what = format!("{g:?}");
                        // f32 against the f64 twin: only the kernel's rounding is measured.
                        let want = f32s(&cpu::matmul(&av, &bv, &g).unwrap());
                        let a = Tensor::from_vec(f32s(&av), &a_shape, &gpu).unwrap();
                        let b = Tensor::from_vec(f32s(&bv), &b_shape, &gpu).unwrap();
                        let c = matmul_raw(&a, &b, flags.0, flags.1).unwrap();
                        assert_eq!(c.dtype(), DType::F32);
                        let atol = 1e-5 * (k as f32).sqrt();
                        assert_close(
                            &c.to_vec_f32().unwrap(),
                            &want,
                            1e-4,
                            atol,
                            &format!("f32 {what}"),
                        );
                        // bf16 against the CPU bf16 path on the same rounded inputs (both round once).
                        let (a16, b16) = (
                            a.to_dtype(DType::BF16).unwrap(),
                            b.to_dtype(DType::BF16).unwrap(),
                        );
                        let c16 = matmul_raw(&a16, &b16, flags.0, flags.1).unwrap();
                        assert_eq!(c16.dtype(), DType::BF16);
                        let (a16c, b16c) = (
                            a16.to_device(&Device::Cpu).unwrap(),
                            b16.to_device(&Device::Cpu).unwrap(),
                        );
                        let want16 = matmul_raw(&a16c, &b16c, flags.0, flags.1).unwrap();
                        assert_close(
                            &c16.to_vec_f32().unwrap(),
                            &want16.to_vec_f32().unwrap(),
                            2e-2,
                            1e-3 * (k as f32).sqrt(),
                            &format!("bf16 {what}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_cuda_handles_many_batches_and_empty_sizes() {
        let Some(gpu) = gpu() else { return };
        // More batch items than a grid's z may hold, so blocks loop over z; and K = 0 (C = 0).
        for g in [
            gemm(70000, 1, 2, 3, 2, (false, false)),
            gemm(1, 1, 3, 4, 0, (false, false)),
            gemm(2, 2, 0, 5, 3, (true, false)),
        ] {
            let (a_shape, b_shape) = shapes(&g);
            let (av, bv, _) = inputs(&g, 5);
            let want = f32s(&cpu::matmul(&av, &bv, &g).unwrap());
            let a = Tensor::from_vec(f32s(&av), &a_shape, &gpu).unwrap();
            let b = Tensor::from_vec(f32s(&bv), &b_shape, &gpu).unwrap();
            let c = matmul_raw(&a, &b, g.trans_a, g.trans_b).unwrap();
            assert_eq!(c.shape(), &[g.batch, g.m, g.n]);
            assert_close(
                &c.to_vec_f32().unwrap(),
                &want,
                1e-5,
                1e-5,
                &format!("{g:?}"),
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let t = |s: &[usize]| Tensor::zeros(s, &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        let err = matmul(&mut tape, &t(&[2, 3]), &t(&[4, 5]), false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inner sizes 3 and 4 differ"), "{err}");
        assert!(matmul(&mut tape, &t(&[2, 3]), &t(&[5, 3]), false, false).is_err());
        assert!(matmul(&mut tape, &t(&[2, 3]), &t(&[5, 3]), false, true).is_ok());
        let err = matmul(&mut tape, &t(&[2, 4, 3]), &t(&[3, 3, 5]), false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch sizes differ"), "{err}");
        let err = matmul(&mut tape, &t(&[3]), &t(&[3, 5]), false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank 2 or 3"), "{err}");
        assert!(matmul(&mut tape, &t(&[1, 2, 3, 4]), &t(&[4, 5]), false, false).is_err());
        let bf = t(&[3, 5]).to_dtype(DType::BF16).unwrap();
        assert!(matmul(&mut tape, &t(&[2, 3]), &bf, false, false).is_err());
        assert!(linear(&mut tape, &t(&[4, 3]), &t(&[2, 4]), None).is_err());
        assert!(linear(&mut tape, &t(&[4, 3]), &t(&[2, 3]), Some(&t(&[3]))).is_err());
        assert!(linear(&mut tape, &t(&[3]), &t(&[2, 3]), None).is_err());
    }

    #[test]
    fn empty_sizes_on_the_cpu() {
        let t = |s: &[usize]| {
            Tensor::from_vec(random_vec(s.iter().product(), 1), s, &Device::Cpu).unwrap()
        };
        let c = matmul_raw(&t(&[3, 0]), &t(&[0, 4]), false, false).unwrap();
        assert_eq!(c.shape(), &[3, 4]);
        assert_eq!(c.to_vec_f32().unwrap(), vec![0.0; 12]);
        assert_eq!(
            matmul_raw(&t(&[0, 2]), &t(&[2, 4]), false, false)
                .unwrap()
                .shape(),
            &[0, 4]
        );
    }

    /// The activations `linear_act` is used with, and none.
    const ACTS: [Option<Unary>; 6] = [
        None,
        Some(Unary::Relu),
        Some(Unary::LeakyRelu {
            slope: 0.2,
            gain: std::f32::consts::SQRT_2,
        }),
        Some(Unary::Gelu),
        Some(Unary::QuickGelu),
        Some(Unary::Sigmoid),
    ];

    #[test]
    fn linear_act_equals_linear_then_activation_on_every_device() {
        use crate::ops::elementwise::{mul, unary};
        use crate::ops::reduce::sum_all;
        for device in devices() {
            for act in ACTS {
                for with_bias in [true, false] {
                    let (xv, wv, bv, lw) = (
                        random_vec(2 * 5 * 7, 1),
                        random_vec(3 * 7, 2),
                        random_vec(3, 3),
                        random_vec(2 * 5 * 3, 4),
                    );
                    let x = Tensor::from_slice(&xv, &[2, 5, 7], &device).unwrap();
                    let w = Tensor::from_slice(&wv, &[3, 7], &device).unwrap();
                    let b = Tensor::from_slice(&bv, &[3], &device).unwrap();
                    let lw = Tensor::from_slice(&lw, &[2, 5, 3], &device).unwrap();
                    let bias = with_bias.then_some(&b);
                    // loss = Σ lw ⊙ y, through the fused op and through linear + unary.
                    let run = |fused: bool| {
                        let mut tape = Tape::new();
                        for t in [&x, &w, &b] {
                            tape.watch(t);
                        }
                        let y = if fused {
                            linear_act(&mut tape, &x, &w, bias, act).unwrap()
                        } else {
                            let y = linear(&mut tape, &x, &w, bias).unwrap();
                            act.map_or(y.clone(), |op| unary(&mut tape, op, &y).unwrap())
                        };
                        let yl = mul(&mut tape, &y, &lw).unwrap();
                        let loss = sum_all(&mut tape, &yl).unwrap();
                        let g = tape.backward(&loss).unwrap();
                        let grad = |t: &Tensor| g.get(t).map(|d| d.to_vec_f32().unwrap());
                        (
                            y.shape().to_vec(),
                            y.to_vec_f32().unwrap(),
                            grad(&x),
                            grad(&w),
                            grad(&b),
                        )
                    };
                    let (got, want) = (run(true), run(false));
                    let what = format!("{act:?} bias {with_bias} on {device}");
                    assert_eq!(got.0, vec![2, 5, 3], "{what}");
                    assert_close(&got.1, &want.1, 1e-5, 1e-6, &format!("y {what}"));
                    assert_close(
                        &got.2.unwrap(),
                        &want.2.unwrap(),
                        1e-5,
                        1e-6,
                        &format!("dx {what}"),
                    );
                    assert_close(
                        &got.3.unwrap(),
                        &want.3.unwrap(),
                        1e-5,
                        1e-6,
                        &format!("dW {what}"),
                    );
                    assert_eq!(got.4.is_some(), with_bias, "{what}");
                    if with_bias {
                        assert_close(
                            &got.4.unwrap(),
                            &want.4.unwrap(),
                            1e-5,
                            1e-6,
                            &format!("db {what}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn linear_act_twin_gradients_match_finite_differences() {
        let g = gemm(1, 1, 4, 3, 5, (false, true));
        let (x, w, lw) = inputs(&g, 21);
        let b = f64s(&random_vec(3, 24));
        for act in ACTS {
            let (pre, y) = cpu::linear_act(&x, &w, Some(&b), act, &g).unwrap();
            // Away from relu's kink, where a finite difference is meaningless.
            assert!(
                pre.iter().all(|p| p.abs() > 1e-3),
                "{act:?}: a pre-activation at the kink"
            );
            let (dx, dw, db) = cpu::linear_act_bwd(&x, &w, &pre, &y, &lw, act, &g).unwrap();
            let loss = |x: &[f64], w: &[f64], b: &[f64]| {
                cpu::linear_act(x, w, Some(b), act, &g)
                    .unwrap()
                    .1
                    .iter()
                    .zip(&lw)
                    .map(|(y, l)| y * l)
                    .sum::<f64>()
            };
            gradcheck(&format!("dx {act:?}"), |v| loss(v, &w, &b), &x, &dx);
            gradcheck(&format!("dW {act:?}"), |v| loss(&x, v, &b), &w, &dw);
            gradcheck(&format!("db {act:?}"), |v| loss(&x, &w, v), &b, &db);
        }
    }

    #[test]
    fn linear_act_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        use crate::ops::reduce::sum_all;
        const SIZES: [usize; 5] = [1, 7, 33, 65, 130];
        for (i, &m) in SIZES.iter().enumerate() {
            for (j, &n) in SIZES.iter().enumerate() {
                let k = SIZES[(i + 2 * j + 1) % SIZES.len()];
                let g = gemm(1, 1, m, n, k, (false, true));
                let (xv, wv, lw) = inputs(&g, (m * 1000 + n * 10 + k) as u64);
                let bv = f64s(&random_vec(n, 5));
                for act in ACTS {
                    for with_bias in [true, false] {
                        let what = format!("{act:?} bias {with_bias} m {m} n {n} k {k}");
                        let bias64 = with_bias.then_some(&bv[..]);
                        // f32 on the GPU against the f64 twin: only the kernel's rounding is measured.
                        let (pre, y) = cpu::linear_act(&xv, &wv, bias64, act, &g).unwrap();
                        let (dx, dw, db) =
                            cpu::linear_act_bwd(&xv, &wv, &pre, &y, &lw, act, &g).unwrap();
                        let x = Tensor::from_vec(f32s(&xv), &[m, k], &gpu).unwrap();
                        let w = Tensor::from_vec(f32s(&wv), &[n, k], &gpu).unwrap();
                        let b = Tensor::from_vec(f32s(&bv), &[n], &gpu).unwrap();
                        let l = Tensor::from_vec(f32s(&lw), &[m, n], &gpu).unwrap();
                        let bias = with_bias.then_some(&b);
                        let tol = (1e-4, 1e-5 * (k as f32).sqrt());
                        // Inference: no pre-activation written.
                        let (y_inf, pre_inf) =
                            linear_act_raw(&x, &w, bias, act, &g, false).unwrap();
                        assert!(pre_inf.is_none(), "{what}");
                        assert_close(
                            &y_inf.to_vec_f32().unwrap(),
                            &f32s(&y),
                            tol.0,
                            tol.1,
                            &format!("y {what}"),
                        );
                        // Training: y, the kept pre-activation and every gradient.
                        let mut tape = Tape::new();
                        for t in [&x, &w, &b] {
                            tape.watch(t);
                        }
                        let (_, pre_kept) = linear_act_raw(&x, &w, bias, act, &g, true).unwrap();
                        assert_close(
                            &pre_kept.unwrap().to_vec_f32().unwrap(),
                            &f32s(&pre),
                            tol.0,
                            tol.1,
                            &format!("pre {what}"),
                        );
                        let yt = linear_act(&mut tape, &x, &w, bias, act).unwrap();
                        assert_close(
                            &yt.to_vec_f32().unwrap(),
                            &f32s(&y),
                            tol.0,
                            tol.1,
                            &format!("y (tape) {what}"),
                        );
                        let yl = crate::ops::elementwise::mul(&mut tape, &yt, &l).unwrap();
                        let loss = sum_all(&mut tape, &yl).unwrap();
                        let grads = tape.backward(&loss).unwrap();
                        let gtol = (1e-4, 1e-5 * ((k + m) as f32).sqrt());
                        assert_close(
                            &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                            &f32s(&dx),
                            gtol.0,
                            gtol.1,
                            &format!("dx {what}"),
                        );
                        assert_close(
                            &grads.get(&w).unwrap().to_vec_f32().unwrap(),
                            &f32s(&dw),
                            gtol.0,
                            gtol.1,
                            &format!("dW {what}"),
                        );
                        if with_bias {
                            assert_close(
                                &grads.get(&b).unwrap().to_vec_f32().unwrap(),
                                &f32s(&db),
                                gtol.0,
                                gtol.1,
                                &format!("db {what}"),
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn linear_act_checks_shapes_and_dtypes() {
        let t = |s: &[usize]| Tensor::zeros(s, &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        let act = Some(Unary::QuickGelu);
        assert_eq!(
            linear_act(
                &mut tape,
                &t(&[2, 3, 4, 5]),
                &t(&[6, 5]),
                Some(&t(&[6])),
                act
            )
            .unwrap()
            .shape(),
            &[2, 3, 4, 6]
        );
        assert_eq!(
            linear_act(&mut tape, &t(&[5]), &t(&[6, 5]), None, act)
                .unwrap()
                .shape(),
            &[6]
        );
        let err = linear_act(&mut tape, &t(&[4, 3]), &t(&[2, 4]), None, act)
            .unwrap_err()
            .to_string();
        assert!(err.contains("want [out, in]"), "{err}");
        let err = linear_act(&mut tape, &t(&[4, 3]), &t(&[2, 3]), Some(&t(&[3])), act)
            .unwrap_err()
            .to_string();
        assert!(err.contains("want [2]"), "{err}");
        let bf = t(&[2, 3]).to_dtype(DType::BF16).unwrap();
        let err = linear_act(&mut tape, &t(&[4, 3]), &bf, None, act)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bf16"), "{err}");
    }

    /// bf16 linear_act (with and without bias and activation) against the CPU path; bf16 with
    /// a watched input is refused (no backward in bf16).
    #[test]
    fn bf16_linear_act_cuda_matches_cpu() {
        // K 7 and 65 take the SIMT fallback of TensorCore (K % 8 ≠ 0); M 50, 130, 257 and N 33,
        // 200 leave partial 128-tiles; K 40 ends in a partial 32-wide k-tile. CLIP's fc2 shape
        // (130×3072·3072×768) takes minutes on the simulator, where 130×520·520×264 stands in
        // (every tile edge again: partial m, n and k tiles, many k-tiles through the pipeline).
        let fc2 = if crate::testing::on_simulator() {
            (130, 520, 264)
        } else {
            (130, 3072, 768)
        };
        for (m, k, n) in [
            (1, 7, 5),
            (50, 768, 33),
            (130, 65, 3072),
            (257, 40, 200),
            fc2,
        ] {
            let x = Tensor::from_vec(random_vec(m * k, 1), &[m, k], &Device::Cpu).unwrap();
            let w = Tensor::from_vec(
                random_vec(n * k, 2)
                    .iter()
                    .map(|v| v / (k as f32).sqrt())
                    .collect(),
                &[n, k],
                &Device::Cpu,
            )
            .unwrap();
            let b = Tensor::from_vec(random_vec(n, 3), &[n], &Device::Cpu).unwrap();
            let g = Gemm::new(&[m, k], &[n, k], false, true).unwrap();
            for act in [None, Some(Unary::QuickGelu)] {
                for kernel in [Bf16Linear::Simt, Bf16Linear::TensorCore] {
                    let what = format!("linear_act {kernel:?} {m}×{k}·{k}×{n} {act:?}");
                    let run = |t: &[Tensor], bias: bool| {
                        linear_act_raw_with(
                            kernel,
                            &t[0],
                            &t[1],
                            if bias { Some(&t[2]) } else { None },
                            act,
                            &g,
                            false,
                        )
                        .map(|r| r.0)
                    };
                    crate::testing::bf16_parity(
                        &what,
                        &[x.clone(), w.clone(), b.clone()],
                        2e-2,
                        1e-2,
                        |t| run(t, true),
                    );
                    crate::testing::bf16_parity(
                        &format!("{what} no bias"),
                        &[x.clone(), w.clone()],
                        2e-2,
                        1e-2,
                        |t| run(t, false),
                    );
                }
                let what = format!("linear_act {m}×{k}·{k}×{n} {act:?} through the tape");
                crate::testing::bf16_parity(
                    &what,
                    &[x.clone(), w.clone(), b.clone()],
                    2e-2,
                    1e-2,
                    |t| linear_act(&mut Tape::inference(), &t[0], &t[1], Some(&t[2]), act),
                );
            }
        }
        let x = Tensor::zeros(&[2, 3], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let mut tape = Tape::new();
        tape.watch(&x);
        let err = linear_act(&mut tape, &x, &x, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference-only"), "{err}");
    }
}
