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
#include <set>
#include <string>
#include <thread>
#include <vector>

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

// ---- stream capture and graphs ------------------------------------------------------------------------
// A capture records what is queued on the captured stream instead of running it: kernel launches
// (their parameters copied by the kernel's own parameter sizes, as the driver copies them),
// device-to-device copies, memsets, and stream-ordered allocations and frees (graph memory nodes).
// cuGraphLaunch replays the record in order. What a capture cannot hold is refused the way
// CUDA's global capture mode refuses it, and the capture is then invalidated: synchronisation,
// copies to the host, synchronous allocation and frees, host callbacks; also (a rule of this
// simulator, stricter than some drivers) host-to-device copies, whose pageable source would be
// read at every launch rather than at capture, and freeing memory the graph did not allocate.
struct SimNode {
    enum Kind { Launch, Memset, Copy, Alloc, Free } kind;
    SimKernel* kernel = nullptr;
    SimDim grid{}, block{};
    unsigned smem = 0;
    std::vector<std::vector<unsigned char>> params;
    uint64_t dst = 0, src = 0;
    size_t bytes = 0;
    unsigned value = 0, width = 1;  // memsets: the value and its width in bytes (1 or 4)
};
struct SimGraph {
    std::vector<SimNode> nodes;
};
struct SimGraphExec {
    std::vector<SimNode> nodes;
};
struct SimCapture {
    SimGraph* graph = nullptr;
    std::set<uint64_t> allocated;  // allocated in this capture and not yet freed in it
    std::string invalidated;       // why, when an operation broke the capture
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    std::thread::id owner;  // the thread that began it
};
// Every capture under way, by stream (several threads may each capture a stream of their own).
std::mutex g_capture_mu;
std::map<CUstream, SimCapture> g_captures;

// Appends `n` to the graph being captured on `s`; false when `s` is not being captured.
bool record(CUstream s, SimNode&& n) {
    std::lock_guard<std::mutex> lock(g_capture_mu);
    auto it = g_captures.find(s);
    if (it == g_captures.end()) return false;
    if (n.kind == SimNode::Alloc) it->second.allocated.insert(n.dst);
    it->second.graph->nodes.push_back(std::move(n));
    return true;
}

bool capturing(CUstream s) {
    std::lock_guard<std::mutex> lock(g_capture_mu);
    return g_captures.count(s) > 0;
}

// An operation that a capture cannot hold. It fails, and invalidates the capture, when it is
// made while a capture it concerns is under way: any global-mode capture, or a thread-local one
// this thread began (CUDA's capture modes; relaxed captures allow it).
CUresult refuse_in_capture(const char* what, const char* why = "it would synchronise with the device") {
    std::string msg = std::string(what) + " while a stream is being captured: " + why + " (the capture is now invalidated)";
    bool refused = false;
    {
        std::lock_guard<std::mutex> lock(g_capture_mu);
        for (auto& [stream, c] : g_captures) {
            (void)stream;
            const bool applies = c.mode == CU_STREAM_CAPTURE_MODE_GLOBAL || (c.mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL && c.owner == std::this_thread::get_id());
            if (!applies) continue;
            refused = true;
            if (c.invalidated.empty()) c.invalidated = msg;
        }
    }
    return refused ? fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, msg) : CUDA_SUCCESS;
}

CUresult run_nodes(const std::vector<SimNode>& nodes) {
    for (const SimNode& n : nodes) {
        std::string err;
        switch (n.kind) {
        case SimNode::Launch: {
            std::vector<void*> args;
            for (const auto& p : n.params) args.push_back((void*)p.data());
            if (const int r = sim_launch(n.kernel, n.grid, n.block, n.smem, args.data(), &err)) return fail((CUresult)r, "in a graph: " + err);
            break;
        }
        case SimNode::Memset:
            if (CUresult r = check(n.dst, n.bytes, "a graph's memset node")) return r;
            if (n.width == 1) {
                memset((void*)n.dst, (int)n.value, n.bytes);
            } else {
                for (size_t i = 0; i < n.bytes; i += 4) memcpy((char*)n.dst + i, &n.value, 4);
            }
            break;
        case SimNode::Copy:
            if (CUresult r = check(n.src, n.bytes, "a graph's copy node source")) return r;
            if (CUresult r = check(n.dst, n.bytes, "a graph's copy node destination")) return r;
            memmove((void*)n.dst, (const void*)n.src, n.bytes);
            break;
        case SimNode::Alloc:
            if (const int r = sim_mem_map_graph_allocation(n.dst, &err)) return fail((CUresult)r, err);
            break;
        case SimNode::Free:
            if (const int r = sim_mem_free(n.dst, &err)) return fail((CUresult)r, "a graph's free node: " + err);
            break;
        }
    }
    return CUDA_SUCCESS;
}


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

CUresult CUDAAPI cuCtxSynchronize(void) { return refuse_in_capture("cuCtxSynchronize"); }

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

CUresult CUDAAPI cuStreamSynchronize(CUstream) { return refuse_in_capture("cuStreamSynchronize"); }
CUresult CUDAAPI cuStreamQuery(CUstream) { return refuse_in_capture("cuStreamQuery"); }

CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
    if (!s) return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture: the legacy NULL stream cannot be captured; capture a stream made by cuStreamCreate");
    std::lock_guard<std::mutex> lock(g_capture_mu);
    if (g_captures.count(s)) return fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: this stream is already being captured");
    SimCapture& c = g_captures[s];
    c.graph = new SimGraph();
    c.mode = mode;
    c.owner = std::this_thread::get_id();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamEndCapture(CUstream s, CUgraph* graph) {
    SimCapture done;
    {
        std::lock_guard<std::mutex> lock(g_capture_mu);
        auto it = g_captures.find(s);
        if (it == g_captures.end()) return fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture: this stream is not being captured");
        done = std::move(it->second);
        g_captures.erase(it);
    }
    if (!done.invalidated.empty()) {
        delete done.graph;
        *graph = nullptr;
        return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "cuStreamEndCapture: the capture was invalidated: " + done.invalidated);
    }
    *graph = (CUgraph)done.graph;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* status) {
    std::lock_guard<std::mutex> lock(g_capture_mu);
    auto it = g_captures.find(s);
    *status = it == g_captures.end() ? CU_STREAM_CAPTURE_STATUS_NONE
              : it->second.invalidated.empty() ? CU_STREAM_CAPTURE_STATUS_ACTIVE
                                               : CU_STREAM_CAPTURE_STATUS_INVALIDATED;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long flags) {
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    if (flags) return fail(CUDA_ERROR_NOT_SUPPORTED, "cuGraphInstantiateWithFlags: the simulator instantiates with no flags only");
    *exec = (CUgraphExec) new SimGraphExec{((SimGraph*)graph)->nodes};
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGraphLaunch(CUgraphExec exec, CUstream s) {
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    if (capturing(s)) return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuGraphLaunch into a stream being captured: the simulator does not nest graphs");
    return run_nodes(((SimGraphExec*)exec)->nodes);
}

CUresult CUDAAPI cuGraphUpload(CUgraphExec exec, CUstream) { return exec ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }

CUresult CUDAAPI cuGraphExecDestroy(CUgraphExec exec) {
    delete (SimGraphExec*)exec;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGraphDestroy(CUgraph graph) {
    delete (SimGraph*)graph;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }

CUresult CUDAAPI cuEventCreate(CUevent* e, unsigned int) {
    *e = (CUevent) new SimEvent();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventDestroy(CUevent e) {
    delete (SimEvent*)e;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent e, CUstream s) {
    if (capturing(s)) return refuse_in_capture("cuEventRecord on the captured stream", "the simulator does not capture events");
    SimEvent* ev = (SimEvent*)e;
    ev->at = std::chrono::steady_clock::now();
    ev->recorded = true;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventSynchronize(CUevent) { return refuse_in_capture("cuEventSynchronize"); }
CUresult CUDAAPI cuEventQuery(CUevent) { return refuse_in_capture("cuEventQuery"); }

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
    if (CUresult r = refuse_in_capture("cuLaunchHostFunc", "the simulator does not capture host functions")) return r;
    fn(data);
    return CUDA_SUCCESS;
}

// ---- memory ---------------------------------------------------------------------------------------------
CUresult CUDAAPI cuMemAlloc(CUdeviceptr* p, size_t bytes) {
    if (CUresult r = need_init()) return r;
    if (CUresult r = refuse_in_capture("cuMemAlloc", "synchronous allocation is not allowed; cuMemAllocAsync makes a graph memory node")) return r;
    const uint64_t d = sim_mem_alloc(bytes);
    if (!d) return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc of " + std::to_string(bytes) + " bytes: out of simulated device memory");
    *p = (CUdeviceptr)d;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) {
    if (!capturing(s)) return cuMemAlloc(p, bytes);
    const uint64_t d = sim_mem_alloc(bytes);
    if (!d) return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAllocAsync of " + std::to_string(bytes) + " bytes in a capture: out of simulated device memory");
    std::string err;
    if (const int r = sim_mem_set_graph_owned(d, &err)) return fail((CUresult)r, err);
    SimNode n{SimNode::Alloc};
    n.dst = d;
    n.bytes = bytes;
    if (!record(s, std::move(n))) return fail(CUDA_ERROR_ILLEGAL_STATE, "cuMemAllocAsync: the capture ended meanwhile");
    *p = (CUdeviceptr)d;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFree(CUdeviceptr p) {
    if (CUresult r = refuse_in_capture("cuMemFree", "synchronous frees are not allowed; cuMemFreeAsync makes a graph memory node")) return r;
    std::string err;
    if (int r = sim_mem_free((uint64_t)p, &err)) return fail((CUresult)r, err);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    {
        std::lock_guard<std::mutex> lock(g_capture_mu);
        auto it = g_captures.find(s);
        if (it != g_captures.end()) {
            SimCapture& c = it->second;
            if (c.allocated.erase((uint64_t)p)) {
                SimNode n{SimNode::Free};
                n.dst = (uint64_t)p;
                c.graph->nodes.push_back(std::move(n));
                return CUDA_SUCCESS;
            }
            const std::string msg =
                "cuMemFreeAsync of memory the captured graph did not allocate: a graph's free node may only free the graph's own allocations (free it before the "
                "capture or after the launch; the capture is now invalidated)";
            if (c.invalidated.empty()) c.invalidated = msg;
            return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, msg);
        }
    }
    return cuMemFree(p);
}

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
    if (CUresult r = refuse_in_capture("a host-to-device copy",
                                       "its host memory would be read at every launch, not now; copy into a buffer the graph reads before cuGraphLaunch"))
        return r;
    if (CUresult r = check(dst, n, "cuMemcpyHtoD destination")) return r;
    memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream) { return cuMemcpyHtoD(dst, src, n); }

CUresult CUDAAPI cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
    if (CUresult r = refuse_in_capture("a device-to-host copy", "nothing has run yet: the values exist only when the graph is launched")) return r;
    if (CUresult r = check(src, n, "cuMemcpyDtoH source")) return r;
    memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoH(dst, src, n); }

CUresult CUDAAPI cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult r = refuse_in_capture("cuMemcpyDtoD (synchronous)")) return r;
    if (CUresult r = check(src, n, "cuMemcpyDtoD source")) return r;
    if (CUresult r = check(dst, n, "cuMemcpyDtoD destination")) return r;
    memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    SimNode c{SimNode::Copy};
    c.dst = dst;
    c.src = src;
    c.bytes = n;
    return record(s, std::move(c)) ? CUDA_SUCCESS : cuMemcpyDtoD(dst, src, n);
}

CUresult CUDAAPI cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) {
    if (CUresult r = refuse_in_capture("cuMemsetD8 (synchronous)")) return r;
    if (CUresult r = check(dst, n, "cuMemsetD8")) return r;
    memset((void*)dst, v, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
    SimNode m{SimNode::Memset};
    m.dst = dst;
    m.bytes = n;
    m.value = v;
    return record(s, std::move(m)) ? CUDA_SUCCESS : cuMemsetD8(dst, v, n);
}

CUresult CUDAAPI cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
    SimNode m{SimNode::Memset};
    m.dst = dst;
    m.bytes = n * 4;
    m.value = v;
    m.width = 4;
    if (record(s, std::move(m))) return CUDA_SUCCESS;
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
                                unsigned int smem, CUstream s, void** params, void** extra) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (!params && extra) return fail(CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernel: the simulator takes kernelParams, not `extra`");
    if (capturing(s)) {  // (a capture that ends meanwhile: the launch is dropped with an error)
        SimKernel* k = (SimKernel*)f;
        SimNode n{SimNode::Launch};
        n.kernel = k;
        n.grid = SimDim{gx, gy, gz};
        n.block = SimDim{bx, by, bz};
        n.smem = smem;
        for (size_t i = 0; i < k->param_sizes.size(); i++) {
            const unsigned char* p = (const unsigned char*)params[i];
            n.params.emplace_back(p, p + k->param_sizes[i]);
        }
        return record(s, std::move(n)) ? CUDA_SUCCESS : fail(CUDA_ERROR_ILLEGAL_STATE, "cuLaunchKernel: the capture ended meanwhile");
    }
    std::string err;
    const int r = sim_launch((SimKernel*)f, SimDim{gx, gy, gz}, SimDim{bx, by, bz}, smem, params, &err);
    return r ? fail((CUresult)r, err) : CUDA_SUCCESS;
}

}  // extern "C"
