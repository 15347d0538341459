//! `mindreader convert`: the authors' checkpoints (a Lafite / Mind Reader network snapshot `.pkl`
//! or a mapper `.pth`) as mindreader checkpoints, read as data with no Python.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mindreader::train::import;

#[derive(Args)]
pub struct ConvertArgs {
    /// A network snapshot (`network-snapshot-*.pkl`, from StyleGAN2-ADA, Lafite or Mind Reader's
    /// fork) or a PyTorch `.pth` (zip or legacy) holding a mapper's state_dict.
    pub input: PathBuf,
    /// The output directory: one safetensors per network (G.safetensors, D.safetensors,
    /// G_ema.safetensors, fmri_vec.safetensors, …; a `.pth` mapper becomes mapper.safetensors) and
    /// snapshot.json with the snapshot's plain data (args, training_set_kwargs).
    #[arg(long)]
    pub out: PathBuf,
    /// The mapper's voxel count, where the file does not record it (a bare state_dict's fc layer
    /// fits both 2L and 2L+1 voxels).
    #[arg(long)]
    pub voxels: Option<usize>,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let (done, notes) = import::convert(&args.input, &args.out, args.voxels)?;
    for c in &done {
        println!("{:<12} {:<44} → {}", c.key, c.what, c.path.display());
    }
    for n in notes {
        println!("note: {n}");
    }
    Ok(())
}
