//! The GAN loop (training_loop.py 395–480): per batch the phases Gmain, Greg (every
//! `g_reg_interval`), Dmain, Dreg (every `d_reg_interval`), each drawing a fresh condition
//! perturbation; gradients through `nan_to_num`, then Adam; then G_ema.
//!
//! Bit-for-bit resume: every random draw of step s comes from `Rng::stream(seed, GAN, 8·s +
//! phase)`, so the RNG state is the step counter; the checkpoint holds G, D, G_ema (parameters
//! and buffers), both Adam states, the step, the images seen and the path-length mean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::models::clip::Clip;
use crate::models::lafite::{Discriminator, Generator, Network};
use crate::nn::{load_safetensors, save_safetensors, NoiseMode, ParamStore};
use crate::ops::elementwise as ew;
use crate::rng::Rng;
use crate::tensor::{Device, Tensor};
use crate::train::metrics::append_json_line;
use crate::train::{Adam, AdamConfig};

use super::ema::{ema_beta, update_ema};
use super::loss::{GanLossConfig, Terms};
use super::phase::{
    run_phase, Phase, PhaseGraphs, PhaseInputs, StepSource, Update, GAN_STREAM, PL_MEAN,
};

/// Everything that decides a run's numbers (a resume refuses a different one).
#[derive(Clone, Debug, PartialEq)]
pub struct GanConfig {
    pub g_kwargs: serde_json::Value,
    pub d_kwargs: serde_json::Value,
    pub batch: usize,
    /// Training length in thousands of real images shown to D.
    pub kimg: f64,
    pub seed: u64,
    pub loss: GanLossConfig,
    /// Adam's base rate (0.0025) and betas (0, 0.99), before the lazy-regularisation rescaling.
    pub lr: f32,
    pub betas: (f32, f32),
    pub g_reg_interval: usize,
    pub d_reg_interval: usize,
    /// G_ema's half-life in kimg (batch·10/32) and its ramp-up (0.05; None when finetuning).
    pub ema_kimg: f64,
    pub ema_rampup: Option<f64>,
    /// Checkpoint, G_ema and a preview grid every this many kimg.
    pub snapshot_kimg: f64,
    /// Where the data came from (dataset, mappers, CLIP), for mismatch checks.
    pub data_id: String,
    /// On a GPU, replay each phase as a CUDA graph after the first step (the same numbers as
    /// op-by-op steps, bit for bit; not part of the fingerprint).
    pub cuda_graphs: bool,
}

impl GanConfig {
    /// The reference's schedule for these networks at this batch (train.py 283–331).
    pub fn reference(
        g_kwargs: serde_json::Value,
        d_kwargs: serde_json::Value,
        resolution: usize,
        batch: usize,
        data_id: String,
    ) -> GanConfig {
        GanConfig {
            g_kwargs,
            d_kwargs,
            batch,
            kimg: 25000.0,
            seed: 0,
            loss: GanLossConfig::reference(resolution, batch),
            lr: 0.0025,
            betas: (0.0, 0.99),
            g_reg_interval: 4,
            d_reg_interval: 16,
            ema_kimg: batch as f64 * 10.0 / 32.0,
            ema_rampup: Some(0.05),
            snapshot_kimg: 50.0,
            data_id,
            cuda_graphs: true,
        }
    }

    fn fingerprint(&self) -> String {
        let all = format!(
            "{:?}",
            GanConfig {
                kimg: 0.0,
                snapshot_kimg: 0.0,
                cuda_graphs: true,
                ..self.clone()
            }
        );
        // Graphs or not, the numbers are the same: written as checkpoints before the field did.
        all.replace(", cuda_graphs: true", "")
    }

    /// Adam for a module regularised every `interval` steps (training_loop.py 288–291): rate
    /// and betas raised to `interval/(interval + 1)`.
    fn adam(&self, interval: usize) -> AdamConfig {
        let r = interval as f32 / (interval as f32 + 1.0);
        AdamConfig {
            eps: 1e-8,
            ..AdamConfig::adam(self.lr * r, 0.0).betas(self.betas.0.powf(r), self.betas.1.powf(r))
        }
    }

    pub fn total_steps(&self) -> u64 {
        (self.kimg * 1000.0 / self.batch as f64).ceil() as u64
    }
}

/// The training data, on the host: real images and the mapped conditions of each stimulus.
pub struct GanData {
    /// `[M, 3, R, R]` in [−1, 1].
    pub real: Vec<f32>,
    /// `[M, F1]`: the image mapper's outputs (raw, as the reference feeds them).
    pub c1: Vec<f32>,
    pub f1: usize,
    /// `[M, F2]`: the caption mapper's outputs (structure 4).
    pub c2: Option<(Vec<f32>, usize)>,
    /// The rows that are trained on.
    pub rows: Vec<u32>,
    /// Rows shown in the snapshot grids (held-out stimuli), with their conditions normalised.
    pub preview: Vec<u32>,
}

impl GanData {
    fn images(&self, rows: &[u32], r: usize, device: &Device) -> Result<Tensor> {
        let px = 3 * r * r;
        let v: Vec<f32> = rows
            .iter()
            .flat_map(|&i| self.real[i as usize * px..][..px].iter().copied())
            .collect();
        Tensor::from_vec(v, &[rows.len(), 3, r, r], device)
    }

    fn gather(c: &[f32], f: usize, rows: &[u32]) -> Vec<f32> {
        rows.iter()
            .flat_map(|&i| c[i as usize * f..][..f].iter().copied())
            .collect()
    }

    /// The conditions of `rows`, each L2-normalised (what G reads at evaluation), as `fts`.
    pub fn eval_fts(&self, rows: &[u32], device: &Device) -> Result<Tensor> {
        let unit = |mut v: Vec<f32>, f: usize| {
            for r in v.chunks_mut(f) {
                let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                r.iter_mut().for_each(|x| *x /= n);
            }
            v
        };
        let a = unit(Self::gather(&self.c1, self.f1, rows), self.f1);
        let (v, width) = match &self.c2 {
            None => (a, self.f1),
            Some((c2, f2)) => {
                let b = unit(Self::gather(c2, *f2, rows), *f2);
                let v = a
                    .chunks(self.f1)
                    .zip(b.chunks(*f2))
                    .flat_map(|(x, y)| x.iter().chain(y).copied())
                    .collect();
                (v, self.f1 + f2)
            }
        };
        Tensor::from_vec(v, &[rows.len(), width], device)
    }
}

/// A run directory: `checkpoint.safetensors`, `G_ema.safetensors`, `metrics.jsonl`,
/// `grid-{kimg}.png`.
pub struct GanRunDir(pub PathBuf);

impl GanRunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }
    pub fn g_ema(&self) -> PathBuf {
        self.0.join("G_ema.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn grid(&self, kimg: f64) -> PathBuf {
        self.0.join(format!("grid-{:06.1}.png", kimg))
    }
}

/// One step's numbers (every loss term of every phase that ran).
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub kimg: f64,
    pub terms: Vec<(String, f64)>,
    /// How many of the step's phases (G_ema's update counted as one) replayed a CUDA graph (0 on
    /// the CPU and in the first step).
    pub graph_phases: u32,
    pub seconds: f64,
}

impl StepReport {
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("step".into(), self.step.into());
        m.insert("kimg".into(), self.kimg.into());
        for (k, v) in &self.terms {
            m.insert(k.clone(), (*v).into());
        }
        m.insert("graph_phases".into(), self.graph_phases.into());
        m.insert("seconds".into(), self.seconds.into());
        serde_json::Value::Object(m)
    }
}

/// Called after every step and every snapshot; `on_step` returning false stops the run there
/// (as a kill would: nothing after the last checkpoint is kept).
pub trait GanProgress {
    fn on_step(&mut self, _r: &StepReport, _total_steps: u64) -> bool {
        true
    }
    fn on_snapshot(&mut self, _kimg: f64, _grid: &Path) {}
}

impl GanProgress for () {}

/// The three networks, their optimisers and the loop's counters.
pub struct GanState {
    pub g: Network<Generator>,
    pub d: Network<Discriminator>,
    pub g_ema: Network<Generator>,
    pub(super) adam_g: Adam,
    pub(super) adam_d: Adam,
    pub step: u64,
    pub cur_nimg: u64,
    pub pl_mean: f32,
    /// The running path-length mean where Greg reads and updates it (`pl_mean` is its copy
    /// read back with the step's terms, for the checkpoint).
    pub(super) pl_mean_dev: Tensor,
    /// This step's G_ema β, written before the update reads it.
    ema_beta: Tensor,
}

fn prefixed(prefix: &str, store: &ParamStore) -> Vec<(String, Tensor)> {
    store
        .iter()
        .map(|p| (format!("{prefix}.{}", p.name), p.value.clone()))
        .collect()
}

impl GanState {
    fn fresh(cfg: &GanConfig, device: &Device, init: Option<&Network<Generator>>) -> Result<Self> {
        let gc = crate::models::lafite::GeneratorConfig::from_init_kwargs(&cfg.g_kwargs)?;
        let dc = crate::models::lafite::DiscriminatorConfig::from_init_kwargs(&cfg.d_kwargs)?;
        let g = Network::<Generator>::new(gc.clone(), Some(cfg.seed ^ 0x47), device)?;
        if let Some(src) = init {
            copy_store(&g.params, &src.params)?;
            copy_store(&g.buffers, &src.buffers)?;
        }
        let g_ema = Network::<Generator>::new(gc, Some(cfg.seed ^ 0x47), device)?;
        copy_store(&g_ema.params, &g.params)?;
        copy_store(&g_ema.buffers, &g.buffers)?;
        let d = Network::<Discriminator>::new(dc, Some(cfg.seed ^ 0x44), device)?;
        Ok(GanState {
            g,
            d,
            g_ema,
            adam_g: Adam::new(cfg.adam(cfg.g_reg_interval)),
            adam_d: Adam::new(cfg.adam(cfg.d_reg_interval)),
            step: 0,
            cur_nimg: 0,
            pl_mean: 0.0,
            pl_mean_dev: Tensor::zeros(&[1], device)?,
            ema_beta: Tensor::zeros(&[1], device)?,
        })
    }

    /// G_ema ← G.lerp(G_ema, β) with the β staged in `ema_beta`.
    pub(super) fn update_ema(&mut self) -> Result<()> {
        update_ema(
            &mut self.g_ema.params,
            &mut self.g_ema.buffers,
            &self.g.params,
            &self.g.buffers,
            &self.ema_beta,
        )
    }

    fn save(&self, cfg: &GanConfig, path: &Path) -> Result<()> {
        let mut all = Vec::new();
        for (prefix, net) in [("G", &self.g), ("G_ema", &self.g_ema)] {
            all.extend(prefixed(prefix, &net.params));
            all.extend(prefixed(prefix, &net.buffers));
        }
        all.extend(prefixed("D", &self.d.params));
        all.extend(prefixed("D", &self.d.buffers));
        let mut meta = BTreeMap::new();
        for (prefix, adam) in [("adamG", &self.adam_g), ("adamD", &self.adam_d)] {
            let (t, m) = adam.state();
            all.extend(t.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
            meta.extend(m.into_iter().map(|(k, v)| (format!("{prefix}.{k}"), v)));
        }
        meta.insert("gan.config".into(), cfg.fingerprint());
        meta.insert("gan.step".into(), self.step.to_string());
        meta.insert("gan.cur_nimg".into(), self.cur_nimg.to_string());
        meta.insert(
            "gan.pl_mean_bits".into(),
            self.pl_mean.to_bits().to_string(),
        );
        meta.insert("G.init_kwargs".into(), cfg.g_kwargs.to_string());
        meta.insert("D.init_kwargs".into(), cfg.d_kwargs.to_string());
        meta.insert("format".into(), "mindreader-gan-checkpoint-v1".into());
        save_safetensors(path, &all, &meta)
    }

    fn load(cfg: &GanConfig, path: &Path, device: &Device) -> Result<Self> {
        let (tensors, meta) = load_safetensors(path)?;
        let saved = meta.get("gan.config").cloned().unwrap_or_default();
        if saved != cfg.fingerprint() {
            return Err(Error::file(
                path,
                format!("was written by a different run configuration; refusing to resume.\n  checkpoint: {saved}\n  this run:   {}", cfg.fingerprint()),
            ));
        }
        let mut s = GanState::fresh(cfg, device, None)?;
        let take = |prefix: &str| -> Vec<(String, Tensor)> {
            let p = format!("{prefix}.");
            tensors
                .iter()
                .filter_map(|(n, t)| n.strip_prefix(&p).map(|k| (k.to_string(), t.clone())))
                .collect()
        };
        for (prefix, net) in [("G", &mut s.g), ("G_ema", &mut s.g_ema)] {
            let rest = net.params.assign_from(take(prefix), "", path)?;
            let rest = net.buffers.assign_from(rest, "", path)?;
            if let Some((n, _)) = rest.first() {
                return Err(Error::file(path, format!("unexpected tensor {prefix}.{n}")));
            }
        }
        let rest = s.d.params.assign_from(take("D"), "", path)?;
        s.d.buffers.assign_from(rest, "", path)?;
        for (prefix, adam) in [("adamG", &mut s.adam_g), ("adamD", &mut s.adam_d)] {
            let sub: BTreeMap<String, String> = meta
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(&format!("{prefix}."))
                        .map(|k| (k.to_string(), v.clone()))
                })
                .collect();
            adam.load_state(&take(prefix), &sub, device)
                .map_err(|e| Error::file(path, e.to_string()))?;
        }
        let num = |k: &str| -> Result<u64> {
            meta.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::file(path, format!("metadata {k} is missing")))
        };
        s.step = num("gan.step")?;
        s.cur_nimg = num("gan.cur_nimg")?;
        s.pl_mean = f32::from_bits(num("gan.pl_mean_bits")? as u32);
        s.pl_mean_dev.write_host(&[s.pl_mean])?;
        Ok(s)
    }
}

/// Copies `src`'s values into `dst` by name (shapes must agree).
fn copy_store(dst: &ParamStore, src: &ParamStore) -> Result<()> {
    let mut off = Tape::inference();
    for p in dst.iter() {
        let v = src.get(&p.name)?;
        if v.shape() != p.value.shape() {
            return Err(Error::Invalid(format!(
                "`{}` is {:?} in the source, {:?} here",
                p.name,
                v.shape(),
                p.value.shape()
            )));
        }
        p.value.set_storage_from(ew::scale(&mut off, v, 1.0)?)?;
    }
    Ok(())
}

/// G_ema's pictures of `rows` (z = 0, constant noise: deterministic).
pub fn render(g: &Generator, data: &GanData, rows: &[u32], device: &Device) -> Result<Tensor> {
    let fts = data.eval_fts(rows, device)?;
    let z = Tensor::zeros(&[rows.len(), g.config.z_dim], device)?;
    g.forward(&mut Tape::inference(), &z, &fts, 1.0, NoiseMode::Const)
}

/// Seen | reconstructed pairs of the preview rows, one pair per column pair.
fn write_grid(state: &GanState, data: &GanData, path: &Path, device: &Device) -> Result<()> {
    if data.preview.is_empty() {
        return Ok(());
    }
    let r = state.g.config().img_resolution;
    let fake = render(&state.g_ema.net, data, &data.preview, device)?;
    let real = data.images(&data.preview, r, device)?;
    let (fake, real) = (fake.to_vec_f32()?, real.to_vec_f32()?);
    let n = data.preview.len();
    let a = crate::eval::images::to_rgb8(&real, [n, 3, r, r])?;
    let b = crate::eval::images::to_rgb8(&fake, [n, 3, r, r])?;
    let pairs: Vec<Vec<u8>> = a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect();
    let cols = 2 * n.min(8);
    crate::eval::images::grid(&pairs, r, r, cols).save_png(path)
}

/// Trains (or, with `resume`, continues) a run in `dir`. `init` starts G from a pretrained
/// generator (finetuning). Returns the final state and this call's step reports.
#[allow(clippy::too_many_arguments)]
pub fn train_gan(
    cfg: &GanConfig,
    data: &GanData,
    clip: &Clip,
    dir: &GanRunDir,
    resume: bool,
    init: Option<&Network<Generator>>,
    device: &Device,
    progress: &mut dyn GanProgress,
) -> Result<(GanState, Vec<StepReport>)> {
    std::fs::create_dir_all(&dir.0)
        .map_err(|e| Error::file(&dir.0, format!("creating the run directory: {e}")))?;
    let mut st = if resume && dir.checkpoint().exists() {
        GanState::load(cfg, &dir.checkpoint(), device)?
    } else {
        GanState::fresh(cfg, device, init)?
    };
    check(cfg, data, clip, &st)?;
    // Metrics after the checkpoint belong to steps that will be run again.
    if dir.metrics().exists() {
        let keep: Vec<String> = if resume {
            std::fs::read_to_string(dir.metrics())
                .map_err(|e| Error::file(dir.metrics(), format!("reading: {e}")))?
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s < st.step)
                })
                .map(|l| format!("{l}\n"))
                .collect()
        } else {
            Vec::new()
        };
        crate::fsio::write_atomic(&dir.metrics(), keep.concat().as_bytes())?;
    }
    let gcfg = st.g.config().clone();
    let (r, n) = (gcfg.img_resolution, cfg.batch);
    let clip_size = clip.config.vision.image_size;
    let total = cfg.total_steps();
    let snapshot_every = ((cfg.snapshot_kimg * 1000.0 / n as f64).round() as u64).max(1);
    let lr_g = cfg.adam(cfg.g_reg_interval).lr;
    let lr_d = cfg.adam(cfg.d_reg_interval).lr;
    let mut reports = Vec::new();
    let noise_layers = st.g.net.noise_layers();
    let gains = (cfg.g_reg_interval as f32, cfg.d_reg_interval as f32);
    let first_step = st.step;
    let mut graphs = match device {
        Device::Cuda(gpu) if cfg.cuda_graphs => Some(PhaseGraphs::new(gpu)),
        _ => None,
    };
    while st.step < total {
        let started = Instant::now();
        let step = st.step;
        let mut pick = Rng::stream(cfg.seed, GAN_STREAM, 8 * step + 7);
        let rows: Vec<u32> = (0..n)
            .map(|_| data.rows[pick.below(data.rows.len())])
            .collect();
        let source = StepSource {
            seed: cfg.seed,
            step,
            loss: &cfg.loss,
            real: GanData::gather(&data.real, 3 * r * r, &rows),
            c1: GanData::gather(&data.c1, data.f1, &rows),
            f1: data.f1,
            c2: data
                .c2
                .as_ref()
                .map(|(c, f)| (GanData::gather(c, *f, &rows), *f)),
            resolution: r,
            z_dim: gcfg.z_dim,
            num_ws: gcfg.num_ws(),
            clip_size,
            noise_layers: &noise_layers,
        };
        // The phases due this step; the reference steps Adam after each of them.
        let mut phases = vec![Phase::GMain];
        if cfg.loss.pl_weight != 0.0 && step % cfg.g_reg_interval as u64 == 0 {
            phases.push(Phase::GReg);
        }
        phases.push(Phase::DMain);
        if cfg.loss.r1_gamma != 0.0 && step % cfg.d_reg_interval as u64 == 0 {
            phases.push(Phase::DReg);
        }
        // Each phase's terms, read with the others at the end of the step.
        let mut phase_terms = Vec::new();
        let mut graph_phases = 0;
        for phase in phases {
            let draws = source.draw(phase);
            let lr = if phase.net() == "G" { lr_g } else { lr_d };
            let terms = match graphs.as_mut().filter(|_| step > first_step) {
                Some(graphs) => {
                    graph_phases += 1;
                    graphs.run(&mut st, clip, &cfg.loss, gains, &draws, lr)?
                }
                None => {
                    let inputs = PhaseInputs::upload(&draws, device)?;
                    run_phase(&mut st, clip, &cfg.loss, gains, &inputs, Update::Now(lr))?
                }
            };
            phase_terms.push((phase.net(), terms));
        }

        // G_ema, its β staged where the update (or its graph) reads it.
        let beta = ema_beta(n, cfg.ema_kimg, cfg.ema_rampup, st.cur_nimg);
        st.ema_beta.write_host(&[beta as f32])?;
        match graphs.as_mut().filter(|_| step > first_step) {
            Some(graphs) => {
                graph_phases += 1;
                graphs.run_ema(&mut st)?
            }
            None => st.update_ema()?,
        }
        st.cur_nimg += n as u64;
        st.step += 1;
        // The loss terms, read back in one copy once the whole step is queued.
        let phases: Vec<(&str, &Terms)> = phase_terms.iter().map(|(p, t)| (*p, t)).collect();
        let mut terms = Terms::read_all(&phases)?;
        // The training state read with them, not a term to report.
        let pl_mean_name = format!("G.{PL_MEAN}");
        if let Some(i) = terms.iter().position(|(n, _)| *n == pl_mean_name) {
            st.pl_mean = terms.remove(i).1 as f32;
        }

        if let Some((name, v)) = terms.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "{name} became {v} at step {step}; lower the learning rate or check the data"
            )));
        }
        let report = StepReport {
            step,
            kimg: st.cur_nimg as f64 / 1000.0,
            terms,
            graph_phases,
            seconds: started.elapsed().as_secs_f64(),
        };
        append_json_line(&dir.metrics(), &report.to_json())?;
        let go_on = progress.on_step(&report, total);
        reports.push(report);
        if !go_on {
            // As a kill would: nothing after the last checkpoint is kept.
            break;
        }
        if st.step % snapshot_every == 0 || st.step == total {
            st.save(cfg, &dir.checkpoint())?;
            st.g_ema.save(&dir.g_ema())?;
            let kimg = st.cur_nimg as f64 / 1000.0;
            let grid = dir.grid(kimg);
            write_grid(&st, data, &grid, device)?;
            progress.on_snapshot(kimg, &grid);
        }
    }
    Ok((st, reports))
}

fn check(cfg: &GanConfig, data: &GanData, clip: &Clip, st: &GanState) -> Result<()> {
    let g = st.g.config();
    let d = st.d.config();
    let r = g.img_resolution;
    if d.img_resolution != r {
        return Err(Error::Invalid(format!(
            "G draws {r}² images but D reads {}²",
            d.img_resolution
        )));
    }
    let m = data.real.len() / (3 * r * r);
    if data.real.len() != m * 3 * r * r || m == 0 {
        return Err(Error::shape(
            "train-gan",
            format!("{} image values are not [M, 3, {r}, {r}]", data.real.len()),
        ));
    }
    if data.f1 != g.f_dim || data.c1.len() != m * data.f1 {
        return Err(Error::Invalid(format!(
            "the image mapper gives {}-d conditions for {} stimuli, but G reads f_dim {} for {m}",
            data.f1,
            data.c1.len() / data.f1.max(1),
            g.f_dim
        )));
    }
    match (&data.c2, g.structure) {
        (None, 2) => {}
        (Some((c2, f2)), 4) if *f2 == g.f_dim2 && c2.len() == m * f2 => {}
        (Some((_, f2)), 4) => {
            return Err(Error::Invalid(format!(
                "the caption mapper gives {f2}-d conditions, but G's second condition is {}-d",
                g.f_dim2
            )))
        }
        (c2, s) => {
            return Err(Error::Invalid(format!(
                "structure {s} needs {} mapper(s), got {}",
                if s == 4 { 2 } else { 1 },
                1 + c2.is_some() as usize
            )))
        }
    }
    let proj = clip.config.projection_dim;
    if cfg.loss.itc > 0.0 && proj != g.f_dim {
        return Err(Error::Invalid(format!(
            "CLIP's embeddings are {proj}-d but the conditions are {}-d: the itc term compares them (use the CLIP the mappers were trained for)",
            g.f_dim
        )));
    }
    if data.rows.is_empty() || data.rows.iter().any(|&i| i as usize >= m) {
        return Err(Error::Invalid("no (or out-of-range) training rows".into()));
    }
    if cfg.batch < 2 || cfg.batch % d.mbstd_group_size.max(1) != 0 && cfg.batch > d.mbstd_group_size
    {
        return Err(Error::Invalid(format!(
            "--batch {} must be at least 2 and a multiple of D's minibatch-stddev group ({})",
            cfg.batch, d.mbstd_group_size
        )));
    }
    Ok(())
}
