//! What a coordinator tells Prometheus (`GET /metrics` on the HTTP listener, OpenMetrics text).
//!
//! Counters and histograms are observed as this node applies the log, so every replica counts
//! the same verdicts (a scrape of any node answers; `max` over the nodes is the cluster's count).
//! Gauges — jobs by state, workers, slots, Raft's term, commit and applied index — are refreshed
//! by the raft thread about once a second. Proposal latency and leader changes are this node's own.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rehearse_core::jobs::{Command, JobState, JobStore};
use rehearse_core::report::Verdict;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Durations of restores and phases: 12 buckets from 1 s to 49 hours (×3). Few on purpose: the
/// RTO histogram has one series per drill, and 10,000 drills with 21 buckets each made a scrape
/// 145 MB (BENCHMARKS.md, issue 18).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 3.0, 12))
}

/// Short latencies: 1 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn label(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub struct Metrics {
    registry: Registry,
    verdicts: Family<Labels, Counter>,
    rto: Histograms,
    phases: Histograms,
    queue_wait: Histogram,
    heartbeats: Counter,
    jobs: Family<Labels, Gauge>,
    workers: Family<Labels, Gauge>,
    slots: Family<Labels, Gauge>,
    drills: Gauge,
    term: Gauge,
    commit: Gauge,
    applied: Gauge,
    is_leader: Gauge,
    leader_changes: Counter,
    proposals: Histogram,
    history_copying: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rehearse");
        let m = Metrics {
            verdicts: Family::default(),
            rto: Family::new_with_constructor(seconds as fn() -> Histogram),
            phases: Family::new_with_constructor(seconds as fn() -> Histogram),
            queue_wait: seconds(),
            heartbeats: Counter::default(),
            jobs: Family::default(),
            workers: Family::default(),
            slots: Family::default(),
            drills: Gauge::default(),
            term: Gauge::default(),
            commit: Gauge::default(),
            applied: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposals: latency(),
            history_copying: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "verdicts",
            "Final verdicts applied, by verdict (passed, failed, error)",
            m.verdicts.clone(),
        );
        registry.register(
            "rto_seconds",
            "Measured RTO of passed verifications, by drill (empty: not a drill's job)",
            m.rto.clone(),
        );
        registry.register(
            "phase_seconds",
            "Phase durations of verdicts, by phase",
            m.phases.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "From submit to a job's first assignment",
            m.queue_wait.clone(),
        );
        registry.register(
            "heartbeats_applied",
            "Worker heartbeats applied",
            m.heartbeats.clone(),
        );
        registry.register("jobs", "Jobs in the state, by state", m.jobs.clone());
        registry.register(
            "workers",
            "Workers, by state (ready, draining, lost) and health",
            m.workers.clone(),
        );
        registry.register(
            "fleet_slots",
            "The fleet's verification slots (total, used)",
            m.slots.clone(),
        );
        registry.register("drills", "Drills defined", m.drills.clone());
        registry.register("raft_term", "This node's Raft term", m.term.clone());
        registry.register(
            "raft_commit_index",
            "This node's commit index",
            m.commit.clone(),
        );
        registry.register(
            "raft_applied_index",
            "This node's applied index",
            m.applied.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 while this node leads",
            m.is_leader.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leader changes this node saw",
            m.leader_changes.clone(),
        );
        registry.register(
            "raft_proposal_seconds",
            "From this node's proposal to its entry applied here",
            m.proposals.clone(),
        );
        registry.register(
            "history_copying",
            "1 while this node copies the history from a peer after a snapshot",
            m.history_copying.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// What applying `command` (already applied to `jobs`) counts.
    pub fn applied(&self, jobs: &JobStore, command: &Command) {
        match command {
            Command::Batch(commands) => commands.iter().for_each(|c| self.applied(jobs, c)),
            Command::Heartbeat { .. } => {
                self.heartbeats.inc();
            }
            Command::Report { job, report, .. } => {
                // Only a verdict that stands (a deferral or an error retried elsewhere is not).
                let Some(j) = jobs.get(job) else { return };
                if !j.state.is_final() || j.report.as_ref() != Some(report.as_ref()) {
                    return;
                }
                self.verdict(jobs.drill_of(job).unwrap_or_default(), report);
            }
            Command::Assign {
                assignments, at_ms, ..
            } => {
                for (id, _) in assignments {
                    if let Some(j) = jobs.get(id)
                        && j.attempts.len() == 1
                    {
                        self.queue_wait
                            .observe(at_ms.saturating_sub(j.submitted_at_ms) as f64 / 1000.0);
                    }
                }
            }
            _ => {}
        }
    }

    /// A verdict that stands, of a job of `drill` ("" outside drills).
    pub fn verdict(&self, drill: &str, report: &rehearse_core::report::Report) {
        self.verdicts
            .get_or_create(&label(&[("verdict", report.verdict.as_str())]))
            .inc();
        if report.verdict == Verdict::Passed
            && let Some(rto) = report.rto_ms
        {
            self.rto
                .get_or_create(&label(&[("drill", drill)]))
                .observe(rto as f64 / 1000.0);
        }
        for p in &report.phases {
            self.phases
                .get_or_create(&label(&[("phase", p.name.as_str())]))
                .observe(p.ms as f64 / 1000.0);
        }
    }

    /// The gauges, from the state and Raft's status.
    pub fn refresh(&self, jobs: &JobStore, raft: (u64, u64, u64, bool), copying: bool) {
        for (state, n) in JobState::ALL.iter().zip(jobs.count_by_state()) {
            self.jobs
                .get_or_create(&label(&[("state", state.as_str())]))
                .set(n as i64);
        }
        self.workers.clear();
        let (mut total, mut used) = (0i64, 0i64);
        for w in jobs.workers() {
            let view = w.view();
            self.workers
                .get_or_create(&label(&[
                    ("state", view.state.as_str()),
                    ("healthy", if view.healthy { "true" } else { "false" }),
                ]))
                .inc();
            total += i64::from(view.slots);
            used += i64::from(view.used);
        }
        self.slots
            .get_or_create(&label(&[("kind", "total")]))
            .set(total);
        self.slots
            .get_or_create(&label(&[("kind", "used")]))
            .set(used);
        self.drills.set(jobs.drills().count() as i64);
        let (term, commit, applied, leader) = raft;
        self.term.set(term as i64);
        self.commit.set(commit as i64);
        self.applied.set(applied as i64);
        self.is_leader.set(i64::from(leader));
        self.history_copying.set(i64::from(copying));
    }

    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    pub fn proposal_applied(&self, latency: std::time::Duration) {
        self.proposals.observe(latency.as_secs_f64());
    }
}
