//! VQA-v2 as sweep items: the official questions and annotations files joined by question id,
//! each question paired with its COCO image (`COCO_<split>_<12-digit image id>.jpg` in the image
//! folder, as the COCO 2014 zips unpack), the prompt being the question plus the answer-format
//! sentence LLaVA-1.5 was evaluated with. Everything that can be wrong (files that do not belong
//! together, missing images — all of them, by name) is reported before any model loads.
//!
//! A small run stays representative: `max_items` draws a seeded sample stratified by answer type
//! (yes/no, number, other), each type getting its share of the sample.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::eval::GtAnswer;
use super::files::{read_annotations, read_questions};

/// The answer-format sentence of LLaVA-1.5's VQA-v2 evaluation, on its own line after the question.
pub const DEFAULT_PROMPT_SUFFIX: &str = "Answer the question using a single word or phrase.";

/// What to read and how much of it.
#[derive(Clone, Debug, PartialEq)]
pub struct VqaOptions {
    /// `v2_OpenEnded_mscoco_<split>_questions.json`.
    pub questions: PathBuf,
    /// `v2_mscoco_<split>_annotations.json`.
    pub annotations: PathBuf,
    /// The COCO image folder of the split (e.g. `val2014/`).
    pub images: PathBuf,
    /// The split in the image names; by default the questions file's `data_subtype`.
    pub split: Option<String>,
    /// Keep a seeded, answer-type-stratified sample of this many questions.
    pub max_items: Option<usize>,
    pub seed: u64,
    /// Put after the question on a new line; empty: the question alone.
    pub prompt_suffix: String,
}

impl VqaOptions {
    pub fn new(questions: PathBuf, annotations: PathBuf, images: PathBuf) -> Self {
        Self {
            questions,
            annotations,
            images,
            split: None,
            max_items: None,
            seed: 0,
            prompt_suffix: DEFAULT_PROMPT_SUFFIX.to_string(),
        }
    }

    /// What decides the items (for a sweep's manifest).
    pub fn settings(&self) -> serde_json::Value {
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
        serde_json::json!({
            "data_format": "vqa-v2",
            "questions": abs(&self.questions),
            "annotations": abs(&self.annotations),
            "images": abs(&self.images),
            "split": self.split,
            "max_items": self.max_items,
            "seed": self.seed,
            "prompt_suffix": self.prompt_suffix,
        })
    }
}

/// One question with its image and ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct VqaItem {
    /// The question id, as the sweep's item id.
    pub id: String,
    pub question_id: u64,
    pub question: String,
    /// What the model is asked: the question, then the suffix on its own line.
    pub prompt: String,
    pub image_id: u64,
    /// The COCO file name.
    pub image: String,
    pub image_path: PathBuf,
    pub question_type: String,
    pub answer_type: String,
    /// The annotators' answers, for [`super::eval::question_accuracy`].
    pub answers: Vec<GtAnswer>,
    /// The annotations' most common answer, where the file has it.
    pub multiple_choice_answer: Option<String>,
}

/// `COCO_<split>_<image id, 12 digits>.jpg`.
pub fn coco_image_name(split: &str, image_id: u64) -> String {
    format!("COCO_{split}_{image_id:012}.jpg")
}

/// The prompt for `question`.
pub fn prompt(question: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        question.to_string()
    } else {
        format!("{question}\n{suffix}")
    }
}

/// Indices of a seeded sample of `n` of the items whose answer types are `types`, stratified:
/// each type gets `n · size / total` items rounded down, and the items left over go to the types
/// with the largest remainders (ties by type name) — so the shares match the data's to within one
/// item. Within a type, a partial Fisher–Yates shuffle driven by SplitMix64 from `seed` (types in
/// name order) picks the items. Returned in the data's order.
pub fn stratified_sample(types: &[&str], n: usize, seed: u64) -> Vec<usize> {
    let total = types.len();
    if n >= total {
        return (0..total).collect();
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in types.iter().enumerate() {
        groups.entry(t).or_default().push(i);
    }
    let share = |size: usize| (n as u128 * size as u128 / total as u128) as usize;
    let remainder = |size: usize| n as u128 * size as u128 % total as u128;
    let mut quota: BTreeMap<&str, usize> = groups.iter().map(|(t, g)| (*t, share(g.len()))).collect();
    let mut by_remainder: Vec<(&str, u128)> = groups.iter().map(|(t, g)| (*t, remainder(g.len()))).collect();
    by_remainder.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let left = n - quota.values().sum::<usize>();
    for (t, _) in by_remainder.iter().take(left) {
        *quota.get_mut(t).unwrap() += 1;
    }
    let mut state = seed;
    let mut picked = Vec::with_capacity(n);
    for (t, mut group) in groups {
        let k = quota[t];
        for i in 0..k {
            state = icet_models::backend::splitmix64(state);
            let j = i + (state % (group.len() - i) as u64) as usize;
            group.swap(i, j);
        }
        picked.extend_from_slice(&group[..k]);
    }
    picked.sort_unstable();
    picked
}

/// Reads, joins, samples and checks the items (see the module documentation).
pub fn load(opts: &VqaOptions) -> Result<Vec<VqaItem>> {
    if opts.max_items == Some(0) {
        bail!("--max-items 0 selects no question");
    }
    let items = sample(read_all(opts)?, opts.max_items, opts.seed);
    check_images(&items, &opts.images)?;
    Ok(items)
}

/// Every question of the files, joined with its annotation and named image, checked to belong
/// together (splits, ids, images), before any sampling; the images are not looked at.
pub fn read_all(opts: &VqaOptions) -> Result<Vec<VqaItem>> {
    let (q_path, a_path) = (&opts.questions, &opts.annotations);
    let questions = read_questions(q_path)?;
    let annotations = read_annotations(a_path)?;
    if let (Some(q), Some(a)) = (&questions.data_subtype, &annotations.data_subtype) {
        if q != a {
            bail!("{} is split {q} but {} is split {a}", q_path.display(), a_path.display());
        }
    }
    let split = match opts.split.as_ref().or(questions.data_subtype.as_ref()) {
        Some(s) => s.clone(),
        None => bail!("{}: no `data_subtype`; name the COCO split of the images (e.g. val2014)", q_path.display()),
    };
    super::check_annotations(&questions, q_path, &annotations.annotations, a_path)?;
    let dup = super::duplicates(questions.questions.iter().map(|q| q.question_id));
    if !dup.is_empty() {
        bail!("{}: question id(s) listed more than once: {}", q_path.display(), super::id_list(&dup));
    }
    let mut by_id: std::collections::HashMap<u64, _> =
        annotations.annotations.into_iter().map(|a| (a.question_id, a)).collect();
    let unannotated: Vec<u64> =
        questions.questions.iter().map(|q| q.question_id).filter(|id| !by_id.contains_key(id)).collect();
    if !unannotated.is_empty() {
        bail!(
            "{}: no annotation for {} question(s) of {}: {}",
            a_path.display(),
            unannotated.len(),
            q_path.display(),
            super::id_list(&unannotated)
        );
    }
    let items: Vec<VqaItem> = questions
        .questions
        .into_iter()
        .map(|q| {
            let a = by_id.remove(&q.question_id).expect("checked above");
            let image = coco_image_name(&split, q.image_id);
            VqaItem {
                id: q.question_id.to_string(),
                question_id: q.question_id,
                prompt: prompt(&q.question, &opts.prompt_suffix),
                question: q.question,
                image_id: q.image_id,
                image_path: opts.images.join(&image),
                image,
                question_type: a.question_type,
                answer_type: a.answer_type,
                answers: a.answers,
                multiple_choice_answer: a.multiple_choice_answer,
            }
        })
        .collect();
    if items.is_empty() {
        bail!("{}: no questions", q_path.display());
    }
    Ok(items)
}

/// A seeded sample of `max_items` of `items`, stratified by answer type ([`stratified_sample`]),
/// in the data's order; all of them without `max_items`.
pub fn sample(items: Vec<VqaItem>, max_items: Option<usize>, seed: u64) -> Vec<VqaItem> {
    let Some(n) = max_items else { return items };
    let types: Vec<&str> = items.iter().map(|i| i.answer_type.as_str()).collect();
    let keep: HashSet<usize> = stratified_sample(&types, n, seed).into_iter().collect();
    items.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, it)| it).collect()
}

/// Every item's image must be in `images`; all missing ones are named in one error.
pub fn check_images(items: &[VqaItem], images: &Path) -> Result<()> {
    if !images.is_dir() {
        return Err(anyhow!("{}: not an image folder", images.display()));
    }
    let mut seen = HashSet::new();
    let missing: Vec<&str> = items
        .iter()
        .filter(|i| seen.insert(i.image.as_str()) && !i.image_path.is_file())
        .map(|i| i.image.as_str())
        .collect();
    if !missing.is_empty() {
        bail!("{}: {} COCO image(s) not found: {}", images.display(), missing.len(), missing.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icet-vqa-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("images")).unwrap();
        d
    }

    /// A questions and an annotations file of `rows` (question id, image id, answer type), in
    /// the official layout, and the images named as COCO names them.
    fn dataset(d: &Path, rows: &[(u64, u64, &str)], with_images: bool) -> VqaOptions {
        let qs: Vec<_> = rows
            .iter()
            .map(|(q, i, _)| serde_json::json!({"image_id": i, "question": format!("Question {q}?"), "question_id": q}))
            .collect();
        let anns: Vec<_> = rows
            .iter()
            .map(|(q, i, t)| {
                let answers: Vec<_> = (1..=10)
                    .map(|k| serde_json::json!({"answer": format!("a{q}"), "answer_confidence": "yes", "answer_id": k}))
                    .collect();
                serde_json::json!({"question_type": "what is", "multiple_choice_answer": format!("a{q}"), "answers": answers,
                                   "image_id": i, "answer_type": t, "question_id": q})
            })
            .collect();
        let q = serde_json::json!({"info": {}, "task_type": "OpenEnded", "data_type": "mscoco", "license": {},
                                   "data_subtype": "val2014", "questions": qs});
        let a = serde_json::json!({"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014", "annotations": anns});
        std::fs::write(d.join("q.json"), q.to_string()).unwrap();
        std::fs::write(d.join("a.json"), a.to_string()).unwrap();
        if with_images {
            for (_, i, _) in rows {
                std::fs::write(d.join("images").join(coco_image_name("val2014", *i)), b"jpg").unwrap();
            }
        }
        VqaOptions::new(d.join("q.json"), d.join("a.json"), d.join("images"))
    }

    #[test]
    fn reads_items_with_coco_images_and_the_llava_prompt() {
        let d = tmp("ok");
        let opts = dataset(&d, &[(42000, 42, "other"), (7001, 7, "yes/no"), (7002, 7, "number")], true);
        let items = load(&opts).unwrap();
        assert_eq!(items.len(), 3);
        let it = &items[0];
        assert_eq!((it.id.as_str(), it.question_id, it.image_id), ("42000", 42000, 42));
        assert_eq!(it.image, "COCO_val2014_000000000042.jpg");
        assert_eq!(it.image_path, d.join("images/COCO_val2014_000000000042.jpg"));
        assert_eq!(it.prompt, "Question 42000?\nAnswer the question using a single word or phrase.");
        assert_eq!((it.answer_type.as_str(), it.question_type.as_str()), ("other", "what is"));
        assert_eq!(it.answers.len(), 10);
        assert_eq!(it.answers[3].answer, "a42000");
        assert_eq!(items[1].image, items[2].image, "two questions about one image");
        // The suffix is overridable, or off.
        let plain = load(&VqaOptions { prompt_suffix: String::new(), ..opts.clone() }).unwrap();
        assert_eq!(plain[0].prompt, "Question 42000?");
        let custom = load(&VqaOptions { prompt_suffix: "One word.".into(), ..opts.clone() }).unwrap();
        assert_eq!(custom[2].prompt, "Question 7002?\nOne word.");
        // The split in the names comes from the file unless given.
        let e = load(&VqaOptions { split: Some("test2015".into()), ..opts }).unwrap_err().to_string();
        assert!(
            e.contains("2 COCO image(s) not found")
                && e.contains("COCO_test2015_000000000042.jpg, COCO_test2015_000000000007.jpg"),
            "two questions about image 7 name it once: {e}"
        );
    }

    #[test]
    fn every_missing_image_is_named_in_one_error() {
        let d = tmp("missing");
        let opts = dataset(&d, &[(1, 11, "other"), (2, 12, "other"), (3, 13, "other")], true);
        std::fs::remove_file(d.join("images/COCO_val2014_000000000011.jpg")).unwrap();
        std::fs::remove_file(d.join("images/COCO_val2014_000000000013.jpg")).unwrap();
        let e = load(&opts).unwrap_err().to_string();
        assert!(
            e.contains("2 COCO image(s) not found: COCO_val2014_000000000011.jpg, COCO_val2014_000000000013.jpg"),
            "{e}"
        );
        let e = load(&VqaOptions { images: d.join("nope"), ..opts }).unwrap_err().to_string();
        assert!(e.contains("nope: not an image folder"), "{e}");
    }

    #[test]
    fn files_that_do_not_belong_together_are_refused() {
        let d = tmp("mismatch");
        let opts = dataset(&d, &[(1, 11, "other"), (2, 12, "other")], true);
        // A question without annotation.
        let q = std::fs::read_to_string(&opts.questions)
            .unwrap()
            .replace(r#""questions":["#, r#""questions":[{"image_id":5,"question":"x","question_id":99},"#);
        std::fs::write(d.join("q2.json"), q).unwrap();
        let e = load(&VqaOptions { questions: d.join("q2.json"), ..opts.clone() }).unwrap_err().to_string();
        assert!(e.contains("a.json: no annotation for 1 question(s)") && e.contains("99"), "{e}");
        // Another split.
        let a = std::fs::read_to_string(&opts.annotations).unwrap().replace("val2014", "train2014");
        std::fs::write(d.join("a2.json"), a).unwrap();
        let e = load(&VqaOptions { annotations: d.join("a2.json"), ..opts.clone() }).unwrap_err().to_string();
        assert!(e.contains("is split val2014") && e.contains("train2014"), "{e}");
        let e = load(&VqaOptions { max_items: Some(0), ..opts }).unwrap_err().to_string();
        assert!(e.contains("no question"), "{e}");
    }

    #[test]
    fn stratified_shares_by_largest_remainder() {
        // 6 other, 3 yes/no, 1 number; 5 of 10: shares 3, 1.5, 0.5 → floors 3, 1, 0 and one left
        // over; remainders (×10): other 0, yes/no 5, number 5 → tie, by name: "number" < "yes/no".
        let mut types = vec!["other"; 6];
        types.extend(["yes/no"; 3]);
        types.push("number");
        let pick = stratified_sample(&types, 5, 1);
        let count = |t: &str| pick.iter().filter(|&&i| types[i] == t).count();
        assert_eq!((count("other"), count("yes/no"), count("number")), (3, 1, 1));
        assert!(pick.windows(2).all(|w| w[0] < w[1]), "in data order");
        assert_eq!(stratified_sample(&types, 5, 1), pick, "seeded");
        assert_ne!((0..8).map(|s| stratified_sample(&types, 5, s)).collect::<HashSet<_>>().len(), 1, "seeds differ");
        assert_eq!(stratified_sample(&types, 50, 1), (0..10).collect::<Vec<_>>());
        // Proportions hold on a large set: 70/20/10 % of 1000, sample 100 → exactly 70, 20, 10.
        let big: Vec<&str> = (0..1000)
            .map(|i| {
                if i % 10 < 7 {
                    "other"
                } else if i % 10 < 9 {
                    "yes/no"
                } else {
                    "number"
                }
            })
            .collect();
        let pick = stratified_sample(&big, 100, 7);
        let count = |t: &str| pick.iter().filter(|&&i| big[i] == t).count();
        assert_eq!((count("other"), count("yes/no"), count("number")), (70, 20, 10));
        let distinct: HashSet<usize> = pick.iter().copied().collect();
        assert_eq!(distinct.len(), 100, "no item twice");
    }

    #[test]
    fn max_items_samples_before_the_image_check() {
        let d = tmp("sample");
        let rows: Vec<(u64, u64, &str)> = (0..12)
            .map(|i| {
                (
                    i + 1,
                    i + 100,
                    if i < 8 {
                        "other"
                    } else if i < 10 {
                        "yes/no"
                    } else {
                        "number"
                    },
                )
            })
            .collect();
        let opts = VqaOptions { max_items: Some(6), seed: 3, ..dataset(&d, &rows, true) };
        let items = load(&opts).unwrap();
        assert_eq!(items.len(), 6);
        let count = |t: &str| items.iter().filter(|i| i.answer_type == t).count();
        assert_eq!((count("other"), count("yes/no"), count("number")), (4, 1, 1));
        assert_eq!(load(&opts).unwrap(), items);
        // Only the sampled items' images must exist.
        let chosen: HashSet<String> = items.iter().map(|i| i.image.clone()).collect();
        for (_, img, _) in &rows {
            let name = coco_image_name("val2014", *img);
            if !chosen.contains(&name) {
                std::fs::remove_file(d.join("images").join(name)).unwrap();
            }
        }
        assert_eq!(load(&opts).unwrap(), items);
        assert_eq!(opts.settings()["max_items"], 6);
    }
}
