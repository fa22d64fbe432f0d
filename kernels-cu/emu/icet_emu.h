// icet_emu.h — the CUDA C++ that kernels-cu/*.cu use, for g++ on the CPU (the emulated device).
//
// Every kernel file compiles unchanged against this header (build.rs includes it before the
// .cu file; <cuda_bf16.h>, <cuda_fp16.h> and <mma.h> in this directory include it too). What a
// kernel may use is exactly what is declared here: anything else — atomics, __ldg, cooperative
// groups, inline PTX, bf16 arithmetic operators, `__constant__` — is a compile error, never a
// silent no-op. The execution model (runtime.cpp):
//
//   * one CUDA thread = one fiber with its own small stack; one OS worker runs one block's
//     fibers at a time, so `__shared__` (= `thread_local`) is shared by the threads of a block
//     and private to it; several workers run different blocks in parallel;
//   * `__syncthreads` is a checked block barrier (every live thread at the same call site, none
//     exited); warp operations (`__shfl*_sync`, `__syncwarp`, `__ballot_sync`, every
//     `wmma::*_sync`) are checked warp collectives: the lanes of the mask must meet at the same
//     call site with the same mask and warp-uniform arguments, otherwise the launch fails naming
//     both call sites (divergence), and a collective some lane never reaches is a deadlock report;
//   * a schedule (round-robin, greedy, reverse, …) decides which runnable thread runs next; all
//     are legal under CUDA's independent thread scheduling, and different ones expose different
//     missing barriers;
//   * the thread's identity is found from its stack pointer (stacks are aligned regions), so
//     `threadIdx` costs a mask, not a thread-local lookup.
//
// Not modelled: memory ordering between threads (fibers are sequentially consistent; this is no
// race detector), timing, nvcc's code generation (FMA contraction, fast-math choices), the
// hardware's wmma fragment layout (the emulator's own layout is used; kernels must not depend on
// it, and the project's only use load/mma/store/fill).
#pragma once
#define ICET_EMU 1

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>
#include <utility>

// ---- CUDA keywords -------------------------------------------------------------------------------
#ifdef ICET_EMU_SCAN
// build.rs preprocesses each kernel file once with these markers to find its kernels (the names
// after `__global__`), their `__launch_bounds__` and the name of its `extern __shared__` array.
#define __global__ __icet_emu_global__
#define __launch_bounds__(...) __icet_emu_launch_bounds__(__VA_ARGS__)
#define __shared__ __icet_emu_shared__
#else
#define __global__
#define __launch_bounds__(...)
#define __shared__ thread_local
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define warpSize 32

// ---- vector types --------------------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
// may_alias: kernels reinterpret storage-type arrays as 16-byte vectors (as CUDA allows).
struct __attribute__((aligned(16), may_alias)) uint4 {
    unsigned int x, y, z, w;
};
struct __attribute__((aligned(16), may_alias)) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(16), may_alias)) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8), may_alias)) uint2 {
    unsigned int x, y;
};
struct __attribute__((aligned(8), may_alias)) float2 {
    float x, y;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
inline int4 make_int4(int a, int b, int c, int d) { return int4{a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }

// ---- math: CUDA's global overloads and intrinsics --------------------------------------------------
// (expf, exp2f, erff, tanhf, sincosf, sqrtf, fmaxf, exp, isnan, … are the host libm's: within 1–2 ulp
// of CUDA's, which the tests' tolerances cover.)
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
inline unsigned __float_as_uint(float f) {
    unsigned i;
    memcpy(&i, &f, 4);
    return i;
}
inline float __uint_as_float(unsigned i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, 8);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long i;
    memcpy(&i, &d, 8);
    return i;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }

// ---- bf16 / f16 storage types (conversions only; arithmetic operators are not provided) ----------
struct __nv_bfloat16 {
    uint16_t __x;
};
struct __half {
    uint16_t __x;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __half half;
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((uint32_t)h.__x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x40u)};  // NaN stays (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                                            // round to nearest even
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __half2float(__half h) {
    const uint32_t x = h.__x, sign = (x & 0x8000u) << 16, exp = (x >> 10) & 0x1fu, mant = x & 0x3ffu;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (mant << 13));  // inf, NaN
    if (exp == 0) {                                                              // zero, subnormal
        const float v = (float)mant * 5.9604644775390625e-8f;                   // mant * 2^-24, exact
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112) << 23) | (mant << 13));
}
// Round to nearest even, overflow to infinity, subnormals kept (what __float2half_rn does).
inline __half __float2half_rn(float f) {
    uint32_t x = __float_as_uint(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u)  // inf, NaN (stays a quiet NaN)
        return __half{(uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u | ((x >> 13) & 0x3ffu) : 0x7c00u))};
    if (x >= 0x477ff000u) return __half{(uint16_t)(sign | 0x7c00u)};  // >= 65520 rounds to inf
    if (x < 0x38800000u) {                                             // below 2^-14: subnormal or zero
        if (x < 0x33000000u) return __half{sign};                       // < 2^-25 (a tie at 2^-25 goes to 0)
        const uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int)e;  // 14..24
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) ++q;
        return __half{(uint16_t)(sign | q)};
    }
    const uint32_t r = x - 0x38000000u;  // rebias 127 -> 15
    uint32_t q = r >> 13;
    const uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1))) ++q;  // a carry rounds into the exponent
    return __half{(uint16_t)(sign | q)};
}
inline __half __float2half(float f) { return __float2half_rn(f); }

// ---- the runtime's view of threads, warps and blocks ------------------------------------------------
namespace icet_emu {

enum class St : uint8_t { Runnable, Barrier, WarpWait, Done };

// One warp collective call: every lane of `mask` makes its own, and the last to arrive checks
// that they agree (same operation, call site, mask and warp-uniform arguments), then runs `op`
// for all of them.
struct Warp;
using CollOp = void (*)(Warp& w, unsigned mask);
struct Coll {
    const char* what;
    const char* file;
    int line;
    unsigned mask;
    CollOp op;
    uint64_t key;  // op-specific arguments that must be warp-uniform (pointer, ldm, layout)
};

// A warp's meeting place: each arriving lane records its call here (contiguous, so the last lane
// checks and serves all 32 without touching their stacks), and shuffles exchange values here.
struct Warp {
    unsigned existing = 0;  // lanes this warp has (a partial last warp has fewer than 32)
    unsigned arrived = 0;   // lanes parked in a collective
    Coll* args[32] = {};
    const char* what[32] = {};
    const char* file[32] = {};
    int line[32] = {};
    unsigned mask[32] = {};
    uint64_t key[32] = {};
    uint64_t val[32] = {};  // shuffle/vote input of each lane
    uint64_t out[32] = {};  // and its result
    int src[32] = {};       // the lane each lane reads
};

struct Block;
// A fiber's header lives at the top of its stack region (runtime.cpp).
struct Fiber {
    uint3 tid;
    Warp* warp_of;     // its warp's meeting place
    const uint3* bid;  // its block's blockIdx, blockDim, gridDim
    const dim3* bdim;
    const dim3* gdim;
    int lin, lane, warp;
    Block* block;
    St st;
    bool dirty;  // abandoned mid-kernel by a failed launch (its stack shadow needs resetting under ASan)
    void* sp;    // saved stack pointer while switched out
    const char* bar_file;
    int bar_line;
    Coll* coll;
    void* fake_stack;  // ASan's fake-stack handle while switched out
    char* stack_lo;
    size_t stack_size;
};

// Stack regions are kRegion-aligned with the fiber's header at the top, so the running fiber is
// found from any address in its frame.
#if defined(__SANITIZE_ADDRESS__)
constexpr uintptr_t kRegion = 1u << 20;  // ASan frames are several times larger
#else
constexpr uintptr_t kRegion = 1u << 17;
#endif
constexpr uintptr_t kFiberHeader = 256;
static_assert(sizeof(Fiber) <= kFiberHeader, "Fiber header too large");

inline Fiber* fiber_at(void* region) {
    return reinterpret_cast<Fiber*>(static_cast<char*>(region) + kRegion - kFiberHeader);
}
__attribute__((always_inline)) inline Fiber* self() {
    const uintptr_t frame = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    return reinterpret_cast<Fiber*>((frame & ~(kRegion - 1)) + kRegion - kFiberHeader);
}

// Kernel-side runtime calls (runtime.cpp).
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void syncthreads(const char* file, int line);
void warp_collective(Coll* c);

// ---- warp shuffles and votes -------------------------------------------------------------------------
inline void shfl_op(Warp& w, unsigned mask) {
    for (unsigned m = mask; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        const int src = w.src[l];
        if (!(mask >> src & 1))
            fail("%s (%s:%d): lane %d reads lane %d, which is not in the mask %#x", w.what[l], w.file[l], w.line[l], l,
                 src, mask);
        w.out[l] = w.val[src];
    }
}
template <class T> inline T shfl(const char* what, unsigned mask, T var, int src, const char* file, int line) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    Fiber* f = self();
    Warp& w = *f->warp_of;
    uint64_t in = 0;
    memcpy(&in, &var, sizeof(T));
    w.val[f->lane] = in;
    w.src[f->lane] = src;
    Coll a{what, file, line, mask, shfl_op, 0};
    warp_collective(&a);
    T r;
    const uint64_t out = w.out[f->lane];
    memcpy(&r, &out, sizeof(T));
    return r;
}
inline void width_check(const char* what, int width, const char* file, int line) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s (%s:%d): width %d is not a power of two in 1..32", what, file, line, width);
}

inline void vote_op(Warp& w, unsigned mask) {
    unsigned b = 0;
    for (unsigned m = mask; m; m &= m - 1)
        if (w.val[__builtin_ctz(m)]) b |= 1u << __builtin_ctz(m);
    for (unsigned m = mask; m; m &= m - 1) w.out[__builtin_ctz(m)] = b;
}
inline unsigned vote(const char* what, unsigned mask, int pred, const char* file, int line) {
    Fiber* f = self();
    Warp& w = *f->warp_of;
    w.val[f->lane] = pred != 0;
    Coll a{what, file, line, mask, vote_op, 0};
    warp_collective(&a);
    return (unsigned)w.out[f->lane];
}

}  // namespace icet_emu

#define threadIdx (::icet_emu::self()->tid)
#define blockIdx (*::icet_emu::self()->bid)
#define blockDim (*::icet_emu::self()->bdim)
#define gridDim (*::icet_emu::self()->gdim)

#define __syncthreads() ::icet_emu::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    icet_emu::Coll a{"__syncwarp", file, line, mask, [](icet_emu::Warp&, unsigned) {}, 0};
    icet_emu::warp_collective(&a);
}
// Every emulated thread sees every other's writes at once (sequentially consistent fibers).
inline void __threadfence_block() {}
inline void __threadfence() {}

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    icet_emu::width_check("__shfl_sync", width, file, line);
    const int lane = icet_emu::self()->lane;
    const int src = (lane / width) * width + (srcLane % width + width) % width;
    return icet_emu::shfl("__shfl_sync", mask, var, src, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    icet_emu::width_check("__shfl_xor_sync", width, file, line);
    const int lane = icet_emu::self()->lane;
    int src = lane ^ laneMask;
    if (src < 0 || src > 31 || src / width != lane / width) src = lane;
    return icet_emu::shfl("__shfl_xor_sync", mask, var, src, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
    icet_emu::width_check("__shfl_down_sync", width, file, line);
    const int lane = icet_emu::self()->lane;
    int src = lane + (int)delta;
    if (src / width != lane / width) src = lane;
    return icet_emu::shfl("__shfl_down_sync", mask, var, src, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    icet_emu::width_check("__shfl_up_sync", width, file, line);
    const int lane = icet_emu::self()->lane;
    int src = lane - (int)delta;
    if (src < 0 || src / width != lane / width) src = lane;
    return icet_emu::shfl("__shfl_up_sync", mask, var, src, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return icet_emu::vote("__ballot_sync", mask, pred, file, line);
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return icet_emu::vote("__all_sync", mask, pred, file, line) == mask;
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return icet_emu::vote("__any_sync", mask, pred, file, line) != 0;
}

// ---- nvcuda::wmma (m16n16k16; bf16/f16 inputs, f32 accumulator) ----------------------------------------
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "icet-emu: only the m16n16k16 wmma shape is implemented");
    static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                        : (std::is_same<T, __nv_bfloat16>::value ||
                                                           std::is_same<T, __half>::value),
                  "icet-emu: wmma is implemented for bf16/f16 inputs and f32 accumulators");
    static_assert(std::is_same<Use, accumulator>::value == std::is_same<Layout, void>::value,
                  "wmma: matrix_a/matrix_b fragments need a layout, accumulators none");
    static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
    static constexpr int num_elements = rows * cols / 32;
    using element_type = T;
    T x[num_elements];
};

namespace detail {
// Lane l holds elements l * num_elements .. of the row-major tile: the emulator's own layout (the
// API leaves the hardware's unspecified; kernels only load, multiply, store and fill).
template <class Frag> inline void elem_rc(int lane, int i, int& r, int& c) {
    const int e = lane * Frag::num_elements + i;
    r = e / Frag::cols;
    c = e % Frag::cols;
}
template <class T> inline float as_f(T v) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        return __bfloat162float(v);
    else if constexpr (std::is_same<T, __half>::value)
        return __half2float(v);
    else
        return (float)v;
}

struct MemColl : icet_emu::Coll {
    void* frag;
    const void* ptr;
    unsigned ldm;
    bool col;  // column-major memory layout
};

template <class T> inline void check_ptr(const char* what, const T* p, unsigned ldm, const char* file, int line) {
    if ((uintptr_t)p % 32 != 0)
        icet_emu::fail("%s (%s:%d): pointer %p is not 256-bit aligned", what, file, line, (const void*)p);
    if ((ldm * sizeof(T)) % 16 != 0)
        icet_emu::fail("%s (%s:%d): ldm %u is not a multiple of 16 bytes (%zu elements)", what, file, line, ldm,
                       16 / sizeof(T));
}

template <class Frag, class T> inline void load_op(icet_emu::Warp& w, unsigned) {
    for (int l = 0; l < 32; ++l) {
        auto* a = static_cast<MemColl*>(w.args[l]);
        auto* f = static_cast<Frag*>(a->frag);
        const T* p = static_cast<const T*>(a->ptr);
        for (int i = 0; i < Frag::num_elements; ++i) {
            int r, c;
            elem_rc<Frag>(l, i, r, c);
            f->x[i] = a->col ? p[(size_t)c * a->ldm + r] : p[(size_t)r * a->ldm + c];
        }
    }
}
template <class Frag, class T> inline void store_op(icet_emu::Warp& w, unsigned) {
    for (int l = 0; l < 32; ++l) {
        auto* a = static_cast<MemColl*>(w.args[l]);
        const auto* f = static_cast<const Frag*>(a->frag);
        T* p = const_cast<T*>(static_cast<const T*>(a->ptr));
        for (int i = 0; i < Frag::num_elements; ++i) {
            int r, c;
            elem_rc<Frag>(l, i, r, c);
            (a->col ? p[(size_t)c * a->ldm + r] : p[(size_t)r * a->ldm + c]) = f->x[i];
        }
    }
}
inline uint64_t key_of(const void* p, unsigned ldm, bool col) {
    return (uint64_t)(uintptr_t)p * 1000003u ^ ((uint64_t)ldm << 1) ^ (uint64_t)col;
}
template <class F, class T>
inline void mem_collective(const char* what, F& frag, const T* p, unsigned ldm, bool col, icet_emu::CollOp op,
                           const char* file, int line) {
    check_ptr(what, p, ldm, file, line);
    MemColl m;
    m.what = what, m.file = file, m.line = line, m.mask = 0xffffffffu, m.op = op, m.key = key_of(p, ldm, col);
    m.frag = (void*)&frag, m.ptr = p, m.ldm = ldm, m.col = col;
    icet_emu::warp_collective(&m);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& a, const T* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(!std::is_same<Use, accumulator>::value, "wmma: accumulator loads take a layout_t");
    using F = fragment<Use, M, N, K, T, L>;
    detail::mem_collective("wmma::load_matrix_sync", a, p, ldm, std::is_same<L, col_major>::value,
                           detail::load_op<F, T>, file, line);
}
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& a, const T* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using F = fragment<accumulator, M, N, K, T, void>;
    detail::mem_collective("wmma::load_matrix_sync(accumulator)", a, p, ldm, layout == mem_col_major,
                           detail::load_op<F, T>, file, line);
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T, void>& a, unsigned ldm, layout_t layout,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using F = fragment<accumulator, M, N, K, T, void>;
    detail::mem_collective("wmma::store_matrix_sync", const_cast<F&>(a), (const T*)p, ldm, layout == mem_col_major,
                           detail::store_op<F, T>, file, line);
}
template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& a, const V& v) {
    static_assert(std::is_same<T, float>::value, "icet-emu: fill_fragment is implemented for accumulators");
    for (int i = 0; i < fragment<Use, M, N, K, T, L>::num_elements; ++i) a.x[i] = (T)v;
}

namespace detail {
template <class FD, class FA, class FB> struct MmaColl : icet_emu::Coll {
    FD* d;
    const FA* a;
    const FB* b;
    const FD* c;
};
template <class FD, class FA, class FB> inline void mma_op(icet_emu::Warp& w, unsigned) {
    constexpr int M = FA::rows, K = FA::cols, N = FB::cols;
    float A[M][K], B[K][N], C[M][N];
    for (int l = 0; l < 32; ++l) {
        auto* m = static_cast<MmaColl<FD, FA, FB>*>(w.args[l]);
        for (int i = 0; i < FA::num_elements; ++i) {
            int r, c;
            elem_rc<FA>(l, i, r, c);
            A[r][c] = as_f(m->a->x[i]);
        }
        for (int i = 0; i < FB::num_elements; ++i) {
            int r, c;
            elem_rc<FB>(l, i, r, c);
            B[r][c] = as_f(m->b->x[i]);
        }
        for (int i = 0; i < FD::num_elements; ++i) {
            int r, c;
            elem_rc<FD>(l, i, r, c);
            C[r][c] = m->c->x[i];
        }
    }
    // f32 accumulation. A product of two bf16/f16 values is exact in f32, so `acc + a * b`
    // rounds once, exactly as fmaf would (without libm's software fmaf on CPUs lacking FMA).
    float D[M][N];
    for (int r = 0; r < M; ++r) {
        for (int c = 0; c < N; ++c) D[r][c] = C[r][c];
        for (int k = 0; k < K; ++k) {
            const float a = A[r][k];
            for (int c = 0; c < N; ++c) D[r][c] += a * B[k][c];
        }
    }
    for (int l = 0; l < 32; ++l) {
        auto* m = static_cast<MmaColl<FD, FA, FB>*>(w.args[l]);
        for (int i = 0; i < FD::num_elements; ++i) {
            int r, c;
            elem_rc<FD>(l, i, r, c);
            m->d->x[i] = D[r][c];
        }
    }
}
}  // namespace detail

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(std::is_same<TA, TB>::value, "wmma::mma_sync: matrix_a and matrix_b element types differ");
    using FD = fragment<accumulator, M, N, K, TC, void>;
    using FA = fragment<matrix_a, M, N, K, TA, LA>;
    using FB = fragment<matrix_b, M, N, K, TB, LB>;
    detail::MmaColl<FD, FA, FB> m;
    m.what = "wmma::mma_sync", m.file = file, m.line = line, m.mask = 0xffffffffu;
    m.op = detail::mma_op<FD, FA, FB>, m.key = 0;
    m.d = &d, m.a = &a, m.b = &b, m.c = &c;
    icet_emu::warp_collective(&m);
}
}  // namespace wmma
}  // namespace nvcuda

// ---- kernel registration (used by the wrappers build.rs generates) ------------------------------------
namespace icet_emu {

// Parameter kinds, as the Rust launchers declare theirs (crates/kernels/src/device/mod.rs).
template <class A> constexpr char kind_of() {
    using T = std::remove_cv_t<A>;
    if constexpr (std::is_pointer<T>::value)
        return 'p';
    else if constexpr (std::is_same<T, float>::value)
        return 'f';
    else if constexpr (std::is_same<T, double>::value)
        return 'd';
    else if constexpr (std::is_integral<T>::value && sizeof(T) == 4)
        return std::is_signed<T>::value ? 'i' : 'u';
    else if constexpr (std::is_integral<T>::value && sizeof(T) == 8)
        return std::is_signed<T>::value ? 'l' : 'L';
    else {
        static_assert(sizeof(T) == 0, "icet-emu: a kernel parameter type the launchers cannot pass");
        return '?';
    }
}

struct Kernel {
    const char* name;
    const char* file;
    void (*call)(void** args);  // calls the kernel with its parameters read from a cuLaunchKernel array
    const char* kinds;          // one kind letter per parameter
    int params;
    int max_threads;                   // __launch_bounds__, else 1024
    unsigned char* (*dyn_smem)();      // this thread's dynamic shared memory of the kernel's file, or null
};
struct Module {
    const char* file;
    const Kernel* kernels;
    int count;
};

template <class F> struct Sig;
template <class... A> struct Sig<void (*)(A...)> {
    static constexpr int params = sizeof...(A);
    static constexpr char kinds[sizeof...(A) + 1] = {kind_of<A>()..., 0};
    template <auto F, size_t... I> static void call(void** args, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cv_t<A>*>(args[I])...);
    }
};
template <auto F> void call(void** args) {
    using S = Sig<decltype(F)>;
    S::template call<F>(args, std::make_index_sequence<S::params>{});
    (void)args;
}

// The dynamic shared memory a block may use: the largest opt-in of any GPU the kernels target
// (sm_90: 227 KiB), plus a canary zone the runtime checks after every block.
constexpr size_t kDynSmemCap = 227 * 1024;
constexpr size_t kDynSmemCanary = 4096;

}  // namespace icet_emu

// `extern __shared__ T name[];` inside a kernel declares a block-scope extern thread_local that
// binds to this definition in the same (anonymous) namespace — build.rs emits it after the .cu
// file for the name the file uses. (g++ needs -fno-extern-tls-init for the binding.)
#define ICET_EMU_DYNAMIC_SHARED(name)                                                                         \
    namespace {                                                                                               \
    thread_local __attribute__((aligned(256))) unsigned char name[icet_emu::kDynSmemCap + icet_emu::kDynSmemCanary]; \
    unsigned char* icet_emu_dyn_smem() { return name; }                                                       \
    }
#define ICET_EMU_NO_DYNAMIC_SHARED() \
    namespace {                      \
    constexpr unsigned char* (*icet_emu_dyn_smem)() = nullptr; \
    }

#define ICET_EMU_KERNEL(kname, file, bounds)                                                                 \
    icet_emu::Kernel{#kname, file, &icet_emu::call<&kname>, icet_emu::Sig<decltype(&kname)>::kinds,           \
                     icet_emu::Sig<decltype(&kname)>::params, (bounds), icet_emu_dyn_smem},
