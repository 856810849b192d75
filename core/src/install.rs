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

/// Whether psql of this version has restricted mode (`\restrict KEY`), which refuses every
/// meta-command until `\unrestrict KEY`: added in 13.22, 14.19, 15.14, 16.10, 17.6 and 18.
pub fn psql_has_restrict(major: u32, minor: u32) -> bool {
    match major {
        0..=12 => false,
        13 => minor >= 22,
        14 => minor >= 19,
        15 => minor >= 14,
        16 => minor >= 10,
        17 => minor >= 6,
        _ => true,
    }
}

/// Parses "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" or "psql (PostgreSQL) 16.2" into
/// (major, minor, the version text).
pub fn parse_version_output(text: &str) -> Option<(u32, u32, String)> {
    let version = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    };
    let mut parts = version.split('.');
    let major = digits(parts.next()?)?;
    // "17beta1" has no minor: a pre-release counts as .0
    let minor = parts.next().and_then(digits).unwrap_or(0);
    Some((major, minor, version.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrict_support_by_version() {
        assert!(psql_has_restrict(15, 18));
        assert!(psql_has_restrict(15, 14));
        assert!(!psql_has_restrict(15, 13));
        assert!(!psql_has_restrict(12, 99));
        assert!(psql_has_restrict(18, 0));
    }

    #[test]
    fn version_output() {
        assert_eq!(
            parse_version_output("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some((15, 18, "15.18".into()))
        );
        assert_eq!(
            parse_version_output("psql (PostgreSQL) 17beta1"),
            Some((17, 0, "17beta1".into()))
        );
        assert_eq!(
            parse_version_output("postgres (PostgreSQL) 9.6.24"),
            Some((9, 6, "9.6.24".into()))
        );
        assert_eq!(parse_version_output("garbage"), None);
    }

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
