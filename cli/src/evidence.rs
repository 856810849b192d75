//! `rehearse evidence export|verify`: signed, self-contained records of what was tested, for
//! auditors (see docs/evidence.md). `export` asks the cluster (the leader signs); `verify` needs
//! nothing but the directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::CouldNotVerify;
use crate::args::{ClientArgs, ClientOutput};

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Write the verdicts finished in a period as a signed HTML report and JSON, with
    /// `FILE.sig` SSH signatures (namespace rehearse-evidence) and an `allowed_signers` file.
    Export {
        /// From this day (2026-01-01, UTC midnight) or instant (RFC 3339) [default: the start].
        #[arg(long, value_parser = parse_since)]
        since: Option<u64>,
        /// Through this day (2026-12-31 includes the whole day, UTC) or up to this instant
        /// [default: now].
        #[arg(long, value_parser = parse_until)]
        until: Option<u64>,
        /// Only this drill's verdicts (the chain's other links stay, without their content).
        #[arg(long)]
        drill: Option<String>,
        /// The directory to write (made if missing; files of an earlier export are replaced).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-check an export: every link of the chain, then each file's signature. Names the first
    /// broken link. Exit 0: intact; 1: broken or not signed by the key; 2: could not check.
    Verify {
        dir: PathBuf,
        /// The coordinator's public key (an OpenSSH .pub file) from a source you trust; without
        /// it the key inside the export is used, which proves integrity, not origin.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value = "human")]
        output: ClientOutput,
    },
}

const DAY_MS: u64 = 86_400_000;

/// A day (`2026-01-01`) or an RFC 3339 instant, in ms since the epoch.
fn parse_instant(text: &str) -> Result<(u64, bool), String> {
    let is_day = text.len() == 10 && text.as_bytes().get(4) == Some(&b'-');
    let full = if is_day {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        format!("{text:?} is not a day like 2026-12-31 or a time like 2026-12-31T18:00:00Z: {e}")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    Ok((ms, is_day))
}

fn parse_since(text: &str) -> Result<u64, String> {
    parse_instant(text).map(|(ms, _)| ms)
}

/// A day as `--until` means through its end.
fn parse_until(text: &str) -> Result<u64, String> {
    parse_instant(text).map(|(ms, day)| if day { ms + DAY_MS } else { ms })
}

pub async fn run(cmd: EvidenceCommand) -> Result<ExitCode, CouldNotVerify> {
    match cmd {
        EvidenceCommand::Export {
            since,
            until,
            drill,
            out,
            client,
        } => export(since, until, drill, &out, &client).await,
        EvidenceCommand::Verify { dir, key, output } => verify(&dir, key.as_deref(), output),
    }
}

async fn export(
    since: Option<u64>,
    until: Option<u64>,
    drill: Option<String>,
    out: &Path,
    args: &ClientArgs,
) -> Result<ExitCode, CouldNotVerify> {
    let since = since.unwrap_or(0);
    let until = until.unwrap_or_else(|| crate::args::now_ms() + 1);
    let mut client = crate::args::client(args)?;
    // An export of a long chain takes a while to read and sign.
    client.patience = std::time::Duration::from_secs(120);
    let files = client
        .export_evidence(since, until, drill.as_deref())
        .await
        .context("evidence export")?;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let mut written = Vec::new();
    for (name, data) in &files {
        // Names come from the coordinator: plain file names only, never a path.
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(CouldNotVerify(anyhow::anyhow!(
                "the coordinator sent a file named {name:?}; refusing to write it"
            )));
        }
        let path = out.join(name);
        std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
        written.push((path, data.len()));
    }
    // What the chain says, from the file just written.
    let verified = rehearse_coordinator::evidence::verify_dir(out, None)
        .map_err(|e| CouldNotVerify(anyhow::anyhow!("the export does not check: {e}")))?;
    match args.output {
        ClientOutput::Json => crate::args::print_json(&json!({
            "dir": out.display().to_string(),
            "records": verified.records,
            "links": verified.links,
            "signer": verified.signer,
            "files": written.iter().map(|(p, n)| json!({"path": p.display().to_string(), "bytes": n})).collect::<Vec<_>>(),
        })),
        ClientOutput::Human => {
            println!(
                "{} verdicts ({} links of the chain) written to {}, signed by {}",
                verified.records,
                verified.links,
                out.display(),
                verified.signer.trim()
            );
            for (path, n) in &written {
                println!("  {} ({n} bytes)", path.display());
            }
            println!(
                "check: ssh-keygen -Y verify -f {0}/allowed_signers -I rehearse -n rehearse-evidence -s {0}/evidence.json.sig < {0}/evidence.json",
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(
    dir: &Path,
    key: Option<&Path>,
    output: ClientOutput,
) -> Result<ExitCode, CouldNotVerify> {
    if !dir.join(rehearse_coordinator::evidence::JSON).is_file() {
        return Err(CouldNotVerify(anyhow::anyhow!(
            "{}: no {} here; give the directory `evidence export --out` wrote",
            dir.display(),
            rehearse_coordinator::evidence::JSON
        )));
    }
    let key = match key {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("read key {}", path.display()))?,
        ),
        None => None,
    };
    let result = match rehearse_coordinator::evidence::verify_dir(dir, key.as_deref()) {
        Err(e @ rehearse_coordinator::evidence::EvidenceError::Broken(_)) => Err(e.to_string()),
        Err(e) => return Err(CouldNotVerify(anyhow::anyhow!("evidence verify: {e}"))),
        Ok(v) => Ok(v),
    };
    match (&result, output) {
        (Ok(v), ClientOutput::Json) => crate::args::print_json(&json!({
            "ok": true, "records": v.records, "links": v.links, "signer": v.signer,
        })),
        (Err(e), ClientOutput::Json) => crate::args::print_json(&json!({"ok": false, "error": e})),
        (Ok(v), ClientOutput::Human) => println!(
            "evidence intact: {} records, {} links of the chain, both signatures by {}",
            v.records,
            v.links,
            v.signer.trim()
        ),
        (Err(e), ClientOutput::Human) => eprintln!("rehearse: evidence broken: {e}"),
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_cover_whole_days_and_instants_are_exact() {
        assert_eq!(parse_since("1970-01-02"), Ok(DAY_MS));
        assert_eq!(parse_until("1970-01-02"), Ok(2 * DAY_MS));
        assert_eq!(parse_until("1970-01-02T00:00:01Z"), Ok(DAY_MS + 1000));
        assert!(parse_since("yesterday").is_err());
    }
}
