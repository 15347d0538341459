//! `mindreader synth`: generate a synthetic world and write it as a prepared dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mindreader::data::{dataset, synth, SynthConfig};

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Where to write the HDF5 file.
    #[arg(long)]
    pub out: PathBuf,
    /// NSD subj01's size: 10,000 stimuli, 15724 voxels padded by 10 on each side (15744).
    /// Options given explicitly override it.
    #[arg(long)]
    pub nsd_like: bool,
    /// Number of stimuli (images) [default: 2000].
    #[arg(long)]
    pub stimuli: Option<usize>,
    /// Voxels before padding [default: 4096].
    #[arg(long)]
    pub voxels: Option<usize>,
    /// Zero voxels added on each side [default: 0].
    #[arg(long)]
    pub padding: Option<usize>,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Mean single-trial SNR (signal std / noise std) per voxel; NSD-like is about 0.4.
    #[arg(long, default_value_t = 0.4)]
    pub snr: f32,
    /// Trials per stimulus.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seed of the stimuli, trials and split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the simulated subject (default: --seed); fix it to see new stimuli with the same brain.
    #[arg(long)]
    pub subject_seed: Option<u64>,
    /// Fraction of stimuli held out as the test split.
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f32,
    /// Trials per scanning session (each session is z-scored on its own).
    #[arg(long, default_value_t = 750)]
    pub trials_per_session: usize,
    /// Hold out (shape, colour, side) combinations: half of the test stimuli show one that no
    /// training stimulus shows (flagged in `scene/unseen_combination`), so a decoder cannot pass
    /// on them by classifying into seen categories; the other half are ordinary.
    #[arg(long)]
    pub compositional: bool,
}

impl SynthArgs {
    pub fn config(&self) -> SynthConfig {
        let base = if self.nsd_like {
            SynthConfig::nsd_like()
        } else {
            SynthConfig::default()
        };
        SynthConfig {
            stimuli: self.stimuli.unwrap_or(base.stimuli),
            voxels: self.voxels.unwrap_or(base.voxels),
            padding: self.padding.unwrap_or(base.padding),
            image_size: self.size,
            snr: self.snr,
            repeats: self.repeats,
            seed: self.seed,
            subject_seed: self.subject_seed,
            test_fraction: self.test_fraction,
            trials_per_session: self.trials_per_session,
            compositional: self.compositional,
            ..base
        }
    }
}

pub fn run(args: SynthArgs) -> Result<()> {
    let cfg = args.config();
    let start = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .context("progress style")?
        .progress_chars("=> "),
    );
    let world = synth::generate(&cfg, &bar).context("generating the synthetic world")?;
    bar.finish_and_clear();
    let generated = start.elapsed();

    let bytes = (world.fmri.len() * 4 + world.images.len()) as u64;
    let bar = ProgressBar::new(bytes).with_style(
        ProgressStyle::with_template("   writing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .context("progress style")?
            .progress_chars("=> "),
    );
    dataset::write_with_progress(&args.out, &world, &mut |n| bar.inc(n))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();

    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {}: {} stimuli ({}×{} px, 5 captions each), {} trials × {} voxels ({} + padding {}×2), snr {}, seed {}",
        args.out.display(),
        cfg.stimuli,
        cfg.image_size,
        cfg.image_size,
        world.trials(),
        world.voxels,
        cfg.voxels,
        cfg.padding,
        cfg.snr,
        cfg.seed
    );
    println!(
        "{:.1} MB in {:.1} s (generate {:.1} s, write {:.1} s)",
        size as f64 / 1e6,
        start.elapsed().as_secs_f64(),
        generated.as_secs_f64(),
        (start.elapsed() - generated).as_secs_f64()
    );
    Ok(())
}
