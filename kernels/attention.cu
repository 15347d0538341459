// Multi-head scaled-dot-product attention, fused (math in src/ops/attention.rs).
// q, k, v, o are [BH, T, D] (BH = batch·heads), lse is [BH, T]; D ≤ 32·DC.
//
// attention_fwd_dc<DC>_f32: one 128-thread block per (bh, tile of 16 queries); each of the 4 warps
//   owns 4 queries. Keys and values stream through shared memory 32 at a time; lane j scores key j
//   against a query (the K tile has a padded row stride D + 1 so the 32 lanes hit 32 banks), the
//   warp folds the 32 scores into the query's running (max, sum) — the online softmax — and each
//   lane accumulates output dims d = lane + 32·c with p_j broadcast by shuffle. The T×T scores live
//   only in registers: global traffic is q, o once, k and v once per query tile, lse 4 B per row.
// attention_probs_f32: P[bh, i, j] = exp(S[bh, i, j]·scale − lse[bh, i]) (0 where masked), used by
//   the backward (which is composed from matmul/softmax-backward launches on the device).
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_QPW 4                        // queries per warp
#define ATT_QTILE (ATT_WARPS * ATT_QPW)  // queries per block
#define ATT_KTILE 32                     // keys per shared-memory tile (one per lane)

// T = float or __nv_bfloat16 for q, k, v, o; shared tiles, scores and lse are f32.
template <int DC, typename T>
__device__ __forceinline__ void attention_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                              T* __restrict__ o, float* __restrict__ lse, unsigned t, unsigned d, float scale,
                                              int causal) {
    constexpr int DMAX = 32 * DC;
    __shared__ float q_s[ATT_QTILE][DMAX];
    __shared__ float k_s[ATT_KTILE][DMAX + 1];
    __shared__ float v_s[ATT_KTILE][DMAX];
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u64 bh = blockIdx.y;
    const unsigned q0 = blockIdx.x * ATT_QTILE;
    const T* qb = q + bh * t * d;
    const T* kb = k + bh * t * d;
    const T* vb = v + bh * t * d;

    // Stage this block's queries, pre-scaled (rows past T are zero and never written back).
    for (unsigned e = threadIdx.x; e < ATT_QTILE * DMAX; e += blockDim.x) {
        unsigned r = e / DMAX, c = e % DMAX;
        q_s[r][c] = (q0 + r < t && c < d) ? to_f32(qb[(u64)(q0 + r) * d + c]) * scale : 0.f;
    }
    float m[ATT_QPW], l[ATT_QPW], acc[ATT_QPW][DC];
#pragma unroll
    for (int i = 0; i < ATT_QPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int c = 0; c < DC; c++) acc[i][c] = 0.f;
    }
    // Causal: keys past the block's last query are masked for every query here.
    const unsigned last_q = min(q0 + ATT_QTILE, t);  // one past
    const unsigned t_keys = causal ? last_q : t;
    for (unsigned k0 = 0; k0 < t_keys; k0 += ATT_KTILE) {
        __syncthreads();  // the previous tile is consumed (and q_s is staged, the first time)
        for (unsigned e = threadIdx.x; e < ATT_KTILE * DMAX; e += blockDim.x) {
            unsigned r = e / DMAX, c = e % DMAX;
            bool in = k0 + r < t && c < d;
            k_s[r][c] = in ? to_f32(kb[(u64)(k0 + r) * d + c]) : 0.f;
            v_s[r][c] = in ? to_f32(vb[(u64)(k0 + r) * d + c]) : 0.f;
        }
        __syncthreads();
        const unsigned key = k0 + lane;
#pragma unroll
        for (int i = 0; i < ATT_QPW; i++) {
            const unsigned qi = q0 + warp * ATT_QPW + i;
            const float* qr = q_s[warp * ATT_QPW + i];
            float s = 0.f;
            for (unsigned c = 0; c < d; c++) s += qr[c] * k_s[lane][c];
            const bool masked = key >= t || (causal && key > qi);
            s = masked ? -INFINITY : s;
            const float tile_max = warp_max(s);
            const float m_new = fmaxf(m[i], tile_max);
            // Rows past T (qi ≥ t) may see only masked keys: m_new = -inf, keep everything 0.
            const float p = m_new == -INFINITY ? 0.f : expf(s - m_new);
            const float corr = m_new == -INFINITY ? 1.f : expf(m[i] - m_new);
            l[i] = l[i] * corr + warp_sum(p);
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < DC; c++) acc[i][c] *= corr;
            for (int j = 0; j < ATT_KTILE; j++) {
                const float pj = __shfl_sync(0xffffffff, p, j);
#pragma unroll
                for (int c = 0; c < DC; c++) acc[i][c] += pj * v_s[j][lane + 32 * c];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < ATT_QPW; i++) {
        const unsigned qi = q0 + warp * ATT_QPW + i;
        if (qi >= t) continue;
        const float inv = 1.f / l[i];
#pragma unroll
        for (int c = 0; c < DC; c++) {
            const unsigned dd = lane + 32 * c;
            if (dd < d) o[(bh * t + qi) * d + dd] = from_f32<T>(acc[i][c] * inv);
        }
        if (lane == 0) lse[bh * t + qi] = m[i] + logf(l[i]);
    }
}

#define ATTENTION_FWD_KERNEL(DC)                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)                                                              \
        attention_fwd_dc##DC##_f32(const float* q, const float* k, const float* v, float* o, float* lse, unsigned t, unsigned d, \
                                   float scale, int causal) {                                                                 \
        attention_fwd<DC>(q, k, v, o, lse, t, d, scale, causal);                                                              \
    }

#define ATTENTION_FWD_BF16_KERNEL(DC)                                                                                        \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)                                                              \
        attention_fwd_dc##DC##_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* o,  \
                                    float* lse, unsigned t, unsigned d, float scale, int causal) {                             \
        attention_fwd<DC>(q, k, v, o, lse, t, d, scale, causal);                                                              \
    }

// Head dims up to 32·DC; the Rust side picks the smallest that fits (FWD_KERNELS in attention.rs).
ATTENTION_FWD_KERNEL(1)
ATTENTION_FWD_KERNEL(2)
ATTENTION_FWD_KERNEL(4)
ATTENTION_FWD_BF16_KERNEL(1)
ATTENTION_FWD_BF16_KERNEL(2)
ATTENTION_FWD_BF16_KERNEL(4)

// s holds S = Q·Kᵀ (unscaled) as [BH, T, T]; overwritten with P. One thread per element.
extern "C" __global__ void attention_probs_f32(float* s, const float* lse, unsigned bh, unsigned t, float scale, int causal) {
    FOR_EACH(e, (u64)bh * t * t) {
        const u64 row = e / t;
        const unsigned i = row % t, j = e % t;
        s[e] = (causal && j > i) ? 0.f : expf(s[e] * scale - lse[row]);
    }
}
