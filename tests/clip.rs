//! CLIP against Hugging Face `transformers` (fixture made by scripts/make_clip_fixture.py), and
//! its loading errors.

use std::path::PathBuf;

use mindreader::models::clip::Clip;
use mindreader::nn::{load_safetensors, save_safetensors};
use mindreader::ops::{elementwise::mul, reduce::sum_all};
use mindreader::testing::{assert_close, devices, fixtures_dir, random_vec};
use mindreader::{Device, Tape, Tensor};

fn tiny_dir() -> PathBuf {
    fixtures_dir().join("clip").join("tiny")
}

/// The fixture's inputs and transformers' outputs by name.
fn io() -> Vec<(String, Tensor)> {
    let path = fixtures_dir().join("clip").join("tiny_io.safetensors");
    load_safetensors(&path)
        .unwrap_or_else(|e| {
            panic!("{e} (run tests from the repository root or set MINDREADER_FIXTURES)")
        })
        .0
}

fn get(io: &[(String, Tensor)], name: &str) -> Tensor {
    io.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"))
        .1
        .clone()
}

/// The fixture's token ids, `[B, 77]` row by row.
fn input_ids(io: &[(String, Tensor)]) -> Vec<u32> {
    let ids = get(io, "input_ids").to_vec_f32().unwrap();
    ids.iter().map(|&v| v as u32).collect()
}

/// Σ w ⊙ logits of the fixture's images against its captions (and w ⊙ logits): a scalar whose
/// gradient reaches every weight, since the weights w make each logit count differently.
fn weighted_logit_sum(clip: &Clip, tape: &mut Tape, io: &[(String, Tensor)]) -> (Tensor, Tensor) {
    let img = clip.encode_image(tape, &get(io, "pixel_values")).unwrap();
    let txt = clip.encode_text(tape, &input_ids(io), 77).unwrap();
    let logits = clip.logits_per_image(tape, &img, &txt).unwrap();
    let w = Tensor::from_vec(random_vec(6, 9), &[2, 3], &Device::Cpu).unwrap();
    let lw = mul(tape, &logits, &w).unwrap();
    (sum_all(tape, &lw).unwrap(), lw)
}

/// A scratch directory holding a copy of the tiny CLIP with `edit` applied to its tensors.
fn edited_copy(tag: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mindreader-clip-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(tiny_dir().join("config.json"), dir.join("config.json")).unwrap();
    let (mut tensors, meta) = load_safetensors(&tiny_dir().join("model.safetensors")).unwrap();
    edit(&mut tensors);
    save_safetensors(&dir.join("model.safetensors"), &tensors, &meta).unwrap();
    dir
}

#[test]
fn clip_forward_matches_transformers() {
    let io = io();
    let ids = input_ids(&io);
    let context = get(&io, "input_ids").shape()[1];
    for device in devices() {
        let clip = Clip::load(&tiny_dir(), &device).unwrap();
        let mut tape = Tape::inference();
        let pixels = get(&io, "pixel_values").to_device(&device).unwrap();
        let img = clip.encode_image(&mut tape, &pixels).unwrap();
        let txt = clip.encode_text(&mut tape, &ids, context).unwrap();
        let logits = clip.logits_per_image(&mut tape, &img, &txt).unwrap();
        // f32 on the CPU: 1e-4 relative; the GPU's summation order differs, so a little looser.
        let (rtol, atol) = if device.is_cuda() {
            (1e-3, 1e-4)
        } else {
            (1e-4, 1e-5)
        };
        for (got, name) in [
            (&img, "image_features"),
            (&txt, "text_features"),
            (&logits, "logits_per_image"),
        ] {
            let want = get(&io, name);
            assert_eq!(got.shape(), want.shape(), "{name} shape");
            assert_close(
                &got.to_vec_f32().unwrap(),
                &want.to_vec_f32().unwrap(),
                rtol,
                atol,
                &format!("{name} on {device}"),
            );
        }
        for (x, name) in [(&img, "image_embeds"), (&txt, "text_embeds")] {
            let n = mindreader::ops::l2norm::l2_normalize(&mut tape, x, 1e-12).unwrap();
            assert_close(
                &n.to_vec_f32().unwrap(),
                &get(&io, name).to_vec_f32().unwrap(),
                rtol,
                atol,
                &format!("{name} on {device}"),
            );
        }
    }
}

/// d(Σ r ⊙ encode_image)/d(pixels) exists everywhere and matches a central difference at two
/// pixels (f32, so a loose tolerance). The GAN's CLIP losses need exactly this gradient.
#[test]
fn gradient_reaches_the_pixels() {
    let clip = Clip::load(&tiny_dir(), &Device::Cpu).unwrap();
    let px = get(&io(), "pixel_values").to_vec_f32().unwrap();
    let shape = [2, 3, 32, 32];
    let r = Tensor::from_vec(random_vec(2 * 24, 5), &[2, 24], &Device::Cpu).unwrap();
    let loss_of = |px: &[f32], tape: &mut Tape, watch: bool| {
        let x = Tensor::from_slice(px, &shape, &Device::Cpu).unwrap();
        if watch {
            tape.watch(&x);
        }
        let y = clip.encode_image(tape, &x).unwrap();
        let yr = mul(tape, &y, &r).unwrap();
        (x, sum_all(tape, &yr).unwrap())
    };
    let mut tape = Tape::new();
    let (x, loss) = loss_of(&px, &mut tape, true);
    let grad = tape
        .backward(&loss)
        .unwrap()
        .get(&x)
        .expect("a gradient for the pixels")
        .to_vec_f32()
        .unwrap();
    assert!(
        grad.iter().all(|g| g.is_finite())
            && grad.iter().filter(|&&g| g != 0.0).count() > grad.len() / 2
    );
    for i in [5, 2 * 3 * 32 * 32 - 77] {
        let eps = 1e-2;
        let at = |d: f32| {
            let mut p = px.clone();
            p[i] += d;
            loss_of(&p, &mut Tape::inference(), false)
                .1
                .scalar()
                .unwrap() as f64
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let err = (numeric - grad[i] as f64).abs();
        assert!(
            err <= 1e-3 + 2e-2 * numeric.abs(),
            "pixel {i}: analytic {} vs finite difference {numeric}",
            grad[i]
        );
    }
}

#[test]
fn missing_files_are_named() {
    let empty = std::env::temp_dir().join(format!("mindreader-clip-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = Clip::load(&empty, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::copy(tiny_dir().join("config.json"), empty.join("config.json")).unwrap();
    let err = Clip::load(&empty, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("missing"),
        "{err}"
    );
    std::fs::remove_dir_all(empty).ok();
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let name = "text_model.encoder.layers.1.mlp.fc2.weight";
    let dir = edited_copy("missing", |t| t.retain(|(n, _)| n != name));
    let err = Clip::load(&dir, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains(name) && err.contains("missing tensor") && err.contains("model.safetensors"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();

    let name = "vision_model.embeddings.position_embedding.weight";
    let dir = edited_copy("misshapen", |t| {
        let slot = t.iter_mut().find(|(n, _)| n == name).unwrap();
        slot.1 = Tensor::zeros(&[16, 48], &Device::Cpu).unwrap();
    });
    let err = Clip::load(&dir, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains(name) && err.contains("[16, 48]") && err.contains("[17, 48]"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unsupported_config_is_an_error() {
    let dir = edited_copy("gelu", |_| {});
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace(
        "\"hidden_size\": 48,",
        "\"hidden_size\": 48, \"hidden_act\": \"gelu\",",
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let err = Clip::load(&dir, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("unsupported config") && err.contains("vision_config.hidden_act"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_inputs_are_errors() {
    let clip = Clip::load(&tiny_dir(), &Device::Cpu).unwrap();
    let wrong = Tensor::zeros(&[1, 3, 224, 224], &Device::Cpu).unwrap();
    let err = clip
        .encode_image(&mut Tape::inference(), &wrong)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("[batch, 3, 32, 32]"), "{err}");
    assert!(clip
        .encode_text(&mut Tape::inference(), &[49406, 49408], 2)
        .is_err());
    assert!(clip
        .encode_text(&mut Tape::inference(), &[1; 78], 78)
        .is_err());
}

/// Training a small CLIP needs a gradient for every weight, the temperature `logit_scale` included:
/// d(Σ w ⊙ logits)/d logit_scale = Σ w ⊙ logits, since logits = exp(logit_scale)·cos.
#[test]
fn gradients_reach_every_weight() {
    let clip = Clip::load(&tiny_dir(), &Device::Cpu).unwrap();
    let io = io();
    let mut tape = Tape::new();
    clip.store.watch_all(&mut tape);
    let (loss, lw) = weighted_logit_sum(&clip, &mut tape, &io);
    let g = tape.backward(&loss).unwrap();
    for p in clip.store.iter() {
        let grad = g
            .get(&p.value)
            .unwrap_or_else(|| panic!("no gradient for {}", p.name))
            .to_vec_f32()
            .unwrap();
        assert!(
            grad.iter().all(|v| v.is_finite()) && grad.iter().any(|&v| v != 0.0),
            "{}",
            p.name
        );
    }
    let scale = clip.store.iter().find(|p| p.name == "logit_scale").unwrap();
    let got = g.get(&scale.value).unwrap().scalar().unwrap();
    let want: f32 = lw.to_vec_f32().unwrap().iter().sum();
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "d/d logit_scale {got} vs Σ w ⊙ logits {want}"
    );
}

/// A bf16 CLIP (weights and activations bf16, f32 arithmetic inside each op) stays within bf16
/// tolerance of transformers' f32 outputs, on every device; its features are bf16.
#[test]
fn bf16_forward_is_within_bf16_tolerance_of_transformers() {
    use mindreader::tensor::DType;
    let io = io();
    let ids = input_ids(&io);
    for device in devices() {
        let clip = Clip::load_as(&tiny_dir(), &device, DType::BF16).unwrap();
        assert_eq!(clip.dtype(), DType::BF16);
        let mut tape = Tape::inference();
        let pixels = get(&io, "pixel_values").to_device(&device).unwrap();
        let img = clip.encode_image(&mut tape, &pixels).unwrap();
        let txt = clip.encode_text(&mut tape, &ids, 77).unwrap();
        assert_eq!((img.dtype(), txt.dtype()), (DType::BF16, DType::BF16));
        let logits = clip.logits_per_image(&mut tape, &img, &txt).unwrap();
        for (got, name, d) in [(&img, "image_features", 24), (&txt, "text_features", 24)] {
            let (got, want) = (
                got.to_vec_f32().unwrap(),
                get(&io, name).to_vec_f32().unwrap(),
            );
            for (g, w) in got.chunks(d).zip(want.chunks(d)) {
                let dot: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cos = dot / (norm(g) * norm(w));
                let err = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
                    / norm(w);
                // bf16 keeps 8 bits of mantissa (relative step 2⁻⁸ ≈ 0.4 %), rounded once per op over
                // 3 layers (measured on the CPU: cosine ≥ 0.99998, max error ≤ 0.25 % of the norm).
                assert!(
                    cos > 0.9995 && err < 0.02,
                    "{name} on {device}: cosine {cos}, max error {err} of the norm"
                );
            }
        }
        assert_close(
            &logits.to_vec_f32().unwrap(),
            &get(&io, "logits_per_image").to_vec_f32().unwrap(),
            0.05,
            0.05,
            &format!("bf16 logits on {device}"),
        );
    }
}

/// Every weight's gradient, not only its existence: for each parameter tensor, its entry of
/// largest gradient against a central difference of Σ w ⊙ logits (evaluated in f32, so a loose
/// tolerance). A wrong backward in attention, a layer norm or the patch embedding would let a
/// trained CLIP learn only what survives the error (colours, say, and not layout).
#[test]
fn every_weights_gradient_matches_finite_differences() {
    let clip = Clip::load(&tiny_dir(), &Device::Cpu).unwrap();
    let io = io();
    let loss_of = |tape: &mut Tape| weighted_logit_sum(&clip, tape, &io).0;
    let mut tape = Tape::new();
    clip.store.watch_all(&mut tape);
    let loss = loss_of(&mut tape);
    let g = tape.backward(&loss).unwrap();
    for p in clip.store.iter() {
        let grad = g.get(&p.value).unwrap().to_vec_f32().unwrap();
        let (e, &analytic) = grad
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let at = |delta: f32| {
            p.value.storage_mut().cpu_f32_mut("test").unwrap()[e] += delta;
            let v = loss_of(&mut Tape::inference()).scalar().unwrap() as f64;
            p.value.storage_mut().cpu_f32_mut("test").unwrap()[e] -= delta;
            v
        };
        let h = 1e-2f32;
        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
        let err = (numeric - analytic as f64).abs();
        assert!(
            err <= 2e-3 + 3e-2 * numeric.abs(),
            "{}[{e}]: analytic {analytic} vs finite difference {numeric}",
            p.name
        );
    }
}
