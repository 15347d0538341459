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
    // the script wrote the keys in state_dict() order; serde_json's map sorts them, so read the
    // order off the text
    let text = std::fs::read_to_string(fixture("snapshot_tensors.json")).unwrap();
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix('"')?.split_once("\": {").map(|(k, _)| k))
        .collect();
    assert_eq!(order.len(), expected.len());
    let mut read_order = Vec::new();
    let mut seen = 0;
    for key in ["G", "D", "G_ema", "fmri_vec", "fmri_vec2"] {
        for (name, t) in ck.read_tensors(key).unwrap() {
            let want = &expected[&format!("{key}/{name}")];
            assert_eq!(t.dtype.name(), want["dtype"], "{key}/{name}");
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            assert_eq!(t.shape, shape, "{key}/{name}");
            assert_eq!(fnv1a64(&t.data), want["fnv1a64"], "{key}/{name}");
            read_order.push(format!("{key}/{name}"));
            seen += 1;
        }
    }
    // every tensor of every network, no more and no fewer
    assert_eq!(seen, expected.len());
    // and in PyTorch's state_dict() order
    assert_eq!(read_order, order);
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

// ------------------------------------------------------------------------------------------
// Hostile and broken files: each gets an error naming the file and what is wrong; none panics,
// hangs, allocates what the file does not hold, or runs anything.

fn temp(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mindreader-pickle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// The error of opening `data` as a checkpoint and reading every tensor of every entry.
fn error_of(name: &str, data: &[u8]) -> String {
    let path = temp(name, data);
    let result = Checkpoint::open(&path).and_then(|mut ck| {
        let keys: Vec<String> = ck.entries.iter().map(|e| e.key().to_string()).collect();
        for k in keys {
            ck.read_tensors(&k)?;
        }
        Ok(())
    });
    let e = result
        .err()
        .unwrap_or_else(|| panic!("{name} was accepted"))
        .to_string();
    assert!(e.contains(name), "the error does not name the file: {e}");
    e
}

/// Pickle opcodes, written by hand (protocol 2).
struct Ops(Vec<u8>);

impl Ops {
    fn new() -> Ops {
        Ops(vec![0x80, 2])
    }
    fn op(mut self, bytes: &[u8]) -> Ops {
        self.0.extend_from_slice(bytes);
        self
    }
    fn str(self, s: &str) -> Ops {
        let mut b = vec![b'X'];
        b.extend((s.len() as u32).to_le_bytes());
        b.extend(s.as_bytes());
        self.op(&b)
    }
    fn int(self, i: u32) -> Ops {
        let mut b = vec![b'J'];
        b.extend(i.to_le_bytes());
        self.op(&b)
    }
    fn bytes(self, data: &[u8]) -> Ops {
        let mut b = vec![b'B'];
        b.extend((data.len() as u32).to_le_bytes());
        b.extend(data);
        self.op(&b)
    }
    fn global(self, module: &str, name: &str) -> Ops {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn ints(mut self, v: &[u32]) -> Ops {
        self = self.op(b"(");
        for &x in v {
            self = self.int(x);
        }
        self.op(b"t")
    }
    fn stop(self) -> Vec<u8> {
        let mut b = self.0;
        b.push(b'.');
        b
    }
}

/// A legacy torch.save stream of one float32 storage: `declared` elements in its persistent id,
/// `count` in its size field, `data_len` bytes of data.
fn storage_blob(declared: u32, count: u64, data_len: usize) -> Vec<u8> {
    let mut b = Ops::new()
        .op(b"\x8a\x0a")
        .op(&0x1950a86a20f9469cfc6cu128.to_le_bytes()[..10])
        .stop();
    b.extend(Ops::new().int(1001).stop());
    b.extend(Ops::new().op(b"}").stop());
    b.extend(
        Ops::new()
            .op(b"(")
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .int(declared)
            .op(b"Nt")
            .op(b"Q")
            .stop(),
    );
    b.extend(Ops::new().op(b"(").str("0").op(b"l").stop());
    b.extend(count.to_le_bytes());
    b.extend((0..data_len).map(|i| i as u8));
    b
}

/// `{'w': _rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())}`, where the
/// storage is `_load_from_bytes(blob)` unless `storage` replaces it.
fn tensor_pickle(
    shape: &[u32],
    stride: &[u32],
    blob: &[u8],
    rebuild: (&str, &str),
    storage: Option<(&str, &str)>,
) -> Vec<u8> {
    let ops = Ops::new()
        .op(b"}")
        .str("w")
        .global(rebuild.0, rebuild.1)
        .op(b"(");
    let ops = match storage {
        None => ops
            .global("torch.storage", "_load_from_bytes")
            .op(b"(")
            .bytes(blob)
            .op(b"tR"),
        Some((m, n)) => ops.global(m, n).op(b"(").str("echo pwned").op(b"tR"),
    };
    ops.int(0)
        .ints(shape)
        .ints(stride)
        .op(b"\x89")
        .global("collections", "OrderedDict")
        .op(b")R")
        .op(b"tRs")
        .stop()
}

#[test]
fn a_hand_made_tensor_pickle_reads_and_its_strided_view_is_gathered() {
    let blob = storage_blob(6, 6, 24);
    let path = temp(
        "view.pkl",
        &tensor_pickle(
            &[3, 2],
            &[1, 3],
            &blob,
            ("torch._utils", "_rebuild_tensor_v2"),
            None,
        ),
    );
    let mut ck = Checkpoint::open(&path).unwrap();
    let t = &ck.read_tensors("").unwrap()[0].1;
    assert_eq!(t.shape, vec![3, 2]);
    // element (i, j) is storage element i + 3j: the transpose of a [2, 3] block
    let idx: Vec<u8> = t.data.chunks(4).map(|c| c[0] / 4).collect();
    assert_eq!(idx, vec![0, 3, 1, 4, 2, 5]);
}

#[test]
fn truncated_pickles_are_refused_at_every_cut() {
    let data = std::fs::read(fixture("snapshot.pkl")).unwrap();
    for cut in [0, 1, 2, 100, 5_000, 100_000, data.len() / 2, data.len() - 1] {
        let e = error_of(&format!("cut{cut}.pkl"), &data[..cut]);
        assert!(
            e.contains("truncated") || e.contains("empty") || e.contains("needs"),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn unknown_opcodes_and_impossible_lengths_are_refused() {
    let e = error_of("opcode.pkl", &Ops::new().op(b"\xff").stop());
    assert!(e.contains("not a pickle opcode"), "{e}");
    let e = error_of("ext.pkl", &Ops::new().op(b"\x82\x01").stop());
    assert!(e.contains("not supported"), "{e}");
    // BINBYTES8 claiming 2^64 − 1 bytes: refused before anything is allocated
    let e = error_of(
        "huge.pkl",
        &Ops::new().op(b"\x8e").op(&u64::MAX.to_le_bytes()).stop(),
    );
    assert!(e.contains("does not fit") || e.contains("only"), "{e}");
    let e = error_of("text.txt", b"hello");
    assert!(e.contains("not a pickle"), "{e}");
}

#[test]
fn a_global_outside_the_allow_list_is_never_called_and_never_taken_for_a_tensor() {
    let blob = storage_blob(6, 6, 24);
    // {'w': os.system('echo pwned')}: listed as an inert record, never called
    let path = temp(
        "system.pkl",
        &tensor_pickle(&[6], &[1], &blob, ("os", "system"), None),
    );
    let ck = Checkpoint::open(&path).unwrap();
    match ck.entry("w") {
        Some(Entry::Data { value, .. }) => {
            assert!(value.as_str().unwrap().contains("`os.system`"), "{value}")
        }
        other => panic!("{other:?}"),
    }
    // and where a mapper's tensors are expected, it is refused
    let err =
        mindreader::train::import::load_mapper(&path, None, Some(12), &mindreader::Device::Cpu)
            .err()
            .unwrap()
            .to_string();
    assert!(
        err.contains("system.pkl") && err.contains("holds no module or state_dict"),
        "{err}"
    );
    // as a storage inside a real tensor rebuild
    let e = error_of(
        "storage.pkl",
        &tensor_pickle(
            &[6],
            &[1],
            &blob,
            ("torch._utils", "_rebuild_tensor_v2"),
            Some(("os", "system")),
        ),
    );
    assert!(
        e.contains("`os.system`") && e.contains("expected a storage"),
        "{e}"
    );
    // as a module's parameter
    let module = Ops::new()
        .global("torch.nn.modules.linear", "Linear")
        .op(b")\x81}")
        .str("_parameters")
        .op(b"}")
        .str("weight")
        .global("os", "system")
        .op(b"(")
        .str("echo pwned")
        .op(b"tRs") // _parameters['weight'] = os.system(…)
        .op(b"s") // state['_parameters'] = …
        .str("_modules")
        .op(b"}sb")
        .stop();
    let e = error_of("param.pkl", &module);
    assert!(
        e.contains("`weight` should be a tensor but is a call of `os.system`"),
        "{e}"
    );
}

#[test]
fn storages_that_disagree_with_their_tensors_are_refused() {
    let rebuild = ("torch._utils", "_rebuild_tensor_v2");
    // a view reaching past its storage, and one larger than it (stride 0 expansion)
    let e = error_of(
        "past.pkl",
        &tensor_pickle(&[3, 2], &[3, 1], &storage_blob(6, 6, 24), rebuild, None),
    );
    assert!(e.contains("past the end of its storage"), "{e}");
    let e = error_of(
        "expand.pkl",
        &tensor_pickle(&[1 << 30], &[0], &storage_blob(6, 6, 24), rebuild, None),
    );
    assert!(e.contains("larger than its storage"), "{e}");
    // a size field claiming more elements than the blob holds
    let e = error_of(
        "claims.pkl",
        &tensor_pickle(&[6], &[1], &storage_blob(6, 1 << 40, 24), rebuild, None),
    );
    assert!(e.contains("claims") && e.contains("remain"), "{e}");
    // a persistent id declaring another element count than the data
    let e = error_of(
        "declares.pkl",
        &tensor_pickle(&[6], &[1], &storage_blob(9, 6, 24), rebuild, None),
    );
    assert!(e.contains("declares 9 elements"), "{e}");
}

#[test]
fn deep_and_self_referencing_structures_are_refused() {
    // {'args': [[[[…]]]]} nested 100 000 deep: parsed without recursion, refused when read
    let mut deep = Ops::new().op(b"}").str("args");
    deep.0.extend(std::iter::repeat(b'(').take(100_000));
    deep.0.extend(std::iter::repeat(b'l').take(100_000));
    let e = error_of("deep.pkl", &deep.op(b"s").stop());
    assert!(e.contains("nested more than"), "{e}");
    // shared references: x = [0, 0]; then 60 times x = [x, x] (2^60 values from ~300 bytes)
    let mut bomb = Ops::new().op(b"}").str("args").op(b"(K\x00K\x00lq\x00");
    for _ in 0..60 {
        bomb = bomb.op(b"0(h\x00h\x00lq\x00"); // pop x; x = [x, x]; memo it
    }
    let e = error_of("bomb.pkl", &bomb.op(b"s").stop());
    assert!(e.contains("shared references"), "{e}");
    // d = {}; d['args'] = d
    let cyclic = Ops::new().op(b"}q\x00").str("args").op(b"h\x00s").stop();
    let e = error_of("cycle.pkl", &cyclic);
    assert!(e.contains("contains itself"), "{e}");
    // a module that is its own child
    let module = Ops::new()
        .global("torch.nn.modules.container", "Sequential")
        .op(b")\x81q\x01}")
        .str("_modules")
        .op(b"}")
        .str("0")
        .op(b"h\x01ssb") // _modules['0'] = the module itself
        .stop();
    let e = error_of("selfmodule.pkl", &module);
    assert!(e.contains("contains itself"), "{e}");
}

/// mapper.pth rewritten entry by entry: `edit` may drop an entry (None) or change its bytes.
fn rewrite_zip(name: &str, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> PathBuf {
    use std::io::{Read, Write};
    let mut src =
        zip::ZipArchive::new(std::fs::File::open(fixture("mapper.pth")).unwrap()).unwrap();
    let path = temp(name, b"");
    let mut out = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..src.len() {
        let mut e = src.by_index(i).unwrap();
        let entry = e.name().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&entry, data) {
            out.start_file(entry, opts).unwrap();
            out.write_all(&data).unwrap();
        }
    }
    out.finish().unwrap();
    path
}

#[test]
fn zip_entries_missing_or_lying_about_their_sizes_are_refused() {
    let read = |path: &Path| {
        Checkpoint::open(path)
            .and_then(|mut ck| ck.read_tensors(""))
            .err()
            .unwrap()
            .to_string()
    };
    let missing = rewrite_zip("missing.pth", |n, d| (!n.ends_with("/data/3")).then_some(d));
    let e = read(&missing);
    assert!(e.contains("missing.pth") && e.contains("data/3"), "{e}");
    let short = rewrite_zip("short.pth", |n, mut d| {
        if n.ends_with("/data/0") {
            d.truncate(d.len() - 4);
        }
        Some(d)
    });
    let e = read(&short);
    assert!(
        e.contains("data/0") && e.contains("but its storage needs"),
        "{e}"
    );
    let e = read(&rewrite_zip("nopkl.pth", |n, d| {
        (!n.ends_with("data.pkl")).then_some(d)
    }));
    assert!(e.contains("data.pkl"), "{e}");
    // the central directory claiming a larger size than the entry holds
    let mut bytes = std::fs::read(fixture("mapper.pth")).unwrap();
    let name = b"/data/0";
    let cd = (0..bytes.len() - 4)
        .filter(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x01, 0x02])
        .find(|&i| {
            let n = u16::from_le_bytes([bytes[i + 28], bytes[i + 29]]) as usize;
            bytes[i + 46..i + 46 + n].ends_with(name)
        })
        .unwrap();
    for field in [20, 24] {
        let v = u32::from_le_bytes(bytes[cd + field..cd + field + 4].try_into().unwrap());
        bytes[cd + field..cd + field + 4].copy_from_slice(&(v + 1_000_000).to_le_bytes());
    }
    let e = read(&temp("lying.pth", &bytes));
    assert!(e.contains("lying.pth"), "{e}");
}
