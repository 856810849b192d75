//! `rehearse cluster`: status, membership changes, the version probe.

use std::process::ExitCode;

use clap::Subcommand;
use rehearse_proto::v1 as pb;
use serde_json::json;

use rehearse_coordinator::client::ClientError;

use crate::CouldNotVerify;
use crate::args::{ClientArgs, ClientOutput, client, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Leader, term, commit index and members, as the leader sees them.
    Status {
        /// This node's own view instead (the first of --coordinators that answers): its applied
        /// index and the leader it knows, e.g. to find the most up-to-date survivor.
        #[arg(long)]
        local: bool,
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
    /// first, so the voters never lose their majority). Without a quorum it refuses, unless
    /// --force: then the most up-to-date survivor of REGION becomes the only voter of a new
    /// cluster (writes it had not received are lost) and the other survivors its learners,
    /// before the promotions (docs/cluster.md).
    Failover {
        /// The region that takes over.
        #[arg(long = "to-region")]
        to_region: String,
        /// How long a member may take to answer before it counts as lost.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        probe_timeout: std::time::Duration,
        /// Without a quorum, force a new cluster on the survivors (asks on a terminal).
        #[arg(long)]
        force: bool,
        /// With --force: do not ask (needed when not on a terminal).
        #[arg(long, requires = "force")]
        yes: bool,
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
        ClusterCommand::Status { client, .. } => (client, None),
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
            force,
            yes,
            client: args,
        } => {
            let force = force.then_some(Confirm { yes: *yes });
            return failover(to_region, *probe_timeout, force, args).await;
        }
        ClusterCommand::Probe { note, client: args } => {
            client(args)?.probe(note).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let mut c = client(args)?;
    if let Some((kind, id, addr)) = change {
        c.membership(kind, id, &addr).await?;
    }
    let s = match cmd {
        ClusterCommand::Status { local: true, .. } => c.local_status().await?,
        _ => c.status().await?,
    };
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

/// The members that answered a probe: the region each says it is in.
type Regions = std::collections::BTreeMap<u64, String>;

/// Which members answer their own status within `wait` (each asked alone, not through the
/// leader, all at once), with the index each has applied (`None`: lost) and the region each
/// gives for itself (another node may not know it yet: regions are learned from raft traffic).
async fn probe_members(
    members: &[pb::Member],
    args: &ClientArgs,
    wait: std::time::Duration,
) -> (std::collections::BTreeMap<u64, Option<u64>>, Regions) {
    let mut reachable: std::collections::BTreeMap<u64, Option<u64>> =
        members.iter().map(|m| (m.id, None)).collect();
    let mut probes = tokio::task::JoinSet::new();
    for m in members {
        let (id, alone) = (m.id, args.cluster.client_of(vec![m.addr.clone()]).ok());
        probes.spawn(async move {
            let mut alone = alone?;
            match tokio::time::timeout(wait, alone.local_status()).await {
                Ok(Ok(s)) => {
                    let region = s
                        .members
                        .iter()
                        .find(|m| m.id == s.id)
                        .map(|m| m.region.clone())
                        .unwrap_or_default();
                    Some((id, s.applied, region))
                }
                _ => None,
            }
        });
    }
    let mut regions = Regions::new();
    while let Some(answer) = probes.join_next().await {
        if let Ok(Some((id, applied, region))) = answer {
            reachable.insert(id, Some(applied));
            regions.insert(id, region);
        }
    }
    (reachable, regions)
}

/// Puts each answering member's own region into a status.
fn own_regions(status: &mut pb::ClusterStatusResponse, regions: &Regions) {
    for m in &mut status.members {
        if let Some(r) = regions.get(&m.id).filter(|r| !r.is_empty()) {
            m.region = r.clone();
        }
    }
}

/// `--force` was given; `yes`: without asking.
struct Confirm {
    yes: bool,
}

impl Confirm {
    /// Asks on the terminal for the chosen node's id; refuses without a terminal unless `--yes`.
    fn ask(&self, id: u64) -> Result<(), CouldNotVerify> {
        use std::io::IsTerminal as _;
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(anyhow::anyhow!(
                "--force asks for confirmation on a terminal, and stdin is not one: give --yes to go on without asking"
            )
            .into());
        }
        eprint!(
            "rehearse: type {id} to force the new cluster on node {id}, anything else to stop: "
        );
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| anyhow::anyhow!("read the confirmation: {e}"))?;
        if line.trim() != id.to_string() {
            return Err(anyhow::anyhow!("not confirmed: nothing was changed").into());
        }
        Ok(())
    }
}

/// What forcing a new cluster did.
struct Forced {
    node: u64,
    applied: u64,
    lost: Vec<u64>,
    /// The chosen node's own status once it leads.
    status: pb::ClusterStatusResponse,
}

/// No quorum survives: the most up-to-date survivor of `to_region` (a voter first on a tie)
/// becomes the only voter of a new membership and every other survivor its learner. Each
/// survivor is told the same sets and restarts into them; the lost members are left out for
/// good. Returns once the chosen node leads.
async fn force_new_cluster(
    to_region: &str,
    status: &pb::ClusterStatusResponse,
    reachable: &std::collections::BTreeMap<u64, Option<u64>>,
    confirm: &Confirm,
    args: &ClientArgs,
) -> Result<Forced, CouldNotVerify> {
    let survivors: Vec<&pb::Member> = status
        .members
        .iter()
        .filter(|m| reachable[&m.id].is_some())
        .collect();
    let chosen = survivors
        .iter()
        .filter(|m| m.region == to_region)
        .max_by_key(|m| {
            (
                reachable[&m.id].unwrap_or(0),
                m.role == "voter",
                std::cmp::Reverse(m.id),
            )
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no member of region {to_region} answers: there is nothing to force a new cluster on"
            )
        })?;
    let applied = reachable[&chosen.id].unwrap_or(0);
    let learners: Vec<u64> = survivors
        .iter()
        .filter(|m| m.id != chosen.id)
        .map(|m| m.id)
        .collect();
    let lost: Vec<u64> = status
        .members
        .iter()
        .filter(|m| reachable[&m.id].is_none())
        .map(|m| m.id)
        .collect();
    eprintln!(
        "rehearse: no quorum survives. Forcing a new cluster: node {} ({}, applied {applied}) becomes its only voter{}; {lost:?} are left out for good. Writes the lost members committed after index {applied} are lost, and none of them may be started again with its data dir (docs/cluster.md).",
        chosen.id,
        chosen.region,
        if learners.is_empty() {
            String::new()
        } else {
            format!(", {learners:?} its learners")
        }
    );
    confirm.ask(chosen.id)?;
    // The others first: when the chosen node leads, its learners already share its membership.
    let order = survivors
        .iter()
        .filter(|m| m.id != chosen.id)
        .chain(std::iter::once(chosen));
    for m in order {
        let mut one = args.cluster.client_of(vec![m.addr.clone()])?;
        // A voter that has just lost its quorum still knows its leader for an election timeout
        // (until check_quorum or pre-vote notice): it refuses until then.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match one.force_new_cluster(&[chosen.id], &learners).await {
                Ok(_) => break,
                Err(ClientError::Refused(why))
                    if why.contains("knows a leader") && std::time::Instant::now() < patience =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "node {} did not take the forced membership: {e}",
                        m.id
                    )
                    .into());
                }
            }
        }
        eprintln!(
            "rehearse: node {} stores the forced membership and restarts",
            m.id
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if let Ok(mut one) = args.cluster.client_of(vec![chosen.addr.clone()])
            && let Ok(Ok(s)) =
                tokio::time::timeout(std::time::Duration::from_secs(2), one.local_status()).await
            && s.leader == chosen.id
        {
            eprintln!("rehearse: node {} leads the new cluster", chosen.id);
            return Ok(Forced {
                node: chosen.id,
                applied,
                lost,
                status: s,
            });
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "node {} took the forced membership but did not lead within 30s: see its log",
                chosen.id
            )
            .into());
        }
    }
}

async fn failover(
    to_region: &str,
    probe_timeout: std::time::Duration,
    force: Option<Confirm>,
    args: &ClientArgs,
) -> Result<ExitCode, CouldNotVerify> {
    use pb::membership_request::Kind;
    let started = std::time::Instant::now();
    let mut c = client(args)?;
    // The member list comes from whoever answers; the leader's when there is one.
    let mut status = tokio::time::timeout(std::time::Duration::from_secs(10), c.status())
        .await
        .map_err(|_| anyhow::anyhow!("no coordinator answered within 10s"))??;
    let (reachable, regions) = probe_members(&status.members, args, probe_timeout).await;
    own_regions(&mut status, &regions);
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
            own_regions(&mut status, &regions);
        }
    }
    // No leader, one that does not answer (a survivor's view from before the loss), or a leader
    // that answers but has lost its majority (it cannot commit anything).
    let mut forced = None;
    if !leads(&status) || answering * 2 <= voters.len() {
        let Some(confirm) = &force else {
            let survivor = reachable
                .iter()
                .filter_map(|(id, applied)| applied.map(|a| (a, *id)))
                .max();
            return Err(anyhow::anyhow!(
                "no quorum survives ({answering} of {} voters answer; {} of {} members): nothing was changed. Run again with --force to make the most up-to-date survivor{} the only voter of a new cluster (writes it had not received are lost; docs/cluster.md)",
                voters.len(),
                reachable.values().filter(|a| a.is_some()).count(),
                status.members.len(),
                survivor.map(|(a, id)| format!(" (node {id}, applied {a})")).unwrap_or_default()
            )
            .into());
        };
        let done = force_new_cluster(to_region, &status, &reachable, confirm, args).await?;
        status = done.status.clone();
        own_regions(&mut status, &regions);
        forced = Some(done);
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
            "forced": forced.as_ref().map(|f| json!({"node": f.node, "applied": f.applied, "left_out": f.lost})),
            "promoted": promoted,
            "removed": removed,
            "leader": after.leader,
            "voters": after.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect::<Vec<_>>(),
            "took_ms": took_ms,
        })),
        ClientOutput::Human => println!(
            "failover to {to_region}{}: promoted {promoted:?}, removed {removed:?}; leader {} ({took_ms} ms)",
            forced
                .as_ref()
                .map(|f| format!(
                    " (a new cluster forced on node {} at index {}, {:?} left out)",
                    f.node, f.applied, f.lost
                ))
                .unwrap_or_default(),
            after.leader
        ),
    }
    Ok(ExitCode::SUCCESS)
}
