// upfirdn2d: upsample by zero insertion, pad (negative = crop), FIR filter, downsample — StyleGAN2's
// resampling primitive. The math is in src/ops/upfirdn2d.rs. x and y are [planes, H, W] (planes =
// N·C, each filtered alone); f is [FH, FW]; `flip` = 0 applies f as a true convolution (the
// reference's default), 1 as a correlation. One thread per output element, grid-stride. The
// forward can finish a synthesis layer as it stores y (kernels/epilogue.cuh; planes = N·C).
#include "epilogue.cuh"

struct Fir {
    int planes, H, W, OH, OW, up, down, px0, py0, FH, FW, flip;
    float gain;
};

// The correlation tap (i, j) of the filter: f flipped unless `flip`, times gain.
__device__ __forceinline__ float tap(const float* f, const Fir& d, int i, int j) {
    return d.gain * (d.flip ? f[i * d.FW + j] : f[(d.FH - 1 - i) * d.FW + (d.FW - 1 - j)]);
}

// y[p, oy, ox] = Σ_{i, j} tap(i, j) · u[p, oy·down + i − py0, ox·down + j − px0], where u is x upsampled
// (u[r, c] = x[r/up, c/up] when both divide, 0 elsewhere and outside the image).
extern "C" __global__ void upfirdn2d_fwd_f32(const float* __restrict__ x, const float* __restrict__ f, float* __restrict__ y, Fir d,
                                             const float* __restrict__ bias, const float* __restrict__ noise,
                                             const float* __restrict__ strength, Epi e, int C) {
    const int UH = d.H * d.up, UW = d.W * d.up;
    FOR_EACH(idx, (u64)d.planes * d.OH * d.OW) {
        const int ox = idx % d.OW, oy = (idx / d.OW) % d.OH;
        const u64 p = idx / ((u64)d.OW * d.OH);
        const float* xp = x + p * d.H * d.W;
        float acc = 0.f;
        for (int i = 0; i < d.FH; i++) {
            int r = oy * d.down + i - d.py0;
            if (r < 0 || r >= UH || r % d.up != 0) continue;
            for (int j = 0; j < d.FW; j++) {
                int c = ox * d.down + j - d.px0;
                if (c < 0 || c >= UW || c % d.up != 0) continue;
                acc = fmaf(tap(f, d, i, j), xp[(r / d.up) * d.W + c / d.up], acc);
            }
        }
        const u64 P = (u64)d.OH * d.OW;
        y[idx] = epilogue(acc, bias, noise, strength, e, p / C, (int)(p % C), idx - p * P, P);
    }
}

// The adjoint: dx[p, iy, ix] = Σ tap(i, j) · dy[p, oy, ox] over the (oy, i) with oy·down + i − py0 = iy·up
// (and likewise for columns) inside the output. One thread per input element, so no atomics.
extern "C" __global__ void upfirdn2d_bwd_f32(const float* __restrict__ dy, const float* __restrict__ f, float* __restrict__ dx, Fir d) {
    FOR_EACH(idx, (u64)d.planes * d.H * d.W) {
        const int ix = idx % d.W, iy = (idx / d.W) % d.H;
        const u64 p = idx / ((u64)d.W * d.H);
        const float* dyp = dy + p * d.OH * d.OW;
        float acc = 0.f;
        for (int i = 0; i < d.FH; i++) {
            int r = iy * d.up + d.py0 - i;
            if (r < 0 || r % d.down != 0 || r / d.down >= d.OH) continue;
            for (int j = 0; j < d.FW; j++) {
                int c = ix * d.up + d.px0 - j;
                if (c < 0 || c % d.down != 0 || c / d.down >= d.OW) continue;
                acc = fmaf(tap(f, d, i, j), dyp[(r / d.down) * d.OW + c / d.down], acc);
            }
        }
        dx[idx] = acc;
    }
}
