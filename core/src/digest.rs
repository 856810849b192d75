//! The daily digest: what ran in the day before a channel's digest time, for one notification.
//!
//! Computed as [`Command::Digest`](crate::jobs::Command::Digest) is applied, from the replicated
//! state only, so every replica writes the same event into the outbox: jobs that ended in the
//! window by state, each drill's runs in the window by outcome with its last RTO and the trend
//! of that RTO against the passed runs before it, and the drills overdue at the digest time.
//! A channel gets one digest per fire instant: the state keeps the last instant per channel.

use serde::{Deserialize, Serialize};

use crate::drill::{Run, RunOutcome};
use crate::jobs::{JobState, JobStore};

/// How far back a digest looks.
pub const WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// How many earlier passed runs the RTO trend compares with (their median).
const TREND_BASE: usize = 10;

/// Jobs that ended in the window, by final state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    pub passed: u64,
    pub failed: u64,
    pub error: u64,
    pub cancelled: u64,
}

/// Where a drill's RTO went: its last passed run against the median of the passed runs before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trend {
    /// More than 10 % slower.
    Up,
    /// More than 10 % faster.
    Down,
    Flat,
}

impl Trend {
    pub fn arrow(self) -> &'static str {
        match self {
            Trend::Up => "↑",
            Trend::Down => "↓",
            Trend::Flat => "→",
        }
    }
}

/// One drill's day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillDay {
    pub drill: String,
    pub passed: u64,
    pub failed: u64,
    pub error: u64,
    pub skipped: u64,
    pub missed: u64,
    /// The RTO of the last passed run in the window (the longest of its jobs').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
    pub overdue: bool,
    pub paused: bool,
}

/// A channel's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub since_ms: u64,
    pub until_ms: u64,
    pub jobs: JobCounts,
    pub drills: Vec<DrillDay>,
    /// Drills with no passed run within their `alert_after` at `until_ms`.
    pub overdue: Vec<String>,
}

fn run_rto(run: &Run) -> Option<u64> {
    run.results.iter().filter_map(|r| r.rto_ms).max()
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// The trend of `last` against the median of `before`.
fn trend(last: u64, before: Vec<u64>) -> Option<Trend> {
    let base = median(before)?;
    Some(if last.saturating_mul(10) > base.saturating_mul(11) {
        Trend::Up
    } else if last.saturating_mul(10) < base.saturating_mul(9) {
        Trend::Down
    } else {
        Trend::Flat
    })
}

impl Digest {
    /// The digest of the day ending at `until_ms`.
    pub fn of(store: &JobStore, until_ms: u64) -> Digest {
        let since_ms = until_ms.saturating_sub(WINDOW_MS);
        let within = |at: u64| at > since_ms && at <= until_ms;
        let mut jobs = JobCounts::default();
        for job in store.jobs.values().filter(|j| within(j.updated_at_ms)) {
            match job.state {
                JobState::Passed => jobs.passed += 1,
                JobState::Failed => jobs.failed += 1,
                JobState::Error => jobs.error += 1,
                JobState::Cancelled => jobs.cancelled += 1,
                _ => {}
            }
        }
        let mut drills = Vec::new();
        let mut overdue = Vec::new();
        for drill in store.drills() {
            let name = &drill.spec.name;
            let runs = store.runs(name);
            let is_overdue = crate::drill::overdue_since(drill, runs, until_ms).is_some();
            if is_overdue {
                overdue.push(name.clone());
            }
            let mut day = DrillDay {
                drill: name.clone(),
                passed: 0,
                failed: 0,
                error: 0,
                skipped: 0,
                missed: 0,
                rto_ms: None,
                trend: None,
                overdue: is_overdue,
                paused: drill.paused.is_some(),
            };
            let ended = |r: &&Run| r.finished_at_ms.is_some_and(within);
            for run in runs.iter().filter(ended) {
                match run.outcome {
                    RunOutcome::Passed => day.passed += 1,
                    RunOutcome::Failed => day.failed += 1,
                    RunOutcome::Error => day.error += 1,
                    RunOutcome::Skipped => day.skipped += 1,
                    RunOutcome::Missed => day.missed += 1,
                    _ => {}
                }
            }
            let passed: Vec<(usize, u64)> = runs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.outcome == RunOutcome::Passed)
                .filter_map(|(i, r)| Some((i, run_rto(r)?)))
                .collect();
            if let Some(&(last_i, last)) = passed.iter().rev().find(|(i, _)| ended(&&runs[*i])) {
                day.rto_ms = Some(last);
                let before: Vec<u64> = passed
                    .iter()
                    .filter(|(i, _)| *i < last_i)
                    .rev()
                    .take(TREND_BASE)
                    .map(|(_, rto)| *rto)
                    .collect();
                day.trend = trend(last, before);
            }
            drills.push(day);
        }
        Digest {
            since_ms,
            until_ms,
            jobs,
            drills,
            overdue,
        }
    }

    /// The digest as lines of text (a mail's plain part, a Slack message's body).
    pub fn lines(&self) -> Vec<String> {
        let j = &self.jobs;
        let mut out = vec![format!(
            "jobs: {} passed, {} failed, {} could not verify, {} cancelled",
            j.passed, j.failed, j.error, j.cancelled
        )];
        for d in &self.drills {
            let mut line = format!(
                "drill {}: {} passed, {} failed, {} could not verify, {} skipped, {} missed",
                d.drill, d.passed, d.failed, d.error, d.skipped, d.missed
            );
            if let Some(rto) = d.rto_ms {
                line.push_str(&format!(
                    "; RTO {}{}",
                    humantime::format_duration(std::time::Duration::from_millis(rto / 1000 * 1000)),
                    d.trend
                        .map(|t| format!(" {}", t.arrow()))
                        .unwrap_or_default()
                ));
            }
            if d.overdue {
                line.push_str("; OVERDUE");
            }
            if d.paused {
                line.push_str("; paused");
            }
            out.push(line);
        }
        if !self.overdue.is_empty() {
            out.push(format!("overdue: {}", self.overdue.join(", ")));
        }
        out
    }
}

impl JobStore {
    /// A channel's digest for fire instant `fire_ms`, once: a repeat (a new leader proposing it
    /// again) changes nothing.
    pub(crate) fn digest(&mut self, channel: &str, fire_ms: u64) {
        if self
            .digests
            .get(channel)
            .is_some_and(|last| *last >= fire_ms)
        {
            return;
        }
        self.digests.insert(channel.to_owned(), fire_ms);
        let digest = Digest::of(self, fire_ms);
        self.notify_digest(channel, fire_ms, digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trend_compares_with_the_median_before() {
        assert_eq!(trend(100, vec![]), None);
        assert_eq!(trend(120, vec![100, 90, 110]), Some(Trend::Up));
        assert_eq!(trend(80, vec![100, 90, 110]), Some(Trend::Down));
        assert_eq!(trend(105, vec![100, 90, 110]), Some(Trend::Flat));
    }
}
