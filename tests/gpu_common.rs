//! Shared by the `gpu_*` tests: open the CUDA backend — on the GPU, or on the emulated device
//! where there is none — or report, visibly, why a test is skipped.
//!
//! Which device: `Cuda::for_tests` (`ICET_CUDA_DEVICE=gpu|emu|auto`, default `auto`: the GPU when
//! one is usable, else the emulated device, so `cargo test` on a machine without a GPU runs every
//! GPU test on the emulator). `ICET_REQUIRE_GPU=1` (what scripts/gpu-check.sh sets) insists on a
//! real GPU, so a GPU run can never pass on the emulator or by skipping. The emulator's schedule
//! and size come from `ICET_EMU_*` (`icet_kernels::EmuOptions::from_env`); CI runs the suite
//! under two schedules.
//!
//! libtest captures what `println!`/`eprintln!` print in a passing test, so a skip reported that
//! way would vanish from `cargo test`'s output. The skip line is instead written straight to the
//! process's stderr (`std::io::Write` on `stderr()` bypasses the capture): `SKIPPED <test>: <reason>`.
//! libtest still counts a skipped test as passed, so the binary also says, after its summary,
//! how many of its "passed" did not run (skip_note.rs).
#![allow(dead_code)]

use std::io::Write;

#[path = "skip_note.rs"]
mod skip_note;

use icet_models::backend::cuda::{Cuda, DType};

/// Reports that `test` is skipped because of `reason` — or fails it when a device was asked
/// for: `ICET_REQUIRE_GPU=1`, or `ICET_CUDA_DEVICE=gpu|emu` (CI sets `emu`, so that no GPU test
/// can pass there by skipping).
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("ICET_REQUIRE_GPU").is_some_and(|v| v != "0") {
        panic!("{test}: ICET_REQUIRE_GPU is set but CUDA is unavailable: {reason}");
    }
    if let Ok(d @ ("gpu" | "emu")) = std::env::var("ICET_CUDA_DEVICE").as_deref() {
        panic!("{test}: ICET_CUDA_DEVICE={d} but that device is unavailable: {reason}");
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED {test}: {reason}");
    skip_note::record(reason);
}

/// The CUDA backend storing `dtype`, or `None` after reporting the skip. The test is named by
/// its thread (libtest names each test's thread after it), else by `label`.
pub fn cuda(label: &str, dtype: DType) -> Option<Cuda> {
    match Cuda::for_tests(dtype) {
        Ok(c) => Some(c),
        Err(e) => {
            let thread = std::thread::current();
            let name = thread.name().filter(|n| *n != "main").unwrap_or(label);
            skip(name, &e);
            None
        }
    }
}

/// `let b = cuda_or_skip!("label", DType::BF16);` — the backend, or return from the test after
/// reporting the skip.
macro_rules! cuda_or_skip {
    ($label:expr, $dtype:expr) => {
        match $crate::gpu_common::cuda($label, $dtype) {
            Some(b) => b,
            None => return,
        }
    };
}

/// `full` on a GPU, `reduced` on the emulated device (where the full shape costs minutes of CPU;
/// each use says which shape it reduces).
pub fn on_gpu_else<T>(b: &Cuda, full: T, reduced: T) -> T {
    if b.is_emulated() {
        reduced
    } else {
        full
    }
}

/// Largest `|a - b| / max(1, |b|)`.
pub fn max_rel_err(actual: &[f32], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    actual.iter().zip(expected).map(|(&a, &e)| (a as f64 - e).abs() / e.abs().max(1.0)).fold(0.0, f64::max)
}

/// Asserts every output is finite (outputs are poisoned with NaN first, so an element a kernel
/// forgot to write fails here) and within `tol` of `expected`.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], tol: f64) {
    if let Some(i) = actual.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (never written, or overflowed)", actual[i]);
    }
    let err = max_rel_err(actual, expected);
    assert!(err <= tol, "{what}: max relative error {err:e} > {tol:e}");
}
