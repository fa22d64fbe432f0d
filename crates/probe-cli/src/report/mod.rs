//! `icet report`'s engine: the paper's per-layer tables and plots from scored runs.
//!
//! Metrics per vision layer (each with a bootstrapped 95% interval, [`crate::stats`]):
//!   refusal_rate       share of answers with a refusal phrase (the sweep's keyword detector)
//!   asr:JUDGE          share of answers a Llama Guard judge called unsafe (answers whose verdict
//!                      could not be parsed are left out of the denominator; their count is `n`)
//!   toxicity:JUDGE     mean toxicity probability (local classifier or Perspective; Markdown ×100, as the paper)
//!   reward:JUDGE       mean reward-model score
//!   category:JUDGE:C   share of a Llama Guard judge's parsed verdicts that flag hazard category C
//!                      (its own table: which hazards appear at which layers)
//!   vqa:JUDGE          mean official VQA accuracy of the answers (shown in %, as the official code)
//!   vqa:JUDGE:T        the same over the questions of answer type T (yes/no, number, other; its own table)
//! Rows Early / Middle / Late / Average are means of the per-layer values over layers 1..L split
//! in thirds ([`crate::grouping`]), as the paper's AASR/ATS/ATR; layer 0 (embeddings) stands alone.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::plot::{self, Chart, Point, Series};
use crate::refusal::REFUSAL_RATE;
use crate::run_dir::{RunDir, REPORT_DIR};
use crate::shard::describe_incomplete;
use crate::stats::Estimate;

pub mod estimates;
pub mod markdown;
pub use estimates::{collect, run_report, Collected, Metric, Row, RunReport};

fn shown(m: &Metric, v: f64) -> f64 {
    match m.unit {
        "rate" | "toxicity" => v * 100.0,
        _ => v,
    }
}

/// A table cell: `value [low, high]` as shown, 2 decimals. VQA accuracies are rounded as the
/// official code rounds its percentages (Python 2: exact ties away from zero; `{:.2}` alone rounds
/// them to even), so the Markdown shows `icet vqa-eval`'s number.
fn cell(m: &Metric, e: &Estimate) -> String {
    let r =
        |v: f64| if m.key.starts_with("vqa:") { crate::vqa::eval::round_python2(shown(m, v), 2) } else { shown(m, v) };
    format!("{:.2} [{:.2}, {:.2}]", r(e.value), r(e.ci_low), r(e.ci_high))
}

/// The Markdown tables (one per run).
pub fn markdown(runs: &[RunReport]) -> String {
    let mut s = String::from("# ICET report\n\n");
    s.push_str(
        "Values with bootstrapped 95% intervals. Rates (refusal, ASR, VQA accuracy) in %, toxicity ×100, reward as scored. \
`*` marks the model's default layer; Early/Middle/Late/Average are means over the layers in the paper's thirds.\n",
    );
    for r in runs {
        let _ = writeln!(s, "\n## {}\n\n`{}` — {} vision layers\n", r.label, r.dir.display(), r.num_layers);
        if let Some(note) = describe_incomplete(&r.shards) {
            let _ = writeln!(s, "**Incomplete:** {note}. The numbers below are of the answers there are.\n");
        }
        markdown::table_header(&mut s, &["layer", "n"], r.metrics.iter().map(|m| m.title.as_str()));
        for row in r.layers.iter().chain(&r.groups) {
            let label = if row.is_default { format!("{} *", row.row) } else { row.row.clone() };
            let n = row.values.get(REFUSAL_RATE).map(|e| e.n.to_string()).unwrap_or_default();
            let _ = write!(s, "| {label} | {n} |");
            for m in &r.metrics {
                match row.values.get(&m.key) {
                    Some(e) => {
                        let _ = write!(s, " {} |", cell(m, e));
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        if r.empty_answers > 0 {
            let _ = writeln!(
                s,
                "\n{} empty answer(s) (nothing generated before the end): neither refusals nor compliance, they are \
                 left out of the refusal rate and its n.",
                r.empty_answers
            );
        }
        for (judge, n) in &r.unparsed_verdicts {
            let _ = writeln!(s, "\n{n} answer(s) got a {judge} verdict that is neither `safe` nor `unsafe`; they are left out of its ASR.");
        }
        category_tables(&mut s, r);
        answer_type_tables(&mut s, r);
    }
    s
}

/// Per VQA judge, the accuracy (%) by answer type, by layer and third, with intervals.
fn answer_type_tables(s: &mut String, r: &RunReport) {
    for judge in judges_of(&r.answer_type_metrics) {
        let title = format!("VQA accuracy ({judge}) by answer type (%)");
        judge_table(s, r, &title, &r.answer_type_metrics, judge, cell);
    }
}

/// Per Llama Guard judge, the share (%) of its parsed verdicts flagging each hazard category, by
/// layer and third (intervals in report.csv / report.json).
fn category_tables(s: &mut String, r: &RunReport) {
    for judge in judges_of(&r.category_metrics) {
        let title = format!("Hazard categories flagged by {judge} (% of its parsed verdicts)");
        judge_table(s, r, &title, &r.category_metrics, judge, |_, e| format!("{:.1}", e.value * 100.0));
    }
}

/// The judges of `metrics`, each once, in order of first appearance.
fn judges_of(metrics: &[Metric]) -> Vec<&str> {
    let mut judges: Vec<&str> = Vec::new();
    for m in metrics {
        if !judges.contains(&m.judge.as_str()) {
            judges.push(&m.judge);
        }
    }
    judges
}

/// One Markdown table under `title`: a row per layer and third, a column per metric of `judge`
/// (each cell as `show` writes it, `–` where the row has no value).
fn judge_table(
    s: &mut String,
    r: &RunReport,
    title: &str,
    metrics: &[Metric],
    judge: &str,
    show: impl Fn(&Metric, &Estimate) -> String,
) {
    let cols: Vec<&Metric> = metrics.iter().filter(|m| m.judge == judge).collect();
    let _ = writeln!(s, "\n### {title}\n");
    markdown::table_header(s, &["layer"], cols.iter().map(|m| m.title.as_str()));
    for row in r.layers.iter().chain(&r.groups) {
        let label = if row.is_default { format!("{} *", row.row) } else { row.row.clone() };
        let _ = write!(s, "| {label} |");
        for m in &cols {
            match row.values.get(&m.key) {
                Some(e) => {
                    let _ = write!(s, " {} |", show(m, e));
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
}

/// The long-format CSV: one line per (run, row, metric).
pub fn csv(runs: &[RunReport]) -> String {
    let mut s = String::from("run,row,layers,is_default,metric,value,ci_low,ci_high,n\n");
    for r in runs {
        for row in r.layers.iter().chain(&r.groups) {
            let layers: Vec<String> = row.layers.iter().map(|l| l.to_string()).collect();
            for m in r.metrics.iter().chain(&r.category_metrics).chain(&r.answer_type_metrics) {
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

/// The chart of metric `m` over `runs`: one series per run that has it.
fn chart(runs: &[RunReport], m: &Metric) -> Chart {
    let series = runs
        .iter()
        .map(|r| Series {
            label: r.label.clone(),
            points: r
                .layers
                .iter()
                .filter_map(|row| {
                    row.values.get(&m.key).map(|e| Point {
                        layer: row.layers[0],
                        value: shown(m, e.value),
                        interval: Some((shown(m, e.ci_low), shown(m, e.ci_high))),
                        is_default: row.is_default,
                    })
                })
                .collect(),
        })
        .collect();
    let y_label = match m.unit {
        "rate" => format!("{} (%)", m.title),
        "toxicity" => format!("{} (×100)", m.title),
        _ => m.title.clone(),
    };
    Chart {
        key: m.key.clone(),
        title: m.title.clone(),
        y_label,
        y_range: (m.unit != "score").then_some((0.0, 100.0)),
        max_layer: runs.iter().map(|r| r.num_layers).max().unwrap_or(1),
        series,
    }
}

/// Writes `<metric>.svg` and `<metric>.png` for every metric of any run; returns the file names.
pub fn plots(runs: &[RunReport], out: &Path) -> Result<Vec<String>> {
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
        let (svg, png) = (format!("{}.svg", plot::slug(&m.key)), format!("{}.png", plot::slug(&m.key)));
        plot::write(&chart(runs, m), &out.join(&svg), &out.join(&png))?;
        files.push(svg);
        files.push(png);
    }
    Ok(files)
}

/// What to report: scored sweep folders, their names in tables and legends (default: the folder
/// name), the output folder (default `RUN_DIR/report` for one run), and the bootstrap.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    pub runs: Vec<PathBuf>,
    pub labels: Vec<String>,
    pub out: Option<PathBuf>,
    pub bootstrap: usize,
    pub seed: u64,
    /// How report.html shows images.
    pub html: crate::report_html::HtmlArgs,
}

/// Writes report.md/.csv/.json, the plots and report.html — with the safety–utility section
/// ([`crate::safety_utility`]) where the runs hold an ASR and a VQA accuracy, and the official
/// VQA results files ([`crate::vqa::results`]) of VQA-scored runs; returns the Markdown and the
/// output folder.
pub fn report(req: &ReportRequest) -> Result<(String, PathBuf, usize)> {
    if !req.labels.is_empty() && req.labels.len() != req.runs.len() {
        bail!("--label given {} times for {} runs", req.labels.len(), req.runs.len());
    }
    if req.bootstrap == 0 {
        bail!("--bootstrap must be at least 1");
    }
    let out = match (&req.out, req.runs.len()) {
        (Some(o), _) => o.clone(),
        (None, 1) => req.runs[0].join(REPORT_DIR),
        (None, _) => bail!("--out DIR is required when reporting several runs"),
    };
    let mut reports = Vec::new();
    let mut labels_seen = HashMap::new();
    for (i, dir) in req.runs.iter().enumerate() {
        let label = req.labels.get(i).cloned().unwrap_or_else(|| {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string())
        });
        if labels_seen.insert(label.clone(), i).is_some() {
            bail!("two runs are both labelled `{label}`; name them with --label");
        }
        reports.push(run_report(dir, &label, req.bootstrap, req.seed)?);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, text: String| {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    let mut exported = Vec::new();
    for r in &reports {
        exported.extend(crate::vqa::results::export(&RunDir::open(&r.dir), &r.label, &out.join("vqa_results"))?);
    }
    let safety_utility = crate::safety_utility::build(&reports);
    let mut md = markdown(&reports);
    if let Some(su) = &safety_utility {
        md.push_str(&crate::safety_utility::markdown(su));
    }
    md.push_str(&crate::vqa::results::markdown(&exported, &out));
    write("report.md", md.clone())?;
    write("report.csv", csv(&reports))?;
    let json = serde_json::json!({"bootstrap": req.bootstrap, "seed": req.seed, "runs": reports,
                                  "safety_utility": safety_utility, "vqa_results": exported});
    write("report.json", serde_json::to_string_pretty(&json)? + "\n")?;
    let mut files = plots(&reports, &out)?;
    if let Some(su) = &safety_utility {
        files.extend(crate::safety_utility::plots(su, &out)?);
    }
    let page = crate::report_html::from_report::page(
        &reports,
        safety_utility.as_ref(),
        &out,
        &req.html,
        req.bootstrap,
        req.seed,
    )?;
    crate::report_html::write(&page, &out.join("report.html"))?;
    Ok((md, out, files.len()))
}
