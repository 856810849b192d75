//! History that grows without bound — finished drill runs and the summaries of forgotten jobs —
//! leaves the in-memory state as it is made: applying a command may emit [`HistoryOp`]s, which
//! the coordinator writes into history tables of their own (so the state blob persisted at each
//! compaction stays the size of what is live), and a follower installing a snapshot receives
//! them too. Replays emit the same operations with the same keys: writing them twice is harmless.
//!
//! - A drill's run goes to the history when it ends (missed and skipped records at once); the
//!   state keeps its running runs and the last few ended ones (status, drift, overlap).
//! - A finished job older than the retention (`ForgetJobs`) leaves the state; its summary stays
//!   in the history, so `job get` can say what became of it.

use serde::{Deserialize, Serialize};

use crate::drill::Run;
use crate::jobs::{AttemptOutcome, Job, JobState, JobStore};
use crate::report::Verdict;

/// How many ended runs of each drill the state keeps besides the history.
pub const RECENT_RUNS: usize = 8;

/// A write to the history tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HistoryOp {
    /// An ended run (or a missed/skipped record), under [`run_key`].
    Run(Run),
    /// A job that left the state.
    Job(JobSummary),
    /// Runs of `drill` whose tick is before `before_tick_ms` are past the drill's `keep`.
    Prune { drill: String, before_tick_ms: i64 },
    /// A final verdict appended to the evidence chain, under [`crate::evidence::key`].
    Evidence(Box<crate::evidence::Record>),
}

/// What stays of a job after it left the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub state: JobState,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    pub submitted_at_ms: u64,
    pub finished_at_ms: u64,
    pub forgotten_at_ms: u64,
    pub artifact_url: String,
    pub attempts: Vec<(String, Option<AttemptOutcome>)>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The drill run it belonged to: (drill, tick).
    #[serde(default)]
    pub drill: Option<(String, i64)>,
}

impl JobSummary {
    fn of(job: &Job, drill: Option<(String, i64)>, at_ms: u64) -> JobSummary {
        JobSummary {
            id: job.id.clone(),
            state: job.state,
            verdict: job.report.as_ref().map(|r| r.verdict),
            submitted_at_ms: job.submitted_at_ms,
            finished_at_ms: job.updated_at_ms,
            forgotten_at_ms: at_ms,
            artifact_url: job
                .report
                .as_ref()
                .map_or_else(|| job.plan.artifact.url.clone(), |r| r.artifact.url.clone()),
            attempts: job
                .attempts
                .iter()
                .map(|a| (a.worker.clone(), a.outcome))
                .collect(),
            reason: job.reason.clone().or_else(|| {
                job.report
                    .as_ref()
                    .and_then(|r| r.failure.as_ref())
                    .map(|f| format!("{}: {}", f.phase, f.reason))
            }),
            drill,
        }
    }
}

/// The history key of a run: ordered by drill, then tick (scans by drill are a key range).
pub fn run_key(drill: &str, tick_ms: i64, manual: bool) -> String {
    format!(
        "{drill}\u{0}{:020}{}",
        tick_ms.max(0),
        if manual { 'm' } else { 't' }
    )
}

/// The key range holding every run of `drill`: `[start, end)`.
pub fn drill_range(drill: &str) -> (String, String) {
    (format!("{drill}\u{0}"), format!("{drill}\u{1}"))
}

impl JobStore {
    /// The history writes made by the commands applied since the last call.
    pub fn take_history(&mut self) -> Vec<HistoryOp> {
        std::mem::take(&mut self.history_out)
    }

    /// Whether `ForgetJobs { before_ms }` would forget anything (the leader asks first).
    pub fn forgettable(&self, before_ms: u64) -> bool {
        self.jobs.values().any(|j| self.may_forget(j, before_ms))
    }

    fn may_forget(&self, job: &Job, before_ms: u64) -> bool {
        job.state.is_final()
            && job.updated_at_ms < before_ms
            // A running drill run still reads its jobs' results when it ends.
            && self
                .drill_jobs
                .get(&job.id)
                .is_none_or(|(drill, tick, manual)| !self.run_running(drill, *tick, *manual))
    }

    fn run_running(&self, drill: &str, tick_ms: i64, manual: bool) -> bool {
        self.run(drill, tick_ms, manual)
            .is_some_and(|r| r.outcome == crate::drill::RunOutcome::Running)
    }

    /// Finished jobs last changed before `before_ms` leave the state; their summaries go to the
    /// history. Returns how many.
    pub(crate) fn forget_jobs(&mut self, before_ms: u64, at_ms: u64) -> usize {
        let gone: Vec<String> = self
            .jobs
            .values()
            .filter(|j| self.may_forget(j, before_ms))
            .map(|j| j.id.clone())
            .collect();
        for id in &gone {
            let drill = self.drill_jobs.remove(id).map(|(d, t, _)| (d, t));
            if let Some(job) = self.jobs.remove(id) {
                self.history_out
                    .push(HistoryOp::Job(JobSummary::of(&job, drill, at_ms)));
            }
        }
        gone.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_order_by_drill_then_tick_and_ranges_hold_one_drill() {
        let a = run_key("shop", 5, false);
        let b = run_key("shop", 40, false);
        let c = run_key("shop2", 1, false);
        assert!(a < b && b < c);
        let (start, end) = drill_range("shop");
        assert!(start <= a && b < end);
        assert!(
            !(start <= c && c < end),
            "another drill is outside the range"
        );
    }
}
