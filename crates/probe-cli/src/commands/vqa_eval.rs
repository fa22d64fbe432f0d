//! `icet vqa-eval`: the official VQA accuracy of a results file (the engine's [`icet_engine::vqa`]).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use icet_engine::vqa::{evaluate_files, to_json};

/// `icet vqa-eval`.
#[derive(ClapArgs, Debug)]
#[command(after_long_help = "The official VQA accuracy of a results file, exactly as GT-Vision-Lab/VQA's \
vqaEval.py computes it (answer normalisation only where the annotators disagree, leave-one-out \
min(1, matches/3) over the annotators, Python 2 rounding to 2 decimals), in percent: overall, per \
answer type, per question type and per question.

The results must answer every question of the annotations file, once, and nothing else.

Example:
  icet vqa-eval --questions v2_OpenEnded_mscoco_val2014_questions.json \\
      --annotations v2_mscoco_val2014_annotations.json --results results.json --json --out acc.json")]
pub struct Args {
    /// Questions file as distributed (v2_OpenEnded_mscoco_<split>_questions.json)
    #[arg(long, value_name = "FILE")]
    pub questions: PathBuf,
    /// Annotations file as distributed (v2_mscoco_<split>_annotations.json): the questions evaluated
    #[arg(long, value_name = "FILE")]
    pub annotations: PathBuf,
    /// Results in the official format: [{"question_id": int, "answer": str}, ...]
    #[arg(long, value_name = "FILE")]
    pub results: PathBuf,
    /// Print one JSON object {"overall", "perQuestionType", "perAnswerType", "perQuestion"} as the
    /// last stdout line instead of the tables
    #[arg(long)]
    pub json: bool,
    /// Also write that JSON object to FILE
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn table(title: &str, rows: &BTreeMap<String, f64>) -> String {
    let width = rows.keys().map(|k| k.chars().count()).max().unwrap_or(0);
    let mut s = format!("{title}:\n");
    for (k, v) in rows {
        s += &format!("  {k:<width$}  {v:6.2}\n");
    }
    s
}

/// Writes `text` to `path` through a temporary file in the same folder, so that an interrupted
/// write never leaves a half file under the name.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

impl super::Run for Args {
    fn run(self) -> Result<()> {
        run(self)
    }
}

fn run(a: Args) -> Result<()> {
    let acc = evaluate_files(&a.questions, &a.annotations, &a.results)?;
    let object = to_json(&acc);
    if let Some(out) = &a.out {
        write_atomically(out, &format!("{}\n", serde_json::to_string_pretty(&object)?))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&object)?);
    } else {
        println!(
            "VQA accuracy of {} ({} questions; official evaluation, percent)\n",
            a.results.display(),
            acc.per_question.len()
        );
        println!("Overall: {:.2}\n", acc.overall);
        println!("{}", table("Per answer type", &acc.per_answer_type));
        print!("{}", table("Per question type", &acc.per_question_type));
        if let Some(out) = &a.out {
            println!("\nwrote {} (with per-question accuracy)", out.display());
        }
    }
    Ok(())
}
