//! VQA-v2: the official files ([`files`]), the official accuracy ([`eval`]), sweep items with
//! COCO images ([`data`]) and the sweep's data source made of them ([`source`]); `icet vqa-eval`
//! is `commands/vqa_eval.rs`.
pub mod answers;
pub mod data;
pub mod eval;
pub mod files;
pub mod results;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Result};

use eval::{summarize, Accuracy, ScoredQuestion};
use files::{Annotation, QuestionsFile, VqaResult};

/// Decimal places of every percentage (the official `VQAEval(..., n=2)`).
pub const DIGITS: usize = 2;

/// At most this many ids are spelled out in one message (then a count of the rest).
const IDS_SHOWN: usize = 20;

fn id_list(ids: &[u64]) -> String {
    let mut s: Vec<String> = ids.iter().take(IDS_SHOWN).map(u64::to_string).collect();
    if ids.len() > IDS_SHOWN {
        s.push(format!("… and {} more", ids.len() - IDS_SHOWN));
    }
    s.join(", ")
}

/// Ids that occur more than once, in first-occurrence order.
fn duplicates(ids: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut seen = HashSet::new();
    let mut dup = Vec::new();
    for id in ids {
        if !seen.insert(id) && !dup.contains(&id) {
            dup.push(id);
        }
    }
    dup
}

/// Checks that the annotations are consistent with the questions file: one annotation per
/// question id, each annotated question in the questions file with the same image.
pub fn check_annotations(
    questions: &QuestionsFile,
    q_path: &Path,
    annotations: &[Annotation],
    a_path: &Path,
) -> Result<()> {
    let dup = duplicates(annotations.iter().map(|a| a.question_id));
    if !dup.is_empty() {
        bail!("{}: question id(s) annotated more than once: {}", a_path.display(), id_list(&dup));
    }
    let images: HashMap<u64, u64> = questions.questions.iter().map(|q| (q.question_id, q.image_id)).collect();
    let missing: Vec<u64> = annotations.iter().map(|a| a.question_id).filter(|id| !images.contains_key(id)).collect();
    if !missing.is_empty() {
        bail!(
            "{}: no question for {} question id(s) of {}: {} (are both files of the same split?)",
            q_path.display(),
            missing.len(),
            a_path.display(),
            id_list(&missing)
        );
    }
    if let Some(a) = annotations.iter().find(|a| images[&a.question_id] != a.image_id) {
        bail!(
            "{}: question {} is about image {} in {} but image {} here",
            a_path.display(),
            a.question_id,
            images[&a.question_id],
            q_path.display(),
            a.image_id
        );
    }
    Ok(())
}

/// The results by question id, checked to answer each annotated question exactly once (the
/// official code asserts the two id sets are equal, without saying which ids differ).
pub fn match_results<'a>(
    annotations: &[Annotation],
    results: &'a [VqaResult],
    r_path: &Path,
    a_path: &Path,
) -> Result<HashMap<u64, &'a str>> {
    let dup = duplicates(results.iter().map(|r| r.question_id));
    if !dup.is_empty() {
        bail!("{}: question id(s) answered more than once: {}", r_path.display(), id_list(&dup));
    }
    let by_id: HashMap<u64, &str> = results.iter().map(|r| (r.question_id, r.answer.as_str())).collect();
    let annotated: HashSet<u64> = annotations.iter().map(|a| a.question_id).collect();
    let missing: Vec<u64> = annotations.iter().map(|a| a.question_id).filter(|id| !by_id.contains_key(id)).collect();
    let extra: Vec<u64> = results.iter().map(|r| r.question_id).filter(|id| !annotated.contains(id)).collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "no answer for {} question id(s) of {}: {}",
            missing.len(),
            a_path.display(),
            id_list(&missing)
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{} answer(s) for question id(s) not in {}: {}",
            extra.len(),
            a_path.display(),
            id_list(&extra)
        ));
    }
    if !problems.is_empty() {
        bail!("{}: {}", r_path.display(), problems.join("; "));
    }
    Ok(by_id)
}

/// Scores every annotated question (in the annotation file's order) against its result.
pub fn score(annotations: &[Annotation], answers: &HashMap<u64, &str>) -> Vec<ScoredQuestion> {
    annotations
        .iter()
        .map(|a| ScoredQuestion {
            question_id: a.question_id,
            question_type: a.question_type.clone(),
            answer_type: a.answer_type.clone(),
            accuracy: eval::question_accuracy(&a.answers, answers[&a.question_id]),
        })
        .collect()
}

/// The official evaluation of three files.
pub fn evaluate_files(q_path: &Path, a_path: &Path, r_path: &Path) -> Result<Accuracy> {
    let questions = files::read_questions(q_path)?;
    let annotations = files::read_annotations(a_path)?.annotations;
    if annotations.is_empty() {
        bail!("{}: no annotations", a_path.display());
    }
    check_annotations(&questions, q_path, &annotations, a_path)?;
    let results = files::read_results(r_path)?;
    let answers = match_results(&annotations, &results, r_path, a_path)?;
    // `loadRes` checks answers against the choices when the task is multiple choice (VQA v1).
    if questions.task_type.as_deref() == Some("Multiple Choice") {
        let choices: HashMap<u64, &Vec<String>> =
            questions.questions.iter().filter_map(|q| Some((q.question_id, q.multiple_choices.as_ref()?))).collect();
        for r in &results {
            if !choices.get(&r.question_id).is_some_and(|c| c.contains(&r.answer)) {
                bail!(
                    "{}: question {}: the answer is not one of the multiple choices",
                    r_path.display(),
                    r.question_id
                );
            }
        }
    }
    Ok(summarize(&score(&annotations, &answers), DIGITS))
}

/// The `--json` object: `{"overall", "perQuestionType", "perAnswerType", "perQuestion"}`, question
/// ids as strings (as `json.dump` writes the official `evalQA`).
pub fn to_json(acc: &Accuracy) -> serde_json::Value {
    let per_question: serde_json::Map<String, serde_json::Value> =
        acc.per_question.iter().map(|(id, v)| (id.to_string(), serde_json::json!(v))).collect();
    serde_json::json!({
        "overall": acc.overall,
        "perQuestionType": acc.per_question_type,
        "perAnswerType": acc.per_answer_type,
        "perQuestion": per_question,
    })
}
