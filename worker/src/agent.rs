//! The worker agent: joins the fleet and turns assignments into verdicts.
//!
//! - Registers with the coordinators (any of them; the client follows the leader) under a name,
//!   a region, labels and a number of slots, with a fresh *incarnation*: the coordinator tells a
//!   reconnect (same incarnation, attempts go on) from a restart (new one, old attempts re-queued).
//! - Heartbeats five times per lease. Told it was declared lost, it registers again.
//! - Holds one server stream of assignment sets from the leader. Each set is the whole truth for
//!   this worker: attempts in it and not running are started; a running attempt missing from a set
//!   whose `applied` index is at or past its token has ended on the coordinator's side (cancelled,
//!   re-queued, timed out) and its sandbox is stopped. The set is level-triggered, so a leader
//!   change or a lost message costs nothing: the next set says everything again.
//! - Each attempt runs the same pipeline as `rehearse verify`, reports each phase as it begins,
//!   and sends its verdict with the attempt's fencing token until the coordinator accepts or
//!   refuses it (a refusal means the attempt is no longer current; the verdict is dropped).
//! - On start it reaps every sandbox its work dir holds from a previous process; on shutdown it
//!   stops its sandboxes (their jobs are re-queued when its lease runs out).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rehearse_core::plan::Plan;
use rehearse_core::report::{Phase, Report};
use rehearse_proto::client::{Client, ClientError};
use rehearse_proto::tls::TlsFiles;
use rehearse_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::pipeline::{Verifier, VerifyError, VerifyOptions};
use crate::runtime::{RuntimeChoice, Tags};

/// What `rehearse worker` is given.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub coordinators: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// A `worker` token for a cluster with `--auth required` (not needed with mTLS).
    pub token: Option<String>,
    pub name: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    /// Sandboxes live in `work_dir/sandboxes`, caches in `work_dir/cache`.
    pub work_dir: PathBuf,
    pub sandbox_user: String,
    /// Process or docker (or docker where the image is present).
    pub runtime: RuntimeChoice,
    /// Default container image per engine ("postgres", "mysql"); plans may name their own.
    pub images: std::collections::HashMap<String, String>,
    /// Source profiles (`[s3.NAME]`, `[http.NAME]`) plans select with `[artifact] profile`.
    pub sources: crate::artifact::Sources,
    /// What `--metrics-listen` serves.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("work dir {0}: {1}")]
    WorkDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Verifier(#[from] VerifyError),
    #[error("coordinator refused this worker: {0}")]
    Refused(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// One attempt this worker runs.
struct Running {
    token: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Shared by the agent's tasks.
struct Shared {
    config: AgentConfig,
    incarnation: u64,
    verifier: Verifier,
    /// Connected when the worker registered; clones share that connection (and its TLS setup).
    client: Client,
}

impl Shared {
    fn client(&self) -> Client {
        self.client.clone()
    }

    async fn register(&self, client: &mut Client) -> Result<(Duration, Duration), AgentError> {
        register(&self.config, self.incarnation, client).await
    }
}

fn new_client(config: &AgentConfig) -> Result<Client, ClientError> {
    let mut client = Client::new(config.coordinators.clone())?;
    if let Some(files) = &config.tls {
        client = client.with_tls(files)?;
    }
    match &config.token {
        Some(token) => client.with_token(token),
        None => Ok(client),
    }
}

/// Registers until a coordinator answers; returns the heartbeat interval and the lease.
async fn register(
    config: &AgentConfig,
    incarnation: u64,
    client: &mut Client,
) -> Result<(Duration, Duration), AgentError> {
    let req = pb::RegisterWorkerRequest {
        name: config.name.clone(),
        incarnation,
        region: config.region.clone(),
        labels: config.labels.clone().into_iter().collect(),
        slots: config.slots,
    };
    loop {
        match client.register_worker(req.clone()).await {
            Ok(r) => {
                return Ok((
                    Duration::from_millis(r.heartbeat_ms.max(50)),
                    Duration::from_millis(r.lease_ms.max(250)),
                ));
            }
            Err(ClientError::Refused(reason)) => return Err(AgentError::Refused(reason)),
            Err(ClientError::NoAddress) => return Err(ClientError::NoAddress.into()),
            Err(e) => {
                warn!(error = %e, "registration failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// A random incarnation (never 0).
fn incarnation() -> u64 {
    let token = crate::random_token();
    u64::from_str_radix(&token[..16], 16).unwrap_or(1).max(1)
}

fn make_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| AgentError::WorkDir(dir.to_owned(), e))?;
    // The sandbox user must be able to reach its sandbox dir below this one.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| AgentError::WorkDir(dir.to_owned(), e))
}

/// Runs the agent until `shutdown`; then stops every sandbox it runs and returns.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    make_dir(&config.work_dir)?;
    let sandboxes = config.work_dir.join("sandboxes");
    let cache = config.work_dir.join("cache");
    make_dir(&sandboxes)?;
    make_dir(&cache)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let verifier = Verifier::start(VerifyOptions {
        work_root: sandboxes,
        cache_dir: cache,
        sandbox_user: config.sandbox_user.clone(),
        // The cores are shared by the slots.
        jobs: (cores / config.slots.max(1) as usize).clamp(1, 8),
        runtime: config.runtime,
        // Containers carry the worker's name: a restarted worker reaps what its last life left.
        worker_name: config.name.clone(),
        images: config.images.clone(),
        // S3 on the worker's AWS environment, and the named profiles (--sources).
        sources: config.sources.clone(),
        // A worker verifies again and again: keep template copies ready.
        spare_templates: true,
    })
    .await?;
    let incarnation = incarnation();
    let mut client = new_client(&config)?;
    let (heartbeat_every, lease) = register(&config, incarnation, &mut client).await?;
    let shared = Arc::new(Shared {
        incarnation,
        config,
        verifier,
        client: client.clone(),
    });
    info!(
        name = %shared.config.name,
        region = %shared.config.region,
        slots = shared.config.slots,
        incarnation = shared.incarnation,
        lease = ?lease,
        "worker registered"
    );
    shared.config.metrics.set_slots(shared.config.slots);
    let heartbeats = tokio::spawn(heartbeat_loop(shared.clone(), heartbeat_every));
    // The leader sends on the stream at least every heartbeat interval: three intervals of
    // silence (at most a lease) is a dead stream (a hung, partitioned or deposed leader), so the
    // worker looks for the new leader well before its lease runs out.
    let silence = (heartbeat_every * 3).min(lease);
    let result = assignment_loop(shared, client, silence, shutdown).await;
    heartbeats.abort();
    result
}

async fn heartbeat_loop(shared: Arc<Shared>, every: Duration) {
    let mut client = shared.client();
    client.patience = every.max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        match client
            .heartbeat(&shared.config.name, shared.incarnation)
            .await
        {
            Ok(()) => shared.config.metrics.heartbeat(true),
            // Declared lost (or forgotten): join again; the incarnation says it is a reconnect.
            Err(ClientError::Refused(reason) | ClientError::NotFound(reason)) => {
                warn!(%reason, "heartbeat refused; registering again");
                if let Err(e) = shared.register(&mut client).await {
                    warn!(error = %e, "could not register again");
                }
            }
            Err(e) => {
                shared.config.metrics.heartbeat(false);
                debug!(error = %e, "heartbeat not delivered");
            }
        }
    }
}

/// Refusals of the assignment stream in a row before the agent gives its name up, and the wait
/// between them (together about a second: far longer than a fleet view lags its log).
const MAX_REFUSALS: u32 = 5;
const REFUSAL_RETRY: Duration = Duration::from_millis(200);

async fn assignment_loop(
    shared: Arc<Shared>,
    mut client: Client,
    silence: Duration,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut finished = Finished::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let name = shared.config.name.clone();
    // "Registered again with another incarnation" right after our own registration can be the
    // leader's fleet view not yet showing it (the reply is sent at apply, the view is published
    // after): only a refusal that persists means another process took this name.
    let mut refusals = 0u32;
    'connect: while !shutdown.is_cancelled() {
        if refusals > 0 {
            tokio::time::sleep(REFUSAL_RETRY).await;
        }
        let mut stream = tokio::select! {
            s = client.assignments(&name, shared.incarnation) => match s {
                Ok(s) => s,
                Err(ClientError::NotFound(reason)) => {
                    warn!(%reason, "registering again");
                    shared.register(&mut client).await?;
                    continue 'connect;
                }
                Err(ClientError::Refused(reason)) => {
                    refusals += 1;
                    if refusals >= MAX_REFUSALS {
                        return Err(AgentError::Refused(reason));
                    }
                    continue 'connect;
                }
                Err(e) => {
                    warn!(error = %e, "no assignment stream; retrying");
                    continue 'connect;
                }
            },
            () = shutdown.cancelled() => break 'connect,
        };
        debug!("assignment stream open");
        loop {
            tokio::select! {
                // A dead stream (see `silence`): reconnect.
                msg = tokio::time::timeout(silence, stream.message()) => match msg {
                    Ok(Ok(Some(set))) => {
                        refusals = 0;
                        reconcile(&shared, &mut running, &finished, &done_tx, set);
                        shared.config.metrics.set_running(running.len());
                    }
                    Ok(Ok(None)) => { debug!("assignment stream ended"); break; }
                    Ok(Err(status)) => {
                        debug!(%status, "assignment stream broke");
                        if status.code() == tonic::Code::NotFound {
                            shared.register(&mut client).await?;
                        } else if status.code() == tonic::Code::Aborted {
                            refusals += 1;
                            if refusals >= MAX_REFUSALS {
                                return Err(AgentError::Refused(status.message().to_owned()));
                            }
                        }
                        break;
                    }
                    Err(_) => { warn!(?silence, "assignment stream silent; reconnecting"); break; }
                },
                Some((job, token)) = done_rx.recv() => {
                    if running.get(&job).is_some_and(|r| r.token == token) {
                        running.remove(&job);
                    }
                    shared.config.metrics.set_running(running.len());
                    finished.insert(job, token);
                }
                () = shutdown.cancelled() => break 'connect,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Shutdown: stop every sandbox and wait for the teardowns.
    for (_, r) in running.iter() {
        r.cancel.cancel();
    }
    for (job, r) in running {
        if let Err(e) = r.task.await {
            warn!(%job, error = %e, "attempt task failed");
        }
    }
    info!("worker stopped");
    Ok(())
}

/// Attempts this worker already ran to the end. A set computed before the verdict landed (a
/// keepalive in flight, a new leader that has not applied the verdict yet) may still list one;
/// it is not started twice. Tokens are unique, so remembering the last few thousand is enough.
#[derive(Default)]
struct Finished {
    set: HashSet<(String, u64)>,
    order: VecDeque<(String, u64)>,
}

impl Finished {
    const KEEP: usize = 4096;

    fn insert(&mut self, job: String, token: u64) {
        if self.set.insert((job.clone(), token)) {
            self.order.push_back((job, token));
        }
        while self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, job: &str, token: u64) -> bool {
        self.set.contains(&(job.to_owned(), token))
    }
}

/// Makes the running attempts match the set (see the module doc for the rule).
fn reconcile(
    shared: &Arc<Shared>,
    running: &mut HashMap<String, Running>,
    finished: &Finished,
    done: &mpsc::UnboundedSender<(String, u64)>,
    set: pb::AssignmentSet,
) {
    let wanted: HashMap<&str, &pb::Assignment> = set
        .assignments
        .iter()
        .map(|a| (a.job_id.as_str(), a))
        .collect();
    running.retain(|job, r| {
        let keep = match wanted.get(job.as_str()) {
            Some(a) => a.token == r.token,
            None => set.applied < r.token,
        };
        if !keep {
            // Ended on the coordinator's side: cancelled, re-queued, timed out, or its verdict
            // has just landed (then there is nothing left to stop).
            debug!(%job, token = r.token, "attempt no longer assigned here; stopping it");
            r.cancel.cancel();
        }
        keep
    });
    for a in &set.assignments {
        if running.contains_key(&a.job_id) || finished.contains(&a.job_id, a.token) {
            continue;
        }
        info!(job = %a.job_id, token = a.token, "attempt assigned");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(attempt(
            shared.clone(),
            a.clone(),
            cancel.clone(),
            done.clone(),
        ));
        running.insert(
            a.job_id.clone(),
            Running {
                token: a.token,
                cancel,
                task,
            },
        );
    }
}

/// Runs one attempt and delivers its verdict.
async fn attempt(
    shared: Arc<Shared>,
    a: pb::Assignment,
    cancel: CancellationToken,
    done: mpsc::UnboundedSender<(String, u64)>,
) {
    // One trace per job: this attempt's spans hang under the coordinator's span of it.
    let span = tracing::info_span!(
        "attempt",
        rehearse.job.id = %a.job_id,
        rehearse.token = a.token as i64,
        rehearse.worker = %shared.config.name,
    );
    crate::trace::set_parent(&span, &a.traceparent);
    async {
        let report = match Plan::from_toml(&a.plan_toml) {
            Ok(plan) => run_plan(&shared, &a, &plan, &cancel).await,
            Err(e) => Some(worker_failure(
                "",
                "",
                Phase::Fetch,
                format!("the plan does not parse here: {e}"),
            )),
        };
        if let Some(report) = report {
            deliver(&shared, &a, &report, &cancel).await;
        }
    }
    .instrument(span)
    .await;
    let _ = done.send((a.job_id, a.token));
}

/// The verification with its phases forwarded; `None` when it was stopped (no verdict).
async fn run_plan(
    shared: &Shared,
    a: &pb::Assignment,
    plan: &Plan,
    cancel: &CancellationToken,
) -> Option<Report> {
    let (phases_tx, phases_rx) = watch::channel(None);
    let forward = tokio::spawn(forward_phases(shared.client(), a.clone(), phases_rx));
    let result = shared
        .verifier
        .verify_tagged(
            plan,
            cancel,
            Some(phases_tx),
            None,
            Tags {
                job: Some(a.job_id.clone()),
                attempt: Some(a.token),
            },
        )
        .await;
    forward.abort();
    match result {
        Ok(mut report) => {
            report
                .notes
                .push(format!("ran on worker {}", shared.config.name));
            Some(report)
        }
        Err(VerifyError::Interrupted) => {
            info!(job = %a.job_id, "attempt stopped; sandbox removed");
            None
        }
        // The worker could not run it at all: still a report, `error` (could not verify),
        // naming this worker, so the job is retried elsewhere and never waits forever.
        Err(e) => Some(worker_failure(
            &plan.artifact.url,
            plan.artifact.engine.as_str(),
            Phase::Provision,
            format!("worker {} could not run it: {e}", shared.config.name),
        )),
    }
}

fn worker_failure(url: &str, engine: &str, phase: Phase, reason: String) -> Report {
    let now = SystemTime::now();
    let mut report = Report::new(
        url,
        engine,
        "process",
        humantime::format_rfc3339_seconds(now).to_string(),
    );
    report.could_not_verify(phase.as_str(), reason);
    let started_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    report.finish(&Default::default(), started_ms, None);
    report
}

/// Sends each phase as it begins (best effort: a lost progress message only delays `job get`).
async fn forward_phases(
    mut client: Client,
    a: pb::Assignment,
    mut phases: watch::Receiver<Option<Phase>>,
) {
    while phases.changed().await.is_ok() {
        let phase = *phases.borrow_and_update();
        let Some(phase) = phase else { continue };
        match client.progress(&a.job_id, a.token, phase.as_str()).await {
            Ok(()) => {}
            Err(ClientError::Refused(reason)) => {
                debug!(job = %a.job_id, %reason, "progress refused");
                return;
            }
            Err(e) => debug!(job = %a.job_id, error = %e, "progress not delivered"),
        }
    }
}

/// Sends the verdict until it is accepted or refused, or the attempt is ended by the coordinator.
async fn deliver(shared: &Shared, a: &pb::Assignment, report: &Report, cancel: &CancellationToken) {
    let json = match serde_json::to_string(report) {
        Ok(j) => j,
        Err(e) => {
            warn!(job = %a.job_id, error = %e, "report does not encode");
            return;
        }
    };
    let mut client = shared.client();
    loop {
        let sent = tokio::select! {
            r = client.verdict(&a.job_id, a.token, &json) => r,
            () = cancel.cancelled() => return,
        };
        match sent {
            Ok(()) => {
                info!(job = %a.job_id, token = a.token, verdict = ?report.verdict, "verdict accepted");
                shared.config.metrics.delivered(report);
                return;
            }
            Err(ClientError::Refused(reason) | ClientError::NotFound(reason)) => {
                warn!(job = %a.job_id, token = a.token, %reason, "verdict refused");
                return;
            }
            Err(e) => {
                warn!(job = %a.job_id, error = %e, "verdict not delivered yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
