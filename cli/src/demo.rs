//! `rehearse demo`: a sample database dumped with the real pg_dump and verified, or with
//! `--fleet N` an in-process cluster with workers and a drill ticking (see `demo_fleet`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rehearse_core::report::Verdict;
use rehearse_worker::sample::{self, DumpFormat, SampleDatabase};
use rehearse_worker::{Verifier, VerifyError};
use tokio_util::sync::CancellationToken;

use crate::args::{Output, SandboxArgs};
use crate::verify::print_report;
use crate::{CouldNotVerify, demo_fleet};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of orders in the sample database (customers: a tenth of it).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) orders: u32,
    /// Output format of the report on stdout.
    #[arg(long, short, value_enum, default_value = "human")]
    pub(crate) output: Output,
    /// Keep the sample dump and its plan in this directory instead of a temp dir.
    #[arg(long)]
    pub(crate) keep: Option<PathBuf>,
    /// Then run the dump as a drill firing every 10 s on an in-process fleet (three coordinators
    /// in two regions, a worker in each), until this many runs passed (0: skip; the demo script
    /// uses 3).
    #[arg(long, default_value_t = 0)]
    pub(crate) fleet: usize,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
}

pub(crate) async fn demo(
    args: DemoArgs,
    cancel: &CancellationToken,
) -> Result<ExitCode, CouldNotVerify> {
    let verifier = Verifier::start(args.sandbox.options()?).await?;
    let (dir, _temp) = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rehearse-demo-")
                .tempdir()
                .context("create demo dir")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let dump = dir.join("shop.dump");
    let human = args.output == Output::Human;
    if human {
        eprintln!(
            "rehearse demo: creating a sample shop database with {} orders…",
            args.orders
        );
    }
    let made = tokio::select! {
        made = make_sample(&verifier, args.orders, &dump) => made,
        () = cancel.cancelled() => return Err(VerifyError::Interrupted.into()),
    };
    made.map_err(|e| anyhow::anyhow!("demo: {e}"))?;
    let digest = rehearse_worker::artifact::checksum::hash_file(&dump)
        .context("hash the sample dump")?
        .0;
    let plan = sample::demo_plan(&dump, args.orders, Some(digest.to_hex().to_string()));
    let plan_text = plan.to_toml();
    std::fs::write(dir.join("plan.toml"), &plan_text).context("write demo plan")?;
    if human {
        eprintln!(
            "rehearse demo: dumped it with pg_dump to {}; verifying with this plan:\n",
            dump.display()
        );
        eprintln!(
            "{}",
            plan_text
                .trim_end()
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        eprintln!();
    }
    let report = crate::verify::verify_shown(&verifier, &plan, cancel).await?;
    let code = print_report(&report, args.output)?;
    if args.fleet > 0 && report.verdict == Verdict::Passed {
        // Its own dir, open to the sandbox user (the workers' sandboxes live inside it).
        let fleet_dir = tempfile::Builder::new()
            .prefix("rehearse-demo-fleet-")
            .tempdir()
            .context("create the demo fleet's dir")?;
        std::fs::set_permissions(
            fleet_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .context("open the demo fleet's dir")?;
        let plan_file = fleet_dir.path().join("shop.toml");
        std::fs::write(&plan_file, &plan_text).context("write the drill's plan")?;
        demo_fleet::run(
            fleet_dir.path(),
            &plan_file,
            args.sandbox.run.runtime.choice(),
            args.fleet,
            args.keep.as_ref().map(|k| k.join("evidence")),
            cancel,
        )
        .await?;
    }
    if human && args.keep.is_some() {
        eprintln!(
            "\nrehearse demo: kept {} — run it again with: rehearse verify --plan {}",
            dump.display(),
            dir.join("plan.toml").display()
        );
    }
    Ok(code)
}

pub(crate) async fn make_sample(
    verifier: &Verifier,
    orders: u32,
    dump: &std::path::Path,
) -> Result<(), String> {
    let db = SampleDatabase::create(verifier, orders).await?;
    let dumped = db.dump(DumpFormat::Custom, dump).await;
    let stopped = db.stop().await;
    dumped.and(stopped)
}
