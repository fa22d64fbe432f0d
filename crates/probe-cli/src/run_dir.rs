//! A run directory: the one place that knows its file names, the rows of its files, its
//! manifest, how its append-only files are read back (a torn last line is an interrupted write,
//! cut off when resuming) and which answers are already done.
//!
//! ```text
//! RUN_DIR/
//!   manifest.json            what produced the run (settings must match to resume)
//!   responses.jsonl          ResponseRow per (id, layer), appended as answers finish
//!   summary.json/.csv        per-layer keyword refusal rates, Early/Middle/Late/Average
//!   refusal_rate.svg/.png    the same, plotted
//!   scores.jsonl             ScoreRow per (answer, judge), appended as judged
//!   judges.json              judge name -> identity (kind, version, model directory)
//!   perspective_cache.jsonl  Perspective answers by text
//!   report/                  `icet report`'s tables and plots
//! ```
//!
//! Writers open a run with [`RunDir::create`] (sweep) or [`RunDir::open_for_writing`] (score) and
//! read back with [`RunDir::responses_for_resume`] / [`RunDir::scores_for_resume`]; readers
//! (report) use [`RunDir::open`]. Every answer row is
//! keyed by [`AnswerKey`], and [`Resume`] decides which keys are done.
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "manifest.json";
pub const RESPONSES: &str = "responses.jsonl";
pub const SUMMARY_JSON: &str = "summary.json";
pub const SUMMARY_CSV: &str = "summary.csv";
/// The summary's plot (the keyword refusal rate by layer).
pub const SUMMARY_PLOT_SVG: &str = "refusal_rate.svg";
pub const SUMMARY_PLOT_PNG: &str = "refusal_rate.png";
pub const SCORES: &str = "scores.jsonl";
pub const JUDGES: &str = "judges.json";
pub const PERSPECTIVE_CACHE: &str = "perspective_cache.jsonl";
/// `icet report`'s default output folder inside a run.
pub const REPORT_DIR: &str = "report";

/// One line of `responses.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResponseRow {
    pub id: String,
    pub layer: usize,
    pub prompt: String,
    /// As written in the data file.
    pub image: String,
    /// The file the model saw (absolute), for judges that look at the image; absent in runs
    /// made before it was recorded (`icet score --image-root` resolves `image` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_path: Option<PathBuf>,
    pub response: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: String,
    /// The keyword refusal detector's verdict ([`crate::refusal`]).
    pub refusal: bool,
}

impl ResponseRow {
    /// An answer with no text: neither a refusal nor a compliance (summary and report leave it
    /// out of the refusal rate and count it).
    pub fn is_empty_answer(&self) -> bool {
        self.response.trim().is_empty()
    }
}

/// What kind of judge produced a score, and so what its numbers mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeKind {
    /// Safe/unsafe verdicts: `unsafe`, `categories` (its ASR is the unsafe share).
    LlamaGuard,
    /// A reward model's score (higher: more harmless/helpful).
    Reward,
    /// A local classifier's toxicity probability.
    Toxicity,
    /// Perspective API TOXICITY.
    Perspective,
}

impl JudgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LlamaGuard => "llama-guard",
            Self::Reward => "reward",
            Self::Toxicity => "toxicity",
            Self::Perspective => "perspective",
        }
    }
}

/// One line of `scores.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScoreRow {
    pub id: String,
    pub layer: usize,
    pub judge: String,
    pub kind: JudgeKind,
    /// Llama Guard's verdict (`null` when its answer was neither safe nor unsafe, and for other kinds).
    #[serde(rename = "unsafe")]
    pub unsafe_: Option<bool>,
    #[serde(default)]
    pub categories: Vec<String>,
    /// Reward (logit), toxicity probability, or Perspective TOXICITY; `null` for Llama Guard.
    pub score: Option<f64>,
    /// The judge's own output: Llama Guard's text, the classifier's logits, Perspective's JSON.
    pub raw: serde_json::Value,
}

/// `manifest.json`: what produced a run. `settings` decide its answers; a run resumes only under
/// the same settings. Every field but `settings` is informative.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Manifest {
    #[serde(default)]
    pub engine: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub settings: serde_json::Value,
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub batch_size: String,
    #[serde(default)]
    pub default_layer: Option<usize>,
    #[serde(default)]
    pub refusal_phrases: Vec<String>,
    #[serde(default)]
    pub demo: bool,
}

/// The identity of one answer: a data row's id at one vision layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnswerKey {
    pub id: String,
    pub layer: usize,
}

impl AnswerKey {
    pub fn of(row: &ResponseRow) -> Self {
        Self { id: row.id.clone(), layer: row.layer }
    }
}

/// Which answers a run already has (and so are not made again on resume).
pub struct Resume {
    done: HashSet<AnswerKey>,
}

impl Resume {
    pub fn new(answers: &[ResponseRow]) -> Self {
        Self { done: answers.iter().map(AnswerKey::of).collect() }
    }

    pub fn is_done(&self, id: &str, layer: usize) -> bool {
        self.done.contains(&AnswerKey { id: id.to_string(), layer })
    }

    pub fn done(&self) -> usize {
        self.done.len()
    }
}

/// A sweep's output folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run to read (nothing is checked or created).
    pub fn open(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }

    /// A run this process makes answers for (`icet sweep`): the folder is created if missing.
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Self::open(root))
    }

    /// An existing run this process adds to without making answers (`icet score`); whether it
    /// holds answers is the caller's first check.
    pub fn open_for_writing(root: &Path) -> Result<Self> {
        Ok(Self::open(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of one of the run's files (the constants of this module).
    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    pub fn has_responses(&self) -> bool {
        self.path(RESPONSES).is_file()
    }

    /// Every answer of the run; a torn last line (an interrupted write) is ignored.
    pub fn responses(&self) -> Result<Vec<ResponseRow>> {
        read_jsonl(&self.path(RESPONSES), false)
    }

    /// Every answer, for a writer about to append more: a torn last line is cut off first.
    pub fn responses_for_resume(&self) -> Result<Vec<ResponseRow>> {
        read_jsonl(&self.path(RESPONSES), true)
    }

    /// Where new answers go.
    pub fn answer_appender(&self) -> Result<Appender> {
        Appender::open(&self.path(RESPONSES))
    }

    /// Every score of the run; a torn last line is ignored.
    pub fn scores(&self) -> Result<Vec<ScoreRow>> {
        read_jsonl(&self.path(SCORES), false)
    }

    /// Every score, for a writer about to append more: a torn last line is cut off first.
    pub fn scores_for_resume(&self) -> Result<Vec<ScoreRow>> {
        read_jsonl(&self.path(SCORES), true)
    }

    /// Where new scores go.
    pub fn score_appender(&self) -> Result<Appender> {
        Appender::open(&self.path(SCORES))
    }

    /// The manifest, if the run has one.
    pub fn manifest(&self) -> Result<Option<Manifest>> {
        let path = self.path(MANIFEST);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?))
            }
            Err(_) => Ok(None),
        }
    }

    /// Starts (or resumes) the run described by `manifest`: a run made with other settings is
    /// refused; the manifest is then (re)written.
    pub fn start(&self, manifest: &Manifest) -> Result<()> {
        let path = self.path(MANIFEST);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let old: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
            if old["settings"] != manifest.settings {
                bail!(
                    "{}: holds a run with other settings ({}); use another --out to start a new run",
                    self.root.display(),
                    old["settings"]
                );
            }
        }
        write_json(&path, &serde_json::to_value(manifest)?)
    }

    /// Binds each judge name to its identity in `judges.json`; a name already bound to another
    /// identity is an error.
    pub fn bind_judges(&self, judges: &[(String, serde_json::Value)]) -> Result<()> {
        let path = self.path(JUDGES);
        let mut known: BTreeMap<String, serde_json::Value> = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", path.display()))?,
            Err(_) => BTreeMap::new(),
        };
        for (name, id) in judges {
            match known.get(name) {
                Some(old) if old != id => bail!(
                    "{}: judge `{name}` was scored with {old}; to score with {id}, give it another name (KIND:NAME=DIR)",
                    path.display()
                ),
                _ => {
                    known.insert(name.clone(), id.clone());
                }
            }
        }
        write_json(&path, &serde_json::to_value(&known)?)
    }

    /// The vision tower's depth as the sweep's summary recorded it.
    pub fn num_layers(&self) -> Option<usize> {
        let text = std::fs::read_to_string(self.path(SUMMARY_JSON)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["num_layers"].as_u64().map(|n| n as usize)
    }

    /// Writes one of the run's whole-file outputs (summary, plots).
    pub fn write(&self, file: &str, contents: impl AsRef<[u8]>) -> Result<()> {
        let path = self.path(file);
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Pretty JSON with a final newline.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Appends rows to a JSON-lines file, each batch written and flushed at once, so an interruption
/// loses only what was not yet written.
pub struct Appender {
    file: File,
    path: PathBuf,
}

impl Appender {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Writes `rows`, one line each, and flushes.
    pub fn append<T: Serialize>(&mut self, rows: &[T]) -> icet_models::Result<()> {
        let mut text = String::new();
        for r in rows {
            text.push_str(&serde_json::to_string(r).map_err(icet_models::Error::invalid)?);
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| icet_models::Error::input(&self.path, format!("cannot write: {e}")))
    }
}

/// Reads the JSON-lines file `path` as `T`s (none when it does not exist). A torn last line is
/// dropped, and cut off the file when `repair`; any other bad line is an error naming the line.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, repair: bool) -> Result<Vec<T>> {
    let Ok(file) = File::open(path) else { return Ok(vec![]) };
    let mut rows = Vec::new();
    let mut reader = BufReader::new(file);
    let (mut line, mut good, mut n) = (String::new(), 0u64, 0);
    loop {
        line.clear();
        let read = reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.trim().is_empty() {
            good += read as u64;
            continue;
        }
        match serde_json::from_str::<T>(line.trim_end()) {
            Ok(r) if line.ends_with('\n') => {
                rows.push(r);
                good += read as u64;
            }
            Ok(_) | Err(_) => {
                if reader.read_line(&mut String::new())? != 0 {
                    let why =
                        serde_json::from_str::<T>(line.trim_end()).err().map(|e| e.to_string()).unwrap_or_default();
                    bail!("{}:{n}: not a valid row: {why}", path.display());
                }
                if repair {
                    eprintln!("icet: dropping a partly written last line of {}", path.display());
                    OpenOptions::new().write(true).open(path)?.set_len(good)?;
                }
                break;
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icet-run-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Row {
        a: u32,
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_repaired_only_when_asked() {
        let d = scratch("torn");
        let p = d.join("rows.jsonl");
        std::fs::write(&p, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3").unwrap();
        assert_eq!(read_jsonl::<Row>(&p, false).unwrap(), vec![Row { a: 1 }, Row { a: 2 }]);
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("{\"a\": 3"), "not repaired");
        assert_eq!(read_jsonl::<Row>(&p, true).unwrap().len(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\": 1}\n{\"a\": 2}\n");
        // A complete but unterminated last line is torn too (the newline never came).
        std::fs::write(&p, "{\"a\": 1}\n{\"a\": 2}").unwrap();
        assert_eq!(read_jsonl::<Row>(&p, true).unwrap(), vec![Row { a: 1 }]);
        // A bad line before the end is an error naming the line.
        std::fs::write(&p, "{\"a\": 1}\nnope\n{\"a\": 2}\n").unwrap();
        let e = read_jsonl::<Row>(&p, true).unwrap_err().to_string();
        assert!(e.contains("rows.jsonl:2: not a valid row"), "{e}");
        assert!(read_jsonl::<Row>(&d.join("missing.jsonl"), true).unwrap().is_empty());
        let mut w = Appender::open(&d.join("new.jsonl")).unwrap();
        w.append(&[Row { a: 7 }, Row { a: 8 }]).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("new.jsonl")).unwrap(), "{\"a\":7}\n{\"a\":8}\n");
    }

    #[test]
    fn a_run_resumes_only_under_its_settings_and_judge_names_stay_bound() {
        let run = RunDir::create(&scratch("manifest")).unwrap();
        let m = Manifest { settings: serde_json::json!({"layers": [1, 2]}), ..Manifest::default() };
        run.start(&m).unwrap();
        run.start(&m).unwrap();
        let other = Manifest { settings: serde_json::json!({"layers": [1]}), ..m.clone() };
        assert!(run.start(&other).unwrap_err().to_string().contains("holds a run with other settings"));
        assert_eq!(run.manifest().unwrap().unwrap().settings, m.settings);
        let id = |d: &str| serde_json::json!({"kind": "reward", "dir": d});
        run.bind_judges(&[("rm".into(), id("/a"))]).unwrap();
        run.bind_judges(&[("rm".into(), id("/a")), ("tox".into(), id("/b"))]).unwrap();
        let e = run.bind_judges(&[("rm".into(), id("/c"))]).unwrap_err().to_string();
        assert!(e.contains("judges.json") && e.contains("another name"), "{e}");
    }
}
