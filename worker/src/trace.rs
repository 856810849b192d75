//! An attempt's spans joined to its job's trace.
//!
//! The assignment carries the W3C `traceparent` of the coordinator's span of this attempt
//! ([`rehearse_core::trace`]); the worker's `attempt` span takes it as parent, and the `verify`
//! and per-phase spans hang under that. Exported only when the process installed an
//! OpenTelemetry layer (`--otlp-endpoint`); otherwise these are plain `tracing` spans.

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes `traceparent` (when it parses) the parent of `span`; an empty or malformed one leaves
/// `span` the root of a trace of its own.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let Some((trace, parent)) = rehearse_core::trace::parse_traceparent(traceparent) else {
        return;
    };
    let remote = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(parent),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    // Fails only when no OpenTelemetry layer is installed: then there is nothing to join.
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}
