//! `rehearse cluster`: status, membership changes, the version probe.

use std::process::ExitCode;

use clap::Subcommand;
use rehearse_proto::v1 as pb;
use serde_json::json;

use crate::CouldNotVerify;
use crate::args::{ClientArgs, ClientOutput, client, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Leader, term, commit index and members.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a node (started with --join) as a non-voting learner; it catches up from a snapshot.
    AddLearner {
        id: u64,
        addr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a caught-up learner a voter.
    Promote {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a member (voter or learner).
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Region failover while a quorum survives: promote the learners of REGION and remove the
    /// members of other regions that do not answer, one committed change at a time (promotions
    /// first, so the voters never lose their majority). Without a quorum it refuses and names
    /// the survivor to force a new cluster on (docs/cluster.md).
    Failover {
        /// The region that takes over.
        #[arg(long = "to-region")]
        to_region: String,
        /// How long a member may take to answer before it counts as lost.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        probe_timeout: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upgrade tests: commit a no-op of the test-only newest command kind (version 3); refused
    /// unless every member reads it.
    #[command(hide = true)]
    Probe {
        #[arg(long, default_value = "probe")]
        note: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn cluster(cmd: ClusterCommand) -> Result<ExitCode, CouldNotVerify> {
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
        ClusterCommand::Failover {
            to_region,
            probe_timeout,
            client: args,
        } => return failover(to_region, *probe_timeout, args).await,
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
    let regions = rehearse_core::quorum::by_region(
        s.members
            .iter()
            .map(|m| (m.role.as_str(), m.region.as_str())),
    );
    let warning = rehearse_core::quorum::majority_warning(&regions);
    match args.output {
        ClientOutput::Json => print_json(&json!({
            "regions": regions
                .iter()
                .map(|(r, c)| (r.clone(), json!({"voters": c.voters, "learners": c.learners})))
                .collect::<serde_json::Map<_, _>>(),
            "warnings": warning.iter().collect::<Vec<_>>(),
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
            for (region, count) in &regions {
                println!(
                    "  region {region}: {} voters, {} learners",
                    count.voters, count.learners
                );
            }
            if let Some(w) = &warning {
                println!("warning: {w}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a member answers its own status within `wait` (asked alone, not through the leader).
async fn answers(addr: &str, args: &ClientArgs, wait: std::time::Duration) -> Option<u64> {
    let mut alone = args.cluster.client_of(vec![addr.to_owned()]).ok()?;
    match tokio::time::timeout(wait, alone.local_status()).await {
        Ok(Ok(s)) => Some(s.applied),
        _ => None,
    }
}

async fn failover(
    to_region: &str,
    probe_timeout: std::time::Duration,
    args: &ClientArgs,
) -> Result<ExitCode, CouldNotVerify> {
    use pb::membership_request::Kind;
    let started = std::time::Instant::now();
    let mut c = client(args)?;
    // The member list comes from whoever answers; the leader's when there is one.
    let mut status = tokio::time::timeout(std::time::Duration::from_secs(10), c.status())
        .await
        .map_err(|_| anyhow::anyhow!("no coordinator answered within 10s"))??;
    let mut reachable = std::collections::BTreeMap::new();
    for m in &status.members {
        reachable.insert(m.id, answers(&m.addr, args, probe_timeout).await);
    }
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect();
    let answering = voters.iter().filter(|id| reachable[*id].is_some()).count();
    let leads = |s: &pb::ClusterStatusResponse| {
        s.leader != 0 && reachable.get(&s.leader).is_some_and(Option::is_some)
    };
    // A quorum answers but the loss took the leader: let the survivors elect one.
    let election = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !leads(&status) && answering * 2 > voters.len() && std::time::Instant::now() < election {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if let Ok(Ok(s)) = tokio::time::timeout(probe_timeout, c.status()).await {
            status = s;
        }
    }
    // No leader, or one that does not answer (a survivor's view from before the loss).
    if !leads(&status) {
        let survivor = reachable
            .iter()
            .filter_map(|(id, applied)| applied.map(|a| (a, *id)))
            .max();
        return Err(anyhow::anyhow!(
            "no quorum survives (no leader; {} of {} members answer): nothing was changed. Force a new cluster on the most up-to-date survivor{}: stop it, restart it with --force-new-cluster, then run this again (writes it had not received are lost; docs/cluster.md)",
            reachable.values().filter(|a| a.is_some()).count(),
            status.members.len(),
            survivor.map(|(a, id)| format!(" (node {id}, applied {a})")).unwrap_or_default()
        )
        .into());
    }
    // The changes go to the leader first (the others follow it if it changes).
    let mut first = status
        .members
        .iter()
        .filter(|m| m.id == status.leader)
        .map(|m| m.addr.clone())
        .collect::<Vec<_>>();
    first.extend(args.cluster.coordinators.iter().cloned());
    let mut c = args.cluster.client_of(first)?;
    let mut promoted = Vec::new();
    let mut removed = Vec::new();
    for m in status
        .members
        .iter()
        .filter(|m| m.region == to_region && m.role == "learner" && reachable[&m.id].is_some())
    {
        c.membership(Kind::Promote, m.id, "").await?;
        eprintln!("rehearse: promoted {} ({}) to voter", m.id, m.region);
        promoted.push(m.id);
    }
    // Voters first: each removal lowers the majority the rest need.
    let mut lost: Vec<&pb::Member> = status
        .members
        .iter()
        .filter(|m| m.region != to_region && reachable[&m.id].is_none())
        .collect();
    lost.sort_by_key(|m| m.role != "voter");
    for m in lost {
        c.membership(Kind::Remove, m.id, "").await?;
        eprintln!(
            "rehearse: removed {} ({} {}, not answering)",
            m.id, m.region, m.role
        );
        removed.push(m.id);
    }
    let after = c.status().await?;
    let took_ms = started.elapsed().as_millis() as u64;
    match args.output {
        ClientOutput::Json => print_json(&json!({
            "to_region": to_region,
            "promoted": promoted,
            "removed": removed,
            "leader": after.leader,
            "voters": after.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect::<Vec<_>>(),
            "took_ms": took_ms,
        })),
        ClientOutput::Human => println!(
            "failover to {to_region}: promoted {promoted:?}, removed {removed:?}; leader {} ({took_ms} ms)",
            after.leader
        ),
    }
    Ok(ExitCode::SUCCESS)
}
