// A stand-in for the CUDA driver library (libcuda.so.1): the driver-API entry points that cudarc
// calls, over the simulator's runtime. Device memory is host memory (sim/runtime.cpp's checked
// heap); a module is any image (the fatbin build.rs embedded); a function is found by name among
// the kernels compiled for the host; a launch runs the whole grid before it returns, so every
// stream is always idle and events are host timestamps. Signatures come from CUDA's own cuda.h.
#include <cuda.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysinfo.h>

#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "runtime.h"

namespace {
const char* kDeviceName = "mindreader CUDA simulator (host CPU, sm_90 semantics, not a GPU)";

struct SimContext {
    int device = 0;
} g_context;
struct SimModule {
    const void* image;
};
struct SimEvent {
    std::chrono::steady_clock::time_point at;
    bool recorded = false;
};
struct SimStream {
    int unused = 0;
};

bool g_initialised = false;
thread_local CUcontext t_current = nullptr;

// Detailed messages of failures, kept for cuGetErrorString (cudarc formats an error with it):
// the most recent one of each code. Kept for the life of the process so pointers stay valid.
std::mutex g_error_mu;
std::map<int, const char*> g_details;

CUresult fail(CUresult code, const std::string& msg) {
    fprintf(stderr, "mindreader-sim: %s\n", msg.c_str());
    std::lock_guard<std::mutex> lock(g_error_mu);
    g_details[(int)code] = strdup(msg.c_str());
    return code;
}

CUresult check(CUdeviceptr p, size_t n, const char* what) {
    std::string err;
    if (sim_mem_check((uint64_t)p, n, what, &err)) return CUDA_SUCCESS;
    return fail(CUDA_ERROR_INVALID_VALUE, err);
}

CUresult need_init() { return g_initialised ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED; }

size_t host_memory() {
    struct sysinfo si;
    return sysinfo(&si) == 0 ? (size_t)si.totalram * si.mem_unit : (size_t)16 << 30;
}

const char* generic_message(CUresult code) {
    switch (code) {
    case CUDA_SUCCESS: return "no error";
    case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
    case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
    case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
    case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
    case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
    case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
    case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    default: return "unknown error";
    }
}
}  // namespace

extern "C" {

CUresult CUDAAPI cuInit(unsigned int) {
    if (!sim_registry_error().empty()) return fail(CUDA_ERROR_INVALID_IMAGE, "the simulator's kernel registry is inconsistent: " + sim_registry_error());
    g_initialised = true;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorString(CUresult code, const char** s) {
    std::lock_guard<std::mutex> lock(g_error_mu);
    auto it = g_details.find((int)code);
    *s = it != g_details.end() ? it->second : generic_message(code);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorName(CUresult code, const char** s) {
    switch (code) {
    case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case CUDA_ERROR_INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
    case CUDA_ERROR_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
    case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
    case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
    default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return CUDA_SUCCESS;
}

// ---- devices and contexts: one device, one primary context ----------------------------------------
CUresult CUDAAPI cuDeviceGetCount(int* n) {
    if (CUresult r = need_init()) return r;
    *n = 1;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice* d, int ordinal) {
    if (CUresult r = need_init()) return r;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "%s", kDeviceName);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceTotalMem(size_t* bytes, CUdevice) {
    *bytes = host_memory();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice) {
    memset(uuid, 0, sizeof *uuid);
    memcpy(uuid->bytes, "mindreader-sim", 14);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice) {
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 1; break;  // blocks run one at a time
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 2147483647; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 48 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = 227 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *v = 228 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *v = 2048; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;  // stream-ordered allocation
    default: *v = 0; break;  // memory pools, managed memory, clocks…: not simulated
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
    if (CUresult r = need_init()) return r;
    *ctx = (CUcontext)&g_context;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }

CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
    t_current = ctx;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = t_current;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxSynchronize(void) { return CUDA_SUCCESS; }

CUresult CUDAAPI cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = 0;
    return CUDA_SUCCESS;
}

// ---- streams and events: work is done when it is queued ---------------------------------------------
CUresult CUDAAPI cuStreamCreate(CUstream* s, unsigned int) {
    *s = (CUstream) new SimStream();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamCreateWithPriority(CUstream* s, unsigned int, int) {
    *s = (CUstream) new SimStream();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamDestroy(CUstream s) {
    delete (SimStream*)s;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamQuery(CUstream) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }

CUresult CUDAAPI cuEventCreate(CUevent* e, unsigned int) {
    *e = (CUevent) new SimEvent();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventDestroy(CUevent e) {
    delete (SimEvent*)e;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent e, CUstream) {
    SimEvent* ev = (SimEvent*)e;
    ev->at = std::chrono::steady_clock::now();
    ev->recorded = true;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventQuery(CUevent) { return CUDA_SUCCESS; }

// Host time between two records: simulated time, never a GPU figure (the bench refuses this device).
CUresult CUDAAPI cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    SimEvent* a = (SimEvent*)start;
    SimEvent* b = (SimEvent*)end;
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return CUDA_SUCCESS;
}
#undef cuEventElapsedTime
CUresult CUDAAPI cuEventElapsedTime(float* ms, CUevent start, CUevent end) { return cuEventElapsedTime_v2(ms, start, end); }

CUresult CUDAAPI cuLaunchHostFunc(CUstream, CUhostFn fn, void* data) {
    fn(data);
    return CUDA_SUCCESS;
}

// ---- memory ---------------------------------------------------------------------------------------------
CUresult CUDAAPI cuMemAlloc(CUdeviceptr* p, size_t bytes) {
    if (CUresult r = need_init()) return r;
    const uint64_t d = sim_mem_alloc(bytes);
    if (!d) return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc of " + std::to_string(bytes) + " bytes: out of simulated device memory");
    *p = (CUdeviceptr)d;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return cuMemAlloc(p, bytes); }

CUresult CUDAAPI cuMemFree(CUdeviceptr p) {
    std::string err;
    if (int r = sim_mem_free((uint64_t)p, &err)) return fail((CUresult)r, err);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree(p); }

// ---- the device's memory pool (stream-ordered allocation) --------------------------------------------
// One pool per device, as the driver has. Its allocations are cuMemAlloc's; what is simulated is
// the attributes a program reads and sets, so a test can see that the engine keeps freed memory in
// the pool (the release threshold) instead of handing it back at every synchronisation.
static struct SimPool { uint64_t release_threshold = 0; } g_pool;

CUresult CUDAAPI cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice) {
    if (CUresult r = need_init()) return r;
    *pool = (CUmemoryPool)&g_pool;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice dev) { return cuDeviceGetDefaultMemPool(pool, dev); }

CUresult CUDAAPI cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute a, void* v) {
    if (pool != (CUmemoryPool)&g_pool) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemPoolSetAttribute: not the device's pool");
    if (a != CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        return fail(CUDA_ERROR_NOT_SUPPORTED, "cuMemPoolSetAttribute: only the release threshold is simulated");
    g_pool.release_threshold = *(const uint64_t*)v;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute a, void* v) {
    if (pool != (CUmemoryPool)&g_pool) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemPoolGetAttribute: not the device's pool");
    switch (a) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *(uint64_t*)v = g_pool.release_threshold; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *(uint64_t*)v = sim_mem_in_use(); return CUDA_SUCCESS;
    default: return fail(CUDA_ERROR_NOT_SUPPORTED, "cuMemPoolGetAttribute: only the release threshold and the memory in use are simulated");
    }
}

CUresult CUDAAPI cuMemGetInfo(size_t* free_bytes, size_t* total) {
    const size_t t = host_memory(), used = sim_mem_in_use();
    *total = t;
    *free_bytes = used < t ? t - used : 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t n) {
    if (CUresult r = check(dst, n, "cuMemcpyHtoD destination")) return r;
    memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream) { return cuMemcpyHtoD(dst, src, n); }

CUresult CUDAAPI cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
    if (CUresult r = check(src, n, "cuMemcpyDtoH source")) return r;
    memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoH(dst, src, n); }

CUresult CUDAAPI cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult r = check(src, n, "cuMemcpyDtoD source")) return r;
    if (CUresult r = check(dst, n, "cuMemcpyDtoD destination")) return r;
    memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoD(dst, src, n); }

CUresult CUDAAPI cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) {
    if (CUresult r = check(dst, n, "cuMemsetD8")) return r;
    memset((void*)dst, v, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) { return cuMemsetD8(dst, v, n); }

CUresult CUDAAPI cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream) {
    if (CUresult r = check(dst, n * 4, "cuMemsetD32")) return r;
    for (size_t i = 0; i < n; i++) memcpy((char*)dst + 4 * i, &v, 4);
    return CUDA_SUCCESS;
}

// ---- modules, functions, launches ----------------------------------------------------------------------
CUresult CUDAAPI cuModuleLoadData(CUmodule* m, const void* image) {
    if (CUresult r = need_init()) return r;
    if (!image) return CUDA_ERROR_INVALID_VALUE;
    *m = (CUmodule) new SimModule{image};
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleUnload(CUmodule m) {
    delete (SimModule*)m;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
    SimKernel* k = sim_find_kernel(name);
    if (!k)
        return fail(CUDA_ERROR_NOT_FOUND, std::string("no kernel named ") + name + " among the simulator's host-compiled kernels (families: " + sim_family_list() +
                                              "); rebuild the simulator (sim/build.py) after changing kernels/");
    *f = (CUfunction)k;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
    SimKernel* k = (SimKernel*)f;
    switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = k->max_threads ? (int)k->max_threads : 1024; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = (int)k->max_dynamic_smem; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION:
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *v = 90; break;
    default: *v = 0; break;  // registers, static shared, local memory: not simulated
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
    SimKernel* k = (SimKernel*)f;
    if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        if (v < 0 || v > 227 * 1024) return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: " + std::to_string(v) + " bytes of dynamic shared memory is above the 227 KiB a block can have");
        k->max_dynamic_smem = (unsigned)v;
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuFuncSetCacheConfig(CUfunction, CUfunc_cache) { return CUDA_SUCCESS; }

CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz,
                                unsigned int smem, CUstream, void** params, void** extra) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (!params && extra) return fail(CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernel: the simulator takes kernelParams, not `extra`");
    std::string err;
    const int r = sim_launch((SimKernel*)f, SimDim{gx, gy, gz}, SimDim{bx, by, bz}, smem, params, &err);
    return r ? fail((CUresult)r, err) : CUDA_SUCCESS;
}

}  // extern "C"
