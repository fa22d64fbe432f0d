//! Image files to RGB exactly as PIL opens and converts them (see [`load_image_with`]).
use std::path::Path;

use image::{DynamicImage, ImageBuffer, Rgb, RgbImage};

use super::jpeg;
use crate::error::{Error, Result};

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
///   `jpeg` module), so the pixels are PIL's to the bit: 3-component files are decoded to
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
        let jpeg = jpeg::decode(&bytes).map_err(|e| Error::input(path, format!("cannot decode JPEG: {e}")))?;
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

/// The `(width, height)` [`load_image`] gives for `path`, read from the file's header where
/// the format allows (no pixels decoded; a full decode where it does not): what a processor
/// whose output size depends on the image (LLaVA-NeXT's tile grid, hence its prompt's image
/// slots) needs before any vision pass. Errors name the file.
pub fn image_size(path: &Path) -> Result<(u32, u32)> {
    let header = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .ok()
        .filter(|r| r.format().is_some())
        .and_then(|r| r.into_dimensions().ok());
    match header {
        Some(size) => Ok(size),
        None => load_image(path).map(|img| img.dimensions()),
    }
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
fn jpeg_to_rgb(jpeg: jpeg::Decoded) -> RgbImage {
    let jpeg::Decoded { width, height, mode, data } = jpeg;
    let rgb = match mode {
        jpeg::Mode::Rgb => data,
        jpeg::Mode::L => data.iter().flat_map(|&v| [v; 3]).collect(),
        jpeg::Mode::Cmyk => data.chunks_exact(4).flat_map(|p| pil_cmyk_to_rgb([p[0], p[1], p[2], p[3]])).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_refs::{diff, fixtures, s, temp_dir, Refs};
    use serde_json::Value;

    /// The header size is the decoded size for every decode fixture (every format and mode).
    #[test]
    fn image_size_is_the_decoded_size() {
        let refs = Refs::load();
        let cases = refs.cases("decode");
        assert!(cases.len() > 10);
        for case in cases {
            let path = fixtures().join(s(&case, "file"));
            assert_eq!(image_size(&path).unwrap(), load_image(&path).unwrap().dimensions(), "{}", path.display());
        }
        let e = image_size(Path::new("/no/such/image.png")).unwrap_err().to_string();
        assert!(e.contains("/no/such/image.png"), "{e}");
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
