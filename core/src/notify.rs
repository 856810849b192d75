//! Notifications' outbox in the replicated state: an event is written as the command that causes
//! it is applied (so every replica holds the same events, with the same ids), and leaves only by
//! [`Command::MarkSent`](crate::jobs::Command::MarkSent), which the leader proposes once every
//! channel that wants it has taken it. A leader that dies before that leaves the event in the
//! outbox, and the next leader sends it again under the same id (receivers dedupe on it).
//!
//! Events (command version 5): a job that ended `failed` (`verdict.failed`) or could not be
//! verified (`verdict.error`).

use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobState, JobStore};

/// The event kinds, as channels' `events` name them.
pub const KINDS: [&str; 2] = ["verdict.failed", "verdict.error"];

/// One notification, as receivers get it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Stable across leaders and retries: the receivers' idempotency key.
    pub id: String,
    pub kind: String,
    /// When what it tells of happened (ms since the Unix epoch).
    pub at_ms: u64,
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<String>,
    pub artifact: String,
    /// The failed phase and why, or why it could not be verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event {
    fn of(job: &Job, drill: Option<&str>) -> Option<Event> {
        let kind = match job.state {
            JobState::Failed => "verdict.failed",
            JobState::Error => "verdict.error",
            _ => return None,
        };
        let reason = job
            .report
            .as_ref()
            .and_then(|r| r.failure.as_ref())
            .map(|f| format!("{}: {}", f.phase, f.reason))
            .or_else(|| job.reason.clone());
        Some(Event {
            id: format!("{kind}-{}", job.id),
            kind: kind.to_owned(),
            at_ms: job.updated_at_ms,
            job: job.id.clone(),
            drill: drill.map(str::to_owned),
            artifact: job
                .report
                .as_ref()
                .map_or_else(|| job.plan.artifact.url.clone(), |r| r.artifact.url.clone()),
            reason,
        })
    }
}

impl JobStore {
    /// Events not yet taken by every channel, oldest first.
    pub fn outbox(&self) -> impl Iterator<Item = &Event> {
        let mut events: Vec<&Event> = self.outbox.values().collect();
        events.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
        events.into_iter()
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
        if let Some(event) = Event::of(job, drill.as_deref()) {
            job.notified = true;
            self.outbox.insert(event.id.clone(), event);
        }
    }

    pub(crate) fn mark_sent(&mut self, ids: &[String]) {
        for id in ids {
            self.outbox.remove(id);
        }
    }
}
