// Softmax and log-softmax over the last axis of x viewed as [rows, n] (math in src/ops/softmax.rs).
// Forward reads x once and writes y once (8 B/element); backward reads y and dy, writes dx (12 B/element).
//
// n ≤ 1024: one warp per row, 8 rows per 256-thread block; the row lives in registers, VPT values
//   per lane at j = lane + 32·k (so every load and store is a coalesced 128-byte line). One
//   instantiation per VPT (softmax_fwd_w<VPT>_f32): a short row pays only for the registers it uses.
// n > 1024: one 512-thread block per row. Each thread keeps the elements it read in dynamic shared
//   memory (cache = 1: the launch gives n floats forward, 2n backward) and reuses them in the second
//   pass; rows too long for that re-read them (L2-resident by then). A thread only ever touches its
//   own slots of the cache, so the cache needs no barrier.
#include "common.cuh"

// Adds x to a running (m, s) = (max, Σ exp(v − m)): the online softmax normaliser. -inf entries
// (masked logits) add nothing; NaN propagates into s.
__device__ __forceinline__ void online_push(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.f;  // m = -inf the first time: s = 0·0 + 1
        m = x;
    } else {
        s += x == -INFINITY ? 0.f : expf(x - m);
    }
}

template <int VPT>
__device__ __forceinline__ void softmax_fwd_warp(const float* x, float* y, unsigned rows, unsigned n, int log_out) {
    const unsigned lane = threadIdx.x & 31;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const float* xr = x + row * n;
        float* yr = y + row * n;
        float v[VPT];
        float m = -INFINITY;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            v[k] = j < n ? xr[j] : -INFINITY;
            m = fmaxf(m, v[k]);
        }
        m = warp_max(m);
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            float e = j < n ? expf(v[k] - m) : 0.f;
            s += e;
            v[k] = log_out ? v[k] : e;  // softmax keeps e = exp(x − m); log-softmax keeps x
        }
        s = warp_sum(s);
        const float log_s = logf(s);
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            if (j < n) yr[j] = log_out ? (v[k] - m) - log_s : v[k] / s;
        }
    }
}

template <int VPT>
__device__ __forceinline__ void softmax_bwd_warp(const float* y, const float* dy, float* dx, unsigned rows, unsigned n, int log_out) {
    const unsigned lane = threadIdx.x & 31;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const float* yr = y + row * n;
        const float* gr = dy + row * n;
        float* dxr = dx + row * n;
        float yv[VPT], g[VPT];
        float dot = 0.f;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            yv[k] = j < n ? yr[j] : 0.f;
            g[k] = j < n ? gr[j] : 0.f;
            dot += log_out ? g[k] : g[k] * yv[k];
        }
        dot = warp_sum(dot);
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            if (j < n) dxr[j] = log_out ? g[k] - expf(yv[k]) * dot : yv[k] * (g[k] - dot);
        }
    }
}

#define SOFTMAX_WARP_KERNELS(VPT)                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                  \
        softmax_fwd_w##VPT##_f32(const float* x, float* y, unsigned rows, unsigned n, int log_out) {                   \
        softmax_fwd_warp<VPT>(x, y, rows, n, log_out);                                                                 \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                                  \
        softmax_bwd_w##VPT##_f32(const float* y, const float* dy, float* dx, unsigned rows, unsigned n, int log_out) { \
        softmax_bwd_warp<VPT>(y, dy, dx, rows, n, log_out);                                                            \
    }

// The row widths 32·VPT these cover are listed in WARP_KERNELS in src/ops/softmax.rs.
SOFTMAX_WARP_KERNELS(1)
SOFTMAX_WARP_KERNELS(2)
SOFTMAX_WARP_KERNELS(4)
SOFTMAX_WARP_KERNELS(8)
SOFTMAX_WARP_KERNELS(16)
SOFTMAX_WARP_KERNELS(24)
SOFTMAX_WARP_KERNELS(32)

// One block per row (grid-stride over rows); cache != 0 needs n floats of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(512)
    softmax_fwd_block_f32(const float* x, float* y, unsigned rows, unsigned n, int log_out, int cache) {
    DYNAMIC_SMEM(float, row_cache);
    __shared__ float scratch[32];
    for (unsigned row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + (u64)row * n;
        float* yr = y + (u64)row * n;
        float m = -INFINITY, s = 0.f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float v = xr[j];
            if (cache) row_cache[j] = v;
            online_push(m, s, v);
        }
        const float row_max = block_max(m, scratch);
        // Rescale this thread's sum to the row max (a thread that saw only -inf holds s = 0).
        s = m == -INFINITY ? 0.f : s * expf(m - row_max);
        s = block_sum(s, scratch);
        const float log_s = logf(s);
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float v = cache ? row_cache[j] : xr[j];
            yr[j] = log_out ? (v - row_max) - log_s : expf(v - row_max) / s;
        }
    }
}

// One block per row; cache != 0 needs 2n floats of dynamic shared memory (y, then dy).
extern "C" __global__ void __launch_bounds__(512)
    softmax_bwd_block_f32(const float* y, const float* dy, float* dx, unsigned rows, unsigned n, int log_out, int cache) {
    DYNAMIC_SMEM(float, row_cache);
    __shared__ float scratch[32];
    for (unsigned row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* yr = y + (u64)row * n;
        const float* gr = dy + (u64)row * n;
        float* dxr = dx + (u64)row * n;
        float dot = 0.f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float yv = yr[j], g = gr[j];
            if (cache) {
                row_cache[j] = yv;
                row_cache[n + j] = g;
            }
            dot += log_out ? g : g * yv;
        }
        dot = block_sum(dot, scratch);
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float yv = cache ? row_cache[j] : yr[j];
            float g = cache ? row_cache[n + j] : gr[j];
            dxr[j] = log_out ? g - expf(yv) * dot : yv * (g - dot);
        }
    }
}
