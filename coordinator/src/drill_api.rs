//! The drill half of the client API: definitions in, views out (JSON inside the proto messages,
//! built from `rehearse_core::drill` types — this is the one place converting them).

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

/// A drill command through the leader; its refusal (no such drill, …) as a status.
async fn propose(node: &NodeHandle, command: Command) -> Result<(), Status> {
    match node.fleet_command(command).await.map_err(status_of)? {
        Outcome::Done(Ok(())) => Ok(()),
        Outcome::Done(Err(reason)) if reason.starts_with("no drill") => {
            Err(Status::not_found(reason))
        }
        Outcome::Done(Err(reason)) => Err(Status::failed_precondition(reason)),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The drills' views: `name` one or all; `upcoming` next fire times each; `history` all runs.
pub async fn views(
    node: &NodeHandle,
    name: Option<String>,
    upcoming: usize,
    history: bool,
) -> Result<Response<pb::DrillAnswer>, Status> {
    let now = now_ms();
    let drills = node.drills(name).await.map_err(status_of)?;
    let views: Vec<DrillView> = drills
        .iter()
        .map(|(name, drill, runs)| {
            DrillView::new(name, drill.as_ref(), runs, now, upcoming, history)
        })
        .collect();
    let json = serde_json::to_string(&views).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::DrillAnswer {
        json,
        jobs: Vec::new(),
    }))
}

fn name_of(call: &pb::DrillCall) -> Result<String, Status> {
    let name = call.name.trim();
    if name.is_empty() {
        return Err(Status::invalid_argument("give the drill's name"));
    }
    Ok(name.to_owned())
}

/// A change to one drill through the leader, answered with the drill as it is then.
async fn change(
    node: &NodeHandle,
    name: String,
    command: Command,
    upcoming: usize,
) -> Result<Response<pb::DrillAnswer>, Status> {
    propose(node, command).await?;
    views(node, Some(name), upcoming, false).await
}

pub async fn apply(
    node: &NodeHandle,
    call: pb::DrillCall,
) -> Result<Response<pb::DrillAnswer>, Status> {
    let spec: DrillSpec = serde_json::from_str(&call.spec_json)
        .map_err(|e| Status::invalid_argument(format!("drill definition: {e}")))?;
    let spec = spec
        .checked()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let name = spec.name.clone();
    let command = Command::ApplyDrill {
        spec: Box::new(spec),
        at_ms: 0,
    };
    change(node, name, command, 5).await
}

pub async fn pause(
    node: &NodeHandle,
    call: pb::DrillCall,
) -> Result<Response<pb::DrillAnswer>, Status> {
    let name = name_of(&call)?;
    if call.reason.trim().is_empty() {
        return Err(Status::invalid_argument(
            "give a reason for the pause (--reason)",
        ));
    }
    let command = Command::PauseDrill {
        name: name.clone(),
        reason: call.reason,
        until_ms: call.until_ms,
        at_ms: 0,
    };
    change(node, name, command, 1).await
}

pub async fn resume(
    node: &NodeHandle,
    call: pb::DrillCall,
) -> Result<Response<pb::DrillAnswer>, Status> {
    let name = name_of(&call)?;
    let command = Command::ResumeDrill {
        name: name.clone(),
        at_ms: 0,
    };
    if call.now {
        propose(node, command).await?;
        return run(node, call).await;
    }
    change(node, name, command, 1).await
}

pub async fn run(
    node: &NodeHandle,
    call: pb::DrillCall,
) -> Result<Response<pb::DrillAnswer>, Status> {
    let name = name_of(&call)?;
    let drills = node.drills(Some(name.clone())).await.map_err(status_of)?;
    let Some((_, Some(drill), _)) = drills.into_iter().next() else {
        return Err(status_of(ApiError::NotFound(format!("no drill {name:?}"))));
    };
    let command = crate::ticker::manual_run(&drill, now_ms());
    let jobs = match &command {
        Command::DrillTick(t) => t.jobs.iter().map(|j| j.id.clone()).collect(),
        _ => Vec::new(),
    };
    let mut answer = change(node, name, command, 1).await?;
    answer.get_mut().jobs = jobs;
    Ok(answer)
}

pub async fn delete(
    node: &NodeHandle,
    call: pb::DrillCall,
) -> Result<Response<pb::DrillAnswer>, Status> {
    let name = name_of(&call)?;
    let command = Command::DeleteDrill {
        name: name.clone(),
        at_ms: 0,
    };
    change(node, name, command, 0).await
}
