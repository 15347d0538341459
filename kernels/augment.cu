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
            float l = l0 * r + l1 * g + l2 * bl;
            r = g = bl = l;
        }
        dst[0] = r;
        dst[hw] = g;
        dst[2 * hw] = bl;
    }
}
