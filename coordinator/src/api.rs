//! The client API (gRPC). The one place that converts between `rehearse_proto` and `core` types,
//! and the one mapping from [`ApiError`] to gRPC status: "not leader" is `FAILED_PRECONDITION`
//! with the leader in the `rehearse-leader` metadata (`ID=ADDR`), which clients follow.

use std::pin::Pin;
use std::time::Duration;

use rehearse_core::fleet::{Worker, WorkerSpec};
use rehearse_core::jobs::{Command, Job, JobState, Outcome};
use rehearse_core::plan::Plan;
use rehearse_core::report::Report;
use rehearse_proto::v1 as pb;
use rehearse_proto::v1::coordinator_server::Coordinator;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::fleet::WorkerSet;
use crate::handle::NodeHandle;
use crate::node::{ApiError, Membership, Read, ReadAnswer};

pub use rehearse_proto::{LEADER_METADATA, new_job_id};

pub struct Api {
    pub node: NodeHandle,
    /// Signs evidence exports (`--evidence-key`).
    pub evidence_key: Option<std::sync::Arc<crate::evidence::Signer>>,
    /// What `ForceNewCluster` needs to restart this node into a forced membership.
    pub force: ForceSwitch,
}

/// Restarts the node in-process once a forced membership is stored (see [`crate::force`]).
pub struct ForceSwitch {
    pub id: u64,
    pub data_dir: std::path::PathBuf,
    /// Cancelling it stops this run of the node...
    pub stop: tokio_util::sync::CancellationToken,
    /// ...and this tells the run that a restart was asked for.
    pub requested: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long the answer to `ForceNewCluster` has to reach the caller before the node stops.
const FORCE_ANSWER_GRACE: Duration = Duration::from_millis(200);

/// An API error as a gRPC status, through the one table in [`crate::errors`]. "Not leader"
/// carries the leader in the `rehearse-leader` metadata (`ID=ADDR`), which clients follow.
pub fn status_of(e: ApiError) -> Status {
    let code = e.code().grpc();
    match e {
        ApiError::NotLeader { leader } => {
            let mut status = Status::new(code, "not leader");
            if let Some((id, addr)) = leader
                && let Ok(value) = format!("{id}={addr}").parse()
            {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
            status
        }
        ApiError::Invalid(m)
        | ApiError::NotFound(m)
        | ApiError::Refused(m)
        | ApiError::Unavailable(m) => Status::new(code, m),
    }
}

/// The lowercase name serde gives a state (`pending`, `ready`, ...).
fn state_name(s: impl serde::Serialize) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn job_to_pb(job: &Job) -> pb::Job {
    pb::Job {
        id: job.id.clone(),
        state: job.state.as_str().to_owned(),
        attempts: job
            .attempts
            .iter()
            .map(|a| pb::Attempt {
                worker: a.worker.clone(),
                region: a.region.clone().unwrap_or_default(),
                token: a.token,
                started_at_ms: a.started_at_ms,
                ended_at_ms: a.ended_at_ms,
                outcome: a.outcome.map(|o| o.as_str().to_owned()).unwrap_or_default(),
                reason: a.reason.clone().unwrap_or_default(),
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
        phase: job.phase.clone().unwrap_or_default(),
        reason: job.reason.clone().unwrap_or_default(),
    }
}

pub fn worker_to_pb(w: &Worker) -> pb::WorkerInfo {
    pb::WorkerInfo {
        name: w.spec.name.clone(),
        region: w.spec.region.clone(),
        labels: w.spec.labels.clone().into_iter().collect(),
        slots: w.spec.slots,
        used: w.running.len() as u32,
        state: state_name(w.state),
        last_heartbeat_ms: w.last_heartbeat_ms,
        running: w.running.iter().cloned().collect(),
        recent_errors: w.recent_errors,
        healthy: w.healthy(),
        last_error: w.last_error.clone().unwrap_or_default(),
    }
}

/// A fleet command's outcome as an answer: refusals (stale token, unknown worker) are `ABORTED`
/// with the reason; the worker gives up on that message rather than retrying it.
fn done(outcome: Outcome) -> Result<(), Status> {
    match outcome {
        Outcome::Done(Ok(())) => Ok(()),
        Outcome::Done(Err(reason)) => Err(Status::aborted(reason)),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// A token command's outcome: "no token" is NOT_FOUND, other refusals FAILED_PRECONDITION.
fn token_done(outcome: Outcome) -> Result<(), Status> {
    match outcome {
        Outcome::Done(Ok(())) => Ok(()),
        Outcome::Done(Err(reason)) if reason.starts_with("no token") => {
            Err(status_of(ApiError::NotFound(reason)))
        }
        Outcome::Done(Err(reason)) => Err(status_of(ApiError::Refused(reason))),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Names and regions: 1..=64 of [A-Za-z0-9_.-] (`rehearse_core::fleet::check_name`).
fn check_name(what: &str, name: &str) -> Result<(), Status> {
    rehearse_core::fleet::check_name(what, name).map_err(Status::invalid_argument)
}

/// The worker's set as the stream sends it, or why the stream cannot go on.
fn assignment_set(
    set: &WorkerSet,
    name: &str,
    incarnation: u64,
) -> Result<pb::AssignmentSet, Status> {
    if !set.leader {
        return Err(status_of(ApiError::NotLeader {
            leader: set.leader_hint.clone(),
        }));
    }
    match set.incarnation {
        Some(inc) if inc == incarnation => Ok(pb::AssignmentSet {
            applied: set.applied,
            assignments: set
                .running
                .iter()
                .map(|a| pb::Assignment {
                    job_id: a.job.clone(),
                    token: a.token,
                    plan_toml: a.plan_toml.clone(),
                    traceparent: rehearse_core::trace::traceparent(&a.job, a.token),
                })
                .collect(),
        }),
        Some(_) => Err(Status::aborted(format!(
            "worker {name} registered again with another incarnation"
        ))),
        None => Err(Status::not_found(format!(
            "no worker {name}; register first"
        ))),
    }
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentSet, Status>> + Send>>;
type EvidenceStream = Pin<Box<dyn Stream<Item = Result<pb::EvidenceChunk, Status>> + Send>>;

/// An export's files are sent in chunks of at most this many bytes.
const EVIDENCE_CHUNK: usize = 1 << 20;

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
            _ => Err(Status::internal("wrong answer kind")),
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
            Some(JobState::parse(&state).ok_or_else(|| Status::invalid_argument(format!("unknown state {state:?} (pending, assigned, running, passed, failed, error, cancelled)")))?)
        };
        match self.node.jobs(state).await.map_err(status_of)? {
            ReadAnswer::Jobs(jobs) => Ok(Response::new(pb::ListJobsResponse {
                jobs: jobs.iter().map(job_to_pb).collect(),
            })),
            _ => Err(Status::internal("wrong answer kind")),
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
                    command_version: m.command_version,
                })
                .collect(),
            cluster_version: s.cluster_version,
        }))
    }

    async fn force_new_cluster(
        &self,
        request: Request<pb::ForceNewClusterRequest>,
    ) -> Result<Response<pb::ForceNewClusterResponse>, Status> {
        let req = request.into_inner();
        let conf = crate::force::ForcedConf {
            voters: req.voters,
            learners: req.learners,
        };
        conf.check(self.force.id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let status = self.node.status().await.map_err(status_of)?;
        // A voter knows a leader only while a majority answers it (check_quorum deposes a leader
        // that lost it, pre-vote forgets one that went silent): then there is a quorum, and
        // forcing would split this node off a working cluster. (A learner cannot tell.)
        let voter = status
            .members
            .iter()
            .any(|m| m.id == status.id && m.role == "voter");
        if voter && status.leader != 0 {
            return Err(Status::aborted(format!(
                "node {} is a voter that knows a leader (node {}): the cluster has a quorum, and a forced membership is only for one without",
                status.id, status.leader
            )));
        }
        let applied = status.applied;
        let (dir, stored) = (self.force.data_dir.clone(), conf.clone());
        tokio::task::spawn_blocking(move || crate::force::write(&dir, &stored))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                Status::unavailable(format!("could not store the forced membership: {e}"))
            })?;
        tracing::warn!(
            voters = ?conf.voters,
            learners = ?conf.learners,
            applied,
            "a forced new membership was stored; restarting to take it"
        );
        self.force
            .requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let stop = self.force.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FORCE_ANSWER_GRACE).await;
            stop.cancel();
        });
        Ok(Response::new(pb::ForceNewClusterResponse { applied }))
    }

    async fn write_probe(
        &self,
        request: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        self.node
            .probe(request.into_inner().note)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ProbeResponse {}))
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

    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let req = request.into_inner();
        check_name("worker name", &req.name)?;
        check_name("region", &req.region)?;
        if req.slots == 0 {
            return Err(Status::invalid_argument("a worker needs at least one slot"));
        }
        let spec = WorkerSpec {
            name: req.name,
            incarnation: req.incarnation,
            region: req.region,
            labels: req.labels.into_iter().collect(),
            slots: req.slots,
            at_ms: 0,
        };
        let outcome = self
            .node
            .fleet_command(Command::RegisterWorker(spec))
            .await
            .map_err(status_of)?;
        done(outcome)?;
        let lease = self.node.fleet().lease;
        Ok(Response::new(pb::RegisterWorkerResponse {
            lease_ms: lease.as_millis() as u64,
            heartbeat_ms: (lease / 5).as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let outcome = self
            .node
            .fleet_command(Command::Heartbeat {
                name: req.name,
                at_ms: 0,
            })
            .await
            .map_err(status_of)?;
        done(outcome)?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type AssignmentsStream = AssignmentStream;

    async fn assignments(
        &self,
        request: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let req = request.into_inner();
        let mut fleet = self.node.fleet().subscribe(&req.name);
        let first = assignment_set(&fleet.borrow_and_update(), &req.name, req.incarnation);
        let first = first?;
        let keepalive = (self.node.fleet().lease / 5).max(Duration::from_millis(100));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            let mut keepalive_at = tokio::time::Instant::now() + keepalive;
            loop {
                tokio::select! {
                    r = fleet.changed() => if r.is_err() {
                        let _ = tx.send(Err(Status::unavailable("coordinator is shutting down"))).await;
                        return;
                    },
                    () = tokio::time::sleep_until(keepalive_at) => {}
                    () = tx.closed() => return,
                }
                let next = assignment_set(&fleet.borrow_and_update(), &req.name, req.incarnation);
                let set = match next {
                    Ok(set) => set,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // Sent when the attempts change, and as a keepalive: a silent stream is dead.
                let now = tokio::time::Instant::now();
                if set.assignments != last.assignments || now >= keepalive_at {
                    last = set;
                    keepalive_at = now + keepalive;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::ProgressResponse>, Status> {
        let req = request.into_inner();
        let outcome = self
            .node
            .fleet_command(Command::Progress {
                job: req.job_id,
                token: req.token,
                phase: req.phase,
                at_ms: 0,
            })
            .await
            .map_err(status_of)?;
        done(outcome)?;
        Ok(Response::new(pb::ProgressResponse {}))
    }

    async fn report_verdict(
        &self,
        request: Request<pb::VerdictRequest>,
    ) -> Result<Response<pb::VerdictResponse>, Status> {
        let req = request.into_inner();
        let report: Report = serde_json::from_str(&req.report_json)
            .map_err(|e| Status::invalid_argument(format!("report: {e}")))?;
        let outcome = self
            .node
            .fleet_command(Command::Report {
                job: req.job_id,
                token: req.token,
                report: Box::new(report),
                at_ms: 0,
            })
            .await
            .map_err(status_of)?;
        done(outcome)?;
        Ok(Response::new(pb::VerdictResponse {}))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let name = request.into_inner().name;
        let outcome = self
            .node
            .fleet_command(Command::Drain { name })
            .await
            .map_err(status_of)?;
        match outcome {
            Outcome::Done(Err(reason)) if reason.starts_with("no worker") => {
                Err(Status::not_found(reason))
            }
            other => done(other),
        }?;
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        match self.node.read(Read::Workers).await.map_err(status_of)? {
            ReadAnswer::Workers(workers) => Ok(Response::new(pb::ListWorkersResponse {
                workers: workers.iter().map(worker_to_pb).collect(),
            })),
            _ => Err(Status::internal("wrong answer kind")),
        }
    }

    async fn apply_drill(
        &self,
        request: Request<pb::DrillCall>,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        crate::drill_api::grpc::apply(&self.node, request.into_inner()).await
    }

    async fn list_drills(
        &self,
        _request: Request<pb::DrillCall>,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        crate::drill_api::grpc::views(&self.node, None, 1, false).await
    }

    async fn get_drill(
        &self,
        request: Request<pb::DrillCall>,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        let call = request.into_inner();
        crate::drill_api::grpc::views(&self.node, Some(call.name), 5, call.history).await
    }

    async fn pause_drill(
        &self,
        request: Request<pb::DrillCall>,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        crate::drill_api::grpc::pause(&self.node, request.into_inner()).await
    }

    async fn resume_drill(
        &self,
        request: Request<pb::DrillCall>,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        crate::drill_api::grpc::resume(&self.node, request.into_inner()).await
    }

    async fn run_drill(
        &self,
        request: Request<pb::DrillCall>,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        crate::drill_api::grpc::run(&self.node, request.into_inner()).await
    }

    async fn delete_drill(
        &self,
        request: Request<pb::DrillCall>,
    ) -> Result<Response<pb::DrillAnswer>, Status> {
        crate::drill_api::grpc::delete(&self.node, request.into_inner()).await
    }

    async fn start_exercise(
        &self,
        request: Request<pb::ExerciseCall>,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        crate::exercise_api::grpc::start(&self.node, request.into_inner()).await
    }

    async fn list_exercises(
        &self,
        _request: Request<pb::ExerciseCall>,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        crate::exercise_api::grpc::list(&self.node).await
    }

    async fn get_exercise(
        &self,
        request: Request<pb::ExerciseCall>,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        crate::exercise_api::grpc::get(&self.node, request.into_inner()).await
    }

    async fn approve_gate(
        &self,
        request: Request<pb::ExerciseCall>,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        crate::exercise_api::grpc::approve(&self.node, request.into_inner()).await
    }

    async fn abort_exercise(
        &self,
        request: Request<pb::ExerciseCall>,
    ) -> Result<Response<pb::ExerciseAnswer>, Status> {
        crate::exercise_api::grpc::abort(&self.node, request.into_inner()).await
    }

    async fn create_token(
        &self,
        request: Request<pb::TokenCall>,
    ) -> Result<Response<pb::TokenAnswer>, Status> {
        let req = request.into_inner();
        let role = rehearse_core::tokens::Role::parse(&req.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "role {:?}: one of read, operate, admin, worker",
                req.role
            ))
        })?;
        rehearse_core::tokens::check_name(&req.name).map_err(Status::invalid_argument)?;
        let command = Command::CreateToken(rehearse_core::tokens::Token {
            name: req.name,
            role,
            hash: req.hash.to_ascii_lowercase(),
            created_at_ms: 0,
        });
        token_done(self.node.fleet_command(command).await.map_err(status_of)?)?;
        self.list_tokens(Request::new(pb::TokenCall::default()))
            .await
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::TokenCall>,
    ) -> Result<Response<pb::TokenAnswer>, Status> {
        let tokens = match self.node.read(Read::Tokens).await.map_err(status_of)? {
            ReadAnswer::Tokens(t) => t,
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        };
        Ok(Response::new(pb::TokenAnswer {
            tokens: tokens
                .into_iter()
                .map(|t| pb::TokenInfo {
                    name: t.name,
                    role: t.role.as_str().to_owned(),
                    created_at_ms: t.created_at_ms,
                })
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::TokenCall>,
    ) -> Result<Response<pb::TokenAnswer>, Status> {
        let name = request.into_inner().name;
        token_done(
            self.node
                .fleet_command(Command::RevokeToken { name, at_ms: 0 })
                .await
                .map_err(status_of)?,
        )?;
        self.list_tokens(Request::new(pb::TokenCall::default()))
            .await
    }

    type ExportEvidenceStream = EvidenceStream;

    async fn export_evidence(
        &self,
        request: Request<pb::EvidenceRequest>,
    ) -> Result<Response<Self::ExportEvidenceStream>, Status> {
        let req = request.into_inner();
        let window = rehearse_core::evidence::Window {
            since_ms: req.since_ms,
            until_ms: req.until_ms,
            drill: (!req.drill.is_empty()).then_some(req.drill),
        };
        let files = crate::evidence::export_now(&self.node, self.evidence_key.as_ref(), window)
            .await
            .map_err(status_of)?;
        let chunks: Vec<Result<pb::EvidenceChunk, Status>> = files
            .into_iter()
            .flat_map(|(file, data)| {
                let parts: Vec<Vec<u8>> = if data.is_empty() {
                    vec![Vec::new()]
                } else {
                    data.chunks(EVIDENCE_CHUNK).map(<[u8]>::to_vec).collect()
                };
                parts.into_iter().map(move |data| {
                    Ok(pb::EvidenceChunk {
                        file: file.clone(),
                        data,
                    })
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
