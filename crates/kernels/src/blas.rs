//! GEMMs: `out = x · wᵀ (+ bias)` with `w` in nn.Linear's `[out, in]` layout, inputs and output in
//! the buffers' dtype, f32 accumulation (`CUBLAS_COMPUTE_32F`: no TF32, so f32 stays within the CPU
//! reference's tolerance). The bias is fused as cuBLASLt's BIAS epilogue. cuBLASLt's GELU epilogue
//! is the tanh approximation, which neither CLIP's quick_gelu nor transformers' erf `gelu` is, so
//! activations stay separate kernels.
//!
//! [`linear_op`] maps the row-major request to one column-major cuBLASLt operation ([`Matmul`]);
//! the real device runs it through cuBLASLt ([`Cublas`]), the emulated device through
//! [`cpu_matmul`], a plain implementation of the same operation — so the mapping (transposes,
//! leading dimensions, which side the bias is on) is checked by the emulated tests too.
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

use crate::device::{DevPtr, Matmul, Operand};
use crate::gpu::{err, DType, Result};

/// The cuBLASLt operation for row-major `out[m×n] = x[m×k] · w[n×k]ᵀ (+ bias[n])`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_op(
    dtype: DType,
    out: DevPtr,
    x: DevPtr,
    w: DevPtr,
    bias: Option<DevPtr>,
    m: usize,
    n: usize,
    k: usize,
) -> Matmul {
    let d = Operand { ptr: out, rows: n, cols: m, ld: n };
    Matmul {
        dtype,
        trans_a: true,
        trans_b: false,
        m: n,
        n: m,
        k,
        a: Operand { ptr: w, rows: k, cols: n, ld: k },
        b: Operand { ptr: x, rows: k, cols: m, ld: k },
        c: d,
        d,
        bias,
        alpha: 1.0,
        beta: 0.0,
    }
}

/// What is wrong with `op` as cuBLASLt would see it (`CUBLAS_STATUS_INVALID_VALUE`), if anything.
pub(crate) fn check_op(op: &Matmul) -> Result<()> {
    let want = |o: &Operand, rows: usize, cols: usize, what: &str| -> Result<()> {
        if (o.rows, o.cols) != (rows, cols) {
            return Err(err(format!(
                "cuBLASLt matmul: {what} is laid out {}x{}, the operation needs {rows}x{cols}",
                o.rows, o.cols
            )));
        }
        if o.ld < o.rows.max(1) {
            return Err(err(format!("cuBLASLt matmul: {what}'s leading dimension {} < its {} rows", o.ld, o.rows)));
        }
        Ok(())
    };
    let (ar, ac) = if op.trans_a { (op.k, op.m) } else { (op.m, op.k) };
    let (br, bc) = if op.trans_b { (op.n, op.k) } else { (op.k, op.n) };
    want(&op.a, ar, ac, "A")?;
    want(&op.b, br, bc, "B")?;
    want(&op.c, op.m, op.n, "C")?;
    want(&op.d, op.m, op.n, "D")
}

/// Bytes an operand's layout spans: `ld · (cols - 1) + rows` elements.
pub(crate) fn extent(o: &Operand, dtype: DType) -> usize {
    if o.rows == 0 || o.cols == 0 {
        0
    } else {
        (o.ld * (o.cols - 1) + o.rows) * dtype.size()
    }
}

/// `op` computed on the host, on memory the caller has checked: every element of `op(A)` and
/// `op(B)` widened to f32, dot products in f32 (eight interleaved partial sums), then
/// `alpha · acc + beta · C + bias` in f32 and one rounding to the storage type — what
/// `CUBLAS_COMPUTE_32F` computes, up to the order of the additions.
///
/// # Safety
/// Every operand's extent must be readable (D's writable) host memory.
pub(crate) unsafe fn cpu_matmul(op: &Matmul, threads: usize) {
    let (m, n, k) = (op.m, op.n, op.k);
    let load = |o: &Operand, count: usize| -> Vec<f32> {
        let p = o.ptr.0 as *const u8;
        (0..count).map(|i| unsafe { read(op.dtype, p, i) }).collect()
    };
    let span = |o: &Operand| if o.rows == 0 || o.cols == 0 { 0 } else { o.ld * (o.cols - 1) + o.rows };
    // op(A) as m rows of k, op(B)ᵀ as n rows of k: both dot-product operands contiguous.
    let a_raw = load(&op.a, span(&op.a));
    let b_raw = load(&op.b, span(&op.b));
    let mut a = vec![0f32; m * k];
    for i in 0..m {
        for p in 0..k {
            a[i * k + p] = if op.trans_a { a_raw[i * op.a.ld + p] } else { a_raw[p * op.a.ld + i] };
        }
    }
    let mut bt = vec![0f32; n * k];
    for j in 0..n {
        for p in 0..k {
            bt[j * k + p] = if op.trans_b { b_raw[p * op.b.ld + j] } else { b_raw[j * op.b.ld + p] };
        }
    }
    let bias = op.bias.map(|b| {
        let p = b.0 as *const u8;
        (0..m).map(|i| unsafe { read(op.dtype, p, i) }).collect::<Vec<f32>>()
    });
    let c = if op.beta != 0.0 { load(&op.c, span(&op.c)) } else { Vec::new() };
    // Column j of D (n columns split over the threads); each writes only its own columns.
    let dp = op.d.ptr.0 as usize;
    let column = |j: usize| {
        for i in 0..m {
            let mut acc = dot(&a[i * k..(i + 1) * k], &bt[j * k..(j + 1) * k]) * op.alpha;
            if op.beta != 0.0 {
                acc += op.beta * c[j * op.c.ld + i];
            }
            if let Some(b) = &bias {
                acc += b[i];
            }
            unsafe { write(op.dtype, dp as *mut u8, j * op.d.ld + i, acc) };
        }
    };
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 || m * n * k < 1 << 16 {
        (0..n).for_each(column);
    } else {
        std::thread::scope(|s| {
            for t in 0..threads {
                let column = &column;
                s.spawn(move || (t..n).step_by(threads).for_each(column));
            }
        });
    }
}

fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

unsafe fn read(d: DType, p: *const u8, i: usize) -> f32 {
    unsafe {
        match d {
            DType::F32 => (p as *const f32).add(i).read_unaligned(),
            DType::BF16 => half::bf16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32(),
            DType::F16 => half::f16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32(),
        }
    }
}

unsafe fn write(d: DType, p: *mut u8, i: usize, v: f32) {
    unsafe {
        match d {
            DType::F32 => (p as *mut f32).add(i).write_unaligned(v),
            DType::BF16 => (p as *mut u16).add(i).write_unaligned(half::bf16::from_f32(v).to_bits()),
            DType::F16 => (p as *mut u16).add(i).write_unaligned(half::f16::from_f32(v).to_bits()),
        }
    }
}

// ---- cuBLASLt (the real device) --------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dtype: DType,
    trans: (bool, bool),
    mnk: (usize, usize, usize),
    lds: (usize, usize, usize),
    bias: bool,
}

pub(crate) struct Cublas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    workspace_size: usize,
    algos: Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle is used only under the single stream's ordering; cuBLASLt handles may be
// shared between threads.
unsafe impl Send for Cublas {}
unsafe impl Sync for Cublas {}

impl Drop for Cublas {
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

impl Cublas {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let handle = lt::create_handle().map_err(|e| blas_err("handle creation", e))?;
        // NVIDIA's recommendation: 32 MiB on Hopper, 4 MiB before.
        let workspace_size = 32 << 20;
        let workspace = unsafe { stream.alloc::<u8>(workspace_size) }
            .map_err(|e| err(format!("cuBLASLt workspace allocation failed: {e:?}")))?;
        Ok(Self { handle, workspace, workspace_size, algos: Mutex::new(HashMap::new()) })
    }

    /// Runs `op` on `stream`.
    ///
    /// # Safety
    /// The operands must be device memory of their described extent.
    pub(crate) unsafe fn matmul(&self, stream: &CudaStream, op: &Matmul) -> Result<()> {
        let t = cuda_type(op.dtype);
        let layout = |o: &Operand| {
            lt::create_matrix_layout(t, o.rows as u64, o.cols as u64, o.ld as i64).map_err(|e| blas_err("layout", e))
        };
        let descs = {
            let desc =
                lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F)
                    .map_err(|e| blas_err("descriptor", e))?;
            // C and D share one layout (the only case the backend asks for).
            Descs { desc, layouts: [layout(&op.a)?, layout(&op.b)?, layout(&op.d)?] }
        };
        if op.c != op.d {
            return Err(err("cuBLASLt matmul: C and D must be the same matrix here"));
        }
        let set = |attr: sys::cublasLtMatmulDescAttributes_t, value: *const c_void, size: usize| unsafe {
            lt::set_matmul_desc_attribute(descs.desc, attr, value, size)
                .map_err(|e| blas_err("descriptor attribute", e))
        };
        // cuBLASLt reads TRANSA/TRANSB as a 32-bit cublasOperation_t: 1 = transposed, 0 = not.
        let (trans_a, trans_b) = (op.trans_a as i32, op.trans_b as i32);
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
        let bias_ptr = op.bias.map(|b| b.0);
        if let Some(b) = bias_ptr.as_ref() {
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
        let (m, n, k, dtype) = (op.m, op.n, op.k, op.dtype);
        let key = Key {
            dtype,
            trans: (op.trans_a, op.trans_b),
            mnk: (m, n, k),
            lds: (op.a.ld, op.b.ld, op.d.ld),
            bias: op.bias.is_some(),
        };
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
        let (alpha, beta) = (op.alpha, op.beta);
        unsafe {
            lt::matmul(
                self.handle,
                descs.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                op.a.ptr.0 as *const c_void,
                descs.layouts[0],
                op.b.ptr.0 as *const c_void,
                descs.layouts[1],
                op.c.ptr.0 as *const c_void,
                descs.layouts[2],
                op.d.ptr.0 as *mut c_void,
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
