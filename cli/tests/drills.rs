//! Scheduled drills end to end: real coordinators, a real worker, real pg_dump output. Schedules
//! of seconds stand in for months. Every assertion is about the drill's history as the cluster
//! records it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rehearse_core::drill::{DrillView, Run, RunOutcome, Status, job_id};
use rehearse_proto::client::DrillRpc;
use rehearse_proto::v1 as pb;

mod common;
use common::fleet::Fleet;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes a plan and a drill file naming it; returns the drill file.
fn drill_file(f: &Fleet, name: &str, drill: &str, plan: &str) -> PathBuf {
    let dir = f.root.path().join("drills");
    fs::create_dir_all(&dir).expect("drills dir");
    let plan_file = format!("{}.plan.toml", name.replace(' ', "-"));
    fs::write(dir.join(&plan_file), plan).expect("plan");
    let file = dir.join(format!("{}.drill.toml", name.replace(' ', "-")));
    fs::write(
        &file,
        format!("[drill]\nname = \"{name}\"\nplan = \"{plan_file}\"\n{drill}"),
    )
    .expect("drill");
    file
}

fn apply(f: &Fleet, file: &Path) {
    let out = f.rehearse(&[
        "drill",
        "apply",
        &file.to_string_lossy(),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "drill apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The drill with its whole history, if the cluster answers now.
async fn try_view(f: &Fleet, name: &str) -> Option<DrillView> {
    let answer = f
        .client()
        .drill(
            DrillRpc::Get,
            pb::DrillCall {
                name: name.into(),
                history: true,
                ..pb::DrillCall::default()
            },
        )
        .await
        .ok()?;
    let mut views: Vec<DrillView> = serde_json::from_str(&answer.json).ok()?;
    (!views.is_empty()).then(|| views.remove(0))
}

async fn view(f: &Fleet, name: &str) -> DrillView {
    try_view(f, name).await.expect("drill get")
}

/// Waits until the drill's history satisfies `done`.
async fn wait_runs(f: &Fleet, name: &str, what: &str, done: impl Fn(&[Run]) -> bool) -> Vec<Run> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Some(v) = try_view(f, name).await {
            last = v.runs;
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("drill {name:?}: {what} never happened; history: {last:#?}");
}

fn count(runs: &[Run], outcome: RunOutcome) -> usize {
    runs.iter().filter(|r| r.outcome == outcome).count()
}

/// Every fired run has its own tick and exactly the job derived from it; no job is doubled.
async fn assert_one_job_per_tick(f: &Fleet, name: &str, runs: &[Run]) {
    let fired: Vec<&Run> = runs.iter().filter(|r| !r.jobs.is_empty()).collect();
    let mut ticks: Vec<i64> = fired.iter().map(|r| r.tick_ms).collect();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(ticks.len(), fired.len(), "a tick fired twice: {runs:#?}");
    for r in &fired {
        assert_eq!(r.jobs, [job_id(name, r.tick_ms, 0, r.manual)]);
    }
    let jobs = f.client().list_jobs(None).await.expect("jobs");
    let prefix = job_id(name, 0, 0, false);
    let prefix = &prefix[..prefix.find("-t0-").expect("id shape")];
    let drill_jobs = jobs.iter().filter(|j| j.id.starts_with(prefix)).count();
    assert_eq!(drill_jobs, fired.len(), "one job per fired run, never two");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_fires_once_per_tick_across_a_leader_kill_and_catches_up_after_downtime() {
    let mut f = Fleet::start(&[("eu-1", "eu", 2)]).await;
    let name = "every10";
    let file = drill_file(
        &f,
        name,
        "schedule = \"*/10 * * * * *\"\nwindow = \"8s\"\nalert_after = \"1h\"\n",
        &f.plan,
    );
    apply(&f, &file);
    let v = view(&f, name).await;
    assert_eq!(v.status, Some(Status::NeverRun));
    assert_eq!(v.next.len(), 5, "drill get shows the next five fire times");

    // One verified run per tick.
    let runs = wait_runs(&f, name, "two passed runs", |r| {
        count(r, RunOutcome::Passed) >= 2
    })
    .await;
    let passed = runs
        .iter()
        .find(|r| r.outcome == RunOutcome::Passed)
        .expect("passed");
    assert_eq!(
        passed.results[0].verdict,
        Some(rehearse_core::report::Verdict::Passed)
    );
    assert!(
        passed.results[0]
            .tables
            .iter()
            .any(|t| t.name == "public.orders" && t.rows == 2000)
    );
    assert!(passed.results[0].rto_ms.is_some() && passed.results[0].blake3.is_some());
    assert_eq!(passed.version, v.spec.as_ref().expect("spec").version);

    // Kill the leader: the new one re-derives the due ticks from the log; nothing doubles.
    let leader = f.cluster.leader().await;
    f.cluster.kill(leader);
    let before = count(&runs, RunOutcome::Passed);
    let runs = wait_runs(&f, name, "two more passed runs after a leader kill", |r| {
        count(r, RunOutcome::Passed) >= before + 2
    })
    .await;
    assert_one_job_per_tick(&f, name, &runs).await;
    f.cluster.spawn(leader, false);
    f.cluster.leader().await;

    // Every coordinator down across at least two ticks; they come back just after a tick: that
    // latest tick runs once (its window is still open), the ticks before it are one `missed`
    // record, never backfilled.
    let ids: Vec<u64> = f.cluster.addrs.keys().copied().collect();
    for id in &ids {
        f.cluster.kill(*id);
    }
    let down_at = now_ms();
    // Come back 0.3 s after the first tick boundary that is at least 21 s away.
    let boundary = ((down_at + 21_000) / 10_000 + 1) * 10_000;
    let wait = (boundary + 300 - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    for id in &ids {
        f.cluster.spawn(*id, false);
    }
    f.cluster.leader().await;
    let runs = wait_runs(&f, name, "the catch-up run", |r| {
        r.iter()
            .any(|x| x.tick_ms == boundary && x.outcome == RunOutcome::Passed)
    })
    .await;
    let missed: Vec<&Run> = runs
        .iter()
        .filter(|r| r.outcome == RunOutcome::Missed && r.tick_ms > down_at && r.tick_ms < boundary)
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "one missed record for the outage: {runs:#?}"
    );
    let (n, first, last) = missed[0].missed.expect("counted");
    assert!(n >= 2, "at least two ticks were missed: {n}");
    assert!(first > down_at - 10_000 && last < boundary);
    assert_eq!(
        runs.iter().filter(|r| r.tick_ms == boundary).count(),
        1,
        "the catch-up tick ran once"
    );
    assert_one_job_per_tick(&f, name, &runs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skipped_overdue_drift_overlap_and_pause() {
    let f = Fleet::start(&[("eu-1", "eu", 2)]).await;
    let artifacts = f.root.path().join("artifacts");

    // No worker in the drill's region: each run is skipped when its window ends, with the
    // placement's reason; no pass within alert_after: overdue.
    let mars = drill_file(
        &f,
        "mars",
        "schedule = \"*/3 * * * * *\"\nwindow = \"2s\"\nalert_after = \"2s\"\n",
        &format!("{}\n[placement]\nregion = \"mars\"\n", f.plan),
    );
    apply(&f, &mars);

    // A slow restore every 2 s with overlap = "skip": ticks during a run are skipped.
    let slow = drill_file(
        &f,
        "slow",
        "schedule = \"*/2 * * * * *\"\nwindow = \"1500ms\"\noverlap = \"skip\"\n",
        &f.slow_plan(""),
    );
    apply(&f, &slow);

    // Drift: the same path, rewritten with a dump that lost 40% of its orders.
    let drifting = artifacts.join("drifting.dump");
    fs::copy(artifacts.join("shop.dump"), &drifting).expect("copy dump");
    let drift = drill_file(
        &f,
        "drift",
        "schedule = \"*/4 * * * * *\"\nwindow = \"3s\"\ndrift = \"10%\"\n",
        &format!(
            "[artifact]\nurl = \"{}\"\nengine = \"postgres\"\n",
            drifting.display()
        ),
    );
    apply(&f, &drift);

    let runs = wait_runs(&f, "mars", "a skipped run", |r| {
        count(r, RunOutcome::Skipped) >= 1
    })
    .await;
    let skipped = runs
        .iter()
        .find(|r| r.outcome == RunOutcome::Skipped)
        .expect("skipped");
    assert!(
        skipped
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("region mars")),
        "{skipped:?}"
    );
    let mars_job = f.client().get_job(&skipped.jobs[0]).await.expect("job");
    assert_eq!(
        mars_job.state, "cancelled",
        "a skipped run's job never runs late"
    );
    assert_eq!(view(&f, "mars").await.status, Some(Status::Overdue));

    let runs = wait_runs(
        &f,
        "slow",
        "a tick skipped while the previous run ran",
        |r| {
            r.iter().any(|x| {
                x.outcome == RunOutcome::Skipped
                    && x.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("previous run"))
            })
        },
    )
    .await;
    assert!(
        count(&runs, RunOutcome::Running) <= 1,
        "never two runs at once: {runs:#?}"
    );
    let out = f.rehearse(&["drill", "delete", "slow"]);
    assert!(out.status.success());

    wait_runs(&f, "drift", "a passed run", |r| {
        count(r, RunOutcome::Passed) >= 1
    })
    .await;
    let smaller = f.root.path().join("smaller");
    let out = Command::new(env!("CARGO_BIN_EXE_rehearse"))
        .args(["demo", "--orders", "1200", "--output", "json", "--keep"])
        .arg(&smaller)
        .arg("--work-dir")
        .arg(f.root.path())
        .env("REHEARSE_CACHE_DIR", f.root.path().join("demo-cache"))
        .stdin(Stdio::null())
        .output()
        .expect("demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::copy(smaller.join("shop.dump"), &drifting).expect("swap the dump");
    let runs = wait_runs(&f, "drift", "a run failed on drift", |r| {
        count(r, RunOutcome::Failed) >= 1
    })
    .await;
    let failed = runs
        .iter()
        .find(|r| r.outcome == RunOutcome::Failed)
        .expect("failed");
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("public.orders fell from 2000 to 1200 rows (-40%) since the run of"),
        "{reason}"
    );
    assert_eq!(view(&f, "drift").await.status, Some(Status::Failing));

    // Pause: no run while paused (two ticks pass); resume: no immediate fire, then ticks again.
    let out = f.rehearse(&["drill", "pause", "drift", "--reason", "storage migration"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paused_at = now_ms();
    let v = view(&f, "drift").await;
    assert_eq!(v.status, Some(Status::Paused));
    let during = v.runs.len();
    // Absence can only be shown over time: two tick periods (4 s each) plus the window.
    tokio::time::sleep(Duration::from_millis(11_000)).await;
    let v = view(&f, "drift").await;
    let late: Vec<&Run> = v.runs[during..]
        .iter()
        .filter(|r| r.tick_ms > paused_at)
        .collect();
    assert!(late.is_empty(), "runs while paused: {late:#?}");
    let out = f.rehearse(&["drill", "resume", "drift"]);
    assert!(out.status.success());
    let resumed_at = now_ms();
    let runs = wait_runs(&f, "drift", "a run after resume", |r| {
        r.iter()
            .any(|x| x.tick_ms > resumed_at && !x.jobs.is_empty())
    })
    .await;
    assert!(
        !runs
            .iter()
            .any(|r| r.tick_ms > paused_at && r.tick_ms < resumed_at - 500),
        "no tick from the pause was run late: {runs:#?}"
    );

    // `drill list` shows every drill with its status.
    let out = f.rehearse(&["drill", "list", "--output", "json"]);
    let views: Vec<DrillView> = serde_json::from_slice(&out.stdout).expect("list json");
    let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
    assert!(names.contains(&"mars") && names.contains(&"drift") && names.contains(&"slow"));
    let slow_view = views.iter().find(|v| v.name == "slow").expect("slow");
    assert!(slow_view.spec.is_none(), "deleted, history kept");
}

/// Finished jobs leave the coordinators' memory after `--job-retention`: `job get` then says what
/// became of one, and the drill's history — in its own tables, on every node — still has the
/// run's results, also after a leader change.
#[tokio::test(flavor = "multi_thread")]
async fn finished_jobs_leave_memory_and_the_history_keeps_their_results() {
    let mut f = Fleet::start_with(&[("eu-1", "eu", 1)], &["--job-retention", "1s"]).await;
    let name = "kept";
    let file = drill_file(
        &f,
        name,
        "schedule = \"*/5 * * * * *\"\nwindow = \"4s\"\n",
        &f.plan,
    );
    apply(&f, &file);
    let runs = wait_runs(&f, name, "a passed run", |r| {
        count(r, RunOutcome::Passed) >= 1
    })
    .await;
    let run = runs
        .iter()
        .find(|r| r.outcome == RunOutcome::Passed)
        .expect("passed")
        .clone();
    let job = run.jobs[0].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let gone = loop {
        match f.client().get_job(&job).await {
            Err(e) if e.to_string().contains("left the coordinator's memory") => {
                break e.to_string();
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "job {job} still in memory: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(gone.contains("verdict passed"), "{gone}");
    assert!(gone.contains("rehearse drill history"), "{gone}");
    let out = f.rehearse(&["job", "get", &job]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("left the coordinator's memory"));

    // Another leader answers from its own history table.
    let leader = f.cluster.leader().await;
    f.cluster.kill(leader);
    let runs = wait_runs(&f, name, "the run in the new leader's history", |r| {
        r.iter()
            .any(|x| x.tick_ms == run.tick_ms && x.outcome == RunOutcome::Passed)
    })
    .await;
    let again = runs.iter().find(|x| x.tick_ms == run.tick_ms).expect("run");
    assert_eq!(again.results, run.results, "results outlive the job");
    assert!(
        again.results[0]
            .tables
            .iter()
            .any(|t| t.name == "public.orders" && t.rows == 2000)
    );
}

/// `pick = "least_recently_tested"` rotates through a set of 3 backups: each run verifies the
/// one no passed run has verified for longest (never verified first), from the drill's record.
#[tokio::test(flavor = "multi_thread")]
async fn least_recently_tested_rotates_through_a_set_of_three_backups() {
    let f = Fleet::start(&[("eu-1", "eu", 1)]).await;
    let plan: rehearse_core::plan::Plan =
        rehearse_core::plan::Plan::from_toml(&f.plan).expect("demo plan");
    let dump = plan.artifact.url.trim_start_matches("file://").to_owned();
    let set = f.root.path().join("artifacts/set");
    fs::create_dir_all(&set).expect("set dir");
    for (i, name) in ["a.dump", "b.dump", "c.dump"].iter().enumerate() {
        let to = set.join(name);
        fs::copy(&dump, &to).expect("copy the dump");
        // a is the oldest, c the newest.
        let t = SystemTime::now() - Duration::from_secs(3600 * (3 - i as u64));
        fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|file| file.set_modified(t))
            .expect("mtime");
    }
    let name = "rotate";
    let file = drill_file(
        &f,
        name,
        "schedule = \"*/5 * * * * *\"\nwindow = \"4s\"\n",
        &format!(
            "[artifact]\nurl = \"{}\"\nengine = \"postgres\"\npick = \"least_recently_tested\"\n",
            set.display()
        ),
    );
    apply(&f, &file);
    let runs = wait_runs(&f, name, "four passed runs", |r| {
        count(r, RunOutcome::Passed) >= 4
    })
    .await;
    let picked: Vec<String> = runs
        .iter()
        .filter(|r| r.outcome == RunOutcome::Passed)
        .map(|r| {
            r.results[0]
                .artifact_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .take(4)
        .collect();
    assert_eq!(
        picked,
        ["a.dump", "b.dump", "c.dump", "a.dump"],
        "never verified first (oldest first), then the one verified longest ago: {runs:#?}"
    );
}

/// Recovery points a lifecycle policy moved to GLACIER (moto's S3, signatures checked): a worker
/// allowed to request restores asks for one, the job waits its poll time (a `deferred` attempt,
/// not counted) and the run passes inside its window; a worker that may not request them waits
/// until the window ends, and the run is `skipped` naming the storage class — never `failed`.
#[tokio::test(flavor = "multi_thread")]
async fn archived_recovery_points_are_restored_within_the_window_or_the_run_is_skipped() {
    let s3 = common::moto::Moto::start(&["backups"]);
    let mut f = Fleet::start(&[]).await;
    let plan: rehearse_core::plan::Plan =
        rehearse_core::plan::Plan::from_toml(&f.plan).expect("demo plan");
    let dump = fs::read(plan.artifact.url.trim_start_matches("file://")).expect("dump");
    for key in ["monthly/thawed.dump", "monthly/frozen.dump"] {
        s3.put_in_class("backups", key, dump.clone(), Some("GLACIER"))
            .await;
    }
    let profile = |name: &str, extra: &str| {
        format!(
            "[s3.{name}]\naws_endpoint = \"{}\"\naws_access_key_id = \"{}\"\naws_secret_access_key = \"{}\"\naws_region = \"us-east-1\"\naws_allow_http = \"true\"\nrestore_poll = \"1s\"\n{extra}",
            s3.endpoint, s3.key_id, s3.secret
        )
    };
    let sources = f.root.path().join("sources.toml");
    fs::write(
        &sources,
        format!(
            "{}\n{}",
            profile("thaw", ""),
            profile("wait", "restore_request = \"false\"\n")
        ),
    )
    .expect("sources");
    f.spawn_worker_with(
        "eu-1",
        "eu",
        2,
        &[
            "--runtime",
            "process",
            "--sources",
            &sources.to_string_lossy(),
        ],
    );
    f.wait_workers(1).await;
    let s3_plan = |key: &str, profile: &str| {
        format!(
            "[artifact]\nurl = \"s3://backups/{key}\"\nprofile = \"{profile}\"\nengine = \"postgres\"\n"
        )
    };
    apply(
        &f,
        &drill_file(
            &f,
            "thawed",
            "schedule = \"*/10 * * * * *\"\nwindow = \"8s\"\n",
            &s3_plan("monthly/thawed.dump", "thaw"),
        ),
    );
    apply(
        &f,
        &drill_file(
            &f,
            "frozen",
            "schedule = \"*/10 * * * * *\"\nwindow = \"3s\"\n",
            &s3_plan("monthly/frozen.dump", "wait"),
        ),
    );
    let runs = wait_runs(&f, "thawed", "a passed run", |r| {
        count(r, RunOutcome::Passed) >= 1
    })
    .await;
    assert_eq!(count(&runs, RunOutcome::Failed), 0, "{runs:#?}");
    let passed = runs
        .iter()
        .find(|r| r.outcome == RunOutcome::Passed)
        .expect("passed");
    let job = f.client().get_job(&passed.jobs[0]).await.expect("job");
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes.first(),
        Some(&"deferred"),
        "the first try found it archived and asked for the restore: {job:#?}"
    );
    assert_eq!(outcomes.last(), Some(&"passed"), "{job:#?}");

    let runs = wait_runs(&f, "frozen", "a skipped run", |r| {
        count(r, RunOutcome::Skipped) >= 1
    })
    .await;
    assert_eq!(count(&runs, RunOutcome::Failed), 0, "{runs:#?}");
    let skipped = runs
        .iter()
        .find(|r| r.outcome == RunOutcome::Skipped)
        .expect("skipped");
    let reason = skipped.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("not started within its window")
            && reason.contains("GLACIER storage class")
            && reason.contains("restore_request = false"),
        "{reason}"
    );
}
