//! A disposable PostgreSQL server in a sandbox directory.
//!
//! Start-up copies a cached, initdb-made template data directory (initdb costs ~1 s; a copy ~0.1 s)
//! and starts `postgres` with settings for a throwaway restore: no TCP listener (unix socket in the
//! sandbox dir only), fsync and full-page writes off, minimal WAL (so pg_restore's parallel COPY
//! into freshly created tables skips WAL), no autovacuum, generous maintenance memory for index
//! builds. Stop is an immediate shutdown (SIGQUIT): the data is thrown away anyway.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rehearse_core::limits::{Profile, SandboxSpec};
use tracing::debug;

use super::SUPERUSER;
use super::binaries::Installed;
use crate::runtime::{
    CONTAINER_DATA_DIR, CONTAINER_SOCKET_DIR, CONTAINER_TEMPLATE, ContainerSpec, DockerRuntime,
    Sandbox, Tags, Tool,
};
use crate::sandbox::{ProcessRuntime, Spares, copy_tree, make_shared_dir, publish_template};

/// Shell that puts every PostgreSQL bin dir of an image in PATH (Debian keeps them out of it):
/// run before the server and every tool in a container.
pub const PG_PATH: &str =
    "for d in /usr/lib/postgresql/*/bin; do [ -d \"$d\" ] && PATH=\"$d:$PATH\"; done; export PATH";
/// The socket's port number (it only names the socket file; there is no TCP listener).
pub const PORT: u16 = 5432;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
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
/// except the first two, which are the sandbox's boundary. (A base backup's recovery overrides
/// a few: see `physical`.)
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

/// PostgreSQL's own defaults for what [`SETTINGS`] changes for speed: the `faithful` profile
/// puts them back (a later `-c` wins), so the restore runs as a production server's would.
const DURABLE: [(&str, &str); 11] = [
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    ("autovacuum", "on"),
    ("checkpoint_timeout", "5min"),
    ("max_wal_size", "1GB"),
    ("maintenance_work_mem", "64MB"),
    ("shared_buffers", "128MB"),
    ("jit", "on"),
];

/// The settings on top of [`SETTINGS`] for the plan's `[sandbox]`: the durable defaults under
/// the `faithful` profile, then the plan's own `settings` (checked against
/// `rehearse_core::limits::allowed_setting` when the plan was read).
pub fn profile_settings(spec: &SandboxSpec) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if spec.profile == Profile::Faithful {
        out.extend(
            DURABLE
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
    }
    out.extend(spec.settings.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

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

/// A running (or stopped) sandbox server, as a local process or in a container.
#[derive(Debug)]
pub struct PgCluster {
    sandbox: Sandbox,
    /// The host installation (process runtime); `None` in a container (the image's tools run).
    installed: Option<Installed>,
    /// The server's version, e.g. "15.20".
    pub version: String,
    /// psql supports `\restrict` (see `rehearse_core::script`).
    pub psql_restrict: bool,
}

impl PgCluster {
    /// Makes the sandbox directory; the server is not started yet (see [`PgCluster::start`]).
    pub fn create(rt: &ProcessRuntime, installed: &Installed) -> Result<PgCluster, ClusterError> {
        let sandbox = Sandbox::process(rt)?;
        check_socket_path(&sandbox.host_socket_dir())?;
        Ok(PgCluster {
            sandbox,
            installed: Some(installed.clone()),
            version: installed.version.clone(),
            psql_restrict: installed.psql_restrict,
        })
    }

    /// A container sandbox (see [`PgCluster::start_container`]).
    pub fn create_docker(
        rt: &ProcessRuntime,
        docker: &DockerRuntime,
    ) -> Result<PgCluster, ClusterError> {
        PgCluster::without_installation(Sandbox::docker(rt, docker)?)
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn dir(&self) -> &Path {
        self.sandbox.dir()
    }

    /// The unix socket directory the worker connects through.
    pub fn socket_dir(&self) -> PathBuf {
        self.sandbox.host_socket_dir()
    }

    /// Connection flags for the libpq client tools (psql, pg_restore, pg_dump, pg_amcheck), as
    /// they run in the sandbox.
    pub fn client_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = ["-p", &PORT.to_string(), "-U", SUPERUSER, "-h"]
            .iter()
            .map(Into::into)
            .collect();
        args.push(self.sandbox.tool_socket_dir().into());
        args
    }

    /// A PostgreSQL client tool with the connection flags, ready for [`Sandbox::run`].
    pub fn tool(&self, name: &str, untrusted: bool) -> Tool {
        Tool {
            name: name.to_owned(),
            host_program: self
                .installed
                .as_ref()
                .map_or_else(|| PathBuf::from(name), |i| i.bin(name)),
            args: self.client_args(),
            untrusted,
            capture_stdout: false,
            watch: None,
        }
    }

    /// Whether a tool is there to run (in a container: assumed; running it tells).
    pub fn has_tool(&self, name: &str) -> Result<(), String> {
        match &self.installed {
            Some(i) if !i.bin(name).is_file() => Err(format!(
                "{name} not installed in {}",
                i.install.bindir.display()
            )),
            _ => Ok(()),
        }
    }

    /// The server's data directory on the host: `data/` of the sandbox, or in a container
    /// `data/data` (the bind-mounted [`CONTAINER_DATA_DIR`] holds it).
    pub fn data_dir(&self) -> PathBuf {
        match self.in_container() {
            true => self.sandbox.dir().join("data").join("data"),
            false => self.sandbox.dir().join("data"),
        }
    }

    fn in_container(&self) -> bool {
        self.sandbox.runtime() == "docker"
    }

    /// A directory for the server's side files (config, the WAL hand-over), as the host sees it
    /// and as the server sees it: the sandbox dir itself, or in a container the bind-mounted
    /// data dir around the server's.
    pub fn side_dir(&self) -> (PathBuf, PathBuf) {
        match self.in_container() {
            true => (
                self.sandbox.dir().join("data"),
                PathBuf::from(CONTAINER_DATA_DIR),
            ),
            false => (self.sandbox.dir().to_owned(), self.sandbox.dir().to_owned()),
        }
    }

    /// A host path under [`PgCluster::side_dir`] as the server sees it.
    pub fn seen(&self, host: &Path) -> PathBuf {
        let (host_side, seen_side) = self.side_dir();
        host.strip_prefix(&host_side)
            .map_or_else(|_| host.to_owned(), |rel| seen_side.join(rel))
    }

    fn log_path(&self) -> PathBuf {
        self.side_dir().0.join("server.log")
    }

    /// A process sandbox for a base backup: the installation is chosen once the backup's
    /// `PG_VERSION` has been read ([`PgCluster::use_installation`]).
    pub fn create_bare(rt: &ProcessRuntime) -> Result<PgCluster, ClusterError> {
        PgCluster::without_installation(Sandbox::process(rt)?)
    }

    /// A cluster in `sandbox` whose server (and so its version) is not known yet.
    fn without_installation(sandbox: Sandbox) -> Result<PgCluster, ClusterError> {
        check_socket_path(&sandbox.host_socket_dir())?;
        Ok(PgCluster {
            sandbox,
            installed: None,
            version: String::new(),
            psql_restrict: false,
        })
    }

    /// The version of the server in the container, as `postgres --version` said it.
    pub fn set_version(&mut self, version: &str) {
        self.version = version.to_owned();
        let (major, minor) = parse_major_minor(version);
        self.psql_restrict = rehearse_core::install::psql_has_restrict(major, minor);
    }

    pub fn use_installation(&mut self, installed: &Installed) {
        self.installed = Some(installed.clone());
        self.version.clone_from(&installed.version);
        self.psql_restrict = installed.psql_restrict;
    }

    /// Runs a server tool that reads the data dir (pg_controldata, pg_verifybackup) as the
    /// user the server runs as: the sandbox user, or the image's in the container. Paths in
    /// `args` are as the server sees them. `Ok((success, stdout, stderr))`.
    pub async fn run_server_tool(
        &self,
        rt: &ProcessRuntime,
        name: &str,
        args: Vec<std::ffi::OsString>,
    ) -> Result<(bool, String, String), String> {
        if self.in_container() {
            let out = self
                .sandbox
                .run(
                    Tool {
                        name: name.to_owned(),
                        host_program: PathBuf::from(name),
                        args,
                        untrusted: true,
                        capture_stdout: true,
                        watch: None,
                    },
                    None,
                )
                .await?;
            return Ok((
                out.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                out.stderr,
            ));
        }
        let installed = self
            .installed
            .as_ref()
            .ok_or("no PostgreSQL installation chosen")?;
        let out = rt
            .command(&installed.bin(name), self.sandbox.dir())
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("run {name}: {e}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// A container for a base backup: it waits for the worker to lay the data dir out and
    /// write `start.sh` (the server's command line) in the side dir, then runs it. Tools can
    /// run in it meanwhile (pg_controldata, pg_verifybackup).
    pub async fn start_container_waiting(
        &mut self,
        image: String,
        limits: &SandboxSpec,
        tags: Tags,
    ) -> Result<(), ClusterError> {
        let start = format!("{CONTAINER_DATA_DIR}/start.sh");
        let script =
            format!("{PG_PATH}; while [ ! -f {start} ]; do sleep 0.05; done; exec sh {start}");
        self.sandbox
            .start_container(ContainerSpec {
                image,
                user: SUPERUSER.to_owned(),
                cmd: vec!["sh".to_owned(), "-c".to_owned(), script],
                limits: limits.clone(),
                original_artifact: None,
                artifact: None,
                tags,
                tmpfs: Vec::new(),
                exec_prelude: Some(PG_PATH.to_owned()),
                template: None,
            })
            .await
            .map_err(ClusterError::Start)
    }

    /// Starts the server on a data dir already in place (a base backup) with `settings` on
    /// top of the sandbox's own, and waits until it accepts connections — after the recovery
    /// that precedes (for a standby: once it is consistent) — or exits. No deadline of its own:
    /// recovery takes as long as the WAL takes; the plan's timeout bounds it.
    pub async fn start_on_data(
        &mut self,
        rt: &ProcessRuntime,
        settings: &[(String, String)],
    ) -> Result<(), ClusterError> {
        if self.in_container() {
            self.release_container(settings)?;
        } else {
            let installed = self
                .installed
                .clone()
                .ok_or_else(|| ClusterError::Start("no local installation".into()))?;
            self.spawn(rt, &installed, settings)?;
        }
        let pidfile = self.data_dir().join("postmaster.pid");
        loop {
            if let Ok(text) = tokio::fs::read_to_string(&pidfile).await
                && text
                    .lines()
                    .nth(7)
                    .is_some_and(|l| matches!(l.trim(), "ready" | "standby"))
            {
                return Ok(());
            }
            if let Some(how) = self.sandbox.server_exited().await {
                return Err(ClusterError::Start(format!("postgres {how}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the server has exited, and how.
    pub async fn exited(&mut self) -> Option<String> {
        self.sandbox.server_exited().await
    }

    /// The server log's lines that say why recovery stopped or failed (FATAL, PANIC, invalid
    /// records, the target), last `n` of them.
    pub fn recovery_lines(&self, n: usize) -> Vec<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let keep: Vec<String> = log
            .lines()
            .filter(|l| {
                [
                    "FATAL",
                    "PANIC",
                    "invalid",
                    "incorrect",
                    "recovery stopping",
                    "unexpected",
                    "record with",
                    "contrecord",
                    "missing",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .map(|l| {
                l.split_once(": ")
                    .map_or(l, |(_, rest)| rest)
                    .trim()
                    .to_owned()
            })
            .collect();
        keep[keep.len().saturating_sub(n)..].to_vec()
    }

    /// The whole server log, for what recovery said.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Takes a spare copy of the template (or copies it), starts the server with `extra` on
    /// top of the sandbox's settings, waits until it accepts connections; then has the next
    /// spare copied in the background.
    pub async fn start(
        &mut self,
        rt: &ProcessRuntime,
        cache_dir: &Path,
        spares: Option<&Arc<Spares>>,
        extra: &[(String, String)],
    ) -> Result<(), ClusterError> {
        let installed = self
            .installed
            .clone()
            .ok_or_else(|| ClusterError::Start("no local installation".into()))?;
        let template = ensure_template(rt, &installed, cache_dir).await?;
        if !spares.is_some_and(|s| s.take_into(&template, &self.data_dir())) {
            copy_tree(&template, &self.data_dir())
                .await
                .map_err(|reason| ClusterError::Template {
                    dir: template.clone(),
                    reason,
                })?;
        }
        if let Some(spares) = spares {
            spares.refill(rt, &template, cache_dir);
        }
        self.spawn(rt, &installed, extra)?;
        self.wait_ready().await
    }

    /// Writes the waiting container's `start.sh`: postgres on the data dir with the sandbox's
    /// settings and `extra` on top, its log in the side dir.
    fn release_container(&self, extra: &[(String, String)]) -> Result<(), ClusterError> {
        let quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
        let mut line = format!("exec postgres -D {CONTAINER_DATA_DIR}/data");
        let mut args: Vec<String> = server_args(Path::new(CONTAINER_SOCKET_DIR), "0777")
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for (key, value) in extra {
            args.push("-c".into());
            args.push(format!("{key}={value}"));
        }
        for a in args {
            line.push(' ');
            line.push_str(&quote(&a));
        }
        line.push_str(&format!(" 2>>{CONTAINER_DATA_DIR}/server.log\n"));
        let (host, _) = self.side_dir();
        let tmp = host.join(".start.sh");
        std::fs::write(&tmp, line)
            .and_then(|()| std::fs::rename(&tmp, host.join("start.sh")))
            .map_err(|e| ClusterError::Start(format!("write start.sh: {e}")))
    }

    /// Starts `postgres` on the data dir with the sandbox's settings and `extra` on top, its
    /// log in `server.log`; the sandbox owns the process from here on.
    fn spawn(
        &mut self,
        rt: &ProcessRuntime,
        installed: &Installed,
        extra: &[(String, String)],
    ) -> Result<(), ClusterError> {
        let log_path = self.sandbox.dir().join("server.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| ClusterError::Start(format!("create server log: {e}")))?;
        rt.give(&log_path)?;
        let mut cmd = rt.command(&installed.bin("postgres"), self.sandbox.dir());
        cmd.arg("-D").arg(self.data_dir());
        cmd.args(server_args(&self.sandbox.tool_socket_dir(), "0700"));
        for (key, value) in extra {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        debug!(pid = child.id(), dir = %self.sandbox.dir().display(), "postgres started");
        // Immediate shutdown: the data is thrown away anyway.
        self.sandbox
            .set_server(child, Signal::SIGQUIT)
            .map_err(ClusterError::Start)
    }

    /// Starts the server in a container made from `image`: initdb in the container's data dir
    /// (disk-backed or tmpfs, per `[sandbox] data`), then postgres with the same settings as the process runtime, its socket in the
    /// bind-mounted dir. Ready when a connection through that socket answers.
    pub async fn start_container(
        &mut self,
        image: String,
        limits: &SandboxSpec,
        artifact: Option<(PathBuf, PathBuf)>,
        tags: Tags,
        template: Option<PathBuf>,
    ) -> Result<(), ClusterError> {
        let data = format!("{CONTAINER_DATA_DIR}/data");
        // A copy of the image's template when there is one (see `image_template_script`), else
        // initdb here.
        let init = if template.is_some() {
            format!("cp -a {CONTAINER_TEMPLATE} {data}")
        } else {
            format!(
                "initdb -D {data} {} >/tmp/initdb.log 2>&1 || {{ cat /tmp/initdb.log >&2; exit 1; }}",
                INITDB_ARGS.join(" ")
            )
        };
        // A data dir already there is a spare copy of the template the worker moved in.
        let init = format!("if [ -f {data}/PG_VERSION ]; then :; else {init}; fi");
        let script = format!("{PG_PATH}; {init}; exec postgres -D {data} \"$@\"");
        let mut cmd = vec!["sh".to_owned(), "-c".to_owned(), script, "sh".to_owned()];
        cmd.extend(
            server_args(Path::new(CONTAINER_SOCKET_DIR), "0777")
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        // Memory the server takes for itself stays within a quarter of the container's limit
        // (the later -c wins), so a small limit is not spent before the first row arrives.
        let quarter_mb = (limits.memory_bytes >> 20) / 4;
        for (key, most) in [("shared_buffers", 256), ("maintenance_work_mem", 512)] {
            cmd.push("-c".into());
            cmd.push(format!("{key}={}MB", quarter_mb.clamp(16, most)));
        }
        for (key, value) in profile_settings(limits) {
            cmd.push("-c".into());
            cmd.push(format!("{key}={value}"));
        }
        self.sandbox
            .start_container(ContainerSpec {
                image,
                user: SUPERUSER.to_owned(),
                cmd,
                limits: limits.clone(),
                original_artifact: artifact.as_ref().map(|(original, _)| original.clone()),
                artifact: artifact.map(|(_, staged)| staged),
                tags,
                tmpfs: Vec::new(),
                exec_prelude: Some(PG_PATH.to_owned()),
                template,
            })
            .await
            .map_err(ClusterError::Start)?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let client = loop {
            match super::inspect::connect(&self.socket_dir(), "postgres").await {
                Ok(client) => break client,
                Err(e) => {
                    if let Some(how) = self.sandbox.server_exited().await {
                        return Err(ClusterError::Start(format!("postgres {how}")));
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(ClusterError::NotReady(format!(
                            "not ready after {}s: {e}",
                            READY_TIMEOUT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let version = client
            .simple_query("SHOW server_version")
            .await
            .ok()
            .and_then(|m| {
                m.into_iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
            })
            .unwrap_or_default();
        self.version = version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let (major, minor) = parse_major_minor(&self.version);
        self.psql_restrict = rehearse_core::install::psql_has_restrict(major, minor);
        Ok(())
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
            if let Some(how) = self.sandbox.server_exited().await {
                return Err(ClusterError::Start(format!(
                    "postgres {how}: {}",
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
        let log =
            std::fs::read_to_string(self.sandbox.dir().join("server.log")).unwrap_or_default();
        crate::tail::last_lines(&log, 3)
    }

    /// Stops the server (immediate shutdown) or removes the container, and removes the dir.
    pub async fn stop(self) -> Result<(), String> {
        self.sandbox.stop().await
    }
}

fn check_socket_path(dir: &Path) -> Result<(), ClusterError> {
    let socket = dir.join(format!(".s.PGSQL.{PORT}"));
    if socket.as_os_str().len() > 100 {
        return Err(ClusterError::SocketPath(socket));
    }
    Ok(())
}

/// The server's flags: socket only, and the throwaway-restore settings.
fn server_args(socket_dir: &Path, socket_mode: &str) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        format!("unix_socket_directories={}", socket_dir.display()).into(),
        "-c".into(),
        format!("port={PORT}").into(),
    ];
    for (key, value) in SETTINGS {
        let value = if key == "unix_socket_permissions" {
            socket_mode
        } else {
            value
        };
        args.push("-c".into());
        args.push(format!("{key}={value}").into());
    }
    args
}

fn parse_major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    });
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// What makes an image's data dir template ([`DockerRuntime::image_template`]): initdb into
/// `/out/data` with the sandbox's settings.
pub fn image_template_script() -> String {
    format!(
        "{PG_PATH}; initdb -D /out/data {} >/tmp/initdb.log 2>&1 || {{ cat /tmp/initdb.log >&2; exit 1; }}",
        INITDB_ARGS.join(" ")
    )
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
    // Concurrent first attempts wait for one build (and then find it made).
    let _building = crate::sandbox::template_lock(&template).await;
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
    let published = publish_template(&data, &template, "PG_VERSION").await;
    let _ = build.remove();
    published.map_err(err)?;
    Ok(template)
}
