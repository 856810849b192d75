//! `rehearse demo --fleet`: after the single verification, the same dump as a scheduled drill on
//! an in-process fleet — three coordinators (two regions), a worker in each region — ticking
//! every 10 seconds until a few runs have passed, each run printed as it lands; then the same
//! dump as a DR exercise recovered in region `us`, its gate approved by the demo.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rehearse_coordinator::CoordinatorConfig;
use rehearse_core::drill::{DrillSpec, DrillView, RunOutcome};
use rehearse_core::exercise::{ExerciseReport, StepKind, StepState};
use rehearse_proto::client::{Client, DrillRpc, ExerciseRpc};
use rehearse_proto::v1 as pb;
use rehearse_worker::agent::AgentConfig;
use rehearse_worker::runtime::RuntimeChoice;
use tokio_util::sync::CancellationToken;

/// Loopback addresses for the coordinators (a port taken and released: the demo's own machine).
fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    l.local_addr().context("local address")
}

/// Runs the fleet part of the demo in `dir` for the plan in `plan_file`, until `runs` runs of
/// the drill passed (or `cancel`); the evidence export goes to `evidence_dir` (`--keep`), or
/// into `dir`, which goes away with the demo.
pub async fn run(
    dir: &Path,
    plan_file: &Path,
    runtime: RuntimeChoice,
    runs: usize,
    evidence_dir: Option<std::path::PathBuf>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let stop = cancel.child_token();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        peers.insert(id, free_addr()?.to_string());
    }
    let regions = ["eu", "us", "eu"];
    // Each coordinator serves the HTTP API and the dashboard too; followers redirect to the leader.
    let mut http = BTreeMap::new();
    for id in peers.keys() {
        http.insert(*id, free_addr()?);
    }
    // The cluster signs evidence exports; the demo makes its key (a real one is --evidence-key).
    let evidence_key = std::sync::Arc::new(
        rehearse_coordinator::evidence::Signer::generate("rehearse-demo")
            .map_err(|e| anyhow::anyhow!(e))?,
    );
    let mut tasks = Vec::new();
    for (i, (id, addr)) in peers.iter().enumerate() {
        let config = CoordinatorConfig {
            id: *id,
            listen: addr.parse().context("coordinator address")?,
            advertise: addr.clone(),
            peers: peers.clone(),
            data_dir: dir.join(format!("coordinator-{id}")),
            region: regions[i].to_owned(),
            cluster: "demo".to_owned(),
            join: false,
            compact_after: 10_000,
            force_new_cluster: false,
            tls: None,
            lease: rehearse_coordinator::DEFAULT_LEASE,
            command_version: rehearse_core::codec::CURRENT,
            job_retention: rehearse_coordinator::DEFAULT_JOB_RETENTION,
            http_listen: Some(http[id]),
            http_advertise: None,
            notify: Default::default(),
            evidence_key: Some(evidence_key.clone()),
            auth: std::sync::Arc::new(rehearse_coordinator::auth::Gate::off()),
        };
        let token = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rehearse_coordinator::run(config, token).await {
                eprintln!("rehearse demo: coordinator stopped: {e}");
            }
        }));
    }
    let coordinators: Vec<String> = peers.values().cloned().collect();
    for (name, region) in [("worker-eu", "eu"), ("worker-us", "us")] {
        let config = AgentConfig {
            coordinators: coordinators.clone(),
            tls: None,
            token: None,
            name: name.to_owned(),
            region: region.to_owned(),
            labels: BTreeMap::new(),
            slots: 1,
            work_dir: dir.join(name),
            sandbox_user: "nobody".to_owned(),
            runtime,
            images: Default::default(),
            sources: Default::default(),
            metrics: Default::default(),
        };
        let token = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rehearse_worker::agent::run(config, token).await {
                eprintln!("rehearse demo: worker stopped: {e}");
            }
        }));
    }
    let dashboard = format!("http://{}/", http[&1]);
    let kept = evidence_dir.is_some();
    let evidence_dir = evidence_dir.unwrap_or_else(|| dir.join("evidence"));
    let result = drive(
        dir,
        plan_file,
        &coordinators,
        (&dashboard, &evidence_dir, kept),
        runs,
        &stop,
    )
    .await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    result
}

async fn drive(
    dir: &Path,
    plan_file: &Path,
    coordinators: &[String],
    (dashboard, evidence_dir, kept): (&str, &Path, bool),
    runs: usize,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let drill_file = dir.join("shop.drill.toml");
    std::fs::write(
        &drill_file,
        format!(
            "[drill]\nname = \"shop every 10s\"\nschedule = \"*/10 * * * * *\"\ntimezone = \"Europe/Berlin\"\nwindow = \"8s\"\nalert_after = \"1m\"\ndrift = \"10%\"\nplan = \"{}\"\n",
            plan_file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ),
    )
    .context("write the demo drill")?;
    let spec = crate::drill::read_spec(&drill_file)?;
    let mut client = Client::new(coordinators.to_vec())?;
    apply(&mut client, &spec).await?;
    eprintln!(
        "\nrehearse demo: a fleet in-process — coordinators {} (regions eu, us, eu), workers in eu and us.\n\
         The dump is now a drill firing every 10 s ({}).\n\
         Dashboard: {dashboard}  (HTTP API: {dashboard}docs/)\n\
         While this runs, in another terminal:\n    \
         rehearse drill list --coordinators {}\n",
        coordinators.join(","),
        drill_file.display(),
        coordinators[0]
    );
    let mut shown = 0usize;
    let mut passed = 0usize;
    while passed < runs {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = stop.cancelled() => return Ok(()),
        }
        let Ok(answer) = client
            .drill(
                DrillRpc::Get,
                pb::DrillCall {
                    name: spec.name.clone(),
                    history: true,
                    ..pb::DrillCall::default()
                },
            )
            .await
        else {
            continue;
        };
        let Ok(views) = serde_json::from_str::<Vec<DrillView>>(&answer.json) else {
            continue;
        };
        let Some(view) = views.first() else { continue };
        let ended: Vec<_> = view
            .runs
            .iter()
            .filter(|r| r.outcome != RunOutcome::Running)
            .collect();
        for r in ended.iter().skip(shown) {
            let result = r.results.first();
            eprintln!(
                "  drill run at {}  {}{}{}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(r.tick_ms.max(0) as u64)
                ),
                r.outcome.as_str().to_uppercase(),
                result
                    .and_then(|x| x.rto_ms)
                    .map(|ms| format!("  RTO {}", rehearse_core::report::human_ms(ms)))
                    .unwrap_or_default(),
                r.reason
                    .as_deref()
                    .map(|x| format!("  — {x}"))
                    .unwrap_or_default()
            );
            if r.outcome == RunOutcome::Passed {
                passed += 1;
            }
        }
        shown = ended.len();
    }
    eprintln!(
        "\nrehearse demo: {passed} drill runs passed; status {}.",
        status(&mut client, &spec.name).await
    );
    exercise(dir, plan_file, &mut client, stop).await?;
    evidence(evidence_dir, kept, &mut client).await?;
    eprintln!("\nrehearse demo: stopping the fleet.");
    Ok(())
}

/// Every verdict so far, exported as an auditor gets it: signed HTML and JSON.
async fn evidence(out: &Path, kept: bool, client: &mut Client) -> anyhow::Result<()> {
    let files = client
        .export_evidence(0, crate::args::now_ms() + 1, None)
        .await
        .context("evidence export")?;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    for (name, data) in &files {
        std::fs::write(out.join(name), data).with_context(|| format!("write {name}"))?;
    }
    let verified = rehearse_coordinator::evidence::verify_dir(out, None)
        .map_err(|e| anyhow::anyhow!("the demo's evidence does not check: {e}"))?;
    eprintln!(
        "\nrehearse demo: evidence for auditors — {} verdicts in a hash chain, exported and signed to {}\n  \
         (open evidence.html; check: ssh-keygen -Y verify -f allowed_signers -I rehearse -n rehearse-evidence -s evidence.json.sig < evidence.json){}",
        verified.records,
        out.display(),
        if kept {
            ""
        } else {
            "\n  It goes away with the demo: rehearse demo --fleet N --keep DIR keeps it in DIR/evidence."
        }
    );
    Ok(())
}

async fn apply(client: &mut Client, spec: &DrillSpec) -> anyhow::Result<()> {
    client
        .drill(
            DrillRpc::Apply,
            pb::DrillCall {
                spec_json: serde_json::to_string(spec).context("encode drill")?,
                ..pb::DrillCall::default()
            },
        )
        .await
        .context("apply the demo drill")?;
    Ok(())
}

async fn status(client: &mut Client, name: &str) -> String {
    let Ok(answer) = client
        .drill(
            DrillRpc::Get,
            pb::DrillCall {
                name: name.to_owned(),
                ..pb::DrillCall::default()
            },
        )
        .await
    else {
        return "unknown".into();
    };
    serde_json::from_str::<Vec<DrillView>>(&answer.json)
        .ok()
        .and_then(|v| v.first().and_then(|d| d.status))
        .map_or_else(|| "unknown".into(), |s| s.as_str().to_owned())
}

/// The same dump as a DR exercise recovered in region `us`: the database step and a gate the
/// demo approves itself, on the cluster; prints the report.
async fn exercise(
    dir: &Path,
    plan_file: &Path,
    client: &mut Client,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let file = dir.join("shop.exercise.toml");
    std::fs::write(
        &file,
        format!(
            "[exercise]\nname = \"shop DR to us\"\nregion = \"us\"\nrto = \"10m\"\nrpo = \"26h\"\n\
             [[step]]\nname = \"db\"\nplan = \"{}\"\ncritical = true\n\
             [[step]]\nname = \"approve cutover\"\nkind = \"gate\"\nafter = [\"db\"]\n",
            plan_file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ),
    )
    .context("write the demo exercise")?;
    let spec = crate::exercise::read_spec(&file)?;
    let call = |id: &str| pb::ExerciseCall {
        id: id.to_owned(),
        ..pb::ExerciseCall::default()
    };
    let answer = client
        .exercise(
            ExerciseRpc::Start,
            pb::ExerciseCall {
                spec_json: serde_json::to_string(&spec).context("encode exercise")?,
                ..pb::ExerciseCall::default()
            },
        )
        .await
        .context("start the demo exercise")?;
    let id = serde_json::from_str::<ExerciseReport>(&answer.json)
        .context("the coordinator's answer")?
        .id;
    eprintln!(
        "\nrehearse demo: a DR exercise: the shop database recovered in region us (faithful profile),\n\
         then a gate the demo approves as a person would ({}):\n    \
         rehearse exercise approve {id} --step \"approve cutover\" --by demo\n",
        file.display()
    );
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
            () = stop.cancelled() => return Ok(()),
        }
        let Ok(answer) = client.exercise(ExerciseRpc::Get, call(&id)).await else {
            continue;
        };
        let report: ExerciseReport =
            serde_json::from_str(&answer.json).context("the coordinator's answer")?;
        if report.state.is_final() {
            eprint!("{}", report.human());
            return Ok(());
        }
        let waiting = report
            .steps
            .iter()
            .any(|s| s.kind == StepKind::Gate && s.state == StepState::Running);
        if waiting {
            client
                .exercise(
                    ExerciseRpc::Approve,
                    pb::ExerciseCall {
                        step: "approve cutover".into(),
                        by: "demo".into(),
                        ..call(&id)
                    },
                )
                .await
                .context("approve the demo gate")?;
        }
    }
}
