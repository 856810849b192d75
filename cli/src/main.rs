//! `rehearse`: the one binary users run. Parses flags, sets up logging, calls the libraries.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
mod cluster_client;
mod demo_fleet;
mod drill;

use rehearse_core::plan::{Plan, RawArtifact, RawCheck, RawPlan, RawTargets};
use rehearse_core::render;
use rehearse_core::report::{Report, Verdict};
use rehearse_worker::runtime::RuntimeChoice;
use rehearse_worker::sample::{self, DumpFormat, SampleDatabase};
use rehearse_worker::{Verifier, VerifyError, VerifyOptions};
use tokio_util::sync::CancellationToken;

const EXIT_CODES: &str = "Exit codes:
  0    passed: the backup restored and every check and target held
  1    failed: the backup is bad — missing, truncated, corrupt or wrong-format artifact,
       checksum mismatch, restore error, failed check, missed RTO/RPO target, or timeout
  2    could not verify (verdict \"error\"): this says nothing about the backup — bad plan or
       flags, no server binaries, no Docker engine or image, sandbox could not start, a missing
       extension or locale, a sandbox resource limit (disk, memory) reached
  130  interrupted (Ctrl-C / SIGTERM); the sandbox was torn down";

/// Rehearse proves that backups restore: it restores a backup into a throwaway sandbox, checks the
/// data, times the recovery, and reports a verdict.
#[derive(Debug, Parser)]
#[command(name = "rehearse", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "warn", env = "REHEARSE_LOG")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify one backup now: restore it into a throwaway sandbox, run the checks, print a verdict.
    ///
    /// With --plan, everything comes from the plan file. Without it, give the artifact and the
    /// checks as flags: `rehearse verify /backups/shop.dump --check 'SELECT count(*) FROM orders'
    /// --expect '>= 1000' --rto 15m`.
    #[command(after_help = EXIT_CODES)]
    Verify(VerifyArgs),
    /// Make a sample database with real data, dump it with the real pg_dump, verify the dump and
    /// print the report: Rehearse at work in one command.
    #[command(after_help = EXIT_CODES)]
    Demo(DemoArgs),
    /// Run a coordinator: a member of the Raft-replicated cluster that holds jobs.
    Coordinator(CoordinatorArgs),
    /// Submit a plan as a job to the coordinator cluster; prints the job id.
    Submit(SubmitArgs),
    /// Look at or cancel one job.
    #[command(subcommand)]
    Job(JobCommand),
    /// List jobs.
    Jobs(JobsArgs),
    /// Cluster status and membership changes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a worker: join the fleet, take jobs, verify them, report verdicts. `rehearse worker
    /// drain NAME` stops new assignments to a worker and lets its running jobs finish.
    Worker(WorkerArgs),
    /// List workers: region, labels, slots in use, state (ready, draining, lost), last heartbeat.
    Workers(WorkersArgs),
    /// Scheduled drills: apply a drill file, list, get, history, pause, resume, run, delete,
    /// and preview a schedule without a cluster.
    #[command(subcommand)]
    Drill(drill::DrillCommand),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct WorkerArgs {
    #[command(subcommand)]
    action: Option<WorkerAction>,
    #[command(flatten)]
    cluster: Coordinators,
    /// This worker's name, unique in the fleet [default: the host name].
    #[arg(long, env = "REHEARSE_WORKER_NAME")]
    name: Option<String>,
    /// The region this worker runs in (plans pin jobs with [placement] region / not_region).
    #[arg(long, default_value = "default", env = "REHEARSE_REGION")]
    region: String,
    /// Labels plans can require: k=v,k=v.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    labels: std::collections::BTreeMap<String, String>,
    /// How many verifications run at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    #[command(flatten)]
    run: RuntimeArgs,
    /// The worker's own directory: sandboxes (reaped at start) and caches.
    #[arg(
        long,
        env = "REHEARSE_WORK_DIR",
        default_value = "/var/lib/rehearse/worker"
    )]
    work_dir: PathBuf,
    /// Unprivileged user the database server and psql run as, when rehearse runs as root.
    #[arg(long, default_value = "nobody", env = "REHEARSE_SANDBOX_USER")]
    sandbox_user: String,
}

#[derive(Debug, Subcommand)]
enum WorkerAction {
    /// Stop new assignments to a worker; running jobs finish.
    Drain {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
struct WorkersArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Parses `k=v,k=v` (empty: no labels).
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
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

#[derive(Debug, Args)]
struct CoordinatorArgs {
    /// This node's id (a positive number, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Address to listen on for clients and peers, HOST:PORT.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Address others reach this node at [default: --listen].
    #[arg(long)]
    advertise: Option<String>,
    /// Initial members, this node included: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long, value_parser = rehearse_coordinator::parse_peers)]
    peers: std::collections::BTreeMap<u64, String>,
    /// Directory for the raft log and state (redb); refused if it belongs to another cluster or id.
    #[arg(long)]
    data_dir: PathBuf,
    /// Region label of this node.
    #[arg(long, default_value = "default")]
    region: String,
    /// Cluster name, recorded in the data dir.
    #[arg(long, default_value = "rehearse", env = "REHEARSE_CLUSTER")]
    cluster: String,
    /// Start empty and wait to be added with `rehearse cluster add-learner` (new or replacement nodes).
    #[arg(long)]
    join: bool,
    /// Log entries kept before they are folded into a snapshot.
    #[arg(long, default_value_t = 10_000)]
    compact_after: u64,
    /// Disaster recovery only: restart this node as the sole voter, keeping its data, when a
    /// majority is lost for good (see docs/cluster.md). Never restart the old members afterwards.
    #[arg(long)]
    force_new_cluster: bool,
    /// A worker silent this long is declared lost and its jobs are re-queued (at least 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease: std::time::Duration,
    /// Finished jobs leave the coordinator's memory after this long; their summaries stay in the
    /// history (`job get` says where a job went).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    job_retention: std::time::Duration,
    /// The command version this node reads and writes. For upgrade tests only: a lower one acts
    /// as an older release, 3 adds a test-only command kind.
    #[arg(long, hide = true, default_value_t = rehearse_core::codec::CURRENT)]
    command_version: u32,
    #[command(flatten)]
    tls: TlsArgs,
}

/// mTLS: all three files, or none (plaintext). See docs/cluster.md for making them.
#[derive(Debug, Args)]
struct TlsArgs {
    /// CA certificate (PEM) that signed every coordinator's and client's certificate.
    #[arg(long, env = "REHEARSE_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This node's or client's certificate (PEM); coordinators' must name DNS "rehearse".
    #[arg(long, env = "REHEARSE_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "REHEARSE_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> Option<rehearse_coordinator::tls::TlsFiles> {
        Some(rehearse_coordinator::tls::TlsFiles {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// Where the coordinator cluster is, and how to talk to it.
#[derive(Debug, Args)]
struct Coordinators {
    /// Coordinator addresses, HOST:PORT,…; any one will do.
    #[arg(
        long,
        env = "REHEARSE_COORDINATORS",
        value_delimiter = ',',
        required = true
    )]
    coordinators: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Debug, Args)]
struct ClientArgs {
    #[command(flatten)]
    cluster: Coordinators,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "human")]
    output: ClientOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientOutput {
    Human,
    Json,
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// The plan file (TOML); validated before anything is written.
    plan: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Show one job: state, attempts, plan, report.
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job that has not finished; a running sandbox is stopped.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Block until the job has a verdict (or ends), then print it like `job get`. Exit code 0
    /// passed, 1 failed (the backup is bad), 2 could not verify (state "error": every attempt
    /// the plan allows ended in error or lost its worker) or still not done after --timeout,
    /// 3 cancelled.
    Wait {
        id: String,
        /// Give up after this long (e.g. 30s, 10m); without it, wait for as long as it takes.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
struct JobsArgs {
    /// Only jobs in this state (pending, assigned, running, passed, failed, error, cancelled).
    #[arg(long)]
    state: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Leader, term, commit index and members.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a node (started with --join) as a non-voting learner; it catches up from a snapshot.
    AddLearner {
        id: u64,
        addr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a caught-up learner a voter.
    Promote {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a member (voter or learner).
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upgrade tests: commit a no-op of the test-only newest command kind (version 3); refused
    /// unless every member reads it.
    #[command(hide = true)]
    Probe {
        #[arg(long, default_value = "probe")]
        note: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
    Junit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    /// docker when a Docker engine answers and the engine's image is there, else process.
    Auto,
    /// Local server binaries in a private temp dir; unprivileged and without network when run as root.
    Process,
    /// A disposable container per verification (bollard): no network, read-only root, limits.
    Docker,
}

impl Runtime {
    fn choice(self) -> RuntimeChoice {
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
struct RuntimeArgs {
    /// Where restores run.
    #[arg(long, value_enum, default_value = "auto", env = "REHEARSE_RUNTIME")]
    runtime: Runtime,
    /// Image for PostgreSQL plans (any image with the server and client tools, e.g. postgres:16).
    #[arg(
        long,
        default_value = "rehearse/postgres:local",
        env = "REHEARSE_IMAGE_POSTGRES"
    )]
    image_postgres: String,
    /// Image for MySQL/MariaDB plans (a MariaDB image, e.g. mariadb:11).
    #[arg(
        long,
        default_value = "rehearse/mariadb:local",
        env = "REHEARSE_IMAGE_MYSQL"
    )]
    image_mysql: String,
    /// Named source profiles (TOML: [s3.NAME] aws_endpoint = ..., aws_access_key_id = ...;
    /// [http.NAME] headers = { Authorization = "Bearer ..." }); a plan picks one with
    /// `[artifact] profile = "NAME"`.
    #[arg(long, env = "REHEARSE_SOURCES")]
    sources: Option<PathBuf>,
}

impl RuntimeArgs {
    fn images(&self) -> std::collections::HashMap<String, String> {
        std::collections::HashMap::from([
            ("postgres".to_owned(), self.image_postgres.clone()),
            ("mysql".to_owned(), self.image_mysql.clone()),
        ])
    }

    /// The `--sources` file's profiles (none without the flag).
    fn sources(&self) -> anyhow::Result<rehearse_worker::artifact::Sources> {
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
struct SandboxArgs {
    #[command(flatten)]
    run: RuntimeArgs,
    /// The `rehearse.worker` label of this run's containers: a later run with the same label
    /// removes what a killed run left behind.
    #[arg(long, default_value = "local", env = "REHEARSE_CONTAINER_OWNER")]
    owner: String,
    /// Directory for sandbox dirs (one `rehearse-*` dir per verification, removed afterwards).
    #[arg(long, env = "REHEARSE_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Directory for caches kept between runs (initdb templates) [default: /var/cache/rehearse
    /// as root, else ~/.cache/rehearse].
    #[arg(long, env = "REHEARSE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Unprivileged user the database server and psql run as, when rehearse runs as root.
    #[arg(long, default_value = "nobody", env = "REHEARSE_SANDBOX_USER")]
    sandbox_user: String,
    /// Parallel jobs for pg_restore and pg_amcheck [default: number of CPUs, at most 8].
    #[arg(long, env = "REHEARSE_JOBS")]
    jobs: Option<usize>,
}

impl SandboxArgs {
    fn options(&self) -> anyhow::Result<VerifyOptions> {
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
        opts.images = self.run.images();
        Ok(opts)
    }
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The backup to verify (a path or file:// URL), when no --plan is given.
    #[arg(
        value_name = "ARTIFACT",
        required_unless_present = "plan",
        conflicts_with = "plan"
    )]
    artifact: Option<String>,
    /// Plan file (TOML) saying what to verify and what "good" means.
    #[arg(long, value_name = "PLAN.toml")]
    plan: Option<PathBuf>,
    /// Output format of the report on stdout.
    #[arg(long, short, value_enum, default_value = "human")]
    output: Output,
    /// Engine of the artifact (quick form).
    #[arg(long, default_value = "postgres", conflicts_with = "plan")]
    engine: String,
    /// Expected blake3 of the artifact, 64 hex digits (quick form); a mismatch fails the checksum phase.
    #[arg(long, conflicts_with = "plan")]
    blake3: Option<String>,
    /// SQL whose first value is checked (quick form, repeatable); pairs with --expect in order.
    #[arg(long = "check", value_name = "SQL", conflicts_with = "plan")]
    checks: Vec<String>,
    /// Expectation for the --check at the same position: `>= 1000`, `= 0`, `= 'ok'`.
    #[arg(long = "expect", value_name = "EXPR", conflicts_with = "plan")]
    expects: Vec<String>,
    /// RTO target (quick form), e.g. 15m: exceeded fails the verdict.
    #[arg(long, conflicts_with = "plan")]
    rto: Option<String>,
    /// RPO target (quick form), e.g. 26h; needs --freshness.
    #[arg(long, conflicts_with = "plan")]
    rpo: Option<String>,
    /// Query returning the newest data timestamp, for RPO (quick form).
    #[arg(long, value_name = "SQL", conflicts_with = "plan")]
    freshness: Option<String>,
    /// Limit for the whole verification (quick form) [default: 3h].
    #[arg(long, conflicts_with = "plan")]
    timeout: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Number of orders in the sample database (customers: a tenth of it).
    #[arg(long, default_value_t = 20_000)]
    orders: u32,
    /// Output format of the report on stdout.
    #[arg(long, short, value_enum, default_value = "human")]
    output: Output,
    /// Keep the sample dump and its plan in this directory instead of a temp dir.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Then run the dump as a drill firing every 10 s on an in-process fleet (three coordinators
    /// in two regions, a worker in each), until this many runs passed (0: skip; the demo script
    /// uses 3).
    #[arg(long, default_value_t = 0)]
    fleet: usize,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// Exit code 2, with a one-line reason.
struct CouldNotVerify(anyhow::Error);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rehearse: start async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    runtime.spawn(shutdown_signal(cancel.clone()));
    let result = runtime.block_on(async {
        match cli.command {
            Command::Verify(args) => verify(args, &cancel).await,
            Command::Demo(args) => demo(args, &cancel).await,
            Command::Coordinator(args) => coordinator(args, cancel.clone()).await,
            Command::Submit(args) => cluster_client::submit(args).await,
            Command::Job(cmd) => cluster_client::job(cmd).await,
            Command::Jobs(args) => cluster_client::jobs(args).await,
            Command::Cluster(cmd) => cluster_client::cluster(cmd).await,
            Command::Worker(args) => worker(args, cancel.clone()).await,
            Command::Workers(args) => cluster_client::workers(args).await,
            Command::Drill(cmd) => drill::run(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(CouldNotVerify(e)) => {
            if matches!(
                e.downcast_ref::<VerifyError>(),
                Some(VerifyError::Interrupted)
            ) {
                eprintln!("rehearse: interrupted; sandbox torn down");
                return ExitCode::from(130);
            }
            eprintln!("rehearse: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// Cancels on Ctrl-C or SIGTERM: the verification stops, tears its sandbox down, and exits 130.
async fn shutdown_signal(cancel: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
    cancel.cancel();
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

impl<E: Into<anyhow::Error>> From<E> for CouldNotVerify {
    fn from(e: E) -> Self {
        CouldNotVerify(e.into())
    }
}

async fn verify(args: VerifyArgs, cancel: &CancellationToken) -> Result<ExitCode, CouldNotVerify> {
    let plan = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read plan {}", path.display()))?;
            Plan::from_toml(&text).with_context(|| format!("plan {}", path.display()))?
        }
        None => quick_plan(&args)?,
    };
    let verifier = Verifier::start(args.sandbox.options()?).await?;
    let report = verifier.verify(&plan, cancel).await?;
    print_report(&report, args.output)
}

fn quick_plan(args: &VerifyArgs) -> anyhow::Result<Plan> {
    let artifact = args
        .artifact
        .clone()
        .context("give an ARTIFACT or --plan")?;
    if args.checks.len() != args.expects.len() {
        anyhow::bail!(
            "each --check needs an --expect (got {} --check and {} --expect)",
            args.checks.len(),
            args.expects.len()
        );
    }
    let checks = args
        .checks
        .iter()
        .zip(&args.expects)
        .enumerate()
        .map(|(i, (sql, expect))| RawCheck {
            name: format!("check {}", i + 1),
            sql: sql.clone(),
            expect: expect.clone(),
            database: None,
        })
        .collect();
    let has_targets = args.rto.is_some() || args.rpo.is_some() || args.freshness.is_some();
    let raw = RawPlan {
        name: None,
        timeout: args.timeout.clone(),
        artifact: RawArtifact {
            url: artifact,
            engine: args.engine.clone(),
            blake3: args.blake3.clone(),
            ..RawArtifact::default()
        },
        targets: has_targets.then(|| RawTargets {
            rto: args.rto.clone(),
            rpo: args.rpo.clone(),
            freshness: args.freshness.clone(),
        }),
        checks,
        builtin: None,
        placement: None,
        max_attempts: None,
        sandbox: None,
        files: None,
    };
    Ok(Plan::from_raw(raw)?)
}

fn print_report(report: &Report, output: Output) -> Result<ExitCode, CouldNotVerify> {
    let text = match output {
        Output::Human => render::human(report),
        Output::Json => serde_json::to_string_pretty(report).context("write JSON report")? + "\n",
        Output::Junit => render::junit(report),
    };
    print!("{text}");
    if report.verdict == Verdict::Error
        && let Some(f) = &report.failure
    {
        // Said once more on stderr, in one line, for scripts that only keep that.
        eprintln!(
            "rehearse: could not verify (in {}): {}",
            f.phase,
            f.reason.replace('\n', " ")
        );
    }
    Ok(ExitCode::from(report.verdict.exit_code()))
}

async fn demo(args: DemoArgs, cancel: &CancellationToken) -> Result<ExitCode, CouldNotVerify> {
    let verifier = Verifier::start(args.sandbox.options()?).await?;
    let (dir, _temp) = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rehearse-demo-")
                .tempdir()
                .context("create demo dir")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let dump = dir.join("shop.dump");
    let human = args.output == Output::Human;
    if human {
        eprintln!(
            "rehearse demo: creating a sample shop database with {} orders…",
            args.orders
        );
    }
    let made = tokio::select! {
        made = make_sample(&verifier, args.orders, &dump) => made,
        () = cancel.cancelled() => return Err(VerifyError::Interrupted.into()),
    };
    made.map_err(|e| anyhow::anyhow!("demo: {e}"))?;
    let digest = rehearse_worker::artifact::checksum::hash_file(&dump)
        .context("hash the sample dump")?
        .0;
    let plan = sample::demo_plan(&dump, args.orders, Some(digest.to_hex().to_string()));
    let plan_text = plan.to_toml();
    std::fs::write(dir.join("plan.toml"), &plan_text).context("write demo plan")?;
    if human {
        eprintln!(
            "rehearse demo: dumped it with pg_dump to {}; verifying with this plan:\n",
            dump.display()
        );
        eprintln!(
            "{}",
            plan_text
                .trim_end()
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        eprintln!();
    }
    let report = verifier.verify(&plan, cancel).await?;
    let code = print_report(&report, args.output)?;
    if args.fleet > 0 && report.verdict == Verdict::Passed {
        // Its own dir, open to the sandbox user (the workers' sandboxes live inside it).
        let fleet_dir = tempfile::Builder::new()
            .prefix("rehearse-demo-fleet-")
            .tempdir()
            .context("create the demo fleet's dir")?;
        std::fs::set_permissions(
            fleet_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .context("open the demo fleet's dir")?;
        let plan_file = fleet_dir.path().join("shop.toml");
        std::fs::write(&plan_file, &plan_text).context("write the drill's plan")?;
        demo_fleet::run(
            fleet_dir.path(),
            &plan_file,
            args.sandbox.run.runtime.choice(),
            args.fleet,
            cancel,
        )
        .await?;
    }
    if human && args.keep.is_some() {
        eprintln!(
            "\nrehearse demo: kept {} — run it again with: rehearse verify --plan {}",
            dump.display(),
            dir.join("plan.toml").display()
        );
    }
    Ok(code)
}

async fn coordinator(
    args: CoordinatorArgs,
    shutdown: CancellationToken,
) -> Result<ExitCode, CouldNotVerify> {
    let config = rehearse_coordinator::CoordinatorConfig {
        id: args.id,
        listen: args.listen,
        advertise: args.advertise.unwrap_or_else(|| args.listen.to_string()),
        peers: args.peers,
        data_dir: args.data_dir,
        region: args.region,
        cluster: args.cluster,
        join: args.join,
        compact_after: args.compact_after,
        force_new_cluster: args.force_new_cluster,
        tls: args.tls.files(),
        lease: args.lease,
        command_version: args.command_version,
        job_retention: args.job_retention,
    };
    rehearse_coordinator::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn worker(args: WorkerArgs, shutdown: CancellationToken) -> Result<ExitCode, CouldNotVerify> {
    if let Some(WorkerAction::Drain { name, client }) = args.action {
        return cluster_client::drain(&name, &client).await;
    }
    let name = match args.name {
        Some(n) => n,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .context("no --name given and the host name is unknown")?,
    };
    if args.slots == 0 {
        return Err(anyhow::anyhow!("--slots must be at least 1").into());
    }
    let config = rehearse_worker::agent::AgentConfig {
        coordinators: args.cluster.coordinators,
        tls: args.cluster.tls.files(),
        name,
        region: args.region,
        labels: args.labels,
        slots: args.slots,
        work_dir: args.work_dir,
        sandbox_user: args.sandbox_user,
        runtime: args.run.runtime.choice(),
        images: args.run.images(),
        sources: args.run.sources()?,
    };
    rehearse_worker::agent::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn make_sample(
    verifier: &Verifier,
    orders: u32,
    dump: &std::path::Path,
) -> Result<(), String> {
    let db = SampleDatabase::create(verifier, orders).await?;
    let dumped = db.dump(DumpFormat::Custom, dump).await;
    let stopped = db.stop().await;
    dumped.and(stopped)
}
