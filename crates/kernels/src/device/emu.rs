//! The emulated device: `libicet_emu.so` (built by build.rs from the unchanged `kernels-cu/*.cu`
//! and `kernels-cu/emu/`, embedded in this crate) runs every kernel on the CPU, one fiber per CUDA
//! thread, under a chosen schedule; device memory is host memory allocated by that library
//! (256-byte aligned, a guard page after each buffer, NaN-poisoned); GEMMs run
//! [`crate::blas::cpu_matmul`]. One mutex stands for the stream: operations run one at a time, in
//! the order they are issued, each complete when its call returns.
//!
//! Everything here is checked that a GPU would silently get wrong or report late: every copy
//! range must lie in one live buffer, every pointer argument must point into one, the parameter
//! list must match the kernel's signature, the block must fit the kernel's `__launch_bounds__`,
//! dynamic shared memory above 48 KiB must have been opted into, and a kernel that writes past
//! its shared memory or a buffer, diverges at a barrier or a warp collective, or deadlocks fails
//! its launch with a message that says where.
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use super::{Allocation, Args, DevPtr, Device, LaunchConfig, Matmul, Properties};
use crate::blas::{check_op, cpu_matmul, extent};
use crate::gpu::{err, Result};

/// The C ABI version of kernels-cu/emu/runtime.cpp this crate speaks (`ICET_EMU_ABI`).
const ABI: c_int = 3;

/// Which runnable emulated thread of a block runs next. Every order is legal under CUDA's
/// independent thread scheduling; a kernel is only correct if it is correct under all of them,
/// and different orders expose different missing barriers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Each runnable thread in turn, lowest first: warps advance nearly in step.
    RoundRobin,
    /// As round-robin, highest thread first.
    Reverse,
    /// Always the lowest runnable thread: one warp runs ahead of the others as far as it can.
    Greedy,
    /// Always the highest runnable thread.
    GreedyReverse,
    /// A seeded random runnable thread each time (deterministic per seed and block).
    Random(u64),
}

impl Schedule {
    /// `rr`, `reverse`, `greedy`, `greedy-reverse`, `random` or `random:SEED`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rr" | "round-robin" => Self::RoundRobin,
            "reverse" => Self::Reverse,
            "greedy" => Self::Greedy,
            "greedy-reverse" => Self::GreedyReverse,
            "random" => Self::Random(1),
            _ => Self::Random(s.strip_prefix("random:")?.parse().ok()?),
        })
    }
    pub fn name(self) -> String {
        match self {
            Self::RoundRobin => "rr".into(),
            Self::Reverse => "reverse".into(),
            Self::Greedy => "greedy".into(),
            Self::GreedyReverse => "greedy-reverse".into(),
            Self::Random(seed) => format!("random:{seed}"),
        }
    }
    fn code(self) -> (c_int, u64) {
        match self {
            Self::RoundRobin => (0, 0),
            Self::Reverse => (1, 0),
            Self::Greedy => (2, 0),
            Self::GreedyReverse => (3, 0),
            Self::Random(seed) => (4, seed),
        }
    }
}

/// How the emulated device behaves. [`EmuOptions::from_env`] reads the `ICET_EMU_*` variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmuOptions {
    pub schedule: Schedule,
    /// OS threads a launch's blocks are spread over.
    pub workers: usize,
    /// Device memory, in bytes (what `memory()` reports and allocation is limited to).
    pub memory: usize,
    /// Multiprocessors the launchers see (they size grid-stride loops and key splits by it; few
    /// SMs make every grid-stride loop take several turns).
    pub sm_count: u32,
    /// Dynamic shared memory a block may opt into (default: sm_90's 227 KiB; 101376 makes the
    /// backend fall back from the head-dim-128 flash tile as on sm_86/89).
    pub shared_optin: usize,
}

impl Default for EmuOptions {
    fn default() -> Self {
        Self {
            schedule: Schedule::RoundRobin,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory: 4 << 30,
            sm_count: 4,
            shared_optin: 227 * 1024,
        }
    }
}

impl EmuOptions {
    /// The defaults, overridden by `ICET_EMU_SCHEDULE` (rr, reverse, greedy, greedy-reverse,
    /// random[:SEED]), `ICET_EMU_WORKERS`, `ICET_EMU_MEMORY_MIB`, `ICET_EMU_SMS` and
    /// `ICET_EMU_SHARED_OPTIN` (bytes). A malformed value is an error naming the variable.
    pub fn from_env() -> Result<Self> {
        let mut o = Self::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, v: String| -> Result<usize> {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| err(format!("{name}={v}: expected a positive integer")))
        };
        if let Some(v) = var("ICET_EMU_SCHEDULE") {
            o.schedule = Schedule::parse(&v).ok_or_else(|| {
                err(format!("ICET_EMU_SCHEDULE={v}: expected rr, reverse, greedy, greedy-reverse or random[:SEED]"))
            })?;
        }
        if let Some(v) = var("ICET_EMU_WORKERS") {
            o.workers = number("ICET_EMU_WORKERS", v)?;
        }
        if let Some(v) = var("ICET_EMU_MEMORY_MIB") {
            o.memory = number("ICET_EMU_MEMORY_MIB", v)? << 20;
        }
        if let Some(v) = var("ICET_EMU_SMS") {
            o.sm_count = number("ICET_EMU_SMS", v)? as u32;
        }
        if let Some(v) = var("ICET_EMU_SHARED_OPTIN") {
            o.shared_optin = number("ICET_EMU_SHARED_OPTIN", v)?.min(227 * 1024);
        }
        Ok(o)
    }
}

mod built {
    include!(concat!(env!("OUT_DIR"), "/emu_library.rs"));
}

/// How the embedded emulator library was built ("kernels-cu compiled by g++ … (-O2)"), or why
/// this build has none.
pub fn emulator_build() -> &'static str {
    built::BUILD
}

#[repr(C)]
struct CallOptions {
    schedule: c_int,
    workers: c_int,
    seed: u64,
}

type ErrBuf = *mut c_char;
struct Api {
    sanitized: bool,
    launch: unsafe extern "C" fn(
        c_int,
        *const u32,
        *const u32,
        usize,
        *mut *mut c_void,
        *const c_char,
        c_int,
        *const CallOptions,
        ErrBuf,
        usize,
    ) -> c_int,
    set_max_dynamic_shared: unsafe extern "C" fn(c_int, usize, ErrBuf, usize) -> c_int,
    alloc: unsafe extern "C" fn(usize, *mut *mut c_void, ErrBuf, usize) -> c_int,
    free: unsafe extern "C" fn(*mut c_void),
    check_range: unsafe extern "C" fn(*const c_void, usize, ErrBuf, usize) -> c_int,
    take_error: unsafe extern "C" fn(ErrBuf, usize) -> c_int,
    allocated_bytes: unsafe extern "C" fn() -> usize,
    kernels: HashMap<String, c_int>,
    source: String,
    _lib: libloading::Library,
}

/// Calls `f` with an error buffer; its message when it returns non-zero.
fn checked(f: impl FnOnce(ErrBuf, usize) -> c_int) -> std::result::Result<(), String> {
    let mut buf = vec![0 as c_char; 4096];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    Err(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// The emulator library, loaded once per process: `ICET_EMU_LIB` (another build of it — the
/// mutation check's and the sanitizer run's), else the one embedded in this crate.
fn api() -> std::result::Result<&'static Api, String> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| e.clone())
}

fn load() -> std::result::Result<Api, String> {
    let (lib, source) = match std::env::var_os("ICET_EMU_LIB").filter(|v| !v.is_empty()) {
        Some(path) => {
            let lib = unsafe { libloading::Library::new(&path) }
                .map_err(|e| format!("ICET_EMU_LIB={}: {e}", path.to_string_lossy()))?;
            (lib, format!("{} (ICET_EMU_LIB)", path.to_string_lossy()))
        }
        None => {
            let bytes = built::LIBRARY.ok_or_else(|| built::BUILD.to_string())?;
            (open_embedded(bytes)?, built::BUILD.to_string())
        }
    };
    unsafe {
        // A typed symbol of the library (function pointers are Copy; the library outlives them).
        macro_rules! func {
            ($name:literal) => {
                *lib.get($name.as_bytes()).map_err(|e| format!("the emulator library lacks {}: {e}", $name))?
            };
        }
        let version: unsafe extern "C" fn() -> c_int = func!("icet_emu_abi_version");
        if version() != ABI {
            return Err(format!(
                "the emulator library speaks ABI {}, this build expects {ABI} (rebuild it: {source})",
                version()
            ));
        }
        let sanitized: unsafe extern "C" fn() -> c_int = func!("icet_emu_sanitized");
        let count: unsafe extern "C" fn() -> c_int = func!("icet_emu_kernel_count");
        let name: unsafe extern "C" fn(c_int) -> *const c_char = func!("icet_emu_kernel_name");
        let mut kernels = HashMap::new();
        for i in 0..count() {
            kernels.insert(CStr::from_ptr(name(i)).to_string_lossy().into_owned(), i);
        }
        Ok(Api {
            sanitized: sanitized() != 0,
            launch: func!("icet_emu_launch"),
            set_max_dynamic_shared: func!("icet_emu_set_max_dynamic_shared"),
            alloc: func!("icet_emu_alloc"),
            free: func!("icet_emu_free"),
            check_range: func!("icet_emu_check_range"),
            take_error: func!("icet_emu_take_error"),
            allocated_bytes: func!("icet_emu_allocated_bytes"),
            kernels,
            source,
            _lib: lib,
        })
    }
}

/// dlopens the embedded library from an anonymous memory file (nothing written to disk), or from a
/// temporary file where memfd_create is unavailable.
fn open_embedded(bytes: &[u8]) -> std::result::Result<libloading::Library, String> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let name = CString::new("icet-emu").unwrap();
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd >= 0 {
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(bytes).map_err(|e| format!("writing the emulator library to a memfd: {e}"))?;
        let lib = unsafe { libloading::Library::new(format!("/proc/self/fd/{fd}")) }
            .map_err(|e| format!("loading the embedded emulator library: {e}"))?;
        return Ok(lib); // `file` closes the descriptor; the mapping stays
    }
    let path = std::env::temp_dir().join(format!("icet-emu-{}-{:p}.so", std::process::id(), bytes.as_ptr()));
    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let lib = unsafe { libloading::Library::new(&path) };
    let _ = std::fs::remove_file(&path);
    lib.map_err(|e| format!("loading the embedded emulator library: {e}"))
}

/// Whether this build can open an emulated device, or why not.
pub fn emulator_available() -> std::result::Result<(), String> {
    api().map(|_| ())
}

struct EmuAlloc {
    ptr: DevPtr,
    api: &'static Api,
}

impl Allocation for EmuAlloc {
    fn ptr(&self) -> DevPtr {
        self.ptr
    }
}

impl Drop for EmuAlloc {
    fn drop(&mut self) {
        // A kernel's write into the buffer's slack, found here, is reported by the next call.
        unsafe { (self.api.free)(self.ptr.0 as *mut c_void) }
    }
}

pub(crate) struct EmuDevice {
    api: &'static Api,
    opts: EmuOptions,
    props: Properties,
    stream: Mutex<()>,
}

impl EmuDevice {
    pub(crate) fn open(opts: EmuOptions) -> Result<Self> {
        let api = api().map_err(err)?;
        let describe = format!(
            "CUDA emulator on the CPU, not a GPU (for testing kernels; no GPU speed): {}{}, {} worker thread{}, {} \
             schedule, emulated {} SMs, {} KiB shared memory per block, {} MiB",
            api.source,
            if api.sanitized { " [sanitized]" } else { "" },
            opts.workers,
            if opts.workers == 1 { "" } else { "s" },
            opts.schedule.name(),
            opts.sm_count,
            opts.shared_optin / 1024,
            opts.memory >> 20
        );
        let props = Properties {
            describe,
            name: "the emulated device".into(),
            sm_count: opts.sm_count,
            shared_optin: opts.shared_optin,
            emulated: true,
        };
        Ok(Self { api, opts, props, stream: Mutex::new(()) })
    }

    fn stream(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding it leaves nothing half-done that later calls could see.
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_range(&self, p: DevPtr, bytes: usize, what: &str) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        checked(|e, n| unsafe { (self.api.check_range)(p.0 as *const c_void, bytes, e, n) })
            .map_err(|m| err(format!("emulated device: {what}: {m}")))
    }
}

impl Device for EmuDevice {
    fn properties(&self) -> &Properties {
        &self.props
    }

    fn alloc(&self, bytes: usize) -> Result<Box<dyn Allocation>> {
        let used = unsafe { (self.api.allocated_bytes)() };
        if used + bytes > self.opts.memory {
            return Err(err("CUDA out of memory"));
        }
        let mut p = std::ptr::null_mut();
        checked(|e, n| unsafe { (self.api.alloc)(bytes, &mut p, e, n) })
            .map_err(|m| err(format!("emulated device: allocation of {bytes} bytes: {m}")))?;
        Ok(Box::new(EmuAlloc { ptr: DevPtr(p as u64), api: self.api }))
    }

    fn memory(&self) -> Result<(usize, usize)> {
        let used = unsafe { (self.api.allocated_bytes)() };
        Ok((self.opts.memory.saturating_sub(used), self.opts.memory))
    }

    unsafe fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        let _s = self.stream();
        self.check_range(dst, src.len(), "upload")?;
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        let _s = self.stream();
        self.check_range(src, dst.len(), "download")?;
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        let _s = self.stream();
        self.check_range(src, bytes, "copy source")?;
        self.check_range(dst, bytes, "copy destination")?;
        unsafe { std::ptr::copy(src.0 as *const u8, dst.0 as *mut u8, bytes) };
        Ok(())
    }

    unsafe fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()> {
        let _s = self.stream();
        self.check_range(dst, bytes, "memset")?;
        unsafe { std::ptr::write_bytes(dst.0 as *mut u8, byte, bytes) };
        Ok(())
    }

    fn opt_in_shared(&self, kernel: &str, bytes: usize) -> Result<()> {
        let &k =
            self.api.kernels.get(kernel).ok_or_else(|| err(format!("kernel `{kernel}` is not in the emulator")))?;
        if bytes > self.opts.shared_optin {
            return Err(err(format!(
                "{kernel}: {bytes} bytes of dynamic shared memory exceed this device's opt-in limit of {}",
                self.opts.shared_optin
            )));
        }
        checked(|e, n| unsafe { (self.api.set_max_dynamic_shared)(k, bytes, e, n) }).map_err(err)
    }

    unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &mut Args<'_>) -> Result<()> {
        let &k =
            self.api.kernels.get(kernel).ok_or_else(|| err(format!("kernel `{kernel}` is not in the emulator")))?;
        let (schedule, seed) = self.opts.schedule.code();
        let opts = CallOptions { schedule, workers: self.opts.workers.min(i32::MAX as usize) as c_int, seed };
        let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
        let block = [cfg.block.0, cfg.block.1, cfg.block.2];
        let _s = self.stream();
        checked(|e, n| unsafe {
            (self.api.launch)(
                k,
                grid.as_ptr(),
                block.as_ptr(),
                cfg.shared_mem_bytes as usize,
                args.ptrs.as_mut_ptr(),
                args.kinds.as_ptr() as *const c_char,
                args.ptrs.len() as c_int,
                &opts,
                e,
                n,
            )
        })
        .map_err(|m| {
            err(format!(
                "emulated launch of {kernel} (grid {:?}, block {:?}, {} B dynamic shared memory, {} schedule): {m}",
                cfg.grid,
                cfg.block,
                cfg.shared_mem_bytes,
                self.opts.schedule.name()
            ))
        })
    }

    unsafe fn matmul(&self, op: &Matmul) -> Result<()> {
        check_op(op)?;
        let _s = self.stream();
        let d = op.dtype;
        self.check_range(op.a.ptr, extent(&op.a, d), "cuBLASLt matmul A")?;
        self.check_range(op.b.ptr, extent(&op.b, d), "cuBLASLt matmul B")?;
        if op.beta != 0.0 {
            self.check_range(op.c.ptr, extent(&op.c, d), "cuBLASLt matmul C")?;
        }
        self.check_range(op.d.ptr, extent(&op.d, d), "cuBLASLt matmul D")?;
        if let Some(b) = op.bias {
            self.check_range(b, op.m * d.size(), "cuBLASLt matmul bias")?;
        }
        unsafe { cpu_matmul(op, self.opts.workers) };
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        // Every operation completed when its call returned; a pending error (a write past a
        // buffer found when it was freed) surfaces here.
        let _s = self.stream();
        checked(|e, n| unsafe { (self.api.take_error)(e, n) }).map_err(|m| err(format!("emulated device: {m}")))
    }
}
