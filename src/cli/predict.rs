//! `mindreader predict`: a trained mapper's embeddings for one split of a dataset, as .npy.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mindreader::data::loader::average_repeats;
use mindreader::data::{DatasetFile, Split};
use mindreader::eval::npy;
use mindreader::models::Mapper;
use mindreader::train::import;
use mindreader::train::mapper::predict_rows;
use mindreader::{Device, Tensor};

#[derive(Args)]
pub struct PredictArgs {
    /// The mapper: a train-mapper run directory (reads mapper.safetensors), a .safetensors file,
    /// a PyTorch `.pth` (a state_dict of fmri_clip_res / FmriVecMapper, bare or under `model`,
    /// `state_dict`, …) or a Mind Reader snapshot `.pkl` (its `fmri_vec`; see --network).
    #[arg(long)]
    pub mapper: PathBuf,
    /// Which entry of a `.pkl`/`.pth` is the mapper (a snapshot's `fmri_vec` by default; its
    /// caption mapper is `fmri_vec2`).
    #[arg(long)]
    pub network: Option<String>,
    #[arg(long)]
    pub data: PathBuf,
    /// train or test: one row per stimulus of that split, repeats averaged, in stimulus order.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output .npy of shape [stimuli, dim] (float32).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the chosen stimulus indices here (.npy, float32), to pair rows with targets.
    #[arg(long)]
    pub index_out: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
}

/// Builds the mapper stored at `path` (a run directory, a weights file, a `.pth` or a snapshot
/// `.pkl`'s entry `network`) on `device`; `voxels` (the dataset's) is used where the file does
/// not record its voxel count.
pub fn load_mapper(
    path: &std::path::Path,
    network: Option<&str>,
    voxels: usize,
    device: &mindreader::Device,
) -> Result<Mapper> {
    Ok(import::load_mapper(path, network, Some(voxels), device)?.mapper)
}

pub fn parse_split(s: &str) -> Result<Split> {
    match s {
        "train" => Ok(Split::Train),
        "test" => Ok(Split::Test),
        other => anyhow::bail!("--split must be train or test, got `{other}`"),
    }
}

pub fn run(args: PredictArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let split = parse_split(&args.split)?;
    let file = DatasetFile::open(&args.data)?;
    let voxels = file.summary().voxels;
    let mapper = load_mapper(&args.mapper, args.network.as_deref(), voxels, &device)?;
    anyhow::ensure!(
        voxels == mapper.config.voxels,
        "{} has {voxels} voxels but the mapper {} was trained on {}",
        args.data.display(),
        args.mapper.display(),
        mapper.config.voxels
    );
    let stimuli = file.split().len();
    let averaged = average_repeats(&file.fmri()?, voxels, file.trial_stimulus(), stimuli);
    let x = Tensor::from_vec(averaged, &[stimuli, voxels], &Device::Cpu)?.to_device(&device)?;
    let rows: Vec<u32> = (0..stimuli as u32)
        .filter(|&s| file.split()[s as usize] == split)
        .collect();
    anyhow::ensure!(
        !rows.is_empty(),
        "{} has no {} stimuli",
        args.data.display(),
        args.split
    );
    let pred = predict_rows(&mapper, &x, &rows, args.batch)?;
    npy::write_f32(&args.out, &pred, &[rows.len(), mapper.config.out_dim])?;
    if let Some(p) = &args.index_out {
        let idx: Vec<f32> = rows.iter().map(|&r| r as f32).collect();
        npy::write_f32(p, &idx, &[rows.len()])?;
    }
    println!(
        "wrote {} ({} × {}) for the {} split",
        args.out.display(),
        rows.len(),
        mapper.config.out_dim,
        args.split
    );
    Ok(())
}
