//! The client subcommands: submit, job get/cancel, jobs, cluster status and membership.

use std::process::ExitCode;

use anyhow::Context;
use rehearse_coordinator::client::Client;
use rehearse_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    ClientArgs, ClientOutput, ClusterCommand, CouldNotVerify, JobCommand, JobsArgs, SubmitArgs,
};

fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    let client = Client::new(args.coordinators.clone())?;
    Ok(match args.tls.files() {
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
        .map(|a| json!({"worker": a.worker, "region": a.region, "token": a.token, "started_at_ms": a.started_at_ms, "ended_at_ms": a.ended_at_ms, "outcome": a.outcome}))
        .collect();
    json!({
        "id": job.id,
        "state": job.state,
        "attempts": attempts,
        "plan": plan,
        "report": report,
        "submitted_at_ms": job.submitted_at_ms,
        "updated_at_ms": job.updated_at_ms,
    })
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
                ClientOutput::Human => {
                    println!("{}  {}  attempts {}", job.id, job.state, job.attempts.len())
                }
            }
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
            "members": s.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "role": m.role, "region": m.region})).collect::<Vec<_>>(),
        })),
        ClientOutput::Human => {
            println!("leader {}  term {}  commit {}", s.leader, s.term, s.commit);
            for m in &s.members {
                println!(
                    "  {} {} {} {}{}",
                    m.id,
                    m.addr,
                    m.role,
                    m.region,
                    if m.id == s.leader { "  (leader)" } else { "" }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
