//! The DR exercise operations of the client APIs: definitions in, reports out.
//! Transport-neutral (the gRPC service wraps them with the reports as JSON; the HTTP API
//! answers the reports as they are), built from `rehearse_core::exercise` types.

use std::time::{SystemTime, UNIX_EPOCH};

use rehearse_core::exercise::{ExerciseReport, ExerciseSpec, exercise_id};
use rehearse_core::exercises::Start;
use rehearse_core::jobs::{Command, Outcome};
use rehearse_proto::v1 as pb;
use tonic::{Response, Status};

use crate::api::status_of;
use crate::handle::NodeHandle;
use crate::node::ApiError;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An exercise command through the leader; its refusal (no such exercise, …) as an error.
async fn propose(node: &NodeHandle, command: Command) -> Result<(), ApiError> {
    match node.fleet_command(command).await? {
        Outcome::Done(Ok(())) => Ok(()),
        Outcome::Done(Err(reason)) if reason.starts_with("no exercise") => {
            Err(ApiError::NotFound(reason))
        }
        Outcome::Done(Err(reason)) => Err(ApiError::Refused(reason)),
        other => Err(ApiError::Unavailable(format!(
            "unexpected outcome {other:?}"
        ))),
    }
}

/// Every exercise's report, oldest first.
pub async fn list(node: &NodeHandle) -> Result<Vec<ExerciseReport>, ApiError> {
    Ok(node
        .exercises(None)
        .await?
        .iter()
        .map(|e| e.report())
        .collect())
}

/// One exercise's report (as far as it has run).
pub async fn get(node: &NodeHandle, id: &str) -> Result<ExerciseReport, ApiError> {
    let id = checked(id, "the exercise's id")?;
    node.exercises(Some(id))
        .await?
        .first()
        .map(|e| e.report())
        .ok_or_else(|| ApiError::NotFound("no such exercise".into()))
}

fn checked(value: &str, what: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::Invalid(format!("give {what}")));
    }
    Ok(v.to_owned())
}

/// Starts an exercise; answers its report as it starts (its id, the first steps running).
pub async fn start(node: &NodeHandle, spec: ExerciseSpec) -> Result<ExerciseReport, ApiError> {
    let spec = spec
        .checked()
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let at_ms = now_ms();
    let id = exercise_id(&spec.name, at_ms);
    propose(
        node,
        Command::StartExercise(Box::new(Start {
            id: id.clone(),
            spec,
            at_ms,
        })),
    )
    .await?;
    get(node, &id).await
}

/// Approves a waiting gate, saying who.
pub async fn approve(
    node: &NodeHandle,
    id: &str,
    step: &str,
    by: &str,
) -> Result<ExerciseReport, ApiError> {
    let id = checked(id, "the exercise's id")?;
    let command = Command::ApproveGate {
        id: id.clone(),
        step: checked(step, "the gate's step name (--step)")?,
        by: checked(by, "who approves (--by)")?,
        at_ms: 0,
    };
    propose(node, command).await?;
    get(node, &id).await
}

/// Stops an exercise: its running jobs are cancelled (the workers stop their sandboxes).
pub async fn abort(
    node: &NodeHandle,
    id: &str,
    by: &str,
    reason: &str,
) -> Result<ExerciseReport, ApiError> {
    let id = checked(id, "the exercise's id")?;
    let command = Command::AbortExercise {
        id: id.clone(),
        by: checked(by, "who aborts (--by)")?,
        reason: reason.trim().to_owned(),
        at_ms: 0,
    };
    propose(node, command).await?;
    get(node, &id).await
}

/// The gRPC side: proto messages in and out, errors through `status_of`.
pub mod grpc {
    use super::*;

    fn answer<T: serde::Serialize>(value: &T) -> Result<Response<pb::ExerciseAnswer>, Status> {
        let json = serde_json::to_string(value).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ExerciseAnswer { json }))
    }

    pub async fn start(
        node: &NodeHandle,
        call: pb::ExerciseCall,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        let spec: ExerciseSpec = serde_json::from_str(&call.spec_json)
            .map_err(|e| Status::invalid_argument(format!("exercise definition: {e}")))?;
        answer(&super::start(node, spec).await.map_err(status_of)?)
    }

    pub async fn list(node: &NodeHandle) -> Result<Response<pb::ExerciseAnswer>, Status> {
        answer(&super::list(node).await.map_err(status_of)?)
    }

    pub async fn get(
        node: &NodeHandle,
        call: pb::ExerciseCall,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        answer(&super::get(node, &call.id).await.map_err(status_of)?)
    }

    pub async fn approve(
        node: &NodeHandle,
        call: pb::ExerciseCall,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        answer(
            &super::approve(node, &call.id, &call.step, &call.by)
                .await
                .map_err(status_of)?,
        )
    }

    pub async fn abort(
        node: &NodeHandle,
        call: pb::ExerciseCall,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        answer(
            &super::abort(node, &call.id, &call.by, &call.reason)
                .await
                .map_err(status_of)?,
        )
    }
}
