//! Where artifacts come from: one [`ArtifactSource`] per URL scheme, chosen by [`source_for`].
//!
//! - [`local`]: `file://` URLs and plain paths, read in place; backup sets are directories.
//! - [`object`]: `s3://` (any S3-compatible store) and `http(s)://` (a plain GET), both through
//!   `object_store`; the object streams into a spill file while it is hashed, in one pass.
//! - [`checksum`]: blake3 of local files and directory trees, on all cores.
//!
//! A new source is one module implementing [`ArtifactSource`] and one line in [`source_for`].
//! Worker-side settings ([`Sources`]) come from `--sources FILE`: `[s3.NAME]` and `[http.NAME]`
//! profiles a plan selects with `[artifact] profile = "NAME"`.

pub mod archive;
pub mod checksum;
pub mod local;
pub mod object;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rehearse_core::backupset::{self, Pick};
use rehearse_core::plan::Blake3Digest;

pub use archive::FetchError;
pub use local::LocalArtifact;
pub use object::{HttpSettings, S3Settings};

/// The artifact a plan means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub url: String,
    /// For a backup set: (backups eligible, backups listed).
    pub from: Option<(usize, usize)>,
}

/// An artifact's bytes on this machine.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    /// blake3 and length when the bytes were hashed on their way here (a download).
    pub hashed: Option<(blake3::Hash, u64)>,
}

/// One kind of place backups are kept. Every `Err` is a reason for the report, naming the
/// artifact and never a credential.
#[async_trait::async_trait]
pub trait ArtifactSource: Send + Sync + std::fmt::Debug {
    /// The URL as it is without `pick`; with it, the backup chosen from the set the URL names
    /// (`tested`: when each backup URL was last verified, for `least_recently_tested`).
    async fn resolve(
        &self,
        url: &str,
        pick: Option<Pick>,
        window: backupset::Window,
        now_ms: i64,
        seed: u64,
        tested: &BTreeMap<String, i64>,
    ) -> Result<Picked, String>;

    /// Whether [`ArtifactSource::fetch`] copies bytes (and so needs a spill dir).
    fn needs_spill(&self) -> bool;

    /// The artifact's bytes as a local path: in place, or downloaded into `spill` and hashed on
    /// the way; the bytes moved counted on `meter`.
    async fn fetch(
        &self,
        url: &str,
        spill: Option<&Path>,
        meter: &crate::progress::Meter,
    ) -> Result<Fetched, FetchError>;

    /// The digest in `<url>.blake3` beside the artifact, if there is one.
    async fn sidecar(&self, url: &str) -> Result<Option<Blake3Digest>, String>;

    /// blake3 of another object (a copy); `Ok(None)` when it does not exist.
    async fn hash(&self, url: &str) -> Result<Option<blake3::Hash>, String>;

    /// The objects (regular files) directly under `url` (a directory or prefix), named
    /// relative to it: a backup set, a WAL archive.
    async fn list(&self, url: &str) -> Result<Vec<rehearse_core::backupset::Candidate>, String>;
}

/// Why no source could be made for a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The plan is wrong (a scheme nobody reads, a malformed URL): the verification fails.
    Plan(String),
    /// This worker lacks what the plan asks for (a profile): it cannot verify; another might.
    Worker(String),
}

/// A worker's source settings.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Settings every `s3://` URL gets without a profile, on top of the AWS environment.
    pub s3: S3Settings,
    /// `[s3.NAME]` profiles.
    pub s3_profiles: BTreeMap<String, S3Settings>,
    /// `[http.NAME]` profiles.
    pub http_profiles: BTreeMap<String, HttpSettings>,
}

impl Sources {
    /// The profiles of a `--sources` file. `Err` names the problem, never a value:
    ///
    /// ```toml
    /// [s3.dr]
    /// aws_endpoint = "https://minio.dr.example:9000"
    /// aws_access_key_id = "..."
    /// aws_secret_access_key = "..."
    ///
    /// [http.vault]
    /// headers = { Authorization = "Bearer ..." }
    /// ```
    pub fn parse(text: &str) -> Result<Sources, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            s3: BTreeMap<String, BTreeMap<String, String>>,
            #[serde(default)]
            http: BTreeMap<String, HttpSettings>,
        }
        let file: File = toml::from_str(text).map_err(|e| {
            format!(
                "source profiles: {}",
                e.message().split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })?;
        let mut out = Sources {
            http_profiles: file.http,
            ..Sources::default()
        };
        for (name, keys) in file.s3 {
            let settings = S3Settings(keys);
            settings
                .check()
                .map_err(|e| format!("source profile {name:?}: {e}"))?;
            out.s3_profiles.insert(name, settings);
        }
        Ok(out)
    }
}

/// The source that reads `url`, with the plan's `profile` when it names one. The registration
/// list of sources: one line per scheme.
pub fn source_for(
    url: &str,
    profile: Option<&str>,
    sources: &Sources,
) -> Result<Box<dyn ArtifactSource>, SourceError> {
    fn pick<'a, T>(
        table: &'a BTreeMap<String, T>,
        default: &'a T,
        profile: Option<&str>,
        kind: &str,
    ) -> Result<&'a T, SourceError> {
        match profile {
            None => Ok(default),
            Some(name) => table.get(name).ok_or_else(|| {
                SourceError::Worker(format!(
                    "this worker has no {kind} source profile {name:?} (see --sources)"
                ))
            }),
        }
    }
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("s3" | "s3a") => {
            let settings = pick(&sources.s3_profiles, &sources.s3, profile, "s3")?;
            object::ObjectSource::s3(url, settings)
                .map(|s| Box::new(s) as Box<dyn ArtifactSource>)
                .map_err(SourceError::Plan)
        }
        Some("http" | "https") => {
            let none = HttpSettings::default();
            let settings = pick(&sources.http_profiles, &none, profile, "http")?;
            object::ObjectSource::http(url, settings)
                .map(|s| Box::new(s) as Box<dyn ArtifactSource>)
                .map_err(SourceError::Plan)
        }
        _ => local::local_path(url)
            .map(|_| Box::new(local::LocalSource) as Box<dyn ArtifactSource>)
            .map_err(SourceError::Plan),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_refuse_unknown_keys() {
        let p = Sources::parse(
            "[s3.dr]\naws_endpoint = \"http://127.0.0.1:9000\"\naws_secret_access_key = \"s\"\n\
             [http.vault]\nheaders = { Authorization = \"Bearer t\" }\n",
        )
        .expect("valid");
        assert_eq!(
            p.s3_profiles["dr"].0["aws_endpoint"],
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            p.http_profiles["vault"].headers["Authorization"],
            "Bearer t"
        );
        let err = Sources::parse("[s3.dr]\naws_endpiont = \"x\"\n").expect_err("typo");
        assert!(err.contains("aws_endpiont") && err.contains("dr"), "{err}");
        let err = Sources::parse("[http.v]\nheader = {}\n").expect_err("typo");
        assert!(err.contains("header"), "{err}");
        assert!(Sources::parse("[gcs.x]\n").is_err());
    }

    #[test]
    fn sources_by_scheme_and_profile() {
        let sources = Sources::parse("[http.vault]\nheaders = {}\n").expect("valid");
        assert!(source_for("/var/x.dump", None, &sources).is_ok());
        assert!(source_for("https://h/x.dump", Some("vault"), &sources).is_ok());
        assert!(matches!(
            source_for("https://h/x.dump", Some("nope"), &sources),
            Err(SourceError::Worker(e)) if e.contains("nope")
        ));
        assert!(matches!(
            source_for("s3://b/x", Some("vault"), &sources),
            Err(SourceError::Worker(_))
        ));
        assert!(matches!(
            source_for("gs://b/x", None, &sources),
            Err(SourceError::Plan(e)) if e.contains("gs")
        ));
    }
}
