//! The CPU reference backend: f32 everywhere. GEMMs go through the `gemm` crate (its AVX-512
//! kernels where the CPU has them), attention through one tiled routine (`attention`), the
//! point-wise loops through `simd` (vectorised, the instruction set chosen at run time), and
//! tensor storage is recycled through `pool`, so the hot path of a forward allocates nothing
//! once the first layer has run. This is the twin every other backend is checked against.
use rayon::prelude::*;

use super::{
    argmax_row, sample_row, Activation, AttentionShape, BackendOps, CacheShape, RelativePositions, SamplingParams,
    SeqChunk,
};
use crate::error::{Error, Result};

mod attention;
pub mod pool;
mod relative;
pub(crate) mod simd;
mod skinny;

/// A `[rows, cols]` f32 matrix in host memory, row-major unless it is a weight that
/// [`BackendOps::linear_weight`] stored for `linear` ([`Layout::Transposed`]). Its buffer goes
/// back to [`pool`] when it is dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub data: pool::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub layout: Layout,
}

/// How a [`CpuTensor`]'s `data` holds its `[rows, cols]` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Element `(r, c)` at `r * cols + c`: every tensor but a prepared weight.
    #[default]
    RowMajor,
    /// Element `(r, c)` at `c * rows + r` (`data` holds the transpose): an `nn.Linear` weight
    /// `[out, in]` stored as `[in, out]`, which the GEMM reads as its column-major left operand
    /// without packing it on every call. Only `linear` and `to_host` accept it.
    Transposed,
}

impl CpuTensor {
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::invalid(format!("tensor of {} values cannot be [{rows}, {cols}]", data.len())));
        }
        Ok(Self { data: data.into(), rows, cols, layout: Layout::RowMajor })
    }
    pub fn row(&self, r: usize) -> &[f32] {
        debug_assert_eq!(self.layout, Layout::RowMajor, "row() of a weight stored for linear");
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// `[rows, cols]` row-major → its `[cols, rows]` transpose, in cache-sized tiles, in parallel
/// over column bands.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut dst = vec![0f32; rows * cols];
    if rows == 0 {
        return dst;
    }
    // dst row c (one column of src) is written by the task owning its band of TILE columns.
    dst.par_chunks_mut(TILE * rows).enumerate().for_each(|(band, out)| {
        let c0 = band * TILE;
        let width = out.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let line = &src[r * cols + c0..r * cols + c0 + width];
                for (c, &v) in line.iter().enumerate() {
                    out[c * rows + r] = v;
                }
            }
        }
    });
    dst
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

/// Elements per parallel task of the point-wise ops (smaller tensors run on one thread).
const POINTWISE_CHUNK: usize = 1 << 14;

/// `dst[m×n] = lhs[m×k] · rhs (+ dst if accumulate)`, where `rhs` is given by its strides so
/// that transposed weights need no copy. Without `accumulate`, `dst` is not read.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    n: usize,
    k: usize,
    rhs_cs: isize,
    rhs_rs: isize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let parallelism =
        if m * n * k >= PARALLEL_GEMM_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the slices cover m×n, m×k and the k×n view of rhs given by its strides (checked by
    // the callers' shape tests); gemm writes only dst, and reads it only when accumulating.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            n,
            lhs,
            rhs.as_ptr(),
            (m, n, k),
            (rhs_cs, rhs_rs),
            (if accumulate { 1.0 } else { 0.0 }, 1.0),
            parallelism,
        )
    }
}

/// The one call into gemm: `dst[m×n] = alpha·dst + beta·lhs[m×k]·rhs`, `dst` row-major with row
/// stride `dst_rs`, `lhs` row-major and contiguous, `rhs` a k×n view given by its strides;
/// `alpha = 0` does not read `dst`.
///
/// # Safety
/// `dst` must be valid for writes of rows `0..m` × columns `0..n` at row stride `dst_rs`, `rhs`
/// valid for reads of the k×n view, and no other thread may touch those `dst` elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    lhs: &[f32],
    rhs: *const f32,
    (m, n, k): (usize, usize, usize),
    (rhs_cs, rhs_rs): (isize, isize),
    (alpha, beta): (f32, f32),
    parallelism: gemm::Parallelism,
) {
    debug_assert!(lhs.len() >= m * k);
    // SAFETY: as the caller promised; lhs is m×k row-major inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            alpha != 0.0,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst[m×n] = x[m×k] · w (+ dst if accumulate)` for a weight stored as `wt = wᵀ`, `[k, n]`
/// row-major ([`Layout::Transposed`]). gemm computes the row-major product as its transpose,
/// whose left operand is then `wt` read column-major and contiguous: it streams the weights as
/// they lie instead of packing them on every call (1.1–2× the strided form at 4–257 rows, 768-
/// to 3072-wide weights, one thread). With few rows and several threads gemm's own split is
/// poor, so bands of output columns go to rayon's threads, one single-threaded GEMM each (at 4–32
/// rows on 2 threads: on par with the skinny kernel, 1.2–1.7× gemm's split).
fn linear_transposed(dst: &mut [f32], x: &[f32], wt: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    let threads = rayon::current_num_threads();
    if !(2..=skinny::MAX_ROWS).contains(&m) || threads == 1 || k == 0 || n < 32 * threads {
        gemm_into(dst, x, wt, m, n, k, 1, n as isize, accumulate);
        return;
    }
    let band = n.div_ceil(threads).next_multiple_of(16);
    let out = skinny::Out(dst.as_mut_ptr());
    (0..n.div_ceil(band)).into_par_iter().for_each(|b| {
        let (j0, out) = (b * band, out);
        let cols = band.min(n - j0);
        // SAFETY: columns j0..j0+cols of the m×n dst (row stride n) and of the k×n wt (row
        // stride n) lie inside both slices; only this task writes those dst columns.
        unsafe {
            gemm_raw(
                out.at(j0),
                n,
                x,
                wt.as_ptr().add(j0),
                (m, cols, k),
                (1, n as isize),
                (if accumulate { 1.0 } else { 0.0 }, 1.0),
                gemm::Parallelism::None,
            )
        }
    });
}

/// The CPU reference of [`crate::backend::Backend::attention_kv`] on host slices: query segment
/// `i` attends, without a mask, to every row of key/value segment `i`. Returns `[Σq_lens, heads*hd]`.
/// The arguments must have passed the op's checks.
pub(crate) fn attention_kv_host(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_lens: &[usize],
    kv_lens: &[usize],
    s: AttentionShape,
) -> Vec<f32> {
    debug_assert_eq!(q.len(), q_lens.iter().sum::<usize>() * s.heads * s.head_dim);
    debug_assert_eq!(k.len(), kv_lens.iter().sum::<usize>() * s.kv_heads * s.head_dim);
    let mut out = pool::take(q.len());
    attention::segments(q, k, v, q_lens, kv_lens, s, &mut out);
    out
}

/// The CPU reference of [`crate::backend::Backend::relative_attention`] on host tensors
/// (`Vec<f32>` row-major, the layout of [`CpuTensor::data`]); the arguments must have passed the
/// op's checks. Returns `[Σlens, heads*hd]`.
pub(crate) fn relative_attention_host(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: &[usize],
    rel: RelativePositions<'_, Vec<f32>>,
    s: AttentionShape,
) -> Vec<f32> {
    let host = relative::HostRelative {
        pos_key: rel.pos_key.map(|t| &t[..]),
        pos_query: rel.pos_query.map(|t| &t[..]),
        c2p: rel.c2p,
        p2c: rel.p2c,
    };
    let mut out = pool::take(q.len());
    relative::relative_attention(q, k, v, lens, &host, s, &mut out);
    out
}

pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + simd::exp(-1.702 * x))
}
pub fn silu(x: f32) -> f32 {
    x / (1.0 + simd::exp(-x))
}
/// transformers' `NewGELUActivation` (`gelu_new`), computed in f32 as torch does.
pub fn gelu_tanh(x: f32) -> f32 {
    let inner = (2.0f32 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    0.5 * x * (1.0 + inner.tanh())
}

/// Rows per parallel task for row-wise ops on rows of `cols` values.
fn rows_per_task(cols: usize) -> usize {
    (POINTWISE_CHUNK / cols.max(1)).max(1)
}

/// Layer norm (`bias` given) or RMS norm of one row into `out`, as transformers computes them.
fn norm_row(x: &[f32], out: &mut [f32], g: &[f32], bias: Option<&[f32]>, eps: f32) {
    let cols = x.len() as f32;
    match bias {
        Some(b) => {
            let mean = simd::sum(x) / cols;
            let var = simd::sum_sq_dev(x, mean) / cols;
            simd::normalize(x, mean, 1.0 / (var + eps).sqrt(), g, b, out);
        }
        None => {
            let ms = simd::sum_sq_dev(x, 0.0) / cols;
            simd::normalize(x, 0.0, 1.0 / (ms + eps).sqrt(), g, &[], out);
        }
    }
}

/// The norm of every row of `x` (see [`norm_row`]), in parallel.
fn norm(x: &CpuTensor, g: &CpuTensor, bias: Option<&CpuTensor>, eps: f32) -> Result<CpuTensor> {
    let c = x.cols;
    let mut out = pool::take(x.data.len());
    let b = bias.map(|b| &b.data[..]);
    x.data
        .par_chunks(c.max(1))
        .zip(out.par_chunks_mut(c.max(1)))
        .with_min_len(rows_per_task(c))
        .for_each(|(xr, orow)| norm_row(xr, orow, &g.data, b, eps));
    CpuTensor::new(out, x.rows, c)
}

/// `x += delta`, then the norm of `x` (one pass per row).
fn add_norm(
    x: &mut CpuTensor,
    delta: &CpuTensor,
    g: &CpuTensor,
    bias: Option<&CpuTensor>,
    eps: f32,
) -> Result<CpuTensor> {
    let c = x.cols;
    let mut out = pool::take(x.data.len());
    let b = bias.map(|b| &b.data[..]);
    x.data
        .par_chunks_mut(c.max(1))
        .zip(delta.data.par_chunks(c.max(1)))
        .zip(out.par_chunks_mut(c.max(1)))
        .with_min_len(rows_per_task(c))
        .for_each(|((xr, dr), orow)| {
            simd::add(xr, dr);
            norm_row(xr, orow, &g.data, b, eps);
        });
    CpuTensor::new(out, x.rows, c)
}

impl BackendOps for Cpu {
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

    fn uninit(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        CpuTensor::new(pool::take(rows * cols), rows, cols)
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        CpuTensor::new(pool::take_copy(data), rows, cols)
    }
    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(match t.layout {
            Layout::RowMajor => t.data.to_vec(),
            Layout::Transposed => transpose(&t.data, t.cols, t.rows),
        })
    }
    fn dims(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }
    fn cache_shape(&self, c: &CpuKvCache) -> CacheShape {
        CacheShape { layers: c.k.len(), slots: c.slots, capacity: c.capacity, width: c.width }
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor> {
        if x.layout != Layout::RowMajor {
            return Err(Error::invalid("gather_rows/embedding of a weight stored for linear (see linear_weight)"));
        }
        let c = x.cols;
        let mut data = pool::take(rows.len() * c);
        data.par_chunks_mut(c.max(1)).zip(rows).with_min_len(rows_per_task(c)).for_each(|(dst, &r)| {
            dst.copy_from_slice(x.row(r));
        });
        CpuTensor::new(data, rows.len(), c)
    }

    fn scatter_rows(&self, dst: &mut CpuTensor, rows: &[usize], src: &CpuTensor) -> Result<()> {
        let c = dst.cols;
        for (i, &r) in rows.iter().enumerate() {
            dst.data[r * c..(r + 1) * c].copy_from_slice(src.row(i));
        }
        Ok(())
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor, bias: Option<&CpuTensor>) -> Result<CpuTensor> {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        let mut out = pool::take(m * n);
        if let Some(b) = bias {
            // The GEMM accumulates onto the bias: one pass over the output instead of two.
            for row in out.chunks_mut(n) {
                row.copy_from_slice(&b.data);
            }
        }
        match w.layout {
            Layout::Transposed => linear_transposed(&mut out, &x.data, &w.data, m, n, k, bias.is_some()),
            Layout::RowMajor if m <= skinny::MAX_ROWS && skinny::available() => {
                // Decode-sized: stream the weights once instead of packing them.
                skinny::linear(&x.data, &w.data, &mut out, m, k, n, bias.is_some());
            }
            // rhs = wᵀ: element (kk, j) lives at w[j*k + kk].
            Layout::RowMajor => gemm_into(&mut out, &x.data, &w.data, m, n, k, k as isize, 1, bias.is_some()),
        }
        CpuTensor::new(out, m, n)
    }

    fn linear_weight(&self, w: CpuTensor) -> Result<CpuTensor> {
        if w.layout == Layout::Transposed {
            return Ok(w);
        }
        let CpuTensor { data, rows, cols, .. } = w;
        // Out of the pool's reach: the row-major copy is freed here, not parked for reuse.
        let data = transpose(&data.into_vec(), rows, cols);
        Ok(CpuTensor { data: data.into(), rows, cols, layout: Layout::Transposed })
    }

    fn add_assign(&self, a: &mut CpuTensor, b: &CpuTensor) -> Result<()> {
        a.data
            .par_chunks_mut(POINTWISE_CHUNK)
            .zip(b.data.par_chunks(POINTWISE_CHUNK))
            .for_each(|(x, y)| simd::add(x, y));
        Ok(())
    }

    fn layer_norm(&self, x: &CpuTensor, weight: &CpuTensor, bias: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        norm(x, weight, Some(bias), eps)
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        norm(x, weight, None, eps)
    }

    fn add_layer_norm(
        &self,
        x: &mut CpuTensor,
        delta: &CpuTensor,
        weight: &CpuTensor,
        bias: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor> {
        add_norm(x, delta, weight, Some(bias), eps)
    }

    fn add_rms_norm(&self, x: &mut CpuTensor, delta: &CpuTensor, weight: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        add_norm(x, delta, weight, None, eps)
    }

    fn activation(&self, x: &mut CpuTensor, act: Activation) -> Result<()> {
        let chunks = x.data.par_chunks_mut(POINTWISE_CHUNK);
        match act {
            Activation::QuickGelu => chunks.for_each(simd::quick_gelu),
            Activation::Silu => chunks.for_each(simd::silu),
            Activation::GeluErf => chunks.for_each(|c| c.iter_mut().for_each(|v| *v = gelu_erf(*v))),
            Activation::GeluTanh => chunks.for_each(|c| c.iter_mut().for_each(|v| *v = gelu_tanh(*v))),
            Activation::Tanh => chunks.for_each(|c| c.iter_mut().for_each(|v| *v = v.tanh())),
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        let mut out = pool::take(gate.data.len());
        out.par_chunks_mut(POINTWISE_CHUNK)
            .zip(gate.data.par_chunks(POINTWISE_CHUNK).zip(up.data.par_chunks(POINTWISE_CHUNK)))
            .for_each(|(o, (g, u))| simd::silu_mul(g, u, o));
        CpuTensor::new(out, gate.rows, gate.cols)
    }

    fn rotary(&self, x: &mut CpuTensor, positions: &[usize], head_dim: usize, inv_freq: &[f32]) -> Result<()> {
        let half = head_dim / 2;
        let cols = x.cols;
        x.data.par_chunks_mut(cols.max(1)).zip(positions).with_min_len(rows_per_task(cols)).for_each_init(
            || (Vec::with_capacity(half), Vec::with_capacity(half)),
            |(cos, sin), (row, &pos)| {
                // As transformers: angle = position * inv_freq in f32, then cos/sin in f32.
                cos.clear();
                sin.clear();
                for &f in inv_freq {
                    let (s, c) = (pos as f32 * f).sin_cos();
                    cos.push(c);
                    sin.push(s);
                }
                for head in row.chunks_mut(head_dim) {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * cos[i] - b * sin[i];
                        hi[i] = b * cos[i] + a * sin[i];
                    }
                }
            },
        );
        Ok(())
    }

    fn embedding(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor> {
        let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        self.gather_rows(table, &rows)
    }

    fn patch_embed(&self, pixels: &CpuTensor, channels: usize, patch: usize, weight: &CpuTensor) -> Result<CpuTensor> {
        let (w, h) = (pixels.cols, pixels.rows / channels);
        let (ph, pw) = (h / patch, w / patch);
        let width = channels * patch * patch;
        // im2col: one row per patch in (channel, y, x) order, matching the conv weight's layout.
        let mut cols = pool::take(ph * pw * width);
        for (i, dst) in cols.chunks_mut(width).enumerate() {
            let (py, px) = (i / pw, i % pw);
            for c in 0..channels {
                for y in 0..patch {
                    let row = (c * h + py * patch + y) * w + px * patch;
                    let at = (c * patch + y) * patch;
                    dst[at..at + patch].copy_from_slice(&pixels.data[row..row + patch]);
                }
            }
        }
        let patches = CpuTensor::new(cols, ph * pw, width)?;
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
        let mut out = pool::take(q.data.len());
        attention::segments(&q.data, &k.data, &v.data, lens, lens, s, &mut out);
        CpuTensor::new(out, q.rows, q.cols)
    }

    fn reshape(&self, mut t: CpuTensor, rows: usize, cols: usize) -> Result<CpuTensor> {
        (t.rows, t.cols) = (rows, cols);
        Ok(t)
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
        let out = attention_kv_host(&q.data, &k.data, &v.data, q_lens, kv_lens, s);
        CpuTensor::new(out, q.rows, q.cols)
    }

    fn relative_attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        lens: &[usize],
        rel: RelativePositions<'_, CpuTensor>,
        s: AttentionShape,
    ) -> Result<CpuTensor> {
        let host = relative::HostRelative {
            pos_key: rel.pos_key.map(|t| &t.data[..]),
            pos_query: rel.pos_query.map(|t| &t.data[..]),
            c2p: rel.c2p,
            p2c: rel.p2c,
        };
        let mut out = pool::take(q.data.len());
        relative::relative_attention(&q.data, &k.data, &v.data, lens, &host, s, &mut out);
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
        // One `vec!` per layer (not `vec![vec; layers]`, which clones — writing every page): fresh
        // zeroed allocations are mapped lazily, so slots never used cost no memory.
        let zeroed = || (0..layers).map(|_| vec![0.0f32; size]).collect::<Vec<_>>();
        Ok(CpuKvCache { k: zeroed(), v: zeroed(), slots, capacity, width })
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
        let (w, cap) = (cache.width, cache.capacity);
        let mut row = 0;
        for c in chunks {
            let dst = (c.slot * cap + c.start) * w;
            cache.k[layer][dst..dst + c.len * w].copy_from_slice(&k.data[row * w..(row + c.len) * w]);
            cache.v[layer][dst..dst + c.len * w].copy_from_slice(&v.data[row * w..(row + c.len) * w]);
            row += c.len;
        }
        let mut out = pool::take(q.data.len());
        attention::cached(&q.data, &cache.k[layer], &cache.v[layer], chunks, cap, s, &mut out);
        CpuTensor::new(out, q.rows, q.cols)
    }

    fn argmax(&self, logits: &CpuTensor) -> Result<Vec<u32>> {
        Ok(logits.data.chunks(logits.cols).map(argmax_row).collect())
    }

    fn sample(&self, logits: &CpuTensor, params: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>> {
        Ok(logits.data.chunks(logits.cols).zip(seeds).map(|(row, &seed)| sample_row(row, params, seed)).collect())
    }
}
