//! A run directory is owned by one process at a time, is never rewritten in place, resumes after
//! any interruption to exactly the uninterrupted result, and never mixes answers made from
//! different inputs, models or settings (issue 14, findings 1, 2, 3, 7 and 11's manifest items).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod cli_common;
mod common;
use cli_common::{assert_one_line_error, command, icet, ok};
use common::{fixture, read_json, scratch};

/// Prompts with multi-byte characters, so that a cut can land inside one.
const PROMPTS: [&str; 3] = ["Décris l'image — vite.", "この画像には何がありますか？", "What is shown? 🙂"];

/// A scratch copy of llava-tiny and a data file of [`PROMPTS`] on two images (ids `r0`, ...).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(fixture("llava-tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(fixture("images/square.png"), dir.join("a.png")).unwrap();
    std::fs::copy(fixture("images/wide.jpg"), dir.join("b.jpg")).unwrap();
    let data = dir.join("data.jsonl");
    write_data(&data, &PROMPTS);
    (model, data)
}

fn write_data(path: &Path, prompts: &[&str]) {
    let lines: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let image = if i % 2 == 0 { "a.png" } else { "b.jpg" };
            serde_json::json!({"id": format!("r{i}"), "prompt": p, "image": image}).to_string() + "\n"
        })
        .collect();
    std::fs::write(path, lines.concat()).unwrap();
}

/// `icet sweep` of layers 1, 3, 5 with 6 new tokens (unless `extra` says otherwise).
fn sweep(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = command();
    c.args(["sweep", "--device", "cpu", "--layers", "1,3,-2", "--model"]);
    c.arg(model).arg("--data").arg(data).arg("--out").arg(out).args(extra);
    if !extra.contains(&"--max-new-tokens") {
        c.args(["--max-new-tokens", "6"]);
    }
    c
}

fn run(c: &mut Command) -> std::process::Output {
    c.output().expect("icet runs")
}

/// The lines of a responses file, sorted (answers are appended in the order they finish).
fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(String::from).collect();
    lines.sort();
    lines
}

/// Finding 1: two sweeps into one folder both ran and wrote every answer twice. Now the second
/// is refused, naming the first, while the first finishes alone.
#[test]
fn two_concurrent_sweeps_one_runs_and_the_other_is_refused() {
    let d = scratch("integrity-concurrent");
    let (model, data) = setup(&d);
    // Enough work that the first sweep holds the lock for a while.
    let many: Vec<&str> = PROMPTS.iter().copied().cycle().take(60).collect();
    write_data(&data, &many);
    let out = d.join("run");
    let args = ["--max-new-tokens", "40"];
    let mut first = sweep(&model, &data, &out, &args).stderr(Stdio::piped()).spawn().unwrap();
    // Once the first holds the lock, stop it there, so that the second surely meets it.
    let lock = out.join(".responses.jsonl.lock");
    let start = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("\"pid\":{}", first.id()))) {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first sweep ended before it could be caught holding the lock"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "the first sweep never took the lock");
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = first.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let second = run(&mut sweep(&model, &data, &out, &args));
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert_one_line_error(&second, &format!("in use by pid {pid} on "));
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("responses.jsonl")).unwrap().lines().count(),
        60 * 3,
        "each answer once"
    );
    // Both commands are the run's history: only the first wrote.
    assert_eq!(std::fs::read_to_string(out.join("invocations.jsonl")).unwrap().lines().count(), 1);
}

/// Finding 1: a run that an older icet (no lock) wrote twice is counted once, loudly.
#[test]
fn duplicated_rows_are_counted_once_and_said() {
    let d = scratch("integrity-duplicates");
    let (model, data) = setup(&d);
    let out = d.join("run");
    ok(&run(&mut sweep(&model, &data, &out, &[])));
    let responses = out.join("responses.jsonl");
    let once = std::fs::read_to_string(&responses).unwrap();
    std::fs::write(&responses, once.repeat(2)).unwrap();
    let again = run(&mut sweep(&model, &data, &out, &[]));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("9 rows are exact copies of earlier ones"), "{stderr}");
    assert!(stderr.contains("0 to go"), "{stderr}");
    let summary = read_json(&out.join("summary.json"));
    assert!(summary["layers"].as_array().unwrap().iter().all(|l| l["n"] == 3), "{summary}");
}

/// Finding 2: after editing a data row, replacing an image or the model files, a rerun said
/// "0 to go" and kept the old answers. Now it is refused, naming what changed.
#[test]
fn answers_made_from_other_inputs_are_never_kept() {
    let d = scratch("integrity-stale");
    let (model, data) = setup(&d);
    let out = d.join("run");
    ok(&run(&mut sweep(&model, &data, &out, &[])));
    let responses = std::fs::read(out.join("responses.jsonl")).unwrap();

    write_data(&data, &[PROMPTS[0], "An edited prompt.", PROMPTS[2]]);
    let e = run(&mut sweep(&model, &data, &out, &[]));
    assert_one_line_error(
        &e,
        "1 data rows changed since their answers were made: `r1` (prompt changed; answers at layers 1, 3, 5)",
    );
    write_data(&data, &PROMPTS);

    std::fs::copy(fixture("images/gray.png"), d.join("a.png")).unwrap();
    let e = run(&mut sweep(&model, &data, &out, &[]));
    assert_one_line_error(&e, "2 data rows changed");
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("`r0` (image changed"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    std::fs::copy(fixture("images/square.png"), d.join("a.png")).unwrap();

    let mut generation = read_json(&model.join("generation_config.json"));
    generation["eos_token_id"] = 3.into();
    std::fs::write(model.join("generation_config.json"), generation.to_string()).unwrap();
    let e = run(&mut sweep(&model, &data, &out, &[]));
    assert_one_line_error(&e, "the model's files changed since this run began (`generation_config.json` differs)");
    std::fs::copy(fixture("llava-tiny/generation_config.json"), model.join("generation_config.json")).unwrap();

    let again = run(&mut sweep(&model, &data, &out, &[]));
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 to go"), "restored: resumes");
    assert_eq!(std::fs::read(out.join("responses.jsonl")).unwrap(), responses, "no answer was added or changed");
}

/// Finding 3: a full disk cut the last line inside a multi-byte character, and every command
/// then failed on invalid UTF-8. The torn tail is cut at the byte level and the rerun makes
/// exactly the missing answers.
#[test]
fn a_run_torn_inside_a_character_resumes_to_the_uninterrupted_result() {
    let d = scratch("integrity-torn");
    let (model, data) = setup(&d);
    let out = d.join("run");
    ok(&run(&mut sweep(&model, &data, &out, &[])));
    let path = out.join("responses.jsonl");
    let whole = sorted_lines(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Keep 5 answers, then a line cut just inside its first multi-byte character.
    let last = lines[5];
    let cut = last.char_indices().find(|(_, c)| c.len_utf8() > 1).map(|(i, _)| i + 1).expect("a multi-byte character");
    let mut torn = lines[..5].join("\n").into_bytes();
    torn.push(b'\n');
    torn.extend_from_slice(&last.as_bytes()[..cut]);
    assert!(std::str::from_utf8(&torn).is_err(), "the tail is cut inside a character");
    std::fs::write(&path, torn).unwrap();
    // Readers skip the torn line; the report works on the partial run.
    ok(&icet(&["report", out.to_str().unwrap()]));
    let resumed = run(&mut sweep(&model, &data, &out, &[]));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("cutting a partly written last line") && stderr.contains("4 to go"), "{stderr}");
    assert_eq!(sorted_lines(&path), whole, "resumed answers equal the uninterrupted ones");
}

/// Finding 3: the manifest rewritten in place on every resume was left torn by a full disk, and
/// the run was dead. It is written once, atomically; a full disk during a resume (here: a file
/// size limit, which stops a write where the disk would) leaves it whole, and the run resumes.
#[test]
fn a_full_disk_during_a_resume_leaves_the_run_resumable() {
    let d = scratch("integrity-full-disk");
    let (model, data) = setup(&d);
    let out = d.join("run");
    ok(&run(&mut sweep(&model, &data, &out, &[])));
    let path = out.join("responses.jsonl");
    let whole = sorted_lines(&path);
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.lines().take(4).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    // Files may grow to 1 KiB: smaller than the manifest and the answers file.
    let bin = cli_common::command().get_program().to_owned();
    let mut full = Command::new("bash");
    full.arg("-c").arg("ulimit -f 1; exec \"$0\" \"$@\"").arg(&bin);
    full.args(sweep(&model, &data, &out, &[]).get_args());
    let limited = run(&mut full);
    assert!(!limited.status.success(), "the limited run cannot write its answers");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest, "the manifest is untouched");
    let resumed = run(&mut sweep(&model, &data, &out, &[]));
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(sorted_lines(&path), whole, "resumed answers equal the uninterrupted ones");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest, "never rewritten");
}

/// Finding 7: somebody's folder was taken for a run (their last line cut as "partly written",
/// their summary.csv overwritten). A non-empty folder without a manifest is refused.
#[test]
fn a_foreign_folder_is_refused_as_out() {
    let d = scratch("integrity-foreign");
    let (model, data) = setup(&d);
    let theirs = d.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    let responses = "{\"id\": \"q1\", \"answer\": \"mine\"}\n{\"id\": \"q2\", \"answer\": \"mine too\"}";
    std::fs::write(theirs.join("responses.jsonl"), responses).unwrap();
    std::fs::write(theirs.join("summary.csv"), "theirs\n").unwrap();
    let e = run(&mut sweep(&model, &data, &theirs, &[]));
    assert_one_line_error(&e, "not an icet run (no manifest.json) and not empty (`responses.jsonl`, `summary.csv`)");
    assert_eq!(std::fs::read_to_string(theirs.join("responses.jsonl")).unwrap(), responses);
    assert_eq!(std::fs::read_to_string(theirs.join("summary.csv")).unwrap(), "theirs\n");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 2, "nothing added");
}

/// Finding 11: the manifest kept only the last invocation, a settings mismatch did not say which
/// setting, and a run could mix precisions. Now: the manifest is the run's start, every command
/// is logged, the differing key is named, and another precision is refused unless asked for.
#[test]
fn every_command_is_logged_and_a_resume_names_what_differs() {
    let d = scratch("integrity-log");
    let (model, data) = setup(&d);
    let out = d.join("run");
    ok(&run(&mut sweep(&model, &data, &out, &[])));
    let manifest = read_json(&out.join("manifest.json"));
    assert_eq!(manifest["format"], 2);
    assert_eq!(manifest["precision"], "f32");
    assert!(manifest["model_files"]["model.safetensors"].as_str().unwrap().starts_with("sha256-sampled:"));
    assert!(manifest["model_files"]["config.json"].as_str().unwrap().starts_with("sha256:"));
    let row: Value =
        serde_json::from_str(std::fs::read_to_string(out.join("responses.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    assert!(row["inputs"]["prompt"].as_str().unwrap().starts_with("sha256:"), "{row}");
    // The image fingerprint is the file's SHA-256 (what sha256sum prints).
    let image = if row["id"] == "r1" { "b.jpg" } else { "a.png" };
    let sha = Command::new("sha256sum").arg(d.join(image)).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(row["inputs"]["image"], format!("sha256:{sha}"));

    ok(&run(&mut sweep(&model, &data, &out, &[])));
    assert_eq!(read_json(&out.join("manifest.json")), manifest, "the manifest is the run's start");
    let log = std::fs::read_to_string(out.join("invocations.jsonl")).unwrap();
    let log: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(log.len(), 2);
    for i in &log {
        assert!(i["time"].as_str().unwrap().ends_with('Z') && i["command"][1] == "sweep", "{i}");
        assert_eq!(
            (i["backend"].as_str(), i["precision"].as_str(), i["writes"].as_str()),
            (Some("cpu"), Some("f32"), Some("responses.jsonl"))
        );
        assert!(i["version"].is_string() && i["pid"].is_u64() && i["host"].is_string());
    }

    let e = run(&mut sweep(&model, &data, &out, &["--max-new-tokens", "7"]));
    assert_one_line_error(&e, "holds a run with other settings (`max_new_tokens` is 6 in the run, 7 now)");

    // A run made on a GPU in bf16 is not resumed in f32 unless asked.
    let mut gpu = manifest.clone();
    gpu["backend"] = "cuda-bf16".into();
    gpu["precision"] = "bf16".into();
    std::fs::write(out.join("manifest.json"), gpu.to_string()).unwrap();
    let e = run(&mut sweep(&model, &data, &out, &[]));
    assert_one_line_error(
        &e,
        "made in bf16 (cuda-bf16), this command would add f32 ones (cpu); give --allow-mixed-precision",
    );
    let mixed = run(&mut sweep(&model, &data, &out, &["--allow-mixed-precision"]));
    assert!(mixed.status.success(), "{}", String::from_utf8_lossy(&mixed.stderr));
    let last: Value =
        serde_json::from_str(std::fs::read_to_string(out.join("invocations.jsonl")).unwrap().lines().last().unwrap())
            .unwrap();
    assert_eq!(last["allow_mixed_precision"], true);
}

/// `icet sweep` of the embedded demo (2 layers, 2 new tokens) into `out`, unpacking the demo
/// into the temporary folder `tmp`.
fn demo_sweep(tmp: &Path, out: &Path) -> Command {
    let mut c = command();
    c.args(["sweep", "--device", "cpu", "--layers", "1,2", "--max-new-tokens", "2", "--out"]).arg(out);
    c.env("TMPDIR", tmp);
    c
}

/// Finding 6: the demo unpacked into one fixed path of the temporary folder: parallel first
/// runs failed or died of SIGBUS (one truncated a file another had mapped), and a link planted
/// there was followed (a file outside was overwritten). Now each process unpacks privately and
/// publishes by rename, and what is planted is never written through.
#[test]
fn parallel_first_demo_runs_succeed_and_planted_links_are_not_followed() {
    let d = scratch("integrity-demo");
    let tmp = d.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let runs: Vec<_> =
        (0..4).map(|k| demo_sweep(&tmp, &d.join(format!("run{k}"))).stderr(Stdio::piped()).spawn().unwrap()).collect();
    for r in runs {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let first = sorted_lines(&d.join("run0/responses.jsonl"));
    for k in 1..4 {
        assert_eq!(sorted_lines(&d.join(format!("run{k}/responses.jsonl"))), first, "run {k}");
    }
    // The name the demo unpacks under, planted elsewhere as a link to a victim's folder.
    let name = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("icet-demo-"))
        .expect("the demo's folder");
    let planted = d.join("planted");
    let victim = d.join("victim");
    std::fs::create_dir_all(victim.join("model")).unwrap();
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(victim.join("model/model.safetensors"), "precious").unwrap();
    std::os::unix::fs::symlink(&victim, planted.join(&name)).unwrap();
    let out = run(&mut demo_sweep(&planted, &d.join("run-planted")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(victim.join("model/model.safetensors")).unwrap(), "precious");
    assert_eq!(std::fs::read_dir(victim.join("model")).unwrap().count(), 1, "nothing written there");
    // The demo's own answers (from its private copy, so only the image paths differ).
    let answers = |p: &Path| -> Vec<(Value, Value, Value)> {
        let rows = sorted_lines(p).into_iter().map(|l| serde_json::from_str::<Value>(&l).unwrap());
        rows.map(|r| (r["id"].clone(), r["layer"].clone(), r["token_ids"].clone())).collect()
    };
    assert_eq!(answers(&d.join("run-planted/responses.jsonl")), answers(&d.join("run0/responses.jsonl")));
}

/// Finding 11: Ctrl-C (and Slurm's SIGTERM) killed a sweep with no word on how to go on. Now
/// the first signal stops it cleanly — every written answer whole, the ones in flight dropped,
/// "interrupted — rerun to resume" — and the rerun gives exactly the uninterrupted result.
#[test]
fn a_signal_stops_a_sweep_cleanly_and_the_rerun_completes_it() {
    let d = scratch("integrity-signal");
    let (model, data) = setup(&d);
    let many: Vec<&str> = PROMPTS.iter().copied().cycle().take(30).collect();
    write_data(&data, &many);
    let args = ["--max-new-tokens", "40", "--batch-size", "4"];
    let reference = d.join("reference");
    ok(&run(&mut sweep(&model, &data, &reference, &args)));
    let whole = sorted_lines(&reference.join("responses.jsonl"));
    for signal in ["INT", "TERM"] {
        let out = d.join(format!("run-{signal}"));
        let child = sweep(&model, &data, &out, &args).stderr(Stdio::piped()).spawn().unwrap();
        let responses = out.join("responses.jsonl");
        let start = Instant::now();
        while !std::fs::read_to_string(&responses).is_ok_and(|t| t.lines().count() >= 3) {
            assert!(start.elapsed() < Duration::from_secs(120), "no answers came");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success());
        let stopped = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&stopped.stderr);
        if stopped.status.success() {
            eprintln!("SIG{signal} came after the last answer; nothing to check");
            continue;
        }
        assert_eq!(stopped.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("icet: interrupted — rerun to resume"), "{stderr}");
        let text = std::fs::read_to_string(&responses).unwrap();
        assert!(text.ends_with('\n'), "no torn row");
        let partial = text.lines().count();
        assert!(partial < whole.len(), "stopped before the end");
        text.lines().for_each(|l| drop(serde_json::from_str::<Value>(l).expect("whole rows")));
        let resumed = run(&mut sweep(&model, &data, &out, &args));
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        assert!(resumed.status.success() && stderr.contains(&format!("{} to go", whole.len() - partial)), "{stderr}");
        assert_eq!(sorted_lines(&responses), whole, "SIG{signal}: resumed answers equal the uninterrupted ones");
    }
}

/// Finding 11: with stderr not a terminal (Slurm, nohup) there was no progress at all. Now a
/// line every ICET_PROGRESS_SECONDS (here after every answer).
#[test]
fn logs_get_progress_lines() {
    let d = scratch("integrity-progress");
    let (model, data) = setup(&d);
    let out = run(sweep(&model, &data, &d.join("run"), &[]).env("ICET_PROGRESS_SECONDS", "0"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("icet: 1/9 answers (11.1%), ") && stderr.contains(" to go"), "{stderr}");
    assert!(stderr.contains("icet: 9/9 answers (100.0%), "), "{stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
}
