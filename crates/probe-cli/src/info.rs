//! `icet info`: what a model directory holds.
use anyhow::Result;
use clap::Args as ClapArgs;
use icet_models::layers::resolve_layer;
use icet_models::llava::{LlavaConfig, LlavaLayout};
use icet_models::weights::{count_params, Checkpoint};

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.model.model_dir()?;
    if crate::mllama_cmd::is_mllama(dir)? {
        return crate::mllama_cmd::info(dir, args.json);
    }
    let config = LlavaConfig::from_dir(dir)?;
    let checkpoint = Checkpoint::open(dir)?;
    let layout = LlavaLayout::detect(&checkpoint)?;
    let (v, t) = (&config.vision_config, &config.text_config);
    let default_layer = config.default_layer()?;
    let dtypes = crate::info::dtype_rows(&checkpoint);
    let info = serde_json::json!({
        "architecture": "LlavaForConditionalGeneration",
        "model_dir": dir,
        "files": checkpoint.files().len(),
        "weight_layout": {"vision": layout.vision, "projector": layout.projector, "text": layout.text, "lm_head": layout.lm_head},
        "vision": {
            "type": "CLIP ViT", "layers": v.num_hidden_layers, "hidden_size": v.hidden_size, "heads": v.num_attention_heads,
            "image_size": v.image_size, "patch_size": v.patch_size, "tokens": v.num_positions(),
            "parameters": count_params(&checkpoint, &layout.vision),
        },
        "vision_feature_layer": default_layer,
        "vision_feature_layer_resolved": resolve_layer(default_layer, v.num_hidden_layers)?,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "image_slots": config.image_slots(config.strategy()),
        "projector_parameters": count_params(&checkpoint, &layout.projector),
        "text": {
            "type": "Llama", "layers": t.num_hidden_layers, "hidden_size": t.hidden_size, "heads": t.num_attention_heads,
            "kv_heads": t.kv_heads(), "head_dim": t.head_dim(), "vocab_size": t.vocab_size,
            "max_position_embeddings": t.max_position_embeddings,
            "parameters": count_params(&checkpoint, &layout.text) + count_params(&checkpoint, &layout.lm_head),
        },
        "dtypes": dtypes,
        "parameters": checkpoint.names().map(|n| checkpoint.info(n).map(|(s, _)| s.iter().product::<usize>()).unwrap_or(0)).sum::<usize>(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("model           {}", dir.display());
    println!("architecture    LLaVA (CLIP ViT → 2-layer projector → Llama)");
    println!(
        "vision          {} layers, width {}, {} heads, {}px / {}px patches = {} tokens, {} params",
        v.num_hidden_layers,
        v.hidden_size,
        v.num_attention_heads,
        v.image_size,
        v.patch_size,
        v.num_positions(),
        info["vision"]["parameters"]
    );
    println!(
        "default layer   {} (= layer {}), strategy `{}`, {} image slots",
        default_layer,
        info["vision_feature_layer_resolved"],
        config.vision_feature_select_strategy,
        info["image_slots"]
    );
    println!(
        "text            {} layers, width {}, {} heads ({} kv), vocab {}, {} params",
        t.num_hidden_layers,
        t.hidden_size,
        t.num_attention_heads,
        t.kv_heads(),
        t.vocab_size,
        info["text"]["parameters"]
    );
    print_weights(&dtypes, [&layout.vision, &layout.text, &layout.projector], &info["parameters"]);
    Ok(())
}

/// The lines every family's `info` ends with: weights by dtype, where the components live, and
/// the parameter count.
pub fn print_weights(
    dtypes: &[serde_json::Value],
    [vision, text, projector]: [&str; 3],
    parameters: &serde_json::Value,
) {
    for d in dtypes {
        println!(
            "weights         {} tensors of {} ({} params)",
            d["tensors"],
            d["dtype"].as_str().unwrap_or(""),
            d["parameters"]
        );
    }
    println!("layout          vision `{vision}`, text `{text}`, projector `{projector}`");
    println!("parameters      {parameters}");
}

/// Tensors and parameters per stored dtype, as `info --json` reports them.
pub fn dtype_rows(checkpoint: &Checkpoint) -> Vec<serde_json::Value> {
    checkpoint
        .dtype_summary()
        .into_iter()
        .map(|(d, n, p)| serde_json::json!({"dtype": d, "tensors": n, "parameters": p}))
        .collect()
}
