//! The docker runtime: one container per verification, made through bollard from the engine's
//! image (see the [module docs](super) for its limits, labels and mounts); tools run inside it
//! with `docker exec`; a watchdog holds the disk-backed data dir to `[sandbox] disk`; a reaper
//! removes what a dead worker left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use rehearse_core::limits::{DataStore, SandboxSpec};
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tracing::{debug, info, warn};

use super::{
    Backend, CONTAINER_ARTIFACT, CONTAINER_DATA_DIR, CONTAINER_SOCKET_DIR, CONTAINER_TEMPLATE,
    ContainerSpec, FeedRx, STDOUT_LIMIT, Tool, ToolOutput,
};
use crate::sandbox::{self, SandboxError};
use crate::tail;

/// How often the disk-backed data dir is measured against `[sandbox] disk`.
const DISK_WATCH_EVERY: Duration = Duration::from_millis(500);

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

    /// A data dir made once per image and kept in `cache_dir`, for containers to copy at start
    /// instead of initialising their own (initdb or mariadb-install-db: most of a container's
    /// provision time). `script` runs as `user` in a throwaway container of `image` (no
    /// network, read-only root) and must fill `/out/data`; the result is kept as
    /// `<cache_dir>/<kind>-image-<image id>/data`, keyed by the image's id so a rebuilt image
    /// gets a new one. Concurrent first calls wait for one build. `Err`: why it could not be
    /// made (the caller then initialises in the container as before).
    pub async fn image_template(
        &self,
        image: &str,
        user: &str,
        script: &str,
        kind: &str,
        cache_dir: &Path,
    ) -> Result<PathBuf, String> {
        let id = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| format!("inspect {image}: {e}"))?
            .id
            .unwrap_or_default();
        let key = blake3::hash(format!("{id}|{script}").as_bytes());
        let template = cache_dir.join(format!("{kind}-image-{}", &key.to_hex()[..16]));
        // The marker is the worker's own file: the data dir inside belongs to the image's user.
        let ready = template.join("ready");
        if ready.is_file() {
            return Ok(template.join("data"));
        }
        let _building = sandbox::template_lock(&template).await;
        if ready.is_file() {
            return Ok(template.join("data"));
        }
        sandbox::make_shared_dir(cache_dir).map_err(|e| format!("cache dir: {e}"))?;
        let staging = cache_dir.join(format!(
            ".{kind}-image-{}-{}",
            &key.to_hex()[..16],
            crate::random_token()
        ));
        // Writable by the image's user, whatever its uid, for the build only.
        sandbox::make_open_dir(&staging).map_err(|e| format!("template staging dir: {e}"))?;
        let built = self
            .run_to_end(
                image,
                user,
                vec!["sh".into(), "-c".into(), script.to_owned()],
                vec![format!("{}:/out:rw", staging.display())],
            )
            .await
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
                    .and_then(|()| std::fs::write(staging.join("ready"), id.as_bytes()))
                    .map_err(|e| format!("template staging dir: {e}"))
            })
            .and_then(|()| {
                std::fs::rename(&staging, &template).map_err(|e| format!("publish template: {e}"))
            });
        if let Err(e) = built {
            // Best effort: a worker that is not root cannot remove the image user's files.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        info!(image, template = %template.display(), "data dir template made for the image");
        Ok(template.join("data"))
    }

    /// Runs `cmd` in a throwaway container of `image` to its end: no network, read-only root,
    /// every capability dropped, labelled so the reaper removes it if this worker dies.
    async fn run_to_end(
        &self,
        image: &str,
        user: &str,
        cmd: Vec<String>,
        binds: Vec<String>,
    ) -> Result<(), String> {
        let labels = HashMap::from([
            ("rehearse.worker".to_owned(), self.worker.clone()),
            (
                "rehearse.owner".to_owned(),
                sandbox::owner_stamp(std::process::id()).unwrap_or_default(),
            ),
        ]);
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            user: Some(user.to_owned()),
            cmd: Some(cmd),
            entrypoint: Some(Vec::new()),
            env: Some(container_env()),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_owned(),
                    "rw,mode=1777,size=64m".to_owned(),
                )])),
                binds: Some(binds),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let created = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(|e| format!("create container from {image}: {e}"))?;
        let id = created.id;
        let ran = async {
            self.docker
                .start_container(
                    &id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .map_err(|e| format!("start container: {e}"))?;
            let mut waited = self
                .docker
                .wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
            match tokio::time::timeout(Duration::from_secs(300), waited.next()).await {
                Ok(Some(Ok(r))) if r.status_code == 0 => Ok(()),
                Ok(_) => Err(format!(
                    "failed: {}",
                    container_log_tail(&self.docker, &id, 3).await
                )),
                Err(_) => Err("did not finish within 300 s".to_owned()),
            }
        }
        .await;
        let removed = remove_container(&self.docker, &id).await;
        ran.and(removed)
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

/// Before a container starts with its data on the worker's disk (`[sandbox] data = "disk"`):
/// moves a spare copy of the image's `template` into the sandbox's data dir (the container then
/// finds its data dir made and initialises nothing), and has the next spare copied in the
/// background. Only as root, which keeps the image user's ownership of the copy; otherwise, and
/// with a tmpfs, the container copies the template itself.
pub fn prefill_data(
    spares: &std::sync::Arc<sandbox::Spares>,
    rt: &sandbox::ProcessRuntime,
    template: &Path,
    sandbox_dir: &Path,
    limits: &SandboxSpec,
    cache_dir: &Path,
) {
    if limits.data != DataStore::Disk || !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let data_root = sandbox_dir.join("data");
    if sandbox::make_open_dir(&data_root).is_ok() {
        spares.take_into(template, &data_root.join("data"));
    }
    spares.refill(rt, template, cache_dir);
}

/// One container sandbox.
#[derive(Debug)]
pub struct DockerBackend {
    docker: Docker,
    worker: String,
    container: Option<String>,
    user: String,
    /// (the artifact as the pipeline knows it, its staged copy mounted into the container)
    artifact: Option<(PathBuf, PathBuf)>,
    /// Run before every tool in the container.
    prelude: Option<String>,
    /// Why the environment stopped the run (disk limit), set by the watchdog.
    fault: Arc<Mutex<Option<String>>>,
    /// Measures the disk-backed data dir; aborted at teardown.
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl DockerRuntime {
    /// A container sandbox in `dir` (made by the caller): the socket dir the container's
    /// server user (whatever its uid) can write; the container comes with `start_image`.
    pub fn backend(&self, dir: &Path) -> Result<DockerBackend, SandboxError> {
        let sock = dir.join("sock");
        sandbox::make_open_dir(&sock).map_err(|source| SandboxError::CreateDir {
            dir: sock.clone(),
            source,
        })?;
        Ok(DockerBackend {
            docker: self.docker.clone(),
            worker: self.worker.clone(),
            container: None,
            user: String::new(),
            artifact: None,
            prelude: None,
            fault: Arc::default(),
            watchdog: None,
        })
    }
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn host_socket_dir(&self, dir: &Path) -> PathBuf {
        dir.join("sock")
    }

    fn tool_socket_dir(&self, _dir: &Path) -> PathBuf {
        PathBuf::from(CONTAINER_SOCKET_DIR)
    }

    fn tool_path(&self, host: &Path) -> PathBuf {
        match &self.artifact {
            Some((a, _)) if a == host => PathBuf::from(CONTAINER_ARTIFACT),
            _ => host.to_owned(),
        }
    }

    fn adopt_server(&mut self, mut child: Child, _signal: Signal) -> Result<(), String> {
        let _ = child.start_kill();
        Err("a container sandbox does not run local servers".into())
    }

    async fn start_image(&mut self, dir: &Path, spec: ContainerSpec) -> Result<(), String> {
        let host_sock = dir.join("sock");
        let name = format!(
            "{}{}",
            sandbox::DIR_PREFIX,
            dir.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(sandbox::DIR_PREFIX))
                .unwrap_or("sandbox")
        );
        let data_dir = dir.join("data");
        let mut labels = HashMap::from([
            ("rehearse.worker".to_owned(), self.worker.clone()),
            (
                "rehearse.owner".to_owned(),
                sandbox::owner_stamp(std::process::id()).unwrap_or_default(),
            ),
            ("rehearse.sandbox".to_owned(), dir.display().to_string()),
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
        if let Some(t) = &spec.template {
            binds.push(format!("{}:{CONTAINER_TEMPLATE}:ro", t.display()));
        }
        let mut tmpfs = HashMap::from([("/tmp".to_owned(), "rw,mode=1777,size=256m".to_owned())]);
        for extra in &spec.tmpfs {
            tmpfs.insert(extra.clone(), "rw,mode=1777,size=1m".to_owned());
        }
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
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| format!("create container from {}: {e}", spec.image))?;
        self.container = Some(created.id.clone());
        self.user = spec.user;
        self.prelude = spec.exec_prelude;
        if let Some(staged) = spec.artifact {
            self.artifact = Some((spec.original_artifact.unwrap_or_default(), staged));
        }
        if spec.limits.data == DataStore::Disk {
            self.watchdog = Some(tokio::spawn(watch_disk(
                self.docker.clone(),
                created.id.clone(),
                data_dir,
                spec.limits.disk_bytes,
                self.fault.clone(),
            )));
        }
        debug!(container = %created.id, image = %spec.image, "container created");
        self.docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| format!("start container: {e}"))
    }

    async fn server_exited(&mut self) -> Option<String> {
        let id = self.container.as_ref()?;
        let state = container_state(&self.docker, id).await?;
        if state.running == Some(true) {
            return None;
        }
        let logs = container_log_tail(&self.docker, id, 3).await;
        Some(format!(
            "container exited ({}){}{logs}",
            state.exit_code.unwrap_or(-1),
            if logs.is_empty() { "" } else { ": " }
        ))
    }

    async fn fault(&self, _dir: &Path) -> Option<String> {
        if let Some(reason) = self.fault.lock().ok().and_then(|f| f.clone()) {
            return Some(reason);
        }
        let id = self.container.as_ref()?;
        let state = container_state(&self.docker, id).await?;
        // The kernel kills inside the container's memory cgroup without Docker noticing unless
        // the victim is its first process: ask the cgroup's own counter (which nothing in the
        // sandbox can write).
        let oom_kills = if state.running == Some(true) {
            oom_kills_in(&self.docker, id).await
        } else {
            None
        };
        if state.oom_killed == Some(true) || oom_kills.is_some_and(|n| n > 0) {
            return Some(
                "the sandbox hit its memory limit and the kernel killed a process in it (OOM-killed; raise [sandbox] memory)"
                    .to_owned(),
            );
        }
        rehearse_core::fault::environment(&container_logs(&self.docker, id, 40).await)
    }

    async fn run(
        &self,
        _dir: &Path,
        tool: Tool,
        feed: Option<FeedRx>,
    ) -> Result<ToolOutput, String> {
        let id = self
            .container
            .as_deref()
            .ok_or("the container is not running")?;
        run_exec(
            &self.docker,
            id,
            &self.user,
            self.prelude.as_deref(),
            tool,
            feed,
        )
        .await
    }

    async fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if let Some(id) = self.container.take() {
            // A worker that is not root cannot remove files the container's user made in the
            // disk-backed data dir: that user removes them first.
            if !nix::unistd::Uid::effective().is_root() {
                empty_data_dir(&self.docker, &id, &self.user).await;
            }
            if let Err(e) = remove_container(&self.docker, &id).await {
                problems.push(e);
            }
        }
        problems
    }

    fn abandon(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if let Some(id) = self.container.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let docker = self.docker.clone();
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
        watch: None,
    };
    let out = run_exec(docker, id, "0", None, tool, None).await.ok()?;
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
        watch: None,
    };
    let out = run_exec(docker, id, "0", None, tool, None).await.ok()?;
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
        watch: None,
    };
    let _ = run_exec(docker, id, user, None, tool, None).await;
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

async fn run_exec(
    docker: &Docker,
    id: &str,
    server_user: &str,
    prelude: Option<&str>,
    tool: Tool,
    feed: Option<FeedRx>,
) -> Result<ToolOutput, String> {
    // `sh -c 'PRELUDE; exec "$@"' sh TOOL ARGS...`
    let mut cmd: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        match prelude {
            Some(prelude) => format!("{prelude}; exec \"$@\""),
            None => "exec \"$@\"".to_owned(),
        },
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
    let watch = tool.watch.clone();
    let reader = tokio::spawn(async move {
        let mut stderr: Vec<u8> = Vec::new();
        let mut stdout: Vec<u8> = Vec::new();
        while let Some(Ok(item)) = output.next().await {
            match item {
                LogOutput::StdErr { message } => {
                    if let Some(w) = &watch {
                        (w.0)(&message);
                    }
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
