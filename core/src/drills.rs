//! Drills in the replicated state: their definitions, their runs (the history), and how a run
//! follows its jobs. Part of [`JobStore`]'s state machine (pure); the decisions themselves are in
//! [`crate::drill`].
//!
//! - A tick (`Command::DrillTick`) is applied once: a scheduled tick at or before the drill's
//!   `last_tick_ms` changes nothing, and its jobs' ids derive from (drill, tick), so a new leader
//!   re-deriving due ticks from the log can never double a run.
//! - A run ends when its last job ends ([`JobStore::drill_job_changed`]): results are copied
//!   into the run (they outlive the jobs), drift is checked against the last passed run.
//! - An ended run goes to the history ([`crate::history`]); the state keeps the running runs and
//!   the last [`RECENT_RUNS`] ended ones. History older than the drill's `keep` is pruned when
//!   the drill next ticks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drill::{self, Drill, DrillSpec, JobResult, Pause, Run, RunOutcome};
use crate::history::{HistoryOp, RECENT_RUNS};
use crate::jobs::{JobStore, NewJob};

/// The leader's decision for one tick, as the log carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub drill: String,
    pub tick_ms: i64,
    /// A run asked for by hand (`drill run`): it does not move the schedule.
    pub manual: bool,
    /// When its jobs could start at the earliest (tick + jitter).
    pub start_ms: i64,
    /// The run's jobs (empty when it does not fire).
    pub jobs: Vec<NewJob>,
    /// For a drill of an exercise: the exercise the run starts (id from drill and tick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exercise: Option<Box<crate::exercises::Start>>,
    /// Why this tick does not fire.
    pub skipped: Option<String>,
    /// Earlier ticks nobody acted on: (count, first, last).
    pub missed: Option<(u64, i64, i64)>,
    /// The definition it ran.
    pub version: String,
    pub at_ms: u64,
}

/// Exercise id → the run that started it (drills of an exercise).
pub(crate) fn index_exercises(
    runs: &BTreeMap<String, Vec<Run>>,
) -> BTreeMap<String, (String, i64, bool)> {
    runs.values()
        .flatten()
        .filter(|r| r.outcome == RunOutcome::Running)
        .filter_map(|r| {
            r.exercise
                .clone()
                .map(|e| (e, (r.drill.clone(), r.tick_ms, r.manual)))
        })
        .collect()
}

/// Job id → the run it belongs to.
pub(crate) fn index_jobs(
    runs: &BTreeMap<String, Vec<Run>>,
) -> BTreeMap<String, (String, i64, bool)> {
    runs.values()
        .flatten()
        .flat_map(|r| {
            r.jobs
                .iter()
                .map(|j| (j.clone(), (r.drill.clone(), r.tick_ms, r.manual)))
        })
        .collect()
}

impl JobStore {
    pub fn drills(&self) -> impl Iterator<Item = &Drill> {
        self.drills.values()
    }

    pub fn drill(&self, name: &str) -> Option<&Drill> {
        self.drills.get(name)
    }

    /// A drill's runs, oldest first (also after the drill was deleted, until `keep` runs out).
    pub fn runs(&self, name: &str) -> &[Run] {
        self.runs.get(name).map_or(&[], Vec::as_slice)
    }

    /// Names with runs in the history (deleted drills' included, until `keep` runs out).
    pub fn drills_with_history(&self) -> impl Iterator<Item = &str> {
        self.runs
            .iter()
            .filter(|(_, runs)| !runs.is_empty())
            .map(|(n, _)| n.as_str())
    }

    /// Whether a run of the drill has not ended yet.
    pub fn drill_running(&self, name: &str) -> bool {
        self.runs(name)
            .iter()
            .rev()
            .any(|r| r.outcome == RunOutcome::Running)
    }

    pub(crate) fn apply_drill(&mut self, spec: &DrillSpec, at_ms: u64) -> Result<(), String> {
        match self.drills.get_mut(&spec.name) {
            Some(d) => {
                d.spec = spec.clone();
                d.updated_at_ms = at_ms;
            }
            None => {
                // Ticks before its creation are not due.
                self.drills.insert(
                    spec.name.clone(),
                    Drill {
                        spec: spec.clone(),
                        created_at_ms: at_ms,
                        updated_at_ms: at_ms,
                        last_tick_ms: at_ms as i64,
                        paused: None,
                        tested: Default::default(),
                        overdue_notified: None,
                    },
                );
            }
        }
        Ok(())
    }

    fn drill_mut(&mut self, name: &str) -> Result<&mut Drill, String> {
        self.drills
            .get_mut(name)
            .ok_or_else(|| format!("no drill {name:?}"))
    }

    pub(crate) fn pause_drill(
        &mut self,
        name: &str,
        reason: &str,
        until_ms: Option<u64>,
        at_ms: u64,
    ) -> Result<(), String> {
        let d = self.drill_mut(name)?;
        d.paused = Some(Pause {
            reason: reason.to_owned(),
            at_ms,
            until_ms,
        });
        d.updated_at_ms = at_ms;
        Ok(())
    }

    pub(crate) fn resume_drill(&mut self, name: &str, at_ms: u64) -> Result<(), String> {
        let d = self.drill_mut(name)?;
        if d.paused.take().is_none() {
            return Err(format!("drill {name:?} is not paused"));
        }
        // Ticks that came while it was paused are not due: no immediate fire.
        d.last_tick_ms = d.last_tick_ms.max(at_ms as i64);
        d.updated_at_ms = at_ms;
        Ok(())
    }

    pub(crate) fn delete_drill(&mut self, name: &str, _at_ms: u64) -> Result<(), String> {
        self.drills
            .remove(name)
            .map(drop)
            .ok_or_else(|| format!("no drill {name:?}"))
    }

    pub(crate) fn drill_tick(&mut self, index: u64, tick: &Tick) -> Result<(), String> {
        let drill = self
            .drills
            .get_mut(&tick.drill)
            .ok_or_else(|| format!("no drill {:?}", tick.drill))?;
        if !tick.manual {
            if tick.tick_ms <= drill.last_tick_ms {
                return Err(format!(
                    "tick {} of drill {:?} was dealt with already",
                    tick.tick_ms, tick.drill
                ));
            }
            drill.last_tick_ms = tick.tick_ms;
        }
        let keep_ms = drill.spec.keep_ms;
        let runs = self.runs.entry(tick.drill.clone()).or_default();
        if tick.manual && runs.iter().any(|r| r.manual && r.tick_ms == tick.tick_ms) {
            return Err("that manual run exists already".into());
        }
        let record = |outcome, reason: Option<String>, tick_ms, missed, jobs: Vec<String>| Run {
            exercise: None,
            drill: tick.drill.clone(),
            tick_ms,
            manual: tick.manual,
            created_at_ms: tick.at_ms,
            start_ms: tick.start_ms,
            finished_at_ms: (outcome != RunOutcome::Running).then_some(tick.at_ms),
            outcome,
            reason,
            version: tick.version.clone(),
            jobs,
            results: Vec::new(),
            missed,
            archived: false,
        };
        if let Some((count, first, last)) = tick.missed {
            runs.push(record(
                RunOutcome::Missed,
                Some(format!(
                    "{count} tick(s) passed while no coordinator could act on them in their window"
                )),
                last,
                Some((count, first, last)),
                Vec::new(),
            ));
        }
        if let Some(reason) = &tick.skipped {
            runs.push(record(
                RunOutcome::Skipped,
                Some(reason.clone()),
                tick.tick_ms,
                None,
                Vec::new(),
            ));
        } else if let Some(start) = &tick.exercise {
            let mut run = record(RunOutcome::Running, None, tick.tick_ms, None, Vec::new());
            run.exercise = Some(start.id.clone());
            runs.push(run);
            self.drill_exercises.insert(
                start.id.clone(),
                (tick.drill.clone(), tick.tick_ms, tick.manual),
            );
            self.start_exercise(index, start)?;
        } else if !tick.jobs.is_empty() {
            let ids: Vec<String> = tick.jobs.iter().map(|j| j.id.clone()).collect();
            runs.push(record(
                RunOutcome::Running,
                None,
                tick.tick_ms,
                None,
                ids.clone(),
            ));
            for id in &ids {
                self.drill_jobs
                    .insert(id.clone(), (tick.drill.clone(), tick.tick_ms, tick.manual));
            }
            for job in &tick.jobs {
                self.submit(index, job)?;
            }
        }
        self.settle(&tick.drill);
        // History past `keep` (a day of margin: a run ends after its tick).
        self.history_out.push(HistoryOp::Prune {
            drill: tick.drill.clone(),
            before_tick_ms: (tick.at_ms as i64)
                .saturating_sub(keep_ms as i64)
                .saturating_sub(86_400_000),
        });
        Ok(())
    }

    /// Sends the drill's newly ended runs to the history and keeps in the state only its running
    /// runs and the last [`RECENT_RUNS`] ended ones.
    fn settle(&mut self, name: &str) {
        let Some(runs) = self.runs.get_mut(name) else {
            return;
        };
        let mut ended = Vec::new();
        for r in runs
            .iter_mut()
            .filter(|r| r.outcome.is_final() && !r.archived)
        {
            r.archived = true;
            self.history_out.push(HistoryOp::Run(r.clone()));
            ended.push(r.clone());
        }
        for r in &ended {
            self.notify_run_ended(r);
        }
        let Some(runs) = self.runs.get_mut(name) else {
            return;
        };
        // The last passed run stays whatever happened since: drift is measured against it.
        let last_passed = runs.iter().rposition(|r| r.outcome == RunOutcome::Passed);
        let ended = runs.iter().filter(|r| r.outcome.is_final()).count();
        let mut drop = ended.saturating_sub(RECENT_RUNS);
        let mut gone = Vec::new();
        let mut i = 0;
        runs.retain(|r| {
            let keep = !(drop > 0 && r.outcome.is_final() && Some(i) != last_passed);
            i += 1;
            if !keep {
                drop -= 1;
                gone.extend(r.jobs.iter().cloned());
            }
            keep
        });
        for id in gone {
            self.drill_jobs.remove(&id);
        }
    }

    pub(crate) fn close_window(
        &mut self,
        drill: &str,
        tick_ms: i64,
        manual: bool,
        reason: &str,
        at_ms: u64,
    ) -> Result<(), String> {
        let run = self
            .run(drill, tick_ms, manual)
            .ok_or_else(|| format!("no run of drill {drill:?} at {tick_ms}"))?;
        if run.outcome != RunOutcome::Running {
            return Err("the run ended already".into());
        }
        let jobs = run.jobs.clone();
        let waiting: Vec<String> = jobs
            .iter()
            .filter(|j| {
                self.jobs
                    .get(*j)
                    .is_some_and(|j| j.state == crate::jobs::JobState::Pending)
            })
            .cloned()
            .collect();
        if waiting.len() == jobs.len() {
            // Nothing started: the run is skipped (its jobs are cancelled, never run late).
            if let Some(run) = self.run_mut(drill, tick_ms, manual) {
                run.outcome = RunOutcome::Skipped;
                run.reason = Some(format!("not started within its window: {reason}"));
                run.finished_at_ms = Some(at_ms);
            }
        }
        for id in waiting {
            let _ = self.cancel(&id, at_ms);
        }
        self.settle(drill);
        Ok(())
    }

    /// The run of `drill` at `tick_ms` (scheduled or manual), in the state.
    pub(crate) fn run(&self, drill: &str, tick_ms: i64, manual: bool) -> Option<&Run> {
        self.runs
            .get(drill)?
            .iter()
            .rev()
            .find(|r| r.tick_ms == tick_ms && r.manual == manual)
    }

    fn run_mut(&mut self, drill: &str, tick_ms: i64, manual: bool) -> Option<&mut Run> {
        self.runs
            .get_mut(drill)?
            .iter_mut()
            .rev()
            .find(|r| r.tick_ms == tick_ms && r.manual == manual)
    }

    /// An exercise a drill's run started has ended: the run ends with its verdict, and the
    /// results of its plan steps.
    pub(crate) fn drill_exercise_ended(&mut self, exercise: &str) {
        let Some((drill, tick_ms, manual)) = self.drill_exercises.get(exercise).cloned() else {
            return;
        };
        let Some(ex) = self.exercises.get(exercise) else {
            return;
        };
        if !ex.state.is_final() {
            return;
        }
        let report = ex.report();
        let results: Vec<JobResult> = ex
            .steps
            .iter()
            .filter_map(|s| s.attempts.last()?.end.as_ref().map(|e| e.result.clone()))
            .collect();
        let at_ms = ex.finished_at_ms.unwrap_or(ex.started_at_ms);
        let (outcome, reason) = match report.verdict {
            Some(crate::report::Verdict::Passed) => (RunOutcome::Passed, None),
            Some(crate::report::Verdict::Failed) => (RunOutcome::Failed, report.reason),
            _ => (RunOutcome::Error, report.reason),
        };
        self.drill_exercises.remove(exercise);
        if let Some(run) = self.run_mut(&drill, tick_ms, manual)
            && run.outcome == RunOutcome::Running
        {
            run.outcome = outcome;
            run.reason = reason;
            run.results = results;
            run.finished_at_ms = Some(at_ms);
        }
        self.settle(&drill);
    }

    /// The drill whose run a job belongs to, if any.
    pub fn drill_of(&self, job_id: &str) -> Option<&str> {
        self.drill_jobs.get(job_id).map(|(d, _, _)| d.as_str())
    }

    /// A job changed state: if it belongs to a drill's run and the run's jobs have all ended,
    /// the run ends — with their results copied in, and drift checked against the last passed
    /// run of the same drill.
    pub(crate) fn drill_job_changed(&mut self, job_id: &str) {
        let Some((drill, tick_ms, manual)) = self.drill_jobs.get(job_id).cloned() else {
            return;
        };
        let Some(run) = self.run(&drill, tick_ms, manual) else {
            return;
        };
        if run.outcome != RunOutcome::Running {
            return;
        }
        let mut results = Vec::with_capacity(run.jobs.len());
        let mut last_change = 0;
        for id in &run.jobs {
            let Some(job) = self.jobs.get(id) else {
                return;
            };
            if !job.state.is_final() {
                return;
            }
            last_change = last_change.max(job.updated_at_ms);
            results.push(JobResult::from_report(
                id,
                job.report.as_ref(),
                job.reason.as_deref(),
            ));
        }
        let limit = self.drills.get(&drill).and_then(|d| d.spec.drift);
        let drifted = limit.and_then(|limit| {
            let previous = self
                .runs
                .get(&drill)?
                .iter()
                .rev()
                .find(|r| r.outcome == RunOutcome::Passed)?;
            let when = previous
                .finished_at_ms
                .and_then(|ms| chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64))
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default();
            let reasons: Vec<String> = results
                .iter()
                .zip(&previous.results)
                .filter_map(|(now, before)| drill::drift(&now.tables, &before.tables, &when, limit))
                .collect();
            (!reasons.is_empty()).then(|| format!("row counts drifted: {}", reasons.join("; ")))
        });
        let (outcome, reason) = drill::finish_run(&results, drifted);
        if let Some(d) = self.drills.get_mut(&drill) {
            for r in &results {
                if r.verdict == Some(crate::report::Verdict::Passed) && !r.artifact_url.is_empty() {
                    d.tested.insert(r.artifact_url.clone(), last_change as i64);
                }
            }
        }
        if let Some(run) = self.run_mut(&drill, tick_ms, manual) {
            run.results = results;
            run.outcome = outcome;
            run.reason = reason;
            run.finished_at_ms = Some(last_change);
        }
        self.settle(&drill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Command, JobState, Outcome};
    use crate::report::{Report, TableRows, Verdict};

    const PLAN: &str = "[artifact]\nurl = \"/backups/shop.dump\"\nengine = \"postgres\"\n";

    fn spec(extra: &str) -> DrillSpec {
        DrillSpec::from_toml(
            &format!("[drill]\nname = \"shop\"\nschedule = \"*/10 * * * * *\"\nwindow = \"8s\"\nplan = \"p\"\n{extra}"),
            |_| Ok(PLAN.to_owned()),
        )
        .expect("spec")
    }

    fn tick(s: &JobStore, tick_ms: i64, at_ms: u64) -> Command {
        let d = s.drill("shop").expect("drill");
        Command::DrillTick(Box::new(Tick {
            exercise: None,
            drill: "shop".into(),
            tick_ms,
            manual: false,
            start_ms: tick_ms,
            jobs: d
                .spec
                .plans
                .iter()
                .enumerate()
                .map(|(i, plan)| NewJob {
                    id: drill::job_id("shop", tick_ms, i, false),
                    plan: plan.clone(),
                    at_ms,
                })
                .collect(),
            skipped: None,
            missed: None,
            version: d.spec.version.clone(),
            at_ms,
        }))
    }

    fn verdict(v: Verdict, orders: u64) -> Box<Report> {
        let mut r = Report::new("/backups/shop.dump", "postgres", "process", String::new());
        r.tables = vec![TableRows {
            name: "public.orders".into(),
            rows: orders,
        }];
        if v == Verdict::Error {
            r.could_not_verify("provision", "no image");
        }
        r.finish(&Default::default(), 0, None);
        Box::new(r)
    }

    /// Runs the job of the run at `tick_ms` on worker "w" to a report.
    fn finish(s: &mut JobStore, index: &mut u64, tick_ms: i64, report: Box<Report>) {
        let job = drill::job_id("shop", tick_ms, 0, false);
        *index += 1;
        s.apply(
            *index,
            &Command::Assign {
                assignments: vec![(job.clone(), "w".into())],
                at_ms: 0,
            },
        );
        let token = *index;
        *index += 1;
        let out = s.apply(
            *index,
            &Command::Report {
                job,
                token,
                report,
                at_ms: tick_ms as u64,
            },
        );
        assert_eq!(out, Outcome::Done(Ok(())));
    }

    fn store() -> (JobStore, u64) {
        let mut s = JobStore::default();
        s.apply(
            1,
            &Command::RegisterWorker(crate::fleet::WorkerSpec {
                name: "w".into(),
                incarnation: 1,
                region: "eu".into(),
                labels: BTreeMap::new(),
                slots: 1,
                at_ms: 0,
            }),
        );
        s.apply(
            2,
            &Command::ApplyDrill {
                spec: Box::new(spec("drift = \"10%\"\n")),
                at_ms: 0,
            },
        );
        (s, 2)
    }

    #[test]
    fn a_drill_of_an_exercise_starts_one_exercise_per_run_and_ends_with_it() {
        let spec = DrillSpec::from_toml(
            "[drill]\nname = \"dr\"\nschedule = \"0 9 1 */3 *\"\nexercise = \"dr/x.toml\"\n",
            |name| match name {
                "dr/x.toml" => Ok("[exercise]\nname = \"x\"\nregion = \"eu\"\n[[step]]\nname = \"db\"\nplan = \"db.toml\"\ncritical = true\n".into()),
                "dr/db.toml" => Ok(PLAN.into()),
                other => Err(format!("no {other}")),
            },
        )
        .expect("spec");
        assert!(spec.plans.is_empty() && spec.exercise.is_some());
        let (mut s, mut i) = store();
        i += 1;
        s.apply(
            i,
            &Command::ApplyDrill {
                spec: Box::new(spec),
                at_ms: 0,
            },
        );
        let d = s.drill("dr").expect("drill").clone();
        let start = crate::exercises::Start {
            id: "ex-dr-1".into(),
            spec: *d.spec.exercise.clone().expect("exercise"),
            at_ms: 5_000,
        };
        let t = Command::DrillTick(Box::new(Tick {
            drill: "dr".into(),
            tick_ms: 5_000,
            manual: true,
            start_ms: 5_000,
            jobs: Vec::new(),
            exercise: Some(Box::new(start)),
            skipped: None,
            missed: None,
            version: d.spec.version.clone(),
            at_ms: 5_000,
        }));
        assert_eq!(t.min_version(), 4);
        i += 1;
        assert_eq!(s.apply(i, &t), Outcome::Done(Ok(())));
        assert!(s.drill_running("dr"));
        assert_eq!(s.runs("dr")[0].exercise.as_deref(), Some("ex-dr-1"));
        // The run survives a snapshot (its exercise is found again) and ends with the exercise.
        let mut s: JobStore =
            serde_json::from_str(&serde_json::to_string(&s).expect("encode")).expect("decode");
        let job = "ex-dr-1-s0-a1";
        i += 1;
        s.apply(
            i,
            &Command::Assign {
                assignments: vec![(job.into(), "w".into())],
                at_ms: 6_000,
            },
        );
        let token = i;
        i += 1;
        let mut bad = verdict(Verdict::Passed, 5);
        bad.fail("restore", "the dump is cut short");
        bad.finish(&Default::default(), 0, None);
        s.apply(
            i,
            &Command::Report {
                job: job.into(),
                token,
                report: bad,
                at_ms: 7_000,
            },
        );
        let run = &s.runs("dr")[0];
        assert_eq!(run.outcome, RunOutcome::Failed);
        assert!(
            run.reason
                .as_deref()
                .is_some_and(|r| r.contains("\"db\" failed")),
            "{run:?}"
        );
        assert_eq!(run.results.len(), 1);
        assert!(!s.drill_running("dr"));
    }

    #[test]
    fn a_tick_is_applied_once_and_its_run_follows_its_job() {
        let (mut s, mut i) = store();
        i += 1;
        let t = tick(&s, 10_000, 10_000);
        assert_eq!(s.apply(i, &t), Outcome::Done(Ok(())));
        i += 1;
        assert!(
            matches!(s.apply(i, &t), Outcome::Done(Err(_))),
            "a second leader's same tick is refused"
        );
        assert_eq!(s.len(), 1, "one job, never two");
        assert!(s.drill_running("shop"));
        finish(&mut s, &mut i, 10_000, verdict(Verdict::Passed, 20_000));
        let run = &s.runs("shop")[0];
        assert_eq!(run.outcome, RunOutcome::Passed);
        assert_eq!(run.results[0].tables[0].rows, 20_000);
        assert!(!s.drill_running("shop"));
    }

    #[test]
    fn a_table_that_fell_past_the_drift_limit_fails_the_run() {
        let (mut s, mut i) = store();
        for (at, orders) in [(10_000, 20_000), (20_000, 19_000), (30_000, 12_000)] {
            i += 1;
            let t = tick(&s, at, at as u64);
            s.apply(i, &t);
            finish(&mut s, &mut i, at, verdict(Verdict::Passed, orders));
        }
        let outcomes: Vec<RunOutcome> = s.runs("shop").iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [RunOutcome::Passed, RunOutcome::Passed, RunOutcome::Failed]
        );
        let reason = s.runs("shop")[2].reason.clone().unwrap_or_default();
        assert!(
            reason.contains("public.orders fell from 19000 to 12000 rows (-37%)"),
            "{reason}"
        );
        assert_eq!(
            s.get(&drill::job_id("shop", 30_000, 0, false))
                .map(|j| j.state),
            Some(JobState::Passed),
            "the job itself passed: the drift is the drill's finding"
        );
    }

    #[test]
    fn could_not_verify_is_an_error_run_not_a_failure() {
        let (mut s, mut i) = store();
        i += 1;
        let t = tick(&s, 10_000, 10_000);
        s.apply(i, &t);
        // max_attempts (3) errors: the job ends error, and so does the run.
        for _ in 0..3 {
            finish(&mut s, &mut i, 10_000, verdict(Verdict::Error, 0));
        }
        let run = &s.runs("shop")[0];
        assert_eq!(run.outcome, RunOutcome::Error, "{run:?}");
        assert!(
            run.reason
                .as_deref()
                .is_some_and(|r| r.contains("could not verify"))
        );
    }

    /// The daily digest counts the day's runs and jobs, gives the RTO trend, and is written
    /// once per channel and instant however often it is proposed.
    #[test]
    fn a_digest_counts_the_day_and_is_written_once_per_instant() {
        let (mut s, mut i) = store();
        i += 1;
        s.apply(i, &Command::SetVersion { version: 6 });
        for (at, rto, v) in [
            (10_000, 100, Verdict::Passed),
            (20_000, 100, Verdict::Passed),
            (30_000, 150, Verdict::Passed),
            (40_000, 0, Verdict::Failed),
        ] {
            i += 1;
            let t = tick(&s, at, at as u64);
            s.apply(i, &t);
            let mut r = verdict(v, 1000);
            if v == Verdict::Failed {
                r.fail("checks", "orders: 0 rows");
                r.verdict = Verdict::Failed;
            } else {
                r.rto_ms = Some(rto);
            }
            finish(&mut s, &mut i, at, r);
        }
        let digest = |fire_ms: u64| Command::Digest {
            channel: "smtp.dba".into(),
            fire_ms,
            at_ms: fire_ms,
        };
        for _ in 0..2 {
            i += 1;
            s.apply(i, &digest(50_000));
        }
        let events: Vec<_> = s.outbox().filter(|e| e.kind == "digest").collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].channel.as_deref(), Some("smtp.dba"));
        let d = events[0].digest.as_ref().expect("digest");
        assert_eq!((d.jobs.passed, d.jobs.failed), (3, 1), "{d:?}");
        let day = &d.drills[0];
        assert_eq!((day.drill.as_str(), day.passed, day.failed), ("shop", 3, 1));
        assert_eq!(day.rto_ms, Some(150));
        assert_eq!(day.trend, Some(crate::digest::Trend::Up), "150 against 100");
        assert!(d.lines()[1].contains("RTO 0s ↑"), "{:?}", d.lines());
        // An earlier instant changes nothing; the next day's is a new event.
        i += 1;
        s.apply(i, &digest(40_000));
        i += 1;
        s.apply(i, &digest(50_000 + crate::digest::WINDOW_MS));
        let later: Vec<_> = s.outbox().filter(|e| e.kind == "digest").collect();
        assert_eq!(later.len(), 2, "{later:?}");
        let d = later[1].digest.as_ref().expect("digest");
        assert_eq!((d.jobs.passed, d.drills[0].passed), (0, 0), "{d:?}");
    }

    /// No passed run within `alert_after`: one `drill.overdue` per stretch, none while paused.
    #[test]
    fn an_overdue_drill_is_one_notification_per_stretch_without_a_pass() {
        let hour = 3_600_000;
        let mut s = JobStore::default();
        s.apply(1, &Command::SetVersion { version: 5 });
        s.apply(
            2,
            &Command::ApplyDrill {
                spec: Box::new(spec("alert_after = \"1h\"\n")),
                at_ms: 0,
            },
        );
        assert!(
            s.overdue_to_notify(hour).is_empty(),
            "not past its limit yet"
        );
        assert_eq!(s.overdue_to_notify(hour + 1), [("shop".to_owned(), 0)]);
        let overdue = Command::DrillOverdue {
            drill: "shop".into(),
            since_ms: 0,
            at_ms: hour + 1,
        };
        s.apply(3, &overdue);
        s.apply(4, &overdue);
        assert!(s.overdue_to_notify(2 * hour).is_empty(), "notified once");
        let events: Vec<_> = s.outbox().collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].id, "drill.overdue-shop-0");
        assert!(
            events[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("alert_after 1h")),
            "{events:?}"
        );
        s.apply(
            5,
            &Command::PauseDrill {
                name: "shop".into(),
                reason: "maintenance".into(),
                until_ms: None,
                at_ms: 2 * hour,
            },
        );
        let paused = s.drill("shop").expect("drill").clone();
        assert_eq!(crate::drill::overdue_since(&paused, &[], 3 * hour), None);
    }

    #[test]
    fn a_window_that_closes_before_any_start_skips_the_run_with_the_reason() {
        let (mut s, mut i) = store();
        i += 1;
        s.apply(i, &Command::SetVersion { version: 5 });
        i += 1;
        let t = tick(&s, 10_000, 10_000);
        s.apply(i, &t);
        i += 1;
        let out = s.apply(
            i,
            &Command::CloseWindow {
                drill: "shop".into(),
                tick_ms: 10_000,
                manual: false,
                reason: "no live worker in region mars with a free slot".into(),
                at_ms: 18_000,
            },
        );
        assert_eq!(out, Outcome::Done(Ok(())));
        let run = &s.runs("shop")[0];
        assert_eq!(run.outcome, RunOutcome::Skipped);
        assert!(
            run.reason
                .as_deref()
                .is_some_and(|r| r.contains("region mars"))
        );
        assert_eq!(
            s.get(&drill::job_id("shop", 10_000, 0, false))
                .map(|j| j.state),
            Some(JobState::Cancelled)
        );
        // One notification: the run skipped, with the reason (a cancelled job is none).
        let events: Vec<_> = s.outbox().collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].id, "drill.skipped-shop-10000");
        assert!(
            events[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("region mars")),
            "{events:?}"
        );
    }

    #[test]
    fn ended_runs_go_to_the_history_and_the_state_keeps_few() {
        let (mut s, mut i) = store();
        i += 1;
        let mut t = tick(&s, 60_000, 61_000);
        if let Command::DrillTick(t) = &mut t {
            t.missed = Some((5, 10_000, 50_000));
        }
        s.apply(i, &t);
        let runs = s.runs("shop");
        assert_eq!(runs[0].outcome, RunOutcome::Missed);
        assert_eq!(runs[0].missed, Some((5, 10_000, 50_000)));
        assert_eq!(runs[1].outcome, RunOutcome::Running);
        finish(&mut s, &mut i, 60_000, verdict(Verdict::Passed, 1));
        let written: Vec<RunOutcome> = s
            .take_history()
            .into_iter()
            .filter_map(|op| match op {
                HistoryOp::Run(r) => Some(r.outcome),
                _ => None,
            })
            .collect();
        assert_eq!(written, [RunOutcome::Missed, RunOutcome::Passed]);
        // Many more runs, all failing: the state keeps the last few ended ones and the last
        // passed one (drift needs it); the history has them all.
        let mut at = 60_000;
        for _ in 0..20 {
            at += 10_000;
            i += 1;
            let t = tick(&s, at, at as u64);
            s.apply(i, &t);
            finish(&mut s, &mut i, at, verdict(Verdict::Failed, 1));
        }
        let runs = s.runs("shop");
        assert_eq!(runs.len(), RECENT_RUNS, "{runs:#?}");
        assert_eq!(runs[0].outcome, RunOutcome::Passed);
        let history = s.take_history();
        assert_eq!(
            history
                .iter()
                .filter(|op| matches!(op, HistoryOp::Run(_)))
                .count(),
            20
        );
        assert!(history.iter().any(|op| matches!(op, HistoryOp::Prune { drill, before_tick_ms } if drill == "shop" && *before_tick_ms < at - 400 * 86_400_000)));
    }

    #[test]
    fn finished_jobs_past_the_retention_leave_the_state_with_a_summary() {
        let (mut s, mut i) = store();
        i += 1;
        let t = tick(&s, 10_000, 10_000);
        s.apply(i, &t);
        i += 1;
        s.apply(
            i,
            &Command::Submit(vec![NewJob {
                id: "waiting".into(),
                plan: spec("").plans[0].clone(),
                at_ms: 0,
            }]),
        );
        i += 1;
        s.apply(
            i,
            &Command::ForgetJobs {
                before_ms: 1_000_000,
                at_ms: 1_000_000,
            },
        );
        assert_eq!(s.len(), 2, "a pending job and a running run's job stay");
        finish(&mut s, &mut i, 10_000, verdict(Verdict::Passed, 5));
        s.take_history();
        i += 1;
        s.apply(
            i,
            &Command::ForgetJobs {
                before_ms: 1_000_000,
                at_ms: 1_000_000,
            },
        );
        let id = drill::job_id("shop", 10_000, 0, false);
        assert!(s.get(&id).is_none(), "forgotten");
        assert!(s.get("waiting").is_some(), "never a job that has not ended");
        let summaries: Vec<HistoryOp> = s.take_history();
        match summaries.as_slice() {
            [HistoryOp::Job(j)] => {
                assert_eq!(j.id, id);
                assert_eq!(j.verdict, Some(Verdict::Passed));
                assert_eq!(j.drill, Some(("shop".into(), 10_000)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.runs("shop")[0].results[0].tables[0].rows,
            5,
            "the run keeps the results"
        );
    }

    #[test]
    fn pause_resume_and_delete() {
        let (mut s, _) = store();
        s.apply(
            3,
            &Command::PauseDrill {
                name: "shop".into(),
                reason: "migration".into(),
                until_ms: None,
                at_ms: 5,
            },
        );
        assert!(s.drill("shop").is_some_and(|d| d.paused.is_some()));
        s.apply(
            4,
            &Command::ResumeDrill {
                name: "shop".into(),
                at_ms: 90_000,
            },
        );
        let d = s.drill("shop").expect("drill");
        assert!(d.paused.is_none());
        assert_eq!(d.last_tick_ms, 90_000, "ticks during the pause are not due");
        assert!(matches!(
            s.apply(
                5,
                &Command::ResumeDrill {
                    name: "shop".into(),
                    at_ms: 0
                }
            ),
            Outcome::Done(Err(_))
        ));
        s.apply(
            6,
            &Command::DeleteDrill {
                name: "shop".into(),
                at_ms: 0,
            },
        );
        assert!(s.drill("shop").is_none());
    }

    #[test]
    fn drills_and_runs_survive_a_snapshot_round_trip() {
        let (mut s, mut i) = store();
        i += 1;
        let t = tick(&s, 10_000, 10_000);
        s.apply(i, &t);
        s.take_history();
        let back: JobStore =
            serde_json::from_str(&serde_json::to_string(&s).expect("ser")).expect("de");
        assert_eq!(back, s, "including the derived job index");
    }
}
