//! The official VQA-v2 JSON files, as distributed (visualqa.org) and as `vqaTools/vqa.py` of
//! GT-Vision-Lab/VQA reads them:
//!
//! * questions `v2_OpenEnded_mscoco_<split>_questions.json`: `{"info", "task_type", "data_type",
//!   "data_subtype", "license", "questions": [{"question_id", "image_id", "question"}]}`;
//! * annotations `v2_mscoco_<split>_annotations.json`: `{"info", "license", "data_type",
//!   "data_subtype", "annotations": [{"question_id", "image_id", "question_type", "answer_type",
//!   "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}]}]}`;
//! * results `[{"question_id": int, "answer": str}]`.
//!
//! The lists are read one element at a time (the val annotations are ~200k objects), and every
//! problem with an element is one line naming the file, the element's position and its question id.
//! Fields the evaluation does not use (`info`, `license`, …) are not required.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::eval::GtAnswer;

/// One question of a questions file.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question_id: u64,
    pub image_id: u64,
    pub question: String,
    /// Multiple-choice files only (VQA v1).
    pub multiple_choices: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QuestionsFile {
    /// `OpenEnded` for VQA-v2.
    pub task_type: Option<String>,
    /// The split, e.g. `val2014`: also the middle of the COCO image names.
    pub data_subtype: Option<String>,
    pub questions: Vec<Question>,
}

/// One question's ground truth from an annotations file.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    pub question_id: u64,
    pub image_id: u64,
    pub question_type: String,
    pub answer_type: String,
    /// The annotators' answers (ten in VQA-v2), in file order.
    pub answers: Vec<GtAnswer>,
    pub multiple_choice_answer: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AnnotationsFile {
    pub data_subtype: Option<String>,
    pub annotations: Vec<Annotation>,
}

/// One model answer of a results file.
#[derive(Clone, Debug, PartialEq)]
pub struct VqaResult {
    pub question_id: u64,
    pub answer: String,
}

/// Where an element sits, for messages: `question 3 (question_id 42)`.
fn place(what: &str, index: usize, obj: &Map<String, Value>) -> String {
    match obj.get("question_id") {
        Some(id) => format!("{what} {} (question_id {id})", index + 1),
        None => format!("{what} {}", index + 1),
    }
}

fn object<'a>(what: &str, index: usize, v: &'a Value) -> std::result::Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{what} {} is not a JSON object", index + 1))
}

/// A non-negative integer id (VQA ids are JSON integers; `"42"` or `42.0` would silently be
/// another key in the official Python code, so they are refused here).
fn id(obj: &Map<String, Value>, key: &str, at: &str) -> std::result::Result<u64, String> {
    match obj.get(key) {
        None => Err(format!("{at}: no `{key}`")),
        Some(v) => v.as_u64().ok_or_else(|| format!("{at}: `{key}` is not a non-negative integer (got {v})")),
    }
}

fn string(obj: &Map<String, Value>, key: &str, at: &str) -> std::result::Result<String, String> {
    match obj.get(key) {
        None => Err(format!("{at}: no `{key}`")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!("{at}: `{key}` is not a string (got {v})")),
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str, at: &str) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(obj, key, at).map(Some),
    }
}

fn parse_question(index: usize, v: Value) -> std::result::Result<Question, String> {
    let obj = object("question", index, &v)?;
    let at = place("question", index, obj);
    let multiple_choices = match obj.get("multiple_choices") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|c| {
                    c.as_str().map(str::to_string).ok_or_else(|| format!("{at}: a multiple choice is not a string"))
                })
                .collect::<std::result::Result<_, _>>()?,
        ),
        Some(other) => return Err(format!("{at}: `multiple_choices` is not a list (got {other})")),
    };
    Ok(Question {
        question_id: id(obj, "question_id", &at)?,
        image_id: id(obj, "image_id", &at)?,
        question: string(obj, "question", &at)?,
        multiple_choices,
    })
}

/// The distinct `rest`s of answer objects seen so far, shared (see [`GtAnswer`]).
type Interner = std::cell::RefCell<std::collections::HashMap<String, std::sync::Arc<Map<String, Value>>>>;

fn intern(interner: &Interner, rest: Map<String, Value>) -> std::sync::Arc<Map<String, Value>> {
    let key = Value::Object(rest).to_string();
    let mut seen = interner.borrow_mut();
    if let Some(shared) = seen.get(&key) {
        return shared.clone();
    }
    let Ok(Value::Object(rest)) = serde_json::from_str(&key) else { unreachable!("a map serialises to an object") };
    let shared = std::sync::Arc::new(rest);
    seen.insert(key, shared.clone());
    shared
}

fn parse_annotation(index: usize, v: Value, interner: &Interner) -> std::result::Result<Annotation, String> {
    let Value::Object(mut obj) = v else {
        return Err(format!("annotation {} is not a JSON object", index + 1));
    };
    let at = place("annotation", index, &obj);
    let question_id = id(&obj, "question_id", &at)?;
    let at = format!("question {question_id}");
    let answers = match obj.remove("answers") {
        None => return Err(format!("{at}: no `answers`")),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(format!("{at}: `answers` is not a list (got {other})")),
    };
    if answers.is_empty() {
        return Err(format!("{at}: `answers` is empty (accuracy averages over the annotators' answers)"));
    }
    let answers = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let Value::Object(mut rest) = a else {
                return Err(format!("{at}: answer {} is not a JSON object", i + 1));
            };
            match rest.remove("answer") {
                Some(Value::String(answer)) => Ok(GtAnswer { answer, rest: intern(interner, rest) }),
                None => Err(format!("{at}: answer {} has no `answer`", i + 1)),
                Some(other) => Err(format!("{at}: answer {} is not a string (got {other})", i + 1)),
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(Annotation {
        question_id,
        image_id: id(&obj, "image_id", &at)?,
        question_type: string(&obj, "question_type", &at)?,
        answer_type: string(&obj, "answer_type", &at)?,
        answers,
        multiple_choice_answer: opt_string(&obj, "multiple_choice_answer", &at)?,
    })
}

fn parse_result(index: usize, v: Value) -> std::result::Result<VqaResult, String> {
    let obj = object("result", index, &v)?;
    let at = place("result", index, obj);
    let question_id = id(obj, "question_id", &at)?;
    let answer = match obj.get("answer") {
        None => return Err(format!("question {question_id}: no `answer`")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("question {question_id}: `answer` is not a string (got {other})")),
    };
    Ok(VqaResult { question_id, answer })
}

/// Deserializes a JSON list element by element through `parse` (so only one element is held as
/// a `Value` at a time); the first error is the message.
struct ListSeed<'a, T> {
    parse: &'a dyn Fn(usize, Value) -> std::result::Result<T, String>,
}

impl<'de, T> DeserializeSeed<'de> for ListSeed<'_, T> {
    type Value = Vec<T>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T> Visitor<'de> for ListSeed<'_, T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element::<Value>()? {
            out.push((self.parse)(out.len(), v).map_err(de::Error::custom)?);
        }
        Ok(out)
    }
}

/// A top-level object: the list under `list_key` through [`ListSeed`], the string fields in
/// `keep`, everything else skipped.
struct TopSeed<'a, T> {
    list_key: &'a str,
    keep: &'a [&'a str],
    parse: &'a dyn Fn(usize, Value) -> std::result::Result<T, String>,
}

impl<'de, T> DeserializeSeed<'de> for TopSeed<'_, T> {
    type Value = (Option<Vec<T>>, BTreeMap<String, Value>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T> Visitor<'de> for TopSeed<'_, T> {
    type Value = (Option<Vec<T>>, BTreeMap<String, Value>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON object with a `{}` list", self.list_key)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let (mut list, mut kept) = (None, BTreeMap::new());
        while let Some(key) = map.next_key::<String>()? {
            if key == self.list_key {
                list = Some(map.next_value_seed(ListSeed { parse: self.parse })?);
            } else if self.keep.contains(&key.as_str()) {
                kept.insert(key, map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((list, kept))
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// A file's string fields by name (`None`: absent or null).
type StringFields = BTreeMap<String, Option<String>>;

/// The list `list_key` of the object in `path`, plus its string fields `keep`.
fn read_object<T>(
    path: &Path,
    list_key: &str,
    keep: &[&str],
    parse: &dyn Fn(usize, Value) -> std::result::Result<T, String>,
) -> Result<(Vec<T>, StringFields)> {
    let bytes = read(path)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let (list, kept) = TopSeed { list_key, keep, parse }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let list = list.ok_or_else(|| anyhow!("{}: no `{list_key}` list (is this the right file?)", path.display()))?;
    let mut fields = BTreeMap::new();
    for k in keep {
        let v = match kept.get(*k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(anyhow!("{}: `{k}` is not a string (got {other})", path.display())),
        };
        fields.insert(k.to_string(), v);
    }
    Ok((list, fields))
}

pub fn read_questions(path: &Path) -> Result<QuestionsFile> {
    let (questions, mut f) = read_object(path, "questions", &["task_type", "data_subtype"], &parse_question)?;
    Ok(QuestionsFile {
        task_type: f.remove("task_type").flatten(),
        data_subtype: f.remove("data_subtype").flatten(),
        questions,
    })
}

pub fn read_annotations(path: &Path) -> Result<AnnotationsFile> {
    let interner = Interner::default();
    let parse = |i: usize, v: Value| parse_annotation(i, v, &interner);
    let (annotations, mut f) = read_object(path, "annotations", &["data_subtype"], &parse)?;
    Ok(AnnotationsFile { data_subtype: f.remove("data_subtype").flatten(), annotations })
}

/// A results file: a JSON list of `{"question_id", "answer"}` (other fields are ignored).
pub fn read_results(path: &Path) -> Result<Vec<VqaResult>> {
    let bytes = read(path)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    ListSeed { parse: &parse_result }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("icet-vqa-files-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_the_official_layouts() {
        let q = write(
            "q.json",
            r#"{"info": {"year": 2017}, "task_type": "OpenEnded", "data_type": "mscoco", "license": {},
                "data_subtype": "val2014", "questions": [{"image_id": 42, "question": "What?", "question_id": 42000}]}"#,
        );
        let q = read_questions(&q).unwrap();
        assert_eq!(q.task_type.as_deref(), Some("OpenEnded"));
        assert_eq!(q.data_subtype.as_deref(), Some("val2014"));
        assert_eq!(
            q.questions,
            [Question { question_id: 42000, image_id: 42, question: "What?".into(), multiple_choices: None }]
        );
        let a = write(
            "a.json",
            r#"{"annotations": [{"question_type": "what", "multiple_choice_answer": "cat", "image_id": 42,
                "answer_type": "other", "question_id": 42000,
                "answers": [{"answer": "cat", "answer_confidence": "yes", "answer_id": 1}]}], "data_subtype": "val2014"}"#,
        );
        let a = read_annotations(&a).unwrap();
        let ann = &a.annotations[0];
        assert_eq!((ann.question_id, ann.image_id, ann.question_type.as_str()), (42000, 42, "what"));
        assert_eq!(ann.answers[0].answer, "cat");
        assert_eq!(ann.answers[0].rest.get("answer_id"), Some(&serde_json::json!(1)));
        assert!(!ann.answers[0].rest.contains_key("answer"), "the answer text is held once");
        let two = write(
            "a2.json",
            r#"{"annotations": [{"question_type": "what", "image_id": 1, "answer_type": "other", "question_id": 1,
                "answers": [{"answer": "a", "answer_id": 1}, {"answer": "b", "answer_id": 1}, {"answer": "c", "answer_id": 2}]}]}"#,
        );
        let a = read_annotations(&two).unwrap().annotations.remove(0).answers;
        assert!(std::sync::Arc::ptr_eq(&a[0].rest, &a[1].rest) && !std::sync::Arc::ptr_eq(&a[0].rest, &a[2].rest));
        let r = write("r.json", r#"[{"question_id": 42000, "answer": "cat", "extra": 1}]"#);
        assert_eq!(read_results(&r).unwrap(), [VqaResult { question_id: 42000, answer: "cat".into() }]);
    }

    #[test]
    fn bad_elements_name_the_file_and_question() {
        let err = |name: &str, text: &str, f: fn(&Path) -> Result<()>| f(&write(name, text)).unwrap_err().to_string();
        let results = |p: &Path| read_results(p).map(|_| ());
        let annotations = |p: &Path| read_annotations(p).map(|_| ());
        let questions = |p: &Path| read_questions(p).map(|_| ());
        let e = err("r1.json", r#"[{"question_id": 7, "answer": 3}]"#, results);
        assert!(e.contains("r1.json: question 7: `answer` is not a string (got 3)"), "{e}");
        let e = err("r2.json", r#"[{"question_id": 7, "answer": "a"}, {"answer": "b"}]"#, results);
        assert!(e.contains("r2.json: result 2: no `question_id`"), "{e}");
        let e = err("r3.json", r#"[{"question_id": "7", "answer": "a"}]"#, results);
        assert!(e.contains("not a non-negative integer"), "{e}");
        let e = err("r4.json", r#"[{"question_id": 7, "answer": "a"},"#, results);
        assert!(e.starts_with(&format!("{}", write("r4.json", "").display())) && e.contains("line 1"), "{e}");
        let e = err("r5.json", r#"{"question_id": 7}"#, results);
        assert!(e.contains("r5.json: invalid type: map, expected a list"), "{e}");
        let e = err(
            "a1.json",
            r#"{"annotations": [{"question_id": 9, "image_id": 1, "answers": [{"answer": "x"}]}]}"#,
            annotations,
        );
        assert!(e.contains("a1.json: question 9: no `question_type`"), "{e}");
        let e = err(
            "a2.json",
            r#"{"annotations": [{"question_id": 9, "answers": [{"answer": "x"}, {"answer": null}]}]}"#,
            annotations,
        );
        assert!(e.contains("question 9: answer 2 is not a string (got null)"), "{e}");
        let e = err("a3.json", r#"{"annotations": [{"question_id": 9, "answers": []}]}"#, annotations);
        assert!(e.contains("question 9: `answers` is empty"), "{e}");
        let e = err("a4.json", r#"{"questions": []}"#, annotations);
        assert!(e.contains("a4.json: no `annotations` list"), "{e}");
        let e = err("q1.json", r#"{"questions": [{"question_id": 5, "image_id": 1}]}"#, questions);
        assert!(e.contains("q1.json: question 1 (question_id 5): no `question`"), "{e}");
        let e = err("q2.json", r#"{"questions": [], "task_type": 3}"#, questions);
        assert!(e.contains("`task_type` is not a string"), "{e}");
        let e = err("q3.json", "{\"questions\": []} trailing", questions);
        assert!(e.contains("q3.json: trailing characters"), "{e}");
    }
}
