//! OpenTelemetry traces of jobs, on the coordinator's side.
//!
//! One trace per job, its ids derived from the job id ([`rehearse_core::trace`]). When a job
//! reaches its final state, the leader of that moment emits, from the replicated timestamps:
//! the job's root span (submit to end), a `queue` span (submit to first grant) and one `attempt`
//! span per attempt (grant to end, with worker, region, token and outcome). A worker's spans of
//! an attempt take that attempt's span as parent (the assignment carries its `traceparent`), so
//! the trace reads as one tree across processes. Nothing is emitted unless [`install`] was
//! called (`--otlp-endpoint`). The raft thread only copies what the spans need into a bounded
//! queue; a thread of its own makes and exports them (a full queue drops traces, never waits). A job that ends during a leader change may be emitted twice, with
//! the same ids (backends keep one), or not at all; traces are diagnostics, not records.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _,
    TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer};
use rehearse_core::jobs::{Attempt, Job, JobState};
use rehearse_core::trace::{attempt_span, job_trace};

/// Jobs that ended, on their way to the thread that emits their spans: the raft thread only
/// copies what the spans need and never waits (a full queue drops the trace).
static ENDED: OnceLock<SyncSender<Ended>> = OnceLock::new();

/// How many ended jobs may wait for their spans.
const QUEUE: usize = 65_536;

/// What a job's spans are made of (copied from the job, without its plan and report).
struct Ended {
    id: String,
    state: JobState,
    verdict: Option<&'static str>,
    /// Artifact URL, engine and bytes, from the report.
    artifact: Option<(String, String, u64)>,
    drill: Option<String>,
    submitted_at_ms: u64,
    end_ms: u64,
    attempts: Vec<Attempt>,
}

thread_local! {
    /// The ids the next span started on this thread takes (see [`JobIds`]).
    static NEXT: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// Turns on the job traces: the tracer whose provider exports them and uses [`JobIds`]. The
/// spans are made on a thread of their own.
pub fn install(tracer: SdkTracer) {
    let (tx, rx) = sync_channel::<Ended>(QUEUE);
    if ENDED.set(tx).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("rehearse-traces".into())
        .spawn(move || {
            for ended in rx {
                emit_job(&tracer, &ended);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread for job traces; none will be exported");
    }
}

/// Whether job traces are emitted.
pub fn enabled() -> bool {
    ENDED.get().is_some()
}

/// Random ids, except for the spans this module starts with ids derived from the job: the
/// SDK's span builder takes no ids, so they are handed over on the thread that starts the span.
#[derive(Debug, Default)]
pub struct JobIds(RandomIdGenerator);

impl IdGenerator for JobIds {
    fn new_trace_id(&self) -> TraceId {
        let (trace, span) = NEXT.get();
        match trace {
            Some(id) => {
                NEXT.set((None, span));
                id
            }
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        let (trace, span) = NEXT.get();
        match span {
            Some(id) => {
                NEXT.set((trace, None));
                id
            }
            None => self.0.new_span_id(),
        }
    }
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Starts and ends one span with the given ids (the trace id only for a root).
fn emit(
    tracer: &SdkTracer,
    builder: SpanBuilder,
    parent: &Context,
    ids: (Option<TraceId>, SpanId),
    end_ms: u64,
    error: bool,
) {
    NEXT.set((ids.0, Some(ids.1)));
    let mut span = tracer.build_with_context(builder, parent);
    NEXT.set((None, None));
    if error {
        span.set_status(Status::error(""));
    }
    span.end_with_timestamp(at(end_ms));
}

/// Queues the coordinator's spans of `job`, which has just reached its final state.
pub fn job_ended(job: &Job, drill: Option<&str>) {
    let Some(tx) = ENDED.get() else { return };
    let _ = tx.try_send(Ended {
        id: job.id.clone(),
        state: job.state,
        verdict: job.report.as_ref().map(|r| r.verdict.as_str()),
        artifact: job
            .report
            .as_ref()
            .map(|r| (r.artifact.url.clone(), r.engine.clone(), r.artifact.bytes)),
        drill: drill.map(str::to_owned),
        submitted_at_ms: job.submitted_at_ms,
        end_ms: job.updated_at_ms.max(job.submitted_at_ms),
        attempts: job.attempts.clone(),
    });
}

fn emit_job(tracer: &SdkTracer, job: &Ended) {
    let ids = job_trace(&job.id);
    let trace_id = TraceId::from_bytes(ids.trace_id);
    let root_id = SpanId::from_bytes(ids.root);
    let end_ms = job.end_ms;
    let mut attributes = vec![
        KeyValue::new("rehearse.job.id", job.id.clone()),
        KeyValue::new("rehearse.job.state", job.state.as_str()),
        KeyValue::new("rehearse.attempts", job.attempts.len() as i64),
    ];
    if let Some(verdict) = job.verdict {
        attributes.push(KeyValue::new("rehearse.verdict", verdict));
    }
    if let Some((url, engine, bytes)) = &job.artifact {
        attributes.push(KeyValue::new("rehearse.artifact", url.clone()));
        attributes.push(KeyValue::new("rehearse.engine", engine.clone()));
        attributes.push(KeyValue::new("rehearse.bytes", *bytes as i64));
    }
    if let Some(drill) = &job.drill {
        attributes.push(KeyValue::new("rehearse.drill", drill.clone()));
    }
    let failed = matches!(job.state, JobState::Failed | JobState::Error);
    emit(
        tracer,
        SpanBuilder::from_name("job")
            .with_kind(SpanKind::Internal)
            .with_start_time(at(job.submitted_at_ms))
            .with_attributes(attributes),
        &Context::new(),
        (Some(trace_id), root_id),
        end_ms,
        failed,
    );
    let root = Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        root_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    if let Some(first) = job.attempts.first() {
        emit(
            tracer,
            SpanBuilder::from_name("queue").with_start_time(at(job.submitted_at_ms)),
            &root,
            (
                None, // Token 0 is never a grant's (a log index is at least 1).
                SpanId::from_bytes(attempt_span(&job.id, 0)),
            ),
            first.started_at_ms,
            false,
        );
    }
    for a in &job.attempts {
        let outcome = a.outcome.map(|o| o.as_str()).unwrap_or("");
        let mut attributes = vec![
            KeyValue::new("rehearse.worker", a.worker.clone()),
            KeyValue::new("rehearse.token", a.token as i64),
            KeyValue::new("rehearse.outcome", outcome),
        ];
        if let Some(region) = &a.region {
            attributes.push(KeyValue::new("rehearse.region", region.clone()));
        }
        if let Some(reason) = &a.reason {
            attributes.push(KeyValue::new("rehearse.reason", reason.clone()));
        }
        emit(
            tracer,
            SpanBuilder::from_name("attempt")
                .with_kind(SpanKind::Producer)
                .with_start_time(at(a.started_at_ms))
                .with_attributes(attributes),
            &root,
            (None, SpanId::from_bytes(attempt_span(&job.id, a.token))),
            a.ended_at_ms.unwrap_or(end_ms),
            !matches!(outcome, "passed" | "" | "deferred"),
        );
    }
}
