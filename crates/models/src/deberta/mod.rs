//! DeBERTa-v2/v3 (`DebertaV2ForSequenceClassification`), the architecture of
//! `OpenAssistant/reward-model-deberta-v3-large-v2`: post-LayerNorm BERT-style blocks whose
//! attention is *disentangled* — content→content plus content→position (c2p) and
//! position→content (p2c) scores against a shared table of relative-position embeddings, with
//! relative positions beyond ±`position_buckets/2` sharing log-sized buckets
//! (`make_log_bucket_position`). See [`model`] for which parts run where.
pub mod config;
pub mod model;

pub use config::DebertaV2Config;
pub use model::{log_bucket_position, DebertaV2ForSequenceClassification};
