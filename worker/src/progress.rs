//! Live progress of one verification, for whoever draws it (the CLI's progress bar on a
//! terminal): the bytes the running phase has moved (fetch, checksum), or the archive entries
//! it has restored (a pg_dump archive's TOC entries), of how many when known. Phases announce
//! themselves on the verification's phase channel; the meter is reset as each begins.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Meter {
    done: AtomicU64,
    total: AtomicU64,
    /// Counting archive entries, not bytes.
    items: AtomicBool,
    /// What the phase before moved (kept at the reset): done, total, items.
    previous: std::sync::Mutex<(u64, u64, bool)>,
    /// Someone draws it: worth extra work (pg_restore's TOC listed and its verbose output read).
    watched: AtomicBool,
}

/// What a meter shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub done: u64,
    /// 0 when not known.
    pub total: u64,
    /// Archive entries rather than bytes.
    pub items: bool,
}

impl Meter {
    /// A phase begins: nothing done, total not known (0) yet.
    /// A meter someone draws (see [`Meter::watched`]).
    pub fn drawn() -> Meter {
        let m = Meter::default();
        m.watched.store(true, Ordering::Relaxed);
        m
    }

    /// Whether someone draws this meter.
    pub fn watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        let done = self.done.swap(0, Ordering::Relaxed);
        let total = self.total.swap(0, Ordering::Relaxed);
        let items = self.items.swap(false, Ordering::Relaxed);
        if let Ok(mut p) = self.previous.lock() {
            *p = (done, total, items);
        }
    }

    /// The running phase will restore `total` archive entries.
    pub fn expect_items(&self, total: u64) {
        self.items.store(true, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// The running phase will move `total` bytes.
    pub fn expect(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// What the phase before the running one moved.
    pub fn previous(&self) -> Reading {
        let (done, total, items) = self.previous.lock().map_or((0, 0, false), |p| *p);
        Reading { done, total, items }
    }

    pub fn read(&self) -> Reading {
        Reading {
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
        }
    }
}
