//! `LlamaConfig` and RoPE frequencies, accepting both transformers 4.x keys (`rope_theta`,
//! `rope_scaling`) and 5.x `rope_parameters`.
use serde::Deserialize;

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
        }
    }
}

/// How RoPE frequencies are derived (transformers' `ROPE_INIT_FUNCTIONS`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

impl LlamaConfig {
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
