//! The backend seam. Models are written once against [`Backend`]; the CPU backend ([`cpu::Cpu`])
//! is the f32 reference that every other backend is tested against (see `conformance`).
//!
//! Every activation is a 2-D row-major matrix `[rows, cols]` — tokens × features — which is all a
//! transformer needs. Several sequences travel *packed*: their rows are concatenated and a
//! `&[usize]` of lengths (or [`SeqChunk`]s for cached attention) says where each one starts.
use crate::error::Result;

pub mod conformance;
pub mod cpu;
pub mod cuda;

/// Point-wise activation functions, named as in transformers' `ACT2FN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` — CLIP's `quick_gelu`.
    QuickGelu,
    /// The exact erf-based GELU — transformers' `gelu`.
    GeluErf,
    /// `x * sigmoid(x)` — transformers' `silu`.
    Silu,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` — transformers' `gelu_new` (GPT-2's MLP).
    GeluTanh,
    /// `tanh(x)` — the BERT pooler and the RoBERTa classification head.
    Tanh,
}

impl Activation {
    /// Parses a transformers `hidden_act` name.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::GeluErf),
            "silu" | "swish" => Some(Self::Silu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "tanh" => Some(Self::Tanh),
            _ => None,
        }
    }
}

/// Shape of multi-head attention: `heads` query heads sharing `kv_heads` key/value heads (GQA when
/// fewer), each `head_dim` wide; scores are scaled by `scale` (normally `head_dim^-0.5`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl AttentionShape {
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self { heads, kv_heads, head_dim, scale: (head_dim as f32).powf(-0.5) }
    }
}

/// One sequence's share of a cached-attention call: its `len` new rows are written to KV-cache
/// slot `slot` at positions `start..start + len`, and query `i` sees cache positions `0..=start + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqChunk {
    pub slot: usize,
    pub start: usize,
    pub len: usize,
}

/// Seeded sampling: `temperature` scales the logits, then the smallest set of tokens whose
/// probability reaches `top_p` is kept (nucleus sampling).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
}

/// The operations every model is built from. Implementations must agree with [`cpu::Cpu`] within
/// the tolerances of `conformance`.
pub trait Backend: Send + Sync {
    /// A 2-D matrix in this backend's memory.
    type Tensor: Send + Sync;
    /// Per-layer key/value cache for a fixed number of sequence slots.
    type KvCache: Send;

    fn name(&self) -> &'static str;

    /// Bytes per stored tensor element (weights included): 4 for f32, 2 for bf16/f16.
    fn element_bytes(&self) -> usize {
        4
    }

    /// A `[rows, cols]` tensor whose contents are unspecified (zeros on the CPU): for buffers
    /// that are written before they are read, so devices need not fill them.
    fn uninit(&self, rows: usize, cols: usize) -> Result<Self::Tensor> {
        self.from_host(&vec![0.0; rows * cols], rows, cols)
    }

    /// Memory still free for tensors, in bytes, where the backend can tell (sizing batches).
    fn free_memory(&self) -> Option<usize> {
        None
    }

    // ---- data movement -------------------------------------------------------------------
    /// Uploads `data` (row-major, `rows * cols` values).
    // Device backends need `self` (their context) to upload, hence the `from_` with a receiver.
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// `(rows, cols)`.
    fn dims(&self, t: &Self::Tensor) -> (usize, usize);
    /// Rows `rows[i]` of `x`, in that order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// Overwrites row `rows[i]` of `dst` with row `i` of `src`.
    fn scatter_rows(&self, dst: &mut Self::Tensor, rows: &[usize], src: &Self::Tensor) -> Result<()>;

    /// The same row-major values seen as `[rows, cols]` (`rows * cols` must equal the element
    /// count), e.g. `[tokens, heads*hd]` as `[tokens*heads, hd]` for a per-head norm. The default
    /// copies through the host; backends override it with a free reinterpretation.
    fn reshape(&self, t: Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor> {
        let (r, c) = self.dims(&t);
        if r * c != rows * cols {
            return Err(crate::error::Error::invalid(format!("reshape: [{r}, {c}] has no [{rows}, {cols}] view")));
        }
        let data = self.to_host(&t)?;
        self.from_host(&data, rows, cols)
    }

    // ---- arithmetic ----------------------------------------------------------------------
    /// `x · wᵀ (+ bias)`, with `w` in the `[out, in]` layout of `nn.Linear`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor, bias: Option<&Self::Tensor>) -> Result<Self::Tensor>;
    /// `a += b` (the residual add).
    fn add_assign(&self, a: &mut Self::Tensor, b: &Self::Tensor) -> Result<()>;
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// A pre-norm block's residual step: `x += delta`, then `layer_norm(x)`. Backends with a
    /// fused kernel override it (one pass over `x` instead of two).
    fn add_layer_norm(
        &self,
        x: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        self.add_assign(x, delta)?;
        self.layer_norm(x, weight, bias, eps)
    }
    /// `x += delta`, then `rms_norm(x)` (see [`Self::add_layer_norm`]).
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        self.add_assign(x, delta)?;
        self.rms_norm(x, weight, eps)
    }
    fn activation(&self, x: &mut Self::Tensor, act: Activation) -> Result<()>;
    /// `silu(gate) * up`, the SwiGLU gate.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Rotary embedding in transformers' rotate-half layout, in place on `x` = `[rows, heads*head_dim]`;
    /// row `r` is at position `positions[r]`; `inv_freq` has `head_dim / 2` entries.
    fn rotary(&self, x: &mut Self::Tensor, positions: &[usize], head_dim: usize, inv_freq: &[f32]) -> Result<()>;
    /// Rows `ids[i]` of the embedding `table`.
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor>;
    /// ViT patch embedding: a `patch × patch` stride-`patch` convolution without bias over the
    /// `[channels*height, width]` image `pixels`, `weight` = `[width_out, channels*patch*patch]`.
    /// Returns `[num_patches, width_out]` in row-major patch order.
    fn patch_embed(
        &self,
        pixels: &Self::Tensor,
        channels: usize,
        patch: usize,
        weight: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    // ---- attention -----------------------------------------------------------------------
    /// Bidirectional attention over packed sequences of lengths `lens` (the ViT's).
    /// `q`: `[rows, heads*hd]`, `k`/`v`: `[rows, kv_heads*hd]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        lens: &[usize],
        shape: AttentionShape,
    ) -> Result<Self::Tensor>;
    fn kv_cache(
        &self,
        layers: usize,
        slots: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self::KvCache>;
    /// Writes the new keys/values of every chunk into `cache` (layer `layer`), then runs causal
    /// attention for the chunk's queries against everything cached so far for its slot.
    #[allow(clippy::too_many_arguments)]
    fn cached_attention(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        chunks: &[SeqChunk],
        shape: AttentionShape,
    ) -> Result<Self::Tensor>;

    /// Unmasked attention of packed query segments against their own packed key/value segments:
    /// the `q_lens[i]` rows of query segment `i` attend to all `kv_lens[i]` rows of key/value
    /// segment `i` (`q`: `[Σq_lens, heads*hd]`, `k`/`v`: `[Σkv_lens, kv_heads*hd]`). Mllama's text
    /// cross-attention is this op, and so is any mask that only removes whole keys from a query's
    /// view (Mllama's vision padding mask): gather the keys each group of queries may see. The
    /// default runs the CPU reference on the host, so a backend works before it has a kernel.
    #[allow(clippy::too_many_arguments)]
    fn attention_kv(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        q_lens: &[usize],
        kv_lens: &[usize],
        shape: AttentionShape,
    ) -> Result<Self::Tensor> {
        let (rows, cols) = self.dims(q);
        let (q, k, v) = (self.to_host(q)?, self.to_host(k)?, self.to_host(v)?);
        let out = cpu::attention_kv_host(&q, &k, &v, q_lens, kv_lens, shape)?;
        self.from_host(&out, rows, cols)
    }

    // ---- token choice --------------------------------------------------------------------
    /// Index of the largest logit of each row (the first on ties, as torch does).
    fn argmax(&self, logits: &Self::Tensor) -> Result<Vec<u32>>;
    /// One token per row, drawn with `seeds[row]` (see [`sample_row`] for the exact procedure).
    fn sample(&self, logits: &Self::Tensor, params: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>>;
}

/// Rows and columns of a backend's tensor, for the shape checks every backend shares.
pub(crate) trait Matrix {
    fn rows_cols(&self) -> (usize, usize);
}

/// Both operands of `op` must have the same shape.
pub(crate) fn same_dims(a: &impl Matrix, b: &impl Matrix, op: &str) -> Result<()> {
    let ((ar, ac), (br, bc)) = (a.rows_cols(), b.rows_cols());
    if (ar, ac) != (br, bc) {
        return Err(crate::error::Error::invalid(format!("{op}: shapes [{ar}, {ac}] and [{br}, {bc}] differ")));
    }
    Ok(())
}

/// `t` must have `cols` columns.
pub(crate) fn check_cols(t: &impl Matrix, cols: usize, op: &str) -> Result<()> {
    let got = t.rows_cols().1;
    if got != cols {
        return Err(crate::error::Error::invalid(format!("{op}: expected {cols} columns, got {got}")));
    }
    Ok(())
}

/// The arguments of [`Backend::attention`]: `q` is `[rows, heads*hd]`, `k`/`v` are
/// `[rows, kv_heads*hd]`, the lengths cover every row, and query heads group evenly over kv heads.
pub(crate) fn check_attention(
    q: &impl Matrix,
    k: &impl Matrix,
    v: &impl Matrix,
    lens: &[usize],
    s: AttentionShape,
) -> Result<()> {
    check_cols(q, s.heads * s.head_dim, "attention q")?;
    check_cols(k, s.kv_heads * s.head_dim, "attention k")?;
    same_dims(k, v, "attention k/v")?;
    let total: usize = lens.iter().sum();
    let (q_rows, k_rows) = (q.rows_cols().0, k.rows_cols().0);
    if q_rows != total || k_rows != total || s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
        return Err(crate::error::Error::invalid(format!("attention: {q_rows} rows for sequences of {total}")));
    }
    Ok(())
}

/// A KV cache's shape, as [`check_cached_attention`] needs it.
pub(crate) struct CacheShape {
    pub layers: usize,
    pub slots: usize,
    pub capacity: usize,
    /// `kv_heads * head_dim`.
    pub width: usize,
}

/// The arguments of one [`Backend::cached_attention`] call: `q`/`k`/`v` widths, one row per
/// chunk position, an existing layer, query heads grouping evenly over kv heads; each chunk within
/// a slot of the cache and its capacity, and no slot twice (a call appends one contiguous run per
/// sequence; two writers of one slot would make the result depend on write order).
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_cached_attention(
    q: &impl Matrix,
    k: &impl Matrix,
    v: &impl Matrix,
    chunks: &[SeqChunk],
    s: AttentionShape,
    cache: CacheShape,
    layer: usize,
) -> Result<()> {
    check_cols(q, s.heads * s.head_dim, "cached_attention q")?;
    check_cols(k, cache.width, "cached_attention k")?;
    same_dims(k, v, "cached_attention k/v")?;
    let total: usize = chunks.iter().map(|c| c.len).sum();
    let (q_rows, k_rows) = (q.rows_cols().0, k.rows_cols().0);
    if q_rows != total
        || k_rows != total
        || layer >= cache.layers
        || s.kv_heads == 0
        || !s.heads.is_multiple_of(s.kv_heads)
    {
        return Err(crate::error::Error::invalid(format!("cached_attention: {q_rows} rows for chunks of {total}")));
    }
    let mut seen = vec![false; cache.slots];
    for c in chunks {
        if c.slot >= cache.slots || c.start + c.len > cache.capacity {
            return Err(crate::error::Error::invalid(format!(
                "KV cache overflow: slot {} positions {}..{} (capacity {})",
                c.slot,
                c.start,
                c.start + c.len,
                cache.capacity
            )));
        }
        if std::mem::replace(&mut seen[c.slot], true) {
            return Err(crate::error::Error::invalid(format!("cached_attention: slot {} appears twice", c.slot)));
        }
    }
    Ok(())
}

/// SplitMix64: a tiny, well-studied generator that every backend can reproduce bit for bit, so a
/// seeded run draws the same tokens on CPU and GPU.
pub fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform draw in `[0, 1)` that sampling uses for `seed` (53 random bits).
pub fn uniform_from_seed(seed: u64) -> f64 {
    (splitmix64(seed) >> 11) as f64 / (1u64 << 53) as f64
}

/// Reference nucleus sampling of one row: softmax of `logits / temperature` (in f64), tokens
/// sorted by probability (descending, ties by index), the shortest prefix whose mass reaches
/// `top_p` kept, and the token where the cumulative mass of that prefix passes `u * mass`.
/// `temperature <= 0` means greedy.
pub fn sample_row(logits: &[f32], params: SamplingParams, seed: u64) -> u32 {
    if params.temperature <= 0.0 {
        return argmax_row(logits);
    }
    let inv_t = 1.0 / params.temperature as f64;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(f64, u32)> =
        logits.iter().enumerate().map(|(i, &l)| (((l as f64 - max) * inv_t).exp(), i as u32)).collect();
    let total: f64 = probs.iter().map(|p| p.0).sum();
    probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        mass += p.0 / total;
        kept += 1;
        if mass >= params.top_p as f64 {
            break;
        }
    }
    let target = uniform_from_seed(seed) * mass;
    let mut acc = 0.0;
    for p in &probs[..kept] {
        acc += p.0 / total;
        if acc > target {
            return p.1;
        }
    }
    probs[kept - 1].1
}

/// Index of the largest value (first on ties; NaN never wins).
pub fn argmax_row(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best as u32
}
