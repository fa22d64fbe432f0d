//! LLaVA's language model under the scheduler: the image-token rows of a fresh prompt's
//! embeddings are replaced, in order, by its image features (`LlavaForConditionalGeneration`'s
//! `masked_scatter` of the image features into `inputs_embeds`).
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generation::{step_chunks, ImageFeatures, StreamModel, StreamSeq};
use crate::llama::Llama;

/// [`Llama`] with LLaVA's splice, as a [`StreamModel`].
pub struct LlavaStream<'a, B: Backend> {
    llm: &'a Llama<B>,
    image_token_id: u32,
}

impl<'a, B: Backend> LlavaStream<'a, B> {
    pub fn new(llm: &'a Llama<B>, image_token_id: u32) -> Self {
        Self { llm, image_token_id }
    }
}

impl<B: Backend> StreamModel<B> for LlavaStream<'_, B> {
    fn max_positions(&self) -> usize {
        self.llm.config.max_position_embeddings
    }
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        self.llm.new_cache(b, slots, capacity)
    }
    fn step(&mut self, b: &B, seqs: &[StreamSeq<B>], cache: &mut B::KvCache) -> Result<B::Tensor> {
        let (ids, chunks) = step_chunks(seqs);
        let mut embeds = self.llm.embed(b, &ids)?;
        let mut offset = 0;
        for (s, c) in seqs.iter().zip(&chunks) {
            if s.fresh {
                let features = s.request.features.as_deref();
                splice_image(b, &mut embeds, offset, &s.request.prompt_ids, features, self.image_token_id)?;
            }
            offset += c.len;
        }
        let hidden = self.llm.forward(b, embeds, &chunks, cache)?;
        self.llm.logits(b, &hidden)
    }
}

/// Replaces the image-token rows of one prompt (starting at row `offset` of `embeds`) by the
/// rows of `features`, in order.
fn splice_image<B: Backend>(
    b: &B,
    embeds: &mut B::Tensor,
    offset: usize,
    prompt_ids: &[u32],
    features: Option<&ImageFeatures<B>>,
    image_token_id: u32,
) -> Result<()> {
    let rows: Vec<usize> =
        prompt_ids.iter().enumerate().filter(|(_, &t)| t == image_token_id).map(|(i, _)| offset + i).collect();
    match features {
        Some(f) if b.dims(&f.rows).0 == rows.len() => b.scatter_rows(embeds, &rows, &f.rows),
        Some(f) => Err(Error::invalid(format!(
            "prompt has {} image slots but {} image features were given",
            rows.len(),
            b.dims(&f.rows).0
        ))),
        None if rows.is_empty() => Ok(()),
        None => Err(Error::invalid("prompt has image slots but no image")),
    }
}
