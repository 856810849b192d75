//! Finding PostgreSQL server installations: PATH, `pg_config --bindir`, and
//! `/usr/lib/postgresql/*/bin` (Debian/Ubuntu keep several major versions side by side there).

use std::path::{Path, PathBuf};
use std::process::Command;

use rehearse_core::install::{Installation, parse_version_output, psql_has_restrict};

/// An installation with the facts the engine needs about it.
#[derive(Debug, Clone)]
pub struct Installed {
    pub install: Installation,
    /// e.g. "15.18"
    pub version: String,
    /// psql of this installation supports `\restrict` (see `rehearse_core::script`).
    pub psql_restrict: bool,
}

impl Installed {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.install.bindir.join(name)
    }
}

const REQUIRED: [&str; 4] = ["postgres", "initdb", "pg_restore", "psql"];

/// Every usable installation found, newest first, each bin dir once.
pub fn discover() -> Vec<Installed> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions);
    }
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(canonical) = dir.canonicalize() else {
            continue;
        };
        if seen.contains(&canonical) || !REQUIRED.iter().all(|b| canonical.join(b).is_file()) {
            continue;
        }
        seen.push(canonical.clone());
        if let Some(installed) = probe(&canonical) {
            found.push(installed);
        }
    }
    found.sort_by(|a, b| b.install.major.cmp(&a.install.major));
    found
}

fn probe(bindir: &Path) -> Option<Installed> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let (major, _, version) = parse_version_output(&String::from_utf8_lossy(&out.stdout))?;
    let psql = Command::new(bindir.join("psql"))
        .arg("--version")
        .output()
        .ok()?;
    let (pmajor, pminor, _) = parse_version_output(&String::from_utf8_lossy(&psql.stdout))?;
    Some(Installed {
        install: Installation {
            major,
            bindir: bindir.to_owned(),
        },
        version,
        psql_restrict: psql_has_restrict(pmajor, pminor),
    })
}
