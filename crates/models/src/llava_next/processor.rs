//! transformers 5.24's `LlavaNextImageProcessorPil` (what `AutoImageProcessor` picks without
//! torchvision), bit-identical, and the processor configuration around it.
//!
//! For one RGB `uint8` image ([`load_image`]): the best pinpoint ([`AnyresGrid`]); PIL resize into
//! it keeping the aspect ratio ([`patch_output_size`]); zero padding centred to the pinpoint
//! (`_pad_for_patching`: the odd pixel goes after); cut into tiles row by row; the base image =
//! the original PIL-resized to `size` exactly (ignoring its aspect ratio); then each of
//! `[base, tiles...]` through the CLIP steps (resize by `size`, center crop, rescale, normalize:
//! [`ImageProcessorConfig::preprocess`]). Padding to a common tile count across a batch
//! (`do_pad`) never applies to one image.
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;

use super::anyres::{patch_output_size, AnyresGrid};
use super::config::LlavaNextConfig;
use crate::clip::processor::{ImageProcessorConfig, ResizeTarget};
use crate::error::{Error, Result};
use crate::image::{load_image, pil_resize};

/// One image's tiles as `pixel_values[0][:tiles]`: `tiles x 3 x tile x tile` f32, base first.
#[derive(Clone, Debug, PartialEq)]
pub struct TiledPixels {
    pub data: Vec<f32>,
    pub tiles: usize,
    pub tile: usize,
    /// The original image, `(height, width)`.
    pub image: (usize, usize),
}

impl TiledPixels {
    /// Tile `t` as `[3 * tile, tile]` (CHW rows).
    pub fn tile_data(&self, t: usize) -> &[f32] {
        let n = 3 * self.tile * self.tile;
        &self.data[t * n..(t + 1) * n]
    }
}

/// The image processor of a LLaVA-NeXT directory and the processor fields that decide how many
/// image slots `<image>` expands to.
#[derive(Clone, Debug, PartialEq)]
pub struct LlavaNextProcessor {
    /// The per-tile CLIP steps (`size`, `crop_size`, `resample`, rescale, normalize).
    pub image: ImageProcessorConfig,
    pub image_grid_pinpoints: Vec<[usize; 2]>,
    /// The file the image processor was read from.
    pub source: PathBuf,
    /// `processor_config.json`'s `patch_size`, `num_additional_image_tokens`,
    /// `vision_feature_select_strategy` (absent: as the model computes them).
    pub patch_size: Option<usize>,
    pub num_additional_image_tokens: Option<usize>,
    pub strategy: Option<String>,
}

impl LlavaNextProcessor {
    /// Reads the image processor as transformers 5.24 does — `processor_config.json`'s nested
    /// `image_processor` first (what 5.x `save_pretrained` writes), else
    /// `preprocessor_config.json` — and the processor's own fields from `processor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |path: &Path| -> Result<Option<Value>> {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    serde_json::from_str(&text).map(Some).map_err(|e| Error::input(path, format!("invalid JSON: {e}")))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::input(path, format!("cannot read: {e}"))),
            }
        };
        let processor_path = dir.join("processor_config.json");
        let processor = read(&processor_path)?.unwrap_or(Value::Null);
        let (source, image) = match processor.get("image_processor") {
            Some(nested) => (processor_path.clone(), nested.clone()),
            None => {
                let path = dir.join("preprocessor_config.json");
                let v = read(&path)?.ok_or_else(|| {
                    Error::input(dir, "no image processor: neither processor_config.json's `image_processor` nor preprocessor_config.json")
                })?;
                (path, v)
            }
        };
        let pinpoints = match image.get("image_grid_pinpoints") {
            None | Some(Value::Null) => super::config::DEFAULT_PINPOINTS.to_vec(),
            Some(p) => serde_json::from_value::<Vec<[usize; 2]>>(p.clone())
                .map_err(|e| Error::input(&source, format!("image_grid_pinpoints: {e}")))?,
        };
        let config: ImageProcessorConfig =
            serde_json::from_value(image).map_err(|e| Error::input(&source, format!("image processor: {e}")))?;
        let field = |k: &str| processor.get(k).filter(|v| !v.is_null());
        let count = |k: &str| -> Result<Option<usize>> {
            field(k)
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| Error::input(&processor_path, format!("{k} {v} is not a count")))
                })
                .transpose()
        };
        Ok(Self {
            image: config,
            image_grid_pinpoints: pinpoints,
            source,
            patch_size: count("patch_size")?,
            num_additional_image_tokens: count("num_additional_image_tokens")?,
            strategy: field("vision_feature_select_strategy").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// The tile side (`crop_size.height`, the patch size `_preprocess` cuts with).
    pub fn tile(&self) -> usize {
        self.image.crop_size.height as usize
    }

    /// Checks that this processor and the model agree, so that `<image>` expands into exactly
    /// the rows the model packs (transformers raises at run time when they do not): the same
    /// pinpoints and tile, and a slot count whose patch size and token adjustments are the
    /// model's.
    pub fn check(&self, config: &LlavaNextConfig) -> Result<()> {
        let v = &config.vision_config;
        let c = &self.image.crop_size;
        let fail = |msg: String| Err(Error::input(&self.source, msg));
        if c.height != c.width || c.height as usize != v.image_size {
            return fail(format!(
                "crop_size {}x{} is not the vision tower's {}-px square tile",
                c.height, c.width, v.image_size
            ));
        }
        if self.image_grid_pinpoints != config.image_grid_pinpoints {
            return fail(format!(
                "image_grid_pinpoints {:?} differ from config.json's {:?} (the processor tiles by one, the model packs by the other)",
                self.image_grid_pinpoints, config.image_grid_pinpoints
            ));
        }
        if let Some(p) = self.patch_size.filter(|&p| p != v.patch_size) {
            return fail(format!(
                "processor patch_size {p} is not the vision tower's {}: the processor would count other slots",
                v.patch_size
            ));
        }
        // The processor counts base patches + num_additional_image_tokens, minus one under `default`.
        let added = self.num_additional_image_tokens.unwrap_or(1);
        let dropped = usize::from(self.strategy.as_deref().unwrap_or("default") == "default");
        if added != dropped {
            return fail(format!(
                "num_additional_image_tokens {added} with vision_feature_select_strategy {:?} gives each image {} slot(s) \
                 more than the model's features",
                self.strategy,
                added as i64 - dropped as i64
            ));
        }
        Ok(())
    }

    /// The base image's size, `(height, width)`: `size` exactly, or `shortest_edge` squared.
    fn base_size(&self) -> (u32, u32) {
        match self.image.size {
            ResizeTarget::Exact { height, width } => (height, width),
            ResizeTarget::ShortestEdge { shortest_edge, .. } => (shortest_edge, shortest_edge),
        }
    }

    /// The tiling of an image of `height x width` for a tower of `side x side` patches per tile.
    pub fn grid(&self, height: usize, width: usize, side: usize) -> AnyresGrid {
        AnyresGrid::new(height, width, &self.image_grid_pinpoints, self.tile(), side)
    }

    pub fn preprocess_file(&self, path: &Path) -> Result<TiledPixels> {
        self.preprocess(&load_image(path)?).map_err(|e| Error::input(path, e))
    }

    /// `pixel_values[0][:tiles]` of one RGB image.
    pub fn preprocess(&self, img: &RgbImage) -> Result<TiledPixels> {
        let (height, width) = (img.height() as usize, img.width() as usize);
        if height == 0 || width == 0 {
            return Err(Error::invalid("preprocess: empty image"));
        }
        let tile = self.tile();
        let grid = AnyresGrid::new(height, width, &self.image_grid_pinpoints, tile, 1);
        let (bh, bw) = grid.best;
        let resample = self.image.resample;
        let (nh, nw) = patch_output_size(height, width, grid.best);
        let resized = pil_resize(img, nw as u32, nh as u32, resample)?;
        let mut canvas = RgbImage::new(bw as u32, bh as u32); // zeros: np.pad(constant_values=0)
        image::imageops::replace(&mut canvas, &resized, ((bw - nw) / 2) as i64, ((bh - nh) / 2) as i64);
        let (base_h, base_w) = self.base_size();
        let mut patches = vec![pil_resize(img, base_w, base_h, resample)?];
        for y in (0..bh).step_by(tile) {
            for x in (0..bw).step_by(tile) {
                patches
                    .push(image::imageops::crop_imm(&canvas, x as u32, y as u32, tile as u32, tile as u32).to_image());
            }
        }
        let mut data = Vec::with_capacity(patches.len() * 3 * tile * tile);
        for p in &patches {
            let px = self.image.preprocess(p)?;
            if (px.height, px.width) != (tile, tile) {
                return Err(Error::invalid(format!(
                    "a tile came out {}x{}, not {tile}x{tile} (size / crop_size disagree with the tile)",
                    px.height, px.width
                )));
            }
            data.extend_from_slice(&px.data);
        }
        Ok(TiledPixels { data, tiles: patches.len(), tile, image: (height, width) })
    }
}
