// The cp.async-pipelined twin of gemm_tile_tc.cuh for the implicit GEMMs (conv1d, conv2d): the
// same 64×64 output tile per 256-thread block, the same warps (2 (m) × 4 (n), each 32×16 of 2×2
// mma tiles), the same rounding and the same order of mma steps, so the two agree bit for bit
// (up to the sign of an exact zero). What changes is how operands reach shared memory.
// gemm_tile_tc fetches the next 32-deep slab into registers and stores it rounded; here
// STAGES slabs are in flight at once, each element copied global → shared by its own 4-byte
// cp.async (an im2col gather has no contiguous 16 bytes to copy), zero-filled where the loader
// says padding, with no trip through registers. The raw f32 slab is rounded to the policy's
// format only as a warp reads its fragments (tf32: cvt.rna; bf16: round to nearest even).
//
// Loaders return an address instead of a value: `at_a(m, k)`, `at_b(k, n)` give the element's
// global address, or nullptr for a zero (padding). `scale_b(k)`, when the kernel has one, gives
// the address of a factor every B element of row k is multiplied by before it is rounded (the
// modulated convolution's per-input-channel style, its per-output-channel demodulation in dx);
// it is staged per slab beside B. `fallback` is any valid global address (a zero-filled copy
// still names one). `store` as in gemm_tile.
//
// Shared memory (dynamic, above the 48 KiB of static): STAGES × (A + B + k-scales) =
// STAGES × (2·64·LD + 32) floats: 55.7 KiB (tf32, LD 36) or 61.8 KiB (bf16, LD 40); the host
// opts in (src/ops/conv_tc.rs computes the same sizes).
#pragma once
#include "gemm_tile.cuh"
#include "gemm_tile_tc.cuh"

namespace tcp {
constexpr int STAGES = 3;  // slabs in flight
using tc::BK;
using tc::BM;
using tc::BN;
using tc::LOADS;
using tc::THREADS;
}  // namespace tcp

// Fragments from raw f32 slabs ([row][k], LD floats per row), rounded as they are read.
struct TcpTf32 {
    static constexpr int LD = tc::BK + 4;  // (row g, col t) reads hit 32 distinct banks
    template <int MI, int NI>
    static __device__ __forceinline__ void multiply(const float* As, const float* Bs, const float* ks, int wm, int wn, int lane, float (&acc)[MI][NI][4]) {
        auto A = [&](int r, int k) { return to_tf32(As[r * LD + k]); };
        auto B = [&](int n, int k) { return to_tf32(ks ? Bs[n * LD + k] * ks[k] : Bs[n * LD + k]); };
        mma_slab_tf32(A, B, wm, wn, lane, acc);
    }
};

struct TcpBf16 {
    static constexpr int LD = tc::BK + 8;  // float2 reads at 8g + 2t: conflict-free per half-warp
    // Elements (row, k) and (row, k + 1) as one bf16x2 register, the lower k in the low half
    // (ldmatrix's layout in TcBf16, so the same registers reach the same mma).
    static __device__ __forceinline__ unsigned pair(const float* s, const float* ks, int row, int k) {
        float2 v = *reinterpret_cast<const float2*>(s + row * LD + k);
        if (ks) v.x *= ks[k], v.y *= ks[k + 1];
        return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v.x)) | (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v.y)) << 16;
    }
    template <int MI, int NI>
    static __device__ __forceinline__ void multiply(const float* As, const float* Bs, const float* ks, int wm, int wn, int lane, float (&acc)[MI][NI][4]) {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int kk = 0; kk < tc::BK; kk += 16) {
            unsigned a[MI][4], b[NI][2];
            const int k = kk + 2 * t;
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                const int r = wm + mi * 16 + g;
                a[mi][0] = pair(As, nullptr, r, k), a[mi][1] = pair(As, nullptr, r + 8, k);
                a[mi][2] = pair(As, nullptr, r, k + 8), a[mi][3] = pair(As, nullptr, r + 8, k + 8);
            }
#pragma unroll
            for (int ni = 0; ni < NI; ni++) {
                const int n = wn + ni * 8 + g;
                b[ni][0] = pair(Bs, ks, n, k), b[ni][1] = pair(Bs, ks, n, k + 8);
            }
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int ni = 0; ni < NI; ni++) mma_bf16_16816(acc[mi][ni], a[mi], b[ni]);
        }
    }
};

// No per-k factor on B (scale_b for kernels without one).
struct NoScale {
    __device__ const float* operator()(int) const { return nullptr; }
};

// gemm_tile_tc's contract with address loaders (above). `scaled` says whether scale_b is used;
// all 256 threads of the block must call it.
template <class P, typename AtA, typename AtB, typename ScaleB, typename Store>
__device__ __forceinline__ void gemm_tile_tc_pipe(int M, int N, int k_begin, int k_end, int m0, int n0, bool a_k_fast, bool b_n_fast,
                                                  const float* fallback, const AtA& at_a, const AtB& at_b, bool scaled, const ScaleB& scale_b,
                                                  const Store& store) {
    using namespace tcp;
    constexpr int SLAB = BM * P::LD;             // floats of one operand's slab
    constexpr int STAGE = 2 * SLAB + BK;         // A, B, then B's k-scales
    DYNAMIC_SMEM(float, smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = (warp >> 2) * 32, wn = (warp & 3) * 16;
    const bool b_k_fast = !b_n_fast;
    float acc[2][2][4];
    zero_acc(acc);
    const int slabs = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
    // Slab s into stage buffer s % STAGES: LOADS copies per operand per thread, walking the
    // operand's contiguous axis across consecutive threads (as gemm_tile_tc's fetch).
    auto stage = [&](int s) {
        float* buf = smem + (s % STAGES) * STAGE;
        const int k0 = k_begin + s * BK;
#pragma unroll
        for (int i = 0; i < LOADS; i++) {
            int r, c;
            tc::slab_coord(tid + i * THREADS, a_k_fast, BM, r, c);
            const float* pa = m0 + r < M && k0 + c < k_end ? at_a(m0 + r, k0 + c) : nullptr;
            cp_async4(buf + r * P::LD + c, pa ? pa : fallback, pa ? 4 : 0);
            tc::slab_coord(tid + i * THREADS, b_k_fast, BN, r, c);
            const float* pb = n0 + r < N && k0 + c < k_end ? at_b(k0 + c, n0 + r) : nullptr;
            cp_async4(buf + SLAB + r * P::LD + c, pb ? pb : fallback, pb ? 4 : 0);
        }
        if (scaled && tid < BK) {
            const float* ps = k0 + tid < k_end ? scale_b(k0 + tid) : nullptr;
            cp_async4(buf + 2 * SLAB + tid, ps ? ps : fallback, ps ? 4 : 0);
        }
    };
    cp_async_pipeline<STAGES>(slabs, stage, [&](int s) {
        const float* buf = smem + (s % STAGES) * STAGE;
        P::template multiply<2, 2>(buf, buf + SLAB, scaled ? buf + 2 * SLAB : nullptr, wm, wn, lane, acc);
    });
    store_acc(acc, M, N, m0 + wm, n0 + wn, lane, store);
}

// The pipelined tile of a kernel template's precision parameter (1 tf32, 2 bf16).
template <int PREC, typename AtA, typename AtB, typename ScaleB, typename Store>
__device__ __forceinline__ void gemm_tile_pipe_at(int M, int N, int k_begin, int k_end, int m0, int n0, bool a_k_fast, bool b_n_fast,
                                                  const float* fallback, const AtA& at_a, const AtB& at_b, bool scaled, const ScaleB& scale_b,
                                                  const Store& store) {
    static_assert(PREC == 1 || PREC == 2, "the pipelined tile is for the tensor cores");
    if constexpr (PREC == 1) gemm_tile_tc_pipe<TcpTf32>(M, N, k_begin, k_end, m0, n0, a_k_fast, b_n_fast, fallback, at_a, at_b, scaled, scale_b, store);
    else gemm_tile_tc_pipe<TcpBf16>(M, N, k_begin, k_end, m0, n0, a_k_fast, b_n_fast, fallback, at_a, at_b, scaled, scale_b, store);
}

// A value loader (gemm_tile's contract) from an address loader: the element, or 0 for nullptr.
// The register-staged and SIMT builds of a kernel read through it, so both tiles gather the
// same elements.
template <typename At>
__device__ __forceinline__ auto deref(const At& at) {
    return [=](int i, int j) {
        const float* p = at(i, j);
        return p ? *p : 0.f;
    };
}

// An implicit GEMM on the tile a kernel's PREC and PIPE say (PIPE only with PREC 1 or 2), from
// address loaders and, when `scaled`, B's per-k factor: the pipelined tile stages them; the
// others read B(k, n) = *at_b(k, n) · *scale_b(k) (0 for padding) through their value loaders.
template <int PREC, bool PIPE, typename AtA, typename AtB, typename ScaleB, typename Store>
__device__ __forceinline__ void conv_gemm(int M, int N, int k_begin, int k_end, int m0, int n0, bool a_k_fast, bool b_n_fast, const float* fallback,
                                          const AtA& at_a, const AtB& at_b, bool scaled, const ScaleB& scale_b, const Store& store) {
    if constexpr (PIPE) {
        gemm_tile_pipe_at<PREC>(M, N, k_begin, k_end, m0, n0, a_k_fast, b_n_fast, fallback, at_a, at_b, scaled, scale_b, store);
    } else {
        auto load_b = [=](int k, int n) {
            const float* p = at_b(k, n);
            return p ? (scaled ? *p * *scale_b(k) : *p) : 0.f;
        };
        gemm_tile_at<PREC>(M, N, k_begin, k_end, m0, n0, a_k_fast, b_n_fast, deref(at_a), load_b, store);
    }
}
