//! Parity of the convolutions' tensor-core builds (`conv1d_*_tc_*`, `conv2d_*_tc_*`: the
//! implicit GEMMs of `kernels/conv1d.cu` and `kernels/conv2d.cu` instantiated on
//! `gemm_tile_tc.cuh`), which run when `ops::precision` is tf32 or bf16. Their twin is the CPU
//! convolution of the operands rounded as the tensor cores see them: the products are then
//! exact on both sides and only the f32 accumulation order differs.

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

    #[test]
    fn conv2d_tensor_core_passes_match_the_rounded_twin() {
        let Some(dev) = gpu() else { return };
        // Grouped and strided, channel and pixel counts off the tile (forward M = Cout/G = 33,
        // N = OH·OW = 81, K = Cin/G·9 = 45; dW N = 45, K = B·OH·OW = 162).
        let (b, cin, h, wd, cout, k, stride, pad, groups) = (2, 10, 17, 17, 66, 3, 2, 1, 2);
        let d = Conv2d::new(
            &[b, cin, h, wd],
            &[cout, cin / groups, k, k],
            stride,
            (pad, pad),
            groups,
        )
        .unwrap();
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
}
