// Token choice over the vocabulary, one block per row.
//
// argmax: the first index of the largest value, NaN never winning (torch.argmax's tie rule and
// `icet_models::backend::argmax_row`; a row of only NaN gives its last index, as that does).
//
// top-p sampling reproduces `icet_models::backend::sample_row` step by step, in f64:
//   p_i = exp((l_i - max) / T)        total = sequential sum of p_i in index order
//   sort by (p desc, index asc)       keep the shortest prefix whose mass (sum of p/total) >= top_p
//   target = u * mass                 choose the first kept token whose running mass > target
// with the same summation orders (one thread does the sequential sums). The only possible
// difference from the CPU is CUDA's `exp(double)` (<= 1 ulp) against the host libm's, which can
// change a choice only when the target falls within ~1e-16 of a boundary.
#include "common.cuh"

using namespace icet;

namespace {

// Does (v2, i2) beat (v1, i1)? A total order: any number beats NaN; larger value; then smaller
// index; among NaNs the larger index (the CPU loop keeps replacing a NaN best).
__device__ __forceinline__ bool beats(float v1, int i1, float v2, int i2) {
    const bool n1 = isnan(v1), n2 = isnan(v2);
    if (n1 || n2) return n1 && n2 ? i2 > i1 : n1;
    if (v2 != v1) return v2 > v1;
    return i2 < i1;
}

constexpr int ARGMAX_THREADS = 512;   // the Rust launcher uses the same block sizes
constexpr int SAMPLE_THREADS = 1024;

template <typename T> __device__ void argmax(int* out, const T* logits, int cols) {
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ int si[ARGMAX_THREADS / 32];
    const T* row = logits + (long long)blockIdx.x * cols;
    float best = __int_as_float(0x7fc00000);
    int bi = -1;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = to_f(row[c]);
        if (beats(best, bi, v, c)) best = v, bi = c;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best, o);
        const int i = __shfl_xor_sync(0xffffffffu, bi, o);
        if (beats(best, bi, v, i)) best = v, bi = i;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sv[warp] = best, si[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (beats(best, bi, sv[w], si[w])) best = sv[w], bi = si[w];
        out[blockIdx.x] = bi < 0 ? 0 : bi;
    }
}

// Does (p1, i1) come before (p2, i2) in the CPU's sort order?
__device__ __forceinline__ bool before(double p1, int i1, double p2, int i2) {
    return p1 > p2 || (p1 == p2 && i1 < i2);
}

// `probs`/`index`: per-row scratch of `n2` entries (the vocabulary size rounded up to a power of
// two); `uniforms[row]` = `uniform_from_seed(seed)` computed on the host.
template <typename T>
__device__ void sample_top_p(int* out, const T* logits, int cols, const double* uniforms, float temperature,
                             float top_p, double* probs, int* index, int n2) {
    __shared__ float scratch[32];
    __shared__ double total_s;
    const T* row = logits + (long long)blockIdx.x * cols;
    double* p = probs + (long long)blockIdx.x * n2;
    int* ix = index + (long long)blockIdx.x * n2;

    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, to_f(row[c]));
    // Block max: warp max, then across warps through shared memory.
    m = warp_max(m);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = m;
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) m = fmaxf(m, scratch[w]);

    const double max = (double)m, inv_t = 1.0 / (double)temperature;
    for (int c = threadIdx.x; c < n2; c += blockDim.x) {
        if (c < cols) {
            p[c] = exp(((double)to_f(row[c]) - max) * inv_t);
            ix[c] = c;
        } else {
            p[c] = -1.0;  // padding sorts after every real token
            ix[c] = 0x7fffffff;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int c = 0; c < cols; ++c) total += p[c];
        total_s = total;
    }
    // Bitonic sort of (p, index) into "before" order, in global scratch (one block per row, so
    // __syncthreads orders every step).
    for (int k = 2; k <= n2; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            __syncthreads();
            for (int i = threadIdx.x; i < n2; i += blockDim.x) {
                const int l = i ^ j;
                if (l > i) {
                    const bool ascending = (i & k) == 0;
                    const double pi = p[i], pl = p[l];
                    const int ii = ix[i], il = ix[l];
                    const bool swap = ascending ? before(pl, il, pi, ii) : before(pi, ii, pl, il);
                    if (swap) {
                        p[i] = pl, p[l] = pi;
                        ix[i] = il, ix[l] = ii;
                    }
                }
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const double total = total_s;
        int kept = 0;
        double mass = 0.0;
        while (kept < cols) {
            mass += p[kept] / total;
            ++kept;
            if (mass >= (double)top_p) break;
        }
        const double target = uniforms[blockIdx.x] * mass;
        double acc = 0.0;
        int chosen = ix[kept - 1];
        for (int k = 0; k < kept; ++k) {
            acc += p[k] / total;
            if (acc > target) {
                chosen = ix[k];
                break;
            }
        }
        out[blockIdx.x] = chosen;
    }
}

}  // namespace

#define ICET_SAMPLING(sfx, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_##sfx(int* out, const T* logits, \
                                                                              int cols) {            \
        argmax(out, logits, cols);                                                                    \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_top_p_##sfx(int* out, const T* logits, int cols, const double* u, \
                                                  float temperature, float top_p, double* probs,     \
                                                  int* index, int n2) {                               \
        sample_top_p(out, logits, cols, u, temperature, top_p, probs, index, n2);                     \
    }
ICET_FOR_DTYPES(ICET_SAMPLING)
