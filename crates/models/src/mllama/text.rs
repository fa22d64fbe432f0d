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
//! prefill and every decoded token, as transformers' cache does.
use super::config::MllamaTextConfig;
use crate::backend::{AttentionShape, Backend, SeqChunk};
use crate::error::{Error, Result};
use std::sync::Arc;

use crate::generation::{
    run_stream, step_chunks, step_seed, DecodeOptions, FinishReason, Generated, Stream, StreamModel, StreamSeq,
};
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

/// One sequence to continue: its prompt ids (exactly one `<|image|>`) and its image's projected
/// cross-attention states `[max_tiles * tokens, hidden]`, whose first `real_rows` rows belong to
/// real tiles. Without states (and without `<|image|>`) the sequence is text-only: as in
/// transformers, the cross-attention layers are then skipped — every request of a batch must be
/// text-only, or none.
pub struct CrossRequest<'a, B: Backend> {
    pub prompt_ids: Vec<u32>,
    pub cross_states: Option<&'a B::Tensor>,
    pub real_rows: usize,
    pub seed: u64,
}

/// Cross-attention keys/values of a batch of distinct images for every cross layer, packed image
/// after image, twice: `real` holds each image's real-tile rows (what text from `<|image|>` on and
/// every generated token reads — used as is, without a gather, whenever a call's rows go image by
/// image), `all` every row, padded tiles included (read only by text before the image, i.e. at
/// prefill; [`CrossKv::release_prefill_only`] frees it afterwards).
pub struct CrossKv<B: Backend> {
    real: Vec<(B::Tensor, B::Tensor)>,
    all: Vec<(B::Tensor, B::Tensor)>,
    real_offsets: Vec<usize>,
    real_rows: Vec<usize>,
    all_offsets: Vec<usize>,
    all_rows: Vec<usize>,
    /// A stream's pool ([`MllamaText::generate_stream`]): image `d` owns a fixed region of `real`
    /// holding all its rows, real tiles first, so `all` is not kept and real rows are gathered.
    pooled: bool,
}

impl<B: Backend> CrossKv<B> {
    /// Frees the keys/values that only text before the image reads (once the prefill is done).
    pub fn release_prefill_only(&mut self) {
        self.all.clear();
    }

    /// Keys/values of every row of the images, for text before an image.
    fn all_rows_of(&self, layer: usize) -> Option<&(B::Tensor, B::Tensor)> {
        if self.pooled {
            self.real.get(layer)
        } else {
            self.all.get(layer)
        }
    }
}

/// How one forward call's rows meet the cross-attention keys/values (the same for every cross
/// layer): queries grouped by image, attending to real tiles, and (prefill only) the text before
/// the image, attending to every row of its image.
struct CrossPlan {
    real_q_rows: Vec<usize>,
    real_q_lens: Vec<usize>,
    /// `None`: the groups are exactly the images in order, so `CrossKv::real` is used as is.
    real_kv_rows: Option<Vec<usize>>,
    real_kv_lens: Vec<usize>,
    /// `real_q_rows` is `0..rows` and there is no text before an image: no gather or scatter.
    identity: bool,
    masked_q_rows: Vec<usize>,
    masked_q_lens: Vec<usize>,
    masked_kv_rows: Vec<usize>,
    masked_kv_lens: Vec<usize>,
}

impl CrossPlan {
    fn new<B: Backend>(chunks: &[SeqChunk], cross: &[CrossRows], kv: &CrossKv<B>) -> Self {
        let images = kv.real_rows.len();
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
            real_kv_rows: None,
            real_kv_lens: vec![],
            identity: false,
            masked_q_rows: vec![],
            masked_q_lens: vec![],
            masked_kv_rows: vec![],
            masked_kv_lens: vec![],
        };
        let mut every_image = true;
        let mut kv_rows = vec![];
        for (d, rows) in real_by_image.iter().enumerate() {
            if rows.is_empty() {
                every_image = false;
                continue;
            }
            plan.real_q_rows.extend(rows);
            plan.real_q_lens.push(rows.len());
            plan.real_kv_lens.push(kv.real_rows[d]);
            kv_rows.extend(kv.real_offsets[d]..kv.real_offsets[d] + kv.real_rows[d]);
        }
        if !every_image || kv.pooled {
            plan.real_kv_rows = Some(kv_rows);
        }
        for (d, rows) in masked_by_image.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            plan.masked_q_rows.extend(rows);
            plan.masked_q_lens.push(rows.len());
            plan.masked_kv_lens.push(kv.all_rows[d]);
            plan.masked_kv_rows.extend(kv.all_offsets[d]..kv.all_offsets[d] + kv.all_rows[d]);
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
    Ok(Linear { weight: w.backend.from_host(&weight, out, inp)?, bias: None })
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
            lm_head: lm_head.get("weight", &[c.vocab_size, d])?,
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

    /// Cross-attention keys/values of every image in `states` (each `[rows_i, hidden]`, the first
    /// `real_rows[i]` rows from real tiles), for every cross layer.
    pub fn cross_kv(&self, b: &B, states: &[&B::Tensor], real_rows: &[usize]) -> Result<CrossKv<B>> {
        let all_rows: Vec<usize> = states.iter().map(|s| b.dims(s).0).collect();
        let (mut all_offsets, mut real_offsets) = (vec![], vec![]);
        let (mut total, mut total_real) = (0, 0);
        for (&n, &r) in all_rows.iter().zip(real_rows) {
            if r == 0 || r > n {
                return Err(Error::invalid(format!("cross states: {r} real rows of {n}")));
            }
            all_offsets.push(total);
            real_offsets.push(total_real);
            total += n;
            total_real += r;
        }
        let real_index: Vec<usize> = all_offsets.iter().zip(real_rows).flat_map(|(&off, &r)| off..off + r).collect();
        let kw = self.shape().kv_heads * self.shape().head_dim;
        let (mut all, mut real) = (Vec::new(), Vec::new());
        for layer in &self.layers {
            let Layer::Cross(l) = layer else { continue };
            let mut k_all = b.from_host(&vec![0.0; total * kw], total, kw)?;
            let mut v_all = b.from_host(&vec![0.0; total * kw], total, kw)?;
            for (i, s) in states.iter().enumerate() {
                let rows: Vec<usize> = (all_offsets[i]..all_offsets[i] + all_rows[i]).collect();
                let (k, v) = self.project_kv(b, l, s)?;
                b.scatter_rows(&mut k_all, &rows, &k)?;
                b.scatter_rows(&mut v_all, &rows, &v)?;
            }
            real.push((b.gather_rows(&k_all, &real_index)?, b.gather_rows(&v_all, &real_index)?));
            all.push((k_all, v_all));
        }
        Ok(CrossKv { real, all, real_offsets, real_rows: real_rows.to_vec(), all_offsets, all_rows, pooled: false })
    }

    /// One cross layer's keys (`k_proj`, per-head `k_norm`) and values (`v_proj`) of `states`.
    fn project_kv(&self, b: &B, l: &CrossLayer<B>, states: &B::Tensor) -> Result<(B::Tensor, B::Tensor)> {
        Ok((self.per_head_norm(b, &l.k_norm, l.k_proj.forward(b, states)?)?, l.v_proj.forward(b, states)?))
    }

    /// An empty stream pool: `regions` blocks of `region_rows` rows per cross layer (rows are
    /// written before they are read, so the buffers are not filled).
    fn cross_kv_pool(&self, b: &B, regions: usize, region_rows: usize) -> Result<CrossKv<B>> {
        let kw = self.shape().kv_heads * self.shape().head_dim;
        let mut real = Vec::new();
        for layer in &self.layers {
            if let Layer::Cross(_) = layer {
                real.push((b.uninit(regions * region_rows, kw)?, b.uninit(regions * region_rows, kw)?));
            }
        }
        let offsets: Vec<usize> = (0..regions).map(|r| r * region_rows).collect();
        Ok(CrossKv {
            real,
            all: vec![],
            real_offsets: offsets.clone(),
            real_rows: vec![0; regions],
            all_offsets: offsets,
            all_rows: vec![0; regions],
            pooled: true,
        })
    }

    /// Grows a stream pool to `regions` regions, keeping the regions it has.
    fn grow_pool(&self, b: &B, kv: &mut CrossKv<B>, regions: usize) -> Result<()> {
        let old = kv.all_offsets.len();
        let region_rows = kv.real.first().map_or(0, |(k, _)| b.dims(k).0) / old.max(1);
        let mut bigger = self.cross_kv_pool(b, regions, region_rows)?;
        let kept: Vec<usize> = (0..old * region_rows).collect();
        for ((k, v), (k_new, v_new)) in kv.real.iter().zip(bigger.real.iter_mut()) {
            b.scatter_rows(k_new, &kept, k)?;
            b.scatter_rows(v_new, &kept, v)?;
        }
        bigger.real_rows[..old].copy_from_slice(&kv.real_rows);
        bigger.all_rows[..old].copy_from_slice(&kv.all_rows);
        *kv = bigger;
        Ok(())
    }

    /// Writes the keys/values of `states` (first `real_rows` rows real) into pool region `region`.
    fn write_region(
        &self,
        b: &B,
        kv: &mut CrossKv<B>,
        region: usize,
        states: &B::Tensor,
        real_rows: usize,
    ) -> Result<()> {
        let n = b.dims(states).0;
        let pool_rows = kv.real.first().map_or(0, |(k, _)| b.dims(k).0);
        let capacity = pool_rows / kv.all_offsets.len().max(1);
        if real_rows == 0 || real_rows > n || n > capacity {
            return Err(Error::invalid(format!("cross states: {real_rows} real rows of {n} (region of {capacity})")));
        }
        let rows: Vec<usize> = (kv.all_offsets[region]..kv.all_offsets[region] + n).collect();
        let mut pool = kv.real.iter_mut();
        for layer in &self.layers {
            let Layer::Cross(l) = layer else { continue };
            let (k_pool, v_pool) = pool.next().expect("one pool entry per cross layer");
            let (k, v) = self.project_kv(b, l, states)?;
            b.scatter_rows(k_pool, &rows, &k)?;
            b.scatter_rows(v_pool, &rows, &v)?;
        }
        kv.all_rows[region] = n;
        kv.real_rows[region] = real_rows;
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
        let (k_real, v_real) = &kv.real[layer];
        let real = |q: &B::Tensor| -> Result<B::Tensor> {
            match &plan.real_kv_rows {
                None => b.attention_kv(q, k_real, v_real, &plan.real_q_lens, &plan.real_kv_lens, shape),
                Some(rows) => {
                    let (k, v) = (b.gather_rows(k_real, rows)?, b.gather_rows(v_real, rows)?);
                    b.attention_kv(q, &k, &v, &plan.real_q_lens, &plan.real_kv_lens, shape)
                }
            }
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
            let (k_all, v_all) = kv
                .all_rows_of(layer)
                .ok_or_else(|| Error::invalid("text before the image after the prefill keys were released"))?;
            let k = b.gather_rows(k_all, &plan.masked_kv_rows)?;
            let v = b.gather_rows(v_all, &plan.masked_kv_rows)?;
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

    /// Runs `requests` to completion as one batch: one packed prefill, then every unfinished
    /// sequence decodes one token per step (greedy or seeded sampling, as
    /// [`crate::generation::generate`]).
    pub fn generate(
        &self,
        b: &B,
        requests: &[CrossRequest<B>],
        opts: &DecodeOptions,
        keep_first_logits: bool,
    ) -> Result<Vec<Generated>> {
        let mut out: Vec<Generated> = requests
            .iter()
            .map(|_| Generated { token_ids: vec![], finish_reason: FinishReason::Length, first_logits: None })
            .collect();
        if requests.is_empty() || opts.max_new_tokens == 0 {
            return Ok(out);
        }
        let text_only = requests.iter().all(|r| r.cross_states.is_none());
        if !text_only && requests.iter().any(|r| r.cross_states.is_none()) {
            return Err(Error::invalid("a batch must be all text-only or all with an image"));
        }
        let image_pos: Vec<usize> =
            requests.iter().map(|r| image_position(&r.prompt_ids, opts, !text_only)).collect::<Result<_>>()?;
        let longest = requests.iter().map(|r| r.prompt_ids.len()).max().unwrap_or(0);
        let capacity = longest + opts.max_new_tokens;
        let limit = self.config.llama.max_position_embeddings;
        if capacity > limit {
            return Err(Error::invalid(format!(
                "prompt of {longest} tokens + {} new tokens exceeds the model's {limit} positions",
                opts.max_new_tokens
            )));
        }
        // Requests that share one states tensor (same image and layer) share its keys/values:
        // they are computed once per distinct tensor.
        let mut distinct: Vec<(&B::Tensor, usize)> = Vec::new();
        let mut image_of = Vec::with_capacity(requests.len());
        for r in requests {
            let Some(s) = r.cross_states else {
                image_of.push(0);
                continue;
            };
            match distinct.iter().position(|(t, real)| std::ptr::eq(*t, s) && *real == r.real_rows) {
                Some(i) => image_of.push(i),
                None => {
                    image_of.push(distinct.len());
                    distinct.push((s, r.real_rows));
                }
            }
        }
        let kv = if text_only {
            None
        } else {
            let states: Vec<&B::Tensor> = distinct.iter().map(|d| d.0).collect();
            let real: Vec<usize> = distinct.iter().map(|d| d.1).collect();
            Some(self.cross_kv(b, &states, &real)?)
        };
        let mut cache = self.new_cache(b, requests.len(), capacity)?;
        let all_ids: Vec<u32> = requests.iter().flat_map(|r| r.prompt_ids.iter().copied()).collect();
        let chunks: Vec<SeqChunk> =
            requests.iter().enumerate().map(|(slot, r)| SeqChunk { slot, start: 0, len: r.prompt_ids.len() }).collect();
        let cross: Vec<CrossRows> =
            image_pos.iter().enumerate().map(|(i, &p)| CrossRows { image: image_of[i], masked: p }).collect();
        let mut live: Vec<usize> = (0..requests.len()).collect();
        let mut kv = kv;
        let mut hidden = self.forward(b, self.embed(b, &all_ids)?, &chunks, &cross, kv.as_ref(), &mut cache)?;
        if let Some(kv) = kv.as_mut() {
            kv.release_prefill_only();
        }
        for step in 0..opts.max_new_tokens {
            let logits = self.logits(b, &hidden)?;
            if step == 0 && keep_first_logits {
                let host = b.to_host(&logits)?;
                let vocab = b.dims(&logits).1;
                for (row, &i) in live.iter().enumerate() {
                    out[i].first_logits = Some(host[row * vocab..(row + 1) * vocab].to_vec());
                }
            }
            let next = match opts.sampling {
                None => b.argmax(&logits)?,
                Some(p) => {
                    let seeds: Vec<u64> = live.iter().map(|&i| step_seed(requests[i].seed, step)).collect();
                    b.sample(&logits, p, &seeds)?
                }
            };
            let mut still = Vec::with_capacity(live.len());
            for (&i, &tok) in live.iter().zip(&next) {
                out[i].token_ids.push(tok);
                if opts.eos_token_ids.contains(&tok) {
                    out[i].finish_reason = FinishReason::Eos;
                } else {
                    still.push(i);
                }
            }
            live = still;
            if live.is_empty() || step + 1 == opts.max_new_tokens {
                break;
            }
            let ids: Vec<u32> = live.iter().map(|&i| *out[i].token_ids.last().unwrap()).collect();
            let chunks: Vec<SeqChunk> = live
                .iter()
                .map(|&i| SeqChunk {
                    slot: i,
                    start: requests[i].prompt_ids.len() + out[i].token_ids.len() - 1,
                    len: 1,
                })
                .collect();
            // Generated tokens come after the image: they attend to its real tiles.
            let cross: Vec<CrossRows> = live.iter().map(|&i| CrossRows { image: image_of[i], masked: 0 }).collect();
            hidden = self.forward(b, self.embed(b, &ids)?, &chunks, &cross, kv.as_ref(), &mut cache)?;
        }
        Ok(out)
    }
}

/// Where `<|image|>` is in a prompt (0 for a text-only one): exactly one with an image, none without.
fn image_position(prompt_ids: &[u32], opts: &DecodeOptions, with_image: bool) -> Result<usize> {
    let found: Vec<usize> =
        prompt_ids.iter().enumerate().filter(|(_, &t)| t == opts.image_token_id).map(|(i, _)| i).collect();
    match (with_image, found.len()) {
        (false, 0) => Ok(0),
        (true, 1) => Ok(found[0]),
        (false, n) => Err(Error::invalid(format!("a text-only prompt has {n} <|image|> tokens"))),
        (true, n) => Err(Error::invalid(format!("the prompt has {n} <|image|> tokens; exactly one is supported"))),
    }
}

/// A request of a stream ([`MllamaText::generate_stream`]): as [`CrossRequest`], owning a share of
/// its states so that they are freed once no sequence in flight reads them.
pub struct OwnedCrossRequest<B: Backend> {
    pub prompt_ids: Vec<u32>,
    pub cross_states: Arc<B::Tensor>,
    pub real_rows: usize,
    pub seed: u64,
}

/// A pool region in use: the states whose keys/values it holds and how many slots read it.
struct Region<B: Backend> {
    states: Arc<B::Tensor>,
    real_rows: usize,
    readers: usize,
}

/// Mllama's text model under [`run_stream`]: cross-attention keys/values live in a pool of regions
/// (grown on demand, at most one per slot); sequences reading the same states (same image and
/// layer) share a region, and a region is rewritten only when its last reader has finished.
struct MllamaStream<'a, B: Backend> {
    text: &'a MllamaText<B>,
    opts: &'a DecodeOptions,
    slots: usize,
    kv: Option<CrossKv<B>>,
    regions: Vec<Option<Region<B>>>,
    /// Per slot: its region and where its `<|image|>` is.
    slot_region: Vec<usize>,
    image_pos: Vec<usize>,
}

impl<B: Backend> StreamModel<B, OwnedCrossRequest<B>> for MllamaStream<'_, B> {
    fn prompt_ids<'r>(&self, request: &'r OwnedCrossRequest<B>) -> &'r [u32] {
        &request.prompt_ids
    }
    fn seed(&self, request: &OwnedCrossRequest<B>) -> u64 {
        request.seed
    }
    fn max_positions(&self) -> usize {
        self.text.config.llama.max_position_embeddings
    }
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        self.text.new_cache(b, slots, capacity)
    }
    fn admit(&mut self, b: &B, slot: usize, r: &OwnedCrossRequest<B>) -> Result<()> {
        self.image_pos[slot] = image_position(&r.prompt_ids, self.opts, true)?;
        let shared = self.regions.iter().position(|g| {
            g.as_ref().is_some_and(|g| Arc::ptr_eq(&g.states, &r.cross_states) && g.real_rows == r.real_rows)
        });
        let region = match shared {
            Some(i) => i,
            None => {
                if self.kv.is_none() {
                    // Every image's states have the same padded shape: size the regions by the first.
                    // Sequences in flight mostly share states (a sweep goes layer-major per image),
                    // so the pool starts with two regions and doubles when it must (at most one a slot).
                    let rows = b.dims(&r.cross_states).0;
                    let regions = self.slots.min(2);
                    self.kv = Some(self.text.cross_kv_pool(b, regions, rows)?);
                    self.regions = (0..regions).map(|_| None).collect();
                }
                let kv = self.kv.as_mut().expect("made above");
                if self.regions.iter().all(Option::is_some) {
                    let regions = (self.regions.len() * 2).min(self.slots);
                    self.text.grow_pool(b, kv, regions)?;
                    self.regions.resize_with(regions, || None);
                }
                let i = self.regions.iter().position(Option::is_none).expect("at most one region per slot in use");
                self.text.write_region(b, kv, i, &r.cross_states, r.real_rows)?;
                self.regions[i] = Some(Region { states: r.cross_states.clone(), real_rows: r.real_rows, readers: 0 });
                i
            }
        };
        self.regions[region].as_mut().expect("in use").readers += 1;
        self.slot_region[slot] = region;
        Ok(())
    }
    fn release(&mut self, slot: usize) {
        let region = &mut self.regions[self.slot_region[slot]];
        if let Some(g) = region.as_mut() {
            g.readers -= 1;
            if g.readers == 0 {
                *region = None;
            }
        }
    }
    fn step(&mut self, b: &B, seqs: &[StreamSeq<OwnedCrossRequest<B>>], cache: &mut B::KvCache) -> Result<B::Tensor> {
        let (ids, chunks) = step_chunks(seqs, |r| &r.prompt_ids);
        // A fresh prompt's text before `<|image|>` reads every row; generated tokens come after it.
        let cross: Vec<CrossRows> = seqs
            .iter()
            .map(|s| CrossRows {
                image: self.slot_region[s.slot],
                masked: if s.fresh { self.image_pos[s.slot] } else { 0 },
            })
            .collect();
        let hidden = self.text.forward(b, self.text.embed(b, &ids)?, &chunks, &cross, self.kv.as_ref(), cache)?;
        self.text.logits(b, &hidden)
    }
}

impl<B: Backend> MllamaText<B> {
    /// This model under [`run_stream`] with `slots` sequences in flight (what
    /// [`Self::generate_stream`] runs; exposed so callers can wrap it, e.g. to time steps).
    pub fn stream_model<'a>(
        &'a self,
        opts: &'a DecodeOptions,
        slots: usize,
    ) -> impl StreamModel<B, OwnedCrossRequest<B>> + 'a {
        MllamaStream {
            text: self,
            opts,
            slots,
            kv: None,
            regions: vec![],
            slot_region: vec![0; slots],
            image_pos: vec![0; slots],
        }
    }

    /// Continuous batching (as [`crate::generation::generate_stream`] for LLaVA): up to
    /// `stream.slots` sequences in flight, a finished one's slot refilled at once by the next
    /// request, `on_done(i, g)` called as each finishes. Every request has an image.
    pub fn generate_stream(
        &self,
        b: &B,
        requests: impl Iterator<Item = Result<OwnedCrossRequest<B>>>,
        opts: &DecodeOptions,
        stream: Stream,
        on_done: impl FnMut(usize, Generated) -> Result<()>,
    ) -> Result<()> {
        run_stream(b, &mut self.stream_model(opts, stream.slots), requests, opts, stream, on_done)
    }
}
