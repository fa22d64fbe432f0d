//! The device: a real GPU or the emulated one behind one seam ([`crate::device::Device`]), and
//! device buffers that know their dtype. Every failure is a [`KernelError`] with a one-line message.
use crate::device::{self, Allocation, Args, DevPtr, Device, LaunchConfig, Properties};

pub use crate::device::emu::{EmuOptions, Schedule};

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

/// `len` elements of `dtype` in device memory.
pub struct DevBuf {
    pub(crate) mem: Box<dyn Allocation>,
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
    /// The device address (one stream orders everything, so no event is needed to use it).
    pub(crate) fn ptr(&self) -> DevPtr {
        self.mem.ptr()
    }
}

/// Untyped device memory: index lists, descriptors and scratch of the launchers.
pub(crate) struct RawBuf {
    mem: Box<dyn Allocation>,
    bytes: usize,
}

impl RawBuf {
    pub(crate) fn ptr(&self) -> DevPtr {
        self.mem.ptr()
    }
}

/// A CUDA device — a GPU through the driver, or the emulated one — with the kernels of
/// `kernels-cu/` loaded. Its methods are the same on both.
pub struct Gpu {
    dev: Box<dyn Device>,
}

impl Gpu {
    /// Opens GPU `ordinal`, or says why there is none to use: this build has no kernels, the
    /// driver or cuBLASLt library is missing, there is no device, or it is older than sm_80.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        Ok(Gpu { dev: Box::new(device::cuda::CudaDevice::open(ordinal)?) })
    }

    /// Opens an emulated device (see `device/emu.rs`), or says why this build has none.
    pub fn open_emulated(opts: EmuOptions) -> Result<Gpu> {
        Ok(Gpu { dev: Box::new(device::emu::EmuDevice::open(opts)?) })
    }

    /// Whether this build contains the emulator, or why not.
    pub fn emulator_available() -> std::result::Result<(), String> {
        device::emu::emulator_available()
    }

    fn props(&self) -> &Properties {
        self.dev.properties()
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)", or the emulator's description (which says it is
    /// one).
    pub fn describe(&self) -> String {
        self.props().describe.clone()
    }

    /// True on the emulated device (tests use smaller shapes there; timings mean nothing).
    pub fn is_emulated(&self) -> bool {
        self.props().emulated
    }

    pub(crate) fn sm_count(&self) -> u32 {
        self.props().sm_count
    }

    pub(crate) fn shared_optin(&self) -> usize {
        self.props().shared_optin
    }

    /// Whether the fused attention kernel's tile for `head_dim` fits this GPU's shared memory
    /// (callers fall back to the row kernel where it does not).
    pub fn flash_fits(&self, dtype: DType, head_dim: usize) -> bool {
        crate::launch::flash_smem_bytes(dtype, head_dim) <= self.shared_optin()
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.dev.memory()
    }

    /// Waits for everything queued so far (benchmarks time with this inside the loop).
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// Launches `kernel`; with `ICET_CUDA_SYNC=1` also waits for it, so that a fault (an illegal
    /// address, a launch failure) is reported with the kernel that caused it instead of surfacing
    /// at some later call.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters and stay within the buffers' bounds (the
    /// launchers check every size first).
    pub(crate) unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &mut Args<'_>) -> Result<()> {
        unsafe { self.dev.launch(kernel, cfg, args) }?;
        self.check_after(kernel)
    }

    pub(crate) fn opt_in_shared(&self, kernel: &str, bytes: usize) -> Result<()> {
        self.dev.opt_in_shared(kernel, bytes)
    }

    /// # Safety
    /// The operands must lie in live buffers of their described extents.
    pub(crate) unsafe fn matmul(&self, op: &device::Matmul) -> Result<()> {
        unsafe { self.dev.matmul(op) }?;
        self.check_after("cuBLASLt matmul")
    }

    /// With `ICET_CUDA_SYNC=1`, waits for the queued work and names `what` if it failed.
    fn check_after(&self, what: &str) -> Result<()> {
        static SYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *SYNC.get_or_init(|| std::env::var("ICET_CUDA_SYNC").is_ok_and(|v| v != "0")) {
            self.dev.synchronize().map_err(|e| err(format!("CUDA error in {what}: {e}")))?;
        }
        Ok(())
    }

    fn alloc_bytes(&self, bytes: usize) -> Result<Box<dyn Allocation>> {
        // Zero-byte allocations are legal but give null pointers some kernels would still read.
        self.dev.alloc(bytes.max(16)).map_err(|e| match self.memory() {
            Ok((free, total)) => err(format!(
                "{e}: asked for {bytes} bytes ({:.2} GiB), {free} bytes ({:.2} GiB) free of {:.2} GiB on {}",
                gib(bytes),
                gib(free),
                gib(total),
                self.props().name
            )),
            Err(_) => err(format!("{e}: asked for {bytes} bytes ({:.2} GiB)", gib(bytes))),
        })
    }

    /// Uninitialised device memory for `len` elements. Out of memory is an error that says how
    /// much was asked for and how much is free.
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<DevBuf> {
        Ok(DevBuf { mem: self.alloc_bytes(len * dtype.size())?, dtype, len })
    }

    pub(crate) fn alloc_raw(&self, bytes: usize) -> Result<RawBuf> {
        Ok(RawBuf { mem: self.alloc_bytes(bytes)?, bytes })
    }

    /// Uploads raw values already in the buffer's storage format (`T` of the dtype's size).
    pub fn upload<T: bytemuck::Pod>(&self, dtype: DType, data: &[T]) -> Result<DevBuf> {
        assert_eq!(std::mem::size_of::<T>(), dtype.size(), "upload: host type does not match {dtype}");
        let buf = self.alloc(dtype, data.len())?;
        unsafe { self.dev.htod(buf.ptr(), bytemuck::cast_slice::<T, u8>(data)) }?;
        Ok(buf)
    }

    /// Small host arrays for kernels (row lists, positions, descriptors, draws).
    pub(crate) fn upload_raw<T: bytemuck::Pod>(&self, data: &[T]) -> Result<RawBuf> {
        let bytes = bytemuck::cast_slice::<T, u8>(data);
        let buf = self.alloc_raw(bytes.len())?;
        unsafe { self.dev.htod(buf.ptr(), bytes) }?;
        Ok(buf)
    }

    /// Downloads the raw storage bytes of `buf`.
    pub fn download_bytes(&self, buf: &DevBuf) -> Result<Vec<u8>> {
        let mut out = vec![0u8; buf.bytes()];
        if !out.is_empty() {
            unsafe { self.dev.dtoh(&mut out, buf.ptr()) }?;
        }
        Ok(out)
    }

    /// Downloads the first `n` i32 values of `buf`.
    pub(crate) fn download_i32(&self, buf: &RawBuf, n: usize) -> Result<Vec<i32>> {
        assert!(n * 4 <= buf.bytes, "download_i32: {n} values from {} bytes", buf.bytes);
        let mut bytes = vec![0u8; n * 4];
        if n > 0 {
            unsafe { self.dev.dtoh(&mut bytes, buf.ptr()) }?;
        }
        Ok(bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
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

    /// Fills `buf` with NaN (tests poison outputs before a kernel writes them): all-ones bytes,
    /// a NaN in f32, bf16 and f16 alike.
    pub fn fill_nan(&self, buf: &mut DevBuf) -> Result<()> {
        self.memset_raw(buf.ptr(), 0xFF, buf.bytes())
    }

    pub(crate) fn memset_raw(&self, p: DevPtr, byte: u8, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        unsafe { self.dev.memset(p, byte, bytes) }
    }

    /// Copies `src` into `dst` (same dtype and length).
    pub fn copy(&self, src: &DevBuf, dst: &mut DevBuf) -> Result<()> {
        if src.dtype != dst.dtype || src.len != dst.len {
            return Err(err(format!("copy: {} x{} into {} x{}", src.dtype, src.len, dst.dtype, dst.len)));
        }
        if src.len == 0 {
            return Ok(());
        }
        unsafe { self.dev.dtod(dst.ptr(), src.ptr(), src.bytes()) }
    }
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
