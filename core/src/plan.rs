//! The plan: what to verify and what "good" means.
//!
//! A plan arrives as TOML (a file, or later an API message). Parsing is two steps: serde reads the
//! raw shape with `deny_unknown_fields` — a typo such as `expct` must be an error naming the key,
//! never a silently disabled check — then [`Plan::from_raw`] validates values (durations, hashes,
//! expectations) and produces the typed [`Plan`] the pipeline uses.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::backupset::Pick;
use crate::expect::Expectation;
use crate::limits::{RawSandbox, SandboxSpec};
use crate::placement::Constraint;

/// The default for `timeout` when a plan gives none: long enough for a large restore, short
/// enough that a hung one is noticed the same day.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

/// A plan that was refused, with the reason a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan is not valid TOML: {0}")]
    Syntax(String),
    #[error(
        "{key}: {value:?} is not a duration ({reason}); write e.g. \"15m\", \"26h\", \"1h 30m\""
    )]
    Duration {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("artifact.blake3: expected 64 hex digits, got {0:?}")]
    Blake3(String),
    #[error("artifact.engine: unknown engine {0:?} (supported: postgres, mysql, files)")]
    Engine(String),
    #[error("artifact.url is empty")]
    EmptyUrl,
    #[error("check {name:?}: expect: {reason}")]
    Expect { name: String, reason: String },
    #[error("check {0:?}: sql is empty")]
    EmptySql(String),
    #[error("checks: the name {0:?} is used twice")]
    DuplicateCheck(String),
    #[error(
        "targets.rpo needs targets.freshness (the query that finds the newest data) or a [pitr] recovery"
    )]
    RpoWithoutFreshness,
    #[error("timeout must be longer than zero")]
    ZeroTimeout,
    #[error("max_attempts must be at least 1")]
    ZeroAttempts,
    #[error("placement: region and not_region are both {0:?}, so no worker can run it")]
    ContradictoryPlacement(String),
    #[error("artifact.pick: {0:?} is not a way to pick (latest, random, least_recently_tested)")]
    Pick(String),
    #[error("artifact.within needs artifact.pick: it limits which backups of a set are picked")]
    WithinWithoutPick,
    #[error("artifact.before needs artifact.pick: it limits which backups of a set are picked")]
    BeforeWithoutPick,
    #[error("artifact.before: {0}")]
    Before(String),
    #[error("artifact.copies: a copy's URL is empty")]
    EmptyCopy,
    #[error("sandbox.{key}: {reason}")]
    Sandbox { key: &'static str, reason: String },
    #[error("files.{key}: {reason}")]
    Files { key: &'static str, reason: String },
    #[error("{0}")]
    EngineMismatch(String),
    #[error("pitr.{key}: {reason}")]
    Pitr { key: &'static str, reason: String },
}

/// The database engine that knows how to restore and query an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    /// MySQL and MariaDB dumps (mysqldump, mariadb-dump), restored into MariaDB.
    Mysql,
    /// tar archives (optionally gzip/zstd) of file trees, extracted safely and checked.
    Files,
}

impl Engine {
    pub fn parse(name: &str) -> Result<Engine, PlanError> {
        match name {
            "postgres" | "postgresql" => Ok(Engine::Postgres),
            "mysql" | "mariadb" => Ok(Engine::Mysql),
            "files" | "tar" => Ok(Engine::Files),
            other => Err(PlanError::Engine(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Files => "files",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A blake3 digest, as 32 bytes; displayed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Blake3Digest(pub [u8; 32]);

impl Blake3Digest {
    pub fn parse_hex(s: &str) -> Option<Blake3Digest> {
        let s = s.trim();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Blake3Digest(out))
    }
}

impl fmt::Display for Blake3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Blake3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blake3Digest({self})")
    }
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: Option<String>,
    /// Whole-verification limit; exceeding it fails the verdict "timed out".
    pub timeout: Duration,
    pub artifact: ArtifactSpec,
    pub targets: Targets,
    /// The plan's own checks, run in order before the built-in ones.
    pub checks: Vec<Check>,
    pub builtin: Builtin,
    /// Where the job may run (coordinator placement; the embedded `verify` runs here).
    pub placement: Constraint,
    /// Deliveries to workers before the job fails with its attempt history.
    pub max_attempts: u32,
    /// Container image and limits (`[sandbox]`), for the docker runtime.
    pub sandbox: SandboxSpec,
    /// What a `files` artifact must contain (`[files]`).
    pub files: FilesSpec,
    /// Point-in-time recovery of a base backup from a WAL archive (`[pitr]`).
    pub pitr: Option<PitrSpec>,
    /// Recover as a standby and promote it on the clock (`[promote]`).
    pub promote: Option<PromoteSpec>,
    /// A query whose first column (every row, up to [`EXPORT_LIMIT`]) goes into the report's
    /// `exported`: what a DR exercise's consistency check compares with another step.
    pub export: Option<String>,
}

/// The most rows `export` copies into a report.
pub const EXPORT_LIMIT: usize = 10_000;

/// The `[pitr]` section: where the WAL archive is and how far to replay it.
#[derive(Debug, Clone, PartialEq)]
pub struct PitrSpec {
    /// A directory (path or `file://`) or an `s3://` prefix holding the archived segments.
    pub wal_archive: String,
    pub target: RecoveryTarget,
    /// The worker's source profile for an `s3://` archive (`None`: the artifact's profile).
    pub profile: Option<String>,
}

/// How far recovery replays the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// To the end of the archive.
    Latest,
    /// Up to this instant (ms since the epoch): the transactions that committed after it are
    /// not replayed.
    Time(i64),
    /// A random instant between the base backup's end and this long after it (or the
    /// archive's end, if sooner).
    RandomWithin(Duration),
}

impl RecoveryTarget {
    pub fn parse(text: &str) -> Result<RecoveryTarget, String> {
        let text = text.trim();
        if text == "latest" {
            return Ok(RecoveryTarget::Latest);
        }
        if let Some(span) = text.strip_prefix("random within ") {
            return humantime::parse_duration(span.trim())
                .map(RecoveryTarget::RandomWithin)
                .map_err(|e| format!("{span:?} is not a duration ({e})"));
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| RecoveryTarget::Time(t.timestamp_millis()))
            .map_err(|_| {
                format!(
                    "{text:?} is not a target: write \"latest\", an RFC 3339 time (\"2026-11-30T11:42:07Z\") or \"random within 24h\""
                )
            })
    }
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("latest"),
            RecoveryTarget::Time(ms) => f.write_str(&crate::report::utc_rfc3339(*ms)),
            RecoveryTarget::RandomWithin(d) => {
                write!(f, "random within {}", humantime::format_duration(*d))
            }
        }
    }
}

/// The `[promote]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromoteSpec {
    /// After promotion, commit a write and time it.
    pub canary: bool,
}

/// The `[files]` section: checks and limits for the `files` engine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FilesSpec {
    /// Relative paths that must exist after extraction.
    pub required: Vec<String>,
    /// Named sets of paths that must all exist, each reported as one check
    /// (`consistency NAME`): a DR exercise's consistency checks.
    pub consistency: Vec<(String, Vec<String>)>,
    /// A `b3sum`-format manifest inside the archive; every file it lists must match.
    pub manifest: Option<String>,
    pub limits: crate::untar::Limits,
}

/// The default for `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactSpec {
    /// `file:///path`, a plain path, or `s3://bucket/key`.
    pub url: String,
    pub engine: Engine,
    /// When set, a mismatch fails the verification in phase `checksum`.
    pub blake3: Option<Blake3Digest>,
    /// When set, `url` is a backup set (a directory or prefix) and one backup is picked from it.
    pub pick: Option<Pick>,
    /// Only backups modified this recently are picked from.
    pub within: Option<Duration>,
    /// Copies that must exist and hash the same as the artifact.
    pub copies: Vec<String>,
    /// The worker's named source profile for the plan's S3 URLs (`None`: its default).
    pub profile: Option<String>,
    /// With `pick = "random"`: the same seed picks the same backup (`None`: a new one per run).
    pub seed: Option<u64>,
    /// For a `mariadb-backup` full backup: its incrementals, applied in this order.
    pub incrementals: Vec<String>,
    /// With `pick = "least_recently_tested"`: when each backup (by URL) was last verified by a
    /// passed run. A drill's ticker fills it from the drill's record; a plan may give it too.
    pub tested: BTreeMap<String, i64>,
    /// With `pick`: only backups made before this instant (ms since the epoch).
    pub before_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    pub rto: Option<Duration>,
    pub rpo: Option<Duration>,
    /// A query returning the newest data timestamp; RPO = verification start − its result.
    pub freshness: Option<String>,
    /// Time from `pg_promote` to the promoted server (`[promote]`).
    pub promote: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub sql: String,
    pub expect: Expectation,
    /// The database it runs in (a cluster dump holds several); `None`: the dump's own.
    pub database: Option<String>,
}

/// Switches for the checks every verification runs unless told not to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    /// Exact row count of every table, reported (never fails the verdict on its own).
    pub row_counts: bool,
    /// The engine's integrity checker (`pg_amcheck` for postgres) where available.
    pub integrity: bool,
}

impl Default for Builtin {
    fn default() -> Self {
        Builtin {
            row_counts: true,
            integrity: true,
        }
    }
}

/// The plan file as written. Field names here are the file format: keep them stable.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub artifact: RawArtifact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<RawTargets>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<RawCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<RawBuiltin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<RawPlacement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<RawSandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<RawFiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr: Option<RawPitr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<RawPromote>,
    /// A query whose first column, every row, goes into the report (`exported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPitr {
    pub wal_archive: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPromote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<bool>,
}

impl RawPlan {
    /// The command version a plan needs in the log (see `crate::codec`): fields added in
    /// version 2 (`[[checks]] database`, `[sandbox] data`/`disk`, `[artifact] seed`) would be refused by older
    /// nodes, whose plans deny unknown keys.
    pub fn min_version(&self) -> u32 {
        let checks =
            self.checks.iter().any(|c| c.database.is_some()) || self.artifact.seed.is_some();
        let sandbox = self
            .sandbox
            .as_ref()
            .is_some_and(|s| s.data.is_some() || s.disk.is_some());
        let physical = self.pitr.is_some()
            || !self.artifact.incrementals.is_empty()
            || !self.artifact.tested.is_empty()
            || self.artifact.pick.as_deref() == Some("least_recently_tested")
            || self.promote.is_some()
            || self.targets.as_ref().is_some_and(|t| t.promote.is_some());
        let profile = self
            .sandbox
            .as_ref()
            .is_some_and(|s| s.profile.is_some() || !s.settings.is_empty() || s.jobs.is_some());
        let consistency = self.export.is_some()
            || self
                .files
                .as_ref()
                .is_some_and(|f| !f.consistency.is_empty());
        if self.artifact.before.is_some() || profile || consistency {
            4
        } else if physical {
            3
        } else if checks || sandbox {
            2
        } else {
            crate::codec::LEGACY
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Total bytes the archive may extract to (default 64GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<String>,
    /// Entries the archive may hold (default 1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// Named sets of paths that must all be in the archive (a DR exercise fills them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consistency: Vec<RawPathSet>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathSet {
    pub name: String,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlacement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_region: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawArtifact {
    pub url: String,
    pub engine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// `latest` or `random`: `url` names a backup set and one backup is picked from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pick: Option<String>,
    /// With `pick`: only backups newer than this (e.g. "30d").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    /// Other copies of the same backup (3-2-1): each must exist with the same blake3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<String>,
    /// A named source profile of the worker (`--sources`) for the plan's s3:// URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// With `pick = "random"`: a fixed seed, so the pick can be reproduced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incrementals: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tested: BTreeMap<String, i64>,
    /// With `pick`: only backups made before this instant (RFC 3339); a DR exercise with a
    /// past disaster instant sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    pub sql: String,
    pub expect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuiltin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<bool>,
}

fn duration(key: &'static str, value: &str) -> Result<Duration, PlanError> {
    humantime::parse_duration(value.trim()).map_err(|e| PlanError::Duration {
        key,
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

fn optional_duration(
    key: &'static str,
    value: Option<&str>,
) -> Result<Option<Duration>, PlanError> {
    value.map(|v| duration(key, v)).transpose()
}

impl Plan {
    /// Parses and validates a plan file's text.
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        let raw: RawPlan =
            toml::from_str(text).map_err(|e| PlanError::Syntax(one_line(&e.to_string())))?;
        Plan::from_raw(raw)
    }

    pub fn from_raw(raw: RawPlan) -> Result<Plan, PlanError> {
        let timeout =
            optional_duration("timeout", raw.timeout.as_deref())?.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(PlanError::ZeroTimeout);
        }
        let url = raw.artifact.url.trim().to_owned();
        if url.is_empty() {
            return Err(PlanError::EmptyUrl);
        }
        let engine = Engine::parse(raw.artifact.engine.trim())?;
        let blake3 = match raw.artifact.blake3 {
            Some(hex) => Some(Blake3Digest::parse_hex(&hex).ok_or(PlanError::Blake3(hex))?),
            None => None,
        };
        let pick = match raw.artifact.pick {
            Some(p) => Some(Pick::parse(p.trim()).ok_or(PlanError::Pick(p))?),
            None => None,
        };
        let within = optional_duration("artifact.within", raw.artifact.within.as_deref())?;
        if within.is_some() && pick.is_none() {
            return Err(PlanError::WithinWithoutPick);
        }
        let before_ms = match raw.artifact.before.as_deref().map(str::trim) {
            None => None,
            Some(_) if pick.is_none() => return Err(PlanError::BeforeWithoutPick),
            Some(t) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| PlanError::Before(format!("{t:?} is not an RFC 3339 time: {e}")))?
                    .timestamp_millis(),
            ),
        };
        let copies: Vec<String> = raw
            .artifact
            .copies
            .iter()
            .map(|c| c.trim().to_owned())
            .collect();
        if copies.iter().any(String::is_empty) {
            return Err(PlanError::EmptyCopy);
        }
        let raw_targets = raw.targets.unwrap_or_default();
        let targets = Targets {
            rto: optional_duration("targets.rto", raw_targets.rto.as_deref())?,
            rpo: optional_duration("targets.rpo", raw_targets.rpo.as_deref())?,
            freshness: raw_targets.freshness.filter(|q| !q.trim().is_empty()),
            promote: optional_duration("targets.promote", raw_targets.promote.as_deref())?,
        };
        // A recovered base backup measures RPO from its last replayed commit.
        if targets.rpo.is_some() && targets.freshness.is_none() && raw.pitr.is_none() {
            return Err(PlanError::RpoWithoutFreshness);
        }
        let mut checks: Vec<Check> = Vec::with_capacity(raw.checks.len());
        for c in raw.checks {
            if checks.iter().any(|seen| seen.name == c.name) {
                return Err(PlanError::DuplicateCheck(c.name));
            }
            if c.sql.trim().is_empty() {
                return Err(PlanError::EmptySql(c.name));
            }
            let expect = Expectation::parse(&c.expect).map_err(|reason| PlanError::Expect {
                name: c.name.clone(),
                reason,
            })?;
            checks.push(Check {
                name: c.name,
                sql: c.sql,
                expect,
                database: c.database.filter(|d| !d.trim().is_empty()),
            });
        }
        let builtin = raw.builtin.map_or_else(Builtin::default, |b| Builtin {
            row_counts: b.row_counts.unwrap_or(true),
            integrity: b.integrity.unwrap_or(true),
        });
        let max_attempts = raw.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            return Err(PlanError::ZeroAttempts);
        }
        let raw_placement = raw.placement.unwrap_or_default();
        let placement = Constraint {
            region: raw_placement.region.filter(|r| !r.trim().is_empty()),
            not_region: raw_placement.not_region.filter(|r| !r.trim().is_empty()),
            labels: raw_placement.labels,
        };
        if let (Some(a), Some(b)) = (&placement.region, &placement.not_region)
            && a == b
        {
            return Err(PlanError::ContradictoryPlacement(a.clone()));
        }
        let sandbox = SandboxSpec::from_raw(raw.sandbox.unwrap_or_default())
            .map_err(|(key, reason)| PlanError::Sandbox { key, reason })?;
        if let Some(name) = sandbox
            .settings
            .keys()
            .find(|n| !crate::limits::allowed_setting(engine.as_str(), n))
        {
            return Err(PlanError::Sandbox {
                key: "settings",
                reason: format!(
                    "{name:?} is not a setting a plan may give for {engine} (memory, parallelism, checkpoints and planner costs may be set; the sandbox's boundary and what the profile decides may not)"
                ),
            });
        }
        let files = files_spec(engine, raw.files, &checks, &targets)?;
        let export = match raw.export.map(|q| q.trim().to_owned()) {
            Some(q) if q.is_empty() => {
                return Err(PlanError::EngineMismatch(
                    "export: the query is empty".into(),
                ));
            }
            Some(_) if engine == Engine::Files => {
                return Err(PlanError::EngineMismatch(
                    "export is a SQL query; engine = \"files\" has no database".into(),
                ));
            }
            other => other,
        };
        let (pitr, promote) = physical_spec(engine, raw.pitr, raw.promote, &targets)?;
        let incrementals: Vec<String> = raw
            .artifact
            .incrementals
            .iter()
            .map(|i| i.trim().to_owned())
            .collect();
        if !incrementals.is_empty() && engine != Engine::Mysql {
            return Err(PlanError::EngineMismatch(format!(
                "artifact.incrementals are mariadb-backup incrementals (engine = \"mysql\"), not {engine}"
            )));
        }
        if incrementals.iter().any(String::is_empty) {
            return Err(PlanError::EngineMismatch(
                "artifact.incrementals: an incremental's URL is empty".into(),
            ));
        }
        Ok(Plan {
            name: raw.name,
            timeout,
            artifact: ArtifactSpec {
                url,
                engine,
                blake3,
                pick,
                within,
                copies,
                profile: raw
                    .artifact
                    .profile
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty()),
                seed: raw.artifact.seed,
                incrementals,
                tested: raw.artifact.tested,
                before_ms,
            },
            targets,
            checks,
            builtin,
            placement,
            max_attempts,
            sandbox,
            files,
            pitr,
            promote,
            export,
        })
    }

    /// The plan written back as its file shape (durations in humantime form).
    pub fn to_raw(&self) -> RawPlan {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let t = &self.targets;
        let has_targets =
            t.rto.is_some() || t.rpo.is_some() || t.freshness.is_some() || t.promote.is_some();
        RawPlan {
            name: self.name.clone(),
            timeout: (self.timeout != DEFAULT_TIMEOUT).then(|| fmt(self.timeout)),
            artifact: RawArtifact {
                url: self.artifact.url.clone(),
                engine: self.artifact.engine.to_string(),
                blake3: self.artifact.blake3.map(|d| d.to_string()),
                pick: self.artifact.pick.map(|p| p.as_str().to_owned()),
                within: self.artifact.within.map(fmt),
                copies: self.artifact.copies.clone(),
                profile: self.artifact.profile.clone(),
                seed: self.artifact.seed,
                incrementals: self.artifact.incrementals.clone(),
                tested: self.artifact.tested.clone(),
                before: self.artifact.before_ms.and_then(|t| {
                    chrono::DateTime::from_timestamp_millis(t)
                        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                }),
            },
            targets: has_targets.then(|| RawTargets {
                rto: t.rto.map(fmt),
                rpo: t.rpo.map(fmt),
                freshness: t.freshness.clone(),
                promote: t.promote.map(fmt),
            }),
            checks: self
                .checks
                .iter()
                .map(|c| RawCheck {
                    name: c.name.clone(),
                    sql: c.sql.clone(),
                    expect: c.expect.to_string(),
                    database: c.database.clone(),
                })
                .collect(),
            builtin: (self.builtin != Builtin::default()).then_some(RawBuiltin {
                row_counts: Some(self.builtin.row_counts),
                integrity: Some(self.builtin.integrity),
            }),
            placement: (self.placement != Constraint::default()).then(|| RawPlacement {
                region: self.placement.region.clone(),
                not_region: self.placement.not_region.clone(),
                labels: self.placement.labels.clone(),
            }),
            max_attempts: (self.max_attempts != DEFAULT_MAX_ATTEMPTS).then_some(self.max_attempts),
            sandbox: self.sandbox.to_raw(),
            files: (self.files != FilesSpec::default()).then(|| {
                let default = crate::untar::Limits::default();
                RawFiles {
                    required: self.files.required.clone(),
                    consistency: self
                        .files
                        .consistency
                        .iter()
                        .map(|(name, paths)| RawPathSet {
                            name: name.clone(),
                            paths: paths.clone(),
                        })
                        .collect(),
                    manifest: self.files.manifest.clone(),
                    max_bytes: (self.files.limits.max_bytes != default.max_bytes)
                        .then(|| crate::limits::format_size(self.files.limits.max_bytes)),
                    max_entries: (self.files.limits.max_entries != default.max_entries)
                        .then_some(self.files.limits.max_entries),
                }
            }),
            pitr: self.pitr.as_ref().map(|p| RawPitr {
                wal_archive: p.wal_archive.clone(),
                target: Some(p.target.to_string()),
                profile: p.profile.clone(),
            }),
            promote: self.promote.map(|p| RawPromote {
                canary: Some(p.canary),
            }),
            export: self.export.clone(),
        }
    }

    /// The plan as TOML text that [`Plan::from_toml`] reads back to the same plan.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_raw())
            .unwrap_or_else(|e| format!("# plan could not be written: {e}\n"))
    }
}

/// Validates `[pitr]`, `[promote]` and `targets.promote`: PostgreSQL base backups only.
fn physical_spec(
    engine: Engine,
    pitr: Option<RawPitr>,
    promote: Option<RawPromote>,
    targets: &Targets,
) -> Result<(Option<PitrSpec>, Option<PromoteSpec>), PlanError> {
    if engine != Engine::Postgres && (pitr.is_some() || promote.is_some()) {
        return Err(PlanError::EngineMismatch(format!(
            "[pitr] and [promote] are for engine = \"postgres\" base backups, not {engine}"
        )));
    }
    if targets.promote.is_some() && promote.is_none() {
        return Err(PlanError::EngineMismatch(
            "targets.promote needs a [promote] section: it times the promotion".into(),
        ));
    }
    let pitr = match pitr {
        None => None,
        Some(raw) => {
            let wal_archive = raw.wal_archive.trim().to_owned();
            if wal_archive.is_empty() {
                return Err(PlanError::Pitr {
                    key: "wal_archive",
                    reason: "is empty".into(),
                });
            }
            let target = match raw.target.as_deref() {
                None => RecoveryTarget::Latest,
                Some(t) => RecoveryTarget::parse(t).map_err(|reason| PlanError::Pitr {
                    key: "target",
                    reason,
                })?,
            };
            Some(PitrSpec {
                wal_archive,
                target,
                profile: raw
                    .profile
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty()),
            })
        }
    };
    let promote = promote.map(|p| PromoteSpec {
        canary: p.canary.unwrap_or(true),
    });
    Ok((pitr, promote))
}

/// Validates `[files]` against the engine: it belongs to the `files` engine, which in turn has no
/// SQL to run (no `[[checks]]`, no freshness query).
fn files_spec(
    engine: Engine,
    raw: Option<RawFiles>,
    checks: &[Check],
    targets: &Targets,
) -> Result<FilesSpec, PlanError> {
    if engine != Engine::Files {
        return match raw {
            Some(_) => Err(PlanError::EngineMismatch(format!(
                "[files] is for engine = \"files\", not {engine}"
            ))),
            None => Ok(FilesSpec::default()),
        };
    }
    if !checks.is_empty() {
        return Err(PlanError::EngineMismatch(
            "[[checks]] are SQL; engine = \"files\" checks with [files] required / manifest".into(),
        ));
    }
    if targets.freshness.is_some() {
        return Err(PlanError::EngineMismatch(
            "targets.freshness is a SQL query; engine = \"files\" has no database".into(),
        ));
    }
    let raw = raw.unwrap_or_default();
    let mut limits = crate::untar::Limits::default();
    if let Some(b) = &raw.max_bytes {
        limits.max_bytes = crate::limits::parse_size(b).map_err(|reason| PlanError::Files {
            key: "max_bytes",
            reason,
        })?;
    }
    if let Some(n) = raw.max_entries {
        if n == 0 {
            return Err(PlanError::Files {
                key: "max_entries",
                reason: "must be at least 1".into(),
            });
        }
        limits.max_entries = n;
    }
    let clean = |p: &str| {
        p.trim()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned()
    };
    let required: Vec<String> = raw.required.iter().map(|p| clean(p)).collect();
    // Paths a database returned are data, not the plan's own: one that could not be inside the
    // archive simply is not there (the check says so), it is not a plan error.
    let consistency: Vec<(String, Vec<String>)> = raw
        .consistency
        .iter()
        .map(|set| {
            (
                set.name.clone(),
                set.paths.iter().map(|p| clean(p)).collect(),
            )
        })
        .collect();
    if let Some(bad) = required
        .iter()
        .chain(raw.manifest.iter())
        .find(|p| p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".."))
    {
        return Err(PlanError::Files {
            key: "required",
            reason: format!("{bad:?} is not a relative path inside the archive"),
        });
    }
    Ok(FilesSpec {
        required,
        consistency,
        manifest: raw.manifest.map(|m| clean(&m)),
        limits,
    })
}

/// Error texts from the TOML parser span several lines (with a caret under the column); the CLI
/// promises one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && *l != "^")
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "shop nightly"
timeout = "3h"
[artifact]
url = "file:///var/backups/shop.dump"
engine = "postgres"
blake3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
[targets]
rto = "15m"
rpo = "26h"
freshness = "SELECT max(created_at) FROM orders"
[[checks]]
name = "orders"
sql = "SELECT count(*) FROM orders"
expect = ">= 1000"
"#;

    #[test]
    fn sandbox_settings_are_checked_against_the_engine() {
        let base = "[artifact]\nurl = \"/b/x.dump\"\nengine = \"postgres\"\n";
        let ok = Plan::from_toml(&format!(
            "{base}[sandbox]\nprofile = \"faithful\"\njobs = 2\nsettings = {{ shared_buffers = \"1GB\" }}\n"
        ))
        .expect("valid");
        assert_eq!(ok.sandbox.profile, crate::limits::Profile::Faithful);
        assert_eq!(ok.to_raw().min_version(), 4);
        let err = Plan::from_toml(&format!(
            "{base}[sandbox]\nsettings = {{ listen_addresses = \"*\" }}\n"
        ))
        .expect_err("refused")
        .to_string();
        assert!(
            err.contains("\"listen_addresses\" is not a setting a plan may give for postgres"),
            "{err}"
        );
        assert!(Plan::from_toml(&format!("{base}[sandbox]\nprofile = \"slow\"\n")).is_err());
    }

    #[test]
    fn full_plan_parses() {
        let plan = Plan::from_toml(FULL).expect("valid plan");
        assert_eq!(plan.name.as_deref(), Some("shop nightly"));
        assert_eq!(plan.timeout, Duration::from_secs(3 * 3600));
        assert_eq!(plan.artifact.engine, Engine::Postgres);
        assert_eq!(plan.targets.rto, Some(Duration::from_secs(15 * 60)));
        assert_eq!(plan.targets.rpo, Some(Duration::from_secs(26 * 3600)));
        assert_eq!(plan.checks.len(), 1);
        assert_eq!(plan.checks[0].expect.to_string(), ">= 1000");
        assert_eq!(
            plan.artifact.blake3.map(|d| d.to_string()).as_deref(),
            Some("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
        );
        assert_eq!(plan.builtin, Builtin::default());
    }

    #[test]
    fn round_trips_through_toml() {
        let plan = Plan::from_toml(FULL).expect("valid plan");
        assert_eq!(Plan::from_toml(&plan.to_toml()).expect("reparse"), plan);
    }

    #[test]
    fn minimal_plan_gets_defaults() {
        let plan = Plan::from_toml("[artifact]\nurl = \"/tmp/x.dump\"\nengine = \"postgres\"\n")
            .expect("valid");
        assert_eq!(plan.timeout, DEFAULT_TIMEOUT);
        assert!(plan.checks.is_empty());
        assert_eq!(plan.targets, Targets::default());
    }

    fn err(text: &str) -> String {
        Plan::from_toml(text)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("[artifact]\nurl = \"x\"\nengine = \"postgres\"\nblak3 = \"00\"\n");
        assert!(e.contains("blak3"), "{e}");
        let e = err("tmeout = \"1h\"\n[artifact]\nurl = \"x\"\nengine = \"postgres\"\n");
        assert!(e.contains("tmeout"), "{e}");
        let e = err(
            "[artifact]\nurl = \"x\"\nengine = \"postgres\"\n[[checks]]\nname = \"a\"\nsql = \"select 1\"\nexpct = \"= 1\"\n",
        );
        assert!(e.contains("expct"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let base = "[artifact]\nurl = \"x\"\nengine = \"postgres\"\n";
        assert!(err(&format!("timeout = \"soon\"\n{base}")).starts_with("timeout:"));
        assert!(err(&format!("{base}[targets]\nrto = \"fast\"\n")).starts_with("targets.rto:"));
        assert!(err(&format!("{base}[targets]\nrpo = \"1h\"\n")).contains("freshness"));
        assert!(err("[artifact]\nurl = \"x\"\nengine = \"oracle\"\n").contains("oracle"));
        assert!(
            err("[artifact]\nurl = \"x\"\nengine = \"postgres\"\nblake3 = \"abc\"\n")
                .contains("64 hex")
        );
        assert!(err("[artifact]\nurl = \"  \"\nengine = \"postgres\"\n").contains("empty"));
        assert!(
            err(&format!(
                "{base}[[checks]]\nname = \"a\"\nsql = \"select 1\"\nexpect = \"about 3\"\n"
            ))
            .contains("check \"a\"")
        );
        assert!(err(&format!(
            "{base}[[checks]]\nname = \"a\"\nsql = \"select 1\"\nexpect = \"= 1\"\n[[checks]]\nname = \"a\"\nsql = \"select 2\"\nexpect = \"= 2\"\n"
        ))
        .contains("twice"));
        assert!(err("[artifact]\nengine = \"postgres\"\n").contains("url"));
        assert!(err(&format!("timeout = \"0s\"\n{base}")).contains("zero"));
    }

    #[test]
    fn placement_and_attempts() {
        let base = "[artifact]\nurl = \"x\"\nengine = \"postgres\"\n";
        let plan = Plan::from_toml(&format!(
            "max_attempts = 5\n{base}[placement]\nregion = \"eu\"\nlabels = {{ disk = \"ssd\" }}\n"
        ))
        .expect("valid");
        assert_eq!(plan.max_attempts, 5);
        assert_eq!(plan.placement.region.as_deref(), Some("eu"));
        assert_eq!(
            plan.placement.labels.get("disk").map(String::as_str),
            Some("ssd")
        );
        assert_eq!(Plan::from_toml(&plan.to_toml()).expect("reparse"), plan);
        assert_eq!(
            Plan::from_toml(base).expect("valid").max_attempts,
            DEFAULT_MAX_ATTEMPTS
        );
        assert!(
            err(&format!(
                "{base}[placement]\nregion = \"eu\"\nnot_region = \"eu\"\n"
            ))
            .contains("no worker can run it")
        );
        assert!(err(&format!("max_attempts = 0\n{base}")).contains("at least 1"));
        assert!(err(&format!("{base}[placement]\nzone = \"a\"\n")).contains("zone"));
    }

    #[test]
    fn backup_set_keys() {
        let set = "[artifact]\nurl = \"/backups/daily/\"\nengine = \"postgres\"\n";
        let plan =
            Plan::from_toml(&format!("{set}pick = \"random\"\nwithin = \"30d\"\n")).expect("valid");
        assert_eq!(plan.artifact.pick, Some(Pick::Random));
        assert_eq!(plan.artifact.within, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(Plan::from_toml(&plan.to_toml()).expect("reparse"), plan);
        assert!(err(&format!("{set}pick = \"oldest\"\n")).contains("latest, random"));
        assert!(err(&format!("{set}within = \"30d\"\n")).contains("needs artifact.pick"));
        assert!(err(&format!("{set}copies = [\" \"]\n")).contains("copy's URL is empty"));
        let copied = Plan::from_toml(&format!("{set}copies = [\"/dr/x.dump\"]\n")).expect("valid");
        assert_eq!(copied.artifact.copies, ["/dr/x.dump"]);
        assert_eq!(Plan::from_toml(&copied.to_toml()).expect("reparse"), copied);
        assert!(
            err(&format!("{set}pick = \"latest\"\nwithin = \"soon\"\n"))
                .starts_with("artifact.within")
        );
    }

    #[test]
    fn builtin_switches() {
        let plan = Plan::from_toml(
            "[artifact]\nurl = \"x\"\nengine = \"postgres\"\n[builtin]\nintegrity = false\n",
        )
        .expect("valid");
        assert_eq!(
            plan.builtin,
            Builtin {
                row_counts: true,
                integrity: false
            }
        );
    }

    #[test]
    fn the_files_engine_and_its_section() {
        let base = "[artifact]\nurl = \"/b/etc.tar.gz\"\nengine = \"files\"\n";
        let plan = Plan::from_toml(&format!(
            "{base}[files]\nrequired = [\"./etc/app.conf\", \"data/\"]\nmanifest = \"MANIFEST.blake3\"\nmax_bytes = \"1GiB\"\nmax_entries = 500\n"
        ))
        .expect("valid");
        assert_eq!(plan.artifact.engine, Engine::Files);
        assert_eq!(plan.files.required, vec!["etc/app.conf", "data"]);
        assert_eq!(plan.files.limits.max_bytes, 1 << 30);
        assert_eq!(plan.files.limits.max_entries, 500);
        assert_eq!(Plan::from_toml(&plan.to_toml()).expect("round trip"), plan);
        let err = |t: &str| Plan::from_toml(t).expect_err("refused").to_string();
        assert!(
            err(&format!(
                "{base}[[checks]]\nname = \"n\"\nsql = \"SELECT 1\"\nexpect = \"= 1\"\n"
            ))
            .contains("[[checks]] are SQL")
        );
        assert!(
            err(&format!("{base}[files]\nrequired = [\"../etc\"]\n"))
                .contains("not a relative path")
        );
        assert!(err(&format!("{base}[files]\nmax_bytes = \"lots\"\n")).contains("files.max_bytes"));
        assert!(
            err("[artifact]\nurl = \"/x\"\nengine = \"postgres\"\n[files]\nrequired = [\"a\"]\n")
                .contains("not postgres")
        );
    }

    #[test]
    fn pitr_and_promote_sections() {
        let base = "[artifact]\nurl = \"/b/base/\"\nengine = \"postgres\"\n";
        let plan = Plan::from_toml(&format!(
            "{base}[pitr]\nwal_archive = \"s3://b/wal/\"\ntarget = \"2026-11-30T11:42:07Z\"\n[promote]\n[targets]\npromote = \"30s\"\nrpo = \"1h\"\n"
        ))
        .expect("valid");
        let pitr = plan.pitr.as_ref().expect("pitr");
        assert_eq!(pitr.target, RecoveryTarget::Time(1_796_038_927_000));
        assert_eq!(plan.promote, Some(PromoteSpec { canary: true }));
        assert_eq!(plan.targets.promote, Some(Duration::from_secs(30)));
        assert_eq!(Plan::from_toml(&plan.to_toml()).expect("round trip"), plan);
        assert_eq!(plan.to_raw().min_version(), 3, "older nodes refuse [pitr]");
        assert_eq!(
            RecoveryTarget::parse("random within 24h"),
            Ok(RecoveryTarget::RandomWithin(Duration::from_secs(86_400)))
        );
        assert_eq!(RecoveryTarget::parse("latest"), Ok(RecoveryTarget::Latest));
        let err = |t: &str| Plan::from_toml(t).expect_err("refused").to_string();
        assert!(
            err(&format!(
                "{base}[pitr]\nwal_archive = \"/w\"\ntarget = \"yesterday\"\n"
            ))
            .contains("pitr.target")
        );
        assert!(err(&format!("{base}[pitr]\nwal_archiv = \"/w\"\n")).contains("wal_archiv"));
        assert!(err(&format!("{base}[targets]\npromote = \"30s\"\n")).contains("[promote]"));
        assert!(
            err("[artifact]\nurl = \"/x\"\nengine = \"mysql\"\n[pitr]\nwal_archive = \"/w\"\n")
                .contains("not mysql")
        );
    }
}
