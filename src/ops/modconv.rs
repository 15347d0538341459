//! StyleGAN2's modulated convolution with demodulation fused (`modulated_conv2d` in the reference's
//! `training/networks.py`), f32.
//!
//! For x `[B, Cin, H, W]`, weight `[Cout, Cin, K, K]` and styles s `[B, Cin]`, the per-sample weight
//! is `w_b[co, ci, k] = w[co, ci, k]·s[b, ci]·d[b, co]` with the demodulation coefficients
//! `d[b, co] = rsqrt(Σ_{ci, k} (w[co, ci, k]·s[b, ci])² + 1e-8)` (d = 1 without demodulation), and
//! `y_b = T(x_b; w_b)` where T is either the stride-1 convolution with padding p (`Same`) or the
//! generator's upsampling `conv_transpose2d(x, wᵀ, stride 2, pad 0)` (`Up2`; wᵀ swaps w's first two
//! axes, as `conv2d_resample` does; the layer filters the result with `upfirdn2d` afterwards).
//!
//! The kernel never writes a per-sample weight: since `w_b = d ⊙ w ⊙ s`, `y = d ⊙ T(s ⊙ x; w)`, and
//! both scales are applied inside the implicit-GEMM convolution's loaders and store
//! (`ops::conv2d`'s per-channel scales); `d` itself comes from one small kernel (B·Cout warps).
//!
//! Backward, with `u = T(s ⊙ x; w)` (so y = d ⊙ u) and `g = Tᵀ(d ⊙ dy; w)`:
//! - `dx = s ⊙ g`
//! - `ds[b, ci] = Σ_q x[b, ci, q]·g[b, ci, q] + s[b, ci]·Σ_co E[b, co]·W2[co, ci]`
//! - `dw = dW_T(d ⊙ dy, s ⊙ x) + w[co, ci, k]·Σ_b E[b, co]·s[b, ci]²`
//!
//! where `W2[co, ci] = Σ_k w[co, ci, k]²` and `E = −d²·Σ_p dy ⊙ y` (from ∂d/∂s and ∂d/∂w: the
//! demodulation's share, absent without demodulation). Every term is one convolution pass or a
//! small reduction: `kernels/modconv.cu` holds the three small kernels, `kernels/conv2d.cu` the rest.
//!
//! Cost: the convolution's `2·B·Cout·Cin·K²·OH·OW` FLOPs per pass, plus `B·Cout·Cin·K²` for d.

use super::same_device;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::channels::{broadcast_mul_raw, rowdot_raw};
use crate::ops::conv2d::{conv2d_dw_raw, conv2d_dx_raw, conv2d_fwd_epilogue_raw, conv2d_fwd_raw};
use crate::ops::conv2d::{Conv2d, Scales};
use crate::ops::conv_epilogue::BiasAct;
use crate::ops::transpose::transpose_raw;
use crate::tensor::{launch, launch_1d, Device, Storage, Tensor};

/// Which convolution the modulated weight drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// Stride 1 with this zero padding (the synthesis conv1 and ToRGB).
    Same { padding: usize },
    /// The stride-2 transposed convolution with the transposed weight (conv0 of each block);
    /// the output is `2H + K − 2` wide before the layer's filter.
    Up2,
}

/// The checked sizes of one modulated convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModConv {
    batch: usize,
    cin: usize,
    cout: usize,
    kk: usize,
    /// The geometry T runs on (for Up2, the convolution whose adjoint it is).
    conv: Conv2d,
    resample: Resample,
}

impl ModConv {
    fn new(x: &[usize], w: &[usize], s: &[usize], resample: Resample) -> Result<ModConv> {
        let err = |d: String| Err(Error::shape("modulated_conv2d", d));
        let (&[batch, cin, _, _], &[cout, wcin, kh, kw]) = (x, w) else {
            return err(format!(
                "x must be [B, Cin, H, W] and weight [Cout, Cin, K, K], got {x:?} and {w:?}"
            ));
        };
        if wcin != cin || s != [batch, cin] {
            return err(format!(
                "x {x:?}, weight {w:?} and styles {s:?} disagree (want styles [{batch}, {cin}])"
            ));
        }
        let conv = match resample {
            Resample::Same { padding } => Conv2d::new(x, w, 1, (padding, padding), 1)?,
            Resample::Up2 => Conv2d::transposed(x, &[cin, cout, kh, kw], 2, (0, 0), 1)?,
        };
        Ok(ModConv {
            batch,
            cin,
            cout,
            kk: kh * kw,
            conv,
            resample,
        })
    }

    fn y_shape(&self) -> [usize; 4] {
        match self.resample {
            Resample::Same { .. } => self.conv.y_shape(),
            Resample::Up2 => self.conv.x_shape(),
        }
    }
}

/// The CPU twins, generic so gradient checks run them in f64.
pub mod cpu {
    use super::*;
    use crate::ops::conv2d::cpu as conv;
    use crate::ops::Real;

    /// `v[b, c, i]·s[b, c]` for v `[B, C, inner]`.
    fn scale<T: Real>(v: &[T], s: &[T]) -> Vec<T> {
        let inner = v.len() / s.len().max(1);
        v.iter()
            .enumerate()
            .map(|(i, &x)| x * s[i / inner])
            .collect()
    }

    /// `w` `[A, B, KK]` with its first two axes swapped.
    fn transpose01<T: Real>(w: &[T], a: usize, b: usize, kk: usize) -> Vec<T> {
        let mut t = vec![T::zero(); w.len()];
        for i in 0..a {
            for j in 0..b {
                for k in 0..kk {
                    t[(j * a + i) * kk + k] = w[(i * b + j) * kk + k];
                }
            }
        }
        t
    }

    /// `d[b, co] = rsqrt(Σ_{ci, k} (w·s)² + 1e-8)`.
    pub fn demod<T: Real>(
        w: &[T],
        s: &[T],
        batch: usize,
        cout: usize,
        cin: usize,
        kk: usize,
    ) -> Vec<T> {
        let mut d = Vec::with_capacity(batch * cout);
        for b in 0..batch {
            for co in 0..cout {
                let mut acc = T::zero();
                for ci in 0..cin {
                    for k in 0..kk {
                        let v = w[(co * cin + ci) * kk + k] * s[b * cin + ci];
                        acc = acc + v * v;
                    }
                }
                d.push(T::one() / (acc + T::c(1e-8)).sqrt());
            }
        }
        d
    }

    /// The oracle: per-sample weights `w_b = w·s·d`, then T per sample (the reference's fused path).
    pub fn modulated_conv2d<T: Real>(
        x: &[T],
        w: &[T],
        s: &[T],
        demodulate: bool,
        x_shape: &[usize],
        w_shape: &[usize],
        resample: Resample,
    ) -> Result<Vec<T>> {
        let m = ModConv::new(x_shape, w_shape, &[x_shape[0], x_shape[1]], resample)?;
        let (b, cin, cout, kk) = (m.batch, m.cin, m.cout, m.kk);
        let d = if demodulate {
            demod(w, s, b, cout, cin, kk)
        } else {
            vec![T::one(); b * cout]
        };
        let one = |c: Conv2d| Conv2d { batch: 1, ..c };
        let xlen = x.len() / b.max(1);
        let mut y = Vec::new();
        for bi in 0..b {
            let wb: Vec<T> = (0..w.len())
                .map(|i| {
                    let (co, ci) = (i / (cin * kk), i / kk % cin);
                    w[i] * s[bi * cin + ci] * d[bi * cout + co]
                })
                .collect();
            let xb = &x[bi * xlen..][..xlen];
            y.extend(match resample {
                Resample::Same { .. } => conv::conv2d(xb, &wb, &one(m.conv))?,
                Resample::Up2 => {
                    conv::conv2d_dx(xb, &transpose01(&wb, cout, cin, kk), &one(m.conv))?
                }
            });
        }
        Ok(y)
    }

    /// `(dx, dw, ds)` by the decomposition in the module doc (what the device path computes).
    #[allow(clippy::too_many_arguments)]
    pub fn modulated_conv2d_backward<T: Real>(
        x: &[T],
        w: &[T],
        s: &[T],
        dy: &[T],
        demodulate: bool,
        x_shape: &[usize],
        w_shape: &[usize],
        resample: Resample,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let m = ModConv::new(x_shape, w_shape, &[x_shape[0], x_shape[1]], resample)?;
        let (b, cin, cout, kk, c) = (m.batch, m.cin, m.cout, m.kk, m.conv);
        let d = if demodulate {
            demod(w, s, b, cout, cin, kk)
        } else {
            vec![T::one(); b * cout]
        };
        let xs = scale(x, s);
        let dyd = scale(dy, &d);
        let (g, mut dw) = match resample {
            Resample::Same { .. } => (
                conv::conv2d_dx(&dyd, w, &c)?,
                conv::conv2d_dw(&dyd, &xs, &c)?,
            ),
            Resample::Up2 => {
                let wt = transpose01(w, cout, cin, kk);
                let dwt = conv::conv2d_dw(&xs, &dyd, &c)?;
                (
                    conv::conv2d(&dyd, &wt, &c)?,
                    transpose01(&dwt, cin, cout, kk),
                )
            }
        };
        let dx = scale(&g, s);
        let q = x.len() / (b * cin).max(1);
        let mut ds: Vec<T> = (0..b * cin)
            .map(|r| (0..q).fold(T::zero(), |a, j| a + x[r * q + j] * g[r * q + j]))
            .collect();
        if demodulate {
            let y = scale(
                &modulated_conv2d(x, w, s, false, x_shape, w_shape, resample)?,
                &d,
            );
            let p = y.len() / (b * cout).max(1);
            let e: Vec<T> = (0..b * cout)
                .map(|r| {
                    let pr = (0..p).fold(T::zero(), |a, j| a + dy[r * p + j] * y[r * p + j]);
                    -pr * d[r] * d[r]
                })
                .collect();
            for bi in 0..b {
                for ci in 0..cin {
                    let mut acc = T::zero();
                    for co in 0..cout {
                        let w2 = (0..kk).fold(T::zero(), |a, k| {
                            let v = w[(co * cin + ci) * kk + k];
                            a + v * v
                        });
                        acc = acc + e[bi * cout + co] * w2;
                    }
                    ds[bi * cin + ci] = ds[bi * cin + ci] + s[bi * cin + ci] * acc;
                }
            }
            for co in 0..cout {
                for ci in 0..cin {
                    let coef = (0..b).fold(T::zero(), |a, bi| {
                        let sv = s[bi * cin + ci];
                        a + e[bi * cout + co] * sv * sv
                    });
                    for k in 0..kk {
                        let i = (co * cin + ci) * kk + k;
                        dw[i] = dw[i] + w[i] * coef;
                    }
                }
            }
        }
        Ok((dx, dw, ds))
    }
}

fn kernel_ints(m: &ModConv) -> Result<[i32; 4]> {
    let v = [m.batch, m.cout, m.cin, m.kk];
    if m.cout * m.cin * m.kk >= 1 << 31 || m.batch * m.cout.max(m.cin) >= 1 << 31 {
        return Err(Error::shape(
            "modulated_conv2d",
            format!("{m:?} is too large for the CUDA kernels"),
        ));
    }
    Ok(v.map(|x| x as i32))
}

/// The demodulation coefficients `[B, Cout]`.
fn demod_raw(w: &Tensor, s: &Tensor, m: &ModConv) -> Result<Tensor> {
    const OP: &str = "modulated_conv2d";
    match w.device() {
        Device::Cpu => {
            let (sw, ss) = (w.storage(), s.storage());
            let d = cpu::demod(
                sw.cpu_f32(OP)?,
                ss.cpu_f32(OP)?,
                m.batch,
                m.cout,
                m.cin,
                m.kk,
            );
            Tensor::from_vec(d, &[m.batch, m.cout], w.device())
        }
        Device::Cuda(gpu) => {
            let [b, cout, cin, kk] = kernel_ints(m)?;
            let (sw, ss) = (w.storage(), s.storage());
            let mut d = gpu.alloc::<f32>(m.batch * m.cout)?;
            if m.batch * m.cout > 0 {
                // SAFETY: w holds Cout·Cin·KK floats, s B·Cin, d B·Cout; warp r writes d[r] only.
                launch!(
                    gpu,
                    "modconv",
                    "modconv_demod_f32",
                    super::warp_per_row(m.batch * m.cout),
                    sw.cuda_f32(OP)?,
                    ss.cuda_f32(OP)?,
                    &mut d,
                    &b,
                    &cout,
                    &cin,
                    &kk
                )?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(d),
                &[m.batch, m.cout],
                w.device(),
            ))
        }
    }
}

/// Adds the demodulation's terms to ds and dw in place, given `P = Σ_p dy ⊙ y` `[B, Cout]`.
fn demod_backward_raw(
    p: &Tensor,
    d: &Tensor,
    w: &Tensor,
    s: &Tensor,
    ds: &Tensor,
    dw: &Tensor,
    m: &ModConv,
) -> Result<()> {
    const OP: &str = "modulated_conv2d backward";
    match w.device() {
        Device::Cpu => {
            let (pv, dv, wv, sv) = (
                p.to_vec_f32()?,
                d.to_vec_f32()?,
                w.to_vec_f32()?,
                s.to_vec_f32()?,
            );
            let (b, cout, cin, kk) = (m.batch, m.cout, m.cin, m.kk);
            let e: Vec<f32> = (0..b * cout).map(|r| -pv[r] * dv[r] * dv[r]).collect();
            let mut sds = ds.storage_mut();
            let dsv = sds.cpu_f32_mut(OP)?;
            for bi in 0..b {
                for ci in 0..cin {
                    let mut acc = 0.0f32;
                    for co in 0..cout {
                        let w2: f32 = wv[(co * cin + ci) * kk..][..kk].iter().map(|v| v * v).sum();
                        acc += e[bi * cout + co] * w2;
                    }
                    dsv[bi * cin + ci] += sv[bi * cin + ci] * acc;
                }
            }
            let mut sdw = dw.storage_mut();
            let dwv = sdw.cpu_f32_mut(OP)?;
            for co in 0..cout {
                for ci in 0..cin {
                    let coef: f32 = (0..b)
                        .map(|bi| e[bi * cout + co] * sv[bi * cin + ci] * sv[bi * cin + ci])
                        .sum();
                    for k in 0..kk {
                        let i = (co * cin + ci) * kk + k;
                        dwv[i] += wv[i] * coef;
                    }
                }
            }
            Ok(())
        }
        Device::Cuda(gpu) => {
            let [b, cout, cin, kk] = kernel_ints(m)?;
            let (sp, sd, sw, ss) = (p.storage(), d.storage(), w.storage(), s.storage());
            {
                let mut sds = ds.storage_mut();
                // SAFETY: P, d hold B·Cout floats, w Cout·Cin·KK, s and ds B·Cin; warp r updates ds[r] only.
                launch!(
                    gpu,
                    "modconv",
                    "modconv_demod_ds_f32",
                    super::warp_per_row(m.batch * m.cin),
                    sp.cuda_f32(OP)?,
                    sd.cuda_f32(OP)?,
                    sw.cuda_f32(OP)?,
                    ss.cuda_f32(OP)?,
                    sds.cuda_f32_mut(OP)?,
                    &b,
                    &cout,
                    &cin,
                    &kk
                )?;
            }
            let mut sdw = dw.storage_mut();
            // SAFETY: as above; dw holds Cout·Cin·KK floats, thread (co, ci) updates its KK only.
            launch!(
                gpu,
                "modconv",
                "modconv_demod_dw_f32",
                launch_1d(m.cout * m.cin),
                sp.cuda_f32(OP)?,
                sd.cuda_f32(OP)?,
                sw.cuda_f32(OP)?,
                ss.cuda_f32(OP)?,
                sdw.cuda_f32_mut(OP)?,
                &b,
                &cout,
                &cin,
                &kk
            )?;
            Ok(())
        }
    }
}

/// What the backward of one modulated convolution reads: its inputs, its output u (needed only
/// with demodulation), d, and the transposed weight of `Up2`.
struct Saved {
    x: Tensor,
    w: Tensor,
    s: Tensor,
    u: Option<Tensor>,
    d: Option<Tensor>,
    wt: Option<Tensor>,
    m: ModConv,
}

impl Saved {
    /// `[dx, dw, ds]` for the output gradient `dy` (see the module doc).
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (m, d, sc) = (&self.m, self.d.as_ref(), &self.s);
        let (g, dw) = match &self.wt {
            None => (
                conv2d_dx_raw(
                    dy,
                    &self.w,
                    Scales {
                        input: None,
                        output: d,
                    },
                    &m.conv,
                )?,
                conv2d_dw_raw(
                    dy,
                    &self.x,
                    Scales {
                        input: Some(sc),
                        output: d,
                    },
                    &m.conv,
                )?,
            ),
            Some(wt) => {
                let g = conv2d_fwd_raw(
                    dy,
                    wt,
                    Scales {
                        input: d,
                        output: None,
                    },
                    &m.conv,
                )?;
                let dwt = conv2d_dw_raw(
                    &self.x,
                    dy,
                    Scales {
                        input: d,
                        output: Some(sc),
                    },
                    &m.conv,
                )?;
                (g, transpose_raw(&dwt, 0, 1)?)
            }
        };
        let dx = broadcast_mul_raw(&g, sc)?;
        let q = self.x.numel() / (m.batch * m.cin).max(1);
        let ds = rowdot_raw(&self.x, &g, q, &[m.batch, m.cin])?;
        if let Some(d) = d {
            let u = self.u.as_ref().ok_or_else(|| {
                Error::Invalid("modulated_conv2d backward: the output was not kept".into())
            })?;
            let p = u.numel() / (m.batch * m.cout).max(1);
            let pr = rowdot_raw(dy, u, p, &[m.batch, m.cout])?;
            demod_backward_raw(&pr, d, &self.w, sc, &ds, &dw, m)?;
        }
        Ok(vec![Some(dx), Some(dw), Some(ds)])
    }
}

/// `y = T(x; w ⊙ s ⊙ d)` (see the module doc): x `[B, Cin, H, W]`, weight `[Cout, Cin, K, K]`,
/// styles `[B, Cin]`; `demodulate` as the reference's. Recorded: gradients for x, weight, styles.
pub fn modulated_conv2d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    styles: &Tensor,
    demodulate: bool,
    resample: Resample,
) -> Result<Tensor> {
    same_device("modulated_conv2d", &[x, weight, styles])?;
    let m = ModConv::new(x.shape(), weight.shape(), styles.shape(), resample)?;
    let d = demodulate
        .then(|| demod_raw(weight, styles, &m))
        .transpose()?;
    let wt = match resample {
        Resample::Same { .. } => None,
        Resample::Up2 => Some(transpose_raw(weight, 0, 1)?),
    };
    let y = match &wt {
        None => conv2d_fwd_raw(
            x,
            weight,
            Scales {
                input: Some(styles),
                output: d.as_ref(),
            },
            &m.conv,
        )?,
        // T is the adjoint of the convolution on wᵀ: its "input" channels are the layer's outputs.
        Some(wt) => conv2d_dx_raw(
            x,
            wt,
            Scales {
                input: d.as_ref(),
                output: Some(styles),
            },
            &m.conv,
        )?,
    };
    debug_assert_eq!(y.shape(), m.y_shape());
    let saved = Saved {
        x: x.clone(),
        w: weight.clone(),
        s: styles.clone(),
        u: demodulate.then(|| y.clone()),
        d,
        wt,
        m,
    };
    tape.record(&[x, weight, styles], &y, move |dy| saved.backward(dy));
    Ok(y)
}

/// `epi(modulated_conv2d(x, weight, styles, demodulate, Same { padding }))` in one pass: the
/// synthesis layer's conv → noise → bias_act and ToRGB's conv → bias_act, done as the convolution
/// stores y (`ops::conv_epilogue`), the separate ops' numbers bit for bit. Recorded: x, weight,
/// styles, the bias and the noise strength.
pub fn modulated_conv2d_bias_act(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    styles: &Tensor,
    demodulate: bool,
    padding: usize,
    epi: BiasAct,
) -> Result<Tensor> {
    let resample = Resample::Same { padding };
    if epi.unfusable() {
        let u = modulated_conv2d(tape, x, weight, styles, demodulate, resample)?;
        return epi.apply_separately(tape, &u);
    }
    same_device("modulated_conv2d", &[x, weight, styles])?;
    let m = ModConv::new(x.shape(), weight.shape(), styles.shape(), resample)?;
    let d = demodulate
        .then(|| demod_raw(weight, styles, &m))
        .transpose()?;
    let scales = Scales {
        input: Some(styles),
        output: d.as_ref(),
    };
    let (y, u) = conv2d_fwd_epilogue_raw(x, weight, scales, &epi, demodulate, &m.conv)?;
    let kept = epi.keep(tape);
    let yc = y.clone();
    let saved = Saved {
        x: x.clone(),
        w: weight.clone(),
        s: styles.clone(),
        u,
        d,
        wt: None,
        m,
    };
    let inputs: Vec<&Tensor> = [x, weight, styles]
        .into_iter()
        .chain(epi.inputs())
        .collect();
    tape.record(&inputs, &y, move |dy| {
        let (dpre, tail) = kept.backward(dy, &yc)?;
        let mut grads = saved.backward(&dpre)?;
        grads.extend(tail);
        Ok(grads)
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gradcheck, random_vec};

    /// (x shape, weight shape, demodulate, resample): the synthesis conv1, ToRGB, conv0, and an
    /// odd-sized unpadded one.
    fn cases() -> Vec<([usize; 4], [usize; 4], bool, Resample)> {
        vec![
            (
                [2, 3, 5, 6],
                [4, 3, 3, 3],
                true,
                Resample::Same { padding: 1 },
            ),
            (
                [2, 3, 4, 4],
                [3, 3, 1, 1],
                false,
                Resample::Same { padding: 0 },
            ),
            ([2, 3, 4, 5], [4, 3, 3, 3], true, Resample::Up2),
            (
                [3, 2, 6, 5],
                [3, 2, 2, 2],
                true,
                Resample::Same { padding: 0 },
            ),
            ([1, 2, 3, 3], [2, 2, 3, 3], false, Resample::Up2),
        ]
    }

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    #[test]
    fn modconv_backward_matches_finite_differences_of_the_per_sample_oracle() {
        for (xs, ws, demod, rs) in cases() {
            let n = |s: &[usize]| s.iter().product::<usize>();
            let x = f64s(&random_vec(n(&xs), 1));
            let w = f64s(&random_vec(n(&ws), 2));
            let s: Vec<f64> = random_vec(xs[0] * xs[1], 3)
                .iter()
                .map(|&v| v as f64 + 1.0)
                .collect();
            let y0 = cpu::modulated_conv2d(&x, &w, &s, demod, &xs, &ws, rs).unwrap();
            let g = f64s(&random_vec(y0.len(), 4));
            let loss = |x: &[f64], w: &[f64], s: &[f64]| {
                cpu::modulated_conv2d(x, w, s, demod, &xs, &ws, rs)
                    .unwrap()
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            };
            let (dx, dw, ds) =
                cpu::modulated_conv2d_backward(&x, &w, &s, &g, demod, &xs, &ws, rs).unwrap();
            let what = format!("{xs:?} {ws:?} demod {demod} {rs:?}");
            gradcheck(&format!("dx {what}"), |v| loss(v, &w, &s), &x, &dx);
            gradcheck(&format!("dw {what}"), |v| loss(&x, v, &s), &w, &dw);
            gradcheck(&format!("ds {what}"), |v| loss(&x, &w, v), &s, &ds);
        }
    }

    #[test]
    fn modconv_on_every_device_matches_the_oracle() {
        let mut extra = vec![];
        if crate::testing::gpu().is_some() {
            // More than one 64-wide tile of channels and pixels, and batch 3.
            extra.push((
                [3, 70, 9, 9],
                [66, 70, 3, 3],
                true,
                Resample::Same { padding: 1 },
            ));
            extra.push(([3, 65, 5, 5], [33, 65, 3, 3], true, Resample::Up2));
        }
        for device in devices() {
            for (xs, ws, demod, rs) in cases().into_iter().chain(extra.iter().copied()) {
                if !device.is_cuda() && xs[1] > 8 {
                    continue;
                }
                let n = |s: &[usize]| s.iter().product::<usize>();
                let (xv, wv) = (random_vec(n(&xs), 5), random_vec(n(&ws), 6));
                let sv: Vec<f32> = random_vec(xs[0] * xs[1], 7)
                    .iter()
                    .map(|v| v + 1.0)
                    .collect();
                let x = Tensor::from_slice(&xv, &xs, &device).unwrap();
                let w = Tensor::from_slice(&wv, &ws, &device).unwrap();
                let s = Tensor::from_slice(&sv, &[xs[0], xs[1]], &device).unwrap();
                let mut tape = Tape::new();
                for t in [&x, &w, &s] {
                    tape.watch(t);
                }
                let y = modulated_conv2d(&mut tape, &x, &w, &s, demod, rs).unwrap();
                let want =
                    cpu::modulated_conv2d(&f64s(&xv), &f64s(&wv), &f64s(&sv), demod, &xs, &ws, rs)
                        .unwrap();
                let what = format!("{xs:?} {ws:?} demod {demod} {rs:?} on {device}");
                let tol = 1e-5 * (xs[1] as f32 * 9.0).sqrt();
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &f32s(&want),
                    1e-4,
                    tol,
                    &format!("y {what}"),
                );
                let gv = random_vec(y.numel(), 8);
                let grads = tape
                    .backward_with(&y, Tensor::from_slice(&gv, y.shape(), &device).unwrap())
                    .unwrap();
                let (dx, dw, ds) = cpu::modulated_conv2d_backward(
                    &f64s(&xv),
                    &f64s(&wv),
                    &f64s(&sv),
                    &f64s(&gv),
                    demod,
                    &xs,
                    &ws,
                    rs,
                )
                .unwrap();
                let tol = 1e-5 * (y.numel() as f32).sqrt();
                assert_close(
                    &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                    &f32s(&dx),
                    1e-4,
                    tol,
                    &format!("dx {what}"),
                );
                assert_close(
                    &grads.get(&w).unwrap().to_vec_f32().unwrap(),
                    &f32s(&dw),
                    1e-4,
                    tol,
                    &format!("dw {what}"),
                );
                assert_close(
                    &grads.get(&s).unwrap().to_vec_f32().unwrap(),
                    &f32s(&ds),
                    1e-4,
                    tol,
                    &format!("ds {what}"),
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let t = |s: &[usize]| Tensor::zeros(s, &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        let same = Resample::Same { padding: 1 };
        assert!(modulated_conv2d(
            &mut tape,
            &t(&[2, 3, 4, 4]),
            &t(&[4, 3, 3, 3]),
            &t(&[2, 4]),
            true,
            same
        )
        .is_err());
        assert!(modulated_conv2d(
            &mut tape,
            &t(&[2, 3, 4, 4]),
            &t(&[4, 2, 3, 3]),
            &t(&[2, 3]),
            true,
            same
        )
        .is_err());
        assert!(modulated_conv2d(
            &mut tape,
            &t(&[2, 3, 4, 4]),
            &t(&[4, 3, 3, 3]),
            &t(&[2, 3]),
            true,
            same
        )
        .is_ok());
        assert!(modulated_conv2d(
            &mut tape,
            &t(&[3, 4, 4]),
            &t(&[4, 3, 3, 3]),
            &t(&[2, 3]),
            true,
            same
        )
        .is_err());
    }
}
