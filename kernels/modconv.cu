// The modulated convolution's small kernels (src/ops/modconv.rs): the demodulation coefficients and
// the two terms their backward adds. The convolution itself runs on kernels/conv2d.cu, with the
// styles and coefficients applied inside its loaders, so no per-sample weight tensor exists.
//
//   w [Cout, Cin, KK] (KK = KH·KW), s [B, Cin], d [B, Cout], P [B, Cout] = Σ_p dy ⊙ y.
#include "common.cuh"

// d[b, co] = rsqrt(Σ_{ci, k} (w[co, ci, k] · s[b, ci])² + 1e-8); one warp per (b, co).
extern "C" __global__ void modconv_demod_f32(const float* __restrict__ w, const float* __restrict__ s, float* __restrict__ d, int B,
                                             int Cout, int Cin, int KK) {
    const u64 warps = (u64)gridDim.x * blockDim.x / 32;
    const int lane = threadIdx.x & 31;
    const u64 row_len = (u64)Cin * KK;
    for (u64 r = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < (u64)B * Cout; r += warps) {
        const int b = r / Cout, co = r % Cout;
        const float* wr = w + co * row_len;
        float acc = 0.f;
        for (u64 j = lane; j < row_len; j += 32) {
            float v = wr[j] * s[(u64)b * Cin + j / KK];
            acc = fmaf(v, v, acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) d[r] = rsqrtf(acc + 1e-8f);
    }
}

// ds[b, ci] += s[b, ci] · Σ_co E[b, co] · Σ_k w[co, ci, k]², E = −P·d² (the demodulation's share of
// the style gradient); one warp per (b, ci).
extern "C" __global__ void modconv_demod_ds_f32(const float* __restrict__ P, const float* __restrict__ d, const float* __restrict__ w,
                                                const float* __restrict__ s, float* __restrict__ ds, int B, int Cout, int Cin, int KK) {
    const u64 warps = (u64)gridDim.x * blockDim.x / 32;
    const int lane = threadIdx.x & 31;
    for (u64 r = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < (u64)B * Cin; r += warps) {
        const int b = r / Cin, ci = r % Cin;
        float acc = 0.f;
        for (int co = lane; co < Cout; co += 32) {
            const float* wk = w + ((u64)co * Cin + ci) * KK;
            float w2 = 0.f;
            for (int k = 0; k < KK; k++) w2 = fmaf(wk[k], wk[k], w2);
            float dd = d[(u64)b * Cout + co];
            acc = fmaf(-P[(u64)b * Cout + co] * dd * dd, w2, acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) ds[r] += s[r] * acc;
    }
}

// dw[co, ci, k] += w[co, ci, k] · Σ_b E[b, co] · s[b, ci]²; one thread per (co, ci).
extern "C" __global__ void modconv_demod_dw_f32(const float* __restrict__ P, const float* __restrict__ d, const float* __restrict__ w,
                                                const float* __restrict__ s, float* __restrict__ dw, int B, int Cout, int Cin, int KK) {
    FOR_EACH(r, (u64)Cout * Cin) {
        const u64 co = r / Cin, ci = r % Cin;
        float coef = 0.f;
        for (int b = 0; b < B; b++) {
            float dd = d[(u64)b * Cout + co], sv = s[(u64)b * Cin + ci];
            coef = fmaf(-P[(u64)b * Cout + co] * dd * dd, sv * sv, coef);
        }
        for (int k = 0; k < KK; k++) dw[r * KK + k] = fmaf(w[r * KK + k], coef, dw[r * KK + k]);
    }
}
