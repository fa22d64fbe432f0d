//! The one adapter from `icet report`'s results ([`RunReport`]) and a run directory's files
//! (responses, scores, manifest, the data file it names) to the page's input ([`Page`]).
//! Everything the page knows about run directories is here.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::images::{ImageMode, Images};
use super::{
    Answer, HtmlArgs, Interval, JudgeColumn, MetricColumn, Page, RunPage, SafetyUtilityColumn, SafetyUtilityPage,
    SafetyUtilityPair, SafetyUtilityRow, TableRow, Verdict,
};
use crate::data::{self, DataArgs, Fields};
use crate::refusal::REFUSAL_RATE;
use crate::report::estimates::{Metric, Row, RunReport};
use crate::run_dir::{JudgeKind, ResponseRow, RunDir, ScoreRow, MANIFEST};
use crate::safety_utility::SafetyUtility;
use crate::stats::Estimate;

/// A data column is offered as a filter when it has at most this many distinct values (a
/// policy or format column, not a free-text one) ...
const MAX_COLUMN_VALUES: usize = 100;
/// ... each at most this long.
const MAX_COLUMN_VALUE_CHARS: usize = 120;

/// The page of `reports` (and their safety–utility picture), to be written into `page_dir`.
pub fn page(
    reports: &[RunReport],
    safety_utility: Option<&SafetyUtility>,
    page_dir: &Path,
    args: &HtmlArgs,
    bootstrap: usize,
    seed: u64,
) -> Result<Page> {
    let mode =
        if args.html_thumbnails { ImageMode::Thumbnail } else { ImageMode::Link { page_dir: page_dir.to_path_buf() } };
    let mut images = Images::new(mode);
    let runs = reports.iter().map(|r| run_page(r, &mut images)).collect::<Result<Vec<_>>>()?;
    Ok(Page {
        generator: format!("icet {}", env!("CARGO_PKG_VERSION")),
        bootstrap,
        seed,
        runs,
        safety_utility: safety_utility.map(safety_utility_page),
    })
}

fn interval(e: &Estimate) -> Interval {
    Interval { value: e.value, ci_low: e.ci_low, ci_high: e.ci_high, n: e.n }
}

fn safety_utility_page(su: &SafetyUtility) -> SafetyUtilityPage {
    SafetyUtilityPage {
        default_layer: su.default_layer,
        num_layers: su.num_layers,
        columns: su
            .columns
            .iter()
            .map(|c| SafetyUtilityColumn {
                run: c.run.clone(),
                key: c.key.clone(),
                title: c.title.clone(),
                unit: c.unit.into(),
                kind: c.kind.into(),
            })
            .collect(),
        rows: su
            .rows
            .iter()
            .map(|r| SafetyUtilityRow {
                row: r.row.clone(),
                layers: r.layers.clone(),
                is_default: r.is_default,
                is_group: r.row.parse::<usize>().is_err(),
                flagged: r.flagged,
                values: r.values.iter().map(|v| v.as_ref().map(interval)).collect(),
            })
            .collect(),
        pairs: su
            .pairs
            .iter()
            .map(|p| SafetyUtilityPair { asr: p.asr, accuracy: p.accuracy, flagged: p.flagged.clone() })
            .collect(),
        notes: su.notes.clone(),
    }
}

fn column(m: &Metric) -> MetricColumn {
    MetricColumn { key: m.key.clone(), title: m.title.clone(), unit: m.unit.to_string(), judge: m.judge.clone() }
}

fn table_row(r: &Row) -> TableRow {
    let interval = |e: &Estimate| Interval { value: e.value, ci_low: e.ci_low, ci_high: e.ci_high, n: e.n };
    TableRow {
        row: r.row.clone(),
        layers: r.layers.clone(),
        is_default: r.is_default,
        is_group: r.row.parse::<usize>().is_err(),
        // As report.md's n column: the answers behind the keyword metric (every answer).
        n: r.values.get(REFUSAL_RATE).map(|e| e.n),
        values: r.values.iter().map(|(k, e)| (k.clone(), interval(e))).collect(),
    }
}

fn run_page(report: &RunReport, images: &mut Images) -> Result<RunPage> {
    let dir = &report.dir;
    // Through the run's readers, as the report: one row per answer (and per judge), copies said.
    let run = RunDir::open(dir);
    let responses: Vec<ResponseRow> = run.responses()?;
    let scores: Vec<ScoreRow> = run.scores()?;
    let mut notes = Vec::new();

    // Judges in the table's order (by kind, then name, as the report sorts its columns).
    let answered: HashSet<(&str, usize)> = responses.iter().map(|r| (r.id.as_str(), r.layer)).collect();
    let mut judges: Vec<(String, JudgeKind)> = Vec::new();
    for s in &scores {
        if !judges.iter().any(|(j, _)| *j == s.judge) {
            judges.push((s.judge.clone(), s.kind));
        }
    }
    judges.sort_by_key(|(j, k)| (*k as u8, j.clone()));
    let judge_index: HashMap<&str, usize> = judges.iter().enumerate().map(|(i, (j, _))| (j.as_str(), i)).collect();
    let mut verdicts: HashMap<(&str, usize), Vec<Option<Verdict>>> = HashMap::new();
    for s in &scores {
        if !answered.contains(&(s.id.as_str(), s.layer)) {
            continue; // a score of an answer no longer in responses.jsonl (the report skips it too)
        }
        let v = verdicts.entry((s.id.as_str(), s.layer)).or_insert_with(|| vec![None; judges.len()]);
        v[judge_index[s.judge.as_str()]] =
            Some(Verdict { unsafe_: s.unsafe_, categories: s.categories.clone(), score: s.score });
    }

    let (fields, data_images) = data_fields(dir, &mut notes);
    let data_columns = facet_columns(&responses, &fields);

    let mut missing_images = BTreeSet::new();
    let mut answers = Vec::with_capacity(responses.len());
    for r in &responses {
        let file: Option<PathBuf> = r.image_path.clone().or_else(|| data_images.get(&r.id).cloned());
        let image_src = match file {
            Some(f) => images.src(&f).map_err(|e| missing_images.insert(e)).ok(),
            None => {
                missing_images.insert(format!("{} (no image path recorded)", r.image));
                None
            }
        };
        let row_fields = fields.get(&r.id);
        answers.push(Answer {
            id: r.id.clone(),
            layer: r.layer,
            prompt: r.prompt.clone(),
            image: r.image.clone(),
            image_src,
            response: r.response.clone(),
            finish_reason: r.finish_reason.clone(),
            refusal: r.refusal,
            verdicts: verdicts.remove(&(r.id.as_str(), r.layer)).unwrap_or_else(|| vec![None; judges.len()]),
            columns: data_columns
                .iter()
                .map(|c| row_fields.and_then(|f| f.get(c)).cloned().unwrap_or_default())
                .collect(),
        });
    }
    if !missing_images.is_empty() {
        let first: Vec<&String> = missing_images.iter().take(3).collect();
        notes.push(format!(
            "{} image(s) not shown: {}{}",
            missing_images.len(),
            first.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "),
            if missing_images.len() > 3 { "; …" } else { "" }
        ));
    }

    Ok(RunPage {
        label: report.label.clone(),
        dir: dir.display().to_string(),
        num_layers: report.num_layers,
        default_layer: report.default_layer,
        metrics: report.metrics.iter().map(column).collect(),
        category_metrics: report.category_metrics.iter().map(column).collect(),
        answer_type_metrics: report.answer_type_metrics.iter().map(column).collect(),
        unparsed_verdicts: report.unparsed_verdicts.clone(),
        rows: report.layers.iter().chain(&report.groups).map(table_row).collect(),
        judges: judges.iter().map(|(name, k)| JudgeColumn { name: name.clone(), kind: k.as_str().into() }).collect(),
        data_columns,
        answers,
        notes,
    })
}

/// The data file's columns of every row, by id, read as the sweep read them (its manifest names
/// the file and the options), and each row's image file. Without a readable data file the page
/// simply has no data columns; a note says why.
fn data_fields(dir: &Path, notes: &mut Vec<String>) -> (HashMap<String, Fields>, HashMap<String, PathBuf>) {
    let manifest_path = dir.join(MANIFEST);
    let manifest: serde_json::Value = match std::fs::read_to_string(&manifest_path) {
        Ok(t) => match serde_json::from_str(&t) {
            Ok(v) => v,
            Err(e) => {
                notes.push(format!("data columns not shown: {}: {e}", manifest_path.display()));
                return Default::default();
            }
        },
        Err(_) => return Default::default(),
    };
    let settings = &manifest["settings"];
    let Some(data) = settings["data"].as_str() else { return Default::default() };
    let rows = DataArgs::from_settings(settings.get("data_options").filter(|v| !v.is_null()))
        .and_then(|opts| data::load_with_fields(Path::new(data), &opts));
    match rows {
        Ok(rows) => {
            let mut fields = HashMap::new();
            let mut files = HashMap::new();
            for (r, f) in rows {
                files.insert(r.id.clone(), r.image_path);
                fields.insert(r.id, f);
            }
            (fields, files)
        }
        Err(e) => {
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            notes.push(format!("data columns not shown: {}", msg.join(": ")));
            Default::default()
        }
    }
}

/// The data columns worth filtering by: few distinct short values, and not a copy of the id,
/// prompt or image (which the page shows anyway).
fn facet_columns(responses: &[ResponseRow], fields: &HashMap<String, Fields>) -> Vec<String> {
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut copies: BTreeMap<&str, bool> = BTreeMap::new();
    let mut seen = HashSet::new();
    for r in responses {
        if !seen.insert(r.id.as_str()) {
            continue;
        }
        let Some(f) = fields.get(&r.id) else { continue };
        for (k, v) in f {
            values.entry(k).or_default().insert(v);
            let copy = v == &r.id || v == &r.prompt || v == &r.image;
            *copies.entry(k).or_insert(true) &= copy;
        }
    }
    values
        .into_iter()
        .filter(|(k, vs)| {
            !copies[k]
                && vs.len() <= MAX_COLUMN_VALUES
                && vs.iter().all(|v| v.chars().count() <= MAX_COLUMN_VALUE_CHARS)
        })
        .map(|(k, _)| k.to_string())
        .collect()
}
