// The only inline PTX in mindreader: tensor-core and async-copy instructions, each behind a small
// device function so that the CUDA simulator (sim/) can give each its documented semantics,
// lane by lane (sim/runtime.cpp implements the same functions for host builds).
#pragma once
#include "common.cuh"

#ifdef MINDREADER_SIM
extern "C" void sim_cp_async16(void* smem, const void* gmem, int src_bytes);
extern "C" void sim_cp_async4(void* smem, const void* gmem, int src_bytes);
extern "C" void sim_cp_async_commit(void);
extern "C" void sim_cp_async_wait(int n);
extern "C" void sim_ldmatrix_x4(unsigned* r, const void* smem_row);
extern "C" void sim_mma_bf16_16816(float* d, const unsigned* a, const unsigned* b, const float* c);
extern "C" void sim_mma_tf32_1688(float* d, const unsigned* a, const unsigned* b, const float* c);
#endif

// cp.async.cg.shared.global: copy 16 bytes global → shared without a register round trip; only
// `src_bytes` (0..16) are read, the rest of the 16 is zero-filled. Lands at cp_async_wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#ifdef MINDREADER_SIM
    sim_cp_async16(smem, gmem, src_bytes);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}

// cp.async.ca.shared.global with a 4-byte copy: one f32 global → shared, for operands gathered
// element by element (the implicit GEMMs' im2col); src_bytes 0 writes a zero and reads nothing
// (padding). `smem` 4-byte aligned. Lands at cp_async_wait.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, int src_bytes) {
#ifdef MINDREADER_SIM
    sim_cp_async4(smem, gmem, src_bytes);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}

// Closes this thread's current group of cp.async copies.
__device__ __forceinline__ void cp_async_commit() {
#ifdef MINDREADER_SIM
    sim_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MINDREADER_SIM
    sim_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix.m8n8.x4.b16 (whole warp): lanes 8i..8i+7 give the 16-byte rows of matrix i; lane l
// receives in r_i row l/4, elements 2(l%4) and 2(l%4)+1 of matrix i.
__device__ __forceinline__ void ldmatrix_x4(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, const void* smem) {
#ifdef MINDREADER_SIM
    unsigned r[4];
    sim_ldmatrix_x4(r, smem);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(s));
#endif
}

// c += a·b for one m16n8k16 tile (whole warp): a = 4 registers of A (row-major), b = 2 of B
// (col-major), c = 4 f32 accumulators, in the PTX ISA's fragment layouts.
__device__ __forceinline__ void mma_bf16_16816(float* c, const unsigned* a, const unsigned* b) {
#ifdef MINDREADER_SIM
    sim_mma_bf16_16816(c, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// cvt.rna.tf32.f32: x rounded to tf32 (10 mantissa bits, to nearest, ties away from zero), as f32
// bits whose low 13 are zero; what PyTorch's allow_tf32 feeds the tensor cores. Inf and NaN pass.
__device__ __forceinline__ unsigned to_tf32(float x) {
#ifdef MINDREADER_SIM
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return u;
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
#endif
}

// c += a·b for one m16n8k8 tile of tf32 (whole warp): a = 4 registers of A (row-major), b = 2 of
// B (col-major), c = 4 f32 accumulators, in the PTX ISA's fragment layouts.
__device__ __forceinline__ void mma_tf32_1688(float* c, const unsigned* a, const unsigned* b) {
#ifdef MINDREADER_SIM
    sim_mma_tf32_1688(c, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
