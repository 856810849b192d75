//! Physical backups against a real source: a PostgreSQL cluster with `archive_mode = on` whose
//! `archive_command` copies segments into an archive dir, base backups taken with the real
//! `pg_basebackup` (`-X none` plain, `-X stream` tar + gzip), rows committed at known times
//! before and after them. Recovered to `latest` and to a time between two commits, from an
//! archive on disk (plain, gzip and zstd segments) and in S3 (moto); a deleted segment, a
//! flipped byte in a segment, a base backup with one file altered, and a backup without WAL
//! each fail naming why; `[promote]` times the promotion and the canary write. Every test ends
//! with no sandbox dir and no process left.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use rehearse_core::plan::Plan;
use rehearse_core::report::Phase;
use rehearse_worker::engines::postgres::inspect::connect;

/// Rows committed before the base backups, then in two later batches.
const BEFORE: i64 = 100;
const BATCH: i64 = 100;

/// What the source left behind: base backups, its archive, and the instant between the two
/// batches committed after the backups.
struct Fixture {
    /// `-Fp -X none`: the WAL only in the archive.
    plain_none: PathBuf,
    /// `-Ft -z -X stream`: base.tar.gz, pg_wal.tar.gz, backup_manifest.
    tar_stream: PathBuf,
    archive: PathBuf,
    /// After the first batch after the backups committed, before the second.
    between: String,
}

impl Fixture {
    fn at(dir: &Path) -> Fixture {
        Fixture {
            plain_none: dir.join("backups/plain-none"),
            tar_stream: dir.join("backups/tar-stream"),
            archive: dir.join("archive"),
            between: fs::read_to_string(dir.join("between")).unwrap_or_default(),
        }
    }
}

/// The source's leftovers, made once per target dir.
async fn fixture() -> Fixture {
    Fixture::at(&once_per_target("pitr-fixture-1", make_fixture()).await)
}

/// initdb, archiving on, rows, the two base backups, two more batches each archived.
async fn make_fixture() -> PathBuf {
    let env = env();
    let rt = env.verifier.runtime();
    let installed = env.verifier.installations()[0].clone();
    let root = tempfile::Builder::new()
        .prefix("pitr-staging-")
        .tempdir_in(target_tmp())
        .expect("source dir")
        .keep();
    fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    rt.give(&root).expect("give");
    let (data, archive, backups) = (
        root.join("data"),
        root.join("archive"),
        root.join("backups"),
    );
    for d in [&archive, &backups] {
        fs::create_dir(d).expect("mkdir");
        rt.give(d).expect("give");
    }
    let run = |name: &str, args: Vec<String>| {
        let mut cmd = rt.command(&installed.bin(name), &root);
        cmd.args(args);
        async move {
            let out = cmd.output().await.expect("run a PostgreSQL tool");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    run(
        "initdb",
        [
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let mut server = rt.command(&installed.bin("postgres"), &root);
    server
        .arg("-D")
        .arg(&data)
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "port=5432",
            "-c",
            "fsync=off",
        ])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", root.display()))
        .args([
            "-c",
            "wal_level=replica",
            "-c",
            "archive_mode=on",
            "-c",
            "max_wal_senders=4",
        ])
        .arg("-c")
        .arg(format!("archive_command=cp %p {}/%f", archive.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = server.spawn().expect("source postgres");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let admin = loop {
        match connect(&root, "postgres").await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "source did not start: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    admin
        .batch_execute("CREATE DATABASE app")
        .await
        .expect("create db");
    let app = connect(&root, "app").await.expect("app");
    app.batch_execute(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         INSERT INTO t (id) SELECT g FROM generate_series(1, {BEFORE}) g;"
    ))
    .await
    .expect("rows before");

    let socket = root.display().to_string();
    let base = |out: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "-h", &socket, "-p", "5432", "-U", "postgres", "-c", "fast", "-D",
        ]
        .map(String::from)
        .to_vec();
        args.push(out.display().to_string());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let plain_none = backups.join("plain-none");
    let tar_stream = backups.join("tar-stream");
    run("pg_basebackup", base(&plain_none, &["-Fp", "-X", "none"])).await;
    run(
        "pg_basebackup",
        base(&tar_stream, &["-Ft", "-z", "-X", "stream"]),
    )
    .await;

    // Two batches after the backups, each in its own archived segment, a second apart.
    let switch_and_wait = || async {
        let row = admin
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .expect("switch");
        let segment: String = row.get(0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !archive.join(&segment).is_file() {
            assert!(
                std::time::Instant::now() < deadline,
                "{segment} never archived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    app.batch_execute(&format!(
        "INSERT INTO t (id) SELECT g FROM generate_series({}, {}) g",
        BEFORE + 1,
        BEFORE + BATCH
    ))
    .await
    .expect("batch 1");
    switch_and_wait().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between: String = app
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
            &[],
        )
        .await
        .expect("now")
        .get(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.batch_execute(&format!(
        "INSERT INTO t (id) SELECT g FROM generate_series({}, {}) g",
        BEFORE + BATCH + 1,
        BEFORE + 2 * BATCH
    ))
    .await
    .expect("batch 2");
    switch_and_wait().await;
    let _ = child.kill().await;
    let _ = child.wait().await;
    drop((admin, app));
    fs::write(root.join("between"), &between).expect("between");
    fs::remove_dir_all(&data).expect("remove the source's data dir");
    let _ = (plain_none, tar_stream);
    root
}

/// The segments of an archive, sorted (no histories, no backup files).
fn segments(archive: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(archive)
        .expect("archive")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    names
}

/// A copy of the archive in a dir of its own, each segment passed through `each`.
fn archive_copy(
    env: &TestEnv,
    from: &Path,
    name: &str,
    mut each: impl FnMut(usize, &str, Vec<u8>) -> Option<(String, Vec<u8>)>,
) -> PathBuf {
    let to = env.root.path().with_extension("artifacts").join(name);
    fs::create_dir_all(&to).expect("archive copy");
    for (i, segment) in segments(from).iter().enumerate() {
        let bytes = fs::read(from.join(segment)).expect("segment");
        if let Some((name, bytes)) = each(i, segment, bytes) {
            fs::write(to.join(name), bytes).expect("write segment");
        }
    }
    to
}

/// The segment holding the first batch after the backups (the last but one).
fn victim(fx: &Fixture) -> String {
    let all = segments(&fx.archive);
    all[all.len() - 2].clone()
}

/// A copy of the archive without [`victim`]; returns it and the segment left out.
fn holed(env: &TestEnv, fx: &Fixture, name: &str) -> (PathBuf, String) {
    let victim = victim(fx);
    let archive = archive_copy(env, &fx.archive, name, |_, name, bytes| {
        (name != victim).then(|| (name.to_owned(), bytes))
    });
    (archive, victim)
}

fn plan_for(backup: &Path, extra: &str) -> Plan {
    plan(
        backup,
        &format!(
            "{extra}\n[[checks]]\nname = \"first rows\"\nsql = \"SELECT count(*) FROM t WHERE id <= {BEFORE}\"\nexpect = \"= {BEFORE}\"\n"
        ),
    )
}

fn rows_check(rows: i64) -> String {
    format!(
        "[[checks]]\nname = \"rows\"\nsql = \"SELECT count(*) FROM t\"\nexpect = \"= {rows}\"\n"
    )
}

/// The `-X none` backup recovered to `latest` from `archive` (a path, or `s3://` with `url`),
/// every row checked, with `extra` plan text.
async fn recover_all(
    env: &TestEnv,
    fx: &Fixture,
    archive: &str,
    extra: &str,
) -> rehearse_core::report::Report {
    let text = format!(
        "[pitr]\nwal_archive = \"{archive}\"\n{extra}\n{}",
        rows_check(BEFORE + 2 * BATCH)
    );
    env.verify(&plan_for(&fx.plain_none, &text)).await
}

fn pitr(archive: &Path, target: &str) -> String {
    format!(
        "[pitr]\nwal_archive = \"{}\"\ntarget = \"{target}\"\n",
        archive.display()
    )
}

#[tokio::test]
async fn a_plain_backup_without_wal_recovers_to_the_archives_end() {
    let fx = fixture().await;
    let env = env();
    let report = recover_all(&env, &fx, &fx.archive.display().to_string(), "").await;
    assert_passed(&report);
    assert_eq!(
        report.artifact.format.as_deref(),
        Some("pg_basebackup plain")
    );
    assert_eq!(report.database.as_deref(), Some("app"));
    let r = report.recovery.as_ref().expect("recovery");
    assert!(r.target_reached, "{r:?}");
    assert_eq!(r.target, "latest");
    assert!(r.segments_replayed >= 3, "{r:?}");
    assert_eq!(r.segments_available, r.segments_replayed, "{r:?}");
    assert!(
        r.wal_blake3.is_some() && r.last_commit_at.is_some(),
        "{r:?}"
    );
    assert_eq!(
        r.timeline,
        Some(2),
        "recovery ends on a new timeline: {r:?}"
    );
    // RPO runs from the verification start to the last replayed commit.
    assert!(report.rpo_ms.is_some(), "{report:#?}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("pg_verifybackup: every file matches")),
        "{:?}",
        report.notes
    );
    assert!(
        report
            .tables
            .iter()
            .any(|t| t.name.ends_with("t") && t.rows == (BEFORE + 2 * BATCH) as u64),
        "{:?}",
        report.tables
    );
}

#[tokio::test]
async fn a_time_target_restores_exactly_the_rows_committed_before_it() {
    let fx = fixture().await;
    let env = env();
    let report = env
        .verify(&plan_for(
            &fx.tar_stream,
            &format!(
                "{}{}",
                pitr(&fx.archive, &fx.between),
                rows_check(BEFORE + BATCH)
            ),
        ))
        .await;
    assert_passed(&report);
    assert!(
        report
            .artifact
            .format
            .as_deref()
            .is_some_and(|f| f.contains("tar (gzip), with pg_wal.tar")),
        "{:?}",
        report.artifact.format
    );
    let r = report.recovery.as_ref().expect("recovery");
    assert!(r.target_reached, "{r:?}");
    assert!(r.target.starts_with(&fx.between[..19]), "{r:?}");
    // RPO: from the target back to the last commit before it (the first batch, ~1 s earlier).
    let rpo = report.rpo_ms.expect("rpo");
    assert!((900..10_000).contains(&rpo), "rpo {rpo} ms");
}

#[tokio::test]
async fn gzip_and_zstd_segments_are_decompressed_by_the_worker() {
    let fx = fixture().await;
    let env = env();
    let archive = archive_copy(&env, &fx.archive, "compressed", |i, name, bytes| {
        Some(if i % 2 == 0 {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &bytes).expect("gzip");
            (format!("{name}.gz"), gz.finish().expect("gzip"))
        } else {
            (
                format!("{name}.zst"),
                zstd::encode_all(&bytes[..], 3).expect("zstd"),
            )
        })
    });
    let report = recover_all(&env, &fx, &archive.display().to_string(), "").await;
    assert_passed(&report);
}

#[tokio::test]
async fn a_deleted_segment_fails_in_restore_naming_the_gap() {
    let fx = fixture().await;
    let env = env();
    let (archive, victim) = holed(&env, &fx, "holed");
    let report = env
        .verify(&plan_for(&fx.plain_none, &pitr(&archive, "latest")))
        .await;
    assert_failed_in(&report, "restore", &format!("WAL {victim} missing between"));
    let reason = &report.failure.as_ref().expect("failure").reason;
    assert!(reason.contains("recovery stopped at"), "{reason}");
}

#[tokio::test]
async fn a_flipped_byte_in_a_segment_fails_in_restore() {
    let fx = fixture().await;
    let env = env();
    let victim = victim(&fx);
    let archive = archive_copy(&env, &fx.archive, "flipped", |_, name, mut bytes| {
        if name == victim {
            // Inside the first records after the long page header.
            bytes[200] ^= 0xff;
        }
        Some((name.to_owned(), bytes))
    });
    let report = env
        .verify(&plan_for(&fx.plain_none, &pitr(&archive, "latest")))
        .await;
    assert_failed_in(&report, "restore", "damaged");
}

#[tokio::test]
async fn a_base_backup_with_an_altered_file_fails_against_its_manifest() {
    let fx = fixture().await;
    let env = env();
    let copy = env.root.path().with_extension("artifacts").join("altered");
    fs::create_dir_all(copy.parent().expect("parent")).expect("artifacts dir");
    let out = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&fx.plain_none)
        .arg(&copy)
        .output()
        .expect("cp");
    assert!(out.status.success());
    let victim = copy.join("PG_VERSION");
    let mut text = fs::read(&victim).expect("read");
    text.push(b'\n');
    fs::write(&victim, text).expect("alter");
    let report = env
        .verify(&plan_for(&copy, &pitr(&fx.archive, "latest")))
        .await;
    assert_failed_in(&report, "restore", "does not match its backup_manifest");
}

#[tokio::test]
async fn a_backup_without_wal_and_without_an_archive_fails_saying_so() {
    let fx = fixture().await;
    let env = env();
    let report = env.verify(&plan_for(&fx.plain_none, "")).await;
    assert_failed_in(&report, "restore", "holds no WAL");
}

#[tokio::test]
async fn a_streamed_backup_recovers_from_its_own_wal() {
    let fx = fixture().await;
    let env = env();
    let report = env
        .verify(&plan_for(&fx.tar_stream, &rows_check(BEFORE)))
        .await;
    assert_passed(&report);
    let r = report.recovery.as_ref().expect("recovery");
    assert_eq!(r.segments_replayed, 0, "{r:?}");
    assert!(
        r.end_lsn.is_some(),
        "the manifest names where the backup ends: {r:?}"
    );
}

#[tokio::test]
async fn a_promoted_standby_reports_promotion_and_canary_times() {
    let fx = fixture().await;
    let env = env();
    let report = recover_all(
        &env,
        &fx,
        &fx.archive.display().to_string(),
        "[promote]\ncanary = true\n[targets]\npromote = \"30s\"\n",
    )
    .await;
    assert_passed(&report);
    assert!(
        report.phase_ms(Phase::Promote).is_some(),
        "{:?}",
        report.phases
    );
    let r = report.recovery.as_ref().expect("recovery");
    let p = r.promotion.as_ref().expect("promotion");
    assert_eq!(p.new_timeline, p.old_timeline + 1, "{p:?}");
    assert!(p.canary_ms.is_some_and(|c| c >= p.promoted_ms), "{p:?}");
    assert!(
        report.targets.iter().any(|t| t.name == "promote" && t.ok),
        "{:?}",
        report.targets
    );
}

#[tokio::test]
async fn an_archive_in_s3_is_fetched_and_hashed_by_the_worker() {
    let fx = fixture().await;
    let s3 = Moto::start_open(&["wal"]);
    for name in segments(&fx.archive) {
        let bytes = fs::read(fx.archive.join(&name)).expect("segment");
        s3.put("wal", &format!("pg/{name}"), bytes).await;
    }
    let env = TestEnv::with_s3(s3.settings());
    let report = recover_all(&env, &fx, "s3://wal/pg/", "").await;
    assert_passed(&report);
    let r = report.recovery.as_ref().expect("recovery");
    assert_eq!(r.wal_archive.as_deref(), Some("s3://wal/pg/"));
    assert!(r.segments_replayed >= 3, "{r:?}");
}

#[tokio::test]
async fn a_directory_that_is_no_backup_fails_in_restore_saying_what_it_lacks() {
    let env = env();
    let dir = env
        .root
        .path()
        .with_extension("artifacts")
        .join("not-a-backup");
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("notes.txt"), b"hello").expect("write");
    let report = env.verify(&plan(&dir, "")).await;
    assert_failed_in(&report, "restore", "neither a pg_dump directory archive");
}

#[tokio::test]
async fn in_the_docker_runtime_the_same_recovery_and_promotion_run_in_a_container() {
    let fx = fixture().await;
    let env = env_for(rehearse_worker::runtime::RuntimeChoice::Docker).await;
    let report = recover_all(
        &env,
        &fx,
        &fx.archive.display().to_string(),
        "[promote]\ncanary = true\n",
    )
    .await;
    assert_passed(&report);
    assert_eq!(report.runtime, "docker");
    assert!(report.server_version.is_some(), "{report:#?}");
    let r = report.recovery.as_ref().expect("recovery");
    assert!(r.segments_replayed >= 3, "{r:?}");
    let p = r.promotion.as_ref().expect("promotion");
    assert_eq!(p.new_timeline, p.old_timeline + 1, "{p:?}");

    // A damaged segment fails there too.
    let (holed, victim) = holed(&env, &fx, "holed-docker");
    let report = env
        .verify(&plan_for(&fx.plain_none, &pitr(&holed, "latest")))
        .await;
    assert_failed_in(&report, "restore", &format!("WAL {victim} missing between"));
}

#[tokio::test]
async fn a_random_target_is_resolved_reported_and_reached() {
    let fx = fixture().await;
    let env = env();
    let report = env
        .verify(&plan_for(
            &fx.plain_none,
            &pitr(&fx.archive, "random within 24h"),
        ))
        .await;
    assert_passed(&report);
    let r = report.recovery.as_ref().expect("recovery");
    assert!(
        r.target.ends_with('Z') && r.target.starts_with("20"),
        "{r:?}"
    );
    assert!(r.target_reached, "{r:?}");
    assert!(
        // (none when the instant fell before the first commit after the backup)
        r.last_commit_at
            .as_deref()
            .is_none_or(|c| c <= r.target.as_str()),
        "replay stops before the target: {r:?}"
    );
}

#[tokio::test]
async fn a_base_backup_in_s3_is_downloaded_as_a_directory_and_recovered() {
    let fx = fixture().await;
    let s3 = Moto::start_open(&["pgbackups"]);
    for entry in fs::read_dir(&fx.tar_stream).expect("backup").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        s3.put(
            "pgbackups",
            &format!("base/2026-12-01/{name}"),
            fs::read(entry.path()).expect("read"),
        )
        .await;
    }
    for name in segments(&fx.archive) {
        s3.put(
            "pgbackups",
            &format!("wal/{name}"),
            fs::read(fx.archive.join(&name)).expect("segment"),
        )
        .await;
    }
    let env = TestEnv::with_s3(s3.settings());
    let plan = Plan::from_toml(&format!(
        "[artifact]\nurl = \"s3://pgbackups/base/2026-12-01/\"\nengine = \"postgres\"\n\
         [pitr]\nwal_archive = \"s3://pgbackups/wal/\"\n{}",
        rows_check(BEFORE + 2 * BATCH)
    ))
    .expect("plan");
    let report = env.verify(&plan).await;
    assert_passed(&report);
    assert!(
        report
            .artifact
            .format
            .as_deref()
            .is_some_and(|f| f.starts_with("pg_basebackup tar")),
        "{:?}",
        report.artifact.format
    );
    assert!(
        report.artifact.blake3.is_some(),
        "the downloaded tree is hashed"
    );

    // Nothing under the prefix: failed in fetch, naming it.
    let plan = Plan::from_toml(
        "[artifact]\nurl = \"s3://pgbackups/base/1999-01-01/\"\nengine = \"postgres\"\n",
    )
    .expect("plan");
    let report = env.verify(&plan).await;
    assert_failed_in(
        &report,
        "fetch",
        "nothing under s3://pgbackups/base/1999-01-01/",
    );
}

#[tokio::test]
async fn a_timeline_history_that_does_not_lead_to_the_backup_fails_with_the_servers_reason() {
    let fx = fixture().await;
    let env = env();
    let archive = archive_copy(&env, &fx.archive, "forked", |_, name, bytes| {
        Some((name.to_owned(), bytes))
    });
    // Timeline 2 forked off timeline 1 before the backup's checkpoint: not a child of it.
    fs::write(
        archive.join("00000002.history"),
        "1\t0/1000000\tno recovery target specified\n",
    )
    .expect("history");
    let report = env
        .verify(&plan_for(&fx.plain_none, &pitr(&archive, "latest")))
        .await;
    assert_failed_in(&report, "restore", "not a child of this server's history");
}

/// A segment the worker cannot hand over (here: gzip that does not decompress) ends the archive
/// there: recovery stops instead of waiting for it, and the verdict names the segment.
#[tokio::test]
async fn a_segment_that_does_not_decompress_fails_naming_it_without_hanging() {
    let fx = fixture().await;
    let env = env();
    let victim = victim(&fx);
    let archive = archive_copy(&env, &fx.archive, "bad-gzip", |_, name, bytes| {
        Some(if name == victim {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &bytes).expect("gzip");
            let mut gz = gz.finish().expect("gzip");
            let mid = gz.len() / 2;
            gz[mid] ^= 0xff;
            gz.truncate(gz.len() - 8);
            (format!("{name}.gz"), gz)
        } else {
            (name.to_owned(), bytes)
        })
    });
    let started = std::time::Instant::now();
    let mut plan = plan_for(&fx.plain_none, &pitr(&archive, "latest"));
    plan.timeout = Duration::from_secs(90);
    let report = env.verify(&plan).await;
    assert_failed_in(&report, "restore", &format!("WAL {victim}.gz is damaged"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "it waited"
    );
}
