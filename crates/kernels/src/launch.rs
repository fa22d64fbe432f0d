//! Typed launchers: one method of [`Gpu`] per kernel of `kernels-cu/`. The arguments of a model's
//! op are validated once, above this crate (`icet_models::backend`'s checked layer); a launcher
//! checks only what keeps a raw launch memory-safe — dtypes, that every buffer is large enough for
//! the shape it is given, that every index and descriptor stays inside its buffer, that no two
//! threads write one element (a device data race) and that the grid fits — so a wrong call is an
//! error, never an out-of-bounds access on the device. Preconditions that only affect the values
//! computed are documented on each launcher instead. Block sizes here must match the constants
//! named in the .cu files.
use crate::device::{Args, DevPtr, LaunchConfig};
use crate::gpu::{err, DType, DevBuf, Gpu, Result};

/// Activation codes of `pointwise.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    QuickGelu = 0,
    GeluErf = 1,
    Silu = 2,
    GeluTanh = 3,
    Tanh = 4,
}

/// One sequence of a flash-attention call (`SeqDesc` in attention.cu): `q_len` packed query rows
/// from `q_start`; its keys are rows `k_base..k_base + n_keys` of the key/value buffers; causal
/// means query `i` sees keys `0..=n_keys - q_len + i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqDesc {
    pub q_start: i32,
    pub q_len: i32,
    pub k_base: i32,
    pub n_keys: i32,
    pub causal: i32,
    pub pad: [i32; 3],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Norm {
    Layer,
    Rms,
}

/// One query row of a rows-attention call: its keys are rows `k_base..k_base + n_keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnRow {
    pub k_base: i32,
    pub n_keys: i32,
}

/// One query row of a relative-attention call: its sequence's keys are rows
/// `k_base..k_base + n_keys`, and the query is at position `pos` of that sequence (key `j` is at
/// relative position `pos - j`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelRow {
    pub k_base: i32,
    pub n_keys: i32,
    pub pos: i32,
}

/// The relative-position terms of a relative-attention call: position tables (buffer and rows,
/// `[rows, heads*head_dim]`) and the index tables (by relative position `d + center`, `center =
/// (len - 1) / 2`) into them; an absent term's table is not read.
#[derive(Clone, Copy)]
pub struct RelTables<'a> {
    pub pos_key: Option<(&'a DevBuf, usize)>,
    pub pos_query: Option<(&'a DevBuf, usize)>,
    pub c2p: &'a [i32],
    pub p2c: &'a [i32],
}

const ELEMENTWISE_THREADS: u32 = 256;
const NORM_THREADS: u32 = 256; // norms.cu NORM_THREADS
const ARGMAX_THREADS: u32 = 512; // sampling.cu ARGMAX_THREADS
const SAMPLE_THREADS: u32 = 1024;
const FLASH_THREADS: u32 = 128; // attention.cu FLASH_THREADS
const FLASH_BM: usize = 64; // attention.cu BM
const ROWS_THREADS: u32 = 128; // attention.cu ROWS_THREADS
const ROWS_MAX_HD: usize = 256; // attention.cu MAX_HD
const REL_THREADS: u32 = 128; // attention.cu REL_THREADS

/// Head dims the tensor-core kernel is instantiated for.
pub const FLASH_HEAD_DIMS: [usize; 3] = [64, 80, 128];

/// Dynamic shared memory of `flash_attention<T, HD>` (attention.cu `FlashSmem::BYTES`).
pub fn flash_smem_bytes(dtype: DType, hd: usize) -> usize {
    let (bm, bn) = (64, 64);
    let (ldq, ldp, lds, ldo) = (hd + 8, bn + 8, bn + 4, hd + 4);
    (bm * ldq + 2 * bn * ldq + bm * ldp) * dtype.size() + bm * lds * 4 + bm * ldo * 4
}

fn need(buf: &DevBuf, dtype: DType, len: usize, what: &str) -> Result<()> {
    if buf.dtype != dtype {
        return Err(err(format!("{what}: buffer is {}, expected {dtype}", buf.dtype)));
    }
    if buf.len < len {
        return Err(err(format!("{what}: buffer of {} elements, needs {len}", buf.len)));
    }
    Ok(())
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| err(format!("{what} = {v} does not fit the kernels' 32-bit indices")))
}

fn cfg(grid: (u32, u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid, block: (block, 1, 1), shared_mem_bytes: smem }
}

/// Threads for one row of `cols` columns: a multiple of 32, at most 256.
fn row_block(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 256) as u32
}

impl Gpu {
    fn elementwise_grid(&self, n: usize) -> (u32, u32, u32) {
        let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).clamp(1, self.sm_count() as usize * 32);
        (blocks as u32, 1, 1)
    }

    fn name(kernel: &str, d: DType) -> String {
        format!("{kernel}_{}", d.suffix())
    }

    /// `dst = src` converted between storage types (f32 ↔ bf16/f16; same dtype copies).
    pub fn cast(&self, src: &DevBuf, dst: &mut DevBuf) -> Result<()> {
        if src.len != dst.len {
            return Err(err(format!("cast: {} elements into {}", src.len, dst.len)));
        }
        if src.dtype == dst.dtype {
            return self.copy(src, dst);
        }
        if src.dtype != DType::F32 && dst.dtype != DType::F32 {
            return Err(err(format!("cast: {} to {} is not supported (go through f32)", src.dtype, dst.dtype)));
        }
        let n = src.len;
        if n == 0 {
            return Ok(());
        }
        let f = format!("cast_{}_to_{}", src.dtype.suffix(), dst.dtype.suffix());
        let (o, i, n64) = (dst.ptr(), src.ptr(), n as i64);
        let mut b = Args::new();
        b.arg(&o).arg(&i).arg(&n64);
        unsafe { self.launch(&f, cfg(self.elementwise_grid(n), ELEMENTWISE_THREADS, 0), &mut b) }?;
        Ok(())
    }

    /// `a += b`.
    pub fn add_assign(&self, a: &mut DevBuf, b: &DevBuf) -> Result<()> {
        let (d, n) = (a.dtype, a.len);
        need(b, d, n, "add_assign b")?;
        if n == 0 {
            return Ok(());
        }
        let f = Self::name("add_assign", d);
        let (pa, pb, n64) = (a.ptr(), b.ptr(), n as i64);
        let mut l = Args::new();
        l.arg(&pa).arg(&pb).arg(&n64);
        unsafe { self.launch(&f, cfg(self.elementwise_grid(n), ELEMENTWISE_THREADS, 0), &mut l) }?;
        Ok(())
    }

    /// `x = act(x)` for the first `n` elements.
    pub fn activation(&self, x: &mut DevBuf, n: usize, act: Act) -> Result<()> {
        need(x, x.dtype, n, "activation")?;
        if n == 0 {
            return Ok(());
        }
        let f = Self::name("activation", x.dtype);
        let (p, n64, code) = (x.ptr(), n as i64, act as i32);
        let mut l = Args::new();
        l.arg(&p).arg(&n64).arg(&code);
        unsafe { self.launch(&f, cfg(self.elementwise_grid(n), ELEMENTWISE_THREADS, 0), &mut l) }?;
        Ok(())
    }

    /// `out = silu(gate) * up` over `n` elements.
    pub fn silu_mul(&self, out: &mut DevBuf, gate: &DevBuf, up: &DevBuf, n: usize) -> Result<()> {
        let d = out.dtype;
        need(out, d, n, "silu_mul out")?;
        need(gate, d, n, "silu_mul gate")?;
        need(up, d, n, "silu_mul up")?;
        if n == 0 {
            return Ok(());
        }
        let f = Self::name("silu_mul", d);
        let (o, g, u, n64) = (out.ptr(), gate.ptr(), up.ptr(), n as i64);
        let mut l = Args::new();
        l.arg(&o).arg(&g).arg(&u).arg(&n64);
        unsafe { self.launch(&f, cfg(self.elementwise_grid(n), ELEMENTWISE_THREADS, 0), &mut l) }?;
        Ok(())
    }

    /// Rotary embedding in place on `x = [rows, heads * head_dim]`, row `r` at `positions[r]`.
    pub fn rotary(
        &self,
        x: &mut DevBuf,
        positions: &[i32],
        inv_freq: &[f32],
        heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let rows = positions.len();
        if !head_dim.is_multiple_of(2) || inv_freq.len() != head_dim / 2 {
            return Err(err(format!("rotary: head_dim {head_dim} with {} frequencies", inv_freq.len())));
        }
        need(x, x.dtype, rows * heads * head_dim, "rotary x")?;
        if rows * heads * head_dim == 0 {
            return Ok(());
        }
        let pos = self.upload_raw(positions)?;
        let freq = self.upload(DType::F32, inv_freq)?;
        let ppos = pos.ptr();
        let f = Self::name("rotary", x.dtype);
        let (p, fp) = (x.ptr(), freq.ptr());
        let (rows64, h, hd) = (rows as i64, i32_of(heads, "heads")?, i32_of(head_dim, "head_dim")?);
        let mut l = Args::new();
        l.arg(&p).arg(&ppos).arg(&fp).arg(&rows64).arg(&h).arg(&hd);
        let pairs = rows * heads * head_dim / 2;
        unsafe { self.launch(&f, cfg(self.elementwise_grid(pairs), ELEMENTWISE_THREADS, 0), &mut l) }?;
        Ok(())
    }

    /// `out = layer_norm(x)` over rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        out: &mut DevBuf,
        x: &DevBuf,
        w: &DevBuf,
        b: &DevBuf,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.norm(Norm::Layer, out, x.ptr(), x, None, w, Some(b), rows, cols, eps)
    }

    /// The pre-norm block's residual step: `x += delta; out = layer_norm(x)` in one pass.
    #[allow(clippy::too_many_arguments)]
    pub fn add_layer_norm(
        &self,
        out: &mut DevBuf,
        x: &mut DevBuf,
        delta: &DevBuf,
        w: &DevBuf,
        b: &DevBuf,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.norm(Norm::Layer, out, x.ptr(), x, Some(delta), w, Some(b), rows, cols, eps)
    }

    /// `out = rms_norm(x)` over rows of `cols`.
    pub fn rms_norm(&self, out: &mut DevBuf, x: &DevBuf, w: &DevBuf, rows: usize, cols: usize, eps: f32) -> Result<()> {
        self.norm(Norm::Rms, out, x.ptr(), x, None, w, None, rows, cols, eps)
    }

    /// `x += delta; out = rms_norm(x)` in one pass.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm(
        &self,
        out: &mut DevBuf,
        x: &mut DevBuf,
        delta: &DevBuf,
        w: &DevBuf,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.norm(Norm::Rms, out, x.ptr(), x, Some(delta), w, None, rows, cols, eps)
    }

    /// Shared body of the four norm launchers. `x_ptr` is `x`'s address, taken by the caller
    /// that holds it mutably when the kernel writes it back (the fused residual add).
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        kind: Norm,
        out: &mut DevBuf,
        x_ptr: DevPtr,
        x: &DevBuf,
        delta: Option<&DevBuf>,
        w: &DevBuf,
        b: Option<&DevBuf>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let d = x.dtype;
        need(x, d, rows * cols, "norm x")?;
        need(out, d, rows * cols, "norm out")?;
        need(w, d, cols, "norm weight")?;
        if let Some(b) = b {
            need(b, d, cols, "norm bias")?;
        }
        if let Some(dl) = delta {
            need(dl, d, rows * cols, "norm residual")?;
        }
        if rows == 0 {
            return Ok(());
        }
        let c = i32_of(cols, "cols")?;
        let grid = (i32_of(rows, "rows")? as u32, 1, 1);
        let (po, pw) = (out.ptr(), w.ptr());
        let pb = b.map_or(DevPtr::NULL, |b| b.ptr());
        let pd = delta.map_or(DevPtr::NULL, |d| d.ptr());
        let kernel = match (kind, delta.is_some()) {
            (Norm::Layer, false) => "layer_norm",
            (Norm::Layer, true) => "add_layer_norm",
            (Norm::Rms, false) => "rms_norm",
            (Norm::Rms, true) => "add_rms_norm",
        };
        let f = Self::name(kernel, d);
        let mut l = Args::new();
        l.arg(&po).arg(&x_ptr);
        if delta.is_some() {
            l.arg(&pd);
        }
        l.arg(&pw);
        if kind == Norm::Layer {
            l.arg(&pb);
        }
        l.arg(&c).arg(&eps);
        unsafe { self.launch(&f, cfg(grid, NORM_THREADS, 0), &mut l) }?;
        Ok(())
    }

    /// `out[i] = src[idx[i]]` for rows of `cols`; `src_rows` bounds the indices.
    pub fn gather_rows(
        &self,
        out: &mut DevBuf,
        src: &DevBuf,
        src_rows: usize,
        idx: &[usize],
        cols: usize,
    ) -> Result<()> {
        let d = src.dtype;
        need(src, d, src_rows * cols, "gather_rows src")?;
        need(out, d, idx.len() * cols, "gather_rows out")?;
        if let Some(&bad) = idx.iter().find(|&&r| r >= src_rows) {
            return Err(err(format!("gather_rows: row {bad} of {src_rows}")));
        }
        self.rows_kernel("gather_rows", out.ptr(), src.ptr(), d, idx, cols)
    }

    /// `dst[idx[i]] = src[i]`; `dst_rows` bounds the indices, which must be distinct.
    pub fn scatter_rows(
        &self,
        dst: &mut DevBuf,
        dst_rows: usize,
        src: &DevBuf,
        idx: &[usize],
        cols: usize,
    ) -> Result<()> {
        let d = dst.dtype;
        need(dst, d, dst_rows * cols, "scatter_rows dst")?;
        need(src, d, idx.len() * cols, "scatter_rows src")?;
        if let Some(&bad) = idx.iter().find(|&&r| r >= dst_rows) {
            return Err(err(format!("scatter_rows: row {bad} of {dst_rows}")));
        }
        let mut seen = idx.to_vec();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(err("scatter_rows: a row is written twice"));
        }
        self.rows_kernel("scatter_rows", dst.ptr(), src.ptr(), d, idx, cols)
    }

    fn rows_kernel(&self, kernel: &str, a: DevPtr, b: DevPtr, d: DType, idx: &[usize], cols: usize) -> Result<()> {
        if idx.is_empty() || cols == 0 {
            return Ok(());
        }
        let idx32: Vec<i32> = idx.iter().map(|&i| i32_of(i, "row")).collect::<Result<_>>()?;
        let dev_idx = self.upload_raw(&idx32)?;
        let pidx = dev_idx.ptr();
        let f = Self::name(kernel, d);
        let c = cols as i64;
        let mut l = Args::new();
        l.arg(&a).arg(&b).arg(&pidx).arg(&c);
        let grid = (i32_of(idx.len(), "rows")? as u32, 1, 1);
        unsafe { self.launch(&f, cfg(grid, row_block(cols), 0), &mut l) }?;
        Ok(())
    }

    /// The capture hook's copy: rows `drop..tokens` of each of `images` sequences of `src` into
    /// consecutive rows of `dst` from row `dst_row0` (`dst_rows` rows in all).
    #[allow(clippy::too_many_arguments)]
    pub fn capture_rows(
        &self,
        dst: &mut DevBuf,
        dst_rows: usize,
        dst_row0: usize,
        src: &DevBuf,
        images: usize,
        tokens: usize,
        drop: usize,
        cols: usize,
    ) -> Result<()> {
        let d = src.dtype;
        if drop > tokens {
            return Err(err(format!("capture_rows: dropping {drop} of {tokens} tokens")));
        }
        let kept = images * (tokens - drop);
        need(src, d, images * tokens * cols, "capture_rows src")?;
        need(dst, d, dst_rows * cols, "capture_rows dst")?;
        if dst_row0 + kept > dst_rows {
            return Err(err(format!("capture_rows: rows {dst_row0}..{} of {dst_rows}", dst_row0 + kept)));
        }
        if kept == 0 || cols == 0 {
            return Ok(());
        }
        let f = Self::name("capture_rows", d);
        let (pd, ps) = (dst.ptr(), src.ptr());
        let (t, dr, c, r0) = (i32_of(tokens, "tokens")?, drop as i32, cols as i64, dst_row0 as i64);
        let mut l = Args::new();
        l.arg(&pd).arg(&ps).arg(&t).arg(&dr).arg(&c).arg(&r0);
        unsafe { self.launch(&f, cfg((i32_of(kept, "rows")? as u32, 1, 1), row_block(cols), 0), &mut l) }?;
        Ok(())
    }

    /// ViT patches as rows: `pixels` `[channels*height, width]` → `out`
    /// `[(height/patch)*(width/patch), channels*patch*patch]`.
    pub fn im2col(
        &self,
        out: &mut DevBuf,
        pixels: &DevBuf,
        channels: usize,
        height: usize,
        width: usize,
        patch: usize,
    ) -> Result<()> {
        if patch == 0 || !height.is_multiple_of(patch) || !width.is_multiple_of(patch) {
            return Err(err(format!("im2col: {height}x{width} is not a whole number of {patch}-pixel patches")));
        }
        let d = pixels.dtype;
        let n = channels * height * width;
        need(pixels, d, n, "im2col pixels")?;
        need(out, d, n, "im2col out")?;
        if n == 0 {
            return Ok(());
        }
        let f = Self::name("im2col", d);
        let (po, pp) = (out.ptr(), pixels.ptr());
        let (c, h, w, p) =
            (i32_of(channels, "channels")?, i32_of(height, "height")?, i32_of(width, "width")?, patch as i32);
        let mut l = Args::new();
        l.arg(&po).arg(&pp).arg(&c).arg(&h).arg(&w).arg(&p);
        unsafe { self.launch(&f, cfg(self.elementwise_grid(n), ELEMENTWISE_THREADS, 0), &mut l) }?;
        Ok(())
    }

    /// `CLIPVisionEmbeddings` assembly: per image, `[cls; patches] + positions`.
    #[allow(clippy::too_many_arguments)]
    pub fn vit_assemble(
        &self,
        out: &mut DevBuf,
        patches: &DevBuf,
        cls: &DevBuf,
        pos: &DevBuf,
        images: usize,
        tokens: usize,
        cols: usize,
    ) -> Result<()> {
        let d = patches.dtype;
        if tokens == 0 {
            return Err(err("vit_assemble: zero tokens"));
        }
        need(patches, d, images * (tokens - 1) * cols, "vit_assemble patches")?;
        need(cls, d, cols, "vit_assemble class embedding")?;
        need(pos, d, tokens * cols, "vit_assemble positions")?;
        need(out, d, images * tokens * cols, "vit_assemble out")?;
        if images == 0 || cols == 0 {
            return Ok(());
        }
        let f = Self::name("vit_assemble", d);
        let (po, pp, pc, ppos) = (out.ptr(), patches.ptr(), cls.ptr(), pos.ptr());
        let (t, c) = (i32_of(tokens, "tokens")?, cols as i64);
        let mut l = Args::new();
        l.arg(&po).arg(&pp).arg(&pc).arg(&ppos).arg(&t).arg(&c);
        unsafe { self.launch(&f, cfg((i32_of(images * tokens, "rows")? as u32, 1, 1), row_block(cols), 0), &mut l) }?;
        Ok(())
    }

    /// `out[m×n] = x[m×k] · w[n×k]ᵀ (+ bias[n])` through cuBLASLt.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        out: &mut DevBuf,
        x: &DevBuf,
        w: &DevBuf,
        bias: Option<&DevBuf>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let d = x.dtype;
        need(x, d, m * k, "linear x")?;
        need(w, d, n * k, "linear weight")?;
        need(out, d, m * n, "linear out")?;
        if let Some(b) = bias {
            need(b, d, n, "linear bias")?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // cuBLASLt rejects k = 0; the product is zero (plus the bias).
            let zeros = vec![0.0f32; m * n];
            let z = self.upload_f32(d, &zeros)?;
            self.copy(&z, out)?;
            if let Some(b) = bias {
                let rows: Vec<usize> = vec![0; m];
                let mut bb = self.alloc(d, m * n)?;
                self.gather_rows(&mut bb, b, 1, &rows, n)?;
                self.add_assign(out, &bb)?;
            }
            return Ok(());
        }
        let op = crate::blas::linear_op(d, out.ptr(), x.ptr(), w.ptr(), bias.map(|b| b.ptr()), m, n, k);
        // SAFETY: every operand's size was checked above against the shape.
        unsafe { self.matmul(&op) }
    }

    /// Index of the largest value of each of `rows` rows (first on ties, NaN never wins; 0 for
    /// rows of no columns).
    pub fn argmax(&self, logits: &DevBuf, rows: usize, cols: usize) -> Result<Vec<u32>> {
        need(logits, logits.dtype, rows * cols, "argmax logits")?;
        if rows == 0 {
            return Ok(vec![]);
        }
        let out = self.upload_raw(&vec![-1i32; rows])?;
        let f = Self::name("argmax", logits.dtype);
        let (po, pl, c) = (out.ptr(), logits.ptr(), i32_of(cols, "cols")?);
        let mut l = Args::new();
        l.arg(&po).arg(&pl).arg(&c);
        unsafe { self.launch(&f, cfg((i32_of(rows, "rows")? as u32, 1, 1), ARGMAX_THREADS, 0), &mut l) }?;
        Ok(self.download_i32(&out, rows)?.into_iter().map(|v| v as u32).collect())
    }

    /// Seeded nucleus sampling, one token per row; `uniforms[r]` is row r's draw in `[0, 1)`
    /// (`icet_models::backend::uniform_from_seed`). `temperature` must be > 0 (greedy choice is
    /// [`Gpu::argmax`]); the vocabulary must not be empty, since the kernel reads its first entry.
    pub fn sample_top_p(
        &self,
        logits: &DevBuf,
        rows: usize,
        cols: usize,
        uniforms: &[f64],
        temperature: f32,
        top_p: f32,
    ) -> Result<Vec<u32>> {
        need(logits, logits.dtype, rows * cols, "sample logits")?;
        if uniforms.len() != rows {
            return Err(err(format!("sample: {} draws for {rows} rows", uniforms.len())));
        }
        if cols == 0 {
            return Err(err("sample: an empty vocabulary"));
        }
        if rows == 0 {
            return Ok(vec![]);
        }
        let n2 = cols.next_power_of_two();
        let out = self.upload_raw(&vec![-1i32; rows])?;
        let u = self.upload_raw(uniforms)?;
        let probs = self.alloc_raw(rows * n2 * 8)?;
        let index = self.alloc_raw(rows * n2 * 4)?;
        let (po, pu, pprobs, pindex) = (out.ptr(), u.ptr(), probs.ptr(), index.ptr());
        let f = Self::name("sample_top_p", logits.dtype);
        let (pl, c, n2i) = (logits.ptr(), i32_of(cols, "cols")?, i32_of(n2, "vocabulary")?);
        let mut l = Args::new();
        l.arg(&po).arg(&pl).arg(&c).arg(&pu).arg(&temperature).arg(&top_p).arg(&pprobs).arg(&pindex).arg(&n2i);
        unsafe { self.launch(&f, cfg((i32_of(rows, "rows")? as u32, 1, 1), SAMPLE_THREADS, 0), &mut l) }?;
        Ok(self.download_i32(&out, rows)?.into_iter().map(|v| v as u32).collect())
    }

    fn check_attention_shape(&self, heads: usize, kv_heads: usize, head_dim: usize) -> Result<usize> {
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || head_dim == 0 {
            return Err(err(format!("attention: {heads} heads over {kv_heads} key/value heads of {head_dim}")));
        }
        Ok(heads / kv_heads)
    }

    /// Tensor-core attention over `seqs` (see [`SeqDesc`]); bf16/f16 and head dims 64/80/128.
    /// `q`/`out` are `[q_rows, heads*head_dim]`, `k`/`v` `[kv_rows, kv_heads*head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention(
        &self,
        out: &mut DevBuf,
        q: &DevBuf,
        q_rows: usize,
        k: &DevBuf,
        v: &DevBuf,
        kv_rows: usize,
        seqs: &[SeqDesc],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Result<()> {
        let d = q.dtype;
        let group = self.check_attention_shape(heads, kv_heads, head_dim)?;
        if d == DType::F32 || !FLASH_HEAD_DIMS.contains(&head_dim) {
            return Err(err(format!("flash_attention: no {d} kernel for head_dim {head_dim}")));
        }
        need(q, d, q_rows * heads * head_dim, "attention q")?;
        need(out, d, q_rows * heads * head_dim, "attention out")?;
        need(k, d, kv_rows * kv_heads * head_dim, "attention k")?;
        need(v, d, kv_rows * kv_heads * head_dim, "attention v")?;
        for s in seqs {
            let bad = s.q_start < 0
                || s.q_len < 0
                || s.k_base < 0
                || s.n_keys < 0
                || (s.q_start + s.q_len) as usize > q_rows
                || (s.k_base + s.n_keys) as usize > kv_rows
                || (s.causal != 0 && s.n_keys < s.q_len);
            if bad {
                return Err(err(format!(
                    "flash_attention: sequence {s:?} outside {q_rows} query / {kv_rows} key rows"
                )));
            }
        }
        let max_q = seqs.iter().map(|s| s.q_len as usize).max().unwrap_or(0);
        if max_q == 0 {
            return Ok(());
        }
        if seqs.len() > 65535 || heads > 65535 {
            return Err(err(format!("flash_attention: {} sequences x {heads} heads exceed the grid", seqs.len())));
        }
        let desc: Vec<i32> =
            seqs.iter().flat_map(|s| [s.q_start, s.q_len, s.k_base, s.n_keys, s.causal, 0, 0, 0]).collect();
        let dev_desc = self.upload_raw(&desc)?;
        let pdesc = dev_desc.ptr();
        let f = format!("flash_attention_{}_hd{head_dim}", d.suffix());
        let smem = flash_smem_bytes(d, head_dim);
        if smem > self.shared_optin() {
            return Err(err(format!(
                "flash_attention: head dim {head_dim} needs {smem} bytes of shared memory per block, this GPU allows {}",
                self.shared_optin()
            )));
        }
        self.opt_in_shared(&f, smem)?;
        let (po, pq, pk, pv) = (out.ptr(), q.ptr(), k.ptr(), v.ptr());
        let (h, g) = (heads as i32, group as i32);
        let mut l = Args::new();
        l.arg(&po).arg(&pq).arg(&pk).arg(&pv).arg(&pdesc).arg(&h).arg(&g).arg(&scale);
        let grid = (max_q.div_ceil(FLASH_BM) as u32, heads as u32, seqs.len() as u32);
        unsafe { self.launch(&f, cfg(grid, FLASH_THREADS, smem as u32), &mut l) }?;
        Ok(())
    }

    /// Attention one query row at a time (any dtype, head_dim ≤ 256): row `r` of `q` attends to
    /// key rows `rows[r].k_base..+n_keys`. Long key ranges are split over `splits` blocks (None:
    /// chosen from the GPU's size) and merged by `attention_combine`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_rows(
        &self,
        out: &mut DevBuf,
        q: &DevBuf,
        k: &DevBuf,
        v: &DevBuf,
        kv_rows: usize,
        rows: &[AttnRow],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
        splits: Option<usize>,
    ) -> Result<()> {
        let d = q.dtype;
        let group = self.check_attention_shape(heads, kv_heads, head_dim)?;
        if head_dim > ROWS_MAX_HD {
            return Err(err(format!("attention: head_dim {head_dim} > {ROWS_MAX_HD}")));
        }
        let n = rows.len();
        need(q, d, n * heads * head_dim, "attention q")?;
        need(out, d, n * heads * head_dim, "attention out")?;
        need(k, d, kv_rows * kv_heads * head_dim, "attention k")?;
        need(v, d, kv_rows * kv_heads * head_dim, "attention v")?;
        if let Some(r) = rows.iter().find(|r| r.k_base < 0 || r.n_keys < 0 || (r.k_base + r.n_keys) as usize > kv_rows)
        {
            return Err(err(format!("attention: keys {}..+{} outside {kv_rows} rows", r.k_base, r.n_keys)));
        }
        if n == 0 {
            return Ok(());
        }
        if n > i32::MAX as usize || heads > 65535 {
            return Err(err(format!("attention_rows: {n} rows x {heads} heads exceed the grid")));
        }
        let max_keys = rows.iter().map(|r| r.n_keys as usize).max().unwrap_or(0).max(1);
        let splits = splits.unwrap_or_else(|| {
            let blocks = n * heads;
            let target = 4 * self.sm_count() as usize;
            if blocks >= target {
                1
            } else {
                target.div_ceil(blocks).min(max_keys.div_ceil(256)).max(1)
            }
        });
        let splits = splits.clamp(1, max_keys.min(65535));
        let keys_per_split = max_keys.div_ceil(splits);
        let desc: Vec<i32> = rows.iter().flat_map(|r| [r.k_base, r.n_keys]).collect();
        let dev_desc = self.upload_raw(&desc)?;
        let pdesc = dev_desc.ptr();
        let partial =
            if splits > 1 { Some(self.alloc(DType::F32, splits * n * heads * (head_dim + 2))?) } else { None };
        let f = Self::name("attention_rows", d);
        let (po, pq, pk, pv) = (out.ptr(), q.ptr(), k.ptr(), v.ptr());
        let pp = partial.as_ref().map_or(DevPtr::NULL, |p| p.ptr());
        let (nr, h, g, hd, kps) = (n as i32, heads as i32, group as i32, head_dim as i32, keys_per_split as i32);
        let mut l = Args::new();
        l.arg(&po)
            .arg(&pp)
            .arg(&pq)
            .arg(&pk)
            .arg(&pv)
            .arg(&pdesc)
            .arg(&nr)
            .arg(&h)
            .arg(&g)
            .arg(&hd)
            .arg(&scale)
            .arg(&kps);
        unsafe { self.launch(&f, cfg((n as u32, heads as u32, splits as u32), ROWS_THREADS, 0), &mut l) }?;
        if splits > 1 {
            let f = Self::name("attention_combine", d);
            let s = splits as i32;
            let mut l = Args::new();
            l.arg(&po).arg(&pp).arg(&nr).arg(&h).arg(&hd).arg(&s);
            unsafe { self.launch(&f, cfg((n as u32, heads as u32, 1), row_block(head_dim), 0), &mut l) }?;
        }
        Ok(())
    }

    /// Attention with DeBERTa's relative-position terms, one block per (query row, head): row `r`
    /// of `q` attends to key rows `rows[r].k_base..+n_keys` with scores
    /// `scale · (q·k + q·pos_key[c2p[pos - j + center]] + k·pos_query[p2c[pos - j + center]])`
    /// (any dtype, head_dim ≤ 256). Checks every index the kernel will read.
    #[allow(clippy::too_many_arguments)]
    pub fn relative_attention(
        &self,
        out: &mut DevBuf,
        q: &DevBuf,
        k: &DevBuf,
        v: &DevBuf,
        kv_rows: usize,
        rows: &[RelRow],
        rel: RelTables<'_>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Result<()> {
        let d = q.dtype;
        let group = self.check_attention_shape(heads, kv_heads, head_dim)?;
        if head_dim > ROWS_MAX_HD {
            return Err(err(format!("relative_attention: head_dim {head_dim} > {ROWS_MAX_HD}")));
        }
        let n = rows.len();
        let qw = heads * head_dim;
        need(q, d, n * qw, "relative_attention q")?;
        need(out, d, n * qw, "relative_attention out")?;
        need(k, d, kv_rows * kv_heads * head_dim, "relative_attention k")?;
        need(v, d, kv_rows * kv_heads * head_dim, "relative_attention v")?;
        let len = rel.c2p.len();
        if rel.p2c.len() != len || len.is_multiple_of(2) {
            return Err(err(format!("relative_attention: index tables of {len} and {} entries", rel.p2c.len())));
        }
        let center = (len - 1) / 2;
        for (name, table, index) in [("pos_key", rel.pos_key, rel.c2p), ("pos_query", rel.pos_query, rel.p2c)] {
            if let Some((t, t_rows)) = table {
                need(t, d, t_rows * qw, name)?;
                if let Some(&bad) = index.iter().find(|&&i| i < 0 || i as usize >= t_rows) {
                    return Err(err(format!("relative_attention: index {bad} into {t_rows} {name} rows")));
                }
            }
        }
        // The kernel reads table entry pos - j + center for keys j < n_keys.
        let bad = rows.iter().find(|r| {
            r.k_base < 0
                || r.n_keys < 0
                || r.pos < 0
                || (r.k_base + r.n_keys) as usize > kv_rows
                || r.pos as usize + center >= len
                || (r.n_keys > 0 && (r.n_keys - 1) as usize > r.pos as usize + center)
        });
        if let Some(r) = bad {
            return Err(err(format!("relative_attention: row {r:?} outside {kv_rows} key rows or {len} positions")));
        }
        if n == 0 {
            return Ok(());
        }
        if n > i32::MAX as usize || heads > 65535 {
            return Err(err(format!("relative_attention: {n} rows x {heads} heads exceed the grid")));
        }
        let desc: Vec<i32> = rows.iter().flat_map(|r| [r.k_base, r.n_keys, r.pos]).collect();
        let dev_desc = self.upload_raw(&desc)?;
        let (dev_c2p, dev_p2c) = (self.upload_raw(rel.c2p)?, self.upload_raw(rel.p2c)?);
        let f = Self::name("relative_attention", d);
        let (po, pq, pk, pv) = (out.ptr(), q.ptr(), k.ptr(), v.ptr());
        let ppk = rel.pos_key.map_or(DevPtr::NULL, |(t, _)| t.ptr());
        let ppq = rel.pos_query.map_or(DevPtr::NULL, |(t, _)| t.ptr());
        let (pdesc, pc2p, pp2c) = (dev_desc.ptr(), dev_c2p.ptr(), dev_p2c.ptr());
        let (c, h, g, hd) = (center as i32, heads as i32, group as i32, head_dim as i32);
        let mut l = Args::new();
        l.arg(&po)
            .arg(&pq)
            .arg(&pk)
            .arg(&pv)
            .arg(&ppk)
            .arg(&ppq)
            .arg(&pdesc)
            .arg(&pc2p)
            .arg(&pp2c)
            .arg(&c)
            .arg(&h)
            .arg(&g)
            .arg(&hd)
            .arg(&scale);
        unsafe { self.launch(&f, cfg((n as u32, heads as u32, 1), REL_THREADS, 0), &mut l) }?;
        Ok(())
    }
}
