//! Artifacts in object storage, through the `object_store` crate: `s3://bucket/key` (any
//! S3-compatible store) and `http(s)://host/path` (a plain GET of one object).
//!
//! S3 configuration is the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`), with the worker's own [`S3Settings`] on top (same keys, lowercase). An HTTP
//! source takes the headers of its profile ([`HttpSettings`]: a bearer token, say). Values are
//! never logged, put in reports or passed to a sandbox; error reasons name the object and what
//! went wrong, never a credential. The URL's scheme is the only switch for plain `http://`.
//!
//! A download is one pass: the object streams into a spill file in the work dir while blake3
//! hashes the same bytes, so the checksum phase has nothing left to read. (The spill is the one
//! copy on local disk: restore tools read it, and nothing of it reaches a sandbox before its
//! checksum holds.) Listing a backup set asks the store: S3 lists by prefix; an HTTP server
//! lists only if it speaks WebDAV (PROPFIND), and the reason says so when it does not.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use rehearse_core::backupset::{self, Candidate, Pick};
use rehearse_core::plan::Blake3Digest;

use super::archive::{self, FetchError, RestoreSettings, Restorer};
use super::{ArtifactSource, Fetched, Picked};

/// Largest sidecar read (a digest and a name).
const SIDECAR_LIMIT: usize = 4096;
/// Hash this much at once with `update_rayon` (all cores).
const HASH_BLOCK: usize = 8 << 20;

/// Extra S3 settings (a worker's source profile): `aws_endpoint`, `aws_access_key_id`, … as
/// `object_store` names them. Debug output shows the keys, never the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings(pub BTreeMap<String, String>);

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl S3Settings {
    /// `Err` names the first key neither `object_store` nor [`archive`] knows, or a restore
    /// setting's bad value.
    pub fn check(&self) -> Result<(), String> {
        match self.0.keys().find(|k| {
            k.parse::<AmazonS3ConfigKey>().is_err() && !archive::KEYS.contains(&k.as_str())
        }) {
            Some(bad) => Err(format!("unknown S3 setting {bad:?}")),
            None => RestoreSettings::from_profile(self.0.iter()).map(|_| ()),
        }
    }
}

/// An HTTP source profile: headers sent with every request (`Authorization = "Bearer …"`).
/// Debug output shows the header names, never their values.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.headers.keys()).finish()
    }
}

impl HttpSettings {
    /// The headers as a map marked sensitive (kept out of reqwest's own debug output). `Err`
    /// names a header that is not a valid name or value, never the value.
    fn header_map(&self) -> Result<http::header::HeaderMap, String> {
        let mut map = http::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let key = http::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a valid HTTP header name"))?;
            let mut value = http::header::HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {name:?} is not valid in HTTP"))?;
            value.set_sensitive(true);
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// `s3://bucket/key` split; `None` for any other URL.
pub fn parse(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), key.to_owned()))
}

/// `http(s)://host[:port]/path` split into the origin and the path; `None` for any other URL.
pub fn parse_http(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.split(['?', '#']).next().unwrap_or_default();
    let path = path.split(['?', '#']).next().unwrap_or_default();
    (!host.is_empty() && !host.contains('@'))
        .then(|| (format!("{scheme}://{host}"), path.to_owned()))
}

/// Client options both stores share. A multi-GB object streams for minutes, so no whole-request
/// timeout (the plan's timeout bounds the verification), but a dead endpoint is noticed quickly.
fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(5))
}

fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        ..RetryConfig::default()
    }
}

/// Which protocol a store speaks (for the words of an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    S3,
    Http,
}

/// One object store (an S3 bucket, an HTTP origin) and the URLs of its objects.
pub struct ObjectSource {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket` or `https://host:port`: a URL minus its key.
    origin: String,
    protocol: Protocol,
    /// For S3: restore requests for archived objects.
    restorer: Option<Restorer>,
}

impl fmt::Debug for ObjectSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectSource({})", self.origin)
    }
}

impl ObjectSource {
    /// The bucket of an `s3://` URL, with the AWS environment and then `settings`.
    pub fn s3(url: &str, settings: &S3Settings) -> Result<ObjectSource, String> {
        let (bucket, _) = parse(url).ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
        // Client options first: setting them later would reset what the environment said (such
        // as AWS_ALLOW_HTTP).
        let mut builder = AmazonS3Builder::new()
            .with_client_options(client_options())
            .with_retry(retry());
        // The AWS environment, as AmazonS3Builder::from_env reads it; then the worker's settings.
        for (key, value) in std::env::vars() {
            if key.starts_with("AWS_")
                && let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                builder = builder.with_config(key, value);
            }
        }
        for (key, value) in &settings.0 {
            if archive::KEYS.contains(&key.as_str()) {
                continue;
            }
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|_| format!("unknown S3 setting {key:?}"))?;
            builder = builder.with_config(key, value);
        }
        let restore = RestoreSettings::from_profile(settings.0.iter())?;
        let builder = builder.with_bucket_name(&bucket);
        let store = Arc::new(builder.clone().build().map_err(|e| {
            format!(
                "S3 configuration for bucket {bucket}: {}",
                one_line(&e.to_string())
            )
        })?);
        let restorer = Restorer::new(&builder, store.clone(), &bucket, restore)?;
        Ok(ObjectSource {
            store,
            origin: format!("s3://{bucket}"),
            protocol: Protocol::S3,
            restorer: Some(restorer),
        })
    }

    /// The origin of an `http(s)://` URL, with the profile's headers.
    pub fn http(url: &str, settings: &HttpSettings) -> Result<ObjectSource, String> {
        let (origin, _) =
            parse_http(url).ok_or_else(|| format!("{url:?} is not an http(s):// URL"))?;
        let options = client_options()
            // The URL's scheme says whether TLS is wanted; object_store refuses http by default.
            .with_allow_http(origin.starts_with("http://"))
            .with_default_headers(settings.header_map()?);
        let store = HttpBuilder::new()
            .with_url(&origin)
            .with_client_options(options)
            .with_retry(retry())
            .build()
            .map_err(|e| format!("HTTP source {origin}: {}", one_line(&e.to_string())))?;
        Ok(ObjectSource {
            store: Arc::new(store),
            origin,
            protocol: Protocol::Http,
            restorer: None,
        })
    }

    /// The object a URL of this store names.
    fn key(&self, url: &str) -> Result<ObjectPath, String> {
        let key = match self.protocol {
            Protocol::S3 => parse(url).map(|(_, key)| key),
            Protocol::Http => parse_http(url).map(|(_, path)| path),
        }
        .ok_or_else(|| format!("{url:?} is not a URL of {}", self.origin))?;
        match self.protocol {
            Protocol::S3 => Ok(ObjectPath::from(key.as_str())),
            Protocol::Http => ObjectPath::from_url_path(&key)
                .map_err(|e| format!("{url:?}: {}", one_line(&e.to_string()))),
        }
    }

    /// A reason for a failed call, naming the object and never a credential.
    fn describe(&self, url: &str, e: &object_store::Error) -> String {
        let text = one_line(&e.to_string());
        tracing::debug!(url, error = %text, "object store call failed");
        if self.protocol == Protocol::Http {
            return match e {
                object_store::Error::NotFound { .. } => format!("not found: {url}"),
                object_store::Error::Unauthenticated { .. } => format!(
                    "the HTTP server refused the credentials for {url} (401: check the headers of the source profile)"
                ),
                object_store::Error::PermissionDenied { .. } => {
                    format!("access denied to {url}: the credentials lack permission (403)")
                }
                _ => format!("cannot read {url}: {text}"),
            };
        }
        // S3 names refused credentials in its error code; moto and AWS answer 403 for them.
        let refused = [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidToken",
            "ExpiredToken",
        ];
        if refused.iter().any(|code| text.contains(code))
            || matches!(e, object_store::Error::Unauthenticated { .. })
        {
            return format!(
                "S3 refused the credentials for {url} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            );
        }
        match e {
            object_store::Error::NotFound { .. } => format!("not found: {url}"),
            object_store::Error::PermissionDenied { .. } => {
                format!("access denied to {url}: the credentials lack permission")
            }
            _ if text.contains("NoSuchBucket") => format!("not found: {url} (no such bucket)"),
            _ => format!("cannot read {url}: {text}"),
        }
    }

    /// Starts reading an object; `Ok(None)` when there is none.
    async fn get(&self, url: &str) -> Result<Option<object_store::GetResult>, String> {
        match self.store.get(&self.key(url)?).await {
            Ok(got) => Ok(Some(got)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.describe(url, &e)),
        }
    }

    /// Starts reading an object of the artifact; an archived one (S3 `InvalidObjectState`) gets
    /// its restore requested and answers [`FetchError::NotYet`]. `others`: the rest of the
    /// artifact's objects (url, key), restored along with it.
    async fn get_artifact(
        &self,
        url: &str,
        artifact: &str,
        others: &[(String, String)],
    ) -> Result<object_store::GetResult, FetchError> {
        let key = self.key(url)?;
        match self.store.get(&key).await {
            Ok(got) => Ok(got),
            Err(object_store::Error::NotFound { .. }) => {
                Err(FetchError::Failed(format!("not found: {url}")))
            }
            Err(e) => match &self.restorer {
                Some(restorer) if one_line(&e.to_string()).contains("InvalidObjectState") => {
                    let mut objects = vec![(url.to_owned(), key.as_ref().to_owned())];
                    objects.extend(others.iter().filter(|(u, _)| u != url).cloned());
                    Err(restorer.not_yet(artifact, &objects).await)
                }
                _ => Err(FetchError::Failed(self.describe(url, &e))),
            },
        }
    }

    /// The objects directly under a prefix (a backup set), as candidates named relative to it.
    pub async fn list(&self, url: &str) -> Result<Vec<Candidate>, String> {
        let key = self.key(url)?;
        let prefix = (!key.as_ref().is_empty()).then_some(key);
        let listed = match self.store.list_with_delimiter(prefix.as_ref()).await {
            Ok(listed) => listed,
            Err(e) if self.protocol == Protocol::Http => {
                return Err(format!(
                    "cannot list the backup set {url}: the HTTP server does not list directories (WebDAV PROPFIND: {}); name one backup, or use an s3:// or local source",
                    one_line(&e.to_string())
                ));
            }
            Err(e) => return Err(self.describe(url, &e)),
        };
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                Some(Candidate {
                    key: name,
                    modified_ms: meta.last_modified.timestamp_millis(),
                    size: meta.size,
                })
            })
            .collect())
    }

    /// A small object (a sidecar), or `None` when there is none. `Err` when it is too large or
    /// cannot be read.
    pub async fn read_small(&self, url: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(got) = self.get(url).await? else {
            return Ok(None);
        };
        if got.meta.size as usize > SIDECAR_LIMIT {
            return Err(format!("{url} is too large to be a digest"));
        }
        got.bytes()
            .await
            .map(|b| Some(b.to_vec()))
            .map_err(|e| self.describe(url, &e))
    }

    /// Reads an object to its end: the download gathers 8 MiB blocks, and a blocking thread writes
    /// each block to `spill` (when given) and hashes it on all cores while the next one arrives (at
    /// most three blocks in flight).
    async fn consume(
        &self,
        url: &str,
        got: object_store::GetResult,
        spill: Option<(std::fs::File, String)>,
        meter: &crate::progress::Meter,
    ) -> Result<(blake3::Hash, u64), String> {
        let expected = got.meta.size;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let sink = tokio::task::spawn_blocking(move || -> Result<blake3::Hash, String> {
            use std::io::Write;
            let mut spill = spill;
            let mut hasher = blake3::Hasher::new();
            for block in rx {
                if let Some((file, name)) = spill.as_mut() {
                    file.write_all(&block)
                        .map_err(|e| format!("spill to {name}: {e}"))?;
                }
                hasher.update_rayon(&block);
            }
            if let Some((file, name)) = spill.as_mut() {
                file.flush().map_err(|e| format!("spill to {name}: {e}"))?;
            }
            Ok(hasher.finalize())
        });
        let mut bytes = 0u64;
        let mut block = Vec::with_capacity(HASH_BLOCK);
        let mut stream = got.into_stream();
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(self.describe(url, &e));
                    break;
                }
            };
            bytes += chunk.len() as u64;
            meter.add(chunk.len() as u64);
            block.extend_from_slice(&chunk);
            if block.len() >= HASH_BLOCK {
                let full = std::mem::replace(&mut block, Vec::with_capacity(HASH_BLOCK));
                // The sink stops taking blocks only when it failed; its error says why.
                let tx = tx.clone();
                if tokio::task::spawn_blocking(move || tx.send(full))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break;
                }
            }
        }
        if failed.is_none() && !block.is_empty() {
            let _ = tokio::task::spawn_blocking(move || tx.send(block)).await;
        } else {
            drop(tx);
        }
        let digest = sink
            .await
            .map_err(|e| format!("spill task failed: {e}"))??;
        if let Some(reason) = failed {
            return Err(reason);
        }
        if bytes != expected {
            return Err(format!(
                "download of {url} ended after {bytes} of {expected} bytes"
            ));
        }
        Ok((digest, bytes))
    }
}

#[async_trait::async_trait]
impl ArtifactSource for ObjectSource {
    async fn resolve(
        &self,
        url: &str,
        pick: Option<Pick>,
        window: backupset::Window,
        now_ms: i64,
        seed: u64,
        tested: &std::collections::BTreeMap<String, i64>,
    ) -> Result<Picked, String> {
        let Some(pick) = pick else {
            return Ok(Picked {
                url: url.to_owned(),
                from: None,
            });
        };
        let listed = self.list(url).await?;
        let chosen = backupset::choose_tested(url, &listed, pick, window, now_ms, seed, &|c| {
            tested.get(&join(url, &c.key)).copied()
        })?;
        Ok(Picked {
            url: join(url, &chosen.candidate.key),
            from: Some((chosen.candidates, chosen.listed)),
        })
    }

    fn needs_spill(&self) -> bool {
        true
    }

    async fn list(&self, url: &str) -> Result<Vec<Candidate>, String> {
        ObjectSource::list(self, url).await
    }

    async fn fetch(
        &self,
        url: &str,
        spill: Option<&Path>,
        meter: &crate::progress::Meter,
    ) -> Result<Fetched, FetchError> {
        let dir = spill.ok_or("an object store artifact needs a spill dir")?;
        if url.ends_with('/') {
            return self.fetch_prefix(url, dir, meter).await;
        }
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("artifact");
        let dest: PathBuf = dir.join(name);
        let got = self.get_artifact(url, url, &[]).await?;
        meter.expect(got.meta.size);
        let file = std::fs::File::create(&dest)
            .map_err(|e| format!("spill {url} to {}: {e}", dest.display()))?;
        let hashed = self
            .consume(url, got, Some((file, dest.display().to_string())), meter)
            .await?;
        Ok(Fetched {
            path: dest,
            hashed: Some(hashed),
        })
    }

    async fn sidecar(&self, url: &str) -> Result<Option<Blake3Digest>, String> {
        let sidecar = format!("{url}.blake3");
        match self.read_small(&sidecar).await? {
            Some(bytes) => {
                super::local::parse_sidecar(&String::from_utf8_lossy(&bytes), &sidecar).map(Some)
            }
            None => Ok(None),
        }
    }

    async fn hash(&self, url: &str) -> Result<Option<blake3::Hash>, String> {
        match self.get(url).await? {
            Some(got) => self
                .consume(url, got, None, &crate::progress::Meter::default())
                .await
                .map(|(h, _)| Some(h)),
            None => Ok(None),
        }
    }
}

impl ObjectSource {
    /// Every object under a prefix (a base backup, a backup directory), downloaded into one
    /// directory of `spill` keyed by their paths below the prefix, each hashed on the way; the
    /// checksum phase then hashes the tree as a whole.
    async fn fetch_prefix(
        &self,
        url: &str,
        spill: &Path,
        meter: &crate::progress::Meter,
    ) -> Result<Fetched, FetchError> {
        use futures_util::TryStreamExt;
        let prefix = self.key(url)?;
        let name = url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("artifact");
        let root = spill.join(name);
        std::fs::create_dir_all(&root).map_err(|e| format!("spill dir: {e}"))?;
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.describe(url, &e))?;
        if objects.is_empty() {
            return Err(format!("not found: nothing under {url}").into());
        }
        let all: Vec<(String, String)> = objects
            .iter()
            .filter_map(|m| {
                let rest = m.location.as_ref().strip_prefix(prefix.as_ref())?;
                Some((
                    join(url, rest.trim_start_matches('/')),
                    m.location.as_ref().to_owned(),
                ))
            })
            .collect();
        for meta in objects {
            let parts: Vec<String> = meta
                .location
                .prefix_match(&prefix)
                .map(|p| p.map(|part| part.as_ref().to_owned()).collect())
                .unwrap_or_default();
            if parts.is_empty()
                || parts
                    .iter()
                    .any(|p| p == "." || p == ".." || p.contains('/'))
            {
                return Err(format!(
                    "{url}: the object {} cannot be laid out below the prefix",
                    meta.location
                )
                .into());
            }
            let dest = parts.iter().fold(root.clone(), |d, p| d.join(p));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("spill dir: {e}"))?;
            }
            let object_url = join(url, &parts.join("/"));
            let got = self.get_artifact(&object_url, url, &all).await?;
            let file = std::fs::File::create(&dest)
                .map_err(|e| format!("spill {object_url} to {}: {e}", dest.display()))?;
            self.consume(
                &object_url,
                got,
                Some((file, dest.display().to_string())),
                meter,
            )
            .await?;
        }
        Ok(Fetched {
            path: root,
            hashed: None,
        })
    }
}

/// The URL of `name` inside the prefix `url` names.
pub fn join(url: &str, name: &str) -> String {
    format!("{}/{name}", url.trim_end_matches('/'))
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(400).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse("s3://b/daily/x.dump"),
            Some(("b".into(), "daily/x.dump".into()))
        );
        assert_eq!(parse("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse("s3:///x"), None);
        assert_eq!(parse("file:///x"), None);
        assert_eq!(join("s3://b/daily/", "x"), "s3://b/daily/x");
        assert_eq!(join("s3://b/daily", "x"), "s3://b/daily/x");
    }

    #[test]
    fn http_urls() {
        assert_eq!(
            parse_http("http://127.0.0.1:8080/pg/x.dump"),
            Some(("http://127.0.0.1:8080".into(), "pg/x.dump".into()))
        );
        assert_eq!(
            parse_http("https://h/a%20b?sig=1"),
            Some(("https://h".into(), "a%20b".into()))
        );
        assert_eq!(parse_http("https://user:pw@h/x"), None);
        assert_eq!(parse_http("ftp://h/x"), None);
        assert_eq!(parse_http("http:///x"), None);
    }

    #[test]
    fn settings_never_show_values() {
        let s = S3Settings(BTreeMap::from([(
            "aws_secret_access_key".to_owned(),
            "hunter2".to_owned(),
        )]));
        let shown = format!("{s:?}");
        assert!(shown.contains("aws_secret_access_key") && !shown.contains("hunter2"));
        let h = HttpSettings {
            headers: BTreeMap::from([("Authorization".to_owned(), "Bearer hunter2".to_owned())]),
        };
        let shown = format!("{h:?}");
        assert!(shown.contains("Authorization") && !shown.contains("hunter2"));
        let bad = HttpSettings {
            headers: BTreeMap::from([("X-Token".to_owned(), "a\nb hunter2".to_owned())]),
        };
        let err = bad.header_map().expect_err("newline in a header value");
        assert!(err.contains("X-Token") && !err.contains("hunter2"), "{err}");
    }
}
