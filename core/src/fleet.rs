//! The worker fleet in the replicated state: registration, heartbeats, assignments with fencing
//! tokens, progress, reports, and lease expiry. Part of [`JobStore`]'s state machine (pure).
//!
//! Fencing: an assignment's token is the log index of the `Assign` entry. A report or progress
//! message is accepted only with the token of the job's current attempt, so a worker that was
//! declared lost and comes back late can never land a second verdict.
//!
//! Re-delivery: when a worker is lost, each attempt it ran ends with outcome "lost" and its job
//! goes back to `pending` (placement then prefers another worker), until the plan's
//! `max_attempts`; then the job ends `error` (could not verify) with its attempt history. An
//! attempt whose report says `error` (the worker could not verify) is re-queued the same way:
//! only a `passed` or `failed` verdict speaks of the backup.
//!
//! Health: a worker whose last [`UNHEALTHY_AFTER`] attempts all ended `error` is `unhealthy`
//! (shown by `rehearse workers`); placement takes it only when no healthy worker fits.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::jobs::{Attempt, AttemptOutcome, JobState, JobStore};
use crate::placement::{Constraint, PendingJob, WorkerState, WorkerView};
use crate::plan::DEFAULT_MAX_ATTEMPTS;
use crate::report::{Report, Verdict};

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub name: String,
    /// Random per worker process start: the same value is a reconnect, a new one a restart.
    pub incarnation: u64,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub spec: WorkerSpec,
    pub state: WorkerState,
    pub last_heartbeat_ms: u64,
    /// Jobs with an attempt running on this worker.
    pub running: BTreeSet<String>,
    /// How many of its attempts in a row ended `error` (reset by a passed or failed verdict, and
    /// by a restart: a new incarnation may have had its problem fixed).
    #[serde(default)]
    pub recent_errors: u32,
    /// The reason of its last errored attempt, while `recent_errors > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Errored attempts in a row after which a worker shows as `unhealthy`.
pub const UNHEALTHY_AFTER: u32 = 3;

/// How long a job may wait for its artifact to be restored from an archive, from the first try
/// that found it archived (S3's bulk retrieval from DEEP_ARCHIVE takes up to 48 hours). A drill's
/// job is cancelled earlier, when its window ends (the run is then `skipped`).
pub const RESTORE_WAIT_MS: u64 = 48 * 3600 * 1000;

impl Worker {
    pub fn view(&self) -> WorkerView {
        WorkerView {
            name: self.spec.name.clone(),
            region: self.spec.region.clone(),
            labels: self.spec.labels.clone(),
            slots: self.spec.slots,
            used: self.running.len() as u32,
            state: self.state,
            healthy: self.healthy(),
        }
    }

    /// False once its last [`UNHEALTHY_AFTER`] attempts all ended `error`.
    pub fn healthy(&self) -> bool {
        self.recent_errors < UNHEALTHY_AFTER
    }
}

impl JobStore {
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.get(name)
    }

    /// The placement input: workers as they are, pending jobs oldest first with their history.
    pub fn placement_input(&self, now_ms: u64) -> (Vec<WorkerView>, Vec<PendingJob>) {
        let workers = self.worker_views();
        (workers, self.pending_input(now_ms).collect())
    }

    /// The pending queue as placement takes it at `now_ms`, oldest first, built lazily (the
    /// scheduler stops reading once every slot is taken). A job waiting for its artifact to be
    /// restored from an archive is left out until its next try.
    pub fn pending_input(&self, now_ms: u64) -> impl Iterator<Item = PendingJob> + '_ {
        self.pending()
            .filter(move |j| j.not_before_ms.is_none_or(|t| t <= now_ms))
            .map(|j| PendingJob {
                id: j.id.clone(),
                constraint: constraint(j),
                tried: j.attempts.iter().map(|a| a.worker.clone()).collect(),
            })
    }

    /// Why a pending job is not running yet ("no live worker in region eu with a free slot");
    /// `None` for a job that is not pending.
    ///
    /// `workers` is [`JobStore::worker_views`], taken once for a whole listing.
    pub fn waiting_reason(&self, workers: &[WorkerView], job: &crate::jobs::Job) -> Option<String> {
        if job.state != JobState::Pending {
            return None;
        }
        if let (Some(at), Some(why)) = (job.not_before_ms, &job.reason) {
            return Some(format!(
                "{why}; next try at {}",
                crate::report::utc_rfc3339(at as i64)
            ));
        }
        Some(crate::placement::explain(workers, &constraint(job)))
    }

    /// Whether a job waiting for its artifact's restore is due for its next try at `now_ms`
    /// (the leader then places again).
    pub fn deferral_due(&self, now_ms: u64) -> bool {
        self.pending()
            .any(|j| j.not_before_ms.is_some_and(|t| t <= now_ms))
    }

    /// Every worker as placement sees it.
    pub fn worker_views(&self) -> Vec<WorkerView> {
        self.workers.values().map(Worker::view).collect()
    }

    /// A reconnect (same incarnation) refreshes the worker and keeps its attempts. A restart (new
    /// incarnation) means its sandboxes were reaped: its attempts end "lost" and their jobs are
    /// re-queued, then it starts afresh with the facts it gives now.
    pub(crate) fn register_worker(&mut self, spec: &WorkerSpec) -> Result<(), String> {
        if spec.name.is_empty() || spec.slots == 0 {
            return Err("a worker needs a name and at least one slot".into());
        }
        if let Some(w) = self.workers.get_mut(&spec.name)
            && w.spec.incarnation == spec.incarnation
        {
            w.last_heartbeat_ms = w.last_heartbeat_ms.max(spec.at_ms);
            if w.state == WorkerState::Lost {
                w.state = WorkerState::Ready;
            }
            return Ok(());
        }
        let orphaned = self
            .workers
            .get_mut(&spec.name)
            .map(|w| std::mem::take(&mut w.running))
            .unwrap_or_default();
        self.requeue(orphaned, spec.at_ms);
        self.workers.insert(
            spec.name.clone(),
            Worker {
                spec: spec.clone(),
                state: WorkerState::Ready,
                last_heartbeat_ms: spec.at_ms,
                running: BTreeSet::new(),
                recent_errors: 0,
                last_error: None,
            },
        );
        Ok(())
    }

    pub(crate) fn heartbeat(&mut self, name: &str, at_ms: u64) -> Result<(), String> {
        let w = self
            .workers
            .get_mut(name)
            .ok_or_else(|| format!("no worker {name}; register first"))?;
        if w.state == WorkerState::Lost {
            return Err(format!("worker {name} was declared lost; register again"));
        }
        w.last_heartbeat_ms = w.last_heartbeat_ms.max(at_ms);
        Ok(())
    }

    pub(crate) fn drain(&mut self, name: &str) -> Result<(), String> {
        let w = self
            .workers
            .get_mut(name)
            .ok_or_else(|| format!("no worker {name}"))?;
        w.state = WorkerState::Draining;
        Ok(())
    }

    /// Checked again at apply time: the leader's view may be stale, the log's order is the truth.
    pub(crate) fn assign(
        &mut self,
        index: u64,
        job_id: &str,
        worker: &str,
        at_ms: u64,
    ) -> Result<u64, String> {
        let w = self
            .workers
            .get(worker)
            .ok_or_else(|| format!("no worker {worker}"))?;
        if w.state != WorkerState::Ready || w.running.len() as u32 >= w.spec.slots {
            return Err(format!("worker {worker} has no free slot"));
        }
        let region = w.spec.region.clone();
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| format!("no job {job_id}"))?;
        if job.state != JobState::Pending {
            return Err(format!("job {job_id} is not pending"));
        }
        job.state = JobState::Assigned;
        job.phase = None;
        job.updated_at_ms = at_ms;
        job.not_before_ms = None;
        if job.deferred_since_ms.is_some() {
            job.reason = None;
        }
        let key = (job.created_index, job.id.clone());
        self.pending.remove(&key);
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Err(format!("no job {job_id}"));
        };
        job.attempts.push(Attempt {
            worker: worker.to_owned(),
            region: Some(region),
            token: index,
            started_at_ms: at_ms,
            ended_at_ms: None,
            outcome: None,
            reason: None,
        });
        if let Some(w) = self.workers.get_mut(worker) {
            w.running.insert(job_id.to_owned());
        }
        Ok(index)
    }

    /// The job's current attempt, if `token` is its token and it has not ended.
    fn current_attempt(
        &mut self,
        job_id: &str,
        token: u64,
    ) -> Result<&mut crate::jobs::Job, String> {
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| format!("no job {job_id}"))?;
        let current = job
            .attempts
            .last()
            .filter(|a| a.ended_at_ms.is_none() && !job.state.is_final())
            .map(|a| a.token);
        if current != Some(token) {
            return Err(format!("stale fencing token {token} for job {job_id}"));
        }
        Ok(job)
    }

    pub(crate) fn progress(
        &mut self,
        job_id: &str,
        token: u64,
        phase: &str,
        at_ms: u64,
    ) -> Result<(), String> {
        let job = self.current_attempt(job_id, token)?;
        job.state = JobState::Running;
        job.phase = Some(phase.to_owned());
        job.updated_at_ms = at_ms;
        Ok(())
    }

    pub(crate) fn report(
        &mut self,
        job_id: &str,
        token: u64,
        report: &Report,
        at_ms: u64,
    ) -> Result<(), String> {
        if let Some(after_ms) = report.retry_after_ms() {
            self.current_attempt(job_id, token)?;
            let reason = report
                .failure
                .as_ref()
                .map(|f| f.reason.clone())
                .unwrap_or_default();
            self.defer(job_id, reason, after_ms, at_ms);
            return Ok(());
        }
        let job = self.current_attempt(job_id, token)?;
        job.phase = None;
        job.updated_at_ms = at_ms;
        job.report = Some(report.clone());
        let worker = job.attempts.last().map(|a| a.worker.clone());
        let outcome = match report.verdict {
            Verdict::Passed => AttemptOutcome::Passed,
            Verdict::Failed => AttemptOutcome::Failed,
            Verdict::Error => AttemptOutcome::Error,
        };
        let mut unhealthy = None;
        if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
            if outcome == AttemptOutcome::Error {
                w.recent_errors = w.recent_errors.saturating_add(1);
                w.last_error = report.failure.as_ref().map(|f| f.reason.clone());
                if w.recent_errors == UNHEALTHY_AFTER {
                    unhealthy = Some((w.spec.name.clone(), w.last_error.clone()));
                }
            } else {
                w.recent_errors = 0;
                w.last_error = None;
            }
        }
        if let Some((name, last)) = unhealthy {
            self.notify_worker(
                "worker.unhealthy",
                &name,
                at_ms,
                format!(
                    "its last {UNHEALTHY_AFTER} attempts could not verify; placed last until one does (last: {})",
                    last.unwrap_or_default()
                ),
            );
        }
        if outcome == AttemptOutcome::Error {
            // Says nothing of the backup: another worker (or this one, if none other fits) tries.
            let reason = report.failure.as_ref().map(|f| f.reason.clone());
            self.retry(job_id, AttemptOutcome::Error, reason, at_ms);
            return Ok(());
        }
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.state = if outcome == AttemptOutcome::Passed {
                JobState::Passed
            } else {
                JobState::Failed
            };
        }
        self.end_attempt(job_id, outcome, at_ms);
        self.sync_pending(job_id);
        Ok(())
    }

    /// The artifact was not readable yet (an archived object being restored): the attempt ends
    /// `deferred` (not counted, and not the worker's fault), and the job waits `after_ms` before
    /// it may be placed again — or, [`RESTORE_WAIT_MS`] after its first deferral, ends `error`.
    fn defer(&mut self, job_id: &str, reason: String, after_ms: u64, at_ms: u64) {
        self.end_attempt(job_id, AttemptOutcome::Deferred, at_ms);
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if let Some(a) = job.attempts.last_mut() {
            a.reason = Some(reason.clone());
        }
        let since = *job.deferred_since_ms.get_or_insert(at_ms);
        if at_ms.saturating_sub(since) >= RESTORE_WAIT_MS {
            job.state = JobState::Error;
            job.not_before_ms = None;
            job.reason = Some(format!(
                "could not verify: the artifact was still not readable {} after it was first found archived ({reason})",
                humantime::format_duration(std::time::Duration::from_millis(RESTORE_WAIT_MS))
            ));
        } else {
            job.state = JobState::Pending;
            job.not_before_ms = Some(at_ms.saturating_add(after_ms.max(1)));
            job.reason = Some(reason);
        }
        job.phase = None;
        job.updated_at_ms = at_ms;
        self.sync_pending(job_id);
    }

    /// Ends the job's open attempt, if any, with `outcome`, and frees its worker's slot.
    pub(crate) fn end_attempt(&mut self, job_id: &str, outcome: AttemptOutcome, at_ms: u64) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(a) = job.attempts.last_mut().filter(|a| a.ended_at_ms.is_none()) else {
            return;
        };
        a.ended_at_ms = Some(at_ms);
        a.outcome = Some(outcome);
        let worker = a.worker.clone();
        if let Some(w) = self.workers.get_mut(&worker) {
            w.running.remove(job_id);
        }
    }

    /// Ends the running attempts of these jobs as "lost"; each job goes back to pending, or ends
    /// `error` once it has had `max_attempts` attempts.
    fn requeue(&mut self, jobs: impl IntoIterator<Item = String>, now_ms: u64) {
        for job_id in jobs {
            self.retry(&job_id, AttemptOutcome::Lost, None, now_ms);
        }
    }

    /// Ends the job's open attempt with `outcome` (lost, error) and puts the job back in the
    /// queue, or — after `max_attempts` — ends it `error`: it could not be verified, which says
    /// nothing about the backup.
    fn retry(
        &mut self,
        job_id: &str,
        outcome: AttemptOutcome,
        reason: Option<String>,
        now_ms: u64,
    ) {
        self.end_attempt(job_id, outcome, now_ms);
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if let Some(a) = job.attempts.last_mut()
            && a.outcome == Some(outcome)
            && a.ended_at_ms == Some(now_ms)
        {
            a.reason.clone_from(&reason);
        }
        if job.state.is_final() {
            return;
        }
        let max = job.plan.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS) as usize;
        let counted = job
            .attempts
            .iter()
            .filter(|a| a.outcome != Some(AttemptOutcome::Deferred))
            .count();
        if counted >= max {
            job.state = JobState::Error;
            let errored = job
                .attempts
                .iter()
                .filter(|a| a.outcome == Some(AttemptOutcome::Error))
                .count();
            let lost = job
                .attempts
                .iter()
                .filter(|a| a.outcome == Some(AttemptOutcome::Lost))
                .count();
            let last = job
                .attempts
                .iter()
                .rev()
                .find_map(|a| a.reason.clone())
                .map(|r| format!("; last: {r}"))
                .unwrap_or_default();
            job.reason = Some(format!(
                "could not verify after {counted} attempts ({errored} could not verify, {lost} lost their worker){last}"
            ));
        } else {
            job.state = JobState::Pending;
        }
        job.phase = None;
        job.updated_at_ms = now_ms;
        self.sync_pending(job_id);
    }

    /// Jobs whose running attempt started longer than the plan's timeout plus `grace` ago: the
    /// worker's own timeout should have ended them with a verdict, so the worker is alive but
    /// not doing its work. They fail "timed out"; a report arriving later is refused.
    fn time_out(&mut self, now_ms: u64, grace_ms: u64) -> Vec<String> {
        let overdue: Vec<(String, u64)> = self
            .running_jobs()
            .filter_map(|j| {
                let started = j.attempts.last()?.started_at_ms;
                let timeout = plan_timeout_ms(&j.plan);
                (started.saturating_add(timeout).saturating_add(grace_ms) < now_ms)
                    .then(|| (j.id.clone(), timeout))
            })
            .collect();
        for (id, timeout) in &overdue {
            self.end_attempt(id, AttemptOutcome::TimedOut, now_ms);
            if let Some(job) = self.jobs.get_mut(id) {
                job.state = JobState::Failed;
                job.phase = None;
                job.updated_at_ms = now_ms;
                job.reason = Some(format!(
                    "timed out: no verdict from the worker within the plan timeout ({})",
                    humantime::format_duration(std::time::Duration::from_millis(*timeout))
                ));
            }
            self.sync_pending(id);
        }
        overdue.into_iter().map(|(id, _)| id).collect()
    }

    /// Jobs with an attempt running (every one is in its worker's `running` set).
    fn running_jobs(&self) -> impl Iterator<Item = &crate::jobs::Job> {
        self.workers
            .values()
            .flat_map(|w| w.running.iter())
            .filter_map(|id| self.jobs.get(id))
    }

    /// Whether [`Command::ExpireWorkers`](crate::jobs::Command::ExpireWorkers) at `now_ms` would
    /// change anything: the leader checks this before proposing one.
    pub fn expiry_due(&self, now_ms: u64, lease_ms: u64) -> bool {
        self.workers.values().any(|w| {
            w.state != WorkerState::Lost && w.last_heartbeat_ms.saturating_add(lease_ms) < now_ms
        }) || self.running_jobs().any(|j| {
            j.attempts.last().is_some_and(|a| {
                a.started_at_ms
                    .saturating_add(plan_timeout_ms(&j.plan))
                    .saturating_add(lease_ms)
                    < now_ms
            })
        })
    }

    /// Marks silent workers lost and re-queues (or finally fails) their jobs, and fails jobs with
    /// no verdict long past their timeout (see [`Self::time_out`]). Returns the jobs touched.
    pub(crate) fn expire(&mut self, now_ms: u64, lease_ms: u64) -> Vec<String> {
        let mut touched = Vec::new();
        let mut lost = Vec::new();
        for w in self.workers.values_mut() {
            if w.state == WorkerState::Lost
                || w.last_heartbeat_ms.saturating_add(lease_ms) >= now_ms
            {
                continue;
            }
            w.state = WorkerState::Lost;
            touched.extend(std::mem::take(&mut w.running));
            lost.push((w.spec.name.clone(), w.last_heartbeat_ms));
        }
        for (name, last) in lost {
            self.notify_worker(
                "worker.lost",
                &name,
                now_ms,
                format!(
                    "no heartbeat for {} (lease {}); its jobs go to other workers",
                    crate::report::human_ms(now_ms.saturating_sub(last)),
                    crate::report::human_ms(lease_ms)
                ),
            );
        }
        self.requeue(touched.clone(), now_ms);
        touched.extend(self.time_out(now_ms, lease_ms));
        touched
    }
}

/// Where the job's plan lets it run.
fn constraint(job: &crate::jobs::Job) -> Constraint {
    let p = job.plan.placement.clone().unwrap_or_default();
    Constraint {
        region: p.region,
        not_region: p.not_region,
        labels: p.labels,
    }
}

/// The plan's timeout in ms (validated at submit; the default if it somehow does not parse).
fn plan_timeout_ms(plan: &crate::plan::RawPlan) -> u64 {
    let timeout = plan
        .timeout
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(crate::plan::DEFAULT_TIMEOUT);
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

/// Names of workers, regions and tokens: 1..=64 of [A-Za-z0-9_.-]; `what` names it in the error.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{what} {name:?}: 1 to 64 of [A-Za-z0-9_.-]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Command, NewJob, Outcome};
    use crate::plan::{RawArtifact, RawPlan};
    use proptest::prelude::*;

    fn spec(name: &str, slots: u32, at_ms: u64) -> WorkerSpec {
        WorkerSpec {
            name: name.into(),
            incarnation: at_ms,
            region: "eu".into(),
            labels: BTreeMap::new(),
            slots,
            at_ms,
        }
    }

    fn submit(id: &str) -> Command {
        let plan = RawPlan {
            artifact: RawArtifact {
                url: "/b/x.dump".into(),
                engine: "postgres".into(),
                blake3: None,
                ..RawArtifact::default()
            },
            ..RawPlan::default()
        };
        Command::Submit(vec![NewJob {
            id: id.into(),
            plan,
            at_ms: 0,
        }])
    }

    fn verdict(v: Verdict) -> Box<Report> {
        let mut r = Report::new(
            "file:///b/x.dump",
            "postgres",
            "process",
            "2026-11-22T00:00:00Z".into(),
        );
        r.verdict = v;
        Box::new(r)
    }

    #[test]
    fn a_late_report_from_a_lost_worker_is_refused() {
        let mut s = JobStore::default();
        s.apply(1, &submit("j"));
        s.apply(2, &Command::RegisterWorker(spec("a", 1, 0)));
        s.apply(3, &Command::RegisterWorker(spec("b", 1, 0)));
        assert_eq!(
            s.apply(
                4,
                &Command::Assign {
                    assignments: vec![("j".into(), "a".into())],
                    at_ms: 1
                }
            ),
            Outcome::Assigned(vec![Ok(4)])
        );
        s.apply(
            5,
            &Command::Heartbeat {
                name: "b".into(),
                at_ms: 20_000,
            },
        );
        // a is silent past its lease: lost, and the job goes back to pending
        assert_eq!(
            s.apply(
                6,
                &Command::ExpireWorkers {
                    now_ms: 20_000,
                    lease_ms: 10_000
                }
            ),
            Outcome::Expired(vec!["j".into()])
        );
        assert_eq!(s.get("j").map(|j| j.state), Some(JobState::Pending));
        let (workers, jobs) = s.placement_input(u64::MAX);
        let placed = crate::placement::place(&workers, &jobs);
        assert_eq!(
            placed.assigned,
            [("j".into(), "b".into())],
            "the retry goes to the other worker"
        );
        s.apply(
            7,
            &Command::Assign {
                assignments: placed.assigned,
                at_ms: 21_000,
            },
        );
        // a comes back and reports with its old token: refused
        let late = s.apply(
            8,
            &Command::Report {
                job: "j".into(),
                token: 4,
                report: verdict(Verdict::Failed),
                at_ms: 22_000,
            },
        );
        assert!(matches!(late, Outcome::Done(Err(e)) if e.contains("stale fencing token")));
        assert_eq!(
            s.apply(
                9,
                &Command::Report {
                    job: "j".into(),
                    token: 7,
                    report: verdict(Verdict::Passed),
                    at_ms: 23_000
                }
            ),
            Outcome::Done(Ok(()))
        );
        let job = s.get("j").expect("job");
        assert_eq!(job.state, JobState::Passed);
        let outcomes: Vec<Option<AttemptOutcome>> =
            job.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [Some(AttemptOutcome::Lost), Some(AttemptOutcome::Passed)]
        );
        // and the job is final: another report, even with the right token, is refused
        assert!(matches!(
            s.apply(
                10,
                &Command::Report {
                    job: "j".into(),
                    token: 7,
                    report: verdict(Verdict::Failed),
                    at_ms: 0
                }
            ),
            Outcome::Done(Err(_))
        ));
    }

    #[test]
    fn cancel_ends_the_attempt_and_frees_the_slot() {
        let mut s = JobStore::default();
        s.apply(1, &submit("j"));
        s.apply(2, &submit("k"));
        s.apply(3, &Command::RegisterWorker(spec("a", 1, 0)));
        let assign = |job: &str, at_ms| Command::Assign {
            assignments: vec![(job.into(), "a".into())],
            at_ms,
        };
        s.apply(4, &assign("j", 1));
        s.apply(
            5,
            &Command::Cancel {
                id: "j".into(),
                at_ms: 2,
            },
        );
        let job = s.get("j").expect("job");
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Cancelled));
        assert_eq!(job.attempts[0].ended_at_ms, Some(2));
        assert!(
            matches!(s.apply(6, &assign("k", 3)), Outcome::Assigned(r) if r[0].is_ok()),
            "the cancelled job's slot is free again"
        );
    }

    #[test]
    fn a_job_with_no_verdict_long_past_its_timeout_fails_timed_out() {
        let mut s = JobStore::default();
        let plan = RawPlan {
            timeout: Some("1m".into()),
            ..match submit("j") {
                Command::Submit(mut v) => v.remove(0).plan,
                _ => unreachable!(),
            }
        };
        s.apply(
            1,
            &Command::Submit(vec![NewJob {
                id: "j".into(),
                plan,
                at_ms: 0,
            }]),
        );
        s.apply(2, &Command::RegisterWorker(spec("a", 1, 0)));
        s.apply(
            3,
            &Command::Assign {
                assignments: vec![("j".into(), "a".into())],
                at_ms: 1_000,
            },
        );
        // The worker keeps heartbeating, so it is not lost; but no verdict comes.
        let beat = |at_ms| Command::Heartbeat {
            name: "a".into(),
            at_ms,
        };
        let expire = |now_ms| Command::ExpireWorkers {
            now_ms,
            lease_ms: 10_000,
        };
        s.apply(4, &beat(60_000));
        assert_eq!(s.apply(5, &expire(65_000)), Outcome::Expired(vec![]));
        s.apply(6, &beat(75_000));
        assert_eq!(
            s.apply(7, &expire(75_000)),
            Outcome::Expired(vec!["j".into()])
        );
        let job = s.get("j").expect("job");
        assert_eq!(job.state, JobState::Failed);
        assert!(
            job.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("timed out"))
        );
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::TimedOut));
        assert_eq!(s.workers().next().map(|w| w.running.len()), Some(0));
    }

    /// An archived artifact: the attempt ends `deferred`, the job waits its retry time unplaced,
    /// more deferrals than `max_attempts` never end it, and it ends `error` only once
    /// [`RESTORE_WAIT_MS`] has passed since the first.
    #[test]
    fn a_job_whose_artifact_is_not_readable_yet_waits_and_is_tried_again() {
        let mut s = JobStore::default();
        s.apply(1, &submit("j"));
        s.apply(2, &Command::RegisterWorker(spec("a", 1, 0)));
        let not_yet = |at: u64| {
            let mut r = verdict(Verdict::Error);
            r.not_yet(
                "fetch",
                "s3://b/x.dump is in the GLACIER storage class",
                60_000,
            );
            Command::Report {
                job: "j".into(),
                token: 0,
                report: r,
                at_ms: at,
            }
        };
        assert_eq!(
            not_yet(0).min_version(),
            5,
            "a new kind of report: version 5"
        );
        let mut index = 2;
        let mut at = 1_000;
        for round in 0..(DEFAULT_MAX_ATTEMPTS + 2) {
            index += 1;
            let token = index;
            s.apply(
                index,
                &Command::Assign {
                    assignments: vec![("j".into(), "a".into())],
                    at_ms: at,
                },
            );
            index += 1;
            let Command::Report { report, .. } = not_yet(at) else {
                unreachable!()
            };
            let outcome = s.apply(
                index,
                &Command::Report {
                    job: "j".into(),
                    token,
                    report,
                    at_ms: at,
                },
            );
            assert_eq!(outcome, Outcome::Done(Ok(())), "round {round}");
            let job = s.get("j").expect("job");
            assert_eq!(job.state, JobState::Pending, "round {round}");
            assert_eq!(job.not_before_ms, Some(at + 60_000));
            assert_eq!(
                job.attempts.last().and_then(|a| a.outcome),
                Some(AttemptOutcome::Deferred)
            );
            assert!(job.report.is_none(), "a deferral is not a verdict");
            // Not placed before its next try; placed once it is due.
            assert!(s.pending_input(at + 59_999).next().is_none());
            assert!(!s.deferral_due(at + 59_999));
            assert!(s.deferral_due(at + 60_000));
            let (workers, _) = s.placement_input(at + 60_000);
            assert!(workers[0].healthy, "not the worker's fault");
            let views = s.worker_views();
            let why = s
                .waiting_reason(&views, s.get("j").expect("job"))
                .expect("why");
            assert!(
                why.contains("GLACIER") && why.contains("next try at"),
                "{why}"
            );
            assert_eq!(s.pending_input(at + 60_000).count(), 1);
            at += 60_000;
        }
        // A pass after the restore clears the wait.
        index += 1;
        let token = index;
        s.apply(
            index,
            &Command::Assign {
                assignments: vec![("j".into(), "a".into())],
                at_ms: at,
            },
        );
        assert_eq!(s.get("j").and_then(|j| j.reason.clone()), None);
        index += 1;
        s.apply(
            index,
            &Command::Report {
                job: "j".into(),
                token,
                report: verdict(Verdict::Passed),
                at_ms: at,
            },
        );
        assert_eq!(s.get("j").map(|j| j.state), Some(JobState::Passed));

        // Past the bound: error, with the reason.
        s.apply(100, &submit("k"));
        let defer_k = |s: &mut JobStore, index: u64, at: u64| {
            s.apply(
                index,
                &Command::Assign {
                    assignments: vec![("k".into(), "a".into())],
                    at_ms: at,
                },
            );
            let mut r = verdict(Verdict::Error);
            r.not_yet("fetch", "archived", 60_000);
            s.apply(
                index + 1,
                &Command::Report {
                    job: "k".into(),
                    token: index,
                    report: r,
                    at_ms: at,
                },
            );
        };
        defer_k(&mut s, 101, 0);
        defer_k(&mut s, 103, RESTORE_WAIT_MS - 1);
        assert_eq!(s.get("k").map(|j| j.state), Some(JobState::Pending));
        defer_k(&mut s, 105, RESTORE_WAIT_MS);
        let k = s.get("k").expect("k");
        assert_eq!(k.state, JobState::Error);
        assert!(
            k.reason
                .as_deref()
                .is_some_and(|r| r.contains("still not readable 2days")),
            "{:?}",
            k.reason
        );
    }

    /// A failed job is one event in the outbox (from command version 5 on) until `MarkSent`;
    /// a passed one is none, and nothing brings a sent event back.
    #[test]
    fn a_failed_job_is_one_event_in_the_outbox_until_marked_sent() {
        for version in [4, 5] {
            let mut s = JobStore::default();
            s.apply(1, &Command::SetVersion { version });
            s.apply(2, &submit("bad"));
            s.apply(3, &submit("good"));
            s.apply(4, &Command::RegisterWorker(spec("a", 2, 0)));
            s.apply(
                5,
                &Command::Assign {
                    assignments: vec![("bad".into(), "a".into()), ("good".into(), "a".into())],
                    at_ms: 1,
                },
            );
            let mut failed = verdict(Verdict::Failed);
            failed.fail("checksum", "blake3 differs");
            for (i, (job, report)) in [("bad", failed), ("good", verdict(Verdict::Passed))]
                .into_iter()
                .enumerate()
            {
                s.apply(
                    6 + i as u64,
                    &Command::Report {
                        job: job.into(),
                        token: 5,
                        report,
                        at_ms: 2,
                    },
                );
            }
            let events: Vec<_> = s.outbox().cloned().collect();
            if version == 4 {
                assert!(events.is_empty(), "no events before version 5");
                continue;
            }
            assert_eq!(events.len(), 1, "{events:?}");
            assert_eq!(events[0].id, "verdict.failed-bad");
            assert_eq!(
                events[0].reason.as_deref(),
                Some("checksum: blake3 differs")
            );
            s.apply(
                8,
                &Command::MarkSent {
                    ids: vec!["verdict.failed-bad".into()],
                },
            );
            assert_eq!(s.outbox().count(), 0);
            s.sync_pending("bad");
            assert_eq!(s.outbox().count(), 0, "a sent event never comes back");
        }
    }

    /// A worker silent past its lease, and one whose attempts keep erroring, are events.
    #[test]
    fn lost_and_unhealthy_workers_are_events() {
        let mut s = JobStore::default();
        s.apply(1, &Command::SetVersion { version: 5 });
        s.apply(2, &Command::RegisterWorker(spec("a", 1, 0)));
        s.apply(3, &Command::RegisterWorker(spec("b", 1, 0)));
        let mut index = 3;
        for round in 0..UNHEALTHY_AFTER {
            let id = format!("j{round}");
            index += 1;
            s.apply(index, &submit(&id));
            index += 1;
            let token = index;
            s.apply(
                index,
                &Command::Assign {
                    assignments: vec![(id.clone(), "b".into())],
                    at_ms: 1,
                },
            );
            let mut r = verdict(Verdict::Error);
            r.could_not_verify("provision", "no image rehearse/postgres:local");
            index += 1;
            s.apply(
                index,
                &Command::Report {
                    job: id,
                    token,
                    report: r,
                    at_ms: 2,
                },
            );
        }
        index += 1;
        s.apply(
            index,
            &Command::Heartbeat {
                name: "b".into(),
                at_ms: 20_000,
            },
        );
        index += 1;
        s.apply(
            index,
            &Command::ExpireWorkers {
                now_ms: 20_000,
                lease_ms: 10_000,
            },
        );
        let ids: Vec<&str> = s.outbox().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            ["worker.unhealthy-b-2", "worker.lost-a-20000"],
            "{ids:?}"
        );
        let unhealthy = s.outbox().next().expect("event");
        assert!(
            unhealthy
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("no image")),
            "{unhealthy:?}"
        );
    }

    #[test]
    fn gives_up_after_max_attempts_and_keeps_the_history() {
        let mut s = JobStore::default();
        s.apply(1, &submit("j"));
        let mut index = 1;
        for round in 0..DEFAULT_MAX_ATTEMPTS {
            let t = u64::from(round) * 100_000;
            index += 1;
            s.apply(index, &Command::RegisterWorker(spec("a", 1, t)));
            index += 1;
            s.apply(
                index,
                &Command::Assign {
                    assignments: vec![("j".into(), "a".into())],
                    at_ms: t,
                },
            );
            index += 1;
            s.apply(
                index,
                &Command::ExpireWorkers {
                    now_ms: t + 50_000,
                    lease_ms: 10_000,
                },
            );
        }
        let job = s.get("j").expect("job");
        // Losing the worker every time says nothing of the backup: could not verify.
        assert_eq!(job.state, JobState::Error);
        assert!(
            job.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("could not verify after 3 attempts")),
            "{:?}",
            job.reason
        );
        assert_eq!(job.attempts.len(), DEFAULT_MAX_ATTEMPTS as usize);
        assert!(
            job.attempts
                .iter()
                .all(|a| a.outcome == Some(AttemptOutcome::Lost))
        );
    }

    fn errored(reason: &str) -> Box<Report> {
        let mut r = Report::new("/b/x.dump", "postgres", "process", String::new());
        r.could_not_verify("provision", reason);
        r.finish(&Default::default(), 0, None);
        Box::new(r)
    }

    #[test]
    fn an_errored_attempt_requeues_on_another_worker_and_never_fails_the_job() {
        let mut s = JobStore::default();
        s.apply(1, &submit("j"));
        s.apply(2, &Command::RegisterWorker(spec("a", 1, 0)));
        s.apply(3, &Command::RegisterWorker(spec("b", 1, 0)));
        let (workers, pending) = s.placement_input(u64::MAX);
        let placed = crate::placement::place(&workers, &pending);
        assert_eq!(placed.assigned, [("j".into(), "a".into())]);
        s.apply(
            4,
            &Command::Assign {
                assignments: placed.assigned,
                at_ms: 1,
            },
        );
        let out = s.apply(
            5,
            &Command::Report {
                job: "j".into(),
                token: 4,
                report: errored("initdb template: cp: cannot create regular file"),
                at_ms: 2,
            },
        );
        assert_eq!(out, Outcome::Done(Ok(())));
        let job = s.get("j").expect("job");
        assert_eq!(job.state, JobState::Pending, "re-queued, not failed");
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Error));
        assert!(
            job.attempts[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("initdb template"))
        );
        assert_eq!(s.worker("a").map(|w| w.running.len()), Some(0));
        // the retry prefers the other worker
        let (workers, pending) = s.placement_input(u64::MAX);
        let placed = crate::placement::place(&workers, &pending);
        assert_eq!(placed.assigned, [("j".into(), "b".into())]);
    }

    #[test]
    fn errors_up_to_max_attempts_end_the_job_error_and_mark_the_worker_unhealthy() {
        let mut s = JobStore::default();
        s.apply(1, &Command::RegisterWorker(spec("a", 1, 0)));
        let mut index = 1;
        for job in ["j", "k"] {
            index += 1;
            s.apply(index, &submit(job));
            for _ in 0..DEFAULT_MAX_ATTEMPTS {
                index += 1;
                s.apply(
                    index,
                    &Command::Assign {
                        assignments: vec![(job.into(), "a".into())],
                        at_ms: index,
                    },
                );
                let token = index;
                index += 1;
                s.apply(
                    index,
                    &Command::Report {
                        job: job.into(),
                        token,
                        report: errored("no extension postgis"),
                        at_ms: index,
                    },
                );
            }
        }
        let job = s.get("j").expect("job");
        assert_eq!(job.state, JobState::Error);
        assert!(
            job.report
                .as_ref()
                .is_some_and(|r| r.verdict == Verdict::Error)
        );
        assert!(
            job.reason
                .as_deref()
                .is_some_and(|r| r.contains("3 could not verify") && r.contains("postgis")),
            "{:?}",
            job.reason
        );
        let worker = s.worker("a").expect("worker");
        assert!(!worker.healthy());
        assert_eq!(worker.recent_errors, 2 * DEFAULT_MAX_ATTEMPTS);
        assert_eq!(worker.last_error.as_deref(), Some("no extension postgis"));
        // a verdict on a backup (passed or failed) makes it healthy again
        index += 1;
        s.apply(index, &submit("m"));
        index += 1;
        s.apply(
            index,
            &Command::Assign {
                assignments: vec![("m".into(), "a".into())],
                at_ms: 0,
            },
        );
        let token = index;
        index += 1;
        s.apply(
            index,
            &Command::Report {
                job: "m".into(),
                token,
                report: verdict(Verdict::Failed),
                at_ms: 0,
            },
        );
        assert_eq!(s.get("m").map(|j| j.state), Some(JobState::Failed));
        assert!(s.worker("a").is_some_and(Worker::healthy));
    }

    #[test]
    fn assign_rechecks_slots_and_state_at_apply_time() {
        let mut s = JobStore::default();
        s.apply(1, &Command::Submit(vec![]));
        s.apply(2, &submit("x"));
        s.apply(3, &submit("y"));
        s.apply(4, &Command::RegisterWorker(spec("a", 1, 0)));
        let out = s.apply(
            5,
            &Command::Assign {
                assignments: vec![("x".into(), "a".into()), ("y".into(), "a".into())],
                at_ms: 0,
            },
        );
        assert!(
            matches!(out, Outcome::Assigned(r) if r[0].is_ok() && r[1].is_err()),
            "slots are never oversubscribed"
        );
        s.apply(6, &Command::Drain { name: "a".into() });
        assert!(
            matches!(s.apply(7, &Command::Assign { assignments: vec![("y".into(), "a".into())], at_ms: 0 }), Outcome::Assigned(r) if r[0].is_err())
        );
        assert!(matches!(
            s.apply(
                8,
                &Command::Heartbeat {
                    name: "ghost".into(),
                    at_ms: 0
                }
            ),
            Outcome::Done(Err(_))
        ));
    }

    fn command() -> impl Strategy<Value = Command> {
        let job = prop::sample::select(vec!["j1", "j2", "j3"]);
        let worker = prop::sample::select(vec!["a", "b"]);
        prop_oneof![
            job.clone().prop_map(submit),
            (worker.clone(), 1u32..3, 0u64..100)
                .prop_map(|(w, slots, t)| Command::RegisterWorker(spec(w, slots, t * 1000))),
            (worker.clone(), 0u64..100).prop_map(|(w, t)| Command::Heartbeat {
                name: w.into(),
                at_ms: t * 1000
            }),
            prop::collection::vec((job.clone(), worker), 1..3).prop_map(|a| Command::Assign {
                assignments: a
                    .into_iter()
                    .map(|(j, w)| (j.to_owned(), w.to_owned()))
                    .collect(),
                at_ms: 0
            }),
            // Tokens below 1000 are resolved against the tokens actually issued (see `resolve`);
            // the others stay as they are: stale or made up.
            (job.clone(), 0u64..1100, 0u8..3).prop_map(|(j, token, v)| Command::Report {
                job: j.into(),
                token,
                report: verdict([Verdict::Passed, Verdict::Failed, Verdict::Error][v as usize]),
                at_ms: 0
            }),
            (job, 0u64..1100).prop_map(|(j, token)| Command::Progress {
                job: j.into(),
                token,
                phase: "restore".into(),
                at_ms: 0
            }),
            (0u64..100).prop_map(|t| Command::ExpireWorkers {
                now_ms: t * 1000,
                lease_ms: 10_000
            }),
            prop::sample::select(vec!["j1", "j2", "j3"]).prop_map(|j| Command::Cancel {
                id: j.into(),
                at_ms: 0
            }),
        ]
    }

    /// A report's or progress's token below 1000 picks one of the tokens issued so far (the
    /// index of an `Assign` entry), so most messages carry a token some attempt really had.
    fn resolve(cmd: &Command, issued: &[u64]) -> Command {
        let pick = |t: u64| {
            if t < 1000 && !issued.is_empty() {
                issued[t as usize % issued.len()]
            } else {
                t
            }
        };
        match cmd {
            Command::Report {
                job,
                token,
                report,
                at_ms,
            } => Command::Report {
                job: job.clone(),
                token: pick(*token),
                report: report.clone(),
                at_ms: *at_ms,
            },
            Command::Progress {
                job,
                token,
                phase,
                at_ms,
            } => Command::Progress {
                job: job.clone(),
                token: pick(*token),
                phase: phase.clone(),
                at_ms: *at_ms,
            },
            Command::Batch(cs) => Command::Batch(cs.iter().map(|c| resolve(c, issued)).collect()),
            other => other.clone(),
        }
    }

    /// Single commands, and batches of them (as the leader gathers fleet messages).
    fn entry() -> impl Strategy<Value = Command> {
        prop_oneof![
            4 => command(),
            1 => prop::collection::vec(command(), 0..4).prop_map(Command::Batch),
        ]
    }

    proptest! {
        /// Whatever arrives, in any order: a job has at most one accepted verdict, a verdict is
        /// only ever accepted with the current attempt's token, no worker runs more than its slots,
        /// and a job's running attempt is on the worker that lists it.
        #[test]
        fn at_most_one_accepted_verdict_and_no_oversubscription(log in prop::collection::vec(entry(), 0..60)) {
            let mut s = JobStore::default();
            let mut accepted: BTreeMap<(String, u64), u32> = BTreeMap::new();
            let mut issued: Vec<u64> = Vec::new();
            for (i, raw) in log.iter().enumerate() {
                let index = i as u64 + 1;
                let cmd = &resolve(raw, &issued);
                let current = if let Command::Report { job, .. } = cmd { s.get(job).and_then(|j| j.attempts.last().map(|a| a.token)) } else { None };
                let out = s.apply(index, cmd);
                if matches!(cmd, Command::Assign { .. }) {
                    issued.push(index);
                }
                if let (Command::Report { token, .. }, Outcome::Done(Ok(()))) = (cmd, &out) {
                    prop_assert_eq!(Some(*token), current, "accepted with a token that was not current");
                }
                let results: Vec<(&Command, &Outcome)> = match (cmd, &out) {
                    (Command::Batch(cs), Outcome::Batch(os)) => cs.iter().zip(os).collect(),
                    (c, o) => vec![(c, o)],
                };
                for (c, o) in results {
                    if let (Command::Report { job, token, report, .. }, Outcome::Done(Ok(()))) = (c, o) {
                        *accepted.entry((job.clone(), *token)).or_default() += 1;
                        // Inside a batch too: the report ended the attempt that had its token,
                        // with the outcome it carried.
                        let j = s.get(job).expect("reported job exists");
                        let attempt = j.attempts.iter().find(|a| a.token == *token);
                        let want = match report.verdict {
                            Verdict::Passed => AttemptOutcome::Passed,
                            Verdict::Failed => AttemptOutcome::Failed,
                            Verdict::Error => AttemptOutcome::Error,
                        };
                        prop_assert!(attempt.is_some_and(|a| a.outcome == Some(want) && a.ended_at_ms.is_some()), "report with token {} accepted but no attempt of {} ended by it: {:?}", token, job, j.attempts);
                    }
                }
                let queued: Vec<&str> = s.pending().map(|j| j.id.as_str()).collect();
                let pending: Vec<&str> = s.list(None).into_iter().filter(|j| j.state == JobState::Pending).map(|j| j.id.as_str()).collect();
                prop_assert_eq!(queued, pending, "the pending queue is the pending jobs, in order");
                let round_trip: JobStore = serde_json::from_str(&serde_json::to_string(&s).expect("encode")).expect("decode");
                prop_assert_eq!(&round_trip, &s, "the queue is rebuilt when the state is read back");
                for j in s.list(None) {
                    let open = j.attempts.last().is_some_and(|a| a.ended_at_ms.is_none());
                    prop_assert!(!(j.state.is_final() && open), "final job {} has an open attempt", j.id);
                }
                for w in s.workers() {
                    prop_assert!(w.running.len() as u32 <= w.spec.slots, "worker {} over its slots", w.spec.name);
                    for j in &w.running {
                        let job = s.get(j).expect("running job exists");
                        prop_assert_eq!(job.attempts.last().map(|a| a.worker.as_str()), Some(w.spec.name.as_str()));
                    }
                }
            }
            prop_assert!(accepted.values().all(|n| *n <= 1), "an attempt got two accepted verdicts: {:?}", accepted);
            // A job's final verdict: at most one accepted passed/failed report per job.
            let mut finals: BTreeMap<&str, u32> = BTreeMap::new();
            for j in s.list(None) {
                for a in &j.attempts {
                    if matches!(a.outcome, Some(AttemptOutcome::Passed | AttemptOutcome::Failed)) {
                        *finals.entry(j.id.as_str()).or_default() += 1;
                    }
                }
            }
            prop_assert!(finals.values().all(|n| *n <= 1), "a job has two verdicts on its backup: {:?}", finals);
        }
    }
}
