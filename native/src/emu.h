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

// Queues work on a stream: after the stream's previous item and, as the legacy default stream's
// barrier requires, after the legacy stream's last item (blocking stream) or every blocking
// stream's last item (legacy stream). Queued work runs only when a synchronising call needs it,
// never earlier, in an order the seeded scheduler picks among the items that are free to run,
// so that a host buffer reused too early or a missing cross-stream wait shows up as wrong data
// instead of passing by luck. `what` names the work in error messages; work returns a CUresult.
FEDLORA_EMU_API int submit(CUstream stream, const char* what, std::function<int()> work);

// submit, and also after item `also_after` (0: nothing more); what cuStreamWaitEvent queues.
FEDLORA_EMU_API int submit_after(CUstream stream, const char* what, unsigned long also_after, std::function<int()> work);

// The id of the item submitted last.
FEDLORA_EMU_API unsigned long last_submitted();

// Runs item `id` and what it depends on, nothing else; returns the current context's status.
FEDLORA_EMU_API int run_through(unsigned long id);

// Runs what a synchronisation of `stream` must wait for (the legacy stream: its barrier).
FEDLORA_EMU_API int synchronize_stream(CUstream stream);

// Runs everything queued on every context (freeing memory and tearing down wait for it all).
FEDLORA_EMU_API int flush();

// Runs everything queued on the current context (cuCtxSynchronize).
FEDLORA_EMU_API int flush_context();

// True once after fedlora_emu_fault_next_launch: the launch being queued faults when it runs.
FEDLORA_EMU_API bool take_launch_fault();

// CUDA_ERROR_UNKNOWN, reported, when fedlora_emu_fail armed a failure of `function` that is due.
FEDLORA_EMU_API int injected_failure(const char* function);

// After a kernel or cuBLAS call ran: reports writes that landed in the guard bytes around any
// allocation, which on a real GPU would be an illegal address or silent corruption.
FEDLORA_EMU_API int check_guards(const char* what);

}  // namespace fedlora_emu

#endif
