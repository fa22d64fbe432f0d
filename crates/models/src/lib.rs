//! Models for image-encoder early-exit (ICET) studies of vision-language models, written once
//! against the [`backend::Backend`] seam.
//!
//! Data path: image file → [`image`] + [`clip::processor`] → [`clip::ClipVision::capture`] (one
//! pass, every requested layer) → [`llava::Llava::project_layer`] → [`generation::run_stream`]
//! (the language model with a KV cache, many sequences in flight).
pub mod backend;
pub mod bert;
pub mod chat_template;
pub mod clip;
pub mod deberta;
pub mod error;
pub mod flops;
pub mod generation;
pub mod gpt2;
pub mod image;
pub mod judges;
pub mod layers;
pub mod llama;
pub mod llava;
pub mod llava_next;
pub mod mllama;
pub mod nn;
pub mod tokenizer;
pub mod vlm;
pub mod weights;

pub use error::{Error, Result};
