//! `icet slurm`: a sweep as a Slurm job array — one task per GPU (`--gres=gpu:1`), task K running
//! shard K of N (`icet sweep … --shard auto/N`, [`crate::shard`]) into one run directory on a
//! shared filesystem — and, if asked, the jobs that wait for it (`--dependency=afterok`): an
//! `icet score` array of the same N shards, then `icet report`.
//!
//! The scripts are written into the run (`slurm/sweep.sbatch`, `score.sbatch`, `report.sbatch`,
//! and `submit.sh`, which submits them chained); the tasks' logs go to `logs/` there
//! (`sweep-JOB_TASK.log`; Slurm does not make folders, so they are made now). Nothing
//! site-specific is written: partition, account, time limit and any other `#SBATCH` line come
//! from the command line.
//!
//! Resubmitting is the same command again: a run that exists is looked at first, and only the
//! shards that still owe answers are submitted (`--array=1,3`); each resumes from its own file.
//! A dependent job whose dependency failed (a task cancelled or crashed) is cancelled by Slurm
//! (`--kill-on-invalid-dep=yes`) instead of waiting forever; the resubmission brings new ones.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run_dir::{write_atomically, RunDir, LOGS_DIR, SLURM_DIR};
use crate::shard::describe_incomplete;

/// What `icet slurm` writes.
#[derive(Clone, Debug, Default)]
pub struct SlurmRequest {
    /// The `icet` binary the tasks run (absolute).
    pub exe: PathBuf,
    /// The sweep's arguments (after `icet sweep`), `--out` among them.
    pub sweep_args: Vec<String>,
    /// The run directory (absolute).
    pub out: PathBuf,
    /// The tasks' working folder (absolute): relative paths in the arguments are read from it.
    pub workdir: PathBuf,
    /// Tasks of the array: the run's shards.
    pub shards: usize,
    pub job_name: String,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// `--time` of every job (Slurm's formats: `MINUTES`, `HH:MM:SS`, `D-HH`...).
    pub time: Option<String>,
    /// `--gres` of a sweep or score task (`gpu:1`; `gpu:a100:1` where GPUs are typed).
    pub gres: String,
    /// `--requeue`: Slurm may requeue a preempted task (it resumes its shard).
    pub requeue: bool,
    /// More `#SBATCH` options for every job, as given (`--qos=high`, `--constraint=a100`).
    pub extra: Vec<String>,
    /// Judges (`--judge` specs) of a dependent `icet score` array; none: no score job.
    pub score_judges: Vec<String>,
    /// More arguments of `icet score` (`--device`, ...).
    pub score_args: Vec<String>,
    /// A dependent `icet report` job.
    pub report: bool,
}

/// The job scripts of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Scripts {
    pub sweep: String,
    pub score: Option<String>,
    pub report: Option<String>,
    pub submit: String,
}

/// Where [`write_scripts`] put them.
#[derive(Clone, Debug)]
pub struct ScriptFiles {
    pub sweep: PathBuf,
    pub score: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub submit: PathBuf,
}

/// The jobs [`submit`] submitted (job ids).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Submitted {
    /// The sweep array, and the shards (task ids) it runs; `None` when no shard owed answers.
    pub sweep: Option<(String, Vec<usize>)>,
    pub score: Option<String>,
    pub report: Option<String>,
}

/// A word for a POSIX shell, single-quoted unless it needs no quoting.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `0-3`, or `1,3` (Slurm's `--array` of these task ids).
pub fn array_spec(tasks: &[usize]) -> String {
    let contiguous = tasks.windows(2).all(|w| w[1] == w[0] + 1);
    match (tasks.first(), tasks.last()) {
        (Some(a), Some(b)) if contiguous && a != b => format!("{a}-{b}"),
        _ => tasks.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","),
    }
}

/// A path Slurm's `#SBATCH` lines can hold as it is.
fn sbatch_path(p: &Path, what: &str) -> Result<String> {
    let s = p.to_string_lossy().into_owned();
    if s.chars().any(|c| c.is_whitespace() || c == '%' || c == '"' || c == '\'') {
        bail!("{}: {what} holds a space, quote or `%`, which an #SBATCH line cannot carry; use another folder", s);
    }
    Ok(s)
}

impl SlurmRequest {
    /// The `#SBATCH` lines every job gets: name, working folder, log, partition, account, time,
    /// the extra lines.
    fn common(&self, name: &str, log: &str) -> Result<String> {
        let mut s = String::new();
        let _ = writeln!(s, "#SBATCH --job-name={name}");
        let _ = writeln!(s, "#SBATCH --chdir={}", sbatch_path(&self.workdir, "the working folder")?);
        let logs = sbatch_path(&self.out.join(LOGS_DIR), "the run folder")?;
        let _ = writeln!(s, "#SBATCH --output={logs}/{log}");
        // A requeued task (same job and task id) appends to its log instead of replacing it.
        let _ = writeln!(s, "#SBATCH --open-mode=append");
        for (flag, value) in [("partition", &self.partition), ("account", &self.account), ("time", &self.time)] {
            if let Some(v) = value {
                let _ = writeln!(s, "#SBATCH --{flag}={v}");
            }
        }
        for line in &self.extra {
            let line = line.trim();
            let line = line.strip_prefix("#SBATCH").map(str::trim).unwrap_or(line);
            let _ = writeln!(s, "#SBATCH {line}");
        }
        Ok(s)
    }

    fn icet(&self, args: &[String]) -> String {
        let words: Vec<String> =
            std::iter::once(self.exe.to_string_lossy().into_owned()).chain(args.iter().cloned()).collect();
        words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    }

    /// The scripts (see the module documentation).
    pub fn scripts(&self) -> Result<Scripts> {
        if self.shards == 0 {
            bail!("--shards: at least 1");
        }
        for line in &self.extra {
            if line.contains('\n') {
                bail!("--sbatch `{line}`: one #SBATCH option per --sbatch, without line breaks");
            }
        }
        let n = self.shards;
        let last = n - 1;
        let version = env!("CARGO_PKG_VERSION");
        let out = self.out.display();
        let here = self.out.join(SLURM_DIR);
        let here = here.display();
        let task_line = |what: &str| {
            format!(
                "echo \"icet: $(date -u +%Y-%m-%dT%H:%M:%SZ) {what} shard ${{SLURM_ARRAY_TASK_ID}}/{n} of job \
                 ${{SLURM_ARRAY_JOB_ID}} on $(uname -n), CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}}\" >&2\n"
            )
        };

        let mut sweep = String::from("#!/bin/bash\n");
        let _ =
            writeln!(sweep, "# icet sweep into {out} as a Slurm job array: task K makes shard K of {n} (by image),");
        let _ = writeln!(sweep, "# into {out}/responses.shard-K-of-{n}.jsonl. Written by icet slurm (icet {version}).");
        let _ = writeln!(sweep, "# Submit: sbatch {here}/sweep.sbatch   (with the jobs after it: sh {here}/submit.sh)");
        let _ = writeln!(
            sweep,
            "# Rerun tasks that did not finish (each resumes its shard): sbatch --array=K[,K...] {here}/sweep.sbatch,"
        );
        let _ = writeln!(sweep, "# or rerun `icet slurm ... --submit`: it submits the shards that still owe answers.");
        sweep += &self.common(&self.job_name, "sweep-%A_%a.log")?;
        let _ = writeln!(sweep, "#SBATCH --array=0-{last}");
        let _ = writeln!(sweep, "#SBATCH --ntasks=1");
        let _ = writeln!(sweep, "#SBATCH --gres={}", self.gres);
        if self.requeue {
            let _ = writeln!(sweep, "#SBATCH --requeue");
        }
        sweep += "set -eu\n";
        sweep += &task_line("sweep");
        let mut args = vec!["sweep".to_string()];
        args.extend(self.sweep_args.iter().cloned());
        args.extend(["--shard".into(), format!("auto/{n}")]);
        let _ = writeln!(sweep, "exec {}", self.icet(&args));

        let score = (!self.score_judges.is_empty())
            .then(|| -> Result<String> {
                let mut s = String::from("#!/bin/bash\n");
                let _ = writeln!(s, "# icet score of {out}, shard K of {n} per task; submitted to run after the sweep");
                let _ =
                    writeln!(s, "# (sbatch --dependency=afterok:SWEEP_JOB). Written by icet slurm (icet {version}).");
                s += &self.common(&format!("{}-score", self.job_name), "score-%A_%a.log")?;
                let _ = writeln!(s, "#SBATCH --array=0-{last}");
                let _ = writeln!(s, "#SBATCH --ntasks=1");
                let _ = writeln!(s, "#SBATCH --gres={}", self.gres);
                let _ = writeln!(s, "#SBATCH --kill-on-invalid-dep=yes");
                if self.requeue {
                    let _ = writeln!(s, "#SBATCH --requeue");
                }
                s += "set -eu\n";
                s += &task_line("score");
                let mut args = vec!["score".to_string(), self.out.to_string_lossy().into_owned()];
                args.extend(["--shard".into(), format!("auto/{n}")]);
                for j in &self.score_judges {
                    args.extend(["--judge".into(), j.clone()]);
                }
                args.extend(self.score_args.iter().cloned());
                let _ = writeln!(s, "exec {}", self.icet(&args));
                Ok(s)
            })
            .transpose()?;

        let report = (self.report || score.is_some())
            .then(|| -> Result<String> {
                let mut s = String::from("#!/bin/bash\n");
                let _ = writeln!(
                    s,
                    "# icet report of {out}, after the sweep (and scores). Written by icet slurm (icet {version})."
                );
                s += &self.common(&format!("{}-report", self.job_name), "report-%j.log")?;
                let _ = writeln!(s, "#SBATCH --ntasks=1");
                let _ = writeln!(s, "#SBATCH --kill-on-invalid-dep=yes");
                s += "set -eu\n";
                let _ = writeln!(s, "exec {}", self.icet(&["report".into(), self.out.to_string_lossy().into_owned()]));
                Ok(s)
            })
            .transpose()?;

        let mut submit = String::from("#!/bin/sh\n");
        let _ = writeln!(submit, "# Submits the sweep of {out} and the jobs that wait for it. Written by icet slurm.");
        let _ = writeln!(
            submit,
            "# Options go to the sweep's sbatch, e.g. sh submit.sh --array=1,3 (rerun tasks 1 and 3)."
        );
        submit += "set -eu\nhere=$(dirname \"$0\")\n";
        submit += "sweep=$(sbatch --parsable \"$@\" \"$here/sweep.sbatch\"); sweep=${sweep%%;*}\n";
        submit += "echo \"sweep: job $sweep\"\n";
        let mut after = "$sweep";
        if score.is_some() {
            submit +=
                "score=$(sbatch --parsable --dependency=afterok:$sweep \"$here/score.sbatch\"); score=${score%%;*}\n";
            submit += "echo \"score: job $score (after $sweep)\"\n";
            after = "$score";
        }
        if report.is_some() {
            let _ = writeln!(
                submit,
                "report=$(sbatch --parsable --dependency=afterok:{after} \"$here/report.sbatch\"); report=${{report%%;*}}"
            );
            let _ = writeln!(submit, "echo \"report: job $report (after {after})\"");
        }
        Ok(Scripts { sweep, score, report, submit })
    }
}

/// Writes the scripts into the run's `slurm/` (each replaced atomically) and makes its `logs/`.
/// A folder that is somebody else's is refused first, and so is a run made in another number of
/// shards.
pub fn write_scripts(req: &SlurmRequest, scripts: &Scripts) -> Result<ScriptFiles> {
    RunDir::refuse_foreign(&req.out)?;
    if let Some(m) = RunDir::open(&req.out).manifest()? {
        match m.shards {
            Some(p) if p.count == req.shards => {}
            Some(p) => bail!(
                "{}: holds a run made in {} shards; give --shards {} to go on with it, or another --out",
                req.out.display(),
                p.count,
                p.count
            ),
            None => bail!(
                "{}: holds a run made in one piece (not in shards); resume it with icet sweep, or use another --out",
                req.out.display()
            ),
        }
    }
    let dir = req.out.join(SLURM_DIR);
    for d in [&dir, &req.out.join(LOGS_DIR)] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let put = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        write_atomically(&p, text.as_bytes())?;
        Ok(p)
    };
    Ok(ScriptFiles {
        sweep: put("sweep.sbatch", &scripts.sweep)?,
        score: scripts.score.as_deref().map(|s| put("score.sbatch", s)).transpose()?,
        report: scripts.report.as_deref().map(|s| put("report.sbatch", s)).transpose()?,
        submit: put("submit.sh", &scripts.submit)?,
    })
}

/// The shards of the run in `out` that still owe answers (all `n` of a run not started yet).
pub fn owing_shards(out: &Path, n: usize) -> Result<Vec<usize>> {
    let run = RunDir::open(out);
    if run.manifest()?.is_none() {
        return Ok((0..n).collect());
    }
    let answers = run.answers()?;
    let status = run.shard_status(&answers)?.unwrap_or_default();
    if let Some(note) = describe_incomplete(&status) {
        eprintln!("icet: {}: {note}", out.display());
    }
    Ok(status.iter().filter(|s| s.owed() > 0).map(|s| s.shard).collect())
}

/// `sbatch --parsable ARGS SCRIPT`: the job id.
fn sbatch(args: &[String], script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .context("cannot run sbatch (is Slurm installed here, and on PATH?)")?;
    if !out.status.success() {
        let e = String::from_utf8_lossy(&out.stderr);
        bail!("sbatch {}: {}", script.display(), e.trim().lines().last().unwrap_or("failed"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch {}: no job id in its answer `{}`", script.display(), text.trim());
    }
    Ok(id)
}

/// Submits the sweep array for the shards in `tasks` (none: no sweep job) and the jobs after it.
pub fn submit(files: &ScriptFiles, tasks: &[usize]) -> Result<Submitted> {
    let mut done = Submitted::default();
    let mut after: Option<String> = None;
    if !tasks.is_empty() {
        let id = sbatch(&[format!("--array={}", array_spec(tasks))], &files.sweep)?;
        after = Some(id.clone());
        done.sweep = Some((id, tasks.to_vec()));
    }
    let dependency =
        |after: &Option<String>| after.iter().map(|a| format!("--dependency=afterok:{a}")).collect::<Vec<_>>();
    if let Some(score) = &files.score {
        let id = sbatch(&dependency(&after), score)?;
        after = Some(id.clone());
        done.score = Some(id);
    }
    if let Some(report) = &files.report {
        done.report = Some(sbatch(&dependency(&after), report)?);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SlurmRequest {
        SlurmRequest {
            exe: "/opt/icet/bin/icet".into(),
            sweep_args: vec!["--model".into(), "llava 7b".into(), "--out".into(), "runs/rt".into()],
            out: "/scratch/me/runs/rt".into(),
            workdir: "/scratch/me".into(),
            shards: 4,
            job_name: "icet-rt".into(),
            gres: "gpu:1".into(),
            requeue: true,
            ..SlurmRequest::default()
        }
    }

    fn sbatch_lines(script: &str) -> Vec<&str> {
        // sbatch reads #SBATCH lines up to the first command.
        script.lines().take_while(|l| l.starts_with('#')).filter(|l| l.starts_with("#SBATCH")).collect()
    }

    #[test]
    fn the_sweep_is_an_array_of_shards_with_a_gpu_each() {
        let s = request().scripts().unwrap();
        assert_eq!(
            sbatch_lines(&s.sweep),
            [
                "#SBATCH --job-name=icet-rt",
                "#SBATCH --chdir=/scratch/me",
                "#SBATCH --output=/scratch/me/runs/rt/logs/sweep-%A_%a.log",
                "#SBATCH --open-mode=append",
                "#SBATCH --array=0-3",
                "#SBATCH --ntasks=1",
                "#SBATCH --gres=gpu:1",
                "#SBATCH --requeue",
            ]
        );
        assert!(s.sweep.starts_with("#!/bin/bash\n"));
        let exec = s.sweep.lines().last().unwrap();
        assert_eq!(exec, "exec /opt/icet/bin/icet sweep --model 'llava 7b' --out runs/rt --shard auto/4");
        assert_eq!((s.score.as_ref(), s.report.as_ref()), (None, None));
        assert!(!s.submit.contains("score") && !s.submit.contains("report"));
    }

    #[test]
    fn site_options_and_dependent_jobs() {
        let mut r = request();
        r.partition = Some("gpu".into());
        r.account = Some("lab42".into());
        r.time = Some("04:00:00".into());
        r.extra = vec!["--qos=high".into(), "#SBATCH --constraint=a100".into()];
        r.score_judges = vec!["llama-guard=/models/Llama Guard 3".into()];
        r.score_args = vec!["--device".into(), "cuda".into()];
        let s = r.scripts().unwrap();
        let lines = sbatch_lines(&s.sweep);
        for want in [
            "#SBATCH --partition=gpu",
            "#SBATCH --account=lab42",
            "#SBATCH --time=04:00:00",
            "#SBATCH --qos=high",
            "#SBATCH --constraint=a100",
        ] {
            assert!(lines.contains(&want), "{want} in {lines:?}");
        }
        let score = s.score.unwrap();
        assert!(sbatch_lines(&score).contains(&"#SBATCH --kill-on-invalid-dep=yes"));
        assert!(sbatch_lines(&score).contains(&"#SBATCH --output=/scratch/me/runs/rt/logs/score-%A_%a.log"));
        assert!(sbatch_lines(&score).contains(&"#SBATCH --partition=gpu"));
        assert_eq!(
            score.lines().last().unwrap(),
            "exec /opt/icet/bin/icet score /scratch/me/runs/rt --shard auto/4 --judge 'llama-guard=/models/Llama Guard 3' \
             --device cuda"
        );
        let report = s.report.expect("a score job brings a report job");
        assert!(!report.contains("--gres"), "the report needs no GPU");
        assert_eq!(report.lines().last().unwrap(), "exec /opt/icet/bin/icet report /scratch/me/runs/rt");
        assert!(s.submit.contains("--dependency=afterok:$sweep \"$here/score.sbatch\""), "{}", s.submit);
        assert!(s.submit.contains("--dependency=afterok:$score \"$here/report.sbatch\""), "{}", s.submit);

        r.extra = vec!["--a\n#SBATCH --b".into()];
        assert!(r.scripts().is_err());
        r.extra.clear();
        r.out = "/scratch/my runs/rt".into();
        assert!(r.scripts().unwrap_err().to_string().contains("cannot carry"));
    }

    #[test]
    fn quoting_and_arrays() {
        assert_eq!(shell_quote("runs/rt-1"), "runs/rt-1");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[1, 3]), "1,3");
        assert_eq!(array_spec(&[2]), "2");
    }
}
