// The scalar maths of the unary ops (activations and the rest), shared by every kernel that
// applies one: the elementwise kernels (kernels/elementwise.cu) and the GEMM epilogue that fuses
// bias + activation into a linear layer (kernels/matmul.cu). The op codes match `Unary::code` in
// src/ops/elementwise.rs; the CPU twins are `cpu::unary_fwd` / `cpu::unary_bwd` there.
#pragma once
#include "common.cuh"

enum { RELU = 0, LEAKY_RELU = 1, GELU = 2, QUICK_GELU = 3, SIGMOID = 4, SOFTPLUS = 5, EXP = 6, LOG = 7,
       SQRT = 8, RSQRT = 9, CLAMP = 10, SCALE = 11, ADD_SCALAR = 12, SQUARE = 13 };

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ float unary_fwd(int op, float x, float a, float b) {
    switch (op) {
    case RELU: return x > 0.f ? x : 0.f;
    case LEAKY_RELU: return (x > 0.f ? x : a * x) * b;
    case GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case QUICK_GELU: return x * sigmoidf(1.702f * x);
    case SIGMOID: return sigmoidf(x);
    case SOFTPLUS: return x > 20.f ? x : log1pf(expf(x));
    case EXP: return expf(x);
    case LOG: return logf(x);
    case SQRT: return sqrtf(x);
    case RSQRT: return rsqrtf(x);
    case CLAMP: return fminf(fmaxf(x, a), b);
    case SCALE: return x * a;
    case ADD_SCALAR: return x + a;
    case SQUARE: return x * x;
    }
    return NAN;
}

// dL/dx from x, y = f(x) and dL/dy.
__device__ __forceinline__ float unary_bwd(int op, float x, float y, float dy, float a, float b) {
    switch (op) {
    case RELU: return x > 0.f ? dy : 0.f;
    case LEAKY_RELU: return dy * b * (x > 0.f ? 1.f : a);
    case GELU: {
        float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        return dy * (cdf + x * pdf);
    }
    case QUICK_GELU: {
        float s = sigmoidf(1.702f * x);
        return dy * (s + 1.702f * x * s * (1.f - s));
    }
    case SIGMOID: return dy * y * (1.f - y);
    case SOFTPLUS: return x > 20.f ? dy : dy * sigmoidf(x);
    case EXP: return dy * y;
    case LOG: return dy / x;
    case SQRT: return dy * 0.5f / y;
    case RSQRT: return dy * -0.5f * y * y * y;
    case CLAMP: return (x >= a && x <= b) ? dy : 0.f;
    case SCALE: return dy * a;
    case ADD_SCALAR: return dy;
    case SQUARE: return dy * 2.f * x;
    }
    return NAN;
}
