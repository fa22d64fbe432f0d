//! `out = x · wᵀ` for few rows of `x` (decode: one row per sequence), with `w` in `nn.Linear`'s
//! `[out, in]` layout. A general GEMM packs both operands into panels first, and with a handful
//! of rows its register tile is mostly padding; here each weight row is read once, straight from
//! the weights, and dotted with every row of `x` (which stays in cache): tiles of 4 rows of `x`
//! by 4 weight rows, 16 accumulator registers, parallel over blocks of weight rows. AVX-512 only
//! (runtime-detected); elsewhere the caller uses the general GEMM.
use rayon::prelude::*;

/// Rows of `x` up to which this path beats the general GEMM (measured at k = 512..3072).
pub const MAX_ROWS: usize = 32;

/// Weight rows per parallel task.
const BLOCK: usize = 64;

/// Whether [`linear`] can run here (the CPU has AVX-512).
pub fn available() -> bool {
    super::simd::level() == 3
}

/// An output pointer shared by parallel tasks that each write their own columns (here and in
/// `linear_transposed`).
#[derive(Clone, Copy)]
pub(super) struct Out(pub(super) *mut f32);
// SAFETY: tasks write disjoint columns of `out`, and their callers wait for all of them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    pub(super) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `out[m×n] = x[m×k] · wᵀ` (`w`: `[n, k]`), plus `out` when `accumulate`. Call only when
/// [`available`].
pub fn linear(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert!(available() && x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    let o = Out(out.as_mut_ptr());
    let blocks = n.div_ceil(BLOCK);
    (0..blocks).into_par_iter().for_each(|b| {
        let (j0, j1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
        // SAFETY: AVX-512 is present (asserted); every pointer below stays inside x, w and out
        // (rows < m, weight rows < n, k values each), and this task writes columns j0..j1 only.
        unsafe { block(x, w, o, m, k, n, j0, j1, accumulate) }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(x: &[f32], w: &[f32], o: Out, m: usize, k: usize, n: usize, j0: usize, j1: usize, acc: bool) {
    let mut j = j0;
    while j < j1 {
        let nr = (j1 - j).min(4);
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(4);
            macro_rules! go {
                ($mr:literal, $nr:literal) => {
                    tile::<$mr, $nr>(x, &w[j * k..], o, (k, n), (i, j), k, 1.0, acc)
                };
            }
            match (mr, nr) {
                (4, 4) => go!(4, 4),
                (4, 3) => go!(4, 3),
                (4, 2) => go!(4, 2),
                (4, 1) => go!(4, 1),
                (3, 4) => go!(3, 4),
                (3, 3) => go!(3, 3),
                (3, 2) => go!(3, 2),
                (3, 1) => go!(3, 1),
                (2, 4) => go!(2, 4),
                (2, 3) => go!(2, 3),
                (2, 2) => go!(2, 2),
                (2, 1) => go!(2, 1),
                (1, 4) => go!(1, 4),
                (1, 3) => go!(1, 3),
                (1, 2) => go!(1, 2),
                _ => go!(1, 1),
            }
            i += mr;
        }
        j += nr;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block(_: &[f32], _: &[f32], _: Out, _: usize, _: usize, _: usize, _: usize, _: usize, _: bool) {
    unreachable!("skinny::linear runs only where available() is true")
}

/// Rows `i..i + MR` of `x` (`k` apart) against the `NR` rows of `w` that start `w_stride` apart:
/// `MR × NR` dot products of length `k`, times `scale`, written to `out[(i + r) * n + j + c]` or
/// (`accumulate`) added to it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
// Indexed loops over the constant tile size: they unroll into the register tile.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const MR: usize, const NR: usize>(
    x: &[f32],
    w: &[f32],
    o: Out,
    (k, n): (usize, usize),
    (i, j): (usize, usize),
    w_stride: usize,
    scale: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let xp: [*const f32; MR] = std::array::from_fn(|r| x.as_ptr().add((i + r) * k));
    let wp: [*const f32; NR] = std::array::from_fn(|c| w.as_ptr().add(c * w_stride));
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut d = 0;
    while d + 16 <= k {
        let wv: [__m512; NR] = std::array::from_fn(|c| _mm512_loadu_ps(wp[c].add(d)));
        for r in 0..MR {
            let xv = _mm512_loadu_ps(xp[r].add(d));
            for c in 0..NR {
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
        d += 16;
    }
    if d < k {
        let mask: __mmask16 = (1u32 << (k - d)) as u16 - 1;
        let wv: [__m512; NR] = std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask, wp[c].add(d)));
        for r in 0..MR {
            let xv = _mm512_maskz_loadu_ps(mask, xp[r].add(d));
            for c in 0..NR {
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
    }
    for r in 0..MR {
        for c in 0..NR {
            let p = o.at((i + r) * n + j + c);
            let s = _mm512_reduce_add_ps(acc[r][c]);
            *p = if accumulate { *p + s * scale } else { s * scale };
        }
    }
}

/// `out[j] = scale · (q · rows[j*stride..][..q.len()])`, AVX-512 (attention scores of one query
/// row against cached keys). Call only when [`available`].
pub fn dot_rows(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let (hd, n) = (q.len(), out.len());
    assert!(available() && (n == 0 || rows.len() >= (n - 1) * stride + hd));
    // SAFETY: AVX-512 is present (asserted) and row j < n spans rows[j*stride..][..hd] (asserted).
    unsafe { dot_rows_avx512(q, rows, stride, scale, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_avx512(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let (hd, n) = (q.len(), out.len());
    let o = Out(out.as_mut_ptr());
    let mut j = 0;
    while j + 4 <= n {
        tile::<1, 4>(q, &rows[j * stride..], o, (hd, 0), (0, j), stride, scale, false);
        j += 4;
    }
    while j < n {
        tile::<1, 1>(q, &rows[j * stride..], o, (hd, 0), (0, j), stride, scale, false);
        j += 1;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_rows_avx512(_: &[f32], _: &[f32], _: usize, _: f32, _: &mut [f32]) {
    unreachable!("skinny::dot_rows runs only where available() is true")
}
