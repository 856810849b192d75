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
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rehearse_core::backupset::Pick;
use rehearse_core::format::{SNIFF_LEN, Sniffed, sniff};
use rehearse_core::install;
use rehearse_core::limits::SandboxSpec;
use rehearse_core::plan::{Engine, Plan};
use rehearse_core::report::{CopyReport, Phase, PhaseReport, Report, duration_ms};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::artifact::{self, LocalArtifact, SourceError, Sources, checksum};
use crate::mysql::{MariaInstall, MariaServer};
use crate::postgres::binaries::{self, Installed};
use crate::postgres::cluster::{ClusterError, PgCluster};
use crate::postgres::inspect::{self, Inspection};
use crate::postgres::restore::{self, Compression, Input};
use crate::runtime::{DockerRuntime, RuntimeChoice, Tags};
use crate::sandbox::{self, ProcessRuntime, SandboxDir, SandboxError};

/// Records a failed phase and ends the run: a verdict, not an error — `failed`, unless what was
/// said names the sandbox rather than the backup (`rehearse_core::fault`), then `error`. (A
/// macro rather than a method so the borrow of the sandbox held in `run.cluster` can stay alive
/// beside it.)
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
        return Ok(());
    }};
}

/// A tool failed: `error` if the sandbox says it was at fault (its disk or memory limit, a full
/// disk in its log), else a failure as [`fail!`] decides.
macro_rules! fail_unless_sandbox {
    ($run:ident, $phase:expr, $sandbox:expr, $reason:expr) => {{
        let reason: String = $reason;
        match $sandbox.fault().await {
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
        return Ok(());
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
    #[error("sandbox could not start: {0}")]
    Provision(#[from] ClusterError),
    #[error("interrupted")]
    Interrupted,
    #[error("docker runtime: {0}")]
    Docker(String),
}

/// Runs verifications with one runtime and the PostgreSQL installations found at start.
#[derive(Debug)]
pub struct Verifier {
    rt: ProcessRuntime,
    installs: Vec<Installed>,
    /// The local MariaDB, or why there is none (needed only by mysql plans in the process runtime).
    maria: Result<MariaInstall, String>,
    docker: Option<DockerRuntime>,
    opts: VerifyOptions,
}

impl Verifier {
    /// Sets up the runtime, reaps sandboxes left by dead processes, finds PostgreSQL.
    pub fn new(opts: VerifyOptions) -> Result<Verifier, VerifyError> {
        let rt = ProcessRuntime::new(&opts.work_root, &opts.sandbox_user)?;
        if rt.user().is_some() && !sandbox::in_path("unshare") {
            return Err(VerifyError::NoServer(
                "unshare (util-linux) is needed to isolate the sandbox but is not in PATH".into(),
            ));
        }
        let reaped = sandbox::reap_stale(rt.work_root());
        if reaped > 0 {
            warn!(
                reaped,
                "removed sandboxes left behind by processes that died"
            );
        }
        let installs = binaries::discover();
        let maria = crate::mysql::discover();
        Ok(Verifier {
            rt,
            installs,
            maria,
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

    /// The local MariaDB (process runtime), or why there is none.
    pub fn maria(&self) -> Result<&MariaInstall, String> {
        self.maria.as_ref().map_err(Clone::clone)
    }

    pub fn docker(&self) -> Option<&DockerRuntime> {
        self.docker.as_ref()
    }

    /// The container image a plan runs in, or `None` for the process runtime.
    async fn image_for(
        &self,
        plan: &Plan,
    ) -> Result<Option<(&DockerRuntime, String)>, VerifyError> {
        let engine = plan.artifact.engine.as_str();
        match (self.opts.runtime, &self.docker) {
            (RuntimeChoice::Process, _) | (RuntimeChoice::Auto, None) => Ok(None),
            (RuntimeChoice::Docker, None) => {
                Err(VerifyError::Docker("no Docker engine connected".into()))
            }
            (choice, Some(docker)) => {
                let image = docker.image_for(engine, &plan.sandbox);
                if docker.has_image(&image).await {
                    Ok(Some((docker, image)))
                } else if choice == RuntimeChoice::Auto && plan.sandbox.image.is_none() {
                    Ok(None)
                } else {
                    Err(VerifyError::Docker(format!(
                        "image {image} is not on this Docker engine (build the defaults with deploy/images/build, or pull it)"
                    )))
                }
            }
        }
    }

    pub fn runtime(&self) -> &ProcessRuntime {
        &self.rt
    }

    pub fn installations(&self) -> &[Installed] {
        &self.installs
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
        self.verify_tagged(plan, cancel, phases, Tags::default())
            .await
    }

    /// [`Self::verify_watched`], with the job and attempt a container sandbox is labelled with.
    pub async fn verify_tagged(
        &self,
        plan: &Plan,
        cancel: &CancellationToken,
        phases: Option<tokio::sync::watch::Sender<Option<Phase>>>,
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
        let mut run = Run {
            report,
            clock: Clock {
                announce: phases,
                ..Clock::default()
            },
            server: None,
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
                    Ok(result) => Ended::Done(result),
                    Err(_) => Ended::TimedOut,
                },
                () = cancel.cancelled() => Ended::Interrupted,
            }
        };
        let mut outcome = Ok(());
        match ended {
            Ended::Done(result) => outcome = result,
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
        // Whatever stopped the verification from outside the backup is a verdict too: `error`,
        // in the phase it happened, so the coordinator retries elsewhere and nobody is told the
        // backup is bad.
        if let Err(e) = &outcome
            && !matches!(e, VerifyError::Interrupted)
        {
            let phase = if run.clock.current.is_some() {
                run.clock.interrupt()
            } else {
                Phase::Provision
            };
            run.report.could_not_verify(phase.as_str(), e.to_string());
            outcome = Ok(());
        }
        if let Some(server) = run.server.take() {
            run.clock.begin(Phase::Teardown);
            let stopped = server.stop().await;
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
        run.report.finish(&plan.targets, started_ms, run.newest_ms);
        info!(verdict = ?run.report.verdict, rto_ms = ?run.report.rto_ms, "verification finished");
        Ok(run.report)
    }

    async fn phases(&self, plan: &Plan, run: &mut Run) -> Result<(), VerifyError> {
        // fetch: locate (for a backup set, pick) and open the artifact. For a local file there is
        // nothing to transfer.
        run.clock.begin(Phase::Fetch);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let a = &plan.artifact;
        let seed = a
            .seed
            .unwrap_or_else(|| u64::from_str_radix(&crate::random_token()[..16], 16).unwrap_or(0));
        let source = match artifact::source_for(&a.url, a.profile.as_deref(), &self.opts.sources) {
            Ok(source) => source,
            Err(SourceError::Plan(reason)) => fail!(run, Phase::Fetch, reason),
            Err(SourceError::Worker(reason)) => cannot!(run, Phase::Fetch, reason),
        };
        let picked = match source.resolve(&a.url, a.pick, a.within, now_ms, seed).await {
            Ok(p) => p,
            Err(reason) => fail!(run, Phase::Fetch, reason),
        };
        if let (Some((eligible, listed)), Some(pick)) = (picked.from, a.pick) {
            run.report.artifact.url = picked.url.clone();
            run.report.artifact.candidates = Some(eligible);
            run.report.notes.push(format!(
                "picked the {} of {eligible} eligible backups ({listed} in {})",
                if pick == Pick::Latest {
                    "latest"
                } else {
                    "random pick"
                },
                a.url
            ));
        }
        // An object in a store streams into a spill file in the work dir, hashed on the way: the
        // checksum phase then only compares.
        let spill = if source.needs_spill() {
            match self.rt.create_dir() {
                Ok(dir) => Some(run.spill.insert(dir).path().to_owned()),
                Err(e) => cannot!(run, Phase::Fetch, format!("spill dir: {e}")),
            }
        } else {
            None
        };
        let fetched = match source.fetch(&picked.url, spill.as_deref()).await {
            Ok(fetched) => fetched,
            Err(reason) => fail!(run, Phase::Fetch, reason),
        };
        let hashed_on_fetch = fetched.hashed;
        let mut artifact = match artifact::local::open(fetched.path) {
            Ok(a) => a,
            Err(reason) => fail!(run, Phase::Fetch, reason),
        };
        run.report.artifact.bytes = artifact.bytes;
        run.clock.end(true);

        // checksum: the one pass over the bytes (already made while downloading).
        run.clock.begin(Phase::Checksum);
        let path = artifact.path.clone();
        let is_dir = artifact.is_dir;
        let mut tree_manifest = None;
        let hashed = match hashed_on_fetch {
            Some(done) => Ok(Ok(done)),
            None if is_dir => {
                match tokio::task::spawn_blocking(move || checksum::hash_tree(&path)).await {
                    Ok(Ok((h, n, manifest))) => {
                        tree_manifest = Some(manifest);
                        Ok(Ok((h, n)))
                    }
                    Ok(Err(e)) => Ok(Err(e)),
                    Err(e) => Err(e),
                }
            }
            None => tokio::task::spawn_blocking(move || checksum::hash_file(&path)).await,
        };
        let (digest, bytes) = match hashed {
            Ok(Ok(pair)) => pair,
            // A worker that may not read the file cannot verify it; an unreadable backup (I/O
            // error, vanished) is a bad one.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => cannot!(
                run,
                Phase::Checksum,
                format!("this worker may not read the artifact: {e}")
            ),
            Ok(Err(e)) => fail!(run, Phase::Checksum, format!("read artifact: {e}")),
            Err(e) => cannot!(run, Phase::Checksum, format!("checksum task failed: {e}")),
        };
        artifact.bytes = bytes;
        run.report.artifact.bytes = bytes;
        run.report.artifact.blake3 = Some(digest.to_hex().to_string());
        // The expected digest: the plan's, or else a sidecar's next to the artifact.
        let expected = match plan.artifact.blake3 {
            Some(d) => Some((d, "plan")),
            None if artifact.is_dir => {
                // A pg_dump directory: its `<dir>.blake3` manifest, file by file.
                match dir_manifest(&artifact.path, tree_manifest.as_deref().unwrap_or_default()) {
                    Ok(Some(n)) => {
                        run.report.artifact.blake3_from = Some("manifest".into());
                        run.report
                            .notes
                            .push(format!("{n} files checked against the manifest"));
                    }
                    Ok(None) => {}
                    Err(reason) => fail!(run, Phase::Checksum, reason),
                }
                None
            }
            None => match source.sidecar(&picked.url).await {
                Ok(found) => found.map(|d| (d, "sidecar")),
                Err(reason) => fail!(run, Phase::Checksum, reason),
            },
        };
        if let Some((expected, from)) = expected {
            run.report.artifact.blake3_from = Some(from.to_owned());
            if expected.0 != *digest.as_bytes() {
                fail!(
                    run,
                    Phase::Checksum,
                    format!(
                        "blake3 mismatch: expected {expected} ({from}), got {}",
                        digest.to_hex()
                    )
                );
            }
        }
        // Copies (3-2-1): each must exist and hash the same. A bad copy fails the verdict, but the
        // artifact itself is good, so the restore still runs and the report is whole.
        let copies = check_copies(
            &plan.artifact.copies,
            &digest,
            &self.opts.sources,
            &picked.url,
            a.profile.as_deref(),
        )
        .await;
        let bad_copy = copies.iter().find(|c| !c.ok).map(|c| {
            format!(
                "copy {}: {}",
                c.url,
                c.reason.as_deref().unwrap_or("differs")
            )
        });
        run.report.artifact.copies = copies;
        if let Some(reason) = bad_copy {
            run.report.fail(Phase::Checksum.as_str(), reason);
        }
        run.clock.end(run.report.failure.is_none());

        // What is it? Decided from the content before any sandbox is made for it; then where it
        // runs: a container (docker runtime) or local processes.
        if plan.artifact.engine == Engine::Files {
            // No server and no tool: the worker extracts the archive itself, in either runtime.
            return self.files(plan, run, &artifact).await;
        }
        let container = self.image_for(plan).await?;
        run.report.runtime = if container.is_some() {
            "docker"
        } else {
            "process"
        }
        .to_owned();
        match plan.artifact.engine {
            Engine::Postgres => self.postgres(plan, run, &artifact, container).await,
            Engine::Mysql => self.mysql(plan, run, &artifact, container).await,
            Engine::Files => Ok(()), // extracted above
        }
    }

    async fn files(
        &self,
        plan: &Plan,
        run: &mut Run,
        artifact: &LocalArtifact,
    ) -> Result<(), VerifyError> {
        let (path, compression, format) = match classify_tar(artifact) {
            Ok(found) => found,
            Err(reason) => {
                run.clock.begin(Phase::Restore);
                fail!(run, Phase::Restore, reason);
            }
        };
        run.report.artifact.format = Some(format);
        run.report.runtime = "process".to_owned();

        run.clock.begin(Phase::Provision);
        let dir = self.rt.create_dir()?;
        let root = dir.path().join("root");
        let made = sandbox::make_shared_dir(&root);
        let stop = Arc::new(AtomicBool::new(false));
        run.server = Some(Server::Files(dir, stop.clone()));
        if let Err(e) = made {
            cannot!(run, Phase::Provision, format!("extraction dir: {e}"));
        }
        run.report.notes.push(
            "files extracted by the worker itself into its sandbox dir, every entry admitted first (paths, links, kinds, limits)".into(),
        );
        run.clock.end(true);

        run.clock.begin(Phase::Restore);
        let spec = plan.files.clone();
        let into = root.clone();
        let extracted = tokio::task::spawn_blocking(move || {
            crate::files::extract(&path, compression, &into, &spec, &stop)
        })
        .await;
        let report = match extracted {
            Ok(Ok(report)) => report,
            Ok(Err(reason)) => fail!(run, Phase::Restore, reason),
            Err(e) => fail!(run, Phase::Restore, format!("extraction task failed: {e}")),
        };
        run.report.files = Some(report);
        if let Err(reason) = artifact.unchanged() {
            // Not the bytes that were hashed any more: nothing can be said of either version.
            cannot!(run, Phase::Restore, reason);
        }
        run.clock.end(true);

        run.clock.begin(Phase::Checks);
        let spec = plan.files.clone();
        let checks = tokio::task::spawn_blocking(move || crate::files::check(&root, &spec))
            .await
            .unwrap_or_default();
        let mut found = Inspection::default();
        for c in &checks {
            if let Some(reason) = &c.reason {
                found.fail(format!("check {:?}: {reason}", c.name));
            }
        }
        found.checks = checks;
        finish_checks(run, found);
        Ok(())
    }

    async fn postgres(
        &self,
        plan: &Plan,
        run: &mut Run,
        artifact: &LocalArtifact,
        container: Option<(&DockerRuntime, String)>,
    ) -> Result<(), VerifyError> {
        let (input, server_major, format) = match classify(artifact) {
            Ok(found) => found,
            Err(reason) => {
                run.clock.begin(Phase::Restore);
                fail!(run, Phase::Restore, reason);
            }
        };
        run.report.artifact.format = Some(format);

        run.clock.begin(Phase::Provision);
        match container {
            Some((docker, image)) => {
                let cluster = PgCluster::create_docker(&self.rt, docker)?;
                let Server::Pg(cluster) = run.server.insert(Server::Pg(cluster)) else {
                    unreachable!("just inserted")
                };
                // Tools that read the artifact by path read a verified copy in the sandbox (plain
                // scripts are streamed in by the worker instead).
                let mut mounted = None;
                if !matches!(input, Input::Plain(..)) {
                    let digest = run.report.artifact.blake3.clone().unwrap_or_default();
                    match cluster
                        .sandbox()
                        .stage_artifact(&artifact.path, artifact.is_dir, &digest)
                        .await
                    {
                        Ok(staged) => mounted = Some((artifact.path.clone(), staged)),
                        Err(reason) => cannot!(run, Phase::Provision, reason),
                    }
                }
                if let Err(e) = cluster
                    .start_container(image.clone(), &plan.sandbox, mounted, run.tags.clone())
                    .await
                {
                    cannot!(
                        run,
                        Phase::Provision,
                        format!("container from {image}: {e}")
                    );
                }
                if let Some(major) = server_major
                    && !cluster.version.starts_with(&format!("{major}."))
                    && cluster
                        .version
                        .split('.')
                        .next()
                        .and_then(|m| m.parse::<u32>().ok())
                        < Some(major)
                {
                    cannot!(
                        run,
                        Phase::Provision,
                        format!(
                            "the dump is from PostgreSQL {major}, newer than the image's {} ({image}; use a newer image: [sandbox] image)",
                            cluster.version
                        )
                    );
                }
                run.report.notes.push(container_note(&image, &plan.sandbox));
            }
            None => {
                let installed = install::choose(&self.install_list(), server_major)
                    .map_err(VerifyError::NoServer)
                    .and_then(|chosen| {
                        self.installs
                            .iter()
                            .find(|i| i.install == *chosen)
                            .ok_or_else(|| VerifyError::NoServer("installation vanished".into()))
                    })?;
                let Server::Pg(cluster) = run
                    .server
                    .insert(Server::Pg(PgCluster::create(&self.rt, installed)?))
                else {
                    unreachable!("just inserted")
                };
                cluster.start(&self.rt, &self.opts.cache_dir).await?;
                run.report.notes.push(self.rt.isolation_note());
            }
        }
        let Some(Server::Pg(cluster)) = &run.server else {
            unreachable!("provisioned above")
        };
        run.report.server_version = Some(cluster.version.clone());
        run.clock.end(true);

        run.clock.begin(Phase::Restore);
        let restored = match restore::restore(cluster, input, self.opts.jobs).await {
            Ok(r) => r,
            Err(reason) => fail_unless_sandbox!(run, Phase::Restore, cluster.sandbox(), reason),
        };
        if let Err(reason) = artifact.unchanged() {
            // Not the bytes that were hashed any more: nothing can be said of either version.
            cannot!(run, Phase::Restore, reason);
        }
        run.report.database = Some(restored.database.clone());
        run.report.notes.extend(restored.notes);
        run.clock.end(true);

        run.clock.begin(Phase::Checks);
        let found = match inspect::inspect(
            cluster,
            &restored.database,
            &restored.databases,
            plan,
            self.opts.jobs,
        )
        .await
        {
            Ok(found) => found,
            Err(reason) => fail_unless_sandbox!(run, Phase::Checks, cluster.sandbox(), reason),
        };
        finish_checks(run, found);
        Ok(())
    }

    async fn mysql(
        &self,
        plan: &Plan,
        run: &mut Run,
        artifact: &LocalArtifact,
        container: Option<(&DockerRuntime, String)>,
    ) -> Result<(), VerifyError> {
        let (path, compression, format) = match classify_mysql(artifact) {
            Ok(found) => found,
            Err(reason) => {
                run.clock.begin(Phase::Restore);
                fail!(run, Phase::Restore, reason);
            }
        };
        run.report.artifact.format = Some(format);

        run.clock.begin(Phase::Provision);
        match container {
            Some((docker, image)) => {
                let server =
                    MariaServer::create_docker(&self.rt, docker).map_err(VerifyError::NoServer)?;
                let Server::Maria(server) = run.server.insert(Server::Maria(server)) else {
                    unreachable!("just inserted")
                };
                if let Err(e) = server
                    .start_container(image.clone(), &plan.sandbox, None, run.tags.clone())
                    .await
                {
                    cannot!(
                        run,
                        Phase::Provision,
                        format!("container from {image}: {e}")
                    );
                }
                run.report.notes.push(container_note(&image, &plan.sandbox));
            }
            None => {
                let install = self
                    .maria
                    .as_ref()
                    .map_err(|e| VerifyError::NoServer(e.clone()))?;
                let server =
                    MariaServer::create(&self.rt, install).map_err(VerifyError::NoServer)?;
                let Server::Maria(server) = run.server.insert(Server::Maria(server)) else {
                    unreachable!("just inserted")
                };
                server
                    .start(&self.rt, &self.opts.cache_dir)
                    .await
                    .map_err(|e| VerifyError::NoServer(format!("sandbox could not start: {e}")))?;
                run.report.notes.push(self.rt.isolation_note());
            }
        }
        let Some(Server::Maria(server)) = &run.server else {
            unreachable!("provisioned above")
        };
        run.report.server_version = Some(server.version.clone());
        run.clock.end(true);

        run.clock.begin(Phase::Restore);
        let restored = match crate::mysql::restore(server, path, compression).await {
            Ok(r) => r,
            Err(reason) => fail_unless_sandbox!(run, Phase::Restore, server.sandbox(), reason),
        };
        if let Err(reason) = artifact.unchanged() {
            // Not the bytes that were hashed any more: nothing can be said of either version.
            cannot!(run, Phase::Restore, reason);
        }
        run.report.database = Some(restored.database.clone());
        run.report.notes.extend(restored.notes);
        run.clock.end(true);

        run.clock.begin(Phase::Checks);
        let found = crate::mysql::inspect(server, &restored.database, plan).await;
        finish_checks(run, found);
        Ok(())
    }

    fn install_list(&self) -> Vec<install::Installation> {
        self.installs.iter().map(|i| i.install.clone()).collect()
    }
}

enum Ended {
    Done(Result<(), VerifyError>),
    TimedOut,
    Interrupted,
}

/// The state of one verification while it runs.
struct Run {
    report: Report,
    clock: Clock,
    /// The sandbox's server, once made; torn down by `verify` whatever happens to the phases.
    server: Option<Server>,
    /// Where a downloaded artifact was spilled; removed with the sandbox.
    spill: Option<SandboxDir>,
    newest_ms: Option<i64>,
    tags: Tags,
}

/// A sandbox server of either engine.
enum Server {
    Pg(PgCluster),
    Maria(MariaServer),
    /// The `files` engine's extraction dir (no server), and the flag that stops an extraction.
    Files(SandboxDir, Arc<AtomicBool>),
}

impl Server {
    async fn stop(self) -> Result<(), String> {
        match self {
            Server::Pg(c) => c.stop().await,
            Server::Maria(m) => m.stop().await,
            Server::Files(mut dir, stop) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::task::spawn_blocking(move || dir.remove())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("remove sandbox dir: {e}"))
            }
        }
    }
}

/// Records what the checks phase found and ends it (and the RTO clock).
fn finish_checks(run: &mut Run, found: Inspection) {
    run.report.checks = found.checks;
    run.report.tables = found.tables;
    run.report.integrity = found.integrity;
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

/// A sentence for the report: the container and its limits.
fn container_note(image: &str, spec: &SandboxSpec) -> String {
    format!(
        "docker sandbox: {image}, no network, read-only root, data on {}, memory {}, cpus {}, pids {}, capabilities dropped",
        match spec.data {
            rehearse_core::limits::DataStore::Disk => format!(
                "disk (at most {})",
                rehearse_core::limits::format_size(spec.disk_bytes)
            ),
            rehearse_core::limits::DataStore::Tmpfs => "tmpfs".to_owned(),
        },
        rehearse_core::limits::format_size(spec.memory_bytes),
        spec.cpus
            .map_or_else(|| "unlimited".to_owned(), |c| c.to_string()),
        spec.pids
    )
}

/// Times phases; the RTO clock starts with the first phase.
#[derive(Debug, Default)]
struct Clock {
    start: Option<Instant>,
    current: Option<(Phase, Instant)>,
    phases: Vec<PhaseReport>,
    announce: Option<tokio::sync::watch::Sender<Option<Phase>>>,
}

impl Clock {
    fn begin(&mut self, phase: Phase) {
        if let Some(tx) = &self.announce {
            tx.send_replace(Some(phase));
        }
        let now = Instant::now();
        self.start.get_or_insert(now);
        self.current = Some((phase, now));
    }

    fn end(&mut self, ok: bool) {
        if let Some((phase, began)) = self.current.take() {
            self.phases.push(PhaseReport {
                name: phase,
                ms: ms(began.elapsed()),
                ok,
            });
        }
    }

    /// Ends the running phase as failed (timeout, interrupt) and says which it was.
    fn interrupt(&mut self) -> Phase {
        let phase = self.current.map_or(Phase::Fetch, |(p, _)| p);
        self.end(false);
        phase
    }

    fn since_start(&self) -> Option<u64> {
        self.start.map(|s| ms(s.elapsed()))
    }
}

/// Hashes each copy (wherever it is) and compares it with the artifact's digest. A copy in the
/// same kind of store as the artifact uses the plan's profile; one elsewhere the defaults.
async fn check_copies(
    urls: &[String],
    digest: &blake3::Hash,
    sources: &Sources,
    artifact_url: &str,
    profile: Option<&str>,
) -> Vec<CopyReport> {
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_owned());
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let profile = profile.filter(|_| scheme(url) == scheme(artifact_url));
        let hashed = match artifact::source_for(url, profile, sources) {
            Ok(source) => source.hash(url).await,
            Err(SourceError::Plan(reason) | SourceError::Worker(reason)) => Err(reason),
        };
        let (blake3, reason) = match hashed {
            Ok(Some(h)) => (
                Some(h.to_hex().to_string()),
                (h != *digest)
                    .then(|| format!("blake3 {} differs from the artifact's", h.to_hex())),
            ),
            Ok(None) => (None, Some("missing".to_owned())),
            Err(reason) => (None, Some(reason)),
        };
        out.push(CopyReport {
            url: url.clone(),
            ok: reason.is_none(),
            blake3,
            reason,
        });
    }
    out
}

fn ms(d: Duration) -> u64 {
    duration_ms(d)
}

/// Decides how to restore an artifact from its content. `Err` is the failure reason.
fn classify(artifact: &LocalArtifact) -> Result<(Input, Option<u32>, String), String> {
    let path = artifact.path.clone();
    if artifact.is_dir {
        return match rehearse_core::format::archive_server_major(&artifact.head) {
            Some(major) => Ok((
                Input::SeekableArchive(path),
                Some(major),
                "pg_dump directory".into(),
            )),
            None if artifact.head.starts_with(b"PGDMP") => Ok((
                Input::SeekableArchive(path),
                None,
                "pg_dump directory".into(),
            )),
            None => Err(format!(
                "{} has a toc.dat that is not a pg_dump archive header",
                path.display()
            )),
        };
    }
    let outer = sniff(&artifact.head);
    let (inner, compression) = match outer {
        Sniffed::Gzip | Sniffed::Zstd => {
            let compression = if outer == Sniffed::Gzip {
                Compression::Gzip
            } else {
                Compression::Zstd
            };
            let head = restore::decompressed_head(&path, compression, SNIFF_LEN)?;
            (sniff(&head), compression)
        }
        other => (other, Compression::None),
    };
    let suffix = match compression {
        Compression::None => String::new(),
        c => format!(" ({})", c.as_str()),
    };
    let label = format!("{}{suffix}", inner.describe());
    match (inner, compression) {
        (Sniffed::Custom { server_major }, Compression::None) => {
            Ok((Input::SeekableArchive(path), server_major, label))
        }
        (Sniffed::Tar { server_major }, Compression::None) => {
            Ok((Input::TarArchive(path), server_major, label))
        }
        (Sniffed::Custom { server_major } | Sniffed::Tar { server_major }, c) => {
            Ok((Input::ArchiveStream(path, c), server_major, label))
        }
        (Sniffed::PlainSql { server_major }, c) => Ok((Input::Plain(path, c), server_major, label)),
        (Sniffed::MysqlDump, _) => Err(format!(
            "the artifact is a MySQL/MariaDB dump{suffix}, not a PostgreSQL one (engine = \"postgres\")"
        )),
        (Sniffed::Empty, _) => Err(format!("the artifact decompresses to nothing{suffix}")),
        (Sniffed::Gzip | Sniffed::Zstd, _) => Err(format!(
            "the artifact is compressed twice{suffix}; not a PostgreSQL dump"
        )),
        (Sniffed::Unknown { hint }, _) => Err(format!(
            "not a PostgreSQL dump: the content{suffix} is not pg_dump custom, directory or tar format, nor SQL text ({hint})"
        )),
    }
}

/// A MySQL/MariaDB dump (or SQL script), optionally gzip/zstd. `Err` is the failure reason.
fn classify_mysql(artifact: &LocalArtifact) -> Result<(PathBuf, Compression, String), String> {
    if artifact.is_dir {
        return Err(
            "a directory is not a MySQL/MariaDB dump (engine = \"mysql\" takes one SQL file)"
                .into(),
        );
    }
    let path = artifact.path.clone();
    let (inner, compression, suffix) = peel(artifact)?;
    match inner {
        Sniffed::MysqlDump => Ok((path, compression, format!("mysqldump{suffix}"))),
        Sniffed::PlainSql { .. } => Ok((path, compression, format!("SQL script{suffix}"))),
        Sniffed::Custom { .. } | Sniffed::Tar { .. } => Err(format!(
            "the artifact is a PostgreSQL pg_dump archive{suffix}, not a MySQL/MariaDB dump (engine = \"postgres\")"
        )),
        Sniffed::Empty => Err(format!("the artifact decompresses to nothing{suffix}")),
        Sniffed::Gzip | Sniffed::Zstd => Err(format!(
            "the artifact is compressed twice{suffix}; not a MySQL/MariaDB dump"
        )),
        Sniffed::Unknown { hint } => Err(format!(
            "not a MySQL/MariaDB dump: the content{suffix} is not SQL text ({hint})"
        )),
    }
}

/// A tar archive, optionally gzip/zstd. `Err` is the failure reason.
fn classify_tar(artifact: &LocalArtifact) -> Result<(PathBuf, Compression, String), String> {
    if artifact.is_dir {
        return Err(
            "a directory is not a tar archive (engine = \"files\" takes one archive file)".into(),
        );
    }
    let path = artifact.path.clone();
    let (inner, compression, suffix) = peel(artifact)?;
    match inner {
        Sniffed::Tar { .. } => Ok((path, compression, format!("tar{suffix}"))),
        other => Err(format!(
            "not a tar archive: the content{suffix} is {}",
            other.describe()
        )),
    }
}

/// What is inside one layer of gzip or zstd (or the content itself): the inner format, the
/// compression, and " (gzip)"-style text for labels.
fn peel(artifact: &LocalArtifact) -> Result<(Sniffed, Compression, String), String> {
    let compression = match sniff(&artifact.head) {
        Sniffed::Gzip => Compression::Gzip,
        Sniffed::Zstd => Compression::Zstd,
        other => return Ok((other, Compression::None, String::new())),
    };
    let head = restore::decompressed_head(&artifact.path, compression, SNIFF_LEN)?;
    Ok((
        sniff(&head),
        compression,
        format!(" ({})", compression.as_str()),
    ))
}

/// Checks a directory artifact against `<dir>.blake3` when there is one: `Ok(Some(files))`, or
/// `Ok(None)` without a manifest. `computed` is `checksum::hash_tree`'s manifest.
fn dir_manifest(dir: &std::path::Path, computed: &str) -> Result<Option<usize>, String> {
    let mut name = dir.as_os_str().to_owned();
    name.push(".blake3");
    let path = PathBuf::from(name);
    let text = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() <= 16 << 20 => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(_) => return Err(format!("manifest {} is too large", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read manifest {}: {e}", path.display())),
    };
    // hash_tree lines: "<hex>  <len>  <relative path>".
    let files: Vec<(String, String)> = computed
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, "  ");
            let hex = parts.next()?;
            let _len = parts.next()?;
            Some((parts.next()?.to_owned(), hex.to_owned()))
        })
        .collect();
    let dir_name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    rehearse_core::manifest::compare(&files, &text, &dir_name)
        .map(Some)
        .map_err(|reason| format!("manifest {}: {reason}", path.display()))
}
