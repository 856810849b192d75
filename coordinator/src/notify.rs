//! Notification channels (`rehearse coordinator --notify FILE`) and their delivery from the
//! outbox in the replicated state (`rehearse_core::notify`).
//!
//! ```toml
//! [webhook.ops]
//! url = "https://hooks.example/rehearse"
//! secret_env = "REHEARSE_WEBHOOK_SECRET"   # or secret = "…", or secret_file = "/etc/…"
//! events = ["verdict.failed"]              # default: every kind
//! drills = ["shop monthly"]                # default: every job, in a drill or not
//! ```
//!
//! Only the leader delivers: it reads the outbox, POSTs each event to every channel that wants
//! it — a JSON body, `Idempotency-Key: <event id>`, `X-Rehearse-Event: <kind>` and
//! `X-Rehearse-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>` — retrying a
//! channel that fails with backoff (1 s doubling to 5 min), and proposes `MarkSent` once every
//! channel took it. A new leader finds what was not marked and sends it again under the same
//! key, so nothing is lost when a leader dies and receivers drop the repeat. A coordinator
//! without channels marks events sent at once (give every coordinator the same file).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehearse_core::jobs::Command;
use rehearse_core::notify::{Event, KINDS};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::handle::NodeHandle;
use crate::node::{Read, ReadAnswer};

/// How often the leader looks at the outbox.
const POLL: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    secret_file: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    drills: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    webhook: BTreeMap<String, RawWebhook>,
}

/// A webhook channel. Debug shows no secret.
pub struct Webhook {
    pub name: String,
    pub url: String,
    secret: Option<Vec<u8>>,
    events: Option<Vec<String>>,
    drills: Option<Vec<String>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Webhook({}: {})", self.name, self.url)
    }
}

impl Webhook {
    fn wants(&self, e: &Event) -> bool {
        self.events.as_ref().is_none_or(|k| k.contains(&e.kind))
            && self
                .drills
                .as_ref()
                .is_none_or(|d| e.drill.as_ref().is_some_and(|name| d.contains(name)))
    }
}

/// The channels of a `--notify` file.
#[derive(Debug, Default)]
pub struct NotifyConfig {
    pub webhooks: Vec<Webhook>,
}

impl NotifyConfig {
    /// Reads a `--notify` file; `Err` names the problem (never a secret's value).
    pub fn load(path: &Path) -> Result<NotifyConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--notify {}: {e}", path.display()))?;
        NotifyConfig::parse(&text).map_err(|e| format!("--notify {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<NotifyConfig, String> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| e.message().split_whitespace().collect::<Vec<_>>().join(" "))?;
        let mut webhooks = Vec::new();
        for (name, w) in raw.webhook {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!("webhook.{name}.url must be an http(s) URL"));
            }
            if let Some(bad) = w
                .events
                .iter()
                .flatten()
                .find(|k| !KINDS.contains(&k.as_str()))
            {
                return Err(format!(
                    "webhook.{name}.events: {bad:?} is not an event (one of {})",
                    KINDS.join(", ")
                ));
            }
            let secret = match (w.secret, w.secret_env, w.secret_file) {
                (None, None, None) => None,
                (Some(s), None, None) => Some(s.into_bytes()),
                (None, Some(var), None) => Some(
                    std::env::var(&var)
                        .map_err(|_| {
                            format!("webhook.{name}.secret_env: the variable {var} is not set")
                        })?
                        .into_bytes(),
                ),
                (None, None, Some(file)) => Some(
                    std::fs::read_to_string(&file)
                        .map_err(|e| format!("webhook.{name}.secret_file {file}: {e}"))?
                        .trim_end()
                        .as_bytes()
                        .to_vec(),
                ),
                _ => {
                    return Err(format!(
                        "webhook.{name}: give one of secret, secret_env and secret_file"
                    ));
                }
            };
            webhooks.push(Webhook {
                name,
                url: w.url,
                secret,
                events: w.events,
                drills: w.drills,
            });
        }
        Ok(NotifyConfig { webhooks })
    }
}

/// `sha256=<hex>` of the body's HMAC-SHA256 with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn post(client: &reqwest::Client, hook: &Webhook, event: &Event) -> Result<(), String> {
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let mut request = client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("idempotency-key", &event.id)
        .header("x-rehearse-event", &event.kind);
    if let Some(secret) = &hook.secret {
        request = request.header("x-rehearse-signature", signature(secret, &body));
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", hook.url))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {}", hook.url, response.status()))
    }
}

/// Delivers the outbox while this node leads (see the module doc).
pub async fn run(id: u64, node: NodeHandle, config: Arc<NotifyConfig>, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "notifications: no HTTP client; nothing will be sent");
            return;
        }
    };
    // This leadership's progress: (event, channel) taken, and when each event may be tried again.
    let mut taken: HashSet<(String, String)> = HashSet::new();
    let mut retry: HashMap<String, (Instant, u32)> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
        let leads = matches!(node.status().await, Ok(s) if s.leader == id);
        if !leads {
            taken.clear();
            retry.clear();
            continue;
        }
        let Ok(ReadAnswer::Outbox(events)) = node.read(Read::Outbox).await else {
            continue;
        };
        let mut done = Vec::new();
        for event in events {
            if retry
                .get(&event.id)
                .is_some_and(|(at, _)| *at > Instant::now())
            {
                continue;
            }
            let mut all = true;
            for hook in config.webhooks.iter().filter(|h| h.wants(&event)) {
                let key = (event.id.clone(), hook.name.clone());
                if taken.contains(&key) {
                    continue;
                }
                match post(&client, hook, &event).await {
                    Ok(()) => {
                        info!(event = %event.id, channel = %hook.name, "notification sent");
                        taken.insert(key);
                    }
                    Err(e) => {
                        warn!(event = %event.id, channel = %hook.name, error = %e, "notification not taken; will retry");
                        all = false;
                    }
                }
            }
            if all {
                done.push(event.id);
            } else {
                let tries = retry.get(&event.id).map_or(0, |(_, n)| *n) + 1;
                let wait = Duration::from_secs(1)
                    .saturating_mul(1 << tries.min(9))
                    .min(BACKOFF_MAX);
                retry.insert(event.id, (Instant::now() + wait, tries));
            }
        }
        if done.is_empty() {
            continue;
        }
        match node
            .fleet_command(Command::MarkSent { ids: done.clone() })
            .await
        {
            Ok(_) => {
                for id in &done {
                    retry.remove(id);
                    taken.retain(|(e, _)| e != id);
                }
            }
            Err(e) => debug!(error = %e, "sent notifications not marked yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_route_and_refuse() {
        let c = NotifyConfig::parse(
            "[webhook.ops]\nurl = \"http://127.0.0.1:1/x\"\nsecret = \"hunter2\"\nevents = [\"verdict.failed\"]\ndrills = [\"shop\"]\n",
        )
        .expect("valid");
        let hook = &c.webhooks[0];
        assert!(!format!("{c:?}").contains("hunter2"), "no secret in Debug");
        let event = |kind: &str, drill: Option<&str>| Event {
            id: "e".into(),
            kind: kind.into(),
            at_ms: 0,
            job: Some("j".into()),
            drill: drill.map(str::to_owned),
            exercise: None,
            worker: None,
            artifact: None,
            reason: None,
        };
        assert!(hook.wants(&event("verdict.failed", Some("shop"))));
        assert!(!hook.wants(&event("verdict.error", Some("shop"))));
        assert!(!hook.wants(&event("verdict.failed", None)));
        for (bad, says) in [
            ("[webhook.a]\nurl = \"ftp://x\"\n", "http(s)"),
            (
                "[webhook.a]\nurl = \"http://x\"\nevents = [\"verdict.bad\"]\n",
                "verdict.bad",
            ),
            (
                "[webhook.a]\nurl = \"http://x\"\nsecrit = \"s\"\n",
                "secrit",
            ),
            (
                "[webhook.a]\nurl = \"http://x\"\nsecret = \"s\"\nsecret_env = \"V\"\n",
                "one of",
            ),
            ("[smtp.a]\n", "smtp"),
        ] {
            let err = NotifyConfig::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_signature_is_github_style_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
