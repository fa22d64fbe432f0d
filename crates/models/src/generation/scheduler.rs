//! Continuous batching: sequences in flight decode one token per step together, and a finished
//! sequence's slot is refilled at once by the next request, whose prompt is prefilled in the same
//! packed forward pass. One scheduler for every model: each brings a [`StreamModel`].
use super::{step_seed, DecodeOptions, FinishReason, Generated, Request};
use crate::backend::{Backend, SeqChunk};
use crate::error::{Error, Result};

/// [`run_stream`] with a slot for every request (one packed prefill, then every unfinished
/// sequence decodes together); results in request order.
pub fn run_batch<B: Backend, M: StreamModel<B> + ?Sized>(
    b: &B,
    model: &mut M,
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
    run_stream(b, model, requests.iter().cloned().map(Ok), opts, stream, |i, g| {
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
pub struct StreamSeq<'a, B: Backend> {
    /// Its KV-cache slot.
    pub slot: usize,
    pub request: &'a Request<B>,
    /// Prefilled in this step (its whole prompt is in the step); else it decodes its last token.
    pub fresh: bool,
    /// Tokens generated so far.
    pub tokens: &'a [u32],
}

/// What the continuous-batching scheduler ([`run_stream`]) needs of a model: hooks when a request
/// takes and leaves a slot, and one packed forward pass from the step's sequences to their
/// next-token logits (`[sequences, vocab]`, in the given order). A fresh sequence's image
/// features are the model's to place (LLaVA splices them over its image tokens, Llama 3.2 Vision
/// reads them by cross-attention).
pub trait StreamModel<B: Backend> {
    /// The model's position limit.
    fn max_positions(&self) -> usize;
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache>;
    /// `request` takes `slot`; it is prefilled in the next step.
    fn admit(&mut self, _b: &B, _slot: usize, _request: &Request<B>) -> Result<()> {
        Ok(())
    }
    /// The sequence in `slot` finished.
    fn release(&mut self, _slot: usize) {}
    fn step(&mut self, b: &B, seqs: &[StreamSeq<B>], cache: &mut B::KvCache) -> Result<B::Tensor>;
}

struct Active<B: Backend> {
    index: usize,
    slot: usize,
    request: Request<B>,
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
///
/// Never a silent wrong answer: logits holding NaN or infinity are
/// [`Error::NonFiniteLogits`] naming the request and the new token (argmax and sampling would
/// otherwise pick some token from garbage), and a stop asked for through [`super::interrupt`]
/// ends the run before its next step with [`Error::Interrupted`], dropping the sequences in
/// flight (their callers never see a partial answer).
pub fn run_stream<B: Backend, M: StreamModel<B> + ?Sized>(
    b: &B,
    model: &mut M,
    requests: impl Iterator<Item = Result<Request<B>>>,
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
    let mut active: Vec<Active<B>> = Vec::new();
    let mut free: Vec<usize> = (0..stream.slots).rev().collect();
    let mut ones = None;
    loop {
        if super::interrupt::requested() {
            return Err(Error::Interrupted);
        }
        // Admit requests into free slots.
        while let (Some(slot), Some(_)) = (free.last().copied(), pending.peek()) {
            let (index, request) = pending.next().expect("peeked");
            let request = request?;
            let n = request.prompt_ids.len();
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
        let seqs: Vec<StreamSeq<B>> = active
            .iter()
            .map(|a| StreamSeq { slot: a.slot, request: &a.request, fresh: a.fresh, tokens: &a.tokens })
            .collect();
        let logits = model.step(b, &seqs, cache)?;
        if let Some(row) = first_non_finite_row(b, &logits, &mut ones)? {
            let a = &active[row];
            return Err(Error::NonFiniteLogits { request: a.index, token: a.tokens.len() + 1 });
        }
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
                let seeds: Vec<u64> = active.iter().map(|a| step_seed(a.request.seed, a.tokens.len())).collect();
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

/// The first row of `logits` (`[sequences, vocab]`) holding NaN or infinity, if any. Each row is
/// summed on the device by one product with a ones vector (`ones`, made at the first call): NaN
/// and infinity survive a sum, and finite logits cannot overflow one, so only `sequences` numbers
/// come back to the host.
fn first_non_finite_row<B: Backend>(b: &B, logits: &B::Tensor, ones: &mut Option<B::Tensor>) -> Result<Option<usize>> {
    let vocab = b.dims(logits).1;
    let ones = match ones {
        Some(o) if b.dims(o).1 == vocab => o,
        _ => ones.insert(b.from_host(&vec![1.0; vocab], 1, vocab)?),
    };
    let sums = b.to_host(&b.linear(logits, ones, None)?)?;
    Ok(sums.iter().position(|s| !s.is_finite()))
}

/// The ids and KV-cache chunks of one step: the whole prompt of a fresh sequence, the last
/// generated token of the others (at the position after everything before it).
pub fn step_chunks<B: Backend>(seqs: &[StreamSeq<B>]) -> (Vec<u32>, Vec<SeqChunk>) {
    let mut ids = Vec::new();
    let mut chunks = Vec::with_capacity(seqs.len());
    for s in seqs {
        let prompt = &s.request.prompt_ids;
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
