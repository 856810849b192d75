//! Benchmark for the drill ticker (issue 14), on a 3-node loopback cluster: N drills (default
//! 10,000) each firing every minute, `overlap = "queue"` so every tick creates a job.
//!
//! - tick → job lag: from the instant a run was due (its tick plus its jitter) to the job's
//!   creation as the log has it (`submitted_at_ms`, the leader's clock), p50/p99/max;
//! - the leader's CPU while drills tick (utime + stime of its process over the window), as a
//!   share of one core.
//!
//!   cargo build --release -p rehearse --bin rehearse -p rehearse-coordinator --example drill_bench
//!   target/release/examples/drill_bench target/release/rehearse [DRILLS] [MINUTES]
//!
//! Prints one JSON object.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rehearse_core::schedule::jitter_ms;
use rehearse_loadtest::cluster::{Cluster, percentile};

const WINDOW_MS: u64 = 10 * 60 * 1000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let (bin, args) = rehearse_loadtest::cluster::args();
    let drills: usize = rehearse_loadtest::cluster::number(&args, 2).unwrap_or(10_000);
    let minutes: u64 = rehearse_loadtest::cluster::number(&args, 3).unwrap_or(3);
    let mut c = Cluster::start(bin, 3, Vec::new()).await;
    let leader = c.leader().await;
    let leader_pid = c.procs[&leader].id();

    let applied = Instant::now();
    c.apply_drills(drills, |i| {
        format!(
            "[drill]\nname = \"drill-{i}\"\nschedule = \"* * * * *\"\nwindow = \"10m\"\noverlap = \"queue\""
        )
    })
    .await;
    let apply_s = applied.elapsed().as_secs_f64();

    // Measure whole minutes: from the next minute boundary on.
    let start = (now_ms() / 60_000 + 1) * 60_000;
    tokio::time::sleep(Duration::from_millis(start - now_ms())).await;
    let cpu_before = cpu_ticks(leader_pid);
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs(minutes * 60)).await;
    let cpu = (cpu_ticks(leader_pid) - cpu_before) as f64 / 100.0;
    let leader_cpu = cpu / wall.elapsed().as_secs_f64();
    // Let the last minute's jittered starts (up to a minute) land before reading.
    tokio::time::sleep(Duration::from_secs(65)).await;

    let jobs = c.client().list_jobs(None).await.expect("jobs");
    let mut lags: Vec<u64> = Vec::new();
    for j in &jobs {
        // drill-<slug>-<hash>-t<tick>-<i>; the slug is the drill's name here.
        let Some((head, _)) = j.id.rsplit_once('-') else {
            continue;
        };
        let Some((head, tick)) = head.rsplit_once("-t") else {
            continue;
        };
        let Ok(tick) = tick.parse::<i64>() else {
            continue;
        };
        if tick < start as i64 || tick >= (start + minutes * 60_000) as i64 {
            continue;
        }
        // (strip the id's own "drill-" once: the name itself starts with "drill-")
        let Some((name, _hash)) = head.strip_prefix("drill-").and_then(|h| h.rsplit_once('-'))
        else {
            continue;
        };
        let due = tick as u64 + jitter_ms(name, tick, WINDOW_MS);
        // In µs: `percentile` reports milliseconds from microseconds.
        lags.push(j.submitted_at_ms.saturating_sub(due) * 1000);
    }
    lags.sort_unstable();
    let expected = drills as u64 * minutes;
    println!(
        "{}",
        serde_json::json!({
            "drills": drills,
            "minutes": minutes,
            "apply_s": apply_s,
            "runs_expected": expected,
            "runs_created": lags.len(),
            "jobs_listed": jobs.len(),
            "tick_to_job_ms": {
                "p50": percentile(&lags, 0.50),
                "p99": percentile(&lags, 0.99),
                "max": lags.last().copied().unwrap_or(0) as f64 / 1000.0,
            },
            "leader_cpu_cores": leader_cpu,
            "leader_peak_rss_mb": c.peak_rss_mb(),
        })
    );
}
