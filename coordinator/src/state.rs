//! The state machine's side of storage: the applied [`JobStore`] and the history tables beside
//! it, apart from the Raft log ([`crate::storage::RaftStore`] owns the log and hands this side
//! its part of each Ready's writes; one redb transaction holds both, so a crash never separates
//! an entry from its effects).
//!
//! The applied state is persisted with each compaction and at shutdown (not on every apply: after
//! a crash, raft re-delivers the committed entries after the persisted applied index); history
//! writes go with the Ready that made them. A snapshot is the state alone; installing one empties
//! the history tables and starts the copy from a peer (`crate::history`, `crate::copier`).

use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use rehearse_core::history::HistoryOp;
use rehearse_core::jobs::JobStore;
use serde::{Deserialize, Serialize};

use crate::history::{Copying, History, Record, Table};
use crate::storage::StoreError;

/// The applied state, in the meta table.
const STATE: &str = "state";
/// Where copying the history from a peer stands, after a snapshot (absent: nothing to copy).
const HISTORY_COPY: &str = "history_copy";

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A snapshot's data: the state's own fields, and a mark that the history travels apart (the
/// follower copies it in pages after installing the state; see `crate::history`).
#[derive(Serialize)]
struct SnapshotOut<'a> {
    #[serde(flatten)]
    state: &'a JobStore,
    history_apart: bool,
}

#[derive(Deserialize)]
struct SnapshotIn {
    #[serde(flatten)]
    state: JobStore,
    /// The whole history inline, as releases before the copy in pages sent it.
    #[serde(default)]
    history: History,
    #[serde(default)]
    history_apart: bool,
}

/// The state machine's part of one Ready's writes.
#[derive(Default)]
pub struct StateWrites {
    /// History writes of the commands applied in this Ready.
    pub history: Vec<HistoryOp>,
    /// Persist the applied state.
    persist: bool,
    /// A snapshot's whole history, replacing ours (from a leader of an older release).
    replace_history: Option<History>,
    /// Empty the history tables (a snapshot came; the history is copied after it).
    clear_history: bool,
    /// A page of history copied from a peer.
    page: Option<(Table, Vec<Record>)>,
    /// Persist `history_copy`.
    copy: bool,
}

impl StateWrites {
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
            && !self.persist
            && self.replace_history.is_none()
            && !self.clear_history
            && self.page.is_none()
            && !self.copy
    }
}

/// The applied state and its history.
pub struct StateMachine {
    db: Arc<Database>,
    pub jobs: JobStore,
    /// Set from installing a snapshot until the history is copied from a peer.
    pub history_copy: Option<Copying>,
}

impl StateMachine {
    /// The state as persisted in `meta` (an empty one in a new data dir).
    pub fn load(
        db: Arc<Database>,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<StateMachine, StoreError> {
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(key).map_err(corrupt)?.map(|v| v.value().to_vec()))
        };
        let jobs = match get(STATE)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("state: {e}")))?
            }
            None => JobStore::default(),
        };
        let history_copy = match get(HISTORY_COPY)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("history copy: {e}")))?
            }
            None => None,
        };
        Ok(StateMachine {
            db,
            jobs,
            history_copy,
        })
    }

    /// A state machine for a new data dir.
    pub fn empty(db: Arc<Database>) -> StateMachine {
        StateMachine {
            db,
            jobs: JobStore::default(),
            history_copy: None,
        }
    }

    pub fn applied(&self) -> u64 {
        self.jobs.applied()
    }

    /// The database the history tables live in (read off the raft thread, e.g. evidence).
    pub fn db(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Persists the applied state with the next commit.
    pub fn persist(&self, writes: &mut StateWrites) {
        writes.persist = true;
    }

    /// A drill's ended runs from the history table, oldest first.
    pub fn history_runs(&self, drill: &str) -> Result<Vec<rehearse_core::drill::Run>, StoreError> {
        crate::history::runs_of(&self.db, drill)
    }

    /// Each drill's ended runs from the history table, in one read.
    pub fn history_runs_many(
        &self,
        drills: &[&str],
    ) -> Result<Vec<Vec<rehearse_core::drill::Run>>, StoreError> {
        crate::history::runs_of_many(&self.db, drills)
    }

    /// Drills that have history.
    pub fn history_drills(&self) -> Result<Vec<String>, StoreError> {
        crate::history::drills(&self.db)
    }

    /// The summary of a job that left the state.
    pub fn forgotten_job(
        &self,
        id: &str,
    ) -> Result<Option<rehearse_core::history::JobSummary>, StoreError> {
        crate::history::job(&self.db, id)
    }

    /// A page of a history table, for a peer that copies it.
    pub fn history_page(
        &self,
        table: Table,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Record>, bool), StoreError> {
        crate::history::page(&self.db, table, after, limit)
    }

    /// Writes a page copied from a peer and moves the copy on (`done`: the table's last page).
    pub fn copy_history_page(
        &mut self,
        writes: &mut StateWrites,
        table: Table,
        records: Vec<Record>,
        done: bool,
    ) {
        let Some(copying) = &self.history_copy else {
            return;
        };
        if copying.table != table {
            return;
        }
        let evidence = self.jobs.evidence_head().is_some();
        self.history_copy = copying.next(records.last().map(|(k, _)| k.as_str()), done, evidence);
        writes.copy = true;
        writes.page = Some((table, records));
    }

    /// The snapshot's data: the state only.
    pub fn snapshot_data(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&SnapshotOut {
            state: &self.jobs,
            history_apart: true,
        })
    }

    /// Installs a snapshot's state (at `index`); its history is copied after it, or — from a
    /// leader of an older release — replaces ours as it came.
    pub fn install(
        &mut self,
        writes: &mut StateWrites,
        data: &[u8],
        index: u64,
    ) -> Result<(), StoreError> {
        let data: SnapshotIn = serde_json::from_slice(data)
            .map_err(|e| corrupt(format!("snapshot from leader: {e}")))?;
        self.jobs = data.state;
        self.jobs.skip(index);
        writes.history.clear();
        writes.page = None;
        if data.history_apart {
            writes.replace_history = None;
            writes.clear_history = true;
            self.history_copy = Some(Copying::start());
        } else {
            writes.replace_history = Some(data.history);
            self.history_copy = None;
        }
        writes.copy = true;
        writes.persist = true;
        Ok(())
    }

    /// The state machine's writes, inside the Ready's transaction.
    pub fn write(
        &self,
        txn: &WriteTransaction,
        meta: TableDefinition<&str, &[u8]>,
        writes: &StateWrites,
    ) -> Result<(), StoreError> {
        if writes.clear_history {
            crate::history::clear(txn)?;
        }
        if let Some(history) = &writes.replace_history {
            crate::history::replace(txn, history)?;
        }
        if let Some((table, records)) = &writes.page {
            crate::history::write_page(txn, *table, records)?;
        }
        crate::history::write(txn, &writes.history)?;
        if !writes.persist && !writes.copy {
            return Ok(());
        }
        let mut meta = txn.open_table(meta).map_err(write_err)?;
        if writes.persist {
            meta.insert(
                STATE,
                serde_json::to_vec(&self.jobs)
                    .map_err(write_err)?
                    .as_slice(),
            )
            .map_err(write_err)?;
        }
        if writes.copy {
            match &self.history_copy {
                Some(copying) => {
                    meta.insert(
                        HISTORY_COPY,
                        serde_json::to_vec(copying).map_err(write_err)?.as_slice(),
                    )
                    .map_err(write_err)?;
                }
                None => {
                    meta.remove(HISTORY_COPY).map_err(write_err)?;
                }
            }
        }
        Ok(())
    }
}
