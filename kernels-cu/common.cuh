// Shared helpers for every kernel file: f32 <-> storage-type conversion, warp and block
// reductions, and the macro that instantiates a template once per storage dtype with a C name.
//
// Storage dtypes: f32 (`float`), bf16 (`__nv_bfloat16`), f16 (`__half`). Every kernel computes
// in f32 and rounds once when it stores, so a bf16 run differs from the f32 reference only by the
// roundings transformers' own bf16 run also makes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace icet {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

/// Rounds `v` to the storage type and back: what a value looks like after being stored.
template <typename T> __device__ __forceinline__ float round_to(float v) { return to_f<T>(from_f<T>(v)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    // Lanes may differ in the last bit (each adds in its own order); take lane 0's value so that
    // every lane continues with the same number.
    return __shfl_sync(0xffffffffu, v, 0);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
/// result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // the previous use of `scratch` is finished
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < warps ? scratch[lane] : 0.f;
        t = warp_sum(t);
        if (lane == 0) scratch[0] = t;
    }
    __syncthreads();
    return scratch[0];
}

/// Grid-stride loop over `n` elements with 64-bit indices.
#define ICET_GRID_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

}  // namespace icet

/// `ICET_FOR_DTYPES(M)` expands `M(suffix, type)` for the three storage dtypes; each kernel file
/// uses it to emit `extern "C"` entry points named `<kernel>_<suffix>` that the Rust launchers
/// in crates/kernels look up by name.
#define ICET_FOR_DTYPES(M) M(f32, float) M(bf16, __nv_bfloat16) M(f16, __half)
