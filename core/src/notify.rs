//! Notifications' outbox in the replicated state: an event is written as the command that causes
//! it is applied (so every replica holds the same events, with the same ids), and leaves only by
//! [`Command::MarkSent`](crate::jobs::Command::MarkSent), which the leader proposes once every
//! channel that wants it has taken it. A leader that dies before that leaves the event in the
//! outbox, and the next leader sends it again under the same id (receivers dedupe on it).
//!
//! Events (command version 5 on):
//! - `verdict.failed`, `verdict.error`: a job ended failed (the backup is bad) or could not be
//!   verified;
//! - `drill.failed` (a job failed or a table drifted), `drill.error`, `drill.skipped`,
//!   `drill.missed`: a drill's run ended so; `drill.overdue`: no passed run within its
//!   `alert_after` (once per stretch without one);
//! - `exercise.finished`: a DR exercise ended, with achieved against target RTO/RPO;
//! - `worker.lost` (silent past its lease), `worker.unhealthy` (its last attempts could not
//!   verify);
//! - `leader.changed`: a newly elected leader's first entry (writes paused for the election).
//! - `digest` (command version 6): a channel's daily digest ([`crate::digest`]).

use serde::{Deserialize, Serialize};

use crate::drill::{Run, RunOutcome};
use crate::jobs::{Job, JobState, JobStore};

/// The event kinds, as channels' `events` name them (a `digest` goes to the channel that asked
/// for it with `digest = "HH:MM Zone"`, whatever its `events`).
pub const KINDS: [&str; 11] = [
    "verdict.failed",
    "verdict.error",
    "drill.failed",
    "drill.error",
    "drill.skipped",
    "drill.missed",
    "drill.overdue",
    "exercise.finished",
    "worker.lost",
    "worker.unhealthy",
    "leader.changed",
];

/// One notification, as receivers get it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Stable across leaders and retries: the receivers' idempotency key.
    pub id: String,
    pub kind: String,
    /// When what it tells of happened (ms since the Unix epoch); 0 when the log does not say
    /// (`leader.changed`: an election's entry carries no clock).
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exercise: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// What happened, in words: the failed phase and why, the targets against what was achieved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The one channel a `digest` is for (every other event goes to each channel that wants it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A `digest`'s day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<crate::digest::Digest>,
}

impl Event {
    fn new(kind: &str, key: &str, at_ms: u64) -> Event {
        Event {
            id: format!("{kind}-{key}"),
            kind: kind.to_owned(),
            at_ms,
            job: None,
            drill: None,
            exercise: None,
            worker: None,
            artifact: None,
            reason: None,
            channel: None,
            digest: None,
        }
    }

    fn of_job(job: &Job, drill: Option<&str>) -> Option<Event> {
        let kind = match job.state {
            JobState::Failed => "verdict.failed",
            JobState::Error => "verdict.error",
            _ => return None,
        };
        let mut e = Event::new(kind, &job.id, job.updated_at_ms);
        e.job = Some(job.id.clone());
        e.drill = drill.map(str::to_owned);
        e.artifact = Some(
            job.report
                .as_ref()
                .map_or_else(|| job.plan.artifact.url.clone(), |r| r.artifact.url.clone()),
        );
        e.reason = job
            .report
            .as_ref()
            .and_then(|r| r.failure.as_ref())
            .map(|f| format!("{}: {}", f.phase, f.reason))
            .or_else(|| job.reason.clone());
        Some(e)
    }

    fn of_run(run: &Run) -> Option<Event> {
        let kind = match run.outcome {
            RunOutcome::Failed => "drill.failed",
            RunOutcome::Error => "drill.error",
            RunOutcome::Skipped => "drill.skipped",
            RunOutcome::Missed => "drill.missed",
            _ => return None,
        };
        let key = format!(
            "{}-{}{}",
            run.drill,
            run.tick_ms,
            if run.manual { "-manual" } else { "" }
        );
        let mut e = Event::new(kind, &key, run.finished_at_ms.unwrap_or(run.created_at_ms));
        e.drill = Some(run.drill.clone());
        e.job = run.jobs.first().cloned();
        e.reason = run.reason.clone();
        Some(e)
    }
}

impl JobStore {
    /// Events not yet taken by every channel, oldest first.
    pub fn outbox(&self) -> impl Iterator<Item = &Event> {
        let mut events: Vec<&Event> = self.outbox.values().collect();
        events.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
        events.into_iter()
    }

    fn notify(&mut self, event: Event) {
        if self.cluster_version() >= 5 {
            self.outbox.insert(event.id.clone(), event);
        }
    }

    /// A job's state changed: a `failed` or `error` end is an event (once per job).
    pub(crate) fn notify_job_changed(&mut self, id: &str) {
        if self.cluster_version() < 5 {
            return;
        }
        let drill = self.drill_of(id).map(str::to_owned);
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        if job.notified {
            return;
        }
        if let Some(event) = Event::of_job(job, drill.as_deref()) {
            job.notified = true;
            self.notify(event);
        }
    }

    /// A channel's digest (see [`crate::digest`]).
    pub(crate) fn notify_digest(
        &mut self,
        channel: &str,
        fire_ms: u64,
        digest: crate::digest::Digest,
    ) {
        let mut e = Event::new("digest", &format!("{channel}-{fire_ms}"), fire_ms);
        e.channel = Some(channel.to_owned());
        e.digest = Some(digest);
        self.notify(e);
    }

    /// A drill's run ended (it is sent to the history once: called for each such run once).
    pub(crate) fn notify_run_ended(&mut self, run: &Run) {
        if let Some(event) = Event::of_run(run) {
            self.notify(event);
        }
    }

    /// An exercise ended: its verdict, and each target against what was achieved.
    pub(crate) fn notify_exercise_ended(&mut self, id: &str) {
        let Some(ex) = self.exercises.get(id) else {
            return;
        };
        let report = ex.report();
        let mut e = Event::new(
            "exercise.finished",
            id,
            ex.finished_at_ms.unwrap_or(ex.started_at_ms),
        );
        e.exercise = Some(id.to_owned());
        let targets: Vec<String> = report
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{} {} (target {}{})",
                    t.name.to_uppercase(),
                    t.observed_ms
                        .map_or_else(|| "not measured".to_owned(), crate::report::human_ms),
                    crate::report::human_ms(t.target_ms),
                    if t.ok { ", met" } else { ", missed" }
                )
            })
            .collect();
        e.reason = Some(
            [
                format!(
                    "{} {}",
                    report.name,
                    report.verdict.map_or("ended", |v| v.as_str())
                ),
                targets.join(", "),
                report.reason.clone().unwrap_or_default(),
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        );
        self.notify(e);
    }

    /// A worker was declared lost, or turned unhealthy.
    pub(crate) fn notify_worker(&mut self, kind: &str, name: &str, at_ms: u64, reason: String) {
        let mut e = Event::new(kind, &format!("{name}-{at_ms}"), at_ms);
        e.worker = Some(name.to_owned());
        e.reason = Some(reason);
        self.notify(e);
    }

    /// Drills overdue at `now_ms` and not yet notified for that stretch: (name, since). The
    /// leader proposes a [`DrillOverdue`](crate::jobs::Command::DrillOverdue) for each.
    pub fn overdue_to_notify(&self, now_ms: u64) -> Vec<(String, u64)> {
        self.drills()
            .filter_map(|d| {
                let since = crate::drill::overdue_since(d, self.runs(&d.spec.name), now_ms)?;
                (d.overdue_notified != Some(since)).then(|| (d.spec.name.clone(), since))
            })
            .collect()
    }

    pub(crate) fn drill_overdue(&mut self, name: &str, since_ms: u64, at_ms: u64) {
        let Some(d) = self.drills.get_mut(name) else {
            return;
        };
        if d.overdue_notified == Some(since_ms) {
            return;
        }
        d.overdue_notified = Some(since_ms);
        let limit = d.spec.alert_after_ms.unwrap_or_default();
        let mut e = Event::new("drill.overdue", &format!("{name}-{since_ms}"), at_ms);
        e.drill = Some(name.to_owned());
        e.reason = Some(format!(
            "no passed run since {} (alert_after {})",
            crate::report::utc_rfc3339(since_ms as i64),
            crate::report::human_ms(limit)
        ));
        self.notify(e);
    }

    /// A newly elected leader's first entry, at `index` in `term`.
    pub(crate) fn notify_leader_changed(&mut self, index: u64, term: u64) {
        let mut e = Event::new("leader.changed", &format!("{term}-{index}"), 0);
        e.reason = Some(format!(
            "a new leader was elected in term {term} (log index {index}); writes paused for the election"
        ));
        self.notify(e);
    }

    pub(crate) fn mark_sent(&mut self, ids: &[String]) {
        for id in ids {
            self.outbox.remove(id);
        }
    }
}
