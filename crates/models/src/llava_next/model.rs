//! LLaVA-NeXT (transformers' `LlavaNextForConditionalGeneration`): every tile through the CLIP
//! tower in one batched pass → the class token dropped → `LlavaNextMultiModalProjector` → the
//! tiles' features packed (`pack_image_features`: base first, the grid unpadded to the image's
//! aspect ratio, `image_newline` after each row) → spliced over `<image>`'s slots in the
//! Llama/Mistral language model. Early exit ("ICET-l") replaces `vision_feature_layer` by layer l
//! for every tile alike; nothing else changes.
use std::path::{Path, PathBuf};

use super::anyres::AnyresGrid;
use super::config::LlavaNextConfig;
use super::processor::{LlavaNextProcessor, TiledPixels};
use crate::backend::Backend;
use crate::clip::{ClipVision, VisionCapture};
use crate::error::{Error, Result};
use crate::generation::GenerationDefaults;
use crate::image::image_size;
use crate::llama::Llama;
use crate::llava::{weights::detect_layout, LlavaStream, Projector, PromptTokenizer};
use crate::vlm::{LoadParts, ModelFiles};
use crate::weights::ComponentLayout;

pub struct LlavaNext<B: Backend> {
    pub dir: PathBuf,
    pub config: LlavaNextConfig,
    pub layout: ComponentLayout,
    pub vision: ClipVision<B>,
    pub projector: Projector<B>,
    /// `image_newline`, `[1, text width]`.
    pub image_newline: B::Tensor,
    pub llm: Option<Llama<B>>,
    pub tokenizer: Option<PromptTokenizer>,
    pub generation: GenerationDefaults,
    pub processor: LlavaNextProcessor,
}

/// Where `image_newline` lives: beside the projector (`image_newline` in the llava-hf layout,
/// `model.image_newline` in transformers ≥ 4.52 re-saves).
pub fn image_newline_name(layout: &ComponentLayout) -> String {
    format!("{}image_newline", layout.projector.trim_end_matches("multi_modal_projector."))
}

impl<B: Backend> LlavaNext<B> {
    pub fn load(dir: &Path, b: &B, parts: LoadParts) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::input(dir, "model directory not found"));
        }
        let config = LlavaNextConfig::from_dir(dir)?;
        let processor = LlavaNextProcessor::from_dir(dir)?;
        processor.check(&config)?;
        let files = ModelFiles::open(dir, detect_layout)?;
        let (l, deepest) = (&files.layout, parts.deepest_vision_layer.unwrap_or(config.vision_layers()));
        files.check_layer_counts(config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers)?;
        let vision = ClipVision::load(&files.weights(b, &l.vision), &config.vision_config, deepest)?;
        let (v, t) = (config.vision_config.hidden_size, config.text_config.hidden_size);
        let projector = Projector::load_shaped(
            &files.weights(b, &l.projector),
            v,
            t,
            &config.projector_hidden_act,
            config.multimodal_projector_bias,
        )?;
        let image_newline = files.weights(b, "").get(&image_newline_name(l), &[t])?;
        let (llm, tokenizer) = if parts.text {
            let text_config = config.language_model_config();
            let llm = Llama::load(&files.weights(b, &l.text), &files.weights(b, &l.lm_head), &text_config)?;
            (Some(llm), Some(PromptTokenizer::from_dir(dir, config.image_token_index)?))
        } else {
            (None, None)
        };
        let ModelFiles { layout, generation, .. } = files;
        let dir = dir.to_path_buf();
        Ok(Self { dir, config, layout, vision, projector, image_newline, llm, tokenizer, generation, processor })
    }

    /// Patches per tile side.
    pub fn side(&self) -> usize {
        self.config.vision_config.patches_per_side()
    }

    /// The tiling of an image of `height x width` pixels.
    pub fn grid(&self, height: usize, width: usize) -> AnyresGrid {
        self.processor.grid(height, width, self.side())
    }

    /// The tiling of an image file, from its header (no decoding where the format allows).
    pub fn grid_of(&self, path: &Path) -> Result<AnyresGrid> {
        let (w, h) = image_size(path)?;
        Ok(self.grid(h as usize, w as usize))
    }

    /// Decodes and preprocesses an image file exactly as transformers' `LlavaNextImageProcessorPil`.
    pub fn pixel_values(&self, path: &Path) -> Result<TiledPixels> {
        self.processor.preprocess_file(path)
    }

    /// Uploads each tile as the `[3 * tile, tile]` matrix the tower takes.
    pub fn upload_tiles(&self, b: &B, px: &TiledPixels) -> Result<Vec<B::Tensor>> {
        (0..px.tiles).map(|t| b.from_host(px.tile_data(t), 3 * px.tile, px.tile)).collect()
    }

    /// One pass over every tile of `images` (their tiles in order), keeping `layers`.
    pub fn capture(&self, b: &B, images: &[&TiledPixels], layers: &[usize]) -> Result<VisionCapture<B>> {
        let mut tiles = Vec::new();
        for px in images {
            tiles.extend(self.upload_tiles(b, px)?);
        }
        self.vision.capture(b, &tiles, layers)
    }

    pub fn llm(&self) -> Result<&Llama<B>> {
        self.llm.as_ref().ok_or_else(|| Error::invalid("the language model was not loaded"))
    }

    pub fn tokenizer(&self) -> Result<&PromptTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::invalid("the tokenizer was not loaded"))
    }

    /// The language model with LLaVA's splice (one image's packed rows over its slots).
    pub fn stream(&self) -> Result<LlavaStream<'_, B>> {
        Ok(LlavaStream::new(self.llm()?, self.config.image_token_index))
    }

    /// ICET-l for one image whose tiles start at tile `first_tile` of `capture`: the class token
    /// dropped, the projector over the rows that survive unpadding (it works row by row, so this
    /// is transformers' projection of every row, then unpadding), packed with `image_newline`
    /// rows — exactly the `[image_slots, text width]` rows spliced into the prompt.
    pub fn project_layer(
        &self,
        b: &B,
        capture: &VisionCapture<B>,
        grid: &AnyresGrid,
        first_tile: usize,
        layer: usize,
    ) -> Result<B::Tensor> {
        let hidden =
            capture.get(layer).ok_or_else(|| Error::invalid(format!("vision layer {layer} was not captured")))?;
        if capture.images < first_tile + grid.tiles() {
            return Err(Error::invalid(format!(
                "the vision pass has {} tiles, the image needs tiles {first_tile}..{}",
                capture.images,
                first_tile + grid.tiles()
            )));
        }
        let packing = grid.packing(capture.tokens_per_image, first_tile);
        let projected = self.projector.forward(b, &b.gather_rows(hidden, &packing.features)?)?;
        let mut packed = b.gather_rows(&projected, &packing.feature_index())?;
        if !packing.newlines.is_empty() {
            let newlines = b.gather_rows(&self.image_newline, &vec![0; packing.newlines.len()])?;
            b.scatter_rows(&mut packed, &packing.newlines, &newlines)?;
        }
        Ok(packed)
    }
}
