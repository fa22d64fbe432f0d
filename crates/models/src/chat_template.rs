//! A model's own chat template, rendered as transformers' `apply_chat_template` renders it.
//!
//! transformers (utils/chat_template_utils.py, `_cached_compile_jinja_template` and
//! `render_jinja_template`) compiles the template in a Jinja2 sandbox with `trim_blocks=True`,
//! `lstrip_blocks=True`, the `loopcontrols` extension, a `tojson` filter that is Python's
//! `json.dumps(ensure_ascii=False)`, and the globals `raise_exception` and `strftime_now`; it renders
//! with `messages`, `add_generation_prompt` and the tokenizer's special tokens (`bos_token`,
//! `eos_token`, ...) as variables. This module sets up minijinja the same way, with minijinja-contrib's
//! `pycompat` so that Python string methods (`.strip()`, `.title()`, ...) work on values, and keeps
//! Jinja's default of dropping one trailing newline of the template.
//!
//! Where a template comes from, in transformers' order of preference: `chat_template.jinja`, then
//! `chat_template.json` (`{"chat_template": ...}`), then `tokenizer_config.json`'s `chat_template`
//! (a string, or a list of `{name, template}` of which `default` is used).
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.to_string(), content: content.to_string() }
    }
    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: &str) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template was read from (for error messages).
    pub origin: PathBuf,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token`, ... as transformers' `special_tokens_map`.
    pub special_tokens: Vec<(String, String)>,
    /// The template text.
    pub source: String,
}

const TEMPLATE_NAME: &str = "chat_template";

/// Removes `{% generation %}` / `{% endgeneration %}` tags (any `-` whitespace control). They are
/// transformers' `AssistantTracker` extension, which renders its body unchanged and only records
/// where assistant text lies; llava-hf's templates use it, and Jinja engines without the
/// extension reject it.
pub fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(close) = rest[open..].find("%}") else { break };
        let tag = &rest[open + 2..open + close];
        let name = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..open]);
        if name != "generation" && name != "endgeneration" {
            out.push_str(&rest[open..open + close + 2]);
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names it in errors.
    pub fn new(source: &str, origin: impl Into<PathBuf>, special_tokens: Vec<(String, String)>) -> Result<Self> {
        let origin = origin.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source))
            .map_err(|e| Error::input(&origin, format!("chat template does not compile: {e}")))?;
        Ok(Self { env, origin, special_tokens, source: source.to_string() })
    }

    /// The special-token strings of a model directory (for a template that does not come from it).
    pub fn from_dir_specials(dir: &Path) -> Result<Vec<(String, String)>> {
        special_tokens_of(dir)
    }

    /// The template a model directory ships, if any (see the module docs for the order).
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let specials = special_tokens_of(dir)?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|e| Error::input(&jinja, e))?;
            return Self::new(&text, jinja, specials).map(Some);
        }
        for (file, key) in [("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")] {
            let path = dir.join(file);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid JSON: {e}")))?;
            match &v[key] {
                serde_json::Value::String(s) => return Self::new(s, path, specials).map(Some),
                serde_json::Value::Array(list) => {
                    let default = list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str());
                    match default {
                        Some(s) => return Self::new(s, path, specials).map(Some),
                        None => {
                            return Err(Error::input(&path, "`chat_template` list has no template named `default`"))
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Renders `messages` (what `apply_chat_template(messages, tokenize=False, ...)` returns).
    /// `extra` adds template variables, which win over the special tokens, as transformers' kwargs do.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<String> {
        self.render_value(Value::from_serialize(messages), add_generation_prompt, extra)
    }

    /// Whether the template reads message contents as lists of typed parts
    /// (`{"type": "text", "text": ...}`), as Llama-Guard-3-1B's and vision models' templates do,
    /// rather than as strings.
    pub fn uses_typed_parts(&self) -> bool {
        let s = self.source.replace('"', "'");
        s.contains("['type']") || s.contains(".type ") || s.contains("selectattr('type'")
    }

    /// Renders messages given as JSON, for contents that are lists of typed parts as processors
    /// pass them (`[{"type": "image"}, {"type": "text", "text": ...}]`).
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<String> {
        self.render_value(Value::from_serialize(messages), add_generation_prompt, extra)
    }

    /// One user turn of an image and `prompt` with the generation prompt, as processors'
    /// `apply_chat_template` renders it: `[image, text]` typed parts for templates that read
    /// them, else the text with `placeholder` (the model's image token) in front.
    pub fn render_image_turn(&self, prompt: &str, placeholder: &str) -> Result<String> {
        let content = if self.uses_typed_parts() {
            serde_json::json!([{"type": "image"}, {"type": "text", "text": prompt}])
        } else {
            serde_json::Value::String(format!("{placeholder}{prompt}"))
        };
        self.render_json(&serde_json::json!([{"role": "user", "content": content}]), true, &[])
    }

    fn render_value(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).expect("added in new()");
        let mut ctx: Vec<(String, Value)> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        for (k, v) in extra {
            ctx.retain(|(name, _)| name != k);
            ctx.push((k.to_string(), Value::from_serialize(v)));
        }
        ctx.push(("messages".into(), messages));
        ctx.push(("add_generation_prompt".into(), Value::from(add_generation_prompt)));
        ctx.push(("tools".into(), Value::from(())));
        ctx.push(("documents".into(), Value::from(())));
        let ctx: Value = ctx.into_iter().collect();
        template.render(ctx).map_err(|e| {
            // raise_exception's message is the template's own words; show it as is.
            let detail = match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("template error").to_string(),
                _ => format!("{e:#}"),
            };
            Error::input(&self.origin, format!("chat template failed: {detail}"))
        })
    }
}

/// `special_tokens_map` as transformers builds it: `special_tokens_map.json`, overridden by the
/// tokens named in `tokenizer_config.json` (strings, or `{"content": ...}` objects).
fn special_tokens_of(dir: &Path) -> Result<Vec<(String, String)>> {
    const KEYS: [&str; 8] =
        ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "image_token"];
    let mut out: Vec<(String, String)> = Vec::new();
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid JSON: {e}")))?;
        for key in KEYS {
            let token = match &v[key] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                _ => None,
            };
            if let Some(t) = token {
                out.retain(|(k, _)| k != key);
                out.push((key.to_string(), t));
            }
        }
    }
    Ok(out)
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `strftime_now(format)`: the current local time formatted. This engine formats
/// UTC with the common directives (`%Y %m %d %H %M %S %b %B %a %A %y %j %%`), enough for the
/// date lines of Llama 3.x templates.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Value::from(strftime_utc(&format, secs)))
}

/// Formats `secs` since the Unix epoch (UTC) with a subset of C's strftime.
pub fn strftime_utc(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('j') => out += &format!("{yday:03}"),
            Some('H') => out += &format!("{:02}", rem / 3600),
            Some('M') => out += &format!("{:02}", rem / 60 % 60),
            Some('S') => out += &format!("{:02}", rem % 60),
            Some('B') => out += MONTHS[(month - 1) as usize],
            Some('b') => out += &MONTHS[(month - 1) as usize][..3],
            Some('A') => out += DAYS[weekday],
            Some('a') => out += &DAYS[weekday][..3],
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=...)`,
/// i.e. Python's separators `", "` and `": "` (`","` at line ends when indenting).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value, indent, sort_keys.unwrap_or(false), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                // Python prints floats with repr: always a '.0' or exponent.
                let s = format!("{f:?}");
                out.push_str(&s);
            }
        }
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or("")).expect("strings serialize")),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                let key = k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&key).expect("strings serialize"));
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, indent, sort, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("cannot convert {v} to JSON"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn generation_tags_are_removed_and_nothing_else() {
        let src = "{% for m in messages %}{%- generation -%}{{ m }}{% endgeneration %}{% endfor %}{{ '{%' }}";
        assert_eq!(super::strip_generation_tags(src), "{% for m in messages %}{{ m }}{% endfor %}{{ '{%' }}");
    }

    use super::*;

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-07-23 13:05:09 UTC was a Tuesday, day 205 of a leap year.
        let t = 1_721_739_909;
        assert_eq!(strftime_utc("%d %b %Y %H:%M:%S %A %j %y %B %%", t), "23 Jul 2024 13:05:09 Tuesday 205 24 July %");
        assert_eq!(strftime_utc("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime_utc("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
    }

    #[test]
    fn settings_follow_transformers() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {{ m.role }}:{{ m['content'] | trim }}|{% endfor %}{{ bos_token }}\n",
            "t",
            vec![("bos_token".into(), "<s>".into())],
        )
        .unwrap();
        // lstrip_blocks removes the indentation before the tag, trim_blocks the newline after it,
        // and one trailing newline of the template is dropped.
        let out = t.render(&[Message::user(" a "), Message::assistant("b")], false, &[]).unwrap();
        assert_eq!(out, "  user:a|  assistant:b|<s>");
        let err = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "x.json", vec![])
            .unwrap()
            .render(&[], false, &[])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x.json: chat template failed: roles must alternate");
        let bad = ChatTemplate::new("{% if %}", "y.jinja", vec![]).err().unwrap().to_string();
        assert!(bad.starts_with("y.jinja: chat template does not compile"), "{bad}");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", "t", vec![]).unwrap();
        let x = serde_json::json!({"b": [1, 2.5, true, null], "a": "é\"\n"});
        let out = t.render(&[], false, &[("x", x)]).unwrap();
        assert_eq!(
            out,
            "{\"a\": \"é\\\"\\n\", \"b\": [1, 2.5, true, null]}|{\n  \"a\": \"é\\\"\\n\",\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null\n  ]\n}"
        );
    }

    #[test]
    fn finds_the_template_a_directory_ships() {
        let d = std::env::temp_dir().join(format!("icet-chat-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        assert!(ChatTemplate::from_dir(&d).unwrap().is_none());
        // tokenizer_config.json: a list of named templates, `default` used; specials from both files.
        std::fs::write(
            d.join("special_tokens_map.json"),
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": "<pad>"}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"eos_token": "<|eot|>", "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}{{ eos_token }}{{ pad_token }}"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_dir(&d).unwrap().unwrap();
        assert_eq!(t.render(&[], false, &[]).unwrap(), "D<s><|eot|><pad>");
        assert_eq!(
            t.render(&[], false, &[("bos_token", serde_json::json!("B"))]).unwrap(),
            "DB<|eot|><pad>",
            "template kwargs win over special tokens"
        );
        // chat_template.json wins over tokenizer_config.json, chat_template.jinja over both.
        std::fs::write(d.join("chat_template.json"), r#"{"chat_template": "J{{ messages | length }}"}"#).unwrap();
        let t = ChatTemplate::from_dir(&d).unwrap().unwrap();
        assert_eq!(t.render(&[Message::user("x")], false, &[]).unwrap(), "J1");
        assert!(t.origin.ends_with("chat_template.json"));
        std::fs::write(d.join("chat_template.jinja"), "K{% if add_generation_prompt %}+{% endif %}\n").unwrap();
        let t = ChatTemplate::from_dir(&d).unwrap().unwrap();
        assert_eq!(t.render(&[], true, &[]).unwrap(), "K+");
        std::fs::write(d.join("chat_template.json"), "{oops").unwrap();
        std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
        let e = ChatTemplate::from_dir(&d).err().unwrap().to_string();
        assert!(e.contains("chat_template.json: invalid JSON"), "{e}");
    }
}
