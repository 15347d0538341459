//! Convolution layers: PyTorch's `nn.Conv1d` (the Mind Reader mapper) and StyleGAN2's
//! `Conv2dLayer` with its resampling (`conv2d_resample`, Lafite's discriminator).

use super::Params;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::bias_act::Act;
use crate::ops::conv1d::{conv1d, conv1d_fused, Epilogue};
use crate::ops::conv2d::{conv2d, conv_transpose2d};
use crate::ops::conv_epilogue::{conv2d_bias_act, BiasAct};
use crate::ops::upfirdn2d::{filter_size, setup_filter, upfirdn2d};
use crate::ops::{elementwise as ew, transpose};
use crate::tensor::{Device, Tensor};

/// `nn.Conv1d` with bias: `{name}.weight` `[out, in, k]`, `{name}.bias` `[out]`.
pub struct Conv1d {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Conv1d {
    /// PyTorch's default init: U(−1/√fan_in, 1/√fan_in) for weight and bias.
    pub fn new(
        store: &mut super::ParamStore,
        name: &str,
        c_out: usize,
        c_in: usize,
        k: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Conv1d> {
        let bound = 1.0 / ((c_in * k) as f32).sqrt();
        let weight = store.insert(
            &format!("{name}.weight"),
            Tensor::rand_uniform(&[c_out, c_in, k], -bound, bound, seed, device)?,
        )?;
        let bias = store.insert(
            &format!("{name}.bias"),
            Tensor::rand_uniform(&[c_out], -bound, bound, seed + 1, device)?,
        )?;
        Ok(Conv1d { weight, bias })
    }

    pub fn forward(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        conv1d(tape, x, &self.weight, Some(&self.bias), stride, padding)
    }

    /// `relu(conv(x) + residual)` (`residual` None: `relu(conv(x))`) in one kernel, the same
    /// numbers as `forward`, `add` and `relu` one after another.
    pub fn forward_relu(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        stride: usize,
        padding: usize,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let epi = Epilogue {
            bias: Some(&self.bias),
            residual,
            relu: true,
        };
        conv1d_fused(tape, x, &self.weight, stride, padding, epi)
    }
}

/// StyleGAN2's `conv2d_resample(x, w, f, up, down, padding)` for the cases its networks use
/// (`flip_weight = (up == 1)`, so no weight is ever flipped; up and down not both):
/// - up = down = 1: `conv2d(x, w, padding)`;
/// - down > 1, 1×1 kernel: `upfirdn2d(x, f, down, pad)` first, then the 1×1 convolution;
/// - down > 1: `upfirdn2d(x, f, pad)` then the convolution with stride `down` (D's conv1);
/// - up > 1: `conv_transpose2d(x, wᵀ, stride up)` then `upfirdn2d(pad, gain up²)`;
///
/// with the reference's padding arithmetic (`torch_utils/ops/conv2d_resample.py`).
pub fn conv2d_resample(
    tape: &mut Tape,
    x: &Tensor,
    w: &Tensor,
    f: &Tensor,
    up: usize,
    down: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_resample_then(tape, x, w, f, up, down, padding, None)
}

/// `epi(conv2d_resample(…))`: where the convolution is the last op (every case but up > 1) the
/// epilogue runs in its store (`ops::conv_epilogue`), otherwise after it.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_resample_then(
    tape: &mut Tape,
    x: &Tensor,
    w: &Tensor,
    f: &Tensor,
    up: usize,
    down: usize,
    padding: usize,
    epi: Option<BiasAct>,
) -> Result<Tensor> {
    let conv = |tape: &mut Tape, x: &Tensor, stride: usize, pad: (usize, usize)| match epi {
        Some(epi) => conv2d_bias_act(tape, x, w, stride, pad, 1, epi),
        None => conv2d(tape, x, w, None, stride, pad, 1),
    };
    let &[_, _, kh, kw] = w.shape() else {
        return Err(Error::shape(
            "conv2d_resample",
            format!("weight must be [Cout, Cin, KH, KW], got {:?}", w.shape()),
        ));
    };
    if up > 1 && down > 1 {
        return Err(Error::Invalid(
            "conv2d_resample: up- and downsampling together is not supported".into(),
        ));
    }
    let (fw, fh) = filter_size(f)?;
    let (fw, fh, p) = (fw as i64, fh as i64, padding as i64);
    let [mut px0, mut px1, mut py0, mut py1] = [p; 4];
    if up > 1 {
        let u = up as i64;
        px0 += (fw + u - 1) / 2;
        px1 += (fw - u) / 2;
        py0 += (fh + u - 1) / 2;
        py1 += (fh - u) / 2;
    }
    if down > 1 {
        let d = down as i64;
        px0 += (fw - d + 1) / 2;
        px1 += (fw - d) / 2;
        py0 += (fh - d + 1) / 2;
        py1 += (fh - d) / 2;
    }
    if down > 1 && kh == 1 && kw == 1 {
        let x = upfirdn2d(tape, x, f, 1, down, [px0, px1, py0, py1], false, 1.0)?;
        return conv(tape, &x, 1, (0, 0));
    }
    if down > 1 {
        let x = upfirdn2d(tape, x, f, 1, 1, [px0, px1, py0, py1], false, 1.0)?;
        return conv(tape, &x, down, (0, 0));
    }
    if up > 1 {
        let (kw, kh, u) = (kw as i64, kh as i64, up as i64);
        let (px0, px1, py0, py1) = (
            px0 - (kw - 1),
            px1 - (kw - u),
            py0 - (kh - 1),
            py1 - (kh - u),
        );
        let pxt = (-px0).min(-px1).max(0);
        let pyt = (-py0).min(-py1).max(0);
        let wt = transpose::transpose(tape, w, 0, 1)?;
        let y = conv_transpose2d(tape, x, &wt, None, up, (pyt as usize, pxt as usize), 1)?;
        let pad = [px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt];
        let y = upfirdn2d(tape, &y, f, 1, 1, pad, false, (up * up) as f32)?;
        return match epi {
            Some(epi) => epi.apply_separately(tape, &y),
            None => Ok(y),
        };
    }
    if px0 == px1 && py0 == py1 && px0 >= 0 && py0 >= 0 {
        return conv(tape, x, 1, (py0 as usize, px0 as usize));
    }
    let x = upfirdn2d(tape, x, f, 1, 1, [px0, px1, py0, py1], false, 1.0)?;
    conv(tape, &x, 1, (0, 0))
}

/// StyleGAN2's `Conv2dLayer`: `bias_act(conv2d_resample(x, w·weight_gain), b, act,
/// gain = def_gain·gain, clamp = conv_clamp·gain)` (the bias_act in the convolution's store) with `weight_gain = 1/√(in·k²)`, padding k/2
/// and the `resample_filter` buffer. Names `{name}.weight` `[out, in, k, k]`, `{name}.bias`,
/// `{name}.resample_filter` `[4, 4]`.
pub struct Conv2dLayer {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub resample_filter: Tensor,
    pub act: Act,
    pub up: usize,
    pub down: usize,
    pub padding: usize,
    pub weight_gain: f32,
    pub conv_clamp: Option<f32>,
}

impl Conv2dLayer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &mut Params,
        name: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        bias: bool,
        act: Act,
        down: usize,
        conv_clamp: Option<f32>,
    ) -> Result<Conv2dLayer> {
        let weight = p.randn(&format!("{name}.weight"), &[cout, cin, kernel, kernel], 1.0)?;
        let bias = if bias {
            Some(p.get(&format!("{name}.bias"), &[cout])?)
        } else {
            None
        };
        let f = setup_filter(&[1.0, 3.0, 3.0, 1.0], p.device)?;
        let resample_filter = p.buffer(&format!("{name}.resample_filter"), f)?;
        Ok(Conv2dLayer {
            weight,
            bias,
            resample_filter,
            act,
            up: 1,
            down,
            padding: kernel / 2,
            weight_gain: 1.0 / ((cin * kernel * kernel) as f32).sqrt(),
            conv_clamp,
        })
    }

    /// x `[N, in, H, W]` → `[N, out, H/down, W/down]`; `gain` scales the activation and clamp
    /// (the resnet blocks pass √0.5).
    pub fn forward(&self, tape: &mut Tape, x: &Tensor, gain: f32) -> Result<Tensor> {
        let w = ew::scale(tape, &self.weight, self.weight_gain)?;
        let f = &self.resample_filter;
        let clamp = self.conv_clamp.map(|c| c * gain);
        let epi = BiasAct::new(
            self.bias.as_ref(),
            self.act,
            self.act.default_gain() * gain,
            clamp,
        );
        conv2d_resample_then(tape, x, &w, f, self.up, self.down, self.padding, Some(epi))
    }
}
