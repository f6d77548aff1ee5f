// libcuda.so.1 of the fedlora device emulator: the CUDA driver functions the CUDA backend
// calls (through JCuda), implemented on host memory with strict checking. See native/README.md.
#include "emu.h"
#include "registry.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

// The opaque handle types of the driver API.
struct CUctx_st {
    bool primary;
    bool alive;       // a released primary context stays a valid handle but cannot be used
    int references;   // primary context: cuDevicePrimaryCtxRetain count
    int sticky;       // an asynchronous error breaks the context until it is destroyed
};
struct CUfunc_st {
    const fedlora_emu::KernelInfo* kernel;
    CUmodule module;
};
struct CUmod_st {
    CUcontext context;
    std::map<std::string, CUfunc_st*> functions;
};
struct CUstream_st {
    CUcontext context;
    bool blocking;           // flag 0: synchronises with the legacy default stream
    unsigned long priority;  // the scheduler's rank for this stream under even seeds
};
struct CUevent_st {
    CUcontext context;
    unsigned long recorded;  // the marker queued by the last cuEventRecord; 0: never recorded
};

namespace fedlora_emu {
namespace {

constexpr size_t GUARD = 256;            // guard bytes on each side of a device allocation
constexpr unsigned char GUARD_BYTE = 0xfd;
constexpr unsigned char FRESH_BYTE = 0xff;  // new device memory reads as NaN, never as zero
constexpr size_t GRANULE = 256;          // cuMemAlloc's alignment, and what an allocation costs
constexpr size_t DEFAULT_MEMORY = size_t(4) << 30;
constexpr int DRIVER_VERSION = 12000;    // behaves as the CUDA 12.0 driver JCuda 12.0 targets
constexpr int MAX_PTX_MAJOR = 8, MAX_PTX_MINOR = 0;  // newest PTX ISA a 12.0 driver loads
constexpr int SM = 75;                   // emulated compute capability 7.5

struct Allocation {
    size_t size;
    size_t charged;
    unsigned char* block;  // GUARD bytes, the user's bytes, GUARD bytes
    CUcontext context;
    unsigned long serial;
};
struct HostAllocation {
    size_t size;
    CUcontext context;
    unsigned long serial;
};
// One unit of queued device work. It may run once every item in `after` has run: the previous
// item of its stream, the legacy stream's barrier items, and the events it was told to wait for.
struct Work {
    std::string what;
    CUcontext context;
    std::function<int()> run;
    std::vector<unsigned long> after;
    unsigned long priority;
};
// Where a stream's next item must queue behind; the legacy default stream of a context is
// keyed by the context with a null stream.
struct StreamKey {
    CUcontext context;
    CUstream stream;
    bool operator<(const StreamKey& other) const
    {
        return context != other.context ? context < other.context : stream < other.stream;
    }
};

bool initialized = false;
size_t memory_limit = DEFAULT_MEMORY;
size_t memory_used = 0;
unsigned long next_serial = 1;
std::map<CUdeviceptr, Allocation> allocations;  // by base address
std::set<CUdeviceptr> freed;                     // to tell a double free from a wild pointer
std::map<uintptr_t, HostAllocation> host_allocations;
std::set<CUcontext> created_contexts;
std::set<CUmodule> modules;
std::set<CUfunction> functions;
std::set<CUstream> streams;
std::set<CUevent> events;
std::map<unsigned long, Work> pending;       // queued work by id, in submission order
std::map<StreamKey, unsigned long> tails;    // the last item queued on each stream
unsigned long next_work = 1;
// Scheduler (FEDLORA_EMU_SEED, or fedlora_emu_set_seed): 0 runs ready work in submission order;
// an odd seed picks uniformly among the ready items; an even seed ranks the streams at random
// and always runs the ready item of the highest-ranked stream (one stream races ahead: copies
// ahead of compute, or the other way round).
unsigned long long seed = 1;
unsigned long long rng_state = 1;
// Failure injection (fedlora_emu_fail): the countdown-th next call of fail_function fails.
std::string fail_function;
int fail_countdown = 0;
bool launch_fault = false;
// Bytes accepted by host-to-device copies since the library loaded (fedlora_emu_htod_bytes):
// [0] synchronous cuMemcpyHtoD, [1] cuMemcpyHtoDAsync; counted when the call is accepted.
unsigned long long htod_bytes[2] = {0, 0};
CUctx_st primary_context{true, false, 0, CUDA_SUCCESS};
thread_local CUcontext current = nullptr;
std::string last_error;

size_t round_up(size_t value, size_t granule) { return (value + granule - 1) / granule * granule; }

unsigned char* user_bytes(const Allocation& a) { return a.block + GUARD; }

bool valid_context(CUcontext context)
{
    return context == &primary_context || created_contexts.count(context) != 0;
}

// The allocation that contains address, or allocations.end().
std::map<CUdeviceptr, Allocation>::iterator containing(CUdeviceptr address)
{
    auto it = allocations.upper_bound(address);
    if (it == allocations.begin()) {
        return allocations.end();
    }
    --it;
    return address < it->first + it->second.size ? it : allocations.end();
}

// The pinned buffer that contains [host, host + bytes); sets *status when it holds only the start.
const HostAllocation* pinned(const void* host, size_t bytes, int* status)
{
    uintptr_t address = reinterpret_cast<uintptr_t>(host);
    auto it = host_allocations.upper_bound(address);
    if (it == host_allocations.begin()) {
        return nullptr;
    }
    --it;
    if (address >= it->first + it->second.size) {
        return nullptr;
    }
    if (address + bytes > it->first + it->second.size) {
        *status = report(CUDA_ERROR_INVALID_VALUE,
                         "%zu bytes at host address %p run past the end of the %zu-byte pinned buffer #%lu (out of bounds)",
                         bytes, host, it->second.size, it->second.serial);
    }
    return &it->second;
}

int check_stream(CUstream stream)
{
    uintptr_t raw = reinterpret_cast<uintptr_t>(stream);
    if (raw <= 2) {  // 0 (default), CU_STREAM_LEGACY, CU_STREAM_PER_THREAD
        return CUDA_SUCCESS;
    }
    if (streams.count(stream) == 0) {
        return report(CUDA_ERROR_INVALID_HANDLE, "stream %p is not a live stream", static_cast<void*>(stream));
    }
    if (stream->context != current) {
        return report(CUDA_ERROR_INVALID_HANDLE, "stream %p belongs to another context", static_cast<void*>(stream));
    }
    return CUDA_SUCCESS;
}

int check_event(CUevent event)
{
    if (events.count(event) == 0) {
        return report(CUDA_ERROR_INVALID_HANDLE, "event %p is not a live event", static_cast<void*>(event));
    }
    return CUDA_SUCCESS;
}

bool parse_bytes(const char* text, size_t* bytes)
{
    char* end = nullptr;
    unsigned long long value = std::strtoull(text, &end, 10);
    if (end == text) {
        return false;
    }
    switch (*end) {
        case 'k': case 'K': value <<= 10; end++; break;
        case 'm': case 'M': value <<= 20; end++; break;
        case 'g': case 'G': value <<= 30; end++; break;
        default: break;
    }
    if (*end != '\0' || value == 0) {
        return false;
    }
    *bytes = static_cast<size_t>(value);
    return true;
}

void free_allocation(std::map<CUdeviceptr, Allocation>::iterator it)
{
    memory_used -= it->second.charged;
    std::free(it->second.block);
    freed.insert(it->first);
    allocations.erase(it);
}

// Frees everything a dying context still owns; what it finds is a leak, which a real driver
// would clean up silently and the emulator reports, so that tests catch a missing free.
int destroy_resources(CUcontext context)
{
    std::string leaks;
    size_t leaked_bytes = 0;
    int leaked = 0;
    for (auto it = allocations.begin(); it != allocations.end();) {
        auto next = std::next(it);
        if (it->second.context == context) {
            char line[160];
            std::snprintf(line, sizeof line, "%s device allocation #%lu of %zu bytes at 0x%llx", leaked ? "," : "",
                          it->second.serial, it->second.size, it->first);
            leaks += line;
            leaked_bytes += it->second.size;
            leaked++;
            free_allocation(it);
        }
        it = next;
    }
    for (auto it = host_allocations.begin(); it != host_allocations.end();) {
        auto next = std::next(it);
        if (it->second.context == context) {
            char line[160];
            std::snprintf(line, sizeof line, "%s pinned host buffer #%lu of %zu bytes", leaked ? "," : "",
                          it->second.serial, it->second.size);
            leaks += line;
            leaked++;
            std::free(reinterpret_cast<void*>(it->first));
            host_allocations.erase(it);
        }
        it = next;
    }
    int handles = 0;
    for (auto it = streams.begin(); it != streams.end();) {
        auto next = std::next(it);
        if ((*it)->context == context) { delete *it; streams.erase(it); handles++; }
        it = next;
    }
    for (auto it = events.begin(); it != events.end();) {
        auto next = std::next(it);
        if ((*it)->context == context) { delete *it; events.erase(it); handles++; }
        it = next;
    }
    for (auto it = modules.begin(); it != modules.end();) {
        auto next = std::next(it);
        if ((*it)->context == context) {
            for (auto& f : (*it)->functions) { functions.erase(f.second); delete f.second; }
            delete *it;
            modules.erase(it);
            handles++;
        }
        it = next;
    }
    if (leaked == 0 && handles == 0) {
        return CUDA_SUCCESS;
    }
    return report(CUDA_ERROR_ILLEGAL_STATE,
                  "context destroyed with leaks: %d memory buffers (%zu device bytes):%s; %d streams, events or modules not destroyed",
                  leaked, leaked_bytes, leaks.empty() ? " none" : leaks.c_str(), handles);
}

}  // namespace

std::recursive_mutex& big_lock()
{
    static std::recursive_mutex lock;
    return lock;
}

int report(int code, const char* format, ...)
{
    char message[1024];
    va_list args;
    va_start(args, format);
    std::vsnprintf(message, sizeof message, format, args);
    va_end(args);
    last_error = message;
    // Tests that provoke errors on purpose set FEDLORA_EMU_QUIET and read fedlora_emu_last_error.
    const char* quiet = std::getenv("FEDLORA_EMU_QUIET");
    if (quiet == nullptr || std::strcmp(quiet, "1") != 0) {
        std::fprintf(stderr, "fedlora-emu: %s\n", message);
        std::fflush(stderr);
    }
    return code;
}

int check_context()
{
    if (!initialized) {
        return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    }
    if (current == nullptr) {
        return report(CUDA_ERROR_INVALID_CONTEXT, "no context is current on this thread");
    }
    if (!current->alive) {
        return report(CUDA_ERROR_INVALID_CONTEXT, "the current context was released or destroyed");
    }
    return current->sticky;
}

int check_device_range(CUdeviceptr pointer, size_t bytes, const char* what)
{
    auto it = containing(pointer);
    if (it == allocations.end()) {
        return report(CUDA_ERROR_INVALID_VALUE, "%s: 0x%llx is not device memory (%s)", what, pointer,
                      freed.count(pointer) ? "freed already" : "never allocated, or a host pointer");
    }
    if (it->second.context != current) {
        return report(CUDA_ERROR_INVALID_VALUE, "%s: 0x%llx belongs to another context", what, pointer);
    }
    size_t end = it->first + it->second.size;
    if (bytes > end - pointer) {
        return report(CUDA_ERROR_INVALID_VALUE,
                      "%s: %zu bytes at 0x%llx run %zu bytes past the end of the %zu-byte device allocation #%lu "
                      "at 0x%llx (out of bounds)",
                      what, bytes, pointer, static_cast<size_t>(pointer + bytes - end), it->second.size,
                      it->second.serial, it->first);
    }
    return CUDA_SUCCESS;
}

namespace {

unsigned long long next_random()
{
    // splitmix64
    unsigned long long z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

bool is_legacy(CUstream stream) { return reinterpret_cast<uintptr_t>(stream) <= 2; }

bool done(unsigned long id) { return id == 0 || pending.count(id) == 0; }

// Runs one item and removes it; a broken context runs nothing more.
void execute(std::map<unsigned long, Work>::iterator it)
{
    Work work = std::move(it->second);
    pending.erase(it);
    if (work.context->sticky != CUDA_SUCCESS) {
        return;
    }
    int status = work.run();
    if (status != CUDA_SUCCESS) {
        work.context->sticky = status;
    }
}

// Runs the targets and exactly what they depend on, in an order the scheduler picks among the
// items whose dependencies have all run; everything else stays queued.
void run_until(const std::vector<unsigned long>& targets)
{
    std::set<unsigned long> needed;
    std::vector<unsigned long> stack;
    for (unsigned long t : targets) {
        if (!done(t)) stack.push_back(t);
    }
    while (!stack.empty()) {
        unsigned long id = stack.back();
        stack.pop_back();
        if (!needed.insert(id).second) continue;
        for (unsigned long before : pending.at(id).after) {
            if (!done(before) && !needed.count(before)) stack.push_back(before);
        }
    }
    while (!needed.empty()) {
        std::vector<unsigned long> ready;
        for (unsigned long id : needed) {
            bool free_to_run = true;
            for (unsigned long before : pending.at(id).after) free_to_run = free_to_run && done(before);
            if (free_to_run) ready.push_back(id);
        }
        unsigned long chosen = ready.front();  // seed 0: submission order
        if (seed % 2 == 1) {
            chosen = ready[next_random() % ready.size()];
        } else if (seed != 0) {
            for (unsigned long id : ready) {
                if (pending.at(id).priority > pending.at(chosen).priority) chosen = id;
            }
        }
        needed.erase(chosen);
        execute(pending.find(chosen));
    }
}

}  // namespace

int submit(CUstream stream, const char* what, std::function<int()> work)
{
    return submit_after(stream, what, 0, std::move(work));
}

int submit_after(CUstream stream, const char* what, unsigned long also_after, std::function<int()> work)
{
    int status = check_context();
    if (status == CUDA_SUCCESS) {
        status = check_stream(stream);
    }
    if (status != CUDA_SUCCESS) {
        return status;
    }
    Work item{what, current, std::move(work), {}, 0};
    if (also_after != 0) item.after.push_back(also_after);
    StreamKey key{current, is_legacy(stream) ? nullptr : stream};
    item.after.push_back(tails[key]);
    if (key.stream == nullptr) {
        // The legacy stream waits for all earlier work of every blocking stream of its context.
        for (CUstream other : streams) {
            if (other->context == current && other->blocking) item.after.push_back(tails[StreamKey{current, other}]);
        }
        item.priority = 0;
    } else {
        if (stream->blocking) item.after.push_back(tails[StreamKey{current, nullptr}]);
        item.priority = stream->priority;
    }
    unsigned long id = next_work++;
    pending.emplace(id, std::move(item));
    tails[key] = id;
    return CUDA_SUCCESS;
}

unsigned long last_submitted() { return next_work - 1; }

int run_through(unsigned long id)
{
    run_until({id});
    return current != nullptr ? current->sticky : CUDA_SUCCESS;
}

int synchronize_stream(CUstream stream)
{
    if (is_legacy(stream)) {
        // Waiting for the legacy stream waits for the work of every blocking stream before now.
        int status = submit(stream, "legacy stream synchronisation", []() { return CUDA_SUCCESS; });
        return status != CUDA_SUCCESS ? status : run_through(last_submitted());
    }
    return run_through(tails[StreamKey{current, stream}]);
}

int flush()
{
    std::vector<unsigned long> all;
    for (auto& entry : pending) all.push_back(entry.first);
    run_until(all);
    return current != nullptr ? current->sticky : CUDA_SUCCESS;
}

int flush_context()
{
    std::vector<unsigned long> all;
    for (auto& [id, work] : pending) {
        if (work.context == current) all.push_back(id);
    }
    run_until(all);
    return current != nullptr ? current->sticky : CUDA_SUCCESS;
}

bool take_launch_fault()
{
    bool fault = launch_fault;
    launch_fault = false;
    return fault;
}

int injected_failure(const char* function)
{
    if (fail_countdown > 0 && fail_function == function && --fail_countdown == 0) {
        fail_function.clear();
        return report(CUDA_ERROR_UNKNOWN, "%s: failure injected by fedlora_emu_fail", function);
    }
    return CUDA_SUCCESS;
}

int check_guards(const char* what)
{
    int status = CUDA_SUCCESS;
    for (auto& [base, a] : allocations) {
        unsigned char* regions[2] = {a.block, user_bytes(a) + a.size};
        for (int side = 0; side < 2; side++) {
            // How far from the user's bytes the furthest changed guard byte lies. A write that
            // stores the bytes already there (or lands beyond the guard) cannot be seen.
            size_t reach = 0;
            for (size_t k = 0; k < GUARD; k++) {
                if (regions[side][k] != GUARD_BYTE) {
                    reach = std::max(reach, side == 0 ? GUARD - k : k + 1);
                }
            }
            if (reach > 0) {
                status = report(CUDA_ERROR_ILLEGAL_ADDRESS,
                                "%s wrote out of bounds: up to %zu bytes %s the %zu-byte device allocation #%lu at 0x%llx",
                                what, reach, side == 0 ? "before" : "past the end of", a.size, a.serial, base);
                std::memset(regions[side], GUARD_BYTE, GUARD);
            }
        }
    }
    return status;
}

}  // namespace fedlora_emu

using namespace fedlora_emu;
#define LOCKED std::lock_guard<std::recursive_mutex> guard(big_lock())
#define CHECK_OR_RETURN(expression) do { int status_ = (expression); if (status_ != CUDA_SUCCESS) return status_; } while (0)
#define CHECK(expression) do { int status_ = (expression); if (status_ != CUDA_SUCCESS) return status_; } while (0)

extern "C" {
#define EXPORT __attribute__((visibility("default")))

EXPORT const char* fedlora_emu_last_error(void)
{
    LOCKED;
    static thread_local std::string copy;
    copy = last_error;
    return copy.c_str();
}

EXPORT void fedlora_emu_set_seed(unsigned long long new_seed)
{
    LOCKED;
    seed = new_seed;
    rng_state = new_seed;
    for (CUstream stream : streams) stream->priority = next_random();
}

EXPORT int fedlora_emu_fail(const char* function, int nth)
{
    LOCKED;
    int left = fail_countdown;
    fail_function = function != nullptr ? function : "";
    fail_countdown = nth;
    return left;
}

EXPORT void fedlora_emu_fault_next_launch(void)
{
    LOCKED;
    launch_fault = true;
}

EXPORT unsigned long long fedlora_emu_htod_bytes(int asynchronous)
{
    LOCKED;
    return htod_bytes[asynchronous != 0 ? 1 : 0];
}

EXPORT int fedlora_emu_live_objects(void)
{
    LOCKED;
    return static_cast<int>(allocations.size() + host_allocations.size() + streams.size() + events.size() + modules.size());
}

EXPORT CUresult cuInit(unsigned int flags)
{
    LOCKED;
    if (flags != 0) {
        return report(CUDA_ERROR_INVALID_VALUE, "cuInit: flags must be 0");
    }
    const char* size = std::getenv("FEDLORA_EMU_MEMORY");
    if (size != nullptr && !parse_bytes(size, &memory_limit)) {
        return report(CUDA_ERROR_INVALID_VALUE, "FEDLORA_EMU_MEMORY=%s is not a byte count (e.g. 65536, 64K, 512M, 4G)", size);
    }
    const char* seed_text = std::getenv("FEDLORA_EMU_SEED");
    if (seed_text != nullptr && *seed_text != '\0') {
        char* end = nullptr;
        seed = std::strtoull(seed_text, &end, 10);
        if (*end != '\0') return report(CUDA_ERROR_INVALID_VALUE, "FEDLORA_EMU_SEED=%s is not a number", seed_text);
    }
    rng_state = seed;
    initialized = true;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int* version)
{
    if (version == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *version = DRIVER_VERSION;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorName(CUresult error, const char** name)
{
    static const std::map<int, const char*> names = {
        {CUDA_SUCCESS, "CUDA_SUCCESS"}, {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE"},
        {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY"}, {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED"},
        {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE"}, {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE"},
        {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT"}, {CUDA_ERROR_NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU"},
        {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX"}, {CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"},
        {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE"}, {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE"},
        {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND"}, {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY"}, {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS"},
        {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED"}, {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN"}};
    auto it = names.find(error);
    if (name == nullptr || it == names.end()) return CUDA_ERROR_INVALID_VALUE;
    *name = it->second;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char** text)
{
    return cuGetErrorName(error, text);
}

EXPORT CUresult cuDeviceGetCount(int* count)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *count = 1;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0) return report(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGet: the emulator has one device, 0, not %d", ordinal);
    *device = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char* name, int length, CUdevice device)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (name == nullptr || length <= 0) return CUDA_ERROR_INVALID_VALUE;
    std::snprintf(name, static_cast<size_t>(length), "fedlora device emulator (host memory)");
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice device)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
    switch (attribute) {
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *value = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *value = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *value = 64; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *value = 2147483647; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *value = 65535; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *value = 65535; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *value = 32; break;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = 1; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = SM / 10; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = SM % 10; break;
        default:
            return report(CUDA_ERROR_NOT_SUPPORTED, "cuDeviceGetAttribute: attribute %d is not emulated", attribute);
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *bytes = memory_limit;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (context == nullptr) return CUDA_ERROR_INVALID_VALUE;
    primary_context.references++;
    primary_context.alive = true;
    *context = &primary_context;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (primary_context.references == 0) {
        return report(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease without a matching retain");
    }
    if (--primary_context.references > 0) {
        return CUDA_SUCCESS;
    }
    flush();
    int status = destroy_resources(&primary_context);
    primary_context.alive = false;
    primary_context.sticky = CUDA_SUCCESS;
    return status;
}

EXPORT CUresult cuCtxCreate_v2(CUcontext* context, unsigned int flags, CUdevice device)
{
    LOCKED;
    (void) flags;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (context == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUcontext created = new CUctx_st{false, true, 0, CUDA_SUCCESS};
    created_contexts.insert(created);
    current = created;
    *context = created;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext context)
{
    LOCKED;
    if (created_contexts.count(context) == 0) {
        return report(CUDA_ERROR_INVALID_CONTEXT, "cuCtxDestroy: %p is not a context made by cuCtxCreate", static_cast<void*>(context));
    }
    flush();
    int status = destroy_resources(context);
    created_contexts.erase(context);
    if (current == context) current = nullptr;
    delete context;
    return status;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext context)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (context != nullptr && !valid_context(context)) {
        return report(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: %p is not a context", static_cast<void*>(context));
    }
    current = context;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext* context)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (context == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *context = current;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize(void)
{
    LOCKED;
    CHECK(check_context());
    return flush_context();
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free, size_t* total)
{
    LOCKED;
    CHECK(check_context());
    if (free == nullptr || total == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *free = memory_limit - memory_used;
    *total = memory_limit;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* pointer, size_t bytes)
{
    LOCKED;
    CHECK(check_context());
    if (pointer == nullptr) return report(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc: null result pointer");
    CHECK(injected_failure("cuMemAlloc"));
    if (bytes == 0) return report(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc of 0 bytes");
    size_t charged = round_up(bytes, GRANULE);
    if (charged > memory_limit - memory_used) {
        return report(CUDA_ERROR_OUT_OF_MEMORY,
                      "cuMemAlloc of %zu bytes: out of emulated device memory (%zu of %zu bytes in use; "
                      "FEDLORA_EMU_MEMORY sets the size)",
                      bytes, memory_used, memory_limit);
    }
    unsigned char* block = static_cast<unsigned char*>(std::aligned_alloc(GRANULE, round_up(GUARD + bytes + GUARD, GRANULE)));
    if (block == nullptr) return report(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: host malloc of %zu bytes failed", bytes);
    std::memset(block, GUARD_BYTE, GUARD);
    std::memset(block + GUARD, FRESH_BYTE, bytes);
    std::memset(block + GUARD + bytes, GUARD_BYTE, GUARD);
    CUdeviceptr base = reinterpret_cast<CUdeviceptr>(block + GUARD);
    allocations[base] = Allocation{bytes, charged, block, current, next_serial++};
    freed.erase(base);
    memory_used += charged;
    *pointer = base;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr pointer)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    flush();  // like the real driver, freeing waits for the work that may still use the memory
    auto it = allocations.find(pointer);
    if (it == allocations.end()) {
        auto inside = containing(pointer);
        return report(CUDA_ERROR_INVALID_VALUE, "cuMemFree(0x%llx): %s", pointer,
                      inside != allocations.end() ? "not the start of an allocation"
                      : freed.count(pointer)      ? "double free"
                                                  : "not device memory");
    }
    free_allocation(it);
    // A broken context answers every call with its fault, frees included (the emulator still
    // releases the memory, so that leak accounting stays exact).
    return current != nullptr && current->sticky != CUDA_SUCCESS ? current->sticky : CUDA_SUCCESS;
}

EXPORT CUresult cuMemHostAlloc(void** pointer, size_t bytes, unsigned int flags)
{
    LOCKED;
    (void) flags;
    CHECK(check_context());
    if (pointer == nullptr || bytes == 0) return report(CUDA_ERROR_INVALID_VALUE, "cuMemHostAlloc of %zu bytes", bytes);
    CHECK(injected_failure("cuMemHostAlloc"));
    void* block = std::aligned_alloc(4096, round_up(bytes, 4096));
    if (block == nullptr) return report(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostAlloc: host malloc of %zu bytes failed", bytes);
    host_allocations[reinterpret_cast<uintptr_t>(block)] = HostAllocation{bytes, current, next_serial++};
    *pointer = block;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAllocHost_v2(void** pointer, size_t bytes)
{
    return cuMemHostAlloc(pointer, bytes, 0);
}

EXPORT CUresult cuMemFreeHost(void* pointer)
{
    LOCKED;
    if (!initialized) return report(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    flush();
    auto it = host_allocations.find(reinterpret_cast<uintptr_t>(pointer));
    if (it == host_allocations.end()) {
        return report(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost(%p): not a live pinned buffer (double free?)", pointer);
    }
    std::free(pointer);
    host_allocations.erase(it);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr destination, const void* source, size_t bytes)
{
    LOCKED;
    CHECK(check_context());
    CHECK(injected_failure("cuMemcpyHtoD"));
    CHECK(synchronize_stream(nullptr));  // synchronous: on the legacy stream, after its barrier
    CHECK(check_device_range(destination, bytes, "cuMemcpyHtoD destination"));
    if (bytes > 0 && source == nullptr) return report(CUDA_ERROR_INVALID_VALUE, "cuMemcpyHtoD: null source");
    int status = CUDA_SUCCESS;
    pinned(source, bytes, &status);
    CHECK(status);
    std::memcpy(reinterpret_cast<void*>(destination), source, bytes);
    htod_bytes[0] += bytes;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyDtoH_v2(void* destination, CUdeviceptr source, size_t bytes)
{
    LOCKED;
    CHECK(check_context());
    CHECK(injected_failure("cuMemcpyDtoH"));
    CHECK(synchronize_stream(nullptr));  // synchronous: on the legacy stream, after its barrier
    CHECK(check_device_range(source, bytes, "cuMemcpyDtoH source"));
    if (bytes > 0 && destination == nullptr) return report(CUDA_ERROR_INVALID_VALUE, "cuMemcpyDtoH: null destination");
    int status = CUDA_SUCCESS;
    pinned(destination, bytes, &status);
    CHECK(status);
    std::memcpy(destination, reinterpret_cast<const void*>(source), bytes);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr destination, CUdeviceptr source, size_t bytes)
{
    LOCKED;
    CHECK(check_context());
    CHECK(synchronize_stream(nullptr));  // synchronous: on the legacy stream, after its barrier
    CHECK(check_device_range(destination, bytes, "cuMemcpyDtoD destination"));
    CHECK(check_device_range(source, bytes, "cuMemcpyDtoD source"));
    std::memmove(reinterpret_cast<void*>(destination), reinterpret_cast<const void*>(source), bytes);
    return CUDA_SUCCESS;
}

// An asynchronous copy from pinned memory is queued and reads the host buffer when it runs;
// from pageable memory the driver stages the bytes before returning (the host buffer may be
// reused at once) and the device write still happens in stream order.
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr destination, const void* source, size_t bytes, CUstream stream)
{
    LOCKED;
    CHECK(check_context());
    CHECK(injected_failure("cuMemcpyHtoDAsync"));
    CHECK(check_stream(stream));
    CHECK(check_device_range(destination, bytes, "cuMemcpyHtoDAsync destination"));
    if (bytes > 0 && source == nullptr) return report(CUDA_ERROR_INVALID_VALUE, "cuMemcpyHtoDAsync: null source");
    int status = CUDA_SUCCESS;
    bool queued = pinned(source, bytes, &status) != nullptr;
    CHECK(status);
    htod_bytes[1] += bytes;
    auto copy = [destination, source, bytes]() {
        std::memcpy(reinterpret_cast<void*>(destination), source, bytes);
        return CUDA_SUCCESS;
    };
    if (queued) return submit(stream, "cuMemcpyHtoDAsync", copy);
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(source),
                                                                static_cast<const unsigned char*>(source) + bytes);
    return submit(stream, "cuMemcpyHtoDAsync (pageable)", [destination, staged]() {
        std::memcpy(reinterpret_cast<void*>(destination), staged->data(), staged->size());
        return CUDA_SUCCESS;
    });
}

EXPORT CUresult cuMemcpyDtoHAsync_v2(void* destination, CUdeviceptr source, size_t bytes, CUstream stream)
{
    LOCKED;
    CHECK(check_context());
    CHECK(injected_failure("cuMemcpyDtoHAsync"));
    CHECK(check_stream(stream));
    CHECK(check_device_range(source, bytes, "cuMemcpyDtoHAsync source"));
    if (bytes > 0 && destination == nullptr) return report(CUDA_ERROR_INVALID_VALUE, "cuMemcpyDtoHAsync: null destination");
    int status = CUDA_SUCCESS;
    bool queued = pinned(destination, bytes, &status) != nullptr;
    CHECK(status);
    auto copy = [destination, source, bytes]() {
        std::memcpy(destination, reinterpret_cast<const void*>(source), bytes);
        return CUDA_SUCCESS;
    };
    // To pageable memory the call returns only once the copy has run.
    CHECK(submit(stream, queued ? "cuMemcpyDtoHAsync" : "cuMemcpyDtoHAsync (pageable)", copy));
    return queued ? CUDA_SUCCESS : run_through(last_submitted());
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr destination, unsigned char value, size_t count)
{
    LOCKED;
    CHECK(check_context());
    CHECK(synchronize_stream(nullptr));
    CHECK(check_device_range(destination, count, "cuMemsetD8"));
    std::memset(reinterpret_cast<void*>(destination), value, count);
    return CUDA_SUCCESS;
}

static void fill32(CUdeviceptr destination, unsigned int value, size_t count)
{
    unsigned char* out = reinterpret_cast<unsigned char*>(destination);
    for (size_t k = 0; k < count; k++) std::memcpy(out + 4 * k, &value, 4);
}

EXPORT CUresult cuMemsetD32_v2(CUdeviceptr destination, unsigned int value, size_t count)
{
    LOCKED;
    CHECK(check_context());
    CHECK(synchronize_stream(nullptr));
    if (destination % 4 != 0) return report(CUDA_ERROR_INVALID_VALUE, "cuMemsetD32: 0x%llx is not 4-byte aligned", destination);
    CHECK(check_device_range(destination, count * 4, "cuMemsetD32"));
    fill32(destination, value, count);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemsetD32Async(CUdeviceptr destination, unsigned int value, size_t count, CUstream stream)
{
    LOCKED;
    CHECK(check_context());
    CHECK(injected_failure("cuMemsetD32Async"));
    if (destination % 4 != 0) return report(CUDA_ERROR_INVALID_VALUE, "cuMemsetD32Async: 0x%llx is not 4-byte aligned", destination);
    CHECK(check_device_range(destination, count * 4, "cuMemsetD32Async"));
    return submit(stream, "cuMemsetD32Async", [=]() {
        fill32(destination, value, count);
        return CUDA_SUCCESS;
    });
}

namespace {

// The byte size of a PTX .param declaration such as ".param .u64 name" or
// ".param .align 8 .b8 name[16]"; 0 when the emulator does not understand it.
size_t param_size(const std::string& declaration)
{
    size_t bracket = declaration.find('[');
    if (bracket != std::string::npos) return std::strtoul(declaration.c_str() + bracket + 1, nullptr, 10);
    for (const char* type : {".u64", ".s64", ".b64", ".f64"}) if (declaration.find(type) != std::string::npos) return 8;
    for (const char* type : {".u32", ".s32", ".b32", ".f32"}) if (declaration.find(type) != std::string::npos) return 4;
    for (const char* type : {".u16", ".s16", ".b16", ".f16"}) if (declaration.find(type) != std::string::npos) return 2;
    for (const char* type : {".u8", ".s8", ".b8"}) if (declaration.find(type) != std::string::npos) return 1;
    return 0;
}

// Reads the PTX text: the ISA version and target a CUDA 12.0 driver on an sm_75 device accepts,
// and every .entry with its parameters, each of which must have a host implementation taking
// parameters of the same sizes (a C++ int where the PTX says .u64 would read garbage on a GPU).
int load_module(CUmodule* module, const void* image, std::string* log)
{
    CHECK_OR_RETURN(check_context());
    CHECK_OR_RETURN(injected_failure("cuModuleLoadData"));
    if (module == nullptr || image == nullptr) return report(CUDA_ERROR_INVALID_VALUE, "cuModuleLoadData: null argument");
    std::string ptx(static_cast<const char*>(image));
    int major = 0, minor = 0, target = 0;
    size_t at = ptx.find("\n.version ");
    if (ptx.rfind(".version ", 0) == 0) at = 0; else if (at != std::string::npos) at++;
    auto fail = [log](int code, const std::string& message) {
        *log = message;
        return report(code, "%s", message.c_str());
    };
    if (at == std::string::npos || std::sscanf(ptx.c_str() + at, ".version %d.%d", &major, &minor) != 2) {
        return fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the image is not PTX text (no .version line)");
    }
    char line[256];
    if (major > MAX_PTX_MAJOR || (major == MAX_PTX_MAJOR && minor > MAX_PTX_MINOR)) {
        std::snprintf(line, sizeof line, "PTX ISA %d.%d is newer than the %d.%d a CUDA 12.0 driver loads", major, minor,
                      MAX_PTX_MAJOR, MAX_PTX_MINOR);
        return fail(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, line);
    }
    size_t target_at = ptx.find(".target sm_");
    if (target_at == std::string::npos || std::sscanf(ptx.c_str() + target_at, ".target sm_%d", &target) != 1) {
        return fail(CUDA_ERROR_INVALID_PTX, "PTX has no .target sm_NN line");
    }
    if (target > SM) {
        std::snprintf(line, sizeof line, "PTX targets sm_%d, the emulated device is sm_%d", target, SM);
        return fail(CUDA_ERROR_NO_BINARY_FOR_GPU, line);
    }
    CUmodule loaded = new CUmod_st{current, {}};
    for (size_t pos = ptx.find(".entry "); pos != std::string::npos; pos = ptx.find(".entry ", pos + 1)) {
        size_t name_start = pos + 7;
        size_t name_end = ptx.find_first_of("( \t\n", name_start);
        std::string name = ptx.substr(name_start, name_end - name_start);
        size_t open = ptx.find('(', name_end), close = ptx.find(')', name_end);
        std::vector<size_t> sizes;
        for (size_t p = ptx.find(".param", open); open != std::string::npos && p < close; p = ptx.find(".param", p + 1)) {
            size_t end = std::min(ptx.find_first_of(",)", p), close);
            sizes.push_back(param_size(ptx.substr(p, end - p)));
        }
        const KernelInfo* kernel = find_kernel(name);
        std::string problem;
        if (kernel == nullptr) {
            problem = "PTX kernel " + name + " has no host implementation in the emulator "
                      "(rebuild native/ from the same cuda/*.cu as the PTX)";
        } else if (kernel->param_sizes.size() != sizes.size()) {
            problem = "PTX kernel " + name + " takes " + std::to_string(sizes.size()) + " parameters, the emulator's cuda/"
                      + name + ".cu takes " + std::to_string(kernel->param_sizes.size())
                      + ": the PTX and native/build come from different sources";
        } else {
            for (size_t k = 0; k < sizes.size() && problem.empty(); k++) {
                if (sizes[k] != kernel->param_sizes[k]) {
                    problem = "PTX kernel " + name + " parameter " + std::to_string(k) + " is " + std::to_string(sizes[k])
                              + " bytes, the emulator's C++ signature has " + std::to_string(kernel->param_sizes[k]);
                }
            }
        }
        if (!problem.empty()) {
            for (auto& f : loaded->functions) delete f.second;
            delete loaded;
            return fail(kernel == nullptr ? CUDA_ERROR_NOT_SUPPORTED : CUDA_ERROR_INVALID_PTX, problem);
        }
        loaded->functions[name] = new CUfunc_st{kernel, loaded};
    }
    if (loaded->functions.empty()) {
        delete loaded;
        return fail(CUDA_ERROR_INVALID_PTX, "PTX has no .entry kernels");
    }
    for (auto& f : loaded->functions) functions.insert(f.second);
    modules.insert(loaded);
    *module = loaded;
    return CUDA_SUCCESS;
}

}  // namespace

EXPORT CUresult cuModuleLoadData(CUmodule* module, const void* image)
{
    LOCKED;
    std::string log;
    return load_module(module, image, &log);
}

// The JIT options fedlora passes: an error log buffer and its size, which a real driver fills
// with ptxas' complaint; the emulator writes its own refusal there.
EXPORT CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int count, int* options, void** values)
{
    LOCKED;
    std::string log;
    int status = load_module(module, image, &log);
    char* buffer = nullptr;
    size_t size = 0;
    for (unsigned int k = 0; k < count && options != nullptr && values != nullptr; k++) {
        if (options[k] == CU_JIT_ERROR_LOG_BUFFER) buffer = static_cast<char*>(values[k]);
        if (options[k] == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES) size = reinterpret_cast<uintptr_t>(values[k]);
    }
    if (buffer != nullptr && size > 0) {
        std::snprintf(buffer, size, "%s", log.c_str());
    }
    return status;
}

EXPORT CUresult cuModuleUnload(CUmodule module)
{
    LOCKED;
    if (modules.count(module) == 0) return report(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: not a loaded module");
    flush();
    for (auto& f : module->functions) { functions.erase(f.second); delete f.second; }
    modules.erase(module);
    delete module;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name)
{
    LOCKED;
    CHECK(check_context());
    if (function == nullptr || name == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (modules.count(module) == 0) return report(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: not a loaded module");
    auto it = module->functions.find(name);
    if (it == module->functions.end()) return report(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: no kernel %s in the module", name);
    *function = it->second;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(CUfunction function, unsigned int gridX, unsigned int gridY, unsigned int gridZ,
                               unsigned int blockX, unsigned int blockY, unsigned int blockZ,
                               unsigned int sharedMemBytes, CUstream stream, void** kernelParams, void** extra)
{
    LOCKED;
    CHECK(check_context());
    CHECK(injected_failure("cuLaunchKernel"));
    if (functions.count(function) == 0) return report(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: not a function of a loaded module");
    const char* name = function->kernel->name;
    if (gridX == 0 || gridY == 0 || gridZ == 0 || blockX == 0 || blockY == 0 || blockZ == 0 || gridY > 65535 || gridZ > 65535
        || gridX > 2147483647u || blockX > 1024 || blockY > 1024 || blockZ > 64
        || static_cast<unsigned long long>(blockX) * blockY * blockZ > 1024) {
        return report(CUDA_ERROR_INVALID_VALUE, "%s: invalid launch geometry grid (%u, %u, %u) block (%u, %u, %u)", name,
                      gridX, gridY, gridZ, blockX, blockY, blockZ);
    }
    if (sharedMemBytes != 0) return report(CUDA_ERROR_NOT_SUPPORTED, "%s: dynamic shared memory is not emulated", name);
    if (extra != nullptr) return report(CUDA_ERROR_NOT_SUPPORTED, "%s: the 'extra' launch parameters are not emulated", name);
    CHECK(check_stream(stream));
    Launch geometry{name, {gridX, gridY, gridZ}, {blockX, blockY, blockZ}, stream};
    return function->kernel->launch(geometry, kernelParams);
}

EXPORT CUresult cuStreamCreate(CUstream* stream, unsigned int flags)
{
    LOCKED;
    CHECK(check_context());
    CHECK(injected_failure("cuStreamCreate"));
    if (stream == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (flags > 1) return report(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: flags %u (0 or CU_STREAM_NON_BLOCKING)", flags);
    *stream = new CUstream_st{current, flags == 0, next_random()};
    streams.insert(*stream);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamDestroy_v2(CUstream stream)
{
    LOCKED;
    if (streams.count(stream) == 0) return report(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: not a live stream");
    // The driver lets queued work finish after the call returns; its results stay ordered.
    run_until({tails[StreamKey{stream->context, stream}]});
    tails.erase(StreamKey{stream->context, stream});
    streams.erase(stream);
    delete stream;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamSynchronize(CUstream stream)
{
    LOCKED;
    CHECK(check_context());
    CHECK(check_stream(stream));
    return synchronize_stream(stream);
}

// Work queued on the stream after this call runs only after the work the event's last record
// captured (an event never recorded: no wait).
EXPORT CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int flags)
{
    LOCKED;
    CHECK(check_context());
    CHECK(check_stream(stream));
    CHECK(check_event(event));
    if (flags != 0) return report(CUDA_ERROR_INVALID_VALUE, "cuStreamWaitEvent: flags must be 0");
    CHECK(injected_failure("cuStreamWaitEvent"));
    return submit_after(stream, "cuStreamWaitEvent", event->recorded, []() { return CUDA_SUCCESS; });
}

EXPORT CUresult cuEventCreate(CUevent* event, unsigned int flags)
{
    LOCKED;
    (void) flags;
    CHECK(check_context());
    CHECK(injected_failure("cuEventCreate"));
    if (event == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *event = new CUevent_st{current, 0};
    events.insert(*event);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventRecord(CUevent event, CUstream stream)
{
    LOCKED;
    CHECK(check_context());
    CHECK(check_event(event));
    CHECK(injected_failure("cuEventRecord"));
    CHECK(submit(stream, "cuEventRecord", []() { return CUDA_SUCCESS; }));
    event->recorded = last_submitted();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventQuery(CUevent event)
{
    LOCKED;
    CHECK(check_context());
    CHECK(check_event(event));
    CHECK(current->sticky);
    return done(event->recorded) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuEventSynchronize(CUevent event)
{
    LOCKED;
    CHECK(check_context());
    CHECK(check_event(event));
    return run_through(event->recorded);
}

EXPORT CUresult cuEventDestroy_v2(CUevent event)
{
    LOCKED;
    CHECK(check_event(event));
    events.erase(event);  // work that records or waits for it keeps its place in the graph
    delete event;
    return CUDA_SUCCESS;
}

}  // extern "C"
