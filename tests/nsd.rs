//! NSD ingestion on a miniature NSD tree in the real formats (`tests/fixtures/nsd/`, made by
//! `scripts/make_nsd_fixture.py` with h5py, nibabel and scipy.io): the prepared file is checked
//! value by value against the script's own numpy computation (`expected.h5`), and each kind of
//! malformed input must fail with an error naming the file, never a panic.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;
use indicatif::ProgressBar;
use mindreader::data::dataset::{self, DatasetFile, Split};
use mindreader::data::nsd::{self, NsdConfig, Padding};
use mindreader::testing::fixtures_dir;

fn fixture() -> PathBuf {
    fixtures_dir().join("nsd")
}

/// A temp directory unique to this process and call, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("mindreader-nsd-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("reading the fixture tree") {
        let e = e.expect("dir entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copying a fixture file");
        }
    }
}

/// A writable copy of the fixture tree, to break.
fn broken_copy(name: &str) -> (TempDir, NsdConfig) {
    let dir = TempDir::new(name);
    copy_tree(&fixture(), &dir.0);
    let cfg = small(&dir.0);
    (dir, cfg)
}

fn small(root: &Path) -> NsdConfig {
    NsdConfig {
        image_size: 8,
        padding: Padding::Multiple(16),
        ..NsdConfig::new(root, 1)
    }
}

/// One group of `expected.h5`, as the script computed it.
struct Expected {
    fmri: Vec<f32>,
    fmri_shape: Vec<usize>,
    trial_stimulus: Vec<u32>,
    trial_session: Vec<u32>,
    stimulus_id: Vec<u32>,
    split: Vec<u8>,
    images: Vec<u8>,
    captions: Vec<String>,
    caption_slots: usize,
}

fn expected(group: &str) -> Expected {
    let f = hdf5::File::open(fixture().join("expected.h5")).expect("opening expected.h5");
    let g = f.group(group).expect("expected group");
    let ds = |n: &str| g.dataset(n).expect(n);
    let caps = ds("captions");
    Expected {
        fmri: ds("fmri").read_raw().expect("fmri"),
        fmri_shape: ds("fmri").shape(),
        trial_stimulus: ds("trial_stimulus").read_raw().expect("trial_stimulus"),
        trial_session: ds("trial_session").read_raw().expect("trial_session"),
        stimulus_id: ds("stimulus_id").read_raw().expect("stimulus_id"),
        split: ds("split").read_raw().expect("split"),
        images: ds("images").read_raw().expect("images"),
        captions: caps
            .read_raw::<VarLenUnicode>()
            .expect("captions")
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        caption_slots: caps.shape()[1],
    }
}

/// Prepares with `cfg`, writes, reopens with the validating reader and compares with `group`.
fn check_against(cfg: &NsdConfig, group: &str) {
    let out = TempDir::new(group);
    let path = out.0.join("subj01.h5");
    let contents = nsd::prepare(cfg, &ProgressBar::hidden()).expect("prepare-nsd on the fixture");
    dataset::write(&path, &contents).expect("writing the prepared file");
    let file = DatasetFile::open(&path).expect("the prepared file passes the reader's validation");
    let want = expected(group);

    let s = file.summary();
    assert_eq!(
        [s.trials, s.voxels],
        [want.fmri_shape[0], want.fmri_shape[1]],
        "{group}: fmri shape"
    );
    assert_eq!(s.meta.subject, "subj01");
    assert_eq!(s.meta.roi, "nsdgeneral");
    assert_eq!(
        s.meta.voxels_unpadded + s.meta.padding[0] + s.meta.padding[1],
        s.voxels
    );
    mindreader::testing::assert_close(
        &file.fmri().expect("fmri"),
        &want.fmri,
        1e-5,
        1e-5,
        &format!("{group}: fmri"),
    );
    assert_eq!(
        file.trial_stimulus(),
        &want.trial_stimulus[..],
        "{group}: trial_stimulus"
    );
    assert_eq!(
        file.trial_session(),
        &want.trial_session[..],
        "{group}: trial_session"
    );
    assert_eq!(
        file.stimulus_ids().expect("stimulus_id"),
        want.stimulus_id,
        "{group}: stimulus_id"
    );
    let split: Vec<u8> = file.split().iter().map(|s| s.code()).collect();
    assert_eq!(split, want.split, "{group}: split");
    assert!(file.split().contains(&Split::Test));
    // Area averaging in f64 on both sides; a sum order difference may flip an exact .5.
    let images = file.images().expect("images");
    assert_eq!(images.len(), want.images.len(), "{group}: images length");
    let off: Vec<usize> = (0..images.len())
        .filter(|&i| images[i].abs_diff(want.images[i]) > 0)
        .collect();
    assert!(
        off.iter().all(|&i| images[i].abs_diff(want.images[i]) <= 1)
            && off.len() * 100 < images.len(),
        "{group}: images differ at {off:?}"
    );
    let caps: Vec<String> = file
        .captions()
        .expect("captions")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        s.captions_per_stimulus, want.caption_slots,
        "{group}: caption slots"
    );
    assert_eq!(caps, want.captions, "{group}: captions");
}

#[test]
fn prepared_trials_match_the_scripts_independent_computation() {
    check_against(&small(&fixture()), "default");
}

#[test]
fn averaged_unzscored_session_subset_matches_the_script() {
    let cfg = NsdConfig {
        sessions: Some(vec![1, 3]),
        zscore: false,
        average_repeats: true,
        padding: Padding::Explicit([2, 2]),
        ..small(&fixture())
    };
    check_against(&cfg, "average");
}

#[test]
fn mask_axes_are_matched_to_the_betas() {
    let mask = nsd::read_mask(&small(&fixture()).mask_path()).expect("reading the fixture mask");
    // nibabel's (X, Y, Z) = (6, 5, 4); the betas store [trials, Z, Y, X].
    assert_eq!(mask.betas_shape, [4, 5, 6]);
    // The lone corner voxel (x 0, y 0, z 3) is the first voxel of z = 3 in (z, y, x) C order.
    assert!(mask.inside.contains(&(3 * 5 * 6)));
}

fn error_of(cfg: &NsdConfig) -> String {
    match nsd::prepare(cfg, &ProgressBar::hidden()) {
        Ok(_) => panic!("prepare-nsd accepted a broken NSD tree"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

#[test]
fn a_missing_session_is_named() {
    let (_dir, cfg) = broken_copy("missing-session");
    std::fs::remove_file(cfg.session_path(2)).expect("removing session 2");
    // Asked for explicitly, and found as a gap when every session is read.
    let msg = error_of(&NsdConfig {
        sessions: Some(vec![1, 2, 3]),
        ..cfg.clone()
    });
    assert_mentions(&msg, &["betas_session02.hdf5", "missing", "session 2"]);
    assert_mentions(&error_of(&cfg), &["betas_session02.hdf5", "missing"]);
}

#[test]
fn a_mask_whose_shape_does_not_match_the_betas_is_refused() {
    let (_dir, cfg) = broken_copy("mask-shape");
    std::fs::copy(
        fixture().join("broken/nsdgeneral_transposed.nii.gz"),
        cfg.mask_path(),
    )
    .expect("replacing the mask");
    let msg = error_of(&cfg);
    assert_mentions(
        &msg,
        &[
            "betas_session01.hdf5",
            "[8, 4, 5, 6]",
            "does not match the mask",
            "(4, 5, 6)",
        ],
    );
}

#[test]
fn a_missing_mask_is_named() {
    let (_dir, cfg) = broken_copy("mask-missing");
    std::fs::remove_file(cfg.mask_path()).expect("removing the mask");
    assert_mentions(&error_of(&cfg), &["nsdgeneral.nii.gz", "missing"]);
}

#[test]
fn a_design_index_out_of_range_is_refused() {
    let (_dir, cfg) = broken_copy("design-range");
    std::fs::copy(
        fixture().join("broken/nsd_expdesign_out_of_range.mat"),
        cfg.design_path(),
    )
    .expect("replacing the design");
    assert_mentions(
        &error_of(&cfg),
        &[
            "nsd_expdesign.mat",
            "`masterordering` entry 6 is 13",
            "out of range for the 12 images",
        ],
    );
}

#[test]
fn a_session_beyond_the_design_is_refused() {
    let (_dir, cfg) = broken_copy("design-short");
    std::fs::copy(cfg.session_path(3), cfg.session_path(4)).expect("adding a fourth session");
    assert_mentions(
        &error_of(&cfg),
        &[
            "nsd_expdesign.mat",
            "session 4 trial 1",
            "`masterordering` has 24 entries",
        ],
    );
}

#[test]
fn a_stimulus_without_captions_is_named() {
    let (_dir, cfg) = broken_copy("captions");
    std::fs::copy(
        fixture().join("broken/captions_train2017_missing.json"),
        cfg.captions_path("train2017"),
    )
    .expect("replacing the captions");
    let coco = std::fs::read_to_string(fixture().join("broken/missing_caption_coco_id.txt"))
        .expect("reading the removed cocoId");
    assert_mentions(
        &error_of(&cfg),
        &[
            "captions_train2017.json",
            "no captions for cocoId",
            coco.trim(),
        ],
    );
}

#[test]
fn a_stimulus_missing_from_the_stim_info_csv_is_named() {
    let (_dir, cfg) = broken_copy("stim-info");
    let csv = std::fs::read_to_string(cfg.stim_info_path()).expect("reading the CSV");
    let kept: Vec<&str> = csv
        .lines()
        .take(1)
        .chain(csv.lines().skip(1).filter(|l| !l.starts_with("1,")))
        .collect();
    std::fs::write(cfg.stim_info_path(), kept.join("\n")).expect("writing the CSV");
    assert_mentions(
        &error_of(&cfg),
        &["nsd_stim_info_merged.csv", "no row for nsdId 1"],
    );
}
