//! `icet features`'s engine: everything the vision side makes of one image, as f32 safetensors
//! whose `__metadata__` says what made them (model, image, layers and their indexing, the
//! family's settings such as the strategy or exit rule, icet's version).
use std::collections::HashMap;
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
    let given: serde_json::Map<String, serde_json::Value> =
        options.remaining().map(|f| (f.to_string(), options.get(f).unwrap_or_default().into())).collect();
    let spec = registry::open::<B>(model_dir, options)?;
    let layers = parse_layers(layers, spec.num_layers())?;
    let model = spec.load(b, LoadParts { deepest_vision_layer: layers.last().copied(), text: false })?;
    let dump = model.features(b, image, &layers)?;
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf()).display().to_string();
    let mut settings = spec.settings();
    settings.extend(given);
    let metadata: HashMap<String, String> = [
        ("format", "icet features".to_string()),
        ("icet_version", env!("CARGO_PKG_VERSION").to_string()),
        ("model", canonical(model_dir)),
        ("model_type", registry::model_type(model_dir)?),
        ("image", canonical(image)),
        ("image_sha256", crate::fingerprint::file_sha256(image)?),
        ("layers", serde_json::to_string(&layers)?),
        ("vision_layers", spec.num_layers().to_string()),
        ("default_layer", spec.default_layer()?.to_string()),
        ("layer_indexing", LAYER_INDEXING.to_string()),
        ("settings", serde_json::Value::Object(settings).to_string()),
        ("note", dump.note.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    write_f32_safetensors(out, &dump.tensors, Some(metadata))?;
    Ok((layers, dump.tensors.len(), dump.note))
}

/// What a features file's layer numbers mean (its `__metadata__`'s `layer_indexing`).
pub const LAYER_INDEXING: &str = "hidden.{l} is vision layer l as transformers' hidden_states index it (0 = the \
embeddings after the pre-layernorm, l = the output of layer l; Llama 3.2 Vision: local layer l in Meta's tap \
meaning); projected.{l} is what the language model reads for early exit at layer l (ICET-l), under `settings`";

/// Writes named f32 tensors, and `metadata` as the file's `__metadata__`, to a safetensors file.
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            let view =
                TensorView::new(Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data)).expect("consistent tensor");
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).with_context(|| format!("cannot write {}", path.display()))
}
