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
    run_batch(b, &mut LlavaStream::new(llm, opts), requests, opts, keep_first_logits)
}

/// [`run_stream`] with a slot for every request (one packed prefill, then every unfinished
/// sequence decodes together); results in request order.
pub fn run_batch<'r, B: Backend, R, M: StreamModel<B, &'r R>>(
    b: &B,
    model: &mut M,
    requests: &'r [R],
    opts: &DecodeOptions,
    keep_first_logits: bool,
) -> Result<Vec<Generated>> {
    let mut out: Vec<Option<Generated>> = vec![None; requests.len()];
    if requests.is_empty() {
        return Ok(vec![]);
    }
    let longest = requests.iter().map(|r| model.prompt_ids(&r).len()).max().unwrap_or(0);
    let stream = Stream { slots: requests.len(), capacity: longest + opts.max_new_tokens, keep_first_logits };
    run_stream(b, model, requests.iter().map(Ok), opts, stream, |i, g| {
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

/// One sequence of a continuous-batching step, as a [`StreamModel`] sees it.
pub struct StreamSeq<'a, R> {
    /// Its KV-cache slot.
    pub slot: usize,
    pub request: &'a R,
    /// Prefilled in this step (its whole prompt is in the step); else it decodes its last token.
    pub fresh: bool,
    /// Tokens generated so far.
    pub tokens: &'a [u32],
}

/// What the continuous-batching scheduler ([`run_stream`]) needs of a model: the requests' prompts
/// and seeds, hooks when a request takes and leaves a slot, and one packed forward pass from the
/// step's sequences to their next-token logits (`[sequences, vocab]`, in the given order).
pub trait StreamModel<B: Backend, R> {
    fn prompt_ids<'r>(&self, request: &'r R) -> &'r [u32];
    fn seed(&self, request: &R) -> u64;
    /// The model's position limit.
    fn max_positions(&self) -> usize;
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache>;
    /// `request` takes `slot`; it is prefilled in the next step.
    fn admit(&mut self, _b: &B, _slot: usize, _request: &R) -> Result<()> {
        Ok(())
    }
    /// The sequence in `slot` finished.
    fn release(&mut self, _slot: usize) {}
    fn step(&mut self, b: &B, seqs: &[StreamSeq<R>], cache: &mut B::KvCache) -> Result<B::Tensor>;
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
/// Requests are drawn from the iterator only when a slot is free, so they can be made lazily.
pub fn run_stream<B: Backend, R, M: StreamModel<B, R>>(
    b: &B,
    model: &mut M,
    requests: impl Iterator<Item = Result<R>>,
    opts: &DecodeOptions,
    stream: Stream,
    mut on_done: impl FnMut(usize, Generated) -> Result<()>,
) -> Result<()> {
    if stream.slots == 0 {
        return Err(Error::invalid("generation needs at least one slot"));
    }
    let limit = model.max_positions();
    let mut cache = None;
    let mut pending = requests.enumerate().peekable();
    let mut active: Vec<Active<R>> = Vec::new();
    let mut free: Vec<usize> = (0..stream.slots).rev().collect();
    loop {
        // Admit requests into free slots.
        while let (Some(slot), Some(_)) = (free.last().copied(), pending.peek()) {
            let (index, request) = pending.next().expect("peeked");
            let request = request?;
            let n = model.prompt_ids(&request).len();
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
            model.admit(b, slot, &request)?;
            free.pop();
            active.push(Active { index, slot, request, fresh: true, tokens: vec![], first_logits: None });
        }
        if active.is_empty() {
            return Ok(());
        }
        let cache = match &mut cache {
            Some(c) => c,
            None => cache.insert(model.new_cache(b, stream.slots, stream.capacity)?),
        };

        // One packed forward: prompts of the fresh sequences, the last token of the others.
        let seqs: Vec<StreamSeq<R>> = active
            .iter()
            .map(|a| StreamSeq { slot: a.slot, request: &a.request, fresh: a.fresh, tokens: &a.tokens })
            .collect();
        let logits = model.step(b, &seqs, cache)?;
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
                let seeds: Vec<u64> =
                    active.iter().map(|a| step_seed(model.seed(&a.request), a.tokens.len())).collect();
                b.sample(&logits, p, &seeds)?
            }
        };
        if next.len() != active.len() {
            return Err(Error::invalid(format!("{} tokens chosen for {} sequences", next.len(), active.len())));
        }
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
                    model.release(a.slot);
                    on_done(a.index, Generated { token_ids: a.tokens, finish_reason, first_logits: a.first_logits })?;
                }
                None => still.push(a),
            }
        }
        active = still;
    }
}

/// The Llama language model of LLaVA under [`run_stream`]: image-token rows of a fresh prompt's
/// embeddings are replaced by its image features.
pub struct LlavaStream<'a, B: Backend> {
    llm: &'a Llama<B>,
    opts: &'a DecodeOptions,
}

impl<'a, B: Backend> LlavaStream<'a, B> {
    pub fn new(llm: &'a Llama<B>, opts: &'a DecodeOptions) -> Self {
        Self { llm, opts }
    }
}

impl<B: Backend, R: Prompt<B>> StreamModel<B, R> for LlavaStream<'_, B> {
    fn prompt_ids<'r>(&self, request: &'r R) -> &'r [u32] {
        request.prompt_ids()
    }
    fn seed(&self, request: &R) -> u64 {
        request.seed()
    }
    fn max_positions(&self) -> usize {
        self.llm.config.max_position_embeddings
    }
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        self.llm.new_cache(b, slots, capacity)
    }
    fn step(&mut self, b: &B, seqs: &[StreamSeq<R>], cache: &mut B::KvCache) -> Result<B::Tensor> {
        let (ids, chunks) = step_chunks(seqs, |r| r.prompt_ids());
        let mut embeds = self.llm.embed(b, &ids)?;
        let mut offset = 0;
        for (s, c) in seqs.iter().zip(&chunks) {
            if s.fresh {
                splice_image(b, &mut embeds, offset, s.request.prompt_ids(), s.request.image_features(), self.opts)?;
            }
            offset += c.len;
        }
        let hidden = self.llm.forward(b, embeds, &chunks, cache)?;
        self.llm.logits(b, &hidden)
    }
}

/// The ids and KV-cache chunks of one step: the whole prompt of a fresh sequence, the last
/// generated token of the others (at the position after everything before it).
pub fn step_chunks<R>(seqs: &[StreamSeq<R>], prompt_ids: impl Fn(&R) -> &[u32]) -> (Vec<u32>, Vec<SeqChunk>) {
    let mut ids = Vec::new();
    let mut chunks = Vec::with_capacity(seqs.len());
    for s in seqs {
        let prompt = prompt_ids(s.request);
        if s.fresh {
            ids.extend_from_slice(prompt);
            chunks.push(SeqChunk { slot: s.slot, start: 0, len: prompt.len() });
        } else {
            ids.push(*s.tokens.last().expect("decoding sequences have a token"));
            chunks.push(SeqChunk { slot: s.slot, start: prompt.len() + s.tokens.len() - 1, len: 1 });
        }
    }
    (ids, chunks)
}

/// [`run_stream`] on LLaVA's language model (see [`Request`] for the image splice).
pub fn generate_stream<B: Backend, R: Prompt<B>>(
    b: &B,
    llm: &Llama<B>,
    requests: impl Iterator<Item = Result<R>>,
    opts: &DecodeOptions,
    stream: Stream,
    on_done: impl FnMut(usize, Generated) -> Result<()>,
) -> Result<()> {
    run_stream(b, &mut LlavaStream::new(llm, opts), requests, opts, stream, on_done)
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
