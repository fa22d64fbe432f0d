//! The backend seam. Models are written once against [`Backend`]; the CPU backend ([`cpu::Cpu`])
//! is the f32 reference that every other backend is tested against (see `conformance`).
//!
//! Every activation is a 2-D row-major matrix `[rows, cols]` — tokens × features — which is all a
//! transformer needs. Several sequences travel *packed*: their rows are concatenated and a
//! `&[usize]` of lengths (or [`SeqChunk`]s for cached attention) says where each one starts.
use crate::error::Result;

mod checks;
pub mod conformance;
pub mod cpu;
pub mod cuda;

pub use checks::CacheShape;

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

/// The relative-position terms of DeBERTa's disentangled attention
/// (`DisentangledSelfAttention.disentangled_attention_bias` in transformers): the score of query
/// `i` and key `j` of one sequence gains `scale · qᵢ·pos_key[c2p[d]]` (content→position) and
/// `scale · kⱼ·pos_query[p2c[d]]` (position→content), both per query head, where
/// `d = i - j + center` and `center = (c2p.len() - 1) / 2` — the tables are indexed by relative
/// position, `c2p.len() = p2c.len() = 2·center + 1`, and `center + 1` must be at least the longest
/// sequence. Either term may be absent (`pos_att_type` without `c2p` or `p2c`); its table is then
/// not read.
pub struct RelativePositions<'a, T> {
    /// `[positions, heads*hd]`: the keys that queries score against (c2p), or `None`.
    pub pos_key: Option<&'a T>,
    /// `[positions, heads*hd]`: the queries that keys score against (p2c), or `None`.
    pub pos_query: Option<&'a T>,
    /// Row of `pos_key` for each relative position (see the type's documentation).
    pub c2p: &'a [u32],
    /// Row of `pos_query` for each relative position.
    pub p2c: &'a [u32],
}

// Not derived: the derive would ask `T: Copy`, and tensors are not.
impl<T> Clone for RelativePositions<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RelativePositions<'_, T> {}

/// What a backend implements: the raw operations, each of which may assume that its arguments
/// passed `checks` (every shape, length, index and chunk table is validated once, by the
/// [`Backend`] layer that callers use, before the op is called — so op bodies do not check
/// again; `debug_assert!`s are welcome). Implementations must agree with [`cpu::Cpu`] within the
/// tolerances of `conformance`.
///
/// Provided methods that compute on the host ([`Self::reshape`], [`Self::attention_kv`],
/// [`Self::relative_attention`]) let a new backend run before it has every kernel; each says so
/// once per process on stderr ([`host_fallback`]). The CPU and CUDA backends override all of them.
pub trait BackendOps: Send + Sync {
    /// A 2-D matrix in this backend's memory.
    type Tensor: Send + Sync;
    /// Per-layer key/value cache for a fixed number of sequence slots.
    type KvCache: Send;

    fn name(&self) -> &'static str;

    /// Bytes per stored tensor element (weights included): 4 for f32, 2 for bf16/f16.
    fn element_bytes(&self) -> usize {
        4
    }

    /// See [`Backend::uninit`].
    fn uninit(&self, rows: usize, cols: usize) -> Result<Self::Tensor> {
        BackendOps::from_host(self, &vec![0.0; rows * cols], rows, cols)
    }

    /// Memory still free for tensors, in bytes, where the backend can tell (sizing batches).
    fn free_memory(&self) -> Option<usize> {
        None
    }

    /// `(rows, cols)` of a tensor.
    fn dims(&self, t: &Self::Tensor) -> (usize, usize);
    /// The shape of a KV cache, for the checks of [`Backend::cached_attention`].
    fn cache_shape(&self, cache: &Self::KvCache) -> CacheShape;

    // Device backends need `self` (their context) to upload, hence the `from_` with a receiver.
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    fn scatter_rows(&self, dst: &mut Self::Tensor, rows: &[usize], src: &Self::Tensor) -> Result<()>;

    /// The default copies through the host; backends override it with a free reinterpretation.
    fn reshape(&self, t: Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor> {
        host_fallback("reshape", BackendOps::name(self), "no in-place view of a tensor with other dimensions");
        let data = BackendOps::to_host(self, &t)?;
        BackendOps::from_host(self, &data, rows, cols)
    }

    /// See [`Backend::linear_weight`]. The default keeps the `[out, in]` layout.
    fn linear_weight(&self, w: Self::Tensor) -> Result<Self::Tensor> {
        Ok(w)
    }
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor, bias: Option<&Self::Tensor>) -> Result<Self::Tensor>;
    fn add_assign(&self, a: &mut Self::Tensor, b: &Self::Tensor) -> Result<()>;
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// Backends with a fused kernel override it (one pass over `x` instead of two).
    fn add_layer_norm(
        &self,
        x: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        BackendOps::add_assign(self, x, delta)?;
        BackendOps::layer_norm(self, x, weight, bias, eps)
    }
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        BackendOps::add_assign(self, x, delta)?;
        BackendOps::rms_norm(self, x, weight, eps)
    }
    fn activation(&self, x: &mut Self::Tensor, act: Activation) -> Result<()>;
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    fn rotary(&self, x: &mut Self::Tensor, positions: &[usize], head_dim: usize, inv_freq: &[f32]) -> Result<()>;
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor>;
    fn patch_embed(
        &self,
        pixels: &Self::Tensor,
        channels: usize,
        patch: usize,
        weight: &Self::Tensor,
    ) -> Result<Self::Tensor>;

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

    /// The default runs the CPU reference on the host.
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
        host_fallback("attention_kv", BackendOps::name(self), "no kernel for attention over key/value segments");
        let (rows, cols) = BackendOps::dims(self, q);
        let (q, k, v) = (BackendOps::to_host(self, q)?, BackendOps::to_host(self, k)?, BackendOps::to_host(self, v)?);
        let out = cpu::attention_kv_host(&q, &k, &v, q_lens, kv_lens, shape);
        BackendOps::from_host(self, &out, rows, cols)
    }

    /// The default runs the CPU reference on the host.
    fn relative_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        lens: &[usize],
        rel: RelativePositions<'_, Self::Tensor>,
        shape: AttentionShape,
    ) -> Result<Self::Tensor> {
        host_fallback(
            "relative_attention",
            BackendOps::name(self),
            "no kernel for attention with relative-position terms",
        );
        let (rows, cols) = BackendOps::dims(self, q);
        let (q, k, v) = (BackendOps::to_host(self, q)?, BackendOps::to_host(self, k)?, BackendOps::to_host(self, v)?);
        let pos_key = rel.pos_key.map(|t| BackendOps::to_host(self, t)).transpose()?;
        let pos_query = rel.pos_query.map(|t| BackendOps::to_host(self, t)).transpose()?;
        let host =
            RelativePositions { pos_key: pos_key.as_ref(), pos_query: pos_query.as_ref(), c2p: rel.c2p, p2c: rel.p2c };
        let out = cpu::relative_attention_host(&q, &k, &v, lens, host, shape);
        BackendOps::from_host(self, &out, rows, cols)
    }

    fn argmax(&self, logits: &Self::Tensor) -> Result<Vec<u32>>;
    fn sample(&self, logits: &Self::Tensor, params: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>>;
}

/// Says once per process, on stderr, that `backend` computes `op` on the host (and `why`), so a
/// missing kernel is visible in any log instead of silently slow. Keyed by op name: the first
/// backend to fall back on an op is the one named. Every note is also kept for
/// [`host_fallbacks`].
pub fn host_fallback(op: &'static str, backend: &str, why: &str) {
    let mut noted = host_fallback_notes().lock().unwrap_or_else(|p| p.into_inner());
    if noted.iter().any(|(o, _)| *o == op) {
        return;
    }
    let note = format!("note: the {backend} backend computes {op} on the host ({why}); expect it to be slow");
    eprintln!("{note}");
    noted.push((op, note));
}

/// Every host-fallback note printed so far by this process, in order.
pub fn host_fallbacks() -> Vec<String> {
    host_fallback_notes().lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, n)| n.clone()).collect()
}

fn host_fallback_notes() -> &'static std::sync::Mutex<Vec<(&'static str, String)>> {
    static NOTES: std::sync::OnceLock<std::sync::Mutex<Vec<(&'static str, String)>>> = std::sync::OnceLock::new();
    NOTES.get_or_init(Default::default)
}

/// The operations every model is built from, with their arguments checked: each method validates
/// its arguments (`checks`: one error naming the op and what is wrong, the same on every
/// backend) and then runs the backend's [`BackendOps`] method. Implemented for every
/// [`BackendOps`]; models and commands are written against this trait.
pub trait Backend: Send + Sync {
    /// A 2-D matrix in this backend's memory.
    type Tensor: Send + Sync;
    /// Per-layer key/value cache for a fixed number of sequence slots.
    type KvCache: Send;

    fn name(&self) -> &'static str;

    /// Bytes per stored tensor element (weights included): 4 for f32, 2 for bf16/f16.
    fn element_bytes(&self) -> usize;

    /// A `[rows, cols]` tensor whose contents are unspecified (zeros on the CPU): for buffers
    /// that are written before they are read, so devices need not fill them.
    fn uninit(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;

    /// Memory still free for tensors, in bytes, where the backend can tell (sizing batches).
    fn free_memory(&self) -> Option<usize>;

    // ---- data movement -------------------------------------------------------------------
    /// Uploads `data` (row-major, `rows * cols` values).
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// `(rows, cols)`.
    fn dims(&self, t: &Self::Tensor) -> (usize, usize);
    /// Rows `rows[i]` of `x`, in that order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// Overwrites row `rows[i]` of `dst` with row `i` of `src` (a row named twice keeps the last
    /// write).
    fn scatter_rows(&self, dst: &mut Self::Tensor, rows: &[usize], src: &Self::Tensor) -> Result<()>;
    /// The same row-major values seen as `[rows, cols]` (`rows * cols` must equal the element
    /// count), e.g. `[tokens, heads*hd]` as `[tokens*heads, hd]` for a per-head norm.
    fn reshape(&self, t: Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor>;

    // ---- arithmetic ----------------------------------------------------------------------
    /// A weight `w` (`[out, in]`, as `nn.Linear` holds it) stored the way this backend's
    /// [`Self::linear`] reads it fastest, done once at load instead of on every call (the CPU
    /// keeps `wᵀ`, which its GEMM streams without packing). The result still has dims
    /// `[out, in]` and `to_host` gives `w` back; it is meant for `linear` only — other ops may
    /// refuse it. Weights shared with another op (a tied embedding) stay unprepared.
    fn linear_weight(&self, w: Self::Tensor) -> Result<Self::Tensor>;
    /// `x · wᵀ (+ bias)`, with `w` in the `[out, in]` layout of `nn.Linear` (prepared by
    /// [`Self::linear_weight`] or not).
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
    /// A pre-norm block's residual step: `x += delta`, then `layer_norm(x)`.
    fn add_layer_norm(
        &self,
        x: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;
    /// `x += delta`, then `rms_norm(x)`.
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;
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
    /// view (Mllama's vision padding mask): gather the keys each group of queries may see.
    #[allow(clippy::too_many_arguments)]
    fn attention_kv(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        q_lens: &[usize],
        kv_lens: &[usize],
        shape: AttentionShape,
    ) -> Result<Self::Tensor>;
    /// Bidirectional attention over packed sequences of lengths `lens`, as [`Self::attention`],
    /// whose scores also add DeBERTa's relative-position terms ([`RelativePositions`]): query `i`
    /// and key `j` of a sequence score
    /// `scale · (qᵢ·kⱼ + qᵢ·pos_key[c2p[i-j+center]] + kⱼ·pos_query[p2c[i-j+center]])` per head.
    fn relative_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        lens: &[usize],
        rel: RelativePositions<'_, Self::Tensor>,
        shape: AttentionShape,
    ) -> Result<Self::Tensor>;

    // ---- token choice --------------------------------------------------------------------
    /// Index of the largest logit of each row (the first on ties, as torch does).
    fn argmax(&self, logits: &Self::Tensor) -> Result<Vec<u32>>;
    /// One token per row, drawn with `seeds[row]` (see [`sample_row`] for the exact procedure).
    fn sample(&self, logits: &Self::Tensor, params: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>>;
}

/// The checked layer: every op validated by `checks`, then run by the backend's own method
/// (called by its full path: `Backend` and `BackendOps` share method names).
impl<B: BackendOps> Backend for B {
    type Tensor = B::Tensor;
    type KvCache = B::KvCache;

    fn name(&self) -> &'static str {
        BackendOps::name(self)
    }
    fn element_bytes(&self) -> usize {
        BackendOps::element_bytes(self)
    }
    fn uninit(&self, rows: usize, cols: usize) -> Result<B::Tensor> {
        checks::elements(rows, cols, "uninit")?;
        BackendOps::uninit(self, rows, cols)
    }
    fn free_memory(&self) -> Option<usize> {
        BackendOps::free_memory(self)
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<B::Tensor> {
        checks::from_host(data.len(), rows, cols)?;
        BackendOps::from_host(self, data, rows, cols)
    }
    fn to_host(&self, t: &B::Tensor) -> Result<Vec<f32>> {
        BackendOps::to_host(self, t)
    }
    fn dims(&self, t: &B::Tensor) -> (usize, usize) {
        BackendOps::dims(self, t)
    }
    fn gather_rows(&self, x: &B::Tensor, rows: &[usize]) -> Result<B::Tensor> {
        checks::gather_rows(BackendOps::dims(self, x), rows)?;
        BackendOps::gather_rows(self, x, rows)
    }
    fn scatter_rows(&self, dst: &mut B::Tensor, rows: &[usize], src: &B::Tensor) -> Result<()> {
        checks::scatter_rows(BackendOps::dims(self, dst), rows, BackendOps::dims(self, src))?;
        BackendOps::scatter_rows(self, dst, rows, src)
    }
    fn reshape(&self, t: B::Tensor, rows: usize, cols: usize) -> Result<B::Tensor> {
        checks::reshape(BackendOps::dims(self, &t), rows, cols)?;
        BackendOps::reshape(self, t, rows, cols)
    }

    fn linear_weight(&self, w: B::Tensor) -> Result<B::Tensor> {
        BackendOps::linear_weight(self, w)
    }
    fn linear(&self, x: &B::Tensor, w: &B::Tensor, bias: Option<&B::Tensor>) -> Result<B::Tensor> {
        checks::linear(BackendOps::dims(self, x), BackendOps::dims(self, w), bias.map(|b| BackendOps::dims(self, b)))?;
        BackendOps::linear(self, x, w, bias)
    }
    fn add_assign(&self, a: &mut B::Tensor, b: &B::Tensor) -> Result<()> {
        checks::same_dims(BackendOps::dims(self, a), BackendOps::dims(self, b), "add_assign")?;
        BackendOps::add_assign(self, a, b)
    }
    fn layer_norm(&self, x: &B::Tensor, weight: &B::Tensor, bias: &B::Tensor, eps: f32) -> Result<B::Tensor> {
        checks::norm(
            BackendOps::dims(self, x),
            None,
            BackendOps::dims(self, weight),
            Some(BackendOps::dims(self, bias)),
            "layer_norm",
        )?;
        BackendOps::layer_norm(self, x, weight, bias, eps)
    }
    fn rms_norm(&self, x: &B::Tensor, weight: &B::Tensor, eps: f32) -> Result<B::Tensor> {
        checks::norm(BackendOps::dims(self, x), None, BackendOps::dims(self, weight), None, "rms_norm")?;
        BackendOps::rms_norm(self, x, weight, eps)
    }
    fn add_layer_norm(
        &self,
        x: &mut B::Tensor,
        delta: &B::Tensor,
        weight: &B::Tensor,
        bias: &B::Tensor,
        eps: f32,
    ) -> Result<B::Tensor> {
        let (dx, dd) = (BackendOps::dims(self, x), BackendOps::dims(self, delta));
        checks::norm(
            dx,
            Some(dd),
            BackendOps::dims(self, weight),
            Some(BackendOps::dims(self, bias)),
            "add_layer_norm",
        )?;
        BackendOps::add_layer_norm(self, x, delta, weight, bias, eps)
    }
    fn add_rms_norm(&self, x: &mut B::Tensor, delta: &B::Tensor, weight: &B::Tensor, eps: f32) -> Result<B::Tensor> {
        checks::norm(
            BackendOps::dims(self, x),
            Some(BackendOps::dims(self, delta)),
            BackendOps::dims(self, weight),
            None,
            "add_rms_norm",
        )?;
        BackendOps::add_rms_norm(self, x, delta, weight, eps)
    }
    fn activation(&self, x: &mut B::Tensor, act: Activation) -> Result<()> {
        BackendOps::activation(self, x, act)
    }
    fn silu_mul(&self, gate: &B::Tensor, up: &B::Tensor) -> Result<B::Tensor> {
        checks::same_dims(BackendOps::dims(self, gate), BackendOps::dims(self, up), "silu_mul")?;
        BackendOps::silu_mul(self, gate, up)
    }
    fn rotary(&self, x: &mut B::Tensor, positions: &[usize], head_dim: usize, inv_freq: &[f32]) -> Result<()> {
        checks::rotary(BackendOps::dims(self, x), positions.len(), head_dim, inv_freq.len())?;
        BackendOps::rotary(self, x, positions, head_dim, inv_freq)
    }
    fn embedding(&self, table: &B::Tensor, ids: &[u32]) -> Result<B::Tensor> {
        checks::embedding(BackendOps::dims(self, table), ids)?;
        BackendOps::embedding(self, table, ids)
    }
    fn patch_embed(&self, pixels: &B::Tensor, channels: usize, patch: usize, weight: &B::Tensor) -> Result<B::Tensor> {
        checks::patch_embed(BackendOps::dims(self, pixels), channels, patch, BackendOps::dims(self, weight))?;
        BackendOps::patch_embed(self, pixels, channels, patch, weight)
    }

    fn attention(
        &self,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
        lens: &[usize],
        shape: AttentionShape,
    ) -> Result<B::Tensor> {
        checks::attention(
            BackendOps::dims(self, q),
            BackendOps::dims(self, k),
            BackendOps::dims(self, v),
            lens,
            shape,
            "attention",
        )?;
        BackendOps::attention(self, q, k, v, lens, shape)
    }
    fn kv_cache(
        &self,
        layers: usize,
        slots: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<B::KvCache> {
        checks::kv_cache(layers, slots, capacity, kv_heads, head_dim)?;
        BackendOps::kv_cache(self, layers, slots, capacity, kv_heads, head_dim)
    }
    fn cached_attention(
        &self,
        cache: &mut B::KvCache,
        layer: usize,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
        chunks: &[SeqChunk],
        shape: AttentionShape,
    ) -> Result<B::Tensor> {
        let cs = BackendOps::cache_shape(self, cache);
        checks::cached_attention(
            BackendOps::dims(self, q),
            BackendOps::dims(self, k),
            BackendOps::dims(self, v),
            chunks,
            shape,
            cs,
            layer,
        )?;
        BackendOps::cached_attention(self, cache, layer, q, k, v, chunks, shape)
    }
    fn attention_kv(
        &self,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
        q_lens: &[usize],
        kv_lens: &[usize],
        shape: AttentionShape,
    ) -> Result<B::Tensor> {
        checks::attention_kv(
            BackendOps::dims(self, q),
            BackendOps::dims(self, k),
            BackendOps::dims(self, v),
            q_lens,
            kv_lens,
            shape,
        )?;
        BackendOps::attention_kv(self, q, k, v, q_lens, kv_lens, shape)
    }
    fn relative_attention(
        &self,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
        lens: &[usize],
        rel: RelativePositions<'_, B::Tensor>,
        shape: AttentionShape,
    ) -> Result<B::Tensor> {
        let tables = checks::RelativeTables {
            pos_key: rel.pos_key.map(|t| BackendOps::dims(self, t)),
            pos_query: rel.pos_query.map(|t| BackendOps::dims(self, t)),
            c2p: rel.c2p,
            p2c: rel.p2c,
        };
        checks::relative_attention(
            BackendOps::dims(self, q),
            BackendOps::dims(self, k),
            BackendOps::dims(self, v),
            lens,
            tables,
            shape,
        )?;
        BackendOps::relative_attention(self, q, k, v, lens, rel, shape)
    }

    fn argmax(&self, logits: &B::Tensor) -> Result<Vec<u32>> {
        checks::token_choice(BackendOps::dims(self, logits), None, "argmax")?;
        BackendOps::argmax(self, logits)
    }
    fn sample(&self, logits: &B::Tensor, params: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>> {
        checks::token_choice(BackendOps::dims(self, logits), Some(seeds.len()), "sample")?;
        BackendOps::sample(self, logits, params, seeds)
    }
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

/// A backend with only the required ops (the CPU's), so that every provided host fallback runs:
/// the whole conformance suite passes on it, and each fallback says so once.
#[cfg(test)]
mod host_fallback_tests {
    use super::cpu::{Cpu, CpuKvCache, CpuTensor};
    use super::*;

    struct HostDefaults;

    impl BackendOps for HostDefaults {
        type Tensor = CpuTensor;
        type KvCache = CpuKvCache;
        fn name(&self) -> &'static str {
            "host-defaults"
        }
        fn dims(&self, t: &CpuTensor) -> (usize, usize) {
            BackendOps::dims(&Cpu, t)
        }
        fn cache_shape(&self, c: &CpuKvCache) -> CacheShape {
            BackendOps::cache_shape(&Cpu, c)
        }
        fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
            BackendOps::from_host(&Cpu, data, rows, cols)
        }
        fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
            BackendOps::to_host(&Cpu, t)
        }
        fn gather_rows(&self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor> {
            BackendOps::gather_rows(&Cpu, x, rows)
        }
        fn scatter_rows(&self, dst: &mut CpuTensor, rows: &[usize], src: &CpuTensor) -> Result<()> {
            BackendOps::scatter_rows(&Cpu, dst, rows, src)
        }
        fn linear(&self, x: &CpuTensor, w: &CpuTensor, bias: Option<&CpuTensor>) -> Result<CpuTensor> {
            BackendOps::linear(&Cpu, x, w, bias)
        }
        fn add_assign(&self, a: &mut CpuTensor, b: &CpuTensor) -> Result<()> {
            BackendOps::add_assign(&Cpu, a, b)
        }
        fn layer_norm(&self, x: &CpuTensor, w: &CpuTensor, b: &CpuTensor, eps: f32) -> Result<CpuTensor> {
            BackendOps::layer_norm(&Cpu, x, w, b, eps)
        }
        fn rms_norm(&self, x: &CpuTensor, w: &CpuTensor, eps: f32) -> Result<CpuTensor> {
            BackendOps::rms_norm(&Cpu, x, w, eps)
        }
        fn activation(&self, x: &mut CpuTensor, act: Activation) -> Result<()> {
            BackendOps::activation(&Cpu, x, act)
        }
        fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
            BackendOps::silu_mul(&Cpu, gate, up)
        }
        fn rotary(&self, x: &mut CpuTensor, positions: &[usize], head_dim: usize, inv_freq: &[f32]) -> Result<()> {
            BackendOps::rotary(&Cpu, x, positions, head_dim, inv_freq)
        }
        fn embedding(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor> {
            BackendOps::embedding(&Cpu, table, ids)
        }
        fn patch_embed(&self, px: &CpuTensor, channels: usize, patch: usize, w: &CpuTensor) -> Result<CpuTensor> {
            BackendOps::patch_embed(&Cpu, px, channels, patch, w)
        }
        fn attention(
            &self,
            q: &CpuTensor,
            k: &CpuTensor,
            v: &CpuTensor,
            lens: &[usize],
            s: AttentionShape,
        ) -> Result<CpuTensor> {
            BackendOps::attention(&Cpu, q, k, v, lens, s)
        }
        fn kv_cache(&self, layers: usize, slots: usize, cap: usize, kvh: usize, hd: usize) -> Result<CpuKvCache> {
            BackendOps::kv_cache(&Cpu, layers, slots, cap, kvh, hd)
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
            BackendOps::cached_attention(&Cpu, cache, layer, q, k, v, chunks, s)
        }
        fn argmax(&self, logits: &CpuTensor) -> Result<Vec<u32>> {
            BackendOps::argmax(&Cpu, logits)
        }
        fn sample(&self, logits: &CpuTensor, p: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>> {
            BackendOps::sample(&Cpu, logits, p, seeds)
        }
    }

    mod conformance_on_host_defaults {
        crate::conformance_tests!(super::HostDefaults, 1e-5);
    }

    #[test]
    fn each_host_fallback_is_noted_once_with_op_backend_and_reason() {
        use crate::backend::conformance as c;
        for _ in 0..2 {
            c::check_reshape(&HostDefaults);
            c::check_attention_kv(&HostDefaults, 1e-5);
            c::check_relative_attention(&HostDefaults, 1e-5);
        }
        let notes = host_fallbacks();
        for op in ["reshape", "attention_kv", "relative_attention"] {
            let mine: Vec<&String> =
                notes.iter().filter(|n| n.contains(&format!(" computes {op} on the host ("))).collect();
            assert_eq!(mine.len(), 1, "{op}: {notes:?}");
            assert!(mine[0].contains("host-defaults backend"), "{}", mine[0]);
        }
    }
}
