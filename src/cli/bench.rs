//! `mindreader bench`: validate-then-time every benchmark case; Markdown table and JSON lines.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use mindreader::bench::report::{best_gemm, json_line, markdown, rows, Peaks, TorchTimes};
use mindreader::bench::{cases, measure_copy_bandwidth, run_case, Suite};
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
    /// kernels (single ops), models (whole model steps: the mapper's training step, CLIP's
    /// encoders, Lafite's G, D and G+D step) or all.
    #[arg(long, value_enum, default_value_t = SuiteArg::All)]
    pub suite: SuiteArg,
    /// PyTorch's timings of the same cases (`benches/torch_reference.py --json FILE`, run on the
    /// same GPU): adds the ratio columns (PyTorch time / ours: above 1, mindreader is faster).
    #[arg(long)]
    pub torch: Option<std::path::PathBuf>,
    /// Also write one JSON object per case to this file, with the same columns.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SuiteArg {
    Kernels,
    Models,
    All,
}

impl SuiteArg {
    fn includes(self, s: Suite) -> bool {
        matches!(
            (self, s),
            (SuiteArg::All, _)
                | (SuiteArg::Kernels, Suite::Kernels)
                | (SuiteArg::Models, Suite::Models)
        )
    }

    fn name(self) -> &'static str {
        match self {
            SuiteArg::Kernels => "kernels",
            SuiteArg::Models => "models",
            SuiteArg::All => "all",
        }
    }
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
    // Read PyTorch's timings first: a bad file should fail before minutes of benchmarking.
    let torch = match &args.torch {
        Some(p) => TorchTimes::read(p)?,
        None => TorchTimes::default(),
    };
    let mut json = match &args.json {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let peaks = Peaks {
        copy_gbps: measure_copy_bandwidth(&device)?,
        fp32_tflops: fp32_peak_tflops(&device),
    };
    let name = match &device {
        Device::Cuda(g) => g.name(),
        Device::Cpu => format!(
            "CPU twins, {} threads (wall-clock timing)",
            rayon::current_num_threads()
        ),
    };
    println!("device: {device} ({name})");
    if let Some(bw) = peaks.copy_gbps {
        println!("measured copy bandwidth: {bw:.0} GB/s");
    }
    if let Some(p) = peaks.fp32_tflops {
        println!("FP32 CUDA-core peak from attributes: {p:.1} TFLOP/s");
    }
    let selected: Vec<_> = cases(args.quick)?
        .into_iter()
        .filter(|c| args.suite.includes(c.suite))
        .filter(|c| {
            args.filter
                .as_ref()
                .map_or(true, |f| c.name.contains(f.as_str()))
        })
        .collect();
    anyhow::ensure!(
        !selected.is_empty(),
        "no bench case matches --suite {} and --filter {:?}",
        args.suite.name(),
        args.filter.as_deref().unwrap_or("")
    );
    let bar = indicatif::ProgressBar::new(selected.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} cases {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // A case that fails (a validation mismatch, a launch error) is reported and skipped: the
    // others still make the table, and the command fails at the end.
    let mut measured = Vec::with_capacity(selected.len());
    let mut failed = Vec::new();
    for case in &selected {
        bar.set_message(case.name.clone());
        let line = match run_case(case, &device, args.warmup, args.iters) {
            Ok(m) => {
                let line = format!("{}: {:.4} ms", m.name, m.median_ms);
                measured.push(m);
                line
            }
            Err(e) => {
                failed.push(format!("`{}`: {e}", case.name));
                format!("{}: FAILED: {e}", case.name)
            }
        };
        // One line per case as it ends, also when stdout is a log file (no bar drawn).
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some((case, tflops)) = best_gemm(&measured) {
        println!("best GEMM of this run: {case}, {tflops:.2} TFLOP/s");
    }
    let rows = rows(&measured, &peaks, &torch);
    println!("\n{}", markdown(&rows));
    if let Some(f) = json.as_mut() {
        for r in &rows {
            writeln!(f, "{}", json_line(r, &name))?;
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} bench cases failed:\n  {}",
        failed.len(),
        selected.len(),
        failed.join("\n  ")
    );
    Ok(())
}
