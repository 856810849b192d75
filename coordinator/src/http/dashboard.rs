//! The dashboard: server-rendered HTML (askama templates in `coordinator/templates/`), charts as
//! inline SVG from `rehearse_core::chart`, no JavaScript and no external asset — pages print and
//! work offline. Pages: `/` (drills with status, backup sets never tested, recent jobs), `/drills/
//! {name}` (RTO per phase and RPO per run against their targets, the runs), `/jobs/{id}` (phase
//! timeline, checks, row counts, attempts), `/exercises/{id}` (the steps on one clock with the
//! critical path, RTO/RPO against the targets, deviations), `/fleet` (workers and coordinators). A follower
//! redirects to the leader like the API does. Read-only; open to whoever reaches the listener
//! (tokens are not built yet: bind `--http-listen` to a private address).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use rehearse_core::chart::{self, Bar, Point};
use rehearse_core::drill::{DrillView, Run};
use rehearse_core::jobs::Job;

use super::{AppState, HttpError};
use crate::node::{Read, ReadAnswer};

/// Recent jobs the overview lists.
const RECENT_JOBS: usize = 25;
/// Runs a drill page charts (the newest).
const CHART_RUNS: usize = 60;

fn stamp(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn render(page: impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("template: {e}")).into_response(),
    }
}

fn api_err<'a>(
    state: &'a AppState,
    uri: &'a Uri,
) -> impl Fn(crate::node::ApiError) -> HttpError + 'a {
    move |e| HttpError::from_api(e, |id| state.node.peer_http(id), uri)
}

struct DrillRow {
    name: String,
    href: String,
    status: String,
    note: String,
    schedule: String,
    timezone: String,
    last_verdict: String,
    last_run: String,
    last_passed: String,
    next_run: String,
}

struct ExerciseRow {
    id: String,
    href: String,
    name: String,
    state: String,
    rto: String,
    started: String,
}

struct JobRow {
    id: String,
    href: String,
    state: String,
    artifact: String,
    rto: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    cluster: String,
    now: String,
    drills: Vec<DrillRow>,
    untested: Vec<String>,
    exercises: Vec<ExerciseRow>,
    jobs: Vec<JobRow>,
    workers: String,
}

/// Percent-encodes a path segment (drill names have spaces).
fn segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn drill_row(v: &DrillView) -> DrillRow {
    let status = v.status.map_or("deleted", |s| s.as_str()).to_owned();
    DrillRow {
        name: v.name.clone(),
        href: format!("/drills/{}", segment(&v.name)),
        note: v
            .paused
            .as_ref()
            .map(|p| p.reason.clone())
            .unwrap_or_default(),
        status,
        schedule: v
            .spec
            .as_ref()
            .map(|s| s.schedule.clone())
            .unwrap_or_default(),
        timezone: v
            .spec
            .as_ref()
            .map(|s| s.timezone.clone())
            .unwrap_or_default(),
        last_verdict: v
            .last_run
            .as_ref()
            .map(|r| r.outcome.as_str().to_owned())
            .unwrap_or_default(),
        last_run: v
            .last_run
            .as_ref()
            .map_or("never".into(), |r| stamp(r.start_ms)),
        last_passed: v
            .last_passed
            .as_ref()
            .map_or("never".into(), |r| stamp(r.start_ms)),
        next_run: v.next.first().map_or("—".into(), |f| f.local.clone()),
    }
}

fn job_row(j: &Job) -> JobRow {
    JobRow {
        id: j.id.clone(),
        href: format!("/jobs/{}", segment(&j.id)),
        state: j.state.as_str().to_owned(),
        artifact: j.plan.artifact.url.clone(),
        rto: j
            .report
            .as_ref()
            .and_then(|r| r.rto_ms)
            .map_or("—".into(), chart::duration),
        updated: stamp(j.updated_at_ms as i64),
    }
}

/// The overview page.
pub async fn overview(State(state): State<AppState>, uri: Uri) -> Result<Response, HttpError> {
    let err = api_err(&state, &uri);
    let views = crate::drill_api::views(&state.node, None, 1, false)
        .await
        .map_err(&err)?;
    let jobs = match state.node.jobs(None).await.map_err(&err)? {
        ReadAnswer::Jobs(jobs) => jobs,
        _ => Vec::new(),
    };
    let workers = match state.node.read(Read::Workers).await.map_err(&err)? {
        ReadAnswer::Workers(w) => w,
        _ => Vec::new(),
    };
    let status = state.node.status().await.map_err(&err)?;
    let exercises = crate::exercise_api::list(&state.node).await.map_err(&err)?;
    // A backup set is "never tested" while no run of a drill over it has passed.
    let mut untested: Vec<String> = views
        .iter()
        .filter(|v| v.last_passed.is_none())
        .filter_map(|v| v.spec.as_ref())
        .flat_map(|s| s.plans.iter().map(|p| p.artifact.url.clone()))
        .collect();
    untested.sort();
    untested.dedup();
    let ready = workers
        .iter()
        .filter(|w| w.view().state == rehearse_core::placement::WorkerState::Ready)
        .count();
    let page = Overview {
        cluster: format!(
            "leader {} · term {} · {} coordinators · cluster version {}",
            status.leader,
            status.term,
            status.members.len(),
            status.cluster_version
        ),
        now: stamp(now_ms() as i64),
        drills: views.iter().map(drill_row).collect(),
        untested,
        exercises: exercises
            .iter()
            .rev()
            .take(RECENT_JOBS)
            .map(|r| ExerciseRow {
                id: r.id.clone(),
                href: format!("/exercises/{}", segment(&r.id)),
                name: r.name.clone(),
                state: r
                    .verdict
                    .map_or(r.state.as_str(), |v| v.as_str())
                    .to_owned(),
                rto: r.rto_ms.map_or("—".into(), chart::duration),
                started: stamp(r.started_at_ms as i64),
            })
            .collect(),
        jobs: jobs.iter().rev().take(RECENT_JOBS).map(job_row).collect(),
        workers: format!("{} workers, {ready} ready", workers.len()),
    };
    Ok(render(page))
}

struct RunRow {
    tick: String,
    manual: bool,
    outcome: String,
    reason: String,
    rto: String,
    rpo: String,
    artifact: String,
    jobs: Vec<String>,
}

#[derive(Template)]
#[template(path = "drill.html")]
struct DrillPage {
    name: String,
    status: String,
    summary: String,
    paused: String,
    rto_svg: String,
    rpo_svg: String,
    next: Vec<String>,
    runs: Vec<RunRow>,
}

/// A run's label on the charts: its tick.
fn run_label(r: &Run) -> String {
    format!(
        "{}{}",
        stamp(r.tick_ms),
        if r.manual { " (manual)" } else { "" }
    )
}

fn target(
    view: &DrillView,
    pick: impl Fn(&rehearse_core::plan::RawTargets) -> Option<&String>,
) -> Option<u64> {
    let spec = view.spec.as_ref()?;
    let text = pick(spec.plans.first()?.targets.as_ref()?)?;
    humantime::parse_duration(text)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// A drill's page: its trends against the targets, and its runs.
pub async fn drill(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, HttpError> {
    let mut views = crate::drill_api::views(&state.node, Some(name), 5, true)
        .await
        .map_err(api_err(&state, &uri))?;
    let v = views.remove(0);
    // Charted: the newest runs that measured something (the first job's result of each).
    let measured: Vec<&Run> = v
        .runs
        .iter()
        .filter(|r| {
            r.results
                .first()
                .is_some_and(|x| x.rto_ms.is_some() || !x.phases.is_empty())
        })
        .collect();
    let charted = &measured[measured.len().saturating_sub(CHART_RUNS)..];
    let bars: Vec<Bar> = charted
        .iter()
        .map(|r| {
            let result = &r.results[0];
            Bar {
                label: run_label(r),
                // Every phase up to the checks (a promotion too): what the RTO counts.
                segments: rehearse_core::report::Phase::ALL
                    .iter()
                    .filter(|p| **p != rehearse_core::report::Phase::Teardown)
                    .filter_map(|p| {
                        result
                            .phases
                            .get(p.as_str())
                            .map(|ms| (p.as_str().to_owned(), *ms))
                    })
                    .collect(),
                passed: r.outcome == rehearse_core::drill::RunOutcome::Passed,
            }
        })
        .collect();
    let points: Vec<Point> = charted
        .iter()
        .map(|r| Point {
            label: run_label(r),
            value: r.results[0].rpo_ms,
        })
        .collect();
    let rto_target = target(&v, |t| t.rto.as_ref());
    let rpo_target = target(&v, |t| t.rpo.as_ref());
    let summary = match &v.spec {
        Some(s) => format!(
            "{} ({}) · window {} · {} plan{} · version {}",
            s.schedule,
            s.timezone,
            humantime::format_duration(Duration::from_millis(s.window_ms)),
            s.plans.len(),
            if s.plans.len() == 1 { "" } else { "s" },
            s.version
        ),
        None => "deleted; its history stays until it runs out".into(),
    };
    let page = DrillPage {
        name: v.name.clone(),
        status: v.status.map_or("deleted", |s| s.as_str()).to_owned(),
        summary,
        paused: v
            .paused
            .as_ref()
            .map(|p| p.reason.clone())
            .unwrap_or_default(),
        rto_svg: chart::stacked_bars(
            &format!("{}: recovery time per run, by phase", v.name),
            &bars,
            rto_target,
        ),
        rpo_svg: chart::line(
            &format!("{}: recovery point per run", v.name),
            &points,
            rpo_target,
            "RPO",
        ),
        next: v
            .next
            .iter()
            .map(|f| match &f.note {
                Some(note) => format!("{} ({}; {note})", f.local, f.utc),
                None => format!("{} ({})", f.local, f.utc),
            })
            .collect(),
        runs: v
            .runs
            .iter()
            .rev()
            .map(|r| {
                let first = r.results.first();
                RunRow {
                    tick: stamp(r.tick_ms),
                    manual: r.manual,
                    outcome: r.outcome.as_str().to_owned(),
                    reason: r.reason.clone().unwrap_or_default(),
                    rto: first
                        .and_then(|x| x.rto_ms)
                        .map_or("—".into(), chart::duration),
                    rpo: first
                        .and_then(|x| x.rpo_ms)
                        .map_or("—".into(), chart::duration),
                    artifact: first.map(|x| x.artifact_url.clone()).unwrap_or_default(),
                    jobs: r.jobs.clone(),
                }
            })
            .collect(),
    };
    Ok(render(page))
}

struct CheckRow {
    name: String,
    expect: String,
    observed: String,
    verdict: String,
    reason: String,
}

struct AttemptRow {
    worker: String,
    region: String,
    token: u64,
    started: String,
    outcome: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    id: String,
    state: String,
    summary: String,
    failure: String,
    timeline_svg: String,
    checks: Vec<CheckRow>,
    tables: Vec<(String, String)>,
    attempts: Vec<AttemptRow>,
}

/// A job's page: where the time went, what was checked, who ran it.
pub async fn job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, HttpError> {
    let job = match state
        .node
        .read(Read::Job(id))
        .await
        .map_err(api_err(&state, &uri))?
    {
        ReadAnswer::Job(job) => *job,
        _ => {
            return Err(HttpError::new(
                crate::errors::Code::Unavailable,
                "wrong answer kind",
            ));
        }
    };
    let report = job.report.as_ref();
    let summary = match report {
        Some(r) => format!(
            "{} · {} · {} runtime · RTO {} · RPO {}",
            r.artifact.url,
            r.artifact.format.as_deref().unwrap_or("?"),
            r.runtime,
            r.rto_ms.map_or("—".into(), chart::duration),
            r.rpo_ms.map_or("—".into(), chart::duration)
        ),
        None => format!(
            "{} · {}",
            job.plan.artifact.url,
            job.phase.as_deref().unwrap_or("waiting")
        ),
    };
    let page = JobPage {
        id: job.id.clone(),
        state: job.state.as_str().to_owned(),
        summary,
        failure: report
            .and_then(|r| r.failure.as_ref())
            .map(|f| {
                format!(
                    "{} in {}: {}",
                    if f.could_not_verify {
                        "could not verify"
                    } else {
                        "failed"
                    },
                    f.phase,
                    f.reason
                )
            })
            .or_else(|| job.reason.clone())
            .unwrap_or_default(),
        timeline_svg: chart::timeline(
            &format!("job {}: phases", job.id),
            &report
                .map(|r| {
                    r.phases
                        .iter()
                        .map(|p| (p.name.as_str().to_owned(), p.ms, p.ok))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        ),
        checks: report
            .map(|r| {
                r.checks
                    .iter()
                    .map(|c| CheckRow {
                        name: c.name.clone(),
                        expect: c.expect.clone(),
                        observed: c.observed.clone().unwrap_or_else(|| "NULL".into()),
                        verdict: if c.ok { "passed" } else { "failed" }.into(),
                        reason: c.reason.clone().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        tables: report
            .map(|r| {
                r.tables
                    .iter()
                    .map(|t| (t.name.clone(), t.rows.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        attempts: job
            .attempts
            .iter()
            .map(|a| AttemptRow {
                worker: a.worker.clone(),
                region: a.region.clone().unwrap_or_default(),
                token: a.token,
                started: stamp(a.started_at_ms as i64),
                outcome: a.outcome.map_or("running", |o| o.as_str()).to_owned(),
                reason: a.reason.clone().unwrap_or_default(),
            })
            .collect(),
    };
    Ok(render(page))
}

struct WorkerRow {
    name: String,
    region: String,
    state: String,
    slots: String,
    heartbeat: String,
    error: String,
}

struct MemberRow {
    id: u64,
    leader: bool,
    addr: String,
    role: String,
    region: String,
    version: u32,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    cluster: String,
    workers: Vec<WorkerRow>,
    members: Vec<MemberRow>,
}

/// Workers and coordinators.
pub async fn fleet(State(state): State<AppState>, uri: Uri) -> Result<Response, HttpError> {
    let err = api_err(&state, &uri);
    let workers = match state.node.read(Read::Workers).await.map_err(&err)? {
        ReadAnswer::Workers(w) => w,
        _ => Vec::new(),
    };
    let s = state.node.status().await.map_err(&err)?;
    let page = FleetPage {
        cluster: format!(
            "leader {} · term {} · commit {} · applied {}",
            s.leader, s.term, s.commit, s.applied
        ),
        workers: workers
            .iter()
            .map(|w| {
                let v = w.view();
                let state = if !v.healthy {
                    "unhealthy".to_owned()
                } else {
                    serde_json::to_value(v.state)
                        .ok()
                        .and_then(|s| s.as_str().map(str::to_owned))
                        .unwrap_or_default()
                };
                WorkerRow {
                    name: v.name,
                    region: v.region,
                    state,
                    slots: format!("{}/{}", v.used, v.slots),
                    heartbeat: stamp(w.last_heartbeat_ms as i64),
                    error: w.last_error.clone().unwrap_or_default(),
                }
            })
            .collect(),
        members: s
            .members
            .into_iter()
            .map(|m| MemberRow {
                leader: m.id == s.leader,
                id: m.id,
                addr: m.addr,
                role: m.role.to_owned(),
                region: m.region,
                version: m.command_version,
            })
            .collect(),
    };
    Ok(render(page))
}

struct StepRow {
    name: String,
    gate: bool,
    critical: bool,
    state: String,
    after: String,
    took: String,
    worker: String,
    jobs: Vec<String>,
    age: String,
    note: String,
}

#[derive(Template)]
#[template(path = "exercise.html")]
struct ExercisePage {
    id: String,
    name: String,
    verdict: String,
    summary: String,
    reason: String,
    rto: String,
    machine_rto: String,
    gate_wait: String,
    rpo: String,
    skew: String,
    targets: Vec<(String, String)>,
    critical_path: String,
    gantt_svg: String,
    steps: Vec<StepRow>,
    deviations: Vec<String>,
}

/// An exercise's page: its steps on one clock (the critical path drawn heavy), RTO and RPO
/// against the targets, deviations.
pub async fn exercise(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, HttpError> {
    let r = crate::exercise_api::get(&state.node, &id)
        .await
        .map_err(api_err(&state, &uri))?;
    let opt = |v: Option<u64>| v.map_or("—".into(), chart::duration);
    let now = now_ms();
    let spans: Vec<chart::Span> = r
        .steps
        .iter()
        .filter_map(|s| {
            let start = s.started_at_ms?;
            Some(chart::Span {
                step: s.name.clone(),
                start_ms: start.saturating_sub(r.started_at_ms),
                end_ms: s.ended_at_ms.unwrap_or(now).saturating_sub(r.started_at_ms),
                state: s.state.as_str().to_owned(),
                gate: s.kind == rehearse_core::exercise::StepKind::Gate,
                critical: r.critical_path.contains(&s.name),
            })
        })
        .collect();
    let rto_target = r
        .targets
        .iter()
        .find(|t| t.name == "rto")
        .map(|t| t.target_ms);
    let page = ExercisePage {
        id: r.id.clone(),
        name: r.name.clone(),
        verdict: r
            .verdict
            .map_or(r.state.as_str(), |v| v.as_str())
            .to_owned(),
        summary: format!(
            "region {} · disaster {}{} · started {} · definition {}",
            r.region.as_deref().unwrap_or("any"),
            stamp(r.disaster_ms),
            if r.disaster_now { " (its start)" } else { "" },
            stamp(r.started_at_ms as i64),
            r.version
        ),
        reason: r.reason.clone().unwrap_or_default(),
        rto: opt(r.rto_ms),
        machine_rto: opt(r.machine_rto_ms),
        gate_wait: chart::duration(r.gate_wait_ms),
        rpo: opt(r.rpo_ms),
        skew: opt(r.restore_point_skew_ms),
        targets: r
            .targets
            .iter()
            .map(|t| {
                (
                    format!("{} {}", t.name, chart::duration(t.target_ms)),
                    t.outcome(chart::duration),
                )
            })
            .collect(),
        critical_path: if r.critical_path.is_empty() {
            "—".into()
        } else {
            r.critical_path.join(" → ")
        },
        gantt_svg: chart::gantt(&format!("exercise {}: steps", r.name), &spans, rto_target),
        steps: r
            .steps
            .iter()
            .map(|s| StepRow {
                name: s.name.clone(),
                gate: s.kind == rehearse_core::exercise::StepKind::Gate,
                critical: s.critical,
                state: s.state.as_str().to_owned(),
                after: s.after.join(", "),
                took: opt(s.duration_ms),
                worker: s.worker.clone().unwrap_or_default(),
                jobs: s.jobs.clone(),
                age: opt(s.restore_point_age_ms),
                note: s
                    .approval
                    .as_ref()
                    .map(|a| {
                        format!(
                            "approved by {} after {}",
                            a.by,
                            chart::duration(a.waited_ms)
                        )
                    })
                    .or_else(|| s.reason.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        deviations: r.deviations.clone(),
    };
    Ok(render(page))
}
