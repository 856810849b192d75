//! The loadtest's scenarios at a small scale, against real coordinator processes: whatever the
//! scenario does to the cluster, every acknowledged job ends, and none has two verdicts.

use std::path::PathBuf;
use std::time::Duration;

use rehearse_loadtest::{Figures, Options, Scenario, run};

fn options(jobs: u64, workers: u64) -> Options {
    Options {
        jobs,
        workers,
        slots: 2,
        rate: None,
        clients: 8,
        delay: Duration::ZERO,
        coordinators: None,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_rehearse")),
        lease: Duration::from_secs(2),
        job_retention: None,
        fail: false,
        notify: None,
        patience: Duration::from_secs(60),
        seed: 1,
    }
}

fn assert_sound(f: &Figures) {
    assert_eq!(f.lost, 0, "acknowledged jobs never finished: {f:?}");
    assert_eq!(f.duplicated, 0, "jobs with two accepted verdicts: {f:?}");
    assert_eq!(
        f.submit_latency_ms.count, f.jobs,
        "every submit acknowledged"
    );
    assert!(f.lifecycles_per_sec > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_every_job_gets_exactly_one_verdict() {
    let f = run(Scenario::Steady, options(400, 20)).await.expect("run");
    assert_sound(&f);
    assert_eq!(f.failed, 0);
    assert_eq!(f.assign_latency_ms.count, f.jobs, "every job delivered");
    assert_eq!(f.redelivered, 0, "nothing re-delivered when nothing dies");
    assert!(f.coordinator_rss_mb.is_some_and(|mb| mb > 1.0));
    let json = serde_json::to_value(&f).expect("json");
    for key in [
        "lifecycles_per_sec",
        "submit_latency_ms",
        "assign_latency_ms",
        "lost",
        "duplicated",
        "coordinator_rss_mb",
    ] {
        assert!(json.get(key).is_some(), "{key} in the JSON figures");
    }
    assert!(json["assign_latency_ms"]["p999"].is_number());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_kill_loses_and_doubles_nothing() {
    let f = run(Scenario::LeaderKill, options(1500, 20))
        .await
        .expect("run");
    assert_sound(&f);
    assert_eq!(
        f.leader_kills, 1,
        "the leader was killed while verdicts were due: {:?}",
        f.events
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_churn_loses_and_doubles_nothing() {
    let mut opts = options(600, 20);
    // Workers hold each job a while, so the ones that die take jobs with them.
    opts.delay = Duration::from_millis(100);
    let f = run(Scenario::WorkerChurn, opts).await.expect("run");
    assert_sound(&f);
    // The property: workers died mid-flow, their jobs ran again, and nothing was lost.
    assert!(f.workers_killed >= 1, "no worker died: {:?}", f.events);
    assert!(
        f.redelivered > 0,
        "no job was delivered again after its worker died: {f:?}"
    );
}

/// Two minutes of random faults — leader and follower kills, pauses, a node cut off by its
/// links, worker deaths — while jobs flow at 60/s and a drill fires every 2 s; then the history
/// checker. The seed comes from the clock and is printed on failure (`--seed` replays it).
#[tokio::test(flavor = "multi_thread")]
async fn the_nemesis_loses_doubles_and_goes_stale_on_nothing() {
    let mut opts = options(60 * 120, 12);
    opts.rate = Some(60.0);
    opts.slots = 4;
    opts.delay = Duration::from_millis(50);
    opts.patience = Duration::from_secs(90);
    opts.seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    let f = run(Scenario::Nemesis, opts).await.expect("run");
    let said = f.human();
    assert_sound(&f);
    assert_eq!(f.stale_verdicts, 0, "{said}");
    assert_eq!(f.doubled_ticks, 0, "{said}");
    assert!(f.drill_runs >= 20, "the drill ran along: {said}");
    assert!(f.faults.len() >= 15, "faults were injected: {said}");
    let kinds: std::collections::HashSet<&str> = f
        .faults
        .iter()
        .map(|x| match x.kind {
            "leader-kill" | "follower-kill" => "kill",
            k => k,
        })
        .collect();
    assert!(
        kinds.len() >= 3,
        "kills, pauses, partitions, worker deaths: {said}"
    );
    let json = serde_json::to_value(&f).expect("json");
    for key in ["lost", "duplicated", "faults", "lifecycles_per_sec", "seed"] {
        assert!(json.get(key).is_some(), "{key} in the JSON figures");
    }
    assert!(json["faults"][0]["at_s"].is_number() && json["faults"][0]["kind"].is_string());
}
