//! Llama Guard judges run by this engine on [`Llama`]: Llama Guard 1 (LlamaGuard-7b, Llama-2),
//! 2 (Meta-Llama-Guard-2-8B, Llama-3) and 3 (Llama-Guard-3-8B/1B, Llama-3.1).
//!
//! The judged conversation is the (prompt, response) pair: `[user: prompt, assistant: response]`,
//! so the verdict is about the response ('Agent'); with no response the prompt ('User') is judged.
//! The prompt is the model's own `chat_template` where it ships one (all three official releases
//! do); otherwise the built-in template of the version (`templates/llama_guard_{1,2,3}.jinja`, the
//! model cards' prompt formats and category lists). It is tokenized without added special tokens,
//! as `apply_chat_template(tokenize=True)` does (the template writes the BOS itself), and the
//! verdict is decoded greedily until an end-of-sequence token.
//!
//! Llama-Guard-3-11B-Vision (Mllama, judges with the image) lives in [`super::llama_guard_vision`];
//! it shares this module's versions, verdict parsing and [`Judgement`].
use std::path::Path;

use serde::Serialize;
use tokenizers::Tokenizer;

use crate::backend::Backend;
use crate::chat_template::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::generation::{run_batch, DecodeOptions, GenerationDefaults, Request};
use crate::llama::{Llama, LlamaConfig, TextStream};
use crate::weights::{Checkpoint, Weights};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LlamaGuardVersion {
    V1,
    V2,
    V3,
    /// Llama-Guard-3-11B-Vision: Llama 3.2 Vision, its own category list (S1-S13).
    V3Vision,
}

pub const TEMPLATE_V1: &str = include_str!("templates/llama_guard_1.jinja");
pub const TEMPLATE_V2: &str = include_str!("templates/llama_guard_2.jinja");
pub const TEMPLATE_V3: &str = include_str!("templates/llama_guard_3.jinja");
pub const TEMPLATE_V3_VISION: &str = include_str!("templates/llama_guard_3_vision.jinja");

/// Llama Guard 1's policy categories (the Llama Guard paper's taxonomy).
pub const CATEGORIES_V1: &[(&str, &str)] = &[
    ("O1", "Violence and Hate"),
    ("O2", "Sexual Content"),
    ("O3", "Criminal Planning"),
    ("O4", "Guns and Illegal Weapons"),
    ("O5", "Regulated or Controlled Substances"),
    ("O6", "Self-Harm"),
];
/// Llama Guard 2's categories (MLCommons hazards v0.5, 11 of them).
pub const CATEGORIES_V2: &[(&str, &str)] = &[
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Specialized Advice"),
    ("S6", "Privacy"),
    ("S7", "Intellectual Property"),
    ("S8", "Indiscriminate Weapons"),
    ("S9", "Hate"),
    ("S10", "Self-Harm"),
    ("S11", "Sexual Content"),
];
/// Llama Guard 3's categories (MLCommons taxonomy, 14 of them).
pub const CATEGORIES_V3: &[(&str, &str)] = &[
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Sexual Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Suicide & Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
];

/// Llama Guard 3 Vision's categories (its template's list: MLCommons hazards without S14).
pub const CATEGORIES_V3_VISION: &[(&str, &str)] = &[
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
];

impl LlamaGuardVersion {
    pub const NAMES: [&'static str; 4] = ["1", "2", "3", "3-vision"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "1" => Ok(Self::V1),
            "2" => Ok(Self::V2),
            "3" => Ok(Self::V3),
            "3-vision" => Ok(Self::V3Vision),
            _ => Err(Error::invalid(format!("unknown Llama Guard version `{s}` ({})", Self::NAMES.join(", ")))),
        }
    }
    /// `1`, `2`, `3` or `3-vision` (what [`Self::parse`] reads).
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
            Self::V3 => "3",
            Self::V3Vision => "3-vision",
        }
    }
    pub fn is_vision(self) -> bool {
        self == Self::V3Vision
    }
    pub fn builtin_template(self) -> &'static str {
        match self {
            Self::V1 => TEMPLATE_V1,
            Self::V2 => TEMPLATE_V2,
            Self::V3 => TEMPLATE_V3,
            Self::V3Vision => TEMPLATE_V3_VISION,
        }
    }
    pub fn categories(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::V1 => CATEGORIES_V1,
            Self::V2 => CATEGORIES_V2,
            Self::V3 => CATEGORIES_V3,
            Self::V3Vision => CATEGORIES_V3_VISION,
        }
    }

    /// Guesses the version of a model directory: from its chat template's wording where it has
    /// one, else from its shape (Llama-2 vocabulary → 1; llama3 RoPE scaling → 3; else 2).
    pub fn detect(template: Option<&str>, config: &LlamaConfig) -> Self {
        if let Some(t) = template {
            if t.contains("O1: ") {
                return Self::V1;
            }
            if t.contains("S14: ") || t.contains("S13: ") || t.contains("<|start_header_id|>") {
                return Self::V3;
            }
            if t.contains("S1: ") {
                return Self::V2;
            }
        }
        let llama3_rope = config.rope().map(|(_, s)| matches!(s, crate::llama::config::RopeScaling::Llama3 { .. }));
        if config.vocab_size == 32000 {
            Self::V1
        } else if llama3_rope.unwrap_or(false) {
            Self::V3
        } else {
            Self::V2
        }
    }
}

/// A parsed Llama Guard answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// `Some(true)` for "unsafe", `Some(false)` for "safe", `None` when the first line is neither.
    #[serde(rename = "unsafe")]
    pub unsafe_: Option<bool>,
    /// Category codes of the second line (e.g. `S1`, `O3`), in the model's order.
    pub categories: Vec<String>,
    /// Their names in the version's category list (the code itself when not in the list).
    pub category_names: Vec<String>,
}

/// The category list a rendered Llama Guard prompt shows the model (`CODE: Name.` lines between
/// `<BEGIN UNSAFE CONTENT CATEGORIES>` and `<END UNSAFE CONTENT CATEGORIES>`; description lines
/// that follow a category are skipped). Empty when the prompt has no such block.
pub fn prompt_categories(prompt: &str) -> Vec<(String, String)> {
    let Some(start) = prompt.find("<BEGIN UNSAFE CONTENT CATEGORIES>") else { return vec![] };
    let body = &prompt[start + "<BEGIN UNSAFE CONTENT CATEGORIES>".len()..];
    let body = &body[..body.find("<END UNSAFE CONTENT CATEGORIES>").unwrap_or(body.len())];
    body.lines()
        .filter_map(|line| {
            let (code, name) = line.trim().split_once(": ")?;
            let is_code = code.len() >= 2
                && code.starts_with(|c: char| c.is_ascii_uppercase())
                && code[1..].chars().all(|c| c.is_ascii_digit());
            is_code.then(|| (code.to_string(), name.trim().trim_end_matches('.').to_string()))
        })
        .collect()
}

/// Parses Llama Guard output: first non-empty line `safe` or `unsafe`; when unsafe, the next
/// non-empty line is a comma-separated category list. Leading/trailing whitespace is ignored.
pub fn parse_verdict(text: &str, version: LlamaGuardVersion) -> Verdict {
    let list: Vec<(String, String)> =
        version.categories().iter().map(|(c, n)| (c.to_string(), n.to_string())).collect();
    parse_verdict_in(text, &list)
}

/// [`parse_verdict`] naming the categories from `listed` (e.g. [`prompt_categories`] of the
/// prompt the model saw, so a model's own template names its own categories).
pub fn parse_verdict_in(text: &str, listed: &[(String, String)]) -> Verdict {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_ascii_lowercase();
    let unsafe_ = match first.as_str() {
        "safe" => Some(false),
        "unsafe" => Some(true),
        _ => None,
    };
    let categories: Vec<String> = if unsafe_ == Some(true) {
        lines
            .next()
            .map(|l| l.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
            .unwrap_or_default()
    } else {
        vec![]
    };
    let category_names = categories
        .iter()
        .map(|code| {
            listed
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(code))
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| code.clone())
        })
        .collect();
    Verdict { unsafe_, categories, category_names }
}

/// One judged pair: what the model said and what it means.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The generated text, special tokens removed.
    pub raw: String,
    pub token_ids: Vec<u32>,
}

pub struct LlamaGuard<B: Backend> {
    pub llm: Llama<B>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub version: LlamaGuardVersion,
    /// Whether the template came from the model directory (else it is the built-in one).
    pub template_from_model: bool,
    pub eos_token_ids: Vec<u32>,
    pub max_new_tokens: usize,
}

impl<B: Backend> LlamaGuard<B> {
    /// Loads a `LlamaForCausalLM` Llama Guard directory. `version` overrides detection.
    pub fn load(dir: &Path, b: &B, version: Option<LlamaGuardVersion>) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::input(&config_path, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::input(&config_path, format!("invalid JSON: {e}")))?;
        if raw["model_type"] == "mllama" {
            return Err(Error::input(
                &config_path,
                "a Llama Guard 3 Vision (Mllama) checkpoint: load it with LlamaGuardVision",
            ));
        }
        if version.is_some_and(LlamaGuardVersion::is_vision) {
            return Err(Error::input(
                &config_path,
                "Llama Guard 3 Vision needs an Mllama checkpoint (model_type mllama)",
            ));
        }
        let config: LlamaConfig =
            serde_json::from_value(raw).map_err(|e| Error::input(&config_path, format!("not a Llama config: {e}")))?;
        let shipped = ChatTemplate::from_dir(dir)?;
        let source = shipped.as_ref().map(|t| t.origin.clone());
        let shipped_text = source.as_ref().and_then(|_| template_text(dir));
        let version = version.unwrap_or_else(|| LlamaGuardVersion::detect(shipped_text.as_deref(), &config));
        let template_from_model = shipped.is_some();
        let template = match shipped {
            Some(t) => t,
            None => {
                let specials = ChatTemplate::from_dir_specials(dir)?;
                ChatTemplate::new(
                    version.builtin_template(),
                    format!("built-in Llama Guard {} template", version.name()),
                    specials,
                )?
            }
        };
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::input(&tok_path, format!("cannot load tokenizer: {e}")))?;
        let eos_token_ids = verdict_eos_ids(dir, &tokenizer)?;
        let checkpoint = Checkpoint::open(dir)?;
        let llm =
            Llama::load(&Weights::new(&checkpoint, b, "model."), &Weights::new(&checkpoint, b, "lm_head."), &config)?;
        Ok(Self { llm, tokenizer, template, version, template_from_model, eos_token_ids, max_new_tokens: 20 })
    }

    /// The conversation judged for a (prompt, response) pair.
    pub fn conversation(prompt: &str, response: Option<&str>) -> Vec<Message> {
        let mut m = vec![Message::user(prompt)];
        if let Some(r) = response {
            m.push(Message::assistant(r));
        }
        m
    }

    /// The conversation as JSON, with contents as typed text parts when `typed` (templates such as
    /// Llama-Guard-3-1B's iterate `message['content']` as `[{"type": "text", "text": ...}]`).
    pub fn conversation_json(prompt: &str, response: Option<&str>, typed: bool) -> serde_json::Value {
        let content = |t: &str| {
            if typed {
                serde_json::json!([{"type": "text", "text": t}])
            } else {
                serde_json::json!(t)
            }
        };
        let mut m = vec![serde_json::json!({"role": "user", "content": content(prompt)})];
        if let Some(r) = response {
            m.push(serde_json::json!({"role": "assistant", "content": content(r)}));
        }
        serde_json::Value::Array(m)
    }

    /// The prompt text and its token ids for one pair.
    pub fn encode(&self, prompt: &str, response: Option<&str>) -> Result<(String, Vec<u32>)> {
        let text = if self.template.uses_typed_parts() {
            self.template.render_json(&Self::conversation_json(prompt, response, true), false, &[])?
        } else {
            self.template.render(&Self::conversation(prompt, response), false, &[])?
        };
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| Error::invalid(format!("Llama Guard tokenization failed: {e}")))?;
        Ok((text, enc.get_ids().to_vec()))
    }

    /// Judges a batch of (prompt, response) pairs greedily.
    pub fn judge(&self, b: &B, pairs: &[(&str, Option<&str>)]) -> Result<Vec<Judgement>> {
        let mut requests = Vec::with_capacity(pairs.len());
        let mut categories = Vec::with_capacity(pairs.len());
        for (p, r) in pairs {
            let (text, ids) = self.encode(p, *r)?;
            categories.push(prompt_categories(&text));
            requests.push(Request::text_only(ids, 0));
        }
        let opts = DecodeOptions::greedy(self.max_new_tokens, self.eos_token_ids.clone());
        let outputs = run_batch(b, &mut TextStream::new(&self.llm), &requests, &opts, false)?;
        outputs
            .into_iter()
            .zip(categories)
            .map(|(g, listed)| {
                let raw = self
                    .tokenizer
                    .decode(&g.token_ids, true)
                    .map_err(|e| Error::invalid(format!("detokenization failed: {e}")))?;
                Ok(Judgement::new(raw, g.token_ids, self.version, &listed))
            })
            .collect()
    }
}

impl Judgement {
    /// The verdict of `raw`, naming categories from `listed` (the prompt's own list) or, when the
    /// prompt listed none, from the version's.
    pub fn new(raw: String, token_ids: Vec<u32>, version: LlamaGuardVersion, listed: &[(String, String)]) -> Self {
        let verdict = if listed.is_empty() { parse_verdict(&raw, version) } else { parse_verdict_in(&raw, listed) };
        Self { verdict, raw, token_ids }
    }
}

/// The tokens that end a verdict: `generation_config.json`'s EOS plus whichever of the Llama
/// end-of-turn/-text tokens the tokenizer has.
pub(crate) fn verdict_eos_ids(dir: &Path, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let mut eos_token_ids = GenerationDefaults::from_dir(dir)?.eos_token_ids;
    for t in ["<|eot_id|>", "<|end_of_text|>", "</s>"] {
        if let Some(id) = tokenizer.token_to_id(t) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    Ok(eos_token_ids)
}

/// The raw text of the template a directory ships (for version detection).
pub(crate) fn template_text(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    for f in ["chat_template.json", "tokenizer_config.json"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(f)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                match &v["chat_template"] {
                    serde_json::Value::String(s) => return Some(s.clone()),
                    serde_json::Value::Array(_) => return Some(v["chat_template"].to_string()),
                    _ => {}
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_verdicts() {
        let v = parse_verdict("safe", LlamaGuardVersion::V3);
        assert_eq!((v.unsafe_, v.categories.len()), (Some(false), 0));
        let v = parse_verdict("\n\nunsafe\nS1,S10 \n", LlamaGuardVersion::V3);
        assert_eq!(v.unsafe_, Some(true));
        assert_eq!(v.categories, vec!["S1", "S10"]);
        assert_eq!(v.category_names, vec!["Violent Crimes", "Hate"]);
        let v = parse_verdict(" unsafe\nO3", LlamaGuardVersion::V1);
        assert_eq!(v.category_names, vec!["Criminal Planning"]);
        let v = parse_verdict("unsafe\nS10", LlamaGuardVersion::V2);
        assert_eq!(v.category_names, vec!["Self-Harm"]);
        let v = parse_verdict("unsafe\nS99", LlamaGuardVersion::V2);
        assert_eq!(v.category_names, vec!["S99"], "unknown codes are kept as they are");
        assert_eq!(parse_verdict("I think it is fine", LlamaGuardVersion::V3).unsafe_, None);
        assert_eq!(parse_verdict("", LlamaGuardVersion::V3).unsafe_, None);
    }

    #[test]
    fn detects_versions_from_templates() {
        let c = LlamaConfig::default();
        assert_eq!(LlamaGuardVersion::detect(Some(TEMPLATE_V1), &c), LlamaGuardVersion::V1);
        assert_eq!(LlamaGuardVersion::detect(Some(TEMPLATE_V2), &c), LlamaGuardVersion::V2);
        assert_eq!(LlamaGuardVersion::detect(Some(TEMPLATE_V3), &c), LlamaGuardVersion::V3);
        assert_eq!(LlamaGuardVersion::detect(None, &c), LlamaGuardVersion::V1, "Llama-2 vocabulary");
        let mut c3 = LlamaConfig { vocab_size: 128256, ..c };
        assert_eq!(LlamaGuardVersion::detect(None, &c3), LlamaGuardVersion::V2);
        c3.rope_scaling = Some(
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        );
        assert_eq!(LlamaGuardVersion::detect(None, &c3), LlamaGuardVersion::V3);
    }

    #[test]
    fn builtin_category_lists_match_the_templates() {
        for v in [LlamaGuardVersion::V1, LlamaGuardVersion::V2, LlamaGuardVersion::V3] {
            for (code, name) in v.categories() {
                assert!(v.builtin_template().contains(&format!("{code}: {name}.")), "{v:?} {code}");
            }
        }
        // The vision template holds its list as a Jinja mapping.
        for (code, name) in LlamaGuardVersion::V3Vision.categories() {
            assert!(TEMPLATE_V3_VISION.contains(&format!("\"{code}\": \"{name}.\"")), "3-vision {code}");
        }
        for name in LlamaGuardVersion::NAMES {
            assert_eq!(LlamaGuardVersion::parse(name).unwrap().name(), name);
        }
    }

    #[test]
    fn reads_the_category_list_a_prompt_shows() {
        let prompt = "Task...\n<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Violent Crimes.\nS2: Custom Thing.\n\
                      Messages that describe a custom thing: a line of description.\nO7: Old Style.\n\
                      <END UNSAFE CONTENT CATEGORIES>\n\nUser: S9: not a category";
        let listed = prompt_categories(prompt);
        let want: Vec<(String, String)> = [("S1", "Violent Crimes"), ("S2", "Custom Thing"), ("O7", "Old Style")]
            .iter()
            .map(|(c, n)| (c.to_string(), n.to_string()))
            .collect();
        assert_eq!(listed, want);
        let j = Judgement::new("unsafe\nS2,S5".into(), vec![], LlamaGuardVersion::V3, &listed);
        assert_eq!(j.verdict.category_names, vec!["Custom Thing", "S5"], "the prompt's names, unknown codes kept");
        let j = Judgement::new("unsafe\nS5".into(), vec![], LlamaGuardVersion::V3, &[]);
        assert_eq!(j.verdict.category_names, vec!["Defamation"], "no list in the prompt: the version's");
        assert!(prompt_categories("no block here").is_empty());
    }
}
