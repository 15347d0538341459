//! Training the mapper (Mind Reader's `train_fmri_clip`): Adam with L2 weight decay, lr ×γ every
//! k epochs, shuffled mini-batches, per-epoch validation loss and retrieval, a checkpoint after
//! every epoch, and a resume that continues bit for bit.
//!
//! Bit-for-bit resume: the batch order of epoch e is a pure function of (seed, e), every op is
//! deterministic (no atomics in the mapper's kernels, fixed-order CPU reductions), and the
//! checkpoint holds the parameters, both Adam moments and the step count. A run killed anywhere
//! inside epoch e restarts e from the checkpoint written at the end of e − 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::autograd::Tape;
use crate::data::{Split, Staged};
use crate::error::{Error, Result};
use crate::eval::{retrieval, Retrieval};
use crate::models::{Mapper, MapperConfig};
use crate::nn::ParamStore;
use crate::ops::concat::concat;
use crate::ops::elementwise as ew;
use crate::ops::embedding::embedding;
use crate::ops::loss::{self, LossConfig};
use crate::rng::{stage, Rng};
use crate::tensor::{Device, Tensor};
use crate::train::mapper_graph::StepGraph;
use crate::train::metrics::append_json_line;
use crate::train::{Adam, AdamConfig, Schedule};

/// Which loss the mapper is trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Mse,
    Cosine,
    MseCos,
    Contrastive,
    MseCosContrastive,
}

impl LossKind {
    pub fn parse(s: &str) -> Result<LossKind> {
        Ok(match s {
            "mse" => LossKind::Mse,
            "cos" | "cosine" => LossKind::Cosine,
            "mse_cos" => LossKind::MseCos,
            "contrastive" => LossKind::Contrastive,
            "mse_cos_contrastive" => LossKind::MseCosContrastive,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown loss `{other}` (mse, cos, mse_cos, contrastive, mse_cos_contrastive)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            LossKind::Mse => "mse",
            LossKind::Cosine => "cos",
            LossKind::MseCos => "mse_cos",
            LossKind::Contrastive => "contrastive",
            LossKind::MseCosContrastive => "mse_cos_contrastive",
        }
    }

    pub fn compute(
        self,
        tape: &mut Tape,
        pred: &Tensor,
        target: &Tensor,
        cfg: &LossConfig,
    ) -> Result<Tensor> {
        match self {
            LossKind::Mse => loss::mse(tape, pred, target),
            LossKind::Cosine => loss::cosine(tape, pred, target),
            LossKind::MseCos => loss::mse_cos(tape, pred, target, cfg.cos_weight),
            LossKind::Contrastive => {
                loss::contrastive(tape, pred, target, cfg.temperature, cfg.lambda)
            }
            LossKind::MseCosContrastive => loss::mse_cos_contrastive(tape, pred, target, cfg),
        }
    }
}

/// Everything that decides a run's numbers (the checkpoint refuses to resume if it changed).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub mapper: MapperConfig,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub decay_every: usize,
    pub decay_gamma: f32,
    pub seed: u64,
    pub loss: LossKind,
    pub loss_cfg: LossConfig,
    /// What the targets are (dataset path's file name and target name), for mismatch checks.
    pub data_id: String,
    /// Start from these weights instead of a fresh initialisation (`--resume-from`: a mapper
    /// checkpoint, a `.pth` or a snapshot's `fmri_vec`); the optimiser starts fresh.
    pub init_from: Option<std::path::PathBuf>,
    /// On a GPU, replay full batches from one CUDA graph of the whole step
    /// (`train::mapper_graph`); the numbers are the same either way.
    pub cuda_graphs: bool,
}

impl TrainConfig {
    /// Mind Reader's defaults: Adam lr 2e-4, wd 1e-5, ×0.8 every 10 epochs, 40 epochs, batch 128, seed 42.
    pub fn mind_reader(mapper: MapperConfig, data_id: String) -> TrainConfig {
        TrainConfig {
            mapper,
            epochs: 40,
            batch: 128,
            lr: 2e-4,
            weight_decay: 1e-5,
            decay_every: 10,
            decay_gamma: 0.8,
            seed: 42,
            loss: LossKind::MseCos,
            loss_cfg: LossConfig::default(),
            data_id,
            init_from: None,
            cuda_graphs: true,
        }
    }

    /// The fields that must match for a resume, as checkpoint metadata (all but the epoch
    /// count: a finished run can be extended). `cuda_graphs` is left out: it changes how the
    /// steps are launched, not what they compute, and checkpoints from before it still resume.
    fn fingerprint(&self) -> String {
        format!(
            "{:?}",
            TrainConfig {
                epochs: 0,
                cuda_graphs: true,
                ..self.clone()
            }
        )
        .replace(", cuda_graphs: true", "")
    }
}

/// Paired rows: `fmri[i]` was recorded while seeing the stimulus whose target is `targets[i]`.
pub struct MapperData {
    pub fmri: Tensor,
    pub targets: Tensor,
    pub train_rows: Vec<u32>,
    /// Validation rows, one per held-out stimulus (repeats averaged).
    pub val_rows: Vec<u32>,
    /// Augmented training targets, when given: training row r of epoch e then learns view
    /// `k = VIEW_CHOICE(seed, e, r)` of its stimulus instead of `targets[r]` (validation keeps
    /// the un-augmented targets, as retrieval is reported against them).
    pub views: Option<Views>,
}

/// K augmented views of every stimulus' target, `[K·M, D]` (view k of stimulus s at row
/// `k·M + s`), and the stimulus of every data row.
pub struct Views {
    pub targets: Tensor,
    pub count: usize,
    pub stimuli: usize,
    pub row_stimulus: Vec<u32>,
}

impl Views {
    /// The view row each of `rows` learns in `epoch`: a pure function of (seed, epoch, row), so
    /// a resumed run draws the same views.
    fn rows_for(&self, rows: &[u32], seed: u64, epoch: usize) -> Vec<u32> {
        rows.iter()
            .map(|&r| {
                let k = Rng::stream(seed, stage::VIEW_CHOICE, ((epoch as u64) << 32) | r as u64)
                    .below(self.count);
                (k * self.stimuli) as u32 + self.row_stimulus[r as usize]
            })
            .collect()
    }
}

/// How training rows are formed from a stimulus' repeated trials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrialMode {
    /// One row per trial (NSD: three per image): more, noisier rows.
    Single,
    /// One row per stimulus: the mean of its trials.
    Average,
}

impl MapperData {
    /// Rows from a staged dataset: training rows from the train split (per `mode`), validation
    /// rows one per test stimulus (repeats averaged, as retrieval is reported).
    pub fn from_staged(
        staged: &Staged,
        trial_stimulus: &[u32],
        split: &[Split],
        mode: TrialMode,
    ) -> Result<MapperData> {
        let test: Vec<u32> = (0..split.len() as u32)
            .filter(|&s| split[s as usize] == Split::Test)
            .collect();
        let train_stimuli: Vec<u32> = (0..split.len() as u32)
            .filter(|&s| split[s as usize] == Split::Train)
            .collect();
        match mode {
            TrialMode::Average => Ok(MapperData {
                fmri: staged.averaged().clone(),
                targets: staged.targets().clone(),
                train_rows: train_stimuli,
                val_rows: test,
                views: None,
            }),
            TrialMode::Single => {
                // Rows 0..T are trials, rows T.. are the per-stimulus averages (for validation).
                let t = trial_stimulus.len();
                let mut off = Tape::inference();
                let fmri = concat(&mut off, &[staged.fmri(), staged.averaged()], 0)?;
                let per_trial = embedding(&mut off, staged.targets(), trial_stimulus)?;
                let targets = concat(&mut off, &[&per_trial, staged.targets()], 0)?;
                let train_rows = (0..t as u32)
                    .filter(|&k| {
                        split.get(trial_stimulus[k as usize] as usize) == Some(&Split::Train)
                    })
                    .collect();
                let val_rows = test.iter().map(|&s| t as u32 + s).collect();
                Ok(MapperData {
                    fmri,
                    targets,
                    train_rows,
                    val_rows,
                    views: None,
                })
            }
        }
    }

    /// Trains on augmented views (`[K, M, D]` as a dataset stores them) of the same targets.
    /// `trial_stimulus` and `mode` must be those `from_staged` was given.
    pub fn with_views(
        mut self,
        views: Vec<f32>,
        count: usize,
        trial_stimulus: &[u32],
        mode: TrialMode,
    ) -> Result<MapperData> {
        let dim = self.targets.shape()[1];
        let stimuli = match mode {
            TrialMode::Average => self.targets.shape()[0],
            TrialMode::Single => self.targets.shape()[0] - trial_stimulus.len(),
        };
        if count == 0 || views.len() != count * stimuli * dim {
            return Err(Error::shape(
                "train-mapper",
                format!(
                    "{} view values for [{count} views, {stimuli} stimuli, {dim} dims]",
                    views.len()
                ),
            ));
        }
        let row_stimulus = match mode {
            TrialMode::Average => (0..stimuli as u32).collect(),
            TrialMode::Single => trial_stimulus
                .iter()
                .copied()
                .chain(0..stimuli as u32)
                .collect(),
        };
        let host = Tensor::from_vec(views, &[count * stimuli, dim], &Device::Cpu)?;
        let targets = host.to_device(self.targets.device())?;
        self.views = Some(Views {
            targets,
            count,
            stimuli,
            row_stimulus,
        });
        Ok(self)
    }
}

/// One epoch's figures, as written to `metrics.jsonl`.
#[derive(Clone, Debug)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub retrieval: Retrieval,
    pub seconds: f64,
    pub samples_per_second: f64,
    /// Steps of this epoch replayed from the CUDA graph (the others ran op by op).
    pub graph_steps: usize,
}

impl EpochMetrics {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "epoch": self.epoch, "lr": self.lr, "train_loss": self.train_loss, "val_loss": self.val_loss,
            "val_top1_image_from_brain": self.retrieval.image_from_brain, "val_top1_brain_from_image": self.retrieval.brain_from_image,
            "val_way": self.retrieval.way, "val_batches": self.retrieval.batches, "val_chance": self.retrieval.chance,
            "val_mean_cosine": self.retrieval.mean_cosine, "seconds": self.seconds,
            "samples_per_second": self.samples_per_second, "graph_steps": self.graph_steps,
        })
    }
}

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    pub fn weights(&self) -> PathBuf {
        self.0.join("mapper.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn loss_curve(&self) -> PathBuf {
        self.0.join("loss.png")
    }
}

/// Called after every step with (epoch, step in epoch, steps per epoch, loss) and after every
/// epoch with its metrics; returning `false` from `on_step` stops the run at once without saving
/// (how the tests simulate a kill). The loss is `None` on a GPU: there it is summed on the device
/// and read once per epoch, so no step waits for the host.
pub trait Progress {
    fn on_step(&mut self, _epoch: usize, _step: usize, _steps: usize, _loss: Option<f32>) -> bool {
        true
    }
    fn on_epoch(&mut self, _m: &EpochMetrics) {}
}

impl Progress for () {}

/// The mapper's config as checkpoint metadata, so `predict` can rebuild it.
pub fn mapper_metadata(c: &MapperConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("mapper.voxels".into(), c.voxels.to_string()),
        ("mapper.hidden".into(), c.hidden.to_string()),
        ("mapper.fc_hidden".into(), c.fc_hidden.to_string()),
        ("mapper.out_dim".into(), c.out_dim.to_string()),
        ("mapper.res_blocks".into(), c.res_blocks.to_string()),
    ])
}

/// Reads the mapper config back from metadata written by `mapper_metadata`.
pub fn mapper_config_from(meta: &BTreeMap<String, String>, path: &Path) -> Result<MapperConfig> {
    let get = |k: &str| -> Result<usize> {
        meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
            Error::file(
                path,
                format!("not a mindreader mapper checkpoint: metadata `{k}` is missing"),
            )
        })
    };
    Ok(MapperConfig {
        voxels: get("mapper.voxels")?,
        hidden: get("mapper.hidden")?,
        fc_hidden: get("mapper.fc_hidden")?,
        out_dim: get("mapper.out_dim")?,
        res_blocks: get("mapper.res_blocks")?,
    })
}

/// Predictions for `rows` in batches, without recording.
pub fn predict_rows(
    mapper: &Mapper,
    fmri: &Tensor,
    rows: &[u32],
    batch: usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rows.len() * mapper.config.out_dim);
    let mut tape = Tape::inference();
    for chunk in rows.chunks(batch.max(1)) {
        let x = embedding(&mut tape, fmri, chunk)?;
        out.extend(mapper.forward(&mut tape, &x)?.to_vec_f32()?);
    }
    Ok(out)
}

fn validate(
    mapper: &Mapper,
    data: &MapperData,
    cfg: &TrainConfig,
    epoch: usize,
) -> Result<(f64, Retrieval)> {
    let mut tape = Tape::inference();
    let (mut total, mut count) = (0.0, 0usize);
    let mut preds = Vec::new();
    for chunk in data.val_rows.chunks(cfg.batch.max(2)) {
        let x = embedding(&mut tape, &data.fmri, chunk)?;
        let t = embedding(&mut tape, &data.targets, chunk)?;
        let y = mapper.forward(&mut tape, &x)?;
        total += cfg
            .loss
            .compute(&mut tape, &y, &t, &cfg.loss_cfg)?
            .scalar()? as f64
            * chunk.len() as f64;
        count += chunk.len();
        preds.extend(y.to_vec_f32()?);
    }
    let targets = embedding(&mut tape, &data.targets, &data.val_rows)?.to_vec_f32()?;
    let r = retrieval(
        &preds,
        &targets,
        cfg.mapper.out_dim,
        300,
        30,
        cfg.seed ^ epoch as u64,
    )?;
    Ok((total / count.max(1) as f64, r))
}

/// The batch order of one epoch: a pure function of (seed, epoch).
fn epoch_order(rows: &[u32], seed: u64, epoch: usize) -> Vec<u32> {
    let mut order = rows.to_vec();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64);
    order.shuffle(&mut rng);
    order
}

/// Trains (or resumes) a mapper into `dir`; returns the per-epoch metrics of this call.
pub fn train(
    cfg: &TrainConfig,
    data: &MapperData,
    dir: &RunDir,
    resume: bool,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Mapper, ParamStore, Vec<EpochMetrics>)> {
    check_data(cfg, data)?;
    std::fs::create_dir_all(&dir.0)
        .map_err(|e| Error::file(&dir.0, format!("creating the run directory: {e}")))?;
    let mut store = ParamStore::new();
    let mapper = Mapper::new(cfg.mapper, &mut store, cfg.seed, device)?;
    let mut adam = Adam::new(AdamConfig::adam(cfg.lr, cfg.weight_decay));
    let schedule = Schedule::Step {
        every: cfg.decay_every,
        gamma: cfg.decay_gamma,
    };
    let mut start_epoch = 0;
    if resume && dir.checkpoint().exists() {
        let (rest, meta) = store.load(&dir.checkpoint())?;
        let saved = meta.get("train.config").cloned().unwrap_or_default();
        if saved != cfg.fingerprint() {
            return Err(Error::file(dir.checkpoint(), format!("was written by a different run configuration; refusing to resume.\n  checkpoint: {saved}\n  this run:   {}", cfg.fingerprint())));
        }
        adam.load_state(&rest, &meta, device)?;
        start_epoch = meta
            .get("train.epochs_done")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::file(dir.checkpoint(), "metadata train.epochs_done is missing")
            })?;
    } else if let Some(init) = &cfg.init_from {
        let loaded =
            crate::train::import::load_mapper(init, None, Some(cfg.mapper.voxels), device)?;
        if loaded.mapper.config != cfg.mapper {
            return Err(Error::file(
                init,
                format!(
                    "holds a mapper of shape {:?}, but this run trains {:?}",
                    loaded.mapper.config, cfg.mapper
                ),
            ));
        }
        let weights = loaded
            .store
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        store.assign_from(weights, "", init)?;
    }
    if !resume && dir.metrics().exists() {
        std::fs::remove_file(dir.metrics()).map_err(|e| {
            Error::file(
                dir.metrics(),
                format!("removing the previous run's metrics: {e}"),
            )
        })?;
    }
    let mut history = Vec::new();
    // On a GPU, Σ loss·rows of an epoch stays on the device (read at the epoch's end), and full
    // batches replay one CUDA graph of the step, captured after the first ordinary step.
    let mut total_dev: Option<Tensor> = None;
    let mut graph: Option<StepGraph> = None;
    let mut graph_failed = !cfg.cuda_graphs;
    for epoch in start_epoch..cfg.epochs {
        let lr = schedule.lr(cfg.lr, epoch);
        let order = epoch_order(&data.train_rows, cfg.seed, epoch);
        let steps = order.len().div_ceil(cfg.batch);
        let started = Instant::now();
        let mut total = 0.0f64;
        let mut graph_steps = 0;
        if let Some(t) = &total_dev {
            t.copy_from(&Tensor::zeros(t.shape(), device)?)?;
        }
        for (step, rows) in order.chunks(cfg.batch).enumerate() {
            let target_rows = match &data.views {
                None => rows.to_vec(),
                Some(v) => v.rows_for(rows, cfg.seed, epoch),
            };
            let targets = data.views.as_ref().map_or(&data.targets, |v| &v.targets);
            if let (Device::Cuda(gpu), Some(total_t), false) =
                (device, &total_dev, graph_failed || rows.len() != cfg.batch)
            {
                if graph.is_none() {
                    match StepGraph::capture(
                        gpu, &mapper, &mut store, &mut adam, cfg, data, targets, total_t,
                    ) {
                        Ok(g) => graph = Some(g),
                        Err(e) => {
                            store.zero_grad();
                            eprintln!("warning: the mapper's step could not be captured as a CUDA graph ({e}); training goes on op by op");
                            graph_failed = true;
                        }
                    }
                }
                if let Some(g) = &mut graph {
                    g.run(rows, &target_rows, &mut adam, lr)?;
                    graph_steps += 1;
                    if !progress.on_step(epoch, step, steps, None) {
                        return Ok((mapper, store, history));
                    }
                    continue;
                }
            }
            let mut tape = Tape::new();
            store.watch_all(&mut tape);
            let (x, t) = {
                let mut off = Tape::inference();
                let t = embedding(&mut off, targets, &target_rows)?;
                (embedding(&mut off, &data.fmri, rows)?, t)
            };
            let y = mapper.forward(&mut tape, &x)?;
            let l = cfg.loss.compute(&mut tape, &y, &t, &cfg.loss_cfg)?;
            let grads = tape.backward(&l)?;
            store.accumulate(&grads)?;
            adam.step(&mut store, lr)?;
            store.zero_grad();
            let lv = if device.is_cuda() {
                let total_t = match &total_dev {
                    Some(t) => t,
                    None => total_dev.insert(Tensor::zeros(l.shape(), device)?),
                };
                add_weighted_loss(total_t, &l, rows.len())?;
                None
            } else {
                let lv = l.scalar()?;
                check_finite(lv, epoch, &format!("step {step}"))?;
                total += lv as f64 * rows.len() as f64;
                Some(lv)
            };
            if !progress.on_step(epoch, step, steps, lv) {
                return Ok((mapper, store, history));
            }
        }
        if let Some(t) = &total_dev {
            total = t.scalar()? as f64;
            // Before the checkpoint: a diverged epoch never overwrites the last good one.
            check_finite(total as f32, epoch, "some step")?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let (val_loss, r) = validate(&mapper, data, cfg, epoch)?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: total / order.len().max(1) as f64,
            val_loss,
            retrieval: r,
            seconds,
            samples_per_second: order.len() as f64 / seconds.max(1e-9),
            graph_steps,
        };
        save_checkpoint(cfg, &store, &adam, dir, epoch + 1)?;
        append_json_line(&dir.metrics(), &m.to_json())?;
        progress.on_epoch(&m);
        history.push(m);
    }
    let mut meta = mapper_metadata(&cfg.mapper);
    meta.insert("train.data".into(), cfg.data_id.clone());
    store.save(&dir.weights(), &[], &meta)?;
    Ok((mapper, store, history))
}

/// `total += loss · rows`, in place: the running loss of an epoch, on the device.
pub(super) fn add_weighted_loss(total: &Tensor, loss: &Tensor, rows: usize) -> Result<()> {
    let mut off = Tape::inference();
    let weighted = ew::scale(&mut off, loss, rows as f32)?;
    total.copy_from(&total.accumulate(&weighted)?)
}

fn check_finite(loss: f32, epoch: usize, when: &str) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "the training loss became {loss} at epoch {} {when}; lower --lr",
        epoch + 1
    )))
}

fn check_data(cfg: &TrainConfig, data: &MapperData) -> Result<()> {
    let (f, t) = (data.fmri.shape(), data.targets.shape());
    if f.len() != 2 || f[1] != cfg.mapper.voxels {
        return Err(Error::shape(
            "train-mapper",
            format!(
                "fMRI rows are {f:?} but the mapper expects {} voxels",
                cfg.mapper.voxels
            ),
        ));
    }
    if t.len() != 2 || t[0] != f[0] || t[1] != cfg.mapper.out_dim {
        return Err(Error::shape(
            "train-mapper",
            format!(
                "targets are {t:?}; expected [{}, {}] (one {}-d target per fMRI row)",
                f[0], cfg.mapper.out_dim, cfg.mapper.out_dim
            ),
        ));
    }
    if let Some(v) = &data.views {
        if v.row_stimulus.len() != f[0]
            || v.targets.shape() != [v.count * v.stimuli, t[1]]
            || v.row_stimulus.iter().any(|&s| s as usize >= v.stimuli)
        {
            return Err(Error::shape(
                "train-mapper",
                format!(
                    "augmented views {:?} do not fit {} rows of {}-d targets",
                    v.targets.shape(),
                    f[0],
                    t[1]
                ),
            ));
        }
    }
    if let Some(bad) = data.train_rows.iter().find(|&&r| r as usize >= f[0]) {
        return Err(Error::Invalid(format!(
            "train-mapper: training row {bad} is past the {} fMRI rows",
            f[0]
        )));
    }
    if data.train_rows.is_empty() || data.val_rows.len() < 2 {
        return Err(Error::Invalid(format!(
            "train-mapper needs training rows and at least 2 validation stimuli (have {} and {})",
            data.train_rows.len(),
            data.val_rows.len()
        )));
    }
    if let Some(bad) = data
        .train_rows
        .iter()
        .chain(&data.val_rows)
        .find(|&&r| r as usize >= f[0])
    {
        return Err(Error::Invalid(format!(
            "row {bad} is out of range for {} fMRI rows",
            f[0]
        )));
    }
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(Error::Invalid(
            "--batch and --epochs must be positive".into(),
        ));
    }
    Ok(())
}

fn save_checkpoint(
    cfg: &TrainConfig,
    store: &ParamStore,
    adam: &Adam,
    dir: &RunDir,
    epochs_done: usize,
) -> Result<()> {
    let (state, mut meta) = adam.state();
    meta.extend(mapper_metadata(&cfg.mapper));
    meta.insert("train.config".into(), cfg.fingerprint());
    meta.insert("train.epochs_done".into(), epochs_done.to_string());
    store.save(&dir.checkpoint(), &state, &meta)
}

#[cfg(test)]
pub(in crate::train) mod tests {
    use super::*;
    use crate::tensor::randn_vec;
    use crate::train::metrics::read_loss_history;

    /// A tiny learnable problem: targets are a fixed linear map of the signal in the voxels.
    pub(in crate::train) fn toy(n: usize, voxels: usize, dim: usize) -> MapperData {
        let z = randn_vec(n * 4, 1.0, 1);
        let enc = randn_vec(4 * voxels, 1.0, 2);
        let emb = randn_vec(4 * dim, 1.0, 3);
        let fmri: Vec<f32> = (0..n * voxels)
            .map(|k| {
                (0..4)
                    .map(|j| z[(k / voxels) * 4 + j] * enc[j * voxels + k % voxels])
                    .sum()
            })
            .collect();
        let targets: Vec<f32> = (0..n * dim)
            .map(|k| {
                (0..4)
                    .map(|j| z[(k / dim) * 4 + j] * emb[j * dim + k % dim])
                    .sum()
            })
            .collect();
        MapperData {
            fmri: Tensor::from_vec(fmri, &[n, voxels], &Device::Cpu).unwrap(),
            targets: Tensor::from_vec(targets, &[n, dim], &Device::Cpu).unwrap(),
            train_rows: (0..n as u32 - 10).collect(),
            val_rows: (n as u32 - 10..n as u32).collect(),
            views: None,
        }
    }

    pub(in crate::train) fn config(epochs: usize) -> TrainConfig {
        let mapper = MapperConfig {
            voxels: 24,
            hidden: 4,
            fc_hidden: 5,
            out_dim: 6,
            res_blocks: 1,
        };
        TrainConfig {
            epochs,
            batch: 8,
            lr: 1e-2,
            decay_every: 2,
            loss: LossKind::MseCosContrastive,
            ..TrainConfig::mind_reader(mapper, "toy".into())
        }
    }

    pub(in crate::train) fn temp_dir(tag: &str) -> RunDir {
        let d = std::env::temp_dir().join(format!("mindreader-train-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        RunDir(d)
    }

    pub(in crate::train) fn weights(store: &ParamStore) -> Vec<f32> {
        store
            .iter()
            .flat_map(|p| p.value.to_vec_f32().unwrap())
            .collect()
    }

    struct KillAt(usize, usize);
    impl Progress for KillAt {
        fn on_step(&mut self, epoch: usize, step: usize, _: usize, _: Option<f32>) -> bool {
            !(epoch == self.0 && step == self.1)
        }
    }

    #[test]
    fn killed_mid_epoch_and_resumed_equals_uninterrupted() {
        let data = toy(50, 24, 6);
        let cfg = config(3);
        let a = temp_dir("straight");
        let (_, straight, hist) = train(&cfg, &data, &a, false, &Device::Cpu, &mut ()).unwrap();
        assert_eq!(hist.len(), 3);
        assert!(hist[2].train_loss < hist[0].train_loss, "{hist:?}");
        let b = temp_dir("killed");
        let (_, _, partial) =
            train(&cfg, &data, &b, false, &Device::Cpu, &mut KillAt(1, 2)).unwrap();
        assert_eq!(partial.len(), 1, "killed inside the second epoch");
        let (_, resumed, rest) = train(&cfg, &data, &b, true, &Device::Cpu, &mut ()).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(
            weights(&straight),
            weights(&resumed),
            "resumed weights differ from the uninterrupted run"
        );
        assert_eq!(read_loss_history(&b.metrics()).unwrap().len(), 3);
        for d in [a, b] {
            std::fs::remove_dir_all(d.0).ok();
        }
    }

    /// With K views, each training row learns one of its stimulus' views, drawn per epoch and
    /// row from the seed: over epochs a row sees several views, never another stimulus' view,
    /// and a killed, resumed run still equals an uninterrupted one.
    #[test]
    fn augmented_views_are_drawn_per_row_and_epoch_and_resume_bit_for_bit() {
        let (n, dim, k) = (50, 6, 4);
        let base = toy(n, 24, dim);
        let clean = base.targets.to_vec_f32().unwrap();
        // View j of row s: the clean target plus j·0.01, so a row's view is recognisable.
        let views: Vec<f32> = (0..k)
            .flat_map(|j| clean.iter().map(move |v| v + 0.01 * j as f32))
            .collect();
        let with = |d: MapperData| {
            d.with_views(views.clone(), k, &[], TrialMode::Average)
                .unwrap()
        };
        let data = with(toy(n, 24, dim));
        let v = data.views.as_ref().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for epoch in 0..6 {
            for (&r, &row) in data
                .train_rows
                .iter()
                .zip(&v.rows_for(&data.train_rows, 42, epoch))
            {
                assert_eq!(
                    row as usize % n,
                    r as usize,
                    "row {r} learns another stimulus' view"
                );
                seen.insert(row as usize / n);
            }
        }
        assert_eq!(seen.len(), k, "every view is drawn");
        assert_eq!(
            v.rows_for(&data.train_rows, 42, 3),
            v.rows_for(&data.train_rows, 42, 3)
        );
        assert_ne!(
            v.rows_for(&data.train_rows, 42, 3),
            v.rows_for(&data.train_rows, 42, 4)
        );

        let cfg = config(3);
        let a = temp_dir("views-straight");
        let (_, straight, _) = train(&cfg, &data, &a, false, &Device::Cpu, &mut ()).unwrap();
        let (_, plain, _) = train(
            &cfg,
            &toy(n, 24, dim),
            &temp_dir("views-none"),
            false,
            &Device::Cpu,
            &mut (),
        )
        .unwrap();
        assert_ne!(
            weights(&straight),
            weights(&plain),
            "the views changed nothing"
        );
        let b = temp_dir("views-killed");
        train(&cfg, &data, &b, false, &Device::Cpu, &mut KillAt(1, 3)).unwrap();
        let (_, resumed, _) = train(&cfg, &data, &b, true, &Device::Cpu, &mut ()).unwrap();
        assert_eq!(
            weights(&straight),
            weights(&resumed),
            "resumed weights differ from the uninterrupted run"
        );
        let err = toy(n, 24, dim)
            .with_views(views[1..].to_vec(), k, &[], TrialMode::Average)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[4 views, 50 stimuli, 6 dims]"), "{err}");
        for d in [a, b, temp_dir("views-none")] {
            std::fs::remove_dir_all(d.0).ok();
        }
    }

    #[test]
    fn resume_refuses_a_different_configuration_or_mismatched_targets() {
        let data = toy(30, 24, 6);
        let dir = temp_dir("mismatch");
        train(&config(1), &data, &dir, false, &Device::Cpu, &mut ()).unwrap();
        let other = TrainConfig {
            data_id: "another dataset".into(),
            ..config(2)
        };
        let err = train(&other, &data, &dir, true, &Device::Cpu, &mut ())
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            err.contains("refusing to resume") && err.contains("checkpoint.safetensors"),
            "{err}"
        );
        let wrong_dim = TrainConfig {
            mapper: MapperConfig {
                out_dim: 7,
                ..config(1).mapper
            },
            ..config(1)
        };
        let err = train(&wrong_dim, &data, &dir, false, &Device::Cpu, &mut ())
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains("targets are [30, 6]"), "{err}");
        std::fs::remove_dir_all(dir.0).ok();
    }
}
