//! The drill ticker: the leader's duty of turning due ticks into log entries.
//!
//! Everything it proposes is decided by `rehearse_core::drill::decide` from committed state (the
//! drill's `last_tick_ms`, its runs), so a new leader re-derives the same ticks, and a tick
//! applied twice changes nothing (its jobs' ids derive from drill and tick). The ticker itself
//! only keeps caches: each drill's parsed schedule and its next fire instant, so a leader with
//! thousands of drills evaluates a cron pattern only when a drill's tick is near.

use std::collections::HashMap;

use rehearse_core::drill::{self, Decision, Drill, RunOutcome};
use rehearse_core::drills::Tick;
use rehearse_core::jobs::{Command, JobState, JobStore, NewJob};
use rehearse_core::schedule::{Schedule, jitter_ms};
use tracing::warn;

/// One drill's cached schedule: valid while its version, last tick and pause are unchanged.
struct Cached {
    key: (String, i64, bool),
    schedule: Schedule,
    /// When the first tick after `last_tick_ms` is due: the tick plus its jitter (or its window's
    /// end, whichever comes first); `None` if the schedule never fires again.
    due_at: Option<i64>,
}

#[derive(Default)]
pub struct Ticker {
    cache: HashMap<String, Cached>,
}

impl Ticker {
    /// The commands due at `now_ms`: ticks that fire, skip or record missed ticks, and windows
    /// that closed on runs whose jobs never started.
    pub fn due(&mut self, store: &JobStore, now_ms: u64) -> Vec<Command> {
        let now = now_ms as i64;
        let mut out = Vec::new();
        self.cache.retain(|name, _| store.drill(name).is_some());
        for d in store.drills() {
            let key = (d.spec.version.clone(), d.last_tick_ms, d.paused.is_some());
            let fresh = self.cache.get(&d.spec.name).is_none_or(|c| c.key != key);
            if fresh {
                let schedule = match d.spec.schedule() {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(drill = %d.spec.name, error = %e, "drill schedule does not parse");
                        continue;
                    }
                };
                // Nothing can be due before the next tick's jittered start: a drill is decided
                // once per tick, not on every pass (10,000 drills × a pass every 100 ms would
                // keep the leader busy evaluating cron patterns).
                let due_at = schedule
                    .next_after(d.last_tick_ms)
                    .map(|tick| tick + jitter_ms(&d.spec.name, tick, d.spec.window_ms) as i64);
                self.cache.insert(
                    d.spec.name.clone(),
                    Cached {
                        key,
                        schedule,
                        due_at,
                    },
                );
            }
            let Some(cached) = self.cache.get(&d.spec.name) else {
                continue;
            };
            if cached.due_at.is_none_or(|t| t > now) {
                continue;
            }
            let running = store.drill_running(&d.spec.name);
            if let Decision::Tick {
                tick_ms,
                fire,
                skipped,
                missed,
            } = drill::decide(d, &cached.schedule, now, running)
            {
                let start_ms = tick_ms
                    + rehearse_core::schedule::jitter_ms(&d.spec.name, tick_ms, d.spec.window_ms)
                        as i64;
                out.push(Command::DrillTick(Box::new(Tick {
                    drill: d.spec.name.clone(),
                    tick_ms,
                    manual: false,
                    start_ms,
                    jobs: if fire {
                        jobs(d, tick_ms, false, now_ms)
                    } else {
                        Vec::new()
                    },
                    exercise: fire
                        .then(|| exercise_start(d, tick_ms, false, now_ms))
                        .flatten(),
                    skipped,
                    missed,
                    version: d.spec.version.clone(),
                    at_ms: now_ms,
                })));
            }
        }
        out.extend(closed_windows(store, now_ms));
        out
    }
}

/// A run's jobs: one per plan of the drill, ids derived from (drill, tick).
pub fn jobs(d: &Drill, tick_ms: i64, manual: bool, now_ms: u64) -> Vec<NewJob> {
    d.spec
        .plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            let mut plan = plan.clone();
            if plan.artifact.pick.as_deref() == Some("least_recently_tested") {
                plan.artifact.tested = d.tested.clone();
            }
            NewJob {
                id: drill::job_id(&d.spec.name, tick_ms, i, manual),
                plan,
                at_ms: now_ms,
            }
        })
        .collect()
}

/// A run's exercise, for a drill of an exercise: its id derived from (drill, tick).
pub fn exercise_start(
    d: &Drill,
    tick_ms: i64,
    manual: bool,
    now_ms: u64,
) -> Option<Box<rehearse_core::exercises::Start>> {
    let spec = d.spec.exercise.as_ref()?;
    Some(Box::new(rehearse_core::exercises::Start {
        id: format!("ex-{}", drill::job_id(&d.spec.name, tick_ms, 0, manual)),
        spec: (**spec).clone(),
        at_ms: now_ms,
    }))
}

/// A manual run of `d` now (`rehearse drill run`).
pub fn manual_run(d: &Drill, now_ms: u64) -> Command {
    let tick_ms = now_ms as i64;
    Command::DrillTick(Box::new(Tick {
        drill: d.spec.name.clone(),
        tick_ms,
        manual: true,
        start_ms: tick_ms,
        jobs: jobs(d, tick_ms, true, now_ms),
        exercise: exercise_start(d, tick_ms, true, now_ms),
        skipped: None,
        missed: None,
        version: d.spec.version.clone(),
        at_ms: now_ms,
    }))
}

/// Runs still waiting for a worker when their window ends: `CloseWindow`, with the reason the
/// first waiting job gives (no worker in its region, …).
fn closed_windows(store: &JobStore, now_ms: u64) -> Vec<Command> {
    let mut out = Vec::new();
    let mut workers = None;
    for d in store.drills() {
        for run in store.runs(&d.spec.name).iter().rev() {
            if run.outcome != RunOutcome::Running {
                continue;
            }
            let ends = (run.tick_ms.max(0) as u64).saturating_add(d.spec.window_ms);
            if ends > now_ms {
                continue;
            }
            let Some(waiting) = run
                .jobs
                .iter()
                .filter_map(|id| store.get(id))
                .find(|j| j.state == JobState::Pending)
            else {
                continue;
            };
            let workers = workers.get_or_insert_with(|| store.worker_views());
            let reason = store
                .waiting_reason(workers, waiting)
                .unwrap_or_else(|| "no worker took it".into());
            out.push(Command::CloseWindow {
                drill: d.spec.name.clone(),
                tick_ms: run.tick_ms,
                manual: run.manual,
                reason,
                at_ms: now_ms,
            });
        }
    }
    out
}
