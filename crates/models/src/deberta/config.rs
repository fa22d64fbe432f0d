//! `DebertaV2Config` (transformers 5.24 `models/deberta_v2/configuration_deberta_v2.py`) with the
//! defaults of its dataclass and the `getattr(config, ..., default)` reads of the modeling code.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// `pos_att_type`: a list (`["p2c", "c2p"]`) or the older `"p2c|c2p"` string, which
/// `DebertaV2Config.__post_init__` lower-cases and splits.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PosAttType {
    List(Vec<String>),
    Joined(String),
}

impl PosAttType {
    pub fn kinds(&self) -> Vec<String> {
        match self {
            Self::List(v) => v.clone(),
            Self::Joined(s) => s.to_lowercase().split('|').map(|x| x.trim().to_string()).collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct DebertaV2Config {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "d512")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f32,
    #[serde(default)]
    pub relative_attention: bool,
    /// `< 1` means `max_position_embeddings`.
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    /// `<= 0`: no log buckets.
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    #[serde(default)]
    pub pos_att_type: Option<PosAttType>,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default = "yes")]
    pub position_biased_input: bool,
    /// `"layer_norm"` (among `|`-separated options) normalises the relative embeddings.
    #[serde(default = "none")]
    pub norm_rel_ebd: String,
    /// Width of the word embeddings when it differs from `hidden_size` (then `embed_proj` maps it).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    #[serde(default = "gelu")]
    pub pooler_hidden_act: String,
    /// `> 0` adds DeBERTa-v2-xlarge's convolution after the first layer (not supported here).
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
}

fn gelu() -> String {
    "gelu".into()
}
fn none() -> String {
    "none".into()
}
fn d512() -> usize {
    512
}
fn eps() -> f32 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}

impl DebertaV2Config {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, e))?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("not a DeBERTa-v2 config: {e}")))?;
        if c.model_type != "deberta-v2" {
            return Err(Error::input(&path, format!("model_type `{}` is not deberta-v2", c.model_type)));
        }
        Ok(c)
    }

    pub fn labels(&self) -> usize {
        self.id2label.as_ref().map(|m| m.len()).or(self.num_labels).unwrap_or(2)
    }

    pub fn embedding_size(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    pub fn head_size(&self) -> usize {
        self.attention_head_size.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// `pos_att_type` as the attention reads it (`[]` when absent).
    pub fn pos_att_kinds(&self) -> Vec<String> {
        self.pos_att_type.as_ref().map(PosAttType::kinds).unwrap_or_default()
    }

    pub fn c2p(&self) -> bool {
        self.pos_att_kinds().iter().any(|k| k == "c2p")
    }

    pub fn p2c(&self) -> bool {
        self.pos_att_kinds().iter().any(|k| k == "p2c")
    }

    /// `DisentangledSelfAttention`'s `scale_factor`: 1, plus one for each of c2p and p2c in
    /// `pos_att_type` — whether or not `relative_attention` is on.
    pub fn scale_factor(&self) -> usize {
        1 + self.c2p() as usize + self.p2c() as usize
    }

    /// `max_relative_positions`, with values below 1 meaning `max_position_embeddings`.
    pub fn max_relative_positions(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings as i64
        } else {
            self.max_relative_positions
        }
    }

    /// `pos_ebd_size`, the attention span: `position_buckets` when bucketing, else
    /// `max_relative_positions`; `rel_embeddings` has twice as many rows.
    pub fn attention_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets as usize
        } else {
            self.max_relative_positions() as usize
        }
    }

    pub fn normalizes_rel_embeddings(&self) -> bool {
        self.norm_rel_ebd.to_lowercase().split('|').any(|x| x.trim() == "layer_norm")
    }

    /// The most tokens one input may have: bounded by the absolute position table when the
    /// model adds one, unbounded otherwise (relative positions are bucketed and clamped).
    pub fn max_tokens(&self) -> Option<usize> {
        self.position_biased_input.then_some(self.max_position_embeddings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> DebertaV2Config {
        let mut v = serde_json::json!({"model_type": "deberta-v2", "vocab_size": 10, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn derived_settings_follow_transformers() {
        // DebertaV2Config defaults: no relative attention, absolute positions, no pos_att_type.
        let c = config(serde_json::json!({}));
        assert!(!c.relative_attention && c.position_biased_input && !c.share_att_key);
        assert_eq!((c.scale_factor(), c.max_relative_positions(), c.attention_span()), (1, 512, 512));
        assert_eq!(c.max_tokens(), Some(512));
        // DeBERTa-v3-large: buckets 256, max_relative_positions -1 → 512.
        let v3 = config(serde_json::json!({"relative_attention": true, "position_buckets": 256,
            "pos_att_type": ["p2c", "c2p"], "position_biased_input": false, "norm_rel_ebd": "layer_norm"}));
        assert_eq!((v3.scale_factor(), v3.max_relative_positions(), v3.attention_span()), (3, 512, 256));
        assert!(v3.normalizes_rel_embeddings());
        assert_eq!(v3.max_tokens(), None);
        // The older joined string form, lower-cased.
        let old = config(serde_json::json!({"pos_att_type": "C2P|p2c", "max_relative_positions": 12}));
        assert!(old.c2p() && old.p2c());
        assert_eq!((old.attention_span(), old.labels()), (12, 2));
    }
}
