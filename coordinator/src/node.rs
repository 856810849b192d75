//! The raft node: one dedicated thread owns the `RawNode`, its storage and the applied state.
//!
//! Everything reaches it as a [`Request`] on one channel — client calls, peer messages — and the
//! loop follows raft-rs's Ready contract exactly: send the leader's messages, install a snapshot,
//! persist entries and hard state (one fsync), apply committed entries in order, send the
//! messages that depend on the persisted state, advance. All submits queued when a loop turn
//! starts become one log entry, and all fleet messages (heartbeats, progress, verdicts) another:
//! many clients share one fsync.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType};
use raft::{Config, RawNode, StateRole};
use rehearse_core::codec;
use rehearse_core::jobs::{Command, NewJob, Outcome};
use tracing::{debug, error, info, warn};

mod leader;
mod reads;
mod request;

pub use request::{ApiError, Member, Membership, Read, ReadAnswer, Reply, Request, Status};

use crate::fleet::FleetHub;
use crate::storage::{Batch, PeerInfo, RaftStore, StoreError};
use crate::transport::Transport;

/// One raft tick. Election timeout = 10 ticks (randomised to 10..20), heartbeats every 2.
pub const TICK: Duration = Duration::from_millis(50);

/// Tuning that tests change.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: u64,
    pub info: PeerInfo,
    /// Compact the log into a snapshot point once it holds this many entries.
    pub compact_after: u64,
    /// A worker silent this long is lost.
    pub lease: Duration,
    /// The command version this node reads and writes (see `rehearse_core::codec`).
    pub command_version: u32,
    /// Finished jobs last changed longer ago than this leave the state (their summaries stay
    /// in the history).
    pub job_retention: Duration,
    /// The API's token table, refreshed here when the applied tokens change.
    pub gate: std::sync::Arc<crate::auth::Gate>,
}

/// How long the leader lets requests gather before a turn (see `run`).
const BATCH_WINDOW: Duration = Duration::from_micros(300);

/// How often the leader looks for lost workers and overdue jobs.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// How often the leader looks for drills overdue and not yet notified.
const OVERDUE_CHECK: Duration = Duration::from_secs(5);

/// How often the gauges of `/metrics` are refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// How often the leader looks for finished jobs past `--job-retention`.
const RETENTION_CHECK: Duration = Duration::from_secs(5);

/// How often the leader looks for due drill ticks (a tick fires at most this late, plus its
/// jitter).
const DRILL_CHECK: Duration = Duration::from_millis(100);

/// Proposals waiting for their entry to be applied, keyed by the proposal's context.
enum Waiter {
    Submits(Vec<Reply<String>>),
    Cancel(Reply<()>),
    Membership(Reply<()>),
    /// One reply per command of a fleet batch, in order.
    FleetBatch(Vec<Reply<Outcome>>),
    /// The leader's own assignment or expiry proposal.
    Internal,
    /// A command answered with `Outcome::Done` (the probe).
    Done(Reply<()>),
}

struct PendingRead {
    read: Read,
    reply: Reply<ReadAnswer>,
    /// Set once raft confirmed leadership at this commit index.
    index: Option<u64>,
}

pub struct Node {
    raw: RawNode<RaftStore>,
    transport: Transport,
    opts: NodeOptions,
    waiters: HashMap<u64, Waiter>,
    reads: HashMap<u64, PendingRead>,
    next_ctx: u64,
    /// Submits gathered during this loop turn; proposed as one entry.
    submits: Vec<(NewJob, Reply<String>)>,
    /// Fleet messages gathered during this loop turn; proposed as one `Batch` entry.
    fleet_batch: Vec<(Command, Reply<Outcome>)>,
    fleet: Arc<FleetHub>,
    /// Something placement depends on changed since the last placement.
    placement_dirty: bool,
    /// Something the assignment streams show changed since the last publication.
    fleet_dirty: bool,
    /// The workers whose sets may have changed since the last publication; `None`: any.
    touched: Option<HashSet<String>>,
    /// The leader's assignment / expiry proposal not applied yet (one of each at a time).
    assign_in_flight: Option<u64>,
    expire_in_flight: Option<u64>,
    /// When this node last became leader: it expires nobody during its first lease.
    leader_since: Option<Instant>,
    last_expiry_check: Instant,
    last_deferral_check: Instant,
    last_overdue_check: Instant,
    /// The command version each peer said it reads (in its raft traffic).
    peer_versions: HashMap<u64, u32>,
    /// The leader's `SetVersion` proposal not applied yet.
    version_in_flight: Option<u64>,
    /// The drill ticker's caches, and its proposal not applied yet (one at a time, so a tick
    /// is never proposed twice by this leader).
    ticker: crate::ticker::Ticker,
    ticks_in_flight: Option<u64>,
    last_drill_check: Instant,
    /// The leader's `ForgetJobs` proposal not applied yet, and when it last looked.
    forget_in_flight: Option<u64>,
    last_retention_check: Instant,
    /// What `/metrics` shows; when each of this node's proposals was made; the leader last seen.
    metrics: Arc<crate::metrics::Metrics>,
    proposed: HashMap<u64, Instant>,
    last_leader: u64,
    last_metrics: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    pub fn new(
        store: RaftStore,
        transport: Transport,
        opts: NodeOptions,
        fleet: Arc<FleetHub>,
        metrics: Arc<crate::metrics::Metrics>,
        logger: &slog::Logger,
    ) -> Result<Node, raft::Error> {
        let applied = store.sm.jobs.applied();
        let config = Config {
            id: opts.id,
            election_tick: 10,
            heartbeat_tick: 2,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, store, logger)?;
        let mut node = Node {
            raw,
            transport,
            opts,
            waiters: HashMap::new(),
            reads: HashMap::new(),
            next_ctx: 1,
            submits: Vec::new(),
            fleet_batch: Vec::new(),
            fleet,
            placement_dirty: true,
            fleet_dirty: true,
            touched: None,
            assign_in_flight: None,
            expire_in_flight: None,
            leader_since: None,
            last_expiry_check: Instant::now(),
            last_deferral_check: Instant::now(),
            last_overdue_check: Instant::now(),
            peer_versions: HashMap::new(),
            version_in_flight: None,
            ticker: crate::ticker::Ticker::default(),
            ticks_in_flight: None,
            last_drill_check: Instant::now(),
            forget_in_flight: None,
            last_retention_check: Instant::now(),
            metrics,
            proposed: HashMap::new(),
            last_leader: 0,
            last_metrics: Instant::now() - METRICS_REFRESH,
        };
        let peers: Vec<(u64, PeerInfo)> = node
            .raw
            .store()
            .peers
            .iter()
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        for (id, info) in peers {
            node.transport.add_peer(id, &info.addr);
        }
        Ok(node)
    }

    /// Runs until shutdown or a fatal storage error.
    pub fn run(mut self, rx: Receiver<Request>) -> Result<(), StoreError> {
        let mut last_tick = Instant::now();
        loop {
            let wait = TICK.saturating_sub(last_tick.elapsed());
            let first = match rx.recv_timeout(wait) {
                Ok(req) => Some(req),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if first.is_some() && self.is_leader() {
                // Let a burst gather — writes, and followers' acknowledgements — so one turn
                // (one entry, one fsync, one append per follower) serves all of it instead of
                // one each. Measured with the loadtest (BENCHMARKS.md); waiting for client
                // requests alone gained nothing.
                std::thread::sleep(BATCH_WINDOW);
            }
            let mut stop = false;
            for req in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                if matches!(req, Request::Shutdown) {
                    stop = true;
                    break;
                }
                self.handle(req);
            }
            self.propose_submits();
            if last_tick.elapsed() >= TICK {
                self.raw.tick();
                last_tick = Instant::now();
            }
            self.on_ready()?;
            if self.is_leader() {
                self.raise_version();
                self.drill_duties();
                self.retention_duty();
                self.schedule();
                self.expire_if_due();
                // Send what they proposed now, not after the next tick.
                self.on_ready()?;
            }
            self.publish_fleet();
            self.opts.gate.refresh(&self.raw.store().sm.jobs);
            self.refresh_metrics();
            if stop {
                break;
            }
        }
        let mut batch = Batch::default();
        self.raw.mut_store().persist_state(&mut batch);
        self.raw.mut_store().commit(&mut batch, true)
    }

    /// The leader emits the traces of the jobs the last command ended (see [`crate::trace`]).
    fn trace_ended(&mut self) {
        let leading = self.is_leader();
        let jobs = &mut self.raw.mut_store().sm.jobs;
        let ended = jobs.take_ended();
        if !leading || !crate::trace::enabled() {
            return;
        }
        for id in ended {
            if let Some(job) = jobs.get(&id) {
                crate::trace::job_ended(job, jobs.drill_of(&id));
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> ApiError {
        let leader = self.raw.raft.leader_id;
        let addr = if leader == self.opts.id {
            Some(self.opts.info.addr.clone())
        } else {
            self.raw.store().peers.get(&leader).map(|p| p.addr.clone())
        };
        ApiError::NotLeader {
            leader: addr.filter(|_| leader != 0).map(|a| (leader, a)),
        }
    }

    fn ctx(&mut self) -> u64 {
        self.next_ctx += 1;
        self.next_ctx
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Raft {
                from,
                info,
                command_version,
                messages,
            } => {
                self.peer_versions
                    .insert(from, command_version.max(codec::LEGACY));
                // Addresses come from --peers and membership changes, never from what a sender
                // says about itself; only the region label is learned from traffic.
                let known = self
                    .raw
                    .store()
                    .peers
                    .get(&from)
                    .cloned()
                    .unwrap_or_default();
                if !info.region.is_empty() && known.region != info.region && !known.addr.is_empty()
                {
                    let mut batch = Batch::default();
                    let updated = PeerInfo {
                        addr: known.addr,
                        region: info.region,
                    };
                    self.raw.mut_store().set_peer(&mut batch, from, updated);
                    if let Err(e) = self.raw.mut_store().commit(&mut batch, false) {
                        warn!(error = %e, "could not record peer region");
                    }
                }
                for m in messages {
                    if let Err(e) = self.raw.step(m) {
                        debug!(error = %e, from, "raft message not stepped");
                    }
                }
            }
            Request::Submit { id, plan, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                // Refused at once: a plan with newer fields cannot run until the upgrade is done.
                if let Err(why) = self.version_gate(plan.min_version()) {
                    let _ = reply.send(Err(ApiError::Invalid(why)));
                    return;
                }
                self.submits.push((
                    NewJob {
                        id,
                        plan,
                        at_ms: now_ms(),
                    },
                    reply,
                ));
            }
            Request::Cancel { id, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let ctx = self.ctx();
                match self.propose(
                    ctx,
                    &Command::Cancel {
                        id,
                        at_ms: now_ms(),
                    },
                ) {
                    Ok(()) => {
                        self.waiters.insert(ctx, Waiter::Cancel(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Read { read, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let ctx = self.ctx();
                self.raw.read_index(ctx.to_le_bytes().to_vec());
                self.reads.insert(
                    ctx,
                    PendingRead {
                        read,
                        reply,
                        index: None,
                    },
                );
            }
            Request::Fleet { mut command, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                // A worker's verdict `error` in a cluster not yet upgraded waits (the worker
                // retries an unavailable answer) rather than reach a node that cannot read it.
                if let Err(why) = self.version_gate(command.min_version()) {
                    let _ = reply.send(Err(ApiError::Unavailable(why)));
                    return;
                }
                stamp(&mut command, now_ms());
                self.fleet_batch.push((command, reply));
            }
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::Membership {
                kind,
                id,
                addr,
                reply,
            } => self.membership(kind, id, addr, reply),
            Request::Probe { note, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let command = Command::Probe { note };
                if let Err(why) = self.version_gate(command.min_version()) {
                    let _ = reply.send(Err(ApiError::Invalid(why)));
                    return;
                }
                let ctx = self.ctx();
                match self.propose(ctx, &command) {
                    Ok(()) => {
                        self.waiters.insert(ctx, Waiter::Done(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::HistoryPage {
                table,
                after,
                limit,
                min_applied,
                reply,
            } => {
                let _ = reply.send(self.history_page(table, after.as_deref(), limit, min_applied));
            }
            Request::CopyHistory { table, page, reply } => {
                let _ = reply.send(self.copy_history(table, page));
            }
            Request::HistoryCopying { reply } => {
                let sm = &self.raw.store().sm;
                let _ = reply.send(sm.history_copy.clone().map(|c| (c, sm.applied())));
            }
            Request::Shutdown => {}
        }
    }

    /// Whether a command of version `needed` may be proposed: every member must read it.
    /// `Err` says why not.
    fn version_gate(&self, needed: u32) -> Result<(), String> {
        let cluster = self.raw.store().sm.jobs.cluster_version();
        if needed <= cluster {
            return Ok(());
        }
        Err(format!(
            "this needs command version {needed}, and the cluster runs {cluster}: every coordinator must be upgraded first (rehearse cluster status shows each one's version)"
        ))
    }

    fn propose(&mut self, ctx: u64, command: &Command) -> Result<(), ApiError> {
        let data = codec::encode(command)
            .map_err(|e| ApiError::Unavailable(format!("encode command: {e}")))?;
        self.raw
            .propose(ctx.to_le_bytes().to_vec(), data)
            .map_err(|e| match e {
                raft::Error::ProposalDropped => self.not_leader(),
                other => ApiError::Unavailable(format!("propose: {other}")),
            })?;
        self.proposed.insert(ctx, Instant::now());
        Ok(())
    }

    /// Proposes everything gathered this turn as one entry; each reply waits for it.
    fn propose_gathered<T, R>(
        &mut self,
        gathered: Vec<(T, Reply<R>)>,
        command: impl FnOnce(Vec<T>) -> Command,
        waiter: impl FnOnce(Vec<Reply<R>>) -> Waiter,
    ) {
        if gathered.is_empty() {
            return;
        }
        let (items, replies): (Vec<T>, Vec<Reply<R>>) = gathered.into_iter().unzip();
        let ctx = self.ctx();
        match self.propose(ctx, &command(items)) {
            Ok(()) => {
                self.waiters.insert(ctx, waiter(replies));
            }
            Err(e) => {
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
    }

    fn propose_submits(&mut self) {
        let submits = std::mem::take(&mut self.submits);
        self.propose_gathered(submits, Command::Submit, Waiter::Submits);
        let fleet = std::mem::take(&mut self.fleet_batch);
        self.propose_gathered(fleet, Command::Batch, Waiter::FleetBatch);
    }

    fn membership(&mut self, kind: Membership, id: u64, addr: String, reply: Reply<()>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let conf = self.raw.store().conf_state();
        let is_voter = conf.voters.contains(&id);
        let is_learner = conf.learners.contains(&id);
        let change_type = match kind {
            Membership::AddLearner if is_voter || is_learner => {
                let _ = reply.send(Err(ApiError::Invalid(format!(
                    "node {id} is already a member"
                ))));
                return;
            }
            Membership::AddLearner if addr.is_empty() => {
                let _ = reply.send(Err(ApiError::Invalid(
                    "add-learner needs the node's address".into(),
                )));
                return;
            }
            Membership::AddLearner => ConfChangeType::AddLearnerNode,
            Membership::Promote if !is_learner => {
                let _ = reply.send(Err(ApiError::Invalid(format!(
                    "node {id} is not a learner"
                ))));
                return;
            }
            Membership::Promote => ConfChangeType::AddNode,
            Membership::Remove if !is_voter && !is_learner => {
                let _ = reply.send(Err(ApiError::NotFound(format!(
                    "node {id} is not a member"
                ))));
                return;
            }
            Membership::Remove => ConfChangeType::RemoveNode,
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(change_type);
        cc.node_id = id;
        cc.context = addr.into_bytes().into();
        let ctx = self.ctx();
        match self.raw.propose_conf_change(ctx.to_le_bytes().to_vec(), cc) {
            Ok(()) => {
                self.waiters.insert(ctx, Waiter::Membership(reply));
            }
            Err(e) => {
                // raft-rs allows one pending configuration change at a time.
                let _ = reply.send(Err(ApiError::Unavailable(format!(
                    "membership change refused: {e}"
                ))));
            }
        }
    }

    fn status(&self) -> Status {
        let store = self.raw.store();
        let conf = store.conf_state();
        let member = |id: &u64, role: &'static str| {
            let info = if *id == self.opts.id {
                self.opts.info.clone()
            } else {
                store.peers.get(id).cloned().unwrap_or_default()
            };
            let command_version = if *id == self.opts.id {
                self.opts.command_version
            } else {
                self.peer_versions.get(id).copied().unwrap_or(0)
            };
            Member {
                id: *id,
                addr: info.addr,
                role,
                region: info.region,
                command_version,
            }
        };
        let mut members: Vec<Member> = conf
            .voters
            .iter()
            .map(|id| member(id, "voter"))
            .chain(conf.learners.iter().map(|id| member(id, "learner")))
            .collect();
        members.sort_by_key(|m| m.id);
        Status {
            id: self.opts.id,
            leader: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied: store.sm.jobs.applied(),
            members,
            cluster_version: store.sm.jobs.cluster_version(),
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        let mut batch = Batch::default();
        // The leader's messages may go out before its own write (raft thesis §10.2.1).
        self.transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.raw.mut_store().apply_snapshot(&mut batch, &snapshot)?;
            let conf = self.raw.store().conf_state().clone();
            info!(index = snapshot.get_metadata().index, voters = ?conf.voters, learners = ?conf.learners, "installed snapshot from leader");
            let cluster = self.raw.store().sm.jobs.cluster_version();
            if cluster > self.opts.command_version {
                // Its state is whole, but the next entry may be one it cannot read: it will
                // stop there rather than skip it.
                warn!(
                    cluster,
                    readable = self.opts.command_version,
                    "the cluster runs a newer command version than this node reads: upgrade this node"
                );
            }
        }
        self.raw.mut_store().append(&mut batch, ready.entries());
        if let Some(hard) = ready.hs() {
            self.raw
                .mut_store()
                .set_hard_state(&mut batch, hard.clone());
        }
        // Entries and hard state are durable before anything that depends on them is sent.
        self.raw.mut_store().commit(&mut batch, true)?;
        self.apply(ready.take_committed_entries(), &mut batch)?;
        self.transport.send(ready.take_persisted_messages());
        for rs in ready.read_states() {
            if let Some(ctx) = ctx_of(&rs.request_ctx)
                && let Some(read) = self.reads.get_mut(&ctx)
            {
                read.index = Some(rs.index);
            }
        }
        let role_changed = ready.ss().map(|ss| ss.raft_state);
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(&mut batch, commit);
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries(), &mut batch)?;
        self.raw.advance_apply();
        if self.raw.store().log_len() >= self.opts.compact_after {
            let applied = self.raw.store().sm.jobs.applied();
            self.raw.mut_store().compact(&mut batch, applied);
            debug!(applied, "log compacted into a snapshot point");
            self.raw.mut_store().commit(&mut batch, true)?;
        } else {
            // Only the commit index and peer book: recoverable, no fsync needed.
            self.raw.mut_store().commit(&mut batch, false)?;
        }
        self.answer_reads();
        if let Some(role) = role_changed {
            info!(
                id = self.opts.id,
                term = self.raw.raft.term,
                ?role,
                leader = self.raw.raft.leader_id,
                "raft role changed"
            );
            if role == StateRole::Leader {
                self.leader_since = Some(Instant::now());
                self.placement_dirty = true;
            } else {
                self.leader_since = None;
                self.fail_waiters();
            }
            self.fleet_dirty = true;
        }
        let leader = self.raw.raft.leader_id;
        if leader != self.last_leader {
            if leader != 0 {
                self.metrics.leader_changed();
            }
            self.last_leader = leader;
        }
        Ok(())
    }

    /// The gauges of `/metrics`, about once a second.
    fn refresh_metrics(&mut self) {
        if self.last_metrics.elapsed() < METRICS_REFRESH {
            return;
        }
        self.last_metrics = Instant::now();
        let store = self.raw.store();
        self.metrics.refresh(
            &store.sm.jobs,
            (
                self.raw.raft.term,
                self.raw.raft.raft_log.committed,
                store.sm.applied(),
                self.is_leader(),
            ),
            store.sm.history_copy.is_some(),
        );
    }

    /// Proposals and reads still waiting when leadership is lost get "not leader": their entries may
    /// still commit, so clients retry with the same job id (a duplicate is recognised, not doubled).
    fn fail_waiters(&mut self) {
        self.proposed.clear();
        let err = self.not_leader();
        for (_, waiter) in self.waiters.drain() {
            match waiter {
                Waiter::Submits(replies) => replies
                    .into_iter()
                    .for_each(|r| drop(r.send(Err(err.clone())))),
                Waiter::Cancel(r) | Waiter::Membership(r) | Waiter::Done(r) => {
                    drop(r.send(Err(err.clone())))
                }
                Waiter::FleetBatch(replies) => replies
                    .into_iter()
                    .for_each(|r| drop(r.send(Err(err.clone())))),
                Waiter::Internal => {}
            }
        }
        self.assign_in_flight = None;
        self.expire_in_flight = None;
        self.version_in_flight = None;
        self.ticks_in_flight = None;
        self.forget_in_flight = None;
        for (_, read) in self.reads.drain() {
            let _ = read.reply.send(Err(err.clone()));
        }
        for (_, reply) in self.submits.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, reply) in self.fleet_batch.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, batch: &mut Batch) -> Result<(), StoreError> {
        for entry in entries {
            let ctx = ctx_of(&entry.context);
            if entry.data.is_empty() {
                // The empty entry a new leader appends (running exercises count it), or an
                // empty conf change.
                let jobs = &mut self.raw.mut_store().sm.jobs;
                if entry.get_entry_type() == EntryType::EntryNormal {
                    jobs.new_leader(entry.index, entry.term);
                } else {
                    jobs.skip(entry.index);
                }
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    // Never skipped: a replica that skips what others apply drifts from them.
                    let command = match codec::decode(&entry.data, self.opts.command_version) {
                        Ok(c) => c,
                        Err(e) => {
                            error!(index = entry.index, error = %e, "cannot apply a committed entry; stopping");
                            return Err(StoreError::Undecodable {
                                index: entry.index,
                                reason: e.to_string(),
                            });
                        }
                    };
                    let outcome = self.raw.mut_store().sm.jobs.apply(entry.index, &command);
                    batch
                        .sm
                        .history
                        .extend(self.raw.mut_store().sm.jobs.take_history());
                    self.metrics.applied(&self.raw.store().sm.jobs, &command);
                    self.trace_ended();
                    if let Some(at) = ctx.and_then(|c| self.proposed.remove(&c)) {
                        self.metrics.proposal_applied(at.elapsed());
                    }
                    self.note_applied(&command, ctx);
                    if let Some(waiter) = ctx.and_then(|c| self.waiters.remove(&c)) {
                        reply(waiter, outcome);
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data).map_err(|e| {
                        StoreError::Corrupt(format!("conf change at {}: {e}", entry.index))
                    })?;
                    let conf = self
                        .raw
                        .apply_conf_change(&cc)
                        .map_err(|e| StoreError::Corrupt(format!("apply conf change: {e}")))?;
                    let store = self.raw.mut_store();
                    store.set_conf_state(batch, conf);
                    let addr = String::from_utf8_lossy(&cc.context).into_owned();
                    match cc.get_change_type() {
                        ConfChangeType::AddLearnerNode | ConfChangeType::AddNode
                            if !addr.is_empty() =>
                        {
                            let region = store
                                .peers
                                .get(&cc.node_id)
                                .map(|p| p.region.clone())
                                .unwrap_or_default();
                            store.set_peer(
                                batch,
                                cc.node_id,
                                PeerInfo {
                                    addr: addr.clone(),
                                    region,
                                },
                            );
                            if cc.node_id != self.opts.id {
                                self.transport.add_peer(cc.node_id, &addr);
                            }
                        }
                        ConfChangeType::RemoveNode => {
                            store.remove_peer(batch, cc.node_id);
                            self.transport.remove_peer(cc.node_id);
                        }
                        _ => {}
                    }
                    self.raw.mut_store().sm.jobs.skip(entry.index);
                    info!(index = entry.index, change = ?cc.get_change_type(), node = cc.node_id, "membership changed");
                    if let Some(Waiter::Membership(r)) = ctx.and_then(|c| self.waiters.remove(&c)) {
                        let _ = r.send(Ok(()));
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    self.raw.mut_store().sm.jobs.skip(entry.index);
                }
            }
        }
        Ok(())
    }
}

impl Node {
    /// Records what an applied command changed for the scheduler and the assignment streams.
    fn note_applied(&mut self, command: &Command, ctx: Option<u64>) {
        if ctx.is_some() && ctx == self.assign_in_flight {
            self.assign_in_flight = None;
        }
        if ctx.is_some() && ctx == self.expire_in_flight {
            self.expire_in_flight = None;
        }
        if ctx.is_some() && ctx == self.version_in_flight {
            self.version_in_flight = None;
        }
        if ctx.is_some() && ctx == self.ticks_in_flight {
            self.ticks_in_flight = None;
        }
        if ctx.is_some() && ctx == self.forget_in_flight {
            self.forget_in_flight = None;
        }
        self.note_changes(command);
    }

    fn note_changes(&mut self, command: &Command) {
        let jobs = &self.raw.store().sm.jobs;
        // The worker running a job's latest attempt (ended or not: its set lost the job).
        let worker_of = |job: &str| {
            jobs.get(job)
                .and_then(|j| j.attempts.last())
                .map(|a| a.worker.clone())
        };
        let touched: Option<Vec<String>> = match command {
            Command::Heartbeat { .. }
            | Command::Progress { .. }
            | Command::Noop
            | Command::SetVersion { .. }
            | Command::Probe { .. }
            | Command::ApplyDrill { .. }
            | Command::PauseDrill { .. }
            | Command::ResumeDrill { .. }
            | Command::DeleteDrill { .. }
            | Command::ForgetJobs { .. }
            | Command::MarkSent { .. }
            | Command::DrillOverdue { .. }
            | Command::Digest { .. }
            | Command::CreateToken(_)
            | Command::RevokeToken { .. } => return,
            // New jobs to place; closed windows cancel jobs that never had a worker.
            Command::DrillTick(_)
            | Command::CloseWindow { .. }
            | Command::StartExercise(_)
            | Command::ApproveGate { .. }
            | Command::ExpireGates { .. } => {
                self.placement_dirty = true;
                return;
            }
            Command::Submit(_) => {
                self.placement_dirty = true;
                return;
            }
            Command::Batch(commands) => {
                commands.iter().for_each(|c| self.note_changes(c));
                return;
            }
            Command::Assign { assignments, .. } => {
                Some(assignments.iter().map(|(_, w)| w.clone()).collect())
            }
            Command::Report { job, .. } | Command::Cancel { id: job, .. } => {
                Some(worker_of(job).into_iter().collect())
            }
            Command::RegisterWorker(spec) => Some(vec![spec.name.clone()]),
            Command::Drain { .. } => Some(Vec::new()),
            // Cancels the exercise's running jobs, wherever they run.
            Command::ExpireWorkers { .. } | Command::AbortExercise { .. } => None,
        };
        self.placement_dirty = true;
        self.fleet_dirty = true;
        match (touched, self.touched.as_mut()) {
            (Some(names), Some(set)) => set.extend(names),
            (None, _) => self.touched = None,
            (Some(_), None) => {}
        }
    }

    /// Publishes what each worker should run, when it changed.
    fn publish_fleet(&mut self) {
        if !self.fleet_dirty {
            return;
        }
        self.fleet_dirty = false;
        let leader_hint = match self.not_leader() {
            ApiError::NotLeader { leader } => leader,
            _ => None,
        };
        let touched = self.touched.replace(HashSet::new());
        self.fleet.publish(
            self.is_leader(),
            leader_hint,
            &self.raw.store().sm.jobs,
            touched.as_ref(),
        );
    }
}

/// Fleet commands carry the leader's clock, set when it proposes them.
fn stamp(command: &mut Command, now: u64) {
    match command {
        Command::RegisterWorker(spec) => spec.at_ms = now,
        Command::Heartbeat { at_ms, .. }
        | Command::Progress { at_ms, .. }
        | Command::Report { at_ms, .. }
        | Command::Cancel { at_ms, .. }
        | Command::Assign { at_ms, .. } => *at_ms = now,
        Command::ExpireWorkers { now_ms, .. } => *now_ms = now,
        Command::ApplyDrill { at_ms, .. }
        | Command::PauseDrill { at_ms, .. }
        | Command::ResumeDrill { at_ms, .. }
        | Command::DeleteDrill { at_ms, .. }
        | Command::CloseWindow { at_ms, .. }
        | Command::DrillOverdue { at_ms, .. }
        | Command::Digest { at_ms, .. }
        | Command::ForgetJobs { at_ms, .. }
        | Command::ApproveGate { at_ms, .. }
        | Command::AbortExercise { at_ms, .. }
        | Command::RevokeToken { at_ms, .. } => *at_ms = now,
        Command::CreateToken(token) => token.created_at_ms = now,
        Command::DrillTick(tick) => tick.at_ms = now,
        Command::StartExercise(start) => start.at_ms = now,
        Command::ExpireGates { now_ms } => *now_ms = now,
        Command::Submit(_)
        | Command::Noop
        | Command::Drain { .. }
        | Command::Batch(_)
        | Command::SetVersion { .. }
        | Command::MarkSent { .. }
        | Command::Probe { .. } => {}
    }
}

fn ctx_of(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes)
}

fn reply(waiter: Waiter, outcome: Outcome) {
    match (waiter, outcome) {
        (Waiter::Submits(replies), Outcome::Submitted(results)) => {
            // A submit refused at apply time reuses an id with another plan.
            for (r, result) in replies.into_iter().zip(results) {
                let _ = r.send(result.map_err(ApiError::Refused));
            }
        }
        (Waiter::Cancel(r), Outcome::Cancelled(result)) => {
            let _ = r.send(result.map_err(|reason| {
                if reason.starts_with("no job") {
                    ApiError::NotFound(reason)
                } else {
                    ApiError::Refused(reason)
                }
            }));
        }
        (Waiter::FleetBatch(replies), Outcome::Batch(outcomes)) => {
            for (r, outcome) in replies.into_iter().zip(outcomes) {
                let _ = r.send(Ok(outcome));
            }
        }
        (Waiter::FleetBatch(replies), _) => replies.into_iter().for_each(|r| {
            drop(r.send(Err(ApiError::Unavailable(
                "entry applied without an outcome".into(),
            ))))
        }),
        (Waiter::Internal, _) => {}
        (Waiter::Done(r), Outcome::Done(result)) => {
            let _ = r.send(result.map_err(ApiError::Invalid));
        }
        (Waiter::Submits(replies), _) => replies.into_iter().for_each(|r| {
            drop(r.send(Err(ApiError::Unavailable(
                "entry applied without an outcome".into(),
            ))))
        }),
        (Waiter::Cancel(r) | Waiter::Membership(r) | Waiter::Done(r), _) => drop(r.send(Err(
            ApiError::Unavailable("entry applied without an outcome".into()),
        ))),
    }
}
