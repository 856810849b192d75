//! `rehearse token …`: API tokens for a cluster run with `--auth required` (docs/http.md). The
//! secret is made here and shown once; the cluster keeps only its hash.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use rehearse_core::tokens::{self, Role};
use rehearse_proto::client::TokenRpc;
use rehearse_proto::v1 as pb;
use serde_json::json;

use crate::CouldNotVerify;
use crate::args::{ClientArgs, ClientOutput};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print its secret, once (`--output json`: {"name", "role", "secret"}).
    Create {
        /// A name to list and revoke it by (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// read (look), operate (also submit, cancel, drills, exercises), admin (everything:
        /// membership, tokens), worker (a worker's own calls only).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The tokens: name, role, when made (never the secret: the cluster does not have it).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token: every coordinator refuses it once it applied the revoke.
    Revoke {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a new random secret, for a coordinator's --admin-token-file (no cluster needed).
    Secret,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?}: one of read, operate, admin, worker"))
}

/// A new secret from the system's randomness.
fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom")?;
    Ok(tokens::secret_from(&bytes))
}

pub async fn run(cmd: TokenCommand) -> Result<ExitCode, CouldNotVerify> {
    match cmd {
        TokenCommand::Secret => {
            println!("{}", new_secret()?);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Create { name, role, client } => {
            tokens::check_name(&name).map_err(|e| anyhow::anyhow!(e))?;
            let secret = new_secret()?;
            let call = pb::TokenCall {
                name: name.clone(),
                role: role.as_str().to_owned(),
                hash: tokens::hash(&secret),
            };
            crate::args::client(&client)?
                .tokens(TokenRpc::Create, call)
                .await
                .context("token create")?;
            match client.output {
                ClientOutput::Json => crate::args::print_json(&json!({
                    "name": name, "role": role.as_str(), "secret": secret,
                })),
                ClientOutput::Human => {
                    eprintln!(
                        "token {name} (role {role}) created; its secret follows, shown this once:"
                    );
                    println!("{secret}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { client } => {
            let list = crate::args::client(&client)?
                .tokens(TokenRpc::List, pb::TokenCall::default())
                .await
                .context("token list")?;
            print(&list, client.output);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { name, client } => {
            let call = pb::TokenCall {
                name: name.clone(),
                ..pb::TokenCall::default()
            };
            let list = crate::args::client(&client)?
                .tokens(TokenRpc::Revoke, call)
                .await
                .with_context(|| format!("token revoke {name}"))?;
            if client.output == ClientOutput::Human {
                println!("token {name} revoked");
            }
            print(&list, client.output);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(list: &[pb::TokenInfo], output: ClientOutput) {
    match output {
        ClientOutput::Json => crate::args::print_json(&json!(
            list.iter()
                .map(|t| json!({"name": t.name, "role": t.role, "created_at_ms": t.created_at_ms}))
                .collect::<Vec<_>>()
        )),
        ClientOutput::Human => {
            for t in list {
                let at = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.created_at_ms),
                );
                println!("{:<24} {:<8} created {at}", t.name, t.role);
            }
        }
    }
}
