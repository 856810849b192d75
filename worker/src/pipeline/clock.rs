//! The RTO clock: phases timed on one monotonic clock, each announced as it begins, each a
//! `phase` span (with artifact, engine and the bytes fetched) under the verification's span.

use std::time::Duration;

use rehearse_core::report::{Phase, PhaseReport, duration_ms};
use tokio::time::Instant;

/// Times phases; the RTO clock starts with the first phase.
#[derive(Debug, Default)]
pub(super) struct Clock {
    pub(super) start: Option<Instant>,
    pub(super) current: Option<(Phase, Instant)>,
    pub(super) phases: Vec<PhaseReport>,
    pub(super) announce: Option<tokio::sync::watch::Sender<Option<Phase>>>,
    /// The verification's span: each phase's span is a child of it.
    pub(super) span: Option<tracing::Span>,
    pub(super) artifact: String,
    pub(super) engine: &'static str,
    /// The artifact's size once fetched, recorded on the phases' spans.
    pub(super) bytes: Option<u64>,
    pub(super) current_span: Option<tracing::Span>,
    /// The bytes the running phase moved (reset as each begins), for a progress bar.
    pub(super) meter: std::sync::Arc<crate::progress::Meter>,
}

impl Clock {
    pub(super) fn begin(&mut self, phase: Phase) {
        // Reset before the phase is announced: whoever reads both never sees the last count.
        self.meter.reset();
        if let Some(tx) = &self.announce {
            tx.send_replace(Some(phase));
        }
        let now = Instant::now();
        self.start.get_or_insert(now);
        self.current = Some((phase, now));
        self.current_span = self.span.as_ref().map(|parent| {
            tracing::info_span!(
                parent: parent,
                "phase",
                otel.name = phase.as_str(),
                rehearse.phase = phase.as_str(),
                rehearse.artifact = %self.artifact,
                rehearse.engine = self.engine,
                rehearse.bytes = tracing::field::Empty,
                rehearse.ok = tracing::field::Empty,
            )
        });
    }

    pub(super) fn end(&mut self, ok: bool) {
        if let Some(span) = self.current_span.take() {
            if let Some(bytes) = self.bytes {
                // As a signed integer: OpenTelemetry has no unsigned one (a u64 would go as text).
                span.record("rehearse.bytes", bytes as i64);
            }
            span.record("rehearse.ok", ok);
        }
        if let Some((phase, began)) = self.current.take() {
            self.phases.push(PhaseReport {
                name: phase,
                ms: ms(began.elapsed()),
                ok,
            });
        }
    }

    /// Ends the running phase as failed (timeout, interrupt) and says which it was.
    pub(super) fn interrupt(&mut self) -> Phase {
        let phase = self.current.map_or(Phase::Fetch, |(p, _)| p);
        self.end(false);
        phase
    }

    pub(super) fn since_start(&self) -> Option<u64> {
        self.start.map(|s| ms(s.elapsed()))
    }
}

fn ms(d: Duration) -> u64 {
    duration_ms(d)
}
