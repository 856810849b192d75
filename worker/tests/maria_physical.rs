//! MariaDB physical backups against a real source: a MariaDB server filled in three batches,
//! backed up with the real `mariadb-backup` — a full backup, an xbstream of it, and two
//! incrementals each on the one before. Restored full, full + incrementals in order, and a chain
//! with a missing link and one out of order, which fail naming the link. Every test ends with no
//! sandbox dir and no process left.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use rehearse_core::plan::Plan;
use rehearse_worker::engines::mysql::MariaServer;

const BATCH: u32 = 100;

struct Fixture {
    full: PathBuf,
    stream: PathBuf,
    inc1: PathBuf,
    inc2: PathBuf,
}

impl Fixture {
    fn at(dir: &Path) -> Fixture {
        Fixture {
            full: dir.join("full"),
            stream: dir.join("full.xbstream"),
            inc1: dir.join("inc1"),
            inc2: dir.join("inc2"),
        }
    }
}

/// The backups, made once per target dir.
async fn fixture() -> Fixture {
    Fixture::at(&once_per_target("maria-backup-fixture-1", make_fixture()).await)
}

async fn make_fixture() -> PathBuf {
    let env = env();
    let rt = env.verifier.runtime();
    let install = env.verifier.maria().expect("MariaDB is required").clone();
    let backup = install
        .backup
        .clone()
        .expect("mariadb-backup is required (scripts/setup installs it)");
    let out = tempfile::Builder::new()
        .prefix("maria-staging-")
        .tempdir_in(target_tmp())
        .expect("staging")
        .keep();
    fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    rt.give(&out).expect("give");
    let mut server = MariaServer::create(rt, &install).expect("server");
    server
        .start(rt, &env.verifier.options().cache_dir, None)
        .await
        .expect("source server");
    let batch = |n: u32| {
        format!(
            "USE app; INSERT INTO t (id) SELECT seq FROM seq_{}_to_{}",
            (n - 1) * BATCH + 1,
            n * BATCH
        )
    };
    server
        .query_xml(
            None,
            &format!(
                "CREATE DATABASE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY) ENGINE=InnoDB; {}",
                batch(1)
            ),
        )
        .await
        .expect("batch 1");
    let socket = server.socket_path();
    let run = |args: Vec<String>, stdout: Option<&Path>| {
        let mut cmd = rt.command(&backup, &out);
        cmd.arg("--backup")
            .arg(format!("--socket={}", socket.display()))
            .arg("--user=root")
            .args(args);
        if let Some(path) = stdout {
            cmd.stdout(fs::File::create(path).expect("stream file"));
        }
        if stdout.is_none() {
            cmd.stdout(std::process::Stdio::null());
        }
        cmd.stderr(std::process::Stdio::piped());
        async move {
            let child = cmd.spawn().expect("mariadb-backup");
            let done = child.wait_with_output().await.expect("mariadb-backup");
            assert!(
                done.status.success(),
                "{}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
    };
    let dir = |name: &str| out.join(name).display().to_string();
    run(vec![format!("--target-dir={}", dir("full"))], None).await;
    run(
        vec![
            "--stream=xbstream".into(),
            format!("--target-dir={}", dir("stream-tmp")),
        ],
        Some(&out.join("full.xbstream")),
    )
    .await;
    assert!(
        fs::metadata(out.join("full.xbstream")).is_ok_and(|m| m.len() > 0),
        "the xbstream is empty"
    );
    let before = checkpoint_lsn(&server).await;
    server.query_xml(None, &batch(2)).await.expect("batch 2");
    checkpoint(&server, before).await;
    run(
        vec![
            format!("--target-dir={}", dir("inc1")),
            format!("--incremental-basedir={}", dir("full")),
        ],
        None,
    )
    .await;
    let before = checkpoint_lsn(&server).await;
    server.query_xml(None, &batch(3)).await.expect("batch 3");
    checkpoint(&server, before).await;
    run(
        vec![
            format!("--target-dir={}", dir("inc2")),
            format!("--incremental-basedir={}", dir("inc1")),
        ],
        None,
    )
    .await;
    server.stop().await.expect("stop the source");
    let _ = fs::remove_dir_all(out.join("stream-tmp"));
    out
}

/// The LSN of the source's last checkpoint.
async fn checkpoint_lsn(server: &MariaServer) -> u64 {
    let xml = server
        .query_xml(None, "SHOW GLOBAL STATUS LIKE 'Innodb_lsn_last_checkpoint'")
        .await
        .expect("status");
    rehearse_core::mysqlxml::rows(&xml).expect("xml")[0][1]
        .clone()
        .and_then(|v| v.parse::<u64>().ok())
        .expect("Innodb_lsn_last_checkpoint")
}

/// Waits for a checkpoint after `before`, so the next backup ends at a later LSN.
async fn checkpoint(server: &MariaServer, before: u64) {
    server
        .query_xml(None, "SET GLOBAL innodb_max_dirty_pages_pct = 0")
        .await
        .expect("flush");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while checkpoint_lsn(server).await <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint after {before}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn plan_for(full: &Path, incrementals: &[&Path], rows: u32) -> Plan {
    let list: Vec<String> = incrementals
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    engine_plan(
        "mysql",
        full,
        &format!(
            "incrementals = [{}]\n[[checks]]\nname = \"rows\"\nsql = \"SELECT count(*) FROM t\"\nexpect = \"= {rows}\"\n",
            list.join(", ")
        ),
    )
}

#[tokio::test]
async fn a_full_backup_is_prepared_and_checked() {
    let fx = fixture().await;
    let env = env();
    let report = env.verify(&plan_for(&fx.full, &[], BATCH)).await;
    assert_passed(&report);
    assert_eq!(report.artifact.format.as_deref(), Some("mariadb-backup"));
    assert_eq!(report.database.as_deref(), Some("app"));
    assert!(
        report
            .server_version
            .as_deref()
            .is_some_and(|v| v.contains("MariaDB")),
        "{:?}",
        report.server_version
    );
    assert!(
        report.integrity.as_ref().is_some_and(|i| i.ok),
        "{:?}",
        report.integrity
    );
}

#[tokio::test]
async fn an_xbstream_is_extracted_then_prepared() {
    let fx = fixture().await;
    let env = env();
    let report = env.verify(&plan_for(&fx.stream, &[], BATCH)).await;
    assert_passed(&report);
    assert_eq!(
        report.artifact.format.as_deref(),
        Some("mariadb-backup xbstream")
    );
}

#[tokio::test]
async fn incrementals_are_applied_in_order() {
    let fx = fixture().await;
    let env = env();
    let report = env
        .verify(&plan_for(&fx.full, &[&fx.inc1, &fx.inc2], 3 * BATCH))
        .await;
    assert_passed(&report);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("then 2 incrementals in order")),
        "{:?}",
        report.notes
    );
}

#[tokio::test]
async fn a_chain_with_a_missing_link_fails_naming_it() {
    let fx = fixture().await;
    let env = env();
    let report = env
        .verify(&plan_for(&fx.full, &[&fx.inc2], 3 * BATCH))
        .await;
    assert_failed_in(&report, "restore", "a link between them is missing");
    let reason = &report.failure.as_ref().expect("failure").reason;
    assert!(reason.contains("incremental 1"), "{reason}");
}

#[tokio::test]
async fn a_chain_out_of_order_fails_naming_the_link() {
    let fx = fixture().await;
    let env = env();
    let report = env
        .verify(&plan_for(&fx.full, &[&fx.inc2, &fx.inc1], 3 * BATCH))
        .await;
    assert_failed_in(&report, "restore", "incremental 1");
}

#[tokio::test]
async fn in_the_docker_runtime_the_chain_is_prepared_in_the_container() {
    let fx = fixture().await;
    let env = env_for(rehearse_worker::runtime::RuntimeChoice::Docker).await;
    let report = env
        .verify(&plan_for(&fx.full, &[&fx.inc1, &fx.inc2], 3 * BATCH))
        .await;
    assert_passed(&report);
    assert_eq!(report.runtime, "docker");
    let report = env.verify(&plan_for(&fx.stream, &[], BATCH)).await;
    assert_passed(&report);
    assert_eq!(report.runtime, "docker");
    let report = env
        .verify(&plan_for(&fx.full, &[&fx.inc2], 3 * BATCH))
        .await;
    assert_failed_in(&report, "restore", "a link between them is missing");
}
