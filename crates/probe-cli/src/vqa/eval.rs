//! The official VQA accuracy, as `PythonEvaluationTools/vqaEvaluation/vqaEval.py` of
//! GT-Vision-Lab/VQA computes it (the current version, commit a013f00 "Fixed processing answers
//! bug", 2021), quirks included. That code is Python 2; where Python 3 would behave differently
//! (rounding of exact ties, what `\d` and whitespace match) this follows Python 2.7, the
//! interpreter the official code runs on.
//!
//! Per question (`VQAEval.evaluate`):
//! 1. The prediction and every ground-truth answer get `\n` and `\t` replaced by spaces and are
//!    stripped of surrounding whitespace.
//! 2. **Only if the ground-truth answers are not all identical** (after step 1) are the answers and
//!    the prediction normalised: [`process_punctuation`], then [`process_digit_article`]. When all
//!    ten annotators wrote the same string, the prediction must equal it exactly (case and
//!    punctuation included).
//! 3. Leave one annotator out at a time: for annotator i, count the *other* answers equal to the
//!    prediction, `acc_i = min(1, count / 3)`. "Other" is decided by comparing whole answer
//!    objects (`{"answer", "answer_confidence", "answer_id"}`), as Python compares the dicts, so two
//!    identical objects leave each other out too.
//! 4. The question's accuracy is the mean of the `acc_i`.
//!
//! Aggregates (`setAccuracy`, `setEvalQA`) are percentages rounded to `n` = 2 digits with Python's
//! `round`: overall = `round(100 * sum / count, 2)` over every question, the same per question
//! type and per answer type, and per question `round(100 * acc, 2)`. Means are taken over the
//! unrounded per-question values, summed in the annotation file's order.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

/// One annotator's answer: its text and the rest of its JSON object (`answer_confidence`,
/// `answer_id`), which decides which answers are "the others" when this one is left out. The
/// rest is shared: a whole annotation file has only a few dozen distinct ones (ten ids times
/// three confidences), see `files::read_annotations`.
#[derive(Clone, Debug, PartialEq)]
pub struct GtAnswer {
    pub answer: String,
    pub rest: Arc<Map<String, Value>>,
}

impl GtAnswer {
    /// An answer with the usual fields of the official files.
    #[allow(dead_code)] // for callers that score without a file (tests, `score --judge vqa`)
    pub fn new(answer: &str, answer_id: u64) -> Self {
        let mut rest = Map::new();
        rest.insert("answer_confidence".into(), Value::String("yes".into()));
        rest.insert("answer_id".into(), Value::from(answer_id));
        Self { answer: answer.to_string(), rest: Arc::new(rest) }
    }
}

/// The marks `processPunctuation` deletes or turns into spaces. Not among them: `'` (so
/// contractions survive to the table below), `:`, `.` (see [`strip_periods`]), `*`, `#`, `%`,
/// `&`, `$`, `^`, `|`, `~`.
const PUNCTUATION: [char; 21] =
    [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!'];

/// How many periods one call removes: the official code passes `re.UNICODE` (= 32) as the third
/// positional argument of `Pattern.sub`, which is `count`, not `flags`.
const PERIODS_REMOVED_AT_MOST: usize = 32;

/// `manualMap`: number words to digits (only up to ten; `none` counts as zero).
const NUMBER_WORDS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// The official `contractions` table (120 entries), sorted by key for binary search. Applied to
/// lower-cased words, so the four keys with a capital I (`Id've`, `I'dve`, `Im`, `Ive`) never
/// match; `somebody'd` maps to `somebodyd` (the one entry that removes an apostrophe).
const CONTRACTIONS: [(&str, &str); 120] = [
    ("'ow'sat", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("I'dve", "I'd've"),
    ("Id've", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt", "couldn't"),
    ("couldnt've", "couldn't've"),
    ("couldve", "could've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadn'tve", "hadn't've"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("he'dve", "he'd've"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("isnt", "isn't"),
    ("it'dve", "it'd've"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightn'tve", "mightn't've"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("shant", "shan't"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shed've", "she'd've"),
    ("shouldn'tve", "shouldn't've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldve", "should've"),
    ("somebody'd", "somebodyd"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyd've", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someone'dve", "someone'd've"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("something'dve", "something'd've"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("there'dve", "there'd've"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("they'dve", "they'd've"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("we'dve", "we'd've"),
    ("wed've", "we'd've"),
    ("werent", "weren't"),
    ("weve", "we've"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("who'dve", "who'd've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldn'tve", "wouldn't've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldve", "would've"),
    ("y'all'dve", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'allll", "y'all'll"),
    ("yall", "y'all"),
    ("yall'd've", "y'all'd've"),
    ("yall'll", "y'all'll"),
    ("you'dve", "you'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// Python 2.7's `unicode.isspace` (bidirectional class WS, B or S, or category Zs, Unicode 5.2):
/// what `split()` and `strip()` cut at. Unlike Rust's `char::is_whitespace` it includes the
/// information separators U+001C..U+001F and U+180E.
pub fn is_python_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{20}'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{180e}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `unicode.lower()` of Python 2.7: the simple (one-to-one) lower-case mapping of each character,
/// without final-sigma context; only U+0130 differs from Rust's full per-character mapping.
fn python_lower(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{130}' => out.push('i'),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// Step 1 of each answer: `\n` and `\t` become spaces, then Python's `strip()`.
fn clean(s: &str) -> String {
    s.replace(['\n', '\t'], " ").trim_matches(is_python_space).to_string()
}

/// `commaStrip` = `(\d)(\,)(\d)` searched anywhere in the text (`\d` is ASCII in Python 2 without
/// the UNICODE flag).
fn has_comma_between_digits(text: &str) -> bool {
    text.as_bytes().windows(3).any(|w| w[0].is_ascii_digit() && w[1] == b',' && w[2].is_ascii_digit())
}

/// `periodStrip.sub("", text, re.UNICODE)`: the pattern `(?!<=\d)(\.)(?!\d)` opens with a
/// negative *lookahead* for the literal `<=` and a digit (a typo for a lookbehind), which never
/// fires in front of a `.`, so it deletes every period not followed by a digit — the first 32
/// of them (see [`PERIODS_REMOVED_AT_MOST`]). Lookahead reads the text before deletion.
pub fn strip_periods(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let before_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c == '.' && !before_digit && removed < PERIODS_REMOVED_AT_MOST {
            removed += 1;
            continue;
        }
        out.push(c);
    }
    out
}

/// `processPunctuation`: each mark of [`PUNCTUATION`] is *deleted* when it stands next to a space
/// somewhere in the input (`"p "` or `" p"` occurs), **or when the input contains a comma between
/// two digits anywhere** (then every mark is deleted, e.g. `1,000-2` → `10002`); otherwise it is
/// *replaced by a space* (`t-shirt` → `t shirt`). The test looks at the input, not at the text
/// as it is being rewritten. Then [`strip_periods`].
pub fn process_punctuation(text: &str) -> String {
    let digit_comma = has_comma_between_digits(text);
    let mut out = text.to_string();
    for p in PUNCTUATION {
        if !out.contains(p) {
            continue;
        }
        let by_space = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if by_space || digit_comma { "" } else { " " });
    }
    strip_periods(&out)
}

fn contraction(word: &str) -> Option<&'static str> {
    CONTRACTIONS.binary_search_by(|(k, _)| k.cmp(&word)).ok().map(|i| CONTRACTIONS[i].1)
}

/// `processDigitArticle`: lower-case, split at whitespace, number words to digits, drop the
/// articles (after the number mapping), expand contractions, join with single spaces.
pub fn process_digit_article(text: &str) -> String {
    digit_article_words(python_lower(text).split(is_python_space))
}

/// The word steps of `processDigitArticle` on already lower-cased, split `words` (empty ones are
/// skipped): number words to digits, articles dropped (after the number mapping), contractions
/// expanded, joined with single spaces. Shared with LLaVA's answer processor
/// ([`super::answers`]), which splits as Python 3 does.
pub(crate) fn digit_article_words<'a>(words: impl Iterator<Item = &'a str>) -> String {
    let words: Vec<&str> = words
        .filter(|w| !w.is_empty())
        .map(|w| NUMBER_WORDS.iter().find(|(k, _)| *k == w).map_or(w, |(_, d)| d))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| contraction(w).unwrap_or(w))
        .collect();
    words.join(" ")
}

/// Both normalisation steps, in the official order.
pub fn normalize(text: &str) -> String {
    process_digit_article(&process_punctuation(text))
}

/// Python's `==` on JSON values as `json.load` makes them: numbers compare by value (`1 == 1.0`)
/// and booleans are the integers 0 and 1 (`True == 1`).
fn python_eq(a: &Value, b: &Value) -> bool {
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Bool(b) => Some(*b as u8 as f64),
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => x.as_f64() == y.as_f64(),
        (Value::Number(x), Value::Number(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Bool(_) | Value::Number(_), Value::Bool(_) | Value::Number(_)) => number(a) == number(b),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| python_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => python_eq_map(x, y),
        _ => a == b,
    }
}

fn python_eq_map(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| python_eq(v, w)))
}

fn same_answer_object(a: (&str, &Map<String, Value>), b: (&str, &Map<String, Value>)) -> bool {
    a.0 == b.0 && (std::ptr::eq(a.1, b.1) || python_eq_map(a.1, b.1))
}

/// The official accuracy of `prediction` for one question, in `[0, 1]` (unrounded).
/// `answers` must not be empty.
pub fn question_accuracy(answers: &[GtAnswer], prediction: &str) -> f64 {
    let mut gts: Vec<(String, &Map<String, Value>)> = answers.iter().map(|a| (clean(&a.answer), &*a.rest)).collect();
    let mut prediction = clean(prediction);
    let all_same = gts.iter().all(|g| g.0 == gts[0].0);
    if !all_same {
        for g in &mut gts {
            g.0 = normalize(&g.0);
        }
        prediction = normalize(&prediction);
    }
    let mut sum = 0.0f64;
    for left_out in &gts {
        let left_out = (left_out.0.as_str(), left_out.1);
        let matches =
            gts.iter().filter(|o| o.0 == prediction && !same_answer_object((o.0.as_str(), o.1), left_out)).count();
        sum += (matches as f64 / 3.0).min(1.0);
    }
    sum / gts.len() as f64
}

/// Python 2.7's `round(x, digits)`: the exact binary value of `x` rounded to `digits` decimals,
/// halves away from zero (Python 3 rounds exact halves to even: `round(3.125, 2)` is 3.13 in
/// Python 2 and 3.12 in Python 3), then the nearest double.
pub fn round_python2(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Every finite double has at most 1074 fractional decimal digits, so this is exact.
    let exact = format!("{:.1100}", x.abs());
    let (int_part, frac) = exact.split_once('.').expect("fixed notation");
    let mut kept: Vec<u8> = int_part.bytes().chain(frac.bytes().take(digits)).collect();
    if frac.as_bytes()[digits] >= b'5' {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, b'1');
                break;
            }
            i -= 1;
            if kept[i] == b'9' {
                kept[i] = b'0';
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let split = kept.len() - digits;
    let text =
        format!("{}.{}", std::str::from_utf8(&kept[..split]).unwrap(), std::str::from_utf8(&kept[split..]).unwrap());
    let v: f64 = text.parse().expect("decimal digits");
    if x.is_sign_negative() {
        -v
    } else {
        v
    }
}

/// `round(100 * acc, n)`: a question's accuracy as the official `evalQA` holds it.
pub fn percent(accuracy: f64, digits: usize) -> f64 {
    round_python2(100.0 * accuracy, digits)
}

/// One question's accuracy with the types it is grouped by.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredQuestion {
    pub question_id: u64,
    pub question_type: String,
    pub answer_type: String,
    /// Unrounded, in `[0, 1]`.
    pub accuracy: f64,
}

/// The official `accuracy` and `evalQA`, in percent.
#[derive(Clone, Debug, PartialEq)]
pub struct Accuracy {
    pub overall: f64,
    pub per_question_type: BTreeMap<String, f64>,
    pub per_answer_type: BTreeMap<String, f64>,
    /// In the order of the questions.
    pub per_question: Vec<(u64, f64)>,
}

/// `round(100 * sum / count, digits)`, summing in order from 0 as Python's `sum` does.
fn mean_percent(values: &[f64], digits: usize) -> f64 {
    let sum = values.iter().fold(0.0f64, |s, &v| s + v);
    round_python2(100.0 * sum / values.len() as f64, digits)
}

/// `setAccuracy` and `setEvalQA` over scored questions (in the annotation file's order, which
/// fixes the order of summation). `scored` must not be empty.
pub fn summarize(scored: &[ScoredQuestion], digits: usize) -> Accuracy {
    let mut by_qtype: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut by_atype: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in scored {
        by_qtype.entry(&s.question_type).or_default().push(s.accuracy);
        by_atype.entry(&s.answer_type).or_default().push(s.accuracy);
    }
    let all: Vec<f64> = scored.iter().map(|s| s.accuracy).collect();
    Accuracy {
        overall: mean_percent(&all, digits),
        per_question_type: by_qtype.into_iter().map(|(k, v)| (k.to_string(), mean_percent(&v, digits))).collect(),
        per_answer_type: by_atype.into_iter().map(|(k, v)| (k.to_string(), mean_percent(&v, digits))).collect(),
        per_question: scored.iter().map(|s| (s.question_id, percent(s.accuracy, digits))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten answers with ids 1..=10, as in the official files.
    fn gts(answers: &[&str]) -> Vec<GtAnswer> {
        answers.iter().enumerate().map(|(i, a)| GtAnswer::new(a, i as u64 + 1)).collect()
    }

    /// `k` copies of `hit` then `10 - k` of `miss`.
    fn split(k: usize, hit: &str, miss: &str) -> Vec<GtAnswer> {
        let v: Vec<&str> = (0..10).map(|i| if i < k { hit } else { miss }).collect();
        gts(&v)
    }

    fn pct(answers: &[GtAnswer], prediction: &str) -> f64 {
        percent(question_accuracy(answers, prediction), 2)
    }

    #[test]
    fn tables_are_sorted_and_complete() {
        assert!(CONTRACTIONS.windows(2).all(|w| w[0].0 < w[1].0), "binary search needs sorted keys");
        assert_eq!(CONTRACTIONS.len(), 120);
        assert_eq!(PUNCTUATION.len(), 21);
    }

    #[test]
    fn leave_one_out_over_ten_annotators() {
        // k of the 10 answers equal the prediction. The k matching annotators, left out, leave
        // k - 1 matches; the 10 - k others leave k. acc = (k·min(1,(k-1)/3) + (10-k)·min(1,k/3)) / 10:
        // k=0 → 0; k=1 → 9·(1/3)/10 = 0.3; k=2 → (2/3 + 8·2/3)/10 = 0.6; k=3 → (3·2/3 + 7)/10 = 0.9;
        // k≥4 → 1.
        for (k, want) in [(0, 0.0), (1, 30.0), (2, 60.0), (3, 90.0), (4, 100.0), (7, 100.0), (10, 100.0)] {
            assert_eq!(pct(&split(k, "cat", "dog"), "cat"), want, "k = {k}");
        }
        // Unrounded, the sums of thirds are not exact: 9 × (1/3) summed left to right, / 10.
        let third = 1.0f64 / 3.0;
        let want = (0..9).fold(0.0, |s, _| s + third) / 10.0;
        assert_eq!(question_accuracy(&split(1, "cat", "dog"), "cat"), want);
    }

    #[test]
    fn gt_and_prediction_are_normalised_only_when_the_annotators_disagree() {
        // All ten wrote "yes": no normalisation at all, so "Yes" matches nothing.
        assert_eq!(pct(&split(10, "yes", "yes"), "Yes"), 0.0);
        assert_eq!(pct(&split(10, "2", "2"), "two"), 0.0);
        assert_eq!(pct(&split(10, "yes.", "yes."), "yes"), 0.0, "nor is the period stripped");
        assert_eq!(pct(&split(10, "yes.", "yes."), "yes."), 100.0);
        // One dissenting annotator turns normalisation on for everyone: "Yes" → "yes" matches 9.
        assert_eq!(pct(&split(9, "yes", "no"), "Yes"), 100.0);
        // 9 × "2" and one "two": all normalise to "2", and so does the prediction "Two".
        assert_eq!(pct(&split(9, "2", "two"), "Two"), 100.0);
        // 9 × "yes" + 1 × "Yes" differ as strings, so normalisation runs and all ten become "yes".
        assert_eq!(pct(&split(9, "yes", "Yes"), "YES"), 100.0);
        // Newlines, tabs and surrounding whitespace go in every case, before the comparison.
        assert_eq!(pct(&split(10, "yes", "yes"), "  yes\n"), 100.0);
        assert_eq!(pct(&split(10, " yes\t", "yes"), "yes"), 100.0, "gt answers are cleaned too (all 'yes')");
        // Inner whitespace is collapsed only by normalisation (split/join).
        assert_eq!(pct(&split(10, "red car", "red car"), "red  car"), 0.0);
        assert_eq!(pct(&split(9, "red car", "car"), "red  car"), 100.0);
    }

    #[test]
    fn identical_answer_objects_leave_each_other_out() {
        // Without answer ids the ten objects {"answer": "yes"} are all equal: leaving one out
        // removes all ten (Python's `item != gtAnsDatum` compares dicts), no match is left.
        let bare: Vec<GtAnswer> =
            (0..10).map(|_| GtAnswer { answer: "yes".into(), rest: Arc::new(Map::new()) }).collect();
        assert_eq!(pct(&bare, "yes"), 0.0);
        // Two objects sharing answer id 1 (both "cat"), a third "cat" with id 2, seven "dog":
        // the id-1 pair leaves 1 match each (1/3), the id-2 "cat" leaves 2 (2/3), each dog
        // leaves 3 (1): (1/3 + 1/3 + 2/3 + 7) / 10 = 0.8333… → 83.33 (90 with distinct ids).
        let mut a = split(3, "cat", "dog");
        a[1].rest = a[0].rest.clone();
        assert_eq!(pct(&a, "cat"), 83.33);
        assert_eq!(pct(&split(3, "cat", "dog"), "cat"), 90.0);
        // Objects equal as Python compares them: answer_id 1 and 1.0, and true == 1.
        let mut b = split(3, "cat", "dog");
        Arc::make_mut(&mut b[1].rest).insert("answer_id".into(), serde_json::json!(1.0));
        assert_eq!(pct(&b, "cat"), 83.33);
        let mut c = split(3, "cat", "dog");
        Arc::make_mut(&mut c[1].rest).insert("answer_id".into(), serde_json::json!(true));
        assert_eq!(pct(&c, "cat"), 83.33);
        // Objects that became equal only after normalisation ("Cat" vs "cat", same id) too.
        let mut d = split(3, "cat", "dog");
        d[1].answer = "Cat".into();
        d[1].rest = d[0].rest.clone();
        assert_eq!(pct(&d, "cat"), 83.33);
    }

    #[test]
    fn punctuation_deleted_next_to_a_space_else_replaced_by_one() {
        assert_eq!(process_punctuation("t-shirt"), "t shirt");
        assert_eq!(process_punctuation("yes!"), "yes ");
        assert_eq!(process_punctuation("yes !"), "yes ", "' !' occurs: deleted");
        assert_eq!(process_punctuation("yes! "), "yes ");
        // The test is per mark and on the input: '-' is next to no space, ',' is.
        assert_eq!(process_punctuation("t-shirt, jeans"), "t shirt jeans");
        assert_eq!(process_punctuation("a,b"), "a b");
        // Every listed mark.
        assert_eq!(
            process_punctuation(r#"a;b/c[d]e"f{g}h(i)j=k+l\m_n-o>p<q@r`s,t?u!v"#),
            "a b c d e f g h i j k l m n o p q r s t u v"
        );
        // Not punctuation here: apostrophe, colon and the rest.
        assert_eq!(process_punctuation("don't 10:30 *#%&$^|~"), "don't 10:30 *#%&$^|~");
    }

    #[test]
    fn a_comma_between_digits_anywhere_deletes_every_mark() {
        assert_eq!(process_punctuation("1,000"), "1000");
        assert_eq!(process_punctuation("1,000-2"), "10002", "'-' deleted, not spaced, because of 1,0");
        assert_eq!(process_punctuation("t-shirt 1,5"), "tshirt 15");
        assert_eq!(
            process_punctuation("t-shirt 1, 5"),
            "t shirt 1 5",
            "no digit,digit: ',' deleted by the space rule only"
        );
        // ASCII digits only (Python 2 `\d` without the UNICODE flag).
        assert_eq!(process_punctuation("a-b ٣,٣"), "a b ٣ ٣");
    }

    #[test]
    fn periods_go_unless_a_digit_follows_and_at_most_32() {
        assert_eq!(process_punctuation("3.5"), "3.5");
        assert_eq!(process_punctuation("3."), "3");
        assert_eq!(process_punctuation("mr. smith"), "mr smith");
        assert_eq!(process_punctuation("a.m."), "am");
        assert_eq!(process_punctuation(".5"), ".5");
        // Lookahead reads the original text: the first '.' is followed by '.', the second by '5'.
        assert_eq!(process_punctuation("..5"), ".5");
        // A period before a digit that punctuation handling exposed: "3.-5" → '-' → space → "3. 5"
        // and then the period is followed by a space: deleted.
        assert_eq!(process_punctuation("3.-5"), "3 5");
        // `re.UNICODE` passed as `count`: 32 periods go, the 33rd stays.
        let many = format!("a{}", ".".repeat(33));
        assert_eq!(process_punctuation(&many), "a.");
        assert_eq!(process_punctuation(&format!("a{}", ".".repeat(32))), "a");
    }

    #[test]
    fn digits_articles_contractions() {
        assert_eq!(process_digit_article("Two Dogs"), "2 dogs");
        assert_eq!(process_digit_article("none"), "0", "none counts as zero");
        assert_eq!(process_digit_article("ten eleven"), "10 eleven", "only up to ten");
        assert_eq!(process_digit_article("the cat"), "cat");
        assert_eq!(process_digit_article("A"), "", "a lone article vanishes");
        assert_eq!(process_digit_article("an apple a day"), "apple day");
        assert_eq!(process_digit_article("dont"), "don't");
        assert_eq!(process_digit_article("Dont"), "don't", "lower-cased first");
        assert_eq!(process_digit_article("Im"), "im", "the key `Im` never matches a lower-cased word");
        assert_eq!(process_digit_article("Ive"), "ive");
        assert_eq!(process_digit_article("somebody'd"), "somebodyd", "the reversed entry");
        assert_eq!(process_digit_article("twas oclock"), "'twas o'clock");
        assert_eq!(process_digit_article("  x \u{a0} y\u{1c}z "), "x y z", "Python whitespace, U+001C included");
        // The simple lower-case mapping: U+0130 → 'i' (Rust's full mapping gives "i̇").
        assert_eq!(process_digit_article("\u{130}"), "i");
        assert_eq!(process_digit_article("ΟΔΟΣ"), "οδοσ", "no final sigma in Python 2");
    }

    #[test]
    fn surprising_matches_after_normalisation() {
        // "a" and "the" both normalise to "" (articles dropped), so they match each other.
        let v = gts(&["the", "the", "the", "the", "cat", "cat", "cat", "cat", "cat", "cat"]);
        assert_eq!(pct(&v, "a"), 100.0);
        // "1,000" → "1000", while "1, 000" → "1 000".
        assert_eq!(pct(&split(5, "1000", "many"), "1,000"), 100.0);
        assert_eq!(pct(&split(5, "1000", "many"), "1, 000"), 0.0);
        // "none" matches "0".
        assert_eq!(pct(&split(4, "0", "2"), "none"), 100.0);
        // "dont" matches "don't" (contraction), "t-shirt" matches "t shirt".
        assert_eq!(pct(&split(4, "don't", "no"), "dont"), 100.0);
        assert_eq!(pct(&split(4, "t shirt", "shirt"), "T-Shirt"), 100.0);
    }

    #[test]
    fn python2_rounding() {
        // Exact binary value, halves away from zero. 0.125 and 3.125 are exact in binary: ties.
        assert_eq!(round_python2(0.125, 2), 0.13);
        assert_eq!(round_python2(3.125, 2), 3.13, "Python 3 would give 3.12");
        assert_eq!(round_python2(-3.125, 2), -3.13);
        // 2.675 is 2.67499999999999982236431605997495353221893310546875: rounds down.
        assert_eq!(round_python2(2.675, 2), 2.67);
        assert_eq!(round_python2(99.995, 2), 100.0, "99.9950000000000045474735088646411895751953125");
        assert_eq!(round_python2(99.9949, 2), 99.99);
        assert_eq!(round_python2(100.0 / 3.0, 2), 33.33);
        assert_eq!(round_python2(200.0 / 3.0, 2), 66.67);
        assert_eq!(round_python2(9.995, 2), 9.99, "9.9949999999999992184029906638897955417633056640625");
        assert_eq!(round_python2(0.0, 2), 0.0);
    }

    #[test]
    fn summaries_round_means_of_unrounded_values() {
        let q = |id: u64, qt: &str, at: &str, acc: f64| ScoredQuestion {
            question_id: id,
            question_type: qt.into(),
            answer_type: at.into(),
            accuracy: acc,
        };
        // 32 questions, one right: 100 · 1 / 32 = 3.125 exactly, a tie → 3.13 (Python 2).
        let mut scored: Vec<ScoredQuestion> = (0..32).map(|i| q(i, "what", "other", 0.0)).collect();
        scored[5].accuracy = 1.0;
        let s = summarize(&scored, 2);
        assert_eq!(s.overall, 3.13);
        assert_eq!(s.per_answer_type["other"], 3.13);
        assert_eq!(s.per_question[5], (5, 100.0));
        // Types: means over their own questions; per question rounded separately.
        let third = 1.0 / 3.0;
        let scored = vec![
            q(1, "how many", "number", 0.3),
            q(2, "is the", "yes/no", 1.0),
            q(3, "how many", "number", third),
            q(4, "what color", "other", 0.0),
        ];
        let s = summarize(&scored, 2);
        // (0.3 + 1 + 1/3 + 0) / 4 · 100 = 40.8333… → 40.83
        assert_eq!(s.overall, 40.83);
        // (0.3 + 1/3) / 2 · 100 = 31.666… → 31.67
        assert_eq!(s.per_question_type["how many"], 31.67);
        assert_eq!(s.per_answer_type["number"], 31.67);
        assert_eq!(s.per_answer_type["yes/no"], 100.0);
        assert_eq!(s.per_question, vec![(1, 30.0), (2, 100.0), (3, 33.33), (4, 0.0)]);
    }
}

/// The official code's own outputs (tools/fixtures/make_vqa_fixtures.py ran `processPunctuation`
/// and `processDigitArticle` of GT-Vision-Lab/VQA on every table key, every punctuation mark in
/// every position and the answer variants of the generated data).
#[cfg(test)]
mod official {
    use super::*;

    #[test]
    fn normalisation_matches_the_official_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vqa/normalization.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = v["cases"].as_array().unwrap();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            assert_eq!(process_punctuation(text), c["punctuation"].as_str().unwrap(), "processPunctuation({text:?})");
            assert_eq!(
                process_digit_article(text),
                c["digit_article"].as_str().unwrap(),
                "processDigitArticle({text:?})"
            );
            assert_eq!(normalize(text), c["both"].as_str().unwrap(), "both of {text:?}");
        }
        // Every contraction key, number word and mark was probed.
        let probed: std::collections::HashSet<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert!(CONTRACTIONS.iter().all(|(k, _)| probed.contains(k)));
        assert!(NUMBER_WORDS.iter().all(|(k, _)| probed.contains(k)));
        assert!(PUNCTUATION.iter().all(|p| probed.contains(format!("a{p}b").as_str())));
        assert!(cases.len() > 300, "{}", cases.len());
    }
}
