//! Engines: what a kind of backup is and how it is restored and inspected. One module each, one
//! line each in [`registered`]; no engine imports another (what they share lives in [`stream`]
//! and [`inspection`]).
//!
//! A new engine implements [`Engine`] (its kind, and `classify`: the sniffed artifact → a
//! [`Session`] or the reason it is not this engine's) and [`Session`] (one verification:
//! `provision` its server in the runtime [`Env`] names, `restore`, `inspect` — checks, freshness,
//! row counts, integrity — `fault`, `teardown`). The pipeline runs those on the clock and turns a
//! [`Stop`] into the verdict; it knows nothing of any engine.
//!
//! - [`postgres`]: pg_dump custom / directory / tar / plain (and pg_dumpall), into a throwaway
//!   cluster.
//! - [`mysql`]: mysqldump / mariadb-dump SQL, into a throwaway MariaDB.
//! - [`files`]: a tar tree, extracted by the worker itself, entry by entry.

pub mod files;
pub mod inspection;
pub mod mysql;
pub mod postgres;
pub mod stream;
pub mod untar;

use std::any::Any;
use std::path::Path;

use rehearse_core::plan::{self, Plan};
use rehearse_core::report::{FilesReport, PromotionReport, RecoveryReport};

use crate::artifact::LocalArtifact;
use crate::runtime::{DockerRuntime, Tags};
use crate::sandbox::ProcessRuntime;

pub use inspection::Inspection;

/// Every engine this worker knows, each with what it found on the host (installations). The
/// registration list: one line per engine.
pub fn registered() -> Vec<Box<dyn Engine>> {
    vec![
        Box::new(postgres::Postgres::discover()),
        Box::new(mysql::Mysql::discover()),
        Box::new(files::Files),
    ]
}

/// Where and with what one verification's sandbox is made.
pub struct Env<'a> {
    pub plan: &'a Plan,
    /// Sandbox dirs (and local processes, when there is no container).
    pub rt: &'a ProcessRuntime,
    /// The container runtime and the image to run, or `None` for local processes.
    pub container: Option<(&'a DockerRuntime, String)>,
    /// Long-lived caches (template data dirs).
    pub cache_dir: &'a Path,
    /// Parallel jobs for restore and integrity tools.
    pub jobs: usize,
    /// What a container is labelled with (job, attempt).
    pub tags: Tags,
    /// The artifact's blake3 (hex), as the checksum phase computed it.
    pub digest: String,
    /// Whether to keep spare template copies ready (`VerifyOptions::spare_templates`).
    pub spares: bool,
    /// The worker's source profiles (for sources a plan names besides the artifact: a WAL
    /// archive).
    pub sources: &'a crate::artifact::Sources,
    /// The progress meter, when someone draws it (an engine may then count what it restores).
    pub meter: Option<std::sync::Arc<crate::progress::Meter>>,
}

impl Env<'_> {
    /// For a container sandbox in `sandbox_dir`: the image's data dir template (made once per
    /// image by `script` as `user`), with a spare copy of it moved into the sandbox first when
    /// spares are on. `None` (and a warning) when no template could be made: the container then
    /// initialises its own data dir, as before templates.
    pub async fn image_template(
        &self,
        spares: &std::sync::Arc<crate::sandbox::Spares>,
        user: &str,
        script: &str,
        kind: &str,
        sandbox_dir: &Path,
    ) -> Option<std::path::PathBuf> {
        let (docker, image) = self.container.as_ref()?;
        match docker
            .image_template(image, user, script, kind, self.cache_dir)
            .await
        {
            Ok(template) => {
                if self.spares {
                    crate::runtime::docker::prefill_data(
                        spares,
                        self.rt,
                        &template,
                        sandbox_dir,
                        &self.plan.sandbox,
                        self.cache_dir,
                    );
                }
                Some(template)
            }
            Err(e) => {
                tracing::warn!(image, error = %e, "no data dir template; the container initialises its own");
                None
            }
        }
    }
}

/// Why a phase stopped the verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The backup is bad: `failed` (unless the text names an environment fault, see
    /// `rehearse_core::fault`).
    Failed(String),
    /// A tool failed: `error` if the sandbox says it was at fault (its limits, a full disk), else
    /// as [`Stop::Failed`].
    Tool(String),
    /// The worker or its sandbox could not verify: `error`, retried elsewhere.
    Cannot(String),
}

/// What provisioning made.
#[derive(Debug, Default)]
pub struct Provisioned {
    pub server_version: Option<String>,
    /// The runtime the sandbox runs in ("process", "docker").
    pub runtime: &'static str,
    pub notes: Vec<String>,
}

/// What a restore left.
#[derive(Debug, Default)]
pub struct Restored {
    /// The database checks run in, for engines with one.
    pub database: Option<String>,
    /// The extracted tree, for the files engine.
    pub files: Option<FilesReport>,
    /// What recovering a base backup replayed.
    pub recovery: Option<RecoveryReport>,
    /// The server's version, when provisioning could not know it yet (a base backup's).
    pub server_version: Option<String>,
    pub notes: Vec<String>,
}

/// A kind of backup.
pub trait Engine: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> plan::Engine;

    /// Decides from the artifact's content whether and how this engine restores it: a session
    /// for one verification, or the reason it cannot (the `restore` phase fails with it).
    fn classify<'a>(&'a self, artifact: &LocalArtifact) -> Result<Box<dyn Session + 'a>, String>;

    /// Whether its sessions need the runtime's sandbox (a server, tools run in it); `false`
    /// for an engine the worker runs itself (files), whatever the runtime.
    fn uses_runtime(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn Any;
}

/// One verification's engine state: its server once provisioned, and what the restore left.
#[async_trait::async_trait]
pub trait Session: Send + Sync {
    /// What the artifact is, for the report ("pg_dump custom (gzip)").
    fn format(&self) -> String;

    /// Makes the sandbox and starts the engine's server in it. What it made is kept in the
    /// session (and torn down by [`Session::teardown`]) whatever this returns.
    async fn provision(
        &mut self,
        env: &Env<'_>,
        artifact: &LocalArtifact,
    ) -> Result<Provisioned, Stop>;

    async fn restore(&mut self, env: &Env<'_>) -> Result<Restored, Stop>;

    /// Promotes the restored server (a standby) to a primary, timed (`[promote]`). Engines
    /// without standbys fail it: the plan asks for something their backups cannot do.
    async fn promote(&mut self, _env: &Env<'_>) -> Result<PromotionReport, Stop> {
        Err(Stop::Failed(format!(
            "[promote] needs a base backup recovered as a standby; the artifact is {}",
            self.format()
        )))
    }

    /// Checks, freshness, row counts, integrity. A check that does not hold is in the
    /// inspection's `failure`, not a [`Stop`].
    async fn inspect(&mut self, env: &Env<'_>) -> Result<Inspection, Stop>;

    /// Why the sandbox, not the backup, stopped the run, if it did.
    async fn fault(&self) -> Option<String> {
        None
    }

    /// Whether this session can run in a container sandbox; with `--runtime auto`, one that
    /// cannot runs as local processes.
    fn container_ready(&self) -> bool {
        true
    }

    /// Whether there is a sandbox to tear down.
    fn has_sandbox(&self) -> bool;

    /// Stops the server and removes the sandbox; idempotent.
    async fn teardown(&mut self) -> Result<(), String>;
}
