// Conv2d (PyTorch semantics: NCHW, cross-correlation, zero padding, stride, groups) as three
// implicit GEMMs on the shared tile of kernels/gemm_tile.cuh: no im2col buffer, the loaders gather
// from x / dy and return 0 in the padding. The math and shapes are in src/ops/conv2d.rs.
//
//   x [B, Cin, H, W], w [Cout, Cin/G, KH, KW], y [B, Cout, OH, OW],
//   y[b, co, oy, ox] = os[b, co] · Σ_{ci, ky, kx} w[co, ci, ky, kx] · is[b, ci'] · x[b, ci', oy·s + ky − ph, ox·s + kx − pw]
//   with ci' = g·Cin/G + ci for co in group g.
//
// `is` (per input channel) and `os` (per output channel) are optional [B, C] scales (null when
// absent): the modulated convolution (src/ops/modconv.rs) passes its styles and demodulation
// coefficients through them, so no per-sample weight tensor is ever written.
//
// Every kernel: 256-thread blocks, grid (⌈N/64⌉, ⌈M/64⌉, z), blocks loop over z past gridDim.z.
// Each comes as _f32 (SIMT), _tc_tf32 / _tc_bf16 (tensor cores, register-staged) and
// _tc_pipe_tf32 / _tc_pipe_bf16 (tensor cores through the cp.async pipeline of
// gemm_tile_tc_pipe.cuh, bit for bit the _tc_ result; dynamic shared memory). The pipelined dW
// takes no scales (they depend on two GEMM indices there): the host uses _tc_ dW for those.
// The geometry travels as one struct Geom.
//
// The forward pass can finish StyleGAN2's layer as it stores y (kernels/epilogue.cuh): with
// u = os ⊙ conv, `y = epilogue(u)`; `pre`, when not null, receives u for the modulated
// convolution's backward.
#include "epilogue.cuh"
#include "gemm_tile.cuh"
#include "gemm_tile_tc.cuh"
#include "gemm_tile_tc_pipe.cuh"

struct Geom {
    int B, Cin, H, W, Cout, KH, KW, stride, ph, pw, OH, OW, G;
    __device__ int cin_g() const { return Cin / G; }
    __device__ int cout_g() const { return Cout / G; }
};

__device__ __forceinline__ float scale_at(const float* s, int b, int C, int c) { return s ? s[(u64)b * C + c] : 1.f; }

// Forward, per (b, g) on grid z: M = Cout/G, N = OH·OW, K = (Cin/G)·KH·KW (kk = (ci·KH + ky)·KW + kx).
template <int PREC, bool PIPE = false>
__device__ __forceinline__ void conv2d_fwd_body(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, const float* __restrict__ is,
                   const float* __restrict__ os, Geom d, const float* __restrict__ bias, const float* __restrict__ noise,
                   const float* __restrict__ strength, float* __restrict__ pre, Epi e) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    const int cin_g = d.cin_g(), cout_g = d.cout_g(), KHW = d.KH * d.KW, K = cin_g * KHW, N = d.OH * d.OW;
    for (int z = blockIdx.z; z < d.B * d.G; z += gridDim.z) {
        const int b = z / d.G, g = z - b * d.G;
        const float* xb = x + ((u64)b * d.Cin + (u64)g * cin_g) * d.H * d.W;
        auto at_a = [=](int co, int kk) { return w + (u64)(g * cout_g + co) * K + kk; };
        auto at_b = [=](int kk, int n) -> const float* {
            int ci = kk / KHW, r = kk - ci * KHW, ky = r / d.KW, kx = r - ky * d.KW;
            int oy = n / d.OW, ox = n - oy * d.OW;
            int iy = oy * d.stride + ky - d.ph, ix = ox * d.stride + kx - d.pw;
            if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return nullptr;
            return xb + ((u64)ci * d.H + iy) * d.W + ix;
        };
        // The input channel's scale: one per k row of B.
        auto scale_b = [=](int kk) { return is + (u64)b * d.Cin + g * cin_g + kk / KHW; };
        auto store = [=](int co, int n, float v) {
            const int c = g * cout_g + co;
            const u64 at = ((u64)b * d.Cout + c) * N + n;
            v = __fmul_rn(v, scale_at(os, b, d.Cout, c));  // never contracted into what follows
            if (pre) pre[at] = v;
            y[at] = epilogue(v, bias, noise, strength, e, b, c, n, N);
        };
        conv_gemm<PREC, PIPE>(cout_g, N, 0, K, m0, n0, true, true, w, at_a, at_b, is != nullptr, scale_b, store);
    }
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    conv2d_fwd_f32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, const float* __restrict__ is,
                   const float* __restrict__ os, Geom d, const float* __restrict__ bias, const float* __restrict__ noise,
                   const float* __restrict__ strength, float* __restrict__ pre, Epi e) {
    conv2d_fwd_body<0>(x, w, y, is, os, d, bias, noise, strength, pre, e);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_fwd_tc_tf32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, const float* __restrict__ is,
                   const float* __restrict__ os, Geom d, const float* __restrict__ bias, const float* __restrict__ noise,
                   const float* __restrict__ strength, float* __restrict__ pre, Epi e) {
    conv2d_fwd_body<1>(x, w, y, is, os, d, bias, noise, strength, pre, e);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_fwd_tc_bf16(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, const float* __restrict__ is,
                   const float* __restrict__ os, Geom d, const float* __restrict__ bias, const float* __restrict__ noise,
                   const float* __restrict__ strength, float* __restrict__ pre, Epi e) {
    conv2d_fwd_body<2>(x, w, y, is, os, d, bias, noise, strength, pre, e);
}

// dx (also the transposed convolution's forward), per (b, g): M = Cin/G, N = H·W,
// K = (Cout/G)·KH·KW (kk = (co·KH + ky)·KW + kx). dx[b, ci, iy, ix] = is[b, ci] · Σ w[co, ci, ky, kx] ·
// os[b, co] · dy[b, co, oy, ox] over the (oy, ox) with oy·s + ky − ph = iy (exactly) inside the output.
// Every dx element is stored, including those no output touched (they get 0).
template <int PREC, bool PIPE = false>
__device__ __forceinline__ void conv2d_dx_body(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    const int cin_g = d.cin_g(), cout_g = d.cout_g(), KHW = d.KH * d.KW, K = cout_g * KHW, N = d.H * d.W;
    for (int z = blockIdx.z; z < d.B * d.G; z += gridDim.z) {
        const int b = z / d.G, g = z - b * d.G;
        const float* dyb = dy + ((u64)b * d.Cout + (u64)g * cout_g) * d.OH * d.OW;
        auto at_a = [=](int ci, int kk) {
            int co = kk / KHW, r = kk - co * KHW;
            return w + ((u64)(g * cout_g + co) * cin_g + ci) * KHW + r;
        };
        auto at_b = [=](int kk, int j) -> const float* {
            int co = kk / KHW, r = kk - co * KHW, ky = r / d.KW, kx = r - ky * d.KW;
            int iy = j / d.W, ix = j - iy * d.W;
            int ty = iy + d.ph - ky, tx = ix + d.pw - kx;
            if (ty < 0 || tx < 0 || ty % d.stride != 0 || tx % d.stride != 0) return nullptr;
            int oy = ty / d.stride, ox = tx / d.stride;
            if (oy >= d.OH || ox >= d.OW) return nullptr;
            return dyb + ((u64)co * d.OH + oy) * d.OW + ox;
        };
        // The output channel's scale: one per k row of B.
        auto scale_b = [=](int kk) { return os + (u64)b * d.Cout + g * cout_g + kk / KHW; };
        auto store = [=](int ci, int j, float v) {
            int c = g * cin_g + ci;
            dx[((u64)b * d.Cin + c) * N + j] = v * scale_at(is, b, d.Cin, c);
        };
        // A: consecutive ci are KH·KW apart in w: walk m.
        conv_gemm<PREC, PIPE>(cin_g, N, 0, K, m0, n0, false, true, w, at_a, at_b, os != nullptr, scale_b, store);
    }
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    conv2d_dx_f32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d) {
    conv2d_dx_body<0>(dy, w, dx, is, os, d);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dx_tc_tf32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d) {
    conv2d_dx_body<1>(dy, w, dx, is, os, d);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dx_tc_bf16(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d) {
    conv2d_dx_body<2>(dy, w, dx, is, os, d);
}

// dW, split-K per group: grid z = (g, split); M = Cout/G, N = (Cin/G)·KH·KW, K = B·OH·OW
// (kk = b·OH·OW + p), cut into `splits` chunks of `chunk` (a multiple of 16). Split z of group g writes
// partial[split, g·Cout/G + co, n]; the host sums the splits in a fixed order (deterministic).
template <int PREC, bool PIPE = false>
__device__ __forceinline__ void conv2d_dw_body(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d, int chunk, int splits) {
    const int m0 = blockIdx.y * gemm::BM, n0 = blockIdx.x * gemm::BN;
    const int cin_g = d.cin_g(), cout_g = d.cout_g(), KHW = d.KH * d.KW, N = cin_g * KHW, P = d.OH * d.OW, K = d.B * P;
    for (int z = blockIdx.z; z < d.G * splits; z += gridDim.z) {
        const int g = z / splits, split = z - g * splits;
        const int k_begin = split * chunk;
        const int k_end = K - k_begin < chunk ? K : k_begin + chunk;  // no int overflow
        float* pz = partial + (u64)split * d.Cout * N;
        auto at_a = [=](int co, int kk) {
            int b = kk / P, p = kk - b * P;
            return dy + ((u64)b * d.Cout + g * cout_g + co) * P + p;
        };
        auto at_b = [=](int kk, int n) -> const float* {
            int b = kk / P, p = kk - b * P, oy = p / d.OW, ox = p - oy * d.OW;
            int ci = n / KHW, r = n - ci * KHW, ky = r / d.KW, kx = r - ky * d.KW;
            int iy = oy * d.stride + ky - d.ph, ix = ox * d.stride + kx - d.pw;
            if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return nullptr;
            return x + (((u64)b * d.Cin + g * cin_g + ci) * d.H + iy) * d.W + ix;
        };
        auto store = [=](int co, int n, float v) { pz[(u64)(g * cout_g + co) * N + n] = v; };
        // A: consecutive kk are consecutive pixels of dy (contiguous); B: consecutive kk step pixels.
        if constexpr (PIPE) {
            // Unscaled only (the host's rule).
            conv_gemm<PREC, true>(cout_g, N, k_begin, k_end, m0, n0, true, false, dy, at_a, at_b, false, NoScale{}, store);
        } else {
            // Both scales depend on the batch item of k and on m or n: applied per element.
            auto load_a = [=](int co, int kk) {
                int b = kk / P, p = kk - b * P, c = g * cout_g + co;
                return dy[((u64)b * d.Cout + c) * P + p] * scale_at(os, b, d.Cout, c);
            };
            auto load_b = [=](int kk, int n) {
                int b = kk / P, p = kk - b * P, oy = p / d.OW, ox = p - oy * d.OW;
                int ci = n / KHW, r = n - ci * KHW, ky = r / d.KW, kx = r - ky * d.KW;
                int iy = oy * d.stride + ky - d.ph, ix = ox * d.stride + kx - d.pw;
                if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return 0.f;
                int c = g * cin_g + ci;
                return x[(((u64)b * d.Cin + c) * d.H + iy) * d.W + ix] * scale_at(is, b, d.Cin, c);
            };
            gemm_tile_at<PREC>(cout_g, N, k_begin, k_end, m0, n0, true, false, load_a, load_b, store);
        }
    }
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    conv2d_dw_f32(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d, int chunk, int splits) {
    conv2d_dw_body<0>(dy, x, partial, is, os, d, chunk, splits);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dw_tc_tf32(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d, int chunk, int splits) {
    conv2d_dw_body<1>(dy, x, partial, is, os, d, chunk, splits);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dw_tc_bf16(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, const float* __restrict__ is,
                  const float* __restrict__ os, Geom d, int chunk, int splits) {
    conv2d_dw_body<2>(dy, x, partial, is, os, d, chunk, splits);
}

// ---- The pipelined builds (--precision tf32|bf16 on the cp.async tile) -------------------------
extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_fwd_tc_pipe_tf32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, const float* __restrict__ is,
                            const float* __restrict__ os, Geom d, const float* __restrict__ bias, const float* __restrict__ noise,
                   const float* __restrict__ strength, float* __restrict__ pre, Epi e) {
    conv2d_fwd_body<1, true>(x, w, y, is, os, d, bias, noise, strength, pre, e);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_fwd_tc_pipe_bf16(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, const float* __restrict__ is,
                            const float* __restrict__ os, Geom d, const float* __restrict__ bias, const float* __restrict__ noise,
                   const float* __restrict__ strength, float* __restrict__ pre, Epi e) {
    conv2d_fwd_body<2, true>(x, w, y, is, os, d, bias, noise, strength, pre, e);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dx_tc_pipe_tf32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, const float* __restrict__ is,
                           const float* __restrict__ os, Geom d) {
    conv2d_dx_body<1, true>(dy, w, dx, is, os, d);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dx_tc_pipe_bf16(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, const float* __restrict__ is,
                           const float* __restrict__ os, Geom d) {
    conv2d_dx_body<2, true>(dy, w, dx, is, os, d);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dw_tc_pipe_tf32(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, const float* __restrict__ is,
                           const float* __restrict__ os, Geom d, int chunk, int splits) {
    conv2d_dw_body<1, true>(dy, x, partial, is, os, d, chunk, splits);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS, 1)
    conv2d_dw_tc_pipe_bf16(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial, const float* __restrict__ is,
                           const float* __restrict__ os, Geom d, int chunk, int splits) {
    conv2d_dw_body<2, true>(dy, x, partial, is, os, d, chunk, splits);
}
