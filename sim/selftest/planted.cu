// Kernels with planted bugs, built into the simulator only (not by build.rs), so that
// tests/simulator.rs can show that each kind of bug is caught and what the report says. Each has
// a switch: 0 runs the correct kernel, 1 plants the bug.
#include "common.cuh"

// y = xᵀ for x [rows, cols], through a 32×33 shared tile (blocks of 32×8 threads). The bug: the
// column bound is `c <= cols`, an off-by-one at the tile edge that reads past the matrix.
extern "C" __global__ void __launch_bounds__(256)
    selftest_transpose(const float* x, float* y, unsigned rows, unsigned cols, int off_by_one) {
    __shared__ float tile[32][33];
    const unsigned c = blockIdx.x * 32 + threadIdx.x, r0 = blockIdx.y * 32;
    for (unsigned j = threadIdx.y; j < 32; j += blockDim.y) {
        const unsigned r = r0 + j;
        if (r < rows && (off_by_one ? c <= cols : c < cols)) tile[j][threadIdx.x] = x[(u64)r * cols + c];
    }
    __syncthreads();
    const unsigned oc = r0 + threadIdx.x, or0 = blockIdx.x * 32;
    for (unsigned j = threadIdx.y; j < 32; j += blockDim.y) {
        const unsigned orow = or0 + j;
        if (orow < cols && oc < rows) y[(u64)orow * rows + oc] = tile[threadIdx.x][j];
    }
}

// Reverses each block's slice of x through shared memory. The bug: no __syncthreads() between
// the writes and the reads of the other threads' slots.
extern "C" __global__ void __launch_bounds__(256) selftest_block_reverse(const float* x, float* y, unsigned n, int missing_barrier) {
    __shared__ float s[256];
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.f;
    if (!missing_barrier) __syncthreads();
    if (i < n) y[i] = s[blockDim.x - 1 - threadIdx.x];
}

// y[i] = 2·x[i]. The bug: the loop runs to i <= n, one element past the end of y.
extern "C" __global__ void selftest_scale(const float* x, float* y, unsigned n, int past_end) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; past_end ? i <= n : i < n; i += blockDim.x * gridDim.x) y[i] = 2.f * (i < n ? x[i] : 0.f);
}

// Warp collectives: y[i] = the sum over i's warp (shuffle xor), and per warp the ballot of x > 0.
extern "C" __global__ void selftest_warp_ops(const float* x, float* sums, unsigned* ballots, unsigned n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = i < n ? x[i] : 0.f;
    const float s = warp_sum(v);
    const unsigned b = __ballot_sync(0xffffffffu, v > 0.f);
    const float down = __shfl_down_sync(0xffffffffu, v, 1);  // lane 31 keeps its own value
    if (i < n) sums[i] = s + 0.f * down;
    if ((threadIdx.x & 31) == 0 && i / 32 < (n + 31) / 32) ballots[i / 32] = b;
}
