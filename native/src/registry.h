// Between the driver (cuModuleLoadData, cuLaunchKernel) and the kernel registry.
#ifndef FEDLORA_EMU_REGISTRY_H
#define FEDLORA_EMU_REGISTRY_H

#include "cuda_api.h"

#include <functional>
#include <string>
#include <vector>

namespace fedlora_emu {

struct Launch {
    const char* name;
    unsigned grid[3];
    unsigned block[3];
    CUstream stream;
};

struct KernelInfo {
    const char* name;
    std::vector<size_t> param_sizes;  // sizeof each C++ parameter, checked against the PTX entry's .param list
    std::function<int(const Launch&, void**)> launch;  // validates, copies the arguments, queues the grid
};

// The host implementation of a kernel, or null when the emulator was built without it.
const KernelInfo* find_kernel(const std::string& name);

}  // namespace fedlora_emu

#endif
