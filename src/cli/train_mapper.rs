//! `mindreader train-mapper`: fit a Mind Reader mapper from a dataset's fMRI to one of its targets.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mindreader::data::{DatasetFile, Staged};
use mindreader::models::MapperConfig;
use mindreader::ops::loss::LossConfig;
use mindreader::train::import;
use mindreader::train::mapper::{
    train, EpochMetrics, LossKind, MapperData, Progress, RunDir, TrainConfig, TrialMode,
};
use mindreader::Device;

#[derive(Args)]
pub struct TrainMapperArgs {
    /// The prepared dataset (HDF5, from `synth` or `prepare-nsd`).
    #[arg(long)]
    pub data: PathBuf,
    /// A target matrix of the dataset: scene, clip_image, clip_caption, …
    #[arg(long, default_value = "scene")]
    pub target: String,
    /// The run directory: checkpoint.safetensors, mapper.safetensors, metrics.jsonl, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from DIR/checkpoint.safetensors (refuses if the configuration differs).
    #[arg(long)]
    pub resume: bool,
    /// Start from trained weights instead of a fresh initialisation (the optimiser starts
    /// fresh): a mapper checkpoint (`convert`'s or `train-mapper`'s), a PyTorch `.pth` of
    /// fmri_clip_res, or a snapshot `.pkl`'s `fmri_vec`. The mapper's shape comes from the file
    /// (--hidden, --fc-hidden and --res-blocks are then ignored).
    #[arg(long, value_name = "WEIGHTS")]
    pub resume_from: Option<PathBuf>,
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f32,
    /// Multiply the learning rate by --decay-gamma every this many epochs.
    #[arg(long, default_value_t = 10)]
    pub decay_every: usize,
    #[arg(long, default_value_t = 0.8)]
    pub decay_gamma: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// mse, cos, mse_cos, contrastive or mse_cos_contrastive. The default is the paper's
    /// combined loss, ½·mse_cos + ½·contrastive (mse_cos = (1 − w)·MSE + w·(1 − cos); the
    /// contrastive term in both directions at --temperature): on
    /// the synthetic world mse_cos alone stays at chance retrieval for the first epochs (the
    /// targets are unit vectors, so MSE and cos barely move a mapper that predicts their mean),
    /// while the contrastive term separates the stimuli from the first epoch.
    #[arg(long, default_value = "mse_cos_contrastive")]
    pub loss: String,
    /// Weight of (1 − cos) in mse_cos.
    #[arg(long, default_value_t = 0.6)]
    pub cos_weight: f32,
    /// Contrastive temperature.
    #[arg(long, default_value_t = 0.5)]
    pub temperature: f32,
    /// Train on the target's augmented views (`augmented/<target>`, written by
    /// `screen-captions --augment-views K`): each row learns a view drawn per epoch; validation
    /// stays on the un-augmented target.
    #[arg(long)]
    pub augmented: bool,
    /// Training rows: one per trial (single) or one per stimulus (average).
    #[arg(long, default_value = "single")]
    pub trials: String,
    /// Width of the mapper's convolutions (Mind Reader: 64).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Width of the length-mixing fc layer (Mind Reader: 128).
    #[arg(long, default_value_t = 128)]
    pub fc_hidden: usize,
    /// Residual blocks (Mind Reader: 4).
    #[arg(long, default_value_t = 4)]
    pub res_blocks: usize,
    /// auto (GPU when usable), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// On a GPU, run every step op by op instead of replaying one CUDA graph of the whole step
    /// (gather, forward, loss, backward, Adam) for each full batch. Same numbers either way; the
    /// graph saves a kernel launch per op. metrics.jsonl's `graph_steps` counts the replays
    #[arg(long)]
    pub no_cuda_graphs: bool,
}

/// A progress bar over all steps of the run, with loss and throughput.
pub struct Bar {
    bar: ProgressBar,
    epochs: usize,
    batch: usize,
}

impl Bar {
    pub fn new(epochs: usize, batch: usize) -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} steps {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bar { bar, epochs, batch }
    }
}

impl Bar {
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn on_step(&mut self, epoch: usize, step: usize, steps: usize, loss: Option<f32>) -> bool {
        if step == 0 {
            self.bar.set_length(steps as u64);
            self.bar.set_position(0);
            self.bar
                .set_prefix(format!("{}/{}", epoch + 1, self.epochs));
            self.bar.reset_elapsed();
        }
        self.bar.inc(1);
        let rate =
            (step + 1) as f64 * self.batch as f64 / self.bar.elapsed().as_secs_f64().max(1e-9);
        // On a GPU the loss is read once per epoch (printed with the epoch's line).
        let loss = loss.map_or(String::new(), |l| format!("loss {l:.4}  "));
        self.bar.set_message(format!("{loss}{rate:.0} samples/s"));
        true
    }

    fn on_epoch(&mut self, m: &EpochMetrics) {
        let line = format!(
            "epoch {:>3}: train {:.4}  val {:.4}  {}-way top-1 image←brain {:.1}% brain←image {:.1}% (chance {:.2}%)  {:.0} samples/s",
            m.epoch,
            m.train_loss,
            m.val_loss,
            m.retrieval.way,
            100.0 * m.retrieval.image_from_brain,
            100.0 * m.retrieval.brain_from_image,
            100.0 * m.retrieval.chance,
            m.samples_per_second
        );
        super::print_above(&self.bar, line);
    }
}

pub fn run(args: TrainMapperArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let file = DatasetFile::open(&args.data)?;
    let staged = Staged::load(&file, &args.target, &device)?;
    let mode = match args.trials.as_str() {
        "single" => TrialMode::Single,
        "average" => TrialMode::Average,
        other => anyhow::bail!("--trials must be single or average, got `{other}`"),
    };
    let mut data = MapperData::from_staged(&staged, file.trial_stimulus(), file.split(), mode)?;
    let mut data_id = format!(
        "{}:{}",
        args.data
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.target
    );
    if args.augmented {
        let (views, count, _) = file.augmented(&args.target)?;
        data = data.with_views(views, count, file.trial_stimulus(), mode)?;
        data_id.push_str(&format!(" augmented ×{count}"));
    }
    let mapper = match &args.resume_from {
        Some(path) => {
            let m = import::load_mapper(path, None, Some(staged.voxels()), &Device::Cpu)?;
            anyhow::ensure!(
                m.mapper.config.out_dim == staged.target_dim(),
                "{} maps to {}-d, but target `{}` is {}-d",
                path.display(),
                m.mapper.config.out_dim,
                args.target,
                staged.target_dim()
            );
            m.mapper.config
        }
        None => MapperConfig {
            hidden: args.hidden,
            fc_hidden: args.fc_hidden,
            res_blocks: args.res_blocks,
            ..MapperConfig::mind_reader(staged.voxels(), staged.target_dim())
        },
    };
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        decay_every: args.decay_every,
        decay_gamma: args.decay_gamma,
        seed: args.seed,
        loss: LossKind::parse(&args.loss)?,
        loss_cfg: LossConfig {
            cos_weight: args.cos_weight,
            temperature: args.temperature,
            ..LossConfig::default()
        },
        init_from: args.resume_from.clone(),
        cuda_graphs: !args.no_cuda_graphs,
        ..TrainConfig::mind_reader(mapper, data_id)
    };
    println!(
        "train-mapper on {device}: {} → target `{}`{} ({}-d); {} training rows ({:?}), {} validation stimuli; {} epochs of batch {}",
        args.data.display(),
        args.target,
        data.views.as_ref().map(|v| format!(" (augmented: {} views)", v.count)).unwrap_or_default(),
        staged.target_dim(),
        data.train_rows.len(),
        mode,
        data.val_rows.len(),
        cfg.epochs,
        cfg.batch
    );
    let dir = RunDir(args.out.clone());
    let mut bar = Bar::new(cfg.epochs, cfg.batch);
    let (_, _, history) = train(&cfg, &data, &dir, args.resume, &device, &mut bar)?;
    bar.finish();
    super::plot_losses(&dir).context("drawing the loss curve")?;
    if let Some(last) = history.last() {
        println!("final: {}", last.to_json());
    }
    println!(
        "wrote {} (weights), {} and {}",
        dir.weights().display(),
        dir.metrics().display(),
        dir.loss_curve().display()
    );
    Ok(())
}
