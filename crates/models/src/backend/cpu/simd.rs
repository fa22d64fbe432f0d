//! The CPU backend's vector loops, written once as plain Rust that the compiler vectorises and
//! compiled three times: for AVX-512, for AVX2 + FMA, and for the baseline of the target; the
//! widest the running CPU supports is picked at run time (`is_x86_feature_detected`). Every loop
//! keeps lane-wise accumulators (`[f32; LANES]`), so vectorising never reorders a sum beyond what
//! the loop states, and the result does not depend on which version runs except for FMA rounding.
use std::sync::atomic::{AtomicU8, Ordering};

/// Lanes of the accumulators: one AVX-512 register of f32 (two AVX2 registers).
pub const LANES: usize = 16;

const UNKNOWN: u8 = 0;
const BASELINE: u8 = 1;
const AVX2: u8 = 2;
const AVX512: u8 = 3;
static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The widest instruction set the running CPU offers (detected once).
#[inline]
pub fn level() -> u8 {
    let l = LEVEL.load(Ordering::Relaxed);
    if l != UNKNOWN {
        return l;
    }
    let detected = detect();
    LEVEL.store(detected, Ordering::Relaxed);
    detected
}

#[cfg(target_arch = "x86_64")]
fn detect() -> u8 {
    if std::env::var_os("ICET_CPU_BASELINE").is_some() {
        return BASELINE;
    }
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("fma") {
        AVX512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        AVX2
    } else {
        BASELINE
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> u8 {
    BASELINE
}

/// Defines `pub fn $name(args) -> ret` that runs `$body` compiled for the best available
/// instruction set. Inside the body, `fma(a, b, c)` is `a * b + c`, fused where FMA exists.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(unused_variables)]
            fn imp<const FUSED: bool>($($arg: $ty),*) $(-> $ret)? {
                #[inline(always)]
                #[allow(dead_code)]
                fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
                    if F { a.mul_add(b, c) } else { a * b + c }
                }
                #[allow(unused_macros)]
                macro_rules! fma {
                    ($a:expr, $b:expr, $c:expr) => { fma::<FUSED>($a, $b, $c) };
                }
                $body
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    imp::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp::<true>($($arg),*)
                }
                match $crate::backend::cpu::simd::level() {
                    // SAFETY: the CPU was checked for these features.
                    3 => unsafe { avx512($($arg),*) },
                    2 => unsafe { avx2($($arg),*) },
                    _ => imp::<false>($($arg),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                imp::<false>($($arg),*)
            }
        }
    };
}

/// `exp(x)` in f32 without branches, so loops over it vectorise: Cody–Waite reduction by ln 2
/// and Cephes' degree-5 polynomial (max error ~2 ulp on the normal range; 0 below -87.3, where
/// f32's exp underflows, and clamped at 88.7 above).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.7);
    let t = xc * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let n_int = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

/// `out[j] = scale * (q · rows[j*stride..][..q.len()])` for `j < out.len()`.
pub fn dot_rows(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    if super::skinny::available() {
        super::skinny::dot_rows(q, rows, stride, scale, out)
    } else {
        dot_rows_portable(q, rows, stride, scale, out)
    }
}

multiversion! {
    /// [`dot_rows`] as portable code (the AVX-512 version is in `skinny`).
    pub fn dot_rows_portable(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let full = hd / LANES * LANES;
        let n = out.len();
        let mut j = 0;
        // Four keys at a time: four independent accumulator chains hide the FMA latency.
        while j + 4 <= n {
            let mut acc = [[0.0f32; LANES]; 4];
            let r: [&[f32]; 4] = std::array::from_fn(|u| &rows[(j + u) * stride..(j + u) * stride + hd]);
            let mut d = 0;
            while d < full {
                let qv: &[f32; LANES] = q[d..d + LANES].try_into().unwrap();
                for u in 0..4 {
                    let kv: &[f32; LANES] = r[u][d..d + LANES].try_into().unwrap();
                    for l in 0..LANES {
                        acc[u][l] = fma!(qv[l], kv[l], acc[u][l]);
                    }
                }
                d += LANES;
            }
            for u in 0..4 {
                let mut s = acc[u].iter().sum::<f32>();
                for dd in full..hd {
                    s = fma!(q[dd], r[u][dd], s);
                }
                out[j + u] = s * scale;
            }
            j += 4;
        }
        while j < n {
            let row = &rows[j * stride..j * stride + hd];
            let mut acc = [0.0f32; LANES];
            let mut d = 0;
            while d < full {
                for l in 0..LANES {
                    acc[l] = fma!(q[d + l], row[d + l], acc[l]);
                }
                d += LANES;
            }
            let mut s = acc.iter().sum::<f32>();
            for dd in full..hd {
                s = fma!(q[dd], row[dd], s);
            }
            out[j] = s * scale;
            j += 1;
        }
    }
}

multiversion! {
    /// `out = out * keep + Σ_j p[j] · rows[j*stride..][..out.len()]` (`keep = 0`: `out` is not read).
    pub fn weighted_rows(p: &[f32], rows: &[f32], stride: usize, keep: f32, out: &mut [f32]) {
        let hd = out.len();
        if keep == 0.0 {
            // Not `out * 0`: the output may hold anything, NaN included, before the first write.
            out.fill(0.0);
        } else {
            for o in out.iter_mut() {
                *o *= keep;
            }
        }
        let mut j = 0;
        while j + 2 <= p.len() {
            let (p0, p1) = (p[j], p[j + 1]);
            let r0 = &rows[j * stride..j * stride + hd];
            let r1 = &rows[(j + 1) * stride..(j + 1) * stride + hd];
            for d in 0..hd {
                out[d] = fma!(p1, r1[d], fma!(p0, r0[d], out[d]));
            }
            j += 2;
        }
        if j < p.len() {
            let r0 = &rows[j * stride..j * stride + hd];
            for d in 0..hd {
                out[d] = fma!(p[j], r0[d], out[d]);
            }
        }
    }
}

multiversion! {
    /// `x[i] = exp(x[i] - max)`; returns the sum of the results.
    pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                c[l] = exp(c[l] - max);
                acc[l] += c[l];
            }
        }
        let mut s = 0.0;
        for v in chunks.into_remainder() {
            *v = exp(*v - max);
            s += *v;
        }
        acc.iter().sum::<f32>() + s
    }
}

multiversion! {
    /// The largest value of `x` (`-inf` when empty). NaNs are skipped here; a softmax over a NaN
    /// still comes out NaN through its sum.
    pub fn max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for &v in chunks.remainder().iter().chain(acc.iter()) {
            m = if v > m { v } else { m };
        }
        m
    }
}

multiversion! {
    /// `x *= s`.
    pub fn scale(x: &mut [f32], s: f32) {
        for v in x.iter_mut() {
            *v *= s;
        }
    }
}

/// Softmax of one row in place, in f32 (max-subtracted).
pub fn softmax(x: &mut [f32]) {
    let m = max(x);
    let sum = exp_sub_sum(x, m);
    scale(x, 1.0 / sum);
}

multiversion! {
    /// `out[i] = f(x[i])` for the point-wise activations, vectorised.
    pub fn quick_gelu(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = *v / (1.0 + exp(-1.702 * *v));
        }
    }
}

multiversion! {
    pub fn silu(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = *v / (1.0 + exp(-*v));
        }
    }
}

multiversion! {
    /// `out[i] = silu(gate[i]) * up[i]`.
    pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

multiversion! {
    /// `a += b`.
    pub fn add(a: &mut [f32], b: &[f32]) {
        for (x, &y) in a.iter_mut().zip(b) {
            *x += y;
        }
    }
}

multiversion! {
    /// Σ x, and Σ (x - mean)² given the mean: the two sums of a layer norm, lane-wise.
    pub fn sum(x: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                acc[l] += c[l];
            }
        }
        acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
    }
}

multiversion! {
    /// Σ (x - c)².
    pub fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for ch in &mut chunks {
            for l in 0..LANES {
                let d = ch[l] - c;
                acc[l] = fma!(d, d, acc[l]);
            }
        }
        acc.iter().sum::<f32>() + chunks.remainder().iter().map(|v| (v - c) * (v - c)).sum::<f32>()
    }
}

multiversion! {
    /// `out = (x - mean) * inv * g + b` (layer norm's affine step; `b` empty for RMS norm, where
    /// it is `g * (x * inv)` as transformers computes it).
    pub fn normalize(x: &[f32], mean: f32, inv: f32, g: &[f32], b: &[f32], out: &mut [f32]) {
        if b.is_empty() {
            for ((o, &v), &gg) in out.iter_mut().zip(x).zip(g) {
                *o = gg * (v * inv);
            }
        } else {
            for (((o, &v), &gg), &bb) in out.iter_mut().zip(x).zip(g).zip(b) {
                *o = (v - mean) * inv * gg + bb;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst:e}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn kernels_agree_with_plain_loops_at_every_length() {
        let mut rng = crate::backend::conformance::TestRng::new(11);
        for hd in [1usize, 7, 16, 33, 64, 80] {
            let q = rng.vec(hd, 1.0);
            let rows = rng.vec(9 * (hd + 3), 1.0);
            let mut got = vec![f32::NAN; 9];
            dot_rows(&q, &rows, hd + 3, 0.5, &mut got);
            for j in 0..9 {
                let want: f64 = (0..hd).map(|d| q[d] as f64 * rows[j * (hd + 3) + d] as f64).sum::<f64>() * 0.5;
                assert!((got[j] as f64 - want).abs() < 1e-5, "dot hd {hd} row {j}");
            }
            let p = rng.vec(9, 1.0);
            let mut out = rng.vec(hd, 1.0);
            let before = out.clone();
            weighted_rows(&p, &rows, hd + 3, 0.25, &mut out);
            for d in 0..hd {
                let want: f64 =
                    before[d] as f64 * 0.25 + (0..9).map(|j| p[j] as f64 * rows[j * (hd + 3) + d] as f64).sum::<f64>();
                assert!((out[d] as f64 - want).abs() < 1e-5, "weighted hd {hd} col {d}");
            }
            let mut x = rng.vec(hd * 3, 5.0);
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m);
            let want: Vec<f64> = x.iter().map(|&v| (v as f64 - m as f64).exp()).collect();
            let z: f64 = want.iter().sum();
            softmax(&mut x);
            for (g, w) in x.iter().zip(&want) {
                assert!((*g as f64 - w / z).abs() < 1e-6);
            }
        }
    }
}
