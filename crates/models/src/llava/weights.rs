//! Where each LLaVA component lives in a checkpoint. Three layouts are in use:
//! - the llava-hf hub layout: `language_model.model.*`, `language_model.lm_head.*`,
//!   `vision_tower.vision_model.*`, `multi_modal_projector.*`;
//! - re-saves by transformers ≥ 4.52: `model.language_model.*`, `model.vision_tower.vision_model.*`,
//!   `model.multi_modal_projector.*`, `lm_head.*`;
//! - either of the above with the vision tower's keys directly under `vision_tower.` (no `vision_model.`).
use crate::error::Result;
use crate::weights::{Checkpoint, ComponentLayout};

/// The layout of a LLaVA checkpoint, from the tensor names it has.
pub fn detect_layout(checkpoint: &Checkpoint) -> Result<ComponentLayout> {
    {
        let vision = checkpoint.find_prefix(
            &["vision_tower.vision_model.", "model.vision_tower.vision_model.", "vision_tower.", "model.vision_tower."],
            "embeddings.patch_embedding.weight",
            "vision tower",
        )?;
        let projector = checkpoint.find_prefix(
            &["multi_modal_projector.", "model.multi_modal_projector."],
            "linear_1.weight",
            "projector",
        )?;
        let text = checkpoint.find_prefix(
            &["language_model.model.", "model.language_model.", "language_model."],
            "embed_tokens.weight",
            "language model",
        )?;
        // Without an output projection the config must tie it to the embeddings (checked at load).
        let lm_head = checkpoint
            .find_prefix(&["language_model.lm_head.", "lm_head."], "weight", "lm_head")
            .unwrap_or_else(|_| {
                let hub = text.starts_with("language_model.");
                if hub { "language_model.lm_head." } else { "lm_head." }.to_string()
            });
        Ok(ComponentLayout { vision, projector, text, lm_head })
    }
}
