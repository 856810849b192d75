//! rehearse-loadtest: measures the coordinator at fleet scale.
//!
//! It starts its own 3-node coordinator cluster on loopback (or targets one), registers simulated
//! workers that speak the real worker protocol — register, heartbeat, the assignment stream,
//! verdicts with fencing tokens — and return a synthetic verdict after a configurable delay, then
//! submits jobs and waits for every verdict. What it measures is the coordinator: the workers do
//! no restore.
//!
//! Scenarios: `steady` (throughput), `leader-kill` (the leader is killed mid-run and restarted),
//! `worker-churn` (workers die silently and new ones join during the run). In every one, `lost`
//! (acknowledged, never finished) and `duplicated` (more than one accepted verdict) must be 0.
//!
//! Layout: [`cluster`] (coordinator processes), [`run`] (the scenario driver).

pub mod cluster;
pub mod nemesis;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rehearse_core::report::{Report, Verdict};
use rehearse_proto::client::{Client, ClientError};
use rehearse_proto::v1 as pb;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, PLAN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Steady,
    LeaderKill,
    WorkerChurn,
    /// Random faults while jobs flow (see [`nemesis`]).
    Nemesis,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::LeaderKill => "leader-kill",
            Scenario::WorkerChurn => "worker-churn",
            Scenario::Nemesis => "nemesis",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub jobs: u64,
    pub workers: u64,
    /// Slots per simulated worker.
    pub slots: u32,
    /// Submits per second; `None`: as fast as the submitters go.
    pub rate: Option<f64>,
    /// Concurrent submitters.
    pub clients: usize,
    /// How long a simulated worker "runs" a job before its verdict.
    pub delay: Duration,
    /// Target these coordinators instead of starting a cluster.
    pub coordinators: Option<Vec<String>>,
    /// The `rehearse` binary, for the cluster this tool starts.
    pub bin: PathBuf,
    /// The lease of the cluster this tool starts.
    pub lease: Duration,
    /// Give up waiting for verdicts after this long without progress.
    pub patience: Duration,
    /// `--job-retention` of the cluster this tool starts: finished jobs leave its memory.
    pub job_retention: Option<Duration>,
    /// The simulated workers report `failed` (each job then ends failed, and is a
    /// notification) instead of `passed`.
    pub fail: bool,
    /// `--notify FILE` of the cluster this tool starts.
    pub notify: Option<PathBuf>,
    /// The nemesis' random choices start from this seed (the same seed, the same faults).
    pub seed: u64,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            count: h.len(),
        }
    }
}

/// What a run measured (`--output json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub scenario: &'static str,
    pub jobs: u64,
    pub workers: u64,
    pub slots_per_worker: u32,
    pub elapsed_s: f64,
    /// Jobs from first submit to last accepted verdict, per second.
    pub lifecycles_per_sec: f64,
    pub submit_latency_ms: Latency,
    /// Submit start → the assignment arriving on the worker's stream (first delivery).
    pub assign_latency_ms: Latency,
    /// Acknowledged jobs that never reached a final state.
    pub lost: u64,
    /// Jobs with more than one accepted verdict.
    pub duplicated: u64,
    /// Jobs that ended without passing: `failed`, or `error` (e.g. their worker lost on every
    /// attempt under churn).
    pub failed: u64,
    /// Verdicts the coordinator refused (stale attempts: expected under churn and leader kills).
    pub refused_verdicts: u64,
    /// Jobs delivered more than once (re-queued after a lost worker).
    pub redelivered: u64,
    pub coordinator_rss_mb: Option<f64>,
    /// Leaders killed while jobs were still flowing (leader-kill).
    pub leader_kills: u64,
    /// Workers killed while jobs were still flowing (worker-churn).
    pub workers_killed: u64,
    /// What the scenario did (kills, churned workers); only what happened.
    pub events: Vec<String>,
    /// The nemesis' faults, each with its time and kind.
    pub faults: Vec<nemesis::Fault>,
    /// Jobs whose verdict came from an attempt that was not their last (a stale token accepted).
    pub stale_verdicts: u64,
    /// Drill ticks that ran more than once (nemesis: a drill firing every 2 s rides along).
    pub doubled_ticks: u64,
    /// Drill runs the history checker saw (0 without a drill).
    pub drill_runs: u64,
    pub seed: u64,
}

/// Shared by submitters and simulated workers.
#[derive(Default)]
struct Stats {
    started: Mutex<HashMap<String, Instant>>,
    submit: Mutex<Option<Histogram<u64>>>,
    assign: Mutex<Option<Histogram<u64>>>,
    delivered: Mutex<HashSet<String>>,
    accepted: Mutex<HashMap<String, u32>>,
    accepted_total: AtomicU64,
    refused: AtomicU64,
    redelivered: AtomicU64,
    last_verdict: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

fn record(h: &Mutex<Option<Histogram<u64>>>, since: Instant) {
    let micros = (since.elapsed().as_micros() as u64).max(1);
    let mut h = lock(h);
    let _ = h.get_or_insert_with(histogram).record(micros);
}

impl Stats {
    fn latency(h: &Mutex<Option<Histogram<u64>>>) -> Latency {
        Latency::of(lock(h).get_or_insert_with(histogram))
    }
}

fn synthetic_report(fail: bool) -> anyhow::Result<String> {
    let mut r = Report::new(
        "file:///loadtest/synthetic.dump",
        "postgres",
        "simulated",
        humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    );
    if fail {
        r.fail(
            "restore",
            "simulated: the loadtest was told --verdict failed",
        );
        r.verdict = Verdict::Failed;
    } else {
        r.verdict = Verdict::Passed;
    }
    Ok(serde_json::to_string(&r)?)
}

/// A simulated worker: its tasks and its off switch.
pub(crate) struct SimWorker {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl SimWorker {
    pub(crate) fn kill(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.abort();
        }
    }
}

pub(crate) struct Env {
    pub(crate) addrs: Vec<String>,
    stats: Arc<Stats>,
    report: Arc<String>,
    opts: Options,
}

pub(crate) fn client(addrs: &[String]) -> anyhow::Result<Client> {
    Ok(Client::new(addrs.to_vec())?)
}

/// Registers a worker and starts its heartbeat and stream tasks.
pub(crate) async fn start_worker(
    env: &Env,
    name: String,
    incarnation: u64,
) -> anyhow::Result<SimWorker> {
    let mut c = client(&env.addrs)?;
    c.patience = Duration::from_secs(60);
    let req = pb::RegisterWorkerRequest {
        name: name.clone(),
        incarnation,
        region: "load".into(),
        labels: Default::default(),
        slots: env.opts.slots,
    };
    let reg = c
        .register_worker(req.clone())
        .await
        .with_context(|| format!("register {name}"))?;
    let stop = CancellationToken::new();
    let every = Duration::from_millis(reg.heartbeat_ms.max(50));
    let beat = {
        // One connection per worker, shared by its heartbeats, stream and verdicts.
        let (mut c, name, stop, req) = (c.clone(), name.clone(), stop.clone(), req.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(every).await;
                if let Err(ClientError::Refused(_) | ClientError::NotFound(_)) =
                    c.heartbeat(&name, incarnation).await
                {
                    let _ = c.register_worker(req.clone()).await;
                }
            }
        })
    };
    let lease = Duration::from_millis(reg.lease_ms.max(250));
    let stream = tokio::spawn(stream_loop(
        c,
        name,
        incarnation,
        env.stats.clone(),
        env.report.clone(),
        env.opts.delay,
        lease,
        stop.clone(),
    ));
    Ok(SimWorker {
        stop,
        tasks: vec![beat, stream],
    })
}

/// Takes assignments from the stream and answers each with a verdict after `delay`.
#[allow(clippy::too_many_arguments)]
async fn stream_loop(
    mut c: Client,
    name: String,
    incarnation: u64,
    stats: Arc<Stats>,
    report: Arc<String>,
    delay: Duration,
    lease: Duration,
    stop: CancellationToken,
) {
    // One sender per worker: verdicts go out in the order they are ready.
    let (ready_tx, ready_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
    let sender = tokio::spawn(send_verdicts(
        c.clone(),
        stats.clone(),
        report,
        ready_rx,
        stop.clone(),
    ));
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    'connect: while !stop.is_cancelled() {
        let Ok(mut stream) = c.assignments(&name, incarnation).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout(lease, stream.message()) => m,
                () = stop.cancelled() => break 'connect,
            };
            let Ok(Ok(Some(set))) = msg else { break };
            for a in set.assignments {
                if !seen.insert((a.job_id.clone(), a.token)) {
                    continue;
                }
                let first = lock(&stats.delivered).insert(a.job_id.clone());
                if first {
                    if let Some(t) = lock(&stats.started).get(&a.job_id).copied() {
                        record(&stats.assign, t);
                    }
                } else {
                    stats.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                if delay.is_zero() {
                    let _ = ready_tx.send((a.job_id, a.token));
                } else {
                    let ready = ready_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = ready.send((a.job_id, a.token));
                    });
                }
            }
        }
    }
    sender.abort();
}

async fn send_verdicts(
    mut c: Client,
    stats: Arc<Stats>,
    report: Arc<String>,
    mut ready: tokio::sync::mpsc::UnboundedReceiver<(String, u64)>,
    stop: CancellationToken,
) {
    while let Some((job, token)) = ready.recv().await {
        let sent = tokio::select! {
            r = c.verdict(&job, token, &report) => r,
            () = stop.cancelled() => return,
        };
        match sent {
            Ok(()) => {
                // Only the tool's own submits count towards "every acknowledged job has its
                // verdict": a drill's jobs (the nemesis') would make the count arrive early.
                if job.starts_with("load-") {
                    stats.accepted_total.fetch_add(1, Ordering::Relaxed);
                }
                *lock(&stats.accepted).entry(job).or_default() += 1;
                *lock(&stats.last_verdict) = Some(Instant::now());
            }
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every job's state, by id, as the coordinator has it.
async fn job_states(c: &mut Client) -> anyhow::Result<HashMap<String, String>> {
    Ok(c.list_jobs(None)
        .await?
        .into_iter()
        .map(|j| (j.id, j.state))
        .collect())
}

/// Runs one scenario; returns what it measured.
pub async fn run(scenario: Scenario, opts: Options) -> anyhow::Result<Figures> {
    if opts.jobs == 0 || opts.workers == 0 || opts.slots == 0 || opts.clients == 0 {
        bail!("--jobs, --workers, --slots and --clients must be at least 1");
    }
    let mut cluster = match &opts.coordinators {
        Some(_) => None,
        None => {
            if !opts.bin.exists() {
                bail!(
                    "no rehearse binary at {} (build it, or pass --bin or --coordinators)",
                    opts.bin.display()
                );
            }
            let lease = humantime::format_duration(opts.lease).to_string();
            let mut extra = vec!["--lease".into(), lease];
            if let Some(r) = opts.job_retention {
                extra.push("--job-retention".into());
                extra.push(humantime::format_duration(r).to_string());
            }
            if let Some(file) = &opts.notify {
                extra.push("--notify".into());
                extra.push(file.to_string_lossy().into_owned());
            }
            let bin = opts.bin.to_string_lossy().into_owned();
            Some(if scenario == Scenario::Nemesis {
                Cluster::start_proxied(bin, 3, extra).await
            } else {
                Cluster::start(bin, 3, extra).await
            })
        }
    };
    let addrs = match (&opts.coordinators, &cluster) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.addr_list(),
        (None, None) => bail!("no coordinators"),
    };
    let env = Env {
        addrs: addrs.clone(),
        stats: Arc::new(Stats::default()),
        report: Arc::new(synthetic_report(opts.fail)?),
        opts: opts.clone(),
    };
    let run_id: String = rehearse_proto::new_job_id()[4..12].to_owned();
    let mut workers: Vec<SimWorker> = Vec::new();
    for i in 0..opts.workers {
        workers.push(start_worker(&env, format!("sim-{run_id}-{i}"), 1).await?);
    }
    let mut events = Vec::new();
    let mut faults = Vec::new();
    let drill = if scenario == Scenario::Nemesis {
        Some(nemesis::apply_drill(&addrs, &run_id).await?)
    } else {
        None
    };

    // Submitters take job numbers from a shared counter, paced by --rate if given.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Vec::with_capacity(opts.jobs as usize)));
    let mut submitters = Vec::new();
    for _ in 0..opts.clients {
        let (next, acked, stats, addrs, run_id) = (
            next.clone(),
            acked.clone(),
            env.stats.clone(),
            addrs.clone(),
            run_id.clone(),
        );
        let (jobs, rate) = (opts.jobs, opts.rate);
        submitters.push(tokio::spawn(async move {
            let mut c = client(&addrs)?;
            c.patience = Duration::from_secs(60);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    return anyhow::Ok(());
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let id = format!("load-{run_id}-{n}");
                let t = Instant::now();
                lock(&stats.started).insert(id.clone(), t);
                c.submit_with_id(PLAN, &id)
                    .await
                    .with_context(|| format!("submit {id}"))?;
                record(&stats.submit, t);
                lock(&acked).push(id);
            }
        }));
    }

    // The scenario's disturbance, while jobs flow.
    let progress = || env.stats.accepted_total.load(Ordering::Relaxed);
    let (mut leader_kills, mut workers_killed) = (0, 0);
    match scenario {
        Scenario::Steady => {}
        Scenario::LeaderKill => {
            let Some(c) = cluster.as_mut() else {
                bail!("leader-kill needs the cluster this tool starts (no --coordinators)");
            };
            while progress() < opts.jobs / 3 && started.elapsed() < opts.patience {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let leader = c.leader().await;
            // Only a kill while verdicts are still due counts: one after the last proves nothing.
            if progress() < opts.jobs {
                leader_kills += 1;
            }
            c.kill(leader);
            events.push(format!(
                "killed leader {leader} after {} verdicts ({:.2} s)",
                progress(),
                started.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.spawn(leader);
            events.push(format!("restarted node {leader}"));
        }
        Scenario::WorkerChurn => {
            let mut k = 0u64;
            while progress() < opts.jobs * 9 / 10 && started.elapsed() < opts.patience {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if workers.is_empty() {
                    break;
                }
                let victim = (k as usize * 7919) % workers.len();
                workers.swap_remove(victim).kill();
                let name = format!("sim-{run_id}-churn-{k}");
                workers.push(start_worker(&env, name, 1).await?);
                k += 1;
            }
            workers_killed = k;
            if k > 0 {
                events.push(format!("{k} workers died silently and {k} joined"));
            }
        }
        Scenario::Nemesis => {
            let Some(c) = cluster.as_mut() else {
                bail!("nemesis needs the cluster this tool starts (no --coordinators)");
            };
            let done = || next.load(Ordering::Relaxed) >= opts.jobs;
            faults = nemesis::run(c, &env, &mut workers, &run_id, opts.seed, started, done).await?;
            workers_killed = faults.iter().filter(|f| f.kind == "worker-kill").count() as u64;
            leader_kills = faults.iter().filter(|f| f.kind == "leader-kill").count() as u64;
        }
    }

    for s in submitters {
        s.await.context("submitter task")??;
    }
    let acked: Vec<String> = std::mem::take(&mut *lock(&acked));
    // Wait until every acknowledged job has ended. Counting accepted verdicts is the fast path;
    // it falls short when a verdict's acknowledgement was lost (leader kill) or a job failed for
    // good (churn), so once verdicts stop coming the coordinator is asked.
    let mut c = client(&addrs)?;
    c.patience = Duration::from_secs(60);
    // A job that left the coordinators' memory (--job-retention) had ended: only finished jobs
    // are forgotten. Its verdict was accepted here, so it is counted through that.
    let accepted_ids: std::collections::HashSet<String> =
        lock(&env.stats.accepted).keys().cloned().collect();
    let forgets = opts.job_retention.is_some();
    let is_final_in = |state: &HashMap<String, String>, id: &String| match state.get(id) {
        Some(st) => rehearse_core::jobs::JobState::parse(st).is_some_and(|s| s.is_final()),
        None => forgets && accepted_ids.contains(id),
    };
    let mut last_progress = (progress(), Instant::now());
    let mut state: HashMap<String, String> = HashMap::new();
    loop {
        if progress() >= acked.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = progress();
        if now != last_progress.0 {
            last_progress = (now, Instant::now());
            continue;
        }
        if last_progress.1.elapsed() < Duration::from_millis(500) {
            continue;
        }
        state = job_states(&mut c).await?;
        if acked.iter().all(|id| is_final_in(&state, id))
            || last_progress.1.elapsed() > opts.patience
        {
            break;
        }
    }
    let last = lock(&env.stats.last_verdict).unwrap_or_else(Instant::now);
    let elapsed = last.duration_since(started).as_secs_f64();
    if state.is_empty() || !acked.iter().all(|id| is_final_in(&state, id)) {
        state = job_states(&mut c).await?;
    }
    let final_state = |id: &String| state.get(id).map(String::as_str);
    let lost = acked.iter().filter(|id| !is_final_in(&state, id)).count() as u64;
    let failed = acked
        .iter()
        .filter(|id| matches!(final_state(id), Some("failed" | "error")))
        .count() as u64;
    let duplicated = lock(&env.stats.accepted)
        .values()
        .filter(|n| **n > 1)
        .count() as u64;
    let rss = cluster.as_ref().and_then(Cluster::peak_rss_mb);
    let stale_verdicts = if scenario == Scenario::Nemesis {
        nemesis::stale_verdicts(&mut c, &acked).await?
    } else {
        0
    };
    let (drill_runs, doubled_ticks) = match &drill {
        Some(name) => nemesis::check_ticks(&mut c, name).await?,
        None => (0, 0),
    };
    for w in workers {
        w.kill();
    }
    Ok(Figures {
        scenario: scenario.name(),
        jobs: opts.jobs,
        workers: opts.workers,
        slots_per_worker: opts.slots,
        elapsed_s: elapsed,
        lifecycles_per_sec: acked.len() as f64 / elapsed.max(1e-9),
        submit_latency_ms: Stats::latency(&env.stats.submit),
        assign_latency_ms: Stats::latency(&env.stats.assign),
        lost,
        duplicated,
        failed,
        refused_verdicts: env.stats.refused.load(Ordering::Relaxed),
        redelivered: env.stats.redelivered.load(Ordering::Relaxed),
        coordinator_rss_mb: rss,
        leader_kills,
        workers_killed,
        events,
        faults,
        stale_verdicts,
        doubled_ticks,
        drill_runs,
        seed: opts.seed,
    })
}

impl Figures {
    /// The human summary.
    pub fn human(&self) -> String {
        let lat = |l: &Latency| {
            format!(
                "p50 {:.2} ms · p95 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}",
                l.p50, l.p95, l.p99, l.p999, l.max
            )
        };
        let mut out = format!(
            "{}: {} jobs on {} workers × {} slots in {:.2} s — {:.0} lifecycles/s\n  submit  {}\n  assign  {}\n  lost {} · duplicated {} · failed {} · refused verdicts {} · redelivered {}\n",
            self.scenario,
            self.jobs,
            self.workers,
            self.slots_per_worker,
            self.elapsed_s,
            self.lifecycles_per_sec,
            lat(&self.submit_latency_ms),
            lat(&self.assign_latency_ms),
            self.lost,
            self.duplicated,
            self.failed,
            self.refused_verdicts,
            self.redelivered,
        );
        if let Some(rss) = self.coordinator_rss_mb {
            out.push_str(&format!("  coordinator peak RSS {rss:.0} MiB\n"));
        }
        for e in &self.events {
            out.push_str(&format!("  {e}\n"));
        }
        if !self.faults.is_empty() {
            out.push_str(&format!(
                "  {} faults (seed {}); stale verdicts {} · drill runs {} · doubled ticks {}\n",
                self.faults.len(),
                self.seed,
                self.stale_verdicts,
                self.drill_runs,
                self.doubled_ticks
            ));
            for f in &self.faults {
                out.push_str(&format!("    {:>7.2} s  {}\n", f.at_s, f.what));
            }
        }
        out
    }
}
