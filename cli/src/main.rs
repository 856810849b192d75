//! The `rehearse` binary: argument parsing and dispatch. Each subcommand group lives in its own
//! module; this file only wires them together, sets up logging and the runtime, and maps errors
//! to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rehearse_worker::VerifyError;
use tokio_util::sync::CancellationToken;

mod args;
mod cluster;
mod coordinator;
mod demo;
mod demo_fleet;
mod drill;
mod evidence;
mod exercise;
mod jobs;
mod progress;
mod telemetry;
mod token;
mod verify;
mod worker;

pub(crate) use args::{ClientArgs, ClientOutput};

pub(crate) const EXIT_CODES: &str = "Exit codes:
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
    /// Log lines as text, or as one JSON object per line for log shippers.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "REHEARSE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector (e.g. http://localhost:4317): one trace
    /// per job across coordinator and worker, a span per phase.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify one backup now: restore it into a throwaway sandbox, run the checks, print a verdict.
    ///
    /// With --plan, everything comes from the plan file. Without it, give the artifact and the
    /// checks as flags: `rehearse verify /backups/shop.dump --check 'SELECT count(*) FROM orders'
    /// --expect '>= 1000' --rto 15m`.
    #[command(after_help = EXIT_CODES)]
    Verify(verify::VerifyArgs),
    /// Make a sample database with real data, dump it with the real pg_dump, verify the dump and
    /// print the report: Rehearse at work in one command.
    #[command(after_help = EXIT_CODES)]
    Demo(demo::DemoArgs),
    /// Run a coordinator: a member of the Raft-replicated cluster that holds jobs.
    Coordinator(coordinator::CoordinatorArgs),
    /// Submit a plan as a job to the coordinator cluster; prints the job id.
    Submit(jobs::SubmitArgs),
    /// Look at or cancel one job.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// List jobs.
    Jobs(jobs::JobsArgs),
    /// Cluster status and membership changes.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Run a worker: join the fleet, take jobs, verify them, report verdicts. `rehearse worker
    /// drain NAME` stops new assignments to a worker and lets its running jobs finish.
    Worker(worker::WorkerArgs),
    /// List workers: region, labels, slots in use, state (ready, draining, lost), last heartbeat.
    Workers(worker::WorkersArgs),
    /// Scheduled drills: apply a drill file, list, get, history, pause, resume, run, delete,
    /// and preview a schedule without a cluster.
    #[command(subcommand)]
    Drill(drill::DrillCommand),
    /// DR exercises: start an application group's recovery on the cluster, get, list, approve
    /// a gate, abort; or run one on this machine without a cluster.
    #[command(subcommand)]
    Exercise(exercise::ExerciseCommand),
    /// Evidence for auditors: export the verdicts of a period as a signed HTML report and JSON,
    /// or verify an export's hash chain and signatures offline.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// API tokens for a cluster run with --auth required: create (the secret is shown once),
    /// list, revoke; `secret` makes one for --admin-token-file.
    #[command(subcommand)]
    Token(token::TokenCommand),
}

/// Exit code 2, with a one-line reason.
pub(crate) struct CouldNotVerify(pub(crate) anyhow::Error);

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let service = match cli.command {
        Command::Coordinator(_) => "rehearse-coordinator",
        Command::Worker(_) => "rehearse-worker",
        _ => "rehearse",
    };
    let telemetry = {
        let _in_runtime = runtime.enter();
        match telemetry::init(
            &cli.log,
            cli.log_format,
            cli.otlp_endpoint.as_deref(),
            service,
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("rehearse: {}", one_line(&e));
                return ExitCode::from(2);
            }
        }
    };
    let cancel = CancellationToken::new();
    runtime.spawn(shutdown_signal(cancel.clone()));
    let result = runtime.block_on(async {
        match cli.command {
            Command::Verify(args) => verify::verify(args, &cancel).await,
            Command::Demo(args) => demo::demo(args, &cancel).await,
            Command::Coordinator(args) => coordinator::coordinator(args, cancel.clone()).await,
            Command::Submit(args) => jobs::submit(args).await,
            Command::Job(cmd) => jobs::job(cmd).await,
            Command::Jobs(args) => jobs::jobs(args).await,
            Command::Cluster(cmd) => cluster::cluster(cmd).await,
            Command::Worker(args) => worker::worker(args, cancel.clone()).await,
            Command::Workers(args) => worker::workers(args).await,
            Command::Drill(cmd) => drill::run(cmd).await,
            Command::Exercise(cmd) => exercise::run(cmd, &cancel).await,
            Command::Evidence(cmd) => evidence::run(cmd).await,
            Command::Token(cmd) => token::run(cmd).await,
        }
    });
    telemetry.shutdown();
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
