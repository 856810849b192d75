//! The verification report and the rules that turn its facts into a verdict.
//!
//! The pipeline records facts (phase timings, check results, the first failure); [`Report::finish`]
//! applies the targets and decides the verdict. A failed verification is a verdict with a phase and
//! a reason, never an error of the program.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::Targets;

/// The phases of one verification, in order. RTO runs from the start of `Fetch` to the end of
/// `Checks`; `Teardown` is reported apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Fetch,
    Checksum,
    Provision,
    Restore,
    /// A standby promoted to primary (`[promote]`), with its canary write.
    Promote,
    Checks,
    Teardown,
}

impl Phase {
    /// The phases of a restore without a promotion (a dump, a base backup not promoted), in
    /// order.
    pub const UNPROMOTED: [Phase; 6] = [
        Phase::Fetch,
        Phase::Checksum,
        Phase::Provision,
        Phase::Restore,
        Phase::Checks,
        Phase::Teardown,
    ];

    pub const ALL: [Phase; 7] = [
        Phase::Fetch,
        Phase::Checksum,
        Phase::Provision,
        Phase::Restore,
        Phase::Promote,
        Phase::Checks,
        Phase::Teardown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fetch => "fetch",
            Phase::Checksum => "checksum",
            Phase::Provision => "provision",
            Phase::Restore => "restore",
            Phase::Promote => "promote",
            Phase::Checks => "checks",
            Phase::Teardown => "teardown",
        }
    }
}

/// What a verification concluded about **the backup**.
///
/// `Failed` means the backup is bad (corrupt, incomplete, a check or target missed). `Error` means
/// it could not be verified (worker, sandbox, image, permissions, a missing extension, a resource
/// limit): it says nothing about the backup, is retried elsewhere, and is never shown as `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Error => "error",
        }
    }

    /// The process exit code that stands for it (`rehearse verify`, `rehearse job wait`).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Passed => 0,
            Verdict::Failed => 1,
            Verdict::Error => 2,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArtifactReport {
    pub url: String,
    pub bytes: u64,
    /// blake3 of the artifact's bytes as stored (what `b3sum` prints); for a directory, of its manifest.
    pub blake3: Option<String>,
    /// The format recognised from the content, e.g. "pg_dump custom", "plain SQL (zstd)".
    pub format: Option<String>,
    /// For a backup set (`pick`): how many backups were eligible (the picked one among them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
    /// Where the expected blake3 came from: "plan" or "sidecar" (`<artifact>.blake3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3_from: Option<String>,
    /// The plan's `copies`, each with its result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyReport>,
}

/// One copy of the artifact (3-2-1): found with the same blake3, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    pub url: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the plan's `export` query returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub sql: String,
    /// The first column of each row (NULL rows left out), at most `plan::EXPORT_LIMIT`.
    pub rows: Vec<String>,
    /// More rows than the limit came back (the first ones are kept).
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: Phase,
    pub ms: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    pub sql: String,
    pub expect: String,
    /// First column of the first row, as text; `None` for no row, NULL, or a query error.
    pub observed: Option<String>,
    pub ok: bool,
    /// Why the check failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub name: String,
    pub rows: u64,
}

/// A file-tree artifact, extracted: entries written by kind, and the bytes of regular files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesReport {
    /// Regular files (hardlinks included).
    pub count: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
}

/// A base backup recovered (from its own WAL, or from a WAL archive to a target).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// `backup_label`'s LABEL.
    pub label: String,
    /// Where the backup's WAL starts and (from its manifest, when it has one) where it must
    /// reach to be consistent.
    pub start_lsn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<String>,
    pub start_timeline: u32,
    /// The archive replayed from (`[pitr] wal_archive`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_archive: Option<String>,
    /// Segments of the archive from the backup's start to its end.
    pub segments_available: u64,
    /// Segments recovery asked for and was handed.
    pub segments_replayed: u64,
    /// blake3 over the handed segments' digests, in order (what the replay read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_blake3: Option<String>,
    /// "latest", or the RFC 3339 instant replay stopped before.
    pub target: String,
    pub target_reached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replayed_lsn: Option<String>,
    /// The commit time of the last transaction replayed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit_at: Option<String>,
    /// The timeline the server runs on after recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionReport>,
}

/// A standby promoted on the clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionReport {
    /// From `pg_promote` to `pg_is_in_recovery()` false.
    pub promoted_ms: u64,
    /// From `pg_promote` to the canary write committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ms: Option<u64>,
    pub old_timeline: u32,
    pub new_timeline: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityReport {
    pub tool: String,
    pub ok: bool,
    /// The tool's findings (empty when clean), or why it could not run.
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// "rto" or "rpo".
    pub name: String,
    pub target_ms: u64,
    pub observed_ms: Option<u64>,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// A phase name, or "targets" when every phase passed but an RTO/RPO target was missed.
    pub phase: String,
    pub reason: String,
    /// The environment, not the backup, stopped the verification: the verdict is `error`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub could_not_verify: bool,
    /// The artifact cannot be read yet — an archived object (S3 GLACIER, DEEP_ARCHIVE) whose
    /// restore was requested: a cluster tries the job again after this long, and the try does
    /// not count as an attempt (verdict `error`; command version 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub artifact: ArtifactReport,
    pub engine: String,
    pub runtime: String,
    /// The sandbox profile the restore ran under: "fast" or "faithful" (`[sandbox] profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// RFC 3339, UTC: when the verification started (RPO is measured from here).
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// The database the data was restored into and checked in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub phases: Vec<PhaseReport>,
    /// Start of fetch to end of checks; present once the checks phase ran to its end.
    pub rto_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_data_at: Option<String>,
    pub targets: Vec<TargetReport>,
    pub checks: Vec<CheckReport>,
    pub tables: Vec<TableRows>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<IntegrityReport>,
    /// What a `files` artifact extracted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesReport>,
    /// What recovering a base backup replayed (and, with `[promote]`, the promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryReport>,
    /// The plan's `export` query's first column (a DR exercise's consistency check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<Exported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Things a reader should know that are not failures (e.g. roles created, isolation used).
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(url: &str, engine: &str, runtime: &str, started_at: String) -> Report {
        Report {
            verdict: Verdict::Passed,
            name: None,
            artifact: ArtifactReport {
                url: url.to_owned(),
                ..ArtifactReport::default()
            },
            engine: engine.to_owned(),
            runtime: runtime.to_owned(),
            profile: None,
            started_at,
            server_version: None,
            database: None,
            phases: Vec::new(),
            rto_ms: None,
            rpo_ms: None,
            newest_data_at: None,
            targets: Vec::new(),
            checks: Vec::new(),
            tables: Vec::new(),
            integrity: None,
            files: None,
            recovery: None,
            exported: None,
            failure: None,
            notes: Vec::new(),
        }
    }

    /// Records the first failure; later ones are consequences and are not allowed to mask it.
    pub fn fail(&mut self, phase: &str, reason: impl Into<String>) {
        self.record(phase, reason.into(), false);
    }

    /// Records that the verification could not go on for a reason outside the backup (the
    /// verdict becomes `error`), unless the backup already failed: a bad backup stays `failed`.
    pub fn could_not_verify(&mut self, phase: &str, reason: impl Into<String>) {
        self.record(phase, reason.into(), true);
    }

    /// The artifact is not readable yet (an archived object being restored): `error` now, and
    /// worth another try after `retry_after_ms`.
    pub fn not_yet(&mut self, phase: &str, reason: impl Into<String>, retry_after_ms: u64) {
        self.record(phase, reason.into(), true);
        if let Some(f) = &mut self.failure {
            f.retry_after_ms = Some(retry_after_ms);
        }
    }

    /// When the artifact was not readable yet: how long until it is worth another try.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.failure.as_ref().and_then(|f| f.retry_after_ms)
    }

    fn record(&mut self, phase: &str, reason: String, could_not_verify: bool) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                phase: phase.to_owned(),
                reason,
                could_not_verify,
                retry_after_ms: None,
            });
        }
    }

    pub fn phase_ms(&self, phase: Phase) -> Option<u64> {
        self.phases.iter().find(|p| p.name == phase).map(|p| p.ms)
    }

    /// Applies the targets and sets the verdict. `newest_data_ms` is the freshness query's result
    /// and `started_ms` the verification start, both in ms since the Unix epoch.
    pub fn finish(&mut self, targets: &Targets, started_ms: i64, newest_data_ms: Option<i64>) {
        if let Some(newest) = newest_data_ms {
            let age = started_ms.saturating_sub(newest);
            if age < 0 {
                self.notes.push(format!("the newest data is {} later than the verification start (clock skew at the source?); RPO taken as 0", human_ms(age.unsigned_abs())));
            }
            self.rpo_ms = Some(age.max(0).unsigned_abs());
        }
        self.targets.clear();
        let mut misses = Vec::new();
        let promoted = self
            .recovery
            .as_ref()
            .and_then(|r| r.promotion.as_ref())
            .map(|p| p.promoted_ms);
        for (name, target, observed) in [
            ("rto", targets.rto, self.rto_ms),
            ("rpo", targets.rpo, self.rpo_ms),
            ("promote", targets.promote, promoted),
        ] {
            let Some(target) = target else { continue };
            let target_ms = duration_ms(target);
            let ok = observed.is_some_and(|o| o <= target_ms);
            // An unmeasured RTO is the consequence of an earlier failure, already the reason.
            if !ok && self.failure.is_none() {
                misses.push(match observed {
                    Some(o) => format!(
                        "{} {} exceeds the target {} by {}",
                        if name == "promote" {
                            "the promotion".to_owned()
                        } else {
                            name.to_uppercase()
                        },
                        human_ms(o),
                        human_ms(target_ms),
                        human_ms(o - target_ms)
                    ),
                    None if name == "promote" => "the promotion could not be timed".to_owned(),
                    None => format!(
                        "{} could not be measured (the freshness query found no timestamp)",
                        name.to_uppercase()
                    ),
                });
            }
            self.targets.push(TargetReport {
                name: name.to_owned(),
                target_ms,
                observed_ms: observed,
                ok,
            });
        }
        if !misses.is_empty() {
            self.fail("targets", misses.join("; "));
        }
        self.verdict = match &self.failure {
            None => Verdict::Passed,
            Some(f) if f.could_not_verify => Verdict::Error,
            Some(_) => Verdict::Failed,
        };
    }
}

/// An instant (ms since the epoch) as RFC 3339 in UTC, with milliseconds only when it has them.
pub fn utc_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms since the epoch"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds for people: "850ms", "2.4s", "3m 12s", "26h 5m".
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(rto: Option<u64>, rpo: Option<u64>) -> Targets {
        Targets {
            rto: rto.map(Duration::from_millis),
            rpo: rpo.map(Duration::from_millis),
            freshness: rpo.map(|_| "select now()".to_owned()),
            promote: None,
        }
    }

    fn report() -> Report {
        let mut r = Report::new(
            "file:///x",
            "postgres",
            "process",
            "2026-11-22T00:00:00Z".into(),
        );
        r.rto_ms = Some(90_000);
        r
    }

    #[test]
    fn passes_within_targets() {
        let mut r = report();
        r.finish(
            &targets(Some(15 * 60_000), Some(26 * 3_600_000)),
            100_000_000,
            Some(99_000_000),
        );
        assert_eq!(r.verdict, Verdict::Passed);
        assert_eq!(r.rpo_ms, Some(1_000_000));
        assert!(r.targets.iter().all(|t| t.ok));
    }

    #[test]
    fn missed_rto_says_by_how_much() {
        let mut r = report();
        r.finish(&targets(Some(60_000), None), 0, None);
        assert_eq!(r.verdict, Verdict::Failed);
        let f = r.failure.expect("failure");
        assert_eq!(f.phase, "targets");
        assert_eq!(f.reason, "RTO 1m 30s exceeds the target 1m 0s by 30.0s");
    }

    #[test]
    fn missed_rpo_and_unmeasurable_rpo() {
        let mut r = report();
        r.finish(&targets(None, Some(1_000)), 10_000, Some(0));
        assert!(
            r.failure
                .as_ref()
                .is_some_and(|f| f.reason.starts_with("RPO 10.0s exceeds"))
        );
        let mut r = report();
        r.finish(&targets(None, Some(1_000)), 10_000, None);
        assert!(
            r.failure
                .as_ref()
                .is_some_and(|f| f.reason.contains("could not be measured"))
        );
    }

    #[test]
    fn first_failure_wins_and_is_not_masked_by_targets() {
        let mut r = report();
        r.rto_ms = None;
        r.fail("restore", "pg_restore exited with status 1");
        r.fail("checks", "later");
        r.finish(&targets(Some(1), None), 0, None);
        assert_eq!(r.verdict, Verdict::Failed);
        assert_eq!(
            r.failure.as_ref().map(|f| f.phase.as_str()),
            Some("restore")
        );
        assert_eq!(r.targets.len(), 1);
        assert!(!r.targets[0].ok);
    }

    #[test]
    fn could_not_verify_is_error_never_failed() {
        let mut r = report();
        r.rto_ms = None;
        r.could_not_verify("provision", "image rehearse/none:0 is not on this engine");
        r.fail("restore", "a consequence");
        r.finish(&targets(Some(1), None), 0, None);
        assert_eq!(r.verdict, Verdict::Error);
        let f = r.failure.as_ref().expect("failure");
        assert_eq!(f.phase, "provision");
        assert!(f.could_not_verify);
        let json = serde_json::to_string(&r).expect("json");
        assert!(json.contains(r#""verdict":"error""#), "{json}");
        assert_eq!(Verdict::Error.exit_code(), 2);
    }

    #[test]
    fn a_bad_backup_stays_failed_when_the_environment_fails_after() {
        let mut r = report();
        r.fail("checksum", "copy s3://dr/x: missing");
        r.could_not_verify("provision", "container could not start");
        r.finish(&targets(None, None), 0, None);
        assert_eq!(r.verdict, Verdict::Failed);
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains("could_not_verify"), "{json}");
    }

    #[test]
    fn future_data_is_noted_not_negative() {
        let mut r = report();
        r.finish(&targets(None, None), 1_000, Some(5_000));
        assert_eq!(r.rpo_ms, Some(0));
        assert_eq!(r.notes.len(), 1);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(2_400), "2.4s");
        assert_eq!(human_ms(192_000), "3m 12s");
        assert_eq!(human_ms(26 * 3_600_000 + 300_000), "26h 5m");
    }

    #[test]
    fn a_slow_promotion_misses_its_target_in_words() {
        let mut r = report();
        r.recovery = Some(RecoveryReport {
            promotion: Some(PromotionReport {
                promoted_ms: 45_000,
                ..PromotionReport::default()
            }),
            ..RecoveryReport::default()
        });
        let targets = Targets {
            promote: Some(Duration::from_secs(30)),
            ..Targets::default()
        };
        r.finish(&targets, 0, None);
        assert_eq!(r.verdict, Verdict::Failed);
        let reason = &r.failure.as_ref().expect("failure").reason;
        assert_eq!(
            reason,
            "the promotion 45.0s exceeds the target 30.0s by 15.0s"
        );
        assert!(r.targets.iter().any(|t| t.name == "promote" && !t.ok));
    }
}
