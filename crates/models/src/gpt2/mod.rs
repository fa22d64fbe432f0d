//! GPT-2 with a sequence-classification head, following transformers' `GPT2ForSequenceClassification`
//! (models/gpt2/modeling_gpt2.py) — the architecture of the HH-RLHF reward models such as
//! `gpt2-large-harmless-reward_model`.
//!
//! Pre-LayerNorm blocks with causal attention, learned absolute positions and the `gelu_new`
//! (tanh) MLP. GPT-2 stores its projections as `Conv1D` with weights `[in, out]`; they are
//! transposed at load into the `[out, in]` layout of [`Backend::linear`]. The fused `c_attn`
//! projection is split into query, key and value matrices at load time as well.
//!
//! The score is read at the last token that is not `pad_token_id`, as transformers does
//! (`last_non_pad_token`); without a pad token, at the last token.
use std::path::Path;

use serde::Deserialize;

use crate::backend::{Activation, AttentionShape, Backend, SeqChunk};
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear};
use crate::weights::{Checkpoint, Weights};

#[derive(Clone, Debug, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
}

fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f32 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Gpt2Config {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("not a GPT-2 config: {e}")))
    }

    /// transformers' `num_labels` = `len(id2label)` (2 when neither is given).
    pub fn labels(&self) -> usize {
        self.id2label.as_ref().map(|m| m.len()).or(self.num_labels).unwrap_or(2)
    }
}

struct Block<B: Backend> {
    ln_1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    attn_proj: Linear<B>,
    ln_2: LayerNorm<B>,
    fc: Linear<B>,
    mlp_proj: Linear<B>,
}

pub struct Gpt2ForSequenceClassification<B: Backend> {
    pub config: Gpt2Config,
    wte: B::Tensor,
    wpe: B::Tensor,
    blocks: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
    score: Linear<B>,
    act: Activation,
}

/// Loads a `Conv1D` (`weight` `[inp, out]`, `bias` `[out]`) as a [`Linear`], keeping output
/// columns `cols` (all of them for a plain projection; one third of `c_attn` for q/k/v).
fn conv1d<B: Backend>(
    w: &Weights<B>,
    name: &str,
    inp: usize,
    out: usize,
    cols: std::ops::Range<usize>,
) -> Result<Linear<B>> {
    let weight = w.checkpoint.load_f32(&w.full_name(&format!("{name}.weight")), &[inp, out])?;
    let bias = w.checkpoint.load_f32(&w.full_name(&format!("{name}.bias")), &[out])?;
    let n = cols.len();
    let mut t = Vec::with_capacity(n * inp);
    for o in cols.clone() {
        t.extend((0..inp).map(|i| weight[i * out + o]));
    }
    Linear::new(w.backend, w.backend.from_host(&t, n, inp)?, Some(w.backend.from_host(&bias[cols], 1, n)?))
}

impl<B: Backend> Gpt2ForSequenceClassification<B> {
    pub fn load(dir: &Path, b: &B) -> Result<Self> {
        let config = Gpt2Config::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(&checkpoint, b, config)
    }

    pub fn from_checkpoint(checkpoint: &Checkpoint, b: &B, config: Gpt2Config) -> Result<Self> {
        let c = &config;
        let (d, heads) = (c.n_embd, c.n_head);
        if heads == 0 || d % heads != 0 {
            return Err(Error::invalid(format!("GPT-2 n_embd {d} is not a multiple of n_head {heads}")));
        }
        if c.scale_attn_by_inverse_layer_idx {
            return Err(Error::invalid("GPT-2 scale_attn_by_inverse_layer_idx is not supported"));
        }
        let act = Activation::from_hf(&c.activation_function)
            .ok_or_else(|| Error::invalid(format!("unsupported GPT-2 activation `{}`", c.activation_function)))?;
        let inner = c.n_inner.unwrap_or(4 * d);
        // Sequence-classification checkpoints prefix the body with `transformer.`; a bare GPT2Model does not.
        let prefix = if checkpoint.contains("transformer.wte.weight") { "transformer." } else { "" };
        let t = Weights::new(checkpoint, b, prefix);
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let h = t.sub(format_args!("h.{i}"));
            let a = h.sub("attn");
            let m = h.sub("mlp");
            blocks.push(Block {
                ln_1: LayerNorm::load(&h, "ln_1", d, c.layer_norm_epsilon)?,
                q: conv1d(&a, "c_attn", d, 3 * d, 0..d)?,
                k: conv1d(&a, "c_attn", d, 3 * d, d..2 * d)?,
                v: conv1d(&a, "c_attn", d, 3 * d, 2 * d..3 * d)?,
                attn_proj: conv1d(&a, "c_proj", d, d, 0..d)?,
                ln_2: LayerNorm::load(&h, "ln_2", d, c.layer_norm_epsilon)?,
                fc: conv1d(&m, "c_fc", d, inner, 0..inner)?,
                mlp_proj: conv1d(&m, "c_proj", inner, d, 0..d)?,
            });
        }
        let head = Weights::new(checkpoint, b, "");
        let labels = c.labels();
        Ok(Self {
            wte: t.get("wte.weight", &[c.vocab_size, d])?,
            wpe: t.get("wpe.weight", &[c.n_positions, d])?,
            ln_f: LayerNorm::load(&t, "ln_f", d, c.layer_norm_epsilon)?,
            score: Linear::load(&head, "score", labels, d, false)?,
            blocks,
            act,
            config,
        })
    }

    /// The row the score is read from: the last token that is not the pad token.
    pub fn score_position(&self, ids: &[u32]) -> usize {
        match self.config.pad_token_id {
            // transformers: argmax over `arange * (ids != pad)`, i.e. 0 when every token is pad.
            Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
            None => ids.len().saturating_sub(1),
        }
    }

    /// Logits (`num_labels` values) for one token sequence.
    pub fn classify(&self, b: &B, ids: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = ids.len();
        if n == 0 {
            return Err(Error::invalid("GPT-2 classifier: empty input"));
        }
        if n > c.n_positions {
            return Err(Error::invalid(format!("GPT-2 classifier: {n} tokens exceed n_positions {}", c.n_positions)));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        let hd = c.n_embd / c.n_head;
        let mut shape = AttentionShape::new(c.n_head, c.n_head, hd);
        if !c.scale_attn_weights {
            shape.scale = 1.0;
        }
        let positions: Vec<u32> = (0..n as u32).collect();
        let mut x = b.embedding(&self.wte, ids)?;
        b.add_assign(&mut x, &b.embedding(&self.wpe, &positions)?)?;
        // Causal attention over one sequence: a one-slot KV cache filled in a single chunk.
        let mut cache = b.kv_cache(self.blocks.len(), 1, n, c.n_head, hd)?;
        let chunk = [SeqChunk { slot: 0, start: 0, len: n }];
        for (i, blk) in self.blocks.iter().enumerate() {
            let h = blk.ln_1.forward(b, &x)?;
            let (q, k, v) = (blk.q.forward(b, &h)?, blk.k.forward(b, &h)?, blk.v.forward(b, &h)?);
            let a = b.cached_attention(&mut cache, i, &q, &k, &v, &chunk, shape)?;
            let h = blk.ln_2.add_forward(b, &mut x, &blk.attn_proj.forward(b, &a)?)?;
            let mut m = blk.fc.forward(b, &h)?;
            b.activation(&mut m, self.act)?;
            b.add_assign(&mut x, &blk.mlp_proj.forward(b, &m)?)?;
        }
        let last = b.gather_rows(&x, &[self.score_position(ids)])?;
        let h = self.ln_f.forward(b, &last)?;
        b.to_host(&self.score.forward(b, &h)?)
    }
}
