//! Shards: one run's (item, layer) grid split over processes — Slurm array tasks, `srun` tasks,
//! or `icet sweep --devices` workers — that write into one run directory and are read back as one
//! run.
//!
//! * **By image.** A shard owns whole images: one vision pass still serves every prompt and layer
//!   of an image. The images are dealt out largest first (by the answers they bring: rows × layers),
//!   each to the shard with the fewest answers so far (ties: the image seen first, the lowest
//!   shard), so the shards' answers differ by at most one image's. The partition depends only on
//!   the data rows, the layers and the number of shards — never on timing or on which process
//!   asks — so every shard of one command computes the same split ([`ShardPlan::new`]).
//! * **One file per shard.** Shard K of N appends its answers to `responses.shard-K-of-N.jsonl`
//!   (and its scores to `scores.shard-K-of-N.jsonl`) under its own lock; no two processes ever
//!   append to one file. The plan is recorded in the run's manifest, and `shards` (N) is one of the
//!   run's settings: a shard of another N, or one whose data gives another plan, is refused as a
//!   mismatched resume is.
//! * **Merging is reading.** Readers read every shard's file as one run; [`ShardPlan::status`]
//!   says which shards have not started or still owe answers, and how many.
//!
//! Shards count from 0, as Slurm's array task ids and `SLURM_PROCID` do: `--shard 0/4` .. `3/4`.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::DataRow;
use crate::run_dir::AnswerKey;

/// Shard `index` of `count` (0 <= index < count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 {
            bail!("a run has at least 1 shard");
        }
        if index >= count {
            bail!("there is no shard {index} of {count}: shards count from 0 (0..{})", count - 1);
        }
        Ok(Self { index, count })
    }

    /// The shard's own file of the run's `file` (`responses.jsonl` -> `responses.shard-1-of-4.jsonl`).
    pub fn file(&self, file: &str) -> String {
        shard_file(file, self.index, self.count)
    }
}

/// `responses.jsonl`, shard 1 of 4 -> `responses.shard-1-of-4.jsonl`.
pub fn shard_file(file: &str, index: usize, count: usize) -> String {
    let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
    format!("{stem}.shard-{index}-of-{count}.{ext}")
}

/// The shard of a file name made by [`shard_file`] from `file` (`None`: not a shard's file).
pub fn parse_shard_file(name: &str, file: &str) -> Option<Shard> {
    let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
    let rest = name.strip_prefix(stem)?.strip_prefix(".shard-")?.strip_suffix(ext)?.strip_suffix('.')?;
    let (k, n) = rest.split_once("-of-")?;
    let (index, count) = (k.parse().ok()?, n.parse().ok()?);
    // Only the canonical spelling (no leading zeros), so one shard has one file name.
    (shard_file(file, index, count) == name && index < count).then_some(Shard { index, count })
}

/// `--shard`: `K/N`, `auto` (K and N from Slurm), or `auto/N` (K from Slurm, N as given: what
/// `icet slurm`'s scripts say, so that a task resubmitted alone, `sbatch --array=2`, is still
/// shard 2 of N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardArg {
    Fixed(Shard),
    Auto { count: Option<usize> },
}

impl std::str::FromStr for ShardArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let number = |t: &str, what: &str| {
            t.trim().parse::<usize>().map_err(|_| format!("`{s}`: {what} `{t}` is not a number (K/N, auto or auto/N)"))
        };
        match s.split_once('/') {
            None if s == "auto" => Ok(Self::Auto { count: None }),
            None => Err(format!("`{s}` is not a shard: give K/N (shard K of N, from 0), auto or auto/N")),
            Some(("auto", n)) => {
                let count = number(n, "N")?;
                if count == 0 {
                    return Err(format!("`{s}`: a run has at least 1 shard"));
                }
                Ok(Self::Auto { count: Some(count) })
            }
            Some((k, n)) => Shard::new(number(k, "K")?, number(n, "N")?).map(Self::Fixed).map_err(|e| e.to_string()),
        }
    }
}

impl ShardArg {
    /// The shard this process is, reading Slurm's variables through `env` for `auto`:
    /// `SLURM_ARRAY_TASK_ID` (K) and `SLURM_ARRAY_TASK_COUNT` (N) in an array task, else
    /// `SLURM_PROCID` and `SLURM_NTASKS` (tasks of `srun`).
    pub fn resolve(self, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let count = match self {
            Self::Fixed(s) => return Ok(s),
            Self::Auto { count } => count,
        };
        let read = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) => match v.trim().parse() {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => bail!("--shard auto: {name}={v} is not a number"),
                },
            }
        };
        let (index, env_count, from) = if let Some(k) = read("SLURM_ARRAY_TASK_ID")? {
            (k, read("SLURM_ARRAY_TASK_COUNT")?, "SLURM_ARRAY_TASK_ID")
        } else if let Some(k) = read("SLURM_PROCID")? {
            (k, read("SLURM_NTASKS")?, "SLURM_PROCID")
        } else {
            bail!(
                "--shard auto: not inside a Slurm task (neither SLURM_ARRAY_TASK_ID nor SLURM_PROCID is set); \
                 give --shard K/N"
            );
        };
        let count = match (count, env_count) {
            (Some(n), _) => n,
            (None, Some(n)) => n,
            (None, None) => bail!("--shard auto: {from} is set but not the number of tasks; give --shard auto/N"),
        };
        if index >= count {
            bail!(
                "--shard auto: {from}={index} is not a shard of {count} (shards count from 0: submit the array \
                 as --array=0-{})",
                count.saturating_sub(1)
            );
        }
        Shard::new(index, count)
    }
}

/// One shard's part of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardWork {
    pub shard: usize,
    /// The shard's answers file.
    pub file: String,
    pub images: usize,
    /// Answers owed by the shard's rows (rows x layers; rows later left out by `--skip-invalid`
    /// are not owed).
    pub answers: usize,
    /// The data rows (ids) of the shard, in data order.
    pub ids: Vec<String>,
}

/// How a run's grid is split into shards: recorded in the manifest, the same for every shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub count: usize,
    /// What a shard owns whole (`image`).
    pub by: String,
    pub layers: Vec<usize>,
    pub shards: Vec<ShardWork>,
}

/// How far one shard of a run got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    pub shard: usize,
    pub count: usize,
    pub file: String,
    /// Answers the shard owes in all (rows left out by `--skip-invalid` aside).
    pub expected: usize,
    /// Of those, answers in its file.
    pub done: usize,
    /// Whether its answers file exists at all.
    pub started: bool,
}

impl ShardStatus {
    pub fn owed(&self) -> usize {
        self.expected - self.done
    }

    /// `shard 1/4 (responses.shard-1-of-4.jsonl) owes 5 of 14 answers` / `... has not started: owes 14 answers`.
    pub fn describe(&self) -> String {
        let who = format!("shard {}/{} ({})", self.shard, self.count, self.file);
        if self.started {
            format!("{who} owes {} of {} answers", self.owed(), self.expected)
        } else {
            format!("{who} has not started: owes {} answers", self.expected)
        }
    }
}

/// The shards that still owe answers, said in one line (`None`: the run is complete).
pub fn describe_incomplete(statuses: &[ShardStatus]) -> Option<String> {
    let owing: Vec<&ShardStatus> = statuses.iter().filter(|s| s.owed() > 0).collect();
    if owing.is_empty() {
        return None;
    }
    let owed: usize = owing.iter().map(|s| s.owed()).sum();
    let expected: usize = statuses.iter().map(|s| s.expected).sum();
    let list: Vec<String> = owing.iter().map(|s| s.describe()).collect();
    Some(format!(
        "the run is incomplete: {} of its {} shards still owe {owed} of {expected} answers ({})",
        owing.len(),
        statuses.len(),
        list.join("; ")
    ))
}

impl ShardPlan {
    /// The split of `rows` x `layers` into `count` shards by image (see the module documentation).
    /// Images are told apart by the file the row resolves to.
    pub fn new(rows: &[DataRow], layers: &[usize], count: usize, answers_file: &str) -> Self {
        // Images in the order of their first row, with their rows.
        let mut image_of: HashMap<&Path, usize> = HashMap::new();
        let mut images: Vec<Vec<usize>> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let k = *image_of.entry(r.image_path.as_path()).or_insert_with(|| {
                images.push(Vec::new());
                images.len() - 1
            });
            images[k].push(i);
        }
        let weights: Vec<usize> = images.iter().map(|rows| rows.len() * layers.len()).collect();
        let shard_of_image = deal(&weights, count);
        let mut shards: Vec<ShardWork> = (0..count)
            .map(|k| ShardWork {
                shard: k,
                file: shard_file(answers_file, k, count),
                images: 0,
                answers: 0,
                ids: Vec::new(),
            })
            .collect();
        for (image, &k) in shard_of_image.iter().enumerate() {
            shards[k].images += 1;
            shards[k].answers += weights[image];
        }
        // Each shard's rows in data order.
        let mut shard_of_row = vec![0; rows.len()];
        for (image, members) in images.iter().enumerate() {
            for &i in members {
                shard_of_row[i] = shard_of_image[image];
            }
        }
        for (i, r) in rows.iter().enumerate() {
            shards[shard_of_row[i]].ids.push(r.id.clone());
        }
        Self { count, by: "image".into(), layers: layers.to_vec(), shards }
    }

    /// The data rows (ids) of `shard`.
    pub fn ids(&self, shard: usize) -> HashSet<&str> {
        self.shards.get(shard).map(|w| w.ids.iter().map(String::as_str).collect()).unwrap_or_default()
    }

    /// Which shard owns each data row.
    pub fn shard_of(&self) -> HashMap<&str, usize> {
        self.shards.iter().flat_map(|w| w.ids.iter().map(move |id| (id.as_str(), w.shard))).collect()
    }

    /// Every (id, layer) the run owes, rows in `left_out` aside.
    pub fn grid(&self, left_out: &HashSet<String>) -> BTreeSet<(String, usize)> {
        self.shards
            .iter()
            .flat_map(|w| w.ids.iter())
            .filter(|id| !left_out.contains(*id))
            .flat_map(|id| self.layers.iter().map(move |&l| (id.clone(), l)))
            .collect()
    }

    /// How far each shard got: `answered` holds, per answers file name, the answers in it;
    /// `left_out` the rows left out by `--skip-invalid` (not owed).
    pub fn status(
        &self,
        answered: &HashMap<String, HashSet<AnswerKey>>,
        left_out: &HashSet<String>,
    ) -> Vec<ShardStatus> {
        self.shards
            .iter()
            .map(|w| {
                let in_file = answered.get(&w.file);
                let owed: Vec<&String> = w.ids.iter().filter(|id| !left_out.contains(*id)).collect();
                let expected = owed.len() * self.layers.len();
                let done = match in_file {
                    None => 0,
                    Some(keys) => owed
                        .iter()
                        .flat_map(|id| self.layers.iter().map(move |&l| AnswerKey { id: (*id).clone(), layer: l }))
                        .filter(|k| keys.contains(k))
                        .count(),
                };
                ShardStatus {
                    shard: w.shard,
                    count: self.count,
                    file: w.file.clone(),
                    expected,
                    done,
                    started: in_file.is_some(),
                }
            })
            .collect()
    }

    /// Why `other` (what this command computes) is not this plan (the run's), or `None`.
    pub fn difference(&self, other: &ShardPlan) -> Option<String> {
        if self == other {
            return None;
        }
        if self.count != other.count {
            return Some(format!("{} shards in the run, {} now", self.count, other.count));
        }
        let was: BTreeSet<&String> = self.shards.iter().flat_map(|w| &w.ids).collect();
        let now: BTreeSet<&String> = other.shards.iter().flat_map(|w| &w.ids).collect();
        let added: Vec<&&String> = now.difference(&was).collect();
        let removed: Vec<&&String> = was.difference(&now).collect();
        let show = |v: &[&&String]| v.iter().take(5).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
        let mut why = Vec::new();
        if !added.is_empty() {
            why.push(format!("{} data rows are new ({})", added.len(), show(&added)));
        }
        if !removed.is_empty() {
            why.push(format!("{} are gone ({})", removed.len(), show(&removed)));
        }
        if why.is_empty() {
            why.push("the data rows' images or order changed".into());
        }
        Some(format!("its data gives another split into shards: {}", why.join(", ")))
    }
}

/// Deals items of the given weights into `count` bins: heaviest first (ties: the earlier item),
/// each to the lightest bin so far (ties: the lower bin). The result: each item's bin.
pub fn deal(weights: &[usize], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(weights[i]), i));
    let mut load = vec![0usize; count.max(1)];
    let mut bin = vec![0; weights.len()];
    for i in order {
        let lightest = (0..load.len()).min_by_key(|&k| (load[k], k)).expect("at least one bin");
        load[lightest] += weights[i];
        bin[i] = lightest;
    }
    bin
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rows(images: &[&str]) -> Vec<DataRow> {
        images
            .iter()
            .enumerate()
            .map(|(i, im)| DataRow {
                id: format!("r{i}"),
                prompt: "p".into(),
                image: im.to_string(),
                image_path: PathBuf::from(format!("/data/{im}")),
            })
            .collect()
    }

    #[test]
    fn shard_specs_parse_and_auto_reads_slurm() {
        assert_eq!("1/4".parse(), Ok(ShardArg::Fixed(Shard { index: 1, count: 4 })));
        assert_eq!("auto".parse(), Ok(ShardArg::Auto { count: None }));
        assert_eq!("auto/8".parse(), Ok(ShardArg::Auto { count: Some(8) }));
        assert!("4/4".parse::<ShardArg>().unwrap_err().contains("no shard 4 of 4: shards count from 0 (0..3)"));
        assert!("x/4".parse::<ShardArg>().is_err() && "3".parse::<ShardArg>().is_err());
        assert!("0/0".parse::<ShardArg>().is_err() && "auto/0".parse::<ShardArg>().is_err());

        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let auto = ShardArg::Auto { count: None };
        let array = env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_PROCID", "0")]);
        assert_eq!(auto.resolve(array).unwrap(), Shard { index: 2, count: 4 }, "the array first");
        let srun = env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8")]);
        assert_eq!(auto.resolve(srun).unwrap(), Shard { index: 5, count: 8 });
        // A task resubmitted alone (`sbatch --array=2`) is an array of 1: auto/N keeps N.
        let alone = env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "1")]);
        assert!(auto.resolve(alone).unwrap_err().to_string().contains("SLURM_ARRAY_TASK_ID=2 is not a shard of 1"));
        assert_eq!(ShardArg::Auto { count: Some(4) }.resolve(alone).unwrap(), Shard { index: 2, count: 4 });
        let e = auto.resolve(env(&[])).unwrap_err().to_string();
        assert!(e.contains("not inside a Slurm task"), "{e}");
        assert_eq!(ShardArg::Fixed(Shard { index: 0, count: 2 }).resolve(env(&[])).unwrap().count, 2);
    }

    #[test]
    fn shard_files_are_named_and_recognised() {
        assert_eq!(shard_file("responses.jsonl", 1, 4), "responses.shard-1-of-4.jsonl");
        assert_eq!(
            parse_shard_file("responses.shard-1-of-4.jsonl", "responses.jsonl"),
            Some(Shard { index: 1, count: 4 })
        );
        for not in [
            "responses.jsonl",
            "responses.shard-4-of-4.jsonl",
            "responses.shard-01-of-4.jsonl",
            "scores.shard-1-of-4.jsonl",
        ] {
            assert_eq!(parse_shard_file(not, "responses.jsonl"), None, "{not}");
        }
    }

    /// Every image in exactly one shard with all its rows; every row once; the same split however
    /// often it is computed; the shards' answers within one image's of each other.
    #[test]
    fn the_partition_is_deterministic_complete_and_balanced() {
        // 10 images with 1..=10 rows each, interleaved.
        let mut names = Vec::new();
        for round in 0..10 {
            for im in 0..10 {
                if round <= im {
                    names.push(format!("img{im}.png"));
                }
            }
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let data = rows(&names);
        let layers = [1, 3, 5];
        for count in [1, 2, 3, 4, 7, 10, 13] {
            let plan = ShardPlan::new(&data, &layers, count, "responses.jsonl");
            assert_eq!(plan, ShardPlan::new(&data, &layers, count, "responses.jsonl"), "deterministic");
            assert_eq!(plan.shards.len(), count);
            let shard_of = plan.shard_of();
            assert_eq!(shard_of.len(), data.len(), "every row in one shard");
            for r in &data {
                let mut same_image = data.iter().filter(|o| o.image_path == r.image_path);
                assert!(same_image.all(|o| shard_of[o.id.as_str()] == shard_of[r.id.as_str()]), "an image is whole");
            }
            let answers: Vec<usize> = plan.shards.iter().map(|w| w.answers).collect();
            assert_eq!(answers.iter().sum::<usize>(), data.len() * layers.len());
            for w in &plan.shards {
                assert_eq!(w.answers, w.ids.len() * layers.len());
            }
            let (min, max) = (answers.iter().min().unwrap(), answers.iter().max().unwrap());
            // The heaviest image brings 30 answers: no shard is more than that above another.
            assert!(max - min <= 30, "{count} shards: {answers:?}");
            if count == 2 {
                assert_eq!(answers, [84, 81], "55 rows x 3 layers in two near-equal halves");
            }
            if count == 4 {
                // By hand: 30, 27, 24, 21 one each; 18 to the 21, 15 to the 24, 12 to the 27, 9 to
                // the 30 (all 39); 6 to shard 0, 3 to shard 1.
                assert_eq!(answers, [45, 42, 39, 39]);
            }
        }
        // More shards than images: the extra shards are empty, not an error.
        let plan = ShardPlan::new(&rows(&["a.png", "b.png"]), &[0], 3, "responses.jsonl");
        assert_eq!(plan.shards.iter().map(|w| w.answers).collect::<Vec<_>>(), [1, 1, 0]);
    }

    #[test]
    fn dealing_is_heaviest_first_to_the_lightest_bin() {
        assert_eq!(deal(&[5, 3, 3, 2, 1], 2), [0, 1, 1, 0, 1]);
        assert_eq!(deal(&[1, 1, 1, 1], 4), [0, 1, 2, 3]);
        assert_eq!(deal(&[], 3), Vec::<usize>::new());
    }

    #[test]
    fn status_counts_owed_answers_per_shard() {
        let data = rows(&["a.png", "a.png", "b.png", "c.png"]);
        let plan = ShardPlan::new(&data, &[1, 2], 3, "responses.jsonl");
        // a.png (4 answers) to shard 0, b to 1, c to 2.
        assert_eq!(plan.shards[0].ids, ["r0", "r1"]);
        let key = |id: &str, layer| AnswerKey { id: id.into(), layer };
        let answered = HashMap::from([
            (plan.shards[0].file.clone(), HashSet::from([key("r0", 1), key("r0", 2), key("r1", 1), key("r1", 2)])),
            (plan.shards[1].file.clone(), HashSet::from([key("r2", 1)])),
        ]);
        let status = plan.status(&answered, &HashSet::new());
        assert_eq!(
            status.iter().map(|s| (s.expected, s.done, s.started)).collect::<Vec<_>>(),
            [(4, 4, true), (2, 1, true), (2, 0, false)]
        );
        let said = describe_incomplete(&status).unwrap();
        assert!(said.contains("2 of its 3 shards still owe 3 of 8 answers"), "{said}");
        assert!(said.contains("shard 1/3 (responses.shard-1-of-3.jsonl) owes 1 of 2 answers"), "{said}");
        assert!(said.contains("shard 2/3 (responses.shard-2-of-3.jsonl) has not started: owes 2 answers"), "{said}");
        // A row left out by --skip-invalid is not owed.
        let status = plan.status(&answered, &HashSet::from(["r3".to_string()]));
        assert_eq!(status[2].expected, 0);
        assert_eq!(plan.grid(&HashSet::from(["r3".to_string()])).len(), 6);

        let mut more = data.clone();
        more.push(DataRow { id: "new".into(), ..data[0].clone() });
        let other = ShardPlan::new(&more, &[1, 2], 3, "responses.jsonl");
        assert!(plan.difference(&other).unwrap().contains("1 data rows are new (`new`)"));
        assert_eq!(plan.difference(&plan.clone()), None);
    }
}
