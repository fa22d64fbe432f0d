//! Models for image-encoder early-exit (ICET) studies of vision-language models, written once
//! against the [`backend::Backend`] seam.
//!
//! Data path: image file → [`clip::preprocessing`] → [`clip::ClipVision::capture`] (one pass,
//! every requested layer) → [`llava::Llava::project_layer`] → [`generation::generate`] (Llama
//! with a KV cache, many sequences per batch).
pub mod backend;
pub mod bert;
pub mod chat_template;
pub mod clip;
pub mod deberta;
pub mod error;
pub mod generation;
pub mod gpt2;
pub mod judges;
pub mod llama;
pub mod llava;
pub mod mllama;
pub mod nn;
pub mod prompt;
pub mod weights;

pub use error::{Error, Result};
