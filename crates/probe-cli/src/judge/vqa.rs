//! `--judge vqa`: each answer's official VQA accuracy (0..1, [`crate::vqa::eval::question_accuracy`])
//! against the annotations of its question — the VQA-v2 annotations file the sweep read (its
//! manifest records it), or the file given as `vqa=FILE`. The answer is first prepared as
//! `--vqa-answers` says ([`AnswerPrep`]: LLaVA's submission processing by default), exactly as it
//! would be written into the official results file; `scores.jsonl` keeps that text as
//! `raw.answer` with the question's `answer_type` and `question_type`, so a report breaks the
//! accuracy down by answer type and can write the official results files back out.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use icet_models::backend::Backend;

use super::{Answer, Judge, JudgeArgs, JudgeSpec, Verdict};
use crate::data::DataArgs;
use crate::run_dir::{JudgeKind, RunDir};
use crate::vqa::answers::AnswerPrep;
use crate::vqa::eval::{question_accuracy, GtAnswer};

/// One question's ground truth.
struct Truth {
    answers: Vec<GtAnswer>,
    answer_type: String,
    question_type: String,
}

pub struct VqaJudge {
    truth: HashMap<u64, Truth>,
    annotations: PathBuf,
    prep: AnswerPrep,
}

impl VqaJudge {
    pub fn load(annotations: &Path, prep: AnswerPrep) -> Result<Self> {
        let file = crate::vqa::files::read_annotations(annotations)?;
        let truth = file
            .annotations
            .into_iter()
            .map(|a| {
                let t = Truth { answers: a.answers, answer_type: a.answer_type, question_type: a.question_type };
                (a.question_id, t)
            })
            .collect();
        eprintln!(
            "icet: VQA accuracy (official evaluation) against {}, answers prepared {}",
            annotations.display(),
            match prep {
                AnswerPrep::Llava => "as LLaVA's submission script does",
                AnswerPrep::Verbatim => "verbatim",
            }
        );
        Ok(Self { truth, annotations: annotations.to_path_buf(), prep })
    }
}

impl<B: Backend> Judge<B> for VqaJudge {
    fn batch_size(&self) -> usize {
        1024
    }

    fn judge(&mut self, _b: &B, answers: &[Answer]) -> Result<Vec<Verdict>> {
        answers
            .iter()
            .map(|a| {
                let truth = a.id.parse::<u64>().ok().and_then(|q| self.truth.get(&q)).ok_or_else(|| {
                    anyhow!(
                        "{}: no annotation for answer id `{}` (a VQA judge scores answers whose ids are \
                         VQA question ids of this file)",
                        self.annotations.display(),
                        a.id
                    )
                })?;
                let answer = self.prep.prepare(a.response);
                let accuracy = question_accuracy(&truth.answers, &answer);
                let raw = serde_json::json!({
                    "answer": answer,
                    "answer_type": truth.answer_type,
                    "question_type": truth.question_type,
                });
                Ok(Verdict::score(accuracy, raw))
            })
            .collect()
    }
}

/// Gives every `vqa` judge its annotations file — the one given, else the one the run's
/// manifest records (an error naming the run when it has none) — and its answer preparation.
pub fn resolve(mut specs: Vec<JudgeSpec>, run: &RunDir, args: &JudgeArgs) -> Result<Vec<JudgeSpec>> {
    for spec in specs.iter_mut().filter(|s| s.kind == JudgeKind::Vqa) {
        spec.vqa_answers = Some(args.vqa_answers);
        if spec.dir.is_some() {
            continue;
        }
        let settings = run.manifest()?.map(|m| m.settings).unwrap_or_default();
        let Some(file) = crate::vqa::source::recorded_annotations(&settings) else {
            bail!(
                "{}: --judge {}: this run was not made from VQA-v2 data (its manifest names no annotations); \
                 give the annotations file as --judge vqa=FILE",
                run.root().display(),
                spec.name
            );
        };
        if !file.is_file() {
            bail!(
                "{}: the VQA-v2 annotations this run was made with are gone; give them as --judge vqa=FILE",
                file.display()
            );
        }
        spec.dir = Some(file);
    }
    Ok(specs)
}

/// A sweep with `--judge vqa` must read VQA-v2 (or the judge must name its annotations), found
/// before anything is generated.
pub fn check_sweep(specs: &[JudgeSpec], data: &DataArgs) -> Result<()> {
    if let Some(s) = specs.iter().find(|s| s.kind == JudgeKind::Vqa && s.dir.is_none()) {
        if !crate::vqa::source::is_vqa(data) {
            bail!(
                "--judge {}: scores VQA-v2 answers; read VQA-v2 (--vqa-annotations FILE) or name the annotations \
                 (--judge vqa=FILE)",
                s.name
            );
        }
    }
    Ok(())
}
