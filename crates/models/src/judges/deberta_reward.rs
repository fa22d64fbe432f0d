//! The DeBERTa-v3 reward model (`OpenAssistant/reward-model-deberta-v3-large-v2`, a
//! `DebertaV2ForSequenceClassification` with one label): the reward of an answer to a question is
//! the logit of `tokenizer(question, answer)`, as the model card scores it — the pair encoding
//! `[CLS] question [SEP] answer [SEP]`, no truncation.
//!
//! Tokenization follows transformers 5.24's `DebertaV2Tokenizer` (`tokenization_deberta_v2.py`),
//! which keeps only the Unigram vocabulary (and added tokens) of `tokenizer.json` and builds the
//! rest itself from `tokenizer_config.json`: optional lower-casing, runs of whitespace and
//! `\n\r\t` to one space, NFC, right strip; optional punctuation split; Metaspace `▁` prepended
//! always (`add_prefix_space`, default true); `[CLS] $A [SEP] ($B [SEP])` with type ids 0/1. The
//! hub's tokenizer.json files (converted by older transformers) carry a different normalizer,
//! which 5.24 ignores, and so does this.
use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::backend::Backend;
use crate::deberta::{DebertaV2Config, DebertaV2ForSequenceClassification};
use crate::error::{Error, Result};
use crate::weights::Checkpoint;

/// Whether `dir` holds a DeBERTa-v2/v3 model (`model_type: deberta-v2` in config.json).
pub fn is_deberta_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v["model_type"] == "deberta-v2")
}

/// `dir/tokenizer.json`'s vocabulary with the pipeline `DebertaV2Tokenizer.__init__` builds from
/// `dir/tokenizer_config.json` (see the module documentation).
pub fn deberta_v2_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::input(&path, format!("cannot read ({e}); save the tokenizer with transformers' save_pretrained"))
    })?;
    let mut tj: Value = serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid JSON: {e}")))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: Value = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| Error::input(&cfg_path, format!("invalid JSON: {e}")))?,
        Err(_) => json!({}),
    };
    let flag = |k: &str, default: bool| cfg[k].as_bool().unwrap_or(default);
    let token = |k: &str, default: &str| match &cfg[k] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("content").and_then(Value::as_str).unwrap_or(default).to_string(),
        _ => default.to_string(),
    };
    if tj["model"]["type"] != "Unigram" {
        return Err(Error::input(&path, "a DeBERTa-v2 tokenizer has a Unigram model (SentencePiece)"));
    }
    // `unk_id = vocab.index((unk_token, 0.0))` when the vocabulary has it, else 1.
    let unk = token("unk_token", "[UNK]");
    let unk_id = tj["model"]["vocab"]
        .as_array()
        .and_then(|v| v.iter().position(|e| e[0] == unk.as_str() && e[1].as_f64() == Some(0.0)))
        .unwrap_or(1);
    tj["model"]["unk_id"] = json!(unk_id);
    tj["model"]["byte_fallback"] = json!(false);
    let mut normalizers = Vec::new();
    if flag("do_lower_case", false) {
        normalizers.push(json!({"type": "Lowercase"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"Regex": "\\s{2,}|[\\n\\r\\t]"}, "content": " "}));
    normalizers.push(json!({"type": "NFC"}));
    normalizers.push(json!({"type": "Strip", "strip_left": false, "strip_right": true}));
    tj["normalizer"] = json!({"type": "Sequence", "normalizers": normalizers});
    let prepend = if flag("add_prefix_space", true) { "always" } else { "first" };
    let metaspace = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend, "split": true});
    let mut pre = Vec::new();
    if flag("split_by_punct", false) {
        pre.push(json!({"type": "Punctuation", "behavior": "Isolated"}));
    }
    pre.push(metaspace.clone());
    tj["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": pre});
    tj["decoder"] = metaspace;
    // Special-token ids as the loaded tokenizer resolves them (0 where it has none, as 5.24 does).
    let loaded = Tokenizer::from_str(&text).map_err(|e| Error::input(&path, format!("cannot load tokenizer: {e}")))?;
    let (cls, sep) = (token("cls_token", "[CLS]"), token("sep_token", "[SEP]"));
    let id = |t: &str| loaded.token_to_id(t).unwrap_or(0);
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    tj["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [special(&cls, 0), seq("A", 0), special(&sep, 0)],
        "pair": [special(&cls, 0), seq("A", 0), special(&sep, 0), seq("B", 1), special(&sep, 1)],
        "special_tokens": {
            cls.as_str(): {"id": cls, "ids": [id(&cls)], "tokens": [cls]},
            sep.as_str(): {"id": sep, "ids": [id(&sep)], "tokens": [sep]},
        },
    });
    tj["truncation"] = Value::Null;
    tj["padding"] = Value::Null;
    Tokenizer::from_str(&tj.to_string())
        .map_err(|e| Error::input(&path, format!("cannot build the DeBERTa tokenizer: {e}")))
}

/// A DeBERTa-v2/v3 reward model; higher is better, as the model was trained.
pub struct DebertaReward<B: Backend> {
    pub model: DebertaV2ForSequenceClassification<B>,
    pub tokenizer: Tokenizer,
}

impl<B: Backend> DebertaReward<B> {
    pub fn load(dir: &Path, b: &B) -> Result<Self> {
        let config = DebertaV2Config::from_dir(dir)?;
        if config.labels() != 1 {
            return Err(Error::input(
                dir.join("config.json"),
                format!("a reward model has one label, this one has {}", config.labels()),
            ));
        }
        let tokenizer = deberta_v2_tokenizer(dir)?;
        let model = DebertaV2ForSequenceClassification::from_checkpoint(&Checkpoint::open(dir)?, b, config)
            .map_err(|e| if let Error::Invalid(m) = e { Error::input(dir, m) } else { e })?;
        Ok(Self { model, tokenizer })
    }

    fn ids(enc: tokenizers::Encoding) -> (Vec<u32>, Vec<u32>) {
        (enc.get_ids().to_vec(), enc.get_type_ids().to_vec())
    }

    /// Ids and token type ids of one text (`[CLS] text [SEP]`).
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| Error::invalid(format!("tokenization failed: {e}")))?;
        Ok(Self::ids(enc))
    }

    /// Ids and token type ids of a pair (`[CLS] question [SEP] answer [SEP]`, types 0… then 1…).
    pub fn encode_pair(&self, question: &str, answer: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self
            .tokenizer
            .encode((question, answer), true)
            .map_err(|e| Error::invalid(format!("tokenization failed: {e}")))?;
        Ok(Self::ids(enc))
    }

    /// The reward of `answer` to `question`.
    pub fn score(&self, b: &B, question: &str, answer: &str) -> Result<f32> {
        let (ids, types) = self.encode_pair(question, answer)?;
        Ok(self.model.classify(b, &ids, &types)?[0])
    }
}
