// Copies a block of rows along one axis between tensors viewed as [outer, n, inner]:
// dst[o, dst_off + i, r] = src[o, src_off + i, r] for i < len. Concat and slice (and their
// backwards) are this one copy: 8 B per moved element in f32, coalesced along inner.
#include "common.cuh"

extern "C" __global__ void copy_axis_f32(const float* src, float* dst, unsigned outer, unsigned n_src, unsigned n_dst, unsigned inner,
                                         unsigned src_off, unsigned dst_off, unsigned len) {
    u64 n = (u64)outer * len * inner;
    FOR_EACH(k, n) {
        u64 r = k % inner, i = (k / inner) % len, o = k / ((u64)inner * len);
        dst[(o * n_dst + dst_off + i) * inner + r] = src[(o * n_src + src_off + i) * inner + r];
    }
}
