//! Sweep inputs: JSONL (one object per line) or CSV with a header, each row with `prompt`,
//! `image` (a path relative to the data file) and optionally `id` (default: the row number).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct DataRow {
    pub id: String,
    pub prompt: String,
    /// As written in the data file.
    pub image: String,
    /// Resolved against the data file's folder.
    pub image_path: PathBuf,
}

fn field(obj: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn make_row(
    path: &Path,
    line: usize,
    id: Option<String>,
    prompt: Option<String>,
    image: Option<String>,
) -> Result<DataRow> {
    let here = || format!("{}:{line}", path.display());
    let prompt = prompt.filter(|p| !p.trim().is_empty()).ok_or_else(|| anyhow!("{}: row has no `prompt`", here()))?;
    let image = image.filter(|p| !p.trim().is_empty()).ok_or_else(|| anyhow!("{}: row has no `image`", here()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(DataRow { id: id.unwrap_or_else(|| line.to_string()), prompt, image_path: base.join(&image), image })
}

/// Reads and validates every row, and checks that every image exists, so that a bad row or a
/// missing image is reported before any model is loaded.
pub fn load(path: &Path) -> Result<Vec<DataRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read data file", path.display()))?;
    let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let rows = if is_csv { load_csv(path, &text)? } else { load_jsonl(path, &text)? };
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        if !seen.insert(&r.id) {
            bail!("{}: id `{}` appears more than once", path.display(), r.id);
        }
    }
    let missing: Vec<String> =
        rows.iter().filter(|r| !r.image_path.is_file()).map(|r| r.image_path.display().to_string()).collect();
    if !missing.is_empty() {
        bail!("{}: {} image(s) not found: {}", path.display(), missing.len(), missing.join(", "));
    }
    Ok(rows)
}

fn load_jsonl(path: &Path, text: &str) -> Result<Vec<DataRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow!("{}:{n}: not a JSON object: {e}", path.display()))?;
        let obj = v.as_object().ok_or_else(|| anyhow!("{}:{n}: not a JSON object", path.display()))?;
        rows.push(make_row(path, n, field(obj, "id"), field(obj, "prompt"), field(obj, "image"))?);
    }
    Ok(rows)
}

fn load_csv(path: &Path, text: &str) -> Result<Vec<DataRow>> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let headers = reader.headers().with_context(|| format!("{}: cannot read CSV header", path.display()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let (id, prompt, image) = (col("id"), col("prompt"), col("image"));
    if prompt.is_none() || image.is_none() {
        bail!(
            "{}:1: CSV header needs `prompt` and `image` columns (has: {})",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(", ")
        );
    }
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| anyhow!("{}:{line}: malformed CSV row: {e}", path.display()))?;
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::to_string);
        rows.push(make_row(path, line, get(id), get(prompt), get(image))?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icet-data-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a.png"), b"x").unwrap();
        d
    }

    #[test]
    fn reads_jsonl_and_csv() {
        let d = tmp("ok");
        let j = write(&d, "d.jsonl", "{\"id\": \"x1\", \"prompt\": \"hi\", \"image\": \"a.png\"}\n\n{\"prompt\": \"yo\", \"image\": \"a.png\"}\n");
        let rows = load(&j).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "x1");
        assert_eq!(rows[1].id, "3", "a row without id is named by its line");
        assert_eq!(rows[0].image_path, d.join("a.png"));
        let c = write(&d, "d.csv", "id,prompt,image\n7,\"Hello, world\",a.png\n");
        let rows = load(&c).unwrap();
        assert_eq!((rows[0].id.as_str(), rows[0].prompt.as_str()), ("7", "Hello, world"));
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let d = tmp("bad");
        let j = write(&d, "d.jsonl", "{\"prompt\": \"a\", \"image\": \"a.png\"}\n{\"image\": \"a.png\"}\n");
        let e = load(&j).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("prompt"), "{e}");
        let j = write(&d, "e.jsonl", "{not json\n");
        assert!(load(&j).unwrap_err().to_string().contains("e.jsonl:1"));
        let j = write(&d, "f.jsonl", "{\"prompt\": \"a\", \"image\": \"nope.png\"}\n");
        let e = load(&j).unwrap_err().to_string();
        assert!(e.contains("nope.png") && e.contains("not found"), "{e}");
        let c = write(&d, "g.csv", "id,prompt,image\n1,a\n");
        let e = load(&c).unwrap_err().to_string();
        assert!(e.contains("g.csv:2"), "{e}");
        let j = write(
            &d,
            "h.jsonl",
            "{\"id\":1,\"prompt\": \"a\", \"image\": \"a.png\"}\n{\"id\":1,\"prompt\": \"b\", \"image\": \"a.png\"}\n",
        );
        assert!(load(&j).unwrap_err().to_string().contains("more than once"));
    }
}
