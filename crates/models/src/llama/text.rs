//! Llama decoder, following transformers' `LlamaForCausalLM` (modeling_llama.py): RMSNorm,
//! rotary embeddings, grouped-query attention and the SwiGLU MLP. Sequences are packed; each
//! forward call appends its tokens to the KV cache, so prefill and decode are the same code.
//!
//! The decoder layer ([`LlamaDecoderLayer`]) and the helpers around the layer stack are public:
//! Mllama's text model ([`crate::mllama::text`]) uses them for its self-attention layers
//! (transformers' `MllamaSelfAttentionDecoderLayer`, the same computation under the same weight
//! names), interleaved with its own gated cross-attention layers.
use super::config::LlamaConfig;
use crate::backend::{AttentionShape, Backend, SeqChunk};
use crate::error::{Error, Result};
use crate::nn::{Linear, RmsNorm};
use crate::weights::Weights;

/// Rejects configs this decoder does not implement: an activation other than SiLU, or query
/// heads that are not a multiple of the key/value heads.
pub fn check_config(c: &LlamaConfig) -> Result<()> {
    if c.hidden_act != "silu" {
        return Err(Error::invalid(format!("unsupported text hidden_act `{}`", c.hidden_act)));
    }
    if c.kv_heads() == 0 || !c.num_attention_heads.is_multiple_of(c.kv_heads()) {
        return Err(Error::invalid(format!(
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            c.num_attention_heads,
            c.kv_heads()
        )));
    }
    Ok(())
}

/// The self-attention shape of `c`'s layers.
pub fn attention_shape(c: &LlamaConfig) -> AttentionShape {
    AttentionShape::new(c.num_attention_heads, c.kv_heads(), c.head_dim())
}

/// What every layer of one forward call rotates its queries and keys by: each packed row's
/// position and the RoPE inverse frequencies (transformers computes `position_embeddings` once
/// per forward with `LlamaRotaryEmbedding` and hands them to every layer).
pub struct RotaryPositions<'a> {
    positions: Vec<usize>,
    inv_freq: &'a [f32],
}

impl<'a> RotaryPositions<'a> {
    /// Positions of the rows of packed `chunks`, each chunk continuing its sequence at `start`.
    pub fn new(chunks: &[SeqChunk], inv_freq: &'a [f32]) -> Self {
        Self { positions: chunks.iter().flat_map(|c| c.start..c.start + c.len).collect(), inv_freq }
    }
}

/// The final-normed hidden state of each chunk's last row of packed `x`, `[chunks, hidden]`
/// (`LlamaModel.norm`, applied only to the rows whose next token is predicted).
pub fn norm_last_rows<B: Backend>(b: &B, norm: &RmsNorm<B>, x: &B::Tensor, chunks: &[SeqChunk]) -> Result<B::Tensor> {
    let mut last = Vec::with_capacity(chunks.len());
    let mut end = 0;
    for c in chunks {
        end += c.len;
        last.push(end - 1);
    }
    norm.forward(b, &b.gather_rows(x, &last)?)
}

/// `LlamaMLP`: `down_proj(silu(gate_proj(x)) * up_proj(x))`.
pub struct LlamaMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> LlamaMlp<B> {
    pub fn forward(&self, b: &B, h: &B::Tensor) -> Result<B::Tensor> {
        let gate = self.gate_proj.forward(b, h)?;
        let up = self.up_proj.forward(b, h)?;
        self.down_proj.forward(b, &b.silu_mul(&gate, &up)?)
    }
}

/// transformers' `LlamaDecoderLayer` (and Mllama's `MllamaSelfAttentionDecoderLayer`): pre-norm
/// rotary self-attention over the KV cache, then the pre-norm SwiGLU MLP, each added back to the
/// residual stream.
pub struct LlamaDecoderLayer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    post_attention_layernorm: RmsNorm<B>,
    mlp: LlamaMlp<B>,
    shape: AttentionShape,
}

impl<B: Backend> LlamaDecoderLayer<B> {
    /// `w` is prefixed with the layer (`model.layers.{i}`), so that `input_layernorm.weight`,
    /// `self_attn.{q,k,v,o}_proj.*`, `post_attention_layernorm.weight` and
    /// `mlp.{gate,up,down}_proj.*` resolve. Biases are loaded as `attention_bias` / `mlp_bias` say.
    pub fn load(w: &Weights<B>, c: &LlamaConfig) -> Result<Self> {
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (qw, kw) = (c.num_attention_heads * hd, c.kv_heads() * hd);
        let (a, m) = (w.sub("self_attn"), w.sub("mlp"));
        Ok(Self {
            input_layernorm: RmsNorm::load(w, "input_layernorm", d, c.rms_norm_eps)?,
            q_proj: Linear::load(&a, "q_proj", qw, d, c.attention_bias)?,
            k_proj: Linear::load(&a, "k_proj", kw, d, c.attention_bias)?,
            v_proj: Linear::load(&a, "v_proj", kw, d, c.attention_bias)?,
            o_proj: Linear::load(&a, "o_proj", d, qw, c.attention_bias)?,
            post_attention_layernorm: RmsNorm::load(w, "post_attention_layernorm", d, c.rms_norm_eps)?,
            mlp: LlamaMlp {
                gate_proj: Linear::load(&m, "gate_proj", f, d, c.mlp_bias)?,
                up_proj: Linear::load(&m, "up_proj", f, d, c.mlp_bias)?,
                down_proj: Linear::load(&m, "down_proj", d, f, c.mlp_bias)?,
            },
            shape: attention_shape(c),
        })
    }

    /// Adds this layer's attention and MLP outputs to the packed residual stream `x` (one chunk
    /// per sequence), appending the chunks' keys/values to layer `cache_layer` of `cache`.
    pub fn forward(
        &self,
        b: &B,
        x: &mut B::Tensor,
        rope: &RotaryPositions,
        chunks: &[SeqChunk],
        cache: &mut B::KvCache,
        cache_layer: usize,
    ) -> Result<()> {
        let hd = self.shape.head_dim;
        let h = self.input_layernorm.forward(b, x)?;
        let mut q = self.q_proj.forward(b, &h)?;
        let mut k = self.k_proj.forward(b, &h)?;
        let v = self.v_proj.forward(b, &h)?;
        b.rotary(&mut q, &rope.positions, hd, rope.inv_freq)?;
        b.rotary(&mut k, &rope.positions, hd, rope.inv_freq)?;
        let a = b.cached_attention(cache, cache_layer, &q, &k, &v, chunks, self.shape)?;
        let h = self.post_attention_layernorm.add_forward(b, x, &self.o_proj.forward(b, &a)?)?;
        b.add_assign(x, &self.mlp.forward(b, &h)?)
    }
}

pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    embed_tokens: B::Tensor,
    layers: Vec<LlamaDecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// `None` when the output projection is tied to the embeddings.
    lm_head: Option<B::Tensor>,
    inv_freq: Vec<f32>,
}

impl<B: Backend> Llama<B> {
    /// `model` is prefixed so that `embed_tokens.weight` resolves; `lm_head` so that `weight` does.
    pub fn load(model: &Weights<B>, lm_head: &Weights<B>, config: &LlamaConfig) -> Result<Self> {
        let c = config;
        let d = c.hidden_size;
        check_config(c)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| LlamaDecoderLayer::load(&model.sub(format_args!("layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let tied = c.tie_word_embeddings;
        if !tied && !lm_head.contains("weight") {
            let files: Vec<String> = lm_head.checkpoint.files().iter().map(|f| f.display().to_string()).collect();
            return Err(Error::invalid(format!(
                "{}: tensor `{}` is missing and config.json says tie_word_embeddings: false, so the output \
                 projection is not the embeddings (transformers would initialise it at random)",
                files.join(", "),
                lm_head.full_name("weight")
            )));
        }
        Ok(Self {
            embed_tokens: model.get("embed_tokens.weight", &[c.vocab_size, d])?,
            norm: RmsNorm::load(model, "norm", d, c.rms_norm_eps)?,
            lm_head: if tied {
                None
            } else {
                Some(model.backend.linear_weight(lm_head.get("weight", &[c.vocab_size, d])?)?)
            },
            layers,
            inv_freq: c.inv_freq()?,
            config: config.clone(),
        })
    }

    pub fn attention_shape(&self) -> AttentionShape {
        attention_shape(&self.config)
    }

    /// A KV cache of `slots` sequences of up to `capacity` positions. A sliding window
    /// (Mistral) shorter than `capacity` is refused here, before any work: the backend's cached
    /// attention reads every cached position, so beyond the window answers would differ.
    pub fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        self.check_window(capacity)?;
        let s = self.attention_shape();
        b.kv_cache(self.layers.len(), slots, capacity, s.kv_heads, s.head_dim)
    }

    /// Refuses sequences of more than `sliding_window` positions (`positions` long): up to the
    /// window, windowed and full causal attention are the same computation (transformers' mask
    /// keeps key j for query i when `i - window < j <= i`); past it they are not, and the
    /// backend's cached attention has no window.
    pub fn check_window(&self, positions: usize) -> Result<()> {
        match self.config.sliding_window {
            Some(window) if positions > window => Err(Error::invalid(format!(
                "a sequence of up to {positions} positions (prompt + new tokens) is longer than the language \
                 model's sliding_window of {window}: from position {window} on it attends only to the last \
                 {window} positions, which icet's cached attention does not implement; keep prompt + \
                 --max-new-tokens within {window}"
            ))),
            _ => Ok(()),
        }
    }

    pub fn embed(&self, b: &B, ids: &[u32]) -> Result<B::Tensor> {
        b.embedding(&self.embed_tokens, ids)
    }

    /// Runs the decoder over packed `embeds` (one chunk per sequence, appended to `cache`) and
    /// returns the final-normed hidden state of each chunk's last token, `[chunks, hidden]`.
    pub fn forward(&self, b: &B, embeds: B::Tensor, chunks: &[SeqChunk], cache: &mut B::KvCache) -> Result<B::Tensor> {
        self.check_window(chunks.iter().map(|c| c.start + c.len).max().unwrap_or(0))?;
        let rope = RotaryPositions::new(chunks, &self.inv_freq);
        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            layer.forward(b, &mut x, &rope, chunks, cache, i)?;
        }
        norm_last_rows(b, &self.norm, &x, chunks)
    }

    /// Vocabulary logits for final hidden states.
    pub fn logits(&self, b: &B, hidden: &B::Tensor) -> Result<B::Tensor> {
        b.linear(hidden, self.lm_head.as_ref().unwrap_or(&self.embed_tokens), None)
    }
}
