//! Options and steps shared by the subcommands.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use icet_models::backend::cpu::Cpu;
use icet_models::backend::cuda::{Cuda, CudaDevice, DType};
use icet_models::backend::Backend;
use icet_models::chat_template::ChatTemplate;
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
    /// The CUDA backend on an emulated GPU: the same kernels run on the CPU (for testing; slow)
    CudaEmu,
}

/// Storage type of tensors on the GPU (kernels compute in f32 and GEMMs accumulate in f32 either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// 32-bit floats: the reference precision (the CPU backend's only one)
    F32,
    /// bfloat16: half the memory and tensor-core speed
    Bf16,
    /// float16: as bf16, with more mantissa and less range
    F16,
}

impl DtypeArg {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
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
    /// The prompt as given; it must contain the image token (`<image>`, or `<|image|>` for Llama 3.2 Vision)
    Raw,
    /// Llama 3 chat format with `<|image|>` (Llama 3.2 Vision; its default)
    Llama3,
    /// The model's own chat template (chat_template.jinja, chat_template.json or
    /// tokenizer_config.json), rendered as transformers' apply_chat_template does; the family
    /// default when the model ships none
    Auto,
}

impl TemplateArg {
    /// The LLaVA template (`llama3` is Llama 3.2 Vision's, see `mllama_cmd::template`).
    pub fn template(self) -> Result<Template> {
        Ok(match self {
            Self::LlavaV1 => Template::LlavaV1,
            Self::LlavaHf => Template::LlavaHf,
            Self::Raw => Template::Raw,
            Self::Llama3 => bail!("--template llama3 is for Llama 3.2 Vision; LLaVA takes llava-v1, llava-hf or raw"),
            Self::Auto => bail!("--template auto is resolved against the model directory (see llava_prompts)"),
        })
    }
}

/// The LLaVA input texts for `prompts` under `--template` (default `llava-v1`), and the name of
/// the template used. `auto` renders the model's own chat template with one user message holding
/// an image and the prompt, as transformers' processors do; a leading BOS string is removed
/// because the tokenizer adds BOS itself.
pub fn llava_prompts(model_dir: &Path, arg: Option<TemplateArg>, prompts: &[&str]) -> Result<(String, Vec<String>)> {
    let arg = arg.unwrap_or(TemplateArg::LlavaV1);
    if arg == TemplateArg::Auto {
        if let Some(chat) = ChatTemplate::from_dir(model_dir)? {
            let bos = chat.special_tokens.iter().find(|(k, _)| k == "bos_token").map(|(_, v)| v.clone());
            let texts = prompts
                .iter()
                .map(|p| {
                    let placeholder = format!("{}\n", icet_models::prompt::IMAGE_PLACEHOLDER);
                    let text = render_image_turn(&chat, p, &placeholder)?;
                    Ok(match &bos {
                        Some(b) if !b.is_empty() && text.starts_with(b.as_str()) => text[b.len()..].to_string(),
                        _ => text,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok((format!("auto ({})", chat.origin.display()), texts));
        }
        eprintln!("icet: {} ships no chat template; using llava-v1", model_dir.display());
        return llava_prompts(model_dir, Some(TemplateArg::LlavaV1), prompts);
    }
    let template = arg.template()?;
    let texts = prompts.iter().map(|p| template.render(p)).collect::<Result<_, _>>()?;
    Ok((template.name().to_string(), texts))
}

/// A model's chat template rendered for one user turn of an image and `prompt`, with the
/// generation prompt, as processors' `apply_chat_template` does: `[image, text]` typed parts for
/// templates that read them, else the text with `placeholder` (the family's image token) in front.
pub fn render_image_turn(chat: &ChatTemplate, prompt: &str, placeholder: &str) -> Result<String> {
    let content = if chat.uses_typed_parts() {
        serde_json::json!([{"type": "image"}, {"type": "text", "text": prompt}])
    } else {
        serde_json::Value::String(format!("{placeholder}{prompt}"))
    };
    Ok(chat.render_json(&serde_json::json!([{"role": "user", "content": content}]), true, &[])?)
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
    /// Tensor storage type on the GPU; the CPU backend computes in f32 only
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
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

    /// The backend to run on (`--device`, `--dtype`). Commands match on it once and run generic
    /// code. `auto` takes the GPU when one is usable and says which device it chose, once.
    pub fn backend(&self) -> Result<SelectedBackend> {
        let dtype = self.dtype.dtype();
        match self.device {
            Device::Cpu => {
                if dtype != DType::F32 {
                    bail!("--dtype {dtype} needs --device cuda (the CPU backend is the f32 reference)");
                }
                Ok(SelectedBackend::Cpu(Cpu))
            }
            Device::Cuda => match Cuda::new(dtype) {
                Ok(cuda) => Ok(SelectedBackend::Cuda(cuda)),
                Err(e) => bail!("--device cuda: {e}"),
            },
            Device::CudaEmu => match Cuda::open(CudaDevice::Emulator, dtype) {
                Ok(cuda) => {
                    say_once(format!("icet: using the {} ({dtype})", cuda.describe()));
                    Ok(SelectedBackend::Cuda(cuda))
                }
                Err(e) => bail!("--device cuda-emu: {e}"),
            },
            Device::Auto => match Cuda::new(dtype) {
                Ok(cuda) => {
                    say_once(format!("icet: using CUDA on {} ({dtype})", cuda.describe()));
                    Ok(SelectedBackend::Cuda(cuda))
                }
                Err(e) => {
                    let note = if dtype == DType::F32 { String::new() } else { format!("; --dtype {dtype} ignored") };
                    say_once(format!("icet: using the CPU backend (no CUDA: {e}){note}"));
                    Ok(SelectedBackend::Cpu(Cpu))
                }
            },
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
    Cuda(Cuda),
}

/// Prints `msg` on stderr the first time only (commands may ask for the backend more than once).
fn say_once(msg: String) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("{msg}"));
}

/// `with_backend!(selected, |b| expr)`: evaluates `expr` with `b` bound to the concrete backend.
#[macro_export]
macro_rules! with_backend {
    ($selected:expr, |$b:ident| $body:expr) => {
        match $selected {
            $crate::common::SelectedBackend::Cpu($b) => $body,
            $crate::common::SelectedBackend::Cuda($b) => $body,
        }
    };
}
