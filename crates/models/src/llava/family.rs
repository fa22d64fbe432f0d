//! LLaVA-1.5 behind the family seam ([`crate::vlm`]): `--strategy` and `--pad-square` are its
//! options, `llava-v1` (default) and `llava-hf` its templates, and ICET-l feeds CLIP layer l
//! through the unchanged projector into the unchanged language model.
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::config::{FeatureStrategy, LlavaConfig};
use super::model::Llava;
use super::prompt::{Template, IMAGE_PLACEHOLDER};
use super::weights::detect_layout;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::flops::{encoder_layer, FlopModel};
use crate::generation::{ImageFeatures, SlotCost, StreamModel};
use crate::layers::resolve_layer;
use crate::vlm::{
    render_prompts, AutoTemplate, EarlyExitVlm, Family, FamilyOptions, FeatureDump, LoadParts, ModelInfo, ModelSpec,
    NamedTensor, RenderedPrompts, TemplateInfo, WorkOrder,
};
use crate::weights::{count_params, Checkpoint};

/// LLaVA-1.5 (`model_type: llava`).
pub struct LlavaFamily;

impl Family for LlavaFamily {
    const NAME: &'static str = "LLaVA";
    /// `""`: a config without `model_type`, which LLaVA's loader has always accepted.
    const MODEL_TYPES: &'static [&'static str] = &["llava", ""];
    const TEMPLATES: &'static [TemplateInfo] = &[
        TemplateInfo {
            name: "llava-v1",
            help: "The original LLaVA-1.5 conversation (system sentence, USER/ASSISTANT)",
        },
        TemplateInfo { name: "llava-hf", help: "`USER: <image>\\n{prompt} ASSISTANT:` as on the llava-hf model cards" },
    ];
    const OPTIONS: &'static [&'static str] = &["strategy", "pad-square"];

    fn why_not(flag: &str) -> Option<&'static str> {
        (flag == "exit-rule").then_some("feeds exactly one vision layer to its projector; there is no rule to choose")
    }

    fn open<B: Backend>(dir: &Path, options: &mut FamilyOptions) -> Result<Box<dyn ModelSpec<B>>> {
        let config = LlavaConfig::from_dir(dir)?;
        let strategy = options.take("strategy").map(|s| FeatureStrategy::parse(&s)).transpose()?;
        let pad_square = options.take("pad-square").is_some();
        Ok(Box::new(LlavaSpec { dir: dir.to_path_buf(), config, strategy, pad_square }))
    }

    fn describe(dir: &Path) -> Result<ModelInfo> {
        let config = LlavaConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let layout = detect_layout(&checkpoint)?;
        let (v, t) = (&config.vision_config, &config.text_config);
        let default_layer = config.default_layer()?;
        let resolved = resolve_layer(default_layer, v.num_hidden_layers)?;
        let slots = config.image_slots(config.strategy());
        let vision_params = count_params(&checkpoint, &layout.vision);
        let text_params = count_params(&checkpoint, &layout.text) + count_params(&checkpoint, &layout.lm_head);
        let mut info = ModelInfo::new(
            dir,
            "LlavaForConditionalGeneration",
            "LLaVA (CLIP ViT → 2-layer projector → Llama)",
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
        info.set("vision_feature_select_strategy", json!(config.vision_feature_select_strategy));
        info.set("image_slots", json!(slots));
        info.set("projector_parameters", json!(count_params(&checkpoint, &layout.projector)));
        info.set(
            "text",
            json!({
                "type": "Llama", "layers": t.num_hidden_layers, "hidden_size": t.hidden_size,
                "heads": t.num_attention_heads, "kv_heads": t.kv_heads(), "head_dim": t.head_dim(),
                "vocab_size": t.vocab_size, "max_position_embeddings": t.max_position_embeddings,
                "parameters": text_params,
            }),
        );
        info.line(
            "vision",
            format!(
                "{} layers, width {}, {} heads, {}px / {}px patches = {} tokens, {vision_params} params",
                v.num_hidden_layers,
                v.hidden_size,
                v.num_attention_heads,
                v.image_size,
                v.patch_size,
                v.num_positions()
            ),
        );
        info.line(
            "default layer",
            format!(
                "{default_layer} (= layer {resolved}), strategy `{}`, {slots} image slots",
                config.vision_feature_select_strategy
            ),
        );
        info.line(
            "text",
            format!(
                "{} layers, width {}, {} heads ({} kv), vocab {}, {text_params} params",
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

/// A LLaVA directory with the options of a run.
struct LlavaSpec {
    dir: PathBuf,
    config: LlavaConfig,
    /// `--strategy`; `None`: the config's `vision_feature_select_strategy`.
    strategy: Option<FeatureStrategy>,
    /// `--pad-square`: the original LLaVA's expand2square before the processor.
    pad_square: bool,
}

impl<B: Backend> ModelSpec<B> for LlavaSpec {
    fn num_layers(&self) -> usize {
        self.config.vision_layers()
    }

    fn default_layer(&self) -> Result<usize> {
        resolve_layer(self.config.default_layer()?, self.config.vision_layers())
    }

    /// `auto` puts `<image>\n` before the prompt in string-content templates.
    fn render_prompts(&self, template: Option<&str>, prompts: &[&str]) -> Result<RenderedPrompts> {
        let placeholder = format!("{IMAGE_PLACEHOLDER}\n");
        let auto = AutoTemplate { placeholder: &placeholder };
        render_prompts::<LlavaFamily, Template>(&self.dir, template, prompts, auto)
    }

    fn settings(&self) -> Map<String, Value> {
        Map::new()
    }

    fn load<'b>(&self, b: &'b B, parts: LoadParts) -> Result<Box<dyn EarlyExitVlm<B> + 'b>> {
        let model = Llava::load(&self.dir, b, parts)?;
        let strategy = self.strategy.unwrap_or(model.config.strategy());
        Ok(Box::new(LlavaVlm { model, strategy, pad_square: self.pad_square }))
    }
}

/// A loaded LLaVA with the strategy and preprocessing of a run.
struct LlavaVlm<B: Backend> {
    model: Llava<B>,
    strategy: FeatureStrategy,
    pad_square: bool,
}

impl<B: Backend> LlavaVlm<B> {
    fn image_slots(&self) -> usize {
        self.model.config.image_slots(self.strategy)
    }
}

impl<B: Backend> EarlyExitVlm<B> for LlavaVlm<B> {
    /// LLaVA-1.5's slots do not depend on the image.
    fn prompt_ids(&self, text: &str, _image: &Path, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.model.tokenizer()?.encode_image_prompt(text, add_special_tokens, self.image_slots())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.model.tokenizer()?.decode(ids)
    }

    fn eos_token_ids(&self) -> &[u32] {
        &self.model.generation.eos_token_ids
    }

    fn image_features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<Vec<ImageFeatures<B>>> {
        let m = &self.model;
        let px = m.pixel_values(image, self.pad_square)?;
        let capture = m.vision.capture(b, &[m.upload_pixels(b, &px)?], layers)?;
        layers
            .iter()
            .map(|&l| Ok(ImageFeatures::all_real(b, m.project_layer(b, &capture, l, self.strategy)?)))
            .collect()
    }

    fn stream<'a>(&'a self, _slots: usize) -> Result<Box<dyn StreamModel<B> + 'a>> {
        Ok(Box::new(self.model.stream()?))
    }

    fn slot_cost(&self, capacity: usize, longest_prompt: usize, layers: usize, element_bytes: usize) -> SlotCost {
        let c = &self.model.config;
        let mut cost = SlotCost::decoder(&c.text_config, capacity, longest_prompt, element_bytes);
        // Per image: every requested layer's hidden states and projected features, for the image
        // at hand and the previous one.
        let v = &c.vision_config;
        let per_layer = v.num_positions() * v.hidden_size + self.image_slots() * c.text_config.hidden_size;
        cost.reserve_bytes = 2 * layers * per_layer * element_bytes;
        cost
    }

    fn work_order(&self) -> WorkOrder {
        WorkOrder::PromptMajor
    }

    fn features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<FeatureDump> {
        let m = &self.model;
        let px = m.pixel_values(image, self.pad_square)?;
        let capture = m.vision.capture(b, &[m.upload_pixels(b, &px)?], layers)?;
        let mut tensors = vec![NamedTensor {
            name: "pixel_values".into(),
            shape: vec![3, px.height, px.width],
            data: px.data.clone(),
        }];
        for &l in layers {
            let hidden = capture.get(l).ok_or_else(|| Error::invalid(format!("vision layer {l} was not captured")))?;
            let (rows, cols) = b.dims(hidden);
            tensors.push(NamedTensor {
                name: format!("hidden.{l}"),
                shape: vec![rows, cols],
                data: b.to_host(hidden)?,
            });
            let projected = m.project_layer(b, &capture, l, self.strategy)?;
            let (rows, cols) = b.dims(&projected);
            tensors.push(NamedTensor {
                name: format!("projected.{l}"),
                shape: vec![rows, cols],
                data: b.to_host(&projected)?,
            });
        }
        Ok(FeatureDump { tensors, note: format!("{} strategy", self.strategy.name()) })
    }

    fn flop_model(&self, _image: &Path) -> Result<FlopModel> {
        Ok(flop_model(&self.model.config, self.image_slots()))
    }

    fn vision_workload<'a>(
        &'a self,
        b: &'a B,
        image: &Path,
        images: usize,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let m = &self.model;
        let px = m.pixel_values(image, self.pad_square)?;
        let layers: Vec<usize> = (0..=m.config.vision_layers()).collect();
        let pixels: Vec<B::Tensor> = (0..images).map(|_| m.upload_pixels(b, &px)).collect::<Result<_>>()?;
        Ok(Box::new(move || {
            let capture = m.vision.capture(b, &pixels, &layers)?;
            let mut last = None;
            for &l in &layers {
                last = Some(m.project_layer(b, &capture, l, self.strategy)?);
            }
            b.to_host(&last.expect("layer 0 at least"))?;
            Ok(())
        }))
    }

    fn bench_facts(&self, _image: &Path) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("family".into(), json!("llava"));
        m.insert("image_slots".into(), json!(self.image_slots()));
        m.insert("vision_layers_captured".into(), json!(self.model.config.vision_layers() + 1));
        Ok(m)
    }
}

/// The FLOP model of a LLaVA sweep with `slots` image features per prompt: the ViT over every
/// layer (patch embedding, each layer's attention and MLP over all tokens), the projector for
/// every captured layer, and the Llama decoder.
pub fn flop_model(config: &LlavaConfig, slots: usize) -> FlopModel {
    let v = &config.vision_config;
    let (d, inter) = (v.hidden_size as f64, v.intermediate_size as f64);
    let tokens = v.num_positions() as f64;
    let patch = (v.num_channels * v.patch_size * v.patch_size) as f64;
    let t = &config.text_config;
    let h = t.hidden_size as f64;
    let projector = 2.0 * slots as f64 * (d * h + h * h);
    let layers = v.num_hidden_layers as f64;
    let mut m = FlopModel::decoder(t, &[]);
    m.vision_per_image =
        2.0 * (tokens - 1.0) * patch * d + layers * encoder_layer(tokens, d, inter) + (layers + 1.0) * projector;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLaVA-1.5-7B's published shapes give the FLOP counts worked out by hand here.
    #[test]
    fn flop_model_matches_hand_counts_for_llava_7b() {
        let config: LlavaConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llava",
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
            "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                            "num_attention_heads": 32, "vocab_size": 32064},
        }))
        .unwrap();
        let f = flop_model(&config, 576);
        // Vision: 577 tokens; per layer 2*577*(4*1024² + 2*1024*4096) + 4*577²*1024.
        let layer = 2.0 * 577.0 * (4.0 * 1048576.0 + 8388608.0) + 4.0 * 332929.0 * 1024.0;
        let patch = 2.0 * 576.0 * 588.0 * 1024.0;
        let projector = 2.0 * 576.0 * (1024.0 * 4096.0 + 4096.0 * 4096.0);
        // A sweep projects every captured layer, 0..=24.
        assert!((f.vision_per_image - (patch + 24.0 * layer + 25.0 * projector)).abs() < 1.0);
        // The familiar 2 × parameters × tokens of ViT-L/14-336's layers (303 M weights, 577
        // tokens: 0.35 TFLOP), plus attention (0.03) and 25 projections (25 × 0.024 TFLOP).
        let matmuls: f64 = 2.0 * 24.0 * (4.0 * 1048576.0 + 8388608.0) * 577.0;
        assert!((matmuls / 1e12 - 0.349).abs() < 0.001, "{matmuls}");
        assert!((f.vision_per_image / 1e12 - 0.986).abs() < 0.001, "{}", f.vision_per_image);
        // Text: 2 × 6.48 G linear weights per token (Llama-2-7B without embeddings and head).
        let per_layer = 4096.0 * (3.0 * 4096.0) + 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0;
        assert_eq!(f.text_linear_per_token, 2.0 * 32.0 * per_layer);
        assert!((f.text_linear_per_token / 2.0 / 1e9 - 6.48).abs() < 0.01);
        assert_eq!(f.lm_head, 2.0 * 4096.0 * 32064.0);
        assert_eq!(f.text_attention_per_pair, 4.0 * 32.0 * 4096.0);
        // One sequence of 3 tokens: 3 linear passes, 1+2+3 attention pairs, one head.
        let p = f.prefill(1, 3);
        assert_eq!(p, 3.0 * f.text_linear_per_token + 6.0 * f.text_attention_per_pair + f.lm_head);
        assert_eq!(
            f.decode_step(2, 10),
            2.0 * (f.text_linear_per_token + 10.0 * f.text_attention_per_pair + f.lm_head)
        );
        assert_eq!((f.cross_attention_per_token, f.cross_kv_per_image), (0.0, 0.0));
    }
}
