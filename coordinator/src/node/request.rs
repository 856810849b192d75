//! What the async side asks of the raft thread ([`Request`]) and what it answers: the API's
//! request and reply types, shared by the gRPC and HTTP services through `NodeHandle`.

use raft::prelude::Message;
use rehearse_core::fleet::Worker;
use rehearse_core::jobs::{Command, Job, JobState, Outcome};
use rehearse_core::plan::RawPlan;
use tokio::sync::oneshot;

use crate::storage::PeerInfo;

/// A request that cannot be served here, or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("not leader")]
    NotLeader { leader: Option<(u64, String)> },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// Valid, but the state refuses it.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    AddLearner,
    Promote,
    Remove,
}

/// What a linearizable read asks for.
#[derive(Debug)]
pub enum Read {
    Job(String),
    Jobs(Option<JobState>),
    Workers,
    /// One drill (by name), or all; each with its runs.
    Drills(Option<String>),
    /// One exercise (by id), or all, oldest first.
    Exercises(Option<String>),
    /// The notifications not yet taken by every channel.
    Outbox,
    /// Where the evidence chain is read from, once this node has applied up to the read.
    Evidence,
    /// The API tokens (names, roles; hashes stay inside).
    Tokens,
}

#[derive(Debug)]
pub enum ReadAnswer {
    Job(Box<Job>),
    Jobs(Vec<Job>),
    /// With each worker's last heartbeat as the log has it.
    Workers(Vec<Worker>),
    Exercises(Vec<rehearse_core::exercise::Exercise>),
    Outbox(Vec<rehearse_core::notify::Event>),
    Tokens(Vec<rehearse_core::tokens::Token>),
    /// The history database (its evidence table is read off the raft thread), the chain's head
    /// and the drills' targets, at an index at least the read's.
    Evidence {
        db: std::sync::Arc<redb::Database>,
        head: Option<rehearse_core::evidence::Head>,
        drills: Vec<rehearse_core::evidence::DrillInfo>,
    },
    /// Drills with their runs (oldest first); a drill deleted but with history has `None`.
    Drills(
        Vec<(
            String,
            Option<rehearse_core::drill::Drill>,
            Vec<rehearse_core::drill::Run>,
        )>,
    ),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub role: &'static str,
    pub region: String,
    /// The command version it said it reads; 0 while not heard from.
    pub command_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub members: Vec<Member>,
    pub cluster_version: u32,
}

pub enum Request {
    Submit {
        id: String,
        plan: RawPlan,
        reply: Reply<String>,
    },
    Cancel {
        id: String,
        reply: Reply<()>,
    },
    Read {
        read: Read,
        reply: Reply<ReadAnswer>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Membership {
        kind: Membership,
        id: u64,
        addr: String,
        reply: Reply<()>,
    },
    /// A fleet command (register, heartbeat, drain, progress, report): its time is stamped by
    /// the leader, and the reply is what applying it did.
    Fleet {
        command: Command,
        reply: Reply<Outcome>,
    },
    /// Upgrade tests: a no-op of the test-only newest command kind.
    Probe {
        note: String,
        reply: Reply<()>,
    },
    /// A page of the history tables for a peer that copies them (see `crate::history`).
    HistoryPage {
        table: crate::history::Table,
        after: Option<String>,
        limit: usize,
        /// The asker's applied index: this node must have applied at least as far.
        min_applied: u64,
        reply: Reply<crate::history::Page>,
    },
    /// A page copied from a peer, to write if it is not older than this node's state.
    CopyHistory {
        table: crate::history::Table,
        page: crate::history::Page,
        reply: Reply<()>,
    },
    /// Where this node's history copy stands (None: nothing to copy), with its applied index.
    HistoryCopying {
        reply: oneshot::Sender<Option<(crate::history::Copying, u64)>>,
    },
    Raft {
        from: u64,
        info: PeerInfo,
        /// The command version the sender reads (0: a node from before versioning).
        command_version: u32,
        messages: Vec<Message>,
    },
    Shutdown,
}
