//! Training a small CLIP from scratch on a dataset's (stimulus, caption) pairs, with CLIP's
//! symmetric contrastive loss, so a world without a pretrained CLIP (the synthetic one) still gets
//! a joint image–text space to map brains into. The result is a Hugging Face-layout directory
//! (`config.json` + `model.safetensors`, HF tensor names) that `embed`, `screen-captions` and
//! `Clip::load` read like any other CLIP.
//!
//! Loss (Radford et al. 2021): `L = exp(logit_scale)·cos(image_i, text_j)` over a batch of B
//! pairs, `loss = ½·(CE(L, diag) + CE(Lᵀ, diag))`, with every weight and the temperature learned
//! (AdamW; the temperature clipped at `logit_scale ≤ ln 100` after each step, as CLIP's training does).
//!
//! One departure, on by default: a layout term (`train::clip_layout`), so that the space keeps
//! where things are.
//!
//! One step: a batch of training stimuli in a seeded order, each with one of its captions
//! drawn per (epoch, stimulus); the images through CLIP's own preprocessing. Every epoch ends with
//! validation on the test stimuli (their first caption: N-way top-1 retrieval both ways) and an
//! atomic checkpoint (weights, Adam moments, step); `resume` continues bit for bit, as in
//! `train::mapper`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::autograd::Tape;
use crate::data::{DatasetFile, Split};
use crate::error::{Error, Result};
use crate::eval::{retrieval, Retrieval};
use crate::fsio::write_atomic;
use crate::models::clip::{Clip, ClipConfig};
use crate::models::clip_tokenizer::ClipTokenizer;
use crate::nn::save_safetensors;
use crate::ops::elementwise as ew;
use crate::ops::image::clip_preprocess;
use crate::ops::loss::infonce;
use crate::rng::{stage, Rng};
use crate::tensor::{Device, Tensor};
use crate::train::clip_layout::{LayoutHead, LAYOUT_HEAD};
use crate::train::metrics::append_json_line;
use crate::train::{Adam, AdamConfig};

/// The shape and the optimisation of a small CLIP run (the checkpoint refuses to resume if any
/// field changed but `epochs`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipTrainConfig {
    /// Width of both towers and of the joint space.
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch: usize,
    /// Text context (tokens, BOS and EOS included); synthetic captions are short.
    pub context: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub seed: u64,
    /// Weight of the layout term (0: CLIP's contrastive loss alone).
    pub layout_weight: f32,
    /// Side of the thumbnail the layout head reads off the image embedding (it must divide the
    /// images' side).
    pub layout_grid: usize,
}

impl Default for ClipTrainConfig {
    fn default() -> Self {
        ClipTrainConfig {
            width: 64,
            layers: 2,
            heads: 2,
            patch: 8,
            context: 32,
            epochs: 10,
            batch: 64,
            lr: 1e-3,
            weight_decay: 0.1,
            seed: 42,
            layout_weight: 4.0,
            layout_grid: 4,
        }
    }
}

impl ClipTrainConfig {
    /// The Hugging Face `config.json` of this CLIP for images of `image_size` pixels.
    pub fn hf_config(&self, image_size: usize) -> serde_json::Value {
        let tower = |w: usize| serde_json::json!({"hidden_size": w, "intermediate_size": 4 * w, "num_attention_heads": self.heads, "num_hidden_layers": self.layers, "hidden_act": "quick_gelu"});
        let mut vision = tower(self.width);
        vision["image_size"] = image_size.into();
        vision["patch_size"] = self.patch.into();
        let mut text = tower(self.width);
        text["max_position_embeddings"] = self.context.into();
        serde_json::json!({"model_type": "clip", "projection_dim": self.width, "vision_config": vision, "text_config": text})
    }

    /// What a checkpoint must match to resume. Without the layout term it is the fingerprint
    /// of runs from before the term existed, so those still resume (with `--layout-weight 0`).
    pub(crate) fn fingerprint(&self) -> String {
        let s = format!(
            "{:?}",
            ClipTrainConfig {
                epochs: 0,
                ..self.clone()
            }
        );
        match self.layout_weight == 0.0 {
            true => s.replace(
                &format!(", layout_weight: 0.0, layout_grid: {}", self.layout_grid),
                "",
            ),
            false => s,
        }
    }
}

/// One epoch's figures.
#[derive(Clone, Debug)]
pub struct ClipEpoch {
    pub epoch: usize,
    /// CLIP's contrastive loss (the layout term apart).
    pub train_loss: f64,
    pub val_loss: f64,
    /// The layout term's MSE (unweighted) on the training batches and the test stimuli, when on.
    pub layout_loss: Option<(f64, f64)>,
    /// Image→caption (`image_from_brain` slot: the image's caption among the batch's) and
    /// caption→image retrieval on the test stimuli.
    pub retrieval: Retrieval,
    pub seconds: f64,
}

impl ClipEpoch {
    pub fn to_json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss,
            "val_top1_caption_from_image": self.retrieval.brain_from_image, "val_top1_image_from_caption": self.retrieval.image_from_brain,
            "val_way": self.retrieval.way, "seconds": self.seconds});
        if let Some((train, val)) = self.layout_loss {
            j["train_layout_loss"] = train.into();
            j["val_layout_loss"] = val.into();
        }
        j
    }
}

/// Called after every step (epoch, step, steps, loss) and every epoch; `on_step` returning false
/// stops the run without saving (how tests simulate a kill).
pub trait ClipProgress {
    /// After each step; `loss` is the step's loss on the CPU and None on a GPU, where the loss
    /// stays on the device and is read once per epoch (no host synchronisation inside a step).
    fn on_step(&mut self, _epoch: usize, _step: usize, _steps: usize, _loss: Option<f32>) -> bool {
        true
    }
    fn on_epoch(&mut self, _e: &ClipEpoch) {}
}

impl ClipProgress for () {}

/// The pairs a run trains and validates on, read once from a dataset.
pub struct ClipData {
    /// `[M, H, W, 3]` u8.
    pub images: Vec<u8>,
    pub image_size: [usize; 2],
    /// Each stimulus' non-empty captions.
    pub captions: Vec<Vec<String>>,
    pub train: Vec<u32>,
    pub test: Vec<u32>,
}

impl ClipData {
    pub fn from_file(file: &DatasetFile) -> Result<ClipData> {
        ClipData::from_parts(
            file.images()?,
            file.summary().image_size,
            file.captions()?,
            file.split(),
            file.path(),
        )
    }

    /// From a dataset's arrays (`captions`: C slots per stimulus, "" for empty); `path` names
    /// the source in errors.
    pub fn from_parts(
        images: Vec<u8>,
        image_size: [usize; 2],
        captions: Vec<Vec<String>>,
        split: &[Split],
        path: &Path,
    ) -> Result<ClipData> {
        let captions: Vec<Vec<String>> = captions
            .into_iter()
            .map(|row| row.into_iter().filter(|c| !c.trim().is_empty()).collect())
            .collect();
        let with_caption = |side: Split| {
            (0..split.len() as u32)
                .filter(|&i| split[i as usize] == side && !captions[i as usize].is_empty())
                .collect::<Vec<_>>()
        };
        let (train, test) = (with_caption(Split::Train), with_caption(Split::Test));
        if train.is_empty() || test.len() < 2 {
            return Err(Error::dataset(path, "captions", format!("train-clip needs captioned training stimuli and at least 2 captioned test stimuli (have {} and {})", train.len(), test.len())));
        }
        Ok(ClipData {
            images,
            image_size,
            captions,
            train,
            test,
        })
    }

    /// `[B, H, W, 3]` pixels of `stimuli`.
    fn pixels(&self, stimuli: &[u32]) -> Vec<u8> {
        let px = self.image_size[0] * self.image_size[1] * 3;
        stimuli
            .iter()
            .flat_map(|&s| self.images[s as usize * px..][..px].iter().copied())
            .collect()
    }
}

/// CLIP's symmetric contrastive loss of a `[B, B]` logits matrix whose matching pairs are on the
/// diagonal: `−(Σ_i log_softmax(L)[i, i] + Σ_i log_softmax(Lᵀ)[i, i]) / (2B)`. That is InfoNCE
/// with both directions weighted ½, so it runs as the fused `ops::loss::infonce` (one kernel
/// forward and backward): no identity matrix uploaded per step, no transpose.
pub fn contrastive_loss(tape: &mut Tape, logits: &Tensor) -> Result<Tensor> {
    let b = logits.shape()[0];
    if logits.shape() != [b, b] || b == 0 {
        return Err(Error::shape(
            "clip contrastive loss",
            format!(
                "logits must be a non-empty square [B, B], got {:?}",
                logits.shape()
            ),
        ));
    }
    infonce(tape, logits, 0.5)
}

/// The stimuli of one epoch in batch order: a pure function of (seed, epoch).
fn epoch_order(rows: &[u32], seed: u64, epoch: usize) -> Vec<u32> {
    let mut order = rows.to_vec();
    Rng::stream(seed, stage::CLIP_TRAIN, epoch as u64).shuffle(&mut order);
    order
}

/// One caption per stimulus for `epoch` (its first one for validation, `epoch = None`).
fn captions_for(data: &ClipData, stimuli: &[u32], seed: u64, epoch: Option<usize>) -> Vec<String> {
    stimuli
        .iter()
        .map(|&s| {
            let list = &data.captions[s as usize];
            let k = match epoch {
                None => 0,
                Some(e) => Rng::stream(seed, stage::CLIP_TRAIN, ((e as u64 + 1) << 32) | s as u64)
                    .below(list.len()),
            };
            list[k].clone()
        })
        .collect()
}

/// One batch's loss terms and embeddings.
struct BatchLoss {
    contrastive: Tensor,
    /// The layout term's MSE (unweighted), when the run has the term.
    layout: Option<Tensor>,
    image_features: Tensor,
    text_features: Tensor,
}

impl BatchLoss {
    /// What a step minimises: `contrastive + layout_weight · layout`.
    fn objective(&self, tape: &mut Tape, layout_weight: f32) -> Result<Tensor> {
        match &self.layout {
            Some(l) => {
                let weighted = ew::scale(tape, l, layout_weight)?;
                ew::add(tape, &self.contrastive, &weighted)
            }
            None => Ok(self.contrastive.clone()),
        }
    }
}

/// The loss terms (and, on an inference tape, nothing else) of one batch.
fn batch_loss(
    clip: &Clip,
    layout: Option<&LayoutHead>,
    tape: &mut Tape,
    data: &ClipData,
    stimuli: &[u32],
    texts: &[String],
    device: &Device,
) -> Result<BatchLoss> {
    let [h, w] = data.image_size;
    let pixels = clip_preprocess(
        &data.pixels(stimuli),
        [stimuli.len(), h, w, 3],
        clip.config.vision.image_size,
        device,
    )?;
    let context = clip.config.text.max_position_embeddings;
    let ids = ClipTokenizer::shared()?.tokenize_batch(texts, context)?;
    let img = clip.encode_image(tape, &pixels)?;
    let txt = clip.encode_text(tape, &ids, context)?;
    let logits = clip.logits_per_image(tape, &img, &txt)?;
    let contrastive = contrastive_loss(tape, &logits)?;
    let layout = match layout {
        Some(head) => Some(head.loss(tape, &img, data, stimuli)?),
        None => None,
    };
    Ok(BatchLoss {
        contrastive,
        layout,
        image_features: img,
        text_features: txt,
    })
}

/// The test stimuli's contrastive loss, layout MSE (when on) and retrieval.
fn validate(
    clip: &Clip,
    layout: Option<&LayoutHead>,
    data: &ClipData,
    cfg: &ClipTrainConfig,
    epoch: usize,
    device: &Device,
) -> Result<(f64, f64, Retrieval)> {
    let (mut total, mut count, mut layout_total) = (0.0, 0, 0.0);
    let (mut imgs, mut txts) = (Vec::new(), Vec::new());
    for chunk in data.test.chunks(cfg.batch.max(2)) {
        let mut tape = Tape::inference();
        let texts = captions_for(data, chunk, cfg.seed, None);
        let b = batch_loss(clip, layout, &mut tape, data, chunk, &texts, device)?;
        if chunk.len() > 1 {
            total += b.contrastive.scalar()? as f64 * chunk.len() as f64;
            count += chunk.len();
        }
        if let Some(l) = &b.layout {
            layout_total += l.scalar()? as f64 * chunk.len() as f64;
        }
        imgs.extend(b.image_features.to_vec_f32()?);
        txts.extend(b.text_features.to_vec_f32()?);
    }
    // retrieval(pred = captions, target = images): image_from_brain = the image of a caption.
    let r = retrieval(
        &txts,
        &imgs,
        clip.config.projection_dim,
        300,
        30,
        cfg.seed ^ epoch as u64,
    )?;
    Ok((
        total / count.max(1) as f64,
        layout_total / data.test.len() as f64,
        r,
    ))
}

/// Where a run keeps its files: the HF directory (`config.json`, `model.safetensors`), the
/// resumable `checkpoint.safetensors` and `metrics.jsonl`.
pub struct ClipRunDir(pub PathBuf);

impl ClipRunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn weights(&self) -> PathBuf {
        self.0.join("model.safetensors")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
}

/// Trains (or resumes) a small CLIP into `dir`; returns this call's epochs.
pub fn train_clip(
    cfg: &ClipTrainConfig,
    data: &ClipData,
    dir: &ClipRunDir,
    resume: bool,
    device: &Device,
    progress: &mut dyn ClipProgress,
) -> Result<(Clip, Vec<ClipEpoch>)> {
    if cfg.batch < 2 || cfg.epochs == 0 {
        return Err(Error::Invalid(
            "train-clip: --batch must be at least 2 (a contrastive batch) and --epochs positive"
                .into(),
        ));
    }
    let [h, w] = data.image_size;
    if h != w || h % cfg.patch != 0 {
        return Err(Error::Invalid(format!("train-clip: images are {h}×{w}; the small CLIP needs square images whose side is a multiple of --patch {}", cfg.patch)));
    }
    if !(cfg.layout_weight.is_finite() && cfg.layout_weight >= 0.0) {
        return Err(Error::Invalid(format!(
            "train-clip: --layout-weight must be a finite number ≥ 0, got {}",
            cfg.layout_weight
        )));
    }
    if cfg.layout_weight > 0.0 && (cfg.layout_grid == 0 || h % cfg.layout_grid != 0) {
        return Err(Error::Invalid(format!("train-clip: --layout-grid {} must divide the images' side {h} (or turn the layout term off with --layout-weight 0)", cfg.layout_grid)));
    }
    std::fs::create_dir_all(&dir.0)
        .map_err(|e| Error::file(&dir.0, format!("creating the run directory: {e}")))?;
    let json = cfg.hf_config(h);
    let config = ClipConfig::from_json(&json.to_string(), &dir.config())?;
    let mut clip = Clip::zeros(config, device)?;
    clip.init_random(cfg.seed)?;
    let layout = LayoutHead::new(&mut clip, cfg, device)?;
    let mut adam = Adam::new(AdamConfig::adamw(cfg.lr, cfg.weight_decay));
    let mut start = 0;
    if resume && dir.checkpoint().exists() {
        // The configuration first: another model shape would otherwise fail on a tensor's shape.
        let (_, meta) = crate::nn::load_safetensors(&dir.checkpoint())?;
        if meta.get("train.config").map(String::as_str) != Some(&cfg.fingerprint()) {
            return Err(Error::file(dir.checkpoint(), format!("was written by a different train-clip configuration; refusing to resume.\n  checkpoint: {}\n  this run:   {}", meta.get("train.config").cloned().unwrap_or_default(), cfg.fingerprint())));
        }
        let (rest, meta) = clip.store.load(&dir.checkpoint())?;
        adam.load_state(&rest, &meta, device)?;
        start = meta
            .get("train.epochs_done")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::file(dir.checkpoint(), "metadata train.epochs_done is missing")
            })?;
    } else if !resume && dir.metrics().exists() {
        std::fs::remove_file(dir.metrics()).map_err(|e| {
            Error::file(
                dir.metrics(),
                format!("removing the previous run's metrics: {e}"),
            )
        })?;
    }
    write_atomic(
        &dir.config(),
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let mut history = Vec::new();
    for epoch in start..cfg.epochs {
        let started = std::time::Instant::now();
        let order = epoch_order(&data.train, cfg.seed, epoch);
        // Full batches only: a contrastive loss over a tail of one pair says nothing.
        let steps = (order.len() / cfg.batch).max(1);
        let (mut contrastive, mut layout_sum) = (RunningLoss::default(), RunningLoss::default());
        let diverged = |lv: f64, when: &str| {
            Error::Invalid(format!(
                "the CLIP loss became {lv} at epoch {} {when}; lower --lr",
                epoch + 1
            ))
        };
        for (step, stimuli) in order.chunks(cfg.batch).take(steps).enumerate() {
            let mut tape = Tape::new();
            clip.store.watch_all(&mut tape);
            let texts = captions_for(data, stimuli, cfg.seed, Some(epoch));
            let terms = batch_loss(
                &clip,
                layout.as_ref(),
                &mut tape,
                data,
                stimuli,
                &texts,
                device,
            )?;
            let loss = terms.objective(&mut tape, cfg.layout_weight)?;
            let grads = tape.backward(&loss)?;
            clip.store.accumulate(&grads)?;
            adam.step(&mut clip.store, cfg.lr)?;
            clip.store.zero_grad();
            clamp_logit_scale(&clip)?;
            let lv = contrastive.add(&terms.contrastive)?;
            if let Some(l) = &terms.layout {
                layout_sum.add(l)?;
            }
            if let Some(lv) = lv.filter(|v| !v.is_finite()) {
                return Err(diverged(lv as f64, &format!("step {step}")));
            }
            if !progress.on_step(epoch, step, steps, lv) {
                return Ok((clip, history));
            }
        }
        let (total, layout_total) = (contrastive.total()?, layout_sum.total()?);
        // Before the checkpoint: a diverged epoch never overwrites the last good one.
        if !(total.is_finite() && layout_total.is_finite()) {
            return Err(diverged(total + layout_total, "some step"));
        }
        let (val_loss, val_layout, r) = validate(&clip, layout.as_ref(), data, cfg, epoch, device)?;
        let e = ClipEpoch {
            epoch: epoch + 1,
            train_loss: total / steps as f64,
            val_loss,
            layout_loss: layout
                .as_ref()
                .map(|_| (layout_total / steps as f64, val_layout)),
            retrieval: r,
            seconds: started.elapsed().as_secs_f64(),
        };
        let (state, mut meta) = adam.state();
        meta.insert("train.config".into(), cfg.fingerprint());
        meta.insert("train.epochs_done".into(), (epoch + 1).to_string());
        clip.store.save(&dir.checkpoint(), &state, &meta)?;
        append_json_line(&dir.metrics(), &e.to_json())?;
        progress.on_epoch(&e);
        history.push(e);
    }
    // CLIP's weights alone: the layout head is a training aid, not part of the model.
    let weights: Vec<(String, Tensor)> = clip
        .store
        .iter()
        .filter(|p| p.name != LAYOUT_HEAD)
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    save_safetensors(
        &dir.weights(),
        &weights,
        &BTreeMap::from([("format".to_string(), "pt".to_string())]),
    )?;
    Ok((clip, history))
}

/// An epoch's running sum of one loss term: on the host on the CPU, on the device on a GPU
/// (read once, after the last step: no host synchronisation inside a step).
#[derive(Default)]
struct RunningLoss {
    host: f64,
    device: Option<Tensor>,
}

impl RunningLoss {
    /// Adds a step's loss; returns it on the CPU (None on a GPU).
    fn add(&mut self, loss: &Tensor) -> Result<Option<f32>> {
        if loss.device().is_cuda() {
            let t = match &self.device {
                Some(t) => t,
                None => self
                    .device
                    .insert(Tensor::zeros(loss.shape(), loss.device())?),
            };
            super::mapper::add_weighted_loss(t, loss, 1)?;
            return Ok(None);
        }
        let v = loss.scalar()?;
        self.host += v as f64;
        Ok(Some(v))
    }

    fn total(&self) -> Result<f64> {
        match &self.device {
            Some(t) => Ok(t.scalar()? as f64),
            None => Ok(self.host),
        }
    }
}

/// CLIP's training clips the temperature so logits are scaled by at most 100
/// (`logit_scale ≤ ln 100`, Radford et al. 2021 §2.5). A clamp kernel on the device: no read back
/// to the host inside the step.
fn clamp_logit_scale(clip: &Clip) -> Result<()> {
    if let Some(p) = clip.store.iter().find(|p| p.name == "logit_scale") {
        p.value.set_storage_from(ew::unary_raw(
            ew::Unary::Clamp {
                min: f32::NEG_INFINITY,
                max: 100f32.ln(),
            },
            &p.value,
        )?)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::synth::{self, SynthConfig};

    pub(crate) fn tiny() -> ClipTrainConfig {
        ClipTrainConfig {
            width: 16,
            layers: 1,
            heads: 2,
            patch: 8,
            context: 16,
            epochs: 3,
            batch: 8,
            lr: 3e-3,
            ..ClipTrainConfig::default()
        }
    }

    fn world() -> ClipData {
        world_of(40)
    }

    pub(crate) fn world_of(stimuli: usize) -> ClipData {
        let cfg = SynthConfig {
            stimuli,
            voxels: 32,
            padding: 0,
            image_size: 16,
            trials_per_session: stimuli,
            seed: 3,
            ..SynthConfig::default()
        };
        let c = synth::generate(&cfg, &indicatif::ProgressBar::hidden()).unwrap();
        ClipData::from_parts(
            c.images,
            c.image_size,
            c.captions,
            &c.split,
            Path::new("world"),
        )
        .unwrap()
    }

    pub(crate) fn temp(tag: &str) -> ClipRunDir {
        let d = std::env::temp_dir().join(format!(
            "mindreader-train-clip-{tag}-{}",
            std::process::id()
        ));
        std::fs::remove_dir_all(&d).ok();
        ClipRunDir(d)
    }

    /// The loss of a perfectly matched batch (identity logits scaled up) is near 0, of uniform
    /// logits ln B; the gradient pushes the diagonal up.
    #[test]
    fn contrastive_loss_is_cross_entropy_on_the_diagonal() {
        let b = 4;
        let uniform = Tensor::zeros(&[b, b], &Device::Cpu).unwrap();
        let l = contrastive_loss(&mut Tape::new(), &uniform)
            .unwrap()
            .scalar()
            .unwrap();
        assert!((l - (b as f32).ln()).abs() < 1e-6, "{l}");
        let sharp = Tensor::from_vec(
            (0..b * b)
                .map(|k| if k / b == k % b { 30.0 } else { 0.0 })
                .collect(),
            &[b, b],
            &Device::Cpu,
        )
        .unwrap();
        assert!(
            contrastive_loss(&mut Tape::new(), &sharp)
                .unwrap()
                .scalar()
                .unwrap()
                < 1e-6
        );
        let x =
            Tensor::from_vec(crate::testing::random_vec(b * b, 1), &[b, b], &Device::Cpu).unwrap();
        let mut tape = Tape::new();
        tape.watch(&x);
        let loss = contrastive_loss(&mut tape, &x).unwrap();
        let g = tape
            .backward(&loss)
            .unwrap()
            .get(&x)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert!((0..b).all(|i| g[i * b + i] < 0.0), "{g:?}");
        assert!(contrastive_loss(
            &mut Tape::new(),
            &Tensor::zeros(&[2, 3], &Device::Cpu).unwrap()
        )
        .is_err());
    }

    /// On every device, the fused loss and its gradient are Radford et al.'s formula written out
    /// in f64 (row and column cross-entropies on the diagonal, averaged), at an odd batch size.
    #[test]
    fn contrastive_loss_matches_the_written_out_formula_and_its_finite_differences() {
        let b = 7;
        let logits: Vec<f32> = crate::testing::random_vec(b * b, 5)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let formula = |l: &[f64]| {
            let lse = |get: &dyn Fn(usize) -> f64| (0..b).map(get).map(f64::exp).sum::<f64>().ln();
            let rows: f64 = (0..b).map(|i| l[i * b + i] - lse(&|j| l[i * b + j])).sum();
            let cols: f64 = (0..b).map(|j| l[j * b + j] - lse(&|i| l[i * b + j])).sum();
            -(rows + cols) / (2 * b) as f64
        };
        let x64: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        for device in crate::testing::devices() {
            let x = Tensor::from_vec(logits.clone(), &[b, b], &device).unwrap();
            let mut tape = Tape::new();
            tape.watch(&x);
            let loss = contrastive_loss(&mut tape, &x).unwrap();
            let got = loss.scalar().unwrap() as f64;
            assert!((got - formula(&x64)).abs() < 1e-5, "{device}: {got}");
            let grads = tape.backward(&loss).unwrap();
            let g = grads.get(&x).unwrap().to_vec_f32().unwrap();
            let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            crate::testing::gradcheck("clip contrastive loss", formula, &x64, &g);
        }
    }

    #[test]
    fn logit_scale_is_clipped_at_ln_100_and_left_alone_below() {
        let json = tiny().hf_config(16).to_string();
        let clip = Clip::zeros(
            ClipConfig::from_json(&json, Path::new("c.json")).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let scale = clip
            .store
            .iter()
            .find(|p| p.name == "logit_scale")
            .unwrap()
            .value
            .clone();
        for (set, want) in [(10.0f32, 100f32.ln()), (2.0, 2.0)] {
            scale
                .set_storage_from(Tensor::full(set, &[], &Device::Cpu).unwrap())
                .unwrap();
            clamp_logit_scale(&clip).unwrap();
            assert_eq!(scale.scalar().unwrap(), want);
        }
    }

    /// On a GPU a training step never waits for the device: the loss is summed there and read
    /// once per epoch. Counts the device-to-host copies between the reports of steps 1 and 3.
    #[test]
    fn a_clip_step_on_the_gpu_reads_nothing_back() {
        let Some(dev) = crate::testing::gpu() else {
            return;
        };
        struct Syncs(Vec<(usize, u64, Option<f32>)>);
        impl ClipProgress for Syncs {
            fn on_step(&mut self, e: usize, _: usize, _: usize, loss: Option<f32>) -> bool {
                self.0.push((e, crate::tensor::downloads(), loss));
                true
            }
        }
        let cfg = ClipTrainConfig {
            epochs: 1,
            ..tiny()
        };
        let dir = temp("syncs");
        let mut syncs = Syncs(Vec::new());
        let (_, hist) = train_clip(&cfg, &world(), &dir, false, &dev, &mut syncs).unwrap();
        assert!(syncs.0.len() >= 3, "{} steps", syncs.0.len());
        assert_eq!(
            syncs.0[3.min(syncs.0.len() - 1)].1,
            syncs.0[1].1,
            "copies in steps 2–3"
        );
        assert!(syncs.0.iter().all(|s| s.2.is_none()));
        assert!(
            hist[0].train_loss.is_finite() && hist[0].train_loss > 0.0,
            "{hist:?}"
        );
        std::fs::remove_dir_all(dir.0).ok();
    }

    /// Three epochs lower the training loss, write a directory `Clip::load` reads back to the same
    /// embeddings, and a run killed in epoch 2 and resumed ends with the same weights.
    #[test]
    fn trains_saves_and_resumes_bit_for_bit() {
        let (data, cfg) = (world(), tiny());
        let a = temp("straight");
        let (clip, hist) = train_clip(&cfg, &data, &a, false, &Device::Cpu, &mut ()).unwrap();
        assert_eq!(hist.len(), 3);
        assert!(hist[2].train_loss < hist[0].train_loss, "{hist:?}");
        let loaded = Clip::load(&a.0, &Device::Cpu).unwrap();
        let names: Vec<&str> = loaded.store.iter().map(|p| p.name.as_str()).collect();
        assert!(
            names.contains(&"text_model.embeddings.token_embedding.weight")
                && names.contains(&"logit_scale")
        );
        for (p, q) in clip.store.iter().zip(loaded.store.iter()) {
            assert!(
                p.value.to_vec_f32().unwrap() == q.value.to_vec_f32().unwrap(),
                "{} differs after loading",
                p.name
            );
        }
        struct KillAt(usize, usize);
        impl ClipProgress for KillAt {
            fn on_step(&mut self, e: usize, s: usize, _: usize, _: Option<f32>) -> bool {
                !(e == self.0 && s == self.1)
            }
        }
        let b = temp("killed");
        train_clip(&cfg, &data, &b, false, &Device::Cpu, &mut KillAt(1, 1)).unwrap();
        let (resumed, rest) = train_clip(&cfg, &data, &b, true, &Device::Cpu, &mut ()).unwrap();
        assert_eq!(rest.len(), 2);
        for (p, q) in clip.store.iter().zip(resumed.store.iter()) {
            assert!(
                p.value.to_vec_f32().unwrap() == q.value.to_vec_f32().unwrap(),
                "{} differs after resuming",
                p.name
            );
        }
        let other = ClipTrainConfig { width: 32, ..cfg };
        let err = train_clip(&other, &data, &b, true, &Device::Cpu, &mut ())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("refusing to resume"), "{err}");
        for d in [a, b] {
            std::fs::remove_dir_all(d.0).ok();
        }
    }
}
