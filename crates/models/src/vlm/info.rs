//! What `icet info` prints about a model directory: the facts every family reports (files,
//! weight layout, dtypes, parameter counts) around the family's own.
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::weights::{Checkpoint, ComponentLayout};

/// A model's description: JSON for `--json`, aligned `label  text` lines otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub json: Map<String, Value>,
    pub lines: Vec<String>,
}

impl ModelInfo {
    /// The common head: `architecture` (transformers' class), the directory, its files and weight
    /// layout; `summary` is the one-line architecture shown as text.
    pub fn new(
        dir: &Path,
        architecture: &str,
        summary: &str,
        checkpoint: &Checkpoint,
        layout: &ComponentLayout,
    ) -> Self {
        let mut json = Map::new();
        json.insert("architecture".into(), json!(architecture));
        json.insert("model_dir".into(), json!(dir));
        json.insert("files".into(), json!(checkpoint.files().len()));
        json.insert(
            "weight_layout".into(),
            json!({"vision": layout.vision, "projector": layout.projector, "text": layout.text, "lm_head": layout.lm_head}),
        );
        let mut info = Self { json, lines: vec![] };
        info.line("model", dir.display());
        info.line("architecture", summary);
        info
    }

    /// Sets a JSON key.
    pub fn set(&mut self, key: &str, value: Value) {
        self.json.insert(key.into(), value);
    }

    /// Appends a text line `label` (padded to the column) + `text`.
    pub fn line(&mut self, label: &str, text: impl std::fmt::Display) {
        self.lines.push(format!("{label:<16}{text}"));
    }

    /// The common tail: tensors and parameters per stored dtype, where the components live, and
    /// the parameter count.
    pub fn finish(mut self, checkpoint: &Checkpoint, layout: &ComponentLayout) -> Self {
        let dtypes: Vec<Value> = checkpoint
            .dtype_summary()
            .into_iter()
            .map(|(d, n, p)| json!({"dtype": d, "tensors": n, "parameters": p}))
            .collect();
        let parameters: usize =
            checkpoint.names().map(|n| checkpoint.info(n).map(|(s, _)| s.iter().product::<usize>()).unwrap_or(0)).sum();
        for d in &dtypes {
            let text = format!(
                "{} tensors of {} ({} params)",
                d["tensors"],
                d["dtype"].as_str().unwrap_or(""),
                d["parameters"]
            );
            self.line("weights", text);
        }
        self.line(
            "layout",
            format!("vision `{}`, text `{}`, projector `{}`", layout.vision, layout.text, layout.projector),
        );
        self.line("parameters", parameters);
        self.set("dtypes", Value::Array(dtypes));
        self.set("parameters", json!(parameters));
        self
    }

    /// The text form.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}
