//! Notifications end to end: a webhook receiver on loopback, a real SMTP server (aiosmtpd, PyPI)
//! writing a Maildir, three coordinators with the same `--notify` file, a worker and a real dump
//! whose digest does not match. The failed verdict reaches the Slack-style hook and the mailbox
//! at once and the webhook signed; while the webhook refuses it the event stays in the outbox,
//! and after the leader is killed the new leader delivers it under the same idempotency key —
//! once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

mod common;
use common::fleet::Fleet;

#[derive(Debug, Clone)]
struct Delivery {
    accepted: bool,
    key: String,
    event: String,
    signature: String,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Receiver {
    accept: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    /// Serves `POST path` on a loopback port; returns the address.
    async fn serve(&self, path: &str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route(path, axum::routing::post(hook))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().expect("lock").clone()
    }

    async fn wait(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.deliveries();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: {got:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let accepted = r.accept.load(Ordering::SeqCst);
    r.got.lock().expect("lock").push(Delivery {
        accepted,
        key: header("idempotency-key"),
        event: header("x-rehearse-event"),
        signature: header("x-rehearse-signature"),
        body,
    });
    if accepted {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Stops the SMTP server with the test.
struct Smtp(std::process::Child);

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verdict_reaches_slack_smtp_and_a_signed_webhook_across_a_leader_kill() {
    let receiver = Receiver::default();
    let addr = receiver.serve("/hook").await;

    let slack = Receiver::default();
    slack.accept.store(true, Ordering::SeqCst);
    let slack_addr = slack.serve("/slack").await;

    let conf = tempfile::tempdir().expect("dir");
    let maildir = conf.path().join("mail");
    let smtp_port = common::free_port();
    let _smtp = Smtp(
        std::process::Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{smtp_port}"),
            ])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd (PyPI; scripts/setup installs it)"),
    );
    // The mailbox's daily digest is due this very minute: the leader sends it at once.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let digest_at = format!("{:02}:{:02}", now_s / 3600 % 24, now_s / 60 % 60);
    let notify = conf.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "[webhook.ops]\nurl = \"http://{addr}/hook\"\nsecret = \"s3cret\"\nevents = [\"verdict.failed\", \"verdict.error\"]\n\
             [slack.team]\nurl = \"http://{slack_addr}/slack\"\nevents = [\"verdict.failed\"]\n\
             [smtp.dba]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
             from = \"Rehearse <rehearse@example.org>\"\nto = [\"dba@example.org\"]\nevents = [\"verdict.failed\"]\n\
             digest = \"{digest_at} UTC\"\n"
        ),
    )
    .expect("notify file");
    let mut f = Fleet::start_with(
        &[("eu-1", "eu", 1)],
        &["--notify", &notify.to_string_lossy()],
    )
    .await;
    let plan: rehearse_core::plan::Plan =
        rehearse_core::plan::Plan::from_toml(&f.plan).expect("demo plan");
    let digest = plan.artifact.blake3.expect("digest").to_string();
    let bad = f.plan.replace(digest.as_str(), &"0".repeat(64));
    assert_ne!(bad, f.plan);
    let id = f.client().submit(&bad).await.expect("submit");
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "failed", "{job:?}");

    // The Slack-style hook and the mailbox take it at once.
    let posts = slack.wait("a Slack post", |d| !d.is_empty()).await;
    let text: serde_json::Value = serde_json::from_slice(&posts[0].body).expect("json");
    assert!(
        text["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("backup failed verification") && t.contains("checksum")),
        "{text}"
    );
    let mails = || -> Vec<String> {
        std::fs::read_dir(maildir.join("new"))
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mail, digest_mail) = loop {
        let all = mails();
        let find = |what: &str| all.iter().find(|m| m.contains(what)).cloned();
        if let (Some(m), Some(d)) = (
            find("Subject: [rehearse] backup failed"),
            find("Subject: [rehearse] daily digest"),
        ) {
            break (m, d);
        }
        assert!(
            Instant::now() < deadline,
            "no failure mail and digest in {}: {all:#?}",
            maildir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The digest: the day's counts per state, in a plain-text and an HTML part.
    assert!(
        digest_mail.contains("jobs: ")
            && digest_mail.contains("passed")
            && digest_mail.contains("Content-Type: text/html")
            && digest_mail.contains("digest-smtp.dba-"),
        "{digest_mail}"
    );
    assert!(
        mail.contains("Subject: [rehearse] backup failed verification")
            && mail.contains("Content-Type: text/plain")
            && mail.contains("Content-Type: text/html")
            && mail.contains("dba@example.org"),
        "{mail}"
    );

    // Refused: the event stays in the outbox and is tried again.
    let refused = receiver.wait("a first delivery", |d| !d.is_empty()).await;
    let key = refused[0].key.clone();
    assert_eq!(key, format!("verdict.failed-{id}"));
    let leader = f.cluster.leader().await;
    f.cluster.kill(leader);
    receiver.accept.store(true, Ordering::SeqCst);
    let got = receiver
        .wait("a delivery taken after the leader's death", |d| {
            d.iter().any(|d| d.accepted)
        })
        .await;
    let taken = got.iter().find(|d| d.accepted).expect("taken");
    assert_eq!(
        taken.key, key,
        "the same idempotency key from the new leader"
    );
    assert_eq!(taken.event, "verdict.failed");
    assert_eq!(
        taken.signature,
        rehearse_coordinator::notify::signature(b"s3cret", &taken.body)
    );
    let body: serde_json::Value = serde_json::from_slice(&taken.body).expect("json");
    assert_eq!(body["job"], id.as_str());
    assert_eq!(body["kind"], "verdict.failed");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("checksum")),
        "{body}"
    );
    // Taken once, it is marked sent: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let accepted = receiver.deliveries().iter().filter(|d| d.accepted).count();
    assert_eq!(accepted, 1, "{:#?}", receiver.deliveries());
    // One digest for the instant, though a new leader took over: the state remembers it was
    // sent; and only to the channel that asked for it.
    let digests = mails()
        .into_iter()
        .filter(|m| m.contains("Subject: [rehearse] daily digest"))
        .count();
    assert_eq!(digests, 1, "{:#?}", mails());
    assert!(
        slack
            .deliveries()
            .iter()
            .all(|d| !String::from_utf8_lossy(&d.body).contains("digest")),
        "{:#?}",
        slack.deliveries()
    );
}
