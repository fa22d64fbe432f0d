//! LLaVA-NeXT / LLaVA-1.6 (transformers' `LlavaNextForConditionalGeneration`): the LLaVA-1.5
//! tower, projector and splice around "anyres" tiling — the image resized and padded into the
//! best of `image_grid_pinpoints`, cut into tiles, plus a downscaled base image; every tile
//! through CLIP; the tiles' features unpadded back to the image's aspect ratio with an
//! `image_newline` row after each row. ICET-l touches every tile.
//!
//! Data path: image → [`processor`] (tiles, bit-exact with `LlavaNextImageProcessorPil`) →
//! [`crate::clip::ClipVision::capture`] (all tiles in one pass, every requested layer) →
//! [`model::LlavaNext::project_layer`] (projector + [`anyres`] packing) → the language model
//! (Llama, Mistral, Llama 3; [`crate::llama`]) through [`crate::llava::LlavaStream`].
pub mod anyres;
pub mod config;
pub mod family;
pub mod model;
pub mod processor;
pub mod prompt;

pub use anyres::AnyresGrid;
pub use config::LlavaNextConfig;
pub use model::LlavaNext;
pub use processor::{LlavaNextProcessor, TiledPixels};
pub use prompt::NextTemplate;
