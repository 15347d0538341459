//! `mindreader eval-retrieval`: 300-way top-1 retrieval in both directions and mean cosine, JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mindreader::data::loader::average_repeats;
use mindreader::data::DatasetFile;
use mindreader::eval::{npy, retrieval};
use mindreader::fsio::write_atomic;
use mindreader::train::mapper::predict_rows;
use mindreader::{Device, Tensor};

#[derive(Args)]
pub struct EvalRetrievalArgs {
    /// The dataset whose target rows are the candidates.
    #[arg(long)]
    pub data: PathBuf,
    /// The target matrix to retrieve among (scene, clip_image, clip_caption, …).
    #[arg(long, default_value = "scene")]
    pub target: String,
    /// A trained mapper (run directory or weights file): predictions are computed here…
    #[arg(long, conflicts_with = "pred")]
    pub mapper: Option<PathBuf>,
    /// …or read from a `predict` output (.npy rows in the split's stimulus order).
    #[arg(long)]
    pub pred: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Candidates per query; fewer when the split is smaller.
    #[arg(long, default_value_t = 300)]
    pub way: usize,
    /// Random candidate sets averaged over.
    #[arg(long, default_value_t = 30)]
    pub batches: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: EvalRetrievalArgs) -> Result<()> {
    let split = super::predict::parse_split(&args.split)?;
    let file = DatasetFile::open(&args.data)?;
    let (targets, dim) = file.target(&args.target)?;
    let stimuli = file.split().len();
    let rows: Vec<u32> = (0..stimuli as u32)
        .filter(|&s| file.split()[s as usize] == split)
        .collect();
    let pred = match (&args.mapper, &args.pred) {
        (Some(m), _) => {
            let device = super::parse_device(&args.device)?;
            let voxels = file.summary().voxels;
            let mapper = super::predict::load_mapper(m, None, voxels, &device)?;
            anyhow::ensure!(
                voxels == mapper.config.voxels,
                "{} has {voxels} voxels but the mapper expects {}",
                args.data.display(),
                mapper.config.voxels
            );
            let x = Tensor::from_vec(
                average_repeats(&file.fmri()?, voxels, file.trial_stimulus(), stimuli),
                &[stimuli, voxels],
                &Device::Cpu,
            )?
            .to_device(&device)?;
            predict_rows(&mapper, &x, &rows, 128)?
        }
        (None, Some(p)) => {
            let (v, shape) = npy::read_f32(p)?;
            anyhow::ensure!(
                shape == [rows.len(), dim],
                "{}: shape {shape:?}, expected [{}, {dim}] (the {} split of {} with target {})",
                p.display(),
                rows.len(),
                args.split,
                args.data.display(),
                args.target
            );
            v
        }
        (None, None) => anyhow::bail!("give --mapper DIR or --pred FILE.npy"),
    };
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| targets[r as usize * dim..][..dim].iter().copied())
        .collect();
    let r = retrieval(&pred, &want, dim, args.way, args.batches, args.seed)?;
    let json = serde_json::json!({
        "data": args.data.display().to_string(), "target": args.target, "split": args.split, "stimuli": rows.len(),
        "way": r.way, "batches": r.batches, "top1_image_from_brain": r.image_from_brain, "top1_brain_from_image": r.brain_from_image,
        "mean_cosine": r.mean_cosine, "chance": r.chance,
    });
    let text = serde_json::to_string_pretty(&json)?;
    println!("{text}");
    if let Some(out) = &args.out {
        write_atomic(out, format!("{text}\n").as_bytes())?;
    }
    Ok(())
}
