//! Scoring a run: every answer of `responses.jsonl` by every judge into `scores.jsonl`, one row
//! per (answer, judge), the judge's raw output kept. One loop for every judge ([`Judge`]).
//!
//! Resumable and idempotent: rows already in `scores.jsonl` are skipped; a judge name is bound to
//! its identity in `judges.json`, so a rerun cannot mix two models under one name. One scorer per
//! run at a time (the run's lock on `scores.jsonl`); each logs itself in `invocations.jsonl`.
//! Judges load one at a time (a Llama Guard 8B and a GPT-2 large need not fit in memory together).
//!
//! Sharded (`icet score --shard K/N`, or a sweep shard's `--judge`): shard K scores its part of
//! the answers into `scores.shard-K-of-N.jsonl` under its own lock ([`score_shard_of`]), skipping
//! what any scores file of the run already holds.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use icet_models::backend::Backend;
use icet_models::generation::interrupt;

use crate::judge::{self, Answer, JudgeArgs, JudgeSpec};
use crate::progress::Progress;
use crate::run_dir::{Invocation, Manifest, ResponseRow, RunDir, ScoreRow, RESPONSES};
use crate::shard::{describe_incomplete, Shard};
use crate::stats::{fnv1a, FNV_OFFSET};

/// Scores every answer of `run` (of its shard, when `run` is a shard's: [`RunDir::with_shard`])
/// with every judge of `args`.
pub fn score_run<B: Backend>(b: &B, run: &RunDir, args: &JudgeArgs) -> Result<()> {
    if args.judges.is_empty() {
        bail!("no --judge given (e.g. --judge llama-guard=DIR --judge toxicity=DIR)");
    }
    if !run.has_responses() {
        bail!("{}: no responses.jsonl here; run `icet sweep` first", run.root().display());
    }
    let _lock = run.lock(&run.scores_file())?;
    let answers = run.answers()?;
    if let Some(note) = run.shard_status(&answers)?.and_then(|s| describe_incomplete(&s)) {
        eprintln!("icet: {}: {note}; scoring the answers there are", run.root().display());
    }
    let mut responses = answers.rows;
    if let Some(shard) = run.shard() {
        score_shard(&mut responses, run.manifest()?.as_ref(), shard);
        eprintln!("icet: scoring {shard}: {} answers, into {}", responses.len(), run.scores_file());
    }
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
    run.log_invocation(&Invocation::now(b.name(), &run.scores_file()))?;
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
    eprintln!("icet: scores in {}", run.path(&run.scores_file()).display());
    Ok(())
}

/// The answers of scoring shard `shard`: its sweep shard's when the run was made in as many
/// shards (so shard K's answers are scored by shard K), else those whose image hashes to it (one
/// image's answers together). Either way a function of each answer alone, so the split never
/// depends on how far the run has got.
pub fn score_shard(responses: &mut Vec<ResponseRow>, manifest: Option<&Manifest>, shard: Shard) {
    let owner = manifest.and_then(|m| m.shards.as_ref()).filter(|p| p.count == shard.count).map(|p| p.shard_of());
    let by_image = |r: &ResponseRow| (fnv1a(FNV_OFFSET, r.image.bytes()) % shard.count as u64) as usize;
    responses.retain(|r| {
        let k = owner.as_ref().and_then(|o| o.get(r.id.as_str()).copied()).unwrap_or_else(|| by_image(r));
        k == shard.index
    });
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
