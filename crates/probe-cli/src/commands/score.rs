//! `icet score`.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use icet_engine::device::{self, Device, DtypeArg};
use icet_engine::judge::JudgeArgs;
use icet_engine::run_dir::RunDir;
use icet_engine::score::score_run;
use icet_engine::shard::ShardArg;

#[derive(ClapArgs, Debug)]
#[command(after_help = "Judges (KIND):
  llama-guard[-1|-2|-3]=DIR  Llama Guard on (prompt, response); version detected unless given
  llama-guard-3-vision=DIR   Llama-Guard-3-11B-Vision on (image, prompt, response); an Mllama
                             directory given as `llama-guard=DIR` is this judge too
  reward=DIR                 a reward model: GPT-2 on the HH dialogue (Human: PROMPT, Assistant:
                             RESPONSE); DeBERTa-v2/v3 (reward-model-deberta-v3-large-v2) on the
                             pair (PROMPT as asked, RESPONSE), as its model card scores them
  toxicity=DIR               BERT/RoBERTa toxicity classifier on the response
  perspective                Perspective API TOXICITY of the response (key: PERSPECTIVE_API_KEY)
  vqa[=ANNOTATIONS]          official VQA accuracy (0..1) of each answer against the VQA-v2
                             annotations the sweep read (or those given), see --vqa-answers
`KIND:NAME=DIR` names the judge (default: KIND), so two judges of one kind can be compared.

Writes into RUN_DIR:
  scores.jsonl            {id, layer, judge, kind, unsafe, categories, score, raw} per answer and judge
  judges.json             judge name -> kind, model directory (VQA: annotations, --vqa-answers)
  perspective_cache.jsonl Perspective answers by text (never asked twice)
Rerunning skips what is scored. Then: icet report RUN_DIR
A run made in shards is scored as one run (every shard's answers file). --shard K/N (or auto, as
`icet sweep`) scores shard K's answers into scores.shard-K-of-N.jsonl: the sweep's shard K when
the run was made in N shards, else the answers whose image hashes to K.

Examples:
  icet score runs/rt-llava --judge llama-guard-3=Llama-Guard-3-8B --judge toxicity=toxic-bert \\
    --judge reward=gpt2-large-harmless-reward_model
  icet score runs/rt-llava --judge llama-guard-3-vision=Llama-Guard-3-11B-Vision  # judges with the images
  icet score runs/vqa-llava --judge vqa --judge reward:deberta=reward-model-deberta-v3-large-v2")]
pub struct Args {
    /// A sweep's output folder (holds responses.jsonl)
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub judges: JudgeArgs,
    /// Compute device
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Score only shard K (from 0) of N of the answers: `K/N`, `auto` or `auto/N` (as `icet sweep`)
    #[arg(long, value_name = "K/N|auto")]
    pub shard: Option<ShardArg>,
}

impl super::Run for Args {
    fn run(self) -> Result<()> {
        let shard = match self.shard {
            Some(arg) => Some(arg.resolve(|k| std::env::var(k).ok())?).filter(|s| s.count > 1),
            None => None,
        };
        let selected = device::select(self.device, DtypeArg::F32)?;
        let run = RunDir::open_for_writing(&self.run_dir).map(|r| r.with_shard(shard));
        icet_engine::with_backend!(selected, |b| score_run(&b, &run?, &self.judges))
    }
}
