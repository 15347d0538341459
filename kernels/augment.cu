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
