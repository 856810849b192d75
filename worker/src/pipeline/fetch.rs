//! The first two phases: fetch (locate, pick from a backup set, download or open in place) and
//! checksum (one pass of blake3, compared with the plan's digest, a sidecar or a directory's
//! manifest; the copies hashed too).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use rehearse_core::backupset::Pick;
use rehearse_core::plan::Plan;
use rehearse_core::report::{CopyReport, Phase};

use super::{Run, Verifier};
use crate::artifact::{self, FetchError, LocalArtifact, SourceError, Sources, checksum};

impl Verifier {
    /// Fetch and checksum. `None` when the run ended in them (its verdict is in `run`).
    pub(super) async fn fetch_and_check(
        &self,
        plan: &Plan,
        run: &mut Run<'_>,
    ) -> Option<LocalArtifact> {
        // fetch: locate (for a backup set, pick) and open the artifact. For a local file there is
        // nothing to transfer.
        run.clock.begin(Phase::Fetch);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let a = &plan.artifact;
        let seed = a
            .seed
            .unwrap_or_else(|| u64::from_str_radix(&crate::random_token()[..16], 16).unwrap_or(0));
        let source = match artifact::source_for(&a.url, a.profile.as_deref(), &self.opts.sources) {
            Ok(source) => source,
            Err(SourceError::Plan(reason)) => fail!(run, Phase::Fetch, reason),
            Err(SourceError::Worker(reason)) => cannot!(run, Phase::Fetch, reason),
        };
        let picked = match source
            .resolve(
                &a.url,
                a.pick,
                rehearse_core::backupset::Window {
                    within: a.within,
                    before_ms: a.before_ms,
                },
                now_ms,
                seed,
                &a.tested,
            )
            .await
        {
            Ok(p) => p,
            Err(reason) => fail!(run, Phase::Fetch, reason),
        };
        if let (Some((eligible, listed)), Some(pick)) = (picked.from, a.pick) {
            run.report.artifact.url = picked.url.clone();
            run.report.artifact.candidates = Some(eligible);
            run.report.notes.push(format!(
                "picked the {} of {eligible} eligible backups ({listed} in {})",
                match pick {
                    Pick::Latest => "latest",
                    Pick::Random => "random pick",
                    Pick::LeastRecentlyTested => "least recently tested",
                },
                a.url
            ));
        }
        // An object in a store streams into a spill file in the work dir, hashed on the way: the
        // checksum phase then only compares.
        let spill = if source.needs_spill() {
            match self.rt.create_dir() {
                Ok(dir) => Some(run.spill.insert(dir).path().to_owned()),
                Err(e) => cannot!(run, Phase::Fetch, format!("spill dir: {e}")),
            }
        } else {
            None
        };
        let fetched = match source
            .fetch(&picked.url, spill.as_deref(), &run.clock.meter)
            .await
        {
            Ok(fetched) => fetched,
            Err(FetchError::NotYet {
                reason,
                retry_after,
            }) => not_yet!(run, Phase::Fetch, reason, retry_after),
            Err(FetchError::Failed(reason)) => fail!(run, Phase::Fetch, reason),
            Err(FetchError::Cannot(reason)) => cannot!(run, Phase::Fetch, reason),
        };
        let hashed_on_fetch = fetched.hashed;
        let mut artifact = match artifact::local::open(fetched.path) {
            Ok(a) => a,
            Err(reason) => fail!(run, Phase::Fetch, reason),
        };
        run.report.artifact.bytes = artifact.bytes;
        run.clock.bytes = Some(artifact.bytes);
        run.clock.end(true);

        // checksum: the one pass over the bytes (already made while downloading).
        run.clock.begin(Phase::Checksum);
        let path = artifact.path.clone();
        let is_dir = artifact.is_dir;
        let mut tree_manifest = None;
        let hashed = match hashed_on_fetch {
            Some(done) => Ok(Ok(done)),
            None if is_dir => {
                match tokio::task::spawn_blocking(move || checksum::hash_tree(&path)).await {
                    Ok(Ok((h, n, manifest))) => {
                        tree_manifest = Some(manifest);
                        Ok(Ok((h, n)))
                    }
                    Ok(Err(e)) => Ok(Err(e)),
                    Err(e) => Err(e),
                }
            }
            None => {
                let meter = run.clock.meter.clone();
                tokio::task::spawn_blocking(move || checksum::hash_file_metered(&path, &meter))
                    .await
            }
        };
        let (digest, bytes) = match hashed {
            Ok(Ok(pair)) => pair,
            // A worker that may not read the file cannot verify it; an unreadable backup (I/O
            // error, vanished) is a bad one.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => cannot!(
                run,
                Phase::Checksum,
                format!("this worker may not read the artifact: {e}")
            ),
            Ok(Err(e)) => fail!(run, Phase::Checksum, format!("read artifact: {e}")),
            Err(e) => cannot!(run, Phase::Checksum, format!("checksum task failed: {e}")),
        };
        artifact.bytes = bytes;
        run.report.artifact.bytes = bytes;
        run.clock.bytes = Some(bytes);
        run.report.artifact.blake3 = Some(digest.to_hex().to_string());
        // The expected digest: the plan's, or else a sidecar's next to the artifact.
        let expected = match plan.artifact.blake3 {
            Some(d) => Some((d, "plan")),
            None if artifact.is_dir => {
                // A pg_dump directory: its `<dir>.blake3` manifest, file by file.
                match dir_manifest(&artifact.path, tree_manifest.as_deref().unwrap_or_default()) {
                    Ok(Some(n)) => {
                        run.report.artifact.blake3_from = Some("manifest".into());
                        run.report
                            .notes
                            .push(format!("{n} files checked against the manifest"));
                    }
                    Ok(None) => {}
                    Err(reason) => fail!(run, Phase::Checksum, reason),
                }
                None
            }
            None => match source.sidecar(&picked.url).await {
                Ok(found) => found.map(|d| (d, "sidecar")),
                Err(reason) => fail!(run, Phase::Checksum, reason),
            },
        };
        if let Some((expected, from)) = expected {
            run.report.artifact.blake3_from = Some(from.to_owned());
            if expected.0 != *digest.as_bytes() {
                fail!(
                    run,
                    Phase::Checksum,
                    format!(
                        "blake3 mismatch: expected {expected} ({from}), got {}",
                        digest.to_hex()
                    )
                );
            }
        }
        // Copies (3-2-1): each must exist and hash the same. A bad copy fails the verdict, but the
        // artifact itself is good, so the restore still runs and the report is whole.
        let copies = check_copies(
            &plan.artifact.copies,
            &digest,
            &self.opts.sources,
            &picked.url,
            a.profile.as_deref(),
        )
        .await;
        let bad_copy = copies.iter().find(|c| !c.ok).map(|c| {
            format!(
                "copy {}: {}",
                c.url,
                c.reason.as_deref().unwrap_or("differs")
            )
        });
        run.report.artifact.copies = copies;
        if let Some(reason) = bad_copy {
            run.report.fail(Phase::Checksum.as_str(), reason);
        }
        run.clock.end(run.report.failure.is_none());
        Some(artifact)
    }
}

/// Hashes each copy (wherever it is) and compares it with the artifact's digest. A copy in the
/// same kind of store as the artifact uses the plan's profile; one elsewhere the defaults.
async fn check_copies(
    urls: &[String],
    digest: &blake3::Hash,
    sources: &Sources,
    artifact_url: &str,
    profile: Option<&str>,
) -> Vec<CopyReport> {
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_owned());
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let profile = profile.filter(|_| scheme(url) == scheme(artifact_url));
        let hashed = match artifact::source_for(url, profile, sources) {
            Ok(source) => source.hash(url).await,
            Err(SourceError::Plan(reason) | SourceError::Worker(reason)) => Err(reason),
        };
        let (blake3, reason) = match hashed {
            Ok(Some(h)) => (
                Some(h.to_hex().to_string()),
                (h != *digest)
                    .then(|| format!("blake3 {} differs from the artifact's", h.to_hex())),
            ),
            Ok(None) => (None, Some("missing".to_owned())),
            Err(reason) => (None, Some(reason)),
        };
        out.push(CopyReport {
            url: url.clone(),
            ok: reason.is_none(),
            blake3,
            reason,
        });
    }
    out
}

/// Checks a directory artifact against `<dir>.blake3` when there is one: `Ok(Some(files))`, or
/// `Ok(None)` without a manifest. `computed` is `checksum::hash_tree`'s manifest.
fn dir_manifest(dir: &std::path::Path, computed: &str) -> Result<Option<usize>, String> {
    let mut name = dir.as_os_str().to_owned();
    name.push(".blake3");
    let path = PathBuf::from(name);
    let text = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() <= 16 << 20 => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(_) => return Err(format!("manifest {} is too large", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read manifest {}: {e}", path.display())),
    };
    // hash_tree lines: "<hex>  <len>  <relative path>".
    let files: Vec<(String, String)> = computed
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, "  ");
            let hex = parts.next()?;
            let _len = parts.next()?;
            Some((parts.next()?.to_owned(), hex.to_owned()))
        })
        .collect();
    let dir_name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    rehearse_core::manifest::compare(&files, &text, &dir_name)
        .map(Some)
        .map_err(|reason| format!("manifest {}: {reason}", path.display()))
}
