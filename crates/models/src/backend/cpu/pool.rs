//! Recycled tensor storage. A transformer asks for the same few buffer sizes at every layer and
//! every step, and a fresh `Vec` of a few MB comes from `mmap`: the kernel then faults in and
//! zeroes every page, once per op. Instead a dropped [`Buffer`] (a tensor's storage) hands its `Vec` back
//! here and the next tensor of the same length takes it, contents as they were: every op writes
//! all of its output before reading it. Builds with debug assertions (every `cargo test`) fill
//! each buffer handed out with NaN, so an op or a model that reads an unwritten element fails its
//! conformance or parity test instead of reading a stale value.
//!
//! Buffers are matched by exact length (the shapes repeat exactly), kept most recent first, and
//! the pool holds at most [`POOL_BYTES`]: past that the least recently returned buffers are freed,
//! so a stage with other shapes (vision, then text) does not keep the previous stage's memory.
use std::collections::VecDeque;
use std::sync::Mutex;

/// Upper bound of the memory parked in the pool.
pub const POOL_BYTES: usize = 512 << 20;

/// Buffers smaller than this are left to the allocator, which recycles them well itself.
const MIN_POOLED: usize = 4096;

/// A tensor's storage: a `Vec<f32>` (it derefs to one) that returns to the pool when dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buffer(Vec<f32>);

impl Buffer {
    /// The values, taken out of the pool's reach.
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.0)
    }
}

impl From<Vec<f32>> for Buffer {
    fn from(v: Vec<f32>) -> Self {
        Self(v)
    }
}

impl std::ops::Deref for Buffer {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

struct Pool {
    /// Most recently returned last.
    free: VecDeque<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: VecDeque::new(), bytes: 0 });

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock leaves the pool consistent (plain pushes and pops).
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of `len` values whose contents are unspecified (initialised, but arbitrary; NaN in
/// builds with debug assertions).
pub fn take(len: usize) -> Vec<f32> {
    let mut v = recycled(len).unwrap_or_else(|| vec![0.0; len]);
    if cfg!(debug_assertions) {
        v.fill(f32::NAN);
    }
    v
}

fn recycled(len: usize) -> Option<Vec<f32>> {
    if len < MIN_POOLED {
        return None;
    }
    let mut pool = lock();
    let i = pool.free.iter().rposition(|v| v.len() == len)?;
    let v = pool.free.remove(i).expect("index found");
    pool.bytes -= len * 4;
    Some(v)
}

/// A copy of `src` in a recycled buffer.
pub fn take_copy(src: &[f32]) -> Vec<f32> {
    match recycled(src.len()) {
        Some(mut v) => {
            v.copy_from_slice(src);
            v
        }
        None => src.to_vec(),
    }
}

/// Returns `v` to the pool (dropping the oldest buffers past [`POOL_BYTES`]).
pub fn give(v: Vec<f32>) {
    let len = v.len();
    if len < MIN_POOLED || len * 4 > POOL_BYTES {
        return;
    }
    let mut evicted = Vec::new();
    {
        let mut pool = lock();
        pool.bytes += len * 4;
        pool.free.push_back(v);
        while pool.bytes > POOL_BYTES {
            let old = pool.free.pop_front().expect("bytes > 0 means buffers");
            pool.bytes -= old.len() * 4;
            evicted.push(old);
        }
    }
    // Freed outside the lock: unmapping large buffers takes a while.
    drop(evicted);
}

/// Bytes parked in the pool now.
pub fn parked_bytes() -> usize {
    lock().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_by_length_and_the_pool_stays_bounded() {
        // A length no other test uses, so parallel tests do not take these buffers.
        let len = 12_345;
        let mut a = take(len);
        assert!(a.iter().all(|v| v.is_nan()), "debug builds hand out NaN");
        a[0] = 7.0;
        let ptr = a.as_ptr();
        give(a);
        let b = take(len);
        assert_eq!(b.as_ptr(), ptr, "the returned buffer is reused");
        assert!(b[0].is_nan(), "and poisoned again");
        give(b);
        assert!(parked_bytes() <= POOL_BYTES);
        // Small buffers are left to the allocator.
        give(vec![1.0; 10]);
        assert_eq!(take_copy(&[1.0, 2.0]), vec![1.0, 2.0]);
    }
}
