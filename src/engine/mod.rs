//! The engine: one campaign step through THINK, CLAIM, RUN and PUBLISH, shared by the controller
//! (status in the API server) and the `loop` command (status in memory).
//!
//! [`Engine::reconcile`] is fast and idempotent: it reads the campaign, resumes ledger entries
//! that no task is running, asks the strategy for new experiments (THINK, persisted as `pending`),
//! picks a worker for each (CLAIM) and spawns a task per experiment. The tasks (see [`run`]) do the
//! slow part: price, sign, reserve in the ledger, send, and record the result (RUN, PUBLISH).
//! Every status change goes through a pure transition of [`crate::ledger`].

pub mod board;
pub mod run;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

use crate::crd::{
    DiscoverySpec, ExperimentCampaign, ExperimentCampaignStatus, PendingExperiment, Phase,
    WorkerCounts,
};
use crate::ledger::{self, Limits, Stop};
use crate::payment::RemoteSigner;
use crate::results::{ResultRecord, ResultsLog};
use crate::strategy::{self, History, Trial};
use crate::telemetry::Metrics;
use crate::usdc::Usdc;

pub use board::WorkerBoard;
pub use store::{CampaignStore, MemoryStore, UpdateError};

/// A worker the engine may use.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Service URL.
    pub endpoint: String,
    /// ERC-8004 agent id, if known.
    pub agent_id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
}

/// Where workers come from (discovery, or a fixed list).
pub trait WorkerSource: Send + Sync {
    /// Workers for a campaign's discovery settings; the implementation caches across campaigns.
    fn workers<'a>(
        &'a self,
        spec: &'a DiscoverySpec,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, String>>;
}

/// Only the campaign's static `discovery.workers`.
pub struct StaticWorkers;

impl WorkerSource for StaticWorkers {
    fn workers<'a>(
        &'a self,
        spec: &'a DiscoverySpec,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, String>> {
        Box::pin(async move { Ok(static_candidates(spec)) })
    }
}

/// The campaign's static workers as candidates.
pub fn static_candidates(spec: &DiscoverySpec) -> Vec<Candidate> {
    spec.workers
        .iter()
        .map(|w| Candidate {
            endpoint: w.endpoint.trim_end_matches('/').to_string(),
            agent_id: w.agent_id,
            name: w.name.clone(),
        })
        .collect()
}

/// How bad a notice is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Progress.
    Normal,
    /// Something the user may need to act on.
    Warning,
}

/// Something worth telling the user (a Kubernetes Event, or a line of `loop` output).
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// Normal or warning.
    pub severity: Severity,
    /// PascalCase reason, e.g. `ExperimentStarted`.
    pub reason: &'static str,
    /// What the engine did, e.g. `Pay`.
    pub action: &'static str,
    /// Human text.
    pub message: String,
}

/// Receives notices.
pub trait Notify: Send + Sync {
    /// Publishes one notice; never fails the caller.
    fn notify(&self, notice: Notice) -> BoxFuture<'_, ()>;
}

/// A campaign as the engine works on it: where its status lives, how to reach its payer, and
/// its resolved train.py (inline, or read from a ConfigMap by the controller).
#[derive(Clone)]
pub struct CampaignHandle {
    /// `namespace/name` (for `loop`: `local/<name>`).
    pub key: String,
    /// Namespace and name, for results.jsonl.
    pub namespace: Option<String>,
    /// Campaign name.
    pub name: String,
    /// Spec and status.
    pub store: Arc<dyn CampaignStore>,
    /// Events.
    pub notify: Arc<dyn Notify>,
    /// The remote signer for this campaign.
    pub signer: Arc<RemoteSigner>,
    /// The train.py source.
    pub train_py: Arc<str>,
}

/// Per-campaign memory of this process.
#[derive(Default)]
struct Runtime {
    /// Experiments with a task in this process.
    tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Every experiment of the campaign recorded in results.jsonl, by id.
    finished: HashMap<String, ResultRecord>,
    /// Results in arrival order (ids), for the strategy's history.
    order: Vec<String>,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a campaign with nothing to do is looked at again.
    pub idle_requeue: Duration,
    /// How often a campaign without workers retries discovery.
    pub no_worker_requeue: Duration,
    /// Poll interval for async (202) jobs.
    pub job_poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idle_requeue: Duration::from_secs(300),
            no_worker_requeue: Duration::from_secs(30),
            job_poll: Duration::from_secs(10),
        }
    }
}

/// The shared engine: one per process, for every campaign.
pub struct Engine {
    workers: Arc<dyn WorkerSource>,
    board: WorkerBoard,
    results: ResultsLog,
    metrics: Metrics,
    settings: Settings,
    runtimes: Mutex<HashMap<String, Runtime>>,
    /// Signalled whenever a task changes a campaign (for `loop`; the controller sees the write).
    pub changed: tokio::sync::Notify,
}

/// What a reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// When to look at the campaign again if nothing else happens.
    pub requeue: Duration,
    /// The campaign's phase after this step.
    pub phase: Phase,
}

impl Engine {
    /// An engine appending results to `results`.
    pub fn new(
        workers: Arc<dyn WorkerSource>,
        results: ResultsLog,
        metrics: Metrics,
        settings: Settings,
    ) -> Arc<Self> {
        Arc::new(Self {
            workers,
            board: WorkerBoard::default(),
            results,
            metrics,
            settings,
            runtimes: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// The metrics this engine records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The results log.
    pub fn results(&self) -> &ResultsLog {
        &self.results
    }

    /// Experiments with a task running in this process, for a campaign.
    pub fn running_tasks(&self, key: &str) -> usize {
        let map = self.runtimes.lock().expect("runtimes lock");
        map.get(key)
            .map_or(0, |r| r.tasks.values().filter(|t| !t.is_finished()).count())
    }

    /// Stops every task of every campaign (leadership lost, shutdown). In-flight payments are in
    /// the ledgers; the next leader resumes them.
    pub fn abort_all(&self) {
        let mut map = self.runtimes.lock().expect("runtimes lock");
        for runtime in map.values_mut() {
            for (_, task) in runtime.tasks.drain() {
                task.abort();
            }
        }
        map.clear();
    }

    /// Forgets a deleted campaign. Its running experiments are already paid: they finish and
    /// their results are appended to results.jsonl; their status writes find the campaign gone.
    pub fn forget(&self, key: &str) {
        self.runtimes.lock().expect("runtimes lock").remove(key);
    }

    /// One step of a campaign: resume, THINK, CLAIM, spawn RUN tasks, write status.
    pub async fn reconcile(self: &Arc<Self>, handle: &CampaignHandle) -> Result<Step, UpdateError> {
        let Some(campaign) = handle.store.get().await? else {
            self.forget(&handle.key);
            return Ok(Step {
                requeue: self.settings.idle_requeue,
                phase: Phase::Succeeded,
            });
        };
        let generation = campaign.metadata.generation;
        let limits = match Limits::from_spec(&campaign.spec).and_then(|l| {
            strategy::validate(&campaign.spec.search, campaign.spec.base_config.as_ref())
                .map(|()| l)
        }) {
            Ok(limits) => limits,
            Err(e) => return self.refuse_spec(handle, generation, e.to_string()).await,
        };
        self.load_history(handle);
        let status = campaign.status.clone().unwrap_or_default();
        self.resume_orphans(handle, &status);

        // THINK: top up `pending` to the free slots.
        let stop = ledger::stop_reason(&status, &limits);
        let active = stop.is_none() && !campaign.spec.suspend;
        let slots = if active {
            ledger::free_slots(&status, &limits) as usize
        } else {
            0
        };
        let (proposals, exhausted, state) = if slots > status.pending.len() {
            self.think(handle, &campaign, &status, slots - status.pending.len())
        } else {
            (Vec::new(), false, status.strategy_state.clone())
        };

        // CLAIM: the workers, and one per pending experiment.
        // A stopped or suspended campaign needs no workers: it keeps its last counts, and a
        // thousand idle campaigns cost no discovery.
        let discover = active || status.workers.is_none();
        let (candidates, discovery_error) = if !discover {
            (Vec::new(), None)
        } else {
            match self.workers.workers(&campaign.spec.discovery).await {
                Ok(c) => (c, None),
                Err(e) => {
                    self.metrics
                        .discovery_errors
                        .with_label_values(&["any"])
                        .inc();
                    (static_candidates(&campaign.spec.discovery), Some(e))
                }
            }
        };
        let candidates = eligible(&campaign.spec.discovery, candidates);
        // An experiment whose start task is still pricing or signing is not assigned again.
        let mut pending: Vec<PendingExperiment> = status
            .pending
            .iter()
            .filter(|p| !self.has_live_task(handle, &p.experiment_id))
            .cloned()
            .collect();
        pending.extend(proposals.iter().cloned());
        let slots = slots.saturating_sub(
            self.running_tasks(&handle.key)
                .saturating_sub(status.ledger.len()),
        );
        let assignments = if active {
            self.assign(
                &pending,
                slots,
                &candidates,
                &limits,
                &campaign.spec.discovery.prefer,
            )
        } else {
            Vec::new()
        };
        let cheapest = candidates
            .iter()
            .filter_map(|c| self.board.price(&c.endpoint))
            .min();
        let counts = WorkerCounts {
            discovered: candidates.len() as u32,
            eligible: candidates
                .iter()
                .filter(|c| {
                    self.board
                        .price(&c.endpoint)
                        .is_none_or(|p| p <= limits.max_price)
                })
                .count() as u32,
            busy: candidates
                .iter()
                .filter(|c| self.board.is_busy(&c.endpoint))
                .count() as u32,
            cooling_down: candidates
                .iter()
                .filter(|c| self.board.is_cooling(&c.endpoint))
                .count() as u32,
        };

        // PUBLISH the decision: proposals, strategy state, phase and conditions, in one write.
        let mut phase_out = Phase::Pending;
        let stored = handle
            .store
            .update(&mut |c, s| {
                let Ok(limits) = Limits::from_spec(&c.spec) else {
                    return Ok(());
                };
                ledger::propose(s, proposals.clone());
                s.strategy_state = state.clone();
                if discover {
                    s.workers = Some(counts.clone());
                }
                s.observed_generation = c.metadata.generation;
                ledger::refresh_derived(s, &limits);
                let verdict = verdict(
                    c,
                    s,
                    &limits,
                    exhausted,
                    cheapest,
                    &candidates,
                    discovery_error.as_deref(),
                );
                phase_out = verdict.phase;
                apply_verdict(s, verdict, c.metadata.generation, discover);
                Ok(())
            })
            .await?;
        let snapshot = Arc::new(stored.clone());
        let status = stored.status.unwrap_or_default();
        if let Some(best) = &status.best {
            self.metrics
                .best_val_bpb
                .with_label_values(&[handle.namespace.as_deref().unwrap_or(""), &handle.name])
                .set(best.val_bpb);
        }

        // RUN: a task per assignment (each one reserves its payment in the ledger first).
        for (experiment, worker) in assignments {
            if status
                .pending
                .iter()
                .any(|p| p.experiment_id == experiment.experiment_id)
                && self
                    .board
                    .try_claim(&worker.endpoint, &experiment.experiment_id)
            {
                self.spawn(
                    handle,
                    experiment.experiment_id.clone(),
                    run::start(
                        self.clone(),
                        handle.clone(),
                        snapshot.clone(),
                        experiment,
                        worker,
                    ),
                );
            }
        }

        let requeue = if candidates.is_empty() {
            self.settings.no_worker_requeue
        } else if status.running > 0 || !status.pending.is_empty() {
            // Tasks write status when they finish, which triggers the next step; this is a
            // safety net (and how a cooled-down worker gets picked up again).
            Duration::from_secs(30).min(self.settings.idle_requeue)
        } else {
            self.settings.idle_requeue
        };
        Ok(Step {
            requeue,
            phase: phase_out,
        })
    }

    async fn refuse_spec(
        &self,
        handle: &CampaignHandle,
        generation: Option<i64>,
        message: String,
    ) -> Result<Step, UpdateError> {
        let mut changed = false;
        handle
            .store
            .update(&mut |_, s| {
                let before = s.clone();
                s.phase = Some(Phase::Failed);
                s.observed_generation = generation;
                set_condition(
                    &mut s.conditions,
                    condition("SpecValid", false, "InvalidSpec", &message, generation),
                );
                changed = *s != before;
                Ok(())
            })
            .await?;
        if changed {
            handle
                .notify
                .notify(Notice {
                    severity: Severity::Warning,
                    reason: "InvalidSpec",
                    action: "Validate",
                    message,
                })
                .await;
        }
        Ok(Step {
            requeue: self.settings.idle_requeue,
            phase: Phase::Failed,
        })
    }

    /// Reads this campaign's past results from results.jsonl once per process.
    fn load_history(&self, handle: &CampaignHandle) {
        let mut map = self.runtimes.lock().expect("runtimes lock");
        if map.contains_key(&handle.key) {
            return;
        }
        let mut runtime = Runtime::default();
        match self.results.read_all() {
            Ok(records) => {
                for r in records.into_iter().filter(|r| belongs_to(r, handle)) {
                    runtime.order.push(r.experiment_id.clone());
                    runtime.finished.insert(r.experiment_id.clone(), r);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.results.path().display(), "cannot read results history")
            }
        }
        map.insert(handle.key.clone(), runtime);
    }

    /// The strategy's view: finished experiments, then everything in flight or pending.
    fn history(&self, handle: &CampaignHandle, status: &ExperimentCampaignStatus) -> History {
        let map = self.runtimes.lock().expect("runtimes lock");
        let mut history = History::new();
        if let Some(rt) = map.get(&handle.key) {
            for id in &rt.order {
                let r = &rt.finished[id];
                let outcome = match r.val_bpb {
                    Some(v) if ledger::is_valid_val_bpb(v) => strategy::Outcome::Succeeded(v),
                    _ => strategy::Outcome::Failed,
                };
                history.record(Trial {
                    experiment_id: id.clone(),
                    config: r.config.clone().unwrap_or(Value::Null),
                    outcome,
                });
            }
        }
        let in_flight = status
            .ledger
            .iter()
            .map(|e| (&e.experiment_id, &e.config))
            .chain(status.pending.iter().map(|p| (&p.experiment_id, &p.config)));
        for (id, config) in in_flight {
            history.record(Trial {
                experiment_id: id.clone(),
                config: config.clone().unwrap_or(Value::Null),
                outcome: strategy::Outcome::InFlight,
            });
        }
        history
    }

    fn think(
        &self,
        handle: &CampaignHandle,
        campaign: &ExperimentCampaign,
        status: &ExperimentCampaignStatus,
        n: usize,
    ) -> (Vec<PendingExperiment>, bool, BTreeMap<String, String>) {
        let history = self.history(handle, status);
        let mut state = status.strategy_state.clone();
        let spec = &campaign.spec;
        match strategy::propose(
            &spec.search,
            &spec.objective,
            spec.base_config.as_ref(),
            &handle.train_py,
            &history,
            &mut state,
            n,
        ) {
            Ok(batch) => {
                let proposals = batch
                    .proposals
                    .into_iter()
                    .map(|p| PendingExperiment {
                        experiment_id: p.experiment_id,
                        config: Some(p.config),
                        attempts: 0,
                        avoid: Vec::new(),
                    })
                    .collect();
                (proposals, batch.exhausted, state)
            }
            Err(e) => {
                tracing::warn!(campaign = %handle.key, error = %e, "strategy refused");
                (Vec::new(), false, status.strategy_state.clone())
            }
        }
    }

    /// Pairs pending experiments with free workers: preferred workers first, then by the last
    /// price seen (cheapest first; unknown prices after known ones), skipping busy, cooling and
    /// too-expensive workers and those an experiment must avoid.
    fn assign(
        &self,
        pending: &[PendingExperiment],
        slots: usize,
        candidates: &[Candidate],
        limits: &Limits,
        prefer: &[String],
    ) -> Vec<(PendingExperiment, Candidate)> {
        let mut free: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !self.board.is_busy(&c.endpoint) && !self.board.is_cooling(&c.endpoint))
            .filter(|c| {
                self.board
                    .price(&c.endpoint)
                    .is_none_or(|p| p <= limits.max_price)
            })
            .collect();
        free.sort_by_key(|c| {
            (
                !matches_any(prefer, c),
                self.board
                    .price(&c.endpoint)
                    .map_or(u128::MAX, Usdc::atomic),
                c.endpoint.clone(),
            )
        });
        let mut out = Vec::new();
        for experiment in pending.iter().take(slots) {
            if let Some(i) = free
                .iter()
                .position(|c| !experiment.avoid.contains(&c.endpoint))
            {
                out.push((experiment.clone(), free.remove(i).clone()));
            }
        }
        out
    }

    fn has_live_task(&self, handle: &CampaignHandle, experiment_id: &str) -> bool {
        let map = self.runtimes.lock().expect("runtimes lock");
        map.get(&handle.key)
            .and_then(|r| r.tasks.get(experiment_id))
            .is_some_and(|t| !t.is_finished())
    }

    fn resume_orphans(
        self: &Arc<Self>,
        handle: &CampaignHandle,
        status: &ExperimentCampaignStatus,
    ) {
        for entry in &status.ledger {
            if !self.has_live_task(handle, &entry.experiment_id) {
                self.board.hold(&entry.worker, &entry.experiment_id);
                self.spawn(
                    handle,
                    entry.experiment_id.clone(),
                    run::resume(self.clone(), handle.clone(), entry.clone()),
                );
            }
        }
    }

    fn spawn(
        &self,
        handle: &CampaignHandle,
        experiment_id: String,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let join = tokio::spawn(task);
        let mut map = self.runtimes.lock().expect("runtimes lock");
        map.entry(handle.key.clone())
            .or_default()
            .tasks
            .insert(experiment_id, join);
    }

    /// The recorded result of an experiment, if results.jsonl has it.
    fn recorded(&self, handle: &CampaignHandle, experiment_id: &str) -> Option<ResultRecord> {
        let map = self.runtimes.lock().expect("runtimes lock");
        map.get(&handle.key)?.finished.get(experiment_id).cloned()
    }

    /// Appends a result to results.jsonl once: a replayed completion finds it recorded.
    async fn record(&self, handle: &CampaignHandle, record: ResultRecord) -> std::io::Result<()> {
        if self.recorded(handle, &record.experiment_id).is_some() {
            return Ok(());
        }
        self.results.append(&record).await?;
        let mut map = self.runtimes.lock().expect("runtimes lock");
        let rt = map.entry(handle.key.clone()).or_default();
        rt.order.push(record.experiment_id.clone());
        rt.finished.insert(record.experiment_id.clone(), record);
        Ok(())
    }
}

fn belongs_to(record: &ResultRecord, handle: &CampaignHandle) -> bool {
    record.campaign_name.as_deref() == Some(handle.name.as_str())
        && record.campaign_namespace == handle.namespace
}

/// Whether a worker matches a `prefer` / `exclude` entry: an endpoint (or its prefix) or an
/// agent id.
fn matches_any(list: &[String], c: &Candidate) -> bool {
    list.iter().any(|p| {
        c.endpoint.starts_with(p.trim_end_matches('/'))
            || c.agent_id.is_some_and(|id| id.to_string() == *p)
    })
}

/// Drops excluded workers and duplicates; puts preferred ones first.
fn eligible(spec: &DiscoverySpec, candidates: Vec<Candidate>) -> Vec<Candidate> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| !matches_any(&spec.exclude, c))
        .filter(|c| seen.insert(c.endpoint.clone()))
        .collect();
    out.sort_by_key(|c| !matches_any(&spec.prefer, c));
    out
}

/// The phase and conditions a campaign's status should show.
struct Verdict {
    phase: Phase,
    conditions: Vec<(&'static str, bool, &'static str, String)>,
}

fn verdict(
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    limits: &Limits,
    exhausted: bool,
    cheapest: Option<Usdc>,
    candidates: &[Candidate],
    discovery_error: Option<&str>,
) -> Verdict {
    let idle = status.ledger.is_empty();
    let mut stop = ledger::stop_reason(status, limits);
    if stop.is_none() && idle && ledger::budget_stop(status, limits, cheapest) {
        stop = Some(Stop::BudgetExhausted);
    }
    let search_done = stop.is_none() && exhausted && idle && status.pending.is_empty();
    let workers = if candidates.is_empty() {
        let why = discovery_error
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        (
            false,
            "NoWorkers",
            format!("no worker found by discovery or in discovery.workers{why}; retrying"),
        )
    } else {
        (
            true,
            "WorkersFound",
            format!("{} workers", candidates.len()),
        )
    };
    let (phase, progressing) = match (stop, search_done, campaign.spec.suspend) {
        (Some(stop), _, _) if idle => (
            stop.phase(),
            (false, stop.reason(), stop_message(stop, status, limits)),
        ),
        (Some(stop), _, _) => (
            Phase::Running,
            (
                true,
                "Draining",
                format!(
                    "{}; waiting for {} experiments in flight",
                    stop_message(stop, status, limits),
                    status.ledger.len()
                ),
            ),
        ),
        (None, true, _) => (
            Phase::Succeeded,
            (
                false,
                "SearchExhausted",
                "the strategy has no experiment left to propose".to_string(),
            ),
        ),
        (None, false, true) if idle => (
            Phase::Suspended,
            (false, "Suspended", "spec.suspend is set".to_string()),
        ),
        (None, false, true) => (
            Phase::Running,
            (
                true,
                "Suspending",
                "spec.suspend is set; experiments in flight finish".to_string(),
            ),
        ),
        (None, false, false) if status.submitted == 0 && candidates.is_empty() => {
            (Phase::Pending, (false, "NoWorkers", workers.2.clone()))
        }
        (None, false, false) => (
            Phase::Running,
            (true, "Running", format!("{} running", status.ledger.len())),
        ),
    };
    let done = matches!(
        phase,
        Phase::Succeeded | Phase::Failed | Phase::BudgetExhausted
    );
    Verdict {
        phase,
        conditions: vec![
            ("SpecValid", true, "Valid", "the spec is valid".to_string()),
            ("WorkersAvailable", workers.0, workers.1, workers.2),
            (
                "Progressing",
                progressing.0,
                progressing.1,
                progressing.2.clone(),
            ),
            (
                "Complete",
                done,
                if done { progressing.1 } else { "InProgress" },
                if done {
                    progressing.2
                } else {
                    "not finished".to_string()
                },
            ),
        ],
    }
}

fn stop_message(stop: Stop, status: &ExperimentCampaignStatus, limits: &Limits) -> String {
    match stop {
        Stop::GoalReached => format!(
            "val_bpb {} reached the goal {}",
            status.best.as_ref().map_or(f64::NAN, |b| b.val_bpb),
            limits.goal.unwrap_or_default()
        ),
        Stop::MaxExperimentsReached => format!(
            "{} experiments finished (maxExperiments)",
            ledger::finished(status)
        ),
        Stop::TooManyFailures => format!(
            "{} experiments failed (maxFailedExperiments {})",
            status.failed, limits.max_failed
        ),
        Stop::BudgetExhausted => format!(
            "{} of {} USDC spent; what is left pays no acceptable worker",
            status.spent.as_deref().unwrap_or("0"),
            limits.total
        ),
    }
}

fn apply_verdict(
    status: &mut ExperimentCampaignStatus,
    verdict: Verdict,
    generation: Option<i64>,
    discovered: bool,
) {
    status.phase = Some(verdict.phase);
    for (type_, ok, reason, message) in verdict.conditions {
        if type_ == "WorkersAvailable" && !discovered {
            continue;
        }
        set_condition(
            &mut status.conditions,
            condition(type_, ok, reason, &message, generation),
        );
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Replaces the condition of the same type, keeping its transition time when its status did not
/// change (so that an unchanged condition does not cause a write).
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time: time,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// Discovery (8004scan, the chain, static lists) as the engine's worker source. A cold index scan
/// is slow (the public index allows about 10 requests a minute), so a reconcile waits for it only
/// briefly: the scan goes on in a task, static workers serve meanwhile, and the next reconcile
/// finds the cache warm.
pub struct Discovered {
    discovery: crate::discovery::Discovery,
    wait: Duration,
}

impl Discovered {
    /// Wraps a discovery service; `wait` bounds how long a reconcile waits for a refresh.
    pub fn new(discovery: crate::discovery::Discovery, wait: Duration) -> Self {
        Self { discovery, wait }
    }
}

impl WorkerSource for Discovered {
    fn workers<'a>(
        &'a self,
        spec: &'a DiscoverySpec,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, String>> {
        Box::pin(async move {
            let discovery = self.discovery.clone();
            let owned = spec.clone();
            let refresh = tokio::spawn(async move { discovery.workers(&owned).await });
            let set = match tokio::time::timeout(self.wait, refresh).await {
                Ok(Ok(Ok(set))) => set,
                Ok(Ok(Err(e))) => return Err(e.to_string()),
                Ok(Err(e)) => return Err(format!("discovery task failed: {e}")),
                Err(_) => match self.discovery.peek(spec).await {
                    Some(set) => set,
                    None => return Ok(static_candidates(spec)),
                },
            };
            Ok(set
                .workers
                .into_iter()
                .map(|w| Candidate {
                    endpoint: w.endpoint,
                    agent_id: w.agent_id,
                    name: Some(w.name),
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(endpoint: &str, agent_id: Option<u64>) -> Candidate {
        Candidate {
            endpoint: endpoint.into(),
            agent_id,
            name: None,
        }
    }

    fn pending(id: &str, avoid: &[&str]) -> PendingExperiment {
        PendingExperiment {
            experiment_id: id.into(),
            config: None,
            attempts: 0,
            avoid: avoid.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn claim_prefers_then_picks_the_cheapest_free_worker_and_skips_excluded_busy_and_avoided() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(
            Arc::new(StaticWorkers),
            ResultsLog::new(dir.path().join("r.jsonl")),
            Metrics::new(),
            Settings::default(),
        );
        let spec = DiscoverySpec {
            prefer: vec!["http://pricey.invalid".into()],
            exclude: vec!["7".into()],
            ..DiscoverySpec::default()
        };
        let all = vec![
            candidate("http://cheap.invalid/w", None),
            candidate("http://pricey.invalid/w", None),
            candidate("http://mid.invalid/w", None),
            candidate("http://excluded.invalid/w", Some(7)),
            candidate("http://busy.invalid/w", None),
            candidate("http://cheap.invalid/w", None),
        ];
        engine
            .board
            .note_price("http://cheap.invalid/w", Usdc::from_atomic(1));
        engine
            .board
            .note_price("http://mid.invalid/w", Usdc::from_atomic(3));
        engine
            .board
            .note_price("http://pricey.invalid/w", Usdc::from_atomic(5));
        assert!(engine.board.try_claim("http://busy.invalid/w", "other"));
        let candidates = eligible(&spec, all);
        assert_eq!(candidates.len(), 4, "excluded by agent id and deduplicated");
        let limits = Limits {
            total: Usdc::from_atomic(100),
            max_price: Usdc::from_atomic(10),
            max_experiments: 10,
            parallelism: 3,
            max_failed: 3,
            goal: None,
        };
        let work = [
            pending("a", &[]),
            pending("b", &[]),
            pending("c", &["http://mid.invalid/w"]),
        ];
        let picked: Vec<_> = engine
            .assign(&work, 3, &candidates, &limits, &spec.prefer)
            .into_iter()
            .map(|(p, c)| (p.experiment_id, c.endpoint))
            .collect();
        assert_eq!(
            picked,
            [
                ("a".to_string(), "http://pricey.invalid/w".to_string()),
                ("b".to_string(), "http://cheap.invalid/w".to_string()),
            ],
            "c avoids the only worker left"
        );
    }
}
