//! BERT and RoBERTa encoders with their sequence-classification heads, following transformers'
//! `BertForSequenceClassification` (models/bert/modeling_bert.py) and
//! `RobertaForSequenceClassification` (models/roberta/modeling_roberta.py) — the layouts of the
//! local toxicity classifiers `unitary/toxic-bert` and `s-nlp/roberta_toxicity_classifier`.
//!
//! Post-LayerNorm blocks with bidirectional attention (one sequence at a time through the packed
//! [`Backend::attention`] op, so no padding mask is needed). Embeddings are word + position +
//! token type 0, then LayerNorm. Position ids are `0..n` for BERT and
//! `padding_idx + 1 .. padding_idx + 1 + n` for RoBERTa (`create_position_ids_from_input_ids` for
//! an unpadded sequence). Heads: BERT pools the first token (`dense` + tanh) into `classifier`;
//! RoBERTa's `classifier.dense` + tanh + `classifier.out_proj` read the first token directly.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::backend::{Activation, AttentionShape, Backend};
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear};
use crate::weights::{Checkpoint, Weights};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderKind {
    Bert,
    Roberta,
}

#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f32 {
    1e-12
}
fn two() -> usize {
    2
}

impl BertConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("not a BERT/RoBERTa config: {e}")))
    }

    pub fn kind(&self) -> Result<EncoderKind> {
        match self.model_type.as_str() {
            "bert" => Ok(EncoderKind::Bert),
            "roberta" | "xlm-roberta" => Ok(EncoderKind::Roberta),
            other => Err(Error::invalid(format!("model_type `{other}` is neither bert nor roberta"))),
        }
    }

    pub fn labels(&self) -> usize {
        self.id2label.as_ref().map(|m| m.len()).or(self.num_labels).unwrap_or(2)
    }

    /// Label names by index (`LABEL_i` where the config names none).
    pub fn label_names(&self) -> Vec<String> {
        (0..self.labels())
            .map(|i| {
                self.id2label.as_ref().and_then(|m| m.get(&i.to_string())).cloned().unwrap_or(format!("LABEL_{i}"))
            })
            .collect()
    }

    /// The most tokens one input may have (RoBERTa's positions start after the padding index).
    pub fn max_tokens(&self) -> Result<usize> {
        Ok(match self.kind()? {
            EncoderKind::Bert => self.max_position_embeddings,
            EncoderKind::Roberta => {
                self.max_position_embeddings.saturating_sub(self.pad_token_id.unwrap_or(1) as usize + 1)
            }
        })
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
}

enum Head<B: Backend> {
    /// `bert.pooler.dense` + tanh, then `classifier`.
    Bert { pooler: Linear<B>, classifier: Linear<B> },
    /// `classifier.dense` + tanh, then `classifier.out_proj`.
    Roberta { dense: Linear<B>, out_proj: Linear<B> },
}

pub struct EncoderForSequenceClassification<B: Backend> {
    pub config: BertConfig,
    pub kind: EncoderKind,
    word: B::Tensor,
    position: B::Tensor,
    token_type: B::Tensor,
    embed_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
    head: Head<B>,
    act: Activation,
}

/// LayerNorm under transformers' current names (`weight`/`bias`) or the TF-era `gamma`/`beta` that
/// old checkpoints such as toxic-bert may still carry.
fn layer_norm<B: Backend>(w: &Weights<B>, name: &str, width: usize, eps: f32) -> Result<LayerNorm<B>> {
    let sub = w.sub(name);
    if !sub.contains("weight") && sub.contains("gamma") {
        return Ok(LayerNorm { weight: sub.get("gamma", &[width])?, bias: sub.get("beta", &[width])?, eps });
    }
    LayerNorm::load(w, name, width, eps)
}

impl<B: Backend> EncoderForSequenceClassification<B> {
    pub fn load(dir: &Path, b: &B) -> Result<Self> {
        let config = BertConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(&checkpoint, b, config)
    }

    pub fn from_checkpoint(checkpoint: &Checkpoint, b: &B, config: BertConfig) -> Result<Self> {
        let c = &config;
        let kind = c.kind()?;
        let (d, f, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        if c.num_attention_heads == 0 || d % c.num_attention_heads != 0 {
            return Err(Error::invalid(format!("hidden_size {d} is not a multiple of num_attention_heads")));
        }
        let act = Activation::from_hf(&c.hidden_act)
            .ok_or_else(|| Error::invalid(format!("unsupported hidden_act `{}`", c.hidden_act)))?;
        let body = Weights::new(checkpoint, b, if kind == EncoderKind::Bert { "bert." } else { "roberta." });
        let e = body.sub("embeddings");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = body.sub(format_args!("encoder.layer.{i}"));
            let s = l.sub("attention.self");
            let ao = l.sub("attention.output");
            layers.push(Layer {
                query: Linear::load(&s, "query", d, d, true)?,
                key: Linear::load(&s, "key", d, d, true)?,
                value: Linear::load(&s, "value", d, d, true)?,
                attn_out: Linear::load(&ao, "dense", d, d, true)?,
                attn_norm: layer_norm(&ao, "LayerNorm", d, eps)?,
                intermediate: Linear::load(&l.sub("intermediate"), "dense", f, d, true)?,
                output: Linear::load(&l.sub("output"), "dense", d, f, true)?,
                out_norm: layer_norm(&l.sub("output"), "LayerNorm", d, eps)?,
            });
        }
        let root = Weights::new(checkpoint, b, "");
        let labels = c.labels();
        let head = match kind {
            EncoderKind::Bert => Head::Bert {
                pooler: Linear::load(&body.sub("pooler"), "dense", d, d, true)?,
                classifier: Linear::load(&root, "classifier", labels, d, true)?,
            },
            EncoderKind::Roberta => {
                let cls = root.sub("classifier");
                Head::Roberta {
                    dense: Linear::load(&cls, "dense", d, d, true)?,
                    out_proj: Linear::load(&cls, "out_proj", labels, d, true)?,
                }
            }
        };
        Ok(Self {
            word: e.get("word_embeddings.weight", &[c.vocab_size, d])?,
            position: e.get("position_embeddings.weight", &[c.max_position_embeddings, d])?,
            token_type: e.get("token_type_embeddings.weight", &[c.type_vocab_size, d])?,
            embed_norm: layer_norm(&e, "LayerNorm", d, eps)?,
            layers,
            head,
            act,
            kind,
            config,
        })
    }

    /// Position ids of an unpadded sequence of `n` tokens.
    pub fn position_ids(&self, n: usize) -> Vec<u32> {
        let start = match self.kind {
            EncoderKind::Bert => 0,
            EncoderKind::Roberta => self.config.pad_token_id.unwrap_or(1) + 1,
        };
        (start..start + n as u32).collect()
    }

    /// Logits (one per label) for one token sequence (special tokens included).
    pub fn classify(&self, b: &B, ids: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = ids.len();
        if n == 0 {
            return Err(Error::invalid("classifier: empty input"));
        }
        let positions = self.position_ids(n);
        if positions.last().is_some_and(|&p| p as usize >= c.max_position_embeddings) {
            return Err(Error::invalid(format!(
                "classifier: {n} tokens exceed the model's {} positions",
                c.max_tokens()?
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        let mut x = b.embedding(&self.word, ids)?;
        b.add_assign(&mut x, &b.embedding(&self.position, &positions)?)?;
        b.add_assign(&mut x, &b.embedding(&self.token_type, &vec![0; n])?)?;
        let mut x = self.embed_norm.forward(b, &x)?;
        let hd = c.hidden_size / c.num_attention_heads;
        let shape = AttentionShape::new(c.num_attention_heads, c.num_attention_heads, hd);
        for l in &self.layers {
            let (q, k, v) = (l.query.forward(b, &x)?, l.key.forward(b, &x)?, l.value.forward(b, &x)?);
            let a = b.attention(&q, &k, &v, &[n], shape)?;
            let mut h = l.attn_out.forward(b, &a)?;
            b.add_assign(&mut h, &x)?;
            x = l.attn_norm.forward(b, &h)?;
            let mut m = l.intermediate.forward(b, &x)?;
            b.activation(&mut m, self.act)?;
            let mut o = l.output.forward(b, &m)?;
            b.add_assign(&mut o, &x)?;
            x = l.out_norm.forward(b, &o)?;
        }
        let first = b.gather_rows(&x, &[0])?;
        let logits = match &self.head {
            Head::Bert { pooler, classifier } => {
                let mut p = pooler.forward(b, &first)?;
                b.activation(&mut p, Activation::Tanh)?;
                classifier.forward(b, &p)?
            }
            Head::Roberta { dense, out_proj } => {
                let mut p = dense.forward(b, &first)?;
                b.activation(&mut p, Activation::Tanh)?;
                out_proj.forward(b, &p)?
            }
        };
        b.to_host(&logits)
    }
}
