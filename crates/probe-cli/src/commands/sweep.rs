//! `icet sweep`.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use icet_engine::data::DataArgs;
use icet_engine::decode::DecodeArgs;
use icet_engine::judge::JudgeArgs;
use icet_engine::shard::ShardArg;
use icet_engine::sweep::{sweep, BatchSize, SweepRequest};
use icet_engine::workers::{parse_devices, run_workers, WorkersRequest};
use icet_models::backend::Backend;

use super::ModelArgs;

#[derive(ClapArgs, Debug)]
#[command(after_help = "Without --model and --data, runs the embedded demo (a tiny random-weight LLaVA: its text is
gibberish by construction) over all its layers.

Data: JSONL, or CSV with a header, with fields `id` (optional), `prompt`, `image` (path relative
to the data file). Example row: {\"id\": \"rt-0001\", \"prompt\": \"...\", \"image\": \"images/0001.jpg\"}
Also JailBreakV-28K (incl. mini), RedTeam-2K and AdvBench CSVs, detected from their headers
(--data-format); prompt-only data is paired with --images DIR (--pairing random|cross).
VQA-v2 (utility): --data v2_OpenEnded_mscoco_val2014_questions.json --vqa-annotations
v2_mscoco_val2014_annotations.json --images val2014/ (COCO_val2014_<12-digit id>.jpg); each question
is asked with LLaVA-1.5's line \"Answer the question using a single word or phrase.\" (--prompt-suffix),
--max-items N asks a seeded sample stratified by answer type (--sample-seed); score with --judge vqa.
With --judge, the answers are scored as by `icet score` (scores.jsonl) once generated.

Writes into --out (a new or empty folder, or a run to resume):
  responses.jsonl       one row per (item, layer), appended as produced (id, layer, prompt, image,
                        response, token_ids, finish_reason, refusal, inputs: sha256 of the rendered
                        prompt and of the image)
  summary.json/.csv     per-layer n, empty answers, refusals, refusal_rate (share of non-empty answers
                        with a refusal phrase: the keyword check, not a judge's ASR), mean tokens;
                        Early/Middle/Late/Average
  refusal_rate.svg/.png the per-layer plot
  manifest.json         what the answers are made from: settings, model files' sha256, precision
  invocations.jsonl     every command that wrote here (time, command, device, dtype, version)
Rerunning the same command resumes: finished (id, layer) pairs are skipped. A run resumes only with
its settings, model files and precision, and only while each data row's prompt and image are what
its answers were made from; anything else is refused, naming what differs. One process writes a run
at a time (\"in use by pid N\"). Ctrl-C or SIGTERM stops cleanly (the answers in flight are dropped;
rerun to resume); a second one stops at once. Progress: a bar on a terminal, else a line every 30 s
(ICET_PROGRESS_SECONDS).

Many GPUs: --shard K/N makes shard K (from 0) of N, split by image and balanced by answers, into
responses.shard-K-of-N.jsonl of the same --out (shared by all shards; each resumes on its own);
--shard auto takes K and N from Slurm (SLURM_ARRAY_TASK_ID/COUNT, or SLURM_PROCID/NTASKS).
Summary, `icet score` and `icet report` read every shard's file as one run and name the shards that
still owe answers. --devices 0,1,2,3 runs one worker per GPU of this machine, as shards;
`icet slurm` writes (and submits) the Slurm job array.

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
    /// Conversation template [default: the model's (llava-v1 for LLaVA, llama3 for Llama 3.2 Vision;
    /// for LLaVA-NeXT its language model's: mistral-instruct, llava-v1 for Vicuna, llava-next-llama3)]
    #[arg(long, value_parser = super::template_values())]
    pub template: Option<String>,
    /// With --template raw: the tokenizer adds no special tokens (transformers'
    /// `add_special_tokens=False`; by default raw is the processor's default call, which adds
    /// them: LLaVA's BOS, and for Llama 3.2 Vision a BOS before the `<|image|>` too)
    #[arg(long)]
    pub no_special_tokens: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Sequences in flight at once (continuous batching: a finished answer's slot is refilled at
    /// once), or `auto`: as many as the free device memory holds (KV cache and prefill estimated
    /// from the config; at most 256), said on stderr
    #[arg(long, default_value = "32")]
    pub batch_size: BatchSize,
    #[command(flatten)]
    pub data_opts: DataArgs,
    /// Judges to score the answers with once generated (as `icet score`; see `icet score --help`)
    #[command(flatten)]
    pub judges: JudgeArgs,
    /// Resume a run made in another precision (--dtype, or CPU f32 vs GPU bf16) anyway, mixing
    /// answers of both in one run (recorded in invocations.jsonl)
    #[arg(long)]
    pub allow_mixed_precision: bool,
    /// Leave out data rows that cannot be answered (a prompt the template or the tokenizer
    /// refuses, one too long for the model with --max-new-tokens) instead of stopping before the
    /// first answer; each is named on stderr and recorded in the run's manifest
    #[arg(long)]
    pub skip_invalid: bool,
    /// Make only shard K (from 0) of N of the run: `K/N`, `auto` (Slurm's array task id and
    /// count, or SLURM_PROCID and SLURM_NTASKS) or `auto/N` (the task id, N shards)
    #[arg(long, value_name = "K/N|auto", conflicts_with = "devices")]
    pub shard: Option<ShardArg>,
    /// One worker process per device of this machine, each a shard (CUDA_VISIBLE_DEVICES set to
    /// its device; with --device cpu the ids are only labels), e.g. 0,1,2,3
    #[arg(long, value_name = "IDS")]
    pub devices: Option<String>,
}

impl super::Run for Args {
    fn run(self) -> Result<()> {
        if let Some(devices) = self.devices.as_deref().map(parse_devices).transpose()? {
            return self.run_on_devices(devices);
        }
        let selected = self.model.backend()?;
        icet_engine::with_backend!(selected, |b| self.run_on(&b))
    }
}

/// The demo's default `--out`.
fn demo_out() -> PathBuf {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from(format!("icet-runs/demo-{t}"))
}

impl Args {
    /// `--devices`: this command's arguments again for each worker, without `--devices`, with
    /// the one `--out` of them all.
    fn run_on_devices(self, devices: Vec<String>) -> Result<()> {
        let demo = self.model.model.is_none() && self.data.is_none();
        let out = match (&self.out, demo) {
            (Some(o), _) => o.clone(),
            (None, true) => demo_out(),
            (None, false) => bail!("--out DIR is required"),
        };
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut given = std::env::args_os().skip(1);
        while let Some(a) = given.next() {
            if a == "--devices" {
                given.next();
            } else if !a.to_string_lossy().starts_with("--devices=") {
                args.push(a);
            }
        }
        if self.out.is_none() {
            args.push("--out".into());
            args.push(out.clone().into());
        }
        let exe = std::env::current_exe().context("cannot find the icet binary for the workers")?;
        let summary = run_workers(&WorkersRequest { exe, args, devices, out: out.clone() })?;
        println!("{}", summary.table());
        eprintln!("icet: results in {}", out.display());
        Ok(())
    }

    fn run_on<B: Backend>(mut self, b: &B) -> Result<()> {
        let demo = self.model.model.is_none() && self.data.is_none();
        if demo {
            let d = icet_engine::demo::materialize()?;
            eprintln!(
                "icet: no --model/--data given: running the embedded demo (random weights, gibberish text by design)"
            );
            self.model.model = Some(d.model);
            self.data = Some(d.data);
            if self.decode.max_new_tokens == 256 {
                self.decode.max_new_tokens = 24;
            }
        }
        let data = self.data.clone().context("--data FILE is required with --model")?;
        let model_dir = self.model.model_dir()?.to_path_buf();
        let out = match (&self.out, demo) {
            (Some(o), _) => o.clone(),
            (None, true) => demo_out(),
            (None, false) => bail!("--out DIR is required"),
        };
        // One shard of one is the run itself.
        let shard = match self.shard {
            Some(arg) => Some(arg.resolve(|k| std::env::var(k).ok())?).filter(|s| s.count > 1),
            None => None,
        };
        let req = SweepRequest {
            model_dir,
            data,
            data_options: self.data_opts,
            layers: self.layers,
            out,
            template: self.template,
            no_special_tokens: self.no_special_tokens,
            family_options: self.model.family_options(),
            decode: self.decode,
            batch_size: self.batch_size,
            judges: self.judges,
            demo,
            allow_mixed_precision: self.allow_mixed_precision,
            skip_invalid: self.skip_invalid,
            shard,
        };
        sweep(b, &req)?;
        Ok(())
    }
}
