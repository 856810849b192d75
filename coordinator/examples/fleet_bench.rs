//! Benchmark for the fleet (issue 4), on a 3-node loopback cluster with default settings:
//! - submit → assignment: from the start of a submit to the assignment arriving on an idle
//!   worker's stream, one job at a time (p50/p99);
//! - worker loss → re-queue: a worker holding a job stops heartbeating; the time until the job
//!   is assigned again, to the other worker.
//!
//! The workers here are the protocol only (register, heartbeat, stream, verdict): what is measured
//! is the coordinator's side, which a real worker does not change.
//!
//!   cargo build --release -p rehearse --bin rehearse -p rehearse-coordinator --example fleet_bench
//!   target/release/examples/fleet_bench target/release/rehearse [ROUNDS] [LOSS_ROUNDS]
//!
//! Prints one JSON object.

use std::time::{Duration, Instant};

use rehearse_core::report::Report;
use rehearse_proto::v1 as pb;
use tokio::task::JoinHandle;

use rehearse_loadtest::cluster::{Cluster, percentile};

use rehearse_loadtest::cluster::PLAN;

/// Registers a protocol-only worker and keeps it heartbeating until the task is aborted.
async fn join(c: &Cluster, name: &str, incarnation: u64) -> JoinHandle<()> {
    let mut client = c.client();
    let r = client
        .register_worker(pb::RegisterWorkerRequest {
            name: name.into(),
            incarnation,
            region: "eu".into(),
            labels: Default::default(),
            slots: 1,
        })
        .await
        .expect("register");
    let every = Duration::from_millis(r.heartbeat_ms);
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let _ = client.heartbeat(&name, incarnation).await;
        }
    })
}

fn verdict_json() -> String {
    let mut r = Report::new(PLAN, "postgres", "process", "2026-11-22T00:00:00Z".into());
    r.fail("restore", "benchmark");
    serde_json::to_string(&r).expect("json")
}

#[tokio::main]
async fn main() {
    let (bin, args) = rehearse_loadtest::cluster::args();
    let rounds: usize = rehearse_loadtest::cluster::number(&args, 2).unwrap_or(500);
    let loss_rounds: usize = rehearse_loadtest::cluster::number(&args, 3).unwrap_or(3);
    let c = Cluster::start(bin, 3, Vec::new()).await;
    let mut client = c.client();
    let report = verdict_json();

    // submit → assignment, one job at a time on an idle worker
    let beats = join(&c, "bench-a", 1).await;
    let mut stream = client.assignments("bench-a", 1).await.expect("stream");
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let id = client.submit(PLAN).await.expect("submit");
        let token = loop {
            let set = stream
                .message()
                .await
                .expect("stream")
                .expect("stream open");
            if let Some(a) = set.assignments.iter().find(|a| a.job_id == id) {
                break a.token;
            }
        };
        latencies.push(t.elapsed().as_micros() as u64);
        client.verdict(&id, token, &report).await.expect("verdict");
    }
    latencies.sort_unstable();
    drop(stream);
    beats.abort();

    // worker loss → re-queue: the holder goes silent; time until the job is assigned elsewhere.
    let mut requeue_ms = Vec::new();
    for round in 0..loss_rounds as u64 {
        let inc = 100 + round;
        let a = join(&c, "bench-a", inc).await;
        let id = client.submit(PLAN).await.expect("submit");
        loop {
            let job = client.get_job(&id).await.expect("get");
            if !job.attempts.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let b = join(&c, "bench-b", inc).await;
        a.abort();
        let lost = Instant::now();
        let job = loop {
            let job = client.get_job(&id).await.expect("get");
            if job.attempts.len() == 2 {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        requeue_ms.push(lost.elapsed().as_millis() as u64);
        assert_eq!(job.attempts[0].outcome, "lost");
        assert_eq!(job.attempts[1].worker, "bench-b");
        client
            .verdict(&id, job.attempts[1].token, &report)
            .await
            .expect("verdict");
        b.abort();
    }
    println!(
        "{{\"rounds\": {rounds}, \"submit_to_assignment_ms\": {{\"p50\": {:.2}, \"p99\": {:.2}, \"max\": {:.2}}}, \"lease_ms\": 10000, \"worker_silent_to_requeued_ms\": {requeue_ms:?}}}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
}
