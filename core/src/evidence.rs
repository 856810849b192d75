//! Evidence for auditors: every final verdict is appended to a hash chain (each record holds the
//! hash of the one before it), so a record edited or removed afterwards is detectable; an export
//! is a window of that chain, signed by the coordinator (`rehearse evidence export|verify`).
//!
//! The chain is part of the replicated state: the state holds its head ([`Head`]); the records
//! go to a history table as they are made (see [`crate::history`]). It starts when the cluster's
//! command version reaches [`SINCE_VERSION`]: before that, some members would not append, and
//! replicas would disagree.
//!
//! A record's hash is blake3 over its JSON with `hash` empty (fields in declaration order,
//! no floats), so `prev` binds each record to all before it. Pure logic: no I/O, no keys.

use serde::{Deserialize, Serialize};

use crate::jobs::Job;
use crate::report::Verdict;

/// The SSH signature namespace of exports (`ssh-keygen -Y verify -n rehearse-evidence`).
pub const NAMESPACE: &str = "rehearse-evidence";

/// The command version from which final verdicts are chained.
pub const SINCE_VERSION: u32 = 7;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The export format's version (the JSON's `format`).
pub const FORMAT: u32 = 1;

/// The chain's last record, kept in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// A target as the verdict measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// "rto" or "rpo".
    pub name: String,
    pub target_ms: u64,
    pub observed_ms: Option<u64>,
    pub ok: bool,
}

/// A phase as it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTime {
    pub name: String,
    pub ms: u64,
    pub ok: bool,
}

/// A check as it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
}

/// One final verdict in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 1 for the first record, then one more each.
    pub seq: u64,
    /// The hash of the record before (or [`GENESIS`]).
    pub prev: String,
    pub job: String,
    /// The drill run it belonged to.
    pub drill: Option<String>,
    pub tick_ms: Option<i64>,
    /// The DR exercise it was a step of.
    pub exercise: Option<String>,
    /// The plan's name, when it has one.
    pub name: Option<String>,
    pub artifact: String,
    pub engine: String,
    /// The sandbox the restore ran in ("process", "docker"): never the source system.
    pub runtime: String,
    pub verdict: Verdict,
    pub submitted_at_ms: u64,
    pub finished_at_ms: u64,
    /// The worker and region of the attempt that gave the verdict.
    pub worker: Option<String>,
    pub region: Option<String>,
    pub attempts: u32,
    pub rto_ms: Option<u64>,
    pub rpo_ms: Option<u64>,
    pub targets: Vec<Target>,
    pub phases: Vec<PhaseTime>,
    pub checks: Vec<CheckResult>,
    /// "phase: reason" when it did not pass.
    pub failure: Option<String>,
    /// blake3 of this record with `hash` empty, hex.
    pub hash: String,
}

impl Record {
    /// The record of a job that ended with a verdict (none for a job that ended without one:
    /// cancelled, or lost on every attempt — they evidence nothing about the backup).
    pub fn of(
        job: &Job,
        drill: Option<(String, i64)>,
        exercise: Option<String>,
        seq: u64,
        prev: &str,
    ) -> Option<Record> {
        let report = job.report.as_ref()?;
        let last = job.attempts.last();
        let mut record = Record {
            seq,
            prev: prev.to_owned(),
            job: job.id.clone(),
            tick_ms: drill.as_ref().map(|(_, t)| *t),
            drill: drill.map(|(d, _)| d),
            exercise,
            name: report.name.clone(),
            artifact: report.artifact.url.clone(),
            engine: report.engine.clone(),
            runtime: report.runtime.clone(),
            verdict: report.verdict,
            submitted_at_ms: job.submitted_at_ms,
            finished_at_ms: job.updated_at_ms,
            worker: last.map(|a| a.worker.clone()),
            region: last.and_then(|a| a.region.clone()),
            attempts: u32::try_from(job.attempts.len()).unwrap_or(u32::MAX),
            rto_ms: report.rto_ms,
            rpo_ms: report.rpo_ms,
            targets: report
                .targets
                .iter()
                .map(|t| Target {
                    name: t.name.clone(),
                    target_ms: t.target_ms,
                    observed_ms: t.observed_ms,
                    ok: t.ok,
                })
                .collect(),
            phases: report
                .phases
                .iter()
                .map(|p| PhaseTime {
                    name: p.name.as_str().to_owned(),
                    ms: p.ms,
                    ok: p.ok,
                })
                .collect(),
            checks: report
                .checks
                .iter()
                .map(|c| CheckResult {
                    name: c.name.clone(),
                    ok: c.ok,
                })
                .collect(),
            failure: report
                .failure
                .as_ref()
                .map(|f| format!("{}: {}", f.phase, f.reason)),
            hash: String::new(),
        };
        record.hash = record.digest();
        Some(record)
    }

    /// What `hash` must be: blake3 over the record's JSON with `hash` empty.
    pub fn digest(&self) -> String {
        let mut bare = self.clone();
        bare.hash.clear();
        let bytes = serde_json::to_vec(&bare).unwrap_or_default();
        blake3::hash(&bytes).to_hex().to_string()
    }

    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

impl crate::jobs::JobStore {
    /// Appends the job's verdict to the chain if it just ended with one (from the cluster
    /// version [`SINCE_VERSION`] on); the record goes to the history.
    pub(crate) fn chain_evidence(&mut self, id: &str) {
        if self.cluster_version() < SINCE_VERSION {
            return;
        }
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        if !job.state.is_final() {
            return;
        }
        let drill = self.drill_jobs.get(id).map(|(d, t, _)| (d.clone(), *t));
        let exercise = self.exercise_jobs.get(id).cloned();
        let (seq, prev) = match &self.evidence {
            Some(h) => (h.seq + 1, h.hash.as_str()),
            None => (1, GENESIS),
        };
        let Some(record) = Record::of(job, drill, exercise, seq, prev) else {
            return;
        };
        self.evidence = Some(record.head());
        self.history_out
            .push(crate::history::HistoryOp::Evidence(Box::new(record)));
    }

    /// The evidence chain's last record.
    pub fn evidence_head(&self) -> Option<&Head> {
        self.evidence.as_ref()
    }
}

/// The history key of a record: its sequence number, zero-padded (keys sort as numbers).
pub fn key(seq: u64) -> String {
    format!("{seq:020}")
}

/// A record as the chain sees it in an export: enough to check the links of the whole window
/// even where an export of one drill leaves the other records out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    /// Its record is in the export's `records`.
    pub included: bool,
}

/// Where a chain breaks: the first record that does not follow from the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: u64,
    pub job: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.job {
            Some(job) => write!(f, "record {} (job {job}): {}", self.seq, self.why),
            None => write!(f, "record {}: {}", self.seq, self.why),
        }
    }
}

/// Walks records in chain order and says where they stop following each other: a record whose
/// hash is not its content's, whose `prev` is not the hash before it, or a gap in the sequence.
#[derive(Debug, Default)]
pub struct ChainCheck {
    last: Option<Head>,
}

impl ChainCheck {
    /// Starts after `anchor` (None: at the chain's start, where `prev` must be [`GENESIS`]; an
    /// export's first link is its own anchor).
    pub fn after(anchor: Option<Head>) -> ChainCheck {
        ChainCheck { last: anchor }
    }

    /// The next link, and the record's content when there is one.
    pub fn next(&mut self, link: &Link, record: Option<&Record>) -> Result<(), Broken> {
        let job = record.map(|r| r.job.clone());
        let broken = |why: String| Broken {
            seq: link.seq,
            job: job.clone(),
            why,
        };
        if let Some(r) = record {
            if r.seq != link.seq || r.prev != link.prev || r.hash != link.hash {
                return Err(broken("the record and its link in the chain differ".into()));
            }
            let digest = r.digest();
            if digest != r.hash {
                return Err(broken(format!(
                    "its content was changed: it hashes to {digest}, the chain holds {}",
                    r.hash
                )));
            }
        }
        match &self.last {
            Some(last) if link.seq != last.seq + 1 => {
                return Err(broken(format!(
                    "it follows record {}: {} missing",
                    last.seq,
                    if link.seq > last.seq + 1 {
                        format!("record {} is", last.seq + 1)
                    } else {
                        "the order is broken, a record is".to_owned()
                    }
                )));
            }
            Some(last) if link.prev != last.hash => {
                return Err(broken(format!(
                    "its prev {} is not the hash of record {} ({})",
                    link.prev, last.seq, last.hash
                )));
            }
            None if link.seq != 1 || link.prev != GENESIS => {
                return Err(broken(
                    "the chain does not start here: record 1, after the genesis hash, is missing"
                        .into(),
                ));
            }
            _ => {}
        }
        self.last = Some(Head {
            seq: link.seq,
            hash: link.hash.clone(),
        });
        Ok(())
    }
}

/// What an export covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    pub since_ms: u64,
    /// Exclusive.
    pub until_ms: u64,
    pub drill: Option<String>,
}

impl Window {
    fn holds(&self, r: &Record) -> bool {
        r.finished_at_ms >= self.since_ms && r.finished_at_ms < self.until_ms
    }

    fn selects(&self, r: &Record) -> bool {
        self.drill
            .as_ref()
            .is_none_or(|d| r.drill.as_ref() == Some(d))
    }
}

/// A drill's targets as defined when the export was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillInfo {
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    /// Its plans' targets, as written (`targets.rto`, `targets.rpo`).
    pub rto_targets: Vec<String>,
    pub rpo_targets: Vec<String>,
}

impl DrillInfo {
    pub fn of(spec: &crate::drill::DrillSpec) -> DrillInfo {
        let targets = |pick: fn(&crate::plan::RawTargets) -> Option<&String>| {
            let mut out: Vec<String> = spec
                .plans
                .iter()
                .filter_map(|p| p.targets.as_ref().and_then(pick).cloned())
                .collect();
            out.dedup();
            out
        };
        DrillInfo {
            name: spec.name.clone(),
            schedule: spec.schedule.clone(),
            timezone: spec.timezone.clone(),
            rto_targets: targets(|t| t.rto.as_ref()),
            rpo_targets: targets(|t| t.rpo.as_ref()),
        }
    }
}

/// An export: the JSON document an auditor receives (beside the HTML and their signatures).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub format: u32,
    /// RFC 3339.
    pub generated_at: String,
    pub since: String,
    pub until: String,
    pub drill: Option<String>,
    /// The signer's public key, OpenSSH format (`ssh-ed25519 AAAA… comment`).
    pub signer: String,
    /// The chain's head when the export was made.
    pub head: Option<Head>,
    /// Every record of the window, in chain order.
    pub links: Vec<Link>,
    /// The records selected (all of the window, or one drill's).
    pub records: Vec<Record>,
    pub drills: Vec<DrillInfo>,
}

/// Builds an export's chain part from the whole chain in order, checking it from record 1 to
/// the state's `head` as it goes (a record edited, removed or cut off the end is named).
pub fn select<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    head: Option<&Head>,
    window: &Window,
) -> Result<(Vec<Link>, Vec<Record>), Broken> {
    let mut check = ChainCheck::default();
    let mut links = Vec::new();
    let mut out = Vec::new();
    for r in records {
        let link = Link {
            seq: r.seq,
            prev: r.prev.clone(),
            hash: r.hash.clone(),
            included: false,
        };
        check.next(&link, Some(r))?;
        if window.holds(r) {
            let included = window.selects(r);
            links.push(Link { included, ..link });
            if included {
                out.push(r.clone());
            }
        }
    }
    let last = check.last.as_ref();
    if let Some(head) = head
        && last != Some(head)
    {
        return Err(Broken {
            seq: last.map_or(1, |l| l.seq + 1),
            job: None,
            why: format!(
                "the chain's head is record {} ({}), its records end {}",
                head.seq,
                head.hash,
                last.map_or("before record 1".to_owned(), |l| format!(
                    "at record {}",
                    l.seq
                ))
            ),
        });
    }
    if head.is_none() && last.is_some() {
        return Err(Broken {
            seq: 1,
            job: None,
            why: "the state holds no chain, yet its records exist".into(),
        });
    }
    Ok((links, out))
}

/// Re-checks an export's chain: every link follows the one before, every included link has its
/// record and every record its link, and each record hashes to its link. Names the first break.
pub fn check_export(export: &Export) -> Result<(), Broken> {
    let mut records = export.records.iter().peekable();
    let mut check = ChainCheck::after(export.links.first().map(|l| Head {
        seq: l.seq.saturating_sub(1),
        hash: l.prev.clone(),
    }));
    for link in &export.links {
        let record = if records.peek().is_some_and(|r| r.seq == link.seq) {
            records.next()
        } else {
            None
        };
        if link.included && record.is_none() {
            return Err(Broken {
                seq: link.seq,
                job: None,
                why: "the chain holds it but the export's records do not: it was removed".into(),
            });
        }
        if !link.included && record.is_some() {
            return Err(Broken {
                seq: link.seq,
                job: record.map(|r| r.job.clone()),
                why: "the chain says it was left out, yet the records hold it".into(),
            });
        }
        check.next(link, record)?;
    }
    if let Some(extra) = records.next() {
        return Err(Broken {
            seq: extra.seq,
            job: Some(extra.job.clone()),
            why: "no link of the chain holds it (added, or out of order)".into(),
        });
    }
    if let (Some(head), Some(last)) = (&export.head, export.links.last())
        && (last.seq > head.seq || (last.seq == head.seq && last.hash != head.hash))
    {
        return Err(Broken {
            seq: last.seq,
            job: None,
            why: format!(
                "the chain's head at export was record {} ({})",
                head.seq, head.hash
            ),
        });
    }
    Ok(())
}

/// What the export says per requirement: the figures a statement rests on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub verdicts: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub artifacts: usize,
    pub drills: usize,
    pub exercises: usize,
    pub runtimes: Vec<String>,
    pub rto_met: usize,
    pub rto_missed: usize,
    pub rpo_met: usize,
    pub rpo_missed: usize,
    pub worst_rto_ms: Option<u64>,
    pub worst_rpo_ms: Option<u64>,
    /// Records that did not pass, each with the next record of the same drill or artifact.
    pub followed: Vec<(usize, Option<usize>)>,
}

/// The figures of an export's records.
pub fn summarize(records: &[Record]) -> Summary {
    let mut s = Summary {
        verdicts: records.len(),
        ..Summary::default()
    };
    let mut artifacts = std::collections::BTreeSet::new();
    let mut drills = std::collections::BTreeSet::new();
    let mut exercises = std::collections::BTreeSet::new();
    let mut runtimes = std::collections::BTreeSet::new();
    for (i, r) in records.iter().enumerate() {
        match r.verdict {
            Verdict::Passed => s.passed += 1,
            Verdict::Failed => s.failed += 1,
            Verdict::Error => s.errors += 1,
        }
        s.first_ms = Some(
            s.first_ms
                .map_or(r.finished_at_ms, |f| f.min(r.finished_at_ms)),
        );
        s.last_ms = Some(
            s.last_ms
                .map_or(r.finished_at_ms, |l| l.max(r.finished_at_ms)),
        );
        artifacts.insert(r.artifact.as_str());
        if let Some(d) = &r.drill {
            drills.insert(d.as_str());
        }
        if let Some(e) = &r.exercise {
            exercises.insert(e.as_str());
        }
        runtimes.insert(r.runtime.as_str());
        for t in &r.targets {
            let (met, missed, worst) = match t.name.as_str() {
                "rto" => (&mut s.rto_met, &mut s.rto_missed, &mut s.worst_rto_ms),
                "rpo" => (&mut s.rpo_met, &mut s.rpo_missed, &mut s.worst_rpo_ms),
                _ => continue,
            };
            if t.ok {
                *met += 1;
            } else {
                *missed += 1;
            }
            if let Some(o) = t.observed_ms {
                *worst = Some(worst.map_or(o, |w| w.max(o)));
            }
        }
        if r.verdict != Verdict::Passed {
            let next = records[i + 1..].iter().position(|n| {
                if r.drill.is_some() {
                    n.drill == r.drill
                } else {
                    n.artifact == r.artifact
                }
            });
            s.followed.push((i, next.map(|n| i + 1 + n)));
        }
    }
    s.artifacts = artifacts.len();
    s.drills = drills.len();
    s.exercises = exercises.len();
    s.runtimes = runtimes.into_iter().map(str::to_owned).collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: &str, verdict: Verdict, at: u64, drill: Option<&str>) -> Record {
        let mut r = Record {
            seq,
            prev: prev.to_owned(),
            job: format!("job-{seq}"),
            drill: drill.map(str::to_owned),
            tick_ms: drill.map(|_| at as i64),
            exercise: None,
            name: None,
            artifact: format!("file:///b/{}.dump", drill.unwrap_or("x")),
            engine: "postgres".into(),
            runtime: "process".into(),
            verdict,
            submitted_at_ms: at - 10,
            finished_at_ms: at,
            worker: Some("w1".into()),
            region: Some("eu".into()),
            attempts: 1,
            rto_ms: Some(900),
            rpo_ms: Some(60_000),
            targets: vec![Target {
                name: "rto".into(),
                target_ms: 1000,
                observed_ms: Some(900 + seq),
                ok: verdict == Verdict::Passed,
            }],
            phases: vec![PhaseTime {
                name: "restore".into(),
                ms: 500,
                ok: true,
            }],
            checks: vec![CheckResult {
                name: "rows".into(),
                ok: verdict == Verdict::Passed,
            }],
            failure: (verdict != Verdict::Passed).then(|| "checks: rows 0".to_owned()),
            hash: String::new(),
        };
        r.hash = r.digest();
        r
    }

    fn chain(n: u64) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map_or(GENESIS.to_owned(), |r| r.hash.clone());
            let verdict = if seq % 3 == 0 {
                Verdict::Failed
            } else {
                Verdict::Passed
            };
            let drill = if seq % 2 == 0 { "shop" } else { "crm" };
            out.push(record(seq, &prev, verdict, seq * 1000, Some(drill)));
        }
        out
    }

    fn export(records: &[Record], window: &Window) -> Export {
        let head = records.last().map(Record::head);
        let (links, records) = select(records, head.as_ref(), window).expect("chain holds");
        Export {
            format: FORMAT,
            generated_at: "2026-12-06T00:00:00Z".into(),
            since: String::new(),
            until: String::new(),
            drill: window.drill.clone(),
            signer: String::new(),
            head: None,
            links,
            records,
            drills: Vec::new(),
        }
    }

    fn all() -> Window {
        Window {
            since_ms: 0,
            until_ms: u64::MAX,
            drill: None,
        }
    }

    #[test]
    fn an_intact_chain_exports_and_checks() {
        let records = chain(10);
        let e = export(&records, &all());
        assert_eq!(e.links.len(), 10);
        assert_eq!(check_export(&e), Ok(()));
        // A window in the middle anchors at its first link.
        let mid = Window {
            since_ms: 3000,
            until_ms: 7000,
            drill: None,
        };
        let e = export(&records, &mid);
        assert_eq!(
            e.links.iter().map(|l| l.seq).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        assert_eq!(check_export(&e), Ok(()));
    }

    #[test]
    fn an_export_of_one_drill_keeps_every_link_and_only_its_records() {
        let records = chain(10);
        let window = Window {
            drill: Some("shop".into()),
            ..all()
        };
        let e = export(&records, &window);
        assert_eq!(e.links.len(), 10);
        assert!(e.records.iter().all(|r| r.drill.as_deref() == Some("shop")));
        assert_eq!(e.records.len(), 5);
        assert_eq!(check_export(&e), Ok(()));
    }

    #[test]
    fn an_edited_record_is_named() {
        let records = chain(6);
        let mut e = export(&records, &all());
        e.records[3].verdict = Verdict::Passed;
        e.records[2].verdict = Verdict::Passed;
        let broken = check_export(&e).expect_err("an edit breaks the chain");
        assert_eq!(broken.seq, 3);
        assert_eq!(broken.job.as_deref(), Some("job-3"));
        assert!(broken.why.contains("content was changed"), "{broken}");
        // Rehashing the edited record does not help: its link (and the next prev) differ.
        let mut e = export(&records, &all());
        e.records[2].verdict = Verdict::Passed;
        e.records[2].hash = e.records[2].digest();
        let broken = check_export(&e).expect_err("still broken");
        assert_eq!(broken.seq, 3);
        // Nor does rewriting the link: the next record's prev names the old hash.
        e.links[2].hash = e.records[2].hash.clone();
        let broken = check_export(&e).expect_err("still broken");
        assert_eq!(broken.seq, 4, "{broken}");
        assert!(broken.why.contains("not the hash of record 3"), "{broken}");
    }

    #[test]
    fn a_removed_record_is_named_with_or_without_its_link() {
        let records = chain(6);
        let mut e = export(&records, &all());
        e.records.remove(2);
        let broken = check_export(&e).expect_err("removed");
        assert_eq!(broken.seq, 3);
        assert!(broken.why.contains("removed"), "{broken}");
        e.links.remove(2);
        let broken = check_export(&e).expect_err("removed with its link");
        assert_eq!(broken.seq, 4);
        assert!(broken.why.contains("record 3 is missing"), "{broken}");
    }

    #[test]
    fn a_broken_stored_chain_stops_the_selection() {
        let records = chain(5);
        let head = records[4].head();
        let mut edited = records.clone();
        edited[1].rto_ms = Some(1);
        let broken = select(&edited, Some(&head), &all()).expect_err("edited");
        assert_eq!(broken.seq, 2);
        let broken = select(&records[1..], Some(&head), &all()).expect_err("first removed");
        assert_eq!(broken.seq, 2);
        assert!(broken.why.contains("record 1"), "{broken}");
        let broken = select(&records[..4], Some(&head), &all()).expect_err("last removed");
        assert_eq!(broken.seq, 5);
        assert!(broken.why.contains("head is record 5"), "{broken}");
        assert!(select(&records, Some(&head), &all()).is_ok());
        assert!(select(&records[..0], None, &all()).is_ok(), "no chain yet");
    }

    #[test]
    fn a_record_hashes_its_whole_content_and_its_prev() {
        let a = record(1, GENESIS, Verdict::Passed, 1000, None);
        let mut b = a.clone();
        b.prev = "1".repeat(64);
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.checks[0].ok = false;
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest(), a.hash);
    }

    /// A job run through the real commands to a verdict, at the given cluster version.
    fn store_with_verdicts(version: u32, verdicts: &[Verdict]) -> crate::jobs::JobStore {
        use crate::jobs::{Command, NewJob};
        let mut s = crate::jobs::JobStore::default();
        let mut i = 0;
        let mut next = || {
            i += 1;
            i
        };
        s.apply(next(), &Command::SetVersion { version });
        s.apply(
            next(),
            &Command::RegisterWorker(crate::fleet::WorkerSpec {
                name: "w".into(),
                incarnation: 1,
                region: "eu".into(),
                labels: Default::default(),
                slots: 1,
                at_ms: 0,
            }),
        );
        for (n, v) in verdicts.iter().enumerate() {
            let id = format!("j{n}");
            let plan = crate::plan::RawPlan {
                artifact: crate::plan::RawArtifact {
                    url: "/b/x.dump".into(),
                    engine: "postgres".into(),
                    ..Default::default()
                },
                ..Default::default()
            };
            s.apply(
                next(),
                &Command::Submit(vec![NewJob {
                    id: id.clone(),
                    plan,
                    at_ms: 10,
                }]),
            );
            let token = next();
            s.apply(
                token,
                &Command::Assign {
                    assignments: vec![(id.clone(), "w".into())],
                    at_ms: 20,
                },
            );
            let mut report = crate::report::Report::new(
                "/b/x.dump",
                "postgres",
                "docker",
                "2026-12-06T00:00:00Z".into(),
            );
            report.verdict = *v;
            s.apply(
                next(),
                &Command::Report {
                    job: id,
                    token,
                    report: Box::new(report),
                    at_ms: 1000 * (n as u64 + 1),
                },
            );
        }
        s
    }

    #[test]
    fn final_verdicts_are_chained_from_version_7_only() {
        let mut s = store_with_verdicts(SINCE_VERSION, &[Verdict::Passed, Verdict::Failed]);
        let records: Vec<Record> = s
            .take_history()
            .into_iter()
            .filter_map(|op| match op {
                crate::history::HistoryOp::Evidence(r) => Some(*r),
                _ => None,
            })
            .collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].prev, GENESIS);
        assert_eq!(records[1].prev, records[0].hash);
        assert_eq!(records[1].verdict, Verdict::Failed);
        assert_eq!(records[1].runtime, "docker");
        assert_eq!(records[1].finished_at_ms, 2000);
        assert_eq!(s.evidence_head(), Some(&records[1].head()));
        let (links, _) = select(&records, s.evidence_head(), &all()).expect("intact");
        assert_eq!(links.len(), 2);
        // The head travels in the persisted state and snapshots.
        let back: crate::jobs::JobStore =
            serde_json::from_slice(&serde_json::to_vec(&s).expect("json")).expect("read back");
        assert_eq!(back.evidence_head(), s.evidence_head());

        let mut older = store_with_verdicts(6, &[Verdict::Passed]);
        assert!(older.evidence_head().is_none());
        assert!(
            !older
                .take_history()
                .iter()
                .any(|op| matches!(op, crate::history::HistoryOp::Evidence(_)))
        );
    }

    #[test]
    fn the_summary_counts_targets_and_follows_failures() {
        let records = chain(6);
        let s = summarize(&records);
        assert_eq!((s.verdicts, s.passed, s.failed, s.errors), (6, 4, 2, 0));
        assert_eq!((s.rto_met, s.rto_missed), (4, 2));
        assert_eq!(s.worst_rto_ms, Some(906));
        assert_eq!(s.first_ms, Some(1000));
        assert_eq!(s.last_ms, Some(6000));
        // Record 3 (crm) failed and crm's next is record 5; record 6 (shop) has no next.
        assert_eq!(s.followed, vec![(2, Some(4)), (5, None)]);
        assert_eq!(s.drills, 2);
    }
}
