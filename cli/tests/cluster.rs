//! The coordinator cluster, black-box: real `rehearse coordinator` processes on loopback sockets,
//! killed with SIGKILL where a kill matters. Every assertion is about acknowledged work.

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rehearse_coordinator::client::{Client, ClientError};

mod common;
use common::{PLAN, TestCluster, loopback_addrs};
use rehearse_proto::v1 as pb;

async fn submit_n(client: &mut Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(client.submit(PLAN).await.expect("acknowledged submit"));
    }
    ids
}

/// Starts nodes with --join, adds them as learners and waits until each has caught up.
async fn add_learners(c: &mut TestCluster, ids: &[u64]) {
    for id in ids {
        let addr = c.add_node(*id);
        c.client()
            .membership(pb::membership_request::Kind::AddLearner, *id, &addr)
            .await
            .expect("add learner");
        let commit = c.client().status().await.expect("status").commit;
        c.wait_caught_up(*id, commit).await;
    }
}

/// `rehearse cluster failover --to-region us --output json EXTRA` against these coordinators.
fn failover_to_us(coordinators: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rehearse"))
        .args([
            "cluster",
            "failover",
            "--to-region",
            "us",
            "--output",
            "json",
        ])
        .args(extra)
        .env("REHEARSE_COORDINATORS", coordinators)
        .stdin(Stdio::null())
        .output()
        .expect("run")
}

/// The addresses of these nodes, as REHEARSE_COORDINATORS takes them.
fn addrs_of(c: &TestCluster, ids: &[u64]) -> String {
    ids.iter()
        .map(|id| c.addrs[id].clone())
        .collect::<Vec<_>>()
        .join(",")
}

async fn all_ids(client: &mut Client) -> Vec<String> {
    client
        .list_jobs(None)
        .await
        .expect("list")
        .into_iter()
        .map(|j| j.id)
        .collect()
}

#[tokio::test]
async fn three_nodes_elect_and_a_submit_through_a_follower_lands() {
    let c = TestCluster::start(3, 10_000);
    let leader = c.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let id = c
        .client_of(&[follower])
        .submit(PLAN)
        .await
        .expect("submit via follower");
    let other = (1..=3)
        .find(|i| *i != follower && *i != leader)
        .expect("third");
    let job = c
        .client_of(&[other])
        .get_job(&id)
        .await
        .expect("read via another node");
    assert_eq!(job.state, "pending");
    assert!(job.plan_toml.contains("/backups/shop.dump"));
    let status = c.client().status().await.expect("status");
    assert_eq!(status.members.len(), 3);
    assert!(
        status
            .members
            .iter()
            .all(|m| m.role == "voter" && !m.addr.is_empty())
    );
    // Regions are learned from peer traffic.
    let regions: Vec<&str> = status.members.iter().map(|m| m.region.as_str()).collect();
    assert_eq!(regions, ["us", "eu", "us"]);
    // an invalid plan is refused with the reason, nothing written
    let err = c
        .client()
        .submit("[artifact]\nurl = \"x\"\nengine = \"postgres\"\ntypo = 1\n")
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("typo"), "{err}");
    assert_eq!(all_ids(&mut c.client()).await, vec![id]);
}

#[tokio::test]
async fn killing_the_leader_loses_no_acknowledged_job_and_it_catches_up() {
    let mut c = TestCluster::start(3, 10_000);
    let leader = c.leader().await;
    let acked = submit_n(&mut c.client(), 20).await;
    c.kill(leader);
    let killed_at = Instant::now();
    let after = c
        .client()
        .submit(PLAN)
        .await
        .expect("writes resume under a new leader");
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let ids = all_ids(&mut c.client()).await;
    for id in acked.iter().chain(std::iter::once(&after)) {
        assert!(ids.contains(id), "acknowledged job {id} lost");
    }
    assert_eq!(ids.len(), 21, "no job doubled");
    // The killed node restarts from its data dir and catches up with what it missed.
    c.spawn(leader, false);
    let commit = c.client().status().await.expect("status").commit;
    c.wait_caught_up(leader, commit).await;
}

#[tokio::test]
async fn stopping_and_restarting_every_node_keeps_every_job() {
    let mut c = TestCluster::start(3, 10_000);
    c.leader().await;
    let acked = submit_n(&mut c.client(), 10).await;
    for id in 1..=3 {
        c.stop(id);
    }
    for id in 1..=3 {
        c.spawn(id, false);
    }
    c.leader().await;
    let mut ids = all_ids(&mut c.client()).await;
    ids.sort();
    let mut want = acked.clone();
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn a_node_behind_the_compaction_point_catches_up_by_snapshot() {
    let mut c = TestCluster::start(3, 8);
    let leader = c.leader().await;
    let behind = (1..=3).find(|id| *id != leader).expect("follower");
    c.kill(behind);
    let acked = submit_n(&mut c.client(), 30).await;
    c.spawn(behind, false);
    let commit = c.client().status().await.expect("status").commit;
    c.wait_caught_up(behind, commit).await;
    let log = fs::read_to_string(c.log(behind)).expect("log");
    assert!(
        log.contains("installed snapshot from leader"),
        "caught up without a snapshot: {log}"
    );
    // And it can lead with everything: make it the only one left with another.
    let other = (1..=3)
        .find(|id| *id != behind && *id != leader)
        .expect("third");
    c.kill(leader);
    let ids = all_ids(&mut c.client_of(&[behind, other])).await;
    for id in &acked {
        assert!(ids.contains(id), "{id} missing after snapshot catch-up");
    }
}

/// A snapshot carries the state only; the node that installed it copies the history (here the
/// summaries of jobs that left the state) from a peer, and then has all of it: shown by making it
/// the only node left.
#[tokio::test]
async fn a_node_caught_up_by_snapshot_copies_the_history_from_a_peer() {
    let mut c = TestCluster::new(loopback_addrs(3), 8);
    c.extra = vec!["--job-retention".into(), "1s".into()];
    c.spawn_all();
    let leader = c.leader().await;
    let behind = (1..=3).find(|id| *id != leader).expect("follower");
    c.kill(behind);
    let mut client = c.client();
    let acked = submit_n(&mut client, 30).await;
    for id in &acked {
        client.cancel(id).await.expect("cancel");
    }
    // Cancelled jobs leave the state after the retention (checked every 5 s); their summaries
    // stay in the history.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_ids(&mut client).await.is_empty() {
        assert!(Instant::now() < deadline, "jobs never left the state");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.spawn(behind, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = fs::read_to_string(c.log(behind)).expect("log");
        if log.contains("history copied from peers") {
            break log;
        }
        assert!(Instant::now() < deadline, "no history copy: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        log.contains("installed snapshot from leader"),
        "caught up without a snapshot: {log}"
    );
    // Only it is left: every summary is there, from the copy.
    for id in 1..=3 {
        c.stop(id);
    }
    c.spawn_with(behind, false, &["--force-new-cluster"]);
    let mut survivor = c.client_of(&[behind]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &acked {
        let err = loop {
            match survivor.get_job(id).await {
                Err(ClientError::NotFound(m)) => break m,
                Err(e) => {
                    assert!(Instant::now() < deadline, "job {id}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(job) => panic!("job {id} is still in the state: {job:?}"),
            }
        };
        assert!(
            err.contains("has left the coordinator's memory") && err.contains("cancelled"),
            "{id}: {err}"
        );
    }
}

#[tokio::test]
async fn add_learner_promote_and_remove() {
    let mut c = TestCluster::start(3, 8);
    c.leader().await;
    submit_n(&mut c.client(), 12).await;
    let addr = c.add_node(4);
    c.client()
        .membership(pb::membership_request::Kind::AddLearner, 4, &addr)
        .await
        .expect("add learner");
    let status = c.client().status().await.expect("status");
    assert!(
        status
            .members
            .iter()
            .any(|m| m.id == 4 && m.role == "learner" && m.addr == addr),
        "{status:?}"
    );
    c.wait_caught_up(4, status.commit).await;
    c.client()
        .membership(pb::membership_request::Kind::Promote, 4, "")
        .await
        .expect("promote");
    let status = c.client().status().await.expect("status");
    assert!(
        status
            .members
            .iter()
            .any(|m| m.id == 4 && m.role == "voter"),
        "{status:?}"
    );
    // A voter that is not a learner cannot be promoted again.
    assert!(
        c.client()
            .membership(pb::membership_request::Kind::Promote, 4, "")
            .await
            .is_err()
    );
    c.client()
        .membership(pb::membership_request::Kind::Remove, 4, "")
        .await
        .expect("remove");
    let status = c.client().status().await.expect("status");
    assert!(status.members.iter().all(|m| m.id != 4), "{status:?}");
    assert_eq!(status.members.len(), 3);
}

fn refused(cmd: &mut Command) -> String {
    let out = cmd.stdout(Stdio::null()).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_foreign_or_corrupt_data_dir_is_refused() {
    let mut c = TestCluster::start(3, 10_000);
    c.leader().await;
    for id in 1..=3 {
        c.stop(id);
    }
    // node 2 started on node 1's data dir
    let wrong = c.command(2, false);
    let args: Vec<String> = wrong
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let pos = args.iter().position(|a| a == "--data-dir").expect("flag");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehearse"));
    for (i, a) in args.iter().enumerate() {
        cmd.arg(if i == pos + 1 {
            c.data_dir(1).display().to_string()
        } else {
            a.clone()
        });
    }
    let line = refused(&mut cmd);
    assert!(
        line.contains("belongs to cluster \"rehearse\" node 1"),
        "{line}"
    );
    // another cluster's dir
    let line = refused(c.command(1, false).args(["--cluster", "other"]));
    assert!(line.contains("not cluster \"other\""), "{line}");
    // a damaged database file
    let db = c.data_dir(3).join("raft.redb");
    let mut bytes = fs::read(&db).expect("db");
    let len = bytes.len();
    for b in &mut bytes[len / 4..] {
        *b = 0xff;
    }
    fs::write(&db, &bytes).expect("damage");
    let line = refused(&mut c.command(3, false));
    assert!(line.contains("corrupt"), "{line}");
    fs::write(&db, b"not a database").expect("overwrite");
    let line = refused(&mut c.command(3, false));
    assert!(line.contains("is not a redb database"), "{line}");
}

/// A TCP proxy that can cut every connection through it, now and until healed.
struct Proxy {
    addr: String,
    cut: tokio::sync::watch::Sender<bool>,
}

async fn proxy(target: String) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("addr").to_string();
    let (cut, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let mut rx = rx.clone();
            let target = target.clone();
            tokio::spawn(async move {
                if *rx.borrow() {
                    return;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                tokio::select! {
                    _ = tokio::io::copy(&mut ri, &mut wo) => {}
                    _ = tokio::io::copy(&mut ro, &mut wi) => {}
                    _ = rx.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    Proxy { addr, cut }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_old_leader_cannot_commit() {
    let addrs = loopback_addrs(3);
    // Every peer link i -> j goes through its own proxy, so one node can be cut off entirely.
    let mut proxies: BTreeMap<(u64, u64), Proxy> = BTreeMap::new();
    for i in 1..=3 {
        for j in (1..=3).filter(|j| *j != i) {
            proxies.insert((i, j), proxy(addrs[&j].clone()).await);
        }
    }
    let mut peer_lists = BTreeMap::new();
    for i in 1..=3u64 {
        let list: Vec<String> = (1..=3u64)
            .map(|j| {
                if j == i {
                    format!("{j}={}", addrs[&j])
                } else {
                    format!("{j}={}", proxies[&(i, j)].addr)
                }
            })
            .collect();
        peer_lists.insert(i, list.join(","));
    }
    let mut c = TestCluster::new(addrs, 10_000);
    c.peer_lists = peer_lists;
    c.spawn_all();
    let old = c.leader().await;
    let acked = submit_n(&mut c.client(), 5).await;
    for ((i, j), p) in &proxies {
        if *i == old || *j == old {
            let _ = p.cut.send(true);
        }
    }
    // The old leader cannot commit: a submit that can only reach it is never acknowledged.
    let mut through_old = c.client_of(&[old]);
    through_old.patience = Duration::from_secs(4);
    let refused = through_old.submit(PLAN).await;
    assert!(
        refused.is_err(),
        "an isolated leader acknowledged a write: {refused:?}"
    );
    // The majority elects a new leader and goes on accepting writes.
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let during = c
        .client_of(&others)
        .submit(PLAN)
        .await
        .expect("the majority accepts writes");
    let status = c.client_of(&others).status().await.expect("status");
    assert!(status.leader != old && status.leader != 0, "{status:?}");
    // Healed, the old leader follows; the log holds exactly the acknowledged jobs.
    for p in proxies.values() {
        let _ = p.cut.send(false);
    }
    let mut ids = all_ids(&mut c.client_of(&others)).await;
    ids.sort();
    let mut want: Vec<String> = acked.into_iter().chain(std::iter::once(during)).collect();
    want.sort();
    assert_eq!(ids, want);
    let commit = c.client_of(&others).status().await.expect("status").commit;
    c.wait_caught_up(old, commit).await;
}

#[tokio::test]
async fn a_survivor_of_a_lost_majority_can_be_forced_into_a_new_cluster() {
    let mut c = TestCluster::start(3, 10_000);
    c.leader().await;
    let acked = submit_n(&mut c.client(), 5).await;
    // Wait until node 3 has everything, then lose nodes 1 and 2 for good.
    let commit = c.client().status().await.expect("status").commit;
    c.wait_caught_up(3, commit).await;
    c.kill(1);
    c.kill(2);
    c.stop(3);
    c.spawn_with(3, false, &["--force-new-cluster"]);
    let mut survivor = c.client_of(&[3]);
    let after = survivor
        .submit(PLAN)
        .await
        .expect("the survivor alone accepts writes");
    let status = survivor.status().await.expect("status");
    assert_eq!(status.leader, 3);
    assert_eq!(status.members.iter().map(|m| m.id).collect::<Vec<_>>(), [3]);
    let ids = all_ids(&mut survivor).await;
    for id in acked.iter().chain(std::iter::once(&after)) {
        assert!(ids.contains(id), "{id} lost in the forced recovery");
    }
}

fn make_certs(dir: &std::path::Path, names: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/make-certs");
    let ok = Command::new(script)
        .arg(dir)
        .args(names)
        .status()
        .expect("run scripts/make-certs (needs openssl)")
        .success();
    assert!(ok, "scripts/make-certs failed");
}

/// Also with `--auth required`: a certificate of the cluster CA stands for a worker (its calls
/// need no token), but anything else still needs a token.
#[tokio::test]
async fn mutual_tls_admits_only_holders_of_the_cluster_ca() {
    let certs = tempfile::tempdir().expect("certs");
    make_certs(certs.path(), &["node", "cli"]);
    let rogue = tempfile::tempdir().expect("rogue");
    make_certs(rogue.path(), &["cli"]);
    let tls = |dir: &std::path::Path, name: &str| rehearse_coordinator::tls::TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    let node = tls(certs.path(), "node");
    let admin = "rh_mtls-test-admin";
    let admin_file = certs.path().join("admin-token");
    fs::write(&admin_file, admin).expect("admin token file");
    let mut c = TestCluster::new(loopback_addrs(3), 10_000);
    c.extra = vec![
        "--tls-ca".into(),
        node.ca.display().to_string(),
        "--tls-cert".into(),
        node.cert.display().to_string(),
        "--tls-key".into(),
        node.key.display().to_string(),
        "--auth".into(),
        "required".into(),
        "--admin-token-file".into(),
        admin_file.display().to_string(),
    ];
    c.spawn_all();
    // Peers elect over mTLS, and a client with a certificate from the cluster CA is served.
    let mut good = c
        .client()
        .with_tls(&tls(certs.path(), "cli"))
        .expect("tls client")
        .with_token(admin)
        .expect("token");
    let id = good.submit(PLAN).await.expect("submit over mTLS");
    assert_eq!(good.get_job(&id).await.expect("read").state, "pending");
    let log = fs::read_to_string(c.log(1)).expect("log");
    assert!(
        log.contains("mTLS (CA"),
        "startup line names the transport: {log}"
    );
    // Plaintext, and a certificate from another CA, are refused.
    let mut plain = c.client();
    plain.patience = Duration::from_secs(2);
    assert!(
        plain.submit(PLAN).await.is_err(),
        "a plaintext client was served"
    );
    let mut stranger = c
        .client()
        .with_tls(&tls(rogue.path(), "cli"))
        .expect("tls client");
    stranger.patience = Duration::from_secs(2);
    assert!(
        stranger.submit(PLAN).await.is_err(),
        "a client of another CA was served"
    );
    assert_eq!(good.list_jobs(None).await.expect("list").len(), 1);
    // The certificate alone: a worker's calls pass, a client's need a token.
    let mut cert_only = c
        .client()
        .with_tls(&tls(certs.path(), "cli"))
        .expect("tls client");
    cert_only.patience = Duration::from_secs(5);
    let refused = cert_only.submit(PLAN).await.expect_err("no token");
    assert!(
        refused.to_string().contains("requires a token"),
        "{refused}"
    );
    cert_only
        .register_worker(pb::RegisterWorkerRequest {
            name: "mtls-worker".into(),
            incarnation: 1,
            region: "eu".into(),
            labels: Default::default(),
            slots: 1,
        })
        .await
        .expect("a worker with a cluster certificate needs no token");
}

#[tokio::test]
async fn the_cli_commands_speak_json() {
    let c = TestCluster::start(3, 10_000);
    c.leader().await;
    let coordinators = c.addrs.values().cloned().collect::<Vec<_>>().join(",");
    let plan = c.dir.path().join("plan.toml");
    fs::write(&plan, PLAN).expect("plan");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rehearse"))
            .args(args)
            .env("REHEARSE_COORDINATORS", &coordinators)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let plan_arg = plan.display().to_string();
    let (code, out, err) = run(&["submit", &plan_arg, "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (code, out, _) = run(&["job", "get", &id, "--output", "json"]);
    assert_eq!(code, Some(0));
    let job: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["state"], "pending");
    assert!(job["attempts"].as_array().is_some_and(Vec::is_empty));
    assert_eq!(job["plan"]["artifact"]["url"], "/backups/shop.dump");
    assert!(job["report"].is_null());
    let (_, out, _) = run(&["jobs", "--state", "pending", "--output", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let (_, out, _) = run(&["jobs", "--state", "passed", "--output", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let (_, out, _) = run(&["cluster", "status", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(status["leader"].as_u64().is_some_and(|l| l > 0));
    assert!(status["term"].is_u64() && status["commit"].is_u64());
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["id"].is_u64()
        && m["addr"].is_string()
        && m["role"] == "voter"
        && m["region"].is_string()));
    // Nodes 1 and 3 are in region us, node 2 in eu: us holds the quorum, and status says so.
    assert_eq!(status["regions"]["us"]["voters"], 2, "{status}");
    assert_eq!(status["regions"]["eu"]["voters"], 1, "{status}");
    assert!(
        status["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("region us holds 2 of the 3 voters")),
        "{status}"
    );
    // a bad plan: one line, exit 2, nothing written
    fs::write(
        &plan,
        "[artifact]\nurl = \"x\"\nengine = \"postgres\"\nexpct = 1\n",
    )
    .expect("plan");
    let (code, _, err) = run(&["submit", &plan_arg]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("expct"));
    let (code, _, err) = run(&["job", "get", "job-nope", "--output", "json"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no job job-nope"), "{err}");
}

/// grpc.health.v1 as a load balancer or a Kubernetes gRPC probe asks it: SERVING on every node
/// of a cluster with a leader, NOT_SERVING on a node cut from its quorum.
#[tokio::test]
async fn the_grpc_health_check_serves_only_while_the_node_knows_a_leader() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut c = TestCluster::new(loopback_addrs(3), 10_000);
    c.spawn_all();
    let leader = c.leader().await;
    let status = |addr: String, service: &'static str| async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let r = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()?;
        Some(r.into_inner().status)
    };
    let wait = |addr: String, want: ServingStatus| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = status(addr.clone(), "").await;
            if got == Some(want as i32) {
                return;
            }
            assert!(Instant::now() < deadline, "{addr}: {got:?}, want {want:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for addr in c.addrs.values() {
        wait(addr.clone(), ServingStatus::Serving).await;
        assert_eq!(
            status(addr.clone(), "rehearse.v1.Coordinator").await,
            Some(ServingStatus::Serving as i32)
        );
    }
    // Server reflection lists the services, as grpcurl asks for them.
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", c.addrs[&leader]))
                .expect("url")
                .connect()
                .await
                .expect("connect");
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("reflection")
            .into_inner();
        let first = answers
            .message()
            .await
            .expect("answer")
            .expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("not a service list: {first:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["rehearse.v1.Coordinator", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == want), "{names:?}");
        }
    }
    // The leader and one follower gone: the last node has no quorum, so no leader.
    let survivor = *c
        .addrs
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    for id in c.addrs.keys().copied().collect::<Vec<_>>() {
        if id != survivor {
            c.kill(id);
        }
    }
    wait(c.addrs[&survivor].clone(), ServingStatus::NotServing).await;
}

/// `--log-format json`: every log line is one JSON object a log shipper can read.
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut c = TestCluster::new(loopback_addrs(1), 10_000);
    c.extra = vec![
        "--log-format".into(),
        "json".into(),
        "--log".into(),
        "info".into(),
    ];
    c.spawn_all();
    c.leader().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs::read_to_string(c.log(1)).unwrap_or_default();
        if log.contains("coordinator started") {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(
                    v["level"].is_string() && v["timestamp"].is_string(),
                    "{line}"
                );
            }
            let started = log
                .lines()
                .find(|l| l.contains("coordinator started"))
                .expect("line");
            let v: serde_json::Value = serde_json::from_str(started).expect("JSON");
            assert_eq!(v["message"], "coordinator started");
            assert_eq!(v["id"], 1, "fields are top-level: {started}");
            return;
        }
        assert!(Instant::now() < deadline, "no start line: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Region failover: region eu (voter 2, learner 4) is lost, a quorum survives in us (voters 1
/// and 3). `cluster failover --to-region us` promotes us's learner 5 and removes eu's members,
/// one change at a time; the cluster then takes jobs and every acknowledged one is still there.
/// With no quorum left it changes nothing and names the survivor to force a new cluster on.
#[tokio::test]
async fn failover_promotes_the_region_s_learners_and_removes_the_lost_members() {
    let mut c = TestCluster::start(3, 10_000);
    c.leader().await;
    let before = submit_n(&mut c.client(), 5).await;
    add_learners(&mut c, &[4, 5]).await;
    c.kill(2);
    c.kill(4);
    let coordinators = addrs_of(&c, &[1, 3, 5]);
    let failover = |coordinators: &str| failover_to_us(coordinators, &[]);
    let out = failover(&coordinators);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(done["promoted"], serde_json::json!([5]), "{done}");
    assert_eq!(
        done["removed"],
        serde_json::json!([2, 4]),
        "voters first: {done}"
    );
    assert_eq!(done["voters"], serde_json::json!([1, 3, 5]), "{done}");
    let status = c.client().status().await.expect("status");
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert!(
        status.members.iter().all(|m| m.region == "us"),
        "{status:?}"
    );
    // Writes go on, and nothing acknowledged before was lost.
    let after = submit_n(&mut c.client(), 2).await;
    let ids = all_ids(&mut c.client()).await;
    for id in before.iter().chain(&after) {
        assert!(ids.contains(id), "{id} lost");
    }

    // Now only node 5 is left of the voters 1, 3 and 5: no quorum, nothing changes.
    c.kill(1);
    c.kill(3);
    let out = failover(&c.addrs[&5]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no quorum survives")
            && err.contains("node 5")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

/// The compose layout: voters 2 and 4 in `eu`, voter 1 in `us`, learners 3 and 5 in `us`. `eu`
/// is lost, so no quorum survives: the failover refuses, then with `--force --yes` makes the most
/// up-to-date survivor the only voter of a new cluster, the other survivors its learners, and
/// promotes them. Every survivor ends with the same membership, nothing acknowledged is lost, and
/// a lost voter started again with its old data dir cannot disturb the new cluster.
#[tokio::test]
async fn a_forced_failover_without_quorum_keeps_the_survivors_data_and_fences_the_lost() {
    let addrs = [1, 2, 4]
        .into_iter()
        .map(|id| (id, format!("127.0.0.1:{}", common::free_port())))
        .collect();
    let mut c = TestCluster::new(addrs, 10_000);
    c.spawn_all();
    c.leader().await;
    let before = submit_n(&mut c.client(), 5).await;
    add_learners(&mut c, &[3, 5]).await;
    // While the cluster has its quorum, a voter refuses a forced membership.
    let refused = c.client_of(&[1]).force_new_cluster(&[1], &[3, 5]).await;
    assert!(
        matches!(&refused, Err(ClientError::Refused(why)) if why.contains("knows a leader")),
        "{refused:?}"
    );
    c.kill(2);
    c.kill(4);
    let survivors = addrs_of(&c, &[1, 3, 5]);
    let failover = |extra: &[&str]| failover_to_us(&survivors, extra);
    let out = failover(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--force"), "{err}");
    // Not on a terminal, --force alone asks nobody and changes nothing.
    let out = failover(&["--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--yes"), "{err}");
    // On a terminal (util-linux's `script` gives it one) it asks for the chosen node's id; another
    // answer stops it, with nothing changed.
    let asked = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} cluster failover --to-region us --force",
            env!("CARGO_BIN_EXE_rehearse")
        ))
        .arg("/dev/null")
        .env("REHEARSE_COORDINATORS", &survivors)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(b"42\n")?;
            child.wait_with_output()
        })
        .expect("run under script");
    let said = String::from_utf8_lossy(&asked.stdout);
    assert_eq!(asked.status.code(), Some(2), "{said}");
    assert!(
        said.contains("to force the new cluster on node") && said.contains("not confirmed"),
        "{said}"
    );

    let out = failover(&["--force", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Writes the lost members committed after index"),
        "{err}"
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        done["forced"]["left_out"],
        serde_json::json!([2, 4]),
        "{done}"
    );
    assert_eq!(done["voters"], serde_json::json!([1, 3, 5]), "{done}");
    // Every survivor, asked alone, comes to hold the same membership.
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in [1, 3, 5] {
        loop {
            let own = c.client_of(&[id]).local_status().await.expect("status");
            let voters: Vec<u64> = own
                .members
                .iter()
                .filter(|m| m.role == "voter")
                .map(|m| m.id)
                .collect();
            if voters == [1, 3, 5] && own.members.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "node {id}: {own:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let after = submit_n(&mut c.client_of(&[1, 3, 5]), 2).await;
    let ids = all_ids(&mut c.client_of(&[1, 3, 5])).await;
    for id in before.iter().chain(&after) {
        assert!(ids.contains(id), "{id} lost");
    }

    // The lost voters started again with their old data dirs still believe in the old
    // membership, where they are a majority: they elect a leader of their own (killed and
    // restarted until its term is above the new cluster's, so that its messages would win), which
    // sends to node 1. The new cluster refuses their messages, so its leader and term stay.
    let status = c.client_of(&[1, 3, 5]).status().await.expect("status");
    c.spawn(2, false);
    c.spawn(4, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(own) = c.client_of(&[2, 4]).local_status().await
            && [2, 4].contains(&own.leader)
        {
            if own.term > status.term {
                break;
            }
            c.kill(own.leader);
            c.spawn(own.leader, false);
        }
        assert!(
            Instant::now() < deadline,
            "the old voters never elected a leader above term {}",
            status.term
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let later = c.client_of(&[1]).local_status().await.expect("status");
        assert_eq!(
            (later.leader, later.term),
            (status.leader, status.term),
            "the old voters disturbed the new cluster"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = fs::read_to_string(c.log(1)).unwrap_or_default()
        + &fs::read_to_string(c.log(3)).unwrap_or_default()
        + &fs::read_to_string(c.log(5)).unwrap_or_default();
    assert!(log.contains("taking the forced membership"), "{log}");
}
