//! One conformance suite for every backend: each check feeds fresh random inputs to one backend op
//! and compares it with a naive f64 implementation written here, independently of any backend.
//! `conformance_tests!(path::to::backend_constructor(), tolerance)` expands to one `#[test]` per
//! op, so a new backend gets the whole suite with one line (see the CPU backend's tests below).
use super::cpu::Cpu;
use super::{argmax_row, sample_row, Activation, AttentionShape, Backend, RelativePositions, SamplingParams, SeqChunk};

/// Deterministic test data (SplitMix64 stream), uniform in `[-scale, scale)`.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        super::splitmix64(self.0)
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (self.uniform() * 2.0 - 1.0) * scale).collect()
    }
}

/// Largest `|a - b| / max(1, |b|)`: relative for large values, absolute near zero.
pub fn max_rel_err(actual: &[f32], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    actual.iter().zip(expected).map(|(&a, &e)| (a as f64 - e).abs() / e.abs().max(1.0)).fold(0.0, f64::max)
}

fn assert_close(op: &str, actual: &[f32], expected: &[f64], tol: f64) {
    assert!(actual.iter().all(|v| v.is_finite()), "{op}: non-finite output");
    let err = max_rel_err(actual, expected);
    assert!(err <= tol, "{op}: max relative error {err:e} > {tol:e}");
}

fn upload<B: Backend>(b: &B, data: &[f32], rows: usize, cols: usize) -> B::Tensor {
    b.from_host(data, rows, cols).expect("upload")
}

fn download<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    b.to_host(t).expect("download")
}

fn naive_linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f64> {
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

pub fn check_linear<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(1);
    let shapes = [(1, 7, 5, true), (13, 64, 33, false), (70, 96, 130, true), (3, 1, 4, true), (40, 33, 17, false)];
    for &(m, k, n, with_bias) in &shapes {
        let (x, w, bias) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0), rng.vec(n, 1.0));
        let bt = upload(b, &bias, 1, n);
        let expected = naive_linear(&x, &w, with_bias.then_some(&bias[..]), m, k, n);
        // The weight as uploaded, and as stored for linear at load (the layout may differ).
        let prepared = b.linear_weight(upload(b, &w, n, k)).expect("linear_weight");
        assert_eq!(b.dims(&prepared), (n, k), "linear_weight keeps the dims");
        // (As stored: a bf16/f16 backend rounded it on upload.)
        let stored = download(b, &upload(b, &w, n, k));
        assert_eq!(download(b, &prepared), stored, "to_host of a prepared weight gives the weight back");
        for (what, wt) in [("linear", upload(b, &w, n, k)), ("linear (prepared weight)", prepared)] {
            let out = b.linear(&upload(b, &x, m, k), &wt, with_bias.then_some(&bt)).expect("linear");
            assert_eq!(b.dims(&out), (m, n));
            // Sums of k products: scale the tolerance with the reduction length.
            assert_close(what, &download(b, &out), &expected, tol * (k as f64).sqrt());
        }
    }
}

pub fn check_norms<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(2);
    for &(rows, cols) in &[(1, 8), (17, 48), (5, 300)] {
        let x: Vec<f32> = rng.vec(rows * cols, 3.0).iter().map(|v| v + 0.5).collect();
        let (g, beta) = (rng.vec(cols, 1.0), rng.vec(cols, 1.0));
        let eps = 1e-5;
        let mut ln = Vec::new();
        let mut rms = Vec::new();
        for row in x.chunks(cols) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            for c in 0..cols {
                ln.push((row[c] as f64 - mean) / (var + eps).sqrt() * g[c] as f64 + beta[c] as f64);
                rms.push(row[c] as f64 / (ms + eps).sqrt() * g[c] as f64);
            }
        }
        let xt = upload(b, &x, rows, cols);
        let out = b.layer_norm(&xt, &upload(b, &g, 1, cols), &upload(b, &beta, 1, cols), eps as f32).expect("ln");
        assert_close("layer_norm", &download(b, &out), &ln, tol);
        let out = b.rms_norm(&xt, &upload(b, &g, 1, cols), eps as f32).expect("rms");
        assert_close("rms_norm", &download(b, &out), &rms, tol);

        // The fused residual steps: `x` becomes `x + delta`, the result is its norm.
        let delta = rng.vec(rows * cols, 1.0);
        let sum: Vec<f64> = x.iter().zip(&delta).map(|(&a, &d)| a as f64 + d as f64).collect();
        let (mut ln_sum, mut rms_sum) = (Vec::new(), Vec::new());
        for row in sum.chunks(cols) {
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            let ms = row.iter().map(|v| v.powi(2)).sum::<f64>() / cols as f64;
            for c in 0..cols {
                ln_sum.push((row[c] - mean) / (var + eps).sqrt() * g[c] as f64 + beta[c] as f64);
                rms_sum.push(row[c] / (ms + eps).sqrt() * g[c] as f64);
            }
        }
        let dt = upload(b, &delta, rows, cols);
        let mut xs = upload(b, &x, rows, cols);
        let out = b.add_layer_norm(&mut xs, &dt, &upload(b, &g, 1, cols), &upload(b, &beta, 1, cols), eps as f32);
        assert_close("add_layer_norm", &download(b, &out.expect("add_layer_norm")), &ln_sum, tol);
        assert_close("add_layer_norm residual", &download(b, &xs), &sum, tol);
        let mut xs = upload(b, &x, rows, cols);
        let out = b.add_rms_norm(&mut xs, &dt, &upload(b, &g, 1, cols), eps as f32).expect("add_rms_norm");
        assert_close("add_rms_norm", &download(b, &out), &rms_sum, tol);
        assert_close("add_rms_norm residual", &download(b, &xs), &sum, tol);
    }
}

pub fn check_elementwise<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(3);
    let (rows, cols) = (9, 37);
    let x = rng.vec(rows * cols, 6.0);
    let y = rng.vec(rows * cols, 6.0);
    let erf = |v: f64| libm::erf(v);
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let gelu_tanh =
        |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh());
    let cases: [(Activation, &dyn Fn(f64) -> f64); 5] = [
        (Activation::QuickGelu, &|v| v * sig(1.702 * v)),
        (Activation::GeluErf, &|v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))),
        (Activation::Silu, &|v| v * sig(v)),
        (Activation::GeluTanh, &gelu_tanh),
        (Activation::Tanh, &|v: f64| v.tanh()),
    ];
    for (act, f) in cases {
        let mut t = upload(b, &x, rows, cols);
        b.activation(&mut t, act).expect("activation");
        let expected: Vec<f64> = x.iter().map(|&v| f(v as f64)).collect();
        assert_close(&format!("{act:?}"), &download(b, &t), &expected, tol);
    }
    let out = b.silu_mul(&upload(b, &x, rows, cols), &upload(b, &y, rows, cols)).expect("silu_mul");
    let expected: Vec<f64> = x.iter().zip(&y).map(|(&g, &u)| g as f64 * sig(g as f64) * u as f64).collect();
    assert_close("silu_mul", &download(b, &out), &expected, tol);
    let mut a = upload(b, &x, rows, cols);
    b.add_assign(&mut a, &upload(b, &y, rows, cols)).expect("add");
    let expected: Vec<f64> = x.iter().zip(&y).map(|(&p, &q)| p as f64 + q as f64).collect();
    assert_close("add_assign", &download(b, &a), &expected, tol);
}

pub fn check_rows<B: Backend>(b: &B) {
    let mut rng = TestRng::new(4);
    let table = rng.vec(11 * 6, 1.0);
    let t = upload(b, &table, 11, 6);
    let ids = [3u32, 0, 10, 3];
    let got = download(b, &b.embedding(&t, &ids).expect("embedding"));
    let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * 6..(i as usize + 1) * 6].to_vec()).collect();
    assert_eq!(got, want, "embedding");
    assert!(b.embedding(&t, &[11]).is_err(), "embedding must reject an id outside the table");
    let rows = [10usize, 2];
    let got = download(b, &b.gather_rows(&t, &rows).expect("gather"));
    assert_eq!(&got[..6], &table[60..66]);
    assert_eq!(&got[6..], &table[12..18]);
    let mut dst = upload(b, &table, 11, 6);
    let src = rng.vec(12, 1.0);
    b.scatter_rows(&mut dst, &[1, 7], &upload(b, &src, 2, 6)).expect("scatter");
    let got = download(b, &dst);
    let mut want = table.clone();
    want[6..12].copy_from_slice(&src[..6]);
    want[42..48].copy_from_slice(&src[6..]);
    assert_eq!(got, want, "scatter_rows");
}

pub fn check_rotary<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(5);
    let (heads, hd, rows) = (3, 8, 5);
    let x = rng.vec(rows * heads * hd, 1.0);
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 10000f32.powf(-((2 * i) as f32) / hd as f32)).collect();
    let positions = [0usize, 1, 7, 100, 2047];
    let mut t = upload(b, &x, rows, heads * hd);
    b.rotary(&mut t, &positions, hd, &inv_freq).expect("rotary");
    let mut expected = vec![0.0f64; x.len()];
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = r * heads * hd + h * hd;
            for i in 0..hd {
                // rotate_half: (x1, x2) -> (-x2, x1), frequencies repeated over both halves.
                let f = inv_freq[i % (hd / 2)] as f64 * pos as f64;
                let rot = if i < hd / 2 { -(x[base + i + hd / 2] as f64) } else { x[base + i - hd / 2] as f64 };
                expected[base + i] = x[base + i] as f64 * f.cos() + rot * f.sin();
            }
        }
    }
    // Angles up to ~2000 rad lose ~1e-4 in f32, as they do in transformers.
    assert_close("rotary", &download(b, &t), &expected, tol.max(5e-4));
}

pub fn check_patch_embed<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(6);
    let (c, h, w, p, out) = (3, 28, 42, 14, 10);
    let pixels = rng.vec(c * h * w, 2.0);
    let weight = rng.vec(out * c * p * p, 0.1);
    let got =
        b.patch_embed(&upload(b, &pixels, c * h, w), c, p, &upload(b, &weight, out, c * p * p)).expect("patch_embed");
    let (ph, pw) = (h / p, w / p);
    let mut expected = vec![0.0f64; ph * pw * out];
    for py in 0..ph {
        for px in 0..pw {
            for o in 0..out {
                let mut acc = 0.0;
                for ch in 0..c {
                    for y in 0..p {
                        for x in 0..p {
                            let pix = pixels[(ch * h + py * p + y) * w + px * p + x] as f64;
                            acc += pix * weight[((o * c + ch) * p + y) * p + x] as f64;
                        }
                    }
                }
                expected[(py * pw + px) * out + o] = acc;
            }
        }
    }
    assert_close("patch_embed", &download(b, &got), &expected, tol * 24.0);
    assert!(b.patch_embed(&upload(b, &pixels, c * h, w), c, 5, &upload(b, &weight, out, c * p * p)).is_err());
}

/// Naive attention of the queries `q_rows` over keys `0..n_keys(i)` for one sequence.
fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    q_rows: std::ops::Range<usize>,
    k_base: usize,
    n_keys: impl Fn(usize) -> usize,
) -> Vec<f64> {
    let (qw, kw, hd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim, s.head_dim);
    let mut out = Vec::new();
    for (i, r) in q_rows.enumerate() {
        let mut row = vec![0.0f64; qw];
        for h in 0..s.heads {
            let kh = h / (s.heads / s.kv_heads);
            let scores: Vec<f64> = (0..n_keys(i))
                .map(|j| {
                    (0..hd)
                        .map(|d| q[r * qw + h * hd + d] as f64 * k[(k_base + j) * kw + kh * hd + d] as f64)
                        .sum::<f64>()
                        * s.scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - max).exp()).sum();
            for (j, sc) in scores.iter().enumerate() {
                let p = (sc - max).exp() / z;
                for d in 0..hd {
                    row[h * hd + d] += p * v[(k_base + j) * kw + kh * hd + d] as f64;
                }
            }
        }
        out.extend(row);
    }
    out
}

pub fn check_attention<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(7);
    for &(heads, kv_heads, hd) in &[(4, 4, 16), (6, 2, 8), (2, 1, 80)] {
        let s = AttentionShape::new(heads, kv_heads, hd);
        let lens = [17usize, 1, 140]; // 140 spans several row blocks of a blocked implementation
        let total: usize = lens.iter().sum();
        let q = rng.vec(total * heads * hd, 1.0);
        let k = rng.vec(total * kv_heads * hd, 1.0);
        let v = rng.vec(total * kv_heads * hd, 1.0);
        let got = b
            .attention(
                &upload(b, &q, total, heads * hd),
                &upload(b, &k, total, kv_heads * hd),
                &upload(b, &v, total, kv_heads * hd),
                &lens,
                s,
            )
            .expect("attention");
        let mut expected = Vec::new();
        let mut start = 0;
        for &l in &lens {
            expected.extend(naive_attention(&q, &k, &v, s, start..start + l, start, |_| l));
            start += l;
        }
        assert_close("attention", &download(b, &got), &expected, tol);
    }
}

/// `reshape` keeps the row-major values and refuses views of another size.
pub fn check_reshape<B: Backend>(b: &B) {
    let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    let t = b.reshape(upload(b, &data, 4, 6), 12, 2).expect("reshape");
    assert_eq!(b.dims(&t), (12, 2));
    assert_eq!(download(b, &t), data);
    assert!(b.reshape(t, 5, 5).is_err());
}

/// Query segments attending to key/value segments of other lengths (cross-attention), including
/// an empty query segment, against the naive f64 attention; mismatched segments are errors.
pub fn check_attention_kv<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(9);
    for &(heads, kv_heads, hd) in &[(4, 4, 16), (6, 2, 8), (2, 1, 80)] {
        let s = AttentionShape::new(heads, kv_heads, hd);
        let (q_lens, kv_lens) = ([3usize, 0, 1, 9], [40usize, 5, 1, 17]);
        let (qt, kt): (usize, usize) = (q_lens.iter().sum(), kv_lens.iter().sum());
        let q = rng.vec(qt * heads * hd, 1.0);
        let k = rng.vec(kt * kv_heads * hd, 1.0);
        let v = rng.vec(kt * kv_heads * hd, 1.0);
        let (qu, ku, vu) =
            (upload(b, &q, qt, heads * hd), upload(b, &k, kt, kv_heads * hd), upload(b, &v, kt, kv_heads * hd));
        let got = b.attention_kv(&qu, &ku, &vu, &q_lens, &kv_lens, s).expect("attention_kv");
        let mut expected = Vec::new();
        let (mut qs, mut ks) = (0, 0);
        for (&ql, &kl) in q_lens.iter().zip(&kv_lens) {
            expected.extend(naive_attention(&q, &k, &v, s, qs..qs + ql, ks, |_| kl));
            qs += ql;
            ks += kl;
        }
        assert_close("attention_kv", &download(b, &got), &expected, tol);
        assert!(b.attention_kv(&qu, &ku, &vu, &q_lens, &[40, 5, 1, 16], s).is_err(), "kv rows must add up");
        assert!(b.attention_kv(&qu, &ku, &vu, &[3, 1, 0, 9], &[40, 0, 6, 17], s).is_err(), "queries need keys");
    }
}

/// Prefill of ragged sequences into a KV cache, then one decode step each: the result must equal
/// causal attention over the whole sequence computed naively.
pub fn check_cached_attention<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(8);
    let s = AttentionShape::new(6, 2, 16);
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let lens = [9usize, 1, 23];
    let slots = [2usize, 0, 1];
    let full: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = lens
        .iter()
        .map(|&l| (rng.vec((l + 1) * qw, 1.0), rng.vec((l + 1) * kw, 1.0), rng.vec((l + 1) * kw, 1.0)))
        .collect();
    let mut cache = b.kv_cache(2, 3, 32, s.kv_heads, s.head_dim).expect("kv cache");
    let pack = |part: &dyn Fn(usize) -> std::ops::Range<usize>, which: usize, width: usize| -> Vec<f32> {
        full.iter()
            .enumerate()
            .flat_map(|(i, t)| {
                let src = [&t.0, &t.1, &t.2][which];
                let r = part(i);
                src[r.start * width..r.end * width].to_vec()
            })
            .collect()
    };
    for step in 0..2 {
        let part = |i: usize| if step == 0 { 0..lens[i] } else { lens[i]..lens[i] + 1 };
        let chunks: Vec<SeqChunk> =
            (0..3).map(|i| SeqChunk { slot: slots[i], start: part(i).start, len: part(i).len() }).collect();
        let rows: usize = chunks.iter().map(|c| c.len).sum();
        let got = b
            .cached_attention(
                &mut cache,
                1,
                &upload(b, &pack(&part, 0, qw), rows, qw),
                &upload(b, &pack(&part, 1, kw), rows, kw),
                &upload(b, &pack(&part, 2, kw), rows, kw),
                &chunks,
                s,
            )
            .expect("cached_attention");
        let mut expected = Vec::new();
        for (i, (q, k, v)) in full.iter().enumerate() {
            let r = part(i);
            let first = r.start;
            expected.extend(naive_attention(q, k, v, s, r, 0, |j| first + j + 1));
        }
        assert_close(&format!("cached_attention step {step}"), &download(b, &got), &expected, tol);
    }
    let overflow = [SeqChunk { slot: 0, start: 31, len: 2 }];
    let (q, k) = (rng.vec(2 * qw, 1.0), rng.vec(2 * kw, 1.0));
    let r = b.cached_attention(
        &mut cache,
        0,
        &upload(b, &q, 2, qw),
        &upload(b, &k, 2, kw),
        &upload(b, &k, 2, kw),
        &overflow,
        s,
    );
    assert!(r.is_err(), "writing past the cache capacity must fail");
    let twice = [SeqChunk { slot: 1, start: 0, len: 1 }, SeqChunk { slot: 1, start: 1, len: 1 }];
    let r = b.cached_attention(
        &mut cache,
        0,
        &upload(b, &q, 2, qw),
        &upload(b, &k, 2, kw),
        &upload(b, &k, 2, kw),
        &twice,
        s,
    );
    let e = r.err().expect("one slot twice in a call must fail").to_string();
    assert!(e.contains("slot 1 appears twice"), "{e}");
}

/// Long sequences, where a tiled implementation runs several blocks of keys (online softmax
/// across blocks): bidirectional attention over 600 rows, then a 700-token prompt prefilled in
/// two chunks (the second attending to the first through the cache) beside a second sequence,
/// and decode steps for both; every output against the naive f64 attention.
pub fn check_long_attention<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(10);
    let s = AttentionShape::new(4, 2, 32);
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let n = 600;
    let (q, k, v) = (rng.vec(n * qw, 1.0), rng.vec(n * kw, 1.0), rng.vec(n * kw, 1.0));
    let got =
        b.attention(&upload(b, &q, n, qw), &upload(b, &k, n, kw), &upload(b, &v, n, kw), &[n], s).expect("attention");
    assert_close("long attention", &download(b, &got), &naive_attention(&q, &k, &v, s, 0..n, 0, |_| n), tol);

    // Scores of a few large logits make the running maximum move between key blocks.
    let lens = [702usize, 40];
    let full: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        lens.iter().map(|&l| (rng.vec(l * qw, 3.0), rng.vec(l * kw, 1.0), rng.vec(l * kw, 1.0))).collect();
    let mut cache = b.kv_cache(1, 2, 704, s.kv_heads, s.head_dim).expect("kv cache");
    // (sequence, first row, rows) of each call: two prefill chunks of sequence 0 (the second with
    // the whole of sequence 1), then two decode steps of both.
    let calls: [&[(usize, usize, usize)]; 4] =
        [&[(0, 0, 300)], &[(0, 300, 400), (1, 0, 38)], &[(0, 700, 1), (1, 38, 1)], &[(1, 39, 1), (0, 701, 1)]];
    for (step, call) in calls.iter().enumerate() {
        let chunks: Vec<SeqChunk> = call.iter().map(|&(i, start, len)| SeqChunk { slot: i, start, len }).collect();
        let rows: usize = call.iter().map(|c| c.2).sum();
        let pick = |which: usize, width: usize| -> Vec<f32> {
            call.iter()
                .flat_map(|&(i, start, len)| {
                    let src = [&full[i].0, &full[i].1, &full[i].2][which];
                    src[start * width..(start + len) * width].to_vec()
                })
                .collect()
        };
        let got = b
            .cached_attention(
                &mut cache,
                0,
                &upload(b, &pick(0, qw), rows, qw),
                &upload(b, &pick(1, kw), rows, kw),
                &upload(b, &pick(2, kw), rows, kw),
                &chunks,
                s,
            )
            .expect("cached_attention");
        let mut expected = Vec::new();
        for &(i, start, len) in call.iter() {
            let (q, k, v) = &full[i];
            expected.extend(naive_attention(q, k, v, s, start..start + len, 0, |j| start + j + 1));
        }
        assert_close(&format!("long cached_attention call {step}"), &download(b, &got), &expected, tol);
    }
}

/// Naive DeBERTa attention of one sequence (rows `start..start + n` of the packed tensors): scores
/// `scale · (qᵢ·kⱼ + qᵢ·pk[c2p[i-j+center]] + kⱼ·pq[p2c[i-j+center]])` per head, in f64.
#[allow(clippy::too_many_arguments)]
fn naive_relative(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos_key: Option<&[f32]>,
    pos_query: Option<&[f32]>,
    (c2p, p2c): (&[u32], &[u32]),
    s: AttentionShape,
    start: usize,
    n: usize,
) -> Vec<f64> {
    let (qw, kw, hd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim, s.head_dim);
    let center = (c2p.len() - 1) / 2;
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let mut out = vec![0.0f64; n * qw];
    for h in 0..s.heads {
        let kh = h / (s.heads / s.kv_heads);
        for i in 0..n {
            let qi = &q[(start + i) * qw + h * hd..][..hd];
            let scores: Vec<f64> = (0..n)
                .map(|j| {
                    let kj = &k[(start + j) * kw + kh * hd..][..hd];
                    let d = center + i - j;
                    let mut sc = dot(qi, kj);
                    if let Some(pk) = pos_key {
                        sc += dot(qi, &pk[c2p[d] as usize * qw + h * hd..][..hd]);
                    }
                    if let Some(pq) = pos_query {
                        sc += dot(kj, &pq[p2c[d] as usize * qw + h * hd..][..hd]);
                    }
                    sc * s.scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - max).exp()).sum();
            for (j, sc) in scores.iter().enumerate() {
                let p = (sc - max).exp() / z;
                for d in 0..hd {
                    out[i * qw + h * hd + d] += p * v[(start + j) * kw + kh * hd + d] as f64;
                }
            }
        }
    }
    out
}

/// DeBERTa's disentangled attention: packed sequences (one of a single row), both relative terms
/// and each alone, GQA, index tables longer than the longest sequence needs and indices that
/// repeat (the clamped far buckets); out-of-range tables and indices are errors.
pub fn check_relative_attention<B: Backend>(b: &B, tol: f64) {
    let mut rng = TestRng::new(11);
    for &(heads, kv_heads, hd, terms) in &[(4, 4, 16, 3), (6, 2, 8, 1), (2, 1, 64, 2), (3, 3, 32, 3)] {
        let s = AttentionShape { scale: 1.0 / ((hd * 3) as f32).sqrt(), ..AttentionShape::new(heads, kv_heads, hd) };
        let (qw, kw) = (heads * hd, kv_heads * hd);
        let lens = [9usize, 1, 37];
        let total: usize = lens.iter().sum();
        let positions = 12;
        let (q, k, v) = (rng.vec(total * qw, 1.0), rng.vec(total * kw, 1.0), rng.vec(total * kw, 1.0));
        let (pk, pq) = (rng.vec(positions * qw, 1.0), rng.vec(positions * qw, 1.0));
        // Relative positions -40..=40 (center 40), bucketed into the 12 rows with clamping.
        let center = 40i64;
        let c2p: Vec<u32> = (-center..=center).map(|d| (d / 4 + 6).clamp(0, 11) as u32).collect();
        let p2c: Vec<u32> = (-center..=center).map(|d| (6 - d / 5).clamp(0, 11) as u32).collect();
        let (qu, ku, vu) = (upload(b, &q, total, qw), upload(b, &k, total, kw), upload(b, &v, total, kw));
        let (pku, pqu) = (upload(b, &pk, positions, qw), upload(b, &pq, positions, qw));
        let rel = RelativePositions {
            pos_key: (terms & 1 != 0).then_some(&pku),
            pos_query: (terms & 2 != 0).then_some(&pqu),
            c2p: &c2p,
            p2c: &p2c,
        };
        let got = b.relative_attention(&qu, &ku, &vu, &lens, rel, s).expect("relative_attention");
        let mut expected = Vec::new();
        let mut start = 0;
        for &n in &lens {
            let (pk, pq) = ((terms & 1 != 0).then_some(&pk[..]), (terms & 2 != 0).then_some(&pq[..]));
            expected.extend(naive_relative(&q, &k, &v, pk, pq, (&c2p[..], &p2c[..]), s, start, n));
            start += n;
        }
        assert_close(&format!("relative_attention terms {terms}"), &download(b, &got), &expected, tol);
        // 71 relative positions: too few for a sequence of 37 rows (73).
        let bad = RelativePositions { c2p: &c2p[5..c2p.len() - 5], p2c: &p2c[5..p2c.len() - 5], ..rel };
        assert!(b.relative_attention(&qu, &ku, &vu, &lens, bad, s).is_err(), "index tables too short");
    }
}

fn filled<B: Backend>(b: &B, rows: usize, cols: usize) -> B::Tensor {
    b.from_host(&vec![0.5; rows * cols], rows, cols).expect("upload")
}

/// One `cached_attention` call on a fresh 2-layer cache of 2 slots × 8 positions of
/// `cache_kv_heads` heads as wide as the call's.
fn cached_call<B: Backend>(
    b: &B,
    chunks: &[SeqChunk],
    layer: usize,
    s: AttentionShape,
    cache_kv_heads: usize,
) -> crate::error::Result<()> {
    let mut cache = b.kv_cache(2, 2, 8, cache_kv_heads, s.head_dim)?;
    let rows: usize = chunks.iter().map(|c| c.len).sum();
    let (q, k) = (filled(b, rows, s.heads * s.head_dim), filled(b, rows, s.kv_heads * s.head_dim));
    b.cached_attention(&mut cache, layer, &q, &k, &k, chunks, s).map(drop)
}

/// One `relative_attention` call over a sequence of 3 rows with a c2p table `[pos_rows, width]`.
fn relative_call<B: Backend>(
    b: &B,
    index: &[u32],
    pos_rows: usize,
    width: usize,
    s: AttentionShape,
) -> crate::error::Result<()> {
    let pk = filled(b, pos_rows, width);
    let rel = RelativePositions { pos_key: Some(&pk), pos_query: None, c2p: index, p2c: index };
    let (q, k) = (filled(b, 3, s.heads * s.head_dim), filled(b, 3, s.kv_heads * s.head_dim));
    b.relative_attention(&q, &k, &k, &[3], rel, s).map(drop)
}

/// Every kind of invalid call is refused, before any backend computes, with the error the CPU
/// backend gives (one message per mistake, from the checked layer — not a launcher's or a
/// kernel's); each message names its op.
pub fn check_invalid_calls<B: Backend>(b: &B) {
    // The call's body runs once with `$b` the backend under test, once with the CPU backend.
    macro_rules! case {
        ($what:literal, $op:literal, |$b:ident| $body:expr) => {{
            let got = {
                let $b = b;
                $body.map(drop)
            };
            let want = {
                let $b = &Cpu;
                $body.map(drop)
            };
            let got = got.err().unwrap_or_else(|| panic!("{}: {} was accepted", b.name(), $what)).to_string();
            let want = want.err().unwrap_or_else(|| panic!("cpu: {} was accepted", $what)).to_string();
            assert_eq!(got, want, "{}: {} and cpu refuse it differently", $what, b.name());
            assert!(got.starts_with(concat!($op, ": ")), "{}: the error should name {}: {got}", $what, $op);
        }};
    }
    let s = AttentionShape::new(4, 2, 8);
    let sampling = SamplingParams { temperature: 1.0, top_p: 0.9 };
    case!("6 values as [2, 4]", "from_host", |b| b.from_host(&[0.0; 6], 2, 4));
    case!("a row past the end", "gather_rows", |b| b.gather_rows(&filled(b, 3, 2), &[1, 3]));
    case!("a scatter source of other width", "scatter_rows", |b| b.scatter_rows(
        &mut filled(b, 3, 2),
        &[0],
        &filled(b, 1, 3)
    ));
    case!("a scatter row past the end", "scatter_rows", |b| b.scatter_rows(
        &mut filled(b, 3, 2),
        &[0, 5],
        &filled(b, 2, 2)
    ));
    case!("a view of another size", "reshape", |b| b.reshape(filled(b, 4, 6), 5, 5));
    case!("mismatched inner dims", "linear", |b| b.linear(&filled(b, 2, 3), &filled(b, 4, 5), None));
    case!("a bias of the wrong length", "linear", |b| b.linear(
        &filled(b, 2, 3),
        &filled(b, 4, 3),
        Some(&filled(b, 1, 5))
    ));
    case!("a residual of another shape", "add_assign", |b| b.add_assign(&mut filled(b, 2, 3), &filled(b, 3, 2)));
    case!("norm weights of another width", "layer_norm", |b| {
        b.layer_norm(&filled(b, 2, 3), &filled(b, 1, 4), &filled(b, 1, 3), 1e-5)
    });
    case!("an rms weight of another width", "rms_norm", |b| b.rms_norm(&filled(b, 2, 3), &filled(b, 1, 2), 1e-5));
    case!("a fused residual of another shape", "add_layer_norm", |b| {
        b.add_layer_norm(&mut filled(b, 2, 3), &filled(b, 1, 3), &filled(b, 1, 3), &filled(b, 1, 3), 1e-5)
    });
    case!("a fused rms residual of another shape", "add_rms_norm", |b| {
        b.add_rms_norm(&mut filled(b, 2, 3), &filled(b, 2, 4), &filled(b, 1, 3), 1e-5)
    });
    case!("gate and up of other shapes", "silu_mul", |b| b.silu_mul(&filled(b, 2, 3), &filled(b, 2, 4)));
    case!("one position short", "rotary", |b| b.rotary(&mut filled(b, 3, 8), &[0, 1], 8, &[1.0; 4]));
    case!("an odd head dim", "rotary", |b| b.rotary(&mut filled(b, 1, 6), &[0], 3, &[1.0]));
    case!("a token outside the table", "embedding", |b| b.embedding(&filled(b, 5, 2), &[1, 5]));
    case!("an image of partial patches", "patch_embed", |b| b.patch_embed(
        &filled(b, 30, 14),
        3,
        7,
        &filled(b, 4, 147)
    ));
    case!("a patch weight of another width", "patch_embed", |b| b.patch_embed(
        &filled(b, 42, 14),
        3,
        7,
        &filled(b, 4, 144)
    ));
    case!("lengths that do not cover the rows", "attention", |b| {
        b.attention(&filled(b, 5, 32), &filled(b, 5, 16), &filled(b, 5, 16), &[2, 2], s)
    });
    case!("heads that do not group", "attention", |b| {
        b.attention(&filled(b, 2, 24), &filled(b, 2, 16), &filled(b, 2, 16), &[2], AttentionShape::new(3, 2, 8))
    });
    case!("values of another shape than the keys", "attention", |b| {
        b.attention(&filled(b, 2, 32), &filled(b, 2, 16), &filled(b, 2, 8), &[2], s)
    });
    case!("queries without keys", "attention_kv", |b| {
        b.attention_kv(&filled(b, 3, 32), &filled(b, 4, 16), &filled(b, 4, 16), &[1, 2], &[4, 0], s)
    });
    case!("segment counts that differ", "attention_kv", |b| {
        b.attention_kv(&filled(b, 3, 32), &filled(b, 4, 16), &filled(b, 4, 16), &[3], &[2, 2], s)
    });
    case!("a layer past the cache", "cached_attention", |b| {
        cached_call(b, &[SeqChunk { slot: 0, start: 0, len: 1 }], 2, s, 2)
    });
    case!("a chunk past the capacity", "cached_attention", |b| {
        cached_call(b, &[SeqChunk { slot: 1, start: 6, len: 3 }], 0, s, 2)
    });
    case!("a slot past the cache", "cached_attention", |b| {
        cached_call(b, &[SeqChunk { slot: 2, start: 0, len: 1 }], 0, s, 2)
    });
    case!("one slot twice", "cached_attention", |b| {
        cached_call(b, &[SeqChunk { slot: 1, start: 0, len: 1 }, SeqChunk { slot: 1, start: 1, len: 1 }], 0, s, 2)
    });
    case!("a cache of another width", "cached_attention", |b| {
        cached_call(b, &[SeqChunk { slot: 0, start: 0, len: 1 }], 0, s, 1)
    });
    case!("index tables too short", "relative_attention", |b| relative_call(b, &[0, 1, 2], 4, 32, s));
    case!("index tables of even length", "relative_attention", |b| relative_call(b, &[0, 1, 2, 3, 0, 1], 4, 32, s));
    case!("an index past the position table", "relative_attention", |b| relative_call(b, &[0, 1, 2, 3, 4], 4, 32, s));
    case!("a position table of another width", "relative_attention", |b| relative_call(b, &[0, 1, 2, 3, 0], 4, 16, s));
    case!("logits without columns", "argmax", |b| b.argmax(&filled(b, 2, 0)));
    case!("one seed short", "sample", |b| b.sample(&filled(b, 3, 5), sampling, &[1, 2]));
}

pub fn check_token_choice<B: Backend>(b: &B) {
    let mut rng = TestRng::new(9);
    let (rows, vocab) = (5, 301);
    let mut logits = rng.vec(rows * vocab, 4.0);
    logits[2 * vocab + 7] = 50.0;
    logits[2 * vocab + 9] = 50.0; // a tie: the first index wins, as in torch.argmax
    logits[3 * vocab + 11] = 60.0;
    let t = upload(b, &logits, rows, vocab);
    let got = b.argmax(&t).expect("argmax");
    for (r, row) in logits.chunks(vocab).enumerate() {
        let best = row.iter().enumerate().fold(0, |bi, (i, &v)| if v > row[bi] { i } else { bi });
        assert_eq!(got[r] as usize, best, "argmax row {r}");
    }
    assert_eq!(got[2], 7);
    let params = SamplingParams { temperature: 0.8, top_p: 0.9 };
    let seeds: Vec<u64> = (0..rows as u64).map(|i| i * 7919 + 1).collect();
    let got = b.sample(&t, params, &seeds).expect("sample");
    for (r, row) in logits.chunks(vocab).enumerate() {
        assert_eq!(got[r], sample_row(row, params, seeds[r]), "sample row {r}");
    }
    assert_eq!(got[3], 11, "a dominant logit must be drawn");
    assert_eq!(argmax_row(&logits[..vocab]), b.argmax(&t).unwrap()[0]);
}

/// Expands to one `#[test]` per conformance check for the backend built by `$backend`
/// (an expression evaluated in each test), with relative tolerance `$tol`.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr, $tol:expr) => {
        use $crate::backend::conformance as c;
        #[test]
        fn linear() {
            c::check_linear(&$backend, $tol);
        }
        #[test]
        fn norms() {
            c::check_norms(&$backend, $tol);
        }
        #[test]
        fn elementwise() {
            c::check_elementwise(&$backend, $tol);
        }
        #[test]
        fn rows() {
            c::check_rows(&$backend);
        }
        #[test]
        fn rotary() {
            c::check_rotary(&$backend, $tol);
        }
        #[test]
        fn patch_embed() {
            c::check_patch_embed(&$backend, $tol);
        }
        #[test]
        fn attention() {
            c::check_attention(&$backend, $tol);
        }
        #[test]
        fn reshape() {
            c::check_reshape(&$backend);
        }
        #[test]
        fn attention_kv() {
            c::check_attention_kv(&$backend, $tol);
        }
        #[test]
        fn cached_attention() {
            c::check_cached_attention(&$backend, $tol);
        }
        #[test]
        fn long_attention() {
            c::check_long_attention(&$backend, $tol);
        }
        #[test]
        fn token_choice() {
            c::check_token_choice(&$backend);
        }
        #[test]
        fn relative_attention() {
            c::check_relative_attention(&$backend, $tol);
        }
        #[test]
        fn invalid_calls() {
            c::check_invalid_calls(&$backend);
        }
    };
}

#[cfg(test)]
mod cpu_conformance {
    crate::conformance_tests!(crate::backend::cpu::Cpu, 1e-5);

    #[test]
    fn sampling_reference_follows_top_p() {
        // Two tokens share 90% of the mass; top_p = 0.5 keeps only the larger one.
        let logits = [0.0f32, 3.0, 2.0, -5.0];
        let p = SamplingParams { temperature: 1.0, top_p: 0.5 };
        for seed in 0..50 {
            assert_eq!(super::sample_row(&logits, p, seed), 1);
        }
        // With top_p = 1 every token can appear; the empirical frequency follows the softmax.
        let p = SamplingParams { temperature: 1.0, top_p: 1.0 };
        let n = 20000;
        let hits = (0..n).filter(|&s| super::sample_row(&logits, p, s) == 2).count() as f64 / n as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((hits - 2f64.exp() / z).abs() < 0.02, "frequency {hits}");
    }
    use super::SamplingParams;
}
