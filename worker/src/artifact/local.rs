//! Local artifacts: files and directories by `file://` URL or plain path, read in place (nothing
//! is copied before the checksum), and backup sets: a directory from which one backup is picked
//! (`[artifact] pick`). Also the opened artifact every source ends in ([`LocalArtifact`]).

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use rehearse_core::backupset::{self, Candidate, Pick};
use rehearse_core::format::SNIFF_LEN;
use rehearse_core::plan::Blake3Digest;

use super::{ArtifactSource, Fetched};

/// A local artifact, opened far enough to know what it is.
#[derive(Debug, Clone)]
pub struct LocalArtifact {
    pub path: PathBuf,
    pub is_dir: bool,
    /// File size (for a directory: filled in by the checksum pass).
    pub bytes: u64,
    /// The first bytes (for a directory: of its `toc.dat`).
    pub head: Vec<u8>,
    /// Size and modification time when opened; a change by the end means the artifact moved under us.
    pub stamp: Option<(u64, SystemTime)>,
}

/// Turns a plan URL into a local path; `Err` is the failure reason.
pub fn local_path(url: &str) -> Result<PathBuf, String> {
    if let Some(rest) = url.strip_prefix("file://") {
        // file:///abs/path (empty host) or file://localhost/abs/path
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(format!(
                "{url:?} is not a local file URL (expected file:///absolute/path)"
            ));
        }
        return Ok(PathBuf::from(path));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(format!(
            "artifact URL scheme {scheme:?} is not supported (supported: file://, s3://, http(s)://, or a plain path)"
        ));
    }
    Ok(PathBuf::from(url))
}

/// Files and directories on this machine's file systems.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSource;

#[async_trait::async_trait]
impl ArtifactSource for LocalSource {
    async fn resolve(
        &self,
        url: &str,
        pick: Option<Pick>,
        window: rehearse_core::backupset::Window,
        now_ms: i64,
        seed: u64,
        tested: &std::collections::BTreeMap<String, i64>,
    ) -> Result<super::Picked, String> {
        let (url, tested) = (url.to_owned(), tested.clone());
        tokio::task::spawn_blocking(move || resolve(&url, pick, window, now_ms, seed, &tested))
            .await
            .map_err(|e| format!("listing task failed: {e}"))?
    }

    fn needs_spill(&self) -> bool {
        false
    }

    async fn fetch(
        &self,
        url: &str,
        _spill: Option<&std::path::Path>,
        _meter: &crate::progress::Meter,
    ) -> Result<Fetched, super::FetchError> {
        Ok(Fetched {
            path: local_path(url)?,
            hashed: None,
        })
    }

    async fn sidecar(&self, url: &str) -> Result<Option<Blake3Digest>, String> {
        sidecar(&local_path(url)?)
    }

    async fn hash(&self, url: &str) -> Result<Option<blake3::Hash>, String> {
        let path = local_path(url)?;
        match tokio::task::spawn_blocking(move || super::checksum::hash_file(&path)).await {
            Ok(Ok((h, _))) => Ok(Some(h)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(format!("cannot read: {e}")),
            Err(e) => Err(format!("hash task failed: {e}")),
        }
    }

    async fn list(&self, url: &str) -> Result<Vec<Candidate>, String> {
        let dir = local_path(url)?;
        tokio::task::spawn_blocking(move || list(&dir, "directory"))
            .await
            .map_err(|e| format!("listing task failed: {e}"))?
    }
}

/// The plan's URL as it is, or for a backup set the backup picked from the directory it names
/// (regular files directly in it; `.blake3` sidecars skipped). `Err` is the failure reason.
pub fn resolve(
    url: &str,
    pick: Option<Pick>,
    window: rehearse_core::backupset::Window,
    now_ms: i64,
    seed: u64,
    tested: &std::collections::BTreeMap<String, i64>,
) -> Result<super::Picked, String> {
    let Some(pick) = pick else {
        return Ok(super::Picked {
            url: url.to_owned(),
            from: None,
        });
    };
    let dir = local_path(url)?;
    let listed = list(&dir, "backup set")?;
    let url_of = |c: &Candidate| format!("file://{}", dir.join(&c.key).display());
    let chosen = backupset::choose_tested(url, &listed, pick, window, now_ms, seed, &|c| {
        tested.get(&url_of(c)).copied()
    })?;
    Ok(super::Picked {
        url: format!("file://{}", dir.join(&chosen.candidate.key).display()),
        from: Some((chosen.candidates, chosen.listed)),
    })
}

/// The regular files directly in `dir` (`what` names it in errors: "backup set", "WAL archive").
pub fn list(dir: &std::path::Path, what: &str) -> Result<Vec<Candidate>, String> {
    let entries = fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{what} not found: {}", dir.display()),
        _ => format!("cannot list {what} {}: {e}", dir.display()),
    })?;
    let mut listed = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        listed.push(Candidate {
            key: entry.file_name().to_string_lossy().into_owned(),
            modified_ms,
            size: meta.len(),
        });
    }
    Ok(listed)
}

/// The expected blake3 from a sidecar next to the artifact (`<artifact>.blake3`, as `b3sum`
/// writes it: the hex digest first), if there is one. `Err` is the failure reason.
pub fn sidecar(artifact: &std::path::Path) -> Result<Option<Blake3Digest>, String> {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".blake3");
    let path = PathBuf::from(name);
    let text = match fs::read(&path) {
        Ok(bytes) if bytes.len() <= 4096 => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(_) => {
            return Err(format!(
                "sidecar {} is too large to be a digest",
                path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read sidecar {}: {e}", path.display())),
    };
    parse_sidecar(&text, &path.display().to_string()).map(Some)
}

/// The digest in a sidecar's text (`b3sum` output: the hex digest first). `Err` names `what`.
pub fn parse_sidecar(text: &str, what: &str) -> Result<Blake3Digest, String> {
    let first = text.split_whitespace().next().unwrap_or_default();
    Blake3Digest::parse_hex(first)
        .ok_or_else(|| format!("sidecar {what} does not hold a blake3 digest"))
}

/// Opens the artifact: existence, kind, size, first bytes. `Err` is the failure reason.
pub fn open(path: PathBuf) -> Result<LocalArtifact, String> {
    let meta = fs::metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("artifact not found: {}", path.display()),
        std::io::ErrorKind::PermissionDenied => format!(
            "artifact not readable (permission denied): {}",
            path.display()
        ),
        _ => format!("cannot open artifact {}: {e}", path.display()),
    })?;
    if meta.is_dir() {
        // What a directory is, the engine decides; a pg_dump directory's head is its toc.dat's.
        let toc = path.join("toc.dat");
        let head = match read_head(&toc) {
            Ok(head) => head,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", toc.display())),
        };
        return Ok(LocalArtifact {
            path,
            is_dir: true,
            bytes: 0,
            head,
            stamp: None,
        });
    }
    if !meta.is_file() {
        return Err(format!(
            "artifact is not a regular file: {}",
            path.display()
        ));
    }
    if meta.len() == 0 {
        return Err(format!("artifact is empty (0 bytes): {}", path.display()));
    }
    let head =
        read_head(&path).map_err(|e| format!("cannot read artifact {}: {e}", path.display()))?;
    Ok(LocalArtifact {
        path,
        is_dir: false,
        bytes: meta.len(),
        head,
        stamp: meta.modified().ok().map(|m| (meta.len(), m)),
    })
}

fn read_head(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    File::open(path)?
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

impl LocalArtifact {
    /// `Err` (the failure reason) when the file changed since it was opened.
    pub fn unchanged(&self) -> Result<(), String> {
        let Some((len, mtime)) = self.stamp else {
            return Ok(());
        };
        let now = fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        if now == Some((len, mtime)) {
            Ok(())
        } else {
            Err(format!(
                "artifact {} changed during the verification",
                self.path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        assert_eq!(
            local_path("file:///var/b/x.dump"),
            Ok(PathBuf::from("/var/b/x.dump"))
        );
        assert_eq!(local_path("file://localhost/x"), Ok(PathBuf::from("/x")));
        assert_eq!(
            local_path("relative/x.dump"),
            Ok(PathBuf::from("relative/x.dump"))
        );
        assert!(local_path("gs://bucket/key").is_err_and(|e| e.contains("gs")));
        assert!(local_path("file://host/x").is_err());
    }

    #[test]
    fn missing_and_empty_are_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.dump");
        assert!(open(missing).is_err_and(|e| e.starts_with("artifact not found")));
        let empty = dir.path().join("empty.dump");
        fs::write(&empty, b"").expect("write");
        assert!(open(empty).is_err_and(|e| e.starts_with("artifact is empty")));
        // A directory opens; what it is (pg_dump directory, base backup) the engine decides.
        let opened = open(dir.path().to_owned()).expect("a directory opens");
        assert!(opened.is_dir && opened.head.is_empty());
    }
}
