//! Verifications and jobs.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use rehearse_core::jobs::{Job, JobState};
use rehearse_core::plan::{Plan, RawPlan};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{AppState, ErrorBody, HttpError};
use crate::node::{Read, ReadAnswer};

/// The longest `wait` a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// How often a long-poll looks again.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// A job as the API shows it: the plan and report as objects.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobBody {
    pub id: String,
    /// pending, assigned, running, passed, failed, error, cancelled.
    pub state: String,
    /// Whether the job has ended (its state will not change again).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The phase the running attempt last reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why a job ended without a report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    pub attempts: Vec<AttemptBody>,
    /// The plan as submitted (the plan file's shape).
    #[schema(value_type = Object)]
    pub plan: Value,
    /// The verification report, once there is a verdict.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptBody {
    pub worker: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The attempt's fencing token.
    pub token: u64,
    pub started_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    /// passed, failed, error, lost, cancelled, timed_out — absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Job> for JobBody {
    fn from(job: &Job) -> JobBody {
        JobBody {
            id: job.id.clone(),
            state: job.state.as_str().to_owned(),
            is_final: job.state.is_final(),
            phase: job.phase.clone(),
            reason: job.reason.clone(),
            submitted_at_ms: job.submitted_at_ms,
            updated_at_ms: job.updated_at_ms,
            attempts: job
                .attempts
                .iter()
                .map(|a| AttemptBody {
                    worker: a.worker.clone(),
                    region: a.region.clone(),
                    token: a.token,
                    started_at_ms: a.started_at_ms,
                    ended_at_ms: a.ended_at_ms,
                    outcome: a.outcome.map(|o| o.as_str().to_owned()),
                    reason: a.reason.clone(),
                })
                .collect(),
            plan: serde_json::to_value(&job.plan).unwrap_or(Value::Null),
            report: job
                .report
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct WaitQuery {
    /// Long-poll: answer when the job is final or this long has passed (e.g. `60s`, `5m`; at
    /// most 5m).
    pub wait: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SubmitQuery {
    /// Long-poll: answer when the job is final or this long has passed (at most 5m).
    pub wait: Option<String>,
    /// The job id to use (idempotent: submitting again with the same id is the same job).
    pub id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<String>,
}

fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>, HttpError> {
    let Some(text) = wait.filter(|w| !w.is_empty()) else {
        return Ok(None);
    };
    let d = humantime::parse_duration(text)
        .map_err(|e| HttpError::invalid(format!("wait {text:?}: {e}")))?;
    if d > MAX_WAIT {
        return Err(HttpError::invalid(format!(
            "wait {text:?}: at most {}",
            humantime::format_duration(MAX_WAIT)
        )));
    }
    Ok(Some(d))
}

fn leader_http(state: &AppState) -> impl Fn(u64) -> Option<String> + '_ {
    move |id| state.node.peer_http(id)
}

async fn read_job(state: &AppState, id: &str, uri: &Uri) -> Result<Job, HttpError> {
    match state.node.read(Read::Job(id.to_owned())).await {
        Ok(ReadAnswer::Job(job)) => Ok(*job),
        Ok(_) => Err(HttpError::new(
            crate::errors::Code::Unavailable,
            "wrong answer kind",
        )),
        Err(e) => Err(HttpError::from_api(e, leader_http(state), uri)),
    }
}

/// The job, once final or when `wait` runs out (without `wait`: at once).
async fn job_after(
    state: &AppState,
    id: &str,
    wait: Option<Duration>,
    uri: &Uri,
) -> Result<Job, HttpError> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    loop {
        let job = read_job(state, id, uri).await?;
        match deadline {
            Some(d) if !job.state.is_final() && tokio::time::Instant::now() < d => {
                tokio::time::sleep(POLL_EVERY).await;
            }
            _ => return Ok(job),
        }
    }
}

/// Submit a plan for verification.
///
/// The body is a plan file as TOML (`Content-Type: application/toml` or `text/plain`) or the same
/// plan as JSON (`application/json`). The plan is validated before anything is written; an
/// invalid one is refused naming the problem. With `wait`, the answer comes when the verdict is
/// in (or the wait runs out: then the job is still running, `final` is false).
#[utoipa::path(
    post,
    path = "/v1/verifications",
    tag = "jobs",
    params(SubmitQuery),
    request_body(description = "A plan (TOML or JSON)", content((Object = "application/toml"), (Object = "application/json"))),
    responses(
        (status = 201, description = "Accepted: the job (final when `wait` saw its verdict)", body = JobBody),
        (status = 400, description = "Invalid plan", body = ErrorBody),
        (status = 307, description = "Not the leader: the same request there"),
        (status = 503, description = "No leader yet, or shutting down", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    Query(q): Query<SubmitQuery>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Result<(StatusCode, Json<JobBody>), HttpError> {
    let wait = parse_wait(q.wait.as_deref())?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let plan = if json {
        let raw: RawPlan = serde_json::from_str(&body)
            .map_err(|e| HttpError::invalid(format!("invalid plan: {e}")))?;
        Plan::from_raw(raw)
    } else {
        Plan::from_toml(&body)
    }
    .map_err(|e| HttpError::invalid(format!("invalid plan: {e}")))?;
    let id = match q.id {
        Some(id) => {
            if id.is_empty()
                || id.len() > 128
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(HttpError::invalid("job id: 1 to 128 of [A-Za-z0-9_-]"));
            }
            id
        }
        None => crate::api::new_job_id(),
    };
    let id = state
        .node
        .submit(id, plan.to_raw())
        .await
        .map_err(|e| HttpError::from_api(e, leader_http(&state), &uri))?;
    let job = job_after(&state, &id, wait, &uri).await?;
    Ok((StatusCode::CREATED, Json(JobBody::from(&job))))
}

/// One job; with `wait`, when it is final (or the wait runs out).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id"), WaitQuery),
    responses(
        (status = 200, description = "The job", body = JobBody),
        (status = 400, description = "Bad wait", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 307, description = "Not the leader: the same request there"),
        (status = 503, description = "No leader yet", body = ErrorBody),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    uri: Uri,
) -> Result<Json<JobBody>, HttpError> {
    let wait = parse_wait(q.wait.as_deref())?;
    let job = job_after(&state, &id, wait, &uri).await?;
    Ok(Json(JobBody::from(&job)))
}

/// Jobs, oldest first; `state` filters.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "The jobs", body = Vec<JobBody>),
        (status = 400, description = "Unknown state", body = ErrorBody),
        (status = 307, description = "Not the leader: the same request there"),
        (status = 503, description = "No leader yet", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
    uri: Uri,
) -> Result<Json<Vec<JobBody>>, HttpError> {
    let filter = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            HttpError::invalid(format!(
                "unknown state {s:?} (pending, assigned, running, passed, failed, error, cancelled)"
            ))
        })?),
    };
    match state.node.jobs(filter).await {
        Ok(ReadAnswer::Jobs(jobs)) => Ok(Json(jobs.iter().map(JobBody::from).collect())),
        Ok(_) => Err(HttpError::new(
            crate::errors::Code::Unavailable,
            "wrong answer kind",
        )),
        Err(e) => Err(HttpError::from_api(e, leader_http(&state), &uri)),
    }
}

/// Cancel a job: its running attempt ends `cancelled` and its slot is freed.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job as it is after the cancel", body = JobBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 307, description = "Not the leader: the same request there"),
        (status = 503, description = "No leader yet", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<JobBody>, HttpError> {
    state
        .node
        .cancel(id.clone())
        .await
        .map_err(|e| HttpError::from_api(e, leader_http(&state), &uri))?;
    let job = read_job(&state, &id, &uri).await?;
    Ok(Json(JobBody::from(&job)))
}
