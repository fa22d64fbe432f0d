//! Llama decoder, following transformers' `LlamaForCausalLM` (modeling_llama.py): RMSNorm,
//! rotary embeddings, grouped-query attention and the SwiGLU MLP. Sequences are packed; each
//! forward call appends its tokens to the KV cache, so prefill and decode are the same code.
use super::config::LlamaConfig;
use crate::backend::{AttentionShape, Backend, SeqChunk};
use crate::error::{Error, Result};
use crate::nn::{Linear, RmsNorm};
use crate::weights::Weights;

struct DecoderLayer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    post_attention_layernorm: RmsNorm<B>,
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
}

pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    embed_tokens: B::Tensor,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// `None` when the output projection is tied to the embeddings.
    lm_head: Option<B::Tensor>,
    inv_freq: Vec<f32>,
}

impl<B: Backend> Llama<B> {
    /// `model` is prefixed so that `embed_tokens.weight` resolves; `lm_head` so that `weight` does.
    pub fn load(model: &Weights<B>, lm_head: &Weights<B>, config: &LlamaConfig) -> Result<Self> {
        let c = config;
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (qw, kw) = (c.num_attention_heads * hd, c.kv_heads() * hd);
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
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = model.sub(format_args!("layers.{i}"));
            let (a, m) = (l.sub("self_attn"), l.sub("mlp"));
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(&l, "input_layernorm", d, c.rms_norm_eps)?,
                q_proj: Linear::load(&a, "q_proj", qw, d, c.attention_bias)?,
                k_proj: Linear::load(&a, "k_proj", kw, d, c.attention_bias)?,
                v_proj: Linear::load(&a, "v_proj", kw, d, c.attention_bias)?,
                o_proj: Linear::load(&a, "o_proj", d, qw, c.attention_bias)?,
                post_attention_layernorm: RmsNorm::load(&l, "post_attention_layernorm", d, c.rms_norm_eps)?,
                gate_proj: Linear::load(&m, "gate_proj", f, d, c.mlp_bias)?,
                up_proj: Linear::load(&m, "up_proj", f, d, c.mlp_bias)?,
                down_proj: Linear::load(&m, "down_proj", d, f, c.mlp_bias)?,
            });
        }
        let tied = c.tie_word_embeddings || !lm_head.contains("weight");
        Ok(Self {
            embed_tokens: model.get("embed_tokens.weight", &[c.vocab_size, d])?,
            norm: RmsNorm::load(model, "norm", d, c.rms_norm_eps)?,
            lm_head: if tied { None } else { Some(lm_head.get("weight", &[c.vocab_size, d])?) },
            layers,
            inv_freq: c.inv_freq()?,
            config: config.clone(),
        })
    }

    pub fn attention_shape(&self) -> AttentionShape {
        let c = &self.config;
        AttentionShape::new(c.num_attention_heads, c.kv_heads(), c.head_dim())
    }

    pub fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        let s = self.attention_shape();
        b.kv_cache(self.layers.len(), slots, capacity, s.kv_heads, s.head_dim)
    }

    pub fn embed(&self, b: &B, ids: &[u32]) -> Result<B::Tensor> {
        b.embedding(&self.embed_tokens, ids)
    }

    /// Runs the decoder over packed `embeds` (one chunk per sequence, appended to `cache`) and
    /// returns the final-normed hidden state of each chunk's last token, `[chunks, hidden]`.
    pub fn forward(&self, b: &B, embeds: B::Tensor, chunks: &[SeqChunk], cache: &mut B::KvCache) -> Result<B::Tensor> {
        let positions: Vec<usize> = chunks.iter().flat_map(|c| c.start..c.start + c.len).collect();
        let shape = self.attention_shape();
        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(b, &x)?;
            let mut q = layer.q_proj.forward(b, &h)?;
            let mut k = layer.k_proj.forward(b, &h)?;
            let v = layer.v_proj.forward(b, &h)?;
            b.rotary(&mut q, &positions, shape.head_dim, &self.inv_freq)?;
            b.rotary(&mut k, &positions, shape.head_dim, &self.inv_freq)?;
            let a = b.cached_attention(cache, i, &q, &k, &v, chunks, shape)?;
            b.add_assign(&mut x, &layer.o_proj.forward(b, &a)?)?;
            let h = layer.post_attention_layernorm.forward(b, &x)?;
            let gate = layer.gate_proj.forward(b, &h)?;
            let up = layer.up_proj.forward(b, &h)?;
            b.add_assign(&mut x, &layer.down_proj.forward(b, &b.silu_mul(&gate, &up)?)?)?;
        }
        let mut last = Vec::with_capacity(chunks.len());
        let mut end = 0;
        for c in chunks {
            end += c.len;
            last.push(end - 1);
        }
        self.norm.forward(b, &b.gather_rows(&x, &last)?)
    }

    /// Vocabulary logits for final hidden states.
    pub fn logits(&self, b: &B, hidden: &B::Tensor) -> Result<B::Tensor> {
        b.linear(hidden, self.lm_head.as_ref().unwrap_or(&self.embed_tokens), None)
    }
}
