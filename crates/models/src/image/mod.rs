//! Image decoding and the PIL operations every image processor is built from, bit-exact with
//! transformers' PIL backends (the processors `AutoImageProcessor` picks without torchvision).
//!
//! * [`decode`]: files to RGB as PIL's `Image.open` + `convert_to_rgb` (or the original LLaVA's
//!   plain `convert('RGB')`); JPEG through libjpeg-turbo, the decoder Pillow links ([`jpeg`]).
//! * [`resize`]: `PIL.Image.resize` (Resample.c's fixed-point convolution) for every filter.
//! * [`geometry`]: `center_crop` and LLaVA's `expand2square`.
//! * [`normalize`]: the one rescale/normalize arithmetic (`uint8 -> float64 * factor -> float32`,
//!   then `(x - mean) / std` in `float32`) that every processor applies, in the same order and
//!   precision as transformers, so pixel values agree to the last bit.
//!
//! Model-specific processors (CLIP's resize + crop, Mllama's tiling) live with their models and
//! call these.
pub mod decode;
pub mod geometry;
mod jpeg;
pub mod normalize;
pub mod resize;

pub use decode::{image_size, load_image, load_image_with, AlphaHandling};
pub use geometry::{center_crop, expand_to_square};
pub use normalize::Normalize;
pub use resize::{pil_resize, pil_resize_bicubic, Resample};

/// The transformers references of `tests/fixtures/preprocessing` (made by
/// `tools/fixtures/make_preprocessing_fixtures.py`), shared by the unit tests of this module and
/// of the processors.
#[cfg(test)]
pub(crate) mod test_refs {
    use std::path::{Path, PathBuf};

    use image::RgbImage;
    use safetensors::{Dtype, SafeTensors};
    use serde_json::Value;

    pub fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocessing")
    }

    pub struct Refs {
        pub index: Value,
        bytes: Vec<u8>,
    }

    impl Refs {
        pub fn load() -> Refs {
            let dir = fixtures();
            let index = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
            let bytes = std::fs::read(dir.join("refs.safetensors")).unwrap();
            Refs { index, bytes }
        }

        pub fn cases(&self, group: &str) -> Vec<Value> {
            self.index[group].as_array().unwrap_or_else(|| panic!("no {group} in index")).clone()
        }

        /// (shape, raw bytes) of one array.
        pub fn raw(&self, key: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
            let st = SafeTensors::deserialize(&self.bytes).unwrap();
            let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            (t.shape().to_vec(), t.dtype(), t.data().to_vec())
        }

        pub fn image(&self, key: &str) -> RgbImage {
            let (shape, dtype, data) = self.raw(key);
            assert_eq!(dtype, Dtype::U8, "{key}");
            assert_eq!(shape.len(), 3, "{key}");
            assert_eq!(shape[2], 3, "{key}");
            RgbImage::from_raw(shape[1] as u32, shape[0] as u32, data).unwrap()
        }

        pub fn f32s(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
            let (shape, dtype, data) = self.raw(key);
            assert_eq!(dtype, Dtype::F32, "{key}");
            let v = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (shape, v)
        }
    }

    pub fn s<'a>(v: &'a Value, k: &str) -> &'a str {
        v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"))
    }
    pub fn u(v: &Value, k: &str) -> u32 {
        v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")) as u32
    }

    /// (number of differing channel values, largest difference).
    pub fn diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
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

    pub fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icet-preproc-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
