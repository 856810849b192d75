//! Arguments several subcommand groups share: how to reach the cluster, output formats, where
//! restores run, and the client connection they make.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use rehearse_coordinator::client::Client;
use rehearse_worker::VerifyOptions;
use rehearse_worker::runtime::RuntimeChoice;
use serde_json::Value;

/// Parses `k=v,k=v` (empty: no labels).
pub(crate) fn parse_labels(
    text: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?}: expected KEY=VALUE"))?;
        if k.trim().is_empty() {
            return Err(format!("label {part:?}: empty key"));
        }
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(labels)
}

/// mTLS: all three files, or none (plaintext). See docs/cluster.md for making them.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// CA certificate (PEM) that signed every coordinator's and client's certificate.
    #[arg(long, env = "REHEARSE_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub(crate) tls_ca: Option<PathBuf>,
    /// This node's or client's certificate (PEM); coordinators' must name DNS "rehearse".
    #[arg(long, env = "REHEARSE_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "REHEARSE_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub(crate) tls_key: Option<PathBuf>,
}

impl TlsArgs {
    pub(crate) fn files(&self) -> Option<rehearse_coordinator::tls::TlsFiles> {
        Some(rehearse_coordinator::tls::TlsFiles {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// Where the coordinator cluster is, and how to talk to it.
#[derive(Debug, Args)]
pub(crate) struct Coordinators {
    /// Coordinator addresses, HOST:PORT,…; any one will do.
    #[arg(
        long,
        env = "REHEARSE_COORDINATORS",
        value_delimiter = ',',
        required = true
    )]
    pub(crate) coordinators: Vec<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// The API token, for a cluster run with --auth required (`rehearse token create`).
    #[arg(long, env = "REHEARSE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

impl Coordinators {
    /// A client of these addresses, with this cluster's TLS and token.
    pub(crate) fn client_of(&self, addrs: Vec<String>) -> anyhow::Result<Client> {
        let mut client = Client::new(addrs)?;
        if let Some(files) = self.tls.files() {
            client = client.with_tls(&files)?;
        }
        if let Some(token) = &self.token {
            client = client.with_token(token)?;
        }
        Ok(client)
    }
}

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    pub(crate) cluster: Coordinators,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "human")]
    pub(crate) output: ClientOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClientOutput {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Human,
    Json,
    Junit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Runtime {
    /// docker when a Docker engine answers and the engine's image is there, else process.
    Auto,
    /// Local server binaries in a private temp dir; unprivileged and without network when run as root.
    Process,
    /// A disposable container per verification (bollard): no network, read-only root, limits.
    Docker,
}

impl Runtime {
    pub(crate) fn choice(self) -> RuntimeChoice {
        match self {
            Runtime::Auto => RuntimeChoice::Auto,
            Runtime::Process => RuntimeChoice::Process,
            Runtime::Docker => RuntimeChoice::Docker,
        }
    }
}

/// Where restores run, in which images, and the source profiles: shared by `verify`, `demo`
/// and `worker`.
#[derive(Debug, Args)]
pub(crate) struct RuntimeArgs {
    /// Where restores run.
    #[arg(long, value_enum, default_value = "auto", env = "REHEARSE_RUNTIME")]
    pub(crate) runtime: Runtime,
    /// Image for PostgreSQL plans (any image with the server and client tools, e.g. postgres:16).
    #[arg(
        long,
        default_value = "rehearse/postgres:local",
        env = "REHEARSE_IMAGE_POSTGRES"
    )]
    pub(crate) image_postgres: String,
    /// Image for MySQL/MariaDB plans (a MariaDB image, e.g. mariadb:11).
    #[arg(
        long,
        default_value = "rehearse/mariadb:local",
        env = "REHEARSE_IMAGE_MYSQL"
    )]
    pub(crate) image_mysql: String,
    /// Named source profiles (TOML: [s3.NAME] aws_endpoint = ..., aws_access_key_id = ...;
    /// [http.NAME] headers = { Authorization = "Bearer ..." }); a plan picks one with
    /// `[artifact] profile = "NAME"`.
    #[arg(long, env = "REHEARSE_SOURCES")]
    pub(crate) sources: Option<PathBuf>,
}

impl RuntimeArgs {
    pub(crate) fn images(&self) -> std::collections::HashMap<String, String> {
        std::collections::HashMap::from([
            ("postgres".to_owned(), self.image_postgres.clone()),
            ("mysql".to_owned(), self.image_mysql.clone()),
        ])
    }

    /// The `--sources` file's profiles (none without the flag).
    pub(crate) fn sources(&self) -> anyhow::Result<rehearse_worker::artifact::Sources> {
        let Some(path) = &self.sources else {
            return Ok(Default::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read source profiles {}", path.display()))?;
        rehearse_worker::artifact::Sources::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

#[derive(Debug, Args)]
pub(crate) struct SandboxArgs {
    #[command(flatten)]
    pub(crate) run: RuntimeArgs,
    /// The `rehearse.worker` label of this run's containers: a later run with the same label
    /// removes what a killed run left behind.
    #[arg(long, default_value = "local", env = "REHEARSE_CONTAINER_OWNER")]
    pub(crate) owner: String,
    /// Directory for sandbox dirs (one `rehearse-*` dir per verification, removed afterwards).
    #[arg(long, env = "REHEARSE_WORK_DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// Directory for caches kept between runs (initdb templates) [default: /var/cache/rehearse
    /// as root, else ~/.cache/rehearse].
    #[arg(long, env = "REHEARSE_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Unprivileged user the database server and psql run as, when rehearse runs as root.
    #[arg(long, default_value = "nobody", env = "REHEARSE_SANDBOX_USER")]
    pub(crate) sandbox_user: String,
    /// Parallel jobs for pg_restore and pg_amcheck [default: number of CPUs, at most 8].
    #[arg(long, env = "REHEARSE_JOBS")]
    pub(crate) jobs: Option<usize>,
}

impl SandboxArgs {
    pub(crate) fn options(&self) -> anyhow::Result<VerifyOptions> {
        let mut opts = VerifyOptions::default();
        if let Some(dir) = &self.work_dir {
            opts.work_root = dir.clone();
        }
        if let Some(dir) = &self.cache_dir {
            opts.cache_dir = dir.clone();
        }
        opts.sandbox_user = self.sandbox_user.clone();
        if let Some(jobs) = self.jobs {
            opts.jobs = jobs.max(1);
        }
        opts.runtime = self.run.runtime.choice();
        opts.worker_name = self.owner.clone();
        opts.sources = self.run.sources()?;
        // One verification per process (verify, demo): a spare template copy would be made only
        // to be dropped at exit, competing with the restore for the disk.
        opts.spare_templates = false;
        opts.images = self.run.images();
        Ok(opts)
    }
}

pub(crate) fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    args.cluster.client_of(args.cluster.coordinators.clone())
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
