//! CLIP vision transformer, following transformers' `CLIPVisionTransformer` (modeling_clip.py):
//! embeddings → `pre_layrnorm` → encoder layers. `post_layernorm` is never read by LLaVA and is
//! not loaded. The capture hook records the hidden states of the requested layers and stops
//! after the deepest one.
use super::config::ClipVisionConfig;
use crate::backend::{Activation, AttentionShape, Backend};
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear};
use crate::weights::Weights;

/// `CLIPEncoderLayer`: pre-norm attention and MLP blocks with residuals.
struct EncoderLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    layer_norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// Hidden states captured in one vision pass: `layers[i]` is `hidden.{index[i]}` for all images,
/// packed as `[images * tokens, width]`.
pub struct VisionCapture<B: Backend> {
    pub index: Vec<usize>,
    pub layers: Vec<B::Tensor>,
    pub tokens_per_image: usize,
    pub images: usize,
    /// Encoder layers actually computed (the deepest requested one; never more).
    pub layers_run: usize,
}

impl<B: Backend> VisionCapture<B> {
    pub fn get(&self, layer: usize) -> Option<&B::Tensor> {
        self.index.iter().position(|&l| l == layer).map(|i| &self.layers[i])
    }
}

pub struct ClipVision<B: Backend> {
    pub config: ClipVisionConfig,
    patch_embedding: B::Tensor,
    class_embedding: B::Tensor,
    position_embedding: B::Tensor,
    pre_layrnorm: LayerNorm<B>,
    layers: Vec<EncoderLayer<B>>,
    act: Activation,
}

impl<B: Backend> ClipVision<B> {
    /// Loads the tower from `w` (prefixed so that `embeddings.patch_embedding.weight` resolves).
    /// Only the first `max_layers` encoder layers are loaded: early exit needs no deeper ones.
    pub fn load(w: &Weights<B>, config: &ClipVisionConfig, max_layers: usize) -> Result<Self> {
        let c = config;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let act = Activation::from_hf(&c.hidden_act)
            .ok_or_else(|| Error::invalid(format!("unsupported vision hidden_act `{}`", c.hidden_act)))?;
        if c.num_attention_heads == 0 || d % c.num_attention_heads != 0 || !c.image_size.is_multiple_of(c.patch_size) {
            return Err(Error::invalid(format!(
                "vision config: hidden_size {d} / heads {} or image_size {} / patch_size {} is not whole",
                c.num_attention_heads, c.image_size, c.patch_size
            )));
        }
        let emb = w.sub("embeddings");
        let p = c.patch_size;
        let mut layers = Vec::new();
        for i in 0..max_layers.min(c.num_hidden_layers) {
            let l = w.sub(format_args!("encoder.layers.{i}"));
            let a = l.sub("self_attn");
            layers.push(EncoderLayer {
                layer_norm1: LayerNorm::load(&l, "layer_norm1", d, c.layer_norm_eps)?,
                q_proj: Linear::load(&a, "q_proj", d, d, true)?,
                k_proj: Linear::load(&a, "k_proj", d, d, true)?,
                v_proj: Linear::load(&a, "v_proj", d, d, true)?,
                out_proj: Linear::load(&a, "out_proj", d, d, true)?,
                layer_norm2: LayerNorm::load(&l, "layer_norm2", d, c.layer_norm_eps)?,
                fc1: Linear::load(&l.sub("mlp"), "fc1", f, d, true)?,
                fc2: Linear::load(&l.sub("mlp"), "fc2", d, f, true)?,
            });
        }
        Ok(Self {
            patch_embedding: emb.get("patch_embedding.weight", &[d, c.num_channels, p, p])?,
            class_embedding: emb.get("class_embedding", &[d])?,
            position_embedding: emb.get("position_embedding.weight", &[c.num_positions(), d])?,
            pre_layrnorm: LayerNorm::load(w, "pre_layrnorm", d, c.layer_norm_eps)?,
            layers,
            act,
            config: config.clone(),
        })
    }

    pub fn loaded_layers(&self) -> usize {
        self.layers.len()
    }

    /// `CLIPVisionEmbeddings` + `pre_layrnorm` for a batch of images, each `[3*H, W]` (CHW).
    fn embed(&self, b: &B, images: &[B::Tensor]) -> Result<B::Tensor> {
        let c = &self.config;
        let t = c.num_positions();
        let mut x = b.from_host(&vec![0.0; images.len() * t * c.hidden_size], images.len() * t, c.hidden_size)?;
        for (i, img) in images.iter().enumerate() {
            let (rows, cols) = b.dims(img);
            if rows != c.num_channels * c.image_size || cols != c.image_size {
                return Err(Error::invalid(format!(
                    "pixel values are {}x{cols}, the vision tower expects {}x{}",
                    rows / c.num_channels.max(1),
                    c.image_size,
                    c.image_size
                )));
            }
            let patches = b.patch_embed(img, c.num_channels, c.patch_size, &self.patch_embedding)?;
            let base = i * t;
            b.scatter_rows(&mut x, &[base], &self.class_embedding)?;
            b.scatter_rows(&mut x, &(base + 1..base + t).collect::<Vec<_>>(), &patches)?;
        }
        let pos_rows: Vec<usize> = (0..images.len()).flat_map(|_| 0..t).collect();
        b.add_assign(&mut x, &b.gather_rows(&self.position_embedding, &pos_rows)?)?;
        self.pre_layrnorm.forward(b, &x)
    }

    fn layer_forward(&self, b: &B, layer: &EncoderLayer<B>, x: &mut B::Tensor, lens: &[usize]) -> Result<()> {
        let c = &self.config;
        let h = layer.layer_norm1.forward(b, x)?;
        let q = layer.q_proj.forward(b, &h)?;
        let k = layer.k_proj.forward(b, &h)?;
        let v = layer.v_proj.forward(b, &h)?;
        let shape = AttentionShape::new(c.num_attention_heads, c.num_attention_heads, c.head_dim());
        let a = b.attention(&q, &k, &v, lens, shape)?;
        let h = layer.layer_norm2.add_forward(b, x, &layer.out_proj.forward(b, &a)?)?;
        let mut h = layer.fc1.forward(b, &h)?;
        b.activation(&mut h, self.act)?;
        b.add_assign(x, &layer.fc2.forward(b, &h)?)
    }

    /// One vision pass over `images` that records `hidden.{l}` for every `l` in `layers`
    /// (transformers' indexing: 0 = embeddings after `pre_layrnorm`, l = output of layer l) and
    /// stops after the deepest requested layer.
    pub fn capture(&self, b: &B, images: &[B::Tensor], layers: &[usize]) -> Result<VisionCapture<B>> {
        let mut index: Vec<usize> = layers.to_vec();
        index.sort_unstable();
        index.dedup();
        let deepest = index.last().copied().unwrap_or(0);
        if deepest > self.layers.len() {
            return Err(Error::invalid(format!(
                "vision layer {deepest} requested, but only {} are loaded (the tower has {})",
                self.layers.len(),
                self.config.num_hidden_layers
            )));
        }
        let t = self.config.num_positions();
        let lens = vec![t; images.len()];
        let all_rows: Vec<usize> = (0..images.len() * t).collect();
        let mut x = self.embed(b, images)?;
        let mut captured = Vec::with_capacity(index.len());
        if index.first() == Some(&0) {
            captured.push(b.gather_rows(&x, &all_rows)?);
        }
        for (i, layer) in self.layers[..deepest].iter().enumerate() {
            self.layer_forward(b, layer, &mut x, &lens)?;
            if index.binary_search(&(i + 1)).is_ok() {
                captured.push(b.gather_rows(&x, &all_rows)?);
            }
        }
        Ok(VisionCapture { index, layers: captured, tokens_per_image: t, images: images.len(), layers_run: deepest })
    }
}
