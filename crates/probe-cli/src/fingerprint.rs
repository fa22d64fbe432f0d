//! What a run's answers are made from, as fingerprints a resume compares (the run directory
//! decides what must match: [`crate::run_dir`]): each data row's rendered prompt and image bytes,
//! and the model directory's files. SHA-256 throughout, so that a user can check a fingerprint
//! with `sha256sum`; the weights, which can be tens of gigabytes, are fingerprinted by their
//! safetensors header, their length and evenly spaced samples of their bytes (a fine-tune or a
//! re-initialisation changes nearly every byte, a sample sees it).
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::run_dir::RowInputs;

/// The files of a model directory that any family reads besides the weights.
const MODEL_FILES: [&str; 11] = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors.index.json",
];

/// Samples of a weights file's data, and their size.
const SAMPLES: u64 = 16;
const SAMPLE_BYTES: u64 = 64 << 10;

fn hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:` of a file's bytes.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(h.finalize())))
}

/// `sha256-sampled:` of a safetensors file: its length, its header, and [`SAMPLES`] evenly
/// spaced pieces of [`SAMPLE_BYTES`] of its data (all of it when smaller).
fn weights_fingerprint(path: &Path) -> Result<String> {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let mut h = Sha256::new();
        h.update(len.to_le_bytes());
        let mut n = [0u8; 8];
        f.read_exact(&mut n)?;
        let header = u64::from_le_bytes(n).min(len.saturating_sub(8));
        let mut buf = vec![0u8; header as usize];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        let (start, data) = (8 + header, len - (8 + header));
        if data <= SAMPLES * SAMPLE_BYTES {
            buf.clear();
            f.read_to_end(&mut buf)?;
            h.update(&buf);
        } else {
            buf.resize(SAMPLE_BYTES as usize, 0);
            for k in 0..SAMPLES {
                f.seek(SeekFrom::Start(start + k * (data - SAMPLE_BYTES) / (SAMPLES - 1)))?;
                f.read_exact(&mut buf)?;
                h.update(&buf);
            }
        }
        Ok(format!("sha256-sampled:{}", hex(h.finalize())))
    };
    read().with_context(|| format!("{}: cannot read", path.display()))
}

/// The weights files of a model directory: those `model.safetensors.index.json` names, else
/// `model.safetensors`.
fn weights_files(dir: &Path) -> Result<Vec<String>> {
    let index = dir.join("model.safetensors.index.json");
    if let Ok(text) = std::fs::read_to_string(&index) {
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", index.display()))?;
        let mut names: Vec<String> = v["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|f| f.as_str().map(String::from)).collect())
            .unwrap_or_default();
        names.sort();
        names.dedup();
        return Ok(names);
    }
    Ok(vec!["model.safetensors".into()])
}

/// Every file of the model directory `dir` that its model is read from, by name, fingerprinted
/// (the manifest's `model_files`). A weights file that is missing is recorded as `missing`, so a
/// run made with it differs.
pub fn model_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for name in MODEL_FILES {
        let path = dir.join(name);
        if path.is_file() {
            out.insert(name.to_string(), file_sha256(&path)?);
        }
    }
    for name in weights_files(dir)? {
        let path = dir.join(&name);
        let fp = if path.is_file() { weights_fingerprint(&path)? } else { "missing".into() };
        out.insert(name, fp);
    }
    Ok(out)
}

/// The fingerprint of a rendered prompt: its text and whether the tokenizer adds its special
/// tokens (given the model files, what decides its token ids).
pub fn prompt_sha256(text: &str, add_special_tokens: bool) -> String {
    let mut h = Sha256::new();
    h.update(if add_special_tokens { b"add_special_tokens=true\n" as &[u8] } else { b"add_special_tokens=false\n" });
    h.update(text.as_bytes());
    format!("sha256:{}", hex(h.finalize()))
}

/// Image fingerprints, each file read once however many rows show it.
#[derive(Default)]
pub struct ImageHashes {
    known: HashMap<PathBuf, String>,
}

impl ImageHashes {
    pub fn get(&mut self, path: &Path) -> Result<String> {
        if let Some(h) = self.known.get(path) {
            return Ok(h.clone());
        }
        let h = file_sha256(path)?;
        self.known.insert(path.to_path_buf(), h.clone());
        Ok(h)
    }

    /// What an answer made from `text` (tokenized with or without special tokens) and the image
    /// at `image` is made from.
    pub fn row_inputs(&mut self, text: &str, add_special_tokens: bool, image: &Path) -> Result<RowInputs> {
        Ok(RowInputs { prompt: prompt_sha256(text, add_special_tokens), image: self.get(image)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sha256_and_see_every_change() {
        let d = std::env::temp_dir().join(format!("icet-fingerprint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // The digest `sha256sum` prints for "abc".
        std::fs::write(d.join("abc"), b"abc").unwrap();
        assert_eq!(
            file_sha256(&d.join("abc")).unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(prompt_sha256("x", true), prompt_sha256("x", false), "the tokenization counts");
        // A large weights file: a change in its data, far from the header, is seen by a sample.
        let header = br#"{"t":{"dtype":"F32","shape":[1048576],"data_offsets":[0,4194304]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend(std::iter::repeat_n(0u8, 4 << 20));
        std::fs::write(d.join("model.safetensors"), &bytes).unwrap();
        std::fs::write(d.join("config.json"), b"{}").unwrap();
        let before = model_files(&d).unwrap();
        assert_eq!(before.keys().collect::<Vec<_>>(), ["config.json", "model.safetensors"]);
        // Every sample starts at a multiple of (data - 64 KiB) / 15 after the header; change one.
        let at = bytes.len() - (4 << 20) + 3 * ((4 << 20) - (64 << 10)) / 15 + 100;
        bytes[at] = 1;
        std::fs::write(d.join("model.safetensors"), &bytes).unwrap();
        let after = model_files(&d).unwrap();
        assert_ne!(before["model.safetensors"], after["model.safetensors"]);
        assert_eq!(before["config.json"], after["config.json"]);
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        assert_eq!(model_files(&d).unwrap()["model.safetensors"], "missing");
    }
}
