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
