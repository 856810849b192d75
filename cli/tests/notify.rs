//! Notifications end to end: a webhook receiver on loopback, three coordinators with the same
//! `--notify` file, a worker and a real dump whose digest does not match. The failed verdict is
//! delivered signed; while the receiver refuses it the event stays in the outbox, and after the
//! leader is killed the new leader delivers it under the same idempotency key — once.

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

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verdict_reaches_the_webhook_signed_and_survives_a_leader_kill() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let conf = tempfile::tempdir().expect("dir");
    let notify = conf.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "[webhook.ops]\nurl = \"http://{addr}/hook\"\nsecret = \"s3cret\"\nevents = [\"verdict.failed\", \"verdict.error\"]\n"
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
}
