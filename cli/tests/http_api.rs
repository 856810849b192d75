//! The HTTP/JSON API end to end: three real coordinators serving it on loopback, a real worker,
//! real pg_dump output, real HTTP (reqwest). A CI-style call submits a plan and long-polls to its
//! verdict through a follower; every endpoint answers in the documented shape; errors carry
//! their stable code; the OpenAPI document lists every route.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde_json::Value;

mod common;
use common::fleet::Fleet;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client")
}

/// Follows redirects, as `curl -L` and most HTTP clients do.
fn following() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client")
}

async fn json(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.expect("body");
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}

/// The error code of an error answer, checking its shape.
fn code(body: &Value) -> &str {
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error carries a message: {body}"
    );
    body["error"]["code"].as_str().expect("error.code")
}

async fn leader_and_follower(f: &Fleet) -> (u64, u64) {
    let leader = f.cluster.leader().await;
    let follower = *f.http.keys().find(|id| **id != leader).expect("a follower");
    (leader, follower)
}

#[tokio::test]
async fn a_ci_call_submits_through_a_follower_and_long_polls_to_the_verdict() {
    let f = Fleet::start_http(&[("w1", "eu", 1)]).await;
    let (leader, follower) = leader_and_follower(&f).await;
    let at = |id: u64, path: &str| format!("{}{path}", f.http[&id]);

    // A follower redirects to the leader's HTTP address, method and query kept.
    let r = no_redirects()
        .post(at(follower, "/v1/verifications?wait=150s"))
        .header(CONTENT_TYPE, "application/toml")
        .body(f.plan.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()[LOCATION].to_str().expect("location").to_owned();
    assert_eq!(location, at(leader, "/v1/verifications?wait=150s"));

    // The CI call: one request, answered with the verdict.
    let (status, job) = json(
        following()
            .post(at(follower, "/v1/verifications?wait=150s"))
            .header(CONTENT_TYPE, "application/toml")
            .body(f.plan.clone())
            .send()
            .await
            .expect("submit"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["final"], true, "{job}");
    assert_eq!(job["state"], "passed", "{job}");
    assert_eq!(job["report"]["verdict"], "passed", "{job}");
    assert_eq!(job["attempts"][0]["worker"], "w1");
    let id = job["id"].as_str().expect("id").to_owned();

    // The same job by id (a final job answers at once, wait or not), and in the listing.
    let (status, again) = json(
        following()
            .get(at(leader, &format!("/v1/jobs/{id}?wait=30s")))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], id.as_str());
    assert_eq!(
        again["report"]["artifact"]["blake3"],
        job["report"]["artifact"]["blake3"]
    );
    let (status, listed) = json(
        following()
            .get(at(follower, "/v1/jobs?state=passed"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed
            .as_array()
            .expect("array")
            .iter()
            .any(|j| j["id"] == id.as_str()),
        "{listed}"
    );

    // Errors: one shape, a stable code.
    let (status, body) = json(
        following()
            .get(at(leader, "/v1/jobs?state=bogus"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid"));
    let (status, body) = json(
        following()
            .get(at(leader, "/v1/jobs/no-such-job"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = json(
        following()
            .post(at(leader, "/v1/verifications"))
            .header(CONTENT_TYPE, "application/toml")
            .body(format!("{}\n[sandbox]\nmemroy = \"1GiB\"\n", f.plan))
            .send()
            .await
            .expect("submit"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid"));
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("memroy"),
        "{body}"
    );
    let (status, body) = json(
        following()
            .get(at(leader, "/v1/jobs/x?wait=2d"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid"));

    // The same plan as JSON, with an id of the caller's (a retry is the same job), then
    // cancelled: a slow one, so it is still running.
    let slow: toml::Value = toml::from_str(&f.slow_plan("")).expect("slow plan");
    let body = serde_json::to_string(&slow).expect("json plan");
    let submit = || {
        following()
            .post(at(follower, "/v1/verifications?id=ci-run-42"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
    };
    let (status, first) = json(submit().await.expect("submit")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["id"], "ci-run-42");
    assert_eq!(first["final"], false);
    let (_, second) = json(submit().await.expect("submit again")).await;
    assert_eq!(
        second["submitted_at_ms"], first["submitted_at_ms"],
        "the same job"
    );
    let (status, cancelled) = json(
        following()
            .post(at(follower, "/v1/jobs/ci-run-42/cancel"))
            .send()
            .await
            .expect("cancel"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let (status, body) = json(
        following()
            .post(at(leader, "/v1/jobs/nope/cancel"))
            .send()
            .await
            .expect("cancel"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn drills_workers_cluster_and_the_openapi_document() {
    let f = Fleet::start_http(&[("w1", "eu", 1)]).await;
    let (leader, follower) = leader_and_follower(&f).await;
    let at = |id: u64, path: &str| format!("{}{path}", f.http[&id]);
    let c = following();

    // A drill file with its plan inline (the plan's tables under [plan]), as TOML.
    let plan: toml::Table = toml::from_str(&f.plan).expect("plan");
    let mut file = toml::Table::new();
    file.insert(
        "drill".into(),
        toml::Value::Table(
            toml::from_str(
                "name = \"shop nightly\"\nschedule = \"0 2 * * *\"\ntimezone = \"Europe/Berlin\"",
            )
            .expect("drill"),
        ),
    );
    file.insert("plan".into(), toml::Value::Table(plan));
    let drill = toml::to_string(&file).expect("drill file");
    let (status, applied) = json(
        c.post(at(follower, "/v1/drills"))
            .header(CONTENT_TYPE, "application/toml")
            .body(drill)
            .send()
            .await
            .expect("apply"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["drills"][0]["name"], "shop nightly");
    assert_eq!(
        applied["drills"][0]["next"].as_array().map(Vec::len),
        Some(5)
    );
    let name = "shop%20nightly";

    let (status, list) = json(c.get(at(leader, "/v1/drills")).send().await.expect("list")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["drills"][0]["status"], "never_run", "{list}");
    let (status, body) = json(
        c.post(at(leader, &format!("/v1/drills/{name}/pause")))
            .json(&serde_json::json!({"reason": ""}))
            .send()
            .await
            .expect("pause"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "invalid"));
    let (status, paused) = json(
        c.post(at(leader, &format!("/v1/drills/{name}/pause")))
            .json(&serde_json::json!({"reason": "storage migration"}))
            .send()
            .await
            .expect("pause"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["drills"][0]["status"], "paused");
    let (status, resumed) = json(
        c.post(at(leader, &format!("/v1/drills/{name}/resume")))
            .send()
            .await
            .expect("resume"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(resumed["drills"][0]["status"], "paused");
    let (status, ran) = json(
        c.post(at(follower, &format!("/v1/drills/{name}/run")))
            .send()
            .await
            .expect("run"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    let job = ran["jobs"][0].as_str().expect("a job").to_owned();
    let (_, done) = json(
        c.get(at(leader, &format!("/v1/jobs/{job}?wait=150s")))
            .send()
            .await
            .expect("wait"),
    )
    .await;
    assert_eq!(done["state"], "passed", "{done}");
    let (status, history) = json(
        c.get(at(leader, &format!("/v1/drills/{name}/history")))
            .send()
            .await
            .expect("history"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let runs = history["drills"][0]["runs"].as_array().expect("runs");
    assert!(
        runs.iter().any(|r| r["jobs"].to_string().contains(&job)),
        "{history}"
    );
    let (status, body) = json(
        c.get(at(leader, "/v1/drills/nope"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, _) = json(
        c.delete(at(leader, &format!("/v1/drills/{name}")))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Workers and the cluster.
    let (status, workers) = json(
        c.get(at(follower, "/v1/workers"))
            .send()
            .await
            .expect("workers"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(workers[0]["name"], "w1", "{workers}");
    assert_eq!(workers[0]["region"], "eu");
    for id in f.http.keys() {
        let (status, cluster) =
            json(c.get(at(*id, "/v1/cluster")).send().await.expect("cluster")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cluster["id"], *id);
        assert_eq!(cluster["members"].as_array().map(Vec::len), Some(3));
        let r = c.get(at(*id, "/healthz")).send().await.expect("healthz");
        assert_eq!(r.status(), StatusCode::OK);
        let r = c.get(at(*id, "/readyz")).send().await.expect("readyz");
        assert_eq!(r.status(), StatusCode::OK);
    }

    // The OpenAPI document, generated from the handlers, and the vendored Swagger UI.
    let (status, doc) = json(
        c.get(at(follower, "/openapi.json"))
            .send()
            .await
            .expect("openapi"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/verifications",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/drills",
        "/v1/drills/{name}",
        "/v1/drills/{name}/history",
        "/v1/drills/{name}/pause",
        "/v1/drills/{name}/resume",
        "/v1/drills/{name}/run",
        "/v1/workers",
        "/v1/cluster",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from /openapi.json"
        );
    }
    // Tokens: a bearer scheme, and 401/403 in the error shape on every operation.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let submit = &doc["paths"]["/v1/verifications"]["post"]["responses"];
    for code in ["401", "403"] {
        assert!(submit.get(code).is_some(), "{code} documented: {submit}");
    }
    let r = c.get(at(leader, "/docs/")).send().await.expect("docs");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .expect("html")
            .to_lowercase()
            .contains("swagger")
    );
}

/// Schemathesis (PyPI) generates requests from `/openapi.json` — examples, boundary values,
/// fuzzed bodies and parameters, stateful sequences — against the leader of a real cluster with a
/// worker: no answer may be a 5xx, and every answer must match the schema the document gives.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let f = Fleet::start_http(&[("w1", "eu", 1)]).await;
    let leader = f.cluster.leader().await;
    let out = std::process::Command::new("schemathesis")
        .args(["run", &format!("{}/openapi.json", f.http[&leader])])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "30", "--request-timeout", "30"])
        .args(["--no-color"])
        .current_dir(f.root.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("schemathesis is installed (scripts/setup installs it from PyPI)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(" generated, "),
        "schemathesis ran no test:\n{said}"
    );
}
