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
