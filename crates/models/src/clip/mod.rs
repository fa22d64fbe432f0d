//! CLIP vision tower (transformers' `CLIPVisionModel`) and its image processor.
pub mod config;
pub mod processor;
pub mod vision;

pub use config::ClipVisionConfig;
pub use vision::{ClipVision, VisionCapture};
