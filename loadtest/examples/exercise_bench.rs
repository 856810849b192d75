//! Benchmark for issue 16: what a DR exercise's scheduling costs. Three coordinators on
//! loopback, 4 simulated workers (region "dr", 1 slot each) that answer every job after a fixed
//! time, and a 20-step exercise: 4 branches of 5 chained steps, the first step of each branch
//! after a common first step (a restore everything else depends on) — so at most 4 jobs run at
//! once, one per worker. The overhead is the achieved RTO minus the sum of the worker time
//! along the critical path (each step's job takes exactly DELAY on its worker): placement,
//! assignment streaming, verdict commit and the next step's submission, step after step.
//!
//!   cargo build --release -p rehearse
//!   cargo run --release -p rehearse-loadtest --example exercise_bench -- target/release/rehearse [DELAY_MS] [ROUNDS]
//!
//! Prints one JSON object.

use std::time::{Duration, SystemTime};

use rehearse_core::exercise::{ExerciseReport, ExerciseSpec};
use rehearse_core::report::{Report, Verdict};
use rehearse_loadtest::cluster::{Cluster, PLAN, args, number};
use rehearse_proto::client::{Client, ExerciseRpc};
use rehearse_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

/// One simulated worker: registers, heartbeats, and answers each assignment after `delay`.
async fn worker(addrs: Vec<String>, name: String, delay: Duration, stop: CancellationToken) {
    let mut c = Client::new(addrs).expect("client");
    let req = pb::RegisterWorkerRequest {
        name: name.clone(),
        incarnation: 1,
        region: "dr".into(),
        labels: Default::default(),
        slots: 1,
    };
    let reg = c.register_worker(req).await.expect("register");
    let every = Duration::from_millis(reg.heartbeat_ms.max(50));
    {
        let (mut c, name, stop) = (c.clone(), name.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(every).await;
                let _ = c.heartbeat(&name, 1).await;
            }
        });
    }
    let mut seen = std::collections::HashSet::new();
    while !stop.is_cancelled() {
        let Ok(mut stream) = c.assignments(&name, 1).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while let Ok(Some(set)) = tokio::select! {
            m = stream.message() => m,
            () = stop.cancelled() => return,
        } {
            for a in set.assignments {
                if !seen.insert((a.job_id.clone(), a.token)) {
                    continue;
                }
                let mut c = c.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut r = Report::new(
                        "file:///bench/step.dump",
                        "postgres",
                        "simulated",
                        humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    );
                    r.verdict = Verdict::Passed;
                    r.rto_ms = Some(delay.as_millis() as u64);
                    let json = serde_json::to_string(&r).expect("report");
                    let _ = c.verdict(&a.job_id, a.token, &json).await;
                });
            }
        }
    }
}

fn exercise_file() -> String {
    let mut text = String::from("[exercise]\nname = \"bench\"\nregion = \"dr\"\n");
    text += "[[step]]\nname = \"s0\"\nplan = \"p\"\ncritical = true\n";
    for branch in 0..4 {
        for i in 0..5 {
            let n = 1 + branch * 5 + i;
            let after = if i == 0 {
                "s0".to_owned()
            } else {
                format!("s{}", n - 1)
            };
            if n > 19 {
                break;
            }
            text += &format!("[[step]]\nname = \"s{n}\"\nplan = \"p\"\nafter = [\"{after}\"]\n");
        }
    }
    text
}

#[tokio::main]
async fn main() {
    let (bin, args) = args();
    let delay = Duration::from_millis(number(&args, 2).unwrap_or(500));
    let rounds: usize = number(&args, 3).unwrap_or(3);
    let mut cluster = Cluster::start(bin, 3, vec!["--lease".into(), "3s".into()]).await;
    let addrs = cluster.addr_list();
    let stop = CancellationToken::new();
    for i in 1..=4 {
        tokio::spawn(worker(addrs.clone(), format!("w{i}"), delay, stop.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spec = ExerciseSpec::from_toml(&exercise_file(), |_| Ok(PLAN.to_owned())).expect("spec");
    assert_eq!(spec.steps.len(), 20);
    let mut c = cluster.client();
    let mut overheads = Vec::new();
    let mut figures = Vec::new();
    for _ in 0..rounds {
        let answer = c
            .exercise(
                ExerciseRpc::Start,
                pb::ExerciseCall {
                    spec_json: serde_json::to_string(&spec).expect("spec"),
                    ..pb::ExerciseCall::default()
                },
            )
            .await
            .expect("start");
        let id = serde_json::from_str::<ExerciseReport>(&answer.json)
            .expect("report")
            .id;
        let report = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let answer = c
                .exercise(
                    ExerciseRpc::Get,
                    pb::ExerciseCall {
                        id: id.clone(),
                        ..pb::ExerciseCall::default()
                    },
                )
                .await
                .expect("get");
            let r: ExerciseReport = serde_json::from_str(&answer.json).expect("report");
            if r.state.is_final() {
                break r;
            }
        };
        assert_eq!(report.verdict, Some(Verdict::Passed), "{report:#?}");
        let rto = report.rto_ms.expect("rto");
        let worker_ms = report.critical_path.len() as u64 * delay.as_millis() as u64;
        let overhead = rto.saturating_sub(worker_ms);
        overheads.push(overhead);
        figures.push(serde_json::json!({
            "rto_ms": rto,
            "critical_path_steps": report.critical_path.len(),
            "critical_path_worker_ms": worker_ms,
            "overhead_ms": overhead,
        }));
        // Let the workers' slots settle between rounds.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    overheads.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "steps": 20,
            "workers": 4,
            "delay_ms": delay.as_millis() as u64,
            "rounds": figures,
            "overhead_ms_p50": overheads[overheads.len() / 2],
            "overhead_ms_max": overheads.last(),
        })
    );
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
}
