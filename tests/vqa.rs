//! `icet vqa-eval` end to end: on files in the official formats that the official evaluation
//! (GT-Vision-Lab/VQA's vqaEval.py, run by tools/fixtures/make_vqa_fixtures.py) scored, every
//! number equal; and one-line errors naming the file and the question id for bad inputs.
//!
//! VQA-v2 as a sweep's data, through the binary: missing COCO images named before any model
//! loads; a demo-sized run (the tiny LLaVA on the fixture images) through sweep → score (`vqa`,
//! the DeBERTa reward model) → report, the report's accuracy equal to `icet vqa-eval` on the
//! official results files of the same answers.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

mod cli_common;
mod common;
use cli_common::{assert_one_line_error, icet};
use common::{fixture, scratch};

fn eval_json(dir: &Path, extra: &[&str]) -> (Value, String) {
    let mut args = vec![
        "vqa-eval".to_string(),
        "--questions".into(),
        dir.join("questions.json").display().to_string(),
        "--annotations".into(),
        dir.join("annotations.json").display().to_string(),
        "--results".into(),
        dir.join("results.json").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = icet(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    (serde_json::from_str(&last).unwrap_or(Value::Null), stdout)
}

/// Our object against the official `accuracy` and `evalQA`: the same keys, the same doubles.
fn assert_official(ours: &Value, expected: &Value) {
    let acc = &expected["accuracy"];
    assert_eq!(ours["overall"], acc["overall"]);
    assert_eq!(ours["perQuestionType"], acc["perQuestionType"]);
    assert_eq!(ours["perAnswerType"], acc["perAnswerType"]);
    assert_eq!(ours["perQuestion"], expected["evalQA"]);
    assert_eq!(ours.as_object().unwrap().len(), 4, "{{overall, perQuestionType, perAnswerType, perQuestion}}");
}

#[test]
fn reproduces_the_official_evaluation() {
    for set in ["random", "tie"] {
        let dir = fixture("vqa").join(set);
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let out = scratch(&format!("vqa-{set}")).join("acc.json");
        let (ours, _) = eval_json(&dir, &["--json", "--out", out.to_str().unwrap()]);
        assert_official(&ours, &expected);
        let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(written, ours, "--out holds the same object");
    }
    // The tie set: 100 · 1/32 = 3.125 exactly; Python 2's round gives 3.13.
    let (ours, _) = eval_json(&fixture("vqa/tie"), &["--json"]);
    assert_eq!(ours["overall"], json!(3.13));
}

#[test]
fn text_output_has_the_tables() {
    let (_, stdout) = eval_json(&fixture("vqa/random"), &[]);
    assert!(stdout.contains("300 questions"), "{stdout}");
    assert!(stdout.contains("Overall: 53.70"), "{stdout}");
    assert!(stdout.contains("Per answer type:") && stdout.contains("  yes/no "), "{stdout}");
    assert!(stdout.contains("Per question type:") && stdout.contains("  how many "), "{stdout}");
}

/// The tie set's files under `dir`, with `edit` applied to (questions, annotations, results).
fn edited(name: &str, edit: impl FnOnce(&mut Value, &mut Value, &mut Value)) -> PathBuf {
    let src = fixture("vqa/tie");
    let read = |f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(src.join(f)).unwrap()).unwrap() };
    let (mut q, mut a, mut r) = (read("questions.json"), read("annotations.json"), read("results.json"));
    edit(&mut q, &mut a, &mut r);
    let dir = scratch(&format!("vqa-bad-{name}"));
    for (f, v) in [("questions.json", &q), ("annotations.json", &a), ("results.json", &r)] {
        std::fs::write(dir.join(f), v.to_string()).unwrap();
    }
    dir
}

fn run_on(dir: &Path) -> std::process::Output {
    let p = |f: &str| dir.join(f).display().to_string();
    icet(&[
        "vqa-eval",
        "--questions",
        &p("questions.json"),
        "--annotations",
        &p("annotations.json"),
        "--results",
        &p("results.json"),
    ])
}

#[test]
fn bad_inputs_are_one_line_errors_naming_file_and_question() {
    // Malformed JSON.
    let dir = edited("malformed", |_, _, _| {});
    std::fs::write(dir.join("results.json"), "[{\"question_id\": 500000, \"answer\": \"cat\"},").unwrap();
    assert_one_line_error(&run_on(&dir), "results.json: EOF while parsing");
    // A non-string answer, in the results and in the annotations.
    let dir = edited("number", |_, _, r| r[3]["answer"] = json!(2));
    let qid = {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        r[3]["question_id"].as_u64().unwrap()
    };
    assert_one_line_error(&run_on(&dir), &format!("results.json: question {qid}: `answer` is not a string (got 2)"));
    let dir = edited("gt-number", |_, a, _| a["annotations"][4]["answers"][7]["answer"] = json!(3));
    assert_one_line_error(&run_on(&dir), "annotations.json: question 500004: answer 8 is not a string (got 3)");
    // Missing fields.
    let dir = edited("no-answer", |_, _, r| {
        r[0].as_object_mut().unwrap().remove("answer");
    });
    assert_one_line_error(&run_on(&dir), "results.json: question 500000: no `answer`");
    let dir = edited("no-type", |_, a, _| {
        a["annotations"][9].as_object_mut().unwrap().remove("answer_type");
    });
    assert_one_line_error(&run_on(&dir), "annotations.json: question 500009: no `answer_type`");
    let dir = edited("no-qid", |_, _, r| {
        r[2].as_object_mut().unwrap().remove("question_id");
    });
    assert_one_line_error(&run_on(&dir), "results.json: result 3: no `question_id`");
    // Ids that do not match: missing and extra answers, named.
    let dir = edited("ids", |_, _, r| {
        let arr = r.as_array_mut().unwrap();
        arr.retain(|x| x["question_id"] != 500007 && x["question_id"] != 500011);
        arr.push(json!({"question_id": 999, "answer": "cat"}));
    });
    let out = run_on(&dir);
    assert_one_line_error(&out, "no answer for 2 question id(s) of");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("500007, 500011")
            && stderr.contains("1 answer(s) for question id(s) not in")
            && stderr.contains("999"),
        "{stderr}"
    );
    let dir = edited("dup", |_, _, r| {
        let first = r[0].clone();
        r.as_array_mut().unwrap().push(first);
    });
    assert_one_line_error(&run_on(&dir), "results.json: question id(s) answered more than once: 500000");
    // Annotations and questions from different sets.
    let dir = edited("split", |q, _, _| {
        q["questions"].as_array_mut().unwrap().remove(1);
    });
    assert_one_line_error(&run_on(&dir), "questions.json: no question for 1 question id(s) of");
    let dir = edited("image", |q, _, _| q["questions"][2]["image_id"] = json!(8));
    assert_one_line_error(&run_on(&dir), "annotations.json: question 500002 is about image 8 in");
    // A missing file.
    let out = icet(&["vqa-eval", "--questions", "/nonexistent/q.json", "--annotations", "a", "--results", "r"]);
    assert_one_line_error(&out, "/nonexistent/q.json: cannot read");
}

// ---- VQA-v2 as a sweep's data ----------------------------------------------------------------

/// The fixture images as COCO val2014 files (PNG content under a .jpg name: formats are sniffed).
const COCO: [(u64, &str); 3] = [(1, "square.png"), (2, "wide.jpg"), (3, "gray.png")];

/// A VQA-v2 set in the official layouts under `dir`: `(question id, image id, answer type,
/// question type, the ten annotators' answers)`; the COCO folder `dir/val2014` holds the images.
fn vqa_set(dir: &Path, rows: &[(u64, u64, &str, &str, Vec<String>)]) -> (PathBuf, PathBuf, PathBuf) {
    let qs: Vec<Value> = rows
        .iter()
        .map(|(q, i, _, qt, _)| json!({"image_id": i, "question": format!("{qt} thing {q}?"), "question_id": q}))
        .collect();
    let anns: Vec<Value> = rows
        .iter()
        .map(|(q, i, at, qt, answers)| {
            let answers: Vec<Value> = answers
                .iter()
                .enumerate()
                .map(|(k, a)| json!({"answer": a, "answer_confidence": "yes", "answer_id": k + 1}))
                .collect();
            json!({"question_type": qt, "multiple_choice_answer": answers[0]["answer"], "answers": answers,
                   "image_id": i, "answer_type": at, "question_id": q})
        })
        .collect();
    let q = dir.join("v2_OpenEnded_mscoco_val2014_questions.json");
    let a = dir.join("v2_mscoco_val2014_annotations.json");
    std::fs::write(
        &q,
        json!({"info": {}, "task_type": "OpenEnded", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
               "questions": qs})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        &a,
        json!({"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014", "annotations": anns})
            .to_string(),
    )
    .unwrap();
    let images = dir.join("val2014");
    std::fs::create_dir_all(&images).unwrap();
    for (id, file) in COCO {
        std::fs::copy(fixture("images").join(file), images.join(format!("COCO_val2014_{id:012}.jpg"))).unwrap();
    }
    (q, a, images)
}

fn ten(answer: &str) -> Vec<String> {
    vec![answer.to_string(); 10]
}

#[test]
fn sweep_names_missing_coco_images_before_the_model() {
    let d = scratch("vqa-missing");
    let rows = vec![
        (11, 1, "yes/no", "is the", ten("yes")),
        (12, 7, "number", "how many", ten("2")),
        (13, 9, "other", "what color", ten("red")),
    ];
    let (q, a, images) = vqa_set(&d, &rows);
    let out = cli_common::command()
        .args(["sweep", "--device", "cpu", "--model", "/nonexistent-model", "--data"])
        .arg(&q)
        .arg("--vqa-annotations")
        .arg(&a)
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(d.join("run"))
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        "2 COCO image(s) not found: COCO_val2014_000000000007.jpg, COCO_val2014_000000000009.jpg",
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("nonexistent-model"), "the data is checked first");
    assert!(!d.join("run").exists(), "nothing written");
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `icet vqa-eval --json` on DIR/questions.json, DIR/annotations.json and `results`.
fn vqa_eval(dir: &Path, results: &Path) -> Value {
    let out = cli_common::run_ok(
        cli_common::command()
            .arg("vqa-eval")
            .arg("--questions")
            .arg(dir.join("questions.json"))
            .arg("--annotations")
            .arg(dir.join("annotations.json"))
            .arg("--results")
            .arg(results)
            .arg("--json"),
    );
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// `round(100 * v, 2)` of a report value (no report mean sits near a rounding tie here: every
/// question's accuracy is a multiple of 1/30).
fn pct2(v: f64) -> f64 {
    (v * 100.0 * 100.0).round() / 100.0
}

fn row_value(report: &Value, row: &str, key: &str) -> Option<(f64, f64, f64)> {
    let run = &report["runs"][0];
    let rows = run["layers"].as_array().unwrap().iter().chain(run["groups"].as_array().unwrap());
    let r = rows.into_iter().find(|r| r["row"] == row)?;
    let e = r["values"].get(key)?;
    Some((e["value"].as_f64()?, e["ci_low"].as_f64()?, e["ci_high"].as_f64()?))
}

#[test]
fn demo_vqa_run_goes_sweep_score_report_and_matches_vqa_eval() {
    use icet_models::backend::cpu::Cpu;
    use icet_models::judges::deberta_reward::DebertaReward;
    let d = scratch("vqa-demo");
    // Four questions; --max-items 3 keeps one of each answer type (shares .75 / .75 / 1.5 → 1 / 1 / 1).
    let placeholder = |q, i, at, qt| (q, i, at, qt, ten("zzz"));
    let rows = vec![
        placeholder(11, 1, "yes/no", "is the"),
        placeholder(12, 2, "number", "how many"),
        placeholder(13, 3, "other", "what color"),
        placeholder(14, 1, "other", "what is"),
    ];
    let (q, a, images) = vqa_set(&d, &rows);
    let sweep = |annotations: &Path, out: &Path| {
        cli_common::run_ok(
            cli_common::command()
                .args(["sweep", "--device", "cpu", "--model"])
                .arg(common::repo("demo/model"))
                .args(["--layers", "all", "--max-new-tokens", "4", "--max-items", "3", "--sample-seed", "5", "--data"])
                .arg(&q)
                .arg("--vqa-annotations")
                .arg(annotations)
                .arg("--images")
                .arg(&images)
                .arg("--out")
                .arg(out),
        )
    };
    let score = |run: &Path, judges: &[&str]| {
        let mut c = cli_common::command();
        c.arg("score").arg(run).args(["--device", "cpu"]);
        for j in judges {
            c.args(["--judge", j]);
        }
        cli_common::run_ok(&mut c)
    };

    // A first run against placeholder annotations: nothing is right, and the scores keep each
    // answer as prepared for the results file.
    let first = d.join("first");
    sweep(&a, &first);
    let manifest = common::read_json(&first.join("manifest.json"));
    let opts = &manifest["settings"]["data_options"];
    assert_eq!((opts["data_format"].as_str(), opts["max_items"].as_u64()), (Some("vqa-v2"), Some(3)));
    assert_eq!(opts["annotations"], json!(std::fs::canonicalize(&a).unwrap()));
    assert_eq!(opts["prompt_suffix"], "Answer the question using a single word or phrase.");
    let responses = jsonl(&first.join("responses.jsonl"));
    assert_eq!(responses.len(), 3 * 7, "3 sampled questions x layers 0..=6");
    let mut asked: Vec<&str> = responses.iter().map(|r| r["id"].as_str().unwrap()).collect();
    asked.sort();
    asked.dedup();
    assert!(asked.len() == 3 && asked.contains(&"11") && asked.contains(&"12"), "{asked:?}");
    let r11 = responses.iter().find(|r| r["id"] == "11").unwrap();
    assert_eq!(r11["prompt"], "is the thing 11?\nAnswer the question using a single word or phrase.");
    assert_eq!(r11["image"], "COCO_val2014_000000000001.jpg");
    score(&first, &["vqa"]);
    let placeholder_scores = jsonl(&first.join("scores.jsonl"));
    assert_eq!(placeholder_scores.len(), responses.len());
    assert!(placeholder_scores.iter().all(|s| s["kind"] == "vqa" && s["score"] == 0.0), "zzz matches nothing");
    let prepared = |id: &str, layer: u64| -> String {
        let s = placeholder_scores.iter().find(|s| s["id"] == id && s["layer"] == layer).unwrap();
        s["raw"]["answer"].as_str().unwrap().to_string()
    };

    // Annotations made of the answers of some layers, so accuracies differ by layer: question 11
    // unanimous on layer 5's answer (no normalisation), the others 3 × one layer's, 2 × another's,
    // 1 × a third's and 4 × something else.
    let mut truth = vec![(11, 1, "yes/no", "is the", ten(&prepared("11", 5)))];
    for (id, layers) in [("12", [2, 6, 0]), (asked[2], [4, 1, 3])] {
        let mut answers: Vec<String> = Vec::new();
        for (k, l) in [3, 2, 1].into_iter().zip(layers) {
            answers.extend(std::iter::repeat_n(prepared(id, l), k));
        }
        answers.extend(std::iter::repeat_n("zzz".to_string(), 4));
        let (qid, img, at, qt, _) = rows.iter().find(|r| r.0.to_string() == id).unwrap().clone();
        truth.push((qid, img, at, qt, answers));
    }
    truth.push(rows.iter().find(|r| !asked.contains(&r.0.to_string().as_str())).unwrap().clone());
    truth.sort_by_key(|r| r.0);
    let truth_dir = d.join("truth");
    std::fs::create_dir_all(&truth_dir).unwrap();
    let (_, a2, _) = vqa_set(&truth_dir, &truth);

    // The run proper: the same answers (greedy), scored by `vqa` (LLaVA's preparation), `vqa`
    // with verbatim answers, and the DeBERTa reward model.
    let run = d.join("run");
    sweep(&a2, &run);
    let again = jsonl(&run.join("responses.jsonl"));
    let key =
        |r: &Value| (r["id"].as_str().unwrap().to_string(), r["layer"].as_u64().unwrap(), r["response"].to_string());
    let mut k1: Vec<_> = responses.iter().map(key).collect();
    let mut k2: Vec<_> = again.iter().map(key).collect();
    k1.sort();
    k2.sort();
    assert_eq!(k1, k2, "the same questions and answers");
    let deberta = fixture("judges/deberta-v3-reward-tiny");
    score(&run, &["vqa", &format!("reward:deberta={}", deberta.display())]);
    let mut c = cli_common::command();
    c.arg("score").arg(&run).args(["--device", "cpu", "--judge", "vqa:verbatim", "--vqa-answers", "verbatim"]);
    cli_common::run_ok(&mut c);
    let scores = jsonl(&run.join("scores.jsonl"));
    assert_eq!(scores.len(), 3 * again.len());
    let judges = common::read_json(&run.join("judges.json"));
    assert_eq!(judges["vqa"]["answers"], "llava");
    assert_eq!(judges["vqa"]["dir"], json!(std::fs::canonicalize(&a2).unwrap()), "the run's annotations");
    assert_eq!(judges["verbatim"]["answers"], "verbatim");
    // The unanimous question: layer 5's answer is right, and scores exactly 1.
    let vqa_score = |judge: &str, id: &str, layer: u64| {
        scores.iter().find(|s| s["judge"] == judge && s["id"] == id && s["layer"] == layer).unwrap()["score"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(vqa_score("vqa", "11", 5), 1.0);
    // Question 12, by the official leave-one-out rule: with m of the 10 annotators matching,
    // accuracy = ((10 − m) · min(1, m/3) + m · min(1, (m − 1)/3)) / 10 (3 matches: 0.9).
    let gt12 = &truth.iter().find(|t| t.0 == 12).unwrap().4;
    for layer in 0..=6 {
        let m = gt12.iter().filter(|g| **g == prepared("12", layer)).count() as f64;
        let want = ((10.0 - m) * (m / 3.0).min(1.0) + m * ((m - 1.0).max(0.0) / 3.0).min(1.0)) / 10.0;
        assert!((vqa_score("vqa", "12", layer) - want).abs() < 1e-12, "layer {layer}: {m} matches");
    }
    assert!(vqa_score("vqa", "12", 2) >= 0.9, "at least 3 of 10 annotators gave layer 2's answer");
    for s in scores.iter().filter(|s| s["kind"] == "vqa") {
        let at = truth.iter().find(|t| t.0.to_string() == s["id"].as_str().unwrap()).unwrap().2;
        assert_eq!(s["raw"]["answer_type"], at);
    }
    // DeBERTa: the reward of (the prompt as asked, the response), as the library scores it.
    let rm = DebertaReward::load(&deberta, &Cpu).unwrap();
    for r in again.iter().take(4) {
        let s =
            scores.iter().find(|s| s["judge"] == "deberta" && s["id"] == r["id"] && s["layer"] == r["layer"]).unwrap();
        let want = rm.score(&Cpu, r["prompt"].as_str().unwrap(), r["response"].as_str().unwrap()).unwrap();
        // The logit is an f32 (JSON's parse may miss its f64 widening by an ulp).
        assert_eq!(s["score"].as_f64().unwrap() as f32, want);
        assert_eq!(s["kind"], "reward");
    }

    // The report: accuracy per layer and per third with intervals, per answer type.
    let md = cli_common::run_ok(cli_common::command().arg("report").arg(&run));
    let report = common::read_json(&run.join("report/report.json"));
    for col in
        ["VQA accuracy (vqa)", "VQA accuracy (verbatim)", "reward (deberta)", "### VQA accuracy (vqa) by answer type"]
    {
        assert!(md.contains(col), "{col} missing from\n{md}");
    }
    assert!(md.contains("| layer | number | other | yes/no |"), "{md}");
    let mut best = 0.0f64;
    for row in ["0", "1", "2", "3", "4", "5", "6", "Early", "Middle", "Late", "Average"] {
        let (v, lo, hi) = row_value(&report, row, "vqa:vqa").unwrap_or_else(|| panic!("row {row}"));
        assert!(lo <= v + 1e-12 && v <= hi + 1e-12 && (0.0..=1.0).contains(&v), "{row}: {v} [{lo}, {hi}]");
        best = best.max(v);
    }
    assert!(best > 0.0, "some layer's answers are right");
    let (early, _, _) = row_value(&report, "Early", "vqa:vqa").unwrap();
    let (l1, _, _) = row_value(&report, "1", "vqa:vqa").unwrap();
    let (l2, _, _) = row_value(&report, "2", "vqa:vqa").unwrap();
    assert!((early - (l1 + l2) / 2.0).abs() < 1e-12, "Early = mean of layers 1 and 2 (of 6)");

    // The official results files the report wrote: icet vqa-eval on them gives the report's
    // numbers, overall, per answer type and per question, at every layer.
    let files = run.join("report/vqa_results/run/vqa");
    let mut checked = 0;
    for layer in 0..=6u64 {
        let official = vqa_eval(&files, &files.join(format!("layer{layer}.json")));
        let (v, _, _) = row_value(&report, &layer.to_string(), "vqa:vqa").unwrap();
        assert_eq!(official["overall"].as_f64().unwrap(), pct2(v), "layer {layer}");
        for t in ["yes/no", "number", "other"] {
            let (v, _, _) = row_value(&report, &layer.to_string(), &format!("vqa:vqa:{t}")).unwrap();
            assert_eq!(official["perAnswerType"][t].as_f64().unwrap(), pct2(v), "layer {layer} {t}");
        }
        for id in &asked {
            assert_eq!(official["perQuestion"][*id].as_f64().unwrap(), pct2(vqa_score("vqa", id, layer)));
        }
        // report.md shows the official (Python 2-rounded) number.
        let line =
            md.lines().find(|l| l.starts_with(&format!("| {layer} |")) || l.starts_with(&format!("| {layer} * |")));
        let shown = format!(" {:.2} [", official["overall"].as_f64().unwrap());
        assert!(line.is_some_and(|l| l.contains(&shown)), "layer {layer}: {shown} not in {line:?}");
        checked += 1;
    }
    assert_eq!(checked, 7);
    let questions = common::read_json(&files.join("questions.json"));
    assert_eq!(questions["questions"].as_array().unwrap().len(), 3, "the run's questions only");

    // The official results file written here from the run's own answers of one layer (verbatim)
    // against the report's verbatim accuracy.
    let layer = 3;
    let results: Vec<Value> = again
        .iter()
        .filter(|r| r["layer"] == layer)
        .map(|r| json!({"question_id": r["id"].as_str().unwrap().parse::<u64>().unwrap(), "answer": r["response"]}))
        .collect();
    let mine = d.join("results.layer3.json");
    std::fs::write(&mine, Value::Array(results).to_string()).unwrap();
    let official = vqa_eval(&files, &mine);
    let (v, _, _) = row_value(&report, "3", "vqa:verbatim").unwrap();
    assert_eq!(official["overall"].as_f64().unwrap(), pct2(v));
    assert_eq!(vqa_eval(&files, &run.join("report/vqa_results/run/verbatim/layer3.json")), official);

    // The safety–utility picture: a safety run of the same model (Llama Guard verdicts, written
    // here: ASR 1 - l/6 at layer l) reported beside this one.
    let safety = d.join("safety");
    std::fs::create_dir_all(&safety).unwrap();
    let (mut resp, mut sc) = (String::new(), String::new());
    for layer in 0..=6usize {
        for (i, id) in ["p1", "p2", "p3", "p4", "p5", "p6"].iter().enumerate() {
            let r = json!({"id": id, "layer": layer, "prompt": "p", "image": "i.png", "response": "r", "token_ids": [1],
                           "finish_reason": "eos", "refusal": false});
            let s = json!({"id": id, "layer": layer, "judge": "lg", "kind": "llama-guard", "unsafe": i + layer < 6,
                           "categories": [], "score": null, "raw": "x"});
            resp += &format!("{r}\n");
            sc += &format!("{s}\n");
        }
    }
    std::fs::write(safety.join("responses.jsonl"), resp).unwrap();
    std::fs::write(safety.join("scores.jsonl"), sc).unwrap();
    std::fs::write(safety.join("manifest.json"), json!({"default_layer": 5, "settings": {}}).to_string()).unwrap();
    std::fs::write(safety.join("summary.json"), json!({"num_layers": 6}).to_string()).unwrap();
    let both = d.join("both");
    let md = cli_common::run_ok(
        cli_common::command()
            .arg("report")
            .arg(&safety)
            .arg(&run)
            .args(["--label", "safety", "--label", "utility", "--out"])
            .arg(&both),
    );
    assert!(md.contains("## Safety and utility by layer") && md.contains("Unsafe and still useful by"), "{md}");
    let report = common::read_json(&both.join("report.json"));
    let su = &report["safety_utility"];
    let titles: Vec<&str> = su["columns"].as_array().unwrap().iter().map(|c| c["title"].as_str().unwrap()).collect();
    assert_eq!(
        titles,
        [
            "ASR (lg) · safety",
            "VQA accuracy (verbatim) · utility",
            "VQA accuracy (vqa) · utility",
            "reward (deberta) · utility"
        ]
    );
    // Each cell is the run's own estimate; the flags follow their definition.
    let est = |run: usize, row: &str, key: &str| {
        let r = &report["runs"][run];
        r["layers"].as_array().unwrap().iter().chain(r["groups"].as_array().unwrap()).find(|x| x["row"] == row).unwrap()
            ["values"][key]
            .clone()
    };
    let cols = su["columns"].as_array().unwrap();
    for row in su["rows"].as_array().unwrap() {
        for (c, v) in cols.iter().zip(row["values"].as_array().unwrap()) {
            let run = if c["run"] == "safety" { 0 } else { 1 };
            assert_eq!(*v, est(run, row["row"].as_str().unwrap(), c["key"].as_str().unwrap()), "{row} {c}");
        }
    }
    for (p, acc_key) in su["pairs"].as_array().unwrap().iter().zip(["vqa:verbatim", "vqa:vqa"]) {
        let (asr5, acc5) =
            (est(0, "5", "asr:lg")["value"].as_f64().unwrap(), est(1, "5", acc_key)["value"].as_f64().unwrap());
        let want: Vec<u64> = (0..=6u64)
            .filter(|&l| {
                let l_ = l.to_string();
                l != 5
                    && est(0, &l_, "asr:lg")["value"].as_f64().unwrap() > asr5
                    && est(1, &l_, acc_key)["ci_high"].as_f64().unwrap() >= acc5
            })
            .collect();
        assert_eq!(p["flagged"], json!(want), "{acc_key}");
    }
    for f in ["safety_utility.png", "asr_vs_accuracy.png", "asr_vs_accuracy_2.svg"] {
        assert!(both.join(f).is_file(), "{f}");
    }
}

#[test]
fn vqa_judge_needs_vqa_data() {
    let d = scratch("vqa-judge-data");
    // Before anything is generated.
    let out = cli_common::command()
        .args(["sweep", "--device", "cpu", "--judge", "vqa", "--out"])
        .arg(d.join("x"))
        .output()
        .unwrap();
    assert_one_line_error(&out, "--judge vqa: scores VQA-v2 answers");
    assert!(!d.join("x/responses.jsonl").exists());
    // A run that did not read VQA-v2.
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let row = json!({"id": "a", "layer": 1, "prompt": "p", "image": "i.png", "response": "r", "token_ids": [1],
                     "finish_reason": "eos", "refusal": false});
    std::fs::write(run.join("responses.jsonl"), format!("{row}\n")).unwrap();
    std::fs::write(run.join("manifest.json"), json!({"settings": {"data": "x.jsonl"}}).to_string()).unwrap();
    let out = cli_common::command().arg("score").arg(&run).args(["--judge", "vqa"]).output().unwrap();
    assert_one_line_error(&out, "this run was not made from VQA-v2 data");
    // Given annotations, answer ids must be their question ids.
    let (_, a, _) = vqa_set(&d, &[(11, 1, "yes/no", "is the", ten("yes"))]);
    let out = cli_common::command()
        .arg("score")
        .arg(&run)
        .arg("--judge")
        .arg(format!("vqa={}", a.display()))
        .output()
        .unwrap();
    assert_one_line_error(&out, "no annotation for answer id `a`");
}

/// Issue 14, findings 2 and 8 on VQA-v2 data: a question edited since its answers were made is
/// refused by its question id on resume (as a safety row is), and scores made against other
/// annotations are never mixed with the old ones under one judge name.
#[test]
fn vqa_runs_never_mix_other_questions_or_annotations() {
    let d = scratch("vqa-never-mixed");
    let rows = vec![(11, 1, "yes/no", "is the", ten("yes")), (12, 2, "number", "how many", ten("2"))];
    let (q, a, images) = vqa_set(&d, &rows);
    let run = d.join("run");
    let sweep = || {
        cli_common::command()
            .args(["sweep", "--device", "cpu", "--model"])
            .arg(common::repo("demo/model"))
            .args(["--layers", "0,-2", "--max-new-tokens", "2", "--data"])
            .arg(&q)
            .arg("--vqa-annotations")
            .arg(&a)
            .arg("--images")
            .arg(&images)
            .arg("--out")
            .arg(&run)
            .output()
            .unwrap()
    };
    cli_common::ok(&sweep());
    let score =
        || cli_common::command().arg("score").arg(&run).args(["--device", "cpu", "--judge", "vqa"]).output().unwrap();
    cli_common::ok(&score());
    assert_eq!(jsonl(&run.join("scores.jsonl")).len(), 4);

    // The annotations edited in place: the run's `vqa` scores were made against the old ones.
    let text = std::fs::read_to_string(&a).unwrap();
    std::fs::write(&a, text.replace("\"2\"", "\"3\"")).unwrap();
    let out = score();
    assert_one_line_error(&out, "judge `vqa` was scored with");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("judges.json") && stderr.contains("sha256:"), "{stderr}");

    // A question edited: its answers are refused on resume, by question id.
    let text = std::fs::read_to_string(&q).unwrap();
    std::fs::write(&q, text.replace("how many thing 12?", "how many things 12?")).unwrap();
    let out = sweep();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`12`") && !stderr.contains("`11`"), "{stderr}");
    assert_eq!(jsonl(&run.join("responses.jsonl")).len(), 4, "nothing added");
}
