//! Benchmark for the coordinator (issue 3): committed submits/s on a 3-node loopback cluster with
//! batching, submit latency percentiles, and the time from killing the leader to a new leader
//! accepting writes.
//!
//!   cargo build --release -p rehearse
//!   cargo run --release -p rehearse-coordinator --example submit_bench -- target/release/rehearse [JOBS] [CLIENTS]
//!
//! Prints one JSON object.

use std::time::{Duration, Instant};

use rehearse_coordinator::client::Client;

use rehearse_loadtest::cluster::{Cluster, percentile};

use rehearse_loadtest::cluster::PLAN;

#[tokio::main]
async fn main() {
    let (bin, args) = rehearse_loadtest::cluster::args();
    let jobs: usize = rehearse_loadtest::cluster::number(&args, 2).unwrap_or(20_000);
    let clients: usize = rehearse_loadtest::cluster::number(&args, 3).unwrap_or(64);
    let mut c = Cluster::start(bin, 3, Vec::new()).await;
    // warm-up: connections, leader known to every client
    let _ = c.client().submit(PLAN).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut client = c.client();
        let n = jobs / clients + usize::from(k < jobs % clients);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                client.submit(PLAN).await.expect("acknowledged submit");
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut latencies = Vec::with_capacity(jobs);
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let listed = c.client().list_jobs(None).await.expect("list").len();

    // Failover: kill -9 the leader, time until a write is acknowledged again; three rounds.
    let mut failovers_ms = Vec::new();
    for _ in 0..3 {
        let leader = c.leader().await;
        if let Some(mut child) = c.procs.remove(&leader) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let killed = Instant::now();
        let mut client = Client::new(
            c.addrs
                .iter()
                .filter(|(id, _)| **id != leader)
                .map(|(_, a)| a.clone())
                .collect(),
        )
        .expect("client");
        client.submit(PLAN).await.expect("writes resume");
        failovers_ms.push(killed.elapsed().as_millis() as u64);
        c.spawn(leader);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let json = format!(
        "{{\"jobs\": {jobs}, \"clients\": {clients}, \"elapsed_s\": {elapsed:.3}, \"committed_submits_per_s\": {:.0}, \"submit_latency_ms\": {{\"p50\": {:.2}, \"p99\": {:.2}, \"max\": {:.2}}}, \"jobs_listed\": {listed}, \"leader_kill_to_write_ms\": {failovers_ms:?}}}",
        jobs as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!("{json}");
}
