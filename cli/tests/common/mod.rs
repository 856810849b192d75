//! Shared by the black-box tests: a cluster of real `rehearse coordinator` processes on loopback.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rehearse_coordinator::client::Client;
use rehearse_proto::v1 as pb;
use rehearse_proto::v1::coordinator_client::CoordinatorClient;

pub mod fleet;
#[path = "../../../worker/tests/common/moto.rs"]
pub mod moto;

pub const PLAN: &str = "[artifact]\nurl = \"/backups/shop.dump\"\nengine = \"postgres\"\n";

pub fn loopback_addrs(n: u64) -> BTreeMap<u64, String> {
    (1..=n)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A cluster of coordinator processes in a temp dir.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, String>,
    /// Per-node `--peers` when the test routes peer traffic through proxies.
    pub peer_lists: BTreeMap<u64, String>,
    /// Extra flags for every node (TLS files).
    pub extra: Vec<String>,
    /// Extra flags for one node (e.g. another command version, as another release would run).
    pub node_extra: BTreeMap<u64, Vec<String>>,
    /// Another `rehearse` binary for one node (an older release, in the rolling-upgrade test).
    pub node_bin: BTreeMap<u64, PathBuf>,
    pub procs: BTreeMap<u64, Child>,
    pub compact_after: u64,
    /// The token the test's clients send (a cluster run with `--auth required`).
    pub token: Option<String>,
}

impl TestCluster {
    /// A cluster of `addrs`, not started yet (tests may set peer lists or flags first).
    pub fn new(addrs: BTreeMap<u64, String>, compact_after: u64) -> TestCluster {
        TestCluster {
            dir: tempfile::tempdir().expect("dir"),
            addrs,
            peer_lists: BTreeMap::new(),
            extra: Vec::new(),
            node_extra: BTreeMap::new(),
            node_bin: BTreeMap::new(),
            procs: BTreeMap::new(),
            compact_after,
            token: None,
        }
    }

    pub fn start(n: u64, compact_after: u64) -> TestCluster {
        let mut c = TestCluster::new(loopback_addrs(n), compact_after);
        c.spawn_all();
        c
    }

    pub fn spawn_all(&mut self) {
        let ids: Vec<u64> = self.addrs.keys().copied().collect();
        for id in ids {
            self.spawn(id, false);
        }
    }

    pub fn peers(&self) -> String {
        self.addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    pub fn log(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    pub fn command(&self, id: u64, join: bool) -> Command {
        let peers = self
            .peer_lists
            .get(&id)
            .cloned()
            .unwrap_or_else(|| self.peers());
        let mut cmd = match self.node_bin.get(&id) {
            Some(bin) => Command::new(bin),
            None => Command::new(env!("CARGO_BIN_EXE_rehearse")),
        };
        cmd.args([
            "coordinator",
            "--id",
            &id.to_string(),
            "--listen",
            &self.addrs[&id],
            "--peers",
            &peers,
            "--region",
            if id.is_multiple_of(2) { "eu" } else { "us" },
        ])
        .arg("--data-dir")
        .arg(self.data_dir(id))
        .args(["--compact-after", &self.compact_after.to_string()])
        .env("REHEARSE_LOG", "info")
        .stdin(Stdio::null());
        if join {
            cmd.arg("--join");
        }
        cmd.args(&self.extra);
        cmd.args(self.node_extra.get(&id).into_iter().flatten());
        cmd
    }

    pub fn spawn(&mut self, id: u64, join: bool) {
        self.spawn_with(id, join, &[]);
    }

    /// Starts a node with flags of this start only (e.g. `--force-new-cluster`).
    pub fn spawn_with(&mut self, id: u64, join: bool, args: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(id))
            .expect("log");
        let child = self
            .command(id, join)
            .args(args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn coordinator");
        self.procs.insert(id, child);
    }

    pub fn add_node(&mut self, id: u64) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        self.addrs.insert(id, addr.clone());
        self.spawn(id, true);
        addr
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn client(&self) -> Client {
        self.with_token(Client::new(self.addrs.values().cloned().collect()).expect("client"))
    }

    pub fn client_of(&self, ids: &[u64]) -> Client {
        self.with_token(
            Client::new(ids.iter().map(|id| self.addrs[id].clone()).collect()).expect("client"),
        )
    }

    fn with_token(&self, client: Client) -> Client {
        match &self.token {
            Some(t) => client.with_token(t).expect("token"),
            None => client,
        }
    }

    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(s) = self.client().status().await
                && s.leader != 0
            {
                return s.leader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader elected; logs in {}", self.dir.path().display());
    }

    /// Waits until the cluster runs this release's command version: the leader raises it once
    /// every member has said it reads it. A member never heard from is named in the panic. A
    /// node that could not bind its port (another test's socket took it between `free_port` and
    /// the bind) is started again; one that exited for any other reason fails the test.
    pub async fn wait_current_version(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            let exited: Vec<u64> = self
                .procs
                .iter_mut()
                .filter_map(|(id, p)| matches!(p.try_wait(), Ok(Some(_))).then_some(*id))
                .collect();
            for id in exited {
                let log = fs::read_to_string(self.log(id)).unwrap_or_default();
                assert!(
                    log.contains("in use"),
                    "coordinator {id} exited at start: {log}"
                );
                eprintln!("coordinator {id} found its port taken; starting it again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.spawn(id, false);
            }
            if let Ok(s) = self.client().status().await {
                if s.cluster_version >= rehearse_core::codec::CURRENT {
                    return;
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the cluster's command version was not raised to {} in 60 s; last status {last:#?}; logs in {}",
            rehearse_core::codec::CURRENT,
            self.dir.path().display()
        );
    }

    /// This node's own view (not forwarded to the leader).
    pub async fn local_status(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let mut c = CoordinatorClient::connect(format!("http://{}", self.addrs[&id]))
            .await
            .ok()?;
        let mut req = tonic::Request::new(pb::ClusterStatusRequest {});
        if let Some(t) = &self.token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().ok()?);
        }
        c.cluster_status(req).await.ok().map(|r| r.into_inner())
    }

    pub async fn wait_caught_up(&self, id: u64, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self
                .local_status(id)
                .await
                .is_some_and(|s| s.applied >= index)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {id} did not reach index {index}; log: {}",
            fs::read_to_string(self.log(id)).unwrap_or_default()
        );
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// Ids of containers carrying a label (the docker CLI, independent of the worker's own view).
pub fn containers_labelled(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
        .expect("the docker CLI is required for this test");
    assert!(
        out.status.success(),
        "no Docker engine: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

pub fn container_label(id: &str, key: &str) -> String {
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
            id,
        ])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
