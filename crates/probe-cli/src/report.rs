//! `icet report RUN_DIR [RUN_DIR...]`: the paper's per-layer tables and plots from scored runs.
//!
//! Metrics per vision layer (each with a bootstrapped 95% interval):
//!   refusal_rate       share of answers with a refusal phrase (the sweep's keyword detector)
//!   asr:JUDGE          share of answers a Llama Guard judge called unsafe (answers whose verdict
//!                      could not be parsed are left out of the denominator; their count is `n`)
//!   toxicity:JUDGE     mean toxicity probability (local classifier or Perspective; Markdown ×100, as the paper)
//!   reward:JUDGE       mean reward-model score
//!   category:JUDGE:C   share of a Llama Guard judge's parsed verdicts that flag hazard category C
//!                      (its own table: which hazards appear at which layers)
//! Rows Early / Middle / Late / Average are means of the per-layer values over layers 1..L split
//! in thirds ([`third_of`]), as the paper's AASR/ATS/ATR; layer 0 (embeddings) stands alone.
//!
//! Intervals: percentile bootstrap with `--bootstrap` resamples (default 1000). In every resample
//! each layer's answers are redrawn with replacement (SplitMix64 seeded by `--seed`), the layer
//! means recomputed, and the group rows recomputed from those, so a group's interval reflects
//! every layer's sampling noise. Percentiles interpolate linearly between order statistics
//! (numpy's default).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use icet_models::backend::splitmix64;
use plotters::prelude::*;
use serde::Serialize;

use crate::score::{read_jsonl, JudgeKind, ScoreRow, SCORES_FILE};
use crate::summary::{third_of, ResponseRow};

#[derive(ClapArgs, Debug)]
#[command(after_help = "Writes into --out (default RUN_DIR/report for one run):
  report.md / report.csv / report.json   per-layer and Early/Middle/Late/Average rows, 95% intervals;
                                         Llama Guard hazard categories by layer in their own tables
  <metric>.svg / <metric>.png            each metric against layer, one line per run, default layer marked
  report.html                            one page: tables, hover plots, answer browser,
                                         each prompt's answers at every layer

Example: icet report runs/rt-llava runs/rt-llava-defended --label before --label after --out runs/compare")]
pub struct Args {
    /// Scored sweep folders (responses.jsonl, manifest.json, optionally scores.jsonl)
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder (required with several runs)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Name of each run in tables and legends, in order (default: the folder name)
    #[arg(long = "label", value_name = "NAME")]
    pub labels: Vec<String>,
    /// Bootstrap resamples for the 95% intervals
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub html: crate::report_html::HtmlArgs,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Answers behind the value (for group rows: summed over its layers).
    pub n: usize,
}

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
    /// Per Llama Guard judge: answers whose verdict was neither safe nor unsafe (not in its ASR).
    pub unparsed_verdicts: BTreeMap<String, usize>,
    pub layers: Vec<Row>,
    pub groups: Vec<Row>,
}

/// Per metric, per layer: the per-answer values (0/1 for rates).
type Samples = BTreeMap<String, BTreeMap<usize, Vec<f64>>>;

/// What [`collect`] finds in one run.
pub struct Collected {
    pub metrics: Vec<Metric>,
    pub category_metrics: Vec<Metric>,
    pub samples: Samples,
    pub unparsed: BTreeMap<String, usize>,
}

/// Sort key of a hazard category code: `S2` before `S10`, letters first (`O1` before `S1`).
fn category_order(code: &str) -> (String, u64, String) {
    let digits = code.trim_start_matches(|c: char| !c.is_ascii_digit());
    let prefix = &code[..code.len() - digits.len()];
    (prefix.to_string(), digits.parse().unwrap_or(u64::MAX), code.to_string())
}

/// Collects the per-answer values of every metric of one run.
pub fn collect(responses: &[ResponseRow], scores: &[ScoreRow]) -> Collected {
    let mut metrics = vec![Metric::new("refusal_rate".into(), "refusal rate".into(), "rate")];
    let mut samples: Samples = BTreeMap::new();
    let answered: BTreeSet<(String, usize)> = responses.iter().map(|r| (r.id.clone(), r.layer)).collect();
    for r in responses {
        samples.entry("refusal_rate".into()).or_default().entry(r.layer).or_default().push(r.refusal as u8 as f64);
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
        let (key, value) = match s.kind {
            JudgeKind::LlamaGuard => match s.unsafe_ {
                Some(u) => (format!("asr:{}", s.judge), u as u8 as f64),
                None => continue,
            },
            JudgeKind::Toxicity | JudgeKind::Perspective => match s.score {
                Some(v) => (format!("toxicity:{}", s.judge), v),
                None => continue,
            },
            JudgeKind::Reward => match s.score {
                Some(v) => (format!("reward:{}", s.judge), v),
                None => continue,
            },
        };
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
    judges.sort_by_key(|(j, k)| (*k as u8, j.clone()));
    for (j, k) in judges {
        metrics.push(match k {
            JudgeKind::LlamaGuard => Metric::new(format!("asr:{j}"), format!("ASR ({j})"), "rate"),
            JudgeKind::Toxicity | JudgeKind::Perspective => {
                Metric::new(format!("toxicity:{j}"), format!("toxicity ({j})"), "toxicity")
            }
            JudgeKind::Reward => Metric::new(format!("reward:{j}"), format!("reward ({j})"), "score"),
        });
    }
    Collected { metrics, category_metrics, samples, unparsed }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// numpy's `percentile(values, q)` with linear interpolation; `values` sorted.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn interval(mut draws: Vec<f64>, value: f64) -> (f64, f64) {
    if draws.is_empty() {
        return (value, value);
    }
    draws.sort_by(f64::total_cmp);
    (percentile(&draws, 2.5), percentile(&draws, 97.5))
}

/// A group row: its name, its layers and its estimate.
pub type GroupEstimate = (String, Vec<usize>, Estimate);

/// Per-layer and group estimates of one metric.
pub fn estimate(
    per_layer: &BTreeMap<usize, Vec<f64>>,
    num_layers: usize,
    resamples: usize,
    seed: u64,
) -> (BTreeMap<usize, Estimate>, Vec<GroupEstimate>) {
    let layers: Vec<usize> = per_layer.keys().copied().filter(|l| !per_layer[l].is_empty()).collect();
    // draws[b][i] = mean of resample b of layer layers[i]
    let mut state = seed;
    let mut draws = vec![vec![0.0; layers.len()]; resamples];
    for row in draws.iter_mut() {
        for (i, l) in layers.iter().enumerate() {
            let v = &per_layer[l];
            let mut sum = 0.0;
            for _ in 0..v.len() {
                state = splitmix64(state);
                sum += v[(state % v.len() as u64) as usize];
            }
            row[i] = sum / v.len() as f64;
        }
    }
    let mut out = BTreeMap::new();
    for (i, l) in layers.iter().enumerate() {
        let value = mean(&per_layer[l]);
        let (lo, hi) = interval(draws.iter().map(|d| d[i]).collect(), value);
        out.insert(*l, Estimate { value, ci_low: lo, ci_high: hi, n: per_layer[l].len() });
    }
    let mut groups = Vec::new();
    let names = ["Early", "Middle", "Late"];
    let members = |g: Option<usize>| -> Vec<usize> {
        (0..layers.len())
            .filter(|&i| match g {
                Some(g) => third_of(layers[i], num_layers) == Some(g),
                None => third_of(layers[i], num_layers).is_some(),
            })
            .collect()
    };
    for (g, name) in [(Some(0), names[0]), (Some(1), names[1]), (Some(2), names[2]), (None, "Average")] {
        let idx = members(g);
        if idx.is_empty() {
            continue;
        }
        let value = mean(&idx.iter().map(|&i| out[&layers[i]].value).collect::<Vec<_>>());
        let group_draws: Vec<f64> =
            draws.iter().map(|d| mean(&idx.iter().map(|&i| d[i]).collect::<Vec<_>>())).collect();
        let (lo, hi) = interval(group_draws, value);
        let n = idx.iter().map(|&i| per_layer[&layers[i]].len()).sum();
        groups.push((
            name.to_string(),
            idx.iter().map(|&i| layers[i]).collect(),
            Estimate { value, ci_low: lo, ci_high: hi, n },
        ));
    }
    (out, groups)
}

/// Builds the report of one run from its files.
pub fn run_report(dir: &Path, label: &str, resamples: usize, seed: u64) -> Result<RunReport> {
    let responses_path = dir.join("responses.jsonl");
    if !responses_path.is_file() {
        bail!("{}: no responses.jsonl (not a sweep folder)", dir.display());
    }
    let responses: Vec<ResponseRow> = read_jsonl(&responses_path, false)?;
    if responses.is_empty() {
        bail!("{}: no answers", responses_path.display());
    }
    let scores: Vec<ScoreRow> = read_jsonl(&dir.join(SCORES_FILE), false)?;
    let manifest: serde_json::Value = match std::fs::read_to_string(dir.join("manifest.json")) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{}: invalid JSON", dir.join("manifest.json").display()))?,
        Err(_) => serde_json::Value::Null,
    };
    let default_layer = manifest["default_layer"].as_u64().map(|l| l as usize);
    // The vision tower's depth: from the sweep's summary, else the deepest layer answered.
    let num_layers = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["num_layers"].as_u64())
        .map(|n| n as usize)
        .unwrap_or_else(|| responses.iter().map(|r| r.layer).max().unwrap_or(0));
    let Collected { metrics, category_metrics, samples, unparsed: unparsed_verdicts } = collect(&responses, &scores);
    let mut layer_rows: BTreeMap<usize, Row> = BTreeMap::new();
    let mut group_rows: Vec<Row> = Vec::new();
    for (k, m) in metrics.iter().chain(&category_metrics).enumerate() {
        let Some(per_layer) = samples.get(&m.key) else { continue };
        // One stream per metric, so adding a judge does not change the others' intervals.
        let (layers, groups) = estimate(per_layer, num_layers, resamples, splitmix64(seed ^ k as u64 ^ hash(&m.key)));
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
        unparsed_verdicts,
        layers: layer_rows.into_values().collect(),
        groups: group_rows,
    })
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

fn shown(m: &Metric, v: f64) -> f64 {
    match m.unit {
        "rate" | "toxicity" => v * 100.0,
        _ => v,
    }
}

/// The Markdown tables (one per run).
pub fn markdown(runs: &[RunReport]) -> String {
    let mut s = String::from("# ICET report\n\n");
    s.push_str(
        "Values with bootstrapped 95% intervals. Rates (refusal, ASR) in %, toxicity ×100, reward as scored. \
`*` marks the model's default layer; Early/Middle/Late/Average are means over the layers in the paper's thirds.\n",
    );
    for r in runs {
        let _ = writeln!(s, "\n## {}\n\n`{}` — {} vision layers\n", r.label, r.dir.display(), r.num_layers);
        let _ = write!(s, "| layer | n |");
        for m in &r.metrics {
            let _ = write!(s, " {} |", m.title);
        }
        s.push_str("\n|---|---|");
        for _ in &r.metrics {
            s.push_str("---|");
        }
        s.push('\n');
        for row in r.layers.iter().chain(&r.groups) {
            let label = if row.is_default { format!("{} *", row.row) } else { row.row.clone() };
            let n = row.values.get("refusal_rate").map(|e| e.n.to_string()).unwrap_or_default();
            let _ = write!(s, "| {label} | {n} |");
            for m in &r.metrics {
                match row.values.get(&m.key) {
                    Some(e) => {
                        let _ = write!(
                            s,
                            " {:.2} [{:.2}, {:.2}] |",
                            shown(m, e.value),
                            shown(m, e.ci_low),
                            shown(m, e.ci_high)
                        );
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        for (judge, n) in &r.unparsed_verdicts {
            let _ = writeln!(s, "\n{n} answer(s) got a {judge} verdict that is neither `safe` nor `unsafe`; they are left out of its ASR.");
        }
        category_tables(&mut s, r);
    }
    s
}

/// Per Llama Guard judge, the share (%) of its parsed verdicts flagging each hazard category, by
/// layer and third (intervals in report.csv / report.json).
fn category_tables(s: &mut String, r: &RunReport) {
    let mut judges: Vec<&str> = Vec::new();
    for m in &r.category_metrics {
        if !judges.contains(&m.judge.as_str()) {
            judges.push(&m.judge);
        }
    }
    for judge in judges {
        let cols: Vec<&Metric> = r.category_metrics.iter().filter(|m| m.judge == judge).collect();
        let _ = writeln!(s, "\n### Hazard categories flagged by {judge} (% of its parsed verdicts)\n");
        let _ = write!(s, "| layer |");
        for m in &cols {
            let _ = write!(s, " {} |", m.title);
        }
        s.push_str("\n|---|");
        for _ in &cols {
            s.push_str("---|");
        }
        s.push('\n');
        for row in r.layers.iter().chain(&r.groups) {
            let label = if row.is_default { format!("{} *", row.row) } else { row.row.clone() };
            let _ = write!(s, "| {label} |");
            for m in &cols {
                match row.values.get(&m.key) {
                    Some(e) => {
                        let _ = write!(s, " {:.1} |", e.value * 100.0);
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
    }
}

/// The long-format CSV: one line per (run, row, metric).
pub fn csv(runs: &[RunReport]) -> String {
    let mut s = String::from("run,row,layers,is_default,metric,value,ci_low,ci_high,n\n");
    for r in runs {
        for row in r.layers.iter().chain(&r.groups) {
            let layers: Vec<String> = row.layers.iter().map(|l| l.to_string()).collect();
            for m in r.metrics.iter().chain(&r.category_metrics) {
                if let Some(e) = row.values.get(&m.key) {
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{},{:.6},{:.6},{:.6},{}",
                        csv_field(&r.label),
                        row.row,
                        layers.join(" "),
                        row.is_default,
                        csv_field(&m.key),
                        e.value,
                        e.ci_low,
                        e.ci_high,
                        e.n
                    );
                }
            }
        }
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const COLORS: [RGBColor; 6] = [
    RGBColor(26, 115, 232),
    RGBColor(217, 48, 37),
    RGBColor(30, 142, 62),
    RGBColor(249, 171, 0),
    RGBColor(161, 66, 244),
    RGBColor(0, 137, 123),
];

/// Registers the bundled font (DejaVu Sans Mono, Bitstream Vera license: assets/DejaVu-LICENSE.txt)
/// so that PNG text renders without any system font.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws one metric against layer for every run that has it: line, 95% band as error bars, the
/// default layer as a larger marker.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, runs: &[RunReport], m: &Metric) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot {}: {e:?}", m.key);
    root.fill(&WHITE).map_err(err)?;
    let max_layer = runs.iter().map(|r| r.num_layers).max().unwrap_or(1).max(1);
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for r in runs {
        for row in &r.layers {
            if let Some(e) = row.values.get(&m.key) {
                lo = lo.min(shown(m, e.ci_low));
                hi = hi.max(shown(m, e.ci_high));
            }
        }
    }
    if m.unit != "score" {
        lo = 0.0;
        hi = 100.0;
    } else if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (0.0, 1.0);
    } else if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = if m.unit == "score" { (hi - lo) * 0.05 } else { 0.0 };
    let y_desc = match m.unit {
        "rate" => format!("{} (%)", m.title),
        "toxicity" => format!("{} (×100)", m.title),
        _ => m.title.clone(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{} by vision layer", m.title), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5f64..max_layer as f64 + 0.5, (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("vision layer")
        .y_desc(y_desc)
        .x_labels(max_layer.min(25) + 1)
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64, f64, f64, bool)> = r
            .layers
            .iter()
            .filter_map(|row| {
                row.values.get(&m.key).map(|e| {
                    (row.layers[0] as f64, shown(m, e.value), shown(m, e.ci_low), shown(m, e.ci_high), row.is_default)
                })
            })
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
            .map_err(err)?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(
                pts.iter().map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], color.mix(0.6).stroke_width(2))),
            )
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|p| {
                let size = if p.4 { 6 } else { 3 };
                Circle::new((p.0, p.1), size, if p.4 { BLACK.filled() } else { color.filled() })
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn slug(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Writes `<metric>.svg` and `<metric>.png` for every metric of any run; returns the file names.
pub fn plots(runs: &[RunReport], out: &Path) -> Result<Vec<String>> {
    register_font();
    let mut seen: Vec<Metric> = Vec::new();
    for r in runs {
        for m in &r.metrics {
            if !seen.iter().any(|s| s.key == m.key) {
                seen.push(m.clone());
            }
        }
    }
    let mut files = Vec::new();
    for m in &seen {
        let svg = out.join(format!("{}.svg", slug(&m.key)));
        draw(SVGBackend::new(&svg, (800, 450)).into_drawing_area(), runs, m)?;
        let png = out.join(format!("{}.png", slug(&m.key)));
        draw(BitMapBackend::new(&png, (800, 450)).into_drawing_area(), runs, m)?;
        files.push(svg.file_name().unwrap().to_string_lossy().into_owned());
        files.push(png.file_name().unwrap().to_string_lossy().into_owned());
    }
    Ok(files)
}

pub fn run(args: Args) -> Result<()> {
    if !args.labels.is_empty() && args.labels.len() != args.runs.len() {
        bail!("--label given {} times for {} runs", args.labels.len(), args.runs.len());
    }
    if args.bootstrap == 0 {
        bail!("--bootstrap must be at least 1");
    }
    let out = match (&args.out, args.runs.len()) {
        (Some(o), _) => o.clone(),
        (None, 1) => args.runs[0].join("report"),
        (None, _) => bail!("--out DIR is required when reporting several runs"),
    };
    let mut reports = Vec::new();
    let mut labels_seen = HashMap::new();
    for (i, dir) in args.runs.iter().enumerate() {
        let label = args.labels.get(i).cloned().unwrap_or_else(|| {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string())
        });
        if labels_seen.insert(label.clone(), i).is_some() {
            bail!("two runs are both labelled `{label}`; name them with --label");
        }
        reports.push(run_report(dir, &label, args.bootstrap, args.seed)?);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, text: String| {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    let md = markdown(&reports);
    write("report.md", md.clone())?;
    write("report.csv", csv(&reports))?;
    let json = serde_json::json!({"bootstrap": args.bootstrap, "seed": args.seed, "runs": reports});
    write("report.json", serde_json::to_string_pretty(&json)? + "\n")?;
    let files = plots(&reports, &out)?;
    let page = crate::report_html::from_report::page(&reports, &out, &args.html, args.bootstrap, args.seed)?;
    crate::report_html::write(&page, &out.join("report.html"))?;
    println!("{md}");
    eprintln!("icet: report.md, report.csv, report.json, report.html and {} plots in {}", files.len(), out.display());
    Ok(())
}
