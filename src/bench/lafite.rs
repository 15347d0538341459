//! Lafite's bench cases: the modulated convolution at the 256-px generator's last layer shapes
//! (batch 16), forward and forward + backward, and a whole generator and discriminator forward at
//! 256 px (the paper's structure 4: image and caption conditions). FLOPs count the convolutions
//! (the MLPs and elementwise work are a few percent); bytes the activations read and written once.

use serde_json::json;

use super::{at_precision, case, input, precision_tag, Case};
use crate::error::Result;
use crate::models::lafite::{
    Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, Network,
};
use crate::nn::NoiseMode;
use crate::ops::bias_act::Act;
use crate::ops::conv_epilogue::{BiasAct, Noise};
use crate::ops::modconv::{modulated_conv2d, modulated_conv2d_bias_act, Resample};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::train::gan::loss::{
    d_main, g_main, ClipView, Conditions, GanLossConfig, Nets, Placement,
};
use crate::train::gan::regularize::r1;
use crate::Tape;

/// The train.py defaults at `res` px with channel_base `base` (32768 for the paper).
fn g_config(res: usize, base: usize) -> Result<GeneratorConfig> {
    GeneratorConfig::from_init_kwargs(&json!({
        "z_dim": 512, "w_dim": 512, "c_dim": 0, "img_resolution": res, "img_channels": 3,
        "m_layer_features": 1024, "m_num_layers": 8, "mapping_kwargs": {"num_layers": 8},
        "synthesis_kwargs": {"structure": 4, "channel_base": base, "channel_max": 512, "num_fp16_res": 4,
                             "conv_clamp": 256, "change": 256, "f_dim": 512, "f_dim2": 512}}))
}

fn d_config(res: usize, base: usize) -> Result<DiscriminatorConfig> {
    DiscriminatorConfig::from_init_kwargs(&json!({
        "c_dim": 0, "img_resolution": res, "img_channels": 3, "channel_base": base, "channel_max": 512,
        "num_fp16_res": 4, "conv_clamp": 256, "use_norm": false, "use_fts": true, "block_kwargs": {},
        "mapping_kwargs": {}, "epilogue_kwargs": {"structure": 4, "mbstd_group_size": 4, "f_dim": 512, "f_dim2": 512}}))
}

/// Convolution FLOPs of one generator forward for `n` images.
pub fn generator_flops(c: &GeneratorConfig, n: usize) -> f64 {
    let mut f = 0.0;
    for r in c.resolutions() {
        let (cout, px) = (c.channels(r) as f64, (r * r) as f64);
        if r > 4 {
            // conv0: the transposed 3×3 touches every input pixel (r/2)² nine times.
            f += 2.0 * cout * c.channels(r / 2) as f64 * 9.0 * px / 4.0;
        }
        f += 2.0 * cout * cout * 9.0 * px + 2.0 * 3.0 * cout * px;
    }
    f * n as f64
}

/// Convolution FLOPs of one discriminator forward for `n` images.
pub fn discriminator_flops(c: &DiscriminatorConfig, n: usize) -> f64 {
    let mut f = 0.0;
    for r in c.resolutions() {
        let (t, o, px) = (
            c.channels(r) as f64,
            c.channels(r / 2) as f64,
            (r * r) as f64,
        );
        if r == c.img_resolution {
            f += 2.0 * 3.0 * t * px;
        }
        f += 2.0 * t * t * 9.0 * px + 2.0 * o * t * 9.0 * px / 4.0 + 2.0 * o * t * px / 4.0;
    }
    let c4 = c.channels(4) as f64;
    f += 2.0 * c4 * (c4 + 1.0) * 9.0 * 16.0 + 2.0 * 16.0 * c4 * c4;
    f * n as f64
}

/// b256.conv1's x `[n, ch, r, r]`, weight, styles (about 1, as trained ones are) and output
/// gradient.
fn conv1_inputs(n: usize, ch: usize, r: usize, d: &crate::tensor::Device) -> Result<[Tensor; 4]> {
    let styles = crate::tensor::randn_vec(n * ch, 0.3, 82)
        .iter()
        .map(|v| v + 1.0)
        .collect();
    Ok([
        input(&[n, ch, r, r], 80, d, DType::F32)?,
        input(&[ch, ch, 3, 3], 81, d, DType::F32)?,
        Tensor::from_vec(styles, &[n, ch], d)?,
        input(&[n, ch, r, r], 83, d, DType::F32)?,
    ])
}

pub fn cases(quick: bool) -> Result<Vec<Case>> {
    let s = |full: usize, small: usize| if quick { small } else { full };
    let mut out = Vec::new();
    // The 256-px network's last synthesis conv: b256.conv1, 128 → 128 channels at 256².
    let (n, ch, r) = (s(16, 2), s(128, 8), s(256, 12));
    let flops = 2.0 * (n * ch * ch * 9 * r * r) as f64;
    let act = (4 * n * ch * r * r) as f64;
    // f32 forward and forward + backward; then forward + backward on the tensor cores (the
    // cp.async-pipelined implicit GEMMs, and the register-staged ones for comparison). Their
    // operands are rounded after the style scales them, so the CPU's f32 twin differs by the
    // rounding: an error relative to the outputs' scale (about 1 here), hence the floor.
    use crate::ops::precision::Precision;
    let variants = [
        (false, Precision::F32, false, 2e-3, 1e-3),
        (true, Precision::F32, false, 2e-3, 1e-3),
        (true, Precision::Tf32, false, 1e-2, 0.5),
        (true, Precision::Bf16, false, 6e-2, 0.5),
        (true, Precision::Bf16, true, 6e-2, 0.5),
    ];
    for (backward, p, staged, rtol, floor) in variants {
        let name = format!(
            "modconv {}{} b256.conv1 [{n},{ch},{r},{r}]",
            if backward { "fwd+bwd" } else { "fwd" },
            precision_tag(p, staged)
        );
        let (flops, bytes) = if backward {
            (3.0 * flops, 4.0 * act)
        } else {
            (flops, 2.0 * act)
        };
        let row = case(name, flops, bytes, rtol, move |d| {
            let [x, w, st, dy] = conv1_inputs(n, ch, r, d)?;
            Ok(Box::new(move || {
                let step = || {
                    let mut tape = if backward {
                        Tape::new()
                    } else {
                        Tape::inference()
                    };
                    for t in [&x, &w, &st] {
                        tape.watch(t);
                    }
                    let y = modulated_conv2d(
                        &mut tape,
                        &x,
                        &w,
                        &st,
                        true,
                        Resample::Same { padding: 1 },
                    )?;
                    if !backward {
                        return Ok(Some(y));
                    }
                    let g = tape.backward_with(&y, dy.clone())?;
                    // dx is the largest of the three gradients and depends on every part of
                    // the backward.
                    Ok(g.get(&x).cloned())
                };
                at_precision(p, staged, step)
            }))
        });
        out.push(row.error_floor(floor));
    }
    // The synthesis layer's tail as Lafite runs it, conv → + noise·strength → bias_act (lrelu √2,
    // clamp 256), forward + backward: in the convolution's store, and as the separate ops.
    // Activations moved: the forward reads x and writes u and y when fused, and does 3 more passes
    // separate (add_noise and bias_act each read one and write one); the backward's 4 of the
    // modulated convolution and 3 of bias_act's, plus add_noise's pass for the strength.
    for fused in [true, false] {
        let name = format!(
            "synthesis layer fwd+bwd {} b256.conv1 [{n},{ch},{r},{r}]",
            if fused { "fused" } else { "separate" }
        );
        let bytes = if fused { 11.0 * act } else { 14.0 * act };
        let row = case(name, 3.0 * flops, bytes, 2e-3, move |d| {
            let [x, w, st, dy] = conv1_inputs(n, ch, r, d)?;
            let bias = input(&[ch], 88, d, DType::F32)?;
            let noise = input(&[n, 1, r, r], 89, d, DType::F32)?;
            let strength = Tensor::from_vec(vec![0.1], &[], d)?;
            Ok(Box::new(move || {
                let mut tape = Tape::new();
                for t in [&x, &w, &st, &bias, &strength] {
                    tape.watch(t);
                }
                let epi = BiasAct::new(
                    Some(&bias),
                    Act::LRELU,
                    Act::LRELU.default_gain(),
                    Some(256.0),
                )
                .with_noise(Some(Noise {
                    noise: &noise,
                    strength: &strength,
                }));
                let y = if fused {
                    modulated_conv2d_bias_act(&mut tape, &x, &w, &st, true, 1, epi)?
                } else {
                    let same = Resample::Same { padding: 1 };
                    let u = modulated_conv2d(&mut tape, &x, &w, &st, true, same)?;
                    epi.apply_separately(&mut tape, &u)?
                };
                let g = tape.backward_with(&y, dy.clone())?;
                Ok(g.get(&x).cloned())
            }))
        });
        out.push(row.error_floor(1e-3));
    }
    // Whole networks at 256 px, batch 16 (quick: 16 px, narrow, batch 2).
    let (res, base, n) = (s(256, 16), s(32768, 256), s(16, 2));
    let gc = g_config(res, base)?;
    let gc_step = gc.clone();
    let gflops = generator_flops(&gc, n);
    out.push(
        case(
            format!("lafite G forward {res}px B={n}"),
            gflops,
            (4 * n * 3 * res * res) as f64,
            2e-3,
            move |d| {
                let g = Network::<Generator>::new(gc.clone(), Some(5), d)?;
                let z = input(&[n, gc.z_dim], 84, d, DType::F32)?;
                let fts = input(&[n, gc.fts_width()], 85, d, DType::F32)?;
                Ok(Box::new(move || {
                    Ok(Some(g.net.forward(
                        &mut Tape::inference(),
                        &z,
                        &fts,
                        1.0,
                        NoiseMode::Const,
                    )?))
                }))
            },
        )
        .model_step(),
    );
    let dc = d_config(res, base)?;
    out.push(gd_step_case(gc_step, dc.clone(), n));
    out.push(
        case(
            format!("lafite D forward {res}px B={n}"),
            discriminator_flops(&dc, n),
            (4 * n * 3 * res * res) as f64,
            2e-3,
            move |d| {
                let net = Network::<Discriminator>::new(dc.clone(), Some(6), d)?;
                let img = input(&[n, 3, res, res], 86, d, DType::F32)?;
                let fts = input(&[n, dc.f_dim + dc.f_dim2], 87, d, DType::F32)?;
                Ok(Box::new(move || {
                    let o = net.net.forward(&mut Tape::inference(), &img, &fts)?;
                    Ok(Some(o.logits))
                }))
            },
        )
        .model_step(),
    );
    Ok(out)
}

/// One G+D training step as `train-gan` runs it (structure 4): Gmain (adversarial + the two itd
/// terms; the CLIP term is left out: it times CLIP, benched on its own), Dmain and R1 (the
/// finite-difference Hessian–vector product: three D passes). Adam is left out. FLOPs: Gmain
/// 3G + 3D, Dmain 1G + 6D, R1 9D. Validated on G's gradient of the last ToRGB weight.
fn gd_step_case(gc: GeneratorConfig, dc: DiscriminatorConfig, n: usize) -> Case {
    let res = gc.img_resolution;
    let flops = 4.0 * generator_flops(&gc, n) + 18.0 * discriminator_flops(&dc, n);
    let bytes = (4 * n * 3 * res * res * 8) as f64;
    case(
        format!("lafite G+D step {res}px B={n} (R1)"),
        flops,
        bytes,
        5e-3,
        move |d| {
            let g = Network::<Generator>::new(gc.clone(), Some(5), d)?;
            let mut dn = Network::<Discriminator>::new(dc.clone(), Some(6), d)?;
            let real = input(&[n, 3, res, res], 88, d, DType::F32)?;
            let (f1, f2) = (gc.f_dim, gc.f_dim2);
            let c1 = crate::tensor::randn_vec(n * f1, 1.0, 89);
            let c2 = crate::tensor::randn_vec(n * f2, 1.0, 90);
            let z = Tensor::zeros(&[n, gc.z_dim], d)?;
            let cfg = GanLossConfig {
                itc: 0.0,
                ..GanLossConfig::reference(res, n)
            };
            let device = d.clone();
            // Unused (no CLIP term), but g_main takes CLIP's view of the images.
            let view = ClipView::new(
                Placement::Crop {
                    side: res,
                    left: 0,
                    top: 0,
                },
                n,
                res,
                res,
                d,
            )?;
            let last = format!("synthesis.b{res}.torgb.weight");
            Ok(Box::new(move || {
                let mut rng = Rng::new(1);
                let cond = Conditions::perturbed(&c1, f1, Some((&c2, f2)), &mut rng, &device)?;
                let nets = Nets {
                    g: &g.net,
                    d: &dn.net,
                    clip: None,
                    clip_size: 224,
                };
                let mut tape = Tape::new();
                g.params.watch_all(&mut tape);
                let (loss, _, _) = g_main(
                    &mut tape,
                    &nets,
                    &cfg,
                    &z,
                    &cond,
                    None,
                    NoiseMode::Const,
                    &view,
                    &real,
                    None,
                )?;
                let g_grads = tape.backward(&loss)?;
                let mut tape = Tape::new();
                dn.params.watch_all(&mut tape);
                let (loss, _, _) = d_main(
                    &mut tape,
                    &nets,
                    &cfg,
                    &z,
                    &cond,
                    None,
                    NoiseMode::Const,
                    &real,
                )?;
                let d_grads = tape.backward(&loss)?;
                dn.params.zero_grad();
                dn.params.accumulate(&d_grads)?;
                r1(
                    &dn.net,
                    &mut dn.params,
                    &real,
                    &cond.fts,
                    cfg.r1_gamma,
                    16.0,
                )?;
                Ok(g_grads.get(g.params.get(&last)?).cloned())
            }))
        },
    )
    .model_step()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_networks_cost_what_stylegan2_costs() {
        // StyleGAN2 at 256 px is tens of GFLOPs per image in its convolutions.
        let g = generator_flops(&g_config(256, 32768).unwrap(), 1) / 1e9;
        let d = discriminator_flops(&d_config(256, 32768).unwrap(), 1) / 1e9;
        assert!((30.0..120.0).contains(&g), "G {g} GFLOP");
        assert!((20.0..120.0).contains(&d), "D {d} GFLOP");
    }
}
