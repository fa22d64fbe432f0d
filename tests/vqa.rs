//! `icet vqa-eval` end to end: on files in the official formats that the official evaluation
//! (GT-Vision-Lab/VQA's vqaEval.py, run by tools/fixtures/make_vqa_fixtures.py) scored, every
//! number equal; and one-line errors naming the file and the question id for bad inputs.
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
