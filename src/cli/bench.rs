//! `mindreader bench`: validate-then-time every benchmark case; Markdown table and JSON lines.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use mindreader::bench::{cases, measure_copy_bandwidth, run_case};
use mindreader::Device;

#[derive(Args)]
pub struct BenchArgs {
    /// auto (GPU when usable, else the CPU twins with wall-clock timing), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Timed runs per case (the median is reported).
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Tiny shapes: a smoke test that runs in seconds on a CPU.
    #[arg(long)]
    pub quick: bool,
    /// Only cases whose name contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write one JSON object per case to this file (for benches/compare.py).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// FP32 CUDA-core peak from the device's attributes (SMs × 128 lanes × 2 FLOP × clock).
fn fp32_peak_tflops(device: &Device) -> Option<f64> {
    let Device::Cuda(gpu) = device else {
        return None;
    };
    use cudarc::driver::sys::CUdevice_attribute as A;
    let sms = gpu
        .ctx
        .attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .ok()? as f64;
    let khz = gpu.ctx.attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE).ok()? as f64;
    Some(sms * 128.0 * 2.0 * khz * 1e3 / 1e12)
}

pub fn run(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(args.iters > 0, "--iters must be positive");
    let device = super::parse_device(&args.device)?;
    anyhow::ensure!(
        !device.is_simulated(),
        "{device} is the CUDA simulator ({}): it runs kernels on the CPU, so its times are not GPU times and bench will not \
         report them. Kernel parity on the simulator is what scripts/test runs; use --device cpu to time the CPU twins",
        device.name()
    );
    let peak_bw = measure_copy_bandwidth(&device)?;
    let peak_flops = fp32_peak_tflops(&device);
    let name = match &device {
        Device::Cuda(g) => g.name(),
        Device::Cpu => format!(
            "CPU twins, {} threads (wall-clock timing)",
            rayon::current_num_threads()
        ),
    };
    println!("device: {device} ({name})");
    if let Some(bw) = peak_bw {
        println!("measured copy bandwidth: {bw:.0} GB/s");
    }
    if let Some(p) = peak_flops {
        println!("FP32 CUDA-core peak from attributes: {p:.1} TFLOP/s");
    }
    println!("\n| case | median ms | min ms | TFLOP/s | GB/s | % of copy BW | % of FP32 peak | max rel err vs CPU |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut json = match &args.json {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    for case in cases(args.quick) {
        if args
            .filter
            .as_ref()
            .is_some_and(|f| !case.name.contains(f.as_str()))
        {
            continue;
        }
        let m = run_case(&case, &device, args.warmup, args.iters)
            .with_context(|| format!("bench case `{}`", case.name))?;
        let pct = |v: f64, peak: Option<f64>| {
            peak.map(|p| format!("{:.1}", 100.0 * v / p))
                .unwrap_or_else(|| "-".into())
        };
        let err = m
            .max_rel_err
            .map(|e| format!("{e:.1e}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.4} | {:.4} | {:.2} | {:.1} | {} | {} | {err} |",
            m.name,
            m.median_ms,
            m.min_ms,
            m.tflops,
            m.gbps,
            pct(m.gbps, peak_bw),
            pct(m.tflops, peak_flops)
        );
        if let Some(f) = json.as_mut() {
            let line = serde_json::json!({"case": m.name, "device": m.device, "device_name": name, "median_ms": m.median_ms, "min_ms": m.min_ms, "tflops": m.tflops, "gbps": m.gbps, "max_rel_err": m.max_rel_err});
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
