//! Image preprocessing for CLIP / LLaVA-1.5, bit-identical to transformers' PIL backend.
//!
//! transformers 5.24 ships two `CLIPImageProcessor`s: the torchvision one (`CLIPImageProcessor`,
//! used when torchvision is installed) and the PIL/NumPy one (`CLIPImageProcessorPil`, which
//! `AutoImageProcessor` picks when torchvision is absent). This module reproduces the latter,
//! step for step:
//!
//! 1. [`load_image`]: decode, then `convert_to_rgb` (transparency is composited over white with
//!    PIL's `alpha_composite` integer arithmetic; see [`load_image_with`] for every mode, and
//!    [`AlphaHandling::Drop`] for the original LLaVA code's plain `convert('RGB')`).
//! 2. resize with `PIL.Image.resize` ([`pil_resize`]: PIL's two-pass fixed-point convolution,
//!    horizontal then vertical through a `uint8` intermediate), to the size that
//!    `get_resize_output_image_size(default_to_square=False)` picks (`int()` truncation);
//! 3. `center_crop` (floor-division offsets, zero padding when the crop is larger);
//! 4. rescale (`uint8 -> float64 * rescale_factor -> float32`) and normalize
//!    (`(x - mean) / std` in `float32`, with `mean`/`std` rounded to `float32`).
//!
//! [`expand_to_square`] is LLaVA's `expand2square` (the `image_aspect_ratio == "pad"` path of the
//! original LLaVA-1.5 code), with [`ImageProcessorConfig::pad_square_background`] as its colour.
//!
//! Resizing is exact (`u8`-equal to Pillow 12.0 for all six filters); the pixel values agree with
//! transformers to the last bit because the float arithmetic is done in the same order and
//! precision. Decoding matches PIL exactly: JPEG through libjpeg-turbo's own decoder (the
//! library Pillow links, built from C by `mozjpeg-sys` and set up as Pillow sets it up; see the
//! private `libjpeg` module), PNG (every colour type and bit depth in the fixtures), BMP and
//! WebP through the `image` crate.
use std::collections::BTreeMap;
use std::path::Path;

use image::{DynamicImage, ImageBuffer, Rgb, RgbImage};
use serde::Deserialize;

use crate::error::{Error, Result};

/// OpenAI CLIP's normalization mean (transformers' `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalization std (transformers' `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

// ------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------

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

/// A PIL resampling filter, numbered as `PIL.Image.Resampling` (the `resample` config field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

impl Resample {
    /// The filter for PIL's integer code (`PIL.Image.Resampling`).
    pub fn from_pil(code: i64) -> Result<Self> {
        Ok(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return Err(Error::invalid(format!("resample: unknown PIL filter {code} (expected 0..=5)"))),
        })
    }

    /// Half-width of the filter kernel at scale 1 (PIL's `struct filter` support).
    fn support(self) -> f64 {
        match self {
            Resample::Nearest | Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    /// The kernel, with PIL's exact floating-point expressions.
    fn kernel(self, x: f64) -> f64 {
        match self {
            Resample::Nearest => unreachable!("nearest does not convolve"),
            Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Resample::Bicubic => {
                // Keys' cubic convolution with a = -0.5, as PIL writes it.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
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
        let mean = self.image_mean.map(|m| m as f32);
        let std = self.image_std.map(|s| s as f32);
        let plane = height * width;
        let mut data = vec![0f32; 3 * plane];
        for (i, px) in cur.pixels().enumerate() {
            for c in 0..3 {
                let v = px.0[c];
                // rescale(): uint8 -> float64 * scale -> float32; otherwise normalize() casts to f32.
                let mut x = if self.do_rescale { (v as f64 * self.rescale_factor) as f32 } else { v as f32 };
                if self.do_normalize {
                    // normalize(): (image - mean) / std with float32 mean/std arrays.
                    x = (x - mean[c]) / std[c];
                }
                data[c * plane + i] = x;
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

/// transformers' `center_crop`: offsets `(orig - crop) // 2` (floor division); where the crop is
/// larger than the image, the image is first zero-padded with `ceil((new - orig) / 2)` before.
fn center_crop(img: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let (orig_h, orig_w) = (img.height() as i64, img.width() as i64);
    let (ch, cw) = (crop_h as i64, crop_w as i64);
    let top = (orig_h - ch).div_euclid(2);
    let left = (orig_w - cw).div_euclid(2);
    // With padding, transformers puts the image at (top_pad, left_pad) = ceil((crop - orig) / 2)
    // in a zero canvas and shifts the window by the same amount; since then top = -top_pad, in
    // image coordinates the window still starts at (top, left) and pixels outside are zero.
    let mut out = RgbImage::new(crop_w, crop_h);
    for y in 0..ch {
        let sy = top + y;
        if sy < 0 || sy >= orig_h {
            continue;
        }
        for x in 0..cw {
            let sx = left + x;
            if sx < 0 || sx >= orig_w {
                continue;
            }
            out.put_pixel(x as u32, y as u32, *img.get_pixel(sx as u32, sy as u32));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Loading and RGB conversion
// ------------------------------------------------------------------------------------------

/// What [`load_image_with`] does with transparency (an alpha channel, or a PNG `tRNS` colour or
/// palette entry). The two Python pipelines this crate follows differ here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaHandling {
    /// transformers' `convert_to_rgb`, which `CLIPImageProcessorPil` (and so `LlavaProcessor`)
    /// applies to every image: transparent images are alpha-composited over opaque white with
    /// PIL's `Image.alpha_composite` integer rounding, so fully transparent pixels become white.
    #[default]
    CompositeOverWhite,
    /// PIL's plain `Image.convert("RGB")`, which the original LLaVA code applies when it loads
    /// an image (`Image.open(f).convert('RGB')`, before `expand2square`): the alpha channel is
    /// discarded and the stored colour is kept, even under fully transparent pixels; a palette
    /// or `tRNS` transparency is ignored (the palette colour, the keyed colour itself).
    Drop,
}

/// [`load_image_with`] with [`AlphaHandling::CompositeOverWhite`]: the image exactly as
/// `CLIPImageProcessorPil` sees a freshly opened PIL image after `convert_to_rgb`.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    load_image_with(path, AlphaHandling::CompositeOverWhite)
}

/// Decodes an image file (JPEG, PNG, BMP, WebP; the format is sniffed from the content) and
/// converts it to RGB as PIL does after `Image.open(path)`:
///
/// * JPEG goes through libjpeg-turbo's decoder, configured as Pillow's (see the private
///   `libjpeg` module), so the pixels are PIL's to the bit: 3-component files are decoded to
///   RGB (YCbCr converted, fancy upsampling, the accurate integer IDCT), grayscale is
///   replicated to three channels, 4-component (CMYK / YCCK, Adobe polarity) files are
///   converted with PIL's `cmyk2rgb`. A truncated file is an error, as in PIL; other libjpeg
///   warnings (corrupt entropy data, extraneous bytes) are ignored, as in PIL. JPEGs have no
///   transparency, so `alpha` does not matter for them.
/// * Other formats go through the `image` crate. Transparency (RGBA, LA, palette or RGB/L PNG
///   with `tRNS`, WebP with alpha) is handled as `alpha` says. Grayscale is replicated;
///   palettes are expanded; 16-bit PNGs follow PIL's modes: 16-bit RGB(A)/LA keep the high
///   byte, 16-bit grayscale (PIL mode `I;16`, with or without a `tRNS` key) is *clipped* to 255
///   (PIL's `convert("RGB")` does not rescale it).
///
/// EXIF orientation is not applied (neither PIL's `open` nor the processor applies it).
/// Errors name the file (missing, unreadable, not an image, undecodable, truncated JPEG).
pub fn load_image_with(path: &Path, alpha: AlphaHandling) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::input(path, e))?;
    // PIL's JpegImagePlugin._accept: the SOI marker followed by any marker.
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let jpeg = libjpeg::decode(&bytes).map_err(|e| Error::input(path, format!("cannot decode JPEG: {e}")))?;
        return Ok(jpeg_to_rgb(jpeg));
    }
    // A 16-bit grayscale PNG (IHDR colour type 0, depth 16) with a tRNS key comes out of the
    // `image` crate as 16-bit gray + alpha; PIL keeps it as `I;16` with `info["transparency"]`.
    let gray16 = bytes_are_gray16_png(&bytes);
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::input(path, e))?;
    if reader.format().is_none() {
        return Err(Error::input(path, "not a recognised image format (expected PNG, JPEG, BMP or WebP)"));
    }
    let img = reader.decode().map_err(|e| Error::input(path, format!("cannot decode image: {e}")))?;
    Ok(convert_to_rgb(img, alpha, gray16))
}

/// Whether `bytes` are a PNG whose IHDR says 16-bit grayscale without alpha (PIL mode `I;16`).
fn bytes_are_gray16_png(bytes: &[u8]) -> bool {
    // Signature (8), IHDR length and type (8), width and height (8), then depth and colour type.
    bytes.len() > 25
        && bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        && &bytes[12..16] == b"IHDR"
        && bytes[24] == 16
        && bytes[25] == 0
}

/// PIL's `alpha_composite(white, rgba)` for one channel (AlphaComposite.c, 7 extra bits,
/// rounded divisions by 255), with the destination opaque white.
#[inline]
fn composite_over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const PRECISION_BITS: u32 = 7;
    let (c, a) = (c as u32, a as u32);
    // dst.a = 255: blend = 255 * (255 - a); outa255 = a * 255 + blend.
    let outa255 = a * 255 + 255 * (255 - a);
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PRECISION_BITS) as u8
}

/// PIL's `convert("RGB")` of one CMYK JPEG pixel as libjpeg outputs it. PIL unpacks JPEG CMYK
/// with rawmode `CMYK;I` (every channel inverted: Adobe polarity, assumed for every file), then
/// Convert.c's `cmyk2rgb`: `nk = 255 - k; out = nk - MULDIV255(c, nk)` with
/// `MULDIV255(a, b) = (t + (t >> 8)) >> 8, t = a * b + 128`.
#[inline]
fn pil_cmyk_to_rgb(raw: [u8; 4]) -> [u8; 3] {
    let nk = raw[3] as u32; // 255 - (255 - raw_k)
    [0, 1, 2].map(|i| {
        let t = (255 - raw[i] as u32) * nk + 128;
        (nk - (((t >> 8) + t) >> 8)) as u8
    })
}

/// RGB from libjpeg's output, as PIL's `convert("RGB")` (no alpha in JPEG, so both
/// [`AlphaHandling`]s agree).
fn jpeg_to_rgb(jpeg: libjpeg::Decoded) -> RgbImage {
    let libjpeg::Decoded { width, height, mode, data } = jpeg;
    let rgb = match mode {
        libjpeg::Mode::Rgb => data,
        libjpeg::Mode::L => data.iter().flat_map(|&v| [v; 3]).collect(),
        libjpeg::Mode::Cmyk => data.chunks_exact(4).flat_map(|p| pil_cmyk_to_rgb([p[0], p[1], p[2], p[3]])).collect(),
    };
    RgbImage::from_raw(width, height, rgb).expect("libjpeg output size")
}

fn rgb_from_fn(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| Rgb(f(x, y)))
}

/// RGB conversion of an image decoded by the `image` crate, per PIL mode (see
/// [`load_image_with`]): `convert_to_rgb` or plain `convert("RGB")`, as `alpha` says.
/// `gray16`: the file is a 16-bit grayscale PNG, so gray + alpha means `I;16` + tRNS key.
fn convert_to_rgb(img: DynamicImage, alpha: AlphaHandling, gray16: bool) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    // One colour channel `c` under alpha `a`.
    let blend = |c: u8, a: u8| match alpha {
        AlphaHandling::CompositeOverWhite => composite_over_white(c, a),
        AlphaHandling::Drop => c,
    };
    match img {
        DynamicImage::ImageRgb8(im) => im,
        DynamicImage::ImageRgba8(im) => rgb_from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0;
            [0, 1, 2].map(|c| blend(p[c], p[3]))
        }),
        DynamicImage::ImageLuma8(im) => rgb_from_fn(w, h, |x, y| [im.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLumaA8(im) => rgb_from_fn(w, h, |x, y| {
            let [l, a] = im.get_pixel(x, y).0;
            [blend(l, a); 3]
        }),
        // PIL opens a 16-bit grayscale PNG as "I;16"; convert("RGB") clips it to 0..=255.
        DynamicImage::ImageLuma16(im) => rgb_from_fn(w, h, |x, y| [im.get_pixel(x, y).0[0].min(255) as u8; 3]),
        // `I;16` with a tRNS key (alpha 0 or 65535 here): clipped like `I;16`, the key
        // transparent (PIL's convert("RGBA") compares the 16-bit values).
        DynamicImage::ImageLumaA16(im) if gray16 => rgb_from_fn(w, h, |x, y| {
            let [l, a] = im.get_pixel(x, y).0;
            [blend(l.min(255) as u8, (a >> 8) as u8); 3]
        }),
        // 16-bit LA / RGB / RGBA PNGs: PIL's unpackers keep the most significant byte.
        DynamicImage::ImageLumaA16(im) => rgb_from_fn(w, h, |x, y| {
            let [l, a] = im.get_pixel(x, y).0;
            [blend((l >> 8) as u8, (a >> 8) as u8); 3]
        }),
        DynamicImage::ImageRgb16(im) => rgb_from_fn(w, h, |x, y| im.get_pixel(x, y).0.map(|v| (v >> 8) as u8)),
        DynamicImage::ImageRgba16(im) => rgb_from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0.map(|v| (v >> 8) as u8);
            [0, 1, 2].map(|c| blend(p[c], p[3]))
        }),
        // Float images do not come out of the decoders enabled here; convert plainly.
        other => other.to_rgb8(),
    }
}

/// LLaVA's `expand2square`: a `max(w, h)`-square canvas of `background`, the image pasted at
/// `(0, (w - h) // 2)` when wider, at `((h - w) // 2, 0)` when taller; square images are
/// returned unchanged.
pub fn expand_to_square(img: &RgbImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let (ox, oy) = if w > h { (0, (w - h) / 2) } else { ((h - w) / 2, 0) };
    let mut out = ImageBuffer::from_pixel(side, side, Rgb(background));
    image::imageops::replace(&mut out, img, ox as i64, oy as i64);
    out
}

// ------------------------------------------------------------------------------------------
// PIL resampling (Resample.c), 8 bits per channel
// ------------------------------------------------------------------------------------------

/// Fixed-point fraction bits of PIL's 8-bit convolution coefficients: 32 - 8 - 2.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel convolution windows along one axis, as PIL's `precompute_coeffs`.
struct Coeffs {
    /// Maximum taps per output pixel (row stride of `weights`).
    ksize: usize,
    /// `(first input index, number of taps)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// Normalized weights, `ksize` per output pixel, zero beyond the tap count.
    weights: Vec<f64>,
}

/// PIL's `precompute_coeffs` for the box `[0, in_size)`, with its exact floating-point steps.
fn precompute_coeffs(in_size: usize, out_size: usize, filter: Resample) -> Coeffs {
    // PIL passes the box edges as C floats; for whole-image boxes `in1 - in0` is exact.
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0f64; out_size * ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero, like `as`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let k = &mut weights[xx * ksize..xx * ksize + n];
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate() {
            let w = filter.kernel((((x as i64 + xmin) as f64 - center) + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        if ww != 0.0 {
            for kx in k.iter_mut() {
                *kx /= ww;
            }
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { ksize, bounds, weights }
}

/// PIL's `normalize_coeffs_8bpc`: weights to `PRECISION_BITS` fixed point, rounded half away
/// from zero.
fn fixed_point(weights: &[f64]) -> Vec<i32> {
    let one = (1u32 << PRECISION_BITS) as f64;
    weights.iter().map(|&k| if k < 0.0 { (-0.5 + k * one) as i32 } else { (0.5 + k * one) as i32 }).collect()
}

#[inline]
fn clip8(acc: i32) -> u8 {
    if acc >= 1 << (PRECISION_BITS + 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// One tap sum for three channels; `px(i)` fetches input pixel `i` of the window's axis.
#[inline]
fn convolve3(start: usize, k: &[i32], px: impl Fn(usize) -> [u8; 3]) -> [u8; 3] {
    let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
    for (i, &kk) in k.iter().enumerate() {
        let p = px(start + i);
        for c in 0..3 {
            acc[c] += p[c] as i32 * kk;
        }
    }
    acc.map(clip8)
}

/// `PIL.Image.resize((width, height), resample=BICUBIC)` on an RGB `uint8` image, bit-exact.
///
/// # Panics
/// If `width`, `height` or the input has a zero dimension (PIL raises `ValueError`); use
/// [`pil_resize`] for a `Result`.
pub fn pil_resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    pil_resize(img, width, height, Resample::Bicubic).expect("pil_resize_bicubic: zero-sized image")
}

/// `PIL.Image.resize((width, height), resample)` on an RGB `uint8` image, bit-exact with
/// Pillow 12 for every filter: the separable fixed-point convolution of `Resample.c`
/// (antialiased: the kernel is widened by the downscale factor), horizontal pass first into a
/// `uint8` image, then the vertical pass; a pass whose size does not change is skipped, and an
/// unchanged size returns a copy. `Nearest` follows PIL's affine nearest-neighbour scaling.
pub fn pil_resize(img: &RgbImage, width: u32, height: u32, resample: Resample) -> Result<RgbImage> {
    let (in_w, in_h) = img.dimensions();
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return Err(Error::invalid(format!("resize {in_w}x{in_h} -> {width}x{height}: height and width must be > 0")));
    }
    if (width, height) == (in_w, in_h) {
        return Ok(img.clone());
    }
    if resample == Resample::Nearest {
        return Ok(resize_nearest(img, width, height));
    }
    let (in_w, in_h, out_w, out_h) = (in_w as usize, in_h as usize, width as usize, height as usize);
    let horiz = precompute_coeffs(in_w, out_w, resample);
    let vert = precompute_coeffs(in_h, out_h, resample);
    let kh = fixed_point(&horiz.weights);
    let kv = fixed_point(&vert.weights);
    let src = img.as_raw();

    // Horizontal pass, only over the source rows the vertical pass reads (PIL's ybox trimming;
    // it changes no value).
    let (row0, row1) = if out_h != in_h {
        let first = vert.bounds[0].0;
        let (lb, ln) = vert.bounds[out_h - 1];
        (first, lb + ln)
    } else {
        (0, in_h)
    };
    let (tmp, tmp_w, tmp_row0) = if out_w != in_w {
        let mut tmp = vec![0u8; (row1 - row0) * out_w * 3];
        for y in row0..row1 {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            let out_row = &mut tmp[(y - row0) * out_w * 3..(y - row0 + 1) * out_w * 3];
            for (xx, &(xmin, n)) in horiz.bounds.iter().enumerate() {
                let k = &kh[xx * horiz.ksize..xx * horiz.ksize + n];
                let p = convolve3(xmin, k, |i| [row[3 * i], row[3 * i + 1], row[3 * i + 2]]);
                out_row[3 * xx..3 * xx + 3].copy_from_slice(&p);
            }
        }
        (tmp, out_w, row0)
    } else {
        (src.to_vec(), in_w, 0)
    };

    if out_h == in_h {
        return Ok(RgbImage::from_raw(width, height, tmp).expect("buffer size"));
    }
    let mut out = vec![0u8; out_h * tmp_w * 3];
    for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &kv[yy * vert.ksize..yy * vert.ksize + n];
        let out_row = &mut out[yy * tmp_w * 3..(yy + 1) * tmp_w * 3];
        for xx in 0..tmp_w {
            let p = convolve3(ymin - tmp_row0, k, |i| {
                let o = (i * tmp_w + xx) * 3;
                [tmp[o], tmp[o + 1], tmp[o + 2]]
            });
            out_row[3 * xx..3 * xx + 3].copy_from_slice(&p);
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer size"))
}

/// PIL's nearest-neighbour resize (`ImagingScaleAffine`): source coordinate
/// `floor(scale * 0.5 + x * scale)`, accumulated step by step in `f64` as PIL does.
fn resize_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let table = |in_size: u32, out_size: u32| -> Vec<Option<u32>> {
        let a = in_size as f64 / out_size as f64;
        let mut o = a * 0.5;
        (0..out_size)
            .map(|_| {
                let i = if o < 0.0 { -1 } else { o as i64 };
                o += a;
                (i >= 0 && i < in_size as i64).then_some(i as u32)
            })
            .collect()
    };
    let xs = table(in_w, width);
    let ys = table(in_h, height);
    let mut out = RgbImage::new(width, height);
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = sy else { continue };
        for (x, sx) in xs.iter().enumerate() {
            let Some(sx) = sx else { continue };
            out.put_pixel(x as u32, y as u32, *img.get_pixel(*sx, *sy));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// JPEG decoding with libjpeg-turbo (the only unsafe code in this module)
// ------------------------------------------------------------------------------------------

/// JPEG decoding with the decoder PIL uses: libjpeg-turbo's, as vendored and built from C by
/// `mozjpeg-sys` (mozjpeg changes only the encoder; no SIMD here, and libjpeg-turbo's SIMD paths
/// for the accurate IDCT, upsampling and colour conversion are bit-exact with its C paths).
///
/// It is configured as Pillow's `JpegDecode.c` is for `Image.open(...).load()` (no `draft`):
/// `jpeg_color_space` left to libjpeg's guess (JFIF / Adobe markers), the output colour space
/// from the number of components as `JpegImagePlugin` picks its mode (1: `L` -> grayscale,
/// 3: `RGB` -> RGB, 4: `CMYK` -> CMYK, anything else is refused), the default accurate integer
/// IDCT (`JDCT_ISLOW`) and fancy upsampling, no scaling, no EXIF orientation. Arithmetic-coded
/// files decode, as with Pillow's libjpeg-turbo.
///
/// libjpeg reports fatal errors through `error_exit`, which must not return; the default one
/// calls `exit()`. Here it unwinds instead (with `resume_unwind`, so no panic message is
/// printed) to a `catch_unwind` in [`decode`]; `mozjpeg-sys`'s `unwinding` feature compiles
/// the C code with `-fexceptions` and declares every callback `extern "C-unwind"`, which makes
/// unwinding through the C frames defined. This needs `panic = "unwind"` (the default; with
/// `panic = "abort"` a corrupt JPEG would abort the process). Warnings print nothing; running
/// out of data before the last row is an error (Pillow raises "image file is truncated"),
/// other warnings are ignored (Pillow's `output_message` is a no-op too).
mod libjpeg {
    use std::ffi::{c_char, c_int, c_ulong, CStr};
    use std::panic::{self, AssertUnwindSafe};

    use mozjpeg_sys as sys;

    /// PIL's limit for `Image.open`: more than `2 * Image.MAX_IMAGE_PIXELS` pixels raises
    /// `DecompressionBombError`.
    const MAX_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);
    /// libjpeg's `JMSG_LENGTH_MAX`: the buffer size `format_message` expects.
    const JMSG_LENGTH_MAX: usize = 200;

    /// The PIL mode of a decoded JPEG, i.e. what libjpeg was asked to output.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Mode {
        /// One byte per pixel (`JCS_GRAYSCALE`).
        L,
        /// Three bytes per pixel (`JCS_RGB`).
        Rgb,
        /// Four bytes per pixel (`JCS_CMYK`) as libjpeg writes them: Adobe-inverted.
        Cmyk,
    }

    /// Decoded samples, row-major, `Mode`-many bytes per pixel.
    pub(super) struct Decoded {
        pub width: u32,
        pub height: u32,
        pub mode: Mode,
        pub data: Vec<u8>,
    }

    /// Decodes a whole JPEG file held in memory. The error is libjpeg's message (or ours).
    pub(super) fn decode(data: &[u8]) -> Result<Decoded, String> {
        let dec = Decompressor::new();
        match panic::catch_unwind(AssertUnwindSafe(|| dec.run(data))) {
            Ok(result) => result,
            Err(payload) => match payload.downcast::<Failure>() {
                Ok(failure) => Err(failure.0),
                // A bug of ours, not libjpeg's report: let it continue as the panic it is.
                Err(other) => panic::resume_unwind(other),
            },
        }
        // `dec` is dropped here (or during the unwinding above): jpeg_destroy_decompress.
    }

    /// The payload unwound from libjpeg's callbacks to `decode`: the error message.
    struct Failure(String);

    /// libjpeg's error manager with our state after it. `repr(C)` with `base` first: libjpeg
    /// hands the callbacks `cinfo->err`, a pointer to `base`, which is then also one to `Self`.
    #[repr(C)]
    struct ErrorMgr {
        base: sys::jpeg_error_mgr,
        /// Set once every scanline is out: running out of data after that (a missing EOI
        /// marker) is fine, as in Pillow, which stops reading when it has all rows.
        all_rows_read: bool,
    }

    /// Everything libjpeg points into, in one heap allocation that never moves.
    #[repr(C)]
    struct State {
        err: ErrorMgr,
        cinfo: sys::jpeg_decompress_struct,
    }

    /// Owns a `State` (from `Box::into_raw`); every access goes through this raw pointer so
    /// that the pointers libjpeg keeps (`cinfo.common.err`) stay valid.
    struct Decompressor(*mut State);

    impl Decompressor {
        fn new() -> Decompressor {
            // SAFETY: both structs are plain C data (integers, raw pointers, `Option`s of
            // function pointers, C-like enums whose 0 is a valid variant), for which all-zero
            // is a valid value; `jpeg_std_error` and `jpeg_create_decompress` initialise them.
            let state = unsafe {
                State { err: ErrorMgr { base: std::mem::zeroed(), all_rows_read: false }, cinfo: std::mem::zeroed() }
            };
            Decompressor(Box::into_raw(Box::new(state)))
        }

        /// Sets up the error manager and decompresses; run under `catch_unwind`, since any
        /// libjpeg call may unwind out of `error_exit` / `emit_message`.
        fn run(&self, data: &[u8]) -> Result<Decoded, String> {
            let p = self.0;
            // SAFETY: `p` is the live, exclusively owned allocation from `new`; the error
            // manager is installed before any call that can report an error, and the callbacks
            // only reach it through `cinfo.common.err` (a different field than `cinfo`, so no
            // reference here aliases it). jpeg_mem_src keeps `data`'s pointer, which libjpeg
            // reads only inside the calls below; `decode` destroys the decompressor while
            // `data` is still borrowed. Each scanline call gets one row pointer with `row`
            // writable bytes, exactly one output row (`output_width * output_components`).
            unsafe {
                let err = &mut (*p).err.base;
                sys::jpeg_std_error(err);
                err.error_exit = Some(error_exit);
                err.emit_message = Some(emit_message);
                err.output_message = Some(output_message);
                (*p).cinfo.common.err = std::ptr::addr_of_mut!((*p).err.base);
                sys::jpeg_create_decompress(std::ptr::addr_of_mut!((*p).cinfo));
                let cinfo = &mut (*p).cinfo;
                sys::jpeg_mem_src(cinfo, data.as_ptr(), data.len() as c_ulong);
                sys::jpeg_read_header(cinfo, 1);
                let (mode, space, channels) = match cinfo.num_components {
                    1 => (Mode::L, sys::J_COLOR_SPACE::JCS_GRAYSCALE, 1),
                    3 => (Mode::Rgb, sys::J_COLOR_SPACE::JCS_RGB, 3),
                    4 => (Mode::Cmyk, sys::J_COLOR_SPACE::JCS_CMYK, 4),
                    n => return Err(format!("cannot handle {n}-component images (PIL takes 1, 3 or 4)")),
                };
                cinfo.out_color_space = space;
                // libjpeg's defaults, which Pillow keeps outside draft mode; restated.
                cinfo.dct_method = sys::J_DCT_METHOD::JDCT_ISLOW;
                cinfo.do_fancy_upsampling = 1;
                let pixels = cinfo.image_width as u64 * cinfo.image_height as u64;
                if pixels > MAX_PIXELS {
                    return Err(format!(
                        "{}x{} is {pixels} pixels, over PIL's decompression-bomb limit of {MAX_PIXELS}",
                        cinfo.image_width, cinfo.image_height
                    ));
                }
                sys::jpeg_start_decompress(cinfo);
                let (width, height) = (cinfo.output_width, cinfo.output_height);
                if cinfo.output_components != channels {
                    return Err(format!("libjpeg produced {} components, not {channels}", cinfo.output_components));
                }
                let row = width as usize * channels as usize;
                let mut out = Vec::new();
                out.try_reserve_exact(row * height as usize)
                    .map_err(|_| format!("cannot allocate {width}x{height}x{channels} bytes"))?;
                out.resize(row * height as usize, 0u8);
                while cinfo.output_scanline < height {
                    let y = cinfo.output_scanline as usize;
                    let mut dst = out[y * row..(y + 1) * row].as_mut_ptr();
                    if sys::jpeg_read_scanlines(cinfo, &mut dst, 1) != 1 {
                        // Only a suspending data source returns 0 rows; jpeg_mem_src does not.
                        return Err("libjpeg returned no scanline".into());
                    }
                }
                (*p).err.all_rows_read = true;
                sys::jpeg_finish_decompress(cinfo);
                Ok(Decoded { width, height, mode, data: out })
            }
        }
    }

    impl Drop for Decompressor {
        fn drop(&mut self) {
            // SAFETY: `self.0` came from `Box::into_raw` and is freed only here.
            // jpeg_destroy_decompress is valid in every state `run` can leave (also after an
            // error unwound out of libjpeg, and on the zeroed struct when creation never ran or
            // failed: it then only frees nothing), and reports no errors.
            unsafe {
                sys::jpeg_destroy_decompress(&mut (*self.0).cinfo);
                drop(Box::from_raw(self.0));
            }
        }
    }

    /// libjpeg's message for the current `msg_code` (`format_message`, e.g. "Premature end of
    /// JPEG file").
    ///
    /// # Safety
    /// `cinfo` must be a libjpeg object whose error manager `jpeg_std_error` initialised.
    unsafe fn message(cinfo: &mut sys::jpeg_common_struct) -> String {
        let mut buf = [0 as c_char; JMSG_LENGTH_MAX];
        // SAFETY: `cinfo.err` is set (caller). The binding types `format_message`'s buffer as
        // `&[u8; 80]`, but the C function is `void (*)(j_common_ptr, char *)` and writes up to
        // JMSG_LENGTH_MAX bytes, NUL included; calling it through the C signature with a buffer
        // of that size is sound (references and raw pointers are passed alike).
        unsafe {
            let Some(format) = (*cinfo.err).format_message else { return "unknown libjpeg error".into() };
            let format: unsafe extern "C-unwind" fn(*mut sys::jpeg_common_struct, *mut c_char) =
                std::mem::transmute(format);
            format(cinfo, buf.as_mut_ptr());
            buf[JMSG_LENGTH_MAX - 1] = 0;
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        }
    }

    /// libjpeg's fatal-error callback: unwinds to `decode` with the message.
    unsafe extern "C-unwind" fn error_exit(cinfo: &mut sys::jpeg_common_struct) {
        // SAFETY: libjpeg calls this with its object, whose error manager is ours.
        let msg = unsafe { message(cinfo) };
        panic::resume_unwind(Box::new(Failure(msg)))
    }

    /// libjpeg's warning / trace callback: silent; running out of data before the last row is
    /// made an error (see the module notes).
    unsafe extern "C-unwind" fn emit_message(cinfo: &mut sys::jpeg_common_struct, msg_level: c_int) {
        if msg_level >= 0 {
            return; // trace messages
        }
        // SAFETY: `cinfo.err` points to `ErrorMgr::base`, the first field of our `repr(C)`
        // `ErrorMgr` (set in `run`), so it is also a valid pointer to the whole `ErrorMgr`.
        let err = unsafe { &mut *cinfo.err.cast::<ErrorMgr>() };
        err.base.num_warnings += 1;
        if err.base.msg_code == sys::JWRN_JPEG_EOF as c_int && !err.all_rows_read {
            // SAFETY: as above.
            let msg = unsafe { message(cinfo) };
            panic::resume_unwind(Box::new(Failure(format!("{msg} (the file is truncated)"))))
        }
    }

    /// libjpeg's message printer (reached only through the default handlers replaced above):
    /// prints nothing.
    unsafe extern "C-unwind" fn output_message(_cinfo: &mut sys::jpeg_common_struct) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{Dtype, SafeTensors};
    use serde_json::Value;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocessing")
    }

    struct Refs {
        index: Value,
        bytes: Vec<u8>,
    }

    impl Refs {
        fn load() -> Refs {
            let dir = fixtures();
            let index = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
            let bytes = std::fs::read(dir.join("refs.safetensors")).unwrap();
            Refs { index, bytes }
        }

        fn cases(&self, group: &str) -> Vec<Value> {
            self.index[group].as_array().unwrap_or_else(|| panic!("no {group} in index")).clone()
        }

        /// (shape, raw bytes) of one array.
        fn raw(&self, key: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
            let st = SafeTensors::deserialize(&self.bytes).unwrap();
            let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            (t.shape().to_vec(), t.dtype(), t.data().to_vec())
        }

        fn image(&self, key: &str) -> RgbImage {
            let (shape, dtype, data) = self.raw(key);
            assert_eq!(dtype, Dtype::U8, "{key}");
            assert_eq!(shape.len(), 3, "{key}");
            assert_eq!(shape[2], 3, "{key}");
            RgbImage::from_raw(shape[1] as u32, shape[0] as u32, data).unwrap()
        }

        fn f32s(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
            let (shape, dtype, data) = self.raw(key);
            assert_eq!(dtype, Dtype::F32, "{key}");
            let v = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (shape, v)
        }
    }

    fn s<'a>(v: &'a Value, k: &str) -> &'a str {
        v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"))
    }
    fn u(v: &Value, k: &str) -> u32 {
        v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")) as u32
    }

    /// (number of differing channel values, largest difference).
    fn diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
        assert_eq!(a.dimensions(), b.dimensions());
        let mut n = 0;
        let mut m = 0;
        for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
            let d = x.abs_diff(*y);
            if d > 0 {
                n += 1;
                m = m.max(d);
            }
        }
        (n, m)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icet-preproc-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resize_is_bit_exact_with_pil() {
        let refs = Refs::load();
        let mut failures = vec![];
        let cases = refs.cases("resize");
        for case in &cases {
            let src = refs.image(s(case, "source"));
            let want = refs.image(s(case, "key"));
            let filter = Resample::from_pil(case["resample"].as_i64().unwrap()).unwrap();
            let got = pil_resize(&src, u(case, "width"), u(case, "height"), filter).unwrap();
            let (n, m) = diff(&got, &want);
            if n > 0 {
                failures.push(format!("{}: {n} values differ, max {m}", s(case, "key")));
            }
            if filter == Resample::Bicubic {
                assert_eq!(pil_resize_bicubic(&src, u(case, "width"), u(case, "height")), got);
            }
        }
        assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }

    #[test]
    fn decode_matches_pil_for_every_fixture() {
        // Every source, JPEG included, in both alpha modes: transformers' convert_to_rgb
        // (`key`) and the original LLaVA's Image.open(f).convert('RGB') (`drop_key`).
        let refs = Refs::load();
        let mut failures = vec![];
        let mut checked = 0;
        for case in refs.cases("decode") {
            let file = s(&case, "file");
            for (alpha, key) in [(AlphaHandling::CompositeOverWhite, "key"), (AlphaHandling::Drop, "drop_key")] {
                let got = load_image_with(&fixtures().join(file), alpha).unwrap();
                let want = refs.image(s(&case, key));
                if got.dimensions() != want.dimensions() {
                    failures.push(format!("{file} {alpha:?}: size {:?} vs {:?}", got.dimensions(), want.dimensions()));
                    continue;
                }
                let (n, m) = diff(&got, &want);
                if n > 0 {
                    failures.push(format!(
                        "{file} (PIL mode {}) {alpha:?}: {n} values differ, max {m}",
                        s(&case, "pil_mode")
                    ));
                }
                checked += 1;
            }
            if alpha_free(&case) {
                assert_eq!(refs.image(s(&case, "key")), refs.image(s(&case, "drop_key")), "{file}");
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let jpegs = refs.cases("decode").iter().filter(|c| s(c, "file").ends_with(".jpg")).count();
        // 8 JPEGs (4:2:0, 4:2:2, 4:4:4, progressive, grayscale, CMYK) among 29 sources.
        assert!(jpegs >= 8 && checked == 2 * refs.cases("decode").len() && checked >= 58, "{jpegs} JPEGs, {checked}");
        // `load_image` is the composite mode.
        let rgba = fixtures().join("src/rgba_40x30.png");
        assert_eq!(load_image(&rgba).unwrap(), load_image_with(&rgba, AlphaHandling::CompositeOverWhite).unwrap());
        assert_ne!(load_image(&rgba).unwrap(), load_image_with(&rgba, AlphaHandling::Drop).unwrap());
    }

    /// Sources without any transparency, for which both alpha modes must agree.
    fn alpha_free(case: &Value) -> bool {
        let file = s(case, "file");
        !["RGBA", "LA", "P", "I;16"].contains(&s(case, "pil_mode")) && !file.contains("trns")
    }

    #[test]
    fn jpeg_cmyk_uses_pil_formula() {
        // Convert.c cmyk2rgb after the "CMYK;I" unpack, at a few spots (libjpeg's raw samples).
        assert_eq!(pil_cmyk_to_rgb([255, 255, 255, 255]), [255, 255, 255]); // no ink
        assert_eq!(pil_cmyk_to_rgb([0, 0, 0, 255]), [0, 0, 0]); // full C, M, Y
        assert_eq!(pil_cmyk_to_rgb([255, 255, 255, 0]), [0, 0, 0]); // full K
        assert_eq!(pil_cmyk_to_rgb([127, 200, 13, 90]), [45, 71, 5]); // checked with Pillow 12
    }

    /// A JPEG fixture's bytes.
    fn jpeg_bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixtures().join("src").join(name)).unwrap()
    }

    #[test]
    fn broken_jpegs_are_errors_naming_the_file() {
        let dir = temp_dir("jpeg");
        let data = jpeg_bytes("j420_q90_120x90.jpg");
        let prog = jpeg_bytes("jprog_420_q80_120x90.jpg");
        let mut garbage = vec![0xFF, 0xD8, 0xFF];
        garbage.extend(b"this is not JPEG data, only its first three bytes are".repeat(20));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated.jpg", data[..data.len() / 2].to_vec()),
            // PIL: "image file is truncated" too, since libjpeg's entropy decoder reads ahead.
            ("no-eoi.jpg", data[..data.len() - 2].to_vec()),
            ("header-only.jpg", data[..300].to_vec()),
            ("truncated-progressive.jpg", prog[..prog.len() * 2 / 3].to_vec()),
            ("progressive-no-eoi.jpg", prog[..prog.len() - 2].to_vec()),
            ("garbage.jpg", garbage),
            ("soi-only.jpg", vec![0xFF, 0xD8, 0xFF]),
        ];
        for (name, bytes) in cases {
            let path = dir.join(name);
            std::fs::write(&path, &bytes).unwrap();
            for alpha in [AlphaHandling::CompositeOverWhite, AlphaHandling::Drop] {
                let e = load_image_with(&path, alpha).unwrap_err().to_string();
                assert!(e.contains(&path.display().to_string()), "{name}: {e}");
                assert!(e.contains("cannot decode JPEG: "), "{name}: {e}");
            }
        }
        let e = load_image(&dir.join("truncated.jpg")).unwrap_err().to_string();
        assert!(e.contains("Premature end of JPEG file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jpeg_warnings_are_ignored_as_in_pil() {
        // What PIL decodes despite libjpeg warnings decodes here, to the same pixels where
        // the data are intact.
        let dir = temp_dir("jpeg-warnings");
        let data = jpeg_bytes("j420_q90_120x90.jpg");
        let clean = load_image(&fixtures().join("src/j420_q90_120x90.jpg")).unwrap();
        // Bytes after EOI, and junk between two markers (JWRN_EXTRANEOUS_DATA).
        let mut trailing = data.clone();
        trailing.extend(b"trailing garbage");
        let app0_end = 4 + u16::from_be_bytes([data[4], data[5]]) as usize;
        let mut junk = data[..app0_end].to_vec();
        junk.extend([0x00, 0x13, 0x37]);
        junk.extend(&data[app0_end..]);
        for (name, bytes) in [("trailing.jpg", trailing), ("junk.jpg", junk)] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(load_image(&path).unwrap(), clean, "{name}");
        }
        // Corrupt entropy-coded data: a damaged but complete image, as PIL gives.
        let mut corrupt = data.clone();
        let mid = data.len() * 54 / 100;
        corrupt[mid..mid + 6].copy_from_slice(&[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]);
        let path = dir.join("corrupt.jpg");
        std::fs::write(&path, corrupt).unwrap();
        let img = load_image(&path).unwrap();
        assert_eq!(img.dimensions(), clean.dimensions());
        assert_ne!(img, clean);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jpeg_decoding_is_thread_safe() {
        let path = fixtures().join("src/j444_q75_120x90.jpg");
        let want = load_image(&path).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..20 {
                            assert_eq!(load_image(&path).unwrap(), want);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
    }

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

    /// Straightforward f64 weights for output pixel `xx`: the kernel over every input pixel,
    /// widened by the downscale factor, normalized. No support trimming or fixed point.
    fn naive_weights(in_size: usize, out_size: usize, xx: usize, filter: Resample) -> Vec<f64> {
        let scale = in_size as f64 / out_size as f64;
        let fs = scale.max(1.0);
        let center = (xx as f64 + 0.5) * scale;
        let w: Vec<f64> = (0..in_size).map(|i| filter.kernel((i as f64 + 0.5 - center) / fs)).collect();
        let sum: f64 = w.iter().sum();
        w.iter().map(|v| v / sum).collect()
    }

    #[test]
    fn fixed_point_weights_match_naive_filter() {
        let one = (1u32 << PRECISION_BITS) as f64;
        for filter in [Resample::Bicubic, Resample::Bilinear, Resample::Lanczos, Resample::Hamming] {
            for (in_size, out_size) in [(120, 47), (90, 33), (37, 100), (7, 3), (5, 1), (1, 9), (336, 224), (1000, 336)]
            {
                let c = precompute_coeffs(in_size, out_size, filter);
                let fixed = fixed_point(&c.weights);
                for xx in 0..out_size {
                    let naive = naive_weights(in_size, out_size, xx, filter);
                    let (xmin, n) = c.bounds[xx];
                    for (i, &nw) in naive.iter().enumerate() {
                        let f = if i >= xmin && i < xmin + n { fixed[xx * c.ksize + i - xmin] } else { 0 };
                        let d = (f as f64 - nw * one).abs();
                        assert!(
                            d <= 1.0,
                            "{filter:?} {in_size}->{out_size} out {xx} in {i}: fixed {f} naive {}",
                            nw * one
                        );
                    }
                }
            }
        }
    }

    /// Naive separable resize in f64, rounding and clipping to u8 between and after the passes.
    fn naive_resize(img: &RgbImage, w: u32, h: u32, filter: Resample) -> RgbImage {
        let (iw, ih) = img.dimensions();
        let to_u8 = |v: f64| v.round().clamp(0.0, 255.0) as u8;
        let tmp = if w != iw {
            ImageBuffer::from_fn(w, ih, |x, y| {
                let k = naive_weights(iw as usize, w as usize, x as usize, filter);
                let mut acc = [0f64; 3];
                for (i, kk) in k.iter().enumerate() {
                    let p = img.get_pixel(i as u32, y).0;
                    for c in 0..3 {
                        acc[c] += p[c] as f64 * kk;
                    }
                }
                Rgb(acc.map(to_u8))
            })
        } else {
            img.clone()
        };
        if h == ih {
            return tmp;
        }
        ImageBuffer::from_fn(w, h, |x, y| {
            let k = naive_weights(ih as usize, h as usize, y as usize, filter);
            let mut acc = [0f64; 3];
            for (i, kk) in k.iter().enumerate() {
                let p = tmp.get_pixel(x, i as u32).0;
                for c in 0..3 {
                    acc[c] += p[c] as f64 * kk;
                }
            }
            Rgb(acc.map(to_u8))
        })
    }

    #[test]
    fn fixed_point_resize_matches_naive_within_one() {
        let refs = Refs::load();
        let src = refs.image("decode/rgb_120x90.png");
        let mut differing = 0;
        let mut total = 0;
        for filter in [Resample::Bicubic, Resample::Bilinear] {
            for (w, h) in [(47, 33), (120, 33), (47, 90), (157, 113), (1, 1), (200, 40)] {
                let fast = pil_resize(&src, w, h, filter).unwrap();
                let naive = naive_resize(&src, w, h, filter);
                let (n, m) = diff(&fast, &naive);
                // One pass: the fixed-point sum is within 2^-20 of the exact one, so rounding can
                // differ by at most 1. Two passes: an intermediate off by 1 is then weighted by
                // the second pass, so allow 1 per pass.
                let bound = if w == 120 || h == 90 { 1 } else { 2 };
                assert!(m <= bound, "{filter:?} {w}x{h}: max diff {m}");
                differing += n;
                total += fast.as_raw().len();
            }
        }
        // Ties are rare: nearly every value agrees exactly.
        assert!(differing * 100 < total, "{differing} of {total} values differ");
    }

    #[test]
    fn resize_edge_cases() {
        let img = RgbImage::from_fn(5, 4, |x, y| Rgb([x as u8 * 40, y as u8 * 60, 7]));
        assert_eq!(pil_resize(&img, 5, 4, Resample::Bicubic).unwrap(), img);
        assert!(pil_resize(&img, 0, 4, Resample::Bicubic).is_err());
        assert!(pil_resize(&RgbImage::new(0, 3), 2, 2, Resample::Bilinear).is_err());
        // A constant image stays constant under every filter (weights sum to one).
        let flat = RgbImage::from_pixel(13, 9, Rgb([200, 3, 255]));
        for f in [0, 1, 2, 3, 4, 5] {
            let r = pil_resize(&flat, 29, 4, Resample::from_pil(f).unwrap()).unwrap();
            assert!(r.pixels().all(|p| p.0 == [200, 3, 255]), "filter {f}");
        }
        assert!(Resample::from_pil(6).is_err());
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
    fn center_crop_offsets() {
        let img = RgbImage::from_fn(5, 4, |x, y| Rgb([x as u8 + 1, y as u8 + 1, 9]));
        // Crop 2x3 (w x h) of 5x4: left (5-2)//2 = 1, top (4-3)//2 = 0.
        let c = center_crop(&img, 3, 2);
        assert_eq!(c.get_pixel(0, 0).0, [2, 1, 9]);
        // Larger crop 8 x 7 (w x h): pad left ceil(3/2)=2, top ceil(3/2)=2 with zeros.
        let c = center_crop(&img, 7, 8);
        assert_eq!(c.dimensions(), (8, 7));
        assert_eq!(c.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(2, 2).0, [1, 1, 9]);
        assert_eq!(c.get_pixel(6, 5).0, [5, 4, 9]);
        assert_eq!(c.get_pixel(7, 6).0, [0, 0, 0]);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = temp_dir("errors");
        let missing = dir.join("does-not-exist.png");
        let e = load_image(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");

        let text = dir.join("not-an-image.png");
        std::fs::write(&text, "hello, I am not a PNG\n").unwrap();
        let e = load_image(&text).unwrap_err().to_string();
        assert!(e.contains(&text.display().to_string()), "{e}");

        // A real PNG header followed by garbage: recognised, then fails to decode.
        let png = std::fs::read(fixtures().join("src/rgb_37x53.png")).unwrap();
        let truncated = dir.join("truncated.png");
        std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
        let e = load_image(&truncated).unwrap_err().to_string();
        assert!(e.contains(&truncated.display().to_string()), "{e}");

        let e = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap_err().to_string();
        assert!(e.contains("preprocessor_config.json"), "{e}");
        let bad = dir.join("bad_config.json");
        std::fs::write(&bad, r#"{"size": {"height": 3}}"#).unwrap();
        let e = ImageProcessorConfig::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("bad_config.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn alpha_composite_matches_pil_formula() {
        // Spot values of PIL's alpha_composite(white, (c, a)).
        assert_eq!(composite_over_white(0, 0), 255);
        assert_eq!(composite_over_white(0, 255), 0);
        assert_eq!(composite_over_white(77, 255), 77);
        assert_eq!(composite_over_white(0, 128), 127);
        assert_eq!(composite_over_white(255, 1), 255);
    }
}
