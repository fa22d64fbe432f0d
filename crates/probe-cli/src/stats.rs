//! Bootstrap statistics of per-layer metrics: point estimates, percentile intervals, and the
//! paper's group rows recomputed inside every resample.
//!
//! Intervals: percentile bootstrap. In every resample each layer's answers are redrawn with
//! replacement (SplitMix64), the layer means recomputed, and the group rows recomputed from
//! those, so a group's interval reflects every layer's sampling noise. Percentiles interpolate
//! linearly between order statistics (numpy's default).
use std::collections::BTreeMap;

use icet_models::backend::splitmix64;
use serde::Serialize;

use crate::grouping::layer_groups;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Answers behind the value (for group rows: summed over its layers).
    pub n: usize,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// numpy's `percentile(values, q)` with linear interpolation; `values` sorted.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn interval(mut draws: Vec<f64>, value: f64) -> (f64, f64) {
    if draws.is_empty() {
        return (value, value);
    }
    draws.sort_by(f64::total_cmp);
    (percentile(&draws, 2.5), percentile(&draws, 97.5))
}

/// A group row: its name, its layers and its estimate.
pub type GroupEstimate = (String, Vec<usize>, Estimate);

/// Per-layer and group estimates of one metric.
pub fn estimate(
    per_layer: &BTreeMap<usize, Vec<f64>>,
    num_layers: usize,
    resamples: usize,
    seed: u64,
) -> (BTreeMap<usize, Estimate>, Vec<GroupEstimate>) {
    let layers: Vec<usize> = per_layer.keys().copied().filter(|l| !per_layer[l].is_empty()).collect();
    // draws[b][i] = mean of resample b of layer layers[i]
    let mut state = seed;
    let mut draws = vec![vec![0.0; layers.len()]; resamples];
    for row in draws.iter_mut() {
        for (i, l) in layers.iter().enumerate() {
            let v = &per_layer[l];
            let mut sum = 0.0;
            for _ in 0..v.len() {
                state = splitmix64(state);
                sum += v[(state % v.len() as u64) as usize];
            }
            row[i] = sum / v.len() as f64;
        }
    }
    let mut out = BTreeMap::new();
    for (i, l) in layers.iter().enumerate() {
        let value = mean(&per_layer[l]);
        let (lo, hi) = interval(draws.iter().map(|d| d[i]).collect(), value);
        out.insert(*l, Estimate { value, ci_low: lo, ci_high: hi, n: per_layer[l].len() });
    }
    let mut groups = Vec::new();
    for (name, idx) in layer_groups(&layers, num_layers) {
        let value = mean(&idx.iter().map(|&i| out[&layers[i]].value).collect::<Vec<_>>());
        let group_draws: Vec<f64> =
            draws.iter().map(|d| mean(&idx.iter().map(|&i| d[i]).collect::<Vec<_>>())).collect();
        let (lo, hi) = interval(group_draws, value);
        let n = idx.iter().map(|&i| per_layer[&layers[i]].len()).sum();
        groups.push((
            name.to_string(),
            idx.iter().map(|&i| layers[i]).collect(),
            Estimate { value, ci_low: lo, ci_high: hi, n },
        ));
    }
    (out, groups)
}

/// FNV-1a over `bytes`, starting from `basis` (the offset basis, or it mixed with a seed): a
/// stable hash of names and ids for seeding.
pub fn fnv1a(basis: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(basis, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// FNV-1a's offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_as_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1, 2, 3, 4], [0, 2.5, 50, 97.5, 100]) = [1, 1.075, 2.5, 3.925, 4].
        for (q, want) in [(0.0, 1.0), (2.5, 1.075), (50.0, 2.5), (97.5, 3.925), (100.0, 4.0)] {
            assert!((percentile(&v, q) - want).abs() < 1e-12, "{q}");
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // FNV-1a 64-bit test vectors: "" and "a".
        assert_eq!(fnv1a(FNV_OFFSET, *b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(FNV_OFFSET, *b"a"), 0xaf63dc4c8601ec8c);
    }
}
