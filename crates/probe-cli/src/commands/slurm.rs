//! `icet slurm`.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser};
use icet_engine::slurm::{array_spec, owing_shards, submit, write_scripts, SlurmRequest};

#[derive(ClapArgs, Debug)]
#[command(
    after_help = "The sweep's arguments follow `--`, as for `icet sweep` (--out is required: the run folder, on a
filesystem every node sees). Writes into it slurm/sweep.sbatch (an array of --shards tasks, one
GPU each, task K running `icet sweep ... --shard auto/N`), with --score/--report the jobs that
wait for it (score.sbatch: an array of as many `icet score --shard` tasks; report.sbatch), and
slurm/submit.sh, which submits them chained with --dependency=afterok; the tasks log to logs/.
Prints the sweep's script; --submit submits them all. Nothing site-specific is assumed: give
--partition, --account, --time and any other option as --sbatch '--qos=high'.

A task that was cancelled, preempted or crashed leaves its shard incomplete: the same command
again (with --submit) submits only the shards that still owe answers, and each resumes from
its own file (wait until the first array has left the queue: a shard still running refuses a
second writer). Jobs that waited on a failed task are cancelled by Slurm (--kill-on-invalid-dep);
the resubmission brings new ones.

Examples:
  icet slurm --shards 8 --partition gpu --time 04:00:00 --submit -- \\
      --model llava-1.5-7b-hf --data redteam.jsonl --layers all --out /shared/runs/rt-llava
  icet slurm --shards 8 --score llama-guard-3=Llama-Guard-3-8B --submit -- ... --out /shared/runs/rt
  icet report /shared/runs/rt-llava     # any time: names the shards that still owe answers"
)]
pub struct Args {
    /// Tasks of the job array, one GPU each: the run's shards
    #[arg(long, value_name = "N")]
    pub shards: usize,
    /// Submit the jobs (sbatch must be on PATH); without it, only write and print the scripts
    #[arg(long)]
    pub submit: bool,
    /// Slurm partition (--partition)
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm account to charge (--account)
    #[arg(long)]
    pub account: Option<String>,
    /// Time limit of each job (--time: MINUTES, HH:MM:SS, D-HH:MM...)
    #[arg(long)]
    pub time: Option<String>,
    /// Generic resources of each sweep/score task (typed GPUs: gpu:a100:1)
    #[arg(long, default_value = "gpu:1")]
    pub gres: String,
    /// Job name [default: icet-<run folder name>]
    #[arg(long)]
    pub job_name: Option<String>,
    /// One more #SBATCH option for every job, e.g. '--qos=high' or '--constraint=a100'; repeat
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Do not let Slurm requeue a preempted or failed-node task (by default it may: the task
    /// resumes its shard)
    #[arg(long)]
    pub no_requeue: bool,
    /// A judge (`KIND=DIR`, as `icet score --judge`) for a dependent `icet score` array of the
    /// same shards; repeat for several (a report job follows)
    #[arg(long = "score", value_name = "KIND=DIR")]
    pub score: Vec<String>,
    /// A dependent `icet report` job after the sweep (and the scores)
    #[arg(long)]
    pub report: bool,
    /// The icet binary the tasks run [default: this one]
    #[arg(long, value_name = "PATH")]
    pub icet: Option<PathBuf>,
    /// `icet sweep`'s arguments (after `--`)
    #[arg(last = true, required = true, value_name = "SWEEP ARGS")]
    pub sweep_args: Vec<String>,
}

/// The sweep's arguments, parsed as `icet sweep` parses them (to check them, and to find --out).
#[derive(Parser, Debug)]
#[command(name = "icet sweep", no_binary_name = true)]
struct SweepLine {
    #[command(flatten)]
    sweep: super::sweep::Args,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().context("cannot tell the current folder")?.join(p))
}

impl super::Run for Args {
    fn run(self) -> Result<()> {
        let parsed = SweepLine::try_parse_from(&self.sweep_args).map_err(|e| {
            anyhow::anyhow!("the sweep's arguments (after --): {}", e.to_string().lines().next().unwrap_or(""))
        })?;
        let sweep = parsed.sweep;
        if sweep.shard.is_some() || sweep.devices.is_some() {
            bail!("the sweep's arguments (after --): leave out --shard and --devices; each task is given its shard");
        }
        let Some(out) = &sweep.out else {
            bail!("the sweep's arguments (after --): give --out DIR, the run folder every task writes into");
        };
        if self.shards == 0 {
            bail!("--shards: at least 1");
        }
        let out = absolute(out)?;
        let exe = match &self.icet {
            Some(p) => absolute(p)?,
            None => std::env::current_exe().context("cannot find the icet binary")?,
        };
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
        // The judges run on the sweep's device.
        let score_args = match sweep.model.device {
            icet_engine::device::Device::Auto => vec![],
            d => vec!["--device".into(), super::value_name(d)],
        };
        let req = SlurmRequest {
            exe,
            sweep_args: self.sweep_args.clone(),
            out: out.clone(),
            workdir: std::env::current_dir().context("cannot tell the current folder")?,
            shards: self.shards,
            job_name: self.job_name.unwrap_or_else(|| format!("icet-{name}")),
            partition: self.partition,
            account: self.account,
            time: self.time,
            gres: self.gres,
            requeue: !self.no_requeue,
            extra: self.sbatch,
            score_judges: self.score,
            score_args,
            report: self.report,
        };
        let scripts = req.scripts()?;
        let files = write_scripts(&req, &scripts)?;
        if !self.submit {
            print!("{}", scripts.sweep);
            eprintln!(
                "icet: wrote {} (and {}); submit: sh {}, or sbatch {}",
                files.sweep.display(),
                [files.score.as_ref(), files.report.as_ref(), Some(&files.submit)]
                    .into_iter()
                    .flatten()
                    .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
                files.submit.display(),
                files.sweep.display()
            );
            return Ok(());
        }
        let tasks = owing_shards(&out, self.shards)?;
        if tasks.is_empty() {
            eprintln!("icet: {}: every shard has all its answers; no sweep to submit", out.display());
        }
        let done = submit(&files, &tasks)?;
        let logs = out.join(icet_engine::run_dir::LOGS_DIR);
        let mut line = Vec::new();
        if let Some((id, tasks)) = &done.sweep {
            eprintln!(
                "icet: submitted the sweep as job {id}, array {} of {} shards (logs: {}/sweep-{id}_K.log)",
                array_spec(tasks),
                self.shards,
                logs.display()
            );
            line.push(format!("sweep={id}"));
        }
        if let Some(id) = &done.score {
            eprintln!("icet: submitted the scoring as job {id} (after the sweep)");
            line.push(format!("score={id}"));
        }
        if let Some(id) = &done.report {
            eprintln!("icet: submitted the report as job {id} (into {}/report)", out.display());
            line.push(format!("report={id}"));
        }
        println!("{}", line.join(" "));
        Ok(())
    }
}
