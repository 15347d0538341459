// CUDA's execution model for host C++: the header every `kernels/*.cu` is compiled with (forced
// include) when it is built into the simulator (`sim/build.py`). Kernels keep their own source;
// this header supplies what nvcc would: the built-in variables, `__shared__` memory, barriers and
// warp collectives (implemented by the fiber scheduler in sim/runtime.cpp), atomics, the math
// intrinsics the kernels use, and `__nv_bfloat16` / `__half` with conversions bit for bit as
// cuda_bf16.h and cuda_fp16.h define them (round to nearest even, canonical NaN 0x7FFF).
//
// Memory checks come from the compiler: kernels are compiled with `-fsanitize=thread`, whose
// instrumentation calls `__tsan_readN` / `__tsan_writeN` before every load and store that may
// touch memory; sim/runtime.cpp defines those (no ThreadSanitizer runtime is linked) to bounds-
// check device memory and race-check shared memory.
#pragma once
#define MINDREADER_SIM 1

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <utility>

// ---- qualifiers ---------------------------------------------------------------------------------
// SIM_SCAN: the name-discovery pass of sim/build.py leaves `__global__` and `__launch_bounds__`
// in the preprocessed text so that it can list every kernel and its launch bound.
#ifndef SIM_SCAN
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
// Shared memory is per block. Blocks run one at a time on the thread that launched the kernel,
// so a thread-local static is one block's shared memory, shared by all its fibers; the runtime
// finds the whole region (this library's TLS block), poisons it before each block and
// race-checks every access to it.
#define __shared__ static thread_local
// Dynamic shared memory (`extern __shared__ T name[]` under nvcc): see DYNAMIC_SMEM in common.cuh.
extern "C" void* sim_dynamic_smem(void);

// ---- built-in variables -------------------------------------------------------------------------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
// CUDA's vector types, with their alignment (a float4 load is one 16-byte access).
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
// Set by the scheduler at every switch to a fiber (kernels run one thread at a time).
extern "C" uint3 threadIdx, blockIdx;
extern "C" dim3 blockDim, gridDim;
static const int warpSize = 32;

// ---- barriers and warp collectives (sim/runtime.cpp) ---------------------------------------------
extern "C" void sim_syncthreads(void);
extern "C" void sim_syncwarp(unsigned mask);
// mode: 0 idx, 1 up, 2 down, 3 xor.
extern "C" uint64_t sim_shfl(unsigned mask, uint64_t bits, int mode, int arg, int width);
// kind: 0 ballot, 1 any, 2 all.
extern "C" unsigned sim_vote(unsigned mask, int pred, int kind);
// Bounds-checks an atomic access of `size` bytes (atomics are exempt from the race check).
extern "C" void sim_check_atomic(const void* addr, int size);
extern "C" void sim_threadfence(void);

#define __syncthreads() sim_syncthreads()
__forceinline__ void __syncwarp(unsigned mask = 0xffffffffu) { sim_syncwarp(mask); }
__forceinline__ void __threadfence() { sim_threadfence(); }
__forceinline__ void __threadfence_block() { sim_threadfence(); }

template <typename T> __forceinline__ uint64_t sim_to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> __forceinline__ T sim_from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
template <typename T> __forceinline__ T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return sim_from_bits<T>(sim_shfl(mask, sim_to_bits(v), 0, src, width));
}
template <typename T> __forceinline__ T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return sim_from_bits<T>(sim_shfl(mask, sim_to_bits(v), 1, (int)d, width));
}
template <typename T> __forceinline__ T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return sim_from_bits<T>(sim_shfl(mask, sim_to_bits(v), 2, (int)d, width));
}
template <typename T> __forceinline__ T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return sim_from_bits<T>(sim_shfl(mask, sim_to_bits(v), 3, lane_mask, width));
}
__forceinline__ unsigned __ballot_sync(unsigned mask, int pred) { return sim_vote(mask, pred != 0, 0); }
__forceinline__ int __any_sync(unsigned mask, int pred) { return (int)sim_vote(mask, pred != 0, 1); }
__forceinline__ int __all_sync(unsigned mask, int pred) { return (int)sim_vote(mask, pred != 0, 2); }
__forceinline__ unsigned __activemask() { return sim_vote(0xffffffffu, 1, 0); }

// ---- atomics: fibers of a launch run on one OS thread, so a plain read-modify-write is atomic ----
template <typename T, typename F> __forceinline__ T sim_atomic(T* p, F update) {
    sim_check_atomic(p, sizeof(T));
    const T old = *p;
    *p = update(old);
    return old;
}
template <typename T> __forceinline__ T atomicAdd(T* p, T v) { return sim_atomic(p, [v](T o) { return o + v; }); }
template <typename T> __forceinline__ T atomicMax(T* p, T v) { return sim_atomic(p, [v](T o) { return o > v ? o : v; }); }
template <typename T> __forceinline__ T atomicMin(T* p, T v) { return sim_atomic(p, [v](T o) { return o < v ? o : v; }); }
template <typename T> __forceinline__ T atomicExch(T* p, T v) { return sim_atomic(p, [v](T) { return v; }); }
template <typename T> __forceinline__ T atomicCAS(T* p, T compare, T v) { return sim_atomic(p, [=](T o) { return o == compare ? v : o; }); }

// ---- math intrinsics ----------------------------------------------------------------------------
__forceinline__ float rsqrtf(float x) { return 1.f / sqrtf(x); }
__forceinline__ float __expf(float x) { return expf(x); }
__forceinline__ float __logf(float x) { return logf(x); }
__forceinline__ float __sinf(float x) { return sinf(x); }
__forceinline__ float __cosf(float x) { return cosf(x); }
__forceinline__ float __powf(float x, float y) { return powf(x, y); }
__forceinline__ float __fdividef(float x, float y) { return x / y; }
__forceinline__ float __frcp_rn(float x) { return 1.f / x; }
__forceinline__ float __fsqrt_rn(float x) { return sqrtf(x); }
__forceinline__ float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
__forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
// Never fused into an FMA (on a GPU nor here: kernels are built with -march=native, so the host
// compiler contracts a·b + c as nvcc does; a call it cannot see into keeps these two roundings).
__noinline__ inline float __fmul_rn(float a, float b) { return a * b; }
__noinline__ inline float __fadd_rn(float a, float b) { return a + b; }
__forceinline__ unsigned __float_as_uint(float x) { return sim_from_bits<unsigned>(sim_to_bits(x)); }
__forceinline__ int __float_as_int(float x) { return sim_from_bits<int>(sim_to_bits(x)); }
__forceinline__ float __uint_as_float(unsigned x) { return sim_from_bits<float>(sim_to_bits(x)); }
__forceinline__ float __int_as_float(int x) { return sim_from_bits<float>(sim_to_bits(x)); }
__forceinline__ int __popc(unsigned x) { return __builtin_popcount(x); }
__forceinline__ int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
__forceinline__ int __ffs(unsigned x) { return __builtin_ffs((int)x); }
template <typename T> __forceinline__ T __ldg(const T* p) { return *p; }
// CUDA's global min/max overloads for integers (floats use fminf/fmaxf).
__forceinline__ int min(int a, int b) { return a < b ? a : b; }
__forceinline__ int max(int a, int b) { return a > b ? a : b; }
__forceinline__ unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
__forceinline__ unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
__forceinline__ long long min(long long a, long long b) { return a < b ? a : b; }
__forceinline__ long long max(long long a, long long b) { return a > b ? a : b; }
__forceinline__ unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
__forceinline__ unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
__forceinline__ float min(float a, float b) { return fminf(a, b); }
__forceinline__ float max(float a, float b) { return fmaxf(a, b); }
// In the simulator a shared-memory "address" is the host pointer itself.
__forceinline__ size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }

// ---- bf16 and fp16 --------------------------------------------------------------------------------
// Storage-only types as in cuda_bf16.h / cuda_fp16.h (`__x` holds the bits); trivially
// constructible so that `__shared__` arrays of them need no thread-local constructor.
struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __half_raw {
    unsigned short x;
};
__forceinline__ unsigned short sim_f32_to_bf16_bits(float f) {
    const unsigned x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN: the canonical bf16 NaN
    // Round to nearest, ties to even: add half an ulp of bf16 minus one, plus the kept lsb.
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
__forceinline__ float sim_bf16_bits_to_f32(unsigned short b) { return __uint_as_float((unsigned)b << 16); }
__forceinline__ unsigned short sim_f32_to_f16_bits(float f) {
    const unsigned x = __float_as_uint(f);
    const unsigned sign = (x >> 16) & 0x8000u;
    const unsigned u = x & 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7fffu;         // NaN: canonical
    if (u == 0x7f800000u) return sign | 0x7c00u;  // ±inf
    if (u >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504: ±inf
    if (u < 0x38800000u) {  // subnormal half (or ±0): value = m·2⁻²⁴ with m = mantissa >> (126 − exponent)
        if (u < 0x33000001u) return sign;  // at most half the smallest subnormal: ties to even give 0
        const unsigned mant = (u & 0x7fffffu) | 0x800000u, shift = 0x7eu - (u >> 23);
        const unsigned kept = mant >> shift, rem = mant << (32 - shift);  // rem: the bits shifted out, left-aligned
        const unsigned up = rem > 0x80000000u || (rem == 0x80000000u && (kept & 1u));
        return (unsigned short)(sign | (kept + up));
    }
    // Normal half: rebias the exponent (127 → 15) and keep 10 mantissa bits, rounding the 13 dropped
    // ones to nearest even (a carry runs into the exponent, as it should).
    const unsigned m = u - 0x38000000u, kept = m >> 13, rem = m & 0x1fffu;
    const unsigned up = rem > 0x1000u || (rem == 0x1000u && (kept & 1u));
    return (unsigned short)(sign | (kept + up));
}
__forceinline__ float sim_f16_bits_to_f32(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) return __uint_as_float(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0) return __uint_as_float(sign);
    return (sign ? -1.f : 1.f) * (float)mant * 5.9604644775390625e-8f;  // mant · 2⁻²⁴, exact
}

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(sim_f32_to_bf16_bits(f)) {}
    operator float() const { return sim_bf16_bits_to_f32(__x); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};
struct __half {
    unsigned short __x;
    __half() = default;
    __half(__half_raw r) : __x(r.x) {}
    __half(float f) : __x(sim_f32_to_f16_bits(f)) {}
    operator float() const { return sim_f16_bits_to_f32(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __half half;
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
struct __half2 {
    __half x, y;
};

__forceinline__ __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16_raw{sim_f32_to_bf16_bits(f)}; }
__forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
__forceinline__ float __bfloat162float(__nv_bfloat16 b) { return sim_bf16_bits_to_f32(b.__x); }
__forceinline__ __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }
__forceinline__ __half __float2half(float f) { return __half_raw{sim_f32_to_f16_bits(f)}; }
__forceinline__ __half __float2half_rn(float f) { return __float2half(f); }
__forceinline__ float __half2float(__half h) { return sim_f16_bits_to_f32(h.__x); }
__forceinline__ unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
__forceinline__ unsigned short __half_as_ushort(__half h) { return h.__x; }
__forceinline__ __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16_raw{b}; }
__forceinline__ __half __ushort_as_half(unsigned short b) { return __half_raw{b}; }

// ---- registration (appended to each family by sim/build.py) --------------------------------------
typedef void (*sim_trampoline)(void** args);
extern "C" void sim_register_kernel(const char* family, const char* name, sim_trampoline call, unsigned max_threads, const size_t* param_sizes,
                                    unsigned n_params);

// Calls `f` with its arguments read from the driver's parameter array, by its own parameter types.
template <typename F, F f> struct SimTrampoline;
template <typename... A, void (*f)(A...)> struct SimTrampoline<void (*)(A...), f> {
    template <size_t... I> static void unpack(void** args, std::index_sequence<I...>) {
        f(*static_cast<typename std::decay<A>::type*>(args[I])...);
    }
    static void call(void** args) { unpack(args, std::index_sequence_for<A...>{}); }
    // Each parameter's size: what a graph capture copies out of the driver's parameter array.
    static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(typename std::decay<A>::type)..., 0};
};
#define SIM_REGISTER(family, name, max_threads)                                                               \
    static struct sim_reg_##name {                                                                            \
        sim_reg_##name() { using T = SimTrampoline<decltype(&name), &name>;                                                       \
            sim_register_kernel(family, #name, &T::call, max_threads, T::sizes, sizeof(T::sizes) / sizeof(size_t) - 1);         \
        } \
    } sim_reg_instance_##name;
