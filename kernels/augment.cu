// Mind Reader's training augmentations on planar f32 images [B, 3, H, W] in [0, 1]. Per-image
// random parameters are drawn on the host (src/ops/augment.rs) and passed in as small arrays, so
// these kernels are deterministic and match the CPU twins. One thread per output element unless
// a kernel says otherwise; grid-stride loops throughout.
#include "common.cuh"

// y[b,c,i,j] = x[b,c,i, flip[b] ? W−1−j : j].
extern "C" __global__ void hflip_f32(const float* x, float* y, const int* flip, unsigned B, unsigned H, unsigned W) {
    u64 total = (u64)B * 3 * H * W;
    FOR_EACH(o, total) {
        unsigned j = o % W;
        u64 row = o / W;
        unsigned b = row / (3ull * H);
        y[o] = x[row * W + (flip[b] ? W - 1 - j : j)];
    }
}

// Bilinear resample of a per-image crop back to H × W. Row i of image b reads rows r0/r1[b·H+i]
// with weight fy = rf[b·H+i]; column j reads c0/c1[b·W+j] with fx = cf[b·W+j] (host tables).
extern "C" __global__ void resized_crop_f32(const float* x, float* y, const int* r0, const int* r1, const float* rf,
                                            const int* c0, const int* c1, const float* cf, unsigned B, unsigned H, unsigned W) {
    u64 total = (u64)B * 3 * H * W;
    FOR_EACH(o, total) {
        unsigned j = o % W;
        u64 rest = o / W;
        unsigned i = rest % H;
        u64 plane = rest / H;
        unsigned b = plane / 3;
        const float* p = x + plane * H * W;
        u64 r = (u64)b * H + i, k = (u64)b * W + j;
        float fy = rf[r], fx = cf[k];
        const float* row0 = p + (u64)r0[r] * W;
        const float* row1 = p + (u64)r1[r] * W;
        y[o] = (1.f - fy) * ((1.f - fx) * row0[c0[k]] + fx * row0[c1[k]]) + fy * ((1.f - fx) * row1[c0[k]] + fx * row1[c1[k]]);
    }
}

// Flagged images become l = l0·r + l1·g + l2·b in every channel. One thread per pixel.
extern "C" __global__ void grayscale_f32(const float* x, float* y, const int* gray, unsigned B, unsigned H, unsigned W,
                                         float l0, float l1, float l2) {
    u64 hw = (u64)H * W, total = (u64)B * hw;
    FOR_EACH(q, total) {
        u64 b = q / hw, p = q % hw;
        const float* src = x + b * 3 * hw + p;
        float* dst = y + b * 3 * hw + p;
        float r = src[0], g = src[hw], bl = src[2 * hw];
        if (gray[b]) {
            // Each product rounded, then the sums, as torchvision (and the CPU twin) compute it:
            // nvcc would otherwise fuse these into FMAs and land an ulp away.
            float l = __fadd_rn(__fadd_rn(__fmul_rn(l0, r), __fmul_rn(l1, g)), __fmul_rn(l2, bl));
            r = g = bl = l;
        }
        dst[0] = r;
        dst[hw] = g;
        dst[2 * hw] = bl;
    }
}

__device__ __forceinline__ float blend(float a, float b, float f) { return fminf(fmaxf(f * a + (1.f - f) * b, 0.f), 1.f); }

// torchvision's adjust_hue on one pixel: _rgb2hsv, h ← (h + shift) mod 1, _hsv2rgb.
__device__ __forceinline__ void hue_shift(float& r, float& g, float& b, float shift) {
    float maxc = fmaxf(fmaxf(r, g), b), minc = fminf(fminf(r, g), b);
    bool eqc = maxc == minc;
    float cr = maxc - minc;
    float s = cr / (eqc ? 1.f : maxc);
    float crd = eqc ? 1.f : cr;
    float rc = (maxc - r) / crd, gc = (maxc - g) / crd, bc = (maxc - b) / crd;
    float h = maxc == r ? bc - gc : maxc == g ? 2.f + rc - bc : 4.f + gc - rc;
    h = fmodf(h / 6.f + 1.f, 1.f);
    h = h + shift;
    h = h - floorf(h);
    float v = maxc, i6 = floorf(h * 6.f), f = h * 6.f - i6;
    float p = fminf(fmaxf(v * (1.f - s), 0.f), 1.f);
    float q = fminf(fmaxf(v * (1.f - s * f), 0.f), 1.f);
    float t = fminf(fmaxf(v * (1.f - s * (1.f - f)), 0.f), 1.f);
    int i = (((int)i6 % 6) + 6) % 6;
    switch (i) {
        case 0: r = v; g = t; b = p; break;
        case 1: r = q; g = v; b = p; break;
        case 2: r = p; g = v; b = t; break;
        case 3: r = p; g = q; b = v; break;
        case 4: r = t; g = p; b = v; break;
        default: r = v; g = p; b = q; break;
    }
}

// One block per image. params[b·9 ..] = [on, brightness, contrast, saturation, hue, order0..3].
// Every thread owns pixels p ≡ threadIdx.x (mod blockDim.x) through all four steps; the contrast
// step's mean is a block reduction of the luma (l0, l1, l2 = 0.2989, 0.587, 0.114).
extern "C" __global__ void color_jitter_f32(const float* x, float* y, const float* params, unsigned H, unsigned W) {
    __shared__ float scratch[32];
    u64 hw = (u64)H * W;
    const float* src = x + (u64)blockIdx.x * 3 * hw;
    float* r = y + (u64)blockIdx.x * 3 * hw;
    float* g = r + hw;
    float* bl = g + hw;
    const float* prm = params + (u64)blockIdx.x * 9;
    for (u64 p = threadIdx.x; p < hw; p += blockDim.x) {
        r[p] = src[p];
        g[p] = src[hw + p];
        bl[p] = src[2 * hw + p];
    }
    if (prm[0] == 0.f) return;  // uniform across the block
    for (int k = 0; k < 4; k++) {
        int op = (int)prm[5 + k];
        float f = prm[1 + op];
        if (op == 0) {
            for (u64 p = threadIdx.x; p < hw; p += blockDim.x) {
                r[p] = blend(r[p], 0.f, f);
                g[p] = blend(g[p], 0.f, f);
                bl[p] = blend(bl[p], 0.f, f);
            }
        } else if (op == 1) {
            float part = 0.f;
            for (u64 p = threadIdx.x; p < hw; p += blockDim.x) part += 0.2989f * r[p] + 0.587f * g[p] + 0.114f * bl[p];
            float mean = block_sum(part, scratch) / (float)hw;
            for (u64 p = threadIdx.x; p < hw; p += blockDim.x) {
                r[p] = blend(r[p], mean, f);
                g[p] = blend(g[p], mean, f);
                bl[p] = blend(bl[p], mean, f);
            }
        } else if (op == 2) {
            for (u64 p = threadIdx.x; p < hw; p += blockDim.x) {
                float l = 0.2989f * r[p] + 0.587f * g[p] + 0.114f * bl[p];
                r[p] = blend(r[p], l, f);
                g[p] = blend(g[p], l, f);
                bl[p] = blend(bl[p], l, f);
            }
        } else {
            for (u64 p = threadIdx.x; p < hw; p += blockDim.x) {
                float rr = r[p], gg = g[p], bb = bl[p];
                hue_shift(rr, gg, bb, f);
                r[p] = rr;
                g[p] = gg;
                bl[p] = bb;
            }
        }
    }
}

// torch's reflect padding index (repeated for axes shorter than the kernel; n = 1 → 0).
__device__ __forceinline__ long long reflect(long long i, long long n) {
    if (n == 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
    return i;
}

// Row pass of the separable Gaussian blur: tmp = Σ_t w[b·K + t]·x[…, reflect(j + t − K/2)];
// images with on[b] = 0 are copied.
extern "C" __global__ void blur_h_f32(const float* x, float* tmp, const float* w, const int* on, unsigned B, unsigned H,
                                      unsigned W, unsigned K) {
    u64 total = (u64)B * 3 * H * W;
    FOR_EACH(o, total) {
        unsigned j = o % W;
        u64 row = o / W;
        unsigned b = row / (3ull * H);
        if (!on[b]) { tmp[o] = x[o]; continue; }
        const float* src = x + row * W;
        const float* k = w + (u64)b * K;
        long long half = K / 2;
        float acc = 0.f;
        for (unsigned t = 0; t < K; t++) acc += k[t] * src[reflect((long long)j + t - half, W)];
        tmp[o] = acc;
    }
}

// Column pass: y = Σ_t w[b·K + t]·tmp[…, reflect(i + t − K/2), j].
extern "C" __global__ void blur_v_f32(const float* tmp, float* y, const float* w, const int* on, unsigned B, unsigned H,
                                      unsigned W, unsigned K) {
    u64 total = (u64)B * 3 * H * W;
    FOR_EACH(o, total) {
        unsigned j = o % W;
        u64 rest = o / W;
        unsigned i = rest % H;
        u64 plane = rest / H;
        unsigned b = plane / 3;
        if (!on[b]) { y[o] = tmp[o]; continue; }
        const float* src = tmp + plane * H * W + j;
        const float* k = w + (u64)b * K;
        long long half = K / 2;
        float acc = 0.f;
        for (unsigned t = 0; t < K; t++) acc += k[t] * src[(u64)reflect((long long)i + t - half, H) * W];
        y[o] = acc;
    }
}

// y = 0 inside image b's rectangle rect[b·4 ..] = [top, bottom, left, right) (half-open), else x.
extern "C" __global__ void cutout_f32(const float* x, float* y, const int* rect, unsigned B, unsigned H, unsigned W) {
    u64 total = (u64)B * 3 * H * W;
    FOR_EACH(o, total) {
        unsigned j = o % W;
        u64 rest = o / W;
        unsigned i = rest % H;
        unsigned b = rest / H / 3;
        const int* r = rect + (u64)b * 4;
        bool inside = (int)i >= r[0] && (int)i < r[1] && (int)j >= r[2] && (int)j < r[3];
        y[o] = inside ? 0.f : x[o];
    }
}
