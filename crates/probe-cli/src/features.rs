//! `icet features`: everything the vision side produces for one image, as f32 safetensors.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use icet_models::backend::Backend;
use icet_models::layers::parse_layers;
use icet_models::llava::{LlavaConfig, LoadParts};
use safetensors::tensor::{Dtype, TensorView};

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
#[command(after_help = "Writes f32 tensors:
  pixel_values   [3, H, W]            exactly what enters the vision tower
  hidden.{l}     [tokens, width]      output of vision layer l (0 = embeddings after pre-layernorm)
  projected.{l}  [slots, text width]  what is spliced into the language model for ICET-l
For Llama 3.2 Vision (Mllama): pixel_values [max_tiles, 3, H, W]; hidden.{l} [max_tiles, tokens,
width] for local layer l (patch padding removed); global.{g} after global layer g (stock path);
projected.{l} [max_tiles, tokens, text width], the cross-attention states of ICET-l under --exit-rule.

Example: icet features --model llava-1.5-7b-hf --image cat.jpg --layers 0..24 --out cat.safetensors")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file (PNG, JPEG, ...)
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// Layers: `all` (0..=L), `a..b` (inclusive), or a list such as `3,7,-2`
    #[arg(long, value_name = "SPEC", default_value = "all", allow_hyphen_values = true)]
    pub layers: String,
    /// Output .safetensors file
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Llama 3.2 Vision only: how ICET-l fills the projector input (global slot + taps)
    #[arg(long, value_enum, default_value_t = crate::mllama_cmd::ExitRuleArg::Clamp)]
    pub exit_rule: crate::mllama_cmd::ExitRuleArg,
}

pub fn run(args: Args) -> Result<()> {
    let selected = args.model.backend()?;
    crate::with_backend!(selected, |b| run_on(&b, args))
}

fn run_on<B: Backend>(b: &B, args: Args) -> Result<()> {
    let dir = args.model.model_dir()?;
    if crate::mllama_cmd::is_mllama(dir)? {
        return crate::mllama_cmd::features(b, &args.model, &args.image, &args.layers, &args.out, args.exit_rule);
    }
    let config = LlavaConfig::from_dir(dir)?;
    let layers = parse_layers(&args.layers, config.vision_layers())?;
    let model = args.model.load(b, LoadParts { deepest_vision_layer: layers.last().copied(), text: false })?;
    let strategy = args.model.strategy(&model);
    let px = model.pixel_values(&args.image, args.model.pad_square)?;
    let capture = model.vision.capture(b, &[model.upload_pixels(b, &px)?], &layers)?;

    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> =
        vec![("pixel_values".into(), px.data.clone(), vec![3, px.height, px.width])];
    for &l in &layers {
        let hidden = capture.get(l).expect("captured");
        let (rows, cols) = b.dims(hidden);
        tensors.push((format!("hidden.{l}"), b.to_host(hidden)?, vec![rows, cols]));
        let projected = model.project_layer(b, &capture, l, strategy)?;
        let (rows, cols) = b.dims(&projected);
        tensors.push((format!("projected.{l}"), b.to_host(&projected)?, vec![rows, cols]));
    }
    write_f32_safetensors(&args.out, &tensors)?;
    eprintln!(
        "wrote {} tensors for layers {:?} ({} strategy) to {}",
        tensors.len(),
        layers,
        strategy.name(),
        args.out.display()
    );
    Ok(())
}

/// Writes named f32 tensors to a safetensors file.
pub fn write_f32_safetensors(path: &std::path::Path, tensors: &[(String, Vec<f32>, Vec<usize>)]) -> Result<()> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, data, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck_cast(data)).expect("consistent tensor");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).with_context(|| format!("cannot write {}", path.display()))
}

fn bytemuck_cast(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}
