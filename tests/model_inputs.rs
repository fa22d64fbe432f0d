//! Checkpoints in every supported layout load; broken ones fail with one clear line naming the
//! file and tensor — never a panic.
use std::path::{Path, PathBuf};

use icet_models::backend::cpu::Cpu;
use icet_models::backend::Backend;
use icet_models::llava::{FeatureStrategy, Llava};
use icet_models::vlm::LoadParts;
use safetensors::tensor::TensorView;

mod common;
use common::{fixture, scratch};

/// A scratch copy of a fixture's non-weight files.
fn scratch_model(name: &str, from: &str) -> PathBuf {
    let dir = scratch(&format!("inputs-{name}"));
    for f in
        ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]
    {
        std::fs::copy(fixture(from).join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Rewrites llava-tiny's weights with renamed keys (and optionally a tensor dropped or reshaped).
fn rewrite_weights(dir: &Path, rename: impl Fn(&str) -> Option<String>, reshape: Option<&str>) {
    let bytes = std::fs::read(fixture("llava-tiny").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views = Vec::new();
    for (name, view) in st.tensors() {
        let Some(new) = rename(&name) else { continue };
        let mut shape = view.shape().to_vec();
        if reshape == Some(name.as_str()) {
            let n: usize = shape.iter().product();
            shape = vec![n];
        }
        views.push((new, TensorView::new(view.dtype(), shape, view.data()).unwrap()));
    }
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn load(dir: &Path) -> Result<Llava<Cpu>, String> {
    Llava::load(dir, &Cpu, LoadParts { deepest_vision_layer: None, text: true }).map_err(|e| e.to_string())
}

fn load_err(dir: &Path) -> String {
    load(dir).err().expect("loading must fail")
}

fn projected_default_layer(model: &Llava<Cpu>) -> Vec<f32> {
    let b = Cpu;
    let px = model.pixel_values(&fixture("images/square.png"), false).unwrap();
    let cap = model.vision.capture(&b, &[model.upload_pixels(&b, &px).unwrap()], &[5]).unwrap();
    b.to_host(&model.project_layer(&b, &cap, 5, FeatureStrategy::Default).unwrap()).unwrap()
}

#[test]
fn all_llava_layouts_load_to_the_same_model() {
    let reference = projected_default_layer(&load(&fixture("llava-tiny")).unwrap());
    // transformers >= 4.52 re-save layout, and the layout without `vision_model`.
    type Rename = fn(&str) -> String;
    let layouts: [(&str, Rename); 2] = [
        ("new", |n| {
            if let Some(r) = n.strip_prefix("language_model.model.") {
                format!("model.language_model.{r}")
            } else if let Some(r) = n.strip_prefix("language_model.") {
                r.to_string()
            } else {
                format!("model.{n}")
            }
        }),
        ("flat-vision", |n| n.replace("vision_tower.vision_model.", "vision_tower.")),
    ];
    for (tag, f) in layouts {
        let dir = scratch_model(tag, "llava-tiny");
        rewrite_weights(&dir, |n| Some(f(n)), None);
        let model = load(&dir).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(projected_default_layer(&model), reference, "{tag} layout gives other features");
    }
}

#[test]
fn broken_checkpoints_name_file_and_tensor() {
    // Missing tensor.
    let dir = scratch_model("missing", "llava-tiny");
    rewrite_weights(&dir, |n| (n != "language_model.model.layers.1.mlp.up_proj.weight").then(|| n.to_string()), None);
    let e = load_err(&dir);
    assert!(e.contains("language_model.model.layers.1.mlp.up_proj.weight") && e.contains("missing"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");

    // Shape that does not match the config.
    let dir = scratch_model("shape", "llava-tiny");
    rewrite_weights(&dir, |n| Some(n.to_string()), Some("multi_modal_projector.linear_2.weight"));
    let e = load_err(&dir);
    assert!(
        e.contains("multi_modal_projector.linear_2.weight") && e.contains("shape") && e.contains("model.safetensors"),
        "{e}"
    );

    // Truncated file.
    let dir = scratch_model("truncated", "llava-tiny");
    let bytes = std::fs::read(fixture("llava-tiny").join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "{e}");

    // Garbage.
    std::fs::write(dir.join("model.safetensors"), b"this is not a checkpoint").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");

    // No weights at all; no config.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(load_err(&dir).contains("no model.safetensors"));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load_err(&dir).contains("config.json"));
    assert!(load_err(Path::new("/no/such/model")).contains("/no/such/model"));

    // A shard named by the index that is not there.
    let dir = scratch_model("shards", "llava-tiny-gqa");
    std::fs::copy(fixture("llava-tiny-gqa/model.safetensors.index.json"), dir.join("model.safetensors.index.json"))
        .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-0000") && e.contains("cannot open"), "{e}");
}

#[test]
fn bad_images_and_layers_name_the_input() {
    let model = load(&fixture("llava-tiny")).unwrap();
    let e = model.pixel_values(Path::new("/no/such/image.png"), false).unwrap_err().to_string();
    assert!(e.contains("/no/such/image.png"), "{e}");
    let bad = std::env::temp_dir().join(format!("icet-not-an-image-{}.png", std::process::id()));
    std::fs::write(&bad, b"definitely not a PNG").unwrap();
    let e = model.pixel_values(&bad, false).unwrap_err().to_string();
    assert!(e.contains(&bad.display().to_string()), "{e}");
    let b = Cpu;
    let px = model.pixel_values(&fixture("images/square.png"), false).unwrap();
    let e = model.vision.capture(&b, &[model.upload_pixels(&b, &px).unwrap()], &[7]).err().unwrap().to_string();
    assert!(e.contains("layer 7"), "{e}");
}

#[test]
fn early_exit_loads_and_runs_only_needed_layers() {
    let model =
        Llava::load(&fixture("llava-tiny"), &Cpu, LoadParts { deepest_vision_layer: Some(2), text: false }).unwrap();
    assert_eq!(model.vision.loaded_layers(), 2);
    assert!(model.llm.is_none());
    let b = Cpu;
    let px = model.pixel_values(&fixture("images/square.png"), false).unwrap();
    let cap = model.vision.capture(&b, &[model.upload_pixels(&b, &px).unwrap()], &[0, 2, 1]).unwrap();
    assert_eq!(cap.layers_run, 2);
    assert_eq!(cap.index, vec![0, 1, 2]);
    assert!(model.vision.capture(&b, &[model.upload_pixels(&b, &px).unwrap()], &[3]).is_err());
}

/// `config.json` of `dir` with `edit` applied.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

/// Issue 14, finding 5: a checkpoint without `lm_head.weight` was tied to the embeddings even
/// when the config says `tie_word_embeddings: false` (transformers would initialise a random
/// head; either way the answers are not the model's). Tied only when the config says so, at the
/// top level or in the text config (as transformers' `LlavaConfig` reads it).
#[test]
fn a_missing_lm_head_is_tied_only_when_the_config_says_so() {
    let dir = scratch_model("no-lm-head", "llava-tiny");
    rewrite_weights(&dir, |n| (n != "language_model.lm_head.weight").then(|| n.to_string()), None);
    let e = load_err(&dir);
    assert!(e.contains("language_model.lm_head.weight") && e.contains("tie_word_embeddings: false"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
    edit_config(&dir, |c| c["tie_word_embeddings"] = true.into());
    load(&dir).expect("tied at the top level");
    edit_config(&dir, |c| {
        c["tie_word_embeddings"] = false.into();
        c["text_config"]["tie_word_embeddings"] = true.into();
    });
    load(&dir).expect("tied in the text config");
}

/// Issue 14, finding 5: weights with more layers than the config were ignored (and the default
/// layer, counted from the end, moved). Now refused, naming the tensor and the config key.
#[test]
fn weights_with_more_layers_than_the_config_are_refused() {
    let dir = scratch_model("extra-vision-layers", "llava-tiny");
    std::fs::copy(fixture("llava-tiny/model.safetensors"), dir.join("model.safetensors")).unwrap();
    edit_config(&dir, |c| c["vision_config"]["num_hidden_layers"] = 5.into());
    let e = load_err(&dir);
    assert!(
        e.contains("vision_tower.vision_model.encoder.layers.5.") && e.contains("vision_config.num_hidden_layers is 5"),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");
    // Also when only the first layers are to be loaded (an early exit never reads layer 5).
    let parts = LoadParts { deepest_vision_layer: Some(2), text: false };
    let e = Llava::<Cpu>::load(&dir, &Cpu, parts).err().expect("refused").to_string();
    assert!(e.contains("vision_config.num_hidden_layers is 5"), "{e}");

    let dir = scratch_model("extra-text-layers", "llava-tiny");
    std::fs::copy(fixture("llava-tiny/model.safetensors"), dir.join("model.safetensors")).unwrap();
    edit_config(&dir, |c| c["text_config"]["num_hidden_layers"] = 1.into());
    let e = load_err(&dir);
    assert!(e.contains("language_model.model.layers.1.") && e.contains("text_config.num_hidden_layers is 1"), "{e}");

    // Llama 3.2 Vision: local, global and text layers alike.
    let mllama = |name: &str, edit: fn(&mut serde_json::Value)| {
        let dir = scratch(&format!("inputs-{name}"));
        for entry in std::fs::read_dir(fixture("mllama-tiny")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        edit_config(&dir, edit);
        icet_models::mllama::Mllama::<Cpu>::load(&dir, &Cpu, LoadParts { deepest_vision_layer: None, text: true })
            .err()
            .expect("refused")
            .to_string()
    };
    let e = mllama("mllama-local", |c| c["vision_config"]["num_hidden_layers"] = 7.into());
    assert!(e.contains("transformer.layers.7.") && e.contains("vision_config.num_hidden_layers is 7"), "{e}");
    let e = mllama("mllama-global", |c| c["vision_config"]["num_global_layers"] = 1.into());
    assert!(e.contains("global_transformer.layers.1.") && e.contains("vision_config.num_global_layers is 1"), "{e}");
    let e = mllama("mllama-text", |c| c["text_config"]["num_hidden_layers"] = 4.into());
    assert!(e.contains("layers.4.") && e.contains("text_config.num_hidden_layers is 4"), "{e}");
}

/// A full copy of the fixture `from` (every file, weights included).
fn copy_model(name: &str, from: &str) -> PathBuf {
    let dir = scratch(&format!("inputs-{name}"));
    for entry in std::fs::read_dir(fixture(from)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Issue 14, finding 5, for LLaVA-NeXT: the same checks as LLaVA's, with transformers'
/// `LlavaNextConfig` rule for tying (its own `tie_word_embeddings` only: unlike `LlavaConfig` it
/// does not take the text config's), and its vision and text layer counts.
#[test]
fn llava_next_checkpoints_match_their_config() {
    use icet_models::llava_next::LlavaNext;
    let load_next = |dir: &Path| {
        LlavaNext::<Cpu>::load(dir, &Cpu, LoadParts { deepest_vision_layer: None, text: true })
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let dir = copy_model("next-no-lm-head", "llava-next-tiny");
    let bytes = std::fs::read(fixture("llava-next-tiny/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "language_model.lm_head.weight").collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let e = load_next(&dir).expect_err("an untied missing lm_head is refused");
    assert!(e.contains("language_model.lm_head.weight") && e.contains("tie_word_embeddings: false"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
    edit_config(&dir, |c| c["text_config"]["tie_word_embeddings"] = true.into());
    let e = load_next(&dir).expect_err("LlavaNextConfig ignores the text config's tie_word_embeddings");
    assert!(e.contains("tie_word_embeddings: false"), "{e}");
    edit_config(&dir, |c| c["tie_word_embeddings"] = true.into());
    load_next(&dir).expect("tied at the top level");

    let dir = copy_model("next-extra-vision-layers", "llava-next-tiny");
    edit_config(&dir, |c| c["vision_config"]["num_hidden_layers"] = 4.into());
    let e = load_next(&dir).expect_err("refused");
    assert!(
        e.contains("vision_tower.vision_model.encoder.layers.4.") && e.contains("vision_config.num_hidden_layers is 4"),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");
    let dir = copy_model("next-extra-text-layers", "llava-next-tiny");
    edit_config(&dir, |c| c["text_config"]["num_hidden_layers"] = 1.into());
    let e = load_next(&dir).expect_err("refused");
    assert!(e.contains("language_model.model.layers.1.") && e.contains("text_config.num_hidden_layers is 1"), "{e}");
}
