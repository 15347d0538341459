//! Mind Reader's training augmentations against torchvision's functional ops with the same
//! parameters (fixture made by scripts/make_augment_fixture.py; see
//! tests/fixtures/augment/README.md), op by op and chained, on every device.

use mindreader::nn::load_safetensors;
use mindreader::ops::augment::{self, Crop, Cutout, ImageAugment, Jitter, MindReaderAugment};
use mindreader::testing::{assert_close, devices, fixtures_dir};
use mindreader::Tensor;
use serde_json::Value;

struct Fixture {
    tensors: Vec<(String, Tensor)>,
    params: Value,
}

fn fixture() -> Fixture {
    let path = fixtures_dir().join("augment").join("augment.safetensors");
    let (tensors, meta) = load_safetensors(&path).unwrap_or_else(|e| {
        panic!("{e} (run tests from the repository root or set MINDREADER_FIXTURES)")
    });
    let params =
        serde_json::from_str(meta.get("params").expect("fixture metadata lacks params")).unwrap();
    Fixture { tensors, params }
}

impl Fixture {
    fn get(&self, name: &str) -> &Tensor {
        &self
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
            .1
    }

    fn sizes(&self) -> Vec<String> {
        self.params.as_object().unwrap().keys().cloned().collect()
    }

    /// Per-image parameters of `op` for image size `size`.
    fn per_image(&self, size: &str, op: &str) -> Vec<Value> {
        self.params[size][op]
            .as_array()
            .unwrap_or_else(|| panic!("no {op} parameters for {size}"))
            .clone()
    }
}

fn crop(v: &Value) -> Crop {
    let c: Vec<usize> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    Crop {
        top: c[0],
        left: c[1],
        height: c[2],
        width: c[3],
    }
}

fn jitter(v: &Value) -> Option<Jitter> {
    if v.is_null() {
        return None;
    }
    let f = |k: &str| v[k].as_f64().unwrap() as f32;
    let o: Vec<u8> = v["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect();
    Some(Jitter {
        order: [o[0], o[1], o[2], o[3]],
        brightness: f("brightness"),
        contrast: f("contrast"),
        saturation: f("saturation"),
        hue: f("hue"),
    })
}

fn sigma(v: &Value) -> Option<f32> {
    v.as_f64().map(|s| s as f32)
}

fn cutout(v: &Value, h: usize, w: usize) -> Option<Cutout> {
    let c = v.as_array()?;
    Some(Cutout::at(
        c[0].as_f64().unwrap(),
        c[1].as_f64().unwrap(),
        h,
        w,
        0.3,
    ))
}

/// Runs `op(images, size)` on every device for every image size and compares with torchvision's
/// `<name>.<size>` at (rtol, atol).
fn check(
    name: &str,
    rtol: f32,
    atol: f32,
    op: impl Fn(&Fixture, &Tensor, &str, usize, usize) -> Tensor,
) {
    let fx = fixture();
    for size in fx.sizes() {
        let images = fx.get(&format!("image.{size}"));
        let (h, w) = (images.shape()[2], images.shape()[3]);
        let want = fx.get(&format!("{name}.{size}")).to_vec_f32().unwrap();
        for device in devices() {
            let x = images.to_device(&device).unwrap();
            let got = op(&fx, &x, &size, h, w);
            assert_eq!(got.shape(), images.shape(), "{name} {size}");
            assert_close(
                &got.to_vec_f32().unwrap(),
                &want,
                rtol,
                atol,
                &format!("{name} {size} on {device}"),
            );
        }
    }
}

#[test]
fn resized_crop_matches_torchvision() {
    // torch's bilinear sums its taps in another order: a few f32 ulps.
    check("crop", 0.0, 2e-6, |fx, x, size, _, _| {
        let crops: Vec<Crop> = fx.per_image(size, "crop").iter().map(crop).collect();
        augment::resized_crop(x, &crops).unwrap()
    });
}

#[test]
fn hflip_matches_torchvision() {
    check("flip", 0.0, 0.0, |fx, x, size, _, _| {
        let flags: Vec<bool> = fx
            .per_image(size, "flip")
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        augment::hflip(x, &flags).unwrap()
    });
}

#[test]
fn color_jitter_matches_torchvision() {
    // The contrast mean is summed in another order, and hue goes through HSV and back.
    check("jitter", 0.0, 1e-5, |fx, x, size, _, _| {
        let j: Vec<Option<Jitter>> = fx.per_image(size, "jitter").iter().map(jitter).collect();
        augment::color_jitter(x, &j).unwrap()
    });
}

#[test]
fn grayscale_matches_torchvision() {
    check("gray", 0.0, 1e-7, |fx, x, size, _, _| {
        let flags: Vec<bool> = fx
            .per_image(size, "gray")
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        augment::grayscale(x, &flags).unwrap()
    });
}

#[test]
fn gaussian_blur_matches_torchvision() {
    // Separable (23 + 23 taps) against torchvision's 23×23 conv2d of the outer product.
    check("blur", 0.0, 2e-6, |fx, x, size, _, _| {
        let s: Vec<Option<f32>> = fx.per_image(size, "blur").iter().map(sigma).collect();
        augment::gaussian_blur(x, 23, &s).unwrap()
    });
}

#[test]
fn cutout_matches_mind_readers_random_mask() {
    check("cutout", 0.0, 0.0, |fx, x, size, h, w| {
        let rects: Vec<Option<Cutout>> = fx
            .per_image(size, "cutout")
            .iter()
            .map(|v| cutout(v, h, w))
            .collect();
        augment::cutout(x, &rects).unwrap()
    });
}

#[test]
fn the_whole_chain_matches_torchvision() {
    check("chain", 0.0, 2e-5, |fx, x, size, h, w| {
        let at = |op: &str| fx.per_image(size, op);
        let (crops, flips, jitters, grays, blurs, cuts) = (
            at("crop"),
            at("flip"),
            at("jitter"),
            at("gray"),
            at("blur"),
            at("cutout"),
        );
        let params: Vec<ImageAugment> = (0..x.shape()[0])
            .map(|i| ImageAugment {
                crop: crop(&crops[i]),
                flip: flips[i].as_bool().unwrap(),
                jitter: jitter(&jitters[i]),
                gray: grays[i].as_bool().unwrap(),
                blur_sigma: sigma(&blurs[i]),
                cutout: cutout(&cuts[i], h, w),
            })
            .collect();
        MindReaderAugment::default()
            .apply_params(x, &params)
            .unwrap()
    });
}

#[test]
fn the_fixture_exercises_every_branch() {
    let fx = fixture();
    let mut on = [0usize; 6];
    let mut off = [0usize; 6];
    for size in fx.sizes() {
        for (k, op) in ["crop", "flip", "jitter", "gray", "blur", "cutout"]
            .iter()
            .enumerate()
        {
            for v in fx.per_image(&size, op) {
                let active = !(v.is_null() || v == Value::Bool(false));
                if active {
                    on[k] += 1;
                } else {
                    off[k] += 1;
                }
            }
        }
    }
    assert!(
        on.iter().all(|&n| n > 0) && off[1..].iter().all(|&n| n > 0),
        "on {on:?} off {off:?}"
    );
}
