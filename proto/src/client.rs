//! A client of the coordinator cluster: any node can be asked; a "not leader" answer names the
//! leader and the client follows it; an unreachable node is skipped. The user never notices.

use std::time::Duration;

use crate::v1 as pb;
use crate::v1::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::LEADER_METADATA;
use crate::tls::{Tls, TlsFiles, url};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no coordinator address given (use --coordinators or REHEARSE_COORDINATORS)")]
    NoAddress,
    #[error("no coordinator answered within {0:?} (last error: {1})")]
    Unreachable(Duration, String),
    #[error("{0}")]
    Refused(String),
    #[error("not found: {0}")]
    NotFound(String),
}

/// The token calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRpc {
    Create,
    List,
    Revoke,
}

/// Puts the token, when there is one, on every call (`authorization: Bearer …`).
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connection to one coordinator, with the token interceptor.
pub type Conn = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// Cloning shares the open connection (HTTP/2 multiplexes the calls on it).
#[derive(Clone)]
pub struct Client {
    addrs: Vec<String>,
    next: usize,
    leader: Option<String>,
    /// The open connection and its address, reused while it works.
    conn: Option<(String, Conn)>,
    /// How long one call keeps trying (elections, restarts) before giving up.
    pub patience: Duration,
    /// mTLS material; `None`: plaintext.
    tls: Option<Tls>,
    /// The API token (`--token`, `REHEARSE_TOKEN`), sent on every call.
    bearer: Bearer,
}

impl Client {
    pub fn new(addrs: Vec<String>) -> Result<Client, ClientError> {
        let addrs: Vec<String> = addrs
            .into_iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        Ok(Client {
            addrs,
            next: 0,
            leader: None,
            conn: None,
            patience: Duration::from_secs(15),
            tls: None,
            bearer: Bearer::default(),
        })
    }

    /// Talks mTLS to the cluster with these files.
    pub fn with_tls(mut self, files: &TlsFiles) -> Result<Client, ClientError> {
        self.tls = Some(Tls::load(files).map_err(ClientError::Refused)?);
        Ok(self)
    }

    /// Sends this token on every call (a coordinator with `--auth required` needs one).
    pub fn with_token(mut self, secret: &str) -> Result<Client, ClientError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Ok(self);
        }
        let value = format!("Bearer {secret}").parse().map_err(|_| {
            ClientError::Refused("the token holds characters a header cannot carry".into())
        })?;
        self.bearer = Bearer(Some(value));
        Ok(self)
    }

    async fn connect(addr: &str, tls: Option<&Tls>, bearer: &Bearer) -> Result<Conn, String> {
        let mut endpoint = Endpoint::from_shared(url(addr, tls)).map_err(|e| e.to_string())?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls.client())
                .map_err(|e| format!("TLS: {e}"))?;
        }
        // HTTP/2 pings find a connection that went silent (a partitioned or paused node: no RST
        // ever comes) in about 3s, so a call on it fails over instead of waiting out its timeout.
        let channel = endpoint
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(CoordinatorClient::with_interceptor(channel, bearer.clone())
            .max_decoding_message_size(256 * 1024 * 1024))
    }

    /// Calls until a node that can answer does, following leader hints.
    async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut last = String::from("none");
        while tokio::time::Instant::now() < deadline {
            let addr = match self.leader.clone() {
                Some(a) => a,
                None => {
                    let a = self.addrs[self.next % self.addrs.len()].clone();
                    self.next += 1;
                    a
                }
            };
            let cached = self
                .conn
                .as_ref()
                .filter(|(a, _)| *a == addr)
                .map(|(_, c)| c.clone());
            let connected = match cached {
                Some(c) => Ok(c),
                None => Self::connect(&addr, self.tls.as_ref(), &self.bearer).await,
            };
            let client = match connected {
                Ok(c) => {
                    self.conn = Some((addr.clone(), c.clone()));
                    c
                }
                Err(e) => {
                    last = e;
                    self.leader = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match f(client).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::FailedPrecondition => {
                    let hint = status
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split_once('='))
                        .map(|(_, a)| a.to_owned());
                    last = format!("{addr}: not leader");
                    // No leader known yet (an election is on): wait a little and ask around.
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    self.leader = hint;
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                    ) =>
                {
                    last = format!("{addr}: {}", status.message());
                    self.leader = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) if status.code() == Code::NotFound => {
                    return Err(ClientError::NotFound(status.message().to_owned()));
                }
                // A coordinator of an older release, during a rolling upgrade.
                Err(status) if status.code() == Code::Unimplemented => {
                    return Err(ClientError::Refused(format!(
                        "{addr} does not know this call: it runs an older release (upgrade every coordinator first)"
                    )));
                }
                Err(status) => return Err(ClientError::Refused(status.message().to_owned())),
            }
        }
        Err(ClientError::Unreachable(self.patience, last))
    }

    /// Submits a plan; the id is chosen here so retries are the same job.
    pub async fn submit(&mut self, plan_toml: &str) -> Result<String, ClientError> {
        self.submit_with_id(plan_toml, &crate::new_job_id()).await
    }

    /// Submits a plan under an id the caller chose (a retry with the same id is the same job).
    pub async fn submit_with_id(
        &mut self,
        plan_toml: &str,
        id: &str,
    ) -> Result<String, ClientError> {
        let id = id.to_owned();
        let plan_toml = plan_toml.to_owned();
        let r = self
            .call(|mut c| {
                let req = pb::SubmitRequest {
                    plan_toml: plan_toml.clone(),
                    id: id.clone(),
                };
                async move { c.submit(req).await }
            })
            .await?;
        Ok(r.id)
    }

    pub async fn get_job(&mut self, id: &str) -> Result<pb::Job, ClientError> {
        let id = id.to_owned();
        self.call(|mut c| {
            let req = pb::GetJobRequest { id: id.clone() };
            async move { c.get_job(req).await }
        })
        .await
    }

    pub async fn list_jobs(&mut self, state: Option<&str>) -> Result<Vec<pb::Job>, ClientError> {
        let state = state.unwrap_or_default().to_owned();
        let r = self
            .call(|mut c| {
                let req = pb::ListJobsRequest {
                    state: state.clone(),
                };
                async move { c.list_jobs(req).await }
            })
            .await?;
        Ok(r.jobs)
    }

    pub async fn cancel(&mut self, id: &str) -> Result<(), ClientError> {
        let id = id.to_owned();
        self.call(|mut c| {
            let req = pb::CancelJobRequest { id: id.clone() };
            async move { c.cancel_job(req).await }
        })
        .await
        .map(drop)
    }

    /// The status as the leader sees it (any node's view while there is no leader).
    /// The first node that answers, about itself (not forwarded to the leader).
    pub async fn local_status(&mut self) -> Result<pb::ClusterStatusResponse, ClientError> {
        self.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
            .await
    }

    pub async fn status(&mut self) -> Result<pb::ClusterStatusResponse, ClientError> {
        let first = self
            .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
            .await?;
        if first.leader == 0 || first.leader == first.id {
            return Ok(first);
        }
        if let Some(leader) = first
            .members
            .iter()
            .find(|m| m.id == first.leader)
            .map(|m| m.addr.clone())
            && let Ok(mut c) = Self::connect(&leader, self.tls.as_ref(), &self.bearer).await
            && let Ok(r) = c.cluster_status(pb::ClusterStatusRequest {}).await
        {
            return Ok(r.into_inner());
        }
        Ok(first)
    }

    /// Tells the node this client talks to (use a client of that one address) to restart into
    /// a forced membership (`cluster failover --force`); the index it had applied.
    pub async fn force_new_cluster(
        &mut self,
        voters: &[u64],
        learners: &[u64],
    ) -> Result<u64, ClientError> {
        let req = pb::ForceNewClusterRequest {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.force_new_cluster(req).await }
        })
        .await
        .map(|r| r.applied)
    }

    pub async fn membership(
        &mut self,
        kind: pb::membership_request::Kind,
        id: u64,
        addr: &str,
    ) -> Result<(), ClientError> {
        let addr = addr.to_owned();
        self.call(|mut c| {
            let req = pb::MembershipRequest {
                kind: kind as i32,
                id,
                addr: addr.clone(),
            };
            async move { c.change_membership(req).await }
        })
        .await
        .map(drop)
    }

    /// A drill call (`which`: apply, list, get, pause, resume, run, delete).
    pub async fn drill(
        &mut self,
        which: DrillRpc,
        call: pb::DrillCall,
    ) -> Result<pb::DrillAnswer, ClientError> {
        self.call(|mut c| {
            let call = call.clone();
            async move {
                match which {
                    DrillRpc::Apply => c.apply_drill(call).await,
                    DrillRpc::List => c.list_drills(call).await,
                    DrillRpc::Get => c.get_drill(call).await,
                    DrillRpc::Pause => c.pause_drill(call).await,
                    DrillRpc::Resume => c.resume_drill(call).await,
                    DrillRpc::Run => c.run_drill(call).await,
                    DrillRpc::Delete => c.delete_drill(call).await,
                }
            }
        })
        .await
    }

    pub async fn exercise(
        &mut self,
        which: ExerciseRpc,
        call: pb::ExerciseCall,
    ) -> Result<pb::ExerciseAnswer, ClientError> {
        self.call(|mut c| {
            let call = call.clone();
            async move {
                match which {
                    ExerciseRpc::Start => c.start_exercise(call).await,
                    ExerciseRpc::List => c.list_exercises(call).await,
                    ExerciseRpc::Get => c.get_exercise(call).await,
                    ExerciseRpc::Approve => c.approve_gate(call).await,
                    ExerciseRpc::Abort => c.abort_exercise(call).await,
                }
            }
        })
        .await
    }

    /// Upgrade tests: commits a no-op of the test-only newest command kind.
    pub async fn probe(&mut self, note: &str) -> Result<(), ClientError> {
        let note = note.to_owned();
        self.call(|mut c| {
            let req = pb::ProbeRequest { note: note.clone() };
            async move { c.write_probe(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn register_worker(
        &mut self,
        req: pb::RegisterWorkerRequest,
    ) -> Result<pb::RegisterWorkerResponse, ClientError> {
        self.call(|mut c| {
            let req = req.clone();
            async move { c.register_worker(req).await }
        })
        .await
    }

    pub async fn heartbeat(&mut self, name: &str, incarnation: u64) -> Result<(), ClientError> {
        let name = name.to_owned();
        self.call(|mut c| {
            let req = pb::HeartbeatRequest {
                name: name.clone(),
                incarnation,
            };
            async move { c.heartbeat(req).await }
        })
        .await
        .map(drop)
    }

    /// An evidence export's files (name, bytes), signed by the leader.
    pub async fn export_evidence(
        &mut self,
        since_ms: u64,
        until_ms: u64,
        drill: Option<&str>,
    ) -> Result<Vec<(String, Vec<u8>)>, ClientError> {
        let drill = drill.unwrap_or_default().to_owned();
        let mut stream = self
            .call(|mut c| {
                let req = pb::EvidenceRequest {
                    since_ms,
                    until_ms,
                    drill: drill.clone(),
                };
                async move { c.export_evidence(req).await }
            })
            .await?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => match files.last_mut() {
                    Some((name, data)) if *name == chunk.file => {
                        data.extend_from_slice(&chunk.data)
                    }
                    _ => files.push((chunk.file, chunk.data)),
                },
                Ok(None) => return Ok(files),
                Err(status) => {
                    return Err(ClientError::Refused(format!(
                        "the export stopped: {}",
                        status.message()
                    )));
                }
            }
        }
    }

    /// Creates (`create`), lists or revokes tokens; answers the tokens as they are then.
    pub async fn tokens(
        &mut self,
        rpc: TokenRpc,
        call: pb::TokenCall,
    ) -> Result<Vec<pb::TokenInfo>, ClientError> {
        let answer = self
            .call(|mut c| {
                let req = call.clone();
                async move {
                    match rpc {
                        TokenRpc::Create => c.create_token(req).await,
                        TokenRpc::List => c.list_tokens(req).await,
                        TokenRpc::Revoke => c.revoke_token(req).await,
                    }
                }
            })
            .await?;
        Ok(answer.tokens)
    }

    /// Opens the worker's assignment stream on the leader.
    pub async fn assignments(
        &mut self,
        name: &str,
        incarnation: u64,
    ) -> Result<tonic::Streaming<pb::AssignmentSet>, ClientError> {
        let name = name.to_owned();
        self.call(|mut c| {
            let req = pb::AssignmentsRequest {
                name: name.clone(),
                incarnation,
            };
            async move { c.assignments(req).await }
        })
        .await
    }

    pub async fn progress(
        &mut self,
        job_id: &str,
        token: u64,
        phase: &str,
    ) -> Result<(), ClientError> {
        let req = pb::ProgressRequest {
            job_id: job_id.to_owned(),
            token,
            phase: phase.to_owned(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.report_progress(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn verdict(
        &mut self,
        job_id: &str,
        token: u64,
        report_json: &str,
    ) -> Result<(), ClientError> {
        let req = pb::VerdictRequest {
            job_id: job_id.to_owned(),
            token,
            report_json: report_json.to_owned(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.report_verdict(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn drain(&mut self, name: &str) -> Result<(), ClientError> {
        let name = name.to_owned();
        self.call(|mut c| {
            let req = pb::DrainRequest { name: name.clone() };
            async move { c.drain_worker(req).await }
        })
        .await
        .map(drop)
    }

    pub async fn list_workers(&mut self) -> Result<Vec<pb::WorkerInfo>, ClientError> {
        let r = self
            .call(|mut c| async move { c.list_workers(pb::ListWorkersRequest {}).await })
            .await?;
        Ok(r.workers)
    }
}

/// The exercise RPCs (one client method serves them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExerciseRpc {
    Start,
    List,
    Get,
    Approve,
    Abort,
}

/// The drill RPCs (one client method serves them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillRpc {
    Apply,
    List,
    Get,
    Pause,
    Resume,
    Run,
    Delete,
}
