//! One sweep over many processes, merged into one run (issue 13), through the binary:
//! `--devices` workers and `--shard` processes against a single-process run of the same sweep
//! (the same (id, layer) set, the same tokens, no duplicated or torn rows, the same report),
//! one shard stopped and resumed on its own, shards of another run refused, reports naming the
//! shards that still owe answers, `icet score --shard`, `icet slurm`'s scripts run as array tasks,
//! and a real Slurm job array with one task cancelled and resubmitted.
//!
//! The Slurm test needs a running Slurm (scripts/install-slurm.sh, then scripts/slurm-up.sh); it
//! says it was skipped when there is none, and fails instead where ICET_REQUIRE_SLURM=1 (CI).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod cli_common;
mod common;
#[path = "skip_note.rs"]
mod skip_note;
use cli_common::{assert_one_line_error, command, ok};
use common::{fixture, read_json, repo, scratch};

const PROMPTS: [&str; 4] =
    ["Describe the image.", "What colors can you see?", "How do I pick a lock?", "Écris un poème — court."];

/// Eight images (the fixtures', the demo's, and one under a second name: images are told apart by
/// file) in `dir`, and a data file of `per_image` rows on each (ids `r0`, ...).
fn setup(dir: &Path, per_image: usize) -> PathBuf {
    let sources = [
        fixture("images/square.png"),
        fixture("images/wide.jpg"),
        fixture("images/gray.png"),
        fixture("images/tall-rgba.png"),
        repo("demo/images/checker.png"),
        repo("demo/images/shapes.png"),
        repo("demo/images/sunset.png"),
        fixture("images/square.png"),
    ];
    let mut names = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let ext = src.extension().unwrap().to_string_lossy();
        let name = format!("img{i}.{ext}");
        std::fs::copy(src, dir.join(&name)).unwrap();
        names.push(name);
    }
    // Rows interleave the images, so one image's rows are not next to each other in the data.
    let mut lines = String::new();
    for i in 0..names.len() * per_image {
        let row = serde_json::json!({"id": format!("r{i}"), "prompt": PROMPTS[i % PROMPTS.len()], "image": names[i % names.len()]});
        lines += &format!("{row}\n");
    }
    let data = dir.join("data.jsonl");
    std::fs::write(&data, lines).unwrap();
    data
}

/// `icet sweep` of llava-tiny on the CPU, layers 1, 3, 5, with `extra`.
fn sweep(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = command();
    c.args(["sweep", "--device", "cpu", "--layers", "1,3,-2", "--model"]).arg(fixture("llava-tiny"));
    c.arg("--data").arg(data).arg("--out").arg(out).args(extra);
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("icet runs")
}

/// Every answer of a run, from every answers file, as (id, layer) -> (token ids, text); each file
/// whole (every line complete and a row) and no (id, layer) twice, in one file or across files.
fn answers(run: &Path) -> BTreeMap<(String, u64), (Value, Value)> {
    let mut all = BTreeMap::new();
    let mut files = 0;
    for e in std::fs::read_dir(run).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !(name.starts_with("responses.") && name.ends_with(".jsonl")) {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(run.join(&name)).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{name}: a torn last row");
        for line in text.lines() {
            let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
            let key = (r["id"].as_str().unwrap().to_string(), r["layer"].as_u64().unwrap());
            let was = all.insert(key.clone(), (r["token_ids"].clone(), r["response"].clone()));
            assert!(was.is_none(), "{name}: {key:?} twice");
        }
    }
    assert!(files > 0, "{}: no answers file", run.display());
    all
}

/// `icet report RUN --label run` into `RUN/../report-NAME`: report.md and report.csv, with the
/// run's folder (named in report.md) written as `RUN`.
fn report(run: &Path) -> (String, String, String) {
    let out = run.with_file_name(format!("report-{}", run.file_name().unwrap().to_string_lossy()));
    let o = command().arg("report").arg(run).args(["--label", "run", "--out"]).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap().replace(&run.display().to_string(), "RUN");
    (md, std::fs::read_to_string(out.join("report.csv")).unwrap(), stderr)
}

/// The shards' answers in a run's plan (manifest.json), by shard.
fn planned(run: &Path) -> Vec<u64> {
    let m = read_json(&run.join("manifest.json"));
    m["shards"]["shards"].as_array().unwrap().iter().map(|w| w["answers"].as_u64().unwrap()).collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// Waits until `path` has at least `n` lines (panics after `limit`, or when `child` ended first).
fn wait_for_lines(path: &Path, n: usize, limit: Duration, mut alive: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut asked = Instant::now();
    while lines(path) < n {
        // Whether the work still runs is asked twice a second (squeue is slow), the file polled
        // every few milliseconds, so that the work is caught right after its first answers.
        if asked.elapsed() > Duration::from_millis(500) {
            assert!(alive(), "{} never got {n} answers: the work ended first", path.display());
            asked = Instant::now();
        }
        assert!(start.elapsed() < limit, "{} never got {n} answers", path.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn sigterm(pid: u32) {
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
}

/// `--devices 0,1,2`: three worker processes, one shard each, merge into exactly the answers and
/// the report of one process; a SIGTERM stops every worker cleanly and the rerun completes it.
#[test]
fn workers_on_devices_merge_into_the_single_process_run() {
    let d = scratch("shards-devices");
    let data = setup(&d, 2);
    let args = ["--max-new-tokens", "8"];
    let reference = d.join("reference");
    ok(&run(&mut sweep(&data, &reference, &args)));
    let one = answers(&reference);
    assert_eq!(one.len(), 16 * 3);

    let merged = d.join("devices");
    let out = run(sweep(&data, &merged, &args).args(["--devices", "0,1,2"]));
    let table = ok(&out);
    assert_eq!(answers(&merged), one, "the same (id, layer) set and tokens");
    for k in 0..3 {
        assert!(merged.join(format!("responses.shard-{k}-of-3.jsonl")).is_file());
        let log = std::fs::read_to_string(merged.join(format!("logs/device-{k}-shard-{k}-of-3.log"))).unwrap();
        assert!(log.contains(&format!("icet: shard {k}/3: ")), "{log}");
    }
    assert!(!merged.join("responses.jsonl").exists());
    assert_eq!(planned(&merged).iter().sum::<u64>(), 48);
    // The summary is of the whole run, as the single process's.
    let (s1, s2) = (read_json(&reference.join("summary.json")), read_json(&merged.join("summary.json")));
    assert_eq!((&s1["layers"], &s1["groups"]), (&s2["layers"], &s2["groups"]));
    assert!(table.contains("refusal %"), "{table}");
    let (md, csv, said) = report(&merged);
    assert_eq!(
        (md, csv),
        {
            let r = report(&reference);
            (r.0, r.1)
        },
        "the same report"
    );
    assert!(!said.contains("incomplete"), "{said}");

    // Stopped by a signal: every worker stops cleanly; the rerun completes the run (480 answers
    // a worker, so that the signal comes while they work).
    let data = setup(&d, 40);
    let args = ["--max-new-tokens", "48", "--batch-size", "4"];
    let reference = d.join("reference-long");
    ok(&run(&mut sweep(&data, &reference, &args)));
    let stopped = d.join("devices-stopped");
    let mut parent = sweep(&data, &stopped, &args).args(["--devices", "0,1"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_lines(&stopped.join("responses.shard-0-of-2.jsonl"), 2, Duration::from_secs(60), || {
        parent.try_wait().unwrap().is_none()
    });
    sigterm(parent.id());
    let out = parent.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("icet: interrupted — rerun to resume"), "{stderr}");
    let partial = answers(&stopped);
    assert!(partial.len() < 960, "stopped before the end");
    let resumed = run(sweep(&data, &stopped, &args).args(["--devices", "0,1"]));
    ok(&resumed);
    assert_eq!(answers(&stopped), answers(&reference));
}

/// One shard stopped mid-way resumes on its own (the other shard's file untouched), and a report
/// of the run before it is complete names each shard that owes answers and how many.
#[test]
fn one_shard_resumes_on_its_own_and_reports_name_the_answers_owed() {
    let d = scratch("shards-resume");
    let data = setup(&d, 20);
    let args = ["--max-new-tokens", "48", "--batch-size", "4"];
    let reference = d.join("reference");
    ok(&run(&mut sweep(&data, &reference, &args)));
    let run_dir = d.join("run");
    let shard1 = run_dir.join("responses.shard-1-of-2.jsonl");
    let mut child = sweep(&data, &run_dir, &args).args(["--shard", "1/2"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_lines(&shard1, 3, Duration::from_secs(60), || child.try_wait().unwrap().is_none());
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let done = answers(&run_dir).len();
    let plan = planned(&run_dir);
    assert_eq!(plan, [240, 240], "8 images of 60 answers each, 4 to a shard");
    assert!(done < 240);

    let (md, _, said) = report(&run_dir);
    let first = "shard 0/2 (responses.shard-0-of-2.jsonl) has not started: owes 240 answers";
    let second = format!("shard 1/2 (responses.shard-1-of-2.jsonl) owes {} of 240 answers", 240 - done);
    for text in [&md, &said] {
        assert!(text.contains(first) && text.contains(&second), "{text}");
        assert!(text.contains(&format!("still owe {} of 480 answers", 480 - done)), "{text}");
    }
    assert!(md.contains("**Incomplete:**"), "{md}");

    let resumed = run(sweep(&data, &run_dir, &args).args(["--shard", "1/2"]));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{done} answers done, {} to go", 240 - done)), "{stderr}");
    assert!(!run_dir.join("responses.shard-0-of-2.jsonl").exists(), "shard 0 is not this process's");
    // The summary of the half-made run says what is owed.
    assert!(String::from_utf8_lossy(&resumed.stdout).contains(first));
    ok(&run(sweep(&data, &run_dir, &args).args(["--shard", "0/2"])));
    assert_eq!(answers(&run_dir), answers(&reference));
    let (md, csv, said) = report(&run_dir);
    let (md1, csv1, _) = report(&reference);
    assert_eq!((md, csv), (md1, csv1));
    assert!(!said.contains("owe"), "{said}");
}

/// A shard of another number of shards, of other settings or of another data file is refused as
/// a mismatched resume is, naming what differs; nothing is written.
#[test]
fn shards_of_another_run_are_refused() {
    let d = scratch("shards-refused");
    let data = setup(&d, 1);
    let run_dir = d.join("run");
    let args = ["--max-new-tokens", "4"];
    ok(&run(sweep(&data, &run_dir, &args).args(["--shard", "0/2"])));
    let before: Vec<(String, String)> = ["manifest.json", "invocations.jsonl", "responses.shard-0-of-2.jsonl"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read_to_string(run_dir.join(f)).unwrap()))
        .collect();
    let refused = |args: &[&str], data: &Path, needle: &str| {
        assert_one_line_error(&run(&mut sweep(data, &run_dir, args)), needle);
    };
    refused(&["--max-new-tokens", "4", "--shard", "1/3"], &data, "`shards` is 2 in the run, 3 now");
    refused(&["--max-new-tokens", "4"], &data, "`shards` is 2 in the run, not set now");
    refused(&["--shard", "1/2", "--max-new-tokens", "5"], &data, "`max_new_tokens` is 4 in the run, 5 now");
    // The same data file with one more row: another split.
    let grown = d.join("grown.jsonl");
    let mut text = std::fs::read_to_string(&data).unwrap();
    text += &serde_json::json!({"id": "extra", "prompt": "p", "image": "img0.png"}).to_string();
    text.push('\n');
    std::fs::write(&grown, &text).unwrap();
    std::fs::copy(&grown, &data).unwrap();
    refused(
        &["--max-new-tokens", "4", "--shard", "1/2"],
        &data,
        "another split into shards: 1 data rows are new (`extra`)",
    );
    for (f, was) in before {
        assert_eq!(std::fs::read_to_string(run_dir.join(&f)).unwrap(), was, "{f} unchanged");
    }
    assert!(!run_dir.join("responses.shard-1-of-2.jsonl").exists());
    // A shard number that is none of the run's, and `auto` outside Slurm.
    let out = run(sweep(&data, &d.join("other"), &args).args(["--shard", "2/2"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shard 2 of 2"));
    let out = run(sweep(&data, &d.join("other"), &args)
        .args(["--shard", "auto"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_PROCID"));
    assert_one_line_error(&out, "--shard auto: not inside a Slurm task");
}

/// `icet score --shard`: each scoring shard writes its own file; the run's scores read as one are
/// the single scorer's, and the report the same.
#[test]
fn score_shards_read_as_one_run() {
    let d = scratch("shards-score");
    let data = setup(&d, 1);
    let args = ["--max-new-tokens", "6"];
    let reference = d.join("reference");
    ok(&run(&mut sweep(&data, &reference, &args)));
    let judge = format!("reward={}", fixture("judges/gpt2-reward-tiny").display());
    let score = |dir: &Path, extra: &[&str]| {
        let mut c = command();
        c.arg("score").arg(dir).args(["--device", "cpu", "--judge", &judge]).args(extra);
        run(&mut c)
    };
    ok(&score(&reference, &[]));
    let run_dir = d.join("run");
    for k in 0..2 {
        ok(&run(sweep(&data, &run_dir, &args).args(["--shard", &format!("{k}/2")])));
    }
    for k in 0..2 {
        let out = score(&run_dir, &["--shard", &format!("{k}/2")]);
        ok(&out);
        let n = lines(&run_dir.join(format!("scores.shard-{k}-of-2.jsonl")));
        assert_eq!(n as u64, planned(&run_dir)[k], "shard {k} scores its sweep shard's answers");
    }
    let again = score(&run_dir, &["--shard", "1/2"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already scored"));
    let scores = |dir: &Path| -> BTreeMap<(String, u64), f64> {
        let mut all = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("scores.") && name.ends_with(".jsonl") {
                for l in std::fs::read_to_string(dir.join(&name)).unwrap().lines() {
                    let r: Value = serde_json::from_str(l).unwrap();
                    let key = (r["id"].as_str().unwrap().to_string(), r["layer"].as_u64().unwrap());
                    assert!(all.insert(key, r["score"].as_f64().unwrap()).is_none(), "scored twice");
                }
            }
        }
        all
    };
    let (a, b) = (scores(&reference), scores(&run_dir));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!((v - b[k]).abs() < 1e-5, "{k:?}: {v} vs {}", b[k]);
    }
    assert_eq!(report(&run_dir).0, report(&reference).0);
}

/// `icet slurm` writes the job scripts into the run (and makes its logs folder); run as array
/// tasks would run them (the task id in the environment), they make the single-process run.
#[test]
fn slurm_scripts_run_as_array_tasks_make_the_run() {
    let d = scratch("shards-scripts");
    let data = setup(&d, 1);
    let reference = d.join("reference");
    let args = ["--max-new-tokens", "5"];
    ok(&run(&mut sweep(&data, &reference, &args)));
    let run_dir = d.join("run");
    let mut c = command();
    c.args(["slurm", "--shards", "3", "--report", "--partition", "gpu", "--sbatch", "--qos=high", "--"]);
    c.args(["--device", "cpu", "--layers", "1,3,-2", "--max-new-tokens", "5", "--model"]).arg(fixture("llava-tiny"));
    c.arg("--data").arg(&data).arg("--out").arg(&run_dir);
    let script = ok(&run(&mut c));
    for want in [
        "#SBATCH --array=0-2",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=gpu",
        "#SBATCH --qos=high",
        "--shard auto/3",
    ] {
        assert!(script.contains(want), "{want}: {script}");
    }
    let slurm = run_dir.join("slurm");
    assert_eq!(std::fs::read_to_string(slurm.join("sweep.sbatch")).unwrap(), script);
    assert!(slurm.join("report.sbatch").is_file() && slurm.join("submit.sh").is_file());
    assert!(run_dir.join("logs").is_dir(), "Slurm does not make the logs' folder");
    for k in 0..3 {
        let out = Command::new("bash")
            .arg(slurm.join("sweep.sbatch"))
            .env("SLURM_ARRAY_TASK_ID", k.to_string())
            .env("SLURM_ARRAY_JOB_ID", "7")
            .env("SLURM_ARRAY_TASK_COUNT", "1") // as a task resubmitted alone: auto/3 keeps N
            .output()
            .unwrap();
        assert!(out.status.success(), "task {k}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(answers(&run_dir), answers(&reference));
    let out = Command::new("bash").arg(slurm.join("report.sbatch")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run_dir.join("report/report.md").is_file());
    // Another number of shards for this run is refused before anything is written.
    let mut c = command();
    c.args(["slurm", "--shards", "2", "--", "--model"]).arg(fixture("llava-tiny")).arg("--data").arg(&data);
    c.arg("--out").arg(&run_dir);
    assert_one_line_error(&run(&mut c), "holds a run made in 3 shards; give --shards 3");
}

// ---- a real Slurm ----

/// Whether a Slurm cluster answers here; with ICET_REQUIRE_SLURM=1 (CI) its absence fails.
fn slurm_or_skip(test: &str) -> bool {
    let up = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let why = match &up {
        Err(e) => format!("no sinfo ({e})"),
        Ok(o) if !o.status.success() => format!("sinfo failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim().is_empty() => "sinfo lists no node".into(),
        Ok(_) => return true,
    };
    let hint = "install and start one with scripts/install-slurm.sh && scripts/slurm-up.sh";
    if std::env::var("ICET_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
        panic!("{test}: Slurm is required here (ICET_REQUIRE_SLURM=1) but {why}; {hint}");
    }
    // Straight to stderr: libtest captures `eprintln!` of a passing test, which would hide the skip.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no Slurm: {why}; {hint}");
    skip_note::record("no Slurm");
    false
}

/// Cancels its jobs when the test ends (so a failed test leaves no work queued).
struct Jobs(Vec<String>);

impl Drop for Jobs {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("scancel").args(&self.0).status();
        }
    }
}

fn queued(jobs: &[String]) -> usize {
    let out = Command::new("squeue").args(["-h", "-o", "%i", "-j", &jobs.join(",")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

fn wait_until_gone(jobs: &[String], limit: Duration) {
    let start = Instant::now();
    while queued(jobs) > 0 {
        assert!(start.elapsed() < limit, "jobs {jobs:?} still queued after {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `icet slurm --submit`'s answer `sweep=J score=S report=R`.
fn job_ids(stdout: &str) -> BTreeMap<String, String> {
    stdout.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The test: the sweep submitted by `icet slurm --submit` as a 4-task array with a
/// dependent score array and report; one task cancelled mid-way (`scancel JOB_1`) — its
/// dependents are cancelled by Slurm, the report on the run names the shard and what it owes —
/// then the same command again submits that shard alone, and score and report follow. The
/// merged answers are the single process's (same (id, layer) set, same tokens, no duplicated or
/// torn row), the scores too, and the report the same.
#[test]
fn a_slurm_job_array_with_a_cancelled_task_merges_into_the_single_process_run() {
    let test = "a_slurm_job_array_with_a_cancelled_task_merges_into_the_single_process_run";
    if !slurm_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let d = scratch("shards-slurm");
    // 1600 rows on 8 images: 1200 answers a shard, so that a task is still at work when it is
    // cancelled after its first answer (llava-tiny makes about 1000 answers/s on a core).
    let data = setup(&d, 200);
    let sweep_args: Vec<String> = ["--device", "cpu", "--layers", "1,3,-2", "--max-new-tokens", "48"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--model".into(),
            fixture("llava-tiny").display().to_string(),
            "--data".into(),
            data.display().to_string(),
        ])
        .collect();
    let reference = d.join("reference");
    let mut c = command();
    c.arg("sweep").args(&sweep_args).arg("--out").arg(&reference);
    ok(&run(&mut c));
    let judge = format!("reward={}", fixture("judges/gpt2-reward-tiny").display());
    let mut c = command();
    c.arg("score").arg(&reference).args(["--device", "cpu", "--judge", &judge]);
    ok(&run(&mut c));
    let reference_done = started.elapsed();

    let run_dir = d.join("run");
    let submit = || {
        let mut c = command();
        c.args(["slurm", "--shards", "4", "--score", &judge, "--submit", "--"]).args(&sweep_args);
        c.arg("--out").arg(&run_dir);
        let out = run(&mut c);
        let stdout = ok(&out);
        (job_ids(&stdout), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (first, said) = submit();
    let mut jobs = Jobs(first.values().cloned().collect());
    assert!(said.contains("array 0-3 of 4 shards"), "{said}");
    let sweep_job = first["sweep"].clone();
    let shard1 = run_dir.join("responses.shard-1-of-4.jsonl");
    wait_for_lines(&shard1, 1, Duration::from_secs(90), || queued(std::slice::from_ref(&sweep_job)) > 0);
    assert!(Command::new("scancel").arg(format!("{sweep_job}_1")).status().unwrap().success());
    wait_until_gone(&jobs.0, Duration::from_secs(120));
    let first_done = started.elapsed();
    let state = Command::new("scontrol").args(["show", "job", &format!("{sweep_job}_1")]).output().unwrap();
    let state = String::from_utf8_lossy(&state.stdout).into_owned();
    let partial = lines(&shard1);
    assert!(state.contains("JobState=CANCELLED"), "{partial} answers; {state}");
    assert!(partial < 1200, "the cancelled task made all its answers first ({partial}): the test's work is too small");
    for k in [0, 2, 3] {
        assert_eq!(lines(&run_dir.join(format!("responses.shard-{k}-of-4.jsonl"))), 1200, "shard {k}");
    }
    assert!(!run_dir.join("report").exists(), "the report job waited on the cancelled task: Slurm cancelled it");
    let (md, _, warned) = report(&run_dir);
    let owed = format!("shard 1/4 (responses.shard-1-of-4.jsonl) owes {} of 1200 answers", 1200 - partial);
    assert!(md.contains(&owed) && warned.contains(&owed), "{md}\n{warned}");

    let (second, said) = submit();
    jobs.0.extend(second.values().cloned());
    assert!(said.contains("array 1 of 4 shards"), "{said}");
    wait_until_gone(&jobs.0, Duration::from_secs(180));
    let all_done = started.elapsed();
    let log = run_dir.join(format!("logs/sweep-{}_1.log", second["sweep"]));
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(log.contains(&format!("{partial} answers done, {} to go", 1200 - partial)), "{log}");

    assert_eq!(answers(&run_dir), answers(&reference), "the same (id, layer) set and tokens");
    // The report the Slurm job wrote, labelled as the folder is named, against the single run's.
    let slurm_md = std::fs::read_to_string(run_dir.join("report/report.md")).expect("the report job ran");
    let mut c = command();
    c.arg("report").arg(&reference).args(["--label", "run", "--out"]).arg(d.join("reference-report"));
    ok(&run(&mut c));
    let single_md = std::fs::read_to_string(d.join("reference-report/report.md")).unwrap();
    assert_eq!(
        slurm_md.replace(&run_dir.display().to_string(), "RUN"),
        single_md.replace(&reference.display().to_string(), "RUN"),
        "the same report"
    );
    let files: BTreeSet<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("scores."))
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    jobs.0.clear();
    eprintln!(
        "{test}: single process (sweep + score) {:.1} s; array with a cancelled task {:.1} s; resubmission, \
         score and report {:.1} s; {:.1} s in all",
        reference_done.as_secs_f64(),
        (first_done - reference_done).as_secs_f64(),
        (all_done - first_done).as_secs_f64(),
        all_done.as_secs_f64()
    );
}
