//! Which backend a command runs on (`--device`, `--dtype`). Commands match on the choice once,
//! with [`with_backend!`], and run generic engine code on the concrete backend.
use anyhow::{bail, Result};
use clap::ValueEnum;
use icet_models::backend::cpu::Cpu;
use icet_models::backend::cuda::{Cuda, CudaDevice, DType};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// CUDA when a GPU and the kernels are present, else CPU
    Auto,
    /// The f32 reference backend
    Cpu,
    /// NVIDIA GPU
    Cuda,
    /// The CUDA backend on an emulated GPU: the same kernels run on the CPU (for testing; slow)
    CudaEmu,
}

/// Storage type of tensors on the GPU (kernels compute in f32 and GEMMs accumulate in f32 either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// 32-bit floats: the reference precision (the CPU backend's only one)
    F32,
    /// bfloat16: half the memory and tensor-core speed
    Bf16,
    /// float16: as bf16, with more mantissa and less range
    F16,
}

impl DtypeArg {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// The backend `--device` chose.
pub enum SelectedBackend {
    Cpu(Cpu),
    Cuda(Cuda),
}

/// The backend for `device` storing `dtype`. `auto` takes the GPU when one is usable and says
/// which device it chose, once.
pub fn select(device: Device, dtype: DtypeArg) -> Result<SelectedBackend> {
    let dtype = dtype.dtype();
    match device {
        Device::Cpu => {
            if dtype != DType::F32 {
                bail!("--dtype {dtype} needs --device cuda (the CPU backend is the f32 reference)");
            }
            Ok(SelectedBackend::Cpu(Cpu))
        }
        Device::Cuda => match Cuda::new(dtype) {
            Ok(cuda) => Ok(SelectedBackend::Cuda(cuda)),
            Err(e) => bail!("--device cuda: {e}"),
        },
        Device::CudaEmu => match Cuda::open(CudaDevice::Emulator, dtype) {
            Ok(cuda) => {
                say_once(format!("icet: using the {} ({dtype})", cuda.describe()));
                Ok(SelectedBackend::Cuda(cuda))
            }
            Err(e) => bail!("--device cuda-emu: {e}"),
        },
        Device::Auto => match Cuda::new(dtype) {
            Ok(cuda) => {
                say_once(format!("icet: using CUDA on {} ({dtype})", cuda.describe()));
                Ok(SelectedBackend::Cuda(cuda))
            }
            Err(e) => {
                let note = if dtype == DType::F32 { String::new() } else { format!("; --dtype {dtype} ignored") };
                say_once(format!("icet: using the CPU backend (no CUDA: {e}){note}"));
                Ok(SelectedBackend::Cpu(Cpu))
            }
        },
    }
}

/// Prints `msg` on stderr the first time only (a command may ask for the backend more than once).
fn say_once(msg: String) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("{msg}"));
}

/// `with_backend!(selected, |b| expr)`: evaluates `expr` with `b` bound to the concrete backend.
#[macro_export]
macro_rules! with_backend {
    ($selected:expr, |$b:ident| $body:expr) => {
        match $selected {
            $crate::device::SelectedBackend::Cpu($b) => $body,
            $crate::device::SelectedBackend::Cuda($b) => $body,
        }
    };
}
