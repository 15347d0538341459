//! Lafite's ops, layers, generator and discriminator against the mind-reader fork's own code
//! (fixtures made by scripts/make_lafite_fixtures.py with torch 2.5.1 on the CPU), on every device.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mindreader::models::lafite::{Discriminator, Generator, Network};
use mindreader::nn::{
    load_safetensors, Conditioning, NoiseMode, ParamStore, Params, SynthesisLayer, ToRgb,
};
use mindreader::ops::bias_act::{bias_act, Act};
use mindreader::ops::channels::add_noise;
use mindreader::ops::channels::normalize_2nd_moment;
use mindreader::ops::conv2d::{conv2d, conv_transpose2d};
use mindreader::ops::mbstd::minibatch_stddev;
use mindreader::ops::modconv::{modulated_conv2d, Resample};
use mindreader::ops::upfirdn2d::upfirdn2d;
use mindreader::testing::{assert_close, devices, fixtures_dir};
use mindreader::{Device, Tape, Tensor};

/// The fixture layers' conditioning: one 12-wide condition, the fork's MLP lr multiplier.
const FORK_CONDITION: Conditioning = Conditioning {
    structure: 2,
    f_dim: 12,
    f_dim2: 0,
    lr_multiplier: 0.01,
};

struct Fixture {
    tensors: Vec<(String, Tensor)>,
    meta: BTreeMap<String, String>,
    path: PathBuf,
}

impl Fixture {
    fn open(name: &str) -> Fixture {
        let path = fixtures_dir().join("lafite").join(name);
        let (tensors, meta) = load_safetensors(&path).unwrap_or_else(|e| {
            panic!("{e} (run tests from the repository root or set MINDREADER_FIXTURES)")
        });
        Fixture {
            tensors,
            meta,
            path,
        }
    }

    fn get(&self, name: &str, device: &Device) -> Tensor {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{} lacks {name}", self.path.display()))
            .1
            .to_device(device)
            .unwrap()
    }

    fn vec(&self, name: &str) -> Vec<f32> {
        self.get(name, &Device::Cpu).to_vec_f32().unwrap()
    }

    fn params(&self, case: &str) -> serde_json::Value {
        serde_json::from_str(&self.meta[case]).unwrap()
    }
}

/// f32 parity with the reference: relative 1e-4 plus an absolute floor scaled to the values.
fn close(got: &Tensor, want: &[f32], tol: f32, what: &str) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    assert_close(&got.to_vec_f32().unwrap(), want, tol, tol * scale, what);
}

/// Runs `op` forward on a tape watching `inputs`, then backward with the fixture's dy; checks y
/// and each `(input, fixture gradient name)`.
fn check_op(
    fx: &Fixture,
    case: &str,
    device: &Device,
    inputs: &[(&str, Option<&str>)],
    op: impl Fn(&mut Tape, &[Tensor]) -> Tensor,
) {
    let ts: Vec<Tensor> = inputs
        .iter()
        .map(|(n, _)| fx.get(&format!("{case}.{n}"), device))
        .collect();
    let mut tape = Tape::new();
    for (t, (_, g)) in ts.iter().zip(inputs) {
        if g.is_some() {
            tape.watch(t);
        }
    }
    let y = op(&mut tape, &ts);
    let what = format!("{case} on {device}");
    close(
        &y,
        &fx.vec(&format!("{case}.y")),
        1e-5,
        &format!("y {what}"),
    );
    let grads = tape
        .backward_with(&y, fx.get(&format!("{case}.dy"), device))
        .unwrap();
    for (t, (n, g)) in ts.iter().zip(inputs) {
        if let Some(g) = g {
            let got = grads
                .get(t)
                .unwrap_or_else(|| panic!("no gradient for {n}"));
            close(
                got,
                &fx.vec(&format!("{case}.{g}")),
                1e-5,
                &format!("{g} {what}"),
            );
        }
    }
}

fn padding4(v: &serde_json::Value) -> [i64; 4] {
    let p: Vec<i64> = serde_json::from_value(v["padding"].clone()).unwrap();
    [p[0], p[1], p[2], p[3]]
}

#[test]
fn upfirdn2d_matches_the_reference() {
    let fx = Fixture::open("ops.safetensors");
    for device in devices() {
        for case in ["up2", "down2", "pad2", "asym", "crop"] {
            let p = fx.params(case);
            let (up, down) = (
                p["up"].as_u64().unwrap() as usize,
                p["down"].as_u64().unwrap() as usize,
            );
            let gain = p["gain"].as_f64().unwrap() as f32;
            let flip = p["flip_filter"].as_bool().unwrap();
            check_op(
                &fx,
                case,
                &device,
                &[("x", Some("dx")), ("f", None)],
                |tape, t| {
                    upfirdn2d(tape, &t[0], &t[1], up, down, padding4(&p), flip, gain).unwrap()
                },
            );
        }
    }
}

#[test]
fn conv2d_resample_matches_the_reference() {
    let fx = Fixture::open("ops.safetensors");
    for device in devices() {
        for case in ["conv_up", "conv_down", "conv_down_1x1", "conv_same"] {
            let p = fx.params(case);
            let (up, down) = (
                p["up"].as_u64().unwrap() as usize,
                p["down"].as_u64().unwrap() as usize,
            );
            let pad = p["padding"].as_u64().unwrap() as usize;
            check_op(
                &fx,
                case,
                &device,
                &[("x", Some("dx")), ("w", Some("dw")), ("f", None)],
                |tape, t| {
                    mindreader::nn::conv2d_resample(tape, &t[0], &t[1], &t[2], up, down, pad)
                        .unwrap()
                },
            );
        }
        check_op(
            &fx,
            "conv_stride_groups",
            &device,
            &[("x", Some("dx")), ("w", Some("dw")), ("b", Some("db"))],
            |tape, t| conv2d(tape, &t[0], &t[1], Some(&t[2]), 2, (1, 1), 2).unwrap(),
        );
        check_op(
            &fx,
            "conv_transpose",
            &device,
            &[("x", Some("dx")), ("w", Some("dw"))],
            |tape, t| conv_transpose2d(tape, &t[0], &t[1], None, 2, (0, 0), 1).unwrap(),
        );
    }
}

#[test]
fn bias_act_matches_the_reference() {
    let fx = Fixture::open("ops.safetensors");
    for device in devices() {
        for case in ["lrelu_clamp", "linear_clamp", "lrelu_2d"] {
            let p = fx.params(case);
            let act = Act::from_name(p["act"].as_str().unwrap()).unwrap();
            let gain = p["effective_gain"].as_f64().unwrap() as f32;
            let clamp = p["effective_clamp"].as_f64().unwrap() as f32;
            let clamp = (clamp >= 0.0).then_some(clamp);
            check_op(
                &fx,
                case,
                &device,
                &[("x", Some("dx")), ("b", Some("db"))],
                |tape, t| bias_act(tape, &t[0], Some(&t[1]), act, gain, clamp).unwrap(),
            );
        }
    }
}

#[test]
fn modulated_conv2d_matches_the_reference() {
    let fx = Fixture::open("ops.safetensors");
    let grads = [
        ("x", Some("dx")),
        ("weight", Some("dw")),
        ("styles", Some("dstyles")),
    ];
    for device in devices() {
        for case in ["modconv_demod", "modconv_demod_unfused", "modconv_torgb"] {
            let p = fx.params(case);
            let demod = p["demodulate"].as_bool().unwrap();
            let pad = p["padding"].as_u64().unwrap() as usize;
            check_op(&fx, case, &device, &grads, |tape, t| {
                modulated_conv2d(
                    tape,
                    &t[0],
                    &t[1],
                    &t[2],
                    demod,
                    Resample::Same { padding: pad },
                )
                .unwrap()
            });
        }
        // The generator's conv0: transposed ×2, then the [1, 3, 3, 1] filter with pad 1, gain 4.
        let mut with_f = grads.to_vec();
        with_f.push(("f", None));
        check_op(&fx, "modconv_up", &device, &with_f, |tape, t| {
            let y = modulated_conv2d(tape, &t[0], &t[1], &t[2], true, Resample::Up2).unwrap();
            upfirdn2d(tape, &y, &t[3], 1, 1, [1; 4], false, 4.0).unwrap()
        });
        // Noise after the demodulation, as the reference's fma(x, dcoefs, noise).
        check_op(
            &fx,
            "modconv_noise",
            &device,
            &[
                ("x", Some("dx")),
                ("weight", Some("dw")),
                ("styles", Some("dstyles")),
                ("noise", None),
            ],
            |tape, t| {
                let y = modulated_conv2d(
                    tape,
                    &t[0],
                    &t[1],
                    &t[2],
                    true,
                    Resample::Same { padding: 1 },
                )
                .unwrap();
                let one = Tensor::full(1.0, &[], &device).unwrap();
                add_noise(tape, &y, &t[3], &one).unwrap()
            },
        );
    }
}

#[test]
fn minibatch_stddev_and_normalize_2nd_moment_match_the_reference() {
    let fx = Fixture::open("ops.safetensors");
    for device in devices() {
        for case in ["mbstd_g4", "mbstd_g2"] {
            let g = fx.params(case)["group_size"].as_u64().unwrap() as usize;
            check_op(&fx, case, &device, &[("x", Some("dx"))], |tape, t| {
                minibatch_stddev(tape, &t[0], g, 1).unwrap()
            });
        }
        check_op(&fx, "norm2", &device, &[("x", Some("dx"))], |tape, t| {
            normalize_2nd_moment(tape, &t[0], 1e-8).unwrap()
        });
    }
}

/// A layer built with zeros under `prefix`, then filled from the fixture by name.
fn layer_stores(fx: &Fixture, device: &Device, build: impl FnOnce(&mut Params)) {
    let (mut store, mut buffers) = (ParamStore::new(), ParamStore::new());
    {
        let mut p = Params {
            store: &mut store,
            buffers: Some(&mut buffers),
            device,
            seed: None,
        };
        build(&mut p);
    }
    let rest = store.assign_from(fx.tensors.clone(), "", &fx.path).unwrap();
    buffers.assign_from(rest, "", &fx.path).unwrap();
}

#[test]
fn synthesis_layers_match_the_reference() {
    let fx = Fixture::open("layer.safetensors");
    for device in devices() {
        for (prefix, inputs, cin, up, clamp) in [
            ("param", "", 6, true, 256.0),
            ("flat.param", "flat.", 5, false, 0.25),
        ] {
            let mut layer = None;
            layer_stores(&fx, &device, |p| {
                layer = Some(
                    SynthesisLayer::new(p, prefix, cin, 5, 8, 8, up, Some(clamp), FORK_CONDITION)
                        .unwrap(),
                );
            });
            let layer = layer.unwrap();
            let (x, w, fts) = (
                fx.get(&format!("{inputs}x"), &device),
                fx.get(&format!("{inputs}w"), &device),
                fx.get(&format!("{inputs}fts"), &device),
            );
            for (mode, want) in [(NoiseMode::Const, "y_const"), (NoiseMode::None, "y_none")] {
                let y = layer
                    .forward(&mut Tape::inference(), &x, &w, &fts, mode)
                    .unwrap();
                close(
                    &y,
                    &fx.vec(&format!("{inputs}{want}")),
                    1e-4,
                    &format!("{prefix} {want} on {device}"),
                );
            }
        }
        let mut torgb = None;
        layer_stores(&fx, &device, |p| {
            torgb =
                Some(ToRgb::new(p, "torgb.param", 5, 3, 8, Some(256.0), FORK_CONDITION).unwrap());
        });
        let torgb = torgb.unwrap();
        let y = torgb
            .forward(
                &mut Tape::inference(),
                &fx.get("torgb.x", &device),
                &fx.get("torgb.w", &device),
                &fx.get("torgb.fts", &device),
            )
            .unwrap();
        close(&y, &fx.vec("torgb.y"), 1e-4, &format!("torgb on {device}"));
    }
}

#[test]
fn generators_match_the_reference() {
    for s in ["s2", "s4"] {
        let io = Fixture::open(&format!("g_{s}_io.safetensors"));
        let path = fixtures_dir()
            .join("lafite")
            .join(format!("g_{s}.safetensors"));
        for device in devices() {
            let g = Network::<Generator>::load(&path, &device).unwrap();
            assert_eq!(g.config().num_ws().to_string(), io.meta["num_ws"]);
            let fts = io.get("fts", &device);
            // The mapping alone: ws for z1 at ψ 0.7 (every one of the num_ws rows is the same w).
            let w = g
                .net
                .mapping
                .forward(&mut Tape::inference(), &io.get("z1", &device), 0.7)
                .unwrap();
            let ws = io.get("ws_z1_psi07", &Device::Cpu);
            let (n, num_ws, w_dim) = (ws.shape()[0], ws.shape()[1], ws.shape()[2]);
            let first: Vec<f32> = ws
                .to_vec_f32()
                .unwrap()
                .chunks(w_dim)
                .step_by(num_ws)
                .flatten()
                .copied()
                .collect();
            assert_eq!(first.len(), n * w_dim);
            close(&w, &first, 1e-4, &format!("{s} ws on {device}"));
            for (out, z, psi, noise) in [
                ("img_z0_psi1_const", "z0", 1.0, NoiseMode::Const),
                ("img_z1_psi1_none", "z1", 1.0, NoiseMode::None),
                ("img_z1_psi07_const", "z1", 0.7, NoiseMode::Const),
                ("img_z0_psi07_none", "z0", 0.7, NoiseMode::None),
            ] {
                let img = g
                    .net
                    .forward(
                        &mut Tape::inference(),
                        &io.get(z, &device),
                        &fts,
                        psi,
                        noise,
                    )
                    .unwrap();
                close(&img, &io.vec(out), 1e-4, &format!("{s} {out} on {device}"));
            }
        }
    }
}

#[test]
fn discriminators_match_the_reference() {
    for s in ["s2", "s4"] {
        let io = Fixture::open(&format!("d_{s}_io.safetensors"));
        let path = fixtures_dir()
            .join("lafite")
            .join(format!("d_{s}.safetensors"));
        for device in devices() {
            let mut d = Network::<Discriminator>::load(&path, &device).unwrap();
            let (img, fts) = (io.get("img", &device), io.get("fts", &device));
            let out = d.net.forward(&mut Tape::inference(), &img, &fts).unwrap();
            close(
                &out.logits,
                &io.vec("logits"),
                1e-5,
                &format!("{s} logits on {device}"),
            );
            close(
                &out.d_fts,
                &io.vec("d_fts"),
                1e-5,
                &format!("{s} d_fts on {device}"),
            );
            if s == "s4" {
                close(
                    out.d_fts2.as_ref().unwrap(),
                    &io.vec("d_fts2"),
                    1e-5,
                    &format!("{s} d_fts2 on {device}"),
                );
            } else {
                d.net.config.use_norm = true;
                let out = d.net.forward(&mut Tape::inference(), &img, &fts).unwrap();
                close(
                    &out.logits,
                    &io.vec("logits_norm"),
                    1e-5,
                    &format!("{s} logits (use_norm) on {device}"),
                );
                close(
                    &out.d_fts,
                    &io.vec("d_fts_norm"),
                    1e-5,
                    &format!("{s} d_fts (use_norm) on {device}"),
                );
            }
        }
    }
}

#[test]
fn checkpoints_round_trip_and_bad_ones_are_named() {
    let dir = std::env::temp_dir().join(format!("mindreader-lafite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures_dir().join("lafite").join("g_s4.safetensors");
    let g = Network::<Generator>::load(&src, &Device::Cpu).unwrap();
    let copy = dir.join("g.safetensors");
    g.save(&copy).unwrap();
    let again = Network::<Generator>::load(&copy, &Device::Cpu).unwrap();
    assert_eq!(again.config(), g.config());
    for (a, b) in g.params.iter().zip(again.params.iter()) {
        assert_eq!(
            a.value.to_vec_f32().unwrap(),
            b.value.to_vec_f32().unwrap(),
            "{}",
            a.name
        );
    }
    // A generator is not a discriminator.
    let err = Network::<Discriminator>::load(&src, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("g_s4.safetensors") && err.contains("expected a Discriminator"),
        "{err}"
    );
    // A missing tensor is named with the file.
    let (mut tensors, meta) = load_safetensors(&src).unwrap();
    tensors.retain(|(n, _)| n != "synthesis.b8.conv1.noise_strength");
    let err = Network::<Generator>::from_tensors(tensors, &meta, &src, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("synthesis.b8.conv1.noise_strength"), "{err}");
    // No init_kwargs, or kwargs the network would not match.
    let (tensors, mut meta) = load_safetensors(&src).unwrap();
    meta.remove("init_kwargs");
    let err = Network::<Generator>::from_tensors(tensors.clone(), &meta, &src, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("init_kwargs"), "{err}");
    let (_, meta) = load_safetensors(&src).unwrap();
    let mut kwargs: serde_json::Value = serde_json::from_str(&meta["init_kwargs"]).unwrap();
    kwargs["img_resolution"] = 16.into();
    let mut meta2 = meta.clone();
    meta2.insert("init_kwargs".into(), kwargs.to_string());
    let err = Network::<Generator>::from_tensors(tensors, &meta2, &src, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("missing tensor") && err.contains("b16"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A freshly initialised generator and discriminator (the reference's init, seeded) draw finite
/// pictures, and one backward pass through D(G(z)) reaches every parameter of both.
#[test]
fn gradients_reach_every_parameter_of_a_fresh_g_and_d() {
    let (gpath, dpath) = (
        fixtures_dir().join("lafite").join("g_s4.safetensors"),
        fixtures_dir().join("lafite").join("d_s4.safetensors"),
    );
    let gc = Network::<Generator>::load(&gpath, &Device::Cpu)
        .unwrap()
        .config()
        .clone();
    let mut dc = Network::<Discriminator>::load(&dpath, &Device::Cpu)
        .unwrap()
        .config()
        .clone();
    dc.img_resolution = gc.img_resolution;
    for device in devices() {
        let g = Network::<Generator>::new(gc.clone(), Some(7), &device).unwrap();
        let d = Network::<Discriminator>::new(dc.clone(), Some(8), &device).unwrap();
        let n = 4;
        let z = Tensor::randn(&[n, gc.z_dim], 1.0, 1, &device).unwrap();
        let fts = Tensor::randn(&[n, gc.fts_width()], 1.0, 2, &device).unwrap();
        let mut tape = Tape::new();
        g.params.watch_all(&mut tape);
        d.params.watch_all(&mut tape);
        let img = g
            .net
            .forward(&mut tape, &z, &fts, 1.0, NoiseMode::Random(3))
            .unwrap();
        assert_eq!(img.shape(), &[n, 3, gc.img_resolution, gc.img_resolution]);
        // Noise drawn beforehand into a bank (what a CUDA graph reads) is the same noise.
        let bank = mindreader::nn::NoiseBank(
            mindreader::nn::NoiseBank::draw(&g.net.noise_layers(), n, 3)
                .into_iter()
                .zip(g.net.noise_layers())
                .map(|((name, v), (_, r))| {
                    (name, Tensor::from_vec(v, &[n, 1, r, r], &device).unwrap())
                })
                .collect(),
        );
        let given = g
            .net
            .forward(
                &mut Tape::inference(),
                &z,
                &fts,
                1.0,
                NoiseMode::Given(&bank),
            )
            .unwrap();
        assert_eq!(
            given.to_vec_f32().unwrap(),
            img.to_vec_f32().unwrap(),
            "on {device}"
        );
        let v = img.to_vec_f32().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0),
            "on {device}"
        );
        let out = d.net.forward(&mut tape, &img, &fts).unwrap();
        let loss = mindreader::ops::reduce::sum_all(&mut tape, &out.logits).unwrap();
        let grads = tape.backward(&loss).unwrap();
        for p in g.params.iter().chain(d.params.iter()) {
            // noise_strength starts at 0, so its gradient exists but the layers' own do too.
            let gr = grads
                .get(&p.value)
                .unwrap_or_else(|| panic!("no gradient for {} on {device}", p.name));
            let gv = gr.to_vec_f32().unwrap();
            assert_eq!(gr.shape(), p.value.shape(), "{}", p.name);
            assert!(gv.iter().all(|x| x.is_finite()), "{} on {device}", p.name);
        }
    }
}
