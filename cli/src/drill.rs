//! `rehearse drill …`: scheduled drills. `preview` needs no cluster; the rest talk to it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use rehearse_core::drill::{DrillSpec, DrillView, Run, RunOutcome};
use rehearse_core::schedule::{FireTime, Schedule};
use rehearse_proto::client::DrillRpc;
use rehearse_proto::v1 as pb;

use crate::{ClientArgs, ClientOutput, CouldNotVerify};

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Create a drill from a drill file, or update the one of that name; prints its next runs.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every drill: schedule, next run (UTC and local), last run and verdict, last passed run,
    /// status (ok, overdue, failing, paused, never_run).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One drill, with its next 5 fire times (daylight-saving shifts noted).
    Get {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every run of a drill: tick, start, jobs, verdict, RTO per phase, RPO, rows per table,
    /// artifact and blake3, the definition version it ran.
    History {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop firing (running runs finish).
    Pause {
        name: String,
        /// Why (shown by list and get).
        #[arg(long)]
        reason: String,
        /// Resume by itself at this time (RFC 3339, e.g. 2026-12-24T00:00:00Z).
        #[arg(long, value_parser = parse_time)]
        until: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Fire again from the next tick (the ticks missed while paused are not run).
    Resume {
        name: String,
        /// Also run it now.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One run now, recorded as manual; prints its job ids.
    Run {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop and remove a drill; its history stays until its `keep` runs out.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The next fire times of a drill file, no cluster needed: local time and UTC, with DST notes.
    Preview {
        file: PathBuf,
        /// How many.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// After this time (RFC 3339) [default: now].
        #[arg(long, value_parser = parse_time)]
        from: Option<u64>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "human")]
        output: ClientOutput,
    },
}

fn parse_time(text: &str) -> Result<u64, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not a time like 2026-12-24T00:00:00Z: {e}"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .map_err(|_| format!("{text:?} is before 1970"))
        })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads a drill file and the plan files it names (relative to it).
pub fn read_spec(file: &Path) -> anyhow::Result<DrillSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("read drill {}", file.display()))?;
    let dir = file.parent().map(Path::to_owned).unwrap_or_default();
    DrillSpec::from_toml(&text, |name| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))
    })
    .with_context(|| format!("drill {}", file.display()))
}

pub async fn run(cmd: DrillCommand) -> Result<ExitCode, CouldNotVerify> {
    let call = |name: &str| pb::DrillCall {
        name: name.to_owned(),
        ..pb::DrillCall::default()
    };
    let (which, call, args, detail) = match cmd {
        DrillCommand::Preview {
            file,
            count,
            from,
            output,
        } => return preview(&file, count, from.unwrap_or_else(now_ms), output),
        DrillCommand::Apply { file, client } => {
            let spec = read_spec(&file)?;
            let json = serde_json::to_string(&spec).context("encode drill")?;
            (
                DrillRpc::Apply,
                pb::DrillCall {
                    spec_json: json,
                    ..pb::DrillCall::default()
                },
                client,
                Detail::Next,
            )
        }
        DrillCommand::List { client } => (DrillRpc::List, call(""), client, Detail::List),
        DrillCommand::Get { name, client } => (DrillRpc::Get, call(&name), client, Detail::Next),
        DrillCommand::History { name, client } => (
            DrillRpc::Get,
            pb::DrillCall {
                history: true,
                ..call(&name)
            },
            client,
            Detail::History,
        ),
        DrillCommand::Pause {
            name,
            reason,
            until,
            client,
        } => (
            DrillRpc::Pause,
            pb::DrillCall {
                reason,
                until_ms: until,
                ..call(&name)
            },
            client,
            Detail::List,
        ),
        DrillCommand::Resume { name, now, client } => (
            DrillRpc::Resume,
            pb::DrillCall { now, ..call(&name) },
            client,
            Detail::List,
        ),
        DrillCommand::Run { name, client } => (DrillRpc::Run, call(&name), client, Detail::Jobs),
        DrillCommand::Delete { name, client } => {
            (DrillRpc::Delete, call(&name), client, Detail::List)
        }
    };
    let answer = crate::args::client(&args)?.drill(which, call).await?;
    let views: Vec<DrillView> =
        serde_json::from_str(&answer.json).context("the coordinator's drill answer")?;
    match args.output {
        ClientOutput::Json => {
            let value = if detail == Detail::Jobs {
                serde_json::json!({ "jobs": answer.jobs, "drills": views })
            } else {
                serde_json::to_value(&views).context("encode")?
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
        ClientOutput::Human => {
            if detail == Detail::Jobs {
                for job in &answer.jobs {
                    println!("{job}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            for v in &views {
                print_view(v, detail);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    List,
    Next,
    History,
    Jobs,
}

fn print_view(v: &DrillView, detail: Detail) {
    let status = v.status.map_or("deleted", |s| s.as_str());
    match &v.spec {
        Some(spec) => println!(
            "{}  {}  \"{}\" {}  (version {})",
            v.name, status, spec.schedule, spec.timezone, spec.version
        ),
        None => println!("{}  deleted (history kept)", v.name),
    }
    if let Some(p) = &v.paused {
        println!("  paused: {}", p.reason);
    }
    for (i, f) in v.next.iter().enumerate() {
        let label = if i == 0 { "next" } else { "    " };
        println!("  {label}  {}", fire(f));
    }
    if let Some(r) = &v.last_run {
        println!("  last run     {}", run_line(r));
    }
    if let Some(r) = &v.last_passed {
        println!(
            "  last passed  {}",
            stamp(r.finished_at_ms.unwrap_or(0) as i64)
        );
    }
    if detail == Detail::History {
        for r in &v.runs {
            println!("  {}", run_line(r));
            for res in &r.results {
                let phases: Vec<String> = res
                    .phases
                    .iter()
                    .map(|(p, ms)| format!("{p} {}", rehearse_core::report::human_ms(*ms)))
                    .collect();
                println!(
                    "    job {}  {}  {}  RTO {}  RPO {}",
                    res.job,
                    res.verdict.map_or("—", |v| v.as_str()),
                    res.artifact_url,
                    res.rto_ms
                        .map_or("—".into(), rehearse_core::report::human_ms),
                    res.rpo_ms
                        .map_or("—".into(), rehearse_core::report::human_ms),
                );
                if let Some(b3) = &res.blake3 {
                    println!("      blake3 {b3}");
                }
                if !phases.is_empty() {
                    println!("      phases {}", phases.join(" · "));
                }
                for t in &res.tables {
                    println!("      {} {} rows", t.name, t.rows);
                }
            }
        }
    }
}

fn fire(f: &FireTime) -> String {
    match &f.note {
        Some(note) => format!("{}  ({})  — {note}", f.local, f.utc),
        None => format!("{}  ({})", f.local, f.utc),
    }
}

/// RFC 3339 in UTC, seconds.
fn stamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn run_line(r: &Run) -> String {
    let kind = if r.manual { "manual" } else { "tick" };
    let mut line = format!(
        "{kind} {}  {}",
        stamp(r.tick_ms),
        r.outcome.as_str().to_uppercase()
    );
    if let Some((n, first, last)) = r.missed {
        line.push_str(&format!(
            " {n} tick(s) from {} to {}",
            stamp(first),
            stamp(last)
        ));
    }
    if !r.jobs.is_empty() && r.outcome == RunOutcome::Running {
        line.push_str(&format!("  jobs {}", r.jobs.join(", ")));
    }
    if let Some(reason) = &r.reason {
        line.push_str(&format!("  — {reason}"));
    }
    line.push_str(&format!("  (version {})", r.version));
    line
}

fn preview(
    file: &Path,
    count: usize,
    from_ms: u64,
    output: ClientOutput,
) -> Result<ExitCode, CouldNotVerify> {
    let spec = read_spec(file)?;
    let schedule = Schedule::new(&spec.schedule, &spec.timezone)?;
    let times = schedule.upcoming(from_ms as i64, count);
    match output {
        ClientOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "name": spec.name,
                "schedule": spec.schedule,
                "timezone": spec.timezone,
                "fires": times,
            }))
            .unwrap_or_default()
        ),
        ClientOutput::Human => {
            println!("{}  \"{}\" in {}", spec.name, spec.schedule, spec.timezone);
            for f in &times {
                println!("  {}", fire(f));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
