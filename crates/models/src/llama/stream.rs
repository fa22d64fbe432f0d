//! The Llama language model alone under the scheduler: text in, text out (Llama Guard's path).
use super::text::Llama;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generation::{step_chunks, Request, StreamModel, StreamSeq};

/// [`Llama`] as a [`StreamModel`] for text-only requests.
pub struct TextStream<'a, B: Backend> {
    llm: &'a Llama<B>,
}

impl<'a, B: Backend> TextStream<'a, B> {
    pub fn new(llm: &'a Llama<B>) -> Self {
        Self { llm }
    }
}

impl<B: Backend> StreamModel<B> for TextStream<'_, B> {
    fn max_positions(&self) -> usize {
        self.llm.config.max_position_embeddings
    }
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        self.llm.new_cache(b, slots, capacity)
    }
    fn admit(&mut self, _b: &B, _slot: usize, request: &Request<B>) -> Result<()> {
        if request.features.is_some() {
            return Err(Error::invalid("a text-only language model was given image features"));
        }
        Ok(())
    }
    fn step(&mut self, b: &B, seqs: &[StreamSeq<B>], cache: &mut B::KvCache) -> Result<B::Tensor> {
        let (ids, chunks) = step_chunks(seqs);
        let hidden = self.llm.forward(b, self.llm.embed(b, &ids)?, &chunks, cache)?;
        self.llm.logits(b, &hidden)
    }
}
