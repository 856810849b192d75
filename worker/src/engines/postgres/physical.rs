//! Physical backups: a `pg_basebackup` (plain `-Fp` directory, or `-Ft` with `base.tar[.gz|.zst]`
//! and `pg_wal.tar` beside a `backup_manifest`), recovered in the sandbox from its own WAL or,
//! with `[pitr]`, from a WAL archive up to a target; with `[promote]`, as a standby that the
//! worker promotes on the clock.
//!
//! The sandbox still has no network: the worker lists the archive, checks that its segments
//! form an unbroken chain from the backup's start ([`rehearse_core::wal::chain`]), and fetches,
//! hashes and decompresses each into the sandbox's `wal/` dir, a little ahead of replay. The
//! server's `restore_command` is a small script that waits for the worker to hand a segment
//! over, and answers "no such file" once the worker has handed everything.
//!
//! What the backup's own configuration says is not used: the server runs with the sandbox's
//! settings (its own `config_file`, `hba_file`, no archiving, no preloaded libraries);
//! `postgresql.auto.conf` is kept aside as `postgresql.auto.conf.source`. The hot-standby
//! settings that must be at least the source's (`max_connections`, …) come from the backup's
//! control file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rehearse_core::plan::{Plan, RecoveryTarget};
use rehearse_core::report::{PromotionReport, RecoveryReport, utc_rfc3339};
use rehearse_core::wal::{self, BackupLabel, Chain, Lsn, Segment, WalRange};
use tokio_postgres::SimpleQueryMessage;

use super::binaries::Installed;
use super::cluster::PgCluster;
use super::inspect::{connect, db_message};
use crate::artifact::{ArtifactSource, SourceError, source_for};
use crate::engines::Stop;
use crate::engines::stream::{Compression, Hashing, decoder};
use crate::sandbox::ProcessRuntime;

/// Segments handed over ahead of the last one recovery asked for.
const AHEAD: u64 = 32;
/// How long a standby's replay position must stand still to count as caught up, when there is
/// no archive to say where its end is.
const SETTLED: Duration = Duration::from_millis(800);

/// How a base backup is laid out.
#[derive(Debug, Clone)]
pub enum Layout {
    /// `pg_basebackup -Fp`: the data directory itself.
    Plain(PathBuf),
    /// `pg_basebackup -Ft`: `base.tar` (maybe compressed), `pg_wal.tar` unless `-X none` or
    /// `-X fetch`, and `backup_manifest`.
    Tar {
        base: (PathBuf, Compression),
        wal: Option<(PathBuf, Compression)>,
        manifest: Option<PathBuf>,
    },
}

impl Layout {
    pub fn describe(&self) -> String {
        match self {
            Layout::Plain(_) => "pg_basebackup plain".into(),
            Layout::Tar { base, wal, .. } => format!(
                "pg_basebackup tar{}{}",
                match base.1 {
                    Compression::None => String::new(),
                    c => format!(" ({})", c.as_str()),
                },
                if wal.is_some() {
                    ", with pg_wal.tar"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Whether a directory artifact is a base backup, and how it is laid out.
pub fn detect(dir: &Path) -> Option<Layout> {
    if dir.join("backup_label").is_file() && dir.join("PG_VERSION").is_file() {
        return Some(Layout::Plain(dir.to_owned()));
    }
    let find = |stem: &str| {
        [
            ("", Compression::None),
            (".gz", Compression::Gzip),
            (".zst", Compression::Zstd),
        ]
        .into_iter()
        .map(|(ext, c)| (dir.join(format!("{stem}{ext}")), c))
        .find(|(p, _)| p.is_file())
    };
    let base = find("base.tar")?;
    Some(Layout::Tar {
        base,
        wal: find("pg_wal.tar"),
        manifest: Some(dir.join("backup_manifest")).filter(|p| p.is_file()),
    })
}

/// The WAL archive's segments being handed to the sandbox.
struct Feeder {
    task: tokio::task::JoinHandle<Result<Fed, String>>,
    stop: Arc<AtomicBool>,
}

/// What the feeder handed over.
#[derive(Debug, Default, Clone)]
struct Fed {
    digest: String,
}

/// One base backup's recovery in a sandbox.
pub struct Recovery {
    pub layout: Layout,
    label: Option<BackupLabel>,
    range: Option<WalRange>,
    chain: Option<Chain>,
    feeder: Option<Feeder>,
    segment_bytes: u64,
    /// The target recovery stops at, resolved (a random one chosen).
    target: RecoveryTarget,
    standby: bool,
    /// Who the server runs as (uid, gid): the sandbox user, or the image's server user;
    /// `None` when the worker is not root (everything is its own already).
    pub owner: Option<(u32, u32)>,
}

impl Drop for Recovery {
    fn drop(&mut self) {
        if let Some(f) = self.feeder.take() {
            f.stop.store(true, Ordering::Relaxed);
            f.task.abort();
        }
    }
}

impl Recovery {
    pub fn new(layout: Layout) -> Recovery {
        Recovery {
            layout,
            label: None,
            range: None,
            chain: None,
            feeder: None,
            segment_bytes: wal::DEFAULT_SEGMENT_BYTES,
            target: RecoveryTarget::Latest,
            standby: false,
            owner: None,
        }
    }

    /// Puts the backup's files in the sandbox's data dir and reads what it is: the major
    /// version (returned, to choose binaries), the label, the manifest's WAL range.
    pub async fn lay_out(&mut self, cluster: &PgCluster, plan: &Plan) -> Result<u32, Stop> {
        let data = cluster.data_dir();
        let layout = self.layout.clone();
        let limits = rehearse_core::untar::Limits {
            max_bytes: plan.sandbox.disk_bytes,
            max_entries: u64::MAX,
        };
        let into = data.clone();
        tokio::task::spawn_blocking(move || lay_out(&layout, &into, limits))
            .await
            .map_err(|e| Stop::Cannot(format!("extraction task failed: {e}")))??;
        // The server user's from here on: its tools read it, its server runs on it.
        crate::sandbox::give_tree(self.owner, &data)
            .map_err(|e| Stop::Cannot(format!("sandbox data dir: {e}")))?;
        let version = std::fs::read_to_string(data.join("PG_VERSION"))
            .map_err(|_| Stop::Failed("the base backup has no PG_VERSION file".into()))?;
        let major: u32 = version.trim().parse().map_err(|_| {
            Stop::Failed(format!(
                "the base backup's PG_VERSION says {:?}, not a PostgreSQL major version",
                version.trim()
            ))
        })?;
        let label = std::fs::read_to_string(data.join("backup_label")).map_err(|_| {
            Stop::Failed(
                "the base backup has no backup_label: not a base backup, or one taken without pg_basebackup / pg_backup_start".into(),
            )
        })?;
        self.label = Some(wal::parse_backup_label(&label).map_err(Stop::Failed)?);
        self.range = std::fs::read_to_string(data.join("backup_manifest"))
            .ok()
            .and_then(|m| wal::manifest_wal_range(&m));
        let map = data.join("tablespace_map");
        if std::fs::metadata(&map).is_ok_and(|m| m.len() > 0) {
            return Err(Stop::Cannot(
                "the base backup has tablespaces (tablespace_map); this worker restores only backups without them".into(),
            ));
        }
        Ok(major)
    }

    /// Checks the files against `backup_manifest` with `pg_verifybackup`, when the backup
    /// has a manifest; `Ok(note)` says what was checked.
    pub async fn verify_manifest(
        &self,
        cluster: &PgCluster,
        rt: &ProcessRuntime,
    ) -> Result<String, Stop> {
        let data = cluster.data_dir();
        if !data.join("backup_manifest").is_file() {
            return Ok("the base backup has no backup_manifest: its files were not checked against one (the recovery still replays and checks its WAL)".into());
        }
        let has_wal = has_own_wal(&data);
        let mut args: Vec<std::ffi::OsString> = vec!["--quiet".into()];
        if !has_wal {
            // -X none: the WAL is in the archive, checked by the replay itself.
            args.push("--no-parse-wal".into());
        }
        args.push(cluster.seen(&data).into());
        let (ok, _, stderr) = cluster
            .run_server_tool(rt, "pg_verifybackup", args)
            .await
            .map_err(|e| Stop::Cannot(format!("run pg_verifybackup: {e}")))?;
        if ok {
            return Ok(format!(
                "pg_verifybackup: every file matches backup_manifest{}",
                if has_wal {
                    ", and the WAL it needs parses"
                } else {
                    ""
                }
            ));
        }
        let text = stderr;
        let findings: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        if text.contains("Permission denied") || text.contains("No space left") {
            return Err(Stop::Cannot(format!(
                "pg_verifybackup could not read the laid-out backup: {}",
                findings.join("; ")
            )));
        }
        Err(Stop::Failed(format!(
            "the base backup does not match its backup_manifest: {}",
            findings.join("; ")
        )))
    }

    /// Settles the server's configuration (the backup's own kept aside), the recovery signal,
    /// and — with `[pitr]` — lists the archive and starts handing its segments over. Returns
    /// the settings the server starts with.
    pub async fn prepare(
        &mut self,
        cluster: &PgCluster,
        rt: &ProcessRuntime,
        plan: &Plan,
        sources: &crate::artifact::Sources,
    ) -> Result<Vec<(String, String)>, Stop> {
        let data = cluster.data_dir();
        // Side files (config, the WAL hand-over) on the host, named as the server sees them.
        let (dir, _) = cluster.side_dir();
        let seen = |p: &Path| cluster.seen(p).display().to_string();
        let control = controldata(cluster, rt).await?;
        if let Some(bytes) = control
            .get("Bytes per WAL segment")
            .and_then(|v| v.parse().ok())
        {
            self.segment_bytes = bytes;
        }
        let io = |e: std::io::Error| Stop::Cannot(format!("sandbox data dir: {e}"));
        let auto = data.join("postgresql.auto.conf");
        if auto.is_file() {
            std::fs::rename(&auto, data.join("postgresql.auto.conf.source")).map_err(io)?;
        }
        std::fs::write(&auto, "").map_err(io)?;
        for stale in ["standby.signal", "recovery.signal", "postmaster.pid"] {
            let _ = std::fs::remove_file(data.join(stale));
        }
        std::fs::write(dir.join("rehearse.conf"), "").map_err(io)?;
        std::fs::write(dir.join("rehearse_hba.conf"), "local all all trust\n").map_err(io)?;
        std::fs::write(dir.join("rehearse_ident.conf"), "").map_err(io)?;
        let mut settings: Vec<(String, String)> = vec![
            ("config_file".into(), seen(&dir.join("rehearse.conf"))),
            ("hba_file".into(), seen(&dir.join("rehearse_hba.conf"))),
            ("ident_file".into(), seen(&dir.join("rehearse_ident.conf"))),
            // Replica-level WAL: a standby must be able to run read-only queries.
            ("wal_level".into(), "replica".into()),
            ("shared_preload_libraries".into(), String::new()),
            (
                "hot_standby".into(),
                if plan.promote.is_some() { "on" } else { "off" }.into(),
            ),
        ];
        // A hot standby needs these at least as high as on the source.
        for (control_key, setting, ours) in [
            ("max_connections setting", "max_connections", 32u64),
            ("max_worker_processes setting", "max_worker_processes", 8),
            ("max_wal_senders setting", "max_wal_senders", 0),
            ("max_prepared_xacts setting", "max_prepared_transactions", 0),
            (
                "max_locks_per_xact setting",
                "max_locks_per_transaction",
                64,
            ),
        ] {
            let source = control
                .get(control_key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            settings.push((setting.into(), source.max(ours).to_string()));
        }
        self.standby = plan.promote.is_some();
        let signal = match (&plan.pitr, self.standby) {
            (_, true) => Some("standby.signal"),
            (Some(_), false) => Some("recovery.signal"),
            (None, false) => None,
        };
        if let Some(signal) = signal {
            std::fs::write(data.join(signal), "").map_err(io)?;
        }
        if let Some(pitr) = &plan.pitr {
            let label = self
                .label
                .clone()
                .ok_or_else(|| Stop::Cannot("the backup was not laid out".into()))?;
            let start = Segment {
                timeline: label.timeline,
                segno: label.start.segno(self.segment_bytes),
            };
            let profile = pitr.profile.as_deref().or(plan.artifact.profile.as_deref());
            let source = source_for(&pitr.wal_archive, profile, sources).map_err(|e| match e {
                SourceError::Plan(r) => Stop::Failed(format!("pitr.wal_archive: {r}")),
                SourceError::Worker(r) => Stop::Cannot(r),
            })?;
            let listed = source
                .list(&pitr.wal_archive)
                .await
                .map_err(|r| Stop::Failed(format!("the WAL archive cannot be read: {r}")))?;
            let names: Vec<String> = listed.iter().map(|c| c.key.clone()).collect();
            let chain = wal::chain(&names, start, self.segment_bytes);
            if chain.segments.is_empty() && !has_own_wal(&data) {
                return Err(Stop::Failed(match &chain.gap {
                    Some(gap) => format!("{gap}; the base backup cannot be recovered"),
                    None => format!(
                        "the WAL archive {} holds no segment from the base backup's start ({}) on: it cannot be recovered",
                        pitr.wal_archive, label.start_segment
                    ),
                }));
            }
            self.target = match pitr.target {
                RecoveryTarget::RandomWithin(span) => {
                    let newest_but_one = {
                        let mut times: Vec<i64> = listed
                            .iter()
                            .filter(|c| {
                                matches!(
                                    wal::classify(&c.key, self.segment_bytes).0,
                                    wal::Entry::Segment(_)
                                )
                            })
                            .map(|c| c.modified_ms)
                            .collect();
                        times.sort_unstable();
                        times.iter().rev().nth(1).copied()
                    };
                    RecoveryTarget::Time(random_target(&label, span, newest_but_one)?)
                }
                t => t,
            };
            let wal_dir = dir.join("wal");
            std::fs::create_dir(&wal_dir).map_err(io)?;
            let script = dir.join("restore-wal");
            std::fs::write(
                &script,
                restore_script(
                    &cluster.seen(&wal_dir),
                    &cluster.seen(&dir.join("wal-asked")),
                ),
            )
            .map_err(io)?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                    .map_err(io)?;
            }
            settings.push(("restore_command".into(), format!("{} %f %p", seen(&script))));
            settings.push(("recovery_target_timeline".into(), "latest".into()));
            if let RecoveryTarget::Time(ms) = self.target {
                settings.push(("recovery_target_time".into(), pg_timestamp(ms)));
                settings.push((
                    "recovery_target_action".into(),
                    if self.standby { "pause" } else { "promote" }.into(),
                ));
            }
            self.feeder = Some(start_feeder(
                source,
                pitr.wal_archive.clone(),
                &chain,
                wal_dir,
                dir.join("wal-asked"),
                self.segment_bytes,
                self.owner,
            ));
            self.chain = Some(chain);
        }
        crate::sandbox::give_tree(self.owner, &dir)
            .map_err(|e| Stop::Cannot(format!("sandbox data dir: {e}")))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        Ok(settings)
    }

    /// After the server accepted connections: waits for the end of recovery (a standby: for
    /// the end of the archive, or the target), and reports what was replayed. `Err` is the
    /// verdict when recovery fell short.
    pub async fn finish(
        &mut self,
        cluster: &mut PgCluster,
        plan: &Plan,
    ) -> Result<RecoveryReport, Stop> {
        let client = loop {
            match connect(&cluster.socket_dir(), "postgres").await {
                Ok(client) => break client,
                // Still recovering: the socket is up before connections are let in.
                Err(e) if e.contains("not accepting connections") || e.contains("starting up") => {
                    if let Some(how) = cluster.exited().await {
                        return Err(self.explain_exit(cluster, plan, &how));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    if let Some(how) = cluster.exited().await {
                        return Err(self.explain_exit(cluster, plan, &how));
                    }
                    return Err(Stop::Cannot(format!("the recovered server: {e}")));
                }
            }
        };
        if self.standby {
            self.wait_caught_up(&client, cluster).await?;
        }
        let fed = match self.feeder.take() {
            Some(f) => {
                f.stop.store(true, Ordering::Relaxed);
                match tokio::time::timeout(Duration::from_secs(30), f.task).await {
                    Ok(Ok(Ok(fed))) => Some(fed),
                    Ok(Ok(Err(reason))) => return Err(Stop::Failed(reason)),
                    _ => None,
                }
            }
            None => None,
        };
        let row = query_row(
            &client,
            "SELECT pg_last_wal_replay_lsn()::text, \
                    (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000)::bigint::text, \
                    (SELECT timeline_id FROM pg_control_checkpoint())::text",
        )
        .await
        .map_err(Stop::Cannot)?;
        let replayed = row.first().cloned().flatten().and_then(|l| Lsn::parse(&l));
        let last_commit_ms = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|v| v.parse::<i64>().ok());
        let timeline = if self.standby {
            row.get(2).cloned().flatten().and_then(|v| v.parse().ok())
        } else {
            current_timeline(&client).await
        };
        let label = self.label.clone().unwrap_or_default();
        let asked = asked(&cluster.side_dir().0);
        let mut report = RecoveryReport {
            label: label.label.clone(),
            start_lsn: label.start.to_string(),
            end_lsn: self.range.map(|r| r.end.to_string()),
            start_timeline: label.timeline,
            wal_archive: plan.pitr.as_ref().map(|p| p.wal_archive.clone()),
            segments_available: self.chain.as_ref().map_or(0, |c| c.available),
            segments_replayed: asked,
            wal_blake3: fed.as_ref().map(|f| f.digest.clone()),
            target: match self.target {
                RecoveryTarget::Time(ms) => utc_rfc3339(ms),
                _ => "latest".into(),
            },
            target_reached: true,
            last_replayed_lsn: replayed.map(|l| l.to_string()),
            last_commit_at: last_commit_ms.map(utc_rfc3339),
            timeline,
            promotion: None,
        };
        let log = cluster.server_log();
        if let Some(chain) = &self.chain {
            let stopped_in = replayed.map(|l| l.segno(self.segment_bytes));
            let last = chain.last().map(|s| s.segno);
            let short_of_archive =
                matches!((stopped_in, last), (Some(at), Some(last)) if at < last);
            let when = format!(
                "at {}{}",
                replayed.map_or_else(|| "its start".to_owned(), |l| l.to_string()),
                last_commit_ms.map_or_else(
                    || " (no transaction replayed)".to_owned(),
                    |ms| format!(" (last commit {})", utc_rfc3339(ms)),
                )
            );
            if let Some(gap) = &chain.gap {
                report.target_reached = false;
                let lost = match self.target {
                    RecoveryTarget::Time(t) => last_commit_ms.map_or(String::new(), |c| {
                        format!(
                            ", {} before the target",
                            rehearse_core::report::human_ms(t.saturating_sub(c).unsigned_abs())
                        )
                    }),
                    _ => format!(
                        "; {} archived segments after the hole were never replayed",
                        chain.available - chain.segments.len() as u64
                    ),
                };
                return Err(Stop::Failed(format!(
                    "{gap}; recovery stopped {when}{lost}"
                )));
            }
            if matches!(self.target, RecoveryTarget::Latest) && short_of_archive {
                report.target_reached = false;
                let segment = stopped_in
                    .map(|s| {
                        Segment {
                            timeline: label.timeline,
                            segno: s,
                        }
                        .name(self.segment_bytes)
                    })
                    .unwrap_or_default();
                let why = cluster.recovery_lines(2).join("; ");
                return Err(Stop::Failed(format!(
                    "recovery stopped {when} in WAL {segment}, short of the archive's last segment {}: the WAL there is damaged ({why})",
                    chain
                        .segments
                        .last()
                        .map(|(_, n)| n.as_str())
                        .unwrap_or_default()
                )));
            }
            if let RecoveryTarget::Time(_) = self.target {
                report.target_reached =
                    log.contains("recovery stopping") || log.contains("recovery has paused");
            }
        }
        Ok(report)
    }

    /// Why the server stopped during recovery (it exited before accepting connections): the
    /// archive's hole if it has one, the target not reached, WAL the backup lacks, or what the
    /// server said. `Stop::Tool`: a sandbox fault (disk, memory) in the log makes it `error`.
    pub fn explain_exit(&self, cluster: &PgCluster, plan: &Plan, how: &str) -> Stop {
        let said = cluster.recovery_lines(3).join("; ");
        let log = cluster.server_log();
        if let Some(gap) = self.chain.as_ref().and_then(|c| c.gap.as_ref()) {
            return Stop::Failed(format!("{gap}; recovery stopped there ({said})"));
        }
        if log.contains("recovery ended before configured recovery target was reached") {
            if plan
                .pitr
                .as_ref()
                .is_some_and(|p| matches!(p.target, RecoveryTarget::RandomWithin(_)))
            {
                return Stop::Cannot(format!(
                    "the random target {} fell after the archive's last commit: the whole archive replayed without a hole, but a later instant cannot be reached (another run picks another)",
                    match self.target {
                        RecoveryTarget::Time(ms) => utc_rfc3339(ms),
                        _ => String::new(),
                    }
                ));
            }
            return Stop::Failed(format!(
                "recovery ended before the target {}: the archive holds no commit that late ({said})",
                match self.target {
                    RecoveryTarget::Time(ms) => utc_rfc3339(ms),
                    _ => "latest".into(),
                }
            ));
        }
        if plan.pitr.is_none() && !has_own_wal(&cluster.data_dir()) {
            return Stop::Failed(format!(
                "the base backup holds no WAL (taken with -X none?) and the plan has no [pitr] wal_archive to recover it from ({said})"
            ));
        }
        // A setting the sandbox gave it, or a library it lacks: the worker's fault, not the backup's.
        if [
            "invalid value for parameter",
            "could not access file",
            "configuration file",
        ]
        .iter()
        .any(|k| log.contains(k))
        {
            return Stop::Cannot(format!(
                "the server could not start on the backup ({how}): {said}"
            ));
        }
        Stop::Tool(format!(
            "the server stopped during recovery ({how}): {said}"
        ))
    }

    /// A standby has replayed all it can: the archive's end (the worker handed everything and
    /// it asked for more), its target (paused), or — without an archive — its own WAL.
    async fn wait_caught_up(
        &self,
        client: &tokio_postgres::Client,
        cluster: &mut PgCluster,
    ) -> Result<(), Stop> {
        let (side, _) = cluster.side_dir();
        let done = side.join("wal").join(".done");
        let missing = side.join("wal-missing");
        let mut last = None;
        let mut still_since = Instant::now();
        loop {
            if let Some(how) = cluster.exited().await {
                return Err(Stop::Failed(format!(
                    "the standby stopped during recovery ({how}): {}",
                    cluster.recovery_lines(3).join("; ")
                )));
            }
            if let Some(f) = &self.feeder
                && f.task.is_finished()
                && !done.exists()
            {
                // The feeder failed: its reason is read in `finish`.
                return Ok(());
            }
            if self.feeder.is_some() {
                // Asked for a segment after the worker handed the last: replay is at the end.
                let asked_past_end = std::fs::read_to_string(&missing)
                    .is_ok_and(|t| t.lines().any(|l| l.len() == 24));
                if done.exists() && asked_past_end {
                    return Ok(());
                }
                if matches!(self.target, RecoveryTarget::Time(_)) {
                    let paused = query_row(client, "SELECT pg_get_wal_replay_pause_state()")
                        .await
                        .ok()
                        .and_then(|r| r.first().cloned().flatten());
                    if paused.as_deref() == Some("paused") {
                        return Ok(());
                    }
                }
            } else {
                let at = query_row(client, "SELECT pg_last_wal_replay_lsn()::text")
                    .await
                    .ok()
                    .and_then(|r| r.first().cloned().flatten());
                if at != last {
                    last = at;
                    still_since = Instant::now();
                } else if still_since.elapsed() >= SETTLED {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Promotes the standby: `pg_promote(wait, timeout)` under the worker's own deadline, then
    /// the canary write.
    pub async fn promote(
        &mut self,
        cluster: &PgCluster,
        plan: &Plan,
    ) -> Result<PromotionReport, Stop> {
        let client = connect(&cluster.socket_dir(), "postgres")
            .await
            .map_err(|e| Stop::Cannot(format!("the standby: {e}")))?;
        let old = query_row(
            &client,
            "SELECT timeline_id::text FROM pg_control_checkpoint()",
        )
        .await
        .map_err(Stop::Cannot)?
        .first()
        .cloned()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
        let began = Instant::now();
        let promoted = query_row(&client, "SELECT pg_promote(true, 60)::text")
            .await
            .map_err(|e| Stop::Failed(format!("pg_promote failed: {e}")))?;
        if promoted.first().cloned().flatten().as_deref() != Some("true") {
            return Err(Stop::Failed(format!(
                "the standby did not promote within 60 s: {}",
                cluster.recovery_lines(2).join("; ")
            )));
        }
        loop {
            let in_recovery = query_row(&client, "SELECT pg_is_in_recovery()::text")
                .await
                .map_err(Stop::Cannot)?;
            if in_recovery.first().cloned().flatten().as_deref() == Some("false") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let promoted_ms = began.elapsed().as_millis() as u64;
        let canary_ms = if plan.promote.is_some_and(|p| p.canary) {
            client
                .batch_execute(
                    "CREATE TABLE rehearse_canary (at timestamptz NOT NULL DEFAULT now()); \
                     INSERT INTO rehearse_canary DEFAULT VALUES; DROP TABLE rehearse_canary",
                )
                .await
                .map_err(|e| {
                    Stop::Failed(format!(
                        "the promoted server refused the canary write: {}",
                        db_message(&e)
                    ))
                })?;
            Some(began.elapsed().as_millis() as u64)
        } else {
            None
        };
        let new = current_timeline(&client).await.unwrap_or(0);
        Ok(PromotionReport {
            promoted_ms,
            canary_ms,
            old_timeline: old,
            new_timeline: new,
        })
    }
}

/// The timeline the server writes on (a primary).
async fn current_timeline(client: &tokio_postgres::Client) -> Option<u32> {
    let row = query_row(client, "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .await
        .ok()?;
    let name = row.first().cloned().flatten()?;
    u32::from_str_radix(name.get(..8)?, 16).ok()
}

/// The values of the first row of a query, as text.
async fn query_row(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Option<String>>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| db_message(&e))?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default())
}

/// `pg_controldata` of the laid-out backup: "key: value" pairs.
async fn controldata(
    cluster: &PgCluster,
    rt: &ProcessRuntime,
) -> Result<std::collections::BTreeMap<String, String>, Stop> {
    let (ok, stdout, stderr) = cluster
        .run_server_tool(
            rt,
            "pg_controldata",
            vec![cluster.seen(&cluster.data_dir()).into()],
        )
        .await
        .map_err(|e| Stop::Cannot(format!("run pg_controldata: {e}")))?;
    if !ok {
        return Err(Stop::Failed(format!(
            "the base backup's control file cannot be read: {}",
            stderr.trim()
        )));
    }
    Ok(stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// Copies or extracts the backup into `data` (which does not exist yet).
fn lay_out(layout: &Layout, data: &Path, limits: rehearse_core::untar::Limits) -> Result<(), Stop> {
    let stop = AtomicBool::new(false);
    let spec = rehearse_core::plan::FilesSpec {
        limits,
        ..Default::default()
    };
    std::fs::create_dir_all(data).map_err(|e| Stop::Cannot(format!("sandbox data dir: {e}")))?;
    match layout {
        Layout::Plain(dir) => {
            let out = std::process::Command::new("cp")
                .arg("-a")
                .arg("--")
                .arg(format!("{}/.", dir.display()))
                .arg(data)
                .output()
                .map_err(|e| Stop::Cannot(format!("run cp: {e}")))?;
            if !out.status.success() {
                return Err(Stop::Cannot(format!(
                    "copy the base backup into the sandbox: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Layout::Tar {
            base,
            wal,
            manifest,
        } => {
            crate::engines::untar::extract(&base.0, base.1, data, &spec, &stop)
                .map_err(|r| Stop::Failed(format!("base.tar: {r}")))?;
            if let Some((wal_tar, c)) = wal {
                let pg_wal = data.join("pg_wal");
                std::fs::create_dir_all(&pg_wal)
                    .map_err(|e| Stop::Cannot(format!("sandbox data dir: {e}")))?;
                crate::engines::untar::extract(wal_tar, *c, &pg_wal, &spec, &stop)
                    .map_err(|r| Stop::Failed(format!("pg_wal.tar: {r}")))?;
            }
            if let Some(m) = manifest {
                std::fs::copy(m, data.join("backup_manifest"))
                    .map_err(|e| Stop::Cannot(format!("copy backup_manifest: {e}")))?;
            }
        }
    }
    for dir in ["pg_wal", "pg_wal/archive_status"] {
        std::fs::create_dir_all(data.join(dir))
            .map_err(|e| Stop::Cannot(format!("sandbox data dir: {e}")))?;
    }
    Ok(())
}

/// The server's `restore_command`: waits until the worker has handed `%f` over (or has handed
/// everything: then "no such file", which recovery takes as the archive's end), copies it to
/// `%p`, and notes the name. Histories wait only for the histories.
fn restore_script(wal_dir: &Path, asked: &Path) -> String {
    let missing = asked.with_file_name("wal-missing");
    format!(
        "#!/bin/sh\n\
         # rehearse: hands recovery the WAL the worker fetched, hashed and checked\n\
         d='{d}'\n\
         case \"$1\" in *.history) marker=\"$d/.histories\" ;; *) marker=\"$d/.done\" ;; esac\n\
         while :; do\n\
           if [ -f \"$d/$1\" ]; then echo \"$1\" >> '{asked}'; ln -f \"$d/$1\" \"$2\" 2>/dev/null && exit 0; exec cp \"$d/$1\" \"$2\"; fi\n\
           if [ -f \"$marker\" ]; then echo \"$1\" >> '{missing}'; exit 1; fi\n\
           sleep 0.02\n\
         done\n",
        d = wal_dir.display(),
        asked = asked.display(),
        missing = missing.display(),
    )
}

/// How many distinct segments recovery was handed.
fn asked(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("wal-asked"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.len() == 24)
        .collect::<BTreeSet<_>>()
        .len() as u64
}

/// A random instant from the backup's start to `span` after it, no later than when the
/// archive's newest segment but one was archived (the newest may hold no commit after it, and a
/// target past the last commit is never reached).
fn random_target(
    label: &BackupLabel,
    span: Duration,
    newest_but_one: Option<i64>,
) -> Result<i64, Stop> {
    let start = label.start_ms().ok_or_else(|| {
        Stop::Cannot(format!(
            "a random target needs the backup's START TIME in UTC; backup_label says {:?} (give the target as an RFC 3339 time)",
            label.start_time
        ))
    })?;
    let end = newest_but_one
        .map_or(start, |t| t.min(start + span.as_millis() as i64))
        .max(start);
    let r = u64::from_str_radix(&crate::random_token()[..12], 16).unwrap_or(0);
    Ok(start + (r % ((end - start) as u64 + 1)) as i64)
}

/// An instant as PostgreSQL reads `recovery_target_time` (no zone abbreviations such as `Z`).
fn pg_timestamp(ms: i64) -> String {
    let utc = utc_rfc3339(ms);
    format!("{}+00", utc.trim_end_matches('Z').replacen('T', " ", 1))
}

/// Whether the backup carries WAL of its own (`-X stream` / `-X fetch`).
fn has_own_wal(data: &Path) -> bool {
    std::fs::read_dir(data.join("pg_wal")).is_ok_and(|d| {
        d.flatten().any(|e| {
            matches!(
                wal::classify(&e.file_name().to_string_lossy(), wal::DEFAULT_SEGMENT_BYTES).0,
                wal::Entry::Segment(_)
            )
        })
    })
}

/// Fetches the chain's histories, then its segments in order (at most [`AHEAD`] past the last
/// one recovery asked for), each hashed as stored, decompressed, size-checked, and renamed into
/// `wal_dir`; writes `.histories` and `.done` markers.
fn start_feeder(
    source: Box<dyn ArtifactSource>,
    archive: String,
    chain: &Chain,
    wal_dir: PathBuf,
    asked_log: PathBuf,
    segment_bytes: u64,
    owner: Option<(u32, u32)>,
) -> Feeder {
    let stop = Arc::new(AtomicBool::new(false));
    let histories = chain.histories.clone();
    let segments: Vec<String> = chain.segments.iter().map(|(_, n)| n.clone()).collect();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let fed: Result<Fed, String> = async {
            let spill = wal_dir.join(".spill");
            std::fs::create_dir_all(&spill).map_err(|e| format!("WAL spill dir: {e}"))?;
            let mut digest = blake3::Hasher::new();
            for name in &histories {
                hand_over(&*source, &archive, name, (&wal_dir, &spill, owner), None).await?;
            }
            std::fs::write(wal_dir.join(".histories"), "").map_err(|e| format!("WAL dir: {e}"))?;
            let handed = AtomicU64::new(0);
            for name in &segments {
                loop {
                    if flag.load(Ordering::Relaxed) {
                        return Ok(Fed {
                            digest: digest.finalize().to_hex().to_string(),
                        });
                    }
                    let asked = std::fs::read_to_string(&asked_log)
                        .map(|t| t.lines().count() as u64)
                        .unwrap_or(0);
                    if handed.load(Ordering::Relaxed) < asked + AHEAD {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let hash = hand_over(
                    &*source,
                    &archive,
                    name,
                    (&wal_dir, &spill, owner),
                    Some(segment_bytes),
                )
                .await?;
                digest.update(name.as_bytes());
                digest.update(hash.as_bytes());
                handed.fetch_add(1, Ordering::Relaxed);
            }
            std::fs::write(wal_dir.join(".done"), "").map_err(|e| format!("WAL dir: {e}"))?;
            let _ = std::fs::remove_dir_all(&spill);
            Ok(Fed {
                digest: digest.finalize().to_hex().to_string(),
            })
        }
        .await;
        if fed.is_err() {
            // Recovery must not wait for what will never come: the archive ends here (the
            // verdict then names why).
            let _ = std::fs::write(wal_dir.join(".histories"), "");
            let _ = std::fs::write(wal_dir.join(".done"), "");
        }
        fed
    });
    Feeder { task, stop }
}

/// One archive file into `wal_dir` under its uncompressed name: fetched (downloaded into
/// `spill`, or read in place), hashed as stored, decompressed, checked to be a whole segment,
/// and given to the server's user (so `restore_command` can hard-link it instead of copying).
/// Returns the stored bytes' blake3.
async fn hand_over(
    source: &dyn ArtifactSource,
    archive: &str,
    name: &str,
    (wal_dir, spill, owner): (&Path, &Path, Option<(u32, u32)>),
    segment_bytes: Option<u64>,
) -> Result<blake3::Hash, String> {
    let url = crate::artifact::object::join(archive, name);
    let fetched = source
        .fetch(&url, Some(spill), &crate::progress::Meter::default())
        .await
        .map_err(|r| format!("WAL {name}: {r}"))?;
    let (entry, compression) =
        wal::classify(name, segment_bytes.unwrap_or(wal::DEFAULT_SEGMENT_BYTES));
    let plain = match entry {
        wal::Entry::Segment(s) => s.name(segment_bytes.unwrap_or(wal::DEFAULT_SEGMENT_BYTES)),
        _ => name
            .trim_end_matches(".gz")
            .trim_end_matches(".zst")
            .trim_end_matches(".zstd")
            .to_owned(),
    };
    let compression = match compression {
        Some("gz") => Compression::Gzip,
        Some("zst") => Compression::Zstd,
        _ => Compression::None,
    };
    let (path, dir, downloaded) = (
        fetched.path.clone(),
        wal_dir.to_owned(),
        fetched.path.starts_with(spill),
    );
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        // One pass: the stored bytes hashed as they are read, decompressed, written.
        let file = std::fs::File::open(&path).map_err(|e| format!("WAL {name}: {e}"))?;
        let mut hashing = Hashing {
            inner: file,
            hasher: blake3::Hasher::new(),
        };
        let tmp = dir.join(format!(".{plain}.part"));
        let out = std::fs::File::create(&tmp).map_err(|e| format!("WAL dir: {e}"))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        let written = {
            let input =
                decoder(&mut hashing, compression).map_err(|e| format!("WAL {name}: {e}"))?;
            let mut input = std::io::BufReader::with_capacity(1 << 20, input);
            std::io::copy(&mut input, &mut out).map_err(|e| {
                format!(
                    "WAL {name} is damaged: it does not decompress ({}): {e}",
                    compression.as_str()
                )
            })?
        };
        out.flush().map_err(|e| format!("WAL dir: {e}"))?;
        // Whatever the decompressor left unread still counts in the stored bytes' digest.
        std::io::copy(&mut hashing, &mut std::io::sink())
            .map_err(|e| format!("WAL {name}: {e}"))?;
        let hash = hashing.hasher.finalize();
        if let Some(size) = segment_bytes
            && written != size
        {
            return Err(format!(
                "WAL {name} is {written} bytes, not a whole segment of {size}: truncated"
            ));
        }
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(
                &tmp,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| format!("WAL dir: {e}"))?;
        }
        std::fs::rename(&tmp, dir.join(&plain)).map_err(|e| format!("WAL dir: {e}"))?;
        if downloaded {
            let _ = std::fs::remove_file(&path);
        }
        Ok(hash)
    })
    .await
    .map_err(|e| format!("WAL task failed: {e}"))?
}

/// The installation of exactly this major version (physical files are not portable across
/// majors), or why there is none.
pub fn installation_for(installs: &[Installed], major: u32) -> Result<&Installed, Stop> {
    installs
        .iter()
        .find(|i| i.install.major == major)
        .ok_or_else(|| {
            let have: Vec<String> = installs.iter().map(|i| i.install.major.to_string()).collect();
            Stop::Cannot(format!(
                "the base backup is PostgreSQL {major}; physical files need the same major version, and this worker has {} (install PostgreSQL {major})",
                if have.is_empty() { "none".to_owned() } else { have.join(", ") }
            ))
        })
}
