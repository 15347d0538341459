//! `bench`'s table: every case against the peaks measured in the same run (a large copy for
//! bandwidth, the fastest GEMM case for FLOP/s) and, when PyTorch's timings of the same cases are
//! given (`benches/torch_reference.py --json`), the ratio against eager PyTorch and
//! `torch.compile`.

use std::collections::HashMap;
use std::path::Path;

use super::{Measurement, Suite};
use crate::error::{Error, Result};

/// The peaks a run measured; `None` where it could not (the CPU has no copy peak).
#[derive(Clone, Debug, Default)]
pub struct Peaks {
    /// Device-to-device copy, GB/s (read + write).
    pub copy_gbps: Option<f64>,
    /// FP32 CUDA-core peak from the device's attributes, TFLOP/s.
    pub fp32_tflops: Option<f64>,
}

/// PyTorch's median times by case name, as `benches/torch_reference.py --json` writes them: one
/// object per line with `case` and `median_ms`; `torch.compile` rows are named `<case>
/// (torch.compile)`.
#[derive(Clone, Debug, Default)]
pub struct TorchTimes(HashMap<String, f64>);

impl TorchTimes {
    pub fn read(path: &Path) -> Result<TorchTimes> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("reading {}: {e}", path.display())))?;
        TorchTimes::parse(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<TorchTimes, String> {
        let mut times = HashMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
            let (Some(case), Some(ms)) = (v["case"].as_str(), v["median_ms"].as_f64()) else {
                return Err(format!(
                    "line {}: expected {{\"case\": …, \"median_ms\": …}}",
                    i + 1
                ));
            };
            times.insert(case.to_string(), ms);
        }
        Ok(TorchTimes(times))
    }

    fn eager(&self, case: &str) -> Option<f64> {
        self.0.get(case).copied()
    }

    fn compiled(&self, case: &str) -> Option<f64> {
        self.0.get(&format!("{case} (torch.compile)")).copied()
    }
}

/// One row of the table: a measurement with its shares of the peaks and PyTorch's ratios.
#[derive(Clone, Debug)]
pub struct Row {
    pub m: Measurement,
    /// % of the measured copy bandwidth.
    pub pct_copy: Option<f64>,
    /// % of the fastest GEMM case of this run (TFLOP/s).
    pub pct_best_gemm: Option<f64>,
    /// % of the FP32 CUDA-core peak from the attributes.
    pub pct_fp32: Option<f64>,
    /// PyTorch eager time / ours (> 1: mindreader is faster).
    pub vs_eager: Option<f64>,
    /// `torch.compile` time / ours.
    pub vs_compile: Option<f64>,
}

/// The fastest GEMM case of a run: its name and TFLOP/s.
pub fn best_gemm(ms: &[Measurement]) -> Option<(&str, f64)> {
    ms.iter()
        .filter(|m| m.gemm && m.tflops > 0.0)
        .max_by(|a, b| a.tflops.total_cmp(&b.tflops))
        .map(|m| (m.name.as_str(), m.tflops))
}

pub fn rows(ms: &[Measurement], peaks: &Peaks, torch: &TorchTimes) -> Vec<Row> {
    let best = best_gemm(ms).map(|(_, t)| t);
    let pct = |v: f64, peak: Option<f64>| peak.filter(|p| *p > 0.0).map(|p| 100.0 * v / p);
    let flops_share =
        |m: &Measurement, peak| (m.tflops > 0.0).then(|| pct(m.tflops, peak)).flatten();
    ms.iter()
        .map(|m| Row {
            pct_copy: pct(m.gbps, peaks.copy_gbps),
            pct_best_gemm: flops_share(m, best),
            pct_fp32: flops_share(m, peaks.fp32_tflops),
            vs_eager: torch.eager(&m.name).map(|t| t / m.median_ms),
            vs_compile: torch.compiled(&m.name).map(|t| t / m.median_ms),
            m: m.clone(),
        })
        .collect()
}

/// The Markdown table, kernels first, then whole model steps.
pub fn markdown(rows: &[Row]) -> String {
    let opt = |v: Option<f64>, digits: usize| {
        v.map(|x| format!("{x:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::from(
        "| case | median ms | min ms | TFLOP/s | GB/s | % of copy BW | % of best GEMM | % of FP32 peak | PyTorch / ours | torch.compile / ours | max rel err vs CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for suite in [Suite::Kernels, Suite::Models] {
        for r in rows.iter().filter(|r| r.m.suite == suite) {
            let m = &r.m;
            let err = m
                .max_rel_err
                .map(|e| format!("{e:.1e}"))
                .unwrap_or_else(|| "-".into());
            out += &format!(
                "| {} | {:.4} | {:.4} | {:.2} | {:.1} | {} | {} | {} | {} | {} | {err} |\n",
                m.name,
                m.median_ms,
                m.min_ms,
                m.tflops,
                m.gbps,
                opt(r.pct_copy, 1),
                opt(r.pct_best_gemm, 1),
                opt(r.pct_fp32, 1),
                opt(r.vs_eager, 2),
                opt(r.vs_compile, 2),
            );
        }
    }
    out
}

/// One JSON object per row (for scripts and for `benches/results/`).
pub fn json_line(r: &Row, device_name: &str) -> serde_json::Value {
    let m = &r.m;
    serde_json::json!({
        "case": m.name, "suite": m.suite.name(), "device": m.device, "device_name": device_name,
        "median_ms": m.median_ms, "min_ms": m.min_ms, "tflops": m.tflops, "gbps": m.gbps,
        "pct_copy_bw": r.pct_copy, "pct_best_gemm": r.pct_best_gemm, "pct_fp32_peak": r.pct_fp32,
        "torch_eager_over_ours": r.vs_eager, "torch_compile_over_ours": r.vs_compile,
        "max_rel_err": m.max_rel_err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(
        name: &str,
        suite: Suite,
        gemm: bool,
        ms: f64,
        tflops: f64,
        gbps: f64,
    ) -> Measurement {
        Measurement {
            name: name.into(),
            device: "cuda:0".into(),
            suite,
            gemm,
            median_ms: ms,
            min_ms: ms,
            tflops,
            gbps,
            max_rel_err: Some(1e-4),
        }
    }

    #[test]
    fn shares_of_the_peaks_and_ratios_against_pytorch_are_the_hand_computed_ones() {
        let ms = [
            measured("matmul a", Suite::Kernels, true, 2.0, 400.0, 50.0),
            measured("matmul b", Suite::Kernels, true, 1.0, 500.0, 60.0),
            measured("softmax", Suite::Kernels, false, 0.5, 0.0, 3000.0),
            measured("mapper step", Suite::Models, false, 10.0, 100.0, 100.0),
        ];
        let peaks = Peaks {
            copy_gbps: Some(4000.0),
            fp32_tflops: Some(50.0),
        };
        let torch = TorchTimes::parse(
            "{\"case\": \"matmul b\", \"median_ms\": 0.9}\n\n\
             {\"case\": \"mapper step\", \"median_ms\": 25.0}\n\
             {\"case\": \"mapper step (torch.compile)\", \"median_ms\": 12.5}\n",
        )
        .unwrap();
        assert_eq!(best_gemm(&ms), Some(("matmul b", 500.0)));
        let r = rows(&ms, &peaks, &torch);
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(close(r[0].pct_best_gemm, 80.0) && close(r[1].pct_best_gemm, 100.0));
        assert!(close(r[2].pct_copy, 75.0));
        assert_eq!(
            r[2].pct_best_gemm, None,
            "a case without FLOPs has no FLOP share"
        );
        assert!(close(r[3].pct_best_gemm, 20.0) && close(r[3].pct_fp32, 200.0));
        assert!(close(r[1].vs_eager, 0.9) && r[1].vs_compile.is_none());
        assert!(close(r[3].vs_eager, 2.5) && close(r[3].vs_compile, 1.25));
        assert!(r[0].vs_eager.is_none());
        let table = markdown(&r);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 4);
        assert!(
            lines[2].starts_with("| matmul a | 2.0000 |")
                && lines[5].starts_with("| mapper step |")
        );
        assert!(lines[5].contains("| 2.50 | 1.25 |"), "{}", lines[5]);
    }

    #[test]
    fn a_malformed_pytorch_file_is_an_error_that_names_the_line() {
        let e = TorchTimes::parse("{\"case\": \"x\", \"median_ms\": 1}\n{\"case\": \"y\"}\n")
            .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = TorchTimes::parse("not json").unwrap_err();
        assert!(e.contains("line 1: not JSON"), "{e}");
    }
}
