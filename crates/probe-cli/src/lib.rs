//! The engine of `icet` (layer-wise safety sweeps of vision-language models by image-encoder
//! early exit) as a library; the `icet` binary's commands parse arguments and call it.
//!
//! Every model family is reached through `icet_models::vlm` (the family seam); nothing here
//! branches on a family.
//!
//! * [`sweep`]: prompts × images × vision layers through a model, answers appended to a run
//!   directory as they finish, resumable ([`run_dir`] owns the run's files, rows, lock and
//!   manifest; [`fingerprint`] says what answers are made from).
//! * [`score`]: every answer by every judge ([`judge`]: one trait, Llama Guard, reward and
//!   toxicity models, Perspective) into `scores.jsonl`.
//! * [`report`]: per-layer tables with bootstrap intervals ([`stats`]) and plots ([`plot`]),
//!   grouped as the paper does ([`grouping`]); the sweep's own [`summary`] uses the same pieces.
//!   [`report_html`] writes the same tables, the plots and every answer into one self-contained page.
//!   [`safety_utility`] puts ASR beside VQA accuracy and reward, layer by layer, across runs.
//! * [`shard`]: a run's grid split by image over processes (Slurm tasks, [`workers`] on the
//!   devices of one machine), each writing its own answers file, read back as one run;
//!   [`slurm`] writes (and submits) the job array.
//! * [`generate`], [`features`], [`bench`]: one answer, one image's features, stage throughput.
//! * [`vqa`]: VQA-v2's official files, the official VQA accuracy and VQA-v2 sweep items.
//! * [`data`] (data files and datasets), [`decode`] (decoding options), [`device`] (backend
//!   choice), [`refusal`] (the keyword detector), [`demo`] (the embedded demo), [`progress`]
//!   (progress on a terminal and in logs).
pub mod bench;
pub mod data;
pub mod decode;
pub mod demo;
pub mod device;
pub mod features;
pub mod fingerprint;
pub mod generate;
pub mod grouping;
pub mod judge;
pub mod plot;
pub mod progress;
pub mod refusal;
pub mod report;
pub mod report_html;
pub mod run_dir;
pub mod safety_utility;
pub mod score;
pub mod shard;
pub mod slurm;
pub mod stats;
pub mod summary;
pub mod sweep;
pub mod vqa;
pub mod workers;

/// A family's settings of an answer as a note after other facts: `, exit rule clamp`.
pub fn settings_note(settings: &serde_json::Map<String, serde_json::Value>) -> String {
    settings.iter().map(|(k, v)| format!(", {} {}", k.replace('_', " "), v.as_str().unwrap_or(""))).collect()
}
