//! The leader's duties, run after each turn of the loop while this node leads: raise the
//! cluster's command version, turn due drill ticks and gate timeouts into entries, forget
//! finished jobs past their retention, place pending jobs, expire silent workers. Each proposes
//! at most one entry of its kind at a time.

use std::time::Instant;

use rehearse_core::codec;
use rehearse_core::jobs::Command;
use rehearse_core::placement;
use tracing::{debug, info};

use super::{DRILL_CHECK, EXPIRY_CHECK, Node, OVERDUE_CHECK, RETENTION_CHECK, Waiter, now_ms};

impl Node {
    /// The leader turns due drill ticks (see [`crate::ticker`]) and exercise gates past their
    /// timeout into log entries: every 100 ms, one entry at a time.
    pub(super) fn drill_duties(&mut self) {
        if self.ticks_in_flight.is_some()
            || self.last_drill_check.elapsed() < DRILL_CHECK
            || self.version_gate(2).is_err()
        {
            return;
        }
        self.last_drill_check = Instant::now();
        let now = now_ms();
        let mut due = self.ticker.due(&self.raw.store().sm.jobs, now);
        // Exercise gates past their timeout fail (see `rehearse_core::exercises`).
        if self.version_gate(4).is_ok() && self.raw.store().sm.jobs.overdue_gates(now) {
            due.push(Command::ExpireGates { now_ms: now });
        }
        // Drills with no passed run within `alert_after`: one notification per stretch.
        if self.version_gate(5).is_ok() && self.last_overdue_check.elapsed() >= OVERDUE_CHECK {
            self.last_overdue_check = Instant::now();
            due.extend(
                self.raw
                    .store()
                    .sm
                    .jobs
                    .overdue_to_notify(now)
                    .into_iter()
                    .map(|(drill, since_ms)| Command::DrillOverdue {
                        drill,
                        since_ms,
                        at_ms: now,
                    }),
            );
        }
        if due.is_empty() {
            return;
        }
        let ctx = self.ctx();
        match self.propose(ctx, &Command::Batch(due)) {
            Ok(()) => {
                self.ticks_in_flight = Some(ctx);
                self.waiters.insert(ctx, Waiter::Internal);
            }
            Err(e) => debug!(error = %e, "drill ticks not proposed"),
        }
    }

    /// The leader sends finished jobs past `--job-retention` out of the state (every
    /// [`RETENTION_CHECK`]); their summaries stay in the history.
    pub(super) fn retention_duty(&mut self) {
        if self.forget_in_flight.is_some()
            || self.last_retention_check.elapsed() < RETENTION_CHECK
            || self.version_gate(2).is_err()
        {
            return;
        }
        self.last_retention_check = Instant::now();
        let now = now_ms();
        let before_ms = now.saturating_sub(self.opts.job_retention.as_millis() as u64);
        if !self.raw.store().sm.jobs.forgettable(before_ms) {
            return;
        }
        let ctx = self.ctx();
        match self.propose(
            ctx,
            &Command::ForgetJobs {
                before_ms,
                at_ms: now,
            },
        ) {
            Ok(()) => {
                self.forget_in_flight = Some(ctx);
                self.waiters.insert(ctx, Waiter::Internal);
            }
            Err(e) => debug!(error = %e, "retention not proposed"),
        }
    }

    /// The leader raises the cluster's command version to what every member reads, once each
    /// has said so. A member not heard from counts as reading only the legacy version.
    pub(super) fn raise_version(&mut self) {
        if self.version_in_flight.is_some() {
            return;
        }
        let conf = self.raw.store().conf_state();
        let readable = conf
            .voters
            .iter()
            .chain(conf.learners.iter())
            .map(|id| {
                if *id == self.opts.id {
                    self.opts.command_version
                } else {
                    self.peer_versions.get(id).copied().unwrap_or(codec::LEGACY)
                }
            })
            .min()
            .unwrap_or(codec::LEGACY);
        if readable <= self.raw.store().sm.jobs.cluster_version() {
            return;
        }
        let ctx = self.ctx();
        match self.propose(ctx, &Command::SetVersion { version: readable }) {
            Ok(()) => {
                info!(
                    version = readable,
                    "every member reads command version {readable}: raising the cluster's"
                );
                self.version_in_flight = Some(ctx);
                self.waiters.insert(ctx, Waiter::Internal);
            }
            Err(e) => debug!(error = %e, "version raise not proposed"),
        }
    }

    /// The leader places pending jobs on workers with free slots and proposes the result: one
    /// `Assign` entry at a time, each re-checked when applied.
    pub(super) fn schedule(&mut self) {
        // A job waiting for its artifact's restore changes nothing when its next try comes due:
        // the leader looks for such jobs as often as it looks for lost workers.
        if !self.placement_dirty && self.last_deferral_check.elapsed() >= EXPIRY_CHECK {
            self.last_deferral_check = Instant::now();
            self.placement_dirty = self.raw.store().sm.jobs.deferral_due(now_ms());
        }
        if !self.placement_dirty || self.assign_in_flight.is_some() {
            return;
        }
        self.placement_dirty = false;
        let jobs = &self.raw.store().sm.jobs;
        let workers = jobs.worker_views();
        if !placement::has_free_slot(&workers) {
            return;
        }
        let placed = placement::place_until_full(&workers, jobs.pending_input(now_ms()));
        if placed.assigned.is_empty() {
            return;
        }
        let ctx = self.ctx();
        let command = Command::Assign {
            assignments: placed.assigned,
            at_ms: now_ms(),
        };
        match self.propose(ctx, &command) {
            Ok(()) => {
                self.assign_in_flight = Some(ctx);
                self.waiters.insert(ctx, Waiter::Internal);
            }
            Err(e) => debug!(error = %e, "assignment not proposed"),
        }
    }

    /// The leader marks workers silent past their lease lost (their attempts go back to pending)
    /// and fails jobs silent past their timeout. A new leader first waits one lease: heartbeats
    /// sent during the election could not land, and that must not cost anyone their jobs.
    pub(super) fn expire_if_due(&mut self) {
        if self.expire_in_flight.is_some()
            || self.last_expiry_check.elapsed() < EXPIRY_CHECK
            || self
                .leader_since
                .is_none_or(|t| t.elapsed() < self.opts.lease)
        {
            return;
        }
        self.last_expiry_check = Instant::now();
        let now = now_ms();
        let lease_ms = self.opts.lease.as_millis() as u64;
        if !self.raw.store().sm.jobs.expiry_due(now, lease_ms) {
            return;
        }
        let ctx = self.ctx();
        match self.propose(
            ctx,
            &Command::ExpireWorkers {
                now_ms: now,
                lease_ms,
            },
        ) {
            Ok(()) => {
                self.expire_in_flight = Some(ctx);
                self.waiters.insert(ctx, Waiter::Internal);
            }
            Err(e) => debug!(error = %e, "expiry not proposed"),
        }
    }
}
