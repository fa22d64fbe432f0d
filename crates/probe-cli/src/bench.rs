//! `icet bench`: throughput of the engine's stages on one model and device — a sweep's per-image
//! vision work (one pass keeping every layer, then the projector for each layer), prefill, and
//! decode at several batch sizes — with the work each stage does (FLOPs from the config; weight
//! bytes for decode), so the numbers read against the device's roofline. LLaVA and Llama 3.2
//! Vision. Timings are medians of `--repeat` runs after one warm-up; every timed call ends by
//! copying a result to the host, which waits for the device.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use icet_models::backend::Backend;
use icet_models::generation::{run_stream, DecodeOptions, ImageFeatures, Request, Stream, StreamModel, StreamSeq};
use icet_models::llava::{Llava, LlavaConfig, LoadParts};
use icet_models::mllama::{ExitRule, Mllama, MllamaConfig, MllamaLoadParts};
use serde::Serialize;

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
#[command(after_help = "Stages (one table row each):
  vision   N images: what a sweep over every layer does per image — one vision pass keeping every
           layer, then the projector for each (Llama 3.2 Vision: the global stage too, clamp rule)
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

/// The work of each stage, counted from the config (2 FLOPs per multiply-add; norms, activations
/// and gathers ignored; padded rows counted where the engine computes them).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FlopModel {
    /// Per image: a sweep over every layer (vision pass keeping them all, projector per layer;
    /// Mllama: the global stage per layer too, as the clamp rule runs it).
    pub vision_per_image: f64,
    /// Per token of the language model, without attention and lm_head.
    pub text_linear_per_token: f64,
    /// Self-attention per (query, key) pair over all self-attention layers.
    pub text_attention_per_pair: f64,
    /// Mllama: cross-attention of one token to its image's real-tile rows, all cross layers.
    pub cross_attention_per_token: f64,
    /// Mllama: the cross-attention keys/values of one image's states, all cross layers.
    pub cross_kv_per_image: f64,
    /// lm_head per generated position.
    pub lm_head: f64,
    /// Language-model weight elements read per decode step (embedding table excluded unless tied).
    pub text_weight_elements: f64,
}

/// One transformer layer over `rows` tokens of width `d`, MLP width `inter`, full attention.
fn encoder_layer(rows: f64, d: f64, inter: f64) -> f64 {
    2.0 * rows * (4.0 * d * d + 2.0 * d * inter) + 4.0 * rows * rows * d
}

impl FlopModel {
    pub fn llava(config: &LlavaConfig, slots: usize) -> Self {
        let v = &config.vision_config;
        let (d, inter) = (v.hidden_size as f64, v.intermediate_size as f64);
        let tokens = v.num_positions() as f64;
        let patch = (v.num_channels * v.patch_size * v.patch_size) as f64;
        let t = &config.text_config;
        let h = t.hidden_size as f64;
        let projector = 2.0 * slots as f64 * (d * h + h * h);
        let layers = v.num_hidden_layers as f64;
        let mut m = Self::text(t, &[]);
        m.vision_per_image =
            2.0 * (tokens - 1.0) * patch * d + layers * encoder_layer(tokens, d, inter) + (layers + 1.0) * projector;
        m
    }

    /// `real_rows`: rows of real tiles an image's tokens attend to (a typical image).
    pub fn mllama(config: &MllamaConfig, real_rows: usize) -> Self {
        let v = &config.vision_config;
        let (d, inter) = (v.hidden_size as f64, v.intermediate_size as f64);
        let tiles = v.max_num_tiles as f64;
        let padded = tiles * v.padded_tokens_per_tile() as f64;
        let unpadded = tiles * v.tokens_per_tile() as f64;
        let patch =
            2.0 * tiles * (v.grid() * v.grid()) as f64 * (v.num_channels * v.patch_size * v.patch_size) as f64 * d;
        let t = &config.text_config;
        let h = t.llama.hidden_size as f64;
        let exits = (v.num_hidden_layers + 1) as f64;
        let global = v.num_global_layers as f64 * encoder_layer(padded, d, inter);
        let projector = 2.0 * unpadded * v.vision_output_dim as f64 * h;
        let mut m = Self::text(&t.llama, &t.cross_attention_layers);
        m.vision_per_image =
            patch + v.num_hidden_layers as f64 * encoder_layer(padded, d, inter) + exits * (global + projector);
        let cross = t.cross_attention_layers.len() as f64;
        let (q, kv) = (
            (t.llama.num_attention_heads * t.llama.head_dim()) as f64,
            (t.llama.kv_heads() * t.llama.head_dim()) as f64,
        );
        m.cross_attention_per_token = cross * 4.0 * q * real_rows as f64;
        m.cross_kv_per_image = cross * 2.0 * unpadded * h * 2.0 * kv;
        m
    }

    /// The language model's per-token work; layers in `cross_layers` are Mllama cross-attention
    /// layers (their keys/values come from the image, counted apart).
    fn text(t: &icet_models::llama::LlamaConfig, cross_layers: &[usize]) -> Self {
        let (h, ti) = (t.hidden_size as f64, t.intermediate_size as f64);
        let q = (t.num_attention_heads * t.head_dim()) as f64;
        let kv = (t.kv_heads() * t.head_dim()) as f64;
        let mlp = 3.0 * h * ti;
        let self_layer = h * (q + 2.0 * kv) + q * h + mlp;
        let cross_layer = h * q + q * h + mlp;
        let cross = cross_layers.len() as f64;
        let selfs = t.num_hidden_layers as f64 - cross;
        let weights = selfs * self_layer + cross * cross_layer;
        let vocab = t.vocab_size as f64;
        Self {
            vision_per_image: 0.0,
            text_linear_per_token: 2.0 * weights,
            text_attention_per_pair: 4.0 * selfs * q,
            cross_attention_per_token: 0.0,
            cross_kv_per_image: 0.0,
            lm_head: 2.0 * h * vocab,
            text_weight_elements: weights + h * vocab,
        }
    }

    /// Prefill of `batch` sequences of `len` tokens each reading one image (causal: query i sees
    /// i + 1 keys), up to the first token's logits.
    pub fn prefill(&self, batch: usize, len: usize) -> f64 {
        let pairs = (len * (len + 1) / 2) as f64;
        let per_token = self.text_linear_per_token + self.cross_attention_per_token;
        batch as f64 * (len as f64 * per_token + pairs * self.text_attention_per_pair + self.lm_head)
            + self.cross_kv_per_image
    }

    /// One decode step of `batch` sequences whose context is `context` tokens.
    pub fn decode_step(&self, batch: usize, context: usize) -> f64 {
        let per_token = self.text_linear_per_token + self.cross_attention_per_token + self.lm_head;
        batch as f64 * (per_token + context as f64 * self.text_attention_per_pair)
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

/// A [`StreamModel`] whose steps are timed: a step runs from one `step` call to the next (the
/// scheduler's token choice in between copies the tokens to the host, which waits for the
/// device), so decode steps are measured directly rather than as a difference of totals.
struct Timed<M> {
    inner: M,
    /// Start of the previous step, and whether every sequence in it was decoding.
    last: Option<(Instant, bool)>,
    decode_steps: Vec<f64>,
}

impl<B: Backend, M: StreamModel<B>> StreamModel<B> for Timed<M> {
    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> icet_models::Result<B::KvCache> {
        self.inner.new_cache(b, slots, capacity)
    }
    fn admit(&mut self, b: &B, slot: usize, request: &Request<B>) -> icet_models::Result<()> {
        self.inner.admit(b, slot, request)
    }
    fn release(&mut self, slot: usize) {
        self.inner.release(slot)
    }
    fn step(&mut self, b: &B, seqs: &[StreamSeq<B>], cache: &mut B::KvCache) -> icet_models::Result<B::Tensor> {
        let now = Instant::now();
        if let Some((start, true)) = self.last {
            self.decode_steps.push((now - start).as_secs_f64());
        }
        self.last = Some((now, seqs.iter().all(|s| !s.fresh)));
        self.inner.step(b, seqs, cache)
    }
}

/// What a family provides to the measurements: its vision work for `n` images (median seconds),
/// and `batch` copies of one prompt generated for `new_tokens` tokens, returning the durations of
/// the steps in which every sequence was decoding.
trait Subject<B: Backend> {
    fn vision(&self, b: &B, images: usize) -> Result<f64>;
    fn run(&self, b: &B, batch: usize, new_tokens: usize) -> Result<Vec<f64>>;
    fn prompt_tokens(&self) -> usize;
    fn max_positions(&self) -> usize;
}

/// Runs `requests` (all at once: as many slots as requests) through `model`, timing its steps.
fn timed_run<B: Backend, M: StreamModel<B>>(
    b: &B,
    model: M,
    requests: Vec<Request<B>>,
    opts: &DecodeOptions,
    prompt_len: usize,
) -> Result<Vec<f64>> {
    let stream = Stream { slots: requests.len(), capacity: prompt_len + opts.max_new_tokens, keep_first_logits: false };
    let mut timed = Timed { inner: model, last: None, decode_steps: vec![] };
    run_stream(b, &mut timed, requests.into_iter().map(Ok), opts, stream, |_, _| Ok(()))?;
    Ok(timed.decode_steps)
}

struct LlavaSubject<'a, B: Backend> {
    model: &'a Llava<B>,
    px: icet_models::clip::processor::PixelValues,
    strategy: icet_models::llava::FeatureStrategy,
    prompt_ids: Vec<u32>,
    features: std::sync::Arc<ImageFeatures<B>>,
    repeat: usize,
}

impl<B: Backend> Subject<B> for LlavaSubject<'_, B> {
    fn vision(&self, b: &B, n: usize) -> Result<f64> {
        let layers: Vec<usize> = (0..=self.model.config.vision_layers()).collect();
        let pixels: Vec<B::Tensor> = (0..n).map(|_| self.model.upload_pixels(b, &self.px)).collect::<Result<_, _>>()?;
        time(self.repeat, || {
            let capture = self.model.vision.capture(b, &pixels, &layers)?;
            let mut last = None;
            for &l in &layers {
                last = Some(self.model.project_layer(b, &capture, l, self.strategy)?);
            }
            Ok(b.to_host(&last.expect("layer 0 at least"))?)
        })
    }
    fn run(&self, b: &B, batch: usize, new_tokens: usize) -> Result<Vec<f64>> {
        let requests: Vec<Request<B>> =
            (0..batch).map(|i| Request::with_image(self.prompt_ids.clone(), self.features.clone(), i as u64)).collect();
        let opts = no_eos(new_tokens);
        timed_run(b, self.model.stream()?, requests, &opts, self.prompt_ids.len())
    }
    fn prompt_tokens(&self) -> usize {
        self.prompt_ids.len()
    }
    fn max_positions(&self) -> usize {
        self.model.config.text_config.max_position_embeddings
    }
}

struct MllamaSubject<'a, B: Backend> {
    model: &'a Mllama<B>,
    px: icet_models::mllama::TiledPixels,
    prompt_ids: Vec<u32>,
    states: std::sync::Arc<ImageFeatures<B>>,
    repeat: usize,
}

impl<B: Backend> Subject<B> for MllamaSubject<'_, B> {
    fn vision(&self, b: &B, n: usize) -> Result<f64> {
        // Mllama's tower takes one image per pass: n images are n passes.
        let exits: Vec<(usize, ExitRule)> =
            (0..=self.model.config.vision_layers()).map(|l| (l, ExitRule::Clamp)).collect();
        time(self.repeat, || {
            let mut last = None;
            for _ in 0..n {
                let pass = self.model.local_pass(b, &self.px, &exits, &[])?;
                for &(l, rule) in &exits {
                    last = Some(self.model.project(b, &pass, l, rule)?);
                }
            }
            Ok(b.to_host(&last.expect("one image at least"))?)
        })
    }
    fn run(&self, b: &B, batch: usize, new_tokens: usize) -> Result<Vec<f64>> {
        let requests: Vec<Request<B>> =
            (0..batch).map(|i| Request::with_image(self.prompt_ids.clone(), self.states.clone(), i as u64)).collect();
        let opts = no_eos(new_tokens);
        let model = self.model.stream(batch)?;
        timed_run(b, model, requests, &opts, self.prompt_ids.len())
    }
    fn prompt_tokens(&self) -> usize {
        self.prompt_ids.len()
    }
    fn max_positions(&self) -> usize {
        self.model.config.text_config.llama.max_position_embeddings
    }
}

/// Greedy, with no end-of-sequence: every sequence runs the full length, so batches stay full.
fn no_eos(max_new_tokens: usize) -> DecodeOptions {
    DecodeOptions::greedy(max_new_tokens, vec![])
}

fn run_on<B: Backend>(b: &B, mut args: Args) -> Result<()> {
    if args.repeat == 0 || args.new_tokens < 3 {
        bail!("--repeat must be at least 1 and --new-tokens at least 3 (decode is timed from the third token on)");
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
    let Some(image) = args.image.clone() else { bail!("--image FILE is required with --model") };
    let load_start = Instant::now();
    if crate::mllama_cmd::is_mllama(&dir)? {
        let model = Mllama::load(&dir, b, MllamaLoadParts { deepest_vision_layer: None, text: true })?;
        let load_seconds = load_start.elapsed().as_secs_f64();
        let px = model.pixel_values(&image)?;
        let last = model.config.vision_layers();
        let pass = model.local_pass(b, &px, &[(last, ExitRule::Clamp)], &[])?;
        let states = model.image_features(b, &pass, last, ExitRule::Clamp)?;
        let real_rows = states.real_rows;
        drop(pass);
        let text = crate::mllama_cmd::prompts(&dir, None, &[args.prompt.as_str()])?.1.remove(0);
        let prompt_ids = model.prompt_ids(&text)?;
        let flops = FlopModel::mllama(&model.config, real_rows);
        let states = std::sync::Arc::new(states);
        let subject = MllamaSubject { model: &model, px, prompt_ids, states, repeat: args.repeat };
        let facts = serde_json::json!({"family": "mllama", "exit_rule": "clamp", "image_rows": real_rows,
                                       "vision_layers_captured": last + 1, "load_seconds": load_seconds});
        return measure(b, &args, &dir, demo, &subject, flops, facts);
    }
    let model: Llava<B> = args.model.load(b, LoadParts { deepest_vision_layer: None, text: true })?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let strategy = args.model.strategy(&model);
    let config = &model.config;
    let default_layer = icet_models::layers::resolve_layer(config.default_layer()?, config.vision_layers())?;
    let slots = config.image_slots(strategy);
    let px = model.pixel_values(&image, args.model.pad_square)?;
    let text = crate::common::llava_prompts(&dir, None, &[args.prompt.as_str()])?.1.remove(0);
    let prompt_ids = model.tokenizer()?.encode_with_image(&text, slots)?;
    let capture = model.vision.capture(b, &[model.upload_pixels(b, &px)?], &[default_layer])?;
    let features =
        std::sync::Arc::new(ImageFeatures::all_real(b, model.project_layer(b, &capture, default_layer, strategy)?));
    drop(capture);
    let flops = FlopModel::llava(config, slots);
    let facts = serde_json::json!({"family": "llava", "image_slots": slots,
                                   "vision_layers_captured": config.vision_layers() + 1, "load_seconds": load_seconds});
    let subject = LlavaSubject { model: &model, px, strategy, prompt_ids, features, repeat: args.repeat };
    measure(b, &args, &dir, demo, &subject, flops, facts)
}

/// Runs every stage on `subject`, prints the table and writes the JSON report.
fn measure<B: Backend>(
    b: &B,
    args: &Args,
    dir: &std::path::Path,
    demo: bool,
    subject: &impl Subject<B>,
    flops: FlopModel,
    facts: serde_json::Value,
) -> Result<()> {
    let len = subject.prompt_tokens();
    let limit = subject.max_positions();
    if len + args.new_tokens > limit {
        bail!("prompt of {len} tokens + --new-tokens {} exceeds the model's {limit} positions", args.new_tokens);
    }
    let mut rows = Vec::new();
    let bar = indicatif::ProgressBar::new((args.vision_batches.len() + 2 * args.batch_sizes.len()) as u64);
    for &n in &args.vision_batches {
        let seconds = subject.vision(b, n)?;
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
    let bytes_per_weight = b.element_bytes() as f64;
    for &batch in &args.batch_sizes {
        let prefill = time(args.repeat, || subject.run(b, batch, 1))?;
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
        // Every repeat's decode-only steps together (the warm-up run's too: each step is timed).
        let mut steps = Vec::new();
        for _ in 0..=args.repeat {
            steps.extend(subject.run(b, batch, args.new_tokens)?);
        }
        bar.inc(1);
        if steps.is_empty() {
            bail!("no decode step was timed; raise --new-tokens (at least 3)");
        }
        let step = median(steps);
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
        "icet bench: {} on {} | prompt {len} tokens, {} new tokens, median of {}",
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
    let mut report = serde_json::json!({
        "engine": "icet",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "model": dir,
        "demo": demo,
        "backend": b.name(),
        "element_bytes": b.element_bytes(),
        "prompt_tokens": len,
        "new_tokens": args.new_tokens,
        "repeat": args.repeat,
        "flops": flops,
        "measurements": rows,
    });
    if let (Some(r), Some(f)) = (report.as_object_mut(), facts.as_object()) {
        r.extend(f.clone());
    }
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
        let f = FlopModel::llava(&config, 576);
        // Vision: 577 tokens; per layer 2*577*(4*1024² + 2*1024*4096) + 4*577²*1024.
        let layer = 2.0 * 577.0 * (4.0 * 1048576.0 + 8388608.0) + 4.0 * 332929.0 * 1024.0;
        let patch = 2.0 * 576.0 * 588.0 * 1024.0;
        let projector = 2.0 * 576.0 * (1024.0 * 4096.0 + 4096.0 * 4096.0);
        // A sweep projects every captured layer, 0..=24.
        assert!((f.vision_per_image - (patch + 24.0 * layer + 25.0 * projector)).abs() < 1.0);
        // The familiar 2 × parameters × tokens of ViT-L/14-336's layers (303 M weights, 577
        // tokens: 0.35 TFLOP), plus attention (0.03) and 25 projections (25 × 0.024 TFLOP).
        let matmuls: f64 = 2.0 * 24.0 * (4.0 * 1048576.0 + 8388608.0) * 577.0;
        assert!((matmuls / 1e12 - 0.349).abs() < 0.001, "{matmuls}");
        assert!((f.vision_per_image / 1e12 - 0.986).abs() < 0.001, "{}", f.vision_per_image);
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
        assert_eq!((f.cross_attention_per_token, f.cross_kv_per_image), (0.0, 0.0));
    }

    /// Llama-3.2-11B-Vision's shapes, counted by hand.
    #[test]
    fn flop_model_matches_hand_counts_for_llama_32_11b_vision() {
        let config: MllamaConfig = serde_json::from_value(serde_json::json!({
            "model_type": "mllama",
            "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                              "num_global_layers": 8, "attention_heads": 16, "image_size": 560, "patch_size": 14,
                              "max_num_tiles": 4, "vision_output_dim": 7680,
                              "intermediate_layers_indices": [3, 7, 15, 23, 30]},
            "text_config": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 40,
                            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                            "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38]},
        }))
        .unwrap();
        let f = FlopModel::mllama(&config, 4 * 1601);
        // Text: 32 self layers (q 4096², k/v 4096·1024 each, o 4096², MLP 3·4096·14336) and 8 cross
        // layers (q, o, MLP; their k/v read the image).
        let mlp = 3.0 * 4096.0 * 14336.0;
        let self_layer = 4096.0 * (4096.0 + 2048.0) + 4096.0 * 4096.0 + mlp;
        let cross_layer = 2.0 * 4096.0 * 4096.0 + mlp;
        assert_eq!(f.text_linear_per_token, 2.0 * (32.0 * self_layer + 8.0 * cross_layer));
        // 9.18 G weights streamed per decode step: the 9.8 G text model less its embedding table
        // and the cross layers' k/v projections (which read the image, once).
        assert_eq!(f.text_weight_elements, 32.0 * self_layer + 8.0 * cross_layer + 4096.0 * 128256.0);
        assert!((f.text_weight_elements / 1e9 - 9.18).abs() < 0.01);
        assert_eq!(f.text_attention_per_pair, 4.0 * 32.0 * 4096.0);
        assert_eq!(f.cross_attention_per_token, 8.0 * 4.0 * 4096.0 * 6404.0);
        assert_eq!(f.cross_kv_per_image, 8.0 * 2.0 * 6404.0 * 4096.0 * 2.0 * 1024.0);
        // Vision: 4 tiles × 1608 padded rows through 32 local layers, then per exit (33) the 8
        // global layers and the projector (4 × 1601 rows × 7680 → 4096).
        let rows = 4.0 * 1608.0;
        let layer = 2.0 * rows * (4.0 * 1280.0 * 1280.0 + 2.0 * 1280.0 * 5120.0) + 4.0 * rows * rows * 1280.0;
        let patch = 2.0 * 4.0 * 1600.0 * 588.0 * 1280.0;
        let projector = 2.0 * 6404.0 * 7680.0 * 4096.0;
        let want = patch + 32.0 * layer + 33.0 * (8.0 * layer + projector);
        assert!((f.vision_per_image - want).abs() / want < 1e-12);
        // Prefill reads the image's keys/values once for the whole batch.
        let one = f.prefill(1, 10);
        assert_eq!(f.prefill(2, 10) - f.cross_kv_per_image, 2.0 * (one - f.cross_kv_per_image));
    }

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
