//! The Mllama language model, following transformers' `MllamaTextModel` + `lm_head`
//! (modeling_mllama.py): a Llama 3.1 decoder (RMSNorm, Llama 3 RoPE scaling, GQA, SwiGLU) in
//! which the layers listed in `cross_attention_layers` are *cross-attention* layers instead of
//! self-attention layers (`MllamaCrossAttentionDecoderLayer`): queries from the text (with a
//! per-head `q_norm`), keys/values from the projected vision states (per-head `k_norm`),
//! `tanh`-gated attention and MLP residuals. The self-attention layers
//! (`MllamaSelfAttentionDecoderLayer`) are Llama's `LlamaDecoderLayer`, weight names included:
//! [`crate::llama::text::LlamaDecoderLayer`] runs them; this module adds the cross-attention
//! layers and their interleaving.
//!
//! `cross_attention_mask` semantics (`_prepare_cross_attention_mask` and the processor's
//! `get_cross_attention_token_mask`, one image per prompt): text from the `<|image|>` token on
//! attends to the tokens of the image's real tiles; text before it attends to nothing. For those
//! "fully masked" rows transformers multiplies the additive mask by 0 — so they attend, unmasked,
//! to *every* vision token, padded tiles included — and zeroes their MLP output
//! (`full_text_row_masked_out_mask`); the gated attention output is still added. We do exactly
//! that (Meta's reference zeroes the attention output too; parity here is with transformers).
//! Generated tokens repeat the last prompt row's mask (`_update_model_kwargs_for_generation`).
//!
//! The cross-attention keys/values are computed once per image ([`CrossKv`]) and reused for the
//! prefill and every decoded token, as transformers' cache does. Generation runs under the
//! scheduler with [`super::stream::MllamaStream`].
use super::config::MllamaTextConfig;
use crate::backend::{AttentionShape, Backend, SeqChunk};
use crate::error::{Error, Result};
use crate::llama::text::{attention_shape, check_config, norm_last_rows, LlamaDecoderLayer, LlamaMlp, RotaryPositions};
use crate::llama::LlamaConfig;
use crate::nn::{Linear, RmsNorm};
use crate::weights::Weights;

/// `MllamaCrossAttentionDecoderLayer`.
struct CrossLayer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    /// Pre-multiplied by `tanh(cross_attn_attn_gate)`.
    o_proj: Linear<B>,
    q_norm: RmsNorm<B>,
    k_norm: RmsNorm<B>,
    post_attention_layernorm: RmsNorm<B>,
    /// `down_proj` pre-multiplied by `tanh(cross_attn_mlp_gate)`.
    mlp: LlamaMlp<B>,
}

enum Layer<B: Backend> {
    /// `MllamaSelfAttentionDecoderLayer`, with its index in the self-attention KV cache.
    SelfAttn {
        layer: LlamaDecoderLayer<B>,
        cache_layer: usize,
    },
    Cross(CrossLayer<B>),
}

/// Cross-attention keys/values of the images in flight, for every cross layer: a pool of regions
/// of `region_rows` rows, region `d` holding one states tensor's rows (real tiles first). Text
/// from `<|image|>` on and every generated token read a region's real rows; text before the
/// image (prefill only) reads all of them, padded tiles included.
pub struct CrossKv<B: Backend> {
    /// Per cross layer: keys and values, `regions * region_rows` rows.
    kv: Vec<(B::Tensor, B::Tensor)>,
    region_rows: usize,
    /// Per region: the rows written, and the real-tile rows among them.
    rows: Vec<usize>,
    real_rows: Vec<usize>,
}

impl<B: Backend> CrossKv<B> {
    fn regions(&self) -> usize {
        self.rows.len()
    }
}

/// How one forward call's rows meet the cross-attention keys/values (the same for every cross
/// layer): queries grouped by image, attending to its real tiles, and (prefill only) the text
/// before the image, attending to every row of its image.
struct CrossPlan {
    real_q_rows: Vec<usize>,
    real_q_lens: Vec<usize>,
    real_kv_rows: Vec<usize>,
    real_kv_lens: Vec<usize>,
    /// `real_q_rows` is `0..rows` and there is no text before an image: no gather or scatter of queries.
    identity: bool,
    masked_q_rows: Vec<usize>,
    masked_q_lens: Vec<usize>,
    masked_kv_rows: Vec<usize>,
    masked_kv_lens: Vec<usize>,
}

impl CrossPlan {
    fn new<B: Backend>(chunks: &[SeqChunk], cross: &[CrossRows], kv: &CrossKv<B>) -> Self {
        let images = kv.regions();
        let (mut real_by_image, mut masked_by_image) = (vec![vec![]; images], vec![vec![]; images]);
        let mut row = 0;
        for (c, x) in chunks.iter().zip(cross) {
            let masked = x.masked.min(c.len);
            masked_by_image[x.image].extend(row..row + masked);
            real_by_image[x.image].extend(row + masked..row + c.len);
            row += c.len;
        }
        let mut plan = CrossPlan {
            real_q_rows: vec![],
            real_q_lens: vec![],
            real_kv_rows: vec![],
            real_kv_lens: vec![],
            identity: false,
            masked_q_rows: vec![],
            masked_q_lens: vec![],
            masked_kv_rows: vec![],
            masked_kv_lens: vec![],
        };
        for (d, rows) in real_by_image.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let start = d * kv.region_rows;
            plan.real_q_rows.extend(rows);
            plan.real_q_lens.push(rows.len());
            plan.real_kv_lens.push(kv.real_rows[d]);
            plan.real_kv_rows.extend(start..start + kv.real_rows[d]);
        }
        for (d, rows) in masked_by_image.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let start = d * kv.region_rows;
            plan.masked_q_rows.extend(rows);
            plan.masked_q_lens.push(rows.len());
            plan.masked_kv_lens.push(kv.rows[d]);
            plan.masked_kv_rows.extend(start..start + kv.rows[d]);
        }
        plan.identity = plan.masked_q_rows.is_empty() && plan.real_q_rows.iter().enumerate().all(|(i, &r)| i == r);
        plan
    }
}

/// Per chunk of a forward call: how many of its rows (the first ones) are before the image.
#[derive(Clone, Copy, Debug)]
pub struct CrossRows {
    pub image: usize,
    pub masked: usize,
}

pub struct MllamaText<B: Backend> {
    pub config: MllamaTextConfig,
    embed_tokens: B::Tensor,
    layers: Vec<Layer<B>>,
    norm: RmsNorm<B>,
    lm_head: B::Tensor,
    inv_freq: Vec<f32>,
    self_layers: usize,
}

fn host(w: &Weights<impl Backend>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    w.checkpoint.load_f32(&w.full_name(name), shape)
}

fn linear_gated<B: Backend>(w: &Weights<B>, name: &str, out: usize, inp: usize, gate: f32) -> Result<Linear<B>> {
    let weight: Vec<f32> = host(&w.sub(name), "weight", &[out, inp])?.iter().map(|x| x * gate).collect();
    Linear::new(w.backend, w.backend.from_host(&weight, out, inp)?, None)
}

impl<B: Backend> MllamaText<B> {
    /// `model` is prefixed so that `embed_tokens.weight` resolves, `lm_head` so that `weight` does.
    pub fn load(model: &Weights<B>, lm_head: &Weights<B>, config: &MllamaTextConfig) -> Result<Self> {
        let c = &config.llama;
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (qw, kw) = (c.num_attention_heads * hd, c.kv_heads() * hd);
        check_config(c)?;
        // `MllamaTextSelfAttention` and `MllamaTextMLP` have no biases, whatever the config says.
        let self_config = LlamaConfig { attention_bias: false, mlp_bias: false, ..c.clone() };
        let eps = c.rms_norm_eps;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        let mut self_layers = 0;
        for i in 0..c.num_hidden_layers {
            let l = model.sub(format_args!("layers.{i}"));
            let m = l.sub("mlp");
            if config.cross_attention_layers.contains(&i) {
                let a = l.sub("cross_attn");
                let attn_gate = host(&l, "cross_attn_attn_gate", &[1])?[0].tanh();
                let mlp_gate = host(&l, "cross_attn_mlp_gate", &[1])?[0].tanh();
                layers.push(Layer::Cross(CrossLayer {
                    input_layernorm: RmsNorm::load(&l, "input_layernorm", d, eps)?,
                    q_proj: Linear::load(&a, "q_proj", qw, d, false)?,
                    k_proj: Linear::load(&a, "k_proj", kw, d, false)?,
                    v_proj: Linear::load(&a, "v_proj", kw, d, false)?,
                    o_proj: linear_gated(&a, "o_proj", d, qw, attn_gate)?,
                    q_norm: RmsNorm::load(&a, "q_norm", hd, eps)?,
                    k_norm: RmsNorm::load(&a, "k_norm", hd, eps)?,
                    post_attention_layernorm: RmsNorm::load(&l, "post_attention_layernorm", d, eps)?,
                    mlp: LlamaMlp {
                        gate_proj: Linear::load(&m, "gate_proj", f, d, false)?,
                        up_proj: Linear::load(&m, "up_proj", f, d, false)?,
                        down_proj: linear_gated(&m, "down_proj", d, f, mlp_gate)?,
                    },
                }));
            } else {
                let layer = LlamaDecoderLayer::load(&l, &self_config)?;
                layers.push(Layer::SelfAttn { layer, cache_layer: self_layers });
                self_layers += 1;
            }
        }
        Ok(Self {
            // MllamaTextModel.embed_tokens has vocab_size + 8 rows (<|image|> = vocab_size).
            embed_tokens: model.get("embed_tokens.weight", &[c.vocab_size + 8, d])?,
            norm: RmsNorm::load(model, "norm", d, eps)?,
            lm_head: model.backend.linear_weight(lm_head.get("weight", &[c.vocab_size, d])?)?,
            layers,
            inv_freq: c.inv_freq()?,
            self_layers,
            config: config.clone(),
        })
    }

    fn shape(&self) -> AttentionShape {
        attention_shape(&self.config.llama)
    }

    /// RMSNorm over each head of `x` = `[rows, heads*hd]` (`MllamaTextRMSNorm` on
    /// `[b, heads, rows, hd]`).
    fn per_head_norm(&self, b: &B, norm: &RmsNorm<B>, x: B::Tensor) -> Result<B::Tensor> {
        let (rows, cols) = b.dims(&x);
        let hd = self.shape().head_dim;
        let x = b.reshape(x, rows * cols / hd, hd)?;
        b.reshape(norm.forward(b, &x)?, rows, cols)
    }

    /// One cross layer's keys (`k_proj`, per-head `k_norm`) and values (`v_proj`) of `states`.
    fn project_kv(&self, b: &B, l: &CrossLayer<B>, states: &B::Tensor) -> Result<(B::Tensor, B::Tensor)> {
        Ok((self.per_head_norm(b, &l.k_norm, l.k_proj.forward(b, states)?)?, l.v_proj.forward(b, states)?))
    }

    /// An empty pool of `regions` regions of `region_rows` rows (rows are written before they
    /// are read, so the buffers are not filled).
    pub(super) fn cross_kv_pool(&self, b: &B, regions: usize, region_rows: usize) -> Result<CrossKv<B>> {
        let kw = self.shape().kv_heads * self.shape().head_dim;
        let mut kv = Vec::new();
        for layer in &self.layers {
            if let Layer::Cross(_) = layer {
                kv.push((b.uninit(regions * region_rows, kw)?, b.uninit(regions * region_rows, kw)?));
            }
        }
        Ok(CrossKv { kv, region_rows, rows: vec![0; regions], real_rows: vec![0; regions] })
    }

    /// Grows a pool to `regions` regions, keeping the regions it has.
    pub(super) fn grow_pool(&self, b: &B, pool: &mut CrossKv<B>, regions: usize) -> Result<()> {
        let old = pool.regions();
        let mut bigger = self.cross_kv_pool(b, regions, pool.region_rows)?;
        let kept: Vec<usize> = (0..old * pool.region_rows).collect();
        for ((k, v), (k_new, v_new)) in pool.kv.iter().zip(bigger.kv.iter_mut()) {
            b.scatter_rows(k_new, &kept, k)?;
            b.scatter_rows(v_new, &kept, v)?;
        }
        bigger.rows[..old].copy_from_slice(&pool.rows);
        bigger.real_rows[..old].copy_from_slice(&pool.real_rows);
        *pool = bigger;
        Ok(())
    }

    /// Writes the keys/values of `states` (first `real_rows` rows real) into region `region`.
    pub(super) fn write_region(
        &self,
        b: &B,
        pool: &mut CrossKv<B>,
        region: usize,
        states: &B::Tensor,
        real_rows: usize,
    ) -> Result<()> {
        let n = b.dims(states).0;
        if real_rows == 0 || real_rows > n || n > pool.region_rows {
            return Err(Error::invalid(format!(
                "cross states: {real_rows} real rows of {n} (region of {})",
                pool.region_rows
            )));
        }
        let rows: Vec<usize> = (region * pool.region_rows..region * pool.region_rows + n).collect();
        let mut entries = pool.kv.iter_mut();
        for layer in &self.layers {
            let Layer::Cross(l) = layer else { continue };
            let (k_pool, v_pool) = entries.next().expect("one pool entry per cross layer");
            let (k, v) = self.project_kv(b, l, states)?;
            b.scatter_rows(k_pool, &rows, &k)?;
            b.scatter_rows(v_pool, &rows, &v)?;
        }
        pool.rows[region] = n;
        pool.real_rows[region] = real_rows;
        Ok(())
    }

    /// Cross-attention of the rows of one call (`q` = `[rows, heads*hd]`) under `plan`.
    fn cross_attention(
        &self,
        b: &B,
        q: &B::Tensor,
        plan: &CrossPlan,
        kv: &CrossKv<B>,
        layer: usize,
    ) -> Result<B::Tensor> {
        let shape = self.shape();
        let (k_pool, v_pool) = &kv.kv[layer];
        let real = |q: &B::Tensor| -> Result<B::Tensor> {
            let (k, v) = (b.gather_rows(k_pool, &plan.real_kv_rows)?, b.gather_rows(v_pool, &plan.real_kv_rows)?);
            b.attention_kv(q, &k, &v, &plan.real_q_lens, &plan.real_kv_lens, shape)
        };
        if plan.identity {
            return real(q);
        }
        let (rows, cols) = b.dims(q);
        let mut out = b.from_host(&vec![0.0; rows * cols], rows, cols)?;
        if !plan.real_q_rows.is_empty() {
            let a = real(&b.gather_rows(q, &plan.real_q_rows)?)?;
            b.scatter_rows(&mut out, &plan.real_q_rows, &a)?;
        }
        if !plan.masked_q_rows.is_empty() {
            let k = b.gather_rows(k_pool, &plan.masked_kv_rows)?;
            let v = b.gather_rows(v_pool, &plan.masked_kv_rows)?;
            let qm = b.gather_rows(q, &plan.masked_q_rows)?;
            let a = b.attention_kv(&qm, &k, &v, &plan.masked_q_lens, &plan.masked_kv_lens, shape)?;
            b.scatter_rows(&mut out, &plan.masked_q_rows, &a)?;
        }
        Ok(out)
    }

    pub fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        let s = self.shape();
        b.kv_cache(self.self_layers.max(1), slots, capacity, s.kv_heads, s.head_dim)
    }

    pub fn embed(&self, b: &B, ids: &[u32]) -> Result<B::Tensor> {
        b.embedding(&self.embed_tokens, ids)
    }

    /// Runs the decoder over packed `embeds` (one chunk per sequence; `cross[i]` says chunk `i`'s
    /// image and how many of its first rows precede the image) and returns the final-normed
    /// hidden state of each chunk's last token. Without `kv` (text only) the cross-attention
    /// layers are skipped, as `MllamaTextModel.forward` does without cross-attention states.
    pub fn forward(
        &self,
        b: &B,
        embeds: B::Tensor,
        chunks: &[SeqChunk],
        cross: &[CrossRows],
        kv: Option<&CrossKv<B>>,
        cache: &mut B::KvCache,
    ) -> Result<B::Tensor> {
        let rope = RotaryPositions::new(chunks, &self.inv_freq);
        // How the rows meet the cross-attention K/V, and the rows whose MLP output is zeroed.
        let plan = kv.map(|kv| CrossPlan::new(chunks, cross, kv));
        let masked_rows: &[usize] = plan.as_ref().map(|p| p.masked_q_rows.as_slice()).unwrap_or(&[]);
        let d = self.config.llama.hidden_size;
        let zeros = if masked_rows.is_empty() {
            None
        } else {
            Some(b.from_host(&vec![0.0; masked_rows.len() * d], masked_rows.len(), d)?)
        };
        let mut x = embeds;
        let mut cross_index = 0;
        for layer in &self.layers {
            match layer {
                Layer::SelfAttn { layer, cache_layer } => {
                    layer.forward(b, &mut x, &rope, chunks, cache, *cache_layer)?
                }
                Layer::Cross(_) if kv.is_none() => {}
                Layer::Cross(l) => {
                    let (kv, plan) = (kv.expect("matched"), plan.as_ref().expect("with kv"));
                    let h = l.input_layernorm.forward(b, &x)?;
                    let q = self.per_head_norm(b, &l.q_norm, l.q_proj.forward(b, &h)?)?;
                    let a = self.cross_attention(b, &q, plan, kv, cross_index)?;
                    cross_index += 1;
                    let h = l.post_attention_layernorm.add_forward(b, &mut x, &l.o_proj.forward(b, &a)?)?;
                    let mut m = l.mlp.forward(b, &h)?;
                    if let Some(z) = &zeros {
                        b.scatter_rows(&mut m, masked_rows, z)?;
                    }
                    b.add_assign(&mut x, &m)?;
                }
            }
        }
        norm_last_rows(b, &self.norm, &x, chunks)
    }

    pub fn logits(&self, b: &B, hidden: &B::Tensor) -> Result<B::Tensor> {
        b.linear(hidden, &self.lm_head, None)
    }
}
