//! Benchmark for issue 17: an evidence export of N verdicts (default 100,000). Writes a chain of
//! N records into a redb history table as the coordinator does, then times what `rehearse
//! evidence export` makes the leader do — read and check the whole chain, select the window,
//! render the HTML and the JSON, sign both — and what `evidence verify` does offline, and
//! reports the files' sizes.
//!
//!   cargo run --release -p rehearse-coordinator --example evidence_bench -- [VERDICTS]
//!
//! Prints one JSON object.

use std::time::Instant;

use rehearse_coordinator::evidence::{Signer, export, verify_dir};
use rehearse_core::evidence::{CheckResult, GENESIS, PhaseTime, Record, Target, Window};
use rehearse_core::history::HistoryOp;
use rehearse_core::report::Verdict;

fn record(seq: u64, prev: &str) -> Record {
    let drill = seq % 500;
    let verdict = if seq % 97 == 0 {
        Verdict::Failed
    } else {
        Verdict::Passed
    };
    let mut r = Record {
        seq,
        prev: prev.to_owned(),
        job: format!(
            "drill-shop-{drill}-a1b2c3d4-t{}-0",
            1_767_225_600_000 + seq * 60_000
        ),
        drill: Some(format!("shop-{drill}")),
        tick_ms: Some(1_767_225_600_000 + seq as i64 * 60_000),
        exercise: None,
        name: Some(format!("shop database {drill}")),
        artifact: format!("s3://backups/shop-{drill}/2026-01-01.dump"),
        engine: "postgres".into(),
        runtime: "docker".into(),
        verdict,
        submitted_at_ms: 1_767_225_600_000 + seq * 60_000,
        finished_at_ms: 1_767_225_600_000 + seq * 60_000 + 42_000,
        worker: Some(format!("worker-{}", seq % 8)),
        region: Some(if seq % 2 == 0 { "eu" } else { "us" }.into()),
        attempts: 1,
        rto_ms: Some(42_000 + seq % 1000),
        rpo_ms: Some(3_600_000),
        targets: vec![
            Target {
                name: "rto".into(),
                target_ms: 300_000,
                observed_ms: Some(42_000),
                ok: true,
            },
            Target {
                name: "rpo".into(),
                target_ms: 93_600_000,
                observed_ms: Some(3_600_000),
                ok: true,
            },
        ],
        phases: rehearse_core::report::Phase::UNPROMOTED
            .iter()
            .map(|p| PhaseTime {
                name: p.as_str().into(),
                ms: 7_000,
                ok: true,
            })
            .collect(),
        checks: vec![
            CheckResult {
                name: "orders".into(),
                ok: verdict == Verdict::Passed,
            },
            CheckResult {
                name: "customers".into(),
                ok: true,
            },
        ],
        failure: (verdict == Verdict::Failed).then(|| "checks: orders: observed 0".into()),
        hash: String::new(),
    };
    r.hash = r.digest();
    r
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let db = redb::Database::create(dir.path().join("history.redb")).expect("db");
    let mut prev = GENESIS.to_owned();
    let mut head = None;
    let mut ops = Vec::new();
    for seq in 1..=n {
        let r = record(seq, &prev);
        prev = r.hash.clone();
        head = Some(r.head());
        ops.push(HistoryOp::Evidence(Box::new(r)));
        if ops.len() == 10_000 || seq == n {
            let txn = db.begin_write().expect("txn");
            rehearse_coordinator::history::write(&txn, &ops).expect("write");
            txn.commit().expect("commit");
            ops.clear();
        }
    }
    let signer = Signer::generate("bench").expect("key");
    let window = Window {
        since_ms: 0,
        until_ms: u64::MAX / 2,
        drill: None,
    };
    let t = Instant::now();
    let files = export(&db, head, Vec::new(), &window, &signer, 1_800_000_000_000).expect("export");
    let export_ms = t.elapsed().as_secs_f64() * 1000.0;
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let mut sizes = Vec::new();
    for (name, data) in &files {
        std::fs::write(out.join(name), data).expect("write");
        sizes.push(format!("\"{name}\": {}", data.len()));
    }
    let t = Instant::now();
    let verified = verify_dir(&out, None).expect("verify");
    let verify_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(verified.records as u64, n);
    println!(
        "{{\"verdicts\": {n}, \"export_ms\": {export_ms:.0}, \"verify_ms\": {verify_ms:.0}, \"bytes\": {{{}}}}}",
        sizes.join(", ")
    );
}
