//! A fleet of real processes: three `rehearse coordinator`s and `rehearse worker`s on loopback,
//! with a real pg_dump of the demo database to verify.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rehearse_coordinator::client::Client;
use rehearse_proto::v1 as pb;
use serde_json::Value;

use super::TestCluster;

/// Short, so losing a worker costs seconds, not the default 10 s.
pub const LEASE: &str = "2s";

/// A restore that takes a few seconds: a plain SQL dump whose script sleeps between its tables.
pub const SLOW_DUMP: &str = "--
-- PostgreSQL database dump
--
CREATE TABLE public.items (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
SELECT pg_sleep(5);
CREATE TABLE public.more (id integer PRIMARY KEY);
INSERT INTO public.more SELECT g FROM generate_series(1, 10) g;
--
-- PostgreSQL database dump complete
--
";

pub struct Fleet {
    pub cluster: TestCluster,
    /// Workers' dirs and the artifacts; reachable by the sandbox user.
    pub root: tempfile::TempDir,
    pub workers: BTreeMap<String, Child>,
    /// The demo's plan for its real pg_dump (custom format), as TOML.
    pub plan: String,
    /// Each coordinator's HTTP API base URL (`Fleet::start_http`), by node id.
    pub http: BTreeMap<u64, String>,
}

impl Fleet {
    /// Three coordinators, the given workers (name, region, slots), and a real dump.
    pub async fn start(workers: &[(&str, &str, u32)]) -> Fleet {
        Fleet::start_with(workers, &[]).await
    }

    /// [`Fleet::start`], with more flags for every coordinator.
    pub async fn start_with(workers: &[(&str, &str, u32)], coordinator_flags: &[&str]) -> Fleet {
        Fleet::start_inner(workers, coordinator_flags, false).await
    }

    /// [`Fleet::start`], every coordinator serving the HTTP API on a loopback port of its own.
    pub async fn start_http(workers: &[(&str, &str, u32)]) -> Fleet {
        Fleet::start_inner(workers, &[], true).await
    }

    /// Three coordinators with `--auth required`, `admin` as the `--admin-token-file` secret
    /// (the test's own clients send it), `flags` more, the HTTP API on; no workers yet (they
    /// need a token: `spawn_worker_with(.., &["--token", …])`).
    pub async fn start_auth(admin: &str, flags: &[&str]) -> Fleet {
        let file = std::env::temp_dir().join(format!("rh-admin-{}", std::process::id()));
        fs::write(&file, format!("{admin}\n")).expect("admin token file");
        let file = file.display().to_string();
        let mut all = vec!["--auth", "required", "--admin-token-file", &file];
        all.extend_from_slice(flags);
        Fleet::start_full(&[], &all, true, Some(admin)).await
    }

    async fn start_inner(
        workers: &[(&str, &str, u32)],
        coordinator_flags: &[&str],
        http: bool,
    ) -> Fleet {
        Fleet::start_full(workers, coordinator_flags, http, None).await
    }

    async fn start_full(
        workers: &[(&str, &str, u32)],
        coordinator_flags: &[&str],
        http: bool,
        token: Option<&str>,
    ) -> Fleet {
        let mut cluster = TestCluster::new(super::loopback_addrs(3), 10_000);
        cluster.token = token.map(str::to_owned);
        cluster.extra = vec!["--lease".into(), LEASE.into()];
        cluster
            .extra
            .extend(coordinator_flags.iter().map(|f| (*f).to_owned()));
        let mut http_urls = BTreeMap::new();
        if http {
            for (id, addr) in super::loopback_addrs(3) {
                cluster
                    .node_extra
                    .insert(id, vec!["--http-listen".into(), addr.clone()]);
                http_urls.insert(id, format!("http://{addr}"));
            }
        }
        cluster.spawn_all();
        cluster.leader().await;
        cluster.wait_current_version().await;
        // Under the system temp dir: a deep path could overflow the unix socket path limit.
        let root = tempfile::Builder::new()
            .prefix("rh-fleet-")
            .tempdir()
            .expect("root");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let artifacts = root.path().join("artifacts");
        let out = Command::new(env!("CARGO_BIN_EXE_rehearse"))
            .args(["demo", "--orders", "2000", "--output", "json", "--keep"])
            .arg(&artifacts)
            .arg("--work-dir")
            .arg(root.path())
            .env("REHEARSE_CACHE_DIR", root.path().join("demo-cache"))
            .stdin(Stdio::null())
            .output()
            .expect("run demo");
        assert!(
            out.status.success(),
            "demo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(artifacts.join("slow.sql"), SLOW_DUMP).expect("write slow dump");
        let plan = fs::read_to_string(artifacts.join("plan.toml")).expect("demo plan");
        let mut fleet = Fleet {
            cluster,
            root,
            workers: BTreeMap::new(),
            plan,
            http: http_urls,
        };
        for (name, region, slots) in workers {
            fleet.spawn_worker(name, region, *slots);
        }
        fleet.wait_workers(workers.len()).await;
        fleet
    }

    pub fn work_dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn coordinators(&self) -> String {
        self.cluster
            .addrs
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn spawn_worker(&mut self, name: &str, region: &str, slots: u32) {
        self.spawn_worker_on(name, region, slots, "process");
    }

    pub fn spawn_worker_on(&mut self, name: &str, region: &str, slots: u32, runtime: &str) {
        self.spawn_worker_with(name, region, slots, &["--runtime", runtime]);
    }

    pub fn spawn_worker_with(&mut self, name: &str, region: &str, slots: u32, extra: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join(format!("{name}.log")))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_rehearse"))
            .args(["worker", "--coordinators", &self.coordinators()])
            .args(["--name", name, "--region", region])
            .args(["--slots", &slots.to_string()])
            .args(extra)
            .arg("--work-dir")
            .arg(self.work_dir(name))
            .env("REHEARSE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn worker");
        self.workers.insert(name.to_owned(), child);
    }

    pub fn signal_worker(&self, name: &str, signal: &str) {
        let pid = self.workers[name].id().to_string();
        let ok = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    pub fn kill_worker(&mut self, name: &str) {
        if let Some(mut child) = self.workers.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn worker_log(&self, name: &str) -> String {
        fs::read_to_string(self.root.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The demo plan with `extra` TOML appended (tables go after the plan's own).
    pub fn plan_with(&self, extra: &str) -> String {
        format!("{}\n{extra}\n", self.plan)
    }

    /// The slow plain dump, with the given placement.
    pub fn slow_plan(&self, placement: &str) -> String {
        let url = self.root.path().join("artifacts/slow.sql");
        format!(
            "[artifact]\nurl = \"{}\"\nengine = \"postgres\"\n\n[[checks]]\nname = \"items\"\nsql = \"SELECT count(*) FROM items\"\nexpect = \"= 1000\"\n\n{placement}\n",
            url.display()
        )
    }

    pub fn client(&self) -> Client {
        self.cluster.client()
    }

    pub async fn wait_workers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(w) = self.client().list_workers().await
                && w.iter().filter(|w| w.state == "ready").count() >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{n} workers did not register; logs in {}",
            self.root.path().display()
        );
    }

    /// Polls the job until `done` holds.
    pub async fn wait_job(&self, id: &str, what: &str, done: impl Fn(&pb::Job) -> bool) -> pb::Job {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(job) = self.client().get_job(id).await {
                if done(&job) {
                    return job;
                }
                last = Some(job);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "job {id} never {what}; last seen {last:?}; worker logs: {}",
            self.workers
                .keys()
                .map(|w| format!("\n--- {w}\n{}", self.worker_log(w)))
                .collect::<String>()
        );
    }

    pub async fn wait_final(&self, id: &str) -> pb::Job {
        self.wait_job(id, "ended", |j| {
            matches!(
                j.state.as_str(),
                "passed" | "failed" | "cancelled" | "error"
            )
        })
        .await
    }

    pub fn rehearse(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_rehearse"))
            .args(args)
            .env("REHEARSE_COORDINATORS", self.coordinators())
            .stdin(Stdio::null())
            .output()
            .expect("run rehearse")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // SIGTERM: a worker stops its sandboxes before it exits.
        for child in self.workers.values_mut() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in self.workers.values_mut() {
            let _ = child.wait();
        }
    }
}

pub fn report(job: &pb::Job) -> Value {
    serde_json::from_str(&job.report_json).unwrap_or(Value::Null)
}

/// Sandbox dirs left under the worker's dir, and processes naming them.
pub fn leftovers(work: &Path) -> Vec<String> {
    let mut left: Vec<String> = fs::read_dir(work.join("sandboxes"))
        .map(|d| {
            d.flatten()
                .map(|e| format!("dir {}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    let needle = work.join("sandboxes").to_string_lossy().into_owned();
    left.extend(
        fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .map(|c| format!("process {c}")),
    );
    left
}

/// Waits (a sandbox's teardown takes a moment) until nothing is left, or fails saying what is.
pub async fn eventually_no_orphans(work: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left = leftovers(work);
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = leftovers(work);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}
