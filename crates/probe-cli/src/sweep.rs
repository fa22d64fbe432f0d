//! The sweep: every (prompt, image) of a data file through every requested vision layer, on any
//! model family. The vision tower runs once per image for all layers; answers are generated with
//! continuous batching and appended to `responses.jsonl` as they finish, so an interrupted run
//! resumes where it stopped. A sweep in shards (`--shard K/N`, [`crate::shard`]) makes only its
//! shard's images' answers, into its own answers file, and resumes on its own.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use icet_models::backend::Backend;
use icet_models::generation::{run_stream, ImageFeatures, Request, SlotCost, Stream};
use icet_models::layers::parse_layers;
use icet_models::vlm::{registry, EarlyExitVlm, FamilyOptions, LoadParts, ModelSpec, RenderedPrompts, WorkOrder};

use crate::data::{self, DataArgs, DataRow};
use crate::decode::DecodeArgs;
use crate::fingerprint::{self, ImageHashes};
use crate::generate::{apply_no_special_tokens, too_long, NON_FINITE_HINT};
use crate::judge::{self, JudgeArgs};
use crate::progress::Progress;
use crate::refusal::{is_refusal, REFUSAL_PHRASES};
use crate::run_dir::{
    precision_of, utc_now, Appender, Invocation, Manifest, ResponseRow, Resume, RowInputs, RowSource, RunDir,
    SkippedRow, MANIFEST_FORMAT, RESPONSES,
};
use crate::shard::{Shard, ShardPlan};
use crate::stats::{fnv1a, FNV_OFFSET};
use crate::summary::{summarize, Summary};

/// Everything a sweep is asked to do.
#[derive(Clone, Debug)]
pub struct SweepRequest {
    pub model_dir: PathBuf,
    pub data: PathBuf,
    pub data_options: DataArgs,
    /// `--layers`: `all`, `a..b` or a list.
    pub layers: String,
    pub out: PathBuf,
    pub template: Option<String>,
    /// `--no-special-tokens` (with `--template raw`).
    pub no_special_tokens: bool,
    pub family_options: FamilyOptions,
    pub decode: DecodeArgs,
    pub batch_size: BatchSize,
    /// Judges to score the answers with once generated (none: no scoring).
    pub judges: JudgeArgs,
    /// The run is the embedded demo (recorded in the manifest).
    pub demo: bool,
    /// `--allow-mixed-precision`: add answers in another precision than the run's.
    pub allow_mixed_precision: bool,
    /// `--skip-invalid`: leave out rows that cannot be answered instead of stopping.
    pub skip_invalid: bool,
    /// `--shard K/N` (N > 1): make only shard K's answers, into its own answers file.
    pub shard: Option<Shard>,
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

impl std::str::FromStr for BatchSize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Self::Fixed(n)),
                _ => Err(format!("`{s}` is neither a number of sequences (at least 1) nor `auto`")),
            },
        }
    }
}

/// FNV-1a over the answer's identity, so a sampled answer does not depend on batch order.
pub fn answer_seed(seed: u64, id: &str, layer: usize) -> u64 {
    fnv1a(FNV_OFFSET ^ seed, id.bytes().chain(layer.to_le_bytes()))
}

/// Runs the sweep on `b`; returns its summary (also written into the run and printed).
pub fn sweep<B: Backend>(b: &B, req: &SweepRequest) -> Result<Summary> {
    // Everything that can be wrong with the inputs is found before the model loads.
    req.decode.check()?;
    let mut rows = data::load_with(&req.data, &req.data_options)?;
    let judge_specs = judge::preflight(&req.judges)?;
    judge::vqa::check_sweep(&judge_specs, &req.data_options)?;
    let spec = registry::open::<B>(&req.model_dir, req.family_options.clone())?;
    let num_layers = spec.num_layers();
    let default_layer = spec.default_layer()?;
    let layers = parse_layers(&req.layers, num_layers)?;
    // A shard: the split of every data row (so every shard computes the same), then this
    // shard's rows only (the rows of the others are theirs to check and answer).
    let plan = req.shard.map(|s| ShardPlan::new(&rows, &layers, s.count, RESPONSES));
    if let (Some(shard), Some(plan)) = (req.shard, &plan) {
        let mine = plan.ids(shard.index);
        rows.retain(|r| mine.contains(r.id.as_str()));
        let work = &plan.shards[shard.index];
        eprintln!(
            "icet: {shard}: {} of {} images, {} answers, into {}",
            work.images,
            plan.shards.iter().map(|w| w.images).sum::<usize>(),
            work.answers,
            work.file
        );
    }
    // Prompts the template refuses (a raw prompt without the image token) are all found now;
    // those the tokenizer refuses or that do not fit, once the model is loaded. Both stop the
    // sweep before its first answer, naming every such row, unless --skip-invalid.
    let (rows, mut rendered, mut skipped) = render_rows(spec.as_ref(), req, rows)?;
    apply_no_special_tokens(&mut rendered, req.no_special_tokens)?;
    if let Some(note) = &rendered.note {
        eprintln!("icet: {note}");
    }

    // The folder is this process's (or refused) before anything is loaded, and a run made
    // otherwise (settings, model files, precision, shards) is refused before the model loads.
    let (run, _lock) = RunDir::create_for(&req.out, req.shard)?;
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        engine: "icet".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        created: utc_now(),
        command: std::env::args().collect(),
        settings: settings(req, &rendered, &layers, spec.as_ref()),
        model_files: fingerprint::model_files(&req.model_dir)?,
        precision: precision_of(b.name()),
        backend: b.name().into(),
        batch_size: req.batch_size.to_string(),
        default_layer: Some(default_layer),
        refusal_phrases: REFUSAL_PHRASES.iter().map(|p| p.to_string()).collect(),
        demo: req.demo,
        skipped_rows: vec![],
        num_layers: Some(num_layers),
        shards: plan,
    };
    run.check_resume(&manifest, req.allow_mixed_precision)?;

    // What each row's answers are made from now; answers made from anything else are refused.
    let mut images = ImageHashes::default();
    let inputs: Vec<RowInputs> = rows
        .iter()
        .zip(&rendered.texts)
        .map(|(r, text)| images.row_inputs(text, rendered.add_special_tokens, &r.image_path))
        .collect::<Result<_>>()?;
    let sources: HashMap<&str, RowSource> = rows
        .iter()
        .zip(&inputs)
        .map(|(r, i)| (r.id.as_str(), RowSource { prompt: &r.prompt, image: &r.image, inputs: i.clone() }))
        .collect();
    let mut all_rows = run.responses_for_resume()?;
    Resume::check_inputs(&all_rows, &sources, &run.path(&run.answers_file()))?;
    let resume = Resume::new(&all_rows);
    let mut pending: Vec<(usize, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| layers.iter().filter(|&&l| !resume.is_done(&r.id, l)).map(move |&l| (i, l)))
        .collect();
    if resume.done() > 0 {
        eprintln!("icet: resuming {}: {} answers done, {} to go", req.out.display(), resume.done(), pending.len());
    }
    let mut invocation = Invocation::now(b.name(), &run.answers_file());
    invocation.batch_size = req.batch_size.to_string();
    invocation.allow_mixed_precision = req.allow_mixed_precision;
    if pending.is_empty() {
        invocation.skipped_rows = skipped.clone();
        run.start(&manifest, &invocation)?;
    } else {
        let model = spec.load(b, LoadParts { deepest_vision_layer: layers.last().copied(), text: true })?;
        let prompt_ids = tokenize_rows(model.as_ref(), req, &rows, &rendered, &mut pending, &mut skipped)?;
        invocation.skipped_rows = skipped.clone();
        manifest.skipped_rows = skipped.clone();
        run.start(&manifest, &invocation)?;
        let run_note: String = spec
            .settings()
            .iter()
            .map(|(k, v)| format!(", {} {}", k.replace('_', " "), v.as_str().unwrap_or("")))
            .collect();
        let answers = Answers { rows: &rows, prompt_ids: &prompt_ids, inputs: &inputs, pending: &pending };
        generate_answers(b, model.as_ref(), req, &answers, &run, &mut all_rows, &run_note)?;
    }

    // A shard's summary is of the whole run as far as it got (every shard's answers).
    if req.shard.is_some() {
        let summary = run_summary(&run, &skipped)?;
        println!("{}", summary.table());
        eprintln!("icet: results in {}", req.out.display());
        if !judge_specs.is_empty() {
            crate::score::score_run(b, &run, &req.judges)?;
        }
        return Ok(summary);
    }
    // The summary covers the requested layers of this data file (rows left out aside), resumed
    // rows included.
    let left_out: HashSet<&str> = skipped.iter().map(|r| r.id.as_str()).collect();
    let wanted: BTreeSet<(&str, usize)> = rows
        .iter()
        .filter(|r| !left_out.contains(r.id.as_str()))
        .flat_map(|r| layers.iter().map(move |&l| (r.id.as_str(), l)))
        .collect();
    all_rows.retain(|r| wanted.contains(&(r.id.as_str(), r.layer)));
    let summary = summarize(&all_rows, num_layers, default_layer);
    summary.write(&run)?;
    println!("{}", summary.table());
    eprintln!("icet: results in {}", req.out.display());
    if !judge_specs.is_empty() {
        crate::score::score_run(b, &run, &req.judges)?;
    }
    Ok(summary)
}

/// The summary of a run made in shards, of every shard's answers there are (`skipped`: rows this
/// process left out, besides those the run's log records), written into the run and returned;
/// shards that still owe answers are named in it and on stderr. Read and written under the run's
/// summary lock, so that the summary last written is of the last reading.
pub fn run_summary(run: &RunDir, skipped: &[SkippedRow]) -> Result<Summary> {
    run.with_summary_lock(|| {
        let manifest = run.manifest()?.ok_or_else(|| anyhow!("{}: no manifest.json", run.root().display()))?;
        let plan = manifest.shards.ok_or_else(|| anyhow!("{}: not a run made in shards", run.root().display()))?;
        let (Some(num_layers), Some(default_layer)) = (manifest.num_layers, manifest.default_layer) else {
            bail!("{}: manifest.json records no vision layers", run.root().display());
        };
        let mut left_out = run.left_out()?;
        left_out.extend(skipped.iter().map(|r| r.id.clone()));
        let answers = run.answers()?;
        let status = plan.status(&answers.by_file, &left_out);
        let grid = plan.grid(&left_out);
        let rows: Vec<ResponseRow> =
            answers.rows.into_iter().filter(|r| grid.contains(&(r.id.clone(), r.layer))).collect();
        let mut summary = summarize(&rows, num_layers, default_layer);
        // The table says it when a shard still owes answers.
        summary.shards = status;
        summary.write(run)?;
        Ok(summary)
    })
}

/// What decides a run's answers (a run resumes only under the same settings). `strategy` and
/// `pad_square` are recorded for every family, as runs have always recorded them; the family adds
/// its own (Llama 3.2 Vision: `exit_rule`).
fn settings<B: Backend>(
    req: &SweepRequest,
    rendered: &RenderedPrompts,
    layers: &[usize],
    spec: &dyn ModelSpec<B>,
) -> serde_json::Value {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
    let mut settings = serde_json::json!({
        "model": canonical(&req.model_dir),
        "data": canonical(&req.data),
        "layers": layers,
        "template": rendered.template,
        "strategy": req.family_options.get("strategy"),
        "pad_square": req.family_options.get("pad-square").is_some(),
        "max_new_tokens": req.decode.max_new_tokens,
        "temperature": req.decode.temperature,
        "top_p": req.decode.top_p,
        "seed": req.decode.seed,
    });
    if rendered.template == "raw" {
        // Only `raw` lets the user choose (`--no-special-tokens`); every other template fixes it.
        settings["add_special_tokens"] = rendered.add_special_tokens.into();
    }
    if let Some(pairing) = req.data_options.settings() {
        settings["data_options"] = pairing;
    }
    if let Some(shard) = req.shard {
        // Every shard of a run splits it alike; another N is another run.
        settings["shards"] = shard.count.into();
    }
    for (k, v) in spec.settings() {
        settings[k] = v;
    }
    settings
}

/// The answers a sweep still owes: data rows, their rendered prompts, and the pending
/// (row, layer) pairs.
struct Answers<'a> {
    rows: &'a [DataRow],
    /// The prompt ids of every row with pending work.
    prompt_ids: &'a HashMap<usize, Vec<u32>>,
    /// Per row, what its answers are made from (recorded in each).
    inputs: &'a [RowInputs],
    pending: &'a [(usize, usize)],
}

/// The rows' prompts under the template; rows whose prompt the template refuses are named all
/// at once, or left out with `--skip-invalid` (returned as skipped). An error that every row
/// gets alike is the template's own, given as it is.
fn render_rows<B: Backend>(
    spec: &dyn ModelSpec<B>,
    req: &SweepRequest,
    rows: Vec<DataRow>,
) -> Result<(Vec<DataRow>, RenderedPrompts, Vec<SkippedRow>)> {
    let template = req.template.as_deref();
    let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    let all = match spec.render_prompts(template, &prompts) {
        Ok(rendered) => return Ok((rows, rendered, vec![])),
        Err(e) => e,
    };
    let bad: Vec<SkippedRow> = rows
        .iter()
        .filter_map(|r| {
            let e = spec.render_prompts(template, &[r.prompt.as_str()]).err()?;
            Some(SkippedRow { id: r.id.clone(), reason: e.to_string() })
        })
        .collect();
    if bad.is_empty() {
        return Err(all.into());
    }
    if bad.len() == rows.len() && bad.len() > 1 && bad.iter().all(|b| b.reason == bad[0].reason) {
        return Err(anyhow!(all).context(format!("{}: all {} data rows", req.data.display(), bad.len())));
    }
    invalid_rows(req, &bad)?;
    let rows: Vec<DataRow> = rows.into_iter().filter(|r| !bad.iter().any(|b| b.id == r.id)).collect();
    let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    Ok((rows.clone(), spec.render_prompts(template, &prompts)?, bad))
}

/// The prompt ids of every row with pending work, once the tokenizer is loaded: rows the
/// tokenizer refuses (LLaVA: an `<image>` of the user's besides the template's) and rows whose
/// prompt and `--max-new-tokens` do not fit the model's positions are named all at once, or left
/// out with `--skip-invalid` (their work dropped from `pending`, the rows added to `skipped`).
fn tokenize_rows<B: Backend>(
    model: &dyn EarlyExitVlm<B>,
    req: &SweepRequest,
    rows: &[DataRow],
    rendered: &RenderedPrompts,
    pending: &mut Vec<(usize, usize)>,
    skipped: &mut Vec<SkippedRow>,
) -> Result<HashMap<usize, Vec<u32>>> {
    let limit = model.stream(1)?.max_positions();
    let mut ids: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut bad: Vec<SkippedRow> = Vec::new();
    for &(i, _) in pending.iter() {
        if ids.contains_key(&i) || bad.iter().any(|b| b.id == rows[i].id) {
            continue;
        }
        let why = match model.prompt_ids(&rendered.texts[i], &rows[i].image_path, rendered.add_special_tokens) {
            Ok(p) => match too_long(p.len(), req.decode.max_new_tokens, limit) {
                None => {
                    ids.insert(i, p);
                    continue;
                }
                Some(why) => why,
            },
            Err(e) => e.to_string(),
        };
        bad.push(SkippedRow { id: rows[i].id.clone(), reason: why });
    }
    invalid_rows(req, &bad)?;
    pending.retain(|(i, _)| ids.contains_key(i));
    skipped.extend(bad);
    Ok(ids)
}

/// Rows that cannot be answered: an error naming every one (the first 50 with their reasons),
/// or with `--skip-invalid` a note that they are left out.
fn invalid_rows(req: &SweepRequest, bad: &[SkippedRow]) -> Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    let mut list: Vec<String> = bad.iter().take(50).map(|b| format!("`{}`: {}", b.id, b.reason)).collect();
    if bad.len() > 50 {
        let rest: Vec<String> = bad[50..].iter().map(|b| format!("`{}`", b.id)).collect();
        list.push(format!("and {} more: {}", rest.len(), rest.join(", ")));
    }
    if !req.skip_invalid {
        bail!(
            "{}: {} data rows cannot be answered ({}); fix them, or give --skip-invalid to leave them out \
             (recorded in the run's manifest)",
            req.data.display(),
            bad.len(),
            list.join("; ")
        );
    }
    eprintln!("icet: leaving out {} data rows (--skip-invalid): {}", bad.len(), list.join("; "));
    Ok(())
}

/// The pending work in the model's order: image by image (in the order of each image's first
/// data row: one vision pass serves every prompt and layer of an image), then prompt-major or
/// layer-major as the family asks.
fn order_work(pending: &[(usize, usize)], rows: &[DataRow], order: WorkOrder) -> Vec<(usize, usize)> {
    let first_row: HashMap<&Path, usize> =
        rows.iter().enumerate().rev().map(|(i, r)| (r.image_path.as_path(), i)).collect();
    let mut work = pending.to_vec();
    let image = |i: usize| first_row[rows[i].image_path.as_path()];
    match order {
        WorkOrder::PromptMajor => work.sort_by_key(|&(i, l)| (image(i), i, l)),
        WorkOrder::LayerMajor => work.sort_by_key(|&(i, l)| (image(i), l, i)),
    }
    work
}

/// Generates every pending answer with continuous batching: `--batch-size` sequences in flight,
/// a finished one's slot refilled at once. Requests are made lazily: an image's vision pass runs
/// when a slot needs its first request, and its features are freed once its last sequence
/// finishes. Each answer is appended to `responses.jsonl` as it finishes.
fn generate_answers<B: Backend>(
    b: &B,
    model: &dyn EarlyExitVlm<B>,
    req: &SweepRequest,
    answers: &Answers,
    run: &RunDir,
    all_rows: &mut Vec<ResponseRow>,
    run_note: &str,
) -> Result<()> {
    let (rows, prompt_ids) = (answers.rows, answers.prompt_ids);
    let opts = req.decode.options(model.eos_token_ids().to_vec())?;
    let work = order_work(answers.pending, rows, model.work_order());
    let longest = prompt_ids.values().map(Vec::len).max().unwrap_or(0);
    let capacity = longest + opts.max_new_tokens;
    let requested = work.iter().map(|&(_, l)| l).collect::<BTreeSet<_>>().len();
    let cost = model.slot_cost(capacity, longest, requested, b.element_bytes());
    let slots = choose_slots(req.batch_size, b.free_memory(), &cost, work.len());
    let stream = Stream { slots, capacity, keep_first_logits: false };

    // The image whose features are at hand, and its features per layer.
    type ByLayer<B> = HashMap<usize, Arc<ImageFeatures<B>>>;
    let mut current: Option<(&Path, ByLayer<B>)> = None;
    let mut next = 0;
    let requests = std::iter::from_fn(|| {
        let &(i, l) = work.get(next)?;
        next += 1;
        let image = rows[i].image_path.as_path();
        let features = (|| -> icet_models::Result<Arc<ImageFeatures<B>>> {
            if current.as_ref().is_none_or(|(p, _)| *p != image) {
                current = None; // the previous image's features go once its sequences finish
                let wanted: Vec<usize> = work
                    .iter()
                    .filter(|&&(j, _)| rows[j].image_path == image)
                    .map(|&(_, l)| l)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let features = model.image_features(b, image, &wanted)?;
                current = Some((image, wanted.into_iter().zip(features.into_iter().map(Arc::new)).collect()));
            }
            Ok(current.as_ref().expect("just set").1[&l].clone())
        })();
        let seed = answer_seed(req.decode.seed, &rows[i].id, l);
        Some(features.map(|f| Request::with_image(prompt_ids[&i].clone(), f, seed)))
    });
    let mut writer = AnswerWriter::open(run, work.len())?;
    let generated = run_stream(b, &mut *model.stream(slots)?, requests, &opts, stream, |index, g| {
        let (i, l) = work[index];
        let response = model.decode(&g.token_ids)?;
        let inputs = answers.inputs[i].clone();
        writer.push(response_row(&rows[i], l, response, g.token_ids, g.finish_reason.as_str(), inputs), all_rows)
    });
    // What was written is said even when the run stops early (interrupted: the answers in
    // flight are dropped, every written one is whole).
    writer.finish(run_note);
    generated.map_err(|e| match e {
        icet_models::Error::NonFiniteLogits { request, token } => {
            let (i, l) = work[request];
            anyhow!(
                "data row `{}` at vision layer {l}: the model's logits are not finite (NaN or infinity) at new token \
                 {token}: {NON_FINITE_HINT}, or leave layer {l} out (--layers)",
                rows[i].id
            )
        }
        e => e.into(),
    })?;
    Ok(())
}

/// The slots of a stream, never more than the answers to make (a slot reserves its KV cache):
/// `Fixed` as given; `Auto` as many as 85% of `free` memory less the reserve holds (at most 256),
/// or 32 when free memory is unknown. `Auto` says its choice on stderr.
pub fn choose_slots(arg: BatchSize, free: Option<usize>, cost: &SlotCost, answers: usize) -> usize {
    let BatchSize::Fixed(n) = arg else {
        let cap = answers.clamp(1, 256);
        let Some(free) = free else {
            let n = 32.min(cap);
            eprintln!("icet: --batch-size auto: free memory unknown on this backend; {n} sequences");
            return n;
        };
        let usable = (free as f64 * 0.85 - cost.reserve_bytes as f64).max(0.0);
        let slots = ((usable / cost.per_slot().max(1) as f64).floor() as usize).clamp(1, cap);
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        eprintln!(
            "icet: --batch-size auto: {slots} sequences ({:.1} MiB each: KV cache {:.1} + prefill {:.1}; \
             {:.1} MiB kept for the vision work; {:.2} GiB free)",
            mib(cost.per_slot()),
            mib(cost.cache_bytes),
            mib(cost.prefill_bytes),
            mib(cost.reserve_bytes),
            free as f64 / (1u64 << 30) as f64
        );
        return slots;
    };
    n.min(answers.max(1))
}

/// Appends answers to the run as they finish — one line each, flushed, so an interruption
/// loses only the answers in flight — and shows progress (answers/s, tokens/s).
struct AnswerWriter {
    appender: Appender,
    progress: Progress,
    started: Instant,
    answers: usize,
    tokens: usize,
}

impl AnswerWriter {
    fn open(run: &RunDir, total: usize) -> Result<Self> {
        let progress = Progress::new(total, "answers");
        Ok(Self { appender: run.answer_appender()?, progress, started: Instant::now(), answers: 0, tokens: 0 })
    }

    fn push(&mut self, row: ResponseRow, all_rows: &mut Vec<ResponseRow>) -> icet_models::Result<()> {
        self.appender.append(std::slice::from_ref(&row))?;
        self.answers += 1;
        self.tokens += row.token_ids.len();
        self.progress.inc(1, row.token_ids.len());
        all_rows.push(row);
        Ok(())
    }

    /// Clears the progress bar and says how fast it went (`note` is appended, e.g. the exit rule).
    fn finish(self, note: &str) {
        self.progress.finish();
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

fn response_row(
    row: &DataRow,
    layer: usize,
    response: String,
    token_ids: Vec<u32>,
    finish: &str,
    inputs: RowInputs,
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
        inputs: Some(inputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_parses_numbers_and_auto() {
        assert_eq!("auto".parse(), Ok(BatchSize::Auto));
        assert_eq!("12".parse(), Ok(BatchSize::Fixed(12)));
        assert!("0".parse::<BatchSize>().unwrap_err().contains("at least 1"));
        assert!("many".parse::<BatchSize>().is_err());
        assert_eq!(BatchSize::Auto.to_string(), "auto");
    }

    /// LLaVA-1.5-7B in bf16 with 600-token prompts and 256 new tokens (the cost is worked out by
    /// hand in `icet_models::generation::memory`).
    #[test]
    fn auto_slots_fill_free_memory() {
        let config: icet_models::llama::LlamaConfig = serde_json::from_value(serde_json::json!({
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "vocab_size": 32064}))
        .unwrap();
        let cost = SlotCost::decoder(&config, 856, 600, 2);
        // 60 GiB free (an 80 GB H100 after 14 GB of weights): 85% over (428 + 77) MiB a slot.
        let free = 60usize << 30;
        let want = (free as f64 * 0.85 / cost.per_slot() as f64).floor() as usize;
        assert_eq!(choose_slots(BatchSize::Auto, Some(free), &cost, 100_000), want);
        assert!((100..110).contains(&want), "{want}");
        assert_eq!(choose_slots(BatchSize::Auto, Some(free), &cost, 40), 40, "never more than the answers");
        assert_eq!(choose_slots(BatchSize::Auto, Some(1 << 20), &cost, 40), 1, "at least one");
        assert_eq!(choose_slots(BatchSize::Auto, None, &cost, 40), 32);
        assert_eq!(choose_slots(BatchSize::Fixed(7), Some(free), &cost, 3), 3, "a slot per answer at most");
        assert_eq!(choose_slots(BatchSize::Fixed(7), Some(free), &cost, 30), 7);
        // The vision reserve comes off the top.
        let reserved = SlotCost { reserve_bytes: 10 << 30, ..cost };
        let want = ((free as f64 * 0.85 - (10u64 << 30) as f64) / cost.per_slot() as f64).floor() as usize;
        assert_eq!(choose_slots(BatchSize::Auto, Some(free), &reserved, 100_000), want);
    }

    #[test]
    fn work_goes_image_by_image_in_the_familys_order() {
        let row = |id: &str, image: &str| DataRow {
            id: id.into(),
            prompt: "p".into(),
            image: image.into(),
            image_path: PathBuf::from(image),
        };
        let rows = [row("a", "x.png"), row("b", "y.png"), row("c", "x.png")];
        let pending: Vec<(usize, usize)> = (0..3).flat_map(|i| [(i, 1), (i, 2)]).collect();
        // x.png (rows 0 and 2) first, then y.png.
        let prompt_major = order_work(&pending, &rows, WorkOrder::PromptMajor);
        assert_eq!(prompt_major, [(0, 1), (0, 2), (2, 1), (2, 2), (1, 1), (1, 2)]);
        let layer_major = order_work(&pending, &rows, WorkOrder::LayerMajor);
        assert_eq!(layer_major, [(0, 1), (2, 1), (0, 2), (2, 2), (1, 1), (1, 2)]);
    }
}
