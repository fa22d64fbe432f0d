// Element-wise kernels: the residual add, activations (transformers' ACT2FN names), the SwiGLU
// gate, rotary position embedding and dtype casts. All compute in f32 and round once on store.
#include "common.cuh"

using namespace icet;

namespace {

// Activation codes shared with the Rust launcher (`icet_kernels::Act`).
constexpr int ACT_QUICK_GELU = 0;  // CLIP: x * sigmoid(1.702 x)
constexpr int ACT_GELU_ERF = 1;    // transformers `gelu`: 0.5 x (1 + erf(x / sqrt 2))
constexpr int ACT_SILU = 2;        // x * sigmoid(x)
constexpr int ACT_GELU_TANH = 3;   // transformers `gelu_new`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
constexpr int ACT_TANH = 4;

__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
        case ACT_QUICK_GELU: return x / (1.f + expf(-1.702f * x));
        case ACT_GELU_ERF: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
        case ACT_SILU: return silu(x);
        case ACT_GELU_TANH: return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        case ACT_TANH: return tanhf(x);
        default: return __int_as_float(0x7fc00000);  // unknown code: NaN, caught by every test
    }
}

template <typename T> __device__ void add_assign(T* a, const T* b, long long n) {
    ICET_GRID_LOOP(i, n) a[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

template <typename T> __device__ void activation(T* x, long long n, int act) {
    ICET_GRID_LOOP(i, n) x[i] = from_f<T>(activate(to_f(x[i]), act));
}

template <typename T> __device__ void silu_mul(T* out, const T* gate, const T* up, long long n) {
    ICET_GRID_LOOP(i, n) out[i] = from_f<T>(silu(to_f(gate[i])) * to_f(up[i]));
}

// Rotary embedding, rotate-half layout (transformers `apply_rotary_pos_emb`): for each head,
// (x1, x2) = halves; x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, with angle = pos * inv_freq[i]
// computed in f32 like transformers. cosf/sinf (not the fast intrinsics: positions reach
// thousands of radians, where __cosf has no accuracy left).
template <typename T>
__device__ void rotary(T* x, const int* positions, const float* inv_freq, long long rows, int heads, int head_dim) {
    const int half = head_dim / 2;
    const long long pairs = rows * heads * half;
    ICET_GRID_LOOP(p, pairs) {
        const long long r = p / ((long long)heads * half);
        const int rem = (int)(p % ((long long)heads * half));
        const int h = rem / half, i = rem % half;
        const float angle = (float)positions[r] * inv_freq[i];
        float s, c;
        sincosf(angle, &s, &c);
        T* head = x + r * heads * head_dim + (long long)h * head_dim;
        const float a = to_f(head[i]), b = to_f(head[i + half]);
        head[i] = from_f<T>(a * c - b * s);
        head[i + half] = from_f<T>(b * c + a * s);
    }
}

template <typename S, typename D> __device__ void cast(D* out, const S* in, long long n) {
    ICET_GRID_LOOP(i, n) out[i] = from_f<D>(to_f(in[i]));
}

}  // namespace

#define ICET_POINTWISE(sfx, T)                                                                      \
    extern "C" __global__ void add_assign_##sfx(T* a, const T* b, long long n) { add_assign(a, b, n); } \
    extern "C" __global__ void activation_##sfx(T* x, long long n, int act) { activation(x, n, act); } \
    extern "C" __global__ void silu_mul_##sfx(T* out, const T* g, const T* u, long long n) {        \
        silu_mul(out, g, u, n);                                                                     \
    }                                                                                               \
    extern "C" __global__ void rotary_##sfx(T* x, const int* pos, const float* inv_freq, long long rows, \
                                            int heads, int head_dim) {                              \
        rotary(x, pos, inv_freq, rows, heads, head_dim);                                            \
    }
ICET_FOR_DTYPES(ICET_POINTWISE)

extern "C" __global__ void cast_f32_to_bf16(__nv_bfloat16* o, const float* i, long long n) { cast(o, i, n); }
extern "C" __global__ void cast_f32_to_f16(__half* o, const float* i, long long n) { cast(o, i, n); }
extern "C" __global__ void cast_bf16_to_f32(float* o, const __nv_bfloat16* i, long long n) { cast(o, i, n); }
extern "C" __global__ void cast_f16_to_f32(float* o, const __half* i, long long n) { cast(o, i, n); }
