//! Elementwise ops: unary activations and maths, same-shape add/sub/mul, bias-add with broadcast.
//!
//! Forward `y = f(x)`; backward `dx = f'(x) · dy` (each op's derivative in `cpu::unary_bwd`).
//! `leaky_relu(x; α, g) = g·(x > 0 ? x : αx)` (StyleGAN's `lrelu` with gain √2);
//! `gelu(x) = x·Φ(x)` (exact erf form, PyTorch's default); `quick_gelu(x) = x·σ(1.702x)` (CLIP);
//! `softplus(x) = log(1 + eˣ)`, linear above 20 as in PyTorch.
//! `bias_add(x, b, axis)`: x viewed as `[outer, C, inner]`, `y[o,c,r] = x[o,c,r] + b[c]`;
//! `db[c] = Σ_{o,r} dy[o,c,r]`.
//!
//! Memory traffic: forward reads x and writes y (8 B/element in f32), backward reads x, y, dy and
//! writes dx (16 B/element). Kernels: `kernels/elementwise.cu`, 256-thread blocks, grid-stride.

use cudarc::driver::PushKernelArg;
use rayon::prelude::*;

use super::{bf16_on_cpu, narrow, same_device, same_dtype, same_shape, split_at_axis, widen, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{
    alloc_storage, arg_buffer, arg_buffer_mut, kernel_for, launch, launch_1d, Device, Storage,
    Tensor,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Relu,
    LeakyRelu { slope: f32, gain: f32 },
    Gelu,
    QuickGelu,
    Sigmoid,
    Softplus,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Clamp { min: f32, max: f32 },
    Scale(f32),
    AddScalar(f32),
    Square,
}

impl Unary {
    /// (op code, a, b) as `kernels/elementwise.cu` reads them.
    pub(crate) fn code(self) -> (i32, f32, f32) {
        match self {
            Unary::Relu => (0, 0.0, 0.0),
            Unary::LeakyRelu { slope, gain } => (1, slope, gain),
            Unary::Gelu => (2, 0.0, 0.0),
            Unary::QuickGelu => (3, 0.0, 0.0),
            Unary::Sigmoid => (4, 0.0, 0.0),
            Unary::Softplus => (5, 0.0, 0.0),
            Unary::Exp => (6, 0.0, 0.0),
            Unary::Log => (7, 0.0, 0.0),
            Unary::Sqrt => (8, 0.0, 0.0),
            Unary::Rsqrt => (9, 0.0, 0.0),
            Unary::Clamp { min, max } => (10, min, max),
            Unary::Scale(s) => (11, s, 0.0),
            Unary::AddScalar(s) => (12, s, 0.0),
            Unary::Square => (13, 0.0, 0.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    /// Elementwise maximum (`torch.max(a, b)`).
    Max,
}

/// The CPU twins: plain scalar maths, generic so gradient checks run them in f64.
pub mod cpu {
    use super::{Binary, Real, Unary};

    fn sigmoid<T: Real>(x: T) -> T {
        T::one() / (T::one() + (-x).exp())
    }

    pub fn unary_fwd<T: Real>(op: Unary, x: T) -> T {
        let c = T::c;
        match op {
            Unary::Relu => x.max(T::zero()),
            Unary::LeakyRelu { slope, gain } => {
                (if x > T::zero() {
                    x
                } else {
                    c(slope as f64) * x
                }) * c(gain as f64)
            }
            Unary::Gelu => c(0.5) * x * (T::one() + (x * c(std::f64::consts::FRAC_1_SQRT_2)).erf()),
            Unary::QuickGelu => x * sigmoid(c(1.702) * x),
            Unary::Sigmoid => sigmoid(x),
            Unary::Softplus => {
                if x > c(20.0) {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Sqrt => x.sqrt(),
            Unary::Rsqrt => x.sqrt().recip(),
            Unary::Clamp { min, max } => x.max(c(min as f64)).min(c(max as f64)),
            Unary::Scale(s) => x * c(s as f64),
            Unary::AddScalar(s) => x + c(s as f64),
            Unary::Square => x * x,
        }
    }

    /// dL/dx given x, y = f(x) and dL/dy.
    pub fn unary_bwd<T: Real>(op: Unary, x: T, y: T, dy: T) -> T {
        let c = T::c;
        match op {
            Unary::Relu => {
                if x > T::zero() {
                    dy
                } else {
                    T::zero()
                }
            }
            Unary::LeakyRelu { slope, gain } => {
                dy * c(gain as f64)
                    * if x > T::zero() {
                        T::one()
                    } else {
                        c(slope as f64)
                    }
            }
            Unary::Gelu => {
                let cdf = c(0.5) * (T::one() + (x * c(std::f64::consts::FRAC_1_SQRT_2)).erf());
                let pdf = c(0.398_942_280_401_432_7) * (c(-0.5) * x * x).exp();
                dy * (cdf + x * pdf)
            }
            Unary::QuickGelu => {
                let s = sigmoid(c(1.702) * x);
                dy * (s + c(1.702) * x * s * (T::one() - s))
            }
            Unary::Sigmoid => dy * y * (T::one() - y),
            Unary::Softplus => {
                if x > c(20.0) {
                    dy
                } else {
                    dy * sigmoid(x)
                }
            }
            Unary::Exp => dy * y,
            Unary::Log => dy / x,
            Unary::Sqrt => dy * c(0.5) / y,
            Unary::Rsqrt => dy * c(-0.5) * y * y * y,
            Unary::Clamp { min, max } => {
                if x >= c(min as f64) && x <= c(max as f64) {
                    dy
                } else {
                    T::zero()
                }
            }
            Unary::Scale(s) => dy * c(s as f64),
            Unary::AddScalar(_) => dy,
            Unary::Square => dy * c(2.0) * x,
        }
    }

    pub fn binary<T: Real>(op: Binary, a: T, b: T) -> T {
        match op {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Max => a.max(b),
        }
    }

    /// (da, db) of `y = max(a, b)`: dy to the larger input, half to each on a tie.
    pub fn maximum_grad<T: Real>(a: T, b: T, dy: T) -> (T, T) {
        let share = if a > b {
            dy
        } else if a < b {
            T::zero()
        } else {
            dy * T::c(0.5)
        };
        (share, dy - share)
    }

    /// `dbias[c] = Σ dy[o, c, r]` over `[outer, C, inner]`.
    pub fn bias_grad<T: Real>(dy: &[T], outer: usize, channels: usize, inner: usize) -> Vec<T> {
        let mut db = vec![T::zero(); channels];
        for o in 0..outer {
            for (c, acc) in db.iter_mut().enumerate() {
                let row = &dy[(o * channels + c) * inner..][..inner];
                *acc = *acc + row.iter().copied().sum();
            }
        }
        db
    }
}

/// Applies `f` to every element of f32 CPU slices in parallel (zipped slices: no per-element
/// bounds checks or indexing through a table of slices).
fn cpu_map<const N: usize>(
    op: &'static str,
    xs: [&Tensor; N],
    f: impl Fn([f32; N]) -> f32 + Sync + Send,
) -> Result<Tensor> {
    let guards: Vec<_> = xs.iter().map(|t| t.storage()).collect();
    let s: Vec<&[f32]> = guards
        .iter()
        .map(|g| g.cpu_f32(op))
        .collect::<Result<_>>()?;
    const GRAIN: usize = 1 << 14;
    let y: Vec<f32> = match N {
        1 => s[0]
            .par_iter()
            .with_min_len(GRAIN)
            .map(|&a| f(std::array::from_fn(|_| a)))
            .collect(),
        2 => s[0]
            .par_iter()
            .zip(s[1])
            .with_min_len(GRAIN)
            .map(|(&a, &b)| f(std::array::from_fn(|k| if k == 0 { a } else { b })))
            .collect(),
        _ => s[0]
            .par_iter()
            .zip(s[1])
            .zip(s[2])
            .with_min_len(GRAIN)
            .map(|((&a, &b), &c)| f(std::array::from_fn(|k| [a, b, c][k])))
            .collect(),
    };
    Tensor::from_vec(y, xs[0].shape(), &Device::Cpu)
}

/// `y = op(x)` without recording.
pub(crate) fn unary_raw(op: Unary, x: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => cpu_map("unary", [x], |[v]| cpu::unary_fwd(op, v)),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let (code, a, b) = op.code();
            let xs = x.storage();
            let mut y = gpu.alloc::<f32>(n)?;
            let f = gpu.function("elementwise", "unary_fwd_f32")?;
            let nn = n as u64;
            // SAFETY: reads n inputs, writes n outputs.
            unsafe {
                gpu.stream
                    .launch_builder(&f)
                    .arg(xs.cuda_f32("unary")?)
                    .arg(&mut y)
                    .arg(&nn)
                    .arg(&code)
                    .arg(&a)
                    .arg(&b)
                    .launch(launch_1d(n))
            }
            .map_err(|e| crate::error::Error::cuda("unary_fwd_f32", e))?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// `dx = f'(x)·dy` without recording.
pub(crate) fn unary_bwd_raw(op: Unary, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => cpu_map("unary backward", [x, y, dy], |[xv, yv, g]| {
            cpu::unary_bwd(op, xv, yv, g)
        }),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let (code, a, b) = op.code();
            let (xs, ys, dys) = (x.storage(), y.storage(), dy.storage());
            let mut dx = gpu.alloc::<f32>(n)?;
            let f = gpu.function("elementwise", "unary_bwd_f32")?;
            let nn = n as u64;
            let op_name = "unary backward";
            // SAFETY: reads n elements of x, y, dy, writes n of dx.
            unsafe {
                gpu.stream
                    .launch_builder(&f)
                    .arg(xs.cuda_f32(op_name)?)
                    .arg(ys.cuda_f32(op_name)?)
                    .arg(dys.cuda_f32(op_name)?)
                    .arg(&mut dx)
                    .arg(&nn)
                    .arg(&code)
                    .arg(&a)
                    .arg(&b)
                    .launch(launch_1d(n))
            }
            .map_err(|e| Error::cuda("unary_bwd_f32", e))?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(dx),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// `y = op(x)`, recorded.
pub fn unary(tape: &mut Tape, op: Unary, x: &Tensor) -> Result<Tensor> {
    let y = unary_raw(op, x)?;
    let (xc, yc) = (x.clone(), y.clone());
    tape.record(&[x], &y, move |dy| {
        Ok(vec![Some(unary_bwd_raw(op, &xc, &yc, dy)?)])
    });
    Ok(y)
}

pub fn relu(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Relu, x)
}
pub fn leaky_relu(tape: &mut Tape, x: &Tensor, slope: f32, gain: f32) -> Result<Tensor> {
    unary(tape, Unary::LeakyRelu { slope, gain }, x)
}
pub fn gelu(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Gelu, x)
}
pub fn quick_gelu(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::QuickGelu, x)
}
pub fn sigmoid(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Sigmoid, x)
}
pub fn softplus(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Softplus, x)
}
pub fn exp(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Exp, x)
}
pub fn log(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Log, x)
}
pub fn sqrt(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Sqrt, x)
}
pub fn rsqrt(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Rsqrt, x)
}
pub fn clamp(tape: &mut Tape, x: &Tensor, min: f32, max: f32) -> Result<Tensor> {
    unary(tape, Unary::Clamp { min, max }, x)
}
pub fn scale(tape: &mut Tape, x: &Tensor, s: f32) -> Result<Tensor> {
    unary(tape, Unary::Scale(s), x)
}
pub fn add_scalar(tape: &mut Tape, x: &Tensor, s: f32) -> Result<Tensor> {
    unary(tape, Unary::AddScalar(s), x)
}
pub fn square(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    unary(tape, Unary::Square, x)
}

/// `y = a op b` for same-shape tensors, without recording.
pub(crate) fn binary_raw(op: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("binary", &[a, b])?;
    same_shape("binary", a, b)?;
    same_dtype("binary", &[a, b])?;
    if bf16_on_cpu(a) {
        return narrow(&binary_raw(op, &widen(a)?, &widen(b)?)?);
    }
    match a.device() {
        Device::Cpu => cpu_map("binary", [a, b], |[u, v]| cpu::binary(op, u, v)),
        Device::Cuda(gpu) => {
            let n = a.numel();
            let name = kernel_for("binary", a.dtype(), "binary_f32", "binary_bf16")?;
            let (sa, sb) = (a.storage(), b.storage());
            let mut y = alloc_storage(gpu, a.dtype(), n)?;
            let f = gpu.function("elementwise", name)?;
            let mut lb = gpu.stream.launch_builder(&f);
            arg_buffer(&mut lb, &sa, "binary")?;
            arg_buffer(&mut lb, &sb, "binary")?;
            arg_buffer_mut(&mut lb, &mut y, "binary")?;
            let (nn, code) = (n as u64, op as i32);
            lb.arg(&nn).arg(&code);
            // SAFETY: reads n of a and b, writes n of y, all of the kernel's dtype.
            unsafe { lb.launch(launch_1d(n)) }.map_err(|e| Error::cuda(name, e))?;
            Ok(Tensor::from_storage(y, a.shape(), a.device()))
        }
    }
}

pub(crate) fn add_raw(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_raw(Binary::Add, a, b)
}

pub(crate) fn mul_raw(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_raw(Binary::Mul, a, b)
}

pub(crate) fn scale_raw(x: &Tensor, s: f32) -> Result<Tensor> {
    unary_raw(Unary::Scale(s), x)
}

/// `y = x · s[0]` for a one-element f32 `s`, without recording; on the GPU the scale is read
/// there, so nothing waits for the device.
pub(crate) fn scale_by_raw(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    const OP: &str = "scale_by";
    match x.device() {
        Device::Cpu => scale_raw(x, s.scalar()?),
        Device::Cuda(gpu) => {
            let n = x.numel();
            let (xs, ss) = (x.storage(), s.storage());
            let mut y = gpu.alloc::<f32>(n)?;
            if n > 0 {
                let nn = n as u64;
                // SAFETY: reads n of x and s[0] (one element, checked by the callers), writes n of y.
                launch!(
                    gpu,
                    "elementwise",
                    "scale_by_scalar_f32",
                    launch_1d(n),
                    xs.cuda_f32(OP)?,
                    ss.cuda_f32(OP)?,
                    &mut y,
                    &nn
                )?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(y),
                x.shape(),
                x.device(),
            ))
        }
    }
}

/// `y = a + b` (same shape).
pub fn add(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = binary_raw(Binary::Add, a, b)?;
    tape.record(&[a, b], &y, |dy| {
        Ok(vec![Some(dy.clone()), Some(dy.clone())])
    });
    Ok(y)
}

/// `y = max(a, b)` elementwise (same shape), as `torch.max(a, b)`: the gradient goes to the
/// larger input, half to each where they tie.
pub fn maximum(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = binary_raw(Binary::Max, a, b)?;
    let (ac, bc) = (a.clone(), b.clone());
    tape.record(&[a, b], &y, move |dy| {
        let (da, db) = maximum_bwd_raw(&ac, &bc, dy)?;
        Ok(vec![Some(da), Some(db)])
    });
    Ok(y)
}

fn maximum_bwd_raw(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "maximum backward";
    match a.device() {
        Device::Cpu => {
            let (va, vb, vd) = (a.to_vec_f32()?, b.to_vec_f32()?, dy.to_vec_f32()?);
            let (da, db): (Vec<f32>, Vec<f32>) = va
                .iter()
                .zip(&vb)
                .zip(&vd)
                .map(|((&u, &v), &g)| cpu::maximum_grad(u, v, g))
                .unzip();
            Ok((
                Tensor::from_vec(da, a.shape(), a.device())?,
                Tensor::from_vec(db, a.shape(), a.device())?,
            ))
        }
        Device::Cuda(gpu) => {
            let n = a.numel();
            let (sa, sb, sd) = (a.storage(), b.storage(), dy.storage());
            let mut da = gpu.alloc::<f32>(n)?;
            let mut db = gpu.alloc::<f32>(n)?;
            if n > 0 {
                let nn = n as u64;
                // SAFETY: a, b, dy, da and db all hold n floats (same shape, checked forward).
                crate::tensor::launch!(
                    gpu,
                    "elementwise",
                    "maximum_bwd_f32",
                    launch_1d(n),
                    sa.cuda_f32(OP)?,
                    sb.cuda_f32(OP)?,
                    sd.cuda_f32(OP)?,
                    &mut da,
                    &mut db,
                    &nn
                )?;
            }
            Ok((
                Tensor::from_storage(Storage::CudaF32(da), a.shape(), a.device()),
                Tensor::from_storage(Storage::CudaF32(db), a.shape(), a.device()),
            ))
        }
    }
}

/// `y = a − b` (same shape).
pub fn sub(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = binary_raw(Binary::Sub, a, b)?;
    tape.record(&[a, b], &y, |dy| {
        Ok(vec![Some(dy.clone()), Some(scale_raw(dy, -1.0)?)])
    });
    Ok(y)
}

/// `y = a ⊙ b` (same shape); `da = dy ⊙ b`, `db = dy ⊙ a`.
pub fn mul(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = binary_raw(Binary::Mul, a, b)?;
    let (ac, bc) = (a.clone(), b.clone());
    tape.record(&[a, b], &y, move |dy| {
        Ok(vec![Some(mul_raw(dy, &bc)?), Some(mul_raw(dy, &ac)?)])
    });
    Ok(y)
}

/// `y = s·x` for a one-element tensor `s` (a learned scalar, e.g. CLIP's `exp(logit_scale)`);
/// `dx = s·dy`, `ds = Σ x ⊙ dy`. On the GPU `s` is read by the kernels (`scale_by_scalar_f32`),
/// so neither pass waits for the device; f32 only there.
pub fn scale_by(tape: &mut Tape, x: &Tensor, s: &Tensor) -> Result<Tensor> {
    same_device("scale_by", &[x, s])?;
    if s.numel() != 1 {
        return Err(Error::shape(
            "scale_by",
            format!("the scale must have one element, got {:?}", s.shape()),
        ));
    }
    let y = scale_by_raw(x, s)?;
    let (xc, sc) = (x.clone(), s.clone());
    tape.record(&[x, s], &y, move |dy| {
        let dx = scale_by_raw(dy, &sc)?;
        let ds = crate::ops::reduce::sum_all_raw(&mul_raw(&xc, dy)?, 1.0)?.reshaped(sc.shape())?;
        Ok(vec![Some(dx), Some(ds)])
    });
    Ok(y)
}

fn bias_layout(x: &Tensor, bias: &Tensor, axis: isize) -> Result<(usize, usize, usize)> {
    let axis = x.axis(axis)?;
    let (outer, c, inner) = split_at_axis(x.shape(), axis);
    if bias.numel() != c || bias.rank() != 1 {
        return Err(Error::shape(
            "bias_add",
            format!("bias {:?} for axis {axis} of {:?}", bias.shape(), x.shape()),
        ));
    }
    Ok((outer, c, inner))
}

pub(crate) fn bias_add_raw(x: &Tensor, bias: &Tensor, axis: isize) -> Result<Tensor> {
    same_device("bias_add", &[x, bias])?;
    same_dtype("bias_add", &[x, bias])?;
    let (_, c, inner) = bias_layout(x, bias, axis)?;
    if bf16_on_cpu(x) {
        return narrow(&bias_add_raw(&widen(x)?, &widen(bias)?, axis)?);
    }
    match x.device() {
        Device::Cpu => {
            let (xs, bs) = (x.storage(), bias.storage());
            let (xv, bv) = (xs.cpu_f32("bias_add")?, bs.cpu_f32("bias_add")?);
            let y: Vec<f32> = xv
                .par_iter()
                .enumerate()
                .with_min_len(4096)
                .map(|(i, v)| v + bv[(i / inner) % c])
                .collect();
            Tensor::from_vec(y, x.shape(), x.device())
        }
        Device::Cuda(gpu) => {
            let n = x.numel();
            let name = kernel_for("bias_add", x.dtype(), "bias_add_f32", "bias_add_bf16")?;
            let (xs, bs) = (x.storage(), bias.storage());
            let mut y = alloc_storage(gpu, x.dtype(), n)?;
            let f = gpu.function("elementwise", name)?;
            let mut lb = gpu.stream.launch_builder(&f);
            arg_buffer(&mut lb, &xs, "bias_add")?;
            arg_buffer(&mut lb, &bs, "bias_add")?;
            arg_buffer_mut(&mut lb, &mut y, "bias_add")?;
            let (nn, cc, ii) = (n as u64, c as u32, inner.max(1) as u32);
            lb.arg(&nn).arg(&cc).arg(&ii);
            // SAFETY: reads n of x and C of bias, writes n of y, all of the kernel's dtype.
            unsafe { lb.launch(launch_1d(n)) }.map_err(|e| Error::cuda(name, e))?;
            Ok(Tensor::from_storage(y, x.shape(), x.device()))
        }
    }
}

/// `db[c] = Σ_{o,r} dy[o,c,r]` for dy viewed as `[outer, C, inner]`.
pub(crate) fn bias_grad_raw(dy: &Tensor, outer: usize, c: usize, inner: usize) -> Result<Tensor> {
    match dy.device() {
        Device::Cpu => {
            let s = dy.storage();
            Tensor::from_vec(
                cpu::bias_grad(s.cpu_f32("bias_add backward")?, outer, c, inner),
                &[c],
                dy.device(),
            )
        }
        Device::Cuda(gpu) => {
            let s = dy.storage();
            let mut db = gpu.alloc::<f32>(c)?;
            let f = gpu.function("elementwise", "bias_grad_f32")?;
            let (o, cc, ii) = (outer as u32, c as u32, inner as u32);
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (c.max(1) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: one block per channel reads its outer×inner slice of dy, writes db[c].
            unsafe {
                gpu.stream
                    .launch_builder(&f)
                    .arg(s.cuda_f32("bias_add backward")?)
                    .arg(&mut db)
                    .arg(&o)
                    .arg(&cc)
                    .arg(&ii)
                    .launch(cfg)
            }
            .map_err(|e| Error::cuda("bias_grad_f32", e))?;
            Ok(Tensor::from_storage(
                Storage::CudaF32(db),
                &[c],
                dy.device(),
            ))
        }
    }
}

/// In place: NaN → 0, then every value clamped to [−bound, bound] (StyleGAN2-ADA's
/// `misc.nan_to_num` with nan = 0, posinf = bound, neginf = −bound, which clamps finite values
/// too). On the GPU one kernel, with nothing read back. Not recorded.
pub fn nan_to_num_(x: &Tensor, bound: f32) -> Result<()> {
    const OP: &str = "nan_to_num";
    let fix = |v: f32| {
        if v.is_nan() {
            0.0
        } else {
            v.clamp(-bound, bound)
        }
    };
    let n = x.numel();
    let mut s = x.storage_mut();
    match x.device() {
        Device::Cpu => s.cpu_f32_mut(OP)?[..n]
            .iter_mut()
            .for_each(|v| *v = fix(*v)),
        Device::Cuda(gpu) => {
            if n > 0 {
                let nn = n as u64;
                // SAFETY: rewrites the n floats of x in place.
                launch!(
                    gpu,
                    "elementwise",
                    "nan_to_num_f32",
                    launch_1d(n),
                    s.cuda_f32_mut(OP)?,
                    &nn,
                    &bound
                )?;
            }
        }
    }
    Ok(())
}

/// `y = x + bias` broadcast along `axis` of x (e.g. axis 1 of a conv's `[B, C, L]`, −1 of a linear's `[N, C]`).
pub fn bias_add(tape: &mut Tape, x: &Tensor, bias: &Tensor, axis: isize) -> Result<Tensor> {
    let y = bias_add_raw(x, bias, axis)?;
    let (outer, c, inner) = bias_layout(x, bias, axis)?;
    tape.record(&[x, bias], &y, move |dy| {
        Ok(vec![
            Some(dy.clone()),
            Some(bias_grad_raw(dy, outer, c, inner)?),
        ])
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, parity_sizes, random_vec};

    #[test]
    fn nan_to_num_zeroes_nans_and_clamps_everything_else_on_every_device() {
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            2e5,
            -2e5,
            2.5,
            -0.0,
        ];
        // 1031 values: the specials, then random ones scaled past the bound in places.
        let mut v: Vec<f32> = random_vec(1031, 61).iter().map(|x| x * 1e5).collect();
        v[..special.len()].copy_from_slice(&special);
        for device in devices() {
            let x = Tensor::from_vec(v.clone(), &[v.len()], &device).unwrap();
            nan_to_num_(&x, 1e5).unwrap();
            let got = x.to_vec_f32().unwrap();
            assert_eq!(got[..6], [0.0, 1e5, -1e5, 1e5, -1e5, 2.5], "on {device}");
            for (g, w) in got.iter().zip(&v).skip(special.len()) {
                assert_eq!(*g, w.clamp(-1e5, 1e5), "on {device}");
            }
        }
    }

    const ALL: [Unary; 14] = [
        Unary::Relu,
        Unary::LeakyRelu {
            slope: 0.2,
            gain: std::f32::consts::SQRT_2,
        },
        Unary::Gelu,
        Unary::QuickGelu,
        Unary::Sigmoid,
        Unary::Softplus,
        Unary::Exp,
        Unary::Log,
        Unary::Sqrt,
        Unary::Rsqrt,
        Unary::Clamp {
            min: -0.5,
            max: 0.7,
        },
        Unary::Scale(-1.5),
        Unary::AddScalar(0.25),
        Unary::Square,
    ];

    /// Inputs in the op's domain, away from kinks where a finite difference is meaningless.
    fn domain_inputs(op: Unary, n: usize, seed: u64) -> Vec<f32> {
        let mut v = random_vec(n, seed);
        for x in v.iter_mut() {
            if matches!(op, Unary::Log | Unary::Sqrt | Unary::Rsqrt) {
                *x = x.abs() + 0.2;
            }
            if matches!(op, Unary::Relu | Unary::LeakyRelu { .. }) && x.abs() < 0.05 {
                *x += 0.1;
            }
            if let Unary::Clamp { min, max } = op {
                for edge in [min, max] {
                    if (*x - edge).abs() < 0.05 {
                        *x += 0.1;
                    }
                }
            }
        }
        v
    }

    #[test]
    fn unary_gradients_match_finite_differences() {
        for op in ALL {
            let x: Vec<f64> = domain_inputs(op, 37, 1)
                .iter()
                .map(|&v| v as f64 * 3.0)
                .collect();
            let x: Vec<f64> = x
                .iter()
                .map(|&v| {
                    if matches!(op, Unary::Log | Unary::Sqrt | Unary::Rsqrt) {
                        v.abs() + 0.2
                    } else {
                        v
                    }
                })
                .collect();
            let w: Vec<f64> = random_vec(37, 2).iter().map(|&v| v as f64).collect();
            // loss = Σ w ⊙ f(x)
            let loss = |x: &[f64]| {
                x.iter()
                    .zip(&w)
                    .map(|(&xi, &wi)| wi * cpu::unary_fwd(op, xi))
                    .sum::<f64>()
            };
            let analytic: Vec<f64> = x
                .iter()
                .zip(&w)
                .map(|(&xi, &wi)| cpu::unary_bwd(op, xi, cpu::unary_fwd(op, xi), wi))
                .collect();
            gradcheck(&format!("{op:?}"), loss, &x, &analytic);
        }
    }

    #[test]
    fn unary_backward_through_tape_matches_twin() {
        for device in devices() {
            for op in ALL {
                let xv = domain_inputs(op, 33, 3);
                let x = Tensor::from_slice(&xv, &[3, 11], &device).unwrap();
                let mut tape = Tape::new();
                tape.watch(&x);
                let y = unary(&mut tape, op, &x).unwrap();
                let w = Tensor::from_vec(random_vec(33, 4), &[3, 11], &device).unwrap();
                let yw = mul(&mut tape, &y, &w).unwrap();
                let loss = crate::ops::reduce::sum_all(&mut tape, &yw).unwrap();
                let g = tape.backward(&loss).unwrap();
                let got = g.get(&x).unwrap().to_vec_f32().unwrap();
                let want: Vec<f32> = xv
                    .iter()
                    .zip(w.to_vec_f32().unwrap())
                    .map(|(&xi, wi)| cpu::unary_bwd(op, xi, cpu::unary_fwd(op, xi), wi))
                    .collect();
                assert_close(&got, &want, 1e-5, 1e-6, &format!("{op:?} on {device}"));
            }
        }
    }

    #[test]
    fn unary_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for op in ALL {
            for n in parity_sizes() {
                let xv = domain_inputs(op, n, n as u64);
                let dyv = random_vec(n, 7);
                let run = |d: &Device| {
                    let x = Tensor::from_slice(&xv, &[n], d).unwrap();
                    let dy = Tensor::from_slice(&dyv, &[n], d).unwrap();
                    let y = unary_raw(op, &x).unwrap();
                    let dx = unary_bwd_raw(op, &x, &y, &dy).unwrap();
                    (y.to_vec_f32().unwrap(), dx.to_vec_f32().unwrap())
                };
                let (yc, dxc) = run(&Device::Cpu);
                let (yg, dxg) = run(&gpu);
                assert_close(&yg, &yc, 1e-5, 1e-6, &format!("{op:?} forward n={n}"));
                assert_close(&dxg, &dxc, 1e-5, 1e-6, &format!("{op:?} backward n={n}"));
            }
        }
    }

    #[test]
    fn maximum_routes_the_gradient_to_the_larger_input() {
        for device in devices() {
            // Three ties (equal entries) among random values.
            let av = random_vec(70, 11);
            let mut bv = random_vec(70, 12);
            bv[..3].copy_from_slice(&av[..3]);
            let gv = random_vec(70, 13);
            let a = Tensor::from_slice(&av, &[7, 10], &device).unwrap();
            let b = Tensor::from_slice(&bv, &[7, 10], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&a);
            tape.watch(&b);
            let y = maximum(&mut tape, &a, &b).unwrap();
            let want: Vec<f32> = av.iter().zip(&bv).map(|(u, v)| u.max(*v)).collect();
            assert_eq!(y.to_vec_f32().unwrap(), want, "on {device}");
            let g = tape
                .backward_with(&y, Tensor::from_slice(&gv, &[7, 10], &device).unwrap())
                .unwrap();
            let (da, db): (Vec<f32>, Vec<f32>) = (0..70)
                .map(|i| cpu::maximum_grad(av[i], bv[i], gv[i]))
                .unzip();
            assert_eq!(
                g.get(&a).unwrap().to_vec_f32().unwrap(),
                da,
                "da on {device}"
            );
            assert_eq!(
                g.get(&b).unwrap().to_vec_f32().unwrap(),
                db,
                "db on {device}"
            );
            assert_eq!(da[0], 0.5 * gv[0]);
        }
    }

    #[test]
    fn binary_and_bias_gradients() {
        for device in devices() {
            let (av, bv, biasv) = (random_vec(60, 1), random_vec(60, 2), random_vec(4, 3));
            let a = Tensor::from_slice(&av, &[3, 4, 5], &device).unwrap();
            let b = Tensor::from_slice(&bv, &[3, 4, 5], &device).unwrap();
            let bias = Tensor::from_slice(&biasv, &[4], &device).unwrap();
            let mut tape = Tape::new();
            for t in [&a, &b, &bias] {
                tape.watch(t);
            }
            // loss = Σ ((a − b) ⊙ a + b + bias[c])
            let d = sub(&mut tape, &a, &b).unwrap();
            let p = mul(&mut tape, &d, &a).unwrap();
            let s = add(&mut tape, &p, &b).unwrap();
            let y = bias_add(&mut tape, &s, &bias, 1).unwrap();
            let loss = crate::ops::reduce::sum_all(&mut tape, &y).unwrap();
            let g = tape.backward(&loss).unwrap();
            let da: Vec<f32> = av.iter().zip(&bv).map(|(a, b)| 2.0 * a - b).collect();
            let db: Vec<f32> = av.iter().map(|a| 1.0 - a).collect();
            assert_close(
                &g.get(&a).unwrap().to_vec_f32().unwrap(),
                &da,
                1e-5,
                1e-6,
                "da",
            );
            assert_close(
                &g.get(&b).unwrap().to_vec_f32().unwrap(),
                &db,
                1e-5,
                1e-6,
                "db",
            );
            assert_close(
                &g.get(&bias).unwrap().to_vec_f32().unwrap(),
                &[15.0; 4],
                1e-5,
                1e-6,
                "dbias",
            );
            let want_y: Vec<f32> = (0..60)
                .map(|i| (av[i] - bv[i]) * av[i] + bv[i] + biasv[(i / 5) % 4])
                .collect();
            assert_close(
                &y.to_vec_f32().unwrap(),
                &want_y,
                1e-5,
                1e-6,
                "bias_add forward",
            );
        }
    }

    #[test]
    fn binary_and_bias_cuda_match_cpu() {
        let Some(gpu) = gpu() else { return };
        for n in parity_sizes() {
            let shape = [n, 3];
            let (av, bv, biasv) = (random_vec(3 * n, 1), random_vec(3 * n, 2), random_vec(3, 3));
            let run = |d: &Device| {
                let a = Tensor::from_slice(&av, &shape, d).unwrap();
                let b = Tensor::from_slice(&bv, &shape, d).unwrap();
                let bias = Tensor::from_slice(&biasv, &[3], d).unwrap();
                let mut out = Vec::new();
                for op in [Binary::Add, Binary::Sub, Binary::Mul, Binary::Max] {
                    out.extend(binary_raw(op, &a, &b).unwrap().to_vec_f32().unwrap());
                }
                out.extend(bias_add_raw(&a, &bias, -1).unwrap().to_vec_f32().unwrap());
                out.extend(bias_grad_raw(&a, n, 3, 1).unwrap().to_vec_f32().unwrap());
                out
            };
            assert_close(
                &run(&gpu),
                &run(&Device::Cpu),
                1e-5,
                1e-5,
                &format!("binary/bias n={n}"),
            );
        }
    }

    /// `L = Σ r ⊙ (s·x)`: the tape's dL/dx and dL/ds against central differences (L is linear
    /// in each, so f32 differences are exact up to rounding), on every device.
    #[test]
    fn scale_by_gradients_match_central_differences() {
        let (xv, rv) = (random_vec(37, 1), random_vec(37, 2));
        let loss = |x: &[f32], s: f32| -> f64 {
            x.iter().zip(&rv).map(|(&x, &r)| (s * x * r) as f64).sum()
        };
        for device in devices() {
            let x = Tensor::from_slice(&xv, &[37], &device).unwrap();
            let s = Tensor::from_vec(vec![1.7], &[], &device).unwrap();
            let r = Tensor::from_slice(&rv, &[37], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            tape.watch(&s);
            let y = scale_by(&mut tape, &x, &s).unwrap();
            let yr = mul(&mut tape, &y, &r).unwrap();
            let l = crate::ops::reduce::sum_all(&mut tape, &yr).unwrap();
            let grads = tape.backward(&l).unwrap();
            let ds = grads.get(&s).unwrap().scalar().unwrap() as f64;
            let e = 1e-2;
            let want = (loss(&xv, 1.7 + e) - loss(&xv, 1.7 - e)) / (2.0 * e as f64);
            assert!(
                (ds - want).abs() <= 1e-4 * want.abs().max(1.0),
                "ds {ds} vs {want} on {device}"
            );
            let dx = grads.get(&x).unwrap().to_vec_f32().unwrap();
            for i in [0, 17, 36] {
                let (mut up, mut down) = (xv.clone(), xv.clone());
                up[i] += e;
                down[i] -= e;
                let want = (loss(&up, 1.7) - loss(&down, 1.7)) / (2.0 * e as f64);
                assert!(
                    (dx[i] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "dx[{i}] {} vs {want} on {device}",
                    dx[i]
                );
            }
        }
        let two = Tensor::zeros(&[2], &Device::Cpu).unwrap();
        let err = scale_by(&mut Tape::new(), &two, &two)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one element"), "{err}");
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let a = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
        let b = Tensor::zeros(&[3, 2], &Device::Cpu).unwrap();
        let err = add(&mut Tape::new(), &a, &b).unwrap_err().to_string();
        assert!(err.contains("[2, 3] vs [3, 2]"), "{err}");
        let bias = Tensor::zeros(&[4], &Device::Cpu).unwrap();
        assert!(bias_add(&mut Tape::new(), &a, &bias, 1).is_err());
    }

    /// bf16 add and bias add: GPU kernels against the CPU path on the same bf16 values.
    #[test]
    fn bf16_add_and_bias_add_cuda_match_cpu() {
        for n in parity_sizes() {
            let t =
                |seed| Tensor::from_vec(random_vec(n * 3, seed), &[n, 3], &Device::Cpu).unwrap();
            crate::testing::bf16_parity(&format!("add [{n}, 3]"), &[t(1), t(2)], 1e-2, 1e-3, |x| {
                add(&mut Tape::inference(), &x[0], &x[1])
            });
            let bias = Tensor::from_vec(random_vec(3, 3), &[3], &Device::Cpu).unwrap();
            crate::testing::bf16_parity(
                &format!("bias_add [{n}, 3]"),
                &[t(4), bias],
                1e-2,
                1e-3,
                |x| bias_add(&mut Tape::inference(), &x[0], &x[1], -1),
            );
        }
        let (a, b) = (
            Tensor::zeros(&[2], &Device::Cpu).unwrap(),
            Tensor::zeros(&[2], &Device::Cpu)
                .unwrap()
                .to_dtype(crate::tensor::DType::BF16)
                .unwrap(),
        );
        let err = add(&mut Tape::new(), &a, &b).unwrap_err().to_string();
        assert!(err.contains("f32 and bf16"), "{err}");
    }
}
