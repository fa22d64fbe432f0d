//! CPU twins: what every kernel computes, written as plain loops over f32 host data (f64 where a
//! reduction is long), rounding to the storage dtype exactly where the kernel stores. The GPU
//! tests (`tests/gpu_kernels.rs`) compare each kernel with its twin on fresh random inputs, and
//! the kernel benches fall back to these when there is no GPU.
use crate::{Act, AttnRow, DType, RelRow, SeqDesc};

/// `v` rounded to `dtype` (round-to-nearest-even, as the kernels' `__float2bfloat16_rn`).
pub fn round(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
    }
}

pub fn round_all(dtype: DType, v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round(dtype, x)).collect()
}

pub fn add(a: &[f32], b: &[f32], d: DType) -> Vec<f32> {
    a.iter().zip(b).map(|(&x, &y)| round(d, x + y)).collect()
}

pub fn activate(x: f32, act: Act) -> f32 {
    let xd = x as f64;
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    (match act {
        Act::QuickGelu => xd * sig(1.702 * xd),
        Act::GeluErf => 0.5 * xd * (1.0 + erf(xd / std::f64::consts::SQRT_2)),
        Act::Silu => xd * sig(xd),
        Act::GeluTanh => 0.5 * xd * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh()),
        Act::Tanh => xd.tanh(),
    }) as f32
}

/// erf to ~1e-15 (Abramowitz–Stegun 7.1.26 is too coarse for a 1e-5 check; this is the series /
/// continued fraction pair).
pub fn erf(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series: erf x = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), accurate for |x| >= 2.5.
        let z = x.abs();
        let mut f = z;
        let (mut c, mut dd) = (z, 0.0f64);
        for n in 1..300 {
            let an = n as f64 / 2.0;
            dd = z + an * dd;
            dd = 1.0 / dd;
            c = z + an / c;
            let delta = c * dd;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-z * z).exp() / f / std::f64::consts::PI.sqrt();
        (1.0 - erfc).copysign(x)
    }
}

pub fn activation(x: &[f32], act: Act, d: DType) -> Vec<f32> {
    x.iter().map(|&v| round(d, activate(v, act))).collect()
}

pub fn silu_mul(gate: &[f32], up: &[f32], d: DType) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| round(d, activate(g, Act::Silu) * u)).collect()
}

/// Rotate-half rotary embedding on `x = [rows, heads*head_dim]`, angles in f32 as transformers.
pub fn rotary(x: &[f32], positions: &[i32], inv_freq: &[f32], heads: usize, head_dim: usize, d: DType) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (r * heads + h) * head_dim;
            for i in 0..half {
                let angle = (pos as f32 * inv_freq[i]) as f64;
                let (s, c) = angle.sin_cos();
                let (a, b) = (x[base + i] as f64, x[base + i + half] as f64);
                out[base + i] = round(d, (a * c - b * s) as f32);
                out[base + i + half] = round(d, (b * c + a * s) as f32);
            }
        }
    }
    out
}

/// `(out, x after the residual add)` of the fused (when `delta` is given) layer norm.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    x: &[f32],
    delta: Option<&[f32]>,
    w: &[f32],
    b: &[f32],
    cols: usize,
    eps: f32,
    d: DType,
) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = match delta {
        Some(dl) => add(x, dl, d),
        None => x.to_vec(),
    };
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        out.extend(
            row.iter()
                .enumerate()
                .map(|(c, &v)| round(d, ((v as f64 - mean) * inv * w[c] as f64 + b[c] as f64) as f32)),
        );
    }
    (out, x)
}

pub fn rms_norm(x: &[f32], delta: Option<&[f32]>, w: &[f32], cols: usize, eps: f32, d: DType) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = match delta {
        Some(dl) => add(x, dl, d),
        None => x.to_vec(),
    };
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        out.extend(row.iter().enumerate().map(|(c, &v)| round(d, (w[c] as f64 * (v as f64 * inv)) as f32)));
    }
    (out, x)
}

pub fn gather_rows(src: &[f32], idx: &[usize], cols: usize) -> Vec<f32> {
    idx.iter().flat_map(|&r| src[r * cols..(r + 1) * cols].to_vec()).collect()
}

pub fn scatter_rows(dst: &[f32], src: &[f32], idx: &[usize], cols: usize) -> Vec<f32> {
    let mut out = dst.to_vec();
    for (i, &r) in idx.iter().enumerate() {
        out[r * cols..(r + 1) * cols].copy_from_slice(&src[i * cols..(i + 1) * cols]);
    }
    out
}

/// The capture hook's copy: rows `drop..tokens` of every image of `src` into `dst` from row `dst_row0`.
#[allow(clippy::too_many_arguments)]
pub fn capture_rows(
    dst: &[f32],
    dst_row0: usize,
    src: &[f32],
    images: usize,
    tokens: usize,
    drop: usize,
    cols: usize,
) -> Vec<f32> {
    let mut out = dst.to_vec();
    let mut row = dst_row0;
    for img in 0..images {
        for t in drop..tokens {
            let s = (img * tokens + t) * cols;
            out[row * cols..(row + 1) * cols].copy_from_slice(&src[s..s + cols]);
            row += 1;
        }
    }
    out
}

pub fn im2col(pixels: &[f32], channels: usize, height: usize, width: usize, patch: usize) -> Vec<f32> {
    let (ph, pw) = (height / patch, width / patch);
    let mut out = Vec::with_capacity(pixels.len());
    for py in 0..ph {
        for px in 0..pw {
            for c in 0..channels {
                for y in 0..patch {
                    let row = (c * height + py * patch + y) * width + px * patch;
                    out.extend_from_slice(&pixels[row..row + patch]);
                }
            }
        }
    }
    out
}

pub fn vit_assemble(
    patches: &[f32],
    cls: &[f32],
    pos: &[f32],
    images: usize,
    tokens: usize,
    cols: usize,
    d: DType,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(images * tokens * cols);
    for img in 0..images {
        for t in 0..tokens {
            let src = if t == 0 { cls } else { &patches[(img * (tokens - 1) + t - 1) * cols..][..cols] };
            out.extend((0..cols).map(|c| round(d, src[c] + pos[t * cols + c])));
        }
    }
    out
}

/// `x[m×k] · w[n×k]ᵀ + bias` in f64 (not rounded: the reference).
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.map_or(0.0, |b| b[j] as f64);
            for kk in 0..k {
                acc += x[i * k + kk] as f64 * w[j * k + kk] as f64;
            }
            out[i * n + j] = acc;
        }
    }
    out
}

/// First index of the largest value; NaN never wins; an all-NaN row gives its last index.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// One (query row, head): softmax(q·kⱼ·scale) over keys `keys` (rows of the key buffer), in f64.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_row: usize,
    keys: std::ops::Range<usize>,
    h: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
) -> Vec<f64> {
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let kvh = h / (heads / kv_heads);
    let qv = &q[q_row * qw + h * hd..][..hd];
    let scores: Vec<f64> = keys
        .clone()
        .map(|j| (0..hd).map(|d| qv[d] as f64 * k[j * kw + kvh * hd + d] as f64).sum::<f64>() * scale as f64)
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
    let mut out = vec![0.0f64; hd];
    for (s, j) in scores.iter().zip(keys) {
        let p = (s - max).exp() / z;
        for d in 0..hd {
            out[d] += p * v[j * kw + kvh * hd + d] as f64;
        }
    }
    out
}

/// Reference for `flash_attention`: rows of `q` not covered by any sequence stay NaN.
#[allow(clippy::too_many_arguments)]
pub fn attention_seqs(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_rows: usize,
    seqs: &[SeqDesc],
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
) -> Vec<f64> {
    let qw = heads * hd;
    let mut out = vec![f64::NAN; q_rows * qw];
    for s in seqs {
        for i in 0..s.q_len as usize {
            let visible = if s.causal != 0 { (s.n_keys - s.q_len) as usize + i + 1 } else { s.n_keys as usize };
            let keys = s.k_base as usize..s.k_base as usize + visible;
            let r = s.q_start as usize + i;
            for h in 0..heads {
                let o = attend(q, k, v, r, keys.clone(), h, heads, kv_heads, hd, scale);
                out[r * qw + h * hd..][..hd].copy_from_slice(&o);
            }
        }
    }
    out
}

/// Reference for `attention_rows`.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[AttnRow],
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
) -> Vec<f64> {
    let qw = heads * hd;
    let mut out = vec![0.0f64; rows.len() * qw];
    for (r, row) in rows.iter().enumerate() {
        let keys = row.k_base as usize..(row.k_base + row.n_keys) as usize;
        for h in 0..heads {
            let o = attend(q, k, v, r, keys.clone(), h, heads, kv_heads, hd, scale);
            out[r * qw + h * hd..][..hd].copy_from_slice(&o);
        }
    }
    out
}

/// Reference for `relative_attention`: row `r` of `q` over keys `rows[r].k_base..+n_keys`, with
/// scores `scale · (q·k + q·pos_key[c2p[pos - j + center]] + k·pos_query[p2c[pos - j + center]])`
/// per head (position tables `[_, heads*hd]`, `None` for an absent term), in f64.
#[allow(clippy::too_many_arguments)]
pub fn relative_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[RelRow],
    pos_key: Option<&[f32]>,
    pos_query: Option<&[f32]>,
    c2p: &[i32],
    p2c: &[i32],
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
) -> Vec<f64> {
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let center = (c2p.len() - 1) / 2;
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let mut out = vec![0.0f64; rows.len() * qw];
    for (r, row) in rows.iter().enumerate() {
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let qv = &q[r * qw + h * hd..][..hd];
            let keys = row.k_base as usize..(row.k_base + row.n_keys) as usize;
            let scores: Vec<f64> = keys
                .clone()
                .enumerate()
                .map(|(j, kr)| {
                    let kv = &k[kr * kw + kvh * hd..][..hd];
                    let d = (row.pos as usize + center) - j;
                    let mut s = dot(qv, kv);
                    if let Some(pk) = pos_key {
                        s += dot(qv, &pk[c2p[d] as usize * qw + h * hd..][..hd]);
                    }
                    if let Some(pq) = pos_query {
                        s += dot(kv, &pq[p2c[d] as usize * qw + h * hd..][..hd]);
                    }
                    s * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (s, kr) in scores.iter().zip(keys) {
                let p = (s - max).exp() / z;
                for d in 0..hd {
                    out[r * qw + h * hd + d] += p * v[kr * kw + kvh * hd + d] as f64;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from tables of the error function.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (-1.5, -0.9661051464753108),
        ] {
            assert!((erf(x) - want).abs() < 1e-13, "erf({x}) = {} != {want}", erf(x));
        }
    }

    #[test]
    fn twins_agree_with_hand_computed_cases() {
        assert_eq!(round(DType::BF16, 1.0 + 1.0 / 512.0), 1.0, "bf16 keeps 8 significant bits, ties to even");
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 1);
        let (out, x) = rms_norm(&[3.0, 4.0], Some(&[0.0, 0.0]), &[1.0, 2.0], 2, 0.0, DType::F32);
        let inv = 1.0 / (12.5f64).sqrt();
        assert_eq!(x, vec![3.0, 4.0]);
        assert!((out[0] as f64 - 3.0 * inv).abs() < 1e-6 && (out[1] as f64 - 8.0 * inv).abs() < 1e-6);
        // im2col of a 1-channel 2x4 image with 2-pixel patches: two patches in (y, x) order.
        let px: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(im2col(&px, 1, 2, 4, 2), vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
        // Causal attention of one query over one key returns that key's value.
        let seq = SeqDesc { q_start: 0, q_len: 1, k_base: 0, n_keys: 1, causal: 1, pad: [0; 3] };
        let o = attention_seqs(&[1.0, 2.0], &[3.0, 4.0], &[5.0, 6.0], 1, &[seq], 1, 1, 2, 1.0);
        assert_eq!(o, vec![5.0, 6.0]);
    }
}
