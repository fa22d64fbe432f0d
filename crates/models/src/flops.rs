//! The work of each stage of a sweep, counted from a model's config (2 FLOPs per multiply-add;
//! norms, activations and gathers ignored; padded rows counted where the engine computes them),
//! so that measured times read as TFLOP/s against a device's roofline. Each family builds its
//! [`FlopModel`] (`EarlyExitVlm::flop_model`) from [`encoder_layer`] and [`FlopModel::decoder`].
use serde::Serialize;

use crate::llama::LlamaConfig;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FlopModel {
    /// Per image: a sweep over every layer (vision pass keeping them all, projector per layer;
    /// Mllama under the clamp rule: the global stage per layer too).
    pub vision_per_image: f64,
    /// Per token of the language model, without attention and lm_head.
    pub text_linear_per_token: f64,
    /// Self-attention per (query, key) pair over all self-attention layers.
    pub text_attention_per_pair: f64,
    /// Mllama: cross-attention of one token to its image's real-tile rows, all cross layers.
    pub cross_attention_per_token: f64,
    /// Mllama: the cross-attention keys/values of one image's states, all cross layers.
    pub cross_kv_per_image: f64,
    /// lm_head per generated position.
    pub lm_head: f64,
    /// Language-model weight elements read per decode step (embedding table excluded unless tied).
    pub text_weight_elements: f64,
}

/// One transformer layer over `rows` tokens of width `d`, MLP width `inter`, full attention.
pub fn encoder_layer(rows: f64, d: f64, inter: f64) -> f64 {
    2.0 * rows * (4.0 * d * d + 2.0 * d * inter) + 4.0 * rows * rows * d
}

impl FlopModel {
    /// A Llama decoder's per-token work (no vision yet); layers in `cross_layers` are Mllama
    /// cross-attention layers, whose keys/values come from the image and are counted apart.
    pub fn decoder(t: &LlamaConfig, cross_layers: &[usize]) -> Self {
        let (h, ti) = (t.hidden_size as f64, t.intermediate_size as f64);
        let q = (t.num_attention_heads * t.head_dim()) as f64;
        let kv = (t.kv_heads() * t.head_dim()) as f64;
        let mlp = 3.0 * h * ti;
        let self_layer = h * (q + 2.0 * kv) + q * h + mlp;
        let cross_layer = h * q + q * h + mlp;
        let cross = cross_layers.len() as f64;
        let selfs = t.num_hidden_layers as f64 - cross;
        let weights = selfs * self_layer + cross * cross_layer;
        let vocab = t.vocab_size as f64;
        Self {
            vision_per_image: 0.0,
            text_linear_per_token: 2.0 * weights,
            text_attention_per_pair: 4.0 * selfs * q,
            cross_attention_per_token: 0.0,
            cross_kv_per_image: 0.0,
            lm_head: 2.0 * h * vocab,
            text_weight_elements: weights + h * vocab,
        }
    }

    /// Prefill of `batch` sequences of `len` tokens each reading one image (causal: query i sees
    /// i + 1 keys), up to the first token's logits.
    pub fn prefill(&self, batch: usize, len: usize) -> f64 {
        let pairs = (len * (len + 1) / 2) as f64;
        let per_token = self.text_linear_per_token + self.cross_attention_per_token;
        batch as f64 * (len as f64 * per_token + pairs * self.text_attention_per_pair + self.lm_head)
            + self.cross_kv_per_image
    }

    /// One decode step of `batch` sequences whose context is `context` tokens.
    pub fn decode_step(&self, batch: usize, context: usize) -> f64 {
        let per_token = self.text_linear_per_token + self.cross_attention_per_token + self.lm_head;
        batch as f64 * (per_token + context as f64 * self.text_attention_per_pair)
    }
}
