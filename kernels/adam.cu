// Fused Adam/AdamW over every parameter in one launch ("multi-tensor apply"): a table holds
// (param, grad, m, v) device pointers per tensor and the prefix sums of their sizes; each thread
// finds its tensor by binary search. Per element: reads p, g, m, v and writes p, m, v (28 B).
// Matches torch.optim.Adam / AdamW (non-amsgrad, non-foreach maths):
//   Adam:  g += wd·p;                AdamW: p *= 1 − lr·wd
//   m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²
//   p -= (lr / (1−β1ᵗ)) · m / (sqrt(v) / sqrt(1−β2ᵗ) + eps)
#include "common.cuh"

__device__ __forceinline__ void adam_apply(const u64* table, const u64* offsets, unsigned n_tensors, u64 total, float lr, float beta1,
                                           float beta2, float eps, float weight_decay, int decoupled, float bias_correction1,
                                           float bias_correction2_sqrt) {
    FOR_EACH(i, total) {
        unsigned lo = 0, hi = n_tensors;  // offsets[lo] <= i < offsets[hi]
        while (hi - lo > 1) {
            unsigned mid = (lo + hi) >> 1;
            if (offsets[mid] <= i) lo = mid; else hi = mid;
        }
        u64 j = i - offsets[lo];
        float* p = (float*)table[4 * lo];
        const float* g = (const float*)table[4 * lo + 1];
        float* m = (float*)table[4 * lo + 2];
        float* v = (float*)table[4 * lo + 3];
        float pj = p[j], gj = g[j];
        if (decoupled) pj *= 1.f - lr * weight_decay;
        else gj += weight_decay * pj;
        float mj = beta1 * m[j] + (1.f - beta1) * gj;
        float vj = beta2 * v[j] + (1.f - beta2) * gj * gj;
        m[j] = mj;
        v[j] = vj;
        p[j] = pj - (lr / bias_correction1) * mj / (sqrtf(vj) / bias_correction2_sqrt + eps);
    }
}

extern "C" __global__ void adam_multi_f32(const u64* table, const u64* offsets, unsigned n_tensors, u64 total,
                                          float lr, float beta1, float beta2, float eps, float weight_decay,
                                          int decoupled, float bias_correction1, float bias_correction2_sqrt) {
    adam_apply(table, offsets, n_tensors, total, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2_sqrt);
}

// The same update with this step's (lr, 1 − β1ᵗ, sqrt(1 − β2ᵗ)) read from device memory: a CUDA
// graph replays one launch for every step, and the host writes each step's three values into
// `step` before the replay.
extern "C" __global__ void adam_multi_f32_staged(const u64* table, const u64* offsets, unsigned n_tensors, u64 total,
                                                 const float* step, float beta1, float beta2, float eps, float weight_decay,
                                                 int decoupled) {
    adam_apply(table, offsets, n_tensors, total, step[0], beta1, beta2, eps, weight_decay, decoupled, step[1], step[2]);
}
