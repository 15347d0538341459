//! Subcommands: parse, call the library, report.

pub mod bench;
pub mod convert;
pub mod demo;
pub mod demo_ledger;
pub mod demo_pictures;
pub mod embed;
pub mod eval_images;
pub mod eval_retrieval;
pub mod generate;
pub mod info;
pub mod inspect;
pub mod predict;
pub mod prepare_nsd;
pub mod reconstruct;
pub mod screen_captions;
pub mod synth;
pub mod train_clip;
pub mod train_gan;
pub mod train_mapper;

use std::path::Path;

use anyhow::Result;
use mindreader::eval::plot::{line_chart, Series};
use mindreader::train::mapper::RunDir;
use mindreader::train::metrics::read_loss_history;
use mindreader::Device;

/// `--device` values: `auto` (GPU when usable), `cpu`, `cuda` or `cuda:N` (the CUDA simulator is
/// `cuda:0` when its libcuda is on the library path; `auto` never picks it).
pub fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "auto" => Device::best(),
        "cpu" => Device::Cpu,
        "cuda" => Device::cuda(0)?,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::cuda(n)?,
            None => anyhow::bail!("unknown device `{other}` (use auto, cpu, cuda or cuda:N)"),
        },
    })
}

/// Prints a line above a progress bar. A hidden bar (output not a terminal: logs, CI) drops its
/// own println, and the epoch lines must stay.
pub fn print_above(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// `--dtype` for CLIP: f32 (the reference's precision) or bf16 (weights and activations;
/// inference only).
pub fn parse_clip_dtype(s: &str) -> Result<mindreader::tensor::DType> {
    use mindreader::tensor::DType;
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown --dtype `{other}` (use f32 or bf16)"),
    }
}

/// Draws `loss.png` (train and validation loss per epoch) from a run's `metrics.jsonl`.
pub fn plot_losses(dir: &RunDir) -> Result<()> {
    plot_loss_file(&dir.metrics(), &dir.loss_curve(), "mapper loss per epoch")
}

/// The train and validation loss per epoch of a `metrics.jsonl` (mapper or CLIP) as a PNG.
pub fn plot_loss_file(metrics: &Path, png: &Path, title: &str) -> Result<()> {
    let h = read_loss_history(metrics)?;
    let train = Series {
        name: "train",
        points: h.iter().map(|&(e, t, _)| (e as f64, t)).collect(),
        colour: [31, 119, 180],
    };
    let val = Series {
        name: "validation",
        points: h.iter().map(|&(e, _, v)| (e as f64, v)).collect(),
        colour: [214, 39, 40],
    };
    line_chart(png, title, "epoch", "loss", &[train, val])?;
    Ok(())
}
