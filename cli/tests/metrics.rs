//! Observability with real receivers.
//!
//! `/metrics` scraped by a real Prometheus (Debian's `prometheus`, installed by scripts/setup):
//! three coordinators on their HTTP listeners and a worker on `--metrics-listen`, while a real
//! dump is verified; PromQL then finds the job counted, its verdict, its phases and one leader.
//!
//! OTLP traces received by a real gRPC collector (`support/otlp_collector.py`: grpcio and
//! opentelemetry-proto, installed by scripts/setup): one trace per job, the coordinator's spans
//! and the worker's linked in one tree.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::fleet::Fleet;
use common::free_port;

/// A Prometheus server scraping `targets` (job name → addresses) every second.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, Vec<String>)]) -> Prometheus {
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addrs) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                addrs
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("Debian's prometheus is required (scripts/setup installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The value of an instant query with one result, once it has one.
    async fn value(&self, query: &str) -> Option<f64> {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` answers `want`.
    async fn wait_for(&self, query: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query).await;
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{query}: wanted {want}, last {last:?}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_cluster_and_a_worker_and_counts_the_job() {
    let mut f = Fleet::start_http(&[]).await;
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    f.spawn_worker_with(
        "eu-1",
        "eu",
        1,
        &["--runtime", "process", "--metrics-listen", &worker_metrics],
    );
    f.wait_workers(1).await;
    let id = f.client().submit(&f.plan).await.expect("submit");
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "passed", "{job:?}");

    // The text itself: OpenMetrics, from a follower as from the leader.
    for base in f.http.values() {
        let r = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("scrape");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
            "{:?}",
            r.headers()
        );
        let text = r.text().await.expect("text");
        assert!(
            text.contains("rehearse_raft_term") && text.ends_with("# EOF\n"),
            "{text}"
        );
    }

    let coordinators: Vec<String> = f
        .http
        .values()
        .map(|u| u.trim_start_matches("http://").to_owned())
        .collect();
    let dir = f.root.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("dir");
    let prom = Prometheus::start(
        &dir,
        &[
            ("coordinators", coordinators),
            ("workers", vec![worker_metrics.clone()]),
        ],
    );
    prom.wait_for("count(up == 1)", 4.0).await;
    // Every replica applied the same log: each counts the one job and its verdict.
    prom.wait_for("min(rehearse_jobs{state=\"passed\"})", 1.0)
        .await;
    prom.wait_for(
        "min(rehearse_verdicts_total{job=\"coordinators\",verdict=\"passed\"})",
        1.0,
    )
    .await;
    prom.wait_for("sum(rehearse_raft_is_leader)", 1.0).await;
    prom.wait_for(
        "max(rehearse_queue_wait_seconds_count{job=\"coordinators\"})",
        1.0,
    )
    .await;
    prom.wait_for("max(rehearse_fleet_slots{kind=\"total\"})", 1.0)
        .await;
    prom.wait_for("min(rehearse_heartbeats_applied_total) > bool 0", 1.0)
        .await;
    // The worker: the verdict it delivered, with its restore phase and RTO.
    prom.wait_for("rehearse_worker_verdicts_total{verdict=\"passed\"}", 1.0)
        .await;
    prom.wait_for(
        "rehearse_worker_phase_seconds_count{phase=\"restore\"}",
        1.0,
    )
    .await;
    prom.wait_for("rehearse_worker_rto_seconds_count", 1.0)
        .await;
    prom.wait_for("rehearse_worker_slots", 1.0).await;
}

/// The collector's spans, one JSON object per line.
fn spans(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The OTLP collector, started on a free loopback port; its spans go to `out`.
struct Collector {
    child: Child,
    url: String,
}

impl Collector {
    fn start(out: &Path) -> Collector {
        use std::io::BufRead as _;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_collector.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--out")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is required");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("collector output");
        let port = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| {
                panic!("the OTLP collector did not start (scripts/setup installs grpcio and opentelemetry-proto): {line:?}")
            })
            .trim()
            .to_owned();
        Collector {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_otlp_collector_receives_one_linked_trace_per_job() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("spans.jsonl");
    let collector = Collector::start(&out);
    let mut f = Fleet::start_with(&[], &["--otlp-endpoint", &collector.url]).await;
    f.spawn_worker_with(
        "eu-1",
        "eu",
        1,
        &["--runtime", "process", "--otlp-endpoint", &collector.url],
    );
    f.wait_workers(1).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = f.client().submit(&f.plan).await.expect("submit");
        let job = f.wait_final(&id).await;
        assert_eq!(job.state, "passed", "{job:?}");
        ids.push(id);
    }

    // The batches leave every 5 s (the SDK's default): wait for each job's whole tree.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        let trace = rehearse_core::trace::trace_id_hex(id);
        let tree = loop {
            let all = spans(&out);
            let of_job: Vec<serde_json::Value> = all
                .iter()
                .filter(|s| s["trace_id"] == trace.as_str())
                .cloned()
                .collect();
            let has = |service: &str, name: &str| {
                of_job
                    .iter()
                    .any(|s| s["service"] == service && s["name"] == name)
            };
            if has("rehearse-coordinator", "job")
                && has("rehearse-worker", "verify")
                && has("rehearse-worker", "restore")
                && has("rehearse-worker", "attempt")
            {
                break of_job;
            }
            assert!(
                Instant::now() < deadline,
                "no whole trace {trace} for {id}; spans: {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let one = |service: &str, name: &str| -> &serde_json::Value {
            let found: Vec<_> = tree
                .iter()
                .filter(|s| s["service"] == service && s["name"] == name)
                .collect();
            assert_eq!(found.len(), 1, "{service} {name}: {tree:#?}");
            found[0]
        };
        // The coordinator's root, from submit to verdict, and its attempt under it.
        let root = one("rehearse-coordinator", "job");
        assert_eq!(root["parent_span_id"], "", "{root}");
        assert_eq!(root["attributes"]["rehearse.job.id"], id.as_str());
        assert_eq!(root["attributes"]["rehearse.verdict"], "passed");
        let attempt = one("rehearse-coordinator", "attempt");
        assert_eq!(attempt["parent_span_id"], root["span_id"], "{attempt}");
        assert_eq!(attempt["attributes"]["rehearse.worker"], "eu-1");
        assert_eq!(
            one("rehearse-coordinator", "queue")["parent_span_id"],
            root["span_id"]
        );
        // The worker's spans hang under the coordinator's attempt: the assignment carried it.
        let worker_attempt = one("rehearse-worker", "attempt");
        assert_eq!(
            worker_attempt["parent_span_id"], attempt["span_id"],
            "{worker_attempt}"
        );
        let verify = one("rehearse-worker", "verify");
        assert_eq!(verify["parent_span_id"], worker_attempt["span_id"]);
        assert_eq!(verify["attributes"]["rehearse.verdict"], "passed");
        for phase in rehearse_core::report::Phase::UNPROMOTED.map(|p| p.as_str()) {
            let span = one("rehearse-worker", phase);
            assert_eq!(span["parent_span_id"], verify["span_id"], "{span}");
            assert_eq!(span["attributes"]["rehearse.engine"], "postgres", "{span}");
            assert!(
                span["attributes"]["rehearse.artifact"]
                    .as_str()
                    .is_some_and(|a| a.ends_with(".dump")),
                "{span}"
            );
            assert_eq!(span["attributes"]["rehearse.ok"], true, "{span}");
        }
        assert!(
            one("rehearse-worker", "restore")["attributes"]["rehearse.bytes"]
                .as_i64()
                .is_some_and(|b| b > 0),
            "{tree:#?}"
        );
        // Nothing of this job outside its trace: the two jobs' trees are apart.
        let elsewhere = spans(&out)
            .into_iter()
            .filter(|s| {
                s["attributes"]["rehearse.job.id"] == id.as_str() && s["trace_id"] != trace.as_str()
            })
            .count();
        assert_eq!(elsewhere, 0, "spans of {id} in another trace");
    }
    drop(collector);
}
