//! Objects in an archive storage class (S3 GLACIER, DEEP_ARCHIVE, …): a GET answers
//! `InvalidObjectState` until a restore made a temporary copy readable. A common lifecycle policy
//! moves backups there after 30 days, so an old recovery point is not a bad backup: the source asks
//! S3 to restore it (RestoreObject, signed with the store's own credentials and SigV4 signer) and
//! the verification ends "not readable yet", which a cluster turns into a later try
//! (`Report::not_yet`), never into `failed`.
//!
//! Settings in the S3 profile, beside `object_store`'s keys:
//! - `restore_request` (`true`): ask for the restore; `false` only waits for one someone else
//!   requests (restores cost money; some teams restore by hand).
//! - `restore_tier` (`Standard`; or `Bulk`, `Expedited`) and `restore_days` (`1`): the request.
//! - `restore_poll` (`15m`): how long a cluster waits before the next try.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};

/// The profile keys this module reads (not `object_store`'s).
pub const KEYS: [&str; 4] = [
    "restore_request",
    "restore_tier",
    "restore_days",
    "restore_poll",
];

const TIERS: [&str; 3] = ["Standard", "Bulk", "Expedited"];

/// What to do about an archived object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSettings {
    pub request: bool,
    pub tier: String,
    pub days: u32,
    pub poll: Duration,
}

impl Default for RestoreSettings {
    fn default() -> RestoreSettings {
        RestoreSettings {
            request: true,
            tier: "Standard".into(),
            days: 1,
            poll: Duration::from_secs(15 * 60),
        }
    }
}

impl RestoreSettings {
    /// The restore keys of a profile; `Err` names the key and what it takes.
    pub fn from_profile<'a>(
        keys: impl Iterator<Item = (&'a String, &'a String)>,
    ) -> Result<RestoreSettings, String> {
        let mut out = RestoreSettings::default();
        for (key, value) in keys {
            match key.as_str() {
                "restore_request" => {
                    out.request = value
                        .parse()
                        .map_err(|_| format!("restore_request is true or false, not {value:?}"))?;
                }
                "restore_tier" => {
                    out.tier = TIERS
                        .iter()
                        .find(|t| t.eq_ignore_ascii_case(value))
                        .ok_or_else(|| {
                            format!("restore_tier is one of {}, not {value:?}", TIERS.join(", "))
                        })?
                        .to_string();
                }
                "restore_days" => {
                    out.days = value.parse().ok().filter(|d| *d >= 1).ok_or_else(|| {
                        format!("restore_days is a whole number of days ≥ 1, not {value:?}")
                    })?;
                }
                "restore_poll" => {
                    out.poll = humantime::parse_duration(value)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            format!("restore_poll is a duration such as 15m, not {value:?}")
                        })?;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Why an object could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// A reason for the report (the pipeline decides between `failed` and `error`).
    Failed(String),
    /// Not readable yet: an archived object whose restore was requested or is under way.
    NotYet {
        reason: String,
        retry_after: Duration,
    },
    /// This worker could not get at it (an archived object's state or restore refused to its
    /// credentials): `error`, never `failed` — the backup may be good.
    Cannot(String),
}

impl From<String> for FetchError {
    fn from(reason: String) -> FetchError {
        FetchError::Failed(reason)
    }
}

impl From<&str> for FetchError {
    fn from(reason: &str) -> FetchError {
        FetchError::Failed(reason.to_owned())
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Failed(r)
            | FetchError::Cannot(r)
            | FetchError::NotYet { reason: r, .. } => f.write_str(r),
        }
    }
}

/// RestoreObject and HEAD for one bucket, signed like the store's own requests.
pub struct Restorer {
    store: Arc<AmazonS3>,
    /// `https://host[:port]/bucket` (path style) or `https://bucket.host` (virtual hosted).
    base: String,
    region: String,
    client: reqwest::Client,
    pub settings: RestoreSettings,
}

impl std::fmt::Debug for Restorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Restorer({})", self.base)
    }
}

/// Percent-encodes a key the way SigV4's canonical URI wants it: every byte but the unreserved
/// ones, `/` kept between segments.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Restorer {
    /// From the builder the store was made with (its endpoint, region and addressing style).
    pub fn new(
        builder: &AmazonS3Builder,
        store: Arc<AmazonS3>,
        bucket: &str,
        settings: RestoreSettings,
    ) -> Result<Restorer, String> {
        let region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted = builder
            .get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let base = match builder.get_config_value(&AmazonS3ConfigKey::Endpoint) {
            // With an endpoint, virtual-hosted style means the endpoint names the bucket already.
            Some(e) if virtual_hosted => e.trim_end_matches('/').to_owned(),
            Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
            None if virtual_hosted => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("S3 restore client: {e}"))?;
        Ok(Restorer {
            store,
            base,
            region,
            client,
            settings,
        })
    }

    async fn send(
        &self,
        method: http::Method,
        key: &str,
        query: &str,
        body: &str,
    ) -> Result<reqwest::Response, String> {
        let credential = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| format!("S3 credentials: {e}"))?;
        let url = format!("{}/{}{query}", self.base, encode_key(key));
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(object_store::client::HttpRequestBody::from(body.to_owned()))
            .map_err(|e| format!("S3 request for {key}: {e}"))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let mut out = self.client.request(method, &url).body(body.to_owned());
        for (name, value) in request.headers() {
            out = out.header(name, value);
        }
        out.send()
            .await
            .map_err(|e| format!("S3 request for {key}: {e}"))
    }

    /// The object's storage class and restore status (`x-amz-restore`), from a HEAD.
    async fn status(&self, key: &str) -> Result<(String, Option<String>), String> {
        let r = self.send(http::Method::HEAD, key, "", "").await?;
        if !r.status().is_success() {
            return Err(format!("HEAD answered {}", r.status()));
        }
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok((
            header("x-amz-storage-class").unwrap_or_else(|| "an archive".into()),
            header("x-amz-restore"),
        ))
    }

    /// Asks S3 to restore the object; an answer that one is under way already is fine.
    async fn request(&self, key: &str) -> Result<(), String> {
        let body = format!(
            "<RestoreRequest xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Days>{}</Days><GlacierJobParameters><Tier>{}</Tier></GlacierJobParameters></RestoreRequest>",
            self.settings.days, self.settings.tier
        );
        let r = self
            .send(http::Method::POST, key, "?restore", &body)
            .await?;
        let status = r.status();
        if status.is_success() {
            return Ok(());
        }
        let text = r.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::CONFLICT && text.contains("RestoreAlreadyInProgress") {
            return Ok(());
        }
        let code = text
            .split("<Code>")
            .nth(1)
            .and_then(|t| t.split("</Code>").next())
            .unwrap_or("");
        Err(format!("RestoreObject answered {status} {code}")
            .trim_end()
            .to_owned())
    }

    /// What to say about `what` (an object, or a prefix), of which a GET found an object
    /// archived: a restore is requested for every one of `objects` (url, key) that is archived
    /// and not restored (or that is left to others), and the verification is worth another try.
    pub async fn not_yet(&self, what: &str, objects: &[(String, String)]) -> FetchError {
        let poll = humantime::format_duration(self.settings.poll);
        let (mut requested, mut ongoing, mut waiting) = (0usize, 0usize, 0usize);
        let mut classes: Vec<String> = Vec::new();
        for (url, key) in objects {
            let (class, restore) = match self.status(key).await {
                Ok(s) => s,
                Err(e) => {
                    return FetchError::Cannot(format!(
                        "{url} is in an archive storage class and its state could not be read: {e}"
                    ));
                }
            };
            let archived = matches!(class.as_str(), "GLACIER" | "DEEP_ARCHIVE" | "an archive");
            let restored = restore
                .as_deref()
                .is_some_and(|r| r.contains("ongoing-request=\"false\""));
            if !archived || (restored && objects.len() > 1) {
                continue;
            }
            if !classes.contains(&class) {
                classes.push(class.clone());
            }
            if restore
                .as_deref()
                .is_some_and(|r| r.contains("ongoing-request=\"true\""))
            {
                ongoing += 1;
            } else if restored || !self.settings.request {
                // Restored a moment ago (or the copy just expired), or left to others.
                waiting += 1;
            } else if let Err(e) = self.request(key).await {
                return FetchError::Cannot(format!(
                    "{url} is in the {class} storage class and the restore request was refused ({e}): the worker's credentials need s3:RestoreObject, or restore it by hand"
                ));
            } else {
                requested += 1;
            }
        }
        let class = if classes.is_empty() {
            "an archive".to_owned()
        } else {
            classes.join(" and ")
        };
        let count = |n: usize| {
            if objects.len() == 1 {
                String::new()
            } else {
                format!(" for {n} object{}", if n == 1 { "" } else { "s" })
            }
        };
        let mut said = Vec::new();
        if requested > 0 {
            said.push(format!(
                "restore requested{} ({} tier, kept {} day{})",
                count(requested),
                self.settings.tier,
                self.settings.days,
                if self.settings.days == 1 { "" } else { "s" }
            ));
        }
        if ongoing > 0 {
            said.push(format!("restore under way{}", count(ongoing)));
        }
        if waiting > 0 && !self.settings.request {
            said.push(format!(
                "not restored{} (this worker's S3 profile has restore_request = false: restore it by hand, or let Rehearse request it)",
                count(waiting)
            ));
        } else if waiting > 0 {
            said.push(format!("being restored{}", count(waiting)));
        }
        let reason = format!(
            "{what} is in the {class} storage class: {}; try again in {poll}",
            said.join(", ")
        );
        tracing::info!(what, "archived artifact: {reason}");
        FetchError::NotYet {
            reason,
            retry_after: self.settings.poll,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_for_the_canonical_uri() {
        assert_eq!(
            encode_key("shop/2026-11-01 full+x.dump"),
            "shop/2026-11-01%20full%2Bx.dump"
        );
        assert_eq!(encode_key("a~b_c.d-e"), "a~b_c.d-e");
    }

    #[test]
    fn restore_settings_parse_and_refuse() {
        let map: std::collections::BTreeMap<String, String> = [
            ("restore_tier", "bulk"),
            ("restore_days", "3"),
            ("restore_poll", "1s"),
            ("restore_request", "false"),
            ("aws_region", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = RestoreSettings::from_profile(map.iter()).expect("valid");
        assert_eq!(
            s,
            RestoreSettings {
                request: false,
                tier: "Bulk".into(),
                days: 3,
                poll: Duration::from_secs(1),
            }
        );
        for (k, v) in [
            ("restore_tier", "Fast"),
            ("restore_days", "0"),
            ("restore_poll", "soon"),
            ("restore_request", "yes"),
        ] {
            let one = [(k.to_owned(), v.to_owned())];
            let err = RestoreSettings::from_profile(one.iter().map(|(a, b)| (a, b)))
                .expect_err("refused");
            assert!(err.contains(k) && err.contains(v), "{err}");
        }
    }
}
