//! The `icet` binary end to end: its stable outputs against the transformers references, the
//! demo sweep with resume, and one-line errors for bad inputs.

use serde_json::Value;

mod cli_common;
mod common;
use cli_common::{assert_one_line_error, icet};
use common::{f32s, fixture, rel_err, scratch};

#[test]
fn features_match_transformers() {
    let dir = scratch("features");
    let out_file = dir.join("f.safetensors");
    let model = fixture("llava-tiny");
    let out = icet(&[
        "features",
        "--model",
        model.to_str().unwrap(),
        "--image",
        fixture("images/square.png").to_str().unwrap(),
        "--layers",
        "all",
        "--out",
        out_file.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours = std::fs::read(&out_file).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&ours).unwrap();
    let refs = std::fs::read(model.join("reference.safetensors")).unwrap();
    let refs = safetensors::SafeTensors::deserialize(&refs).unwrap();
    let (shape, px) = f32s(&ours, "pixel_values");
    let (rshape, rpx) = f32s(&refs, "pixel_values.square");
    assert_eq!(shape, rshape);
    assert!(px.iter().zip(&rpx).all(|(a, b)| (a - b).abs() <= 1e-4));
    for l in 0..=6 {
        let (s, h) = f32s(&ours, &format!("hidden.{l}"));
        let (rs, rh) = f32s(&refs, &format!("hidden.square.{l}"));
        assert_eq!(s, rs);
        assert!(rel_err(&h, &rh) <= 1e-4, "hidden.{l}");
        let (s, p) = f32s(&ours, &format!("projected.{l}"));
        let (rs, rp) = f32s(&refs, &format!("projected.square.{l}.default"));
        assert_eq!(s, rs);
        assert!(rel_err(&p, &rp) <= 1e-4, "projected.{l}");
    }
    // A negative spec selects the same layers by transformers' indexing.
    let out = icet(&[
        "features",
        "--model",
        model.to_str().unwrap(),
        "--image",
        fixture("images/square.png").to_str().unwrap(),
        "--layers",
        "-2,0..1",
        "--out",
        out_file.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.status.success());
    let ours = std::fs::read(&out_file).unwrap();
    let names: Vec<String> =
        safetensors::SafeTensors::deserialize(&ours).unwrap().names().into_iter().map(String::from).collect();
    for n in ["hidden.0", "hidden.1", "hidden.5", "projected.5", "pixel_values"] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
    assert_eq!(names.len(), 7);
}

#[test]
fn generate_json_matches_transformers() {
    let model = fixture("llava-tiny-gqa");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("reference.json")).unwrap()).unwrap();
    for case in reference["cases"].as_array().unwrap().iter().filter(|c| c["image"] == "square").take(3) {
        let layer = case["layer"].as_i64().unwrap().to_string();
        let out = icet(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--image",
            fixture("images/square.png").to_str().unwrap(),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--template",
            case["template"].as_str().unwrap(),
            "--layer",
            &layer,
            "--max-new-tokens",
            "12",
            "--json",
            "--device",
            "cpu",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let got: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(got["layer"], case["resolved_layer"]);
        assert_eq!(got["prompt_ids"], case["prompt_ids"]);
        let (ours, theirs) = (got["token_ids"].as_array().unwrap(), case["token_ids"].as_array().unwrap());
        let margins = case["margins"].as_array().unwrap();
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            assert_eq!(a, b, "token {i}");
            if margins[i].as_f64().unwrap() < 2e-3 {
                break;
            }
        }
        assert!(got["finish_reason"] == "eos" || got["finish_reason"] == "length");
        assert!(got["text"].is_string());
    }
}

#[test]
fn demo_sweep_writes_results_and_resumes() {
    let dir = scratch("sweep");
    let out_dir = dir.join("run");
    let run = || icet(&["sweep", "--out", out_dir.to_str().unwrap(), "--device", "cpu"]);
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in ["Early", "Middle", "Late", "Average", "5 *"] {
        assert!(table.contains(needle), "{needle} in {table}");
    }
    for f in ["responses.jsonl", "summary.json", "summary.csv", "manifest.json", "refusal_rate.svg"] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }
    let responses = std::fs::read_to_string(out_dir.join("responses.jsonl")).unwrap();
    let rows: Vec<Value> = responses.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6 * 7, "6 demo prompts x 7 layers");
    for key in ["id", "layer", "prompt", "image", "response", "token_ids", "finish_reason", "refusal"] {
        assert!(rows[0].get(key).is_some(), "{key}");
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["layers"].as_array().unwrap().len(), 7);
    assert_eq!(summary["layers"][3]["n"], 6);

    // Interrupt: drop the last two rows and tear the one before; a rerun regenerates exactly them.
    let lines: Vec<&str> = responses.lines().collect();
    let mut torn = lines[..lines.len() - 3].join("\n");
    torn.push('\n');
    torn.push_str(&lines[lines.len() - 3][..10]);
    std::fs::write(out_dir.join("responses.jsonl"), torn).unwrap();
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 to go"), "{}", String::from_utf8_lossy(&out.stderr));
    let resumed = std::fs::read_to_string(out_dir.join("responses.jsonl")).unwrap();
    let mut a: Vec<&str> = resumed.lines().collect();
    let mut b: Vec<&str> = responses.lines().collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "resumed answers equal the uninterrupted ones (greedy)");

    // Other settings into the same folder are refused.
    let out = icet(&["sweep", "--out", out_dir.to_str().unwrap(), "--device", "cpu", "--layers", "1..2"]);
    assert_one_line_error(&out, "other settings");
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let dir = scratch("errors");
    let model = fixture("llava-tiny");
    let m = model.to_str().unwrap();
    let img = fixture("images/square.png");
    let i = img.to_str().unwrap();
    let out_file = dir.join("x.safetensors");
    let o = out_file.to_str().unwrap();

    assert_one_line_error(
        &icet(&["features", "--model", m, "--image", "/no/such.png", "--out", o, "--device", "cpu"]),
        "/no/such.png",
    );
    std::fs::write(dir.join("bad.png"), b"not an image").unwrap();
    let bad = dir.join("bad.png");
    assert_one_line_error(
        &icet(&["features", "--model", m, "--image", bad.to_str().unwrap(), "--out", o, "--device", "cpu"]),
        "bad.png",
    );
    assert_one_line_error(
        &icet(&["features", "--model", m, "--image", i, "--layers", "9", "--out", o, "--device", "cpu"]),
        "layer 9 is out of range",
    );
    assert_one_line_error(
        &icet(&["generate", "--model", m, "--image", i, "--prompt", "x", "--layer", "-8", "--device", "cpu"]),
        "layer -8 is out of range",
    );
    assert_one_line_error(&icet(&["info", "--model", "/no/such/model"]), "/no/such/model");
    // Another family's option is refused, naming the option and the family.
    assert_one_line_error(
        &icet(&["generate", "--model", m, "--image", i, "--prompt", "x", "--exit-rule", "clamp", "--device", "cpu"]),
        "--exit-rule is a Llama 3.2 Vision option; LLaVA",
    );

    // Corrupt weights.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "preprocessor_config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(model.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("model.safetensors"), b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage").unwrap();
    assert_one_line_error(
        &icet(&["features", "--model", broken.to_str().unwrap(), "--image", i, "--out", o, "--device", "cpu"]),
        "model.safetensors",
    );

    // Data rows.
    std::fs::copy(&img, dir.join("a.png")).unwrap();
    std::fs::write(
        dir.join("d.jsonl"),
        "{\"id\": \"1\", \"prompt\": \"hi\", \"image\": \"a.png\"}\n{\"id\": \"2\", \"image\": \"a.png\"}\n",
    )
    .unwrap();
    let run_dir = dir.join("run");
    let d = dir.join("d.jsonl");
    let sweep = || {
        icet(&[
            "sweep",
            "--model",
            m,
            "--data",
            d.to_str().unwrap(),
            "--out",
            run_dir.to_str().unwrap(),
            "--device",
            "cpu",
        ])
    };
    assert_one_line_error(&sweep(), "d.jsonl:2");
    std::fs::write(&d, "{\"id\": \"1\", \"prompt\": \"hi\", \"image\": \"missing.png\"}\n").unwrap();
    assert_one_line_error(&sweep(), "missing.png");
}

#[test]
fn info_describes_the_checkpoint() {
    let out = icet(&["info", "--model", fixture("llava-tiny-gqa").to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vision"]["layers"], 4);
    assert_eq!(v["text"]["kv_heads"], 2);
    assert_eq!(v["vision_feature_layer_resolved"], 3);
    assert_eq!(v["image_slots"], 10);
    assert_eq!(v["dtypes"][0]["dtype"], "F16");
    assert_eq!(v["weight_layout"]["text"], "model.language_model.");
}

/// `--template auto` renders the model's own chat template (here one in the style of llava-hf's,
/// with transformers' `{% generation %}` marks) and falls back to llava-v1 without one.
#[test]
fn template_auto_uses_the_models_chat_template() {
    let dir = scratch("auto-template");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(fixture("llava-tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let ids = |template: &str| -> Value {
        let out = icet(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--image",
            fixture("images/square.png").to_str().unwrap(),
            "--prompt",
            "Describe the image.",
            "--template",
            template,
            "--max-new-tokens",
            "1",
            "--json",
            "--device",
            "cpu",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().last().unwrap()).unwrap();
        v["prompt_ids"].clone()
    };
    assert_eq!(ids("auto"), ids("llava-v1"), "no chat template: the LLaVA default");
    let template = "{{ bos_token }}{% for message in messages %}{{ message['role'].upper() + ': ' }}\
{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}\
{% for part in message['content'] if part['type'] == 'text' %}{% generation %}{{ part['text'] + ' ' }}{% endgeneration %}{% endfor %}\
{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";
    std::fs::write(model.join("chat_template.json"), serde_json::json!({ "chat_template": template }).to_string())
        .unwrap();
    // The rendered text is `<s>` + llava-hf's prompt, tokenized as transformers'
    // `apply_chat_template(tokenize=True)` does: as it is, without added special tokens (transformers
    // 5.24 on this fixture; stripping the `<s>` and letting the tokenizer add one gives other ids,
    // `[1, 250, 98, ...]`: the first word then gets SentencePiece's prefix space).
    let image = std::iter::repeat_n(Value::from(500), 16);
    let transformers: Vec<Value> = [1, 56, 223, 29, 98]
        .into_iter()
        .map(Value::from)
        .chain(image)
        .chain([3, 219, 108, 244, 251].map(Value::from))
        .collect();
    assert_eq!(ids("auto"), Value::Array(transformers), "the model's template, tokenized as transformers does");
}

/// `icet bench --device cpu --model MODEL --image square.png --repeat 1 --out OUT` plus `extra`;
/// the JSON report it wrote and the table it printed.
fn bench_on_cpu(model: &str, out: &std::path::Path, extra: &[&str]) -> (serde_json::Value, String) {
    let (model, image) = (fixture(model), fixture("images/square.png"));
    let mut args = vec!["bench", "--device", "cpu", "--model", model.to_str().unwrap()];
    args.extend_from_slice(&["--image", image.to_str().unwrap(), "--repeat", "1", "--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let run = icet(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    (report, String::from_utf8_lossy(&run.stdout).into_owned())
}

#[test]
fn bench_reports_every_stage_with_its_work() {
    let d = scratch("bench");
    let out_file = d.join("bench.json");
    let extra = ["--vision-batches", "1,2", "--batch-sizes", "1,3", "--new-tokens", "4"];
    let (report, table) = bench_on_cpu("llava-tiny", &out_file, &extra);
    assert!(table.contains("TFLOP/s") && table.lines().filter(|l| l.starts_with("decode")).count() == 2, "{table}");
    let rows = report["measurements"].as_array().unwrap();
    let stages: Vec<(&str, u64)> =
        rows.iter().map(|r| (r["stage"].as_str().unwrap(), r["batch"].as_u64().unwrap())).collect();
    assert_eq!(
        stages,
        [("vision", 1), ("vision", 2), ("prefill", 1), ("decode", 1), ("prefill", 3), ("decode", 3)],
        "one row per stage and batch, in order"
    );
    for r in rows {
        let (s, t) = (r["seconds"].as_f64().unwrap(), r["throughput"].as_f64().unwrap());
        assert!(s > 0.0 && t > 0.0 && r["tflops"].as_f64().unwrap() > 0.0, "{r}");
        // Throughput is the batch's work over the measured time.
        let per_call = match r["stage"].as_str().unwrap() {
            "prefill" => r["batch"].as_f64().unwrap() * report["prompt_tokens"].as_f64().unwrap(),
            _ => r["batch"].as_f64().unwrap(),
        };
        assert!((t * s / per_call - 1.0).abs() < 1e-9, "{r}");
    }
    assert!(rows[3]["weight_gbps"].is_number(), "decode reports weight bandwidth");
    // The llava-v1 prompt with the fixture's 16 image slots, as the sweep builds it.
    assert!(report["prompt_tokens"].as_u64().unwrap() > 16);
    assert_eq!(report["vision_layers_captured"], 7, "layers 0..=6 of the tiny tower");

    assert_one_line_error(&icet(&["bench", "--device", "cpu", "--new-tokens", "2"]), "--new-tokens at least 3");
    let mllama = fixture("mllama-tiny");
    let out = icet(&["bench", "--device", "cpu", "--model", mllama.to_str().unwrap(), "--image", "/no/such.png"]);
    assert_one_line_error(&out, "/no/such.png");

    // Llama 3.2 Vision: the same stages; its prefill also counts the image's cross keys/values.
    let extra = ["--vision-batches", "2", "--batch-sizes", "2", "--new-tokens", "3"];
    let (report, _) = bench_on_cpu("mllama-tiny", &d.join("bench-mllama.json"), &extra);
    assert_eq!(report["family"], "mllama");
    assert_eq!(report["vision_layers_captured"], 9, "local layers 0..=8 of the tiny tower");
    assert!(report["flops"]["cross_kv_per_image"].as_f64().unwrap() > 0.0);
    let stages: Vec<&str> =
        report["measurements"].as_array().unwrap().iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["vision", "prefill", "decode"]);
}

#[test]
fn batch_size_auto_sizes_the_stream_from_free_memory() {
    let d = scratch("auto-batch");
    let run = d.join("run");
    let out = icet(&[
        "sweep",
        "--device",
        "cpu",
        "--batch-size",
        "auto",
        "--layers",
        "1,-2",
        "--max-new-tokens",
        "3",
        "--out",
        run.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The demo's 12 answers cap the choice; the free memory (MemAvailable on Linux) is reported.
    let said = stderr.lines().find(|l| l.contains("--batch-size auto:")).expect("the choice is said");
    assert!(said.contains("12 sequences"), "{said}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["batch_size"], "auto");
    let out = icet(&["sweep", "--device", "cpu", "--batch-size", "0", "--out", run.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("at least 1"));
}
