//! `LlavaConfig` (transformers' configuration_llava.py) as `config.json` holds it.
use std::path::Path;

use serde::Deserialize;

use crate::clip::ClipVisionConfig;
use crate::error::{Error, Result};
use crate::llama::LlamaConfig;

#[derive(Clone, Debug, Deserialize)]
pub struct LlavaConfig {
    #[serde(default)]
    pub model_type: String,
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    #[serde(default)]
    pub text_config: LlamaConfig,
    /// transformers 4.x says `image_token_index`, 5.x `image_token_id`.
    #[serde(default = "default_image_token", alias = "image_token_id")]
    pub image_token_index: u32,
    #[serde(default = "default_feature_layer")]
    pub vision_feature_layer: serde_json::Value,
    #[serde(default = "default_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "default_projector_act")]
    pub projector_hidden_act: String,
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
    /// Whether `lm_head` is the word embeddings (transformers' `LlavaConfig` also takes the text
    /// config's `tie_word_embeddings`, where older checkpoints saved it).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_image_token() -> u32 {
    32000
}
fn default_feature_layer() -> serde_json::Value {
    (-2).into()
}
fn default_strategy() -> String {
    "default".into()
}
fn default_projector_act() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}

/// Which vision tokens reach the projector (`vision_feature_select_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureStrategy {
    /// Drop the class token (LLaVA-1.5).
    Default,
    /// Keep every token.
    Full,
}

impl FeatureStrategy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Self::Default),
            "full" => Ok(Self::Full),
            other => Err(Error::invalid(format!("unknown vision_feature_select_strategy `{other}` (default|full)"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Full => "full",
        }
    }
}

impl LlavaConfig {
    /// The language model's config as transformers builds the model from it: tied output
    /// projection when either the top-level or the text config says so.
    pub fn language_model_config(&self) -> LlamaConfig {
        let mut c = self.text_config.clone();
        c.tie_word_embeddings |= self.tie_word_embeddings;
        c
    }

    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
        let config: Self =
            serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid config: {e}")))?;
        if !config.model_type.is_empty() && config.model_type != "llava" {
            return Err(Error::input(&path, format!("model_type `{}` is not a LLaVA model", config.model_type)));
        }
        config.default_layer().map_err(|e| Error::input(&path, e))?;
        FeatureStrategy::parse(&config.vision_feature_select_strategy).map_err(|e| Error::input(&path, e))?;
        Ok(config)
    }

    /// The configured `vision_feature_layer` (a single index; LLaVA-1.5 uses -2).
    pub fn default_layer(&self) -> Result<i64> {
        match &self.vision_feature_layer {
            serde_json::Value::Number(n) => {
                n.as_i64().ok_or_else(|| Error::invalid("vision_feature_layer is not an integer"))
            }
            serde_json::Value::Array(a) if a.len() == 1 => {
                a[0].as_i64().ok_or_else(|| Error::invalid("vision_feature_layer is not an integer"))
            }
            other => Err(Error::invalid(format!("vision_feature_layer {other} is not a single layer"))),
        }
    }

    pub fn strategy(&self) -> FeatureStrategy {
        FeatureStrategy::parse(&self.vision_feature_select_strategy).expect("validated when loaded")
    }

    /// Image-feature slots per image in the prompt.
    pub fn image_slots(&self, strategy: FeatureStrategy) -> usize {
        let n = self.vision_config.num_positions();
        match strategy {
            FeatureStrategy::Default => n - 1,
            FeatureStrategy::Full => n,
        }
    }

    /// Vision layers in transformers' `hidden_states` indexing: 0..=num_hidden_layers.
    pub fn vision_layers(&self) -> usize {
        self.vision_config.num_hidden_layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_config_defaults_give_llava_1_5_7b() {
        // The text/vision parts of llava-hf/llava-1.5-7b-hf's config.json, which omit most keys.
        let c: LlavaConfig = serde_json::from_str(
            r#"{"model_type": "llava", "image_token_index": 32000,
                "text_config": {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": 32064},
                "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
                                  "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768}}"#,
        )
        .unwrap();
        assert_eq!(c.text_config.hidden_size, 4096);
        assert_eq!(c.text_config.num_hidden_layers, 32);
        assert_eq!(c.text_config.kv_heads(), 32);
        assert_eq!(c.default_layer().unwrap(), -2);
        assert_eq!(c.image_slots(FeatureStrategy::Default), 576);
        assert_eq!(c.vision_config.hidden_act, "quick_gelu");
    }
}
