//! Placement: which worker runs which pending job. A pure function of (workers, pending jobs):
//! the leader calls it and commits the result through Raft.
//!
//! Rules:
//! - only `ready` workers with a free slot are candidates; slots are never oversubscribed;
//! - a job's constraint must hold: `region`, `not_region`, and every label it names;
//! - among the candidates, a worker that already had an attempt of this job is taken only when no
//!   other fits (a retry prefers another worker);
//! - then a healthy worker before one whose recent attempts all ended `error`;
//! - then the least loaded (used / slots), then the name — so load spreads and the result is
//!   deterministic;
//! - jobs are placed in the order given (oldest first), so no job starves behind later ones;
//! - a job that fits nowhere gets a reason a person can act on, e.g. "no live worker in region eu
//!   with a free slot".

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Ready,
    Draining,
    Lost,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Lost => "lost",
        }
    }
}

/// What placement needs to know of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub name: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    /// Attempts running on it now.
    pub used: u32,
    pub state: WorkerState,
    /// False when its recent attempts all ended `error`: taken only when no healthy worker fits.
    pub healthy: bool,
}

/// Where a job may run (the plan's `[placement]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraint {
    pub region: Option<String>,
    pub not_region: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Constraint {
    pub fn admits(&self, w: &WorkerView) -> bool {
        self.region.as_ref().is_none_or(|r| *r == w.region)
            && self.not_region.as_ref().is_none_or(|r| *r != w.region)
            && self.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
    }

    /// "in region eu", "outside region eu", "with labels disk=ssd", or "" for no constraint.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.region {
            parts.push(format!("in region {r}"));
        }
        if let Some(r) = &self.not_region {
            parts.push(format!("outside region {r}"));
        }
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("with labels {}", labels.join(",")));
        }
        parts.join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingJob {
    pub id: String,
    pub constraint: Constraint,
    /// Workers that already had an attempt of this job.
    pub tried: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// (job id, worker name), in the order placed.
    pub assigned: Vec<(String, String)>,
    /// (job id, why it stays pending).
    pub waiting: Vec<(String, String)>,
}

pub fn place(workers: &[WorkerView], jobs: &[PendingJob]) -> Placement {
    place_from(workers, jobs.iter().cloned(), false)
}

/// [`place`] for the scheduler: takes pending jobs lazily, oldest first, and stops as soon as no
/// worker has a free slot, so its cost follows the free slots, not the length of the queue. Jobs
/// it did not look at are not in `waiting`.
pub fn place_until_full(
    workers: &[WorkerView],
    jobs: impl IntoIterator<Item = PendingJob>,
) -> Placement {
    place_from(workers, jobs, true)
}

fn place_from(
    workers: &[WorkerView],
    jobs: impl IntoIterator<Item = PendingJob>,
    stop_when_full: bool,
) -> Placement {
    let mut used: Vec<u32> = workers.iter().map(|w| w.used).collect();
    let mut free: u64 = workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .map(|w| u64::from(w.slots.saturating_sub(w.used)))
        .sum();
    // Slots only fill up during one placement, so a constraint that fit nowhere once fits nowhere
    // for the rest of it, for the same reason: later jobs with it are answered without a scan.
    let mut no_fit: HashMap<Constraint, String> = HashMap::new();
    let mut out = Placement::default();
    for job in jobs {
        if free == 0 && stop_when_full {
            break;
        }
        if let Some(reason) = no_fit.get(&job.constraint) {
            out.waiting.push((job.id, reason.clone()));
            continue;
        }
        let fits = |i: usize| {
            let w = &workers[i];
            w.state == WorkerState::Ready && used[i] < w.slots && job.constraint.admits(w)
        };
        let best = (0..workers.len()).filter(|&i| fits(i)).min_by(|&a, &b| {
            let (wa, wb) = (&workers[a], &workers[b]);
            let tried = |w: &WorkerView| job.tried.contains(&w.name);
            // load as a fraction, compared exactly: used_a / slots_a vs used_b / slots_b
            let load = |i: usize| (u64::from(used[i]), u64::from(workers[i].slots.max(1)));
            let ((ua, sa), (ub, sb)) = (load(a), load(b));
            tried(wa)
                .cmp(&tried(wb))
                .then(wb.healthy.cmp(&wa.healthy))
                .then((ua * sb).cmp(&(ub * sa)))
                .then(wa.name.cmp(&wb.name))
        });
        match best {
            Some(i) => {
                used[i] += 1;
                free -= 1;
                out.assigned.push((job.id, workers[i].name.clone()));
            }
            None => {
                let reason = why_waiting(workers, &used, &job.constraint);
                no_fit.insert(job.constraint, reason.clone());
                out.waiting.push((job.id, reason));
            }
        }
    }
    out
}

/// Why a pending job is not running yet, as `job get` shows it: the reason no worker can take
/// it, or that a worker could and the job waits for the scheduler's next round.
pub fn explain(workers: &[WorkerView], constraint: &Constraint) -> String {
    let fits = workers
        .iter()
        .any(|w| w.state == WorkerState::Ready && w.used < w.slots && constraint.admits(w));
    if fits {
        return "waiting to be assigned".to_owned();
    }
    let used: Vec<u32> = workers.iter().map(|w| w.used).collect();
    why_waiting(workers, &used, constraint)
}

/// Whether any worker could take any job now (the scheduler skips placement otherwise).
pub fn has_free_slot(workers: &[WorkerView]) -> bool {
    workers
        .iter()
        .any(|w| w.state == WorkerState::Ready && w.used < w.slots)
}

fn why_waiting(workers: &[WorkerView], used: &[u32], constraint: &Constraint) -> String {
    let place = constraint.describe();
    let place = if place.is_empty() {
        String::new()
    } else {
        format!(" {place}")
    };
    let admitted: Vec<usize> = (0..workers.len())
        .filter(|&i| constraint.admits(&workers[i]))
        .collect();
    if admitted.is_empty() {
        return format!("no worker{place}");
    }
    let live: Vec<usize> = admitted
        .iter()
        .copied()
        .filter(|&i| workers[i].state == WorkerState::Ready)
        .collect();
    if live.is_empty() {
        let draining = admitted
            .iter()
            .any(|&i| workers[i].state == WorkerState::Draining);
        return format!(
            "no live worker{place}{}",
            if draining {
                " (the ones there are draining)"
            } else {
                ""
            }
        );
    }
    debug_assert!(live.iter().all(|&i| used[i] >= workers[i].slots));
    format!("no live worker{place} with a free slot")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn worker(name: &str, region: &str, slots: u32, used: u32) -> WorkerView {
        WorkerView {
            name: name.into(),
            region: region.into(),
            labels: BTreeMap::new(),
            slots,
            used,
            state: WorkerState::Ready,
            healthy: true,
        }
    }

    #[test]
    fn an_unhealthy_worker_is_taken_only_when_no_healthy_one_fits() {
        let mut sick = worker("a", "eu", 4, 0);
        sick.healthy = false;
        let well = worker("b", "eu", 1, 0);
        let placed = place(&[sick.clone(), well], &[job("j1", None), job("j2", None)]);
        assert_eq!(
            placed.assigned,
            [("j1".into(), "b".into()), ("j2".into(), "a".into())]
        );
    }

    fn job(id: &str, region: Option<&str>) -> PendingJob {
        PendingJob {
            id: id.into(),
            constraint: Constraint {
                region: region.map(Into::into),
                ..Constraint::default()
            },
            tried: Vec::new(),
        }
    }

    #[test]
    fn pinned_jobs_run_in_their_region_and_load_spreads() {
        let workers = [
            worker("eu-1", "eu", 2, 0),
            worker("eu-2", "eu", 2, 0),
            worker("us-1", "us", 4, 0),
        ];
        let jobs = [
            job("a", Some("eu")),
            job("b", Some("eu")),
            job("c", Some("us")),
            job("d", None),
        ];
        let p = place(&workers, &jobs);
        assert_eq!(
            p.assigned,
            [
                ("a".into(), "eu-1".into()),
                ("b".into(), "eu-2".into()),
                ("c".into(), "us-1".into()),
                ("d".into(), "us-1".into())
            ]
        );
        assert!(p.waiting.is_empty());
    }

    #[test]
    fn not_region_labels_and_retries_elsewhere() {
        let mut ssd = worker("ssd", "eu", 1, 0);
        ssd.labels.insert("disk".into(), "ssd".into());
        let workers = [worker("a", "eu", 1, 0), worker("b", "us", 1, 0), ssd];
        let mut elsewhere = job("x", None);
        elsewhere.constraint.not_region = Some("eu".into());
        let mut labelled = job("y", None);
        labelled
            .constraint
            .labels
            .insert("disk".into(), "ssd".into());
        let p = place(&workers, &[elsewhere, labelled]);
        assert_eq!(
            p.assigned,
            [("x".into(), "b".into()), ("y".into(), "ssd".into())]
        );
        // a retry avoids the worker that failed it while another fits
        let workers = [worker("a", "eu", 1, 0), worker("b", "eu", 1, 0)];
        let mut retry = job("r", Some("eu"));
        retry.tried = vec!["a".into()];
        assert_eq!(
            place(&workers, &[retry.clone()]).assigned,
            [("r".into(), "b".into())]
        );
        // ... and takes it when nothing else fits
        let workers = [worker("a", "eu", 1, 0)];
        assert_eq!(
            place(&workers, &[retry]).assigned,
            [("r".into(), "a".into())]
        );
    }

    #[test]
    fn unplaceable_jobs_explain_themselves() {
        let mut lost = worker("eu-1", "eu", 1, 0);
        lost.state = WorkerState::Lost;
        let workers = [lost, worker("us-1", "us", 1, 1)];
        let p = place(
            &workers,
            &[
                job("a", Some("eu")),
                job("b", Some("us")),
                job("c", Some("ap")),
            ],
        );
        assert!(p.assigned.is_empty());
        assert_eq!(p.waiting[0].1, "no live worker in region eu");
        assert_eq!(
            p.waiting[1].1,
            "no live worker in region us with a free slot"
        );
        assert_eq!(p.waiting[2].1, "no worker in region ap");
        let mut draining = worker("d", "eu", 1, 0);
        draining.state = WorkerState::Draining;
        assert_eq!(
            place(&[draining], &[job("a", None)]).waiting[0].1,
            "no live worker (the ones there are draining)"
        );
    }

    fn workers_strategy() -> impl Strategy<Value = Vec<WorkerView>> {
        prop::collection::vec(
            (
                "[a-f]",
                prop::sample::select(vec!["eu", "us"]),
                0u32..4,
                0u32..4,
                prop::sample::select(vec![
                    WorkerState::Ready,
                    WorkerState::Draining,
                    WorkerState::Lost,
                ]),
                any::<bool>(),
            ),
            0..6,
        )
        .prop_map(|ws| {
            let mut seen = std::collections::BTreeSet::new();
            ws.into_iter()
                .filter(|(n, ..)| seen.insert(n.clone()))
                .map(|(name, region, slots, used, state, ssd)| {
                    let mut labels = BTreeMap::new();
                    if ssd {
                        labels.insert("disk".to_owned(), "ssd".to_owned());
                    }
                    WorkerView {
                        name,
                        region: region.into(),
                        labels,
                        slots,
                        used: used.min(slots),
                        state,
                        healthy: !ssd || slots % 2 == 0,
                    }
                })
                .collect()
        })
    }

    fn jobs_strategy() -> impl Strategy<Value = Vec<PendingJob>> {
        prop::collection::vec(
            (
                prop::option::of(prop::sample::select(vec!["eu", "us", "ap"])),
                prop::option::of(prop::sample::select(vec!["eu", "us"])),
                any::<bool>(),
                prop::collection::vec("[a-f]", 0..2),
            ),
            0..12,
        )
        .prop_map(|js| {
            js.into_iter()
                .enumerate()
                .map(|(i, (region, not_region, ssd, tried))| {
                    let mut labels = BTreeMap::new();
                    if ssd {
                        labels.insert("disk".to_owned(), "ssd".to_owned());
                    }
                    PendingJob {
                        id: format!("j{i}"),
                        constraint: Constraint {
                            region: region.map(Into::into),
                            not_region: not_region.map(Into::into),
                            labels,
                        },
                        tried,
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// No worker over its slots; every assignment admitted by its constraint and made to a
        /// ready worker; every job either placed once or waiting with a reason; and a waiting job
        /// really had no ready, admitting worker with a free slot left.
        #[test]
        fn placement_invariants(workers in workers_strategy(), jobs in jobs_strategy()) {
            let p = place(&workers, &jobs);
            let mut used: BTreeMap<&str, u32> = workers.iter().map(|w| (w.name.as_str(), w.used)).collect();
            for (job_id, name) in &p.assigned {
                let w = workers.iter().find(|w| &w.name == name).expect("known worker");
                let j = jobs.iter().find(|j| &j.id == job_id).expect("known job");
                prop_assert_eq!(w.state, WorkerState::Ready);
                prop_assert!(j.constraint.admits(w));
                *used.get_mut(name.as_str()).expect("worker") += 1;
            }
            for w in &workers {
                prop_assert!(used[w.name.as_str()] <= w.slots.max(w.used), "{} over its slots", w.name);
            }
            prop_assert_eq!(p.assigned.len() + p.waiting.len(), jobs.len());
            for (job_id, reason) in &p.waiting {
                prop_assert!(reason.starts_with("no "));
                let j = jobs.iter().find(|j| &j.id == job_id).expect("known job");
                let free = workers.iter().any(|w| w.state == WorkerState::Ready && j.constraint.admits(w) && used[w.name.as_str()] < w.slots);
                prop_assert!(!free, "job {} left waiting while a worker had room", job_id);
            }
            prop_assert_eq!(place(&workers, &jobs), p.clone(), "deterministic");
            let lazy = place_until_full(&workers, jobs.iter().cloned());
            prop_assert_eq!(lazy.assigned, p.assigned, "stopping when full places the same jobs");
        }
    }
}
