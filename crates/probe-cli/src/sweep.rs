//! `icet sweep`: every (prompt, image) of a data file through every requested vision layer.
//! The vision tower runs once per image for all layers; answers are generated in batches and
//! appended to `responses.jsonl` as they are produced, so an interrupted run resumes where it
//! stopped.
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use icet_models::backend::Backend;
use icet_models::generation::{run_stream, ImageFeatures, Request, Stream};
use icet_models::layers::{parse_layers, resolve_layer};
use icet_models::llava::{LlavaConfig, LoadParts};
use indicatif::{ProgressBar, ProgressStyle};

use crate::common::{ModelArgs, TemplateArg};
use crate::data::{self, DataRow};
use crate::generate::DecodeArgs;
use crate::refusal::{is_refusal, REFUSAL_PHRASES};
use crate::summary::{summarize, ResponseRow};

#[derive(ClapArgs, Debug)]
#[command(after_help = "Without --model and --data, runs the embedded demo (a tiny random-weight LLaVA: its text is
gibberish by construction) over all its layers.

Data: JSONL, or CSV with a header, with fields `id` (optional), `prompt`, `image` (path relative
to the data file). Example row: {\"id\": \"rt-0001\", \"prompt\": \"...\", \"image\": \"images/0001.jpg\"}
Also JailBreakV-28K (incl. mini), RedTeam-2K and AdvBench CSVs, detected from their headers
(--data-format); prompt-only data is paired with --images DIR (--pairing random|cross).
With --judge, the answers are scored as by `icet score` (scores.jsonl) once generated.

Writes into --out:
  responses.jsonl   one row per (item, layer), appended as produced (id, layer, prompt, image,
                    response, token_ids, finish_reason, refusal)
  summary.json/.csv per-layer n, refusals, ASR, mean tokens; Early/Middle/Late/Average rows
  asr_by_layer.svg  the per-layer plot
  manifest.json     model, arguments, engine version, seed
Rerunning the same command resumes: finished (id, layer) pairs are skipped.

Example: icet sweep --model llava-1.5-7b-hf --data redteam.jsonl --layers all --out runs/rt-llava")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts and images (JSONL or CSV)
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Layers: `all` (0..=L), `a..b` (inclusive), or a list such as `3,7,-2`
    #[arg(long, value_name = "SPEC", default_value = "all", allow_hyphen_values = true)]
    pub layers: String,
    /// Output folder (default for the demo: icet-runs/demo-<time>)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Conversation template [default: llava-v1 for LLaVA, llama3 for Llama 3.2 Vision]
    #[arg(long, value_enum)]
    pub template: Option<TemplateArg>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Sequences in flight at once (continuous batching: a finished answer's slot is refilled at
    /// once), or `auto`: as many as the free device memory holds (KV cache and prefill estimated
    /// from the config; at most 256), said on stderr
    #[arg(long, default_value = "32", value_parser = parse_batch_size)]
    pub batch_size: BatchSize,
    #[command(flatten)]
    pub data_opts: data::DataArgs,
    /// Judges to score the answers with once generated (as `icet score`; see `icet score --help`)
    #[command(flatten)]
    pub judges: crate::score::JudgeArgs,
    /// Llama 3.2 Vision only: how ICET-l fills the projector input (global slot + taps)
    #[arg(long, value_enum, default_value_t = crate::mllama_cmd::ExitRuleArg::Clamp)]
    pub exit_rule: crate::mllama_cmd::ExitRuleArg,
}

/// FNV-1a over the answer's identity, so a sampled answer does not depend on batch order.
pub(crate) fn answer_seed(seed: u64, id: &str, layer: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in id.bytes().chain(layer.to_le_bytes()) {
        h = (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn run(args: Args) -> Result<()> {
    let selected = args.model.backend()?;
    crate::with_backend!(selected, |b| run_on(&b, args))
}

fn run_on<B: Backend>(b: &B, mut args: Args) -> Result<()> {
    let demo = args.model.model.is_none() && args.data.is_none();
    if demo {
        let d = crate::demo::materialize()?;
        eprintln!(
            "icet: no --model/--data given: running the embedded demo (random weights, gibberish text by design)"
        );
        args.model.model = Some(d.model);
        args.data = Some(d.data);
        if args.decode.max_new_tokens == 256 {
            args.decode.max_new_tokens = 24;
        }
    }
    let data_path = args.data.clone().context("--data FILE is required with --model")?;
    let model_dir = args.model.model_dir()?.to_path_buf();
    let out = match (&args.out, demo) {
        (Some(o), _) => o.clone(),
        (None, true) => {
            let t =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            PathBuf::from(format!("icet-runs/demo-{t}"))
        }
        (None, false) => bail!("--out DIR is required"),
    };
    // Everything that can be wrong with the inputs is found before the model loads.
    let rows = data::load_with(&data_path, &args.data_opts)?;
    let judge_specs = crate::score::preflight(&args.judges)?;
    let mllama = crate::mllama_cmd::is_mllama(&model_dir)?;
    let (num_layers, default_layer, template_name, texts) = if mllama {
        let (n, default, name, texts) = crate::mllama_cmd::sweep_inputs(&model_dir, args.template, &rows)?;
        (n, default, name, texts)
    } else {
        let config = LlavaConfig::from_dir(&model_dir)?;
        let num_layers = config.vision_layers();
        let default_layer = resolve_layer(config.default_layer()?, num_layers)?;
        let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
        let (template, texts) = crate::common::llava_prompts(&model_dir, args.template, &prompts)?;
        (num_layers, default_layer, template, texts)
    };
    let layers = parse_layers(&args.layers, num_layers)?;

    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let settings = serde_json::json!({
        "model": std::fs::canonicalize(&model_dir).unwrap_or(model_dir.clone()),
        "data": std::fs::canonicalize(&data_path).unwrap_or(data_path.clone()),
        "layers": layers,
        "template": template_name,
        "strategy": args.model.strategy.map(|s| format!("{s:?}").to_lowercase()),
        "pad_square": args.model.pad_square,
        "max_new_tokens": args.decode.max_new_tokens,
        "temperature": args.decode.temperature,
        "top_p": args.decode.top_p,
        "seed": args.decode.seed,
    });
    let mut settings = settings;
    if let Some(pairing) = args.data_opts.settings() {
        settings["data_options"] = pairing;
    }
    if mllama {
        settings["exit_rule"] = args.exit_rule.rule().name().into();
    }
    let manifest_path = out.join("manifest.json");
    if let Ok(text) = std::fs::read_to_string(&manifest_path) {
        let old: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", manifest_path.display()))?;
        if old["settings"] != settings {
            bail!(
                "{}: holds a run with other settings ({}); use another --out to start a new run",
                out.display(),
                old["settings"]
            );
        }
    }
    let manifest = serde_json::json!({
        "engine": "icet",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "settings": settings,
        "backend": b.name(),
        "batch_size": args.batch_size.to_string(),
        "default_layer": default_layer,
        "refusal_phrases": REFUSAL_PHRASES,
        "demo": demo,
    });
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)? + "\n")
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;

    let responses_path = out.join("responses.jsonl");
    // A torn last line (an interrupted write) is cut off; any other bad line is an error.
    let mut all_rows: Vec<ResponseRow> = crate::score::read_jsonl(&responses_path, true)?;
    let done: HashSet<(String, usize)> = all_rows.iter().map(|r| (r.id.clone(), r.layer)).collect();
    let pending: Vec<(usize, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| layers.iter().filter(|&&l| !done.contains(&(r.id.clone(), l))).map(move |&l| (i, l)))
        .collect();
    if !done.is_empty() {
        eprintln!("icet: resuming {}: {} answers done, {} to go", out.display(), done.len(), pending.len());
    }

    if !pending.is_empty() && mllama {
        crate::mllama_cmd::sweep_answers(b, &args, &rows, &texts, &pending, &responses_path, &mut all_rows)?;
    } else if !pending.is_empty() {
        let deepest = layers.last().copied();
        let model = args.model.load(b, LoadParts { deepest_vision_layer: deepest, text: true })?;
        let strategy = args.model.strategy(&model);
        let tokenizer = model.tokenizer()?;
        let opts = args.decode.options(model.generation.eos_token_ids.clone())?;
        let image_slots = model.config.image_slots(strategy);
        let mut writer = AnswerWriter::open(&responses_path, pending.len())?;

        // Work image by image: one vision pass per image serves all its prompts and layers.
        let mut work = pending.clone();
        let first_seen: HashMap<&Path, usize> =
            rows.iter().enumerate().rev().map(|(i, r)| (r.image_path.as_path(), i)).collect();
        work.sort_by_key(|&(i, l)| (first_seen[rows[i].image_path.as_path()], i, l));
        let mut prompt_ids: HashMap<usize, Vec<u32>> = HashMap::new();
        for &(i, _) in &work {
            if let std::collections::hash_map::Entry::Vacant(e) = prompt_ids.entry(i) {
                e.insert(tokenizer.encode_with_image(&texts[i], image_slots)?);
            }
        }
        let longest = prompt_ids.values().map(Vec::len).max().unwrap_or(0);
        let capacity = longest + opts.max_new_tokens;
        let mut cost = SlotCost::decoder(&model.config.text_config, capacity, longest, b.element_bytes());
        // Per image: every requested layer's hidden states and projected features, for the image
        // at hand and the previous one.
        let v = &model.config.vision_config;
        let per_layer = v.num_positions() * v.hidden_size + image_slots * model.config.text_config.hidden_size;
        cost.reserve_bytes = 2 * layers.len() * per_layer * b.element_bytes();
        let slots = choose_slots(args.batch_size, b.free_memory(), &cost, work.len());
        let stream = Stream { slots, capacity, keep_first_logits: false };

        // Requests are made lazily: the next image's vision pass runs when a slot needs its
        // first request, and its features are freed once its last sequence finishes.
        // The image whose features are at hand, and its projected features per layer.
        type LayerFeatures<B> = HashMap<usize, Arc<ImageFeatures<B>>>;
        let mut current: Option<(&Path, LayerFeatures<B>)> = None;
        let mut next = 0;
        let requests =
            std::iter::from_fn(|| {
                let &(i, l) = work.get(next)?;
                next += 1;
                let image = rows[i].image_path.as_path();
                let features = (|| -> icet_models::Result<Arc<ImageFeatures<B>>> {
                    if current.as_ref().is_none_or(|(p, _)| *p != image) {
                        let wanted: Vec<usize> = {
                            let mut w: Vec<usize> =
                                work.iter().filter(|&&(j, _)| rows[j].image_path == image).map(|&(_, l)| l).collect();
                            w.sort_unstable();
                            w.dedup();
                            w
                        };
                        let px = model.pixel_values(image, args.model.pad_square)?;
                        let capture = model.vision.capture(b, &[model.upload_pixels(b, &px)?], &wanted)?;
                        let mut map = HashMap::new();
                        for &w in &wanted {
                            map.insert(
                                w,
                                Arc::new(ImageFeatures::all_real(b, model.project_layer(b, &capture, w, strategy)?)),
                            );
                        }
                        current = Some((image, map));
                    }
                    Ok(current.as_ref().expect("just set").1[&l].clone())
                })();
                Some(features.map(|f| {
                    Request::with_image(prompt_ids[&i].clone(), f, answer_seed(args.decode.seed, &rows[i].id, l))
                }))
            });
        run_stream(b, &mut model.stream()?, requests, &opts, stream, |index, g| {
            let (i, l) = work[index];
            let response = tokenizer.decode(&g.token_ids)?;
            writer.push(response_row(&rows[i], l, response, g.token_ids, g.finish_reason.as_str()), &mut all_rows)
        })?;
        writer.finish("");
    }

    // The summary covers the requested layers of this data file, resumed rows included.
    let wanted: HashSet<(String, usize)> =
        rows.iter().flat_map(|r| layers.iter().map(move |&l| (r.id.clone(), l))).collect();
    all_rows.retain(|r| wanted.contains(&(r.id.clone(), r.layer)));
    let summary = summarize(&all_rows, num_layers, default_layer);
    summary.write(&out)?;
    println!("{}", summary.table());
    eprintln!("icet: results in {}", out.display());
    if !judge_specs.is_empty() {
        crate::score::score_run(b, &out, &args.judges)?;
    }
    Ok(())
}

/// `--batch-size`: a number of sequences, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    Auto,
    Fixed(usize),
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

fn parse_batch_size(s: &str) -> std::result::Result<BatchSize, String> {
    match s {
        "auto" => Ok(BatchSize::Auto),
        _ => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(BatchSize::Fixed(n)),
            _ => Err(format!("`{s}` is neither a number of sequences (at least 1) nor `auto`")),
        },
    }
}

/// What one sequence in flight costs in memory: its KV-cache slot (and, for Mllama, its
/// cross-attention region) and its share of a full prefill's activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SlotCost {
    pub cache_bytes: usize,
    pub prefill_bytes: usize,
    /// Memory the run needs whatever the slots: the vision work of the image at hand and of the
    /// previous one, whose features sequences in flight may still read.
    pub reserve_bytes: usize,
}

impl SlotCost {
    /// A decoder of `config`'s shape: `capacity` positions per slot over every layer, and a prompt
    /// of `prompt` tokens prefilled — per token the residual stream, norms, q/k/v, attention
    /// output and MLP intermediates alive at once (~8 × hidden + 3 × intermediate), plus one row
    /// of f32 logits.
    pub fn decoder(config: &icet_models::llama::LlamaConfig, capacity: usize, prompt: usize, elem: usize) -> Self {
        let kv_width = config.kv_heads() * config.head_dim();
        Self {
            cache_bytes: capacity * config.num_hidden_layers * 2 * kv_width * elem,
            prefill_bytes: prompt * (8 * config.hidden_size + 3 * config.intermediate_size) * elem
                + config.vocab_size * 4,
            reserve_bytes: 0,
        }
    }

    fn total(&self) -> usize {
        self.cache_bytes + self.prefill_bytes
    }
}

/// The slots of a stream, never more than the answers to make (a slot reserves its KV cache):
/// `Fixed` as given; `Auto` as many as 85% of `free` memory less the reserve holds (at most 256),
/// or 32 when free memory is unknown. `Auto` says its choice on stderr.
pub(crate) fn choose_slots(arg: BatchSize, free: Option<usize>, cost: &SlotCost, answers: usize) -> usize {
    let BatchSize::Fixed(n) = arg else {
        let cap = answers.clamp(1, 256);
        let Some(free) = free else {
            let n = 32.min(cap);
            eprintln!("icet: --batch-size auto: free memory unknown on this backend; {n} sequences");
            return n;
        };
        let usable = (free as f64 * 0.85 - cost.reserve_bytes as f64).max(0.0);
        let slots = ((usable / cost.total().max(1) as f64).floor() as usize).clamp(1, cap);
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        eprintln!(
            "icet: --batch-size auto: {slots} sequences ({:.1} MiB each: KV cache {:.1} + prefill {:.1}; \
             {:.1} MiB kept for the vision work; {:.2} GiB free)",
            mib(cost.total()),
            mib(cost.cache_bytes),
            mib(cost.prefill_bytes),
            mib(cost.reserve_bytes),
            free as f64 / (1u64 << 30) as f64
        );
        return slots;
    };
    n.min(answers.max(1))
}

/// Appends answers to `responses.jsonl` as they finish — one line each, flushed, so an
/// interruption loses only the answers in flight — and shows progress (answers/s, tokens/s).
pub(crate) struct AnswerWriter {
    file: File,
    path: PathBuf,
    bar: ProgressBar,
    started: Instant,
    answers: usize,
    tokens: usize,
}

impl AnswerWriter {
    pub(crate) fn open(path: &Path, total: usize) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} answers  {per_sec}  {msg}  eta {eta}")
                .expect("valid template"),
        );
        Ok(Self { file, path: path.to_path_buf(), bar, started: Instant::now(), answers: 0, tokens: 0 })
    }

    pub(crate) fn push(&mut self, row: ResponseRow, all_rows: &mut Vec<ResponseRow>) -> icet_models::Result<()> {
        let mut line = serde_json::to_string(&row).map_err(icet_models::Error::invalid)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| icet_models::Error::input(&self.path, format!("cannot write: {e}")))?;
        self.answers += 1;
        self.tokens += row.token_ids.len();
        all_rows.push(row);
        self.bar.inc(1);
        let rate = self.tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!("{rate:.1} tok/s"));
        Ok(())
    }

    /// Clears the bar and says how fast it went (`note` is appended, e.g. the exit rule).
    pub(crate) fn finish(self, note: &str) {
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "icet: {} answers, {} tokens in {secs:.1} s ({:.2} answers/s, {:.1} tokens/s{note})",
            self.answers,
            self.tokens,
            self.answers as f64 / secs,
            self.tokens as f64 / secs
        );
    }
}

pub(crate) fn response_row(
    row: &DataRow,
    layer: usize,
    response: String,
    token_ids: Vec<u32>,
    finish: &str,
) -> ResponseRow {
    ResponseRow {
        id: row.id.clone(),
        layer,
        prompt: row.prompt.clone(),
        image: row.image.clone(),
        image_path: Some(std::fs::canonicalize(&row.image_path).unwrap_or_else(|_| row.image_path.clone())),
        refusal: is_refusal(&response),
        response,
        token_ids,
        finish_reason: finish.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_parses_numbers_and_auto() {
        assert_eq!(parse_batch_size("auto"), Ok(BatchSize::Auto));
        assert_eq!(parse_batch_size("12"), Ok(BatchSize::Fixed(12)));
        assert!(parse_batch_size("0").unwrap_err().contains("at least 1"));
        assert!(parse_batch_size("many").is_err());
        assert_eq!(BatchSize::Auto.to_string(), "auto");
    }

    /// LLaVA-1.5-7B in bf16 with 600-token prompts and 256 new tokens, by hand: a slot's KV
    /// cache is 856 positions × 32 layers × 2 × 4096 × 2 bytes = 428 MiB.
    #[test]
    fn auto_slots_fill_free_memory() {
        let config: icet_models::llama::LlamaConfig = serde_json::from_value(serde_json::json!({
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "vocab_size": 32064}))
        .unwrap();
        let cost = SlotCost::decoder(&config, 856, 600, 2);
        assert_eq!(cost.cache_bytes, 856 * 32 * 2 * 4096 * 2);
        assert_eq!(cost.prefill_bytes, 600 * (8 * 4096 + 3 * 11008) * 2 + 32064 * 4);
        // 60 GiB free (an 80 GB H100 after 14 GB of weights): 85% over (428 + 77) MiB a slot.
        let free = 60usize << 30;
        let want = (free as f64 * 0.85 / cost.total() as f64).floor() as usize;
        assert_eq!(choose_slots(BatchSize::Auto, Some(free), &cost, 100_000), want);
        assert!((100..110).contains(&want), "{want}");
        assert_eq!(choose_slots(BatchSize::Auto, Some(free), &cost, 40), 40, "never more than the answers");
        assert_eq!(choose_slots(BatchSize::Auto, Some(1 << 20), &cost, 40), 1, "at least one");
        assert_eq!(choose_slots(BatchSize::Auto, None, &cost, 40), 32);
        assert_eq!(choose_slots(BatchSize::Fixed(7), Some(free), &cost, 3), 3, "a slot per answer at most");
        assert_eq!(choose_slots(BatchSize::Fixed(7), Some(free), &cost, 30), 7);
        // The vision reserve comes off the top.
        let reserved = SlotCost { reserve_bytes: 10 << 30, ..cost };
        let want = ((free as f64 * 0.85 - (10u64 << 30) as f64) / cost.total() as f64).floor() as usize;
        assert_eq!(choose_slots(BatchSize::Auto, Some(free), &reserved, 100_000), want);
    }
}
