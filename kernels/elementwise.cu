// Elementwise ops: one read and one write per element (8 bytes/elem in f32 forward, 12-16 in
// backward). Unary ops share one kernel switched on a uniform op code (no divergence within a
// warp); the op codes match `Unary::code` in src/ops/elementwise.rs, and the per-element maths
// live in activations.cuh (shared with matmul.cu's fused bias + activation epilogue).
#include "activations.cuh"

extern "C" __global__ void unary_fwd_f32(const float* x, float* y, u64 n, int op, float a, float b) {
    FOR_EACH(i, n) y[i] = unary_fwd(op, x[i], a, b);
}

extern "C" __global__ void unary_bwd_f32(const float* x, const float* y, const float* dy, float* dx, u64 n, int op, float a, float b) {
    FOR_EACH(i, n) dx[i] = unary_bwd(op, x[i], y[i], dy[i], a, b);
}

// y = x × s[0], the scale a one-element device tensor read on the device (no host sync): a
// fused loss's backward (stashed gradient × the incoming scalar gradient), CLIP's logit scale.
extern "C" __global__ void scale_by_scalar_f32(const float* x, const float* s, float* y, u64 n) {
    const float k = s[0];
    FOR_EACH(i, n) y[i] = x[i] * k;
}

// In place, StyleGAN2-ADA's misc.nan_to_num(x, nan=0, posinf=bound, neginf=−bound): NaN → 0,
// then every value clamped to [−bound, bound] (±∞ and large finite values alike).
extern "C" __global__ void nan_to_num_f32(float* x, u64 n, float bound) {
    FOR_EACH(i, n) {
        const float v = x[i];
        x[i] = v != v ? 0.f : fminf(fmaxf(v, -bound), bound);
    }
}

// op: 0 add, 1 sub, 2 mul, 3 max (elementwise; fmaxf's NaN rule aside, torch.max(a, b)).
__device__ __forceinline__ float binary_op(int op, float u, float v) {
    return op == 0 ? u + v : op == 1 ? u - v : op == 2 ? u * v : fmaxf(u, v);
}

extern "C" __global__ void binary_f32(const float* a, const float* b, float* y, u64 n, int op) {
    FOR_EACH(i, n) y[i] = binary_op(op, a[i], b[i]);
}

// The gradients of y = max(a, b): dy goes to the larger input, half to each on a tie (PyTorch's rule).
extern "C" __global__ void maximum_bwd_f32(const float* a, const float* b, const float* dy, float* da, float* db, u64 n) {
    FOR_EACH(i, n) {
        float u = a[i], v = b[i], g = dy[i];
        float share = u > v ? g : u < v ? 0.f : 0.5f * g;
        da[i] = share;
        db[i] = g - share;
    }
}

// bf16 in and out, the arithmetic in f32, one rounding per output (inference).
extern "C" __global__ void binary_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, __nv_bfloat16* y, u64 n, int op) {
    FOR_EACH(i, n) {
        float u = to_f32(a[i]), v = to_f32(b[i]);
        y[i] = from_f32<__nv_bfloat16>(binary_op(op, u, v));
    }
}

// x viewed as [outer, C, inner]; y = x + bias[c].
extern "C" __global__ void bias_add_f32(const float* x, const float* bias, float* y, u64 n, unsigned C, unsigned inner) {
    FOR_EACH(i, n) y[i] = x[i] + bias[(i / inner) % C];
}

extern "C" __global__ void bias_add_bf16(const __nv_bfloat16* x, const __nv_bfloat16* bias, __nv_bfloat16* y, u64 n, unsigned C,
                                         unsigned inner) {
    FOR_EACH(i, n) y[i] = from_f32<__nv_bfloat16>(to_f32(x[i]) + to_f32(bias[(i / inner) % C]));
}

// dbias[c] = Σ over outer and inner of dy[o, c, r]; one block per channel.
extern "C" __global__ void bias_grad_f32(const float* dy, float* dbias, unsigned outer, unsigned C, unsigned inner) {
    __shared__ float scratch[32];
    unsigned c = blockIdx.x;
    u64 m = (u64)outer * inner;
    float acc = 0.f;
    for (u64 j = threadIdx.x; j < m; j += blockDim.x) {
        u64 o = j / inner, r = j % inner;
        acc += dy[(o * C + c) * inner + r];
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dbias[c] = acc;
}

extern "C" __global__ void fill_bytes(unsigned char* p, u64 n, unsigned byte) {
    FOR_EACH(i, n) p[i] = (unsigned char)byte;
}


extern "C" __global__ void cast_f32_bf16(const float* x, __nv_bfloat16* y, u64 n) { FOR_EACH(i, n) y[i] = __float2bfloat16(x[i]); }
extern "C" __global__ void cast_f32_f16(const float* x, __half* y, u64 n) { FOR_EACH(i, n) y[i] = __float2half(x[i]); }
extern "C" __global__ void cast_bf16_f32(const __nv_bfloat16* x, float* y, u64 n) { FOR_EACH(i, n) y[i] = __bfloat162float(x[i]); }
extern "C" __global__ void cast_f16_f32(const __half* x, float* y, u64 n) { FOR_EACH(i, n) y[i] = __half2float(x[i]); }
