// Layer normalisation over the last axis of x viewed as [rows, n] (math in src/ops/layernorm.rs).
// Forward reads x once, writes y once (8 B/element) plus mean and rstd per row; backward dx reads
// x and dy and writes dx (12 B/element); dgamma/dbeta read x and dy once more (8 B/element).
//
// n ≤ 1024: one warp per row, 8 rows per 256-thread block, the row in registers (VPT values per
//   lane at j = lane + 32·k: coalesced). One instantiation per VPT; CLIP's widths 512 and 768 fill
//   VPT 16 and 24 exactly.
// n > 1024: one 512-thread block per row; each thread keeps the elements it read in dynamic shared
//   memory (cache = 1) for the later passes, or re-reads them (L2) when the row does not fit. A thread
//   only touches its own cache slots, so the cache needs no barrier.
// gamma / beta may be absent (has_gamma / has_beta = 0): the pointer is then a dummy never read.
// The variance is two-pass (Σ(x − mean)² over the cached row), never E[x²] − mean².
#include "common.cuh"

// T = float or __nv_bfloat16 (x, gamma, beta, y); the statistics and all arithmetic are f32.
// With `res` non-null this is the fused residual add + layer norm (pre-LN transformers' mid-layer
// step): s = x + res is written to `sum` (rounded to T, as a separate add would store it) and
// normalised from that rounded value, so fused and unfused agree bit for bit. Traffic: reads x and
// res, writes s and y (16 B/element in f32) instead of 12 B for the add and 8 B for the norm.
template <int VPT, typename T>
__device__ __forceinline__ void layernorm_fwd_warp(const T* x, const T* res, T* sum_out, const T* gamma, const T* beta, T* y, float* mean,
                                                   float* rstd, unsigned rows, unsigned n, float eps, int has_gamma, int has_beta) {
    const unsigned lane = threadIdx.x & 31;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const T* xr = x + row * n;
        T* yr = y + row * n;
        float v[VPT];
        float sum = 0.f;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            if (j < n && res) {
                const T s = from_f32<T>(to_f32(xr[j]) + to_f32(res[row * n + j]));
                sum_out[row * n + j] = s;
                v[k] = to_f32(s);
            } else {
                v[k] = j < n ? to_f32(xr[j]) : 0.f;
            }
            sum += v[k];
        }
        const float mu = warp_sum(sum) / n;
        float sq = 0.f;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            v[k] = j < n ? v[k] - mu : 0.f;
            sq += v[k] * v[k];
        }
        const float r = 1.f / sqrtf(warp_sum(sq) / n + eps);
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            if (j < n) {
                float xh = v[k] * r;
                yr[j] = from_f32<T>((has_gamma ? xh * to_f32(gamma[j]) : xh) + (has_beta ? to_f32(beta[j]) : 0.f));
            }
        }
        if (lane == 0) {
            mean[row] = mu;
            rstd[row] = r;
        }
    }
}

// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·gamma.
template <int VPT>
__device__ __forceinline__ void layernorm_bwd_warp(const float* x, const float* gamma, const float* dy, const float* mean,
                                                   const float* rstd, float* dx, unsigned rows, unsigned n, int has_gamma) {
    const unsigned lane = threadIdx.x & 31;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const float* xr = x + row * n;
        const float* gr = dy + row * n;
        float* dxr = dx + row * n;
        const float mu = mean[row], r = rstd[row];
        float xh[VPT], g[VPT];
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            xh[k] = j < n ? (xr[j] - mu) * r : 0.f;
            g[k] = j < n ? (has_gamma ? gr[j] * gamma[j] : gr[j]) : 0.f;
            sg += g[k];
            sgx += g[k] * xh[k];
        }
        const float mg = warp_sum(sg) / n, mgx = warp_sum(sgx) / n;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            unsigned j = lane + 32 * k;
            if (j < n) dxr[j] = r * (g[k] - mg - xh[k] * mgx);
        }
    }
}

#define LAYERNORM_WARP_KERNELS(VPT)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256)                                                                  \
        layernorm_fwd_w##VPT##_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean,       \
                                   float* rstd, unsigned rows, unsigned n, float eps, int has_gamma, int has_beta) {    \
        layernorm_fwd_warp<VPT>(x, (const float*)nullptr, (float*)nullptr, gamma, beta, y, mean, rstd, rows, n, eps,   \
                                has_gamma, has_beta);                                                                  \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                                  \
        add_layernorm_fwd_w##VPT##_f32(const float* x, const float* res, float* sum, const float* gamma,               \
                                       const float* beta, float* y, float* mean, float* rstd, unsigned rows,           \
                                       unsigned n, float eps, int has_gamma, int has_beta) {                           \
        layernorm_fwd_warp<VPT>(x, res, sum, gamma, beta, y, mean, rstd, rows, n, eps, has_gamma, has_beta);           \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                                  \
        layernorm_bwd_w##VPT##_f32(const float* x, const float* gamma, const float* dy, const float* mean,             \
                                   const float* rstd, float* dx, unsigned rows, unsigned n, int has_gamma) {           \
        layernorm_bwd_warp<VPT>(x, gamma, dy, mean, rstd, dx, rows, n, has_gamma);                                     \
    }

// bf16 forward (inference): same kernels on bf16 rows, f32 statistics.
#define LAYERNORM_WARP_BF16_KERNEL(VPT)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                                            \
        layernorm_fwd_w##VPT##_bf16(const __nv_bfloat16* x, const __nv_bfloat16* gamma, const __nv_bfloat16* beta,              \
                                    __nv_bfloat16* y, float* mean, float* rstd, unsigned rows, unsigned n, float eps,             \
                                    int has_gamma, int has_beta) {                                                                \
        layernorm_fwd_warp<VPT>(x, (const __nv_bfloat16*)nullptr, (__nv_bfloat16*)nullptr, gamma, beta, y, mean, rstd, rows, n,  \
                                eps, has_gamma, has_beta);                                                                \
    }                                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                                                            \
        add_layernorm_fwd_w##VPT##_bf16(const __nv_bfloat16* x, const __nv_bfloat16* res, __nv_bfloat16* sum,                    \
                                        const __nv_bfloat16* gamma, const __nv_bfloat16* beta, __nv_bfloat16* y, float* mean,      \
                                        float* rstd, unsigned rows, unsigned n, float eps, int has_gamma, int has_beta) {         \
        layernorm_fwd_warp<VPT>(x, res, sum, gamma, beta, y, mean, rstd, rows, n, eps, has_gamma, has_beta);                     \
    }

// The row widths 32·VPT these cover are listed in WARP_KERNELS in src/ops/layernorm.rs.
LAYERNORM_WARP_KERNELS(1)
LAYERNORM_WARP_KERNELS(2)
LAYERNORM_WARP_KERNELS(4)
LAYERNORM_WARP_KERNELS(8)
LAYERNORM_WARP_KERNELS(16)
LAYERNORM_WARP_KERNELS(24)
LAYERNORM_WARP_KERNELS(32)
LAYERNORM_WARP_BF16_KERNEL(1)
LAYERNORM_WARP_BF16_KERNEL(2)
LAYERNORM_WARP_BF16_KERNEL(4)
LAYERNORM_WARP_BF16_KERNEL(8)
LAYERNORM_WARP_BF16_KERNEL(16)
LAYERNORM_WARP_BF16_KERNEL(24)
LAYERNORM_WARP_BF16_KERNEL(32)

// One block per row (grid-stride over rows); cache != 0 needs n floats of dynamic shared memory.
template <typename T>
__device__ __forceinline__ void layernorm_fwd_block(const T* x, const T* gamma, const T* beta, T* y, float* mean, float* rstd,
                                                    unsigned rows, unsigned n, float eps, int has_gamma, int has_beta, int cache) {
    DYNAMIC_SMEM(float, row_cache);
    __shared__ float scratch[32];
    for (unsigned row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + (u64)row * n;
        T* yr = y + (u64)row * n;
        float sum = 0.f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float v = to_f32(xr[j]);
            if (cache) row_cache[j] = v;
            sum += v;
        }
        const float mu = block_sum(sum, scratch) / n;
        float sq = 0.f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float d = (cache ? row_cache[j] : to_f32(xr[j])) - mu;
            sq += d * d;
        }
        const float r = 1.f / sqrtf(block_sum(sq, scratch) / n + eps);
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float xh = ((cache ? row_cache[j] : to_f32(xr[j])) - mu) * r;
            yr[j] = from_f32<T>((has_gamma ? xh * to_f32(gamma[j]) : xh) + (has_beta ? to_f32(beta[j]) : 0.f));
        }
        if (threadIdx.x == 0) {
            mean[row] = mu;
            rstd[row] = r;
        }
    }
}

extern "C" __global__ void __launch_bounds__(512)
    layernorm_fwd_block_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                            unsigned rows, unsigned n, float eps, int has_gamma, int has_beta, int cache) {
    layernorm_fwd_block(x, gamma, beta, y, mean, rstd, rows, n, eps, has_gamma, has_beta, cache);
}

extern "C" __global__ void __launch_bounds__(512)
    layernorm_fwd_block_bf16(const __nv_bfloat16* x, const __nv_bfloat16* gamma, const __nv_bfloat16* beta, __nv_bfloat16* y,
                             float* mean, float* rstd, unsigned rows, unsigned n, float eps, int has_gamma, int has_beta, int cache) {
    layernorm_fwd_block(x, gamma, beta, y, mean, rstd, rows, n, eps, has_gamma, has_beta, cache);
}

// One block per row; cache != 0 needs 2n floats of dynamic shared memory (x̂, then g).
extern "C" __global__ void __launch_bounds__(512)
    layernorm_bwd_block_f32(const float* x, const float* gamma, const float* dy, const float* mean, const float* rstd,
                            float* dx, unsigned rows, unsigned n, int has_gamma, int cache) {
    DYNAMIC_SMEM(float, row_cache);
    __shared__ float scratch[32];
    for (unsigned row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + (u64)row * n;
        const float* gr = dy + (u64)row * n;
        float* dxr = dx + (u64)row * n;
        const float mu = mean[row], r = rstd[row];
        float sg = 0.f, sgx = 0.f;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float xh = (xr[j] - mu) * r;
            float g = has_gamma ? gr[j] * gamma[j] : gr[j];
            if (cache) {
                row_cache[j] = xh;
                row_cache[n + j] = g;
            }
            sg += g;
            sgx += g * xh;
        }
        const float mg = block_sum(sg, scratch) / n;
        const float mgx = block_sum(sgx, scratch) / n;
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
            float xh = cache ? row_cache[j] : (xr[j] - mu) * r;
            float g = cache ? row_cache[n + j] : (has_gamma ? gr[j] * gamma[j] : gr[j]);
            dxr[j] = r * (g - mg - xh * mgx);
        }
    }
}

// dgamma[c] = Σ_rows dy·x̂, dbeta[c] = Σ_rows dy, in two deterministic passes (no atomics).
// Pass 1: a 32×8 block covers 32 columns (threadIdx.x: consecutive columns, so every row's read is
// one coalesced 128-byte line) of one chunk of rows (blockIdx.y); the 8 row-lanes are summed in
// shared memory. partials = [2, chunks, n]: dgamma partials, then dbeta partials.
extern "C" __global__ void __launch_bounds__(256)
    layernorm_param_grad_partial_f32(const float* x, const float* dy, const float* mean, const float* rstd, float* partials,
                                     unsigned rows, unsigned n, unsigned rows_per_chunk) {
    __shared__ float sg[8][33], sb[8][33];
    const unsigned c = blockIdx.x * 32 + threadIdx.x;
    const unsigned r0 = blockIdx.y * rows_per_chunk;
    const unsigned r1 = min(rows, r0 + rows_per_chunk);
    float ag = 0.f, ab = 0.f;
    if (c < n) {
        for (unsigned r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
            u64 i = (u64)r * n + c;
            float d = dy[i];
            ag += d * ((x[i] - mean[r]) * rstd[r]);
            ab += d;
        }
    }
    sg[threadIdx.y][threadIdx.x] = ag;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < n) {
        for (int k = 1; k < 8; k++) {
            ag += sg[k][threadIdx.x];
            ab += sb[k][threadIdx.x];
        }
        partials[(u64)blockIdx.y * n + c] = ag;
        partials[((u64)gridDim.y + blockIdx.y) * n + c] = ab;
    }
}

// Pass 2: one thread per column sums its `chunks` partials (coalesced across columns).
extern "C" __global__ void layernorm_param_grad_finish_f32(const float* partials, float* dgamma, float* dbeta, unsigned chunks,
                                                           unsigned n) {
    FOR_EACH(c, n) {
        float g = 0.f, b = 0.f;
        for (unsigned k = 0; k < chunks; k++) {
            g += partials[(u64)k * n + c];
            b += partials[((u64)chunks + k) * n + c];
        }
        dgamma[c] = g;
        dbeta[c] = b;
    }
}
