//! Llama-Guard-3-11B-Vision run by this engine on [`Mllama`]: judges a (prompt, response) pair
//! together with the image the prompt came with, as the model card uses it.
//!
//! The conversation is `[user: [image, prompt], assistant: [response]]` in typed content parts
//! (the processor's format); the model's own `chat_template` renders it (the built-in
//! `templates/llama_guard_3_vision.jinja` when the directory ships none), which puts one
//! `<|image|>` before the task. Ids are what `MllamaProcessor.apply_chat_template(tokenize=True)`
//! gives: the template writes the BOS, so none is added. The image goes through the stock vision
//! tower (every local layer, Meta's tap semantics — the judge is never early-exited) and the
//! projector; the verdict is decoded greedily until an end-of-turn token. Without an image the
//! pair is judged as text (no `<|image|>`, cross-attention layers skipped), as the model card
//! allows.
use std::path::Path;
use std::sync::Arc;

use super::llama_guard::{prompt_categories, template_text, verdict_eos_ids, Judgement, LlamaGuardVersion};
use crate::backend::Backend;
use crate::chat_template::ChatTemplate;
use crate::error::{Error, Result};
use crate::generation::{DecodeOptions, Request};
use crate::mllama::vision::ExitRule;
use crate::mllama::Mllama;
use crate::vlm::LoadParts;

/// One pair to judge, with the image the prompt was asked about (`None`: judge the text alone).
#[derive(Clone, Copy, Debug)]
pub struct GuardItem<'a> {
    pub prompt: &'a str,
    pub response: Option<&'a str>,
    pub image: Option<&'a Path>,
}

pub struct LlamaGuardVision<B: Backend> {
    pub model: Mllama<B>,
    pub template: ChatTemplate,
    /// Whether the template came from the model directory (else it is the built-in one).
    pub template_from_model: bool,
    pub eos_token_ids: Vec<u32>,
    pub max_new_tokens: usize,
}

impl<B: Backend> LlamaGuardVision<B> {
    pub const VERSION: LlamaGuardVersion = LlamaGuardVersion::V3Vision;

    /// Loads a `MllamaForConditionalGeneration` Llama Guard directory (all of it: the judge sees
    /// the stock vision features).
    pub fn load(dir: &Path, b: &B) -> Result<Self> {
        let model = Mllama::load(dir, b, LoadParts { deepest_vision_layer: None, text: true })?;
        let shipped = ChatTemplate::from_dir(dir)?;
        if let (Some(t), Some(text)) = (&shipped, template_text(dir)) {
            if !text.contains("unsafe") {
                return Err(Error::input(
                    &t.origin,
                    "this chat template is not a Llama Guard prompt (no 'safe'/'unsafe' instructions); \
                     is this an instruct model rather than Llama Guard 3 Vision?",
                ));
            }
        }
        let template_from_model = shipped.is_some();
        let template = match shipped {
            Some(t) => t,
            None => ChatTemplate::new(
                Self::VERSION.builtin_template(),
                "built-in Llama Guard 3 Vision template",
                ChatTemplate::from_dir_specials(dir)?,
            )?,
        };
        let eos_token_ids = verdict_eos_ids(dir, model.tokenizer()?)?;
        Ok(Self { model, template, template_from_model, eos_token_ids, max_new_tokens: 20 })
    }

    /// The judged conversation in the processor's typed-parts format.
    pub fn conversation_json(prompt: &str, response: Option<&str>, with_image: bool) -> serde_json::Value {
        let mut user = Vec::new();
        if with_image {
            user.push(serde_json::json!({"type": "image"}));
        }
        user.push(serde_json::json!({"type": "text", "text": prompt}));
        let mut m = vec![serde_json::json!({"role": "user", "content": user})];
        if let Some(r) = response {
            m.push(serde_json::json!({"role": "assistant", "content": [{"type": "text", "text": r}]}));
        }
        serde_json::Value::Array(m)
    }

    /// The prompt text and its token ids for one pair.
    pub fn encode(&self, prompt: &str, response: Option<&str>, with_image: bool) -> Result<(String, Vec<u32>)> {
        let text = self.template.render_json(&Self::conversation_json(prompt, response, with_image), false, &[])?;
        let ids = if with_image { self.model.prompt_ids(&text)? } else { self.model.text_only_prompt_ids(&text)? };
        Ok((text, ids))
    }

    /// Judges a batch greedily. Items with an image share one vision pass per distinct image;
    /// items with and without images are decoded as two batches.
    pub fn judge(&self, b: &B, items: &[GuardItem]) -> Result<Vec<Judgement>> {
        Ok(self.judge_with_logits(b, items, false)?.into_iter().map(|(j, _)| j).collect())
    }

    /// [`Self::judge`], also returning each item's first-step logits when `keep_first_logits`.
    pub fn judge_with_logits(
        &self,
        b: &B,
        items: &[GuardItem],
        keep_first_logits: bool,
    ) -> Result<Vec<(Judgement, Option<Vec<f32>>)>> {
        let mut out: Vec<Option<(Judgement, Option<Vec<f32>>)>> = vec![None; items.len()];
        let (with, without): (Vec<usize>, Vec<usize>) = (0..items.len()).partition(|&i| items[i].image.is_some());
        // The stock model: every local layer, the global stage on the last one.
        let last = self.model.config.vision_layers();
        let mut images: Vec<&Path> = Vec::new();
        for &i in &with {
            let path = items[i].image.expect("partitioned");
            if !images.contains(&path) {
                images.push(path);
            }
        }
        let mut states = Vec::with_capacity(images.len());
        for path in &images {
            let px = self.model.pixel_values(path)?;
            let pass = self.model.local_pass(b, &px, &[(last, ExitRule::Clamp)], &[])?;
            states.push(Arc::new(self.model.image_features(b, &pass, last, ExitRule::Clamp)?));
        }
        for group in [with, without] {
            if group.is_empty() {
                continue;
            }
            let mut requests = Vec::with_capacity(group.len());
            let mut listed = Vec::with_capacity(group.len());
            for &i in &group {
                let item = &items[i];
                let (text, prompt_ids) = self.encode(item.prompt, item.response, item.image.is_some())?;
                listed.push(prompt_categories(&text));
                let features =
                    item.image.map(|p| states[images.iter().position(|q| *q == p).expect("collected")].clone());
                requests.push(Request { prompt_ids, features, seed: 0 });
            }
            let opts = DecodeOptions::greedy(self.max_new_tokens, self.eos_token_ids.clone());
            let generated = self.model.generate(b, &requests, &opts, keep_first_logits)?;
            for ((&i, g), listed) in group.iter().zip(generated).zip(listed) {
                let raw = self.model.decode(&g.token_ids)?;
                out[i] = Some((Judgement::new(raw, g.token_ids, Self::VERSION, &listed), g.first_logits));
            }
        }
        Ok(out.into_iter().map(|j| j.expect("every item is in one group")).collect())
    }
}
