//! Fully connected layers: PyTorch's `nn.Linear` (CLIP) and StyleGAN2's `FullyConnectedLayer`
//! with its equalised learning rate (Lafite's mapping network, conditioning MLPs and heads).

use super::Params;
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::ops::bias_act::{bias_act, Act};
use crate::ops::{elementwise as ew, matmul};
use crate::tensor::Tensor;

/// `nn.Linear` weights: `{name}.weight` `[out, in]`, `{name}.bias` `[out]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: &mut Params, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = p.randn(&format!("{name}.weight"), &[out, inp], 0.02)?;
        let bias = if bias {
            Some(p.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// `x·Wᵀ + b`, the bias in the GEMM's epilogue (one launch; one rounding in bf16).
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        matmul::linear_act(tape, x, &self.weight, self.bias.as_ref(), None)
    }

    /// `act(forward(x))` in one fused GEMM (the bias and activation in its epilogue).
    pub fn forward_act(&self, tape: &mut Tape, x: &Tensor, act: ew::Unary) -> Result<Tensor> {
        matmul::linear_act(tape, x, &self.weight, self.bias.as_ref(), Some(act))
    }
}

/// StyleGAN2's `FullyConnectedLayer`: the stored weight is `randn/lr_multiplier` and runs scaled
/// by `lr_multiplier/√in` (the equalised learning rate: every layer's step is the same size in
/// its own units), the bias by `lr_multiplier`; then `bias_act` with the activation's default
/// gain (√2 for lrelu). Names `{name}.weight` `[out, in]`, `{name}.bias` `[out]`.
pub struct FullyConnected {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub act: Act,
    pub weight_gain: f32,
    pub bias_gain: f32,
}

impl FullyConnected {
    pub fn new(
        p: &mut Params,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
        act: Act,
        lr_multiplier: f32,
        bias_init: f32,
    ) -> Result<FullyConnected> {
        if inp == 0 || !(lr_multiplier > 0.0) {
            return Err(Error::Invalid(format!(
                "{name}: a fully connected layer needs inputs (got {inp}) and a positive lr multiplier (got {lr_multiplier})"
            )));
        }
        let weight = p.randn(&format!("{name}.weight"), &[out, inp], 1.0 / lr_multiplier)?;
        let bias = if bias {
            Some(p.full(&format!("{name}.bias"), &[out], bias_init)?)
        } else {
            None
        };
        Ok(FullyConnected {
            weight,
            bias,
            act,
            weight_gain: lr_multiplier / (inp as f32).sqrt(),
            bias_gain: lr_multiplier,
        })
    }

    /// The linear layer the reference builds with `FullyConnectedLayer(in, out)` defaults.
    pub fn linear(p: &mut Params, name: &str, inp: usize, out: usize) -> Result<FullyConnected> {
        FullyConnected::new(p, name, inp, out, true, Act::Linear, 1.0, 0.0)
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// x `[N, in]` → `act(x·(g·W)ᵀ + lr·b)·gain` `[N, out]`.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let w = ew::scale(tape, &self.weight, self.weight_gain)?;
        let y = matmul::matmul(tape, x, &w, false, true)?;
        let b = match &self.bias {
            Some(b) if self.bias_gain != 1.0 => Some(ew::scale(tape, b, self.bias_gain)?),
            Some(b) => Some(b.clone()),
            None => None,
        };
        bias_act(
            tape,
            &y,
            b.as_ref(),
            self.act,
            self.act.default_gain(),
            None,
        )
    }
}
