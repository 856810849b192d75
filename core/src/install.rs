//! Choosing which PostgreSQL installation restores a dump.
//!
//! A dump restores into a server of its own major version or newer (pg_restore reads older archive
//! formats, and newer servers accept older dumps); never into an older one. Among installations,
//! prefer the dump's exact major version, then the nearest newer one. With no version known (a
//! hand-written SQL script), take the newest installation.

use std::path::PathBuf;

/// One PostgreSQL installation: a bin directory holding `postgres`, `initdb`, `pg_restore`, `psql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub major: u32,
    pub bindir: PathBuf,
}

/// Picks the installation for a dump of `dump_major` (None: unknown). The error says what was
/// found and what would be needed.
pub fn choose(installs: &[Installation], dump_major: Option<u32>) -> Result<&Installation, String> {
    if installs.is_empty() {
        return Err("no PostgreSQL server binaries found (looked in PATH, pg_config --bindir and /usr/lib/postgresql/*/bin)".to_owned());
    }
    let newest = installs.iter().max_by_key(|i| i.major);
    let Some(want) = dump_major else {
        return newest.ok_or_else(|| "no installation".to_owned());
    };
    installs
        .iter()
        .filter(|i| i.major >= want)
        .min_by_key(|i| i.major)
        .ok_or_else(|| {
            let have: Vec<String> = installs.iter().map(|i| i.major.to_string()).collect();
            format!("the dump comes from PostgreSQL {want}, but only older server binaries are installed ({}); install PostgreSQL {want} or newer", have.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(major: u32) -> Installation {
        Installation {
            major,
            bindir: PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        }
    }

    #[test]
    fn exact_then_nearest_newer() {
        let all = [at(13), at(15), at(17)];
        assert_eq!(choose(&all, Some(15)).map(|i| i.major), Ok(15));
        assert_eq!(choose(&all, Some(14)).map(|i| i.major), Ok(15));
        assert_eq!(choose(&all, Some(9)).map(|i| i.major), Ok(13));
        assert_eq!(choose(&all, None).map(|i| i.major), Ok(17));
    }

    #[test]
    fn never_older_and_never_nothing() {
        let e = choose(&[at(15)], Some(16)).expect_err("too old");
        assert!(e.contains("PostgreSQL 16") && e.contains("15"), "{e}");
        assert!(choose(&[], Some(15)).is_err());
    }
}
