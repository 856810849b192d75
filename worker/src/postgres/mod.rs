//! The `postgres` engine: PostgreSQL dumps restored into a throwaway cluster.
//!
//! Layout:
//! - [`binaries`]: finding PostgreSQL installations and their versions.
//! - [`cluster`]: a disposable server — template data dir, start, readiness, stop.
//! - [`restore`]: pg_restore / psql, fed in one streaming pass, with the tool's stderr tail on failure.
//! - [`inspect`]: the plan's checks, freshness (RPO), per-table row counts, pg_amcheck.

pub mod binaries;
pub mod cluster;
pub mod inspect;
pub mod restore;

/// The bootstrap superuser of every sandbox cluster.
pub const SUPERUSER: &str = "postgres";
/// The database archives are restored into (plain dumps may `\connect` elsewhere).
pub const TARGET_DB: &str = "restored";
