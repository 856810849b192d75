//! Rolling upgrades: the command encoding is versioned, a node never skips an entry it cannot
//! read, and the leader proposes a newer command kind only once every member reads it. Real
//! `rehearse coordinator` processes; "releases" are the same binary told which command version
//! it reads (`--command-version`: `CURRENT` is this release, `TEST_PROBE` = `CURRENT` + 1 adds a
//! test-only command kind) — and, in the last test, two real builds: the previous release's
//! binary (`scripts/previous-release`) upgraded to this one node by node under load.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rehearse_proto::v1 as pb;

mod common;
use common::{TestCluster, loopback_addrs};

/// This release's command version, and the test-only one after it.
const OLD: u32 = rehearse_core::codec::CURRENT;
const NEW: u32 = rehearse_core::codec::TEST_PROBE;

fn release(c: &mut TestCluster, id: u64, version: u32) {
    c.node_extra
        .insert(id, vec!["--command-version".into(), version.to_string()]);
}

async fn cluster_version(c: &TestCluster) -> u32 {
    c.client()
        .status()
        .await
        .map(|s| s.cluster_version)
        .unwrap_or(0)
}

async fn wait_version(c: &TestCluster, want: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cluster_version(c).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the cluster never reached command version {want} (at {}); logs in {}",
        cluster_version(c).await,
        c.dir.path().display()
    );
}

/// `rehearse ARGS` against the cluster: its exit code and stderr.
fn cli(c: &TestCluster, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rehearse"))
        .args(args)
        .env(
            "REHEARSE_COORDINATORS",
            c.addrs.values().cloned().collect::<Vec<_>>().join(","),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run rehearse");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The probe through the CLI: its exit code and stderr.
fn probe(c: &TestCluster) -> (Option<i32>, String) {
    cli(c, &["cluster", "probe", "--note", "upgrade test"])
}

/// Waits for a coordinator process to end by itself; its exit status.
fn wait_exit(c: &mut TestCluster, id: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    let child = c.procs.get_mut(&id).expect("running");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            c.procs.remove(&id);
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} kept running; log: {}",
            fs::read_to_string(c.log(id)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn member_versions(c: &TestCluster) -> Vec<u32> {
    c.client()
        .status()
        .await
        .map(|s| s.members.iter().map(|m| m.command_version).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rolling_upgrade_raises_the_version_only_when_every_member_reads_it() {
    let mut c = TestCluster::new(loopback_addrs(3), 10_000);
    c.spawn_all();
    c.leader().await;
    // This release everywhere: the cluster runs CURRENT, and a TEST_PROBE command is refused.
    wait_version(&c, OLD).await;
    let (code, err) = probe(&c);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("needs command version {NEW}"))
            && err.contains(&format!("the cluster runs {OLD}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // One node upgraded: it reads NEW, the others OLD, so nothing newer may be written yet.
    c.stop(1);
    release(&mut c, 1, NEW);
    c.spawn(1, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while member_versions(&c).await != [NEW, OLD, OLD] {
        assert!(Instant::now() < deadline, "{:?}", member_versions(&c).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster_version(&c).await, OLD);
    let (code, err) = probe(&c);
    assert_eq!(code, Some(2), "still refused with one node upgraded: {err}");

    // The rest upgraded: the leader raises the version, and the newer command commits.
    for id in [2, 3] {
        c.stop(id);
        release(&mut c, id, NEW);
        c.spawn(id, false);
    }
    wait_version(&c, NEW).await;
    let (code, err) = probe(&c);
    assert_eq!(code, Some(0), "{err}");

    // Rolling node 3 back to the older release: it refuses to start on a cluster it cannot read.
    c.stop(3);
    release(&mut c, 3, OLD);
    c.spawn(3, false);
    let status = wait_exit(&mut c, 3);
    assert!(!status.success());
    let log = fs::read_to_string(c.log(3)).expect("log");
    assert!(
        log.contains(&format!(
            "runs command version {NEW}; this node reads up to {OLD}"
        )),
        "{log}"
    );
}

#[tokio::test]
async fn an_older_node_stops_at_an_entry_it_cannot_read_and_never_skips_it() {
    let mut c = TestCluster::new(loopback_addrs(3), 10_000);
    for id in 1..=3 {
        release(&mut c, id, NEW);
    }
    c.spawn_all();
    c.leader().await;
    wait_version(&c, NEW).await;
    let (code, err) = probe(&c);
    assert_eq!(code, Some(0), "{err}");

    // An older release joins (a learner from an empty data dir). The state it receives is whole,
    // so it catches up, warning that it is behind...
    release(&mut c, 4, OLD);
    let addr = c.add_node(4);
    c.client()
        .membership(pb::membership_request::Kind::AddLearner, 4, &addr)
        .await
        .expect("add learner");
    let commit = c.client().status().await.expect("status").commit;
    c.wait_caught_up(4, commit).await;
    // ...and the next TEST_PROBE entry stops it there, loudly, instead of being skipped.
    let (code, err) = probe(&c);
    assert_eq!(code, Some(0), "{err}");
    let probe_index = c.client().status().await.expect("status").commit;
    let status = wait_exit(&mut c, 4);
    assert!(!status.success(), "the old node must exit, not go on");
    let log = fs::read_to_string(c.log(4)).expect("log");
    assert!(
        log.contains("newer command version than this node reads"),
        "{log}"
    );
    assert!(log.contains("cannot be applied by this node"), "{log}");
    assert!(
        log.contains(&format!(
            "command version {NEW}; this node reads up to {OLD}"
        )),
        "{log}"
    );
    assert!(log.contains("stopped without applying it"), "{log}");
    // It stopped at (or before) the probe's entry, and the others went on.
    let at = log
        .split("log entry ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the entry's index in the message");
    assert!(
        at > commit && at <= probe_index,
        "stopped at {at}: after what it caught up to ({commit}), at the probe ({probe_index})"
    );
    let (code, err) = probe(&c);
    assert_eq!(code, Some(0), "the upgraded nodes go on: {err}");
}

/// The previous release's binary, built by `scripts/previous-release` (scripts/test runs it)
/// next to this build: `target/previous/rehearse-<commit>`.
fn previous_release() -> std::path::PathBuf {
    let target = std::path::Path::new(env!("CARGO_BIN_EXE_rehearse"))
        .parent()
        .and_then(|d| d.parent())
        .expect("the target dir");
    let found = fs::read_dir(target.join("previous"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rehearse-") && !n.ends_with(".tmp"))
        });
    found.unwrap_or_else(|| {
        panic!(
            "no previous release in {}: run scripts/previous-release (scripts/test does)",
            target.join("previous").display()
        )
    })
}

/// `rehearse token create`, a command version 7 command: its exit code and stderr.
fn create_token(c: &TestCluster, name: &str) -> (Option<i32>, String) {
    cli(c, &["token", "create", "--name", name, "--role", "read"])
}

/// Two real builds: a cluster of the previous release (command version 6) upgraded node by node
/// to this one (7) while jobs are submitted all along. Every acknowledged job is there at the
/// end, no node stops, version 7 commands are refused until the last node runs this build and
/// taken after.
#[tokio::test]
async fn a_rolling_upgrade_from_the_previous_release_loses_nothing() {
    let previous = previous_release();
    let mut c = TestCluster::new(loopback_addrs(3), 20);
    for id in 1..=3 {
        c.node_bin.insert(id, previous.clone());
    }
    c.spawn_all();
    c.leader().await;
    wait_version(&c, OLD - 1).await;

    // The load: submits one after another until told to stop; the ids acknowledged.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (mut client, stop) = (c.client(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stop.is_cancelled() {
                if let Ok(id) = client.submit(common::PLAN).await {
                    acked.push(id);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    for id in 1..=3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.stop(id);
        c.node_bin.remove(&id);
        // Down for a second of load: the others compact past it, so it comes back through a
        // snapshot made by the other build.
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.spawn(id, false);
        c.leader().await;
        if id < 3 {
            let (code, err) = create_token(&c, &format!("early-{id}"));
            assert_eq!(
                code,
                Some(2),
                "with a node of the older release left: {err}"
            );
            // Refused by the version gate of a leader of this build, or by a leader of the older
            // one, which does not know the call.
            assert!(
                err.contains(&format!("needs command version {OLD}"))
                    || err.contains("it runs an older release"),
                "{err}"
            );
        }
    }
    wait_version(&c, OLD).await;
    let (code, err) = create_token(&c, "after-upgrade");
    assert_eq!(code, Some(0), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let acked = load.await.expect("load");
    assert!(acked.len() > 50, "the load ran: {} jobs", acked.len());
    let mut stored: std::collections::HashSet<String> = c
        .client()
        .list_jobs(None)
        .await
        .expect("list")
        .into_iter()
        .map(|j| j.id)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.remove(*id)).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    let snapshots: usize = (1..=3)
        .map(|id| {
            fs::read_to_string(c.log(id))
                .unwrap_or_default()
                .matches("installed snapshot from leader")
                .count()
        })
        .sum();
    eprintln!(
        "rolling upgrade from {}: {} jobs acknowledged, none lost; {snapshots} snapshots installed",
        previous.display(),
        acked.len()
    );
    assert!(snapshots >= 1, "no node caught up through a snapshot");
    for id in 1..=3 {
        let running = c
            .procs
            .get_mut(&id)
            .expect("started")
            .try_wait()
            .expect("wait")
            .is_none();
        assert!(
            running,
            "node {id} stopped: {}",
            fs::read_to_string(c.log(id)).unwrap_or_default()
        );
    }
}
