//! Shared set-up for the PostgreSQL integration tests: a verifier on a private work root, the
//! sample dumps (made once per target dir with the real pg_dump), and the leftover assertions.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rehearse_core::plan::Plan;
use rehearse_core::report::{Report, Verdict};
use rehearse_worker::runtime::RuntimeChoice;
use rehearse_worker::sample::{DumpFormat, SampleDatabase};
use rehearse_worker::{Verifier, VerifyOptions};
use tokio_util::sync::CancellationToken;

mod moto;
#[allow(unused_imports)]
pub use moto::Moto;

pub const ORDERS: u32 = 2_000;

/// A verifier whose sandboxes live in a work root of this test's own.
pub struct TestEnv {
    pub root: tempfile::TempDir,
    pub verifier: Verifier,
}

pub fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Fails loudly when PostgreSQL is missing: these tests must run wherever CI runs.
pub fn env() -> TestEnv {
    let root = tempfile::Builder::new()
        .prefix("verify-")
        .tempdir_in(target_tmp())
        .expect("test work root");
    // The sandbox user must be able to reach its sandbox dir inside the work root.
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod work root");
    let opts = VerifyOptions {
        work_root: root.path().to_owned(),
        cache_dir: target_tmp().join("cache"),
        jobs: 2,
        ..VerifyOptions::default()
    };
    let verifier = Verifier::new(opts).expect("verifier");
    assert!(
        !verifier.installations().is_empty(),
        "PostgreSQL server binaries are required for these tests (run scripts/test, which installs them)"
    );
    TestEnv { root, verifier }
}

/// A verifier for `runtime`, its containers labelled with a name of this test's own. The docker
/// runtime needs a Docker engine and the local images (scripts/test builds them): without them
/// this fails loudly, never skips.
pub async fn env_for(runtime: RuntimeChoice) -> TestEnv {
    let root = tempfile::Builder::new()
        .prefix("rh-eng-")
        .tempdir()
        .expect("test work root");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod work root");
    let name = root
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let opts = VerifyOptions {
        work_root: root.path().to_owned(),
        cache_dir: target_tmp().join("cache"),
        jobs: 2,
        runtime,
        worker_name: name,
        ..VerifyOptions::default()
    };
    let verifier = Verifier::start(opts).await.unwrap_or_else(|e| {
        panic!("{runtime:?} runtime unavailable: {e} (run scripts/test, which sets it up)")
    });
    if let Some(docker) = verifier.docker() {
        for engine in ["postgres", "mysql"] {
            let image = docker.image_for(engine, &Default::default());
            assert!(
                docker.has_image(&image).await,
                "image {image} is missing: run deploy/images/build (scripts/test does)"
            );
        }
    }
    TestEnv { root, verifier }
}

impl TestEnv {
    /// No container of this env's is left (docker runtime).
    pub async fn assert_no_containers(&self) {
        if let Some(docker) = self.verifier.docker() {
            let left = docker.containers().await;
            assert!(left.is_empty(), "containers left behind: {left:?}");
        }
    }

    pub async fn verify(&self, plan: &Plan) -> Report {
        let report = self
            .verifier
            .verify(plan, &CancellationToken::new())
            .await
            .expect("a verdict, not an error");
        self.assert_clean();
        self.assert_no_containers().await;
        report
    }

    /// No sandbox dir left, and no process serving anything under this work root.
    pub fn assert_clean(&self) {
        let left: Vec<_> = fs::read_dir(self.root.path())
            .expect("read work root")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "sandbox dirs left behind: {left:?}");
        let procs = processes_mentioning(self.root.path());
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        // Artifacts live beside the work root, not in it (the work root must end empty).
        let path = self.root.path().with_extension("artifacts").join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("artifact dir");
        fs::write(&path, bytes).expect("write artifact");
        path
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.root.path().with_extension("artifacts"));
    }
}

/// Processes whose command line mentions `path` (postgres, psql, pg_restore started for it).
pub fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        if cmdline.contains(&needle) && !zombie {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// The fixtures' cache key: a hash of the code that makes them (the sample databases and this
/// file) and their size, so a change to the generator makes new fixtures by itself — no version
/// to remember to bump.
fn generator_key() -> String {
    let mut h = blake3::Hasher::new();
    h.update(include_str!("../../src/sample.rs").as_bytes());
    h.update(include_str!("mod.rs").as_bytes());
    h.update(&ORDERS.to_le_bytes());
    h.finalize().to_hex()[..16].to_owned()
}

/// The sample dumps, made once per target dir (concurrent test processes race harmlessly: each
/// builds in its own staging dir and the first rename wins).
pub async fn fixtures() -> PathBuf {
    let dir = target_tmp().join(format!("fixtures-{}", generator_key()));
    if dir.join("complete").is_file() {
        return dir;
    }
    let staging = tempfile::Builder::new()
        .prefix("fixtures-staging-")
        .tempdir_in(target_tmp())
        .expect("staging dir");
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let work_dir = tempfile::Builder::new()
        .prefix("rh-fixtures-")
        .tempdir()
        .expect("work");
    let work = work_dir.path().to_owned();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = staging.path().join("out");
    fs::create_dir(&out).expect("out");
    let opts = VerifyOptions {
        work_root: work.clone(),
        cache_dir: target_tmp().join("cache"),
        jobs: 2,
        ..VerifyOptions::default()
    };
    let verifier = Verifier::new(opts).expect("verifier");
    let db = SampleDatabase::create(&verifier, ORDERS)
        .await
        .expect("sample database");
    for (format, name) in [
        (DumpFormat::Custom, "custom.dump"),
        (DumpFormat::Directory, "dir.dump"),
        (DumpFormat::Tar, "tar.dump"),
        (DumpFormat::Plain, "plain.sql"),
    ] {
        db.dump(format, &out.join(name)).await.expect("pg_dump");
    }
    db.stop().await.expect("stop sample");
    let plain = fs::read(out.join("plain.sql")).expect("plain");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).expect("gzip");
    fs::write(out.join("plain.sql.gz"), gz.finish().expect("gzip")).expect("write gz");
    fs::write(
        out.join("plain.sql.zst"),
        zstd::encode_all(&plain[..], 3).expect("zstd"),
    )
    .expect("write zst");
    fs::write(out.join("complete"), b"").expect("marker");
    if fs::rename(&out, &dir).is_err() {
        assert!(
            dir.join("complete").is_file(),
            "fixtures missing after a lost race"
        );
    }
    dir
}

/// A fixture dir `target/tmp/NAME`, made once per target dir by `make` (which returns a staging
/// dir of its own). Tests run as processes of their own: concurrent first runs each build, and
/// the first rename wins.
pub async fn once_per_target(
    name: &str,
    make: impl std::future::Future<Output = PathBuf>,
) -> PathBuf {
    let dir = target_tmp().join(name);
    if dir.join("complete").is_file() {
        return dir;
    }
    let staging = make.await;
    fs::write(staging.join("complete"), "").expect("marker");
    if fs::rename(&staging, &dir).is_err() {
        assert!(
            dir.join("complete").is_file(),
            "fixture missing after a lost race"
        );
        let _ = fs::remove_dir_all(&staging);
    }
    dir
}

pub fn plan(artifact: &Path, extra: &str) -> Plan {
    let text = format!(
        "[artifact]\nurl = \"file://{}\"\nengine = \"postgres\"\n{extra}",
        artifact.display()
    );
    Plan::from_toml(&text).expect("test plan")
}

/// The checks every good shop dump must pass.
pub fn shop_checks() -> String {
    format!(
        "[targets]\nrto = \"10m\"\nrpo = \"26h\"\nfreshness = \"SELECT max(created_at) FROM orders\"\n\
         [[checks]]\nname = \"orders\"\nsql = \"SELECT count(*) FROM orders\"\nexpect = \">= {ORDERS}\"\n\
         [[checks]]\nname = \"revenue view\"\nsql = \"SELECT count(*) FROM daily_revenue\"\nexpect = \"> 0\"\n"
    )
}

/// Every phase of a verification ran, in order (`promote` only runs with `[promote]`).
pub fn assert_every_phase(report: &Report) {
    use rehearse_core::report::Phase;
    let phases: Vec<Phase> = report.phases.iter().map(|p| p.name).collect();
    assert_eq!(
        phases,
        Phase::ALL
            .into_iter()
            .filter(|p| *p != Phase::Promote)
            .collect::<Vec<_>>(),
        "every phase ran, in order"
    );
}

pub fn assert_passed(report: &Report) {
    assert_eq!(
        report.verdict,
        Verdict::Passed,
        "expected a pass: {:#?}",
        report.failure
    );
}

pub fn assert_failed_in(report: &Report, phase: &str, reason_part: &str) {
    assert_eq!(report.verdict, Verdict::Failed);
    let failure = report
        .failure
        .as_ref()
        .expect("a failed verdict carries its failure");
    assert_eq!(failure.phase, phase, "reason: {}", failure.reason);
    assert!(
        failure.reason.contains(reason_part),
        "reason {:?} should mention {reason_part:?}",
        failure.reason
    );
}

/// Could not verify: the verdict `error`, in `phase`, with a reason naming what to fix.
pub fn assert_error_in(report: &Report, phase: &str, reason_part: &str) {
    let failure = report
        .failure
        .as_ref()
        .expect("an error verdict carries its reason");
    assert_eq!(
        report.verdict,
        Verdict::Error,
        "expected could-not-verify, got {:?}: {}",
        report.verdict,
        failure.reason
    );
    assert!(failure.could_not_verify);
    assert_eq!(failure.phase, phase, "reason: {}", failure.reason);
    assert!(
        failure.reason.contains(reason_part),
        "reason {:?} should mention {reason_part:?}",
        failure.reason
    );
}

/// The MariaDB sample dump (mariadb-dump of the shop tables), made once per target dir, plus its
/// gzip and zstd forms.
pub async fn mysql_fixtures() -> PathBuf {
    let dir = target_tmp().join(format!("mysql-fixtures-{}", generator_key()));
    if dir.join("complete").is_file() {
        return dir;
    }
    let staging = tempfile::Builder::new()
        .prefix("mysql-staging-")
        .tempdir_in(target_tmp())
        .expect("staging dir");
    let work_dir = tempfile::Builder::new()
        .prefix("rh-myfx-")
        .tempdir()
        .expect("work");
    fs::set_permissions(work_dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let opts = VerifyOptions {
        work_root: work_dir.path().to_owned(),
        cache_dir: target_tmp().join("cache"),
        jobs: 2,
        ..VerifyOptions::default()
    };
    let verifier = Verifier::new(opts).expect("verifier");
    let out = staging.path().join("out");
    fs::create_dir(&out).expect("out");
    rehearse_worker::sample::mysql_sample(&verifier, ORDERS, &out.join("shop.sql"))
        .await
        .expect("MariaDB sample (mariadb-server is required: run scripts/test, which installs it)");
    let sql = fs::read(out.join("shop.sql")).expect("dump");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&sql).expect("gzip");
    fs::write(out.join("shop.sql.gz"), gz.finish().expect("gzip")).expect("write gz");
    fs::write(
        out.join("shop.sql.zst"),
        zstd::encode_all(&sql[..], 3).expect("zstd"),
    )
    .expect("zst");
    fs::write(out.join("complete"), b"").expect("marker");
    if fs::rename(&out, &dir).is_err() {
        assert!(
            dir.join("complete").is_file(),
            "fixtures missing after a lost race"
        );
    }
    dir
}

pub fn engine_plan(engine: &str, artifact: &Path, extra: &str) -> Plan {
    let text = format!(
        "[artifact]\nurl = \"file://{}\"\nengine = \"{engine}\"\n{extra}",
        artifact.display()
    );
    Plan::from_toml(&text).expect("test plan")
}

impl TestEnv {
    /// A process-runtime env whose verifier reaches S3 with `s3`.
    pub fn with_s3(s3: rehearse_worker::artifact::S3Settings) -> TestEnv {
        TestEnv::with_profiles(s3, Default::default())
    }

    /// The same, with named source profiles.
    pub fn with_profiles(
        s3: rehearse_worker::artifact::S3Settings,
        profiles: std::collections::BTreeMap<String, rehearse_worker::artifact::S3Settings>,
    ) -> TestEnv {
        TestEnv::with_sources(rehearse_worker::artifact::Sources {
            s3,
            s3_profiles: profiles,
            ..Default::default()
        })
    }

    /// A process-runtime env whose verifier reads sources with `sources`.
    pub fn with_sources(sources: rehearse_worker::artifact::Sources) -> TestEnv {
        let root = tempfile::Builder::new()
            .prefix("rh-s3-")
            .tempdir()
            .expect("test work root");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let opts = VerifyOptions {
            work_root: root.path().to_owned(),
            cache_dir: target_tmp().join("cache"),
            jobs: 2,
            sources,
            ..VerifyOptions::default()
        };
        let verifier = Verifier::new(opts).expect("verifier");
        TestEnv { root, verifier }
    }
}

/// The shop's tables were counted exactly.
pub fn assert_shop_counted(report: &Report, schema: &str) {
    for (table, rows) in [("orders", ORDERS), ("customers", ORDERS / 10)] {
        assert!(
            report
                .tables
                .iter()
                .any(|t| t.name == format!("{schema}.{table}") && t.rows == u64::from(rows)),
            "{schema}.{table} = {rows} not in {:?}",
            report.tables
        );
    }
}
