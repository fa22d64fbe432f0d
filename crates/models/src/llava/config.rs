//! `LlavaConfig` and the model-directory files around it (generation config).
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

/// The parts of `generation_config.json` generation obeys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub eos_token_ids: Vec<u32>,
}

impl GenerationDefaults {
    /// Reads `generation_config.json` (falling back to `eos_token_id` in `config.json`s text
    /// config, then to id 2, Llama's `</s>`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
                _ => vec![],
            }
        };
        for (file, pointer) in [
            ("generation_config.json", "/eos_token_id"),
            ("config.json", "/text_config/eos_token_id"),
            ("config.json", "/eos_token_id"),
        ] {
            let path = dir.join(file);
            if let Ok(text) = std::fs::read_to_string(&path) {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid JSON: {e}")))?;
                if let Some(found) = v.pointer(pointer).map(ids).filter(|x| !x.is_empty()) {
                    return Ok(Self { eos_token_ids: found });
                }
            }
        }
        Ok(Self { eos_token_ids: vec![2] })
    }
}

/// Resolves a layer index in transformers' `hidden_states` convention (negative counts from the
/// end: -1 is the last layer) against a tower of `num_layers` layers.
pub fn resolve_layer(layer: i64, num_layers: usize) -> Result<usize> {
    let n = num_layers as i64;
    let resolved = if layer < 0 { n + 1 + layer } else { layer };
    if !(0..=n).contains(&resolved) {
        return Err(Error::invalid(format!(
            "layer {layer} is out of range: the vision tower has layers 0..={n} (or -{}..=-1)",
            n + 1
        )));
    }
    Ok(resolved as usize)
}

/// Parses a layer list: `all` (0..=L), `a..b` (inclusive), or a comma list such as `3,7,-2`
/// (ranges may appear inside lists). Returns sorted, de-duplicated, non-negative indices.
pub fn parse_layers(spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    let spec = spec.trim();
    let mut out = Vec::new();
    if spec == "all" {
        out.extend(0..=num_layers);
    } else {
        for part in spec.split(',').map(str::trim) {
            let num = |s: &str| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| Error::invalid(format!("`{s}` in layer list `{spec}` is not a layer index")))
            };
            if let Some((a, b)) = part.split_once("..") {
                let (a, b) =
                    (resolve_layer(num(a)?, num_layers)?, resolve_layer(num(b.trim_start_matches('='))?, num_layers)?);
                if a > b {
                    return Err(Error::invalid(format!("layer range `{part}` is empty")));
                }
                out.extend(a..=b);
            } else {
                out.push(resolve_layer(num(part)?, num_layers)?);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_follow_transformers_hidden_states() {
        // 24 layers: hidden_states has 25 entries; -2 is layer 23, LLaVA-1.5's default.
        assert_eq!(resolve_layer(-2, 24).unwrap(), 23);
        assert_eq!(resolve_layer(-1, 24).unwrap(), 24);
        assert_eq!(resolve_layer(-25, 24).unwrap(), 0);
        assert_eq!(resolve_layer(0, 24).unwrap(), 0);
        assert!(resolve_layer(25, 24).is_err());
        assert!(resolve_layer(-26, 24).is_err());
    }

    #[test]
    fn parses_layer_specs() {
        assert_eq!(parse_layers("all", 3).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_layers("1..3", 6).unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_layers("3,7,-2", 24).unwrap(), vec![3, 7, 23]);
        assert_eq!(parse_layers("-3..-1", 6).unwrap(), vec![4, 5, 6]);
        assert_eq!(parse_layers("2, 0..1 ,2", 6).unwrap(), vec![0, 1, 2]);
        let e = parse_layers("30", 24).unwrap_err().to_string();
        assert!(e.contains("layer 30 is out of range"), "{e}");
        assert!(parse_layers("x", 4).is_err());
        assert!(parse_layers("3..1", 4).is_err());
    }

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
