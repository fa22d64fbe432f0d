//! Decoding options shared by `generate` and `sweep`.
use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use icet_models::backend::SamplingParams;
use icet_models::generation::DecodeOptions;

#[derive(ClapArgs, Clone, Debug)]
pub struct DecodeArgs {
    /// New tokens at most per answer (at least 1)
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding, as third-party reproductions use
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Seed of sampled decoding (per answer, derived from this and the answer's id and layer)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DecodeArgs {
    /// Refuses values that would make no answer or a meaningless one; run before anything is
    /// loaded or written.
    pub fn check(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens 0 makes only empty answers; give at least 1");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p {} must be in (0, 1]", self.top_p);
        }
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            bail!("--temperature {} must be >= 0", self.temperature);
        }
        Ok(())
    }

    /// The options, stopping at `eos_token_ids` ([`Self::check`]ed first).
    pub fn options(&self, eos_token_ids: Vec<u32>) -> Result<DecodeOptions> {
        self.check()?;
        let sampling =
            (self.temperature > 0.0).then_some(SamplingParams { temperature: self.temperature, top_p: self.top_p });
        Ok(DecodeOptions { max_new_tokens: self.max_new_tokens, eos_token_ids, sampling })
    }
}
