//! The embedded demo: a tiny LLaVA-architecture checkpoint with random weights, three images and
//! six prompts, compiled into the binary so that `icet sweep` works anywhere with no download.
//! Its answers are gibberish by construction; it exercises the whole pipeline in seconds.
use std::path::PathBuf;

use anyhow::{Context, Result};

macro_rules! demo_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo/", $path)) as &[u8])),*]
    };
}

const FILES: &[(&str, &[u8])] = demo_files!(
    "model/config.json",
    "model/generation_config.json",
    "model/model.safetensors",
    "model/preprocessor_config.json",
    "model/special_tokens_map.json",
    "model/tokenizer.json",
    "model/tokenizer_config.json",
    "images/checker.png",
    "images/shapes.png",
    "images/sunset.png",
    "prompts.jsonl",
);

/// Where the demo lives once unpacked.
pub struct Demo {
    pub model: PathBuf,
    pub data: PathBuf,
}

/// Unpacks the demo (once per engine version) into the system's temporary folder.
pub fn materialize() -> Result<Demo> {
    let root = std::env::temp_dir().join(format!("icet-demo-{}", env!("CARGO_PKG_VERSION")));
    for (rel, bytes) in FILES {
        let path = root.join(rel);
        if std::fs::read(&path).is_ok_and(|have| have == *bytes) {
            continue;
        }
        std::fs::create_dir_all(path.parent().expect("demo files live in folders"))
            .and_then(|_| std::fs::write(&path, bytes))
            .with_context(|| format!("cannot unpack the demo into {}", path.display()))?;
    }
    Ok(Demo { model: root.join("model"), data: root.join("prompts.jsonl") })
}
