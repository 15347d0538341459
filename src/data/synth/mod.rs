//! The synthetic world: procedural scenes, their captions, and a simulated subject's fMRI
//! responses to them, written as a prepared dataset whose ground truth is known.
//!
//! Why it exists: everyone (CI included) needs data whose answer is known, so that a trained
//! model's quality can be measured honestly before NSD is at hand. The pipeline, in order:
//!
//! 1. scenes (`scene`): 1–3 objects on a flat, gradient or textured background, resampled until
//!    every object keeps a quarter of its area visible;
//! 2. pixels (`render`) and captions (`captions`: 5 per image, 1–2 of them deliberately poor);
//! 3. the subject (`brain`): an encoding model gives each voxel a clean response per stimulus;
//! 4. trials: every stimulus is shown `repeats` times in a shuffled order, grouped into sessions;
//!    a trial is the clean response + unit Gaussian noise + the session's per-voxel offset, and
//!    each session is z-scored per voxel (as NSD's betas are), then zero-padded.
//!
//! Everything is drawn from per-item streams of one seed (`crate::rng`), so the same config gives the
//! same file bytes on any machine and thread count.

pub mod brain;
pub mod captions;
pub mod render;
pub mod scene;

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::data::dataset::{AuxArray, AuxData, Contents, Meta, Source, Split, Target};
use crate::error::{Error, Result};
use crate::rng::{stage, Rng};
use brain::Subject;
use scene::{BackgroundKind, Scene, MAX_OBJECTS};

/// Everything that shapes a synthetic world. `Default` is the demo world; `nsd_like` matches
/// NSD subj01's size.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub stimuli: usize,
    /// Voxels before padding.
    pub voxels: usize,
    /// Zero columns added on each side (NSD: 10, giving 15724 + 20 = 15744).
    pub padding: usize,
    /// Images are `image_size`² RGB.
    pub image_size: usize,
    /// Mean per-voxel signal std / noise std of a single trial. NSD's nsdgeneral voxels have a
    /// noise-ceiling SNR of very roughly 0.2–0.5; 0.4 gives a single-trial noise ceiling of
    /// about 14% and a 3-repeat average of about 32% (ncsnr² / (ncsnr² + 1/n)).
    pub snr: f32,
    pub repeats: usize,
    /// The seed of the stimuli, trials and split.
    pub seed: u64,
    /// The seed of the simulated subject's voxels (defaults to `seed`): keep it fixed and vary
    /// `seed` to get new stimuli seen by the same brain.
    pub subject_seed: Option<u64>,
    /// Fraction of stimuli held out for test (NSD's shared 1000 are about 10%).
    pub test_fraction: f32,
    /// Trials per scanning session (NSD: 750).
    pub trials_per_session: usize,
    /// Std of each session's per-voxel offset, in units of trial-noise std.
    pub session_offset: f32,
    /// Fraction of voxels that are early-visual (the rest are object-tuned).
    pub early_fraction: f32,
    /// A compositional test split: half of the test stimuli hold an object whose (shape, colour,
    /// side of the image) combination never occurs in training, the other half are ordinary
    /// (every combination they show is also in training); `scene/unseen_combination` says which
    /// (see `compositional_split`).
    pub compositional: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            stimuli: 2000,
            voxels: 4096,
            padding: 0,
            image_size: 64,
            snr: 0.4,
            repeats: 3,
            seed: 0,
            subject_seed: None,
            test_fraction: 0.1,
            trials_per_session: 750,
            session_offset: 0.5,
            early_fraction: 0.6,
            compositional: false,
        }
    }
}

impl SynthConfig {
    /// NSD subj01's shape: 10,000 stimuli, 15724 voxels padded to 15744, 3 repeats.
    pub fn nsd_like() -> SynthConfig {
        SynthConfig {
            stimuli: 10_000,
            voxels: 15_724,
            padding: 10,
            ..SynthConfig::default()
        }
    }

    pub fn subject_seed(&self) -> u64 {
        self.subject_seed.unwrap_or(self.seed)
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("synth: {m}")));
        if self.stimuli < 2 {
            return bad(format!(
                "{} stimuli; need at least 2 (one train, one test)",
                self.stimuli
            ));
        }
        if self.voxels == 0 || self.repeats == 0 || self.trials_per_session == 0 {
            return bad("voxels, repeats and trials per session must be ≥ 1".into());
        }
        if self.image_size < brain::GRID || self.image_size > 1024 {
            return bad(format!(
                "image size {} must be in {}..=1024",
                self.image_size,
                brain::GRID
            ));
        }
        if !(self.snr.is_finite() && self.snr >= 0.0) {
            return bad(format!("snr {} must be finite and ≥ 0", self.snr));
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return bad(format!(
                "test fraction {} must be in (0, 1)",
                self.test_fraction
            ));
        }
        if !(0.0..=1.0).contains(&self.early_fraction)
            || !self.session_offset.is_finite()
            || self.session_offset < 0.0
        {
            return bad("early fraction must be in [0, 1] and session offset ≥ 0".into());
        }
        let values = self
            .stimuli
            .checked_mul(self.repeats)
            .and_then(|t| t.checked_mul(self.voxels + 2 * self.padding));
        if !matches!(values, Some(n) if n <= 1usize << 34) {
            return bad(
                "stimuli × repeats × voxels is over 16 G values; this would not fit in memory"
                    .into(),
            );
        }
        Ok(())
    }
}

/// One stimulus before the brain sees it.
struct Stimulus {
    scene: Scene,
    image: Vec<u8>,
    captions: Vec<String>,
    caption_ok: Vec<bool>,
    features: Vec<f32>,
    /// φ: early-visual maps then object features.
    phi: Vec<f32>,
}

/// Draws, renders and describes stimulus `i`: resamples (up to 32 times) until every object
/// keeps at least a quarter of its area visible.
fn make_stimulus(cfg: &SynthConfig, i: usize) -> Stimulus {
    let mut attempt = 0;
    let (mut scene, image) = loop {
        let mut scene = Scene::sample(cfg.seed, i as u64, attempt);
        let (image, visible) = render::render(&scene, cfg.image_size);
        scene.visible = visible;
        if scene.visible.iter().all(|&v| v >= 0.25) || attempt == 31 {
            break (scene, image);
        }
        attempt += 1;
    };
    // A tiny object at a small image size may cover no pixel centre; call it fully visible
    // rather than absent, the renderer drew its anti-aliased edge.
    for v in &mut scene.visible {
        if *v == 0.0 {
            *v = 1.0;
        }
    }
    let (captions, caption_ok) = captions::captions(&scene, cfg.seed, i as u64);
    let features = scene::features(&scene);
    let figure = render::figure_map(&scene, cfg.image_size);
    let mut phi = brain::visual_features(&image, &figure, cfg.image_size);
    phi.extend(brain::object_features(&scene));
    Stimulus {
        scene,
        image,
        captions,
        caption_ok,
        features,
        phi,
    }
}

/// Builds the whole world in memory (write it with `data::dataset::write`). `progress` counts
/// stimuli, then trials; pass `ProgressBar::hidden()` for none.
pub fn generate(cfg: &SynthConfig, progress: &ProgressBar) -> Result<Contents> {
    cfg.check()?;
    let (m, v, pad) = (cfg.stimuli, cfg.voxels, cfg.padding);
    let width = v + 2 * pad;

    progress.set_length(m as u64);
    progress.set_position(0);
    progress.set_message("scenes");
    let stimuli: Vec<Stimulus> = (0..m)
        .into_par_iter()
        .map(|i| {
            let s = make_stimulus(cfg, i);
            progress.inc(1);
            s
        })
        .collect();

    progress.set_message("subject");
    let subject = Subject::new(cfg.subject_seed(), v, cfg.early_fraction, cfg.snr);
    let mut phi = Vec::with_capacity(m * brain::FEATURES);
    for s in &stimuli {
        phi.extend_from_slice(&s.phi);
    }
    let signal = subject.signal(&phi, m)?;
    drop(phi);

    // Presentation order: every (stimulus, repeat) once, shuffled, cut into sessions.
    let t = m * cfg.repeats;
    let mut trial_stimulus: Vec<u32> = (0..t).map(|k| (k / cfg.repeats) as u32).collect();
    Rng::stream(cfg.seed, stage::ORDER, 0).shuffle(&mut trial_stimulus);
    let sessions = session_bounds(t, cfg.trials_per_session);
    let mut trial_session = vec![0u32; t];
    for (s, &(a, b)) in sessions.iter().enumerate() {
        trial_session[a..b].iter_mut().for_each(|x| *x = s as u32);
    }
    let offsets: Vec<f32> = (0..sessions.len())
        .flat_map(|s| {
            let mut o = vec![0f32; v];
            Rng::stream(cfg.seed, stage::SESSION, s as u64).fill_normal(&mut o);
            o.into_iter().map(|x| x * cfg.session_offset)
        })
        .collect();

    progress.set_length(t as u64);
    progress.set_position(0);
    progress.set_message("trials");
    let mut fmri = vec![0f32; t * width];
    fmri.par_chunks_mut(width).enumerate().for_each(|(k, row)| {
        let real = &mut row[pad..pad + v];
        Rng::stream(cfg.seed, stage::TRIAL_NOISE, k as u64).fill_normal(real);
        let clean = &signal[trial_stimulus[k] as usize * v..][..v];
        let offset = &offsets[trial_session[k] as usize * v..][..v];
        for j in 0..v {
            real[j] += clean[j] + offset[j];
        }
        if k % 256 == 0 {
            progress.inc(256.min(t - k) as u64);
        }
    });
    drop(signal);
    zscore_sessions(&mut fmri, &sessions, width, pad..pad + v);

    progress.set_message("assembling");
    let (split, held) = if cfg.compositional {
        compositional_split(cfg, &stimuli)
    } else {
        (choose_split(cfg), Vec::new())
    };
    let projection = scene::scene_projection();
    let mut target = Vec::with_capacity(m * scene::SCENE_TARGET_DIM);
    let mut features = Vec::with_capacity(m * scene::feature_count());
    let mut images = Vec::with_capacity(m * cfg.image_size * cfg.image_size * 3);
    let mut captions = Vec::with_capacity(m);
    for s in &stimuli {
        target.extend(scene::scene_target(&s.features, &projection));
        features.extend_from_slice(&s.features);
        images.extend_from_slice(&s.image);
        captions.push(s.captions.clone());
    }
    Ok(Contents {
        meta: Meta {
            subject: format!("synthetic-{}", cfg.subject_seed()),
            source: Source::Synthetic,
            voxels_unpadded: v,
            padding: [pad, pad],
            roi: "synthetic-visual".into(),
        },
        voxels: width,
        fmri,
        trial_stimulus,
        trial_session,
        image_size: [cfg.image_size, cfg.image_size],
        images,
        captions,
        split,
        stimulus_id: (0..m as u32).collect(),
        targets: vec![Target {
            name: "scene".into(),
            dim: scene::SCENE_TARGET_DIM,
            data: target,
            description: "unit vector: a fixed Gaussian projection of scene/features (binary facts 0/1, continuous values centred), L2-normalised".into(),
        }],
        scene: scene_arrays(&stimuli, features, &held),
    })
}

/// Session boundaries over `t` trials in presentation order: blocks of `per` trials, with a
/// short tail (under a quarter session) merged into the previous session so that every
/// session has enough trials to z-score.
fn session_bounds(t: usize, per: usize) -> Vec<(usize, usize)> {
    let mut b: Vec<(usize, usize)> = (0..t).step_by(per).map(|a| (a, (a + per).min(t))).collect();
    let n = b.len();
    if n > 1 && b[n - 1].1 - b[n - 1].0 < per / 4 {
        b[n - 2].1 = b[n - 1].1;
        b.pop();
    }
    b
}

/// Z-scores every column in `cols` within each session's rows (in place, sessions in parallel).
fn zscore_sessions(
    fmri: &mut [f32],
    sessions: &[(usize, usize)],
    width: usize,
    cols: std::ops::Range<usize>,
) {
    let mut blocks = Vec::with_capacity(sessions.len());
    let mut rest = fmri;
    for &(a, b) in sessions {
        let (block, tail) = rest.split_at_mut((b - a) * width);
        blocks.push(block);
        rest = tail;
    }
    blocks.into_par_iter().for_each(|block| {
        let (mean, std) = brain::column_moments(block, width);
        for row in block.chunks_mut(width) {
            for j in cols.clone() {
                row[j] = if std[j] > 1e-12 {
                    ((row[j] as f64 - mean[j]) / std[j]) as f32
                } else {
                    0.0
                };
            }
        }
    });
}

/// `round(test_fraction · M)` stimuli (at least one, at most M − 1) go to test.
fn choose_split(cfg: &SynthConfig) -> Vec<Split> {
    let m = cfg.stimuli;
    let n_test = ((m as f32 * cfg.test_fraction).round() as usize).clamp(1, m - 1);
    let mut order: Vec<usize> = (0..m).collect();
    Rng::stream(cfg.seed, stage::SPLIT, 0).shuffle(&mut order);
    let mut split = vec![Split::Train; m];
    for &i in &order[..n_test] {
        split[i] = Split::Test;
    }
    split
}

/// An object's (shape, colour, side) combination: side 0 is the left half of the image.
pub fn combination(o: &scene::Object) -> (usize, usize, usize) {
    (o.shape, o.colour, (o.x >= 0.5) as usize)
}

/// Whether a scene shows any of the `held` (shape, colour, side) combinations.
pub fn shows_any(scene: &Scene, held: &[(usize, usize, usize)]) -> bool {
    scene.objects.iter().any(|o| held.contains(&combination(o)))
}

/// The compositional split (Shirakawa et al. 2024's point: on NSD a decoder can score by
/// classifying into seen categories; here it cannot). Combinations of (shape, colour, side) are
/// held out one by one, in a seeded order, until the stimuli holding any held-out combination
/// reach half of `test_fraction`; those stimuli go to test, so no held-out combination occurs in
/// training (every shape, colour and side on its own still does). Random other stimuli fill the
/// rest of the test split: the ordinary half, whose combinations all occur in training too.
/// Returns the split and the held-out combinations.
fn compositional_split(
    cfg: &SynthConfig,
    stimuli: &[Stimulus],
) -> (Vec<Split>, Vec<(usize, usize, usize)>) {
    let mut all: Vec<(usize, usize, usize)> = (0..scene::SHAPES.len())
        .flat_map(|s| (0..scene::COLOURS.len()).flat_map(move |c| [(s, c, 0), (s, c, 1)]))
        .collect();
    Rng::stream(cfg.seed, stage::SPLIT, 1).shuffle(&mut all);
    let m = stimuli.len();
    let want = ((m as f32 * cfg.test_fraction).round() as usize).clamp(1, m - 1);
    let unseen_want = want.div_ceil(2);
    let mut held = Vec::new();
    let mut split = vec![Split::Train; m];
    let tested = |split: &[Split]| split.iter().filter(|&&s| s == Split::Test).count();
    for combo in all {
        if tested(&split) >= unseen_want {
            break;
        }
        let hits: Vec<usize> = (0..m)
            .filter(|&i| split[i] == Split::Train && shows_any(&stimuli[i].scene, &[combo]))
            .collect();
        // Never empty the training set.
        if hits.is_empty() || tested(&split) + hits.len() >= m {
            continue;
        }
        held.push(combo);
        for i in hits {
            split[i] = Split::Test;
        }
    }
    // The ordinary half: stimuli of the remaining training set, drawn at random.
    let mut rest: Vec<usize> = (0..m).filter(|&i| split[i] == Split::Train).collect();
    Rng::stream(cfg.seed, stage::SPLIT, 2).shuffle(&mut rest);
    let ordinary = want
        .saturating_sub(tested(&split))
        .min(rest.len().saturating_sub(1));
    for &i in &rest[..ordinary] {
        split[i] = Split::Test;
    }
    (split, held)
}

/// Code written for an empty object slot in `scene/shape`, `scene/colour`, `scene/size_class`.
pub const NO_OBJECT: u8 = 255;

/// The ground truth as `scene/*` arrays (layout in docs/dataset.md).
fn scene_arrays(
    stimuli: &[Stimulus],
    features: Vec<f32>,
    held: &[(usize, usize, usize)],
) -> Vec<AuxArray> {
    let m = stimuli.len();
    let k = MAX_OBJECTS;
    let (mut shape, mut colour, mut size_class) = (
        vec![NO_OBJECT; m * k],
        vec![NO_OBJECT; m * k],
        vec![NO_OBJECT; m * k],
    );
    let (mut geometry, mut visible) = (vec![0f32; m * k * 4], vec![0f32; m * k]);
    let (mut count, mut background, mut bg_geometry, mut caption_ok) = (
        vec![0u8; m],
        vec![0u8; m * 4],
        vec![0f32; m * 2],
        Vec::new(),
    );
    for (i, s) in stimuli.iter().enumerate() {
        count[i] = s.scene.objects.len() as u8;
        for (j, o) in s.scene.objects.iter().enumerate() {
            shape[i * k + j] = o.shape as u8;
            colour[i * k + j] = o.colour as u8;
            size_class[i * k + j] = o.size_class as u8;
            geometry[(i * k + j) * 4..][..4].copy_from_slice(&[o.x, o.y, o.size, o.rotation]);
            visible[i * k + j] = s.scene.visible[j];
        }
        let bg = &s.scene.background;
        let (kind, texture) = match bg.kind {
            BackgroundKind::Flat => (0, NO_OBJECT),
            BackgroundKind::Gradient => (1, NO_OBJECT),
            BackgroundKind::Texture(t) => (2, t as u8),
        };
        background[i * 4..][..4].copy_from_slice(&[
            kind,
            texture,
            bg.colour_a as u8,
            bg.colour_b as u8,
        ]);
        bg_geometry[i * 2..][..2].copy_from_slice(&[bg.angle, bg.period]);
        caption_ok.extend(s.caption_ok.iter().map(|&g| g as u8));
    }
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let arr = |name: &str, shape: Vec<usize>, data: AuxData, columns: Vec<String>| AuxArray {
        name: name.into(),
        shape,
        data,
        columns,
    };
    let ncap = captions::CAPTIONS_PER_IMAGE;
    // In name order, the order a reader lists them in, so a round trip gives equal contents.
    let mut arrays = vec![
        arr(
            "features",
            vec![m, scene::feature_count()],
            AuxData::F32(features),
            scene::feature_names(),
        ),
        arr("object_count", vec![m], AuxData::U8(count), vec![]),
        arr("shape", vec![m, k], AuxData::U8(shape), vec![]),
        arr("colour", vec![m, k], AuxData::U8(colour), vec![]),
        arr("size_class", vec![m, k], AuxData::U8(size_class), vec![]),
        arr(
            "geometry",
            vec![m, k, 4],
            AuxData::F32(geometry),
            cols(&["x", "y", "size", "rotation"]),
        ),
        arr("visible", vec![m, k], AuxData::F32(visible), vec![]),
        arr(
            "background",
            vec![m, 4],
            AuxData::U8(background),
            cols(&["kind", "texture", "colour_a", "colour_b"]),
        ),
        arr(
            "background_geometry",
            vec![m, 2],
            AuxData::F32(bg_geometry),
            cols(&["angle", "period"]),
        ),
        arr("caption_ok", vec![m, ncap], AuxData::U8(caption_ok), vec![]),
        arr(
            "unseen_combination",
            vec![m],
            AuxData::U8(
                stimuli
                    .iter()
                    .map(|s| shows_any(&s.scene, held) as u8)
                    .collect(),
            ),
            vec![],
        ),
    ];
    arrays.sort_by(|a, b| a.name.cmp(&b.name));
    arrays
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No held-out (shape, colour, side) combination occurs in a training stimulus; about half
    /// of the test stimuli hold one (and are flagged `unseen_combination`), the rest are
    /// ordinary; the test fraction is the one asked for.
    #[test]
    fn the_compositional_split_keeps_its_combinations_out_of_training() {
        let cfg = SynthConfig {
            stimuli: 400,
            voxels: 16,
            image_size: 32,
            compositional: true,
            ..SynthConfig::default()
        };
        let stimuli: Vec<Stimulus> = (0..cfg.stimuli).map(|i| make_stimulus(&cfg, i)).collect();
        let (split, held) = compositional_split(&cfg, &stimuli);
        assert!(!held.is_empty());
        let (mut unseen, mut ordinary) = (0, 0);
        for (s, sp) in stimuli.iter().zip(&split) {
            let shows = shows_any(&s.scene, &held);
            let combos = || s.scene.objects.iter().map(combination).collect::<Vec<_>>();
            match sp {
                Split::Train => assert!(!shows, "{:?} in training", combos()),
                Split::Test if shows => unseen += 1,
                Split::Test => ordinary += 1,
            }
        }
        assert_eq!(unseen + ordinary, 40, "round(0.1 · 400) test stimuli");
        assert!(
            (20..=30).contains(&unseen),
            "{unseen} unseen, {ordinary} ordinary"
        );
        // Every shape and every colour still occurs in training.
        for k in 0..scene::SHAPES.len() {
            assert!(
                stimuli
                    .iter()
                    .zip(&split)
                    .any(|(s, &sp)| sp == Split::Train
                        && s.scene.objects.iter().any(|o| o.shape == k))
            );
        }
        let c = generate(&cfg, &ProgressBar::hidden()).unwrap();
        assert_eq!(c.split, split, "generate uses the compositional split");
        let flag = c
            .scene
            .iter()
            .find(|a| a.name == "unseen_combination")
            .unwrap();
        let AuxData::U8(flag) = &flag.data else {
            panic!("u8 flags")
        };
        assert_eq!(flag.iter().map(|&f| f as usize).sum::<usize>(), unseen);
    }

    fn small() -> SynthConfig {
        SynthConfig {
            stimuli: 40,
            voxels: 64,
            padding: 2,
            image_size: 32,
            trials_per_session: 50,
            ..SynthConfig::default()
        }
    }

    #[test]
    fn sessions_cover_every_trial_and_merge_short_tails() {
        assert_eq!(session_bounds(10, 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(session_bounds(17, 8), vec![(0, 8), (8, 17)]);
        assert_eq!(session_bounds(3, 750), vec![(0, 3)]);
    }

    #[test]
    fn a_small_world_is_consistent() {
        let cfg = small();
        let c = generate(&cfg, &ProgressBar::hidden()).unwrap();
        c.check(std::path::Path::new("memory")).unwrap();
        assert_eq!(c.trials(), 120);
        assert_eq!(c.voxels, 68);
        // Padding columns are zero; real columns are z-scored per session.
        for row in c.fmri.chunks(68) {
            assert!(row[..2].iter().chain(&row[66..]).all(|&x| x == 0.0));
        }
        let mut per = [0; 40];
        c.trial_stimulus.iter().for_each(|&s| per[s as usize] += 1);
        assert!(per.iter().all(|&n| n == 3));
        assert_eq!(c.split.iter().filter(|&&s| s == Split::Test).count(), 4);
        let sess0: Vec<&[f32]> = c
            .fmri
            .chunks(68)
            .zip(&c.trial_session)
            .filter(|(_, &s)| s == 0)
            .map(|(r, _)| r)
            .collect();
        let mean: f64 = sess0.iter().map(|r| r[10] as f64).sum::<f64>() / sess0.len() as f64;
        let var: f64 = sess0
            .iter()
            .map(|r| (r[10] as f64 - mean).powi(2))
            .sum::<f64>()
            / sess0.len() as f64;
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "session 0 voxel 8: mean {mean} var {var}"
        );
    }

    #[test]
    fn bad_configs_are_errors() {
        for cfg in [
            SynthConfig {
                stimuli: 1,
                ..small()
            },
            SynthConfig {
                image_size: 8,
                ..small()
            },
            SynthConfig {
                snr: f32::NAN,
                ..small()
            },
            SynthConfig {
                test_fraction: 1.0,
                ..small()
            },
        ] {
            assert!(generate(&cfg, &ProgressBar::hidden()).is_err(), "{cfg:?}");
        }
    }
}
