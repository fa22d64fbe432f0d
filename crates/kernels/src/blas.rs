//! GEMMs through cuBLASLt: `out = x · wᵀ (+ bias)` with `w` in nn.Linear's `[out, in]` layout,
//! inputs and output in the buffers' dtype, f32 accumulation (`CUBLAS_COMPUTE_32F`: no TF32, so
//! f32 stays within the CPU reference's tolerance). The bias is fused as cuBLASLt's BIAS
//! epilogue. cuBLASLt's GELU epilogue is the tanh approximation, which neither CLIP's quick_gelu
//! nor transformers' erf `gelu` is, so activations stay separate kernels.
//!
//! Row-major trick: a row-major `[m, n]` matrix is a column-major `[n, m]` one, so
//! `outᵀ (n×m) = w (n×k, stored as column-major k×n, transposed) · xᵀ (column-major k×m)`.
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::gpu::{err, DType, Result};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    bias: bool,
}

pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    workspace_size: usize,
    algos: Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle is used only under the single stream's ordering; cuBLASLt handles may be
// shared between threads.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn cuda_type(d: DType) -> sys::cudaDataType {
    match d {
        DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
    }
}

fn blas_err(op: &str, e: lt::CublasError) -> crate::KernelError {
    err(format!("cuBLASLt {op} failed: {e:?}"))
}

/// Descriptors destroyed on drop.
struct Descs {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
}

impl Drop for Descs {
    fn drop(&mut self) {
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let handle = lt::create_handle().map_err(|e| blas_err("handle creation", e))?;
        // NVIDIA's recommendation: 32 MiB on Hopper, 4 MiB before.
        let workspace_size = 32 << 20;
        let workspace = unsafe { stream.alloc::<u8>(workspace_size) }
            .map_err(|e| err(format!("cuBLASLt workspace allocation failed: {e:?}")))?;
        Ok(Self { handle, workspace, workspace_size, algos: Mutex::new(HashMap::new()) })
    }

    /// `out[m×n] = x[m×k] · w[n×k]ᵀ (+ bias[n])`, all of `dtype`, given by device address.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(
        &self,
        stream: &CudaStream,
        dtype: DType,
        out: u64,
        x: u64,
        w: u64,
        bias: Option<u64>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let t = cuda_type(dtype);
        let descs = {
            let desc =
                lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F)
                    .map_err(|e| blas_err("descriptor", e))?;
            let a = lt::create_matrix_layout(t, k as u64, n as u64, k as i64).map_err(|e| blas_err("layout", e))?;
            let b = lt::create_matrix_layout(t, k as u64, m as u64, k as i64).map_err(|e| blas_err("layout", e))?;
            let c = lt::create_matrix_layout(t, n as u64, m as u64, n as i64).map_err(|e| blas_err("layout", e))?;
            Descs { desc, layouts: [a, b, c] }
        };
        let set = |attr: sys::cublasLtMatmulDescAttributes_t, value: *const c_void, size: usize| unsafe {
            lt::set_matmul_desc_attribute(descs.desc, attr, value, size)
                .map_err(|e| blas_err("descriptor attribute", e))
        };
        // cuBLASLt reads TRANSA/TRANSB as a 32-bit cublasOperation_t: 1 = transposed, 0 = not.
        let (trans_a, trans_b) = (1i32, 0i32);
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &trans_a as *const _ as *const c_void,
            size_of::<i32>(),
        )?;
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &trans_b as *const _ as *const c_void,
            size_of::<i32>(),
        )?;
        if let Some(b) = bias.as_ref() {
            let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const _ as *const c_void,
                size_of::<sys::cublasLtEpilogue_t>(),
            )?;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                b as *const u64 as *const c_void,
                size_of::<u64>(),
            )?;
        }
        let key = Key { dtype, m, n, k, bias: bias.is_some() };
        let cached = self.algos.lock().unwrap().get(&key).copied();
        let algo = match cached {
            Some(a) => a,
            None => {
                let a = unsafe {
                    let pref = lt::create_matmul_pref().map_err(|e| blas_err("preference", e))?;
                    let size = self.workspace_size;
                    let r = lt::set_matmul_pref_attribute(
                        pref,
                        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                        &size as *const usize as *const c_void,
                        size_of::<usize>(),
                    )
                    .and_then(|_| {
                        lt::get_matmul_algo_heuristic(
                            self.handle,
                            descs.desc,
                            descs.layouts[0],
                            descs.layouts[1],
                            descs.layouts[2],
                            descs.layouts[2],
                            pref,
                        )
                    });
                    let _ = lt::destroy_matmul_pref(pref);
                    r.map_err(|e| blas_err(&format!("algorithm search for {m}x{k} · {k}x{n} ({dtype})"), e))?.algo
                };
                self.algos.lock().unwrap().insert(key, a);
                a
            }
        };
        let (ws, _sync) = self.workspace.device_ptr(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        unsafe {
            lt::matmul(
                self.handle,
                descs.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                descs.layouts[0],
                x as *const c_void,
                descs.layouts[1],
                out as *const c_void,
                descs.layouts[2],
                out as *mut c_void,
                descs.layouts[2],
                &algo,
                ws as *mut c_void,
                self.workspace_size,
                stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(|e| blas_err(&format!("matmul {m}x{k} · {k}x{n} ({dtype})"), e))
        }
    }
}
