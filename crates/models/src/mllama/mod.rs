//! Llama 3.2 Vision (transformers' `MllamaForConditionalGeneration`): a two-stage vision encoder
//! over image tiles whose output (global encoder result ‖ interleaved taps of local layers) is
//! projected and read by the language model through gated cross-attention layers.
//!
//! Data path: image → [`preprocessing`] (best-fit tile canvas) → [`vision::MllamaVision`] (local
//! encoder, one pass, every hidden state kept that an exit rule may read) → [`vision::ExitRule`]
//! → [`model::MllamaProjector`] → [`text::MllamaText`] (self-attention layers with a KV cache,
//! cross-attention layers reading the projected states, K/V computed once per image).
pub mod config;
pub mod family;
pub mod model;
pub mod preprocessing;
pub mod prompt;
pub mod stream;
pub mod text;
pub mod vision;

pub use config::{MllamaConfig, MllamaTextConfig, MllamaVisionConfig};
pub use model::{Mllama, MllamaProjector};
pub use preprocessing::{MllamaImageProcessor, TiledPixels};
pub use prompt::{build_string_from_input, llama3_text_only, MllamaTemplate};
pub use stream::MllamaStream;
pub use text::MllamaText;
pub use vision::{ExitRule, LocalPass, MllamaVision};
