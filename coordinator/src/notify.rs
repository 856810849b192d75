//! Notification channels (`rehearse coordinator --notify FILE`) and their delivery from the
//! outbox in the replicated state (`rehearse_core::notify`).
//!
//! ```toml
//! [webhook.ops]
//! url = "https://hooks.example/rehearse"
//! secret_env = "REHEARSE_WEBHOOK_SECRET"   # or secret = "…", or secret_file = "/etc/…"
//! events = ["verdict.failed"]              # default: every kind
//! drills = ["shop monthly"]                # default: every job, in a drill or not
//!
//! [slack.team]                             # a Slack-compatible incoming webhook: {"text": …}
//! url = "https://hooks.slack.com/services/…"
//!
//! [smtp.dba]                               # lettre; tls = "starttls" (587), "tls" (465), "none" (25)
//! host = "smtp.example.org"
//! username = "rehearse"
//! password_env = "SMTP_PASSWORD"
//! from = "Rehearse <rehearse@example.org>"
//! to = ["dba@example.org"]
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
use rehearse_core::schedule::Schedule;
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
    /// A daily digest at this local time: "HH:MM" and an IANA zone (default UTC).
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    url: String,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    drills: Option<Vec<String>>,
    /// A daily digest at this local time: "HH:MM" and an IANA zone (default UTC).
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    /// "starttls" (default), "tls" or "none".
    #[serde(default)]
    tls: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    password_file: Option<String>,
    from: String,
    to: Vec<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    drills: Option<Vec<String>>,
    /// A daily digest at this local time: "HH:MM" and an IANA zone (default UTC).
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    webhook: BTreeMap<String, RawWebhook>,
    #[serde(default)]
    slack: BTreeMap<String, RawSlack>,
    #[serde(default)]
    smtp: BTreeMap<String, RawSmtp>,
}

/// Where a channel sends.
enum Target {
    /// A JSON POST, signed when there is a secret.
    Webhook {
        url: String,
        secret: Option<Vec<u8>>,
    },
    /// A Slack-compatible incoming webhook: `{"text": …}`.
    Slack { url: String },
    /// A mail with a plain-text and an HTML part.
    Smtp {
        transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
        from: lettre::message::Mailbox,
        to: Vec<lettre::message::Mailbox>,
        server: String,
    },
}

/// A channel. Debug shows its name and where it sends, never a secret.
pub struct Webhook {
    pub name: String,
    target: Target,
    events: Option<Vec<String>>,
    drills: Option<Vec<String>>,
    /// When its daily digest is due (`digest = "08:00 Europe/Berlin"`).
    digest: Option<Schedule>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Webhook { url, .. } => write!(f, "webhook {}: {url}", self.name),
            Target::Slack { url } => write!(f, "slack {}: {url}", self.name),
            Target::Smtp { server, .. } => write!(f, "smtp {}: {server}", self.name),
        }
    }
}

impl Webhook {
    /// The name digests are addressed by: `webhook.NAME`, `slack.NAME`, `smtp.NAME`.
    pub fn channel(&self) -> String {
        let kind = match self.target {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Smtp { .. } => "smtp",
        };
        format!("{kind}.{}", self.name)
    }

    fn wants(&self, e: &Event) -> bool {
        if let Some(channel) = &e.channel {
            return *channel == self.channel();
        }
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

/// A secret given inline, by environment variable or by file (one of them, or none).
fn secret(
    what: &str,
    inline: Option<String>,
    env: Option<String>,
    file: Option<String>,
) -> Result<Option<String>, String> {
    match (inline, env, file) {
        (None, None, None) => Ok(None),
        (Some(s), None, None) => Ok(Some(s)),
        (None, Some(var), None) => std::env::var(&var)
            .map(Some)
            .map_err(|_| format!("{what}_env: the variable {var} is not set")),
        (None, None, Some(path)) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim_end().to_owned()))
            .map_err(|e| format!("{what}_file {path}: {e}")),
        _ => Err(format!(
            "{what}: give one of {what}, {what}_env and {what}_file"
        )),
    }
}

fn check_routing(name: &str, events: &Option<Vec<String>>) -> Result<(), String> {
    match events
        .iter()
        .flatten()
        .find(|k| !KINDS.contains(&k.as_str()))
    {
        Some(bad) => Err(format!(
            "{name}.events: {bad:?} is not an event (one of {})",
            KINDS.join(", ")
        )),
        None => Ok(()),
    }
}

/// `digest = "HH:MM [Zone]"`: a daily schedule in that zone (UTC when none is named).
fn digest_at(name: &str, digest: Option<String>) -> Result<Option<Schedule>, String> {
    let Some(text) = digest else { return Ok(None) };
    let bad = || {
        format!(
            "{name}.digest: {text:?} is not \"HH:MM\" with an optional IANA zone, e.g. \"08:00 Europe/Berlin\""
        )
    };
    let mut parts = text.split_whitespace();
    let (Some(time), zone, None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (h, m) = time.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Schedule::new(&format!("{m} {h} * * *"), zone.unwrap_or("UTC"))
        .map(Some)
        .map_err(|e| format!("{name}.digest: {e}"))
}

fn check_url(name: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{name}.url must be an http(s) URL"))
    }
}

fn smtp(name: &str, raw: RawSmtp) -> Result<Target, String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, Tokio1Executor};
    let mailbox = |field: &str, s: &str| {
        s.parse::<lettre::message::Mailbox>()
            .map_err(|e| format!("{name}.{field}: {s:?} is not a mail address ({e})"))
    };
    let from = mailbox("from", &raw.from)?;
    if raw.to.is_empty() {
        return Err(format!("{name}.to: name at least one recipient"));
    }
    let to = raw
        .to
        .iter()
        .map(|t| mailbox("to", t))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = raw.tls.as_deref().unwrap_or("starttls");
    let builder = match tls {
        "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&raw.host)
            .map_err(|e| format!("{name}.host: {e}"))?
            .port(raw.port.unwrap_or(587)),
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&raw.host)
            .map_err(|e| format!("{name}.host: {e}"))?
            .port(raw.port.unwrap_or(465)),
        "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&raw.host)
            .port(raw.port.unwrap_or(25)),
        other => {
            return Err(format!(
                "{name}.tls is starttls, tls or none, not {other:?}"
            ));
        }
    };
    let password = secret(
        &format!("{name}.password"),
        raw.password,
        raw.password_env,
        raw.password_file,
    )?;
    let builder = match (raw.username, password) {
        (Some(user), Some(pass)) => builder.credentials(Credentials::new(user, pass)),
        (None, None) => builder,
        _ => {
            return Err(format!(
                "{name}: give both username and a password, or neither"
            ));
        }
    };
    Ok(Target::Smtp {
        transport: builder.timeout(Some(Duration::from_secs(10))).build(),
        from,
        to,
        server: format!(
            "{}:{} ({tls})",
            raw.host,
            raw.port.unwrap_or(match tls {
                "tls" => 465,
                "none" => 25,
                _ => 587,
            })
        ),
    })
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
            let name_ = format!("webhook.{name}");
            check_url(&name_, &w.url)?;
            check_routing(&name_, &w.events)?;
            let secret = secret(
                &format!("{name_}.secret"),
                w.secret,
                w.secret_env,
                w.secret_file,
            )?;
            webhooks.push(Webhook {
                name,
                target: Target::Webhook {
                    url: w.url,
                    secret: secret.map(String::into_bytes),
                },
                events: w.events,
                drills: w.drills,
                digest: digest_at(&name_, w.digest)?,
            });
        }
        for (name, w) in raw.slack {
            let name_ = format!("slack.{name}");
            check_url(&name_, &w.url)?;
            check_routing(&name_, &w.events)?;
            webhooks.push(Webhook {
                name,
                target: Target::Slack { url: w.url },
                events: w.events,
                drills: w.drills,
                digest: digest_at(&name_, w.digest)?,
            });
        }
        for (name, m) in raw.smtp {
            let name_ = format!("smtp.{name}");
            check_routing(&name_, &m.events)?;
            let (events, drills) = (m.events.clone(), m.drills.clone());
            let digest = digest_at(&name_, m.digest.clone())?;
            webhooks.push(Webhook {
                target: smtp(&name_, m)?,
                name,
                events,
                drills,
                digest,
            });
        }
        Ok(NotifyConfig { webhooks })
    }
}

/// One line saying what happened: a mail's subject, a Slack message.
pub fn summary(e: &Event) -> String {
    if let Some(d) = &e.digest {
        let j = &d.jobs;
        let mut line = format!(
            "daily digest to {}: {} passed, {} failed, {} could not verify",
            day(d.until_ms),
            j.passed,
            j.failed,
            j.error
        );
        if !d.overdue.is_empty() {
            line.push_str(&format!("; overdue: {}", d.overdue.join(", ")));
        }
        return line;
    }
    let subject = e
        .drill
        .as_deref()
        .map(|d| format!("drill {d:?}"))
        .or_else(|| e.exercise.as_deref().map(|x| format!("exercise {x}")))
        .or_else(|| e.worker.as_deref().map(|w| format!("worker {w}")))
        .or_else(|| e.job.as_deref().map(|j| format!("job {j}")))
        .unwrap_or_default();
    let what = match e.kind.as_str() {
        "verdict.failed" => "backup failed verification",
        "verdict.error" => "backup could not be verified",
        "drill.failed" => "drill run failed",
        "drill.error" => "drill run could not verify",
        "drill.skipped" => "drill run skipped",
        "drill.missed" => "drill ticks missed",
        "exercise.finished" => "DR exercise finished",
        "worker.lost" => "worker lost",
        "worker.unhealthy" => "worker unhealthy",
        "leader.changed" => "coordinator leader changed",
        other => other,
    };
    match &e.reason {
        Some(r) => format!("{what}: {subject}: {r}"),
        None => format!("{what}: {subject}"),
    }
}

fn day(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The event's fields as (label, value) rows, for a mail.
fn rows(e: &Event) -> Vec<(&'static str, String)> {
    if let Some(d) = &e.digest {
        let mut rows = vec![
            ("Event", e.kind.clone()),
            ("From", day(d.since_ms)),
            ("To", day(d.until_ms)),
        ];
        rows.extend(d.lines().into_iter().map(|l| ("", l)));
        rows.push(("Id", e.id.clone()));
        return rows;
    }
    let at = day(e.at_ms);
    [
        ("Event", Some(e.kind.clone())),
        ("At", (e.at_ms > 0).then_some(at)),
        ("Job", e.job.clone()),
        ("Drill", e.drill.clone()),
        ("Exercise", e.exercise.clone()),
        ("Worker", e.worker.clone()),
        ("Artifact", e.artifact.clone()),
        ("Why", e.reason.clone()),
        ("Id", Some(e.id.clone())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The mail for an event: a plain-text part and an HTML part.
pub fn mail(
    e: &Event,
    from: &lettre::message::Mailbox,
    to: &[lettre::message::Mailbox],
) -> Result<lettre::Message, String> {
    use lettre::message::{MultiPart, SinglePart, header::ContentType};
    let rows = rows(e);
    let text: String = rows
        .iter()
        .map(|(k, v)| match k.is_empty() {
            true => format!("{v}\n"),
            false => format!("{k}: {v}\n"),
        })
        .collect();
    let html = format!(
        "<html><body><h2>{}</h2><table>{}</table></body></html>",
        html_escape(&summary(e)),
        rows.iter()
            .map(|(k, v)| format!(
                "<tr><th align=\"left\">{k}</th><td>{}</td></tr>",
                html_escape(v)
            ))
            .collect::<String>()
    );
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .subject(format!("[rehearse] {}", summary(e)));
    for t in to {
        builder = builder.to(t.clone());
    }
    builder
        .header(lettre::message::header::MessageId::from(format!(
            "<{}@rehearse>",
            e.id.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.',
                "-"
            )
        )))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html),
                ),
        )
        .map_err(|e| format!("mail: {e}"))
}

/// A Slack message: the summary, and a digest's lines under it.
fn slack_text(e: &Event) -> String {
    let mut text = summary(e);
    for line in e.digest.iter().flat_map(|d| d.lines()) {
        text.push_str("\n• ");
        text.push_str(&line);
    }
    text
}

/// `sha256=<hex>` of the body's HMAC-SHA256 with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn post(client: &reqwest::Client, hook: &Webhook, event: &Event) -> Result<(), String> {
    // A digest shows the drills the channel follows (`drills`), all of them otherwise.
    let scoped;
    let event = match (&event.digest, &hook.drills) {
        (Some(d), Some(names)) => {
            let mut d = d.clone();
            d.drills.retain(|day| names.contains(&day.drill));
            d.overdue.retain(|name| names.contains(name));
            scoped = Event {
                digest: Some(d),
                ..event.clone()
            };
            &scoped
        }
        _ => event,
    };
    let (url, body, secret) = match &hook.target {
        Target::Webhook { url, secret } => (
            url,
            serde_json::to_vec(event).map_err(|e| e.to_string())?,
            secret.as_deref(),
        ),
        Target::Slack { url } => (
            url,
            serde_json::to_vec(&serde_json::json!({ "text": slack_text(event) }))
                .map_err(|e| e.to_string())?,
            None,
        ),
        Target::Smtp {
            transport,
            from,
            to,
            server,
        } => {
            use lettre::AsyncTransport as _;
            let message = mail(event, from, to)?;
            return transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| format!("{server}: {e}"));
        }
    };
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", &event.id)
        .header("x-rehearse-event", &event.kind);
    if let Some(secret) = secret {
        request = request.header("x-rehearse-signature", signature(secret, &body));
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", response.status()))
    }
}

/// A digest instant passed longer ago than this is not sent any more (a cluster down at that
/// time, a channel configured later in the day): the next day's comes.
const DIGEST_GRACE_MS: i64 = 60 * 60 * 1000;

/// Proposes each channel's digest whose instant has come (within [`DIGEST_GRACE_MS`]).
async fn propose_digests(
    node: &NodeHandle,
    config: &NotifyConfig,
    done: &mut HashMap<String, i64>,
) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for hook in &config.webhooks {
        let Some(schedule) = &hook.digest else {
            continue;
        };
        let Some(&fire) = schedule
            .ticks_between(now - DIGEST_GRACE_MS, now, 1)
            .0
            .last()
        else {
            continue;
        };
        let channel = hook.channel();
        if done.get(&channel) == Some(&fire) {
            continue;
        }
        let command = Command::Digest {
            channel: channel.clone(),
            fire_ms: fire as u64,
            at_ms: now as u64,
        };
        match node.fleet_command(command).await {
            Ok(_) => {
                info!(channel = %channel, "daily digest due");
                done.insert(channel, fire);
            }
            Err(e) => debug!(channel = %channel, error = %e, "digest not proposed yet"),
        }
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
    // The digest instant each channel's digest was proposed for (applying one twice is nothing).
    let mut digests: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
        let leads = matches!(node.status().await, Ok(s) if s.leader == id);
        if !leads {
            taken.clear();
            retry.clear();
            digests.clear();
            continue;
        }
        propose_digests(&node, &config, &mut digests).await;
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
            channel: None,
            digest: None,
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
            ("[email.a]\n", "email"),
            (
                "[smtp.a]\nhost = \"h\"\nfrom = \"nope\"\nto = [\"b@example.org\"]\n",
                "not a mail address",
            ),
            (
                "[smtp.a]\nhost = \"h\"\nfrom = \"a@example.org\"\nto = []\n",
                "at least one",
            ),
            (
                "[smtp.a]\nhost = \"h\"\ntls = \"ssl\"\nfrom = \"a@example.org\"\nto = [\"b@example.org\"]\n",
                "starttls, tls or none",
            ),
            (
                "[smtp.a]\nhost = \"h\"\nusername = \"u\"\nfrom = \"a@example.org\"\nto = [\"b@example.org\"]\n",
                "username and a password",
            ),
            (
                "[slack.a]\nurl = \"http://x\"\nchannel = \"#ops\"\n",
                "channel",
            ),
            (
                "[slack.a]\nurl = \"http://x\"\ndigest = \"25:00\"\n",
                "is not \"HH:MM\"",
            ),
            (
                "[slack.a]\nurl = \"http://x\"\ndigest = \"08:00 Mars/Olympus\"\n",
                "Mars/Olympus",
            ),
        ] {
            let err = NotifyConfig::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    /// A digest goes to the one channel it was made for, whatever the channels' `events`.
    #[test]
    fn a_digest_goes_to_its_channel_only() {
        let c = NotifyConfig::parse(
            "[slack.a]\nurl = \"http://x\"\nevents = [\"verdict.failed\"]\ndigest = \"08:00 Europe/Berlin\"\n\
             [webhook.a]\nurl = \"http://y\"\n",
        )
        .expect("config");
        let mut e: Event = serde_json::from_str(
            r#"{"id": "digest-slack.a-1", "kind": "digest", "at_ms": 1, "channel": "slack.a"}"#,
        )
        .expect("event");
        let wants = |e: &Event| -> Vec<String> {
            c.webhooks
                .iter()
                .filter(|h| h.wants(e))
                .map(Webhook::channel)
                .collect()
        };
        assert_eq!(wants(&e), ["slack.a"]);
        e.channel = None;
        e.kind = "verdict.error".into();
        assert_eq!(wants(&e), ["webhook.a"]);
        // 08:00 in Berlin is 07:00 UTC in winter.
        let slack = c
            .webhooks
            .iter()
            .find(|h| h.channel() == "slack.a")
            .expect("slack");
        let fire = slack.digest.as_ref().expect("digest").next_after(0);
        assert_eq!(fire, Some(7 * 3_600_000));
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
