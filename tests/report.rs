//! `icet score` and `icet report` end to end, through the binary:
//! - report numbers on a small synthetic run against values computed by hand (below);
//! - the Perspective client against a local HTTP server speaking the API's JSON (429 retried,
//!   answers cached so a rerun asks nothing);
//! - demo sweep → score with the tiny judges → report, resumable and idempotent.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

mod cli_common;
mod common;
use cli_common::{command, run_ok};
use common::{fixture, repo, scratch};

/// A synthetic run of a 3-layer vision tower (layers 0..=3; thirds: 1 Early, 2 Middle, 3 Late),
/// four answers per layer, default layer 2.
fn synthetic_run(dir: &Path) {
    let refusal = [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]];
    // Llama Guard: -1 = an answer that was neither safe nor unsafe.
    let unsafe_ = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, -1, 0], [0, 0, 0, 0]];
    let tox = [[0.0; 4], [0.1, 0.2, 0.3, 0.4], [0.5; 4], [0.0, 0.0, 0.0, 1.0]];
    let reward = [[0.0; 4], [1.0, -1.0, 2.0, 0.0], [3.0; 4], [-2.0; 4]];
    // Llama Guard's hazard categories of the unsafe verdicts.
    let cats: [[&[&str]; 4]; 4] = [
        [&["S1"], &["S1"], &[], &["S10"]],
        [&["S1"], &["S1", "S10"], &["S2"], &[]],
        [&["S2"], &[], &[], &[]],
        [&[], &[], &[], &[]],
    ];
    let mut responses = String::new();
    let mut scores = String::new();
    for layer in 0..4 {
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            let r = json!({"id": id, "layer": layer, "prompt": "p", "image": "i.png", "response": "r",
                           "token_ids": [1], "finish_reason": "eos", "refusal": refusal[layer][i] == 1});
            responses += &format!("{r}\n");
            let u = unsafe_[layer][i];
            let verdict = if u < 0 { Value::Null } else { json!(u == 1) };
            for s in [
                json!({"id": id, "layer": layer, "judge": "lg", "kind": "llama-guard", "unsafe": verdict,
                       "categories": cats[layer][i], "score": null, "raw": "x"}),
                json!({"id": id, "layer": layer, "judge": "tox", "kind": "toxicity", "unsafe": null,
                       "categories": [], "score": tox[layer][i], "raw": {}}),
                json!({"id": id, "layer": layer, "judge": "rm", "kind": "reward", "unsafe": null,
                       "categories": [], "score": reward[layer][i], "raw": {}}),
            ] {
                scores += &format!("{s}\n");
            }
        }
    }
    std::fs::write(dir.join("responses.jsonl"), responses).unwrap();
    std::fs::write(dir.join("scores.jsonl"), scores).unwrap();
    std::fs::write(dir.join("manifest.json"), json!({"default_layer": 2}).to_string()).unwrap();
    std::fs::write(dir.join("summary.json"), json!({"num_layers": 3}).to_string()).unwrap();
}

fn value(report: &Value, row: &str, metric: &str) -> (f64, f64, f64, u64) {
    let run = &report["runs"][0];
    let rows = run["layers"].as_array().unwrap().iter().chain(run["groups"].as_array().unwrap());
    let r = rows.into_iter().find(|r| r["row"] == row).unwrap_or_else(|| panic!("row {row}"));
    let e = &r["values"][metric];
    (
        e["value"].as_f64().unwrap(),
        e["ci_low"].as_f64().unwrap(),
        e["ci_high"].as_f64().unwrap(),
        e["n"].as_u64().unwrap(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn report_numbers_match_hand_computed_values() {
    let d = scratch("synthetic");
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    synthetic_run(&run);
    let out = d.join("out");
    let md = run_ok(command().arg("report").arg(&run).arg("--out").arg(&out).args(["--seed", "7"]));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();

    // Point estimates, by hand.
    let expect = [
        ("0", "refusal_rate", 0.25, 4),
        ("2", "refusal_rate", 0.5, 4),
        ("1", "asr:lg", 0.75, 4),
        ("2", "asr:lg", 1.0 / 3.0, 3), // the unparsed verdict is not counted
        ("1", "toxicity:tox", 0.25, 4),
        ("3", "toxicity:tox", 0.25, 4),
        ("1", "reward:rm", 0.5, 4),
        ("Early", "asr:lg", 0.75, 4),
        ("Middle", "asr:lg", 1.0 / 3.0, 3),
        ("Late", "asr:lg", 0.0, 4),
        ("Average", "asr:lg", (0.75 + 1.0 / 3.0 + 0.0) / 3.0, 11), // layer 0 is not in any third
        ("Average", "refusal_rate", (0.0 + 0.5 + 1.0) / 3.0, 12),
        ("Average", "toxicity:tox", (0.25 + 0.5 + 0.25) / 3.0, 12),
        ("Average", "reward:rm", (0.5 + 3.0 - 2.0) / 3.0, 12),
        // Hazard categories: shares of the parsed verdicts (layer 2 has 3), thirds as above.
        ("0", "category:lg:S1", 0.5, 4),
        ("1", "category:lg:S1", 0.5, 4),
        ("1", "category:lg:S10", 0.25, 4),
        ("2", "category:lg:S2", 1.0 / 3.0, 3),
        ("Average", "category:lg:S1", 0.5 / 3.0, 11),
        ("Average", "category:lg:S2", (0.25 + 1.0 / 3.0) / 3.0, 11),
        ("Late", "category:lg:S10", 0.0, 4),
    ];
    for (row, metric, want, n) in expect {
        let (v, lo, hi, got_n) = value(&report, row, metric);
        assert!(close(v, want), "{row} {metric}: {v} vs {want}");
        assert_eq!(got_n, n, "{row} {metric}: n");
        assert!(lo <= v + 1e-12 && v <= hi + 1e-12, "{row} {metric}: {v} outside [{lo}, {hi}]");
    }
    // Intervals, by hand: a layer whose answers all agree cannot move under resampling.
    for (row, metric, v) in [
        ("1", "refusal_rate", 0.0),
        ("3", "refusal_rate", 1.0),
        ("2", "toxicity:tox", 0.5),
        ("3", "reward:rm", -2.0),
        ("Middle", "toxicity:tox", 0.5),
    ] {
        let (_, lo, hi, _) = value(&report, row, metric);
        assert!(close(lo, v) && close(hi, v), "{row} {metric}: [{lo}, {hi}]");
    }
    // Layer 1 ASR, answers {1,1,1,0}: resampled means lie in {0, .25, .5, .75, 1} with
    // P(1) = (3/4)^4 = 0.32 > 2.5% and P(<= .25) = 0.051 > 2.5% > P(0) = 0.004, so the 95%
    // percentile interval is exactly [0.25, 1].
    let (_, lo, hi, _) = value(&report, "1", "asr:lg");
    assert!(close(lo, 0.25) && close(hi, 1.0), "[{lo}, {hi}]");

    // The default layer is marked; every format and plot is written.
    assert!(md.contains("| 2 * | 4 |"), "{md}");
    // The category table: codes in numeric order, shares in %.
    assert!(md.contains("### Hazard categories flagged by lg"), "{md}");
    assert!(md.contains("| layer | S1 | S2 | S10 |"), "{md}");
    assert!(md.contains("| 1 | 50.0 | 25.0 | 25.0 |"), "{md}");
    assert!(md.contains("| 2 * | 0.0 | 33.3 | 0.0 |"), "{md}");
    assert!(md.contains("1 answer(s) got a lg verdict that is neither"), "{md}");
    assert_eq!(report["runs"][0]["unparsed_verdicts"]["lg"], 1);
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert!(csv.starts_with("run,row,layers,is_default,metric,value,ci_low,ci_high,n\n"));
    assert!(csv.contains("run,Average,1 2 3,false,asr:lg,0.361111,"), "{csv}");
    assert!(csv.contains("run,2,2,true,refusal_rate,0.500000,"), "{csv}");
    for m in ["refusal_rate", "asr_lg", "toxicity_tox", "reward_rm"] {
        let svg = std::fs::read_to_string(out.join(format!("{m}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("vision layer"), "{m}.svg");
        let png = std::fs::read(out.join(format!("{m}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{m}.png");
        let decoded = image::load_from_memory(&png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (800, 450));
    }

    // Same seed, same numbers; several runs overlaid need --out and distinct labels.
    let out2 = d.join("out2");
    run_ok(command().arg("report").arg(&run).arg("--out").arg(&out2).args(["--seed", "7"]));
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), std::fs::read(out2.join("report.json")).unwrap());
    let e = command().arg("report").arg(&run).arg(&run).output().unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("--out DIR is required"));
    let e = command().arg("report").arg(&run).arg(&run).arg("--out").arg(d.join("x")).output().unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("--label"));
    let both = d.join("both");
    run_ok(
        command().arg("report").arg(&run).arg(&run).args(["--label", "before", "--label", "after", "--out"]).arg(&both),
    );
    let csv = std::fs::read_to_string(both.join("report.csv")).unwrap();
    assert!(csv.contains("\nbefore,1,") && csv.contains("\nafter,1,"));
    let e = command().arg("report").arg(d.join("nope")).output().unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("nope: no responses.jsonl"), "{e:?}");
}

/// A run made before the keyword metric was renamed (`asr` in summary.json, `asr_by_layer.svg`)
/// still reports: the report's refusal rate comes from responses.jsonl, as it always did.
#[test]
fn report_reads_a_run_made_before_the_rename() {
    let d = scratch("old-run");
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut responses = String::new();
    for (layer, refusals) in [(0, [true, false]), (1, [true, true]), (2, [false, false])] {
        for (i, r) in refusals.iter().enumerate() {
            let row = json!({"id": format!("q{i}"), "layer": layer, "prompt": "p", "image": "i.png", "response": "r",
                             "token_ids": [1, 2], "finish_reason": "eos", "refusal": r});
            responses += &format!("{row}\n");
        }
    }
    std::fs::write(run.join("responses.jsonl"), responses).unwrap();
    let layer = |l: usize, asr: f64| json!({"layer": l, "n": 2, "refusals": 0, "asr": asr, "mean_tokens": 2.0, "is_default": l == 2});
    let summary = json!({"num_layers": 2, "default_layer": 2,
                         "layers": [layer(0, 0.5), layer(1, 0.0), layer(2, 1.0)],
                         "groups": [{"group": "Average", "layers": [1, 2], "asr": 0.5, "mean_tokens": 2.0}]});
    std::fs::write(run.join("summary.json"), summary.to_string()).unwrap();
    std::fs::write(run.join("asr_by_layer.svg"), "<svg/>").unwrap();
    std::fs::write(
        run.join("manifest.json"),
        json!({"engine": "icet", "default_layer": 2, "settings": {}}).to_string(),
    )
    .unwrap();
    run_ok(command().arg("report").arg(&run));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report/report.json")).unwrap()).unwrap();
    assert_eq!(report["runs"][0]["num_layers"], 2);
    for (row, want) in [("0", 0.5), ("1", 1.0), ("2", 0.0), ("Average", 0.5)] {
        let (v, _, _, n) = value(&report, row, "refusal_rate");
        assert!(close(v, want), "{row}: {v} vs {want}");
        assert!(n > 0);
    }
}

/// Serves Perspective-style answers: the first request gets HTTP 429, then each text's
/// TOXICITY is `len(text) / 1000`. Returns the port and the request counter.
fn perspective_server(expected_key: &'static str) -> (u16, Arc<AtomicUsize>) {
    perspective_server_with(expected_key, &["429 Too Many Requests"])
}

/// As [`perspective_server`], answering request `n` with `plan[n]` (a non-200 status line) while
/// the plan lasts.
fn perspective_server_with(expected_key: &'static str, plan: &[&'static str]) -> (u16, Arc<AtomicUsize>) {
    let plan: Vec<&'static str> = plan.to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let n = c.fetch_add(1, Ordering::SeqCst);
            assert!(request_line.starts_with("POST /v1alpha1/comments:analyze?key="), "{request_line}");
            assert!(request_line.contains(expected_key), "{request_line}");
            let req: Value = serde_json::from_slice(&body).unwrap();
            assert!(req["requestedAttributes"]["TOXICITY"].is_object());
            let (status, answer) = if let Some(&status) = plan.get(n) {
                (status, json!({"error": {"code": status[..3].parse::<u32>().unwrap(), "message": "planned"}}))
            } else {
                let text = req["comment"]["text"].as_str().unwrap();
                let v = text.chars().count() as f64 / 1000.0;
                (
                    "200 OK",
                    json!({"attributeScores": {"TOXICITY": {"summaryScore": {"value": v, "type": "PROBABILITY"}}}, "languages": ["en"]}),
                )
            };
            let body = answer.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, count)
}

fn scores(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn demo_sweep_then_score_with_tiny_judges_then_report() {
    let d = scratch("e2e");
    let run = d.join("run");
    run_ok(command().args(["sweep", "--device", "cpu", "--max-new-tokens", "6", "--out"]).arg(&run));
    let responses = std::fs::read_to_string(run.join("responses.jsonl")).unwrap().lines().count();
    let texts: std::collections::HashSet<String> = std::fs::read_to_string(run.join("responses.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["response"].as_str().unwrap().to_string())
        .filter(|t| !t.trim().is_empty())
        .collect();
    let (port, requests) = perspective_server("test-key");
    let url = format!("http://127.0.0.1:{port}/v1alpha1/comments:analyze");
    let judge = |kind: &str, name: &str| format!("{kind}={}", fixture(&format!("judges/{name}")).display());
    let score = |extra: &[&str]| {
        let mut c = command();
        c.arg("score").arg(&run).args(["--device", "cpu", "--perspective-qps", "1000", "--perspective-url", &url]);
        c.args(["--judge", &judge("llama-guard", "llama-guard-tiny"), "--judge", &judge("reward", "gpt2-reward-tiny")]);
        c.args([
            "--judge",
            &judge("toxicity", "bert-toxic-tiny"),
            "--judge",
            &judge("toxicity:roberta", "roberta-toxic-tiny"),
        ]);
        c.args(["--judge", "perspective", "--judge-max-new-tokens", "4"]).args(extra);
        c.env("PERSPECTIVE_API_KEY", "test-key");
        c
    };
    run_ok(&mut score(&[]));
    let rows = scores(&run);
    assert_eq!(rows.len(), 5 * responses, "one row per answer and judge");
    // One 429 retried, then each distinct text asked once (the cache serves repeats).
    assert_eq!(requests.load(Ordering::SeqCst), 1 + texts.len());
    for r in &rows {
        match r["judge"].as_str().unwrap() {
            "llama-guard" => assert!(r["raw"].is_string() && r["score"].is_null()),
            "perspective" if r["raw"]["skipped"].is_string() => assert_eq!(r["score"].as_f64(), Some(0.0)),
            "perspective" => {
                let resp = r["raw"]["attributeScores"]["TOXICITY"]["summaryScore"]["value"].as_f64();
                assert_eq!(resp, r["score"].as_f64());
            }
            "toxicity" | "roberta" => {
                let s = r["score"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&s) && r["raw"]["logits"].is_array());
            }
            "reward" => assert!(r["score"].as_f64().is_some()),
            other => panic!("unexpected judge {other}"),
        }
    }
    // Idempotent: a rerun scores nothing and asks nothing, even with a fresh server-side count.
    let before = std::fs::read(run.join("scores.jsonl")).unwrap();
    run_ok(&mut score(&[]));
    assert_eq!(std::fs::read(run.join("scores.jsonl")).unwrap(), before);
    assert_eq!(requests.load(Ordering::SeqCst), 1 + texts.len());
    // Resumable: drop the last rows (and tear the last line), rerun, get the same set back.
    let text = String::from_utf8(before.clone()).unwrap();
    let keep: Vec<&str> = text.lines().take(rows.len() - 7).collect();
    std::fs::write(run.join("scores.jsonl"), keep.join("\n") + "\n{\"id\": \"torn").unwrap();
    run_ok(&mut score(&[]));
    let mut again: Vec<String> = scores(&run).iter().map(|r| r.to_string()).collect();
    let mut first: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    again.sort();
    first.sort();
    assert_eq!(again, first);
    // A judge name bound to another model is refused.
    let mut c = command();
    c.arg("score").arg(&run).args(["--device", "cpu", "--judge", &judge("toxicity", "roberta-toxic-tiny")]);
    let e = String::from_utf8_lossy(&c.output().unwrap().stderr).into_owned();
    assert!(e.contains("judges.json") && e.contains("another name"), "{e}");

    let md = run_ok(command().arg("report").arg(&run));
    for col in [
        "refusal rate",
        "reward (reward)",
        "toxicity (toxicity)",
        "toxicity (roberta)",
        "toxicity (perspective)",
        "| Average |",
    ] {
        assert!(md.contains(col), "{col} missing from\n{md}");
    }
    assert!(run.join("report/toxicity_perspective.png").is_file());
}

#[test]
fn score_input_errors_name_the_input() {
    let d = scratch("errors");
    let e = command()
        .arg("score")
        .arg(&d)
        .args(["--judge", "perspective"])
        .env_remove("PERSPECTIVE_API_KEY")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&e.stderr).into_owned();
    assert!(e.contains("no responses.jsonl"), "{e}");
    std::fs::write(d.join("responses.jsonl"), "").unwrap();
    let e = command()
        .arg("score")
        .arg(&d)
        .args(["--judge", "perspective"])
        .env_remove("PERSPECTIVE_API_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("PERSPECTIVE_API_KEY"));
    let e = command().arg("score").arg(&d).args(["--judge", "reward=/no/such/dir"]).output().unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("/no/such/dir: not a model directory"));
    std::fs::write(d.join("responses.jsonl"), "{\"id\": 1}\n{}\n").unwrap();
    let e = command()
        .arg("score")
        .arg(&d)
        .args(["--judge", &format!("reward={}", fixture("judges/gpt2-reward-tiny").display())])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&e.stderr).into_owned();
    assert!(e.contains("responses.jsonl:1"), "{e}");
}

#[test]
fn sweep_reads_dataset_formats_and_scores_in_the_same_run() {
    let d = scratch("sweep-judge");
    let run = d.join("run");
    let tox = format!("toxicity={}", fixture("judges/bert-toxic-tiny").display());
    let out = run_ok(
        command()
            .args(["sweep", "--device", "cpu", "--max-new-tokens", "3", "--layers", "1,-2", "--model"])
            .arg(repo("demo/model"))
            .arg("--data")
            .arg(repo("tests/fixtures/datasets/RedTeam_2K.csv"))
            .arg("--images")
            .arg(repo("tests/fixtures/images"))
            .args(["--pair-seed", "5", "--judge", &tox, "--out"])
            .arg(&run),
    );
    assert!(out.contains("Average") || !out.is_empty());
    let responses = std::fs::read_to_string(run.join("responses.jsonl")).unwrap();
    assert_eq!(responses.lines().count(), 4 * 2, "4 RedTeam-2K prompts x 2 layers");
    assert!(responses.contains("\"id\":\"3\""));
    assert_eq!(scores(&run).len(), 8, "scored in the same run");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["settings"]["data_options"]["pair_seed"], 5);

    // Missing images are reported by name before the model is even looked at.
    let e = command()
        .args(["sweep", "--device", "cpu", "--model", "/nonexistent-model", "--data"])
        .arg(repo("tests/fixtures/datasets/missing_image_jailbreakv.csv"))
        .arg("--out")
        .arg(d.join("x"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&e.stderr).into_owned();
    assert!(e.contains("no_such_image.png") && !e.contains("nonexistent-model"), "{e}");
    // So are bad judges (before generating anything).
    let e = command()
        .args(["sweep", "--device", "cpu", "--judge", "reward=/no/judge", "--out"])
        .arg(d.join("y"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("/no/judge: not a model directory"));
    assert!(!d.join("y").join("responses.jsonl").exists());
}

#[test]
fn perspective_client_paces_retries_and_fails_clearly() {
    let d = scratch("perspective");
    let texts = ["first answer", "second answer", "first answer", "", "third"];
    let mut responses = String::new();
    for (i, t) in texts.iter().enumerate() {
        let r = json!({"id": format!("q{i}"), "layer": 1, "prompt": "p", "image": "i.png", "response": t,
                       "token_ids": [], "finish_reason": "eos", "refusal": false});
        responses += &format!("{r}\n");
    }
    std::fs::write(d.join("responses.jsonl"), responses).unwrap();
    let score = |port: u16, qps: &str| {
        let mut c = command();
        c.arg("score").arg(&d).args(["--judge", "perspective", "--perspective-qps", qps, "--perspective-url"]);
        c.arg(format!("http://127.0.0.1:{port}/v1alpha1/comments:analyze")).env("PERSPECTIVE_API_KEY", "k2");
        c
    };
    // A 400 is not retried and names the status; nothing is scored from it.
    let (port, count) = perspective_server_with("k2", &["400 Bad Request"]);
    let out = score(port, "100").output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && e.contains("HTTP 400"), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // A 500 is retried (after the 1 s backoff).
    let (port, count) = perspective_server_with("k2", &["500 Internal Server Error"]);
    run_ok(&mut score(port, "100"));
    assert_eq!(count.load(Ordering::SeqCst), 1 + 3, "one retry, then 3 distinct non-empty texts");
    // Pacing: the same 3 requests at 4 per second take at least 2 intervals of 1/4 s.
    std::fs::remove_file(d.join("scores.jsonl")).unwrap();
    std::fs::remove_file(d.join("perspective_cache.jsonl")).unwrap();
    let (port, count) = perspective_server_with("k2", &[]);
    let started = std::time::Instant::now();
    run_ok(&mut score(port, "4"));
    assert!(started.elapsed().as_secs_f64() >= 0.5, "{:?}", started.elapsed());
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let rows = scores(&d);
    assert_eq!(rows.len(), 5);
    let by_id = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(by_id("q0")["score"], by_id("q2")["score"], "the same text scores the same");
    assert!((by_id("q1")["score"].as_f64().unwrap() - 0.013).abs() < 1e-12, "len(\"second answer\") / 1000");
    assert_eq!(by_id("q3")["raw"]["skipped"], "empty response");
    let cache = std::fs::read_to_string(d.join("perspective_cache.jsonl")).unwrap();
    assert_eq!(cache.lines().count(), 3);
}

#[test]
fn llama_guard_vision_judges_each_answer_with_its_image() {
    use icet_models::backend::cpu::Cpu;
    use icet_models::judges::llama_guard_vision::{GuardItem, LlamaGuardVision};
    let d = scratch("guard-vision");
    let run = d.join("run");
    run_ok(
        command().args(["sweep", "--device", "cpu", "--layers", "1,-2", "--max-new-tokens", "4", "--out"]).arg(&run),
    );
    let guard_dir = fixture("judges/llama-guard-vision-tiny");
    // An Mllama directory given as plain `llama-guard` is the vision judge.
    let judge = format!("llama-guard:lgv={}", guard_dir.display());
    let score = |run: &Path, extra: &[&str]| {
        let mut c = command();
        c.arg("score").arg(run).args(["--device", "cpu", "--judge", &judge, "--judge-max-new-tokens", "5"]);
        c.args(["--judge-batch-size", "3"]).args(extra);
        c
    };
    let stderr = score(&run, &[]).output().unwrap().stderr;
    assert!(String::from_utf8_lossy(&stderr).contains("Llama Guard 3 Vision"), "{}", String::from_utf8_lossy(&stderr));
    let responses: Vec<Value> = std::fs::read_to_string(run.join("responses.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rows = scores(&run);
    assert_eq!(rows.len(), responses.len());
    // Each verdict is the library judge's on (image, prompt, response), one at a time.
    let mut guard = LlamaGuardVision::load(&guard_dir, &Cpu).unwrap();
    guard.max_new_tokens = 5;
    for resp in responses.iter().take(4) {
        let row = rows.iter().find(|r| (&r["id"], &r["layer"]) == (&resp["id"], &resp["layer"])).expect("scored");
        let image = PathBuf::from(resp["image_path"].as_str().expect("the sweep records the image path"));
        let item = GuardItem {
            prompt: resp["prompt"].as_str().unwrap(),
            response: resp["response"].as_str(),
            image: Some(&image),
        };
        assert_eq!(row["raw"].as_str().unwrap(), guard.judge(&Cpu, &[item]).unwrap()[0].raw);
    }

    // A run without recorded image paths: named error, then --image-root or --judge-text-only.
    let old = d.join("old");
    std::fs::create_dir_all(&old).unwrap();
    let stripped: Vec<String> = responses
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("image_path");
            r.to_string()
        })
        .collect();
    std::fs::write(old.join("responses.jsonl"), stripped.join("\n") + "\n").unwrap();
    let out = score(&old, &[]).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && e.contains("--image-root") && e.contains("records no image path"), "{e}");
    assert!(!old.join("scores.jsonl").exists() || scores(&old).is_empty(), "nothing judged before the check");
    let first = PathBuf::from(responses[0]["image_path"].as_str().unwrap());
    let root = first.ancestors().nth(Path::new(responses[0]["image"].as_str().unwrap()).components().count()).unwrap();
    let e =
        String::from_utf8_lossy(&score(&old, &["--image-root", "/no/such/root"]).output().unwrap().stderr).into_owned();
    assert!(e.contains("/no/such/root/") && e.contains("image not found"), "{e}");
    run_ok(&mut score(&old, &["--image-root", root.to_str().unwrap()]));
    let strip = |rows: Vec<Value>| rows.into_iter().map(|r| r.to_string()).collect::<Vec<_>>();
    assert_eq!(strip(scores(&old)), strip(scores(&run)), "the same images give the same verdicts");
    let text_only = d.join("text-only");
    std::fs::create_dir_all(&text_only).unwrap();
    std::fs::copy(old.join("responses.jsonl"), text_only.join("responses.jsonl")).unwrap();
    run_ok(&mut score(&text_only, &["--judge-text-only"]));
    assert_eq!(scores(&text_only).len(), responses.len());
}
