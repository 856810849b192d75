//! `rehearse-loadtest`: the coordinator at fleet scale. Thin: flags in, [`rehearse_loadtest::run`],
//! figures out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rehearse_loadtest::{Options, Scenario};

/// Starts a 3-node coordinator cluster on loopback (or targets one), registers simulated workers
/// that speak the real worker protocol, submits jobs and waits for every verdict.
///
/// Exit codes: 0 done with nothing lost or duplicated; 1 something was lost or duplicated;
/// 2 could not run (bad flags, no binary, cluster unreachable).
#[derive(Debug, Parser)]
#[command(name = "rehearse-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Jobs flow, nothing is disturbed: the throughput figure.
    Steady(Flags),
    /// The leader is killed (SIGKILL) a third of the way in and restarted 2 s later.
    LeaderKill(Flags),
    /// Every 250 ms a worker dies silently and a new one joins.
    WorkerChurn(Flags),
    /// Random faults for --duration while jobs flow at --rate: leader and follower kills
    /// (SIGKILL), pauses (SIGSTOP/SIGCONT), one node cut from the others (TCP links between the
    /// nodes), worker kills; then a history checker (lost, duplicated, stale verdicts, doubled
    /// drill ticks). Exit 1 when anything was lost or doubled.
    Nemesis(NemesisFlags),
}

#[derive(Debug, Args)]
struct NemesisFlags {
    /// How long jobs are submitted while faults are injected.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The seed of the fault choices [default: from the clock; printed in the output].
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SimVerdict {
    Passed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Debug, Args)]
struct Flags {
    /// Jobs to submit.
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Simulated workers.
    #[arg(long, default_value_t = 500)]
    workers: u64,
    /// Slots per worker.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Submits per second [default: as fast as acknowledgements allow].
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long a simulated worker takes before its verdict.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Target these coordinators instead of starting a cluster (HOST:PORT,…).
    #[arg(long, value_delimiter = ',')]
    coordinators: Option<Vec<String>>,
    /// The rehearse binary for the cluster this tool starts [default: next to this one].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Worker lease of the cluster this tool starts [default: 10s; worker-churn: 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Give up waiting for verdicts after this long without progress.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    patience: Duration,
    /// `--job-retention` for the cluster this tool starts (finished jobs leave its memory).
    #[arg(long, value_parser = humantime::parse_duration)]
    job_retention: Option<Duration>,
    /// The verdict the simulated workers return (`failed`: each job is a notification).
    #[arg(long, value_enum, default_value = "passed")]
    verdict: SimVerdict,
    /// `--notify FILE` for the cluster this tool starts (notification latency benchmarks).
    #[arg(long)]
    notify: Option<PathBuf>,
    #[arg(long, short, value_enum, default_value = "human")]
    output: Output,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut seed = 0;
    let (scenario, mut flags) = match cli.scenario {
        Command::Steady(f) => (Scenario::Steady, f),
        Command::LeaderKill(f) => (Scenario::LeaderKill, f),
        Command::WorkerChurn(f) => (Scenario::WorkerChurn, f),
        Command::Nemesis(n) => {
            seed = n.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            let mut f = n.flags;
            // Jobs flow at a rate for the duration: --jobs follows from them.
            let rate = *f.rate.get_or_insert(100.0);
            f.jobs = (rate * n.duration.as_secs_f64()).ceil().max(1.0) as u64;
            (Scenario::Nemesis, f)
        }
    };
    if scenario == Scenario::Nemesis && flags.workers == 500 {
        // The default fleet is sized for throughput; faults need fewer, busier workers.
        flags.workers = 20;
        flags.slots = flags.slots.max(4);
    }
    let bin = flags.bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("rehearse")))
            .unwrap_or_else(|| PathBuf::from("rehearse"))
    });
    let lease = flags.lease.unwrap_or(
        if matches!(scenario, Scenario::WorkerChurn | Scenario::Nemesis) {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        },
    );
    let opts = Options {
        jobs: flags.jobs,
        workers: flags.workers,
        slots: flags.slots,
        rate: flags.rate,
        clients: flags.clients,
        delay: flags.delay,
        coordinators: flags.coordinators,
        bin,
        lease,
        patience: flags.patience,
        job_retention: flags.job_retention,
        fail: flags.verdict == SimVerdict::Failed,
        notify: flags.notify,
        seed,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rehearse-loadtest: start async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(rehearse_loadtest::run(scenario, opts)) {
        Ok(figures) => {
            match flags.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&figures).unwrap_or_default()
                ),
                Output::Human => print!("{}", figures.human()),
            }
            if figures.lost == 0
                && figures.duplicated == 0
                && figures.stale_verdicts == 0
                && figures.doubled_ticks == 0
            {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("rehearse-loadtest: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
