// Reductions over one axis of x viewed as [outer, n, inner], and their broadcasts back.
// Reads x once (4 B/element), writes outer·inner results. op: 0 sum, 1 max; y = op(...)·scale.
#include "common.cuh"

// inner == 1: one 256-thread block per row, contiguous reads.
extern "C" __global__ void reduce_rows_f32(const float* x, float* y, unsigned rows, u64 n, int op, float scale) {
    __shared__ float scratch[32];
    unsigned row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (u64)row * n;
    float acc = op == 0 ? 0.f : -INFINITY;
    for (u64 j = threadIdx.x; j < n; j += blockDim.x) acc = op == 0 ? acc + xr[j] : fmaxf(acc, xr[j]);
    acc = op == 0 ? block_sum(acc, scratch) : block_max(acc, scratch);
    if (threadIdx.x == 0) y[row] = acc * scale;
}

// inner > 1: one thread per (o, r) column, reads coalesced across r.
extern "C" __global__ void reduce_cols_f32(const float* x, float* y, unsigned outer, unsigned n, unsigned inner, int op, float scale) {
    FOR_EACH(i, (u64)outer * inner) {
        u64 o = i / inner, r = i % inner;
        const float* xc = x + o * n * inner + r;
        float acc = op == 0 ? 0.f : -INFINITY;
        for (unsigned j = 0; j < n; j++) acc = op == 0 ? acc + xc[(u64)j * inner] : fmaxf(acc, xc[(u64)j * inner]);
        y[i] = acc * scale;
    }
}

// Whole-tensor sum, first pass: each block writes the sum of its grid-stride share.
extern "C" __global__ void partial_sum_f32(const float* x, float* partials, u64 n) {
    __shared__ float scratch[32];
    float acc = 0.f;
    FOR_EACH(i, n) acc += x[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Backward of sum/mean: dx[o, j, r] = dy[o, r] · scale.
extern "C" __global__ void broadcast_axis_f32(const float* dy, float* dx, unsigned outer, unsigned n, unsigned inner, float scale) {
    FOR_EACH(i, (u64)outer * n * inner) {
        u64 r = i % inner, o = i / ((u64)n * inner);
        dx[i] = dy[o * inner + r] * scale;
    }
}

// Backward of max: the gradient goes to the first maximal element of each column.
extern "C" __global__ void max_bwd_f32(const float* x, const float* y, const float* dy, float* dx, unsigned outer, unsigned n, unsigned inner) {
    FOR_EACH(i, (u64)outer * inner) {
        u64 o = i / inner, r = i % inner;
        u64 base = o * n * inner + r;
        bool done = false;
        for (unsigned j = 0; j < n; j++) {
            u64 k = base + (u64)j * inner;
            bool hit = !done && x[k] == y[i];
            dx[k] = hit ? dy[i] : 0.f;
            done = done || hit;
        }
    }
}
