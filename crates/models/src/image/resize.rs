//! `PIL.Image.resize` on RGB `uint8` images, bit-exact with Pillow 12 for all six filters
//! (Resample.c's two-pass fixed-point convolution, horizontal then vertical through a `uint8`
//! intermediate; nearest as PIL's affine scaling).
use image::RgbImage;

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_refs::{diff, s, u, Refs};
    use image::{ImageBuffer, Rgb};

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
}
