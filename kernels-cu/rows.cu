// Row movement: gather/scatter of whole rows (embedding lookup, KV-cache writes, token
// selection), the capture-hook copy, ViT patch im2col and the class-token/position assembly.
// One block per output row, threads over columns: rows are a few KiB, so this is bandwidth-bound.
#include "common.cuh"

using namespace icet;

namespace {

template <typename T> __device__ void copy_row(T* dst, const T* src, long long cols) {
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}

// out[i] = src[idx[i]]  (grid.x = n rows)
template <typename T> __device__ void gather_rows(T* out, const T* src, const int* idx, long long cols) {
    const long long i = blockIdx.x;
    copy_row(out + i * cols, src + (long long)idx[i] * cols, cols);
}

// dst[idx[i]] = src[i]  (grid.x = n rows; indices must be distinct)
template <typename T> __device__ void scatter_rows(T* dst, const T* src, const int* idx, long long cols) {
    const long long i = blockIdx.x;
    copy_row(dst + (long long)idx[i] * cols, src + i * cols, cols);
}

// The capture hook: `src` holds `images` sequences of `tokens` rows; copy rows `drop..tokens` of
// each (drop = 1 drops CLS, LLaVA's "default" strategy; 0 keeps it, "full") to consecutive rows
// of `dst`, starting at row `dst_row0` (so several layers can share one feature buffer).
// grid.x = images * (tokens - drop).
template <typename T>
__device__ void capture_rows(T* dst, const T* src, int tokens, int drop, long long cols, long long dst_row0) {
    const long long i = blockIdx.x;
    const long long kept = tokens - drop;
    const long long img = i / kept, t = i % kept;
    copy_row(dst + (dst_row0 + i) * cols, src + (img * tokens + drop + t) * cols, cols);
}

// ViT patches as rows (im2col): `pixels` is [channels*height, width] (CHW); patch (py, px) becomes
// row py*pw + px with columns in (channel, y, x) order, the layout of a Conv2d weight
// [out, channels, patch, patch] flattened — so the convolution is one GEMM with that weight.
template <typename T>
__device__ void im2col(T* out, const T* pixels, int channels, int height, int width, int patch) {
    const int pw = width / patch, ph = height / patch;
    const long long row_len = (long long)channels * patch * patch;
    const long long n = (long long)ph * pw * row_len;
    ICET_GRID_LOOP(e, n) {
        const long long p = e / row_len;
        const int col = (int)(e % row_len);
        const int c = col / (patch * patch), y = (col / patch) % patch, x = col % patch;
        const int py = (int)(p / pw), px = (int)(p % pw);
        out[e] = pixels[((long long)c * height + py * patch + y) * width + px * patch + x];
    }
}

// CLIPVisionEmbeddings after the patch GEMM: row 0 of each image = class_embedding + pos[0],
// row t >= 1 = patches[t - 1] + pos[t]. grid.x = images * tokens.
template <typename T>
__device__ void vit_assemble(T* out, const T* patches, const T* cls, const T* pos, int tokens, long long cols) {
    const long long i = blockIdx.x;
    const long long img = i / tokens;
    const int t = (int)(i % tokens);
    const T* src = t == 0 ? cls : patches + (img * (tokens - 1) + t - 1) * cols;
    const T* p = pos + (long long)t * cols;
    T* o = out + i * cols;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) o[c] = from_f<T>(to_f(src[c]) + to_f(p[c]));
}

}  // namespace

#define ICET_ROWS(sfx, T)                                                                                  \
    extern "C" __global__ void gather_rows_##sfx(T* out, const T* src, const int* idx, long long cols) { \
        gather_rows(out, src, idx, cols);                                                                 \
    }                                                                                                     \
    extern "C" __global__ void scatter_rows_##sfx(T* dst, const T* src, const int* idx, long long cols) { \
        scatter_rows(dst, src, idx, cols);                                                                \
    }                                                                                                     \
    extern "C" __global__ void capture_rows_##sfx(T* dst, const T* src, int tokens, int drop, long long cols, \
                                                  long long dst_row0) {                                   \
        capture_rows(dst, src, tokens, drop, cols, dst_row0);                                             \
    }                                                                                                     \
    extern "C" __global__ void im2col_##sfx(T* out, const T* px, int c, int h, int w, int patch) {       \
        im2col(out, px, c, h, w, patch);                                                                  \
    }                                                                                                     \
    extern "C" __global__ void vit_assemble_##sfx(T* out, const T* patches, const T* cls, const T* pos,  \
                                                  int tokens, long long cols) {                           \
        vit_assemble(out, patches, cls, pos, tokens, cols);                                               \
    }
ICET_FOR_DTYPES(ICET_ROWS)
