//! Tokens end to end: three coordinators with `--auth required` and an `--admin-token-file`; the
//! admin makes `read`, `operate` and `worker` tokens with `rehearse token create`; a worker runs
//! on its worker token; every role gets 200, 401 or 403 as it should over real HTTP and gRPC
//! (the CLI); the dashboard signs in with a cookie; a revoked token is refused; no secret appears
//! in the coordinators' data, their logs or `token list`.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

mod common;
use common::fleet::Fleet;

const ADMIN: &str = "rh_0000000000000000000000000000000000000000000000000000000000adm1";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client")
}

/// `rehearse ARGS --token TOKEN` (none: no token).
fn rehearse(fleet: &Fleet, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    fleet.rehearse(&all)
}

fn create(fleet: &Fleet, name: &str, role: &str) -> String {
    let out = rehearse(
        fleet,
        Some(ADMIN),
        &[
            "token", "create", "--name", name, "--role", role, "--output", "json",
        ],
    );
    assert!(
        out.status.success(),
        "token create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["name"].as_str(), v["role"].as_str()),
        (Some(name), Some(role))
    );
    v["secret"].as_str().expect("secret").to_owned()
}

async fn status_of(req: reqwest::RequestBuilder) -> (StatusCode, String) {
    let r = req.send().await.expect("send");
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

/// Every byte under `dir` (data dirs, logs), to look for secrets in.
fn all_bytes(dir: &Path, out: &mut Vec<u8>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_bytes(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_gate_every_call_by_role_and_revoked_ones_are_refused() {
    let mut fleet = Fleet::start_auth(ADMIN, &[]).await;
    let reader = create(&fleet, "dash", "read");
    let operator = create(&fleet, "ci", "operate");
    let worker = create(&fleet, "fleet", "worker");

    // gRPC through the CLI: no token, a role too small, the right role.
    let none = rehearse(&fleet, None, &["jobs"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("requires a token"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    assert!(rehearse(&fleet, Some(&reader), &["jobs"]).status.success());
    let plan_file = fleet.root.path().join("artifacts/plan.toml");
    let plan_path = plan_file.to_str().expect("utf-8");
    let refused = rehearse(&fleet, Some(&reader), &["submit", plan_path]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("\"dash\" has role read"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let membership = rehearse(&fleet, Some(&operator), &["cluster", "remove", "3"]);
    assert!(
        !membership.status.success(),
        "operate may not change membership"
    );

    // A worker on its worker token registers and takes jobs; a worker token cannot read.
    fleet.spawn_worker_with("w1", "eu", 1, &["--runtime", "process", "--token", &worker]);
    fleet.wait_workers(1).await;
    assert!(!rehearse(&fleet, Some(&worker), &["jobs"]).status.success());

    // HTTP on the leader.
    let leader = fleet.cluster.leader().await;
    let at = |path: &str| format!("{}{path}", fleet.http[&leader]);
    let http = client();
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(
            status_of(http.get(at(open))).await.0,
            StatusCode::OK,
            "{open}"
        );
    }
    let (s, body) = status_of(http.get(at("/v1/jobs"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("\"unauthenticated\""), "{body}");
    let (s, _) = status_of(http.get(at("/v1/jobs")).bearer_auth(&reader)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = status_of(http.get(at("/v1/jobs")).bearer_auth(&worker)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");
    let plan = std::fs::read_to_string(&plan_file).expect("plan");
    let submit = |token: &str| {
        http.post(at("/v1/verifications?wait=120s"))
            .header("content-type", "application/toml")
            .bearer_auth(token)
            .body(plan.clone())
    };
    let (s, body) = status_of(submit(&reader)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = status_of(submit(&operator)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let job: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(job["state"], "passed", "{job}");

    // The dashboard: to /login without a token; a cookie after signing in.
    let (s, _) = status_of(http.get(at("/"))).await;
    assert!(s.is_redirection(), "{s}");
    let (s, _) = status_of(
        http.post(at("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("token=rh_wrong"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let login = http
        .post(at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={reader}"))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    assert!(
        login.headers()["set-cookie"]
            .to_str()
            .is_ok_and(|c| c.contains("HttpOnly"))
    );
    let (s, page) = status_of(http.get(at("/")).header("cookie", &cookie)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("<html"), "{page}");

    // token list names, never secrets; a revoked token is refused at once, by CLI and HTTP.
    let list = rehearse(&fleet, Some(ADMIN), &["token", "list", "--output", "json"]);
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    for name in ["dash", "ci", "fleet"] {
        assert!(listed.contains(name), "{listed}");
    }
    assert!(!listed.contains("rh_"), "no secret in the list: {listed}");
    let revoke = rehearse(&fleet, Some(ADMIN), &["token", "revoke", "dash"]);
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let after = rehearse(&fleet, Some(&reader), &["jobs"]);
    assert_eq!(after.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&after.stderr).contains("unknown token"));
    let (s, _) = status_of(http.get(at("/v1/jobs")).bearer_auth(&reader)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = status_of(http.get(at("/")).header("cookie", &cookie)).await;
    assert!(s.is_redirection(), "the cookie's token is revoked too: {s}");
    // Every node refuses it once it applied the revoke.
    for (id, base) in &fleet.http {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (s, _) =
                status_of(http.get(format!("{base}/v1/workers")).bearer_auth(&reader)).await;
            if s == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} still answers {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // No secret in the coordinators' data dirs and logs, nor the worker's log.
    let mut bytes = Vec::new();
    all_bytes(fleet.cluster.dir.path(), &mut bytes);
    bytes.extend(fleet.worker_log("w1").into_bytes());
    for secret in [ADMIN, &reader, &operator, &worker] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret was written to disk or a log"
        );
    }
}
