//! Drills: the same operations as `rehearse drill …`, through [`crate::drill_api`].

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri, header};
use rehearse_core::drill::DrillSpec;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{AppState, ErrorBody, HttpError};
use crate::drill_api::{self, DrillAnswer};
use crate::node::ApiError;

/// What drill operations answer: the drills as they are then (`rehearse drill get --output
/// json`'s shape), and the jobs a run started.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct DrillsBody {
    #[schema(value_type = Vec<Object>)]
    pub drills: Value,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
}

impl From<DrillAnswer> for DrillsBody {
    fn from(a: DrillAnswer) -> DrillsBody {
        DrillsBody {
            drills: serde_json::to_value(&a.drills).unwrap_or(Value::Array(Vec::new())),
            jobs: a.jobs,
        }
    }
}

fn api_err<'a>(state: &'a AppState, uri: &'a Uri) -> impl Fn(ApiError) -> HttpError + 'a {
    move |e| HttpError::from_api(e, |id| state.node.peer_http(id), uri)
}

fn views(drills: Vec<rehearse_core::drill::DrillView>) -> Json<DrillsBody> {
    Json(DrillsBody::from(DrillAnswer {
        drills,
        jobs: Vec::new(),
    }))
}

/// Every drill: schedule, next run, last run and verdict, last passed run, status.
#[utoipa::path(get, path = "/v1/drills", tag = "drills",
    responses((status = 200, body = DrillsBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, uri: Uri) -> Result<Json<DrillsBody>, HttpError> {
    drill_api::views(&state.node, None, 1, false)
        .await
        .map(views)
        .map_err(api_err(&state, &uri))
}

/// One drill, with its next five fire times (DST shifts noted).
#[utoipa::path(get, path = "/v1/drills/{name}", tag = "drills",
    params(("name" = String, Path, description = "The drill's name")),
    responses((status = 200, body = DrillsBody), (status = 404, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn get_drill(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Json<DrillsBody>, HttpError> {
    drill_api::views(&state.node, Some(name), 5, false)
        .await
        .map(views)
        .map_err(api_err(&state, &uri))
}

/// One drill with every run it has (tick, start, job, verdict, RTO per phase, RPO, rows).
#[utoipa::path(get, path = "/v1/drills/{name}/history", tag = "drills",
    params(("name" = String, Path, description = "The drill's name")),
    responses((status = 200, body = DrillsBody), (status = 404, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Json<DrillsBody>, HttpError> {
    drill_api::views(&state.node, Some(name), 0, true)
        .await
        .map(views)
        .map_err(api_err(&state, &uri))
}

/// Create or update a drill by name. The body is a drill file as TOML with its plans inline
/// (`Content-Type: application/toml`), or the definition as JSON (as `rehearse drill apply`
/// sends it, plans resolved).
#[utoipa::path(post, path = "/v1/drills", tag = "drills",
    request_body(description = "A drill definition (TOML with inline plans, or JSON)", content((Object = "application/toml"), (Object = "application/json"))),
    responses((status = 200, body = DrillsBody), (status = 400, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Result<Json<DrillsBody>, HttpError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.contains("json"));
    let spec: DrillSpec = if json {
        serde_json::from_str(&body)
            .map_err(|e| HttpError::invalid(format!("drill definition: {e}")))?
    } else {
        // A drill file; the coordinator reads no files for a client, so its plans are inline.
        DrillSpec::from_toml(&body, |name| {
            Err(format!(
                "plan file {name:?}: over HTTP the plan goes inline (a [plan] table), or send the definition as JSON (rehearse drill apply does)"
            ))
        })
        .map_err(|e| HttpError::invalid(format!("drill definition: {e}")))?
    };
    drill_api::apply(&state.node, spec)
        .await
        .map(|a| Json(a.into()))
        .map_err(api_err(&state, &uri))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PauseBody {
    /// Why (kept with the drill, shown in `drill list`).
    pub reason: String,
    /// Resume by itself at this instant (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
}

/// Pause a drill: no runs until resumed (or until `until`).
#[utoipa::path(post, path = "/v1/drills/{name}/pause", tag = "drills",
    params(("name" = String, Path, description = "The drill's name")),
    request_body = PauseBody,
    responses((status = 200, body = DrillsBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
    Json(body): Json<PauseBody>,
) -> Result<Json<DrillsBody>, HttpError> {
    let until_ms = match body.until.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| HttpError::invalid(format!("until {t:?}: {e}")))?
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        ),
    };
    drill_api::pause(&state.node, &name, &body.reason, until_ms)
        .await
        .map(|a| Json(a.into()))
        .map_err(api_err(&state, &uri))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ResumeQuery {
    /// Also run once at once.
    #[serde(default)]
    pub now: bool,
}

/// Resume a paused drill (no immediate run unless `now`).
#[utoipa::path(post, path = "/v1/drills/{name}/resume", tag = "drills",
    params(("name" = String, Path, description = "The drill's name"), ResumeQuery),
    responses((status = 200, body = DrillsBody), (status = 404, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ResumeQuery>,
    uri: Uri,
) -> Result<Json<DrillsBody>, HttpError> {
    drill_api::resume(&state.node, &name, q.now)
        .await
        .map(|a| Json(a.into()))
        .map_err(api_err(&state, &uri))
}

/// One run now, recorded as manual; answers the jobs it started.
#[utoipa::path(post, path = "/v1/drills/{name}/run", tag = "drills",
    params(("name" = String, Path, description = "The drill's name")),
    responses((status = 200, body = DrillsBody), (status = 404, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Json<DrillsBody>, HttpError> {
    drill_api::run(&state.node, &name)
        .await
        .map(|a| Json(a.into()))
        .map_err(api_err(&state, &uri))
}

/// Delete a drill; its history stays until `keep` runs out.
#[utoipa::path(delete, path = "/v1/drills/{name}", tag = "drills",
    params(("name" = String, Path, description = "The drill's name")),
    responses((status = 200, body = DrillsBody), (status = 404, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Json<DrillsBody>, HttpError> {
    drill_api::delete(&state.node, &name)
        .await
        .map(|a| Json(a.into()))
        .map_err(api_err(&state, &uri))
}
