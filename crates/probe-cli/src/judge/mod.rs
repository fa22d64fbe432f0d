//! Judges of a sweep's answers behind one trait, [`Judge`], so that scoring is one loop
//! ([`crate::score`]). `--judge KIND=DIR` names one; [`KINDS`] lists what KIND may be, and
//! [`load`] builds the judge. Adding a judge is its impl plus a row in [`KINDS`] and an arm in
//! [`load`].
//!
//! Judges (KIND):
//!   llama-guard[-1|-2|-3]=DIR  Llama Guard on (prompt, response); version detected unless given
//!   llama-guard-3-vision=DIR   Llama-Guard-3-11B-Vision on (image, prompt, response); an Mllama
//!                              directory given as `llama-guard=DIR` is this judge too
//!   reward=DIR                 GPT-2 reward model on the HH pair ("\n\nHuman: PROMPT\n\nAssistant:", RESPONSE);
//!                              a DeBERTa-v2/v3 directory (OpenAssistant's reward models) on (PROMPT, RESPONSE)
//!   toxicity=DIR               BERT/RoBERTa toxicity classifier on the response
//!   perspective                Perspective API TOXICITY of the response (key: PERSPECTIVE_API_KEY)
//!   vqa[=ANNOTATIONS]          the official VQA accuracy of the answer (a VQA-v2 run's annotations,
//!                              or the file given), [`vqa`]
//! `KIND:NAME=DIR` names the judge (default: KIND), so two judges of one kind can be compared.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use icet_models::backend::Backend;
use icet_models::judges::classifier::{RewardModel, ToxicityClassifier};
use icet_models::judges::deberta_reward::{is_deberta_dir, DebertaReward};
use icet_models::judges::llama_guard::LlamaGuardVersion;

use crate::run_dir::{JudgeKind, RunDir};

pub mod models;
pub mod perspective;
pub mod vqa;

/// One answer to judge.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// The data row's id (a VQA question id for the VQA judge).
    pub id: &'a str,
    pub prompt: &'a str,
    pub response: &'a str,
    /// The image the prompt was asked about, for judges that look at it.
    pub image: Option<&'a Path>,
}

/// One judge's output for one answer, as `scores.jsonl` keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Safe/unsafe judges: the verdict (`None` when it was neither).
    pub unsafe_: Option<bool>,
    pub categories: Vec<String>,
    /// Scoring judges: the score.
    pub score: Option<f64>,
    /// The judge's own output.
    pub raw: serde_json::Value,
}

impl Verdict {
    /// A scoring judge's output.
    pub fn score(score: f64, raw: serde_json::Value) -> Self {
        Self { unsafe_: None, categories: vec![], score: Some(score), raw }
    }
}

/// A judge of answers.
pub trait Judge<B: Backend> {
    /// Answers judged in one call (and written after it).
    fn batch_size(&self) -> usize {
        1
    }
    /// One verdict per answer, in order.
    fn judge(&mut self, b: &B, answers: &[Answer]) -> Result<Vec<Verdict>>;
}

/// Judge options shared by `score` and `sweep`.
#[derive(ClapArgs, Clone, Debug, Default)]
pub struct JudgeArgs {
    /// A judge: `llama-guard[-1|-2|-3|-3-vision]=DIR`, `reward=DIR`, `toxicity=DIR`,
    /// `perspective` or `vqa` (`KIND:NAME=DIR` names it); repeat for several
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
    /// VQA: how answers are written into the results file the official evaluation scores
    #[arg(long, value_enum, default_value_t = crate::vqa::answers::AnswerPrep::Llava)]
    pub vqa_answers: crate::vqa::answers::AnswerPrep,
}

/// A `--judge` KIND: its name, the kind of scores it writes, whether it takes a model directory.
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    pub name: &'static str,
    pub kind: JudgeKind,
    pub takes_dir: bool,
}

/// Every `--judge` KIND (Llama Guard also as `llama-guard-VERSION`).
pub const KINDS: &[KindInfo] = &[
    KindInfo { name: "llama-guard", kind: JudgeKind::LlamaGuard, takes_dir: true },
    KindInfo { name: "reward", kind: JudgeKind::Reward, takes_dir: true },
    KindInfo { name: "toxicity", kind: JudgeKind::Toxicity, takes_dir: true },
    KindInfo { name: "perspective", kind: JudgeKind::Perspective, takes_dir: false },
    // Takes an annotations file optionally (else the run's): see `JudgeSpec::parse`.
    KindInfo { name: "vqa", kind: JudgeKind::Vqa, takes_dir: false },
];

/// One `--judge` argument, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeSpec {
    pub name: String,
    pub kind: JudgeKind,
    pub version: Option<LlamaGuardVersion>,
    /// The model directory; for `vqa`, the annotations file (given, or the run's: [`vqa::resolve`]).
    pub dir: Option<PathBuf>,
    /// `vqa`: how answers are prepared (set by [`vqa::resolve`]).
    pub vqa_answers: Option<crate::vqa::answers::AnswerPrep>,
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
        let (info, version) = match kind_text.strip_prefix("llama-guard-") {
            Some(v) => (KINDS[0], Some(LlamaGuardVersion::parse(v)?)),
            None => match KINDS.iter().find(|k| k.name == kind_text) {
                Some(k) => (*k, None),
                None => bail!(
                    "--judge {arg}: unknown judge kind `{kind_text}` (llama-guard, llama-guard-1/2/3/3-vision, reward, toxicity, perspective, vqa)"
                ),
            },
        };
        match (info.takes_dir, &dir) {
            (false, Some(f)) if info.kind == JudgeKind::Vqa => {
                if !f.is_file() {
                    bail!("{}: no such annotations file for --judge {head}", f.display());
                }
            }
            (false, Some(_)) => bail!("--judge {arg}: {} takes no directory", info.name),
            (false, None) => {}
            (true, None) => bail!("--judge {arg}: give the model directory as {head}=DIR"),
            (true, Some(d)) => {
                if !d.join("config.json").is_file() {
                    bail!("{}: not a model directory (no config.json) for --judge {head}", d.display());
                }
            }
        }
        Ok(Self { name, kind: info.kind, version, dir, vqa_answers: None })
    }

    /// What binds a judge name in `judges.json`: kind, version (Llama Guard 1-3 as numbers, as
    /// runs scored before 3-vision existed recorded them), model directory, and for the vision
    /// judge whether it looked at the images (`--judge-text-only`), so one name never mixes both;
    /// for `vqa` the annotations file's SHA-256.
    pub fn identity(&self, text_only: bool) -> Result<serde_json::Value> {
        let version = self.version.map(|v| match v {
            LlamaGuardVersion::V3Vision => serde_json::json!(v.name()),
            _ => serde_json::json!(v.name().parse::<u8>().expect("1, 2 or 3")),
        });
        let mut id = serde_json::json!({
            "kind": self.kind.as_str(),
            "version": version,
            "dir": self.dir.as_ref().map(|d| std::fs::canonicalize(d).unwrap_or(d.clone())),
        });
        if text_only && self.is_vision()? {
            id["text_only"] = serde_json::json!(true);
        }
        if let Some(prep) = self.vqa_answers {
            id["answers"] = serde_json::json!(prep.name());
        }
        if self.kind == JudgeKind::Vqa {
            // The annotations are the judge: scores against an edited file are never mixed
            // with the old ones under one name.
            if let Some(file) = &self.dir {
                id["sha256"] = serde_json::json!(crate::fingerprint::file_sha256(file)?);
            }
        }
        Ok(id)
    }

    /// Whether this is Llama Guard 3 Vision: asked for by name, or an Mllama directory.
    pub fn is_vision(&self) -> Result<bool> {
        if self.kind != JudgeKind::LlamaGuard {
            return Ok(false);
        }
        if self.version.is_some_and(LlamaGuardVersion::is_vision) {
            return Ok(true);
        }
        let dir = self.dir.as_ref().expect("checked");
        Ok(icet_models::vlm::registry::model_type(dir)? == "mllama")
    }

    /// Whether judging needs each answer's image (the vision judge, unless text only).
    pub fn needs_images(&self, text_only: bool) -> Result<bool> {
        Ok(!text_only && self.is_vision()?)
    }

    fn dir(&self) -> &Path {
        self.dir.as_deref().expect("checked when parsed")
    }
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

/// Loads the judge `spec` names onto `b` (Perspective caches its answers in `run`), and says on
/// stderr how it will judge.
pub fn load<'a, B: Backend>(
    spec: &JudgeSpec,
    args: &JudgeArgs,
    b: &'a B,
    run: &RunDir,
) -> Result<Box<dyn Judge<B> + 'a>> {
    Ok(match spec.kind {
        JudgeKind::LlamaGuard if spec.is_vision()? => Box::new(models::GuardVisionJudge::load(
            spec.dir(),
            b,
            args.judge_max_new_tokens,
            args.judge_batch_size,
            args.judge_text_only,
        )?),
        JudgeKind::LlamaGuard => Box::new(models::GuardJudge::load(
            spec.dir(),
            b,
            spec.version,
            args.judge_max_new_tokens,
            args.judge_batch_size,
        )?),
        JudgeKind::Reward if is_deberta_dir(spec.dir()) => {
            eprintln!("icet: reward model {}: DeBERTa-v2/v3 on (prompt, response)", spec.dir().display());
            Box::new(DebertaReward::load(spec.dir(), b)?)
        }
        JudgeKind::Reward => Box::new(RewardModel::load(spec.dir(), b)?),
        JudgeKind::Vqa => Box::new(vqa::VqaJudge::load(spec.dir(), spec.vqa_answers.unwrap_or_default())?),
        JudgeKind::Toxicity => Box::new(ToxicityClassifier::load(spec.dir(), b)?),
        JudgeKind::Perspective => Box::new(perspective::Perspective::new(
            &args.perspective_url,
            args.perspective_qps,
            &run.path(&run.perspective_cache_file()),
        )?),
    })
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
            ("vqa=/nonexistent.json", "/nonexistent.json: no such annotations file"),
        ] {
            let e = JudgeSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
