//! `upfirdn2d`: StyleGAN2's resampling primitive (`torch_utils/ops/upfirdn2d.py`), f32.
//!
//! For each plane of x `[N, C, H, W]`: upsample by zero insertion (`u[r·up, c·up] = x[r, c]`, size
//! `H·up × W·up`), pad by `[px0, px1, py0, py1]` zeros (negative values crop), filter with the 2-D
//! FIR `f` `[FH, FW]` times `gain` (a true convolution unless `flip_filter`, as the reference), and
//! keep every `down`-th sample: `OH = (H·up + py0 + py1 − FH)/down + 1`, and
//! `y[oy, ox] = gain · Σ_{i, j} F[i, j] · u[oy·down + i − py0, ox·down + j − px0]` with F the
//! correlation taps (f flipped in both axes unless `flip_filter`).
//!
//! Backward: the map is linear in x, and its adjoint gathers
//! `dx[iy, ix] = gain · Σ F[i, j] · dy[oy, ox]` over `oy·down + i − py0 = iy·up` (likewise columns).
//! The filter is a fixed buffer (`resample_filter`): it gets no gradient.
//!
//! Lafite uses it as `upsample2d` (up 2, pad [2, 1, 2, 1], gain 4: the skip image path), after
//! the transposed 3×3 convolution (pad 1, gain 4), and before D's strided convolutions (pad 2;
//! down 2 with pad 1 for its 1×1 skips), always with `outer([1, 3, 3, 1])/64`.
//!
//! Cost: FH·FW multiply-adds per output (per input in the backward), one read of x (cached) and
//! one write of y. Kernels: `kernels/upfirdn2d.cu`, one thread per output (input) element.

use cudarc::driver::{DeviceRepr, PushKernelArg};

use rayon::prelude::*;

use super::{same_device, Real};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::conv_epilogue::{BiasAct, EpiArgs, Held};
use crate::tensor::{launch_1d, Device, Storage, Tensor};

/// One resampling, checked: planes (N·C), input and output sizes, factors, padding, filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fir {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub up: usize,
    pub down: usize,
    /// `[px0, px1, py0, py1]`, the reference's order.
    pub pad: [i64; 4],
    pub fh: usize,
    pub fw: usize,
    pub flip_filter: bool,
    pub gain: f32,
}

impl Fir {
    pub fn new(
        x: &[usize],
        f: &[usize],
        up: usize,
        down: usize,
        pad: [i64; 4],
        flip_filter: bool,
        gain: f32,
    ) -> Result<Fir> {
        let err = |d: String| Err(Error::shape("upfirdn2d", d));
        let &[n, c, h, w] = x else {
            return err(format!("x must be [N, C, H, W], got {x:?}"));
        };
        let &[fh, fw] = f else {
            return err(format!("the filter must be [FH, FW], got {f:?}"));
        };
        if up == 0 || down == 0 || fh == 0 || fw == 0 {
            return err(format!(
                "up {up}, down {down} and the filter {f:?} must be at least 1"
            ));
        }
        let [px0, px1, py0, py1] = pad;
        let span_h = (h * up) as i64 + py0 + py1 - fh as i64;
        let span_w = (w * up) as i64 + px0 + px1 - fw as i64;
        if span_h < 0 || span_w < 0 {
            return err(format!(
                "x {x:?} upsampled ×{up} and padded {pad:?} is smaller than the filter {f:?}"
            ));
        }
        Ok(Fir {
            planes: n * c,
            h,
            w,
            oh: span_h as usize / down + 1,
            ow: span_w as usize / down + 1,
            up,
            down,
            pad,
            fh,
            fw,
            flip_filter,
            gain,
        })
    }

    /// The correlation tap (i, j): f flipped unless `flip_filter`, times gain.
    fn tap<T: Real>(&self, f: &[T], i: usize, j: usize) -> T {
        let v = if self.flip_filter {
            f[i * self.fw + j]
        } else {
            f[(self.fh - 1 - i) * self.fw + (self.fw - 1 - j)]
        };
        T::c(self.gain as f64) * v
    }

    /// The x index that output (oy, ox), tap (i, j) reads, if any.
    fn source(&self, oy: usize, ox: usize, i: usize, j: usize) -> Option<usize> {
        let [px0, _, py0, _] = self.pad;
        let r = (oy * self.down + i) as i64 - py0;
        let c = (ox * self.down + j) as i64 - px0;
        let (up, uh, uw) = (
            self.up as i64,
            (self.h * self.up) as i64,
            (self.w * self.up) as i64,
        );
        if r < 0 || c < 0 || r >= uh || c >= uw || r % up != 0 || c % up != 0 {
            return None;
        }
        Some((r / up) as usize * self.w + (c / up) as usize)
    }

    pub fn y_shape(&self, x: &[usize]) -> [usize; 4] {
        [x[0], x[1], self.oh, self.ow]
    }
}

/// The CPU twins, generic so gradient checks run them in f64.
pub mod cpu {
    use super::*;

    /// The plane upsampled and padded: `U[r, c] = u[r − py0, c − px0]`, size
    /// `(H·up + py0 + py1) × (W·up + px0 + px1)` (negative padding crops).
    fn padded_dims(d: &Fir) -> (usize, usize) {
        let [px0, px1, py0, py1] = d.pad;
        (
            ((d.h * d.up) as i64 + py0 + py1) as usize,
            ((d.w * d.up) as i64 + px0 + px1) as usize,
        )
    }

    /// Visits every (x index, U index) pair: pixel `at` of x sits at `U[r·UW + c]`.
    fn for_each_placed(d: &Fir, mut f: impl FnMut(usize, usize)) {
        let [px0, _, py0, _] = d.pad;
        let (uh, uw) = padded_dims(d);
        for iy in 0..d.h {
            let r = (iy * d.up) as i64 + py0;
            if r < 0 || r >= uh as i64 {
                continue;
            }
            for ix in 0..d.w {
                let c = (ix * d.up) as i64 + px0;
                if c >= 0 && c < uw as i64 {
                    f(iy * d.w + ix, r as usize * uw + c as usize);
                }
            }
        }
    }

    /// The correlation taps (flip and gain applied), row-major `[FH, FW]`.
    fn taps<T: Real>(f: &[T], d: &Fir) -> Vec<T> {
        (0..d.fh * d.fw)
            .map(|k| d.tap(f, k / d.fw, k % d.fw))
            .collect()
    }

    /// Per plane: place x in the padded buffer U, then a dense strided correlation with the taps
    /// (no bounds checks in the inner loops, which run along contiguous rows).
    pub fn upfirdn2d<T: Real>(x: &[T], f: &[T], d: &Fir) -> Vec<T> {
        let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
        let mut y = vec![T::zero(); d.planes * ohw];
        if ohw == 0 {
            return y;
        }
        let (uh, uw) = padded_dims(d);
        let taps = taps(f, d);
        y.par_chunks_mut(ohw).enumerate().for_each(|(p, yp)| {
            let xp = &x[p * hw..][..hw];
            let mut u = vec![T::zero(); uh * uw];
            for_each_placed(d, |at, ui| u[ui] = xp[at]);
            for oy in 0..d.oh {
                let yrow = &mut yp[oy * d.ow..][..d.ow];
                for i in 0..d.fh {
                    let urow = &u[(oy * d.down + i) * uw..][..uw];
                    for j in 0..d.fw {
                        let t = taps[i * d.fw + j];
                        if d.down == 1 {
                            // Contiguous: the compiler vectorises this axpy.
                            for (yv, &uv) in yrow.iter_mut().zip(&urow[j..j + d.ow]) {
                                *yv = *yv + t * uv;
                            }
                        } else {
                            for (ox, yv) in yrow.iter_mut().enumerate() {
                                *yv = *yv + t * urow[ox * d.down + j];
                            }
                        }
                    }
                }
            }
        });
        y
    }

    /// The adjoint: scatter dy through the taps into dU, then read x's places back out.
    pub fn upfirdn2d_dx<T: Real>(dy: &[T], f: &[T], d: &Fir) -> Vec<T> {
        let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
        let mut dx = vec![T::zero(); d.planes * hw];
        if hw == 0 {
            return dx;
        }
        let (uh, uw) = padded_dims(d);
        let taps = taps(f, d);
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| {
            let dyp = &dy[p * ohw..][..ohw];
            let mut du = vec![T::zero(); uh * uw];
            for oy in 0..d.oh {
                let drow = &dyp[oy * d.ow..][..d.ow];
                for i in 0..d.fh {
                    let urow = &mut du[(oy * d.down + i) * uw..][..uw];
                    for j in 0..d.fw {
                        let t = taps[i * d.fw + j];
                        if d.down == 1 {
                            for (uv, &g) in urow[j..j + d.ow].iter_mut().zip(drow) {
                                *uv = *uv + t * g;
                            }
                        } else {
                            for (ox, &g) in drow.iter().enumerate() {
                                let at = ox * d.down + j;
                                urow[at] = urow[at] + t * g;
                            }
                        }
                    }
                }
            }
            for_each_placed(d, |at, ui| dxp[at] = du[ui]);
        });
        dx
    }

    /// The definition, tap by tap (the oracle of the two above).
    pub fn upfirdn2d_naive<T: Real>(x: &[T], f: &[T], d: &Fir) -> Vec<T> {
        let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
        let mut y = vec![T::zero(); d.planes * ohw];
        for p in 0..d.planes {
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    let mut acc = T::zero();
                    for i in 0..d.fh {
                        for j in 0..d.fw {
                            if let Some(at) = d.source(oy, ox, i, j) {
                                acc = acc + d.tap(f, i, j) * x[p * hw + at];
                            }
                        }
                    }
                    y[p * ohw + oy * d.ow + ox] = acc;
                }
            }
        }
        y
    }
}

/// `struct Fir` of `kernels/upfirdn2d.cu`, field for field.
#[repr(C)]
#[derive(Clone, Copy)]
struct FirArgs {
    planes: i32,
    h: i32,
    w: i32,
    oh: i32,
    ow: i32,
    up: i32,
    down: i32,
    px0: i32,
    py0: i32,
    fh: i32,
    fw: i32,
    flip: i32,
    gain: f32,
}

// SAFETY: #[repr(C)], i32s and an f32, the CUDA struct's layout.
unsafe impl DeviceRepr for FirArgs {}

fn args(d: &Fir) -> Result<FirArgs> {
    let fits = |v: i64| v.abs() < 1 << 30;
    let sizes = [
        (d.planes * d.h.max(d.oh) * d.w.max(d.ow)) as i64,
        (d.h * d.up) as i64 + d.pad[2].abs() + d.fh as i64,
        (d.w * d.up) as i64 + d.pad[0].abs() + d.fw as i64,
        (d.oh * d.down) as i64,
        (d.ow * d.down) as i64,
    ];
    if !sizes.iter().all(|&v| fits(v)) {
        return Err(Error::shape(
            "upfirdn2d",
            format!("{d:?} is too large for the CUDA kernel"),
        ));
    }
    let i = |v: usize| v as i32;
    Ok(FirArgs {
        planes: i(d.planes),
        h: i(d.h),
        w: i(d.w),
        oh: i(d.oh),
        ow: i(d.ow),
        up: i(d.up),
        down: i(d.down),
        px0: d.pad[0] as i32,
        py0: d.pad[2] as i32,
        fh: i(d.fh),
        fw: i(d.fw),
        flip: d.flip_filter as i32,
        gain: d.gain,
    })
}

/// Forward (`backward` false: x → y, finished by `epi` when given) or adjoint (true: dy → dx)
/// without recording.
fn run(
    v: &Tensor,
    f: &Tensor,
    d: &Fir,
    backward: bool,
    epi: Option<&BiasAct>,
    shape: &[usize],
) -> Result<Tensor> {
    const OP: &str = "upfirdn2d";
    same_device(OP, &[v, f])?;
    let epi = match epi {
        Some(_) if backward => {
            return Err(Error::Invalid(
                "upfirdn2d: an epilogue is for the forward pass".into(),
            ))
        }
        Some(e) => {
            let &[n, c, h, w] = shape else {
                return Err(Error::shape(
                    OP,
                    format!("an epilogue needs [N, C, H, W], got {shape:?}"),
                ));
            };
            Some((e, e.check([n, c, h, w], v)?, c))
        }
        None => None,
    };
    match v.device() {
        Device::Cpu => {
            let (sv, sf) = (v.storage(), f.storage());
            let (vv, fv) = (sv.cpu_f32(OP)?, sf.cpu_f32(OP)?);
            let out = if backward {
                cpu::upfirdn2d_dx(vv, fv, d)
            } else {
                cpu::upfirdn2d(vv, fv, d)
            };
            let out = match epi {
                Some((e, _, c)) => e.apply_cpu(&out, [d.planes / c, c, d.oh, d.ow])?,
                None => out,
            };
            Tensor::from_vec(out, shape, v.device())
        }
        Device::Cuda(gpu) => {
            let a = args(d)?;
            let len: usize = shape.iter().product();
            let (sv, sf) = (v.storage(), f.storage());
            let mut out = gpu.alloc::<f32>(len)?;
            let (epi_args, channels) = match epi {
                Some((e, batched, c)) => (e.kernel_args(batched), c as i32),
                None => (EpiArgs::NONE, 1),
            };
            let held = Held::new(epi.map(|(e, _, _)| e));
            let parts = held.pointers(OP)?;
            if len > 0 {
                let name = if backward {
                    "upfirdn2d_bwd_f32"
                } else {
                    "upfirdn2d_fwd_f32"
                };
                let func = gpu.function("upfirdn2d", name)?;
                let mut lb = gpu.stream.launch_builder(&func);
                lb.arg(sv.cuda_f32(OP)?)
                    .arg(sf.cuda_f32(OP)?)
                    .arg(&mut out)
                    .arg(&a);
                let null = 0u64; // a null device pointer: no such part
                if !backward {
                    for p in parts {
                        match p {
                            Some(s) => lb.arg(s),
                            None => lb.arg(&null),
                        };
                    }
                    lb.arg(&epi_args).arg(&channels);
                }
                // SAFETY: v holds planes·H·W (forward) or planes·OH·OW (backward) floats and f FH·FW
                // (shapes checked by Fir::new); every read is bounds-checked against those sizes;
                // one thread writes each of the `len` outputs. The forward's epilogue parts were
                // checked by `BiasAct::check` against y [N, C, OH, OW] (C = `channels`) or are null.
                unsafe { lb.launch(launch_1d(len)) }.map_err(|e| Error::cuda(name, e))?;
            }
            Ok(Tensor::from_storage(
                Storage::CudaF32(out),
                shape,
                v.device(),
            ))
        }
    }
}

/// `upfirdn2d(x, f, up, down, padding = [px0, px1, py0, py1], flip_filter, gain)` as the
/// reference's (same argument order); x `[N, C, H, W]`, f `[FH, FW]`. Recorded (no gradient for f).
pub fn upfirdn2d(
    tape: &mut Tape,
    x: &Tensor,
    f: &Tensor,
    up: usize,
    down: usize,
    padding: [i64; 4],
    flip_filter: bool,
    gain: f32,
) -> Result<Tensor> {
    let d = Fir::new(x.shape(), f.shape(), up, down, padding, flip_filter, gain)?;
    let y_shape = d.y_shape(x.shape());
    let y = run(x, f, &d, false, None, &y_shape)?;
    let (fc, x_shape) = (f.clone(), x.shape().to_vec());
    tape.record(&[x], &y, move |dy| {
        Ok(vec![Some(run(dy, &fc, &d, true, None, &x_shape)?)])
    });
    Ok(y)
}

/// `epi(upfirdn2d(x, f, …))` in one pass: the synthesis conv0's filter after its transposed
/// convolution, then its noise and bias_act, done as the filter stores y (`ops::conv_epilogue`),
/// the separate ops' numbers bit for bit. Recorded: x, the bias and the noise strength.
#[allow(clippy::too_many_arguments)]
pub fn upfirdn2d_bias_act(
    tape: &mut Tape,
    x: &Tensor,
    f: &Tensor,
    up: usize,
    down: usize,
    padding: [i64; 4],
    flip_filter: bool,
    gain: f32,
    epi: BiasAct,
) -> Result<Tensor> {
    if epi.unfusable() {
        let u = upfirdn2d(tape, x, f, up, down, padding, flip_filter, gain)?;
        return epi.apply_separately(tape, &u);
    }
    let d = Fir::new(x.shape(), f.shape(), up, down, padding, flip_filter, gain)?;
    let y_shape = d.y_shape(x.shape());
    let y = run(x, f, &d, false, Some(&epi), &y_shape)?;
    let kept = epi.keep(tape);
    let (fc, yc, x_shape) = (f.clone(), y.clone(), x.shape().to_vec());
    let inputs: Vec<&Tensor> = [x].into_iter().chain(epi.inputs()).collect();
    tape.record(&inputs, &y, move |dy| {
        let (dpre, tail) = kept.backward(dy, &yc)?;
        let dx = run(&dpre, &fc, &d, true, None, &x_shape)?;
        Ok([Some(dx)].into_iter().chain(tail).collect())
    });
    Ok(y)
}

/// The reference's `upsample2d(x, f, up)`: padding chosen so the output is exactly `up` times the
/// input, gain `up²` (zero insertion leaves 1/up² of the energy).
pub fn upsample2d(tape: &mut Tape, x: &Tensor, f: &Tensor, up: usize) -> Result<Tensor> {
    let (fw, fh) = filter_size(f)?;
    let (u, fw, fh) = (up as i64, fw as i64, fh as i64);
    let pad = [
        (fw + u - 1) / 2,
        (fw - u) / 2,
        (fh + u - 1) / 2,
        (fh - u) / 2,
    ];
    upfirdn2d(tape, x, f, up, 1, pad, false, (up * up) as f32)
}

/// The reference's `downsample2d(x, f, down)`: padding chosen so the output is 1/down of the input.
pub fn downsample2d(tape: &mut Tape, x: &Tensor, f: &Tensor, down: usize) -> Result<Tensor> {
    let (fw, fh) = filter_size(f)?;
    let (d, fw, fh) = (down as i64, fw as i64, fh as i64);
    let pad = [
        (fw - d + 1) / 2,
        (fw - d) / 2,
        (fh - d + 1) / 2,
        (fh - d) / 2,
    ];
    upfirdn2d(tape, x, f, 1, down, pad, false, 1.0)
}

/// (FW, FH) of a `[FH, FW]` filter.
pub fn filter_size(f: &Tensor) -> Result<(usize, usize)> {
    match f.shape() {
        &[fh, fw] => Ok((fw, fh)),
        s => Err(Error::shape(
            "upfirdn2d",
            format!("the filter must be [FH, FW], got {s:?}"),
        )),
    }
}

/// `upfirdn2d.setup_filter(taps)`: the outer product of a 1-D filter with itself, normalised to sum 1
/// (`[1, 3, 3, 1]` gives StyleGAN2's `resample_filter`, a `[4, 4]` buffer of `/64` values).
pub fn setup_filter(taps: &[f32], device: &Device) -> Result<Tensor> {
    let n = taps.len();
    let mut f: Vec<f32> = (0..n * n).map(|i| taps[i / n] * taps[i % n]).collect();
    let sum: f32 = f.iter().sum();
    f.iter_mut().for_each(|v| *v /= sum);
    Tensor::from_vec(f, &[n, n], device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, devices, gpu, gradcheck, random_vec};

    /// (up, down, padding, flip, gain): the networks' four uses and awkward ones (crop, 3×).
    const CASES: [(usize, usize, [i64; 4], bool, f32); 6] = [
        (2, 1, [2, 1, 2, 1], false, 4.0),
        (1, 1, [1, 1, 1, 1], false, 4.0),
        (1, 1, [2, 2, 2, 2], false, 1.0),
        (1, 2, [1, 1, 1, 1], false, 1.0),
        (2, 2, [-1, 0, 1, -2], true, 2.0),
        (3, 2, [0, 2, 1, 0], false, 1.5),
    ];

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    #[test]
    fn upfirdn2d_gradients_match_finite_differences() {
        for (up, down, pad, flip, gain) in CASES {
            let d = Fir::new(&[1, 2, 5, 6], &[3, 4], up, down, pad, flip, gain).unwrap();
            let f = f64s(&random_vec(12, 1));
            let x = f64s(&random_vec(d.planes * 30, 2));
            let g = f64s(&random_vec(d.planes * d.oh * d.ow, 3));
            let loss = |x: &[f64]| {
                cpu::upfirdn2d(x, &f, &d)
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            };
            gradcheck(&format!("{d:?}"), loss, &x, &cpu::upfirdn2d_dx(&g, &f, &d));
        }
    }

    #[test]
    fn the_padded_buffer_twin_matches_the_definition() {
        for (up, down, pad, flip, gain) in CASES {
            for (h, w) in [(5, 6), (1, 1), (8, 3)] {
                let Ok(d) = Fir::new(&[2, 1, h, w], &[3, 4], up, down, pad, flip, gain) else {
                    continue;
                };
                let f = f64s(&random_vec(12, 8));
                let x = f64s(&random_vec(d.planes * h * w, 9));
                let (fast, naive) = (cpu::upfirdn2d(&x, &f, &d), cpu::upfirdn2d_naive(&x, &f, &d));
                for (a, b) in fast.iter().zip(&naive) {
                    assert!((a - b).abs() < 1e-12, "{d:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn upsample_and_downsample_keep_the_reference_sizes_and_dc_gain() {
        for device in devices() {
            let f = setup_filter(&[1.0, 3.0, 3.0, 1.0], &device).unwrap();
            assert_close(
                &f.to_vec_f32().unwrap()[..4],
                &[1.0 / 64.0, 3.0 / 64.0, 3.0 / 64.0, 1.0 / 64.0],
                1e-7,
                0.0,
                "filter",
            );
            let x = Tensor::full(1.0, &[2, 3, 8, 8], &device).unwrap();
            let mut tape = Tape::new();
            let up = upsample2d(&mut tape, &x, &f, 2).unwrap();
            assert_eq!(up.shape(), &[2, 3, 16, 16]);
            let down = downsample2d(&mut tape, &x, &f, 2).unwrap();
            assert_eq!(down.shape(), &[2, 3, 4, 4]);
            // A constant image stays constant away from the zero-padded border.
            let u = up.to_vec_f32().unwrap();
            assert!((u[5 * 16 + 7] - 1.0).abs() < 1e-6, "{}", u[5 * 16 + 7]);
            let v = down.to_vec_f32().unwrap();
            assert!((v[4 + 1] - 1.0).abs() < 1e-6, "{}", v[5]);
        }
    }

    #[test]
    fn upfirdn2d_cuda_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for (up, down, pad, flip, gain) in CASES {
            for (n, c, h, w) in [(1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 17, 9)] {
                for fshape in [[4usize, 4], [3, 2]] {
                    let Ok(d) = Fir::new(&[n, c, h, w], &fshape, up, down, pad, flip, gain) else {
                        continue;
                    };
                    let what = format!("{d:?}");
                    let fv = random_vec(fshape[0] * fshape[1], 5);
                    let xv = random_vec(n * c * h * w, 6);
                    let gv = random_vec(d.planes * d.oh * d.ow, 7);
                    let f = Tensor::from_slice(&fv, &fshape, &gpu).unwrap();
                    let x = Tensor::from_slice(&xv, &[n, c, h, w], &gpu).unwrap();
                    let mut tape = Tape::new();
                    tape.watch(&x);
                    let y = upfirdn2d(&mut tape, &x, &f, up, down, pad, flip, gain).unwrap();
                    assert_close(
                        &y.to_vec_f32().unwrap(),
                        &cpu::upfirdn2d(&xv, &fv, &d),
                        1e-5,
                        1e-5,
                        &format!("y {what}"),
                    );
                    let gt = Tensor::from_slice(&gv, y.shape(), &gpu).unwrap();
                    let grads = tape.backward_with(&y, gt).unwrap();
                    assert_close(
                        &grads.get(&x).unwrap().to_vec_f32().unwrap(),
                        &cpu::upfirdn2d_dx(&gv, &fv, &d),
                        1e-5,
                        1e-5,
                        &format!("dx {what}"),
                    );
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let t = |s: &[usize]| Tensor::zeros(s, &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        assert!(upfirdn2d(
            &mut tape,
            &t(&[1, 1, 2, 2]),
            &t(&[4, 4]),
            1,
            1,
            [0; 4],
            false,
            1.0
        )
        .is_err());
        assert!(upfirdn2d(
            &mut tape,
            &t(&[1, 2, 2]),
            &t(&[4, 4]),
            1,
            1,
            [1; 4],
            false,
            1.0
        )
        .is_err());
        assert!(upfirdn2d(
            &mut tape,
            &t(&[1, 1, 2, 2]),
            &t(&[4]),
            1,
            1,
            [1; 4],
            false,
            1.0
        )
        .is_err());
        assert!(upfirdn2d(
            &mut tape,
            &t(&[1, 1, 2, 2]),
            &t(&[4, 4]),
            0,
            1,
            [1; 4],
            false,
            1.0
        )
        .is_err());
        assert!(upfirdn2d(
            &mut tape,
            &t(&[1, 1, 2, 2]),
            &t(&[4, 4]),
            2,
            1,
            [1; 4],
            false,
            1.0
        )
        .is_ok());
    }
}
