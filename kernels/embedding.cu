// Embedding gather y[i, :] = w[ids[i], :] (8 B per output element in f32) and its backward,
// a scatter-add into dW with atomics (rows repeated in ids accumulate).
#include "common.cuh"

extern "C" __global__ void embedding_fwd_f32(const float* w, const unsigned* ids, float* y, unsigned n_ids, unsigned dim) {
    FOR_EACH(k, (u64)n_ids * dim) {
        u64 i = k / dim, d = k % dim;
        y[k] = w[(u64)ids[i] * dim + d];
    }
}

// Any 2-byte element (bf16, f16) table: the gather copies bits.
extern "C" __global__ void embedding_fwd_b16(const unsigned short* w, const unsigned* ids, unsigned short* y, unsigned n_ids, unsigned dim) {
    FOR_EACH(k, (u64)n_ids * dim) {
        u64 i = k / dim, d = k % dim;
        y[k] = w[(u64)ids[i] * dim + d];
    }
}

extern "C" __global__ void embedding_bwd_f32(const float* dy, const unsigned* ids, float* dw, unsigned n_ids, unsigned dim) {
    FOR_EACH(k, (u64)n_ids * dim) {
        u64 i = k / dim, d = k % dim;
        atomicAdd(&dw[(u64)ids[i] * dim + d], dy[k]);
    }
}
