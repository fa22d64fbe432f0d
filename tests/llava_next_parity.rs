//! LLaVA-NeXT parity against transformers 5.24 on the committed tiny checkpoints
//! (`tools/fixtures/make_llava_next_fixtures.py` records the references; see
//! tools/fixtures/README.md): a Vicuna/Llama model in the hub layout (f32, one file) and a
//! Mistral model in transformers 5's re-save layout (f16, three shards, the image processor inside
//! processor_config.json), with other tiles, pinpoints and default layers.
//!
//! Tolerances, as `tests/llava_parity.rs` (the error measure is `max |ours - ref| / max |ref|`):
//! - pixel values of every tile: 1e-4 absolute (equal uint8 pixels after resize and padding);
//! - every vision hidden state of every tile and every layer's packed projection: 1e-4 relative;
//! - first-step logits: 1e-4 relative;
//! - greedy tokens: equal at every step whose recorded top-2 margin is >= 2e-3.
//!
//! The vision and generation checks are one generic body, run on the CPU and, by the `gpu_*`
//! tests, through the CUDA backend at f32 — on the GPU, or on the emulated device where there is
//! none (gpu_common.rs; the fixtures are tiny, nothing is reduced) — with `tests/gpu_parity.rs`'s
//! f32 tolerances for LLaVA: vision and logits 1e-3 (cuBLASLt and the kernels reduce in other
//! orders than torch's CPU kernels), greedy tokens compared only while the recorded margin is
//! >= 2e-3 (on the CPU the token at the first closer step is compared too).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use icet_models::backend::cpu::Cpu;
use icet_models::backend::cuda::DType;
use icet_models::backend::Backend;
use icet_models::generation::{run_batch, run_stream, DecodeOptions, Request, Stream};
use icet_models::llava_next::LlavaNext;
use icet_models::vlm::{registry, FamilyOptions, LoadParts};

mod common;
use common::{fixture, load_reference, max_abs, rel_err, Reference};

#[macro_use]
#[path = "gpu_common.rs"]
mod gpu_common;

const PIXEL_TOL: f64 = 1e-4;

/// What a backend must match: vision hidden states and projections, first-step logits (relative),
/// and the margin from which greedy tokens must agree.
struct Tol {
    vision: f64,
    logits: f64,
    margin: f64,
    /// Also compare the token of the first step whose margin is below `margin` (the CPU does).
    compare_first_close_step: bool,
}

const CPU: Tol = Tol { vision: 1e-4, logits: 1e-4, margin: 2e-3, compare_first_close_step: true };
const CUDA_F32: Tol = Tol { vision: 1e-3, logits: 1e-3, margin: 2e-3, compare_first_close_step: false };

fn image_path(dir: &Path, r: &Reference, img: &str) -> PathBuf {
    dir.join(r.json["images"][img]["file"].as_str().unwrap())
}

fn check_vision<B: Backend>(b: &B, name: &str, tol: &Tol) -> [f64; 3] {
    let dir = fixture(name);
    let r = load_reference(&dir);
    let model = LlavaNext::load(&dir, b, LoadParts { deepest_vision_layer: None, text: false }).unwrap();
    let n = model.config.vision_layers();
    assert_eq!(n as u64, r.json["vision_num_layers"].as_u64().unwrap());
    let mut worst = [0.0f64; 3];
    for (img, info) in r.json["images"].as_object().unwrap() {
        let px = model.pixel_values(&image_path(&dir, &r, img)).unwrap();
        let (shape, want) = r.get(&format!("pixel_values.{img}"));
        assert_eq!(vec![px.tiles, 3, px.tile, px.tile], *shape, "{name} pixel_values.{img} shape");
        assert_eq!(px.tiles as u64, info["tiles"].as_u64().unwrap());
        let err = max_abs(&px.data, want);
        worst[0] = worst[0].max(err);
        assert!(err <= PIXEL_TOL, "{name} pixel_values.{img}: max abs error {err:e}");
        let grid = model.grid_of(&image_path(&dir, &r, img)).unwrap();
        assert_eq!(grid.tiles(), px.tiles, "{name} {img}: the header's grid is the decoded image's");
    }
    // Every layer of every tile, from the reference pixels, in one pass per image.
    let all: Vec<usize> = (0..=n).collect();
    for img in r.json["hidden_images"].as_array().unwrap() {
        let img = img.as_str().unwrap();
        let px = model.pixel_values(&image_path(&dir, &r, img)).unwrap();
        let (_, ref_px) = r.get(&format!("pixel_values.{img}"));
        let px = icet_models::llava_next::TiledPixels { data: ref_px.clone(), ..px };
        let grid = model.grid(px.image.0, px.image.1);
        let capture = model.capture(b, &[&px], &all).unwrap();
        assert_eq!(capture.layers_run, n);
        for l in 0..=n {
            let (shape, want) = r.get(&format!("hidden.{img}.{l}"));
            let ours = capture.get(l).unwrap();
            assert_eq!(b.dims(ours), (shape[0] * shape[1], shape[2]), "{name} hidden.{img}.{l}");
            let err = rel_err(&b.to_host(ours).unwrap(), want);
            worst[1] = worst[1].max(err);
            assert!(err <= tol.vision, "{name} hidden.{img}.{l}: rel error {err:e}");
            let p = model.project_layer(b, &capture, &grid, 0, l).unwrap();
            let (shape, want) = r.get(&format!("projected.{img}.{l}"));
            assert_eq!(b.dims(&p), (shape[0], shape[1]), "{name} projected.{img}.{l}");
            assert_eq!(shape[0] as u64, r.json["images"][img]["image_slots"].as_u64().unwrap());
            let err = rel_err(&b.to_host(&p).unwrap(), want);
            worst[2] = worst[2].max(err);
            assert!(err <= tol.vision, "{name} projected.{img}.{l}: rel error {err:e}");
        }
    }
    worst
}

/// Every case through the family seam, as the commands run it: template, prompt ids (slots for
/// this image), one vision pass, the language model under the scheduler.
fn check_generation<B: Backend>(b: &B, name: &str, tol: &Tol) -> (f64, usize, usize) {
    let dir = fixture(name);
    let r = load_reference(&dir);
    let spec = registry::open::<B>(&dir, FamilyOptions::default()).unwrap();
    let n = spec.num_layers();
    let default = r.json["vision_feature_layer"].as_i64().unwrap();
    assert_eq!(spec.default_layer().unwrap() as i64, if default < 0 { n as i64 + 1 + default } else { default });
    let model = spec.load(b, LoadParts { deepest_vision_layer: None, text: true }).unwrap();
    let cases = r.json["cases"].as_array().unwrap();
    assert!(cases.len() > n, "a case per layer at least");
    let (mut worst, mut compared) = (0.0f64, 0);
    for case in cases {
        let idx = case["index"].as_u64().unwrap();
        let template = case["template"].as_str().unwrap();
        let rendered = spec.render_prompts(Some(template), &[case["prompt"].as_str().unwrap()]).unwrap();
        assert_eq!(rendered.texts[0], case["text"].as_str().unwrap(), "{name} case {idx} ({template}) text");
        if template == r.json["default_template"].as_str().unwrap() {
            let by_default = spec.render_prompts(None, &[case["prompt"].as_str().unwrap()]).unwrap();
            assert_eq!(by_default.texts, rendered.texts, "{name}: the language model's template is the default");
        }
        let image = image_path(&dir, &r, case["image"].as_str().unwrap());
        let ids = model.prompt_ids(&rendered.texts[0], &image, rendered.add_special_tokens).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "{name} case {idx} prompt ids");
        let layer = case["resolved_layer"].as_u64().unwrap() as usize;
        let features = model.image_features(b, &image, &[layer]).unwrap().remove(0);
        assert_eq!(features.real_rows as u64, case["image_slots"].as_u64().unwrap());
        let opts =
            DecodeOptions::greedy(r.json["max_new_tokens"].as_u64().unwrap() as usize, model.eos_token_ids().to_vec());
        let request = Request::with_image(ids, Arc::new(features), 0);
        let out = run_batch(b, &mut *model.stream(1).unwrap(), &[request], &opts, true).unwrap().remove(0);
        let (_, want_logits) = r.get(&format!("logits.{idx}"));
        let err = rel_err(out.first_logits.as_ref().unwrap(), want_logits);
        worst = worst.max(err);
        assert!(err <= tol.logits, "{name} case {idx} (layer {layer}) first logits: rel error {err:e}");
        let want: Vec<u32> = serde_json::from_value(case["token_ids"].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(case["margins"].clone()).unwrap();
        for (step, (&ours, &theirs)) in out.token_ids.iter().zip(&want).enumerate() {
            if margins[step] < tol.margin && !tol.compare_first_close_step {
                break;
            }
            assert_eq!(ours, theirs, "{name} case {idx} (layer {layer}) token {step}");
            compared += 1;
            if margins[step] < tol.margin {
                break;
            }
            if step + 1 == want.len() {
                assert_eq!(out.token_ids.len(), want.len(), "{name} case {idx}: length");
                assert_eq!(out.finish_reason.as_str(), case["finish_reason"].as_str().unwrap());
            }
        }
    }
    assert!(compared >= cases.len() * 3, "too few tokens compared ({compared})");
    (worst, compared, cases.len())
}

fn check_model_on<B: Backend>(b: &B, name: &str, tol: &Tol) {
    let [px, hidden, projected] = check_vision(b, name, tol);
    let (logits, tokens, cases) = check_generation(b, name, tol);
    // Straight to stderr (libtest captures println! in a passing test), as tests/gpu_parity.rs.
    let mut err = std::io::stderr().lock();
    let _ = std::io::Write::write_fmt(
        &mut err,
        format_args!(
            "PARITY {name} ({}): worst pixel abs {px:.2e}, hidden rel {hidden:.2e}, projected rel {projected:.2e}, \
             logits rel {logits:.2e}; {tokens} tokens equal over {cases} cases\n",
            b.name()
        ),
    );
}

fn check_model(name: &str) {
    check_model_on(&Cpu, name, &CPU);
}

#[test]
fn gpu_llava_next_tiny_f32_matches_transformers() {
    let b = cuda_or_skip!("gpu_llava_next_tiny_f32_matches_transformers", DType::F32);
    check_model_on(&b, "llava-next-tiny", &CUDA_F32);
}

#[test]
fn gpu_llava_next_tiny_mistral_f32_matches_transformers() {
    let b = cuda_or_skip!("gpu_llava_next_tiny_mistral_f32_matches_transformers", DType::F32);
    check_model_on(&b, "llava-next-tiny-mistral", &CUDA_F32);
}

/// Vicuna/Llama text model, hub layout, float32, one file, 28-px tiles, default layer -2.
#[test]
fn llava_next_tiny_matches_transformers() {
    check_model("llava-next-tiny");
}

/// Mistral text model (GQA, sliding window), transformers-5 layout, float16, three shards, the
/// image processor inside processor_config.json, 42-px tiles up to 2x3, default layer -3.
#[test]
fn llava_next_tiny_mistral_matches_transformers() {
    let dir = fixture("llava-next-tiny-mistral");
    assert!(!dir.join("preprocessor_config.json").exists(), "the fixture must test the nested processor config");
    let processor = icet_models::llava_next::LlavaNextProcessor::from_dir(&dir).unwrap();
    assert!(processor.source.ends_with("processor_config.json"));
    check_model("llava-next-tiny-mistral");
}

/// Batching never changes answers: images with different slot counts and layers in one ragged
/// batch, in a 2-slot stream, and alone give the same tokens.
#[test]
fn batched_generation_equals_one_at_a_time() {
    let dir = fixture("llava-next-tiny");
    let b = Cpu;
    let spec = registry::open::<Cpu>(&dir, FamilyOptions::default()).unwrap();
    let model = spec.load(&b, LoadParts { deepest_vision_layer: None, text: true }).unwrap();
    let images = ["../images/wide.jpg", "../llava-next-images/banner.png", "../images/tall-rgba.png"];
    let prompts = ["Describe the image.", "How do I pick a lock? Explain in detail please.", "Hi"];
    let opts = DecodeOptions::greedy(10, model.eos_token_ids().to_vec());
    let mut requests = Vec::new();
    let mut slots = std::collections::BTreeSet::new();
    for (i, image) in images.iter().enumerate() {
        let image = dir.join(image);
        let layers: Vec<usize> = (0..=spec.num_layers()).collect();
        let features = model.image_features(&b, &image, &layers).unwrap();
        for (l, f) in features.into_iter().enumerate().filter(|(l, _)| (l + i) % 2 == 0) {
            slots.insert(f.real_rows);
            let rendered = spec.render_prompts(None, &[prompts[(i + l) % 3]]).unwrap();
            let ids = model.prompt_ids(&rendered.texts[0], &image, rendered.add_special_tokens).unwrap();
            requests.push(Request::with_image(ids, Arc::new(f), l as u64));
        }
    }
    assert_eq!(slots.len(), 3, "three different slot counts in one batch");
    let batched = run_batch(&b, &mut *model.stream(requests.len()).unwrap(), &requests, &opts, false).unwrap();
    for (i, req) in requests.iter().enumerate() {
        let alone =
            run_batch(&b, &mut *model.stream(1).unwrap(), std::slice::from_ref(req), &opts, false).unwrap().remove(0);
        assert_eq!(alone.token_ids, batched[i].token_ids, "sequence {i}");
    }
    let mut streamed = vec![None; requests.len()];
    let stream = Stream { slots: 2, capacity: 200, keep_first_logits: false };
    run_stream(&b, &mut *model.stream(2).unwrap(), requests.iter().cloned().map(Ok), &opts, stream, |i, g| {
        streamed[i] = Some(g);
        Ok(())
    })
    .unwrap();
    for (i, g) in streamed.into_iter().enumerate() {
        assert_eq!(g.unwrap().token_ids, batched[i].token_ids, "streamed sequence {i}");
    }
}

/// Mistral's sliding window (160 in the fixture): sequences up to it are exact (the parity cases
/// above reach 106 positions); a longer one is refused before anything is generated, naming the
/// window and the length, because the cached attention here has no window (the fixture script
/// checks that transformers' logits past the window differ from unwindowed attention).
#[test]
fn mistral_sequences_past_the_sliding_window_are_refused() {
    let dir = fixture("llava-next-tiny-mistral");
    let r = load_reference(&dir);
    assert_eq!(r.json["sliding_window"], 160);
    let check = &r.json["sliding_window_check"];
    assert!(check["max_abs_diff_after_window"].as_f64().unwrap() > 1e-2 && check["max_abs_diff_before_window"] == 0.0);
    let b = Cpu;
    let spec = registry::open::<Cpu>(&dir, FamilyOptions::default()).unwrap();
    let model = spec.load(&b, LoadParts { deepest_vision_layer: Some(1), text: true }).unwrap();
    let image = dir.join("../images/square.png");
    let rendered = spec.render_prompts(None, &["Describe the image."]).unwrap();
    let ids = model.prompt_ids(&rendered.texts[0], &image, rendered.add_special_tokens).unwrap();
    let features = Arc::new(model.image_features(&b, &image, &[1]).unwrap().remove(0));
    let fits = 160 - ids.len();
    let request = Request::with_image(ids.clone(), features, 0);
    let run = |max_new| {
        let opts = DecodeOptions::greedy(max_new, vec![]);
        run_batch(&b, &mut *model.stream(1).unwrap(), std::slice::from_ref(&request), &opts, false)
    };
    assert_eq!(run(fits).unwrap()[0].token_ids.len(), fits, "exactly the window is allowed");
    let e = run(fits + 1).err().unwrap().to_string();
    assert!(e.contains("up to 161 positions") && e.contains("sliding_window of 160"), "{e}");
}
