//! Scoring a run: every answer of `responses.jsonl` by every judge into `scores.jsonl`, one row
//! per (answer, judge), the judge's raw output kept. One loop for every judge ([`Judge`]).
//!
//! Resumable and idempotent: rows already in `scores.jsonl` are skipped; a judge name is bound to
//! its identity in `judges.json`, so a rerun cannot mix two models under one name. One scorer per
//! run at a time (the run's lock on `scores.jsonl`); each logs itself in `invocations.jsonl`.
//! Judges load one at a time (a Llama Guard 8B and a GPT-2 large need not fit in memory together).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use icet_models::backend::Backend;
use icet_models::generation::interrupt;

use crate::judge::{self, Answer, JudgeArgs, JudgeSpec};
use crate::progress::Progress;
use crate::run_dir::{Invocation, ResponseRow, RunDir, ScoreRow, RESPONSES, SCORES};

/// Scores every answer of `run` with every judge of `args`.
pub fn score_run<B: Backend>(b: &B, run: &RunDir, args: &JudgeArgs) -> Result<()> {
    if args.judges.is_empty() {
        bail!("no --judge given (e.g. --judge llama-guard=DIR --judge toxicity=DIR)");
    }
    if !run.has_responses() {
        bail!("{}: no responses.jsonl here; run `icet sweep` first", run.root().display());
    }
    let _lock = run.lock(SCORES)?;
    let responses = run.responses()?;
    let specs = judge::vqa::resolve(judge::preflight(args)?, run, args)?;
    let mut seen = HashSet::new();
    let mut identities = Vec::with_capacity(specs.len());
    for s in &specs {
        if !seen.insert(&s.name) {
            bail!("--judge: the name `{}` is given twice; name them with KIND:NAME=DIR", s.name);
        }
        identities.push((s.name.clone(), s.identity(args.judge_text_only)?));
    }
    run.bind_judges(&identities)?;
    run.log_invocation(&Invocation::now(b.name(), SCORES))?;
    let done: HashSet<(String, String, usize)> =
        run.scores_for_resume()?.into_iter().map(|r| (r.judge, r.id, r.layer)).collect();
    let mut scores = run.score_appender()?;
    for spec in &specs {
        let todo: Vec<&ResponseRow> =
            responses.iter().filter(|r| !done.contains(&(spec.name.clone(), r.id.clone(), r.layer))).collect();
        if todo.is_empty() {
            eprintln!("icet: judge {}: all {} answers already scored", spec.name, responses.len());
            continue;
        }
        eprintln!("icet: judge {} ({}): {} answers to score", spec.name, spec.kind.as_str(), todo.len());
        // Every image is found before the judge loads (and before anything is judged).
        let images: Vec<Option<PathBuf>> = if spec.needs_images(args.judge_text_only)? {
            let responses_path = run.path(RESPONSES);
            todo.iter()
                .map(|r| judged_image(r, args.image_root.as_deref(), &responses_path).map(Some))
                .collect::<Result<_>>()?
        } else {
            vec![None; todo.len()]
        };
        let mut judge = judge::load(spec, args, b, run)?;
        let mut progress = Progress::new(todo.len(), "scored");
        let n = judge.batch_size().max(1);
        for (batch, batch_images) in todo.chunks(n).zip(images.chunks(n)) {
            if interrupt::requested() {
                progress.finish();
                return Err(icet_models::Error::Interrupted.into());
            }
            let answers: Vec<Answer> = batch
                .iter()
                .zip(batch_images)
                .map(|(r, image)| Answer {
                    id: &r.id,
                    prompt: &r.prompt,
                    response: &r.response,
                    image: image.as_deref(),
                })
                .collect();
            let verdicts = judge.judge(b, &answers)?;
            let rows: Vec<ScoreRow> = batch.iter().zip(verdicts).map(|(r, v)| score_row(r, spec, v)).collect();
            scores.append(&rows)?;
            progress.inc(rows.len(), 0);
        }
        progress.finish();
    }
    eprintln!("icet: scores in {}", run.path(SCORES).display());
    Ok(())
}

fn score_row(r: &ResponseRow, spec: &JudgeSpec, v: judge::Verdict) -> ScoreRow {
    ScoreRow {
        id: r.id.clone(),
        layer: r.layer,
        judge: spec.name.clone(),
        kind: spec.kind,
        unsafe_: v.unsafe_,
        categories: v.categories,
        score: v.score,
        raw: v.raw,
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
