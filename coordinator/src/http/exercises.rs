//! DR exercises: the same operations as `rehearse exercise …`, through [`crate::exercise_api`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri, header};
use rehearse_core::exercise::ExerciseSpec;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{AppState, ErrorBody, HttpError};
use crate::exercise_api;
use crate::node::ApiError;

/// An exercise's report (`rehearse exercise get --output json`'s shape), or a list of them.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ExerciseBody {
    #[schema(value_type = Object)]
    #[serde(flatten)]
    pub report: Value,
}

fn api_err<'a>(state: &'a AppState, uri: &'a Uri) -> impl Fn(ApiError) -> HttpError + 'a {
    move |e| HttpError::from_api(e, |id| state.node.peer_http(id), uri)
}

fn body<T: serde::Serialize>(value: T) -> Json<ExerciseBody> {
    Json(ExerciseBody {
        report: serde_json::to_value(value).unwrap_or(Value::Null),
    })
}

/// Every exercise (running ones and the last ended ones), oldest first: `{"exercises": [...]}`.
#[utoipa::path(get, path = "/v1/exercises", tag = "exercises",
    responses((status = 200, body = ExerciseBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<ExerciseBody>, HttpError> {
    exercise_api::list(&state.node)
        .await
        .map(|list| body(serde_json::json!({ "exercises": list })))
        .map_err(api_err(&state, &uri))
}

/// One exercise's report: steps, critical path, RTO/RPO against the targets, deviations.
#[utoipa::path(get, path = "/v1/exercises/{id}", tag = "exercises",
    params(("id" = String, Path, description = "The exercise's id")),
    responses((status = 200, body = ExerciseBody), (status = 404, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn get_exercise(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<ExerciseBody>, HttpError> {
    exercise_api::get(&state.node, &id)
        .await
        .map(body)
        .map_err(api_err(&state, &uri))
}

/// Start an exercise. The body is an exercise file as TOML with its plans inline
/// (`[step.plan]`, `Content-Type: application/toml`), or the definition as JSON (as `rehearse
/// exercise start` sends it, plans resolved).
#[utoipa::path(post, path = "/v1/exercises", tag = "exercises",
    request_body(description = "An exercise definition (TOML with inline plans, or JSON)", content((Object = "application/toml"), (Object = "application/json"))),
    responses((status = 200, body = ExerciseBody), (status = 400, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    text: String,
) -> Result<Json<ExerciseBody>, HttpError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.contains("json"));
    let spec: ExerciseSpec = if json {
        serde_json::from_str(&text)
            .map_err(|e| HttpError::invalid(format!("exercise definition: {e}")))?
    } else {
        ExerciseSpec::from_toml(&text, |name| {
            Err(format!(
                "plan file {name:?}: over HTTP the plan goes inline ([step.plan]), or send the definition as JSON (rehearse exercise start does)"
            ))
        })
        .map_err(|e| HttpError::invalid(format!("exercise definition: {e}")))?
    };
    exercise_api::start(&state.node, spec)
        .await
        .map(body)
        .map_err(api_err(&state, &uri))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ApproveBody {
    /// The gate's step name.
    pub step: String,
    /// Who approves (recorded in the report).
    pub by: String,
}

/// Approve a gate that waits.
#[utoipa::path(post, path = "/v1/exercises/{id}/approve", tag = "exercises",
    params(("id" = String, Path, description = "The exercise's id")),
    request_body = ApproveBody,
    responses((status = 200, body = ExerciseBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    Json(b): Json<ApproveBody>,
) -> Result<Json<ExerciseBody>, HttpError> {
    exercise_api::approve(&state.node, &id, &b.step, &b.by)
        .await
        .map(body)
        .map_err(api_err(&state, &uri))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AbortBody {
    /// Who aborts (recorded in the report).
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

/// Abort an exercise: running jobs cancelled (their sandboxes stopped), steps not ended aborted.
#[utoipa::path(post, path = "/v1/exercises/{id}/abort", tag = "exercises",
    params(("id" = String, Path, description = "The exercise's id")),
    request_body = AbortBody,
    responses((status = 200, body = ExerciseBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn abort(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    Json(b): Json<AbortBody>,
) -> Result<Json<ExerciseBody>, HttpError> {
    exercise_api::abort(&state.node, &id, &b.by, &b.reason)
        .await
        .map(body)
        .map_err(api_err(&state, &uri))
}
