//! How a model's answer is written into the official results file before the official
//! evaluation ([`super::eval`]) scores it.
//!
//! The official code normalises a prediction only where the annotators disagree, and never
//! lower-cases it otherwise: a model answering `Yes` to a question ten annotators answered `yes`
//! scores 0. LLaVA-1.5's published VQA-v2 numbers therefore come from answers prepared by its
//! submission script (`scripts/convert_vqav2_for_submission.py` of haotian-liu/LLaVA), which passes
//! each generated text through `EvalAIAnswerProcessor` (`llava/eval/m4c_evaluator.py`, copied
//! from facebookresearch/mmf) before writing the results file. [`llava`] follows that processor
//! step by step, with Python 3's string semantics (LLaVA runs on Python 3):
//!
//! 1. `word_tokenize`: `lower()` (full Unicode mapping, final sigma), every `,` and `?` deleted,
//!    `'s` → ` 's` (so `dog's` becomes the two words `dog 's`), `strip()`;
//! 2. `\n` and `\t` → spaces, `strip()`;
//! 3. `process_punctuation`: the official rule ([`eval::process_punctuation`]; its digit-comma
//!    branch cannot fire, the commas are gone), then the official period stripping;
//! 4. `process_digit_article`: `lower().split()` (Python 3 whitespace), number words, articles,
//!    contractions as the official tables ([`eval::digit_article_words`]; the processor's tables
//!    are the official ones, capital-I keys that never match included).
//!
//! One difference is known and left: the period rule's `\d` is Unicode in Python 3 and ASCII here
//! (as in the official Python 2 code), so a period directly before a non-ASCII decimal digit
//! (`.٣`) is deleted here and kept by LLaVA's script.
use clap::ValueEnum;

use super::eval;

/// How answers are prepared for the official evaluation (`icet score --vqa-answers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum AnswerPrep {
    /// As LLaVA's VQA-v2 submission script writes them (EvalAIAnswerProcessor: lower-case,
    /// punctuation, number words, articles, contractions): the published LLaVA-1.5 numbers
    #[default]
    Llava,
    /// As generated (the official evaluation then only cleans whitespace, and normalises where
    /// the annotators disagree)
    Verbatim,
}

impl AnswerPrep {
    pub fn name(self) -> &'static str {
        match self {
            Self::Llava => "llava",
            Self::Verbatim => "verbatim",
        }
    }

    /// The answer as the results file holds it.
    pub fn prepare(self, answer: &str) -> String {
        match self {
            Self::Llava => llava(answer),
            Self::Verbatim => answer.to_string(),
        }
    }
}

/// Python 3's `str.isspace()`: Python 2's set ([`eval::is_python_space`]) without U+180E, which
/// Unicode 6.3 moved out of the spaces.
fn is_python3_space(c: char) -> bool {
    c != '\u{180e}' && eval::is_python_space(c)
}

/// `EvalAIAnswerProcessor()(answer)` (see the module documentation).
pub fn llava(answer: &str) -> String {
    let tokenized = answer.to_lowercase().replace([',', '?'], "").replace("'s", " 's");
    let tokenized = tokenized.trim_matches(is_python3_space).replace(['\n', '\t'], " ");
    let punctuated = eval::process_punctuation(tokenized.trim_matches(is_python3_space));
    eval::digit_article_words(punctuated.to_lowercase().split(is_python3_space))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case reasoned from `EvalAIAnswerProcessor.__call__` step by step.
    #[test]
    fn llava_prepares_answers_as_its_submission_script() {
        for (answer, want) in [
            // lower(), then the official period rule.
            ("Yes", "yes"),
            ("Yes.", "yes"),
            ("NO", "no"),
            // Number words only up to ten; articles go after the mapping.
            ("Two", "2"),
            ("Ten.", "10"),
            ("eleven", "eleven"),
            ("None", "0"),
            ("A dog", "dog"),
            ("an apple and the pear", "apple and pear"),
            // word_tokenize deletes every comma and question mark first: no digit comma remains.
            ("1,000", "1000"),
            ("What?", "what"),
            ("2 apples, 3 pears", "2 apples 3 pears"),
            // `'s` is split off as its own word.
            ("The dog's bowl.", "dog 's bowl"),
            ("it's", "it 's"),
            // A mark next to a space is deleted, elsewhere replaced by a space.
            ("t-shirt", "t shirt"),
            ("well - maybe", "well maybe"),
            ("no!", "no"),
            ("red/white", "red white"),
            ("(left)", "left"),
            // A period before a digit stays; others go.
            ("3.5", "3.5"),
            ("e.g. a cat", "eg cat"),
            // Newlines and tabs, surrounding whitespace.
            ("  A cat\n", "cat"),
            ("black\tand\nwhite", "black and white"),
            // Contractions of the lower-cased words; the capital-I keys never match.
            ("Dont", "don't"),
            ("Im", "im"),
            ("Ive", "ive"),
            ("somebody'd", "somebodyd"),
            // Python 3's lower(): full mapping with final sigma.
            ("ΟΔΟΣ", "οδος"),
            // Python 3's strip() keeps U+180E (Python 2's would cut it).
            ("\u{180e}yes", "\u{180e}yes"),
            ("", ""),
        ] {
            assert_eq!(llava(answer), want, "{answer:?}");
        }
    }

    #[test]
    fn verbatim_keeps_the_answer() {
        assert_eq!(AnswerPrep::Verbatim.prepare(" Yes.\n"), " Yes.\n");
        assert_eq!(AnswerPrep::Llava.prepare(" Yes.\n"), "yes");
        assert_eq!(AnswerPrep::default(), AnswerPrep::Llava);
    }

    /// Why the preparation matters: unanimous annotators are compared without normalisation.
    #[test]
    fn the_official_code_does_not_lower_case_a_unanimous_question() {
        let gts: Vec<eval::GtAnswer> = (1..=10).map(|i| eval::GtAnswer::new("yes", i)).collect();
        assert_eq!(eval::question_accuracy(&gts, "Yes"), 0.0);
        assert_eq!(eval::question_accuracy(&gts, &llava("Yes")), 1.0);
    }
}
