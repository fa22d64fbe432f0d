//! What every data source gives the sweep: rows of (`id`, `prompt`, `image`), and the columns
//! of each row that filters and report.html's views read.
use std::path::PathBuf;

/// One (prompt, image) the sweep answers at every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DataRow {
    pub id: String,
    pub prompt: String,
    /// As written in the data file (or the image file name, for paired prompts).
    pub image: String,
    /// Resolved against the data file's folder (or `--images`).
    pub image_path: PathBuf,
}

/// A data row's columns (CSV) or string/number fields (JSONL), names lower-cased.
pub type Fields = std::collections::BTreeMap<String, String>;
