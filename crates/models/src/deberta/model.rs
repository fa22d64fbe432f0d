//! `DebertaV2ForSequenceClassification` following transformers 5.24
//! `models/deberta_v2/modeling_deberta_v2.py`, weight names included.
//!
//! One sequence at a time, unpadded (the attention mask is all ones, so the masks of
//! `DebertaV2Embeddings.forward` and `DisentangledSelfAttention.forward` change nothing).
//!
//! Everything runs on the backend. The attention core (`DisentangledSelfAttention.forward` from
//! the projections to the context) is [`Backend::relative_attention`]: its scores add, per
//! (query, key) pair, a content→position and a position→content term read from rows of the
//! relative-position projections picked by relative-position bucket ([`RelativeIndex`]). Those
//! projections (`pos_key_layer`, `pos_query_layer`) do not depend on the input, so each layer's are
//! computed once at load and kept on the backend.
use crate::backend::{Activation, AttentionShape, Backend, RelativePositions};
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear};
use crate::weights::{Checkpoint, Weights};

use super::config::DebertaV2Config;

/// transformers' `make_log_bucket_position` for one relative position: within `±bucket_size/2`
/// positions stay exact, beyond they share logarithmically wider buckets reaching
/// `bucket_size/2 - 1` more at `max_position`. Computed in f32, as torch does (the ratio
/// `(max_position - 1) / mid` in Python floats, then f32).
pub fn log_bucket_position(relative: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let abs_pos = if relative < mid && relative > -mid { mid - 1 } else { relative.abs() };
    if abs_pos <= mid {
        return relative;
    }
    let ratio = (abs_pos as f32 / mid as f32).ln() / (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos = (ratio * (mid - 1) as f32).ceil() + mid as f32;
    log_pos as i64 * relative.signum()
}

/// `build_relative_position` for query `i` and key `j` (`i - j`, bucketed when configured).
fn relative_position(c: &DebertaV2Config, delta: i64) -> i64 {
    if c.position_buckets > 0 {
        log_bucket_position(delta, c.position_buckets, c.max_relative_positions())
    } else {
        delta
    }
}

/// Rows of the relative embeddings that query `i` and key `j` read, by `i - j` (index
/// `i - j + n - 1`, the layout of [`RelativePositions`]): c2p reads `clamp(r(i - j) + span)` of
/// `pos_key_layer`, p2c reads `clamp(-r(j - i) + span)` of `pos_query_layer`
/// (`disentangled_attention_bias`).
struct RelativeIndex {
    c2p: Vec<u32>,
    p2c: Vec<u32>,
}

impl RelativeIndex {
    fn new(c: &DebertaV2Config, n: usize) -> Self {
        let span = c.attention_span() as i64;
        let clamp = |x: i64| x.clamp(0, 2 * span - 1) as u32;
        let deltas = -(n as i64 - 1)..=(n as i64 - 1);
        Self {
            c2p: deltas.clone().map(|d| clamp(relative_position(c, d) + span)).collect(),
            p2c: deltas.map(|d| clamp(-relative_position(c, -d) + span)).collect(),
        }
    }
}

struct Layer<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    attn_out: Linear<B>,
    attn_norm: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    out_norm: LayerNorm<B>,
    /// `[2·span, heads·head_size]`: the keys c2p scores queries against.
    pos_key: Option<B::Tensor>,
    /// The same for the queries p2c scores keys against.
    pos_query: Option<B::Tensor>,
}

pub struct DebertaV2ForSequenceClassification<B: Backend> {
    pub config: DebertaV2Config,
    word: B::Tensor,
    position: Option<B::Tensor>,
    token_type: Option<B::Tensor>,
    embed_proj: Option<Linear<B>>,
    embed_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
    pooler: Linear<B>,
    pooler_act: Activation,
    classifier: Linear<B>,
    act: Activation,
}

fn activation(name: &str, what: &str) -> Result<Activation> {
    Activation::from_hf(name).ok_or_else(|| Error::invalid(format!("unsupported {what} `{name}`")))
}

impl<B: Backend> DebertaV2ForSequenceClassification<B> {
    pub fn load(dir: &std::path::Path, b: &B) -> Result<Self> {
        let config = DebertaV2Config::from_dir(dir)?;
        Self::from_checkpoint(&Checkpoint::open(dir)?, b, config).map_err(|e| {
            if let Error::Invalid(m) = e {
                Error::input(dir, m)
            } else {
                e
            }
        })
    }

    pub fn from_checkpoint(checkpoint: &Checkpoint, b: &B, config: DebertaV2Config) -> Result<Self> {
        let c = &config;
        let (d, f, e, eps) = (c.hidden_size, c.intermediate_size, c.embedding_size(), c.layer_norm_eps);
        if c.num_attention_heads == 0 || c.head_size() * c.num_attention_heads != d {
            return Err(Error::invalid(format!(
                "{} heads of {} do not make hidden_size {d} (the attention output projection needs it)",
                c.num_attention_heads,
                c.head_size()
            )));
        }
        if c.conv_kernel_size > 0 {
            return Err(Error::invalid("conv_kernel_size > 0 (DeBERTa-v2's ConvLayer) is not supported"));
        }
        if c.pooler_hidden_size.is_some_and(|p| p != d) {
            return Err(Error::invalid(
                "pooler_hidden_size differs from hidden_size (the pooler reads a hidden state)",
            ));
        }
        let act = activation(&c.hidden_act, "hidden_act")?;
        let pooler_act = activation(&c.pooler_hidden_act, "pooler_hidden_act")?;
        let body = Weights::new(checkpoint, b, "deberta.");
        let emb = body.sub("embeddings");
        let enc = body.sub("encoder");
        // `DebertaV2Encoder.get_rel_embedding`: the table, layer-normed when norm_rel_ebd says so.
        let rel = if c.relative_attention {
            let table = enc.get("rel_embeddings.weight", &[2 * c.attention_span(), d])?;
            Some(if c.normalizes_rel_embeddings() {
                LayerNorm::load(&enc, "LayerNorm", d, eps)?.forward(b, &table)?
            } else {
                table
            })
        } else {
            None
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = enc.sub(format_args!("layer.{i}"));
            let s = l.sub("attention.self");
            let ao = l.sub("attention.output");
            let (query, key) = (Linear::load(&s, "query_proj", d, d, true)?, Linear::load(&s, "key_proj", d, d, true)?);
            let project = |lin: &Linear<B>| lin.forward(b, rel.as_ref().unwrap());
            let (mut pos_key, mut pos_query) = (None, None);
            if rel.is_some() {
                if c.c2p() {
                    pos_key = Some(if c.share_att_key {
                        project(&key)?
                    } else {
                        project(&Linear::load(&s, "pos_key_proj", d, d, true)?)?
                    });
                }
                if c.p2c() {
                    pos_query = Some(if c.share_att_key {
                        project(&query)?
                    } else {
                        project(&Linear::load(&s, "pos_query_proj", d, d, true)?)?
                    });
                }
            }
            layers.push(Layer {
                query,
                key,
                value: Linear::load(&s, "value_proj", d, d, true)?,
                attn_out: Linear::load(&ao, "dense", d, d, true)?,
                attn_norm: LayerNorm::load(&ao, "LayerNorm", d, eps)?,
                intermediate: Linear::load(&l.sub("intermediate"), "dense", f, d, true)?,
                output: Linear::load(&l.sub("output"), "dense", d, f, true)?,
                out_norm: LayerNorm::load(&l.sub("output"), "LayerNorm", d, eps)?,
                pos_key,
                pos_query,
            });
        }
        let root = Weights::new(checkpoint, b, "");
        Ok(Self {
            word: emb.get("word_embeddings.weight", &[c.vocab_size, e])?,
            position: match c.position_biased_input {
                true => Some(emb.get("position_embeddings.weight", &[c.max_position_embeddings, e])?),
                false => None,
            },
            token_type: match c.type_vocab_size {
                0 => None,
                t => Some(emb.get("token_type_embeddings.weight", &[t, e])?),
            },
            embed_proj: if e != d { Some(Linear::load(&emb, "embed_proj", d, e, false)?) } else { None },
            embed_norm: LayerNorm::load(&emb, "LayerNorm", d, eps)?,
            layers,
            pooler: Linear::load(&root.sub("pooler"), "dense", d, d, true)?,
            pooler_act,
            classifier: Linear::load(&root, "classifier", c.labels(), d, true)?,
            act,
            config,
        })
    }

    /// Logits (one per label) for one token sequence (special tokens included) with its token
    /// type ids (`[0; n]` for one text; ignored when the model has no type embeddings).
    pub fn classify(&self, b: &B, ids: &[u32], type_ids: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = ids.len();
        if n == 0 {
            return Err(Error::invalid("DeBERTa: empty input"));
        }
        if type_ids.len() != n {
            return Err(Error::invalid(format!("DeBERTa: {} token type ids for {n} tokens", type_ids.len())));
        }
        if let Some(max) = c.max_tokens().filter(|&m| n > m) {
            return Err(Error::invalid(format!("DeBERTa: {n} tokens exceed the model's {max} absolute positions")));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        // DebertaV2Embeddings.forward: word (+ absolute position) (+ token type), projected, normed.
        let mut x = b.embedding(&self.word, ids)?;
        if let Some(p) = &self.position {
            let positions: Vec<u32> = (0..n as u32).collect();
            b.add_assign(&mut x, &b.embedding(p, &positions)?)?;
        }
        if let Some(t) = &self.token_type {
            if let Some(&bad) = type_ids.iter().find(|&&t| t as usize >= c.type_vocab_size) {
                return Err(Error::invalid(format!("token type {bad} is outside the model's {}", c.type_vocab_size)));
            }
            b.add_assign(&mut x, &b.embedding(t, type_ids)?)?;
        }
        if let Some(proj) = &self.embed_proj {
            x = proj.forward(b, &x)?;
        }
        let mut x = self.embed_norm.forward(b, &x)?;
        let index = c.relative_attention.then(|| RelativeIndex::new(c, n));
        // Scores are `q·(k/s)` with s = `sqrt(head_size · scale_factor)` (`scaled_size_sqrt`), the
        // relative terms divided by the same s.
        let mut shape = AttentionShape::new(c.num_attention_heads, c.num_attention_heads, c.head_size());
        shape.scale = 1.0 / ((c.head_size() as f32) * c.scale_factor() as f32).sqrt();
        for l in &self.layers {
            let (q, k, v) = (l.query.forward(b, &x)?, l.key.forward(b, &x)?, l.value.forward(b, &x)?);
            let ctx = match &index {
                Some(ix) if l.pos_key.is_some() || l.pos_query.is_some() => {
                    let rel = RelativePositions {
                        pos_key: l.pos_key.as_ref(),
                        pos_query: l.pos_query.as_ref(),
                        c2p: &ix.c2p,
                        p2c: &ix.p2c,
                    };
                    b.relative_attention(&q, &k, &v, &[n], rel, shape)?
                }
                _ => b.attention(&q, &k, &v, &[n], shape)?,
            };
            let mut h = l.attn_out.forward(b, &ctx)?;
            b.add_assign(&mut h, &x)?;
            x = l.attn_norm.forward(b, &h)?;
            let mut m = l.intermediate.forward(b, &x)?;
            b.activation(&mut m, self.act)?;
            let mut o = l.output.forward(b, &m)?;
            b.add_assign(&mut o, &x)?;
            x = l.out_norm.forward(b, &o)?;
        }
        // ContextPooler: the first token through dense + pooler_hidden_act; then the classifier.
        let mut p = self.pooler.forward(b, &b.gather_rows(&x, &[0])?)?;
        b.activation(&mut p, self.pooler_act)?;
        b.to_host(&self.classifier.forward(b, &p)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buckets_by_hand() {
        // bucket 8 (mid 4), max 64: |r| <= 4 exact (|r| < 4 map to mid - 1 = 3 <= mid, kept as is).
        for r in -4..=4 {
            assert_eq!(log_bucket_position(r, 8, 64), r);
        }
        // r = 5: ceil(ln(5/4) / ln(63/4) · 3) + 4 = ceil(0.2231 / 2.7568 · 3) + 4 = ceil(0.2428) + 4 = 5.
        assert_eq!(log_bucket_position(5, 8, 64), 5);
        // r = 20: ceil(ln 5 / 2.7568 · 3) + 4 = ceil(1.7514) + 4 = 6; r = 63: ceil(3.0) + 4 = 7.
        assert_eq!(log_bucket_position(20, 8, 64), 6);
        assert_eq!(log_bucket_position(-20, 8, 64), -6);
        assert_eq!(log_bucket_position(63, 8, 64), 7);
        // Beyond max_position the buckets keep growing (then the attention clamps them).
        assert_eq!(log_bucket_position(300, 8, 64), 9);
    }
}
