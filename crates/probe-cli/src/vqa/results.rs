//! The official results files of a VQA-scored run, so the report's accuracy can be checked with
//! the official code (or `icet vqa-eval`): for each VQA judge and each layer where it scored every
//! question of the run, `layer<L>.json` = `[{"question_id", "answer"}]` holding the answers as the
//! judge scored them (prepared as its `--vqa-answers` said), next to `questions.json` and
//! `annotations.json` — the run's questions cut out of the files it was made from, in the
//! official layouts (the official evaluation requires the results to answer exactly the
//! annotated questions, so a sampled run needs its own subset files).
//!
//! ```text
//! OUT/vqa_results/<run label>/<judge>/questions.json, annotations.json, layer<L>.json
//! ```
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::run_dir::{JudgeKind, RunDir, JUDGES};

/// What was written for one (run, VQA judge).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Exported {
    pub run: String,
    pub judge: String,
    /// The folder of the files (`None`: nothing could be written, see `notes`).
    pub dir: Option<PathBuf>,
    pub layers: Vec<usize>,
    /// Why a layer or the whole judge was left out.
    pub notes: Vec<String>,
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string(v)? + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// The annotations file each judge name is bound to in the run's `judges.json`.
fn judge_files(run: &RunDir) -> HashMap<String, PathBuf> {
    let text = std::fs::read_to_string(run.path(JUDGES)).unwrap_or_default();
    let known: BTreeMap<String, Value> = serde_json::from_str(&text).unwrap_or_default();
    known.into_iter().filter_map(|(name, id)| Some((name, PathBuf::from(id["dir"].as_str()?)))).collect()
}

/// Writes the files of every VQA judge of `run` under `out/<label>/<judge>/`.
pub fn export(run: &RunDir, label: &str, out: &Path) -> Result<Vec<Exported>> {
    let scores = run.scores()?;
    let mut judges: Vec<&str> = scores.iter().filter(|s| s.kind == JudgeKind::Vqa).map(|s| s.judge.as_str()).collect();
    judges.sort();
    judges.dedup();
    if judges.is_empty() {
        return Ok(vec![]);
    }
    let responses = run.responses()?;
    // The run's questions: every id it answered, in question-id order.
    let mut ids: Vec<u64> = Vec::new();
    for r in &responses {
        if let Ok(q) = r.id.parse::<u64>() {
            ids.push(q);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let answered: BTreeSet<(&str, usize)> = responses.iter().map(|r| (r.id.as_str(), r.layer)).collect();
    let layers: BTreeSet<usize> = responses.iter().map(|r| r.layer).collect();
    let settings = run.manifest()?.map(|m| m.settings).unwrap_or_default();
    let questions_file =
        crate::vqa::source::recorded_annotations(&settings).and_then(|_| settings["data"].as_str().map(PathBuf::from));
    let files = judge_files(run);
    let mut exported = Vec::new();
    for judge in judges {
        let mut e = Exported { run: label.into(), judge: judge.into(), dir: None, layers: vec![], notes: vec![] };
        let (Some(questions), Some(annotations)) = (&questions_file, files.get(judge)) else {
            e.notes.push("not a VQA-v2 run (its manifest names no questions file): no results files".into());
            exported.push(e);
            continue;
        };
        if ids.len() != answered.iter().map(|(id, _)| *id).collect::<BTreeSet<_>>().len() {
            e.notes.push("some answer ids are not VQA question ids: no results files".into());
            exported.push(e);
            continue;
        }
        let dir = out.join(crate::plot::slug(label)).join(crate::plot::slug(judge));
        match write_subsets(questions, annotations, &ids, &dir) {
            Ok(()) => {}
            Err(err) => {
                let msg: Vec<String> = err.chain().map(|c| c.to_string()).collect();
                e.notes.push(format!("no results files: {}", msg.join(": ")));
                exported.push(e);
                continue;
            }
        }
        let mut by_layer: BTreeMap<usize, HashMap<u64, &str>> = BTreeMap::new();
        for s in scores.iter().filter(|s| s.judge == judge && answered.contains(&(s.id.as_str(), s.layer))) {
            let (Ok(q), Some(a)) = (s.id.parse::<u64>(), s.raw["answer"].as_str()) else { continue };
            by_layer.entry(s.layer).or_default().insert(q, a);
        }
        for l in &layers {
            let got = by_layer.get(l);
            let n = got.map_or(0, |g| g.len());
            if n < ids.len() {
                e.notes.push(format!("layer {l}: {n} of {} questions scored; no results file", ids.len()));
                continue;
            }
            let got = got.expect("n > 0");
            let results: Vec<Value> = ids.iter().map(|q| json!({"question_id": q, "answer": got[q]})).collect();
            write_json(&dir.join(format!("layer{l}.json")), &Value::Array(results))?;
            e.layers.push(*l);
        }
        e.dir = Some(dir);
        exported.push(e);
    }
    Ok(exported)
}

/// `questions.json` and `annotations.json` of `ids` (every one must be in both files).
fn write_subsets(questions: &Path, annotations: &Path, ids: &[u64], dir: &Path) -> Result<()> {
    let wanted: BTreeSet<u64> = ids.iter().copied().collect();
    let q = crate::vqa::files::read_questions(questions)?;
    let qs: Vec<Value> = q
        .questions
        .iter()
        .filter(|x| wanted.contains(&x.question_id))
        .map(|x| {
            let mut v = json!({"image_id": x.image_id, "question": x.question, "question_id": x.question_id});
            if let Some(c) = &x.multiple_choices {
                v["multiple_choices"] = json!(c);
            }
            v
        })
        .collect();
    let a = crate::vqa::files::read_annotations(annotations)?;
    let anns: Vec<Value> = a
        .annotations
        .iter()
        .filter(|x| wanted.contains(&x.question_id))
        .map(|x| {
            let answers: Vec<Value> = x
                .answers
                .iter()
                .map(|g| {
                    let mut o: Map<String, Value> = (*g.rest).clone();
                    o.insert("answer".into(), json!(g.answer));
                    Value::Object(o)
                })
                .collect();
            let mut v = json!({"question_id": x.question_id, "image_id": x.image_id, "question_type": x.question_type,
                               "answer_type": x.answer_type, "answers": answers});
            if let Some(m) = &x.multiple_choice_answer {
                v["multiple_choice_answer"] = json!(m);
            }
            v
        })
        .collect();
    for (what, n, file) in [("questions", qs.len(), questions), ("annotations", anns.len(), annotations)] {
        if n != ids.len() {
            anyhow::bail!("{}: holds {n} of the run's {} {what}", file.display(), ids.len());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let subtype = |s: &Option<String>| s.as_ref().map_or(Value::Null, |s| json!(s));
    write_json(
        &dir.join("questions.json"),
        &json!({"task_type": q.task_type.as_deref().unwrap_or("OpenEnded"), "data_type": "mscoco",
                "data_subtype": subtype(&q.data_subtype), "license": {}, "info": {}, "questions": qs}),
    )?;
    write_json(
        &dir.join("annotations.json"),
        &json!({"data_type": "mscoco", "data_subtype": subtype(&a.data_subtype), "license": {}, "info": {},
                "annotations": anns}),
    )
}

/// The report's paragraph on what was written.
pub fn markdown(exported: &[Exported], out: &Path) -> String {
    if exported.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Official VQA results files\n\nEach layer's answers as the VQA judge scored them, in the official results format, \
         with the run's questions and annotations: `icet vqa-eval --questions DIR/questions.json --annotations \
         DIR/annotations.json --results DIR/layerL.json` (or the official vqaEval.py) gives the accuracy above.\n\n",
    );
    for e in exported {
        match &e.dir {
            Some(d) => {
                let shown = d.strip_prefix(out).unwrap_or(d);
                let layers: Vec<String> = e.layers.iter().map(usize::to_string).collect();
                s.push_str(&format!(
                    "- {} / {}: `{}/` — layers {}\n",
                    e.run,
                    e.judge,
                    shown.display(),
                    if layers.is_empty() { "none".into() } else { layers.join(", ") }
                ));
            }
            None => s.push_str(&format!("- {} / {}: —\n", e.run, e.judge)),
        }
        for n in &e.notes {
            s.push_str(&format!("  - {n}\n"));
        }
    }
    s
}
