//! Reads: ReadIndex reads answered once applied, and the history pages a peer copies.

use std::time::Duration;

use rehearse_core::jobs::Job;
use tracing::warn;

use super::{ApiError, Node, Read, ReadAnswer};
use crate::state::StateMachine;
use crate::storage::Batch;

impl Node {
    pub(super) fn history_page(
        &self,
        table: crate::history::Table,
        after: Option<&str>,
        limit: usize,
        min_applied: u64,
    ) -> Result<crate::history::Page, ApiError> {
        let store = self.raw.store();
        if store.sm.history_copy.is_some() {
            return Err(ApiError::Unavailable(format!(
                "node {} is copying its own history",
                self.opts.id
            )));
        }
        let applied = store.sm.applied();
        if applied < min_applied {
            return Err(ApiError::Unavailable(format!(
                "node {} has applied up to {applied}, the asker up to {min_applied}",
                self.opts.id
            )));
        }
        let (records, done) = store
            .sm
            .history_page(table, after, limit)
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(crate::history::Page {
            applied,
            records,
            done,
        })
    }

    /// Writes a copied page — only while this node has not applied past the index the page was
    /// read at (see `crate::history` for why that makes the copy converge).
    pub(super) fn copy_history(
        &mut self,
        table: crate::history::Table,
        page: crate::history::Page,
    ) -> Result<(), ApiError> {
        let applied = self.raw.store().sm.jobs.applied();
        if applied > page.applied {
            return Err(ApiError::Unavailable(format!(
                "the page was read at {}, this node has applied up to {applied}",
                page.applied
            )));
        }
        let store = self.raw.mut_store();
        let mut batch = Batch::default();
        store
            .sm
            .copy_history_page(&mut batch.sm, table, page.records, page.done);
        store.commit(&mut batch, true).map_err(|e| {
            warn!(error = %e, "history page not written");
            ApiError::Unavailable(e.to_string())
        })
    }

    pub(super) fn answer_reads(&mut self) {
        let applied = self.raw.store().sm.jobs.applied();
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
            .map(|(k, _)| *k)
            .collect();
        for ctx in ready {
            let Some(pending) = self.reads.remove(&ctx) else {
                continue;
            };
            let jobs = &self.raw.store().sm.jobs;
            let views = jobs.worker_views();
            let explained = |job: &Job| {
                let mut job = job.clone();
                if job.reason.is_none() {
                    job.reason = jobs.waiting_reason(&views, &job);
                }
                job
            };
            let answer = match pending.read {
                Read::Job(id) => match jobs.get(&id) {
                    Some(j) => Ok(ReadAnswer::Job(Box::new(explained(j)))),
                    None => Err(ApiError::NotFound(where_it_went(&self.raw.store().sm, &id))),
                },
                Read::Jobs(state) => Ok(ReadAnswer::Jobs(
                    jobs.list(state).into_iter().map(explained).collect(),
                )),
                Read::Workers => Ok(ReadAnswer::Workers(jobs.workers().cloned().collect())),
                Read::Drills(name) => drills_answer(&self.raw.store().sm, name),
                Read::Outbox => Ok(ReadAnswer::Outbox(jobs.outbox().cloned().collect())),
                Read::Tokens => Ok(ReadAnswer::Tokens(
                    jobs.tokens().values().cloned().collect(),
                )),
                Read::Evidence => match &self.raw.store().sm.history_copy {
                    Some(_) => Err(ApiError::Unavailable(format!(
                        "node {} is copying its history from a peer; ask another node",
                        self.opts.id
                    ))),
                    None => Ok(ReadAnswer::Evidence {
                        db: self.raw.store().sm.db(),
                        head: jobs.evidence_head().cloned(),
                        drills: jobs
                            .drills()
                            .map(|d| rehearse_core::evidence::DrillInfo::of(&d.spec))
                            .collect(),
                    }),
                },
                Read::Exercises(None) => Ok(ReadAnswer::Exercises(
                    jobs.exercises().into_iter().cloned().collect(),
                )),
                Read::Exercises(Some(id)) => match jobs.exercise(&id) {
                    Some(e) => Ok(ReadAnswer::Exercises(vec![e.clone()])),
                    None => Err(ApiError::NotFound(format!("no exercise {id:?}"))),
                },
            };
            let _ = pending.reply.send(answer);
        }
    }
}

/// Drills with their whole history: ended runs from the history table, running and recent ones
/// from the state (the same run in both is taken once, the state's copy winning).
fn drills_answer(store: &StateMachine, name: Option<String>) -> Result<ReadAnswer, ApiError> {
    let jobs = &store.jobs;
    let history_drills = store
        .history_drills()
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let names: std::collections::BTreeSet<String> = jobs
        .drills()
        .map(|d| d.spec.name.clone())
        .chain(jobs.drills_with_history().map(str::to_owned))
        .chain(history_drills)
        .filter(|n| name.as_deref().is_none_or(|want| want == n))
        .collect();
    if let Some(want) = &name
        && names.is_empty()
    {
        return Err(ApiError::NotFound(format!("no drill {want:?}")));
    }
    let mut out = Vec::with_capacity(names.len());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let histories = store
        .history_runs_many(&refs)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    for (n, history) in names.into_iter().zip(histories) {
        let mut runs: std::collections::BTreeMap<String, rehearse_core::drill::Run> = history
            .into_iter()
            .map(|r| {
                (
                    rehearse_core::history::run_key(&r.drill, r.tick_ms, r.manual),
                    r,
                )
            })
            .collect();
        for r in jobs.runs(&n) {
            runs.insert(
                rehearse_core::history::run_key(&r.drill, r.tick_ms, r.manual),
                r.clone(),
            );
        }
        let drill = jobs.drill(&n).cloned();
        out.push((n, drill, runs.into_values().collect()));
    }
    Ok(ReadAnswer::Drills(out))
}

/// `job get` of a job that is not in the state: what became of it, from its summary.
fn where_it_went(store: &StateMachine, id: &str) -> String {
    match store.forgotten_job(id) {
        Ok(Some(s)) => {
            let finished = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(s.finished_at_ms),
            );
            let drill = s
                .drill
                .map(|(d, _)| {
                    format!("; its drill's history keeps the results: rehearse drill history {d:?}")
                })
                .unwrap_or_default();
            format!(
                "job {id} ended {} at {finished} and has left the coordinator's memory (--job-retention); its summary: verdict {}, artifact {}{}{drill}",
                s.state,
                s.verdict.map_or("none", |v| v.as_str()),
                s.artifact_url,
                s.reason.map(|r| format!(", {r}")).unwrap_or_default()
            )
        }
        _ => format!("no job {id}"),
    }
}
