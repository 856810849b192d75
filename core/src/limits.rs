//! The plan's `[sandbox]` section: which image a container sandbox runs and the limits it gets.
//!
//! ```toml
//! [sandbox]
//! image = "postgres:16"   # default: the worker's image for the engine (rehearse/<engine>:local)
//! memory = "4GiB"          # memory limit; a tmpfs data dir counts against it
//! cpus = 2.0               # CPU limit (default: none beyond the worker's own)
//! pids = 1024              # process limit
//! data = "disk"            # where the restored database lives: "disk" (default) or "tmpfs"
//! disk = "64GiB"           # the most the restored data may take on disk
//! ```
//!
//! By default the restored database lives on a throwaway directory of the worker's disk (inside
//! its sandbox dir, removed at teardown), so a database larger than the memory limit can be
//! verified; `disk` caps it, and a restore that outgrows it ends `error` (could not verify)
//! naming the limit. `data = "tmpfs"` keeps it in memory instead (fast, for small databases): it
//! then counts against `memory`.
//!
//! The process runtime has no way to enforce these (it says so in the report); the docker runtime
//! enforces all of them.

use serde::{Deserialize, Serialize};

pub const DEFAULT_MEMORY: u64 = 4 << 30;
pub const DEFAULT_PIDS: i64 = 1024;
pub const DEFAULT_DISK: u64 = 64 << 30;

/// Where a container's database lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataStore {
    /// A throwaway directory on the worker's disk, capped by `disk`.
    #[default]
    Disk,
    /// A tmpfs sized to the memory limit.
    Tmpfs,
}

impl DataStore {
    pub fn as_str(self) -> &'static str {
        match self {
            DataStore::Disk => "disk",
            DataStore::Tmpfs => "tmpfs",
        }
    }
}

/// The validated `[sandbox]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// `None`: the worker's image for the plan's engine.
    pub image: Option<String>,
    pub memory_bytes: u64,
    pub cpus: Option<f64>,
    pub pids: i64,
    pub data: DataStore,
    /// The most the restored data may take when `data` is `disk`.
    pub disk_bytes: u64,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec {
            image: None,
            memory_bytes: DEFAULT_MEMORY,
            cpus: None,
            pids: DEFAULT_PIDS,
            data: DataStore::Disk,
            disk_bytes: DEFAULT_DISK,
        }
    }
}

/// The section as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataStore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

impl SandboxSpec {
    /// Validates the raw section; `Err` is `(key, reason)`.
    pub fn from_raw(raw: RawSandbox) -> Result<SandboxSpec, (&'static str, String)> {
        let image = raw.image.map(|i| i.trim().to_owned());
        if image.as_deref().is_some_and(str::is_empty) {
            return Err(("image", "is empty".into()));
        }
        let memory_bytes = match raw.memory {
            Some(m) => parse_size(&m).map_err(|r| ("memory", r))?,
            None => DEFAULT_MEMORY,
        };
        if memory_bytes < 64 << 20 {
            return Err((
                "memory",
                "must be at least 64MiB (a database server needs that to start)".into(),
            ));
        }
        if let Some(c) = raw.cpus
            && !(c.is_finite() && c > 0.0)
        {
            return Err(("cpus", format!("{c} is not a positive number of CPUs")));
        }
        let pids = raw.pids.unwrap_or(DEFAULT_PIDS);
        if pids < 16 {
            return Err((
                "pids",
                format!("{pids} is too few for a database server (at least 16)"),
            ));
        }
        let disk_bytes = match raw.disk {
            Some(d) => parse_size(&d).map_err(|r| ("disk", r))?,
            None => DEFAULT_DISK,
        };
        if disk_bytes < 64 << 20 {
            return Err((
                "disk",
                "must be at least 64MiB (an empty database cluster needs about 40MiB)".into(),
            ));
        }
        Ok(SandboxSpec {
            image,
            memory_bytes,
            cpus: raw.cpus,
            pids,
            data: raw.data.unwrap_or_default(),
            disk_bytes,
        })
    }

    pub fn to_raw(&self) -> Option<RawSandbox> {
        (*self != SandboxSpec::default()).then(|| RawSandbox {
            image: self.image.clone(),
            memory: Some(format_size(self.memory_bytes)),
            cpus: self.cpus,
            pids: Some(self.pids),
            data: Some(self.data),
            disk: Some(format_size(self.disk_bytes)),
        })
    }
}

/// "512MiB", "4GiB", "2G", "1.5GB", "1048576": binary units whether or not the `i` is written
/// (memory limits are powers of two in practice; one reading avoids a 7% surprise).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. \"512MiB\" or \"4GiB\""))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// The shortest exact binary-unit form of a size ("4GiB", "1536MiB", "1000B").
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size(" 512 MiB "), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("4 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("0").is_err());
        for n in [1000, 4 << 30, 1536 << 20, 3 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }

    #[test]
    fn spec_defaults_and_refusals() {
        assert_eq!(
            SandboxSpec::from_raw(RawSandbox::default()),
            Ok(SandboxSpec::default())
        );
        assert_eq!(SandboxSpec::default().to_raw(), None);
        let bad = |raw: RawSandbox| SandboxSpec::from_raw(raw).unwrap_err().0;
        assert_eq!(
            bad(RawSandbox {
                memory: Some("1MiB".into()),
                ..RawSandbox::default()
            }),
            "memory"
        );
        assert_eq!(
            bad(RawSandbox {
                cpus: Some(0.0),
                ..RawSandbox::default()
            }),
            "cpus"
        );
        assert_eq!(
            bad(RawSandbox {
                pids: Some(3),
                ..RawSandbox::default()
            }),
            "pids"
        );
        let spec = SandboxSpec::from_raw(RawSandbox {
            image: Some("mariadb:11".into()),
            memory: Some("1GiB".into()),
            cpus: Some(1.5),
            pids: Some(256),
            data: Some(DataStore::Tmpfs),
            disk: Some("2GiB".into()),
        })
        .expect("valid");
        assert_eq!((spec.data, spec.disk_bytes), (DataStore::Tmpfs, 2 << 30));
        assert_eq!(
            bad(RawSandbox {
                disk: Some("1MiB".into()),
                ..RawSandbox::default()
            }),
            "disk"
        );
        assert_eq!(SandboxSpec::from_raw(spec.to_raw().expect("raw")), Ok(spec));
    }
}
