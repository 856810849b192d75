//! Benchmark for issue 14: what a large drill history costs the coordinator's storage. Fills the
//! history table of one real `RaftStore` (redb on disk) with ended runs — each with one job's
//! result: verdict, artifact, blake3, RTO, per-phase times, five tables' row counts — and at
//! each size measures what a compaction writes (the applied state, without the history), what a
//! snapshot for a follower costs (the state; the history travels apart), how long a follower takes
//! to copy the history in pages (store to store, as the `Peer.History` call pages it, without the
//! network), and the process's peak RSS.
//!
//!   cargo run --release -p rehearse-coordinator --example history_bench -- [RECORDS]
//!
//! (default 1,000,000; sizes measured: 10,000, 100,000 and RECORDS). Prints one JSON line per
//! size.

use std::collections::BTreeMap;
use std::time::Instant;

use raft::Storage;
use rehearse_coordinator::storage::{Batch, Identity, RaftStore};
use rehearse_coordinator::transport::HISTORY_PAGE;
use rehearse_core::drill::{JobResult, Run, RunOutcome};
use rehearse_core::history::HistoryOp;
use rehearse_core::report::{TableRows, Verdict};

fn run(i: u64) -> Run {
    let drill = format!("drill-{:04}", i % 1000);
    let tick_ms = 1_700_000_000_000 + (i / 1000) as i64 * 60_000;
    Run {
        exercise: None,
        drill: drill.clone(),
        tick_ms,
        manual: false,
        created_at_ms: tick_ms as u64,
        start_ms: tick_ms,
        finished_at_ms: Some(tick_ms as u64 + 42_000),
        outcome: RunOutcome::Passed,
        reason: None,
        version: "v-0123456789abcdef".into(),
        jobs: vec![format!("{drill}-t{tick_ms}-0")],
        results: vec![JobResult {
            job: format!("{drill}-t{tick_ms}-0"),
            verdict: Some(Verdict::Passed),
            artifact_url: format!("s3://backups/{drill}/2026-11-{:02}.dump", i % 28 + 1),
            blake3: Some("ab".repeat(32)),
            rto_ms: Some(41_000),
            rpo_ms: Some(3_600_000),
            phases: rehearse_core::report::Phase::UNPROMOTED
                .iter()
                .enumerate()
                .map(|(k, p)| (p.as_str().to_owned(), 100 * k as u64 + 7))
                .collect::<BTreeMap<_, _>>(),
            tables: (0..5)
                .map(|t| TableRows {
                    name: format!("public.table_{t}"),
                    rows: 20_000 + t,
                })
                .collect(),
            reason: None,
            restore_point: None,
            profile: None,
            exported: None,
            consistency: Vec::new(),
        }],
        missed: None,
        archived: true,
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let records: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("dir");
    let identity = Identity {
        cluster: "bench".into(),
        id: 1,
    };
    let mut store = RaftStore::open(dir.path(), &identity, Some(&[1])).expect("store");
    let mut written = 0u64;
    for size in [10_000u64, 100_000, records] {
        if size < written || size > records {
            continue;
        }
        while written < size {
            let mut batch = Batch::default();
            let n = (size - written).min(10_000);
            batch.sm.history = (written..written + n)
                .map(|i| HistoryOp::Run(run(i)))
                .collect();
            store.commit(&mut batch, true).expect("write history");
            written += n;
        }
        // A compaction persists the applied state (durably); the history is not in it.
        let began = Instant::now();
        let mut batch = Batch::default();
        store.persist_state(&mut batch);
        store.commit(&mut batch, true).expect("persist state");
        let compaction_ms = began.elapsed().as_secs_f64() * 1000.0;
        // A snapshot for a follower carries the state; the follower then copies the history.
        let began = Instant::now();
        let snapshot = store.snapshot(0, 0).expect("snapshot");
        let snapshot_ms = began.elapsed().as_secs_f64() * 1000.0;
        let snapshot_mb = snapshot.get_data().len() as f64 / (1 << 20) as f64;
        let follower_dir = tempfile::tempdir().expect("dir");
        let mut follower = RaftStore::open(
            follower_dir.path(),
            &Identity {
                cluster: "bench".into(),
                id: 2,
            },
            Some(&[1]),
        )
        .expect("follower");
        let began = Instant::now();
        let mut batch = Batch::default();
        follower
            .apply_snapshot(&mut batch, &snapshot)
            .expect("install");
        follower.commit(&mut batch, true).expect("install");
        let install_ms = began.elapsed().as_secs_f64() * 1000.0;
        drop(snapshot);
        let began = Instant::now();
        let mut copied = 0usize;
        while let Some(copying) = follower.sm.history_copy.clone() {
            let (records, done) = store
                .sm
                .history_page(
                    copying.table,
                    copying.after.as_deref(),
                    HISTORY_PAGE as usize,
                )
                .expect("page");
            copied += records.len();
            let mut batch = Batch::default();
            follower
                .sm
                .copy_history_page(&mut batch.sm, copying.table, records, done);
            follower.commit(&mut batch, true).expect("copy");
        }
        let copy_s = began.elapsed().as_secs_f64();
        assert_eq!(copied as u64, size, "every record copied");
        drop(follower);
        let file_mb = std::fs::metadata(dir.path().join("raft.redb")).map_or(0, |m| m.len()) as f64
            / (1 << 20) as f64;
        println!(
            "{{\"records\": {size}, \"compaction_ms\": {compaction_ms:.1}, \"snapshot_ms\": {snapshot_ms:.1}, \"snapshot_mb\": {snapshot_mb:.3}, \"install_ms\": {install_ms:.1}, \"history_copy_s\": {copy_s:.1}, \"db_file_mb\": {file_mb:.0}, \"peak_rss_mb\": {:.0}}}",
            peak_rss_mb()
        );
    }
}
