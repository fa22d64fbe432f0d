//! LLaVA-1.5: config, weight layouts and the model.
pub mod config;
pub mod model;
pub mod weights;

pub use config::{parse_layers, resolve_layer, FeatureStrategy, GenerationDefaults, LlavaConfig};
pub use model::{Llava, LoadParts, Projector};
pub use weights::LlavaLayout;
