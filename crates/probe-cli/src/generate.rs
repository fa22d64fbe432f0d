//! `icet generate`'s engine: one answer for one (image, prompt, layer), on any model family.
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use icet_models::backend::Backend;
use icet_models::generation::{run_batch, Request};
use icet_models::layers::resolve_layer;
use icet_models::vlm::{registry, FamilyOptions, LoadParts};

use crate::decode::DecodeArgs;

/// What to answer.
#[derive(Clone, Debug)]
pub struct GenerateRequest<'a> {
    pub model_dir: &'a Path,
    pub family_options: FamilyOptions,
    pub image: &'a Path,
    pub prompt: &'a str,
    pub template: Option<&'a str>,
    /// `None`: the family's default layer.
    pub layer: Option<i64>,
    pub decode: &'a DecodeArgs,
}

/// One answer and what produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub layer: usize,
    /// The family's own settings of the answer (Llama 3.2 Vision: `exit_rule`).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// As fed to the language model (image slots expanded where the family splices).
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: &'static str,
    /// To say once on stderr (e.g. `--template auto` fell back to the family default).
    pub note: Option<String>,
}

pub fn generate<B: Backend>(b: &B, req: GenerateRequest) -> Result<Answer> {
    let spec = registry::open::<B>(req.model_dir, req.family_options)?;
    let layer = match req.layer {
        Some(l) => resolve_layer(l, spec.num_layers())?,
        None => spec.default_layer()?,
    };
    let rendered = spec.render_prompts(req.template, &[req.prompt])?;
    let model = spec.load(b, LoadParts { deepest_vision_layer: Some(layer), text: true })?;
    let prompt_ids = model.prompt_ids(&rendered.texts[0], req.image)?;
    let features = model.image_features(b, req.image, &[layer])?.remove(0);
    let opts = req.decode.options(model.eos_token_ids().to_vec())?;
    let request = Request::with_image(prompt_ids.clone(), Arc::new(features), req.decode.seed);
    let out = run_batch(b, &mut *model.stream(1)?, &[request], &opts, false)?.remove(0);
    Ok(Answer {
        layer,
        settings: spec.settings(),
        prompt_ids,
        text: model.decode(&out.token_ids)?,
        token_ids: out.token_ids,
        finish_reason: out.finish_reason.as_str(),
        note: rendered.note,
    })
}
