//! The client subcommands: submit, job get/cancel, jobs, cluster status and membership.

use std::process::ExitCode;

use anyhow::Context;
use rehearse_coordinator::client::Client;
use rehearse_core::jobs::JobState;
use rehearse_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    ClientArgs, ClientOutput, ClusterCommand, CouldNotVerify, JobCommand, JobsArgs, SubmitArgs,
    WorkersArgs,
};

pub(crate) fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    let client = Client::new(args.cluster.coordinators.clone())?;
    Ok(match args.cluster.tls.files() {
        Some(files) => client.with_tls(&files)?,
        None => client,
    })
}

/// A job as JSON: the plan and report as objects, not strings.
fn job_json(job: &pb::Job) -> Value {
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
fn print_job(job: &pb::Job) {
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
fn state_of(job: &pb::Job) -> Option<JobState> {
    JobState::parse(&job.state)
}

/// 0 passed, 1 failed (the backup is bad), 2 could not verify, 3 cancelled.
fn job_exit(job: &pb::Job) -> ExitCode {
    ExitCode::from(state_of(job).and_then(JobState::exit_code).unwrap_or(2))
}

fn is_final(job: &pb::Job) -> bool {
    state_of(job).is_some_and(JobState::is_final)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn submit(args: SubmitArgs) -> Result<ExitCode, CouldNotVerify> {
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

pub async fn job(cmd: JobCommand) -> Result<ExitCode, CouldNotVerify> {
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
            let job = loop {
                let job = c.get_job(&id).await?;
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

pub async fn jobs(args: JobsArgs) -> Result<ExitCode, CouldNotVerify> {
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

pub async fn cluster(cmd: ClusterCommand) -> Result<ExitCode, CouldNotVerify> {
    use pb::membership_request::Kind;
    let (args, change) = match &cmd {
        ClusterCommand::Status { client } => (client, None),
        ClusterCommand::AddLearner { id, addr, client } => {
            (client, Some((Kind::AddLearner, *id, addr.clone())))
        }
        ClusterCommand::Promote { id, client } => {
            (client, Some((Kind::Promote, *id, String::new())))
        }
        ClusterCommand::Remove { id, client } => (client, Some((Kind::Remove, *id, String::new()))),
        ClusterCommand::Probe { note, client: args } => {
            client(args)?.probe(note).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let mut c = client(args)?;
    if let Some((kind, id, addr)) = change {
        c.membership(kind, id, &addr).await?;
    }
    let s = c.status().await?;
    match args.output {
        ClientOutput::Json => print_json(&json!({
            "id": s.id,
            "leader": s.leader,
            "term": s.term,
            "commit": s.commit,
            "applied": s.applied,
            "cluster_version": s.cluster_version,
            "members": s.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "role": m.role, "region": m.region, "command_version": m.command_version})).collect::<Vec<_>>(),
        })),
        ClientOutput::Human => {
            println!(
                "leader {}  term {}  commit {}  command version {}",
                s.leader, s.term, s.commit, s.cluster_version
            );
            for m in &s.members {
                println!(
                    "  {} {} {} {}  reads v{}{}",
                    m.id,
                    m.addr,
                    m.role,
                    m.region,
                    m.command_version,
                    if m.id == s.leader { "  (leader)" } else { "" }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn drain(name: &str, args: &ClientArgs) -> Result<ExitCode, CouldNotVerify> {
    client(args)?.drain(name).await?;
    match args.output {
        ClientOutput::Json => print_json(&json!({ "name": name, "state": "draining" })),
        ClientOutput::Human => println!("{name} draining: no new jobs; running ones finish"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn workers(args: WorkersArgs) -> Result<ExitCode, CouldNotVerify> {
    let workers = client(&args.client)?.list_workers().await?;
    match args.client.output {
        ClientOutput::Json => print_json(&Value::Array(
            workers
                .iter()
                .map(|w| {
                    let labels: std::collections::BTreeMap<_, _> = w.labels.iter().collect();
                    json!({
                        "name": w.name,
                        "region": w.region,
                        "labels": labels,
                        "slots": w.slots,
                        "slots_in_use": w.used,
                        "state": w.state,
                        "last_heartbeat_ms": w.last_heartbeat_ms,
                        "running": w.running,
                        "healthy": w.healthy,
                        "recent_errors": w.recent_errors,
                        "last_error": (!w.last_error.is_empty()).then_some(&w.last_error),
                    })
                })
                .collect(),
        )),
        ClientOutput::Human => {
            for w in &workers {
                // A worker whose recent attempts all ended `error` says so, with the last reason:
                // it is where something needs fixing, not the backups it was given.
                let health = if w.healthy {
                    String::new()
                } else {
                    format!(
                        "  unhealthy: last {} attempts could not verify ({})",
                        w.recent_errors, w.last_error
                    )
                };
                println!(
                    "{}  {}  {}  {}/{} slots  last heartbeat {} ms ago{health}",
                    w.name,
                    w.region,
                    w.state,
                    w.used,
                    w.slots,
                    now_ms().saturating_sub(w.last_heartbeat_ms)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
