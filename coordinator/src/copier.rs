//! The history copy: a node that installed a snapshot (which carries the state only) copies the
//! history tables from a peer, a page at a time, until both tables are done. Any peer that is not
//! copying itself and has applied at least as far serves pages: the leader is asked first, then
//! the others. The pages and the cursor are written by the raft thread (see `crate::history` for
//! why the copy converges while the peer keeps applying).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehearse_proto::v1::HistoryRequest;
use rehearse_proto::v1::peer_client::PeerClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::handle::NodeHandle;
use crate::history::Page;
use crate::tls::{Tls, url};
use crate::transport::{HISTORY_PAGE, MAX_MESSAGE};

/// How often an idle copier asks whether there is anything to copy.
const IDLE: Duration = Duration::from_millis(250);

pub async fn run(id: u64, node: NodeHandle, tls: Option<Arc<Tls>>, stop: CancellationToken) {
    let mut clients: HashMap<String, PeerClient<Channel>> = HashMap::new();
    // Records copied and when this copy began, for the log line at its end.
    let mut copy: Option<(u64, Instant)> = None;
    loop {
        let pending = match node.history_copying().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let Some((copying, applied)) = pending else {
            if let Some((records, began)) = copy.take() {
                info!(
                    records,
                    seconds = began.elapsed().as_secs_f64(),
                    "history copied from peers"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(IDLE) => continue,
                () = stop.cancelled() => return,
            }
        };
        if copy.is_none() {
            info!("copying the history from peers (the snapshot carried the state only)");
            copy = Some((0, Instant::now()));
        }
        let peers = match node.status().await {
            Ok(s) => {
                let mut m: Vec<_> = s.members.into_iter().filter(|m| m.id != id).collect();
                m.sort_by_key(|m| m.id != s.leader);
                m
            }
            Err(_) => return,
        };
        let request = HistoryRequest {
            from: id,
            table: copying.table.wire(),
            after: copying.after.clone().unwrap_or_default(),
            limit: HISTORY_PAGE,
            min_applied: applied,
        };
        let mut copied = None;
        for peer in &peers {
            let Some(client) = client(&mut clients, &peer.addr, tls.as_deref()) else {
                continue;
            };
            match client.history(request.clone()).await {
                Ok(page) => {
                    let page = page.into_inner();
                    let n = page.records.len() as u64;
                    let page = Page {
                        applied: page.applied,
                        records: page.records.into_iter().map(|r| (r.key, r.value)).collect(),
                        done: page.done,
                    };
                    match node.copy_history(copying.table, page).await {
                        Ok(()) => copied = Some(n),
                        Err(e) => debug!(error = %e, "history page not written; asking again"),
                    }
                    break;
                }
                Err(e) => debug!(peer = peer.id, error = %e.message(), "no history page"),
            }
        }
        match copied {
            Some(n) => {
                if let Some((records, _)) = &mut copy {
                    *records += n;
                }
            }
            None => {
                if peers.is_empty() {
                    warn!("no peer to copy the history from");
                }
                tokio::select! {
                    () = tokio::time::sleep(IDLE) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

fn client<'a>(
    clients: &'a mut HashMap<String, PeerClient<Channel>>,
    addr: &str,
    tls: Option<&Tls>,
) -> Option<&'a mut PeerClient<Channel>> {
    if !clients.contains_key(addr) {
        let mut endpoint = Endpoint::from_shared(url(addr, tls)).ok()?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.client()).ok()?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        clients.insert(
            addr.to_owned(),
            PeerClient::new(channel)
                .max_encoding_message_size(MAX_MESSAGE)
                .max_decoding_message_size(MAX_MESSAGE),
        );
    }
    clients.get_mut(addr)
}
