//! A disposable PostgreSQL server in a sandbox directory.
//!
//! Start-up copies a cached, initdb-made template data directory (initdb costs ~1 s; a copy ~0.1 s)
//! and starts `postgres` with settings for a throwaway restore: no TCP listener (unix socket in the
//! sandbox dir only), fsync and full-page writes off, minimal WAL (so pg_restore's parallel COPY
//! into freshly created tables skips WAL), no autovacuum, generous maintenance memory for index
//! builds. Stop is an immediate shutdown (SIGQUIT): the data is thrown away anyway.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;
use tracing::{debug, warn};

use super::SUPERUSER;
use super::binaries::Installed;
use crate::sandbox::{ProcessRuntime, SandboxDir, make_shared_dir};

/// The socket's port number (it only names the socket file; there is no TCP listener).
pub const PORT: u16 = 5432;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const INITDB_ARGS: [&str; 8] = [
    "-U",
    SUPERUSER,
    "--auth=trust",
    "--no-sync",
    "-E",
    "UTF8",
    "--locale",
    "C",
];

/// Server settings for a disposable restore. Each trades durability (irrelevant here) for speed,
/// except the first two, which are the sandbox's boundary.
const SETTINGS: [(&str, &str); 16] = [
    ("listen_addresses", ""),
    ("unix_socket_permissions", "0700"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("wal_level", "minimal"),
    ("max_wal_senders", "0"),
    ("archive_mode", "off"),
    ("autovacuum", "off"),
    ("checkpoint_timeout", "1h"),
    ("max_wal_size", "16GB"),
    ("maintenance_work_mem", "512MB"),
    ("shared_buffers", "256MB"),
    ("jit", "off"),
    ("timezone", "UTC"),
    ("max_connections", "32"),
];

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("initdb failed ({status}): {log}")]
    Initdb { status: String, log: String },
    #[error("prepare template in {dir}: {reason}")]
    Template { dir: PathBuf, reason: String },
    #[error("start postgres: {0}")]
    Start(String),
    #[error("postgres did not become ready: {0}")]
    NotReady(String),
    #[error("socket path {0} is too long for a unix socket; use a shorter --work-dir")]
    SocketPath(PathBuf),
}

/// A running (or stopped) sandbox server.
#[derive(Debug)]
pub struct PgCluster {
    dir: SandboxDir,
    /// The postmaster; `None` before start and after stop. Killed on drop as a last resort.
    server: Option<Child>,
    pub installed: Installed,
}

impl PgCluster {
    /// Makes the sandbox directory; the server is not started yet (see [`PgCluster::start`]).
    pub fn create(rt: &ProcessRuntime, installed: &Installed) -> Result<PgCluster, ClusterError> {
        let dir = rt.create_dir()?;
        let socket = dir.path().join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > 100 {
            return Err(ClusterError::SocketPath(socket));
        }
        Ok(PgCluster {
            dir,
            server: None,
            installed: installed.clone(),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The unix socket directory (the `host` for clients).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connection flags for the libpq client tools (psql, pg_restore, pg_dump, pg_amcheck).
    pub fn client_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = ["-p", &PORT.to_string(), "-U", SUPERUSER, "-h"]
            .iter()
            .map(Into::into)
            .collect();
        args.push(self.socket_dir().into());
        args
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Copies the template, starts the server, waits until it accepts connections.
    pub async fn start(
        &mut self,
        rt: &ProcessRuntime,
        cache_dir: &Path,
    ) -> Result<(), ClusterError> {
        let template = ensure_template(rt, &self.installed, cache_dir).await?;
        copy_tree(&template, &self.data_dir())
            .await
            .map_err(|reason| ClusterError::Template {
                dir: template.clone(),
                reason,
            })?;
        let log = std::fs::File::create(self.dir.path().join("server.log"))
            .map_err(|e| ClusterError::Start(format!("create server log: {e}")))?;
        rt.give(&self.dir.path().join("server.log"))?;
        let mut cmd = rt.command(&self.installed.bin("postgres"), self.dir.path());
        cmd.arg("-D").arg(self.data_dir()).arg("-c").arg(format!(
            "unix_socket_directories={}",
            self.socket_dir().display()
        ));
        cmd.arg("-c").arg(format!("port={PORT}"));
        for (key, value) in SETTINGS {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        debug!(pid = child.id(), dir = %self.dir.path().display(), "postgres started");
        self.server = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), ClusterError> {
        let pidfile = self.data_dir().join("postmaster.pid");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            // Line 8 of postmaster.pid is the server status; "ready" once it accepts connections.
            if let Ok(text) = tokio::fs::read_to_string(&pidfile).await
                && text.lines().nth(7).is_some_and(|l| l.trim() == "ready")
            {
                return Ok(());
            }
            if let Some(child) = self.server.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.server = None;
                return Err(ClusterError::Start(format!(
                    "postgres exited ({status}): {}",
                    self.log_tail()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::NotReady(format!(
                    "not ready after {}s: {}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last lines of the server log, for failure reasons.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        crate::tail::last_lines(&log, 3)
    }

    /// Stops the server (immediate shutdown) and removes the sandbox directory.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(mut child) = self.server.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
            }
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                warn!("postgres ignored an immediate shutdown; killing it");
                let _ = child.kill().await;
            }
        }
        self.dir
            .remove()
            .map_err(|e| format!("remove sandbox dir: {e}"))
    }
}

/// Returns the cached template data directory for this installation, making it once.
async fn ensure_template(
    rt: &ProcessRuntime,
    installed: &Installed,
    cache_dir: &Path,
) -> Result<PathBuf, ClusterError> {
    let uid = rt.user().map_or(u32::MAX, |u| u.uid);
    let key = blake3::hash(
        format!(
            "{}|{}|{:?}|{uid}",
            installed.version,
            installed.install.bindir.display(),
            INITDB_ARGS
        )
        .as_bytes(),
    );
    let template = cache_dir.join(format!(
        "pg{}-template-{}",
        installed.install.major,
        &key.to_hex()[..16]
    ));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    let err = |reason: String| ClusterError::Template {
        dir: cache_dir.to_owned(),
        reason,
    };
    make_shared_dir(cache_dir).map_err(|e| err(e.to_string()))?;
    // initdb runs in a sandbox dir (reachable by the sandbox user wherever the cache lives), then
    // the result is copied into the cache under a temporary name and renamed: concurrent
    // verifications never see a half-made template.
    let mut build = rt.create_dir()?;
    let data = build.path().join("data");
    let out = rt
        .command(&installed.bin("initdb"), build.path())
        .arg("-D")
        .arg(&data)
        .args(INITDB_ARGS)
        .output()
        .await
        .map_err(|e| err(format!("run initdb: {e}")))?;
    if !out.status.success() {
        let _ = build.remove();
        return Err(ClusterError::Initdb {
            status: out.status.to_string(),
            log: crate::tail::last_lines(&String::from_utf8_lossy(&out.stderr), 3),
        });
    }
    let staging = cache_dir.join(format!(
        ".staging-{}-{}",
        std::process::id(),
        &key.to_hex()[..8]
    ));
    let _ = tokio::fs::remove_dir_all(&staging).await;
    let copied = copy_tree(&data, &staging).await;
    let _ = build.remove();
    copied.map_err(err)?;
    if tokio::fs::rename(&staging, &template).await.is_err() {
        // Another verification made it first; ours is redundant.
        let _ = tokio::fs::remove_dir_all(&staging).await;
    }
    if template.join("PG_VERSION").is_file() {
        Ok(template)
    } else {
        Err(err("template missing after build".into()))
    }
}

/// `cp -a`: keeps modes and owners (the template belongs to the sandbox user), fast on many files.
async fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(|e| format!("run cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cp -a failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
