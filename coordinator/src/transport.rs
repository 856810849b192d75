//! Raft messages between coordinators: each peer has a sender task that batches queued messages
//! into one `RaftBatch` call (raft-rs protobuf bytes inside our tonic message). Sends never block
//! the raft thread: a full queue or a dead peer drops messages, and raft retransmits.
//!
//! The receiving side ([`PeerService`]) parses raft bytes only from configured peers — the
//! initial `--peers` and members added since — and only messages that say they come from the
//! sender.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::Message;
use rehearse_proto::v1::peer_client::PeerClient;
use rehearse_proto::v1::peer_server::Peer;
use rehearse_proto::v1::{HistoryPage, HistoryRecord, HistoryRequest, RaftAck, RaftBatch};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tracing::debug;

use crate::handle::NodeHandle;
use crate::storage::PeerInfo;
use crate::tls::{Tls, url};

/// Largest gRPC message between peers (snapshots travel whole).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const QUEUE: usize = 4096;
const BATCH: usize = 512;

/// Ids whose raft messages are accepted.
pub type AllowList = Arc<RwLock<HashSet<u64>>>;

pub struct Transport {
    id: u64,
    info: PeerInfo,
    /// The command version this node reads, told to every peer in every batch.
    command_version: u32,
    tls: Option<Arc<Tls>>,
    peers: HashMap<u64, mpsc::Sender<Message>>,
    allowed: AllowList,
    rt: tokio::runtime::Handle,
    /// This node's HTTP API address, told to every peer (for their redirects).
    http: String,
}

impl Transport {
    pub fn new(
        id: u64,
        info: PeerInfo,
        command_version: u32,
        tls: Option<Arc<Tls>>,
        allowed: AllowList,
        rt: tokio::runtime::Handle,
    ) -> Transport {
        Transport {
            id,
            info,
            command_version,
            tls,
            peers: HashMap::new(),
            allowed,
            rt,
            http: String::new(),
        }
    }

    /// Tells peers this node's HTTP API address.
    pub fn with_http(mut self, http: String) -> Transport {
        self.http = http;
        self
    }

    /// Starts (or restarts, for a new address) the sender for a peer and allows its messages.
    pub fn add_peer(&mut self, id: u64, addr: &str) {
        if id == self.id {
            return;
        }
        if let Ok(mut allowed) = self.allowed.write() {
            allowed.insert(id);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let tls = self.tls.clone();
        self.rt.spawn(sender(
            self.id,
            self.info.clone(),
            self.http.clone(),
            self.command_version,
            addr.to_owned(),
            tls,
            rx,
        ));
        self.peers.insert(id, tx);
    }

    pub fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
        if let Ok(mut allowed) = self.allowed.write() {
            allowed.remove(&id);
        }
    }

    pub fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            match self.peers.get(&m.to) {
                Some(tx) => {
                    if tx.try_send(m).is_err() {
                        debug!("peer queue full or closed; message dropped (raft retransmits)");
                    }
                }
                None => debug!(to = m.to, "no route to peer"),
            }
        }
    }
}

async fn sender(
    from: u64,
    info: PeerInfo,
    http: String,
    command_version: u32,
    addr: String,
    tls: Option<Arc<Tls>>,
    mut rx: mpsc::Receiver<Message>,
) {
    let Ok(mut endpoint) = Endpoint::from_shared(url(&addr, tls.as_deref())) else {
        debug!(%addr, "bad peer address");
        return;
    };
    if let Some(tls) = &tls {
        endpoint = match endpoint.tls_config(tls.client()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(%addr, error = %e, "peer TLS configuration refused");
                return;
            }
        };
    }
    let channel = endpoint
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect_lazy();
    let mut client = PeerClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE)
        .max_decoding_message_size(MAX_MESSAGE);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let messages = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        let request = RaftBatch {
            from,
            region: info.region.clone(),
            addr: info.addr.clone(),
            messages,
            command_version,
            http_addr: http.clone(),
        };
        if let Err(e) = client.send(request).await {
            debug!(%addr, error = %e.message(), "peer unreachable");
        }
    }
}

/// The peer service: raft messages in.
pub struct PeerService {
    pub node: NodeHandle,
    pub allowed: AllowList,
}

/// Most records in one history page (a run with its results is a few KB: a page stays far
/// below [`MAX_MESSAGE`]).
pub const HISTORY_PAGE: u32 = 1000;

impl PeerService {
    /// Only configured peers may send raft messages or read the history.
    fn check_peer(&self, from: u64) -> Result<(), tonic::Status> {
        let known = self
            .allowed
            .read()
            .map(|a| a.contains(&from))
            .unwrap_or(false);
        if known {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "node {from} is not a configured peer"
            )))
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn history(
        &self,
        request: tonic::Request<HistoryRequest>,
    ) -> Result<tonic::Response<HistoryPage>, tonic::Status> {
        let request = request.into_inner();
        self.check_peer(request.from)?;
        let table = crate::history::Table::from_wire(request.table).ok_or_else(|| {
            tonic::Status::invalid_argument(format!("no history table {}", request.table))
        })?;
        let page = self
            .node
            .history_page(
                table,
                (!request.after.is_empty()).then_some(request.after),
                request.limit.clamp(1, HISTORY_PAGE) as usize,
                request.min_applied,
            )
            .await
            .map_err(crate::api::status_of)?;
        Ok(tonic::Response::new(HistoryPage {
            applied: page.applied,
            records: page
                .records
                .into_iter()
                .map(|(key, value)| HistoryRecord { key, value })
                .collect(),
            done: page.done,
        }))
    }

    async fn send(
        &self,
        request: tonic::Request<RaftBatch>,
    ) -> Result<tonic::Response<RaftAck>, tonic::Status> {
        let batch = request.into_inner();
        self.check_peer(batch.from)?;
        let mut messages = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            let m = Message::parse_from_bytes(bytes)
                .map_err(|e| tonic::Status::invalid_argument(format!("bad raft message: {e}")))?;
            if m.from != batch.from {
                return Err(tonic::Status::invalid_argument(format!(
                    "message from {} inside a batch from {}",
                    m.from, batch.from
                )));
            }
            messages.push(m);
        }
        if !batch.http_addr.is_empty() {
            self.node.learn_http(batch.from, &batch.http_addr);
        }
        self.node.raft(
            batch.from,
            PeerInfo {
                addr: batch.addr,
                region: batch.region,
            },
            batch.command_version,
            messages,
        )?;
        Ok(tonic::Response::new(RaftAck {}))
    }
}
