//! `mindreader prepare-nsd`: the Natural Scenes Dataset's released files → a prepared dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mindreader::data::dataset;
use mindreader::data::nsd::{self, NsdConfig, Padding};

#[derive(clap::Args, Debug)]
pub struct PrepareNsdArgs {
    /// The NSD copy: holds nsddata/, nsddata_betas/ and nsddata_stimuli/ (see docs/nsd.md).
    #[arg(long)]
    pub nsd_root: PathBuf,
    /// Subject 1–8.
    #[arg(long)]
    pub subject: usize,
    /// ROI mask under nsddata/ppdata/subjNN/func1pt8mm/roi/ (file stem).
    #[arg(long, default_value = "nsdgeneral")]
    pub roi: String,
    /// Where to write the HDF5 file.
    #[arg(long)]
    pub out: PathBuf,
    /// Sessions to read, e.g. `1-10,12` [default: every session present, 1 to the last].
    #[arg(long)]
    pub sessions: Option<String>,
    /// Keep each session's betas as they are (÷300) instead of z-scoring each voxel per session.
    #[arg(long)]
    pub no_zscore: bool,
    /// One row per image, the mean of its repeats, instead of one row per trial.
    #[arg(long)]
    pub average_repeats: bool,
    /// Zero-pad the voxels up to a multiple of this, split evenly (128: 15724 → 15744, Mind Reader's width).
    #[arg(long, conflicts_with = "padding")]
    pub pad_multiple: Option<usize>,
    /// Zero voxels added on each side (Mind Reader: 10).
    #[arg(long)]
    pub padding: Option<usize>,
    /// Image side in pixels (NSD's are 425; area-averaged).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Directory of COCO's captions_train2017.json and captions_val2017.json [default: NSD_ROOT/coco/annotations].
    #[arg(long)]
    pub coco_dir: Option<PathBuf>,
}

/// `1-3,5` → [1, 2, 3, 5].
fn parse_sessions(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("--sessions: `{x}` is not a session number"))
        };
        match part.split_once('-') {
            Some((a, b)) => out.extend(num(a)?..=num(b)?),
            None => out.push(num(part)?),
        }
    }
    anyhow::ensure!(!out.is_empty(), "--sessions `{s}` names no session");
    Ok(out)
}

impl PrepareNsdArgs {
    pub fn config(&self) -> Result<NsdConfig> {
        let padding = match (self.pad_multiple, self.padding) {
            (Some(k), _) => Padding::Multiple(k),
            (None, Some(p)) => Padding::Explicit([p, p]),
            (None, None) => Padding::Explicit([0, 0]),
        };
        Ok(NsdConfig {
            roi: self.roi.clone(),
            sessions: self.sessions.as_deref().map(parse_sessions).transpose()?,
            zscore: !self.no_zscore,
            average_repeats: self.average_repeats,
            padding,
            image_size: self.size,
            coco_dir: self.coco_dir.clone(),
            ..NsdConfig::new(&self.nsd_root, self.subject)
        })
    }
}

pub fn run(args: PrepareNsdArgs) -> Result<()> {
    let cfg = args.config()?;
    let start = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .context("progress style")?
        .progress_chars("=> "),
    );
    let contents = nsd::prepare(&cfg, &bar).with_context(|| {
        format!(
            "preparing NSD subject {} from {}",
            cfg.subject,
            cfg.root.display()
        )
    })?;
    bar.finish_and_clear();

    let bytes = (contents.fmri.len() * 4 + contents.images.len()) as u64;
    let bar = ProgressBar::new(bytes).with_style(
        ProgressStyle::with_template("   writing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .context("progress style")?
            .progress_chars("=> "),
    );
    dataset::write_with_progress(&args.out, &contents, &mut |n| bar.inc(n))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    let test = contents
        .split
        .iter()
        .filter(|s| **s == dataset::Split::Test)
        .count();
    println!(
        "wrote {}: {} {} × {} voxels ({} in {} + padding {:?}), {} stimuli ({} test) at {}×{} px, sessions {:?}, in {:.1} s",
        args.out.display(),
        contents.trials(),
        if cfg.average_repeats { "averaged rows" } else { "trials" },
        contents.voxels,
        contents.meta.voxels_unpadded,
        cfg.roi,
        contents.meta.padding,
        contents.stimuli(),
        test,
        cfg.image_size,
        cfg.image_size,
        cfg.resolve_sessions()?,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_ranges_parse() {
        assert_eq!(super::parse_sessions("1-3,5").unwrap(), vec![1, 2, 3, 5]);
        assert!(super::parse_sessions("x").is_err());
    }
}
