// Broadcast products over channels and pixels (src/ops/channels.rs): a per-prefix scale, a row dot
// product, and StyleGAN2's noise injection. One thread per element (one warp per row for rowdot),
// grid-stride.
#include "common.cuh"

// y[i] = x[i] · s[i / inner]: s indexes x's leading axes and is broadcast over the rest.
extern "C" __global__ void broadcast_mul_f32(const float* __restrict__ x, const float* __restrict__ s, float* __restrict__ y, u64 n,
                                             u64 inner) {
    FOR_EACH(i, n) y[i] = x[i] * s[i / inner];
}

// out[r] = Σ_j a[r, j] · b[r, j] for r < rows; one warp per row, lanes stride the row.
extern "C" __global__ void rowdot_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out, u64 rows,
                                      u64 n) {
    const u64 warps = (u64)gridDim.x * blockDim.x / 32;
    const int lane = threadIdx.x & 31;
    for (u64 r = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows; r += warps) {
        const float* ar = a + r * n;
        const float* br = b + r * n;
        float acc = 0.f;
        for (u64 j = lane; j < n; j += 32) acc = fmaf(ar[j], br[j], acc);
        acc = warp_sum(acc);
        if (lane == 0) out[r] = acc;
    }
}

// y[b, c, p] = x[b, c, p] + strength · noise[b or 0, p]: x is [B, C, P]; noise is [B, P] when
// `batched`, else one [P] plane for every sample; `strength` points at one float on the device.
extern "C" __global__ void add_noise_f32(const float* __restrict__ x, const float* __restrict__ noise, const float* __restrict__ strength,
                                         float* __restrict__ y, u64 n, u64 C, u64 P, int batched) {
    const float s = strength[0];
    FOR_EACH(i, n) {
        u64 p = i % P, b = i / (C * P);
        y[i] = fmaf(s, noise[(batched ? b * P : 0) + p], x[i]);
    }
}
