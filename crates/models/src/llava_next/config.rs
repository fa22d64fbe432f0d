//! `LlavaNextConfig` (transformers' configuration_llava_next.py) as `config.json` holds it.
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::clip::ClipVisionConfig;
use crate::error::{Error, Result};
use crate::layers::resolve_layer;
use crate::llama::LlamaConfig;

/// transformers' default `image_grid_pinpoints` (llava-v1.6: 336-px tiles, up to 2x2, 1x3, 3x1).
pub const DEFAULT_PINPOINTS: [[usize; 2]; 5] = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

#[derive(Clone, Debug)]
pub struct LlavaNextConfig {
    pub vision_config: ClipVisionConfig,
    pub text_config: LlamaConfig,
    /// `text_config.model_type` (`llama` when absent, as `LlavaNextConfig` defaults it).
    pub text_model_type: String,
    pub image_token_index: u32,
    /// `vision_feature_layer` (an int, or a list of one), unresolved.
    pub vision_feature_layer: i64,
    pub projector_hidden_act: String,
    pub multimodal_projector_bias: bool,
    /// `(height, width)` canvases an image may be tiled into, each a multiple of the tile.
    pub image_grid_pinpoints: Vec<[usize; 2]>,
    /// Whether `lm_head` is the word embeddings. `LlavaNextConfig` reads only its own key (unlike
    /// `LlavaConfig`, it does not take the text config's), and the model ties by it alone.
    pub tie_word_embeddings: bool,
}

/// The keys as written; sub-configs kept as JSON until their model type is known.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: String,
    vision_config: Option<Value>,
    #[serde(default)]
    text_config: Value,
    /// transformers 4.x says `image_token_index`, 5.x may say `image_token_id`.
    #[serde(default = "default_image_token", alias = "image_token_id")]
    image_token_index: u32,
    #[serde(default = "default_feature_layer")]
    vision_feature_layer: Value,
    #[serde(default = "default_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "default_projector_act")]
    projector_hidden_act: String,
    #[serde(default = "default_true")]
    multimodal_projector_bias: bool,
    image_grid_pinpoints: Option<Vec<Vec<usize>>>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn default_image_token() -> u32 {
    32000
}
fn default_feature_layer() -> Value {
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

/// `LlavaNextConfig`'s vision tower when `config.json` has no `vision_config`: CLIP ViT-L/14 at
/// 336 px (its `sub_configs_defaults`). A given `vision_config` takes `CLIPVisionConfig`'s own
/// defaults for missing keys instead, as transformers does.
fn default_vision() -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_hidden_layers: 24,
        num_attention_heads: 16,
        image_size: 336,
        patch_size: 14,
        ..ClipVisionConfig::default()
    }
}

/// Why `vision_feature_select_strategy: full` cannot run (also `--strategy full`'s refusal).
pub const FULL_STRATEGY_REFUSAL: &str = "LLaVA-NeXT packs each tile's features as a grid of patches \
(transformers' pack_image_features), which needs the class token dropped: with `full` transformers \
5.24 cannot run it and its processor counts the slots without the class token; only `default` works";

impl LlavaNextConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
        Self::from_json_str(&text).map_err(|e| Error::input(&path, e))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::invalid(format!("invalid config: {e}")))?;
        if raw.model_type != "llava_next" {
            return Err(Error::invalid(format!("model_type `{}` is not a LLaVA-NeXT model", raw.model_type)));
        }
        let vision_config = match raw.vision_config {
            None | Some(Value::Null) => default_vision(),
            Some(v) => serde_json::from_value(v).map_err(|e| Error::invalid(format!("vision_config: {e}")))?,
        };
        let text_model_type = raw.text_config["model_type"].as_str().unwrap_or("llama").to_string();
        let text_config = LlamaConfig::from_text_config(&raw.text_config)?;
        let vision_feature_layer = match &raw.vision_feature_layer {
            Value::Number(n) => n.as_i64(),
            Value::Array(a) if a.len() == 1 => a[0].as_i64(),
            Value::Array(a) => {
                return Err(Error::invalid(format!(
                    "vision_feature_layer {a:?}: a list of {} layers concatenates their features for the \
                     projector, which icet does not implement (ICET-l feeds one layer)",
                    a.len()
                )))
            }
            _ => None,
        }
        .ok_or_else(|| {
            Error::invalid(format!("vision_feature_layer {} is not an integer", raw.vision_feature_layer))
        })?;
        resolve_layer(vision_feature_layer, vision_config.num_hidden_layers)
            .map_err(|e| Error::invalid(format!("vision_feature_layer: {e}")))?;
        match raw.vision_feature_select_strategy.as_str() {
            "default" => {}
            "full" => {
                return Err(Error::invalid(format!("vision_feature_select_strategy `full`: {FULL_STRATEGY_REFUSAL}")))
            }
            other => return Err(Error::invalid(format!("unknown vision_feature_select_strategy `{other}`"))),
        }
        let tile = vision_config.image_size;
        let image_grid_pinpoints = match raw.image_grid_pinpoints {
            None => DEFAULT_PINPOINTS.to_vec(),
            Some(p) => p
                .iter()
                .map(|hw| match hw.as_slice() {
                    &[h, w] if h > 0 && w > 0 && h % tile == 0 && w % tile == 0 => Ok([h, w]),
                    _ => Err(Error::invalid(format!(
                        "image_grid_pinpoints: {hw:?} is not a [height, width] of whole {tile}-px tiles"
                    ))),
                })
                .collect::<Result<_>>()?,
        };
        if image_grid_pinpoints.is_empty() {
            return Err(Error::invalid("image_grid_pinpoints is empty"));
        }
        Ok(Self {
            vision_config,
            text_config,
            text_model_type,
            image_token_index: raw.image_token_index,
            vision_feature_layer,
            projector_hidden_act: raw.projector_hidden_act,
            multimodal_projector_bias: raw.multimodal_projector_bias,
            image_grid_pinpoints,
            tie_word_embeddings: raw.tie_word_embeddings,
        })
    }

    /// The language model's config as `LlavaNextForConditionalGeneration` builds it: its output
    /// projection tied to the embeddings exactly when the top-level `tie_word_embeddings` says so.
    pub fn language_model_config(&self) -> LlamaConfig {
        LlamaConfig { tie_word_embeddings: self.tie_word_embeddings, ..self.text_config.clone() }
    }

    /// Vision layers in transformers' `hidden_states` indexing: 0..=num_hidden_layers.
    pub fn vision_layers(&self) -> usize {
        self.vision_config.num_hidden_layers
    }

    /// The configured layer, resolved.
    pub fn default_layer(&self) -> usize {
        resolve_layer(self.vision_feature_layer, self.vision_layers()).expect("checked when read")
    }

    /// The language model as users know it.
    pub fn text_name(&self) -> &'static str {
        match self.text_model_type.as_str() {
            "mistral" => "Mistral",
            _ if self.is_llama3() => "Llama 3",
            _ => "Llama",
        }
    }

    /// A Llama 3 language model (llama3-llava-next-8b): its 128k-token vocabulary.
    pub fn is_llama3(&self) -> bool {
        self.text_model_type == "llama" && self.text_config.vocab_size >= 128_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llava-hf/llava-v1.6-mistral-7b-hf's config.json (the keys that matter).
    const MISTRAL_7B: &str = r#"{"model_type": "llava_next", "image_token_index": 32000,
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "text_config": {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["MistralForCausalLM"],
            "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
            "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
            "torch_dtype": "bfloat16", "vocab_size": 32064},
        "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
            "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default"}"#;

    #[test]
    fn hub_config_of_llava_v1_6_mistral_7b() {
        let c = LlavaNextConfig::from_json_str(MISTRAL_7B).unwrap();
        assert_eq!((c.text_name(), c.text_config.kv_heads(), c.text_config.sliding_window), ("Mistral", 8, None));
        assert_eq!((c.vision_config.num_positions(), c.default_layer()), (577, 23));
        assert_eq!(c.image_grid_pinpoints, DEFAULT_PINPOINTS.to_vec());
        assert_eq!(c.projector_hidden_act, "gelu");
        // Defaults: CLIP ViT-L/336 without a vision_config, the llava-v1.6 pinpoints, a Llama text model.
        let bare = LlavaNextConfig::from_json_str(r#"{"model_type": "llava_next"}"#).unwrap();
        assert_eq!((bare.vision_config.image_size, bare.vision_config.num_hidden_layers), (336, 24));
        assert_eq!((bare.text_name(), bare.default_layer()), ("Llama", 23));
    }

    #[test]
    fn unsupported_configs_are_refused_saying_why() {
        let with = |k: &str, v: &str| {
            let mut j: Value = serde_json::from_str(MISTRAL_7B).unwrap();
            j[k] = serde_json::from_str(v).unwrap();
            LlavaNextConfig::from_json_str(&j.to_string()).map(|_| ()).unwrap_err().to_string()
        };
        assert!(with("vision_feature_select_strategy", "\"full\"").contains("only `default` works"));
        assert!(with("vision_feature_layer", "[-2, -5]").contains("a list of 2 layers"));
        assert!(with("vision_feature_layer", "-30").contains("out of range"));
        assert!(with("image_grid_pinpoints", "[[336, 500]]").contains("whole 336-px tiles"));
        assert!(with("model_type", "\"llava\"").contains("not a LLaVA-NeXT model"));
        let one = MISTRAL_7B.replace("\"vision_feature_layer\": -2", "\"vision_feature_layer\": [-3]");
        assert_eq!(
            LlavaNextConfig::from_json_str(&one).unwrap().default_layer(),
            22,
            "a list of one layer is that layer"
        );
    }
}
