//! The device seam under [`crate::Gpu`]: allocation, copies, memset, kernel launch, the one GEMM
//! and stream synchronisation, in the terms of the CUDA driver API (device addresses, byte
//! counts, a `void**` parameter array). Two implementations:
//!
//! - [`cuda::CudaDevice`]: the real driver through cudarc (one context, one stream) and cuBLASLt;
//! - [`emu::EmuDevice`]: the emulated device — host memory laid out like device memory, kernels
//!   from `kernels-cu/` compiled by g++ and run by the fiber emulator (`kernels-cu/emu/`), and
//!   GEMMs by a CPU implementation of exactly the cuBLASLt operation asked for.
//!
//! Everything above this seam — the launchers in `launch.rs`, `Gpu`'s buffers, the models'
//! CUDA backend — is the same code on both, so the emulator checks their grid, block and
//! shared-memory arithmetic and their parameter lists as well as the kernels.
use std::ffi::c_void;
use std::marker::PhantomData;

use crate::gpu::{DType, Result};

pub(crate) mod cuda;
pub(crate) mod emu;

/// A device address (on the emulated device, the host address of its memory).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevPtr(pub(crate) u64);

impl DevPtr {
    pub const NULL: DevPtr = DevPtr(0);
}

/// A live allocation; dropping it frees the memory (stream-ordered on the real device).
pub(crate) trait Allocation: Send + Sync {
    fn ptr(&self) -> DevPtr;
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// A value a kernel parameter can be passed as, with the kind letter the emulator checks it
/// against the kernel's declared parameter type (`icet_emu::kind_of` in kernels-cu/emu/icet_emu.h).
pub(crate) trait KernelArg {
    const KIND: u8;
}
macro_rules! kernel_arg {
    ($($t:ty => $k:literal),*) => {$(impl KernelArg for $t { const KIND: u8 = $k; })*};
}
kernel_arg!(DevPtr => b'p', i32 => b'i', u32 => b'u', i64 => b'l', u64 => b'L', f32 => b'f', f64 => b'd');

/// A kernel's parameter list as cuLaunchKernel takes it: one pointer to each argument's value.
pub(crate) struct Args<'a> {
    pub(crate) ptrs: Vec<*mut c_void>,
    pub(crate) kinds: Vec<u8>,
    _values: PhantomData<&'a ()>,
}

impl<'a> Args<'a> {
    pub(crate) fn new() -> Self {
        Self { ptrs: Vec::with_capacity(12), kinds: Vec::with_capacity(12), _values: PhantomData }
    }
    pub(crate) fn arg<T: KernelArg>(&mut self, v: &'a T) -> &mut Self {
        self.ptrs.push(v as *const T as *mut c_void);
        self.kinds.push(T::KIND);
        self
    }
}

/// One operand of a [`Matmul`], as `cublasLtMatrixLayoutCreate` describes it: a column-major
/// `rows × cols` matrix with leading dimension `ld` (elements between column starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Operand {
    pub ptr: DevPtr,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

/// One cuBLASLt matmul, `D = alpha · op(A) · op(B) + beta · C`, then the BIAS epilogue
/// (`bias[i]` added to row `i` of D) when `bias` is set: every matrix of `dtype`, f32 compute
/// and scale (`CUBLAS_COMPUTE_32F`, no TF32). `D` is `m × n`, `op(A)` `m × k`, `op(B)` `k × n`;
/// `op(X)` is `Xᵀ` when `trans_X`. When `beta` is 0, C is not read (cuBLAS's rule).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Matmul {
    pub dtype: DType,
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand,
    pub b: Operand,
    pub c: Operand,
    pub d: Operand,
    pub bias: Option<DevPtr>,
    pub alpha: f32,
    pub beta: f32,
}

/// What a device is, for messages and for the launchers' shape choices.
#[derive(Clone, Debug)]
pub(crate) struct Properties {
    /// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" or the emulator's description.
    pub describe: String,
    /// Named in out-of-memory messages.
    pub name: String,
    pub sm_count: u32,
    /// Most dynamic shared memory one block may opt into.
    pub shared_optin: usize,
    pub emulated: bool,
}

/// The operations `Gpu` needs from a device. Addresses are raw: the methods that take them are
/// `unsafe`, and the callers (`Gpu`, the launchers) check every size before calling. The
/// emulated device checks again, and reports what the real one would silently corrupt.
pub(crate) trait Device: Send + Sync {
    fn properties(&self) -> &Properties;
    /// `bytes` of uninitialised device memory (never zero bytes: callers round up).
    fn alloc(&self, bytes: usize) -> Result<Box<dyn Allocation>>;
    /// `(free, total)` bytes.
    fn memory(&self) -> Result<(usize, usize)>;
    /// # Safety
    /// `dst..dst + src.len()` must lie in one live allocation.
    unsafe fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// # Safety
    /// `src..src + dst.len()` must lie in one live allocation.
    unsafe fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<()>;
    /// # Safety
    /// Both ranges must lie in live allocations.
    unsafe fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    /// # Safety
    /// `dst..dst + bytes` must lie in one live allocation.
    unsafe fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()>;
    /// Lets `kernel` launch with up to `bytes` of dynamic shared memory
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
    fn opt_in_shared(&self, kernel: &str, bytes: usize) -> Result<()>;
    /// Queues `kernel` (looked up by its C name).
    ///
    /// # Safety
    /// `args` must match the kernel's parameters and every pointer in them must be valid for
    /// the accesses the kernel makes at this configuration.
    unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &mut Args<'_>) -> Result<()>;
    /// # Safety
    /// Every operand must lie in live allocations of its described extent.
    unsafe fn matmul(&self, op: &Matmul) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
}
