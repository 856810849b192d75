//! DR exercises in the replicated state: part of [`JobStore`]'s state machine (pure); the step
//! rules themselves are in [`crate::exercise`].
//!
//! - `StartExercise` creates the exercise and submits the jobs of its first steps in the same
//!   entry; every later job is submitted when the job before it ends ([`JobStore::exercise_job_changed`],
//!   from `sync_pending`), in the entry that ended it. Job ids derive from (exercise, step,
//!   attempt): replaying the log can never double one.
//! - Steps run as ordinary jobs (placement, leases, fencing, retries elsewhere on `error`), pinned
//!   to the exercise's region.
//! - Gates end by `ApproveGate`, or by `ExpireGates`, which the leader proposes once a gate's
//!   timeout has passed.
//! - The state keeps the running exercises and the last [`KEEP_ENDED`] ended ones.

use serde::{Deserialize, Serialize};

use crate::drill::JobResult;
use crate::exercise::{Exercise, ExerciseSpec, JobEnd, StepJob};
use crate::jobs::{JobStore, NewJob};

/// Ended exercises the state keeps (the oldest leave first).
pub const KEEP_ENDED: usize = 200;

/// The command that starts an exercise, as the log carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub id: String,
    pub spec: ExerciseSpec,
    pub at_ms: u64,
}

/// Job id → the exercise it belongs to. Derived from the exercises.
pub(crate) fn index_jobs(
    exercises: &std::collections::BTreeMap<String, Exercise>,
) -> std::collections::BTreeMap<String, String> {
    exercises
        .values()
        .flat_map(|e| e.jobs().map(|j| (j.to_owned(), e.id.clone())))
        .collect()
}

impl JobStore {
    /// Exercises, oldest first.
    pub fn exercises(&self) -> Vec<&Exercise> {
        let mut all: Vec<&Exercise> = self.exercises.values().collect();
        all.sort_by(|a, b| {
            a.started_at_ms
                .cmp(&b.started_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    pub fn exercise(&self, id: &str) -> Option<&Exercise> {
        self.exercises.get(id)
    }

    /// The empty entry a newly elected leader appends, at `index` in `term`: running exercises
    /// count it, and it is a `leader.changed` notification (every replica sees the same entries,
    /// so every replica counts the same).
    pub fn new_leader(&mut self, index: u64, term: u64) {
        if index <= self.applied() {
            return;
        }
        self.skip(index);
        self.notify_leader_changed(index, term);
        for e in self.exercises.values_mut() {
            if !e.state.is_final() {
                e.leader_changes += 1;
            }
        }
    }

    /// Gates past their timeout at `now_ms` (the leader proposes `ExpireGates` for them).
    pub fn overdue_gates(&self, now_ms: u64) -> bool {
        self.exercises
            .values()
            .any(|e| !e.state.is_final() && !e.overdue_gates(now_ms).is_empty())
    }

    fn exercise_mut(&mut self, id: &str) -> Result<&mut Exercise, String> {
        self.exercises
            .get_mut(id)
            .ok_or_else(|| format!("no exercise {id:?}"))
    }

    pub(crate) fn start_exercise(&mut self, index: u64, start: &Start) -> Result<(), String> {
        if let Some(existing) = self.exercises.get(&start.id) {
            // A client retrying after a leader change: the same exercise.
            return if existing.spec == start.spec {
                Ok(())
            } else {
                Err(format!(
                    "exercise {} already exists with another definition",
                    start.id
                ))
            };
        }
        let spec = start.spec.clone().checked().map_err(|e| e.to_string())?;
        let mut exercise = Exercise::new(start.id.clone(), spec, start.at_ms);
        let jobs = exercise.advance(start.at_ms);
        self.exercises.insert(start.id.clone(), exercise);
        self.submit_steps(index, &start.id, jobs, start.at_ms);
        self.settle_exercises();
        Ok(())
    }

    fn submit_steps(&mut self, index: u64, exercise: &str, jobs: Vec<StepJob>, at_ms: u64) {
        for job in jobs {
            self.exercise_jobs
                .insert(job.id.clone(), exercise.to_owned());
            let new = NewJob {
                id: job.id,
                plan: job.plan,
                at_ms,
            };
            // Ids derive from (exercise, step, attempt) and plans were checked at the start:
            // a refusal here would be a bug, and the step then waits for an abort.
            let _ = self.submit(index, &new);
        }
    }

    pub(crate) fn approve_gate(
        &mut self,
        index: u64,
        id: &str,
        step: &str,
        by: &str,
        at_ms: u64,
    ) -> Result<(), String> {
        if by.trim().is_empty() {
            return Err("say who approves (--by)".into());
        }
        let jobs = self.exercise_mut(id)?.approve(step, by.trim(), at_ms)?;
        self.submit_steps(index, id, jobs, at_ms);
        self.settle_exercises();
        Ok(())
    }

    pub(crate) fn abort_exercise(
        &mut self,
        id: &str,
        by: &str,
        reason: &str,
        at_ms: u64,
    ) -> Result<(), String> {
        let jobs = self.exercise_mut(id)?.abort(by, reason, at_ms)?;
        // The workers see the attempts gone from their assignments and stop the sandboxes.
        for job in jobs {
            let _ = self.cancel(&job, at_ms);
        }
        self.settle_exercises();
        Ok(())
    }

    pub(crate) fn expire_gates(&mut self, index: u64, now_ms: u64) {
        let ids: Vec<String> = self
            .exercises
            .values()
            .filter(|e| !e.state.is_final() && !e.overdue_gates(now_ms).is_empty())
            .map(|e| e.id.clone())
            .collect();
        for id in ids {
            let jobs = match self.exercises.get_mut(&id) {
                Some(e) => e.expire_gates(now_ms),
                None => continue,
            };
            self.submit_steps(index, &id, jobs, now_ms);
        }
        self.settle_exercises();
    }

    /// A job changed state: if it belongs to an exercise and has ended, its step moves on (and
    /// the jobs of the steps that can start now are submitted in this same entry).
    pub(crate) fn exercise_job_changed(&mut self, job_id: &str) {
        let Some(exercise) = self.exercise_jobs.get(job_id).cloned() else {
            return;
        };
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        if !job.state.is_final() {
            return;
        }
        let at_ms = job.updated_at_ms;
        let end = JobEnd {
            state: job.state.as_str().to_owned(),
            worker: job.attempts.last().map(|a| a.worker.clone()),
            result: JobResult::from_report(job_id, job.report.as_ref(), job.reason.as_deref()),
            at_ms,
        };
        let Some(e) = self.exercises.get_mut(&exercise) else {
            return;
        };
        let jobs = e.job_ended(job_id, end);
        let index = self.applied();
        self.submit_steps(index, &exercise, jobs, at_ms);
        self.settle_exercises();
    }

    /// Ends the drill runs whose exercise has ended; keeps the running exercises and the last
    /// [`KEEP_ENDED`] ended ones.
    fn settle_exercises(&mut self) {
        let unnotified: Vec<String> = self
            .exercises
            .values()
            .filter(|e| e.state.is_final() && !e.notified)
            .map(|e| e.id.clone())
            .collect();
        for id in unnotified {
            self.notify_exercise_ended(&id);
            if let Some(e) = self.exercises.get_mut(&id) {
                e.notified = true;
            }
        }
        let ended: Vec<String> = self
            .drill_exercises
            .keys()
            .filter(|id| self.exercises.get(*id).is_none_or(|e| e.state.is_final()))
            .cloned()
            .collect();
        for id in ended {
            self.drill_exercise_ended(&id);
        }
        let mut ended: Vec<(u64, String)> = self
            .exercises
            .values()
            .filter(|e| e.state.is_final())
            .map(|e| (e.finished_at_ms.unwrap_or(0), e.id.clone()))
            .collect();
        if ended.len() <= KEEP_ENDED {
            return;
        }
        ended.sort();
        for (_, id) in &ended[..ended.len() - KEEP_ENDED] {
            if let Some(e) = self.exercises.remove(id) {
                for job in e.jobs() {
                    self.exercise_jobs.remove(job);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::jobs::{Command, JobState, Outcome};
    use crate::report::{Report, Verdict};

    const PLAN: &str = "[artifact]\nurl = \"/b/db.dump\"\nengine = \"postgres\"\n";
    const TEXT: &str = "[exercise]\nname = \"shop\"\nregion = \"us\"\n[[step]]\nname = \"db\"\nplan = \"p\"\ncritical = true\n[[step]]\nname = \"gate\"\nkind = \"gate\"\nafter = [\"db\"]\n[[step]]\nname = \"app\"\nplan = \"p\"\nafter = [\"gate\"]\n";

    fn start(id: &str) -> Command {
        let spec = ExerciseSpec::from_toml(TEXT, |_| Ok(PLAN.to_owned())).expect("spec");
        Command::StartExercise(Box::new(Start {
            id: id.into(),
            spec,
            at_ms: 1_000,
        }))
    }

    /// Runs `job` on worker "w" to a verdict at `at_ms`; returns the next free index.
    fn run(s: &mut JobStore, index: u64, job: &str, verdict: Verdict, at_ms: u64) -> u64 {
        s.apply(
            index,
            &Command::Assign {
                assignments: vec![(job.into(), "w".into())],
                at_ms: 2_000,
            },
        );
        let mut r = Report::new("/b/db.dump", "postgres", "process", String::new());
        if verdict == Verdict::Failed {
            r.fail("restore", "bad dump");
        }
        r.finish(&Default::default(), 0, None);
        let out = s.apply(
            index + 1,
            &Command::Report {
                job: job.into(),
                token: index,
                report: Box::new(r),
                at_ms,
            },
        );
        assert_eq!(out, Outcome::Done(Ok(())));
        index + 2
    }

    fn store() -> JobStore {
        let mut s = JobStore::default();
        s.apply(
            1,
            &Command::RegisterWorker(crate::fleet::WorkerSpec {
                name: "w".into(),
                incarnation: 1,
                region: "us".into(),
                labels: BTreeMap::new(),
                slots: 2,
                at_ms: 0,
            }),
        );
        s
    }

    #[test]
    fn steps_become_jobs_as_the_ones_before_end_and_survive_a_snapshot() {
        let mut s = store();
        assert_eq!(s.apply(2, &start("ex")), Outcome::Done(Ok(())));
        // A retried start (same id, same definition) is the same exercise.
        assert_eq!(s.apply(3, &start("ex")), Outcome::Done(Ok(())));
        let db = s.get("ex-s0-a1").expect("db's job");
        assert_eq!(db.state, JobState::Pending);
        assert_eq!(
            db.plan.placement.as_ref().and_then(|p| p.region.as_deref()),
            Some("us")
        );
        let next = run(&mut s, 4, "ex-s0-a1", Verdict::Passed, 3_000);
        let ex = s.exercise("ex").expect("exercise");
        assert_eq!(ex.steps[1].state, crate::exercise::StepState::Running);
        assert!(s.get("ex-s2-a1").is_none(), "app waits for the gate");

        // A replica that installs a snapshot knows which exercise its jobs belong to.
        let copy: JobStore =
            serde_json::from_str(&serde_json::to_string(&s).expect("encode")).expect("decode");
        assert_eq!(copy, s);
        let mut s = copy;
        assert_eq!(
            s.apply(
                next,
                &Command::ApproveGate {
                    id: "ex".into(),
                    step: "gate".into(),
                    by: "ann".into(),
                    at_ms: 5_000,
                }
            ),
            Outcome::Done(Ok(()))
        );
        assert_eq!(s.get("ex-s2-a1").map(|j| j.created_index), Some(next));
        run(&mut s, next + 1, "ex-s2-a1", Verdict::Passed, 9_000);
        let r = s.exercise("ex").expect("exercise").report();
        assert_eq!(r.verdict, Some(Verdict::Passed));
        assert_eq!(r.rto_ms, Some(8_000));
        assert_eq!(r.gate_wait_ms, 2_000, "from db's end to the approval");
        assert_eq!(r.machine_rto_ms, Some(6_000));
        assert_eq!(r.critical_path, ["db", "gate", "app"]);
        assert_eq!(r.steps[0].worker.as_deref(), Some("w"));
    }

    #[test]
    fn an_abort_cancels_the_running_job_and_unknown_ids_are_refused() {
        let mut s = store();
        s.apply(2, &start("ex"));
        s.apply(
            3,
            &Command::Assign {
                assignments: vec![("ex-s0-a1".into(), "w".into())],
                at_ms: 2_000,
            },
        );
        let abort = |id: &str| Command::AbortExercise {
            id: id.into(),
            by: "ops".into(),
            reason: "enough".into(),
            at_ms: 4_000,
        };
        assert_eq!(
            s.apply(4, &abort("nope")),
            Outcome::Done(Err("no exercise \"nope\"".into()))
        );
        s.apply(5, &Command::SetVersion { version: 5 });
        assert_eq!(s.apply(6, &abort("ex")), Outcome::Done(Ok(())));
        assert_eq!(
            s.get("ex-s0-a1").map(|j| j.state),
            Some(JobState::Cancelled)
        );
        let ex = s.exercise("ex").expect("exercise");
        assert_eq!(ex.state, crate::exercise::ExerciseState::Aborted);
        assert!(s.workers["w"].running.is_empty(), "the slot is free again");
        let events: Vec<_> = s
            .outbox()
            .filter(|e| e.kind == "exercise.finished")
            .collect();
        assert_eq!(events.len(), 1, "one event for its end: {events:?}");
        assert_eq!(events[0].exercise.as_deref(), Some("ex"));
        s.apply(7, &abort("ex"));
        assert_eq!(
            s.outbox().filter(|e| e.kind == "exercise.finished").count(),
            1,
            "and only one"
        );
    }

    #[test]
    fn running_exercises_count_the_leaders_elected_while_they_run() {
        let mut s = store();
        s.apply(2, &start("ex"));
        s.new_leader(3, 2);
        s.new_leader(3, 2);
        assert_eq!(
            s.exercise("ex").map(|e| e.leader_changes),
            Some(1),
            "an index counts once"
        );
        s.apply(
            4,
            &Command::AbortExercise {
                id: "ex".into(),
                by: "o".into(),
                reason: String::new(),
                at_ms: 9,
            },
        );
        s.new_leader(5, 3);
        // Below command version 5: no notification.
        assert_eq!(s.outbox().count(), 0);
        let r = s.exercise("ex").expect("exercise").report();
        assert_eq!(r.leader_changes, 1, "an ended exercise counts no more");
        assert!(
            r.deviations
                .iter()
                .any(|d| d.contains("leader changed 1 time"))
        );
    }

    #[test]
    fn a_new_leader_is_one_notification_per_election() {
        let mut s = store();
        s.apply(2, &Command::SetVersion { version: 5 });
        s.new_leader(3, 2);
        s.new_leader(3, 2);
        s.new_leader(4, 3);
        let ids: Vec<&str> = s.outbox().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["leader.changed-2-3", "leader.changed-3-4"]);
    }

    #[test]
    fn the_leader_fails_a_gate_past_its_timeout() {
        let mut s = store();
        s.apply(2, &start("ex"));
        run(&mut s, 3, "ex-s0-a1", Verdict::Passed, 3_000);
        let day = crate::exercise::DEFAULT_GATE_TIMEOUT.as_millis() as u64;
        assert!(!s.overdue_gates(3_000 + day - 1));
        assert!(s.overdue_gates(3_000 + day));
        s.apply(
            10,
            &Command::ExpireGates {
                now_ms: 3_000 + day,
            },
        );
        let ex = s.exercise("ex").expect("exercise");
        assert_eq!(ex.state, crate::exercise::ExerciseState::Failed);
        assert_eq!(
            ex.steps[2].state,
            crate::exercise::StepState::Halted,
            "app came after the gate"
        );
        assert!(s.get("ex-s2-a1").is_none());
    }
}
