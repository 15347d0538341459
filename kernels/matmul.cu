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
