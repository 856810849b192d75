//! The history tables: ended drill runs and the summaries of jobs that left the state, in redb
//! tables of their own beside the Raft log (see `rehearse_core::history`). The applied state
//! persisted at each compaction no longer carries them, so it stays the size of what is live; a
//! snapshot sent to a follower carries them (a follower must have the whole history).

use redb::{Database, ReadableTable, TableDefinition, TableError, WriteTransaction};
use rehearse_core::drill::Run;
use rehearse_core::history::{HistoryOp, JobSummary, drill_range, run_key};
use serde::{Deserialize, Serialize};

use crate::storage::StoreError;

/// Ended runs by `run_key` (drill, tick, manual).
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("history_runs");
/// Forgotten jobs' summaries by job id.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("history_jobs");

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

fn read_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("history: {e}"))
}

/// The whole history, as a snapshot carries it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub runs: Vec<Run>,
    #[serde(default)]
    pub jobs: Vec<JobSummary>,
}

/// Applies history writes inside the batch's transaction.
pub fn write(txn: &WriteTransaction, ops: &[HistoryOp]) -> Result<(), StoreError> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut runs = txn.open_table(RUNS).map_err(write_err)?;
    let mut jobs = txn.open_table(JOBS).map_err(write_err)?;
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
        }
    }
    Ok(())
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
    let txn = db.begin_read().map_err(read_err)?;
    let table = match txn.open_table(RUNS) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let (start, end) = drill_range(drill);
    let mut out = Vec::new();
    for item in table
        .range(start.as_str()..end.as_str())
        .map_err(read_err)?
    {
        let (_, value) = item.map_err(read_err)?;
        out.push(serde_json::from_slice(value.value()).map_err(read_err)?);
    }
    Ok(out)
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

/// Everything, for a snapshot.
pub fn all(db: &Database) -> Result<History, StoreError> {
    let txn = db.begin_read().map_err(read_err)?;
    let mut history = History::default();
    match txn.open_table(RUNS) {
        Ok(t) => {
            for item in t.iter().map_err(read_err)? {
                let (_, v) = item.map_err(read_err)?;
                history
                    .runs
                    .push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(read_err(e)),
    }
    match txn.open_table(JOBS) {
        Ok(t) => {
            for item in t.iter().map_err(read_err)? {
                let (_, v) = item.map_err(read_err)?;
                history
                    .jobs
                    .push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(read_err(e)),
    }
    Ok(history)
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
    fn history_is_written_pruned_and_carried_by_a_snapshot() {
        let dir = tempfile::tempdir().expect("dir");
        let mut leader = store(&dir.path().join("a"), 1);
        let mut batch = Batch::default();
        batch.history = vec![
            HistoryOp::Run(run("shop", 10)),
            HistoryOp::Run(run("shop", 20)),
            HistoryOp::Run(run("shop2", 5)),
            HistoryOp::Run(run("shop", 20)),
            HistoryOp::Prune {
                drill: "shop".into(),
                before_tick_ms: 15,
            },
        ];
        leader.commit(&mut batch, true).expect("commit");
        let ticks: Vec<i64> = leader
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
        assert_eq!(leader.history_drills().expect("drills"), ["shop", "shop2"]);

        let snapshot = leader.snapshot(0, 2).expect("snapshot");
        let mut follower = store(&dir.path().join("b"), 2);
        let mut batch = Batch::default();
        batch.history = vec![HistoryOp::Run(run("stale", 1))];
        follower
            .apply_snapshot(&mut batch, &snapshot)
            .expect("install");
        follower.commit(&mut batch, true).expect("commit");
        assert_eq!(
            follower.history_runs("shop").expect("runs"),
            leader.history_runs("shop").expect("runs")
        );
        assert_eq!(
            follower.history_drills().expect("drills"),
            ["shop", "shop2"],
            "replaced, not merged"
        );
    }
}
