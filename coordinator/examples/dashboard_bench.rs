//! Benchmark for issue 17: the dashboard's overview page with N drills (default 10,000), served
//! by a real coordinator (`rehearse coordinator --http-listen`, one node on loopback) over real
//! HTTP: each request reads the drills (ReadIndex), computes their next fire time and status, and
//! renders the HTML. Times R requests one after another after the drills are applied.
//!
//!   cargo build --release -p rehearse --bin rehearse -p rehearse-coordinator --example dashboard_bench
//!   target/release/examples/dashboard_bench target/release/rehearse [DRILLS] [REQUESTS]
//!
//! Prints one JSON object.

use std::time::{Duration, Instant};

use rehearse_loadtest::cluster::{Cluster, free_port, percentile};

#[tokio::main]
async fn main() {
    let (bin, args) = rehearse_loadtest::cluster::args();
    let drills: usize = rehearse_loadtest::cluster::number(&args, 2).unwrap_or(10_000);
    let requests: usize = rehearse_loadtest::cluster::number(&args, 3).unwrap_or(20);
    let http = format!("127.0.0.1:{}", free_port());
    let mut c = Cluster::start(bin, 1, vec!["--http-listen".into(), http.clone()]).await;
    c.leader().await;
    c.apply_drills(drills, |i| {
        format!(
            "[drill]\nname = \"drill-{i}\"\nschedule = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\""
        )
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let url = format!("http://{http}/");
    let mut times = Vec::new();
    let mut bytes = 0;
    // One request to warm up (connection, caches), then the measured ones.
    for i in 0..=requests {
        let t = Instant::now();
        let page = client
            .get(&url)
            .send()
            .await
            .expect("get")
            .error_for_status()
            .expect("200")
            .text()
            .await
            .expect("body");
        let us = t.elapsed().as_micros() as u64;
        assert!(
            page.contains(&format!("drill-{}", drills - 1)),
            "every drill is listed"
        );
        bytes = page.len();
        if i > 0 {
            times.push(us);
        }
    }
    times.sort_unstable();
    println!(
        "{{\"drills\": {drills}, \"requests\": {requests}, \"page_bytes\": {bytes}, \"p50_ms\": {:.1}, \"max_ms\": {:.1}}}",
        percentile(&times, 0.5),
        percentile(&times, 1.0)
    );
}
