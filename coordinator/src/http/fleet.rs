//! Workers and the cluster.

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, ErrorBody, HttpError};
use crate::node::ReadAnswer;

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerBody {
    pub name: String,
    pub region: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub slots: u32,
    pub used: u32,
    /// ready, draining, lost; unhealthy after three errored attempts in a row.
    pub state: String,
    pub healthy: bool,
    pub last_heartbeat_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The fleet's workers.
#[utoipa::path(get, path = "/v1/workers", tag = "fleet",
    responses((status = 200, body = Vec<WorkerBody>), (status = 307, description = "Not the leader"), (status = 503, body = ErrorBody)))]
pub async fn workers(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<Vec<WorkerBody>>, HttpError> {
    match state.node.read(crate::node::Read::Workers).await {
        Ok(ReadAnswer::Workers(workers)) => Ok(Json(
            workers
                .iter()
                .map(|w| {
                    let v = w.view();
                    WorkerBody {
                        name: v.name,
                        region: v.region,
                        labels: v.labels,
                        slots: v.slots,
                        used: v.used,
                        state: serde_json::to_value(v.state)
                            .ok()
                            .and_then(|s| s.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        healthy: v.healthy,
                        last_heartbeat_ms: w.last_heartbeat_ms,
                        last_error: w.last_error.clone(),
                    }
                })
                .collect(),
        )),
        Ok(_) => Err(HttpError::new(
            crate::errors::Code::Unavailable,
            "wrong answer kind",
        )),
        Err(e) => Err(HttpError::from_api(e, |id| state.node.peer_http(id), &uri)),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterBody {
    /// The node that answered.
    pub id: u64,
    /// 0 while there is none.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// The command version every member reads.
    pub cluster_version: u32,
    pub members: Vec<MemberBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberBody {
    pub id: u64,
    pub addr: String,
    /// voter or learner.
    pub role: String,
    pub region: String,
    pub command_version: u32,
}

/// The cluster as this node sees it (any node answers; no redirect).
#[utoipa::path(get, path = "/v1/cluster", tag = "fleet",
    responses((status = 200, body = ClusterBody), (status = 503, body = ErrorBody)))]
pub async fn cluster(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<ClusterBody>, HttpError> {
    let s = state
        .node
        .status()
        .await
        .map_err(|e| HttpError::from_api(e, |id| state.node.peer_http(id), &uri))?;
    Ok(Json(ClusterBody {
        id: s.id,
        leader: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        cluster_version: s.cluster_version,
        members: s
            .members
            .into_iter()
            .map(|m| MemberBody {
                id: m.id,
                addr: m.addr,
                role: m.role.to_owned(),
                region: m.region,
                command_version: m.command_version,
            })
            .collect(),
    }))
}
