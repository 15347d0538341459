#!/usr/bin/env python3
"""Joins `mindreader bench --json` and `benches/torch_reference.py --json` by case name and prints
a Markdown table with the ratio (PyTorch time / mindreader time: > 1 means mindreader is faster)."""
import json, sys

def load(path):
    with open(path) as f:
        return {d["case"]: d for d in map(json.loads, filter(str.strip, f))}

ours, torch = load(sys.argv[1]), load(sys.argv[2])
print("| case | mindreader ms | PyTorch ms | PyTorch/mindreader | TFLOP/s | GB/s | max rel err |")
print("|---|---:|---:|---:|---:|---:|---:|")
for case, m in ours.items():
    t = torch.get(case)
    tc = torch.get(case + " (torch.compile)")
    if tc:
        print(f"| {case} vs torch.compile | {m['median_ms']:.4f} | {tc['median_ms']:.4f} | {tc['median_ms'] / m['median_ms']:.2f} | | | |")
    tm = f"{t['median_ms']:.4f}" if t else "-"
    ratio = f"{t['median_ms'] / m['median_ms']:.2f}" if t else "-"
    err = f"{m['max_rel_err']:.1e}" if m.get("max_rel_err") is not None else "-"
    print(f"| {case} | {m['median_ms']:.4f} | {tm} | {ratio} | {m['tflops']:.2f} | {m['gbps']:.1f} | {err} |")
