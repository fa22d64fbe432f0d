//! Answers are never silently wrong: broken weights, impossible decoding settings and prompt
//! tokenization that differs from transformers' are refused or fixed, each with a one-line error
//! that names the row, layer or file (issue 14, findings 4, 9, 10 and 11's `generate` hint).
use std::path::{Path, PathBuf};

use serde_json::Value;

mod cli_common;
mod common;
use cli_common::{assert_one_line_error, generate_on_cpu, icet, ok};
use common::{fixture, read_json, scratch};

/// A scratch copy of the fixture model `from` (every file).
fn copy_model(dir: &Path, from: &str) -> PathBuf {
    let model = dir.join(from);
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(fixture(from)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
        }
    }
    model
}

/// Rewrites `model/model.safetensors` with every value of the tensors `poisoned` set to `value`.
fn poison(model: &Path, poisoned: &[&str], value: f32) {
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let data: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let mut data = v.data().to_vec();
            if poisoned.contains(&name.as_str()) {
                assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
                for c in data.chunks_exact_mut(4) {
                    c.copy_from_slice(&value.to_le_bytes());
                }
            }
            (name, v.shape().to_vec(), v.dtype(), data)
        })
        .collect();
    for p in poisoned {
        assert!(data.iter().any(|(n, ..)| n == p), "no tensor {p}");
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, shape, dtype, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &model.join("model.safetensors")).unwrap();
}

/// A data file of `prompts` on the fixture image `square.png`, ids `r0`, `r1`, ...
fn data_file(dir: &Path, prompts: &[&str]) -> PathBuf {
    std::fs::copy(fixture("images/square.png"), dir.join("square.png")).unwrap();
    let lines: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| serde_json::json!({"id": format!("r{i}"), "prompt": p, "image": "square.png"}).to_string())
        .collect();
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn sweep_args<'a>(model: &'a Path, data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["sweep", "--device", "cpu", "--model", model.to_str().unwrap()];
    args.extend_from_slice(&["--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    args
}

/// The `prompt_ids` of `icet generate --json` on `model` with `square.png`, the image run of a
/// LLaVA prompt collapsed to one id (as the transformers references below are written).
fn prompt_ids(model: &Path, prompt: &str, extra: &[&str]) -> Vec<u64> {
    let mut args = vec!["--max-new-tokens", "1", "--json"];
    args.extend_from_slice(extra);
    let out = ok(&generate_on_cpu(model, &fixture("images/square.png"), prompt, &args));
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let mut ids: Vec<u64> = Vec::new();
    for id in v["prompt_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap()) {
        if !(id == 500 && ids.last() == Some(&500)) {
            ids.push(id);
        }
    }
    ids
}

/// Finding 4: NaN in a vision layer's weights made every deeper layer's answers empty (and so a
/// "100 % attack success"); now the sweep stops at the first such answer, naming it.
#[test]
fn non_finite_logits_are_an_error_naming_the_row_layer_and_token() {
    let dir = scratch("fidelity-nan");
    let model = copy_model(&dir, "llava-tiny");
    // Vision layer 4 (0-based encoder layer 3) and everything after it are NaN; layer 2 is not.
    poison(&model, &["vision_tower.vision_model.encoder.layers.3.mlp.fc2.weight"], f32::NAN);
    let data = data_file(&dir, &["Describe the image."]);
    let out = dir.join("run");
    let run = icet(&sweep_args(&model, &data, &out, &["--layers", "2,4", "--max-new-tokens", "4"]));
    assert_one_line_error(&run, "data row `r0` at vision layer 4: the model's logits are not finite");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("at new token 1"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // `generate` says the same for its one answer.
    let gen = generate_on_cpu(&model, &fixture("images/square.png"), "Hi", &["--layer", "4", "--max-new-tokens", "2"]);
    assert_one_line_error(&gen, "vision layer 4: the model's logits are not finite (NaN or infinity) at new token 1");
}

/// Finding 4: `--max-new-tokens 0` made only empty answers.
#[test]
fn max_new_tokens_zero_is_refused() {
    let dir = scratch("fidelity-zero");
    let out = dir.join("run");
    let sweep = icet(&["sweep", "--device", "cpu", "--max-new-tokens", "0", "--out", out.to_str().unwrap()]);
    assert_one_line_error(&sweep, "--max-new-tokens 0");
    assert!(!out.join("responses.jsonl").exists(), "nothing is written");
    let gen = generate_on_cpu(&fixture("llava-tiny"), &fixture("images/square.png"), "Hi", &["--max-new-tokens", "0"]);
    assert_one_line_error(&gen, "--max-new-tokens 0");
}

/// Finding 4: empty answers are counted and shown, never as compliance. With a zero output
/// projection every logit is 0, so greedy decoding picks token 0, `<unk>`, a special token that
/// decodes to nothing: every answer is empty.
#[test]
fn empty_answers_are_counted_and_never_compliance() {
    let dir = scratch("fidelity-empty");
    let model = copy_model(&dir, "llava-tiny");
    poison(&model, &["language_model.lm_head.weight"], 0.0);
    let data = data_file(&dir, &["Describe the image.", "What is this?"]);
    let out = dir.join("run");
    let table = ok(&icet(&sweep_args(&model, &data, &out, &["--layers", "1,2", "--max-new-tokens", "3"])));
    let summary = read_json(&out.join("summary.json"));
    for l in summary["layers"].as_array().unwrap() {
        assert_eq!((l["n"].as_u64(), l["empty"].as_u64()), (Some(2), Some(2)), "{l}");
        assert!(l["refusal_rate"].is_null(), "an all-empty layer has no refusal rate: {l}");
    }
    assert!(table.contains("4 of 4 answers are empty"), "{table}");
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",empty") && csv.contains("layer,1,2,0,,"), "{csv}");
}

/// Finding 11: `icet generate` with defaults on a small model used to fail on positions without
/// saying what to do.
#[test]
fn generate_suggests_max_new_tokens_when_positions_run_out() {
    // llava-tiny has 256 positions; the llava-v1 prompt takes some, 256 new tokens do not fit.
    let gen = generate_on_cpu(&fixture("llava-tiny"), &fixture("images/square.png"), "Hi", &[]);
    let stderr = String::from_utf8_lossy(&gen.stderr);
    assert_one_line_error(&gen, "exceed the model's 256 positions; give --max-new-tokens");
    let fits: usize = stderr.split("--max-new-tokens ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    ok(&generate_on_cpu(
        &fixture("llava-tiny"),
        &fixture("images/square.png"),
        "Hi",
        &["--max-new-tokens", &fits.to_string()],
    ));
}

/// Finding 9: `--template auto` dropped the chat template's BOS when the tokenizer does not add
/// one itself. transformers 5.24, `AutoProcessor.from_pretrained(model).apply_chat_template(
/// [{"role": "user", "content": [{"type": "image", "image": square}, {"type": "text", "text":
/// "Describe the image."}]}], add_generation_prompt=True, tokenize=True)` with the template below,
/// gives these ids (image run collapsed) both with llava-tiny's tokenizer and with the same
/// tokenizer without its BOS post-processor.
#[test]
fn template_auto_tokenizes_as_apply_chat_template_without_a_bos_post_processor() {
    const TRANSFORMERS: [u64; 11] = [1, 56, 223, 29, 98, 500, 3, 219, 108, 244, 251];
    let dir = scratch("fidelity-bos");
    let template = "{{ bos_token }}{% for message in messages %}{{ message['role'].upper() + ': ' }}\
{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}\
{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}\
{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";
    let with_post = copy_model(&dir, "llava-tiny");
    std::fs::write(with_post.join("chat_template.json"), serde_json::json!({ "chat_template": template }).to_string())
        .unwrap();
    assert_eq!(prompt_ids(&with_post, "Describe the image.", &["--template", "auto"]), TRANSFORMERS);
    let no_post = dir.join("no-post");
    std::fs::rename(&with_post, &no_post).unwrap();
    let mut tokenizer = read_json(&no_post.join("tokenizer.json"));
    tokenizer["post_processor"] = Value::Null;
    std::fs::write(no_post.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    assert_eq!(prompt_ids(&no_post, "Describe the image.", &["--template", "auto"]), TRANSFORMERS);
}

/// Finding 10: Llama 3.2 Vision's `raw` is what transformers' processor gives when called as
/// the base model's card does, `processor(image, prompt)` (default `add_special_tokens=True`):
/// `[BOS, <|image|>, BOS, ...]`; `--no-special-tokens` keeps `add_special_tokens=False`.
/// (transformers 5.24 on mllama-tiny with square.png: `[502, 506, 502, 219, 108, 244]` and
/// `[506, 502, 219, 108, 244]`.)
#[test]
fn mllama_raw_is_the_processors_default_call() {
    let model = fixture("mllama-tiny");
    let prompt = "<|image|>Describe the image.";
    assert_eq!(prompt_ids(&model, prompt, &["--template", "raw"]), [502, 506, 502, 219, 108, 244]);
    assert_eq!(prompt_ids(&model, prompt, &["--template", "raw", "--no-special-tokens"]), [506, 502, 219, 108, 244]);
    let out = generate_on_cpu(&model, &fixture("images/square.png"), "Hi", &["--no-special-tokens"]);
    assert_one_line_error(&out, "--no-special-tokens goes with --template raw");
}

/// Finding 8: an over-long prompt or an `<image>` inside a LLaVA prompt stopped the sweep
/// without naming the row (and only the first). Every such row is named before the first answer;
/// `--skip-invalid` leaves them out and records them in the manifest.
#[test]
fn every_row_that_cannot_be_answered_is_named_before_the_first_answer() {
    let dir = scratch("fidelity-bad-rows");
    let long = "word ".repeat(300);
    let data = data_file(&dir, &["Describe the image.", "Compare <image> with this one.", &long, "What is this?"]);
    let model = fixture("llava-tiny");
    let out = dir.join("run");
    let run = icet(&sweep_args(&model, &data, &out, &["--layers", "1", "--max-new-tokens", "4"]));
    assert_one_line_error(
        &run,
        "data.jsonl: 2 data rows cannot be answered (`r1`: the prompt has 2 image placeholders",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("`r2`: the prompt's ") && stderr.contains("the model's 256 positions"), "{stderr}");
    assert!(stderr.contains("--skip-invalid"), "{stderr}");
    assert!(!out.join("responses.jsonl").exists() && !out.join("manifest.json").exists(), "no answer, no run");

    let run = icet(&sweep_args(&model, &data, &out, &["--layers", "1", "--max-new-tokens", "4", "--skip-invalid"]));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("leaving out 2 data rows (--skip-invalid): `r1`"), "{stderr}");
    let ids: Vec<String> = std::fs::read_to_string(out.join("responses.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["r0", "r3"]);
    let skipped = read_json(&out.join("manifest.json"))["skipped_rows"].clone();
    let skipped: Vec<&str> = skipped.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(skipped, ["r1", "r2"]);

    // Template-time refusals (a raw prompt without `<image>`) are named the same way.
    let data = data_file(&dir, &["<image>\nDescribe the image.", "No image token here."]);
    let run = icet(&sweep_args(&model, &data, &dir.join("raw"), &["--template", "raw", "--layers", "1"]));
    assert_one_line_error(
        &run,
        "1 data rows cannot be answered (`r1`: a raw prompt must contain `<image>` exactly once)",
    );
}

/// Finding 11: `icet features` files said nothing of what made them. Their `__metadata__` does.
#[test]
fn features_files_record_what_made_them() {
    let dir = scratch("fidelity-features");
    let out = dir.join("f.safetensors");
    let model = fixture("llava-tiny");
    let image = fixture("images/square.png");
    let args = ["features", "--device", "cpu", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap()];
    ok(&icet(&[&args[..], &["--layers", "1,-2", "--strategy", "full", "--out", out.to_str().unwrap()]].concat()));
    let bytes = std::fs::read(&out).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().expect("__metadata__");
    assert_eq!(meta["format"], "icet features");
    assert_eq!(meta["model"], std::fs::canonicalize(&model).unwrap().display().to_string());
    assert_eq!((meta["model_type"].as_str(), meta["layers"].as_str()), ("llava", "[1,5]"));
    assert_eq!((meta["vision_layers"].as_str(), meta["default_layer"].as_str()), ("6", "5"));
    assert!(meta["layer_indexing"].contains("hidden_states"), "{meta:?}");
    assert!(meta["image_sha256"].starts_with("sha256:"), "{meta:?}");
    assert!(meta["note"].contains("full strategy") && meta["settings"].contains("\"strategy\":\"full\""), "{meta:?}");
    let mllama = fixture("mllama-tiny");
    let args = ["features", "--device", "cpu", "--model", mllama.to_str().unwrap(), "--image", image.to_str().unwrap()];
    ok(&icet(&[&args[..], &["--layers", "2", "--exit-rule", "all-slots", "--out", out.to_str().unwrap()]].concat()));
    let bytes = std::fs::read(&out).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().expect("__metadata__");
    assert!(meta["settings"].contains("\"exit_rule\":\"all-slots\"") && meta["model_type"] == "mllama", "{meta:?}");
}
