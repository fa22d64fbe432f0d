//! VQA-v2 as a sweep's data source (`--data-format vqa-v2`): `--data` is the official questions
//! file, `--vqa-annotations` its annotations file, `--images` the COCO image folder of the split.
//! The items ([`super::data`]) become data rows — id = question id, prompt = question + the
//! answer-format line, image = the COCO file — with the columns `answer_type`, `question_type` and
//! `multiple_choice_answer` (for `--where` and report.html's filters).
//!
//! What decides the rows (annotations, images, split, sample size and seed, suffix, filters) is
//! recorded in the manifest's `data_options`, so `icet score --judge vqa` finds the annotations
//! and a report re-reads the rows as the sweep did.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args as ClapArgs;

use super::data::{self as items, VqaItem, VqaOptions, DEFAULT_PROMPT_SUFFIX};
use crate::data::{DataArgs, DataFormat, DataRow, Fields, Pairing};

/// The `data_format` a VQA-v2 run records.
pub const FORMAT_NAME: &str = "vqa-v2";

/// The sweep's VQA-v2 options (part of [`DataArgs`]).
#[derive(ClapArgs, Clone, Debug, Default, PartialEq)]
pub struct VqaArgs {
    /// VQA-v2: the annotations file of the questions given as --data
    /// (v2_mscoco_<split>_annotations.json); implies --data-format vqa-v2
    #[arg(long, value_name = "FILE")]
    pub vqa_annotations: Option<PathBuf>,
    /// VQA-v2: the split in the COCO image names (COCO_<split>_<id>.jpg) [default: the questions
    /// file's data_subtype]
    #[arg(long, value_name = "SPLIT")]
    pub vqa_split: Option<String>,
    /// VQA-v2: ask a seeded sample of N questions, stratified by answer type (yes/no, number,
    /// other keep their shares), instead of all
    #[arg(long, value_name = "N")]
    pub max_items: Option<usize>,
    /// Seed of the --max-items sample
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub sample_seed: u64,
    /// VQA-v2: the line put after each question [default: LLaVA-1.5's evaluation prompt, "Answer
    /// the question using a single word or phrase."]; '' asks the question alone
    #[arg(long, value_name = "TEXT")]
    pub prompt_suffix: Option<String>,
}

impl VqaArgs {
    fn suffix(&self) -> &str {
        self.prompt_suffix.as_deref().unwrap_or(DEFAULT_PROMPT_SUFFIX)
    }
}

/// Whether `opts` read VQA-v2 (the format named, or implied by `--vqa-annotations`).
pub fn is_vqa(opts: &DataArgs) -> bool {
    opts.data_format == DataFormat::VqaV2 || opts.vqa.vqa_annotations.is_some()
}

/// Refuses VQA-only options on other data, and points a VQA questions file read as JSONL at the
/// right flags.
pub fn check_not_vqa(path: &Path, opts: &DataArgs) -> Result<()> {
    let v = &opts.vqa;
    let given = [
        ("--vqa-split", v.vqa_split.is_some()),
        ("--max-items", v.max_items.is_some()),
        ("--sample-seed", v.sample_seed != 0),
        ("--prompt-suffix", v.prompt_suffix.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
        bail!("{flag} is a VQA-v2 option (--data-format vqa-v2 with --vqa-annotations FILE); --max-prompts limits other data");
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if opts.data_format == DataFormat::Auto && name.ends_with(".json") && name.contains("questions") {
        let text = std::fs::read(path).unwrap_or_default();
        if text.iter().take(1 << 16).any(|&b| b == b'{') && text.windows(12).any(|w| w == b"\"questions\":") {
            bail!(
                "{}: looks like a VQA-v2 questions file; give its annotations with --vqa-annotations FILE \
                 (and the COCO images with --images DIR)",
                path.display()
            );
        }
    }
    Ok(())
}

/// The reader's options from the sweep's: `questions` is `--data`.
fn options(questions: &Path, opts: &DataArgs) -> Result<VqaOptions> {
    if !matches!(opts.data_format, DataFormat::Auto | DataFormat::VqaV2) {
        bail!("--vqa-annotations reads VQA-v2; it cannot be used with --data-format {:?}", opts.data_format);
    }
    let annotations = opts.vqa.vqa_annotations.clone().ok_or_else(|| {
        anyhow!("--data-format vqa-v2 needs the annotations file: --vqa-annotations v2_mscoco_<split>_annotations.json")
    })?;
    let images = opts
        .images
        .clone()
        .ok_or_else(|| anyhow!("--data-format vqa-v2 needs the COCO image folder of the split: --images DIR"))?;
    let refused = [
        ("--max-prompts (use --max-items: a sample stratified by answer type)", opts.max_prompts.is_some()),
        ("--prompt-column", opts.prompt_column.is_some()),
        ("--pairing", opts.pairing != Pairing::Random),
        ("--pair-seed", opts.pair_seed != 0),
    ];
    if let Some((flag, _)) = refused.iter().find(|(_, r)| *r) {
        bail!("{flag} does not apply to VQA-v2 data (every question names its COCO image)");
    }
    Ok(VqaOptions {
        questions: questions.to_path_buf(),
        annotations,
        images,
        split: opts.vqa.vqa_split.clone(),
        max_items: opts.vqa.max_items,
        seed: opts.vqa.sample_seed,
        prompt_suffix: opts.vqa.suffix().to_string(),
    })
}

/// An item's data columns.
pub fn fields(item: &VqaItem) -> Fields {
    let mut f = Fields::new();
    f.insert("answer_type".into(), item.answer_type.clone());
    f.insert("question_type".into(), item.question_type.clone());
    if let Some(a) = &item.multiple_choice_answer {
        f.insert("multiple_choice_answer".into(), a.clone());
    }
    f
}

/// The VQA items `questions` and `opts` select: read, filtered by `--where` (on the columns of
/// [`fields`]), sampled; with `check_images`, every image must exist (all missing ones named).
pub fn load_items(questions: &Path, opts: &DataArgs, check_images: bool) -> Result<Vec<VqaItem>> {
    let vqa = options(questions, opts)?;
    if vqa.max_items == Some(0) {
        bail!("--max-items 0 selects no question");
    }
    let mut all = items::read_all(&vqa)?;
    let filters = crate::data::parse_filters(&opts.filters)?;
    if !filters.is_empty() {
        let known = ["answer_type", "question_type", "multiple_choice_answer"];
        if let Some((col, _)) = filters.iter().find(|(c, _)| !known.contains(&c.as_str())) {
            bail!("{}: --where {col}: no such column (has: {})", questions.display(), known.join(", "));
        }
        all.retain(|it| {
            let f = fields(it);
            filters.iter().all(|(col, values)| f.get(col).is_some_and(|v| values.contains(v)))
        });
        if all.is_empty() {
            bail!("{}: no question matches --where {}", questions.display(), opts.filters.join(" "));
        }
    }
    let chosen = items::sample(all, vqa.max_items, vqa.seed);
    if check_images {
        items::check_images(&chosen, &vqa.images)?;
    }
    Ok(chosen)
}

/// [`load_items`] as data rows with their columns.
pub fn rows(questions: &Path, opts: &DataArgs, check_images: bool) -> Result<Vec<(DataRow, Fields)>> {
    Ok(load_items(questions, opts, check_images)?
        .into_iter()
        .map(|it| {
            let f = fields(&it);
            (DataRow { id: it.id, prompt: it.prompt, image: it.image, image_path: it.image_path }, f)
        })
        .collect())
}

/// What a VQA-v2 sweep records in its manifest's `data_options` (the questions file is the
/// manifest's `data`).
pub fn settings(opts: &DataArgs) -> serde_json::Value {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
    let mut v = serde_json::json!({
        "data_format": FORMAT_NAME,
        "annotations": opts.vqa.vqa_annotations.as_deref().map(abs),
        "images": opts.images.as_deref().map(abs),
        "split": opts.vqa.vqa_split,
        "max_items": opts.vqa.max_items,
        "sample_seed": opts.vqa.sample_seed,
        "prompt_suffix": opts.vqa.suffix(),
    });
    if !opts.filters.is_empty() {
        v["where"] = serde_json::json!(opts.filters);
    }
    v
}

/// The options [`settings`] recorded.
pub fn from_settings(v: &serde_json::Value) -> DataArgs {
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
    DataArgs {
        data_format: DataFormat::VqaV2,
        images: text("images").map(PathBuf::from),
        filters: match v.get("where").and_then(|x| x.as_array()) {
            Some(list) => list.iter().filter_map(|f| f.as_str().map(str::to_string)).collect(),
            None => vec![],
        },
        vqa: VqaArgs {
            vqa_annotations: text("annotations").map(PathBuf::from),
            vqa_split: text("split"),
            max_items: v.get("max_items").and_then(|x| x.as_u64()).map(|n| n as usize),
            sample_seed: v.get("sample_seed").and_then(|x| x.as_u64()).unwrap_or(0),
            prompt_suffix: text("prompt_suffix"),
        },
        ..DataArgs::default()
    }
}

/// The annotations file a VQA-v2 run was made with, from its manifest's settings (`None`: the
/// run did not read VQA-v2).
pub fn recorded_annotations(settings: &serde_json::Value) -> Option<PathBuf> {
    let opts = settings.get("data_options")?;
    (opts.get("data_format")?.as_str()? == FORMAT_NAME).then(|| from_settings(opts).vqa.vqa_annotations)?
}

/// The items a finished VQA-v2 run was made from, read from the files its manifest names
/// (images not checked); `None` when the run is not a VQA-v2 run.
pub fn recorded_items(settings: &serde_json::Value) -> Option<Result<Vec<VqaItem>>> {
    let opts = settings.get("data_options")?;
    if opts.get("data_format")?.as_str()? != FORMAT_NAME {
        return None;
    }
    let questions = settings.get("data")?.as_str()?;
    Some(load_items(Path::new(questions), &from_settings(opts), false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icet-vqa-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("coco")).unwrap();
        d
    }

    /// Questions (id, image id, answer type, question type) in the official layouts, with images.
    fn dataset(d: &Path, rows: &[(u64, u64, &str, &str)]) -> DataArgs {
        let qs: Vec<_> = rows
            .iter()
            .map(|(q, i, _, _)| serde_json::json!({"image_id": i, "question": format!("Q{q}?"), "question_id": q}))
            .collect();
        let anns: Vec<_> = rows
            .iter()
            .map(|(q, i, t, qt)| {
                let answers: Vec<_> = (1..=10)
                    .map(|k| serde_json::json!({"answer": "two", "answer_confidence": "yes", "answer_id": k}))
                    .collect();
                serde_json::json!({"question_type": qt, "multiple_choice_answer": "2", "answers": answers,
                                   "image_id": i, "answer_type": t, "question_id": q})
            })
            .collect();
        let q = serde_json::json!({"task_type": "OpenEnded", "data_subtype": "val2014", "questions": qs});
        let a = serde_json::json!({"data_subtype": "val2014", "annotations": anns});
        std::fs::write(d.join("v2_OpenEnded_mscoco_val2014_questions.json"), q.to_string()).unwrap();
        std::fs::write(d.join("a.json"), a.to_string()).unwrap();
        for (_, i, _, _) in rows {
            std::fs::write(d.join("coco").join(items::coco_image_name("val2014", *i)), b"jpg").unwrap();
        }
        DataArgs {
            images: Some(d.join("coco")),
            vqa: VqaArgs { vqa_annotations: Some(d.join("a.json")), ..VqaArgs::default() },
            ..DataArgs::default()
        }
    }

    fn questions(d: &Path) -> PathBuf {
        d.join("v2_OpenEnded_mscoco_val2014_questions.json")
    }

    #[test]
    fn vqa_rows_are_data_rows_with_their_columns() {
        let d = tmp("rows");
        let opts = dataset(&d, &[(7001, 7, "number", "how many"), (42000, 42, "yes/no", "is the")]);
        assert!(is_vqa(&opts), "--vqa-annotations implies the format");
        let rows = data::load_with_fields(&questions(&d), &opts).unwrap();
        let (row, f) = &rows[0];
        assert_eq!(row.id, "7001");
        assert_eq!(row.prompt, "Q7001?\nAnswer the question using a single word or phrase.");
        assert_eq!(row.image, "COCO_val2014_000000000007.jpg");
        assert_eq!(row.image_path, d.join("coco/COCO_val2014_000000000007.jpg"));
        assert_eq!((f["answer_type"].as_str(), f["question_type"].as_str()), ("number", "how many"));
        assert_eq!(f["multiple_choice_answer"], "2");
        // load_with checks the images; --where filters on the columns.
        assert_eq!(data::load_with(&questions(&d), &opts).unwrap().len(), 2);
        let yes_no = DataArgs { filters: vec!["answer_type=yes/no".into()], ..opts.clone() };
        let rows = data::load_with(&questions(&d), &yes_no).unwrap();
        assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["42000"]);
        let e = data::load_with(&questions(&d), &DataArgs { filters: vec!["policy=x".into()], ..opts.clone() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("--where policy: no such column (has: answer_type"), "{e}");
        // The suffix is overridable, or off.
        let plain =
            DataArgs { vqa: VqaArgs { prompt_suffix: Some(String::new()), ..opts.vqa.clone() }, ..opts.clone() };
        assert_eq!(data::load_with(&questions(&d), &plain).unwrap()[0].prompt, "Q7001?");
        // Missing images are named before anything else happens; load_with_fields does not care.
        std::fs::remove_file(d.join("coco/COCO_val2014_000000000042.jpg")).unwrap();
        let e = data::load_with(&questions(&d), &opts).unwrap_err().to_string();
        assert!(e.contains("1 COCO image(s) not found: COCO_val2014_000000000042.jpg"), "{e}");
        assert_eq!(data::load_with_fields(&questions(&d), &opts).unwrap().len(), 2);
    }

    #[test]
    fn settings_record_what_decides_the_rows_and_read_back() {
        let d = tmp("settings");
        let rows: Vec<(u64, u64, &str, &str)> =
            (0..9).map(|i| (i + 1, i + 100, ["other", "other", "yes/no"][i as usize % 3], "what is")).collect();
        let mut opts = dataset(&d, &rows);
        opts.vqa.max_items = Some(3);
        opts.vqa.sample_seed = 11;
        opts.vqa.prompt_suffix = Some("One word.".into());
        opts.filters = vec!["question_type=what is".into()];
        let s = opts.settings().unwrap();
        assert_eq!(s["data_format"], "vqa-v2");
        assert_eq!(s["annotations"], serde_json::json!(std::fs::canonicalize(d.join("a.json")).unwrap()));
        assert_eq!((s["max_items"].as_u64(), s["sample_seed"].as_u64()), (Some(3), Some(11)));
        assert_eq!(s["prompt_suffix"], "One word.");
        let back = DataArgs::from_settings(Some(&s)).unwrap();
        assert_eq!(back.data_format, DataFormat::VqaV2);
        let first = data::load_with(&questions(&d), &opts).unwrap();
        assert_eq!(data::load_with(&questions(&d), &back).unwrap(), first, "the same rows from the manifest");
        assert_eq!(first.len(), 3);
        let manifest = serde_json::json!({"data": questions(&d), "data_options": s});
        assert_eq!(recorded_annotations(&manifest), Some(std::fs::canonicalize(d.join("a.json")).unwrap()));
        let recorded = recorded_items(&manifest).unwrap().unwrap();
        assert_eq!(
            recorded.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
            first.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
        );
        assert!(recorded_annotations(&serde_json::json!({"data_options": {"data_format": "jsonl"}})).is_none());
        // The default suffix is recorded as the text it is.
        let default = dataset(&d, &rows).settings().unwrap();
        assert_eq!(default["prompt_suffix"], DEFAULT_PROMPT_SUFFIX);
    }

    #[test]
    fn options_that_do_not_fit_are_refused() {
        let d = tmp("refused");
        let opts = dataset(&d, &[(1, 1, "other", "what")]);
        let q = questions(&d);
        let err = |o: &DataArgs| data::load_with(&q, o).unwrap_err().to_string();
        assert!(err(&DataArgs { max_prompts: Some(1), ..opts.clone() }).contains("use --max-items"));
        assert!(err(&DataArgs { images: None, ..opts.clone() }).contains("--images DIR"));
        let no_ann = DataArgs { data_format: DataFormat::VqaV2, vqa: VqaArgs::default(), ..opts.clone() };
        assert!(err(&no_ann).contains("--vqa-annotations"));
        assert!(err(&DataArgs { data_format: DataFormat::Csv, ..opts.clone() }).contains("cannot be used with"));
        let zero = DataArgs { vqa: VqaArgs { max_items: Some(0), ..opts.vqa.clone() }, ..opts.clone() };
        assert!(err(&zero).contains("no question"));
        // VQA options on other data, and a questions file read as JSONL.
        let jsonl = d.join("p.jsonl");
        std::fs::write(&jsonl, "{\"prompt\": \"a\", \"image\": \"coco/COCO_val2014_000000000001.jpg\"}\n").unwrap();
        let e = data::load_with(
            &jsonl,
            &DataArgs { vqa: VqaArgs { max_items: Some(2), ..VqaArgs::default() }, ..DataArgs::default() },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--max-items is a VQA-v2 option"), "{e}");
        let e = data::load_with(&q, &DataArgs::default()).unwrap_err().to_string();
        assert!(e.contains("looks like a VQA-v2 questions file") && e.contains("--vqa-annotations"), "{e}");
    }
}
