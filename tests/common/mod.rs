//! Helpers shared by the parity tests (`mod common;` in each): where the fixtures are, the
//! transformers references, and the error measures the tolerances are stated in.
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

/// A fixture model's `reference.json` and `reference.safetensors` (all f32).
pub struct Reference {
    pub json: Value,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

pub fn load_reference(dir: &Path) -> Reference {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect();
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
