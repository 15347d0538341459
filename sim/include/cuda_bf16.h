// The simulator's stand-in for CUDA's cuda_bf16.h: __nv_bfloat16 and its conversions live in
// sim/cuda_sim.h (force-included before every kernel file).
#pragma once
#include "../cuda_sim.h"
