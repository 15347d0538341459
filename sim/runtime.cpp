// The simulator's execution runtime: device memory, the fiber scheduler that runs each CUDA thread
// as its own fiber, barriers and warp collectives with their real semantics, the tensor-core and
// async-copy instructions lane by lane, and the checks a GPU does not give you (bounds of every
// device access, a shared-memory race check, a seeded random order of threads between barriers).
//
// Compiled without instrumentation; the kernels (compiled with -fsanitize=thread) call the
// `__tsan_*` hooks at the end of this file before each memory access.
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime.h"

enum : int {
    SIM_OK = 0,
    SIM_INVALID_VALUE = 1,
    SIM_OUT_OF_MEMORY = 2,
    SIM_ILLEGAL_ADDRESS = 700,
    SIM_LAUNCH_OUT_OF_RESOURCES = 701,
    SIM_LAUNCH_FAILED = 719,
};

// ---- the kernel registry ------------------------------------------------------------------------
static std::unordered_map<std::string, SimKernel*>& registry() {
    static auto* r = new std::unordered_map<std::string, SimKernel*>();
    return *r;
}
static std::string& registry_error() {
    static auto* e = new std::string();
    return *e;
}
const std::string& sim_registry_error() { return registry_error(); }

extern "C" void sim_register_kernel(const char* family, const char* name, sim_trampoline call, unsigned max_threads, const size_t* param_sizes,
                                    unsigned n_params) {
    auto& r = registry();
    auto it = r.find(name);
    if (it != r.end()) {
        registry_error() += std::string("kernel ") + name + " is defined in both " + it->second->family + " and " + family + "; ";
        return;
    }
    r[name] = new SimKernel{family, name, call, max_threads, std::vector<size_t>(param_sizes, param_sizes + n_params)};
}

SimKernel* sim_find_kernel(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second;
}

std::string sim_family_list() {
    std::vector<std::string> fams;
    for (auto& kv : registry()) fams.push_back(kv.second->family);
    std::sort(fams.begin(), fams.end());
    fams.erase(std::unique(fams.begin(), fams.end()), fams.end());
    std::string s;
    for (auto& f : fams) s += (s.empty() ? "" : ", ") + f;
    return s;
}

// ---- device memory --------------------------------------------------------------------------------
// One reserved range; each allocation gets its own pages with a guard page before and after, and
// the page table names the allocation every page belongs to, so a check is one table lookup and
// an out-of-bounds access can say which allocation it missed and by how much. Freed pages stay
// owned (and inaccessible), so a use after free is reported as one. Addresses are never reused.
namespace {
constexpr uint64_t kPage = 4096;
constexpr uint64_t kHeapBytes = 1ull << 38;  // 256 GiB of address space, reserved, not committed
constexpr size_t kMaxAllocations = 1 << 24;
struct Allocation {
    uint64_t base, size;
    uint64_t id;
    bool live;
    bool graph = false;  // a graph's allocation: its memory node maps it at every launch
};
struct Heap {
    uint64_t lo = 0, hi = 0, next = 0;
    uint32_t* owner = nullptr;  // per page: allocation index + 1, 0 for none
    // A fixed array, never reallocated: kernels running on one thread read it while another
    // thread allocates.
    Allocation* allocs = nullptr;
    size_t count = 0;
    size_t in_use = 0;
    std::mutex mu;

    void init() {
        if (lo) return;
        void* p = mmap(nullptr, kHeapBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        void* t = mmap(nullptr, (kHeapBytes / kPage) * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED || t == MAP_FAILED) {
            fprintf(stderr, "mindreader-sim: could not reserve the simulated device's address space\n");
            abort();
        }
        void* a = mmap(nullptr, kMaxAllocations * sizeof(Allocation), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (a == MAP_FAILED) {
            fprintf(stderr, "mindreader-sim: could not reserve the allocation table\n");
            abort();
        }
        lo = next = (uint64_t)p;
        hi = lo + kHeapBytes;
        owner = (uint32_t*)t;
        allocs = (Allocation*)a;
    }
    const Allocation* find(uint64_t addr) const {
        if (addr < lo || addr >= hi) return nullptr;
        uint32_t o = owner[(addr - lo) / kPage];
        return o ? &allocs[o - 1] : nullptr;
    }
};
Heap g_heap;
}  // namespace

uint64_t sim_mem_alloc(size_t bytes) {
    std::lock_guard<std::mutex> lock(g_heap.mu);
    g_heap.init();
    const uint64_t pages = std::max<uint64_t>(1, (bytes + kPage - 1) / kPage);
    const uint64_t span = (pages + 2) * kPage;
    if (g_heap.next + span > g_heap.hi || g_heap.count >= kMaxAllocations) return 0;
    const uint64_t start = g_heap.next;
    const uint64_t base = start + kPage;
    if (mprotect((void*)base, pages * kPage, PROT_READ | PROT_WRITE) != 0) return 0;
    g_heap.allocs[g_heap.count] = Allocation{base, bytes, g_heap.count + 1, true};
    const uint32_t idx = (uint32_t)++g_heap.count;
    for (uint64_t p = 0; p < pages + 2; p++) g_heap.owner[(start - g_heap.lo) / kPage + p] = idx;
    g_heap.next += span;
    g_heap.in_use += bytes;
    return base;
}

int sim_mem_free(uint64_t dptr, std::string* error) {
    std::lock_guard<std::mutex> lock(g_heap.mu);
    const Allocation* a = g_heap.find(dptr);
    if (!a || a->base != dptr || !a->live) {
        char buf[160];
        snprintf(buf, sizeof buf, "cuMemFree of 0x%llx, which is not the start of a live allocation%s", (unsigned long long)dptr,
                 a && !a->live ? " (it was freed before)" : "");
        *error = buf;
        return SIM_INVALID_VALUE;
    }
    Allocation& m = g_heap.allocs[a->id - 1];
    const uint64_t pages = std::max<uint64_t>(1, (m.size + kPage - 1) / kPage);
    madvise((void*)m.base, pages * kPage, MADV_DONTNEED);
    mprotect((void*)m.base, pages * kPage, PROT_NONE);
    m.live = false;
    g_heap.in_use -= m.size;
    return SIM_OK;
}

int sim_mem_set_graph_owned(uint64_t dptr, std::string* error) {
    {
        std::lock_guard<std::mutex> lock(g_heap.mu);
        const Allocation* a = g_heap.find(dptr);
        if (a && a->base == dptr) g_heap.allocs[a->id - 1].graph = true;
    }
    return sim_mem_free(dptr, error);
}

int sim_mem_map_graph_allocation(uint64_t dptr, std::string* error) {
    std::lock_guard<std::mutex> lock(g_heap.mu);
    const Allocation* a = g_heap.find(dptr);
    char buf[200];
    if (!a || a->base != dptr || !a->graph) {
        snprintf(buf, sizeof buf, "cuGraphLaunch: 0x%llx is not a graph's allocation", (unsigned long long)dptr);
        *error = buf;
        return SIM_INVALID_VALUE;
    }
    if (a->live) {
        snprintf(buf, sizeof buf,
                 "cuGraphLaunch: the graph's allocation #%llu (%llu bytes at 0x%llx) from its last launch was never freed; a graph whose allocations outlive it "
                 "cannot be launched again",
                 (unsigned long long)a->id, (unsigned long long)a->size, (unsigned long long)a->base);
        *error = buf;
        return SIM_INVALID_VALUE;
    }
    Allocation& m = g_heap.allocs[a->id - 1];
    const uint64_t pages = std::max<uint64_t>(1, (m.size + kPage - 1) / kPage);
    if (mprotect((void*)m.base, pages * kPage, PROT_READ | PROT_WRITE) != 0) {
        *error = "cuGraphLaunch: could not map a graph allocation";
        return SIM_OUT_OF_MEMORY;
    }
    memset((void*)m.base, 0xFF, m.size);  // what the graph reads before it writes is NaN
    m.live = true;
    g_heap.in_use += m.size;
    return SIM_OK;
}

size_t sim_mem_in_use() { return g_heap.in_use; }

// Describes why [addr, addr + n) is not inside one live allocation, or returns false when it is.
static bool describe_bad_access(uint64_t addr, size_t n, std::string* why) {
    const Allocation* a = g_heap.find(addr);
    char buf[256];
    if (!a) {
        snprintf(buf, sizeof buf, "address 0x%llx is not in any device allocation", (unsigned long long)addr);
    } else if (!a->live) {
        snprintf(buf, sizeof buf, "address 0x%llx is in allocation #%llu (%llu bytes at 0x%llx), which was freed", (unsigned long long)addr,
                 (unsigned long long)a->id, (unsigned long long)a->size, (unsigned long long)a->base);
    } else if (addr < a->base) {
        snprintf(buf, sizeof buf, "address 0x%llx is %llu byte%s before the start of allocation #%llu (%llu bytes at 0x%llx)",
                 (unsigned long long)addr, (unsigned long long)(a->base - addr), a->base - addr == 1 ? "" : "s", (unsigned long long)a->id, (unsigned long long)a->size,
                 (unsigned long long)a->base);
    } else if (addr + n > a->base + a->size) {
        snprintf(buf, sizeof buf, "address 0x%llx is %llu byte%s past the end of allocation #%llu (%llu bytes at 0x%llx; offset %llu)",
                 (unsigned long long)addr, (unsigned long long)(addr + n - (a->base + a->size)), addr + n - (a->base + a->size) == 1 ? "" : "s", (unsigned long long)a->id,
                 (unsigned long long)a->size, (unsigned long long)a->base, (unsigned long long)(addr - a->base));
    } else {
        return false;
    }
    *why = buf;
    return true;
}

bool sim_mem_check(uint64_t dptr, size_t bytes, const char* what, std::string* error) {
    std::lock_guard<std::mutex> lock(g_heap.mu);
    std::string why;
    if (bytes == 0 || !describe_bad_access(dptr, bytes, &why)) return true;
    *error = std::string(what) + ": " + why;
    return false;
}

// ---- fibers ---------------------------------------------------------------------------------------
// A context switch saves the callee-saved registers on the current stack and loads another stack:
// a few nanoseconds, no system call (ucontext's swapcontext makes one). The FP control words are
// left alone: every fiber of a launch runs on one OS thread with one floating-point environment.
#if defined(__x86_64__)
extern "C" void sim_ctx_switch(void** save_sp, void* load_sp);
extern "C" void sim_fiber_start();
asm(R"(
    .text
    .globl sim_ctx_switch
    .hidden sim_ctx_switch
    .type sim_ctx_switch, @function
sim_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sim_ctx_switch, .-sim_ctx_switch
    .globl sim_fiber_start
    .hidden sim_fiber_start
    .type sim_fiber_start, @function
sim_fiber_start:
    movq %r12, %rdi
    call sim_fiber_main
    ud2
    .size sim_fiber_start, .-sim_fiber_start
)");
#else
#error "the CUDA simulator's fiber switch is written for x86_64"
#endif


// The built-in variables the kernels read (declared in cuda_sim.h), set at every switch.
struct sim_uint3 {
    unsigned x, y, z;
};
extern "C" {
sim_uint3 threadIdx, blockIdx, blockDim, gridDim;
}

namespace {
constexpr size_t kStackBytes = 128 * 1024;
constexpr uint64_t kStackCanary = 0x5eedca11ab1e57acull;
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxDynamicSmem = 227 * 1024;  // Hopper's opt-in maximum per block

enum ThreadState : uint8_t { READY, AT_BARRIER, AT_WARP, DONE };

struct PendingCopy {
    unsigned char* dst;
    unsigned char data[16];
    int bytes;  // the copy's size (cp-size): 4 or 16
};

struct SimThread {
    void* sp = nullptr;
    unsigned char* stack = nullptr;  // kStackBytes, a canary at the bottom
    sim_uint3 idx{};
    unsigned tid = 0, lane = 0, warp = 0;
    ThreadState state = READY;
    std::vector<PendingCopy> copies;   // cp.async issued, not yet landed
    std::vector<size_t> group_ends;    // committed groups: end index into `copies`
};

// One warp-collective in progress: the lanes that arrived, what each brought, what each gets.
enum CollectiveKind : int { SHFL, VOTE, SYNCWARP, MMA_BF16_16816, MMA_TF32_1688, LDMATRIX_X4 };
struct Warp {
    unsigned existing = 0;  // lanes of this warp that exist in the block
    unsigned arrived = 0, mask = 0;
    int kind = 0, mode = 0;
    uint64_t in[32][12];
    uint64_t out[32][4];
    unsigned done = 0;   // lanes that have exited
    unsigned ready = 0;  // lanes ready to run
    uint16_t syncs = 0;  // completed __syncwarp()s, for the race check's ordering within a warp
};

// Per shared-memory byte: who wrote and read it since the last barrier.
struct Shadow {
    uint32_t epoch;
    uint16_t writer, reader;          // thread ids + 1 (0: none)
    uint16_t writer_sync, reader_sync;  // their warp's __syncwarp count at the access
    uint8_t many_readers, readers_mixed_warps;
};

struct Launch {
    SimKernel* kernel = nullptr;
    void** args = nullptr;
    sim_uint3 grid{}, block{};
    unsigned smem = 0;
    unsigned nthreads = 0;
    // the block being run
    sim_uint3 block_idx{};
    std::vector<SimThread> threads;
    std::vector<Warp> warps;
    // Threads ready to run: a lane mask per warp, and the warps with any (for a random pick).
    std::vector<unsigned> ready_warps;
    std::vector<int> ready_pos;
    unsigned live = 0, at_barrier = 0;
    SimThread* current = nullptr;
    void* scheduler_sp = nullptr;
    // the outcome
    bool failed = false;
    int code = SIM_OK;
    std::string error;
    uint64_t rng = 0;
};

std::mutex g_launch_mu;  // kernels run one at a time, whichever thread launches them
Launch g_launch;
bool g_in_kernel = false;
uint32_t g_epoch = 1;        // advances at every block start and every barrier
uint32_t g_block_epoch = 1;  // g_epoch when the running block started
bool g_racecheck = true;       // MINDREADER_SIM_RACECHECK=0 turns the race check off
bool g_racecheck_all = false;  // MINDREADER_SIM_RACECHECK=all checks every block of a big grid
bool g_race_this_block = true;
constexpr unsigned kRaceCheckedBlocks = 64;  // per launch beyond the grid's edge blocks
uintptr_t g_touched_lo = UINTPTR_MAX, g_touched_hi = 0;  // shared bytes touched by unchecked blocks
uint64_t g_seed = 0x5eed;
uint64_t g_launches = 0;
// MINDREADER_SIM_STATS=1: totals printed at exit, to see where simulated time goes.
uint64_t g_stat_blocks = 0, g_stat_threads = 0, g_stat_switches = 0, g_stat_collectives = 0, g_stat_barriers = 0;
// MINDREADER_SIM_COVERAGE=FILE: at exit, one line per registered kernel appended to FILE
// ("launched" or "registered", the source file, the kernel), for a suite-wide coverage count.
std::string g_coverage_path;
void write_coverage() {
    FILE* f = fopen(g_coverage_path.c_str(), "a");
    if (!f) return;
    for (auto& kv : registry()) fprintf(f, "%s\t%s\t%s\n", kv.second->launched ? "launched" : "registered", kv.second->family.c_str(), kv.first.c_str());
    fclose(f);
}
void print_stats() {
    fprintf(stderr, "mindreader-sim: %llu launches, %llu blocks, %llu threads, %llu barriers, %llu warp collectives, %llu fiber switches\n",
            (unsigned long long)g_launches, (unsigned long long)g_stat_blocks, (unsigned long long)g_stat_threads, (unsigned long long)g_stat_barriers,
            (unsigned long long)g_stat_collectives, (unsigned long long)g_stat_switches);
}

// The shared-memory window: this library's thread-local block on the launching thread (every
// `__shared__` array, and the dynamic shared memory buffer below).
uintptr_t g_win_lo = 0, g_win_span = 0;
uintptr_t g_heap_lo = 0, g_heap_span = 0;
std::vector<Shadow> g_shadow;
alignas(128) thread_local unsigned char t_dynamic_smem[kMaxDynamicSmem];

uint64_t next_random(uint64_t& s) {  // splitmix64: small, seeded, good enough to shuffle threads
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

std::string where(const SimThread* t) {
    char buf[200];
    const Launch& L = g_launch;
    snprintf(buf, sizeof buf, "kernel %s (%s), block (%u,%u,%u), thread (%u,%u,%u)", L.kernel->name.c_str(), L.kernel->family.c_str(),
             L.block_idx.x, L.block_idx.y, L.block_idx.z, t ? t->idx.x : 0, t ? t->idx.y : 0, t ? t->idx.z : 0);
    return buf;
}

std::string thread_name(unsigned tid) {
    const sim_uint3& b = g_launch.block;
    char buf[48];
    snprintf(buf, sizeof buf, "(%u,%u,%u)", tid % b.x, (tid / b.x) % b.y, tid / (b.x * b.y));
    return buf;
}

// Stops the launch: records the error and leaves the running fiber for good.
[[noreturn]] __attribute__((noinline, cold)) void fail(int code, const std::string& msg) {
    Launch& L = g_launch;
    if (!L.failed) {
        L.failed = true;
        L.code = code;
        L.error = msg;
    }
    SimThread* t = L.current;
    L.current = nullptr;
    void* dummy;
    sim_ctx_switch(t ? &t->sp : &dummy, L.scheduler_sp);
    __builtin_unreachable();
}

uint32_t random_below(uint32_t n) { return (uint32_t)((next_random(g_launch.rng) >> 32) * n >> 32); }

void make_ready(SimThread* t) {
    Launch& L = g_launch;
    Warp& w = L.warps[t->warp];
    if (!w.ready) {
        L.ready_pos[t->warp] = (int)L.ready_warps.size();
        L.ready_warps.push_back(t->warp);
    }
    w.ready |= 1u << t->lane;
}

// A random ready thread, from warp `prefer` when it has one (a warp's lanes then run close
// together, which keeps their stacks in cache), else from a random warp; null when none.
SimThread* take_ready(int prefer) {
    Launch& L = g_launch;
    if (L.ready_warps.empty()) return nullptr;
    unsigned wi = prefer >= 0 && L.warps[prefer].ready ? (unsigned)prefer : L.ready_warps[random_below((uint32_t)L.ready_warps.size())];
    Warp& w = L.warps[wi];
    // The first ready lane at or after a random lane, cyclically.
    const unsigned r = random_below(32), m = (w.ready >> r) | (r ? w.ready << (32 - r) : 0);
    const unsigned lane = (__builtin_ctz(m) + r) & 31;
    w.ready &= ~(1u << lane);
    if (!w.ready) {
        const int pos = L.ready_pos[wi];
        L.ready_warps[pos] = L.ready_warps.back();
        L.ready_pos[L.ready_warps[pos]] = pos;
        L.ready_warps.pop_back();
        L.ready_pos[wi] = -1;
    }
    return &L.threads[wi * 32 + lane];
}

// Leaves the running fiber (which is waiting, or done) for the next ready one, directly: one
// switch per wait rather than two through the scheduler. The scheduler runs only when none is
// ready (the block is finished, or deadlocked).
void switch_away(SimThread* t) {
    Launch& L = g_launch;
    void* dummy;
    void** save = t ? &t->sp : &dummy;
    SimThread* n = L.failed ? nullptr : take_ready(t ? (int)t->warp : -1);
    if (!n) {
        L.current = nullptr;
        sim_ctx_switch(save, L.scheduler_sp);
        return;
    }
    L.current = n;
    threadIdx = n->idx;
    if (n != t) {
        g_stat_switches++;
        sim_ctx_switch(save, n->sp);
    }
}

void yield_to_scheduler() { switch_away(g_launch.current); }

void release_barrier() {
    Launch& L = g_launch;
    g_stat_barriers++;
    L.at_barrier = 0;
    g_epoch++;
    for (auto& t : L.threads)
        if (t.state == AT_BARRIER) {
            t.state = READY;
            make_ready(&t);
        }
}

unsigned lanes_of(unsigned mask, unsigned existing) { return mask & existing; }
}  // namespace

extern "C" void* sim_dynamic_smem(void) { return t_dynamic_smem; }

extern "C" void sim_syncthreads(void) {
    Launch& L = g_launch;
    SimThread* t = L.current;
    t->state = AT_BARRIER;
    if (++L.at_barrier == L.live) release_barrier();
    yield_to_scheduler();
}

extern "C" void sim_threadfence(void) {}

// ---- warp collectives -------------------------------------------------------------------------------
namespace {
float f32(uint64_t b) {
    float f;
    uint32_t u = (uint32_t)b;
    memcpy(&f, &u, 4);
    return f;
}
uint64_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
float bf16_lo(uint32_t r) { return f32((uint64_t)(r << 16)); }
float bf16_hi(uint32_t r) { return f32((uint64_t)(r & 0xffff0000u)); }

void shared_access(SimThread* t, uintptr_t a, size_t n, bool write);

// The last lane to arrive computes every participant's result.
__attribute__((noinline)) void complete_collective(Warp& w, unsigned lanes) {
    Launch& L = g_launch;
    switch (w.kind) {
    case SHFL: {
        const int width = (int)w.in[__builtin_ctz(lanes)][2];
        for (unsigned l = 0; l < 32; l++) {
            if (!(lanes >> l & 1)) continue;
            const int arg = (int)w.in[l][1];
            const unsigned base = l & ~(unsigned)(width - 1), off = l - base;
            long src;
            switch (w.mode) {
            case 0: src = base + ((unsigned)arg & (unsigned)(width - 1)); break;
            case 1: src = off < (unsigned)arg ? (long)l : (long)l - arg; break;
            case 2: src = off + (unsigned)arg >= (unsigned)width ? (long)l : (long)l + arg; break;
            default: src = (long)(l ^ (unsigned)arg); if (src >= (long)(base + width)) src = l; break;
            }
            if (src < 0 || src > 31 || !(lanes >> src & 1)) {
                SimThread* t = &L.threads[w.in[l][11]];
                fail(SIM_LAUNCH_FAILED, "warp shuffle: lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                                            ", which is not in the shuffle's mask or not in the block (undefined on a GPU); " + where(t));
            }
            w.out[l][0] = w.in[src][0];
        }
        break;
    }
    case VOTE: {
        unsigned ballot = 0;
        for (unsigned l = 0; l < 32; l++)
            if ((lanes >> l & 1) && w.in[l][0]) ballot |= 1u << l;
        uint64_t r = w.mode == 0 ? ballot : w.mode == 1 ? (ballot != 0) : (ballot == lanes);
        for (unsigned l = 0; l < 32; l++) w.out[l][0] = r;
        break;
    }
    case SYNCWARP: w.syncs++; break;
    case MMA_BF16_16816: {
        // PTX ISA, mma.m16n8k16 .bf16: lane = 4·group + t. A (16×16, row): registers 0-3 hold
        // rows g, g+8, g, g+8 and columns 2t, 2t+1 (+8 for registers 2, 3). B (16×8, col):
        // registers 0-1 hold rows (k) 2t, 2t+1 (+8 for register 1), column g. C/D (16×8):
        // c0, c1 at row g, c2, c3 at row g+8, columns 2t, 2t+1.
        float A[16][16], B[16][8], C[16][8];
        for (unsigned l = 0; l < 32; l++) {
            const unsigned g = l >> 2, tq = l & 3;
            for (int r = 0; r < 4; r++) {
                const uint32_t v = (uint32_t)w.in[l][r];
                const unsigned row = g + (r & 1) * 8, col = 2 * tq + (r >> 1) * 8;
                A[row][col] = bf16_lo(v);
                A[row][col + 1] = bf16_hi(v);
            }
            for (int r = 0; r < 2; r++) {
                const uint32_t v = (uint32_t)w.in[l][4 + r];
                B[2 * tq + r * 8][g] = bf16_lo(v);
                B[2 * tq + r * 8 + 1][g] = bf16_hi(v);
            }
            for (int e = 0; e < 4; e++) C[g + (e >> 1) * 8][2 * tq + (e & 1)] = f32(w.in[l][6 + e]);
        }
        for (unsigned l = 0; l < 32; l++) {
            const unsigned g = l >> 2, tq = l & 3;
            for (int e = 0; e < 4; e++) {
                const unsigned row = g + (e >> 1) * 8, col = 2 * tq + (e & 1);
                float acc = C[row][col];  // bf16 products are exact in f32; the sum runs in k order
                for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
                w.out[l][e] = bits(acc);
            }
        }
        break;
    }
    case MMA_TF32_1688: {
        // PTX ISA, mma.m16n8k8 .tf32: lane = 4·group + t. A (16×8, row): registers 0-3 hold
        // (g, t), (g+8, t), (g, t+4), (g+8, t+4). B (8×8, col): registers 0-1 hold (k t, n g) and
        // (k t+4, n g). C/D as for m16n8k16. The tensor core reads only an operand's top 19 bits
        // (sign, exponent, 10 mantissa bits), so the low 13 are dropped here as there; products
        // of two such values are exact in f32, and the sum runs in k order.
        auto tf32 = [](uint64_t v) { return f32((uint64_t)((uint32_t)v & 0xffffe000u)); };
        float A[16][8], B[8][8], C[16][8];
        for (unsigned l = 0; l < 32; l++) {
            const unsigned g = l >> 2, tq = l & 3;
            for (int r = 0; r < 4; r++) A[g + (r & 1) * 8][tq + (r >> 1) * 4] = tf32(w.in[l][r]);
            for (int r = 0; r < 2; r++) B[tq + r * 4][g] = tf32(w.in[l][4 + r]);
            for (int e = 0; e < 4; e++) C[g + (e >> 1) * 8][2 * tq + (e & 1)] = f32(w.in[l][6 + e]);
        }
        for (unsigned l = 0; l < 32; l++) {
            const unsigned g = l >> 2, tq = l & 3;
            for (int e = 0; e < 4; e++) {
                const unsigned row = g + (e >> 1) * 8, col = 2 * tq + (e & 1);
                float acc = C[row][col];
                for (int k = 0; k < 8; k++) acc += A[row][k] * B[k][col];
                w.out[l][e] = bits(acc);
            }
        }
        break;
    }
    case LDMATRIX_X4: {
        // ldmatrix.m8n8.x4.b16: lanes 8i..8i+7 give the row addresses of matrix i (16 bytes each);
        // register i of lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 of matrix i.
        for (unsigned l = 0; l < 32; l++) {
            for (int m = 0; m < 4; m++) {
                const unsigned src = 8 * m + (l >> 2);
                const uintptr_t row = (uintptr_t)w.in[src][0];
                if (row - g_win_lo >= g_win_span) {
                    fail(SIM_ILLEGAL_ADDRESS, "ldmatrix: lane " + std::to_string(src) + " gives a row address outside shared memory; " + where(&L.threads[w.in[src][11]]));
                }
                if (row % 16) {
                    fail(SIM_LAUNCH_FAILED, "ldmatrix: lane " + std::to_string(src) + " gives a row address that is not 16-byte aligned; " +
                                                where(&L.threads[w.in[src][11]]));
                }
                SimThread* owner = &L.threads[w.in[src][11]];
                shared_access(owner, row + 4 * (l & 3), 4, false);
                uint32_t v;
                memcpy(&v, (const void*)(row + 4 * (l & 3)), 4);
                w.out[l][m] = v;
            }
        }
        break;
    }
    }
}

// Arrive at a warp collective with `in` (this lane's operands); returns this lane's results.
const uint64_t* warp_collective(int kind, int mode, unsigned mask, const uint64_t* in, int n_in) {
    Launch& L = g_launch;
    SimThread* t = L.current;
    Warp& w = L.warps[t->warp];
    if (!(mask >> t->lane & 1)) fail(SIM_LAUNCH_FAILED, "a warp collective whose mask leaves out the calling lane; " + where(t));
    const unsigned lanes = lanes_of(mask, w.existing);
    if (w.arrived == 0) {
        w.kind = kind;
        w.mode = mode;
        w.mask = mask;
    } else if (w.kind != kind || w.mode != mode || w.mask != mask) {
        fail(SIM_LAUNCH_FAILED, "lanes of one warp are at different warp collectives (or give different masks) at the same time; " + where(t));
    }
    if (lanes & w.done)
        fail(SIM_LAUNCH_FAILED, "a warp collective names lane " + std::to_string(__builtin_ctz(lanes & w.done)) + ", which has exited; " + where(t));
    for (int i = 0; i < n_in; i++) w.in[t->lane][i] = in[i];
    w.in[t->lane][11] = t->tid;  // who brought them
    w.arrived |= 1u << t->lane;
    if (w.arrived == lanes) {
        g_stat_collectives++;
        w.arrived = 0;
        complete_collective(w, lanes);
        for (unsigned rest = lanes & ~(1u << t->lane); rest; rest &= rest - 1) {
            SimThread* o = &L.threads[t->warp * 32 + __builtin_ctz(rest)];
            o->state = READY;
            make_ready(o);
        }
    } else {
        t->state = AT_WARP;
        yield_to_scheduler();
    }
    return w.out[t->lane];
}
}  // namespace

extern "C" void sim_syncwarp(unsigned mask) { warp_collective(SYNCWARP, 0, mask, nullptr, 0); }

extern "C" uint64_t sim_shfl(unsigned mask, uint64_t v, int mode, int arg, int width) {
    if (width <= 0 || width > 32 || (width & (width - 1))) fail(SIM_LAUNCH_FAILED, "warp shuffle with width " + std::to_string(width) + " (must be a power of two ≤ 32); " + where(g_launch.current));
    uint64_t in[3] = {v, (uint64_t)(int64_t)arg, (uint64_t)width};
    return warp_collective(SHFL, mode, mask, in, 3)[0];
}

extern "C" unsigned sim_vote(unsigned mask, int pred, int kind) {
    uint64_t in[1] = {(uint64_t)(pred != 0)};
    return (unsigned)warp_collective(VOTE, kind, mask, in, 1)[0];
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: d = a·b + c, whole warp.
extern "C" void sim_mma_bf16_16816(float* d, const unsigned* a, const unsigned* b, const float* c) {
    uint64_t in[10];
    for (int i = 0; i < 4; i++) in[i] = a[i];
    for (int i = 0; i < 2; i++) in[4 + i] = b[i];
    for (int i = 0; i < 4; i++) in[6 + i] = bits(c[i]);
    const uint64_t* out = warp_collective(MMA_BF16_16816, 0, 0xffffffffu, in, 10);
    for (int i = 0; i < 4; i++) d[i] = f32(out[i]);
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: d = a·b + c, whole warp.
extern "C" void sim_mma_tf32_1688(float* d, const unsigned* a, const unsigned* b, const float* c) {
    uint64_t in[10];
    for (int i = 0; i < 4; i++) in[i] = a[i];
    for (int i = 0; i < 2; i++) in[4 + i] = b[i];
    for (int i = 0; i < 4; i++) in[6 + i] = bits(c[i]);
    const uint64_t* out = warp_collective(MMA_TF32_1688, 0, 0xffffffffu, in, 10);
    for (int i = 0; i < 4; i++) d[i] = f32(out[i]);
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16, whole warp.
extern "C" void sim_ldmatrix_x4(unsigned* r, const void* smem_row) {
    uint64_t in[1] = {(uint64_t)(uintptr_t)smem_row};
    const uint64_t* out = warp_collective(LDMATRIX_X4, 0, 0xffffffffu, in, 1);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)out[i];
}

// ---- cp.async: copies land in shared memory only when a wait_group says so ------------------------
namespace {
void check_device(SimThread* t, uintptr_t a, size_t n, bool write);
void land(SimThread* t, size_t upto) {
    for (size_t i = 0; i < upto; i++) {
        PendingCopy& c = t->copies[i];
        shared_access(t, (uintptr_t)c.dst, (size_t)c.bytes, true);
        memcpy(c.dst, c.data, (size_t)c.bytes);
    }
    t->copies.erase(t->copies.begin(), t->copies.begin() + upto);
    for (auto& e : t->group_ends) e -= upto;
}
}  // namespace

// One cp.async of `size` bytes (4 or 16) to a `size`-aligned shared address: `src_bytes` are read
// now, the rest of the `size` zeroed, and the whole lands at the wait_group that covers it.
static void issue_copy(void* dst, const void* src, int size, int src_bytes, const char* op) {
    SimThread* t = g_launch.current;
    const uintptr_t d = (uintptr_t)dst;
    if (d - g_win_lo >= g_win_span || d % size)
        fail(SIM_ILLEGAL_ADDRESS, std::string(op) + ": the destination is not a " + std::to_string(size) + "-byte-aligned shared-memory address; " + where(t));
    if (src_bytes < 0 || src_bytes > size)
        fail(SIM_LAUNCH_FAILED, std::string(op) + ": src-size " + std::to_string(src_bytes) + " is outside 0.." + std::to_string(size) + "; " + where(t));
    PendingCopy c{(unsigned char*)dst, {0}, size};
    if (src_bytes > 0) {
        check_device(t, (uintptr_t)src, (size_t)src_bytes, false);
        memcpy(c.data, src, (size_t)src_bytes);
    }
    t->copies.push_back(c);
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: 16 bytes, the tail past src_bytes zeroed.
extern "C" void sim_cp_async16(void* dst, const void* src, int src_bytes) { issue_copy(dst, src, 16, src_bytes, "cp.async"); }

// cp.async.ca.shared.global [dst], [src], 4, src_bytes: one 4-byte element (src_bytes 0: zero).
extern "C" void sim_cp_async4(void* dst, const void* src, int src_bytes) { issue_copy(dst, src, 4, src_bytes, "cp.async (4 bytes)"); }

extern "C" void sim_cp_async_commit(void) {
    SimThread* t = g_launch.current;
    t->group_ends.push_back(t->copies.size());
}

// cp.async.wait_group n: every committed group but the newest n has landed.
extern "C" void sim_cp_async_wait(int n) {
    SimThread* t = g_launch.current;
    const size_t groups = t->group_ends.size();
    if (groups <= (size_t)n) return;
    const size_t upto = t->group_ends[groups - 1 - n];
    t->group_ends.erase(t->group_ends.begin(), t->group_ends.begin() + (groups - n));
    land(t, upto);
}

// ---- the memory checks behind the compiler's instrumentation ---------------------------------------
namespace {
void check_device(SimThread* t, uintptr_t a, size_t n, bool write) {
    const Allocation* al = g_heap.find(a);
    if (al && al->live && a >= al->base && a + n <= al->base + al->size) return;
    std::string why;
    describe_bad_access(a, n, &why);
    fail(SIM_ILLEGAL_ADDRESS, std::string("out-of-bounds device ") + (write ? "write" : "read") + " of " + std::to_string(n) + (n == 1 ? " byte: " : " bytes: ") + why + "; " + where(t));
}

bool ordered(unsigned other_tid1, uint16_t other_sync, const SimThread* t) {
    const unsigned other = other_tid1 - 1;
    return other / 32 == t->tid / 32 && g_launch.warps[t->warp].syncs != other_sync;
}

// Reported as compute-sanitizer's racecheck would: the hazard, the address, both threads.
[[noreturn]] void race(const SimThread* t, bool write, unsigned other_tid1, bool other_wrote, uintptr_t a) {
    char buf[160];
    const uintptr_t dyn = (uintptr_t)t_dynamic_smem;
    if (a - dyn < kMaxDynamicSmem)
        snprintf(buf, sizeof buf, "dynamic shared memory byte %llu", (unsigned long long)(a - dyn));
    else
        snprintf(buf, sizeof buf, "static shared memory at 0x%llx", (unsigned long long)a);
    const std::string hazard = std::string(write ? "Write" : "Read") + "-after-" + (other_wrote ? "Write" : "Read");
    fail(SIM_LAUNCH_FAILED, "racecheck: " + hazard + " hazard on " + buf + ": thread " + thread_name(t->tid) + (write ? " writes" : " reads") + " what thread " +
                                thread_name(other_tid1 - 1) + (other_wrote ? " wrote" : " read") + " with no __syncthreads() between (a missing barrier?); " + where(t));
}

void shared_access(SimThread* t, uintptr_t a, size_t n, bool write) {
    const uintptr_t dyn = (uintptr_t)t_dynamic_smem;
    if (a - dyn < kMaxDynamicSmem || a + n - 1 - dyn < kMaxDynamicSmem) {
        if (a < dyn || a + n > dyn + g_launch.smem) {
            char buf[200];
            snprintf(buf, sizeof buf, "out-of-bounds shared %s of %zu bytes at byte %lld of dynamic shared memory (the launch gave %u bytes); ", write ? "write" : "read", n,
                     (long long)(a - dyn), g_launch.smem);
            fail(SIM_ILLEGAL_ADDRESS, buf + where(t));
        }
    }
    if (!g_race_this_block) {  // (then run_block poisons what earlier blocks touched)
        g_touched_lo = std::min(g_touched_lo, a);
        g_touched_hi = std::max(g_touched_hi, (uintptr_t)(a + n));
        return;
    }
    const uint16_t me = (uint16_t)(t->tid + 1);
    const uint16_t sync = g_launch.warps[t->warp].syncs;
    // One shadow entry per 2-byte granule (bf16 is the narrowest shared element the kernels use;
    // two threads writing the two bytes of one granule would be reported as a race).
    const size_t first = (a - g_win_lo) >> 1, last = (a + n - 1 - g_win_lo) >> 1;
    for (size_t gi = first; gi <= last; gi++) {
        Shadow& s = g_shadow[gi];
        if (s.epoch != g_epoch) {
            // First touch in this block: shared memory starts as NaN bytes (0xFF), like a kernel
            // output in the parity tests, so a read before any write cannot pass by luck.
            if (s.epoch < g_block_epoch) memset((void*)(g_win_lo + 2 * gi), 0xff, 2);
            s = Shadow{g_epoch, 0, 0, 0, 0, 0, 0};
        }
        const uintptr_t at = g_win_lo + 2 * gi;
        if (write) {
            if (s.writer && s.writer != me && !ordered(s.writer, s.writer_sync, t)) race(t, true, s.writer, true, at);
            if (s.reader && s.reader != me && !ordered(s.reader, s.reader_sync, t)) race(t, true, s.reader, false, at);
            if (s.many_readers && (s.readers_mixed_warps || (unsigned)(s.reader - 1) / 32 != t->tid / 32 || !ordered(s.reader, s.reader_sync, t)))
                race(t, true, s.reader, false, at);
            s.writer = me;
            s.writer_sync = sync;
            s.reader = 0;
            s.many_readers = s.readers_mixed_warps = 0;
        } else {
            if (s.writer && s.writer != me && !ordered(s.writer, s.writer_sync, t)) race(t, false, s.writer, true, at);
            if (s.reader == me || s.readers_mixed_warps) continue;  // nothing new to record
            if (!s.reader) {
                s.reader = me;
                s.reader_sync = sync;
            } else {
                s.many_readers = 1;
                if ((unsigned)(s.reader - 1) / 32 != t->tid / 32) s.readers_mixed_warps = 1;
            }
        }
    }
}

inline void access(const void* p, size_t n, bool write) {
    const uintptr_t a = (uintptr_t)p;
    if (a - g_heap_lo < g_heap_span) {
        if (g_in_kernel) check_device(g_launch.current, a, n, write);
    } else if (a - g_win_lo < g_win_span) {
        if (g_in_kernel && g_launch.current) shared_access(g_launch.current, a, n, write);
    }
}
}  // namespace

extern "C" void sim_check_atomic(const void* addr, int size) {
    const uintptr_t a = (uintptr_t)addr;
    if (a - g_heap_lo < g_heap_span) check_device(g_launch.current, a, (size_t)size, true);
}

// The hooks GCC's -fsanitize=thread instrumentation calls (no ThreadSanitizer runtime is linked).
extern "C" {
void __tsan_init(void) {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
#define SIM_HOOKS(N)                                                                  \
    void __tsan_read##N(void* p) { access(p, N, false); }                             \
    void __tsan_write##N(void* p) { access(p, N, true); }                             \
    void __tsan_unaligned_read##N(void* p) { access(p, N, false); }                   \
    void __tsan_unaligned_write##N(void* p) { access(p, N, true); }                   \
    void __tsan_volatile_read##N(void* p) { access(p, N, false); }                    \
    void __tsan_volatile_write##N(void* p) { access(p, N, true); }                    \
    void __tsan_unaligned_volatile_read##N(void* p) { access(p, N, false); }          \
    void __tsan_unaligned_volatile_write##N(void* p) { access(p, N, true); }
SIM_HOOKS(1)
SIM_HOOKS(2)
SIM_HOOKS(4)
SIM_HOOKS(8)
SIM_HOOKS(16)
void __tsan_read_range(void* p, unsigned long n) { access(p, n, false); }
void __tsan_write_range(void* p, unsigned long n) { access(p, n, true); }
}

// ---- the scheduler ---------------------------------------------------------------------------------
namespace {
// All fiber stacks in one mapping, on huge pages where the kernel allows (a block's 256 fibers
// then touch a handful of TLB entries, not 256); no guard pages between them (they would split
// the huge pages), so each stack's bottom holds a canary that fiber exit checks.
unsigned char* g_stacks = nullptr;

unsigned char* stack_for(unsigned i) {
    if (!g_stacks) {
        void* p = mmap(nullptr, kMaxThreads * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return nullptr;
        madvise(p, kMaxThreads * kStackBytes, MADV_HUGEPAGE);
        g_stacks = (unsigned char*)p;
    }
    return g_stacks + (size_t)i * kStackBytes;
}

void prepare_fiber(SimThread& t) {
    memcpy(t.stack, &kStackCanary, 8);
    // Stack tops 128 KiB apart would all fall in the same cache sets; stagger them by 17 lines.
    const size_t colour = ((size_t)t.tid * 17 * 64) % (32 * 1024);
    uintptr_t top = ((uintptr_t)(t.stack + kStackBytes - colour)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 56);
    sp[0] = sp[1] = sp[2] = 0;            // r15 r14 r13
    sp[3] = (uint64_t)(uintptr_t)&t;      // r12: the argument of sim_fiber_main
    sp[4] = sp[5] = 0;                    // rbx rbp
    sp[6] = (uint64_t)(uintptr_t)&sim_fiber_start;
    t.sp = sp;
}
}  // namespace

extern "C" __attribute__((visibility("hidden"), used)) void sim_fiber_main(SimThread* t) {
    Launch& L = g_launch;
    L.kernel->call(L.args);
    if (memcmp(t->stack, &kStackCanary, 8) != 0)
        fail(SIM_LAUNCH_FAILED, "fiber stack overflow: this thread's locals outgrew the simulator's " + std::to_string(kStackBytes / 1024) + " KiB stack; " + where(t));
    t->state = DONE;
    L.live--;
    if (L.at_barrier && L.at_barrier == L.live) release_barrier();
    Warp& w = L.warps[t->warp];
    w.done |= 1u << t->lane;
    if (w.arrived && (w.mask >> t->lane & 1))
        fail(SIM_LAUNCH_FAILED, "lane " + std::to_string(t->lane) + " exited while the rest of its warp waits for it at a warp collective; " + where(t));
    switch_away(nullptr);  // never resumed: its stack is reused by the next block
    __builtin_unreachable();
}

namespace {
sigjmp_buf g_fault_jmp;
struct sigaction g_old_segv, g_old_bus;
volatile uintptr_t g_fault_addr = 0;

void on_fault(int sig, siginfo_t* info, void* uctx) {
    if (!g_in_kernel) {  // not ours: hand it to whoever was there before
        struct sigaction& old = sig == SIGSEGV ? g_old_segv : g_old_bus;
        if (old.sa_flags & SA_SIGINFO) {
            old.sa_sigaction(sig, info, uctx);
        } else if (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN) {
            signal(sig, SIG_DFL);
            raise(sig);
        } else {
            old.sa_handler(sig);
        }
        return;
    }
    g_fault_addr = (uintptr_t)info->si_addr;
    siglongjmp(g_fault_jmp, 1);
}

void install_fault_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
}

// The launching OS thread's shared-memory window (its thread-local block of this library; found
// at every launch, as a thread id may be reused by a later thread), and an alternate signal stack
// (a fiber's overflow faults on its own stack) when the thread has none.
struct Window {
    uintptr_t lo, span;
};

int find_tls_block(struct dl_phdr_info* info, size_t, void* out) {
    Window* w = (Window*)out;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_TLS || !info->dlpi_tls_data) continue;
        const uintptr_t lo = (uintptr_t)info->dlpi_tls_data;
        if ((uintptr_t)t_dynamic_smem >= lo && (uintptr_t)t_dynamic_smem < lo + ph.p_memsz) {
            w->lo = lo;
            w->span = ph.p_memsz;
            return 1;
        }
    }
    return 0;
}

bool setup_thread(std::string* error) {
    t_dynamic_smem[0] = 0;  // make sure this thread's TLS block of this library exists
    Window w{0, 0};
    dl_iterate_phdr(find_tls_block, &w);
    if (!w.span) {
        *error = "mindreader-sim: could not find this library's thread-local block (the simulated shared memory)";
        return false;
    }
    stack_t old;
    if (sigaltstack(nullptr, &old) == 0 && (old.ss_flags & SS_DISABLE)) {
        stack_t ss;
        ss.ss_sp = malloc(1 << 16);
        ss.ss_size = 1 << 16;
        ss.ss_flags = 0;
        sigaltstack(&ss, nullptr);
    }
    g_win_lo = w.lo;
    g_win_span = w.span;
    if (g_shadow.size() < g_win_span / 2 + 1) g_shadow.assign(g_win_span / 2 + 1, Shadow{0, 0, 0, 0, 0, 0, 0});
    return true;
}

void run_block(Launch& L) {
    g_stat_blocks++;
    g_stat_threads += L.nthreads;
    L.live = L.nthreads;
    L.at_barrier = 0;
    L.ready_warps.clear();
    L.ready_pos.assign(L.warps.size(), -1);
    g_block_epoch = ++g_epoch;
    // Shared memory starts as NaN (0xFF bytes) in every block: the race check poisons each byte
    // at its first touch in the block; a block without it gets the bytes earlier blocks touched
    // poisoned here (and the whole window when the race check is off).
    if (!g_racecheck) {
        memset((void*)g_win_lo, 0xff, g_win_span);
    } else if (!g_race_this_block && g_touched_hi > g_touched_lo) {
        memset((void*)g_touched_lo, 0xff, g_touched_hi - g_touched_lo);
    }
    for (auto& w : L.warps) {
        w.arrived = 0;
        w.done = 0;
        w.syncs = 0;
        w.ready = 0;
    }
    for (unsigned i = 0; i < L.nthreads; i++) {
        SimThread& t = L.threads[i];
        t.state = READY;
        t.copies.clear();
        t.group_ends.clear();
        prepare_fiber(t);
        make_ready(&t);
    }
    blockIdx = L.block_idx;
    while (!L.failed) {
        SimThread* t = take_ready(-1);
        if (!t) break;
        L.current = t;
        threadIdx = t->idx;
        sim_ctx_switch(&L.scheduler_sp, t->sp);
    }
    L.current = nullptr;
    if (!L.failed && L.live) {
        std::string who;
        unsigned shown = 0;
        for (auto& t : L.threads) {
            if (t.state == DONE || shown >= 4) continue;
            who += (shown++ ? ", " : "") + thread_name(t.tid) + (t.state == AT_BARRIER ? " at __syncthreads()" : " at a warp collective");
        }
        L.failed = true;
        L.code = SIM_LAUNCH_FAILED;
        L.error = "deadlock: " + std::to_string(L.live) + " threads wait and none can run (" + who +
                  (L.live > shown ? ", …" : "") + "); a barrier or warp collective that not every thread reaches? " + where(nullptr);
    }
}
}  // namespace

int sim_launch(SimKernel* k, SimDim grid, SimDim block, unsigned smem, void** args, std::string* error) {
    std::lock_guard<std::mutex> lock(g_launch_mu);
    const uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
    char buf[256];
    if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z || grid.y > 65535 || grid.z > 65535 || block.z > 64 || nthreads > kMaxThreads) {
        snprintf(buf, sizeof buf, "cuLaunchKernel %s: invalid launch shape grid (%u,%u,%u) block (%u,%u,%u)", k->name.c_str(), grid.x, grid.y, grid.z, block.x, block.y,
                 block.z);
        *error = buf;
        return SIM_INVALID_VALUE;
    }
    if (k->max_threads && nthreads > k->max_threads) {
        snprintf(buf, sizeof buf, "cuLaunchKernel %s: %llu threads per block, but __launch_bounds__ allows %u (too many resources requested for launch)", k->name.c_str(),
                 (unsigned long long)nthreads, k->max_threads);
        *error = buf;
        return SIM_LAUNCH_OUT_OF_RESOURCES;
    }
    if (smem > k->max_dynamic_smem) {
        snprintf(buf, sizeof buf, "cuLaunchKernel %s: %u bytes of dynamic shared memory, above the kernel's limit of %u (raise it with cuFuncSetAttribute)", k->name.c_str(),
                 smem, k->max_dynamic_smem);
        *error = buf;
        return SIM_INVALID_VALUE;
    }
    if (!setup_thread(error)) return SIM_LAUNCH_FAILED;
    install_fault_handler();
    {
        std::lock_guard<std::mutex> heap_lock(g_heap.mu);
        g_heap.init();
        g_heap_lo = g_heap.lo;
        g_heap_span = g_heap.hi - g_heap.lo;
    }
    static bool env_read = false;
    if (!env_read) {
        env_read = true;
        if (const char* s = getenv("MINDREADER_SIM_SEED")) g_seed = strtoull(s, nullptr, 0);
        if (const char* r = getenv("MINDREADER_SIM_RACECHECK")) {
            g_racecheck = strcmp(r, "0") != 0;
            g_racecheck_all = strcmp(r, "all") == 0;
        }
        if (const char* st = getenv("MINDREADER_SIM_STATS"); st && strcmp(st, "1") == 0) atexit(print_stats);
        if (const char* cov = getenv("MINDREADER_SIM_COVERAGE"); cov && *cov) {
            g_coverage_path = cov;
            atexit(write_coverage);
        }
    }

    Launch& L = g_launch;
    k->launched = true;
    L.kernel = k;
    L.args = args;
    L.grid = {grid.x, grid.y, grid.z};
    L.block = {block.x, block.y, block.z};
    L.smem = smem;
    L.nthreads = (unsigned)nthreads;
    L.failed = false;
    L.code = SIM_OK;
    L.error.clear();
    L.rng = g_seed ^ (0x9e3779b97f4a7c15ull * ++g_launches);
    gridDim = L.grid;
    blockDim = L.block;
    L.threads.resize(L.nthreads);
    L.warps.assign((L.nthreads + 31) / 32, Warp{});
    for (unsigned i = 0; i < L.nthreads; i++) {
        SimThread& t = L.threads[i];
        t.tid = i;
        t.lane = i % 32;
        t.warp = i / 32;
        t.idx = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
        t.stack = stack_for(i);
        if (!t.stack) {
            *error = "mindreader-sim: out of memory for fiber stacks";
            return SIM_LAUNCH_OUT_OF_RESOURCES;
        }
        L.warps[t.warp].existing |= 1u << t.lane;
    }

    // Blocks run one at a time, in a seeded random order: a kernel must not depend on block order.
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    const uint64_t stride = nblocks > 1 ? (next_random(L.rng) % nblocks) | 1 : 1;
    uint64_t step = stride;
    while (nblocks > 1 && std::__gcd(step, nblocks) != 1) step += 2;
    const uint64_t offset = nblocks ? next_random(L.rng) % nblocks : 0;
    g_in_kernel = true;
    g_touched_lo = UINTPTR_MAX;
    g_touched_hi = 0;
    uint64_t checked = 0;
    if (sigsetjmp(g_fault_jmp, 1) == 0) {
        for (uint64_t i = 0; i < nblocks && !L.failed; i++) {
            const uint64_t b = (offset + i * step) % nblocks;
            L.block_idx = {(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y), (unsigned)(b / ((uint64_t)grid.x * grid.y))};
            // The race check (a shadow update per shared access) covers every block of a small
            // grid; in a big one, the first blocks run (a seeded random sample: blocks run in
            // random order) and the blocks on the grid's far edges (where partial tiles are), up
            // to 4·kRaceCheckedBlocks. Bounds are checked in every block.
            const sim_uint3& bi = L.block_idx;
            const bool edge = (grid.x > 1 && bi.x == grid.x - 1) || (grid.y > 1 && bi.y == grid.y - 1) || (grid.z > 1 && bi.z == grid.z - 1);
            g_race_this_block = g_racecheck && (g_racecheck_all || i < kRaceCheckedBlocks || (edge && checked < 4 * kRaceCheckedBlocks));
            checked += g_race_this_block;
            run_block(L);
        }
    } else {
        const uintptr_t a = g_fault_addr;
        const bool below_stacks = a < (uintptr_t)g_stacks && a + kPage >= (uintptr_t)g_stacks;
        snprintf(buf, sizeof buf, "%s at address 0x%llx; ", below_stacks ? "fiber stack overflow" : "memory fault (a wild pointer: not device or shared memory)",
                 (unsigned long long)a);
        L.failed = true;
        L.code = SIM_ILLEGAL_ADDRESS;
        L.error = buf + where(L.current);
    }
    g_in_kernel = false;
    L.current = nullptr;
    if (L.failed) {
        *error = L.error;
        return L.code;
    }
    return SIM_OK;
}
