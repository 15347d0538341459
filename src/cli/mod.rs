//! Subcommands: parse, call the library, report.

pub mod bench;
pub mod demo;
pub mod info;

use anyhow::Result;
use mindreader::Device;

/// `--device` values: `auto` (GPU when usable), `cpu`, `cuda` or `cuda:N`.
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
