// Internals of the fedlora device emulator shared by libcuda.so.1 (driver.cpp, kernels.cpp)
// and libcublas.so.12 (cublas.cpp, which reaches them through libcuda's exported fedlora_emu::
// symbols, so that both libraries see one device).
#ifndef FEDLORA_EMU_H
#define FEDLORA_EMU_H

#include "cuda_api.h"

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#define FEDLORA_EMU_API __attribute__((visibility("default")))

namespace fedlora_emu {

// Every API call holds this lock: the emulated device does one thing at a time.
FEDLORA_EMU_API std::recursive_mutex& big_lock();

// Prints "fedlora-emu: <message>" on stderr, remembers it for fedlora_emu_last_error, and
// returns code, so that a failing call reads `return report(CUDA_ERROR_..., "...", ...)`.
FEDLORA_EMU_API int report(int code, const char* format, ...) __attribute__((format(printf, 2, 3)));

// CUDA_SUCCESS if [pointer, pointer + bytes) lies inside one live device allocation of the
// current context, else reports why (naming `what`) and returns CUDA_ERROR_INVALID_VALUE.
FEDLORA_EMU_API int check_device_range(CUdeviceptr pointer, size_t bytes, const char* what);

// The current context is usable: cuInit ran, a context is current and not broken.
FEDLORA_EMU_API int check_context();

// Queues work on a stream. Queued work runs in submission order at the next synchronising call,
// never earlier, so that a host buffer reused before a synchronisation shows up as wrong data
// instead of passing by luck. `what` names the work in error messages; work returns a CUresult.
FEDLORA_EMU_API int submit(CUstream stream, const char* what, std::function<int()> work);

// Runs everything queued (the emulator's "wait for the device").
FEDLORA_EMU_API int flush();

// After a kernel or cuBLAS call ran: reports writes that landed in the guard bytes around any
// allocation, which on a real GPU would be an illegal address or silent corruption.
FEDLORA_EMU_API int check_guards(const char* what);

}  // namespace fedlora_emu

#endif
