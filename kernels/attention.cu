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

// ---- Fused backward (FlashAttention-2 style, deterministic: no atomics) -------------------------
// With P = exp(s·Q·Kᵀ − lse) recomputed from q, k and the forward's lse, δ_i = Σ_d dO[i,d]·O[i,d]:
//   dV_j = Σ_i P_ij·dO_i,  dS_ij = P_ij·(dO_i·V_j − δ_i),  dK_j = s·Σ_i dS_ij·Q_i,  dQ_i = s·Σ_j dS_ij·K_j.
// Two kernels so that every output element has exactly one writer: attention_bwd_dkdv (one
// 128-thread block per (bh, 8 keys): each warp owns 2 keys, lane j scores query q0 + j of a
// 32-query shared tile) and attention_bwd_dq (one block per (bh, 8 queries): each warp owns 2
// queries, lane j scores key k0 + j of a 32-key shared tile). Both recompute S (2× the forward's
// Q·Kᵀ) instead of storing the T×T matrices: global traffic is q, k, v, dO read once per tile of
// the other side, dq/dk/dv written once. Padded row strides (D + 1) keep lane-indexed rows on
// distinct banks. Static shared memory ≤ 41 KiB at D = 128.
#define BWD_KPB 8   // keys per dK/dV block (2 per warp)
#define BWD_QPB 8   // queries per dQ block (2 per warp)

// δ_i = Σ_d dO[i, d]·O[i, d], one warp per row of [BH·T, D] (lanes read consecutive d: coalesced).
extern "C" __global__ void attention_delta_f32(const float* o, const float* dout, float* delta, u64 rows, unsigned d) {
    const unsigned lane = threadIdx.x & 31;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 r = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        float acc = 0.f;
        for (unsigned c = lane; c < d; c += 32) acc += o[r * d + c] * dout[r * d + c];
        acc = warp_sum(acc);
        if (lane == 0) delta[r] = acc;
    }
}

template <int DC>
__device__ __forceinline__ void attention_bwd_dkdv(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                   const float* __restrict__ dout, const float* __restrict__ lse,
                                                   const float* __restrict__ delta, float* __restrict__ dk, float* __restrict__ dv,
                                                   unsigned t, unsigned d, float scale, int causal) {
    constexpr int DMAX = 32 * DC;
    __shared__ float k_s[BWD_KPB][DMAX];
    __shared__ float v_s[BWD_KPB][DMAX];
    __shared__ float q_s[ATT_KTILE][DMAX + 1];
    __shared__ float do_s[ATT_KTILE][DMAX + 1];
    __shared__ float lse_s[ATT_KTILE], delta_s[ATT_KTILE];
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u64 bh = blockIdx.y;
    const unsigned k0 = blockIdx.x * BWD_KPB;
    const u64 base = bh * t * d;
    for (unsigned e = threadIdx.x; e < BWD_KPB * DMAX; e += blockDim.x) {
        unsigned r = e / DMAX, c = e % DMAX;
        bool in = k0 + r < t && c < d;
        k_s[r][c] = in ? k[base + (u64)(k0 + r) * d + c] : 0.f;
        v_s[r][c] = in ? v[base + (u64)(k0 + r) * d + c] : 0.f;
    }
    float acc_k[2][DC], acc_v[2][DC];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int c = 0; c < DC; c++) acc_k[i][c] = acc_v[i][c] = 0.f;
    // Causal: queries before the first key of this block see none of its keys.
    const unsigned q_start = causal ? (k0 / ATT_KTILE) * ATT_KTILE : 0;
    for (unsigned q0 = q_start; q0 < t; q0 += ATT_KTILE) {
        __syncthreads();  // the previous query tile is consumed (and k_s/v_s staged, the first time)
        for (unsigned e = threadIdx.x; e < ATT_KTILE * DMAX; e += blockDim.x) {
            unsigned r = e / DMAX, c = e % DMAX;
            bool in = q0 + r < t && c < d;
            q_s[r][c] = in ? q[base + (u64)(q0 + r) * d + c] : 0.f;
            do_s[r][c] = in ? dout[base + (u64)(q0 + r) * d + c] : 0.f;
        }
        if (threadIdx.x < ATT_KTILE) {
            bool in = q0 + threadIdx.x < t;
            lse_s[threadIdx.x] = in ? lse[bh * t + q0 + threadIdx.x] : 0.f;
            delta_s[threadIdx.x] = in ? delta[bh * t + q0 + threadIdx.x] : 0.f;
        }
        __syncthreads();
        const unsigned qi = q0 + lane;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const unsigned kr = warp * 2 + i, key = k0 + kr;
            float s = 0.f, dp = 0.f;
            for (unsigned c = 0; c < d; c++) {
                s += q_s[lane][c] * k_s[kr][c];
                dp += do_s[lane][c] * v_s[kr][c];
            }
            const bool masked = qi >= t || key >= t || (causal && key > qi);
            const float p = masked ? 0.f : expf(s * scale - lse_s[lane]);
            const float ds = p * (dp - delta_s[lane]);
            for (int j = 0; j < ATT_KTILE; j++) {
                const float pj = __shfl_sync(0xffffffff, p, j);
                const float dsj = __shfl_sync(0xffffffff, ds, j);
#pragma unroll
                for (int c = 0; c < DC; c++) {
                    acc_v[i][c] += pj * do_s[j][lane + 32 * c];
                    acc_k[i][c] += dsj * q_s[j][lane + 32 * c];
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const unsigned key = k0 + warp * 2 + i;
        if (key >= t) continue;
#pragma unroll
        for (int c = 0; c < DC; c++) {
            const unsigned dd = lane + 32 * c;
            if (dd < d) {
                dk[base + (u64)key * d + dd] = acc_k[i][c] * scale;
                dv[base + (u64)key * d + dd] = acc_v[i][c];
            }
        }
    }
}

template <int DC>
__device__ __forceinline__ void attention_bwd_dq(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                 const float* __restrict__ dout, const float* __restrict__ lse,
                                                 const float* __restrict__ delta, float* __restrict__ dq, unsigned t, unsigned d,
                                                 float scale, int causal) {
    constexpr int DMAX = 32 * DC;
    __shared__ float q_s[BWD_QPB][DMAX];
    __shared__ float do_s[BWD_QPB][DMAX];
    __shared__ float k_s[ATT_KTILE][DMAX + 1];
    __shared__ float v_s[ATT_KTILE][DMAX + 1];
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u64 bh = blockIdx.y;
    const unsigned q0 = blockIdx.x * BWD_QPB;
    const u64 base = bh * t * d;
    for (unsigned e = threadIdx.x; e < BWD_QPB * DMAX; e += blockDim.x) {
        unsigned r = e / DMAX, c = e % DMAX;
        bool in = q0 + r < t && c < d;
        q_s[r][c] = in ? q[base + (u64)(q0 + r) * d + c] : 0.f;
        do_s[r][c] = in ? dout[base + (u64)(q0 + r) * d + c] : 0.f;
    }
    float l[2], dl[2], acc[2][DC];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const unsigned qi = q0 + warp * 2 + i;
        l[i] = qi < t ? lse[bh * t + qi] : 0.f;
        dl[i] = qi < t ? delta[bh * t + qi] : 0.f;
#pragma unroll
        for (int c = 0; c < DC; c++) acc[i][c] = 0.f;
    }
    const unsigned t_keys = causal ? min(q0 + BWD_QPB, t) : t;
    for (unsigned k0 = 0; k0 < t_keys; k0 += ATT_KTILE) {
        __syncthreads();
        for (unsigned e = threadIdx.x; e < ATT_KTILE * DMAX; e += blockDim.x) {
            unsigned r = e / DMAX, c = e % DMAX;
            bool in = k0 + r < t && c < d;
            k_s[r][c] = in ? k[base + (u64)(k0 + r) * d + c] : 0.f;
            v_s[r][c] = in ? v[base + (u64)(k0 + r) * d + c] : 0.f;
        }
        __syncthreads();
        const unsigned key = k0 + lane;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const unsigned qr = warp * 2 + i, qi = q0 + qr;
            float s = 0.f, dp = 0.f;
            for (unsigned c = 0; c < d; c++) {
                s += q_s[qr][c] * k_s[lane][c];
                dp += do_s[qr][c] * v_s[lane][c];
            }
            const bool masked = qi >= t || key >= t || (causal && key > qi);
            const float p = masked ? 0.f : expf(s * scale - l[i]);
            const float ds = p * (dp - dl[i]);
            for (int j = 0; j < ATT_KTILE; j++) {
                const float dsj = __shfl_sync(0xffffffff, ds, j);
#pragma unroll
                for (int c = 0; c < DC; c++) acc[i][c] += dsj * k_s[j][lane + 32 * c];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const unsigned qi = q0 + warp * 2 + i;
        if (qi >= t) continue;
#pragma unroll
        for (int c = 0; c < DC; c++) {
            const unsigned dd = lane + 32 * c;
            if (dd < d) dq[base + (u64)qi * d + dd] = acc[i][c] * scale;
        }
    }
}

#define ATTENTION_BWD_KERNELS(DC)                                                                                               \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)                                                                \
        attention_bwd_dkdv_dc##DC##_f32(const float* q, const float* k, const float* v, const float* dout, const float* lse,     \
                                        const float* delta, float* dk, float* dv, unsigned t, unsigned d, float scale, int causal) { \
        attention_bwd_dkdv<DC>(q, k, v, dout, lse, delta, dk, dv, t, d, scale, causal);                                         \
    }                                                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)                                                                \
        attention_bwd_dq_dc##DC##_f32(const float* q, const float* k, const float* v, const float* dout, const float* lse,       \
                                      const float* delta, float* dq, unsigned t, unsigned d, float scale, int causal) {         \
        attention_bwd_dq<DC>(q, k, v, dout, lse, delta, dq, t, d, scale, causal);                                               \
    }

ATTENTION_BWD_KERNELS(1)
ATTENTION_BWD_KERNELS(2)
ATTENTION_BWD_KERNELS(4)
