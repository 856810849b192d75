//! MariaDB physical backups: a `mariadb-backup --backup` directory, or its `--stream=xbstream`
//! file, with the plan's incrementals (`[artifact] incrementals`, applied in order). The chain
//! is checked from the checkpoints files before anything is prepared
//! ([`rehearse_core::mariabackup::check_chain`]); then `mariadb-backup --prepare` on the copy in
//! the sandbox (once for the full backup, once per incremental with `--incremental-dir`), the
//! sandbox server started on the prepared data dir, and the usual checks.

use std::path::{Path, PathBuf};

use rehearse_core::mariabackup::{Checkpoints, check_chain};

use super::inspect;
use super::{MariaServer, Mysql};
use crate::artifact::LocalArtifact;
use crate::engines::{Env, Inspection, Provisioned, Restored, Session, Stop};

/// The magic an xbstream starts with.
pub const XBSTREAM_MAGIC: &[u8] = b"XBSTCK01";
/// Databases every server has.
const SYSTEM: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// How the full backup arrives.
#[derive(Debug, Clone)]
pub enum Full {
    Dir(PathBuf),
    Xbstream(PathBuf),
}

/// Whether an artifact is a mariadb-backup backup.
pub fn detect(artifact: &LocalArtifact) -> Option<Full> {
    if artifact.is_dir {
        return checkpoints_file(&artifact.path).map(|_| Full::Dir(artifact.path.clone()));
    }
    artifact
        .head
        .starts_with(XBSTREAM_MAGIC)
        .then(|| Full::Xbstream(artifact.path.clone()))
}

fn checkpoints_file(dir: &Path) -> Option<PathBuf> {
    ["mariadb_backup_checkpoints", "xtrabackup_checkpoints"]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn read_checkpoints(dir: &Path, what: &str) -> Result<Checkpoints, Stop> {
    let file = checkpoints_file(dir).ok_or_else(|| {
        Stop::Failed(format!(
            "{what} has no xtrabackup_checkpoints: not a mariadb-backup backup"
        ))
    })?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Stop::Failed(format!("{what}: cannot read {}: {e}", file.display())))?;
    Checkpoints::parse(&text).map_err(|e| Stop::Failed(format!("{what}: {e}")))
}

pub struct BackupSession<'a> {
    pub engine: &'a Mysql,
    pub full: Full,
    pub server: Option<MariaServer>,
    pub database: Option<String>,
}

impl BackupSession<'_> {
    fn server(&self) -> Result<&MariaServer, Stop> {
        self.server
            .as_ref()
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))
    }
}

#[async_trait::async_trait]
impl Session for BackupSession<'_> {
    fn format(&self) -> String {
        match self.full {
            Full::Dir(_) => "mariadb-backup".into(),
            Full::Xbstream(_) => "mariadb-backup xbstream".into(),
        }
    }

    async fn provision(
        &mut self,
        env: &Env<'_>,
        _artifact: &LocalArtifact,
    ) -> Result<Provisioned, Stop> {
        if env.container.is_some() {
            return Err(Stop::Cannot(
                "mariadb-backup backups are prepared in the process runtime only, for now (run the worker with --runtime process or auto)".into(),
            ));
        }
        let install = self.engine.install().map_err(Stop::Cannot)?;
        if install.backup.is_none() {
            return Err(Stop::Cannot(
                "mariadb-backup is not installed on this worker (Debian: apt-get install mariadb-backup)".into(),
            ));
        }
        self.server = Some(MariaServer::create(env.rt, install).map_err(Stop::Cannot)?);
        Ok(Provisioned {
            server_version: Some(install.version.clone()),
            runtime: "process",
            notes: vec![env.rt.isolation_note()],
        })
    }

    async fn restore(&mut self, env: &Env<'_>) -> Result<Restored, Stop> {
        let install = self.engine.install().map_err(Stop::Cannot)?;
        let tool = install
            .backup
            .clone()
            .ok_or_else(|| Stop::Cannot("mariadb-backup is not installed".into()))?;
        let owner = env.rt.user().map(|u| (u.uid, u.gid));
        let server = self.server()?;
        let dir = server.sandbox().dir().to_owned();
        let data = dir.join("data");
        let io = |e: std::io::Error| Stop::Cannot(format!("sandbox dir: {e}"));
        // The full backup, as a directory of its own in the sandbox (prepare rewrites it).
        match &self.full {
            Full::Dir(src) => copy_dir(src, &data).await?,
            Full::Xbstream(file) => {
                std::fs::create_dir(&data).map_err(io)?;
                crate::sandbox::give_tree(owner, &data).map_err(io)?;
                let input = std::fs::File::open(file)
                    .map_err(|e| Stop::Cannot(format!("open {}: {e}", file.display())))?;
                let mbstream = tool.with_file_name("mbstream");
                let out = env
                    .rt
                    .command(&mbstream, &dir)
                    .arg("-x")
                    .arg("-C")
                    .arg(&data)
                    .stdin(input)
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| Stop::Cannot(format!("run mbstream: {e}")))?;
                if !out.status.success() {
                    return Err(Stop::Failed(format!(
                        "the xbstream does not extract (mbstream): {}",
                        crate::tail::last_lines(&String::from_utf8_lossy(&out.stderr), 2)
                    )));
                }
            }
        }
        let full = read_checkpoints(&data, "the full backup")?;
        let mut chain = Vec::new();
        let mut copies = Vec::new();
        for (i, url) in env.plan.artifact.incrementals.iter().enumerate() {
            let src = crate::artifact::local::local_path(url).map_err(Stop::Failed)?;
            if !src.is_dir() {
                return Err(Stop::Failed(format!(
                    "incremental {} ({url}) is not a directory",
                    i + 1
                )));
            }
            let what = format!("incremental {} ({url})", i + 1);
            chain.push((url.clone(), read_checkpoints(&src, &what)?));
            copies.push(src);
        }
        check_chain(&full, &chain).map_err(Stop::Failed)?;
        let mut incs = Vec::new();
        for (i, src) in copies.iter().enumerate() {
            let to = dir.join(format!("inc-{}", i + 1));
            copy_dir(src, &to).await?;
            incs.push(to);
        }
        crate::sandbox::give_tree(owner, &dir).map_err(io)?;
        let mut notes = Vec::new();
        if !full.is_prepared() {
            prepare(env, &tool, &dir, &data, None).await?;
            for (i, inc) in incs.iter().enumerate() {
                prepare(env, &tool, &dir, &data, Some((i + 1, inc))).await?;
            }
            notes.push(format!(
                "mariadb-backup --prepare: the full backup (LSN {}){}",
                full.to_lsn,
                if incs.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", then {} incrementals in order up to LSN {}",
                        incs.len(),
                        chain.last().map_or(0, |(_, c)| c.to_lsn)
                    )
                }
            ));
        }
        let server = self
            .server
            .as_mut()
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))?;
        server.start_on_data(env.rt).await.map_err(|e| {
            Stop::Tool(format!(
                "the server did not start on the prepared backup: {e}"
            ))
        })?;
        let xml = server
            .query_xml(None, "SHOW DATABASES")
            .await
            .map_err(Stop::Tool)?;
        let databases: Vec<String> = rehearse_core::mysqlxml::rows(&xml)
            .map_err(Stop::Tool)?
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .filter(|d| !SYSTEM.contains(&d.as_str()))
            .collect();
        let main = match databases.as_slice() {
            [one] => one.clone(),
            _ => "mysql".to_owned(),
        };
        self.database = Some(main.clone());
        Ok(Restored {
            database: Some(main),
            files: None,
            recovery: None,
            server_version: Some(server.version.clone()),
            notes,
        })
    }

    async fn inspect(&mut self, env: &Env<'_>) -> Result<Inspection, Stop> {
        let database = self
            .database
            .clone()
            .ok_or_else(|| Stop::Cannot("nothing was restored".into()))?;
        Ok(inspect::inspect(self.server()?, &database, env.plan).await)
    }

    async fn fault(&self) -> Option<String> {
        self.server.as_ref()?.sandbox().fault().await
    }

    fn container_ready(&self) -> bool {
        false
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

async fn copy_dir(src: &Path, to: &Path) -> Result<(), Stop> {
    std::fs::create_dir_all(to).map_err(|e| Stop::Cannot(format!("sandbox dir: {e}")))?;
    crate::sandbox::copy_tree(&src.join("."), to)
        .await
        .map_err(|e| Stop::Cannot(format!("copy {} into the sandbox: {e}", src.display())))
}

/// `mariadb-backup --prepare` of the data dir, or of one incremental into it.
async fn prepare(
    env: &Env<'_>,
    tool: &Path,
    dir: &Path,
    data: &Path,
    incremental: Option<(usize, &PathBuf)>,
) -> Result<(), Stop> {
    let mut cmd = env.rt.command(tool, dir);
    cmd.arg("--prepare")
        .arg(format!("--target-dir={}", data.display()));
    if let Some((_, inc)) = incremental {
        cmd.arg(format!("--incremental-dir={}", inc.display()));
    }
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Stop::Cannot(format!("run mariadb-backup: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let what = incremental.map_or_else(
        || "the full backup".to_owned(),
        |(i, _)| format!("incremental {i}"),
    );
    Err(Stop::Tool(format!(
        "mariadb-backup --prepare of {what} failed: {}",
        crate::tail::last_lines(&String::from_utf8_lossy(&out.stderr), 3)
    )))
}
