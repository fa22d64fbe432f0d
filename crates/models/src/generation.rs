//! Generation with a KV cache and continuous batching: sequences in flight decode one token per
//! step together, and a finished sequence's slot is refilled at once by the next request, whose
//! prompt is prefilled in the same packed forward pass.
use std::sync::Arc;

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

/// A request that owns (a share of) its image features, for streams whose features are made on
/// the fly and must be freed once the last sequence that reads them is prefilled.
pub struct OwnedRequest<B: Backend> {
    pub prompt_ids: Vec<u32>,
    pub image_features: Option<Arc<B::Tensor>>,
    pub seed: u64,
}

/// What the scheduler needs of a request, whoever owns its features.
pub trait Prompt<B: Backend> {
    fn prompt_ids(&self) -> &[u32];
    fn image_features(&self) -> Option<&B::Tensor>;
    fn seed(&self) -> u64;
}

impl<B: Backend> Prompt<B> for Request<'_, B> {
    fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }
    fn image_features(&self) -> Option<&B::Tensor> {
        self.image_features
    }
    fn seed(&self) -> u64 {
        self.seed
    }
}

impl<B: Backend> Prompt<B> for OwnedRequest<B> {
    fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }
    fn image_features(&self) -> Option<&B::Tensor> {
        self.image_features.as_deref()
    }
    fn seed(&self) -> u64 {
        self.seed
    }
}

impl<B: Backend, P: Prompt<B>> Prompt<B> for &P {
    fn prompt_ids(&self) -> &[u32] {
        (*self).prompt_ids()
    }
    fn image_features(&self) -> Option<&B::Tensor> {
        (*self).image_features()
    }
    fn seed(&self) -> u64 {
        (*self).seed()
    }
}

/// Runs `requests` to completion as one batch; results in request order.
pub fn generate<B: Backend>(
    b: &B,
    llm: &Llama<B>,
    requests: &[Request<B>],
    opts: &DecodeOptions,
    keep_first_logits: bool,
) -> Result<Vec<Generated>> {
    let mut out: Vec<Option<Generated>> = vec![None; requests.len()];
    if requests.is_empty() {
        return Ok(vec![]);
    }
    let longest = requests.iter().map(|r| r.prompt_ids.len()).max().unwrap_or(0);
    let stream = Stream { slots: requests.len(), capacity: longest + opts.max_new_tokens, keep_first_logits };
    generate_stream(b, llm, requests.iter().map(Ok), opts, stream, |i, g| {
        out[i] = Some(g);
        Ok(())
    })?;
    Ok(out.into_iter().map(|g| g.expect("every request finishes")).collect())
}

/// Shape of a continuous-batching run.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    /// Sequences in flight at once (KV-cache slots).
    pub slots: usize,
    /// Positions per slot: at least the longest prompt plus `max_new_tokens`.
    pub capacity: usize,
    pub keep_first_logits: bool,
}

struct Active<R> {
    index: usize,
    slot: usize,
    request: R,
    /// Still to be prefilled in the next step.
    fresh: bool,
    tokens: Vec<u32>,
    first_logits: Option<Vec<f32>>,
}

/// Continuous batching: up to `stream.slots` sequences are in flight; whenever one finishes, the
/// next request takes its KV-cache slot and is prefilled in the same forward pass in which the
/// others decode (a packed batch of prefill chunks and one-token decode chunks). `on_done(i, g)`
/// gets request `i`'s result as soon as it finishes, so callers can write results as they go.
pub fn generate_stream<B: Backend, R: Prompt<B>>(
    b: &B,
    llm: &Llama<B>,
    requests: impl Iterator<Item = Result<R>>,
    opts: &DecodeOptions,
    stream: Stream,
    mut on_done: impl FnMut(usize, Generated) -> Result<()>,
) -> Result<()> {
    if stream.slots == 0 {
        return Err(Error::invalid("generation needs at least one slot"));
    }
    let limit = llm.config.max_position_embeddings;
    let mut cache = None;
    let mut pending = requests.enumerate().peekable();
    let mut active: Vec<Active<R>> = Vec::new();
    let mut free: Vec<usize> = (0..stream.slots).rev().collect();
    loop {
        // Admit requests into free slots.
        while let (Some(slot), Some(_)) = (free.last().copied(), pending.peek()) {
            let (index, request) = pending.next().expect("peeked");
            let request = request?;
            let n = request.prompt_ids().len();
            if n == 0 {
                return Err(Error::invalid("cannot generate from an empty prompt"));
            }
            if n + opts.max_new_tokens > stream.capacity {
                return Err(Error::invalid(format!(
                    "prompt of {n} tokens + {} new tokens exceeds the {} positions reserved per sequence",
                    opts.max_new_tokens, stream.capacity
                )));
            }
            if n + opts.max_new_tokens > limit {
                return Err(Error::invalid(format!(
                    "prompt of {n} tokens + {} new tokens exceeds the model's {limit} positions",
                    opts.max_new_tokens
                )));
            }
            if opts.max_new_tokens == 0 {
                on_done(
                    index,
                    Generated { token_ids: vec![], finish_reason: FinishReason::Length, first_logits: None },
                )?;
                continue;
            }
            free.pop();
            active.push(Active { index, slot, request, fresh: true, tokens: vec![], first_logits: None });
        }
        if active.is_empty() {
            return Ok(());
        }
        let cache = match &mut cache {
            Some(c) => c,
            None => cache.insert(llm.new_cache(b, stream.slots, stream.capacity)?),
        };

        // One packed forward: prompts of the fresh sequences, the last token of the others.
        let mut ids = Vec::new();
        let mut chunks = Vec::with_capacity(active.len());
        for a in &active {
            if a.fresh {
                ids.extend_from_slice(a.request.prompt_ids());
                chunks.push(SeqChunk { slot: a.slot, start: 0, len: a.request.prompt_ids().len() });
            } else {
                ids.push(*a.tokens.last().expect("decoding sequences have a token"));
                let start = a.request.prompt_ids().len() + a.tokens.len() - 1;
                chunks.push(SeqChunk { slot: a.slot, start, len: 1 });
            }
        }
        let mut embeds = llm.embed(b, &ids)?;
        let mut offset = 0;
        for (a, c) in active.iter().zip(&chunks) {
            if a.fresh {
                splice_image(b, &mut embeds, offset, a.request.prompt_ids(), a.request.image_features(), opts)?;
            }
            offset += c.len;
        }
        let hidden = llm.forward(b, embeds, &chunks, cache)?;
        let logits = llm.logits(b, &hidden)?;
        if stream.keep_first_logits && active.iter().any(|a| a.fresh) {
            let host = b.to_host(&logits)?;
            let vocab = b.dims(&logits).1;
            for (row, a) in active.iter_mut().enumerate().filter(|(_, a)| a.fresh) {
                a.first_logits = Some(host[row * vocab..(row + 1) * vocab].to_vec());
            }
        }
        let next = match opts.sampling {
            None => b.argmax(&logits)?,
            Some(p) => {
                let seeds: Vec<u64> = active.iter().map(|a| step_seed(a.request.seed(), a.tokens.len())).collect();
                b.sample(&logits, p, &seeds)?
            }
        };
        let mut still = Vec::with_capacity(active.len());
        for (mut a, tok) in active.into_iter().zip(next) {
            a.fresh = false;
            a.tokens.push(tok);
            let finish = if opts.eos_token_ids.contains(&tok) {
                Some(FinishReason::Eos)
            } else if a.tokens.len() == opts.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            match finish {
                Some(finish_reason) => {
                    free.push(a.slot);
                    on_done(a.index, Generated { token_ids: a.tokens, finish_reason, first_logits: a.first_logits })?;
                }
                None => still.push(a),
            }
        }
        active = still;
    }
}

/// Replaces the image-token rows of one prompt (starting at row `offset` of `embeds`) by the
/// rows of `features`, in order — LLaVA's splice.
fn splice_image<B: Backend>(
    b: &B,
    embeds: &mut B::Tensor,
    offset: usize,
    prompt_ids: &[u32],
    features: Option<&B::Tensor>,
    opts: &DecodeOptions,
) -> Result<()> {
    let rows: Vec<usize> =
        prompt_ids.iter().enumerate().filter(|(_, &t)| t == opts.image_token_id).map(|(i, _)| offset + i).collect();
    match features {
        Some(f) if b.dims(f).0 == rows.len() => b.scatter_rows(embeds, &rows, f),
        Some(f) => Err(Error::invalid(format!(
            "prompt has {} image slots but {} image features were given",
            rows.len(),
            b.dims(f).0
        ))),
        None if rows.is_empty() => Ok(()),
        None => Err(Error::invalid("prompt has image slots but no image")),
    }
}
