//! The tail of a StyleGAN2 layer in its convolution's store: for u the convolution's output,
//! `y = clamp(act(u + strength·noise + bias)·gain, ±clamp)`, each part only when given. These are
//! `channels::add_noise` then `bias_act`, and the numbers are theirs bit for bit on every device:
//! the kernels round each step as the separate kernels do, the CPU runs the same twins in the
//! same order.
//!
//! Why: the separate ops cost five passes over the activation (the convolution writes u,
//! add_noise reads it and writes, bias_act reads and writes); the fused store writes y once. On
//! Lafite's generator that is every synthesis conv1, every ToRGB and every discriminator conv.
//!
//! Backward, read off y alone as `bias_act`'s: `dpre = dy·gain·act'` where the clamp did not bite,
//! `db[c] = Σ dpre`, `dstrength = Σ dpre·noise`; dpre is the convolution's output gradient.
//!
//! Inside an activation-pattern record or replay (`bias_act::pattern`, the regularisers' second
//! derivatives) a leaky ReLU must run as recorded separate ops: the fused ops then fall back to
//! the convolution followed by `add_noise` and `bias_act`.

use std::sync::RwLockReadGuard;

use cudarc::driver::{CudaSlice, DeviceRepr};

use super::same_device;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::bias_act::{self, bias_act, pattern, Act};
use crate::ops::channels::{self, add_noise, noise_strength_grad_raw};
use crate::ops::conv2d::{conv2d, conv2d_dw_raw, conv2d_dx_raw, conv2d_fwd_epilogue_raw};
use crate::ops::conv2d::{Conv2d, Scales};
use crate::ops::elementwise::bias_grad_raw;
use crate::tensor::{Storage, Tensor};

/// `struct Epi` of `kernels/epilogue.cuh`: the epilogue's numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct EpiArgs {
    pub act: i32,
    pub noise_batched: i32,
    pub alpha: f32,
    pub gain: f32,
    pub clamp: f32,
}

impl EpiArgs {
    /// No epilogue: linear, gain 1, no clamp (the store writes u).
    pub const NONE: EpiArgs = EpiArgs {
        act: 0,
        noise_batched: 0,
        alpha: 1.0,
        gain: 1.0,
        clamp: -1.0,
    };
}

// SAFETY: #[repr(C)], two i32 then three f32, the layout of the CUDA struct.
unsafe impl DeviceRepr for EpiArgs {}

/// A synthesis layer's per-pixel noise (`[N, 1, H, W]`, or `[H, W]` shared by the batch) and its
/// learned strength (one number).
#[derive(Clone, Copy)]
pub struct Noise<'a> {
    pub noise: &'a Tensor,
    pub strength: &'a Tensor,
}

/// The epilogue: optional bias `[C]` and noise, then the activation, gain and clamp of
/// `bias_act`.
#[derive(Clone, Copy)]
pub struct BiasAct<'a> {
    pub bias: Option<&'a Tensor>,
    pub noise: Option<Noise<'a>>,
    pub act: Act,
    pub gain: f32,
    pub clamp: Option<f32>,
}

impl<'a> BiasAct<'a> {
    /// `bias_act(u, bias, act, gain, clamp)` without noise.
    pub fn new(bias: Option<&'a Tensor>, act: Act, gain: f32, clamp: Option<f32>) -> Self {
        BiasAct {
            bias,
            noise: None,
            act,
            gain,
            clamp,
        }
    }

    /// The same, with `+ strength·noise` before the bias.
    pub fn with_noise(self, noise: Option<Noise<'a>>) -> Self {
        BiasAct { noise, ..self }
    }

    /// Checks the parts against u `[N, C, H, W]` (on `like`'s device); whether the noise is per
    /// sample.
    pub(crate) fn check(&self, u_shape: [usize; 4], like: &Tensor) -> Result<bool> {
        const OP: &str = "conv epilogue";
        let [n, c, h, w] = u_shape;
        if let Some(b) = self.bias {
            if b.shape() != [c] {
                return Err(Error::shape(
                    OP,
                    format!("bias {:?} for {c} output channels", b.shape()),
                ));
            }
            same_device(OP, &[like, b])?;
        }
        if self.clamp.is_some_and(|m| !(m >= 0.0)) || !(self.gain > 0.0) {
            return Err(Error::Invalid(format!(
                "{OP}: gain {} must be positive and clamp {:?} non-negative",
                self.gain, self.clamp
            )));
        }
        let Some(Noise { noise, strength }) = self.noise else {
            return Ok(false);
        };
        same_device(OP, &[like, noise, strength])?;
        if strength.numel() != 1 {
            return Err(Error::shape(
                OP,
                format!(
                    "the noise strength must be one number, got {:?}",
                    strength.shape()
                ),
            ));
        }
        match noise.shape() {
            s if s == [n, 1, h, w] => Ok(true),
            s if s == [h, w] => Ok(false),
            s => Err(Error::shape(
                OP,
                format!(
                    "noise {s:?} for an output {u_shape:?}: want [{n}, 1, {h}, {w}] or [{h}, {w}]"
                ),
            )),
        }
    }

    /// The kernels' numbers.
    pub(crate) fn kernel_args(&self, noise_batched: bool) -> EpiArgs {
        let (act, alpha) = self.act.code();
        EpiArgs {
            act,
            noise_batched: noise_batched as i32,
            alpha,
            gain: self.gain,
            clamp: self.clamp.unwrap_or(-1.0),
        }
    }

    /// The CPU twin: `add_noise`'s then `bias_act`'s, on u `[N, C, H, W]`.
    pub(crate) fn apply_cpu(&self, u: &[f32], u_shape: [usize; 4]) -> Result<Vec<f32>> {
        const OP: &str = "conv epilogue";
        let [_, c, h, w] = u_shape;
        let noised = match self.noise {
            Some(Noise { noise, strength }) => {
                let sn = noise.storage();
                Some(channels::cpu::add_noise(
                    u,
                    sn.cpu_f32(OP)?,
                    strength.scalar()?,
                    c,
                    h * w,
                ))
            }
            None => None,
        };
        let sb = self.bias.map(|b| b.storage());
        let bv = sb.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
        let x = noised.as_deref().unwrap_or(u);
        Ok(bias_act::cpu::bias_act(
            x,
            bv,
            c,
            h * w,
            self.act,
            self.gain,
            self.clamp,
        ))
    }

    /// Whether the fused op must run as separate ops (a leaky ReLU under an activation pattern).
    pub(crate) fn unfusable(&self) -> bool {
        matches!(self.act, Act::LeakyRelu(_)) && pattern::active()
    }

    /// The epilogue as the separate recorded ops, on u.
    pub fn apply_separately(&self, tape: &mut Tape, u: &Tensor) -> Result<Tensor> {
        let u = match self.noise {
            Some(Noise { noise, strength }) => add_noise(tape, u, noise, strength)?,
            None => u.clone(),
        };
        bias_act(tape, &u, self.bias, self.act, self.gain, self.clamp)
    }

    /// The tensors that get gradients, after the convolution's own inputs: bias, then strength.
    pub(crate) fn inputs(&self) -> Vec<&'a Tensor> {
        self.bias
            .into_iter()
            .chain(self.noise.map(|n| n.strength))
            .collect()
    }

    /// What the backward keeps.
    pub(crate) fn keep(&self, tape: &Tape) -> Kept {
        Kept {
            need_bias: self.bias.map(|b| tape.needs_grad(&[b])),
            noise: self.noise.map(|n| {
                (
                    n.noise.clone(),
                    n.strength.shape().to_vec(),
                    tape.needs_grad(&[n.strength]),
                )
            }),
            act: self.act,
            gain: self.gain,
            clamp: self.clamp,
        }
    }
}

/// An epilogue's tensors held for a launch: bias, noise and strength, None where absent (or
/// where there is no epilogue).
pub(crate) struct Held<'a>([Option<RwLockReadGuard<'a, Storage>>; 3]);

impl<'a> Held<'a> {
    pub(crate) fn new(epi: Option<&BiasAct<'a>>) -> Held<'a> {
        Held(match epi {
            Some(e) => [
                e.bias.map(|t| t.storage()),
                e.noise.map(|n| n.noise.storage()),
                e.noise.map(|n| n.strength.storage()),
            ],
            None => [None, None, None],
        })
    }

    /// The kernels' bias, noise and strength pointers, in that order (None: pass null).
    pub(crate) fn pointers(&self, op: &'static str) -> Result<[Option<&CudaSlice<f32>>; 3]> {
        let [b, n, s] = &self.0;
        Ok([
            b.as_ref().map(|g| g.cuda_f32(op)).transpose()?,
            n.as_ref().map(|g| g.cuda_f32(op)).transpose()?,
            s.as_ref().map(|g| g.cuda_f32(op)).transpose()?,
        ])
    }
}

/// An epilogue's backward state: which of bias and strength exist (and need a gradient), the
/// noise, and bias_act's numbers.
pub(crate) struct Kept {
    need_bias: Option<bool>,
    noise: Option<(Tensor, Vec<usize>, bool)>,
    act: Act,
    gain: f32,
    clamp: Option<f32>,
}

impl Kept {
    /// dpre (the convolution's output gradient) and the gradients of `BiasAct::inputs`, in order.
    pub(crate) fn backward(
        &self,
        dy: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let dpre = bias_act::backward_raw(dy, y, self.act, self.gain, self.clamp)?;
        let mut grads = Vec::new();
        if let Some(need) = self.need_bias {
            let &[n, c, h, w] = y.shape() else {
                return Err(Error::shape(
                    "conv epilogue backward",
                    format!("y must be [N, C, H, W], got {:?}", y.shape()),
                ));
            };
            grads.push(
                need.then(|| bias_grad_raw(&dpre, n, c, h * w))
                    .transpose()?,
            );
        }
        if let Some((noise, strength_shape, need)) = &self.noise {
            grads.push(
                need.then(|| noise_strength_grad_raw(&dpre, noise, strength_shape))
                    .transpose()?,
            );
        }
        Ok((dpre, grads))
    }
}

/// `epi(conv2d(x, weight))` (no bias of the convolution's own: the epilogue's comes after the
/// noise, as in StyleGAN2) in one pass: x `[B, Cin, H, W]`, weight `[Cout, Cin/groups, KH, KW]`.
/// The same numbers as `conv2d`, `add_noise` and `bias_act` one after another. Recorded: x,
/// weight, the bias and the noise strength.
pub fn conv2d_bias_act(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
    epi: BiasAct,
) -> Result<Tensor> {
    let d = Conv2d::new(x.shape(), weight.shape(), stride, padding, groups)?;
    if epi.unfusable() {
        epi.check(d.y_shape(), x)?;
        let u = conv2d(tape, x, weight, None, stride, padding, groups)?;
        return epi.apply_separately(tape, &u);
    }
    let (y, _) = conv2d_fwd_epilogue_raw(x, weight, Scales::default(), &epi, false, &d)?;
    let (need_x, need_w) = (tape.needs_grad(&[x]), tape.needs_grad(&[weight]));
    let kept = epi.keep(tape);
    let (xc, wc, yc) = (x.clone(), weight.clone(), y.clone());
    let inputs: Vec<&Tensor> = [x, weight].into_iter().chain(epi.inputs()).collect();
    tape.record(&inputs, &y, move |dy| {
        let (dpre, tail) = kept.backward(dy, &yc)?;
        let none = Scales::default();
        let dx = need_x
            .then(|| conv2d_dx_raw(&dpre, &wc, none, &d))
            .transpose()?;
        let dw = need_w
            .then(|| conv2d_dw_raw(&dpre, &xc, none, &d))
            .transpose()?;
        Ok([dx, dw].into_iter().chain(tail).collect())
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::cpu as conv_cpu;
    use crate::ops::modconv::{modulated_conv2d, modulated_conv2d_bias_act, Resample};
    use crate::ops::precision::{self, Precision};
    use crate::tensor::Device;
    use crate::testing::{devices, gradcheck, random_vec};

    const SQRT_2: f32 = std::f32::consts::SQRT_2;

    /// (act, gain, clamp, bias, noise: 0 none, 1 per sample, 2 shared): Lafite's synthesis layer
    /// (lrelu √2, clamp, bias, noise), ToRGB (linear, clamp, bias), D's layers (lrelu, gain
    /// √2·√0.5, clamp or not), and the bare convolution.
    const TAILS: [(Act, f32, Option<f32>, bool, u8); 6] = [
        (Act::LRELU, SQRT_2, Some(0.4), true, 1),
        (Act::LRELU, SQRT_2, None, true, 2),
        (Act::Linear, 1.0, Some(0.3), true, 0),
        (Act::LRELU, 1.0, Some(0.25), false, 0),
        (Act::LRELU, SQRT_2, None, false, 1),
        (Act::Linear, 1.0, None, false, 0),
    ];

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_vec_f32().unwrap()
    }

    /// One layer's tensors on `device`: x, weight, styles, bias, strength, both noises, dy.
    struct Layer {
        x: Tensor,
        w: Tensor,
        s: Tensor,
        b: Tensor,
        strength: Tensor,
        noise_batched: Tensor,
        noise_shared: Tensor,
        dy: Tensor,
    }

    impl Layer {
        fn new(x: [usize; 4], w: [usize; 4], y: [usize; 4], device: &Device) -> Layer {
            let t = |s: &[usize], seed: u64, k: f32| {
                let v = random_vec(s.iter().product(), seed)
                    .iter()
                    .map(|v| v * k)
                    .collect();
                Tensor::from_vec(v, s, device).unwrap()
            };
            let [n, c, h, wd] = y;
            Layer {
                x: t(&x, 1, 1.0),
                w: t(&w, 2, 1.0),
                s: t(&[x[0], x[1]], 3, 1.0),
                b: t(&[c], 4, 0.5),
                strength: t(&[], 5, 1.0),
                noise_batched: t(&[n, 1, h, wd], 6, 1.0),
                noise_shared: t(&[h, wd], 7, 1.0),
                dy: t(&y, 8, 1.0),
            }
        }

        fn epi(&self, tail: (Act, f32, Option<f32>, bool, u8)) -> BiasAct<'_> {
            let (act, gain, clamp, bias, noise) = tail;
            let noise = match noise {
                0 => None,
                1 => Some(&self.noise_batched),
                _ => Some(&self.noise_shared),
            };
            BiasAct::new(bias.then_some(&self.b), act, gain, clamp).with_noise(noise.map(|noise| {
                Noise {
                    noise,
                    strength: &self.strength,
                }
            }))
        }

        /// y and the gradients of x, w, styles, bias and strength (empty where none).
        fn run(&self, f: impl FnOnce(&mut Tape) -> Tensor) -> Vec<Vec<f32>> {
            let mut tape = Tape::new();
            let watched = [&self.x, &self.w, &self.s, &self.b, &self.strength];
            for v in watched {
                tape.watch(v);
            }
            let y = f(&mut tape);
            let grads = tape.backward_with(&y, self.dy.clone()).unwrap();
            let mut out = vec![values(&y)];
            for v in watched {
                out.push(grads.get(v).map(values).unwrap_or_default());
            }
            out
        }
    }

    fn precisions(device: &Device) -> &'static [Precision] {
        match device {
            Device::Cpu => &[Precision::F32],
            Device::Cuda(_) => &Precision::ALL,
        }
    }

    fn assert_same(fused: &[Vec<f32>], separate: &[Vec<f32>], what: &str) {
        for (i, name) in ["y", "dx", "dW", "dstyles", "db", "dstrength"]
            .iter()
            .enumerate()
        {
            assert!(fused[i] == separate[i], "{name}: {what}");
        }
        // The clamp and the slope must both have been exercised by the data.
        assert!(
            fused[0].iter().any(|&v| v < 0.0),
            "no negative output: {what}"
        );
    }

    /// conv2d + the epilogue against conv2d, add_noise and bias_act one after another: equal
    /// outputs and gradients, on every device and (on a GPU) at every precision, so the
    /// tensor-core and pipelined builds' stores are covered too. Sizes off the 64-wide tile: D's
    /// 3×3, its strided 3×3 after the filter, and a 1×1.
    #[test]
    fn conv2d_with_the_epilogue_equals_the_separate_ops_on_every_device() {
        for device in devices() {
            for (stride, pad, k) in [(1, 1, 3), (2, 0, 3), (1, 0, 1)] {
                let xs = [2, 7, 11, 9];
                let d = Conv2d::new(&xs, &[66, 7, k, k], stride, (pad, pad), 1).unwrap();
                let l = Layer::new(xs, d.w_shape(), d.y_shape(), &device);
                for &p in precisions(&device) {
                    for tail in TAILS {
                        let epi = l.epi(tail);
                        let sp = (pad, pad);
                        let fused = precision::with(p, || {
                            l.run(|t| conv2d_bias_act(t, &l.x, &l.w, stride, sp, 1, epi).unwrap())
                        });
                        let separate = precision::with(p, || {
                            l.run(|t| {
                                let u = conv2d(t, &l.x, &l.w, None, stride, sp, 1).unwrap();
                                epi.apply_separately(t, &u).unwrap()
                            })
                        });
                        let what = format!("{tail:?} k{k} s{stride} on {device} at {p}");
                        assert_same(&fused, &separate, &what);
                    }
                }
            }
        }
    }

    /// The same for the modulated convolution: the synthesis conv1 (3×3, demodulated) and ToRGB
    /// (1×1, not), against modulated_conv2d then the separate ops.
    #[test]
    fn modulated_conv2d_with_the_epilogue_equals_the_separate_ops_on_every_device() {
        for device in devices() {
            for (k, pad, demodulate) in [(3, 1, true), (1, 0, false), (3, 1, false)] {
                let (xs, ws) = ([3, 9, 8, 13], [67, 9, k, k]);
                let y = [3, 67, 8 + 2 * pad + 1 - k, 13 + 2 * pad + 1 - k];
                let l = Layer::new(xs, ws, y, &device);
                for &p in precisions(&device) {
                    for tail in TAILS {
                        let epi = l.epi(tail);
                        let fused = precision::with(p, || {
                            l.run(|t| {
                                modulated_conv2d_bias_act(t, &l.x, &l.w, &l.s, demodulate, pad, epi)
                                    .unwrap()
                            })
                        });
                        let separate = precision::with(p, || {
                            l.run(|t| {
                                let same = Resample::Same { padding: pad };
                                let u = modulated_conv2d(t, &l.x, &l.w, &l.s, demodulate, same)
                                    .unwrap();
                                epi.apply_separately(t, &u).unwrap()
                            })
                        });
                        let what = format!("{tail:?} k{k} demod {demodulate} on {device} at {p}");
                        assert_same(&fused, &separate, &what);
                    }
                }
            }
        }
    }

    /// The same for the synthesis conv0's filter after its transposed convolution
    /// (`upfirdn2d_bias_act`), against upfirdn2d then the separate ops, on every device.
    #[test]
    fn upfirdn2d_with_the_epilogue_equals_the_separate_ops_on_every_device() {
        use crate::ops::upfirdn2d::{setup_filter, upfirdn2d, upfirdn2d_bias_act};
        for device in devices() {
            let f = setup_filter(&[1.0, 3.0, 3.0, 1.0], &device).unwrap();
            // conv0's geometry: the transposed 3×3's 2H + 1 wide output, padded 1, 4 taps.
            let (xs, y) = ([3, 5, 15, 13], [3, 5, 14, 12]);
            let l = Layer::new(xs, [5, 5, 1, 1], y, &device);
            for tail in TAILS {
                let epi = l.epi(tail);
                let pad = [1; 4];
                let fused =
                    l.run(|t| upfirdn2d_bias_act(t, &l.x, &f, 1, 1, pad, false, 4.0, epi).unwrap());
                let separate = l.run(|t| {
                    let u = upfirdn2d(t, &l.x, &f, 1, 1, pad, false, 4.0).unwrap();
                    epi.apply_separately(t, &u).unwrap()
                });
                assert_same(&fused, &separate, &format!("{tail:?} on {device}"));
            }
        }
    }

    /// The epilogue's backward in f64: for `y = bias_act(conv(x, w) + s·noise, b)` the
    /// gradients the fused op uses (dpre read off y, then conv2d's dx and dW of dpre, Σ dpre and
    /// Σ dpre·noise) against central differences of the loss Σ g·y.
    #[test]
    fn the_epilogue_gradients_match_finite_differences() {
        let f64s = |v: Vec<f32>| -> Vec<f64> { v.into_iter().map(f64::from).collect() };
        let d = Conv2d::new(&[2, 3, 5, 4], &[4, 3, 3, 3], 1, (1, 1), 1).unwrap();
        let [n, c, h, w] = d.y_shape();
        let p = h * w;
        let x = f64s(random_vec(d.x_len(), 11));
        let wt = f64s(random_vec(d.w_len(), 12));
        let b = f64s(random_vec(c, 13));
        let noise = f64s(random_vec(n * p, 14));
        let g = f64s(random_vec(d.y_len(), 15));
        for (act, gain, clamp) in [(Act::LRELU, SQRT_2, Some(0.6)), (Act::Linear, 1.0, None)] {
            let twin = |x: &[f64], wt: &[f64], b: &[f64], s: f64| {
                let mut u = conv_cpu::conv2d(x, wt, &d).unwrap();
                for (i, v) in u.iter_mut().enumerate() {
                    *v += s * noise[i / (c * p) * p + i % p];
                }
                bias_act::cpu::bias_act(&u, Some(b), c, p, act, gain, clamp)
            };
            let loss = |x: &[f64], wt: &[f64], b: &[f64], s: f64| {
                twin(x, wt, b, s)
                    .iter()
                    .zip(&g)
                    .map(|(y, g)| y * g)
                    .sum::<f64>()
            };
            let s = 0.7;
            let y = twin(&x, &wt, &b, s);
            assert!(
                clamp.is_none() || y.iter().any(|v| v.abs() >= 0.6),
                "the clamp bites"
            );
            let dpre = bias_act::cpu::bias_act_dx(&g, &y, act, gain, clamp);
            let mut db = vec![0.0; c];
            let mut ds = 0.0;
            for (i, v) in dpre.iter().enumerate() {
                db[i / p % c] += v;
                ds += v * noise[i / (c * p) * p + i % p];
            }
            let what = format!("{act:?} clamp {clamp:?}");
            let dx = conv_cpu::conv2d_dx(&dpre, &wt, &d).unwrap();
            let dw = conv_cpu::conv2d_dw(&dpre, &x, &d).unwrap();
            gradcheck(&format!("dx {what}"), |v| loss(v, &wt, &b, s), &x, &dx);
            gradcheck(&format!("dW {what}"), |v| loss(&x, v, &b, s), &wt, &dw);
            gradcheck(&format!("db {what}"), |v| loss(&x, &wt, v, s), &b, &db);
            gradcheck(
                &format!("ds {what}"),
                |v| loss(&x, &wt, &b, v[0]),
                &[s],
                &[ds],
            );
        }
    }

    /// Under an activation-pattern record (the regularisers' second derivatives) the fused op
    /// runs as the separate ops, so its leaky ReLU's slopes are noted; the output is the same.
    #[test]
    fn under_an_activation_pattern_the_epilogue_runs_unfused() {
        let cpu = Device::Cpu;
        let l = Layer::new([1, 2, 4, 4], [3, 2, 3, 3], [1, 3, 4, 4], &cpu);
        let epi = l.epi(TAILS[0]);
        let run = |t: &mut Tape| conv2d_bias_act(t, &l.x, &l.w, 1, (1, 1), 1, epi).unwrap();
        let plain = values(&run(&mut Tape::new()));
        let (y, pat) = pattern::record(|| run(&mut Tape::new()));
        assert_eq!(values(&y), plain);
        let replayed = pattern::replay(&pat, || run(&mut Tape::new()));
        assert_eq!(values(&replayed), plain, "one noted pattern, replayed");
        let (_, empty) = pattern::record(|| ());
        assert!(pattern::replay(&empty, || {
            conv2d_bias_act(&mut Tape::new(), &l.x, &l.w, 1, (1, 1), 1, epi)
        })
        .is_err());
    }

    #[test]
    fn bad_epilogues_are_errors() {
        let cpu = Device::Cpu;
        let l = Layer::new([2, 2, 4, 4], [3, 2, 3, 3], [2, 3, 4, 4], &cpu);
        let zeros = |s: &[usize]| Tensor::zeros(s, &cpu).unwrap();
        let (bias5, noise, strength2) = (zeros(&[5]), zeros(&[2, 1, 5, 4]), zeros(&[2]));
        let cases = [
            (
                BiasAct::new(Some(&bias5), Act::LRELU, 1.0, None),
                "bias [5]",
            ),
            (BiasAct::new(None, Act::LRELU, 0.0, None), "gain 0"),
            (
                BiasAct::new(None, Act::LRELU, 1.0, Some(-1.0)),
                "clamp Some(-1.0)",
            ),
            (
                BiasAct::new(None, Act::Linear, 1.0, None).with_noise(Some(Noise {
                    noise: &noise,
                    strength: &l.strength,
                })),
                "noise [2, 1, 5, 4]",
            ),
            (
                BiasAct::new(None, Act::Linear, 1.0, None).with_noise(Some(Noise {
                    noise: &l.noise_shared,
                    strength: &strength2,
                })),
                "[2]",
            ),
        ];
        for (epi, want) in cases {
            let mut tape = Tape::new();
            let e = conv2d_bias_act(&mut tape, &l.x, &l.w, 1, (1, 1), 1, epi)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
            let e = modulated_conv2d_bias_act(&mut tape, &l.x, &l.w, &l.s, true, 1, epi)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
