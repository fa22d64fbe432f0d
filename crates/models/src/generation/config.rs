//! `generation_config.json`: what generation takes from a model directory.
use std::path::Path;

use crate::error::{Error, Result};

/// The parts of `generation_config.json` generation obeys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub eos_token_ids: Vec<u32>,
}

impl GenerationDefaults {
    /// Reads `generation_config.json` (falling back to `eos_token_id` in `config.json`s text
    /// config, then to id 2, Llama's `</s>`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
                _ => vec![],
            }
        };
        for (file, pointer) in [
            ("generation_config.json", "/eos_token_id"),
            ("config.json", "/text_config/eos_token_id"),
            ("config.json", "/eos_token_id"),
        ] {
            let path = dir.join(file);
            if let Ok(text) = std::fs::read_to_string(&path) {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid JSON: {e}")))?;
                if let Some(found) = v.pointer(pointer).map(ids).filter(|x| !x.is_empty()) {
                    return Ok(Self { eos_token_ids: found });
                }
            }
        }
        Ok(Self { eos_token_ids: vec![2] })
    }
}
