//! Benchmark for the coordinator (issue 3): committed submits/s on a 3-node loopback cluster with
//! batching, submit latency percentiles, and the time from killing the leader to a new leader
//! accepting writes.
//!
//!   cargo build --release -p rehearse
//!   cargo run --release -p rehearse-coordinator --example submit_bench -- target/release/rehearse [JOBS] [CLIENTS]
//!
//! Prints one JSON object.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rehearse_coordinator::client::Client;

const PLAN: &str = "[artifact]\nurl = \"/backups/shop.dump\"\nengine = \"postgres\"\n";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Cluster {
    bin: String,
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    procs: BTreeMap<u64, Child>,
}

impl Cluster {
    fn spawn(&mut self, id: u64) {
        let peers = self
            .addrs
            .iter()
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new(&self.bin)
            .args([
                "coordinator",
                "--id",
                &id.to_string(),
                "--listen",
                &self.addrs[&id],
                "--peers",
                &peers,
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{id}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        self.procs.insert(id, child);
    }

    fn client(&self) -> Client {
        Client::new(self.addrs.values().cloned().collect()).expect("client")
    }

    async fn leader(&mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (id, child) in &mut self.procs {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "coordinator {id} exited ({status}); is {} a current build?",
                        self.bin
                    );
                }
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            if let Ok(s) = self.client().status().await
                && s.leader != 0
            {
                return s.leader;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/rehearse".into());
    let jobs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let clients: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(64);
    let addrs = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    let mut c = Cluster {
        bin,
        dir: tempfile::tempdir().expect("dir"),
        addrs,
        procs: BTreeMap::new(),
    };
    for id in 1..=3 {
        c.spawn(id);
    }
    c.leader().await;
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
