//! Llama 3.2 Vision as a whole (transformers' `MllamaForConditionalGeneration`): weight layouts,
//! the projector, and ICET-l under an [`ExitRule`].
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::config::MllamaConfig;
use super::preprocessing::{MllamaImageProcessor, TiledPixels};
use super::prompt::{build_string_from_input, load_tokenizer, IMAGE_TOKEN};
use super::stream::MllamaStream;
use super::text::MllamaText;
use super::vision::{ExitFeatures, ExitRule, LocalPass, MllamaVision};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generation::{run_batch, DecodeOptions, Generated, GenerationDefaults, ImageFeatures, Request};
use crate::vlm::{LoadParts, ModelFiles};
use crate::weights::{Checkpoint, ComponentLayout, Weights};

/// Where each component lives in a checkpoint: the hub layout of meta-llama/Llama-3.2-*-Vision
/// (`vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`,
/// `language_model.lm_head.*`) or transformers ≥ 4.52's (`model.vision_model.*`,
/// `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`).
pub fn detect_layout(checkpoint: &Checkpoint) -> Result<ComponentLayout> {
    Ok(ComponentLayout {
        vision: checkpoint.find_prefix(
            &["vision_model.", "model.vision_model."],
            "patch_embedding.weight",
            "vision encoder",
        )?,
        projector: checkpoint.find_prefix(
            &["multi_modal_projector.", "model.multi_modal_projector."],
            "weight",
            "projector",
        )?,
        text: checkpoint.find_prefix(
            &["language_model.model.", "model.language_model."],
            "embed_tokens.weight",
            "language model",
        )?,
        lm_head: checkpoint.find_prefix(&["language_model.lm_head.", "lm_head."], "weight", "lm_head")?,
    })
}

/// `multi_modal_projector` (one `nn.Linear(vision_output_dim, text hidden)`), split by input
/// columns so that the concatenation never has to be built: the input is
/// `final ‖ stack(taps, -1).flatten()`, so tap `i`'s feature `f` sits in column `d + f*k + i`
/// (interleaved, not tap after tap), and `W · input + b = W_final · final + Σ_i W_i · tap_i + b`.
pub struct MllamaProjector<B: Backend> {
    final_weight: B::Tensor,
    tap_weights: Vec<B::Tensor>,
    bias: B::Tensor,
}

impl<B: Backend> MllamaProjector<B> {
    pub fn load(w: &Weights<B>, config: &MllamaConfig) -> Result<Self> {
        let vc = &config.vision_config;
        let (d, k, out) = (vc.hidden_size, vc.intermediate_layers_indices.len(), config.text_config.llama.hidden_size);
        let inp = vc.vision_output_dim;
        let weight = w.checkpoint.load_f32(&w.full_name("weight"), &[out, inp])?;
        let column_block = |col: &dyn Fn(usize) -> usize| -> Result<B::Tensor> {
            let mut m = vec![0f32; out * d];
            for o in 0..out {
                for f in 0..d {
                    m[o * d + f] = weight[o * inp + col(f)];
                }
            }
            w.backend.linear_weight(w.backend.from_host(&m, out, d)?)
        };
        Ok(Self {
            final_weight: column_block(&|f| f)?,
            tap_weights: (0..k).map(|i| column_block(&move |f| d + f * k + i)).collect::<Result<_>>()?,
            bias: w.get("bias", &[out])?,
        })
    }

    /// `[max_tiles * tokens, text hidden]`: the cross-attention states of one image.
    pub fn forward(&self, b: &B, x: &ExitFeatures<B>) -> Result<B::Tensor> {
        if x.taps.len() != self.tap_weights.len() {
            return Err(Error::invalid(format!("{} taps for a projector of {}", x.taps.len(), self.tap_weights.len())));
        }
        let mut y = b.linear(&x.final_slot, &self.final_weight, Some(&self.bias))?;
        for (t, w) in x.taps.iter().zip(&self.tap_weights) {
            b.add_assign(&mut y, &b.linear(t, w, None)?)?;
        }
        Ok(y)
    }
}

pub struct Mllama<B: Backend> {
    pub dir: PathBuf,
    pub config: MllamaConfig,
    pub layout: ComponentLayout,
    pub checkpoint: Checkpoint,
    pub vision: MllamaVision<B>,
    pub projector: MllamaProjector<B>,
    pub text: Option<MllamaText<B>>,
    pub tokenizer: Option<Tokenizer>,
    pub generation: GenerationDefaults,
    pub processor: MllamaImageProcessor,
}

impl<B: Backend> Mllama<B> {
    /// Loads a model directory. `parts.deepest_vision_layer` limits the local layers loaded
    /// (the exit rule decides which layers a run needs, see [`MllamaVision::layers_needed`]).
    pub fn load(dir: &Path, b: &B, parts: LoadParts) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::input(dir, "model directory not found"));
        }
        let config = MllamaConfig::from_dir(dir)?;
        let files = ModelFiles::open(dir, detect_layout)?;
        let (l, deepest) = (&files.layout, parts.deepest_vision_layer.unwrap_or(config.vision_layers()));
        let (v, t, ckpt) = (&config.vision_config, &config.text_config, &files.checkpoint);
        let local = format!("{}transformer.layers.", l.vision);
        ckpt.check_layer_count(&local, v.num_hidden_layers, "vision_config.num_hidden_layers")?;
        let global = format!("{}global_transformer.layers.", l.vision);
        ckpt.check_layer_count(&global, v.num_global_layers, "vision_config.num_global_layers")?;
        let text_layers = format!("{}layers.", l.text);
        ckpt.check_layer_count(&text_layers, t.llama.num_hidden_layers, "text_config.num_hidden_layers")?;
        let vision = MllamaVision::load(&files.weights(b, &l.vision), &config.vision_config, deepest)?;
        let projector = MllamaProjector::load(&files.weights(b, &l.projector), &config)?;
        let (text, tokenizer) = if parts.text {
            let text =
                MllamaText::load(&files.weights(b, &l.text), &files.weights(b, &l.lm_head), &config.text_config)?;
            (Some(text), Some(load_tokenizer(dir, config.image_token_index)?))
        } else {
            (None, None)
        };
        let processor = MllamaImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        let ModelFiles { checkpoint, layout, generation } = files;
        let dir = dir.to_path_buf();
        Ok(Self { dir, config, layout, checkpoint, vision, projector, text, tokenizer, generation, processor })
    }

    pub fn pixel_values(&self, path: &Path) -> Result<TiledPixels> {
        self.processor.preprocess_file(path)
    }

    pub fn text(&self) -> Result<&MllamaText<B>> {
        self.text.as_ref().ok_or_else(|| Error::invalid("the language model was not loaded"))
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::invalid("the tokenizer was not loaded"))
    }

    /// Prompt ids as transformers' `MllamaProcessor` gives them for `text` with
    /// `add_special_tokens=False` (the model card's usage; the template carries the BOS):
    /// `build_string_from_input`, then the tokenizer without its post-processor.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.prompt_ids_with(text, false)
    }

    /// [`Self::prompt_ids`] with the tokenizer's special tokens added or not, as
    /// `MllamaProcessor(images, text, add_special_tokens=...)`.
    pub fn prompt_ids_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let text = build_string_from_input(text);
        let enc = self
            .tokenizer()?
            .encode(text, add_special_tokens)
            .map_err(|e| Error::invalid(format!("tokenization failed: {e}")))?;
        let ids = enc.get_ids().to_vec();
        let images = ids.iter().filter(|&&t| t == self.config.image_token_index).count();
        if images != 1 {
            return Err(Error::invalid(format!(
                "the prompt has {images} `{IMAGE_TOKEN}` tokens; exactly one is supported"
            )));
        }
        Ok(ids)
    }

    /// Prompt ids of a text-only prompt (no `<|image|>`), tokenized as [`Self::prompt_ids`].
    pub fn text_only_prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        let text = build_string_from_input(text);
        let enc =
            self.tokenizer()?.encode(text, false).map_err(|e| Error::invalid(format!("tokenization failed: {e}")))?;
        if enc.get_ids().contains(&self.config.image_token_index) {
            return Err(Error::invalid(format!("a text-only prompt must not contain `{IMAGE_TOKEN}`")));
        }
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer()?.decode(ids, true).map_err(|e| Error::invalid(format!("detokenization failed: {e}")))
    }

    /// One local pass over `px` keeping what the `exits` and `extra` layers need.
    pub fn local_pass(
        &self,
        b: &B,
        px: &TiledPixels,
        exits: &[(usize, ExitRule)],
        extra: &[usize],
    ) -> Result<LocalPass<B>> {
        self.vision.local(b, px, &self.vision.layers_needed(exits, extra))
    }

    /// ICET-`layer` under `rule`: the projected cross-attention states `[max_tiles * tokens, text hidden]`.
    pub fn project(&self, b: &B, pass: &LocalPass<B>, layer: usize, rule: ExitRule) -> Result<B::Tensor> {
        self.projector.forward(b, &self.vision.exit_features(b, pass, layer, rule)?)
    }

    /// Rows of the projected states that belong to real tiles (they come first).
    pub fn real_rows(&self, pass: &LocalPass<B>) -> usize {
        pass.layout.num_tiles * pass.layout.tokens
    }

    /// ICET-`layer` under `rule` as the language model reads it: the projected states and how
    /// many of their rows belong to real tiles.
    pub fn image_features(&self, b: &B, pass: &LocalPass<B>, layer: usize, rule: ExitRule) -> Result<ImageFeatures<B>> {
        Ok(ImageFeatures { rows: self.project(b, pass, layer, rule)?, real_rows: self.real_rows(pass) })
    }

    /// Greedy decoding of up to 256 tokens, stopping at the generation config's end tokens.
    pub fn decode_options(&self) -> DecodeOptions {
        DecodeOptions::greedy(256, self.generation.eos_token_ids.clone())
    }

    /// The language model under the scheduler with `slots` sequences in flight.
    pub fn stream(&self, slots: usize) -> Result<MllamaStream<'_, B>> {
        Ok(MllamaStream::new(self.text()?, self.config.image_token_index, slots))
    }

    /// Runs `requests` to completion as one batch: one packed prefill, then every unfinished
    /// sequence decodes one token per step; results in request order.
    pub fn generate(
        &self,
        b: &B,
        requests: &[Request<B>],
        opts: &DecodeOptions,
        keep_first_logits: bool,
    ) -> Result<Vec<Generated>> {
        run_batch(b, &mut self.stream(requests.len())?, requests, opts, keep_first_logits)
    }
}
