// Compiles cuda/fedlora_*.cu as host C++ for the device emulator (native/src/kernels.cpp
// includes them after this header). Each emulated thread runs the kernel function once with
// threadIdx/blockIdx set, one thread after another: that is exact for kernels whose threads do
// not talk to each other, which is all fedlora's kernels. Anything that needs threads of a
// block to run together is refused at compile time rather than emulated wrongly.
#ifndef FEDLORA_CUDA_SHIM_H
#define FEDLORA_CUDA_SHIM_H

#include <math.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// __shared__ memory and __syncthreads need a per-thread execution model (e.g. one fiber per
// thread, switched at each barrier); until the emulator has one, a kernel using them does not
// compile here.
#define __shared__ FEDLORA_EMULATOR_HAS_NO_SHARED_MEMORY_YET
void __syncthreads() = delete;

struct fedlora_dim3 {
    unsigned int x, y, z;
};

// Set by the launcher before each emulated thread runs. Launches execute one at a time under
// the emulator's lock, so plain globals are enough.
extern fedlora_dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline unsigned int __float_as_uint(float value)
{
    unsigned int bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float __uint_as_float(unsigned int bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#endif
