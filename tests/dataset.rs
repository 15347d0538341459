//! The prepared dataset, the synthetic world and the loader, end to end through real HDF5 files
//! (written under the system temp directory and removed afterwards).

use std::path::PathBuf;

use indicatif::ProgressBar;
use mindreader::data::dataset::{self, AuxData, Contents, DatasetFile, Split, Target};
use mindreader::data::loader::{Loader, LoaderConfig, Sampling, Staged};
use mindreader::data::synth::{self, SynthConfig};
use mindreader::Error;
use ndarray::{Array1, Array2, Axis};

/// A temp file path unique to this process and call (tests run in parallel), removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str) -> Temp {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Temp(std::env::temp_dir().join(format!(
            "mindreader-test-{}-{n}-{name}.h5",
            std::process::id()
        )))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn small(seed: u64) -> SynthConfig {
    SynthConfig {
        stimuli: 60,
        voxels: 96,
        padding: 3,
        image_size: 32,
        trials_per_session: 60,
        seed,
        ..SynthConfig::default()
    }
}

fn world(cfg: &SynthConfig) -> Contents {
    synth::generate(cfg, &ProgressBar::hidden()).expect("generating a synthetic world")
}

/// Field by field, so a failure names the field instead of printing megabytes.
fn assert_same(a: &Contents, b: &Contents, what: &str) {
    assert_eq!(a.meta, b.meta, "{what}: meta");
    assert_eq!(
        (a.voxels, a.image_size),
        (b.voxels, b.image_size),
        "{what}: sizes"
    );
    assert!(a.fmri == b.fmri, "{what}: fmri differs");
    assert!(
        a.trial_stimulus == b.trial_stimulus && a.trial_session == b.trial_session,
        "{what}: trials differ"
    );
    assert!(a.images == b.images, "{what}: images differ");
    assert_eq!(a.captions, b.captions, "{what}: captions");
    assert_eq!(
        (&a.split, &a.stimulus_id),
        (&b.split, &b.stimulus_id),
        "{what}: split or ids"
    );
    assert!(a.targets == b.targets, "{what}: targets differ");
    let names = |c: &Contents| c.scene.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "{what}: scene arrays");
    for (x, y) in a.scene.iter().zip(&b.scene) {
        assert!(x == y, "{what}: scene/{} differs", x.name);
    }
    assert!(a == b, "{what}: contents differ");
}

#[test]
fn schema_round_trip() {
    let c = world(&small(1));
    let f = Temp::new("roundtrip");
    dataset::write(&f.0, &c).unwrap();
    let file = DatasetFile::open(&f.0).unwrap();
    assert_same(&file.read_all().unwrap(), &c, "round trip");

    let s = file.summary();
    assert_eq!(s.schema_version, dataset::SCHEMA_VERSION);
    assert_eq!((s.trials, s.voxels, s.stimuli), (180, 102, 60));
    assert_eq!((s.meta.voxels_unpadded, s.meta.padding), (96, [3, 3]));
    assert_eq!(s.image_size, [32, 32]);
    assert_eq!(s.captions_per_stimulus, 5);
    assert_eq!(s.repeats, (3, 3));
    assert_eq!(s.sessions, 3);
    assert_eq!((s.train_stimuli, s.test_stimuli), (54, 6));
    assert_eq!((s.train_trials, s.test_trials), (162, 18));
    assert_eq!(s.targets, vec![("scene".to_string(), 512)]);
    assert!(s
        .scene
        .iter()
        .any(|(n, shape)| n == "features" && shape == &vec![60, 80]));
    assert_eq!(
        file.images_range(7, 2).unwrap(),
        c.images[7 * 32 * 32 * 3..9 * 32 * 32 * 3].to_vec()
    );
    let features = file.scene_array("features").unwrap();
    assert_eq!(features.columns.len(), 80);
    assert_eq!(features.columns[0], "background_flat");

    // Later commands attach more targets; writing one again replaces it.
    drop(file);
    let mut clip = Target {
        name: "clip_image".into(),
        dim: 4,
        data: vec![0.5; 240],
        description: "test".into(),
    };
    dataset::write_target(&f.0, &clip).unwrap();
    clip.data[3] = -1.0;
    dataset::write_target(&f.0, &clip).unwrap();
    let file = DatasetFile::open(&f.0).unwrap();
    assert_eq!(file.summary().targets.len(), 2);
    assert_eq!(file.target("clip_image").unwrap(), (clip.data.clone(), 4));
    assert_eq!(file.target_description("clip_image").unwrap(), "test");
    let missing = file.target("clip_caption").unwrap_err().to_string();
    assert!(
        missing.contains("targets/clip_caption") && missing.contains("clip_image, scene"),
        "{missing}"
    );
}

/// `augmented/<name>` [K, M, D] views sit beside their target: written, read back, refused when
/// their target is missing or of another width or the row count is wrong, dropped with a
/// replaced target.
#[test]
fn augmented_views_round_trip_and_follow_their_target() {
    let f = Temp::new("augmented");
    dataset::write(&f.0, &world(&small(3))).unwrap();
    let clip = Target {
        name: "clip_image".into(),
        dim: 4,
        data: vec![0.5; 240],
        description: "test".into(),
    };
    let views: Vec<f32> = (0..3 * 60 * 4).map(|i| i as f32 / 720.0).collect();
    let err = dataset::write_augmented(&f.0, "clip_image", 3, 4, &views, "three views")
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a 4-d targets/clip_image"), "{err}");
    dataset::write_target(&f.0, &clip).unwrap();
    let err = dataset::write_augmented(&f.0, "clip_image", 2, 4, &views, "wrong count")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("720 values for [2 views, 60 stimuli, 4 dims]"),
        "{err}"
    );
    dataset::write_augmented(&f.0, "clip_image", 3, 4, &views, "three views").unwrap();
    let file = DatasetFile::open(&f.0).unwrap();
    assert_eq!(
        file.summary().augmented,
        vec![("clip_image".to_string(), 3, 4)]
    );
    assert_eq!(file.augmented("clip_image").unwrap(), (views.clone(), 3, 4));
    let err = file.augmented("scene").unwrap_err().to_string();
    assert!(
        err.contains("augmented/scene") && err.contains("--augment-views"),
        "{err}"
    );
    drop(file);
    // A replaced target takes its stale views with it.
    dataset::write_target(&f.0, &clip).unwrap();
    assert!(DatasetFile::open(&f.0)
        .unwrap()
        .summary()
        .augmented
        .is_empty());

    let with_views = |name: &str, edit: &dyn Fn(&hdf5::File)| {
        broken(name, |h| {
            let g = h.create_group("augmented").unwrap();
            edit(h);
            drop(g);
        })
    };
    let case = with_views("views-orphan", &|h| {
        add_dataset(
            h,
            "augmented/clip_image",
            ndarray::Array3::<f32>::zeros((2, 60, 4)).into_dyn().view(),
        )
    });
    assert_names(
        "views without a target",
        case,
        "augmented/clip_image",
        "without their un-augmented targets/clip_image",
    );
    let case = with_views("views-width", &|h| {
        add_dataset(
            h,
            "augmented/scene",
            ndarray::Array3::<f32>::zeros((2, 60, 4)).into_dyn().view(),
        )
    });
    assert_names(
        "views of another width",
        case,
        "augmented/scene",
        "views are 4-d but targets/scene is 512-d",
    );
    let case = with_views("views-rows", &|h| {
        add_dataset(
            h,
            "augmented/scene",
            ndarray::Array3::<f32>::zeros((2, 59, 512))
                .into_dyn()
                .view(),
        )
    });
    assert_names(
        "views of too few stimuli",
        case,
        "augmented/scene",
        "the 60 stimuli",
    );
}

fn add_dataset<T: hdf5::H5Type>(h: &hdf5::File, name: &str, data: ndarray::ArrayViewD<T>) {
    h.new_dataset_builder()
        .with_data(&data)
        .create(name)
        .unwrap();
}

/// A valid file, then `edit` applied to it with the hdf5 crate directly; returns the error
/// `DatasetFile::open` gives (the test fails if it opens, and a panic fails it too).
fn broken(name: &str, edit: impl FnOnce(&hdf5::File)) -> (PathBuf, Error) {
    let f = Temp::new(name);
    dataset::write(&f.0, &world(&small(2))).unwrap();
    {
        let h = hdf5::File::open_rw(&f.0).unwrap();
        edit(&h);
    }
    let err = match DatasetFile::open(&f.0) {
        Ok(_) => panic!("{name}: a malformed file opened"),
        Err(e) => e,
    };
    (f.0.clone(), err)
}

/// The error names the file and the dataset, and its message says `problem`.
fn assert_names(case: &str, (path, err): (PathBuf, Error), dataset: &str, problem: &str) {
    let text = err.to_string();
    match &err {
        Error::Dataset {
            path: p,
            dataset: d,
            message,
        } => {
            assert_eq!(p, &path, "{case}: {text}");
            assert_eq!(d, dataset, "{case}: {text}");
            assert!(
                message.contains(problem),
                "{case}: expected {problem:?} in: {text}"
            );
        }
        other => panic!("{case}: expected a dataset error, got {other:?}"),
    }
    assert!(
        text.contains(&path.display().to_string()) && text.contains(dataset),
        "{case}: {text}"
    );
}

fn replace<T: hdf5::H5Type>(h: &hdf5::File, name: &str, data: ndarray::ArrayViewD<T>) {
    h.unlink(name).unwrap();
    h.new_dataset_builder()
        .with_data(&data)
        .create(name)
        .unwrap();
}

#[test]
fn missing_datasets_are_named() {
    for name in [
        "fmri",
        "trial_stimulus",
        "trial_session",
        "images",
        "captions",
        "split",
        "stimulus_id",
    ] {
        assert_names(
            &format!("missing {name}"),
            broken(&format!("missing-{name}"), |h| h.unlink(name).unwrap()),
            name,
            "missing",
        );
    }
}

#[test]
fn wrong_dtypes_and_ranks_are_named() {
    let case = broken("fmri-f64", |h| {
        replace(
            h,
            "fmri",
            Array2::<f64>::zeros((180, 102)).into_dyn().view(),
        )
    });
    assert_names(
        "fmri as f64",
        case,
        "fmri",
        "dtype is float64; expected float32",
    );
    let case = broken("fmri-rank", |h| {
        replace(h, "fmri", Array1::<f32>::zeros(180).into_dyn().view())
    });
    assert_names("fmri of rank 1", case, "fmri", "rank 1");
    let case = broken("images-f32", |h| {
        replace(
            h,
            "images",
            ndarray::Array4::<f32>::zeros((60, 32, 32, 3))
                .into_dyn()
                .view(),
        )
    });
    assert_names("images as f32", case, "images", "expected uint8");
    let case = broken("captions-u8", |h| {
        replace(
            h,
            "captions",
            Array2::<u8>::zeros((60, 5)).into_dyn().view(),
        )
    });
    assert_names(
        "captions as bytes",
        case,
        "captions",
        "variable-length UTF-8",
    );
    let case = broken("stimulus-float", |h| {
        replace(
            h,
            "trial_stimulus",
            Array1::<f32>::zeros(180).into_dyn().view(),
        )
    });
    assert_names(
        "trial_stimulus as floats",
        case,
        "trial_stimulus",
        "expected an integer type",
    );
    let case = broken("target-rank", |h| {
        replace(
            h,
            "targets/scene",
            Array1::<f32>::zeros(60).into_dyn().view(),
        )
    });
    assert_names("a 1-D target", case, "targets/scene", "rank 1");
    let case = broken("images-rgba", |h| {
        replace(
            h,
            "images",
            ndarray::Array4::<u8>::zeros((60, 32, 32, 4))
                .into_dyn()
                .view(),
        )
    });
    assert_names("RGBA images", case, "images", "last axis must be 3");
    let case = broken("session-short", |h| {
        replace(
            h,
            "trial_session",
            Array1::<u32>::zeros(7).into_dyn().view(),
        )
    });
    assert_names("too few sessions", case, "trial_session", "7 entries");
}

#[test]
fn out_of_range_stimulus_indices_are_named() {
    let case = broken("stimulus-range", |h| {
        let ds = h.dataset("trial_stimulus").unwrap();
        ds.write_slice(&Array1::from(vec![60u32]), 17..18).unwrap();
    });
    assert_names(
        "index 60 of 60",
        case,
        "trial_stimulus",
        "trial 17 shows stimulus 60, out of range for 60 stimuli",
    );
    let case = broken("stimulus-negative", |h| {
        replace(
            h,
            "trial_stimulus",
            Array1::<i64>::from_elem(180, -1).into_dyn().view(),
        )
    });
    assert_names("negative index", case, "trial_stimulus", "entry 0 is -1");
}

#[test]
fn nan_and_inf_in_fmri_are_named() {
    for (value, word) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "Inf"),
        (f32::NEG_INFINITY, "Inf"),
    ] {
        let case = broken(&format!("fmri-{word}"), |h| {
            let ds = h.dataset("fmri").unwrap();
            ds.write_slice(&Array1::from(vec![value]), ndarray::s![5, 40..41])
                .unwrap();
        });
        assert_names(
            "non-finite fmri",
            case,
            "fmri",
            &format!("{word} at trial 5, voxel 40"),
        );
    }
}

#[test]
fn empty_splits_are_named() {
    let case = broken("split-no-test", |h| {
        replace(h, "split", Array1::<u8>::zeros(60).into_dyn().view())
    });
    assert_names("all train", case, "split", "the test split is empty");
    let case = broken("split-no-train", |h| {
        replace(h, "split", Array1::<u8>::ones(60).into_dyn().view())
    });
    assert_names("all test", case, "split", "the train split is empty");
    let case = broken("split-code", |h| {
        replace(h, "split", Array1::<u8>::from_elem(60, 2).into_dyn().view())
    });
    assert_names(
        "split code 2",
        case,
        "split",
        "expected 0 (train) or 1 (test)",
    );
}

#[test]
fn newer_schema_versions_and_bad_attributes_are_refused() {
    let set_version = |v: u32| {
        move |h: &hdf5::File| {
            h.delete_attr("schema_version").unwrap();
            h.new_attr::<u32>()
                .create("schema_version")
                .unwrap()
                .write_scalar(&v)
                .unwrap();
        }
    };
    let case = broken("version-newer", set_version(dataset::SCHEMA_VERSION + 1));
    assert_names(
        "newer version",
        case,
        "/",
        &format!(
            "schema version {} is newer than this mindreader reads",
            dataset::SCHEMA_VERSION + 1
        ),
    );
    let case = broken("version-missing", |h| {
        h.delete_attr("schema_version").unwrap()
    });
    assert_names(
        "no version",
        case,
        "/",
        "attribute schema_version is missing",
    );
    let case = broken("source-unknown", |h| {
        h.delete_attr("source").unwrap();
        let s: hdf5::types::VarLenUnicode = "fmriprep".parse().unwrap();
        h.new_attr::<hdf5::types::VarLenUnicode>()
            .create("source")
            .unwrap()
            .write_scalar(&s)
            .unwrap();
    });
    assert_names("unknown source", case, "/", "\"fmriprep\"");
    let case = broken("padding-wrong", |h| {
        h.delete_attr("padding").unwrap();
        h.new_attr_builder()
            .with_data(&Array1::from(vec![0u32, 0]))
            .create("padding")
            .unwrap();
    });
    assert_names(
        "padding that does not add up",
        case,
        "/",
        "≠ the 102 columns of fmri",
    );
}

#[test]
fn files_that_are_not_datasets_are_file_errors() {
    let f = Temp::new("garbage");
    std::fs::write(&f.0, b"this is not HDF5").unwrap();
    for path in [
        f.0.clone(),
        std::env::temp_dir().join("mindreader-test-does-not-exist.h5"),
    ] {
        match DatasetFile::open(&path) {
            Err(Error::File { path: p, message }) => assert!(p == path && !message.is_empty()),
            Err(other) => panic!("{}: expected a file error, got {other}", path.display()),
            Ok(_) => panic!("{} opened", path.display()),
        }
    }
}

#[test]
fn the_writer_refuses_what_the_reader_would() {
    let good = world(&small(3));
    let f = Temp::new("refused");
    let mut c = good.clone();
    c.fmri[7] = f32::NAN;
    assert!(
        matches!(dataset::write(&f.0, &c), Err(Error::Dataset { ref dataset, .. }) if dataset == "fmri")
    );
    let mut c = good.clone();
    c.trial_stimulus[0] = 60;
    assert!(
        matches!(dataset::write(&f.0, &c), Err(Error::Dataset { ref dataset, .. }) if dataset == "trial_stimulus")
    );
    let mut c = good.clone();
    c.split = vec![Split::Train; 60];
    assert!(
        matches!(dataset::write(&f.0, &c), Err(Error::Dataset { ref dataset, .. }) if dataset == "split")
    );
    assert!(!f.0.exists(), "a refused write left a file behind");
}

#[test]
fn worlds_are_deterministic_under_a_seed() {
    let (a, b, c) = (world(&small(11)), world(&small(11)), world(&small(12)));
    assert_same(&a, &b, "same seed");
    assert!(a.fmri != c.fmri);
    assert!(a.images != c.images);
    assert_ne!(a.captions, c.captions);
    // Same bytes on disk, too (no timestamps in the file).
    let (fa, fb) = (Temp::new("det-a"), Temp::new("det-b"));
    dataset::write(&fa.0, &a).unwrap();
    dataset::write(&fb.0, &b).unwrap();
    assert!(
        std::fs::read(&fa.0).unwrap() == std::fs::read(&fb.0).unwrap(),
        "same seed, different bytes"
    );
    // A fixed subject seed keeps the brain while the stimuli change.
    let same_brain = world(&SynthConfig {
        subject_seed: Some(11),
        ..small(12)
    });
    assert_eq!(same_brain.meta.subject, a.meta.subject);
    assert!(same_brain.images != a.images);
}

// ---- the simulated brain carries the information it should --------------------------------

/// Cholesky solve of (K + λI) A = Y for symmetric positive definite K (f64, in place).
fn ridge_solve(k: &Array2<f64>, lambda: f64, y: &Array2<f64>) -> Array2<f64> {
    let n = k.nrows();
    let mut l = k.clone();
    for i in 0..n {
        l[[i, i]] += lambda;
    }
    for j in 0..n {
        let mut d = l[[j, j]];
        for p in 0..j {
            d -= l[[j, p]] * l[[j, p]];
        }
        let d = d.sqrt();
        l[[j, j]] = d;
        for i in j + 1..n {
            let mut s = l[[i, j]];
            for p in 0..j {
                s -= l[[i, p]] * l[[j, p]];
            }
            l[[i, j]] = s / d;
        }
    }
    let mut a = y.clone();
    for c in 0..a.ncols() {
        for i in 0..n {
            let mut s = a[[i, c]];
            for p in 0..i {
                s -= l[[i, p]] * a[[p, c]];
            }
            a[[i, c]] = s / l[[i, i]];
        }
        for i in (0..n).rev() {
            let mut s = a[[i, c]];
            for p in i + 1..n {
                s -= l[[p, i]] * a[[p, c]];
            }
            a[[i, c]] = s / l[[i, i]];
        }
    }
    a
}

/// Kernel ridge (linear kernel, i.e. ridge regression in its dual form) from `x_train` to
/// `y_train`, predicting `y` for `x_test`. Features are centred on the training means.
fn ridge_predict(
    x_train: &Array2<f64>,
    y_train: &Array2<f64>,
    x_test: &Array2<f64>,
    lambda: f64,
) -> Array2<f64> {
    let (mx, my) = (
        x_train.mean_axis(Axis(0)).unwrap(),
        y_train.mean_axis(Axis(0)).unwrap(),
    );
    let (xc, yc, tc) = (x_train - &mx, y_train - &my, x_test - &mx);
    let k = xc.dot(&xc.t());
    let a = ridge_solve(&k, lambda, &yc);
    tc.dot(&xc.t()).dot(&a) + &my
}

/// Mean Pearson r over the columns of `y` that vary.
fn mean_r(pred: &Array2<f64>, y: &Array2<f64>) -> f64 {
    let mut rs = Vec::new();
    for c in 0..y.ncols() {
        let (p, t) = (pred.column(c), y.column(c));
        let (mp, mt) = (p.mean().unwrap(), t.mean().unwrap());
        let (sp, st) = (
            p.mapv(|v| (v - mp).powi(2)).sum().sqrt(),
            t.mapv(|v| (v - mt).powi(2)).sum().sqrt(),
        );
        if st > 1e-9 && sp > 1e-12 {
            rs.push(
                p.iter()
                    .zip(t.iter())
                    .map(|(a, b)| (a - mp) * (b - mt))
                    .sum::<f64>()
                    / (sp * st),
            );
        } else if st > 1e-9 {
            rs.push(0.0);
        }
    }
    rs.iter().sum::<f64>() / rs.len() as f64
}

/// Writes a world, loads repeat-averaged fmri per split through the loader, and fits a ridge
/// regression from fmri to `scene/features` on train (λ chosen on a train-internal validation
/// split). Returns (test r, shuffled-prediction r).
fn decode_scene(snr: f32) -> (f64, f64) {
    let cfg = SynthConfig {
        stimuli: 1000,
        voxels: 768,
        image_size: 32,
        test_fraction: 0.2,
        snr,
        seed: 21,
        ..SynthConfig::default()
    };
    let f = Temp::new(&format!("ridge-{snr}"));
    dataset::write(&f.0, &world(&cfg)).unwrap();
    let file = DatasetFile::open(&f.0).unwrap();
    let AuxData::F32(features) = file.scene_array("features").unwrap().data else {
        panic!("features are f32")
    };
    let nf = 80;
    let staged = Staged::load(&file, "scene", &mindreader::Device::Cpu).unwrap();
    let rows = |split: Split| {
        let cfg = LoaderConfig {
            split,
            sampling: Sampling::Stimuli {
                average_repeats: true,
            },
            batch_size: 10_000,
            shuffle: false,
            drop_last: false,
            seed: 0,
        };
        let b = Loader::new(staged.clone(), cfg)
            .unwrap()
            .epoch(0)
            .next()
            .unwrap()
            .unwrap();
        let v = b.fmri.shape()[1];
        let x = Array2::from_shape_vec(
            (b.stimuli.len(), v),
            b.fmri
                .to_vec_f32()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
        )
        .unwrap();
        let y = Array2::from_shape_fn((b.stimuli.len(), nf), |(i, j)| {
            features[b.stimuli[i] as usize * nf + j] as f64
        });
        (x, y)
    };
    let ((xtr, ytr), (xte, yte)) = (rows(Split::Train), rows(Split::Test));
    let scale = xtr.mapv(|v| v * v).sum() / xtr.nrows() as f64;
    let n_fit = xtr.nrows() * 4 / 5;
    let (xfit, yfit) = (
        xtr.slice(ndarray::s![..n_fit, ..]).to_owned(),
        ytr.slice(ndarray::s![..n_fit, ..]).to_owned(),
    );
    let (xval, yval) = (
        xtr.slice(ndarray::s![n_fit.., ..]).to_owned(),
        ytr.slice(ndarray::s![n_fit.., ..]).to_owned(),
    );
    let lambda = [0.01, 0.1, 1.0, 10.0, 100.0]
        .into_iter()
        .map(|l| l * scale)
        .max_by(|&a, &b| {
            mean_r(&ridge_predict(&xfit, &yfit, &xval, a), &yval)
                .total_cmp(&mean_r(&ridge_predict(&xfit, &yfit, &xval, b), &yval))
        })
        .unwrap();
    let pred = ridge_predict(&xtr, &ytr, &xte, lambda);
    let r = mean_r(&pred, &yte);
    // Chance: the same predictions, paired with the wrong stimuli.
    let n = pred.nrows();
    let shuffled = Array2::from_shape_fn(pred.dim(), |(i, j)| pred[[(i * 37 + 11) % n, j]]);
    let chance = mean_r(&shuffled, &yte);
    println!("ridge fmri → scene features at snr {snr}: test mean r = {r:.3}, shuffled = {chance:.3} (λ = {:.3}·tr/n)", lambda / scale);
    (r, chance)
}

#[test]
fn the_simulated_brain_carries_the_scene() {
    let (r, chance) = decode_scene(SynthConfig::default().snr);
    assert!(
        chance.abs() < 0.1,
        "shuffled predictions correlate {chance}"
    );
    assert!(
        r > 0.5 && r > chance + 0.4,
        "at the default SNR the scene decodes with mean r {r} only"
    );
    let (r_low, _) = decode_scene(0.02);
    assert!(
        r_low < 0.35 && r_low < r - 0.3,
        "at SNR 0.02 the scene still decodes with mean r {r_low}"
    );
}

// ---- the loader ----------------------------------------------------------------------------

fn staged_world(device: &mindreader::Device) -> (Contents, std::sync::Arc<Staged>, Temp) {
    let c = world(&small(5));
    let f = Temp::new(&format!("loader-{device}"));
    dataset::write(&f.0, &c).unwrap();
    let staged = Staged::load(&DatasetFile::open(&f.0).unwrap(), "scene", device).unwrap();
    (c, staged, f)
}

#[test]
fn stimulus_batches_cover_every_stimulus_once_per_epoch_in_seeded_order() {
    let (c, staged, _f) = staged_world(&mindreader::Device::Cpu);
    let order = |seed: u64, epoch: u64| -> Vec<u32> {
        let l = Loader::new(staged.clone(), LoaderConfig::train(16, seed)).unwrap();
        l.epoch(epoch).flat_map(|b| b.unwrap().stimuli).collect()
    };
    let train: Vec<u32> = (0..60)
        .filter(|&i| c.split[i as usize] == Split::Train)
        .collect();
    for epoch in 0..3 {
        let mut seen = order(7, epoch);
        seen.sort();
        assert_eq!(seen, train, "epoch {epoch}");
    }
    assert_eq!(order(7, 1), order(7, 1));
    assert_ne!(order(7, 1), order(7, 2));
    assert_ne!(order(7, 1), order(8, 1));
    let l = Loader::new(staged.clone(), LoaderConfig::train(16, 7)).unwrap();
    assert_eq!(l.batches(), 4);
    let sizes: Vec<usize> = l.epoch(0).map(|b| b.unwrap().stimuli.len()).collect();
    assert_eq!(sizes, vec![16, 16, 16, 6]);
    let l = Loader::new(
        staged,
        LoaderConfig {
            drop_last: true,
            ..LoaderConfig::train(16, 7)
        },
    )
    .unwrap();
    assert_eq!(l.epoch(0).count(), 3);
}

#[test]
fn trial_batches_cover_every_trial_once_and_carry_their_rows() {
    let (c, staged, _f) = staged_world(&mindreader::Device::Cpu);
    let v = c.voxels;
    let cfg = LoaderConfig {
        split: Split::Test,
        sampling: Sampling::Trials,
        batch_size: 5,
        shuffle: true,
        drop_last: false,
        seed: 3,
    };
    let l = Loader::new(staged, cfg).unwrap();
    let mut seen = Vec::new();
    for b in l.epoch(0) {
        let b = b.unwrap();
        assert_eq!(b.fmri.shape(), &[b.trials.len(), v]);
        assert_eq!(b.target.shape(), &[b.trials.len(), 512]);
        let x = b.fmri.to_vec_f32().unwrap();
        for (i, &t) in b.trials.iter().enumerate() {
            assert_eq!(&x[i * v..][..v], &c.fmri[t as usize * v..][..v]);
            assert_eq!(b.stimuli[i], c.trial_stimulus[t as usize]);
        }
        seen.extend(b.trials);
    }
    seen.sort();
    let want: Vec<u32> = (0..c.trials() as u32)
        .filter(|&t| c.split[c.trial_stimulus[t as usize] as usize] == Split::Test)
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn averaged_batches_are_the_mean_of_each_stimulus_repeats() {
    for device in mindreader::testing::devices() {
        let (c, staged, _f) = staged_world(&device);
        let v = c.voxels;
        let l = Loader::new(staged, LoaderConfig::train(8, 1)).unwrap();
        let scene = &c.targets[0].data;
        for b in l.epoch(0) {
            let b = b.unwrap();
            assert!(b.fmri.device().same(&device));
            let (x, t) = (b.fmri.to_vec_f32().unwrap(), b.target.to_vec_f32().unwrap());
            for (i, &s) in b.stimuli.iter().enumerate() {
                let rows: Vec<usize> = (0..c.trials())
                    .filter(|&k| c.trial_stimulus[k] == s)
                    .collect();
                assert_eq!(rows.len(), 3);
                let mean: Vec<f32> = (0..v)
                    .map(|j| rows.iter().map(|&k| c.fmri[k * v + j]).sum::<f32>() / 3.0)
                    .collect();
                mindreader::testing::assert_close(
                    &x[i * v..][..v],
                    &mean,
                    1e-6,
                    1e-6,
                    &format!("stimulus {s} on {device}"),
                );
                assert_eq!(&t[i * 512..][..512], &scene[s as usize * 512..][..512]);
            }
        }
    }
}

#[test]
fn single_trial_stimulus_batches_draw_a_real_repeat_each_epoch() {
    let (c, staged, _f) = staged_world(&mindreader::Device::Cpu);
    let cfg = LoaderConfig {
        sampling: Sampling::Stimuli {
            average_repeats: false,
        },
        ..LoaderConfig::train(64, 4)
    };
    let l = Loader::new(staged, cfg).unwrap();
    let mut picks: std::collections::HashMap<u32, std::collections::HashSet<u32>> =
        Default::default();
    for epoch in 0..6 {
        let b = l.epoch(epoch).next().unwrap().unwrap();
        assert_eq!(b.stimuli.len(), 54);
        for (&s, &t) in b.stimuli.iter().zip(&b.trials) {
            assert_eq!(c.trial_stimulus[t as usize], s);
            picks.entry(s).or_default().insert(t);
        }
    }
    let varied = picks.values().filter(|t| t.len() > 1).count();
    assert!(
        varied > 40,
        "only {varied} of 54 stimuli saw more than one of their repeats in 6 epochs"
    );
}
