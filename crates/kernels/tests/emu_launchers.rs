//! The flash-attention launcher (grid, block, the shared memory it sizes and opts into) and its
//! kernel on the emulated device, against the CPU twin: a test of this crate alone, so that
//! scripts/mutation-check.py can rebuild it in seconds for its launcher mutant. (The full kernel
//! suite, every kernel on every shape, is tests/gpu_kernels.rs.)
use icet_kernels::{twin, DType, EmuOptions, Gpu, SeqDesc};

/// xorshift64*: deterministic values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

#[test]
fn flash_attention_launcher_matches_twin_on_the_emulated_device() {
    let gpu = match Gpu::open_emulated(EmuOptions::from_env().expect("ICET_EMU_* settings")) {
        Ok(g) => g,
        Err(e) => {
            use std::io::Write;
            if std::env::var("ICET_CUDA_DEVICE").as_deref() == Ok("emu") {
                panic!("ICET_CUDA_DEVICE=emu but the emulator is unavailable: {e}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED flash_attention_launcher_matches_twin_on_the_emulated_device: {e}"
            );
            return;
        }
    };
    assert!(gpu.is_emulated());
    for (d, hd) in [(DType::BF16, 64usize), (DType::F16, 128)] {
        let (heads, kv_heads) = (4usize, 2usize);
        // A causal prefill with a cache offset and a ragged non-causal pair: partial tiles.
        let lens = [(70usize, 90usize, 1), (17, 17, 0), (65, 65, 0)];
        let (mut seqs, mut q0, mut k0) = (Vec::new(), 0usize, 0usize);
        for &(ql, nk, causal) in &lens {
            seqs.push(SeqDesc {
                q_start: q0 as i32,
                q_len: ql as i32,
                k_base: k0 as i32,
                n_keys: nk as i32,
                causal,
                pad: [0; 3],
            });
            q0 += ql;
            k0 += nk + 3;
        }
        let (q_rows, kv_rows) = (q0, k0);
        let q = twin::round_all(d, &values(1, q_rows * heads * hd));
        let k = twin::round_all(d, &values(2, kv_rows * kv_heads * hd));
        let v = twin::round_all(d, &values(3, kv_rows * kv_heads * hd));
        let scale = (hd as f32).powf(-0.5);
        let mut out = gpu.alloc(d, q_rows * heads * hd).unwrap();
        gpu.fill_nan(&mut out).unwrap();
        let (tq, tk, tv) =
            (gpu.upload_f32(d, &q).unwrap(), gpu.upload_f32(d, &k).unwrap(), gpu.upload_f32(d, &v).unwrap());
        gpu.flash_attention(&mut out, &tq, q_rows, &tk, &tv, kv_rows, &seqs, heads, kv_heads, hd, scale).unwrap();
        let got = gpu.download_f32(&out).unwrap();
        let want = twin::attention_seqs(&q, &k, &v, q_rows, &seqs, heads, kv_heads, hd, scale);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| if a.is_finite() { (a as f64 - b).abs() / b.abs().max(1.0) } else { f64::INFINITY })
            .fold(0.0, f64::max);
        assert!(worst <= 1e-2, "flash {d} hd={hd}: max relative error {worst:e}");
    }
}
