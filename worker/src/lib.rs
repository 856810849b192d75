//! rehearse-worker: turns a plan into a verdict.
//!
//! It runs the whole verification in-process (the embedded `rehearse verify`), and, as the agent
//! behind `rehearse worker`, takes jobs from the coordinator and reports their verdicts.
//!
//! Layout:
//! - [`agent`]: the fleet agent — registration, heartbeats, the assignment stream, attempts.
//! - [`pipeline`]: one verification, phase by phase, with the RTO clock, timeout and interrupt.
//! - [`artifact`]: where artifacts come from, one source per URL scheme (local paths, `s3://`,
//!   `http(s)://`), download + hash in one pass, backup sets, sidecars, copies; blake3 checksums.
//! - [`sandbox`]: the process sandbox runtime — private dirs, unprivileged user, no network, reaper.
//! - [`runtime`]: one verification's sandbox in either runtime (process, or a docker container
//!   through bollard): the server's lifecycle, tools run inside it, teardown, the container reaper.
//! - [`engines`]: one module per engine behind the `Engine` / `Session` traits — `postgres`
//!   (installations, disposable cluster, restore, inspection), `mysql` (a throwaway MariaDB, the
//!   client in sandbox mode, mariadb-check), `files` (a tar tree extracted entry by entry through
//!   `rehearse_core::untar`); what they share (streams, inspection results) beside them.
//! - [`sample`]: the demo's sample database, dumped with the real pg_dump (also the test fixture).
//! - [`progress`]: the bytes the running phase moved, for a progress bar.
//! - [`tail`]: bounded capture of a tool's stderr for failure reasons.
//! - [`trace`]: an attempt's spans joined to the job's trace (the assignment's `traceparent`).
//!
//! Pure decisions (plan, formats, verdict rules, the script filter) live in `rehearse_core`.
//! Must not depend on: rehearse-coordinator (it speaks to it through `rehearse_proto`'s client).

pub mod agent;
pub mod artifact;
pub mod engines;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod runtime;
pub mod sample;
pub mod sandbox;
pub mod tail;
pub mod trace;

pub use pipeline::{Verifier, VerifyError, VerifyOptions};

/// 32 random hex digits, for keys a dump must not be able to guess (psql's `\restrict` key,
/// dollar-quote tags). Seeded by the OS through std's `RandomState`, mixed with time and pid.
pub fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = blake3::Hasher::new();
    for _ in 0..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        hasher.update(&h.finish().to_le_bytes());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.update(&nanos.to_le_bytes());
    hasher.finalize().to_hex()[..32].to_owned()
}
