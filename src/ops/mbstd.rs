//! Minibatch standard deviation: StyleGAN2's `MinibatchStdLayer` (the discriminator epilogue's
//! first op), f32.
//!
//! x `[N, C, H, W]`, group size `G = min(group_size, N)` (N must be a multiple of G), F channel
//! groups of `c = C/F` channels. The minibatch splits into G *strided* slots: slot g holds samples
//! `{g·n + j}` for `n = N/G` (the reference's `x.reshape(G, -1, F, c, H, W)`), so the statistic of
//! sample s is shared with `s ± n, s ± 2n, …`:
//! `μ = mean_g x[g·n + j]`, `σ = √(mean_g (x − μ)² + 1e-8)`, `stat[j, f] = mean_{ch in f, p} σ`,
//! `y = cat([x, stat[s mod n, f] over every pixel], dim 1)`: `[N, C + F, H, W]`.
//!
//! Backward: `dstat[j, f] = Σ_{g, p} dy[g·n + j, C + f, p]` and
//! `dx = dy[:, :C] + dstat[j, f]/(c·H·W) · (x − μ)/(G·σ)` (μ's own derivative sums to zero).
//!
//! Cost: tiny (the 4×4 epilogue). Kernels: `kernels/mbstd.cu`, a block per statistic.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::{same_device, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::tensor::{launch_1d, Device, Storage, Tensor};

/// The checked sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mbstd {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub group: usize,
    pub f: usize,
}

impl Mbstd {
    pub fn new(x: &[usize], group_size: usize, num_channels: usize) -> Result<Mbstd> {
        let err = |d: String| Err(Error::shape("minibatch_stddev", d));
        let &[n, c, h, w] = x else {
            return err(format!("x must be [N, C, H, W], got {x:?}"));
        };
        let group = group_size.min(n);
        if group == 0 || n % group != 0 {
            return err(format!(
                "a batch of {n} does not split into groups of {group} (the reference needs N to be a multiple of min(group size, N))"
            ));
        }
        if num_channels == 0 || c % num_channels != 0 {
            return err(format!(
                "{c} channels do not split into {num_channels} statistics"
            ));
        }
        Ok(Mbstd {
            n,
            c,
            hw: h * w,
            group,
            f: num_channels,
        })
    }

    fn slots(&self) -> usize {
        self.n / self.group
    }
    fn at(&self, s: usize, ch: usize, p: usize) -> usize {
        (s * self.c + ch) * self.hw + p
    }
}

/// The CPU twins, generic so gradient checks run them in f64.
pub mod cpu {
    use super::*;

    /// (μ, σ) over the group of slot j at (ch, p).
    fn moments<T: Real>(x: &[T], d: &Mbstd, j: usize, ch: usize, p: usize) -> (T, T) {
        let (n, g) = (d.slots(), T::c(d.group as f64));
        let mu = (0..d.group).fold(T::zero(), |a, k| a + x[d.at(k * n + j, ch, p)]) / g;
        let var = (0..d.group).fold(T::zero(), |a, k| {
            let v = x[d.at(k * n + j, ch, p)] - mu;
            a + v * v
        }) / g;
        (mu, (var + T::c(1e-8)).sqrt())
    }

    pub fn stats<T: Real>(x: &[T], d: &Mbstd) -> Vec<T> {
        let cg = d.c / d.f;
        let mut stat = vec![T::zero(); d.slots() * d.f];
        for j in 0..d.slots() {
            for f in 0..d.f {
                let mut acc = T::zero();
                for ch in f * cg..(f + 1) * cg {
                    for p in 0..d.hw {
                        acc = acc + moments(x, d, j, ch, p).1;
                    }
                }
                stat[j * d.f + f] = acc / T::c((cg * d.hw) as f64);
            }
        }
        stat
    }

    pub fn mbstd<T: Real>(x: &[T], d: &Mbstd) -> Vec<T> {
        let stat = stats(x, d);
        let cf = d.c + d.f;
        let mut y = vec![T::zero(); d.n * cf * d.hw];
        for s in 0..d.n {
            for ch in 0..cf {
                for p in 0..d.hw {
                    y[(s * cf + ch) * d.hw + p] = if ch < d.c {
                        x[d.at(s, ch, p)]
                    } else {
                        stat[(s % d.slots()) * d.f + ch - d.c]
                    };
                }
            }
        }
        y
    }

    pub fn mbstd_dx<T: Real>(x: &[T], dy: &[T], d: &Mbstd) -> Vec<T> {
        let (cf, cg, n) = (d.c + d.f, d.c / d.f, d.slots());
        let mut dstat = vec![T::zero(); n * d.f];
        for s in 0..d.n {
            for f in 0..d.f {
                for p in 0..d.hw {
                    let at = (s % n) * d.f + f;
                    dstat[at] = dstat[at] + dy[(s * cf + d.c + f) * d.hw + p];
                }
            }
        }
        let mut dx = vec![T::zero(); x.len()];
        for s in 0..d.n {
            for ch in 0..d.c {
                for p in 0..d.hw {
                    let (mu, sigma) = moments(x, d, s % n, ch, p);
                    let g = dstat[(s % n) * d.f + ch / cg] / T::c((cg * d.hw) as f64);
                    let i = d.at(s, ch, p);
                    dx[i] = dy[(s * cf + ch) * d.hw + p]
                        + g * (x[i] - mu) / (T::c(d.group as f64) * sigma);
                }
            }
        }
        dx
    }
}

/// `struct Mbstd` of `kernels/mbstd.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Args {
    n: i32,
    c: i32,
    hw: i32,
    g: i32,
    f: i32,
}

// SAFETY: #[repr(C)] i32s, the CUDA struct's layout.
unsafe impl DeviceRepr for Args {}

fn args(d: &Mbstd) -> Result<Args> {
    if (d.n * (d.c + d.f) * d.hw) >= 1 << 31 {
        return Err(Error::shape(
            "minibatch_stddev",
            format!("{d:?} is too large for the CUDA kernels"),
        ));
    }
    Ok(Args {
        n: d.n as i32,
        c: d.c as i32,
        hw: d.hw as i32,
        g: d.group as i32,
        f: d.f as i32,
    })
}

fn block_per_stat(d: &Mbstd) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((d.slots() * d.f).clamp(1, 65535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs a kernel writing `len` floats; `inputs` are its leading buffer arguments.
fn launch_kernel(
    x: &Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    len: usize,
    cfg: LaunchConfig,
    d: &Mbstd,
) -> Result<Tensor> {
    const OP: &str = "minibatch_stddev";
    let Device::Cuda(gpu) = x.device() else {
        return Err(Error::Invalid(format!("{OP}: {name} needs a CUDA tensor")));
    };
    let a = args(d)?;
    let guards: Vec<_> = inputs.iter().map(|t| t.storage()).collect();
    let slices = guards
        .iter()
        .map(|g| g.cuda_f32(OP))
        .collect::<Result<Vec<_>>>()?;
    let mut out = gpu.alloc::<f32>(len)?;
    if len > 0 {
        let f = gpu.function("mbstd", name)?;
        let mut lb = gpu.stream.launch_builder(&f);
        for s in &slices {
            lb.arg(*s);
        }
        lb.arg(&mut out).arg(&a);
        // SAFETY: the inputs are x [N, C, HW], dy [N, C + F, HW] and stat [n, F] as the kernel
        // expects (shapes checked by Mbstd::new and the callers); each output index is written once.
        unsafe { lb.launch(cfg) }.map_err(|e| Error::cuda(name, e))?;
    }
    Ok(Tensor::from_storage(
        Storage::CudaF32(out),
        &[len],
        x.device(),
    ))
}

/// `cat([x, minibatch stddev], dim 1)` as the reference's `MinibatchStdLayer(group_size,
/// num_channels)`. Recorded.
pub fn minibatch_stddev(
    tape: &mut Tape,
    x: &Tensor,
    group_size: usize,
    num_channels: usize,
) -> Result<Tensor> {
    const OP: &str = "minibatch_stddev";
    let d = Mbstd::new(x.shape(), group_size, num_channels)?;
    let s = x.shape();
    let y_shape = [s[0], s[1] + num_channels, s[2], s[3]];
    let y = match x.device() {
        Device::Cpu => Tensor::from_vec(
            cpu::mbstd(x.storage().cpu_f32(OP)?, &d),
            &y_shape,
            x.device(),
        )?,
        Device::Cuda(_) => {
            let stat = launch_kernel(
                x,
                "mbstd_stat_f32",
                &[x],
                d.slots() * d.f,
                block_per_stat(&d),
                &d,
            )?;
            let len = d.n * (d.c + d.f) * d.hw;
            launch_kernel(x, "mbstd_fwd_f32", &[x, &stat], len, launch_1d(len), &d)?
                .reshaped(&y_shape)?
        }
    };
    let xc = x.clone();
    tape.record(&[x], &y, move |dy| {
        let x_shape = xc.shape().to_vec();
        let dx = match xc.device() {
            Device::Cpu => Tensor::from_vec(
                cpu::mbstd_dx(xc.storage().cpu_f32(OP)?, dy.storage().cpu_f32(OP)?, &d),
                &x_shape,
                xc.device(),
            )?,
            Device::Cuda(_) => {
                let dstat = launch_kernel(
                    &xc,
                    "mbstd_dstat_f32",
                    &[dy],
                    d.slots() * d.f,
                    block_per_stat(&d),
                    &d,
                )?;
                let len = xc.numel();
                launch_kernel(
                    &xc,
                    "mbstd_bwd_f32",
                    &[&xc, dy, &dstat],
                    len,
                    launch_1d(len),
                    &d,
                )?
                .reshaped(&x_shape)?
            }
        };
        Ok(vec![Some(dx)])
    });
    same_device(OP, &[x, &y])?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gradcheck, random_vec};

    #[test]
    fn mbstd_gradient_matches_finite_differences() {
        for (shape, g, f) in [
            ([8, 6, 2, 2], 4, 1),
            ([4, 4, 3, 1], 4, 2),
            ([6, 3, 2, 2], 2, 1),
            ([2, 5, 1, 3], 4, 1),
        ] {
            let d = Mbstd::new(&shape, g, f).unwrap();
            let x: Vec<f64> = random_vec(shape.iter().product(), 1)
                .iter()
                .map(|&v| v as f64)
                .collect();
            let dy: Vec<f64> = random_vec(d.n * (d.c + d.f) * d.hw, 2)
                .iter()
                .map(|&v| v as f64)
                .collect();
            let loss = |x: &[f64]| {
                cpu::mbstd(x, &d)
                    .iter()
                    .zip(&dy)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            };
            gradcheck(&format!("{d:?}"), loss, &x, &cpu::mbstd_dx(&x, &dy, &d));
        }
    }

    #[test]
    fn mbstd_groups_are_strided_like_the_reference() {
        // N = 4, G = 2: slots {0, 2} and {1, 3}. Sample values 0, 10, 2, 10: slot 0 has σ = 1,
        // slot 1 has σ = √1e-8.
        let x = [0.0f64, 10.0, 2.0, 10.0];
        let d = Mbstd::new(&[4, 1, 1, 1], 2, 1).unwrap();
        let y = cpu::mbstd(&x, &d);
        assert!(
            (y[1] - 1.0).abs() < 1e-8 && (y[5] - 1.0).abs() < 1e-8,
            "{y:?}"
        );
        assert!(y[3] < 1e-3 && y[7] < 1e-3, "{y:?}");
    }

    #[test]
    fn mbstd_on_every_device_matches_the_twin() {
        for device in devices() {
            for (shape, g, f) in [
                ([8usize, 6, 4, 4], 4, 1),
                ([2, 5, 3, 3], 4, 1),
                ([6, 4, 5, 3], 3, 2),
                ([16, 33, 4, 4], 4, 1),
            ] {
                let d = Mbstd::new(&shape, g, f).unwrap();
                let xv = random_vec(shape.iter().product(), 3);
                let x = Tensor::from_slice(&xv, &shape, &device).unwrap();
                let mut tape = Tape::new();
                tape.watch(&x);
                let y = minibatch_stddev(&mut tape, &x, g, f).unwrap();
                let what = format!("{shape:?} G {g} F {f} on {device}");
                assert_eq!(y.shape(), &[shape[0], shape[1] + f, shape[2], shape[3]]);
                assert_close(
                    &y.to_vec_f32().unwrap(),
                    &cpu::mbstd(&xv, &d),
                    1e-5,
                    1e-6,
                    &format!("y {what}"),
                );
                let gv = random_vec(y.numel(), 4);
                let grads = tape
                    .backward_with(&y, Tensor::from_slice(&gv, y.shape(), &device).unwrap())
                    .unwrap();
                assert_close(
                    &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                    &cpu::mbstd_dx(&xv, &gv, &d),
                    1e-4,
                    1e-5,
                    &format!("dx {what}"),
                );
            }
            let x = Tensor::zeros(&[6, 2, 2, 2], &device).unwrap();
            let err = minibatch_stddev(&mut Tape::new(), &x, 4, 1)
                .unwrap_err()
                .to_string();
            assert!(err.contains("groups of 4"), "{err}");
        }
    }
}
