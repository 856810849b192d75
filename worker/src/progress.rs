//! Live progress of one verification, for whoever draws it (the CLI's progress bar on a
//! terminal): the bytes the running phase has moved, of how many when known. Phases announce
//! themselves on the verification's phase channel; the meter is reset as each begins.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Meter {
    done: AtomicU64,
    total: AtomicU64,
    /// What the phase before moved (kept at the reset).
    previous: AtomicU64,
}

impl Meter {
    /// A phase begins: nothing done, total not known (0) yet.
    pub fn reset(&self) {
        self.previous
            .store(self.done.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
    }

    /// The running phase will move `total` bytes.
    pub fn expect(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The bytes the phase before the running one moved.
    pub fn previous(&self) -> u64 {
        self.previous.load(Ordering::Relaxed)
    }

    /// (done, total); total is 0 when not known.
    pub fn read(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}
