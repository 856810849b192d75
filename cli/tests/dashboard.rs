//! The dashboard in a real browser: Debian's Chromium, headless, against three real coordinators
//! serving the HTTP API, a real worker and real pg_dump output. Pages render; the drill page's
//! charts hold one mark per run; a screenshot of each page is kept under the test's target tmp
//! dir (`target/tmp/dashboard/*.png`) as an artifact.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

mod common;
use common::fleet::Fleet;

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// Chromium, headless, with a profile of its own.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (Debian's, installed by scripts/setup) must be in PATH");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The page as the browser built it, and a screenshot of it.
fn browse(profile: &Path, url: &str, shot: &str) -> String {
    let dom = String::from_utf8(chromium(profile, &["--dump-dom", url]).stdout).expect("utf8 DOM");
    let png = artifacts().join(format!("{shot}.png"));
    let _ = std::fs::remove_file(&png);
    chromium(
        profile,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,1600",
            url,
        ],
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        png.display()
    );
    dom
}

#[tokio::test]
async fn pages_render_in_chromium_with_a_mark_per_run() {
    let f = Fleet::start_http(&[("w1", "eu", 1)]).await;
    let leader = f.cluster.leader().await;
    let follower = *f.http.keys().find(|id| **id != leader).expect("follower");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client");
    let api = |path: &str| format!("{}{path}", f.http[&leader]);

    let plan: toml::Table = toml::from_str(&f.plan).expect("plan");
    let mut file = toml::Table::new();
    file.insert(
        "drill".into(),
        toml::Value::Table(
            toml::from_str("name = \"shop nightly\"\nschedule = \"0 3 * * *\"").expect("drill"),
        ),
    );
    file.insert("plan".into(), toml::Value::Table(plan));
    let r = http
        .post(api("/v1/drills"))
        .header(CONTENT_TYPE, "application/toml")
        .body(toml::to_string(&file).expect("toml"))
        .send()
        .await
        .expect("apply");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );

    // Three runs, one after another: three bars and three points.
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let ran: Value = http
            .post(api("/v1/drills/shop%20nightly/run"))
            .send()
            .await
            .expect("run")
            .json()
            .await
            .expect("json");
        let job = ran["jobs"][0].as_str().expect("job").to_owned();
        let done: Value = http
            .get(api(&format!("/v1/jobs/{job}?wait=150s")))
            .send()
            .await
            .expect("wait")
            .json()
            .await
            .expect("json");
        assert_eq!(done["state"], "passed", "{done}");
        jobs.push(job);
    }

    let profile = tempfile::tempdir().expect("profile");
    // Through a follower: the browser follows the redirect to the leader.
    let overview = browse(
        profile.path(),
        &format!("{}/", f.http[&follower]),
        "overview",
    );
    assert!(overview.contains("shop nightly"), "{overview}");
    assert!(
        overview.contains(r#"class="badge ok""#),
        "the drill is ok: {overview}"
    );
    assert_eq!(
        overview.matches(r#"<tr class="job">"#).count(),
        3,
        "{overview}"
    );

    let drill = browse(profile.path(), &api("/drills/shop%20nightly"), "drill");
    assert_eq!(
        drill.matches(r#"<g class="bar" data-run"#).count(),
        3,
        "one RTO bar per run"
    );
    assert_eq!(
        drill.matches(r#"<circle class="point""#).count(),
        3,
        "one RPO point per run"
    );
    assert!(
        drill.contains("RTO target 5.0 min"),
        "the plan's rto target is drawn"
    );
    assert!(
        drill.contains("RPO target 26.0 h"),
        "the plan's rpo target is drawn"
    );
    assert_eq!(drill.matches(r#"<tr class="run">"#).count(), 3);
    assert!(!drill.contains("<script"), "no JavaScript");

    let job = browse(profile.path(), &api(&format!("/jobs/{}", jobs[0])), "job");
    for phase in ["fetch", "checksum", "provision", "restore", "checks"] {
        assert!(
            job.contains(&format!(r#"data-phase="{phase}""#)),
            "{phase} in the timeline"
        );
    }
    assert!(
        job.contains(r#"<tr class="check">"#),
        "the plan's checks are listed"
    );
    assert!(job.contains("w1"));

    // A DR exercise: the database step, then a gate approved by a person; its page draws the
    // steps on one clock with the critical path heavy.
    let mut exercise = toml::Table::new();
    exercise.insert(
        "exercise".into(),
        toml::Value::Table(toml::from_str("name = \"shop recovery\"").expect("exercise")),
    );
    let mut db: toml::Table = toml::from_str("name = \"db\"\ncritical = true").expect("step");
    db.insert(
        "plan".into(),
        toml::Value::Table(toml::from_str(&f.plan).expect("plan")),
    );
    let gate: toml::Table =
        toml::from_str("name = \"cutover\"\nkind = \"gate\"\nafter = [\"db\"]").expect("gate");
    exercise.insert(
        "step".into(),
        toml::Value::Array(vec![toml::Value::Table(db), toml::Value::Table(gate)]),
    );
    let started: Value = http
        .post(api("/v1/exercises"))
        .header(CONTENT_TYPE, "application/toml")
        .body(toml::to_string(&exercise).expect("toml"))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an exercise id: {started}"))
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut approved = false;
    loop {
        let r: Value = http
            .get(api(&format!("/v1/exercises/{id}")))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if r["state"] != "running" {
            assert_eq!(r["state"], "passed", "{r}");
            break;
        }
        let gate_open = r["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "cutover" && s["state"] == "running")
        });
        if gate_open && !approved {
            let ok = http
                .post(api(&format!("/v1/exercises/{id}/approve")))
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"step": "cutover", "by": "dashboard test"}"#)
                .send()
                .await
                .expect("approve");
            assert!(
                ok.status().is_success(),
                "{}",
                ok.text().await.unwrap_or_default()
            );
            approved = true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the exercise did not end: {r}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let page = browse(
        profile.path(),
        &api(&format!("/exercises/{id}")),
        "exercise",
    );
    assert!(page.contains("Critical path: db"), "{page}");
    assert!(
        page.contains(r#"<g class="step critical" data-step="db""#),
        "{page}"
    );
    assert!(page.contains(r#"data-step="cutover""#), "{page}");

    let fleet = browse(profile.path(), &api("/fleet"), "fleet");
    assert!(
        fleet.contains(r#"<tr class="worker"><td>w1</td>"#),
        "{fleet}"
    );
    assert_eq!(fleet.matches(r#"<tr class="member">"#).count(), 3);
}
