// Minibatch standard deviation (StyleGAN2's MinibatchStdLayer; src/ops/mbstd.rs has the math).
// x [N, C, H, W] splits into G groups of n = N/G samples, strided: group slot g holds samples
// {g·n + j}; channels into F groups of c = C/F. stat[j, f] = mean over (c, H, W) of the standard
// deviation over g. y = [x, stat broadcast] : [N, C + F, H, W].
#include "common.cuh"

struct Mbstd {
    int N, C, HW, G, F;
};

// σ over the group of sample slot j at (channel ch, pixel p), and the sample's deviation x − μ.
__device__ __forceinline__ float group_sigma(const float* x, const Mbstd& d, int j, int ch, int p, float* mean_out) {
    const int n = d.N / d.G;
    float mu = 0.f;
    for (int g = 0; g < d.G; g++) mu += x[((u64)(g * n + j) * d.C + ch) * d.HW + p];
    mu /= d.G;
    float var = 0.f;
    for (int g = 0; g < d.G; g++) {
        float v = x[((u64)(g * n + j) * d.C + ch) * d.HW + p] - mu;
        var = fmaf(v, v, var);
    }
    *mean_out = mu;
    return sqrtf(var / d.G + 1e-8f);
}

// One block per (j, f): stat[j, f] = (1/(c·HW)) Σ σ.
extern "C" __global__ void __launch_bounds__(256) mbstd_stat_f32(const float* __restrict__ x, float* __restrict__ stat, Mbstd d) {
    __shared__ float scratch[32];
    const int c = d.C / d.F, n = d.N / d.G;
    for (int r = blockIdx.x; r < n * d.F; r += gridDim.x) {
        const int j = r / d.F, f = r % d.F;
        float acc = 0.f, mu;
        for (int e = threadIdx.x; e < c * d.HW; e += blockDim.x) acc += group_sigma(x, d, j, f * c + e / d.HW, e % d.HW, &mu);
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) stat[r] = acc / (c * d.HW);
        __syncthreads();  // scratch is reused by the next r
    }
}

// y[s, ch, p] = x[s, ch, p] for ch < C, stat[s mod n, ch − C] after.
extern "C" __global__ void mbstd_fwd_f32(const float* __restrict__ x, const float* __restrict__ stat, float* __restrict__ y, Mbstd d) {
    const int CF = d.C + d.F, n = d.N / d.G;
    FOR_EACH(i, (u64)d.N * CF * d.HW) {
        const int p = i % d.HW, ch = (i / d.HW) % CF, s = i / ((u64)d.HW * CF);
        y[i] = ch < d.C ? x[((u64)s * d.C + ch) * d.HW + p] : stat[(s % n) * d.F + ch - d.C];
    }
}

// One block per (j, f): dstat[j, f] = Σ over the group's samples and pixels of dy[·, C + f, ·].
extern "C" __global__ void __launch_bounds__(256) mbstd_dstat_f32(const float* __restrict__ dy, float* __restrict__ dstat, Mbstd d) {
    __shared__ float scratch[32];
    const int CF = d.C + d.F, n = d.N / d.G;
    for (int r = blockIdx.x; r < n * d.F; r += gridDim.x) {
        const int j = r / d.F, f = r % d.F;
        float acc = 0.f;
        for (int e = threadIdx.x; e < d.G * d.HW; e += blockDim.x)
            acc += dy[((u64)((e / d.HW) * n + j) * CF + d.C + f) * d.HW + e % d.HW];
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) dstat[r] = acc;
        __syncthreads();
    }
}

// dx[s, ch, p] = dy[s, ch, p] + dstat[j, f] / (c·HW) · (x − μ) / (G·σ), j = s mod n, f = ch / c.
extern "C" __global__ void mbstd_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ dstat,
                                         float* __restrict__ dx, Mbstd d) {
    const int CF = d.C + d.F, n = d.N / d.G, c = d.C / d.F;
    FOR_EACH(i, (u64)d.N * d.C * d.HW) {
        const int p = i % d.HW, ch = (i / d.HW) % d.C, s = i / ((u64)d.HW * d.C);
        const int j = s % n, f = ch / c;
        float mu, sigma = group_sigma(x, d, j, ch, p, &mu);
        float g = dstat[j * d.F + f] / (c * d.HW);
        dx[i] = dy[((u64)s * CF + ch) * d.HW + p] + g * (x[i] - mu) / (d.G * sigma);
    }
}
