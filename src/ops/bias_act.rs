//! `bias_act`: StyleGAN2's fused bias + activation + gain + clamp (`torch_utils/ops/bias_act.py`).
//!
//! For x `[outer, C, inner]` (the channel axis is 1: `[N, C, H, W]` or an FC's `[N, C]`) and bias
//! `[C]`: `pre = x + b[c]`, `v = act(pre)·gain`, `y = clamp(v, −clamp, clamp)` (no clamp when
//! `clamp` is None). Lafite's two activations: linear (gain 1) and leaky ReLU with slope 0.2 and
//! gain √2 (`lrelu`'s `def_gain`); its layers clamp at `conv_clamp·gain`, in f32 as well.
//!
//! Backward, read off y alone (gain > 0 keeps the sign of pre): where `|y| < clamp` (or no clamp),
//! `dx = dy·gain·act'(pre)` with `act'` = 1 for pre > 0 and `alpha` otherwise (PyTorch's convention
//! at 0); elsewhere 0. `db[c] = Σ_{outer, inner} dx`.
//!
//! Memory traffic: 8 bytes per element forward, 12 backward (`kernels/bias_act.cu`, one thread per
//! element).

use cudarc::driver::{DeviceRepr, PushKernelArg};

use rayon::prelude::*;

use super::{same_device, split_at_axis, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::elementwise::bias_grad_raw;
use crate::tensor::{launch_1d, Device, Storage, Tensor};

/// The activation of a `bias_act`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Linear,
    /// Leaky ReLU with this slope for negative inputs (StyleGAN2's `lrelu`: 0.2).
    LeakyRelu(f32),
}

impl Act {
    /// StyleGAN2's `lrelu`: slope 0.2.
    pub const LRELU: Act = Act::LeakyRelu(0.2);

    /// The reference's `def_gain`: √2 for lrelu, 1 for linear.
    pub fn default_gain(self) -> f32 {
        match self {
            Act::Linear => 1.0,
            Act::LeakyRelu(_) => std::f32::consts::SQRT_2,
        }
    }

    /// The reference's activation names: `linear`, `lrelu`.
    pub fn from_name(name: &str) -> Result<Act> {
        match name {
            "linear" => Ok(Act::Linear),
            "lrelu" => Ok(Act::LRELU),
            other => Err(Error::Invalid(format!(
                "activation {other:?} is not supported (linear or lrelu)"
            ))),
        }
    }

    /// The kernels' activation code and slope.
    pub(crate) fn code(self) -> (i32, f32) {
        match self {
            Act::Linear => (0, 1.0),
            Act::LeakyRelu(a) => (1, a),
        }
    }
}

/// The CPU twins, generic so gradient checks run them in f64.
pub mod cpu {
    use super::*;

    pub fn bias_act<T: Real>(
        x: &[T],
        b: Option<&[T]>,
        c: usize,
        inner: usize,
        act: Act,
        gain: f32,
        clamp: Option<f32>,
    ) -> Vec<T> {
        let (code, alpha) = act.code();
        let (alpha, gain) = (T::c(alpha as f64), T::c(gain as f64));
        let (lo, hi) = match clamp {
            Some(m) => (T::c(-m as f64), T::c(m as f64)),
            None => (T::neg_infinity(), T::infinity()),
        };
        let mut y = x.to_vec();
        // One chunk per (outer, channel) row: its bias is one number, the loop is branch-light.
        y.par_chunks_mut(inner.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let bias = b.map_or(T::zero(), |b| b[r % c]);
                for v in row {
                    let mut u = *v + bias;
                    if code == 1 && !(u > T::zero()) {
                        u = u * alpha;
                    }
                    *v = (u * gain).max(lo).min(hi);
                }
            });
        y
    }

    pub fn bias_act_dx<T: Real>(
        dy: &[T],
        y: &[T],
        act: Act,
        gain: f32,
        clamp: Option<f32>,
    ) -> Vec<T> {
        let (code, alpha) = act.code();
        dy.par_iter()
            .zip(y)
            .map(|(&g, &v)| {
                let mut g = g * T::c(gain as f64);
                if code == 1 && !(v > T::zero()) {
                    g = g * T::c(alpha as f64);
                }
                match clamp {
                    Some(m) if !(v.abs() < T::c(m as f64)) => T::zero(),
                    _ => g,
                }
            })
            .collect()
    }
}

/// `struct BiasAct` of `kernels/bias_act.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Args {
    n: u64,
    c: i32,
    inner: i32,
    act: i32,
    alpha: f32,
    gain: f32,
    clamp: f32,
}

// SAFETY: #[repr(C)] plain numbers in the CUDA struct's order (u64 first, so no hidden padding
// differs between the two).
unsafe impl DeviceRepr for Args {}

fn kernel_args(
    n: usize,
    c: usize,
    inner: usize,
    act: Act,
    gain: f32,
    clamp: Option<f32>,
) -> Result<Args> {
    if c >= 1 << 31 || inner >= 1 << 31 {
        return Err(Error::shape(
            "bias_act",
            format!("{c} channels × {inner} is too large"),
        ));
    }
    let (code, alpha) = act.code();
    Ok(Args {
        n: n as u64,
        c: c as i32,
        inner: inner as i32,
        act: code,
        alpha,
        gain,
        clamp: clamp.unwrap_or(-1.0),
    })
}

fn forward_raw(
    x: &Tensor,
    b: Option<&Tensor>,
    act: Act,
    gain: f32,
    clamp: Option<f32>,
) -> Result<Tensor> {
    const OP: &str = "bias_act";
    let (_, c, inner) = split_at_axis(x.shape(), 1);
    match x.device() {
        Device::Cpu => {
            let sx = x.storage();
            let sb = b.map(|b| b.storage());
            let bv = sb.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
            let y = cpu::bias_act(sx.cpu_f32(OP)?, bv, c, inner, act, gain, clamp);
            Tensor::from_vec(y, x.shape(), x.device())
        }
        Device::Cuda(gpu) => {
            let a = kernel_args(x.numel(), c, inner, act, gain, clamp)?;
            let (sx, sb) = (x.storage(), b.map(|b| b.storage()));
            let bs = sb.as_ref().map(|s| s.cuda_f32(OP)).transpose()?;
            let mut y = gpu.alloc::<f32>(x.numel())?;
            if x.numel() > 0 {
                let null = 0u64;
                let f = gpu.function("bias_act", "bias_act_fwd_f32")?;
                let mut lb = gpu.stream.launch_builder(&f);
                lb.arg(sx.cuda_f32(OP)?);
                match bs {
                    Some(s) => lb.arg(s),
                    None => lb.arg(&null),
                };
                lb.arg(&mut y).arg(&a);
                // SAFETY: x and y hold n floats, b C floats (checked by bias_act) or null.
                unsafe { lb.launch(launch_1d(x.numel())) }
                    .map_err(|e| Error::cuda("bias_act_fwd_f32", e))?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// dL/d(x + b) from dL/dy, read off y (see the module doc), without recording.
pub(crate) fn backward_raw(
    dy: &Tensor,
    y: &Tensor,
    act: Act,
    gain: f32,
    clamp: Option<f32>,
) -> Result<Tensor> {
    const OP: &str = "bias_act backward";
    match dy.device() {
        Device::Cpu => {
            let (sd, sy) = (dy.storage(), y.storage());
            let dx = cpu::bias_act_dx(sd.cpu_f32(OP)?, sy.cpu_f32(OP)?, act, gain, clamp);
            Tensor::from_vec(dx, y.shape(), y.device())
        }
        Device::Cuda(gpu) => {
            let (_, c, inner) = split_at_axis(y.shape(), 1);
            let a = kernel_args(y.numel(), c, inner, act, gain, clamp)?;
            let (sd, sy) = (dy.storage(), y.storage());
            let mut dx = gpu.alloc::<f32>(y.numel())?;
            if y.numel() > 0 {
                // SAFETY: dy, y and dx hold n floats.
                crate::tensor::launch!(
                    gpu,
                    "bias_act",
                    "bias_act_bwd_f32",
                    launch_1d(y.numel()),
                    sd.cuda_f32(OP)?,
                    sy.cuda_f32(OP)?,
                    &mut dx,
                    &a
                )?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(dx),
                y.shape(),
                y.device(),
            ))
        }
    }
}

/// `y = clamp(act(x + b)·gain, ±clamp)` over channel axis 1 of x (rank ≥ 2), as the reference's
/// `bias_act(x, b, dim=1, act, gain=gain, clamp=clamp)`. Recorded: gradients for x and b.
pub fn bias_act(
    tape: &mut Tape,
    x: &Tensor,
    b: Option<&Tensor>,
    act: Act,
    gain: f32,
    clamp: Option<f32>,
) -> Result<Tensor> {
    if x.rank() < 2 {
        return Err(Error::shape(
            "bias_act",
            format!("x must have a channel axis 1, got shape {:?}", x.shape()),
        ));
    }
    let (outer, c, inner) = split_at_axis(x.shape(), 1);
    if let Some(b) = b {
        if b.shape() != [c] {
            return Err(Error::shape(
                "bias_act",
                format!("bias {:?} for {c} channels of x {:?}", b.shape(), x.shape()),
            ));
        }
        same_device("bias_act", &[x, b])?;
    }
    if clamp.is_some_and(|m| !(m >= 0.0)) || !(gain > 0.0) {
        return Err(Error::Invalid(format!(
            "bias_act: gain {gain} must be positive and clamp {clamp:?} non-negative"
        )));
    }
    if let Act::LeakyRelu(alpha) = act {
        if let Some(y) = pattern::apply(tape, x, b, alpha, gain, clamp)? {
            return Ok(y);
        }
    }
    let y = forward_raw(x, b, act, gain, clamp)?;
    let need_b = b.map(|b| tape.needs_grad(&[b]));
    let yc = y.clone();
    let inputs: Vec<&Tensor> = [x].into_iter().chain(b).collect();
    tape.record(&inputs, &y, move |dy| {
        let dx = backward_raw(dy, &yc, act, gain, clamp)?;
        let mut grads = Vec::new();
        if let Some(nb) = need_b {
            let db = nb
                .then(|| bias_grad_raw(&dx, outer, c, inner))
                .transpose()?;
            grads.push(Some(dx));
            grads.push(db);
        } else {
            grads.push(Some(dx));
        }
        Ok(grads)
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gradcheck, random_vec};

    const CASES: [(Act, f32, Option<f32>); 4] = [
        (Act::LRELU, std::f32::consts::SQRT_2, Some(0.5)),
        (Act::LRELU, std::f32::consts::SQRT_2, None),
        (Act::Linear, 1.0, Some(0.3)),
        (Act::Linear, 1.0, None),
    ];

    #[test]
    fn bias_act_gradients_match_finite_differences() {
        for (act, gain, clamp) in CASES {
            let (c, inner) = (3, 5);
            // Scaled so that the clamp bites for some elements, kept off its edge by construction.
            let x: Vec<f64> = random_vec(2 * c * inner, 1)
                .iter()
                .map(|&v| v as f64 * 0.9)
                .collect();
            let b: Vec<f64> = random_vec(c, 2).iter().map(|&v| v as f64 * 0.2).collect();
            let g: Vec<f64> = random_vec(x.len(), 3).iter().map(|&v| v as f64).collect();
            let loss = |x: &[f64], b: &[f64]| {
                cpu::bias_act(x, Some(b), c, inner, act, gain, clamp)
                    .iter()
                    .zip(&g)
                    .map(|(y, g)| y * g)
                    .sum::<f64>()
            };
            let y = cpu::bias_act(&x, Some(&b), c, inner, act, gain, clamp);
            let dx = cpu::bias_act_dx(&g, &y, act, gain, clamp);
            let mut db = vec![0.0; c];
            for (i, v) in dx.iter().enumerate() {
                db[i / inner % c] += v;
            }
            let what = format!("{act:?} gain {gain} clamp {clamp:?}");
            gradcheck(&format!("dx {what}"), |v| loss(v, &b), &x, &dx);
            gradcheck(&format!("db {what}"), |v| loss(&x, v), &b, &db);
        }
    }

    #[test]
    fn bias_act_on_every_device_matches_the_twin() {
        for device in devices() {
            for (act, gain, clamp) in CASES {
                for (shape, c, inner) in [
                    (vec![3usize, 5, 4, 6], 5, 24),
                    (vec![4, 7], 7, 1),
                    (vec![1, 1, 1, 1], 1, 1),
                    (vec![2, 33, 129], 33, 129),
                ] {
                    let n: usize = shape.iter().product();
                    let xv: Vec<f32> = random_vec(n, 4).iter().map(|v| v * 2.0).collect();
                    let bv = random_vec(c, 5);
                    let gv = random_vec(n, 6);
                    let x = Tensor::from_slice(&xv, &shape, &device).unwrap();
                    let b = Tensor::from_slice(&bv, &[c], &device).unwrap();
                    let mut tape = Tape::new();
                    tape.watch(&x);
                    tape.watch(&b);
                    let y = bias_act(&mut tape, &x, Some(&b), act, gain, clamp).unwrap();
                    let want = cpu::bias_act(&xv, Some(&bv), c, inner, act, gain, clamp);
                    let what = format!("{act:?} {clamp:?} {shape:?} on {device}");
                    assert_close(
                        &y.to_vec_f32().unwrap(),
                        &want,
                        1e-6,
                        1e-6,
                        &format!("y {what}"),
                    );
                    let grads = tape
                        .backward_with(&y, Tensor::from_slice(&gv, &shape, &device).unwrap())
                        .unwrap();
                    let dx = cpu::bias_act_dx(&gv, &want, act, gain, clamp);
                    assert_close(
                        &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                        &dx,
                        1e-6,
                        1e-6,
                        &format!("dx {what}"),
                    );
                    let mut db = vec![0.0f32; c];
                    for (i, v) in dx.iter().enumerate() {
                        db[i / inner % c] += v;
                    }
                    assert_close(
                        &grads.get(&b).unwrap().to_vec_f32().unwrap(),
                        &db,
                        1e-5,
                        1e-5,
                        &format!("db {what}"),
                    );
                }
            }
            // No bias: only x's gradient.
            let x = Tensor::from_slice(&[-1.0, 2.0], &[1, 2], &device).unwrap();
            let y = bias_act(&mut Tape::new(), &x, None, Act::LRELU, 2.0, None).unwrap();
            assert_close(&y.to_vec_f32().unwrap(), &[-0.4, 4.0], 1e-6, 0.0, "no bias");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let t = |s: &[usize]| Tensor::zeros(s, &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        assert!(bias_act(
            &mut tape,
            &t(&[2, 3]),
            Some(&t(&[2])),
            Act::Linear,
            1.0,
            None
        )
        .is_err());
        assert!(bias_act(&mut tape, &t(&[3]), None, Act::Linear, 1.0, None).is_err());
        assert!(bias_act(&mut tape, &t(&[2, 3]), None, Act::Linear, 0.0, None).is_err());
        assert!(bias_act(&mut tape, &t(&[2, 3]), None, Act::Linear, 1.0, Some(-1.0)).is_err());
        assert!(Act::from_name("relu").is_err());
        assert_eq!(Act::from_name("lrelu").unwrap(), Act::LRELU);
    }
}

/// Holding the leaky ReLUs' activation pattern fixed, for second derivatives by finite
/// differences (`train::gan::regularize`).
///
/// A network of leaky ReLUs is piecewise linear, and autograd's second derivative treats each
/// unit's slope as a constant (lrelu'' = 0). A finite difference of first-order gradients would
/// instead pick up every unit that changes sign between the two evaluations. Inside
/// [`record`], every `bias_act` with a leaky ReLU notes its slopes (1 or α per element); inside
/// [`replay`] it uses the noted slopes, in call order, as `clamp((x + b)·s·gain)` built from
/// recorded ops. Under a fixed pattern the network is smooth, and the difference equals
/// autograd's double backward.
pub mod pattern {
    use std::cell::RefCell;

    use crate::autograd::Tape;
    use crate::error::{Error, Result};
    use crate::ops::elementwise::{self as ew, Unary};
    use crate::tensor::Tensor;

    /// The slopes of every leaky ReLU one forward pass ran, in call order.
    #[derive(Clone, Default)]
    pub struct Pattern(Vec<Tensor>);

    struct Frame {
        slopes: Vec<Tensor>,
        next: usize,
        replay: bool,
    }

    thread_local! {
        static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
    }

    fn scoped<R>(frame: Frame, f: impl FnOnce() -> R) -> (R, Pattern) {
        FRAMES.with(|s| s.borrow_mut().push(frame));
        let r = f();
        // The frame pushed above (an empty pattern if `f` somehow popped it).
        let slopes = FRAMES
            .with(|s| s.borrow_mut().pop())
            .map(|frame| frame.slopes)
            .unwrap_or_default();
        (r, Pattern(slopes))
    }

    /// Runs `f` noting its activation pattern (the one an enclosing `replay` imposes, if any).
    pub fn record<R>(f: impl FnOnce() -> R) -> (R, Pattern) {
        scoped(
            Frame {
                slopes: Vec::new(),
                next: 0,
                replay: false,
            },
            f,
        )
    }

    /// Runs `f` with the activation pattern of `p` (the same network, the same call order).
    pub fn replay<R>(p: &Pattern, f: impl FnOnce() -> R) -> R {
        scoped(
            Frame {
                slopes: p.0.clone(),
                next: 0,
                replay: true,
            },
            f,
        )
        .0
    }

    /// The slopes imposed by the innermost replay, if any (advancing it).
    fn imposed(shape: &[usize]) -> Result<Option<Tensor>> {
        FRAMES.with(|s| {
            let mut s = s.borrow_mut();
            let Some(frame) = s.iter_mut().rev().find(|f| f.replay) else {
                return Ok(None);
            };
            let t = frame.slopes.get(frame.next).cloned().ok_or_else(|| {
                Error::Invalid("activation pattern: more leaky ReLUs than recorded".into())
            })?;
            frame.next += 1;
            if t.shape() != shape {
                return Err(Error::Invalid(format!(
                    "activation pattern: recorded slopes {:?} for an input {shape:?}",
                    t.shape()
                )));
            }
            Ok(Some(t))
        })
    }

    /// Whether a `record` or `replay` is running (a fused `bias_act` must then run unfused).
    pub(crate) fn active() -> bool {
        FRAMES.with(|s| !s.borrow().is_empty())
    }

    fn note(t: &Tensor) {
        FRAMES.with(|s| {
            for f in s.borrow_mut().iter_mut().filter(|f| !f.replay) {
                f.slopes.push(t.clone());
            }
        })
    }

    /// `bias_act` under a pattern: None when no pattern is active (the fused op runs).
    pub(super) fn apply(
        tape: &mut Tape,
        x: &Tensor,
        b: Option<&Tensor>,
        alpha: f32,
        gain: f32,
        clamp: Option<f32>,
    ) -> Result<Option<Tensor>> {
        if !active() {
            return Ok(None);
        }
        let pre = match b {
            Some(b) => ew::bias_add(tape, x, b, 1)?,
            None => ew::scale(tape, x, 1.0)?,
        };
        let slopes = match imposed(x.shape())? {
            Some(s) => s,
            // 1 where pre > 0, else α: leaky ReLU's derivative at pre (gain 1) times ones,
            // computed where pre lives (no copy to the host and back).
            None => {
                let ones = Tensor::full(1.0, pre.shape(), pre.device())?;
                let leaky = Unary::LeakyRelu {
                    slope: alpha,
                    gain: 1.0,
                };
                ew::unary_bwd_raw(leaky, &pre, &pre, &ones)?
            }
        };
        note(&slopes);
        let y = ew::mul(tape, &pre, &slopes)?;
        let y = ew::scale(tape, &y, gain)?;
        Ok(Some(match clamp {
            Some(c) => ew::clamp(tape, &y, -c, c)?,
            None => y,
        }))
    }
}
