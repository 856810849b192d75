//! The coordinator's replicated state machine: jobs and their lifecycle.
//!
//! Deterministic and pure: [`JobStore::apply`] takes a log index and a [`Command`] and changes the
//! state; every replica applying the same log reaches the same state. The coordinator only
//! drives it (persists, replicates, snapshots). Commands carry everything they need — ids and
//! timestamps are chosen by the proposer, never read from a clock here.
//!
//! States: `pending` → `assigned` → `running` → `passed` | `failed`, and `cancelled` from any
//! non-final state. Workers, attempts, leases and fencing are in [`crate::fleet`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::plan::RawPlan;
use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Assigned,
    Running,
    Passed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Passed | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "pending" => JobState::Pending,
            "assigned" => JobState::Assigned,
            "running" => JobState::Running,
            "passed" => JobState::Passed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

/// One delivery of a job to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub worker: String,
    pub region: Option<String>,
    /// Fencing token: the log index of the grant.
    pub token: u64,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Stable and unique; chosen by the node that proposed the submit.
    pub id: String,
    /// The plan as submitted (validated before it was proposed).
    pub plan: RawPlan,
    pub state: JobState,
    pub attempts: Vec<Attempt>,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    /// The log index that created the job (orders jobs by submission).
    pub created_index: u64,
    /// The phase the running attempt last reported.
    #[serde(default)]
    pub phase: Option<String>,
    /// Why a job ended without a report (lost on every attempt, no word past its timeout).
    #[serde(default)]
    pub reason: Option<String>,
    pub report: Option<Report>,
}

/// A job as the proposer hands it to the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    pub id: String,
    pub plan: RawPlan,
    pub at_ms: u64,
}

/// Every change to the state is one of these, in one log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Many submits share one entry (one fsync): this is where throughput comes from.
    Submit(Vec<NewJob>),
    Cancel {
        id: String,
        at_ms: u64,
    },
    /// Marks the proposer's leadership in the log; changes nothing.
    Noop,
    /// A worker joins, or rejoins after a restart (ready again, with these facts).
    RegisterWorker(crate::fleet::WorkerSpec),
    Heartbeat {
        name: String,
        at_ms: u64,
    },
    /// Stop giving the worker new jobs; running ones finish.
    Drain {
        name: String,
    },
    /// The leader's placement: each job to a worker. The entry's index is the fencing token.
    Assign {
        assignments: Vec<(String, String)>,
        at_ms: u64,
    },
    /// A worker says which phase an attempt is in.
    Progress {
        job: String,
        token: u64,
        phase: String,
        at_ms: u64,
    },
    /// A worker's verdict for an attempt; accepted only with the attempt's current token.
    Report {
        job: String,
        token: u64,
        report: Box<Report>,
        at_ms: u64,
    },
    /// Workers silent for longer than the lease are lost; their attempts are re-queued.
    ExpireWorkers {
        now_ms: u64,
        lease_ms: u64,
    },
    /// Fleet messages gathered during one turn of the leader's loop (heartbeats, progress,
    /// verdicts, registrations), applied in order: one entry, one fsync. Never an `Assign`.
    Batch(Vec<Command>),
}

/// What applying a command did, per item, for the waiting clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Submitted(Vec<Result<String, String>>),
    Cancelled(Result<(), String>),
    /// Register, heartbeat, drain, progress, report: done, or why not.
    Done(Result<(), String>),
    /// Per assignment: the fencing token, or why it was not made.
    Assigned(Vec<Result<u64, String>>),
    /// Jobs put back to pending (or failed for good) because their worker was lost.
    Expired(Vec<String>),
    /// Per command of a batch.
    Batch(Vec<Outcome>),
    Nothing,
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoreData")]
pub struct JobStore {
    pub(crate) jobs: BTreeMap<String, Job>,
    /// Registered workers, by name.
    #[serde(default)]
    pub(crate) workers: BTreeMap<String, crate::fleet::Worker>,
    /// The last log index applied: replicas agree on the state at the same index.
    applied: u64,
    /// The pending jobs in submission order, (created index, id): the scheduler's queue. Derived
    /// from `jobs` (kept in step by [`JobStore::sync_pending`]; rebuilt when read back).
    #[serde(skip)]
    pub(crate) pending: BTreeSet<(u64, String)>,
}

/// [`JobStore`] as stored; the queue is rebuilt from it.
#[derive(Deserialize)]
struct StoreData {
    jobs: BTreeMap<String, Job>,
    #[serde(default)]
    workers: BTreeMap<String, crate::fleet::Worker>,
    applied: u64,
}

impl From<StoreData> for JobStore {
    fn from(d: StoreData) -> JobStore {
        let pending = d
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending)
            .map(|j| (j.created_index, j.id.clone()))
            .collect();
        JobStore {
            jobs: d.jobs,
            workers: d.workers,
            applied: d.applied,
            pending,
        }
    }
}

impl JobStore {
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn get(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Pending jobs, oldest first (the scheduler's queue), without scanning the others.
    pub fn pending(&self) -> impl Iterator<Item = &Job> {
        self.pending.iter().filter_map(|(_, id)| self.jobs.get(id))
    }

    /// Puts the job in the pending queue or takes it out, after its state changed.
    pub(crate) fn sync_pending(&mut self, id: &str) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        let key = (job.created_index, job.id.clone());
        if job.state == JobState::Pending {
            self.pending.insert(key);
        } else {
            self.pending.remove(&key);
        }
    }

    /// Jobs in submission order, optionally of one state.
    pub fn list(&self, state: Option<JobState>) -> Vec<&Job> {
        if state == Some(JobState::Pending) {
            return self.pending().collect();
        }
        let mut jobs: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| state.is_none_or(|s| j.state == s))
            .collect();
        jobs.sort_by(|a, b| {
            a.created_index
                .cmp(&b.created_index)
                .then_with(|| a.id.cmp(&b.id))
        });
        jobs
    }

    /// Marks an index applied without a command (raft's empty entries, configuration changes).
    pub fn skip(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Applies the command at `index`. Indexes at or below the applied one are ignored (a replay
    /// after a restart applies nothing twice).
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        if index <= self.applied {
            return Outcome::Nothing;
        }
        self.applied = index;
        self.execute(index, command)
    }

    fn execute(&mut self, index: u64, command: &Command) -> Outcome {
        match command {
            Command::Batch(commands) => Outcome::Batch(
                commands
                    .iter()
                    .map(|c| match c {
                        // An Assign's token is its entry's index: it must have an entry of its own.
                        Command::Assign { .. } | Command::Batch(_) => {
                            Outcome::Done(Err("not allowed in a batch".into()))
                        }
                        c => self.execute(index, c),
                    })
                    .collect(),
            ),
            Command::Submit(new) => {
                Outcome::Submitted(new.iter().map(|n| self.submit(index, n)).collect())
            }
            Command::Cancel { id, at_ms } => Outcome::Cancelled(self.cancel(id, *at_ms)),
            Command::Noop => Outcome::Nothing,
            Command::RegisterWorker(spec) => Outcome::Done(self.register_worker(spec)),
            Command::Heartbeat { name, at_ms } => Outcome::Done(self.heartbeat(name, *at_ms)),
            Command::Drain { name } => Outcome::Done(self.drain(name)),
            Command::Assign { assignments, at_ms } => Outcome::Assigned(
                assignments
                    .iter()
                    .map(|(job, worker)| self.assign(index, job, worker, *at_ms))
                    .collect(),
            ),
            Command::Progress {
                job,
                token,
                phase,
                at_ms,
            } => Outcome::Done(self.progress(job, *token, phase, *at_ms)),
            Command::Report {
                job,
                token,
                report,
                at_ms,
            } => Outcome::Done(self.report(job, *token, report, *at_ms)),
            Command::ExpireWorkers { now_ms, lease_ms } => {
                Outcome::Expired(self.expire(*now_ms, *lease_ms))
            }
        }
    }

    fn submit(&mut self, index: u64, new: &NewJob) -> Result<String, String> {
        // A client retrying after a leader change resubmits the same id: same plan, same job.
        if let Some(existing) = self.jobs.get(&new.id) {
            return if existing.plan == new.plan {
                Ok(new.id.clone())
            } else {
                Err(format!("job {} already exists with another plan", new.id))
            };
        }
        self.jobs.insert(
            new.id.clone(),
            Job {
                id: new.id.clone(),
                plan: new.plan.clone(),
                state: JobState::Pending,
                attempts: Vec::new(),
                submitted_at_ms: new.at_ms,
                updated_at_ms: new.at_ms,
                created_index: index,
                phase: None,
                reason: None,
                report: None,
            },
        );
        self.sync_pending(&new.id);
        Ok(new.id.clone())
    }

    fn cancel(&mut self, id: &str, at_ms: u64) -> Result<(), String> {
        let job = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| format!("no job {id}"))?;
        if job.state.is_final() {
            return Err(format!(
                "job {id} is already {}",
                serde_json::to_value(job.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
        job.state = JobState::Cancelled;
        job.phase = None;
        job.updated_at_ms = at_ms;
        // The worker sees the attempt gone from its assignments and stops the sandbox.
        self.end_attempt(id, "cancelled", at_ms);
        self.sync_pending(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RawArtifact;
    use proptest::prelude::*;

    fn plan() -> RawPlan {
        RawPlan {
            artifact: RawArtifact {
                url: "/b/x.dump".into(),
                engine: "postgres".into(),
                blake3: None,
                ..RawArtifact::default()
            },
            ..RawPlan::default()
        }
    }

    fn new(id: &str) -> NewJob {
        NewJob {
            id: id.into(),
            plan: plan(),
            at_ms: 7,
        }
    }

    #[test]
    fn submit_creates_pending_jobs_in_order() {
        let mut s = JobStore::default();
        assert_eq!(
            s.apply(3, &Command::Submit(vec![new("b"), new("a")])),
            Outcome::Submitted(vec![Ok("b".into()), Ok("a".into())])
        );
        s.apply(4, &Command::Submit(vec![new("c")]));
        let ids: Vec<&str> = s.list(None).iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(s.list(None).iter().all(|j| j.state == JobState::Pending));
        assert_eq!(s.applied(), 4);
    }

    #[test]
    fn duplicates_and_replays_change_nothing() {
        let mut s = JobStore::default();
        s.apply(1, &Command::Submit(vec![new("a")]));
        let before = s.clone();
        assert_eq!(
            s.apply(1, &Command::Submit(vec![new("z")])),
            Outcome::Nothing
        );
        assert_eq!(s, before);
        // a retry of the same submit is the same job; another plan under that id is refused
        assert_eq!(
            s.apply(2, &Command::Submit(vec![new("a")])),
            Outcome::Submitted(vec![Ok("a".into())])
        );
        let mut other = new("a");
        other.plan.name = Some("different".into());
        assert!(
            matches!(s.apply(3, &Command::Submit(vec![other])), Outcome::Submitted(r) if r[0].is_err())
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a").map(|j| j.created_index), Some(1));
    }

    #[test]
    fn cancel_only_unfinished_jobs() {
        let mut s = JobStore::default();
        s.apply(1, &Command::Submit(vec![new("a")]));
        assert_eq!(
            s.apply(
                2,
                &Command::Cancel {
                    id: "a".into(),
                    at_ms: 9
                }
            ),
            Outcome::Cancelled(Ok(()))
        );
        assert_eq!(
            s.get("a").map(|j| (j.state, j.updated_at_ms)),
            Some((JobState::Cancelled, 9))
        );
        assert!(
            matches!(s.apply(3, &Command::Cancel { id: "a".into(), at_ms: 10 }), Outcome::Cancelled(Err(e)) if e.contains("already cancelled"))
        );
        assert!(matches!(
            s.apply(
                4,
                &Command::Cancel {
                    id: "nope".into(),
                    at_ms: 10
                }
            ),
            Outcome::Cancelled(Err(_))
        ));
    }

    fn command() -> impl Strategy<Value = Command> {
        let id = "[a-e]";
        prop_oneof![
            prop::collection::vec(id.prop_map(|i| new(&i)), 0..4).prop_map(Command::Submit),
            (id, any::<u32>()).prop_map(|(id, at)| Command::Cancel {
                id,
                at_ms: u64::from(at)
            }),
            Just(Command::Noop),
        ]
    }

    proptest! {
        /// Replicas applying the same log agree, also when one restarts from a snapshot taken
        /// part-way and the log is replayed over it from an earlier point.
        #[test]
        fn replicas_agree_and_replays_are_idempotent(log in prop::collection::vec(command(), 0..40), cut in 0usize..40, back in 0usize..10) {
            let mut a = JobStore::default();
            let mut b = JobStore::default();
            for (i, c) in log.iter().enumerate() {
                a.apply(i as u64 + 1, c);
                b.apply(i as u64 + 1, c);
            }
            prop_assert_eq!(&a, &b);
            let cut = cut.min(log.len());
            let mut c = JobStore::default();
            for (i, cmd) in log.iter().enumerate().take(cut) {
                c.apply(i as u64 + 1, cmd);
            }
            let snapshot: JobStore = serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
            let mut c = snapshot;
            for (i, cmd) in log.iter().enumerate().skip(cut.saturating_sub(back)) {
                c.apply(i as u64 + 1, cmd);
            }
            prop_assert_eq!(&a, &c);
        }

        /// A job never leaves a final state, and ids stay unique.
        #[test]
        fn final_states_are_final(log in prop::collection::vec(command(), 0..40)) {
            let mut s = JobStore::default();
            let mut finals: BTreeMap<String, JobState> = BTreeMap::new();
            for (i, c) in log.iter().enumerate() {
                s.apply(i as u64 + 1, c);
                for j in s.list(None) {
                    if let Some(f) = finals.get(&j.id) {
                        prop_assert_eq!(*f, j.state);
                    }
                    if j.state.is_final() {
                        finals.insert(j.id.clone(), j.state);
                    }
                }
            }
        }
    }
}
