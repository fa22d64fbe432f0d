//! The numbers of a report: every metric per vision layer and per third of one run, with their
//! bootstrapped intervals, computed from the run's answers and scores. Everything that shows
//! them (the Markdown/CSV/JSON tables and plots in `super`, the safety-utility view,
//! report.html) reads these types and computes nothing of its own.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use icet_models::backend::splitmix64;
use serde::Serialize;

use crate::refusal::REFUSAL_RATE;
use crate::run_dir::{JudgeKind, ResponseRow, RunDir, ScoreRow};
use crate::shard::{describe_incomplete, ShardStatus};
use crate::stats::{estimate, fnv1a, Estimate, FNV_OFFSET};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metric {
    pub key: String,
    pub title: String,
    /// "rate" (shown as %), "toxicity" (shown ×100) or "score" (shown as is).
    pub unit: &'static str,
    /// The judge a hazard-category metric belongs to (empty for the others).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub judge: String,
}

impl Metric {
    fn new(key: String, title: String, unit: &'static str) -> Self {
        Self { key, title, unit, judge: String::new() }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    /// The layer number, or Early / Middle / Late / Average.
    pub row: String,
    pub layers: Vec<usize>,
    pub is_default: bool,
    pub values: BTreeMap<String, Estimate>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunReport {
    pub label: String,
    pub dir: PathBuf,
    pub num_layers: usize,
    pub default_layer: Option<usize>,
    pub metrics: Vec<Metric>,
    /// `category:JUDGE:C` for every hazard category a Llama Guard judge flagged, in code order.
    pub category_metrics: Vec<Metric>,
    /// `vqa:JUDGE:T` for every answer type a VQA judge scored, by judge then type.
    pub answer_type_metrics: Vec<Metric>,
    /// Per Llama Guard judge: answers whose verdict was neither safe nor unsafe (not in its ASR).
    pub unparsed_verdicts: BTreeMap<String, usize>,
    /// Empty answers (no token before the end): neither refusals nor compliance, so left out of
    /// the refusal rate and its `n`; said under the table.
    pub empty_answers: usize,
    pub layers: Vec<Row>,
    pub groups: Vec<Row>,
    /// A run made in shards: how far each shard got (one that still owes answers is named in the
    /// report, whose numbers are then of the answers there are).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardStatus>,
}

/// Per metric, per layer: the per-answer values (0/1 for rates).
type Samples = BTreeMap<String, BTreeMap<usize, Vec<f64>>>;

/// What [`collect`] finds in one run.
pub struct Collected {
    pub metrics: Vec<Metric>,
    pub category_metrics: Vec<Metric>,
    pub answer_type_metrics: Vec<Metric>,
    pub samples: Samples,
    pub unparsed: BTreeMap<String, usize>,
    /// Empty answers, left out of the refusal rate.
    pub empty: usize,
}

/// Sort key of a hazard category code: `S2` before `S10`, letters first (`O1` before `S1`).
fn category_order(code: &str) -> (String, u64, String) {
    let digits = code.trim_start_matches(|c: char| !c.is_ascii_digit());
    let prefix = &code[..code.len() - digits.len()];
    (prefix.to_string(), digits.parse().unwrap_or(u64::MAX), code.to_string())
}

/// How a judge kind's scores become a report metric.
struct KindMetric {
    /// Metric keys are `{prefix}:{judge}`.
    prefix: &'static str,
    /// Titles are `{title} ({judge})`; "ASR" always names its judge.
    title: &'static str,
    unit: &'static str,
    /// The sample is the safe/unsafe verdict (0/1), else the score.
    verdict: bool,
}

fn metric_of(kind: JudgeKind) -> KindMetric {
    match kind {
        JudgeKind::LlamaGuard => KindMetric { prefix: "asr", title: "ASR", unit: "rate", verdict: true },
        JudgeKind::Toxicity | JudgeKind::Perspective => {
            KindMetric { prefix: "toxicity", title: "toxicity", unit: "toxicity", verdict: false }
        }
        JudgeKind::Reward => KindMetric { prefix: "reward", title: "reward", unit: "score", verdict: false },
        JudgeKind::Vqa => KindMetric { prefix: "vqa", title: "VQA accuracy", unit: "rate", verdict: false },
    }
}

/// Collects the per-answer values of every metric of one run.
pub fn collect(responses: &[ResponseRow], scores: &[ScoreRow]) -> Collected {
    let mut metrics = vec![Metric::new(REFUSAL_RATE.into(), "refusal rate".into(), "rate")];
    let mut samples: Samples = BTreeMap::new();
    let answered: BTreeSet<(String, usize)> = responses.iter().map(|r| (r.id.clone(), r.layer)).collect();
    // Empty answers are neither refusals nor compliance (as in the sweep's summary).
    for r in responses.iter().filter(|r| !r.is_empty_answer()) {
        samples.entry(REFUSAL_RATE.into()).or_default().entry(r.layer).or_default().push(r.refusal as u8 as f64);
    }
    let mut judges: Vec<(String, JudgeKind)> = Vec::new();
    let mut unparsed: BTreeMap<String, usize> = BTreeMap::new();
    for s in scores {
        if !answered.contains(&(s.id.clone(), s.layer)) {
            continue; // a score of an answer no longer in responses.jsonl
        }
        if !judges.iter().any(|(j, _)| *j == s.judge) {
            judges.push((s.judge.clone(), s.kind));
        }
        if s.kind == JudgeKind::LlamaGuard && s.unsafe_.is_none() {
            *unparsed.entry(s.judge.clone()).or_default() += 1;
        }
        let reads = metric_of(s.kind);
        let value = if reads.verdict { s.unsafe_.map(|u| u as u8 as f64) } else { s.score };
        let Some(value) = value else { continue };
        let key = format!("{}:{}", reads.prefix, s.judge);
        samples.entry(key).or_default().entry(s.layer).or_default().push(value);
    }
    // Hazard categories: per Llama Guard judge, every category it flagged anywhere, as a 0/1
    // sample on each of its parsed verdicts (the ASR's denominator).
    let verdicts: Vec<&ScoreRow> = scores
        .iter()
        .filter(|s| s.kind == JudgeKind::LlamaGuard && s.unsafe_.is_some())
        .filter(|s| answered.contains(&(s.id.clone(), s.layer)))
        .collect();
    let mut flagged: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in &verdicts {
        flagged.entry(&s.judge).or_default().extend(s.categories.iter().map(String::as_str));
    }
    let mut category_metrics = Vec::new();
    for (judge, codes) in &flagged {
        let mut codes: Vec<&str> = codes.iter().copied().collect();
        codes.sort_by_key(|c| category_order(c));
        for code in codes {
            let key = format!("category:{judge}:{code}");
            for s in verdicts.iter().filter(|s| s.judge == *judge) {
                let hit = s.categories.iter().any(|c| c == code);
                samples.entry(key.clone()).or_default().entry(s.layer).or_default().push(hit as u8 as f64);
            }
            category_metrics.push(Metric { key, title: code.to_string(), unit: "rate", judge: judge.to_string() });
        }
    }
    // Answer types: per VQA judge, each answer's accuracy under its question's type.
    let mut types: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in scores.iter().filter(|s| s.kind == JudgeKind::Vqa && answered.contains(&(s.id.clone(), s.layer))) {
        let (Some(t), Some(v)) = (s.raw["answer_type"].as_str(), s.score) else { continue };
        types.entry(&s.judge).or_default().insert(t);
        samples.entry(format!("vqa:{}:{t}", s.judge)).or_default().entry(s.layer).or_default().push(v);
    }
    let answer_type_metrics = types
        .iter()
        .flat_map(|(judge, ts)| {
            ts.iter().map(move |t| Metric {
                key: format!("vqa:{judge}:{t}"),
                title: t.to_string(),
                unit: "rate",
                judge: judge.to_string(),
            })
        })
        .collect();
    judges.sort_by_key(|(j, k)| (*k as u8, j.clone()));
    for (j, k) in judges {
        let m = metric_of(k);
        metrics.push(Metric::new(format!("{}:{j}", m.prefix), format!("{} ({j})", m.title), m.unit));
    }
    let empty = responses.iter().filter(|r| r.is_empty_answer()).count();
    Collected { metrics, category_metrics, answer_type_metrics, samples, unparsed, empty }
}

/// Builds the report of one run from its files.
pub fn run_report(dir: &Path, label: &str, resamples: usize, seed: u64) -> Result<RunReport> {
    let run = RunDir::open(dir);
    if !run.has_responses() {
        bail!("{}: no responses.jsonl (not a sweep folder)", dir.display());
    }
    let answers = run.answers()?;
    let shards = run.shard_status(&answers)?.unwrap_or_default();
    if let Some(note) = describe_incomplete(&shards) {
        eprintln!("icet: warning: {}: {note}; its tables are of the answers there are", dir.display());
    }
    let responses = answers.rows;
    if responses.is_empty() {
        bail!("{}: no answers", run.path(crate::run_dir::RESPONSES).display());
    }
    let scores = run.scores()?;
    let default_layer = run.manifest()?.and_then(|m| m.default_layer);
    // The vision tower's depth: from the sweep's summary, else the deepest layer answered.
    let num_layers = run.num_layers().unwrap_or_else(|| responses.iter().map(|r| r.layer).max().unwrap_or(0));
    let Collected { metrics, category_metrics, answer_type_metrics, samples, unparsed: unparsed_verdicts, empty } =
        collect(&responses, &scores);
    let mut layer_rows: BTreeMap<usize, Row> = BTreeMap::new();
    let mut group_rows: Vec<Row> = Vec::new();
    for (k, m) in metrics.iter().chain(&category_metrics).chain(&answer_type_metrics).enumerate() {
        let Some(per_layer) = samples.get(&m.key) else { continue };
        // One stream per metric, so adding a judge does not change the others' intervals.
        let (layers, groups) =
            estimate(per_layer, num_layers, resamples, splitmix64(seed ^ k as u64 ^ fnv1a(FNV_OFFSET, m.key.bytes())));
        for (l, e) in layers {
            layer_rows
                .entry(l)
                .or_insert_with(|| Row {
                    row: l.to_string(),
                    layers: vec![l],
                    is_default: Some(l) == default_layer,
                    values: BTreeMap::new(),
                })
                .values
                .insert(m.key.clone(), e);
        }
        for (name, layers, e) in groups {
            match group_rows.iter_mut().find(|r| r.row == name) {
                Some(r) => {
                    r.values.insert(m.key.clone(), e);
                }
                None => group_rows.push(Row {
                    row: name,
                    layers,
                    is_default: false,
                    values: BTreeMap::from([(m.key.clone(), e)]),
                }),
            }
        }
    }
    let order = ["Early", "Middle", "Late", "Average"];
    group_rows.sort_by_key(|r| order.iter().position(|o| *o == r.row));
    Ok(RunReport {
        label: label.to_string(),
        dir: dir.to_path_buf(),
        num_layers,
        default_layer,
        metrics,
        category_metrics,
        answer_type_metrics,
        unparsed_verdicts,
        empty_answers: empty,
        layers: layer_rows.into_values().collect(),
        groups: group_rows,
        shards,
    })
}
