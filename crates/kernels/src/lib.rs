//! CUDA kernels for the ICET engine. The fatbin is built from `kernels-cu/` by the
//! workspace's top-level `build.rs`; without nvcc it is empty and the CUDA backend says so.

/// The compiled kernels, or `None` when the build found no nvcc.
pub fn fatbin() -> Option<&'static [u8]> {
    let bytes: &'static [u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));
    (!bytes.is_empty()).then_some(bytes)
}
