//! What a worker tells Prometheus (`rehearse worker --metrics-listen ADDR`, `GET /metrics`):
//! its slots and running verifications, the verdicts it delivered with their RTO and phase
//! durations, and its heartbeats.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rehearse_core::report::Report;

type Labels = Vec<(String, String)>;

/// Durations of restores and phases: 12 buckets from 1 s to 49 hours (×3), as the coordinators'.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 3.0, 12))
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

pub struct WorkerMetrics {
    registry: Registry,
    slots: Gauge,
    running: Gauge,
    verdicts: Family<Labels, Counter>,
    rto: Histogram,
    phases: Family<Labels, Histogram, fn() -> Histogram>,
    heartbeats: Family<Labels, Counter>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}

impl Default for WorkerMetrics {
    fn default() -> WorkerMetrics {
        WorkerMetrics::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> WorkerMetrics {
        let mut registry = Registry::with_prefix("rehearse_worker");
        let m = WorkerMetrics {
            registry: Registry::default(),
            slots: Gauge::default(),
            running: Gauge::default(),
            verdicts: Family::default(),
            rto: seconds(),
            phases: Family::new_with_constructor(seconds as fn() -> Histogram),
            heartbeats: Family::default(),
        };
        registry.register("slots", "Verification slots", m.slots.clone());
        registry.register("running", "Verifications running", m.running.clone());
        registry.register(
            "verdicts",
            "Verdicts the coordinators accepted, by verdict",
            m.verdicts.clone(),
        );
        registry.register(
            "rto_seconds",
            "Measured RTO of passed verifications",
            m.rto.clone(),
        );
        registry.register(
            "phase_seconds",
            "Phase durations of delivered verdicts, by phase",
            m.phases.clone(),
        );
        registry.register(
            "heartbeats",
            "Heartbeats sent, by result (ok, failed)",
            m.heartbeats.clone(),
        );
        WorkerMetrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn set_slots(&self, slots: u32) {
        self.slots.set(i64::from(slots));
    }

    pub fn set_running(&self, running: usize) {
        self.running.set(running as i64);
    }

    pub fn heartbeat(&self, ok: bool) {
        self.heartbeats
            .get_or_create(&label("result", if ok { "ok" } else { "failed" }))
            .inc();
    }

    /// A verdict the coordinators accepted.
    pub fn delivered(&self, report: &Report) {
        self.verdicts
            .get_or_create(&label("verdict", report.verdict.as_str()))
            .inc();
        if report.verdict == rehearse_core::report::Verdict::Passed
            && let Some(rto) = report.rto_ms
        {
            self.rto.observe(rto as f64 / 1000.0);
        }
        for p in &report.phases {
            self.phases
                .get_or_create(&label("phase", p.name.as_str()))
                .observe(p.ms as f64 / 1000.0);
        }
    }
}
