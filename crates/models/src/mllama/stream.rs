//! Mllama's text model under the scheduler: each request's image features (the projected
//! cross-attention states of its image and layer) are read by the cross-attention layers, their
//! keys/values computed once per image and layer and shared by every sequence in flight that
//! reads them.
use std::sync::Arc;

use super::text::{CrossKv, CrossRows, MllamaText};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generation::{step_chunks, ImageFeatures, Request, StreamModel, StreamSeq};

/// Where `<|image|>` is in a prompt (0 for a text-only one): exactly one with an image, none without.
fn image_position(prompt_ids: &[u32], image_token_id: u32, with_image: bool) -> Result<usize> {
    let found: Vec<usize> =
        prompt_ids.iter().enumerate().filter(|(_, &t)| t == image_token_id).map(|(i, _)| i).collect();
    match (with_image, found.len()) {
        (false, 0) => Ok(0),
        (true, 1) => Ok(found[0]),
        (false, n) => Err(Error::invalid(format!("a text-only prompt has {n} <|image|> tokens"))),
        (true, n) => Err(Error::invalid(format!("the prompt has {n} <|image|> tokens; exactly one is supported"))),
    }
}

/// A pool region in use: the features whose keys/values it holds (kept alive by the region, so
/// identity by `Arc` is sound) and how many slots read it.
struct Region<B: Backend> {
    features: Arc<ImageFeatures<B>>,
    readers: usize,
}

/// Mllama's text model under [`crate::generation::run_stream`]. Cross-attention keys/values
/// live in a pool of regions (grown on demand, at most one per slot); sequences reading the same
/// features (the same `Arc`: same image and layer) share a region, and a region is rewritten only
/// when its last reader has finished. Without features every sequence is text-only and the
/// cross-attention layers are skipped, as in transformers; a run is all text-only or all with
/// images.
pub struct MllamaStream<'a, B: Backend> {
    text: &'a MllamaText<B>,
    image_token_id: u32,
    slots: usize,
    /// Fixed by the first request admitted.
    with_images: Option<bool>,
    kv: Option<CrossKv<B>>,
    regions: Vec<Option<Region<B>>>,
    /// Per slot: its region and where its `<|image|>` is.
    slot_region: Vec<usize>,
    image_pos: Vec<usize>,
}

impl<'a, B: Backend> MllamaStream<'a, B> {
    /// `text` with `slots` sequences in flight; `image_token_id` is `<|image|>`.
    pub fn new(text: &'a MllamaText<B>, image_token_id: u32, slots: usize) -> Self {
        MllamaStream {
            text,
            image_token_id,
            slots,
            with_images: None,
            kv: None,
            regions: vec![],
            slot_region: vec![0; slots],
            image_pos: vec![0; slots],
        }
    }

    /// The region holding `features`, written now if no region holds them yet.
    fn region_for(&mut self, b: &B, features: &Arc<ImageFeatures<B>>) -> Result<usize> {
        let shared = self.regions.iter().position(|g| g.as_ref().is_some_and(|g| Arc::ptr_eq(&g.features, features)));
        if let Some(i) = shared {
            return Ok(i);
        }
        if self.kv.is_none() {
            // Every image's states have the same padded shape: size the regions by the first.
            // Sequences in flight mostly share states (a sweep goes layer-major per image), so
            // the pool starts with two regions and doubles when it must (at most one a slot).
            let regions = self.slots.min(2);
            self.kv = Some(self.text.cross_kv_pool(b, regions, b.dims(&features.rows).0)?);
            self.regions = (0..regions).map(|_| None).collect();
        }
        let kv = self.kv.as_mut().expect("made above");
        if self.regions.iter().all(Option::is_some) {
            let regions = (self.regions.len() * 2).min(self.slots);
            self.text.grow_pool(b, kv, regions)?;
            self.regions.resize_with(regions, || None);
        }
        let i = self.regions.iter().position(Option::is_none).expect("at most one region per slot in use");
        self.text.write_region(b, kv, i, &features.rows, features.real_rows)?;
        self.regions[i] = Some(Region { features: features.clone(), readers: 0 });
        Ok(i)
    }
}

impl<B: Backend> StreamModel<B> for MllamaStream<'_, B> {
    fn max_positions(&self) -> usize {
        self.text.config.llama.max_position_embeddings
    }
    fn new_cache(&self, b: &B, slots: usize, capacity: usize) -> Result<B::KvCache> {
        self.text.new_cache(b, slots, capacity)
    }
    fn admit(&mut self, b: &B, slot: usize, r: &Request<B>) -> Result<()> {
        let with_image = r.features.is_some();
        if *self.with_images.get_or_insert(with_image) != with_image {
            return Err(Error::invalid("a batch must be all text-only or all with an image"));
        }
        self.image_pos[slot] = image_position(&r.prompt_ids, self.image_token_id, with_image)?;
        if let Some(features) = &r.features {
            let region = self.region_for(b, features)?;
            self.regions[region].as_mut().expect("in use").readers += 1;
            self.slot_region[slot] = region;
        }
        Ok(())
    }
    fn release(&mut self, slot: usize) {
        if self.with_images != Some(true) {
            return;
        }
        let region = &mut self.regions[self.slot_region[slot]];
        if let Some(g) = region.as_mut() {
            g.readers -= 1;
            if g.readers == 0 {
                *region = None;
            }
        }
    }
    fn step(&mut self, b: &B, seqs: &[StreamSeq<B>], cache: &mut B::KvCache) -> Result<B::Tensor> {
        let (ids, chunks) = step_chunks(seqs);
        // A fresh prompt's text before `<|image|>` reads every row; generated tokens come after it.
        let cross: Vec<CrossRows> = seqs
            .iter()
            .map(|s| CrossRows {
                image: self.slot_region[s.slot],
                masked: if s.fresh { self.image_pos[s.slot] } else { 0 },
            })
            .collect();
        let hidden = self.text.forward(b, self.text.embed(b, &ids)?, &chunks, &cross, self.kv.as_ref(), cache)?;
        self.text.logits(b, &hidden)
    }
}
