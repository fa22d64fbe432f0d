//! The device: one CUDA context and stream, the loaded kernel modules, cuBLASLt, and device
//! buffers that know their dtype. Every failure is a [`KernelError`] with a one-line message.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

use crate::blas::Blas;

/// Storage type of a device buffer. Kernels compute in f32 whatever the storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    /// The suffix of the kernels' C names (`rms_norm_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(DType::F32),
            "bf16" | "bfloat16" => Some(DType::BF16),
            "f16" | "float16" => Some(DType::F16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.suffix())
    }
}

/// A CUDA failure, said in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError(pub String);

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KernelError {}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

pub(crate) fn err(msg: impl std::fmt::Display) -> KernelError {
    KernelError(msg.to_string())
}

pub(crate) fn driver(op: &str, e: cudarc::driver::DriverError) -> KernelError {
    KernelError(format!("CUDA {op} failed: {e:?}"))
}

/// `len` elements of `dtype` in device memory.
pub struct DevBuf {
    pub(crate) slice: CudaSlice<u8>,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
}

impl DevBuf {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
    /// The raw device address (event tracking is off: one stream orders everything).
    pub(crate) fn ptr(&self) -> u64 {
        let (p, _sync) = self.slice.device_ptr(self.slice.stream());
        p
    }
}

pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    modules: Vec<Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    pub(crate) blas: Blas,
    name: String,
    capability: (i32, i32),
    pub(crate) sm_count: u32,
    /// Most dynamic shared memory one block may opt into: 227 KiB on sm_90, 163 KiB on
    /// sm_80/87, 99 KiB on sm_86/89/120 — where the flash kernel's head-dim-128 tile does not fit.
    pub(crate) shared_optin: usize,
}

impl Gpu {
    /// Opens GPU `ordinal`, or says why there is none to use: this build has no kernels, the
    /// driver or cuBLASLt library is missing, there is no device, or it is older than sm_80.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if !crate::kernels_built() {
            return Err(err(
                "built without CUDA kernels (no nvcc at build time; run `export NVCC=$(scripts/install-nvcc.sh)` and rebuild)",
            ));
        }
        // cudarc panics when a library is missing; ask first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(err("no CUDA driver: libcuda.so was not found"));
        }
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(err("cuBLASLt was not found (libcublasLt.so; add the CUDA libraries to LD_LIBRARY_PATH)"));
        }
        let count = CudaContext::device_count().map_err(|e| err(format!("no usable CUDA GPU ({e:?})")))?;
        if count <= ordinal as i32 {
            return Err(err(format!("no CUDA GPU with index {ordinal} ({count} found)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver("context creation", e))?;
        // One stream orders every operation, so cudarc's per-buffer events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().map_err(|e| driver("device query", e))?;
        let capability = ctx.compute_capability().map_err(|e| driver("device query", e))?;
        if capability.0 < 8 {
            return Err(err(format!(
                "GPU {name} has compute capability {}.{}; the kernels need 8.0 (Ampere) or newer",
                capability.0, capability.1
            )));
        }
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver("device query", e))? as u32;
        let shared_optin = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver("device query", e))? as usize;
        let stream = ctx.new_stream().map_err(|e| driver("stream creation", e))?;
        let mut modules = Vec::new();
        for (stem, fatbin) in crate::modules() {
            let module = ctx
                .load_module(Ptx::from_binary(fatbin.to_vec()))
                .map_err(|e| err(format!("loading kernels-cu/{stem}.cu's fatbin failed: {e:?}")))?;
            modules.push(module);
        }
        let blas = Blas::new(&stream)?;
        Ok(Gpu {
            ctx,
            stream,
            modules,
            functions: Mutex::new(HashMap::new()),
            blas,
            name,
            capability,
            sm_count,
            shared_optin,
        })
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)".
    pub fn describe(&self) -> String {
        format!("{} (sm_{}{}, {} SMs)", self.name, self.capability.0, self.capability.1, self.sm_count)
    }

    /// Whether the fused attention kernel's tile for `head_dim` fits this GPU's shared memory
    /// (callers fall back to the row kernel where it does not).
    pub fn flash_fits(&self, dtype: DType, head_dim: usize) -> bool {
        crate::launch::flash_smem_bytes(dtype, head_dim) <= self.shared_optin
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| driver("memory query", e))
    }

    /// Waits for everything queued so far (benchmarks time with this inside the loop).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver("synchronize", e))
    }

    /// With `ICET_CUDA_SYNC=1`, waits for the queued work and names `what` if it failed.
    pub(crate) fn check_after(&self, what: &str) -> Result<()> {
        static SYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *SYNC.get_or_init(|| std::env::var("ICET_CUDA_SYNC").is_ok_and(|v| v != "0")) {
            self.stream.synchronize().map_err(|e| err(format!("CUDA error in {what}: {e:?}")))?;
        }
        Ok(())
    }

    /// The kernel `name`, looked up once in whichever module defines it.
    pub(crate) fn function(&self, name: &str) -> Result<CudaFunction> {
        // Every launch starts here: make this device's context current on the calling thread
        // (module and function calls do not do it themselves; the tests call from many threads).
        self.ctx.bind_to_thread().map_err(|e| driver("binding the context", e))?;
        let mut cache = self.functions.lock().unwrap();
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        for m in &self.modules {
            if let Ok(f) = m.load_function(name) {
                cache.insert(name.to_string(), f.clone());
                return Ok(f);
            }
        }
        Err(err(format!("kernel `{name}` is not in the fatbins of this build")))
    }

    /// Uninitialised device memory for `len` elements. Out of memory is an error that says how
    /// much was asked for and how much is free.
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<DevBuf> {
        let bytes = len * dtype.size();
        // Zero-byte allocations are legal but give null pointers some kernels would still read.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(16)) }.map_err(|e| {
            let what = if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                "CUDA out of memory".to_string()
            } else {
                format!("CUDA allocation failed ({e:?})")
            };
            match self.memory() {
                Ok((free, total)) => err(format!(
                    "{what}: asked for {bytes} bytes ({:.2} GiB), {free} bytes ({:.2} GiB) free of {:.2} GiB on {}",
                    gib(bytes),
                    gib(free),
                    gib(total),
                    self.name
                )),
                Err(_) => err(format!("{what}: asked for {bytes} bytes ({:.2} GiB)", gib(bytes))),
            }
        })?;
        Ok(DevBuf { slice, dtype, len })
    }

    /// Uploads raw values already in the buffer's storage format.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, dtype: DType, data: &[T]) -> Result<DevBuf> {
        assert_eq!(std::mem::size_of::<T>(), dtype.size(), "upload: host type does not match {dtype}");
        let mut buf = self.alloc(dtype, data.len())?;
        if !data.is_empty() {
            let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) };
            let mut view = buf.slice.slice_mut(..bytes.len());
            self.stream.memcpy_htod(bytes, &mut view).map_err(|e| driver("upload", e))?;
        }
        Ok(buf)
    }

    /// Small index arrays for kernels (row lists, positions, descriptors).
    pub fn upload_i32(&self, data: &[i32]) -> Result<CudaSlice<i32>> {
        self.stream.clone_htod(if data.is_empty() { &[0][..] } else { data }).map_err(|e| driver("upload", e))
    }

    /// Downloads the raw storage bytes of `buf`.
    pub fn download_bytes(&self, buf: &DevBuf) -> Result<Vec<u8>> {
        if buf.bytes() == 0 {
            return Ok(Vec::new());
        }
        let view = buf.slice.slice(..buf.bytes());
        self.stream.clone_dtoh(&view).map_err(|e| driver("download", e))
    }

    /// Uploads f32 values and stores them as `dtype` (converted on the device).
    pub fn upload_f32(&self, dtype: DType, data: &[f32]) -> Result<DevBuf> {
        let staged = self.upload(DType::F32, data)?;
        if dtype == DType::F32 {
            return Ok(staged);
        }
        let mut out = self.alloc(dtype, data.len())?;
        self.cast(&staged, &mut out)?;
        Ok(out)
    }

    /// Downloads `buf` as f32 (converted on the device when stored narrower).
    pub fn download_f32(&self, buf: &DevBuf) -> Result<Vec<f32>> {
        let wide;
        let src = if buf.dtype == DType::F32 {
            buf
        } else {
            let mut w = self.alloc(DType::F32, buf.len)?;
            self.cast(buf, &mut w)?;
            wide = w;
            &wide
        };
        let bytes = self.download_bytes(src)?;
        Ok(bytes.chunks_exact(4).take(buf.len).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Downloads small i32 results.
    pub fn download_i32(&self, s: &CudaSlice<i32>, n: usize) -> Result<Vec<i32>> {
        let mut v = self.stream.clone_dtoh(s).map_err(|e| driver("download", e))?;
        v.truncate(n);
        Ok(v)
    }

    /// Fills `buf` with NaN (tests poison outputs before a kernel writes them).
    pub fn fill_nan(&self, buf: &mut DevBuf) -> Result<()> {
        let nan: Vec<u8> = match buf.dtype {
            DType::F32 => f32::NAN.to_le_bytes().to_vec(),
            DType::BF16 => half::bf16::NAN.to_le_bytes().to_vec(),
            DType::F16 => half::f16::NAN.to_le_bytes().to_vec(),
        };
        let host: Vec<u8> = nan.iter().copied().cycle().take(buf.bytes()).collect();
        if !host.is_empty() {
            let mut view = buf.slice.slice_mut(..host.len());
            self.stream.memcpy_htod(&host[..], &mut view).map_err(|e| driver("upload", e))?;
        }
        Ok(())
    }

    /// Copies `src` into `dst` (same dtype and length).
    pub fn copy(&self, src: &DevBuf, dst: &mut DevBuf) -> Result<()> {
        if src.dtype != dst.dtype || src.len != dst.len {
            return Err(err(format!("copy: {} x{} into {} x{}", src.dtype, src.len, dst.dtype, dst.len)));
        }
        if src.len == 0 {
            return Ok(());
        }
        let n = src.bytes();
        let s = src.slice.slice(..n);
        let mut d = dst.slice.slice_mut(..n);
        self.stream.memcpy_dtod(&s, &mut d).map_err(|e| driver("copy", e))
    }
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
