//! rehearse-core: Rehearse's domain types and pure logic.
//!
//! Everything here is a function of its inputs: no files, no processes, no network, no clock
//! (callers pass times in). That keeps the rules that decide a verdict exhaustively testable.
//!
//! Layout:
//! - [`backupset`]: choosing one recovery point from a backup set (latest / random, within).
//! - [`placement`]: which worker runs which pending job (region, labels, slots, spread), pure.
//! - [`plan`]: the plan file (TOML) — parsing, validation, unknown keys refused by name.
//! - [`expect`]: check expectations (`>= 1000`, `= 'ok'`) and their evaluation.
//! - [`fleet`]: workers, assignments with fencing tokens, reports, lease expiry (state machine).
//! - [`format`]: recognising a PostgreSQL dump's format (and the server version) from its first bytes.
//! - [`drill`]: the drill file, and the leader's pure decisions: fire, skip or miss a tick, a run's
//!   outcome, drift against the last passed run, the drill's status.
//! - [`drills`]: drills and their runs in the replicated state; a run follows its jobs.
//! - [`history`]: what leaves the state as it is made (ended runs, forgotten jobs' summaries),
//!   for the coordinator's history tables.
//! - [`schedule`]: drill schedules — cron patterns in an IANA zone (compiled-in tz database), DST
//!   gaps and repeated hours, ticks in a span, deterministic jitter.
//! - [`script`]: the line filter a plain SQL dump passes through on its way to `psql`.
//! - [`install`]: choosing a PostgreSQL installation for a dump's major version.
//! - [`limits`]: the plan's `[sandbox]` section (image, memory, cpus, pids, data store), sizes.
//! - [`manifest`]: a pg_dump directory checked against its `<dir>.blake3` b3sum manifest.
//! - [`mysqldump`]: the line filter that maps MySQL 8 dump constructs (0900 collations, GTID
//!   state, 8.0-only versioned comments) to what a MariaDB sandbox takes, and lists each mapping.
//! - [`mysqlxml`]: reading the `mariadb --xml` client's result sets (NULL told from 'NULL').
//! - [`jobs`]: the coordinator's replicated state machine (jobs and their lifecycle), pure.
//! - [`codec`]: the versioned encoding of commands in the log; a node never reads past its version.
//! - [`report`]: the verification report, its phases, and the verdict rules (passed, failed,
//!   error = could not verify).
//! - [`fault`]: whether a tool's error names the sandbox (missing extension or locale, full disk,
//!   memory, refused credentials) rather than the backup: `error`, never `failed`.
//! - [`render`]: the human and JUnit renderings of a report (JSON is serde).
//! - [`untar`]: which entries of a hostile tar archive may be written, and where (the `files`
//!   engine).
//!
//! Must not depend on: tokio, tonic, storage engines, or any other crate of this workspace.

pub mod backupset;
pub mod chart;
pub mod codec;
pub mod digest;
pub mod drill;
pub mod drills;
pub mod evidence;
pub mod exercise;
pub mod exercises;
pub mod expect;
pub mod fault;
pub mod fleet;
pub mod format;
pub mod history;
pub mod install;
pub mod jobs;
pub mod limits;
pub mod manifest;
pub mod mariabackup;
pub mod mysqldump;
pub mod mysqlxml;
pub mod notify;
pub mod placement;
pub mod plan;
pub mod quorum;
pub mod render;
pub mod report;
pub mod schedule;
pub mod script;
pub mod tokens;
pub mod trace;
pub mod untar;
pub mod wal;
