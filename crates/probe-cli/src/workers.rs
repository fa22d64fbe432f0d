//! `icet sweep --devices 0,1,2,3`: a sweep over several GPUs of one machine without Slurm — one
//! worker process per device, each the shard of its position (`--shard K/N`, N devices) with
//! `CUDA_VISIBLE_DEVICES` set to its device, exactly as Slurm's array tasks run (the same shards,
//! files and resume); then the run's summary, read from every shard's file.
//!
//! Each worker's output goes to `logs/device-D-shard-K-of-N.log` in the run (appended: a rerun's
//! follows). The workers run in their own process group: a Ctrl-C or SIGTERM reaches this process,
//! which passes one SIGTERM to every worker — each stops cleanly (rows whole, answers in flight
//! dropped) — and rerunning the same command resumes every shard.
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use icet_models::generation::interrupt;

use crate::progress::Progress;
use crate::run_dir::{RunDir, LOGS_DIR, RESPONSES};
use crate::shard::shard_file;
use crate::summary::Summary;

/// What `--devices` runs.
#[derive(Clone, Debug)]
pub struct WorkersRequest {
    /// The `icet` binary the workers run (this one).
    pub exe: PathBuf,
    /// The sweep's arguments after `icet`, without `--devices` (and without `--shard`); each
    /// worker gets them plus `--shard K/N`.
    pub args: Vec<OsString>,
    /// Device ids, one worker each (`CUDA_VISIBLE_DEVICES`; labels only with `--device cpu`).
    pub devices: Vec<String>,
    /// The run directory (the workers' `--out`).
    pub out: PathBuf,
}

/// `--devices`: `0,1,2,3` (each once).
pub fn parse_devices(spec: &str) -> Result<Vec<String>> {
    let devices: Vec<String> = spec.split(',').map(|d| d.trim().to_string()).collect();
    if devices.iter().any(|d| d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c))) {
        bail!("--devices `{spec}`: give device ids separated by commas, e.g. 0,1,2,3");
    }
    for (i, d) in devices.iter().enumerate() {
        if devices[..i].contains(d) {
            bail!("--devices `{spec}`: device {d} is given twice (one worker per device)");
        }
    }
    Ok(devices)
}

struct Worker {
    shard: usize,
    device: String,
    log: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

/// Runs one worker per device and waits for them all; the run's summary once every worker
/// finished. A worker that fails is named with the last line of its log; the others carry on.
pub fn run_workers(req: &WorkersRequest) -> Result<Summary> {
    let n = req.devices.len();
    RunDir::refuse_foreign(&req.out)?;
    let logs = req.out.join(LOGS_DIR);
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut workers = Vec::with_capacity(n);
    for (k, device) in req.devices.iter().enumerate() {
        let log = logs.join(format!("device-{device}-shard-{k}-of-{n}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = Command::new(&req.exe)
            .args(&req.args)
            .arg("--shard")
            .arg(format!("{k}/{n}"))
            .env("CUDA_VISIBLE_DEVICES", device)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", req.exe.display()))?;
        workers.push(Worker { shard: k, device: device.clone(), log, child, status: None });
    }
    eprintln!(
        "icet: {n} workers (devices {}), one shard each; their logs: {}/device-*.log",
        req.devices.join(","),
        logs.display()
    );
    let run = RunDir::open(&req.out);
    let mut progress: Option<(Progress, usize)> = None;
    let mut stopping = false;
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    while workers.iter().any(|w| w.status.is_none()) {
        for w in workers.iter_mut().filter(|w| w.status.is_none()) {
            w.status = w.child.try_wait().with_context(|| format!("worker of shard {}", w.shard))?;
        }
        if interrupt::requested() && !stopping {
            stopping = true;
            eprintln!("icet: stopping the workers (each drops its answers in flight)");
            for w in workers.iter().filter(|w| w.status.is_none()) {
                terminate(&w.child);
            }
        }
        if last_poll.elapsed() >= Duration::from_secs(1) {
            last_poll = Instant::now();
            show_progress(&run, n, &mut progress);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    show_progress(&run, n, &mut progress);
    if let Some((p, _)) = &progress {
        p.finish();
    }
    let failed: Vec<&Worker> = workers.iter().filter(|w| !w.status.is_some_and(|s| s.success())).collect();
    if stopping {
        return Err(icet_models::Error::Interrupted.into());
    }
    if !failed.is_empty() {
        let said: Vec<String> = failed
            .iter()
            .map(|w| {
                let code = w.status.and_then(|s| s.code()).map(|c| c.to_string()).unwrap_or_else(|| "a signal".into());
                format!(
                    "shard {}/{n} on device {} (exit {code}: {}; log {})",
                    w.shard,
                    w.device,
                    last_line(&w.log),
                    w.log.display()
                )
            })
            .collect();
        bail!(
            "{} of {n} workers failed: {}; the others' answers are kept: fix the cause and rerun the same command \
             to resume",
            failed.len(),
            said.join("; ")
        );
    }
    crate::sweep::run_summary(&run, &[])
}

/// Progress over the whole run: answers in every shard's file against the plan's total (known
/// once the first worker wrote the manifest).
fn show_progress(run: &RunDir, n: usize, progress: &mut Option<(Progress, usize)>) {
    if progress.is_none() {
        let Some(plan) = run.manifest().ok().flatten().and_then(|m| m.shards) else { return };
        let total = plan.shards.iter().map(|w| w.answers).sum();
        *progress = Some((Progress::new(total, "answers"), 0));
    }
    let Some((p, shown)) = progress else { return };
    let lines: usize =
        (0..n).map(|k| std::fs::read(run.path(&shard_file(RESPONSES, k, n))).map(|b| bytecount(&b)).unwrap_or(0)).sum();
    if lines > *shown {
        p.inc(lines - *shown, 0);
        *shown = lines;
    }
}

fn bytecount(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// Asks a worker to stop cleanly (SIGTERM: it finishes its step, keeps every written row whole).
fn terminate(child: &Child) {
    let Ok(pid) = i32::try_from(child.id()) else { return };
    // SAFETY: kill(2) with a pid this process spawned and has not yet reaped; no memory is shared.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// The last non-empty line of a log (what a failed worker said last).
fn last_line(log: &Path) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_a_list_of_distinct_ids() {
        assert_eq!(parse_devices("0,1, 2,3").unwrap(), ["0", "1", "2", "3"]);
        assert_eq!(parse_devices("GPU-5f2a").unwrap(), ["GPU-5f2a"]);
        assert!(parse_devices("0,,1").unwrap_err().to_string().contains("separated by commas"));
        assert!(parse_devices("0,1,0").unwrap_err().to_string().contains("device 0 is given twice"));
        assert!(parse_devices("0;1").is_err());
    }
}
