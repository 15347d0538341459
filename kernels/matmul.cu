// Batched matmul C[z] = op(A[z]) · op(B[z]), op = identity or transpose, f32 accumulation.
// The math, shapes and the backward are in src/ops/matmul.rs; the tile is kernels/gemm_tile.cuh.
//
// Launch: 256-thread blocks, grid (⌈N/64⌉, ⌈M/64⌉, min(batch, 65535)); a block loops over
// z = blockIdx.z, blockIdx.z + gridDim.z, … so any batch size works.
// A is [K, M] per batch item when trans_a (else [M, K]); B is [N, K] when trans_b (else [K, N]);
// C is [M, N]. stride_a / stride_b are the elements between batch items: 0 for an operand that is
// broadcast over the batch (shared weights), M·K / K·N otherwise.
#include "activations.cuh"
#include "gemm_tile.cuh"
#include "gemm_tile_tc.cuh"
#include "ptx.cuh"

template <typename T>
__device__ __forceinline__ void matmul_body(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int batch, int M, int N,
                                            int K, u64 stride_a, u64 stride_b, int trans_a, int trans_b) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    for (int z = blockIdx.z; z < batch; z += gridDim.z) {
        const T* a = A + (u64)z * stride_a;
        const T* b = B + (u64)z * stride_b;
        T* c = C + (u64)z * M * N;
        auto load_a = [=](int m, int k) { return to_f32(trans_a ? a[(u64)k * M + m] : a[(u64)m * K + k]); };
        auto load_b = [=](int k, int n) { return to_f32(trans_b ? b[(u64)n * K + k] : b[(u64)k * N + n]); };
        auto store = [=](int m, int n, float v) { c[(u64)m * N + n] = from_f32<T>(v); };
        gemm_tile(M, N, 0, K, m0, n0, !trans_a, !trans_b, load_a, load_b, store);
    }
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS) matmul_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                                                                       int batch, int M, int N, int K, u64 stride_a, u64 stride_b, int trans_a,
                                                                       int trans_b) {
    matmul_body(A, B, C, batch, M, N, K, stride_a, stride_b, trans_a, trans_b);
}

// bf16 in and out, f32 accumulation; the output is rounded to nearest even once, at the store.
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    matmul_bf16(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B, __nv_bfloat16* __restrict__ C, int batch, int M, int N,
                int K, u64 stride_a, u64 stride_b, int trans_a, int trans_b) {
    matmul_body(A, B, C, batch, M, N, K, stride_a, stride_b, trans_a, trans_b);
}

// A linear layer with its bias and activation in the store epilogue:
//   pre[m, n] = Σ_k X[m, k] · W[n, k] + bias[n],   Y[m, n] = act(pre[m, n])
// X is [M, K] (the rows of x flattened), W is [N, K] (PyTorch's [out, in]), Y is [M, N]. The
// pre-activation stays in registers: Y is the only write, unless `pre` is non-null (the tape
// needs it for the backward), when pre is written too. `bias` may be null (no bias); op < 0 is
// no activation, else a code of activations.cuh with its parameters (alpha, beta).
// Launch: as matmul_f32 with batch 1: 256-thread blocks, grid (⌈N/64⌉, ⌈M/64⌉, 1).
template <typename T>
__device__ __forceinline__ void matmul_bias_act(const T* __restrict__ X, const T* __restrict__ W, const T* __restrict__ bias, T* __restrict__ Y,
                                                T* __restrict__ pre, int M, int N, int K, int op, float alpha, float beta) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    auto load_a = [=](int m, int k) { return to_f32(X[(u64)m * K + k]); };
    auto load_b = [=](int k, int n) { return to_f32(W[(u64)n * K + k]); };
    auto store = [=](int m, int n, float v) {
        if (bias) v += to_f32(bias[n]);
        const u64 i = (u64)m * N + n;
        if (pre) pre[i] = from_f32<T>(v);
        Y[i] = from_f32<T>(op < 0 ? v : unary_fwd(op, v, alpha, beta));
    };
    // X is contiguous in k (a_k_fast); W is [N, K], contiguous in k, so threads walk k (not n).
    gemm_tile(M, N, 0, K, m0, n0, true, false, load_a, load_b, store);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    matmul_bias_act_f32(const float* __restrict__ X, const float* __restrict__ W, const float* __restrict__ bias, float* __restrict__ Y,
                        float* __restrict__ pre, int M, int N, int K, int op, float alpha, float beta) {
    matmul_bias_act(X, W, bias, Y, pre, M, N, K, op, alpha, beta);
}

// bf16 X, W, bias and Y (inference: pre is always null), f32 accumulation, bias and activation;
// Y is rounded once, after the activation.
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    matmul_bias_act_bf16(const __nv_bfloat16* __restrict__ X, const __nv_bfloat16* __restrict__ W, const __nv_bfloat16* __restrict__ bias,
                         __nv_bfloat16* __restrict__ Y, __nv_bfloat16* __restrict__ pre, int M, int N, int K, int op, float alpha, float beta) {
    matmul_bias_act(X, W, bias, Y, pre, M, N, K, op, alpha, beta);
}

// The epilogue of the tensor-core products: a warp's 64×32 accumulators (4×4 m16n8 tiles at
// rows r0.., columns c0.. of C; lane holds rows g, g + 8 and columns 2·(lane % 4) + {0, 1} of
// each) plus bias[col] (when non-null), kept as the pre-activation when `p` is non-null, through
// the activation; T is f32, or bf16 rounded once at the store.
template <typename T>
__device__ __forceinline__ void store_tc_tile(const float (&acc)[4][4][4], T* __restrict__ c, T* __restrict__ p, const T* __restrict__ bias, int M,
                                              int N, int r0, int c0, int lane, int op, float alpha, float beta) {
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = r0 + mi * 16 + (lane >> 2) + (e >> 1) * 8;
                const int col = c0 + ni * 8 + (lane & 3) * 2 + (e & 1);
                if (r < M && col < N) {
                    float v = acc[mi][ni][e];
                    if (bias) v += to_f32(bias[col]);
                    const u64 i = (u64)r * N + col;
                    if (p) p[i] = from_f32<T>(v);
                    c[i] = from_f32<T>(op < 0 ? v : unary_fwd(op, v, alpha, beta));
                }
            }
}

// ---- bf16 linear on the tensor cores (variant beside matmul_bias_act_bf16) ----------------------
// Y = act(X·Wᵀ + bias), X [M, K], W [N, K] (both K-contiguous: mma.sync's row.col layout), bf16
// in and out, f32 accumulation; K % 8 == 0 (16-byte rows; the host checks and otherwise uses the
// SIMT kernel). Block tile 128×128×32, 8 warps as 2 (m) × 4 (n), each warp 64×32 = 4×4
// mma.sync.m16n8k16 tiles. Global → shared by cp.async (16 B per copy, zero-filled past M, N, K),
// double-buffered; fragments by ldmatrix.x4 from rows padded to 40 bf16 (80 B: the 8 rows of one
// ldmatrix phase fall on 8 distinct 16-byte bank groups). Shared memory 40 KiB (static).
// Launch: 256 threads, grid (⌈N/128⌉, ⌈M/128⌉).
#define TC_BM 128
#define TC_BN 128
#define TC_BK 32
#define TC_LD (TC_BK + 8)

extern "C" __global__ void __launch_bounds__(256)
    matmul_bias_act_bf16_tc(const __nv_bfloat16* __restrict__ X, const __nv_bfloat16* __restrict__ W, const __nv_bfloat16* __restrict__ bias,
                            __nv_bfloat16* __restrict__ Y, int M, int N, int K, int op, float alpha, float beta) {
    __shared__ __align__(16) __nv_bfloat16 As[2][TC_BM][TC_LD];
    __shared__ __align__(16) __nv_bfloat16 Bs[2][TC_BN][TC_LD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    float acc[4][4][4];
    zero_acc(acc);

    // One k-tile of A and B: 128 rows × 32 = 512 copies of 8 bf16 per operand, 2 per thread.
    auto load_tile = [&](int buf, int k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int chunk = tid + i * 256;
            const int r = chunk >> 2, c = (chunk & 3) * 8;
            const int gk = k0 + c;
            const bool k_in = gk < K;
            const int gm = m0 + r, gn = n0 + r;
            cp_async16(&As[buf][r][c], X + (u64)(gm < M ? gm : 0) * K + (k_in ? gk : 0), gm < M && k_in ? 16 : 0);
            cp_async16(&Bs[buf][r][c], W + (u64)(gn < N ? gn : 0) * K + (k_in ? gk : 0), gn < N && k_in ? 16 : 0);
        }
        cp_async_commit();
    };

    const int ktiles = (K + TC_BK - 1) / TC_BK;
    if (ktiles > 0) load_tile(0, 0);
    for (int kt = 0; kt < ktiles; kt++) {
        const int buf = kt & 1;
        if (kt + 1 < ktiles) {
            load_tile(buf ^ 1, (kt + 1) * TC_BK);  // buf ^ 1 was last read before the previous barrier
            cp_async_wait<1>();                   // tile kt has landed; tile kt + 1 may still be in flight
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            unsigned a[4][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
                ldmatrix_x4(a[mi][0], a[mi][1], a[mi][2], a[mi][3], &As[buf][wm + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
            for (int nj = 0; nj < 2; nj++) {
                // Matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) of this pair of n8 tiles.
                const int row = wn + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(b[2 * nj][0], b[2 * nj][1], b[2 * nj + 1][0], b[2 * nj + 1][1], &Bs[buf][row][kk + ((lane >> 3) & 1) * 8]);
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_bf16_16816(acc[mi][ni], a[mi], b[ni]);
        }
        __syncthreads();  // every warp is done with buf before the next iteration refills it
    }

    store_tc_tile<__nv_bfloat16>(acc, Y, nullptr, bias, M, N, m0 + wm, n0 + wn, lane, op, alpha, beta);
}

// ---- Batched matmul on the tensor cores for f32 tensors (training and inference) ---------------
// C[z] = act(op(A[z]) · op(B[z]) + bias) with A, B, C f32 in memory, as matmul_f32 (same layouts,
// strides and flags) plus matmul_bias_act's epilogue (bias[n], the pre-activation `pre`, op <
// 0 for none; bias and pre may be null). Each operand is rounded once, on its way into shared
// memory, to the tensor-core input format of the policy: tf32 (cvt.rna, PyTorch's allow_tf32)
// or bf16 (round to nearest even, PyTorch's autocast), then multiplied exactly with f32
// accumulation. So forward and both backward products of every f32 linear and batched matmul
// run here under --precision tf32|bf16: the backward is the same kernel with other flags.
// Block tile 128×128×32, 8 warps as 2 (m) × 4 (n), each warp 64×32. A k-tile is read from global
// memory into registers (16 values per operand per thread, a warp's lanes on 32 consecutive
// addresses of the operand's contiguous axis whatever the flags) while the previous one is
// multiplied out of shared memory. Shared rows are k-contiguous and padded so fragment reads are
// conflict-free (the policies TcTf32, TcBf16 of gemm_tile_tc.cuh).
// Launch: 256 threads, grid (⌈N/128⌉, ⌈M/128⌉, min(batch, 65535)); blocks loop over z.
template <class P>
__device__ __forceinline__ void matmul_tc(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
                                          float* __restrict__ pre, int batch, int M, int N, int K, u64 stride_a, u64 stride_b, int trans_a, int trans_b,
                                          int op, float alpha, float beta) {
    __shared__ __align__(16) typename P::Smem As[TC_BM][P::LD];
    __shared__ __align__(16) typename P::Smem Bs[TC_BN][P::LD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    // A is [M, K] (k contiguous) unless trans_a; the mma's B operand is opB stored n-major, and
    // B is [N, K] (k contiguous) when trans_b.
    const bool a_kfast = !trans_a, b_kfast = trans_b;
    const int ktiles = (K + TC_BK - 1) / TC_BK;
    for (int z = blockIdx.z; z < batch; z += gridDim.z) {
        const float* a = A + (u64)z * stride_a;
        const float* b = B + (u64)z * stride_b;
        float acc[4][4][4];
        zero_acc(acc);
        float ra[16], rb[16];
        auto fetch = [&](int k0) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                int r, c;
                tc::slab_coord(tid + i * 256, a_kfast, TC_BM, r, c);
                const int gm = m0 + r, gk = k0 + c;
                ra[i] = gm < M && gk < K ? (a_kfast ? a[(u64)gm * K + gk] : a[(u64)gk * M + gm]) : 0.f;
                tc::slab_coord(tid + i * 256, b_kfast, TC_BN, r, c);
                const int gn = n0 + r, gkb = k0 + c;
                rb[i] = gn < N && gkb < K ? (b_kfast ? b[(u64)gn * K + gkb] : b[(u64)gkb * N + gn]) : 0.f;
            }
        };
        if (ktiles > 0) fetch(0);
        for (int kt = 0; kt < ktiles; kt++) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                int r, c;
                tc::slab_coord(tid + i * 256, a_kfast, TC_BM, r, c);
                As[r][c] = P::round(ra[i]);
                tc::slab_coord(tid + i * 256, b_kfast, TC_BN, r, c);
                Bs[r][c] = P::round(rb[i]);
            }
            __syncthreads();
            if (kt + 1 < ktiles) fetch((kt + 1) * TC_BK);  // in flight while this tile is multiplied
            P::template multiply<4, 4>(As, Bs, wm, wn, lane, acc);
            __syncthreads();  // every warp is done with the tile before the next one is stored
        }
        store_tc_tile(acc, C + (u64)z * M * N, pre ? pre + (u64)z * M * N : nullptr, bias, M, N, m0 + wm, n0 + wn, lane, op, alpha, beta);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    matmul_tc_tf32(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C, float* __restrict__ pre,
                   int batch, int M, int N, int K, u64 stride_a, u64 stride_b, int trans_a, int trans_b, int op, float alpha, float beta) {
    matmul_tc<TcTf32>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, trans_a, trans_b, op, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(256)
    matmul_tc_bf16(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C, float* __restrict__ pre,
                   int batch, int M, int N, int K, u64 stride_a, u64 stride_b, int trans_a, int trans_b, int op, float alpha, float beta) {
    matmul_tc<TcBf16>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, trans_a, trans_b, op, alpha, beta);
}

// ---- The same products through a cp.async pipeline (operands staged raw, rounded per fragment) --
// matmul_tc's math, flags, strides, epilogue and launch grid, for operands whose contiguous axis
// is a multiple of 4 floats and whose buffers start 16-byte aligned (the host checks, and takes
// matmul_tc otherwise). PIPE_STAGES k-tiles of A and B are in flight at once: copied global →
// shared by cp.async as they are (f32, 16 bytes per copy, zero-filled past M, N and K) with no
// trip through registers, and rounded to the policy's format only as a warp reads its fragments
// (tf32: cvt.rna per element; bf16: round to nearest even, two per register). The rounding and
// the order of the mma steps are matmul_tc's, so the two kernels agree bit for bit.
// Each operand keeps its global layout in shared memory, [row][k] when k-contiguous (`KF`), else
// [k][row], padded (the policy's LDK, LDR) so that the fragment reads of a warp are conflict-free:
// tf32 reads (g, t) at 4g + t or 8t + g mod 32; bf16 reads float2 pairs at 8g + 2t per half-warp,
// or single floats at 8t + g (+ 4).
// Dynamic shared memory: PIPE_STAGES × (A + B) × STAGE floats, 108 KiB (tf32) or 120 KiB
// (bf16), above the default 48 KiB, so the host raises the kernel's limit (src/ops/matmul_tc.rs
// computes the same sizes).
#define PIPE_STAGES 3

// (row, k) of one stage's tile of an operand, in its layout.
template <bool KF, int LDK, int LDR>
__device__ __forceinline__ const float* pipe_at(const float* s, int row, int k) {
    return KF ? s + row * LDK + k : s + k * LDR + row;
}

struct PipeTf32 {
    static constexpr int LDK = TC_BK + 4, LDR = TC_BM + 8;
    static constexpr int STAGE = TC_BM * LDK > TC_BK * LDR ? TC_BM * LDK : TC_BK * LDR;  // floats per operand
    template <bool AK, bool BK>
    static __device__ __forceinline__ void multiply(const float* As, const float* Bs, int wm, int wn, int lane, float (&acc)[4][4][4]) {
        const int g = lane >> 2, t = lane & 3;
        auto A = [&](int r, int k) { return to_tf32(*pipe_at<AK, LDK, LDR>(As, r, k)); };
        auto B = [&](int n, int k) { return to_tf32(*pipe_at<BK, LDK, LDR>(Bs, n, k)); };
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 8) {
            unsigned a[4][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                const int r = wm + mi * 16 + g;
                a[mi][0] = A(r, kk + t), a[mi][1] = A(r + 8, kk + t), a[mi][2] = A(r, kk + t + 4), a[mi][3] = A(r + 8, kk + t + 4);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const int n = wn + ni * 8 + g;
                b[ni][0] = B(n, kk + t), b[ni][1] = B(n, kk + t + 4);
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_tf32_1688(acc[mi][ni], a[mi], b[ni]);
        }
    }
};

struct PipeBf16 {
    static constexpr int LDK = TC_BK + 8, LDR = TC_BM + 4;
    static constexpr int STAGE = TC_BM * LDK > TC_BK * LDR ? TC_BM * LDK : TC_BK * LDR;
    // Elements (row, k) and (row, k + 1) as one bf16x2 register, the lower k in the low half.
    template <bool KF>
    static __device__ __forceinline__ unsigned pair(const float* s, int row, int k) {
        float x, y;
        if (KF) {
            const float2 v = *reinterpret_cast<const float2*>(pipe_at<true, LDK, LDR>(s, row, k));
            x = v.x, y = v.y;
        } else {
            x = *pipe_at<false, LDK, LDR>(s, row, k), y = *pipe_at<false, LDK, LDR>(s, row, k + 1);
        }
        return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(x)) | (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(y)) << 16;
    }
    template <bool AK, bool BK>
    static __device__ __forceinline__ void multiply(const float* As, const float* Bs, int wm, int wn, int lane, float (&acc)[4][4][4]) {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            unsigned a[4][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                const int r = wm + mi * 16 + g, k = kk + 2 * t;
                a[mi][0] = pair<AK>(As, r, k), a[mi][1] = pair<AK>(As, r + 8, k);
                a[mi][2] = pair<AK>(As, r, k + 8), a[mi][3] = pair<AK>(As, r + 8, k + 8);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const int n = wn + ni * 8 + g, k = kk + 2 * t;
                b[ni][0] = pair<BK>(Bs, n, k), b[ni][1] = pair<BK>(Bs, n, k + 8);
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_bf16_16816(acc[mi][ni], a[mi], b[ni]);
        }
    }
};

// One stage of one operand: rows [row0, row0 + 128) × k [k0, k0 + 32) of `g` (rows × K when KF,
// else K × rows), 1024 copies of 4 floats, 4 per thread; a warp's copies cover 512 contiguous
// bytes (KF: 4 rows of 128 B; else one row of k). Copies outside the operand read nothing.
template <bool KF, int LDK, int LDR>
__device__ __forceinline__ void pipe_stage(float* s, const float* __restrict__ g, int rows, int K, int row0, int k0, int tid) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = tid + i * 256;
        const int r = KF ? c >> 3 : (c & 31) * 4, k = KF ? (c & 7) * 4 : c >> 5;
        const bool in = row0 + r < rows && k0 + k < K;
        const float* src = !in ? g : KF ? g + (u64)(row0 + r) * K + k0 + k : g + (u64)(k0 + k) * rows + row0 + r;
        cp_async16(KF ? s + r * LDK + k : s + k * LDR + r, src, in ? 16 : 0);
    }
}

template <class P, bool AK, bool BK>
__device__ __forceinline__ void matmul_tc_pipe_body(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias,
                                                    float* __restrict__ C, float* __restrict__ pre, int batch, int M, int N, int K, u64 stride_a,
                                                    u64 stride_b, int op, float alpha, float beta) {
    DYNAMIC_SMEM(float, smem);
    float* As = smem;                          // PIPE_STAGES tiles of A
    float* Bs = smem + PIPE_STAGES * P::STAGE;  // then PIPE_STAGES tiles of B
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    const int ktiles = (K + TC_BK - 1) / TC_BK;
    for (int z = blockIdx.z; z < batch; z += gridDim.z) {
        const float* a = A + (u64)z * stride_a;
        const float* b = B + (u64)z * stride_b;
        auto stage = [&](int kt) {
            const int buf = kt % PIPE_STAGES;
            pipe_stage<AK, P::LDK, P::LDR>(As + buf * P::STAGE, a, M, K, m0, kt * TC_BK, tid);
            pipe_stage<BK, P::LDK, P::LDR>(Bs + buf * P::STAGE, b, N, K, n0, kt * TC_BK, tid);
        };
        float acc[4][4][4];
        zero_acc(acc);
        cp_async_pipeline<PIPE_STAGES>(ktiles, stage, [&](int kt) {
            const int buf = kt % PIPE_STAGES;
            P::template multiply<AK, BK>(As + buf * P::STAGE, Bs + buf * P::STAGE, wm, wn, lane, acc);
        });  // ends with every warp done with the buffers, before the next batch item fills them
        store_tc_tile(acc, C + (u64)z * M * N, pre ? pre + (u64)z * M * N : nullptr, bias, M, N, m0 + wm, n0 + wn, lane, op, alpha, beta);
    }
}

// The layouts as template parameters: A is k-contiguous unless trans_a, B (read as opB, n-major)
// is k-contiguous when trans_b.
template <class P>
__device__ __forceinline__ void matmul_tc_pipe(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
                                               float* __restrict__ pre, int batch, int M, int N, int K, u64 stride_a, u64 stride_b, int trans_a,
                                               int trans_b, int op, float alpha, float beta) {
    if (!trans_a && trans_b) matmul_tc_pipe_body<P, true, true>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, op, alpha, beta);
    else if (!trans_a) matmul_tc_pipe_body<P, true, false>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, op, alpha, beta);
    else if (trans_b) matmul_tc_pipe_body<P, false, true>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, op, alpha, beta);
    else matmul_tc_pipe_body<P, false, false>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, op, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    matmul_tc_pipe_tf32(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
                        float* __restrict__ pre, int batch, int M, int N, int K, u64 stride_a, u64 stride_b, int trans_a, int trans_b, int op,
                        float alpha, float beta) {
    matmul_tc_pipe<PipeTf32>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, trans_a, trans_b, op, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    matmul_tc_pipe_bf16(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias, float* __restrict__ C,
                        float* __restrict__ pre, int batch, int M, int N, int K, u64 stride_a, u64 stride_b, int trans_a, int trans_b, int op,
                        float alpha, float beta) {
    matmul_tc_pipe<PipeBf16>(A, B, bias, C, pre, batch, M, N, K, stride_a, stride_b, trans_a, trans_b, op, alpha, beta);
}
