//! The `icet` commands: each parses its arguments, picks the backend and calls the engine
//! (`icet_engine`). Options every model command takes are here.
use std::path::Path;

use anyhow::{bail, Result};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args as ClapArgs, ValueEnum};
use icet_engine::device::{self, Device, DtypeArg, SelectedBackend};
use icet_models::backend::Backend;
use icet_models::vlm::{registry, FamilyOptions};

pub mod bench;
pub mod features;
pub mod generate;
pub mod info;
pub mod report;
pub mod score;
pub mod slurm;
pub mod sweep;
pub mod vqa_eval;

/// A command: parses into its `Args`, then runs.
pub trait Run {
    fn run(self) -> Result<()>;
}

/// A command that runs on the backend its `--device`/`--dtype` choose: [`Run`] picks it and
/// calls [`Self::run_on`] with the concrete backend.
pub trait OnBackend: Sized {
    fn model(&self) -> &ModelArgs;
    fn run_on<B: Backend>(self, b: &B) -> Result<()>;
}

impl<T: OnBackend> Run for T {
    fn run(self) -> Result<()> {
        let selected = self.model().backend()?;
        icet_engine::with_backend!(selected, |b| self.run_on(&b))
    }
}

/// `--strategy` (LLaVA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Drop the class token (LLaVA-1.5)
    Default,
    /// Keep every token
    Full,
}

/// `--exit-rule` (Llama 3.2 Vision): how ICET-l fills its projector input (global slot ‖ taps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExitRuleArg {
    /// Stop after local layer l: the global encoder runs on it, taps deeper than l read l
    Clamp,
    /// The stock model with the final (global) slot replaced by local layer l
    ReplaceFinal,
    /// Every slot of the concatenation is local layer l
    AllSlots,
}

/// Model options every model command takes.
#[derive(ClapArgs, Clone, Debug)]
pub struct ModelArgs {
    /// Local Hugging Face model directory (config.json, *.safetensors, tokenizer.json,
    /// preprocessor_config.json), e.g. a download of llava-hf/llava-1.5-7b-hf
    #[arg(long, value_name = "DIR")]
    pub model: Option<std::path::PathBuf>,
    /// Compute device
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Tensor storage type on the GPU; the CPU backend computes in f32 only
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// LLaVA: override the config's vision_feature_select_strategy
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// LLaVA: pad images to a square of the mean colour first (the original LLaVA's
    /// expand2square; llava-hf's processor does not)
    #[arg(long)]
    pub pad_square: bool,
    /// Llama 3.2 Vision: how ICET-l fills the projector input (global slot + taps) [default: clamp]
    #[arg(long, value_enum)]
    pub exit_rule: Option<ExitRuleArg>,
}

pub fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

impl ModelArgs {
    pub fn model_dir(&self) -> Result<&Path> {
        match &self.model {
            Some(d) => Ok(d),
            None => bail!("--model DIR is required"),
        }
    }

    /// The backend to run on (`--device`, `--dtype`).
    pub fn backend(&self) -> Result<SelectedBackend> {
        device::select(self.device, self.dtype)
    }

    /// The options only some families take, as given; the model's family checks them.
    pub fn family_options(&self) -> FamilyOptions {
        let mut o = FamilyOptions::default();
        if let Some(s) = self.strategy {
            o.set("strategy", value_name(s));
        }
        if self.pad_square {
            o.set("pad-square", "");
        }
        if let Some(r) = self.exit_rule {
            o.set("exit-rule", value_name(r));
        }
        o
    }
}

/// `--template`: every family's named templates, `raw` and `auto`; the model's family says
/// which it takes.
pub fn template_values() -> PossibleValuesParser {
    let mut values: Vec<PossibleValue> =
        registry::templates().into_iter().map(|t| PossibleValue::new(t.name).help(t.help)).collect();
    values.push(
        PossibleValue::new("raw")
            .help("The prompt as given; it must contain the model's image token (`<image>`, `<|image|>`) once"),
    );
    values.push(PossibleValue::new("auto").help(
        "The model's own chat template (chat_template.jinja, chat_template.json or tokenizer_config.json), \
         rendered as transformers' apply_chat_template does; the family default when the model ships none",
    ));
    PossibleValuesParser::new(values)
}
