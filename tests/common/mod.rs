//! The one set of helpers of the integration tests (`mod common;` in each): where the fixtures
//! are, scratch folders, the transformers references and how they are read, and the one error
//! measure the tolerances are stated in. Tests of the `icet` binary add `cli_common.rs`.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A fixture under `tests/fixtures/`. `ICET_FIXTURES` overrides the folder: scripts/gpu-check.sh
/// runs test binaries on another machine, where the path compiled in here does not exist.
pub fn fixture(name: &str) -> PathBuf {
    match std::env::var_os("ICET_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name),
    }
}

/// A file of the repository, by its path from the top.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("icet-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A JSON file.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An f32 tensor of a safetensors file: shape and values.
pub fn f32s(st: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    f32_view(name, &st.tensor(name).unwrap_or_else(|_| panic!("tensor {name}")))
}

fn f32_view(name: &str, v: &safetensors::tensor::TensorView) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
    (v.shape().to_vec(), v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A fixture model's `reference.json` and `reference.safetensors` (all f32).
pub struct Reference {
    pub json: Value,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

pub fn load_reference(dir: &Path) -> Reference {
    let json = read_json(&dir.join("reference.json"));
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st.tensors().into_iter().map(|(name, view)| (name.clone(), f32_view(&name, &view))).collect();
    Reference { json, tensors }
}

impl Reference {
    pub fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing"))
    }
}

/// `max |ours - ref| / max |ref|` over a tensor (outputs must be finite).
pub fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "length");
    assert!(ours.iter().all(|v| v.is_finite()), "non-finite output");
    let scale = reference.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64)).max(1e-12);
    max_abs(ours, reference) / scale
}

/// `max |ours - ref|`.
pub fn max_abs(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "length");
    ours.iter().zip(reference).map(|(&a, &b)| (a as f64 - b as f64).abs()).fold(0.0, f64::max)
}
