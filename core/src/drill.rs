//! Scheduled drills: the drill file, its validation, and the pure decisions the leader takes
//! at each tick (fire, skip, miss), the run outcomes and the drill's status.
//!
//! ```toml
//! [drill]
//! name = "shop monthly"
//! schedule = "0 2 * * SUN#1"     # cron, 5 fields or 6 with seconds; L, W, # supported
//! timezone = "Europe/Berlin"     # IANA name; default UTC
//! window = "4h"                  # the run starts inside this window; not started by its end -> skipped
//! overlap = "skip"               # skip | queue: a tick while the previous run still runs
//! alert_after = "35d"            # no passed run for this long -> overdue
//! drift = "10%"                  # a table that shrank by more than this since the last passed run fails the run
//! keep = "400d"                  # history kept at least this long
//! plan = "shop.toml"             # or plans = ["a.toml", "b.toml"], or an inline [plan] table
//! ```
//!
//! Decisions (all here, pure; the coordinator only carries them out):
//! - [`decide`]: the latest due tick fires once if its window is still open (jittered start,
//!   [`crate::schedule::jitter_ms`]); every earlier tick not dealt with is recorded `missed` (one
//!   record with their count and span: never backfilled, never dropped, no cap); a latest tick
//!   whose window closed while nobody could act is `missed` too; with `overlap = "skip"` a tick
//!   while the previous run still runs is `skipped`.
//! - Job ids derive from (drill, tick) ([`job_id`]): a leader change never doubles a run.
//! - [`finish_run`]: a run passes when all its jobs passed and no table drifted; one `failed` job
//!   fails it; otherwise one `error` job makes it `error` (could not verify: not a backup failure).
//! - [`drift`]: row counts compared with the last passed run of the same drill.
//! - [`status`]: `paused`, `never_run`, `failing`, `overdue` or `ok`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::{Plan, RawPlan};
use crate::report::{Report, TableRows, Verdict};
use crate::schedule::Schedule;

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
pub const DEFAULT_KEEP: Duration = Duration::from_secs(400 * 24 * 3600);

/// The drill file as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrillFile {
    pub drill: RawDrill,
    /// An inline plan (instead of `plan = "file"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RawPlan>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub name: String,
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<String>,
    /// A DR exercise file instead of plans: each run is one exercise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exercise: Option<String>,
}

/// What a tick does while the previous run of the drill still runs (a restore is never killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
}

/// A validated drill definition, as the log carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillSpec {
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    pub window_ms: u64,
    pub overlap: Overlap,
    #[serde(default)]
    pub alert_after_ms: Option<u64>,
    /// The largest allowed fall of a table's rows, as a fraction (0.1 for "10%").
    #[serde(default)]
    pub drift: Option<f64>,
    pub keep_ms: u64,
    /// The plans each run verifies, one job each.
    pub plans: Vec<RawPlan>,
    /// Or the DR exercise each run starts (`exercise = "dr.toml"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exercise: Option<Box<crate::exercise::ExerciseSpec>>,
    /// A hash of everything above: each run records the definition it ran.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrillError {
    #[error("drill file: {0}")]
    Toml(String),
    #[error("drill {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("plan {source_name}: {reason}")]
    Plan { source_name: String, reason: String },
    #[error("exercise {source_name}: {reason}")]
    Exercise { source_name: String, reason: String },
}

impl DrillSpec {
    /// Parses and validates a drill file. `read_plan` returns the text of a plan file named by
    /// `plan`/`plans` (the caller resolves the path; this crate does no I/O).
    pub fn from_toml(
        text: &str,
        read_plan: impl Fn(&str) -> Result<String, String>,
    ) -> Result<DrillSpec, DrillError> {
        let raw: RawDrillFile =
            toml::from_str(text).map_err(|e| DrillError::Toml(e.message().to_owned()))?;
        let d = raw.drill;
        let invalid = |key: &'static str, reason: String| DrillError::Invalid { key, reason };
        let name = checked_name(&d.name).map_err(|r| invalid("name", r))?;
        let timezone = d.timezone.unwrap_or_else(|| "UTC".to_owned());
        let schedule = Schedule::new(&d.schedule, &timezone)
            .map_err(|e| invalid("schedule", e.to_string()))?;
        let duration = |key: &'static str, v: Option<String>, default: Option<Duration>| match v {
            None => Ok(default),
            Some(t) => humantime::parse_duration(t.trim())
                .map(Some)
                .map_err(|e| invalid(key, format!("{t:?} is not a duration: {e}"))),
        };
        let window = duration("window", d.window, Some(DEFAULT_WINDOW))?.unwrap_or(DEFAULT_WINDOW);
        if window < Duration::from_secs(1) {
            return Err(invalid("window", "must be at least 1s".into()));
        }
        let alert_after = duration("alert_after", d.alert_after, None)?;
        let keep = duration("keep", d.keep, Some(DEFAULT_KEEP))?.unwrap_or(DEFAULT_KEEP);
        let drift = match d.drift {
            None => None,
            Some(t) => Some(parse_percent(&t).map_err(|r| invalid("drift", r))?),
        };
        let mut sources: Vec<(String, String)> = Vec::new();
        if let Some(p) = d.plan {
            sources.push((
                p.clone(),
                read_plan(&p).map_err(|r| DrillError::Plan {
                    source_name: p,
                    reason: r,
                })?,
            ));
        }
        for p in d.plans {
            sources.push((
                p.clone(),
                read_plan(&p).map_err(|r| DrillError::Plan {
                    source_name: p,
                    reason: r,
                })?,
            ));
        }
        let mut plans = Vec::new();
        for (source_name, text) in sources {
            let raw: RawPlan = toml::from_str(&text).map_err(|e| DrillError::Plan {
                source_name: source_name.clone(),
                reason: e.message().to_owned(),
            })?;
            plans.push(checked(raw, &source_name)?);
        }
        if let Some(inline) = raw.plan {
            plans.push(checked(inline, "[plan]")?);
        }
        let exercise = match d.exercise {
            None => None,
            Some(_) if !plans.is_empty() => {
                return Err(invalid(
                    "exercise",
                    "a drill runs plans or an exercise, not both".into(),
                ));
            }
            Some(file) => {
                let bad = |reason: String| DrillError::Exercise {
                    source_name: file.clone(),
                    reason,
                };
                let text = read_plan(&file).map_err(&bad)?;
                // The exercise's plan files are relative to the exercise file.
                let dir = file.rsplit_once('/').map(|(d, _)| format!("{d}/"));
                let spec = crate::exercise::ExerciseSpec::from_toml(&text, |name| {
                    read_plan(&format!("{}{name}", dir.as_deref().unwrap_or("")))
                })
                .map_err(|e| bad(e.to_string()))?;
                Some(Box::new(spec))
            }
        };
        if plans.is_empty() && exercise.is_none() {
            return Err(invalid(
                "plan",
                "give plan = \"file.toml\", plans = [...], an inline [plan] table, or exercise = \"dr.toml\"".into(),
            ));
        }
        let mut spec = DrillSpec {
            name,
            schedule: schedule.pattern().to_owned(),
            timezone: schedule.timezone().to_owned(),
            window_ms: millis(window),
            overlap: d.overlap.unwrap_or_default(),
            alert_after_ms: alert_after.map(millis),
            drift,
            keep_ms: millis(keep),
            plans,
            exercise,
            version: String::new(),
        };
        spec.version = spec.digest();
        Ok(spec)
    }

    /// A definition that arrived over the wire, validated again as if read from its file:
    /// schedule, plans and version.
    pub fn checked(mut self) -> Result<DrillSpec, DrillError> {
        Schedule::new(&self.schedule, &self.timezone).map_err(|e| DrillError::Invalid {
            key: "schedule",
            reason: e.to_string(),
        })?;
        let work = usize::from(!self.plans.is_empty()) + usize::from(self.exercise.is_some());
        if self.name.trim().is_empty() || work != 1 || self.window_ms < 1000 {
            return Err(DrillError::Invalid {
                key: "name",
                reason: "a drill needs a name, a window of at least 1s, and plans or an exercise"
                    .into(),
            });
        }
        for (i, plan) in self.plans.iter().enumerate() {
            checked(plan.clone(), &format!("#{}", i + 1))?;
        }
        if let Some(e) = self.exercise.take() {
            let name = e.name.clone();
            self.exercise = Some(Box::new(e.checked().map_err(|e| DrillError::Exercise {
                source_name: name,
                reason: e.to_string(),
            })?));
        }
        self.version = self.digest();
        Ok(self)
    }

    /// The schedule, parsed (validated when the spec was made).
    pub fn schedule(&self) -> Result<Schedule, crate::schedule::ScheduleError> {
        Schedule::new(&self.schedule, &self.timezone)
    }

    /// A stable hash of the definition (without the version itself).
    fn digest(&self) -> String {
        let mut copy = self.clone();
        copy.version = String::new();
        digest(&copy)
    }
}

/// A stable hash of a definition: FNV-1a over its JSON, as 16 hex digits.
pub(crate) fn digest<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A name as users give them (drills, exercises, steps): trimmed, 1 to 100 printable characters.
pub(crate) fn checked_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err("must be 1 to 100 printable characters".into());
    }
    Ok(name.to_owned())
}

/// A name made fit for an id: lowercase ASCII letters and digits, `-` for the rest, at most 40.
pub(crate) fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect()
}

fn checked(raw: RawPlan, source_name: &str) -> Result<RawPlan, DrillError> {
    Plan::from_raw(raw.clone()).map_err(|e| DrillError::Plan {
        source_name: source_name.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(raw)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// "10%" or "0.1" → 0.1.
fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{text:?} is not a percentage like \"10%\""))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?} must be between 0% and 100%"));
    }
    Ok(value)
}

/// The id of the `index`th job of the run of `drill` at `tick_ms` (`manual` runs apart): the
/// same on every replica and for every leader, so a tick can never create a job twice.
pub fn job_id(drill: &str, tick_ms: i64, index: usize, manual: bool) -> String {
    let slug = slug(drill);
    let mut h: u32 = 0x811c_9dc5;
    for b in drill.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let kind = if manual { "m" } else { "t" };
    format!("drill-{slug}-{h:08x}-{kind}{tick_ms}-{index}")
}

/// A drill in the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drill {
    pub spec: DrillSpec,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The latest scheduled tick dealt with (fired, skipped or missed); later ones are due.
    pub last_tick_ms: i64,
    #[serde(default)]
    pub paused: Option<Pause>,
    /// When each backup (by URL) was last verified by a passed job of this drill: what
    /// `pick = "least_recently_tested"` rotates by.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tested: std::collections::BTreeMap<String, i64>,
    /// The stretch without a passed run (its start) already notified as overdue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_notified: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub reason: String,
    pub at_ms: u64,
    /// Resumes by itself at this time, if given.
    #[serde(default)]
    pub until_ms: Option<u64>,
}

/// How a run ended, or where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Its jobs exist and have not all ended.
    Running,
    Passed,
    /// A backup of the run is bad (a job failed, or a table drifted).
    Failed,
    /// Could not verify (a job ended `error`): not a backup failure.
    Error,
    /// Not started: the previous run still ran, its window closed with no worker, …
    Skipped,
    /// Ticks nobody acted on in time (coordinators down); `missed` counts them.
    Missed,
    Cancelled,
}

impl RunOutcome {
    pub fn is_final(self) -> bool {
        self != RunOutcome::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Passed => "passed",
            RunOutcome::Failed => "failed",
            RunOutcome::Error => "error",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Missed => "missed",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// One job's result, kept in the run's history after the job itself is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job: String,
    pub verdict: Option<Verdict>,
    pub artifact_url: String,
    #[serde(default)]
    pub blake3: Option<String>,
    #[serde(default)]
    pub rto_ms: Option<u64>,
    #[serde(default)]
    pub rpo_ms: Option<u64>,
    /// Per phase, in ms.
    #[serde(default)]
    pub phases: BTreeMap<String, u64>,
    #[serde(default)]
    pub tables: Vec<TableRows>,
    #[serde(default)]
    pub reason: Option<String>,
    /// RFC 3339: the newest data the restore held (freshness query), or the last commit a WAL
    /// replay reached — what a DR exercise measures its RPO from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// The sandbox profile the restore ran under ("fast", "faithful").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The plan's `export` rows (a DR exercise's consistency checks read them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<crate::report::Exported>,
    /// The `consistency NAME` checks of a files step: (name, ok, reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consistency: Vec<(String, bool, Option<String>)>,
}

impl JobResult {
    pub fn from_report(job: &str, report: Option<&Report>, reason: Option<&str>) -> JobResult {
        JobResult {
            job: job.to_owned(),
            verdict: report.map(|r| r.verdict),
            artifact_url: report.map(|r| r.artifact.url.clone()).unwrap_or_default(),
            blake3: report.and_then(|r| r.artifact.blake3.clone()),
            rto_ms: report.and_then(|r| r.rto_ms),
            rpo_ms: report.and_then(|r| r.rpo_ms),
            phases: report
                .map(|r| {
                    r.phases
                        .iter()
                        .map(|p| (p.name.as_str().to_owned(), p.ms))
                        .collect()
                })
                .unwrap_or_default(),
            tables: report.map(|r| r.tables.clone()).unwrap_or_default(),
            reason: report
                .and_then(|r| {
                    r.failure
                        .as_ref()
                        .map(|f| format!("{}: {}", f.phase, f.reason))
                })
                .or_else(|| reason.map(str::to_owned)),
            restore_point: report.and_then(|r| {
                r.newest_data_at
                    .as_deref()
                    .or_else(|| r.recovery.as_ref()?.last_commit_at.as_deref())
                    .and_then(parse_instant)
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }),
            profile: report.and_then(|r| r.profile.clone()),
            exported: report.and_then(|r| r.exported.clone()),
            consistency: report
                .map(|r| {
                    r.checks
                        .iter()
                        .filter_map(|c| {
                            let name = c.name.strip_prefix("consistency ")?;
                            Some((name.to_owned(), c.ok, c.reason.clone()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A time as a database printed it, in ms since the epoch: RFC 3339, PostgreSQL's
/// `2026-12-02 09:20:00.123+00`, or MariaDB's `2026-12-02 09:20:00` (read in UTC, as the
/// freshness query runs with `time_zone = '+00:00'`).
pub fn parse_instant(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, format) {
            return Some(d.timestamp_millis());
        }
    }
    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|d| d.and_utc().timestamp_millis())
}

/// One run of a drill (or a record of missed ticks): its history entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub drill: String,
    /// The tick (scheduled fire instant, or the request time of a manual run).
    pub tick_ms: i64,
    #[serde(default)]
    pub manual: bool,
    pub created_at_ms: u64,
    /// When its jobs may start at the earliest (tick + jitter) — informational.
    #[serde(default)]
    pub start_ms: i64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    pub outcome: RunOutcome,
    #[serde(default)]
    pub reason: Option<String>,
    /// The drill definition it ran.
    pub version: String,
    #[serde(default)]
    pub jobs: Vec<String>,
    /// The exercise this run started (a drill of an exercise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exercise: Option<String>,
    #[serde(default)]
    pub results: Vec<JobResult>,
    /// For a `missed` record: how many ticks, first and last.
    #[serde(default)]
    pub missed: Option<(u64, i64, i64)>,
    /// Written to the history already (it has ended).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
}

/// What the leader does about a drill now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due (or the jittered start has not come yet).
    Wait,
    /// Deal with tick `tick_ms`: `fire` (start its run) or not, with the reason it is skipped,
    /// and the earlier ticks missed (count, first, last).
    Tick {
        tick_ms: i64,
        fire: bool,
        skipped: Option<String>,
        missed: Option<(u64, i64, i64)>,
    },
}

/// The decision for one drill at `now_ms`. `previous_running`: a run of it has not ended.
pub fn decide(drill: &Drill, schedule: &Schedule, now_ms: i64, previous_running: bool) -> Decision {
    if drill
        .paused
        .as_ref()
        .is_some_and(|p| p.until_ms.is_none_or(|u| (u as i64) > now_ms))
    {
        return Decision::Wait;
    }
    let (latest, total) = schedule.ticks_between(drill.last_tick_ms, now_ms, 2);
    let Some(&last) = latest.last() else {
        return Decision::Wait;
    };
    let window = drill.spec.window_ms as i64;
    let first_missed = schedule.next_after(drill.last_tick_ms).unwrap_or(last);
    if now_ms >= last.saturating_add(window) {
        // Nobody acted while its window was open: every due tick is missed, this one too.
        return Decision::Tick {
            tick_ms: last,
            fire: false,
            skipped: None,
            missed: Some((total, first_missed, last)),
        };
    }
    let start_of = |tick: i64| {
        tick + crate::schedule::jitter_ms(&drill.spec.name, tick, drill.spec.window_ms) as i64
    };
    // The tick to act on: the latest whose jittered start has come. The newest tick may not
    // be due yet while the one before it is (a start jittered to just before the next tick):
    // that one runs, it is not missed.
    let (tick, earlier) = if now_ms >= start_of(last) {
        (last, total - 1)
    } else {
        match latest.first().filter(|_| total >= 2) {
            None => return Decision::Wait,
            Some(&previous) if now_ms >= previous.saturating_add(window) => {
                // Its window closed unseen: it and those before it are missed; the newest
                // tick is decided on its own when its start comes.
                return Decision::Tick {
                    tick_ms: previous,
                    fire: false,
                    skipped: None,
                    missed: Some((total - 1, first_missed, previous)),
                };
            }
            Some(&previous) if now_ms >= start_of(previous) => (previous, total - 2),
            Some(_) => return Decision::Wait,
        }
    };
    // The ticks before this one that nobody acted on: one record, their count and span.
    let missed = (earlier > 0).then(|| {
        let last_missed = schedule
            .ticks_between(drill.last_tick_ms, tick - 1, 1)
            .0
            .first()
            .copied()
            .unwrap_or(first_missed);
        (earlier, first_missed, last_missed)
    });
    if previous_running && drill.spec.overlap == Overlap::Skip {
        return Decision::Tick {
            tick_ms: tick,
            fire: false,
            skipped: Some("the previous run was still running (overlap = \"skip\")".to_owned()),
            missed,
        };
    }
    Decision::Tick {
        tick_ms: tick,
        fire: true,
        skipped: None,
        missed,
    }
}

/// A run's outcome once every job ended: `Failed` if a job failed (the backup is bad), else
/// `Error` if one could not be verified, else `Cancelled` if one was cancelled, else `Passed` —
/// unless a table drifted (`drift`), which fails it with the reason.
pub fn finish_run(results: &[JobResult], drifted: Option<String>) -> (RunOutcome, Option<String>) {
    let first = |v: Verdict| {
        results
            .iter()
            .find(|r| r.verdict == Some(v))
            .map(|r| r.reason.clone().unwrap_or_default())
    };
    if let Some(reason) = first(Verdict::Failed) {
        return (RunOutcome::Failed, Some(reason));
    }
    if let Some(reason) = first(Verdict::Error) {
        return (
            RunOutcome::Error,
            Some(format!("could not verify: {reason}")),
        );
    }
    if let Some(r) = results.iter().find(|r| r.verdict.is_none()) {
        return (
            RunOutcome::Cancelled,
            Some(
                r.reason
                    .clone()
                    .unwrap_or_else(|| "a job ended without a verdict".into()),
            ),
        );
    }
    match drifted {
        Some(reason) => (RunOutcome::Failed, Some(reason)),
        None => (RunOutcome::Passed, None),
    }
}

/// Tables that shrank by more than `limit` (a fraction), or disappeared, since the last passed
/// run: "public.orders fell from 20000 to 12000 rows (-40%) since the run of 2026-11-01".
pub fn drift(
    now: &[TableRows],
    before: &[TableRows],
    before_at: &str,
    limit: f64,
) -> Option<String> {
    let now: BTreeMap<&str, u64> = now.iter().map(|t| (t.name.as_str(), t.rows)).collect();
    let mut problems = Vec::new();
    for t in before {
        match now.get(t.name.as_str()) {
            None => problems.push(format!(
                "{} disappeared (it had {} rows in the run of {before_at})",
                t.name, t.rows
            )),
            Some(&rows) if t.rows > 0 && rows < t.rows => {
                let fall = (t.rows - rows) as f64 / t.rows as f64;
                if fall > limit {
                    problems.push(format!(
                        "{} fell from {} to {} rows (-{:.0}%) since the run of {before_at}",
                        t.name,
                        t.rows,
                        rows,
                        fall * 100.0
                    ));
                }
            }
            Some(_) => {}
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// What `drill list` shows about a drill's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Overdue,
    Failing,
    Paused,
    NeverRun,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Overdue => "overdue",
            Status::Failing => "failing",
            Status::Paused => "paused",
            Status::NeverRun => "never_run",
        }
    }
}

/// When a drill not paused has had no passed run within its `alert_after`: the start of that
/// stretch (its last pass, or its creation). `None` when it is not overdue.
pub fn overdue_since(drill: &Drill, runs: &[Run], now_ms: u64) -> Option<u64> {
    let limit = drill.spec.alert_after_ms?;
    if drill
        .paused
        .as_ref()
        .is_some_and(|p| p.until_ms.is_none_or(|u| u > now_ms))
    {
        return None;
    }
    let since = runs
        .iter()
        .rev()
        .find(|r| r.outcome == RunOutcome::Passed)
        .and_then(|r| r.finished_at_ms)
        .unwrap_or(drill.created_at_ms);
    (now_ms.saturating_sub(since) > limit).then_some(since)
}

/// The drill's status from its runs (oldest first): `paused`; `failing` when its last finished
/// run failed or could not verify; `overdue` when no run passed within `alert_after` (counted
/// from the last pass, or from the drill's creation); `never_run` when none finished; else `ok`.
pub fn status(drill: &Drill, runs: &[&Run], now_ms: u64) -> Status {
    if drill
        .paused
        .as_ref()
        .is_some_and(|p| p.until_ms.is_none_or(|u| u > now_ms))
    {
        return Status::Paused;
    }
    let finished: Vec<&&Run> = runs
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                RunOutcome::Passed | RunOutcome::Failed | RunOutcome::Error
            )
        })
        .collect();
    let last_pass = finished
        .iter()
        .rev()
        .find(|r| r.outcome == RunOutcome::Passed)
        .and_then(|r| r.finished_at_ms);
    if let Some(limit) = drill.spec.alert_after_ms {
        let since = last_pass.unwrap_or(drill.created_at_ms);
        if now_ms.saturating_sub(since) > limit {
            return Status::Overdue;
        }
    }
    match finished.last() {
        None => Status::NeverRun,
        Some(r) if r.outcome != RunOutcome::Passed => Status::Failing,
        Some(_) => Status::Ok,
    }
}

/// What `drill list` / `drill get` / `drill history` show of one drill (built by the
/// coordinator at read time; the CLI renders it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillView {
    pub name: String,
    /// `None` once deleted (its history stays until `keep` runs out).
    pub spec: Option<DrillSpec>,
    pub status: Option<Status>,
    #[serde(default)]
    pub paused: Option<Pause>,
    /// The next fire times (one for a listing, five for `get`), with DST notes.
    #[serde(default)]
    pub next: Vec<crate::schedule::FireTime>,
    #[serde(default)]
    pub last_run: Option<Run>,
    #[serde(default)]
    pub last_passed: Option<Run>,
    /// The whole history (oldest first) for `history`; empty otherwise.
    #[serde(default)]
    pub runs: Vec<Run>,
}

impl DrillView {
    /// `upcoming`: how many next fire times; `history`: include every run. `schedule`: the
    /// drill's schedule when the caller has it parsed already (parsing a cron pattern costs
    /// about 20 µs; a listing of 10,000 drills shares them), else it is parsed here.
    pub fn new(
        name: &str,
        drill: Option<&Drill>,
        runs: &[Run],
        now_ms: u64,
        (upcoming, history): (usize, bool),
        schedule: Option<&crate::schedule::Schedule>,
    ) -> DrillView {
        let refs: Vec<&Run> = runs.iter().collect();
        let next = drill
            .and_then(|d| {
                let parsed;
                let s = match schedule {
                    Some(s) => s,
                    None => {
                        parsed = d.spec.schedule().ok()?;
                        &parsed
                    }
                };
                Some(s.upcoming(d.last_tick_ms.max(now_ms as i64), upcoming))
            })
            .unwrap_or_default();
        DrillView {
            name: name.to_owned(),
            spec: drill.map(|d| d.spec.clone()),
            status: drill.map(|d| status(d, &refs, now_ms)),
            paused: drill.and_then(|d| d.paused.clone()),
            next,
            last_run: runs
                .iter()
                .rev()
                .find(|r| r.outcome != RunOutcome::Missed)
                .cloned(),
            last_passed: runs
                .iter()
                .rev()
                .find(|r| r.outcome == RunOutcome::Passed)
                .cloned(),
            runs: if history { runs.to_vec() } else { Vec::new() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "[artifact]\nurl = \"/backups/shop.dump\"\nengine = \"postgres\"\n";

    fn spec(extra: &str) -> DrillSpec {
        spec_on("*/10 * * * * *", extra)
    }

    fn spec_on(schedule: &str, extra: &str) -> DrillSpec {
        let text = format!(
            "[drill]\nname = \"shop\"\nschedule = \"{schedule}\"\nplan = \"shop.toml\"\n{extra}"
        );
        DrillSpec::from_toml(&text, |_| Ok(PLAN.to_owned())).expect("valid drill")
    }

    fn drill(extra: &str, last_tick_ms: i64) -> Drill {
        Drill {
            spec: spec(extra),
            created_at_ms: 0,
            updated_at_ms: 0,
            last_tick_ms,
            paused: None,
            tested: Default::default(),
            overdue_notified: None,
        }
    }

    #[test]
    fn the_file_is_validated_with_defaults_and_names_the_bad_key() {
        let s = spec("");
        assert_eq!((s.timezone.as_str(), s.window_ms), ("UTC", 3_600_000));
        assert_eq!(s.overlap, Overlap::Skip);
        assert_eq!(s.plans.len(), 1);
        assert_eq!(s.version.len(), 16);
        assert_ne!(
            s.version,
            spec("window = \"2h\"\n").version,
            "a change is a new version"
        );
        let bad = |t: &str| {
            DrillSpec::from_toml(t, |_| Ok(PLAN.to_owned()))
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad("[drill]\nname = \"x\"\nschedule = \"* * * * *\"\nplan = \"p\"\ntypo = 1\n")
                .contains("typo")
        );
        assert!(
            bad(
                "[drill]\nname = \"x\"\nschedule = \"* * * * *\"\nplan = \"p\"\ndrift = \"lots\"\n"
            )
            .contains("drift")
        );
        assert!(bad("[drill]\nname = \"x\"\nschedule = \"* * * * *\"\n").contains("plan"));
        assert!(bad("[drill]\nname = \"x\"\nschedule = \"* * * * *\"\ntimezone = \"Nowhere\"\nplan = \"p\"\n").contains("IANA"));
        let inline = DrillSpec::from_toml(
            &format!(
                "[drill]\nname = \"x\"\nschedule = \"* * * * *\"\n[plan]\n{}",
                PLAN.replace("[artifact]", "[plan.artifact]")
            ),
            |_| Err("no files".into()),
        )
        .expect("inline plan");
        assert_eq!(inline.plans[0].artifact.url, "/backups/shop.dump");
        assert!(
            DrillSpec::from_toml(
                "[drill]\nname = \"x\"\nschedule = \"* * * * *\"\nplan = \"missing.toml\"\n",
                |p| Err(format!("cannot read {p}"))
            )
            .unwrap_err()
            .to_string()
            .contains("missing.toml")
        );
    }

    #[test]
    fn job_ids_derive_from_drill_and_tick() {
        assert_eq!(
            job_id("shop monthly", 5, 0, false),
            job_id("shop monthly", 5, 0, false)
        );
        assert_ne!(
            job_id("shop monthly", 5, 0, false),
            job_id("shop monthly", 5, 1, false)
        );
        assert_ne!(
            job_id("shop monthly", 5, 0, false),
            job_id("shop monthly", 5, 0, true)
        );
        assert_ne!(job_id("a b", 5, 0, false), job_id("a-b", 5, 0, false));
    }

    #[test]
    fn the_latest_due_tick_fires_once_and_earlier_ones_are_missed() {
        let d = drill("window = \"8s\"\n", 0);
        let s = d.spec.schedule().expect("schedule");
        // Ticks every 10 s: at 60 s, ticks 10..=60 are due; 60 fires (its window is open) and
        // the five before it are one missed record.
        match decide(&d, &s, 60_000 + 1_000, false) {
            Decision::Tick {
                tick_ms,
                fire,
                skipped,
                missed,
            } => {
                assert_eq!(tick_ms, 60_000);
                assert!(fire && skipped.is_none());
                assert_eq!(missed, Some((5, 10_000, 50_000)));
            }
            other => panic!("{other:?}"),
        }
        // Past the window: everything due is missed, nothing fires.
        match decide(&d, &s, 68_500, false) {
            Decision::Tick { fire, missed, .. } => {
                assert!(!fire);
                assert_eq!(missed, Some((6, 10_000, 60_000)));
            }
            other => panic!("{other:?}"),
        }
        // Nothing due after the last tick dealt with.
        let done = drill("window = \"8s\"\n", 60_000);
        assert_eq!(decide(&done, &s, 65_000, false), Decision::Wait);
    }

    /// Found by the 10,000-drill benchmark: a run jittered to start just before the next tick
    /// must run when its start comes, not be recorded as missed once the next tick has passed.
    #[test]
    fn a_start_jittered_past_the_next_tick_still_runs() {
        let minutely = Drill {
            spec: spec_on("* * * * *", "window = \"10m\"\n"),
            created_at_ms: 0,
            updated_at_ms: 0,
            last_tick_ms: 0,
            paused: None,
            tested: Default::default(),
            overdue_notified: None,
        };
        let s = minutely.spec.schedule().expect("schedule");
        // A tick whose start is jittered to the last half second before the next tick.
        let tick = (1..20_000i64)
            .map(|k| k * 60_000)
            .find(|t| {
                crate::schedule::jitter_ms("shop", *t, 600_000) > 59_500
                    && crate::schedule::jitter_ms("shop", *t + 60_000, 600_000) > 1_000
            })
            .expect("such a tick exists");
        let mut d = minutely.clone();
        d.last_tick_ms = tick - 60_000;
        let start = tick + crate::schedule::jitter_ms("shop", tick, 600_000) as i64;
        // The next tick has come, its own start not yet: this tick runs now, nothing is missed.
        let now = tick + 60_000 + 100;
        assert!(now > start);
        match decide(&d, &s, now, false) {
            Decision::Tick {
                tick_ms,
                fire,
                missed,
                ..
            } => assert_eq!((tick_ms, fire, missed), (tick, true, None)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overlap_skip_pause_and_resume() {
        let d = drill("window = \"8s\"\n", 50_000);
        let s = d.spec.schedule().expect("schedule");
        assert!(matches!(
            decide(&d, &s, 60_900, true),
            Decision::Tick {
                fire: false,
                skipped: Some(_),
                missed: None,
                ..
            }
        ));
        let queue = drill("window = \"8s\"\noverlap = \"queue\"\n", 50_000);
        assert!(matches!(
            decide(&queue, &s, 60_900, true),
            Decision::Tick { fire: true, .. }
        ));
        let mut paused = d.clone();
        paused.paused = Some(Pause {
            reason: "maintenance".into(),
            at_ms: 0,
            until_ms: None,
        });
        assert_eq!(decide(&paused, &s, 60_900, false), Decision::Wait);
        paused.paused = Some(Pause {
            reason: "maintenance".into(),
            at_ms: 0,
            until_ms: Some(60_000),
        });
        assert!(
            matches!(decide(&paused, &s, 60_900, false), Decision::Tick { .. }),
            "a pause with an end ends by itself"
        );
    }

    #[test]
    fn the_start_is_jittered_inside_the_window() {
        let hourly = Drill {
            spec: spec_on("0 * * * *", "window = \"1h\"\n"),
            created_at_ms: 0,
            updated_at_ms: 0,
            last_tick_ms: 0,
            paused: None,
            tested: Default::default(),
            overdue_notified: None,
        };
        let s = hourly.spec.schedule().expect("schedule");
        let tick = 3_600_000;
        let jitter = crate::schedule::jitter_ms(&hourly.spec.name, tick, 3_600_000) as i64;
        assert!(jitter > 0 && jitter <= 300_000);
        assert_eq!(
            decide(&hourly, &s, tick + jitter - 1, false),
            Decision::Wait
        );
        assert!(matches!(
            decide(&hourly, &s, tick + jitter, false),
            Decision::Tick { fire: true, .. }
        ));
    }

    fn rows(name: &str, rows: u64) -> TableRows {
        TableRows {
            name: name.into(),
            rows,
        }
    }

    #[test]
    fn drift_names_the_table_the_fall_and_the_run() {
        let before = [
            rows("public.orders", 20_000),
            rows("public.customers", 100),
            rows("public.gone", 5),
        ];
        let now = [rows("public.orders", 12_000), rows("public.customers", 95)];
        let reason = drift(&now, &before, "2026-11-01", 0.1).expect("drifted");
        assert!(
            reason.contains(
                "public.orders fell from 20000 to 12000 rows (-40%) since the run of 2026-11-01"
            ),
            "{reason}"
        );
        assert!(reason.contains("public.gone disappeared"), "{reason}");
        assert!(!reason.contains("customers"), "5% is within 10%: {reason}");
        assert_eq!(drift(&before, &before, "x", 0.1), None);
    }

    #[test]
    fn instants_as_databases_print_them() {
        let want = Some(1_764_667_200_123);
        assert_eq!(parse_instant("2025-12-02T09:20:00.123Z"), want);
        assert_eq!(parse_instant("2025-12-02 09:20:00.123+00"), want);
        assert_eq!(parse_instant("2025-12-02 10:20:00.123+01:00"), want);
        assert_eq!(parse_instant("2025-12-02 09:20:00.123"), want);
        assert_eq!(
            parse_instant("2025-12-02 09:20:00"),
            Some(1_764_667_200_000)
        );
        assert_eq!(parse_instant("yesterday"), None);
    }

    fn result(verdict: Option<Verdict>) -> JobResult {
        JobResult {
            job: "j".into(),
            verdict,
            artifact_url: String::new(),
            blake3: None,
            rto_ms: None,
            rpo_ms: None,
            phases: BTreeMap::new(),
            tables: Vec::new(),
            reason: Some("why".into()),
            restore_point: None,
            profile: None,
            exported: None,
            consistency: Vec::new(),
        }
    }

    #[test]
    fn a_run_fails_only_on_a_bad_backup_and_errors_are_not_failures() {
        use Verdict::*;
        assert_eq!(
            finish_run(&[result(Some(Passed))], None).0,
            RunOutcome::Passed
        );
        assert_eq!(
            finish_run(&[result(Some(Passed)), result(Some(Error))], None).0,
            RunOutcome::Error
        );
        assert_eq!(
            finish_run(&[result(Some(Error)), result(Some(Failed))], None).0,
            RunOutcome::Failed
        );
        assert_eq!(
            finish_run(&[result(Some(Passed))], Some("drift".into())).0,
            RunOutcome::Failed
        );
        assert_eq!(finish_run(&[result(None)], None).0, RunOutcome::Cancelled);
    }

    fn run(outcome: RunOutcome, finished_at_ms: u64) -> Run {
        Run {
            exercise: None,
            drill: "shop".into(),
            tick_ms: 0,
            manual: false,
            created_at_ms: 0,
            start_ms: 0,
            finished_at_ms: Some(finished_at_ms),
            outcome,
            reason: None,
            version: String::new(),
            jobs: Vec::new(),
            results: Vec::new(),
            missed: None,
            archived: false,
        }
    }

    #[test]
    fn status_follows_the_runs() {
        let d = drill("alert_after = \"35d\"\n", 0);
        let day = 86_400_000;
        assert_eq!(status(&d, &[], day), Status::NeverRun);
        let passed = run(RunOutcome::Passed, day);
        let failed = run(RunOutcome::Failed, 2 * day);
        let errored = run(RunOutcome::Error, 3 * day);
        let missed = run(RunOutcome::Missed, 4 * day);
        assert_eq!(status(&d, &[&passed], 2 * day), Status::Ok);
        assert_eq!(status(&d, &[&passed, &failed], 3 * day), Status::Failing);
        assert_eq!(
            status(&d, &[&passed, &errored, &missed], 5 * day),
            Status::Failing
        );
        assert_eq!(status(&d, &[&passed], 37 * day), Status::Overdue);
        assert_eq!(
            status(&d, &[], 36 * day),
            Status::Overdue,
            "never passed since creation"
        );
        let mut paused = d.clone();
        paused.paused = Some(Pause {
            reason: "x".into(),
            at_ms: 0,
            until_ms: None,
        });
        assert_eq!(status(&paused, &[&failed], 3 * day), Status::Paused);
    }
}
