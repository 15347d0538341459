//! `mindreader demo`: the main job end to end on the built-in synthetic world.
//!
//! By default the whole of Mind Reader (steps 1–9; the second half is `demo_pictures.rs`): the
//! world at 32 px, a small CLIP of it, caption screening, the image and caption mappers, a
//! structure-4 generator on the mapped fMRI, reconstructions with a ceiling and a floor, their
//! metrics and the report. The mappers train on mse_cos_contrastive, not `train-mapper`'s
//! mse_cos default: on this world mse_cos stays at chance for the first epochs, and the demo has
//! twelve. `--retrieval-only` keeps the first half alone:
//!
//! 1. generate the synthetic world (a simulated subject viewing procedural scenes);
//! 2. train the Mind Reader mapper from its fMRI to the world's `scene` embedding target;
//! 3. report held-out retrieval (image from brain, brain from image) against chance.
//!
//! On a GPU the mapper is Mind Reader's own (hidden 64, fc 128, 4 residual blocks, single trials,
//! lr 2e-4, 40 epochs). On the CPU the same architecture is scaled down (hidden 16, fc 16, 2
//! blocks, repeat-averaged rows, lr 3e-3, a 2048-voxel world) so the whole demo fits in a few minutes on two cores;
//! `--full` asks for Mind Reader's configuration anyway.
//!
//! `--clip` runs the pipeline of the paper instead of the world's fixed `scene` target: a small
//! CLIP is trained from scratch on the world's stimuli and captions (`train-clip`), its image
//! embeddings become the targets (`screen-captions`: clamped, normalised, best caption kept), and
//! the mapper learns to predict them from the fMRI.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use mindreader::data::{dataset, synth, DatasetFile, Staged, SynthConfig};
use mindreader::models::MapperConfig;
use mindreader::train::clip::ClipTrainConfig;
use mindreader::train::mapper::{train, LossKind, MapperData, RunDir, TrainConfig, TrialMode};

use super::demo_ledger::Ledger;

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Where the world, the trained mapper, metrics and plots go.
    #[arg(long, default_value = "mindreader-demo")]
    pub out: PathBuf,
    /// auto (GPU when usable), cpu, cuda or cuda:N. cuda:0 is the CUDA simulator when its
    /// libcuda is on the library path (LD_LIBRARY_PATH=target/sim; see sim/README.md): the same
    /// kernels, run on the CPU and checked, with the scaled-down mapper.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Stimuli in the synthetic world.
    #[arg(long, default_value_t = 2000)]
    pub stimuli: usize,
    /// Simulated voxels [default: 4096 with the full mapper, 2048 scaled down].
    #[arg(long)]
    pub voxels: Option<usize>,
    /// Training epochs [default: 40 with the full mapper, 12 scaled down].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Use Mind Reader's full mapper and schedule even on the CPU (slow: hours on 2 cores).
    #[arg(long)]
    pub full: bool,
    /// Learning rate [default: 2e-4 with the full mapper, 3e-3 scaled down].
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The CLIP space to map into. `--clip DIR` uses that CLIP (a Hugging Face directory, e.g.
    /// openai/clip-vit-base-patch32); with no value, or by default in the whole pipeline, a small
    /// CLIP is trained here on the world's stimuli and captions (`train-clip` with its defaults,
    /// the layout term included: it keeps where things are in the space). With
    /// --retrieval-only and no --clip, the mapper learns the world's fixed `scene` target.
    #[arg(long, num_args = 0..=1, value_name = "DIR")]
    pub clip: Option<Option<PathBuf>>,
    /// Run on this dataset (`synth` or `prepare-nsd` output) instead of a fresh synthetic world.
    /// It is copied into OUT (the demo adds its CLIP targets to the copy); its images must
    /// box-average to 32 px.
    #[arg(long, value_name = "D.h5")]
    pub data: Option<PathBuf>,
    /// Continue the demo in OUT after a Ctrl-C or a crash: finished stages are skipped, the one
    /// that was running continues from its last checkpoint, and the numbers equal an
    /// uninterrupted run's. Refused if OUT was made with other settings.
    #[arg(long)]
    pub resume: bool,
    /// Epochs of the small CLIP.
    #[arg(long, default_value_t = 20)]
    pub clip_epochs: usize,
    /// Stop after the mapper's retrieval (the first half of Mind Reader: no generator).
    #[arg(long)]
    pub retrieval_only: bool,
    /// Thousands of images the generator trains on [default: 16 on the CPU, 200 on a GPU].
    #[arg(long)]
    pub gan_kimg: Option<f64>,
    /// A tiny run of every stage (a smoke test: under 2 minutes on 2 cores; pictures are blobs).
    #[arg(long)]
    pub quick: bool,
    /// An ordinary random test split only. By default the demo's world holds (shape, colour,
    /// side) combinations out of training and tests on them beside ordinary stimuli (`synth
    /// --compositional`): a decoder that only classifies into seen categories fails there.
    #[arg(long)]
    pub no_compositional: bool,
}

/// What decides the demo's numbers (a `--resume` must match it): every setting but where the
/// files go, the device and the resume flag itself.
fn settings(args: &DemoArgs) -> String {
    let mut a = args.clone();
    a.out = PathBuf::new();
    a.device = String::new();
    a.resume = false;
    // The products' precision changes the numbers: a resume under another one is refused.
    format!("{a:?} precision {}", mindreader::ops::precision::current())
}

pub fn run(args: DemoArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    // The CUDA simulator runs the GPU path at CPU speed or below: it gets the scaled-down mapper.
    let full = args.full || (device.is_cuda() && !device.is_simulated());
    let started = Instant::now();
    let pictures = !args.retrieval_only;
    let mut args = args;
    if pictures && args.clip.is_none() {
        // The whole pipeline maps into a CLIP space (the generator is conditioned on it).
        args.clip = Some(None);
    }
    if args.quick {
        args.stimuli = args.stimuli.min(240);
        args.voxels = Some(args.voxels.unwrap_or(256));
        args.epochs = Some(args.epochs.unwrap_or(3));
        args.clip_epochs = args.clip_epochs.min(2);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut ledger = Ledger::open(&args.out, settings(&args), args.resume)?;
    // Screening writes into world.h5: a stop inside it may leave the file half written, so an
    // unfinished screening redoes the world as well (a few seconds).
    if args.clip.is_some() && !ledger.is_done("CLIP targets") {
        ledger.forget("world")?;
    }

    // 1. The world.
    let world = args.out.join("world.h5");
    let voxels = args.voxels.unwrap_or(if full { 4096 } else { 2048 });
    let cfg = SynthConfig {
        stimuli: args.stimuli,
        voxels,
        seed: args.seed,
        // The generator runs at 32 px on the CPU; the world is drawn at that size.
        image_size: if pictures { 32 } else { 64 },
        compositional: pictures && !args.no_compositional,
        ..SynthConfig::default()
    };
    let steps = if pictures {
        9
    } else if args.clip.is_some() {
        5
    } else {
        3
    };
    let t = Instant::now();
    if ledger.is_done("world") {
        println!("[1/{steps}] the world: {} (done)", world.display());
    } else if let Some(data) = &args.data {
        println!(
            "[1/{steps}] copying {} → {} (the demo adds its targets to the copy)",
            data.display(),
            world.display()
        );
        DatasetFile::open(data)?;
        std::fs::copy(data, &world)
            .with_context(|| format!("copying {} to {}", data.display(), world.display()))?;
    } else {
        println!(
            "[1/{steps}] synthesising {} stimuli × {} repeats seen by a simulated subject with {} voxels{} → {}",
            cfg.stimuli,
            cfg.repeats,
            cfg.voxels,
            if cfg.compositional { " (a compositional test split)" } else { "" },
            world.display()
        );
        let contents = synth::generate(&cfg, &ProgressBar::hidden())?;
        dataset::write(&world, &contents)?;
    }
    if !ledger.is_done("world") {
        ledger.finish("world", t.elapsed().as_secs_f64())?;
    }

    // 1b. A CLIP space: a small CLIP of the world (or the given one), its embeddings the targets.
    let (target, clip_dir) = if let Some(given) = &args.clip {
        let t = Instant::now();
        let clip_dir = given.clone().unwrap_or(args.out.join("clip"));
        if given.is_some() {
            println!("[2/{steps}] using the CLIP in {}", clip_dir.display());
        } else if ledger.is_done("CLIP") {
            println!(
                "[2/{steps}] the world's CLIP: {} (done)",
                clip_dir.display()
            );
        } else {
            println!(
                "[2/{steps}] training a small CLIP on the world's stimuli and captions → {}",
                clip_dir.display()
            );
            let clip_cfg = ClipTrainConfig {
                epochs: args.clip_epochs,
                seed: args.seed,
                ..ClipTrainConfig::default()
            };
            super::train_clip::train(&clip_cfg, &world, &clip_dir, args.resume, &args.device)?;
            super::plot_loss_file(
                &clip_dir.join("metrics.jsonl"),
                &clip_dir.join("loss.png"),
                "CLIP contrastive loss per epoch",
            )?;
            ledger.finish("CLIP", t.elapsed().as_secs_f64())?;
        }
        let t = Instant::now();
        if ledger.is_done("CLIP targets") {
            println!("[3/{steps}] CLIP targets (done)");
        } else {
            println!("[3/{steps}] CLIP targets: image embeddings (clamped ±1.5, normalised) and the best caption of each stimulus");
            super::screen_captions::run(super::screen_captions::ScreenCaptionsArgs {
                clip: clip_dir.clone(),
                data: world.clone(),
                keep: 1,
                augment_views: 0,
                augment_seed: args.seed,
                batch: 64,
                device: args.device.clone(),
                dtype: "f32".into(),
            })?;
            ledger.finish("CLIP targets", t.elapsed().as_secs_f64())?;
        }
        ("clip_image", Some(clip_dir))
    } else {
        ("scene", None)
    };

    // 2. The mapper.
    let t = Instant::now();
    let file = DatasetFile::open(&world)?;
    let staged = Staged::load(&file, target, &device)?;
    let (mapper, mode, lr, epochs, batch) = if full {
        (
            MapperConfig::mind_reader(staged.voxels(), staged.target_dim()),
            TrialMode::Single,
            2e-4,
            args.epochs.unwrap_or(40),
            128,
        )
    } else {
        let m = MapperConfig {
            hidden: 16,
            fc_hidden: 16,
            res_blocks: 2,
            ..MapperConfig::mind_reader(staged.voxels(), staged.target_dim())
        };
        (m, TrialMode::Average, 3e-3, args.epochs.unwrap_or(12), 64)
    };
    let lr = args.lr.unwrap_or(lr);
    let data = MapperData::from_staged(&staged, file.trial_stimulus(), file.split(), mode)?;
    let cfg = TrainConfig {
        epochs,
        batch,
        lr,
        loss: LossKind::MseCosContrastive,
        decay_every: 10,
        ..TrainConfig::mind_reader(mapper, format!("demo world.h5:{target}"))
    };
    let mapper_cfg = cfg.clone();
    let at = if pictures { 4 } else { steps - 1 };
    let dir = RunDir(args.out.join("mapper"));
    if ledger.is_done("image mapper") {
        println!("[{at}/{steps}] the mapper: {} (done)", dir.0.display());
    } else {
        println!(
            "[{at}/{steps}] training the {} mapper on {device} to target `{target}`: {} rows ({:?} trials), {} epochs, batch {}, lr {}, mse_cos_contrastive",
            if full { "Mind Reader" } else { "scaled-down (hidden 16, fc 16, 2 blocks)" },
            data.train_rows.len(),
            mode,
            epochs,
            batch,
            lr
        );
        let mut bar = super::train_mapper::Bar::new(epochs, batch);
        train(&cfg, &data, &dir, args.resume, &device, &mut bar)?;
        bar.finish();
        super::plot_losses(&dir).context("drawing the loss curve")?;
        ledger.finish("image mapper", t.elapsed().as_secs_f64())?;
    }

    // 3. The figures.
    let r = super::demo_pictures::last_retrieval(&dir.0)?;
    let at = if pictures { 5 } else { steps };
    println!(
        "[{at}/{steps}] held-out retrieval over {} test stimuli ({}-way, {} random batches):",
        data.val_rows.len(),
        r.way,
        r.batches
    );
    println!(
        "      image from brain: {:5.1}% top-1   (chance {:.2}%)",
        100.0 * r.image_from_brain,
        100.0 * r.chance
    );
    println!(
        "      brain from image: {:5.1}% top-1   (chance {:.2}%)",
        100.0 * r.brain_from_image,
        100.0 * r.chance
    );
    println!("      mean cosine(predicted, true): {:.3}", r.mean_cosine);
    if pictures {
        let clip_dir = clip_dir.context("the pictures need a CLIP")?;
        return super::demo_pictures::run(
            &args,
            &world,
            &clip_dir,
            &device,
            &mapper_cfg,
            mode,
            &mut ledger,
            started,
        );
    }
    println!(
        "done in {:.0} s. Files: {} (world), {} (weights), {} (per-epoch metrics), {} (loss curve)",
        started.elapsed().as_secs_f64(),
        world.display(),
        dir.weights().display(),
        dir.metrics().display(),
        dir.loss_curve().display()
    );
    Ok(())
}
