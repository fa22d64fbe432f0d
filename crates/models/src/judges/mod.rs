//! Judges that score a sweep's answers offline, each a model run by this engine:
//!
//! * [`llama_guard`]: Llama Guard 1/2/3 on [`crate::llama::Llama`] — safe/unsafe verdicts and
//!   categories for (prompt, response) pairs; ASR is the share judged unsafe.
//! * [`llama_guard_vision`]: Llama-Guard-3-11B-Vision on [`crate::mllama::Mllama`] — the same
//!   verdicts, judging each pair together with its image.
//! * [`classifier::RewardModel`]: GPT-2 sequence classification ([`crate::gpt2`]), the HH-RLHF
//!   harmless reward models; the score is the single logit.
//! * [`classifier::ToxicityClassifier`]: BERT/RoBERTa sequence classification ([`crate::bert`]),
//!   e.g. `unitary/toxic-bert` and `s-nlp/roberta_toxicity_classifier`; the score is the
//!   probability of the "toxic" label (see its docs for the definition per layout).
//! * [`deberta_reward::DebertaReward`]: the DeBERTa-v3 reward model ([`crate::deberta`]) scoring
//!   (question, answer) pairs, the utility reward of the study.
//!
//! The Perspective API client lives in the CLI (it is a network service, not a model).
pub mod classifier;
pub mod deberta_reward;
pub mod llama_guard;
pub mod llama_guard_vision;
