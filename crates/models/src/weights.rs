//! Safetensors checkpoints from a local Hugging Face model directory: a single `model.safetensors`
//! or shards listed in `model.safetensors.index.json`, memory-mapped and upcast to f32 on load.
//! Every failure names the file (and tensor) it is about.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::backend::Backend;
use crate::error::{Error, Result};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Where the tensor data starts (after the 8-byte length and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// All tensors of a checkpoint, by name.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// tensor name → index into `shards`
    location: HashMap<String, usize>,
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| Error::input(path, format!("cannot open weights: {e}")))?;
    // SAFETY: the file is opened read-only; a checkpoint changed under a running process is the
    // user's to avoid, as with every mmap-based loader.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::input(path, format!("cannot map weights: {e}")))?;
    // `deserialize` validates the header and that every tensor lies inside the file, which is
    // what catches truncated downloads.
    SafeTensors::deserialize(&mmap)
        .map_err(|e| Error::input(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| Error::input(path, format!("not a valid safetensors file: {e}")))?;
    Ok(Shard { path: path.to_path_buf(), mmap, data_start: 8 + header_len, metadata })
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::input(&index_path, e))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::input(&index_path, format!("invalid JSON: {e}")))?;
            let map =
                index["weight_map"].as_object().ok_or_else(|| Error::input(&index_path, "no \"weight_map\" object"))?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::input(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model directory",
            ));
        };
        let mut shards = Vec::new();
        let mut location = HashMap::new();
        for path in &files {
            let shard = open_shard(path)?;
            for name in shard.metadata.tensors().keys() {
                location.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        Ok(Self { shards, location })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The first of `candidates` under which `probe` exists: how a model finds where a component
    /// (`what`, for the error) lives among the checkpoint layouts in use.
    pub fn find_prefix(&self, candidates: &[&str], probe: &str, what: &str) -> Result<String> {
        candidates.iter().find(|p| self.contains(&format!("{p}{probe}"))).map(|p| p.to_string()).ok_or_else(|| {
            let files: Vec<String> = self.files().iter().map(|f| f.display().to_string()).collect();
            Error::invalid(format!(
                "{}: no {what} weights (looked for `{probe}` under {})",
                files.join(", "),
                candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Checks that no tensor under `{layers}{i}.` (e.g. `vision_tower.vision_model.encoder.layers.`)
    /// has an index `i` of `count` or more: the checkpoint must not hold more layers than the
    /// config (`config_key` in `config.json`) describes, else the model would run a truncated
    /// stack and its default layer (counted from the end) would silently move. Fewer layers are
    /// caught when the missing tensors load.
    pub fn check_layer_count(&self, layers: &str, count: usize, config_key: &str) -> Result<()> {
        let beyond = self
            .names()
            .filter_map(|n| {
                let rest = n.strip_prefix(layers)?;
                let (index, _) = rest.split_once('.')?;
                Some((index.parse::<usize>().ok()?, n))
            })
            .filter(|&(i, _)| i >= count)
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
        match beyond {
            None => Ok(()),
            Some((i, name)) => Err(Error::input(
                &self.shard_of(name)?.path,
                format!(
                    "tensor `{name}` is in layer {i}, but config.json's {config_key} is {count}: the checkpoint \
                     holds more layers than its config describes",
                ),
            )),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// The shard file that holds `name` (for error messages).
    fn shard_of(&self, name: &str) -> Result<&Shard> {
        let idx = self.location.get(name).ok_or_else(|| {
            let files: Vec<String> = self.shards.iter().map(|s| s.path.display().to_string()).collect();
            Error::invalid(format!("tensor `{name}` is missing from {}", files.join(", ")))
        })?;
        Ok(&self.shards[*idx])
    }

    /// Shape and dtype of `name`.
    pub fn info(&self, name: &str) -> Result<(Vec<usize>, Dtype)> {
        let shard = self.shard_of(name)?;
        let info = shard.metadata.info(name).expect("indexed tensor has metadata");
        Ok((info.shape.clone(), info.dtype))
    }

    /// Loads `name` as f32, checking its shape against `expected`.
    pub fn load_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let shard = self.shard_of(name)?;
        let info = shard.metadata.info(name).expect("indexed tensor has metadata");
        if info.shape != expected {
            return Err(Error::input(
                &shard.path,
                format!("tensor `{name}` has shape {:?}, but the config implies {expected:?}", info.shape),
            ));
        }
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        let numel: usize = info.shape.iter().product();
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(Error::input(&shard.path, format!("tensor `{name}` has unsupported dtype {other:?}")));
            }
        };
        if values.len() != numel {
            return Err(Error::input(
                &shard.path,
                format!("tensor `{name}` has {} values, expected {numel}", values.len()),
            ));
        }
        Ok(values)
    }

    /// Counts of tensors and parameters per dtype, for `icet info`.
    pub fn dtype_summary(&self) -> Vec<(String, usize, usize)> {
        let mut by: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        for shard in &self.shards {
            for (_, info) in shard.metadata.tensors() {
                let e = by.entry(format!("{:?}", info.dtype)).or_default();
                e.0 += 1;
                e.1 += info.shape.iter().product::<usize>();
            }
        }
        by.into_iter().map(|(k, (n, p))| (k, n, p)).collect()
    }

    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }
}

/// A view of a checkpoint under one name prefix that uploads tensors to a backend, as the
/// model code asks for them by their transformers names.
pub struct Weights<'a, B: Backend> {
    pub checkpoint: &'a Checkpoint,
    pub backend: &'a B,
    pub prefix: String,
}

impl<'a, B: Backend> Weights<'a, B> {
    pub fn new(checkpoint: &'a Checkpoint, backend: &'a B, prefix: impl Into<String>) -> Self {
        Self { checkpoint, backend, prefix: prefix.into() }
    }

    /// The same checkpoint under `prefix.sub.`.
    pub fn sub(&self, sub: impl std::fmt::Display) -> Self {
        Self { checkpoint: self.checkpoint, backend: self.backend, prefix: format!("{}{sub}.", self.prefix) }
    }

    pub fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.contains(&self.full_name(name))
    }

    /// Loads `name` with shape `shape`, uploaded as a matrix of `shape[0]` rows (a vector
    /// becomes one row; trailing axes are flattened, as a conv kernel becomes `[out, in*k*k]`).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<B::Tensor> {
        let full = self.full_name(name);
        let data = self.checkpoint.load_f32(&full, shape)?;
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [r, rest @ ..] => (*r, rest.iter().product()),
            [] => (1, 1),
        };
        self.backend.from_host(&data, rows, cols)
    }
}

/// Parameter counts by prefix, e.g. for `icet info`.
pub fn count_params(checkpoint: &Checkpoint, prefix: &str) -> usize {
    checkpoint
        .names()
        .filter(|n| n.starts_with(prefix))
        .map(|n| checkpoint.info(n).map(|(s, _)| s.iter().product::<usize>()).unwrap_or(0))
        .sum()
}

/// Where the components of a vision-language checkpoint live: the name prefixes of the vision
/// tower, the projector, the language model and its output projection. Each family detects its
/// own from the names present (`llava::weights::detect_layout`, `mllama::model::detect_layout`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentLayout {
    pub vision: String,
    pub projector: String,
    pub text: String,
    pub lm_head: String,
}
