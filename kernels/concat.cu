// Copies a block of rows along one axis between tensors viewed as [outer, n, inner]:
// dst[o, dst_off + i, r] = src[o, src_off + i, r] for i < len. Concat and slice (and their
// backwards) are this one copy: 8 B per moved element in f32, coalesced along inner.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void copy_axis(const T* src, T* dst, unsigned outer, unsigned n_src, unsigned n_dst, unsigned inner,
                                          unsigned src_off, unsigned dst_off, unsigned len) {
    u64 n = (u64)outer * len * inner;
    FOR_EACH(k, n) {
        u64 r = k % inner, i = (k / inner) % len, o = k / ((u64)inner * len);
        dst[(o * n_dst + dst_off + i) * inner + r] = src[(o * n_src + src_off + i) * inner + r];
    }
}

extern "C" __global__ void copy_axis_f32(const float* src, float* dst, unsigned outer, unsigned n_src, unsigned n_dst, unsigned inner,
                                         unsigned src_off, unsigned dst_off, unsigned len) {
    copy_axis(src, dst, outer, n_src, n_dst, inner, src_off, dst_off, len);
}

// Any 2-byte element (bf16, f16): the bits move unchanged.
extern "C" __global__ void copy_axis_b16(const unsigned short* src, unsigned short* dst, unsigned outer, unsigned n_src, unsigned n_dst,
                                         unsigned inner, unsigned src_off, unsigned dst_off, unsigned len) {
    copy_axis(src, dst, outer, n_src, n_dst, inner, src_off, dst_off, len);
}
