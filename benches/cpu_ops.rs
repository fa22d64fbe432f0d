//! CPU reference backend at small real shapes (one CLIP ViT-L/14-336 layer's pieces, a LLaVA-7B
//! decode step's pieces at reduced width, cached attention at the CPU benchmark shapes). Each reports throughput (FLOP/s as "elements" for
//! GEMMs and attention, bytes for memory-bound ops) so runs compare across machines.
//!
//!   cargo bench -p icet-models --bench cpu_ops
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use icet_models::backend::conformance::TestRng;
use icet_models::backend::cpu::Cpu;
use icet_models::backend::{Activation, AttentionShape, Backend, SeqChunk};

fn t(b: &Cpu, rng: &mut TestRng, rows: usize, cols: usize) -> <Cpu as Backend>::Tensor {
    b.from_host(&rng.vec(rows * cols, 1.0), rows, cols).unwrap()
}

fn bench_linear(c: &mut Criterion) {
    let b = Cpu;
    let mut rng = TestRng::new(1);
    let mut g = c.benchmark_group("linear");
    // (tokens, in, out): ViT-L qkv projection at 577 tokens; LLaVA projector; a ViT-B MLP down
    // projection at 257 tokens; one prompt's prefill; decode batches. Each with the weight as
    // every `nn::Linear` holds it (stored by `linear_weight` at load) and as uploaded (`[out,
    // in]`, the strided/skinny path a tied embedding takes): the pair shows what the layout buys.
    for &(m, k, n) in
        &[(577, 1024, 1024), (576, 1024, 4096), (257, 3072, 768), (20, 768, 768), (16, 4096, 4096), (1, 4096, 4096)]
    {
        let (x, w) = (t(&b, &mut rng, m, k), t(&b, &mut rng, n, k));
        let prepared = b.linear_weight(w.clone()).unwrap();
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(BenchmarkId::new("prepared", format!("{m}x{k}x{n}")), |bench| {
            bench.iter(|| b.linear(&x, &prepared, None).unwrap())
        });
        g.bench_function(BenchmarkId::new("out_in", format!("{m}x{k}x{n}")), |bench| {
            bench.iter(|| b.linear(&x, &w, None).unwrap())
        });
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let b = Cpu;
    let mut rng = TestRng::new(2);
    let mut g = c.benchmark_group("attention");
    // CLIP ViT-L/14-336: 577 tokens, 16 heads x 64.
    let s = AttentionShape::new(16, 16, 64);
    let (q, k, v) = (t(&b, &mut rng, 577, 1024), t(&b, &mut rng, 577, 1024), t(&b, &mut rng, 577, 1024));
    g.throughput(Throughput::Elements((4 * 577 * 577 * 1024) as u64));
    g.bench_function("vit_577x16x64", |bench| bench.iter(|| b.attention(&q, &k, &v, &[577], s).unwrap()));
    // Decode: 8 sequences at 600 cached positions, 32 heads x 128.
    let s = AttentionShape::new(32, 32, 128);
    let mut cache = b.kv_cache(1, 8, 640, 32, 128).unwrap();
    let prefill: Vec<SeqChunk> = (0..8).map(|i| SeqChunk { slot: i, start: 0, len: 600 }).collect();
    let (pk, pv) = (t(&b, &mut rng, 4800, 4096), t(&b, &mut rng, 4800, 4096));
    let pq = t(&b, &mut rng, 4800, 4096);
    b.cached_attention(&mut cache, 0, &pq, &pk, &pv, &prefill, s).unwrap();
    let step: Vec<SeqChunk> = (0..8).map(|i| SeqChunk { slot: i, start: 600, len: 1 }).collect();
    let (dq, dk, dv) = (t(&b, &mut rng, 8, 4096), t(&b, &mut rng, 8, 4096), t(&b, &mut rng, 8, 4096));
    g.throughput(Throughput::Bytes((2 * 8 * 601 * 4096 * 4) as u64));
    g.bench_function("decode_b8_ctx600_32x128", |bench| {
        bench.iter(|| b.cached_attention(&mut cache, 0, &dq, &dk, &dv, &step, s).unwrap())
    });
    g.finish();
}

/// Cached (causal) attention at the CPU shapes of issue 15: the `small` LLaVA shape (8 heads x 64)
/// and the 0.19 G shape (12 query heads over 4 kv heads x 64), a 291-token prompt (prefill of 1
/// and 8 sequences in one call), and decode steps of 1, 8 and 32 sequences at 300 cached
/// positions. Throughput is attention FLOPs (4 per query-key pair and head dimension, causal).
fn bench_cached_attention(c: &mut Criterion) {
    let b = Cpu;
    let mut rng = TestRng::new(4);
    let mut g = c.benchmark_group("cached_attention");
    let (prompt, ctx) = (291usize, 300usize);
    for (name, s) in
        [("small_8x64", AttentionShape::new(8, 8, 64)), ("vitb_12q4kv_x64", AttentionShape::new(12, 4, 64))]
    {
        let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        for batch in [1usize, 8] {
            let mut cache = b.kv_cache(1, batch, ctx + 1, s.kv_heads, s.head_dim).unwrap();
            let chunks: Vec<SeqChunk> = (0..batch).map(|i| SeqChunk { slot: i, start: 0, len: prompt }).collect();
            let rows = batch * prompt;
            let (q, k, v) = (t(&b, &mut rng, rows, qw), t(&b, &mut rng, rows, kw), t(&b, &mut rng, rows, kw));
            let pairs = batch * prompt * (prompt + 1) / 2;
            g.throughput(Throughput::Elements((4 * pairs * qw) as u64));
            g.bench_function(format!("prefill_{name}_b{batch}_len{prompt}"), |bench| {
                bench.iter(|| b.cached_attention(&mut cache, 0, &q, &k, &v, &chunks, s).unwrap())
            });
        }
        for batch in [1usize, 8, 32] {
            let mut cache = b.kv_cache(1, batch, ctx + 1, s.kv_heads, s.head_dim).unwrap();
            let fill: Vec<SeqChunk> = (0..batch).map(|i| SeqChunk { slot: i, start: 0, len: ctx }).collect();
            let rows = batch * ctx;
            let (q, k, v) = (t(&b, &mut rng, rows, qw), t(&b, &mut rng, rows, kw), t(&b, &mut rng, rows, kw));
            b.cached_attention(&mut cache, 0, &q, &k, &v, &fill, s).unwrap();
            let step: Vec<SeqChunk> = (0..batch).map(|i| SeqChunk { slot: i, start: ctx, len: 1 }).collect();
            let (q, k, v) = (t(&b, &mut rng, batch, qw), t(&b, &mut rng, batch, kw), t(&b, &mut rng, batch, kw));
            // Decode streams the cached keys and values once: bytes are its natural unit.
            g.throughput(Throughput::Bytes((2 * batch * (ctx + 1) * kw * 4) as u64));
            g.bench_function(format!("decode_{name}_b{batch}_ctx{ctx}"), |bench| {
                bench.iter(|| b.cached_attention(&mut cache, 0, &q, &k, &v, &step, s).unwrap())
            });
        }
    }
    g.finish();
}

fn bench_pointwise(c: &mut Criterion) {
    let b = Cpu;
    let mut rng = TestRng::new(3);
    let mut g = c.benchmark_group("pointwise");
    let (rows, cols) = (577, 1024);
    let x = t(&b, &mut rng, rows, cols);
    let (w, bias) = (t(&b, &mut rng, 1, cols), t(&b, &mut rng, 1, cols));
    g.throughput(Throughput::Bytes((2 * rows * cols * 4) as u64));
    g.bench_function("layer_norm_577x1024", |bench| bench.iter(|| b.layer_norm(&x, &w, &bias, 1e-5).unwrap()));
    g.bench_function("rms_norm_577x1024", |bench| bench.iter(|| b.rms_norm(&x, &w, 1e-5).unwrap()));
    g.bench_function("quick_gelu_577x1024", |bench| {
        bench.iter_batched(
            || x.clone(),
            |mut y| b.activation(&mut y, Activation::QuickGelu).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    let positions: Vec<usize> = (0..rows).collect();
    let inv: Vec<f32> = (0..64).map(|i| 10000f32.powf(-(i as f32) / 64.0)).collect();
    g.bench_function("rotary_577x8x128", |bench| {
        bench.iter_batched(
            || x.clone(),
            |mut y| b.rotary(&mut y, &positions, 128, &inv).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    let logits = t(&b, &mut rng, 32, 32064);
    g.throughput(Throughput::Bytes((32 * 32064 * 4) as u64));
    g.bench_function("argmax_32x32064", |bench| bench.iter(|| b.argmax(&logits).unwrap()));
    g.finish();
}

criterion_group!(benches, bench_linear, bench_attention, bench_cached_attention, bench_pointwise);
criterion_main!(benches);
