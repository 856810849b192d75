//! The coordinator's replicated state machine: jobs and their lifecycle.
//!
//! Deterministic and pure: [`JobStore::apply`] takes a log index and a [`Command`] and changes the
//! state; every replica applying the same log reaches the same state. The coordinator only
//! drives it (persists, replicates, snapshots). Commands carry everything they need — ids and
//! timestamps are chosen by the proposer, never read from a clock here.
//!
//! States: `pending` → `assigned` → `running` → `passed` | `failed` | `error`, and `cancelled`
//! from any non-final state. `failed` is a verdict on the backup; `error` means it could not be
//! verified on any worker within `max_attempts` (an attempt that ends `error` re-queues the job,
//! preferring another worker). Workers, attempts, leases and fencing are in [`crate::fleet`].

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
    /// The backup is bad: a verdict.
    Failed,
    Cancelled,
    /// Could not verify: every attempt the plan allows ended `error` or `lost`.
    Error,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Assigned,
        JobState::Running,
        JobState::Passed,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Error,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Passed | JobState::Failed | JobState::Cancelled | JobState::Error
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Passed => "passed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// The exit code of `rehearse job wait` for a job that ended so (`None` while it runs):
    /// 0 passed, 1 failed (the backup is bad), 2 could not verify, 3 cancelled.
    pub fn exit_code(self) -> Option<u8> {
        match self {
            JobState::Passed => Some(0),
            JobState::Failed => Some(1),
            JobState::Error => Some(2),
            JobState::Cancelled => Some(3),
            JobState::Pending | JobState::Assigned | JobState::Running => None,
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttemptOutcome {
    #[serde(rename = "passed")]
    Passed,
    /// The backup is bad.
    #[serde(rename = "failed")]
    Failed,
    /// This worker could not verify it; the job is re-queued.
    #[serde(rename = "error")]
    Error,
    /// The worker went silent past its lease (or restarted); the job is re-queued.
    #[serde(rename = "lost")]
    Lost,
    #[serde(rename = "timed out")]
    TimedOut,
    #[serde(rename = "cancelled")]
    Cancelled,
    /// The artifact was not readable yet (an archived object being restored): the job waits and
    /// is tried again; this does not count as an attempt.
    #[serde(rename = "deferred")]
    Deferred,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Passed => "passed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Error => "error",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::TimedOut => "timed out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Deferred => "deferred",
        }
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    pub outcome: Option<AttemptOutcome>,
    /// Why an attempt ended `error` (what to fix on that worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// Why a job ended without a report (lost on every attempt, no word past its timeout), or
    /// why a pending job waits (its artifact is being restored from an archive).
    #[serde(default)]
    pub reason: Option<String>,
    pub report: Option<Report>,
    /// A pending job whose artifact was not readable yet is not placed before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// When its artifact was first found not readable yet (the wait is bounded from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred_since_ms: Option<u64>,
    /// Its end was put in the notifications' outbox (see [`crate::notify`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notified: bool,
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
    /// Notifications every channel has taken: they leave the outbox (see [`crate::notify`]).
    MarkSent {
        ids: Vec<String>,
    },
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
    /// The cluster's command version (see [`crate::codec`]): raised by the leader once every
    /// member reads it; never lowered.
    SetVersion {
        version: u32,
    },
    /// A command kind newer than any release (version [`crate::codec::TEST_PROBE`]), written
    /// only by upgrade tests; changes nothing.
    Probe {
        note: String,
    },
    /// Creates a drill, or replaces the definition of the one of that name.
    ApplyDrill {
        spec: Box<crate::drill::DrillSpec>,
        at_ms: u64,
    },
    PauseDrill {
        name: String,
        reason: String,
        until_ms: Option<u64>,
        at_ms: u64,
    },
    /// Ticks that came while it was paused are not due (no immediate fire).
    ResumeDrill {
        name: String,
        at_ms: u64,
    },
    /// The drill stops; its history stays until its `keep` runs out.
    DeleteDrill {
        name: String,
        at_ms: u64,
    },
    /// The leader's decision for one tick of a drill (see [`crate::drill::decide`]), with the
    /// jobs of its run (ids derived from drill and tick), or a manual run.
    DrillTick(Box<crate::drills::Tick>),
    /// A run whose jobs did not start within its window: the waiting ones are cancelled and the
    /// run is `skipped` with the reason.
    CloseWindow {
        drill: String,
        tick_ms: i64,
        manual: bool,
        reason: String,
        at_ms: u64,
    },
    /// A drill has had no passed run within its `alert_after`, counted from `since_ms` (its last
    /// pass, or its creation): one `drill.overdue` notification per such stretch.
    DrillOverdue {
        drill: String,
        since_ms: u64,
        at_ms: u64,
    },
    /// A channel's daily digest is due, for its fire instant `fire_ms` (the leader proposes it
    /// at that instant; see [`crate::digest`]). Once per channel and instant.
    Digest {
        channel: String,
        fire_ms: u64,
        at_ms: u64,
    },
    /// Finished jobs last changed before `before_ms` leave the state; their summaries go to the
    /// history (the leader proposes it for `--job-retention`).
    ForgetJobs {
        before_ms: u64,
        at_ms: u64,
    },
    /// Starts a DR exercise, with the jobs of its first steps (see [`crate::exercises`]).
    StartExercise(Box<crate::exercises::Start>),
    /// A person approves a gate of a running exercise.
    ApproveGate {
        id: String,
        step: String,
        by: String,
        at_ms: u64,
    },
    /// Stops an exercise: its running jobs are cancelled, its steps not ended are aborted.
    AbortExercise {
        id: String,
        by: String,
        reason: String,
        at_ms: u64,
    },
    /// Gates that waited past their timeout fail (the leader proposes it when one is due).
    ExpireGates {
        now_ms: u64,
    },
    /// Adds an API token (its hash only; see [`crate::tokens`]).
    CreateToken(crate::tokens::Token),
    RevokeToken {
        name: String,
        at_ms: u64,
    },
}

impl Command {
    /// The command version that introduced this command (or a value inside it): a node that
    /// reads less must never be given it, and the leader proposes it only once the cluster's
    /// version covers it.
    pub fn min_version(&self) -> u32 {
        use crate::codec::{LEGACY, TEST_PROBE};
        match self {
            Command::Batch(commands) => commands
                .iter()
                .map(Command::min_version)
                .max()
                .unwrap_or(LEGACY),
            // A drill carries plans: as new as the newest of them (a plan with `[pitr]` is 3).
            Command::ApplyDrill { spec, .. } => spec
                .plans
                .iter()
                .map(RawPlan::min_version)
                .chain(spec.exercise.iter().map(|e| e.min_version()))
                .max()
                .unwrap_or(2)
                .max(2),
            Command::DrillTick(tick) => tick
                .jobs
                .iter()
                .map(|j| j.plan.min_version())
                .chain(tick.exercise.iter().map(|e| e.spec.min_version()))
                .max()
                .unwrap_or(2)
                .max(2),
            Command::StartExercise(start) => start.spec.min_version(),
            Command::ApproveGate { .. }
            | Command::AbortExercise { .. }
            | Command::ExpireGates { .. } => 4,
            Command::SetVersion { .. }
            | Command::PauseDrill { .. }
            | Command::ResumeDrill { .. }
            | Command::DeleteDrill { .. }
            | Command::CloseWindow { .. }
            | Command::ForgetJobs { .. } => 2,
            Command::Probe { .. } => TEST_PROBE,
            Command::MarkSent { .. } | Command::DrillOverdue { .. } => 5,
            Command::Digest { .. } => 6,
            Command::CreateToken(_) | Command::RevokeToken { .. } => 7,
            Command::Report { report, .. } => {
                if report.retry_after_ms().is_some() {
                    5
                } else if report.verdict == crate::report::Verdict::Error {
                    2
                } else {
                    LEGACY
                }
            }
            Command::Submit(jobs) => jobs
                .iter()
                .map(|j| j.plan.min_version())
                .max()
                .unwrap_or(LEGACY),
            _ => LEGACY,
        }
    }
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

/// What applying leaves for the node to take, not part of the state: replicas that took it at
/// different times are still equal.
#[derive(Debug, Clone, Default)]
pub struct Scratch<T>(pub(crate) T);

impl<T> PartialEq for Scratch<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
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
    /// The cluster's command version ([`crate::codec`]): what every member reads.
    #[serde(default = "legacy_version")]
    cluster_version: u32,
    /// Scheduled drills, by name.
    #[serde(default)]
    pub(crate) drills: BTreeMap<String, crate::drill::Drill>,
    /// Each drill's runs, oldest first (deleted drills' too, until their `keep` runs out).
    #[serde(default)]
    pub(crate) runs: BTreeMap<String, Vec<crate::drill::Run>>,
    /// Which run a drill job belongs to: job id → (drill, tick, manual). Derived from `runs`.
    #[serde(skip)]
    pub(crate) drill_jobs: BTreeMap<String, (String, i64, bool)>,
    /// Which drill run started an exercise: exercise id → (drill, tick, manual), while the run
    /// runs. Derived from `runs`.
    #[serde(skip)]
    pub(crate) drill_exercises: BTreeMap<String, (String, i64, bool)>,
    /// DR exercises, by id (running ones and the last ended ones).
    #[serde(default)]
    pub(crate) exercises: BTreeMap<String, crate::exercise::Exercise>,
    /// Notifications not yet taken by every channel, by event id (see [`crate::notify`]).
    #[serde(default)]
    pub(crate) outbox: BTreeMap<String, crate::notify::Event>,
    /// Each channel's last digest instant (see [`crate::digest`]).
    #[serde(default)]
    pub(crate) digests: BTreeMap<String, u64>,
    /// The evidence chain's last record (see [`crate::evidence`]); its records are history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) evidence: Option<crate::evidence::Head>,
    /// API tokens by name (hashes only; see [`crate::tokens`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) tokens: BTreeMap<String, crate::tokens::Token>,
    /// The log index of the last change to `tokens`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) tokens_changed_at: u64,
    /// Which exercise a job belongs to: job id → exercise id. Derived from `exercises`.
    #[serde(skip)]
    pub(crate) exercise_jobs: BTreeMap<String, String>,
    /// History writes made by applied commands, not taken yet (see [`crate::history`]).
    #[serde(skip)]
    pub(crate) history_out: Vec<crate::history::HistoryOp>,
    /// Jobs that reached a final state in the commands applied since the last
    /// [`JobStore::take_ended`] (the leader emits their traces; see [`crate::trace`]).
    #[serde(skip)]
    pub(crate) ended: Scratch<Vec<String>>,
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
    #[serde(default = "legacy_version")]
    cluster_version: u32,
    #[serde(default)]
    drills: BTreeMap<String, crate::drill::Drill>,
    #[serde(default)]
    runs: BTreeMap<String, Vec<crate::drill::Run>>,
    #[serde(default)]
    exercises: BTreeMap<String, crate::exercise::Exercise>,
    #[serde(default)]
    outbox: BTreeMap<String, crate::notify::Event>,
    #[serde(default)]
    digests: BTreeMap<String, u64>,
    #[serde(default)]
    evidence: Option<crate::evidence::Head>,
    #[serde(default)]
    tokens: BTreeMap<String, crate::tokens::Token>,
    #[serde(default)]
    tokens_changed_at: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn legacy_version() -> u32 {
    crate::codec::LEGACY
}

impl From<StoreData> for JobStore {
    fn from(d: StoreData) -> JobStore {
        let pending = d
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending)
            .map(|j| (j.created_index, j.id.clone()))
            .collect();
        let drill_jobs = crate::drills::index_jobs(&d.runs);
        let exercise_jobs = crate::exercises::index_jobs(&d.exercises);
        let drill_exercises = crate::drills::index_exercises(&d.runs);
        JobStore {
            jobs: d.jobs,
            workers: d.workers,
            applied: d.applied,
            cluster_version: d.cluster_version,
            drills: d.drills,
            runs: d.runs,
            drill_jobs,
            drill_exercises,
            exercises: d.exercises,
            outbox: d.outbox,
            digests: d.digests,
            evidence: d.evidence,
            tokens: d.tokens,
            tokens_changed_at: d.tokens_changed_at,
            exercise_jobs,
            history_out: Vec::new(),
            ended: Scratch::default(),
            pending,
        }
    }
}

impl JobStore {
    /// The jobs that reached a final state in the commands applied since the last call.
    pub fn take_ended(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ended.0)
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The command version every member reads (see [`crate::codec`]).
    pub fn cluster_version(&self) -> u32 {
        self.cluster_version.max(crate::codec::LEGACY)
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
    /// Also where a drill's run learns that one of its jobs ended.
    pub(crate) fn sync_pending(&mut self, id: &str) {
        self.chain_evidence(id);
        self.drill_job_changed(id);
        self.exercise_job_changed(id);
        self.notify_job_changed(id);
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        // Every caller has just moved the job out of a non-final state: a final one ended here.
        if job.state.is_final() {
            self.ended.0.push(job.id.clone());
        }
        let key = (job.created_index, job.id.clone());
        if job.state == JobState::Pending {
            self.pending.insert(key);
        } else {
            self.pending.remove(&key);
        }
    }

    /// How many jobs are in each state, in [`JobState::ALL`]'s order (for gauges: one pass, no
    /// sorting).
    pub fn count_by_state(&self) -> [usize; 7] {
        let mut counts = [0; 7];
        for j in self.jobs.values() {
            if let Some(i) = JobState::ALL.iter().position(|s| *s == j.state) {
                counts[i] += 1;
            }
        }
        counts
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
            Command::MarkSent { ids } => {
                self.mark_sent(ids);
                Outcome::Nothing
            }
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
            Command::SetVersion { version } => {
                self.cluster_version = self.cluster_version.max(*version);
                Outcome::Nothing
            }
            Command::Probe { .. } => Outcome::Done(Ok(())),
            Command::CreateToken(token) => Outcome::Done(self.create_token(token, index)),
            Command::RevokeToken { name, .. } => Outcome::Done(self.revoke_token(name, index)),
            Command::ApplyDrill { spec, at_ms } => Outcome::Done(self.apply_drill(spec, *at_ms)),
            Command::PauseDrill {
                name,
                reason,
                until_ms,
                at_ms,
            } => Outcome::Done(self.pause_drill(name, reason, *until_ms, *at_ms)),
            Command::ResumeDrill { name, at_ms } => Outcome::Done(self.resume_drill(name, *at_ms)),
            Command::DeleteDrill { name, at_ms } => Outcome::Done(self.delete_drill(name, *at_ms)),
            Command::DrillTick(tick) => Outcome::Done(self.drill_tick(index, tick)),
            Command::CloseWindow {
                drill,
                tick_ms,
                manual,
                reason,
                at_ms,
            } => Outcome::Done(self.close_window(drill, *tick_ms, *manual, reason, *at_ms)),
            Command::DrillOverdue {
                drill,
                since_ms,
                at_ms,
            } => {
                self.drill_overdue(drill, *since_ms, *at_ms);
                Outcome::Nothing
            }
            Command::Digest {
                channel, fire_ms, ..
            } => {
                self.digest(channel, *fire_ms);
                Outcome::Nothing
            }
            Command::ForgetJobs { before_ms, at_ms } => {
                self.forget_jobs(*before_ms, *at_ms);
                Outcome::Nothing
            }
            Command::StartExercise(start) => Outcome::Done(self.start_exercise(index, start)),
            Command::ApproveGate {
                id,
                step,
                by,
                at_ms,
            } => Outcome::Done(self.approve_gate(index, id, step, by, *at_ms)),
            Command::AbortExercise {
                id,
                by,
                reason,
                at_ms,
            } => Outcome::Done(self.abort_exercise(id, by, reason, *at_ms)),
            Command::ExpireGates { now_ms } => {
                self.expire_gates(index, *now_ms);
                Outcome::Nothing
            }
        }
    }

    pub(crate) fn submit(&mut self, index: u64, new: &NewJob) -> Result<String, String> {
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
                not_before_ms: None,
                deferred_since_ms: None,
                notified: false,
            },
        );
        self.sync_pending(&new.id);
        Ok(new.id.clone())
    }

    pub(crate) fn cancel(&mut self, id: &str, at_ms: u64) -> Result<(), String> {
        let job = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| format!("no job {id}"))?;
        if job.state.is_final() {
            return Err(format!("job {id} is already {}", job.state));
        }
        job.state = JobState::Cancelled;
        job.phase = None;
        job.updated_at_ms = at_ms;
        // The worker sees the attempt gone from its assignments and stops the sandbox.
        self.end_attempt(id, AttemptOutcome::Cancelled, at_ms);
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
    fn states_and_outcomes_round_trip_their_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).expect("json");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(JobState::Error.exit_code(), Some(2));
        assert_eq!(JobState::Failed.exit_code(), Some(1));
        let json = serde_json::to_string(&AttemptOutcome::TimedOut).expect("json");
        assert_eq!(json, "\"timed out\"");
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
