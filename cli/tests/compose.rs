//! deploy/compose for real: `deploy/compose/up` brings up the two-region fleet from the locally
//! built images (the binary image made from this test build), a job per region is verified by
//! that region's worker in a docker sandbox, then region `eu` is cut off (every eu container
//! disconnected from every network) and `rehearse cluster failover --to-region us --force` moves
//! the cluster to `us`: a job submitted there is verified, and every job acknowledged before the
//! cut is still there. `deploy/compose/down` removes it all, also when the test fails. Fails
//! (never skips) without a Docker engine or the Compose tool.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// One compose fleet, named for this test process; `down` when dropped.
struct Fleet {
    project: String,
    state: PathBuf,
    ports: [u16; 5],
}

impl Fleet {
    fn env(&self, cmd: &mut Command) {
        cmd.env("COMPOSE_PROJECT_NAME", &self.project)
            .env("REHEARSE_COMPOSE_STATE", &self.state)
            .env("REHEARSE_BIN", env!("CARGO_BIN_EXE_rehearse"));
        for (i, port) in self.ports.iter().enumerate() {
            cmd.env(format!("REHEARSE_HTTP_PORT_{}", i + 1), port.to_string());
        }
    }

    fn script(&self, name: &str) -> Output {
        let mut cmd = Command::new(repo().join("deploy/compose").join(name));
        self.env(&mut cmd);
        cmd.current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .expect("run the compose script")
    }

    /// `docker-compose` (or `docker compose`) on this fleet.
    fn compose(&self, args: &[&str]) -> Output {
        let plugin = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        let mut cmd = if plugin {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        } else {
            Command::new("docker-compose")
        };
        cmd.arg("-f")
            .arg(repo().join("deploy/compose/compose.yaml"))
            .args(args);
        self.env(&mut cmd);
        cmd.stdin(Stdio::null()).output().expect("run compose")
    }

    fn container(&self, service: &str) -> String {
        let out = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    /// `rehearse ARGS` inside a coordinator's container (the image has no shell, only this).
    fn rehearse(&self, service: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "-T", service, "rehearse"];
        all.extend_from_slice(args);
        self.compose(&all)
    }

    fn api(&self, n: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[n - 1])
    }

    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "60"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let out = self.script("down");
        if !out.status.success() {
            eprintln!("down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn plan(state: &Path, region: &str) -> String {
    format!(
        "[artifact]\nurl = \"{}\"\nengine = \"postgres\"\n\n[placement]\nregion = \"{region}\"\n\n[[checks]]\nname = \"orders\"\nsql = \"SELECT count(*) FROM orders\"\nexpect = \"= 1000\"\n",
        state.join("backups/shop.sql").display()
    )
}

/// Submits through coordinator `n` (following its redirect to the leader) and waits for the
/// verdict; the job.
async fn verify(http: &reqwest::Client, fleet: &Fleet, n: usize, region: &str) -> Value {
    let url = format!("{}/v1/verifications?wait=3m", fleet.api(n));
    let deadline = Instant::now() + Duration::from_secs(60);
    // A coordinator that has just restarted or lost its leader answers 503 for a moment.
    let res = loop {
        let res = http
            .post(&url)
            .header("content-type", "application/toml")
            .body(plan(&fleet.state, region))
            .send()
            .await;
        match res {
            Ok(r) if r.status().as_u16() != 503 => break r,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no coordinator took the job: {other:?}\n{}",
                    fleet.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let status = res.status();
    let job: Value = res.json().await.expect("a job");
    assert_eq!(status.as_u16(), 201, "{job}");
    assert_eq!(job["state"], "passed", "{job}\n{}", fleet.logs());
    job
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

#[tokio::test]
async fn the_compose_fleet_verifies_in_both_regions_and_fails_over_to_us() {
    let project = format!("rh-compose-{}", std::process::id());
    let fleet = Fleet {
        state: std::env::temp_dir().join(&project),
        project,
        ports: std::array::from_fn(|_| common::free_port()),
    };
    let up = fleet.script("up");
    let said = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        said.contains(&format!("HTTP API and dashboard: {}/", fleet.api(1))),
        "{said}"
    );
    let http = reqwest::Client::new();

    // A job per region, each run by that region's worker.
    let mut before = Vec::new();
    for (n, region, worker) in [(1, "eu", "eu-1"), (3, "us", "us-1")] {
        let job = verify(&http, &fleet, n, region).await;
        let ran_on = job["attempts"][0]["worker"].as_str().unwrap_or_default();
        assert_eq!(ran_on, worker, "{job}");
        before.push(job["id"].as_str().expect("id").to_owned());
    }
    // The members as the leader sees them: 2 eu voters, 1 us voter, 2 us learners.
    let status = json_of(&fleet.rehearse(
        "coord-3",
        &[
            "cluster",
            "status",
            "--output",
            "json",
            "--coordinators",
            "127.0.0.1:7000",
        ],
    ));
    assert_eq!(status["regions"]["eu"]["voters"], 2, "{status}");
    assert_eq!(status["regions"]["us"]["voters"], 1, "{status}");
    assert_eq!(status["regions"]["us"]["learners"], 2, "{status}");
    assert!(
        status["warnings"].to_string().contains("eu"),
        "one region holds a majority of the voters: {status}"
    );
    // Every us member has what the leader committed (so the failover can keep it all).
    let commit = status["commit"].as_u64().expect("commit");
    let deadline = Instant::now() + Duration::from_secs(20);
    for service in ["coord-3", "coord-4", "coord-5"] {
        loop {
            let own = json_of(&fleet.rehearse(
                service,
                &[
                    "cluster",
                    "status",
                    "--local",
                    "--output",
                    "json",
                    "--coordinators",
                    "127.0.0.1:7000",
                ],
            ));
            if own["applied"].as_u64().unwrap_or(0) >= commit {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{service} never caught up: {own}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Region eu goes dark: its coordinators and worker lose every network.
    let cut = Instant::now();
    for service in ["coord-1", "coord-2", "worker-eu-1"] {
        let id = fleet.container(service);
        for net in ["eu", "wan"] {
            let out = Command::new("docker")
                .args([
                    "network",
                    "disconnect",
                    "-f",
                    &format!("{}_{net}", fleet.project),
                    &id,
                ])
                .output()
                .expect("docker network disconnect");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let disconnected = cut.elapsed();
    let failover = json_of(&fleet.rehearse(
        "coord-3",
        &[
            "cluster",
            "failover",
            "--to-region",
            "us",
            "--force",
            "--yes",
            "--output",
            "json",
            "--coordinators",
            "coord-3:7000,coord-4:7000,coord-5:7000",
        ],
    ));
    let moved = cut.elapsed();
    assert_eq!(
        failover["forced"]["left_out"],
        serde_json::json!([1, 2]),
        "{failover}"
    );
    assert_eq!(
        failover["voters"],
        serde_json::json!([3, 4, 5]),
        "{failover}"
    );
    let job = verify(&http, &fleet, 3, "us").await;
    let verified = cut.elapsed();
    assert_eq!(job["attempts"][0]["worker"], "us-1", "{job}");
    eprintln!(
        "compose failover: eu disconnected in {} ms; failover done at {} ms (the command {} ms, the rest docker exec); a verified job in us at {} ms ({} ms after the failover)",
        disconnected.as_millis(),
        moved.as_millis(),
        failover["took_ms"],
        verified.as_millis(),
        (verified - moved).as_millis()
    );
    // Nothing acknowledged before the cut is lost.
    for id in &before {
        let res = http
            .get(format!("{}/v1/jobs/{id}", fleet.api(4)))
            .send()
            .await
            .expect("get job");
        let job: Value = res.json().await.expect("job");
        assert_eq!(job["state"], "passed", "{id}: {job}");
    }
}
