//! `rehearse verify`: one backup now, from a plan file or from flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rehearse_core::plan::{Plan, RawArtifact, RawCheck, RawPitr, RawPlan, RawPromote, RawTargets};
use rehearse_core::render;
use rehearse_core::report::{Report, Verdict};
use rehearse_worker::Verifier;
use tokio_util::sync::CancellationToken;

use crate::CouldNotVerify;
use crate::args::{Output, SandboxArgs};

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The backup to verify (a path or file:// URL), when no --plan is given.
    #[arg(
        value_name = "ARTIFACT",
        required_unless_present = "plan",
        conflicts_with = "plan"
    )]
    pub(crate) artifact: Option<String>,
    /// Plan file (TOML) saying what to verify and what "good" means.
    #[arg(long, value_name = "PLAN.toml")]
    pub(crate) plan: Option<PathBuf>,
    /// Output format of the report on stdout.
    #[arg(long, short, value_enum, default_value = "human")]
    pub(crate) output: Output,
    /// Engine of the artifact (quick form).
    #[arg(long, default_value = "postgres", conflicts_with = "plan")]
    pub(crate) engine: String,
    /// Expected blake3 of the artifact, 64 hex digits (quick form); a mismatch fails the checksum phase.
    #[arg(long, conflicts_with = "plan")]
    pub(crate) blake3: Option<String>,
    /// SQL whose first value is checked (quick form, repeatable); pairs with --expect in order.
    #[arg(long = "check", value_name = "SQL", conflicts_with = "plan")]
    pub(crate) checks: Vec<String>,
    /// Expectation for the --check at the same position: `>= 1000`, `= 0`, `= 'ok'`.
    #[arg(long = "expect", value_name = "EXPR", conflicts_with = "plan")]
    pub(crate) expects: Vec<String>,
    /// RTO target (quick form), e.g. 15m: exceeded fails the verdict.
    #[arg(long, conflicts_with = "plan")]
    pub(crate) rto: Option<String>,
    /// RPO target (quick form), e.g. 26h; needs --freshness.
    #[arg(long, conflicts_with = "plan")]
    pub(crate) rpo: Option<String>,
    /// Query returning the newest data timestamp, for RPO (quick form).
    #[arg(long, value_name = "SQL", conflicts_with = "plan")]
    pub(crate) freshness: Option<String>,
    /// WAL archive (a directory or s3:// prefix) to recover a base backup from (quick form of
    /// `[pitr] wal_archive`).
    #[arg(long, value_name = "URL", conflicts_with = "plan")]
    pub(crate) wal_archive: Option<String>,
    /// How far to replay the WAL archive: latest, an RFC 3339 time, or "random within 24h".
    #[arg(
        long,
        value_name = "TARGET",
        requires = "wal_archive",
        conflicts_with = "plan"
    )]
    pub(crate) recovery_target: Option<String>,
    /// Recover as a standby and promote it, timing the promotion and a canary write.
    #[arg(long, conflicts_with = "plan")]
    pub(crate) promote: bool,
    /// Limit for the whole verification (quick form) [default: 3h].
    #[arg(long, conflicts_with = "plan")]
    pub(crate) timeout: Option<String>,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

pub(crate) async fn verify(
    args: VerifyArgs,
    cancel: &CancellationToken,
) -> Result<ExitCode, CouldNotVerify> {
    let plan = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read plan {}", path.display()))?;
            Plan::from_toml(&text).with_context(|| format!("plan {}", path.display()))?
        }
        None => quick_plan(&args)?,
    };
    let verifier = Verifier::start(args.sandbox.options()?).await?;
    let report = verify_shown(&verifier, &plan, cancel).await?;
    print_report(&report, args.output)
}

/// Verifies `plan`, with a progress bar on stderr when it is a terminal.
pub(crate) async fn verify_shown(
    verifier: &Verifier,
    plan: &Plan,
    cancel: &CancellationToken,
) -> Result<Report, rehearse_worker::VerifyError> {
    if !crate::progress::wanted() {
        return verifier.verify(plan, cancel).await;
    }
    let (tx, rx) = tokio::sync::watch::channel(None);
    let meter = std::sync::Arc::new(rehearse_worker::progress::Meter::drawn());
    let drawn = crate::progress::verification(rx, meter.clone());
    let report = verifier.verify_metered(plan, cancel, tx, meter).await;
    drawn.finish().await;
    report
}

pub(crate) fn quick_plan(args: &VerifyArgs) -> anyhow::Result<Plan> {
    let artifact = args
        .artifact
        .clone()
        .context("give an ARTIFACT or --plan")?;
    if args.checks.len() != args.expects.len() {
        anyhow::bail!(
            "each --check needs an --expect (got {} --check and {} --expect)",
            args.checks.len(),
            args.expects.len()
        );
    }
    let checks = args
        .checks
        .iter()
        .zip(&args.expects)
        .enumerate()
        .map(|(i, (sql, expect))| RawCheck {
            name: format!("check {}", i + 1),
            sql: sql.clone(),
            expect: expect.clone(),
            database: None,
        })
        .collect();
    let has_targets = args.rto.is_some() || args.rpo.is_some() || args.freshness.is_some();
    let raw = RawPlan {
        name: None,
        timeout: args.timeout.clone(),
        artifact: RawArtifact {
            url: artifact,
            engine: args.engine.clone(),
            blake3: args.blake3.clone(),
            ..RawArtifact::default()
        },
        targets: has_targets.then(|| RawTargets {
            rto: args.rto.clone(),
            rpo: args.rpo.clone(),
            freshness: args.freshness.clone(),
            promote: None,
        }),
        checks,
        builtin: None,
        placement: None,
        max_attempts: None,
        sandbox: None,
        files: None,
        pitr: args.wal_archive.as_ref().map(|url| RawPitr {
            wal_archive: url.clone(),
            target: args.recovery_target.clone(),
            profile: None,
        }),
        promote: args.promote.then(RawPromote::default),
        export: None,
    };
    Ok(Plan::from_raw(raw)?)
}

pub(crate) fn print_report(report: &Report, output: Output) -> Result<ExitCode, CouldNotVerify> {
    let text = match output {
        Output::Human => render::human(report),
        Output::Json => serde_json::to_string_pretty(report).context("write JSON report")? + "\n",
        Output::Junit => render::junit(report),
    };
    print!("{text}");
    if report.verdict == Verdict::Error
        && let Some(f) = &report.failure
    {
        // Said once more on stderr, in one line, for scripts that only keep that.
        eprintln!(
            "rehearse: could not verify (in {}): {}",
            f.phase,
            f.reason.replace('\n', " ")
        );
    }
    Ok(ExitCode::from(report.verdict.exit_code()))
}
