//! The CPU backend's [`crate::backend::Backend::relative_attention`] — DeBERTa's disentangled
//! attention (`DisentangledSelfAttention.forward` from the projections to the context) — and the
//! reference the CUDA kernel is tested against. One task per (sequence, query head); per query
//! row the content scores are SIMD dot products over the sequence's keys, the content→position
//! and position→content terms are added key by key (each reads a different row of its position
//! table), then a softmax and a weighted sum of the values.
use rayon::prelude::*;

use super::simd;
use crate::backend::AttentionShape;

/// Position tables and index tables on the host (see [`crate::backend::RelativePositions`]).
pub(crate) struct HostRelative<'a> {
    pub pos_key: Option<&'a [f32]>,
    pub pos_query: Option<&'a [f32]>,
    pub c2p: &'a [u32],
    pub p2c: &'a [u32],
}

/// Head `h` (`hd` wide) of row `r` of a `[_, width]` tensor.
fn head(t: &[f32], r: usize, h: usize, width: usize, hd: usize) -> &[f32] {
    &t[r * width + h * hd..][..hd]
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |s, (x, y)| s + x * y)
}

/// `q`: `[Σlens, heads*hd]`, `k`/`v`: `[Σlens, kv_heads*hd]`, position tables `[_, heads*hd]`;
/// writes `out` like `q`. The caller has checked every shape and index (`checks`).
pub(crate) fn relative_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: &[usize],
    rel: &HostRelative<'_>,
    s: AttentionShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let group = s.heads / s.kv_heads;
    let (qw, kw) = (s.heads * hd, s.kv_heads * hd);
    let center = (rel.c2p.len() - 1) / 2;
    let mut tasks = Vec::with_capacity(lens.len() * s.heads);
    let mut start = 0;
    for &n in lens {
        tasks.extend((0..s.heads).map(|h| (start, n, h)));
        start += n;
    }
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(start, n, h)| {
            let kh = h / group;
            let keys = &k[start * kw + kh * hd..];
            let vals = &v[start * kw + kh * hd..];
            let mut block = vec![0.0f32; n * hd];
            let mut scores = vec![0.0f32; n];
            for i in 0..n {
                let qi = head(q, start + i, h, qw, hd);
                simd::dot_rows(qi, keys, kw, 1.0, &mut scores);
                for (j, sc) in scores.iter_mut().enumerate() {
                    let d = center + i - j;
                    let mut bias = 0.0f32;
                    if let Some(pk) = rel.pos_key {
                        bias += dot(qi, head(pk, rel.c2p[d] as usize, h, qw, hd));
                    }
                    if let Some(pq) = rel.pos_query {
                        bias += dot(&keys[j * kw..][..hd], head(pq, rel.p2c[d] as usize, h, qw, hd));
                    }
                    *sc = (*sc + bias) * s.scale;
                }
                simd::softmax(&mut scores);
                simd::weighted_rows(&scores, vals, kw, 0.0, &mut block[i * hd..(i + 1) * hd]);
            }
            block
        })
        .collect();
    for (&(start, n, h), block) in tasks.iter().zip(&results) {
        for i in 0..n {
            out[(start + i) * qw + h * hd..][..hd].copy_from_slice(&block[i * hd..(i + 1) * hd]);
        }
    }
}
