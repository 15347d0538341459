// Conv1d (PyTorch semantics: cross-correlation, zero padding) as three implicit GEMMs on the
// shared tile of kernels/gemm_tile.cuh: no im2col buffer, the loaders gather from x / dy and
// return 0 for padding. The math and shapes are in src/ops/conv1d.rs.
//
//   x [B, Cin, L], w [Cout, Cin, Ks], y [B, Cout, Lout], Lout = (L + 2·pad − Ks) / stride + 1,
//   y[b, co, l] = Σ_{ci, k} w[co, ci, k] · x[b, ci, l·stride + k − pad]
//
// Every kernel: 256-thread blocks, grid (⌈N/64⌉, ⌈M/64⌉, z), blocks loop over z past gridDim.z.
// Each comes as _f32 (the FP32 SIMT tile), as _tc_tf32 / _tc_bf16 (the same implicit GEMM on
// the tensor cores, operands rounded to tf32 / bf16 as they are staged: --precision) and as
// _tc_pipe_tf32 / _tc_pipe_bf16 (the same again through the cp.async pipeline of
// gemm_tile_tc_pipe.cuh, bit for bit the _tc_ result; dynamic shared memory).
// The bodies name each operand element by its address (nullptr: padding); PIPE picks the tile.
#include "gemm_tile.cuh"
#include "gemm_tile_tc.cuh"
#include "gemm_tile_tc_pipe.cuh"

// Forward, per batch item z = b: M = Cout, N = Lout, K = Cin·Ks (kk = ci·Ks + k).
// A(co, kk) = w[co, kk] (w viewed as [Cout, Cin·Ks]); B(kk, l) = x[b, ci, l·stride + k − pad] or 0.
// The epilogue, as each output is stored (the mapper's conv → bias → + residual → ReLU, one
// pass instead of three over y): y = relu?((acc + bias[co]) + res[b, co, l]), each part only
// when given (bias, res nullable; relu 0/1), in the order the separate ops would apply it.
template <int PREC, bool PIPE = false>
__device__ __forceinline__ void conv1d_fwd_body(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                                                const float* __restrict__ res, int relu, float* __restrict__ y, int B, int Cin, int L,
                                                int Cout, int Ks, int stride, int pad, int Lout) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    const int KK = Cin * Ks;
    for (int b = blockIdx.z; b < B; b += gridDim.z) {
        const float* xb = x + (u64)b * Cin * L;
        float* yb = y + (u64)b * Cout * Lout;
        const float* rb = res ? res + (u64)b * Cout * Lout : nullptr;
        auto at_a = [=](int co, int kk) { return w + (u64)co * KK + kk; };
        auto at_b = [=](int kk, int l) -> const float* {
            int ci = kk / Ks, k = kk - ci * Ks;
            int pos = l * stride + k - pad;
            return (pos >= 0 && pos < L) ? xb + (u64)ci * L + pos : nullptr;
        };
        auto store = [=](int co, int l, float v) {
            const u64 at = (u64)co * Lout + l;
            if (bias) v += bias[co];
            if (rb) v += rb[at];
            yb[at] = relu && !(v > 0.f) ? 0.f : v;  // relu as unary_fwd's: x > 0 ? x : 0
        };
        conv_gemm<PREC, PIPE>(Cout, Lout, 0, KK, m0, n0, true, true, w, at_a, at_b, false, NoScale{}, store);
    }
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    conv1d_fwd_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, const float* __restrict__ res, int relu,
                   float* __restrict__ y, int B, int Cin, int L, int Cout, int Ks, int stride, int pad, int Lout) {
    conv1d_fwd_body<0>(x, w, bias, res, relu, y, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_fwd_tc_tf32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, const float* __restrict__ res, int relu,
                       float* __restrict__ y, int B, int Cin, int L, int Cout, int Ks, int stride, int pad, int Lout) {
    conv1d_fwd_body<1>(x, w, bias, res, relu, y, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_fwd_tc_bf16(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, const float* __restrict__ res, int relu,
                       float* __restrict__ y, int B, int Cin, int L, int Cout, int Ks, int stride, int pad, int Lout) {
    conv1d_fwd_body<2>(x, w, bias, res, relu, y, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

// dx, per batch item z = b: M = Cin, N = L, K = Cout·Ks (kk = co·Ks + k).
// dx[b, ci, j] = Σ_{co, k} w[co, ci, k] · dy[b, co, l] over the l with l·stride + k − pad = j,
// i.e. l = (j + pad − k) / stride where that divides exactly and 0 ≤ l < Lout (else 0).
// Every dx element is stored, including those no output touched (they get 0).
template <int PREC, bool PIPE = false>
__device__ __forceinline__ void conv1d_dx_body(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    const int KK = Cout * Ks;
    for (int b = blockIdx.z; b < B; b += gridDim.z) {
        const float* dyb = dy + (u64)b * Cout * Lout;
        float* dxb = dx + (u64)b * Cin * L;
        auto at_a = [=](int ci, int kk) {
            int co = kk / Ks, k = kk - co * Ks;
            return w + ((u64)co * Cin + ci) * Ks + k;
        };
        auto at_b = [=](int kk, int j) -> const float* {
            int co = kk / Ks, k = kk - co * Ks;
            int t = j + pad - k;
            if (t < 0 || t % stride != 0) return nullptr;
            int l = t / stride;
            return l < Lout ? dyb + (u64)co * Lout + l : nullptr;
        };
        auto store = [=](int ci, int j, float v) { dxb[(u64)ci * L + j] = v; };
        // A: consecutive ci are Ks apart in w, consecutive kk jump by Cin·Ks at each co: walk m.
        conv_gemm<PREC, PIPE>(Cin, L, 0, KK, m0, n0, false, true, w, at_a, at_b, false, NoScale{}, store);
    }
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    conv1d_dx_f32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout) {
    conv1d_dx_body<0>(dy, w, dx, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dx_tc_tf32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout) {
    conv1d_dx_body<1>(dy, w, dx, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dx_tc_bf16(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout) {
    conv1d_dx_body<2>(dy, w, dx, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

// dW, split-K: M = Cout, N = Cin·Ks (n = ci·Ks + k), K = B·Lout (kk = b·Lout + l), the K range
// cut into `splits` chunks of `chunk` (a multiple of 16). Split z writes its partial sum to
// partial[z, co, n]; the host sums the splits in a fixed order (deterministic).
// A(co, kk) = dy[b, co, l]; B(kk, n) = x[b, ci, l·stride + k − pad] or 0.
template <int PREC, bool PIPE = false>
__device__ __forceinline__ void conv1d_dw_body(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout, int chunk, int splits) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    const int N = Cin * Ks, K = B * Lout;
    for (int z = blockIdx.z; z < splits; z += gridDim.z) {
        const int k_begin = z * chunk;
        const int k_end = K - k_begin < chunk ? K : k_begin + chunk;  // no int overflow
        float* pz = partial + (u64)z * Cout * N;
        auto at_a = [=](int co, int kk) {
            int b = kk / Lout, l = kk - b * Lout;
            return dy + ((u64)b * Cout + co) * Lout + l;
        };
        auto at_b = [=](int kk, int n) -> const float* {
            int b = kk / Lout, l = kk - b * Lout;
            int ci = n / Ks, k = n - ci * Ks;
            int pos = l * stride + k - pad;
            return (pos >= 0 && pos < L) ? x + ((u64)b * Cin + ci) * L + pos : nullptr;
        };
        auto store = [=](int co, int n, float v) { pz[(u64)co * N + n] = v; };
        // A: consecutive kk are consecutive l of dy (contiguous); B: consecutive kk step l.
        conv_gemm<PREC, PIPE>(Cout, N, k_begin, k_end, m0, n0, true, false, dy, at_a, at_b, false, NoScale{}, store);
    }
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    conv1d_dw_f32(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout, int chunk, int splits) {
    conv1d_dw_body<0>(dy, x, partial, B, Cin, L, Cout, Ks, stride, pad, Lout, chunk, splits);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dw_tc_tf32(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout, int chunk, int splits) {
    conv1d_dw_body<1>(dy, x, partial, B, Cin, L, Cout, Ks, stride, pad, Lout, chunk, splits);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dw_tc_bf16(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, int B, int Cin, int L, int Cout, int Ks,
                  int stride, int pad, int Lout, int chunk, int splits) {
    conv1d_dw_body<2>(dy, x, partial, B, Cin, L, Cout, Ks, stride, pad, Lout, chunk, splits);
}

// ---- The pipelined builds (--precision tf32|bf16 on the cp.async tile) -------------------------
extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_fwd_tc_pipe_tf32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, const float* __restrict__ res, int relu,
                            float* __restrict__ y, int B, int Cin, int L, int Cout, int Ks, int stride, int pad, int Lout) {
    conv1d_fwd_body<1, true>(x, w, bias, res, relu, y, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_fwd_tc_pipe_bf16(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, const float* __restrict__ res, int relu,
                            float* __restrict__ y, int B, int Cin, int L, int Cout, int Ks, int stride, int pad, int Lout) {
    conv1d_fwd_body<2, true>(x, w, bias, res, relu, y, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dx_tc_pipe_tf32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int B, int Cin, int L, int Cout, int Ks,
                           int stride, int pad, int Lout) {
    conv1d_dx_body<1, true>(dy, w, dx, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dx_tc_pipe_bf16(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int B, int Cin, int L, int Cout, int Ks,
                           int stride, int pad, int Lout) {
    conv1d_dx_body<2, true>(dy, w, dx, B, Cin, L, Cout, Ks, stride, pad, Lout);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dw_tc_pipe_tf32(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, int B, int Cin, int L, int Cout, int Ks,
                           int stride, int pad, int Lout, int chunk, int splits) {
    conv1d_dw_body<1, true>(dy, x, partial, B, Cin, L, Cout, Ks, stride, pad, Lout, chunk, splits);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv1d_dw_tc_pipe_bf16(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, int B, int Cin, int L, int Cout, int Ks,
                           int stride, int pad, int Lout, int chunk, int splits) {
    conv1d_dw_body<2, true>(dy, x, partial, B, Cin, L, Cout, Ks, stride, pad, Lout, chunk, splits);
}
