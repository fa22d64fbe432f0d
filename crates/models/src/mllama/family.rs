//! Llama 3.2 Vision behind the family seam ([`crate::vlm`]): the exit layers are the local
//! encoder's `0..=num_hidden_layers` (the last one is the stock model), `--exit-rule` says how
//! ICET-l fills the projector's input, `llama3` is the default template, and the language model
//! reads the features through cross-attention (no image slots in the prompt).
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::config::MllamaConfig;
use super::model::{detect_layout, Mllama};
use super::prompt::{MllamaTemplate, IMAGE_TOKEN};
use super::vision::ExitRule;
use crate::backend::Backend;
use crate::error::Result;
use crate::flops::{encoder_layer, FlopModel};
use crate::generation::{ImageFeatures, SlotCost, StreamModel};
use crate::vlm::{
    render_prompts, AutoTemplate, EarlyExitVlm, Family, FamilyOptions, FeatureDump, LoadParts, ModelInfo, ModelSpec,
    NamedTensor, RenderedPrompts, TemplateInfo, WorkOrder,
};
use crate::weights::{count_params, Checkpoint};

/// Llama 3.2 Vision (`model_type: mllama`).
pub struct MllamaFamily;

impl Family for MllamaFamily {
    const NAME: &'static str = "Llama 3.2 Vision";
    const MODEL_TYPES: &'static [&'static str] = &["mllama"];
    const TEMPLATES: &'static [TemplateInfo] = &[TemplateInfo {
        name: "llama3",
        help: "Llama 3 chat format with `<|image|>` (Llama 3.2 Vision; its default)",
    }];
    const OPTIONS: &'static [&'static str] = &["exit-rule"];

    fn why_not(flag: &str) -> Option<&'static str> {
        match flag {
            "strategy" => Some("reads every vision token through cross-attention"),
            "pad-square" => Some("tiles the image instead"),
            _ => None,
        }
    }

    fn open<B: Backend>(dir: &Path, options: &mut FamilyOptions) -> Result<Box<dyn ModelSpec<B>>> {
        let config = MllamaConfig::from_dir(dir)?;
        let rule = options.take("exit-rule").map(|r| ExitRule::parse(&r)).transpose()?.unwrap_or(ExitRule::Clamp);
        Ok(Box::new(MllamaSpec { dir: dir.to_path_buf(), config, rule }))
    }

    fn describe(dir: &Path) -> Result<ModelInfo> {
        let config = MllamaConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let layout = detect_layout(&checkpoint)?;
        let (v, t) = (&config.vision_config, &config.text_config);
        let vision_params = count_params(&checkpoint, &layout.vision);
        let text_params = count_params(&checkpoint, &layout.text) + count_params(&checkpoint, &layout.lm_head);
        let mut info = ModelInfo::new(
            dir,
            "MllamaForConditionalGeneration",
            "Llama 3.2 Vision (tiled ViT: local + gated global encoder → projector → Llama with cross-attention)",
            &checkpoint,
            &layout,
        );
        info.set(
            "vision",
            json!({
                "type": "Mllama tiled ViT", "layers": v.num_hidden_layers, "global_layers": v.num_global_layers,
                "hidden_size": v.hidden_size, "heads": v.attention_heads, "head_dim": v.head_dim(),
                "tile_size": v.image_size, "patch_size": v.patch_size, "max_num_tiles": v.max_num_tiles,
                "tokens_per_tile": v.tokens_per_tile(), "taps": v.intermediate_layers_indices,
                "output_dim": v.vision_output_dim, "parameters": vision_params,
            }),
        );
        info.set("exit_layers", json!(format!("0..={}", v.num_hidden_layers)));
        info.set("exit_rules", json!(ExitRule::NAMES));
        info.set("projector_parameters", json!(count_params(&checkpoint, &layout.projector)));
        info.set(
            "text",
            json!({
                "type": "Llama 3.1 + cross-attention", "layers": t.llama.num_hidden_layers,
                "cross_attention_layers": t.cross_attention_layers, "hidden_size": t.llama.hidden_size,
                "heads": t.llama.num_attention_heads, "kv_heads": t.llama.kv_heads(), "head_dim": t.llama.head_dim(),
                "vocab_size": t.llama.vocab_size, "max_position_embeddings": t.llama.max_position_embeddings,
                "parameters": text_params,
            }),
        );
        info.set("image_token_id", json!(config.image_token_index));
        info.line(
            "vision",
            format!(
                "{} local + {} global layers, width {}, {} heads, {} tiles of {}px / {}px patches = {} tokens each, \
                 taps {:?}, {vision_params} params",
                v.num_hidden_layers,
                v.num_global_layers,
                v.hidden_size,
                v.attention_heads,
                v.max_num_tiles,
                v.image_size,
                v.patch_size,
                v.tokens_per_tile(),
                v.intermediate_layers_indices
            ),
        );
        info.line(
            "early exit",
            format!("local layers 0..={} under --exit-rule clamp|replace-final|all-slots", v.num_hidden_layers),
        );
        info.line(
            "text",
            format!(
                "{} layers (cross-attention at {:?}), width {}, {} heads ({} kv), vocab {}, {text_params} params",
                t.llama.num_hidden_layers,
                t.cross_attention_layers,
                t.llama.hidden_size,
                t.llama.num_attention_heads,
                t.llama.kv_heads(),
                t.llama.vocab_size
            ),
        );
        Ok(info.finish(&checkpoint, &layout))
    }
}

/// A Llama 3.2 Vision directory with the exit rule of a run.
struct MllamaSpec {
    dir: PathBuf,
    config: MllamaConfig,
    rule: ExitRule,
}

impl<B: Backend> ModelSpec<B> for MllamaSpec {
    fn num_layers(&self) -> usize {
        self.config.vision_layers()
    }

    fn default_layer(&self) -> Result<usize> {
        Ok(self.config.vision_layers())
    }

    /// `auto` renders the model's own chat template (Llama-3.2-11B-Vision-Instruct ships one)
    /// with `[image, text]` parts, as `MllamaProcessor.apply_chat_template` does (the BOS it
    /// writes stays, and the tokenizer then adds none).
    fn render_prompts(&self, template: Option<&str>, prompts: &[&str]) -> Result<RenderedPrompts> {
        let auto = AutoTemplate { placeholder: IMAGE_TOKEN };
        render_prompts::<MllamaFamily, MllamaTemplate>(&self.dir, template, prompts, auto)
    }

    fn settings(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("exit_rule".into(), json!(self.rule.name()));
        m
    }

    /// Always every local layer: an exit rule may read taps deeper than the exit layer.
    fn load<'b>(&self, b: &'b B, parts: LoadParts) -> Result<Box<dyn EarlyExitVlm<B> + 'b>> {
        let model = Mllama::load(&self.dir, b, LoadParts { deepest_vision_layer: None, ..parts })?;
        Ok(Box::new(MllamaVlm { model, rule: self.rule }))
    }
}

/// A loaded Llama 3.2 Vision with the exit rule of a run.
struct MllamaVlm<B: Backend> {
    model: Mllama<B>,
    rule: ExitRule,
}

impl<B: Backend> EarlyExitVlm<B> for MllamaVlm<B> {
    /// The image is read by cross-attention, not spliced: its ids do not depend on it.
    fn prompt_ids(&self, text: &str, _image: &Path, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.model.prompt_ids_with(text, add_special_tokens)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.model.decode(ids)
    }

    fn eos_token_ids(&self) -> &[u32] {
        &self.model.generation.eos_token_ids
    }

    fn image_features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<Vec<ImageFeatures<B>>> {
        let m = &self.model;
        let px = m.pixel_values(image)?;
        let exits: Vec<(usize, ExitRule)> = layers.iter().map(|&l| (l, self.rule)).collect();
        let pass = m.local_pass(b, &px, &exits, &[])?;
        layers.iter().map(|&l| m.image_features(b, &pass, l, self.rule)).collect()
    }

    fn stream<'a>(&'a self, slots: usize) -> Result<Box<dyn StreamModel<B> + 'a>> {
        Ok(Box::new(self.model.stream(slots)?))
    }

    /// Only self-attention layers cache keys/values; each slot may also hold one image's
    /// cross-attention keys/values (its pool region) for every cross layer. The reserve is the
    /// local pass's kept hidden states (padded rows) and every requested layer's projected
    /// states, for the image at hand and the previous one.
    fn slot_cost(&self, capacity: usize, longest_prompt: usize, layers: usize, element_bytes: usize) -> SlotCost {
        let (t, v) = (&self.model.config.text_config, &self.model.config.vision_config);
        let mut cost = SlotCost::decoder(&t.llama, capacity, longest_prompt, element_bytes);
        let (cross, all) = (t.cross_attention_layers.len(), t.llama.num_hidden_layers);
        let kv_width = t.llama.kv_heads() * t.llama.head_dim();
        let states_rows = v.max_num_tiles * v.tokens_per_tile();
        cost.cache_bytes =
            cost.cache_bytes / all.max(1) * (all - cross) + states_rows * 2 * kv_width * cross * element_bytes;
        let pass = (v.num_hidden_layers + 1) * v.max_num_tiles * v.padded_tokens_per_tile() * v.hidden_size;
        let states = layers * states_rows * t.llama.hidden_size;
        cost.reserve_bytes = (pass + 2 * states) * element_bytes;
        cost
    }

    fn work_order(&self) -> WorkOrder {
        WorkOrder::LayerMajor
    }

    /// Pixel values, local hidden states (padding removed), the global layers on the stock path,
    /// and the projected cross-attention states of ICET-l under the run's exit rule.
    fn features(&self, b: &B, image: &Path, layers: &[usize]) -> Result<FeatureDump> {
        let m = &self.model;
        let c = &m.config.vision_config;
        let n = m.config.vision_layers();
        let px = m.pixel_values(image)?;
        let exits: Vec<(usize, ExitRule)> = layers.iter().map(|&l| (l, self.rule)).collect();
        // The global layers are written for the stock path, which needs every local layer.
        let mut extra = layers.to_vec();
        extra.push(n);
        let pass = m.local_pass(b, &px, &exits, &extra)?;
        let (tiles, tokens) = (c.max_num_tiles, c.tokens_per_tile());
        let tensor = |name: String, shape: Vec<usize>, data: Vec<f32>| NamedTensor { name, shape, data };
        let mut tensors =
            vec![tensor("pixel_values".into(), vec![tiles, 3, px.tile_size, px.tile_size], px.data.clone())];
        for &l in layers {
            let hidden = b.to_host(&m.vision.unpad(b, &pass, pass.get(l)?)?)?;
            tensors.push(tensor(format!("hidden.{l}"), vec![tiles, tokens, c.hidden_size], hidden));
        }
        for (g, out) in m.vision.global(b, &pass, n)?.iter().enumerate() {
            let x = b.to_host(&m.vision.unpad(b, &pass, out)?)?;
            tensors.push(tensor(format!("global.{}", g + 1), vec![tiles, tokens, c.hidden_size], x));
        }
        let text_width = m.config.text_config.llama.hidden_size;
        for &l in layers {
            let p = b.to_host(&m.project(b, &pass, l, self.rule)?)?;
            tensors.push(tensor(format!("projected.{l}"), vec![tiles, tokens, text_width], p));
        }
        let note = format!(
            "exit rule {}; {} of {tiles} tiles real, aspect ratio id {}",
            self.rule.name(),
            px.num_tiles,
            px.aspect_ratio_id
        );
        Ok(FeatureDump { tensors, note })
    }

    fn flop_model(&self, image: &Path) -> Result<FlopModel> {
        Ok(flop_model(&self.model.config, self.real_rows(image)?, self.rule))
    }

    /// Mllama's tower takes one image per pass: `images` images are that many passes.
    fn vision_workload<'a>(
        &'a self,
        b: &'a B,
        image: &Path,
        images: usize,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let m = &self.model;
        let px = m.pixel_values(image)?;
        let exits: Vec<(usize, ExitRule)> = (0..=m.config.vision_layers()).map(|l| (l, self.rule)).collect();
        Ok(Box::new(move || {
            let mut last = None;
            for _ in 0..images {
                let pass = m.local_pass(b, &px, &exits, &[])?;
                for &(l, rule) in &exits {
                    last = Some(m.project(b, &pass, l, rule)?);
                }
            }
            b.to_host(&last.expect("one image at least"))?;
            Ok(())
        }))
    }

    fn bench_facts(&self, image: &Path) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("family".into(), json!("mllama"));
        m.insert("exit_rule".into(), json!(self.rule.name()));
        m.insert("image_rows".into(), json!(self.real_rows(image)?));
        m.insert("vision_layers_captured".into(), json!(self.model.config.vision_layers() + 1));
        Ok(m)
    }
}

impl<B: Backend> MllamaVlm<B> {
    /// The rows of `image`'s projected states that come from its real tiles (what its tokens
    /// attend to; the tile grid is padded to `max_num_tiles`).
    fn real_rows(&self, image: &Path) -> Result<usize> {
        Ok(self.model.pixel_values(image)?.num_tiles * self.model.config.vision_config.tokens_per_tile())
    }
}

/// The FLOP model of a Llama 3.2 Vision sweep under `rule`; `real_rows` are the rows of real
/// tiles an image's tokens attend to (a typical image). Every exit layer runs the projector over
/// all tiles' tokens; under `clamp` it also runs the global encoder on the exit layer (the
/// other rules replace the global output by a local layer).
pub fn flop_model(config: &MllamaConfig, real_rows: usize, rule: ExitRule) -> FlopModel {
    let v = &config.vision_config;
    let (d, inter) = (v.hidden_size as f64, v.intermediate_size as f64);
    let tiles = v.max_num_tiles as f64;
    let padded = tiles * v.padded_tokens_per_tile() as f64;
    let unpadded = tiles * v.tokens_per_tile() as f64;
    let patch = 2.0 * tiles * (v.grid() * v.grid()) as f64 * (v.num_channels * v.patch_size * v.patch_size) as f64 * d;
    let t = &config.text_config;
    let h = t.llama.hidden_size as f64;
    let exits = (v.num_hidden_layers + 1) as f64;
    let global = match rule {
        ExitRule::Clamp => v.num_global_layers as f64 * encoder_layer(padded, d, inter),
        ExitRule::ReplaceFinal | ExitRule::AllSlots => 0.0,
    };
    let projector = 2.0 * unpadded * v.vision_output_dim as f64 * h;
    let mut m = FlopModel::decoder(&t.llama, &t.cross_attention_layers);
    m.vision_per_image =
        patch + v.num_hidden_layers as f64 * encoder_layer(padded, d, inter) + exits * (global + projector);
    let cross = t.cross_attention_layers.len() as f64;
    let (q, kv) =
        ((t.llama.num_attention_heads * t.llama.head_dim()) as f64, (t.llama.kv_heads() * t.llama.head_dim()) as f64);
    m.cross_attention_per_token = cross * 4.0 * q * real_rows as f64;
    m.cross_kv_per_image = cross * 2.0 * unpadded * h * 2.0 * kv;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3.2-11B-Vision's shapes, counted by hand.
    #[test]
    fn flop_model_matches_hand_counts_for_llama_32_11b_vision() {
        let config: MllamaConfig = serde_json::from_value(serde_json::json!({
            "model_type": "mllama",
            "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                              "num_global_layers": 8, "attention_heads": 16, "image_size": 560, "patch_size": 14,
                              "max_num_tiles": 4, "vision_output_dim": 7680,
                              "intermediate_layers_indices": [3, 7, 15, 23, 30]},
            "text_config": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 40,
                            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                            "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38]},
        }))
        .unwrap();
        let f = flop_model(&config, 4 * 1601, ExitRule::Clamp);
        // Text: 32 self layers (q 4096², k/v 4096·1024 each, o 4096², MLP 3·4096·14336) and 8 cross
        // layers (q, o, MLP; their k/v read the image).
        let mlp = 3.0 * 4096.0 * 14336.0;
        let self_layer = 4096.0 * (4096.0 + 2048.0) + 4096.0 * 4096.0 + mlp;
        let cross_layer = 2.0 * 4096.0 * 4096.0 + mlp;
        assert_eq!(f.text_linear_per_token, 2.0 * (32.0 * self_layer + 8.0 * cross_layer));
        // 9.18 G weights streamed per decode step: the 9.8 G text model less its embedding table
        // and the cross layers' k/v projections (which read the image, once).
        assert_eq!(f.text_weight_elements, 32.0 * self_layer + 8.0 * cross_layer + 4096.0 * 128256.0);
        assert!((f.text_weight_elements / 1e9 - 9.18).abs() < 0.01);
        assert_eq!(f.text_attention_per_pair, 4.0 * 32.0 * 4096.0);
        assert_eq!(f.cross_attention_per_token, 8.0 * 4.0 * 4096.0 * 6404.0);
        assert_eq!(f.cross_kv_per_image, 8.0 * 2.0 * 6404.0 * 4096.0 * 2.0 * 1024.0);
        // Vision: 4 tiles × 1608 padded rows through 32 local layers, then per exit (33) the 8
        // global layers and the projector (4 × 1601 rows × 7680 → 4096).
        let rows = 4.0 * 1608.0;
        let layer = 2.0 * rows * (4.0 * 1280.0 * 1280.0 + 2.0 * 1280.0 * 5120.0) + 4.0 * rows * rows * 1280.0;
        let patch = 2.0 * 4.0 * 1600.0 * 588.0 * 1280.0;
        let projector = 2.0 * 6404.0 * 7680.0 * 4096.0;
        let want = patch + 32.0 * layer + 33.0 * (8.0 * layer + projector);
        assert!((f.vision_per_image - want).abs() / want < 1e-12);
        // Without the global stage (replace-final, all-slots): the local layers and projectors.
        let lean = flop_model(&config, 4 * 1601, ExitRule::AllSlots);
        let want = patch + 32.0 * layer + 33.0 * projector;
        assert!((lean.vision_per_image - want).abs() / want < 1e-12);
        // Prefill reads the image's keys/values once for the whole batch.
        let one = f.prefill(1, 10);
        assert_eq!(f.prefill(2, 10) - f.cross_kv_per_image, 2.0 * (one - f.cross_kv_per_image));
    }
}
