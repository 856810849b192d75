//! The nemesis: random faults while jobs are submitted and verdicts delivered, then a history
//! checker. One fault at a time, each healed before the next (a 3-node cluster keeps a quorum
//! between faults, so the run makes progress; safety must hold during them regardless):
//!
//! - `leader-kill`, `follower-kill`: SIGKILL, restarted 1–3 s later on the same data dir;
//! - `pause`: SIGSTOP a node for 1–3 s, then SIGCONT (a leader that wakes up after its term);
//! - `partition`: every link to and from one node cut for 2–4 s (TCP proxies between the nodes,
//!   [`crate::cluster::Link`]), then healed;
//! - `worker-kill`: a simulated worker dies silently and a new one joins.
//!
//! The checker, afterwards: every acknowledged submit exists and ended (`lost`), no job has more
//! than one accepted verdict (`duplicated`), no accepted verdict came from an attempt that was not
//! the job's last (`stale_verdicts`: a fencing token that should have been refused), and a drill
//! firing every 2 s alongside never ran a tick twice (`doubled_ticks`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rehearse_proto::client::{Client, DrillRpc};
use rehearse_proto::v1 as pb;
use serde::Serialize;

use crate::cluster::{Cluster, PLAN};
use crate::{Env, SimWorker, client, start_worker};

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Seconds from the run's start to the fault.
    pub at_s: f64,
    /// leader-kill, follower-kill, pause, partition, worker-kill.
    pub kind: &'static str,
    /// The coordinator it hit (none for a worker).
    pub node: Option<u64>,
    /// How long it lasted before the heal (restart, SIGCONT, links up), in ms.
    pub for_ms: u64,
    /// In words, for the human summary.
    pub what: String,
}

/// xorshift64*: enough for choosing faults, reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// Injects faults until `done` (the submitters have submitted everything), then heals whatever
/// is still broken; returns the faults.
pub(crate) async fn run(
    c: &mut Cluster,
    env: &Env,
    workers: &mut Vec<SimWorker>,
    run_id: &str,
    seed: u64,
    started: Instant,
    done: impl Fn() -> bool,
) -> anyhow::Result<Vec<Fault>> {
    let mut rng = Rng(seed.max(1));
    let mut faults = Vec::new();
    let mut joined = 0u64;
    while !done() {
        tokio::time::sleep(rng.millis(500, 1500)).await;
        if done() {
            break;
        }
        let leader = c.leader().await;
        let nodes: Vec<u64> = c.addrs.keys().copied().collect();
        let other = |rng: &mut Rng| {
            let followers: Vec<u64> = nodes.iter().copied().filter(|n| *n != leader).collect();
            followers[rng.below(followers.len() as u64) as usize]
        };
        let at_s = started.elapsed().as_secs_f64();
        let fault = match rng.below(5) {
            0 | 1 => {
                let (kind, node) = if rng.below(2) == 0 {
                    ("leader-kill", leader)
                } else {
                    ("follower-kill", other(&mut rng))
                };
                let down = rng.millis(1000, 3000);
                c.kill(node);
                tokio::time::sleep(down).await;
                c.spawn(node);
                Fault {
                    at_s,
                    kind,
                    node: Some(node),
                    for_ms: down.as_millis() as u64,
                    what: format!("SIGKILL node {node} ({kind}), restarted after {down:?}"),
                }
            }
            2 => {
                let node = nodes[rng.below(nodes.len() as u64) as usize];
                let paused = rng.millis(1000, 3000);
                c.signal(node, "STOP");
                tokio::time::sleep(paused).await;
                c.signal(node, "CONT");
                Fault {
                    at_s,
                    kind: "pause",
                    node: Some(node),
                    for_ms: paused.as_millis() as u64,
                    what: format!(
                        "SIGSTOP node {node}{} for {paused:?}, then SIGCONT",
                        if node == leader { " (the leader)" } else { "" }
                    ),
                }
            }
            3 => {
                let node = nodes[rng.below(nodes.len() as u64) as usize];
                let cut = rng.millis(2000, 4000);
                c.partition(node);
                tokio::time::sleep(cut).await;
                c.heal();
                Fault {
                    at_s,
                    kind: "partition",
                    node: Some(node),
                    for_ms: cut.as_millis() as u64,
                    what: format!(
                        "node {node}{} cut from the others for {cut:?}",
                        if node == leader { " (the leader)" } else { "" }
                    ),
                }
            }
            _ => {
                if workers.is_empty() {
                    continue;
                }
                let victim = rng.below(workers.len() as u64) as usize;
                workers.swap_remove(victim).kill();
                let name = format!("sim-{run_id}-nemesis-{joined}");
                joined += 1;
                workers.push(start_worker(env, name.clone(), 1).await?);
                Fault {
                    at_s,
                    kind: "worker-kill",
                    node: None,
                    for_ms: 0,
                    what: format!("a worker died silently; {name} joined"),
                }
            }
        };
        faults.push(fault);
    }
    // Whatever the last fault left: every node running, awake and connected.
    c.heal();
    for id in c.addrs.keys().copied().collect::<Vec<_>>() {
        c.signal(id, "CONT");
        if !c.procs.contains_key(&id) {
            c.spawn(id);
        }
    }
    Ok(faults)
}

/// A drill firing every 2 s (seconds in its cron pattern), its runs queued, riding along with the
/// load so the checker can look for a tick run twice. Returns its name.
pub(crate) async fn apply_drill(addrs: &[String], run_id: &str) -> anyhow::Result<String> {
    let name = format!("nemesis-{run_id}");
    let text = format!(
        "[drill]\nname = \"{name}\"\nschedule = \"*/2 * * * * *\"\nwindow = \"1m\"\noverlap = \"queue\"\n[plan]\n{}",
        PLAN.replace("[artifact]", "[plan.artifact]")
    );
    let spec = rehearse_core::drill::DrillSpec::from_toml(&text, |_| Err("no files".into()))
        .map_err(|e| anyhow::anyhow!("the nemesis drill: {e}"))?;
    let mut c = client(addrs)?;
    c.patience = Duration::from_secs(60);
    c.drill(
        DrillRpc::Apply,
        pb::DrillCall {
            spec_json: serde_json::to_string(&spec)?,
            ..pb::DrillCall::default()
        },
    )
    .await
    .context("apply the nemesis drill")?;
    Ok(name)
}

/// The drill's runs, and how many ticks appear more than once among them.
pub(crate) async fn check_ticks(c: &mut Client, name: &str) -> anyhow::Result<(u64, u64)> {
    let answer = c
        .drill(
            DrillRpc::Get,
            pb::DrillCall {
                name: name.to_owned(),
                history: true,
                ..pb::DrillCall::default()
            },
        )
        .await
        .context("the nemesis drill's history")?;
    let views: Vec<rehearse_core::drill::DrillView> = serde_json::from_str(&answer.json)?;
    let mut ticks: HashMap<(i64, bool), u64> = HashMap::new();
    let mut runs = 0;
    for v in &views {
        for r in &v.runs {
            runs += 1;
            *ticks.entry((r.tick_ms, r.manual)).or_default() += 1;
        }
    }
    Ok((runs, ticks.values().filter(|n| **n > 1).count() as u64))
}

/// Jobs whose deciding attempt (the one whose outcome is the job's verdict) is not their last:
/// a verdict accepted under a stale fencing token.
pub(crate) async fn stale_verdicts(c: &mut Client, acked: &[String]) -> anyhow::Result<u64> {
    let jobs: HashMap<String, pb::Job> = c
        .list_jobs(None)
        .await?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    let mut stale = 0;
    for id in acked {
        let Some(job) = jobs.get(id) else { continue };
        let deciding: Vec<usize> = job
            .attempts
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a.outcome.as_str(), "passed" | "failed"))
            .map(|(i, _)| i)
            .collect();
        let last = job.attempts.len().saturating_sub(1);
        if deciding.len() > 1 || deciding.iter().any(|i| *i != last) {
            stale += 1;
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let xs: Vec<u64> = (0..50).map(|_| a.below(5)).collect();
        let ys: Vec<u64> = (0..50).map(|_| b.below(5)).collect();
        assert_eq!(xs, ys);
        assert!(
            (0..5).all(|k| xs.contains(&k)),
            "every kind comes up: {xs:?}"
        );
        let d = Rng(7).millis(1000, 3000);
        assert!(d >= Duration::from_millis(1000) && d <= Duration::from_millis(3000));
    }
}
