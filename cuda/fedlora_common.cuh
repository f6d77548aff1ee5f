// Helpers shared by the fedlora kernels. Included by every cuda/fedlora_*.cu; compiled by nvcc
// for the device and, through native/shim/cuda_shim.h, by g++ for the device emulator, so it
// uses only what both understand (no cuda_fp16.h, no warp intrinsics).
#ifndef FEDLORA_COMMON_CUH
#define FEDLORA_COMMON_CUH

// Element types of a source view. Must match io.fedlora.kernels.cuda.DTypeCode (F32, BF16, F16),
// which the backend passes as the kernels' dtype argument (DTypeCodeTest compares the two).
#define FEDLORA_F32 0
#define FEDLORA_BF16 1
#define FEDLORA_F16 2

// bfloat16 is the top half of a float32 (DType.bf16ToFloat).
static __device__ __forceinline__ float fedlora_bf16_to_f32(unsigned int bits)
{
    return __uint_as_float(bits << 16);
}

// Bit for bit what Java's Float.float16ToFloat returns, NaN payloads included; written with
// integer operations instead of cvt.f32.f16 so that the emulator runs the same code.
static __device__ __forceinline__ float fedlora_f16_to_f32(unsigned int bits)
{
    unsigned int sign = (bits & 0x8000u) << 16;
    unsigned int exponent = (bits >> 10) & 0x1fu;
    unsigned int significand = bits & 0x3ffu;
    if (exponent == 0) {
        // Zero or subnormal: significand * 2^-24 is exact in float32.
        float magnitude = (float) significand * __uint_as_float(0x33800000u);
        return __uint_as_float(__float_as_uint(magnitude) | sign);
    }
    if (exponent == 0x1fu) {
        return __uint_as_float(sign | 0x7f800000u | (significand << 13));
    }
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (significand << 13));
}

// Element `index` of a little-endian array of `dtype`, converted to float32 (DType.get).
static __device__ __forceinline__ float fedlora_load(const void* data, int dtype, long long index)
{
    if (dtype == FEDLORA_F32) {
        return ((const float*) data)[index];
    }
    unsigned int bits = ((const unsigned short*) data)[index];
    return dtype == FEDLORA_BF16 ? fedlora_bf16_to_f32(bits) : fedlora_f16_to_f32(bits);
}

// False for NaN and both infinities (Float.isFinite).
static __device__ __forceinline__ bool fedlora_is_finite(float value)
{
    return (__float_as_uint(value) & 0x7f800000u) != 0x7f800000u;
}

// Every kernel walks a rows x cols tile with a 2D grid-stride loop: x runs along a row so that
// neighbouring threads touch neighbouring addresses, and any grid covers any tile (CudaDevice
// caps the grid; the loop picks up the rest).
#define FEDLORA_FOR_EACH_CELL(i, j, rows, cols)                                                  \
    for (int i = blockIdx.y * blockDim.y + threadIdx.y; i < (rows); i += gridDim.y * blockDim.y) \
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < (cols); j += gridDim.x * blockDim.x)

#endif
