#!/usr/bin/env python3
"""Checks that the simulator's bf16 and fp16 conversions (sim/cuda_sim.h) are bit for bit those
of CUDA's own cuda_bf16.h / cuda_fp16.h (their host code paths, compiled here from the pinned
PyPI toolkit's headers): every one of the 2³² float bit patterns to bf16 and to half, and every
16-bit pattern back to float (NaNs compared as NaN, as the headers give a NaN either way)."""
import glob
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVIDIA = r"""
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <string.h>
extern "C" unsigned short nv_f2bf(float f) { __nv_bfloat16 b = __float2bfloat16(f); unsigned short u; memcpy(&u, &b, 2); return u; }
extern "C" unsigned short nv_f2h(float f) { __half h = __float2half(f); unsigned short u; memcpy(&u, &h, 2); return u; }
extern "C" float nv_bf2f(unsigned short u) { __nv_bfloat16 b; memcpy(&b, &u, 2); return __bfloat162float(b); }
extern "C" float nv_h2f(unsigned short u) { __half h; memcpy(&h, &u, 2); return __half2float(h); }
"""
OURS = r"""
#include "cuda_sim.h"
#include <stdio.h>
extern "C" unsigned short nv_f2bf(float); extern "C" unsigned short nv_f2h(float);
extern "C" float nv_bf2f(unsigned short); extern "C" float nv_h2f(unsigned short);
int main() {
    unsigned long long bad = 0;
    for (unsigned long long i = 0; i <= 0xffffffffull; i++) {
        const float f = __uint_as_float((unsigned)i);
        const __nv_bfloat16 b = __float2bfloat16(f);
        const __half h = __float2half(f);
        if (b.__x != nv_f2bf(f) || h.__x != nv_f2h(f)) {
            if (bad++ < 5) printf("float 0x%08llx: bf16 0x%04x (cuda 0x%04x), half 0x%04x (cuda 0x%04x)\n", i, b.__x, nv_f2bf(f), h.__x, nv_f2h(f));
        }
    }
    for (unsigned u = 0; u <= 0xffff; u++) {
        const float a = __bfloat162float(__ushort_as_bfloat16((unsigned short)u)), b = nv_bf2f((unsigned short)u);
        const float c = __half2float(__ushort_as_half((unsigned short)u)), d = nv_h2f((unsigned short)u);
        if (!(a == b || (a != a && b != b)) || __float_as_uint(a) != __float_as_uint(b) && a == a) bad++;
        if (!(c == d || (c != c && d != d)) || __float_as_uint(c) != __float_as_uint(d) && c == c) bad++;
    }
    printf("conversions: %llu mismatches over 2^32 floats and 2^16 bf16/half patterns\n", bad);
    return bad != 0;
}
"""


def main():
    incs = glob.glob(os.path.join(ROOT, ".venv-nvcc/lib/python3*/site-packages/nvidia/cu13/include"))
    if not incs:
        sys.exit("sim/check_conversions.py: CUDA's headers not found in .venv-nvcc; run scripts/install-nvcc")
    with tempfile.TemporaryDirectory() as d:
        for name, text in (("nv.cpp", NVIDIA), ("ours.cpp", OURS)):
            open(os.path.join(d, name), "w").write(text)
        subprocess.run(["g++", "-O2", "-std=c++17", "-I", incs[0], "-c", os.path.join(d, "nv.cpp"), "-o", os.path.join(d, "nv.o")], check=True)
        subprocess.run(["g++", "-O2", "-std=c++17", "-I", os.path.join(ROOT, "sim"), os.path.join(d, "ours.cpp"), os.path.join(d, "nv.o"), "-o", os.path.join(d, "check")], check=True)
        sys.exit(subprocess.run([os.path.join(d, "check")]).returncode)


if __name__ == "__main__":
    main()
