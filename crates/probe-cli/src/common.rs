//! Options and steps shared by the subcommands.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use icet_models::backend::cpu::Cpu;
use icet_models::backend::Backend;
use icet_models::llava::{FeatureStrategy, Llava, LoadParts};
use icet_models::prompt::Template;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// CUDA when a GPU and the kernels are present, else CPU
    Auto,
    /// The f32 reference backend
    Cpu,
    /// NVIDIA GPU
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Drop the class token (LLaVA-1.5)
    Default,
    /// Keep every token
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TemplateArg {
    /// The original LLaVA-1.5 conversation (system sentence, USER/ASSISTANT)
    LlavaV1,
    /// `USER: <image>\n{prompt} ASSISTANT:` as on the llava-hf model cards
    LlavaHf,
    /// The prompt as given; it must contain `<image>`
    Raw,
}

impl TemplateArg {
    pub fn template(self) -> Template {
        match self {
            Self::LlavaV1 => Template::LlavaV1,
            Self::LlavaHf => Template::LlavaHf,
            Self::Raw => Template::Raw,
        }
    }
}

/// Model options every command takes.
#[derive(ClapArgs, Clone, Debug)]
pub struct ModelArgs {
    /// Local Hugging Face model directory (config.json, *.safetensors, tokenizer.json,
    /// preprocessor_config.json), e.g. a download of llava-hf/llava-1.5-7b-hf
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Compute device
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Override the config's vision_feature_select_strategy
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Pad images to a square of the mean colour first (the original LLaVA's expand2square;
    /// llava-hf's processor does not)
    #[arg(long)]
    pub pad_square: bool,
}

impl ModelArgs {
    pub fn model_dir(&self) -> Result<&Path> {
        match &self.model {
            Some(d) => Ok(d),
            None => bail!("--model DIR is required"),
        }
    }

    /// The backend to run on (`--device`). Commands match on it once and run generic code.
    pub fn backend(&self) -> Result<SelectedBackend> {
        match self.device {
            Device::Cpu => Ok(SelectedBackend::Cpu(Cpu)),
            Device::Auto => {
                eprintln!("icet: using the CPU backend (this build has no CUDA backend)");
                Ok(SelectedBackend::Cpu(Cpu))
            }
            Device::Cuda => bail!("--device cuda: this build has no CUDA backend; use --device cpu"),
        }
    }

    pub fn strategy<B: Backend>(&self, model: &Llava<B>) -> FeatureStrategy {
        match self.strategy {
            Some(StrategyArg::Default) => FeatureStrategy::Default,
            Some(StrategyArg::Full) => FeatureStrategy::Full,
            None => model.config.strategy(),
        }
    }

    pub fn load<B: Backend>(&self, b: &B, parts: LoadParts) -> Result<Llava<B>> {
        Ok(Llava::load(self.model_dir()?, b, parts)?)
    }
}

/// The backend `--device` chose. Each command's `run` matches on it once and calls its generic
/// `run_on::<B>` (see [`with_backend!`]).
pub enum SelectedBackend {
    Cpu(Cpu),
}

/// `with_backend!(selected, |b| expr)`: evaluates `expr` with `b` bound to the concrete backend.
#[macro_export]
macro_rules! with_backend {
    ($selected:expr, |$b:ident| $body:expr) => {
        match $selected {
            $crate::common::SelectedBackend::Cpu($b) => $body,
        }
    };
}
