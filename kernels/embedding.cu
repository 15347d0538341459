// Embedding gather y[i, :] = w[ids[i], :] (8 B per output element in f32) and its backward, a
// scatter-add into dW in a fixed order (no atomics, so training resumes bit for bit).
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

// dW[rows[r], d] = Σ_j dy[order[j], d] for j in offsets[r]..offsets[r + 1]: the positions of
// each distinct id, grouped and in increasing order by the host, summed in that order by one
// thread per (row, d), so the result does not depend on scheduling (and equals the CPU twin's,
// which adds in position order). Rows no id names keep dW's zeros.
extern "C" __global__ void embedding_bwd_f32(const float* dy, const unsigned* rows, const unsigned* offsets, const unsigned* order, float* dw,
                                             unsigned n_rows, unsigned dim) {
    FOR_EACH(k, (u64)n_rows * dim) {
        const u64 r = k / dim, d = k % dim;
        float acc = 0.f;
        for (unsigned j = offsets[r]; j < offsets[r + 1]; j++) acc += dy[(u64)order[j] * dim + d];
        dw[(u64)rows[r] * dim + d] = acc;
    }
}
