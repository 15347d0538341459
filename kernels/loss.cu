// Fused loss kernels: each computes the loss terms and the gradient with respect to the
// prediction in one pass, so the backward is a scale by the incoming scalar gradient.
#include "common.cuh"

// mse_cos for pred x and target y of shape [B, D], one block per row:
//   L = (1−w)·Σ(x−y)²/(B·D) + w·(1/B)·Σ_rows (1 − cos),  cos = x·y / sqrt((‖x‖²+ε)(‖y‖²+ε)), ε = 1e-12
//   dL/dx = (1−w)·2(x−y)/(B·D) − (w/B)·(y/denom − cos·x/(‖x‖²+ε))
// Reads x and y twice (the second time from cache), writes dx once and one loss term per row.
extern "C" __global__ void mse_cos_f32(const float* x, const float* y, float* dx, float* row_loss, unsigned B, unsigned D, float w) {
    __shared__ float scratch[32];
    unsigned row = blockIdx.x;
    const float* xr = x + (u64)row * D;
    const float* yr = y + (u64)row * D;
    float dot = 0.f, xx = 0.f, yy = 0.f, sq = 0.f;
    for (unsigned j = threadIdx.x; j < D; j += blockDim.x) {
        float a = xr[j], b = yr[j];
        dot += a * b; xx += a * a; yy += b * b; sq += (a - b) * (a - b);
    }
    dot = block_sum(dot, scratch);
    xx = block_sum(xx, scratch);
    yy = block_sum(yy, scratch);
    sq = block_sum(sq, scratch);
    float m1 = xx + 1e-12f, m2 = yy + 1e-12f;
    float denom = sqrtf(m1 * m2), cosv = dot / denom;
    float n = (float)B * (float)D;
    float* dr = dx + (u64)row * D;
    for (unsigned j = threadIdx.x; j < D; j += blockDim.x) {
        float a = xr[j], b = yr[j];
        dr[j] = (1.f - w) * 2.f * (a - b) / n - (w / B) * (b / denom - cosv * a / m1);
    }
    if (threadIdx.x == 0) row_loss[row] = (1.f - w) * sq / n + w * (1.f - cosv) / B;
}

// InfoNCE over S = cos/τ [B, B]: per-row and per-column log-Σ-exp, one block per row or column.
// axis 0: rows (stride 1 along j), axis 1: columns.
extern "C" __global__ void logsumexp_axis_f32(const float* s, float* lse, unsigned B, int columns) {
    __shared__ float scratch[32];
    unsigned k = blockIdx.x;
    float m = -INFINITY;
    for (unsigned j = threadIdx.x; j < B; j += blockDim.x) m = fmaxf(m, columns ? s[(u64)j * B + k] : s[(u64)k * B + j]);
    m = block_max(m, scratch);
    float acc = 0.f;
    for (unsigned j = threadIdx.x; j < B; j += blockDim.x) acc += expf((columns ? s[(u64)j * B + k] : s[(u64)k * B + j]) - m);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) lse[k] = m + logf(acc);
}

// dL/dS[i,j] = −(1/B)·[λ(δij − e^{S_ij − rowlse_i}) + (1−λ)(δij − e^{S_ij − collse_j})], and the
// loss term of each diagonal entry: −(1/B)·[λ(S_ii − rowlse_i) + (1−λ)(S_ii − collse_i)].
extern "C" __global__ void infonce_grad_f32(const float* s, const float* row_lse, const float* col_lse, float* ds, float* diag_loss, unsigned B, float lam) {
    FOR_EACH(k, (u64)B * B) {
        unsigned i = k / B, j = k % B;
        float v = s[k];
        float d = i == j ? 1.f : 0.f;
        ds[k] = -(lam * (d - expf(v - row_lse[i])) + (1.f - lam) * (d - expf(v - col_lse[j]))) / B;
        if (i == j) diag_loss[i] = -(lam * (v - row_lse[i]) + (1.f - lam) * (v - col_lse[i])) / B;
    }
}

