//! Every CUDA kernel at the real shapes — CLIP ViT-L/14-336 (577 tokens, 16 heads x 64, width
//! 1024, MLP 4096) and LLaVA-7B (hidden 4096, 32 heads x 128, MLP 11008, vocab 32000, prefill
//! 600–1000 tokens, decode batches 1–256) — in bf16, each reporting what it achieved beside the
//! H100 roofline (≈ 790 TFLOP/s bf16 measured for GEMM, ≈ 3 TB/s copy; printed as
//! `ROOFLINE <bench>: ...` lines after criterion's own).
//!
//! Timing synchronises the device inside the timed loop (every iteration waits for its kernels),
//! so a number is launch + run, never a queue of unfinished launches.
//!
//! Without a usable GPU each bench runs the kernel's CPU twin (`icet_kernels::twin`) instead, at
//! shapes divided down so that CI stays fast; the ROOFLINE lines then say "cpu twin".
//!
//!   cargo bench -p icet-models --bench kernels            (GPU: set ICET_REQUIRE_GPU=1 to insist)
use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icet_kernels::{twin, Act, AttnRow, DType, DevBuf, Gpu, RelRow, RelTables, SeqDesc};
use icet_models::backend::conformance::TestRng;
use icet_models::backend::cuda::Cuda;
use icet_models::backend::{sample_row, SamplingParams};

const H100_BF16_TFLOPS: f64 = 790.0;
const H100_COPY_TBPS: f64 = 3.0;
const D: DType = DType::BF16;

/// What one iteration does: floating-point operations or bytes moved (the larger roofline term).
#[derive(Clone, Copy)]
enum Work {
    Flops(f64),
    Bytes(f64),
}

struct Bench<'a> {
    name: String,
    work: Work,
    run: Box<dyn FnMut() + 'a>,
}

fn gpu_or_reason() -> Result<Cuda, String> {
    match Cuda::new(D) {
        Ok(c) => Ok(c),
        Err(e) => {
            let reason = e.to_string();
            if std::env::var_os("ICET_REQUIRE_GPU").is_some_and(|v| v != "0") {
                panic!("ICET_REQUIRE_GPU is set but CUDA is unavailable: {reason}");
            }
            Err(reason)
        }
    }
}

fn up(g: &Gpu, rng: &mut TestRng, n: usize, scale: f32) -> DevBuf {
    g.upload_f32(D, &rng.vec(n, scale)).unwrap()
}

fn gpu_benches<'a>(g: &'a Gpu) -> Vec<Bench<'a>> {
    let mut rng = TestRng::new(42);
    let mut v: Vec<Bench<'a>> = Vec::new();
    let sync = move || g.synchronize().unwrap();
    let e = D.size() as f64;

    // GEMMs (cuBLASLt): ViT qkv/MLP, LLaVA projector, Llama prefill and decode projections.
    for &(m, k, n) in &[
        (577 * 8, 1024, 3072),
        (577 * 8, 1024, 4096),
        (576 * 8, 1024, 4096),
        (600, 4096, 4096),
        (1000, 4096, 11008),
        (1, 4096, 4096),
        (16, 4096, 11008),
        (256, 4096, 11008),
        (256, 4096, 32000),
    ] {
        let (x, w, bias) = (up(g, &mut rng, m * k, 1.0), up(g, &mut rng, n * k, 0.02), up(g, &mut rng, n, 1.0));
        let mut out = g.alloc(D, m * n).unwrap();
        v.push(Bench {
            name: format!("linear_bias/{m}x{k}x{n}"),
            work: Work::Flops(2.0 * (m * k * n) as f64),
            run: Box::new(move || {
                g.linear(&mut out, &x, &w, Some(&bias), m, n, k).unwrap();
                sync();
            }),
        });
    }

    // Fused attention: ViT (8 images of 577 tokens, 16 x 64) and causal prefill (32 x 128).
    for &(causal, seqs_n, len, heads, hd) in &[
        (false, 8usize, 577usize, 16usize, 64usize),
        (true, 1, 600, 32, 128),
        (true, 1, 1000, 32, 128),
        (true, 4, 800, 32, 128),
    ] {
        let rows = seqs_n * len;
        let (q, k, vv) = (
            up(g, &mut rng, rows * heads * hd, 1.0),
            up(g, &mut rng, rows * heads * hd, 1.0),
            up(g, &mut rng, rows * heads * hd, 1.0),
        );
        let seqs: Vec<SeqDesc> = (0..seqs_n)
            .map(|i| SeqDesc {
                q_start: (i * len) as i32,
                q_len: len as i32,
                k_base: (i * len) as i32,
                n_keys: len as i32,
                causal: causal as i32,
                pad: [0; 3],
            })
            .collect();
        let mut out = g.alloc(D, rows * heads * hd).unwrap();
        // Useful FLOPs: QKᵀ and PV, halved for the causal triangle.
        let flops = 4.0 * (seqs_n * len * len * heads * hd) as f64 / if causal { 2.0 } else { 1.0 };
        let kind = if causal { "prefill_causal" } else { "vit" };
        let scale = (hd as f32).powf(-0.5);
        v.push(Bench {
            name: format!("flash_attention/{kind}_{seqs_n}x{len}_{heads}x{hd}"),
            work: Work::Flops(flops),
            run: Box::new(move || {
                g.flash_attention(&mut out, &q, rows, &k, &vv, rows, &seqs, heads, heads, hd, scale).unwrap();
                sync();
            }),
        });
    }

    // Decode attention (row kernel, split along keys): batch 1..256 at 1000 cached positions.
    for &batch in &[1usize, 16, 64, 256] {
        let (heads, hd, ctx) = (32usize, 128usize, 1000usize);
        let kv_rows = batch * ctx;
        let (q, k, vv) = (
            up(g, &mut rng, batch * heads * hd, 1.0),
            up(g, &mut rng, kv_rows * heads * hd, 1.0),
            up(g, &mut rng, kv_rows * heads * hd, 1.0),
        );
        let rows: Vec<AttnRow> = (0..batch).map(|i| AttnRow { k_base: (i * ctx) as i32, n_keys: ctx as i32 }).collect();
        let mut out = g.alloc(D, batch * heads * hd).unwrap();
        v.push(Bench {
            name: format!("decode_attention/b{batch}_ctx{ctx}_{heads}x{hd}"),
            work: Work::Bytes(2.0 * (kv_rows * heads * hd) as f64 * e),
            run: Box::new(move || {
                g.attention_rows(&mut out, &q, &k, &vv, kv_rows, &rows, heads, heads, hd, 0.088, None).unwrap();
                sync();
            }),
        });
    }

    // DeBERTa-v3-large's disentangled attention (relative kernel): 16 heads x 64, 512 tokens, the
    // 512-row position tables (position_buckets 256). FLOPs: q·k, both relative dots, and P V.
    {
        let (heads, hd, n, positions) = (16usize, 64usize, 512usize, 512usize);
        let qw = heads * hd;
        let (q, k, vv) = (up(g, &mut rng, n * qw, 1.0), up(g, &mut rng, n * qw, 1.0), up(g, &mut rng, n * qw, 1.0));
        let (pk, pq) = (up(g, &mut rng, positions * qw, 1.0), up(g, &mut rng, positions * qw, 1.0));
        let c2p: Vec<i32> = (0..2 * n - 1).map(|i| (i as i32 - n as i32 + 1 + 256).clamp(0, 511)).collect();
        let p2c: Vec<i32> = c2p.iter().rev().copied().collect();
        let rows: Vec<RelRow> = (0..n).map(|i| RelRow { k_base: 0, n_keys: n as i32, pos: i as i32 }).collect();
        let mut out = g.alloc(D, n * qw).unwrap();
        let scale = 1.0 / ((hd * 3) as f32).sqrt();
        v.push(Bench {
            name: format!("relative_attention/deberta_{n}_{heads}x{hd}"),
            work: Work::Flops(8.0 * (n * n * heads * hd) as f64),
            run: Box::new(move || {
                let rel = RelTables {
                    pos_key: Some((&pk, positions)),
                    pos_query: Some((&pq, positions)),
                    c2p: &c2p,
                    p2c: &p2c,
                };
                g.relative_attention(&mut out, &q, &k, &vv, n, &rows, rel, heads, heads, hd, scale).unwrap();
                sync();
            }),
        });
    }

    // Norms (plain and fused with the residual add).
    for &(rows, cols) in &[(577 * 8, 1024usize), (1000, 4096)] {
        let (x, w, b) = (up(g, &mut rng, rows * cols, 1.0), up(g, &mut rng, cols, 1.0), up(g, &mut rng, cols, 1.0));
        let mut out = g.alloc(D, rows * cols).unwrap();
        v.push(Bench {
            name: format!("layer_norm/{rows}x{cols}"),
            work: Work::Bytes(2.0 * (rows * cols) as f64 * e),
            run: Box::new(move || {
                g.layer_norm(&mut out, &x, &w, &b, rows, cols, 1e-5).unwrap();
                sync();
            }),
        });
        let (mut x2, dl) = (up(g, &mut rng, rows * cols, 1.0), up(g, &mut rng, rows * cols, 1.0));
        let mut out = g.alloc(D, rows * cols).unwrap();
        let w2 = up(g, &mut rng, cols, 1.0);
        v.push(Bench {
            name: format!("add_rms_norm/{rows}x{cols}"),
            work: Work::Bytes(4.0 * (rows * cols) as f64 * e),
            run: Box::new(move || {
                g.add_rms_norm(&mut out, &mut x2, &dl, &w2, rows, cols, 1e-5).unwrap();
                sync();
            }),
        });
    }

    // Point-wise: quick_gelu on the ViT MLP, SwiGLU on the Llama MLP, rotary on q, casts.
    {
        let n = 577 * 8 * 4096;
        let mut x = up(g, &mut rng, n, 3.0);
        v.push(Bench {
            name: format!("quick_gelu/{n}"),
            work: Work::Bytes(2.0 * n as f64 * e),
            run: Box::new(move || {
                g.activation(&mut x, n, Act::QuickGelu).unwrap();
                sync();
            }),
        });
        let n = 1000 * 11008;
        let (gate, upb) = (up(g, &mut rng, n, 3.0), up(g, &mut rng, n, 3.0));
        let mut out = g.alloc(D, n).unwrap();
        v.push(Bench {
            name: format!("silu_mul/{n}"),
            work: Work::Bytes(3.0 * n as f64 * e),
            run: Box::new(move || {
                g.silu_mul(&mut out, &gate, &upb, n).unwrap();
                sync();
            }),
        });
        let (rows, heads, hd) = (1000usize, 32usize, 128usize);
        let mut q = up(g, &mut rng, rows * heads * hd, 1.0);
        let pos: Vec<i32> = (0..rows as i32).collect();
        let inv: Vec<f32> = (0..hd / 2).map(|i| 500000f32.powf(-((2 * i) as f32) / hd as f32)).collect();
        v.push(Bench {
            name: format!("rotary/{rows}x{heads}x{hd}"),
            work: Work::Bytes(2.0 * (rows * heads * hd) as f64 * e),
            run: Box::new(move || {
                g.rotary(&mut q, &pos, &inv, heads, hd).unwrap();
                sync();
            }),
        });
        let n = 4096 * 4096;
        let src = g.upload_f32(DType::F32, &rng.vec(n, 1.0)).unwrap();
        let mut dst = g.alloc(D, n).unwrap();
        v.push(Bench {
            name: format!("cast_f32_to_bf16/{n}"),
            work: Work::Bytes(n as f64 * (4.0 + e)),
            run: Box::new(move || {
                g.cast(&src, &mut dst).unwrap();
                sync();
            }),
        });
    }

    // Rows: embedding gather (1000 tokens of a 32000 x 4096 table), capture hook, patchify.
    {
        let (vocab, width) = (32000usize, 4096usize);
        let table = up(g, &mut rng, vocab * width, 1.0);
        let ids: Vec<usize> = (0..1000).map(|i| (i * 7919) % vocab).collect();
        let mut out = g.alloc(D, ids.len() * width).unwrap();
        v.push(Bench {
            name: "embedding/1000x4096".into(),
            work: Work::Bytes(2.0 * (ids.len() * width) as f64 * e),
            run: Box::new(move || {
                g.gather_rows(&mut out, &table, vocab, &ids, width).unwrap();
                sync();
            }),
        });
        let (images, tokens, w) = (8usize, 577usize, 1024usize);
        let hidden = up(g, &mut rng, images * tokens * w, 1.0);
        let kept = images * (tokens - 1);
        let mut feats = g.alloc(D, 4 * kept * w).unwrap();
        v.push(Bench {
            name: "capture_rows/8x577x1024_drop_cls".into(),
            work: Work::Bytes(2.0 * (kept * w) as f64 * e),
            run: Box::new(move || {
                g.capture_rows(&mut feats, 4 * kept, kept, &hidden, images, tokens, 1, w).unwrap();
                sync();
            }),
        });
        let pixels = up(g, &mut rng, 3 * 336 * 336, 2.0);
        let mut cols = g.alloc(D, 3 * 336 * 336).unwrap();
        v.push(Bench {
            name: "im2col/3x336x336_p14".into(),
            work: Work::Bytes(2.0 * (3 * 336 * 336) as f64 * e),
            run: Box::new(move || {
                g.im2col(&mut cols, &pixels, 3, 336, 336, 14).unwrap();
                sync();
            }),
        });
    }

    // Token choice over the Llama vocabulary.
    for &rows in &[1usize, 256] {
        let vocab = 32000;
        let logits = up(g, &mut rng, rows * vocab, 8.0);
        let u: Vec<f64> = (0..rows).map(|i| (i as f64 + 0.5) / rows as f64).collect();
        let logits2 = up(g, &mut rng, rows * vocab, 8.0);
        v.push(Bench {
            name: format!("argmax/{rows}x{vocab}"),
            work: Work::Bytes((rows * vocab) as f64 * e),
            run: Box::new(move || {
                g.argmax(&logits, rows, vocab).unwrap();
            }),
        });
        v.push(Bench {
            name: format!("sample_top_p/{rows}x{vocab}"),
            work: Work::Bytes((rows * vocab) as f64 * e),
            run: Box::new(move || {
                g.sample_top_p(&logits2, rows, vocab, &u, 1.0, 0.9).unwrap();
            }),
        });
    }
    v
}

/// The same kernels' CPU twins at shapes divided down (CI runs these when there is no GPU).
fn cpu_benches() -> Vec<Bench<'static>> {
    let mut rng = TestRng::new(7);
    let mut v: Vec<Bench<'static>> = Vec::new();
    let (m, k, n) = (64, 256, 256);
    let (x, w) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0));
    v.push(Bench {
        name: format!("linear/{m}x{k}x{n}"),
        work: Work::Flops(2.0 * (m * k * n) as f64),
        run: Box::new(move || {
            std::hint::black_box(twin::linear(&x, &w, None, m, n, k));
        }),
    });
    for (causal, len, heads, hd) in [(false, 145usize, 2usize, 64usize), (true, 128, 2, 128)] {
        let (q, kk, vv) =
            (rng.vec(len * heads * hd, 1.0), rng.vec(len * heads * hd, 1.0), rng.vec(len * heads * hd, 1.0));
        let seq = SeqDesc {
            q_start: 0,
            q_len: len as i32,
            k_base: 0,
            n_keys: len as i32,
            causal: causal as i32,
            pad: [0; 3],
        };
        let flops = 4.0 * (len * len * heads * hd) as f64 / if causal { 2.0 } else { 1.0 };
        v.push(Bench {
            name: format!("attention/{}_{len}_{heads}x{hd}", if causal { "prefill_causal" } else { "vit" }),
            work: Work::Flops(flops),
            run: Box::new(move || {
                std::hint::black_box(twin::attention_seqs(&q, &kk, &vv, len, &[seq], heads, heads, hd, 0.1));
            }),
        });
    }
    let (rows, cols) = (64, 1024);
    let (x, wt, b) = (rng.vec(rows * cols, 1.0), rng.vec(cols, 1.0), rng.vec(cols, 1.0));
    let dl = rng.vec(rows * cols, 1.0);
    v.push(Bench {
        name: format!("add_rms_norm/{rows}x{cols}"),
        work: Work::Bytes(4.0 * (rows * cols) as f64 * 4.0),
        run: Box::new(move || {
            std::hint::black_box(twin::rms_norm(&x, Some(&dl), &wt, cols, 1e-5, D));
            std::hint::black_box(twin::layer_norm(&x, None, &wt, &b, cols, 1e-5, D));
        }),
    });
    let n = 1 << 16;
    let (a, bb) = (rng.vec(n, 3.0), rng.vec(n, 3.0));
    v.push(Bench {
        name: format!("silu_mul/{n}"),
        work: Work::Bytes(3.0 * n as f64 * 4.0),
        run: Box::new(move || {
            std::hint::black_box(twin::silu_mul(&a, &bb, D));
            std::hint::black_box(twin::activation(&a, Act::QuickGelu, D));
        }),
    });
    let (rows, heads, hd) = (16usize, 32usize, 128usize);
    let q = rng.vec(rows * heads * hd, 1.0);
    let pos: Vec<i32> = (0..rows as i32).collect();
    let inv: Vec<f32> = (0..hd / 2).map(|i| 500000f32.powf(-((2 * i) as f32) / hd as f32)).collect();
    v.push(Bench {
        name: format!("rotary/{rows}x{heads}x{hd}"),
        work: Work::Bytes(2.0 * (rows * heads * hd) as f64 * 4.0),
        run: Box::new(move || {
            std::hint::black_box(twin::rotary(&q, &pos, &inv, heads, hd, D));
        }),
    });
    let px = rng.vec(3 * 336 * 336, 1.0);
    let table = rng.vec(1000 * 256, 1.0);
    let ids: Vec<usize> = (0..100).map(|i| (i * 37) % 1000).collect();
    v.push(Bench {
        name: "im2col_gather/336_p14".into(),
        work: Work::Bytes(2.0 * (3 * 336 * 336) as f64 * 4.0),
        run: Box::new(move || {
            std::hint::black_box(twin::im2col(&px, 3, 336, 336, 14));
            std::hint::black_box(twin::gather_rows(&table, &ids, 256));
        }),
    });
    let logits = rng.vec(2 * 32000, 8.0);
    v.push(Bench {
        name: "argmax_sample/2x32000".into(),
        work: Work::Bytes(2.0 * 32000.0 * 4.0),
        run: Box::new(move || {
            for row in logits.chunks(32000) {
                std::hint::black_box(twin::argmax(row));
                std::hint::black_box(sample_row(row, SamplingParams { temperature: 1.0, top_p: 0.9 }, 3));
            }
        }),
    });
    v
}

fn kernels(c: &mut Criterion) {
    let cuda = gpu_or_reason();
    let (benches, device) = match &cuda {
        Ok(cuda) => (gpu_benches(cuda.gpu()), cuda.describe()),
        Err(reason) => {
            println!("kernels bench: no GPU ({reason}); timing the CPU twins at reduced shapes");
            (cpu_benches(), "cpu twin".to_string())
        }
    };
    let report = RefCell::new(Vec::new());
    let mut group = c.benchmark_group("kernels");
    for mut b in benches {
        group.throughput(match b.work {
            Work::Flops(f) => Throughput::Elements(f as u64),
            Work::Bytes(x) => Throughput::Bytes(x as u64),
        });
        let mut best = f64::INFINITY;
        group.bench_function(&b.name, |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    (b.run)();
                }
                let t = start.elapsed();
                best = best.min(t.as_secs_f64() / iters.max(1) as f64);
                t
            })
        });
        report.borrow_mut().push((b.name.clone(), b.work, best));
    }
    group.finish();
    for (name, work, secs) in report.into_inner() {
        let line = match work {
            Work::Flops(f) => {
                let tf = f / secs / 1e12;
                format!(
                    "{:9.1} GFLOP/s = {:5.1}% of {H100_BF16_TFLOPS} TFLOP/s (H100 bf16 GEMM)",
                    tf * 1e3,
                    100.0 * tf / H100_BF16_TFLOPS
                )
            }
            Work::Bytes(x) => {
                let tb = x / secs / 1e12;
                format!(
                    "{:9.1} GB/s    = {:5.1}% of {H100_COPY_TBPS} TB/s (H100 copy)",
                    tb * 1e3,
                    100.0 * tb / H100_COPY_TBPS
                )
            }
        };
        println!("ROOFLINE {name:<48} {:9.1} us  {line}  [{device}]", secs * 1e6);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(800));
    targets = kernels
}
criterion_main!(benches);
