//! LLaVA-NeXT behind the family seam ([`crate::vlm`]): ICET-l feeds CLIP layer l of every tile
//! (base image and grid tiles alike) through the unchanged projector and packing into the
//! unchanged language model. Its templates' default follows the language model; `--strategy`
//! takes only `default` (see [`FULL_STRATEGY_REFUSAL`]); the number of image slots, and so the
//! prompt ids, the vision work and the memory, depend on each image's size.
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::anyres::AnyresGrid;
use super::config::{LlavaNextConfig, FULL_STRATEGY_REFUSAL};
use super::model::{image_newline_name, LlavaNext};
use super::processor::LlavaNextProcessor;
use super::prompt::{NextTemplate, TEMPLATES};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::flops::{encoder_layer, FlopModel};
use crate::generation::{ImageFeatures, SlotCost, StreamModel};
use crate::llava::prompt::IMAGE_PLACEHOLDER;
use crate::llava::weights::detect_layout;
use crate::vlm::{
    render_prompts_with_default, AutoTemplate, EarlyExitVlm, Family, FamilyOptions, FeatureDump, LoadParts, ModelInfo,
    ModelSpec, NamedTensor, PromptTemplate, RenderedPrompts, TemplateInfo, WorkOrder,
};
use crate::weights::{count_params, Checkpoint};

/// LLaVA-NeXT (`model_type: llava_next`): llava-v1.6-mistral/vicuna, llama3-llava-next.
pub struct LlavaNextFamily;

impl Family for LlavaNextFamily {
    const NAME: &'static str = "LLaVA-NeXT";
    const MODEL_TYPES: &'static [&'static str] = &["llava_next"];
    const TEMPLATES: &'static [TemplateInfo] = TEMPLATES;
    const OPTIONS: &'static [&'static str] = &["strategy"];

    fn why_not(flag: &str) -> Option<&'static str> {
        match flag {
            "pad-square" => Some("tiles the image at its own aspect ratio (anyres); there is no square to pad to"),
            "exit-rule" => Some("feeds exactly one vision layer to its projector; there is no rule to choose"),
            _ => None,
        }
    }

    fn open<B: Backend>(dir: &Path, options: &mut FamilyOptions) -> Result<Box<dyn ModelSpec<B>>> {
        let config = LlavaNextConfig::from_dir(dir)?;
        match options.take("strategy").as_deref() {
            None | Some("default") => {}
            Some("full") => return Err(Error::invalid(format!("--strategy full: {FULL_STRATEGY_REFUSAL}"))),
            Some(other) => return Err(Error::invalid(format!("--strategy {other}: LLaVA-NeXT takes only `default`"))),
        }
        Ok(Box::new(LlavaNextSpec { dir: dir.to_path_buf(), config }))
    }

    fn describe(dir: &Path) -> Result<ModelInfo> {
        let config = LlavaNextConfig::from_dir(dir)?;
        let processor = LlavaNextProcessor::from_dir(dir)?;
        processor.check(&config)?;
        let checkpoint = Checkpoint::open(dir)?;
        let layout = detect_layout(&checkpoint)?;
        let (v, t) = (&config.vision_config, &config.text_config);
        let (default_layer, resolved) = (config.vision_feature_layer, config.default_layer());
        let (max_tiles, max_slots) = largest_image(&config);
        let vision_params = count_params(&checkpoint, &layout.vision);
        let text_params = count_params(&checkpoint, &layout.text) + count_params(&checkpoint, &layout.lm_head);
        let text_name = config.text_name();
        let mut info = ModelInfo::new(
            dir,
            "LlavaNextForConditionalGeneration",
            &format!("LLaVA-NeXT (anyres tiles → CLIP ViT → 2-layer projector → unpad + image_newline → {text_name})"),
            &checkpoint,
            &layout,
        );
        info.set(
            "vision",
            json!({
                "type": "CLIP ViT", "layers": v.num_hidden_layers, "hidden_size": v.hidden_size,
                "heads": v.num_attention_heads, "image_size": v.image_size, "patch_size": v.patch_size,
                "tokens": v.num_positions(), "parameters": vision_params,
            }),
        );
        info.set("vision_feature_layer", json!(default_layer));
        info.set("vision_feature_layer_resolved", json!(resolved));
        info.set("vision_feature_select_strategy", json!("default"));
        info.set("image_grid_pinpoints", json!(config.image_grid_pinpoints));
        info.set("max_tiles", json!(max_tiles));
        info.set("max_image_slots", json!(max_slots));
        info.set("image_processor", json!(processor.source.file_name().and_then(|f| f.to_str())));
        info.set("image_newline", json!(image_newline_name(&layout)));
        info.set("projector_parameters", json!(count_params(&checkpoint, &layout.projector)));
        info.set(
            "text",
            json!({
                "type": text_name, "layers": t.num_hidden_layers, "hidden_size": t.hidden_size,
                "heads": t.num_attention_heads, "kv_heads": t.kv_heads(), "head_dim": t.head_dim(),
                "vocab_size": t.vocab_size, "max_position_embeddings": t.max_position_embeddings,
                "sliding_window": t.sliding_window, "parameters": text_params,
            }),
        );
        info.line(
            "vision",
            format!(
                "{} layers, width {}, {} heads, {}px tiles / {}px patches = {} tokens per tile, {vision_params} params",
                v.num_hidden_layers,
                v.hidden_size,
                v.num_attention_heads,
                v.image_size,
                v.patch_size,
                v.num_positions()
            ),
        );
        info.line(
            "tiling",
            format!(
                "pinpoints {:?}: up to {max_tiles} tiles (base included), up to {max_slots} image slots",
                config.image_grid_pinpoints
            ),
        );
        info.line("default layer", format!("{default_layer} (= layer {resolved}), strategy `default`"));
        let window = t.sliding_window.map(|w| format!(", sliding window {w}")).unwrap_or_default();
        info.line(
            "text",
            format!(
                "{text_name}: {} layers, width {}, {} heads ({} kv), vocab {}{window}, {text_params} params",
                t.num_hidden_layers,
                t.hidden_size,
                t.num_attention_heads,
                t.kv_heads(),
                t.vocab_size
            ),
        );
        Ok(info.finish(&checkpoint, &layout))
    }
}

/// The most tiles and image slots any image can take: the largest pinpoint, nothing unpadded.
pub fn largest_image(config: &LlavaNextConfig) -> (usize, usize) {
    let (tile, g) = (config.vision_config.image_size, config.vision_config.patches_per_side());
    let tiles = config.image_grid_pinpoints.iter().map(|&[h, w]| 1 + (h / tile) * (w / tile)).max().unwrap_or(1);
    let slots = config
        .image_grid_pinpoints
        .iter()
        .map(|&[h, w]| g * g + (h / tile * g) * (w / tile * g + 1))
        .max()
        .unwrap_or(g * g);
    (tiles, slots)
}

/// A LLaVA-NeXT directory.
struct LlavaNextSpec {
    dir: PathBuf,
    config: LlavaNextConfig,
}

impl<B: Backend> ModelSpec<B> for LlavaNextSpec {
    fn num_layers(&self) -> usize {
        self.config.vision_layers()
    }

    fn default_layer(&self) -> Result<usize> {
        Ok(self.config.default_layer())
    }

    /// The default is the template of the language model's card; `auto` as LLaVA's.
    fn render_prompts(&self, template: Option<&str>, prompts: &[&str]) -> Result<RenderedPrompts> {
        let placeholder = format!("{IMAGE_PLACEHOLDER}\n");
        let auto = AutoTemplate { placeholder: &placeholder };
        let default = NextTemplate::default_for(&self.config).name();
        render_prompts_with_default::<LlavaNextFamily, NextTemplate>(&self.dir, template, default, prompts, auto)
    }

    fn settings(&self) -> Map<String, Value> {
        Map::new()
    }

    fn load<'b>(&self, b: &'b B, parts: LoadParts) -> Result<Box<dyn EarlyExitVlm<B> + 'b>> {
        Ok(Box::new(LlavaNextVlm { model: LlavaNext::load(&self.dir, b, parts)? }))
    }
}

struct LlavaNextVlm<B: Backend> {
    model: LlavaNext<B>,
}

impl<B: Backend> EarlyExitVlm<B> for LlavaNextVlm<B> {
    /// `<image>` becomes as many slots as `image`'s tiling gives (read from its header).
    fn prompt_ids(&self, text: &str, image: &Path, add_special_tokens: bool) -> Result<Vec<u32>> {
        let slots = self.model.grid_of(image)?.image_slots();
        self.model.tokenizer()?.encode_image_prompt(text, add_special_tokens, slots)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.model.tokenizer()?.decode(ids)
    }

    fn eos_token_ids(&self) -> &[u32] {
        &self.model.generation.eos_token_ids
    }

    fn image_features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<Vec<ImageFeatures<B>>> {
        let m = &self.model;
        let px = m.pixel_values(image)?;
        let grid = m.grid(px.image.0, px.image.1);
        let capture = m.capture(b, &[&px], layers)?;
        layers.iter().map(|&l| Ok(ImageFeatures::all_real(b, m.project_layer(b, &capture, &grid, 0, l)?))).collect()
    }

    fn stream<'a>(&'a self, _slots: usize) -> Result<Box<dyn StreamModel<B> + 'a>> {
        Ok(Box::new(self.model.stream()?))
    }

    /// See [`slot_cost`].
    fn slot_cost(&self, capacity: usize, longest_prompt: usize, layers: usize, element_bytes: usize) -> SlotCost {
        slot_cost(&self.model.config, capacity, longest_prompt, layers, element_bytes)
    }

    fn work_order(&self) -> WorkOrder {
        WorkOrder::PromptMajor
    }

    /// `pixel_values` `[tiles, 3, S, S]` (base first), `hidden.{l}` `[tiles, 1 + g², width]`,
    /// `projected.{l}` `[image slots, text width]` (the spliced rows, newlines included).
    fn features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<FeatureDump> {
        let m = &self.model;
        let px = m.pixel_values(image)?;
        let grid = m.grid(px.image.0, px.image.1);
        let capture = m.capture(b, &[&px], layers)?;
        let mut tensors = vec![NamedTensor {
            name: "pixel_values".into(),
            shape: vec![px.tiles, 3, px.tile, px.tile],
            data: px.data.clone(),
        }];
        for &l in layers {
            let hidden = capture.get(l).ok_or_else(|| Error::invalid(format!("vision layer {l} was not captured")))?;
            let (rows, cols) = b.dims(hidden);
            tensors.push(NamedTensor {
                name: format!("hidden.{l}"),
                shape: vec![px.tiles, rows / px.tiles, cols],
                data: b.to_host(hidden)?,
            });
            let projected = m.project_layer(b, &capture, &grid, 0, l)?;
            let (rows, cols) = b.dims(&projected);
            tensors.push(NamedTensor {
                name: format!("projected.{l}"),
                shape: vec![rows, cols],
                data: b.to_host(&projected)?,
            });
        }
        Ok(FeatureDump { tensors, note: describe_grid(&grid) })
    }

    fn flop_model(&self, image: &Path) -> Result<FlopModel> {
        Ok(flop_model(&self.model.config, &self.model.grid_of(image)?))
    }

    /// `images` copies of `image` in one batched pass over all their tiles, then every layer
    /// packed for every copy.
    fn vision_workload<'a>(
        &'a self,
        b: &'a B,
        image: &Path,
        images: usize,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let m = &self.model;
        let px = m.pixel_values(image)?;
        let grid = m.grid(px.image.0, px.image.1);
        let layers: Vec<usize> = (0..=m.config.vision_layers()).collect();
        let mut tiles = Vec::new();
        for _ in 0..images {
            tiles.extend(m.upload_tiles(b, &px)?);
        }
        Ok(Box::new(move || {
            let capture = m.vision.capture(b, &tiles, &layers)?;
            let mut last = None;
            for i in 0..images {
                for &l in &layers {
                    last = Some(m.project_layer(b, &capture, &grid, i * grid.tiles(), l)?);
                }
            }
            b.to_host(&last.expect("one image and layer 0 at least"))?;
            Ok(())
        }))
    }

    fn bench_facts(&self, image: &Path) -> Result<Map<String, Value>> {
        let grid = self.model.grid_of(image)?;
        let mut m = Map::new();
        m.insert("family".into(), json!("llava_next"));
        m.insert("image_slots".into(), json!(grid.image_slots()));
        m.insert("tiles".into(), json!(grid.tiles()));
        m.insert("tile_grid".into(), json!([grid.rows, grid.cols]));
        m.insert("vision_layers_captured".into(), json!(self.model.config.vision_layers() + 1));
        Ok(m)
    }
}

/// [`EarlyExitVlm::slot_cost`] of LLaVA-NeXT: the decoder's KV cache and prefill for prompts of
/// up to `longest_prompt` tokens (image slots included: up to ~2,900 per image for llava-v1.6),
/// and a reserve for the largest image any pinpoint allows — every requested layer's hidden
/// states of all its tiles and its packed features, for the image at hand and the previous one.
pub fn slot_cost(
    config: &LlavaNextConfig,
    capacity: usize,
    longest_prompt: usize,
    layers: usize,
    element_bytes: usize,
) -> SlotCost {
    let mut cost = SlotCost::decoder(&config.text_config, capacity, longest_prompt, element_bytes);
    let (tiles, slots) = largest_image(config);
    let v = &config.vision_config;
    let per_layer = tiles * v.num_positions() * v.hidden_size + slots * config.text_config.hidden_size;
    cost.reserve_bytes = 2 * layers * per_layer * element_bytes;
    cost
}

/// What `icet features` says about an image's tiling.
fn describe_grid(g: &AnyresGrid) -> String {
    let (kr, kc) = (g.kept_rows.len(), g.kept_cols.len());
    format!(
        "default strategy; {}x{} image: {} tiles (base + {}x{} at {}x{}), {} image slots = {} base + {kr}x{kc} unpadded + {kr} newlines",
        g.image.1,
        g.image.0,
        g.tiles(),
        g.rows,
        g.cols,
        g.best.1,
        g.best.0,
        g.image_slots(),
        g.side * g.side
    )
}

/// The FLOP model of a LLaVA-NeXT sweep over an image tiled as `grid`: the ViT over every tile
/// and layer (patch embedding, each layer's attention within a tile and MLP), the projector for
/// every captured layer over the rows it projects (the base patches and the kept grid; newline
/// rows are not projected), and the decoder.
pub fn flop_model(config: &LlavaNextConfig, grid: &AnyresGrid) -> FlopModel {
    let v = &config.vision_config;
    let (d, inter) = (v.hidden_size as f64, v.intermediate_size as f64);
    let tokens = v.num_positions() as f64;
    let patch = (v.num_channels * v.patch_size * v.patch_size) as f64;
    let h = config.text_config.hidden_size as f64;
    let projected = (grid.image_slots() - grid.kept_rows.len()) as f64;
    let projector = 2.0 * projected * (d * h + h * h);
    let layers = v.num_hidden_layers as f64;
    let per_tile = 2.0 * (tokens - 1.0) * patch * d + layers * encoder_layer(tokens, d, inter);
    let mut m = FlopModel::decoder(&config.text_config, &[]);
    m.vision_per_image = grid.tiles() as f64 * per_tile + (layers + 1.0) * projector;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llava-v1.6-mistral-7b with a 672x672 image: 5 tiles (base + 2x2), 576 + 48 x 49 = 2928
    /// image slots; the vision work by hand.
    #[test]
    fn flop_model_and_largest_image_of_llava_v1_6_mistral_7b() {
        let config = LlavaNextConfig::from_json_str(
            r#"{"model_type": "llava_next",
                "text_config": {"model_type": "mistral", "intermediate_size": 14336, "num_key_value_heads": 8, "vocab_size": 32064},
                "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                                  "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14}}"#,
        )
        .unwrap();
        let grid = AnyresGrid::new(672, 672, &config.image_grid_pinpoints, 336, 24);
        assert_eq!((grid.tiles(), grid.image_slots()), (5, 2928));
        // 1008x336 pinpoints: 4 tiles; 672x672: 5 tiles and 576 + 48 * 49 slots, the most.
        assert_eq!(largest_image(&config), (5, 2928));
        let f = flop_model(&config, &grid);
        let layer = 2.0 * 577.0 * (4.0 * 1048576.0 + 8388608.0) + 4.0 * 577.0 * 577.0 * 1024.0;
        let patch = 2.0 * 576.0 * 588.0 * 1024.0;
        let projector = 2.0 * (2928.0 - 48.0) * (1024.0 * 4096.0 + 4096.0 * 4096.0);
        assert!((f.vision_per_image - (5.0 * (patch + 24.0 * layer) + 25.0 * projector)).abs() < 1e3);
        // 5 tiles x 0.383 TFLOP of tower (0.350 of layer weights, 0.033 of attention) and 25
        // projections of 2880 rows (0.121 TFLOP each): 4.93 TFLOP, 5x LLaVA-1.5's 0.99.
        assert!((f.vision_per_image / 1e12 - 4.93).abs() < 0.005, "{}", f.vision_per_image / 1e12);
        // Mistral-7B: GQA 32/8 heads; 2 x 6.98 G linear weights per token.
        let per_layer = 4096.0 * (4096.0 + 2.0 * 1024.0) + 4096.0 * 4096.0 + 3.0 * 4096.0 * 14336.0;
        assert_eq!(f.text_linear_per_token, 2.0 * 32.0 * per_layer);
        assert!((f.text_linear_per_token / 2.0 / 1e9 - 6.98).abs() < 0.01);

        // --batch-size auto in bf16 with 3000-token prompts (a 672x672 image) and 256 new tokens, all
        // 25 layers: a slot's KV cache is 3256 x 32 layers x 2 x 1024 (8 kv heads x 128) x 2 bytes
        // (407 MiB, where LLaVA-1.5's 856 positions of 4096-wide MHA take 428); the reserve holds
        // 25 layers x (5 x 577 x 1024 + 2928 x 4096) values twice.
        let cost = slot_cost(&config, 3256, 3000, 25, 2);
        assert_eq!(cost.cache_bytes, 3256 * 32 * 2 * 1024 * 2);
        assert_eq!(cost.prefill_bytes, 3000 * (8 * 4096 + 3 * 14336) * 2 + 32064 * 4);
        assert_eq!(cost.reserve_bytes, 2 * 25 * (5 * 577 * 1024 + 2928 * 4096) * 2);
        assert!((cost.reserve_bytes as f64 / (1u64 << 20) as f64 - 1425.5).abs() < 0.1, "1.4 GiB");
    }
}
