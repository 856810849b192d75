//! What each worker should run, from the raft thread to the assignment streams.
//!
//! One `watch` per worker: the raft thread publishes a worker's set only when it changed (its
//! attempts, its incarnation, or who leads), so a fleet of hundreds of workers does not wake every
//! stream on every change. A stream subscribes by worker name; a name nobody registered gets a set
//! saying so.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rehearse_core::jobs::JobStore;
use tokio::sync::watch;

/// One attempt a worker should be running.
#[derive(Debug, Clone, PartialEq)]
pub struct Assigned {
    pub job: String,
    pub token: u64,
    /// The plan as TOML, made once when the set is published.
    pub plan_toml: String,
}

/// A worker's whole truth, as of the log index `applied`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerSet {
    /// Whether this node leads; only a leader's sets are served.
    pub leader: bool,
    /// The leader's id and address, when known (for "not leader" answers).
    pub leader_hint: Option<(u64, String)>,
    /// `None`: no worker of this name is registered.
    pub incarnation: Option<u64>,
    pub applied: u64,
    pub running: Vec<Assigned>,
}

/// (incarnation, [(job, token)]): what decides whether a set changed.
type Key = (u64, Vec<(String, u64)>);

#[derive(Default)]
struct Hub {
    leader: bool,
    leader_hint: Option<(u64, String)>,
    senders: HashMap<String, watch::Sender<Arc<WorkerSet>>>,
    /// What each worker's last published set held.
    published: HashMap<String, Key>,
}

/// Shared by the raft thread (publishes) and the API (subscribes).
pub struct FleetHub {
    hub: Mutex<Hub>,
    pub lease: Duration,
}

impl FleetHub {
    pub fn new(lease: Duration) -> FleetHub {
        FleetHub {
            hub: Mutex::new(Hub::default()),
            lease,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic elsewhere leaves the map intact: keep serving it.
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker's sets, starting with the current one.
    pub fn subscribe(&self, name: &str) -> watch::Receiver<Arc<WorkerSet>> {
        let mut hub = self.lock();
        let empty = WorkerSet {
            leader: hub.leader,
            leader_hint: hub.leader_hint.clone(),
            ..WorkerSet::default()
        };
        hub.senders
            .entry(name.to_owned())
            .or_insert_with(|| watch::Sender::new(Arc::new(empty)))
            .subscribe()
    }

    /// Publishes the sets that changed since the last call, looking only at the `touched`
    /// workers (`None`: all of them). On a leadership change every set is sent again.
    pub fn publish(
        &self,
        leader: bool,
        leader_hint: Option<(u64, String)>,
        jobs: &JobStore,
        touched: Option<&HashSet<String>>,
    ) {
        let mut hub = self.lock();
        let leadership_changed = hub.leader != leader || hub.leader_hint != leader_hint;
        hub.leader = leader;
        hub.leader_hint = leader_hint.clone();
        if leadership_changed {
            hub.published.clear();
        }
        let workers: Vec<&rehearse_core::fleet::Worker> = match touched {
            Some(names) if !leadership_changed => {
                names.iter().filter_map(|n| jobs.worker(n)).collect()
            }
            _ => jobs.workers().collect(),
        };
        let mut seen = Vec::new();
        for w in workers {
            let running: Vec<(String, u64)> = w
                .running
                .iter()
                .filter_map(|id| Some((id.clone(), jobs.get(id)?.attempts.last()?.token)))
                .collect();
            let key = (w.spec.incarnation, running);
            seen.push(w.spec.name.clone());
            if hub.published.get(&w.spec.name) == Some(&key) {
                continue;
            }
            let set = WorkerSet {
                leader,
                leader_hint: leader_hint.clone(),
                incarnation: Some(w.spec.incarnation),
                applied: jobs.applied(),
                running: key
                    .1
                    .iter()
                    .filter_map(|(job, token)| {
                        Some(Assigned {
                            job: job.clone(),
                            token: *token,
                            plan_toml: toml::to_string(&jobs.get(job)?.plan).ok()?,
                        })
                    })
                    .collect(),
            };
            let set = Arc::new(set);
            hub.senders
                .entry(w.spec.name.clone())
                .and_modify(|tx| {
                    tx.send_replace(set.clone());
                })
                .or_insert_with(|| watch::Sender::new(set.clone()));
            hub.published.insert(w.spec.name.clone(), key);
        }
        if leadership_changed {
            // Subscribers of names the state does not know learn who leads now.
            let known: HashSet<String> = seen.into_iter().collect();
            for (name, tx) in &hub.senders {
                if !known.contains(name) {
                    tx.send_replace(Arc::new(WorkerSet {
                        leader,
                        leader_hint: leader_hint.clone(),
                        ..WorkerSet::default()
                    }));
                }
            }
        }
    }
}
