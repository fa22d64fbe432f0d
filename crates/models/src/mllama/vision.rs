//! The Mllama vision encoder, following transformers' `MllamaVisionModel.forward`
//! (modeling_mllama.py), with image-encoder early exit.
//!
//! Per image (one at a time; all `max_num_tiles` tiles, padded ones included, as transformers):
//! patch embedding per tile → `pre_tile_positional_embedding` (gated, by aspect ratio) → class
//! token → `gated_positional_embedding` → `layernorm_pre` → padding of the token axis to a
//! multiple of 8 → the local encoder (all tiles in one sequence) → `layernorm_post` →
//! `post_tile_positional_embedding` → the gated global encoder → un-padding → final output ‖
//! interleaved taps of local layers.
//!
//! **Tap semantics.** Meta's reference encoder (llama-models) records tap `i` as the *input* of
//! block `i`, i.e. the output after `i` local layers, `hidden.0` being the encoder input (after
//! `layernorm_pre` and padding). transformers 5.24's `MllamaVisionEncoder` records only the
//! outputs, so its `intermediate_layers_indices` read one layer deeper (a regression of
//! transformers PR #40083). The model was trained with Meta's code, so [`LocalPass::hidden`] and
//! every tap read here follow Meta: `hidden[i]` = output after `i` layers. The fixtures patch
//! transformers the same way before recording references.
//!
//! **Attention mask.** `_prepare_aspect_ratio_attention_mask` blocks exactly the pairs in which
//! *both* tokens are padding (padded token positions of every tile, and every token of a padded
//! tile): real tokens see everything, padding tokens see only real tokens. A blocked key gets
//! `finfo.min` added to its score, i.e. weight exactly 0, so this equals attention over the
//! allowed keys only, which [`Backend::attention_kv`] computes from gathered rows.
//! (transformers' mask would mask everything if no padding were needed — `[:, :, -0:]` selects the
//! whole axis — but that cannot happen: a tile has `g² + 1` tokens and `g² mod 8` is 0, 1 or 4, so
//! there are always 1 to 7 padded tokens.)
use super::config::MllamaVisionConfig;
use crate::backend::{Activation, AttentionShape, Backend};
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear};
use crate::weights::Weights;

/// How ICET-l fills the projector's input (global slot ‖ taps) when the encoder exits at local
/// layer `l`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRule {
    /// The encoder stops after local layer `l`: the global stage runs on layer `l`'s output
    /// (after `layernorm_post` and the post-tile embedding), taps with index > `l` read layer `l`,
    /// taps ≤ `l` are unchanged. `l` = the last layer is the stock model.
    Clamp,
    /// The stock model, with the final (global) slot replaced by local layer `l`'s output.
    ReplaceFinal,
    /// Every slot of the concatenation is local layer `l`'s output.
    AllSlots,
}

impl ExitRule {
    pub const NAMES: [&'static str; 3] = ["clamp", "replace-final", "all-slots"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "clamp" => Ok(Self::Clamp),
            "replace-final" => Ok(Self::ReplaceFinal),
            "all-slots" => Ok(Self::AllSlots),
            _ => Err(Error::invalid(format!("unknown exit rule `{s}` (one of: {})", Self::NAMES.join(", ")))),
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// `MllamaVisionEncoderLayer`; in the global encoder the `tanh` gates are folded into `o_proj`
/// and `fc2` at load time (`gate * (W x + b)` = `(gate W) x + gate b`).
struct EncoderLayer<B: Backend> {
    input_layernorm: LayerNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    post_attention_layernorm: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// Which rows of the padded `[max_tiles * padded_tokens, width]` layout are real, and the row
/// orders that turn the padding mask into two unmasked [`Backend::attention_kv`] segments.
#[derive(Clone, Debug)]
pub struct TileLayout {
    pub max_tiles: usize,
    pub num_tiles: usize,
    pub aspect_ratio_id: usize,
    /// Tokens per tile (patches + class token).
    pub tokens: usize,
    /// Tokens per tile after padding to a multiple of 8.
    pub padded: usize,
    /// Queries in attention order: real rows, then padding rows.
    query_order: Vec<usize>,
    /// Position of padded-layout row `r` in `query_order`.
    query_inverse: Vec<usize>,
    /// Keys: every row (seen by real queries), then the real rows (seen by padding queries).
    key_order: Vec<usize>,
    n_real: usize,
}

impl TileLayout {
    fn new(max_tiles: usize, num_tiles: usize, aspect_ratio_id: usize, tokens: usize, padded: usize) -> Self {
        let total = max_tiles * padded;
        let is_real = |r: usize| r / padded < num_tiles && r % padded < tokens;
        let real: Vec<usize> = (0..total).filter(|&r| is_real(r)).collect();
        let pad: Vec<usize> = (0..total).filter(|&r| !is_real(r)).collect();
        let query_order: Vec<usize> = real.iter().chain(&pad).copied().collect();
        let mut query_inverse = vec![0; total];
        for (i, &r) in query_order.iter().enumerate() {
            query_inverse[r] = i;
        }
        let key_order: Vec<usize> = (0..total).chain(real.iter().copied()).collect();
        Self {
            max_tiles,
            num_tiles,
            aspect_ratio_id,
            tokens,
            padded,
            query_order,
            query_inverse,
            key_order,
            n_real: real.len(),
        }
    }

    pub fn rows(&self) -> usize {
        self.max_tiles * self.padded
    }

    /// Rows of the padded layout that survive un-padding (every tile's first `tokens` rows).
    pub fn unpadded_rows(&self) -> Vec<usize> {
        (0..self.max_tiles).flat_map(|t| t * self.padded..t * self.padded + self.tokens).collect()
    }
}

/// The local encoder's hidden states for one image, in the padded layout, for the layers an exit
/// rule may read.
pub struct LocalPass<B: Backend> {
    /// `hidden[i]`: output after `i` local layers (Meta's tap semantics), where kept.
    pub hidden: Vec<Option<B::Tensor>>,
    pub layers_run: usize,
    pub layout: TileLayout,
}

impl<B: Backend> LocalPass<B> {
    pub fn get(&self, layer: usize) -> Result<&B::Tensor> {
        self.hidden
            .get(layer)
            .and_then(|h| h.as_ref())
            .ok_or_else(|| Error::invalid(format!("local vision layer {layer} was not kept by this pass")))
    }
}

/// The two parts of the projector's input for one image, un-padded, each
/// `[max_tiles * tokens, width]`: the final (global) slot and the taps in config order.
pub struct ExitFeatures<B: Backend> {
    pub final_slot: B::Tensor,
    pub taps: Vec<B::Tensor>,
}

/// A gated aspect-ratio table (`MllamaPrecomputedAspectRatioEmbedding`) kept on the host:
/// rows are aspect-ratio ids, each `max_tiles * width` wide.
struct AspectRatioEmbedding {
    table: Vec<f32>,
    gate_tanh: f32,
}

pub struct MllamaVision<B: Backend> {
    pub config: MllamaVisionConfig,
    patch_embedding: B::Tensor,
    class_embedding: B::Tensor,
    pre_tile: AspectRatioEmbedding,
    post_tile: AspectRatioEmbedding,
    /// `gated_positional_embedding.embedding` `[tokens, width]` and its tile table
    /// `[ids, max_tiles * tokens * width]`, with `tanh(gate)`.
    position: Vec<f32>,
    tile_position: Vec<f32>,
    position_gate_tanh: f32,
    layernorm_pre: LayerNorm<B>,
    layernorm_post: LayerNorm<B>,
    layers: Vec<EncoderLayer<B>>,
    global_layers: Vec<EncoderLayer<B>>,
    act: Activation,
}

fn host(w: &Weights<impl Backend>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    w.checkpoint.load_f32(&w.full_name(name), shape)
}

/// `nn.Linear` loaded with its weight (and bias) multiplied by `scale` (a folded gate).
fn linear_scaled<B: Backend>(
    w: &Weights<B>,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
    scale: f32,
) -> Result<Linear<B>> {
    let l = w.sub(name);
    let weight: Vec<f32> = host(&l, "weight", &[out, inp])?.iter().map(|x| x * scale).collect();
    let bias = if bias {
        let b: Vec<f32> = host(&l, "bias", &[out])?.iter().map(|x| x * scale).collect();
        Some(w.backend.from_host(&b, 1, out)?)
    } else {
        None
    };
    Linear::new(w.backend, w.backend.from_host(&weight, out, inp)?, bias)
}

fn gate_tanh(w: &Weights<impl Backend>, name: &str) -> Result<f32> {
    Ok(host(w, name, &[1])?[0].tanh())
}

impl<B: Backend> MllamaVision<B> {
    /// Loads the encoder from `w` (prefixed so that `patch_embedding.weight` resolves); only local
    /// layers `1..=max_local_layers` are loaded.
    pub fn load(w: &Weights<B>, config: &MllamaVisionConfig, max_local_layers: usize) -> Result<Self> {
        let c = config;
        c.validate()?;
        let act = Activation::from_hf(&c.hidden_act)
            .ok_or_else(|| Error::invalid(format!("unsupported vision hidden_act `{}`", c.hidden_act)))?;
        let (d, f, p) = (c.hidden_size, c.intermediate_size, c.patch_size);
        let (t, tiles, ids) = (c.tokens_per_tile(), c.max_num_tiles, c.max_aspect_ratio_id() + 1);
        let layer = |l: &Weights<B>, gated: bool| -> Result<EncoderLayer<B>> {
            let (ga, gf) = if gated { (gate_tanh(l, "gate_attn")?, gate_tanh(l, "gate_ffn")?) } else { (1.0, 1.0) };
            let a = l.sub("self_attn");
            let m = l.sub("mlp");
            Ok(EncoderLayer {
                input_layernorm: LayerNorm::load(l, "input_layernorm", d, c.norm_eps)?,
                q_proj: Linear::load(&a, "q_proj", d, d, false)?,
                k_proj: Linear::load(&a, "k_proj", d, d, false)?,
                v_proj: Linear::load(&a, "v_proj", d, d, false)?,
                o_proj: if gated {
                    linear_scaled(&a, "o_proj", d, d, false, ga)?
                } else {
                    Linear::load(&a, "o_proj", d, d, false)?
                },
                post_attention_layernorm: LayerNorm::load(l, "post_attention_layernorm", d, c.norm_eps)?,
                fc1: Linear::load(&m, "fc1", f, d, true)?,
                fc2: if gated {
                    linear_scaled(&m, "fc2", d, f, true, gf)?
                } else {
                    Linear::load(&m, "fc2", d, f, true)?
                },
            })
        };
        let mut layers = Vec::new();
        for i in 0..max_local_layers.min(c.num_hidden_layers) {
            layers.push(layer(&w.sub(format_args!("transformer.layers.{i}")), false)?);
        }
        let mut global_layers = Vec::new();
        for i in 0..c.num_global_layers {
            global_layers.push(layer(&w.sub(format_args!("global_transformer.layers.{i}")), true)?);
        }
        let aspect = |name: &str| -> Result<AspectRatioEmbedding> {
            let e = w.sub(name);
            Ok(AspectRatioEmbedding {
                table: host(&e, "embedding.weight", &[ids, tiles * d])?,
                gate_tanh: gate_tanh(&e, "gate")?,
            })
        };
        let gpe = w.sub("gated_positional_embedding");
        // nn.LayerNorm(hidden_size) default eps for layernorm_pre/post (not norm_eps).
        Ok(Self {
            patch_embedding: w.get("patch_embedding.weight", &[d, c.num_channels, p, p])?,
            class_embedding: w.get("class_embedding", &[d])?,
            pre_tile: aspect("pre_tile_positional_embedding")?,
            post_tile: aspect("post_tile_positional_embedding")?,
            position: host(&gpe, "embedding", &[t, d])?,
            tile_position: host(&gpe, "tile_embedding.weight", &[ids, tiles * t * d])?,
            position_gate_tanh: gate_tanh(&gpe, "gate")?,
            layernorm_pre: LayerNorm::load(w, "layernorm_pre", d, 1e-5)?,
            layernorm_post: LayerNorm::load(w, "layernorm_post", d, 1e-5)?,
            layers,
            global_layers,
            act,
            config: config.clone(),
        })
    }

    pub fn loaded_layers(&self) -> usize {
        self.layers.len()
    }

    /// Local layers a local pass must run and keep so that [`Self::exit_features`] can serve
    /// every `(layer, rule)` in `exits`, plus `extra` layers (e.g. requested hidden states).
    pub fn layers_needed(&self, exits: &[(usize, ExitRule)], extra: &[usize]) -> Vec<usize> {
        let taps = &self.config.intermediate_layers_indices;
        let mut keep: Vec<usize> = extra.to_vec();
        for &(l, rule) in exits {
            keep.push(l);
            match rule {
                ExitRule::Clamp => keep.extend(taps.iter().map(|&i| i.min(l))),
                ExitRule::ReplaceFinal => keep.extend(taps.iter().copied()),
                ExitRule::AllSlots => {}
            }
        }
        keep.sort_unstable();
        keep.dedup();
        keep
    }

    fn attention(&self, b: &B, layer: &EncoderLayer<B>, h: &B::Tensor, lay: &TileLayout) -> Result<B::Tensor> {
        let c = &self.config;
        let shape = AttentionShape::new(c.attention_heads, c.attention_heads, c.head_dim());
        let q = layer.q_proj.forward(b, h)?;
        let k = layer.k_proj.forward(b, h)?;
        let v = layer.v_proj.forward(b, h)?;
        let total = lay.rows();
        if lay.n_real == total {
            return b.attention(&q, &k, &v, &[total], shape);
        }
        let qg = b.gather_rows(&q, &lay.query_order)?;
        let kg = b.gather_rows(&k, &lay.key_order)?;
        let vg = b.gather_rows(&v, &lay.key_order)?;
        let n_pad = total - lay.n_real;
        let out = b.attention_kv(&qg, &kg, &vg, &[lay.n_real, n_pad], &[total, lay.n_real], shape)?;
        b.gather_rows(&out, &lay.query_inverse)
    }

    /// `MllamaVisionEncoderLayer.forward` in place on `x`.
    fn layer_forward(&self, b: &B, layer: &EncoderLayer<B>, x: &mut B::Tensor, lay: &TileLayout) -> Result<()> {
        let h = layer.input_layernorm.forward(b, x)?;
        let a = self.attention(b, layer, &h, lay)?;
        let h = layer.post_attention_layernorm.add_forward(b, x, &layer.o_proj.forward(b, &a)?)?;
        let mut h = layer.fc1.forward(b, &h)?;
        b.activation(&mut h, self.act)?;
        b.add_assign(x, &layer.fc2.forward(b, &h)?)
    }

    /// Embeddings through `layernorm_pre` and padding: the encoder input `hidden.0`, padded layout.
    fn embed(&self, b: &B, px: &super::TiledPixels) -> Result<(B::Tensor, TileLayout)> {
        let c = &self.config;
        let (d, t, tiles) = (c.hidden_size, c.tokens_per_tile(), c.max_num_tiles);
        if px.max_tiles != tiles || px.tile_size != c.image_size {
            return Err(Error::invalid(format!(
                "pixel values are {} tiles of {}px, the vision encoder expects {tiles} tiles of {}px",
                px.max_tiles, px.tile_size, c.image_size
            )));
        }
        let ar = px.aspect_ratio_id;
        if ar == 0 || ar > c.max_aspect_ratio_id() {
            return Err(Error::invalid(format!("aspect_ratio_id {ar} is outside 1..={}", c.max_aspect_ratio_id())));
        }
        let lay = TileLayout::new(tiles, px.num_tiles, ar, t, c.padded_tokens_per_tile());
        let mut x = b.from_host(&vec![0.0; tiles * t * d], tiles * t, d)?;
        for tile in 0..tiles {
            let img = b.from_host(px.tile(tile), c.num_channels * c.image_size, c.image_size)?;
            let patches = b.patch_embed(&img, c.num_channels, c.patch_size, &self.patch_embedding)?;
            b.scatter_rows(&mut x, &[tile * t], &self.class_embedding)?;
            b.scatter_rows(&mut x, &(tile * t + 1..(tile + 1) * t).collect::<Vec<_>>(), &patches)?;
        }
        // Host-side additive terms, each computed in f32 as transformers does, added in its order:
        // pre-tile (patch rows only: it is added before the class token is prepended), then the
        // gated position embedding `(1 - tanh g) E`, then `tanh(g) * tile_embedding[ar]`.
        let mut pre = vec![0f32; tiles * t * d];
        let mut pos = vec![0f32; tiles * t * d];
        let mut tile_pos = vec![0f32; tiles * t * d];
        let pre_row = &self.pre_tile.table[ar * tiles * d..(ar + 1) * tiles * d];
        let tile_row = &self.tile_position[ar * tiles * t * d..(ar + 1) * tiles * t * d];
        let one_minus = 1.0 - self.position_gate_tanh;
        for tile in 0..tiles {
            for j in 0..t {
                let r = (tile * t + j) * d;
                for k in 0..d {
                    if j > 0 {
                        pre[r + k] = pre_row[tile * d + k] * self.pre_tile.gate_tanh;
                    }
                    pos[r + k] = one_minus * self.position[j * d + k];
                    tile_pos[r + k] = self.position_gate_tanh * tile_row[r + k];
                }
            }
        }
        for term in [pre, pos, tile_pos] {
            b.add_assign(&mut x, &b.from_host(&term, tiles * t, d)?)?;
        }
        let x = self.layernorm_pre.forward(b, &x)?;
        let mut padded = b.from_host(&vec![0.0; lay.rows() * d], lay.rows(), d)?;
        b.scatter_rows(&mut padded, &lay.unpadded_rows(), &x)?;
        Ok((padded, lay))
    }

    /// Runs the local encoder for one image up to the deepest layer in `keep` and keeps
    /// `hidden[l]` for every `l` in `keep` (Meta's semantics: output after `l` layers).
    pub fn local(&self, b: &B, px: &super::TiledPixels, keep: &[usize]) -> Result<LocalPass<B>> {
        let deepest = keep.iter().copied().max().unwrap_or(0);
        if deepest > self.layers.len() {
            return Err(Error::invalid(format!(
                "local vision layer {deepest} requested, but only {} are loaded (the encoder has {})",
                self.layers.len(),
                self.config.num_hidden_layers
            )));
        }
        let (mut x, layout) = self.embed(b, px)?;
        let all: Vec<usize> = (0..layout.rows()).collect();
        let mut hidden: Vec<Option<B::Tensor>> = (0..=deepest).map(|_| None).collect();
        if keep.contains(&0) {
            hidden[0] = Some(b.gather_rows(&x, &all)?);
        }
        for (i, layer) in self.layers[..deepest].iter().enumerate() {
            self.layer_forward(b, layer, &mut x, &layout)?;
            if keep.contains(&(i + 1)) {
                hidden[i + 1] = Some(b.gather_rows(&x, &all)?);
            }
        }
        Ok(LocalPass { hidden, layers_run: deepest, layout })
    }

    /// `layernorm_post` → post-tile embedding → the gated global encoder, on local layer `input`;
    /// returns the output after each global layer (padded layout).
    pub fn global(&self, b: &B, pass: &LocalPass<B>, input: usize) -> Result<Vec<B::Tensor>> {
        let c = &self.config;
        let (d, tiles, lay) = (c.hidden_size, c.max_num_tiles, &pass.layout);
        let mut x = self.layernorm_post.forward(b, pass.get(input)?)?;
        let row = &self.post_tile.table[lay.aspect_ratio_id * tiles * d..(lay.aspect_ratio_id + 1) * tiles * d];
        let mut post = vec![0f32; lay.rows() * d];
        for r in 0..lay.rows() {
            let tile = r / lay.padded;
            for k in 0..d {
                post[r * d + k] = row[tile * d + k] * self.post_tile.gate_tanh;
            }
        }
        b.add_assign(&mut x, &b.from_host(&post, lay.rows(), d)?)?;
        let mut outs = Vec::with_capacity(self.global_layers.len());
        for layer in &self.global_layers {
            self.layer_forward(b, layer, &mut x, lay)?;
            outs.push(b.gather_rows(&x, &(0..lay.rows()).collect::<Vec<_>>())?);
        }
        Ok(outs)
    }

    /// A padded-layout tensor without its padded token rows: `[max_tiles * tokens, width]`.
    pub fn unpad(&self, b: &B, pass: &LocalPass<B>, x: &B::Tensor) -> Result<B::Tensor> {
        b.gather_rows(x, &pass.layout.unpadded_rows())
    }

    /// The projector's input for ICET-`layer` under `rule` (see [`ExitRule`]).
    pub fn exit_features(&self, b: &B, pass: &LocalPass<B>, layer: usize, rule: ExitRule) -> Result<ExitFeatures<B>> {
        let n = self.config.num_hidden_layers;
        if layer > n {
            return Err(Error::invalid(format!("vision layer {layer} is out of range 0..={n}")));
        }
        let taps = &self.config.intermediate_layers_indices;
        let unpad_layer = |l: usize| -> Result<B::Tensor> { self.unpad(b, pass, pass.get(l)?) };
        Ok(match rule {
            ExitRule::Clamp => {
                let g = self.global(b, pass, layer)?;
                let last = g.last().ok_or_else(|| Error::invalid("the vision encoder has no global layers"))?;
                ExitFeatures {
                    final_slot: self.unpad(b, pass, last)?,
                    taps: taps.iter().map(|&i| unpad_layer(i.min(layer))).collect::<Result<_>>()?,
                }
            }
            ExitRule::ReplaceFinal => ExitFeatures {
                final_slot: unpad_layer(layer)?,
                taps: taps.iter().map(|&i| unpad_layer(i)).collect::<Result<_>>()?,
            },
            ExitRule::AllSlots => ExitFeatures {
                final_slot: unpad_layer(layer)?,
                taps: taps.iter().map(|_| unpad_layer(layer)).collect::<Result<_>>()?,
            },
        })
    }
}
