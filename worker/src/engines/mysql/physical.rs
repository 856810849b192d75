//! MariaDB physical backups: a `mariadb-backup --backup` directory, or its `--stream=xbstream`
//! file, with the plan's incrementals (`[artifact] incrementals`, applied in order). The chain
//! is checked from the checkpoints files before anything is prepared
//! ([`rehearse_core::mariabackup::check_chain`]); then `mariadb-backup --prepare` on the copy in
//! the sandbox (once for the full backup, once per incremental with `--incremental-dir`), the
//! sandbox server started on the prepared data dir, and the usual checks.

use std::path::{Path, PathBuf};

use rehearse_core::mariabackup::{Checkpoints, check_chain};

use std::os::unix::fs::MetadataExt;

use super::inspect;
use super::{MariaServer, Mysql};
use crate::artifact::LocalArtifact;
use crate::engines::stream::{Compression, Feed, Unfiltered, start_feed};
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
    /// Who the server runs as (uid, gid), when the worker must hand it the files (as root).
    pub owner: Option<(u32, u32)>,
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
        if let Some((docker, image)) = &env.container {
            // The image's server user owns the data dir: its uid is the owner of the data dir
            // template the image made (a throwaway container, once per image).
            let template = docker
                .image_template(
                    image,
                    "mysql",
                    &super::server::image_template_script(),
                    "maria",
                    env.cache_dir,
                )
                .await
                .map_err(|e| Stop::Cannot(format!("the image's server user: {e}")))?;
            let meta = std::fs::metadata(&template)
                .map_err(|e| Stop::Cannot(format!("the image's server user: {e}")))?;
            self.owner = nix::unistd::Uid::effective()
                .is_root()
                .then(|| (meta.uid(), meta.gid()));
            let server = self
                .server
                .insert(MariaServer::create_docker(env.rt, docker).map_err(Stop::Cannot)?);
            server.set_profile(&env.plan.sandbox);
            server.set_profile(&env.plan.sandbox);
            server
                .start_container_waiting(image.clone(), &env.plan.sandbox, env.tags.clone())
                .await
                .map_err(|e| Stop::Cannot(format!("container from {image}: {e}")))?;
            return Ok(Provisioned {
                server_version: None,
                runtime: "docker",
                notes: vec![crate::runtime::container_note(image, &env.plan.sandbox)],
            });
        }
        self.owner = env.rt.user().map(|u| (u.uid, u.gid));
        let install = self.engine.install().map_err(Stop::Cannot)?;
        if install.backup.is_none() {
            return Err(Stop::Cannot(
                "mariadb-backup is not installed on this worker (Debian: apt-get install mariadb-backup)".into(),
            ));
        }
        let mut server = MariaServer::create(env.rt, install).map_err(Stop::Cannot)?;
        server.set_profile(&env.plan.sandbox);
        self.server = Some(server);
        Ok(Provisioned {
            server_version: Some(install.version.clone()),
            runtime: "process",
            notes: vec![env.rt.isolation_note()],
        })
    }

    async fn restore(&mut self, env: &Env<'_>) -> Result<Restored, Stop> {
        // In the process runtime the host's mariadb-backup; in a container the image's.
        let tool = match &env.container {
            None => self
                .engine
                .install()
                .ok()
                .and_then(|i| i.backup.clone())
                .ok_or_else(|| Stop::Cannot("mariadb-backup is not installed".into()))?,
            Some(_) => PathBuf::from("mariadb-backup"),
        };
        let owner = self.owner;
        let server = self.server()?;
        let data = server.data_dir();
        let io = |e: std::io::Error| Stop::Cannot(format!("sandbox dir: {e}"));
        // The full backup, as a directory of its own in the sandbox (prepare rewrites it).
        match &self.full {
            Full::Dir(src) => copy_dir(src, &data).await?,
            Full::Xbstream(file) => {
                std::fs::create_dir_all(&data).map_err(io)?;
                crate::sandbox::give_tree(owner, &data).map_err(io)?;
                // mbstream reads the stream in the sandbox, fed by the worker.
                let (rx, feeding) = start_feed(Feed::<Unfiltered> {
                    path: file.clone(),
                    compression: Compression::None,
                    filter: None,
                });
                let out = server
                    .run_server_tool(
                        "mbstream",
                        tool.with_file_name("mbstream"),
                        vec![
                            "-x".into(),
                            "-C".into(),
                            server.beside_data("data").1.into(),
                        ],
                        Some(rx),
                    )
                    .await
                    .map_err(Stop::Cannot)?;
                let _ = feeding.await;
                if !out.success() {
                    return Err(Stop::Tool(format!(
                        "the xbstream does not extract: {}",
                        out.failure("mbstream")
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
            let (host, seen) = server.beside_data(&format!("inc-{}", i + 1));
            copy_dir(src, &host).await?;
            crate::sandbox::give_tree(owner, &host).map_err(io)?;
            incs.push(seen);
        }
        crate::sandbox::give_tree(owner, &data).map_err(io)?;
        let target = server.beside_data("data").1;
        let mut notes = Vec::new();
        if !full.is_prepared() {
            prepare(server, &tool, &target, None).await?;
            for (i, inc) in incs.iter().enumerate() {
                prepare(server, &tool, &target, Some((i + 1, inc))).await?;
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
        server.start_prepared(env.rt).await.map_err(|e| {
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

/// `mariadb-backup --prepare` of the data dir, or of one incremental into it (paths as the
/// server's tools see them).
async fn prepare(
    server: &MariaServer,
    tool: &Path,
    target: &Path,
    incremental: Option<(usize, &PathBuf)>,
) -> Result<(), Stop> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--prepare".into(),
        format!("--target-dir={}", target.display()).into(),
    ];
    if let Some((_, inc)) = incremental {
        args.push(format!("--incremental-dir={}", inc.display()).into());
    }
    let out = server
        .run_server_tool("mariadb-backup", tool.to_owned(), args, None)
        .await
        .map_err(Stop::Cannot)?;
    if out.success() {
        return Ok(());
    }
    let what = incremental.map_or_else(
        || "the full backup".to_owned(),
        |(i, _)| format!("incremental {i}"),
    );
    Err(Stop::Tool(format!(
        "mariadb-backup --prepare of {what} failed: {}",
        crate::tail::last_lines(&out.stderr, 3)
    )))
}
