//! `mindreader predict`: a trained mapper's embeddings for one split of a dataset, as .npy.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mindreader::data::loader::average_repeats;
use mindreader::data::{DatasetFile, Split};
use mindreader::eval::npy;
use mindreader::models::Mapper;
use mindreader::nn::{load_safetensors, ParamStore};
use mindreader::train::mapper::{mapper_config_from, predict_rows, RunDir};
use mindreader::{Device, Tensor};

#[derive(Args)]
pub struct PredictArgs {
    /// A train-mapper run directory (reads mapper.safetensors) or a .safetensors file.
    #[arg(long)]
    pub mapper: PathBuf,
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

/// Builds the mapper stored at `path` (a run directory or a weights file) on `device`.
pub fn load_mapper(path: &std::path::Path, device: &mindreader::Device) -> Result<Mapper> {
    let weights = if path.is_dir() {
        RunDir(path.to_path_buf()).weights()
    } else {
        path.to_path_buf()
    };
    let (tensors, meta) = load_safetensors(&weights)?;
    let config = mapper_config_from(&meta, &weights)?;
    let mut store = ParamStore::new();
    let mapper = Mapper::new(config, &mut store, 0, device)?;
    store.assign_from(tensors, "", &weights)?;
    Ok(mapper)
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
    let mapper = load_mapper(&args.mapper, &device)?;
    let file = DatasetFile::open(&args.data)?;
    let voxels = file.summary().voxels;
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
