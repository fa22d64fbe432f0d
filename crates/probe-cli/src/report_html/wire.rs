//! The page's data as its script receives it: each prompt (id, text, image, data columns) once,
//! and the answers as parallel arrays (one array per field, one entry per answer) in prompt and
//! layer order. 2,000 prompts × 24 layers then carry each prompt once instead of 24 times, and
//! the script turns the arrays into typed arrays without a per-answer object.
//!
//! Verdicts, per judge: `verdict` 1 unsafe / 0 safe / -1 neither / null not judged (Llama Guard),
//! `categories` (Llama Guard), `score` (the other kinds).
use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{JudgeColumn, MetricColumn, Page, SafetyUtilityPage, TableRow};

#[derive(Serialize)]
pub struct Wire<'a> {
    generator: &'a str,
    bootstrap: usize,
    seed: u64,
    runs: Vec<WireRun<'a>>,
    safety_utility: Option<&'a SafetyUtilityPage>,
}

#[derive(Serialize)]
struct WireRun<'a> {
    label: &'a str,
    dir: &'a str,
    num_layers: usize,
    default_layer: Option<usize>,
    metrics: &'a [MetricColumn],
    category_metrics: &'a [MetricColumn],
    answer_type_metrics: &'a [MetricColumn],
    unparsed_verdicts: &'a std::collections::BTreeMap<String, usize>,
    rows: &'a [TableRow],
    judges: &'a [JudgeColumn],
    data_columns: &'a [String],
    notes: &'a [String],
    prompts: Prompts<'a>,
    answers: Answers<'a>,
}

#[derive(Serialize, Default)]
struct Prompts<'a> {
    id: Vec<&'a str>,
    prompt: Vec<&'a str>,
    image: Vec<&'a str>,
    src: Vec<Option<&'a str>>,
    /// Per data column, per prompt.
    columns: Vec<Vec<&'a str>>,
}

#[derive(Serialize, Default)]
struct Answers<'a> {
    /// Index into the prompts.
    prompt: Vec<u32>,
    layer: Vec<usize>,
    response: Vec<&'a str>,
    finish_reason: Vec<&'a str>,
    refusal: Vec<u8>,
    judges: Vec<JudgeAnswers<'a>>,
}

#[derive(Serialize, Default)]
struct JudgeAnswers<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Vec<Option<i8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    categories: Option<Vec<&'a [String]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<Vec<Option<f64>>>,
}

/// What makes two answers' prompts one: id, text, image, image src, data columns.
type PromptKey<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a [String]);

pub fn encode(page: &Page) -> Result<Wire<'_>> {
    let mut runs = Vec::new();
    for run in &page.runs {
        for a in &run.answers {
            if a.verdicts.len() != run.judges.len() || a.columns.len() != run.data_columns.len() {
                bail!(
                    "{}: answer {} at layer {} has {} verdicts for {} judges and {} columns for {}",
                    run.label,
                    a.id,
                    a.layer,
                    a.verdicts.len(),
                    run.judges.len(),
                    a.columns.len(),
                    run.data_columns.len()
                );
            }
        }
        // Prompts in order of first appearance; an id whose answers disagree on the prompt
        // (they cannot, in a run directory) gets one entry per version rather than losing one.
        let mut prompts = Prompts { columns: vec![Vec::new(); run.data_columns.len()], ..Prompts::default() };
        let mut index: HashMap<PromptKey, u32> = HashMap::new();
        let mut order: Vec<(u32, usize, usize)> = Vec::with_capacity(run.answers.len());
        for (i, a) in run.answers.iter().enumerate() {
            let key = (a.id.as_str(), a.prompt.as_str(), a.image.as_str(), a.image_src.as_deref(), &a.columns[..]);
            let next = index.len() as u32;
            let p = *index.entry(key).or_insert_with(|| {
                prompts.id.push(&a.id);
                prompts.prompt.push(&a.prompt);
                prompts.image.push(&a.image);
                prompts.src.push(a.image_src.as_deref());
                for (c, v) in prompts.columns.iter_mut().zip(&a.columns) {
                    c.push(v);
                }
                next
            });
            order.push((p, a.layer, i));
        }
        order.sort_unstable();
        let mut answers = Answers::default();
        for j in &run.judges {
            let guard = j.kind == "llama-guard";
            answers.judges.push(JudgeAnswers {
                verdict: guard.then(Vec::new),
                categories: guard.then(Vec::new),
                score: (!guard).then(Vec::new),
            });
        }
        for &(p, layer, i) in &order {
            let a = &run.answers[i];
            answers.prompt.push(p);
            answers.layer.push(layer);
            answers.response.push(&a.response);
            answers.finish_reason.push(&a.finish_reason);
            answers.refusal.push(a.refusal as u8);
            for (w, v) in answers.judges.iter_mut().zip(&a.verdicts) {
                if let Some(list) = &mut w.verdict {
                    list.push(v.as_ref().map(|v| match v.unsafe_ {
                        Some(true) => 1,
                        Some(false) => 0,
                        None => -1,
                    }));
                }
                if let Some(list) = &mut w.categories {
                    list.push(v.as_ref().map(|v| &v.categories[..]).unwrap_or(&[]));
                }
                if let Some(list) = &mut w.score {
                    list.push(v.as_ref().and_then(|v| v.score));
                }
            }
        }
        runs.push(WireRun {
            label: &run.label,
            dir: &run.dir,
            num_layers: run.num_layers,
            default_layer: run.default_layer,
            metrics: &run.metrics,
            category_metrics: &run.category_metrics,
            answer_type_metrics: &run.answer_type_metrics,
            unparsed_verdicts: &run.unparsed_verdicts,
            rows: &run.rows,
            judges: &run.judges,
            data_columns: &run.data_columns,
            notes: &run.notes,
            prompts,
            answers,
        });
    }
    Ok(Wire {
        generator: &page.generator,
        bootstrap: page.bootstrap,
        seed: page.seed,
        runs,
        safety_utility: page.safety_utility.as_ref(),
    })
}
