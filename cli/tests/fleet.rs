//! The worker fleet, end to end: three `rehearse coordinator` processes and `rehearse worker`
//! processes in two regions on loopback, verifying real pg_dump output in real PostgreSQL
//! sandboxes. Workers and coordinators are killed with SIGKILL (or stopped with SIGSTOP) where the
//! test is about losing them.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::fleet::{Fleet, LEASE, eventually_no_orphans, report};
use common::{container_label, containers_labelled};

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_in_their_region_and_a_killed_worker_s_job_passes_on_another() {
    let mut f = Fleet::start(&[("eu-1", "eu", 1), ("eu-2", "eu", 1), ("us-1", "us", 1)]).await;
    let mut c = f.client();

    // Pinned to a region, or kept out of one: both land on us-1 and pass.
    let pinned = c
        .submit(&f.plan_with("[placement]\nregion = \"us\""))
        .await
        .expect("submit");
    let elsewhere = c
        .submit(&f.plan_with("[placement]\nnot_region = \"eu\""))
        .await
        .expect("submit");
    for id in [&pinned, &elsewhere] {
        let job = f.wait_final(id).await;
        assert_eq!(job.state, "passed", "{:?}", report(&job));
        assert_eq!(job.attempts.len(), 1);
        assert_eq!(
            (
                job.attempts[0].worker.as_str(),
                job.attempts[0].region.as_str()
            ),
            ("us-1", "us")
        );
        assert_eq!(report(&job)["checks"][0]["observed"], "2000");
    }

    // kill -9 the worker in the middle of a restore: the job passes on the other eu worker,
    // with two attempts and one verdict.
    let id = c
        .submit(&f.slow_plan("[placement]\nregion = \"eu\""))
        .await
        .expect("submit");
    let running = f
        .wait_job(&id, "reached restore", |j| j.phase == "restore")
        .await;
    assert_eq!(running.state, "running");
    let victim = running.attempts[0].worker.clone();
    f.kill_worker(&victim);
    let lost_at = Instant::now();
    let requeued = f
        .wait_job(&id, "was re-queued", |j| j.attempts.len() == 2)
        .await;
    let requeue_s = lost_at.elapsed().as_secs_f64();
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "passed", "{:?}", report(&job));
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["lost", "passed"]);
    let survivor = &job.attempts[1].worker;
    assert_ne!(*survivor, victim, "the retry prefers another worker");
    assert!(job.attempts.iter().all(|a| a.region == "eu"));
    assert_ne!(requeued.attempts[0].token, requeued.attempts[1].token);
    let notes = report(&job)["notes"].to_string();
    assert!(
        notes.contains(&format!("ran on worker {survivor}")),
        "{notes}"
    );
    eprintln!("worker lost -> job re-queued in {requeue_s:.1} s (lease {LEASE})");
    // The bound the lease promises: a lost worker's job runs again within about a lease (the
    // expiry check runs every 250 ms; the margin covers a loaded CI machine and this poll).
    let lease_s = humantime::parse_duration(LEASE)
        .expect("lease")
        .as_secs_f64();
    assert!(
        requeue_s < lease_s + 3.0,
        "re-queued {requeue_s:.1} s after the kill; the lease is {lease_s} s"
    );

    // The killed worker's sandbox outlived it; restarted on the same dir, it reaps it.
    assert!(
        fs::read_dir(f.work_dir(&victim).join("sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0)
            > 0,
        "kill -9 leaves the sandbox behind (so the reaping below is tested)"
    );
    f.spawn_worker(&victim, "eu", 1);
    f.wait_workers(3).await;
    eventually_no_orphans(&f.work_dir(&victim)).await;
    assert!(f.worker_log(&victim).contains("reaped"));

    // `rehearse workers --output json` shows each worker's facts.
    let out = f.rehearse(&["workers", "--output", "json"]);
    assert!(out.status.success());
    let workers: Value = serde_json::from_slice(&out.stdout).expect("json");
    let by_name: BTreeMap<String, &Value> = workers
        .as_array()
        .expect("array")
        .iter()
        .map(|w| (w["name"].as_str().unwrap_or_default().to_owned(), w))
        .collect();
    assert_eq!(by_name.len(), 3);
    assert_eq!(by_name["us-1"]["region"], "us");
    assert_eq!(by_name["us-1"]["slots"], 1);
    assert_eq!(by_name["us-1"]["slots_in_use"], 0);
    assert_eq!(by_name[&victim]["state"], "ready");
    assert!(by_name["eu-1"]["last_heartbeat_ms"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_lands_across_a_leader_kill_and_a_late_worker_is_fenced_off() {
    let mut f = Fleet::start(&[("a", "eu", 1), ("b", "eu", 1)]).await;
    let mut c = f.client();

    // Kill the leader while the job runs: the worker follows the new leader and its verdict lands.
    let id = c.submit(&f.slow_plan("")).await.expect("submit");
    f.wait_job(&id, "reached restore", |j| j.phase == "restore")
        .await;
    let leader = f.cluster.leader().await;
    f.cluster.kill(leader);
    let out = f.rehearse(&["job", "wait", &id, "--timeout", "60s", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(job["state"], "passed");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(job["report"]["verdict"], "passed");

    // A worker that stops answering (SIGSTOP) is declared lost and its job goes to the other
    // worker; when it wakes up, whatever it says about its old attempt is refused.
    let id = c.submit(&f.slow_plan("")).await.expect("submit");
    let running = f
        .wait_job(&id, "reached restore", |j| j.phase == "restore")
        .await;
    let sleeper = running.attempts[0].worker.clone();
    let other = if sleeper == "a" { "b" } else { "a" };
    f.signal_worker(&sleeper, "-STOP");
    f.wait_job(&id, "was re-queued to the other worker", |j| {
        j.attempts.len() == 2 && j.phase == "restore"
    })
    .await;
    f.signal_worker(&sleeper, "-CONT");
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "passed");
    let outcomes: Vec<(&str, &str)> = job
        .attempts
        .iter()
        .map(|a| (a.worker.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [(sleeper.as_str(), "lost"), (other, "passed")]);
    let notes = report(&job)["notes"].to_string();
    assert!(notes.contains(&format!("ran on worker {other}")), "{notes}");
    // The sleeper rejoins and cleans up after itself.
    f.wait_workers(2).await;
    eventually_no_orphans(&f.work_dir(&sleeper)).await;
    let log = f.worker_log(&sleeper);
    assert!(
        log.contains("attempt stopped") || log.contains("verdict refused"),
        "the late attempt was neither stopped nor refused:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_timeout_drain_and_a_job_that_fits_nowhere() {
    let mut f = Fleet::start(&[("w", "eu", 2)]).await;
    let mut c = f.client();

    // Fits nowhere: pending, and it says why.
    let mars = c
        .submit(&f.plan_with("[placement]\nregion = \"mars\""))
        .await
        .expect("submit");
    let ssd = c
        .submit(&f.plan_with("[placement]\nlabels = { disk = \"ssd\" }"))
        .await
        .expect("submit");
    let job = f
        .wait_job(&mars, "explained", |j| !j.reason.is_empty())
        .await;
    assert_eq!(job.state, "pending");
    assert_eq!(job.reason, "no worker in region mars");
    let job = c.get_job(&ssd).await.expect("get");
    assert_eq!(job.reason, "no worker with labels disk=ssd");

    // Cancel a running job: the sandbox is stopped and removed.
    let slow_check =
        "[[checks]]\nname = \"slow\"\nsql = \"SELECT 1 FROM pg_sleep(60)\"\nexpect = \"= 1\"";
    let id = c.submit(&f.plan_with(slow_check)).await.expect("submit");
    f.wait_job(&id, "reached checks", |j| j.phase == "checks")
        .await;
    let out = f.rehearse(&["job", "cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "cancelled");
    assert_eq!(job.attempts[0].outcome, "cancelled");
    eventually_no_orphans(&f.work_dir("w")).await;
    assert!(f.worker_log("w").contains("attempt stopped"));

    // The plan's timeout ends a run "failed", timed out, in the phase it reached.
    let timed = f
        .plan_with(slow_check)
        .replace("timeout = \"10m\"", "timeout = \"4s\"");
    assert!(timed.contains("timeout = \"4s\""));
    let id = c.submit(&timed).await.expect("submit");
    let out = f.rehearse(&["job", "wait", &id, "--timeout", "60s", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "a failed job exits 1");
    let job: Value = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["report"]["failure"]["phase"], "checks");
    let reason = job["report"]["failure"]["reason"].to_string();
    assert!(reason.contains("timed out"), "{reason}");
    eventually_no_orphans(&f.work_dir("w")).await;

    // `job wait` gives up after its own --timeout, exit 2, one line.
    let out = f.rehearse(&["job", "wait", &mars, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("still pending"), "{err}");

    // Drain: no new jobs for w; the job waits and says so.
    let out = f.rehearse(&["worker", "drain", "w"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = c.submit(&f.plan).await.expect("submit");
    let job = f.wait_job(&id, "explained", |j| !j.reason.is_empty()).await;
    assert_eq!(job.state, "pending");
    assert!(job.reason.contains("draining"), "{}", job.reason);
    let workers = c.list_workers().await.expect("workers");
    assert_eq!(workers[0].state, "draining");

    // A worker in the missing region arrives: the mars job runs there.
    f.spawn_worker("mars-1", "mars", 1);
    let job = f.wait_final(&mars).await;
    assert_eq!(job.state, "passed", "{:?}", report(&job));
    assert_eq!(job.attempts[0].worker, "mars-1");
    f.kill_worker("mars-1");
}

async fn wait_container(label: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(id) = containers_labelled(label).into_iter().next() {
            return id;
        }
        assert!(Instant::now() < deadline, "no container labelled {label}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_docker_worker_runs_jobs_in_labelled_containers_and_reaps_after_a_kill() {
    let mut f = Fleet::start(&[]).await;
    let name = format!("dk-{}", std::process::id());
    f.spawn_worker_on(&name, "eu", 1, "docker");
    f.wait_workers(1).await;
    let mut c = f.client();

    // While the job runs, its container carries the worker, job and attempt labels.
    let id = c.submit(&f.slow_plan("")).await.expect("submit");
    let container = wait_container(&format!("rehearse.job={id}")).await;
    let job = f.wait_job(&id, "started", |j| !j.attempts.is_empty()).await;
    assert_eq!(container_label(&container, "rehearse.worker"), name);
    assert_eq!(
        container_label(&container, "rehearse.attempt"),
        job.attempts[0].token.to_string()
    );
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "passed", "{}", job.report_json);
    assert_eq!(report(&job)["runtime"], "docker");
    assert!(
        containers_labelled(&format!("rehearse.job={id}")).is_empty(),
        "container left after a pass"
    );

    // kill -9 of the worker mid-restore leaves its container; the restarted worker reaps it, and
    // the job passes on its next attempt.
    let id = c.submit(&f.slow_plan("")).await.expect("submit");
    let container = wait_container(&format!("rehearse.job={id}")).await;
    f.kill_worker(&name);
    assert_eq!(
        containers_labelled(&format!("rehearse.job={id}")),
        vec![container.clone()],
        "after a kill -9 the container is still there"
    );
    f.spawn_worker_on(&name, "eu", 1, "docker");
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "passed", "{}", job.report_json);
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers_labelled(&format!("rehearse.worker={name}"))
        .iter()
        .any(|c| *c == container)
    {
        assert!(
            Instant::now() < deadline,
            "the restarted worker never reaped {container}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(containers_labelled(&format!("rehearse.worker={name}")).is_empty());
    eventually_no_orphans(&f.work_dir(&name)).await;
}

/// Bug: two attempts of a fresh worker built the initdb template at once under one staging name
/// and deleted each other's copy; the job ended `failed` in provision ("cp: cannot create
/// regular file"). Two fresh workers with two slots each take four jobs submitted together:
/// every job passes on its first attempt.
#[tokio::test(flavor = "multi_thread")]
async fn fresh_workers_with_two_slots_pass_their_first_concurrent_jobs() {
    let f = Fleet::start(&[("fresh-a", "eu", 2), ("fresh-b", "eu", 2)]).await;
    for w in ["fresh-a", "fresh-b"] {
        assert!(
            !f.work_dir(w).join("cache").exists()
                || fs::read_dir(f.work_dir(w).join("cache"))
                    .map(|d| d.count() == 0)
                    .unwrap_or(true),
            "the worker's template cache must start empty"
        );
    }
    let submits: Vec<_> = (0..4)
        .map(|_| {
            let mut c = f.client();
            let plan = f.plan.clone();
            tokio::spawn(async move { c.submit(&plan).await.expect("submit") })
        })
        .collect();
    let mut ids = Vec::new();
    for s in submits {
        ids.push(s.await.expect("submit task"));
    }
    let mut workers = std::collections::BTreeSet::new();
    for id in &ids {
        let job = f.wait_final(id).await;
        assert_eq!(job.state, "passed", "{}", job.report_json);
        assert_eq!(
            job.attempts.len(),
            1,
            "no attempt may be lost to the template race: {:?}",
            job.attempts
        );
        workers.insert(job.attempts[0].worker.clone());
    }
    assert_eq!(workers.len(), 2, "both fresh workers ran jobs");
    for w in ["fresh-a", "fresh-b"] {
        eventually_no_orphans(&f.work_dir(w)).await;
    }
}

/// A worker that cannot verify (its image does not exist) ends its attempts `error`, never
/// `failed`: the job is re-queued on another worker and passes there; a job only that worker
/// can take ends `error` after `max_attempts`, `job wait` exits 2, and `workers` shows the
/// worker unhealthy with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn could_not_verify_is_retried_elsewhere_and_never_reported_as_failed() {
    let mut f = Fleet::start(&[]).await;
    // "a-broken" sorts first, so placement tries it first.
    f.spawn_worker_with(
        "a-broken",
        "eu",
        1,
        &["--runtime", "docker", "--image-postgres", "rehearse/none:0"],
    );
    f.spawn_worker("b-good", "eu", 1);
    f.wait_workers(2).await;
    let mut c = f.client();

    let id = c
        .submit(&f.plan_with("[placement]\nregion = \"eu\""))
        .await
        .expect("submit");
    let job = f.wait_final(&id).await;
    assert_eq!(job.state, "passed", "{}", job.report_json);
    let outcomes: Vec<(&str, &str)> = job
        .attempts
        .iter()
        .map(|a| (a.worker.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("a-broken", "error"), ("b-good", "passed")]);
    assert!(
        job.attempts[0].reason.contains("rehearse/none:0"),
        "{:?}",
        job.attempts[0]
    );

    // Only the broken worker may take this one (a label only it carries, once restarted with
    // it): three errors, then the job ends `error`.
    f.kill_worker("b-good");
    f.kill_worker("a-broken");
    f.spawn_worker_with(
        "a-broken",
        "eu",
        1,
        &[
            "--runtime",
            "docker",
            "--image-postgres",
            "rehearse/none:0",
            "--labels",
            "broken=yes",
        ],
    );
    f.wait_workers(1).await;
    let plan = format!(
        "max_attempts = 3\n{}\n[placement]\nlabels = {{ broken = \"yes\" }}\n",
        f.plan
    );
    let id = c.submit(&plan).await.expect("submit");
    let out = f.rehearse(&["job", "wait", &id, "--timeout", "90s", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "could not verify exits 2: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("job json");
    assert_eq!(job["state"], "error");
    assert_eq!(job["report"]["verdict"], "error");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(3));
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("could not verify after 3 attempts"),
        "{reason}"
    );
    assert!(reason.contains("rehearse/none:0"), "{reason}");

    let out = f.rehearse(&["workers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("a-broken"))
        .unwrap_or_default();
    assert!(line.contains("unhealthy"), "{text}");
    assert!(line.contains("rehearse/none:0"), "{text}");
}
