//! One verification of a base backup: the session over [`super::physical`]. Provision makes
//! the sandbox; restore lays the backup out, checks it against its manifest, starts the server
//! on it and waits for recovery to end (or, for a standby, to catch up); promote times the
//! promotion; inspect is the same as for dumps, in the database `postgres`.

use rehearse_core::report::PromotionReport;

use std::os::unix::fs::MetadataExt;

use super::SUPERUSER;
use super::cluster::{self, PgCluster};
use super::physical::{Layout, Recovery, installation_for};
use super::{Postgres, inspect};
use crate::artifact::LocalArtifact;
use crate::engines::{Env, Inspection, Provisioned, Restored, Session, Stop};
use crate::runtime::container_note;

pub struct BaseSession<'a> {
    pub engine: &'a Postgres,
    pub recovery: Recovery,
    pub cluster: Option<PgCluster>,
    /// Once recovered: the database checks run in, and every database.
    pub restored: Option<(String, Vec<String>)>,
}

impl<'a> BaseSession<'a> {
    pub fn new(engine: &'a Postgres, layout: Layout) -> BaseSession<'a> {
        BaseSession {
            engine,
            recovery: Recovery::new(layout),
            cluster: None,
            restored: None,
        }
    }
}

#[async_trait::async_trait]
impl Session for BaseSession<'_> {
    fn format(&self) -> String {
        self.recovery.layout.describe()
    }

    async fn provision(
        &mut self,
        env: &Env<'_>,
        _artifact: &LocalArtifact,
    ) -> Result<Provisioned, Stop> {
        let Some((docker, image)) = &env.container else {
            self.cluster = Some(
                PgCluster::create_bare(env.rt)
                    .map_err(|e| Stop::Cannot(format!("sandbox could not start: {e}")))?,
            );
            self.recovery.owner = env.rt.user().map(|u| (u.uid, u.gid));
            return Ok(Provisioned {
                server_version: None,
                runtime: "process",
                notes: vec![env.rt.isolation_note()],
            });
        };
        // The image's server user owns the data dir: its uid is the owner of the data dir
        // template the image made (a throwaway container, once per image).
        let template = docker
            .image_template(
                image,
                SUPERUSER,
                &cluster::image_template_script(),
                "pg",
                env.cache_dir,
            )
            .await
            .map_err(|e| Stop::Cannot(format!("the image's server user: {e}")))?;
        let meta = std::fs::metadata(&template)
            .map_err(|e| Stop::Cannot(format!("the image's server user: {e}")))?;
        self.recovery.owner = nix::unistd::Uid::effective()
            .is_root()
            .then(|| (meta.uid(), meta.gid()));
        let cluster = self.cluster.insert(
            PgCluster::create_docker(env.rt, docker)
                .map_err(|e| Stop::Cannot(format!("sandbox could not start: {e}")))?,
        );
        cluster
            .start_container_waiting(image.clone(), &env.plan.sandbox, env.tags.clone())
            .await
            .map_err(|e| Stop::Cannot(format!("container from {image}: {e}")))?;
        Ok(Provisioned {
            server_version: None,
            runtime: "docker",
            notes: vec![container_note(image, &env.plan.sandbox)],
        })
    }

    async fn restore(&mut self, env: &Env<'_>) -> Result<Restored, Stop> {
        let cluster = self
            .cluster
            .as_mut()
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))?;
        let began = std::time::Instant::now();
        let step = |what: &str| {
            tracing::info!(
                step = what,
                ms = began.elapsed().as_millis() as u64,
                "base backup restore"
            );
        };
        let major = self.recovery.lay_out(cluster, env.plan).await?;
        step("laid out");
        match &env.container {
            None => {
                let installed = installation_for(self.engine.installations(), major)?;
                cluster.use_installation(installed);
            }
            Some((_, image)) => {
                let (_, out, err) = cluster
                    .run_server_tool(env.rt, "postgres", vec!["--version".into()])
                    .await
                    .map_err(Stop::Cannot)?;
                // "postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"
                let version = out.split_whitespace().nth(2).unwrap_or_default().to_owned();
                let image_major = version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse::<u32>().ok());
                if image_major != Some(major) {
                    return Err(Stop::Cannot(format!(
                        "the base backup is PostgreSQL {major}; physical files need the same major version, and the image {image} has {} (use an image of PostgreSQL {major}: [sandbox] image)",
                        if version.is_empty() {
                            err.trim().to_owned()
                        } else {
                            version.clone()
                        }
                    )));
                }
                cluster.set_version(&version);
            }
        }
        let mut notes = vec![self.recovery.verify_manifest(cluster, env.rt).await?];
        step("manifest verified");
        // The profile's settings first: what recovery needs (hot-standby limits, WAL level) wins.
        let mut settings = cluster::profile_settings(&env.plan.sandbox);
        settings.extend(
            self.recovery
                .prepare(cluster, env.rt, env.plan, env.sources)
                .await?,
        );
        step("prepared");
        if let Err(e) = cluster.start_on_data(env.rt, &settings).await {
            return Err(self
                .recovery
                .explain_exit(cluster, env.plan, &e.to_string()));
        }
        step("server up");
        let report = self.recovery.finish(cluster, env.plan).await?;
        step("recovered");
        notes.push(format!(
            "recovered the base backup {:?} (from {} on timeline {}): {} WAL segments replayed{}",
            report.label,
            report.start_lsn,
            report.start_timeline,
            report.segments_replayed,
            report
                .last_replayed_lsn
                .as_ref()
                .map_or(String::new(), |l| format!(", up to {l}"))
        ));
        // Checks run in the cluster's one application database when it has one.
        let databases = user_databases(cluster).await.map_err(Stop::Tool)?;
        let apps: Vec<&String> = databases.iter().filter(|d| *d != "postgres").collect();
        let main = match apps.as_slice() {
            [one] => (*one).clone(),
            _ => "postgres".to_owned(),
        };
        self.restored = Some((main.clone(), databases));
        Ok(Restored {
            database: Some(main),
            files: None,
            recovery: Some(report),
            server_version: Some(cluster.version.clone()),
            notes,
        })
    }

    async fn promote(&mut self, env: &Env<'_>) -> Result<PromotionReport, Stop> {
        let cluster = self
            .cluster
            .as_ref()
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))?;
        self.recovery.promote(cluster, env.plan).await
    }

    async fn inspect(&mut self, env: &Env<'_>) -> Result<Inspection, Stop> {
        let cluster = self
            .cluster
            .as_ref()
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))?;
        let (main, databases) = self
            .restored
            .as_ref()
            .ok_or_else(|| Stop::Cannot("nothing was restored".into()))?;
        inspect::inspect(cluster, main, databases, env.plan, env.jobs)
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

/// Every database a client could use (not the templates): a physical backup is the whole
/// cluster.
async fn user_databases(cluster: &PgCluster) -> Result<Vec<String>, String> {
    let client = inspect::connect(&cluster.socket_dir(), "postgres").await?;
    let rows = client
        .simple_query(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
        )
        .await
        .map_err(|e| inspect::db_message(&e))?;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}
