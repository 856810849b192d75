//! The `postgres` engine: PostgreSQL dumps restored into a throwaway cluster.
//!
//! Layout:
//! - [`binaries`]: finding PostgreSQL installations and their versions.
//! - [`cluster`]: a disposable server — template data dir, start, readiness, stop.
//! - [`restore`]: pg_restore / psql, fed in one streaming pass, with the tool's stderr tail on failure.
//! - [`inspect`]: the plan's checks, freshness (RPO), per-table row counts, pg_amcheck.
//! - [`physical`] and [`base`]: base backups (pg_basebackup), recovered from their own WAL or a
//!   WAL archive to a target, optionally as a standby promoted on the clock.
//! - this file: the [`Engine`] — which artifacts are PostgreSQL dumps, and one verification's
//!   session over the modules above.

pub mod base;
pub mod binaries;
pub mod cluster;
pub mod inspect;
pub mod physical;
pub mod restore;

use std::any::Any;
use std::sync::Arc;

use rehearse_core::format::{SNIFF_LEN, Sniffed, sniff};
use rehearse_core::install;
use rehearse_core::plan;

use self::binaries::Installed;
use self::cluster::PgCluster;
use self::restore::Input;
use super::stream::{Compression, decompressed_head};
use super::{Engine, Env, Inspection, Provisioned, Restored, Session, Stop};
use crate::artifact::LocalArtifact;
use crate::runtime::container_note;
use crate::sandbox::Spares;

/// The bootstrap superuser of every sandbox cluster.
pub const SUPERUSER: &str = "postgres";
/// The database archives are restored into (plain dumps may `\connect` elsewhere).
pub const TARGET_DB: &str = "restored";

/// The engine, with the installations found on this host (for the process runtime).
#[derive(Debug)]
pub struct Postgres {
    installs: Vec<Installed>,
    /// Template copies made ahead for the process runtime.
    spares: Arc<Spares>,
}

impl Postgres {
    pub fn discover() -> Postgres {
        Postgres {
            installs: binaries::discover(),
            spares: Arc::default(),
        }
    }

    pub fn installations(&self) -> &[Installed] {
        &self.installs
    }
}

impl Engine for Postgres {
    fn kind(&self) -> plan::Engine {
        plan::Engine::Postgres
    }

    fn classify<'a>(&'a self, artifact: &LocalArtifact) -> Result<Box<dyn Session + 'a>, String> {
        if artifact.is_dir
            && let Some(layout) = physical::detect(&artifact.path)
        {
            return Ok(Box::new(base::BaseSession::new(self, layout)));
        }
        let (input, server_major, format) = classify(artifact)?;
        Ok(Box::new(PgSession {
            engine: self,
            input: Some(input),
            server_major,
            format,
            cluster: None,
            restored: None,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct PgSession<'a> {
    engine: &'a Postgres,
    /// Taken by the restore.
    input: Option<Input>,
    /// The major version the dump says it came from, when it says.
    server_major: Option<u32>,
    format: String,
    cluster: Option<PgCluster>,
    restored: Option<restore::Restored>,
}

impl PgSession<'_> {
    fn cluster(&self) -> Result<&PgCluster, Stop> {
        self.cluster
            .as_ref()
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))
    }
}

#[async_trait::async_trait]
impl Session for PgSession<'_> {
    fn format(&self) -> String {
        self.format.clone()
    }

    async fn provision(
        &mut self,
        env: &Env<'_>,
        artifact: &LocalArtifact,
    ) -> Result<Provisioned, Stop> {
        let Some((docker, image)) = &env.container else {
            let list = self.install_list();
            let chosen = install::choose(&list, self.server_major).map_err(Stop::Cannot)?;
            let installed = self
                .engine
                .installs
                .iter()
                .find(|i| i.install == *chosen)
                .ok_or_else(|| Stop::Cannot("installation vanished".into()))?;
            let cluster = self.cluster.insert(
                PgCluster::create(env.rt, installed)
                    .map_err(|e| Stop::Cannot(format!("sandbox could not start: {e}")))?,
            );
            cluster
                .start(
                    env.rt,
                    env.cache_dir,
                    env.spares.then_some(&self.engine.spares),
                    &cluster::profile_settings(&env.plan.sandbox),
                )
                .await
                .map_err(|e| Stop::Cannot(format!("sandbox could not start: {e}")))?;
            return Ok(Provisioned {
                server_version: Some(cluster.version.clone()),
                runtime: "process",
                notes: vec![env.rt.isolation_note()],
            });
        };
        let cluster = self.cluster.insert(
            PgCluster::create_docker(env.rt, docker)
                .map_err(|e| Stop::Cannot(format!("sandbox could not start: {e}")))?,
        );
        // Tools that read the artifact by path read a verified copy in the sandbox (plain
        // scripts are streamed in by the worker instead).
        let mut mounted = None;
        if !matches!(self.input, Some(Input::Plain(..))) {
            let staged = cluster
                .sandbox()
                .stage_artifact(&artifact.path, artifact.is_dir, &env.digest)
                .await
                .map_err(Stop::Cannot)?;
            mounted = Some((artifact.path.clone(), staged));
        }
        let template = env
            .image_template(
                &self.engine.spares,
                SUPERUSER,
                &cluster::image_template_script(),
                "pg",
                cluster.dir(),
            )
            .await;
        cluster
            .start_container(
                image.clone(),
                &env.plan.sandbox,
                mounted,
                env.tags.clone(),
                template,
            )
            .await
            .map_err(|e| Stop::Cannot(format!("container from {image}: {e}")))?;
        let image_major = cluster
            .version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if let Some(major) = self.server_major
            && image_major < Some(major)
        {
            return Err(Stop::Cannot(format!(
                "the dump is from PostgreSQL {major}, newer than the image's {} ({image}; use a newer image: [sandbox] image)",
                cluster.version
            )));
        }
        Ok(Provisioned {
            server_version: Some(cluster.version.clone()),
            runtime: "docker",
            notes: vec![container_note(image, &env.plan.sandbox)],
        })
    }

    async fn restore(&mut self, env: &Env<'_>) -> Result<Restored, Stop> {
        let input = self
            .input
            .take()
            .ok_or_else(|| Stop::Cannot("restored twice".into()))?;
        let restored = restore::restore(self.cluster()?, input, env.jobs, env.meter.clone())
            .await
            .map_err(Stop::Tool)?;
        let out = Restored {
            recovery: None,
            server_version: None,
            database: Some(restored.database.clone()),
            files: None,
            notes: restored.notes.clone(),
        };
        self.restored = Some(restored);
        Ok(out)
    }

    async fn inspect(&mut self, env: &Env<'_>) -> Result<Inspection, Stop> {
        let restored = self
            .restored
            .as_ref()
            .ok_or_else(|| Stop::Cannot("nothing was restored".into()))?;
        inspect::inspect(
            self.cluster()?,
            &restored.database,
            &restored.databases,
            env.plan,
            env.jobs,
        )
        .await
        .map_err(Stop::Tool)
    }

    async fn fault(&self) -> Option<String> {
        self.cluster.as_ref()?.sandbox().fault().await
    }

    fn has_sandbox(&self) -> bool {
        self.cluster.is_some()
    }

    async fn teardown(&mut self) -> Result<(), String> {
        match self.cluster.take() {
            Some(cluster) => cluster.stop().await,
            None => Ok(()),
        }
    }
}

impl PgSession<'_> {
    fn install_list(&self) -> Vec<install::Installation> {
        self.engine
            .installs
            .iter()
            .map(|i| i.install.clone())
            .collect()
    }
}

/// Decides how to restore an artifact from its content. `Err` is the failure reason.
fn classify(artifact: &LocalArtifact) -> Result<(Input, Option<u32>, String), String> {
    let path = artifact.path.clone();
    if artifact.is_dir {
        if !path.join("toc.dat").is_file() {
            return Err(format!(
                "{} is a directory but neither a pg_dump directory archive (no toc.dat) nor a base backup (no backup_label, no base.tar)",
                path.display()
            ));
        }
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
            let head = decompressed_head(&path, compression, SNIFF_LEN)?;
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
