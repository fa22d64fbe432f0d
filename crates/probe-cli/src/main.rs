//! `icet`: layer-wise safety sweeps of vision-language models by image-encoder early exit.
mod bench;
mod common;
mod data;
mod demo;
mod features;
mod generate;
mod info;
mod mllama_cmd;
mod perspective;
mod refusal;
mod report;
mod report_html;
mod score;
mod summary;
mod sweep;
mod vqa;

use clap::{Parser, Subcommand};

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
  icet bench --model DIR --device cuda     throughput of vision, prefill and decode, TFLOP/s";

#[derive(Parser)]
#[command(name = "icet", version, about = "Layer-wise safety sweeps of vision-language models (image-encoder early exit)", long_about = ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run prompts × images × vision layers through the model; write responses, summary and plots
    Sweep(sweep::Args),
    /// Generate one answer for one image and prompt with the vision features of one layer
    Generate(generate::Args),
    /// Write pixel values, hidden states and projected features of chosen layers to safetensors
    Features(features::Args),
    /// Describe a model directory: architecture, layer counts, dtypes, parameters
    Info(info::Args),
    /// Score a run's answers with judges (Llama Guard, reward model, toxicity, Perspective)
    Score(score::Args),
    /// Per-layer tables (CSV, JSON, Markdown) and plots of scored runs, with 95% intervals
    Report(report::Args),
    /// Throughput of each stage (vision pass, prefill, decode by batch size) with achieved TFLOP/s
    Bench(bench::Args),
    /// The official VQA-v2 accuracy of a results file (overall, per answer/question type, per question)
    VqaEval(vqa::EvalArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sweep(a) => sweep::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Features(a) => features::run(a),
        Command::Info(a) => info::run(a),
        Command::Score(a) => score::run(a),
        Command::Report(a) => report::run(a),
        Command::Bench(a) => bench::run(a),
        Command::VqaEval(a) => vqa::run(a),
    };
    if let Err(e) = result {
        // One line, naming the input: the chain of contexts joined.
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
