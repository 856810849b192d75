//! Both engines in both runtimes: real PostgreSQL and MariaDB servers, as local processes and in
//! containers of a real Docker engine (the images `deploy/images/build` makes). Hostile dumps
//! prove what each runtime contains. Every test ends by asserting that no sandbox dir, no
//! process and no container was left behind.
//!
//! The docker tests fail, never skip, when the Docker engine or the images are missing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;
use rehearse_core::report::{Phase, Verdict};
use rehearse_worker::runtime::RuntimeChoice;

const PROCESS: RuntimeChoice = RuntimeChoice::Process;
const DOCKER: RuntimeChoice = RuntimeChoice::Docker;

fn runtime_name(rt: RuntimeChoice) -> &'static str {
    if rt == DOCKER { "docker" } else { "process" }
}

fn mysql_checks() -> String {
    format!(
        "[targets]\nrpo = \"26h\"\nfreshness = \"SELECT MAX(created_at) FROM orders\"\n\
         [[checks]]\nname = \"orders\"\nsql = \"SELECT COUNT(*) FROM orders\"\nexpect = \"= {ORDERS}\"\n\
         [[checks]]\nname = \"revenue view\"\nsql = \"SELECT COUNT(*) FROM daily_revenue\"\nexpect = \"> 0\"\n\
         [[checks]]\nname = \"the string NULL is not NULL\"\nsql = \"SELECT 'NULL'\"\nexpect = \"= 'NULL'\"\n"
    )
}

async fn mysql_sample_passes(rt: RuntimeChoice, file: &str, format: &str) {
    let fx = mysql_fixtures().await;
    let env = env_for(rt).await;
    let report = env
        .verify(&engine_plan("mysql", &fx.join(file), &mysql_checks()))
        .await;
    assert_passed(&report);
    assert_eq!(report.runtime, runtime_name(rt));
    assert_eq!(report.artifact.format.as_deref(), Some(format));
    assert_every_phase(&report);
    assert_eq!(report.database.as_deref(), Some("restored"));
    assert!(
        report
            .server_version
            .as_deref()
            .is_some_and(|v| v.contains("MariaDB")),
        "{:?}",
        report.server_version
    );
    assert_shop_counted(&report, "restored");
    let integrity = report.integrity.as_ref().expect("mariadb-check ran");
    assert_eq!(integrity.tool, "mariadb-check");
    assert!(integrity.ok, "{integrity:?}");
    let rpo = report.rpo_ms.expect("rpo measured");
    assert!((3_600_000..3 * 3_600_000).contains(&rpo), "rpo {rpo}");
}

#[tokio::test]
async fn mysql_dump_passes_in_process() {
    mysql_sample_passes(PROCESS, "shop.sql", "mysqldump").await;
}

#[tokio::test]
async fn mysql_gzip_dump_passes_in_process() {
    mysql_sample_passes(PROCESS, "shop.sql.gz", "mysqldump (gzip)").await;
}

#[tokio::test]
async fn mysql_dump_passes_in_docker() {
    mysql_sample_passes(DOCKER, "shop.sql", "mysqldump").await;
}

#[tokio::test]
async fn mysql_zstd_dump_passes_in_docker() {
    mysql_sample_passes(DOCKER, "shop.sql.zst", "mysqldump (zstd)").await;
}

#[tokio::test]
async fn postgres_dumps_pass_in_docker() {
    let fx = fixtures().await;
    let env = env_for(DOCKER).await;
    for (file, format) in [
        ("custom.dump", "pg_dump custom"),
        ("dir.dump", "pg_dump directory"),
        ("plain.sql.gz", "plain SQL (gzip)"),
    ] {
        let report = env.verify(&plan(&fx.join(file), &shop_checks())).await;
        assert_passed(&report);
        assert_eq!(report.runtime, "docker");
        assert_eq!(report.artifact.format.as_deref(), Some(format));
        assert!(
            report
                .server_version
                .as_deref()
                .is_some_and(|v| v.starts_with("15.")),
            "{:?}",
            report.server_version
        );
        assert!(report.integrity.as_ref().is_some_and(|i| i.ok));
        assert_shop_counted(&report, "public");
    }
}

#[tokio::test]
async fn mysql_damage_and_wrong_formats_fail_in_restore() {
    let fx = mysql_fixtures().await;
    let pg = fixtures().await;
    for rt in [PROCESS, DOCKER] {
        let env = env_for(rt).await;
        let good = fs::read_to_string(fx.join("shop.sql")).expect("dump");
        // A statement broken mid-dump: the client stops at the first error.
        let broken = good.replacen("INSERT INTO `orders`", "INSERT INTO `orders` BROKEN", 1);
        let report = env
            .verify(&engine_plan(
                "mysql",
                &env.file("broken.sql", broken.as_bytes()),
                "",
            ))
            .await;
        assert_failed_in(&report, Phase::Restore.as_str(), "ERROR 1064");
        // Truncated inside the gzip stream.
        let gz = fs::read(fx.join("shop.sql.gz")).expect("gz");
        let report = env
            .verify(&engine_plan(
                "mysql",
                &env.file("cut.sql.gz", &gz[..gz.len() / 2]),
                "",
            ))
            .await;
        assert_failed_in(
            &report,
            Phase::Restore.as_str(),
            "gzip stream is corrupt or truncated",
        );
        // A PostgreSQL archive given to the mysql engine, and a MySQL dump to postgres.
        let report = env
            .verify(&engine_plan("mysql", &pg.join("custom.dump"), ""))
            .await;
        assert_failed_in(
            &report,
            Phase::Restore.as_str(),
            "PostgreSQL pg_dump archive",
        );
        let report = env
            .verify(&engine_plan("postgres", &fx.join("shop.sql"), ""))
            .await;
        assert_failed_in(&report, Phase::Restore.as_str(), "MySQL/MariaDB dump");
    }
}

/// A dir only root may write into: a hostile dump must not be able to put anything there.
fn root_only_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("rh-rootonly-")
        .tempdir()
        .expect("dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

async fn mysql_hostile(rt: RuntimeChoice) {
    let env = env_for(rt).await;
    let outside = root_only_dir();
    let world = tempfile::Builder::new()
        .prefix("rh-world-")
        .tempdir()
        .expect("dir");
    fs::set_permissions(world.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
    let cases = [
        (
            "shell escape",
            format!(
                "CREATE TABLE t (id INT);\n\\! touch {}/shell\n",
                world.path().display()
            ),
            "not allowed in the sandbox mode",
        ),
        (
            "system command",
            format!(
                "CREATE TABLE t (id INT);\nsystem touch {}/system\n",
                world.path().display()
            ),
            "not allowed in the sandbox mode",
        ),
        (
            "into outfile",
            format!(
                "CREATE TABLE t (id INT);\nSELECT 'pwned' INTO OUTFILE '{}/outfile';\n",
                world.path().display()
            ),
            "secure-file-priv",
        ),
        (
            "into dumpfile in a root dir",
            format!(
                "SELECT 'pwned' INTO DUMPFILE '{}/dumpfile';\n",
                outside.path().display()
            ),
            "secure-file-priv",
        ),
        (
            "source another file",
            "\\. /etc/passwd\n".to_owned(),
            "not allowed in the sandbox mode",
        ),
    ];
    for (name, sql, reason) in cases {
        let dump = format!("-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n{sql}");
        let report = env
            .verify(&engine_plan(
                "mysql",
                &env.file("hostile.sql", dump.as_bytes()),
                "",
            ))
            .await;
        assert_eq!(report.verdict, Verdict::Failed, "{name}: {report:#?}");
        let failure = report.failure.as_ref().expect("failure");
        assert_eq!(failure.phase, "restore", "{name}");
        assert!(
            failure
                .reason
                .to_lowercase()
                .contains(&reason.to_lowercase()),
            "{name}: {:?}",
            failure.reason
        );
    }
    let left: Vec<_> = fs::read_dir(world.path())
        .expect("read")
        .chain(fs::read_dir(outside.path()).expect("read"))
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "a hostile dump wrote outside the sandbox: {left:?}"
    );
}

#[tokio::test]
async fn hostile_mysql_dumps_do_no_harm_in_process() {
    mysql_hostile(PROCESS).await;
}

#[tokio::test]
async fn hostile_mysql_dumps_do_no_harm_in_docker() {
    mysql_hostile(DOCKER).await;
}

/// `COPY … TO/FROM PROGRAM` runs a shell command as the database server. What it can reach:
/// only a loopback interface (no network) and no root; it cannot write into a root-owned dir.
async fn postgres_hostile(rt: RuntimeChoice) {
    let env = env_for(rt).await;
    let outside = root_only_dir();
    let probe = "CREATE TABLE net (line text);\n\
                 COPY net FROM PROGRAM 'cat /proc/net/dev';\n\
                 CREATE TABLE who (uid text);\n\
                 COPY who FROM PROGRAM 'id -u';\n";
    let checks = "[[checks]]\nname = \"no interface but lo\"\n\
                  sql = \"SELECT count(*) FROM net WHERE line LIKE '%:%' AND line NOT LIKE '%lo:%'\"\nexpect = \"= 0\"\n\
                  [[checks]]\nname = \"lo is there\"\nsql = \"SELECT count(*) FROM net WHERE line LIKE '%lo:%'\"\nexpect = \"= 1\"\n\
                  [[checks]]\nname = \"not root\"\nsql = \"SELECT uid FROM who\"\nexpect = \"!= '0'\"\n";
    let report = env
        .verify(&engine_plan(
            "postgres",
            &env.file("probe.sql", probe.as_bytes()),
            checks,
        ))
        .await;
    assert_passed(&report);
    let escape = format!(
        "CREATE TABLE t (id int);\nCOPY (SELECT 1) TO PROGRAM 'touch {}/pwned';\n",
        outside.path().display()
    );
    let report = env
        .verify(&engine_plan(
            "postgres",
            &env.file("escape.sql", escape.as_bytes()),
            "",
        ))
        .await;
    assert_failed_in(&report, Phase::Restore.as_str(), "pwned");
    assert!(
        fs::read_dir(outside.path()).expect("read").next().is_none(),
        "COPY TO PROGRAM wrote into a root-owned dir"
    );
}

#[tokio::test]
async fn hostile_postgres_dump_is_contained_in_process() {
    postgres_hostile(PROCESS).await;
}

#[tokio::test]
async fn hostile_postgres_dump_is_contained_in_docker() {
    postgres_hostile(DOCKER).await;
    // In a container the program's whole file system is the container's: even world-writable
    // host dirs are out of reach (the process runtime cannot promise that; see the README).
    let env = env_for(DOCKER).await;
    let marker = std::env::temp_dir().join(format!("rh-pwned-{}", std::process::id()));
    let dump = format!(
        "CREATE TABLE t (id int);\nCOPY (SELECT 1) TO PROGRAM 'touch {}';\n",
        marker.display()
    );
    let report = env
        .verify(&engine_plan(
            "postgres",
            &env.file("tmp.sql", dump.as_bytes()),
            "",
        ))
        .await;
    assert_passed(&report);
    assert!(
        !marker.exists(),
        "the container wrote into the host's {}",
        marker.display()
    );
}

#[tokio::test]
async fn container_limits_come_from_the_plan() {
    let env = env_for(DOCKER).await;
    let probe = "CREATE TABLE limits (name text, value text);\n\
                 COPY limits (value) FROM PROGRAM 'cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes';\n\
                 UPDATE limits SET name = 'memory' WHERE name IS NULL;\n\
                 COPY limits (value) FROM PROGRAM 'cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max';\n\
                 UPDATE limits SET name = 'pids' WHERE name IS NULL;\n\
                 COPY limits (value) FROM PROGRAM 'touch /probe 2>&1 || echo read-only';\n\
                 UPDATE limits SET name = 'root' WHERE name IS NULL;\n";
    let plan = engine_plan(
        "postgres",
        &env.file("limits.sql", probe.as_bytes()),
        "[[checks]]\nname = \"memory\"\nsql = \"SELECT value FROM limits WHERE name = 'memory'\"\nexpect = \"= '536870912'\"\n\
         [[checks]]\nname = \"pids\"\nsql = \"SELECT value FROM limits WHERE name = 'pids'\"\nexpect = \"= '200'\"\n\
         [[checks]]\nname = \"read-only root\"\nsql = \"SELECT count(*) FROM limits WHERE name = 'root' AND value LIKE '%read-only%'\"\nexpect = \">= 1\"\n\
         [sandbox]\nmemory = \"512MiB\"\npids = 200\ncpus = 1.5\n",
    );
    let report = env.verify(&plan).await;
    assert_passed(&report);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("memory 512MiB") && n.contains("pids 200")),
        "{:?}",
        report.notes
    );
}

#[tokio::test]
async fn a_missing_image_is_could_not_verify_never_failed() {
    let fx = fixtures().await;
    let env = env_for(DOCKER).await;
    let plan = plan(
        &fx.join("custom.dump"),
        "[sandbox]\nimage = \"rehearse/no-such-image:1\"\n",
    );
    let report = env.verify(&plan).await;
    assert_error_in(&report, "provision", "rehearse/no-such-image:1");
}

#[tokio::test]
async fn a_plan_timeout_mid_restore_removes_the_container() {
    let env = env_for(DOCKER).await;
    let slow = "CREATE TABLE t (id int);\nSELECT pg_sleep(60);\n";
    let mut plan = engine_plan("postgres", &env.file("slow.sql", slow.as_bytes()), "");
    // Long enough that a loaded machine still provisions within it: the timeout must land in
    // the restore (the pg_sleep), not before.
    plan.timeout = std::time::Duration::from_secs(12);
    let report = env.verify(&plan).await;
    assert_failed_in(&report, Phase::Restore.as_str(), "timed out");
}

/// `[sandbox] profile`: `fast` restores with durability off, `faithful` with the engine's durable
/// defaults and the plan's own settings — asked of the restored server itself, in both runtimes.
async fn profiles_reach_the_server(rt: RuntimeChoice) {
    let fx = fixtures().await;
    let env = env_for(rt).await;
    let pg = |profile: &str, fsync: &str| {
        plan(
            &fx.join("custom.dump"),
            &format!(
                "[[checks]]\nname = \"fsync\"\nsql = \"SHOW fsync\"\nexpect = \"= '{fsync}'\"\n\
                 [[checks]]\nname = \"work_mem\"\nsql = \"SHOW work_mem\"\nexpect = \"= '7MB'\"\n\
                 [sandbox]\nprofile = \"{profile}\"\njobs = 1\nsettings = {{ work_mem = \"7MB\" }}\n"
            ),
        )
    };
    for (profile, fsync) in [("fast", "off"), ("faithful", "on")] {
        let report = env.verify(&pg(profile, fsync)).await;
        assert_passed(&report);
        assert_eq!(report.profile.as_deref(), Some(profile));
    }
    // The profile decides durability: a fast restore does not run with fsync on.
    let report = env.verify(&pg("fast", "on")).await;
    assert_failed_in(&report, "checks", "fsync");

    let my = mysql_fixtures().await;
    for (profile, flush) in [("fast", "0"), ("faithful", "1")] {
        let report = env
            .verify(&engine_plan(
                "mysql",
                &my.join("shop.sql"),
                &format!(
                    "[[checks]]\nname = \"flush at commit\"\nsql = \"SELECT @@innodb_flush_log_at_trx_commit\"\nexpect = \"= {flush}\"\n\
                     [[checks]]\nname = \"sort buffer\"\nsql = \"SELECT @@sort_buffer_size\"\nexpect = \"= 1048576\"\n\
                     [sandbox]\nprofile = \"{profile}\"\nsettings = {{ sort_buffer_size = \"1M\" }}\n"
                ),
            ))
            .await;
        assert_passed(&report);
        assert_eq!(report.profile.as_deref(), Some(profile));
    }
    env.assert_clean();
}

#[tokio::test]
async fn profiles_reach_the_server_in_process() {
    profiles_reach_the_server(PROCESS).await;
}

#[tokio::test]
async fn profiles_reach_the_server_in_docker() {
    profiles_reach_the_server(DOCKER).await;
}
