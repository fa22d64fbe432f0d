//! `MllamaConfig` (transformers' configuration_mllama.py): the vision and text sub-configs as
//! `config.json` holds them. Missing fields take transformers' `MllamaVisionConfig` /
//! `MllamaTextConfig` defaults (the 11B model's shapes).
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::llama::LlamaConfig;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct MllamaVisionConfig {
    pub hidden_size: usize,
    pub hidden_act: String,
    /// Local encoder layers (32 in Llama 3.2 Vision).
    pub num_hidden_layers: usize,
    /// Gated global encoder layers (8).
    pub num_global_layers: usize,
    #[serde(alias = "num_attention_heads")]
    pub attention_heads: usize,
    pub num_channels: usize,
    pub intermediate_size: usize,
    /// Width of the projector input: `hidden_size * (1 + taps)`.
    pub vision_output_dim: usize,
    /// Tile side in pixels.
    pub image_size: usize,
    pub patch_size: usize,
    pub norm_eps: f32,
    pub max_num_tiles: usize,
    /// Local layers whose outputs are tapped, in Meta's semantics (see [`crate::mllama::vision`]).
    pub intermediate_layers_indices: Vec<usize>,
    /// Tile arrangements, `aspect_ratio_id - 1` indexes this list.
    pub supported_aspect_ratios: Vec<[usize; 2]>,
}

impl Default for MllamaVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1280,
            hidden_act: "gelu".into(),
            num_hidden_layers: 32,
            num_global_layers: 8,
            attention_heads: 16,
            num_channels: 3,
            intermediate_size: 5120,
            vision_output_dim: 7680,
            image_size: 448,
            patch_size: 14,
            norm_eps: 1e-5,
            max_num_tiles: 4,
            intermediate_layers_indices: vec![3, 7, 15, 23, 30],
            supported_aspect_ratios: vec![[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
        }
    }
}

impl MllamaVisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.attention_heads.max(1)
    }
    /// Patches per tile side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }
    /// Tokens per tile: patches + the class token (`MllamaVisionModel.num_patches`).
    pub fn tokens_per_tile(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    /// Tokens per tile after padding the patch axis to a multiple of 8.
    pub fn padded_tokens_per_tile(&self) -> usize {
        self.tokens_per_tile().div_ceil(8) * 8
    }
    pub fn max_aspect_ratio_id(&self) -> usize {
        self.supported_aspect_ratios.len()
    }

    pub fn validate(&self) -> Result<()> {
        let c = self;
        let taps = c.intermediate_layers_indices.len();
        let bad = c.attention_heads == 0
            || !c.hidden_size.is_multiple_of(c.attention_heads)
            || c.patch_size == 0
            || !c.image_size.is_multiple_of(c.patch_size)
            || c.max_num_tiles == 0
            || c.vision_output_dim != c.hidden_size * (1 + taps)
            || c.intermediate_layers_indices.iter().any(|&i| i > c.num_hidden_layers);
        if bad {
            return Err(Error::invalid(format!(
                "vision config is inconsistent: hidden_size {} / attention_heads {}, image_size {} / patch_size {}, \
                 vision_output_dim {} vs hidden_size x (1 + {taps} taps), taps {:?} of {} layers",
                c.hidden_size,
                c.attention_heads,
                c.image_size,
                c.patch_size,
                c.vision_output_dim,
                c.intermediate_layers_indices,
                c.num_hidden_layers
            )));
        }
        Ok(())
    }
}

/// `MllamaTextConfig`: a Llama 3.1 decoder config plus the indices of the layers that are
/// cross-attention layers (they replace self-attention layers, they are not added to them).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct MllamaTextConfig {
    #[serde(flatten)]
    pub llama: LlamaConfig,
    #[serde(default = "default_cross_layers")]
    pub cross_attention_layers: Vec<usize>,
}

fn default_cross_layers() -> Vec<usize> {
    vec![3, 8, 13, 18, 23, 28, 33, 38]
}

impl Default for MllamaTextConfig {
    fn default() -> Self {
        Self {
            llama: LlamaConfig {
                vocab_size: 128256,
                hidden_size: 4096,
                intermediate_size: 14336,
                num_hidden_layers: 40,
                num_attention_heads: 32,
                num_key_value_heads: Some(8),
                max_position_embeddings: 131072,
                rms_norm_eps: 1e-5,
                rope_theta: Some(500000.0),
                ..LlamaConfig::default()
            },
            cross_attention_layers: default_cross_layers(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct MllamaConfig {
    #[serde(default)]
    pub model_type: String,
    #[serde(default)]
    pub vision_config: MllamaVisionConfig,
    #[serde(default)]
    pub text_config: MllamaTextConfig,
    /// `<|image|>`: 128256 in Llama 3.2 Vision, one past the text vocabulary (the embedding
    /// table has `vocab_size + 8` rows).
    #[serde(default = "default_image_token", alias = "image_token_id")]
    pub image_token_index: u32,
}

fn default_image_token() -> u32 {
    128256
}

impl MllamaConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, e))?;
        let config: Self =
            serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid Mllama config: {e}")))?;
        if config.model_type != "mllama" {
            return Err(Error::input(&path, format!("model_type is `{}`, expected `mllama`", config.model_type)));
        }
        config.vision_config.validate().map_err(|e| Error::input(&path, e))?;
        let t = &config.text_config;
        if let Some(&bad) = t.cross_attention_layers.iter().find(|&&i| i >= t.llama.num_hidden_layers) {
            return Err(Error::input(
                &path,
                format!(
                    "cross_attention_layers has {bad}, but the text model has {} layers",
                    t.llama.num_hidden_layers
                ),
            ));
        }
        Ok(config)
    }

    /// Local encoder layers: the ICET layer range is `0..=vision_layers()`.
    pub fn vision_layers(&self) -> usize {
        self.vision_config.num_hidden_layers
    }
}
