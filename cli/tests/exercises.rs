//! DR exercises end to end: real coordinators, workers in two regions, a real pg_dump and a
//! real tar archive. Every assertion is about the exercise's report as the cluster (or
//! `exercise run`) gives it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rehearse_core::exercise::{ExerciseReport, ExerciseState, StepState};
use rehearse_core::report::Verdict;
use rehearse_proto::client::ExerciseRpc;
use rehearse_proto::v1 as pb;

mod common;
use common::fleet::Fleet;

/// A file tree as a tar archive, and its plan.
fn uploads(dir: &Path) -> String {
    let tree = dir.join("uploads-tree");
    fs::create_dir_all(tree.join("attachments")).expect("tree");
    fs::write(tree.join("attachments/invoice-1.pdf"), b"%PDF-1.4 one").expect("file");
    fs::write(tree.join("attachments/invoice-2.pdf"), b"%PDF-1.4 two").expect("file");
    let tar = dir.join("uploads.tar");
    let out = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "[artifact]\nurl = \"{}\"\nengine = \"files\"\n\n[files]\nrequired = [\"attachments/invoice-1.pdf\"]\n",
        tar.display()
    )
}

/// Writes the plans and the exercise file; returns the exercise file.
fn exercise_file(dir: &Path, name: &str, body: &str, plans: &[(&str, &str)]) -> PathBuf {
    fs::create_dir_all(dir).expect("dir");
    for (file, text) in plans {
        fs::write(dir.join(file), text).expect("plan");
    }
    let file = dir.join(format!("{}.exercise.toml", name.replace(' ', "-")));
    fs::write(&file, format!("[exercise]\nname = \"{name}\"\n{body}")).expect("exercise");
    file
}

fn start(f: &Fleet, file: &Path) -> String {
    let out = f.rehearse(&[
        "exercise",
        "start",
        &file.to_string_lossy(),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "exercise start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: ExerciseReport =
        serde_json::from_slice(&out.stdout).expect("start answers a report");
    assert_eq!(report.state, ExerciseState::Running);
    report.id
}

async fn try_get(f: &Fleet, id: &str) -> Option<ExerciseReport> {
    let answer = f
        .client()
        .exercise(
            ExerciseRpc::Get,
            pb::ExerciseCall {
                id: id.into(),
                ..pb::ExerciseCall::default()
            },
        )
        .await
        .ok()?;
    serde_json::from_str(&answer.json).ok()
}

/// Waits until the exercise's report satisfies `done`.
async fn wait(
    f: &Fleet,
    id: &str,
    what: &str,
    done: impl Fn(&ExerciseReport) -> bool,
) -> ExerciseReport {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(r) = try_get(f, id).await {
            if done(&r) {
                return r;
            }
            last = Some(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "exercise {id} never {what}; last report {last:#?}; worker logs: {}",
        f.workers
            .keys()
            .map(|w| format!("\n--- {w}\n{}", f.worker_log(w)))
            .collect::<String>()
    );
}

fn step<'a>(r: &'a ExerciseReport, name: &str) -> &'a rehearse_core::exercise::StepView {
    r.steps.iter().find(|s| s.name == name).expect("step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_group_recovers_in_the_secondary_region_in_order_across_a_leader_kill() {
    let mut f = Fleet::start_http(&[("eu-1", "eu", 2), ("us-1", "us", 2)]).await;
    let dir = f.root.path().join("exercises");
    let files_plan = uploads(f.root.path());
    // A dump cut in half: the backup is bad, the verdict must be `failed`.
    let dump = f.root.path().join("artifacts/shop.dump");
    let bytes = fs::read(&dump).expect("dump");
    let cut = f.root.path().join("artifacts/cut.dump");
    fs::write(&cut, &bytes[..bytes.len() / 2]).expect("cut dump");
    let bad_plan = format!(
        "[artifact]\nurl = \"{}\"\nengine = \"postgres\"\n",
        cut.display()
    );
    let db_plan = f.plan.clone();
    let good = exercise_file(
        &dir,
        "shop DR",
        "region = \"us\"\nrto = \"1h\"\nrpo = \"30d\"\n\
         [[step]]\nname = \"db\"\nplan = \"db.toml\"\ncritical = true\n\
         [[step]]\nname = \"uploads\"\nplan = \"files.toml\"\n\
         [[step]]\nname = \"approve cutover\"\nkind = \"gate\"\nafter = [\"db\", \"uploads\"]\ntimeout = \"10m\"\n",
        &[("db.toml", &db_plan), ("files.toml", &files_plan)],
    );
    let bad = exercise_file(
        &dir,
        "shop bad DR",
        "region = \"us\"\n\
         [[step]]\nname = \"db\"\nplan = \"bad.toml\"\ncritical = true\n\
         [[step]]\nname = \"app\"\nplan = \"files.toml\"\nafter = [\"db\"]\n\
         [[step]]\nname = \"uploads\"\nplan = \"files.toml\"\n",
        &[("bad.toml", &bad_plan)],
    );
    let good_id = start(&f, &good);
    let bad_id = start(&f, &bad);

    // A critical step that fails halts what comes after it; the independent branch finishes.
    let r = wait(&f, &bad_id, "ended", |r| r.state.is_final()).await;
    assert_eq!(r.verdict, Some(Verdict::Failed), "{r:#?}");
    assert_eq!(step(&r, "db").state, StepState::Failed);
    assert_eq!(step(&r, "app").state, StepState::Halted);
    assert!(step(&r, "app").jobs.is_empty(), "a halted step never ran");
    assert_eq!(step(&r, "uploads").state, StepState::Passed);
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|x| x.contains("\"db\" failed")),
        "{r:#?}"
    );

    // The good one: both branches ran in us, the gate waits for a person.
    let r = wait(&f, &good_id, "reached its gate", |r| {
        step(r, "approve cutover").state == StepState::Running
    })
    .await;
    let gate_seen = Instant::now();
    for name in ["db", "uploads"] {
        let s = step(&r, name);
        assert_eq!(s.state, StepState::Passed, "{s:#?}");
        assert_eq!(s.worker.as_deref(), Some("us-1"), "pinned to the region");
        assert_eq!(s.cleaned_up, Some(true));
    }
    assert!(
        step(&r, "db").restore_point_ms.is_some(),
        "the demo plan's freshness query"
    );
    assert_eq!(
        step(&r, "db").profile.as_deref(),
        Some("faithful"),
        "exercises restore faithfully"
    );

    // The leader dies while the gate waits; the exercise lives in the replicated state.
    let leader = f.cluster.leader().await;
    f.cluster.kill(leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.cluster.leader().await == leader {
        assert!(Instant::now() < deadline, "no new leader after the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited_across_the_kill = gate_seen.elapsed().as_millis() as u64;
    let out = f.rehearse(&[
        "exercise",
        "approve",
        &good_id,
        "--step",
        "approve cutover",
        "--by",
        "ann",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "approve: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = f.rehearse(&[
        "exercise", "get", &good_id, "--wait", "60s", "--output", "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "get --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: ExerciseReport = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(r.verdict, Some(Verdict::Passed), "{r:#?}");
    let gate = step(&r, "approve cutover");
    assert_eq!(gate.approval.as_ref().map(|a| a.by.as_str()), Some("ann"));
    // RTO is the critical path: start → the gate's approval, the wait counted apart.
    assert_eq!(r.rto_ms, gate.ended_at_ms.map(|e| e - r.started_at_ms));
    assert_eq!(
        r.critical_path.last().map(String::as_str),
        Some("approve cutover")
    );
    assert_eq!(r.machine_rto_ms.map(|m| m + r.gate_wait_ms), r.rto_ms);
    assert!(
        r.gate_wait_ms >= waited_across_the_kill,
        "the gate waited across the kill and the election: {} < {waited_across_the_kill}",
        r.gate_wait_ms
    );
    assert!(r.targets.iter().all(|t| t.ok), "{:#?}", r.targets);
    assert!(r.deviations.iter().any(|d| d.contains("approved by ann")));
    assert!(
        r.leader_changes >= 1,
        "the kill elected a new leader: {r:#?}"
    );
    assert!(r.deviations.iter().any(|d| d.contains("leader changed")));

    // Over HTTP from a node still up (a follower redirects to the leader): the report as JSON,
    // and the dashboard's page with the steps on one clock, the critical path drawn heavy.
    let base = f
        .http
        .iter()
        .find(|(id, _)| **id != leader)
        .map(|(_, url)| url.clone())
        .expect("a live node");
    let json: serde_json::Value = reqwest::get(format!("{base}/v1/exercises/{good_id}"))
        .await
        .expect("GET exercise")
        .json()
        .await
        .expect("JSON");
    assert_eq!(json["verdict"], "passed", "{json}");
    let html = reqwest::get(format!("{base}/exercises/{good_id}"))
        .await
        .expect("GET page")
        .text()
        .await
        .expect("HTML");
    assert!(
        html.contains(r#"class="step critical gate" data-step="approve cutover""#),
        "{html}"
    );
    assert!(html.contains(r#"data-step="db""#) && html.contains(r#"data-step="uploads""#));
    assert!(html.contains("approved by ann"), "{html}");
    let overview = reqwest::get(format!("{base}/"))
        .await
        .expect("GET /")
        .text()
        .await
        .expect("HTML");
    assert!(
        overview.contains(&format!("/exercises/{good_id}")),
        "{overview}"
    );

    let out = f.rehearse(&["exercise", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&good_id) && text.contains("passed"), "{text}");
    assert!(text.contains(&bad_id) && text.contains("failed"), "{text}");

    // A drill may run an exercise: quarterly here, run by hand once; the run ends with it.
    exercise_file(
        &dir,
        "uploads only",
        "region = \"us\"\n[[step]]\nname = \"uploads\"\nplan = \"files.toml\"\n",
        &[],
    );
    fs::write(
        dir.join("dr.drill.toml"),
        "[drill]\nname = \"quarterly DR\"\nschedule = \"0 9 1 */3 *\"\nexercise = \"uploads-only.exercise.toml\"\n",
    )
    .expect("drill file");
    let out = f.rehearse(&[
        "drill",
        "apply",
        &dir.join("dr.drill.toml").to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "drill apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = f.rehearse(&["drill", "run", "quarterly DR"]);
    assert!(
        out.status.success(),
        "drill run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exercise_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(exercise_id.starts_with("ex-drill-"), "{exercise_id}");
    let r = wait(&f, &exercise_id, "ended", |r| r.state.is_final()).await;
    assert_eq!(r.verdict, Some(Verdict::Passed), "{r:#?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = f.rehearse(&["drill", "history", "quarterly DR", "--output", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(&exercise_id) && text.contains("\"passed\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drill's run never ended: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn exercise_run_recovers_a_group_on_this_machine_without_a_cluster() {
    let root = tempfile::Builder::new()
        .prefix("rh-exrun-")
        .tempdir()
        .expect("root");
    fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let artifacts = root.path().join("artifacts");
    let rehearse = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rehearse"))
            .args(args)
            .arg("--work-dir")
            .arg(root.path())
            .env("REHEARSE_CACHE_DIR", root.path().join("cache"))
            .stdin(Stdio::null())
            .output()
            .expect("run rehearse")
    };
    let out = rehearse(&[
        "demo",
        "--orders",
        "500",
        "--output",
        "json",
        "--keep",
        &artifacts.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "demo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db_plan = fs::read_to_string(artifacts.join("plan.toml")).expect("plan");
    let files_plan = uploads(root.path());
    // Every customer up to `n` has an invoice in the file store; the tree holds two.
    let group = |n: u32| {
        format!(
            "rto = \"1h\"\n\
             [[step]]\nname = \"db\"\nplan = \"db.toml\"\ncritical = true\n\
             [[step]]\nname = \"uploads\"\nplan = \"files.toml\"\n\
             [[step]]\nname = \"go\"\nkind = \"gate\"\nafter = [\"db\", \"uploads\"]\n\
             [[consistency]]\nname = \"every invoice exists\"\n\
             sql = {{ step = \"db\", query = \"SELECT 'attachments/invoice-' || id || '.pdf' FROM customers WHERE id <= {n}\" }}\n\
             files = {{ step = \"uploads\" }}\n"
        )
    };
    let file = exercise_file(
        &root.path().join("ex"),
        "local DR",
        &group(2),
        &[("db.toml", &db_plan), ("files.toml", &files_plan)],
    );
    // `exercise run FILE --output json`, its exit code checked.
    let run_json = |code: i32| -> ExerciseReport {
        let out = rehearse(&[
            "exercise",
            "run",
            &file.to_string_lossy(),
            "--output",
            "json",
        ]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "exercise run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("report")
    };
    let r = run_json(0);
    assert_eq!(r.verdict, Some(Verdict::Passed), "{r:#?}");
    assert!(r.steps.iter().all(|s| s.state == StepState::Passed));
    assert!(
        step(&r, "go")
            .approval
            .as_ref()
            .is_some_and(|a| a.by.contains("exercise run"))
    );
    assert_eq!(step(&r, "db").profile.as_deref(), Some("faithful"));
    assert_eq!(r.consistency[0].ok, Some(true), "{:#?}", r.consistency);
    assert_eq!(
        step(&r, "uploads").after,
        ["db"],
        "checked after the database answered"
    );
    assert!(
        r.rto_ms
            .is_some_and(|rto| rto >= step(&r, "db").duration_ms.unwrap_or(0))
    );

    // A file store older than the database: the third customer's invoice is not in the tree.
    exercise_file(&root.path().join("ex"), "local DR", &group(3), &[]);
    let r = run_json(1);
    assert_eq!(r.consistency[0].ok, Some(false));
    assert!(
        r.reason.as_deref().is_some_and(|x| x
            .contains("consistency check \"every invoice exists\" failed")
            && x.contains("attachments/invoice-3.pdf")),
        "{r:#?}"
    );

    // The same group with the database dump cut in half: failed, exit 1, the gate never opens.
    let dump = artifacts.join("shop.dump");
    let bytes = fs::read(&dump).expect("dump");
    fs::write(&dump, &bytes[..bytes.len() / 2]).expect("cut");
    let out = rehearse(&["exercise", "run", &file.to_string_lossy()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAILED") && text.contains("halted"), "{text}");
    let left: Vec<_> = fs::read_dir(root.path())
        .expect("root")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rehearse-"))
        .collect();
    assert!(left.is_empty(), "sandboxes left behind: {left:?}");
}
