//! Generation for every model here: decoding options, the requests the scheduler takes, what a
//! finished sequence gives back, and the continuous-batching scheduler ([`scheduler`]) every
//! language model runs under through its [`StreamModel`]. Where a request's image features go
//! (spliced over image tokens, read by cross-attention) is the model's business, not the
//! scheduler's. [`config`] reads `generation_config.json`; [`memory`] says what a sequence in
//! flight costs.
use std::sync::Arc;

use serde::Serialize;

use crate::backend::{Backend, SamplingParams};

pub mod config;
pub mod interrupt;
pub mod memory;
pub mod scheduler;

pub use config::GenerationDefaults;
pub use memory::SlotCost;
pub use scheduler::{run_batch, run_stream, step_chunks, Stream, StreamModel, StreamSeq};

#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOptions {
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    /// `None` is greedy decoding.
    pub sampling: Option<SamplingParams>,
}

impl DecodeOptions {
    /// Greedy decoding of at most `max_new_tokens`, stopping at any of `eos_token_ids`.
    pub fn greedy(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> Self {
        Self { max_new_tokens, eos_token_ids, sampling: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Eos,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Generated ids, the end-of-sequence token included when produced.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Logits of the first generated position, when asked for (parity tests read them).
    pub first_logits: Option<Vec<f32>>,
}

/// The seed of step `step` of a sequence seeded with `seed`: distinct per step, and independent
/// of the batch a sequence happens to run in.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    crate::backend::splitmix64(seed ^ (step as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// One image's projected features for one vision layer, as the language model reads them:
/// `rows` is `[n, text hidden]`, of which the first `real_rows` come from real image content
/// (Llama 3.2 Vision pads its tile grid with empty tiles; for LLaVA every row is real).
pub struct ImageFeatures<B: Backend> {
    pub rows: B::Tensor,
    pub real_rows: usize,
}

impl<B: Backend> ImageFeatures<B> {
    /// Features whose every row is real.
    pub fn all_real(b: &B, rows: B::Tensor) -> Self {
        let real_rows = b.dims(&rows).0;
        Self { rows, real_rows }
    }
}

/// One sequence to generate: its prompt ids, the image features it reads (`None`: text only),
/// and the seed of its draws (unused when greedy). Features are shared: every request of one
/// image and layer holds the same `Arc`, and the features are freed when the last of them is
/// done with them.
pub struct Request<B: Backend> {
    pub prompt_ids: Vec<u32>,
    pub features: Option<Arc<ImageFeatures<B>>>,
    pub seed: u64,
}

impl<B: Backend> Request<B> {
    pub fn text_only(prompt_ids: Vec<u32>, seed: u64) -> Self {
        Self { prompt_ids, features: None, seed }
    }

    pub fn with_image(prompt_ids: Vec<u32>, features: Arc<ImageFeatures<B>>, seed: u64) -> Self {
        Self { prompt_ids, features: Some(features), seed }
    }
}

impl<B: Backend> Clone for Request<B> {
    fn clone(&self) -> Self {
        Self { prompt_ids: self.prompt_ids.clone(), features: self.features.clone(), seed: self.seed }
    }
}
