//! Raft log storage: the log, hard state, conf state, snapshot point and the peer book, in redb
//! (a Raft log must survive kill -9; redb commits are crash-safe with fsync). The state machine
//! and its history tables are [`crate::state::StateMachine`]'s; the store holds one and writes
//! its part of each Ready in the same transaction.
//!
//! The log since the last compaction is also held in memory and served to raft-rs from there;
//! every change is written to redb first, in one transaction per Ready (one fsync per batch of
//! proposals). Snapshots are made on demand from the applied state, which is persisted with every
//! compaction (so the log never loses an entry the persisted state has not absorbed).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use redb::{Database, Durability, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::state::{StateMachine, StateWrites};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
/// redb's page cache (read and write).
const CACHE_BYTES: usize = 64 << 20;
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const IDENTITY: &str = "identity";
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT_POINT: &str = "snapshot_point";
const PEERS: &str = "peers";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open data dir {dir}: {reason}")]
    Open { dir: String, reason: String },
    #[error(
        "data dir {dir} belongs to cluster {found_cluster:?} node {found_id}, not cluster {cluster:?} node {id}; refusing to start"
    )]
    Foreign {
        dir: String,
        found_cluster: String,
        found_id: u64,
        cluster: String,
        id: u64,
    },
    #[error("data dir is corrupt: {0}")]
    Corrupt(String),
    #[error("storage write failed: {0}")]
    Write(String),
    /// A committed entry this node cannot read (a newer release wrote it): it stops rather than
    /// skip it, which would let its state drift from the other replicas'.
    #[error(
        "log entry {index} cannot be applied by this node: {reason}; stopped without applying it"
    )]
    Undecodable { index: u64, reason: String },
    #[error(
        "this data dir's cluster runs command version {cluster}; this node reads up to {readable}: start it with the cluster's release"
    )]
    TooOld { cluster: u32, readable: u32 },
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

/// Who a data dir belongs to; written on first start, checked on every start after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: String,
    pub id: u64,
}

/// A peer's address book entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub addr: String,
    pub region: String,
}

/// The raft storage, and the state machine it feeds, owned by the raft node.
pub struct RaftStore {
    db: Arc<Database>,
    hard: HardState,
    conf: ConfState,
    /// Index and term of the last entry folded into the snapshot point (log starts after it).
    snap_index: u64,
    snap_term: u64,
    /// Entries `snap_index + 1 ..= last`.
    entries: VecDeque<Entry>,
    pub peers: BTreeMap<u64, PeerInfo>,
    /// The applied state and its history.
    pub sm: StateMachine,
}

/// The changes of one Ready, written in one transaction.
#[derive(Default)]
pub struct Batch {
    entries: Vec<Entry>,
    hard: Option<HardState>,
    conf: bool,
    snapshot: bool,
    peers: bool,
    compact_to: Option<u64>,
    /// The state machine's writes (history, applied state).
    pub sm: StateWrites,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.sm.is_empty()
            && self.entries.is_empty()
            && self.hard.is_none()
            && !self.conf
            && !self.snapshot
            && !self.peers
            && self.compact_to.is_none()
    }
}

impl RaftStore {
    /// Opens (or creates) the store in `dir`, refusing a dir that belongs to another cluster or id.
    /// `bootstrap`: the initial voters, for a brand-new member of a new cluster (None: join later).
    pub fn open(
        dir: &Path,
        identity: &Identity,
        bootstrap: Option<&[u64]>,
    ) -> Result<RaftStore, StoreError> {
        // redb can panic on some damaged files instead of returning an error: a damaged data dir
        // must be refused with a reason, never crash the process.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            RaftStore::open_inner(dir, identity, bootstrap)
        }));
        opened.unwrap_or_else(|_| {
            Err(StoreError::Corrupt(format!(
                "{} could not be read (the storage engine failed on it)",
                dir.join("raft.redb").display()
            )))
        })
    }

    fn open_inner(
        dir: &Path,
        identity: &Identity,
        bootstrap: Option<&[u64]>,
    ) -> Result<RaftStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let path = dir.join("raft.redb");
        let fresh = !path.exists();
        if !fresh {
            let mut magic = [0u8; 4];
            let readable = std::fs::File::open(&path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
            if readable.is_err() || &magic != b"redb" {
                return Err(StoreError::Corrupt(format!(
                    "{} is not a redb database",
                    path.display()
                )));
            }
        }
        // redb caches up to 1 GiB by default, and the history tables grow without bound: the
        // hot set here is the log's tail and the state, so a small cache keeps memory flat.
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
                .map_err(|e| StoreError::Open {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                })?,
        );
        let mut store = RaftStore {
            sm: StateMachine::empty(db.clone()),
            db,
            hard: HardState::default(),
            conf: ConfState::default(),
            snap_index: 0,
            snap_term: 0,
            entries: VecDeque::new(),
            peers: BTreeMap::new(),
        };
        let found: Option<Identity> = store.meta_json(IDENTITY)?;
        match found {
            Some(found) if found != *identity => {
                return Err(StoreError::Foreign {
                    dir: dir.display().to_string(),
                    found_cluster: found.cluster,
                    found_id: found.id,
                    cluster: identity.cluster.clone(),
                    id: identity.id,
                });
            }
            Some(_) => store.load()?,
            None if !fresh => {
                return Err(StoreError::Corrupt(format!(
                    "{} has no identity record",
                    path.display()
                )));
            }
            None => {
                let txn = store.db.begin_write().map_err(write_err)?;
                {
                    let mut meta = txn.open_table(META).map_err(write_err)?;
                    meta.insert(
                        IDENTITY,
                        serde_json::to_vec(identity).map_err(write_err)?.as_slice(),
                    )
                    .map_err(write_err)?;
                    txn.open_table(ENTRIES).map_err(write_err)?;
                }
                txn.commit().map_err(write_err)?;
                if let Some(voters) = bootstrap {
                    // Every initial voter starts from the same snapshot point (index 1, term 1) holding
                    // the voter set, so a node added later must catch up by snapshot and learns the
                    // membership from it, never from a log that does not contain it.
                    store.conf = ConfState::from((voters.to_vec(), Vec::new()));
                    store.snap_index = 1;
                    store.snap_term = 1;
                    store.hard.term = 1;
                    store.hard.commit = 1;
                    store.sm.jobs.skip(1);
                    let mut batch = Batch {
                        hard: Some(store.hard.clone()),
                        conf: true,
                        snapshot: true,
                        ..Batch::default()
                    };
                    store.sm.persist(&mut batch.sm);
                    store.commit(&mut batch, true)?;
                }
            }
        }
        Ok(store)
    }

    fn meta_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(corrupt)?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(corrupt(e)),
        };
        let Some(value) = meta.get(key).map_err(corrupt)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| corrupt(format!("{key}: {e}")))
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(corrupt)?;
        let meta = txn.open_table(META).map_err(corrupt)?;
        let pb = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(key).map_err(corrupt)?.map(|v| v.value().to_vec()))
        };
        if let Some(bytes) = pb(HARD_STATE)? {
            self.hard = HardState::parse_from_bytes(&bytes)
                .map_err(|e| corrupt(format!("hard state: {e}")))?;
        }
        if let Some(bytes) = pb(CONF_STATE)? {
            self.conf = ConfState::parse_from_bytes(&bytes)
                .map_err(|e| corrupt(format!("conf state: {e}")))?;
        }
        if let Some(bytes) = pb(SNAPSHOT_POINT)? {
            let point: (u64, u64) = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(format!("snapshot point: {e}")))?;
            (self.snap_index, self.snap_term) = point;
        }
        self.sm = StateMachine::load(self.db.clone(), &meta)?;
        if let Some(bytes) = pb(PEERS)? {
            self.peers =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("peers: {e}")))?;
        }
        let entries = txn.open_table(ENTRIES).map_err(corrupt)?;
        let mut expected = self.snap_index + 1;
        for row in entries.range(expected..).map_err(corrupt)? {
            let (index, bytes) = row.map_err(corrupt)?;
            let entry = Entry::parse_from_bytes(bytes.value())
                .map_err(|e| corrupt(format!("entry {}: {e}", index.value())))?;
            if entry.index != expected || index.value() != expected {
                return Err(corrupt(format!(
                    "log has a gap: expected entry {expected}, found {}",
                    index.value()
                )));
            }
            expected += 1;
            self.entries.push_back(entry);
        }
        if self.sm.applied() < self.snap_index {
            return Err(corrupt(format!(
                "applied state ({}) is behind the snapshot point ({})",
                self.sm.applied(),
                self.snap_index
            )));
        }
        Ok(())
    }

    /// Disaster recovery: makes this node the only voter, keeping its log and state. For when a
    /// majority is gone for good and will not come back (see docs/cluster.md); the others must
    /// never be restarted with their old data dirs afterwards.
    /// Disaster recovery: replaces the membership with `voters` and `learners`, keeping the log
    /// and the state machine, and forgets the addresses of everyone else (their raft messages are
    /// refused from now on). Every survivor of a forced new cluster is given the same sets.
    pub fn force_conf(&mut self, voters: &[u64], learners: &[u64]) -> Result<(), StoreError> {
        self.conf = ConfState::from((voters.to_vec(), learners.to_vec()));
        let mut batch = Batch {
            conf: true,
            ..Batch::default()
        };
        let gone: Vec<u64> = self
            .peers
            .keys()
            .filter(|id| !voters.contains(id) && !learners.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.remove_peer(&mut batch, id);
        }
        self.commit(&mut batch, true)
    }

    /// Whether `id` is a voter or a learner of the stored membership.
    pub fn is_member(&self, id: u64) -> bool {
        self.conf.voters.contains(&id) || self.conf.learners.contains(&id)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    pub fn is_initialized(&self) -> bool {
        !self.conf.voters.is_empty() || !self.conf.learners.is_empty()
    }

    fn last(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    /// Appends entries from a Ready, replacing any conflicting suffix.
    pub fn append(&mut self, batch: &mut Batch, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let keep = first.index.saturating_sub(self.snap_index + 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
        batch.entries.extend(entries.iter().cloned());
    }

    pub fn set_hard_state(&mut self, batch: &mut Batch, hard: HardState) {
        self.hard = hard.clone();
        batch.hard = Some(hard);
    }

    pub fn set_commit(&mut self, batch: &mut Batch, commit: u64) {
        self.hard.commit = commit;
        batch.hard = Some(self.hard.clone());
    }

    pub fn set_conf_state(&mut self, batch: &mut Batch, conf: ConfState) {
        self.conf = conf;
        batch.conf = true;
    }

    /// Persists the applied state with the next commit. The state is written with compactions and
    /// snapshots and at shutdown, not on every apply (that would cost O(jobs) per write): after a
    /// crash, raft re-delivers the committed entries after the persisted applied index.
    pub fn persist_state(&mut self, batch: &mut Batch) {
        self.sm.persist(&mut batch.sm);
    }

    pub fn set_peer(&mut self, batch: &mut Batch, id: u64, info: PeerInfo) {
        if self.peers.get(&id) != Some(&info) {
            self.peers.insert(id, info);
            batch.peers = true;
        }
    }

    pub fn remove_peer(&mut self, batch: &mut Batch, id: u64) {
        if self.peers.remove(&id).is_some() {
            batch.peers = true;
        }
    }

    /// Installs a snapshot from the leader: the state machine and membership are replaced, the log
    /// is emptied and starts after the snapshot.
    pub fn apply_snapshot(
        &mut self,
        batch: &mut Batch,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        self.sm
            .install(&mut batch.sm, snapshot.get_data(), meta.index)?;
        self.conf = meta.get_conf_state().clone();
        self.snap_index = meta.index;
        self.snap_term = meta.term;
        self.entries.clear();
        self.hard.commit = self.hard.commit.max(meta.index);
        self.hard.term = self.hard.term.max(meta.term);
        batch.hard = Some(self.hard.clone());
        batch.conf = true;
        batch.snapshot = true;
        batch.compact_to = Some(u64::MAX);
        Ok(())
    }

    /// Folds the log up to `index` (applied) into the snapshot point.
    pub fn compact(&mut self, batch: &mut Batch, index: u64) {
        if index <= self.snap_index || index > self.sm.applied() || index > self.last() {
            return;
        }
        let term = self.entries[(index - self.snap_index - 1) as usize].term;
        let drop = (index - self.snap_index) as usize;
        self.entries.drain(..drop);
        self.snap_index = index;
        self.snap_term = term;
        batch.snapshot = true;
        self.sm.persist(&mut batch.sm);
        batch.compact_to = Some(index);
    }

    pub fn log_len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Writes a batch in one redb transaction; `durable` commits with fsync.
    pub fn commit(&mut self, batch: &mut Batch, durable: bool) -> Result<(), StoreError> {
        let batch = std::mem::take(batch);
        // A Ready with only messages to send (heartbeats) has nothing to persist: no transaction,
        // no fsync.
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(write_err)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        self.sm.write(&txn, META, &batch.sm)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(write_err)?;
            if let Some(to) = batch.compact_to {
                entries.retain_in(..=to, |_, _| false).map_err(write_err)?;
            }
            // Entries from the first new one on are replaced (a new leader's log wins a conflict).
            if let Some(first) = batch.entries.first() {
                entries
                    .retain_in(first.index.., |_, _| false)
                    .map_err(write_err)?;
            }
            for e in &batch.entries {
                let bytes = e.write_to_bytes().map_err(write_err)?;
                entries
                    .insert(e.index, bytes.as_slice())
                    .map_err(write_err)?;
            }
            let mut meta = txn.open_table(META).map_err(write_err)?;
            if let Some(hard) = &batch.hard {
                meta.insert(
                    HARD_STATE,
                    hard.write_to_bytes().map_err(write_err)?.as_slice(),
                )
                .map_err(write_err)?;
            }
            if batch.conf {
                meta.insert(
                    CONF_STATE,
                    self.conf.write_to_bytes().map_err(write_err)?.as_slice(),
                )
                .map_err(write_err)?;
            }
            if batch.snapshot {
                meta.insert(
                    SNAPSHOT_POINT,
                    serde_json::to_vec(&(self.snap_index, self.snap_term))
                        .map_err(write_err)?
                        .as_slice(),
                )
                .map_err(write_err)?;
            }
            if batch.peers {
                meta.insert(
                    PEERS,
                    serde_json::to_vec(&self.peers)
                        .map_err(write_err)?
                        .as_slice(),
                )
                .map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)
    }
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard.clone(),
            conf_state: self.conf.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for i in low..high {
            let e = &self.entries[(i - self.snap_index - 1) as usize];
            size += u64::from(e.compute_size());
            // At least one entry, whatever its size.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((idx - self.snap_index - 1) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// A snapshot of the applied state machine (never older than `request_index`).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = self.sm.applied();
        if applied < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        // The state only: the follower copies the history in pages after installing it.
        let data = self
            .sm
            .snapshot_data()
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        let mut meta = SnapshotMetadata::default();
        meta.index = applied;
        meta.term = self.term(applied)?;
        meta.set_conf_state(self.conf.clone());
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta);
        snapshot.set_data(data.into());
        Ok(snapshot)
    }
}
