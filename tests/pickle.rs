//! The checkpoint reader (src/pickle/) against files the authors' code writes
//! (scripts/make_pickle_fixtures.py), and against hostile and broken files.

use std::path::{Path, PathBuf};

use mindreader::pickle::{Checkpoint, Entry};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pickle")
        .join(name)
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

#[test]
fn snapshot_tensors_are_read_bit_for_bit() {
    let mut ck = Checkpoint::open(&fixture("snapshot.pkl")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("snapshot_tensors.json")).unwrap())
            .unwrap();
    let expected = expected.as_object().unwrap();
    let mut seen = 0;
    for key in ["G", "D", "G_ema", "fmri_vec", "fmri_vec2"] {
        for (name, t) in ck.read_tensors(key).unwrap() {
            let want = &expected[&format!("{key}/{name}")];
            assert_eq!(t.dtype.name(), want["dtype"], "{key}/{name}");
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            assert_eq!(t.shape, shape, "{key}/{name}");
            assert_eq!(fnv1a64(&t.data), want["fnv1a64"], "{key}/{name}");
            seen += 1;
        }
    }
    // every tensor of every network, no more and no fewer
    assert_eq!(seen, expected.len());
    assert!(matches!(ck.entry("augment_pipe"), Some(Entry::Data { value, .. }) if value.is_null()));
}

fn io(name: &str) -> Vec<(String, mindreader::Tensor)> {
    mindreader::nn::load_safetensors(&fixture(name)).unwrap().0
}

fn get(t: &[(String, mindreader::Tensor)], name: &str) -> mindreader::Tensor {
    t.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

/// f32 parity with the reference: relative `tol` plus an absolute floor scaled to the values.
fn close(got: &mindreader::Tensor, want: &mindreader::Tensor, tol: f32, what: &str) {
    let want = want.to_vec_f32().unwrap();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    mindreader::testing::assert_close(&got.to_vec_f32().unwrap(), &want, tol, tol * scale, what);
}

#[test]
fn snapshot_networks_draw_and_judge_as_pytorch_does() {
    use mindreader::models::lafite::{Discriminator, Generator};
    use mindreader::nn::NoiseMode;
    use mindreader::train::import::{load_mapper, load_network};
    use mindreader::{Device, Tape};
    let path = fixture("snapshot.pkl");
    let io = io("snapshot_io.safetensors");
    let (z, fts) = (get(&io, "z"), get(&io, "fts"));
    let draw = |key: Option<&str>| {
        let g = load_network::<Generator>(&path, key, &Device::Cpu).unwrap();
        g.net
            .forward(&mut Tape::inference(), &z, &fts, 1.0, NoiseMode::Const)
            .unwrap()
    };
    // G_ema is the default: a snapshot's inference weights
    close(&draw(None), &get(&io, "img_ema"), 1e-4, "G_ema (default)");
    close(&draw(Some("G")), &get(&io, "img_g"), 1e-4, "G");
    let d = load_network::<Discriminator>(&path, None, &Device::Cpu).unwrap();
    let out = d
        .net
        .forward(&mut Tape::inference(), &get(&io, "d_img"), &fts)
        .unwrap();
    close(&out.logits, &get(&io, "logits"), 1e-5, "D logits");
    close(&out.d_fts, &get(&io, "d_fts"), 1e-5, "D d_fts");
    close(
        out.d_fts2.as_ref().unwrap(),
        &get(&io, "d_fts2"),
        1e-5,
        "D d_fts2",
    );
    // the float64 mappers, rounded to float32; fmri_len is recorded, so no --voxels
    for key in ["fmri_vec", "fmri_vec2"] {
        let m = load_mapper(&path, Some(key), None, &Device::Cpu).unwrap();
        assert_eq!(m.mapper.config.voxels, 37);
        let y = m
            .mapper
            .forward(&mut Tape::inference(), &get(&io, "fmri"))
            .unwrap();
        close(&y, &get(&io, key), 1e-4, key);
    }
}

#[test]
fn mapper_pth_files_load_in_all_three_forms() {
    use mindreader::train::import::load_mapper;
    use mindreader::{Device, Tape};
    let io = io("mapper_io.safetensors");
    let mut reference: Option<Vec<(String, Vec<u8>)>> = None;
    for name in ["mapper.pth", "mapper_wrapped.pth", "mapper_legacy.pth"] {
        let mut ck = Checkpoint::open(&fixture(name)).unwrap();
        let key = if name == "mapper_wrapped.pth" {
            "model"
        } else {
            ""
        };
        let raw: Vec<(String, Vec<u8>)> = ck
            .read_tensors(key)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.data))
            .collect();
        // bit for bit against PyTorch's own tensors (float32 in mapper_io)
        for (n, bytes) in &raw {
            let want: Vec<u8> = get(&io, &format!("sd/{n}"))
                .to_vec_f32()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            assert_eq!(*bytes, want, "{name}: {n}");
        }
        if let Some(r) = &reference {
            assert_eq!(*r, raw, "{name} differs from mapper.pth");
        }
        reference = Some(raw);
        // a bare state_dict does not record V: ⌊V/2⌋ = 18 fits 36 and 37
        let err = load_mapper(&fixture(name), None, None, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("pass --voxels") && err.contains(name), "{err}");
        let m = load_mapper(&fixture(name), None, Some(37), &Device::Cpu).unwrap();
        let y = m
            .mapper
            .forward(&mut Tape::inference(), &get(&io, "fmri"))
            .unwrap();
        close(&y, &get(&io, "out"), 1e-5, name);
        let err = load_mapper(&fixture(name), None, Some(40), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("fc.1 takes 18"), "{err}");
    }
}
