//! The client API (gRPC). The one place that converts between `rehearse_proto` and `core` types,
//! and the one mapping from [`ApiError`] to gRPC status: "not leader" is `FAILED_PRECONDITION`
//! with the leader in the `rehearse-leader` metadata (`ID=ADDR`), which clients follow.

use rehearse_core::jobs::{Job, JobState};
use rehearse_core::plan::Plan;
use rehearse_proto::v1 as pb;
use rehearse_proto::v1::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};

use crate::handle::NodeHandle;
use crate::node::{ApiError, Membership, Read, ReadAnswer};

pub use rehearse_proto::{LEADER_METADATA, new_job_id};

pub struct Api {
    pub node: NodeHandle,
}

pub fn status_of(e: ApiError) -> Status {
    match e {
        ApiError::NotLeader { leader } => {
            let mut status = Status::failed_precondition("not leader");
            if let Some((id, addr)) = leader
                && let Ok(value) = format!("{id}={addr}").parse()
            {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
            status
        }
        ApiError::Invalid(m) => Status::invalid_argument(m),
        ApiError::NotFound(m) => Status::not_found(m),
        ApiError::Unavailable(m) => Status::unavailable(m),
    }
}

fn state_name(s: JobState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn job_to_pb(job: &Job) -> pb::Job {
    pb::Job {
        id: job.id.clone(),
        state: state_name(job.state),
        attempts: job
            .attempts
            .iter()
            .map(|a| pb::Attempt {
                worker: a.worker.clone(),
                region: a.region.clone().unwrap_or_default(),
                token: a.token,
                started_at_ms: a.started_at_ms,
                ended_at_ms: a.ended_at_ms,
                outcome: a.outcome.clone().unwrap_or_default(),
            })
            .collect(),
        plan_toml: toml::to_string(&job.plan).unwrap_or_default(),
        report_json: job
            .report
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default(),
        submitted_at_ms: job.submitted_at_ms,
        updated_at_ms: job.updated_at_ms,
    }
}

#[tonic::async_trait]
impl Coordinator for Api {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let req = request.into_inner();
        // Validated here, before anything is written: an invalid plan is refused with the reason.
        let plan = Plan::from_toml(&req.plan_toml)
            .map_err(|e| Status::invalid_argument(format!("invalid plan: {e}")))?;
        let id = if req.id.is_empty() {
            new_job_id()
        } else {
            req.id
        };
        if id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Status::invalid_argument(
                "job id: at most 128 of [A-Za-z0-9_-]",
            ));
        }
        let id = self
            .node
            .submit(id, plan.to_raw())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SubmitResponse { id }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        match self
            .node
            .read(Read::Job(request.into_inner().id))
            .await
            .map_err(status_of)?
        {
            ReadAnswer::Job(job) => Ok(Response::new(job_to_pb(&job))),
            ReadAnswer::Jobs(_) => Err(Status::internal("wrong answer kind")),
        }
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let state = request.into_inner().state;
        let state = if state.is_empty() {
            None
        } else {
            Some(JobState::parse(&state).ok_or_else(|| Status::invalid_argument(format!("unknown state {state:?} (pending, assigned, running, passed, failed, cancelled)")))?)
        };
        match self.node.jobs(state).await.map_err(status_of)? {
            ReadAnswer::Jobs(jobs) => Ok(Response::new(pb::ListJobsResponse {
                jobs: jobs.iter().map(job_to_pb).collect(),
            })),
            ReadAnswer::Job(_) => Err(Status::internal("wrong answer kind")),
        }
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        self.node
            .cancel(request.into_inner().id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let s = self.node.status().await.map_err(status_of)?;
        Ok(Response::new(pb::ClusterStatusResponse {
            id: s.id,
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    addr: m.addr,
                    role: m.role.to_owned(),
                    region: m.region,
                })
                .collect(),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<pb::MembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = request.into_inner();
        let kind = match pb::membership_request::Kind::try_from(req.kind) {
            Ok(pb::membership_request::Kind::AddLearner) => Membership::AddLearner,
            Ok(pb::membership_request::Kind::Promote) => Membership::Promote,
            Ok(pb::membership_request::Kind::Remove) => Membership::Remove,
            Err(_) => return Err(Status::invalid_argument("unknown membership change")),
        };
        self.node
            .membership(kind, req.id, req.addr)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::MembershipResponse {}))
    }
}
