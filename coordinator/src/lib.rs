//! rehearse-coordinator: the Raft-replicated coordinator.
//!
//! A cluster of 3 or 5 coordinators holds Rehearse's desired state — jobs today; workers,
//! schedules and verdict history with the next issues — replicated with raft-rs, so losing a
//! minority loses nothing and losing the leader pauses writes for about an election timeout.
//!
//! Layout:
//! - [`storage`]: raft log, hard/conf state, snapshot point and peer book in redb.
//! - [`state`]: the state machine's side: the applied state and the history tables.
//! - [`history`]: the history tables (ended drill runs, forgotten jobs) beside them.
//! - [`copier`]: after installing a snapshot (the state only), copies the history from a peer.
//! - [`node`]: the raft thread — the Ready loop, proposal batching, apply, ReadIndex reads,
//!   membership changes.
//! - [`transport`]: raft messages to and from peers (bytes inside tonic messages), allow-listed.
//! - [`fleet`]: each worker's assignment set, from the raft thread to its stream.
//! - [`ticker`]: the leader's drill ticker — due ticks from committed state, cached schedules.
//! - [`handle`]: the async side's handle on the raft thread.
//! - [`api`]: the client gRPC API; the one place converting proto ⇄ core types (drills in
//!   [`drill_api`]).
//! - `client`, `tls`: re-exported from `rehearse_proto` (shared with workers).
//!
//! The state machine itself is pure and lives in `rehearse_core::jobs`.
//! Must not depend on: rehearse-worker.

pub mod api;
pub mod auth;
pub mod copier;
pub mod drill_api;
pub mod errors;
pub mod evidence;
pub mod exercise_api;
pub mod fleet;
pub mod force;
pub mod handle;
pub mod history;
pub mod http;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod state;
pub mod storage;
pub mod ticker;
pub mod trace;
pub mod transport;

pub use rehearse_proto::{client, tls};

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rehearse_proto::v1::coordinator_server::CoordinatorServer;
use rehearse_proto::v1::peer_server::PeerServer;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::handle::NodeHandle;
use crate::node::{Node, NodeOptions};
use crate::storage::{Batch, Identity, PeerInfo, RaftStore, StoreError};
use crate::transport::{MAX_MESSAGE, PeerService, Transport};

/// How long in-flight requests may finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// The same before a restart into a forced membership: the cluster has no leader then, so no
/// request is waiting on this node, and the failover waits on the restart.
const RESTART_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub id: u64,
    pub listen: SocketAddr,
    /// The address peers and clients reach this node at (default: `listen`).
    pub advertise: String,
    /// Initial members (id → address), this node included.
    pub peers: BTreeMap<u64, String>,
    pub data_dir: PathBuf,
    pub region: String,
    /// Name of the cluster; a data dir of another cluster is refused.
    pub cluster: String,
    /// Start empty and wait to be added (`cluster add-learner`), instead of bootstrapping.
    pub join: bool,
    /// Log entries kept before compacting into a snapshot point.
    pub compact_after: u64,
    /// Disaster recovery: restart as the only voter of a new configuration, keeping all state.
    pub force_new_cluster: bool,
    /// mTLS for peers and clients; `None`: plaintext.
    pub tls: Option<tls::TlsFiles>,
    /// A worker silent this long is lost and its attempts re-queued (workers heartbeat 5 times
    /// per lease).
    pub lease: std::time::Duration,
    /// The command version this node reads and writes (`rehearse_core::codec::CURRENT`; the
    /// test-only `TEST_PROBE` for upgrade tests, or lower to act as an older release).
    pub command_version: u32,
    /// Finished jobs leave the in-memory state after this long; their summaries stay in the
    /// history tables.
    pub job_retention: std::time::Duration,
    /// Serve the HTTP API here (`None`: no HTTP listener).
    pub http_listen: Option<SocketAddr>,
    /// The URL HTTP clients reach this node at (default `http://` + `http_listen`): a follower
    /// redirects to the leader's.
    pub http_advertise: Option<String>,
    /// Notification channels (`--notify FILE`); none: events are marked sent at once.
    pub notify: Arc<notify::NotifyConfig>,
    /// Signs evidence exports (`--evidence-key`); none: exports are refused.
    pub evidence_key: Option<Arc<evidence::Signer>>,
    /// Who may call what (`--auth`, `--admin-token-file`; see [`auth`]).
    pub auth: Arc<auth::Gate>,
}

/// The default `--job-retention`.
pub const DEFAULT_JOB_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// The default worker lease: a lost worker's jobs are re-queued within about this long.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// Fatal errors: the node cannot run (request errors are answers, not these).
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    Config(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Force(#[from] force::ForceError),
    #[error("serve: {0}")]
    Serve(String),
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?}: expected ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {part:?}: the id must be a positive number"))?;
        if id == 0 {
            return Err(format!("peer {part:?}: id 0 is reserved"));
        }
        if peers.insert(id, addr.trim().to_owned()).is_some() {
            return Err(format!("peer id {id} given twice"));
        }
    }
    Ok(peers)
}

/// Accepted connections with Nagle's algorithm off. tonic sets TCP_NODELAY only on listeners it
/// binds itself; without it a small stream message (an assignment) behind an unacknowledged one
/// waits for the client's delayed ACK, about 40 ms.
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn
            && let Err(e) = stream.set_nodelay(true)
        {
            warn!(error = %e, "could not set TCP_NODELAY");
        }
        conn
    })
}

/// Runs a coordinator until `shutdown` is cancelled. A forced new membership
/// (`cluster failover --force`, see [`force`]) restarts it in-process, on the same ports.
pub async fn run(
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut config = config;
    loop {
        match run_once(config.clone(), shutdown.clone()).await? {
            Ended::Shutdown => return Ok(()),
            Ended::Restart => {
                warn!(
                    id = config.id,
                    "restarting to take a forced membership (cluster failover --force)"
                );
                // The start that follows applies the file in the data dir; a flag given at the
                // first start has done its work.
                config.force_new_cluster = false;
            }
        }
    }
}

/// How one run of the node ended.
enum Ended {
    Shutdown,
    Restart,
}

async fn run_once(
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<Ended, CoordinatorError> {
    if config.id == 0 {
        return Err(CoordinatorError::Config(
            "--id must be a positive number".into(),
        ));
    }
    if !config.join && !config.peers.contains_key(&config.id) {
        return Err(CoordinatorError::Config(format!(
            "--peers must include this node ({})",
            config.id
        )));
    }
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            tls::Tls::load(files).map_err(CoordinatorError::Config)?,
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| CoordinatorError::Listen {
            addr: config.listen,
            source,
        })?;
    let identity = Identity {
        cluster: config.cluster.clone(),
        id: config.id,
    };
    let voters: Vec<u64> = config.peers.keys().copied().collect();
    if !(rehearse_core::codec::LEGACY..=rehearse_core::codec::TEST_PROBE)
        .contains(&config.command_version)
    {
        return Err(CoordinatorError::Config(format!(
            "--command-version must be {} to {}",
            rehearse_core::codec::LEGACY,
            rehearse_core::codec::TEST_PROBE
        )));
    }
    let mut store = RaftStore::open(
        &config.data_dir,
        &identity,
        (!config.join).then_some(voters.as_slice()),
    )?;
    // A node older than the cluster it belongs to would meet entries it cannot read: it says so
    // now, before it applies anything.
    let cluster_version = store.sm.jobs.cluster_version();
    if cluster_version > config.command_version {
        return Err(StoreError::TooOld {
            cluster: cluster_version,
            readable: config.command_version,
        }
        .into());
    }
    if config.force_new_cluster {
        warn!(
            id = config.id,
            "forcing a new cluster with this node as its only voter (--force-new-cluster)"
        );
        store.force_conf(&[config.id], &[])?;
    } else if let Some(conf) = force::pending(&config.data_dir)? {
        conf.check(config.id)?;
        warn!(
            id = config.id,
            voters = ?conf.voters,
            learners = ?conf.learners,
            "taking the forced membership of a new cluster"
        );
        store.force_conf(&conf.voters, &conf.learners)?;
        force::done(&config.data_dir)
            .map_err(|e| CoordinatorError::Config(format!("remove {}: {e}", force::FORCE_FILE)))?;
    }
    let mut batch = Batch::default();
    // `--peers` names the first members; once the membership is stored, a member removed since
    // (or left out of a forced new cluster) is not let back in by the flag.
    let initialized = store.is_initialized();
    for (id, addr) in &config.peers {
        if *id != config.id
            && (!initialized || store.is_member(*id))
            && store.peers.get(id).is_none_or(|p| p.addr != *addr)
        {
            let region = store
                .peers
                .get(id)
                .map(|p| p.region.clone())
                .unwrap_or_default();
            store.set_peer(
                &mut batch,
                *id,
                PeerInfo {
                    addr: addr.clone(),
                    region,
                },
            );
        }
    }
    store.commit(&mut batch, true)?;
    let allowed = Arc::new(RwLock::new(
        config
            .peers
            .keys()
            .copied()
            .filter(|id| !initialized || store.is_member(*id))
            .collect::<HashSet<u64>>(),
    ));
    let info = PeerInfo {
        addr: config.advertise.clone(),
        region: config.region.clone(),
    };
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            http::bind(addr)
                .await
                .map_err(|source| CoordinatorError::Listen { addr, source })?,
        ),
        None => None,
    };
    let http_advertise = match (&config.http_advertise, &http_listener) {
        (Some(url), _) => url.clone(),
        (None, Some(l)) => l
            .local_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default(),
        (None, None) => String::new(),
    };
    let transport = Transport::new(
        config.id,
        info.clone(),
        config.command_version,
        tls.clone(),
        allowed.clone(),
        tokio::runtime::Handle::current(),
    )
    .with_http(http_advertise.clone());
    if config.lease < std::time::Duration::from_millis(500) {
        return Err(CoordinatorError::Config(
            "--lease must be at least 500ms".into(),
        ));
    }
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let fleet = Arc::new(fleet::FleetHub::new(config.lease));
    let metrics = Arc::new(metrics::Metrics::new());
    let node = Node::new(
        store,
        transport,
        NodeOptions {
            id: config.id,
            info,
            compact_after: config.compact_after.max(2),
            lease: config.lease,
            command_version: config.command_version,
            job_retention: config.job_retention,
            gate: config.auth.clone(),
        },
        fleet.clone(),
        metrics.clone(),
        &logger,
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = NodeHandle::new(tx, fleet);
    // A raft thread that stops on its own (a storage error, an entry it cannot read) stops the
    // whole node: serving clients without a state machine would only mislead them.
    let stop = shutdown.child_token();
    let raft_stop = stop.clone();
    // Set by a forced membership (the API's ForceNewCluster): `stop` then means "restart".
    let restart = Arc::new(AtomicBool::new(false));
    let raft_thread = std::thread::Builder::new()
        .name(format!("raft-{}", config.id))
        .spawn(move || {
            let result = node.run(rx);
            if result.is_err() {
                raft_stop.cancel();
            }
            result
        })
        .map_err(|e| CoordinatorError::Serve(format!("start raft thread: {e}")))?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        id = config.id,
        listen = %config.listen,
        advertise = %config.advertise,
        peers = ?config.peers,
        region = %config.region,
        command_version = config.command_version,
        data_dir = %config.data_dir.display(),
        transport = %tls.as_ref().map_or_else(
            || "plaintext (no --tls-ca/--tls-cert/--tls-key given)".to_owned(),
            |t| format!("mTLS (CA {})", t.files.ca.display())
        ),
        "coordinator started"
    );
    let mut http_task = None;
    if let Some(listener) = http_listener {
        let state = http::AppState {
            node: handle.clone(),
            metrics: metrics.clone(),
            gate: config.auth.clone(),
            evidence_key: config.evidence_key.clone(),
        };
        let http_stop = stop.clone();
        info!(http = %http_advertise, "HTTP API listening");
        http_task = Some(tokio::spawn(async move {
            if let Err(e) = http::serve(listener, state, http_stop).await {
                error!(error = %e, "HTTP API stopped");
            }
        }));
    }
    // grpc.health.v1: SERVING only while this node knows a leader (a node cut from its quorum
    // answers NOT_SERVING), for the whole server ("") and the Coordinator service.
    let (health, health_service) = tonic_health::server::health_reporter();
    {
        let (handle, stop) = (handle.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let serving = matches!(handle.status().await, Ok(s) if s.leader != 0);
                if last != Some(serving) {
                    let status = if serving {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    for name in [
                        "",
                        <CoordinatorServer<api::Api> as tonic::server::NamedService>::NAME,
                    ] {
                        health.set_service_status(name, status).await;
                    }
                    last = Some(serving);
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    () = stop.cancelled() => break,
                }
            }
        });
    }
    tokio::spawn(notify::run(
        config.id,
        handle.clone(),
        config.notify.clone(),
        stop.clone(),
    ));
    tokio::spawn(copier::run(
        config.id,
        handle.clone(),
        tls.clone(),
        stop.clone(),
    ));
    // Server reflection (grpcurl): the client API and the health service.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rehearse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Serve(format!("gRPC reflection: {e}")))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| CoordinatorError::Config(format!("TLS: {e}")))?;
    }
    let server = builder
        .layer(auth::GrpcAuthLayer {
            gate: config.auth.clone(),
        })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            CoordinatorServer::new(api::Api {
                node: handle.clone(),
                evidence_key: config.evidence_key.clone(),
                force: api::ForceSwitch {
                    id: config.id,
                    data_dir: config.data_dir.clone(),
                    stop: stop.clone(),
                    requested: restart.clone(),
                },
            })
            .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            PeerServer::new(PeerService {
                node: handle.clone(),
                allowed,
            })
            .max_decoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming(listener), stop.cancelled());
    tokio::pin!(server);
    // Graceful shutdown waits for open connections to close, and peers keep theirs open for good:
    // in-flight requests get SHUTDOWN_GRACE, then the server is dropped.
    let served = tokio::select! {
        r = &mut server => r,
        () = async {
            stop.cancelled().await;
            let restarting = restart.load(Ordering::SeqCst) && !shutdown.is_cancelled();
            tokio::time::sleep(if restarting { RESTART_GRACE } else { SHUTDOWN_GRACE }).await;
        } => Ok(()),
    };
    handle.shutdown();
    // The HTTP listener and its connections go too (its grace was the one above), so that a
    // restart can bind the port again.
    if let Some(task) = http_task {
        task.abort();
        let _ = task.await;
    }
    let stopped = tokio::task::spawn_blocking(move || raft_thread.join()).await;
    served.map_err(|e| CoordinatorError::Serve(e.to_string()))?;
    match stopped {
        Ok(Ok(Ok(()))) if !shutdown.is_cancelled() && restart.load(Ordering::SeqCst) => {
            Ok(Ended::Restart)
        }
        Ok(Ok(Ok(()))) => Ok(Ended::Shutdown),
        Ok(Ok(Err(e))) => {
            error!(error = %e, "raft thread stopped on a storage error");
            Err(e.into())
        }
        _ => {
            warn!("raft thread panicked");
            Err(CoordinatorError::Serve("raft thread panicked".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_refuse() {
        let p = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=h:1").expect("valid");
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "127.0.0.1:7002");
        assert!(parse_peers("1=a,1=b").is_err());
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("0=a").is_err());
        assert!(parse_peers("1").is_err());
    }
}
