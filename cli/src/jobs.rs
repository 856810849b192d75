//! `rehearse submit`, `rehearse job get|cancel`, `rehearse jobs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use rehearse_core::jobs::JobState;
use rehearse_proto::v1 as pb;
use serde_json::{Value, json};

use crate::CouldNotVerify;
use crate::args::{ClientArgs, ClientOutput, client, print_json};

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The plan file (TOML); validated before anything is written.
    pub(crate) plan: PathBuf,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
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
pub(crate) struct JobsArgs {
    /// Only jobs in this state (pending, assigned, running, passed, failed, error, cancelled).
    #[arg(long)]
    pub(crate) state: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// A job as JSON: the plan and report as objects, not strings.
pub(crate) fn job_json(job: &pb::Job) -> Value {
    let plan: Value = toml::from_str::<rehearse_core::plan::RawPlan>(&job.plan_toml)
        .ok()
        .and_then(|p| serde_json::to_value(p).ok())
        .unwrap_or(Value::Null);
    let report: Value = if job.report_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&job.report_json).unwrap_or(Value::Null)
    };
    let attempts: Vec<Value> = job
        .attempts
        .iter()
        .map(|a| json!({"worker": a.worker, "region": a.region, "token": a.token, "started_at_ms": a.started_at_ms, "ended_at_ms": a.ended_at_ms, "outcome": a.outcome, "reason": (!a.reason.is_empty()).then_some(&a.reason)}))
        .collect();
    json!({
        "id": job.id,
        "state": job.state,
        "attempts": attempts,
        "plan": plan,
        "report": report,
        "submitted_at_ms": job.submitted_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "phase": (!job.phase.is_empty()).then_some(&job.phase),
        "reason": (!job.reason.is_empty()).then_some(&job.reason),
    })
}

/// A job for people: state, phase or reason, attempts, and the verdict's reason.
pub(crate) fn print_job(job: &pb::Job) {
    let mut line = format!("{}  {}", job.id, job.state);
    if !job.phase.is_empty() {
        line.push_str(&format!(" ({})", job.phase));
    }
    println!("{line}");
    if !job.reason.is_empty() {
        println!("  {}", job.reason);
    }
    for (i, a) in job.attempts.iter().enumerate() {
        let outcome = if a.outcome.is_empty() {
            "running"
        } else {
            &a.outcome
        };
        println!(
            "  attempt {}: worker {} ({}), token {}, {}{}",
            i + 1,
            a.worker,
            a.region,
            a.token,
            outcome,
            if a.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", a.reason)
            }
        );
    }
    if let Ok(report) = serde_json::from_str::<rehearse_core::report::Report>(&job.report_json) {
        print!("{}", rehearse_core::render::human(&report));
    }
}

/// The wire's state name, typed; an unknown one (a newer coordinator) is treated as running.
pub(crate) fn state_of(job: &pb::Job) -> Option<JobState> {
    JobState::parse(&job.state)
}

/// 0 passed, 1 failed (the backup is bad), 2 could not verify, 3 cancelled.
pub(crate) fn job_exit(job: &pb::Job) -> ExitCode {
    ExitCode::from(state_of(job).and_then(JobState::exit_code).unwrap_or(2))
}

pub(crate) fn is_final(job: &pb::Job) -> bool {
    state_of(job).is_some_and(JobState::is_final)
}

pub(crate) async fn submit(args: SubmitArgs) -> Result<ExitCode, CouldNotVerify> {
    let text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("read plan {}", args.plan.display()))?;
    // Validate locally first: a bad plan gets the same one-line error as `verify`.
    rehearse_core::plan::Plan::from_toml(&text)
        .with_context(|| format!("plan {}", args.plan.display()))?;
    let id = client(&args.client)?.submit(&text).await?;
    match args.client.output {
        ClientOutput::Json => print_json(&json!({ "id": id })),
        ClientOutput::Human => println!("{id}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn job(cmd: JobCommand) -> Result<ExitCode, CouldNotVerify> {
    match cmd {
        JobCommand::Get { id, client: args } => {
            let job = client(&args)?.get_job(&id).await?;
            match args.output {
                ClientOutput::Json => print_json(&job_json(&job)),
                ClientOutput::Human => print_job(&job),
            }
        }
        JobCommand::Wait {
            id,
            timeout,
            client: args,
        } => {
            let mut c = client(&args)?;
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let shown = crate::progress::wanted().then(|| crate::progress::Waiting::start(&id));
            let job = loop {
                let job = c.get_job(&id).await?;
                if let Some(s) = &shown {
                    s.show(&job.state, &job.phase);
                }
                if is_final(&job) {
                    break job;
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return Err(anyhow::anyhow!(
                        "job {id} is still {} after {}",
                        job.state,
                        humantime::format_duration(timeout.unwrap_or_default())
                    )
                    .into());
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            };
            if let Some(s) = shown {
                s.finish();
            }
            match args.output {
                ClientOutput::Json => print_json(&job_json(&job)),
                ClientOutput::Human => print_job(&job),
            }
            return Ok(job_exit(&job));
        }
        JobCommand::Cancel { id, client: args } => {
            client(&args)?.cancel(&id).await?;
            if args.output == ClientOutput::Json {
                print_json(&json!({ "id": id, "state": "cancelled" }));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn jobs(args: JobsArgs) -> Result<ExitCode, CouldNotVerify> {
    let jobs = client(&args.client)?
        .list_jobs(args.state.as_deref())
        .await?;
    match args.client.output {
        ClientOutput::Json => print_json(&Value::Array(jobs.iter().map(job_json).collect())),
        ClientOutput::Human => {
            for j in &jobs {
                println!("{}  {}", j.id, j.state);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
