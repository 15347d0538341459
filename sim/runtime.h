// What the simulated driver (sim/driver.cpp) needs from the execution runtime (sim/runtime.cpp).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

typedef void (*sim_trampoline)(void** args);

struct SimKernel {
    std::string family, name;
    sim_trampoline call;
    unsigned max_threads;  // __launch_bounds__, 0 when the kernel declares none
    std::vector<size_t> param_sizes;  // by the kernel's own parameter types (a capture copies them)
    unsigned max_dynamic_smem = 48 * 1024;  // raised by cuFuncSetAttribute, as on a GPU
    bool launched = false;                  // for MINDREADER_SIM_COVERAGE
};

struct SimDim {
    unsigned x, y, z;
};

// The kernel of that name, or null.
SimKernel* sim_find_kernel(const char* name);
// Names of the families registered, for error messages.
std::string sim_family_list();
// Set when two families registered the same kernel name (the build refuses this too).
const std::string& sim_registry_error();

// Runs a whole grid, one block at a time, before returning. Returns 0, or a CUDA error code with
// `error` saying what went wrong, where (kernel, block, thread) and why.
int sim_launch(SimKernel* k, SimDim grid, SimDim block, unsigned smem, void** args, std::string* error);

// ---- device memory: a reserved range of host address space, one mapping per allocation ----------
// Returns 0 (out of memory) or the device address.
uint64_t sim_mem_alloc(size_t bytes);
// 0, or CUDA_ERROR_INVALID_VALUE with `error` set (not the start of a live allocation).
int sim_mem_free(uint64_t dptr, std::string* error);
// True when [dptr, dptr + bytes) lies in one live allocation; else `error` says why.
bool sim_mem_check(uint64_t dptr, size_t bytes, const char* what, std::string* error);
size_t sim_mem_in_use();
// Graph memory nodes: an allocation made while a stream was captured is handed to the graph
// (unmapped until the graph runs); each launch maps it again (NaN-filled) at its allocation node
// and sim_mem_free unmaps it at its free node, so a use outside its lifetime is reported.
int sim_mem_set_graph_owned(uint64_t dptr, std::string* error);
int sim_mem_map_graph_allocation(uint64_t dptr, std::string* error);
