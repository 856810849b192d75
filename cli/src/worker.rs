//! `rehearse worker` (run one, or drain one) and `rehearse workers` (list the fleet).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::CouldNotVerify;
use crate::args::{
    ClientArgs, ClientOutput, Coordinators, RuntimeArgs, client, now_ms, parse_labels, print_json,
};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct WorkerArgs {
    #[command(subcommand)]
    pub(crate) action: Option<WorkerAction>,
    #[command(flatten)]
    pub(crate) cluster: Coordinators,
    /// This worker's name, unique in the fleet [default: the host name].
    #[arg(long, env = "REHEARSE_WORKER_NAME")]
    pub(crate) name: Option<String>,
    /// The region this worker runs in (plans pin jobs with [placement] region / not_region).
    #[arg(long, default_value = "default", env = "REHEARSE_REGION")]
    pub(crate) region: String,
    /// Labels plans can require: k=v,k=v.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    /// How many verifications run at once.
    #[arg(long, default_value_t = 1)]
    pub(crate) slots: u32,
    #[command(flatten)]
    pub(crate) run: RuntimeArgs,
    /// The worker's own directory: sandboxes (reaped at start) and caches.
    #[arg(
        long,
        env = "REHEARSE_WORK_DIR",
        default_value = "/var/lib/rehearse/worker"
    )]
    pub(crate) work_dir: PathBuf,
    /// Unprivileged user the database server and psql run as, when rehearse runs as root.
    #[arg(long, default_value = "nobody", env = "REHEARSE_SANDBOX_USER")]
    pub(crate) sandbox_user: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (slots, running, verdicts, RTO, phases,
    /// heartbeats).
    #[arg(long, env = "REHEARSE_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkerAction {
    /// Stop new assignments to a worker; running jobs finish.
    Drain {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct WorkersArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn worker(
    args: WorkerArgs,
    shutdown: CancellationToken,
) -> Result<ExitCode, CouldNotVerify> {
    if let Some(WorkerAction::Drain { name, client }) = args.action {
        return drain(&name, &client).await;
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
        token: args.cluster.token,
        name,
        region: args.region,
        labels: args.labels,
        slots: args.slots,
        work_dir: args.work_dir,
        sandbox_user: args.sandbox_user,
        runtime: args.run.runtime.choice(),
        images: args.run.images(),
        sources: args.run.sources()?,
        metrics: std::sync::Arc::default(),
    };
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
        let metrics = config.metrics.clone();
        let stop = shutdown.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
        tracing::info!(%addr, "metrics at /metrics");
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "metrics listener stopped");
            }
        });
    }
    rehearse_worker::agent::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn drain(name: &str, args: &ClientArgs) -> Result<ExitCode, CouldNotVerify> {
    client(args)?.drain(name).await?;
    match args.output {
        ClientOutput::Json => print_json(&json!({ "name": name, "state": "draining" })),
        ClientOutput::Human => println!("{name} draining: no new jobs; running ones finish"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn workers(args: WorkersArgs) -> Result<ExitCode, CouldNotVerify> {
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
