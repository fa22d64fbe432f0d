//! Judge parity against transformers 5.24 on the committed tiny random-weight judges
//! (`tools/fixtures/make_judge_fixtures.py` records the references in tests/fixtures/judges/).
//!
//! - chat templates: rendered text equal byte for byte to `apply_chat_template(tokenize=False)`
//!   for every Llama Guard template this engine ships, a generic feature template and a
//!   vision-language template with typed content parts; template
//!   errors (`raise_exception`) carry the template's message;
//! - classifiers (GPT-2 reward, BERT and RoBERTa toxicity): token ids equal to transformers'
//!   tokenizer (`truncation=True`), logits within 1e-4 relative (`max |ours - ref| / max |ref|`);
//! - DeBERTa-v2/v3 (the DeBERTa-v3 reward model and two variants covering the other code paths):
//!   ids and token type ids equal to transformers 5.24's `DebertaV2Tokenizer` (question, answer)
//!   pairs, logits within 1e-4 relative, log buckets equal to `make_log_bucket_position`;
//! - Llama Guard: prompt ids equal, first-step logits within 1e-4 relative, greedy verdict tokens equal;
//! - Llama Guard 3 Vision (tiny Mllama): the same, judged with images (two distinct images and
//!   text-only pairs in one batch).
//!
//! Greedy tokens are compared while transformers' recorded top-2 margin is at least the
//! tolerance's margin (after a closer step, later tokens are not compared). Every model check is
//! one generic body run on the CPU (f32: 1e-4, margin 1e-3) and on CUDA (`gpu_*` tests, on the GPU
//! or the emulated device: f32 1e-3 with margin 1e-2; bf16 per judge, see `cuda_tol`), which print
//! `SKIPPED <test>: <reason>` without either.
use std::path::{Path, PathBuf};

use icet_models::backend::cpu::Cpu;
use icet_models::backend::cuda::DType;
use icet_models::backend::Backend;
use icet_models::chat_template::{ChatTemplate, Message};
use icet_models::deberta::{log_bucket_position, DebertaV2ForSequenceClassification};
use icet_models::generation::{run_batch, DecodeOptions, Request};
use icet_models::judges::classifier::{hh_pair, RewardModel, ToxicityClassifier};
use icet_models::judges::deberta_reward::{deberta_v2_tokenizer, is_deberta_dir, DebertaReward};
use icet_models::judges::llama_guard::{LlamaGuard, LlamaGuardVersion};
use icet_models::judges::llama_guard_vision::{GuardItem, LlamaGuardVision};
use icet_models::llama::TextStream;
use serde_json::Value;

mod common;
use common::{f32s, fixture, read_json, rel_err};

#[macro_use]
#[path = "gpu_common.rs"]
mod gpu_common;

/// Relative tolerance of logits, and the top-2 margin from which greedy tokens must agree.
#[derive(Clone, Copy)]
struct Tol {
    logits: f64,
    margin: f64,
}

const CPU: Tol = Tol { logits: 1e-4, margin: 1e-3 };

/// The tolerance of judge `name` on CUDA. bf16: above what transformers' own bf16 run of the
/// judge drifts from its f32 reference (`scripts/torch-bf16-drift.py`; emulated values after the
/// arrow): GPT-2 reward 5.8e-1 → 9.1e-1 (one reference score is 0.0196, so an absolute error of
/// 0.018 — about one bf16 step at 1–4 — reads as 91%), BERT 2.2e-2 → 1.9e-2, RoBERTa 1.3e-2 →
/// 1.3e-2, Llama Guard first logits 7.8e-1 → 6.6e-2 with tokens flipping at margins up to 4.1,
/// Llama Guard Vision 3.7e-1 → 2.0e-2 with flips up to 1.9.
fn cuda_tol(dtype: DType, name: &str) -> Tol {
    match (dtype, name) {
        (DType::F32, _) => Tol { logits: 1e-3, margin: 1e-2 },
        (_, "gpt2-reward-tiny") => Tol { logits: 1.5, margin: f64::INFINITY },
        (_, "bert-toxic-tiny" | "roberta-toxic-tiny") => Tol { logits: 6e-2, margin: f64::INFINITY },
        (_, "deberta-v3-reward-tiny") => Tol { logits: 6e-2, margin: f64::INFINITY },
        (_, "llama-guard-tiny") => Tol { logits: 1.0, margin: 6.0 },
        (_, "llama-guard-vision-tiny") => Tol { logits: 6e-1, margin: 3.0 },
        (_, other) => panic!("no bf16 tolerance for {other}"),
    }
}

/// Tokens equal to `want` at every step before the first whose margin is below `margin` (that
/// step's top two logits are within the tolerance of each other, so its token may legitimately
/// differ); returns how many were compared.
fn assert_tokens(got: &[u32], want: &[u32], margins: &[f32], margin: f64, what: &str) -> usize {
    let sure = margins.iter().position(|&m| (m as f64) < margin).unwrap_or(want.len());
    assert_eq!(got[..sure.min(got.len())], want[..sure], "{what}: greedy tokens");
    sure
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn chat_templates_render_byte_for_byte() {
    let refs = read_json(&fixture("judges/chat_templates.json"));
    let mut checked = 0;
    for case in refs["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let source = match name {
            "llama-guard-1" => LlamaGuardVersion::V1.builtin_template().to_string(),
            "llama-guard-2" => LlamaGuardVersion::V2.builtin_template().to_string(),
            "llama-guard-3" => LlamaGuardVersion::V3.builtin_template().to_string(),
            "llama-guard-3-vision" => LlamaGuardVersion::V3Vision.builtin_template().to_string(),
            other => refs["templates"][other].as_str().unwrap().to_string(),
        };
        let specials: Vec<(String, String)> = case["special_tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let t = ChatTemplate::new(&source, name, specials).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let extra: Vec<(&str, Value)> = case
            .get("extra")
            .and_then(Value::as_object)
            .map(|o| o.iter().map(|(k, v)| (k.as_str(), v.clone())).collect())
            .unwrap_or_default();
        // Typed-part contents (the vision-language template) go in as JSON, plain ones as Messages.
        let out = if case["messages"][0]["content"].is_array() {
            t.render_json(&case["messages"], agp, &extra)
        } else {
            t.render(&messages(&case["messages"]), agp, &extra)
        };
        // Llama Guard picks typed parts from the template text; its conversation must be the recorded one.
        let typed = ["llama-guard-typed", "vlm", "llama-guard-3-vision"];
        assert_eq!(t.uses_typed_parts(), typed.contains(&name), "{name}");
        if name == "llama-guard-3-vision" && case.get("pair").is_some() {
            let m = &case["messages"];
            let user = m[0]["content"].as_array().unwrap();
            let prompt = user.last().unwrap()["text"].as_str().unwrap();
            let response = m.get(1).map(|a| a["content"][0]["text"].as_str().unwrap());
            assert_eq!(&LlamaGuardVision::<Cpu>::conversation_json(prompt, response, user.len() == 2), m);
        }
        if name == "llama-guard-typed" {
            let m = &case["messages"];
            let (p, r) = (m[0]["content"][0]["text"].as_str().unwrap(), m[1]["content"][0]["text"].as_str().unwrap());
            assert_eq!(&LlamaGuard::<Cpu>::conversation_json(p, Some(r), true), m);
        }
        match case.get("rendered") {
            Some(expected) => assert_eq!(out.unwrap(), expected.as_str().unwrap(), "{name}: {case}"),
            None => {
                let e = out.unwrap_err().to_string();
                assert!(e.ends_with(case["error"].as_str().unwrap()), "{name}: {e}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 3 * 9 + 3 + 2 + 2 + (4 * 2 * 2 + 2));
}

#[test]
fn gpt2_reward_logits_match() {
    check_reward(&Cpu, CPU);
}

fn check_reward<B: Backend>(b: &B, tol: Tol) {
    let dir = fixture("judges/gpt2-reward-tiny");
    let refs = read_json(&dir.join("reference.json"));
    let rm = RewardModel::load(&dir, b).unwrap();
    let mut worst = 0.0f64;
    let mut pairs = 0;
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = match case.get("text_pair") {
            Some(pair) => rm.encode_pair(text, pair.as_str().unwrap()).unwrap(),
            None => rm.encode(text).unwrap(),
        };
        assert_eq!(got, ids(&case["input_ids"]), "ids of {text:?}");
        let logits = rm.model.classify(b, &got).unwrap();
        worst = worst.max(rel_err(&logits, &floats(&case["logits"])));
        // The judge's own entry point builds the HH pair the fixture recorded.
        if let (Some(p), Some(r)) = (case.get("prompt"), case.get("response")) {
            let (p, r) = (p.as_str().unwrap(), r.as_str().unwrap());
            assert_eq!(hh_pair(p, r), (text.to_string(), case["text_pair"].as_str().unwrap().to_string()));
            let score = rm.score(b, p, r).unwrap();
            assert!(rel_err(&[score], &floats(&case["logits"])) <= tol.logits);
            pairs += 1;
        }
    }
    assert_eq!(pairs, 4);
    eprintln!("gpt2 reward ({}): worst logits rel err {worst:.2e}", b.name());
    assert!(worst <= tol.logits, "{worst}");
}

fn check_toxicity<B: Backend>(b: &B, tol: Tol, name: &str, label: &str, function: &str) {
    let dir = fixture(&format!("judges/{name}"));
    let refs = read_json(&dir.join("reference.json"));
    let clf = ToxicityClassifier::load(&dir, b).unwrap();
    assert_eq!((clf.rule.label.as_str(), clf.rule.function), (label, function));
    let mut worst = 0.0f64;
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(clf.encode(text).unwrap(), ids(&case["input_ids"]), "{name} ids of {text:?}");
        let s = clf.score(b, text).unwrap();
        let expected = floats(&case["logits"]);
        worst = worst.max(rel_err(&s.logits, &expected));
        // The score definition, recomputed here from the reference logits in f64.
        let e: Vec<f64> = expected.iter().map(|&x| x as f64).collect();
        let want = if function == "sigmoid" {
            1.0 / (1.0 + (-e[clf.rule.label_index]).exp())
        } else {
            let z: f64 = e.iter().map(|x| x.exp()).sum();
            e[clf.rule.label_index].exp() / z
        };
        assert!((s.score - want).abs() < tol.logits * 0.1, "{name}: score {} vs {want}", s.score);
    }
    eprintln!("{name} ({}): worst logits rel err {worst:.2e}", b.name());
    assert!(worst <= tol.logits, "{worst}");
}

#[test]
fn bert_toxicity_logits_match() {
    check_toxicity(&Cpu, CPU, "bert-toxic-tiny", "toxic", "sigmoid");
}

#[test]
fn roberta_toxicity_logits_match() {
    check_toxicity(&Cpu, CPU, "roberta-toxic-tiny", "toxic", "softmax");
}

/// The ids, token types and logits of every case of a DeBERTa fixture; `reward` also goes through
/// the judge API (`DebertaReward::score` of the recorded pair).
fn check_deberta_model<B: Backend>(b: &B, tol: Tol, name: &str) {
    let dir = fixture(&format!("judges/{name}"));
    let refs = read_json(&dir.join("reference.json"));
    let tokenizer = deberta_v2_tokenizer(&dir).unwrap();
    let model = DebertaV2ForSequenceClassification::load(&dir, b).unwrap();
    let reward = (model.config.labels() == 1 && name.contains("reward")).then(|| DebertaReward::load(&dir, b).unwrap());
    let mut worst = 0.0f64;
    for case in refs["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let enc = match case.get("text_pair") {
            Some(pair) => tokenizer.encode((text, pair.as_str().unwrap()), true),
            None => tokenizer.encode(text, true),
        }
        .unwrap();
        let (got, types) = (enc.get_ids().to_vec(), enc.get_type_ids().to_vec());
        assert_eq!(got, ids(&case["input_ids"]), "{name}: ids of {case}");
        assert_eq!(types, ids(&case["token_type_ids"]), "{name}: token types of {text:?}");
        let logits = model.classify(b, &got, &types).unwrap();
        let err = rel_err(&logits, &floats(&case["logits"]));
        worst = worst.max(err);
        if let (Some(rm), Some(pair)) = (&reward, case.get("text_pair")) {
            let pair = pair.as_str().unwrap();
            assert_eq!(rm.encode_pair(text, pair).unwrap(), (got.clone(), types.clone()));
            let score = rm.score(b, text, pair).unwrap();
            assert!(rel_err(&[score], &floats(&case["logits"])) <= tol.logits, "{name}: score of {text:?}");
        }
    }
    eprintln!("{name} ({}): worst logits rel err {worst:.2e}", b.name());
    assert!(worst <= tol.logits, "{name}: {worst}");
}

fn check_deberta<B: Backend>(b: &B, tol: Tol) {
    for name in ["deberta-v3-reward-tiny", "deberta-v2-variant-tiny", "deberta-v2-absolute-tiny"] {
        check_deberta_model(b, tol, name);
    }
}

#[test]
fn deberta_reward_and_variants_logits_match() {
    check_deberta(&Cpu, CPU);
}

#[test]
fn deberta_fixtures_cover_what_they_claim() {
    let refs = read_json(&fixture("judges/deberta-v3-reward-tiny/reference.json"));
    let cases = refs["cases"].as_array().unwrap();
    let longest = cases.iter().map(|c| c["input_ids"].as_array().unwrap().len()).max().unwrap();
    // Bucket span ±4, log buckets to 64 positions: the longest case goes beyond both.
    assert!(longest > 64, "{longest}");
    assert!(cases.iter().filter(|c| c.get("text_pair").is_some()).count() >= 8);
    // transformers 5.24 rebuilds the normalizer: some cases tokenize differently from the raw file,
    // and the engine follows the rebuild (checked above), not tokenizer.json's own pipeline.
    assert!(cases.iter().any(|c| !c["raw_tokenizer_json_ids"].is_null()));
    let dir = fixture("judges/deberta-v3-reward-tiny");
    let ours: Value = serde_json::from_str(&deberta_v2_tokenizer(&dir).unwrap().to_string(false).unwrap()).unwrap();
    for part in ["normalizer", "pre_tokenizer", "post_processor", "decoder"] {
        assert_eq!(ours[part], refs["backend_components"][part], "{part} as DebertaV2Tokenizer builds it");
    }
    assert!(is_deberta_dir(&dir) && !is_deberta_dir(&fixture("judges/bert-toxic-tiny")));
}

#[test]
fn deberta_log_buckets_match_transformers() {
    let refs = read_json(&fixture("judges/deberta-v3-reward-tiny/reference.json"));
    for key in ["log_buckets", "tiny_log_buckets"] {
        let t = &refs[key];
        let (size, max, from) = (
            t["position_buckets"].as_i64().unwrap(),
            t["max_relative_positions"].as_i64().unwrap(),
            t["relative_from"].as_i64().unwrap(),
        );
        let want: Vec<i64> = t["buckets"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let got: Vec<i64> = (0..want.len() as i64).map(|i| log_bucket_position(from + i, size, max)).collect();
        assert_eq!(got, want, "{key}");
    }
}

#[test]
fn deberta_bad_inputs_are_errors() {
    // Three labels are no reward model; absolute positions bound the length.
    let e = DebertaReward::load(&fixture("judges/deberta-v2-variant-tiny"), &Cpu).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("one label"), "{e}");
    let m = DebertaV2ForSequenceClassification::load(&fixture("judges/deberta-v2-variant-tiny"), &Cpu).unwrap();
    let e = m.classify(&Cpu, &[1; 65], &[0; 65]).unwrap_err().to_string();
    assert!(e.contains("65 tokens exceed the model's 64 absolute positions"), "{e}");
    let e = m.classify(&Cpu, &[1, 2], &[0, 2]).unwrap_err().to_string();
    assert!(e.contains("token type 2"), "{e}");
    let e = m.classify(&Cpu, &[1, 9999], &[0, 0]).unwrap_err().to_string();
    assert!(e.contains("token id 9999"), "{e}");
    let e = DebertaReward::load(&fixture("judges/bert-toxic-tiny"), &Cpu).err().unwrap().to_string();
    assert!(e.contains("bert-toxic-tiny/config.json") && e.contains("deberta-v2"), "{e}");
}

#[test]
fn llama_guard_prompts_logits_and_verdict_tokens_match() {
    check_llama_guard(&Cpu, CPU);
}

fn check_llama_guard<B: Backend>(b: &B, tol: Tol) {
    let dir = fixture("judges/llama-guard-tiny");
    let refs = read_json(&dir.join("reference.json"));
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let guard = LlamaGuard::load(&dir, b, None).unwrap();
    assert_eq!(guard.version, LlamaGuardVersion::V3, "detected from the shipped template");
    assert!(guard.template_from_model);
    let cases = refs["cases"].as_array().unwrap();
    let mut requests = Vec::new();
    for case in cases {
        let msgs = case["messages"].as_array().unwrap();
        let prompt = msgs[0]["content"].as_str().unwrap();
        let response = msgs.get(1).map(|m| m["content"].as_str().unwrap());
        let (text, got) = guard.encode(prompt, response).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        assert_eq!(got, ids(&case["input_ids"]));
        requests.push(Request::text_only(got, 0));
    }
    let opts = DecodeOptions::greedy(refs["max_new_tokens"].as_u64().unwrap() as usize, ids(&refs["eos_token_ids"]));
    assert!(opts.eos_token_ids.iter().all(|e| guard.eos_token_ids.contains(e)));
    let out = run_batch(b, &mut TextStream::new(&guard.llm), &requests, &opts, true).unwrap();
    let (mut worst, mut compared) = (0.0f64, 0);
    for (case, g) in cases.iter().zip(&out) {
        let reference = f32s(&st, case["logits"].as_str().unwrap()).1;
        worst = worst.max(rel_err(g.first_logits.as_ref().unwrap(), &reference));
        let want = ids(&case["generated"]);
        compared += assert_tokens(&g.token_ids, &want, &floats(&case["margins"]), tol.margin, &case.to_string());
    }
    eprintln!("llama guard ({}): worst first-step logits rel err {worst:.2e}, {compared} tokens equal", b.name());
    assert!(worst <= tol.logits, "{worst}");
    // The judge API end to end: the verdict text is the decoded greedy tokens.
    let mut guard = guard;
    guard.max_new_tokens = opts.max_new_tokens;
    let j = guard.judge(b, &[("How do I pick a lock?", Some("I'm sorry, but I cannot help with that."))]).unwrap();
    if floats(&cases[0]["margins"]).iter().all(|&m| m as f64 >= tol.margin) {
        assert_eq!(j[0].raw, cases[0]["decoded"].as_str().unwrap());
    }
}

#[test]
fn llama_guard_vision_prompts_logits_and_verdict_tokens_match() {
    check_llama_guard_vision(&Cpu, CPU);
}

fn check_llama_guard_vision<B: Backend>(b: &B, tol: Tol) {
    let dir = fixture("judges/llama-guard-vision-tiny");
    let refs = read_json(&dir.join("reference.json"));
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut guard = LlamaGuardVision::load(&dir, b).unwrap();
    assert!(guard.template_from_model, "chat_template.json is read");
    guard.max_new_tokens = refs["max_new_tokens"].as_u64().unwrap() as usize;
    assert!(ids(&refs["eos_token_ids"]).iter().all(|e| guard.eos_token_ids.contains(e)));
    let cases = refs["cases"].as_array().unwrap();
    let images: Vec<Option<PathBuf>> = cases.iter().map(|c| c["image"].as_str().map(|rel| dir.join(rel))).collect();
    let mut items = Vec::new();
    for (case, image) in cases.iter().zip(&images) {
        let (prompt, response) = (case["prompt"].as_str().unwrap(), case["response"].as_str());
        let (text, got) = guard.encode(prompt, response, image.is_some()).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        assert_eq!(got, ids(&case["input_ids"]), "ids: one BOS, from the template");
        items.push(GuardItem { prompt, response, image: image.as_deref() });
    }
    assert!(images.iter().any(Option::is_none) && images.iter().filter(|i| i.is_some()).count() >= 4);
    let judged = guard.judge_with_logits(b, &items, true).unwrap();
    let (mut worst, mut compared) = (0.0f64, 0);
    for (case, (j, logits)) in cases.iter().zip(&judged) {
        let reference = f32s(&st, case["logits"].as_str().unwrap()).1;
        worst = worst.max(rel_err(logits.as_ref().unwrap(), &reference));
        let want = ids(&case["generated"]);
        let sure = assert_tokens(&j.token_ids, &want, &floats(&case["margins"]), tol.margin, &case.to_string());
        compared += sure;
        if sure == want.len() {
            assert_eq!(j.raw, case["decoded"].as_str().unwrap());
        }
    }
    eprintln!(
        "llama guard vision ({}): worst first-step logits rel err {worst:.2e}, {compared} tokens equal",
        b.name()
    );
    assert!(worst <= tol.logits, "{worst}");
    assert!(compared > 0, "no token compared");
    if tol.logits <= CPU.logits {
        assert!(compared >= cases.len() * 4, "too few tokens compared: {compared}");
        // One at a time gives the same verdicts as the mixed batch.
        for (item, (j, _)) in items.iter().zip(&judged).take(3) {
            assert_eq!(guard.judge(b, std::slice::from_ref(item)).unwrap()[0].token_ids, j.token_ids);
        }
    }
    // An image that does not decode is named.
    let bad = std::env::temp_dir().join(format!("icet-guard-bad-{}-{}.png", std::process::id(), b.name()));
    std::fs::write(&bad, b"not a png").unwrap();
    let e = guard.judge(b, &[GuardItem { image: Some(&bad), ..items[0] }]).unwrap_err().to_string();
    assert!(e.contains(&bad.display().to_string()), "{e}");
    std::fs::remove_file(&bad).ok();
}

/// Every judge through the CUDA backend (skipped, visibly, without a GPU).
fn check_judges_on_cuda(dtype: DType, label: &str) {
    let b = cuda_or_skip!(label, dtype);
    check_reward(&b, cuda_tol(dtype, "gpt2-reward-tiny"));
    check_toxicity(&b, cuda_tol(dtype, "bert-toxic-tiny"), "bert-toxic-tiny", "toxic", "sigmoid");
    check_toxicity(&b, cuda_tol(dtype, "roberta-toxic-tiny"), "roberta-toxic-tiny", "toxic", "softmax");
    check_llama_guard(&b, cuda_tol(dtype, "llama-guard-tiny"));
    check_llama_guard_vision(&b, cuda_tol(dtype, "llama-guard-vision-tiny"));
    check_deberta(&b, cuda_tol(dtype, "deberta-v3-reward-tiny"));
}

#[test]
fn gpu_judges_parity_f32() {
    check_judges_on_cuda(DType::F32, "gpu_judges_parity_f32");
}

#[test]
fn gpu_judges_parity_bf16() {
    check_judges_on_cuda(DType::BF16, "gpu_judges_parity_bf16");
}

#[test]
fn bad_judge_directories_name_the_file() {
    let e = RewardModel::load(Path::new("/nonexistent-judge"), &Cpu).err().unwrap().to_string();
    assert!(e.contains("/nonexistent-judge/config.json"), "{e}");
    // A toxicity directory is not a reward model: its config has six labels.
    let e = RewardModel::load(&fixture("judges/bert-toxic-tiny"), &Cpu).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
}
