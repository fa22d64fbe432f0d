//! The Llama 3.2 Vision (Mllama) side of `features`, `generate`, `sweep` and `info`. Each command
//! checks `config.json`'s `model_type` first ([`is_mllama`]) and hands Mllama checkpoints to the
//! functions here; LLaVA keeps its own code path unchanged.
//!
//! What differs from LLaVA: the vision features are read by cross-attention (no image slots in
//! the prompt), "use layer l" needs an [`ExitRule`] (`--exit-rule`), the layer range is the
//! local encoder's `0..=num_hidden_layers`, and the default template is `llama3`.
use std::path::Path;

use anyhow::{bail, Result};
use clap::ValueEnum;
use icet_models::backend::Backend;
use icet_models::chat_template::ChatTemplate;
use icet_models::generation::Request;
use icet_models::mllama::config::model_type;
use icet_models::mllama::{ExitRule, Mllama, MllamaConfig, MllamaLoadParts, MllamaTemplate};
use icet_models::weights::count_params;

use crate::common::{ModelArgs, TemplateArg};

/// `--exit-rule`: how ICET-l fills Mllama's projector input (global slot ‖ taps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExitRuleArg {
    /// Stop after local layer l: the global encoder runs on it, taps deeper than l read l
    Clamp,
    /// The stock model with the final (global) slot replaced by local layer l
    ReplaceFinal,
    /// Every slot of the concatenation is local layer l
    AllSlots,
}

impl ExitRuleArg {
    pub fn rule(self) -> ExitRule {
        match self {
            Self::Clamp => ExitRule::Clamp,
            Self::ReplaceFinal => ExitRule::ReplaceFinal,
            Self::AllSlots => ExitRule::AllSlots,
        }
    }
}

/// Whether `dir` holds a Llama 3.2 Vision checkpoint (`model_type: mllama`). An unreadable
/// `config.json` is not Mllama: LLaVA's loader then reports it, exactly as before.
pub fn is_mllama(dir: &Path) -> Result<bool> {
    Ok(model_type(dir).is_ok_and(|t| t == "mllama"))
}

/// `--template` for Mllama: `llama3` (the default) or `raw`; `auto` is resolved against the
/// model directory by [`prompts`].
pub fn template(arg: Option<TemplateArg>) -> Result<MllamaTemplate> {
    match arg {
        None | Some(TemplateArg::Llama3) => Ok(MllamaTemplate::Llama3),
        Some(TemplateArg::Raw) => Ok(MllamaTemplate::Raw),
        Some(other) => bail!(
            "--template {}: Llama 3.2 Vision takes `llama3` (default), `raw` or `auto`",
            other.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
        ),
    }
}

/// The input texts for `prompts` under `--template`, and the template's name. `auto` renders the
/// model's own chat template (Llama-3.2-11B-Vision-Instruct ships one) with one user message of
/// `[image, text]` parts and the generation prompt, as `MllamaProcessor.apply_chat_template`
/// does; the BOS it writes stays (the prompt is tokenized without added special tokens). A
/// directory without a template falls back to `llama3`, said once.
pub fn prompts(dir: &Path, arg: Option<TemplateArg>, prompts: &[&str]) -> Result<(String, Vec<String>)> {
    if arg == Some(TemplateArg::Auto) {
        if let Some(chat) = ChatTemplate::from_dir(dir)? {
            let texts = prompts
                .iter()
                .map(|p| crate::common::render_image_turn(&chat, p, icet_models::mllama::prompt::IMAGE_TOKEN))
                .collect::<Result<Vec<_>>>()?;
            return Ok((format!("auto ({})", chat.origin.display()), texts));
        }
        eprintln!("icet: {} ships no chat template; using llama3", dir.display());
        return self::prompts(dir, Some(TemplateArg::Llama3), prompts);
    }
    let t = template(arg)?;
    let texts = prompts.iter().map(|p| t.render(p)).collect::<Result<Vec<_>, _>>()?;
    Ok((t.name().to_string(), texts))
}

fn check_unsupported(model: &ModelArgs) -> Result<()> {
    if model.strategy.is_some() {
        bail!("--strategy is a LLaVA option; Llama 3.2 Vision reads every vision token through cross-attention");
    }
    if model.pad_square {
        bail!("--pad-square is a LLaVA option; Llama 3.2 Vision tiles the image instead");
    }
    Ok(())
}

/// `icet features` for Mllama: pixel values, local hidden states, global layers, and the projected
/// cross-attention states of ICET-l under `rule`.
pub fn features<B: Backend>(
    b: &B,
    model_args: &ModelArgs,
    image: &Path,
    layers_spec: &str,
    out: &Path,
    rule: ExitRuleArg,
) -> Result<()> {
    check_unsupported(model_args)?;
    let dir = model_args.model_dir()?;
    let config = MllamaConfig::from_dir(dir)?;
    let n = config.vision_layers();
    let layers = icet_models::layers::parse_layers(layers_spec, n)?;
    let model = Mllama::load(dir, b, MllamaLoadParts { deepest_vision_layer: None, text: false })?;
    let px = model.pixel_values(image)?;
    let exits: Vec<(usize, ExitRule)> = layers.iter().map(|&l| (l, rule.rule())).collect();
    // The global layers are written for the stock path, which needs every local layer.
    let mut extra = layers.clone();
    extra.push(n);
    let pass = model.local_pass(b, &px, &exits, &extra)?;
    let c = &config.vision_config;
    let (tiles, tokens) = (c.max_num_tiles, c.tokens_per_tile());
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> =
        vec![("pixel_values".into(), px.data.clone(), vec![tiles, 3, px.tile_size, px.tile_size])];
    for &l in &layers {
        let hidden = b.to_host(&model.vision.unpad(b, &pass, pass.get(l)?)?)?;
        tensors.push((format!("hidden.{l}"), hidden, vec![tiles, tokens, c.hidden_size]));
    }
    for (g, out) in model.vision.global(b, &pass, n)?.iter().enumerate() {
        let x = b.to_host(&model.vision.unpad(b, &pass, out)?)?;
        tensors.push((format!("global.{}", g + 1), x, vec![tiles, tokens, c.hidden_size]));
    }
    for &l in &layers {
        let p = b.to_host(&model.project(b, &pass, l, rule.rule())?)?;
        tensors.push((format!("projected.{l}"), p, vec![tiles, tokens, config.text_config.llama.hidden_size]));
    }
    crate::features::write_f32_safetensors(out, &tensors)?;
    eprintln!(
        "wrote {} tensors for layers {:?} (exit rule {}; {} of {} tiles real, aspect ratio id {}) to {}",
        tensors.len(),
        layers,
        rule.rule().name(),
        px.num_tiles,
        tiles,
        px.aspect_ratio_id,
        out.display()
    );
    Ok(())
}

/// `icet generate` for Mllama; prints the same JSON object as for LLaVA (plus `exit_rule`).
pub fn generate<B: Backend>(b: &B, args: &crate::generate::Args, rule: ExitRuleArg) -> Result<()> {
    check_unsupported(&args.model)?;
    let dir = args.model.model_dir()?;
    let config = MllamaConfig::from_dir(dir)?;
    let n = config.vision_layers();
    let layer = icet_models::layers::resolve_layer(args.layer.unwrap_or(n as i64), n)?;
    let rule = rule.rule();
    let model = Mllama::load(dir, b, MllamaLoadParts { deepest_vision_layer: None, text: true })?;
    let text = prompts(dir, args.template, &[args.prompt.as_str()])?.1.remove(0);
    let prompt_ids = model.prompt_ids(&text)?;
    let px = model.pixel_values(&args.image)?;
    let pass = model.local_pass(b, &px, &[(layer, rule)], &[])?;
    let states = std::sync::Arc::new(model.image_features(b, &pass, layer, rule)?);
    let opts = args.decode.options(model.generation.eos_token_ids.clone())?;
    let request = Request::with_image(prompt_ids.clone(), states, args.decode.seed);
    let out = model.generate(b, &[request], &opts, false)?.remove(0);
    let answer = model.decode(&out.token_ids)?;
    if args.json {
        let obj = serde_json::json!({
            "layer": layer,
            "exit_rule": rule.name(),
            "prompt_ids": prompt_ids,
            "token_ids": out.token_ids,
            "text": answer,
            "finish_reason": out.finish_reason.as_str(),
        });
        println!("{}", serde_json::to_string(&obj)?);
    } else {
        println!("{answer}");
        eprintln!(
            "[layer {layer}, exit rule {}, {} tokens, finish: {}]",
            rule.name(),
            out.token_ids.len(),
            out.finish_reason.as_str()
        );
    }
    Ok(())
}

/// `icet info` for Mllama.
pub fn info(dir: &Path, json: bool) -> Result<()> {
    let config = MllamaConfig::from_dir(dir)?;
    let checkpoint = icet_models::weights::Checkpoint::open(dir)?;
    let layout = icet_models::mllama::MllamaLayout::detect(&checkpoint)?;
    let (v, t) = (&config.vision_config, &config.text_config);
    let dtypes = crate::info::dtype_rows(&checkpoint);
    let info = serde_json::json!({
        "architecture": "MllamaForConditionalGeneration",
        "model_dir": dir,
        "files": checkpoint.files().len(),
        "weight_layout": {"vision": layout.vision, "projector": layout.projector, "text": layout.text, "lm_head": layout.lm_head},
        "vision": {
            "type": "Mllama tiled ViT", "layers": v.num_hidden_layers, "global_layers": v.num_global_layers,
            "hidden_size": v.hidden_size, "heads": v.attention_heads, "head_dim": v.head_dim(),
            "tile_size": v.image_size, "patch_size": v.patch_size, "max_num_tiles": v.max_num_tiles,
            "tokens_per_tile": v.tokens_per_tile(), "taps": v.intermediate_layers_indices,
            "output_dim": v.vision_output_dim,
            "parameters": count_params(&checkpoint, &layout.vision),
        },
        "exit_layers": format!("0..={}", v.num_hidden_layers),
        "exit_rules": ExitRule::NAMES,
        "projector_parameters": count_params(&checkpoint, &layout.projector),
        "text": {
            "type": "Llama 3.1 + cross-attention", "layers": t.llama.num_hidden_layers,
            "cross_attention_layers": t.cross_attention_layers, "hidden_size": t.llama.hidden_size,
            "heads": t.llama.num_attention_heads, "kv_heads": t.llama.kv_heads(), "head_dim": t.llama.head_dim(),
            "vocab_size": t.llama.vocab_size, "max_position_embeddings": t.llama.max_position_embeddings,
            "parameters": count_params(&checkpoint, &layout.text) + count_params(&checkpoint, &layout.lm_head),
        },
        "image_token_id": config.image_token_index,
        "dtypes": dtypes,
        "parameters": checkpoint.names().map(|n| checkpoint.info(n).map(|(s, _)| s.iter().product::<usize>()).unwrap_or(0)).sum::<usize>(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("model           {}", dir.display());
    println!("architecture    Llama 3.2 Vision (tiled ViT: local + gated global encoder → projector → Llama with cross-attention)");
    println!(
        "vision          {} local + {} global layers, width {}, {} heads, {} tiles of {}px / {}px patches = {} tokens each, taps {:?}, {} params",
        v.num_hidden_layers,
        v.num_global_layers,
        v.hidden_size,
        v.attention_heads,
        v.max_num_tiles,
        v.image_size,
        v.patch_size,
        v.tokens_per_tile(),
        v.intermediate_layers_indices,
        info["vision"]["parameters"]
    );
    println!(
        "early exit      local layers 0..={} under --exit-rule clamp|replace-final|all-slots",
        v.num_hidden_layers
    );
    println!(
        "text            {} layers (cross-attention at {:?}), width {}, {} heads ({} kv), vocab {}, {} params",
        t.llama.num_hidden_layers,
        t.cross_attention_layers,
        t.llama.hidden_size,
        t.llama.num_attention_heads,
        t.llama.kv_heads(),
        t.llama.vocab_size,
        info["text"]["parameters"]
    );
    crate::info::print_weights(&dtypes, [&layout.vision, &layout.text, &layout.projector], &info["parameters"]);
    Ok(())
}

/// `icet sweep` for Mllama, before the model loads: `(layers, default layer, template name,
/// rendered prompts)`. The default layer is the last local layer (the stock model).
pub fn sweep_inputs(
    dir: &Path,
    template_arg: Option<TemplateArg>,
    rows: &[crate::data::DataRow],
) -> Result<(usize, usize, String, Vec<String>)> {
    let config = MllamaConfig::from_dir(dir)?;
    let n = config.vision_layers();
    let texts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    let (name, texts) = prompts(dir, template_arg, &texts)?;
    Ok((n, n, name, texts))
}

/// `icet sweep`'s generation for Mllama, with continuous batching as LLaVA's: `--batch-size`
/// sequences in flight, a finished one's slot refilled at once. Work goes image by image (one
/// local pass serves every layer of an image, made lazily when a slot needs the image's first
/// request) and layer-major within an image, so that sequences in flight share their states'
/// cross-attention keys/values. Each answer is appended to `responses.jsonl` as it finishes.
pub fn sweep_answers<B: Backend>(
    b: &B,
    args: &crate::sweep::Args,
    rows: &[crate::data::DataRow],
    texts: &[String],
    pending: &[(usize, usize)],
    responses_path: &Path,
    all_rows: &mut Vec<crate::summary::ResponseRow>,
) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::Arc;

    use anyhow::Context;
    use icet_models::generation::{ImageFeatures, Stream};

    check_unsupported(&args.model)?;
    let dir = args.model.model_dir()?;
    let rule = args.exit_rule.rule();
    let model = Mllama::load(dir, b, MllamaLoadParts { deepest_vision_layer: None, text: true })?;
    let opts = args.decode.options(model.generation.eos_token_ids.clone())?;
    let mut prompt_ids: HashMap<usize, Vec<u32>> = HashMap::new();
    for &(i, _) in pending {
        if let std::collections::hash_map::Entry::Vacant(e) = prompt_ids.entry(i) {
            e.insert(model.prompt_ids(&texts[i]).with_context(|| format!("data row `{}`", rows[i].id))?);
        }
    }
    // Image by image in order of first appearance, layer-major within an image.
    let mut first_seen: HashMap<&Path, usize> = HashMap::new();
    for &(i, _) in pending {
        let n = first_seen.len();
        first_seen.entry(rows[i].image_path.as_path()).or_insert(n);
    }
    let mut work = pending.to_vec();
    work.sort_by_key(|&(i, l)| (first_seen[rows[i].image_path.as_path()], l, i));
    let longest = prompt_ids.values().map(Vec::len).max().unwrap_or(0);
    let capacity = longest + opts.max_new_tokens;
    let text_config = &model.config.text_config;
    let mut cost = crate::sweep::SlotCost::decoder(&text_config.llama, capacity, longest, b.element_bytes());
    // Only self-attention layers cache keys/values; each slot may also hold one image's
    // cross-attention keys/values (its pool region) for every cross layer.
    let (cross, layers) = (text_config.cross_attention_layers.len(), text_config.llama.num_hidden_layers);
    let v = &model.config.vision_config;
    let kv_width = text_config.llama.kv_heads() * text_config.llama.head_dim();
    let states_rows = v.max_num_tiles * v.tokens_per_tile();
    cost.cache_bytes =
        cost.cache_bytes / layers.max(1) * (layers - cross) + states_rows * 2 * kv_width * cross * b.element_bytes();
    // Per image: the local pass's kept hidden states (padded rows) and every requested layer's
    // projected states, for the image at hand and the previous one.
    let requested = work.iter().map(|&(_, l)| l).collect::<std::collections::BTreeSet<_>>().len();
    let pass = (v.num_hidden_layers + 1) * v.max_num_tiles * v.padded_tokens_per_tile() * v.hidden_size;
    let states = requested * states_rows * text_config.llama.hidden_size;
    cost.reserve_bytes = (pass + 2 * states) * b.element_bytes();
    let slots = crate::sweep::choose_slots(args.batch_size, b.free_memory(), &cost, work.len());
    let stream = Stream { slots, capacity, keep_first_logits: false };

    // The image at hand: its projected states per layer and its real-tile rows.
    type LayerStates<B> = HashMap<usize, Arc<ImageFeatures<B>>>;
    let mut current: Option<(&Path, LayerStates<B>)> = None;
    let mut next = 0;
    let requests = std::iter::from_fn(|| {
        let &(i, l) = work.get(next)?;
        next += 1;
        let image = rows[i].image_path.as_path();
        let states = (|| -> icet_models::Result<Arc<ImageFeatures<B>>> {
            if current.as_ref().is_none_or(|(p, _)| *p != image) {
                current = None; // the previous image's states go once its sequences finish
                let mut layers: Vec<usize> =
                    work.iter().filter(|&&(j, _)| rows[j].image_path == image).map(|&(_, l)| l).collect();
                layers.dedup();
                let px = model.pixel_values(image)?;
                let exits: Vec<(usize, ExitRule)> = layers.iter().map(|&l| (l, rule)).collect();
                let pass = model.local_pass(b, &px, &exits, &[])?;
                let mut map = HashMap::new();
                for &l in &layers {
                    map.insert(l, Arc::new(model.image_features(b, &pass, l, rule)?));
                }
                current = Some((image, map));
            }
            Ok(current.as_ref().expect("just set").1[&l].clone())
        })();
        Some(states.map(|features| {
            Request::with_image(
                prompt_ids[&i].clone(),
                features,
                crate::sweep::answer_seed(args.decode.seed, &rows[i].id, l),
            )
        }))
    });
    let mut writer = crate::sweep::AnswerWriter::open(responses_path, work.len())?;
    icet_models::generation::run_stream(b, &mut model.stream(stream.slots)?, requests, &opts, stream, |index, g| {
        let (i, l) = work[index];
        let response = model.decode(&g.token_ids)?;
        writer.push(crate::sweep::response_row(&rows[i], l, response, g.token_ids, g.finish_reason.as_str()), all_rows)
    })?;
    writer.finish(&format!(", exit rule {}", rule.name()));
    Ok(())
}
