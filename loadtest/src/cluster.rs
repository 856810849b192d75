//! A cluster of `rehearse coordinator` processes on loopback, for the loadtest and the
//! benchmarks (`coordinator/examples`).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rehearse_proto::client::Client;

/// The plan every benchmark job carries (never run: the benchmarks measure the coordinator).
pub const PLAN: &str = "[artifact]\nurl = \"/backups/shop.dump\"\nengine = \"postgres\"\n";

/// The rehearse binary (first argument) and all arguments.
pub fn args() -> (String, Vec<String>) {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/rehearse".into());
    (bin, args)
}

/// Argument `i` as a number, if given.
pub fn number<T: std::str::FromStr>(args: &[String], i: usize) -> Option<T> {
    args.get(i).and_then(|a| a.parse().ok())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub struct Cluster {
    pub bin: String,
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, String>,
    pub procs: BTreeMap<u64, Child>,
    /// Flags for every node.
    pub extra: Vec<String>,
}

impl Cluster {
    /// `n` coordinators of `bin` on loopback, with `extra` flags; returns once a leader is known.
    pub async fn start(bin: String, n: u64, extra: Vec<String>) -> Cluster {
        let addrs = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let mut c = Cluster {
            bin,
            dir: tempfile::tempdir().expect("dir"),
            addrs,
            procs: BTreeMap::new(),
            extra,
        };
        for id in 1..=n {
            c.spawn(id);
        }
        c.leader().await;
        c
    }

    pub fn spawn(&mut self, id: u64) {
        let peers = self
            .addrs
            .iter()
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new(&self.bin)
            .args([
                "coordinator",
                "--id",
                &id.to_string(),
                "--listen",
                &self.addrs[&id],
                "--peers",
                &peers,
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{id}")))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        self.procs.insert(id, child);
    }

    pub fn client(&self) -> Client {
        Client::new(self.addrs.values().cloned().collect()).expect("client")
    }

    pub async fn leader(&mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (id, child) in &mut self.procs {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "coordinator {id} exited ({status}); is {} a current build?",
                        self.bin
                    );
                }
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            if let Ok(s) = self.client().status().await
                && s.leader != 0
            {
                return s.leader;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Cluster {
    /// SIGKILL, no goodbye.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every node's address.
    pub fn addr_list(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }

    /// The highest resident set size any running node has had (VmHWM), in MiB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.procs
            .values()
            .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0)
            .reduce(f64::max)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
