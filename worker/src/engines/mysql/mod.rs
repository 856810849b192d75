//! The `mysql` engine: mysqldump / mariadb-dump SQL restored into a throwaway MariaDB.
//!
//! - Server: `mariadbd` with its own datadir and socket and no TCP listener
//!   (`--skip-networking`), settings for a disposable restore (no doublewrite, no binlog, lazy log
//!   flush), `--secure-file-priv` pointing inside the sandbox (so `SELECT … INTO OUTFILE` can
//!   write nowhere else) and `--local-infile=0`. In the process runtime the datadir is a copy of
//!   a cached `mariadb-install-db` template; in a container it is made on the tmpfs at start.
//! - Restore: the `mariadb` client in `--sandbox` mode (no `\!`, `\.`, `tee`, pager: no file
//!   system or shell from the dump), reading the decompressed stream on stdin, stopping at the
//!   first error (batch mode). Tables go into database `restored` unless the dump says `USE`.
//! - Checks: the plan's SQL through the client's `--xml` output (NULL told from 'NULL'), the
//!   freshness query for RPO, exact row counts of every table, and `mariadb-check`.
//!
//! Only MariaDB's server and client are used (Oracle MySQL's client has no sandbox mode); MySQL
//! dumps restore into MariaDB.

//!
//! Layout: [`server`] (discovery, the sandbox server, restore), [`inspect`] (checks, counts,
//! mariadb-check), [`physical`] (mariadb-backup directories and xbstreams with their
//! incrementals), and here the [`Engine`] and one verification's session.

pub mod inspect;
pub mod physical;
pub mod server;

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use rehearse_core::format::Sniffed;
use rehearse_core::plan;

pub use self::server::{MariaInstall, MariaServer, Which};
use super::stream::{Compression, peel};
use super::{Engine, Env, Inspection, Provisioned, Restored, Session, Stop};
use crate::artifact::LocalArtifact;
use crate::runtime::container_note;
use crate::sandbox::Spares;

/// The engine, with the local MariaDB (process runtime) or why there is none.
#[derive(Debug)]
pub struct Mysql {
    install: Result<MariaInstall, String>,
    /// Template copies made ahead for the process runtime.
    spares: Arc<Spares>,
}

impl Mysql {
    pub fn discover() -> Mysql {
        Mysql {
            install: server::discover(),
            spares: Arc::default(),
        }
    }

    /// The local MariaDB, or why there is none.
    pub fn install(&self) -> Result<&MariaInstall, String> {
        self.install.as_ref().map_err(Clone::clone)
    }
}

impl Engine for Mysql {
    fn kind(&self) -> plan::Engine {
        plan::Engine::Mysql
    }

    fn classify<'a>(&'a self, artifact: &LocalArtifact) -> Result<Box<dyn Session + 'a>, String> {
        if let Some(full) = physical::detect(artifact) {
            return Ok(Box::new(physical::BackupSession {
                engine: self,
                full,
                server: None,
                database: None,
                owner: None,
            }));
        }
        let (path, compression, format) = classify(artifact)?;
        Ok(Box::new(MysqlSession {
            engine: self,
            path,
            compression,
            format,
            server: None,
            database: None,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct MysqlSession<'a> {
    engine: &'a Mysql,
    path: PathBuf,
    compression: Compression,
    format: String,
    server: Option<MariaServer>,
    database: Option<String>,
}

impl MysqlSession<'_> {
    fn server(&self) -> Result<&MariaServer, Stop> {
        self.server
            .as_ref()
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))
    }
}

#[async_trait::async_trait]
impl Session for MysqlSession<'_> {
    fn format(&self) -> String {
        self.format.clone()
    }

    async fn provision(
        &mut self,
        env: &Env<'_>,
        _artifact: &LocalArtifact,
    ) -> Result<Provisioned, Stop> {
        let Some((docker, image)) = &env.container else {
            let install = self.engine.install().map_err(Stop::Cannot)?;
            let server = self
                .server
                .insert(MariaServer::create(env.rt, install).map_err(Stop::Cannot)?);
            server.set_profile(&env.plan.sandbox);
            server
                .start(
                    env.rt,
                    env.cache_dir,
                    env.spares.then_some(&self.engine.spares),
                )
                .await
                .map_err(|e| Stop::Cannot(format!("sandbox could not start: {e}")))?;
            return Ok(Provisioned {
                server_version: Some(server.version.clone()),
                runtime: "process",
                notes: vec![env.rt.isolation_note()],
            });
        };
        let server = self
            .server
            .insert(MariaServer::create_docker(env.rt, docker).map_err(Stop::Cannot)?);
        server.set_profile(&env.plan.sandbox);
        // The dump is streamed in by the worker: nothing to mount.
        let template = env
            .image_template(
                &self.engine.spares,
                "mysql",
                &server::image_template_script(),
                "mariadb",
                server.sandbox().dir(),
            )
            .await;
        server
            .start_container(
                image.clone(),
                &env.plan.sandbox,
                None,
                env.tags.clone(),
                template,
            )
            .await
            .map_err(|e| Stop::Cannot(format!("container from {image}: {e}")))?;
        Ok(Provisioned {
            server_version: Some(server.version.clone()),
            runtime: "docker",
            notes: vec![container_note(image, &env.plan.sandbox)],
        })
    }

    async fn restore(&mut self, _env: &Env<'_>) -> Result<Restored, Stop> {
        let restored = server::restore(self.server()?, self.path.clone(), self.compression)
            .await
            .map_err(Stop::Tool)?;
        self.database = Some(restored.database.clone());
        Ok(Restored {
            recovery: None,
            server_version: None,
            database: Some(restored.database),
            files: None,
            notes: restored.notes,
        })
    }

    async fn inspect(&mut self, env: &Env<'_>) -> Result<Inspection, Stop> {
        let database = self
            .database
            .as_deref()
            .ok_or_else(|| Stop::Cannot("nothing was restored".into()))?;
        Ok(inspect::inspect(self.server()?, database, env.plan).await)
    }

    async fn fault(&self) -> Option<String> {
        self.server.as_ref()?.sandbox().fault().await
    }

    fn has_sandbox(&self) -> bool {
        self.server.is_some()
    }

    async fn teardown(&mut self) -> Result<(), String> {
        match self.server.take() {
            Some(server) => server.stop().await,
            None => Ok(()),
        }
    }
}

/// A MySQL/MariaDB dump (or SQL script), optionally gzip/zstd. `Err` is the failure reason.
fn classify(artifact: &LocalArtifact) -> Result<(PathBuf, Compression, String), String> {
    if artifact.is_dir {
        return Err(
            "a directory that is not a mariadb-backup backup (no xtrabackup_checkpoints) is not a MySQL/MariaDB dump either (engine = \"mysql\" takes one SQL file or a mariadb-backup directory)"
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
