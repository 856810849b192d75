//! The history tables: ended drill runs and the summaries of jobs that left the state, in redb
//! tables of their own beside the Raft log (see `rehearse_core::history`). The applied state
//! persisted at each compaction does not carry them, so it stays the size of what is live; nor
//! does a snapshot sent to a follower: the follower empties its tables on installing one and then
//! copies them from a peer in pages ([`Copying`], the `Peer.History` call), so a snapshot stays
//! the size of the state however long the history grows.
//!
//! Why the copy converges although the peer keeps applying while pages travel: a page is read at
//! the peer's applied index `j` and written only while the copying node's applied index is `<= j`
//! (otherwise it is asked again). Every history write after the copier's index is then applied by
//! the copier itself: those up to `j` again (a write is an insert by key or a prune by range, so a
//! repeat changes nothing), those after `j` for the first time. No entry's effect is lost, and none
//! is undone by an older page. The state machine never reads these tables (what it decides on,
//! such as a drill's last passed run, lives in the state), so a node still copying decides alike.

use redb::{Database, ReadableTable, TableDefinition, TableError, WriteTransaction};
use rehearse_core::drill::Run;
use rehearse_core::history::{HistoryOp, JobSummary, drill_range, run_key};
use serde::{Deserialize, Serialize};

use crate::storage::StoreError;

/// Ended runs by `run_key` (drill, tick, manual).
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("history_runs");
/// Forgotten jobs' summaries by job id.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("history_jobs");
/// The evidence chain's records by `evidence::key` (sequence number).
const EVIDENCE: TableDefinition<&str, &[u8]> = TableDefinition::new("history_evidence");

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

fn read_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("history: {e}"))
}

/// The whole history, as a snapshot from a release before the copy in pages carries it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub runs: Vec<Run>,
    #[serde(default)]
    pub jobs: Vec<JobSummary>,
}

/// The history tables, as the `Peer.History` call numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Table {
    Runs,
    Jobs,
    Evidence,
}

impl Table {
    pub fn from_wire(n: u32) -> Option<Table> {
        match n {
            0 => Some(Table::Runs),
            1 => Some(Table::Jobs),
            2 => Some(Table::Evidence),
            _ => None,
        }
    }

    pub fn wire(self) -> u32 {
        match self {
            Table::Runs => 0,
            Table::Jobs => 1,
            Table::Evidence => 2,
        }
    }

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Runs => RUNS,
            Table::Jobs => JOBS,
            Table::Evidence => EVIDENCE,
        }
    }
}

/// Where a node that installed a snapshot stands in copying the history from a peer (persisted,
/// so a restart resumes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copying {
    pub table: Table,
    /// The last key copied in `table` (None: from its first).
    pub after: Option<String>,
}

impl Copying {
    pub fn start() -> Copying {
        Copying {
            table: Table::Runs,
            after: None,
        }
    }

    /// Where the copy stands after a page: `None` once the last table is done. The evidence
    /// table is copied only when the installed state has a chain (`evidence`): a cluster
    /// before command version 7 has none, and its older members do not know the table.
    pub fn next(&self, last_key: Option<&str>, done: bool, evidence: bool) -> Option<Copying> {
        match (done, self.table) {
            (false, table) => Some(Copying {
                table,
                after: last_key.map(str::to_owned).or_else(|| self.after.clone()),
            }),
            (true, Table::Runs) => Some(Copying {
                table: Table::Jobs,
                after: None,
            }),
            (true, Table::Jobs) if evidence => Some(Copying {
                table: Table::Evidence,
                after: None,
            }),
            (true, Table::Jobs | Table::Evidence) => None,
        }
    }
}

/// One record as it is stored: its key and its JSON bytes.
pub type Record = (String, Vec<u8>);

/// A page of a history table as a peer read it.
#[derive(Debug)]
pub struct Page {
    /// The peer's applied index when it read the page.
    pub applied: u64,
    pub records: Vec<Record>,
    /// The table has no records after these.
    pub done: bool,
}

/// Up to `limit` records of `table` after `after`, and whether they reach the table's end.
pub fn page(
    db: &Database,
    table: Table,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Record>, bool), StoreError> {
    let txn = db.begin_read().map_err(read_err)?;
    let t = match txn.open_table(table.def()) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), true)),
        Err(e) => return Err(read_err(e)),
    };
    let range = match after {
        Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        None => t.range::<&str>(..),
    }
    .map_err(read_err)?;
    let mut out = Vec::new();
    for item in range {
        if out.len() == limit.max(1) {
            return Ok((out, false));
        }
        let (k, v) = item.map_err(read_err)?;
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok((out, true))
}

/// Writes a copied page as it came (the peer's bytes, checked to be records of that table).
pub fn write_page(
    txn: &WriteTransaction,
    table: Table,
    records: &[Record],
) -> Result<(), StoreError> {
    let mut t = txn.open_table(table.def()).map_err(write_err)?;
    for (key, value) in records {
        let readable = match table {
            Table::Runs => serde_json::from_slice::<Run>(value).is_ok(),
            Table::Jobs => serde_json::from_slice::<JobSummary>(value).is_ok(),
            Table::Evidence => {
                serde_json::from_slice::<rehearse_core::evidence::Record>(value).is_ok()
            }
        };
        if !readable {
            return Err(StoreError::Corrupt(format!(
                "history copied from a peer: record {key:?} is not a {table:?} record"
            )));
        }
        t.insert(key.as_str(), value.as_slice())
            .map_err(write_err)?;
    }
    Ok(())
}

/// Empties the tables (a snapshot was installed; the copy starts from nothing).
pub fn clear(txn: &WriteTransaction) -> Result<(), StoreError> {
    for table in [RUNS, JOBS, EVIDENCE] {
        txn.delete_table(table).map_err(write_err)?;
    }
    Ok(())
}

/// Applies history writes inside the batch's transaction.
pub fn write(txn: &WriteTransaction, ops: &[HistoryOp]) -> Result<(), StoreError> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut runs = txn.open_table(RUNS).map_err(write_err)?;
    let mut jobs = txn.open_table(JOBS).map_err(write_err)?;
    let mut evidence = None;
    for op in ops {
        match op {
            HistoryOp::Run(run) => {
                let bytes = serde_json::to_vec(run).map_err(write_err)?;
                runs.insert(
                    run_key(&run.drill, run.tick_ms, run.manual).as_str(),
                    bytes.as_slice(),
                )
                .map_err(write_err)?;
            }
            HistoryOp::Job(summary) => {
                let bytes = serde_json::to_vec(summary).map_err(write_err)?;
                jobs.insert(summary.id.as_str(), bytes.as_slice())
                    .map_err(write_err)?;
            }
            HistoryOp::Prune {
                drill,
                before_tick_ms,
            } => {
                let (start, _) = drill_range(drill);
                let end = run_key(drill, *before_tick_ms, false);
                runs.retain_in(start.as_str()..end.as_str(), |_, _| false)
                    .map_err(write_err)?;
            }
            HistoryOp::Evidence(record) => {
                if evidence.is_none() {
                    evidence = Some(txn.open_table(EVIDENCE).map_err(write_err)?);
                }
                let bytes = serde_json::to_vec(record).map_err(write_err)?;
                if let Some(t) = evidence.as_mut() {
                    t.insert(
                        rehearse_core::evidence::key(record.seq).as_str(),
                        bytes.as_slice(),
                    )
                    .map_err(write_err)?;
                }
            }
        }
    }
    Ok(())
}

/// The evidence chain's records in order, from the first (`evidence export` checks and selects
/// from them; see `rehearse_core::evidence`).
pub fn evidence(db: &Database) -> Result<Vec<rehearse_core::evidence::Record>, StoreError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = match txn.open_table(EVIDENCE) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut out = Vec::new();
    for item in table.iter().map_err(read_err)? {
        let (key, value) = item.map_err(read_err)?;
        out.push(
            serde_json::from_slice(value.value()).map_err(|e| {
                StoreError::Corrupt(format!("evidence record {}: {e}", key.value()))
            })?,
        );
    }
    Ok(out)
}

/// Replaces the whole history (a snapshot from the leader).
pub fn replace(txn: &WriteTransaction, history: &History) -> Result<(), StoreError> {
    {
        let mut runs = txn.open_table(RUNS).map_err(write_err)?;
        runs.retain(|_, _| false).map_err(write_err)?;
        let mut jobs = txn.open_table(JOBS).map_err(write_err)?;
        jobs.retain(|_, _| false).map_err(write_err)?;
    }
    let ops: Vec<HistoryOp> = history
        .runs
        .iter()
        .cloned()
        .map(HistoryOp::Run)
        .chain(history.jobs.iter().cloned().map(HistoryOp::Job))
        .collect();
    write(txn, &ops)
}

/// A drill's ended runs, oldest first.
pub fn runs_of(db: &Database, drill: &str) -> Result<Vec<Run>, StoreError> {
    Ok(runs_of_many(db, &[drill])?.pop().unwrap_or_default())
}

/// Each drill's ended runs, oldest first, read in one transaction (a listing of every drill
/// opens one, not one per drill).
pub fn runs_of_many(db: &Database, drills: &[&str]) -> Result<Vec<Vec<Run>>, StoreError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = match txn.open_table(RUNS) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(vec![Vec::new(); drills.len()]),
        Err(e) => return Err(read_err(e)),
    };
    let mut all = Vec::with_capacity(drills.len());
    for drill in drills {
        let (start, end) = drill_range(drill);
        let mut out = Vec::new();
        for item in table
            .range(start.as_str()..end.as_str())
            .map_err(read_err)?
        {
            let (_, value) = item.map_err(read_err)?;
            out.push(serde_json::from_slice(value.value()).map_err(read_err)?);
        }
        all.push(out);
    }
    Ok(all)
}

/// Names of the drills with history.
pub fn drills(db: &Database) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = match txn.open_table(RUNS) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut names: Vec<String> = Vec::new();
    for item in table.iter().map_err(read_err)? {
        let (key, _) = item.map_err(read_err)?;
        let name = key
            .value()
            .split('\u{0}')
            .next()
            .unwrap_or_default()
            .to_owned();
        if names.last() != Some(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// What stays of a job that left the state.
pub fn job(db: &Database, id: &str) -> Result<Option<JobSummary>, StoreError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = match txn.open_table(JOBS) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    match table.get(id).map_err(read_err)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(read_err)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;
    use rehearse_core::drill::RunOutcome;

    use crate::storage::{Batch, Identity, RaftStore};

    use super::*;

    fn run(drill: &str, tick_ms: i64) -> Run {
        Run {
            exercise: None,
            drill: drill.into(),
            tick_ms,
            manual: false,
            created_at_ms: 0,
            start_ms: 0,
            finished_at_ms: Some(1),
            outcome: RunOutcome::Passed,
            reason: None,
            version: "v".into(),
            jobs: vec![format!("{drill}-{tick_ms}")],
            results: Vec::new(),
            missed: None,
            archived: true,
        }
    }

    fn store(dir: &std::path::Path, id: u64) -> RaftStore {
        let identity = Identity {
            cluster: "t".into(),
            id,
        };
        RaftStore::open(dir, &identity, Some(&[1])).expect("store")
    }

    #[test]
    fn history_is_written_pruned_and_copied_after_a_snapshot() {
        let dir = tempfile::tempdir().expect("dir");
        let mut leader = store(&dir.path().join("a"), 1);
        let mut batch = Batch::default();
        batch.sm.history = vec![
            HistoryOp::Run(run("shop", 10)),
            HistoryOp::Run(run("shop", 20)),
            HistoryOp::Run(run("shop2", 5)),
            HistoryOp::Run(run("shop", 20)),
            HistoryOp::Prune {
                drill: "shop".into(),
                before_tick_ms: 15,
            },
            HistoryOp::Job(JobSummary {
                id: "j1".into(),
                state: rehearse_core::jobs::JobState::Passed,
                verdict: None,
                submitted_at_ms: 0,
                finished_at_ms: 1,
                forgotten_at_ms: 2,
                artifact_url: "file:///x".into(),
                attempts: Vec::new(),
                reason: None,
                drill: None,
            }),
        ];
        leader.commit(&mut batch, true).expect("commit");
        let ticks: Vec<i64> = leader
            .sm
            .history_runs("shop")
            .expect("runs")
            .iter()
            .map(|r| r.tick_ms)
            .collect();
        assert_eq!(
            ticks,
            [20],
            "written once per key, pruned before 15, other drills apart"
        );
        assert_eq!(
            leader.sm.history_drills().expect("drills"),
            ["shop", "shop2"]
        );

        let snapshot = leader.snapshot(0, 2).expect("snapshot");
        let follower_dir = dir.path().join("b");
        let mut follower = store(&follower_dir, 2);
        let mut batch = Batch::default();
        batch.sm.history = vec![HistoryOp::Run(run("stale", 1))];
        follower.commit(&mut batch, true).expect("commit");
        let mut batch = Batch::default();
        follower
            .apply_snapshot(&mut batch, &snapshot)
            .expect("install");
        follower.commit(&mut batch, true).expect("commit");
        assert!(
            follower.sm.history_drills().expect("drills").is_empty(),
            "the snapshot carries the state only, and the old history is emptied"
        );
        assert_eq!(follower.sm.history_copy, Some(Copying::start()));

        // Copy page by page (one record each), restarting half way: the copy resumes.
        let mut pages = 0;
        while let Some(copying) = follower.sm.history_copy.clone() {
            let (records, done) = leader
                .sm
                .history_page(copying.table, copying.after.as_deref(), 1)
                .expect("page");
            let mut batch = Batch::default();
            follower
                .sm
                .copy_history_page(&mut batch.sm, copying.table, records, done);
            follower.commit(&mut batch, true).expect("commit");
            pages += 1;
            if pages == 2 {
                drop(follower);
                follower = store(&follower_dir, 2);
                assert!(
                    follower.sm.history_copy.is_some(),
                    "the copy's cursor persisted"
                );
            }
        }
        assert_eq!(
            pages, 3,
            "one record a page, the last page of a table says so"
        );
        assert_eq!(
            follower.sm.history_runs("shop").expect("runs"),
            leader.sm.history_runs("shop").expect("runs")
        );
        assert_eq!(
            follower.sm.history_drills().expect("drills"),
            ["shop", "shop2"],
            "replaced, not merged"
        );
        assert_eq!(
            follower.sm.forgotten_job("j1").expect("job").map(|s| s.id),
            Some("j1".to_owned()),
            "the jobs table is copied after the runs"
        );
        drop(follower);
        assert_eq!(
            store(&follower_dir, 2).sm.history_copy,
            None,
            "done, and it stays done"
        );
    }

    #[test]
    fn a_page_that_is_not_history_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = store(dir.path(), 1);
        s.sm.history_copy = Some(Copying::start());
        let mut batch = Batch::default();
        s.sm.copy_history_page(
            &mut batch.sm,
            Table::Runs,
            vec![("k".into(), b"{\"not\": \"a run\"}".to_vec())],
            true,
        );
        let err = s.commit(&mut batch, true).expect_err("refused");
        assert!(err.to_string().contains("is not a Runs record"), "{err}");
    }
}
