//! The model-family seam: every command of the engine (features, generate, sweep, info, bench)
//! is written once against these traits, never against a family.
//!
//! A family has three levels:
//! * [`Family`] (a zero-sized type per family): its name, the `model_type`s it recognises, the
//!   templates and options it takes, and how it opens a model directory. [`registry`] lists the
//!   families; adding one is its folder plus one line there.
//! * [`ModelSpec`]: a model directory read as that family, before any weight loads — the exit
//!   layers, the default layer, prompt rendering, the settings that decide its answers. A sweep
//!   needs all of it before deciding whether to load anything (a finished run resumes without
//!   loading the model).
//! * [`EarlyExitVlm`]: the loaded model — prompt ids, one vision pass that captures a set of
//!   layers and projects each for the language model, the language model under the scheduler,
//!   the memory and FLOP models, the `icet features` dump.
//!
//! The layer index is always transformers' `hidden_states` index of the vision tower the family
//! exits from (see [`crate::layers`]).
use std::path::Path;

use crate::backend::Backend;
use crate::chat_template::ChatTemplate;
use crate::error::{Error, Result};
use crate::flops::FlopModel;
use crate::generation::{GenerationDefaults, ImageFeatures, SlotCost, StreamModel};
use crate::weights::{Checkpoint, ComponentLayout, Weights};

pub mod info;
pub mod registry;

pub use info::ModelInfo;

/// What every vision-language family reads from a model directory besides its config and its
/// modules: the weights, where each component lives in them, and the generation config.
pub struct ModelFiles {
    pub checkpoint: Checkpoint,
    pub layout: ComponentLayout,
    pub generation: GenerationDefaults,
}

impl ModelFiles {
    /// Opens the weights of `dir` (`detect` finds the family's layout in them) and reads its
    /// generation config.
    pub fn open(dir: &Path, detect: impl FnOnce(&Checkpoint) -> Result<ComponentLayout>) -> Result<Self> {
        let checkpoint = Checkpoint::open(dir)?;
        let layout = detect(&checkpoint)?;
        Ok(Self { checkpoint, layout, generation: GenerationDefaults::from_dir(dir)? })
    }

    /// Refuses weights with more CLIP-style vision layers (`{vision}encoder.layers.N`) or decoder
    /// layers (`{text}layers.N`) than the config declares: loading only the declared ones would
    /// silently move the default layer (transformers warns of unused weights; we refuse).
    pub fn check_layer_counts(&self, vision_layers: usize, text_layers: usize) -> Result<()> {
        let l = &self.layout;
        let ckpt = &self.checkpoint;
        ckpt.check_layer_count(
            &format!("{}encoder.layers.", l.vision),
            vision_layers,
            "vision_config.num_hidden_layers",
        )?;
        ckpt.check_layer_count(&format!("{}layers.", l.text), text_layers, "text_config.num_hidden_layers")
    }

    /// The weights under `prefix` (one of the layout's), uploaded to `b` as they are asked for.
    pub fn weights<'a, B: Backend>(&'a self, b: &'a B, prefix: &str) -> Weights<'a, B> {
        Weights::new(&self.checkpoint, b, prefix)
    }
}

/// Which parts of a model to load.
#[derive(Clone, Copy, Debug)]
pub struct LoadParts {
    /// Load vision layers `1..=deepest` only (early exit never reads deeper ones); `None`: all.
    pub deepest_vision_layer: Option<usize>,
    /// Load the language model and tokenizer (not needed for `icet features`).
    pub text: bool,
}

/// A `--template` a family offers besides `raw` and `auto`, which every family takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateInfo {
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
}

/// Command-line options that only some families take (`--strategy full`, `--pad-square`,
/// `--exit-rule clamp`), by flag name without the dashes, in the order given. A family takes the
/// ones it declares in [`Family::OPTIONS`] while it opens a directory; any left over is refused
/// with an error naming the option and the family ([`registry::open`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyOptions {
    given: Vec<(&'static str, String)>,
}

impl FamilyOptions {
    /// Records `--flag value` (an empty value for a switch).
    pub fn set(&mut self, flag: &'static str, value: impl Into<String>) {
        self.given.retain(|(f, _)| *f != flag);
        self.given.push((flag, value.into()));
    }

    /// Removes and returns the value of `--flag`, if it was given.
    pub fn take(&mut self, flag: &str) -> Option<String> {
        let i = self.given.iter().position(|(f, _)| *f == flag)?;
        Some(self.given.remove(i).1)
    }

    /// The value of `--flag`, if it was given (without taking it).
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.given.iter().find(|(f, _)| *f == flag).map(|(_, v)| v.as_str())
    }

    /// The flags not taken yet.
    pub fn remaining(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.given.iter().map(|(f, _)| *f)
    }
}

/// A model family. Implemented by a zero-sized type in the family's folder and listed once in
/// [`registry`].
pub trait Family: 'static {
    /// As users know it ("LLaVA", "Llama 3.2 Vision"); error messages name the family so.
    const NAME: &'static str;
    /// The `config.json` `model_type`s of this family's checkpoints.
    const MODEL_TYPES: &'static [&'static str];
    /// Its named templates, the first one the default (unless the family's [`ModelSpec`] picks
    /// one by the model, as LLaVA-NeXT does by its language model).
    const TEMPLATES: &'static [TemplateInfo];
    /// The flags of [`FamilyOptions`] it takes.
    const OPTIONS: &'static [&'static str];

    /// Why this family does not take `flag` (another family's option), for the error message;
    /// `None` says just that it does not.
    fn why_not(_flag: &str) -> Option<&'static str> {
        None
    }

    /// Reads the model directory `dir` (config only, no weights), taking this family's options.
    fn open<B: Backend>(dir: &Path, options: &mut FamilyOptions) -> Result<Box<dyn ModelSpec<B>>>;

    /// What `icet info` says about `dir`.
    fn describe(dir: &Path) -> Result<ModelInfo>;
}

/// Input texts rendered from user prompts by a template.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedPrompts {
    /// The template's name as a run records it (`llava-v1`, `auto (DIR/chat_template.jinja)`).
    pub template: String,
    pub texts: Vec<String>,
    /// Whether the tokenizer adds its special tokens (its post-processor's BOS) to these texts,
    /// as the transformers call the template stands for does: the processor's default for `raw`
    /// and LLaVA's templates, `add_special_tokens=False` for templates that write the BOS
    /// themselves (Llama 3.2 Vision's `llama3`), and for `auto` what
    /// `apply_chat_template(tokenize=True)` does — none when the rendered text starts with the
    /// tokenizer's BOS, else the processor's default.
    pub add_special_tokens: bool,
    /// Something the user should be told once (e.g. `auto` fell back to the family default).
    pub note: Option<String>,
}

/// A model directory opened as its family, before loading: what the config says and the options
/// chose. Generic over the backend only because it loads the model onto one.
pub trait ModelSpec<B: Backend> {
    /// Exit layers are `0..=num_layers()`.
    fn num_layers(&self) -> usize;
    /// The layer the stock model feeds its language model (for LLaVA the config's
    /// `vision_feature_layer`; for Llama 3.2 Vision the last local layer).
    fn default_layer(&self) -> Result<usize>;
    /// The input texts for `prompts` under `template` (`None`: the family default, else a name
    /// of [`Family::TEMPLATES`], `raw` or `auto`).
    fn render_prompts(&self, template: Option<&str>, prompts: &[&str]) -> Result<RenderedPrompts>;
    /// The settings beyond the common ones that decide this family's answers, for a run's
    /// manifest and for printed results (Llama 3.2 Vision: `exit_rule`); empty for most.
    fn settings(&self) -> serde_json::Map<String, serde_json::Value>;
    /// Loads the model onto `b`.
    fn load<'b>(&self, b: &'b B, parts: LoadParts) -> Result<Box<dyn EarlyExitVlm<B> + 'b>>;
}

/// How a sweep orders the (prompt, layer) work of one image. Images always go in the order of
/// their first data row, so that one vision pass serves every prompt and layer of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkOrder {
    /// Every layer of one prompt, then the next prompt: sequences in flight share nothing but
    /// the image, so any order is as fast; this one keeps a prompt's answers together.
    PromptMajor,
    /// Every prompt at one layer, then the next layer: sequences in flight read the same
    /// features, whose cross-attention keys/values are then computed once and shared.
    LayerMajor,
}

/// One named f32 tensor of an `icet features` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What `icet features` writes for one image, and a note for the user on what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureDump {
    pub tensors: Vec<NamedTensor>,
    pub note: String,
}

/// A loaded model of some family, as every command uses it.
pub trait EarlyExitVlm<B: Backend> {
    /// Token ids of a rendered prompt for `image` as the family's processor gives them (image
    /// slots expanded where the family splices features into the prompt; their number may
    /// depend on the image, as LLaVA-NeXT's tiling does on its size), the tokenizer's special
    /// tokens added or not ([`RenderedPrompts::add_special_tokens`]).
    fn prompt_ids(&self, text: &str, image: &Path, add_special_tokens: bool) -> Result<Vec<u32>>;
    /// Text of generated ids, special tokens removed.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// End-of-sequence ids from the model's generation config.
    fn eos_token_ids(&self) -> &[u32];
    /// One vision pass over `image` that keeps every layer of `layers` (and runs no deeper than
    /// they need), each projected for the language model, in the order of `layers`.
    fn image_features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<Vec<ImageFeatures<B>>>;
    /// The language model under the scheduler, for up to `slots` sequences in flight.
    fn stream<'a>(&'a self, slots: usize) -> Result<Box<dyn StreamModel<B> + 'a>>;
    /// Memory of one sequence in flight (`capacity` positions, prompts of up to `longest_prompt`
    /// tokens) and the vision work kept aside for `layers` requested layers; `element_bytes` per
    /// stored value. Sizes `--batch-size auto`.
    fn slot_cost(&self, capacity: usize, longest_prompt: usize, layers: usize, element_bytes: usize) -> SlotCost;
    /// How a sweep orders its work within an image.
    fn work_order(&self) -> WorkOrder;
    /// Everything the vision side makes of `image` for `layers`, as `icet features` writes it.
    fn features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<FeatureDump>;
    /// The work of each stage of a sweep over `image`, counted from the config and the image's
    /// geometry (how many tiles go through the tower, how many feature rows the language model
    /// reads: both depend on the image for tiling families).
    fn flop_model(&self, image: &Path) -> Result<FlopModel>;
    /// A sweep's per-image vision work (one pass keeping every layer, then each layer
    /// projected) for `images` copies of `image`, prepared so that each call of the returned
    /// closure does only the timed part and waits for the device.
    fn vision_workload<'a>(
        &'a self,
        b: &'a B,
        image: &Path,
        images: usize,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>>;
    /// What `icet bench` records about the family and `image` beyond the common facts.
    fn bench_facts(&self, image: &Path) -> Result<serde_json::Map<String, serde_json::Value>>;
}

/// A family's templates as one type: its named ones ([`Family::TEMPLATES`]) and `raw`.
pub trait PromptTemplate: Sized {
    /// The template named `name`.
    fn parse(name: &str) -> Result<Self>;
    /// The name a run records.
    fn name(&self) -> &'static str;
    /// The full input text for `prompt`.
    fn render(&self, prompt: &str) -> Result<String>;
    /// Whether the processor call this template stands for adds the tokenizer's special tokens.
    fn add_special_tokens(&self) -> bool;
}

/// How `--template auto` renders a model's own chat template for a family.
#[derive(Clone, Copy, Debug)]
pub struct AutoTemplate<'a> {
    /// What stands before the prompt in templates whose message content is a string (the
    /// family's image token); templates that read typed parts get `[image, text]`.
    pub placeholder: &'a str,
}

/// `prompts` under `--template arg` for family `F`, whose templates are `T`: `None` is the
/// family's default; `auto` renders the model's own chat template (chat_template.jinja,
/// chat_template.json or tokenizer_config.json) as processors' `apply_chat_template` does, one
/// user turn of an image and the prompt plus the generation prompt, and falls back to the default
/// (with a note) when the model ships none; anything else must be one of `F::TEMPLATES` or `raw`.
pub fn render_prompts<F: Family, T: PromptTemplate>(
    dir: &Path,
    arg: Option<&str>,
    prompts: &[&str],
    auto: AutoTemplate,
) -> Result<RenderedPrompts> {
    let default =
        F::TEMPLATES.first().map(|t| t.name).ok_or_else(|| Error::invalid(format!("{} has no template", F::NAME)))?;
    render_prompts_with_default::<F, T>(dir, arg, default, prompts, auto)
}

/// [`render_prompts`] with the family default chosen by the model (`default`, one of
/// `F::TEMPLATES`): LLaVA-NeXT's depends on its language model.
pub fn render_prompts_with_default<F: Family, T: PromptTemplate>(
    dir: &Path,
    arg: Option<&str>,
    default: &'static str,
    prompts: &[&str],
    auto: AutoTemplate,
) -> Result<RenderedPrompts> {
    let name = match arg {
        None => default,
        Some("auto") => {
            let Some(chat) = ChatTemplate::from_dir(dir)? else {
                let mut rendered = render_prompts_with_default::<F, T>(dir, Some(default), default, prompts, auto)?;
                rendered.note = Some(format!("{} ships no chat template; using {default}", dir.display()));
                return Ok(rendered);
            };
            let texts: Vec<String> =
                prompts.iter().map(|p| chat.render_image_turn(p, auto.placeholder)).collect::<Result<_>>()?;
            // ProcessorMixin.apply_chat_template(tokenize=True): the rendered text is tokenized as
            // it is, without added special tokens when it starts with the tokenizer's BOS (the
            // template wrote it), else with the processor's defaults. Stripping the BOS instead
            // loses it with tokenizers that add none (Llama 3's tokenizer.json without a BOS
            // post-processor, ChatML models).
            let bos = chat.special_tokens.iter().find(|(k, _)| k == "bos_token").map(|(_, v)| v.as_str());
            let starts_with_bos = bos.is_some_and(|b| !b.is_empty() && texts.first().is_some_and(|t| t.starts_with(b)));
            return Ok(RenderedPrompts {
                template: format!("auto ({})", chat.origin.display()),
                texts,
                add_special_tokens: !starts_with_bos,
                note: None,
            });
        }
        Some(t) if t == "raw" || F::TEMPLATES.iter().any(|x| x.name == t) => t,
        Some(t) => {
            let mut names: Vec<String> = F::TEMPLATES
                .iter()
                .map(|x| if x.name == default { format!("`{}` (default)", x.name) } else { format!("`{}`", x.name) })
                .collect();
            names.push("`raw`".into());
            return Err(Error::invalid(format!("--template {t}: {} takes {} or `auto`", F::NAME, names.join(", "))));
        }
    };
    let template = T::parse(name)?;
    let texts = prompts.iter().map(|p| template.render(p)).collect::<Result<_>>()?;
    Ok(RenderedPrompts {
        template: template.name().to_string(),
        texts,
        add_special_tokens: template.add_special_tokens(),
        note: None,
    })
}
