//! The convolutions' tensor-core builds (`conv1d_*_tc_*`, `conv2d_*_tc_*`: the implicit GEMMs of
//! `kernels/conv1d.cu` and `kernels/conv2d.cu`), which run when `ops::precision` is tf32 or bf16.
//!
//! Each pass comes in two tensor-core builds that agree bit for bit (up to the sign of an exact
//! zero): `*_tc_pipe_*` keeps three 32-deep slabs in flight with 4-byte cp.async copies, one per
//! gathered element (`kernels/gemm_tile_tc_pipe.cuh`), and is taken by default; `*_tc_*` stages
//! the next slab through registers. The pipelined dW of conv2d takes no scales (the modulated
//! convolution's dW keeps the register-staged build), and `matmul_tc::register_staged` makes
//! every pass take the register-staged build, so the bench can time both on the same shapes.
//!
//! Their twin (the tests below) is the CPU convolution of the operands rounded as the tensor
//! cores see them: the products are then exact on both sides and only the f32 accumulation
//! order differs.

use cudarc::driver::LaunchConfig;

use super::precision::{self, Precision};
use crate::error::Result;
use crate::tensor::Gpu;

/// Slabs in flight in the pipelined tile (`tcp::STAGES`).
const STAGES: usize = 3;

/// Dynamic shared memory of a pipelined build: `STAGES × (2·64·LD + 32)` floats, LD = 36 (tf32)
/// or 40 (bf16), as `gemm_tile_tc_pipe` lays out A, B and B's k-scales.
fn pipe_smem(p: Precision) -> u32 {
    let ld = if p == Precision::Bf16 { 40 } else { 36 };
    (STAGES * (2 * 64 * ld + 32) * std::mem::size_of::<f32>()) as u32
}

/// One implicit-GEMM pass's builds: `[f32, tc_tf32, tc_bf16, tc_pipe_tf32, tc_pipe_bf16]`.
pub(crate) type Builds = [&'static str; 5];

/// The build of `builds` this thread's precision runs, and `grid` with the shared memory it
/// needs: the pipelined one at tf32/bf16 unless `!pipelinable` or `register_staged` says
/// otherwise (its dynamic shared memory is opted into here, above the default 48 KiB).
pub(crate) fn pick(
    gpu: &Gpu,
    family: &'static str,
    builds: Builds,
    pipelinable: bool,
    grid: LaunchConfig,
) -> Result<(&'static str, LaunchConfig)> {
    let p = precision::current();
    if p == Precision::F32 || !pipelinable || super::matmul_tc::register_staged_requested() {
        return Ok((precision::pick([builds[0], builds[1], builds[2]]), grid));
    }
    let name = if p == Precision::Tf32 {
        builds[3]
    } else {
        builds[4]
    };
    let smem = pipe_smem(p);
    gpu.function_with_shared_memory(family, name, smem)?;
    Ok((
        name,
        LaunchConfig {
            shared_mem_bytes: smem,
            ..grid
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::conv1d::{self, Conv1d};
    use super::super::conv2d::{self, Conv2d, Scales};
    use super::super::precision::{self, Precision};
    use crate::tensor::Tensor;
    use crate::testing::{assert_close, gpu, random_vec};

    const TENSOR_CORE: [Precision; 2] = [Precision::Tf32, Precision::Bf16];

    fn rounded(p: Precision, v: &[f32]) -> Vec<f64> {
        precision::round_operand(p, v)
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn narrow(v: Vec<f64>) -> Vec<f32> {
        v.into_iter().map(|x| x as f32).collect()
    }

    /// The three passes against their twins (dW sums over the batch and pixels: a looser floor).
    fn assert_passes(got: [&[f32]; 3], want: [&[f32]; 3], what: &str) {
        let (names, floors) = (["y", "dx", "dW"], [1e-5, 1e-5, 2e-5]);
        for i in 0..3 {
            let label = format!("{} {what}", names[i]);
            assert_close(got[i], want[i], 1e-5, floors[i], &label);
        }
    }

    #[test]
    fn conv1d_tensor_core_passes_match_the_rounded_twin() {
        let Some(dev) = gpu() else { return };
        // Every GEMM dimension of the three passes crosses the 64-wide tile and the 32-deep slab:
        // forward M = Cout, N = Lout, K = Cin·Ks; dx M = Cin, N = L; dW N = Cin·Ks, K = B·Lout.
        for (b, cin, len, cout, ks, stride, pad) in
            [(3, 17, 70, 67, 3, 1, 1), (2, 1, 131, 65, 4, 2, 1)]
        {
            let d = Conv1d::new(&[b, cin, len], &[cout, cin, ks], stride, pad).unwrap();
            let (xv, wv) = (random_vec(d.x_len(), 1), random_vec(d.w_len(), 2));
            let dyv = random_vec(d.y_len(), 3);
            let t = |v: &[f32], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &dev).unwrap();
            let (x, w, dy) = (
                t(&xv, &[b, cin, len]),
                t(&wv, &[cout, cin, ks]),
                t(&dyv, &d.y_shape()),
            );
            for p in TENSOR_CORE {
                let what = format!("{p} {d:?}");
                let (y, dx, dw) = precision::with(p, || {
                    (
                        conv1d::conv1d_raw(&x, &w, &d).unwrap(),
                        conv1d::conv1d_dx_raw(&dy, &w, &d).unwrap(),
                        conv1d::conv1d_dw_raw(&dy, &x, &d).unwrap(),
                    )
                });
                let (rx, rw, rdy) = (rounded(p, &xv), rounded(p, &wv), rounded(p, &dyv));
                let want_y = narrow(conv1d::cpu::conv1d(&rx, &rw, None, &d).unwrap());
                let want_dx = narrow(conv1d::cpu::conv1d_dx(&rdy, &rw, &d).unwrap());
                let want_dw = narrow(conv1d::cpu::conv1d_dw(&rdy, &rx, &d).unwrap());
                let got_y = y.to_vec_f32().unwrap();
                let (got_dx, got_dw) = (dx.to_vec_f32().unwrap(), dw.to_vec_f32().unwrap());
                assert_passes(
                    [&got_y, &got_dx, &got_dw],
                    [&want_y, &want_dx, &want_dw],
                    &what,
                );
                // The operands were rounded: the result is not the f32 convolution's.
                let exact = conv1d::cpu::conv1d(&xv, &wv, None, &d).unwrap();
                assert!(
                    got_y.iter().zip(&exact).any(|(g, e)| (g - e).abs() > 1e-5),
                    "{what}: equals the unrounded f32 result"
                );
            }
        }
    }

    /// A grouped (2), strided (2) 3×3 conv of 2 × 10 channels to 66 at h × w, padding 1: every
    /// GEMM dimension off the tile.
    fn grouped_strided(h: usize, w: usize) -> Conv2d {
        Conv2d::new(&[2, 10, h, w], &[66, 5, 3, 3], 2, (1, 1), 2).unwrap()
    }

    #[test]
    fn conv2d_tensor_core_passes_match_the_rounded_twin() {
        let Some(dev) = gpu() else { return };
        // Grouped and strided, channel and pixel counts off the tile (forward M = Cout/G = 33,
        // N = OH·OW = 81, K = Cin/G·9 = 45; dW N = 45, K = B·OH·OW = 162).
        let d = grouped_strided(17, 17);
        let (b, cin, h, wd, cout, k, groups) = (d.batch, d.cin, d.h, d.w, d.cout, d.kh, d.groups);
        let (xv, wv) = (random_vec(d.x_len(), 4), random_vec(d.w_len(), 5));
        let dyv = random_vec(d.y_len(), 6);
        let t = |v: &[f32], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &dev).unwrap();
        let (x, w) = (
            t(&xv, &[b, cin, h, wd]),
            t(&wv, &[cout, cin / groups, k, k]),
        );
        let dy = t(&dyv, &[b, cout, d.oh, d.ow]);
        let none = Scales::default();
        for p in TENSOR_CORE {
            let what = format!("{p} {d:?}");
            let (y, dx, dw) = precision::with(p, || {
                (
                    conv2d::conv2d_fwd_raw(&x, &w, none, &d).unwrap(),
                    conv2d::conv2d_dx_raw(&dy, &w, none, &d).unwrap(),
                    conv2d::conv2d_dw_raw(&dy, &x, none, &d).unwrap(),
                )
            });
            let (rx, rw, rdy) = (rounded(p, &xv), rounded(p, &wv), rounded(p, &dyv));
            let want_y = narrow(conv2d::cpu::conv2d(&rx, &rw, &d).unwrap());
            let want_dx = narrow(conv2d::cpu::conv2d_dx(&rdy, &rw, &d).unwrap());
            let want_dw = narrow(conv2d::cpu::conv2d_dw(&rdy, &rx, &d).unwrap());
            let got = [&y, &dx, &dw].map(|t| t.to_vec_f32().unwrap());
            assert_passes(
                [&got[0], &got[1], &got[2]],
                [&want_y, &want_dx, &want_dw],
                &what,
            );
        }
        // f32 keeps the SIMT kernels: the CPU's f32 result within f32 rounding.
        let y32 =
            precision::with(Precision::F32, || conv2d::conv2d_fwd_raw(&x, &w, none, &d)).unwrap();
        let want = conv2d::cpu::conv2d(&xv, &wv, &d).unwrap();
        assert_close(&y32.to_vec_f32().unwrap(), &want, 1e-5, 1e-5, "f32");
    }

    /// Equal values, treating the two zeros as one (the pipelined tile multiplies a padding zero
    /// by its k-scale, which may make it −0 where the register-staged one keeps +0).
    fn assert_same_values(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let differ = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(differ.is_none(), "{what}: element {differ:?} differs");
    }

    #[test]
    fn pipelined_builds_are_picked_at_tensor_core_precisions_only() {
        let Some(dev) = gpu() else { return };
        let crate::tensor::Device::Cuda(g) = &dev else {
            unreachable!("testing::gpu gives a CUDA device")
        };
        let builds = ["f", "t", "b", "pt", "pb"];
        let grid = crate::ops::gemm_tile_grid(70, 70, 1);
        let name = |p: Precision, ok: bool| {
            precision::with(p, || super::pick(g, "conv1d", builds, ok, grid).unwrap())
        };
        // Only the real kernels' attributes can be set: pick with real names where it opts in.
        let real = [
            "conv1d_fwd_f32",
            "conv1d_fwd_tc_tf32",
            "conv1d_fwd_tc_bf16",
            "conv1d_fwd_tc_pipe_tf32",
            "conv1d_fwd_tc_pipe_bf16",
        ];
        for (p, want, smem) in [(Precision::Tf32, 3, 55_680), (Precision::Bf16, 4, 61_824)] {
            let (n, cfg) =
                precision::with(p, || super::pick(g, "conv1d", real, true, grid).unwrap());
            assert_eq!((n, cfg.shared_mem_bytes), (real[want], smem), "{p}");
            let staged = crate::ops::matmul_tc::register_staged(|| {
                precision::with(p, || super::pick(g, "conv1d", real, true, grid).unwrap())
            });
            assert_eq!((staged.0, staged.1.shared_mem_bytes), (real[want - 2], 0));
            assert_eq!(name(p, false).0, builds[want - 2], "{p} not pipelinable");
        }
        assert_eq!(name(Precision::F32, true).0, "f");
    }

    #[test]
    fn pipelined_builds_equal_the_register_staged_ones() {
        let Some(dev) = gpu() else { return };
        let t = |v: &[f32], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &dev).unwrap();
        let values = |x: Tensor| x.to_vec_f32().unwrap();
        // conv1d: the mapper's stem (k4 s2) and a k3 p1 residual conv, off every tile edge.
        for (b, cin, len, cout, ks, stride, pad) in
            [(3, 17, 70, 67, 3, 1, 1), (2, 5, 131, 65, 4, 2, 1)]
        {
            let d = Conv1d::new(&[b, cin, len], &[cout, cin, ks], stride, pad).unwrap();
            let x = t(&random_vec(d.x_len(), 21), &[b, cin, len]);
            let w = t(&random_vec(d.w_len(), 22), &[cout, cin, ks]);
            let dy = t(&random_vec(d.y_len(), 23), &d.y_shape());
            let passes = || {
                [
                    values(conv1d::conv1d_raw(&x, &w, &d).unwrap()),
                    values(conv1d::conv1d_dx_raw(&dy, &w, &d).unwrap()),
                    values(conv1d::conv1d_dw_raw(&dy, &x, &d).unwrap()),
                ]
            };
            for p in TENSOR_CORE {
                let piped = precision::with(p, passes);
                let staged = crate::ops::matmul_tc::register_staged(|| precision::with(p, passes));
                for (i, pass) in ["y", "dx", "dW"].iter().enumerate() {
                    assert_same_values(&piped[i], &staged[i], &format!("{pass} {p} {d:?}"));
                }
            }
        }
        // conv2d, grouped and strided, without and with the modulated convolution's scales
        // (negative ones too: the k-scale path of the forward and dx).
        let d = grouped_strided(17, 15);
        let (b, cin, h, wd, cout, k, groups) = (d.batch, d.cin, d.h, d.w, d.cout, d.kh, d.groups);
        let x = t(&random_vec(d.x_len(), 24), &[b, cin, h, wd]);
        let w = t(&random_vec(d.w_len(), 25), &[cout, cin / groups, k, k]);
        let dy = t(&random_vec(d.y_len(), 26), &[b, cout, d.oh, d.ow]);
        let (is, os) = (
            t(&random_vec(b * cin, 27), &[b, cin]),
            t(&random_vec(b * cout, 28), &[b, cout]),
        );
        let scaled = Scales {
            input: Some(&is),
            output: Some(&os),
        };
        for sc in [Scales::default(), scaled] {
            let passes = || {
                [
                    values(conv2d::conv2d_fwd_raw(&x, &w, sc, &d).unwrap()),
                    values(conv2d::conv2d_dx_raw(&dy, &w, sc, &d).unwrap()),
                    values(conv2d::conv2d_dw_raw(&dy, &x, sc, &d).unwrap()),
                ]
            };
            for p in TENSOR_CORE {
                let piped = precision::with(p, passes);
                let staged = crate::ops::matmul_tc::register_staged(|| precision::with(p, passes));
                for (i, pass) in ["y", "dx", "dW"].iter().enumerate() {
                    let what = format!("{pass} {p} scaled {} {d:?}", sc.input.is_some());
                    assert_same_values(&piped[i], &staged[i], &what);
                }
            }
        }
    }
}
