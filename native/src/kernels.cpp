// The kernel registry: cuda/fedlora_*.cu compiled as host C++ (through shim/cuda_shim.h), and
// for each kernel a launcher that reads cuLaunchKernel's kernelParams by the kernel's own C++
// signature. The list of kernels is generated from the file names by the Makefile, so a new
// cuda/fedlora_x.cu is registered by rebuilding, never by editing this file.
#include "cuda_shim.h"

#include "kernel_sources.inc"  // #include "fedlora_x.cu" for every kernel file

#include "emu.h"
#include "registry.h"

#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

fedlora_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace fedlora_emu {
namespace {

// cuLaunchKernel's kernelParams[i] points at the value of parameter i, laid out as the C type.
template <typename T>
T read_param(const void* slot)
{
    T value;
    std::memcpy(&value, slot, sizeof value);
    return value;
}

// A pointer argument must point into device memory (or be null, which fedlora's kernels read
// as "absent"). A real GPU would only fault later, at the first access, if at all.
template <typename T>
int check_argument(const char* kernel, size_t index, T value)
{
    if constexpr (std::is_pointer_v<T>) {
        if (value != nullptr) {
            char what[128];
            std::snprintf(what, sizeof what, "%s argument %zu", kernel, index);
            return check_device_range(reinterpret_cast<CUdeviceptr>(value), 1, what);
        }
    }
    return CUDA_SUCCESS;
}

template <typename... Params, size_t... Index>
int launch(void (*kernel)(Params...), const Launch& geometry, void** params, std::index_sequence<Index...>)
{
    if (sizeof...(Params) > 0 && params == nullptr) {
        return report(CUDA_ERROR_INVALID_VALUE, "%s: kernelParams is null, the kernel takes %zu arguments",
                      geometry.name, sizeof...(Params));
    }
    // Copied now: the caller may free the argument memory as soon as cuLaunchKernel returns.
    std::tuple<Params...> args{read_param<Params>(params[Index])...};
    int status = CUDA_SUCCESS;
    ((status = status != CUDA_SUCCESS ? status : check_argument(geometry.name, Index, std::get<Index>(args))), ...);
    if (status != CUDA_SUCCESS) {
        return status;
    }
    Launch g = geometry;
    bool fault = take_launch_fault();
    return submit(g.stream, g.name, [kernel, g, args, fault]() {
        if (fault) {
            return report(CUDA_ERROR_ILLEGAL_ADDRESS, "%s: illegal address (fault injected by fedlora_emu_fault_next_launch)", g.name);
        }
        gridDim = {g.grid[0], g.grid[1], g.grid[2]};
        blockDim = {g.block[0], g.block[1], g.block[2]};
        for (unsigned bz = 0; bz < g.grid[2]; bz++)
            for (unsigned by = 0; by < g.grid[1]; by++)
                for (unsigned bx = 0; bx < g.grid[0]; bx++) {
                    blockIdx = {bx, by, bz};
                    for (unsigned tz = 0; tz < g.block[2]; tz++)
                        for (unsigned ty = 0; ty < g.block[1]; ty++)
                            for (unsigned tx = 0; tx < g.block[0]; tx++) {
                                threadIdx = {tx, ty, tz};
                                std::apply(kernel, args);
                            }
                }
        return check_guards(g.name);
    });
}

template <typename... Params>
KernelInfo entry(const char* name, void (*kernel)(Params...))
{
    return KernelInfo{name, {sizeof(Params)...}, [kernel](const Launch& geometry, void** params) {
                          return launch(kernel, geometry, params, std::index_sequence_for<Params...>{});
                      }};
}

const KernelInfo registry[] = {
#define FEDLORA_KERNEL(name) entry(#name, &name),
#include "kernel_names.inc"  // FEDLORA_KERNEL(fedlora_x) for every kernel file
#undef FEDLORA_KERNEL
};

}  // namespace

const KernelInfo* find_kernel(const std::string& name)
{
    for (const KernelInfo& kernel : registry) {
        if (name == kernel.name) {
            return &kernel;
        }
    }
    return nullptr;
}

}  // namespace fedlora_emu
