//! DR exercises: an application group (several plans, and gates a person approves) recovered in
//! one region, in dependency order, on one clock. Pure: the file format and its validation, the
//! step state machine ([`Exercise`]) that both the cluster's replicated state and the local
//! runner (`rehearse exercise run`) drive, and the report (RTO over the critical path, RPO over
//! the restore points, deviations).
//!
//! Rules (docs/exercises.md says them for users):
//! - Steps form a DAG (`after`); a step starts once every step it comes after has ended.
//! - A step that did not pass and is `critical`, or a gate not approved, halts every step
//!   after it (transitively: a halted step halts its own dependents). A non-critical step that did not pass does not
//!   block: its dependents run, and the report counts it as a deviation.
//! - A plan step gets `retries` more jobs when one ends without passing (failed, error, timed
//!   out; never after an abort); every retry is a deviation.
//! - A gate waits for an approval; past its `timeout` it fails ("not approved within …").
//! - The exercise's clock starts when it starts. RTO ends when the last step that passed ends
//!   (the whole group is back), and is not measured while a critical step has not passed (the
//!   application is not back). The critical path runs back from that step through, at each
//!   step, the dependency that ended last. The time gates on it waited for a person is reported
//!   apart (`gate_wait_ms`); `machine_rto_ms` is the RTO without it.
//! - RPO: the disaster instant minus the oldest restore point among the steps (a step's restore
//!   point: its freshness query's newest data, or the last commit a WAL replay reached).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::drill::{self, JobResult, millis};
use crate::plan::{Plan, RawPlan};
use crate::report::Verdict;

/// A gate without a timeout waits this long at most.
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The exercise file as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawExerciseFile {
    pub exercise: RawExercise,
    #[serde(default, rename = "step", skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<RawStep>,
    #[serde(default, rename = "consistency", skip_serializing_if = "Vec::is_empty")]
    pub consistency: Vec<RawConsistency>,
}

/// `[[consistency]]`: every value the query returns in one step's restored database must be a
/// path in another step's restored file tree.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsistency {
    pub name: String,
    pub sql: RawSqlSide,
    pub files: RawFilesSide,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlSide {
    pub step: String,
    pub query: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesSide {
    pub step: String,
}

/// A validated consistency check between two plan steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsistencySpec {
    pub name: String,
    /// The step whose database answers the query (postgres or mysql).
    pub sql_step: usize,
    pub query: String,
    /// The step whose file tree must hold every returned path (files); it runs after `sql_step`.
    pub files_step: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawExercise {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disaster: Option<String>,
}

/// A plan step names a plan file, or holds the plan inline (`[step.plan]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawStepPlan {
    File(String),
    Inline(Box<RawPlan>),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<StepKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RawStepPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Verifies a plan (one job per attempt).
    #[default]
    Plan,
    /// Waits for a person's approval.
    Gate,
}

/// A validated step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub kind: StepKind,
    /// The plan (plan steps only), as given; [`Exercise`] adapts it to the exercise per job.
    #[serde(default)]
    pub plan: Option<RawPlan>,
    pub critical: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    pub retries: u32,
    /// Indexes of the steps this one comes after.
    pub after: Vec<usize>,
}

/// The disaster the exercise pretends: now (its start), or a past instant that bounds which
/// restore points it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disaster {
    Now,
    At(i64),
}

/// A validated exercise definition, as the log carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExerciseSpec {
    pub name: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub rto_ms: Option<u64>,
    #[serde(default)]
    pub rpo_ms: Option<u64>,
    pub disaster: Disaster,
    pub steps: Vec<StepSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consistency: Vec<ConsistencySpec>,
    /// A hash of everything above: the report names the definition it ran.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExerciseError {
    #[error("exercise file: {0}")]
    Toml(String),
    #[error("exercise {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("step {step:?}: {reason}")]
    Step { step: String, reason: String },
}

fn duration(v: Option<&str>) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(t) => humantime::parse_duration(t.trim())
            .map(|d| Some(millis(d)))
            .map_err(|e| format!("{t:?} is not a duration: {e}")),
    }
}

impl ExerciseSpec {
    /// Parses and validates an exercise file. `read_plan` returns the text of a plan file a step
    /// names (the caller resolves the path; this crate does no I/O).
    pub fn from_toml(
        text: &str,
        read_plan: impl Fn(&str) -> Result<String, String>,
    ) -> Result<ExerciseSpec, ExerciseError> {
        let raw: RawExerciseFile =
            toml::from_str(text).map_err(|e| ExerciseError::Toml(e.message().to_owned()))?;
        let invalid = |key: &'static str, reason: String| ExerciseError::Invalid { key, reason };
        let e = raw.exercise;
        let name = drill::checked_name(&e.name).map_err(|r| invalid("name", r))?;
        let region = e
            .region
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        let rto_ms = duration(e.rto.as_deref()).map_err(|r| invalid("rto", r))?;
        let rpo_ms = duration(e.rpo.as_deref()).map_err(|r| invalid("rpo", r))?;
        let disaster = match e.disaster.as_deref().map(str::trim) {
            None | Some("now") => Disaster::Now,
            Some(t) => Disaster::At(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|err| {
                        invalid(
                            "disaster",
                            format!("{t:?} is neither \"now\" nor an RFC 3339 time: {err}"),
                        )
                    })?
                    .timestamp_millis(),
            ),
        };
        if raw.steps.is_empty() {
            return Err(invalid("step", "give at least one [[step]]".into()));
        }
        let mut names = BTreeMap::new();
        for (i, s) in raw.steps.iter().enumerate() {
            let n = drill::checked_name(&s.name)
                .map_err(|r| invalid("step", format!("step #{}: name {r}", i + 1)))?;
            if names.insert(n.clone(), i).is_some() {
                return Err(invalid("step", format!("two steps are named {n:?}")));
            }
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        for s in raw.steps {
            let step_name = s.name.trim().to_owned();
            let bad = |reason: String| ExerciseError::Step {
                step: step_name.clone(),
                reason,
            };
            let kind = s.kind.unwrap_or_default();
            let plan = match (kind, s.plan) {
                (StepKind::Gate, Some(_)) => {
                    return Err(bad("a gate has no plan (kind = \"gate\")".into()));
                }
                (StepKind::Gate, None) => None,
                (StepKind::Plan, None) => {
                    return Err(bad(
                        "give plan = \"file.toml\", an inline [step.plan], or kind = \"gate\""
                            .into(),
                    ));
                }
                (StepKind::Plan, Some(RawStepPlan::File(f))) => {
                    let text = read_plan(&f).map_err(|r| bad(format!("plan {f}: {r}")))?;
                    let raw: RawPlan = toml::from_str(&text)
                        .map_err(|e| bad(format!("plan {f}: {}", e.message())))?;
                    Plan::from_raw(raw.clone()).map_err(|e| bad(format!("plan {f}: {e}")))?;
                    Some(raw)
                }
                (StepKind::Plan, Some(RawStepPlan::Inline(raw))) => {
                    Plan::from_raw((*raw).clone()).map_err(|e| bad(format!("plan: {e}")))?;
                    Some(*raw)
                }
            };
            if kind == StepKind::Gate && s.retries.is_some() {
                return Err(bad("a gate has no retries".into()));
            }
            let timeout_ms = duration(s.timeout.as_deref()).map_err(&bad)?;
            if timeout_ms == Some(0) {
                return Err(bad("timeout must be longer than zero".into()));
            }
            let mut after = Vec::new();
            for a in &s.after {
                let i = *names
                    .get(a.trim())
                    .ok_or_else(|| bad(format!("comes after {a:?}, which is no step")))?;
                if !after.contains(&i) {
                    after.push(i);
                }
            }
            steps.push(StepSpec {
                name: step_name,
                kind,
                plan,
                critical: s.critical.unwrap_or(false),
                timeout_ms,
                retries: s.retries.unwrap_or(0).min(10),
                after,
            });
        }
        let mut consistency = Vec::new();
        for c in raw.consistency {
            let find = |step: &str| {
                names.get(step.trim()).copied().ok_or_else(|| {
                    invalid(
                        "consistency",
                        format!("check {:?}: {step:?} is no step", c.name),
                    )
                })
            };
            let sql_step = find(&c.sql.step)?;
            let files_step = find(&c.files.step)?;
            consistency.push(ConsistencySpec {
                name: drill::checked_name(&c.name)
                    .map_err(|r| invalid("consistency", format!("name {r}")))?,
                sql_step,
                query: c.sql.query.trim().to_owned(),
                files_step,
            });
            // The tree is checked once the database has answered.
            if !steps[files_step].after.contains(&sql_step) && files_step != sql_step {
                steps[files_step].after.push(sql_step);
            }
        }
        let mut spec = ExerciseSpec {
            name,
            region,
            rto_ms,
            rpo_ms,
            disaster,
            steps,
            consistency,
            version: String::new(),
        };
        spec.check_consistency()?;
        spec.check_graph()?;
        spec.version = spec.digest();
        Ok(spec)
    }

    /// A definition that arrived over the wire, validated again: names, plans, graph, version.
    pub fn checked(mut self) -> Result<ExerciseSpec, ExerciseError> {
        if self.name.trim().is_empty() || self.steps.is_empty() {
            return Err(ExerciseError::Invalid {
                key: "name",
                reason: "an exercise needs a name and a step".into(),
            });
        }
        let mut seen = BTreeSet::new();
        for s in &self.steps {
            let bad = |reason: String| ExerciseError::Step {
                step: s.name.clone(),
                reason,
            };
            if !seen.insert(s.name.as_str()) {
                return Err(bad("two steps have this name".into()));
            }
            match (s.kind, &s.plan) {
                (StepKind::Plan, Some(p)) => {
                    Plan::from_raw(p.clone()).map_err(|e| bad(format!("plan: {e}")))?;
                }
                (StepKind::Gate, None) => {}
                _ => return Err(bad("a plan step needs a plan, a gate has none".into())),
            }
            if s.after.iter().any(|&i| i >= self.steps.len()) {
                return Err(bad("comes after a step that does not exist".into()));
            }
        }
        self.check_graph()?;
        self.check_consistency()?;
        self.version = self.digest();
        Ok(self)
    }

    /// Each check joins a database step and a files step (one query per database step), the
    /// files step after the other.
    fn check_consistency(&self) -> Result<(), ExerciseError> {
        let engine = |i: usize| {
            self.steps
                .get(i)
                .and_then(|s| s.plan.as_ref())
                .map(|p| p.artifact.engine.trim().to_owned())
        };
        for c in &self.consistency {
            let bad = |reason: String| ExerciseError::Invalid {
                key: "consistency",
                reason: format!("check {:?}: {reason}", c.name),
            };
            if c.query.is_empty() {
                return Err(bad("sql.query is empty".into()));
            }
            if !matches!(engine(c.sql_step).as_deref(), Some("postgres" | "mysql")) {
                return Err(bad(
                    "sql.step must be a step restoring a database (postgres or mysql)".into(),
                ));
            }
            if engine(c.files_step).as_deref() != Some("files") {
                return Err(bad(
                    "files.step must be a step restoring a file tree (engine = \"files\")".into(),
                ));
            }
            if !self.steps[c.files_step].after.contains(&c.sql_step) {
                return Err(bad("its files step must come after its sql step".into()));
            }
            if self
                .consistency
                .iter()
                .any(|o| o.sql_step == c.sql_step && o.query != c.query)
            {
                return Err(bad(format!(
                    "step {:?} is asked two different queries; one query per step",
                    self.steps[c.sql_step].name
                )));
            }
        }
        Ok(())
    }

    /// Refuses a cycle, naming the steps on it.
    fn check_graph(&self) -> Result<(), ExerciseError> {
        // Kahn's algorithm: what is left when nothing more can be ordered lies on a cycle.
        let n = self.steps.len();
        let mut indegree: Vec<usize> = self.steps.iter().map(|s| s.after.len()).collect();
        let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut ordered = 0;
        while let Some(i) = ready.pop() {
            ordered += 1;
            for (j, s) in self.steps.iter().enumerate() {
                if s.after.contains(&i) {
                    indegree[j] -= 1;
                    if indegree[j] == 0 {
                        ready.push(j);
                    }
                }
            }
        }
        if ordered == n {
            return Ok(());
        }
        let on_cycle: Vec<&str> = (0..n)
            .filter(|&i| indegree[i] > 0)
            .map(|i| self.steps[i].name.as_str())
            .collect();
        Err(ExerciseError::Invalid {
            key: "after",
            reason: format!(
                "the steps' order has a cycle through {}",
                on_cycle.join(", ")
            ),
        })
    }

    /// The command version the exercise needs (its plans', and exercises themselves: 4).
    pub fn min_version(&self) -> u32 {
        self.steps
            .iter()
            .filter_map(|s| s.plan.as_ref())
            .map(RawPlan::min_version)
            .max()
            .unwrap_or(4)
            .max(4)
    }

    /// A stable hash of the definition (without the version itself).
    fn digest(&self) -> String {
        let mut copy = self.clone();
        copy.version = String::new();
        drill::digest(&copy)
    }
}

/// The id of an exercise started at `at_ms`: the same on every replica.
pub fn exercise_id(name: &str, at_ms: u64) -> String {
    format!("ex-{}-{at_ms:x}", drill::slug(name))
}

/// The job of attempt `attempt` (1-based) of step `step` (index): valid as a job id.
pub fn step_job_id(exercise: &str, step: usize, attempt: usize) -> String {
    format!("{exercise}-s{step}-a{attempt}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for the steps it comes after.
    Waiting,
    /// A job runs (plan step) or an approval is awaited (gate).
    Running,
    Passed,
    /// The backup is bad, a target was missed, or a gate was not approved in time.
    Failed,
    /// Could not verify (every attempt ended `error`).
    Error,
    /// A critical step before it did not pass.
    Halted,
    Aborted,
}

impl StepState {
    pub fn is_final(self) -> bool {
        !matches!(self, StepState::Waiting | StepState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Running => "running",
            StepState::Passed => "passed",
            StepState::Failed => "failed",
            StepState::Error => "error",
            StepState::Halted => "halted",
            StepState::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExerciseState {
    Running,
    Passed,
    Failed,
    Error,
    Aborted,
}

impl ExerciseState {
    pub fn is_final(self) -> bool {
        self != ExerciseState::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExerciseState::Running => "running",
            ExerciseState::Passed => "passed",
            ExerciseState::Failed => "failed",
            ExerciseState::Error => "error",
            ExerciseState::Aborted => "aborted",
        }
    }
}

/// How one job of a step ended, as the caller (state machine or local runner) tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnd {
    /// passed / failed / error / cancelled (a job state's name).
    pub state: String,
    #[serde(default)]
    pub worker: Option<String>,
    pub result: JobResult,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepAttempt {
    pub job: String,
    pub started_at_ms: u64,
    #[serde(default)]
    pub ended_at_ms: Option<u64>,
    #[serde(default)]
    pub end: Option<JobEnd>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub at_ms: u64,
    pub waited_ms: u64,
}

/// One step as it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub name: String,
    pub state: StepState,
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub ended_at_ms: Option<u64>,
    #[serde(default)]
    pub attempts: Vec<StepAttempt>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    pub by: String,
    pub reason: String,
    pub at_ms: u64,
}

/// A job the exercise wants run: the step's plan adapted to the exercise.
#[derive(Debug, Clone, PartialEq)]
pub struct StepJob {
    pub step: usize,
    pub id: String,
    pub plan: RawPlan,
}

/// An exercise as it runs (in the replicated state, or in `exercise run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exercise {
    pub id: String,
    pub spec: ExerciseSpec,
    pub started_at_ms: u64,
    /// The disaster instant (the start for `disaster = "now"`).
    pub disaster_ms: i64,
    pub state: ExerciseState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    pub steps: Vec<StepRun>,
    #[serde(default)]
    pub aborted: Option<Abort>,
    /// New leaders the log recorded while it ran (a leader elected appends an empty entry).
    #[serde(default)]
    pub leader_changes: u32,
    /// Its end was put in the notifications' outbox.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notified: bool,
}

impl Exercise {
    /// A new exercise; call [`Exercise::advance`] for the jobs it starts with.
    pub fn new(id: String, spec: ExerciseSpec, at_ms: u64) -> Exercise {
        let disaster_ms = match spec.disaster {
            Disaster::Now => at_ms as i64,
            Disaster::At(t) => t,
        };
        let steps = spec
            .steps
            .iter()
            .map(|s| StepRun {
                name: s.name.clone(),
                state: StepState::Waiting,
                started_at_ms: None,
                ended_at_ms: None,
                attempts: Vec::new(),
                approval: None,
                reason: None,
            })
            .collect();
        Exercise {
            id,
            spec,
            started_at_ms: at_ms,
            disaster_ms,
            state: ExerciseState::Running,
            reason: None,
            finished_at_ms: None,
            steps,
            aborted: None,
            leader_changes: 0,
            notified: false,
        }
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The step and attempt a job belongs to.
    pub fn job_step(&self, job: &str) -> Option<(usize, usize)> {
        self.steps
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.attempts.iter().position(|a| a.job == job).map(|k| (i, k)))
    }

    /// Every job the exercise made, oldest first per step.
    pub fn jobs(&self) -> impl Iterator<Item = &str> {
        self.steps
            .iter()
            .flat_map(|s| s.attempts.iter().map(|a| a.job.as_str()))
    }

    /// The jobs still running (an abort cancels them).
    pub fn open_jobs(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| s.attempts.iter().filter(|a| a.end.is_none()))
            .map(|a| a.job.clone())
            .collect()
    }

    /// The step's plan as its job runs it: pinned to the exercise's region, limited by the
    /// step's timeout, and for a past disaster instant bounded to restore points before it.
    pub fn plan_for(&self, step: usize) -> Option<RawPlan> {
        let s = &self.spec.steps[step];
        let mut plan = s.plan.clone()?;
        if let Some(region) = &self.spec.region {
            let placement = plan.placement.get_or_insert_with(Default::default);
            placement.region = Some(region.clone());
            if placement.not_region.as_deref() == Some(region) {
                placement.not_region = None;
            }
        }
        if let Some(t) = s.timeout_ms {
            plan.timeout = Some(format!("{t}ms"));
        }
        // An RTO worth trusting is measured with production-like settings, unless the plan
        // says otherwise.
        let sandbox = plan.sandbox.get_or_insert_with(Default::default);
        if sandbox.profile.is_none() {
            sandbox.profile = Some(crate::limits::Profile::Faithful);
        }
        if let Disaster::At(t) = self.spec.disaster {
            let at = chrono::DateTime::from_timestamp_millis(t)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            if plan.artifact.pick.is_some() {
                plan.artifact.before = Some(at.clone());
            }
            if let Some(pitr) = &mut plan.pitr
                && pitr.target.as_deref().is_none_or(|t| t.trim() == "latest")
            {
                pitr.target = Some(at);
            }
        }
        if plan.name.is_none() {
            plan.name = Some(format!("{} / {}", self.spec.name, s.name));
        }
        for c in &self.spec.consistency {
            if c.sql_step == step {
                plan.export = Some(c.query.clone());
            }
            if c.files_step == step
                && let Some(exported) = self
                    .last_result(c.sql_step)
                    .and_then(|r| r.exported.as_ref())
            {
                plan.files
                    .get_or_insert_with(Default::default)
                    .consistency
                    .push(crate::plan::RawPathSet {
                        name: c.name.clone(),
                        paths: exported.rows.clone(),
                    });
            }
        }
        Some(plan)
    }

    /// Starts what can start and halts what cannot run; ends the exercise once every step has
    /// ended. Returns the jobs to submit.
    pub fn advance(&mut self, at_ms: u64) -> Vec<StepJob> {
        let mut jobs = Vec::new();
        if self.state.is_final() {
            return jobs;
        }
        loop {
            let mut changed = false;
            for i in 0..self.steps.len() {
                if self.steps[i].state != StepState::Waiting {
                    continue;
                }
                let after = self.spec.steps[i].after.clone();
                if after.iter().any(|&d| !self.steps[d].state.is_final()) {
                    continue;
                }
                changed = true;
                let blocker = after.iter().copied().find(|&d| {
                    let st = self.steps[d].state;
                    let blocking =
                        self.spec.steps[d].critical || self.spec.steps[d].kind == StepKind::Gate;
                    st == StepState::Halted || (st != StepState::Passed && blocking)
                });
                let step = &mut self.steps[i];
                if let Some(d) = blocker {
                    step.state = StepState::Halted;
                    step.ended_at_ms = Some(at_ms);
                    step.reason = Some(format!(
                        "halted: the {} {:?} before it did not pass",
                        if self.spec.steps[d].kind == StepKind::Gate {
                            "gate"
                        } else {
                            "critical step"
                        },
                        self.spec.steps[d].name
                    ));
                    continue;
                }
                step.state = StepState::Running;
                step.started_at_ms = Some(at_ms);
                if self.spec.steps[i].kind == StepKind::Plan {
                    jobs.push(self.start_attempt(i, at_ms));
                }
            }
            if !changed {
                break;
            }
        }
        if self.steps.iter().all(|s| s.state.is_final()) {
            self.finish(at_ms);
        }
        jobs
    }

    fn start_attempt(&mut self, step: usize, at_ms: u64) -> StepJob {
        let plan = self.plan_for(step).unwrap_or_default();
        let n = self.steps[step].attempts.len() + 1;
        let id = step_job_id(&self.id, step, n);
        self.steps[step].attempts.push(StepAttempt {
            job: id.clone(),
            started_at_ms: at_ms,
            ended_at_ms: None,
            end: None,
        });
        StepJob { step, id, plan }
    }

    /// A job of the exercise ended: the step passes, retries, or ends; then [`Exercise::advance`].
    pub fn job_ended(&mut self, job: &str, end: JobEnd) -> Vec<StepJob> {
        let Some((i, k)) = self.job_step(job) else {
            return Vec::new();
        };
        let at_ms = end.at_ms;
        let attempt = &mut self.steps[i].attempts[k];
        if attempt.end.is_some() {
            return Vec::new();
        }
        attempt.ended_at_ms = Some(at_ms);
        let state = end.state.clone();
        let reason = end.result.reason.clone();
        attempt.end = Some(end);
        let step = &mut self.steps[i];
        if step.state != StepState::Running || self.state.is_final() {
            return Vec::new();
        }
        let mut jobs = Vec::new();
        match state.as_str() {
            "passed" => {
                step.state = StepState::Passed;
                step.ended_at_ms = Some(at_ms);
                step.reason = None;
            }
            other => {
                if step.attempts.len() <= self.spec.steps[i].retries as usize
                    && other != "cancelled"
                {
                    jobs.push(self.start_attempt(i, at_ms));
                    return jobs;
                }
                step.state = match other {
                    "failed" => StepState::Failed,
                    "cancelled" => StepState::Aborted,
                    _ => StepState::Error,
                };
                step.ended_at_ms = Some(at_ms);
                step.reason = Some(reason.unwrap_or_else(|| format!("its job ended {other}")));
            }
        }
        jobs.extend(self.advance(at_ms));
        jobs
    }

    /// A person approves a waiting gate.
    pub fn approve(&mut self, step: &str, by: &str, at_ms: u64) -> Result<Vec<StepJob>, String> {
        if self.state.is_final() {
            return Err(format!(
                "exercise {} has ended ({})",
                self.id,
                self.state.as_str()
            ));
        }
        let i = self
            .step_index(step)
            .ok_or_else(|| format!("exercise {} has no step {step:?}", self.id))?;
        if self.spec.steps[i].kind != StepKind::Gate {
            return Err(format!("step {step:?} is not a gate"));
        }
        let s = &mut self.steps[i];
        if s.state != StepState::Running {
            return Err(format!(
                "gate {step:?} is {}, not waiting for approval",
                s.state.as_str()
            ));
        }
        let started = s.started_at_ms.unwrap_or(at_ms);
        s.approval = Some(Approval {
            by: by.to_owned(),
            at_ms,
            waited_ms: at_ms.saturating_sub(started),
        });
        s.state = StepState::Passed;
        s.ended_at_ms = Some(at_ms);
        Ok(self.advance(at_ms))
    }

    /// The gates whose wait ran past their timeout at `now_ms`.
    pub fn overdue_gates(&self, now_ms: u64) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| {
                let spec = &self.spec.steps[i];
                let s = &self.steps[i];
                spec.kind == StepKind::Gate
                    && s.state == StepState::Running
                    && s.started_at_ms.is_some_and(|t| {
                        now_ms
                            >= t.saturating_add(
                                spec.timeout_ms.unwrap_or(millis(DEFAULT_GATE_TIMEOUT)),
                            )
                    })
            })
            .collect()
    }

    /// Fails the gates past their timeout; then [`Exercise::advance`].
    pub fn expire_gates(&mut self, now_ms: u64) -> Vec<StepJob> {
        let due = self.overdue_gates(now_ms);
        if due.is_empty() || self.state.is_final() {
            return Vec::new();
        }
        for i in due {
            let timeout = self.spec.steps[i]
                .timeout_ms
                .unwrap_or(millis(DEFAULT_GATE_TIMEOUT));
            let s = &mut self.steps[i];
            s.state = StepState::Failed;
            s.ended_at_ms = Some(now_ms);
            s.reason = Some(format!("not approved within {}", human(timeout)));
        }
        self.advance(now_ms)
    }

    /// Stops the exercise: its steps not ended are aborted. Returns the jobs to cancel.
    pub fn abort(&mut self, by: &str, reason: &str, at_ms: u64) -> Result<Vec<String>, String> {
        if self.state.is_final() {
            return Err(format!(
                "exercise {} has ended ({})",
                self.id,
                self.state.as_str()
            ));
        }
        let jobs = self.open_jobs();
        for s in &mut self.steps {
            if !s.state.is_final() {
                s.state = StepState::Aborted;
                s.ended_at_ms = Some(at_ms);
                s.reason = Some(format!("aborted by {by}"));
            }
        }
        self.aborted = Some(Abort {
            by: by.to_owned(),
            reason: reason.to_owned(),
            at_ms,
        });
        self.finish(at_ms);
        Ok(jobs)
    }

    fn finish(&mut self, at_ms: u64) {
        if self.state.is_final() {
            return;
        }
        self.finished_at_ms = Some(at_ms);
        let report = self.report();
        self.state = if self.aborted.is_some() {
            ExerciseState::Aborted
        } else {
            match report.verdict {
                Some(Verdict::Passed) => ExerciseState::Passed,
                Some(Verdict::Failed) => ExerciseState::Failed,
                _ => ExerciseState::Error,
            }
        };
        self.reason = report.reason;
    }

    /// The result of the step's last job, once it ended.
    fn last_result(&self, step: usize) -> Option<&JobResult> {
        Some(&self.steps.get(step)?.attempts.last()?.end.as_ref()?.result)
    }

    /// Each consistency check: passed, failed (why), or not run (why).
    fn consistency(&self) -> Vec<ConsistencyView> {
        self.spec
            .consistency
            .iter()
            .map(|c| {
                let found = self
                    .last_result(c.files_step)
                    .and_then(|r| r.consistency.iter().find(|(n, _, _)| *n == c.name));
                let truncated = self
                    .last_result(c.sql_step)
                    .and_then(|r| r.exported.as_ref())
                    .is_some_and(|e| e.truncated);
                let (ok, reason) = match found {
                    Some((_, ok, reason)) => (Some(*ok), reason.clone()),
                    None if self.steps[c.sql_step].state.is_final()
                        && self.steps[c.sql_step].state != StepState::Passed =>
                    {
                        (
                            None,
                            Some(format!(
                                "not run: the step {:?} did not pass",
                                self.steps[c.sql_step].name
                            )),
                        )
                    }
                    None if self.steps[c.files_step].state.is_final() => (
                        None,
                        Some(format!(
                            "not run: the step {:?} did not check it",
                            self.steps[c.files_step].name
                        )),
                    ),
                    None => (None, Some("not run yet".into())),
                };
                let reason = match (reason, truncated) {
                    (r, true) => Some(format!(
                        "{}only the first {} values were compared",
                        r.map(|r| format!("{r}; ")).unwrap_or_default(),
                        crate::plan::EXPORT_LIMIT
                    )),
                    (r, false) => r,
                };
                ConsistencyView {
                    name: c.name.clone(),
                    sql_step: self.steps[c.sql_step].name.clone(),
                    files_step: self.steps[c.files_step].name.clone(),
                    ok,
                    reason,
                }
            })
            .collect()
    }

    /// The restore point a step's (last) job used, when its report could tell one.
    fn restore_point(&self, i: usize) -> Option<i64> {
        let end = self.steps[i].attempts.last()?.end.as_ref()?;
        let at = end.result.restore_point.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(at)
            .ok()
            .map(|d| d.timestamp_millis())
    }

    /// The steps the recovery waited on, first to last: from the step that ends the RTO back
    /// through, at each step, the dependency that ended last.
    pub fn critical_path(&self) -> Vec<usize> {
        let Some(mut i) = self.rto_step() else {
            return Vec::new();
        };
        let mut path = vec![i];
        loop {
            let next = self.spec.steps[i]
                .after
                .iter()
                .copied()
                .max_by_key(|&d| (self.steps[d].ended_at_ms.unwrap_or(0), d));
            match next {
                Some(d) => {
                    path.push(d);
                    i = d;
                }
                None => break,
            }
        }
        path.reverse();
        path
    }

    /// The step whose end is the application's recovery: the last step to end among those that
    /// passed. `None` while a critical step has not passed (the application is not back).
    fn rto_step(&self) -> Option<usize> {
        let critical_missing = (0..self.steps.len())
            .any(|i| self.spec.steps[i].critical && self.steps[i].state != StepState::Passed);
        if critical_missing {
            return None;
        }
        (0..self.steps.len())
            .filter(|&i| self.steps[i].state == StepState::Passed)
            .max_by_key(|&i| (self.steps[i].ended_at_ms.unwrap_or(0), i))
    }

    /// What the exercise achieved, as far as it has run.
    pub fn report(&self) -> ExerciseReport {
        let path = self.critical_path();
        let rto_ms = self.rto_step().and_then(|i| {
            self.steps[i]
                .ended_at_ms
                .map(|e| e.saturating_sub(self.started_at_ms))
        });
        let gate_wait_ms: u64 = path
            .iter()
            .filter_map(|&i| self.steps[i].approval.as_ref())
            .map(|a| a.waited_ms)
            .sum();
        let points: Vec<(usize, i64)> = (0..self.steps.len())
            .filter(|&i| self.spec.steps[i].kind == StepKind::Plan)
            .filter_map(|i| self.restore_point(i).map(|p| (i, p)))
            .collect();
        let oldest = points.iter().map(|(_, p)| *p).min();
        let newest = points.iter().map(|(_, p)| *p).max();
        let rpo_ms = oldest.map(|o| self.disaster_ms.saturating_sub(o).max(0).unsigned_abs());
        let skew_ms = oldest
            .zip(newest)
            .map(|(o, n)| n.saturating_sub(o).unsigned_abs());
        let fast: Vec<&str> = (0..self.steps.len())
            .filter(|&i| {
                self.steps[i]
                    .attempts
                    .last()
                    .and_then(|a| a.end.as_ref())
                    .is_some_and(|e| e.result.profile.as_deref() == Some("fast"))
            })
            .map(|i| self.steps[i].name.as_str())
            .collect();
        let mut targets = Vec::new();
        for (name, target, observed) in [
            ("rto", self.spec.rto_ms, rto_ms),
            ("rpo", self.spec.rpo_ms, rpo_ms),
        ] {
            if let Some(target_ms) = target {
                let ok = observed.is_some_and(|o| o <= target_ms);
                targets.push(ExerciseTarget {
                    name: name.to_owned(),
                    target_ms,
                    observed_ms: observed,
                    ok,
                    note: (ok && name == "rto" && !fast.is_empty()).then(|| {
                        format!(
                            "met under the fast profile (not production-like): {}",
                            fast.join(", ")
                        )
                    }),
                });
            }
        }
        let mut deviations = Vec::new();
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            let spec = &self.spec.steps[i];
            if s.attempts.len() > 1 {
                deviations.push(format!(
                    "step {:?} ran {} times ({} retr{})",
                    s.name,
                    s.attempts.len(),
                    s.attempts.len() - 1,
                    if s.attempts.len() == 2 { "y" } else { "ies" }
                ));
            }
            if let Some(a) = &s.approval {
                deviations.push(format!(
                    "gate {:?} approved by {} after waiting {}",
                    s.name,
                    a.by,
                    human(a.waited_ms)
                ));
            }
            if matches!(s.state, StepState::Halted | StepState::Aborted) {
                deviations.push(format!(
                    "step {:?} {}",
                    s.name,
                    s.reason.as_deref().unwrap_or(s.state.as_str())
                ));
            }
            if !spec.critical
                && matches!(s.state, StepState::Failed | StepState::Error)
                && self.spec.steps.iter().any(|o| o.after.contains(&i))
            {
                deviations.push(format!(
                    "step {:?} did not pass; the steps after it ran anyway (it is not critical)",
                    s.name
                ));
            }
            let last = s.attempts.last().and_then(|a| a.end.as_ref());
            let point = self.restore_point(i);
            steps.push(StepView {
                name: s.name.clone(),
                kind: spec.kind,
                critical: spec.critical,
                state: s.state,
                verdict: last.and_then(|e| e.result.verdict),
                worker: last.and_then(|e| e.worker.clone()),
                attempts: s.attempts.len(),
                jobs: s.attempts.iter().map(|a| a.job.clone()).collect(),
                started_at_ms: s.started_at_ms,
                ended_at_ms: s.ended_at_ms,
                duration_ms: s
                    .started_at_ms
                    .zip(s.ended_at_ms)
                    .map(|(a, b)| b.saturating_sub(a)),
                phases: last.map(|e| e.result.phases.clone()).unwrap_or_default(),
                artifact_url: last
                    .map(|e| e.result.artifact_url.clone())
                    .filter(|u| !u.is_empty()),
                blake3: last.and_then(|e| e.result.blake3.clone()),
                restore_point_ms: point,
                restore_point_age_ms: point
                    .map(|p| self.disaster_ms.saturating_sub(p).max(0).unsigned_abs()),
                approval: s.approval.clone(),
                reason: s.reason.clone(),
                after: spec
                    .after
                    .iter()
                    .map(|&d| self.spec.steps[d].name.clone())
                    .collect(),
                cleaned_up: last.map(|e| e.result.phases.contains_key("teardown")),
                profile: last.and_then(|e| e.result.profile.clone()),
            });
        }
        if self.leader_changes > 0 {
            deviations.push(format!(
                "the coordinators' leader changed {} time(s) while it ran",
                self.leader_changes
            ));
        }
        let consistency = self.consistency();
        let (verdict, reason) = self.verdict(&targets, &points, &consistency);
        ExerciseReport {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            version: self.spec.version.clone(),
            region: self.spec.region.clone(),
            state: self.state,
            verdict,
            reason,
            disaster_ms: self.disaster_ms,
            disaster_now: self.spec.disaster == Disaster::Now,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            rto_ms,
            machine_rto_ms: rto_ms.map(|r| r.saturating_sub(gate_wait_ms)),
            gate_wait_ms,
            rpo_ms,
            restore_point_skew_ms: skew_ms,
            targets,
            critical_path: path.iter().map(|&i| self.steps[i].name.clone()).collect(),
            steps,
            consistency,
            deviations,
            leader_changes: self.leader_changes,
            aborted: self.aborted.clone(),
        }
    }

    /// Passed only when every step passed and the targets hold; failed when a step failed (a bad
    /// backup, a gate not approved) or a target was missed; error when a step could not be
    /// verified and none failed. `None` while running.
    fn verdict(
        &self,
        targets: &[ExerciseTarget],
        points: &[(usize, i64)],
        consistency: &[ConsistencyView],
    ) -> (Option<Verdict>, Option<String>) {
        if !self.steps.iter().all(|s| s.state.is_final()) {
            return (None, None);
        }
        if let Some(a) = &self.aborted {
            return (
                Some(Verdict::Error),
                Some(format!("aborted by {}: {}", a.by, a.reason)),
            );
        }
        // The classic DR failure first: a database and a file store from different days.
        if let Some(c) = consistency.iter().find(|c| c.ok == Some(false)) {
            return (
                Some(Verdict::Failed),
                Some(format!(
                    "consistency check {:?} failed: {}",
                    c.name,
                    c.reason.as_deref().unwrap_or("")
                )),
            );
        }
        let first = |st: StepState| self.steps.iter().find(|s| s.state == st);
        if let Some(s) = first(StepState::Failed) {
            return (
                Some(Verdict::Failed),
                Some(format!(
                    "step {:?} failed: {}",
                    s.name,
                    s.reason.as_deref().unwrap_or("")
                )),
            );
        }
        if let Some(s) = first(StepState::Error) {
            return (
                Some(Verdict::Error),
                Some(format!(
                    "step {:?} could not be verified: {}",
                    s.name,
                    s.reason.as_deref().unwrap_or("")
                )),
            );
        }
        if let Some(t) = targets.iter().find(|t| !t.ok) {
            let why = match t.observed_ms {
                Some(o) => format!(
                    "{} {} exceeds the target {}",
                    t.name.to_uppercase(),
                    human(o),
                    human(t.target_ms)
                ),
                None if t.name == "rpo" && points.is_empty() => "RPO not measured: no step's report tells its restore point (give the plans a targets.freshness query, or recover a WAL archive)".to_owned(),
                None => format!("{} not measured", t.name.to_uppercase()),
            };
            return (Some(Verdict::Failed), Some(why));
        }
        (Some(Verdict::Passed), None)
    }
}

fn human(ms: u64) -> String {
    crate::report::human_ms(ms)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExerciseTarget {
    pub name: String,
    pub target_ms: u64,
    pub observed_ms: Option<u64>,
    pub ok: bool,
    /// E.g. "met under the fast profile (not production-like)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ExerciseTarget {
    /// "met (4.3s)", "MISSED (5h 2m)", with the note after a `;`; durations by `fmt`.
    pub fn outcome(&self, fmt: impl Fn(u64) -> String) -> String {
        format!(
            "{} ({}){}",
            if self.ok { "met" } else { "MISSED" },
            self.observed_ms.map_or("-".to_owned(), fmt),
            self.note
                .as_deref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        )
    }
}

/// One consistency check's result: `ok` is `None` when it did not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyView {
    pub name: String,
    pub sql_step: String,
    pub files_step: String,
    pub ok: Option<bool>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub name: String,
    pub kind: StepKind,
    pub critical: bool,
    pub state: StepState,
    pub verdict: Option<Verdict>,
    pub worker: Option<String>,
    pub attempts: usize,
    pub jobs: Vec<String>,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub phases: BTreeMap<String, u64>,
    pub artifact_url: Option<String>,
    pub blake3: Option<String>,
    pub restore_point_ms: Option<i64>,
    /// The disaster instant minus the restore point.
    pub restore_point_age_ms: Option<u64>,
    pub approval: Option<Approval>,
    pub reason: Option<String>,
    pub after: Vec<String>,
    /// The step's sandbox was torn down (its report has the teardown phase).
    pub cleaned_up: Option<bool>,
    /// The sandbox profile its restore ran under ("faithful" unless its plan says otherwise).
    pub profile: Option<String>,
}

/// The exercise's report (JSON as is; `render` for people).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExerciseReport {
    pub id: String,
    pub name: String,
    pub version: String,
    pub region: Option<String>,
    pub state: ExerciseState,
    /// `None` while it runs.
    pub verdict: Option<Verdict>,
    pub reason: Option<String>,
    pub disaster_ms: i64,
    /// `disaster = "now"`: the disaster instant is the start.
    pub disaster_now: bool,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// Start → the end of the last step that passed (wall clock, gate waits included); `None`
    /// when a critical step did not pass.
    pub rto_ms: Option<u64>,
    /// The RTO without the time gates on the critical path waited for a person.
    pub machine_rto_ms: Option<u64>,
    pub gate_wait_ms: u64,
    /// Disaster instant → the oldest restore point among the steps.
    pub rpo_ms: Option<u64>,
    /// Newest minus oldest restore point among the steps.
    pub restore_point_skew_ms: Option<u64>,
    pub targets: Vec<ExerciseTarget>,
    pub critical_path: Vec<String>,
    pub steps: Vec<StepView>,
    pub consistency: Vec<ConsistencyView>,
    pub deviations: Vec<String>,
    pub leader_changes: u32,
    pub aborted: Option<Abort>,
}

impl ExerciseReport {
    /// 0 passed, 1 failed, 2 could not run (error, aborted), as `verify`'s.
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Some(Verdict::Passed) => 0,
            Some(Verdict::Failed) => 1,
            _ => 2,
        }
    }

    /// The report for people.
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let verdict = self.verdict.map_or(self.state.as_str(), Verdict::as_str);
        let _ = writeln!(
            out,
            "exercise {:?} ({}): {}",
            self.name,
            self.id,
            verdict.to_uppercase()
        );
        if let Some(r) = &self.reason {
            let _ = writeln!(out, "  reason: {r}");
        }
        if let Some(region) = &self.region {
            let _ = writeln!(out, "  region: {region}");
        }
        let _ = writeln!(
            out,
            "  disaster: {}{}",
            rfc3339(self.disaster_ms),
            if self.disaster_now {
                " (its start)"
            } else {
                ""
            }
        );
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), human);
        let _ = writeln!(
            out,
            "  RTO {} (machine {}, gates waited {}); RPO {}; restore-point skew {}",
            opt(self.rto_ms),
            opt(self.machine_rto_ms),
            human(self.gate_wait_ms),
            opt(self.rpo_ms),
            opt(self.restore_point_skew_ms)
        );
        for t in &self.targets {
            let _ = writeln!(
                out,
                "  target {} {}: {}",
                t.name,
                human(t.target_ms),
                t.outcome(human)
            );
        }
        if !self.critical_path.is_empty() {
            let _ = writeln!(out, "  critical path: {}", self.critical_path.join(" → "));
        }
        let _ = writeln!(out, "  steps:");
        for s in &self.steps {
            let _ = write!(
                out,
                "    {:<24} {:<8} {:>10}",
                s.name,
                s.state.as_str(),
                opt(s.duration_ms)
            );
            if s.kind == StepKind::Gate {
                let _ = write!(out, "  gate");
            } else {
                let _ = write!(
                    out,
                    "  {} attempt(s){}",
                    s.attempts,
                    s.worker
                        .as_deref()
                        .map(|w| format!(" on {w}"))
                        .unwrap_or_default()
                );
            }
            if let Some(age) = s.restore_point_age_ms {
                let _ = write!(out, ", restore point {} old", human(age));
            }
            let _ = writeln!(out);
            if let Some(r) = &s.reason {
                let _ = writeln!(out, "      {r}");
            }
        }
        for c in &self.consistency {
            let _ = writeln!(
                out,
                "  consistency {:?} ({} → {}): {}{}",
                c.name,
                c.sql_step,
                c.files_step,
                match c.ok {
                    Some(true) => "ok",
                    Some(false) => "FAILED",
                    None => "not run",
                },
                c.reason
                    .as_deref()
                    .map(|r| format!(" — {r}"))
                    .unwrap_or_default()
            );
        }
        if !self.deviations.is_empty() {
            let _ = writeln!(out, "  deviations:");
            for d in &self.deviations {
                let _ = writeln!(out, "    - {d}");
            }
        }
        out
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLAN: &str = "[artifact]\nurl = \"/b/db.dump\"\nengine = \"postgres\"\n";

    fn spec(text: &str) -> Result<ExerciseSpec, ExerciseError> {
        ExerciseSpec::from_toml(text, |name| match name {
            "db.toml" => Ok(PLAN.to_owned()),
            "set.toml" => Ok(format!(
                "{PLAN}pick = \"latest\"\n[pitr]\nwal_archive = \"/b/wal\"\n"
            )
            .replace("url = \"/b/db.dump\"", "url = \"/b/base/\"")),
            other => Err(format!("no file {other}")),
        })
    }

    const SHOP: &str = r#"
[exercise]
name = "shop DR"
region = "eu-west"
rto = "4h"
[[step]]
name = "db"
plan = "db.toml"
critical = true
[[step]]
name = "uploads"
plan = "db.toml"
[[step]]
name = "approve cutover"
kind = "gate"
after = ["db", "uploads"]
timeout = "30m"
"#;

    fn end(state: &str, at_ms: u64) -> JobEnd {
        JobEnd {
            state: state.into(),
            worker: Some("w1".into()),
            result: JobResult {
                job: String::new(),
                verdict: match state {
                    "passed" => Some(Verdict::Passed),
                    "failed" => Some(Verdict::Failed),
                    "error" => Some(Verdict::Error),
                    _ => None,
                },
                artifact_url: "/b/db.dump".into(),
                blake3: None,
                rto_ms: None,
                rpo_ms: None,
                phases: BTreeMap::from([("teardown".to_owned(), 3)]),
                tables: Vec::new(),
                reason: (state != "passed").then(|| format!("restore: it {state}")),
                restore_point: None,
                profile: Some("faithful".into()),
                exported: None,
                consistency: Vec::new(),
            },
            at_ms,
        }
    }

    #[test]
    fn the_file_is_checked_by_name() {
        assert!(spec(SHOP).is_ok());
        let e = |t: &str| spec(t).expect_err("refused").to_string();
        assert!(e(&SHOP.replace("rto = ", "colour = \"red\"\nrto = ")).contains("colour"));
        assert!(
            e(&SHOP.replace("after = [\"db\", \"uploads\"]", "after = [\"dbb\"]"))
                .contains("comes after \"dbb\", which is no step")
        );
        let cycle = SHOP.replace(
            "plan = \"db.toml\"\ncritical = true",
            "plan = \"db.toml\"\ncritical = true\nafter = [\"approve cutover\"]",
        );
        let msg = e(&cycle);
        assert!(
            msg.contains("cycle") && msg.contains("db") && msg.contains("approve cutover"),
            "{msg}"
        );
        assert!(
            !msg.contains("uploads"),
            "uploads is not on the cycle: {msg}"
        );
        assert!(
            e(&SHOP.replace("kind = \"gate\"", "kind = \"gate\"\nplan = \"db.toml\""))
                .contains("a gate has no plan")
        );
        let check = |sql: &str, files: &str| {
            format!(
                "{SHOP}[[consistency]]\nname = \"x\"\nsql = {{ step = \"{sql}\", query = \"SELECT p FROM t\" }}\nfiles = {{ step = \"{files}\" }}\n"
            )
        };
        assert!(e(&check("db", "nope")).contains("\"nope\" is no step"));
        assert!(
            e(&check("db", "uploads")).contains("files.step must be a step restoring a file tree")
        );
        assert!(
            e(&check("approve cutover", "db"))
                .contains("sql.step must be a step restoring a database")
        );
        assert!(
            e(&SHOP.replace(
                "plan = \"db.toml\"\ncritical",
                "plan = \"nope.toml\"\ncritical"
            ))
            .contains("no file nope.toml")
        );
        assert!(e(&SHOP.replace("rto = \"4h\"", "disaster = \"yesterday\"")).contains("RFC 3339"));
        let inline = "[exercise]\nname = \"x\"\n[[step]]\nname = \"a\"\n[step.plan.artifact]\nurl = \"/b/a.dump\"\nengine = \"postgres\"\n";
        assert_eq!(
            spec(inline).expect("inline plan").steps[0]
                .plan
                .as_ref()
                .map(|p| p.artifact.url.as_str()),
            Some("/b/a.dump")
        );
    }

    #[test]
    fn independent_steps_start_together_and_the_gate_after_both() {
        let mut x = Exercise::new("ex".into(), spec(SHOP).expect("spec"), 0);
        let jobs = x.advance(0);
        assert_eq!(jobs.iter().map(|j| j.step).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(jobs[0].id, "ex-s0-a1");
        let plan = &jobs[0].plan;
        assert_eq!(
            plan.placement.as_ref().and_then(|p| p.region.as_deref()),
            Some("eu-west"),
            "pinned to the exercise's region"
        );
        assert!(x.job_ended("ex-s0-a1", end("passed", 100)).is_empty());
        assert_eq!(
            x.steps[2].state,
            StepState::Waiting,
            "the gate waits for uploads too"
        );
        assert!(x.job_ended("ex-s1-a1", end("passed", 150)).is_empty());
        assert_eq!(x.steps[2].state, StepState::Running);
        assert!(x.approve("db", "ann", 160).is_err(), "db is no gate");
        x.approve("approve cutover", "ann", 400).expect("approved");
        assert_eq!(x.state, ExerciseState::Passed);
        let r = x.report();
        assert_eq!(r.verdict, Some(Verdict::Passed));
        assert_eq!(r.rto_ms, Some(400));
        assert_eq!(r.gate_wait_ms, 250);
        assert_eq!(r.machine_rto_ms, Some(150));
        assert_eq!(r.critical_path, ["uploads", "approve cutover"]);
        assert!(r.targets[0].ok);
        assert!(
            r.deviations
                .iter()
                .any(|d| d.contains("approved by ann after waiting"))
        );
        assert!(x.approve("approve cutover", "bob", 500).is_err(), "ended");
    }

    #[test]
    fn a_consistency_check_hands_the_databases_paths_to_the_file_tree_step() {
        let text = r#"
[exercise]
name = "x"
[[step]]
name = "db"
plan = "db.toml"
[[step]]
name = "uploads"
[step.plan.artifact]
url = "/b/uploads.tar"
engine = "files"
[[consistency]]
name = "every attachment exists"
sql = { step = "db", query = "SELECT path FROM attachments" }
files = { step = "uploads" }
"#;
        let spec = spec(text).expect("spec");
        assert_eq!(
            spec.steps[1].after,
            [0],
            "the tree is checked after the database answers"
        );
        let mut x = Exercise::new("ex".into(), spec, 0);
        let first = x.advance(0);
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0].plan.export.as_deref(),
            Some("SELECT path FROM attachments")
        );
        let mut db = end("passed", 10);
        db.result.exported = Some(crate::report::Exported {
            sql: "SELECT path FROM attachments".into(),
            rows: vec!["a/1.pdf".into(), "a/2.pdf".into()],
            truncated: false,
        });
        let next = x.job_ended("ex-s0-a1", db);
        let sets = &next[0].plan.files.as_ref().expect("files").consistency;
        assert_eq!(sets[0].name, "every attachment exists");
        assert_eq!(sets[0].paths, ["a/1.pdf", "a/2.pdf"]);
        Plan::from_raw(next[0].plan.clone()).expect("the adapted plan is valid");
        let mut files = end("failed", 20);
        files.result.consistency = vec![(
            "every attachment exists".into(),
            false,
            Some("1 of 2 paths are not in the archive: a/2.pdf".into()),
        )];
        x.job_ended("ex-s1-a1", files);
        let r = x.report();
        assert_eq!(r.verdict, Some(Verdict::Failed));
        assert_eq!(r.consistency[0].ok, Some(false));
        assert!(
            r.reason.as_deref().is_some_and(|r| r
                .starts_with("consistency check \"every attachment exists\" failed: 1 of 2 paths")),
            "{r:?}"
        );
    }

    #[test]
    fn steps_restore_faithfully_unless_told_and_a_fast_rto_says_so() {
        let mut x = Exercise::new("ex".into(), spec(SHOP).expect("spec"), 0);
        let jobs = x.advance(0);
        assert_eq!(
            jobs[0].plan.sandbox.as_ref().and_then(|s| s.profile),
            Some(crate::limits::Profile::Faithful)
        );
        let mut fast = end("passed", 100);
        fast.result.profile = Some("fast".into());
        x.job_ended("ex-s0-a1", fast);
        x.job_ended("ex-s1-a1", end("passed", 100));
        x.approve("approve cutover", "ann", 200).expect("approved");
        let r = x.report();
        assert!(r.targets[0].ok);
        assert_eq!(
            r.targets[0].note.as_deref(),
            Some("met under the fast profile (not production-like): db")
        );
        assert!(r.human().contains("met under the fast profile"));
    }

    #[test]
    fn a_failed_critical_step_halts_what_follows_while_other_branches_finish() {
        let text = r#"
[exercise]
name = "x"
[[step]]
name = "db"
plan = "db.toml"
critical = true
[[step]]
name = "app"
plan = "db.toml"
after = ["db"]
[[step]]
name = "smoke"
plan = "db.toml"
after = ["app"]
[[step]]
name = "files"
plan = "db.toml"
"#;
        let mut x = Exercise::new("ex".into(), spec(text).expect("spec"), 0);
        assert_eq!(x.advance(0).len(), 2);
        assert!(x.job_ended("ex-s0-a1", end("failed", 10)).is_empty());
        assert_eq!(x.steps[1].state, StepState::Halted);
        assert_eq!(x.steps[2].state, StepState::Halted, "transitively");
        assert_eq!(x.state, ExerciseState::Running, "files still runs");
        x.job_ended("ex-s3-a1", end("passed", 20));
        assert_eq!(x.steps[3].state, StepState::Passed);
        assert_eq!(x.state, ExerciseState::Failed);
        let r = x.report();
        assert!(
            r.reason
                .as_deref()
                .is_some_and(|r| r.contains("\"db\" failed")),
            "{r:?}"
        );
        assert_eq!(r.rto_ms, None, "the application is not back");
        assert!(r.deviations.iter().any(|d| d.contains("\"smoke\" halted")));
    }

    #[test]
    fn a_non_critical_step_that_fails_does_not_block_and_retries_are_counted() {
        let text = "[exercise]\nname = \"x\"\n[[step]]\nname = \"a\"\nplan = \"db.toml\"\nretries = 1\n[[step]]\nname = \"b\"\nplan = \"db.toml\"\nafter = [\"a\"]\n";
        let mut x = Exercise::new("ex".into(), spec(text).expect("spec"), 0);
        x.advance(0);
        let retry = x.job_ended("ex-s0-a1", end("error", 5));
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].id, "ex-s0-a2");
        let next = x.job_ended("ex-s0-a2", end("failed", 9));
        assert_eq!(
            next.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["ex-s1-a1"]
        );
        x.job_ended("ex-s1-a1", end("passed", 12));
        let r = x.report();
        assert_eq!(r.verdict, Some(Verdict::Failed), "a step failed");
        assert!(r.deviations.iter().any(|d| d.contains("ran 2 times")));
        assert!(r.deviations.iter().any(|d| d.contains("ran anyway")));
    }

    #[test]
    fn a_gate_not_approved_in_time_fails_and_an_abort_cancels_what_runs() {
        let mut x = Exercise::new("ex".into(), spec(SHOP).expect("spec"), 0);
        x.advance(0);
        x.job_ended("ex-s0-a1", end("passed", 10));
        x.job_ended("ex-s1-a1", end("passed", 10));
        assert!(x.overdue_gates(10 + 30 * 60_000 - 1).is_empty());
        x.expire_gates(10 + 30 * 60_000);
        assert_eq!(x.state, ExerciseState::Failed);
        assert!(
            x.report()
                .reason
                .is_some_and(|r| r.contains("not approved within 30m"))
        );

        let mut y = Exercise::new("ey".into(), spec(SHOP).expect("spec"), 0);
        y.advance(0);
        y.job_ended("ey-s0-a1", end("passed", 10));
        let cancel = y.abort("ops", "drill over", 20).expect("abort");
        assert_eq!(cancel, ["ey-s1-a1"]);
        assert_eq!(y.state, ExerciseState::Aborted);
        assert_eq!(y.steps[2].state, StepState::Aborted);
        // The cancelled job's end changes nothing more, and no retry starts.
        assert!(y.job_ended("ey-s1-a1", end("cancelled", 21)).is_empty());
        assert_eq!(y.report().exit_code(), 2);
        assert!(y.abort("ops", "again", 30).is_err());
    }

    #[test]
    fn rpo_skew_and_a_past_disaster_bound_the_restore_points() {
        let text = r#"
[exercise]
name = "x"
rpo = "1h"
disaster = "2026-11-30T12:00:00Z"
[[step]]
name = "db"
plan = "set.toml"
[[step]]
name = "files"
plan = "db.toml"
"#;
        let mut x = Exercise::new("ex".into(), spec(text).expect("spec"), 0);
        let jobs = x.advance(1_000);
        let db = &jobs[0].plan;
        assert_eq!(
            db.artifact.before.as_deref(),
            Some("2026-11-30T12:00:00.000Z")
        );
        assert_eq!(
            db.pitr.as_ref().and_then(|p| p.target.as_deref()),
            Some("2026-11-30T12:00:00.000Z")
        );
        assert_eq!(
            jobs[1].plan.artifact.before, None,
            "no pick, nothing to bound"
        );
        Plan::from_raw(db.clone()).expect("the adapted plan is valid");
        let mut e = end("passed", 50);
        e.result.restore_point = Some("2026-11-30T10:30:00Z".into());
        x.job_ended("ex-s0-a1", e);
        let mut f = end("passed", 60);
        f.result.restore_point = Some("2026-11-30T11:45:00Z".into());
        x.job_ended("ex-s1-a1", f);
        let r = x.report();
        assert_eq!(r.rpo_ms, Some(90 * 60_000));
        assert_eq!(r.restore_point_skew_ms, Some(75 * 60_000));
        assert_eq!(r.verdict, Some(Verdict::Failed));
        assert!(
            r.reason
                .is_some_and(|r| r.contains("RPO 1h 30m exceeds the target 1h 0m"))
        );
    }

    proptest! {
        /// Whatever the graph and the outcomes: every step ends, none starts before the steps
        /// it comes after have ended, job ids are unique, and the exercise ends with a verdict.
        #[test]
        fn every_exercise_ends_and_respects_its_order(
            edges in proptest::collection::vec((0usize..6, 0usize..6), 0..12),
            critical in proptest::collection::vec(any::<bool>(), 6),
            outcomes in proptest::collection::vec(0u8..4, 64),
        ) {
            let n = 6;
            let mut text = "[exercise]\nname = \"p\"\n".to_owned();
            for i in 0..n {
                // Only edges to earlier steps: always a DAG.
                let after: Vec<String> = edges.iter().filter(|(a, b)| *a == i && b < a).map(|(_, b)| format!("\"s{b}\"")).collect();
                let kind = if i == 5 { "kind = \"gate\"\n" } else { "plan = \"db.toml\"\nretries = 1\n" };
                text += &format!("[[step]]\nname = \"s{i}\"\n{kind}critical = {}\nafter = [{}]\n", critical[i], after.join(", "));
            }
            let mut x = Exercise::new("p".into(), spec(&text).expect("spec"), 0);
            let mut queue: Vec<StepJob> = x.advance(0);
            let mut seen = BTreeSet::new();
            let mut t = 0;
            let mut k = 0;
            while !x.state.is_final() {
                t += 1;
                if let Some(job) = queue.pop() {
                    prop_assert!(seen.insert(job.id.clone()));
                    let state = ["passed", "failed", "error", "passed"][outcomes[k % outcomes.len()] as usize];
                    k += 1;
                    queue.extend(x.job_ended(&job.id, end(state, t)));
                } else {
                    queue.extend(x.approve("s5", "p", t).expect("the only thing left is the gate"));
                }
                prop_assert!(t < 1000);
            }
            for (i, s) in x.steps.iter().enumerate() {
                prop_assert!(s.state.is_final());
                if let Some(start) = s.started_at_ms {
                    for &d in &x.spec.steps[i].after {
                        prop_assert!(x.steps[d].ended_at_ms.is_some_and(|e| e <= start));
                    }
                }
            }
            prop_assert!(x.report().verdict.is_some());
        }
    }
}
