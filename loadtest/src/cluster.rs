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
    /// With [`Cluster::start_proxied`]: the link from node i to node j, by (i, j). Node i's
    /// `--peers` names j at its link's address, so cutting links partitions the network.
    pub links: BTreeMap<(u64, u64), Link>,
}

/// A TCP proxy on loopback standing for one direction of the network between two nodes: it
/// forwards while up; cut, it closes its open connections and refuses new ones.
pub struct Link {
    pub addr: String,
    /// `true`: cut. Each change closes the connections made before it.
    state: tokio::sync::watch::Sender<(u64, bool)>,
}

impl Link {
    async fn start(to: String) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a link");
        let addr = listener.local_addr().expect("link addr").to_string();
        let (state, watch) = tokio::sync::watch::channel((0u64, false));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (generation, cut) = *watch.borrow();
                if cut {
                    continue;
                }
                let (to, mut watch) = (to.clone(), watch.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|(g, _)| *g != generation) => {}
                    }
                });
            }
        });
        Link { addr, state }
    }

    fn set(&self, cut: bool) {
        self.state.send_modify(|(g, c)| {
            *g += 1;
            *c = cut;
        });
    }
}

impl Cluster {
    /// `n` coordinators of `bin` on loopback, with `extra` flags; returns once a leader is known.
    pub async fn start(bin: String, n: u64, extra: Vec<String>) -> Cluster {
        Cluster::start_inner(bin, n, extra, false).await
    }

    /// [`Cluster::start`], with the nodes' traffic to each other through [`Link`]s (clients
    /// still reach every node directly), so [`Cluster::partition`] can cut one node off.
    pub async fn start_proxied(bin: String, n: u64, extra: Vec<String>) -> Cluster {
        Cluster::start_inner(bin, n, extra, true).await
    }

    async fn start_inner(bin: String, n: u64, extra: Vec<String>, proxied: bool) -> Cluster {
        let addrs: BTreeMap<u64, String> = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let mut links = BTreeMap::new();
        for i in (1..=n).filter(|_| proxied) {
            for j in (1..=n).filter(|j| *j != i) {
                links.insert((i, j), Link::start(addrs[&j].clone()).await);
            }
        }
        let mut c = Cluster {
            bin,
            dir: tempfile::tempdir().expect("dir"),
            addrs,
            procs: BTreeMap::new(),
            extra,
            links,
        };
        for id in 1..=n {
            c.spawn(id);
        }
        c.leader().await;
        c
    }

    /// Applies `n` drills through 16 concurrent clients; `file(i)` is drill i's file without its
    /// plan (the benchmark plan is appended as `[plan]`).
    pub async fn apply_drills(&self, n: usize, file: fn(usize) -> String) {
        let mut tasks = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(16).max(1)) {
            let chunk = chunk.to_vec();
            let mut client = self.client();
            tasks.push(tokio::spawn(async move {
                for i in chunk {
                    let text = format!(
                        "{}\n[plan]\n{}",
                        file(i),
                        PLAN.replace("[artifact]", "[plan.artifact]")
                    );
                    let spec = rehearse_core::drill::DrillSpec::from_toml(&text, |_| {
                        Err("no files".into())
                    })
                    .expect("drill");
                    client
                        .drill(
                            rehearse_proto::client::DrillRpc::Apply,
                            rehearse_proto::v1::DrillCall {
                                spec_json: serde_json::to_string(&spec).expect("json"),
                                ..Default::default()
                            },
                        )
                        .await
                        .expect("apply");
                }
            }));
        }
        for t in tasks {
            t.await.expect("apply task");
        }
    }

    /// Cuts every link to and from `id`: the node runs, but cannot reach or be reached by the
    /// others.
    pub fn partition(&self, id: u64) {
        for ((i, j), link) in &self.links {
            if *i == id || *j == id {
                link.set(true);
            }
        }
    }

    /// Every link up again.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.set(false);
        }
    }

    /// SIGSTOP (`pause`) or SIGCONT: the process stays, silent.
    pub fn signal(&self, id: u64, signal: &str) {
        if let Some(child) = self.procs.get(&id) {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
        }
    }

    pub fn spawn(&mut self, id: u64) {
        let peers = self
            .addrs
            .iter()
            .map(|(i, a)| match self.links.get(&(id, *i)) {
                Some(link) => format!("{i}={}", link.addr),
                None => format!("{i}={a}"),
            })
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
            // A paused node must run again to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
