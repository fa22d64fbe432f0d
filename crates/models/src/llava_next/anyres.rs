//! LLaVA-NeXT's "anyres" geometry, one place for the processor (how an image is tiled, how many
//! image slots its prompt gets) and the model (how the tiles' features are packed): transformers
//! 5.24's `select_best_resolution`, `get_patch_output_size`, `get_anyres_image_grid_shape`,
//! `unpad_image` (with its `int(round(x, 7))`) and the layout `pack_image_features` builds.
use std::ops::Range;

/// `select_best_resolution((height, width), pinpoints)`: the `(height, width)` canvas that keeps
/// the most of the image's pixels when it is scaled to fit, ties going to the least wasted area,
/// then to the earlier pinpoint.
pub fn select_best_resolution(height: usize, width: usize, pinpoints: &[[usize; 2]]) -> (usize, usize) {
    let (oh, ow) = (height as f64, width as f64);
    let mut best = (pinpoints[0][0], pinpoints[0][1]);
    let (mut max_effective, mut min_wasted) = (0usize, usize::MAX);
    for &[h, w] in pinpoints {
        // Python: scale = min(width / original_width, height / original_height); int() truncates.
        let scale = (w as f64 / ow).min(h as f64 / oh);
        let (dw, dh) = ((ow * scale) as usize, (oh * scale) as usize);
        let effective = (dw * dh).min(width * height);
        let wasted = w * h - effective;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            (max_effective, min_wasted, best) = (effective, wasted, (h, w));
        }
    }
    best
}

/// `get_patch_output_size`: the `(height, width)` an image is resized to inside the `target`
/// canvas (aspect ratio kept, the scaled side `ceil`ed and capped at the canvas).
pub fn patch_output_size(height: usize, width: usize, target: (usize, usize)) -> (usize, usize) {
    let (th, tw) = target;
    let scale_w = tw as f64 / width as f64;
    let scale_h = th as f64 / height as f64;
    if scale_w < scale_h {
        (((height as f64 * scale_w).ceil() as usize).min(th), tw)
    } else {
        (th, ((width as f64 * scale_h).ceil() as usize).min(tw))
    }
}

/// Python's `int(round(x, 7))` for `x >= 0`: `x` to the next integer when it is within half of
/// 1e-7 below it (a float product such as 47 * (12 / 188) = 2.9999999999999996 counts as 3),
/// else truncated. Exact ties cannot occur (no double is an odd multiple of 5e-8 short of an
/// integer), and `ceil(x) - x` is computed exactly where it matters.
fn int_round7(x: f64) -> usize {
    let up = x.ceil();
    if up - x <= 5e-8 {
        up as usize
    } else {
        x.floor() as usize
    }
}

/// How one image is tiled and how its features are packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnyresGrid {
    /// The original image, `(height, width)` (transformers' `image_sizes`).
    pub image: (usize, usize),
    /// The chosen pinpoint, `(height, width)`.
    pub best: (usize, usize),
    /// Tile rows and columns of the canvas (`get_anyres_image_grid_shape`).
    pub rows: usize,
    pub cols: usize,
    /// Patches per tile side (`image_size / patch_size`).
    pub side: usize,
    /// The feature grid's rows and columns that survive `unpad_image`.
    pub kept_rows: Range<usize>,
    pub kept_cols: Range<usize>,
}

impl AnyresGrid {
    /// The grid of an image of `height x width` pixels under `pinpoints` with `tile`-px tiles of
    /// `side x side` patches.
    pub fn new(height: usize, width: usize, pinpoints: &[[usize; 2]], tile: usize, side: usize) -> Self {
        let best = select_best_resolution(height, width, pinpoints);
        let (rows, cols) = (best.0 / tile, best.1 / tile);
        let (cur_h, cur_w) = (rows * side, cols * side);
        let (mut kept_rows, mut kept_cols) = (0..cur_h, 0..cur_w);
        // unpad_image(tensor [C, cur_h, cur_w], (height, width))
        if width as f64 / height as f64 > cur_w as f64 / cur_h as f64 {
            let new_h = int_round7(height as f64 * (cur_w as f64 / width as f64));
            let pad = cur_h.saturating_sub(new_h) / 2;
            kept_rows = pad..cur_h - pad;
        } else {
            let new_w = int_round7(width as f64 * (cur_h as f64 / height as f64));
            let pad = cur_w.saturating_sub(new_w) / 2;
            kept_cols = pad..cur_w - pad;
        }
        Self { image: (height, width), best, rows, cols, side, kept_rows, kept_cols }
    }

    /// Tiles through the vision tower: the base image plus the canvas's tiles
    /// (`image_size_to_num_patches`).
    pub fn tiles(&self) -> usize {
        1 + self.rows * self.cols
    }

    /// Rows spliced into the prompt: the base image's patches, then every kept row of the
    /// unpadded grid followed by one `image_newline` row — the count transformers' processor
    /// gives `<image>` (`_get_number_of_features - 1` under the `default` strategy).
    pub fn image_slots(&self) -> usize {
        self.side * self.side + self.kept_rows.len() * (self.kept_cols.len() + 1)
    }

    /// The packed layout over the tower's output rows of these tiles (`tokens` per tile, the
    /// class token first, tiles in processor order with the base first), starting at tile
    /// `first_tile` of a batched pass.
    pub fn packing(&self, tokens: usize, first_tile: usize) -> Packing {
        let g = self.side;
        let row = |tile: usize, r: usize| (first_tile + tile) * tokens + 1 + r; // + 1: the class token
        let mut features: Vec<usize> = (0..g * g).map(|r| row(0, r)).collect();
        let mut newlines = Vec::with_capacity(self.kept_rows.len());
        for y in self.kept_rows.clone() {
            for x in self.kept_cols.clone() {
                let tile = 1 + (y / g) * self.cols + x / g;
                features.push(row(tile, (y % g) * g + x % g));
            }
            newlines.push(features.len() + newlines.len());
        }
        Packing { features, newlines }
    }
}

/// Where `pack_image_features` puts every row: `features[i]` is the tower row of the i-th
/// projected feature (base patches, then the kept grid row by row); `newlines` the positions of
/// the `image_newline` rows in the packed output, which holds `features.len() + newlines.len()`
/// rows with the features in order in the other positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packing {
    pub features: Vec<usize>,
    pub newlines: Vec<usize>,
}

impl Packing {
    pub fn len(&self) -> usize {
        self.features.len() + self.newlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For each packed position, the projected feature it holds (newline positions point at
    /// feature 0; they are overwritten).
    pub fn feature_index(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.len());
        let mut newlines = self.newlines.iter().peekable();
        let mut next = 0;
        for pos in 0..self.len() {
            if newlines.peek() == Some(&&pos) {
                newlines.next();
                out.push(0);
            } else {
                out.push(next);
                next += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn slots_refs() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/llava-next-preprocessing/slots.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// transformers' best resolution, tile count and image-slot count for 1122 (size, processor)
    /// combinations: llava-v1.6's 336-px tiles and both fixtures' (including the sizes where
    /// unpad_image's round(x, 7) decides a row).
    #[test]
    fn grid_and_slot_counts_match_transformers() {
        let refs = slots_refs();
        let mut checked = 0;
        for c in refs["configs"].as_array().unwrap() {
            let (tile, patch) = (c["tile"].as_u64().unwrap() as usize, c["patch"].as_u64().unwrap() as usize);
            let pinpoints: Vec<[usize; 2]> = serde_json::from_value(c["pinpoints"].clone()).unwrap();
            for r in c["rows"].as_array().unwrap() {
                let r: Vec<usize> = serde_json::from_value(r.clone()).unwrap();
                let grid = AnyresGrid::new(r[0], r[1], &pinpoints, tile, tile / patch);
                assert_eq!(grid.best, (r[2], r[3]), "{r:?} at tile {tile}");
                assert_eq!(grid.tiles(), r[4], "{r:?} at tile {tile}");
                assert_eq!(grid.image_slots(), r[5], "{r:?} at tile {tile}");
                assert_eq!(grid.packing(1 + (tile / patch).pow(2), 0).len(), r[5]);
                checked += 1;
            }
        }
        assert_eq!(checked, 1122);
    }

    #[test]
    fn rounding_and_packing_by_hand() {
        // 188x47 at 28-px tiles (4x4 patches): 1x3 tiles, a 4x12 grid; 47 * (12 / 188) rounds to
        // 3 (truncation would give 2 and drop a row), so padding (4 - 3) // 2 = 0 keeps all 4.
        assert_eq!(47.0 * (12.0 / 188.0), 2.9999999999999996);
        let pins = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]];
        let g = AnyresGrid::new(47, 188, &pins, 28, 4);
        assert_eq!((g.best, g.rows, g.cols, g.kept_rows.clone(), g.kept_cols.clone()), ((28, 84), 1, 3, 0..4, 0..12));
        assert_eq!(g.image_slots(), 16 + 4 * 13);
        // 61x97 (wide): 2x2 tiles, 8x8 grid; 61 * 8 / 97 = 5.03 -> 5 rows, padding 1 -> rows 1..7.
        let g = AnyresGrid::new(61, 97, &pins, 28, 4);
        assert_eq!((g.rows, g.cols, g.kept_rows.clone(), g.kept_cols.clone()), (2, 2, 1..7, 0..8));
        let p = g.packing(17, 0);
        assert_eq!(p.len(), 16 + 6 * 9);
        assert_eq!(&p.features[..2], &[1, 2], "base patches first, class token skipped");
        // Grid row 1, column 0 is tile 1 (top-left), patch row 1; column 4 is tile 2.
        assert_eq!(p.features[16], 17 + 1 + 4);
        assert_eq!(p.features[16 + 4], 2 * 17 + 1 + 4);
        // Grid row 4 is tile 3's patch row 0.
        assert_eq!(p.features[16 + 3 * 8], 3 * 17 + 1);
        assert_eq!(p.newlines, (0..6).map(|r| 16 + 8 + r * 9).collect::<Vec<_>>());
        let idx = p.feature_index();
        assert_eq!((idx[16 + 7], idx[16 + 9]), (16 + 7, 16 + 8), "the newline is skipped");
        // A second image of a batched pass starts after the first's tiles.
        assert_eq!(g.packing(17, 5).features[0], 5 * 17 + 1);
        // patch_output_size: 61x97 into 56x56 -> width 56, height ceil(61 * 56/97) = 36.
        assert_eq!(patch_output_size(61, 97, (56, 56)), (36, 56));
    }
}
