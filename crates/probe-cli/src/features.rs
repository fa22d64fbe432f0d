//! `icet features`'s engine: everything the vision side makes of one image, as f32 safetensors.
use std::path::Path;

use anyhow::{Context, Result};
use icet_models::backend::Backend;
use icet_models::layers::parse_layers;
use icet_models::vlm::{registry, FamilyOptions, LoadParts, NamedTensor};
use safetensors::tensor::{Dtype, TensorView};

/// Writes the features of `image` for the layers of `layers` (`--layers` syntax) to `out`;
/// returns the layers, the number of tensors and the family's note on what they hold.
pub fn write_features<B: Backend>(
    b: &B,
    model_dir: &Path,
    options: FamilyOptions,
    image: &Path,
    layers: &str,
    out: &Path,
) -> Result<(Vec<usize>, usize, String)> {
    let spec = registry::open::<B>(model_dir, options)?;
    let layers = parse_layers(layers, spec.num_layers())?;
    let model = spec.load(b, LoadParts { deepest_vision_layer: layers.last().copied(), text: false })?;
    let dump = model.features(b, image, &layers)?;
    write_f32_safetensors(out, &dump.tensors)?;
    Ok((layers, dump.tensors.len(), dump.note))
}

/// Writes named f32 tensors to a safetensors file.
pub fn write_f32_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            let view =
                TensorView::new(Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data)).expect("consistent tensor");
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).with_context(|| format!("cannot write {}", path.display()))
}
