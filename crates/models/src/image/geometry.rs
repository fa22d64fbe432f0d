//! Geometric steps of image processors: transformers' `center_crop` and LLaVA's `expand2square`.
use image::{ImageBuffer, Rgb, RgbImage};

/// transformers' `center_crop`: offsets `(orig - crop) // 2` (floor division); where the crop is
/// larger than the image, the image is first zero-padded with `ceil((new - orig) / 2)` before.
pub fn center_crop(img: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
