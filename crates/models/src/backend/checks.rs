//! Argument checks of every [`super::Backend`] op, in one place: the checked layer runs the op's
//! check on the operands' dimensions before any backend sees the call, so a wrong call is the same
//! one-line error (`<op>: what is wrong`) on every backend, and the backends' own op bodies
//! ([`super::BackendOps`]) assume valid arguments. Limits that belong to one backend (the CUDA
//! kernels' 32-bit indices, the device's memory) stay with that backend; the kernel launchers keep
//! only the checks that protect the memory safety of a raw launch.
use super::{AttentionShape, SeqChunk};
use crate::error::{Error, Result};

/// `(rows, cols)` of an operand.
type Dims = (usize, usize);

fn invalid(msg: String) -> Result<()> {
    Err(Error::invalid(msg))
}

/// A KV cache's shape, as [`cached_attention`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub slots: usize,
    pub capacity: usize,
    /// `kv_heads * head_dim`.
    pub width: usize,
}

/// `rows * cols` elements can be addressed.
pub fn elements(rows: usize, cols: usize, op: &str) -> Result<()> {
    if rows.checked_mul(cols).is_none() {
        return invalid(format!("{op}: [{rows}, {cols}] has more elements than memory can address"));
    }
    Ok(())
}

pub fn from_host(len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return invalid(format!("from_host: {len} values cannot be [{rows}, {cols}]"));
    }
    Ok(())
}

fn row_in(r: usize, rows: usize, op: &str) -> Result<()> {
    if r >= rows {
        return invalid(format!("{op}: row {r} of a tensor of {rows} rows"));
    }
    Ok(())
}

pub fn gather_rows(x: Dims, rows: &[usize]) -> Result<()> {
    rows.iter().try_for_each(|&r| row_in(r, x.0, "gather_rows"))
}

pub fn scatter_rows(dst: Dims, rows: &[usize], src: Dims) -> Result<()> {
    if src != (rows.len(), dst.1) {
        return invalid(format!(
            "scatter_rows: source [{}, {}] for {} rows of {} columns",
            src.0,
            src.1,
            rows.len(),
            dst.1
        ));
    }
    rows.iter().try_for_each(|&r| row_in(r, dst.0, "scatter_rows"))
}

pub fn reshape(t: Dims, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(t.0 * t.1) {
        return invalid(format!("reshape: [{}, {}] has no [{rows}, {cols}] view", t.0, t.1));
    }
    Ok(())
}

pub fn same_dims(a: Dims, b: Dims, op: &str) -> Result<()> {
    if a != b {
        return invalid(format!("{op}: shapes [{}, {}] and [{}, {}] differ", a.0, a.1, b.0, b.1));
    }
    Ok(())
}

/// `x · wᵀ + bias`: `x`'s columns are `w`'s, the bias has one value per output (any layout).
pub fn linear(x: Dims, w: Dims, bias: Option<Dims>) -> Result<()> {
    if x.1 != w.1 {
        return invalid(format!("linear: input of {} columns for a weight [{}, {}]", x.1, w.0, w.1));
    }
    if let Some(b) = bias.filter(|b| b.0 * b.1 != w.0) {
        return invalid(format!("linear: bias of {} values for {} outputs", b.0 * b.1, w.0));
    }
    Ok(())
}

/// A norm of the rows of `x` (after `x += delta` when fused): one weight (and bias) per column.
pub fn norm(x: Dims, delta: Option<Dims>, weight: Dims, bias: Option<Dims>, op: &str) -> Result<()> {
    if let Some(d) = delta {
        same_dims(x, d, op)?;
    }
    let c = x.1;
    if weight.0 * weight.1 != c || bias.is_some_and(|b| b.0 * b.1 != c) {
        return invalid(format!("{op}: parameters do not match width {c}"));
    }
    Ok(())
}

pub fn rotary(x: Dims, positions: usize, head_dim: usize, frequencies: usize) -> Result<()> {
    if head_dim == 0
        || !head_dim.is_multiple_of(2)
        || frequencies != head_dim / 2
        || !x.1.is_multiple_of(head_dim)
        || positions != x.0
    {
        return invalid(format!(
            "rotary: head_dim {head_dim}, {frequencies} frequencies, {} columns, {positions} positions for {} rows",
            x.1, x.0
        ));
    }
    Ok(())
}

pub fn embedding(table: Dims, ids: &[u32]) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.0) {
        return invalid(format!("embedding: token id {bad} is outside the vocabulary of {}", table.0));
    }
    Ok(())
}

/// `pixels` is `[channels*height, width]` with both sides whole numbers of patches; the weight
/// takes one flattened patch.
pub fn patch_embed(pixels: Dims, channels: usize, patch: usize, weight: Dims) -> Result<()> {
    let (w, h) = (pixels.1, pixels.0 / channels.max(1));
    if channels == 0 || patch == 0 || pixels.0 != channels * h || !h.is_multiple_of(patch) || !w.is_multiple_of(patch) {
        return invalid(format!(
            "patch_embed: image [{channels}x{h}x{w}] is not a whole number of {patch}-pixel patches"
        ));
    }
    if weight.1 != channels * patch * patch {
        return invalid(format!("patch_embed: weight of {} columns for {channels}x{patch}x{patch} patches", weight.1));
    }
    Ok(())
}

/// Query heads group evenly over a non-zero number of key/value heads of a non-zero width.
fn heads(s: AttentionShape, op: &str) -> Result<()> {
    if s.kv_heads == 0 || s.head_dim == 0 || !s.heads.is_multiple_of(s.kv_heads) {
        return invalid(format!(
            "{op}: {} query heads do not share {} key/value heads of width {}",
            s.heads, s.kv_heads, s.head_dim
        ));
    }
    Ok(())
}

/// `q` is `[q_rows, heads*hd]` and `k`/`v` are `[kv_rows, kv_heads*hd]`.
fn qkv(q: Dims, k: Dims, v: Dims, q_rows: usize, kv_rows: usize, s: AttentionShape, op: &str) -> Result<()> {
    heads(s, op)?;
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    if q != (q_rows, qw) || k != (kv_rows, kw) || v != k {
        return invalid(format!(
            "{op}: q [{}, {}], k [{}, {}], v [{}, {}] for {q_rows} query rows [.., {qw}] and {kv_rows} key/value rows [.., {kw}]",
            q.0, q.1, k.0, k.1, v.0, v.1
        ));
    }
    Ok(())
}

/// [`super::Backend::attention`]: the lengths cover every row of `q`, `k` and `v`.
pub fn attention(q: Dims, k: Dims, v: Dims, lens: &[usize], s: AttentionShape, op: &str) -> Result<()> {
    let total: usize = lens.iter().sum();
    qkv(q, k, v, total, total, s, op)
}

/// [`super::Backend::attention_kv`]: as many key/value segments as query segments, covering
/// their rows, and keys for every query.
pub fn attention_kv(q: Dims, k: Dims, v: Dims, q_lens: &[usize], kv_lens: &[usize], s: AttentionShape) -> Result<()> {
    if q_lens.len() != kv_lens.len() {
        return invalid(format!(
            "attention_kv: {} query segments for {} key/value segments",
            q_lens.len(),
            kv_lens.len()
        ));
    }
    if let Some(i) = q_lens.iter().zip(kv_lens).position(|(&ql, &kl)| ql > 0 && kl == 0) {
        return invalid(format!("attention_kv: query segment {i} has {} rows but no keys", q_lens[i]));
    }
    qkv(q, k, v, q_lens.iter().sum(), kv_lens.iter().sum(), s, "attention_kv")
}

pub fn kv_cache(layers: usize, slots: usize, capacity: usize, kv_heads: usize, head_dim: usize) -> Result<()> {
    let size = [layers, slots, capacity, kv_heads, head_dim, 2].iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    if size.is_none() {
        return invalid(format!(
            "kv_cache: {layers} layers x {slots} slots x {capacity} positions x {kv_heads} heads x {head_dim} \
             has more elements than memory can address"
        ));
    }
    Ok(())
}

/// [`super::Backend::cached_attention`]: `q`/`k`/`v` widths (the cache's for `k`/`v`), one row per
/// chunk position, an existing layer; each chunk within a slot of the cache and its capacity, and
/// no slot twice (a call appends one contiguous run per sequence; two writers of one slot would
/// make the result depend on write order).
pub fn cached_attention(
    q: Dims,
    k: Dims,
    v: Dims,
    chunks: &[SeqChunk],
    s: AttentionShape,
    cache: CacheShape,
    layer: usize,
) -> Result<()> {
    let op = "cached_attention";
    if layer >= cache.layers {
        return invalid(format!("{op}: layer {layer} of a cache of {} layers", cache.layers));
    }
    if s.kv_heads * s.head_dim != cache.width {
        return invalid(format!(
            "{op}: {} key/value heads of width {} for a cache of width {}",
            s.kv_heads, s.head_dim, cache.width
        ));
    }
    let total: usize = chunks.iter().map(|c| c.len).sum();
    qkv(q, k, v, total, total, s, op)?;
    let mut seen = vec![false; cache.slots];
    for c in chunks {
        if c.slot >= cache.slots || c.start + c.len > cache.capacity {
            return invalid(format!(
                "{op}: KV cache overflow: slot {} positions {}..{} (a cache of {} slots of capacity {})",
                c.slot,
                c.start,
                c.start + c.len,
                cache.slots,
                cache.capacity
            ));
        }
        if std::mem::replace(&mut seen[c.slot], true) {
            return invalid(format!("{op}: slot {} appears twice", c.slot));
        }
    }
    Ok(())
}

/// The dimensions of a [`super::RelativePositions`].
pub struct RelativeTables<'a> {
    pub pos_key: Option<Dims>,
    pub pos_query: Option<Dims>,
    pub c2p: &'a [u32],
    pub p2c: &'a [u32],
}

/// [`super::Backend::relative_attention`]: the [`attention`] checks, position tables as wide as
/// `q`, index tables of one odd length covering every relative position of the longest sequence,
/// and every index a row of its table.
pub fn relative_attention(
    q: Dims,
    k: Dims,
    v: Dims,
    lens: &[usize],
    rel: RelativeTables<'_>,
    s: AttentionShape,
) -> Result<()> {
    let op = "relative_attention";
    attention(q, k, v, lens, s, op)?;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let n = rel.c2p.len();
    if n != rel.p2c.len() || n.is_multiple_of(2) || n < (2 * longest).saturating_sub(1) {
        return invalid(format!(
            "{op}: index tables of {} and {} relative positions; sequences of up to {longest} rows need \
             one odd length of at least {}",
            n,
            rel.p2c.len(),
            (2 * longest).saturating_sub(1).max(1)
        ));
    }
    for (name, table, index) in [("pos_key", rel.pos_key, rel.c2p), ("pos_query", rel.pos_query, rel.p2c)] {
        let Some(t) = table else { continue };
        if t.1 != q.1 {
            return invalid(format!("{op}: {name} has {} columns, the queries {}", t.1, q.1));
        }
        if let Some(&bad) = index.iter().find(|&&i| i as usize >= t.0) {
            return invalid(format!("{op}: index {bad} into a {name} table of {} rows", t.0));
        }
    }
    Ok(())
}

/// `argmax` / `sample`: a non-empty vocabulary, and one seed per row when sampling.
pub fn token_choice(logits: Dims, seeds: Option<usize>, op: &str) -> Result<()> {
    if logits.1 == 0 {
        return invalid(format!("{op}: logits of {} rows have no columns", logits.0));
    }
    if let Some(n) = seeds.filter(|&n| n != logits.0) {
        return invalid(format!("{op}: {n} seeds for {} rows", logits.0));
    }
    Ok(())
}
