//! Artifacts in S3-compatible object storage (`s3://bucket/key`), through the `object_store` crate.
//!
//! Configuration is the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`), with the worker's own [`S3Settings`] on top (same keys, lowercase). Values
//! are never logged, put in reports or passed to a sandbox; error reasons name the object and
//! what went wrong, never a credential.
//!
//! A download is one pass: the object streams into a spill file in the work dir while blake3
//! hashes the same bytes, so the checksum phase has nothing left to read. (The spill is the one
//! copy on local disk: restore tools read it, and nothing of it reaches a sandbox before its
//! checksum holds.)

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use rehearse_core::backupset::Candidate;

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

/// Source profiles from a TOML file (`--sources`): one table per profile under `s3`, with
/// object_store's AWS keys (`aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`,
/// `aws_region`, `aws_allow_http`, …). `Err` names the file and the problem, never a value.
///
/// ```toml
/// [s3.dr]
/// aws_endpoint = "https://minio.dr.example:9000"
/// aws_access_key_id = "..."
/// aws_secret_access_key = "..."
/// ```
pub fn parse_profiles(text: &str) -> Result<BTreeMap<String, S3Settings>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        s3: BTreeMap<String, BTreeMap<String, String>>,
    }
    let file: File = toml::from_str(text).map_err(|e| {
        format!(
            "source profiles: {}",
            e.message().split_whitespace().collect::<Vec<_>>().join(" ")
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, keys) in file.s3 {
        if let Some(bad) = keys
            .keys()
            .find(|k| k.parse::<AmazonS3ConfigKey>().is_err())
        {
            return Err(format!(
                "source profile {name:?}: unknown S3 setting {bad:?}"
            ));
        }
        out.insert(name, S3Settings(keys));
    }
    Ok(out)
}

/// `s3://bucket/key` split; `None` for any other URL.
pub fn parse(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), key.to_owned()))
}

pub fn is_remote(url: &str) -> bool {
    parse(url).is_some()
}

fn store(bucket: &str, settings: &S3Settings) -> Result<AmazonS3, String> {
    // Client options first: setting them later would reset what the environment said (such as
    // AWS_ALLOW_HTTP). A multi-GB object streams for minutes, so no whole-request timeout (the
    // plan's timeout bounds the verification), but a dead endpoint is noticed quickly.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(
            ClientOptions::new()
                .with_timeout_disabled()
                .with_connect_timeout(Duration::from_secs(5)),
        )
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        });
    // The AWS environment, as AmazonS3Builder::from_env reads it; then the worker's settings.
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_")
            && let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            builder = builder.with_config(key, value);
        }
    }
    for (key, value) in &settings.0 {
        let key: AmazonS3ConfigKey = key
            .parse()
            .map_err(|_| format!("unknown S3 setting {key:?}"))?;
        builder = builder.with_config(key, value);
    }
    builder.with_bucket_name(bucket).build().map_err(|e| {
        format!(
            "S3 configuration for bucket {bucket}: {}",
            one_line(&e.to_string())
        )
    })
}

/// A reason for a failed S3 call, naming the object and never a credential.
fn describe(url: &str, e: &object_store::Error) -> String {
    let text = one_line(&e.to_string());
    tracing::debug!(url, error = %text, "S3 call failed");
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

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(400).collect()
}

/// What a download produced.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub digest: blake3::Hash,
    pub bytes: u64,
}

/// Starts reading an object; `Ok(None)` when there is none.
async fn get(url: &str, settings: &S3Settings) -> Result<Option<object_store::GetResult>, String> {
    let (bucket, key) = parse(url).ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
    match store(&bucket, settings)?
        .get(&ObjectPath::from(key.as_str()))
        .await
    {
        Ok(got) => Ok(Some(got)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(describe(url, &e)),
    }
}

/// Streams `url` into `dest` and hashes it on the way, in one pass with bounded memory.
pub async fn download(url: &str, dest: &Path, settings: &S3Settings) -> Result<Fetched, String> {
    let got = get(url, settings)
        .await?
        .ok_or_else(|| format!("not found: {url}"))?;
    let file = std::fs::File::create(dest)
        .map_err(|e| format!("spill {url} to {}: {e}", dest.display()))?;
    consume(url, got, Some((file, dest.display().to_string()))).await
}

/// Hashes `url` without keeping it (a copy checked against the artifact). `Ok(None)`: not found.
pub async fn hash(url: &str, settings: &S3Settings) -> Result<Option<Fetched>, String> {
    match get(url, settings).await? {
        Some(got) => consume(url, got, None).await.map(Some),
        None => Ok(None),
    }
}

/// Reads an object to its end: the download gathers 8 MiB blocks, and a blocking thread writes
/// each block to `spill` (when given) and hashes it on all cores while the next one arrives (at
/// most three blocks in flight).
async fn consume(
    url: &str,
    got: object_store::GetResult,
    spill: Option<(std::fs::File, String)>,
) -> Result<Fetched, String> {
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
                failed = Some(describe(url, &e));
                break;
            }
        };
        bytes += chunk.len() as u64;
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
    Ok(Fetched { digest, bytes })
}

/// A small object (a sidecar), or `None` when there is none. `Err` when it is too large or
/// cannot be read.
pub async fn read_small(url: &str, settings: &S3Settings) -> Result<Option<Vec<u8>>, String> {
    let Some(got) = get(url, settings).await? else {
        return Ok(None);
    };
    if got.meta.size as usize > SIDECAR_LIMIT {
        return Err(format!("{url} is too large to be a digest"));
    }
    got.bytes()
        .await
        .map(|b| Some(b.to_vec()))
        .map_err(|e| describe(url, &e))
}

/// The objects directly under a prefix (a backup set), as candidates named relative to it.
pub async fn list(url: &str, settings: &S3Settings) -> Result<Vec<Candidate>, String> {
    let (bucket, key) = parse(url).ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
    let store = store(&bucket, settings)?;
    let prefix = key.trim_end_matches('/');
    let prefix_path = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let listed = store
        .list_with_delimiter(prefix_path.as_ref())
        .await
        .map_err(|e| describe(url, &e))?;
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

/// The URL of `name` inside the prefix `url` names.
pub fn join(url: &str, name: &str) -> String {
    format!("{}/{name}", url.trim_end_matches('/'))
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
    fn profiles_parse_and_refuse_unknown_keys() {
        let p = parse_profiles(
            "[s3.dr]\naws_endpoint = \"http://127.0.0.1:9000\"\naws_secret_access_key = \"s\"\n",
        )
        .expect("valid");
        assert_eq!(p["dr"].0["aws_endpoint"], "http://127.0.0.1:9000");
        let err = parse_profiles("[s3.dr]\naws_endpiont = \"x\"\n").expect_err("typo");
        assert!(err.contains("aws_endpiont") && err.contains("dr"), "{err}");
        assert!(parse_profiles("[gcs.x]\n").is_err());
    }

    #[test]
    fn settings_never_show_values() {
        let s = S3Settings(BTreeMap::from([(
            "aws_secret_access_key".to_owned(),
            "hunter2".to_owned(),
        )]));
        let shown = format!("{s:?}");
        assert!(shown.contains("aws_secret_access_key") && !shown.contains("hunter2"));
    }
}
