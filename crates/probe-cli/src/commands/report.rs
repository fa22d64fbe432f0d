//! `icet report`.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use icet_engine::report::{report, ReportRequest};

#[derive(ClapArgs, Debug)]
#[command(after_help = "Writes into --out (default RUN_DIR/report for one run):
  report.md / report.csv / report.json   per-layer and Early/Middle/Late/Average rows, 95% intervals;
                                         Llama Guard hazard categories by layer in their own tables
  <metric>.svg / <metric>.png            each metric against layer, one line per run, default layer marked
  report.html                            one page: tables, hover plots, answer browser,
                                         each prompt's answers at every layer
  safety_utility.svg/.png                with an ASR and a VQA accuracy among the runs: ASR beside
  asr_vs_accuracy.svg/.png               accuracy, reward by layer; unsafe but useful layers marked
  vqa_results/RUN/JUDGE/                 VQA runs: each layer's answers as official results files
                                         (layerL.json) with the run's questions and annotations
Metrics: refusal_rate (the sweep's keyword check), asr:JUDGE (a Llama Guard judge's unsafe share),
toxicity:JUDGE, reward:JUDGE, category:JUDGE:CODE, vqa:JUDGE (official VQA accuracy) and
vqa:JUDGE:TYPE (per answer type).

Examples:
  icet report runs/rt-llava runs/rt-llava-defended --label before --label after --out runs/compare
  icet report runs/rt-llava runs/vqa-llava --label safety --label utility --out runs/safety-utility")]
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
    pub html: icet_engine::report_html::HtmlArgs,
}

impl super::Run for Args {
    fn run(self) -> Result<()> {
        let req = ReportRequest {
            runs: self.runs,
            labels: self.labels,
            out: self.out,
            bootstrap: self.bootstrap,
            seed: self.seed,
            html: self.html,
        };
        let (md, out, plots) = report(&req)?;
        println!("{md}");
        eprintln!("icet: report.md, report.csv, report.json, report.html and {plots} plots in {}", out.display());
        Ok(())
    }
}
