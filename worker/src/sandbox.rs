//! The process sandbox runtime: restores run as local processes in a private temp dir.
//!
//! What it gives (and the docker runtime will give more of):
//! - a private directory per verification (`<work-root>/rehearse-XXXXXX`, mode 0700), owned by the
//!   sandbox user, holding the database's data, its unix socket and its log;
//! - when started as root: every process that touches the dump's content (server, psql) runs as an
//!   unprivileged user (`nobody` by default) in a fresh network namespace with no interfaces up
//!   (`unshare --net --setuid --setgid`, which also drops supplementary groups);
//! - a clean environment: no inherited variables (storage credentials never reach the sandbox);
//! - an owner file naming the process that made the dir, so [`reap_stale`] can remove sandboxes
//!   whose owner died (kill -9) — nothing is left running, nothing left on disk.
//!
//! It cannot give: CPU/memory/pids limits, or isolation from the host's filesystem beyond Unix
//! permissions (the sandbox user can read world-readable files and write world-writable ones). For
//! untrusted backups, prefer the docker runtime.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User, chown};
use tracing::{debug, info, warn};

/// Prefix of every sandbox directory; the reaper only ever touches directories named so.
pub const DIR_PREFIX: &str = "rehearse-";
const OWNER_FILE: &str = "rehearse.owner";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox user {0:?} does not exist (set --sandbox-user to an unprivileged user)")]
    NoSuchUser(String),
    #[error("sandbox user {0:?} is root; the sandbox must run unprivileged")]
    RootUser(String),
    #[error("create sandbox dir in {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("hand sandbox dir {dir} to the sandbox user: {source}")]
    Chown { dir: PathBuf, source: nix::Error },
}

/// The unprivileged identity sandbox processes run as.
#[derive(Debug, Clone)]
pub struct SandboxUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// How sandboxes are made; one per process, shared by every verification it runs.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    work_root: PathBuf,
    /// `Some` when running as root: processes switch to it and enter a new network namespace.
    user: Option<SandboxUser>,
}

impl ProcessRuntime {
    /// `sandbox_user` is used only when running as root (a non-root process cannot switch user,
    /// and its sandboxes run as itself).
    pub fn new(work_root: &Path, sandbox_user: &str) -> Result<ProcessRuntime, SandboxError> {
        let user = if Uid::effective().is_root() {
            let u = User::from_name(sandbox_user)
                .ok()
                .flatten()
                .ok_or_else(|| SandboxError::NoSuchUser(sandbox_user.to_owned()))?;
            if u.uid.is_root() {
                return Err(SandboxError::RootUser(sandbox_user.to_owned()));
            }
            Some(SandboxUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            })
        } else {
            None
        };
        fs::create_dir_all(work_root).map_err(|source| SandboxError::CreateDir {
            dir: work_root.to_owned(),
            source,
        })?;
        Ok(ProcessRuntime {
            work_root: work_root.to_owned(),
            user,
        })
    }

    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    pub fn user(&self) -> Option<&SandboxUser> {
        self.user.as_ref()
    }

    /// A sentence for the report: how contained this sandbox is.
    pub fn isolation_note(&self) -> String {
        match &self.user {
            Some(u) => format!("process sandbox: server and psql ran as {} in a network namespace without interfaces", u.name),
            None => "process sandbox: running unprivileged already, so no user switch and no network namespace (run as root, or use the docker runtime, for untrusted backups)".to_owned(),
        }
    }

    /// Makes a private directory for one verification, owned by the sandbox user.
    pub fn create_dir(&self) -> Result<SandboxDir, SandboxError> {
        self.create_dir_in(&self.work_root)
    }

    /// [`ProcessRuntime::create_dir`] under another root (the spares of [`Spares`]).
    pub fn create_dir_in(&self, root: &Path) -> Result<SandboxDir, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(root)
            .map_err(|source| SandboxError::CreateDir {
                dir: root.to_owned(),
                source,
            })?;
        let path = dir.path().to_owned();
        // The owner file goes in first: a dir without one is never mistaken for a live sandbox.
        fs::write(
            path.join(OWNER_FILE),
            owner_stamp(std::process::id()).unwrap_or_default(),
        )
        .map_err(|source| SandboxError::CreateDir {
            dir: path.clone(),
            source,
        })?;
        self.give(&path)?;
        Ok(SandboxDir { dir: Some(dir) })
    }

    /// Hands a path to the sandbox user (no-op when not root).
    pub fn give(&self, path: &Path) -> Result<(), SandboxError> {
        if let Some(u) = &self.user {
            chown(path, Some(u.uid.into()), Some(u.gid.into())).map_err(|source| {
                SandboxError::Chown {
                    dir: path.to_owned(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// A command for a program that touches dump content: clean environment, and when root, the
    /// sandbox user inside a new network namespace. `home` becomes `$HOME` (psql looks there).
    pub fn command(&self, program: &Path, home: &Path) -> tokio::process::Command {
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = tokio::process::Command::new("unshare");
                c.arg("--net")
                    .arg(format!("--setuid={}", u.uid))
                    .arg(format!("--setgid={}", u.gid))
                    .arg("--")
                    .arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        clean_env(&mut cmd, home);
        cmd
    }

    /// A command for a client tool that does not interpret dump content as commands (pg_restore,
    /// pg_dump, pg_amcheck): it runs as the invoking user, so it can read artifacts the sandbox
    /// user cannot, but still with a clean environment.
    pub fn client_command(&self, program: &Path, home: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        clean_env(&mut cmd, home);
        cmd
    }
}

fn clean_env(cmd: &mut tokio::process::Command, home: &Path) {
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .env("PGTZ", "UTC")
        .kill_on_drop(true);
}

/// One verification's private directory. Removed by [`SandboxDir::remove`] (teardown: first every
/// process still working in it is killed) or, as a last resort, on drop.
#[derive(Debug)]
pub struct SandboxDir {
    /// `None` once removed.
    dir: Option<tempfile::TempDir>,
}

impl SandboxDir {
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// Moves the directory out (this value no longer owns it), e.g. to remove it on a blocking thread.
    pub fn detach(&mut self) -> SandboxDir {
        SandboxDir {
            dir: self.dir.take(),
        }
    }

    /// Removes the directory. A process killed a moment ago (an interrupted copy or restore
    /// tool) may still be writing into it, so removal is retried briefly until the dir stays gone.
    pub fn remove(&mut self) -> std::io::Result<()> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let path = dir.keep();
        kill_processes_in(&path);
        let mut last = Ok(());
        for _ in 0..100 {
            last = match remove_owned_dir(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
            if last.is_ok() && !path.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last
    }
}

/// "pid starttime": the start time tells a live owner from a new process that reused its pid.
pub(crate) fn owner_stamp(pid: u32) -> Option<String> {
    Some(format!("{pid} {}", process_start_time(pid)?))
}

fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); the command name (field 2) may contain spaces, so count after ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

pub(crate) fn owner_alive(stamp: &str) -> bool {
    let mut parts = stamp.split_whitespace();
    let (Some(pid), Some(start)) = (
        parts.next().and_then(|p| p.parse::<u32>().ok()),
        parts.next().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return false;
    };
    process_start_time(pid) == Some(start)
}

/// Removes sandboxes under `work_root` whose owner process is gone: kills their database server
/// (found through its pid file, and only if that process really serves that directory) and
/// deletes the directory. Returns how many were reaped. Never touches anything not named
/// `rehearse-*`, nor a sandbox whose owner still runs.
pub fn reap_stale(work_root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(work_root) else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_sandbox = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX))
            && path.is_dir();
        if !is_sandbox {
            continue;
        }
        // Only dirs carrying our owner file are sandboxes; anything else named alike is not ours.
        let Ok(stamp) = fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        if owner_alive(&stamp) {
            continue;
        }
        kill_processes_in(&path);
        match remove_owned_dir(&path) {
            Ok(()) => {
                info!(dir = %path.display(), "reaped sandbox left by a dead process");
                reaped += 1;
            }
            Err(e) => warn!(dir = %path.display(), error = %e, "could not remove stale sandbox"),
        }
    }
    reaped
}

/// Removes a sandbox dir with its owner file last. A dead worker's container may still write
/// into the dir (its data dir is bind-mounted) while the first reap runs, so the removal can fail
/// half way; the owner file must then survive, or the next reap (after the container is gone)
/// would no longer recognise the dir as ours and it would stay forever.
fn remove_owned_dir(path: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_name() == OWNER_FILE {
            continue;
        }
        let removed = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())
        } else {
            fs::remove_file(entry.path())
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match fs::remove_file(path.join(OWNER_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::remove_dir(path)
}

/// Kills every process whose command line names `dir` (the server: `-D dir/data`; psql and
/// pg_restore: `-h dir`; an interrupted `cp` into it) and waits until they are gone. Sandbox dir
/// names are unique, so nothing else matches. Returns how many were killed.
pub fn kill_processes_in(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| *n != me)
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            debug!(pid, dir = %dir.display(), "killing sandbox process");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    for pid in &killed {
        wait_gone(*pid, Duration::from_secs(5));
    }
    killed.len()
}

/// Polls until a process is gone (it is not our child, so it cannot be waited for).
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Hands a tree to the server's user (no-op without one). Symlinks are not followed.
pub fn give_tree(owner: Option<(u32, u32)>, root: &Path) -> std::io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Makes a directory readable and traversable by the sandbox user (for a cache shared by sandboxes).
pub fn make_shared_dir(path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Makes a directory anyone may write into (a container's server user, whatever its uid, makes
/// its socket there; the sandbox dir around it stays private).
pub fn make_open_dir(path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o777))
}

/// Serialises template builds within this process, one lock per template path: the concurrent
/// first attempts of a fresh worker (`--slots 2`) wait for one initdb instead of each running
/// their own. Hold the guard from the "is it there?" check to the publish.
pub async fn template_lock(template: &Path) -> tokio::sync::OwnedMutexGuard<()> {
    static BUILDS: std::sync::LazyLock<
        std::sync::Mutex<
            std::collections::HashMap<PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>>,
        >,
    > = std::sync::LazyLock::new(Default::default);
    let lock = {
        let mut builds = BUILDS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        builds.entry(template.to_owned()).or_default().clone()
    };
    lock.lock_owned().await
}

/// Copies a freshly made data dir into the cache as `template`, under a staging name of its own
/// and then a rename, so concurrent verifications (other processes sharing the cache included)
/// never see a half-made template and never touch each other's staging copy; the loser of a
/// race drops its copy. `ready` is a path inside the template that exists once it is complete.
pub async fn publish_template(made: &Path, template: &Path, ready: &str) -> Result<(), String> {
    let name = template
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    // Unique per call, not per process: two attempts of one worker once shared a name and each
    // deleted the other's half-made copy ("cp: cannot create regular file").
    let staging = template.with_file_name(format!(
        ".staging-{}-{}-{name}",
        std::process::id(),
        crate::random_token()
    ));
    copy_tree(made, &staging).await?;
    if tokio::fs::rename(&staging, template).await.is_err() {
        // Another verification made it first; ours is redundant.
        let _ = tokio::fs::remove_dir_all(&staging).await;
    }
    if template.join(ready).exists() {
        Ok(())
    } else {
        Err(format!(
            "template {} missing after build",
            template.display()
        ))
    }
}

/// Copies of template data dirs made ahead of need: a provision renames one into its sandbox
/// instead of copying ~1,000 files (the PostgreSQL template is 39 MB), and a new one is copied in
/// the background while the restore runs. Spares live in `<template's dir>/spares/`, each in a
/// sandbox dir of its own with an owner stamp, so a dead worker's spares are reaped like its
/// sandboxes ([`Spares::reap`]); this process's spares go when it drops them. A spare is the
/// template's bytes and nothing else: no verification ever ran in it.
#[derive(Debug, Default)]
pub struct Spares {
    /// Ready copies per template.
    ready: std::sync::Mutex<std::collections::HashMap<PathBuf, Vec<SandboxDir>>>,
    /// Templates a copy is being made of.
    filling: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl Spares {
    /// Where spares of templates in `cache_dir` live.
    pub fn root(cache_dir: &Path) -> PathBuf {
        cache_dir.join("spares")
    }

    /// Removes spares whose owner died.
    pub fn reap(cache_dir: &Path) -> usize {
        reap_stale(&Spares::root(cache_dir))
    }

    /// Moves a ready copy of `template` to `dest` (which must not exist). `false` when none is
    /// ready or it could not be moved (another file system: the caller copies instead).
    pub fn take_into(&self, template: &Path, dest: &Path) -> bool {
        let spare = self
            .ready
            .lock()
            .ok()
            .and_then(|mut ready| ready.get_mut(template).and_then(Vec::pop));
        let Some(mut spare) = spare else {
            return false;
        };
        let moved = fs::rename(spare.path().join("data"), dest).is_ok();
        // What is left is the owner file (or, when the move failed, an unused copy).
        let _ = spare.remove();
        moved
    }

    /// Starts copying one spare of `template` in the background (under
    /// [`Spares::root`]`(cache_dir)`), unless one is ready or being made. A copy that fails is
    /// dropped (the next provision copies for itself).
    pub fn refill(
        self: &std::sync::Arc<Self>,
        rt: &ProcessRuntime,
        template: &Path,
        cache_dir: &Path,
    ) {
        let has_ready = self
            .ready
            .lock()
            .ok()
            .is_some_and(|r| r.get(template).is_some_and(|v| !v.is_empty()));
        let started = !has_ready
            && self
                .filling
                .lock()
                .is_ok_and(|mut f| f.insert(template.to_owned()));
        if !started {
            return;
        }
        let (spares, rt, template) = (self.clone(), rt.clone(), template.to_owned());
        let root = Spares::root(cache_dir);
        tokio::spawn(async move {
            let made = async {
                make_shared_dir(&root).map_err(|e| e.to_string())?;
                let mut dir = rt.create_dir_in(&root).map_err(|e| e.to_string())?;
                match copy_tree(&template, &dir.path().join("data")).await {
                    Ok(()) => Ok(dir),
                    Err(e) => {
                        let _ = dir.remove();
                        Err(e)
                    }
                }
            }
            .await;
            match made {
                Ok(dir) => {
                    if let Ok(mut ready) = spares.ready.lock() {
                        ready.entry(template.clone()).or_default().push(dir);
                    }
                }
                Err(e) => debug!(error = %e, "no spare made"),
            }
            if let Ok(mut filling) = spares.filling.lock() {
                filling.remove(&template);
            }
        });
    }
}

/// `cp -a`: keeps modes and owners (a template belongs to the sandbox user), fast on many files.
pub async fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new("cp")
        // An abandoned copy (a spare being made when the worker stops) must not go on writing.
        .kill_on_drop(true)
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(|e| format!("run cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cp -a failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The default location for caches when none is given.
pub fn default_cache_dir() -> PathBuf {
    if Uid::effective().is_root() {
        return PathBuf::from("/var/cache/rehearse");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("rehearse")
}

/// Whether a program name resolves in PATH (for `unshare`, checked once at start).
pub fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(OsStr::new(program)).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_garbage_is_not() {
        let stamp = owner_stamp(std::process::id()).expect("own stamp");
        assert!(owner_alive(&stamp));
        assert!(!owner_alive("1 0"));
        assert!(!owner_alive(""));
        assert!(!owner_alive("not a stamp"));
    }

    #[test]
    fn reaper_removes_dead_owners_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let dead = root.path().join("rehearse-dead");
        fs::create_dir(&dead).expect("mkdir");
        fs::write(dead.join(OWNER_FILE), "999999999 1").expect("write");
        let live = root.path().join("rehearse-live");
        fs::create_dir(&live).expect("mkdir");
        fs::write(
            live.join(OWNER_FILE),
            owner_stamp(std::process::id()).expect("stamp"),
        )
        .expect("write");
        let other = root.path().join("unrelated");
        fs::create_dir(&other).expect("mkdir");
        let lookalike = root.path().join("rehearse-backups");
        fs::create_dir(&lookalike).expect("mkdir");
        assert_eq!(reap_stale(root.path()), 1);
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other.exists());
        assert!(
            lookalike.exists(),
            "a dir without our owner file is never reaped"
        );
    }

    /// Bug: a dead docker worker's container still wrote into its sandbox's data dir while the
    /// restarted worker reaped it; the removal failed half way after deleting the owner file, and
    /// the second reap (once the container was gone) skipped the dir as not ours. Whatever
    /// happens to a removal, a dir that is still there keeps its owner file.
    #[test]
    fn a_reap_that_fails_half_way_keeps_the_owner_file_for_the_next() {
        for round in 0..20 {
            let root = tempfile::tempdir().expect("tempdir");
            let dead = root.path().join("rehearse-dead");
            let data = dead.join("data");
            fs::create_dir_all(&data).expect("mkdir");
            fs::write(dead.join(OWNER_FILE), "999999999 1").expect("write");
            for i in 0..50 {
                fs::write(dead.join(format!("f{i}")), b"x").expect("write");
            }
            // A writer that keeps making files in the data dir, as a container's server would.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = {
                let (stop, data) = (stop.clone(), data.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = fs::write(data.join(format!("w{i}")), b"x");
                        i += 1;
                    }
                })
            };
            std::thread::sleep(Duration::from_millis(5));
            reap_stale(root.path());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            writer.join().expect("writer");
            assert!(
                !dead.exists() || dead.join(OWNER_FILE).is_file(),
                "round {round}: a half-removed sandbox lost its owner file"
            );
            reap_stale(root.path());
            assert!(
                !dead.exists(),
                "round {round}: the second reap left the dir"
            );
        }
    }

    #[tokio::test]
    async fn a_spare_is_the_template_moved_in_once_and_then_made_again() {
        let cache = tempfile::tempdir().expect("cache");
        let work = tempfile::tempdir().expect("work");
        let rt = ProcessRuntime::new(work.path(), "nobody").expect("runtime");
        let template = cache.path().join("t");
        fs::create_dir_all(template.join("base")).expect("mkdir");
        fs::write(template.join("base/1"), b"one").expect("write");
        fs::write(template.join("PG_VERSION"), b"15").expect("write");
        let spares = std::sync::Arc::new(Spares::default());
        let dest = work.path().join("data");
        assert!(!spares.take_into(&template, &dest), "nothing made yet");

        let ready = |spares: &Spares| {
            spares
                .ready
                .lock()
                .expect("lock")
                .get(&template)
                .map_or(0, Vec::len)
        };
        spares.refill(&rt, &template, cache.path());
        spares.refill(&rt, &template, cache.path()); // one copy at a time
        for _ in 0..500 {
            if ready(&spares) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ready(&spares), 1);
        assert!(spares.take_into(&template, &dest));
        assert_eq!(fs::read(dest.join("base/1")).expect("moved"), b"one");
        assert!(!spares.take_into(&template, &work.path().join("again")));
        // The spare's own dir went with it; only the spares root stays.
        let left: Vec<_> = fs::read_dir(Spares::root(cache.path()))
            .expect("spares root")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // Another template's spare of a dead owner is reaped.
        let dead = Spares::root(cache.path()).join("rehearse-x");
        fs::create_dir(&dead).expect("mkdir");
        fs::write(dead.join(OWNER_FILE), "999999999 1").expect("write");
        assert_eq!(Spares::reap(cache.path()), 1);
    }
}
