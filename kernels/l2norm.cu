// L2 normalisation over the last axis of x viewed as [rows, n] (math in src/ops/l2norm.rs).
// Forward reads x once, writes y once (8 B/element) and ‖x‖ per row; backward reads y and dy,
// writes dx (12 B/element).
//
// n ≤ 1024: one warp per row, 8 rows per 256-thread block; the row lives in registers, VPT values
//   per lane at j = lane + 32·k (coalesced). One instantiation per VPT; CLIP's 512-wide embeddings
//   use VPT 16.
// n > 1024: one 512-thread block per row. Each thread keeps the elements it read in dynamic shared
//   memory (cache = 1: n floats forward, 2n backward) for the second pass, or re-reads them (L2) when
//   the row does not fit. A thread only touches its own cache slots, so the cache needs no barrier.
// The divisor is `norm < eps ? eps : norm`, so a NaN norm stays NaN (as PyTorch's clamp_min).
#include "common.cuh"

template <int VPT>
__device__ __forceinline__ void l2norm_fwd_warp(const float* x, float* y, float* norm, unsigned rows, unsigned n, float eps) {
    const unsigned lane = threadIdx.x & 31;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const float* xr = x + row * n;
        float* yr = y + row * n;
        float v[VPT];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            v[k] = j < n ? xr[j] : 0.f;
            ss += v[k] * v[k];
        }
        const float nrm = sqrtf(warp_sum(ss));
        const float d = nrm < eps ? eps : nrm;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            if (j < n) yr[j] = v[k] / d;
        }
        if (lane == 0) norm[row] = nrm;
    }
}

// dx = (dy − y·Σ dy⊙y) / ‖x‖ where ‖x‖ > eps, else dy / eps.
template <int VPT>
__device__ __forceinline__ void l2norm_bwd_warp(const float* y, const float* dy, const float* norm, float* dx, unsigned rows, unsigned n,
                                                float eps) {
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
            dot += g[k] * yv[k];
        }
        dot = warp_sum(dot);
        const float nrm = norm[row];
        const bool above = nrm > eps;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            if (j < n) dxr[j] = above ? (g[k] - yv[k] * dot) / nrm : g[k] / eps;
        }
    }
}

#define L2NORM_WARP_KERNELS(VPT)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                                     \
        l2norm_fwd_w##VPT##_f32(const float* x, float* y, float* norm, unsigned rows, unsigned n, float eps) {            \
        l2norm_fwd_warp<VPT>(x, y, norm, rows, n, eps);                                                                   \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) l2norm_bwd_w##VPT##_f32(                                            \
        const float* y, const float* dy, const float* norm, float* dx, unsigned rows, unsigned n, float eps) {            \
        l2norm_bwd_warp<VPT>(y, dy, norm, dx, rows, n, eps);                                                              \
    }

// The row widths 32·VPT these cover are listed in WARP_KERNELS in src/ops/l2norm.rs.
L2NORM_WARP_KERNELS(1)
L2NORM_WARP_KERNELS(2)
L2NORM_WARP_KERNELS(4)
L2NORM_WARP_KERNELS(8)
L2NORM_WARP_KERNELS(16)
L2NORM_WARP_KERNELS(24)
L2NORM_WARP_KERNELS(32)

// One block per row (grid-stride over rows); cache != 0 needs n floats of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(512)
    l2norm_fwd_block_f32(const float* x, float* y, float* norm, unsigned rows, unsigned n, float eps, int cache) {
    DYNAMIC_SMEM(float, row_cache);
    __shared__ float scratch[32];
    for (unsigned row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + (u64)row * n;
        float* yr = y + (u64)row * n;
        float ss = 0.f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float v = xr[j];
            if (cache) row_cache[j] = v;
            ss += v * v;
        }
        const float nrm = sqrtf(block_sum(ss, scratch));
        const float d = nrm < eps ? eps : nrm;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) yr[j] = (cache ? row_cache[j] : xr[j]) / d;
        if (threadIdx.x == 0) norm[row] = nrm;
    }
}

// One block per row; cache != 0 needs 2n floats of dynamic shared memory (y, then dy).
extern "C" __global__ void __launch_bounds__(512) l2norm_bwd_block_f32(const float* y, const float* dy, const float* norm, float* dx,
                                                                       unsigned rows, unsigned n, float eps, int cache) {
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
            dot += g * yv;
        }
        dot = block_sum(dot, scratch);
        const float nrm = norm[row];
        const bool above = nrm > eps;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float yv = cache ? row_cache[j] : yr[j];
            float g = cache ? row_cache[n + j] : gr[j];
            dxr[j] = above ? (g - yv * dot) / nrm : g / eps;
        }
    }
}
