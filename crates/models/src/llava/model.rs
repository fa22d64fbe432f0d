//! LLaVA-1.5 (transformers' `LlavaForConditionalGeneration`): CLIP vision tower → feature
//! selection → `LlavaMultiModalProjector` → Llama. Early exit ("ICET-l") replaces the configured
//! `vision_feature_layer` by layer l; nothing else changes.
use std::path::{Path, PathBuf};

use super::config::{FeatureStrategy, LlavaConfig};
use super::prompt::PromptTokenizer;
use super::stream::LlavaStream;
use super::weights::detect_layout;
use crate::backend::{Activation, Backend};
use crate::clip::processor::{ImageProcessorConfig, PixelValues};
use crate::clip::{ClipVision, VisionCapture};
use crate::error::{Error, Result};
use crate::generation::GenerationDefaults;
use crate::image::{expand_to_square, load_image, load_image_with, AlphaHandling};
use crate::llama::Llama;
use crate::nn::Linear;
use crate::vlm::{LoadParts, ModelFiles};
use crate::weights::{Checkpoint, ComponentLayout, Weights};

/// `LlavaMultiModalProjector`: linear → GELU → linear.
pub struct Projector<B: Backend> {
    linear_1: Linear<B>,
    linear_2: Linear<B>,
    act: Activation,
}

impl<B: Backend> Projector<B> {
    pub fn load(w: &Weights<B>, config: &LlavaConfig) -> Result<Self> {
        let (v, t) = (config.vision_config.hidden_size, config.text_config.hidden_size);
        Self::load_shaped(w, v, t, &config.projector_hidden_act, config.multimodal_projector_bias)
    }

    /// The projector from `vision_width` to `text_width` with `hidden_act` (transformers'
    /// name) between the layers: LLaVA-NeXT's `LlavaNextMultiModalProjector` is the same module.
    pub fn load_shaped(
        w: &Weights<B>,
        vision_width: usize,
        text_width: usize,
        hidden_act: &str,
        bias: bool,
    ) -> Result<Self> {
        let act = Activation::from_hf(hidden_act)
            .ok_or_else(|| Error::invalid(format!("unsupported projector_hidden_act `{hidden_act}`")))?;
        Ok(Self {
            linear_1: Linear::load(w, "linear_1", text_width, vision_width, bias)?,
            linear_2: Linear::load(w, "linear_2", text_width, text_width, bias)?,
            act,
        })
    }

    pub fn forward(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let mut h = self.linear_1.forward(b, x)?;
        b.activation(&mut h, self.act)?;
        self.linear_2.forward(b, &h)
    }
}

pub struct Llava<B: Backend> {
    pub dir: PathBuf,
    pub config: LlavaConfig,
    pub layout: ComponentLayout,
    pub checkpoint: Checkpoint,
    pub vision: ClipVision<B>,
    pub projector: Projector<B>,
    pub llm: Option<Llama<B>>,
    pub tokenizer: Option<PromptTokenizer>,
    pub generation: GenerationDefaults,
    pub processor: ImageProcessorConfig,
}

impl<B: Backend> Llava<B> {
    pub fn load(dir: &Path, b: &B, parts: LoadParts) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::input(dir, "model directory not found"));
        }
        let config = LlavaConfig::from_dir(dir)?;
        let files = ModelFiles::open(dir, detect_layout)?;
        let (l, deepest) = (&files.layout, parts.deepest_vision_layer.unwrap_or(config.vision_layers()));
        files.check_layer_counts(config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers)?;
        let vision = ClipVision::load(&files.weights(b, &l.vision), &config.vision_config, deepest)?;
        let projector = Projector::load(&files.weights(b, &l.projector), &config)?;
        let (llm, tokenizer) = if parts.text {
            let text_config = config.language_model_config();
            let llm = Llama::load(&files.weights(b, &l.text), &files.weights(b, &l.lm_head), &text_config)?;
            (Some(llm), Some(PromptTokenizer::from_dir(dir, config.image_token_index)?))
        } else {
            (None, None)
        };
        let processor = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        let ModelFiles { checkpoint, layout, generation } = files;
        let dir = dir.to_path_buf();
        Ok(Self { dir, config, layout, checkpoint, vision, projector, llm, tokenizer, generation, processor })
    }

    /// Decodes and preprocesses an image file exactly as transformers' `CLIPImageProcessor`
    /// would; `pad_square` first pads it to a square of the mean colour (original LLaVA).
    pub fn pixel_values(&self, path: &Path, pad_square: bool) -> Result<PixelValues> {
        // Original LLaVA: Image.open(f).convert('RGB') (alpha dropped), then expand2square.
        let mut img = if pad_square { load_image_with(path, AlphaHandling::Drop)? } else { load_image(path)? };
        if pad_square {
            img = expand_to_square(&img, self.processor.pad_square_background());
        }
        self.processor.preprocess(&img).map_err(|e| Error::input(path, e))
    }

    /// Uploads pixel values as the `[3*H, W]` matrix the vision tower takes.
    pub fn upload_pixels(&self, b: &B, px: &PixelValues) -> Result<B::Tensor> {
        b.from_host(&px.data, px.data.len() / px.width.max(1), px.width)
    }

    /// The language model, or an error saying it was not loaded.
    pub fn llm(&self) -> Result<&Llama<B>> {
        self.llm.as_ref().ok_or_else(|| Error::invalid("the language model was not loaded"))
    }

    pub fn tokenizer(&self) -> Result<&PromptTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::invalid("the tokenizer was not loaded"))
    }

    /// `vision_feature_select_strategy` applied to captured layer `layer`: the rows that reach
    /// the projector for every image, packed `[images * slots, vision width]`.
    pub fn select(
        &self,
        b: &B,
        capture: &VisionCapture<B>,
        layer: usize,
        strategy: FeatureStrategy,
    ) -> Result<B::Tensor> {
        let hidden =
            capture.get(layer).ok_or_else(|| Error::invalid(format!("vision layer {layer} was not captured")))?;
        match strategy {
            FeatureStrategy::Full => {
                Ok(b.gather_rows(hidden, &(0..capture.images * capture.tokens_per_image).collect::<Vec<_>>())?)
            }
            FeatureStrategy::Default => {
                let t = capture.tokens_per_image;
                let rows: Vec<usize> = (0..capture.images).flat_map(|i| i * t + 1..(i + 1) * t).collect();
                b.gather_rows(hidden, &rows)
            }
        }
    }

    /// The language model with LLaVA's splice, under the scheduler.
    pub fn stream(&self) -> Result<LlavaStream<'_, B>> {
        Ok(LlavaStream::new(self.llm()?, self.config.image_token_index))
    }

    /// ICET-l: projector(select(hidden.l)), `[images * slots, text width]`.
    pub fn project_layer(
        &self,
        b: &B,
        capture: &VisionCapture<B>,
        layer: usize,
        strategy: FeatureStrategy,
    ) -> Result<B::Tensor> {
        self.projector.forward(b, &self.select(b, capture, layer, strategy)?)
    }
}
