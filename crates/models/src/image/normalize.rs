//! The rescale and normalize steps of transformers' PIL image processors, in their order and
//! precision: `rescale()` multiplies the `uint8` value by `rescale_factor` in float64 and casts
//! to float32; `normalize()` computes `(x - mean) / std` in float32, with `mean` and `std` cast
//! to float32 first. Every processor (CLIP's, Mllama's) calls [`Normalize::value`], so their
//! pixel values agree with transformers to the last bit.

/// `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std` of a
/// `preprocessor_config.json`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalize {
    /// Channel `channel` of one `uint8` pixel (padding pixels are 0 before this step).
    #[inline]
    pub fn value(&self, v: u8, channel: usize) -> f32 {
        // rescale(): uint8 -> float64 * scale -> float32; without it, normalize() casts to f32.
        let mut x = if self.do_rescale { (v as f64 * self.rescale_factor) as f32 } else { v as f32 };
        if self.do_normalize {
            // normalize(): (image - mean) / std with float32 mean/std arrays.
            x = (x - self.mean[channel] as f32) / self.std[channel] as f32;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescales_in_f64_then_normalizes_in_f32() {
        let n = Normalize {
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        for v in 0..=255u8 {
            let exact = (v as f64 / 255.0 - 0.5) / 0.25;
            assert!((n.value(v, 1) as f64 - exact).abs() < 1e-6, "{v}");
        }
        // The float64 product, not the float32 one: 0.003921568859368563 vs 0.003921569.
        assert_eq!(Normalize { do_normalize: false, ..n }.value(1, 0), (1.0f64 / 255.0) as f32);
        assert_eq!(Normalize { do_rescale: false, do_normalize: false, ..n }.value(7, 2), 7.0);
        assert_eq!(Normalize { do_rescale: false, ..n }.value(1, 0), (1.0 - 0.5) / 0.25);
    }
}
