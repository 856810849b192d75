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
//! Either way a [`Sandbox`] is torn down on every path: [`Sandbox::stop`] kills the server (or
//! removes the container with its tmpfs) and removes the dir; what a kill -9 leaves behind is
//! reaped at the next start ([`crate::sandbox::reap_stale`], [`DockerRuntime::reap`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rehearse_core::limits::{DataStore, SandboxSpec};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::sandbox::{self, ProcessRuntime, SandboxDir, SandboxError};
use crate::tail;

/// Where the server's socket is, as processes inside a container see it.
pub const CONTAINER_SOCKET_DIR: &str = "/run/rehearse";
/// Where the artifact is mounted (read-only) inside a container.
pub const CONTAINER_ARTIFACT: &str = "/artifact";
/// Where a container's database lives (a bind-mounted disk dir, or a tmpfs).
pub const CONTAINER_DATA_DIR: &str = "/var/lib/rehearse";
/// How often the disk-backed data dir is measured against `[sandbox] disk`.
const DISK_WATCH_EVERY: Duration = Duration::from_millis(500);
/// Shell that puts every PostgreSQL bin dir of an image in PATH (Debian keeps them out of it).
pub const PG_PATH: &str =
    "for d in /usr/lib/postgresql/*/bin; do [ -d \"$d\" ] && PATH=\"$d:$PATH\"; done; export PATH";
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

/// The connection to the Docker engine, shared by every verification of a process.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// The `rehearse.worker` label: the reaper only touches this worker's containers.
    worker: String,
    /// Default image per engine ("postgres", "mysql").
    images: HashMap<String, String>,
    pub engine_version: String,
}

impl DockerRuntime {
    /// Connects (DOCKER_HOST or the local socket), negotiates the API version, and removes
    /// containers this worker left behind when it died.
    pub async fn connect(
        worker: &str,
        images: HashMap<String, String>,
    ) -> Result<DockerRuntime, String> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("no Docker engine: {e}"))?
            .negotiate_version()
            .await
            .map_err(|e| format!("no Docker engine reachable: {e}"))?;
        let version = docker
            .version()
            .await
            .map_err(|e| format!("no Docker engine reachable: {e}"))?;
        let rt = DockerRuntime {
            docker,
            worker: worker.to_owned(),
            images,
            engine_version: version.version.unwrap_or_default(),
        };
        let reaped = rt.reap().await;
        if reaped > 0 {
            warn!(
                reaped,
                "removed containers left behind by a worker that died"
            );
        }
        Ok(rt)
    }

    /// The image a plan's engine runs in: the plan's own, else this worker's default.
    pub fn image_for(&self, engine: &str, spec: &SandboxSpec) -> String {
        spec.image.clone().unwrap_or_else(|| {
            self.images
                .get(engine)
                .cloned()
                .unwrap_or_else(|| default_image(engine))
        })
    }

    pub async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// This worker's containers, in any state (empty when the engine does not answer).
    async fn own(&self) -> Vec<bollard::models::ContainerSummary> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("rehearse.worker={}", self.worker)],
        )]);
        let list = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(list))
            .await
            .unwrap_or_default()
    }

    /// Removes this worker's containers whose owning process is gone. Returns how many.
    pub async fn reap(&self) -> usize {
        let mut reaped = 0;
        for c in self.own().await {
            let owner = c
                .labels
                .as_ref()
                .and_then(|l| l.get("rehearse.owner"))
                .cloned()
                .unwrap_or_default();
            if sandbox::owner_alive(&owner) {
                continue;
            }
            let Some(id) = c.id else { continue };
            if remove_container(&self.docker, &id).await.is_ok() {
                info!(container = %id, "reaped container left by a dead worker");
                reaped += 1;
            }
        }
        reaped
    }

    /// The ids of this worker's containers (any state), for tests and diagnostics.
    pub async fn containers(&self) -> Vec<String> {
        self.own().await.into_iter().filter_map(|c| c.id).collect()
    }
}

/// A sentence for the report: the container and its limits.
pub fn container_note(image: &str, spec: &SandboxSpec) -> String {
    format!(
        "docker sandbox: {image}, no network, read-only root, data on {}, memory {}, cpus {}, pids {}, capabilities dropped",
        match spec.data {
            DataStore::Disk => format!(
                "disk (at most {})",
                rehearse_core::limits::format_size(spec.disk_bytes)
            ),
            DataStore::Tmpfs => "tmpfs".to_owned(),
        },
        rehearse_core::limits::format_size(spec.memory_bytes),
        spec.cpus
            .map_or_else(|| "unlimited".to_owned(), |c| c.to_string()),
        spec.pids
    )
}

/// The image `deploy/images/build` makes for an engine.
pub fn default_image(engine: &str) -> String {
    match engine {
        "mysql" => "rehearse/mariadb:local".to_owned(),
        other => format!("rehearse/{other}:local"),
    }
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        // Already gone (removed by someone else, or auto-removed): nothing left.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(format!("remove container {id}: {e}")),
    }
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

/// One verification's sandbox.
#[derive(Debug)]
pub struct Sandbox {
    dir: SandboxDir,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Process {
        rt: ProcessRuntime,
        /// The server; killed with `stop_signal` at teardown.
        server: Option<Child>,
        stop_signal: Signal,
    },
    Docker {
        docker: Docker,
        worker: String,
        container: Option<String>,
        user: String,
        /// (the artifact as the pipeline knows it, its staged copy mounted into the container)
        artifact: Option<(PathBuf, PathBuf)>,
        /// Why the environment stopped the run (disk limit), set by the watchdog.
        fault: Arc<Mutex<Option<String>>>,
        /// Measures the disk-backed data dir; aborted at teardown.
        watchdog: Option<tokio::task::JoinHandle<()>>,
    },
}

impl Sandbox {
    /// A process sandbox: a private dir.
    pub fn process(rt: &ProcessRuntime) -> Result<Sandbox, SandboxError> {
        Ok(Sandbox {
            dir: rt.create_dir()?,
            inner: Inner::Process {
                rt: rt.clone(),
                server: None,
                stop_signal: Signal::SIGKILL,
            },
        })
    }

    /// A container sandbox: a private dir on the host for the socket; the container is made by
    /// [`Sandbox::start_container`].
    pub fn docker(rt: &ProcessRuntime, docker: &DockerRuntime) -> Result<Sandbox, SandboxError> {
        let dir = rt.create_dir()?;
        let sock = dir.path().join("sock");
        // The container's server user (whatever its uid) makes its socket here.
        sandbox::make_open_dir(&sock).map_err(|source| SandboxError::CreateDir {
            dir: sock.clone(),
            source,
        })?;
        Ok(Sandbox {
            dir,
            inner: Inner::Docker {
                docker: docker.docker.clone(),
                worker: docker.worker.clone(),
                container: None,
                user: String::new(),
                artifact: None,
                fault: Arc::default(),
                watchdog: None,
            },
        })
    }

    pub fn is_docker(&self) -> bool {
        matches!(self.inner, Inner::Docker { .. })
    }

    /// The sandbox's dir on the host.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the worker itself finds the server's unix socket.
    pub fn host_socket_dir(&self) -> PathBuf {
        match self.inner {
            Inner::Process { .. } => self.dir.path().to_owned(),
            Inner::Docker { .. } => self.dir.path().join("sock"),
        }
    }

    /// Where tools running in the sandbox find the socket.
    pub fn tool_socket_dir(&self) -> PathBuf {
        match self.inner {
            Inner::Process { .. } => self.dir.path().to_owned(),
            Inner::Docker { .. } => PathBuf::from(CONTAINER_SOCKET_DIR),
        }
    }

    /// The artifact's path as tools in the sandbox see it.
    pub fn tool_path(&self, host: &Path) -> PathBuf {
        match &self.inner {
            Inner::Docker {
                artifact: Some((a, _)),
                ..
            } if a == host => PathBuf::from(CONTAINER_ARTIFACT),
            _ => host.to_owned(),
        }
    }

    /// Copies a verified artifact (file or pg_dump directory) into this sandbox's dir, readable by
    /// the container's users, and checks the copy against `blake3_hex` (the digest the checksum
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
        match &self.inner {
            Inner::Process { .. } => {
                let log = std::fs::read(self.dir.path().join("server.log")).ok()?;
                let end = &log[log.len().saturating_sub(64 * 1024)..];
                rehearse_core::fault::environment(&String::from_utf8_lossy(end))
            }
            Inner::Docker {
                docker,
                container,
                fault,
                ..
            } => {
                if let Some(reason) = fault.lock().ok().and_then(|f| f.clone()) {
                    return Some(reason);
                }
                let id = container.as_ref()?;
                let state = container_state(docker, id).await?;
                // The kernel kills inside the container's memory cgroup without Docker noticing
                // unless the victim is its first process: ask the cgroup's own counter (which
                // nothing in the sandbox can write).
                let oom_kills = if state.running == Some(true) {
                    oom_kills_in(docker, id).await
                } else {
                    None
                };
                if state.oom_killed == Some(true) || oom_kills.is_some_and(|n| n > 0) {
                    return Some(
                        "the sandbox hit its memory limit and the kernel killed a process in it (OOM-killed; raise [sandbox] memory)"
                            .to_owned(),
                    );
                }
                rehearse_core::fault::environment(&container_logs(docker, id, 40).await)
            }
        }
    }

    /// Records the server process (process runtime) and the signal that stops it.
    pub fn set_server(&mut self, child: Child, signal: Signal) {
        if let Inner::Process {
            server,
            stop_signal,
            ..
        } = &mut self.inner
        {
            *server = Some(child);
            *stop_signal = signal;
        }
    }

    /// If the server process (or container) has exited, how.
    pub async fn server_exited(&mut self) -> Option<String> {
        match &mut self.inner {
            Inner::Process { server, .. } => {
                let child = server.as_mut()?;
                let status = child.try_wait().ok()??;
                *server = None;
                Some(format!("exited ({status})"))
            }
            Inner::Docker {
                docker, container, ..
            } => {
                let id = container.as_ref()?;
                let state = container_state(docker, id).await?;
                if state.running == Some(true) {
                    return None;
                }
                let logs = container_log_tail(docker, id, 3).await;
                Some(format!(
                    "container exited ({}){}{logs}",
                    state.exit_code.unwrap_or(-1),
                    if logs.is_empty() { "" } else { ": " }
                ))
            }
        }
    }

    /// Creates and starts the container (docker runtime only).
    pub async fn start_container(&mut self, spec: ContainerSpec) -> Result<(), String> {
        let host_sock = self.dir.path().join("sock");
        let name = format!(
            "{}{}",
            sandbox::DIR_PREFIX,
            self.dir
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(sandbox::DIR_PREFIX))
                .unwrap_or("sandbox")
        );
        let data_dir = self.dir.path().join("data");
        let Inner::Docker {
            docker,
            worker,
            container,
            user,
            artifact,
            fault,
            watchdog,
        } = &mut self.inner
        else {
            return Err("not a container sandbox".into());
        };
        let mut labels = HashMap::from([
            ("rehearse.worker".to_owned(), worker.clone()),
            (
                "rehearse.owner".to_owned(),
                sandbox::owner_stamp(std::process::id()).unwrap_or_default(),
            ),
            (
                "rehearse.sandbox".to_owned(),
                self.dir.path().display().to_string(),
            ),
        ]);
        if let Some(job) = &spec.tags.job {
            labels.insert("rehearse.job".into(), job.clone());
        }
        if let Some(attempt) = spec.tags.attempt {
            labels.insert("rehearse.attempt".into(), attempt.to_string());
        }
        let mut binds = vec![format!("{}:{CONTAINER_SOCKET_DIR}:rw", host_sock.display())];
        if let Some(a) = &spec.artifact {
            binds.push(format!("{}:{CONTAINER_ARTIFACT}:ro", a.display()));
        }
        let mut tmpfs = HashMap::from([
            ("/tmp".to_owned(), "rw,mode=1777,size=256m".to_owned()),
            ("/run/mysqld".to_owned(), "rw,mode=1777,size=1m".to_owned()),
        ]);
        match spec.limits.data {
            DataStore::Tmpfs => {
                tmpfs.insert(
                    CONTAINER_DATA_DIR.to_owned(),
                    format!("rw,mode=1777,size={}", spec.limits.memory_bytes),
                );
            }
            DataStore::Disk => {
                // Open to the image's server user, whatever its uid; the sandbox dir around it
                // stays private, and teardown removes it with the dir.
                sandbox::make_open_dir(&data_dir)
                    .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
                binds.push(format!("{}:{CONTAINER_DATA_DIR}:rw", data_dir.display()));
            }
        }
        let memory = i64::try_from(spec.limits.memory_bytes).unwrap_or(i64::MAX);
        let host_config = HostConfig {
            network_mode: Some("none".into()),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: spec.limits.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: Some(spec.limits.pids),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(vec!["DAC_READ_SEARCH".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            binds: Some(binds),
            ..HostConfig::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(spec.user.clone()),
            cmd: Some(spec.cmd.clone()),
            entrypoint: Some(Vec::new()),
            env: Some(container_env()),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| format!("create container from {}: {e}", spec.image))?;
        *container = Some(created.id.clone());
        *user = spec.user;
        if let Some(staged) = spec.artifact {
            *artifact = Some((spec.original_artifact.unwrap_or_default(), staged));
        }
        if spec.limits.data == DataStore::Disk {
            *watchdog = Some(tokio::spawn(watch_disk(
                docker.clone(),
                created.id.clone(),
                data_dir,
                spec.limits.disk_bytes,
                fault.clone(),
            )));
        }
        debug!(container = %created.id, image = %spec.image, "container created");
        docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| format!("start container: {e}"))
    }

    /// Runs a tool to its end, feeding its stdin from `feed` when given. `Err` only when the
    /// tool could not be run or its feed broke (the reason); a tool that ran and failed is an
    /// `Ok` with its status.
    pub async fn run(&self, tool: Tool, feed: Option<FeedRx>) -> Result<ToolOutput, String> {
        match &self.inner {
            Inner::Process { rt, .. } => run_process(rt, self.dir.path(), tool, feed).await,
            Inner::Docker {
                docker,
                container,
                user,
                ..
            } => {
                let id = container.as_deref().ok_or("the container is not running")?;
                run_exec(docker, id, user, tool, feed).await
            }
        }
    }

    /// Stops the server or removes the container, then removes the dir.
    pub async fn stop(mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        match &mut self.inner {
            Inner::Process {
                server,
                stop_signal,
                ..
            } => {
                if let Some(mut child) = server.take() {
                    if let Some(pid) = child.id() {
                        let _ = kill(Pid::from_raw(pid as i32), *stop_signal);
                    }
                    if tokio::time::timeout(Duration::from_secs(10), child.wait())
                        .await
                        .is_err()
                    {
                        warn!("the sandbox server ignored its stop signal; killing it");
                        let _ = child.kill().await;
                    }
                }
            }
            Inner::Docker {
                docker,
                container,
                watchdog,
                user,
                ..
            } => {
                if let Some(w) = watchdog.take() {
                    w.abort();
                }
                if let Some(id) = container.take() {
                    // A worker that is not root cannot remove files the container's user made
                    // in the disk-backed data dir: that user removes them first.
                    if !nix::unistd::Uid::effective().is_root() {
                        empty_data_dir(docker, &id, user).await;
                    }
                    if let Err(e) = remove_container(docker, &id).await {
                        problems.push(e);
                    }
                }
            }
        }
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
        // Last resort when teardown never ran (a panic): a container is removed in the
        // background; the dir (and its processes) by SandboxDir's own drop.
        if let Inner::Docker {
            docker, container, ..
        } = &mut self.inner
            && let Some(id) = container.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let docker = docker.clone();
            handle.spawn(async move {
                let _ = remove_container(&docker, &id).await;
            });
        }
    }
}

/// Measures the disk-backed data dir every [`DISK_WATCH_EVERY`]; past `limit` it records the
/// fault and kills the container, so the restore ends at once and the pipeline reports `error`
/// naming the limit (the backup is not at fault for being larger than the sandbox).
async fn watch_disk(
    docker: Docker,
    id: String,
    dir: PathBuf,
    limit: u64,
    fault: Arc<Mutex<Option<String>>>,
) {
    let mut tick = tokio::time::interval(DISK_WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = dir.clone();
        let used = match tokio::task::spawn_blocking(move || disk_usage(&at)).await {
            Ok(Ok(bytes)) => bytes,
            // Not readable from here (a non-root worker): ask inside the container.
            _ => match usage_in_container(&docker, &id).await {
                Some(bytes) => bytes,
                None => continue,
            },
        };
        if used > limit {
            let reason = format!(
                "the restored data outgrew the sandbox's disk limit ([sandbox] disk = {}; {} used)",
                rehearse_core::limits::format_size(limit),
                rehearse_core::limits::format_size(used)
            );
            warn!(container = %id, %reason, "stopping the sandbox");
            if let Ok(mut f) = fault.lock() {
                *f = Some(reason);
            }
            let _ = docker
                .kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>)
                .await;
            return;
        }
    }
}

/// How many processes the kernel OOM-killed in the container's memory cgroup (cgroup v2
/// `memory.events`, v1 `memory.oom_control`), read inside it; `None` when it cannot tell.
async fn oom_kills_in(docker: &Docker, id: &str) -> Option<u64> {
    let tool = Tool {
        name: "cat".into(),
        host_program: PathBuf::from("cat"),
        args: [
            "/sys/fs/cgroup/memory.events",
            "/sys/fs/cgroup/memory/memory.oom_control",
        ]
        .map(Into::into)
        .to_vec(),
        untrusted: false,
        capture_stdout: true,
    };
    let out = run_exec(docker, id, "0", tool, None).await.ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// Bytes a directory tree takes on disk (allocated blocks, links not followed).
fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Removed while we walked (WAL recycling, temp files).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

async fn usage_in_container(docker: &Docker, id: &str) -> Option<u64> {
    let tool = Tool {
        name: "du".into(),
        host_program: PathBuf::from("du"),
        args: vec!["-sk".into(), CONTAINER_DATA_DIR.into()],
        untrusted: false,
        capture_stdout: true,
    };
    let out = run_exec(docker, id, "0", tool, None).await.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Removes the data dir's content as the container's own user (a non-root worker's teardown).
async fn empty_data_dir(docker: &Docker, id: &str, user: &str) {
    let tool = Tool {
        name: "find".into(),
        host_program: PathBuf::from("find"),
        args: [CONTAINER_DATA_DIR, "-mindepth", "1", "-delete"]
            .map(Into::into)
            .to_vec(),
        untrusted: true,
        capture_stdout: false,
    };
    let _ = run_exec(docker, id, user, tool, None).await;
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

fn container_env() -> Vec<String> {
    ["LC_ALL=C.UTF-8", "TZ=UTC", "PGTZ=UTC", "HOME=/tmp"]
        .map(String::from)
        .to_vec()
}

async fn container_state(docker: &Docker, id: &str) -> Option<bollard::models::ContainerState> {
    docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()?
        .state
}

/// The last `lines` lines the container's server printed, whole.
async fn container_logs(docker: &Docker, id: &str, lines: usize) -> String {
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&lines.to_string())
        .build();
    let mut logs = docker.logs(id, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    text
}

/// The end of the container's log, short enough for a reason.
async fn container_log_tail(docker: &Docker, id: &str, lines: usize) -> String {
    tail::last_lines(&container_logs(docker, id, 20).await, lines)
}

async fn run_process(
    rt: &ProcessRuntime,
    dir: &Path,
    tool: Tool,
    feed: Option<FeedRx>,
) -> Result<ToolOutput, String> {
    let mut cmd = if tool.untrusted {
        rt.command(&tool.host_program, dir)
    } else {
        rt.client_command(&tool.host_program, dir)
    };
    cmd.args(&tool.args)
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if tool.capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", tool.name))?;
    let stderr = child.stderr.take().map(|s| tokio::spawn(tail::collect(s)));
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_limited(s)));
    let mut feed_error = None;
    if let Some(mut rx) = feed {
        let mut stdin = child.stdin.take();
        while let Some(message) = rx.recv().await {
            match message {
                Ok(chunk) => {
                    let Some(pipe) = stdin.as_mut() else { break };
                    // A write error means the tool exited; its status and stderr say why.
                    if pipe.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                Err(reason) => {
                    feed_error = Some(reason);
                    break;
                }
            }
        }
        drop(stdin);
        if feed_error.is_some() {
            let _ = child.kill().await;
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("wait for {}: {e}", tool.name))?;
    let stderr = match stderr {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    let stdout = match stdout {
        Some(t) => t.await.unwrap_or_default(),
        None => Vec::new(),
    };
    if let Some(reason) = feed_error {
        return Err(reason);
    }
    Ok(ToolOutput {
        code: status.code().map(i64::from),
        status: status.to_string(),
        stderr,
        stdout,
    })
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

async fn run_exec(
    docker: &Docker,
    id: &str,
    server_user: &str,
    tool: Tool,
    feed: Option<FeedRx>,
) -> Result<ToolOutput, String> {
    // `sh -c 'PG_PATH; exec "$@"' sh TOOL ARGS...`
    let mut cmd: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!("{PG_PATH}; exec \"$@\""),
        "sh".into(),
    ];
    cmd.push(tool.name.clone());
    cmd.extend(tool.args.iter().map(|a| a.to_string_lossy().into_owned()));
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                attach_stdin: Some(feed.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd),
                env: Some(container_env()),
                user: Some(if tool.untrusted {
                    server_user.to_owned()
                } else {
                    "0".to_owned()
                }),
                working_dir: Some("/tmp".to_owned()),
                ..CreateExecOptions::default()
            },
        )
        .await
        .map_err(|e| format!("start {} in the container: {e}", tool.name))?;
    let started = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(|e| format!("start {} in the container: {e}", tool.name))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(format!("{} started detached", tool.name));
    };
    let capture = tool.capture_stdout;
    let reader = tokio::spawn(async move {
        let mut stderr: Vec<u8> = Vec::new();
        let mut stdout: Vec<u8> = Vec::new();
        while let Some(Ok(item)) = output.next().await {
            match item {
                LogOutput::StdErr { message } => {
                    stderr.extend_from_slice(&message);
                    if stderr.len() > 64 * 1024 {
                        stderr.drain(..stderr.len() - 16 * 1024);
                    }
                }
                LogOutput::StdOut { message } if capture && stdout.len() < STDOUT_LIMIT => {
                    let room = STDOUT_LIMIT - stdout.len();
                    stdout.extend_from_slice(&message[..message.len().min(room)]);
                }
                _ => {}
            }
        }
        (stdout, String::from_utf8_lossy(&stderr).into_owned())
    });
    let mut feed_error = None;
    if let Some(mut rx) = feed {
        while let Some(message) = rx.recv().await {
            match message {
                Ok(chunk) => {
                    if input.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                Err(reason) => {
                    feed_error = Some(reason);
                    break;
                }
            }
        }
    }
    // End of stdin: the tool sees EOF (a broken feed fails the verification anyway).
    let _ = input.shutdown().await;
    let (stdout, stderr) = reader.await.unwrap_or_default();
    if let Some(reason) = feed_error {
        return Err(reason);
    }
    // The stream ends as the process does; its exit code may lag a moment behind.
    let mut code = None;
    for _ in 0..200 {
        match docker.inspect_exec(&exec.id).await {
            Ok(info) if info.running != Some(true) => {
                code = info.exit_code;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => return Err(format!("inspect {}: {e}", tool.name)),
        }
    }
    Ok(ToolOutput {
        code,
        status: code.map_or_else(
            || "did not finish".to_owned(),
            |c| format!("exit status: {c}"),
        ),
        stderr,
        stdout,
    })
}
