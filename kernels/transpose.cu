// Swap two axes: x viewed as [A, n_i, B, n_j, C] → y [A, n_j, B, n_i, C]. Reads and writes each
// element once (8 B/element in f32, 4 B in bf16); writes are coalesced, reads are coalesced along C.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void transpose_body(const T* x, T* y, unsigned A, unsigned ni, unsigned B, unsigned nj, unsigned C) {
    u64 n = (u64)A * ni * B * nj * C;
    FOR_EACH(o, n) {
        // o indexes y = [a, j, b, i, c].
        u64 t = o;
        u64 c = t % C; t /= C;
        u64 i = t % ni; t /= ni;
        u64 b = t % B; t /= B;
        u64 j = t % nj; t /= nj;
        u64 a = t;
        y[o] = x[(((a * ni + i) * B + b) * nj + j) * C + c];
    }
}

extern "C" __global__ void transpose_f32(const float* x, float* y, unsigned A, unsigned ni, unsigned B, unsigned nj, unsigned C) {
    transpose_body(x, y, A, ni, B, nj, C);
}

// Any 2-byte element (bf16, f16): a pure copy, so the bits move unchanged.
extern "C" __global__ void transpose_b16(const unsigned short* x, unsigned short* y, unsigned A, unsigned ni, unsigned B, unsigned nj,
                                         unsigned C) {
    transpose_body(x, y, A, ni, B, nj, C);
}
