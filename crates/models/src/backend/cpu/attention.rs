//! The CPU backend's attention, all three kinds through one tile routine ([`attend_tile`]):
//! bidirectional (the ViT's), query segments against key/value segments (Mllama's
//! cross-attention), and causal attention over the KV cache (prefill and decode).
//!
//! Work is split into tasks of (sequence, key/value head, block of query rows); the query heads
//! that share a key/value head (GQA) are stacked into one tile, so their keys and values are
//! read once. A tile of many rows is two GEMMs per block of keys — scores `Q Kᵀ`, then `P V` —
//! with an f32 online softmax in between (running max and sum per row, earlier blocks rescaled),
//! so memory stays bounded for any length. A tile of a few rows (decode) skips the GEMM set-up:
//! SIMD dot products over the keys, a softmax, and a weighted sum of the values.
use std::cell::RefCell;

use rayon::prelude::*;

use super::simd;
use crate::backend::{AttentionShape, SeqChunk};

/// Tiles with fewer rows than this take the dot-product path (decode: one row per query head).
const GEMM_TILE_ROWS: usize = 16;
/// Query rows per tile (all heads of a group together), for the GEMM path.
const TILE_ROWS: usize = 64;
/// Keys per online-softmax block, at most.
const KEY_BLOCK: usize = 512;

/// A raw pointer to the output that tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint element ranges (see `Task`), and the owner waits for all of them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Taken through a method so closures capture the whole (Sync) wrapper, not the raw field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// One unit of parallel work: query rows `q_row..q_row + rows` of one sequence, for the query
/// heads of key/value head `kv_head`, against the sequence's keys starting at key row `k_row`
/// (`k_base` elements into the key buffer); query row `i` sees `visible(i)` keys.
#[derive(Clone, Copy, Debug)]
struct Task {
    q_row: usize,
    rows: usize,
    kv_head: usize,
    /// Element offset of the sequence's first key row in the key/value buffers.
    k_base: usize,
    /// Keys visible to the first query row; row `i` sees `first_visible + i * causal` keys,
    /// capped at `n_keys`.
    first_visible: usize,
    n_keys: usize,
    causal: bool,
}

/// Scratch space of one worker thread, grown as needed and reused for every tile.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
    tmp: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `dst[m×n] = alpha·dst + beta·lhs[m×k]·rhs`, `rhs` given by strides; `alpha = 0` does not read
/// `dst`. Single-threaded: attention parallelises over tiles.
#[allow(clippy::too_many_arguments)]
fn tile_gemm(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    beta: f32,
) {
    debug_assert!(dst.len() >= m * n && lhs.len() >= m * k);
    // SAFETY: dst is m×n and lhs m×k, row-major; the callers' rhs view (k×n by its strides)
    // stays inside `rhs` — checked by the argument checks of the public ops.
    unsafe {
        super::gemm_raw(
            dst.as_mut_ptr(),
            n,
            lhs,
            rhs.as_ptr(),
            (m, n, k),
            (rhs_cs, rhs_rs),
            (alpha, beta),
            gemm::Parallelism::None,
        )
    }
}

/// Attention of the `r` query rows of `q` (`[r, hd]`, contiguous) against keys/values `j`
/// at `keys[j*stride..][..hd]`, `vals[j*stride..][..hd]`; row `i` sees keys `0..visible[i]`
/// (each at least 1). Writes `out` (`[r, hd]`).
#[allow(clippy::too_many_arguments)]
fn attend_tile(
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    stride: usize,
    visible: &[usize],
    hd: usize,
    scale: f32,
    out: &mut [f32],
    s: &mut Scratch,
) {
    let r = visible.len();
    let n_keys = visible.iter().copied().max().unwrap_or(0);
    if r < GEMM_TILE_ROWS {
        let scores = grow(&mut s.scores, n_keys);
        for i in 0..r {
            let n = visible[i];
            let sc = &mut scores[..n];
            simd::dot_rows(&q[i * hd..(i + 1) * hd], keys, stride, scale, sc);
            simd::softmax(sc);
            simd::weighted_rows(sc, vals, stride, 0.0, &mut out[i * hd..(i + 1) * hd]);
        }
        return;
    }
    let blocks = n_keys.div_ceil(KEY_BLOCK);
    let kb = n_keys.div_ceil(blocks.max(1));
    let (scores, tmp) = (grow(&mut s.scores, r * kb), grow(&mut s.tmp, r * hd));
    let (mx, sm) = (grow(&mut s.max, r), grow(&mut s.sum, r));
    mx.fill(f32::NEG_INFINITY);
    sm.fill(0.0);
    out[..r * hd].fill(0.0);
    let mut j0 = 0;
    while j0 < n_keys {
        let n = kb.min(n_keys - j0);
        // scores = scale · Q K_blockᵀ: column j of the rhs is key row j0 + j.
        tile_gemm(scores, q, &keys[j0 * stride..], (r, n, hd), stride as isize, 1, 0.0, scale);
        for i in 0..r {
            let row = &mut scores[i * n..(i + 1) * n];
            let valid = visible[i].saturating_sub(j0).min(n);
            if valid == 0 {
                row.fill(0.0);
                continue;
            }
            let m_new = simd::max(&row[..valid]).max(mx[i]);
            let keep = simd::exp(mx[i] - m_new);
            sm[i] = sm[i] * keep + simd::exp_sub_sum(&mut row[..valid], m_new);
            row[valid..].fill(0.0);
            mx[i] = m_new;
            if keep != 1.0 {
                simd::scale(&mut out[i * hd..(i + 1) * hd], keep);
            }
        }
        // out += P V_block: row j of the rhs is value row j0 + j.
        tile_gemm(tmp, scores, &vals[j0 * stride..], (r, hd, n), 1, stride as isize, 0.0, 1.0);
        simd::add(&mut out[..r * hd], tmp);
        j0 += n;
    }
    for i in 0..r {
        simd::scale(&mut out[i * hd..(i + 1) * hd], 1.0 / sm[i]);
    }
}

/// Runs `tasks` in parallel: gathers each task's query rows (heads of its group stacked),
/// attends, and writes the rows back into `out` (`[q rows, heads*hd]`).
fn run_tasks(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], tasks: &[Task], s: AttentionShape) {
    let hd = s.head_dim;
    let group = s.heads / s.kv_heads;
    let (qw, kw) = (s.heads * hd, s.kv_heads * hd);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_len = out.len();
    tasks.par_iter().for_each(|t| {
        SCRATCH.with_borrow_mut(|scratch| {
            let r = t.rows * group;
            let mut qt = std::mem::take(&mut scratch.q);
            let mut ot = std::mem::take(&mut scratch.out);
            let (qbuf, obuf) = (grow(&mut qt, r * hd), grow(&mut ot, r * hd));
            let mut visible = Vec::with_capacity(r);
            for hh in 0..group {
                let h = t.kv_head * group + hh;
                for i in 0..t.rows {
                    let src = (t.q_row + i) * qw + h * hd;
                    qbuf[(hh * t.rows + i) * hd..(hh * t.rows + i + 1) * hd].copy_from_slice(&q[src..src + hd]);
                    visible.push(if t.causal { (t.first_visible + i).min(t.n_keys) } else { t.n_keys });
                }
            }
            let off = t.k_base + t.kv_head * hd;
            let end = off + t.n_keys.saturating_sub(1) * kw + hd;
            attend_tile(qbuf, &k[off..end], &v[off..end], kw, &visible, hd, s.scale, obuf, scratch);
            for hh in 0..group {
                let h = t.kv_head * group + hh;
                for i in 0..t.rows {
                    let dst = (t.q_row + i) * qw + h * hd;
                    assert!(dst + hd <= out_len);
                    // SAFETY: in bounds (checked); row q_row + i, head h belongs to this task only
                    // (tasks cover disjoint (row, kv head) pairs), and `out` outlives the loop.
                    unsafe {
                        std::ptr::copy_nonoverlapping(obuf[(hh * t.rows + i) * hd..].as_ptr(), out_ptr.at(dst), hd);
                    }
                }
            }
            scratch.q = qt;
            scratch.out = ot;
        })
    });
}

/// Rows per task: about [`TILE_ROWS`] tile rows over the heads of a group.
fn rows_per_task(group: usize) -> usize {
    (TILE_ROWS / group).max(GEMM_TILE_ROWS.div_ceil(group)).max(1)
}

/// Unmasked attention of query segments against key/value segments (see
/// [`crate::backend::Backend::attention_kv`]); the caller has checked the shapes.
/// `q`: `[Σq_lens, heads*hd]`, `k`/`v`: `[Σkv_lens, kv_heads*hd]`; writes `out` like `q`.
pub fn segments(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_lens: &[usize],
    kv_lens: &[usize],
    s: AttentionShape,
    out: &mut [f32],
) {
    let kw = s.kv_heads * s.head_dim;
    let per = rows_per_task(s.heads / s.kv_heads);
    let mut tasks = Vec::new();
    let (mut q0, mut k0) = (0, 0);
    for (&ql, &kl) in q_lens.iter().zip(kv_lens) {
        for kv_head in 0..s.kv_heads {
            let mut i = 0;
            while i < ql {
                let rows = per.min(ql - i);
                tasks.push(Task {
                    q_row: q0 + i,
                    rows,
                    kv_head,
                    k_base: k0 * kw,
                    first_visible: kl,
                    n_keys: kl,
                    causal: false,
                });
                i += rows;
            }
        }
        q0 += ql;
        k0 += kl;
    }
    run_tasks(q, k, v, out, &tasks, s);
}

/// Causal attention of each chunk's rows of `q` over the first `start + len` positions of its
/// slot in the cache layer `k`/`v` (`[slots * capacity, kv_heads*hd]`, the chunk's own keys
/// already written). Writes `out` like `q`.
pub fn cached(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    chunks: &[SeqChunk],
    capacity: usize,
    s: AttentionShape,
    out: &mut [f32],
) {
    let kw = s.kv_heads * s.head_dim;
    let per = rows_per_task(s.heads / s.kv_heads);
    let mut tasks = Vec::new();
    let mut q0 = 0;
    for c in chunks {
        for kv_head in 0..s.kv_heads {
            let mut i = 0;
            while i < c.len {
                let rows = per.min(c.len - i);
                tasks.push(Task {
                    q_row: q0 + i,
                    rows,
                    kv_head,
                    k_base: c.slot * capacity * kw,
                    first_visible: c.start + i + 1,
                    n_keys: c.start + i + rows,
                    causal: true,
                });
                i += rows;
            }
        }
        q0 += c.len;
    }
    run_tasks(q, k, v, out, &tasks, s);
}
