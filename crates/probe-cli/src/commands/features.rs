//! `icet features`.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use icet_engine::features::write_features;
use icet_models::backend::Backend;

use super::ModelArgs;

#[derive(ClapArgs, Debug)]
#[command(after_help = "Writes f32 tensors:
  pixel_values   [3, H, W]            exactly what enters the vision tower
  hidden.{l}     [tokens, width]      output of vision layer l (0 = embeddings after pre-layernorm)
  projected.{l}  [slots, text width]  what is spliced into the language model for ICET-l
For Llama 3.2 Vision (Mllama): pixel_values [max_tiles, 3, H, W]; hidden.{l} [max_tiles, tokens,
width] for local layer l (patch padding removed); global.{g} after global layer g (stock path);
projected.{l} [max_tiles, tokens, text width], the cross-attention states of ICET-l under --exit-rule.
For LLaVA-NeXT: pixel_values [tiles, 3, S, S] (the image's real tiles, base image first);
hidden.{l} [tiles, 1 + patches, width] for every tile; projected.{l} [image slots, text width], exactly
the rows spliced for ICET-l (base, then the unpadded grid row by row, image_newline rows included).
The file's __metadata__ says what made it: model, model_type, image and its sha256, layers, how they
are indexed, the family's settings (--strategy, --pad-square, --exit-rule), icet's version.

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
}

impl super::OnBackend for Args {
    fn model(&self) -> &ModelArgs {
        &self.model
    }

    fn run_on<B: Backend>(self, b: &B) -> Result<()> {
        let dir = self.model.model_dir()?;
        let (layers, n, note) =
            write_features(b, dir, self.model.family_options(), &self.image, &self.layers, &self.out)?;
        eprintln!("wrote {n} tensors for layers {layers:?} ({note}) to {}", self.out.display());
        Ok(())
    }
}
