//! `icet generate`'s engine: one answer for one (image, prompt, layer), on any model family.
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
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
    /// `--no-special-tokens` (with `--template raw`): the tokenizer adds no special tokens.
    pub no_special_tokens: bool,
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
    req.decode.check()?;
    let spec = registry::open::<B>(req.model_dir, req.family_options)?;
    let layer = match req.layer {
        Some(l) => resolve_layer(l, spec.num_layers())?,
        None => spec.default_layer()?,
    };
    let mut rendered = spec.render_prompts(req.template, &[req.prompt])?;
    apply_no_special_tokens(&mut rendered, req.no_special_tokens)?;
    let model = spec.load(b, LoadParts { deepest_vision_layer: Some(layer), text: true })?;
    let prompt_ids = model.prompt_ids(&rendered.texts[0], req.image, rendered.add_special_tokens)?;
    let limit = model.stream(1)?.max_positions();
    if let Some(why) = too_long(prompt_ids.len(), req.decode.max_new_tokens, limit) {
        bail!("{why}");
    }
    let features = model.image_features(b, req.image, &[layer])?.remove(0);
    let opts = req.decode.options(model.eos_token_ids().to_vec())?;
    let request = Request::with_image(prompt_ids.clone(), Arc::new(features), req.decode.seed);
    let out = run_batch(b, &mut *model.stream(1)?, &[request], &opts, false)
        .map_err(|e| match e {
            icet_models::Error::NonFiniteLogits { token, .. } => anyhow!(
                "vision layer {layer}: the model's logits are not finite (NaN or infinity) at new token {token}: {}",
                NON_FINITE_HINT
            ),
            e => e.into(),
        })?
        .remove(0);
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

/// What a non-finite-logits error adds: where NaN or infinity comes from and what to try.
pub const NON_FINITE_HINT: &str =
    "the weights or this layer's features hold NaN or infinity (a bf16/f16 overflow? try --dtype f32)";

/// Why a prompt of `prompt` tokens cannot get `max_new_tokens` more within the model's `limit`
/// positions, with the `--max-new-tokens` that would fit; `None` when it fits.
pub fn too_long(prompt: usize, max_new_tokens: usize, limit: usize) -> Option<String> {
    if prompt + max_new_tokens <= limit {
        return None;
    }
    Some(if prompt < limit {
        format!(
            "the prompt's {prompt} tokens + {max_new_tokens} new tokens exceed the model's {limit} positions; \
             give --max-new-tokens {} or less",
            limit - prompt
        )
    } else {
        format!("the prompt's {prompt} tokens already fill the model's {limit} positions; shorten the prompt")
    })
}

/// `--no-special-tokens`: tokenize a `raw` prompt without the tokenizer's special tokens
/// (transformers' `add_special_tokens=False`); refused with any other template, whose
/// tokenization is fixed by what it stands for.
pub fn apply_no_special_tokens(rendered: &mut icet_models::vlm::RenderedPrompts, asked: bool) -> Result<()> {
    if !asked {
        return Ok(());
    }
    if rendered.template != "raw" {
        bail!(
            "--no-special-tokens goes with --template raw (the template `{}` decides its own special tokens)",
            rendered.template
        );
    }
    rendered.add_special_tokens = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_cannot_fit_says_which_max_new_tokens_would() {
        assert_eq!(too_long(10, 246, 256), None);
        let e = too_long(40, 256, 256).unwrap();
        assert!(e.contains("40 tokens + 256 new tokens exceed the model's 256 positions"), "{e}");
        assert!(e.contains("--max-new-tokens 216 or less"), "{e}");
        assert!(too_long(300, 1, 256).unwrap().contains("shorten the prompt"));
    }
}
