//! `icet score RUN_DIR --judge KIND=DIR ...`: scores the answers of a sweep (`responses.jsonl`) with
//! one or more judges into `scores.jsonl`, one row per (answer, judge), raw judge output kept.
//!
//! Judges (KIND):
//!   llama-guard[-1|-2|-3]=DIR  Llama Guard on (prompt, response); version detected unless given
//!   llama-guard-3-vision=DIR   Llama-Guard-3-11B-Vision on (image, prompt, response); an Mllama
//!                              directory given as `llama-guard=DIR` is this judge too
//!   reward=DIR                 GPT-2 reward model on the HH pair ("\n\nHuman: PROMPT\n\nAssistant:", RESPONSE)
//!   toxicity=DIR               BERT/RoBERTa toxicity classifier on the response
//!   perspective                Perspective API TOXICITY of the response (key: PERSPECTIVE_API_KEY)
//! `KIND:NAME=DIR` names the judge (default: KIND), so two judges of one kind can be compared.
//!
//! Resumable and idempotent: rows already in `scores.jsonl` are skipped; a judge name is bound to
//! its directory in `judges.json`, so a rerun cannot mix two models under one name. Judges load one
//! at a time (a Llama Guard 8B and a GPT-2 large need not fit in memory together).
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args as ClapArgs, Parser};
use icet_models::backend::Backend;
use icet_models::judges::classifier::{RewardModel, ToxicityClassifier};
use icet_models::judges::llama_guard::{Judgement, LlamaGuard, LlamaGuardVersion};
use icet_models::judges::llama_guard_vision::{GuardItem, LlamaGuardVision};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::common::{Device, ModelArgs};
use crate::perspective::{self, Perspective};
use crate::summary::ResponseRow;

pub const SCORES_FILE: &str = "scores.jsonl";
pub const JUDGES_FILE: &str = "judges.json";

/// Judge options shared by `score` and `sweep`.
#[derive(ClapArgs, Clone, Debug, Default)]
pub struct JudgeArgs {
    /// A judge: `llama-guard[-1|-2|-3|-3-vision]=DIR`, `reward=DIR`, `toxicity=DIR` or
    /// `perspective` (`KIND:NAME=DIR` names it); repeat for several
    #[arg(long = "judge", value_name = "KIND=DIR")]
    pub judges: Vec<String>,
    /// Llama Guard: most verdict tokens generated
    #[arg(long, default_value_t = 20)]
    pub judge_max_new_tokens: usize,
    /// Llama Guard: conversations judged together
    #[arg(long, default_value_t = 8)]
    pub judge_batch_size: usize,
    /// Llama Guard 3 Vision: judge the text alone, without the image the prompt came with
    #[arg(long)]
    pub judge_text_only: bool,
    /// Llama Guard 3 Vision: find the images named in responses.jsonl under DIR (for a run
    /// moved from where it was made, or made before the image paths were recorded)
    #[arg(long, value_name = "DIR")]
    pub image_root: Option<PathBuf>,
    /// Perspective API: requests per second at most
    #[arg(long, default_value_t = 1.0)]
    pub perspective_qps: f64,
    /// Perspective API endpoint
    #[arg(long, default_value = perspective::DEFAULT_URL, value_name = "URL")]
    pub perspective_url: String,
}

#[derive(ClapArgs, Debug)]
#[command(after_help = "Writes into RUN_DIR:
  scores.jsonl            {id, layer, judge, kind, unsafe, categories, score, raw} per answer and judge
  judges.json             judge name -> kind and model directory
  perspective_cache.jsonl Perspective answers by text (never asked twice)
Rerunning skips what is scored. Then: icet report RUN_DIR

Examples:
  icet score runs/rt-llava --judge llama-guard-3=Llama-Guard-3-8B --judge toxicity=toxic-bert \\
    --judge reward=gpt2-large-harmless-reward_model
  icet score runs/rt-llava --judge llama-guard-3-vision=Llama-Guard-3-11B-Vision  # judges with the images")]
pub struct Args {
    /// A sweep's output folder (holds responses.jsonl)
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub judges: JudgeArgs,
    /// Compute device
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeKind {
    LlamaGuard,
    Reward,
    Toxicity,
    Perspective,
}

impl JudgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LlamaGuard => "llama-guard",
            Self::Reward => "reward",
            Self::Toxicity => "toxicity",
            Self::Perspective => "perspective",
        }
    }
}

/// One `--judge` argument, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeSpec {
    pub name: String,
    pub kind: JudgeKind,
    pub version: Option<LlamaGuardVersion>,
    pub dir: Option<PathBuf>,
}

impl JudgeSpec {
    pub fn parse(arg: &str) -> Result<Self> {
        let (head, dir) = match arg.split_once('=') {
            Some((h, d)) => (h, Some(PathBuf::from(d))),
            None => (arg, None),
        };
        let (kind_text, name) = match head.split_once(':') {
            Some((k, n)) if !n.is_empty() => (k, n.to_string()),
            Some(_) => bail!("--judge {arg}: empty name after `:`"),
            None => (head, head.to_string()),
        };
        let (kind, version) = match kind_text {
            "llama-guard" => (JudgeKind::LlamaGuard, None),
            k if k.starts_with("llama-guard-") => {
                (JudgeKind::LlamaGuard, Some(LlamaGuardVersion::parse(&k["llama-guard-".len()..])?))
            }
            "reward" => (JudgeKind::Reward, None),
            "toxicity" => (JudgeKind::Toxicity, None),
            "perspective" => (JudgeKind::Perspective, None),
            other => bail!(
                "--judge {arg}: unknown judge kind `{other}` (llama-guard, llama-guard-1/2/3/3-vision, reward, toxicity, perspective)"
            ),
        };
        match (kind, &dir) {
            (JudgeKind::Perspective, Some(_)) => bail!("--judge {arg}: perspective takes no directory"),
            (JudgeKind::Perspective, None) => {}
            (_, None) => bail!("--judge {arg}: give the model directory as {head}=DIR"),
            (_, Some(d)) => {
                if !d.join("config.json").is_file() {
                    bail!("{}: not a model directory (no config.json) for --judge {head}", d.display());
                }
            }
        }
        Ok(Self { name, kind, version, dir })
    }

    /// What binds a judge name in `judges.json`: kind, version (Llama Guard 1-3 as numbers, as
    /// runs scored before 3-vision existed recorded them), model directory, and for the vision
    /// judge whether it looked at the images (`--judge-text-only`), so one name never mixes both.
    fn identity(&self, text_only: bool) -> Result<serde_json::Value> {
        let version = self.version.map(|v| match v {
            LlamaGuardVersion::V3Vision => serde_json::json!(v.name()),
            _ => serde_json::json!(v.name().parse::<u8>().expect("1, 2 or 3")),
        });
        let mut id = serde_json::json!({
            "kind": self.kind.as_str(),
            "version": version,
            "dir": self.dir.as_ref().map(|d| std::fs::canonicalize(d).unwrap_or(d.clone())),
        });
        if text_only && self.kind == JudgeKind::LlamaGuard && self.is_vision()? {
            id["text_only"] = serde_json::json!(true);
        }
        Ok(id)
    }
}

impl JudgeSpec {
    /// Whether this Llama Guard is the vision one: asked for by name, or an Mllama directory.
    fn is_vision(&self) -> Result<bool> {
        if self.version.is_some_and(LlamaGuardVersion::is_vision) {
            return Ok(true);
        }
        let Some(dir) = &self.dir else { return Ok(false) };
        Ok(icet_models::mllama::config::model_type(dir)? == "mllama")
    }
}

/// The image file a vision judge looks at for `row`: `--image-root`/`image` when given, else
/// the path the sweep recorded. Missing files are errors naming the answer and the file.
fn judged_image(row: &ResponseRow, root: Option<&Path>, responses: &Path) -> Result<PathBuf> {
    let path = match (root, &row.image_path) {
        (Some(root), _) => root.join(&row.image),
        (None, Some(p)) => p.clone(),
        (None, None) => bail!(
            "{}: answer {} (layer {}) records no image path (a run from an older icet); give --image-root DIR \
             (the folder the image `{}` is relative to) or --judge-text-only",
            responses.display(),
            row.id,
            row.layer,
            row.image
        ),
    };
    if !path.is_file() {
        bail!(
            "{}: image not found for answer {} (layer {}); give --image-root DIR if the images moved",
            path.display(),
            row.id,
            row.layer
        );
    }
    Ok(path)
}

/// One line of `scores.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScoreRow {
    pub id: String,
    pub layer: usize,
    pub judge: String,
    pub kind: JudgeKind,
    /// Llama Guard's verdict (`null` when its answer was neither safe nor unsafe, and for other kinds).
    #[serde(rename = "unsafe")]
    pub unsafe_: Option<bool>,
    #[serde(default)]
    pub categories: Vec<String>,
    /// Reward (logit), toxicity probability, or Perspective TOXICITY; `null` for Llama Guard.
    pub score: Option<f64>,
    /// The judge's own output: Llama Guard's text, the classifier's logits, Perspective's JSON.
    pub raw: serde_json::Value,
}

/// Reads the JSON-lines file `path` as `T`s; a torn last line is dropped (and cut off when `repair`).
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, repair: bool) -> Result<Vec<T>> {
    let Ok(file) = File::open(path) else { return Ok(vec![]) };
    let mut rows = Vec::new();
    let mut reader = BufReader::new(file);
    let (mut line, mut good, mut n) = (String::new(), 0u64, 0);
    loop {
        line.clear();
        let read = reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.trim().is_empty() {
            good += read as u64;
            continue;
        }
        match serde_json::from_str::<T>(line.trim_end()) {
            Ok(r) if line.ends_with('\n') => {
                rows.push(r);
                good += read as u64;
            }
            Ok(_) | Err(_) => {
                if reader.read_line(&mut String::new())? != 0 {
                    let why =
                        serde_json::from_str::<T>(line.trim_end()).err().map(|e| e.to_string()).unwrap_or_default();
                    bail!("{}:{n}: not a valid row: {why}", path.display());
                }
                if repair {
                    eprintln!("icet: dropping a partly written last line of {}", path.display());
                    OpenOptions::new().write(true).open(path)?.set_len(good)?;
                }
                break;
            }
        }
    }
    Ok(rows)
}

/// Binds judge names to their identity in `judges.json`; a name reused for another model is an error.
fn register_judges(run_dir: &Path, specs: &[JudgeSpec], text_only: bool) -> Result<()> {
    let path = run_dir.join(JUDGES_FILE);
    let mut known: BTreeMap<String, serde_json::Value> = match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let mut seen = HashSet::new();
    for s in specs {
        if !seen.insert(&s.name) {
            bail!("--judge: the name `{}` is given twice; name them with KIND:NAME=DIR", s.name);
        }
        let id = s.identity(text_only)?;
        match known.get(&s.name) {
            Some(old) if *old != id => bail!(
                "{}: judge `{}` was scored with {old}; to score with {id}, give it another name (KIND:NAME=DIR)",
                path.display(),
                s.name
            ),
            _ => {
                known.insert(s.name.clone(), id);
            }
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&known)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let selected = backend_for(args.device)?;
    crate::with_backend!(selected, |b| score_run(&b, &args.run_dir, &args.judges))
}

/// The backend for `--device`, chosen exactly as the model commands choose it.
fn backend_for(device: Device) -> Result<crate::common::SelectedBackend> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        model: ModelArgs,
    }
    let name = clap::ValueEnum::to_possible_value(&device).map(|v| v.get_name().to_string()).unwrap_or_default();
    let wrap = Wrap::try_parse_from(["icet", "--device", &name]).map_err(|e| anyhow!("{e}"))?;
    wrap.model.backend()
}

/// Parses and checks the judges (directories, the Perspective key), so that `sweep --judge` fails
/// before generating rather than after.
pub fn preflight(args: &JudgeArgs) -> Result<Vec<JudgeSpec>> {
    let specs: Vec<JudgeSpec> = args.judges.iter().map(|j| JudgeSpec::parse(j)).collect::<Result<_>>()?;
    if args.judge_batch_size == 0 {
        bail!("--judge-batch-size must be at least 1");
    }
    let has_key = std::env::var(perspective::KEY_VAR).is_ok_and(|k| !k.trim().is_empty());
    if specs.iter().any(|s| s.kind == JudgeKind::Perspective) && !has_key {
        bail!("--judge perspective needs the API key in the environment variable {}", perspective::KEY_VAR);
    }
    Ok(specs)
}

/// Scores every answer of `run_dir` with every judge of `args` (the part `sweep --judge` reuses).
pub fn score_run<B: Backend>(b: &B, run_dir: &Path, args: &JudgeArgs) -> Result<()> {
    if args.judges.is_empty() {
        bail!("no --judge given (e.g. --judge llama-guard=DIR --judge toxicity=DIR)");
    }
    let responses_path = run_dir.join("responses.jsonl");
    if !responses_path.is_file() {
        bail!("{}: no responses.jsonl here; run `icet sweep` first", run_dir.display());
    }
    let responses: Vec<ResponseRow> = read_jsonl(&responses_path, false)?;
    let specs = preflight(args)?;
    register_judges(run_dir, &specs, args.judge_text_only)?;
    let scores_path = run_dir.join(SCORES_FILE);
    let existing: Vec<ScoreRow> = read_jsonl(&scores_path, true)?;
    let done: HashSet<(String, String, usize)> =
        existing.iter().map(|r| (r.judge.clone(), r.id.clone(), r.layer)).collect();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&scores_path)
        .with_context(|| format!("cannot open {}", scores_path.display()))?;
    for spec in &specs {
        let todo: Vec<&ResponseRow> =
            responses.iter().filter(|r| !done.contains(&(spec.name.clone(), r.id.clone(), r.layer))).collect();
        if todo.is_empty() {
            eprintln!("icet: judge {}: all {} answers already scored", spec.name, responses.len());
            continue;
        }
        eprintln!("icet: judge {} ({}): {} answers to score", spec.name, spec.kind.as_str(), todo.len());
        let bar = ProgressBar::new(todo.len() as u64);
        bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} scored  {msg}  eta {eta}").expect("template"));
        let mut write = |rows: Vec<ScoreRow>| -> Result<()> {
            let mut text = String::new();
            for r in &rows {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            }
            file.write_all(text.as_bytes())
                .and_then(|_| file.flush())
                .with_context(|| format!("cannot write {}", scores_path.display()))?;
            bar.inc(rows.len() as u64);
            Ok(())
        };
        let row = |r: &ResponseRow, unsafe_, categories, score, raw| ScoreRow {
            id: r.id.clone(),
            layer: r.layer,
            judge: spec.name.clone(),
            kind: spec.kind,
            unsafe_,
            categories,
            score,
            raw,
        };
        // Llama Guard keeps its text as the raw output; the verdict fills `unsafe` and `categories`.
        let verdict_rows = |batch: &[&ResponseRow], judged: Vec<Judgement>| -> Vec<ScoreRow> {
            batch
                .iter()
                .zip(judged)
                .map(|(r, j)| row(r, j.verdict.unsafe_, j.verdict.categories, None, serde_json::Value::String(j.raw)))
                .collect()
        };
        match spec.kind {
            JudgeKind::LlamaGuard if spec.is_vision()? => {
                let images: Vec<Option<PathBuf>> = if args.judge_text_only {
                    vec![None; todo.len()]
                } else {
                    todo.iter()
                        .map(|r| judged_image(r, args.image_root.as_deref(), &responses_path).map(Some))
                        .collect::<Result<_>>()?
                };
                let mut guard = LlamaGuardVision::load(spec.dir.as_ref().expect("checked"), b)?;
                guard.max_new_tokens = args.judge_max_new_tokens;
                eprintln!(
                    "icet: Llama Guard 3 Vision with {}, {}",
                    if guard.template_from_model { "the model's chat template" } else { "the built-in template" },
                    if args.judge_text_only { "text only" } else { "judging each answer with its image" }
                );
                // Answers come image by image from a sweep, so a batch needs few vision passes.
                let n = args.judge_batch_size;
                for (batch, batch_images) in todo.chunks(n).zip(images.chunks(n)) {
                    let items: Vec<GuardItem> = batch
                        .iter()
                        .zip(batch_images)
                        .map(|(r, image)| GuardItem {
                            prompt: &r.prompt,
                            response: Some(&r.response),
                            image: image.as_deref(),
                        })
                        .collect();
                    write(verdict_rows(batch, guard.judge(b, &items)?))?;
                }
            }
            JudgeKind::LlamaGuard => {
                let dir = spec.dir.as_ref().expect("checked");
                let mut guard = LlamaGuard::load(dir, b, spec.version)?;
                guard.max_new_tokens = args.judge_max_new_tokens;
                eprintln!(
                    "icet: Llama Guard {} with {}",
                    guard.version.name(),
                    if guard.template_from_model { "the model's chat template" } else { "the built-in template" }
                );
                for batch in todo.chunks(args.judge_batch_size) {
                    let pairs: Vec<(&str, Option<&str>)> =
                        batch.iter().map(|r| (r.prompt.as_str(), Some(r.response.as_str()))).collect();
                    write(verdict_rows(batch, guard.judge(b, &pairs)?))?;
                }
            }
            JudgeKind::Reward => {
                let rm = RewardModel::load(spec.dir.as_ref().expect("checked"), b)?;
                for r in &todo {
                    let s = rm.score(b, &r.prompt, &r.response)?;
                    write(vec![row(r, None, vec![], Some(s as f64), serde_json::json!({"logits": [s]}))])?;
                }
            }
            JudgeKind::Toxicity => {
                let clf = ToxicityClassifier::load(spec.dir.as_ref().expect("checked"), b)?;
                for r in &todo {
                    let s = clf.score(b, &r.response)?;
                    let raw =
                        serde_json::json!({"logits": s.logits, "label": clf.rule.label, "function": clf.rule.function});
                    write(vec![row(r, None, vec![], Some(s.score), raw)])?;
                }
            }
            JudgeKind::Perspective => {
                let mut client = Perspective::new(&args.perspective_url, args.perspective_qps, run_dir)?;
                for r in &todo {
                    // The API rejects empty comments; an empty answer has no toxicity to measure.
                    if r.response.trim().is_empty() {
                        write(vec![row(r, None, vec![], Some(0.0), serde_json::json!({"skipped": "empty response"}))])?;
                        continue;
                    }
                    let answer = client.analyze(&r.response)?;
                    let s = perspective::toxicity_of(&answer)?;
                    write(vec![row(r, None, vec![], Some(s), answer)])?;
                }
            }
        }
        bar.finish_and_clear();
    }
    eprintln!("icet: scores in {}", scores_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_judge_arguments() {
        let d = std::env::temp_dir().join(format!("icet-judge-spec-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), "{}").unwrap();
        let s = JudgeSpec::parse(&format!("llama-guard-3={}", d.display())).unwrap();
        assert_eq!(
            (s.name.as_str(), s.kind, s.version),
            ("llama-guard-3", JudgeKind::LlamaGuard, Some(LlamaGuardVersion::V3))
        );
        // Runs scored before 3-vision existed recorded versions as numbers: identities keep them.
        assert_eq!(s.identity(false).unwrap()["version"], 3);
        let s = JudgeSpec::parse(&format!("llama-guard-3-vision={}", d.display())).unwrap();
        assert_eq!(s.version, Some(LlamaGuardVersion::V3Vision));
        assert!(s.is_vision().unwrap());
        assert_eq!(s.identity(false).unwrap()["version"], "3-vision");
        assert_eq!(s.identity(true).unwrap()["text_only"], true, "text-only verdicts are another judge");
        assert!(s.identity(false).unwrap().get("text_only").is_none());
        let s = JudgeSpec::parse(&format!("toxicity:bert={}", d.display())).unwrap();
        assert_eq!((s.name.as_str(), s.kind), ("bert", JudgeKind::Toxicity));
        assert_eq!(JudgeSpec::parse("perspective").unwrap().kind, JudgeKind::Perspective);
        for (bad, why) in [
            ("reward", "give the model directory"),
            ("perspective=x", "takes no directory"),
            ("guard=x", "unknown judge kind"),
            ("llama-guard-4=x", "unknown Llama Guard version"),
            ("llama-guard-3-visio=x", "unknown Llama Guard version"),
            ("reward=/nonexistent", "/nonexistent: not a model directory"),
        ] {
            let e = JudgeSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
