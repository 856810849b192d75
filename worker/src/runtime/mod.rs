//! Sandboxes: where a verification's database server runs and where the tools that read dump
//! content (psql, pg_restore, mariadb, …) run, in either runtime.
//!
//! - **process**: the server and tools are local processes in a private dir (see [`crate::sandbox`]:
//!   unprivileged user and no network when root). Tools come from the worker's own installation.
//! - **docker**: one container per verification, made through bollard from the engine's image
//!   (`rehearse/postgres:local` by default, built by `deploy/images/build`; a plan's
//!   `[sandbox] image` or the worker's `--image-*` flags can name any image with the engine's
//!   server and client tools). Every container has `network_mode = "none"`, a read-only root file
//!   system, its data on a throwaway dir of the worker's disk capped by `[sandbox] disk` (or, with
//!   `data = "tmpfs"`, a tmpfs sized to the memory limit), memory / CPU / pids limits from the
//!   plan's `[sandbox]`, every capability dropped but `DAC_READ_SEARCH` (for root-run tools
//!   reading the artifact), `no-new-privileges`, and the labels `rehearse.worker`, `rehearse.job`,
//!   `rehearse.attempt`, `rehearse.owner` the reaper uses. The tools run *inside* the container
//!   (`docker exec`), so a dump that escapes its client escapes into the container, not the host.
//!   The worker reaches the database through the server's unix socket in a bind-mounted dir.
//!   An artifact the tools read by path is first copied into the sandbox dir and checked against
//!   its digest ([`Sandbox::stage_artifact`]): the container reads exactly the bytes that were
//!   hashed, whatever the original's mode and owner (`pg_dump -Fd` writes 0700 dirs; backups are
//!   often 0600 and owned by a backup user), and nothing can change them after the checksum.
//!
//! A runtime is one module implementing [`Backend`] (what one sandbox does: start its server as
//! a local process or from an image, run a tool in it with stdin streamed, say when it and not
//! the backup was at fault, stop) plus one constructor on [`Sandbox`]: [`process`] and
//! [`docker`] today. Engines start their servers through the [`Sandbox`] facade and never see
//! the backend; engine-specific details (PostgreSQL's bin dirs, MariaDB's socket dir) travel in
//! the [`ContainerSpec`] the engine fills in.
//!
//! Either way a [`Sandbox`] is torn down on every path: [`Sandbox::stop`] kills the server (or
//! removes the container with its tmpfs) and removes the dir; what a kill -9 leaves behind is
//! reaped at the next start ([`crate::sandbox::reap_stale`], [`DockerRuntime::reap`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use rehearse_core::limits::SandboxSpec;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::sandbox::{ProcessRuntime, SandboxDir, SandboxError};
use crate::tail;

pub mod docker;
pub mod process;

pub use docker::{DockerRuntime, container_note, default_image};

/// Where the server's socket is, as processes inside a container see it.
pub const CONTAINER_SOCKET_DIR: &str = "/run/rehearse";
/// Where the artifact is mounted (read-only) inside a container.
pub const CONTAINER_ARTIFACT: &str = "/artifact";
/// Where a container's database lives (a bind-mounted disk dir, or a tmpfs).
pub const CONTAINER_DATA_DIR: &str = "/var/lib/rehearse";
/// Where the image's data dir template is mounted (read-only), when there is one.
pub const CONTAINER_TEMPLATE: &str = "/template";
/// Output kept from a tool's stdout when it is captured (query results).
const STDOUT_LIMIT: usize = 16 << 20;

/// Where restores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    /// Local processes.
    #[default]
    Process,
    /// Containers; an error when no Docker engine answers.
    Docker,
    /// Containers when a Docker engine answers and the engine's image is present, else processes.
    Auto,
}

/// Labels that tie a container to the attempt it serves.
#[derive(Debug, Clone, Default)]
pub struct Tags {
    pub job: Option<String>,
    pub attempt: Option<u64>,
}

/// What a container sandbox runs.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub image: String,
    /// The user the server and content-reading tools run as (`postgres`, `mysql`).
    pub user: String,
    /// The container's command (it starts the server in the foreground).
    pub cmd: Vec<String>,
    pub limits: SandboxSpec,
    /// Mounted read-only at [`CONTAINER_ARTIFACT`]: the copy [`Sandbox::stage_artifact`] made.
    pub artifact: Option<PathBuf>,
    /// The path the pipeline knows the artifact by ([`Sandbox::tool_path`] maps it).
    pub original_artifact: Option<PathBuf>,
    pub tags: Tags,
    /// Small extra tmpfs dirs the server needs (`/run/mysqld`).
    pub tmpfs: Vec<String>,
    /// A shell line every tool run in the container starts with (PostgreSQL's bin dirs in PATH).
    pub exec_prelude: Option<String>,
    /// A data dir template ([`DockerRuntime::image_template`]) mounted read-only at
    /// [`CONTAINER_TEMPLATE`].
    pub template: Option<PathBuf>,
}

/// A program to run in the sandbox.
#[derive(Debug, Clone)]
pub struct Tool {
    /// Its name (inside a container it is looked up in PATH).
    pub name: String,
    /// Its path on the host (process runtime).
    pub host_program: PathBuf,
    pub args: Vec<OsString>,
    /// Reads dump content as commands (psql, mariadb): runs as the sandbox user. Otherwise it
    /// runs as the invoking user (process) or root in the container, to read the artifact.
    pub untrusted: bool,
    /// Keep stdout (up to 16 MiB) instead of discarding it.
    pub capture_stdout: bool,
    /// Called with each piece of its stderr as it arrives (progress from verbose tools).
    pub watch: Option<StderrWatch>,
}

/// A callback on a tool's stderr, as it arrives (pieces, not lines).
#[derive(Clone)]
pub struct StderrWatch(pub std::sync::Arc<dyn Fn(&[u8]) + Send + Sync>);

impl std::fmt::Debug for StderrWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StderrWatch")
    }
}

/// What a tool did.
#[derive(Debug, Clone, Default)]
pub struct ToolOutput {
    pub code: Option<i64>,
    /// "exit status: 1", or how it ended.
    pub status: String,
    /// The end of its stderr.
    pub stderr: String,
    pub stdout: Vec<u8>,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// "TOOL failed (STATUS): last stderr lines".
    pub fn failure(&self, tool: &str) -> String {
        let said = tail::last_lines(&self.stderr, 3);
        if said.is_empty() {
            format!("{tool} failed ({})", self.status)
        } else {
            format!("{tool} failed ({}): {said}", self.status)
        }
    }
}

/// Chunks fed to a tool's stdin, or the reason the feed broke.
pub type FeedRx = mpsc::Receiver<Result<Vec<u8>, String>>;

/// What one sandbox of a runtime does. The [`Sandbox`] facade owns the dir and calls these.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The runtime's name in reports ("process", "docker").
    fn name(&self) -> &'static str;

    /// Where the worker itself finds the server's unix socket, in sandbox dir `dir`.
    fn host_socket_dir(&self, dir: &Path) -> PathBuf;

    /// Where tools running in the sandbox find the socket.
    fn tool_socket_dir(&self, dir: &Path) -> PathBuf;

    /// The artifact's path as tools in the sandbox see it.
    fn tool_path(&self, host: &Path) -> PathBuf {
        host.to_owned()
    }

    /// Takes a server started as a local process, stopped with `signal` at teardown. `Err`
    /// (and the child killed) for a runtime whose servers are not local processes.
    fn adopt_server(&mut self, child: Child, signal: Signal) -> Result<(), String>;

    /// Starts the server from an image. `Err` for a runtime without images.
    async fn start_image(&mut self, dir: &Path, spec: ContainerSpec) -> Result<(), String>;

    /// If the server has exited, how.
    async fn server_exited(&mut self) -> Option<String>;

    /// Why the sandbox, not the backup, stopped the run, if it did.
    async fn fault(&self, dir: &Path) -> Option<String>;

    /// Runs a tool to its end, feeding its stdin from `feed` when given.
    async fn run(&self, dir: &Path, tool: Tool, feed: Option<FeedRx>)
    -> Result<ToolOutput, String>;

    /// Stops the server (removes the container); the problems met, if any.
    async fn stop(&mut self) -> Vec<String>;

    /// Last resort when [`Backend::stop`] never ran (a panic): release what can be released
    /// without waiting.
    fn abandon(&mut self) {}
}

/// One verification's sandbox: its private dir and the runtime's backend.
#[derive(Debug)]
pub struct Sandbox {
    dir: SandboxDir,
    backend: Box<dyn Backend>,
}

impl Sandbox {
    /// A process sandbox: a private dir.
    pub fn process(rt: &ProcessRuntime) -> Result<Sandbox, SandboxError> {
        Ok(Sandbox {
            dir: rt.create_dir()?,
            backend: Box::new(process::ProcessBackend::new(rt)),
        })
    }

    /// A container sandbox: a private dir on the host for the socket; the container is made by
    /// [`Sandbox::start_container`].
    pub fn docker(rt: &ProcessRuntime, docker: &DockerRuntime) -> Result<Sandbox, SandboxError> {
        let dir = rt.create_dir()?;
        let backend = docker.backend(dir.path())?;
        Ok(Sandbox {
            dir,
            backend: Box::new(backend),
        })
    }

    /// The runtime's name ("process", "docker").
    pub fn runtime(&self) -> &'static str {
        self.backend.name()
    }

    /// The sandbox's dir on the host.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the worker itself finds the server's unix socket.
    pub fn host_socket_dir(&self) -> PathBuf {
        self.backend.host_socket_dir(self.dir.path())
    }

    /// Where tools running in the sandbox find the socket.
    pub fn tool_socket_dir(&self) -> PathBuf {
        self.backend.tool_socket_dir(self.dir.path())
    }

    /// The artifact's path as tools in the sandbox see it.
    pub fn tool_path(&self, host: &Path) -> PathBuf {
        self.backend.tool_path(host)
    }

    /// Copies a verified artifact (file or pg_dump directory) into this sandbox's dir, readable by
    /// the sandbox's users, and checks the copy against `blake3_hex` (the digest the checksum
    /// phase computed: of the file, or of a directory's manifest). Returns the copy's path, to
    /// mount with [`ContainerSpec::artifact`]. `Err` is why the environment could not stage it.
    pub async fn stage_artifact(
        &self,
        source: &Path,
        is_dir: bool,
        blake3_hex: &str,
    ) -> Result<PathBuf, String> {
        let dest = self.dir.path().join("artifact");
        let (from, to, expected) = (source.to_owned(), dest.clone(), blake3_hex.to_owned());
        tokio::task::spawn_blocking(move || stage(&from, &to, is_dir, &expected))
            .await
            .map_err(|e| format!("stage task failed: {e}"))??;
        Ok(dest)
    }

    /// Why the sandbox, not the backup, stopped the run, if it did: the data outgrew
    /// `[sandbox] disk`, the container was OOM-killed at its memory limit, or the server's own
    /// log names an environment fault (a full disk or tmpfs: `rehearse_core::fault`).
    pub async fn fault(&self) -> Option<String> {
        self.backend.fault(self.dir.path()).await
    }

    /// Records the server process (a local-process runtime) and the signal that stops it.
    pub fn set_server(&mut self, child: Child, signal: Signal) -> Result<(), String> {
        self.backend.adopt_server(child, signal)
    }

    /// If the server process (or container) has exited, how.
    pub async fn server_exited(&mut self) -> Option<String> {
        self.backend.server_exited().await
    }

    /// Creates and starts the container (image-based runtimes).
    pub async fn start_container(&mut self, spec: ContainerSpec) -> Result<(), String> {
        self.backend.start_image(self.dir.path(), spec).await
    }

    /// Runs a tool to its end, feeding its stdin from `feed` when given. `Err` only when the
    /// tool could not be run or its feed broke (the reason); a tool that ran and failed is an
    /// `Ok` with its status.
    pub async fn run(&self, tool: Tool, feed: Option<FeedRx>) -> Result<ToolOutput, String> {
        self.backend.run(self.dir.path(), tool, feed).await
    }

    /// Stops the server or removes the container, then removes the dir.
    pub async fn stop(mut self) -> Result<(), String> {
        let mut problems = self.backend.stop().await;
        let mut dir = self.dir.detach();
        if let Err(e) = tokio::task::spawn_blocking(move || dir.remove())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        {
            problems.push(format!("remove sandbox dir: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Last resort when teardown never ran (a panic): the backend lets go of what it can (a
        // container is removed in the background); the dir (and its processes) by SandboxDir's
        // own drop.
        self.backend.abandon();
    }
}

/// The blocking half of [`Sandbox::stage_artifact`].
fn stage(source: &Path, dest: &Path, is_dir: bool, expected: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let copied = if is_dir {
        copy_dir(source, dest)
    } else {
        std::fs::copy(source, dest).map(drop)
    };
    copied.map_err(|e| format!("copy the artifact into the sandbox: {e}"))?;
    let readable = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("open the staged artifact to the sandbox: {e}"))
    };
    let digest = if is_dir {
        readable(dest, 0o755)?;
        for entry in std::fs::read_dir(dest).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            readable(&entry.path(), 0o644)?;
        }
        crate::artifact::checksum::hash_tree(dest).map(|(h, ..)| h)
    } else {
        readable(dest, 0o644)?;
        crate::artifact::checksum::hash_file(dest).map(|(h, _)| h)
    }
    .map_err(|e| format!("hash the staged artifact: {e}"))?;
    if digest.to_hex().as_str() != expected {
        return Err(format!(
            "the artifact changed between its checksum and its copy into the sandbox (blake3 {} now, {expected} before)",
            digest.to_hex()
        ));
    }
    Ok(())
}

/// A pg_dump directory: a flat dir of regular files (anything else is refused, not followed).
fn copy_dir(source: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dest)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if !kind.is_file() {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                entry.path().display()
            )));
        }
        std::fs::copy(entry.path(), dest.join(entry.file_name()))?;
    }
    Ok(())
}

async fn read_limited(mut stream: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if out.len() < STDOUT_LIMIT {
            out.extend_from_slice(&buf[..n.min(STDOUT_LIMIT - out.len())]);
        }
    }
    out
}
