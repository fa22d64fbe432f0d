//! Every CUDA kernel against its CPU twin (`icet_kernels::twin`) on fresh random inputs at
//! several shapes — ragged sequence lengths, odd widths, the real model sizes — in every storage
//! dtype. Each output buffer is poisoned with NaN before the kernel runs, so an element the
//! kernel fails to write is caught. Inputs are rounded to the storage dtype before they reach
//! both the kernel and the twin, so the comparison measures the kernel, not the input rounding.
//!
//! Tolerances (`max |gpu - twin| / max(1, |twin|)`): f32 1e-5 (GEMMs 1e-5·√k), bf16/f16 1e-2;
//! pure data movement must be bit-exact; token choice must pick the same token.
//!
//! On a machine without a GPU every test runs on the emulated device (gpu_common.rs), where three
//! shapes are reduced because the full ones cost minutes of CPU: the flash sequences (577/600
//! tokens → 130/200, still several key tiles, a partial last tile and cache offsets), the
//! backend's attention paths (2 × 577 ViT tokens → 2 × 130; the 32 × 128 GQA decoder → 8 × 128
//! with prefills of 200/17/130 instead of 600/17/130) and the sampling batch (64 × 32000 →
//! 8 × 32000, 3 × 128256 → 2 × 128256). Head dims, vocabulary sizes and every code path stay.
//! Without a GPU or the emulator each test prints `SKIPPED <test>: <reason>` on stderr and
//! returns; `ICET_REQUIRE_GPU=1` turns that into a failure (scripts/gpu-check.sh sets it).
#[macro_use]
#[path = "gpu_common.rs"]
mod gpu_common;

use gpu_common::{assert_close, on_gpu_else};
use icet_kernels::{twin, Act, AttnRow, DType, DevBuf, Gpu, RelRow, RelTables, SeqDesc};
use icet_models::backend::conformance::TestRng;
use icet_models::backend::cpu::Cpu;
use icet_models::backend::{sample_row, uniform_from_seed, AttentionShape, Backend, SamplingParams, SeqChunk};

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn tol(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-5,
        DType::BF16 | DType::F16 => 1e-2,
    }
}

/// `n` values uniform in `[-scale, scale)`, rounded to `d`.
fn data(rng: &mut TestRng, d: DType, n: usize, scale: f32) -> Vec<f32> {
    twin::round_all(d, &rng.vec(n, scale))
}

fn up(g: &Gpu, d: DType, v: &[f32]) -> DevBuf {
    g.upload_f32(d, v).expect("upload")
}

fn poisoned(g: &Gpu, d: DType, n: usize) -> DevBuf {
    let mut b = g.alloc(d, n).expect("alloc");
    g.fill_nan(&mut b).expect("poison");
    b
}

fn down(g: &Gpu, b: &DevBuf) -> Vec<f32> {
    g.download_f32(b).expect("download")
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn casts_round_to_nearest_even() {
    let cuda = cuda_or_skip!("casts_round_to_nearest_even", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(11);
    let mut x = rng.vec(100_003, 300.0);
    x.extend([0.0, -0.0, 1.0 + 1.0 / 256.0, 1e-30, -1e-8, 65504.0, 65520.0, 1e30, f32::INFINITY, f32::NEG_INFINITY]);
    for d in [DType::BF16, DType::F16] {
        let got = down(g, &up(g, d, &x));
        let want = twin::round_all(d, &x);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{d} cast of {} (element {i}): {a} != {b}", x[i]);
        }
    }
}

#[test]
fn pointwise_kernels_match_twins() {
    let cuda = cuda_or_skip!("pointwise_kernels_match_twins", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(12);
    for d in DTYPES {
        for n in [1usize, 999, (1 << 20) + 3] {
            let (a, b) = (data(&mut rng, d, n, 6.0), data(&mut rng, d, n, 6.0));
            let mut ta = up(g, d, &a);
            g.add_assign(&mut ta, &up(g, d, &b)).unwrap();
            assert_close(&format!("add {d} n={n}"), &down(g, &ta), &wide(&twin::add(&a, &b, d)), tol(d));
            for act in [Act::QuickGelu, Act::GeluErf, Act::Silu, Act::GeluTanh, Act::Tanh] {
                let mut t = up(g, d, &a);
                g.activation(&mut t, n, act).unwrap();
                let want: Vec<f64> = a.iter().map(|&v| twin::activate(v, act) as f64).collect();
                assert_close(&format!("{act:?} {d} n={n}"), &down(g, &t), &want, tol(d));
            }
            let mut out = poisoned(g, d, n);
            g.silu_mul(&mut out, &up(g, d, &a), &up(g, d, &b), n).unwrap();
            let want: Vec<f64> =
                a.iter().zip(&b).map(|(&x, &y)| twin::activate(x, Act::Silu) as f64 * y as f64).collect();
            assert_close(&format!("silu_mul {d} n={n}"), &down(g, &out), &want, tol(d));
        }
    }
}

#[test]
fn norms_and_fused_residual_norms_match_twins() {
    let cuda = cuda_or_skip!("norms_and_fused_residual_norms_match_twins", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(13);
    for d in DTYPES {
        for (rows, cols) in [(1usize, 8usize), (2, 33), (5, 300), (7, 1024), (3, 4096), (577, 1024)] {
            let n = rows * cols;
            let x: Vec<f32> = twin::round_all(d, &rng.vec(n, 3.0).iter().map(|v| v + 0.5).collect::<Vec<_>>());
            let delta = data(&mut rng, d, n, 1.0);
            let (w, b) = (data(&mut rng, d, cols, 1.0), data(&mut rng, d, cols, 1.0));
            let (tw, tb) = (up(g, d, &w), up(g, d, &b));
            let eps = 1e-5;
            let what = format!("{d} [{rows}, {cols}]");

            let mut out = poisoned(g, d, n);
            g.layer_norm(&mut out, &up(g, d, &x), &tw, &tb, rows, cols, eps).unwrap();
            let (want, _) = twin::layer_norm(&x, None, &w, &b, cols, eps, d);
            assert_close(&format!("layer_norm {what}"), &down(g, &out), &wide(&want), tol(d));

            let mut out = poisoned(g, d, n);
            g.rms_norm(&mut out, &up(g, d, &x), &tw, rows, cols, eps).unwrap();
            let (want, _) = twin::rms_norm(&x, None, &w, cols, eps, d);
            assert_close(&format!("rms_norm {what}"), &down(g, &out), &wide(&want), tol(d));

            let mut out = poisoned(g, d, n);
            let mut tx = up(g, d, &x);
            g.add_layer_norm(&mut out, &mut tx, &up(g, d, &delta), &tw, &tb, rows, cols, eps).unwrap();
            let (want, want_x) = twin::layer_norm(&x, Some(&delta), &w, &b, cols, eps, d);
            assert_eq!(down(g, &tx), want_x, "add_layer_norm residual {what}");
            assert_close(&format!("add_layer_norm {what}"), &down(g, &out), &wide(&want), tol(d));

            let mut out = poisoned(g, d, n);
            let mut tx = up(g, d, &x);
            g.add_rms_norm(&mut out, &mut tx, &up(g, d, &delta), &tw, rows, cols, eps).unwrap();
            let (want, want_x) = twin::rms_norm(&x, Some(&delta), &w, cols, eps, d);
            assert_eq!(down(g, &tx), want_x, "add_rms_norm residual {what}");
            assert_close(&format!("add_rms_norm {what}"), &down(g, &out), &wide(&want), tol(d));
        }
    }
}

#[test]
fn rotary_matches_twin() {
    let cuda = cuda_or_skip!("rotary_matches_twin", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(14);
    for d in DTYPES {
        for (rows, heads, hd) in [(5usize, 3usize, 8usize), (10, 16, 64), (37, 32, 128), (3, 2, 80)] {
            let x = data(&mut rng, d, rows * heads * hd, 1.0);
            let positions: Vec<i32> = (0..rows).map(|_| (rng.next_u64() % 8192) as i32).collect();
            let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 500000f32.powf(-((2 * i) as f32) / hd as f32)).collect();
            let mut t = up(g, d, &x);
            g.rotary(&mut t, &positions, &inv_freq, heads, hd).unwrap();
            let want = twin::rotary(&x, &positions, &inv_freq, heads, hd, d);
            // cosf/sinf of angles up to 8192 rad: a few ulp of the angle's argument reduction.
            let t_ = if d == DType::F32 { 1e-5 } else { tol(d) };
            assert_close(&format!("rotary {d} [{rows}, {heads}x{hd}]"), &down(g, &t), &wide(&want), t_);
        }
    }
}

#[test]
fn row_movement_is_exact() {
    let cuda = cuda_or_skip!("row_movement_is_exact", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(15);
    for d in DTYPES {
        for (src_rows, cols) in [(11usize, 6usize), (32000, 64), (600, 4096)] {
            let src = data(&mut rng, d, src_rows * cols, 2.0);
            let ts = up(g, d, &src);
            let idx: Vec<usize> = (0..97).map(|_| (rng.next_u64() % src_rows as u64) as usize).collect();
            let mut out = poisoned(g, d, idx.len() * cols);
            g.gather_rows(&mut out, &ts, src_rows, &idx, cols).unwrap();
            assert_eq!(down(g, &out), twin::gather_rows(&src, &idx, cols), "gather {d} [{src_rows}, {cols}]");

            let mut targets: Vec<usize> = (0..src_rows).collect();
            for i in (1..targets.len()).rev() {
                targets.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            targets.truncate(7.min(src_rows));
            let rows_in = data(&mut rng, d, targets.len() * cols, 2.0);
            let mut dst = up(g, d, &src);
            g.scatter_rows(&mut dst, src_rows, &up(g, d, &rows_in), &targets, cols).unwrap();
            assert_eq!(down(g, &dst), twin::scatter_rows(&src, &rows_in, &targets, cols), "scatter {d}");
        }
        // The capture hook: two layers of 3 images x 5 tokens into one buffer, CLS dropped / kept.
        let (images, tokens, cols) = (3usize, 5usize, 40usize);
        for drop in [0usize, 1] {
            let kept = images * (tokens - drop);
            let sentinel = data(&mut rng, d, 2 * kept * cols, 1.0);
            let mut dst = up(g, d, &sentinel);
            let layer = data(&mut rng, d, images * tokens * cols, 1.0);
            g.capture_rows(&mut dst, 2 * kept, kept, &up(g, d, &layer), images, tokens, drop, cols).unwrap();
            let want = twin::capture_rows(&sentinel, kept, &layer, images, tokens, drop, cols);
            assert_eq!(down(g, &dst), want, "capture_rows {d} drop={drop}");
        }
        // ViT-L/14-336 patchify and embedding assembly (2 images), and an odd small one.
        for (c, h, w, p, width) in [(3usize, 336usize, 336usize, 14usize, 64usize), (3, 28, 42, 14, 10)] {
            let images = 2;
            let pixels = data(&mut rng, d, c * h * w, 2.0);
            let n_patches = (h / p) * (w / p);
            let mut cols_buf = poisoned(g, d, c * h * w);
            g.im2col(&mut cols_buf, &up(g, d, &pixels), c, h, w, p).unwrap();
            assert_eq!(down(g, &cols_buf), twin::im2col(&pixels, c, h, w, p), "im2col {d} {h}x{w}");
            let tokens = n_patches + 1;
            let patches = data(&mut rng, d, images * n_patches * width, 1.0);
            let (cls, pos) = (data(&mut rng, d, width, 1.0), data(&mut rng, d, tokens * width, 1.0));
            let mut out = poisoned(g, d, images * tokens * width);
            g.vit_assemble(&mut out, &up(g, d, &patches), &up(g, d, &cls), &up(g, d, &pos), images, tokens, width)
                .unwrap();
            let want = twin::vit_assemble(&patches, &cls, &pos, images, tokens, width, d);
            assert_eq!(down(g, &out), want, "vit_assemble {d}");
        }
    }
}

#[test]
fn linear_matches_twin() {
    let cuda = cuda_or_skip!("linear_matches_twin", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(16);
    for d in DTYPES {
        for (m, k, n, bias) in [
            (1usize, 7usize, 5usize, true),
            (13, 64, 33, false),
            (70, 96, 130, true),
            (577, 1024, 96, true),
            (3, 4096, 512, false),
        ] {
            let (x, w, b) = (data(&mut rng, d, m * k, 1.0), data(&mut rng, d, n * k, 1.0), data(&mut rng, d, n, 1.0));
            let mut out = poisoned(g, d, m * n);
            let tb = up(g, d, &b);
            g.linear(&mut out, &up(g, d, &x), &up(g, d, &w), bias.then_some(&tb), m, n, k).unwrap();
            let want = twin::linear(&x, &w, bias.then_some(&b[..]), m, n, k);
            let t_ = if d == DType::F32 { 1e-5 * (k as f64).sqrt() } else { tol(d) };
            assert_close(&format!("linear {d} {m}x{k}x{n}"), &down(g, &out), &want, t_);
        }
    }
}

/// Sequences for flash attention: a ragged non-causal batch (ViT-like, one 577-token image
/// among short ones) and a causal prefill whose keys sit in cache slots after earlier tokens.
/// Emulated: the 577- and 600-token sequences become 130 and 200 tokens.
fn flash_cases(emulated: bool) -> Vec<(bool, Vec<(usize, usize)>)> {
    let (vit, prefill) = if emulated { (130, 200) } else { (577, 600) };
    vec![
        // (causal, [(q_len, n_keys)])
        (false, vec![(vit, vit), (1, 1), (100, 100), (64, 64), (65, 65)]),
        (true, vec![(prefill, prefill), (17, 40), (1, 1), (130, 200), (64, 64)]),
    ]
}

#[test]
fn flash_attention_matches_twin() {
    let cuda = cuda_or_skip!("flash_attention_matches_twin", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(17);
    for d in [DType::BF16, DType::F16] {
        for hd in icet_kernels::FLASH_HEAD_DIMS {
            for (heads, kv_heads) in [(4usize, 4usize), (8, 2)] {
                for (causal, lens) in flash_cases(cuda.is_emulated()) {
                    let mut seqs = Vec::new();
                    let (mut q0, mut k0) = (0usize, 0usize);
                    for &(ql, nk) in &lens {
                        // Keys of each sequence start a few rows after the previous one's, as
                        // cache slots do.
                        k0 += 3;
                        seqs.push(SeqDesc {
                            q_start: q0 as i32,
                            q_len: ql as i32,
                            k_base: k0 as i32,
                            n_keys: nk as i32,
                            causal: causal as i32,
                            pad: [0; 3],
                        });
                        q0 += ql;
                        k0 += nk;
                    }
                    let (q_rows, kv_rows) = (q0, k0 + 5);
                    let q = data(&mut rng, d, q_rows * heads * hd, 1.0);
                    let k = data(&mut rng, d, kv_rows * kv_heads * hd, 1.0);
                    let v = data(&mut rng, d, kv_rows * kv_heads * hd, 1.0);
                    let scale = (hd as f32).powf(-0.5);
                    let mut out = poisoned(g, d, q_rows * heads * hd);
                    g.flash_attention(
                        &mut out,
                        &up(g, d, &q),
                        q_rows,
                        &up(g, d, &k),
                        &up(g, d, &v),
                        kv_rows,
                        &seqs,
                        heads,
                        kv_heads,
                        hd,
                        scale,
                    )
                    .unwrap();
                    let want = twin::attention_seqs(&q, &k, &v, q_rows, &seqs, heads, kv_heads, hd, scale);
                    let what = format!("flash {d} hd={hd} heads={heads}/{kv_heads} causal={causal}");
                    assert_close(&what, &down(g, &out), &want, tol(d));
                }
            }
        }
    }
}

#[test]
fn row_attention_with_key_splits_matches_twin() {
    let cuda = cuda_or_skip!("row_attention_with_key_splits_matches_twin", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(18);
    for d in DTYPES {
        for (hd, heads, kv_heads) in [(16usize, 6usize, 2usize), (64, 4, 4), (80, 2, 1), (128, 8, 2), (256, 2, 2)] {
            // Decode-like rows (one query each) over contexts of 1 to 3000 keys in a shared
            // buffer, and prefill-like rows of one sequence (growing causal prefixes).
            let kv_rows = 3100;
            let mut rows: Vec<AttnRow> = [1, 2, 31, 700, 3000, 257]
                .iter()
                .enumerate()
                .map(|(i, &n)| AttnRow { k_base: (i * 13) as i32, n_keys: n })
                .collect();
            rows.extend((0..20).map(|i| AttnRow { k_base: 50, n_keys: i + 1 }));
            let q = data(&mut rng, d, rows.len() * heads * hd, 1.0);
            let k = data(&mut rng, d, kv_rows * kv_heads * hd, 1.0);
            let v = data(&mut rng, d, kv_rows * kv_heads * hd, 1.0);
            let scale = (hd as f32).powf(-0.5);
            let want = twin::attention_rows(&q, &k, &v, &rows, heads, kv_heads, hd, scale);
            let (tq, tk, tv) = (up(g, d, &q), up(g, d, &k), up(g, d, &v));
            for splits in [Some(1), Some(3), Some(16), None] {
                let mut out = poisoned(g, d, rows.len() * heads * hd);
                g.attention_rows(&mut out, &tq, &tk, &tv, kv_rows, &rows, heads, kv_heads, hd, scale, splits).unwrap();
                let what = format!("attention_rows {d} hd={hd} heads={heads}/{kv_heads} splits={splits:?}");
                assert_close(&what, &down(g, &out), &want, tol(d));
            }
        }
    }
}

/// DeBERTa's relative attention: packed sequences (one of a single row, one longer than a block's
/// four warps cover in one pass), both relative terms and each alone, GQA and the head dims of the
/// tiny fixtures and the real model (64); index tables wider than needed, with repeated (clamped)
/// rows, and rows placed in a key buffer with other rows around them.
#[test]
fn relative_attention_matches_twin() {
    let cuda = cuda_or_skip!("relative_attention_matches_twin", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(19);
    for d in DTYPES {
        for (hd, heads, kv_heads, terms) in [(16usize, 4usize, 4usize, 3u8), (64, 2, 2, 3), (8, 6, 2, 1), (32, 3, 3, 2)]
        {
            let lens = [13usize, 1, 70];
            let (qw, kw) = (heads * hd, kv_heads * hd);
            let (center, positions) = (80usize, 24usize);
            let c2p: Vec<i32> =
                (0..2 * center + 1).map(|i| ((i as i32 - center as i32) / 3 + 12).clamp(0, 23)).collect();
            let p2c: Vec<i32> =
                (0..2 * center + 1).map(|i| (12 - (i as i32 - center as i32) / 5).clamp(0, 23)).collect();
            // Key rows of sequence i start at 5 + 7i + Σ earlier lengths: gaps between sequences.
            let mut rows = Vec::new();
            let mut k_base = 5;
            for &n in &lens {
                rows.extend((0..n).map(|i| RelRow { k_base: k_base as i32, n_keys: n as i32, pos: i as i32 }));
                k_base += n + 7;
            }
            let kv_rows = k_base;
            let q = data(&mut rng, d, rows.len() * qw, 1.0);
            let k = data(&mut rng, d, kv_rows * kw, 1.0);
            let v = data(&mut rng, d, kv_rows * kw, 1.0);
            let pk = data(&mut rng, d, positions * qw, 1.0);
            let pq = data(&mut rng, d, positions * qw, 1.0);
            let scale = 1.0 / ((hd * 3) as f32).sqrt();
            let (use_pk, use_pq) = (terms & 1 != 0, terms & 2 != 0);
            let want = twin::relative_attention(
                &q,
                &k,
                &v,
                &rows,
                use_pk.then_some(&pk[..]),
                use_pq.then_some(&pq[..]),
                &c2p,
                &p2c,
                heads,
                kv_heads,
                hd,
                scale,
            );
            let (tq, tk, tv, tpk, tpq) = (up(g, d, &q), up(g, d, &k), up(g, d, &v), up(g, d, &pk), up(g, d, &pq));
            let rel = RelTables {
                pos_key: use_pk.then_some((&tpk, positions)),
                pos_query: use_pq.then_some((&tpq, positions)),
                c2p: &c2p,
                p2c: &p2c,
            };
            let mut out = poisoned(g, d, rows.len() * qw);
            g.relative_attention(&mut out, &tq, &tk, &tv, kv_rows, &rows, rel, heads, kv_heads, hd, scale).unwrap();
            let what = format!("relative_attention {d} hd={hd} heads={heads}/{kv_heads} terms={terms}");
            assert_close(&what, &down(g, &out), &want, tol(d));
            // An index past its table, and a row whose keys reach outside the index tables, are refused.
            let mut bad = c2p.clone();
            bad[3] = positions as i32;
            let bad_rel = RelTables { pos_key: Some((&tpk, positions)), c2p: &bad, ..rel };
            assert!(g
                .relative_attention(&mut out, &tq, &tk, &tv, kv_rows, &rows, bad_rel, heads, kv_heads, hd, scale)
                .is_err());
            let far = [RelRow { k_base: 0, n_keys: (2 * center + 2) as i32, pos: 0 }];
            assert!(g
                .relative_attention(&mut out, &tq, &tk, &tv, kv_rows, &far, rel, heads, kv_heads, hd, scale)
                .is_err());
        }
    }
}

#[test]
fn argmax_and_sampling_choose_the_cpu_tokens() {
    let cuda = cuda_or_skip!("argmax_and_sampling_choose_the_cpu_tokens", DType::F32);
    let g = cuda.gpu();
    let mut rng = TestRng::new(19);
    let (batch, llama3) = on_gpu_else(&cuda, (64, 3), (8, 2));
    for d in DTYPES {
        for (rows, vocab) in [(1usize, 7usize), (5, 301), (batch, 32000), (llama3, 128256)] {
            let mut logits = data(&mut rng, d, rows * vocab, 8.0);
            // A tie (first index wins) and NaNs (never win).
            logits[vocab - 1] = 100.0;
            if vocab > 3 {
                logits[2] = 100.0;
                logits[1] = f32::NAN;
            }
            let t = up(g, d, &logits);
            let got = g.argmax(&t, rows, vocab).unwrap();
            let want: Vec<u32> = logits.chunks(vocab).map(twin::argmax).collect();
            assert_eq!(got, want, "argmax {d} {rows}x{vocab}");

            let logits: Vec<f32> = logits.iter().map(|v| if v.is_nan() { 0.0 } else { *v }).collect();
            let t = up(g, d, &logits);
            for params in [
                SamplingParams { temperature: 1.0, top_p: 0.9 },
                SamplingParams { temperature: 0.7, top_p: 1.0 },
                SamplingParams { temperature: 2.5, top_p: 0.5 },
            ] {
                let seeds: Vec<u64> = (0..rows as u64).map(|r| rng.next_u64() ^ r).collect();
                let u: Vec<f64> = seeds.iter().map(|&s| uniform_from_seed(s)).collect();
                let got = g.sample_top_p(&t, rows, vocab, &u, params.temperature, params.top_p).unwrap();
                let want: Vec<u32> =
                    logits.chunks(vocab).zip(&seeds).map(|(row, &s)| sample_row(row, params, s)).collect();
                assert_eq!(got, want, "sample {d} {rows}x{vocab} {params:?}");
            }
        }
    }
}

#[test]
fn out_of_memory_says_how_much_was_asked_and_free() {
    let cuda = cuda_or_skip!("out_of_memory_says_how_much_was_asked_and_free", DType::F32);
    // 4 TiB: more than any GPU has.
    let e = match cuda.gpu().alloc(DType::F32, 1 << 40) {
        Ok(_) => panic!("a 4 TiB allocation succeeded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("asked for 4398046511104 bytes") && e.contains("free"), "{e}");
}

/// The backend's attention dispatch at the real head dims, in bf16, against the CPU backend on
/// the same (bf16-representable) inputs: the ViT's packed images and `attention_kv` (flash,
/// non-causal), a ragged prefill written into KV-cache slots (flash, causal, keys read from the
/// slots) and the decode step after it (row kernel with key splits).
#[test]
fn backend_attention_paths_match_cpu_in_bf16() {
    let cuda = cuda_or_skip!("backend_attention_paths_match_cpu_in_bf16", DType::BF16);
    let cpu = Cpu;
    let mut rng = TestRng::new(20);
    let d = DType::BF16;
    let both = |rng: &mut TestRng, rows: usize, cols: usize| {
        let v = data(rng, d, rows * cols, 1.0);
        (cuda.from_host(&v, rows, cols).unwrap(), cpu.from_host(&v, rows, cols).unwrap())
    };
    // ViT-L/14-336: two images of 577 tokens, 16 heads x 64; and key segments of other lengths.
    // (Emulated: two images of 130 tokens.)
    let t = on_gpu_else(&cuda, 577, 130);
    let s = AttentionShape::new(16, 16, 64);
    let (qg, qc) = both(&mut rng, 2 * t, 1024);
    let (kg, kc) = both(&mut rng, 2 * t, 1024);
    let (vg, vc) = both(&mut rng, 2 * t, 1024);
    let got = cuda.to_host(&cuda.attention(&qg, &kg, &vg, &[t, t], s).unwrap()).unwrap();
    let want = cpu.attention(&qc, &kc, &vc, &[t, t], s).unwrap().data;
    assert_close("vit attention", &got, &wide(&want), tol(d));
    let (ql, kl) = on_gpu_else(&cuda, ([600usize, 554], [1000usize, 154]), ([150, 110], [200, 60]));
    let got = cuda.to_host(&cuda.attention_kv(&qg, &kg, &vg, &ql, &kl, s).unwrap()).unwrap();
    let want = cpu.attention_kv(&qc, &kc, &vc, &ql, &kl, s).unwrap().data;
    assert_close("attention_kv", &got, &wide(&want), tol(d));

    // LLaVA-7B-like decoder attention (GQA to exercise the head grouping): prefill, then decode.
    // (Emulated: 8 query heads over 2 key/value heads, a 200-token prefill instead of 600.)
    let (heads, kv_heads, long, capacity) = on_gpu_else(&cuda, (32, 8, 600, 700), (8, 2, 200, 260));
    let s = AttentionShape::new(heads, kv_heads, 128);
    let (qw, kw) = (heads * 128, kv_heads * 128);
    let slots = 3;
    let mut cache_g = cuda.kv_cache(2, slots, capacity, kv_heads, 128).unwrap();
    let mut cache_c = cpu.kv_cache(2, slots, capacity, kv_heads, 128).unwrap();
    let prefill = [
        SeqChunk { slot: 2, start: 0, len: long },
        SeqChunk { slot: 0, start: 0, len: 17 },
        SeqChunk { slot: 1, start: 0, len: 130 },
    ];
    let decode: Vec<SeqChunk> = prefill.iter().map(|c| SeqChunk { slot: c.slot, start: c.len, len: 1 }).collect();
    for (step, chunks) in [&prefill[..], &decode[..]].into_iter().enumerate() {
        let rows: usize = chunks.iter().map(|c| c.len).sum();
        let (qg, qc) = both(&mut rng, rows, qw);
        let (kg, kc) = both(&mut rng, rows, kw);
        let (vg, vc) = both(&mut rng, rows, kw);
        let got = cuda.cached_attention(&mut cache_g, 1, &qg, &kg, &vg, chunks, s).unwrap();
        let want = cpu.cached_attention(&mut cache_c, 1, &qc, &kc, &vc, chunks, s).unwrap().data;
        assert_close(&format!("cached attention step {step}"), &cuda.to_host(&got).unwrap(), &wide(&want), tol(d));
    }
}

/// Issue 14, finding 12: libtest counted the skipped GPU tests as passed and nothing said how
/// many really ran. This binary is run again for one GPU test on a device that cannot be had
/// (`ICET_CUDA_DEVICE` naming none): it is skipped, counted as passed by libtest, and the note
/// after the summary says so.
#[test]
fn a_skipped_test_is_said_not_to_have_run() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "casts_round_to_nearest_even", "--test-threads", "1"])
        .env("ICET_CUDA_DEVICE", "none-such")
        .env_remove("ICET_REQUIRE_GPU")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    assert!(stderr.contains("SKIPPED casts_round_to_nearest_even: ICET_CUDA_DEVICE=none-such"), "{stderr}");
    assert!(
        stderr.contains(
            "note: 1 of the tests counted as passed above did not run, they were skipped (ICET_CUDA_DEVICE=none-such"
        ),
        "{stderr}"
    );
}
