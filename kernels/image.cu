// CLIP preprocessing: PIL's bicubic resize (two fixed-point u8 passes, horizontal first) over the
// centre crop, then ToTensor + Normalize. Tap ranges and 22-bit fixed-point weights come from the
// host (src/ops/image.rs, PIL's precompute_coeffs), so the integer maths here is bit-identical to
// the CPU twin. One thread per output element; each reads `count` ≤ ksize taps.
#include "common.cuh"

#define PRECISION_BITS 22

__device__ __forceinline__ unsigned char clip8(int ss) {
    int v = ss >> PRECISION_BITS;
    return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// img: [B, H, W, 3] u8; tmp: [B, rows, n, 3] u8 holds input rows row0..row0+rows resampled to the
// n cropped output columns. Output column j reads columns start[j]..start[j]+count[j].
extern "C" __global__ void resize_h_u8(const unsigned char* img, unsigned char* tmp, const int* start, const int* count,
                                       const int* weights, unsigned B, unsigned H, unsigned W, unsigned row0,
                                       unsigned rows, unsigned n, unsigned ksize) {
    u64 total = (u64)B * rows * n * 3;
    FOR_EACH(i, total) {
        unsigned c = i % 3;
        u64 rest = i / 3;
        unsigned j = rest % n;
        rest /= n;
        unsigned r = rest % rows;
        unsigned b = rest / rows;
        const unsigned char* src = img + (((u64)b * H + row0 + r) * W) * 3 + c;
        const int* k = weights + (u64)j * ksize;
        int s = start[j], cnt = count[j];
        int ss = 1 << (PRECISION_BITS - 1);
        for (int x = 0; x < cnt; x++) ss += (int)src[(s + x) * 3] * k[x];
        tmp[i] = clip8(ss);
    }
}

// tmp: [B, rows, n, 3] u8 → out: [B, 3, n, n] f32, (v/255 − mean[c]) / std[c]. Output row i reads
// tmp rows start[i]..start[i]+count[i].
extern "C" __global__ void resize_v_normalize_f32(const unsigned char* tmp, float* out, const int* start, const int* count,
                                                  const int* weights, unsigned B, unsigned rows, unsigned n, unsigned ksize,
                                                  float m0, float m1, float m2, float s0, float s1, float s2) {
    u64 total = (u64)B * 3 * n * n;
    FOR_EACH(o, total) {
        unsigned j = o % n;
        u64 rest = o / n;
        unsigned i = rest % n;
        rest /= n;
        unsigned c = rest % 3;
        unsigned b = rest / 3;
        const unsigned char* src = tmp + ((u64)b * rows * n + j) * 3 + c;
        const int* k = weights + (u64)i * ksize;
        int s = start[i], cnt = count[i];
        int ss = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < cnt; y++) ss += (int)src[(u64)(s + y) * n * 3] * k[y];
        float mean = c == 0 ? m0 : c == 1 ? m1 : m2;
        float stdv = c == 0 ? s0 : c == 1 ? s1 : s2;
        out[o] = ((float)clip8(ss) / 255.f - mean) / stdv;
    }
}
