//! A run directory: the one place that knows its file names, the rows of its files, its
//! manifest, how its append-only files are read back and repaired, who may write them, and which
//! answers are already done.
//!
//! ```text
//! RUN_DIR/
//!   manifest.json            what the answers are made from: settings, model file fingerprints,
//!                            precision (must match to resume); written once, atomically
//!   invocations.jsonl        one line per command that wrote here (time, command, device, dtype,
//!                            version, pid, host, skipped rows), appended
//!   responses.jsonl          ResponseRow per (id, layer), appended as answers finish, each with
//!                            the fingerprints of its inputs (rendered prompt, image bytes)
//!   responses.shard-K-of-N.jsonl  the same, of shard K of a run made in N shards (one file per
//!                            shard, read back as one run; `crate::shard`)
//!   summary.json/.csv        per-layer keyword refusal rates, Early/Middle/Late/Average
//!   refusal_rate.svg/.png    the same, plotted
//!   scores.jsonl             ScoreRow per (answer, judge), appended as judged (a scoring shard:
//!                            scores.shard-K-of-N.jsonl)
//!   judges.json              judge name -> identity (kind, version, model directory)
//!   perspective_cache.jsonl  Perspective answers by text
//!   report/                  `icet report`'s tables and plots
//!   slurm/, logs/            `icet slurm`'s job scripts and the tasks' logs; `icet sweep
//!                            --devices`' workers' logs
//!   .responses.jsonl.lock    the advisory lock of the writer of responses.jsonl (its pid, host,
//!   .scores.jsonl.lock       command while it runs); likewise for scores.jsonl
//!   .manifest.lock           held for the moment a writer checks/creates the manifest and logs
//!   .summary.lock            held while a shard reads the run and replaces its summary
//! ```
//!
//! The rules, each kept in one place here:
//! * **One writer per file.** Every append-only file has one writer at a time, holding an
//!   exclusive `flock` on `.{file}.lock` ([`RunDir::lock`]); another is refused with "in use by
//!   pid N". The kernel releases the lock however its holder ends, so a lock is never stale; the
//!   holder's record left in the lock file only tells the next writer that the last one did not
//!   finish. Several writers of one run — shards — each write their own answers file
//!   ([`RunDir::create_for`]); readers read every shard's file as one run.
//! * **Nothing rewritten in place.** Rows are only appended; whole-file outputs (manifest,
//!   summary, plots, judges.json) are replaced atomically ([`write_atomically`]: temporary
//!   file, fsync, rename), so a full disk or a kill leaves the old file or the new one, never half
//!   of one. The manifest is written once, when the run starts; each later command appends a line
//!   to `invocations.jsonl` instead.
//! * **Torn tails repaired byte by byte.** A last line without its newline is an interrupted
//!   write (even when cut inside a multi-byte UTF-8 character): readers skip it, a writer cuts it
//!   off before appending ([`read_jsonl`]). Any other bad line is an error naming the line.
//! * **No duplicates.** Readers keep one row per key, across all the run's files: identical copies
//!   (two writers of an older icet without a lock) are dropped, and said; differing copies are an
//!   error naming the key. A run's rows are a set: readers return them in key order, so every
//!   reader sees the same run however (and by how many processes) its rows were written.
//! * **Never mixed.** A run resumes only with the same settings, the same model files and the
//!   same precision ([`RunDir::check_resume`]), and an answer is kept only while its data row's
//!   rendered prompt and image are what they were ([`Resume::check_inputs`]).
//! * **Not somebody else's folder.** A sweep refuses an `--out` that has files but no manifest
//!   (`icet slurm`'s `slurm/` and `logs/` aside).
//!
//! Writers open a run with [`RunDir::create`] (sweep) or [`RunDir::open_for_writing`] (score),
//! read back with [`RunDir::responses_for_resume`] / [`RunDir::scores_for_resume`] and append
//! through [`RunDir::answer_appender`] / [`RunDir::score_appender`]; readers (report) use
//! [`RunDir::open`]. Every answer row is keyed by [`AnswerKey`], and [`Resume`] decides which
//! keys are done.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::Hash;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::shard::{parse_shard_file, Shard, ShardPlan, ShardStatus};

pub const MANIFEST: &str = "manifest.json";
pub const INVOCATIONS: &str = "invocations.jsonl";
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
/// `icet slurm`'s job scripts, and the logs of Slurm tasks and `--devices` workers.
pub const SLURM_DIR: &str = "slurm";
pub const LOGS_DIR: &str = "logs";
/// The manifest's format: 2 since fingerprints, invocations and locks (absent, 0, before).
pub const MANIFEST_FORMAT: u32 = 2;

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
    /// What the answer was made from; absent in runs of an older icet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<RowInputs>,
}

impl ResponseRow {
    /// An answer with no text: neither a refusal nor a compliance (summary and report leave it
    /// out of the refusal rate and count it).
    pub fn is_empty_answer(&self) -> bool {
        self.response.trim().is_empty()
    }
}

/// Fingerprints of what one answer was made from (`crate::fingerprint` computes them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RowInputs {
    /// `sha256:` of the text the template rendered for the model and of whether the tokenizer
    /// added its special tokens: what decides the prompt's token ids, given the model files.
    pub prompt: String,
    /// `sha256:` of the image file's bytes (`sha256sum` gives the same digest).
    pub image: String,
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
    /// The official VQA accuracy of the answer (0..1) against the run's VQA-v2 annotations.
    Vqa,
}

impl JudgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LlamaGuard => "llama-guard",
            Self::Reward => "reward",
            Self::Toxicity => "toxicity",
            Self::Perspective => "perspective",
            Self::Vqa => "vqa",
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
    /// Reward (logit), toxicity probability, Perspective TOXICITY or VQA accuracy; `null` for Llama Guard.
    pub score: Option<f64>,
    /// The judge's own output: Llama Guard's text, the classifier's logits, Perspective's JSON,
    /// VQA's `{answer (as scored), answer_type, question_type}`.
    pub raw: serde_json::Value,
}

/// `manifest.json`: what the answers of a run are made from. `settings`, `model_files` and
/// `precision` must match for a run to resume (`precision` unless mixing is asked for); every
/// other field is informative, as of the command that started the run (later commands are in
/// `invocations.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`]; 0 in runs of an older icet (no fingerprints, no invocations log).
    #[serde(default)]
    pub format: u32,
    #[serde(default)]
    pub engine: String,
    #[serde(default)]
    pub version: String,
    /// When the run started (UTC, RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub settings: serde_json::Value,
    /// Each file of the model directory the model is read from, by name: `sha256:` of the whole
    /// file (configs, tokenizer, templates), `sha256-sampled:` of a weights file's header, length
    /// and sampled bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_files: BTreeMap<String, String>,
    /// How the answers' tensors were stored (`f32`, `bf16`, `f16`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precision: String,
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
    /// Data rows left out by `--skip-invalid` when the run started, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_rows: Vec<SkippedRow>,
    /// The vision tower's depth (layers 0..=num_layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<usize>,
    /// A run made in shards: how its grid is split (every shard must compute the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardPlan>,
}

/// A data row a sweep left out (`--skip-invalid`), and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkippedRow {
    pub id: String,
    pub reason: String,
}

/// One line of `invocations.jsonl`: a command that wrote into the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Invocation {
    /// UTC, RFC 3339.
    pub time: String,
    pub command: Vec<String>,
    pub version: String,
    pub pid: u32,
    pub host: String,
    /// The backend (`cpu`, `cuda-bf16`, ...) and its storage precision.
    pub backend: String,
    pub precision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub batch_size: String,
    /// The file it appended to (`responses.jsonl`, `scores.jsonl`, a shard's answers file).
    pub writes: String,
    #[serde(default)]
    pub allow_mixed_precision: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_rows: Vec<SkippedRow>,
}

impl Invocation {
    /// This process writing `writes` on `backend`.
    pub fn now(backend: &str, writes: &str) -> Self {
        Self {
            time: utc_now(),
            command: std::env::args().collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            host: host_name(),
            backend: backend.into(),
            precision: precision_of(backend),
            writes: writes.into(),
            ..Self::default()
        }
    }
}

/// The storage precision of a backend by its name: backends name it after a dash
/// (`cuda-bf16`); the CPU backend stores f32.
pub fn precision_of(backend: &str) -> String {
    match backend.rsplit_once('-') {
        Some((_, p)) if ["f32", "bf16", "f16"].contains(&p) => p.to_string(),
        _ => "f32".to_string(),
    }
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

/// A data row as it is now: what its answers must have been made from to be kept.
#[derive(Clone, Debug)]
pub struct RowSource<'a> {
    /// The user prompt and the image as written in the data file (compared with answers of an
    /// older icet, which carry no fingerprints).
    pub prompt: &'a str,
    pub image: &'a str,
    pub inputs: RowInputs,
}

/// Which answers a run already has (and so are not made again on resume).
pub struct Resume {
    done: HashSet<AnswerKey>,
}

impl Resume {
    /// `answers` as read back (de-duplicated by [`RunDir::responses_for_resume`]).
    pub fn new(answers: &[ResponseRow]) -> Self {
        Self { done: answers.iter().map(AnswerKey::of).collect() }
    }

    pub fn is_done(&self, id: &str, layer: usize) -> bool {
        self.done.contains(&AnswerKey { id: id.to_string(), layer })
    }

    pub fn done(&self) -> usize {
        self.done.len()
    }

    /// Refuses the resume when an answer was made from other inputs than its data row has now
    /// (`rows` by id; answers of ids no longer in the data are not this run's concern), naming
    /// every changed row and what changed: a run never mixes answers made from different inputs.
    /// Answers of an older icet carry no fingerprints: their prompt and image name are compared,
    /// and how many could not be checked further is said once.
    pub fn check_inputs(answers: &[ResponseRow], rows: &HashMap<&str, RowSource>, responses: &Path) -> Result<()> {
        let mut changed: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<usize>)> = BTreeMap::new();
        let mut unchecked = 0;
        for a in answers {
            let Some(now) = rows.get(a.id.as_str()) else { continue };
            let mut what = Vec::new();
            match &a.inputs {
                Some(was) => {
                    if was.prompt != now.inputs.prompt {
                        what.push("prompt");
                    }
                    if was.image != now.inputs.image {
                        what.push("image");
                    }
                }
                None => {
                    unchecked += 1;
                    if a.prompt != now.prompt {
                        what.push("prompt");
                    }
                    if a.image != now.image {
                        what.push("image");
                    }
                }
            }
            if !what.is_empty() {
                let e = changed.entry(a.id.as_str()).or_default();
                e.0.extend(what);
                e.1.insert(a.layer);
            }
        }
        if unchecked > 0 {
            eprintln!(
                "icet: {}: {unchecked} answers were made by an older icet that did not fingerprint its inputs; \
                 only their prompt text and image name are checked",
                responses.display()
            );
        }
        if changed.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = changed
            .iter()
            .map(|(id, (what, layers))| {
                let what: Vec<&str> = what.iter().copied().collect();
                let layers: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
                format!("`{id}` ({} changed; answers at layers {})", what.join(" and "), layers.join(", "))
            })
            .collect();
        bail!(
            "{}: {} data rows changed since their answers were made: {}; a run never mixes answers made from \
             different inputs: restore the rows, or start a new run with another --out",
            responses.display(),
            changed.len(),
            list.join(", ")
        )
    }
}

/// A sweep's output folder, as one of its writers (a shard, or the whole run) sees it.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
    /// The shard this process writes (its own answers and scores files), if any.
    shard: Option<Shard>,
}

/// Every answer of a run ([`RunDir::answers`]): one per (id, layer) in key order, and which file
/// holds which.
#[derive(Clone, Debug, Default)]
pub struct RunAnswers {
    pub rows: Vec<ResponseRow>,
    /// Answers file name -> the answers in it.
    pub by_file: HashMap<String, HashSet<AnswerKey>>,
}

/// What a writer of a run holds: an exclusive `flock` on `.{file}.lock`, with its own record
/// (pid, host, start, command) in the file for the message another writer gets. The kernel
/// releases the lock however the process ends; a clean end also empties the record, so a
/// record found by the next writer means its predecessor was killed or crashed.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The record in a lock file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
struct LockHolder {
    pid: u32,
    host: String,
    started: String,
    command: Vec<String>,
}

impl LockHolder {
    fn describe(&self) -> String {
        let command = self.command.iter().skip(1).take(2).cloned().collect::<Vec<_>>().join(" ");
        let mut s = format!("pid {} on {} (icet {command}, since {})", self.pid, self.host, self.started);
        if self.host == host_name() && !Path::new(&format!("/proc/{}", self.pid)).exists() {
            s.push_str(", which is not running any more: its lock is about to be released");
        }
        s
    }
}

impl RunDir {
    /// A run to read (nothing is checked or created).
    pub fn open(root: &Path) -> Self {
        Self { root: root.to_path_buf(), shard: None }
    }

    /// The same run, written as `shard` (its own answers and scores files).
    pub fn with_shard(self, shard: Option<Shard>) -> Self {
        Self { shard, ..self }
    }

    pub fn shard(&self) -> Option<Shard> {
        self.shard
    }

    /// The answers file this writer appends to: `responses.jsonl`, or its shard's.
    pub fn answers_file(&self) -> String {
        self.own(RESPONSES)
    }

    /// The scores file this writer appends to: `scores.jsonl`, or its shard's.
    pub fn scores_file(&self) -> String {
        self.own(SCORES)
    }

    /// The Perspective cache this writer appends to (one per scoring shard: one writer per file).
    pub fn perspective_cache_file(&self) -> String {
        self.own(PERSPECTIVE_CACHE)
    }

    fn own(&self, file: &str) -> String {
        match self.shard {
            Some(s) => s.file(file),
            None => file.to_string(),
        }
    }

    /// A run this process makes answers for (`icet sweep`): the folder is created if missing,
    /// refused if it holds files but no manifest (somebody else's folder), and its answers file
    /// locked for this process ([`Self::lock`]; the lock is released when it is dropped).
    pub fn create(root: &Path) -> Result<(Self, RunLock)> {
        Self::create_for(root, None)
    }

    /// Refuses `root` if it exists and is not an icet run nor empty (somebody else's folder),
    /// before anything is written into it.
    pub fn refuse_foreign(root: &Path) -> Result<()> {
        if root.exists() {
            check_not_foreign(root)?;
        }
        Ok(())
    }

    /// [`Self::create`] for `shard` of the run: its own answers file is locked.
    pub fn create_for(root: &Path, shard: Option<Shard>) -> Result<(Self, RunLock)> {
        if root.exists() {
            check_not_foreign(root)?;
        }
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let run = Self::open(root).with_shard(shard);
        let lock = run.lock(&run.answers_file())?;
        Ok((run, lock))
    }

    /// An existing run this process adds to without making answers (`icet score`); whether it
    /// holds answers is the caller's first check, and the scores file's lock its second
    /// ([`Self::lock`]). (A folder with answers but no manifest is scored: its answers file is
    /// only read.)
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

    /// Makes this process the one writer of `file` (an answers or scores file of the run), or
    /// refuses naming the writer that is: "in use by pid N on HOST (icet sweep, since T)".
    pub fn lock(&self, file: &str) -> Result<RunLock> {
        let path = self.path(&format!(".{file}.lock"));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = f.read_to_string(&mut text);
                let holder = serde_json::from_str::<LockHolder>(&text)
                    .map(|h| h.describe())
                    .unwrap_or_else(|_| "another process (that has not said which yet)".into());
                bail!(
                    "{}: in use by {holder}: another icet is writing its {file}; wait for it to finish, or use \
                     another --out",
                    self.root.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => bail!("{}: cannot lock: {e}", path.display()),
        }
        let mut previous = String::new();
        f.read_to_string(&mut previous).with_context(|| format!("cannot read {}", path.display()))?;
        if let Ok(h) = serde_json::from_str::<LockHolder>(&previous) {
            eprintln!(
                "icet: {}: the last writer of {file} (pid {} on {}, since {}) stopped without finishing; \
                 carrying on from what it wrote",
                self.root.display(),
                h.pid,
                h.host,
                h.started
            );
        }
        let me = LockHolder {
            pid: std::process::id(),
            host: host_name(),
            started: utc_now(),
            command: std::env::args().collect(),
        };
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| f.write_all(serde_json::to_string(&me).unwrap_or_default().as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { file: f })
    }

    /// Runs `f` holding `.manifest.lock` (blocking: held only while a writer checks or creates
    /// the manifest and logs itself, so that writers of one run — shards — never race there).
    fn with_manifest_lock<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.holding(".manifest.lock", f)
    }

    /// Runs `f` holding an exclusive `flock` on the file `name` (waiting for it).
    fn holding<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let path = self.path(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        f()
    }

    /// Whether the run has any answers file (its own or a shard's).
    pub fn has_responses(&self) -> bool {
        !self.files_of(RESPONSES).is_empty()
    }

    /// The run's files of one kind (`responses.jsonl` or `scores.jsonl`) that exist: the file
    /// itself, then every shard's, by number of shards and shard.
    pub fn files_of(&self, file: &str) -> Vec<String> {
        let mut shards: Vec<(Shard, String)> = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        parse_shard_file(&name, file).map(|s| (s, name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        shards.sort_by_key(|(s, _)| (s.count, s.index));
        let plain = self.path(file).is_file().then(|| file.to_string());
        plain.into_iter().chain(shards.into_iter().map(|(_, n)| n)).collect()
    }

    /// Every answer of the run, from every answers file (each shard's), one per (id, layer)
    /// ([`dedupe`]), in key order; a torn last line (an interrupted write, or one in progress) is
    /// ignored.
    pub fn responses(&self) -> Result<Vec<ResponseRow>> {
        Ok(self.answers()?.rows)
    }

    /// [`Self::responses`] with which file holds which answer (for [`Self::shard_status`]).
    pub fn answers(&self) -> Result<RunAnswers> {
        let files = self.files_of(RESPONSES);
        let mut rows = Vec::new();
        let mut by_file: HashMap<String, HashSet<AnswerKey>> = HashMap::new();
        for (f, name) in files.iter().enumerate() {
            let read: Vec<(usize, ResponseRow)> = read_jsonl_numbered(&self.path(name), false)?;
            by_file.insert(name.clone(), read.iter().map(|(_, r)| AnswerKey::of(r)).collect());
            rows.extend(read.into_iter().map(|(line, r)| ((f, line), r)));
        }
        let paths: Vec<PathBuf> = files.iter().map(|n| self.path(n)).collect();
        let mut rows = dedupe(&paths, rows, AnswerKey::of, describe_answer)?;
        rows.sort_by_cached_key(AnswerKey::of);
        Ok(RunAnswers { rows, by_file })
    }

    /// This writer's answers (its own file: a shard resumes on its own), for a writer about to
    /// append more: a torn last line is cut off first.
    pub fn responses_for_resume(&self) -> Result<Vec<ResponseRow>> {
        let path = self.path(&self.answers_file());
        let rows: Vec<((usize, usize), ResponseRow)> =
            read_jsonl_numbered(&path, true)?.into_iter().map(|(line, r)| ((0, line), r)).collect();
        dedupe(&[path], rows, AnswerKey::of, describe_answer)
    }

    /// Where new answers go (this writer's answers file).
    pub fn answer_appender(&self) -> Result<Appender> {
        Appender::open(&self.path(&self.answers_file()))
    }

    /// Every score of the run, from every scores file, one per (answer, judge), in key order; a
    /// torn last line is ignored.
    pub fn scores(&self) -> Result<Vec<ScoreRow>> {
        self.read_scores(false)
    }

    /// Every score of the run, for a writer about to append more: a torn last line of its own
    /// file is cut off first (other files are only read: their writers may be appending).
    pub fn scores_for_resume(&self) -> Result<Vec<ScoreRow>> {
        self.read_scores(true)
    }

    fn read_scores(&self, repair_own: bool) -> Result<Vec<ScoreRow>> {
        let own = self.scores_file();
        let mut files = self.files_of(SCORES);
        if repair_own && !files.contains(&own) {
            files.push(own.clone());
        }
        let mut rows = Vec::new();
        for (f, name) in files.iter().enumerate() {
            let read: Vec<(usize, ScoreRow)> = read_jsonl_numbered(&self.path(name), repair_own && *name == own)?;
            rows.extend(read.into_iter().map(|(line, r)| ((f, line), r)));
        }
        let paths: Vec<PathBuf> = files.iter().map(|n| self.path(n)).collect();
        let mut rows = dedupe(&paths, rows, score_key, describe_score)?;
        rows.sort_by_cached_key(score_key);
        Ok(rows)
    }

    /// Where new scores go (this writer's scores file).
    pub fn score_appender(&self) -> Result<Appender> {
        Appender::open(&self.path(&self.scores_file()))
    }

    /// Data rows the run leaves out (`--skip-invalid`), as its manifest and every command that
    /// wrote here recorded them: not owed.
    pub fn left_out(&self) -> Result<HashSet<String>> {
        let mut ids: HashSet<String> = HashSet::new();
        if let Some(m) = self.manifest()? {
            ids.extend(m.skipped_rows.into_iter().map(|r| r.id));
        }
        for i in self.invocations()? {
            ids.extend(i.skipped_rows.into_iter().map(|r| r.id));
        }
        Ok(ids)
    }

    /// For a run made in shards, how far each shard got (`answers` as read by [`Self::answers`]);
    /// `None` for a run made in one piece.
    pub fn shard_status(&self, answers: &RunAnswers) -> Result<Option<Vec<ShardStatus>>> {
        let Some(plan) = self.manifest()?.and_then(|m| m.shards) else { return Ok(None) };
        Ok(Some(plan.status(&answers.by_file, &self.left_out()?)))
    }

    /// Runs `f` holding `.summary.lock` (blocking): a shard that finishes reads the whole run and
    /// replaces its summary under it, so that the last summary written is of the last reading.
    pub fn with_summary_lock<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.holding(".summary.lock", f)
    }

    /// The manifest, if the run has one.
    pub fn manifest(&self) -> Result<Option<Manifest>> {
        let path = self.path(MANIFEST);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{}: invalid JSON (torn by an older icet, which rewrote it in place?)", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Whether a run with `manifest`'s settings, model files and precision may add answers here:
    /// refused, naming every setting or model file that differs, when the run was made otherwise,
    /// and when it was made in another precision unless `allow_mixed_precision`. A folder without a
    /// manifest may start any run.
    pub fn check_resume(&self, manifest: &Manifest, allow_mixed_precision: bool) -> Result<()> {
        match self.manifest()? {
            Some(old) => compatible(&self.root, &old, manifest, allow_mixed_precision),
            None => Ok(()),
        }
    }

    /// Starts (or resumes) the run described by `manifest`, as `invocation`: checked as
    /// [`Self::check_resume`]; the manifest is written (atomically) only if the run has none, and
    /// `invocation` is appended to `invocations.jsonl`.
    pub fn start(&self, manifest: &Manifest, invocation: &Invocation) -> Result<()> {
        self.with_manifest_lock(|| {
            match self.manifest()? {
                Some(old) => compatible(&self.root, &old, manifest, invocation.allow_mixed_precision)?,
                None => {
                    write_atomically(&self.path(MANIFEST), (serde_json::to_string_pretty(manifest)? + "\n").as_bytes())?
                }
            }
            self.log(invocation)
        })
    }

    /// Appends `invocation` to `invocations.jsonl` (for writers that do not start the run:
    /// `icet score`).
    pub fn log_invocation(&self, invocation: &Invocation) -> Result<()> {
        self.with_manifest_lock(|| self.log(invocation))
    }

    fn log(&self, invocation: &Invocation) -> Result<()> {
        let path = self.path(INVOCATIONS);
        read_jsonl_numbered::<serde_json::Value>(&path, true)?;
        Appender::open(&path)?.append(std::slice::from_ref(invocation))?;
        Ok(())
    }

    /// Every invocation logged (runs of an older icet have none).
    pub fn invocations(&self) -> Result<Vec<Invocation>> {
        read_jsonl(&self.path(INVOCATIONS), false)
    }

    /// Binds each judge name to its identity in `judges.json`; a name already bound to another
    /// identity is an error.
    /// Held under `.manifest.lock`: scoring shards bind their judges one at a time.
    pub fn bind_judges(&self, judges: &[(String, serde_json::Value)]) -> Result<()> {
        self.with_manifest_lock(|| self.bind_judges_locked(judges))
    }

    fn bind_judges_locked(&self, judges: &[(String, serde_json::Value)]) -> Result<()> {
        let path = self.path(JUDGES);
        let mut known: BTreeMap<String, serde_json::Value> = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: invalid JSON", path.display()))?,
            Err(_) => BTreeMap::new(),
        };
        let before = known.clone();
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
        if known == before && path.is_file() {
            return Ok(());
        }
        write_atomically(&path, (serde_json::to_string_pretty(&known)? + "\n").as_bytes())
    }

    /// The vision tower's depth as the manifest (or, in runs of an older icet, the sweep's
    /// summary) recorded it.
    pub fn num_layers(&self) -> Option<usize> {
        if let Some(n) = self.manifest().ok().flatten().and_then(|m| m.num_layers) {
            return Some(n);
        }
        let text = std::fs::read_to_string(self.path(SUMMARY_JSON)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["num_layers"].as_u64().map(|n| n as usize)
    }

    /// Writes (replaces, atomically) one of the run's whole-file outputs (summary, plots).
    pub fn write(&self, file: &str, contents: impl AsRef<[u8]>) -> Result<()> {
        write_atomically(&self.path(file), contents.as_ref())
    }
}

/// Refuses a folder with entries but no manifest: not an icet run, so not ours to write into
/// (its files are never cut or overwritten). A writer's own lock and temporary files (what a
/// run interrupted before its manifest leaves) do not count.
fn check_not_foreign(root: &Path) -> Result<()> {
    if !root.is_dir() {
        bail!("{}: exists and is not a folder", root.display());
    }
    if root.join(MANIFEST).is_file() {
        return Ok(());
    }
    let entries = std::fs::read_dir(root).with_context(|| format!("cannot read {}", root.display()))?;
    let mut foreign: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.starts_with('.') && (n.ends_with(".lock") || n.contains(".tmp-"))))
        .filter(|n| !is_icets_own_folder(&root.join(n)))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown: Vec<String> = foreign.iter().take(3).map(|n| format!("`{n}`")).collect();
    bail!(
        "{}: not an icet run (no manifest.json) and not empty ({}{}); give a new or empty folder as --out",
        root.display(),
        shown.join(", "),
        if foreign.len() > 3 { format!(" and {} more", foreign.len() - 3) } else { String::new() }
    )
}

/// `slurm/` as `icet slurm` writes it (job scripts) and `logs/` (tasks' and workers' logs): made
/// before the first shard writes the manifest, so not somebody else's files.
fn is_icets_own_folder(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let own_file = |f: &str| match name.as_str() {
        SLURM_DIR => f.ends_with(".sbatch") || f == "submit.sh" || (f.starts_with('.') && f.contains(".tmp-")),
        LOGS_DIR => f.ends_with(".log"),
        _ => false,
    };
    let Ok(entries) = std::fs::read_dir(path) else { return false };
    path.is_dir()
        && !path.is_symlink()
        && entries.filter_map(|e| e.ok()).all(|e| e.path().is_file() && own_file(&e.file_name().to_string_lossy()))
}

/// `new` may add to the run of `old`: the same settings, model files and precision (the last
/// unless `allow_mixed_precision`); every difference is named.
fn compatible(root: &Path, old: &Manifest, new: &Manifest, allow_mixed_precision: bool) -> Result<()> {
    let mut diffs = Vec::new();
    let empty = serde_json::Map::new();
    let (was, now) = (old.settings.as_object().unwrap_or(&empty), new.settings.as_object().unwrap_or(&empty));
    let keys: BTreeSet<&String> = was.keys().chain(now.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "not set".into());
    for k in keys {
        if was.get(k) != now.get(k) {
            diffs.push(format!("`{k}` is {} in the run, {} now", show(was.get(k)), show(now.get(k))));
        }
    }
    if !diffs.is_empty() {
        bail!(
            "{}: holds a run with other settings ({}); use the run's settings to resume it, or another --out to start a new run",
            root.display(),
            diffs.join("; ")
        );
    }
    if let (Some(was), Some(now)) = (&old.shards, &new.shards) {
        if let Some(why) = was.difference(now) {
            bail!(
                "{}: holds a run made in {} shards, and this command's shard would not be one of them ({why}); \
                 a run's shards all come from one data file: restore it, or use another --out",
                root.display(),
                was.count
            );
        }
    }
    if old.model_files.is_empty() {
        if !new.model_files.is_empty() {
            eprintln!(
                "icet: {}: made by an older icet that did not fingerprint the model files; they are not checked",
                root.display()
            );
        }
    } else {
        let files: BTreeSet<&String> = old.model_files.keys().chain(new.model_files.keys()).collect();
        let changed: Vec<String> = files
            .into_iter()
            .filter(|f| old.model_files.get(*f) != new.model_files.get(*f))
            .map(|f| match (old.model_files.get(f), new.model_files.get(f)) {
                (Some(_), None) => format!("`{f}` is gone"),
                (None, Some(_)) => format!("`{f}` is new"),
                _ => format!("`{f}` differs"),
            })
            .collect();
        if !changed.is_empty() {
            bail!(
                "{}: the model's files changed since this run began ({}): its answers would mix two models; \
                 restore them, or use another --out",
                root.display(),
                changed.join(", ")
            );
        }
    }
    let was = if old.precision.is_empty() { precision_of(&old.backend) } else { old.precision.clone() };
    if was != new.precision && !new.precision.is_empty() {
        if !allow_mixed_precision {
            bail!(
                "{}: this run's answers were made in {was} ({}), this command would add {} ones ({}); give \
                 --allow-mixed-precision to mix precisions in one run, or use another --out",
                root.display(),
                old.backend,
                new.precision,
                new.backend
            );
        }
        eprintln!(
            "icet: {}: adding {} answers to a {was} run, as asked (--allow-mixed-precision)",
            root.display(),
            new.precision
        );
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary file in the same folder, fsynced and renamed
/// over it (then the folder fsynced): the name always holds the old complete contents or the new
/// ones, whatever happens (a full disk, a kill), and no file is ever rewritten in place.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// Now, UTC, as RFC 3339 (`2026-12-01T16:35:40Z`).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // The chat templates' `strftime_now` already carries the civil calendar.
    icet_models::chat_template::strftime_utc("%Y-%m-%dT%H:%M:%SZ", secs)
}

/// This machine's name (for lock records and invocations).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
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

    /// Writes `rows`, one line each, in one write, and flushes.
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

/// Reads the JSON-lines file `path` as `T`s (none when it does not exist). A torn last line — no
/// newline at its end, an interrupted write, wherever it was cut (inside a multi-byte UTF-8
/// character too) — is dropped, and cut off the file when `repair`; any complete line that is not
/// a valid row is an error naming the line, and is never cut.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, repair: bool) -> Result<Vec<T>> {
    Ok(read_jsonl_numbered(path, repair)?.into_iter().map(|(_, r)| r).collect())
}

/// [`read_jsonl`] with each row's line number (1-based).
fn read_jsonl_numbered<T: for<'de> Deserialize<'de>>(path: &Path, repair: bool) -> Result<Vec<(usize, T)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut rows = Vec::new();
    let mut reader = BufReader::new(file);
    let (mut line, mut good, mut n) = (Vec::new(), 0u64, 0);
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if !line.ends_with(b"\n") {
            // The last line, never finished.
            let torn = String::from_utf8_lossy(&line);
            if repair {
                eprintln!("icet: {}:{n}: cutting a partly written last line ({} bytes)", path.display(), line.len());
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(good))
                    .with_context(|| format!("cannot repair {}", path.display()))?;
            } else if !torn.trim().is_empty() {
                eprintln!("icet: {}:{n}: ignoring a partly written last line", path.display());
            }
            break;
        }
        good += read as u64;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match serde_json::from_slice::<T>(&line) {
            Ok(r) => rows.push((n, r)),
            Err(e) => bail!("{}:{n}: not a valid row: {e}", path.display()),
        }
    }
    Ok(rows)
}

/// One row per key: identical copies (two processes of an older icet, without the lock, both
/// wrote every answer) are dropped and counted in one note; copies that differ are an error
/// naming the key and the lines, since nothing says which is right.
/// The rows of one or more files (`paths`), each tagged with (file, line): one per key, across
/// the files.
fn dedupe<T: PartialEq, K: Eq + Hash + Clone>(
    paths: &[PathBuf],
    rows: Vec<((usize, usize), T)>,
    key: impl Fn(&T) -> K,
    describe: impl Fn(&K) -> String,
) -> Result<Vec<T>> {
    let mut first: HashMap<K, (usize, (usize, usize))> = HashMap::with_capacity(rows.len());
    let mut kept: Vec<T> = Vec::with_capacity(rows.len());
    let mut dropped: Vec<K> = Vec::new();
    let mut dropped_in: BTreeSet<usize> = BTreeSet::new();
    for (at_line, r) in rows {
        let k = key(&r);
        match first.get(&k) {
            Some(&(at, first_at)) => {
                if kept[at] != r {
                    let (f1, l1) = first_at;
                    let (f2, l2) = at_line;
                    let place = if f1 == f2 {
                        format!(
                            "{}: {} appears twice with different contents (lines {l1} and {l2})",
                            paths[f1].display(),
                            describe(&k)
                        )
                    } else {
                        format!(
                            "{} appears twice with different contents ({}:{l1} and {}:{l2})",
                            describe(&k),
                            paths[f1].display(),
                            paths[f2].display()
                        )
                    };
                    bail!("{place}; a run holds one per key, and nothing says which is right");
                }
                dropped_in.insert(at_line.0);
                dropped.push(k);
            }
            None => {
                first.insert(k, (kept.len(), at_line));
                kept.push(r);
            }
        }
    }
    if let Some(k) = dropped.first() {
        let files: Vec<String> = dropped_in.iter().map(|&f| paths[f].display().to_string()).collect();
        eprintln!(
            "icet: {}: {} rows are exact copies of earlier ones (e.g. {}), written by two processes at once \
             (an icet without the run lock); each is counted once",
            files.join(", "),
            dropped.len(),
            describe(k)
        );
    }
    Ok(kept)
}

fn describe_answer(k: &AnswerKey) -> String {
    format!("the answer of `{}` at layer {}", k.id, k.layer)
}

fn score_key(r: &ScoreRow) -> (String, String, usize) {
    (r.judge.clone(), r.id.clone(), r.layer)
}

fn describe_score(k: &(String, String, usize)) -> String {
    format!("judge {}'s score of `{}` at layer {}", k.0, k.1, k.2)
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

    /// Issue 14, finding 3: a full disk cut a line inside a multi-byte character, and every reader
    /// failed on "stream did not contain valid UTF-8". The tail is repaired byte by byte.
    #[test]
    fn a_tail_torn_inside_a_utf8_character_is_repaired() {
        let d = scratch("torn-utf8");
        let p = d.join("rows.jsonl");
        let mut bytes = b"{\"a\": 1, \"s\": \"\xc3\xa9\"}\n".to_vec();
        bytes.extend_from_slice(&"{\"a\": 2, \"s\": \"画".as_bytes()[..17]); // cut inside 画 (3 bytes)
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_jsonl::<Row>(&p, false).unwrap(), vec![Row { a: 1 }]);
        assert_eq!(read_jsonl::<Row>(&p, true).unwrap(), vec![Row { a: 1 }]);
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\": 1, \"s\": \"\xc3\xa9\"}\n");
        // A complete line that is not UTF-8 is no tear: an error naming it, never cut.
        let bad = b"{\"a\": 1}\n{\"a\": \xff}\n";
        std::fs::write(&p, bad).unwrap();
        let e = read_jsonl::<Row>(&p, true).unwrap_err().to_string();
        assert!(e.contains("rows.jsonl:2: not a valid row"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), bad, "nothing cut");
    }

    fn answer(id: &str, layer: usize, response: &str) -> ResponseRow {
        ResponseRow {
            id: id.into(),
            layer,
            prompt: "p".into(),
            image: "i.png".into(),
            image_path: None,
            response: response.into(),
            token_ids: vec![1],
            finish_reason: "eos".into(),
            refusal: false,
            inputs: None,
        }
    }

    /// Issue 14, finding 1: two writers of an older icet wrote every answer twice, and readers
    /// counted both. Readers keep one of identical copies (and say so) and refuse differing ones.
    #[test]
    fn readers_keep_one_row_per_key() {
        let run = RunDir::open(&scratch("dedupe"));
        let line = |r: &ResponseRow| serde_json::to_string(r).unwrap() + "\n";
        let (a, b) = (answer("x", 1, "hi"), answer("x", 2, "ho"));
        std::fs::write(run.path(RESPONSES), [line(&a), line(&b), line(&a), line(&b)].concat()).unwrap();
        assert_eq!(run.responses().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(run.responses_for_resume().unwrap().len(), 2);
        std::fs::write(run.path(RESPONSES), [line(&a), line(&b), line(&answer("x", 1, "other"))].concat()).unwrap();
        let e = run.responses().unwrap_err().to_string();
        assert!(
            e.contains("the answer of `x` at layer 1 appears twice with different contents (lines 1 and 3)"),
            "{e}"
        );
        let score = |judge: &str, s: f64| ScoreRow {
            id: "x".into(),
            layer: 1,
            judge: judge.into(),
            kind: JudgeKind::Reward,
            unsafe_: None,
            categories: vec![],
            score: Some(s),
            raw: serde_json::Value::Null,
        };
        let l = |r: &ScoreRow| serde_json::to_string(r).unwrap() + "\n";
        std::fs::write(run.path(SCORES), [l(&score("rm", 1.0)), l(&score("rm2", 2.0)), l(&score("rm", 1.0))].concat())
            .unwrap();
        assert_eq!(run.scores().unwrap().len(), 2);
        std::fs::write(run.path(SCORES), [l(&score("rm", 1.0)), l(&score("rm", 3.0))].concat()).unwrap();
        assert!(run.scores().unwrap_err().to_string().contains("judge rm's score of `x` at layer 1"));
    }

    /// Issue 14, finding 1: one writer per file, "in use by pid N" for the next; the kernel
    /// releases the lock with its holder, and a record left behind only says it did not finish.
    #[test]
    fn a_run_has_one_writer_at_a_time() {
        let (run, lock) = RunDir::create(&scratch("lock")).unwrap();
        let e = RunDir::create(run.root()).unwrap_err().to_string();
        assert!(e.contains(&format!("in use by pid {} on ", std::process::id())), "{e}");
        assert!(e.contains("another icet is writing its responses.jsonl"), "{e}");
        // Another file of the run has its own writer.
        let scores = run.lock(SCORES).unwrap();
        assert!(run.lock(SCORES).is_err());
        drop(scores);
        drop(lock);
        assert_eq!(std::fs::read(run.path(".responses.jsonl.lock")).unwrap(), b"", "a clean end empties the record");
        let (_, lock) = RunDir::create(run.root()).expect("free again");
        drop(lock);
        // A record left by a writer that was killed: the lock itself is free.
        let stale = LockHolder { pid: 999_999_999, host: host_name(), started: "then".into(), command: vec![] };
        std::fs::write(run.path(".responses.jsonl.lock"), serde_json::to_string(&stale).unwrap()).unwrap();
        let (_, _lock) = RunDir::create(run.root()).expect("a dead writer's record does not block");
    }

    /// Issue 14, finding 7: somebody's folder is not taken for a run.
    #[test]
    fn a_folder_with_files_but_no_manifest_is_refused() {
        let d = scratch("foreign");
        std::fs::write(d.join("responses.jsonl"), "{\"mine\": 1}\n{\"mine\": 2}").unwrap();
        std::fs::write(d.join("summary.csv"), "a,b\n").unwrap();
        let e = RunDir::create(&d).unwrap_err().to_string();
        assert!(
            e.contains("not an icet run (no manifest.json) and not empty (`responses.jsonl`, `summary.csv`)"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(d.join("responses.jsonl")).unwrap(), "{\"mine\": 1}\n{\"mine\": 2}");
        // What an icet interrupted before its manifest leaves does not count.
        let d = scratch("own-leftovers");
        std::fs::write(d.join(".responses.jsonl.lock"), "").unwrap();
        std::fs::write(d.join(".manifest.json.tmp-12"), "{\"form").unwrap();
        RunDir::create(&d).expect("only icet's own files");
    }

    fn manifest(settings: serde_json::Value) -> Manifest {
        let model_files = [("config.json".to_string(), "sha256:1".to_string())].into();
        Manifest {
            format: MANIFEST_FORMAT,
            settings,
            model_files,
            precision: "f32".into(),
            backend: "cpu".into(),
            ..Manifest::default()
        }
    }

    /// Issue 14, findings 3 and 11: the manifest is written once (atomically) and every later
    /// command is logged; a run resumes only under its settings (the differing key named), its
    /// model files and its precision.
    #[test]
    fn a_run_resumes_only_as_it_was_made_and_logs_every_command() {
        let (run, _lock) = RunDir::create(&scratch("manifest")).unwrap();
        let m = manifest(serde_json::json!({"layers": [1, 2], "seed": 0}));
        let me = Invocation::now("cpu", RESPONSES);
        run.start(&m, &me).unwrap();
        let written = std::fs::read(run.path(MANIFEST)).unwrap();
        run.start(&Manifest { command: vec!["later".into()], ..m.clone() }, &me).unwrap();
        assert_eq!(std::fs::read(run.path(MANIFEST)).unwrap(), written, "never rewritten");
        assert_eq!(run.invocations().unwrap().len(), 2, "each command logged");
        assert!(std::fs::read_dir(run.root()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));

        let other = manifest(serde_json::json!({"layers": [1], "seed": 0}));
        let e = run.check_resume(&other, false).unwrap_err().to_string();
        assert!(e.contains("holds a run with other settings (`layers` is [1,2] in the run, [1] now)"), "{e}");
        let e = run.start(&manifest(serde_json::json!({"layers": [1, 2]})), &me).unwrap_err().to_string();
        assert!(e.contains("`seed` is 0 in the run, not set now"), "{e}");
        assert_eq!(run.invocations().unwrap().len(), 2, "a refused command is not logged");

        let mut moved = m.clone();
        moved.model_files.insert("config.json".into(), "sha256:2".into());
        moved.model_files.insert("model.safetensors".into(), "sha256-sampled:3".into());
        let e = run.check_resume(&moved, false).unwrap_err().to_string();
        assert!(
            e.contains(
                "the model's files changed since this run began (`config.json` differs, `model.safetensors` is new)"
            ),
            "{e}"
        );

        let bf16 = Manifest { precision: "bf16".into(), backend: "cuda-bf16".into(), ..m.clone() };
        let e = run.check_resume(&bf16, false).unwrap_err().to_string();
        assert!(
            e.contains("made in f32 (cpu), this command would add bf16 ones (cuda-bf16); give --allow-mixed-precision"),
            "{e}"
        );
        run.check_resume(&bf16, true).expect("mixing asked for");
        // A run of an older icet: precision from its backend, model files not checked.
        std::fs::write(
            run.path(MANIFEST),
            serde_json::json!({"settings": {"layers": [1, 2], "seed": 0}, "backend": "cuda-f16"}).to_string(),
        )
        .unwrap();
        assert!(run.check_resume(&moved, false).unwrap_err().to_string().contains("made in f16"));
        run.check_resume(&Manifest { precision: "f16".into(), ..moved }, false).expect("old run, same precision");

        let id = |d: &str| serde_json::json!({"kind": "reward", "dir": d});
        run.bind_judges(&[("rm".into(), id("/a"))]).unwrap();
        run.bind_judges(&[("rm".into(), id("/a")), ("tox".into(), id("/b"))]).unwrap();
        let e = run.bind_judges(&[("rm".into(), id("/c"))]).unwrap_err().to_string();
        assert!(e.contains("judges.json") && e.contains("another name"), "{e}");
    }

    /// Issue 13: a run made in shards is resumed only by shards of the same N whose data gives the
    /// same split; each shard writes and resumes its own file, and readers read them all as one.
    #[test]
    fn shards_of_a_run_must_split_it_alike_and_are_read_as_one() {
        let row = |id: &str, image: &str| crate::data::DataRow {
            id: id.into(),
            prompt: "p".into(),
            image: image.into(),
            image_path: PathBuf::from(image),
        };
        let rows = vec![row("a", "x.png"), row("b", "y.png"), row("c", "x.png")];
        let plan = |rows: &[crate::data::DataRow], n| ShardPlan::new(rows, &[1, 2], n, RESPONSES);
        let with = |plan: ShardPlan| Manifest {
            shards: Some(plan.clone()),
            ..manifest(serde_json::json!({"layers": [1, 2], "shards": plan.count}))
        };
        let d = scratch("shards");
        let (run, _lock) = RunDir::create_for(&d, Some(Shard::new(0, 2).unwrap())).unwrap();
        assert_eq!(run.answers_file(), "responses.shard-0-of-2.jsonl");
        assert_eq!(run.scores_file(), "scores.shard-0-of-2.jsonl");
        run.start(&with(plan(&rows, 2)), &Invocation::now("cpu", &run.answers_file())).unwrap();
        // Another shard of the run has its own lock; the same shard is refused.
        let (other, _other_lock) = RunDir::create_for(&d, Some(Shard::new(1, 2).unwrap())).expect("its own file");
        let e = RunDir::create_for(&d, Some(Shard::new(0, 2).unwrap())).unwrap_err().to_string();
        assert!(e.contains("another icet is writing its responses.shard-0-of-2.jsonl"), "{e}");
        let e = other.check_resume(&with(plan(&rows, 3)), false).unwrap_err().to_string();
        assert!(e.contains("`shards` is 2 in the run, 3 now"), "{e}");
        let mut more = rows.clone();
        more.push(row("d", "z.png"));
        let e = other.check_resume(&with(plan(&more, 2)), false).unwrap_err().to_string();
        assert!(e.contains("holds a run made in 2 shards") && e.contains("1 data rows are new (`d`)"), "{e}");
        other.check_resume(&with(plan(&rows, 2)), false).expect("the same split");

        // Each writes its own file; readers read both, in key order, and say what is owed.
        let line = |r: &ResponseRow| serde_json::to_string(r).unwrap() + "\n";
        std::fs::write(run.path("responses.shard-0-of-2.jsonl"), line(&answer("c", 2, "x"))).unwrap();
        std::fs::write(
            run.path("responses.shard-1-of-2.jsonl"),
            [line(&answer("b", 1, "y")), "{\"id\": \"b".into()].concat(),
        )
        .unwrap();
        let all = run.answers().unwrap();
        assert_eq!(all.rows.iter().map(|r| (r.id.as_str(), r.layer)).collect::<Vec<_>>(), [("b", 1), ("c", 2)]);
        assert_eq!(other.responses_for_resume().unwrap().len(), 1, "its own file, the torn tail cut");
        assert!(std::fs::read_to_string(run.path("responses.shard-1-of-2.jsonl")).unwrap().ends_with('\n'));
        let status = run.shard_status(&all).unwrap().unwrap();
        assert_eq!(status.iter().map(|s| (s.expected, s.done)).collect::<Vec<_>>(), [(4, 1), (2, 1)]);
        // The same answer in two shards' files: identical copies are one, differing ones refused.
        std::fs::write(run.path("responses.shard-1-of-2.jsonl"), line(&answer("c", 2, "other"))).unwrap();
        let e = run.responses().unwrap_err().to_string();
        assert!(e.contains("the answer of `c` at layer 2 appears twice with different contents"), "{e}");
        assert!(
            e.contains("responses.shard-0-of-2.jsonl:1 and ") && e.contains("responses.shard-1-of-2.jsonl:1"),
            "{e}"
        );
    }

    /// Issue 14, finding 2: an answer is kept only while its row's inputs are what it was made from.
    #[test]
    fn answers_made_from_other_inputs_are_refused_naming_the_rows() {
        let inputs = |p: &str, i: &str| RowInputs { prompt: p.into(), image: i.into() };
        let mut a = answer("a", 1, "x");
        a.inputs = Some(inputs("P", "I"));
        let mut b = answer("b", 2, "y");
        b.inputs = Some(inputs("P", "I"));
        let old = answer("c", 1, "z"); // an older icet's answer: no fingerprints
        let rows = |pa: &str, ib: &str, pc: &'static str| {
            HashMap::from([
                ("a", RowSource { prompt: "p", image: "i.png", inputs: inputs(pa, "I") }),
                ("b", RowSource { prompt: "p", image: "i.png", inputs: inputs("P", ib) }),
                ("c", RowSource { prompt: pc, image: "i.png", inputs: inputs("?", "?") }),
            ])
        };
        let answers = [a, b, old];
        let path = Path::new("run/responses.jsonl");
        Resume::check_inputs(&answers, &rows("P", "I", "p"), path).expect("unchanged");
        let e = Resume::check_inputs(&answers, &rows("P2", "I2", "p2"), path).unwrap_err().to_string();
        assert!(e.contains("3 data rows changed since their answers were made"), "{e}");
        assert!(e.contains("`a` (prompt changed; answers at layers 1)") && e.contains("`b` (image changed"), "{e}");
        assert!(e.contains("`c` (prompt changed"), "{e}");
        assert!(Resume::check_inputs(&answers, &HashMap::new(), path).is_ok(), "rows no longer in the data");
    }

    #[test]
    fn times_and_precisions() {
        let t = utc_now();
        assert_eq!((t.len(), &t[4..5], &t[10..11], &t[19..]), (20, "-", "T", "Z"), "{t}");
        assert!(t.as_str() > "2024");
        assert_eq!(precision_of("cpu"), "f32");
        assert_eq!(precision_of("cuda-bf16"), "bf16");
        assert_eq!(precision_of("cuda-f32"), "f32");
    }
}
