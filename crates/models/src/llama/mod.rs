//! The Llama language model (LLaVA-1.5's Vicuna, Llama Guard, Mllama's text side).
pub mod config;
pub mod stream;
pub mod text;

pub use config::LlamaConfig;
pub use stream::TextStream;
pub use text::Llama;
