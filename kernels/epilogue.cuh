// StyleGAN2's layer tail, applied by an op as it stores its output (src/ops/conv_epilogue.rs):
// `y = clamp(act(v + strength·noise + bias)·gain, ±clamp)`, each part only when given. Every step
// rounds as the separate add_noise_f32 and bias_act_fwd_f32 kernels do, so the result is theirs
// bit for bit; with no parts (null pointers, linear, gain 1, no clamp) it is v.
#pragma once
#include "common.cuh"

// act 0 = linear, 1 = leaky ReLU with slope alpha; clamp < 0 = none. The pointers travel as the
// ops' own arguments: bias [C], noise [B, P] (noise_batched) or [P], strength [1].
struct Epi {
    int act, noise_batched;
    float alpha, gain, clamp;
};

// v at sample b, channel c, pixel n of P.
__device__ __forceinline__ float epilogue(float v, const float* __restrict__ bias, const float* __restrict__ noise,
                                          const float* __restrict__ strength, const Epi& e, u64 b, int c, u64 n, u64 P) {
    if (noise) v = fmaf(strength[0], noise[(e.noise_batched ? b * P : 0) + n], v);  // add_noise_f32's
    if (bias) v += bias[c];                                                          // bias_act_fwd_f32's, step by step
    if (e.act == 1 && !(v > 0.f)) v *= e.alpha;
    v *= e.gain;
    if (e.clamp >= 0.f) v = fminf(fmaxf(v, -e.clamp), e.clamp);
    return v;
}
