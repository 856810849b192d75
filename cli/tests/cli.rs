//! The `rehearse` binary, black-box: exit codes, one-line errors, report formats, signals, and
//! recovery after a kill -9. Real processes, real PostgreSQL.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehearse"));
    // The process runtime unless a test asks for docker (tests/docker.rs covers that runtime).
    cmd.env_remove("RUST_LOG")
        .env("REHEARSE_RUNTIME", "process")
        .env(
            "REHEARSE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        );
    cmd
}

/// A work dir of this test's own, reachable by the sandbox user.
fn work_dir() -> tempfile::TempDir {
    // Under the system temp dir: a deep checkout path could overflow the unix socket path limit.
    let dir = tempfile::Builder::new()
        .prefix("rh-cli-")
        .tempdir()
        .expect("work dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run rehearse")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// Nothing left in the work dir (but the artifacts sub-dir tests put there), no process naming it.
fn assert_clean(work: &Path) {
    let left: Vec<_> = fs::read_dir(work)
        .expect("read")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "artifacts")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let needle = work.to_string_lossy().into_owned();
    let procs: Vec<String> = fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle) && !c.contains("--keep"))
        .collect();
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}

/// Runs the demo with --keep, which leaves a real pg_dump and its plan in `dir/artifacts`.
fn demo_dump(work: &Path, orders: u32) -> (PathBuf, Value) {
    let keep = work.join("artifacts");
    let out = run(bin()
        .args([
            "demo",
            "--output",
            "json",
            "--orders",
            &orders.to_string(),
            "--keep",
        ])
        .arg(&keep)
        .arg("--work-dir")
        .arg(work));
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).expect("demo prints a JSON report");
    (keep, report)
}

#[test]
fn bad_plan_exits_2_with_one_line_naming_the_key() {
    let work = work_dir();
    let plan = work.path().join("plan.toml");
    fs::write(&plan, "[artifact]\nurl = \"/x.dump\"\nengine = \"postgres\"\n[[checks]]\nname = \"a\"\nsql = \"select 1\"\nexpct = \"= 1\"\n").expect("write");
    let out = run(bin()
        .args(["verify", "--plan"])
        .arg(&plan)
        .arg("--work-dir")
        .arg(work.path()));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("expct"), "{err}");
}

#[test]
fn flag_mistakes_exit_2() {
    let work = work_dir();
    let out = run(bin()
        .args(["verify", "/x.dump", "--check", "select 1"])
        .arg("--work-dir")
        .arg(work.path()));
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--expect"));
    let out = run(bin()
        .args(["verify", "/x.dump", "--rpo", "1h"])
        .arg("--work-dir")
        .arg(work.path()));
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("freshness"));
    let out = run(bin()
        .args(["verify", "--plan"])
        .arg(work.path().join("missing.toml")));
    assert_exit(&out, 2);
    let out = run(bin().args(["verify"]));
    assert_exit(&out, 2);
}

#[test]
fn help_documents_exit_codes() {
    let out = run(bin().args(["verify", "--help"]));
    assert_exit(&out, 0);
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "0    passed",
        "1    failed: the backup is bad",
        "2    could not verify",
        "130  interrupted",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}");
    }
}

/// The demo's fleet part: an in-process cluster in two regions runs the dump as a drill until a
/// run passed, prints it, and stops without leaving anything behind.
#[test]
fn demo_fleet_runs_the_dump_as_a_drill_and_cleans_up() {
    let work = work_dir();
    let fleet_dirs = || -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .expect("tmp")
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("rehearse-demo-fleet-")
            })
            .map(|e| e.path())
            .collect()
    };
    let before = fleet_dirs();
    let out = run(bin()
        .args(["demo", "--orders", "200", "--fleet", "1", "--work-dir"])
        .arg(work.path()));
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("regions eu, us, eu"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("Dashboard: http://127.0.0.1:") && l.contains("/docs/")),
        "the dashboard's address is printed: {err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("drill run at") && l.contains("PASSED") && l.contains("RTO")),
        "{err}"
    );
    assert!(err.contains("1 drill runs passed; status ok"), "{err}");
    // Then the same dump as a DR exercise in region us, its gate approved by the demo.
    assert!(err.contains("exercise \"shop DR to us\""), "{err}");
    assert!(err.contains("critical path: db → approve cutover"), "{err}");
    assert!(err.contains(": PASSED"), "{err}");
    // Every verdict so far, chained and exported signed.
    assert!(
        err.contains("evidence for auditors") && err.contains("verdicts in a hash chain"),
        "{err}"
    );
    let left: Vec<_> = fleet_dirs().difference(&before).cloned().collect();
    assert!(left.is_empty(), "the fleet's dir was left behind: {left:?}");
}

#[test]
fn demo_json_report_has_the_promised_shape() {
    let work = work_dir();
    let (_, r) = demo_dump(work.path(), 5_000);
    assert_eq!(r["verdict"], "passed");
    assert_eq!(r["engine"], "postgres");
    assert!(
        r["artifact"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("file://"))
    );
    assert!(r["artifact"]["bytes"].as_u64().is_some_and(|b| b > 0));
    assert_eq!(r["artifact"]["blake3"].as_str().map(str::len), Some(64));
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        phases,
        [
            "fetch",
            "checksum",
            "provision",
            "restore",
            "checks",
            "teardown"
        ]
    );
    assert!(
        r["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .all(|p| p["ms"].is_u64() && p["ok"] == true)
    );
    assert!(r["rto_ms"].is_u64());
    assert!(r["rpo_ms"].is_u64());
    let checks = r["checks"].as_array().expect("checks");
    assert!(checks.iter().all(|c| c["ok"] == true
        && c["sql"].is_string()
        && c["expect"].is_string()
        && c["observed"].is_string()));
    assert!(
        r["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .any(|t| t["name"] == "public.orders" && t["rows"] == 5_000)
    );
    assert!(r.get("failure").is_none());
    assert_clean(work.path());
}

#[test]
fn plan_file_junit_and_a_failing_quick_form() {
    let work = work_dir();
    let (keep, _) = demo_dump(work.path(), 2_000);
    let out = run(bin()
        .args(["verify", "--output", "junit", "--plan"])
        .arg(keep.join("plan.toml"))
        .arg("--work-dir")
        .arg(work.path()));
    assert_exit(&out, 0);
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        xml.contains("<testsuite ") && xml.contains("failures=\"0\""),
        "{xml}"
    );
    assert!(xml.contains("classname=\"rehearse.check\" name=\"orders\""));
    assert!(xml.contains("classname=\"rehearse.phase\" name=\"restore\""));

    let out = run(bin()
        .arg("verify")
        .arg(keep.join("shop.dump"))
        .args([
            "--check",
            "SELECT count(*) FROM orders",
            "--expect",
            ">= 2001",
            "--output",
            "json",
            "--work-dir",
        ])
        .arg(work.path()));
    assert_exit(&out, 1);
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["verdict"], "failed");
    assert_eq!(r["failure"]["phase"], "checks");
    assert_eq!(r["checks"][0]["observed"], "2000");

    let out = run(bin()
        .arg("verify")
        .arg(keep.join("shop.dump"))
        .args(["--rto", "1ms", "--work-dir"])
        .arg(work.path()));
    assert_exit(&out, 1);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.starts_with("FAILED"), "{human}");
    assert!(human.contains("failed in targets: RTO"), "{human}");
    assert_clean(work.path());
}

/// Waits until psql runs a restore for a sandbox of `work` (the verification is mid-restore).
fn wait_for_restore(work: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    let needle = work.to_string_lossy().into_owned();
    while Instant::now() < deadline {
        let restoring = fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .any(|c| c.contains(&needle) && c.contains("psql"));
        if restoring {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no restore started under {}", work.display());
}

/// A plain dump whose restore takes 60 s, so a signal always lands mid-restore.
fn slow_dump(work: &Path) -> PathBuf {
    let dir = work.join("artifacts");
    fs::create_dir_all(&dir).expect("artifacts");
    let path = dir.join("slow.sql");
    fs::write(
        &path,
        "-- PostgreSQL database dump\nCREATE TABLE t (id int);\nSELECT pg_sleep(60);\n",
    )
    .expect("write");
    path
}

#[test]
fn sigint_tears_down_and_exits_130() {
    let work = work_dir();
    let dump = slow_dump(work.path());
    let child = bin()
        .arg("verify")
        .arg(&dump)
        .arg("--work-dir")
        .arg(work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_restore(work.path(), Duration::from_secs(30));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_exit(&out, 130);
    assert!(stderr(&out).contains("interrupted"));
    assert_clean(work.path());
}

#[test]
fn after_kill_9_the_next_run_reaps_the_orphaned_sandbox() {
    let work = work_dir();
    let dump = slow_dump(work.path());
    let mut child = bin()
        .arg("verify")
        .arg(&dump)
        .arg("--work-dir")
        .arg(work.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_restore(work.path(), Duration::from_secs(30));
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // The orphan is really there: a sandbox dir (and its server) outlived the killed process.
    assert!(
        fs::read_dir(work.path())
            .expect("read")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("rehearse-"))
    );
    let empty = work.path().join("artifacts/empty.dump");
    fs::write(&empty, b"").expect("write");
    let out = run(bin()
        .arg("verify")
        .arg(&empty)
        .arg("--work-dir")
        .arg(work.path()));
    assert_exit(&out, 1);
    assert_clean(work.path());
}

/// On a terminal (a pseudo-terminal made by util-linux's `script`), `verify` draws its progress
/// on stderr: each finished phase as a line with its time, the checksum's bytes and throughput,
/// the restore's TOC entries done of the archive's total;
/// without one, nothing but the report reaches stdout and no bar reaches stderr.
#[test]
fn verify_shows_progress_on_a_terminal_and_nothing_off_one() {
    let work = tempfile::tempdir().expect("work dir");
    let (keep, _) = demo_dump(work.path(), 200);
    let plan = keep.join("plan.toml");
    let typescript = work.path().join("typescript");
    let command = format!(
        "{} verify --plan {} --work-dir {}",
        env!("CARGO_BIN_EXE_rehearse"),
        plan.display(),
        work.path().display()
    );
    // util-linux's `script` gives the command a terminal, with bin()'s environment.
    let out = run(Command::new("script")
        .args(["-qfec", &command])
        .arg(&typescript)
        .env("REHEARSE_RUNTIME", "process")
        .env(
            "REHEARSE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        )
        .env_remove("REHEARSE_PROGRESS"));
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&fs::read(&typescript).expect("typescript")).into_owned();
    for phase in rehearse_core::report::Phase::UNPROMOTED.map(|p| p.as_str()) {
        assert!(
            shown.contains(&format!("✓ {phase:<9}")),
            "no line for {phase}: {shown:?}"
        );
    }
    assert!(
        shown
            .split("✓ checksum")
            .nth(1)
            .is_some_and(|rest| rest.contains("KiB") && rest.contains("/s")),
        "the checksum's bytes and throughput: {shown:?}"
    );
    // The restore counts the archive's TOC entries as verbose pg_restore finishes them: all of
    // them, of the total its list gives.
    let restored = shown
        .split("✓ restore")
        .nth(1)
        .and_then(|rest| rest.split(" TOC entries").next())
        .and_then(|rest| rest.split_whitespace().last())
        .and_then(|n| n.split_once('/'))
        .unwrap_or_else(|| panic!("no TOC entries on the restore line: {shown:?}"));
    assert_eq!(restored.0, restored.1, "{shown:?}");
    assert!(
        restored.1.parse::<u32>().is_ok_and(|n| n > 5),
        "{restored:?}"
    );
    assert!(shown.contains("PASSED"), "{shown:?}");

    let out = run(bin()
        .args(["verify", "--plan"])
        .arg(&plan)
        .arg("--work-dir")
        .arg(work.path()));
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(!err.contains('✓') && !err.contains("\x1b["), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("PASSED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// deploy/systemd's units: `systemd-analyze verify` finds nothing to say (an unknown or misspelt
/// key is a warning there, so any output fails), and the offline security review rates each
/// service's exposure "OK" (at most 2.0 of 10).
#[test]
fn the_systemd_units_verify_clean_and_are_hardened() {
    let dir = tempfile::tempdir().expect("dir");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    for unit in ["rehearse-coordinator.service", "rehearse-worker.service"] {
        // verify checks that ExecStart's binary exists: point it at the one just built.
        let text = fs::read_to_string(units.join(unit)).expect("unit");
        assert!(
            text.contains("ExecStart=/usr/local/bin/rehearse "),
            "{unit}"
        );
        let path = dir.path().join(unit);
        fs::write(
            &path,
            text.replace("/usr/local/bin/rehearse", env!("CARGO_BIN_EXE_rehearse")),
        )
        .expect("write unit");
        let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
        assert!(
            out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
            "systemd-analyze verify {unit} (scripts/setup installs systemd): {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&path));
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}: {text}{}", stderr(&out)));
        assert!(exposure <= 2.0, "{unit}: exposure {exposure}\n{text}");
    }
}

/// deploy/k8s's manifests validate strictly (no unknown field) against the Kubernetes 1.30 API
/// schemas (kubernetes-validate, PyPI: no cluster runs here), and keep what the coordinators
/// need: stable ids from a StatefulSet started in parallel behind a headless service, a volume
/// each, readiness from the gRPC health check, and a disruption budget that keeps the quorum.
#[test]
fn the_kubernetes_manifests_validate_and_keep_the_quorum_safe() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let out = run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.30.0"])
        .args(&files));
    assert!(
        out.status.success(),
        "kubernetes-validate (scripts/setup installs it): {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let coordinator = fs::read_to_string(dir.join("coordinator.yaml")).expect("coordinator.yaml");
    for needed in [
        "kind: StatefulSet",
        "podManagementPolicy: Parallel",
        "clusterIP: None",
        "publishNotReadyAddresses: true",
        "volumeClaimTemplates:",
        "grpc:\n              port: 7000",
        "kind: PodDisruptionBudget",
        "minAvailable: 2",
        "--id \"$(( ${HOSTNAME##*-} + 1 ))\"",
    ] {
        assert!(
            coordinator.contains(needed),
            "coordinator.yaml lacks {needed:?}"
        );
    }
    // The peer list names every ordinal the StatefulSet makes.
    for ordinal in 0..3 {
        assert!(
            coordinator.contains(&format!(
                "{}=rehearse-coordinator-{ordinal}.rehearse-coordinator",
                ordinal + 1
            )),
            "peer {ordinal}"
        );
    }
}
