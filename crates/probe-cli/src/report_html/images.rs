//! Where the page finds a prompt's image: a URL relative to the page (default: small page,
//! full-size images, valid while the page stays next to the data) or an embedded thumbnail
//! (`--html-thumbnails`: the page travels alone).
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;

/// Longest side of an embedded thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

#[derive(Clone, Debug)]
pub enum ImageMode {
    /// Link the image file relative to the folder the page is written to.
    Link { page_dir: PathBuf },
    /// Embed a JPEG thumbnail as a `data:` URL.
    Thumbnail,
}

/// Resolves image files to the page's `src` values, each file once.
pub struct Images {
    mode: ImageMode,
    /// The page folder, canonical (for relative links).
    base: Option<PathBuf>,
    done: HashMap<PathBuf, Result<String, String>>,
}

impl Images {
    pub fn new(mode: ImageMode) -> Self {
        let base = match &mode {
            ImageMode::Link { page_dir } => std::fs::canonicalize(page_dir).ok(),
            ImageMode::Thumbnail => None,
        };
        Self { mode, base, done: HashMap::new() }
    }

    /// The `src` of `file`, or why there is none (one line, naming the file).
    pub fn src(&mut self, file: &Path) -> Result<String, String> {
        if let Some(r) = self.done.get(file) {
            return r.clone();
        }
        let r = match &self.mode {
            ImageMode::Link { .. } => self.link(file),
            ImageMode::Thumbnail => thumbnail(file),
        };
        self.done.insert(file.to_path_buf(), r.clone());
        r
    }

    fn link(&self, file: &Path) -> Result<String, String> {
        let target = std::fs::canonicalize(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let base = self.base.as_ref().ok_or_else(|| "the page's folder cannot be resolved".to_string())?;
        Ok(relative_url(base, &target))
    }
}

/// The URL of `target` relative to the folder `base` (both absolute and canonical), each path
/// segment percent-encoded so that a file name cannot become a scheme, query or fragment.
pub fn relative_url(base: &Path, target: &Path) -> String {
    let b: Vec<Component> = base.components().collect();
    let t: Vec<Component> = target.components().collect();
    let common = b.iter().zip(&t).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".to_string(); b.len() - common];
    for c in &t[common..] {
        parts.push(percent_encode(&c.as_os_str().to_string_lossy()));
    }
    parts.join("/")
}

/// RFC 3986 unreserved characters stay, every other byte of the UTF-8 becomes `%XX`.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JPEG thumbnail of at most [`THUMBNAIL_SIDE`] pixels a side, as a `data:` URL.
fn thumbnail(file: &Path) -> Result<String, String> {
    let img = image::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let small = img.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE).to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&small)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_urls_climb_and_encode() {
        let u = relative_url(Path::new("/runs/a/report"), Path::new("/data/img dir/x#1?.png"));
        assert_eq!(u, "../../../data/img%20dir/x%231%3F.png");
        assert_eq!(relative_url(Path::new("/r"), Path::new("/r/i/j.png")), "i/j.png");
        // A file named like a URL stays a relative path.
        assert_eq!(relative_url(Path::new("/r"), Path::new("/r/javascript:alert(1)")), "javascript%3Aalert%281%29");
        assert_eq!(relative_url(Path::new("/r"), Path::new("/r/é.png")), "%C3%A9.png");
    }

    #[test]
    fn thumbnails_are_small_jpegs_and_missing_files_are_named() {
        let d = std::env::temp_dir().join(format!("icet-html-images-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("big.png");
        image::RgbImage::from_pixel(1000, 500, image::Rgb([200, 10, 10])).save(&p).unwrap();
        let mut images = Images::new(ImageMode::Thumbnail);
        let src = images.src(&p).unwrap();
        let b64 = src.strip_prefix("data:image/jpeg;base64,").unwrap();
        let jpeg = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (256, 128));
        let e = images.src(&d.join("gone.png")).unwrap_err();
        assert!(e.contains("gone.png"), "{e}");
        let mut links = Images::new(ImageMode::Link { page_dir: d.join("..") });
        let canon = std::fs::canonicalize(&d).unwrap();
        assert_eq!(links.src(&p).unwrap(), format!("{}/big.png", canon.file_name().unwrap().to_string_lossy()));
    }
}
