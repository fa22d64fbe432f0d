//! The sweep's data flags (`--data-format`, `--images`, `--pairing`, `--where`, the VQA-v2
//! options) as one clap group, shared by every data source: the tabular formats (`super`) and
//! VQA-v2 (`crate::vqa::source`) read them, neither defines them.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};

use crate::vqa::data::DEFAULT_PROMPT_SUFFIX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum DataFormat {
    /// From the extension and the CSV header
    #[default]
    Auto,
    Jsonl,
    Csv,
    /// JailBreakV-28K (full or mini split)
    Jailbreakv,
    /// RedTeam-2K (from JailBreakV-28K)
    Redteam2k,
    /// AdvBench harmful_behaviors.csv
    Advbench,
    /// VQA-v2 questions (with --vqa-annotations and the COCO images as --images)
    #[value(name = "vqa-v2")]
    VqaV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Pairing {
    /// One seeded random image per prompt
    #[default]
    Random,
    /// Every prompt with every image
    Cross,
}

/// Data options of `sweep`.
#[derive(ClapArgs, Clone, Debug, Default)]
pub struct DataArgs {
    /// Format of --data
    #[arg(long, value_enum, default_value_t = DataFormat::Auto)]
    pub data_format: DataFormat,
    /// Image folder: paired with prompt-only data, or the base of relative image paths
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// How prompt-only data is paired with --images
    #[arg(long, value_enum, default_value_t = Pairing::Random)]
    pub pairing: Pairing,
    /// Seed of the random pairing
    #[arg(long, default_value_t = 0)]
    pub pair_seed: u64,
    /// Use only the first N prompts (before pairing)
    #[arg(long, value_name = "N")]
    pub max_prompts: Option<usize>,
    /// CSV column to read prompts from (overrides the format's choice)
    #[arg(long, value_name = "NAME")]
    pub prompt_column: Option<String>,
    /// Keep only rows whose column (CSV) or field (JSONL) COLUMN equals VALUE, e.g. `label=safe`
    /// (XSTest's safe prompts) or `policy=Malware`; repeat: several values of one column keep
    /// any of them, different columns must all match. Applied before --max-prompts.
    #[arg(long = "where", value_name = "COLUMN=VALUE")]
    pub filters: Vec<String>,
    #[command(flatten)]
    pub vqa: VqaArgs,
}

/// The sweep's VQA-v2 options (part of [`DataArgs`]).
#[derive(ClapArgs, Clone, Debug, Default, PartialEq)]
pub struct VqaArgs {
    /// VQA-v2: the annotations file of the questions given as --data
    /// (v2_mscoco_<split>_annotations.json); implies --data-format vqa-v2
    #[arg(long, value_name = "FILE")]
    pub vqa_annotations: Option<PathBuf>,
    /// VQA-v2: the split in the COCO image names (COCO_<split>_<id>.jpg) [default: the questions
    /// file's data_subtype]
    #[arg(long, value_name = "SPLIT")]
    pub vqa_split: Option<String>,
    /// VQA-v2: ask a seeded sample of N questions, stratified by answer type (yes/no, number,
    /// other keep their shares), instead of all
    #[arg(long, value_name = "N")]
    pub max_items: Option<usize>,
    /// Seed of the --max-items sample
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub sample_seed: u64,
    /// VQA-v2: the line put after each question [default: LLaVA-1.5's evaluation prompt, "Answer
    /// the question using a single word or phrase."]; '' asks the question alone
    #[arg(long, value_name = "TEXT")]
    pub prompt_suffix: Option<String>,
}

impl VqaArgs {
    pub(crate) fn suffix(&self) -> &str {
        self.prompt_suffix.as_deref().unwrap_or(DEFAULT_PROMPT_SUFFIX)
    }
}

/// `--where COLUMN=VALUE` arguments grouped by column (lower-cased): the values a row may have.
pub(crate) fn parse_filters(filters: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for f in filters {
        let Some((col, value)) = f.split_once('=') else {
            bail!("--where {f}: expected COLUMN=VALUE");
        };
        let col = col.trim().to_ascii_lowercase();
        if col.is_empty() {
            bail!("--where {f}: empty column name");
        }
        match out.iter_mut().find(|(c, _)| *c == col) {
            Some((_, values)) => values.push(value.trim().to_string()),
            None => out.push((col, vec![value.trim().to_string()])),
        }
    }
    Ok(out)
}
