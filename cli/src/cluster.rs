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
