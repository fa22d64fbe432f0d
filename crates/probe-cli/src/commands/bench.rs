//! `icet bench`.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use icet_engine::bench::{bench, table, BenchRequest};
use icet_models::backend::Backend;

use super::ModelArgs;

#[derive(ClapArgs, Debug)]
#[command(after_help = "Stages (one table row each):
  vision   N images: what a sweep over every layer does per image — one vision pass keeping every
           layer, then the projector for each (Llama 3.2 Vision: the global stage too, clamp rule;
           LLaVA-NeXT: every tile of the image, so the work and the prompt grow with its tiling)
  prefill  B prompts (image features + prompt text) up to their first token
  decode   B sequences, steady state: the median step once every sequence is decoding
Achieved TFLOP/s counts matrix products and attention from the config (2 FLOPs per multiply-add);
decode also reports the weight bytes it streams per step as GB/s, its usual bound. Compare with
the device's roofline (H100 SXM: ~790 TFLOP/s bf16 GEMM measured, ~3 TB/s copy).

Without --model the embedded demo runs (tiny: the numbers show overheads, not a real model).
Examples:
  icet bench --model llava-1.5-7b-hf --device cuda --dtype bf16 --batch-sizes 1,8,32,128
  icet bench --model llava-1.5-7b-hf --device cpu --batch-sizes 1 --new-tokens 8 --out bench-cpu.json")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image to use (default: the demo's first image)
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Images per vision pass (each a copy of --image), comma-separated
    #[arg(long, value_name = "N,...", default_value = "1,4", value_delimiter = ',')]
    pub vision_batches: Vec<usize>,
    /// Sequences per prefill/decode measurement, comma-separated
    #[arg(long, value_name = "B,...", default_value = "1,8,32", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Tokens generated per sequence in the decode measurement (no early stop at EOS)
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Timed runs per measurement (the median is reported), after one warm-up
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// The user prompt (wrapped in the family's default template)
    #[arg(long, default_value = "Describe the image in detail.")]
    pub prompt: String,
    /// Also write the results and what produced them as JSON
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object as the last line
    #[arg(long)]
    pub json: bool,
}

impl super::OnBackend for Args {
    fn model(&self) -> &ModelArgs {
        &self.model
    }

    fn run_on<B: Backend>(self, b: &B) -> Result<()> {
        let mut req = BenchRequest {
            model_dir: self.model.model.clone().unwrap_or_default(),
            family_options: self.model.family_options(),
            image: self.image.clone().unwrap_or_default(),
            vision_batches: self.vision_batches.clone(),
            batch_sizes: self.batch_sizes.clone(),
            new_tokens: self.new_tokens,
            repeat: self.repeat,
            prompt: self.prompt.clone(),
            demo: self.model.model.is_none(),
        };
        req.check()?;
        if req.demo {
            let d = icet_engine::demo::materialize()?;
            eprintln!("icet: no --model given: benchmarking the embedded demo (tiny; the numbers show overheads)");
            req.model_dir = d.model;
            if self.image.is_none() {
                req.image = d.data.parent().context("demo layout")?.join("images/checker.png");
            }
        } else if self.image.is_none() {
            bail!("--image FILE is required with --model");
        }
        let (rows, report) = bench(b, &req)?;
        println!(
            "icet bench: {} on {} | prompt {} tokens, {} new tokens, median of {}",
            req.model_dir.display(),
            b.name(),
            report["prompt_tokens"],
            self.new_tokens,
            self.repeat
        );
        print!("{}", table(&rows));
        if let Some(out) = &self.out {
            std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("icet: results in {}", out.display());
        }
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        Ok(())
    }
}
