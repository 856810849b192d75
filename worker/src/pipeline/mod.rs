//! One verification, phase by phase: fetch → checksum → provision → restore → checks → teardown.
//!
//! Each phase is timed on one clock. RTO is the start of fetch to the end of checks; teardown is
//! reported apart. A failure in any phase ends the run with a `failed` verdict naming the phase
//! and the reason; the sandbox is torn down on every path — pass, fail, timeout, interrupt.
//! What stops a verification for a reason outside the backup (no server binaries, no image, a
//! sandbox that cannot start, a missing extension, a resource limit; see `rehearse_core::fault`)
//! ends it with the verdict `error`: could not verify, never `failed`. Only an interrupt is an
//! error of this module once a verification started.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use rehearse_core::plan::Plan;
use rehearse_core::report::{Phase, Report, duration_ms};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::artifact::Sources;
use crate::engines::postgres::binaries::Installed;
use crate::engines::{self, Engine, Env, Inspection, Session, Stop};
use crate::runtime::{DockerRuntime, RuntimeChoice, Tags};
use crate::sandbox::{self, ProcessRuntime, SandboxDir, SandboxError};

/// Records a failed phase and ends the run: a verdict, not an error — `failed`, unless what was
/// said names the sandbox rather than the backup (`rehearse_core::fault`), then `error`. (A
/// macro rather than a method so it can return from the phase function it is used in.)
macro_rules! fail {
    ($run:ident, $phase:expr, $reason:expr) => {{
        let reason: String = $reason.into();
        match rehearse_core::fault::environment(&reason) {
            Some(what) => $run
                .report
                .could_not_verify($phase.as_str(), format!("{what}: {reason}")),
            None => $run.report.fail($phase.as_str(), reason),
        }
        $run.clock.end(false);
        return Default::default();
    }};
}

/// A tool failed: `error` if the sandbox says it was at fault (its disk or memory limit, a full
/// disk in its log), else a failure as [`fail!`] decides.
macro_rules! fail_unless_sandbox {
    ($run:ident, $phase:expr, $session:expr, $reason:expr) => {{
        let reason: String = $reason;
        match $session.fault().await {
            Some(fault) => cannot!($run, $phase, format!("{fault} ({reason})")),
            None => fail!($run, $phase, reason),
        }
    }};
}

/// Ends the run with the verdict `error`: the worker or its sandbox, not the backup, stopped it.
macro_rules! cannot {
    ($run:ident, $phase:expr, $reason:expr) => {{
        $run.report.could_not_verify($phase.as_str(), $reason);
        $run.clock.end(false);
        return Default::default();
    }};
}

/// Ends the run with the verdict `error` and a time to try again: the artifact is not readable
/// yet (an archived object being restored), which says nothing about the backup.
macro_rules! not_yet {
    ($run:ident, $phase:expr, $reason:expr, $after:expr) => {{
        $run.report
            .not_yet($phase.as_str(), $reason, $after.as_millis() as u64);
        $run.clock.end(false);
        return Default::default();
    }};
}

/// Where and how verifications run.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Sandbox directories are made here (one `rehearse-*` dir per verification).
    pub work_root: PathBuf,
    /// Long-lived caches (initdb templates).
    pub cache_dir: PathBuf,
    /// The unprivileged user sandbox processes run as when started as root.
    pub sandbox_user: String,
    /// Parallel jobs for pg_restore and pg_amcheck.
    pub jobs: usize,
    /// Process, docker, or docker when the engine's image is there.
    pub runtime: RuntimeChoice,
    /// The `rehearse.worker` label of this process's containers (the reaper's scope).
    pub worker_name: String,
    /// Default image per engine for the docker runtime ("postgres", "mysql").
    pub images: HashMap<String, String>,
    /// Source settings: S3 defaults on top of the AWS environment, and the named `[s3.NAME]` /
    /// `[http.NAME]` profiles a plan selects with `[artifact] profile = "name"`.
    pub sources: Sources,
    /// Keep a spare copy of each server template ready, made in the background after each
    /// provision, so the next provision only renames it in. Right for a worker or anything that
    /// verifies repeatedly; a process that verifies once would copy a spare only to drop it.
    pub spare_templates: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            work_root: std::env::temp_dir(),
            cache_dir: sandbox::default_cache_dir(),
            sandbox_user: "nobody".to_owned(),
            jobs: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
            runtime: RuntimeChoice::Process,
            worker_name: "local".to_owned(),
            images: HashMap::new(),
            sources: Sources::default(),
            spare_templates: true,
        }
    }
}

/// Why a verification could not happen (exit code 2), or was interrupted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    NoServer(String),
    #[error("interrupted")]
    Interrupted,
    #[error("docker runtime: {0}")]
    Docker(String),
}

/// Turns a phase's [`Stop`] into the verdict and ends the run.
macro_rules! stop {
    ($run:ident, $phase:expr, $session:expr, $stop:expr) => {{
        match $stop {
            Stop::Failed(reason) => fail!($run, $phase, reason),
            Stop::Tool(reason) => fail_unless_sandbox!($run, $phase, $session, reason),
            Stop::Cannot(reason) => cannot!($run, $phase, reason),
        }
    }};
}

mod clock;
mod fetch;

use clock::Clock;

/// Runs verifications with one runtime and the engines registered in [`engines::registered`].
#[derive(Debug)]
pub struct Verifier {
    rt: ProcessRuntime,
    engines: Vec<Box<dyn Engine>>,
    docker: Option<DockerRuntime>,
    opts: VerifyOptions,
}

impl Verifier {
    /// Sets up the runtime, reaps sandboxes left by dead processes, finds each engine's tools.
    pub fn new(opts: VerifyOptions) -> Result<Verifier, VerifyError> {
        let rt = ProcessRuntime::new(&opts.work_root, &opts.sandbox_user)?;
        // Only restores run as processes need unshare: a docker-only worker (e.g. in a container
        // of the binary image, which has no util-linux) runs none.
        if opts.runtime != RuntimeChoice::Docker
            && rt.user().is_some()
            && !sandbox::in_path("unshare")
        {
            return Err(VerifyError::NoServer(
                "unshare (util-linux) is needed to isolate the sandbox but is not in PATH".into(),
            ));
        }
        let reaped = sandbox::reap_stale(rt.work_root()) + sandbox::Spares::reap(&opts.cache_dir);
        if reaped > 0 {
            warn!(
                reaped,
                "removed sandboxes left behind by processes that died"
            );
        }
        Ok(Verifier {
            rt,
            engines: engines::registered(),
            docker: None,
            opts,
        })
    }

    /// [`Verifier::new`], then the Docker engine when the options ask for it: `Docker` fails
    /// without one; `Auto` goes on with processes only. Containers of this worker whose owner
    /// died are removed.
    pub async fn start(opts: VerifyOptions) -> Result<Verifier, VerifyError> {
        let choice = opts.runtime;
        let mut verifier = Verifier::new(opts)?;
        if choice != RuntimeChoice::Process {
            match DockerRuntime::connect(&verifier.opts.worker_name, verifier.opts.images.clone())
                .await
            {
                Ok(docker) => {
                    // A dead worker's container may have been writing into its sandbox dir (the
                    // disk-backed data dir) while `new` tried to reap it: now that the container
                    // is gone, reap again.
                    sandbox::reap_stale(verifier.rt.work_root());
                    verifier.docker = Some(docker);
                }
                Err(e) if choice == RuntimeChoice::Docker => return Err(VerifyError::Docker(e)),
                Err(e) => info!(reason = %e, "no Docker engine; restores run as processes"),
            }
        }
        Ok(verifier)
    }

    /// The registered engine of type `E`, for what it found on this host.
    pub fn engine<E: Engine + 'static>(&self) -> Option<&E> {
        self.engines.iter().find_map(|e| e.as_any().downcast_ref())
    }

    /// The PostgreSQL installations found on this host.
    pub fn installations(&self) -> &[Installed] {
        self.engine::<engines::postgres::Postgres>()
            .map_or(&[], |pg| pg.installations())
    }

    /// The local MariaDB (process runtime), or why there is none.
    pub fn maria(&self) -> Result<&engines::mysql::MariaInstall, String> {
        self.engine::<engines::mysql::Mysql>()
            .ok_or("the mysql engine is not registered")?
            .install()
    }

    pub fn docker(&self) -> Option<&DockerRuntime> {
        self.docker.as_ref()
    }

    /// The container image a plan runs in, or `None` for the process runtime.
    async fn image_for(&self, plan: &Plan) -> Result<Option<(&DockerRuntime, String)>, String> {
        let engine = plan.artifact.engine.as_str();
        match (self.opts.runtime, &self.docker) {
            (RuntimeChoice::Process, _) | (RuntimeChoice::Auto, None) => Ok(None),
            (RuntimeChoice::Docker, None) => {
                Err("docker runtime: no Docker engine connected".into())
            }
            (choice, Some(docker)) => {
                let image = docker.image_for(engine, &plan.sandbox);
                if docker.has_image(&image).await {
                    Ok(Some((docker, image)))
                } else if choice == RuntimeChoice::Auto && plan.sandbox.image.is_none() {
                    Ok(None)
                } else {
                    Err(format!(
                        "docker runtime: image {image} is not on this Docker engine (build the defaults with deploy/images/build, or pull it)"
                    ))
                }
            }
        }
    }

    pub fn runtime(&self) -> &ProcessRuntime {
        &self.rt
    }

    pub fn options(&self) -> &VerifyOptions {
        &self.opts
    }

    /// Verifies one plan. `Ok` carries the verdict (passed, failed, or error: could not verify);
    /// `Err` only for an interrupt.
    pub async fn verify(
        &self,
        plan: &Plan,
        cancel: &CancellationToken,
    ) -> Result<Report, VerifyError> {
        self.verify_watched(plan, cancel, None).await
    }

    /// [`Self::verify`], announcing each phase as it begins on `phases` (a worker reports them
    /// to the coordinator, so `job get` shows where a run is).
    pub async fn verify_watched(
        &self,
        plan: &Plan,
        cancel: &CancellationToken,
        phases: Option<tokio::sync::watch::Sender<Option<Phase>>>,
    ) -> Result<Report, VerifyError> {
        self.verify_tagged(plan, cancel, phases, None, Tags::default())
            .await
    }

    /// [`Self::verify_watched`], counting the running phase's bytes on `meter` (the CLI's
    /// progress bar reads it).
    pub async fn verify_metered(
        &self,
        plan: &Plan,
        cancel: &CancellationToken,
        phases: tokio::sync::watch::Sender<Option<Phase>>,
        meter: std::sync::Arc<crate::progress::Meter>,
    ) -> Result<Report, VerifyError> {
        self.verify_tagged(plan, cancel, Some(phases), Some(meter), Tags::default())
            .await
    }

    /// [`Self::verify_watched`], with the job and attempt a container sandbox is labelled with.
    pub async fn verify_tagged(
        &self,
        plan: &Plan,
        cancel: &CancellationToken,
        phases: Option<tokio::sync::watch::Sender<Option<Phase>>>,
        meter: Option<std::sync::Arc<crate::progress::Meter>>,
        tags: Tags,
    ) -> Result<Report, VerifyError> {
        let started = SystemTime::now();
        let mut report = Report::new(
            &plan.artifact.url,
            plan.artifact.engine.as_str(),
            "process",
            humantime::format_rfc3339_seconds(started).to_string(),
        );
        report.name = plan.name.clone();
        if plan.artifact.engine != rehearse_core::plan::Engine::Files {
            report.profile = Some(plan.sandbox.profile.as_str().to_owned());
        }
        // The verification's span: under the worker's attempt span (and so the job's trace) when
        // there is one, else the root of its own trace.
        let span = tracing::info_span!(
            "verify",
            rehearse.artifact = %plan.artifact.url,
            rehearse.engine = plan.artifact.engine.as_str(),
            rehearse.bytes = tracing::field::Empty,
            rehearse.verdict = tracing::field::Empty,
            rehearse.rto_ms = tracing::field::Empty,
        );
        let mut run = Run {
            report,
            clock: Clock {
                announce: phases,
                meter: meter.unwrap_or_default(),
                span: Some(span.clone()),
                artifact: plan.artifact.url.clone(),
                engine: plan.artifact.engine.as_str(),
                ..Clock::default()
            },
            session: None,
            spill: None,
            newest_ms: None,
            tags,
        };
        info!(artifact = %plan.artifact.url, "verification started");

        let ended = {
            let work = tokio::time::timeout(plan.timeout, self.phases(plan, &mut run));
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => match r {
                    Ok(()) => Ended::Done,
                    Err(_) => Ended::TimedOut,
                },
                () = cancel.cancelled() => Ended::Interrupted,
            }
        };
        let mut outcome = Ok(());
        match ended {
            Ended::Done => {}
            Ended::TimedOut => {
                let phase = run.clock.interrupt();
                run.report.fail(
                    phase.as_str(),
                    format!(
                        "timed out after {} (plan timeout)",
                        humantime::format_duration(plan.timeout)
                    ),
                );
            }
            Ended::Interrupted => {
                run.clock.interrupt();
                outcome = Err(VerifyError::Interrupted);
            }
        }
        if let Some(mut session) = run.session.take()
            && session.has_sandbox()
        {
            run.clock.begin(Phase::Teardown);
            let stopped = session.teardown().await;
            if let Err(e) = &stopped {
                warn!(error = %e, "teardown incomplete");
                run.report.notes.push(format!("teardown incomplete: {e}"));
            }
            run.clock.end(stopped.is_ok());
        }
        if let Some(mut spill) = run.spill.take() {
            let removed = tokio::task::spawn_blocking(move || spill.remove()).await;
            if !matches!(removed, Ok(Ok(()))) {
                run.report
                    .notes
                    .push("the downloaded artifact's spill dir could not be removed".into());
            }
        }
        outcome?;
        run.report.phases = run.clock.phases;
        let started_ms = started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| duration_ms(d) as i64);
        // A recovered base backup: RPO runs from the disaster instant (the recovery target, or
        // the verification start) to the last commit replayed, unless a freshness query says.
        let mut disaster_ms = started_ms;
        if let Some(recovery) = &run.report.recovery
            && plan.targets.freshness.is_none()
        {
            let ms = |at: &str| {
                humantime::parse_rfc3339_weak(at)
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| duration_ms(d) as i64)
            };
            if let Some(target) = ms(&recovery.target) {
                disaster_ms = target;
            }
            if let Some(at) = &recovery.last_commit_at {
                run.newest_ms = ms(at);
                run.report.newest_data_at = Some(at.clone());
            }
        }
        run.report.finish(&plan.targets, disaster_ms, run.newest_ms);
        span.record("rehearse.bytes", run.report.artifact.bytes as i64);
        span.record("rehearse.verdict", run.report.verdict.as_str());
        if let Some(rto) = run.report.rto_ms {
            span.record("rehearse.rto_ms", rto as i64);
        }
        info!(verdict = ?run.report.verdict, rto_ms = ?run.report.rto_ms, "verification finished");
        Ok(run.report)
    }

    /// The phases after the checksum: the engine decides what the artifact is, then its
    /// session provisions, restores and inspects, each on the clock.
    async fn phases<'a>(&'a self, plan: &Plan, run: &mut Run<'a>) {
        let Some(artifact) = self.fetch_and_check(plan, run).await else {
            return;
        };
        let Some(engine) = self
            .engines
            .iter()
            .find(|e| e.kind() == plan.artifact.engine)
        else {
            run.clock.begin(Phase::Restore);
            cannot!(
                run,
                Phase::Restore,
                format!(
                    "this worker has no {} engine",
                    plan.artifact.engine.as_str()
                )
            );
        };
        // What is it? Decided from the content before any sandbox is made for it.
        let session = match engine.classify(&artifact) {
            Ok(session) => run.session.insert(session),
            Err(reason) => {
                run.clock.begin(Phase::Restore);
                fail!(run, Phase::Restore, reason);
            }
        };
        run.report.artifact.format = Some(session.format());
        // Where it runs: a container (docker runtime) or local processes.
        let auto_to_process =
            self.opts.runtime == RuntimeChoice::Auto && !session.container_ready();
        let container = if engine.uses_runtime() && !auto_to_process {
            match self.image_for(plan).await {
                Ok(container) => container,
                Err(reason) => {
                    run.clock.begin(Phase::Provision);
                    cannot!(run, Phase::Provision, reason);
                }
            }
        } else {
            None
        };
        let env = Env {
            plan,
            rt: &self.rt,
            container,
            cache_dir: &self.opts.cache_dir,
            jobs: plan.sandbox.jobs.unwrap_or(self.opts.jobs),
            tags: run.tags.clone(),
            digest: run.report.artifact.blake3.clone().unwrap_or_default(),
            spares: self.opts.spare_templates,
            sources: &self.opts.sources,
            meter: run.clock.meter.watched().then(|| run.clock.meter.clone()),
        };

        run.clock.begin(Phase::Provision);
        run.report.runtime = if env.container.is_some() {
            "docker"
        } else {
            "process"
        }
        .to_owned();
        match session.provision(&env, &artifact).await {
            Ok(made) => {
                run.report.runtime = made.runtime.to_owned();
                run.report.server_version = made.server_version;
                run.report.notes.extend(made.notes);
            }
            Err(e) => stop!(run, Phase::Provision, session, e),
        }
        run.clock.end(true);

        run.clock.begin(Phase::Restore);
        let restored = match session.restore(&env).await {
            Ok(restored) => restored,
            Err(e) => stop!(run, Phase::Restore, session, e),
        };
        if let Err(reason) = artifact.unchanged() {
            // Not the bytes that were hashed any more: nothing can be said of either version.
            cannot!(run, Phase::Restore, reason);
        }
        run.report.database = restored.database;
        run.report.files = restored.files;
        run.report.recovery = restored.recovery;
        if restored.server_version.is_some() {
            run.report.server_version = restored.server_version;
        }
        run.report.notes.extend(restored.notes);
        run.clock.end(true);

        if plan.promote.is_some() {
            run.clock.begin(Phase::Promote);
            match session.promote(&env).await {
                Ok(promotion) => {
                    if let Some(recovery) = run.report.recovery.as_mut() {
                        recovery.promotion = Some(promotion);
                    }
                }
                Err(e) => stop!(run, Phase::Promote, session, e),
            }
            run.clock.end(true);
        }

        run.clock.begin(Phase::Checks);
        match session.inspect(&env).await {
            Ok(found) => finish_checks(run, found),
            Err(e) => stop!(run, Phase::Checks, session, e),
        }
    }
}

enum Ended {
    Done,
    TimedOut,
    Interrupted,
}

/// The state of one verification while it runs.
struct Run<'a> {
    report: Report,
    clock: Clock,
    /// The engine's session, once the artifact is classified; its sandbox is torn down by
    /// `verify` whatever happens to the phases.
    session: Option<Box<dyn Session + 'a>>,
    /// Where a downloaded artifact was spilled; removed with the sandbox.
    spill: Option<SandboxDir>,
    newest_ms: Option<i64>,
    tags: Tags,
}

/// Records what the checks phase found and ends it (and the RTO clock).
fn finish_checks(run: &mut Run<'_>, found: Inspection) {
    run.report.checks = found.checks;
    run.report.tables = found.tables;
    run.report.integrity = found.integrity;
    run.report.exported = found.exported;
    run.report.notes.extend(found.notes);
    if let Some((ms, text)) = found.newest {
        run.newest_ms = Some(ms);
        run.report.newest_data_at = Some(text);
    }
    let ok = found.failure.is_none();
    if let Some(reason) = found.failure {
        run.report.fail(Phase::Checks.as_str(), reason);
    }
    run.clock.end(ok);
    run.report.rto_ms = run.clock.since_start();
}
