//! The judges that are models run by this engine (`icet_models::judges`), as [`Judge`]s.
use std::path::Path;

use anyhow::Result;
use icet_models::backend::Backend;
use icet_models::judges::classifier::{RewardModel, ToxicityClassifier};
use icet_models::judges::deberta_reward::DebertaReward;
use icet_models::judges::llama_guard::{Judgement, LlamaGuard, LlamaGuardVersion};
use icet_models::judges::llama_guard_vision::{GuardItem, LlamaGuardVision};

use super::{Answer, Judge, Verdict};

/// Llama Guard keeps its text as the raw output; the verdict fills `unsafe` and `categories`.
fn verdicts(judged: Vec<Judgement>) -> Vec<Verdict> {
    judged
        .into_iter()
        .map(|j| Verdict {
            unsafe_: j.verdict.unsafe_,
            categories: j.verdict.categories,
            score: None,
            raw: serde_json::Value::String(j.raw),
        })
        .collect()
}

fn template_source(from_model: bool) -> &'static str {
    if from_model {
        "the model's chat template"
    } else {
        "the built-in template"
    }
}

/// Llama Guard 1/2/3 on (prompt, response).
pub struct GuardJudge<B: Backend> {
    guard: LlamaGuard<B>,
    batch: usize,
}

impl<B: Backend> GuardJudge<B> {
    pub fn load(
        dir: &Path,
        b: &B,
        version: Option<LlamaGuardVersion>,
        max_new_tokens: usize,
        batch: usize,
    ) -> Result<Self> {
        let mut guard = LlamaGuard::load(dir, b, version)?;
        guard.max_new_tokens = max_new_tokens;
        eprintln!("icet: Llama Guard {} with {}", guard.version.name(), template_source(guard.template_from_model));
        Ok(Self { guard, batch })
    }
}

impl<B: Backend> Judge<B> for GuardJudge<B> {
    fn batch_size(&self) -> usize {
        self.batch
    }
    fn judge(&mut self, b: &B, answers: &[Answer]) -> Result<Vec<Verdict>> {
        let pairs: Vec<(&str, Option<&str>)> = answers.iter().map(|a| (a.prompt, Some(a.response))).collect();
        Ok(verdicts(self.guard.judge(b, &pairs)?))
    }
}

/// Llama-Guard-3-11B-Vision on (image, prompt, response), or on the text alone.
pub struct GuardVisionJudge<B: Backend> {
    guard: LlamaGuardVision<B>,
    batch: usize,
    text_only: bool,
}

impl<B: Backend> GuardVisionJudge<B> {
    pub fn load(dir: &Path, b: &B, max_new_tokens: usize, batch: usize, text_only: bool) -> Result<Self> {
        let mut guard = LlamaGuardVision::load(dir, b)?;
        guard.max_new_tokens = max_new_tokens;
        eprintln!(
            "icet: Llama Guard 3 Vision with {}, {}",
            template_source(guard.template_from_model),
            if text_only { "text only" } else { "judging each answer with its image" }
        );
        Ok(Self { guard, batch, text_only })
    }
}

impl<B: Backend> Judge<B> for GuardVisionJudge<B> {
    /// Answers come image by image from a sweep, so a batch needs few vision passes.
    fn batch_size(&self) -> usize {
        self.batch
    }
    fn judge(&mut self, b: &B, answers: &[Answer]) -> Result<Vec<Verdict>> {
        let items: Vec<GuardItem> = answers
            .iter()
            .map(|a| GuardItem {
                prompt: a.prompt,
                response: Some(a.response),
                image: if self.text_only { None } else { a.image },
            })
            .collect();
        Ok(verdicts(self.guard.judge(b, &items)?))
    }
}

/// A GPT-2 reward model on the HH pair; the raw output is the logit.
impl<B: Backend> Judge<B> for RewardModel<B> {
    fn judge(&mut self, b: &B, answers: &[Answer]) -> Result<Vec<Verdict>> {
        answers
            .iter()
            .map(|a| {
                let s = self.score(b, a.prompt, a.response)?;
                Ok(Verdict::score(s as f64, serde_json::json!({"logits": [s]})))
            })
            .collect()
    }
}

/// A DeBERTa-v2/v3 reward model (OpenAssistant's `reward-model-deberta-v3-large-v2`) on the pair
/// its model card scores, `tokenizer(question, answer)`: the question is the prompt as the data
/// asked it — no conversation template, no image token — and the answer the response; the raw
/// output is the logit.
impl<B: Backend> Judge<B> for DebertaReward<B> {
    fn judge(&mut self, b: &B, answers: &[Answer]) -> Result<Vec<Verdict>> {
        answers
            .iter()
            .map(|a| {
                let s = self.score(b, a.prompt, a.response)?;
                Ok(Verdict::score(s as f64, serde_json::json!({"logits": [s]})))
            })
            .collect()
    }
}

/// A BERT/RoBERTa toxicity classifier on the response; the raw output is the logits and the rule
/// that made them a probability.
impl<B: Backend> Judge<B> for ToxicityClassifier<B> {
    fn judge(&mut self, b: &B, answers: &[Answer]) -> Result<Vec<Verdict>> {
        answers
            .iter()
            .map(|a| {
                let s = self.score(b, a.response)?;
                let raw =
                    serde_json::json!({"logits": s.logits, "label": self.rule.label, "function": self.rule.function});
                Ok(Verdict::score(s.score, raw))
            })
            .collect()
    }
}
