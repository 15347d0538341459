// One shared-memory tiled GEMM, written once and used by every matrix-product kernel:
// matmul (kernels/matmul.cu) and conv1d's implicit GEMMs (kernels/conv1d.cu).
//
//   out(m, n) = Σ_{k_begin ≤ k < k_end} A(m, k) · B(k, n)     for one 64×64 tile of out
//
// The operands are never materialised: the caller passes loader functors `load_a(m, k)` and
// `load_b(k, n)` that return the element as float (from f32, bf16, or gathered with padding as in
// conv1d), and a store functor `store(m, n, value)` that writes one finished element (converting,
// or into a split-K partial buffer). The tile calls the loaders only for m < M, n < N and
// k_begin ≤ k < k_end and uses 0 elsewhere, so a loader only handles its own zeros (padding);
// it calls `store` exactly once for every in-range (m, n) of the tile, so outputs need no zeroing.
//
// Shape of the work: a 256-thread block computes a BM×BN = 64×64 tile, stepping over k in slabs
// of BK = 16. Each slab of A (64×16) and B (16×64) goes through shared memory (4 elements per
// thread per operand); thread (ty, tx) = (tid / 16, tid % 16) then accumulates the 4×4 register
// tile rows m0 + 4ty + i, columns n0 + 4tx + j, reading float4s from shared memory. The next slab
// is fetched into registers while the current one is multiplied (one slab of latency hidden).
// Per slab: 2·64·64·16 FLOPs for 2·1024 element loads, i.e. 32 FLOPs per loaded element.
// f32 accumulation throughout; no tensor cores (a later, separate kernel).
#pragma once
#include "common.cuh"

namespace gemm {
constexpr int BM = 64;        // tile rows (m)
constexpr int BN = 64;        // tile columns (n)
constexpr int BK = 16;        // k per shared-memory slab
constexpr int THREADS = 256;  // threads per block; the launch must use exactly this
constexpr int TM = 4;         // register tile rows per thread
constexpr int TN = 4;         // register tile columns per thread
constexpr int PAD = 4;        // shared row padding: keeps float4 alignment, spreads banks
constexpr int LOADS = BM * BK / THREADS;  // elements of each operand one thread stages per slab
static_assert(BM == (THREADS / (BN / TN)) * TM, "thread grid must cover the tile rows");
static_assert(BM * BK == BN * BK, "A and B slabs are the same size");
static_assert(LOADS * THREADS == BM * BK, "slab loads must divide evenly");
}  // namespace gemm

// Computes the 64×64 tile at (m0, n0) of the M×N product over k in [k_begin, k_end) and stores
// it. Must be called by all 256 threads of the block (it synchronises).
//
// a_k_fast / b_n_fast choose how the block's threads walk a slab when loading it, for coalescing:
// a_k_fast = true puts consecutive threads on consecutive k of A (right when A(m, k) is contiguous
// in k, like a row-major [M, K]), false on consecutive m; b_n_fast = true puts them on
// consecutive n of B (right for a row-major [K, N]), false on consecutive k. Either choice gives
// the same result.
template <typename LoadA, typename LoadB, typename Store>
__device__ __forceinline__ void gemm_tile(int M, int N, int k_begin, int k_end, int m0, int n0, bool a_k_fast, bool b_n_fast,
                                          const LoadA& load_a, const LoadB& load_b, const Store& store) {
    using namespace gemm;
    __shared__ __align__(16) float As[BK][BM + PAD];  // As[k][m]
    __shared__ __align__(16) float Bs[BK][BN + PAD];  // Bs[k][n]

    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN), ty = tid / (BN / TN);

    // This thread's slab coordinates: element e = tid + r·THREADS of the 1024 in each slab.
    int a_m[LOADS], a_k[LOADS], b_k[LOADS], b_n[LOADS];
#pragma unroll
    for (int r = 0; r < LOADS; r++) {
        int e = tid + r * THREADS;
        a_m[r] = a_k_fast ? e / BK : e % BM;
        a_k[r] = a_k_fast ? e % BK : e / BM;
        b_n[r] = b_n_fast ? e % BN : e / BK;
        b_k[r] = b_n_fast ? e / BN : e % BK;
    }

    float ra[LOADS], rb[LOADS];  // the next slab, staged in registers
    auto fetch = [&](int k0) {
#pragma unroll
        for (int r = 0; r < LOADS; r++) {
            int m = m0 + a_m[r], ka = k0 + a_k[r];
            ra[r] = (m < M && ka < k_end) ? load_a(m, ka) : 0.f;
            int n = n0 + b_n[r], kb = k0 + b_k[r];
            rb[r] = (n < N && kb < k_end) ? load_b(kb, n) : 0.f;
        }
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.f;

    if (k_begin < k_end) fetch(k_begin);
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
        for (int r = 0; r < LOADS; r++) {
            As[a_k[r]][a_m[r]] = ra[r];
            Bs[b_k[r]][b_n[r]] = rb[r];
        }
        __syncthreads();
        if (k0 + BK < k_end) fetch(k0 + BK);  // global loads in flight during the FMAs below
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float4 a4 = *reinterpret_cast<const float4*>(&As[kk][ty * TM]);
            float4 b4 = *reinterpret_cast<const float4*>(&Bs[kk][tx * TN]);
            float a[TM] = {a4.x, a4.y, a4.z, a4.w};
            float b[TN] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();  // everyone is done reading the slab before it is overwritten
    }

#pragma unroll
    for (int i = 0; i < TM; i++) {
        int m = m0 + ty * TM + i;
#pragma unroll
        for (int j = 0; j < TN; j++) {
            int n = n0 + tx * TN + j;
            if (m < M && n < N) store(m, n, acc[i][j]);
        }
    }
}
