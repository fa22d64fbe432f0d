// Scaled dot-product attention: softmax(q k^T * scale) v per head, grouped-query heads sharing
// key/value heads (kv head = head / group). Three entry points:
//
// flash_attention_<bf16|f16>_hd<64|80|128>: FlashAttention-2-style tiles for prefill and the ViT.
//   One block = 64 query rows of one head of one sequence; it walks the keys in tiles of 64,
//   keeping Q, K, V, the score tile S, the probabilities P and the output accumulator O in
//   shared memory. Q K^T and P V run on tensor cores (WMMA 16x16x16, bf16/f16 in, f32 out);
//   the softmax is online (running max m and sum l per row, O rescaled by exp(m_old - m_new)).
//   Sequences are described by `SeqDesc`: packed query rows, where their keys start in the key
//   buffer (the K/V tensors for the ViT, a KV-cache slot for prefill), how many keys there are,
//   and whether attention is causal (query i sees keys 0 ..= n_keys - q_len + i).
//
// attention_rows_<dtype>: one warp-group per (query row, head, key split), plain f32 FMA. Used for
//   decode (one query per sequence, long contexts split along the keys: every split writes a
//   partial (m, l, o) and attention_combine merges them), for f32 (tensor cores would round to
//   tf32/bf16 and break the f32 reference tolerance) and for head dims the flash kernel lacks.
//   Each row has its own (first key row, number of keys), which covers causal masks too.
//
// relative_attention_<dtype>: DeBERTa's disentangled attention, one block per (query row, head),
//   plain f32 FMA like attention_rows (without key splits: its sequences are at most a few hundred
//   tokens). The score of query i and key j of a sequence adds, to q.k, the content->position term
//   q.pos_key[c2p[i - j + center]] and the position->content term k.pos_query[p2c[i - j + center]]
//   (rows of per-head position tables picked by relative position), all times `scale`.
#include <mma.h>

#include "common.cuh"

using namespace icet;
using namespace nvcuda;

namespace {

struct SeqDesc {
    int q_start;  // first packed query row
    int q_len;    // query rows
    int k_base;   // row of key 0 in the key/value buffers
    int n_keys;   // keys visible to the last query
    int causal;   // 1: query i sees keys 0 ..= n_keys - q_len + i; 0: all n_keys
    int pad[3];
};

constexpr float LOG2E = 1.4426950408889634f;

// ---- flash (tensor cores) -------------------------------------------------------------------
constexpr int BM = 64;             // query rows per block (4 warps x 16)
constexpr int BN = 64;             // keys per tile
constexpr int FLASH_THREADS = 128;  // the Rust launcher uses the same block size

// Shared-memory layout (the Rust launcher computes the same byte count in `flash_smem_bytes`).
// Leading dimensions are padded to spread banks; every WMMA pointer stays 32-byte aligned.
template <typename T, int HD> struct FlashSmem {
    static constexpr int LDQ = HD + 8;  // Q, K, V rows (T)
    static constexpr int LDP = BN + 8;  // P rows (T)
    static constexpr int LDS = BN + 4;  // S rows (f32)
    static constexpr int LDO = HD + 4;  // O rows (f32)
    static constexpr int Q = 0;
    static constexpr int K = Q + BM * LDQ * (int)sizeof(T);
    static constexpr int V = K + BN * LDQ * (int)sizeof(T);
    static constexpr int P = V + BN * LDQ * (int)sizeof(T);
    static constexpr int S = P + BM * LDP * (int)sizeof(T);
    static constexpr int O = S + BM * LDS * 4;
    static constexpr int BYTES = O + BM * LDO * 4;
};

// Copies `rows` x HD elements (row stride `stride` in global memory) into shared memory with
// leading dimension `ld`, 16 bytes at a time; rows at or past `valid` are zero (so masked keys
// contribute exactly 0 * 0, never 0 * NaN from stale memory).
template <typename T, int HD>
__device__ __forceinline__ void load_tile(T* dst, int ld, const T* src, long long stride, int rows, int valid) {
    constexpr int VEC = 16 / sizeof(T);
    constexpr int PER_ROW = HD / VEC;
    for (int e = threadIdx.x; e < rows * PER_ROW; e += blockDim.x) {
        const int r = e / PER_ROW, c = (e % PER_ROW) * VEC;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid) v = *reinterpret_cast<const uint4*>(src + r * stride + c);
        *reinterpret_cast<uint4*>(dst + r * ld + c) = v;
    }
}

template <typename T, int HD>
__device__ void flash_attention(T* out, const T* q, const T* k, const T* v, const SeqDesc* seqs, int heads,
                                int group, float scale) {
    using L = FlashSmem<T, HD>;
    static_assert(L::BYTES <= 227 * 1024, "flash tile does not fit in shared memory");
    static_assert(HD % 16 == 0, "WMMA needs head_dim a multiple of 16");
    extern __shared__ __align__(128) unsigned char smem[];
    T* Qs = reinterpret_cast<T*>(smem + L::Q);
    T* Ks = reinterpret_cast<T*>(smem + L::K);
    T* Vs = reinterpret_cast<T*>(smem + L::V);
    T* Ps = reinterpret_cast<T*>(smem + L::P);
    float* Ss = reinterpret_cast<float*>(smem + L::S);
    float* Os = reinterpret_cast<float*>(smem + L::O);

    const SeqDesc sd = seqs[blockIdx.z];
    const int h = blockIdx.y, row0 = blockIdx.x * BM;
    if (row0 >= sd.q_len) return;  // uniform over the block
    const int kvh = h / group;
    const long long q_stride = (long long)heads * HD, kv_stride = (long long)(heads / group) * HD;
    const int rows_here = min(BM, sd.q_len - row0);
    // Keys any row of this tile can see.
    const int key_end = sd.causal ? min(sd.n_keys, sd.n_keys - sd.q_len + row0 + rows_here) : sd.n_keys;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    load_tile<T, HD>(Qs, L::LDQ, q + (long long)(sd.q_start + row0) * q_stride + (long long)h * HD, q_stride, BM,
                     rows_here);
    for (int e = threadIdx.x; e < BM * L::LDO; e += blockDim.x) Os[e] = 0.f;
    // Running max (log2 domain) and sum for the warp's 16 rows, identical in every lane.
    float m_run[16], l_run[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) m_run[r] = -INFINITY, l_run[r] = 0.f;
    __syncthreads();

    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[HD / 16];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) wmma::load_matrix_sync(qa[kk], Qs + warp * 16 * L::LDQ + kk * 16, L::LDQ);

    const float scale_log2 = scale * LOG2E;
    for (int kt = 0; kt < key_end; kt += BN) {
        const int keys_here = min(BN, key_end - kt);
        const long long kv_off = (long long)(sd.k_base + kt) * kv_stride + (long long)kvh * HD;
        load_tile<T, HD>(Ks, L::LDQ, k + kv_off, kv_stride, BN, keys_here);
        load_tile<T, HD>(Vs, L::LDQ, v + kv_off, kv_stride, BN, keys_here);
        __syncthreads();

        // S[warp rows, :] = Q K^T (K tile is [BN, HD] row-major = K^T column-major).
#pragma unroll
        for (int n = 0; n < BN / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
                wmma::load_matrix_sync(kb, Ks + n * 16 * L::LDQ + kk * 16, L::LDQ);
                wmma::mma_sync(acc, qa[kk], kb, acc);
            }
            wmma::store_matrix_sync(Ss + warp * 16 * L::LDS + n * 16, acc, L::LDS, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax over this tile for the warp's rows; lanes cover columns lane, lane+32.
#pragma unroll
        for (int rr = 0; rr < 16; ++rr) {
            const int r = warp * 16 + rr;
            const int qi = row0 + r;  // query index within the sequence
            const int last = sd.causal ? sd.n_keys - sd.q_len + qi : sd.n_keys - 1;
            float s[2];
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                const int c = lane + 32 * t, j = kt + c;
                s[t] = (c < keys_here && j <= last) ? Ss[r * L::LDS + c] * scale_log2 : -INFINITY;
            }
            const float m_new = fmaxf(m_run[rr], warp_max(fmaxf(s[0], s[1])));
            float alpha = 1.f, psum = 0.f;
            if (m_new != -INFINITY) {
                alpha = exp2f(m_run[rr] - m_new);
#pragma unroll
                for (int t = 0; t < 2; ++t) {
                    const T pt = from_f<T>(exp2f(s[t] - m_new));
                    Ps[r * L::LDP + lane + 32 * t] = pt;
                    psum += to_f(pt);  // the sum of exactly the values P V multiplies
                }
            } else {
#pragma unroll
                for (int t = 0; t < 2; ++t) Ps[r * L::LDP + lane + 32 * t] = from_f<T>(0.f);
            }
            psum = warp_sum(psum);
            m_run[rr] = m_new;
            l_run[rr] = l_run[rr] * alpha + psum;
            for (int d = lane; d < HD; d += 32) Os[r * L::LDO + d] *= alpha;
        }
        __syncwarp();

        // O[warp rows, :] += P V.
#pragma unroll
        for (int d = 0; d < HD / 16; ++d) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, Os + warp * 16 * L::LDO + d * 16, L::LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
                wmma::load_matrix_sync(pa, Ps + warp * 16 * L::LDP + kk * 16, L::LDP);
                wmma::load_matrix_sync(vb, Vs + kk * 16 * L::LDQ + d * 16, L::LDQ);
                wmma::mma_sync(acc, pa, vb, acc);
            }
            wmma::store_matrix_sync(Os + warp * 16 * L::LDO + d * 16, acc, L::LDO, wmma::mem_row_major);
        }
        __syncthreads();  // K/V/S tiles are reused by the next iteration
    }

#pragma unroll
    for (int rr = 0; rr < 16; ++rr) {
        const int r = warp * 16 + rr;
        if (r >= rows_here) break;
        const float inv = l_run[rr] > 0.f ? 1.f / l_run[rr] : 0.f;
        T* o = out + (long long)(sd.q_start + row0 + r) * q_stride + (long long)h * HD;
        for (int d = lane; d < HD; d += 32) o[d] = from_f<T>(Os[r * L::LDO + d] * inv);
    }
}

// ---- rows (f32 FMA, split along keys) --------------------------------------------------------
constexpr int ROWS_THREADS = 128;  // 4 warps; the Rust launcher uses the same block size
constexpr int MAX_HD = 256;
constexpr int PER_LANE = MAX_HD / 32;

// grid = (rows, heads, splits): rows in x, whose limit is 2^31 - 1 (y and z stop at 65535).
// rows_desc[2r] = key row of key 0 for query row r, rows_desc[2r+1] = its number of keys. With
// one split the block writes `out`; otherwise `partial`
// [splits][rows][heads][hd + 2] = (m, l, o[hd]) in the natural-log domain, for attention_combine.
template <typename T>
__device__ void attention_rows(T* out, float* partial, const T* q, const T* k, const T* v, const int* rows_desc,
                               int rows, int heads, int group, int hd, float scale, int keys_per_split) {
    __shared__ float sm_m[ROWS_THREADS / 32], sm_l[ROWS_THREADS / 32];
    __shared__ float sm_o[ROWS_THREADS / 32][MAX_HD];
    const int row = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int k_base = rows_desc[2 * row], n_keys = rows_desc[2 * row + 1];
    const long long q_stride = (long long)heads * hd, kv_stride = (long long)(heads / group) * hd;
    const T* qr = q + (long long)row * q_stride + (long long)h * hd;
    const long long kv_head = (long long)(h / group) * hd;

    float qv[PER_LANE], o[PER_LANE];
#pragma unroll
    for (int t = 0; t < PER_LANE; ++t) {
        const int d = lane + 32 * t;
        qv[t] = d < hd ? to_f(qr[d]) : 0.f;
        o[t] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    const int j0 = split * keys_per_split, j1 = min(n_keys, j0 + keys_per_split);
    for (int j = j0 + warp; j < j1; j += warps) {
        const T* kr = k + (long long)(k_base + j) * kv_stride + kv_head;
        float dot = 0.f;
#pragma unroll
        for (int t = 0; t < PER_LANE; ++t) {
            const int d = lane + 32 * t;
            if (d < hd) dot += qv[t] * to_f(kr[d]);
        }
        const float s = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new), p = expf(s - m_new);
        l = l * corr + p;
        const T* vr = v + (long long)(k_base + j) * kv_stride + kv_head;
#pragma unroll
        for (int t = 0; t < PER_LANE; ++t) {
            const int d = lane + 32 * t;
            if (d < hd) o[t] = o[t] * corr + p * to_f(vr[d]);
        }
        m = m_new;
    }
    if (lane == 0) sm_m[warp] = m, sm_l[warp] = l;
#pragma unroll
    for (int t = 0; t < PER_LANE; ++t) {
        const int d = lane + 32 * t;
        if (d < hd) sm_o[warp][d] = o[t];
    }
    __syncthreads();
    float mm = -INFINITY;
    for (int w = 0; w < warps; ++w) mm = fmaxf(mm, sm_m[w]);
    float ll = 0.f;
    for (int w = 0; w < warps; ++w) ll += sm_m[w] == -INFINITY ? 0.f : sm_l[w] * expf(sm_m[w] - mm);
    if (gridDim.z == 1) {
        T* orow = out + (long long)row * q_stride + (long long)h * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float acc = 0.f;
            for (int w = 0; w < warps; ++w)
                if (sm_m[w] != -INFINITY) acc += sm_o[w][d] * expf(sm_m[w] - mm);
            orow[d] = from_f<T>(ll > 0.f ? acc / ll : 0.f);
        }
    } else {
        float* part = partial + (((long long)split * rows + row) * heads + h) * (hd + 2);
        if (threadIdx.x == 0) part[0] = mm, part[1] = ll;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float acc = 0.f;
            for (int w = 0; w < warps; ++w)
                if (sm_m[w] != -INFINITY) acc += sm_o[w][d] * expf(sm_m[w] - mm);
            part[2 + d] = acc;
        }
    }
}

// Merges the splits of attention_rows: grid = (rows, heads), threads over the head dim.
template <typename T>
__device__ void attention_combine(T* out, const float* partial, int rows, int heads, int hd, int splits) {
    const int row = blockIdx.x, h = blockIdx.y;
    const long long split_stride = (long long)rows * heads * (hd + 2);
    const float* base = partial + ((long long)row * heads + h) * (hd + 2);
    float mm = -INFINITY;
    for (int s = 0; s < splits; ++s) mm = fmaxf(mm, base[s * split_stride]);
    float ll = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float ms = base[s * split_stride];
        if (ms != -INFINITY) ll += base[s * split_stride + 1] * expf(ms - mm);
    }
    T* orow = out + (long long)row * heads * hd + (long long)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.f;
        for (int s = 0; s < splits; ++s) {
            const float ms = base[s * split_stride];
            if (ms != -INFINITY) acc += base[s * split_stride + 2 + d] * expf(ms - mm);
        }
        orow[d] = from_f<T>(ll > 0.f ? acc / ll : 0.f);
    }
}

// ---- relative (DeBERTa) -------------------------------------------------------------------------
constexpr int REL_THREADS = 128;  // 4 warps; the Rust launcher uses the same block size

// grid = (rows, heads). rel_desc[3r .. 3r+2] = (key row of the sequence's key 0, its number of
// keys, the query's position in the sequence). pos_key / pos_query are [positions, heads*hd] or
// null (that term absent); c2p / p2c index them by relative position + center.
template <typename T>
__device__ void relative_attention(T* out, const T* q, const T* k, const T* v, const T* pos_key, const T* pos_query,
                                   const int* rel_desc, const int* c2p, const int* p2c, int center, int heads,
                                   int group, int hd, float scale) {
    __shared__ float sm_m[REL_THREADS / 32], sm_l[REL_THREADS / 32];
    __shared__ float sm_o[REL_THREADS / 32][MAX_HD];
    const int row = blockIdx.x, h = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int k_base = rel_desc[3 * row], n_keys = rel_desc[3 * row + 1], pos = rel_desc[3 * row + 2];
    const long long q_stride = (long long)heads * hd, kv_stride = (long long)(heads / group) * hd;
    const long long head = (long long)h * hd, kv_head = (long long)(h / group) * hd;
    const T* qr = q + (long long)row * q_stride + head;

    float qv[PER_LANE], o[PER_LANE];
#pragma unroll
    for (int t = 0; t < PER_LANE; ++t) {
        const int d = lane + 32 * t;
        qv[t] = d < hd ? to_f(qr[d]) : 0.f;
        o[t] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int j = warp; j < n_keys; j += warps) {
        const T* kr = k + (long long)(k_base + j) * kv_stride + kv_head;
        const int rp = pos - j + center;  // the relative position's row of the index tables
        const T* pk = pos_key ? pos_key + (long long)c2p[rp] * q_stride + head : nullptr;
        const T* pq = pos_query ? pos_query + (long long)p2c[rp] * q_stride + head : nullptr;
        float dot = 0.f;
#pragma unroll
        for (int t = 0; t < PER_LANE; ++t) {
            const int d = lane + 32 * t;
            if (d < hd) {
                const float kd = to_f(kr[d]);
                dot += qv[t] * kd;
                if (pk) dot += qv[t] * to_f(pk[d]);
                if (pq) dot += kd * to_f(pq[d]);
            }
        }
        const float s = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new), p = expf(s - m_new);
        l = l * corr + p;
        const T* vr = v + (long long)(k_base + j) * kv_stride + kv_head;
#pragma unroll
        for (int t = 0; t < PER_LANE; ++t) {
            const int d = lane + 32 * t;
            if (d < hd) o[t] = o[t] * corr + p * to_f(vr[d]);
        }
        m = m_new;
    }
    // Merge the warps' (m, l, o) as attention_rows does with one split.
    if (lane == 0) sm_m[warp] = m, sm_l[warp] = l;
#pragma unroll
    for (int t = 0; t < PER_LANE; ++t) {
        const int d = lane + 32 * t;
        if (d < hd) sm_o[warp][d] = o[t];
    }
    __syncthreads();  // every warp's state is stored before any thread merges them
    float mm = -INFINITY;
    for (int w = 0; w < warps; ++w) mm = fmaxf(mm, sm_m[w]);
    float ll = 0.f;
    for (int w = 0; w < warps; ++w) ll += sm_m[w] == -INFINITY ? 0.f : sm_l[w] * expf(sm_m[w] - mm);
    T* orow = out + (long long)row * q_stride + head;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < warps; ++w)
            if (sm_m[w] != -INFINITY) acc += sm_o[w][d] * expf(sm_m[w] - mm);
        orow[d] = from_f<T>(ll > 0.f ? acc / ll : 0.f);
    }
}

}  // namespace

#define ICET_FLASH(sfx, T, HD)                                                                          \
    extern "C" __global__ void __launch_bounds__(FLASH_THREADS)                                         \
        flash_attention_##sfx##_hd##HD(T* out, const T* q, const T* k, const T* v, const SeqDesc* seqs, \
                                       int heads, int group, float scale) {                             \
        flash_attention<T, HD>(out, q, k, v, seqs, heads, group, scale);                                \
    }
ICET_FLASH(bf16, __nv_bfloat16, 64)
ICET_FLASH(bf16, __nv_bfloat16, 80)
ICET_FLASH(bf16, __nv_bfloat16, 128)
ICET_FLASH(f16, __half, 64)
ICET_FLASH(f16, __half, 80)
ICET_FLASH(f16, __half, 128)

#define ICET_ROWS_ATTN(sfx, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(ROWS_THREADS)                                               \
        attention_rows_##sfx(T* out, float* partial, const T* q, const T* k, const T* v, const int* rows_desc, \
                             int rows, int heads, int group, int hd, float scale, int keys_per_split) {      \
        attention_rows(out, partial, q, k, v, rows_desc, rows, heads, group, hd, scale, keys_per_split);     \
    }                                                                                                        \
    extern "C" __global__ void attention_combine_##sfx(T* out, const float* partial, int rows, int heads,   \
                                                       int hd, int splits) {                                 \
        attention_combine(out, partial, rows, heads, hd, splits);                                            \
    }
ICET_FOR_DTYPES(ICET_ROWS_ATTN)

#define ICET_REL_ATTN(sfx, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(REL_THREADS)                                                 \
        relative_attention_##sfx(T* out, const T* q, const T* k, const T* v, const T* pos_key,               \
                                 const T* pos_query, const int* rel_desc, const int* c2p, const int* p2c,    \
                                 int center, int heads, int group, int hd, float scale) {                    \
        relative_attention(out, q, k, v, pos_key, pos_query, rel_desc, c2p, p2c, center, heads, group, hd,   \
                           scale);                                                                           \
    }
ICET_FOR_DTYPES(ICET_REL_ATTN)
