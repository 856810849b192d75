//! The `files` engine: a tar archive (optionally gzip/zstd) of a file tree, extracted into the
//! sandbox dir and checked.
//!
//! Extraction reads the archive once, as a stream, in this process. Every entry header goes
//! through [`rehearse_core::untar::Extraction::admit`] before a byte is written (no absolute
//! paths, no `..`, no symlink or hardlink escapes, no device nodes, entry and size limits), and
//! the writes themselves never follow a symlink (`O_NOFOLLOW`, an existing link is replaced, not
//! written through), never keep set-id bits, and never write more than the header declared. A
//! refused entry fails the restore phase with its reason; what was written stays inside the
//! sandbox dir and goes with it.
//!
//! Checks: every `[files] required` path exists; every file a `b3sum`-format manifest (inside the
//! archive) lists exists and has its digest. The report gets `files {count, bytes, dirs,
//! symlinks}`.

//!
//! Layout: [`extract`] (the extraction and the checks) and here the [`Engine`]: the worker does
//! the work itself, in its own sandbox dir, whatever the runtime (no server, no tool).

pub mod extract;

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rehearse_core::format::Sniffed;
use rehearse_core::plan;

use super::stream::{Compression, peel};
use super::{Engine, Env, Inspection, Provisioned, Restored, Session, Stop};
use crate::artifact::LocalArtifact;
use crate::sandbox::{self, SandboxDir};

#[derive(Debug, Clone, Copy, Default)]
pub struct Files;

impl Engine for Files {
    fn kind(&self) -> plan::Engine {
        plan::Engine::Files
    }

    fn classify<'a>(&'a self, artifact: &LocalArtifact) -> Result<Box<dyn Session + 'a>, String> {
        let (path, compression, format) = classify(artifact)?;
        Ok(Box::new(FilesSession {
            path,
            compression,
            format,
            dir: None,
            stop: Arc::new(AtomicBool::new(false)),
        }))
    }

    fn uses_runtime(&self) -> bool {
        false
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct FilesSession {
    path: PathBuf,
    compression: Compression,
    format: String,
    /// The extraction dir (its `root` holds the tree).
    dir: Option<SandboxDir>,
    /// Stops an extraction still running on its blocking thread (a timeout, an interrupt).
    stop: Arc<AtomicBool>,
}

impl FilesSession {
    fn root(&self) -> Result<PathBuf, Stop> {
        self.dir
            .as_ref()
            .map(|d| d.path().join("root"))
            .ok_or_else(|| Stop::Cannot("the sandbox was not provisioned".into()))
    }
}

#[async_trait::async_trait]
impl Session for FilesSession {
    fn format(&self) -> String {
        self.format.clone()
    }

    async fn provision(
        &mut self,
        env: &Env<'_>,
        _artifact: &LocalArtifact,
    ) -> Result<Provisioned, Stop> {
        let dir = self.dir.insert(
            env.rt
                .create_dir()
                .map_err(|e| Stop::Cannot(e.to_string()))?,
        );
        let root = dir.path().join("root");
        sandbox::make_shared_dir(&root)
            .map_err(|e| Stop::Cannot(format!("extraction dir: {e}")))?;
        Ok(Provisioned {
            server_version: None,
            runtime: "process",
            notes: vec![
                "files extracted by the worker itself into its sandbox dir, every entry admitted first (paths, links, kinds, limits)".into(),
            ],
        })
    }

    async fn restore(&mut self, env: &Env<'_>) -> Result<Restored, Stop> {
        let (path, compression, into) = (self.path.clone(), self.compression, self.root()?);
        let (spec, stop) = (env.plan.files.clone(), self.stop.clone());
        let extracted = tokio::task::spawn_blocking(move || {
            crate::engines::untar::extract(&path, compression, &into, &spec, &stop)
        })
        .await;
        match extracted {
            Ok(Ok(report)) => Ok(Restored {
                recovery: None,
                server_version: None,
                database: None,
                files: Some(report),
                notes: Vec::new(),
            }),
            Ok(Err(reason)) => Err(Stop::Failed(reason)),
            Err(e) => Err(Stop::Failed(format!("extraction task failed: {e}"))),
        }
    }

    async fn inspect(&mut self, env: &Env<'_>) -> Result<Inspection, Stop> {
        let (root, spec) = (self.root()?, env.plan.files.clone());
        let checks = tokio::task::spawn_blocking(move || extract::check(&root, &spec))
            .await
            .unwrap_or_default();
        let mut found = Inspection::default();
        for c in &checks {
            if let Some(reason) = &c.reason {
                found.fail(format!("check {:?}: {reason}", c.name));
            }
        }
        found.checks = checks;
        Ok(found)
    }

    fn has_sandbox(&self) -> bool {
        self.dir.is_some()
    }

    async fn teardown(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let Some(mut dir) = self.dir.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || dir.remove())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("remove sandbox dir: {e}"))
    }
}

/// A tar archive, optionally gzip/zstd. `Err` is the failure reason.
fn classify(artifact: &LocalArtifact) -> Result<(PathBuf, Compression, String), String> {
    if artifact.is_dir {
        return Err(
            "a directory is not a tar archive (engine = \"files\" takes one archive file)".into(),
        );
    }
    let path = artifact.path.clone();
    let (inner, compression, suffix) = peel(artifact)?;
    match inner {
        Sniffed::Tar { .. } => Ok((path, compression, format!("tar{suffix}"))),
        other => Err(format!(
            "not a tar archive: the content{suffix} is {}",
            other.describe()
        )),
    }
}
