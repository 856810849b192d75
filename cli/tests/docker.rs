//! `rehearse verify --runtime docker`, black-box, against the real Docker engine: the container's
//! labels, a kill -9 mid-restore leaving a container that the next run reaps, and exit codes.
//! Fails (never skips) when no Docker engine or no image is there: scripts/test builds them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{container_label, containers_labelled};

fn bin(owner: &str, work: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehearse"));
    cmd.env_remove("RUST_LOG")
        .env("REHEARSE_RUNTIME", "docker")
        .env("REHEARSE_CONTAINER_OWNER", owner)
        .env("REHEARSE_WORK_DIR", work)
        .env(
            "REHEARSE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"),
        );
    cmd
}

/// Container ids with `rehearse.worker=OWNER`, any state (the docker CLI, independent of ours).
fn containers(owner: &str) -> Vec<String> {
    containers_labelled(&format!("rehearse.worker={owner}"))
}

fn inspect(id: &str, template: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", template, id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("rh-dk-")
        .tempdir()
        .expect("work dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run rehearse")
}

#[test]
fn kill_mid_restore_leaves_a_container_that_the_next_run_reaps() {
    let work = work_dir();
    let owner = format!("test-{}", std::process::id());
    let files = tempfile::tempdir().expect("files");
    let slow = files.path().join("slow.sql");
    fs::write(&slow, "CREATE TABLE t (id int);\nSELECT pg_sleep(120);\n").expect("write");
    let mut child = bin(&owner, work.path())
        .args(["verify", "--output", "json"])
        .arg(&slow)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rehearse");
    // Wait until the restore runs in its container.
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        if let Some(id) = containers(&owner).into_iter().next()
            && inspect(&id, "{{.State.Running}}") == "true"
            && fs::read_dir(work.path())
                .expect("work")
                .flatten()
                .any(|e| e.path().join("sock/.s.PGSQL.5432").exists())
        {
            break id;
        }
        assert!(Instant::now() < deadline, "no running container appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Mid-restore means the restore tool runs in the container: wait for psql to be there.
    while !String::from_utf8_lossy(
        &Command::new("docker")
            .args(["top", &id])
            .output()
            .expect("docker top")
            .stdout,
    )
    .contains("psql")
    {
        assert!(Instant::now() < deadline, "psql never ran in the container");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What the container is: no network, read-only root, limits, labels.
    assert_eq!(inspect(&id, "{{.HostConfig.NetworkMode}}"), "none");
    assert_eq!(inspect(&id, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(
        inspect(&id, "{{.HostConfig.Memory}}"),
        (4u64 << 30).to_string()
    );
    assert_eq!(inspect(&id, "{{.HostConfig.PidsLimit}}"), "1024");
    assert_eq!(inspect(&id, "{{.HostConfig.CapDrop}}"), "[ALL]");
    assert_eq!(container_label(&id, "rehearse.worker"), owner);
    assert!(container_label(&id, "rehearse.owner").starts_with(&child.id().to_string()));

    child.kill().expect("kill -9");
    child.wait().expect("reap child");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        containers(&owner),
        vec![id.clone()],
        "a kill -9 leaves the container: nothing else can remove it"
    );

    // The next run with the same owner label reaps it (and the sandbox dir) before it starts.
    let good = files.path().join("good.sql");
    fs::write(
        &good,
        "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1), (2);\n",
    )
    .expect("write");
    let out = run(bin(&owner, work.path())
        .args([
            "verify",
            "--check",
            "SELECT count(*) FROM t",
            "--expect",
            "= 2",
        ])
        .arg(&good));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("docker sandbox"));
    assert!(containers(&owner).is_empty(), "the reaper left a container");
    let left: Vec<_> = fs::read_dir(work.path()).expect("work").flatten().collect();
    assert!(left.is_empty(), "sandbox dirs left: {left:?}");
}

#[test]
fn docker_runtime_without_the_image_exits_2_with_one_line() {
    let work = work_dir();
    let files = tempfile::tempdir().expect("files");
    let good = files.path().join("good.sql");
    fs::write(&good, "CREATE TABLE t (id int);\n").expect("write");
    let out = run(bin("test-noimage", work.path())
        .args(["verify", "--image-postgres", "rehearse/none:0"])
        .arg(&good));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("rehearse/none:0"), "{stderr}");
}

/// `deploy/images/build rehearse` makes the binary image from this build with no base image: it
/// prints its version, serves a coordinator whose HTTP API answers on a published port, and holds
/// nothing else (no shell).
#[test]
fn the_binary_image_runs_a_coordinator_and_holds_nothing_else() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/images/build");
    let built = run(Command::new(script)
        .arg("rehearse")
        .env("REHEARSE_BIN", env!("CARGO_BIN_EXE_rehearse"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    assert!(
        built.status.success(),
        "deploy/images/build rehearse: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let image = "rehearse/rehearse:local";
    let version = run(Command::new("docker").args(["run", "--rm", image, "--version"]));
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("rehearse "),
        "{version:?}"
    );
    let shell = run(Command::new("docker").args([
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "true",
    ]));
    assert!(!shell.status.success(), "the image has no shell");

    let started = run(Command::new("docker").args([
        "run",
        "-d",
        "--label",
        "rehearse.test=binary-image",
        "-p",
        "127.0.0.1::8080",
        image,
        "coordinator",
        "--id",
        "1",
        "--listen",
        "0.0.0.0:7000",
        "--advertise",
        "127.0.0.1:7000",
        "--peers",
        "1=127.0.0.1:7000",
        "--data-dir",
        "/var/lib/rehearse/data",
        "--http-listen",
        "0.0.0.0:8080",
    ]));
    assert!(started.status.success(), "{started:?}");
    let id = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    let port = run(Command::new("docker").args(["port", &id, "8080"]));
    let addr = String::from_utf8_lossy(&port.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = String::new();
    while Instant::now() < deadline {
        let out = run(Command::new("curl").args(["-sf", &format!("http://{addr}/readyz")]));
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = run(Command::new("docker").args(["logs", &id]));
    let _ = run(Command::new("docker").args(["rm", "-f", &id]));
    assert!(
        answer.starts_with("ready: leader 1"),
        "the coordinator in the image did not become ready: {answer:?}; logs: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
}
