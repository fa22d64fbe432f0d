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
  reward=DIR                 GPT-2 reward model on the HH dialogue (Human: PROMPT, Assistant: RESPONSE)
  toxicity=DIR               BERT/RoBERTa toxicity classifier on the response
  perspective                Perspective API TOXICITY of the response (key: PERSPECTIVE_API_KEY)
`KIND:NAME=DIR` names the judge (default: KIND), so two judges of one kind can be compared.

Writes into RUN_DIR:
  scores.jsonl            {id, layer, judge, kind, unsafe, categories, score, raw} per answer and judge
  judges.json             judge name -> kind and model directory
  perspective_cache.jsonl Perspective answers by text (never asked twice)
Rerunning skips what is scored. Then: icet report RUN_DIR
A run made in shards is scored as one run (every shard's answers file). --shard K/N (or auto, as
`icet sweep`) scores shard K's answers into scores.shard-K-of-N.jsonl: the sweep's shard K when
the run was made in N shards, else the answers whose image hashes to K.

Examples:
  icet score runs/rt-llava --judge llama-guard-3=Llama-Guard-3-8B --judge toxicity=toxic-bert \\
    --judge reward=gpt2-large-harmless-reward_model
  icet score runs/rt-llava --judge llama-guard-3-vision=Llama-Guard-3-11B-Vision  # judges with the images")]
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
