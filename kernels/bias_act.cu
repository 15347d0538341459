// bias_act: StyleGAN2's fused bias + activation + gain + clamp (torch_utils/ops/bias_act.py) for the
// two activations Lafite uses. The math is in src/ops/bias_act.rs. x and y are [outer, C, inner],
// b is [C] (null: no bias); act 0 = linear, 1 = leaky ReLU with slope alpha; clamp < 0 = none.
// One thread per element, grid-stride: 8 bytes of traffic per element forward, 12 backward.
#include "common.cuh"

struct BiasAct {
    u64 n;
    int C, inner, act;
    float alpha, gain, clamp;
};

extern "C" __global__ void bias_act_fwd_f32(const float* __restrict__ x, const float* __restrict__ b, float* __restrict__ y, BiasAct d) {
    FOR_EACH(i, d.n) {
        float v = x[i];
        if (b) v += b[(i / d.inner) % d.C];
        if (d.act == 1 && !(v > 0.f)) v *= d.alpha;
        v *= d.gain;
        if (d.clamp >= 0.f) v = fminf(fmaxf(v, -d.clamp), d.clamp);
        y[i] = v;
    }
}

// dx = dy · gain · act'(pre) where the clamp did not bite; both read off y (gain > 0 keeps the sign).
extern "C" __global__ void bias_act_bwd_f32(const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx, BiasAct d) {
    FOR_EACH(i, d.n) {
        float v = y[i], g = dy[i] * d.gain;
        if (d.act == 1 && !(v > 0.f)) g *= d.alpha;
        if (d.clamp >= 0.f && !(fabsf(v) < d.clamp)) g = 0.f;
        dx[i] = g;
    }
}
