//! `report.html`: one self-contained page per report that researchers read in a browser — the
//! per-layer table with intervals, interactive plots, an answer browser with filters and a
//! per-prompt view of one prompt's answers at every layer, for one run or two compared.
//!
//! The page is one file: its style, script and data are inline, nothing is loaded from the
//! network (the Content-Security-Policy forbids it), images are linked relative to the page or
//! embedded as thumbnails ([`ImageMode`]).
//!
//! Data flow: [`Page`] is the page's input — what it shows, independent of how a run directory
//! is laid out; [`from_report`] builds it from `icet report`'s results and the run's files.
//! [`render`] turns it into HTML: the page is encoded compactly ([`wire`]: prompts once, answers
//! as columns), gzipped and base64-encoded into a non-executed `<script type=…>` block that the
//! page's script decodes with the browser's `DecompressionStream`. Base64 has no `<`, so no answer,
//! prompt or id can close the block or open a comment; the script builds every element with
//! `textContent` and never parses data as HTML.
//!
//! Safety: every string in a run is untrusted (written by a model or a data file). The CSP allows
//! exactly the page's own inline script and style (by SHA-256 hash, computed here when the page is
//! written), images relative to the page or `data:`, and nothing else: no inline event handlers,
//! no remote loads, no forms, no `<base>`.
pub mod from_report;
mod images;
mod wire;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `icet report`'s options for report.html.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HtmlArgs {
    /// Embed each image in report.html as a small JPEG thumbnail (the page then travels alone;
    /// bigger file). Default: images are linked relative to the page, at full size
    #[arg(long)]
    pub html_thumbnails: bool,
}

/// Everything the page shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Page {
    /// Who wrote the page (engine and version), shown in its footer.
    pub generator: String,
    /// Bootstrap resamples and seed behind the intervals.
    pub bootstrap: usize,
    pub seed: u64,
    /// One run, or several compared (same views, overlaid plots, answers side by side).
    pub runs: Vec<RunPage>,
    /// ASR beside VQA accuracy and reward by layer, across the runs (when they hold both).
    pub safety_utility: Option<SafetyUtilityPage>,
}

/// The safety–utility table and plots ([`crate::safety_utility`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SafetyUtilityPage {
    pub default_layer: Option<usize>,
    pub num_layers: usize,
    pub columns: Vec<SafetyUtilityColumn>,
    /// Layers, then the groups; one value per column.
    pub rows: Vec<SafetyUtilityRow>,
    /// (ASR column, accuracy column) pairs and the layers each flags as unsafe and still useful.
    pub pairs: Vec<SafetyUtilityPair>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SafetyUtilityColumn {
    /// The run's label and the metric's key in it.
    pub run: String,
    pub key: String,
    pub title: String,
    /// "rate" (shown as %) or "score".
    pub unit: String,
    /// "asr", "accuracy" or "reward".
    pub kind: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SafetyUtilityRow {
    pub row: String,
    pub layers: Vec<usize>,
    pub is_default: bool,
    pub is_group: bool,
    /// Unsafe and still useful by some pair.
    pub flagged: bool,
    pub values: Vec<Option<Interval>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SafetyUtilityPair {
    pub asr: usize,
    pub accuracy: usize,
    pub flagged: Vec<usize>,
}

/// One run: its table and its answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunPage {
    pub label: String,
    /// The run directory, as given.
    pub dir: String,
    /// Depth of the vision tower (layers 1..=num_layers; 0 = embeddings).
    pub num_layers: usize,
    pub default_layer: Option<usize>,
    /// Columns of the per-layer table, in order.
    pub metrics: Vec<MetricColumn>,
    /// Per Llama Guard judge, the share of its parsed verdicts flagging each hazard category.
    pub category_metrics: Vec<MetricColumn>,
    /// Per VQA judge, its accuracy on each answer type (`vqa:JUDGE:TYPE`).
    pub answer_type_metrics: Vec<MetricColumn>,
    /// Per Llama Guard judge: answers whose verdict was neither safe nor unsafe.
    pub unparsed_verdicts: BTreeMap<String, usize>,
    /// Per-layer rows in layer order, then the Early / Middle / Late / Average rows.
    pub rows: Vec<TableRow>,
    /// The judges that scored this run, in the table's order.
    pub judges: Vec<JudgeColumn>,
    /// Data-file columns (e.g. JailBreakV's `policy`, `format`) shown with each prompt and
    /// offered as filters; each answer has one value per column, in this order.
    pub data_columns: Vec<String>,
    pub answers: Vec<Answer>,
    /// What the page cannot show, and why (shown under the run's name).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricColumn {
    /// As in report.json: `refusal_rate`, `asr:JUDGE`, `toxicity:JUDGE`, `category:JUDGE:S1`, …
    pub key: String,
    /// Column heading, e.g. "ASR (llama-guard)".
    pub title: String,
    /// "rate" (shown as %), "toxicity" (shown ×100) or "score" (shown as is).
    pub unit: String,
    /// The judge a hazard-category column belongs to (empty for the others).
    pub judge: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TableRow {
    /// The layer number, or Early / Middle / Late / Average.
    pub row: String,
    pub layers: Vec<usize>,
    pub is_default: bool,
    /// A row over several layers (Early / Middle / Late / Average).
    pub is_group: bool,
    /// Answers behind the row (the table's `n` column).
    pub n: Option<usize>,
    /// Metric key → estimate.
    pub values: BTreeMap<String, Interval>,
}

/// A value with its bootstrapped 95% interval.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub n: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JudgeColumn {
    pub name: String,
    /// `llama-guard` (verdicts and hazard categories), `toxicity`, `perspective` or `reward` (scores).
    pub kind: String,
}

/// One answer of the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub id: String,
    pub layer: usize,
    pub prompt: String,
    /// The image as the data file names it.
    pub image: String,
    /// Where the page finds it: a URL relative to the page or a `data:image/…` thumbnail; `None`
    /// when the image could not be found.
    pub image_src: Option<String>,
    pub response: String,
    pub finish_reason: String,
    /// The keyword refusal detector's verdict.
    pub refusal: bool,
    /// One entry per judge of [`RunPage::judges`], in order; `None`: that judge has not scored it.
    pub verdicts: Vec<Option<Verdict>>,
    /// One value per [`RunPage::data_columns`] entry ("" where the row has none).
    pub columns: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// Llama Guard: unsafe (true), safe (false), neither (None). Other kinds: None.
    #[serde(rename = "unsafe")]
    pub unsafe_: Option<bool>,
    /// Llama Guard's hazard categories of an unsafe verdict.
    pub categories: Vec<String>,
    /// Toxicity probability, Perspective TOXICITY or reward.
    pub score: Option<f64>,
}

const TEMPLATE: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// The `'sha256-…'` CSP source of an inline element's text.
fn csp_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

/// The page's Content-Security-Policy: its own script and style (by hash) and images relative to
/// the page or inline; no network, no inline event handlers (no `'unsafe-inline'`, no
/// `'unsafe-hashes'`), no plugins, forms, frames or `<base>`. (`frame-ancestors` would be ignored
/// in a `<meta>` policy, with a console warning, so it is not set.)
fn content_security_policy() -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; img-src 'self' file: data:; \
         base-uri 'none'; form-action 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE)
    )
}

/// Fills `{{NAME}}` markers in one pass, so that a filled-in value is never searched for markers.
fn fill(template: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").map(|e| start + e).context("page.html: unclosed {{")?;
        let name = &rest[start + 2..end];
        let Some((_, value)) = values.iter().find(|(n, _)| *n == name) else {
            bail!("page.html: unknown marker {{{{{name}}}}}");
        };
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The page's HTML.
pub fn render(page: &Page) -> Result<String> {
    let json = serde_json::to_vec(&wire::encode(page)?)?;
    // Level 3: on 48,000 answers (58 MB of JSON, benches/report_html.rs) it writes 19 MB in
    // ~2.5 s where the default level 6 takes ~8 s for 18 MB, and level 1 ~1.2 s for 25 MB.
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(json.len() / 3), flate2::Compression::new(3));
    gz.write_all(&json)?;
    let data = base64::engine::general_purpose::STANDARD.encode(gz.finish()?);
    let csp = content_security_policy();
    fill(TEMPLATE, &[("CSP", &csp), ("STYLE", STYLE), ("SCRIPT", SCRIPT), ("DATA", &data)])
}

/// Writes the page to `path` (through a temporary file, so a reader never sees half a page).
pub fn write(page: &Page, path: &Path) -> Result<()> {
    let html = render(page)?;
    let tmp = path.with_extension("html.partial");
    std::fs::write(&tmp, html).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(response: &str) -> Page {
        let rows = vec![TableRow {
            row: "1".into(),
            layers: vec![1],
            is_default: true,
            is_group: false,
            n: Some(1),
            values: BTreeMap::from([("refusal_rate".into(), Interval { value: 0.0, ci_low: 0.0, ci_high: 0.0, n: 1 })]),
        }];
        Page {
            generator: "test".into(),
            bootstrap: 10,
            seed: 0,
            runs: vec![RunPage {
                label: "</script><!--".into(),
                dir: "d".into(),
                num_layers: 1,
                default_layer: Some(1),
                metrics: vec![MetricColumn {
                    key: "refusal_rate".into(),
                    title: "refusal rate".into(),
                    unit: "rate".into(),
                    judge: String::new(),
                }],
                category_metrics: vec![],
                answer_type_metrics: vec![],
                unparsed_verdicts: BTreeMap::new(),
                rows,
                judges: vec![],
                data_columns: vec![],
                answers: vec![Answer {
                    id: "<b>id</b>".into(),
                    layer: 1,
                    prompt: "p".into(),
                    image: "i.png".into(),
                    image_src: None,
                    response: response.into(),
                    finish_reason: "eos".into(),
                    refusal: false,
                    verdicts: vec![],
                    columns: vec![],
                }],
                notes: vec![],
            }],
            safety_utility: None,
        }
    }

    /// The page's data, decoded as the browser does: base64, gunzip, JSON.
    fn embedded(html: &str) -> serde_json::Value {
        let start = html.find("id=\"icet-data\">").unwrap() + "id=\"icet-data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        let gz = base64::engine::general_purpose::STANDARD.decode(&html[start..end]).unwrap();
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn data_cannot_leave_its_block_and_the_csp_hashes_what_is_inline() {
        let hostile = "</script><script>alert(1)</script><!-- <img src=x onerror=alert(1)>";
        let html = render(&page(hostile)).unwrap();
        assert!(!html.contains("alert(1)") && !html.contains("<b>id</b>") && !html.contains("</script><!--"));
        let data = embedded(&html);
        assert_eq!(data["runs"][0]["answers"]["response"][0], hostile);
        assert_eq!(data["runs"][0]["prompts"]["id"][0], "<b>id</b>");
        // Exactly one inline script and one inline style, and the CSP names their hashes.
        assert_eq!(html.matches("<script>").count(), 1);
        assert_eq!(html.matches("<style>").count(), 1);
        let script = &html[html.find("<script>").unwrap() + 8..html.rfind("</script>").unwrap()];
        let style = &html[html.find("<style>").unwrap() + 7..html.find("</style>").unwrap()];
        assert_eq!((script, style), (SCRIPT, STYLE));
        let csp = content_security_policy();
        assert!(html.contains(&format!("content=\"{csp}\"")));
        assert!(csp.contains(&csp_hash(SCRIPT)) && csp.contains(&csp_hash(STYLE)));
        assert!(!csp.contains("unsafe") && csp.starts_with("default-src 'none'"));
        // The assets cannot close their own elements early.
        assert!(!SCRIPT.contains("</script") && !STYLE.contains("</style"));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
        assert!(!SCRIPT.contains("eval(") && !SCRIPT.contains("new Function"));
    }

    #[test]
    fn csp_hash_is_the_sha256_of_the_text() {
        // sha256("") = e3b0c442…b855, base64 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=.
        assert_eq!(csp_hash(""), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
    }

    #[test]
    fn markers_are_filled_once() {
        let out = fill("a{{X}}b{{Y}}c", &[("X", "{{Y}}"), ("Y", "y")]).unwrap();
        assert_eq!(out, "a{{Y}}byc");
        assert!(fill("{{Z}}", &[]).unwrap_err().to_string().contains("unknown marker {{Z}}"));
    }
}
