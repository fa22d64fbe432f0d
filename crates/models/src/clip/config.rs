//! `CLIPVisionConfig`, with transformers' defaults for every key a config may omit.
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f32,
}

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig()` defaults (ViT-B/32).
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patch tokens plus the class token.
    pub fn num_positions(&self) -> usize {
        self.patches_per_side().pow(2) + 1
    }
}
