//! `rehearse exercise …`: DR exercises. `run` needs no cluster (every step on this machine);
//! the rest talk to it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use rehearse_core::drill::JobResult;
use rehearse_core::exercise::{
    Exercise, ExerciseReport, ExerciseSpec, JobEnd, StepJob, StepKind, StepState, exercise_id,
};
use rehearse_core::plan::Plan;
use rehearse_core::report::Verdict;
use rehearse_proto::client::ExerciseRpc;
use rehearse_proto::v1 as pb;
use rehearse_worker::{Verifier, VerifyError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::args::SandboxArgs;
use crate::{ClientArgs, ClientOutput, CouldNotVerify};

/// Who approves a gate in `exercise run` (recorded in the report).
const LOCAL_APPROVER: &str = "exercise run (local, approved automatically)";

#[derive(Debug, Subcommand)]
pub enum ExerciseCommand {
    /// Start an exercise from an exercise file on the cluster; prints its id.
    Start {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every exercise (running and recently ended): id, name, state, RTO, RPO.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One exercise's report: steps, critical path, RTO and RPO against the targets, deviations.
    /// With --wait, waits until it ends and exits as `verify` does (0 passed, 1 failed, 2 error).
    Get {
        id: String,
        /// Wait for the end (at most this long, e.g. 2h).
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "24h")]
        wait: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a gate that waits (recorded with who and how long it waited).
    Approve {
        id: String,
        /// The gate's step name.
        #[arg(long)]
        step: String,
        /// Who approves.
        #[arg(long)]
        by: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop an exercise: running jobs cancelled (their sandboxes stopped), the rest aborted.
    Abort {
        id: String,
        /// Who aborts.
        #[arg(long)]
        by: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run an exercise on this machine, no cluster needed: every step here, in dependency
    /// order (independent steps at once), gates approved automatically. Exit codes as `verify`'s.
    Run {
        file: PathBuf,
        /// Output format of the report.
        #[arg(long, short, value_enum, default_value = "human")]
        output: ClientOutput,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
}

/// Reads an exercise file and the plan files its steps name (relative to it).
pub fn read_spec(file: &Path) -> anyhow::Result<ExerciseSpec> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read exercise {}", file.display()))?;
    let dir = file.parent().map(Path::to_owned).unwrap_or_default();
    ExerciseSpec::from_toml(&text, |name| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))
    })
    .with_context(|| format!("exercise {}", file.display()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(
    cmd: ExerciseCommand,
    cancel: &CancellationToken,
) -> Result<ExitCode, CouldNotVerify> {
    let call = |id: &str| pb::ExerciseCall {
        id: id.to_owned(),
        ..pb::ExerciseCall::default()
    };
    let (which, call, args) = match cmd {
        ExerciseCommand::Run {
            file,
            output,
            sandbox,
        } => return run_local(&file, output, &sandbox, cancel).await,
        ExerciseCommand::Start { file, client } => {
            let spec = read_spec(&file)?;
            let json = serde_json::to_string(&spec).context("encode exercise")?;
            let call = pb::ExerciseCall {
                spec_json: json,
                ..pb::ExerciseCall::default()
            };
            (ExerciseRpc::Start, call, client)
        }
        ExerciseCommand::List { client } => {
            let answer = crate::args::client(&client)?
                .exercise(ExerciseRpc::List, call(""))
                .await?;
            let reports: Vec<ExerciseReport> =
                serde_json::from_str(&answer.json).context("the coordinator's answer")?;
            print_list(&reports, client.output);
            return Ok(ExitCode::SUCCESS);
        }
        ExerciseCommand::Get { id, wait, client } => {
            if let Some(wait) = wait {
                let limit = humantime::parse_duration(&wait)
                    .with_context(|| format!("--wait {wait:?} is not a duration"))?;
                return wait_for(&id, limit, &client).await;
            }
            (ExerciseRpc::Get, call(&id), client)
        }
        ExerciseCommand::Approve {
            id,
            step,
            by,
            client,
        } => (
            ExerciseRpc::Approve,
            pb::ExerciseCall {
                step,
                by,
                ..call(&id)
            },
            client,
        ),
        ExerciseCommand::Abort {
            id,
            by,
            reason,
            client,
        } => (
            ExerciseRpc::Abort,
            pb::ExerciseCall {
                by,
                reason,
                ..call(&id)
            },
            client,
        ),
    };
    let answer = crate::args::client(&args)?.exercise(which, call).await?;
    let report: ExerciseReport =
        serde_json::from_str(&answer.json).context("the coordinator's answer")?;
    print_report(&report, args.output);
    Ok(ExitCode::SUCCESS)
}

/// Polls until the exercise ends; exits with its verdict.
async fn wait_for(
    id: &str,
    limit: Duration,
    args: &ClientArgs,
) -> Result<ExitCode, CouldNotVerify> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut client = crate::args::client(args)?;
    loop {
        let answer = client
            .exercise(
                ExerciseRpc::Get,
                pb::ExerciseCall {
                    id: id.to_owned(),
                    ..pb::ExerciseCall::default()
                },
            )
            .await?;
        let report: ExerciseReport =
            serde_json::from_str(&answer.json).context("the coordinator's answer")?;
        if report.state.is_final() {
            print_report(&report, args.output);
            return Ok(ExitCode::from(report.exit_code()));
        }
        if tokio::time::Instant::now() >= deadline {
            print_report(&report, args.output);
            return Err(anyhow::anyhow!(
                "exercise {id} still runs after {}",
                humantime::format_duration(limit)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_report(report: &ExerciseReport, output: ClientOutput) {
    match output {
        ClientOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        ),
        ClientOutput::Human => print!("{}", report.human()),
    }
}

fn print_list(reports: &[ExerciseReport], output: ClientOutput) {
    if output == ClientOutput::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(reports).unwrap_or_default()
        );
        return;
    }
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), rehearse_core::report::human_ms);
    println!(
        "{:<40} {:<28} {:<8} {:>10} {:>10}",
        "ID", "NAME", "STATE", "RTO", "RPO"
    );
    for r in reports {
        println!(
            "{:<40} {:<28} {:<8} {:>10} {:>10}",
            r.id,
            r.name,
            r.state.as_str(),
            ms(r.rto_ms),
            ms(r.rpo_ms)
        );
    }
}

/// `exercise run`: the same state machine as the cluster's, with this machine's verifier as
/// the only worker.
async fn run_local(
    file: &Path,
    output: ClientOutput,
    sandbox: &SandboxArgs,
    cancel: &CancellationToken,
) -> Result<ExitCode, CouldNotVerify> {
    let spec = read_spec(file)?;
    let verifier = Arc::new(Verifier::start(sandbox.options()?).await?);
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "local".to_owned());
    let start = now_ms();
    let mut exercise = Exercise::new(exercise_id(&spec.name, start), spec, start);
    let mut running: JoinSet<(String, Result<rehearse_core::report::Report, VerifyError>)> =
        JoinSet::new();
    let mut jobs = exercise.advance(start);
    loop {
        // Gates: approved at once by whoever runs this.
        let gates: Vec<String> = exercise
            .steps
            .iter()
            .zip(&exercise.spec.steps)
            .filter(|(s, spec)| spec.kind == StepKind::Gate && s.state == StepState::Running)
            .map(|(s, _)| s.name.clone())
            .collect();
        for gate in gates {
            jobs.extend(
                exercise
                    .approve(&gate, LOCAL_APPROVER, now_ms())
                    .map_err(anyhow::Error::msg)?,
            );
        }
        for StepJob { id, plan, .. } in jobs.drain(..) {
            let verifier = verifier.clone();
            let cancel = cancel.clone();
            running.spawn(async move {
                let result = match Plan::from_raw(plan) {
                    Ok(plan) => verifier.verify(&plan, &cancel).await,
                    Err(e) => Err(VerifyError::NoServer(format!("plan: {e}"))),
                };
                (id, result)
            });
        }
        if exercise.state.is_final() {
            break;
        }
        let Some(done) = running.join_next().await else {
            if exercise.steps.iter().any(|s| s.state == StepState::Running) {
                return Err(
                    anyhow::anyhow!("exercise stalled with steps running and no job").into(),
                );
            }
            break;
        };
        let (id, result) = done.context("a step's task failed")?;
        let end = match result {
            Ok(report) => JobEnd {
                state: match report.verdict {
                    Verdict::Passed => "passed",
                    Verdict::Failed => "failed",
                    Verdict::Error => "error",
                }
                .to_owned(),
                worker: Some(host.clone()),
                result: JobResult::from_report(&id, Some(&report), None),
                at_ms: now_ms(),
            },
            Err(VerifyError::Interrupted) => {
                // The other steps saw the same cancel: let each tear its sandbox down.
                while running.join_next().await.is_some() {}
                return Err(VerifyError::Interrupted.into());
            }
            Err(e) => JobEnd {
                state: "error".to_owned(),
                worker: Some(host.clone()),
                result: JobResult::from_report(&id, None, Some(&e.to_string())),
                at_ms: now_ms(),
            },
        };
        jobs = exercise.job_ended(&id, end);
    }
    let report = exercise.report();
    print_report(&report, output);
    if let Some(reason) = report.reason.as_deref()
        && report.verdict == Some(Verdict::Error)
    {
        eprintln!(
            "rehearse: could not run the exercise: {}",
            reason.replace('\n', " ")
        );
    }
    Ok(ExitCode::from(report.exit_code()))
}
