//! The RTO clock: phases timed on one monotonic clock, each announced as it begins.

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
}

impl Clock {
    pub(super) fn begin(&mut self, phase: Phase) {
        if let Some(tx) = &self.announce {
            tx.send_replace(Some(phase));
        }
        let now = Instant::now();
        self.start.get_or_insert(now);
        self.current = Some((phase, now));
    }

    pub(super) fn end(&mut self, ok: bool) {
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
