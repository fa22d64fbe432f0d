//! CUDA kernels for the ICET engine: the fatbins built from `kernels-cu/` by the workspace's
//! top-level `build.rs`, typed Rust launchers for every kernel ([`Gpu`]'s methods), GEMMs through
//! cuBLASLt, a CPU twin of every kernel ([`twin`]) that the GPU tests compare against, and an
//! emulated device ([`Gpu::open_emulated`]) on which the same launchers run the same kernels on
//! the CPU — so the kernels execute in CI, where there is no GPU.
//!
//! Nothing here touches CUDA until [`Gpu::open`] is called, and that checks for the kernels, the
//! driver library and cuBLASLt first and returns the reason when one is missing — so this crate
//! builds and its users run on machines without CUDA.
mod blas;
mod device;
mod gpu;
mod launch;
pub mod twin;

pub use device::emu::emulator_build;
pub use gpu::{DType, DevBuf, EmuOptions, Gpu, KernelError, Schedule};
pub use launch::{flash_smem_bytes, Act, AttnRow, RelRow, RelTables, SeqDesc, FLASH_HEAD_DIMS};

mod built {
    include!(concat!(env!("OUT_DIR"), "/kernel_modules.rs"));
}

/// `(file stem, fatbin)` for every `kernels-cu/*.cu`; empty when the build found no nvcc.
pub fn modules() -> &'static [(&'static str, &'static [u8])] {
    built::MODULES
}

/// Whether this build contains the CUDA kernels (nvcc was found at build time).
pub fn kernels_built() -> bool {
    !built::MODULES.is_empty()
}

/// The nvcc the kernels were built with, if any.
pub fn built_with_nvcc() -> Option<&'static str> {
    built::NVCC
}
