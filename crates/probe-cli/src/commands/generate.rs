//! `icet generate`.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use icet_engine::decode::DecodeArgs;
use icet_engine::generate::{generate, GenerateRequest};
use icet_models::backend::Backend;

use super::ModelArgs;

#[derive(ClapArgs, Debug)]
#[command(after_help = "With --json the last stdout line is one object:
  {\"layer\": l, \"prompt_ids\": [...], \"token_ids\": [...], \"text\": \"...\", \"finish_reason\": \"eos\"|\"length\"}
plus the family's settings (Llama 3.2 Vision: \"exit_rule\"). prompt_ids are the ids fed to the
language model after image-token expansion; token_ids the generated ids (end-of-sequence included
when produced).

Example: icet generate --model llava-1.5-7b-hf --image cat.jpg --prompt 'What is in the image?' --layer 8")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file (PNG, JPEG, ...)
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// The user's question
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// Conversation template [default: the model's (llava-v1 for LLaVA, llama3 for Llama 3.2 Vision;
    /// for LLaVA-NeXT its language model's: mistral-instruct, llava-v1 for Vicuna, llava-next-llama3)]
    #[arg(long, value_parser = super::template_values())]
    pub template: Option<String>,
    /// With --template raw: the tokenizer adds no special tokens (transformers'
    /// `add_special_tokens=False`; by default raw is the processor's default call, which adds
    /// them: LLaVA's BOS, and for Llama 3.2 Vision a BOS before the `<|image|>` too)
    #[arg(long)]
    pub no_special_tokens: bool,
    /// Vision layer whose features feed the projector (default: the model's default layer)
    #[arg(long, allow_hyphen_values = true)]
    pub layer: Option<i64>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Print one JSON object as the last line
    #[arg(long)]
    pub json: bool,
}

impl super::OnBackend for Args {
    fn model(&self) -> &ModelArgs {
        &self.model
    }

    fn run_on<B: Backend>(self, b: &B) -> Result<()> {
        let req = GenerateRequest {
            model_dir: self.model.model_dir()?,
            family_options: self.model.family_options(),
            image: &self.image,
            prompt: &self.prompt,
            template: self.template.as_deref(),
            no_special_tokens: self.no_special_tokens,
            layer: self.layer,
            decode: &self.decode,
        };
        let a = generate(b, req)?;
        if let Some(note) = &a.note {
            eprintln!("icet: {note}");
        }
        if self.json {
            let mut obj = serde_json::json!({
                "layer": a.layer,
                "prompt_ids": a.prompt_ids,
                "token_ids": a.token_ids,
                "text": a.text,
                "finish_reason": a.finish_reason,
            });
            for (k, v) in a.settings {
                obj[k] = v;
            }
            println!("{}", serde_json::to_string(&obj)?);
        } else {
            println!("{}", a.text);
            let settings = icet_engine::settings_note(&a.settings);
            eprintln!("[layer {}{settings}, {} tokens, finish: {}]", a.layer, a.token_ids.len(), a.finish_reason);
        }
        Ok(())
    }
}
