//! The real device: one CUDA context and stream (cudarc), the fatbins built from `kernels-cu/`,
//! and cuBLASLt.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

use super::{Allocation, Args, DevPtr, Device, LaunchConfig, Matmul, Properties};
use crate::blas::Cublas;
use crate::gpu::{err, Result};

fn driver(op: &str, e: cudarc::driver::DriverError) -> crate::KernelError {
    err(format!("CUDA {op} failed: {e:?}"))
}

struct CudaAlloc {
    _slice: CudaSlice<u8>,
    ptr: DevPtr,
}

impl Allocation for CudaAlloc {
    fn ptr(&self) -> DevPtr {
        self.ptr
    }
}

pub(crate) struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Vec<Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    blas: Cublas,
    props: Properties,
}

impl CudaDevice {
    /// Opens GPU `ordinal`, or says why there is none to use: this build has no kernels, the
    /// driver or cuBLASLt library is missing, there is no device, or it is older than sm_80.
    pub(crate) fn open(ordinal: usize) -> Result<Self> {
        if !crate::kernels_built() {
            return Err(err(
                "built without CUDA kernels (no nvcc at build time; run `export NVCC=$(scripts/install-nvcc.sh)` and rebuild)",
            ));
        }
        // cudarc panics when a library is missing; ask first.
        if !unsafe { sys::is_culib_present() } {
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
        // 227 KiB on sm_90, 163 KiB on sm_80/87, 99 KiB on sm_86/89/120 — where the flash
        // kernel's head-dim-128 tile does not fit.
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
        let blas = Cublas::new(&stream)?;
        let describe = format!("{name} (sm_{}{}, {sm_count} SMs)", capability.0, capability.1);
        Ok(Self {
            ctx,
            stream,
            modules,
            functions: Mutex::new(HashMap::new()),
            blas,
            props: Properties { describe, name, sm_count, shared_optin, emulated: false },
        })
    }

    /// The kernel `name`, looked up once in whichever module defines it.
    fn function(&self, name: &str) -> Result<CudaFunction> {
        // Every launch starts here: make this device's context current on the calling thread
        // (module and function calls do not do it themselves; the tests call from many threads).
        self.bind()?;
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

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver("binding the context", e))
    }
}

impl Device for CudaDevice {
    fn properties(&self) -> &Properties {
        &self.props
    }

    fn alloc(&self, bytes: usize) -> Result<Box<dyn Allocation>> {
        let slice = unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                err("CUDA out of memory")
            } else {
                err(format!("CUDA allocation failed ({e:?})"))
            }
        })?;
        let p = slice.device_ptr(&self.stream).0;
        Ok(Box::new(CudaAlloc { ptr: DevPtr(p), _slice: slice }))
    }

    fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| driver("memory query", e))
    }

    unsafe fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        // From pageable memory the copy has read `src` when the call returns (CUDA stages it).
        self.bind()?;
        unsafe { result::memcpy_htod_async(dst.0, src, self.stream.cu_stream()) }.map_err(|e| driver("upload", e))
    }

    unsafe fn dtoh(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.bind()?;
        unsafe { result::memcpy_dtoh_async(dst, src.0, self.stream.cu_stream()) }.map_err(|e| driver("download", e))?;
        self.stream.synchronize().map_err(|e| driver("download", e))
    }

    unsafe fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        unsafe { result::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver("copy", e))
    }

    unsafe fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        unsafe { result::memset_d8_async(dst.0, byte, bytes, self.stream.cu_stream()) }.map_err(|e| driver("memset", e))
    }

    fn opt_in_shared(&self, kernel: &str, bytes: usize) -> Result<()> {
        self.function(kernel)?
            .set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
            .map_err(|e| driver(&format!("{kernel} shared-memory opt-in"), e))
    }

    unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &mut Args<'_>) -> Result<()> {
        let f = self.function(kernel)?;
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                cfg.grid,
                cfg.block,
                cfg.shared_mem_bytes,
                self.stream.cu_stream(),
                &mut args.ptrs,
            )
        }
        .map_err(|e| driver(&format!("launch of {kernel}"), e))
    }

    unsafe fn matmul(&self, op: &Matmul) -> Result<()> {
        self.bind()?;
        unsafe { self.blas.matmul(&self.stream, op) }
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver("synchronize", e))
    }
}
