//! CLIP's image preprocessing against torchvision + PIL (fixture made by
//! scripts/make_preprocess_fixture.py; see tests/fixtures/preprocess/README.md).

use mindreader::nn::load_safetensors;
use mindreader::ops::image::clip_preprocess;
use mindreader::testing::{assert_close, devices, fixtures_dir};

#[test]
fn clip_preprocess_matches_pil_and_torchvision() {
    let path = fixtures_dir()
        .join("preprocess")
        .join("preprocess.safetensors");
    let (tensors, _) = load_safetensors(&path).unwrap_or_else(|e| {
        panic!("{e} (run tests from the repository root or set MINDREADER_FIXTURES)")
    });
    let mut checked = 0;
    for (name, expected) in tensors.iter().filter(|(n, _)| n.starts_with("expected.")) {
        let mut parts = name.split('.').skip(1);
        let (image, size) = (
            parts.next().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
        );
        let img = &tensors
            .iter()
            .find(|(n, _)| *n == format!("image.{image}"))
            .unwrap()
            .1;
        let s = img.shape();
        let pixels: Vec<u8> = img.to_vec_f32().unwrap().iter().map(|&v| v as u8).collect();
        let want = expected.to_vec_f32().unwrap();
        for device in devices() {
            let got = clip_preprocess(&pixels, [s[0], s[1], s[2], s[3]], size, &device).unwrap();
            assert_eq!(got.shape(), expected.shape(), "{name}");
            // PIL's integer passes are reproduced exactly and the f32 normalisation is the same
            // two operations as torchvision's: bit-identical on the CPU. The GPU is allowed a few
            // ulps (|x| ≤ 2.2) should its division ever round differently.
            let atol = if device.is_cuda() { 1e-6 } else { 0.0 };
            assert_close(
                &got.to_vec_f32().unwrap(),
                &want,
                0.0,
                atol,
                &format!("{name} on {device}"),
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} expected tensors in the fixture"
    );
}
