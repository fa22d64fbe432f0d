//! A process-wide request to stop generating, set from a signal handler (the `icet` binary
//! registers SIGINT and SIGTERM) and checked by the scheduler before every step: a run stopped
//! this way drops the sequences in flight (nothing partial is ever handed out) and returns
//! [`crate::Error::Interrupted`], so its caller can keep what is finished and say how to resume.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

static FLAG: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The flag itself, for a signal handler to set (`signal_hook::flag::register`).
pub fn flag() -> Arc<AtomicBool> {
    FLAG.clone()
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    FLAG.load(Ordering::Relaxed)
}

/// Asks every running generation to stop at its next step (what the signal handler does).
pub fn request() {
    FLAG.store(true, Ordering::Relaxed);
}
