//! `icet bench`'s engine: throughput of the stages of a sweep on one model and device — a sweep's
//! per-image vision work (one pass keeping every layer, then the projector for each layer),
//! prefill, and decode at several batch sizes — with the work each stage does (FLOPs from the
//! config, [`icet_models::flops`]; weight bytes for decode), so the numbers read against the
//! device's roofline. Any model family. Timings are medians of `repeat` runs after one warm-up;
//! every timed call ends by copying a result to the host, which waits for the device.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use icet_models::backend::Backend;
use icet_models::flops::FlopModel;
use icet_models::generation::{run_stream, DecodeOptions, Request, Stream, StreamModel, StreamSeq};
use icet_models::vlm::{registry, EarlyExitVlm, FamilyOptions, LoadParts};
use serde::Serialize;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchRequest {
    pub model_dir: PathBuf,
    pub family_options: FamilyOptions,
    pub image: PathBuf,
    /// Images per vision measurement (copies of `image`).
    pub vision_batches: Vec<usize>,
    /// Sequences per prefill/decode measurement.
    pub batch_sizes: Vec<usize>,
    /// Tokens generated per sequence in the decode measurement (no early stop at EOS).
    pub new_tokens: usize,
    pub repeat: usize,
    /// The user prompt (wrapped in the family's default template).
    pub prompt: String,
    /// The model is the embedded demo (recorded).
    pub demo: bool,
}

impl BenchRequest {
    /// The measurement settings make sense (checked before anything loads).
    pub fn check(&self) -> Result<()> {
        if self.repeat == 0 || self.new_tokens < 3 {
            bail!("--repeat must be at least 1 and --new-tokens at least 3 (decode is timed from the third token on)");
        }
        if self.vision_batches.contains(&0) || self.batch_sizes.contains(&0) {
            bail!("batch sizes must be at least 1");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub stage: &'static str,
    /// Images (vision) or sequences (prefill, decode).
    pub batch: usize,
    /// Median seconds of one call (decode: of one step).
    pub seconds: f64,
    pub throughput: f64,
    pub unit: &'static str,
    pub tflops: f64,
    /// Decode: weight bytes streamed per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_gbps: Option<f64>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median seconds of `f` over `repeat` runs after a warm-up.
fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// A [`StreamModel`] whose steps are timed: a step runs from one `step` call to the next (the
/// scheduler's token choice in between copies the tokens to the host, which waits for the
/// device), so decode steps are measured directly rather than as a difference of totals.
struct Timed<'a, B: Backend> {
    inner: Box<dyn StreamModel<B> + 'a>,
    /// Start of the previous step, and whether every sequence in it was decoding.
    last: Option<(Instant, bool)>,
    decode_steps: Vec<f64>,
}

impl<B: Backend> StreamModel<B> for Timed<'_, B> {
    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> icet_models::Result<B::KvCache> {
        self.inner.new_cache(b, slots, capacity)
    }
    fn admit(&mut self, b: &B, slot: usize, request: &Request<B>) -> icet_models::Result<()> {
        self.inner.admit(b, slot, request)
    }
    fn release(&mut self, slot: usize) {
        self.inner.release(slot)
    }
    fn step(&mut self, b: &B, seqs: &[StreamSeq<B>], cache: &mut B::KvCache) -> icet_models::Result<B::Tensor> {
        let now = Instant::now();
        if let Some((start, true)) = self.last {
            self.decode_steps.push((now - start).as_secs_f64());
        }
        self.last = Some((now, seqs.iter().all(|s| !s.fresh)));
        self.inner.step(b, seqs, cache)
    }
}

/// `batch` copies of `request` generated for `new_tokens` tokens (greedy, no end-of-sequence:
/// every sequence runs the full length, so batches stay full), all at once; returns the durations
/// of the steps in which every sequence was decoding.
fn timed_run<B: Backend>(
    b: &B,
    model: &dyn EarlyExitVlm<B>,
    request: &Request<B>,
    batch: usize,
    new_tokens: usize,
) -> Result<Vec<f64>> {
    let opts = DecodeOptions::greedy(new_tokens, vec![]);
    let requests = (0..batch).map(|i| Ok(Request { seed: i as u64, ..request.clone() }));
    let capacity = request.prompt_ids.len() + opts.max_new_tokens;
    let stream = Stream { slots: batch, capacity, keep_first_logits: false };
    let mut timed = Timed { inner: model.stream(batch)?, last: None, decode_steps: vec![] };
    run_stream(b, &mut timed, requests, &opts, stream, |_, _| Ok(()))?;
    Ok(timed.decode_steps)
}

/// Runs every stage on `b`; returns the measurements and the JSON report (what produced them
/// included).
pub fn bench<B: Backend>(b: &B, req: &BenchRequest) -> Result<(Vec<Measurement>, serde_json::Value)> {
    req.check()?;
    let load_start = Instant::now();
    let spec = registry::open::<B>(&req.model_dir, req.family_options.clone())?;
    let model = spec.load(b, LoadParts { deepest_vision_layer: None, text: true })?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let default_layer = spec.default_layer()?;
    let rendered = spec.render_prompts(None, &[req.prompt.as_str()])?;
    let prompt_ids = model.prompt_ids(&rendered.texts[0], &req.image, rendered.add_special_tokens)?;
    let features = model.image_features(b, &req.image, &[default_layer])?.remove(0);
    let flops = model.flop_model(&req.image)?;
    let request = Request::with_image(prompt_ids, Arc::new(features), 0);
    let len = request.prompt_ids.len();
    let limit = model.stream(1)?.max_positions();
    if len + req.new_tokens > limit {
        bail!("prompt of {len} tokens + --new-tokens {} exceeds the model's {limit} positions", req.new_tokens);
    }

    let mut rows = Vec::new();
    let bar = indicatif::ProgressBar::new((req.vision_batches.len() + 2 * req.batch_sizes.len()) as u64);
    for &n in &req.vision_batches {
        let mut work = model.vision_workload(b, &req.image, n)?;
        let seconds = time(req.repeat, || Ok(work()?))?;
        rows.push(Measurement {
            stage: "vision",
            batch: n,
            seconds,
            throughput: n as f64 / seconds,
            unit: "images/s",
            tflops: n as f64 * flops.vision_per_image / seconds / 1e12,
            weight_gbps: None,
        });
        bar.inc(1);
    }
    for &batch in &req.batch_sizes {
        let prefill = time(req.repeat, || timed_run(b, model.as_ref(), &request, batch, 1))?;
        bar.inc(1);
        rows.push(Measurement {
            stage: "prefill",
            batch,
            seconds: prefill,
            throughput: (batch * len) as f64 / prefill,
            unit: "tokens/s",
            tflops: flops.prefill(batch, len) / prefill / 1e12,
            weight_gbps: None,
        });
        // Every repeat's decode-only steps together (the warm-up run's too: each step is timed).
        let mut steps = Vec::new();
        for _ in 0..=req.repeat {
            steps.extend(timed_run(b, model.as_ref(), &request, batch, req.new_tokens)?);
        }
        bar.inc(1);
        if steps.is_empty() {
            bail!("no decode step was timed; raise --new-tokens (at least 3)");
        }
        rows.push(decode_row(&flops, batch, median(steps), len + req.new_tokens / 2, b.element_bytes()));
    }
    bar.finish_and_clear();

    let mut report = serde_json::json!({
        "engine": "icet",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "model": req.model_dir,
        "demo": req.demo,
        "backend": b.name(),
        "element_bytes": b.element_bytes(),
        "prompt_tokens": len,
        "new_tokens": req.new_tokens,
        "repeat": req.repeat,
        "flops": flops,
        "measurements": rows,
        "load_seconds": load_seconds,
    });
    if let Some(r) = report.as_object_mut() {
        r.extend(model.bench_facts(&req.image)?);
    }
    Ok((rows, report))
}

/// The decode row: one step of `batch` sequences with `context` tokens each.
fn decode_row(flops: &FlopModel, batch: usize, step: f64, context: usize, element_bytes: usize) -> Measurement {
    Measurement {
        stage: "decode",
        batch,
        seconds: step,
        throughput: batch as f64 / step,
        unit: "tokens/s",
        tflops: flops.decode_step(batch, context) / step / 1e12,
        weight_gbps: Some(flops.text_weight_elements * element_bytes as f64 / step / 1e9),
    }
}

/// The table `icet bench` prints.
pub fn table(rows: &[Measurement]) -> String {
    let mut s = format!(
        "{:<8} {:>6} {:>12} {:>16} {:>10} {:>12}\n",
        "stage", "batch", "time", "throughput", "TFLOP/s", "weights GB/s"
    );
    for r in rows {
        let gbps = r.weight_gbps.map(|g| format!("{g:.1}")).unwrap_or_default();
        s.push_str(&format!(
            "{:<8} {:>6} {:>9.3} ms {:>9.1} {:<6} {:>10.4} {:>12}\n",
            r.stage,
            r.batch,
            r.seconds * 1e3,
            r.throughput,
            r.unit,
            r.tflops,
            gbps
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
