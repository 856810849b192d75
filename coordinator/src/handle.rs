//! The async side's handle on the raft thread: requests in, answers back on a oneshot.

use std::sync::Arc;

use raft::prelude::Message;
use rehearse_core::jobs::{Command, JobState, Outcome};
use rehearse_core::plan::RawPlan;
use tokio::sync::oneshot;

use crate::fleet::FleetHub;
use crate::node::{ApiError, Membership, Read, ReadAnswer, Reply, Request, Status};
use crate::storage::PeerInfo;

#[derive(Clone)]
pub struct NodeHandle {
    tx: std::sync::mpsc::Sender<Request>,
    fleet: Arc<FleetHub>,
    /// Peers' HTTP API addresses as their raft traffic says (for redirects only).
    http_book: Arc<std::sync::RwLock<std::collections::HashMap<u64, String>>>,
}

fn stopped() -> ApiError {
    ApiError::Unavailable("coordinator is shutting down".into())
}

impl NodeHandle {
    pub fn new(tx: std::sync::mpsc::Sender<Request>, fleet: Arc<FleetHub>) -> NodeHandle {
        NodeHandle {
            tx,
            fleet,
            http_book: Arc::default(),
        }
    }

    /// Records a peer's HTTP API address (from its raft batches).
    pub fn learn_http(&self, id: u64, addr: &str) {
        if let Ok(mut book) = self.http_book.write()
            && book.get(&id).is_none_or(|a| a != addr)
        {
            book.insert(id, addr.to_owned());
        }
    }

    /// A peer's HTTP API address, when it has told one.
    pub fn peer_http(&self, id: u64) -> Option<String> {
        self.http_book.read().ok()?.get(&id).cloned()
    }

    /// What the leader wants each worker to run, one watch per worker.
    pub fn fleet(&self) -> &FleetHub {
        &self.fleet
    }

    /// Proposes a fleet command (the leader stamps its time) and returns what applying it did.
    pub async fn fleet_command(&self, command: Command) -> Result<Outcome, ApiError> {
        self.call(|reply| Request::Fleet { command, reply }).await
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn submit(&self, id: String, plan: RawPlan) -> Result<String, ApiError> {
        self.call(|reply| Request::Submit { id, plan, reply }).await
    }

    pub async fn cancel(&self, id: String) -> Result<(), ApiError> {
        self.call(|reply| Request::Cancel { id, reply }).await
    }

    /// Drills with their runs: one by name, or all.
    pub async fn drills(
        &self,
        name: Option<String>,
    ) -> Result<
        Vec<(
            String,
            Option<rehearse_core::drill::Drill>,
            Vec<rehearse_core::drill::Run>,
        )>,
        ApiError,
    > {
        match self.read(Read::Drills(name)).await? {
            ReadAnswer::Drills(d) => Ok(d),
            _ => Err(ApiError::Unavailable("wrong answer kind".into())),
        }
    }

    /// Exercises: one by id (not found: an error), or all.
    pub async fn exercises(
        &self,
        id: Option<String>,
    ) -> Result<Vec<rehearse_core::exercise::Exercise>, ApiError> {
        match self.read(Read::Exercises(id)).await? {
            ReadAnswer::Exercises(e) => Ok(e),
            _ => Err(ApiError::Unavailable("wrong answer kind".into())),
        }
    }

    pub async fn read(&self, read: Read) -> Result<ReadAnswer, ApiError> {
        self.call(|reply| Request::Read { read, reply }).await
    }

    pub async fn jobs(&self, state: Option<JobState>) -> Result<ReadAnswer, ApiError> {
        self.read(Read::Jobs(state)).await
    }

    pub async fn status(&self) -> Result<Status, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Status { reply: tx })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    pub async fn membership(
        &self,
        kind: Membership,
        id: u64,
        addr: String,
    ) -> Result<(), ApiError> {
        self.call(|reply| Request::Membership {
            kind,
            id,
            addr,
            reply,
        })
        .await
    }

    /// Commits a no-op of the test-only newest command kind (upgrade tests).
    pub async fn probe(&self, note: String) -> Result<(), ApiError> {
        self.call(|reply| Request::Probe { note, reply }).await
    }

    pub fn raft(
        &self,
        from: u64,
        info: PeerInfo,
        command_version: u32,
        messages: Vec<Message>,
    ) -> Result<(), tonic::Status> {
        self.tx
            .send(Request::Raft {
                from,
                info,
                command_version,
                messages,
            })
            .map_err(|_| tonic::Status::unavailable("coordinator is shutting down"))
    }

    /// A page of this node's history for a peer that copies it.
    pub async fn history_page(
        &self,
        table: crate::history::Table,
        after: Option<String>,
        limit: usize,
        min_applied: u64,
    ) -> Result<crate::history::Page, ApiError> {
        self.call(|reply| Request::HistoryPage {
            table,
            after,
            limit,
            min_applied,
            reply,
        })
        .await
    }

    /// Writes a page copied from a peer.
    pub async fn copy_history(
        &self,
        table: crate::history::Table,
        page: crate::history::Page,
    ) -> Result<(), ApiError> {
        self.call(|reply| Request::CopyHistory { table, page, reply })
            .await
    }

    /// Where this node's history copy stands, with its applied index (None: nothing to copy).
    pub async fn history_copying(
        &self,
    ) -> Result<Option<(crate::history::Copying, u64)>, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::HistoryCopying { reply: tx })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Request::Shutdown);
    }
}
