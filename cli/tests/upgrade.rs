//! Rolling upgrades: the command encoding is versioned, a node never skips an entry it cannot
//! read, and the leader proposes a newer command kind only once every member reads it. Real
//! `rehearse coordinator` processes; "releases" are the same binary told which command version
//! it reads (`--command-version`: `CURRENT` is this release, `TEST_PROBE` = `CURRENT` + 1 adds a
//! test-only command kind).

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

/// The probe through the CLI: its exit code and stderr.
fn probe(c: &TestCluster) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rehearse"))
        .args(["cluster", "probe", "--note", "upgrade test"])
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
