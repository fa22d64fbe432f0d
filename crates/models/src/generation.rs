//! Batched generation with a KV cache: every sequence in a batch is prefilled in one packed
//! forward pass, then all unfinished ones decode one token per step together.
use serde::Serialize;

use crate::backend::{Backend, SamplingParams, SeqChunk};
use crate::error::{Error, Result};
use crate::llama::Llama;

/// One prompt to continue. Rows of `prompt_ids` equal to the image token are replaced, in order,
/// by the rows of `image_features` (`[slots, hidden]`) — the splice LLaVA performs.
pub struct Request<'a, B: Backend> {
    pub prompt_ids: Vec<u32>,
    pub image_features: Option<&'a B::Tensor>,
    /// Seed of this sequence's draws (unused when greedy).
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOptions {
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    /// `None` is greedy decoding.
    pub sampling: Option<SamplingParams>,
    pub image_token_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Eos,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Generated ids, the end-of-sequence token included when produced.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Logits of the first generated position, when asked for (parity tests read them).
    pub first_logits: Option<Vec<f32>>,
}

/// The seed of step `step` of a sequence seeded with `seed`: distinct per step, and independent
/// of the batch a sequence happens to run in.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    crate::backend::splitmix64(seed ^ (step as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Runs `requests` to completion as one batch.
pub fn generate<B: Backend>(
    b: &B,
    llm: &Llama<B>,
    requests: &[Request<B>],
    opts: &DecodeOptions,
    keep_first_logits: bool,
) -> Result<Vec<Generated>> {
    let mut out: Vec<Generated> = requests
        .iter()
        .map(|_| Generated { token_ids: vec![], finish_reason: FinishReason::Length, first_logits: None })
        .collect();
    if requests.is_empty() || opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let longest = requests.iter().map(|r| r.prompt_ids.len()).max().unwrap_or(0);
    if requests.iter().any(|r| r.prompt_ids.is_empty()) {
        return Err(Error::invalid("cannot generate from an empty prompt"));
    }
    let capacity = longest + opts.max_new_tokens;
    let limit = llm.config.max_position_embeddings;
    if capacity > limit {
        return Err(Error::invalid(format!(
            "prompt of {longest} tokens + {} new tokens exceeds the model's {limit} positions",
            opts.max_new_tokens
        )));
    }
    let mut cache = llm.new_cache(b, requests.len(), capacity)?;

    // Prefill: embed every prompt in one packed tensor, splice the image features in.
    let all_ids: Vec<u32> = requests.iter().flat_map(|r| r.prompt_ids.iter().copied()).collect();
    let mut embeds = llm.embed(b, &all_ids)?;
    let mut chunks = Vec::with_capacity(requests.len());
    let mut offset = 0;
    for (slot, r) in requests.iter().enumerate() {
        let image_rows: Vec<usize> = r
            .prompt_ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == opts.image_token_id)
            .map(|(i, _)| offset + i)
            .collect();
        match r.image_features {
            Some(f) => {
                if b.dims(f).0 != image_rows.len() {
                    return Err(Error::invalid(format!(
                        "prompt has {} image slots but {} image features were given",
                        image_rows.len(),
                        b.dims(f).0
                    )));
                }
                b.scatter_rows(&mut embeds, &image_rows, f)?;
            }
            None if !image_rows.is_empty() => return Err(Error::invalid("prompt has image slots but no image")),
            None => {}
        }
        chunks.push(SeqChunk { slot, start: 0, len: r.prompt_ids.len() });
        offset += r.prompt_ids.len();
    }
    let mut live: Vec<usize> = (0..requests.len()).collect();
    let mut hidden = llm.forward(b, embeds, &chunks, &mut cache)?;
    for step in 0..opts.max_new_tokens {
        let logits = llm.logits(b, &hidden)?;
        if step == 0 && keep_first_logits {
            let host = b.to_host(&logits)?;
            let vocab = b.dims(&logits).1;
            for (row, &i) in live.iter().enumerate() {
                out[i].first_logits = Some(host[row * vocab..(row + 1) * vocab].to_vec());
            }
        }
        let next = match opts.sampling {
            None => b.argmax(&logits)?,
            Some(p) => {
                let seeds: Vec<u64> = live.iter().map(|&i| step_seed(requests[i].seed, step)).collect();
                b.sample(&logits, p, &seeds)?
            }
        };
        let mut still = Vec::with_capacity(live.len());
        for (&i, &tok) in live.iter().zip(&next) {
            out[i].token_ids.push(tok);
            if opts.eos_token_ids.contains(&tok) {
                out[i].finish_reason = FinishReason::Eos;
            } else {
                still.push(i);
            }
        }
        live = still;
        if live.is_empty() || step + 1 == opts.max_new_tokens {
            break;
        }
        let ids: Vec<u32> = live.iter().map(|&i| *out[i].token_ids.last().unwrap()).collect();
        let chunks: Vec<SeqChunk> = live
            .iter()
            .map(|&i| SeqChunk { slot: i, start: requests[i].prompt_ids.len() + out[i].token_ids.len() - 1, len: 1 })
            .collect();
        hidden = llm.forward(b, llm.embed(b, &ids)?, &chunks, &mut cache)?;
    }
    Ok(out)
}
