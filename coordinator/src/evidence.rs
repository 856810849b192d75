//! Evidence exports: the chain's records of a window (see `rehearse_core::evidence`), as JSON and
//! as a self-contained HTML report, each with an SSH signature beside it (`FILE.sig`, SSHSIG
//! format, namespace `rehearse-evidence`) that `ssh-keygen -Y verify` checks offline, and an
//! `allowed_signers` file naming the coordinator's public key. `verify_dir` re-checks a
//! directory: the chain first (naming the first broken link), then both signatures.

use std::path::Path;
use std::sync::Arc;

use askama::Template;
use rehearse_core::evidence::{self, Export, Record, Summary, Window};
use rehearse_core::report::Verdict;
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::node::ApiError;

/// The files of an export, in the order they are written.
pub const JSON: &str = "evidence.json";
pub const HTML: &str = "evidence.html";
pub const ALLOWED_SIGNERS: &str = "allowed_signers";
/// The principal the `allowed_signers` file names (`ssh-keygen -Y verify -I rehearse`).
pub const PRINCIPAL: &str = "rehearse";

/// What can go wrong with keys and exports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// A key that cannot be used (unreadable, not OpenSSH, encrypted, not ed25519).
    #[error("{0}")]
    Key(String),
    /// Not an export this release can check (missing files, not JSON, another format).
    #[error("{0}")]
    Unreadable(String),
    /// The export does not hold: a broken chain, a signature that does not match, another key.
    #[error("{0}")]
    Broken(String),
}

/// The coordinator's signing key (`--evidence-key`): an OpenSSH ed25519 private key.
pub struct Signer {
    key: PrivateKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public())
    }
}

impl Signer {
    /// Reads the key file; says what is wrong with it in one line.
    pub fn load(path: &Path) -> Result<Signer, EvidenceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EvidenceError::Key(format!("evidence key {}: {e}", path.display())))?;
        let key = PrivateKey::from_openssh(text.trim()).map_err(|e| {
            EvidenceError::Key(format!(
                "evidence key {}: not an OpenSSH private key ({e}); make one with ssh-keygen -t ed25519 -N ''",
                path.display()
            ))
        })?;
        if key.is_encrypted() {
            return Err(EvidenceError::Key(format!(
                "evidence key {}: the key is encrypted with a passphrase; the coordinator signs unattended, give it a key without one",
                path.display()
            )));
        }
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(EvidenceError::Key(format!(
                "evidence key {}: the key is {}, evidence is signed with ed25519 only",
                path.display(),
                key.algorithm()
            )));
        }
        Ok(Signer { key })
    }

    /// A new random key (the demo's; a real cluster gives `--evidence-key`).
    pub fn generate(comment: &str) -> Result<Signer, EvidenceError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).map_err(
            |_| EvidenceError::Key("evidence key: no randomness from the system".into()),
        )?;
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let key = PrivateKey::new(ssh_key::private::KeypairData::Ed25519(pair), comment)
            .map_err(|e| EvidenceError::Key(format!("evidence key: {e}")))?;
        Ok(Signer { key })
    }

    /// The public half, OpenSSH format.
    pub fn public(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// An SSHSIG signature of `data` (PEM armoured, as `ssh-keygen -Y sign` writes).
    pub fn sign(&self, data: &[u8]) -> Result<String, EvidenceError> {
        self.key
            .sign(evidence::NAMESPACE, HashAlg::Sha512, data)
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .map_err(|e| EvidenceError::Key(format!("signing evidence: {e}")))
    }
}

/// An export's files: name and bytes.
pub type Bundle = Vec<(String, Vec<u8>)>;

/// Reads the chain from `db`, checks it up to `head`, selects the window, renders and signs.
/// Runs off the raft thread (the chain may hold many records).
pub fn export(
    db: &redb::Database,
    head: Option<evidence::Head>,
    drills: Vec<evidence::DrillInfo>,
    window: &Window,
    signer: &Signer,
    now_ms: u64,
) -> Result<Bundle, ApiError> {
    let records = crate::history::evidence(db).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let (links, records) = evidence::select(&records, head.as_ref(), window).map_err(|b| {
        ApiError::Refused(format!(
            "the stored evidence chain is broken at {b}; this node's history was altered, export from another coordinator"
        ))
    })?;
    let drills = drills
        .into_iter()
        .filter(|d| window.drill.as_ref().is_none_or(|w| *w == d.name))
        .collect();
    let doc = Export {
        format: evidence::FORMAT,
        generated_at: rfc3339(now_ms),
        since: rfc3339(window.since_ms),
        until: rfc3339(window.until_ms),
        drill: window.drill.clone(),
        signer: signer.public(),
        head,
        links,
        records,
        drills,
    };
    let json = serde_json::to_vec(&doc).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let html = render_html(&doc)
        .map_err(|e| ApiError::Unavailable(format!("rendering the report: {e}")))?
        .into_bytes();
    let sign = |data: &[u8]| {
        signer
            .sign(data)
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    };
    let json_sig = sign(&json)?;
    let html_sig = sign(&html)?;
    Ok(vec![
        (
            ALLOWED_SIGNERS.to_owned(),
            format!(
                "{PRINCIPAL} namespaces=\"{}\" {}\n",
                evidence::NAMESPACE,
                signer.public()
            )
            .into_bytes(),
        ),
        (JSON.to_owned(), json),
        (format!("{JSON}.sig"), json_sig.into_bytes()),
        (HTML.to_owned(), html),
        (format!("{HTML}.sig"), html_sig.into_bytes()),
    ])
}

/// What `evidence verify` found in a directory.
#[derive(Debug)]
pub struct Verified {
    pub records: usize,
    pub links: usize,
    pub signer: String,
}

/// Re-checks an export directory: the chain (naming the first broken link), then each file's
/// signature with the export's key — or with `key` (an OpenSSH public key) when the auditor
/// holds the coordinator's key from elsewhere, which is what makes the check mean something.
pub fn verify_dir(dir: &Path, key: Option<&str>) -> Result<Verified, EvidenceError> {
    use EvidenceError::{Broken, Unreadable};
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| Unreadable(format!("{}: {e}", dir.join(name).display())))
    };
    let json = read(JSON)?;
    let doc: Export = serde_json::from_slice(&json)
        .map_err(|e| Unreadable(format!("{JSON}: not an evidence export ({e})")))?;
    if doc.format != evidence::FORMAT {
        return Err(Unreadable(format!(
            "{JSON}: format {} (this release reads {})",
            doc.format,
            evidence::FORMAT
        )));
    }
    evidence::check_export(&doc)
        .map_err(|b| Broken(format!("{JSON}: the chain is broken at {b}")))?;
    let public = PublicKey::from_openssh(key.unwrap_or(&doc.signer).trim())
        .map_err(|e| Unreadable(format!("signer key: not an OpenSSH public key ({e})")))?;
    if key.is_some() && PublicKey::from_openssh(doc.signer.trim()).ok().as_ref() != Some(&public) {
        return Err(Broken(format!(
            "{JSON}: signed by {}, not by the key given",
            doc.signer.trim()
        )));
    }
    for name in [JSON, HTML] {
        let data = read(name)?;
        let sig_name = format!("{name}.sig");
        let sig = read(&sig_name)?;
        let sig = std::str::from_utf8(&sig)
            .ok()
            .and_then(|s| SshSig::from_pem(s).ok())
            .ok_or_else(|| Broken(format!("{sig_name}: not an SSH signature")))?;
        public
            .verify(evidence::NAMESPACE, &data, &sig)
            .map_err(|_| {
                Broken(format!("{name}: the signature in {sig_name} does not match it (the file was changed after signing, or signed by another key)"))
            })?;
    }
    Ok(Verified {
        records: doc.records.len(),
        links: doc.links.len(),
        signer: doc.signer,
    })
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.min(253_402_300_799_000)),
    )
    .to_string()
}

fn duration(ms: Option<u64>) -> String {
    ms.map_or("–".to_owned(), |ms| {
        humantime::format_duration(std::time::Duration::from_millis(ms / 100 * 100)).to_string()
    })
}

/// One requirement and what the export evidences for it.
struct Requirement {
    framework: &'static str,
    control: &'static str,
    asks: &'static str,
    evidence: String,
}

struct Row {
    seq: u64,
    job: String,
    finished: String,
    what: String,
    artifact: String,
    verdict: &'static str,
    runtime: String,
    place: String,
    rto: String,
    rpo: String,
    targets: String,
    failure: String,
    hash: String,
}

struct Followed {
    failed: String,
    next: String,
}

#[derive(Template)]
#[template(path = "evidence.html")]
struct Report<'a> {
    doc: &'a Export,
    summary: Summary,
    requirements: Vec<Requirement>,
    rows: Vec<Row>,
    followed: Vec<Followed>,
    head: String,
}

fn requirements(s: &Summary, doc: &Export) -> Vec<Requirement> {
    let period = match (s.first_ms, s.last_ms) {
        (Some(a), Some(b)) => format!("from {} to {}", rfc3339(a), rfc3339(b)),
        _ => "none in this period".to_owned(),
    };
    let verdicts = format!(
        "{} verdicts ({} passed, {} failed, {} could not verify) on {} backup artifacts, {period}",
        s.verdicts, s.passed, s.failed, s.errors, s.artifacts
    );
    let targets = format!(
        "RTO met {} times, missed {} (worst {}); RPO met {} times, missed {} (worst {})",
        s.rto_met,
        s.rto_missed,
        duration(s.worst_rto_ms),
        s.rpo_met,
        s.rpo_missed,
        duration(s.worst_rpo_ms)
    );
    let sandboxes = format!(
        "every restore ran in a disposable sandbox ({}) on a Rehearse worker, never on the source system, and was torn down after its checks",
        if s.runtimes.is_empty() {
            "none ran".to_owned()
        } else {
            s.runtimes.join(", ")
        }
    );
    let follow_up = format!(
        "{} verdicts did not pass; each is listed below with the next verdict of the same drill or artifact",
        s.failed + s.errors
    );
    let scheduled = format!(
        "{} scheduled drills ({}) and {} DR exercises",
        s.drills,
        doc.drills
            .iter()
            .map(|d| format!("{}: {} {}", d.name, d.schedule, d.timezone))
            .collect::<Vec<_>>()
            .join("; "),
        s.exercises
    );
    [
        (
            "ISO/IEC 27001:2022",
            "A.8.13 Information backup",
            "backup copies are tested regularly",
            format!("{verdicts}; {scheduled}"),
        ),
        (
            "ISO/IEC 27001:2022",
            "A.5.30 ICT readiness for business continuity",
            "ICT continuity is planned, tested and meets recovery objectives",
            format!("{targets}; {scheduled}"),
        ),
        (
            "SOC 2 (TSC 2017)",
            "A1.3 Recovery plan testing",
            "recovery plan procedures, including backup restoration, are tested",
            format!("{verdicts}; {follow_up}"),
        ),
        (
            "DORA (EU 2022/2554)",
            "Art. 11 Response and recovery",
            "ICT continuity and recovery plans are tested, with recovery time and point objectives",
            format!("{targets}; {follow_up}"),
        ),
        (
            "DORA (EU 2022/2554)",
            "Art. 12 Backup policies, restoration and recovery",
            "backups are tested periodically; restoration uses ICT systems segregated from the source",
            format!("{verdicts}; {sandboxes}"),
        ),
    ]
    .into_iter()
    .map(|(framework, control, asks, evidence)| Requirement {
        framework,
        control,
        asks,
        evidence,
    })
    .collect()
}

fn render_html(doc: &Export) -> Result<String, askama::Error> {
    let summary = evidence::summarize(&doc.records);
    let describe = |r: &Record| {
        let mut what = r.name.clone().unwrap_or_default();
        if let Some(d) = &r.drill {
            what = format!("drill {d}{}", if what.is_empty() { "" } else { ": " }) + &what;
        }
        if let Some(e) = &r.exercise {
            what = format!("exercise {e} {what}");
        }
        if what.is_empty() {
            what = format!("job {}", r.job);
        }
        what
    };
    let rows = doc
        .records
        .iter()
        .map(|r| Row {
            seq: r.seq,
            job: r.job.clone(),
            finished: rfc3339(r.finished_at_ms),
            what: describe(r),
            artifact: r.artifact.clone(),
            verdict: r.verdict.as_str(),
            runtime: r.runtime.clone(),
            place: [r.worker.as_deref(), r.region.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · "),
            rto: duration(r.rto_ms),
            rpo: duration(r.rpo_ms),
            targets: r
                .targets
                .iter()
                .map(|t| {
                    format!(
                        "{} {} / {} {}",
                        t.name,
                        duration(t.observed_ms),
                        duration(Some(t.target_ms)),
                        if t.ok { "met" } else { "missed" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            failure: r.failure.clone().unwrap_or_default(),
            // The first 16 hex digits: enough to find it in the JSON.
            hash: r.hash.chars().take(16).collect(),
        })
        .collect();
    let followed = summary
        .followed
        .iter()
        .map(|(i, next)| {
            let r = &doc.records[*i];
            Followed {
                failed: format!(
                    "#{} {} {} at {}: {}",
                    r.seq,
                    describe(r),
                    r.verdict.as_str(),
                    rfc3339(r.finished_at_ms),
                    r.failure.as_deref().unwrap_or("")
                ),
                next: next.map_or("no later verdict in this period".to_owned(), |n| {
                    let n = &doc.records[n];
                    format!(
                        "#{} {} at {}{}",
                        n.seq,
                        n.verdict.as_str(),
                        rfc3339(n.finished_at_ms),
                        if n.verdict == Verdict::Passed {
                            " (recovered)"
                        } else {
                            ""
                        }
                    )
                }),
            }
        })
        .collect();
    let requirements = requirements(&summary, doc);
    Report {
        doc,
        requirements,
        rows,
        followed,
        head: doc.head.as_ref().map_or("empty".to_owned(), |h| {
            format!("record {} · {}", h.seq, h.hash)
        }),
        summary,
    }
    .render()
}

/// An export made by this node, after a linearizable read (the chain as of now), off the raft
/// thread. Without `--evidence-key` it is refused: an unsigned export proves nothing.
pub async fn export_now(
    node: &crate::handle::NodeHandle,
    signer: Option<&Arc<Signer>>,
    window: Window,
) -> Result<Bundle, ApiError> {
    let Some(signer) = signer.cloned() else {
        return Err(ApiError::Refused(
            "this coordinator has no signing key: start it with --evidence-key FILE (an OpenSSH ed25519 private key; the same on every coordinator)".into(),
        ));
    };
    if window.until_ms <= window.since_ms {
        return Err(ApiError::Invalid(format!(
            "the period is empty: until ({}) is not after since ({})",
            rfc3339(window.until_ms),
            rfc3339(window.since_ms)
        )));
    }
    let (db, head, drills) = match node.read(crate::node::Read::Evidence).await? {
        crate::node::ReadAnswer::Evidence { db, head, drills } => (db, head, drills),
        other => {
            return Err(ApiError::Unavailable(format!(
                "unexpected answer {other:?}"
            )));
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tokio::task::spawn_blocking(move || export(&db, head, drills, &window, &signer, now))
        .await
        .map_err(|e| ApiError::Unavailable(format!("export task: {e}")))?
}
