//! The `mindreader` binary as a user runs it: exit codes and what it prints.

use std::process::Command;

/// The binary under test: `$MINDREADER_BIN` (the GPU bundle sets it), else cargo's build.
fn mindreader() -> Command {
    let path = std::env::var("MINDREADER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mindreader").to_string());
    Command::new(path)
}

fn run_ok(args: &[&str]) -> String {
    let out = mindreader().args(args).output().expect("run mindreader");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mindreader {args:?} failed:\n{text}");
    text
}

#[test]
fn info_lists_embedded_kernels_and_devices() {
    let text = run_ok(&["info", "--kernels"]);
    assert!(text.contains("kernels:"), "{text}");
    assert!(text.contains("gpu"), "{text}");
    if std::env::var("MINDREADER_REQUIRE_KERNELS").is_ok_and(|v| v == "1") {
        for family in ["elementwise", "matmul", "conv1d", "softmax", "layernorm", "adam"] {
            assert!(text.contains(family), "kernel family {family} missing:\n{text}");
        }
        assert!(text.contains("registers"), "{text}");
    }
}

#[test]
fn bench_quick_validates_and_times_every_case() {
    let json = std::env::temp_dir().join(format!("mindreader-bench-{}.jsonl", std::process::id()));
    let text = run_ok(&["bench", "--quick", "--iters", "3", "--warmup", "1", "--json", json.to_str().unwrap()]);
    for case in ["matmul f32", "matmul bf16", "conv1d k3", "conv1d stem", "softmax", "layer_norm", "adam", "mapper train step"] {
        assert!(text.contains(case), "case {case} missing:\n{text}");
    }
    let lines = std::fs::read_to_string(&json).unwrap();
    assert_eq!(lines.lines().count(), 9, "{lines}");
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["median_ms"].as_f64().unwrap() > 0.0, "{line}");
    }
    std::fs::remove_file(json).ok();
}

#[test]
fn demo_learns_far_above_chance() {
    let text = run_ok(&["demo", "--device", "cpu", "--epochs", "8", "--train", "1000", "--voxels", "256"]);
    let line = text.lines().find(|l| l.contains("top-1 retrieval")).unwrap_or_else(|| panic!("{text}"));
    let pct: f32 = line.split(": ").nth(1).unwrap().split('%').next().unwrap().trim().parse().unwrap();
    assert!(pct > 10.0, "300-way top-1 {pct}% is not far above chance (0.33%):\n{text}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = mindreader().args(["demo", "--device", "tpu"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown device `tpu`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
