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
    /// How the server is configured for the restore (see [`Profile`]).
    pub profile: Profile,
    /// Server settings from the plan (a restricted set, see [`allowed_setting`]), applied last.
    pub settings: std::collections::BTreeMap<String, String>,
    /// Parallel restore jobs (`None`: the worker's `--jobs`).
    pub jobs: Option<usize>,
}

/// How the sandbox's server is configured. `fast` trades durability for speed (fsync off,
/// minimal WAL, no autovacuum): right for frequent integrity drills. `faithful` restores with
/// the engine's durable defaults and the plan's own settings, so the time measured is the time
/// a real recovery would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Fast,
    Faithful,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Fast => "fast",
            Profile::Faithful => "faithful",
        }
    }
}

/// Server settings a plan may give (`[sandbox] settings`): memory, parallelism, checkpoints and
/// planner costs. Not the sandbox's boundary (sockets, networking, files, libraries, archive
/// and recovery commands) and not what the profile decides (fsync, WAL level, full pages,
/// doublewrite, flush at commit).
pub fn allowed_setting(engine: &str, name: &str) -> bool {
    const POSTGRES: &[&str] = &[
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "effective_cache_size",
        "max_wal_size",
        "min_wal_size",
        "wal_buffers",
        "checkpoint_timeout",
        "checkpoint_completion_target",
        "max_worker_processes",
        "max_parallel_workers",
        "max_parallel_workers_per_gather",
        "max_parallel_maintenance_workers",
        "effective_io_concurrency",
        "random_page_cost",
        "wal_compression",
        "temp_buffers",
        "jit",
    ];
    const MARIADB: &[&str] = &[
        "innodb_buffer_pool_size",
        "innodb_log_file_size",
        "innodb_log_buffer_size",
        "innodb_io_capacity",
        "innodb_read_io_threads",
        "innodb_write_io_threads",
        "innodb_sort_buffer_size",
        "sort_buffer_size",
        "key_buffer_size",
        "tmp_table_size",
        "max_heap_table_size",
        "bulk_insert_buffer_size",
        "max_allowed_packet",
    ];
    match engine {
        "postgres" => POSTGRES.contains(&name),
        "mysql" => MARIADB.contains(&name),
        _ => false,
    }
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
            profile: Profile::Fast,
            settings: Default::default(),
            jobs: None,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub settings: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<usize>,
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
        for (name, value) in &raw.settings {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(("settings", format!("{name:?} is not a setting name")));
            }
            if value.is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
                return Err((
                    "settings",
                    format!("{name}: {value:?} is not a value (1 to 200 printable characters)"),
                ));
            }
        }
        if raw.jobs == Some(0) || raw.jobs.is_some_and(|j| j > 64) {
            return Err(("jobs", "must be 1 to 64".into()));
        }
        Ok(SandboxSpec {
            image,
            memory_bytes,
            cpus: raw.cpus,
            pids,
            data: raw.data.unwrap_or_default(),
            disk_bytes,
            profile: raw.profile.unwrap_or_default(),
            settings: raw.settings,
            jobs: raw.jobs,
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
            profile: (self.profile != Profile::Fast).then_some(self.profile),
            settings: self.settings.clone(),
            jobs: self.jobs,
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
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
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
            profile: Some(Profile::Faithful),
            settings: [("work_mem".to_owned(), "64MB".to_owned())].into(),
            jobs: Some(4),
        })
        .expect("valid");
        assert_eq!(spec.profile, Profile::Faithful);
        assert_eq!(
            spec.to_raw().and_then(|r| r.profile),
            Some(Profile::Faithful)
        );
        for (settings, why) in [
            (
                [("Work Mem".to_owned(), "1".to_owned())],
                "is not a setting name",
            ),
            (
                [("work_mem".to_owned(), "1\n2".to_owned())],
                "is not a value",
            ),
        ] {
            let err = SandboxSpec::from_raw(RawSandbox {
                settings: settings.into(),
                ..RawSandbox::default()
            })
            .expect_err("refused");
            assert!(err.1.contains(why), "{err:?}");
        }
        assert!(allowed_setting("postgres", "work_mem"));
        assert!(!allowed_setting("postgres", "listen_addresses"));
        assert!(
            !allowed_setting("postgres", "fsync"),
            "the profile decides it"
        );
        assert!(!allowed_setting("mysql", "local_infile"));
        assert!(!allowed_setting("files", "work_mem"));
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
