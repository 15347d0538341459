// The tensor-core twin of gemm_tile.cuh: the same call (loader and store functors, k range, the
// same 64×64 output tile per 256-thread block, so a kernel's launch does not change), with the
// operands rounded to the policy's tensor-core format as they are staged into shared memory and
// multiplied by mma.sync with f32 accumulation:
//   TcTf32: cvt.rna to tf32, mma.m16n8k8 (PyTorch's allow_tf32);
//   TcBf16: round to nearest even bf16, ldmatrix + mma.m16n8k16 (as autocast's bf16).
// So every implicit GEMM written on gemm_tile (conv1d, conv2d: forward, dx, dW) gets a
// tensor-core variant by instantiation, and kernels/matmul.cu's big-tile kernel shares the
// policies. Per 32-deep k slab, 8 warps as 2 (m) × 4 (n), each warp a 32×16 tile of 2×2 mma
// tiles; the next slab is loaded into registers (8 elements per operand per thread) while the
// current one is multiplied. Shared rows are k-contiguous (As[m][k], Bs[n][k]) and padded so the
// fragment reads are conflict-free.
#pragma once
#include "common.cuh"
#include "ptx.cuh"

namespace tc {
constexpr int BK = 32;  // k per shared-memory slab
constexpr int BM = 64, BN = 64, THREADS = 256;
constexpr int LOADS = BM * BK / THREADS;  // elements of each operand one thread stages per slab

// Element e of a rows × BK slab as (row, k): consecutive e walk k when k_fast, else the row, so
// consecutive threads read consecutive addresses of the operand's contiguous axis.
__device__ __forceinline__ void slab_coord(int e, bool k_fast, int rows, int& row, int& k) {
    if (k_fast) row = e / BK, k = e % BK;
    else k = e / rows, row = e % rows;
}
}  // namespace tc

// A warp's mma accumulators (MI × NI tiles of 4 f32 each) set to zero.
template <int MI, int NI>
__device__ __forceinline__ void zero_acc(float (&acc)[MI][NI][4]) {
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
}

// A warp's MI × NI mma accumulators out through `store(m, n, v)`, for the in-range elements of the
// warp's tile at (m_base, n_base): element e of tile (mi, ni) is (row g + 8·(e / 2), col 2t + e % 2)
// of that 16×8 tile, g = lane / 4, t = lane % 4 (the mma's C layout).
template <int MI, int NI, typename Store>
__device__ __forceinline__ void store_acc(const float (&acc)[MI][NI][4], int M, int N, int m_base, int n_base, int lane, const Store& store) {
#pragma unroll
    for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int m = m_base + mi * 16 + (lane >> 2) + (e >> 1) * 8;
                const int n = n_base + ni * 8 + (lane & 3) * 2 + (e & 1);
                if (m < M && n < N) store(m, n, acc[mi][ni][e]);
            }
}

// A cp.async pipeline over `steps` k-steps with STAGES - 1 of them in flight ahead of the one in
// use: `stage(s)` issues step s's copies into buffer s % STAGES, `consume(s)` reads that buffer.
// One commit group per step (empty past the last), so "step s has landed" is always "at most
// STAGES - 2 groups are still in flight"; the barrier before each refill is what frees the buffer
// step s - 1 used. Returns with every copy landed and every thread past a barrier, so the caller
// may refill the buffers (a next tile, a next batch item). All threads of the block must call it.
template <int STAGES, typename Stage, typename Consume>
__device__ __forceinline__ void cp_async_pipeline(int steps, const Stage& stage, const Consume& consume) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < steps) stage(s);
        cp_async_commit();
    }
    for (int s = 0; s < steps; s++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // step s is visible to every warp, and every warp is done with step s - 1
        if (s + STAGES - 1 < steps) stage(s + STAGES - 1);  // into step s - 1's buffer
        cp_async_commit();
        consume(s);
    }
    cp_async_wait<0>();
    __syncthreads();
}

// acc += one BK-deep slab of m16n8k8 tf32 steps for the warp's (16·MI)×(8·NI) tile at (wm, wn).
// `A(r, k)` and `B(n, k)` give the tf32 bits of each fragment element, read from shared memory
// however the policy keeps it (pre-rounded bits, or raw f32 rounded as it is read).
template <int MI, int NI, typename FragA, typename FragB>
__device__ __forceinline__ void mma_slab_tf32(const FragA& A, const FragB& B, int wm, int wn, int lane, float (&acc)[MI][NI][4]) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int kk = 0; kk < tc::BK; kk += 8) {
        unsigned a[MI][4], b[NI][2];
#pragma unroll
        for (int mi = 0; mi < MI; mi++) {
            const int r = wm + mi * 16 + g;
            a[mi][0] = A(r, kk + t), a[mi][1] = A(r + 8, kk + t);
            a[mi][2] = A(r, kk + t + 4), a[mi][3] = A(r + 8, kk + t + 4);
        }
#pragma unroll
        for (int ni = 0; ni < NI; ni++) {
            const int n = wn + ni * 8 + g;
            b[ni][0] = B(n, kk + t), b[ni][1] = B(n, kk + t + 4);
        }
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int ni = 0; ni < NI; ni++) mma_tf32_1688(acc[mi][ni], a[mi], b[ni]);
    }
}

struct TcTf32 {
    using Smem = unsigned;             // tf32 bits
    static constexpr int LD = tc::BK + 4;  // (row g, col t) reads hit 32 distinct banks
    static __device__ __forceinline__ Smem round(float v) { return to_tf32(v); }
    // acc += the warp's (16·MI)×(8·NI) tile at (wm, wn) over one slab: m16n8k8 steps.
    template <int MI, int NI>
    static __device__ __forceinline__ void multiply(const Smem (*As)[LD], const Smem (*Bs)[LD], int wm, int wn, int lane, float (&acc)[MI][NI][4]) {
        mma_slab_tf32(
            [&](int r, int k) { return As[r][k]; }, [&](int n, int k) { return Bs[n][k]; }, wm, wn, lane, acc);
    }
};

struct TcBf16 {
    using Smem = __nv_bfloat16;
    static constexpr int LD = tc::BK + 8;  // 80-byte rows: an ldmatrix phase's 8 rows on 8 bank groups
    static __device__ __forceinline__ Smem round(float v) { return __float2bfloat16_rn(v); }
    // As TcTf32::multiply with m16n8k16 steps, fragments by ldmatrix.x4 (NI even).
    template <int MI, int NI>
    static __device__ __forceinline__ void multiply(const Smem (*As)[LD], const Smem (*Bs)[LD], int wm, int wn, int lane, float (&acc)[MI][NI][4]) {
        static_assert(NI % 2 == 0, "B fragments come in pairs of n8 tiles");
#pragma unroll
        for (int kk = 0; kk < tc::BK; kk += 16) {
            unsigned a[MI][4], b[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
                ldmatrix_x4(a[mi][0], a[mi][1], a[mi][2], a[mi][3], &As[wm + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
            for (int nj = 0; nj < NI / 2; nj++) {
                // Matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
                const int row = wn + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(b[2 * nj][0], b[2 * nj][1], b[2 * nj + 1][0], b[2 * nj + 1][1], &Bs[row][kk + ((lane >> 3) & 1) * 8]);
            }
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int ni = 0; ni < NI; ni++) mma_bf16_16816(acc[mi][ni], a[mi], b[ni]);
        }
    }
};

// gemm_tile's contract (see gemm_tile.cuh): the 64×64 tile at (m0, n0) of the M×N product over
// k in [k_begin, k_end), loaders called only in range, `store` once per in-range (m, n). All 256
// threads of the block must call it. a_k_fast / b_n_fast as there (coalescing only).
template <class P, typename LoadA, typename LoadB, typename Store>
__device__ __forceinline__ void gemm_tile_tc(int M, int N, int k_begin, int k_end, int m0, int n0, bool a_k_fast, bool b_n_fast,
                                             const LoadA& load_a, const LoadB& load_b, const Store& store) {
    using namespace tc;
    __shared__ __align__(16) typename P::Smem As[BM][P::LD];
    __shared__ __align__(16) typename P::Smem Bs[BN][P::LD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = (warp >> 2) * 32, wn = (warp & 3) * 16;
    const bool b_k_fast = !b_n_fast;
    float acc[2][2][4];
    zero_acc(acc);
    float ra[LOADS], rb[LOADS];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < LOADS; i++) {
            int r, c;
            slab_coord(tid + i * THREADS, a_k_fast, BM, r, c);
            ra[i] = m0 + r < M && k0 + c < k_end ? load_a(m0 + r, k0 + c) : 0.f;
            slab_coord(tid + i * THREADS, b_k_fast, BN, r, c);
            rb[i] = n0 + r < N && k0 + c < k_end ? load_b(k0 + c, n0 + r) : 0.f;
        }
    };
    if (k_begin < k_end) fetch(k_begin);
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
        for (int i = 0; i < LOADS; i++) {
            int r, c;
            slab_coord(tid + i * THREADS, a_k_fast, BM, r, c);
            As[r][c] = P::round(ra[i]);
            slab_coord(tid + i * THREADS, b_k_fast, BN, r, c);
            Bs[r][c] = P::round(rb[i]);
        }
        __syncthreads();
        if (k0 + BK < k_end) fetch(k0 + BK);  // in flight while this slab is multiplied
        P::template multiply<2, 2>(As, Bs, wm, wn, lane, acc);
        __syncthreads();  // every warp is done with the slab before the next one is stored
    }
    store_acc(acc, M, N, m0 + wm, n0 + wn, lane, store);
}

// The tile a kernel template picks by its precision parameter: 0 the FP32 SIMT tile
// (gemm_tile.cuh), 1 tf32 and 2 bf16 tensor cores.
template <int PREC, typename LoadA, typename LoadB, typename Store>
__device__ __forceinline__ void gemm_tile_at(int M, int N, int k_begin, int k_end, int m0, int n0, bool a_k_fast, bool b_n_fast,
                                             const LoadA& load_a, const LoadB& load_b, const Store& store) {
    if constexpr (PREC == 1) gemm_tile_tc<TcTf32>(M, N, k_begin, k_end, m0, n0, a_k_fast, b_n_fast, load_a, load_b, store);
    else if constexpr (PREC == 2) gemm_tile_tc<TcBf16>(M, N, k_begin, k_end, m0, n0, a_k_fast, b_n_fast, load_a, load_b, store);
    else gemm_tile(M, N, k_begin, k_end, m0, n0, a_k_fast, b_n_fast, load_a, load_b, store);
}
