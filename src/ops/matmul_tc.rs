//! The tensor-core path of `matmul` and `linear` for f32 tensors (`kernels/matmul.cu`:
//! `matmul_tc_tf32`, `matmul_tc_bf16`), taken on the GPU when `ops::precision` says tf32 or bf16.
//!
//! The math is `matmul`'s, `C[z] = act(op(A[z])·op(B[z]) + bias)`, on operands rounded to the
//! precision's input format (`precision::round_operand` is the twin) and accumulated in f32, so a
//! product's error against f32 is that of its inputs' rounding: about `2⁻¹¹·√K·|a||b|` for tf32,
//! `2⁻⁸·√K·|a||b|` for bf16. Cost: `2·batch·M·N·K` FLOPs, one read of A and B per 128-wide tile of
//! the other side and one write of C (and of the pre-activation when kept).
//!
//! Two kernels per precision, which agree bit for bit: `matmul_tc_pipe_*` keeps three k-tiles in
//! flight with cp.async (operands copied to shared memory as f32, rounded per fragment), taken
//! whenever each operand's contiguous axis is a multiple of 4 and both start 16-byte aligned
//! (the mapper's and CLIP's shapes); `matmul_tc_*` stages through registers into one shared
//! buffer and takes any shape.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::elementwise::Unary;
use super::matmul::Gemm;
use super::precision::Precision;
use crate::error::{Error, Result};
use crate::tensor::Gpu;

/// Block tile of the tensor-core kernels (rows of C, columns of C).
const TILE: usize = 128;

/// k-tiles in flight in the pipelined kernels (`PIPE_STAGES` in kernels/matmul.cu).
const PIPE_STAGES: usize = 3;
/// k per tile (`TC_BK`).
const TILE_K: usize = 32;

/// The kernel for a precision; `None` for f32 (the SIMT tile).
pub(crate) fn kernel(p: Precision) -> Option<&'static str> {
    match p {
        Precision::F32 => None,
        Precision::Tf32 => Some("matmul_tc_tf32"),
        Precision::Bf16 => Some("matmul_tc_bf16"),
    }
}

/// The cp.async-pipelined twin of [`kernel`]'s choice and its dynamic shared memory in bytes:
/// `PIPE_STAGES` tiles of A and of B, each `max(128 × LDK, 32 × LDR)` floats with the kernel's
/// padded strides (`PipeTf32`, `PipeBf16`).
fn pipelined_kernel(name: &str) -> Option<(&'static str, usize)> {
    let (kernel, ldk, ldr) = match name {
        "matmul_tc_tf32" => ("matmul_tc_pipe_tf32", TILE_K + 4, TILE + 8),
        "matmul_tc_bf16" => ("matmul_tc_pipe_bf16", TILE_K + 8, TILE + 4),
        _ => return None,
    };
    let stage = (TILE * ldk).max(TILE_K * ldr);
    Some((kernel, PIPE_STAGES * 2 * stage * std::mem::size_of::<f32>()))
}

thread_local! {
    /// Set by `register_staged`: this thread's products take the register-staged kernels.
    static REGISTER_STAGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's tensor-core products and convolutions on the register-staged
/// kernels even where the pipelined ones could run: the bench times both variants on the same
/// shapes (the two give the same bits, so only their speed differs).
pub fn register_staged<R>(f: impl FnOnce() -> R) -> R {
    let before = REGISTER_STAGED.with(|c| c.replace(true));
    let out = f();
    REGISTER_STAGED.with(|c| c.set(before));
    out
}

/// Whether this thread is inside `register_staged`.
pub(crate) fn register_staged_requested() -> bool {
    REGISTER_STAGED.with(|c| c.get())
}

/// Whether the pipelined kernel can read `g`'s operands: its 16-byte copies need each operand's
/// contiguous axis to be a multiple of 4 floats (K for a k-contiguous one, M or N otherwise) and
/// both buffers to start 16-byte aligned (whole allocations do; a view with an offset may not).
pub(crate) fn pipelinable(gpu: &Gpu, a: &CudaSlice<f32>, b: &CudaSlice<f32>, g: &Gemm) -> bool {
    use cudarc::driver::DevicePtr;
    let a_contiguous = if g.trans_a { g.m } else { g.k };
    let b_contiguous = if g.trans_b { g.k } else { g.n };
    let aligned = |s: &CudaSlice<f32>| s.device_ptr(&gpu.stream).0 % 16 == 0;
    a_contiguous % 4 == 0 && b_contiguous % 4 == 0 && aligned(a) && aligned(b)
}

/// `C = act(op(A)·op(B) + bias)` on the tensor cores for an already checked `g`; `a` and `b`
/// hold `g`'s operands (stride 0 for a broadcast one), `bias` N values. Returns C and, when
/// `keep_pre`, the pre-activation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    gpu: &Gpu,
    name: &'static str,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    bias: Option<&CudaSlice<f32>>,
    act: Option<Unary>,
    keep_pre: bool,
    g: &Gemm,
) -> Result<(CudaSlice<f32>, Option<CudaSlice<f32>>)> {
    let fits = |v: usize| v < 1 << 30;
    if !(fits(g.m) && fits(g.n) && fits(g.k) && fits(g.batch)) || g.m.div_ceil(TILE) > 65535 {
        return Err(Error::shape(
            name,
            format!("{g:?} is too large for the CUDA kernel (sizes < 2³⁰, M ≤ 65535·{TILE})"),
        ));
    }
    // The pipelined kernel when the operands allow it; the register-staged one otherwise.
    let (name, smem) = match pipelined_kernel(name) {
        Some(pipe) if !register_staged_requested() && pipelinable(gpu, a, b, g) => pipe,
        _ => (name, 0),
    };
    launch(gpu, name, smem, a, b, bias, act, keep_pre, g)
}

/// One launch of the tensor-core kernel `name` with `smem` bytes of dynamic shared memory (0
/// for the register-staged kernels); `gemm`'s contract.
#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &Gpu,
    name: &'static str,
    smem: usize,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    bias: Option<&CudaSlice<f32>>,
    act: Option<Unary>,
    keep_pre: bool,
    g: &Gemm,
) -> Result<(CudaSlice<f32>, Option<CudaSlice<f32>>)> {
    let len = g.batch * g.m * g.n;
    let mut c = gpu.alloc::<f32>(len)?;
    let mut pre = if keep_pre {
        Some(gpu.alloc::<f32>(len)?)
    } else {
        None
    };
    if len == 0 {
        return Ok((c, pre));
    }
    let cfg = LaunchConfig {
        grid_dim: (
            g.n.div_ceil(TILE) as u32,
            g.m.div_ceil(TILE) as u32,
            g.batch.min(65535) as u32,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let (batch, m, n, k) = (g.batch as i32, g.m as i32, g.n as i32, g.k as i32);
    let stride = |items: usize, len: usize| if items == 1 { 0u64 } else { len as u64 };
    let (stride_a, stride_b) = (stride(g.batch_a, g.m * g.k), stride(g.batch_b, g.k * g.n));
    let (ta, tb) = (g.trans_a as i32, g.trans_b as i32);
    let (code, alpha, beta) = act.map_or((-1, 0.0, 0.0), Unary::code);
    let null = 0u64; // a null device pointer: no bias / no pre-activation output
    let f = if smem > 0 {
        gpu.function_with_shared_memory("matmul", name, smem as u32)?
    } else {
        gpu.function("matmul", name)?
    };
    let mut lb = gpu.stream.launch_builder(&f);
    lb.arg(a).arg(b);
    match bias {
        Some(s) => lb.arg(s),
        None => lb.arg(&null),
    };
    lb.arg(&mut c);
    match pre.as_mut() {
        Some(p) => lb.arg(p),
        None => lb.arg(&null),
    };
    lb.arg(&batch)
        .arg(&m)
        .arg(&n)
        .arg(&k)
        .arg(&stride_a)
        .arg(&stride_b)
        .arg(&ta)
        .arg(&tb)
        .arg(&code)
        .arg(&alpha)
        .arg(&beta);
    // SAFETY: A holds batch_a·M·K and B batch_b·K·N f32 (checked by the caller; stride 0 when
    // broadcast), bias N values or null; the kernel reads only m < M, n < N, k < K and writes
    // C[z, m, n] (and pre, allocated alike, when non-null) for z < batch, m < M, n < N. The
    // pipelined kernels' 16-byte copies start at multiples of 4 floats of 16-byte aligned
    // buffers (`pipelinable`) and lie inside them (partial copies read 0 bytes), and their
    // shared memory is the `smem` bytes this launch gives and opted into.
    unsafe { lb.launch(cfg) }.map_err(|e| Error::cuda(name, e))?;
    Ok((c, pre))
}

#[cfg(test)]
mod tests {
    use super::super::matmul::{cpu, linear_act, matmul_raw};
    use super::*;
    use crate::autograd::Tape;
    use crate::ops::precision;
    use crate::tensor::{Device, Tensor};
    use crate::testing::{assert_close, gpu, random_vec};

    const TENSOR_CORE: [Precision; 2] = [Precision::Tf32, Precision::Bf16];

    fn gemm_of(
        batch_a: usize,
        batch_b: usize,
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
    ) -> (Gemm, Vec<usize>, Vec<usize>) {
        let a = if ta { [batch_a, k, m] } else { [batch_a, m, k] };
        let b = if tb { [batch_b, n, k] } else { [batch_b, k, n] };
        (Gemm::new(&a, &b, ta, tb).unwrap(), a.to_vec(), b.to_vec())
    }

    /// The twin: f64 products of the rounded operands (what the tensor cores multiply exactly).
    fn twin(p: Precision, a: &[f32], b: &[f32], g: &Gemm) -> Vec<f32> {
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        let c = cpu::matmul(
            &widen(precision::round_operand(p, a)),
            &widen(precision::round_operand(p, b)),
            g,
        )
        .unwrap();
        c.into_iter().map(|x| x as f32).collect()
    }

    #[test]
    fn tensor_core_matmul_matches_the_rounded_twin_for_every_flag_and_batch() {
        let Some(dev) = gpu() else { return };
        // Not multiples of the 128×128×32 tile; K = 0 gives C = 0.
        const SIZES: [usize; 4] = [1, 7, 33, 130];
        for p in TENSOR_CORE {
            let mut rounded_differs = false;
            for (i, &m) in SIZES.iter().enumerate() {
                for (j, &n) in SIZES.iter().enumerate() {
                    let k = [0, 9, 40, 131][(i + 2 * j + 1) % 4];
                    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                        for (ba, bb) in [(1, 1), (2, 1), (1, 2)] {
                            let (g, sa, sb) = gemm_of(ba, bb, m, n, k, ta, tb);
                            let seed = (m * 1000 + n * 10 + k) as u64;
                            let av = random_vec(sa.iter().product(), seed);
                            let bv = random_vec(sb.iter().product(), seed + 1);
                            let a = Tensor::from_vec(av.clone(), &sa, &dev).unwrap();
                            let b = Tensor::from_vec(bv.clone(), &sb, &dev).unwrap();
                            let c = precision::with(p, || matmul_raw(&a, &b, ta, tb)).unwrap();
                            let got = c.to_vec_f32().unwrap();
                            let what = format!("{p} {g:?}");
                            // Exact products, f32 sums in another order: only the accumulation differs.
                            assert_close(
                                &got,
                                &twin(p, &av, &bv, &g),
                                1e-5,
                                2e-6 * (k as f32).sqrt(),
                                &what,
                            );
                            let exact = twin(Precision::F32, &av, &bv, &g);
                            rounded_differs |=
                                got.iter().zip(&exact).any(|(x, y)| (x - y).abs() > 1e-4);
                        }
                    }
                }
            }
            assert!(rounded_differs, "{p}: the kernel's products equal the unrounded ones, so it did not round its operands");
        }
    }

    #[test]
    fn pipelined_kernels_equal_the_register_staged_ones_bit_for_bit() {
        let Some(dev) = gpu() else { return };
        let Device::Cuda(g_dev) = &dev else {
            unreachable!("testing::gpu() gives a CUDA device")
        };
        let act = Some(Unary::LeakyRelu {
            slope: 0.2,
            gain: 2f32.sqrt(),
        });
        // Multiples of 4 (the copies' width), not of the 128×128×32 tile; K = 4 is one partial
        // k-tile, K = 0 none, K = 100 four (more than the 3 stages in flight).
        let shapes = [(132, 68, 100), (4, 136, 36), (260, 12, 4), (8, 8, 0)];
        for p in TENSOR_CORE {
            let staged = kernel(p).unwrap();
            let (piped, smem) = pipelined_kernel(staged).unwrap();
            for (m, n, k) in shapes {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    for (ba, bb) in [(1, 1), (3, 1), (1, 2)] {
                        let (g, sa, sb) = gemm_of(ba, bb, m, n, k, ta, tb);
                        let seed = (m * 1000 + n * 10 + k) as u64;
                        let (av, bv) = (
                            random_vec(sa.iter().product(), seed),
                            random_vec(sb.iter().product(), seed + 1),
                        );
                        let bias_v = random_vec(n, seed + 2);
                        let up = |v: &[f32]| g_dev.stream.clone_htod(v).unwrap();
                        let (a, b, bias) = (up(&av), up(&bv), up(&bias_v));
                        assert!(pipelinable(g_dev, &a, &b, &g), "{g:?}");
                        let run = |name, smem| {
                            let (c, pre) =
                                launch(g_dev, name, smem, &a, &b, Some(&bias), act, true, &g)
                                    .unwrap();
                            let pre = pre.expect("keep_pre was asked");
                            let down = |s: &CudaSlice<f32>| g_dev.stream.clone_dtoh(s).unwrap();
                            (
                                down(&c)[..g.batch * m * n].to_vec(),
                                down(&pre)[..g.batch * m * n].to_vec(),
                            )
                        };
                        let what = format!("{p} {g:?}");
                        let (c_pipe, pre_pipe) = run(piped, smem);
                        let (c_staged, pre_staged) = run(staged, 0);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&pre_pipe), bits(&pre_staged), "pre-activation, {what}");
                        assert_eq!(bits(&c_pipe), bits(&c_staged), "output, {what}");
                        // And both are the product of the rounded operands (plus the bias).
                        let mut want = twin(p, &av, &bv, &g);
                        for (i, w) in want.iter_mut().enumerate() {
                            *w += bias_v[i % n];
                        }
                        assert_close(
                            &pre_pipe,
                            &want,
                            1e-5,
                            2e-6 * (k as f32).sqrt() + 1e-6,
                            &what,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pipelined_kernels_are_chosen_only_for_operands_they_can_copy() {
        let Some(dev) = gpu() else { return };
        let Device::Cuda(g_dev) = &dev else {
            unreachable!("testing::gpu() gives a CUDA device")
        };
        let buf = |len: usize| g_dev.stream.clone_htod(&vec![0f32; len]).unwrap();
        // (m, n, k, trans_a, trans_b, pipelinable): the contiguous axis of A is K (or M when
        // transposed), of B N (or K when transposed).
        for (m, n, k, ta, tb, ok) in [
            (5, 8, 12, false, false, true),
            (5, 8, 12, true, false, false),
            (8, 5, 12, false, false, false),
            (8, 5, 12, false, true, true),
            (8, 8, 10, false, true, false),
            (8, 8, 10, true, false, true),
        ] {
            let (g, sa, sb) = gemm_of(1, 1, m, n, k, ta, tb);
            let (a, b) = (buf(sa.iter().product()), buf(sb.iter().product()));
            assert_eq!(pipelinable(g_dev, &a, &b, &g), ok, "{g:?}");
        }
    }

    #[test]
    fn tensor_core_linear_fuses_bias_activation_and_keeps_the_pre_activation() {
        let Some(dev) = gpu() else { return };
        let (rows, k, n) = (37, 45, 70);
        let (xv, wv, bv) = (
            random_vec(rows * k, 1),
            random_vec(n * k, 2),
            random_vec(n, 3),
        );
        let g = Gemm::new(&[rows, k], &[n, k], false, true).unwrap();
        let act = Unary::LeakyRelu {
            slope: 0.2,
            gain: 2f32.sqrt(),
        };
        for p in TENSOR_CORE {
            let (pre_want, y_want) = {
                let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
                let (pre, y) = cpu::linear_act(
                    &widen(precision::round_operand(p, &xv)),
                    &widen(precision::round_operand(p, &wv)),
                    Some(&widen(bv.clone())),
                    Some(act),
                    &g,
                )
                .unwrap();
                let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
                (narrow(pre), narrow(y))
            };
            let x = Tensor::from_vec(xv.clone(), &[rows, k], &dev).unwrap();
            let w = Tensor::from_vec(wv.clone(), &[n, k], &dev).unwrap();
            let b = Tensor::from_vec(bv.clone(), &[n], &dev).unwrap();
            // A watched input makes linear_act keep the pre-activation for the backward.
            let mut tape = Tape::new();
            tape.watch(&w);
            let y =
                precision::with(p, || linear_act(&mut tape, &x, &w, Some(&b), Some(act))).unwrap();
            assert_close(
                &y.to_vec_f32().unwrap(),
                &y_want,
                1e-5,
                1e-5,
                &format!("{p} y"),
            );
            let (_, pre) = precision::with(p, || {
                super::super::matmul::linear_act_raw_with(
                    super::super::matmul::Bf16Linear::Simt,
                    &x,
                    &w,
                    Some(&b),
                    Some(act),
                    &g,
                    true,
                )
            })
            .unwrap();
            let pre = pre.expect("the pre-activation was kept");
            assert_close(
                &pre.to_vec_f32().unwrap(),
                &pre_want,
                1e-5,
                1e-5,
                &format!("{p} pre"),
            );
        }
    }

    #[test]
    fn tensor_core_backward_products_match_f32_within_the_rounding() {
        let Some(dev) = gpu() else { return };
        // dX = dY·W and dW = dYᵀ·X run through the same kernel with other flags.
        let (rows, k, n) = (50, 67, 29);
        let (xv, wv) = (random_vec(rows * k, 4), random_vec(n * k, 5));
        let grads = |p: Precision, d: &Device| {
            precision::with(p, || {
                let x = Tensor::from_vec(xv.clone(), &[rows, k], d).unwrap();
                let w = Tensor::from_vec(wv.clone(), &[n, k], d).unwrap();
                let mut tape = Tape::new();
                tape.watch(&x);
                tape.watch(&w);
                let y = linear_act(&mut tape, &x, &w, None, Some(Unary::Sigmoid)).unwrap();
                let loss = crate::ops::reduce::sum_all(&mut tape, &y).unwrap();
                let gr = tape.backward(&loss).unwrap();
                let get = |t: &Tensor| gr.get(t).unwrap().to_vec_f32().unwrap();
                (get(&x), get(&w))
            })
        };
        let (dx32, dw32) = grads(Precision::F32, &Device::Cpu);
        for (p, rel) in [
            (Precision::Tf32, 2f32.powi(-9)),
            (Precision::Bf16, 2f32.powi(-6)),
        ] {
            let (dx, dw) = grads(p, &dev);
            let scale = |k: usize| rel * (k as f32).sqrt();
            assert_close(&dx, &dx32, rel, scale(n), &format!("{p} dX"));
            assert_close(&dw, &dw32, rel, scale(rows), &format!("{p} dW"));
        }
    }
}
