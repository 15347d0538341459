#!/usr/bin/env python3
"""Counts the device tests of a run from $MINDREADER_DEVICE_LOG (written by testing::gpu()):
how many ran, on which device, and how many were skipped and why. With a second argument, the
simulator's coverage file ($MINDREADER_SIM_COVERAGE): how many of its kernels were launched, and
which never were (sim/selftest kernels aside); a kernel that no test launched fails the run."""
import collections
import sys

path = sys.argv[1]
try:
    lines = open(path).read().splitlines()
except FileNotFoundError:
    print(f"device tests: none ran ({path} was not written)")
    sys.exit(0)
outcome = {}
for line in lines:
    kind, test, detail = (line.split("\t") + ["", ""])[:3]
    # A test that skipped anywhere counts as skipped (the simulator's own tests on a real GPU).
    if kind == "skipped" or test not in outcome:
        outcome[test] = (kind, detail)
ran = collections.Counter(d for k, d in outcome.values() if k == "ran")
skipped = collections.Counter(d for k, d in outcome.values() if k == "skipped")
print(f"device tests: {sum(ran.values())} ran, {sum(skipped.values())} skipped")
for device, n in ran.most_common():
    print(f"  ran on {device}: {n}")
for why, n in skipped.most_common():
    print(f"  skipped ({why}): {n}")

if len(sys.argv) > 2:
    try:
        cov = [l.split("\t") for l in open(sys.argv[2]).read().splitlines()]
    except FileNotFoundError:
        cov = []
    kernels = {(src, name) for _, src, name in cov if src.startswith("kernels/")}
    launched = {(src, name) for kind, src, name in cov if kind == "launched"}
    if kernels:
        never = sorted(kernels - launched)
        print(f"kernels launched on the simulator: {len(kernels) - len(never)} of {len(kernels)}")
        for src, name in never:
            print(f"  never launched: {name} ({src})")
        if never:
            print("every kernel must run in some device test (its parity test against the CPU twin): add one, or delete the dead kernel")
            sys.exit(1)
