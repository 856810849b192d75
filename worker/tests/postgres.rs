//! End-to-end verifications of real pg_dump output, restored into real PostgreSQL sandboxes.
//! Every test ends by asserting that no sandbox dir and no process was left behind.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use rehearse_core::report::Phase;
use rehearse_worker::VerifyError;
use tokio_util::sync::CancellationToken;

async fn passes(file: &str, format_label: &str) -> rehearse_core::report::Report {
    let fx = fixtures().await;
    let env = env();
    let artifact = fx.join(file);
    let report = env.verify(&plan(&artifact, &shop_checks())).await;
    assert_passed(&report);
    assert_eq!(report.artifact.format.as_deref(), Some(format_label));
    assert_every_phase(&report);
    assert!(report.checks.iter().all(|c| c.ok));
    assert_eq!(
        report.checks[0].observed.as_deref(),
        Some(ORDERS.to_string().as_str())
    );
    let orders = report
        .tables
        .iter()
        .find(|t| t.name == "public.orders")
        .expect("orders counted");
    assert_eq!(orders.rows, u64::from(ORDERS));
    assert!(
        report
            .tables
            .iter()
            .any(|t| t.name == "public.customers" && t.rows == u64::from(ORDERS / 10))
    );
    // The newest order is an hour older than the dump; RPO is measured from the data itself.
    let rpo = report.rpo_ms.expect("rpo measured");
    assert!((3_600_000..3 * 3_600_000).contains(&rpo), "rpo {rpo}");
    let rto = report.rto_ms.expect("rto measured");
    let in_rto: u64 = report
        .phases
        .iter()
        .filter(|p| p.name != Phase::Teardown)
        .map(|p| p.ms)
        .sum();
    assert!(
        rto >= in_rto.saturating_sub(5),
        "rto {rto} covers fetch..checks ({in_rto})"
    );
    assert!(
        report.integrity.as_ref().is_some_and(|i| i.ok),
        "pg_amcheck ran clean: {:?}",
        report.integrity
    );
    if !fx.join(file).is_dir() {
        let expected = blake3::hash(&fs::read(&artifact).expect("read"))
            .to_hex()
            .to_string();
        assert_eq!(report.artifact.blake3.as_deref(), Some(expected.as_str()));
        assert_eq!(
            report.artifact.bytes,
            fs::metadata(&artifact).expect("meta").len()
        );
    }
    report
}

#[tokio::test]
async fn custom_format_passes() {
    passes("custom.dump", "pg_dump custom").await;
}

#[tokio::test]
async fn directory_format_passes() {
    passes("dir.dump", "pg_dump directory").await;
}

#[tokio::test]
async fn tar_format_passes() {
    passes("tar.dump", "pg_dump tar").await;
}

#[tokio::test]
async fn plain_format_passes_and_creates_the_roles_it_names() {
    let report = passes("plain.sql", "plain SQL").await;
    let note = report
        .notes
        .iter()
        .find(|n| n.starts_with("roles the dump refers to"))
        .expect("roles note");
    assert!(
        note.contains("shop_owner") && note.contains("reporting"),
        "{note}"
    );
}

#[tokio::test]
async fn gzip_plain_passes() {
    passes("plain.sql.gz", "plain SQL (gzip)").await;
}

#[tokio::test]
async fn zstd_plain_passes() {
    passes("plain.sql.zst", "plain SQL (zstd)").await;
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for i in at..(at + 16).min(b.len()) {
        b[i] ^= 0x5a;
    }
    b
}

#[tokio::test]
async fn bit_flip_with_blake3_fails_in_checksum() {
    let fx = fixtures().await;
    let env = env();
    let good = fs::read(fx.join("custom.dump")).expect("read");
    let digest = blake3::hash(&good).to_hex().to_string();
    let bad = env.file("flipped.dump", &flipped(&good, good.len() / 2));
    let text = format!(
        "[artifact]\nurl = \"{}\"\nengine = \"postgres\"\nblake3 = \"{digest}\"\n",
        bad.display()
    );
    let report = env
        .verify(&rehearse_core::plan::Plan::from_toml(&text).expect("plan"))
        .await;
    assert_failed_in(&report, "checksum", "blake3 mismatch");
    assert!(
        report.phases.iter().all(|p| p.name != Phase::Provision),
        "no sandbox for bytes that failed their checksum"
    );
}

#[tokio::test]
async fn bit_flip_without_blake3_fails_in_restore() {
    let fx = fixtures().await;
    let env = env();
    let good = fs::read(fx.join("custom.dump")).expect("read");
    let bad = env.file("flipped.dump", &flipped(&good, good.len() * 2 / 3));
    let report = env.verify(&plan(&bad, "")).await;
    assert_failed_in(&report, "restore", "pg_restore failed");
}

#[tokio::test]
async fn truncated_custom_fails_in_restore() {
    let fx = fixtures().await;
    let env = env();
    let good = fs::read(fx.join("custom.dump")).expect("read");
    let bad = env.file("truncated.dump", &good[..good.len() * 6 / 10]);
    let report = env.verify(&plan(&bad, "")).await;
    assert_failed_in(&report, "restore", "pg_restore failed");
}

#[tokio::test]
async fn truncated_gzip_fails_in_restore() {
    let fx = fixtures().await;
    let env = env();
    let good = fs::read(fx.join("plain.sql.gz")).expect("read");
    let bad = env.file("truncated.sql.gz", &good[..good.len() / 2]);
    let report = env.verify(&plan(&bad, "")).await;
    assert_failed_in(&report, "restore", "gzip stream is corrupt or truncated");
}

#[tokio::test]
async fn empty_file_fails_in_fetch() {
    let env = env();
    let empty = env.file("empty.dump", b"");
    let report = env.verify(&plan(&empty, "")).await;
    assert_failed_in(&report, "fetch", "artifact is empty");
}

#[tokio::test]
async fn missing_file_fails_in_fetch() {
    let env = env();
    let report = env
        .verify(&plan(
            &env.root.path().with_extension("nowhere").join("x.dump"),
            "",
        ))
        .await;
    assert_failed_in(&report, "fetch", "artifact not found");
}

#[tokio::test]
async fn random_bytes_fail_with_a_clear_reason() {
    let env = env();
    let noise: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let junk = env.file("junk.dump", &noise);
    let report = env.verify(&plan(&junk, "")).await;
    assert_failed_in(&report, "restore", "not a PostgreSQL dump");
}

#[tokio::test]
async fn mysql_dump_given_as_postgres_fails_with_a_clear_reason() {
    let env = env();
    let dump =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mysql-shop.sql");
    let report = env.verify(&plan(&dump, "")).await;
    assert_failed_in(
        &report,
        "restore",
        "MySQL/MariaDB dump, not a PostgreSQL one",
    );
}

#[tokio::test]
async fn wrong_expectation_fails_in_checks() {
    let fx = fixtures().await;
    let env = env();
    let extra = format!(
        "[[checks]]\nname = \"orders\"\nsql = \"SELECT count(*) FROM orders\"\nexpect = \">= {}\"\n",
        ORDERS + 1
    );
    let report = env.verify(&plan(&fx.join("custom.dump"), &extra)).await;
    assert_failed_in(
        &report,
        "checks",
        &format!("observed {ORDERS}, expected >= {}", ORDERS + 1),
    );
    assert_eq!(
        report.checks[0].observed.as_deref(),
        Some(ORDERS.to_string().as_str())
    );
    assert!(
        report.rto_ms.is_some(),
        "the recovery still ran to the end of checks: RTO is reported"
    );
}

#[tokio::test]
async fn failing_query_fails_in_checks_with_the_server_message() {
    let fx = fixtures().await;
    let env = env();
    let extra =
        "[[checks]]\nname = \"typo\"\nsql = \"SELECT count(*) FROM ordrs\"\nexpect = \"> 0\"\n";
    let report = env.verify(&plan(&fx.join("custom.dump"), extra)).await;
    assert_failed_in(&report, "checks", "relation \"ordrs\" does not exist");
}

#[tokio::test]
async fn missed_rto_target_fails() {
    let fx = fixtures().await;
    let env = env();
    let report = env
        .verify(&plan(&fx.join("custom.dump"), "[targets]\nrto = \"1ms\"\n"))
        .await;
    assert_failed_in(&report, "targets", "exceeds the target 1ms by");
    assert!(report.targets.iter().any(|t| t.name == "rto" && !t.ok));
}

/// A plain dump whose restore takes 30 s: long enough that a timeout or an interrupt lands
/// in the restore phase whatever the machine's speed.
fn slow_dump(env: &TestEnv) -> std::path::PathBuf {
    env.file(
        "slow.sql",
        b"-- PostgreSQL database dump\nCREATE TABLE t (id int);\nSELECT pg_sleep(30);\n",
    )
}

#[tokio::test]
async fn timeout_fails_in_the_running_phase_and_tears_down() {
    let env = env();
    // Long enough for provision on a loaded machine; the restore sleeps 30 s.
    let text = format!(
        "timeout = \"6s\"\n[artifact]\nurl = \"{}\"\nengine = \"postgres\"\n",
        slow_dump(&env).display()
    );
    let report = env
        .verify(&rehearse_core::plan::Plan::from_toml(&text).expect("plan"))
        .await;
    assert_failed_in(&report, "restore", "timed out after 6s (plan timeout)");
    assert!(
        report
            .phases
            .iter()
            .any(|p| p.name == Phase::Restore && !p.ok)
    );
}

#[tokio::test]
async fn interrupt_tears_down_and_reports_no_verdict() {
    let env = env();
    let dump = slow_dump(&env);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let root = env.root.path().to_owned();
    tokio::spawn(async move {
        // Interrupt once psql is running the restore (a process names the sandbox dir).
        while processes_mentioning(&root)
            .iter()
            .all(|p| !p.contains("psql"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        trigger.cancel();
    });
    let result = tokio::time::timeout(
        Duration::from_secs(25),
        env.verifier.verify(&plan(&dump, ""), &cancel),
    )
    .await
    .expect("interrupt honoured well before the dump's sleep ends");
    assert!(
        matches!(result, Err(VerifyError::Interrupted)),
        "{result:?}"
    );
    env.assert_clean();
}

#[tokio::test]
async fn shell_escapes_in_a_plain_dump_never_run() {
    let env = env();
    // The marker's dir is writable by the sandbox user: had an escape run, it would be there.
    let markers = env.root.path().with_extension("markers");
    fs::create_dir_all(&markers).expect("marker dir");
    fs::set_permissions(&markers, fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    let marker = markers.join("pwned");
    for (name, script, said) in [
        (
            "line-start",
            format!("CREATE TABLE t (id int);\n\\! touch {}\n", marker.display()),
            "psql meta-command \\!",
        ),
        // mid-line: only psql's restricted mode can stop this one
        (
            "mid-line",
            format!("SELECT 1 \\! touch {}\n;\n", marker.display()),
            "psql failed",
        ),
        (
            "set-off",
            "\\set ON_ERROR_STOP off\nSELECT 1/0;\n".to_owned(),
            "psql meta-command \\set",
        ),
    ] {
        let dump = env.file(
            &format!("{name}.sql"),
            format!("-- PostgreSQL database dump\n{script}").as_bytes(),
        );
        let report = env.verify(&plan(&dump, "")).await;
        assert_eq!(
            report.verdict,
            rehearse_core::report::Verdict::Failed,
            "{name}"
        );
        assert_eq!(
            report.failure.as_ref().map(|f| f.phase.as_str()),
            Some("restore"),
            "{name}: {:?}",
            report.failure
        );
        let reason = report
            .failure
            .as_ref()
            .map(|f| f.reason.clone())
            .unwrap_or_default();
        assert!(reason.contains(said), "{name}: {reason}");
        assert!(!marker.exists(), "{name}: the shell command ran");
    }
    let _ = fs::remove_dir_all(&markers);
}

/// A backup set: a directory of three dumps, 40, 10 and 2 days old, and a newer sidecar.
fn backup_set(t: &TestEnv, fx: &std::path::Path) -> std::path::PathBuf {
    let dump = fs::read(fx.join("custom.dump")).expect("fixture");
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    let mut dir = None;
    for (name, age_days) in [
        ("monday.dump", 40),
        ("tuesday.dump", 10),
        ("wednesday.dump", 2),
    ] {
        let path = t.file(&format!("set/{name}"), &dump);
        let f = fs::File::options().write(true).open(&path).expect("open");
        f.set_modified(now - day * age_days).expect("mtime");
        dir = path.parent().map(std::path::Path::to_path_buf);
    }
    // The sidecar is the newest file of all, but it is not a backup.
    t.file(
        "set/wednesday.dump.blake3",
        blake3::hash(&dump).to_hex().as_bytes(),
    );
    dir.expect("set dir")
}

#[tokio::test]
async fn a_backup_set_verifies_its_latest_or_a_random_recent_backup() {
    use rehearse_core::report::Verdict;
    let fx = fixtures().await;
    let t = env();
    let set = backup_set(&t, &fx);
    let report = t.verify(&plan(&set, "pick = \"latest\"\n")).await;
    assert_eq!(report.verdict, Verdict::Passed, "{:?}", report.failure);
    assert!(
        report.artifact.url.ends_with("/set/wednesday.dump"),
        "{}",
        report.artifact.url
    );
    assert_eq!(report.artifact.candidates, Some(3));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("picked the latest of 3"))
    );

    let report = t
        .verify(&plan(&set, "pick = \"random\"\nwithin = \"30d\"\n"))
        .await;
    assert_eq!(report.verdict, Verdict::Passed, "{:?}", report.failure);
    assert_eq!(
        report.artifact.candidates,
        Some(2),
        "monday is older than 30 days"
    );
    assert!(!report.artifact.url.ends_with("monday.dump"));

    let report = t
        .verify(&plan(&set, "pick = \"latest\"\nwithin = \"1d\"\n"))
        .await;
    assert_failed_in(&report, "fetch", "newer than 1day (3 older)");
}

#[tokio::test]
async fn a_sidecar_digest_is_checked_and_a_bad_one_fails_the_checksum() {
    let fx = fixtures().await;
    let t = env();
    let dump = fs::read(fx.join("custom.dump")).expect("fixture");
    let good = t.file("good/shop.dump", &dump);
    // As `b3sum shop.dump > shop.dump.blake3` writes it.
    t.file(
        "good/shop.dump.blake3",
        format!("{}  shop.dump\n", blake3::hash(&dump).to_hex()).as_bytes(),
    );
    let report = t.verify(&plan(&good, "")).await;
    assert_eq!(
        report.verdict,
        rehearse_core::report::Verdict::Passed,
        "{:?}",
        report.failure
    );
    assert_eq!(report.artifact.blake3_from.as_deref(), Some("sidecar"));

    let bad = t.file("bad/shop.dump", &dump);
    t.file(
        "bad/shop.dump.blake3",
        format!("{}\n", "0".repeat(64)).as_bytes(),
    );
    let report = t.verify(&plan(&bad, "")).await;
    assert_failed_in(&report, "checksum", "(sidecar)");
    t.file("bad/shop.dump.blake3", b"not a digest\n");
    let report = t.verify(&plan(&bad, "")).await;
    assert_failed_in(&report, "checksum", "does not hold a blake3 digest");
}

#[tokio::test]
async fn copies_must_exist_with_the_same_digest_and_the_restore_still_runs() {
    let fx = fixtures().await;
    let t = env();
    let dump = fs::read(fx.join("custom.dump")).expect("fixture");
    let main = t.file("primary/shop.dump", &dump);
    let same = t.file("dr/shop.dump", &dump);
    let mut altered = dump.clone();
    altered[100] ^= 0xff;
    let other = t.file("tape/shop.dump", &altered);
    let missing = other.with_file_name("gone.dump");
    let extra = format!(
        "copies = [\"file://{}\", \"file://{}\", \"file://{}\"]\n",
        same.display(),
        missing.display(),
        other.display()
    );
    let report = t.verify(&plan(&main, &extra)).await;
    assert_failed_in(&report, "checksum", "missing");
    let results: Vec<(bool, Option<&str>)> = report
        .artifact
        .copies
        .iter()
        .map(|c| (c.ok, c.reason.as_deref()))
        .collect();
    assert_eq!(results[0], (true, None));
    assert_eq!(results[1], (false, Some("missing")));
    assert!(!results[2].0 && results[2].1.is_some_and(|r| r.contains("differs")));
    // The artifact itself was good: it was restored and checked, so the report is whole.
    let restore = report
        .phases
        .iter()
        .find(|p| p.name == Phase::Restore)
        .expect("restore ran");
    assert!(restore.ok);
    assert!(!report.tables.is_empty());
}

fn manifest_of(dir: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.blake3", dir.display()))
}

/// A copy of the directory-format dump beside the env's work root, with a b3sum-style manifest.
fn dir_copy_with_manifest(env: &TestEnv, fx: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = env
        .file(&format!("{name}/placeholder"), b"")
        .parent()
        .expect("dir")
        .to_owned();
    fs::remove_file(dir.join("placeholder")).expect("rm");
    let mut lines = String::new();
    for entry in fs::read_dir(fx.join("dir.dump")).expect("read").flatten() {
        let bytes = fs::read(entry.path()).expect("read");
        fs::write(dir.join(entry.file_name()), &bytes).expect("copy");
        lines.push_str(&format!(
            "{}  {name}/{}\n",
            blake3::hash(&bytes).to_hex(),
            entry.file_name().to_string_lossy()
        ));
    }
    fs::write(manifest_of(&dir), lines).expect("manifest");
    dir
}

#[tokio::test]
async fn a_directory_dump_is_checked_against_its_manifest() {
    let fx = fixtures().await;
    let env = env();
    let dir = dir_copy_with_manifest(&env, &fx, "good.dir");
    let report = env.verify(&plan(&dir, &shop_checks())).await;
    assert_passed(&report);
    assert_eq!(report.artifact.blake3_from.as_deref(), Some("manifest"));

    // A file changed after the manifest was made.
    let dir = dir_copy_with_manifest(&env, &fx, "changed.dir");
    fs::write(dir.join("toc.dat.extra"), b"added later").expect("add");
    let report = env.verify(&plan(&dir, "")).await;
    assert_failed_in(
        &report,
        "checksum",
        "toc.dat.extra is in the artifact but not in the manifest",
    );
    let dir = dir_copy_with_manifest(&env, &fx, "flipped.dir");
    let manifest = manifest_of(&dir);
    let text = fs::read_to_string(&manifest).expect("read");
    let first = text.lines().next().expect("a line").to_owned();
    let flipped = format!("{}{}", "0".repeat(64), &first[64..]);
    fs::write(&manifest, text.replacen(&first, &flipped, 1)).expect("write");
    let report = env.verify(&plan(&dir, "")).await;
    assert_failed_in(&report, "checksum", "differs from the manifest's");
}
