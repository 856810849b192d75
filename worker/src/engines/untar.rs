//! Extracting a tar stream entry by entry, never outside its root: used by the engines whose
//! backups are tar archives (files, PostgreSQL base backups).

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rehearse_core::plan::FilesSpec;
use rehearse_core::report::FilesReport;
use rehearse_core::untar::{Extraction, Kind};

use crate::engines::stream::{Compression, open_stream};

/// Extracts the archive at `archive` into `root` (which must exist and be empty).
/// `Err` is the failure reason for phase `restore`.
pub fn extract(
    archive: &Path,
    compression: Compression,
    root: &Path,
    spec: &FilesSpec,
    stop: &AtomicBool,
) -> Result<FilesReport, String> {
    let stream = open_stream(archive, compression).map_err(|e| format!("open archive: {e}"))?;
    let mut tar = tar::Archive::new(stream);
    let mut admitted = Extraction::new(spec.limits);
    let mut report = FilesReport::default();
    let corrupt = |e: io::Error| match compression {
        Compression::None => format!("the tar archive is corrupt or truncated: {e}"),
        c => format!(
            "the tar archive ({}) is corrupt or truncated: {e}",
            c.as_str()
        ),
    };
    for entry in tar.entries().map_err(corrupt)? {
        // The verification ended (timeout, cancel): its dir is being removed; write no more.
        if stop.load(Ordering::Relaxed) {
            return Err("extraction stopped".into());
        }
        let mut entry = entry.map_err(corrupt)?;
        let path_bytes = entry.path_bytes().into_owned();
        let path = String::from_utf8(path_bytes)
            .map_err(|e| format!("entry {:?}: the path is not UTF-8", e.as_bytes()))?;
        let header = entry.header();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let kind_byte = header.entry_type();
        let kind = if kind_byte.is_file() || kind_byte.is_contiguous() {
            Kind::File
        } else if kind_byte.is_dir() {
            Kind::Dir
        } else if kind_byte.is_symlink() {
            Kind::Symlink(link.clone().unwrap_or_default())
        } else if kind_byte.is_hard_link() {
            Kind::Hardlink(link.clone().unwrap_or_default())
        } else if kind_byte.is_pax_global_extensions()
            || kind_byte.is_pax_local_extensions()
            || kind_byte.is_gnu_longname()
            || kind_byte.is_gnu_longlink()
        {
            continue;
        } else {
            Kind::Special(format!("{kind_byte:?}"))
        };
        let size = entry.size();
        let clean = admitted.admit(&path, &kind, size)?;
        if clean.is_empty() {
            // The archive's root directory (`./`): it is `root` itself.
            continue;
        }
        let target = root.join(&clean);
        let mode = header.mode().unwrap_or(0o644) & 0o777;
        match kind {
            Kind::Dir => {
                make_dir(root, &target).map_err(|e| format!("entry {path:?}: {e}"))?;
                report.dirs += 1;
            }
            Kind::File => {
                make_parent(root, &target).map_err(|e| format!("entry {path:?}: {e}"))?;
                let written = write_file(&mut entry, &target, size, mode)
                    .map_err(|e| format!("entry {path:?}: {e}"))?;
                report.count += 1;
                report.bytes += written;
            }
            Kind::Symlink(link_target) => {
                make_parent(root, &target).map_err(|e| format!("entry {path:?}: {e}"))?;
                replace_non_dir(&target).map_err(|e| format!("entry {path:?}: {e}"))?;
                std::os::unix::fs::symlink(&link_target, &target)
                    .map_err(|e| format!("entry {path:?}: {e}"))?;
                report.symlinks += 1;
            }
            Kind::Hardlink(link_target) => {
                let source = root.join(relative(&link_target));
                make_parent(root, &target).map_err(|e| format!("entry {path:?}: {e}"))?;
                replace_non_dir(&target).map_err(|e| format!("entry {path:?}: {e}"))?;
                fs::hard_link(&source, &target).map_err(|e| format!("entry {path:?}: {e}"))?;
                report.count += 1;
            }
            Kind::Special(_) => unreachable!("admit refuses special files"),
        }
    }
    Ok(report)
}

/// `a/./b/` → `a/b` (admit has already refused anything that leaves the root).
pub fn relative(path: &str) -> PathBuf {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect()
}

fn make_parent(root: &Path, target: &Path) -> io::Result<()> {
    match target.parent() {
        Some(parent) => make_dir(root, parent),
        None => Ok(()),
    }
}

/// Creates a directory (and its parents up to `root`) that are real directories, never through a
/// symlink, and never `root` itself or anything above it (gone means the sandbox was removed).
fn make_dir(root: &Path, dir: &Path) -> io::Result<()> {
    if dir == root || !dir.starts_with(root) {
        return match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err(io::Error::other("the extraction root is gone")),
        };
    }
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                make_dir(root, parent)?;
            }
            fs::create_dir(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        }
        Err(e) => Err(e),
    }
}

/// An existing file or symlink at `target` is removed (replaced, never written through).
fn replace_non_dir(target: &Path) -> io::Result<()> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err(io::Error::other("a directory is in the way")),
        Ok(_) => fs::remove_file(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes exactly the declared bytes, without following a symlink and without set-id bits.
fn write_file(entry: &mut impl Read, target: &Path, size: u64, mode: u32) -> io::Result<u64> {
    replace_non_dir(target)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(mode | 0o600)
        .open(target)?;
    let written = io::copy(&mut entry.take(size), &mut file)?;
    if written != size {
        return Err(io::Error::other(format!(
            "truncated: {written} of {size} bytes"
        )));
    }
    Ok(written)
}
