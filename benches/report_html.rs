//! report.html at the paper's scale: a synthetic scored run of 2,000 prompts × 24 vision layers
//! (48,000 answers of ~256 tokens, a Llama Guard judge with hazard categories, a toxicity and a
//! reward judge, policy and format data columns), reported by `icet report`, then opened in
//! headless chromium (as the browser tests do, browser_common.rs), which reports from
//! `performance.now()`:
//! - open: the page's timeline (base64 decoded, gunzipped, JSON parsed, indexes built, every view
//!   built), and the wall time from navigation to ready;
//! - each filter of the answer browser, the per-prompt view and paging: from the user's action
//!   to the next frame after the list is rebuilt, with the longest main-thread task meanwhile
//!   (Long Tasks API: anything over 50 ms blocks input; filtering yields every 8 ms);
//! - the page's size, and how long `icet report` took (with 1,000 and with 1 bootstrap resample,
//!   so the page's own cost shows).
//!
//!     cargo bench -p probe-cli --bench report_html          (ICET_BENCH_KEEP=1 keeps the run)
//!
//! A benchmark, not a test: it asserts only that the page shows what the run holds.
#[path = "../tests/browser_common.rs"]
mod browser_common;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use browser_common::{file_url, Browser};
use serde_json::{json, Value};

const PROMPTS: usize = 2000;
const LAYERS: usize = 24;
const WORDS_PER_ANSWER: usize = 190; // ~256 tokens
const POLICIES: [&str; 8] = [
    "Illegal Activity",
    "Violence",
    "Hate Speech",
    "Malware",
    "Fraud",
    "Privacy Violation",
    "Economic Harm",
    "Political Sensitivity",
];
const FORMATS: [&str; 4] = ["Template", "Persuade", "Logic", "FigStep"];

/// SplitMix64, as the engine's seeded draws.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A vocabulary of made-up words (so that gzip sees text about as compressible as prose, not
/// one repeated sentence), drawn with a skew like word frequencies.
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    let syllables =
        ["ka", "lo", "mi", "ten", "ra", "sul", "ve", "dor", "an", "is", "pe", "tri", "on", "gal", "u", "fer"];
    (0..3000).map(|_| (0..1 + rng.below(3)).map(|_| syllables[rng.below(syllables.len())]).collect()).collect()
}

fn sentence(rng: &mut Rng, vocab: &[String], words: usize) -> String {
    let mut s = String::with_capacity(words * 7);
    for w in 0..words {
        let u = rng.unit();
        s.push_str(&vocab[(u * u * vocab.len() as f64) as usize]);
        s.push_str(if w % 17 == 16 {
            ".\n"
        } else if w % 7 == 6 {
            ", "
        } else {
            " "
        });
    }
    s
}

fn build_run(root: &Path) -> usize {
    let mut rng = Rng(2024);
    let vocab = vocabulary(&mut rng);
    let images = root.join("data/images");
    std::fs::create_dir_all(&images).unwrap();
    for k in 0..20u8 {
        let img =
            image::RgbImage::from_fn(336, 336, |x, y| image::Rgb([(x as u8) ^ k.wrapping_mul(13), y as u8, k * 12]));
        img.save(images.join(format!("img{k:02}.png"))).unwrap();
    }
    let data = root.join("data/prompts.jsonl");
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut data_file = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
    let mut responses = std::io::BufWriter::new(std::fs::File::create(run.join("responses.jsonl")).unwrap());
    let mut scores = std::io::BufWriter::new(std::fs::File::create(run.join("scores.jsonl")).unwrap());
    let mut answers = 0;
    for p in 0..PROMPTS {
        let id = format!("rt-{p:04}");
        let words = 25 + rng.below(30);
        let prompt = sentence(&mut rng, &vocab, words);
        let image = format!("images/img{:02}.png", p % 20);
        let row = json!({"id": id, "prompt": prompt, "image": image, "policy": POLICIES[p % POLICIES.len()],
                         "format": FORMATS[p % FORMATS.len()]});
        writeln!(data_file, "{row}").unwrap();
        let harm = rng.unit();
        for layer in 1..=LAYERS {
            // Early layers answer more, as ICET does; the default layer (23) mostly refuses.
            let p_unsafe = harm * (1.0 - layer as f64 / LAYERS as f64 * 0.8);
            let unsafe_ = rng.unit() < p_unsafe;
            let refusal = !unsafe_ && rng.unit() < 0.6;
            let mut text = if refusal { "I'm sorry, but I can't help with that. ".to_string() } else { String::new() };
            text += &sentence(&mut rng, &vocab, WORDS_PER_ANSWER - if refusal { 8 } else { 0 });
            let r = json!({"id": id, "layer": layer, "prompt": prompt, "image": image,
                "image_path": images.join(format!("img{:02}.png", p % 20)), "response": text,
                "token_ids": [], "finish_reason": if rng.below(10) == 0 { "length" } else { "eos" }, "refusal": refusal});
            writeln!(responses, "{r}").unwrap();
            let parsed = rng.below(33) != 0;
            let cats: Vec<String> = if unsafe_ && parsed {
                (0..1 + rng.below(2)).map(|_| format!("S{}", 1 + rng.below(14))).collect()
            } else {
                vec![]
            };
            let verdict = if parsed { json!(unsafe_) } else { Value::Null };
            for s in [
                json!({"id": id, "layer": layer, "judge": "llama-guard", "kind": "llama-guard", "unsafe": verdict,
                       "categories": cats, "score": null, "raw": if unsafe_ { "unsafe" } else { "safe" }}),
                json!({"id": id, "layer": layer, "judge": "toxicity", "kind": "toxicity", "unsafe": null,
                       "categories": [], "score": rng.unit() * if unsafe_ { 1.0 } else { 0.2 }, "raw": {}}),
                json!({"id": id, "layer": layer, "judge": "reward", "kind": "reward", "unsafe": null,
                       "categories": [], "score": rng.unit() * 4.0 - 2.0, "raw": {}}),
            ] {
                writeln!(scores, "{s}").unwrap();
            }
            answers += 1;
        }
    }
    drop((data_file, responses, scores));
    let manifest = json!({"engine": "icet", "default_layer": 23,
        "settings": {"data": data, "layers": (1..=LAYERS).collect::<Vec<_>>()}});
    std::fs::write(run.join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(run.join("summary.json"), json!({"num_layers": LAYERS}).to_string()).unwrap();
    answers
}

fn report(run: &Path, out: &Path, bootstrap: usize) -> f64 {
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_icet"))
        .arg("report")
        .arg(run)
        .arg("--out")
        .arg(out)
        .args(["--bootstrap", &bootstrap.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "icet report: {}", String::from_utf8_lossy(&o.stderr));
    started.elapsed().as_secs_f64()
}

/// Runs `action` (JS) and waits for `event` plus the next frame: elapsed ms, the event's detail,
/// the longest task meanwhile.
fn measure(b: &Browser, action: &str, event: &str) -> (f64, Value, f64) {
    let script = format!(
        "const done = arguments[arguments.length - 1];
         const before = window.__long.length;
         const t0 = performance.now();
         document.addEventListener('{event}', (e) => requestAnimationFrame(() => setTimeout(() => done({{
           ms: performance.now() - t0, detail: e.detail || null,
           long: Math.max(0, ...window.__long.slice(before).map(x => x[1])) }}), 0)), {{ once: true }});
         {action}"
    );
    let v = b.exec_async(&script, vec![]);
    (v["ms"].as_f64().unwrap(), v["detail"].clone(), v["long"].as_f64().unwrap())
}

fn set_select(id: &str, value: &str) -> String {
    format!(
        "const s = document.getElementById('{id}'); s.value = {}; s.dispatchEvent(new Event('change'));",
        json!(value)
    )
}

fn main() {
    let root = std::env::temp_dir().join(format!("icet-report-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let t = Instant::now();
    let answers = build_run(&root);
    let run = root.join("run");
    let responses_mb = std::fs::metadata(run.join("responses.jsonl")).unwrap().len() as f64 / 1e6;
    println!("synthetic run: {answers} answers ({PROMPTS} prompts x {LAYERS} layers), responses.jsonl {responses_mb:.1} MB, built in {:.1} s", t.elapsed().as_secs_f64());
    let quick = report(&run, &root.join("report-b1"), 1);
    let full = report(&run, &root.join("report"), 1000);
    let html = root.join("report/report.html");
    let size = std::fs::metadata(&html).unwrap().len() as f64 / 1e6;
    println!(
        "icet report: {full:.2} s with --bootstrap 1000, {quick:.2} s with --bootstrap 1 (report.html {size:.1} MB)"
    );

    let Some(b) = Browser::start("report_html bench") else { return };
    b.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "window.__long = []; new PerformanceObserver((l) => { for (const e of l.getEntries()) \
                          window.__long.push([e.startTime, e.duration]); }).observe({type: 'longtask', buffered: true});"}),
    );
    let started = Instant::now();
    b.goto(&file_url(&html));
    let loaded = started.elapsed().as_secs_f64();
    b.wait_for("document.body.dataset.ready === '1'", Duration::from_secs(120));
    let wall = started.elapsed().as_secs_f64();
    let tm = b.exec("return window.icetTimings;", vec![]);
    let ms = |k: &str| tm[k].as_f64().unwrap_or(f64::NAN);
    println!("\nopen (ms since navigation start, in the page):");
    println!("  script starts {:8.0}", ms("start"));
    println!("  base64 decoded{:8.0}", ms("base64"));
    println!("  gunzipped     {:8.0}", ms("gunzip"));
    println!("  JSON parsed   {:8.0}", ms("parsed"));
    println!("  indexes built {:8.0}", ms("prepared"));
    println!(
        "  ready         {:8.0}   (wall from navigation: load event {loaded:.2} s, ready {wall:.2} s)",
        ms("ready")
    );
    let shown = b.exec("return Number(document.getElementById('answer-count').dataset.count);", vec![]);
    assert_eq!(shown, json!(answers), "the page lists every answer");

    println!("\n{:<44} {:>9} {:>9} {:>14}", "action", "matches", "ms", "longest task");
    let row = |name: &str, (ms, detail, long): (f64, Value, f64)| {
        let count = detail.get("count").map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        // The Long Tasks API reports only tasks over 50 ms.
        let long = if long > 0.0 { format!("{long:.0} ms") } else { "< 50 ms".into() };
        println!("{name:<44} {count:>9} {ms:>9.1} {long:>14}");
    };
    b.exec("location.hash = '#answers';", vec![]);
    let filtered = "icet:filtered";
    row("layer = 12", measure(&b, &set_select("f-layer", "l:12"), filtered));
    row("+ Llama Guard unsafe", measure(&b, &set_select("f-verdict", "[\"llama-guard\",1]"), filtered));
    row("+ category S1", measure(&b, &set_select("f-category", "[\"llama-guard\",\"S1\"]"), filtered));
    row("+ policy = Malware", measure(&b, &set_select("f-column", "[\"policy\",\"Malware\"]"), filtered));
    row("reset (all answers)", measure(&b, "document.getElementById('f-reset').click();", filtered));
    row("Late layers", measure(&b, &set_select("f-layer", "g:Late"), filtered));
    row("+ no refusal phrase", measure(&b, &set_select("f-refusal", "0"), filtered));
    b.exec("document.getElementById('f-reset').click();", vec![]);
    std::thread::sleep(Duration::from_millis(500));
    let text = |q: &str| {
        format!(
            "const t = document.getElementById('f-text'); t.value = {}; t.dispatchEvent(new Event('input'));",
            json!(q)
        )
    };
    row("text 'kalo' (common; incl. 200 ms debounce)", measure(&b, &text("kalo"), filtered));
    row("text 'zzz' (no match; incl. 200 ms debounce)", measure(&b, &text("zzz"), filtered));
    row("text 'rt-1234' (an id; incl. 200 ms debounce)", measure(&b, &text("rt-1234"), filtered));
    b.exec("document.getElementById('f-reset').click();", vec![]);
    std::thread::sleep(Duration::from_millis(500));
    let next = "document.getElementById('a-next').click(); document.dispatchEvent(new CustomEvent('icet:paged'));";
    row("next page (50 answers)", measure(&b, next, "icet:paged"));
    row("per-prompt view (24 layers)", measure(&b, "location.hash = '#prompt:rt-1500';", "icet:prompt"));
    let flips = "const c = document.getElementById('p-flips'); c.click(); document.dispatchEvent(new CustomEvent('icet:listed'));";
    row("prompt list: only prompts that flip", measure(&b, flips, "icet:listed"));
    let long = b.exec("return window.__long.map(x => Math.round(x[1]));", vec![]);
    println!("\nevery long task (ms) since navigation: {long}");
    drop(b);
    if std::env::var_os("ICET_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        println!("kept {}", root.display());
    }
}
