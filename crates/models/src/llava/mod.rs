//! LLaVA-1.5 (transformers' `LlavaForConditionalGeneration`): config, weight layouts, the
//! model, its prompt templates and tokenizer, and its language model under the scheduler.
pub mod config;
pub mod family;
pub mod model;
pub mod prompt;
pub mod stream;
pub mod weights;

pub use config::{FeatureStrategy, LlavaConfig};
pub use model::{Llava, Projector};
pub use prompt::{PromptTokenizer, Template};
pub use stream::LlavaStream;
