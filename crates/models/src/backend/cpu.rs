//! The CPU reference backend: f32 everywhere, GEMMs through the `gemm` crate, the rest as plain
//! loops parallelised with rayon. Clarity beats speed here — this is the twin every other backend
//! is checked against — but it must still run the demo and the tiny fixtures in seconds.
use rayon::prelude::*;

use super::{
    argmax_row, check_attention, check_cached_attention, check_cols, same_dims, sample_row, Activation, AttentionShape,
    Backend, CacheShape, SamplingParams, SeqChunk,
};
use crate::error::{Error, Result};

/// A row-major f32 matrix in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuTensor {
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::invalid(format!("tensor of {} values cannot be [{rows}, {cols}]", data.len())));
        }
        Ok(Self { data, rows, cols })
    }
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Keys and values for `layers × slots`, each slot holding up to `capacity` positions.
pub struct CpuKvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    slots: usize,
    capacity: usize,
    width: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Below this many multiply-adds a GEMM runs on one thread: spawning costs more than it saves.
const PARALLEL_GEMM_WORK: usize = 1 << 18;

/// Query rows per block of the bidirectional attention: small enough to spread a ViT image over
/// the cores, large enough that the per-head GEMMs are efficient.
const ATTENTION_BLOCK_ROWS: usize = 64;

impl super::Matrix for CpuTensor {
    fn rows_cols(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// `dst[m×n] = lhs[m×k] · rhs`, where `rhs` is given by its strides so that transposed weights
/// need no copy.
#[allow(clippy::too_many_arguments)]
fn gemm_into(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize, rhs_cs: isize, rhs_rs: isize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    let parallelism =
        if m * n * k >= PARALLEL_GEMM_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the slices cover m×n, m×k and the k×n view of rhs given by its strides (checked by
    // the callers' shape tests); gemm writes only dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

fn softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

/// One head of attention for one query row: `out = softmax(q·Kᵀ·scale) · V`, where key `j` is
/// `keys[j*stride + offset..][..hd]`.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_keys: usize,
    stride: usize,
    offset: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    scores.clear();
    for j in 0..n_keys {
        let kj = &keys[j * stride + offset..j * stride + offset + hd];
        scores.push(q.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale);
    }
    softmax_in_place(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let vj = &values[j * stride + offset..j * stride + offset + hd];
        for (o, &x) in out.iter_mut().zip(vj) {
            *o += p * x;
        }
    }
}

/// The CPU reference of [`Backend::attention_kv`] on host slices: query segment `i` attends,
/// without a mask, to every row of key/value segment `i`. Returns `[Σq_lens, heads*hd]`.
///
/// Long segments are the norm here (Mllama's vision encoder: 4 tiles × 1608 tokens), so each
/// block of up to `ATTENTION_KV_BLOCK` query rows and each head is two GEMMs — scores
/// `Q_h K_hᵀ` and `softmax(scores) V_h` — with the softmax in f32 in between; blocks run in
/// parallel.
pub fn attention_kv_host(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_lens: &[usize],
    kv_lens: &[usize],
    s: AttentionShape,
) -> Result<Vec<f32>> {
    const ATTENTION_KV_BLOCK: usize = 64;
    let hd = s.head_dim;
    let (qw, kw) = (s.heads * hd, s.kv_heads * hd);
    let (q_total, kv_total) = (q_lens.iter().sum::<usize>(), kv_lens.iter().sum::<usize>());
    if s.kv_heads == 0
        || !s.heads.is_multiple_of(s.kv_heads)
        || q_lens.len() != kv_lens.len()
        || q.len() != q_total * qw
        || k.len() != kv_total * kw
        || v.len() != k.len()
        || q_lens.iter().zip(kv_lens).any(|(&ql, &kl)| ql > 0 && kl == 0)
    {
        return Err(Error::invalid(format!(
            "attention_kv: {} query / {} key values for segments {q_lens:?} / {kv_lens:?} ({} heads, {} kv heads, head_dim {hd})",
            q.len(),
            k.len(),
            s.heads,
            s.kv_heads
        )));
    }
    let group = s.heads / s.kv_heads;
    // Blocks of query rows: (first row, rows, kv start, kv len), never crossing a segment.
    let mut blocks = Vec::new();
    let (mut q_start, mut kv_start) = (0, 0);
    for (&ql, &kl) in q_lens.iter().zip(kv_lens) {
        let mut r = 0;
        while r < ql {
            let n = ATTENTION_KV_BLOCK.min(ql - r);
            blocks.push((q_start + r, n, kv_start, kl));
            r += n;
        }
        q_start += ql;
        kv_start += kl;
    }
    let mut out = vec![0.0f32; q_total * qw];
    let slices = block_rows(&mut out, &blocks, qw);
    slices.into_par_iter().zip(blocks.par_iter()).for_each(|(orow, &(r0, n, st, len))| {
        let (mut qh, mut scores, mut oh) = (vec![0f32; n * hd], vec![0f32; n * len], vec![0f32; n * hd]);
        for h in 0..s.heads {
            let off = (h / group) * hd;
            for i in 0..n {
                qh[i * hd..(i + 1) * hd].copy_from_slice(&q[(r0 + i) * qw + h * hd..(r0 + i) * qw + (h + 1) * hd]);
            }
            // scores[i, j] = q_i · k_j: rhs is K_h viewed as hd × len (column j = key row j).
            gemm_into(&mut scores, &qh, &k[st * kw + off..], n, len, hd, kw as isize, 1);
            for row in scores.chunks_mut(len) {
                for x in row.iter_mut() {
                    *x *= s.scale;
                }
                softmax_in_place(row);
            }
            // out = P · V_h: rhs is V_h viewed as len × hd (row j = value row j).
            gemm_into(&mut oh, &scores, &v[st * kw + off..], n, hd, len, 1, kw as isize);
            for i in 0..n {
                orow[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(&oh[i * hd..(i + 1) * hd]);
            }
        }
    });
    Ok(out)
}

pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
/// transformers' `NewGELUActivation` (`gelu_new`), computed in f32 as torch does.
pub fn gelu_tanh(x: f32) -> f32 {
    let inner = (2.0f32 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    0.5 * x * (1.0 + inner.tanh())
}

/// `out` split into the consecutive row ranges of attention blocks `(first row, rows, _, _)`,
/// `width` values a row, so each block's rows can be written in parallel.
fn block_rows<'a>(out: &'a mut [f32], blocks: &[(usize, usize, usize, usize)], width: usize) -> Vec<&'a mut [f32]> {
    let mut slices = Vec::with_capacity(blocks.len());
    let mut rest = out;
    for &(_, n, _, _) in blocks {
        let (head, tail) = rest.split_at_mut(n * width);
        slices.push(head);
        rest = tail;
    }
    slices
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    /// `MemAvailable` of /proc/meminfo (Linux); `None` elsewhere.
    fn free_memory(&self) -> Option<usize> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        CpuTensor::new(data.to_vec(), rows, cols)
    }
    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }
    fn dims(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r >= x.rows {
                return Err(Error::invalid(format!("gather_rows: row {r} of {}", x.rows)));
            }
            data.extend_from_slice(x.row(r));
        }
        CpuTensor::new(data, rows.len(), x.cols)
    }

    fn scatter_rows(&self, dst: &mut CpuTensor, rows: &[usize], src: &CpuTensor) -> Result<()> {
        check_cols(src, dst.cols, "scatter_rows")?;
        if src.rows != rows.len() {
            return Err(Error::invalid(format!("scatter_rows: {} rows for {} targets", src.rows, rows.len())));
        }
        let c = dst.cols;
        for (i, &r) in rows.iter().enumerate() {
            if r >= dst.rows {
                return Err(Error::invalid(format!("scatter_rows: row {r} of {}", dst.rows)));
            }
            dst.data[r * c..(r + 1) * c].copy_from_slice(src.row(i));
        }
        Ok(())
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor, bias: Option<&CpuTensor>) -> Result<CpuTensor> {
        check_cols(x, w.cols, "linear")?;
        let (m, k, n) = (x.rows, x.cols, w.rows);
        let mut out = vec![0.0f32; m * n];
        // rhs = wᵀ: element (kk, j) lives at w[j*k + kk].
        gemm_into(&mut out, &x.data, &w.data, m, n, k, k as isize, 1);
        if let Some(b) = bias {
            if b.data.len() != n {
                return Err(Error::invalid(format!("linear: bias of {} for {n} outputs", b.data.len())));
            }
            for row in out.chunks_mut(n) {
                for (o, &bb) in row.iter_mut().zip(&b.data) {
                    *o += bb;
                }
            }
        }
        CpuTensor::new(out, m, n)
    }

    fn add_assign(&self, a: &mut CpuTensor, b: &CpuTensor) -> Result<()> {
        same_dims(a, b, "add")?;
        a.data.iter_mut().zip(&b.data).for_each(|(x, y)| *x += y);
        Ok(())
    }

    fn layer_norm(&self, x: &CpuTensor, weight: &CpuTensor, bias: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        let c = x.cols;
        if weight.data.len() != c || bias.data.len() != c {
            return Err(Error::invalid(format!("layer_norm: parameters do not match width {c}")));
        }
        let mut out = x.data.clone();
        out.par_chunks_mut(c.max(1)).for_each(|row| {
            let mean = row.iter().sum::<f32>() / c as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&weight.data).zip(&bias.data) {
                *v = (*v - mean) * inv * g + b;
            }
        });
        CpuTensor::new(out, x.rows, c)
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        let c = x.cols;
        if weight.data.len() != c {
            return Err(Error::invalid(format!("rms_norm: weight does not match width {c}")));
        }
        let mut out = x.data.clone();
        out.par_chunks_mut(c.max(1)).for_each(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / c as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for (v, g) in row.iter_mut().zip(&weight.data) {
                *v = g * (*v * inv);
            }
        });
        CpuTensor::new(out, x.rows, c)
    }

    fn activation(&self, x: &mut CpuTensor, act: Activation) -> Result<()> {
        let f: fn(f32) -> f32 = match act {
            Activation::QuickGelu => quick_gelu,
            Activation::GeluErf => gelu_erf,
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
            Activation::Tanh => f32::tanh,
        };
        x.data.par_iter_mut().for_each(|v| *v = f(*v));
        Ok(())
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        same_dims(gate, up, "silu_mul")?;
        let data = gate.data.par_iter().zip(&up.data).map(|(&g, &u)| silu(g) * u).collect();
        CpuTensor::new(data, gate.rows, gate.cols)
    }

    fn rotary(&self, x: &mut CpuTensor, positions: &[usize], head_dim: usize, inv_freq: &[f32]) -> Result<()> {
        let half = head_dim / 2;
        if !head_dim.is_multiple_of(2)
            || inv_freq.len() != half
            || !x.cols.is_multiple_of(head_dim)
            || positions.len() != x.rows
        {
            return Err(Error::invalid(format!(
                "rotary: head_dim {head_dim}, {} frequencies, {} columns, {} positions for {} rows",
                inv_freq.len(),
                x.cols,
                positions.len(),
                x.rows
            )));
        }
        let cols = x.cols;
        x.data.par_chunks_mut(cols).zip(positions).for_each(|(row, &pos)| {
            // As transformers: angle = position * inv_freq in f32, then cos/sin in f32.
            let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
                .iter()
                .map(|&f| (pos as f32 * f).cos())
                .zip(inv_freq.iter().map(|&f| (pos as f32 * f).sin()))
                .unzip();
            for head in row.chunks_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = b * cos[i] + a * sin[i];
                }
            }
        });
        Ok(())
    }

    fn embedding(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor> {
        let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        if let Some(&bad) = rows.iter().find(|&&r| r >= table.rows) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {}", table.rows)));
        }
        self.gather_rows(table, &rows)
    }

    fn patch_embed(&self, pixels: &CpuTensor, channels: usize, patch: usize, weight: &CpuTensor) -> Result<CpuTensor> {
        let (w, h) = (pixels.cols, pixels.rows / channels.max(1));
        if channels == 0 || patch == 0 || pixels.rows != channels * h || h % patch != 0 || w % patch != 0 {
            return Err(Error::invalid(format!(
                "patch_embed: image [{channels}x{h}x{w}] is not a whole number of {patch}-pixel patches"
            )));
        }
        check_cols(weight, channels * patch * patch, "patch_embed weight")?;
        let (ph, pw) = (h / patch, w / patch);
        // im2col: one row per patch in (channel, y, x) order, matching the conv weight's layout.
        let mut cols = Vec::with_capacity(ph * pw * channels * patch * patch);
        for py in 0..ph {
            for px in 0..pw {
                for c in 0..channels {
                    for y in 0..patch {
                        let row = (c * h + py * patch + y) * w + px * patch;
                        cols.extend_from_slice(&pixels.data[row..row + patch]);
                    }
                }
            }
        }
        let patches = CpuTensor::new(cols, ph * pw, channels * patch * patch)?;
        self.linear(&patches, weight, None)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        lens: &[usize],
        s: AttentionShape,
    ) -> Result<CpuTensor> {
        check_attention(q, k, v, lens, s)?;
        let hd = s.head_dim;
        let group = s.heads / s.kv_heads;
        let (kw, qw) = (k.cols, q.cols);
        // Blocks of query rows that never cross a sequence: (first row, rows, sequence start, length).
        let mut blocks = Vec::new();
        let mut start = 0;
        for &len in lens {
            let mut r = 0;
            while r < len {
                let n = ATTENTION_BLOCK_ROWS.min(len - r);
                blocks.push((start + r, n, start, len));
                r += n;
            }
            start += len;
        }
        let mut out = vec![0.0f32; q.rows * qw];
        let slices = block_rows(&mut out, &blocks, qw);
        // Per block and head, two small GEMMs on strided views (no copies):
        // scores = scale · Q_h K_hᵀ, softmax per row, out_h = P V_h.
        slices.into_par_iter().zip(blocks.par_iter()).for_each(|(oblk, &(r0, n, st, len))| {
            let mut scores = vec![0.0f32; n * len];
            for h in 0..s.heads {
                let kv_off = (h / group) * hd;
                let qh = &q.data[r0 * qw + h * hd..];
                let kh = &k.data[st * kw + kv_off..];
                let vh = &v.data[st * kw + kv_off..];
                // SAFETY: every view stays inside its slice: Q rows r0..r0+n, K/V rows st..st+len,
                // columns of head h; `scores` is n×len; the output view is rows of this block.
                unsafe {
                    gemm::gemm(
                        n,
                        len,
                        hd,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        qh.as_ptr(),
                        1,
                        qw as isize,
                        kh.as_ptr(),
                        kw as isize,
                        1,
                        0.0,
                        s.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                scores.chunks_mut(len).for_each(softmax_in_place);
                // SAFETY: as above; the destination is columns h*hd.. of this block's rows.
                unsafe {
                    gemm::gemm(
                        n,
                        hd,
                        len,
                        oblk[h * hd..].as_mut_ptr(),
                        1,
                        qw as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        vh.as_ptr(),
                        1,
                        kw as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        CpuTensor::new(out, q.rows, q.cols)
    }

    fn reshape(&self, t: CpuTensor, rows: usize, cols: usize) -> Result<CpuTensor> {
        if t.rows * t.cols != rows * cols {
            return Err(Error::invalid(format!("reshape: [{}, {}] has no [{rows}, {cols}] view", t.rows, t.cols)));
        }
        CpuTensor::new(t.data, rows, cols)
    }

    fn attention_kv(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        q_lens: &[usize],
        kv_lens: &[usize],
        s: AttentionShape,
    ) -> Result<CpuTensor> {
        check_cols(q, s.heads * s.head_dim, "attention_kv q")?;
        check_cols(k, s.kv_heads * s.head_dim, "attention_kv k")?;
        same_dims(k, v, "attention_kv k/v")?;
        let out = attention_kv_host(&q.data, &k.data, &v.data, q_lens, kv_lens, s)?;
        CpuTensor::new(out, q.rows, q.cols)
    }

    fn kv_cache(
        &self,
        layers: usize,
        slots: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<CpuKvCache> {
        let width = kv_heads * head_dim;
        let size = slots * capacity * width;
        Ok(CpuKvCache { k: vec![vec![0.0; size]; layers], v: vec![vec![0.0; size]; layers], slots, capacity, width })
    }

    fn cached_attention(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        chunks: &[SeqChunk],
        s: AttentionShape,
    ) -> Result<CpuTensor> {
        let hd = s.head_dim;
        let shape =
            CacheShape { layers: cache.k.len(), slots: cache.slots, capacity: cache.capacity, width: cache.width };
        check_cached_attention(q, k, v, chunks, s, shape, layer)?;
        let total: usize = chunks.iter().map(|c| c.len).sum();
        let (w, cap) = (cache.width, cache.capacity);
        let mut row = 0;
        for c in chunks {
            let dst = (c.slot * cap + c.start) * w;
            cache.k[layer][dst..dst + c.len * w].copy_from_slice(&k.data[row * w..(row + c.len) * w]);
            cache.v[layer][dst..dst + c.len * w].copy_from_slice(&v.data[row * w..(row + c.len) * w]);
            row += c.len;
        }
        // Row r of q belongs to chunk `owner[r]` at offset `offset[r]`.
        let mut owner = Vec::with_capacity(total);
        for (i, c) in chunks.iter().enumerate() {
            owner.extend((0..c.len).map(|o| (i, o)));
        }
        let group = s.heads / s.kv_heads;
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        let mut out = vec![0.0f32; q.rows * q.cols];
        out.par_chunks_mut(q.cols).enumerate().for_each_init(Vec::new, |scores, (r, orow)| {
            let (ci, off) = owner[r];
            let c = chunks[ci];
            let n_keys = c.start + off + 1;
            let base = c.slot * cap * w;
            for h in 0..s.heads {
                let qh = &q.data[r * q.cols + h * hd..r * q.cols + (h + 1) * hd];
                let keys = &kc[base..base + n_keys * w];
                let vals = &vc[base..base + n_keys * w];
                attend_one(
                    qh,
                    keys,
                    vals,
                    n_keys,
                    w,
                    (h / group) * hd,
                    s.scale,
                    scores,
                    &mut orow[h * hd..(h + 1) * hd],
                );
            }
        });
        CpuTensor::new(out, q.rows, q.cols)
    }

    fn argmax(&self, logits: &CpuTensor) -> Result<Vec<u32>> {
        Ok(logits.data.chunks(logits.cols.max(1)).map(argmax_row).collect())
    }

    fn sample(&self, logits: &CpuTensor, params: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>> {
        if seeds.len() != logits.rows {
            return Err(Error::invalid(format!("sample: {} seeds for {} rows", seeds.len(), logits.rows)));
        }
        Ok(logits
            .data
            .chunks(logits.cols.max(1))
            .zip(seeds)
            .map(|(row, &seed)| sample_row(row, params, seed))
            .collect())
    }
}
