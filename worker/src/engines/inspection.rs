//! What the checks phase found, in the shape every engine reports it.

use rehearse_core::plan::Check;
use rehearse_core::report::{CheckReport, IntegrityReport, TableRows};

/// A check's report from what its query returned (the first value) or why it failed.
pub fn check_report(check: &Check, result: Result<Option<String>, String>) -> CheckReport {
    let (observed, outcome) = match result {
        Ok(observed) => {
            let outcome = check.expect.evaluate(observed.as_deref());
            (observed, outcome)
        }
        Err(e) => (None, Err(format!("query failed: {e}"))),
    };
    CheckReport {
        name: check.name.clone(),
        sql: check.sql.clone(),
        expect: check.expect.to_string(),
        observed,
        ok: outcome.is_ok(),
        reason: outcome.err(),
    }
}

/// What the checks phase found.
#[derive(Debug, Default)]
pub struct Inspection {
    pub checks: Vec<CheckReport>,
    /// The freshness query's result, ms since the epoch, and as the server printed it.
    pub newest: Option<(i64, String)>,
    pub tables: Vec<TableRows>,
    pub integrity: Option<IntegrityReport>,
    /// The plan's `export` query's rows.
    pub exported: Option<rehearse_core::report::Exported>,
    /// The reason the checks phase failed, if it did.
    pub failure: Option<String>,
    pub notes: Vec<String>,
}

impl Inspection {
    pub fn fail(&mut self, reason: String) {
        self.failure.get_or_insert(reason);
    }
}
