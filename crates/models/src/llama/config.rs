//! `LlamaConfig` and RoPE frequencies, accepting both transformers 4.x keys (`rope_theta`,
//! `rope_scaling`) and 5.x `rope_parameters`. Mistral (`MistralForCausalLM`) is the same decoder
//! with other defaults, no biases and a sliding attention window: [`LlamaConfig::from_text_config`]
//! reads either as transformers' `AutoConfig` does for its `model_type`.
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    /// Mistral's `sliding_window`: each position attends to the last this many positions
    /// (itself included). Only [`Self::from_text_config`] sets it, for `model_type: mistral`
    /// (Llama ignores the key, as transformers' `LlamaAttention` does).
    #[serde(skip_deserializing)]
    pub sliding_window: Option<usize>,
}

impl Default for LlamaConfig {
    /// transformers' `LlamaConfig()` defaults (Llama-2-7B shapes).
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            sliding_window: None,
        }
    }
}

/// transformers 5.24's `MistralConfig` defaults where they differ from `LlamaConfig`'s
/// (Mistral-7B's shapes); `sliding_window` (4096 when absent, none when `null`) is read apart.
fn mistral_defaults() -> Value {
    serde_json::json!({
        "intermediate_size": 14336,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
    })
}

/// How RoPE frequencies are derived (transformers' `ROPE_INIT_FUNCTIONS`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

impl LlamaConfig {
    /// A language model's config (a VLM's `text_config`) as transformers' `AutoConfig` reads it
    /// for its `model_type`: `llama` (or none) with `LlamaConfig`'s defaults, `mistral` with
    /// `MistralConfig`'s (no attention or MLP biases whatever the keys say, `sliding_window`
    /// honoured). Other language models are refused, naming the type.
    pub fn from_text_config(v: &Value) -> Result<Self> {
        let invalid = |e: serde_json::Error| Error::invalid(format!("text_config: {e}"));
        if v.is_null() {
            return Ok(Self::default());
        }
        match v.get("model_type").and_then(Value::as_str).unwrap_or("llama") {
            "llama" => serde_json::from_value(v.clone()).map_err(invalid),
            "mistral" => {
                let mut merged = mistral_defaults();
                if let (Some(m), Some(given)) = (merged.as_object_mut(), v.as_object()) {
                    // Given keys win, `null`s included (`num_key_value_heads: null` = all heads).
                    m.extend(given.iter().map(|(k, x)| (k.clone(), x.clone())));
                }
                let mut c: Self = serde_json::from_value(merged).map_err(invalid)?;
                c.sliding_window = match v.get("sliding_window") {
                    None => Some(4096),
                    Some(Value::Null) => None,
                    Some(w) => Some(w.as_u64().filter(|&w| w > 0).ok_or_else(|| {
                        Error::invalid(format!("text_config: sliding_window {w} is not a positive integer"))
                    })? as usize),
                };
                c.attention_bias = false;
                c.mlp_bias = false;
                Ok(c)
            }
            other => Err(Error::invalid(format!(
                "text_config: model_type `{other}` is not a language model icet implements (llama, mistral)"
            ))),
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// `(theta, scaling)` from whichever keys the config uses.
    pub fn rope(&self) -> Result<(f64, RopeScaling)> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let theta = self
            .rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|p| p["rope_theta"].as_f64()))
            .unwrap_or(10000.0);
        let Some(p) = params.filter(|p| !p.is_null()) else { return Ok((theta, RopeScaling::Default)) };
        let kind = p["rope_type"].as_str().or_else(|| p["type"].as_str()).unwrap_or("default");
        let num = |key: &str| {
            p[key].as_f64().ok_or_else(|| Error::invalid(format!("rope scaling `{kind}` needs numeric `{key}`")))
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: num("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => return Err(Error::invalid(format!("unsupported rope type `{other}`"))),
        };
        Ok((theta, scaling))
    }

    /// RoPE inverse frequencies, `head_dim / 2` of them, as transformers computes them in f32.
    pub fn inv_freq(&self) -> Result<Vec<f32>> {
        let (theta, scaling) = self.rope()?;
        Ok(rope_inv_freq(self.head_dim(), theta, &scaling))
    }
}

/// `_compute_default_rope_parameters` (+ linear / llama3 scaling) of transformers'
/// modeling_rope_utils.py.
pub fn rope_inv_freq(dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base: Vec<f32> = (0..dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32)).collect();
    match *scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let f = f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let v = if wavelen > low_wavelen {
                        f / factor
                    } else if wavelen < high_wavelen {
                        f
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    };
                    v as f32
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rope_from_4x_and_5x_keys() {
        let v4: LlamaConfig = serde_json::from_str(r#"{"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#).unwrap();
        let v5: LlamaConfig = serde_json::from_str(r#"{"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#).unwrap();
        assert_eq!(v4.rope().unwrap(), v5.rope().unwrap());
        assert_eq!(v5.rope().unwrap().0, 500000.0);
        let plain: LlamaConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(plain.rope().unwrap(), (10000.0, RopeScaling::Default));
        let bad: LlamaConfig = serde_json::from_str(r#"{"rope_scaling": {"type": "yarn", "factor": 2.0}}"#).unwrap();
        assert!(bad.rope().is_err());
    }

    /// llava-v1.6-mistral-7b-hf's text_config omits most keys (MistralConfig defaults) and sets
    /// `sliding_window: null`; an omitted window is MistralConfig's 4096; Llama ignores the key.
    #[test]
    fn mistral_text_configs_take_mistral_defaults() {
        let hub = serde_json::json!({"model_type": "mistral", "intermediate_size": 14336, "max_position_embeddings": 32768,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
            "vocab_size": 32064, "attention_bias": true, "head_dim": null});
        let mha = serde_json::json!({"model_type": "mistral", "num_key_value_heads": null});
        assert_eq!(LlamaConfig::from_text_config(&mha).unwrap().kv_heads(), 32, "null: every head, as MistralConfig");
        let c = LlamaConfig::from_text_config(&hub).unwrap();
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.kv_heads()), (4096, 32, 32, 8));
        assert_eq!((c.intermediate_size, c.max_position_embeddings, c.vocab_size), (14336, 32768, 32064));
        assert_eq!((c.head_dim(), c.sliding_window, c.attention_bias), (128, None, false));
        assert_eq!(c.rope().unwrap().0, 1e6);
        let bare = LlamaConfig::from_text_config(&serde_json::json!({"model_type": "mistral"})).unwrap();
        assert_eq!(
            (bare.sliding_window, bare.intermediate_size, bare.max_position_embeddings),
            (Some(4096), 14336, 131072)
        );
        let windowed =
            LlamaConfig::from_text_config(&serde_json::json!({"model_type": "mistral", "sliding_window": 160}));
        assert_eq!(windowed.unwrap().sliding_window, Some(160));
        let llama = serde_json::json!({"model_type": "llama", "sliding_window": 64, "attention_bias": true});
        let llama = LlamaConfig::from_text_config(&llama).unwrap();
        assert_eq!((llama.sliding_window, llama.attention_bias, llama.intermediate_size), (None, true, 11008));
        assert_eq!(LlamaConfig::from_text_config(&serde_json::json!({})).unwrap(), LlamaConfig::default());
        let e = LlamaConfig::from_text_config(&serde_json::json!({"model_type": "qwen2"})).unwrap_err().to_string();
        assert!(e.contains("model_type `qwen2`") && e.contains("llama, mistral"), "{e}");
        let e = LlamaConfig::from_text_config(&serde_json::json!({"model_type": "mistral", "sliding_window": 0}));
        assert!(e.unwrap_err().to_string().contains("sliding_window 0"));
    }

    #[test]
    fn llama3_scaling_matches_the_formula_by_band() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let base = rope_inv_freq(128, 500000.0, &RopeScaling::Default);
        let scaled = rope_inv_freq(128, 500000.0, &s);
        for (b, sc) in base.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f64::consts::PI / *b as f64;
            if wavelen < 8192.0 / 4.0 {
                assert_eq!(b, sc, "high frequencies are kept");
            } else if wavelen > 8192.0 {
                assert!((sc / b - 0.125).abs() < 1e-6, "low frequencies are divided by the factor");
            } else {
                assert!(*sc <= *b && *sc >= b / 8.0, "medium frequencies are interpolated");
            }
        }
    }
}
