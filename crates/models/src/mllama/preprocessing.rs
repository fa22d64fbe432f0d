//! Image preprocessing of Llama 3.2 Vision, bit-identical to transformers 5.24's
//! `MllamaImageProcessorPil` (image_processing_pil_mllama.py) — the class `AutoImageProcessor`
//! picks for `image_processor_type: MllamaImageProcessor` when torchvision is absent.
//!
//! 1. `convert_to_rgb` ([`load_image`]);
//! 2. choose the tile canvas ([`optimal_tiled_canvas`] = `get_optimal_tiled_canvas`) and the size
//!    that fits it ([`size_fit_to_canvas`] = `get_image_size_fit_to_canvas`), then PIL-resize the
//!    `uint8` image ([`pil_resize`], `resample` from the config, bilinear for Llama 3.2);
//! 3. pad with zeros at the bottom and right to the canvas (`pad`, still `uint8`);
//! 4. rescale and normalize ([`Normalize`], as every processor here);
//! 5. split into tiles row by row (`split_to_tiles_np`) and pack into `max_image_tiles` slots,
//!    padded tiles being 0.0 (`pack_images`); `aspect_ratio_id` is 1-based
//!    (`convert_aspect_ratios_to_ids_np`), `aspect_ratio_mask` marks the real tiles (tile 0
//!    always, `build_aspect_ratio_mask_np`).
use std::path::Path;

use image::RgbImage;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::{load_image, pil_resize, Normalize, Resample};

/// `preprocessor_config.json` of an `MllamaImageProcessor`, with that class's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MllamaImageProcessor {
    /// Tile side (`size.height`, which must equal `size.width`).
    pub tile_size: u32,
    pub max_image_tiles: usize,
    pub resample: Resample,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
}

#[derive(Deserialize, Default)]
struct RawConfig {
    size: Option<serde_json::Value>,
    max_image_tiles: Option<usize>,
    resample: Option<i64>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f64>>,
    image_std: Option<Vec<f64>>,
    do_resize: Option<bool>,
    do_pad: Option<bool>,
}

/// A preprocessed image: `max_tiles` tiles of `3 x tile x tile` f32 values (`[max_tiles, 3, H, W]`
/// row-major, padded tiles all 0.0), as transformers' `pixel_values[0, 0]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TiledPixels {
    pub data: Vec<f32>,
    pub max_tiles: usize,
    pub tile_size: usize,
    /// Real tiles: `tiles_high * tiles_wide`.
    pub num_tiles: usize,
    pub tiles_high: usize,
    pub tiles_wide: usize,
    /// 1-based index into the supported aspect ratios (0 is reserved for "no image").
    pub aspect_ratio_id: usize,
    pub aspect_ratio_mask: Vec<u8>,
}

impl TiledPixels {
    /// Tile `t` as the `[3*H, W]` matrix the patch embedding takes.
    pub fn tile(&self, t: usize) -> &[f32] {
        let n = 3 * self.tile_size * self.tile_size;
        &self.data[t * n..(t + 1) * n]
    }
}

/// `get_all_supported_aspect_ratios(max_image_tiles)`: every `(a, b)` with `a * b <= max`, `a`
/// outer. transformers calls the pair (width, height) but uses `a` as the number of tiles in
/// height everywhere else (canvas height = `a * tile`), and so do we.
pub fn supported_aspect_ratios(max_image_tiles: usize) -> Vec<[usize; 2]> {
    let mut out = Vec::new();
    for a in 1..=max_image_tiles {
        for b in 1..=max_image_tiles {
            if a * b <= max_image_tiles {
                out.push([a, b]);
            }
        }
    }
    out
}

/// `get_optimal_tiled_canvas`: the canvas `(height, width)` whose scale (the smaller of the two
/// axis scales) is the smallest one ≥ 1 (upscaling), or else the largest one < 1; ties go to the
/// smallest area (first on equal areas, as `np.argmin`).
pub fn optimal_tiled_canvas(height: u32, width: u32, max_image_tiles: usize, tile: u32) -> (u32, u32) {
    let canvases: Vec<(u32, u32)> =
        supported_aspect_ratios(max_image_tiles).iter().map(|&[a, b]| (a as u32 * tile, b as u32 * tile)).collect();
    let scales: Vec<f64> = canvases
        .iter()
        .map(|&(ch, cw)| {
            let (sh, sw) = (ch as f64 / height as f64, cw as f64 / width as f64);
            if sw > sh {
                sh
            } else {
                sw
            }
        })
        .collect();
    let up = scales.iter().copied().filter(|&s| s >= 1.0).fold(f64::INFINITY, f64::min);
    let selected = if up.is_finite() { up } else { scales.iter().copied().fold(f64::NEG_INFINITY, f64::max) };
    let mut best: Option<(u32, u32)> = None;
    for (c, &s) in canvases.iter().zip(&scales) {
        if s == selected && best.is_none_or(|b| (c.0 as u64 * c.1 as u64) < (b.0 as u64 * b.1 as u64)) {
            best = Some(*c);
        }
    }
    best.expect("at least the 1x1 canvas")
}

/// `get_image_size_fit_to_canvas`: `(height, width)` that fits the canvas, keeping the aspect
/// ratio with `floor`, never below `tile` on the axis that decides the scale.
pub fn size_fit_to_canvas(height: u32, width: u32, canvas_h: u32, canvas_w: u32, tile: u32) -> (u32, u32) {
    let target_w = width.clamp(tile, canvas_w);
    let target_h = height.clamp(tile, canvas_h);
    let scale_h = target_h as f64 / height as f64;
    let scale_w = target_w as f64 / width as f64;
    if scale_w < scale_h {
        let h = ((height as f64 * scale_w).floor() as u32).max(1).min(target_h);
        (h, target_w)
    } else {
        let w = ((width as f64 * scale_h).floor() as u32).max(1).min(target_w);
        (target_h, w)
    }
}

impl MllamaImageProcessor {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, e))?;
        Self::from_json_str(&text).map_err(|e| Error::input(path, e))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::invalid(format!("invalid JSON: {e}")))?;
        if raw.do_resize == Some(false) || raw.do_pad == Some(false) {
            return Err(Error::invalid("MllamaImageProcessor needs do_resize and do_pad"));
        }
        let tile_size = match &raw.size {
            None => 224,
            Some(v) => {
                let (h, w) = (v["height"].as_u64(), v["width"].as_u64());
                match (h, w) {
                    (Some(h), Some(w)) if h == w && h > 0 => h as u32,
                    _ => return Err(Error::invalid(format!("size must be {{\"height\": n, \"width\": n}}, got {v}"))),
                }
            }
        };
        let triple = |v: Option<Vec<f64>>, name: &str| -> Result<[f64; 3]> {
            match v {
                None => Ok([0.5; 3]), // IMAGENET_STANDARD_MEAN / _STD
                Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                Some(v) => Err(Error::invalid(format!("{name} must have 3 elements, got {}", v.len()))),
            }
        };
        let max_image_tiles = raw.max_image_tiles.unwrap_or(4);
        if max_image_tiles == 0 {
            return Err(Error::invalid("max_image_tiles must be positive"));
        }
        Ok(Self {
            tile_size,
            max_image_tiles,
            resample: Resample::from_pil(raw.resample.unwrap_or(2))?,
            do_rescale: raw.do_rescale.unwrap_or(true),
            rescale_factor: raw.rescale_factor.unwrap_or(1.0 / 255.0),
            do_normalize: raw.do_normalize.unwrap_or(true),
            image_mean: triple(raw.image_mean, "image_mean")?,
            image_std: triple(raw.image_std, "image_std")?,
        })
    }

    /// Decodes `path` (convert_to_rgb as transformers) and preprocesses it.
    pub fn preprocess_file(&self, path: &Path) -> Result<TiledPixels> {
        let img = load_image(path)?;
        self.preprocess(&img).map_err(|e| Error::input(path, e))
    }

    pub fn preprocess(&self, img: &RgbImage) -> Result<TiledPixels> {
        let (h, w) = (img.height(), img.width());
        if h == 0 || w == 0 {
            return Err(Error::invalid("empty image"));
        }
        let tile = self.tile_size;
        let (canvas_h, canvas_w) = optimal_tiled_canvas(h, w, self.max_image_tiles, tile);
        let (tiles_high, tiles_wide) = ((canvas_h / tile) as usize, (canvas_w / tile) as usize);
        let (new_h, new_w) = size_fit_to_canvas(h, w, canvas_h, canvas_w, tile);
        let resized = pil_resize(img, new_w, new_h, self.resample)?;
        let ts = tile as usize;
        let normalize = Normalize {
            do_rescale: self.do_rescale,
            rescale_factor: self.rescale_factor,
            do_normalize: self.do_normalize,
            mean: self.image_mean,
            std: self.image_std,
        };
        let max_tiles = self.max_image_tiles;
        let plane = ts * ts;
        let mut data = vec![0f32; max_tiles * 3 * plane];
        for th in 0..tiles_high {
            for tw in 0..tiles_wide {
                let t = th * tiles_wide + tw;
                for c in 0..3 {
                    for y in 0..ts {
                        for x in 0..ts {
                            let (gy, gx) = ((th * ts + y) as u32, (tw * ts + x) as u32);
                            let v = if gy < new_h && gx < new_w { resized.get_pixel(gx, gy).0[c] } else { 0 };
                            data[t * 3 * plane + c * plane + y * ts + x] = normalize.value(v, c);
                        }
                    }
                }
            }
        }
        let num_tiles = tiles_high * tiles_wide;
        let aspect_ratio_id = supported_aspect_ratios(self.max_image_tiles)
            .iter()
            .position(|&r| r == [tiles_high, tiles_wide])
            .expect("the canvas is a supported arrangement")
            + 1;
        let mut aspect_ratio_mask = vec![0u8; max_tiles];
        aspect_ratio_mask[0] = 1;
        aspect_ratio_mask[..num_tiles].fill(1);
        Ok(TiledPixels {
            data,
            max_tiles,
            tile_size: ts,
            num_tiles,
            tiles_high,
            tiles_wide,
            aspect_ratio_id,
            aspect_ratio_mask,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_ratios_follow_transformers_order() {
        // get_all_supported_aspect_ratios(4) docstring.
        assert_eq!(supported_aspect_ratios(4), vec![[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]);
    }

    #[test]
    fn canvas_prefers_smallest_upscale_then_smallest_area() {
        // 80 wide x 24 high, tile 28: 1x3 has scale 1.05, the smallest >= 1.
        assert_eq!(optimal_tiled_canvas(24, 80, 4, 28), (28, 84));
        // 20 x 30 (w x h): 2x1, 3x1, 4x1 all scale 1.4; 2x1 has the smallest area.
        assert_eq!(optimal_tiled_canvas(30, 20, 4, 28), (56, 28));
        // Only downscaling possible: the largest scale (2x2 for a big square).
        assert_eq!(optimal_tiled_canvas(1000, 1000, 4, 560), (1120, 1120));
        // Never upscaled beyond the tile size on the deciding axis: 80x24 stays 80x24 on an 84x28 canvas.
        assert_eq!(size_fit_to_canvas(24, 80, 28, 84, 28), (24, 80));
        assert_eq!(size_fit_to_canvas(30, 20, 56, 28, 28), (30, 20));
        assert_eq!(size_fit_to_canvas(64, 64, 56, 56, 28), (56, 56));
    }
}
