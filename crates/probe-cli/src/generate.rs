//! `icet generate`: one answer for one (image, prompt, layer).
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use icet_models::backend::{Backend, SamplingParams};
use icet_models::generation::{DecodeOptions, ImageFeatures, Request};
use icet_models::layers::resolve_layer;
use icet_models::llava::{LlavaConfig, LoadParts};

use crate::common::{ModelArgs, TemplateArg};

/// Decoding options shared by `generate` and `sweep`.
#[derive(ClapArgs, Clone, Debug)]
pub struct DecodeArgs {
    /// New tokens at most per answer
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding, as third-party reproductions use
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Seed of sampled decoding (per answer, derived from this and the answer's id and layer)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DecodeArgs {
    pub fn options(&self, eos_token_ids: Vec<u32>) -> Result<DecodeOptions> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p {} must be in (0, 1]", self.top_p);
        }
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            bail!("--temperature {} must be >= 0", self.temperature);
        }
        let sampling =
            (self.temperature > 0.0).then_some(SamplingParams { temperature: self.temperature, top_p: self.top_p });
        Ok(DecodeOptions { max_new_tokens: self.max_new_tokens, eos_token_ids, sampling })
    }
}

#[derive(ClapArgs, Debug)]
#[command(after_help = "With --json the last stdout line is one object:
  {\"layer\": l, \"prompt_ids\": [...], \"token_ids\": [...], \"text\": \"...\", \"finish_reason\": \"eos\"|\"length\"}
prompt_ids are the ids fed to the language model after image-token expansion; token_ids the
generated ids (end-of-sequence included when produced).

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
    /// Conversation template [default: llava-v1 for LLaVA, llama3 for Llama 3.2 Vision]
    #[arg(long, value_enum)]
    pub template: Option<TemplateArg>,
    /// Vision layer whose features feed the projector (default: the config's vision_feature_layer)
    #[arg(long, allow_hyphen_values = true)]
    pub layer: Option<i64>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Print one JSON object as the last line
    #[arg(long)]
    pub json: bool,
    /// Llama 3.2 Vision only: how ICET-l fills the projector input (global slot + taps)
    #[arg(long, value_enum, default_value_t = crate::mllama_cmd::ExitRuleArg::Clamp)]
    pub exit_rule: crate::mllama_cmd::ExitRuleArg,
}

pub fn run(args: Args) -> Result<()> {
    let selected = args.model.backend()?;
    crate::with_backend!(selected, |b| run_on(&b, args))
}

fn run_on<B: Backend>(b: &B, args: Args) -> Result<()> {
    let dir = args.model.model_dir()?;
    if crate::mllama_cmd::is_mllama(dir)? {
        return crate::mllama_cmd::generate(b, &args, args.exit_rule);
    }
    let config = LlavaConfig::from_dir(dir)?;
    let layer = resolve_layer(args.layer.unwrap_or(config.default_layer()?), config.vision_layers())?;
    let model = args.model.load(b, LoadParts { deepest_vision_layer: Some(layer), text: true })?;
    let strategy = args.model.strategy(&model);
    let text = crate::common::llava_prompts(dir, args.template, &[args.prompt.as_str()])?.1.remove(0);
    let tokenizer = model.tokenizer()?;
    let prompt_ids = tokenizer.encode_with_image(&text, model.config.image_slots(strategy))?;
    let px = model.pixel_values(&args.image, args.model.pad_square)?;
    let capture = model.vision.capture(b, &[model.upload_pixels(b, &px)?], &[layer])?;
    let features = model.project_layer(b, &capture, layer, strategy)?;
    let opts = args.decode.options(model.generation.eos_token_ids.clone())?;
    let features = std::sync::Arc::new(ImageFeatures::all_real(b, features));
    let request = Request::with_image(prompt_ids.clone(), features, args.decode.seed);
    let out = model.generate(b, &[request], &opts, false)?.remove(0);
    let text = tokenizer.decode(&out.token_ids)?;
    if args.json {
        let obj = serde_json::json!({
            "layer": layer,
            "prompt_ids": prompt_ids,
            "token_ids": out.token_ids,
            "text": text,
            "finish_reason": out.finish_reason.as_str(),
        });
        println!("{}", serde_json::to_string(&obj)?);
    } else {
        println!("{text}");
        eprintln!("[layer {layer}, {} tokens, finish: {}]", out.token_ids.len(), out.finish_reason.as_str());
    }
    Ok(())
}
