//! transformers' `CLIPImageProcessor` (LLaVA-1.5's processor), bit-identical to its PIL backend.
//!
//! transformers 5.24 ships two `CLIPImageProcessor`s: the torchvision one (`CLIPImageProcessor`,
//! used when torchvision is installed) and the PIL/NumPy one (`CLIPImageProcessorPil`, which
//! `AutoImageProcessor` picks when torchvision is absent). This module reproduces the latter,
//! step for step, with the shared PIL-exact operations of [`crate::image`]:
//!
//! 1. [`load_image`](crate::image::load_image): decode, then `convert_to_rgb`;
//! 2. resize with `PIL.Image.resize` ([`pil_resize`]) to the size that
//!    `get_resize_output_image_size(default_to_square=False)` picks (`int()` truncation);
//! 3. `center_crop` (floor-division offsets, zero padding when the crop is larger);
//! 4. rescale and normalize ([`Normalize`]).
//!
//! [`expand_to_square`](crate::image::expand_to_square) is LLaVA's `expand2square`, with
//! [`ImageProcessorConfig::pad_square_background`] as its colour.
use std::collections::BTreeMap;
use std::path::Path;

use image::RgbImage;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::{center_crop, pil_resize, Normalize, Resample};

/// OpenAI CLIP's normalization mean (transformers' `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalization std (transformers' `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The resize target of a `preprocessor_config.json` (`size`), after transformers'
/// `get_size_dict(size, default_to_square=False)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// `{"shortest_edge": n}` (or a bare int): scale so the short side is `n`, keeping the
    /// aspect ratio with `int()` truncation of the long side. With `longest_edge`, transformers'
    /// `get_size_with_aspect_ratio` caps the long side.
    ShortestEdge { shortest_edge: u32, longest_edge: Option<u32> },
    /// `{"height": h, "width": w}` (or `[h, w]`): resize to exactly this size.
    Exact { height: u32, width: u32 },
}

/// The center-crop size (`crop_size`), after `get_size_dict(crop_size)`: an int `n` means `n x n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropSize {
    pub height: u32,
    pub width: u32,
}

/// `preprocessor_config.json` of a CLIP image processor, with `CLIPImageProcessor`'s defaults
/// for every missing (or `null`) field. Unknown fields (`image_processor_type`,
/// `processor_class`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct ImageProcessorConfig {
    pub do_resize: bool,
    pub size: ResizeTarget,
    pub resample: Resample,
    pub do_center_crop: bool,
    pub crop_size: CropSize,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Kept for completeness: [`load_image`] always converts to RGB and [`Self::preprocess`]
    /// takes RGB already, which is what `do_convert_rgb = true` does.
    pub do_convert_rgb: bool,
}

impl Default for ImageProcessorConfig {
    /// transformers' `CLIPImageProcessor` class defaults.
    fn default() -> Self {
        ImageProcessorConfig {
            do_resize: true,
            size: ResizeTarget::ShortestEdge { shortest_edge: 224, longest_edge: None },
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: CropSize { height: 224, width: 224 },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

/// A `size` / `crop_size` value as it may appear in JSON.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(u32),
    List(Vec<u32>),
    Dict(BTreeMap<String, Option<u32>>),
}

/// `image_mean` / `image_std`: a list or one number for all channels.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTriple {
    One(f64),
    List(Vec<f64>),
}

#[derive(Deserialize, Default)]
struct RawConfig {
    do_resize: Option<bool>,
    size: Option<RawSize>,
    resample: Option<i64>,
    do_center_crop: Option<bool>,
    crop_size: Option<RawSize>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<RawTriple>,
    image_std: Option<RawTriple>,
    do_convert_rgb: Option<bool>,
}

fn size_dict(raw: RawSize, default_to_square: bool, name: &str) -> Result<BTreeMap<String, u32>> {
    let mut d = BTreeMap::new();
    match raw {
        RawSize::Int(n) if default_to_square => {
            d.insert("height".into(), n);
            d.insert("width".into(), n);
        }
        RawSize::Int(n) => {
            d.insert("shortest_edge".into(), n);
        }
        RawSize::List(v) if v.len() == 2 => {
            d.insert("height".into(), v[0]);
            d.insert("width".into(), v[1]);
        }
        RawSize::List(v) => {
            return Err(Error::invalid(format!("{name}: a list must be [height, width], got {v:?}")));
        }
        RawSize::Dict(m) => {
            // transformers' SizeDict treats a `null` entry as absent.
            d.extend(m.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        }
    }
    if let Some((k, _)) = d.iter().find(|(_, &v)| v == 0) {
        return Err(Error::invalid(format!("{name}: `{k}` must be > 0")));
    }
    Ok(d)
}

fn keys_are(d: &BTreeMap<String, u32>, keys: &[&str]) -> bool {
    d.len() == keys.len() && keys.iter().all(|k| d.contains_key(*k))
}

fn triple(raw: RawTriple, name: &str) -> Result<[f64; 3]> {
    match raw {
        RawTriple::One(x) => Ok([x; 3]),
        RawTriple::List(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        RawTriple::List(v) => Err(Error::invalid(format!("{name} must have 3 elements, got {}", v.len()))),
    }
}

impl TryFrom<RawConfig> for ImageProcessorConfig {
    type Error = Error;

    fn try_from(raw: RawConfig) -> Result<Self> {
        let d = ImageProcessorConfig::default();
        let size = match raw.size {
            None => d.size,
            Some(s) => {
                // CLIPImageProcessor has default_to_square = False: an int is a shortest edge.
                let m = size_dict(s, false, "size")?;
                if keys_are(&m, &["shortest_edge"]) {
                    ResizeTarget::ShortestEdge { shortest_edge: m["shortest_edge"], longest_edge: None }
                } else if keys_are(&m, &["shortest_edge", "longest_edge"]) {
                    ResizeTarget::ShortestEdge {
                        shortest_edge: m["shortest_edge"],
                        longest_edge: Some(m["longest_edge"]),
                    }
                } else if keys_are(&m, &["height", "width"]) {
                    ResizeTarget::Exact { height: m["height"], width: m["width"] }
                } else {
                    return Err(Error::invalid(format!(
                        "size: expected {{\"shortest_edge\"}}, {{\"shortest_edge\", \"longest_edge\"}} or \
                         {{\"height\", \"width\"}}, got keys {:?}",
                        m.keys().collect::<Vec<_>>()
                    )));
                }
            }
        };
        let crop_size = match raw.crop_size {
            None => d.crop_size,
            Some(s) => {
                let m = size_dict(s, true, "crop_size")?;
                if !keys_are(&m, &["height", "width"]) {
                    return Err(Error::invalid(format!(
                        "crop_size: expected \"height\" and \"width\", got keys {:?}",
                        m.keys().collect::<Vec<_>>()
                    )));
                }
                CropSize { height: m["height"], width: m["width"] }
            }
        };
        let resample = match raw.resample {
            None => d.resample,
            Some(code) => Resample::from_pil(code)?,
        };
        let image_mean = raw.image_mean.map(|t| triple(t, "image_mean")).transpose()?.unwrap_or(d.image_mean);
        let image_std = raw.image_std.map(|t| triple(t, "image_std")).transpose()?.unwrap_or(d.image_std);
        Ok(ImageProcessorConfig {
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            size,
            resample,
            do_center_crop: raw.do_center_crop.unwrap_or(d.do_center_crop),
            crop_size,
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            image_mean,
            image_std,
            do_convert_rgb: raw.do_convert_rgb.unwrap_or(d.do_convert_rgb),
        })
    }
}

/// Preprocessed image: `float32`, channel-first (3 x height x width), as transformers'
/// `pixel_values[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// `3 * height * width` values, channel-major (R plane, then G, then B).
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`. Errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, e))?;
        Self::from_json_str(&text).map_err(|e| Error::input(path, e))
    }

    /// Parses the text of a `preprocessor_config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::invalid(format!("preprocessor config: {e}")))
    }

    /// The rescale/normalize step of this processor.
    pub fn normalize(&self) -> Normalize {
        Normalize {
            do_rescale: self.do_rescale,
            rescale_factor: self.rescale_factor,
            do_normalize: self.do_normalize,
            mean: self.image_mean,
            std: self.image_std,
        }
    }

    /// LLaVA's padding colour for [`expand_to_square`]: `tuple(int(x * 255) for x in image_mean)`.
    pub fn pad_square_background(&self) -> [u8; 3] {
        // Python's int() truncates toward zero; `as u8` does too (and saturates).
        self.image_mean.map(|m| (m * 255.0) as u8)
    }

    /// The (height, width) the resize step produces for an input of `height x width`
    /// (transformers' `get_resize_output_image_size(default_to_square=False)`, or
    /// `get_size_with_aspect_ratio` when `longest_edge` is set). Errors if it is empty.
    pub fn resize_output_size(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        let (h, w) = match self.size {
            ResizeTarget::Exact { height, width } => (height as u64, width as u64),
            ResizeTarget::ShortestEdge { shortest_edge, longest_edge: None } => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // int(requested_new_short * long / short): Python's true division of exact
                // integers, correctly rounded like this f64 division, then truncated.
                let new_long = ((shortest_edge as u64 * long as u64) as f64 / short as f64) as u64;
                if width <= height {
                    (new_long, shortest_edge as u64)
                } else {
                    (shortest_edge as u64, new_long)
                }
            }
            ResizeTarget::ShortestEdge { shortest_edge, longest_edge: Some(max_size) } => {
                size_with_aspect_ratio(height, width, shortest_edge, max_size)
            }
        };
        if h == 0 || w == 0 || h > u32::MAX as u64 || w > u32::MAX as u64 {
            return Err(Error::invalid(format!(
                "resize of a {width}x{height} image to {w}x{h}: height and width must be > 0"
            )));
        }
        Ok((h as u32, w as u32))
    }

    /// The whole `CLIPImageProcessorPil` pipeline on one RGB image: resize, center crop,
    /// rescale, normalize. The result equals transformers' `pixel_values[0]` (to the last bit
    /// for the arithmetic used here; the resize is `u8`-exact).
    pub fn preprocess(&self, img: &RgbImage) -> Result<PixelValues> {
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::invalid("preprocess: empty image"));
        }
        let mut cur: std::borrow::Cow<'_, RgbImage> = std::borrow::Cow::Borrowed(img);
        if self.do_resize {
            let (h, w) = self.resize_output_size(img.height(), img.width())?;
            cur = std::borrow::Cow::Owned(pil_resize(&cur, w, h, self.resample)?);
        }
        if self.do_center_crop {
            cur = std::borrow::Cow::Owned(center_crop(&cur, self.crop_size.height, self.crop_size.width));
        }
        let (height, width) = (cur.height() as usize, cur.width() as usize);
        let normalize = self.normalize();
        let plane = height * width;
        let mut data = vec![0f32; 3 * plane];
        for (i, px) in cur.pixels().enumerate() {
            for c in 0..3 {
                data[c * plane + i] = normalize.value(px.0[c], c);
            }
        }
        Ok(PixelValues { data, height, width })
    }
}

/// transformers' `get_size_with_aspect_ratio((height, width), size, max_size)`.
fn size_with_aspect_ratio(height: u32, width: u32, size: u32, max_size: u32) -> (u64, u64) {
    let (h, w) = (height as f64, width as f64);
    let (min_o, max_o) = (h.min(w), h.max(w));
    let mut size = size as u64;
    let mut raw_size = None;
    if max_o / min_o * size as f64 > max_size as f64 {
        let raw = max_size as f64 * min_o / max_o;
        raw_size = Some(raw);
        size = raw.round_ties_even() as u64; // Python's round() is round-half-even
    }
    let (height, width) = (height as u64, width as u64);
    if (height <= width && height == size) || (width <= height && width == size) {
        (height, width)
    } else if width < height {
        let oh = match raw_size {
            Some(raw) => (raw * height as f64 / width as f64) as u64,
            None => ((size * height) as f64 / width as f64) as u64,
        };
        (oh, size)
    } else {
        let ow = match raw_size {
            Some(raw) => (raw * width as f64 / height as f64) as u64,
            None => ((size * width) as f64 / height as f64) as u64,
        };
        (size, ow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_refs::{diff, fixtures, s, temp_dir, Refs};
    use crate::image::{expand_to_square, load_image};
    use image::Rgb;

    #[test]
    fn expand_to_square_matches_llava() {
        let refs = Refs::load();
        let bg = ImageProcessorConfig::default().pad_square_background();
        let json_bg: Vec<u8> = refs.index["expand2square_background"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bg.to_vec(), json_bg);
        assert_eq!(bg, [122, 116, 104]);
        for case in refs.cases("expand2square") {
            let src = refs.image(s(&case, "source"));
            let want = refs.image(s(&case, "key"));
            let got = expand_to_square(&src, bg);
            assert_eq!(got.dimensions(), want.dimensions(), "{}", s(&case, "key"));
            assert_eq!(diff(&got, &want), (0, 0), "{}", s(&case, "key"));
        }
        // Square input: unchanged.
        let sq = RgbImage::from_pixel(3, 3, Rgb([1, 2, 3]));
        assert_eq!(expand_to_square(&sq, bg), sq);
    }

    #[test]
    fn preprocess_matches_transformers() {
        let refs = Refs::load();
        let mut report = vec![];
        let mut worst = 0f32;
        for case in refs.cases("preprocess") {
            let key = s(&case, "key");
            let cfg = ImageProcessorConfig::from_file(&fixtures().join(s(&case, "config"))).unwrap();
            let mut img = load_image(&fixtures().join(s(&case, "file"))).unwrap();
            if case["expand2square"].as_bool().unwrap() {
                img = expand_to_square(&img, cfg.pad_square_background());
            }
            let pv = cfg.preprocess(&img).unwrap();
            let full: Vec<usize> =
                case["full_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(vec![3, pv.height, pv.width], full, "{key}");
            assert_eq!(pv.data.len(), 3 * pv.height * pv.width);
            let stride = case["stride"].as_u64().unwrap() as usize;
            let (shape, want) = refs.f32s(key);
            let (h, w) = (shape[1], shape[2]);
            assert_eq!((h, w), (pv.height.div_ceil(stride), pv.width.div_ceil(stride)), "{key}");
            let mut max = 0f32;
            let mut inexact = 0;
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let got = pv.data[(c * pv.height + y * stride) * pv.width + x * stride];
                        let want = want[(c * h + y) * w + x];
                        max = max.max((got - want).abs());
                        inexact += (got.to_bits() != want.to_bits()) as usize;
                    }
                }
            }
            report.push(format!("{key}: max |d| {max:e}, {inexact} values not bit-equal"));
            worst = worst.max(max);
        }
        eprintln!("{}", report.join("\n"));
        assert!(worst <= 1e-4, "{}", report.join("\n"));
    }

    #[test]
    fn resize_output_size_matches_transformers() {
        let refs = Refs::load();
        for case in refs.cases("output_sizes") {
            let cfg_json = serde_json::json!({ "size": case["size"] });
            let cfg = ImageProcessorConfig::from_json_str(&cfg_json.to_string()).unwrap();
            let (h, w) = (case["in"][0].as_u64().unwrap() as u32, case["in"][1].as_u64().unwrap() as u32);
            let got = cfg.resize_output_size(h, w);
            match case.get("out") {
                Some(out) => {
                    let want = (out[0].as_u64().unwrap() as u32, out[1].as_u64().unwrap() as u32);
                    assert_eq!(got.unwrap(), want, "{case}");
                }
                None => assert!(got.is_err(), "{case}: expected an error, got {got:?}"),
            }
        }
    }

    #[test]
    fn config_parsing() {
        let d = ImageProcessorConfig::from_json_str("{}").unwrap();
        assert_eq!(d, ImageProcessorConfig::default());
        let llava = ImageProcessorConfig::from_file(&fixtures().join("configs/llava15.json")).unwrap();
        assert_eq!(llava.size, ResizeTarget::ShortestEdge { shortest_edge: 336, longest_edge: None });
        assert_eq!(llava.crop_size, CropSize { height: 336, width: 336 });
        assert_eq!(llava.resample, Resample::Bicubic);
        assert_eq!(llava.rescale_factor, 1.0 / 255.0);
        assert_eq!(llava.image_mean, OPENAI_CLIP_MEAN);
        assert_eq!(llava.image_std, OPENAI_CLIP_STD);
        // openai/clip-vit-large-patch14-336 style ints.
        let ints =
            ImageProcessorConfig::from_json_str(r#"{"size": 336, "crop_size": 336, "do_center_crop": null}"#).unwrap();
        assert_eq!(ints.size, ResizeTarget::ShortestEdge { shortest_edge: 336, longest_edge: None });
        assert_eq!(ints.crop_size, CropSize { height: 336, width: 336 });
        assert!(ints.do_center_crop);
        let hw = ImageProcessorConfig::from_json_str(r#"{"size": [20, 30], "image_mean": 0.5}"#).unwrap();
        assert_eq!(hw.size, ResizeTarget::Exact { height: 20, width: 30 });
        assert_eq!(hw.image_mean, [0.5; 3]);
        for bad in [
            r#"{"size": {"longest_edge": 3}}"#,
            r#"{"size": {"height": 3}}"#,
            r#"{"crop_size": {"shortest_edge": 3}}"#,
            r#"{"size": {"shortest_edge": 0}}"#,
            r#"{"size": [1, 2, 3]}"#,
            r#"{"resample": 9}"#,
            r#"{"image_std": [1, 2]}"#,
            r#"{"do_resize": "yes"}"#,
        ] {
            assert!(ImageProcessorConfig::from_json_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_name_the_file() {
        let dir = temp_dir("config-errors");
        let e = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap_err().to_string();
        assert!(e.contains("preprocessor_config.json"), "{e}");
        let bad = dir.join("bad_config.json");
        std::fs::write(&bad, r#"{"size": {"height": 3}}"#).unwrap();
        let e = ImageProcessorConfig::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("bad_config.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
