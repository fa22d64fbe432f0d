//! `icet bench`: throughput of the engine's stages on one model and device — the vision pass that
//! captures every layer (what a sweep runs once per image), prefill, and decode at several batch
//! sizes — with the work each stage does (FLOPs from the config; weight bytes for decode), so the
//! numbers read against the device's roofline. Timings are medians of `--repeat` runs after one
//! warm-up; every timed call ends by copying a result to the host, which waits for the device.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use icet_models::backend::Backend;
use icet_models::generation::{generate, DecodeOptions, Request};
use icet_models::llava::{Llava, LlavaConfig, LoadParts};
use serde::Serialize;

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
#[command(after_help = "Stages (one table row each):
  vision   N images through every vision layer (all captured), projector on the default layer
  prefill  B prompts (image features + prompt text) up to their first token
  decode   B sequences, steady state: (time of --new-tokens tokens - prefill) / (--new-tokens - 1)
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
    /// The user prompt (wrapped in the llava-v1 template)
    #[arg(long, default_value = "Describe the image in detail.")]
    pub prompt: String,
    /// Also write the results and what produced them as JSON
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object as the last line
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub stage: &'static str,
    /// Images (vision) or sequences (prefill, decode).
    pub batch: usize,
    /// Median seconds of one call (decode: of one step).
    pub seconds: f64,
    pub throughput: f64,
    pub unit: &'static str,
    pub tflops: f64,
    /// Decode: weight bytes streamed per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_gbps: Option<f64>,
}

/// FLOPs of the LLaVA stages from the config (2 per multiply-add; norms and activations ignored).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlopModel {
    /// Per image: patch embedding, every vision layer, projector on one layer's slots.
    pub vision_per_image: f64,
    /// Per token of the language model, without attention and lm_head.
    pub text_linear_per_token: f64,
    /// Attention per (query, key) pair over all text layers.
    pub text_attention_per_pair: f64,
    /// lm_head per generated position.
    pub lm_head: f64,
    /// Language-model weight elements read per decode step (embedding table excluded unless tied).
    pub text_weight_elements: f64,
}

impl FlopModel {
    pub fn of(config: &LlavaConfig, slots: usize) -> Self {
        let v = &config.vision_config;
        let (d, inter) = (v.hidden_size as f64, v.intermediate_size as f64);
        let tokens = v.num_positions() as f64;
        let patch = (v.num_channels * v.patch_size * v.patch_size) as f64;
        let per_layer = 2.0 * tokens * (4.0 * d * d + 2.0 * d * inter) + 4.0 * tokens * tokens * d;
        let t = &config.text_config;
        let (h, ti) = (t.hidden_size as f64, t.intermediate_size as f64);
        let q = (t.num_attention_heads * t.head_dim()) as f64;
        let kv = (t.kv_heads() * t.head_dim()) as f64;
        let projector = 2.0 * slots as f64 * (d * h + h * h);
        let layer_weights = h * (q + 2.0 * kv) + q * h + 3.0 * h * ti;
        let layers = t.num_hidden_layers as f64;
        let vocab = t.vocab_size as f64;
        Self {
            vision_per_image: 2.0 * (tokens - 1.0) * patch * d + v.num_hidden_layers as f64 * per_layer + projector,
            text_linear_per_token: 2.0 * layers * layer_weights,
            text_attention_per_pair: 4.0 * layers * q,
            lm_head: 2.0 * h * vocab,
            text_weight_elements: layers * layer_weights + h * vocab,
        }
    }

    /// Prefill of sequences of `len` tokens each (causal: query i sees i + 1 keys), up to the
    /// first token's logits.
    pub fn prefill(&self, batch: usize, len: usize) -> f64 {
        let pairs = (len * (len + 1) / 2) as f64;
        batch as f64 * (len as f64 * self.text_linear_per_token + pairs * self.text_attention_per_pair + self.lm_head)
    }

    /// One decode step of `batch` sequences whose context is `context` tokens.
    pub fn decode_step(&self, batch: usize, context: usize) -> f64 {
        batch as f64 * (self.text_linear_per_token + context as f64 * self.text_attention_per_pair + self.lm_head)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median seconds of `f` over `repeat` runs after a warm-up.
fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

pub fn run(args: Args) -> Result<()> {
    let selected = args.model.backend()?;
    crate::with_backend!(selected, |b| run_on(&b, args))
}

fn run_on<B: Backend>(b: &B, mut args: Args) -> Result<()> {
    if args.repeat == 0 || args.new_tokens < 2 {
        bail!("--repeat must be at least 1 and --new-tokens at least 2");
    }
    if args.vision_batches.contains(&0) || args.batch_sizes.contains(&0) {
        bail!("batch sizes must be at least 1");
    }
    let demo = args.model.model.is_none();
    if demo {
        let d = crate::demo::materialize()?;
        eprintln!("icet: no --model given: benchmarking the embedded demo (tiny; the numbers show overheads)");
        args.model.model = Some(d.model);
        if args.image.is_none() {
            args.image = Some(d.data.parent().context("demo layout")?.join("images/checker.png"));
        }
    }
    let dir = args.model.model_dir()?.to_path_buf();
    if crate::mllama_cmd::is_mllama(&dir)? {
        bail!("{}: icet bench measures LLaVA checkpoints; Llama 3.2 Vision is not benchmarked yet", dir.display());
    }
    let Some(image) = args.image.clone() else { bail!("--image FILE is required with --model") };
    let load_start = Instant::now();
    let model: Llava<B> = args.model.load(b, LoadParts { deepest_vision_layer: None, text: true })?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let strategy = args.model.strategy(&model);
    let config = &model.config;
    let layers: Vec<usize> = (0..=config.vision_layers()).collect();
    let default_layer = icet_models::llava::resolve_layer(config.default_layer()?, config.vision_layers())?;
    let slots = config.image_slots(strategy);
    let flops = FlopModel::of(config, slots);
    let px = model.pixel_values(&image, args.model.pad_square)?;
    let mut rows = Vec::new();
    let bar = indicatif::ProgressBar::new((args.vision_batches.len() + 2 * args.batch_sizes.len()) as u64);

    for &n in &args.vision_batches {
        let pixels: Vec<B::Tensor> = (0..n).map(|_| model.upload_pixels(b, &px)).collect::<Result<_, _>>()?;
        let seconds = time(args.repeat, || {
            let capture = model.vision.capture(b, &pixels, &layers)?;
            let features = model.project_layer(b, &capture, default_layer, strategy)?;
            Ok(b.to_host(&features)?)
        })?;
        rows.push(Measurement {
            stage: "vision",
            batch: n,
            seconds,
            throughput: n as f64 / seconds,
            unit: "images/s",
            tflops: n as f64 * flops.vision_per_image / seconds / 1e12,
            weight_gbps: None,
        });
        bar.inc(1);
    }

    let text = crate::common::llava_prompts(&dir, None, &[args.prompt.as_str()])?.1.remove(0);
    let prompt_ids = model.tokenizer()?.encode_with_image(&text, slots)?;
    let capture = model.vision.capture(b, &[model.upload_pixels(b, &px)?], &[default_layer])?;
    let features = model.project_layer(b, &capture, default_layer, strategy)?;
    let llm = model.llm()?;
    let len = prompt_ids.len();
    let limit = config.text_config.max_position_embeddings;
    if len + args.new_tokens > limit {
        bail!("prompt of {len} tokens + --new-tokens {} exceeds the model's {limit} positions", args.new_tokens);
    }
    // No end-of-sequence: every sequence runs the full length, so batches stay full.
    let opts = |n| DecodeOptions {
        max_new_tokens: n,
        eos_token_ids: vec![],
        sampling: None,
        image_token_id: config.image_token_index,
    };
    let bytes_per_weight = b.element_bytes() as f64;
    for &batch in &args.batch_sizes {
        let requests: Vec<Request<B>> = (0..batch)
            .map(|i| Request { prompt_ids: prompt_ids.clone(), image_features: Some(&features), seed: i as u64 })
            .collect();
        let prefill = time(args.repeat, || Ok(generate(b, llm, &requests, &opts(1), false)?))?;
        bar.inc(1);
        rows.push(Measurement {
            stage: "prefill",
            batch,
            seconds: prefill,
            throughput: (batch * len) as f64 / prefill,
            unit: "tokens/s",
            tflops: flops.prefill(batch, len) / prefill / 1e12,
            weight_gbps: None,
        });
        let full = time(args.repeat, || Ok(generate(b, llm, &requests, &opts(args.new_tokens), false)?))?;
        bar.inc(1);
        let step = ((full - prefill) / (args.new_tokens - 1) as f64).max(f64::MIN_POSITIVE);
        let mean_context = len + args.new_tokens / 2;
        rows.push(Measurement {
            stage: "decode",
            batch,
            seconds: step,
            throughput: batch as f64 / step,
            unit: "tokens/s",
            tflops: flops.decode_step(batch, mean_context) / step / 1e12,
            weight_gbps: Some(flops.text_weight_elements * bytes_per_weight / step / 1e9),
        });
    }
    bar.finish_and_clear();

    println!(
        "icet bench: {} on {} | prompt {len} tokens ({slots} image slots), {} new tokens, median of {}",
        dir.display(),
        b.name(),
        args.new_tokens,
        args.repeat
    );
    println!(
        "{:<8} {:>6} {:>12} {:>16} {:>10} {:>12}",
        "stage", "batch", "time", "throughput", "TFLOP/s", "weights GB/s"
    );
    for r in &rows {
        let gbps = r.weight_gbps.map(|g| format!("{g:.1}")).unwrap_or_default();
        println!(
            "{:<8} {:>6} {:>9.3} ms {:>9.1} {:<6} {:>10.4} {:>12}",
            r.stage,
            r.batch,
            r.seconds * 1e3,
            r.throughput,
            r.unit,
            r.tflops,
            gbps
        );
    }
    let report = serde_json::json!({
        "engine": "icet",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "model": dir,
        "demo": demo,
        "backend": b.name(),
        "element_bytes": b.element_bytes(),
        "load_seconds": load_seconds,
        "prompt_tokens": len,
        "image_slots": slots,
        "vision_layers_captured": layers.len(),
        "new_tokens": args.new_tokens,
        "repeat": args.repeat,
        "flops": {
            "vision_per_image": flops.vision_per_image,
            "text_linear_per_token": flops.text_linear_per_token,
            "text_attention_per_pair": flops.text_attention_per_pair,
            "lm_head": flops.lm_head,
            "text_weight_elements": flops.text_weight_elements,
        },
        "measurements": rows,
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("icet: results in {}", out.display());
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLaVA-1.5-7B's published shapes give the FLOP counts worked out by hand here.
    #[test]
    fn flop_model_matches_hand_counts_for_llava_7b() {
        let config: LlavaConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llava",
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
            "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                            "num_attention_heads": 32, "vocab_size": 32064},
        }))
        .unwrap();
        let f = FlopModel::of(&config, 576);
        // Vision: 577 tokens; per layer 2*577*(4*1024² + 2*1024*4096) + 4*577²*1024.
        let layer = 2.0 * 577.0 * (4.0 * 1048576.0 + 8388608.0) + 4.0 * 332929.0 * 1024.0;
        let patch = 2.0 * 576.0 * 588.0 * 1024.0;
        let projector = 2.0 * 576.0 * (1024.0 * 4096.0 + 4096.0 * 4096.0);
        assert!((f.vision_per_image - (patch + 24.0 * layer + projector)).abs() < 1.0);
        // The familiar 2 × parameters × tokens of ViT-L/14-336's layers (303 M weights, 577
        // tokens: 0.35 TFLOP), plus attention and the projector: 0.41 TFLOP per image.
        let matmuls: f64 = 2.0 * 24.0 * (4.0 * 1048576.0 + 8388608.0) * 577.0;
        assert!((matmuls / 1e12 - 0.349).abs() < 0.001, "{matmuls}");
        assert!((f.vision_per_image / 1e12 - 0.406).abs() < 0.001, "{}", f.vision_per_image);
        // Text: 2 × 6.48 G linear weights per token (Llama-2-7B without embeddings and head).
        let per_layer = 4096.0 * (3.0 * 4096.0) + 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0;
        assert_eq!(f.text_linear_per_token, 2.0 * 32.0 * per_layer);
        assert!((f.text_linear_per_token / 2.0 / 1e9 - 6.48).abs() < 0.01);
        assert_eq!(f.lm_head, 2.0 * 4096.0 * 32064.0);
        assert_eq!(f.text_attention_per_pair, 4.0 * 32.0 * 4096.0);
        // One sequence of 3 tokens: 3 linear passes, 1+2+3 attention pairs, one head.
        let p = f.prefill(1, 3);
        assert_eq!(p, 3.0 * f.text_linear_per_token + 6.0 * f.text_attention_per_pair + f.lm_head);
        assert_eq!(
            f.decode_step(2, 10),
            2.0 * (f.text_linear_per_token + 10.0 * f.text_attention_per_pair + f.lm_head)
        );
    }

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
