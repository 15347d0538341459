//! `mindreader train-clip`: a small CLIP trained from scratch on a dataset's stimuli and
//! captions, saved as a Hugging Face CLIP directory for `embed` and `screen-captions`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mindreader::data::DatasetFile;
use mindreader::train::clip::{
    train_clip, ClipData, ClipEpoch, ClipProgress, ClipRunDir, ClipTrainConfig,
};

#[derive(Args)]
pub struct TrainClipArgs {
    /// The prepared dataset (its training stimuli and their captions; the test split validates).
    #[arg(long)]
    pub data: PathBuf,
    /// The output directory: config.json + model.safetensors (a CLIP directory), checkpoint.safetensors, metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors (refuses if the configuration differs).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = ClipTrainConfig::default().epochs)]
    pub epochs: usize,
    /// Pairs per contrastive batch.
    #[arg(long, default_value_t = ClipTrainConfig::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = ClipTrainConfig::default().lr)]
    pub lr: f32,
    #[arg(long, default_value_t = ClipTrainConfig::default().weight_decay)]
    pub weight_decay: f32,
    /// Width of both towers and of the joint embedding space.
    #[arg(long, default_value_t = ClipTrainConfig::default().width)]
    pub width: usize,
    /// Transformer layers per tower.
    #[arg(long, default_value_t = ClipTrainConfig::default().layers)]
    pub layers: usize,
    #[arg(long, default_value_t = ClipTrainConfig::default().heads)]
    pub heads: usize,
    /// Patch side in pixels (the images' side must be a multiple).
    #[arg(long, default_value_t = ClipTrainConfig::default().patch)]
    pub patch: usize,
    /// Text context in tokens (captions are truncated, keeping the end token).
    #[arg(long, default_value_t = ClipTrainConfig::default().context)]
    pub context: usize,
    #[arg(long, default_value_t = ClipTrainConfig::default().seed)]
    pub seed: u64,
    /// Weight of the layout term: a linear head reads a thumbnail (block means of the pixels)
    /// off each image embedding, and this times its MSE joins the contrastive loss. Trained
    /// for a minute on a small world, contrastive CLIP keeps colours and backgrounds and little
    /// of where things are; the term keeps layout in the space, as a CLIP pretrained on 400M
    /// pairs does (on the demo's world: the main object's quadrant read off the space at
    /// 38–44.5% instead of 29–32% over three seeds, chance 25%). 0 trains CLIP's loss alone.
    /// The head is not saved with CLIP.
    #[arg(long, default_value_t = ClipTrainConfig::default().layout_weight)]
    pub layout_weight: f32,
    /// Thumbnail side of the layout term (blocks per side; must divide the images' side).
    #[arg(long, default_value_t = ClipTrainConfig::default().layout_grid)]
    pub layout_grid: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

struct Bar {
    bar: ProgressBar,
    epochs: usize,
}

impl ClipProgress for Bar {
    fn on_step(&mut self, epoch: usize, step: usize, steps: usize, loss: Option<f32>) -> bool {
        if step == 0 {
            self.bar.set_length(steps as u64);
            self.bar.set_position(0);
            self.bar
                .set_prefix(format!("{}/{}", epoch + 1, self.epochs));
        }
        self.bar.inc(1);
        // On a GPU the loss is read once per epoch (printed with the epoch's line).
        if let Some(loss) = loss {
            self.bar.set_message(format!("loss {loss:.4}"));
        }
        true
    }

    fn on_epoch(&mut self, e: &ClipEpoch) {
        let layout = match e.layout_loss {
            Some((train, val)) => format!("  layout {train:.4} / {val:.4}"),
            None => String::new(),
        };
        let line = format!(
            "epoch {:>3}: train {:.4}  val {:.4}{layout}  {}-way top-1 caption←image {:.1}% image←caption {:.1}% (chance {:.2}%)  {:.1} s",
            e.epoch,
            e.train_loss,
            e.val_loss,
            e.retrieval.way,
            100.0 * e.retrieval.brain_from_image,
            100.0 * e.retrieval.image_from_brain,
            100.0 * e.retrieval.chance,
            e.seconds
        );
        super::print_above(&self.bar, line);
    }
}

pub fn run(args: TrainClipArgs) -> Result<()> {
    let cfg = ClipTrainConfig {
        width: args.width,
        layers: args.layers,
        heads: args.heads,
        patch: args.patch,
        context: args.context,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        layout_weight: args.layout_weight,
        layout_grid: args.layout_grid,
    };
    train(&cfg, &args.data, &args.out, args.resume, &args.device)
}

/// Trains `cfg` on the dataset at `data` into `out` with a progress bar and per-epoch lines
/// (also the first stage of `demo --clip`).
pub fn train(
    cfg: &ClipTrainConfig,
    data_path: &Path,
    out: &Path,
    resume: bool,
    device: &str,
) -> Result<()> {
    let device = super::parse_device(device)?;
    let file = DatasetFile::open(data_path)?;
    let data = ClipData::from_file(&file)?;
    drop(file);
    anyhow::ensure!(
        cfg.heads > 0 && cfg.width % cfg.heads == 0,
        "--width {} must be a multiple of --heads {}",
        cfg.width,
        cfg.heads
    );
    anyhow::ensure!(
        cfg.patch > 0 && cfg.context >= 2,
        "--patch must be positive and --context at least 2"
    );
    let layout = match cfg.layout_weight {
        w if w > 0.0 => format!(
            "; layout term {w} × MSE of a {g}×{g} thumbnail",
            g = cfg.layout_grid
        ),
        _ => String::new(),
    };
    println!(
        "train-clip on {device}: {} training pairs, {} test stimuli from {}; width {}, {} layers, {} heads, patch {}, context {}; {} epochs of batch {}{layout}",
        data.train.len(),
        data.test.len(),
        data_path.display(),
        cfg.width,
        cfg.layers,
        cfg.heads,
        cfg.patch,
        cfg.context,
        cfg.epochs,
        cfg.batch
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let dir = ClipRunDir(out.to_path_buf());
    let mut progress = Bar {
        bar,
        epochs: cfg.epochs,
    };
    let (_, history) = train_clip(cfg, &data, &dir, resume, &device, &mut progress)?;
    progress.bar.finish_and_clear();
    if let Some(last) = history.last() {
        println!("final: {}", last.to_json());
    }
    println!(
        "wrote {} and {} (a CLIP directory for embed / screen-captions), {}",
        dir.config().display(),
        dir.weights().display(),
        dir.metrics().display()
    );
    Ok(())
}
