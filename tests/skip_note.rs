//! libtest counts a test that returns early because what it needs is absent (no GPU and no
//! emulator, no browser) as passed: `test result: ok. 46 passed` would hide that 46 did not run.
//! [`record`] counts each skip, and when the test binary exits — after libtest's summary line —
//! one note says how many of the "passed" did not run, and why. Shared by gpu_common.rs and
//! browser_common.rs, whose `skip` calls it.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Mutex, Once};

/// The reasons of this binary's skipped tests, one entry per skip.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

extern "C" {
    /// The C library's `atexit` (std links it): runs `callback` when the process exits, which
    /// libtest does after printing its summary.
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

/// The note printed at exit, after libtest's summary (`None` when nothing was skipped).
pub fn note(reasons: &[String]) -> Option<String> {
    if reasons.is_empty() {
        return None;
    }
    let mut distinct = reasons.to_vec();
    distinct.sort();
    distinct.dedup();
    Some(format!(
        "note: {} of the tests counted as passed above did not run, they were skipped ({})",
        reasons.len(),
        distinct.join("; ")
    ))
}

/// Counts one skipped test, for the note printed when the binary exits.
pub fn record(reason: &str) {
    static REGISTER: Once = Once::new();
    // SAFETY: `report` is a plain `extern "C" fn` without arguments; at exit it only takes a
    // mutex no other thread holds by then (libtest has joined its test threads) and writes to
    // stderr.
    REGISTER.call_once(|| unsafe {
        atexit(report);
    });
    if let Ok(mut s) = SKIPPED.lock() {
        s.push(reason.to_string());
    }
}

extern "C" fn report() {
    let reasons = SKIPPED.lock().map(|s| s.clone()).unwrap_or_default();
    if let Some(note) = note(&reasons) {
        let _ = writeln!(std::io::stderr(), "{note}");
    }
}
