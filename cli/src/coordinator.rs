//! `rehearse coordinator`: one member of the Raft-replicated cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::CouldNotVerify;
use crate::args::TlsArgs;

#[derive(Debug, Args)]
pub(crate) struct CoordinatorArgs {
    /// This node's id (a positive number, unique in the cluster).
    #[arg(long)]
    pub(crate) id: u64,
    /// Address to listen on for clients and peers, HOST:PORT.
    #[arg(long)]
    pub(crate) listen: std::net::SocketAddr,
    /// Address others reach this node at [default: --listen].
    #[arg(long)]
    pub(crate) advertise: Option<String>,
    /// Initial members, this node included: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long, value_parser = rehearse_coordinator::parse_peers)]
    pub(crate) peers: std::collections::BTreeMap<u64, String>,
    /// Directory for the raft log and state (redb); refused if it belongs to another cluster or id.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Region label of this node.
    #[arg(long, default_value = "default")]
    pub(crate) region: String,
    /// Cluster name, recorded in the data dir.
    #[arg(long, default_value = "rehearse", env = "REHEARSE_CLUSTER")]
    pub(crate) cluster: String,
    /// Start empty and wait to be added with `rehearse cluster add-learner` (new or replacement nodes).
    #[arg(long)]
    pub(crate) join: bool,
    /// Log entries kept before they are folded into a snapshot.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) compact_after: u64,
    /// Disaster recovery only: restart this node as the sole voter, keeping its data, when a
    /// majority is lost for good (see docs/cluster.md). Never restart the old members afterwards.
    #[arg(long)]
    pub(crate) force_new_cluster: bool,
    /// A worker silent this long is declared lost and its jobs are re-queued (at least 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) lease: std::time::Duration,
    /// Finished jobs leave the coordinator's memory after this long; their summaries stay in the
    /// history (`job get` says where a job went).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub(crate) job_retention: std::time::Duration,
    /// The command version this node reads and writes. For upgrade tests only: a lower one acts
    /// as an older release, 3 adds a test-only command kind.
    #[arg(long, hide = true, default_value_t = rehearse_core::codec::CURRENT)]
    pub(crate) command_version: u32,
    /// Serve the HTTP/JSON API (OpenAPI at /openapi.json, Swagger UI at /docs) on this address.
    #[arg(long, env = "REHEARSE_HTTP_LISTEN")]
    pub(crate) http_listen: Option<std::net::SocketAddr>,
    /// The URL HTTP clients reach this node at [default: http:// + --http-listen]; a follower
    /// redirects HTTP clients to the leader's.
    #[arg(long, env = "REHEARSE_HTTP_ADVERTISE")]
    pub(crate) http_advertise: Option<String>,
    /// Notification channels: a TOML file of [webhook.NAME] tables (docs/notifications.md).
    /// Give every coordinator the same file: the leader sends.
    #[arg(long, env = "REHEARSE_NOTIFY")]
    pub(crate) notify: Option<std::path::PathBuf>,
    /// Sign evidence exports with this OpenSSH ed25519 private key (no passphrase); give every
    /// coordinator the same key. Without it, `rehearse evidence export` is refused.
    #[arg(long, env = "REHEARSE_EVIDENCE_KEY")]
    pub(crate) evidence_key: Option<std::path::PathBuf>,
    /// `required`: every gRPC and HTTP call needs a token (`rehearse token create`) whose role
    /// may make it; `off`: anyone who reaches the port may do anything (loopback, trusted nets).
    #[arg(long, value_enum, default_value = "off", env = "REHEARSE_AUTH")]
    pub(crate) auth: Auth,
    /// With --auth required: a file holding the first admin token (one secret per line), read at
    /// start; give every coordinator the same file. Make a secret with `rehearse token secret`.
    #[arg(long, env = "REHEARSE_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<std::path::PathBuf>,
    /// With --auth required: serve the dashboard's pages without a token (read-only; the API
    /// still needs one).
    #[arg(long)]
    pub(crate) dashboard_open: bool,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Auth {
    Off,
    Required,
}

pub(crate) async fn coordinator(
    args: CoordinatorArgs,
    shutdown: CancellationToken,
) -> Result<ExitCode, CouldNotVerify> {
    let notify = match &args.notify {
        Some(path) => rehearse_coordinator::notify::NotifyConfig::load(path)
            .map_err(|e| anyhow::anyhow!(e))?,
        None => Default::default(),
    };
    let evidence_key = match &args.evidence_key {
        Some(path) => Some(std::sync::Arc::new(
            rehearse_coordinator::evidence::Signer::load(path).map_err(|e| anyhow::anyhow!(e))?,
        )),
        None => None,
    };
    let admin = match &args.admin_token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("admin token file {}: {e}", path.display()))?,
        None => String::new(),
    };
    let gate = match args.auth {
        Auth::Off => {
            if args.admin_token_file.is_some() {
                return Err(CouldNotVerify(anyhow::anyhow!(
                    "--admin-token-file is given but --auth is off: say --auth required"
                )));
            }
            rehearse_coordinator::auth::Gate::off()
        }
        Auth::Required => rehearse_coordinator::auth::Gate::required(
            &admin,
            args.tls.files().is_some(),
            args.dashboard_open,
        ),
    };
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
        http_listen: args.http_listen,
        http_advertise: args.http_advertise,
        notify: std::sync::Arc::new(notify),
        evidence_key,
        auth: std::sync::Arc::new(gate),
    };
    rehearse_coordinator::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
