//! The sandbox MariaDB server: discovery, the template datadir, start in either runtime, the
//! client as a tool, the restore, and stop.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rehearse_core::limits::SandboxSpec;

use crate::engines::stream::{Compression, Feed, LineFilter, start_feed};
use crate::runtime::{
    CONTAINER_DATA_DIR, CONTAINER_SOCKET_DIR, CONTAINER_TEMPLATE, ContainerSpec, DockerRuntime,
    Sandbox, Tags, Tool,
};
use crate::sandbox::{ProcessRuntime, Spares, make_shared_dir};

/// The database dumps are restored into (a dump with `USE other` goes there instead).
pub const TARGET_DB: &str = "restored";
/// Schemas of the server itself, never counted or checked as restored data.
pub const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];
const SOCKET: &str = "mysqld.sock";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Server flags for a disposable restore; the first four are the sandbox's boundary.
const SETTINGS: [&str; 15] = [
    "--skip-networking",
    "--local-infile=0",
    "--skip-name-resolve",
    "--skip-log-bin",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-flush-method=fsync",
    "--innodb-use-native-aio=0",
    "--innodb-buffer-pool-size=256M",
    "--max-allowed-packet=1G",
    "--default-time-zone=+00:00",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--skip-performance-schema",
    "--max-connections=32",
];
/// `--force`: a container without network cannot resolve its own host name, which only matters
/// for host-based grants (and `--skip-name-resolve` makes the server ignore those anyway).
const INSTALL_ARGS: [&str; 5] = [
    "--no-defaults",
    "--auth-root-authentication-method=normal",
    "--skip-test-db",
    "--skip-name-resolve",
    "--force",
];

/// MariaDB's programs on this host (process runtime).
#[derive(Debug, Clone)]
pub struct MariaInstall {
    pub server: PathBuf,
    pub install_db: PathBuf,
    pub client: PathBuf,
    pub check: PathBuf,
    /// mariadb-dump (used to make the sample; not needed to verify).
    pub dump: Option<PathBuf>,
    /// mariadb-backup (physical backups: `--prepare`; not needed for dumps).
    pub backup: Option<PathBuf>,
    /// e.g. "10.11.19"
    pub version: String,
}

/// Finds mariadbd, mariadb-install-db, the client and mariadb-check (or their mysql names).
pub fn discover() -> Result<MariaInstall, String> {
    let find = |names: &[&str]| -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(
            ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from),
        );
        names
            .iter()
            .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
            .find(|p| p.is_file())
    };
    let missing = |what: &str| {
        format!(
            "no MariaDB {what} found (install mariadb-server and mariadb-client, or use the docker runtime)"
        )
    };
    let server = find(&["mariadbd", "mysqld"]).ok_or_else(|| missing("server (mariadbd)"))?;
    let install_db = find(&["mariadb-install-db", "mysql_install_db"])
        .ok_or_else(|| missing("mariadb-install-db"))?;
    let client = find(&["mariadb", "mysql"]).ok_or_else(|| missing("client (mariadb)"))?;
    let check = find(&["mariadb-check", "mysqlcheck"]).ok_or_else(|| missing("mariadb-check"))?;
    let dump = find(&["mariadb-dump", "mysqldump"]);
    let backup = find(&["mariadb-backup", "mariabackup"]);
    let out = std::process::Command::new(&server)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {} --version: {e}", server.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|w| w.split('-').next().unwrap_or(w).to_owned())
        .ok_or_else(|| format!("cannot read the version of {}: {text}", server.display()))?;
    Ok(MariaInstall {
        server,
        install_db,
        client,
        check,
        dump,
        backup,
        version,
    })
}

/// A throwaway MariaDB server in a sandbox.
#[derive(Debug)]
pub struct MariaServer {
    sandbox: Sandbox,
    install: Option<MariaInstall>,
    /// The server's version, e.g. "10.11.19-MariaDB-0+deb12u1".
    pub version: String,
    /// Flags after [`SETTINGS`] for the plan's `[sandbox]` (see [`MariaServer::set_profile`]).
    extra: Vec<String>,
}

/// MariaDB's own defaults for what [`SETTINGS`] changes for speed (the `faithful` profile).
const DURABLE: [&str; 3] = [
    "--innodb-flush-log-at-trx-commit=1",
    "--innodb-doublewrite=1",
    "--innodb-buffer-pool-size=128M",
];

impl MariaServer {
    pub fn create(rt: &ProcessRuntime, install: &MariaInstall) -> Result<MariaServer, String> {
        let sandbox = Sandbox::process(rt).map_err(|e| e.to_string())?;
        check_socket_path(&sandbox.host_socket_dir())?;
        Ok(MariaServer {
            sandbox,
            install: Some(install.clone()),
            version: install.version.clone(),
            extra: Vec::new(),
        })
    }

    pub fn create_docker(
        rt: &ProcessRuntime,
        docker: &DockerRuntime,
    ) -> Result<MariaServer, String> {
        let sandbox = Sandbox::docker(rt, docker).map_err(|e| e.to_string())?;
        check_socket_path(&sandbox.host_socket_dir())?;
        Ok(MariaServer {
            sandbox,
            install: None,
            version: String::new(),
            extra: Vec::new(),
        })
    }

    /// The plan's `[sandbox]`: the durable defaults under the `faithful` profile, then its own
    /// `settings` (checked against `rehearse_core::limits::allowed_setting` when the plan was
    /// read); later flags win in mariadbd.
    pub fn set_profile(&mut self, spec: &SandboxSpec) {
        self.extra.clear();
        if spec.profile == rehearse_core::limits::Profile::Faithful {
            self.extra.extend(DURABLE.iter().map(|f| (*f).to_owned()));
        }
        self.extra.extend(
            spec.settings
                .iter()
                .map(|(k, v)| format!("--{}={v}", k.replace('_', "-"))),
        );
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// A client tool connected to the server as root through its socket.
    pub fn tool(&self, which: Which) -> Tool {
        let (name, host) = match which {
            Which::Client => ("mariadb", self.install.as_ref().map(|i| i.client.clone())),
            Which::Check => (
                "mariadb-check",
                self.install.as_ref().map(|i| i.check.clone()),
            ),
            Which::Dump => (
                "mariadb-dump",
                self.install.as_ref().and_then(|i| i.dump.clone()),
            ),
        };
        let mut args: Vec<OsString> = vec![
            // Must come first: no option file of the host or image is read.
            "--no-defaults".into(),
            format!(
                "--socket={}",
                self.sandbox.tool_socket_dir().join(SOCKET).display()
            )
            .into(),
            "--user=root".into(),
        ];
        if which == Which::Client {
            args.extend(["--sandbox".into(), "--max-allowed-packet=1G".into()]);
        }
        Tool {
            name: name.to_owned(),
            host_program: host.unwrap_or_else(|| PathBuf::from(name)),
            args,
            untrusted: true,
            capture_stdout: false,
            watch: None,
        }
    }

    /// Runs SQL through the client with `--xml` output; `Err` is the client's own words.
    pub async fn query_xml(&self, database: Option<&str>, sql: &str) -> Result<String, String> {
        let mut tool = self.tool(Which::Client);
        tool.capture_stdout = true;
        tool.args.push("--xml".into());
        tool.args.push("--execute".into());
        tool.args.push(sql.into());
        if let Some(db) = database {
            tool.args.push(db.into());
        }
        let out = self.sandbox.run(tool, None).await?;
        if !out.success() {
            return Err(crate::tail::last_lines(&out.stderr, 2));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the server from a copy of the cached template (process runtime): a spare made
    /// ahead when there is one, and the next spare copied in the background.
    pub async fn start(
        &mut self,
        rt: &ProcessRuntime,
        cache_dir: &Path,
        spares: Option<&Arc<Spares>>,
    ) -> Result<(), String> {
        let install = self
            .install
            .clone()
            .ok_or("no local MariaDB installation")?;
        let template = ensure_template(rt, &install, cache_dir).await?;
        let dir = self.sandbox.dir().to_owned();
        let data = dir.join("data");
        if !spares.is_some_and(|s| s.take_into(&template, &data)) {
            crate::sandbox::copy_tree(&template, &data).await?;
        }
        if let Some(spares) = spares {
            spares.refill(rt, &template, cache_dir);
        }
        self.start_on_data(rt).await
    }

    /// The server's socket on the host.
    pub fn socket_path(&self) -> PathBuf {
        self.sandbox.host_socket_dir().join(SOCKET)
    }

    fn in_container(&self) -> bool {
        self.sandbox.runtime() == "docker"
    }

    /// The server's data dir on the host: the sandbox's `data/`, or in a container `data/data`
    /// (the bind-mounted [`CONTAINER_DATA_DIR`] holds it).
    pub fn data_dir(&self) -> PathBuf {
        match self.in_container() {
            true => self.sandbox.dir().join("data").join("data"),
            false => self.sandbox.dir().join("data"),
        }
    }

    /// A host path beside the data dir, and the same path as the server's tools see it.
    pub fn beside_data(&self, name: &str) -> (PathBuf, PathBuf) {
        match self.in_container() {
            true => (
                self.sandbox.dir().join("data").join(name),
                Path::new(CONTAINER_DATA_DIR).join(name),
            ),
            false => {
                let p = self.sandbox.dir().join(name);
                (p.clone(), p)
            }
        }
    }

    /// Runs a server-side tool (mariadb-backup, mbstream) as the server's user: the sandbox
    /// user, or the image's in the container; stdin from `feed`.
    pub async fn run_server_tool(
        &self,
        name: &str,
        host_program: PathBuf,
        args: Vec<OsString>,
        feed: Option<crate::runtime::FeedRx>,
    ) -> Result<crate::runtime::ToolOutput, String> {
        self.sandbox
            .run(
                Tool {
                    name: name.to_owned(),
                    host_program,
                    args,
                    untrusted: true,
                    capture_stdout: false,
                    watch: None,
                },
                feed,
            )
            .await
    }

    /// A container for a physical backup: it waits for the worker to prepare the data dir and
    /// write `start.sh`, then runs it; tools (mbstream, mariadb-backup) run in it meanwhile.
    pub async fn start_container_waiting(
        &mut self,
        image: String,
        limits: &SandboxSpec,
        tags: Tags,
    ) -> Result<(), String> {
        let start = format!("{CONTAINER_DATA_DIR}/start.sh");
        let script = format!("while [ ! -f {start} ]; do sleep 0.05; done; exec sh {start}");
        self.sandbox
            .start_container(ContainerSpec {
                image,
                user: "mysql".to_owned(),
                cmd: vec!["sh".to_owned(), "-c".to_owned(), script],
                limits: limits.clone(),
                original_artifact: None,
                artifact: None,
                tags,
                tmpfs: vec!["/run/mysqld".to_owned()],
                exec_prelude: None,
                template: None,
            })
            .await
    }

    /// Starts mariadbd on the prepared data dir: in the process runtime as a local process, in
    /// the waiting container by writing its `start.sh`; then waits until it answers.
    pub async fn start_prepared(&mut self, rt: &ProcessRuntime) -> Result<(), String> {
        if !self.in_container() {
            return self.start_on_data(rt).await;
        }
        let data = format!("{CONTAINER_DATA_DIR}/data");
        let files = format!("{CONTAINER_DATA_DIR}/files");
        let line = format!(
            "mkdir -p {files} && exec mariadbd --no-defaults --datadir={data} --socket={CONTAINER_SOCKET_DIR}/{SOCKET} \
             --pid-file={CONTAINER_DATA_DIR}/mysqld.pid --secure-file-priv={files} --tmpdir=/tmp {} \
             --log-error={CONTAINER_DATA_DIR}/server.log\n",
            SETTINGS
                .iter()
                .map(|s| (*s).to_owned())
                .chain(self.extra.iter().map(|e| shell_quote(e)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let host = self.sandbox.dir().join("data");
        let tmp = host.join(".start.sh");
        std::fs::write(&tmp, line)
            .and_then(|()| std::fs::rename(&tmp, host.join("start.sh")))
            .map_err(|e| format!("write start.sh: {e}"))?;
        self.wait_ready().await
    }

    /// Starts the server on the data dir already in the sandbox's `data/` (a template copy, or
    /// a prepared physical backup) and waits until it answers.
    pub async fn start_on_data(&mut self, rt: &ProcessRuntime) -> Result<(), String> {
        let install = self
            .install
            .clone()
            .ok_or("no local MariaDB installation")?;
        let dir = self.sandbox.dir().to_owned();
        let data = dir.join("data");
        for sub in ["files", "tmp"] {
            std::fs::create_dir(dir.join(sub)).map_err(|e| format!("create {sub} dir: {e}"))?;
            rt.give(&dir.join(sub)).map_err(|e| e.to_string())?;
        }
        let log = dir.join("server.log");
        let mut cmd = rt.command(&install.server, &dir);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join(SOCKET).display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!(
                "--secure-file-priv={}",
                dir.join("files").display()
            ))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .args(SETTINGS)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| format!("start mariadbd: {e}"))?;
        // The data is thrown away: no clean shutdown needed.
        self.sandbox.set_server(child, Signal::SIGKILL)?;
        self.wait_ready().await
    }

    /// Starts the server in a container: mariadb-install-db on the tmpfs, then mariadbd.
    pub async fn start_container(
        &mut self,
        image: String,
        limits: &SandboxSpec,
        artifact: Option<(PathBuf, PathBuf)>,
        tags: Tags,
        template: Option<PathBuf>,
    ) -> Result<(), String> {
        let data = format!("{CONTAINER_DATA_DIR}/data");
        let files = format!("{CONTAINER_DATA_DIR}/files");
        // A copy of the image's template when there is one, else mariadb-install-db here.
        let init = if template.is_some() {
            format!("cp -a {CONTAINER_TEMPLATE} {data}")
        } else {
            format!(
                "mariadb-install-db {} --datadir={data} >/tmp/install.log 2>&1 \
                 || {{ cat /tmp/install.log >&2; exit 1; }}",
                INSTALL_ARGS.join(" ")
            )
        };
        // A data dir already there is a spare copy of the template the worker moved in.
        let init = format!("if [ -d {data}/mysql ]; then :; else {init}; fi");
        let script = format!(
            "mkdir -p {files} && {init}; \
             exec mariadbd --no-defaults --datadir={data} --socket={CONTAINER_SOCKET_DIR}/{SOCKET} \
             --pid-file={CONTAINER_DATA_DIR}/mysqld.pid --secure-file-priv={files} --tmpdir=/tmp \"$@\""
        );
        let mut cmd = vec!["sh".to_owned(), "-c".to_owned(), script, "sh".to_owned()];
        cmd.extend(SETTINGS.map(String::from));
        cmd.extend(self.extra.iter().cloned());
        self.sandbox
            .start_container(ContainerSpec {
                image,
                user: "mysql".to_owned(),
                cmd,
                limits: limits.clone(),
                original_artifact: artifact.as_ref().map(|(original, _)| original.clone()),
                artifact: artifact.map(|(_, staged)| staged),
                tags,
                tmpfs: vec!["/run/mysqld".to_owned()],
                exec_prelude: None,
                template,
            })
            .await?;
        self.wait_ready().await
    }

    /// Waits for the socket, then for an answer to `SELECT VERSION()`.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let socket = self.sandbox.host_socket_dir().join(SOCKET);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no socket yet");
        loop {
            if socket.exists() {
                match self.query_xml(None, "SELECT VERSION()").await {
                    Ok(xml) => {
                        if let Ok(Some(Some(v))) = rehearse_core::mysqlxml::first_value(&xml) {
                            self.version = v;
                        }
                        return Ok(());
                    }
                    Err(e) => last = e,
                }
            }
            if let Some(how) = self.sandbox.server_exited().await {
                return Err(format!("mariadbd {how}{}", self.log_tail()));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "mariadbd not ready after {}s: {last}{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.sandbox.dir().join("server.log")).unwrap_or_default();
        let tail = crate::tail::last_lines(&log, 3);
        if tail.is_empty() {
            tail
        } else {
            format!(": {tail}")
        }
    }

    pub async fn stop(self) -> Result<(), String> {
        self.sandbox.stop().await
    }
}

/// Which client program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Client,
    Check,
    Dump,
}

fn check_socket_path(dir: &Path) -> Result<(), String> {
    let socket = dir.join(SOCKET);
    if socket.as_os_str().len() > 100 {
        return Err(format!(
            "socket path {} is too long for a unix socket; use a shorter --work-dir",
            socket.display()
        ));
    }
    Ok(())
}

/// The outcome of a successful restore.
#[derive(Debug, Clone)]
pub struct Restored {
    pub database: String,
    pub notes: Vec<String>,
}

/// Restores a (possibly compressed) SQL dump; `Err` is the failure reason for phase `restore`.
pub async fn restore(
    server: &MariaServer,
    path: PathBuf,
    compression: Compression,
) -> Result<Restored, String> {
    server
        .query_xml(None, &format!("CREATE DATABASE {TARGET_DB}"))
        .await
        .map_err(|e| format!("create database {TARGET_DB}: {e}"))?;
    let mut tool = server.tool(Which::Client);
    tool.args.push(TARGET_DB.into());
    // MySQL 8 dumps carry collations, GTID state and 8.0-only clauses MariaDB does not take:
    // mapped on the way in, every mapping listed in the notes (never a false `failed`).
    let (rx, feeder) = start_feed(Feed {
        path,
        compression,
        filter: Some(rehearse_core::mysqldump::Mysql8Filter::new()),
    });
    let out = server.sandbox().run(tool, Some(rx)).await;
    let mapped = feeder
        .await
        .ok()
        .flatten()
        .map(|f| f.notes())
        .unwrap_or_default();
    let out = out?;
    if !out.success() {
        return Err(out.failure("mariadb"));
    }
    // Where did the tables go? A dump made with --databases says USE and creates its own.
    let xml = server
        .query_xml(
            None,
            &format!(
                "SELECT s.schema_name, COUNT(t.table_name) FROM information_schema.schemata s \
                 LEFT JOIN information_schema.tables t ON t.table_schema = s.schema_name \
                 WHERE s.schema_name NOT IN ({}) GROUP BY s.schema_name ORDER BY 2 DESC, 1",
                system_list()
            ),
        )
        .await
        .map_err(|e| format!("list restored databases: {e}"))?;
    let schemas: Vec<(String, u64)> = rehearse_core::mysqlxml::rows(&xml)?
        .into_iter()
        .filter_map(|r| {
            let name = r.first().cloned().flatten()?;
            let tables = r.get(1).cloned().flatten()?.parse().ok()?;
            Some((name, tables))
        })
        .collect();
    let ours = schemas
        .iter()
        .find(|(n, _)| n == TARGET_DB)
        .map_or(0, |s| s.1);
    let mut notes = vec!["restored with the mariadb client in --sandbox mode".to_owned()];
    notes.extend(mapped);
    let database = match schemas.iter().find(|(n, t)| n != TARGET_DB && *t > 0) {
        Some((name, _)) if ours == 0 => {
            notes.push(format!(
                "the dump created its own database {name:?}; checks run there"
            ));
            name.clone()
        }
        _ => TARGET_DB.to_owned(),
    };
    let others: Vec<&str> = schemas
        .iter()
        .filter(|(n, t)| *n != database && n != TARGET_DB && *t > 0)
        .map(|(n, _)| n.as_str())
        .collect();
    if !others.is_empty() {
        notes.push(format!("the dump also restored: {}", others.join(", ")));
    }
    Ok(Restored { database, notes })
}

/// `'mysql', 'information_schema', …` for SQL.
/// What makes an image's data dir template (`DockerRuntime::image_template`).
pub fn image_template_script() -> String {
    format!(
        "mariadb-install-db {} --datadir=/out/data >/tmp/install.log 2>&1 || {{ cat /tmp/install.log >&2; exit 1; }}",
        INSTALL_ARGS.join(" ")
    )
}

pub fn system_list() -> String {
    SYSTEM_SCHEMAS
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cached template datadir for this installation, made once with mariadb-install-db.
async fn ensure_template(
    rt: &ProcessRuntime,
    install: &MariaInstall,
    cache_dir: &Path,
) -> Result<PathBuf, String> {
    let uid = rt.user().map_or(u32::MAX, |u| u.uid);
    let key = blake3::hash(
        format!(
            "{}|{}|{:?}|{uid}",
            install.version,
            install.server.display(),
            INSTALL_ARGS
        )
        .as_bytes(),
    );
    let template = cache_dir.join(format!("mariadb-template-{}", &key.to_hex()[..16]));
    if template.join("mysql").is_dir() {
        return Ok(template);
    }
    let _building = crate::sandbox::template_lock(&template).await;
    if template.join("mysql").is_dir() {
        return Ok(template);
    }
    make_shared_dir(cache_dir).map_err(|e| format!("cache dir {}: {e}", cache_dir.display()))?;
    let mut build = rt.create_dir().map_err(|e| e.to_string())?;
    let data = build.path().join("data");
    let out = rt
        .command(&install.install_db, build.path())
        .args(INSTALL_ARGS)
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", build.path().display()))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("run mariadb-install-db: {e}"))?;
    if !out.status.success() {
        let _ = build.remove();
        return Err(format!(
            "mariadb-install-db failed ({}): {}",
            out.status,
            crate::tail::last_lines(
                &format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                3
            )
        ));
    }
    let published = crate::sandbox::publish_template(&data, &template, "mysql").await;
    let _ = build.remove();
    published?;
    Ok(template)
}

impl LineFilter for rehearse_core::mysqldump::Mysql8Filter {
    fn filter(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.feed(line, out);
        Ok(())
    }
}

/// `'…'` for a shell line.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}
