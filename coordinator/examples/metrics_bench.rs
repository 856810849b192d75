//! Benchmark for issue 18: what a `/metrics` scrape costs a coordinator with 10,000 drills. Builds
//! the applied state of 10,000 drills (each firing every minute) and a finished job per drill,
//! feeds one passed verdict per drill into the metrics (an RTO histogram per drill: 10,000 series;
//! phases by phase), then times the raft thread's gauge refresh and a scrape's encoding.
//!
//!   cargo run --release -p rehearse-coordinator --example metrics_bench -- [DRILLS] [ROUNDS]
//!
//! Prints one JSON line.

use std::time::Instant;

use rehearse_coordinator::metrics::Metrics;
use rehearse_core::drill::DrillSpec;
use rehearse_core::jobs::{Command, JobStore};
use rehearse_core::report::{Phase, PhaseReport, Report, Verdict};
use rehearse_loadtest::cluster::{PLAN, percentile};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let drills: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let mut store = JobStore::default();
    let mut index = 0;
    for i in 0..drills {
        let text = format!(
            "[drill]\nname = \"drill-{i}\"\nschedule = \"* * * * *\"\nwindow = \"10m\"\n[plan]\n{}",
            PLAN.replace("[artifact]", "[plan.artifact]")
        );
        let spec = DrillSpec::from_toml(&text, |_| Err("no files".into())).expect("drill");
        index += 1;
        store.apply(
            index,
            &Command::ApplyDrill {
                spec: Box::new(spec),
                at_ms: 0,
            },
        );
    }
    let metrics = Metrics::new();
    let mut report = Report::new("file:///b/x.dump", "postgres", "process", String::new());
    report.verdict = Verdict::Passed;
    report.rto_ms = Some(42_000);
    report.phases = Phase::ALL
        .iter()
        .map(|p| PhaseReport {
            name: *p,
            ms: 7_000,
            ok: true,
        })
        .collect();
    for i in 0..drills {
        metrics.verdict(&format!("drill-{i}"), &report);
    }
    let (mut refresh, mut encode) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        metrics.refresh(&store, (1, index, index, true), false);
        refresh.push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        bytes = metrics.encode().len();
        encode.push(t.elapsed().as_micros() as u64);
    }
    refresh.sort_unstable();
    encode.sort_unstable();
    println!(
        "{{\"drills\": {drills}, \"rounds\": {rounds}, \"scrape_bytes\": {bytes}, \"encode_ms_p50\": {:.1}, \"encode_ms_max\": {:.1}, \"refresh_ms_p50\": {:.2}, \"refresh_ms_max\": {:.2}}}",
        percentile(&encode, 0.5),
        percentile(&encode, 1.0),
        percentile(&refresh, 0.5),
        percentile(&refresh, 1.0),
    );
}
