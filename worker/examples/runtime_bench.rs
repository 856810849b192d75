//! Provision and end-to-end time, docker runtime against process runtime, on the same dumps.
//!
//!     cargo run --release -p rehearse-worker --example runtime_bench -- [ROUNDS] [ORDERS]
//!
//! Makes the shop sample in PostgreSQL (pg_dump custom) and in MariaDB (mariadb-dump), then
//! verifies each dump ROUNDS times per runtime, alternating runtimes so drift hits both alike,
//! and prints p50 / min / max of the provision phase and of the whole verification (RTO plus
//! teardown) with the docker / process ratios. Needs root (the process sandbox user), a Docker
//! engine and the images from deploy/images/build.

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use rehearse_core::plan::Plan;
use rehearse_core::report::{Phase, Report, Verdict};
use rehearse_worker::runtime::RuntimeChoice;
use rehearse_worker::sample::{self, DumpFormat, SampleDatabase};
use rehearse_worker::{Verifier, VerifyOptions};
use tokio_util::sync::CancellationToken;

fn p50(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

struct Samples {
    provision: Vec<u64>,
    total: Vec<u64>,
}

async fn once(v: &Verifier, plan: &Plan) -> (u64, u64) {
    let started = Instant::now();
    let report: Report = v
        .verify(plan, &CancellationToken::new())
        .await
        .expect("a verdict");
    let total = started.elapsed().as_millis() as u64;
    assert_eq!(report.verdict, Verdict::Passed, "{:?}", report.failure);
    let provision = report
        .phases
        .iter()
        .find(|p| p.name == Phase::Provision)
        .map_or(0, |p| p.ms);
    (provision, total)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let orders: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let work = tempfile::Builder::new()
        .prefix("rh-bench-")
        .tempdir()
        .expect("work");
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let options = |runtime| VerifyOptions {
        work_root: work.path().to_owned(),
        runtime,
        worker_name: "bench".into(),
        ..VerifyOptions::default()
    };
    let process = Verifier::start(options(RuntimeChoice::Process))
        .await
        .expect("process");
    let docker = Verifier::start(options(RuntimeChoice::Docker))
        .await
        .expect("docker");
    let dumps = tempfile::tempdir().expect("dumps");
    let pg_dump = dumps.path().join("shop.dump");
    let db = SampleDatabase::create(&process, orders)
        .await
        .expect("pg sample");
    db.dump(DumpFormat::Custom, &pg_dump)
        .await
        .expect("pg_dump");
    db.stop().await.expect("stop");
    let my_dump = dumps.path().join("shop.sql");
    sample::mysql_sample(&process, orders, &my_dump)
        .await
        .expect("mariadb sample");
    let plans = [
        ("postgres", sample::demo_plan(&pg_dump, orders, None)),
        (
            "mysql",
            Plan::from_toml(&format!(
                "[artifact]\nurl = \"{}\"\nengine = \"mysql\"\n[[checks]]\nname = \"orders\"\nsql = \"SELECT COUNT(*) FROM orders\"\nexpect = \"= {orders}\"\n",
                my_dump.display()
            ))
            .expect("plan"),
        ),
    ];
    println!("{rounds} rounds each, {orders} orders; ms");
    println!("engine    runtime   provision p50 (min-max)   end-to-end p50 (min-max)");
    for (engine, plan) in &plans {
        // One warm-up each: templates and page cache.
        once(&process, plan).await;
        once(&docker, plan).await;
        let mut runs = [
            Samples {
                provision: vec![],
                total: vec![],
            },
            Samples {
                provision: vec![],
                total: vec![],
            },
        ];
        for _ in 0..rounds {
            for (i, v) in [&process, &docker].into_iter().enumerate() {
                let (p, t) = once(v, plan).await;
                runs[i].provision.push(p);
                runs[i].total.push(t);
            }
        }
        let mut medians = Vec::new();
        for (i, name) in ["process", "docker"].into_iter().enumerate() {
            let s = &mut runs[i];
            let (pp, tp) = (p50(&mut s.provision), p50(&mut s.total));
            println!(
                "{engine:9} {name:9} {pp:>6} ({}-{})            {tp:>6} ({}-{})",
                s.provision[0],
                s.provision[s.provision.len() - 1],
                s.total[0],
                s.total[s.total.len() - 1]
            );
            medians.push((pp, tp));
        }
        println!(
            "{engine:9} docker/process: provision {:.2}x, end-to-end {:.2}x",
            medians[1].0 as f64 / medians[0].0.max(1) as f64,
            medians[1].1 as f64 / medians[0].1.max(1) as f64
        );
    }
}
