//! `icet`: layer-wise safety sweeps of vision-language models by image-encoder early exit. The
//! commands parse arguments and call the engine (`icet_engine`); adding one is a module in
//! `commands/` plus its variant and match arm below.
mod commands;

use clap::{Parser, Subcommand};
use commands::Run;

const ABOUT: &str = "Image-encoder early exit (ICET) for vision-language models.

Feed the hidden state of vision-encoder layer l (instead of the configured default, LLaVA-1.5's
penultimate layer) through the unchanged projector into the unchanged language model, and watch
how safety behaviour changes layer by layer.

Layer indices follow transformers' `hidden_states`: 0 is the embedding output (after CLIP's
pre-layernorm), l the output of encoder layer l, negative indices count from the end
(-1 = last layer, -2 = LLaVA-1.5's default, layer 23 of 24).

Start here:
  icet sweep                               run the embedded demo (tiny random model: gibberish text)
  icet info --model DIR                    what a checkpoint is
  icet generate --model DIR --image cat.jpg --prompt 'What is this?' --layer 8
  icet sweep --model DIR --data prompts.jsonl --layers all --out runs/llava-all
  icet score runs/llava-all --judge llama-guard=GUARD_DIR --judge toxicity=DIR --judge reward=DIR
  icet report runs/llava-all               per-layer tables with 95% intervals, plots
  icet bench --model DIR --device cuda     throughput of vision, prefill and decode, TFLOP/s
  icet sweep ... --devices 0,1,2,3         one worker per GPU of this machine, one run
  icet slurm --shards 8 --submit -- --model DIR --data prompts.jsonl --out /shared/runs/x
                                           the sweep as a Slurm job array, one GPU per shard";

#[derive(Parser)]
#[command(name = "icet", version, about = "Layer-wise safety sweeps of vision-language models (image-encoder early exit)", long_about = ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run prompts × images × vision layers through the model; write responses, summary and plots
    Sweep(Box<commands::sweep::Args>),
    /// Generate one answer for one image and prompt with the vision features of one layer
    Generate(commands::generate::Args),
    /// Write pixel values, hidden states and projected features of chosen layers to safetensors
    Features(commands::features::Args),
    /// Describe a model directory: architecture, layer counts, dtypes, parameters
    Info(commands::info::Args),
    /// Score a run's answers with judges (Llama Guard, reward model, toxicity, Perspective)
    Score(commands::score::Args),
    /// Per-layer tables (CSV, JSON, Markdown) and plots of scored runs, with 95% intervals
    Report(commands::report::Args),
    /// Throughput of each stage (vision pass, prefill, decode by batch size) with achieved TFLOP/s
    Bench(commands::bench::Args),
    /// The official VQA-v2 accuracy of a results file (overall, per answer/question type, per question)
    VqaEval(commands::vqa_eval::Args),
    /// A sweep as a Slurm job array (one GPU per shard), with score and report jobs after it
    Slurm(commands::slurm::Args),
}

/// SIGINT and SIGTERM (Ctrl-C, Slurm's preemption) ask running work to stop at its next step
/// (`icet_models::generation::interrupt`): what is finished stays written and whole, the answers
/// in flight are dropped, and the command says how to resume. A second signal ends the process at
/// once (rows are written whole or not at all as far as a resume is concerned: a torn tail is cut).
fn stop_cleanly_on_signals() {
    let flag = icet_models::generation::interrupt::flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, flag.clone());
        let _ = signal_hook::flag::register(signal, flag.clone());
    }
}

fn main() {
    stop_cleanly_on_signals();
    let cli = Cli::parse();
    let resumable = matches!(cli.command, Command::Sweep(_) | Command::Score(_));
    let result = match cli.command {
        Command::Sweep(a) => (*a).run(),
        Command::Generate(a) => a.run(),
        Command::Features(a) => a.run(),
        Command::Info(a) => a.run(),
        Command::Score(a) => a.run(),
        Command::Report(a) => a.run(),
        Command::Bench(a) => a.run(),
        Command::VqaEval(a) => a.run(),
        Command::Slurm(a) => a.run(),
    };
    if let Err(e) = result {
        if e.chain().any(|c| matches!(c.downcast_ref(), Some(icet_models::Error::Interrupted))) {
            let hint = if resumable { " — rerun to resume (every finished answer is kept)" } else { "" };
            eprintln!("icet: interrupted{hint}");
            std::process::exit(130);
        }
        // One line, naming the input: the chain of contexts joined.
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
