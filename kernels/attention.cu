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
#include "ptx.cuh"

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

// ---- The forward on the tensor cores (bf16 operands, f32 accumulation) -------------------------
// attention_fwd_tc_hd<HD>_<T>: the same (O, lse) with q, k, v rounded to bf16 (exact when T is
// bf16), S = s·Q·Kᵀ and O = P·V by mma.sync m16n8k16 with f32 accumulation, P rounded to bf16
// between them (as PyTorch's bf16 flash attention does); softmax, lse and the division by the
// row sum in f32. D ≤ HD (columns past D are zero-filled and not written).
// One 128-thread block per (bh, 64 queries); warp w owns queries 16w..16w+15 (its Q fragments
// stay in registers). Keys stream through shared memory 64 at a time: K as [key][d] (the B
// operand of Q·Kᵀ, d contiguous) and V transposed to [d][key] (the B operand of P·V, keys
// contiguous), so every fragment is one ldmatrix.x4; rows are padded by 8 bf16 (16 B) so the 8
// rows of an ldmatrix phase fall on 8 distinct bank groups. S stays in registers: a lane holds
// rows g and g + 8 of the warp's 16, columns 2t and 2t + 1 of each n8 tile (the mma C layout),
// which is also the A layout of the next product, so P needs no shuffle. The online softmax
// keeps each row's running max and a per-lane partial sum (the 4 lanes of a row share the max,
// so their sums add at the end). Causal blocks stop at their last query's tile.
// Static shared memory: (64 + 64) × (HD + 8) + HD × 72 bf16 = 27 KiB at HD = 64.
#define ATT_TC_Q 64  // queries per block
#define ATT_TC_K 64  // keys per shared-memory tile

template <int HD, typename T>
__device__ __forceinline__ void attention_fwd_tc(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                                                 float* __restrict__ lse, unsigned t, unsigned d, float scale, int causal) {
    constexpr int LD = HD + 8, LDV = ATT_TC_K + 8;
    __shared__ __align__(16) __nv_bfloat16 qs[ATT_TC_Q][LD];
    __shared__ __align__(16) __nv_bfloat16 ks[ATT_TC_K][LD];
    __shared__ __align__(16) __nv_bfloat16 vt[HD][LDV];
    const unsigned bh = blockIdx.y, q0 = blockIdx.x * ATT_TC_Q;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
    const u64 base = (u64)bh * t * d;
    auto element = [&](const T* x, unsigned row, int c) {
        return __float2bfloat16_rn(row < t && c < (int)d ? to_f32(x[base + (u64)row * d + c]) : 0.f);
    };
    for (int e = tid; e < ATT_TC_Q * HD; e += blockDim.x) qs[e / HD][e % HD] = element(q, q0 + e / HD, e % HD);
    __syncthreads();
    unsigned qf[HD / 16][4];
#pragma unroll
    for (int c = 0; c < HD / 16; c++) ldmatrix_x4(qf[c][0], qf[c][1], qf[c][2], qf[c][3], &qs[warp * 16 + (lane & 15)][c * 16 + (lane >> 4) * 8]);

    float acc[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const unsigned row0 = q0 + warp * 16 + g;  // this lane's rows: row0 and row0 + 8
    const unsigned last_q = min(q0 + ATT_TC_Q, t) - 1;
    for (unsigned k0 = 0; k0 < t && !(causal && k0 > last_q); k0 += ATT_TC_K) {
        __syncthreads();  // every warp is done with the previous tile
        for (int e = tid; e < ATT_TC_K * HD; e += blockDim.x) {
            const int r = e / HD, c = e % HD;
            ks[r][c] = element(k, k0 + r, c);
            vt[c][r] = element(v, k0 + r, c);
        }
        __syncthreads();
        // S = Q·Kᵀ for the warp's 16 rows × 64 keys: 8 n8 tiles.
        float s[ATT_TC_K / 8][4];
#pragma unroll
        for (int j = 0; j < ATT_TC_K / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.f;
#pragma unroll
        for (int c = 0; c < HD / 16; c++)
#pragma unroll
            for (int nj = 0; nj < ATT_TC_K / 16; nj++) {
                unsigned b[4];
                ldmatrix_x4(b[0], b[1], b[2], b[3], &ks[nj * 16 + (lane & 7) + ((lane >> 4) << 3)][c * 16 + ((lane >> 3) & 1) * 8]);
                mma_bf16_16816(s[2 * nj], qf[c], b);
                mma_bf16_16816(s[2 * nj + 1], qf[c], b + 2);
            }
        // Scale, mask, and the online softmax of the lane's two rows (h = 0: row0, 1: row0 + 8).
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const unsigned row = row0 + 8 * h;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < ATT_TC_K / 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const unsigned key = k0 + j * 8 + 2 * tq + e;
                    float& x = s[j][2 * h + e];
                    x = key < t && !(causal && key > row) ? x * scale : -INFINITY;
                    mx = fmaxf(mx, x);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            const float m_new = fmaxf(m[h], mx);
            const float ref = m_new == -INFINITY ? 0.f : m_new;  // a row with no key yet
            const float keep = expf(m[h] - ref);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < ATT_TC_K / 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float& x = s[j][2 * h + e];
                    x = expf(x - ref);
                    sum += x;
                }
            l[h] = l[h] * keep + sum;
            m[h] = m_new;
#pragma unroll
            for (int j = 0; j < HD / 8; j++) acc[j][2 * h] *= keep, acc[j][2 * h + 1] *= keep;
        }
        // O += P·V: P's C fragments of n8 tiles 2c, 2c + 1 are the A fragment of key chunk c.
        auto pack = [](float lo, float hi) {
            return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) | (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16;
        };
#pragma unroll
        for (int c = 0; c < ATT_TC_K / 16; c++) {
            const unsigned a[4] = {pack(s[2 * c][0], s[2 * c][1]), pack(s[2 * c][2], s[2 * c][3]), pack(s[2 * c + 1][0], s[2 * c + 1][1]),
                                   pack(s[2 * c + 1][2], s[2 * c + 1][3])};
#pragma unroll
            for (int nj = 0; nj < HD / 16; nj++) {
                unsigned b[4];
                ldmatrix_x4(b[0], b[1], b[2], b[3], &vt[nj * 16 + (lane & 7) + ((lane >> 4) << 3)][c * 16 + ((lane >> 3) & 1) * 8]);
                mma_bf16_16816(acc[2 * nj], a, b);
                mma_bf16_16816(acc[2 * nj + 1], a, b + 2);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffff, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffff, l[h], 2);
        const unsigned row = row0 + 8 * h;
        if (row >= t) continue;
#pragma unroll
        for (int j = 0; j < HD / 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int col = j * 8 + 2 * tq + e;
                if (col < (int)d) o[base + (u64)row * d + col] = from_f32<T>(acc[j][2 * h + e] / l[h]);
            }
        if (tq == 0) lse[(u64)bh * t + row] = m[h] + logf(l[h]);
    }
}

#define ATTENTION_FWD_TC_KERNEL(HD, NAME, T)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                                                         \
        attention_fwd_tc_hd##HD##_##NAME(const T* q, const T* k, const T* v, T* o, float* lse, unsigned t, unsigned d, float scale, \
                                         int causal) {                                                                         \
        attention_fwd_tc<HD>(q, k, v, o, lse, t, d, scale, causal);                                                            \
    }

// Head dims up to HD; the Rust side picks the smallest that fits (TC_FWD_KERNELS in attention.rs).
ATTENTION_FWD_TC_KERNEL(32, f32, float)
ATTENTION_FWD_TC_KERNEL(64, f32, float)
ATTENTION_FWD_TC_KERNEL(32, bf16, __nv_bfloat16)
ATTENTION_FWD_TC_KERNEL(64, bf16, __nv_bfloat16)
