//! LLaVA parity against transformers 5.24 on the committed tiny checkpoints
//! (`tools/fixtures/make_fixtures.py` records the references; see tools/fixtures/README.md).
//!
//! Tolerances (the error measure is `max |ours - ref| / max |ref|` over a tensor):
//! - pixel values: 1e-4 absolute (equal uint8 pixels after resize);
//! - vision hidden states and projected features: 1e-4 relative, every layer, both strategies;
//! - first-step logits: 1e-4 relative;
//! - greedy tokens: equal at every step whose recorded top-2 margin is >= 2e-3 (after a step with
//!   a smaller margin, transformers' own choice is a coin flip, so later tokens are not compared).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use icet_models::backend::cpu::{Cpu, CpuTensor};
use icet_models::backend::Backend;
use icet_models::generation::{run_batch, run_stream, DecodeOptions, ImageFeatures, Request, Stream};
use icet_models::layers::resolve_layer;
use icet_models::llava::{FeatureStrategy, Llava, Template};
use icet_models::vlm::LoadParts;

mod common;
use common::{fixture, load_reference, max_abs, rel_err, Reference};

const VISION_TOL: f64 = 1e-4;
const LOGITS_TOL: f64 = 1e-4;
const PIXEL_TOL: f64 = 1e-4;
const MARGIN_FOR_EQUAL_TOKENS: f64 = 2e-3;

fn image_path(dir: &Path, r: &Reference, img: &str) -> PathBuf {
    dir.join(r.json["images"][img].as_str().unwrap())
}

fn check_model(name: &str) {
    let dir = fixture(name);
    let r = load_reference(&dir);
    let b = Cpu;
    let model = Llava::load(&dir, &b, LoadParts { deepest_vision_layer: None, text: true }).unwrap();
    let num_layers = model.config.vision_layers();
    let mut worst = [0.0f64; 4]; // pixels, hidden, projected, logits
    assert_eq!(num_layers as u64, r.json["vision_num_layers"].as_u64().unwrap());

    // Preprocessing, with and without the original LLaVA's pad-to-square.
    for img in r.json["images"].as_object().unwrap().keys() {
        for (pad, key) in [(false, "pixel_values"), (true, "pixel_values_padsq")] {
            let px = model.pixel_values(&image_path(&dir, &r, img), pad).unwrap();
            let (shape, want) = r.get(&format!("{key}.{img}"));
            assert_eq!(vec![3, px.height, px.width], *shape, "{name} {key}.{img} shape");
            let err = max_abs(&px.data, want);
            worst[0] = worst[0].max(err);
            assert!(err <= PIXEL_TOL, "{name} {key}.{img}: max abs error {err:e}");
        }
    }

    // Every vision layer and both strategies, from the reference pixels (one pass per image).
    let all: Vec<usize> = (0..=num_layers).collect();
    let hidden_images: Vec<&str> =
        ["square", "wide"].into_iter().filter(|i| r.tensors.contains_key(&format!("hidden.{i}.0"))).collect();
    assert!(!hidden_images.is_empty());
    for img in &hidden_images {
        let (shape, px) = r.get(&format!("pixel_values.{img}"));
        let pixels = b.from_host(px, shape[0] * shape[1], shape[2]).unwrap();
        let capture = model.vision.capture(&b, &[pixels], &all).unwrap();
        assert_eq!(capture.layers_run, num_layers);
        for l in 0..=num_layers {
            let ours = capture.get(l).unwrap();
            let (shape, want) = r.get(&format!("hidden.{img}.{l}"));
            assert_eq!(b.dims(ours), (shape[0], shape[1]));
            let err = rel_err(&ours.data, want);
            worst[1] = worst[1].max(err);
            assert!(err <= VISION_TOL, "{name} hidden.{img}.{l}: rel error {err:e}");
            for s in [FeatureStrategy::Default, FeatureStrategy::Full] {
                let p = model.project_layer(&b, &capture, l, s).unwrap();
                let (shape, want) = r.get(&format!("projected.{img}.{l}.{}", s.name()));
                assert_eq!(b.dims(&p), (shape[0], shape[1]));
                let err = rel_err(&p.data, want);
                worst[2] = worst[2].max(err);
                assert!(err <= VISION_TOL, "{name} projected.{img}.{l}.{}: rel error {err:e}", s.name());
            }
        }
    }

    // Prompts, first-step logits and greedy generations for every layer.
    let tokenizer = model.tokenizer().unwrap();
    let strategy = model.config.strategy();
    let cases = r.json["cases"].as_array().unwrap();
    assert!(cases.len() > num_layers, "a case per layer at least");
    let mut compared_tokens = 0;
    for case in cases {
        let idx = case["index"].as_u64().unwrap();
        let template = Template::parse(case["template"].as_str().unwrap()).unwrap();
        let text = template.render(case["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "case {idx} template text");
        let ids = tokenizer.encode_with_image(&text, model.config.image_slots(strategy)).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "case {idx} prompt ids");

        let layer = resolve_layer(case["layer"].as_i64().unwrap(), num_layers).unwrap();
        let img = case["image"].as_str().unwrap();
        let px = model.pixel_values(&image_path(&dir, &r, img), false).unwrap();
        let capture = model.vision.capture(&b, &[model.upload_pixels(&b, &px).unwrap()], &[layer]).unwrap();
        assert_eq!(capture.layers_run, layer, "early exit: no layer beyond the requested one runs");
        let features: CpuTensor = model.project_layer(&b, &capture, layer, strategy).unwrap();
        let max_new = case["token_ids"].as_array().unwrap().len().max(1);
        let opts = DecodeOptions::greedy(
            r.json["max_new_tokens"].as_u64().unwrap() as usize,
            model.generation.eos_token_ids.clone(),
        );
        let features = Arc::new(ImageFeatures::all_real(&b, features));
        let out = run_batch(&b, &mut model.stream().unwrap(), &[Request::with_image(ids, features, 0)], &opts, true)
            .unwrap()
            .remove(0);
        let (_, want_logits) = r.get(&format!("logits.{idx}"));
        let err = rel_err(out.first_logits.as_ref().unwrap(), want_logits);
        worst[3] = worst[3].max(err);
        assert!(err <= LOGITS_TOL, "{name} case {idx} (layer {layer}) first logits: rel error {err:e}");
        let want_tokens: Vec<u32> = serde_json::from_value(case["token_ids"].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(case["margins"].clone()).unwrap();
        for (step, (&ours, &theirs)) in out.token_ids.iter().zip(&want_tokens).enumerate() {
            assert_eq!(ours, theirs, "{name} case {idx} (layer {layer}) token {step}");
            compared_tokens += 1;
            if margins[step] < MARGIN_FOR_EQUAL_TOKENS {
                break;
            }
            if step + 1 == want_tokens.len() {
                assert_eq!(out.token_ids.len(), want_tokens.len(), "{name} case {idx}: length");
                assert_eq!(out.finish_reason.as_str(), case["finish_reason"].as_str().unwrap());
            }
        }
        assert!(max_new > 0);
    }
    assert!(compared_tokens >= cases.len() * 3, "too few tokens compared ({compared_tokens})");
    // Shown with --nocapture: the margins the tolerances leave.
    println!(
        "{name}: worst pixel abs {:.2e}, hidden rel {:.2e}, projected rel {:.2e}, logits rel {:.2e}; {compared_tokens} tokens equal over {} cases",
        worst[0],
        worst[1],
        worst[2],
        worst[3],
        cases.len()
    );
}

/// Hub layout, float32, one file, MHA, `default` strategy.
#[test]
fn llava_tiny_matches_transformers() {
    check_model("llava-tiny");
}

/// transformers ≥ 4.52 layout, float16, three shards, GQA, `full` strategy, 5.x rope keys.
#[test]
fn llava_tiny_gqa_matches_transformers() {
    check_model("llava-tiny-gqa");
}

/// Batching must not change answers: a ragged batch of different layers and prompts gives the
/// same tokens as each sequence alone.
#[test]
fn batched_generation_equals_one_at_a_time() {
    let dir = fixture("llava-tiny-gqa");
    let b = Cpu;
    let model = Llava::load(&dir, &b, LoadParts { deepest_vision_layer: None, text: true }).unwrap();
    let strategy = model.config.strategy();
    let tok = model.tokenizer().unwrap();
    let px = model.pixel_values(&dir.join("../images/wide.jpg"), false).unwrap();
    let layers: Vec<usize> = (0..=model.config.vision_layers()).collect();
    let capture = model.vision.capture(&b, &[model.upload_pixels(&b, &px).unwrap()], &layers).unwrap();
    let feats: Vec<CpuTensor> =
        layers.iter().map(|&l| model.project_layer(&b, &capture, l, strategy).unwrap()).collect();
    let prompts = ["Describe the image.", "How do I pick a lock? Explain in detail please.", "Hi"];
    let opts = DecodeOptions::greedy(10, model.generation.eos_token_ids.clone());
    let feats: Vec<Arc<ImageFeatures<Cpu>>> =
        feats.into_iter().map(|f| Arc::new(ImageFeatures::all_real(&b, f))).collect();
    let requests: Vec<Request<Cpu>> = layers
        .iter()
        .zip(prompts.iter().cycle())
        .map(|(&l, p)| {
            let prompt_ids = tok
                .encode_with_image(&Template::LlavaV1.render(p).unwrap(), model.config.image_slots(strategy))
                .unwrap();
            Request::with_image(prompt_ids, feats[l].clone(), l as u64)
        })
        .collect();
    let batched = run_batch(&b, &mut model.stream().unwrap(), &requests, &opts, false).unwrap();
    for (i, req) in requests.iter().enumerate() {
        let single = req.clone();
        let alone = run_batch(&b, &mut model.stream().unwrap(), &[single], &opts, false).unwrap().remove(0);
        assert_eq!(alone.token_ids, batched[i].token_ids, "sequence {i}");
    }
    // Continuous batching through two slots (sequences join as others finish) changes nothing.
    let mut streamed = vec![None; requests.len()];
    let stream = Stream { slots: 2, capacity: 80, keep_first_logits: false };
    run_stream(&b, &mut model.stream().unwrap(), requests.iter().cloned().map(Ok), &opts, stream, |i, g| {
        assert!(streamed[i].is_none(), "request {i} reported twice");
        streamed[i] = Some(g);
        Ok(())
    })
    .unwrap();
    for (i, g) in streamed.into_iter().enumerate() {
        assert_eq!(g.expect("every request finishes").token_ids, batched[i].token_ids, "streamed sequence {i}");
    }
    // Seeded sampling is reproducible and independent of batching too.
    let sampled =
        DecodeOptions { sampling: Some(icet_models::backend::SamplingParams { temperature: 1.0, top_p: 0.9 }), ..opts };
    let a = run_batch(&b, &mut model.stream().unwrap(), &requests, &sampled, false).unwrap();
    let single = requests[2].clone();
    let c = run_batch(&b, &mut model.stream().unwrap(), &[single], &sampled, false).unwrap();
    assert_eq!(a[2].token_ids, c[0].token_ids);
}
