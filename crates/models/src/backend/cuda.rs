//! The CUDA backend: tensors live on the GPU in one storage dtype chosen at construction (f32,
//! bf16 or f16; every kernel computes in f32 and rounds once on store, GEMMs accumulate in f32),
//! and every op is one or two launches of `icet_kernels` (hand-written kernels from
//! `kernels-cu/`, GEMMs through cuBLASLt) — none computes on the host. Arguments arrive checked
//! (`crate::backend::Backend`'s checked layer); what is checked here is only this backend's own
//! limit, the kernels' 32-bit indices.
//!
//! The same code runs on a real GPU ([`Cuda::new`]) and on the emulated device
//! ([`Cuda::emulated`], `--device cuda-emu`): `icet_kernels::Gpu` hides which one it is behind its
//! device seam, so the emulated tests exercise this file, the launchers and the kernels together.
//!
//! [`Cuda::new`] never panics on a machine without CUDA: it returns the reason ("built without
//! CUDA kernels", "no CUDA driver", "no CUDA GPU", …) for the CLI to print and the GPU tests to
//! report as their skip reason.
//!
//! Attention picks a kernel per call: the tensor-core flash kernel for bf16/f16 with head dims
//! 64/80/128 (the ViT, prefill), the row kernel — split along the keys and combined — for decode
//! steps, for f32 (the reference precision: tensor cores would round the inputs) and for any
//! other head dim. DeBERTa's relative attention has its own row kernel at every dtype.
use std::sync::{Arc, OnceLock};

use icet_kernels::{Act, AttnRow, DevBuf, Gpu, RelRow, SeqDesc};

use super::{
    uniform_from_seed, Activation, AttentionShape, BackendOps, CacheShape, RelativePositions, SamplingParams, SeqChunk,
};
use crate::error::{Error, Result};

pub use icet_kernels::DType;

/// Chunks at most this long are attended by the row kernel even in bf16/f16: a 64-row flash
/// tile would be mostly empty (decode steps are 1 row each).
const ROWS_KERNEL_MAX_CHUNK: usize = 16;

/// A row-major `[rows, cols]` matrix in GPU memory.
pub struct CudaTensor {
    buf: DevBuf,
    rows: usize,
    cols: usize,
}

impl CudaTensor {
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
}

/// Keys and values for `layers × slots × capacity` positions, `[slots * capacity, width]` per
/// layer so that a slot's cached keys are consecutive rows (what the attention kernels read).
pub struct CudaKvCache {
    k: Vec<DevBuf>,
    v: Vec<DevBuf>,
    slots: usize,
    capacity: usize,
    width: usize,
}

/// The CUDA backend on GPU 0 or on the emulated device. Cheap to clone: instances share the device.
#[derive(Clone)]
pub struct Cuda {
    gpu: Arc<Gpu>,
    dtype: DType,
}

/// Which device a [`Cuda`] backend runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaDevice {
    /// GPU 0, through the CUDA driver.
    Gpu,
    /// The emulated device: the same kernels compiled for and run on the CPU (`icet_kernels`'s
    /// emulator) — for testing; slow, and not a GPU. Configured by the `ICET_EMU_*` variables
    /// (`icet_kernels::EmuOptions::from_env`).
    Emulator,
}

impl CudaDevice {
    /// `cuda` or `cuda-emu`, the names `--device` takes.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "cuda" => Some(Self::Gpu),
            "cuda-emu" => Some(Self::Emulator),
            _ => None,
        }
    }
}

fn kerr(e: icet_kernels::KernelError) -> Error {
    Error::invalid(e)
}

/// The process-wide GPU, opened once (contexts and modules are per process, not per backend).
fn shared_gpu() -> std::result::Result<Arc<Gpu>, String> {
    static GPU: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
    GPU.get_or_init(|| Gpu::open(0).map(Arc::new).map_err(|e| e.to_string())).clone()
}

/// The process-wide emulated device, opened once with the environment's options.
fn shared_emulator() -> std::result::Result<Arc<Gpu>, String> {
    static EMU: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
    EMU.get_or_init(|| {
        let opts = icet_kernels::EmuOptions::from_env().map_err(|e| e.to_string())?;
        Gpu::open_emulated(opts).map(Arc::new).map_err(|e| e.to_string())
    })
    .clone()
}

impl Cuda {
    /// The backend on GPU 0 with tensors stored as `dtype`, or why there is none: the returned
    /// error's message is the reason alone ("built without CUDA kernels (…)", "no CUDA driver: …").
    pub fn new(dtype: DType) -> Result<Self> {
        let gpu = shared_gpu().map_err(Error::invalid)?;
        Ok(Self { gpu, dtype })
    }

    /// The backend on the emulated device (see [`CudaDevice::Emulator`]), or why this build has
    /// none ("built without the CUDA emulator (…)").
    pub fn emulated(dtype: DType) -> Result<Self> {
        let gpu = shared_emulator().map_err(Error::invalid)?;
        Ok(Self { gpu, dtype })
    }

    /// The backend on `device`.
    pub fn open(device: CudaDevice, dtype: DType) -> Result<Self> {
        match device {
            CudaDevice::Gpu => Self::new(dtype),
            CudaDevice::Emulator => Self::emulated(dtype),
        }
    }

    /// The device the GPU tests and benches run on, chosen by `ICET_CUDA_DEVICE`: `gpu` (GPU 0
    /// only), `emu` (the emulated device even where a GPU is present) or `auto` (the default: the
    /// GPU when one is usable, else the emulated device). `ICET_REQUIRE_GPU=1` means `gpu`. The
    /// error says why neither could be used, for the test to print as its skip reason.
    pub fn for_tests(dtype: DType) -> std::result::Result<Self, String> {
        let require_gpu = std::env::var_os("ICET_REQUIRE_GPU").is_some_and(|v| v != "0");
        let choice = std::env::var("ICET_CUDA_DEVICE").unwrap_or_default();
        match (choice.as_str(), require_gpu) {
            ("gpu", _) | (_, true) => Self::new(dtype).map_err(|e| e.to_string()),
            ("emu", false) => Self::emulated(dtype).map_err(|e| format!("ICET_CUDA_DEVICE=emu: {e}")),
            ("" | "auto", false) => Self::new(dtype)
                .or_else(|gpu| Self::emulated(dtype).map_err(|emu| format!("no GPU ({gpu}) and no emulator ({emu})"))),
            (other, false) => Err(format!("ICET_CUDA_DEVICE={other}: expected gpu, emu or auto")),
        }
    }

    /// True on the emulated device.
    pub fn is_emulated(&self) -> bool {
        self.gpu.is_emulated()
    }

    /// Why [`Cuda::new`] would fail, or `None` when a GPU is usable.
    pub fn unavailable_reason() -> Option<String> {
        shared_gpu().err()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)", or "CUDA emulator on the CPU, not a GPU (…)".
    pub fn describe(&self) -> String {
        self.gpu.describe()
    }

    /// The kernels' device, for benches and kernel-level tests.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Waits for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize().map_err(kerr)
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor { buf: self.gpu.alloc(self.dtype, rows * cols).map_err(kerr)?, rows, cols })
    }

    fn flash_ok(&self, head_dim: usize) -> bool {
        self.dtype != DType::F32
            && icet_kernels::FLASH_HEAD_DIMS.contains(&head_dim)
            && self.gpu.flash_fits(self.dtype, head_dim)
            && flash_enabled()
    }

    /// Attention of packed query segments against key segments (`k_starts[i]`, `kv_lens[i]` rows
    /// of `k`/`v`), each segment non-causal.
    #[allow(clippy::too_many_arguments)]
    fn segment_attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        q_lens: &[usize],
        kv_lens: &[usize],
        s: AttentionShape,
    ) -> Result<CudaTensor> {
        let mut out = self.alloc(q.rows, q.cols)?;
        if self.flash_ok(s.head_dim) {
            let (mut q0, mut k0) = (0usize, 0usize);
            let mut seqs = Vec::with_capacity(q_lens.len());
            for (&ql, &kl) in q_lens.iter().zip(kv_lens) {
                seqs.push(SeqDesc {
                    q_start: to_i32(q0)?,
                    q_len: to_i32(ql)?,
                    k_base: to_i32(k0)?,
                    n_keys: to_i32(kl)?,
                    causal: 0,
                    pad: [0; 3],
                });
                q0 += ql;
                k0 += kl;
            }
            self.gpu
                .flash_attention(
                    &mut out.buf,
                    &q.buf,
                    q.rows,
                    &k.buf,
                    &v.buf,
                    k.rows,
                    &seqs,
                    s.heads,
                    s.kv_heads,
                    s.head_dim,
                    s.scale,
                )
                .map_err(kerr)?;
        } else {
            let mut rows = Vec::with_capacity(q.rows);
            let mut k0 = 0usize;
            for (&ql, &kl) in q_lens.iter().zip(kv_lens) {
                let row = AttnRow { k_base: to_i32(k0)?, n_keys: to_i32(kl)? };
                rows.extend(std::iter::repeat_n(row, ql));
                k0 += kl;
            }
            self.gpu
                .attention_rows(
                    &mut out.buf,
                    &q.buf,
                    &k.buf,
                    &v.buf,
                    k.rows,
                    &rows,
                    s.heads,
                    s.kv_heads,
                    s.head_dim,
                    s.scale,
                    None,
                )
                .map_err(kerr)?;
        }
        Ok(out)
    }
}

/// `ICET_CUDA_ATTENTION=rows` routes every attention call to the row kernel: an A/B switch for
/// benchmarks and a fallback should the tensor-core kernel misbehave on some GPU.
fn flash_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("ICET_CUDA_ATTENTION").map_or(true, |v| v != "rows"))
}

fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(format!("{v} rows exceed the CUDA kernels' 32-bit indices")))
}

impl BackendOps for Cuda {
    type Tensor = CudaTensor;
    type KvCache = CudaKvCache;

    fn name(&self) -> &'static str {
        match (self.gpu.is_emulated(), self.dtype) {
            (false, DType::F32) => "cuda-f32",
            (false, DType::BF16) => "cuda-bf16",
            (false, DType::F16) => "cuda-f16",
            (true, DType::F32) => "cuda-emu-f32",
            (true, DType::BF16) => "cuda-emu-bf16",
            (true, DType::F16) => "cuda-emu-f16",
        }
    }

    fn element_bytes(&self) -> usize {
        self.dtype.size()
    }

    fn uninit(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        self.alloc(rows, cols)
    }

    fn free_memory(&self) -> Option<usize> {
        self.gpu.memory().ok().map(|(free, _)| free)
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor { buf: self.gpu.upload_f32(self.dtype, data).map_err(kerr)?, rows, cols })
    }

    fn to_host(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        let mut v = self.gpu.download_f32(&t.buf).map_err(kerr)?;
        v.truncate(t.rows * t.cols);
        Ok(v)
    }

    fn dims(&self, t: &CudaTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn cache_shape(&self, c: &CudaKvCache) -> CacheShape {
        CacheShape { layers: c.k.len(), slots: c.slots, capacity: c.capacity, width: c.width }
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        let mut out = self.alloc(rows.len(), x.cols)?;
        self.gpu.gather_rows(&mut out.buf, &x.buf, x.rows, rows, x.cols).map_err(kerr)?;
        Ok(out)
    }

    fn scatter_rows(&self, dst: &mut CudaTensor, rows: &[usize], src: &CudaTensor) -> Result<()> {
        // A row named twice keeps the last write, as on the CPU; the kernel needs distinct rows.
        let mut last = std::collections::HashMap::with_capacity(rows.len());
        for (i, &r) in rows.iter().enumerate() {
            last.insert(r, i);
        }
        if last.len() == rows.len() {
            return self.gpu.scatter_rows(&mut dst.buf, dst.rows, &src.buf, rows, dst.cols).map_err(kerr);
        }
        let mut pairs: Vec<(usize, usize)> = last.into_iter().collect();
        pairs.sort_unstable_by_key(|p| p.1);
        let picked = self.gather_rows(src, &pairs.iter().map(|p| p.1).collect::<Vec<_>>())?;
        let targets: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        self.gpu.scatter_rows(&mut dst.buf, dst.rows, &picked.buf, &targets, dst.cols).map_err(kerr)
    }

    fn reshape(&self, t: CudaTensor, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor { buf: t.buf, rows, cols })
    }

    fn linear(&self, x: &CudaTensor, w: &CudaTensor, bias: Option<&CudaTensor>) -> Result<CudaTensor> {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        let mut out = self.alloc(m, n)?;
        self.gpu.linear(&mut out.buf, &x.buf, &w.buf, bias.map(|b| &b.buf), m, n, k).map_err(kerr)?;
        Ok(out)
    }

    fn add_assign(&self, a: &mut CudaTensor, b: &CudaTensor) -> Result<()> {
        self.gpu.add_assign(&mut a.buf, &b.buf).map_err(kerr)
    }

    fn layer_norm(&self, x: &CudaTensor, weight: &CudaTensor, bias: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        let c = x.cols;
        let mut out = self.alloc(x.rows, c)?;
        self.gpu.layer_norm(&mut out.buf, &x.buf, &weight.buf, &bias.buf, x.rows, c, eps).map_err(kerr)?;
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        let c = x.cols;
        let mut out = self.alloc(x.rows, c)?;
        self.gpu.rms_norm(&mut out.buf, &x.buf, &weight.buf, x.rows, c, eps).map_err(kerr)?;
        Ok(out)
    }

    /// One kernel: the sum is rounded to the storage dtype before the statistics, as the unfused pair.
    fn add_layer_norm(
        &self,
        x: &mut CudaTensor,
        delta: &CudaTensor,
        weight: &CudaTensor,
        bias: &CudaTensor,
        eps: f32,
    ) -> Result<CudaTensor> {
        let mut out = self.alloc(x.rows, x.cols)?;
        let (rows, cols) = (x.rows, x.cols);
        self.gpu
            .add_layer_norm(&mut out.buf, &mut x.buf, &delta.buf, &weight.buf, &bias.buf, rows, cols, eps)
            .map_err(kerr)?;
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaTensor,
        delta: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
    ) -> Result<CudaTensor> {
        let mut out = self.alloc(x.rows, x.cols)?;
        let (rows, cols) = (x.rows, x.cols);
        self.gpu.add_rms_norm(&mut out.buf, &mut x.buf, &delta.buf, &weight.buf, rows, cols, eps).map_err(kerr)?;
        Ok(out)
    }

    fn activation(&self, x: &mut CudaTensor, act: Activation) -> Result<()> {
        let a = match act {
            Activation::QuickGelu => Act::QuickGelu,
            Activation::GeluErf => Act::GeluErf,
            Activation::Silu => Act::Silu,
            Activation::GeluTanh => Act::GeluTanh,
            Activation::Tanh => Act::Tanh,
        };
        let n = x.rows * x.cols;
        self.gpu.activation(&mut x.buf, n, a).map_err(kerr)
    }

    fn silu_mul(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        let mut out = self.alloc(gate.rows, gate.cols)?;
        self.gpu.silu_mul(&mut out.buf, &gate.buf, &up.buf, gate.rows * gate.cols).map_err(kerr)?;
        Ok(out)
    }

    fn rotary(&self, x: &mut CudaTensor, positions: &[usize], head_dim: usize, inv_freq: &[f32]) -> Result<()> {
        let pos: Vec<i32> = positions.iter().map(|&p| to_i32(p)).collect::<Result<_>>()?;
        let heads = x.cols / head_dim;
        self.gpu.rotary(&mut x.buf, &pos, inv_freq, heads, head_dim).map_err(kerr)
    }

    fn embedding(&self, table: &CudaTensor, ids: &[u32]) -> Result<CudaTensor> {
        let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        self.gather_rows(table, &rows)
    }

    fn patch_embed(
        &self,
        pixels: &CudaTensor,
        channels: usize,
        patch: usize,
        weight: &CudaTensor,
    ) -> Result<CudaTensor> {
        let (w, h) = (pixels.cols, pixels.rows / channels);
        let n_patches = (h / patch) * (w / patch);
        let mut cols = self.alloc(n_patches, channels * patch * patch)?;
        self.gpu.im2col(&mut cols.buf, &pixels.buf, channels, h, w, patch).map_err(kerr)?;
        self.linear(&cols, weight, None)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        lens: &[usize],
        s: AttentionShape,
    ) -> Result<CudaTensor> {
        self.segment_attention(q, k, v, lens, lens, s)
    }

    fn attention_kv(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        q_lens: &[usize],
        kv_lens: &[usize],
        s: AttentionShape,
    ) -> Result<CudaTensor> {
        self.segment_attention(q, k, v, q_lens, kv_lens, s)
    }

    /// The row kernel with the relative-position terms (`relative_attention` in
    /// kernels-cu/attention.cu), one block per (query row, head); f32 arithmetic whatever the
    /// storage dtype.
    fn relative_attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        lens: &[usize],
        rel: RelativePositions<'_, CudaTensor>,
        s: AttentionShape,
    ) -> Result<CudaTensor> {
        let mut rows = Vec::with_capacity(q.rows);
        let mut start = 0usize;
        for &n in lens {
            for i in 0..n {
                rows.push(RelRow { k_base: to_i32(start)?, n_keys: to_i32(n)?, pos: to_i32(i)? });
            }
            start += n;
        }
        let table = |t: &[u32]| t.iter().map(|&i| to_i32(i as usize)).collect::<Result<Vec<i32>>>();
        let (c2p, p2c) = (table(rel.c2p)?, table(rel.p2c)?);
        let mut out = self.alloc(q.rows, q.cols)?;
        self.gpu
            .relative_attention(
                &mut out.buf,
                &q.buf,
                &k.buf,
                &v.buf,
                k.rows,
                &rows,
                icet_kernels::RelTables {
                    pos_key: rel.pos_key.map(|t| (&t.buf, t.rows)),
                    pos_query: rel.pos_query.map(|t| (&t.buf, t.rows)),
                    c2p: &c2p,
                    p2c: &p2c,
                },
                s.heads,
                s.kv_heads,
                s.head_dim,
                s.scale,
            )
            .map_err(kerr)?;
        Ok(out)
    }

    fn kv_cache(
        &self,
        layers: usize,
        slots: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<CudaKvCache> {
        let width = kv_heads * head_dim;
        let size = slots * capacity * width;
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(self.gpu.alloc(self.dtype, size).map_err(kerr)?);
            v.push(self.gpu.alloc(self.dtype, size).map_err(kerr)?);
        }
        Ok(CudaKvCache { k, v, slots, capacity, width })
    }

    fn cached_attention(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        chunks: &[SeqChunk],
        s: AttentionShape,
    ) -> Result<CudaTensor> {
        let hd = s.head_dim;
        let total: usize = chunks.iter().map(|c| c.len).sum();
        let cap = cache.capacity;
        let mut dst_rows = Vec::with_capacity(total);
        for c in chunks {
            dst_rows.extend((c.start..c.start + c.len).map(|p| c.slot * cap + p));
        }
        let cache_rows = cache.slots * cap;
        let w = cache.width;
        self.gpu.scatter_rows(&mut cache.k[layer], cache_rows, &k.buf, &dst_rows, w).map_err(kerr)?;
        self.gpu.scatter_rows(&mut cache.v[layer], cache_rows, &v.buf, &dst_rows, w).map_err(kerr)?;
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        let mut out = self.alloc(q.rows, q.cols)?;
        let longest = chunks.iter().map(|c| c.len).max().unwrap_or(0);
        if self.flash_ok(hd) && longest > ROWS_KERNEL_MAX_CHUNK {
            let mut seqs = Vec::with_capacity(chunks.len());
            let mut row = 0;
            for c in chunks {
                seqs.push(SeqDesc {
                    q_start: to_i32(row)?,
                    q_len: to_i32(c.len)?,
                    k_base: to_i32(c.slot * cap)?,
                    n_keys: to_i32(c.start + c.len)?,
                    causal: 1,
                    pad: [0; 3],
                });
                row += c.len;
            }
            self.gpu
                .flash_attention(
                    &mut out.buf,
                    &q.buf,
                    q.rows,
                    kc,
                    vc,
                    cache_rows,
                    &seqs,
                    s.heads,
                    s.kv_heads,
                    hd,
                    s.scale,
                )
                .map_err(kerr)?;
        } else {
            let mut rows = Vec::with_capacity(total);
            for c in chunks {
                for i in 0..c.len {
                    rows.push(AttnRow { k_base: to_i32(c.slot * cap)?, n_keys: to_i32(c.start + i + 1)? });
                }
            }
            self.gpu
                .attention_rows(&mut out.buf, &q.buf, kc, vc, cache_rows, &rows, s.heads, s.kv_heads, hd, s.scale, None)
                .map_err(kerr)?;
        }
        Ok(out)
    }

    fn argmax(&self, logits: &CudaTensor) -> Result<Vec<u32>> {
        self.gpu.argmax(&logits.buf, logits.rows, logits.cols).map_err(kerr)
    }

    fn sample(&self, logits: &CudaTensor, params: SamplingParams, seeds: &[u64]) -> Result<Vec<u32>> {
        if params.temperature <= 0.0 {
            return self.argmax(logits);
        }
        let uniforms: Vec<f64> = seeds.iter().map(|&s| uniform_from_seed(s)).collect();
        self.gpu
            .sample_top_p(&logits.buf, logits.rows, logits.cols, &uniforms, params.temperature, params.top_p)
            .map_err(kerr)
    }
}
