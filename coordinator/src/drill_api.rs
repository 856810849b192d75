//! The drill operations of the client APIs: definitions in, views out. Transport-neutral (the
//! gRPC service wraps them in proto messages with the views as JSON; the HTTP API answers the
//! views as they are), built from `rehearse_core::drill` types.

use std::time::{SystemTime, UNIX_EPOCH};

use rehearse_core::drill::{DrillSpec, DrillView};
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

/// What a drill operation answers: the drills as they are then, and the jobs it started.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DrillAnswer {
    pub drills: Vec<DrillView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
}

/// A drill command through the leader; its refusal (no such drill, …) as an error.
async fn propose(node: &NodeHandle, command: Command) -> Result<(), ApiError> {
    match node.fleet_command(command).await? {
        Outcome::Done(Ok(())) => Ok(()),
        Outcome::Done(Err(reason)) if reason.starts_with("no drill") => {
            Err(ApiError::NotFound(reason))
        }
        Outcome::Done(Err(reason)) => Err(ApiError::Refused(reason)),
        other => Err(ApiError::Unavailable(format!(
            "unexpected outcome {other:?}"
        ))),
    }
}

/// The drills' views: `name` one or all; `upcoming` next fire times each; `history` all runs.
pub async fn views(
    node: &NodeHandle,
    name: Option<String>,
    upcoming: usize,
    history: bool,
) -> Result<Vec<DrillView>, ApiError> {
    let now = now_ms();
    let drills = node.drills(name.clone()).await?;
    if let Some(name) = name
        && drills.is_empty()
    {
        return Err(ApiError::NotFound(format!("no drill {name:?}")));
    }
    Ok(drills
        .iter()
        .map(|(name, drill, runs)| {
            let schedule = drill.as_ref().and_then(|d| schedule_of(&d.spec));
            DrillView::new(
                name,
                drill.as_ref(),
                runs,
                now,
                (upcoming, history),
                schedule.as_ref(),
            )
        })
        .collect())
}

/// Parsed schedules by (pattern, zone), kept across reads: a cron pattern takes about 20 µs to
/// parse, so a listing of 10,000 drills would spend 200 ms on it. Bounded: emptied when it
/// outgrows [`SCHEDULE_CACHE`] distinct schedules.
static SCHEDULES: std::sync::LazyLock<
    std::sync::Mutex<
        std::collections::HashMap<(String, String), rehearse_core::schedule::Schedule>,
    >,
> = std::sync::LazyLock::new(Default::default);

const SCHEDULE_CACHE: usize = 100_000;

fn schedule_of(spec: &DrillSpec) -> Option<rehearse_core::schedule::Schedule> {
    let key = (spec.schedule.clone(), spec.timezone.clone());
    let mut cache = SCHEDULES.lock().ok()?;
    if let Some(s) = cache.get(&key) {
        return Some(s.clone());
    }
    let parsed = spec.schedule().ok()?;
    if cache.len() >= SCHEDULE_CACHE {
        cache.clear();
    }
    cache.insert(key, parsed.clone());
    Some(parsed)
}

fn checked_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::Invalid("give the drill's name".into()));
    }
    Ok(name.to_owned())
}

/// A change to one drill through the leader, answered with the drill as it is then.
async fn change(
    node: &NodeHandle,
    name: String,
    command: Command,
    upcoming: usize,
) -> Result<DrillAnswer, ApiError> {
    propose(node, command).await?;
    // A deleted drill with no history has no view any more: an empty answer, not an error.
    let drills = match views(node, Some(name), upcoming, false).await {
        Err(ApiError::NotFound(_)) => Vec::new(),
        other => other?,
    };
    Ok(DrillAnswer {
        drills,
        jobs: Vec::new(),
    })
}

/// Creates or updates a drill by name.
pub async fn apply(node: &NodeHandle, spec: DrillSpec) -> Result<DrillAnswer, ApiError> {
    let spec = spec
        .checked()
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let name = spec.name.clone();
    let command = Command::ApplyDrill {
        spec: Box::new(spec),
        at_ms: 0,
    };
    change(node, name, command, 5).await
}

pub async fn pause(
    node: &NodeHandle,
    name: &str,
    reason: &str,
    until_ms: Option<u64>,
) -> Result<DrillAnswer, ApiError> {
    let name = checked_name(name)?;
    if reason.trim().is_empty() {
        return Err(ApiError::Invalid(
            "give a reason for the pause (--reason)".into(),
        ));
    }
    let command = Command::PauseDrill {
        name: name.clone(),
        reason: reason.to_owned(),
        until_ms,
        at_ms: 0,
    };
    change(node, name, command, 1).await
}

/// Resumes a paused drill; with `now`, one run at once too.
pub async fn resume(node: &NodeHandle, name: &str, now: bool) -> Result<DrillAnswer, ApiError> {
    let name = checked_name(name)?;
    let command = Command::ResumeDrill {
        name: name.clone(),
        at_ms: 0,
    };
    if now {
        propose(node, command).await?;
        return run(node, &name).await;
    }
    change(node, name, command, 1).await
}

/// One run now, recorded as manual.
pub async fn run(node: &NodeHandle, name: &str) -> Result<DrillAnswer, ApiError> {
    let name = checked_name(name)?;
    let drills = node.drills(Some(name.clone())).await?;
    let Some((_, Some(drill), _)) = drills.into_iter().next() else {
        return Err(ApiError::NotFound(format!("no drill {name:?}")));
    };
    let command = crate::ticker::manual_run(&drill, now_ms());
    // The run's jobs; for a drill of an exercise, the exercise's id.
    let jobs = match &command {
        Command::DrillTick(t) => t
            .jobs
            .iter()
            .map(|j| j.id.clone())
            .chain(t.exercise.iter().map(|e| e.id.clone()))
            .collect(),
        _ => Vec::new(),
    };
    let mut answer = change(node, name, command, 1).await?;
    answer.jobs = jobs;
    Ok(answer)
}

pub async fn delete(node: &NodeHandle, name: &str) -> Result<DrillAnswer, ApiError> {
    let name = checked_name(name)?;
    let command = Command::DeleteDrill {
        name: name.clone(),
        at_ms: 0,
    };
    change(node, name, command, 0).await
}

/// The gRPC side: proto messages in and out, errors through `status_of`.
pub mod grpc {
    use super::*;

    fn answer(a: DrillAnswer) -> Result<Response<pb::DrillAnswer>, Status> {
        let json = serde_json::to_string(&a.drills).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::DrillAnswer { json, jobs: a.jobs }))
    }

    pub async fn views(
        node: &NodeHandle,
        name: Option<String>,
        upcoming: usize,
        history: bool,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        // The gRPC API has always answered an unknown name with an empty list.
        let drills = match super::views(node, name, upcoming, history).await {
            Err(ApiError::NotFound(_)) => Vec::new(),
            other => other.map_err(status_of)?,
        };
        answer(DrillAnswer {
            drills,
            jobs: Vec::new(),
        })
    }

    pub async fn apply(
        node: &NodeHandle,
        call: pb::DrillCall,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        let spec: DrillSpec = serde_json::from_str(&call.spec_json)
            .map_err(|e| Status::invalid_argument(format!("drill definition: {e}")))?;
        answer(super::apply(node, spec).await.map_err(status_of)?)
    }

    pub async fn pause(
        node: &NodeHandle,
        call: pb::DrillCall,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        answer(
            super::pause(node, &call.name, &call.reason, call.until_ms)
                .await
                .map_err(status_of)?,
        )
    }

    pub async fn resume(
        node: &NodeHandle,
        call: pb::DrillCall,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        answer(
            super::resume(node, &call.name, call.now)
                .await
                .map_err(status_of)?,
        )
    }

    pub async fn run(
        node: &NodeHandle,
        call: pb::DrillCall,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        answer(super::run(node, &call.name).await.map_err(status_of)?)
    }

    pub async fn delete(
        node: &NodeHandle,
        call: pb::DrillCall,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        answer(super::delete(node, &call.name).await.map_err(status_of)?)
    }
}
