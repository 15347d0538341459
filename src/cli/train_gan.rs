//! `mindreader train-gan`: Mind Reader's second stage. The frozen mappers turn each stimulus'
//! fMRI (repeats averaged) into its condition(s); a Lafite generator and discriminator are
//! trained on them as the fork's `train.py` does (see `train::gan`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mindreader::data::loader::average_repeats;
use mindreader::data::{DatasetFile, Split};
use mindreader::eval::image_metrics::box_downsample;
use mindreader::models::clip::Clip;
use mindreader::models::lafite::Generator;
use mindreader::train::gan::trainer::GanProgress;
use mindreader::train::gan::{train_gan, GanConfig, GanData, GanRunDir, StepReport};
use mindreader::train::import;
use mindreader::train::mapper::predict_rows;
use mindreader::{Device, Tensor};
use serde_json::json;

#[derive(Args)]
pub struct TrainGanArgs {
    /// The dataset (fMRI, images and split).
    #[arg(long)]
    pub data: PathBuf,
    /// The trained mappers: IMG (the image mapper: structure 2) or IMG,CAP (image and caption
    /// mappers: structure 4, both conditions). Run directories, weights files, `.pth` or `.pkl`.
    #[arg(long, value_delimiter = ',', num_args = 1..=2)]
    pub mappers: Vec<PathBuf>,
    /// The CLIP the mappers map into (a Hugging Face directory): its image tower scores the
    /// generated images (the itc term) with gradients flowing through it into G.
    #[arg(long)]
    pub clip: PathBuf,
    /// The run directory (checkpoint, G_ema, metrics.jsonl, preview grids, run.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (bit for bit).
    #[arg(long)]
    pub resume: bool,
    /// Finetune from a pretrained generator (a mindreader G .safetensors, or a Lafite / Mind
    /// Reader snapshot .pkl: its G_ema) instead of training from scratch; its architecture wins
    /// over the size options below. EMA ramp-up is off, as the reference does on resume.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Image resolution (a power of two; the dataset's images are box-averaged down to it)
    /// [default: the dataset's image size, at most 256].
    #[arg(long)]
    pub resolution: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Training length in thousands of real images (the reference: 25000).
    #[arg(long, default_value_t = 25000.0)]
    pub kimg: f64,
    /// Checkpoint, G_ema and a preview grid every this many kimg (and at the end).
    #[arg(long, default_value_t = 50.0)]
    pub snapshot_kimg: f64,
    /// Networks' width: channels per resolution are min(channel_base/res, channel_max)
    /// (the reference: 32768 and 512).
    #[arg(long, default_value_t = 32768)]
    pub channel_base: usize,
    #[arg(long, default_value_t = 512)]
    pub channel_max: usize,
    /// z and w width (the reference: 512) and mapping layers (8).
    #[arg(long, default_value_t = 512)]
    pub w_dim: usize,
    #[arg(long, default_value_t = 8)]
    pub map_layers: usize,
    /// Learning-rate multiplier of every layer's conditioning MLPs (the fork: 0.01, which keeps
    /// them near their initialisation for the first thousands of images). Saved with the
    /// generator (`synthesis_kwargs.cond_lr_multiplier`, written only when not 0.01)
    #[arg(long, default_value_t = 0.01)]
    pub cond_lr_mult: f32,
    /// R1 γ [default: the reference's 0.0002·R²/batch].
    #[arg(long)]
    pub gamma: Option<f32>,
    /// Path-length weight (the reference: 2; 0 turns it off).
    #[arg(long, default_value_t = 2.0)]
    pub pl_weight: f32,
    #[arg(long, default_value_t = 0.9)]
    pub style_mixing: f32,
    /// Contrastive weights through D (itd) and CLIP (itc), temperature and λ (the fork's 10, 10, 0.5, 0).
    #[arg(long, default_value_t = 10.0)]
    pub itd: f32,
    #[arg(long, default_value_t = 10.0)]
    pub itc: f32,
    #[arg(long, default_value_t = 0.5)]
    pub temp: f32,
    #[arg(long, default_value_t = 0.0)]
    pub lam: f32,
    /// Not in the reference (0 keeps the fork): the weight of a paired pixel term, the mean
    /// squared difference between the image G draws from a stimulus' condition and the image the
    /// stimulus showed. A small generator trained for minutes learns where things are and their
    /// colours from it long before the adversarial terms teach it; `demo` uses 100.
    #[arg(long, default_value_t = 0.0)]
    pub recon: f32,
    /// Adam's base rate (the reference: 0.0025, rescaled for lazy regularisation).
    #[arg(long, default_value_t = 0.0025)]
    pub lr: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// On a GPU, run every step op by op instead of replaying each phase (Gmain, Greg, Dmain,
    /// Dreg, each with its Adam update) as a CUDA graph after the first step. Same numbers either
    /// way; a graph is one launch instead of one per op. metrics.jsonl's `graph_phases` counts
    /// the replays of each step
    #[arg(long)]
    pub no_cuda_graphs: bool,
}

/// What `reconstruct` needs to rebuild the run's inputs (RUN/run.json).
pub fn run_file(dir: &Path) -> PathBuf {
    dir.join("run.json")
}

/// Each stimulus' conditions: the mappers on its repeat-averaged fMRI, `[M, F]` each.
pub fn mapped_conditions(
    file: &DatasetFile,
    mappers: &[PathBuf],
    device: &Device,
) -> Result<Vec<(Vec<f32>, usize)>> {
    let voxels = file.summary().voxels;
    let stimuli = file.split().len();
    let averaged = average_repeats(&file.fmri()?, voxels, file.trial_stimulus(), stimuli);
    let x = Tensor::from_vec(averaged, &[stimuli, voxels], &Device::Cpu)?.to_device(device)?;
    let rows: Vec<u32> = (0..stimuli as u32).collect();
    mappers
        .iter()
        .map(|path| {
            let m = import::load_mapper(path, None, Some(voxels), device)?.mapper;
            anyhow::ensure!(
                m.config.voxels == voxels,
                "{} was trained on {} voxels but {} has {voxels}",
                path.display(),
                m.config.voxels,
                file.path().display()
            );
            Ok((predict_rows(&m, &x, &rows, 128)?, m.config.out_dim))
        })
        .collect()
}

/// The dataset's images as `[M, 3, R, R]` in [−1, 1], box-averaged down to `r`.
pub fn real_images(file: &DatasetFile, r: usize) -> Result<Vec<f32>> {
    let [h, w] = file.summary().image_size;
    anyhow::ensure!(
        h == w && h % r == 0,
        "{}: {h}×{w} images cannot be box-averaged to {r}×{r} (square, an integer factor)",
        file.path().display()
    );
    let m = file.summary().stimuli;
    let unit: Vec<f32> = file.images()?.iter().map(|&b| b as f32 / 255.0).collect();
    let small = if h == r {
        unit
    } else {
        box_downsample(&unit, [m, h, w, 3], h / r)
    };
    let mut out = vec![0.0f32; m * 3 * r * r];
    for i in 0..m {
        for p in 0..r * r {
            for c in 0..3 {
                out[(i * 3 + c) * r * r + p] = small[(i * r * r + p) * 3 + c] * 2.0 - 1.0;
            }
        }
    }
    Ok(out)
}

struct Bar {
    bar: ProgressBar,
    batch: usize,
    started: std::time::Instant,
}

impl GanProgress for Bar {
    fn on_step(&mut self, r: &StepReport, total: u64) -> bool {
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
            self.bar.set_position(r.step);
        }
        self.bar.inc(1);
        let get = |k: &str| r.terms.iter().find(|(n, _)| n == k).map(|&(_, v)| v);
        let rate = (self.bar.position() as f64 * self.batch as f64 / 1000.0)
            / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "{:.2} kimg  {:.3} kimg/s  G {:.3}  D {:.3}",
            r.kimg,
            rate,
            get("G.loss").unwrap_or(f64::NAN),
            get("D.loss").unwrap_or(f64::NAN),
        ));
        true
    }
    fn on_snapshot(&mut self, kimg: f64, grid: &Path) {
        super::print_above(
            &self.bar,
            format!("snapshot at {kimg:.2} kimg: {}", grid.display()),
        );
    }
}

pub fn run(args: TrainGanArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let file = DatasetFile::open(&args.data)?;
    let clip = Clip::load(&args.clip, &device)?;
    let conds = mapped_conditions(&file, &args.mappers, &device)?;
    let init = match &args.resume_from {
        Some(p) => Some(import::load_network::<Generator>(p, None, &device)?),
        None => None,
    };
    let resumed_from = args
        .resume_from
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let [h, _] = file.summary().image_size;
    let r = match (&init, args.resolution) {
        (Some(g), Some(r)) => {
            anyhow::ensure!(
                g.config().img_resolution == r,
                "--resolution {r}, but {} draws {}² images",
                resumed_from,
                g.config().img_resolution
            );
            r
        }
        (Some(g), None) => g.config().img_resolution,
        (None, Some(r)) => r,
        (None, None) => {
            let mut r = h.min(256);
            while !r.is_power_of_two() {
                r -= 1;
            }
            r
        }
    };
    let (f1, f2) = (conds[0].1, conds.get(1).map(|c| c.1).unwrap_or(0));
    let structure = if conds.len() == 2 { 4 } else { 2 };
    let g_kwargs = match &init {
        Some(g) => g.config().init_kwargs.clone(),
        None => {
            let mut k = json!({"z_dim": args.w_dim, "c_dim": 0, "w_dim": args.w_dim,
            "img_resolution": r, "img_channels": 3, "m_layer_features": f1 + f2,
            "mapping_kwargs": {"num_layers": args.map_layers},
            "synthesis_kwargs": {"channel_base": args.channel_base, "channel_max": args.channel_max,
                "num_fp16_res": 0, "conv_clamp": 256, "architecture": "skip",
                "structure": structure, "f_dim": f1, "f_dim2": f2}});
            if args.cond_lr_mult != 0.01 {
                k["synthesis_kwargs"]["cond_lr_multiplier"] = json!(args.cond_lr_mult);
            }
            k
        }
    };
    if let Some(g) = &init {
        let c = g.config();
        anyhow::ensure!(
            c.structure == structure && c.f_dim == f1 && (structure == 2 || c.f_dim2 == f2),
            "{} reads structure {} conditions of {}+{} dims; the mappers give {} of {f1}+{f2}",
            resumed_from,
            c.structure,
            c.f_dim,
            c.f_dim2,
            conds.len()
        );
    }
    let d_kwargs = json!({"c_dim": 0, "img_resolution": r, "img_channels": 3,
        "architecture": "resnet", "channel_base": args.channel_base, "channel_max": args.channel_max,
        "num_fp16_res": 0, "conv_clamp": 256, "use_norm": false, "use_fts": true,
        "epilogue_kwargs": {"structure": structure, "mbstd_group_size": args.batch.min(4),
            "f_dim": f1, "f_dim2": f2}});
    let names = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let data_id = format!(
        "{} mappers {} clip {}",
        args.data.display(),
        names(&args.mappers),
        args.clip.display()
    );
    let mut cfg = GanConfig {
        kimg: args.kimg,
        snapshot_kimg: args.snapshot_kimg,
        seed: args.seed,
        lr: args.lr,
        cuda_graphs: !args.no_cuda_graphs,
        ..GanConfig::reference(g_kwargs, d_kwargs, r, args.batch, data_id)
    };
    cfg.loss.pl_weight = args.pl_weight;
    cfg.loss.style_mixing = args.style_mixing;
    cfg.loss.itd = args.itd;
    cfg.loss.itc = args.itc;
    cfg.loss.temp = args.temp;
    cfg.loss.lam = args.lam;
    cfg.loss.recon = args.recon;
    if let Some(g) = args.gamma {
        cfg.loss.r1_gamma = g;
    }
    if init.is_some() {
        cfg.ema_rampup = None;
    }
    let split = file.split();
    let rows: Vec<u32> = (0..split.len() as u32)
        .filter(|&i| split[i as usize] == Split::Train)
        .collect();
    let preview: Vec<u32> = (0..split.len() as u32)
        .filter(|&i| split[i as usize] == Split::Test)
        .take(8)
        .collect();
    let mut conds = conds.into_iter();
    let (c1, _) = conds.next().context("--mappers is empty")?;
    let data = GanData {
        real: real_images(&file, r)?,
        c1,
        f1,
        c2: conds.next(),
        rows,
        preview,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let info = json!({"data": args.data, "mappers": args.mappers, "clip": args.clip,
        "resolution": r, "structure": structure, "batch": args.batch, "kimg": args.kimg,
        "seed": args.seed});
    mindreader::fsio::write_atomic(
        &run_file(&args.out),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    println!(
        "train-gan on {device}: {} training stimuli at {r}² (structure {structure}, conditions {f1}{}), batch {}, {} kimg{}",
        data.rows.len(),
        if f2 > 0 { format!("+{f2}") } else { String::new() },
        args.batch,
        args.kimg,
        if init.is_some() { " (finetuning)" } else { "" }
    );
    let dir = GanRunDir(args.out.clone());
    let bar = ProgressBar::new(cfg.total_steps());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = Bar {
        bar,
        batch: args.batch,
        started: std::time::Instant::now(),
    };
    let (_, reports) = train_gan(
        &cfg,
        &data,
        &clip,
        &dir,
        args.resume,
        init.as_ref(),
        &device,
        &mut progress,
    )?;
    progress.bar.finish();
    if let Some(last) = reports.last() {
        println!("last step: {}", last.to_json());
    }
    println!(
        "wrote {}, {} and {}",
        dir.g_ema().display(),
        dir.checkpoint().display(),
        dir.metrics().display()
    );
    Ok(())
}
