// LayerNorm and RMSNorm over the last axis, one block per row, optionally fused with the
// residual add that precedes them in a pre-norm transformer block:
//     x += delta  (stored, rounded to the storage type, as the unfused add would)
//     out = norm(x)
// Statistics are f32, two passes (mean, then centred variance) like torch's CPU kernel, so the
// f32 result agrees with the CPU reference to ~1e-6.
#include "common.cuh"

using namespace icet;

namespace {

constexpr int NORM_THREADS = 256;  // the Rust launcher uses the same block size

template <typename T, bool ADD>
__device__ void layer_norm(T* out, T* x, const T* delta, const T* w, const T* b, int cols, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    T* xr = x + row * cols;
    const T* dr = ADD ? delta + row * cols : nullptr;
    T* orow = out + row * cols;
    float sum = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f(xr[c]);
        if (ADD) {
            v = round_to<T>(v + to_f(dr[c]));
            xr[c] = from_f<T>(v);
        }
        sum += v;
    }
    const float mean = block_sum(sum, scratch) / cols;
    float sq = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = to_f(xr[c]) - mean;
        sq += d * d;
    }
    const float inv = 1.f / sqrtf(block_sum(sq, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        orow[c] = from_f<T>((to_f(xr[c]) - mean) * inv * to_f(w[c]) + to_f(b[c]));
}

// transformers `LlamaRMSNorm`: weight * (x * rsqrt(mean(x^2) + eps)).
template <typename T, bool ADD>
__device__ void rms_norm(T* out, T* x, const T* delta, const T* w, int cols, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    T* xr = x + row * cols;
    const T* dr = ADD ? delta + row * cols : nullptr;
    T* orow = out + row * cols;
    float sq = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f(xr[c]);
        if (ADD) {
            v = round_to<T>(v + to_f(dr[c]));
            xr[c] = from_f<T>(v);
        }
        sq += v * v;
    }
    const float inv = 1.f / sqrtf(block_sum(sq, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) orow[c] = from_f<T>(to_f(w[c]) * (to_f(xr[c]) * inv));
}

}  // namespace

#define ICET_NORMS(sfx, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                          \
        layer_norm_##sfx(T* out, const T* x, const T* w, const T* b, int cols, float eps) {            \
        layer_norm<T, false>(out, const_cast<T*>(x), nullptr, w, b, cols, eps);                         \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                          \
        add_layer_norm_##sfx(T* out, T* x, const T* delta, const T* w, const T* b, int cols, float eps) { \
        layer_norm<T, true>(out, x, delta, w, b, cols, eps);                                            \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                          \
        rms_norm_##sfx(T* out, const T* x, const T* w, int cols, float eps) {                           \
        rms_norm<T, false>(out, const_cast<T*>(x), nullptr, w, cols, eps);                              \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                          \
        add_rms_norm_##sfx(T* out, T* x, const T* delta, const T* w, int cols, float eps) {             \
        rms_norm<T, true>(out, x, delta, w, cols, eps);                                                 \
    }
ICET_FOR_DTYPES(ICET_NORMS)
