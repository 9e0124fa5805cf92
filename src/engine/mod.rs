//! The engine: one campaign step through THINK, CLAIM, RUN and PUBLISH, shared by the controller
//! (status in the API server) and the `loop` command (status in memory).
//!
//! [`Engine::reconcile`] is fast and idempotent, and reads as the loop:
//!
//! | step | function | module |
//! |---|---|---|
//! | resume | ledger entries without a task get one | [`run::resume`] |
//! | THINK | top up `pending` to the free slots | [`think`] |
//! | CLAIM | workers, and one per pending experiment | [`claim`] |
//! | PUBLISH | one status write: proposals, counts, phase, conditions | [`publish::decision`], [`status`] |
//! | RUN | a task per assignment: price, sign, reserve, send | [`run::start`] |
//!
//! A RUN task ends in [`publish::complete`] (results.jsonl, then status, then metrics and an
//! Event). Every status change goes through a pure transition of [`crate::ledger`].

mod ahead;
pub mod board;
pub mod claim;
pub mod configs;
pub mod memory;
pub mod propose;
pub mod publish;
pub mod run;
mod settle;
pub mod status;
pub mod store;
#[cfg(test)]
mod tests;
pub mod think;
pub mod trust;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::crd::{
    ExperimentCampaign, ExperimentCampaignStatus, PendingExperiment, Phase, WorkerCounts,
};
use crate::ledger::{self, Limits};
use crate::payment::RemoteSigner;
use crate::results::{ResultRecord, ResultsLog};
use crate::strategy;
use crate::telemetry::Metrics;

pub use board::WorkerBoard;
pub use claim::{
    Candidate, Discovered, Found, SourceError, StaticWorkers, WorkerSource, static_candidates,
};
use memory::Memory;
use status::Sighting;
pub use store::{CampaignStore, MemoryStore, UpdateError};
use think::Thought;

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

/// Where the best train.py goes when THINK's code is kept: a ConfigMap `<campaign>-best` in the
/// controller, `$DATA_DIR/autoresearch/<campaign>/best_train.py` in the CLI.
pub trait KeepBest: Send + Sync {
    /// Stores the source; returns where it is, for status. Failures are logged, never fatal.
    fn keep<'a>(&'a self, train_py: &'a str, train_hash: &'a str) -> BoxFuture<'a, Option<String>>;
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
    /// Where a kept train.py is published (none: nowhere).
    pub best: Option<Arc<dyn KeepBest>>,
    /// The model that proposes edits, for `search.strategy: llm`.
    pub proposer: Option<Arc<crate::strategy::llm::LlmProposer>>,
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
    /// How long a worker that failed is skipped first (doubling per consecutive failure).
    pub worker_cooldown: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idle_requeue: Duration::from_secs(300),
            no_worker_requeue: Duration::from_secs(30),
            job_poll: Duration::from_secs(10),
            worker_cooldown: board::BASE_COOLDOWN,
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
    memory: Memory,
    scripts: crate::scripts::ScriptStore,
    /// Signalled whenever a task ends (for `loop`, the one waiter; the controller sees the
    /// status write instead).
    pub changed: tokio::sync::Notify,
    /// The payment chain's USDC (`ERPC_URL`), the judge of uncertain payments; `None` when unset.
    chain: Option<Arc<crate::chain::UsdcChain>>,
    /// The payer balances read before signing.
    wallets: crate::chain::wallet::Wallets,
    /// HTTP clients for workers, shared by every experiment with the same timeout and policy.
    clients: crate::payment::clients::ClientPool,
    /// Each campaign's signer as its latest reconcile saw it, for vouchers signed ahead.
    signers: ahead::Signers,
}

/// What a reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// When to look at the campaign again if nothing else happens.
    pub requeue: Duration,
    /// The campaign's phase after this step; `None` when the campaign is gone.
    pub phase: Option<Phase>,
}

/// Whether a campaign may start experiments now, and how many.
#[derive(Clone, Copy, Debug)]
struct Capacity {
    /// Neither stopped nor suspended.
    active: bool,
    /// Free slots (parallelism and maxExperiments).
    slots: usize,
    /// Experiments that may be signed ahead for busy workers ([`ahead`]).
    ahead: usize,
}

/// What CLAIM found: the workers, their counts, and an assignment per startable experiment.
struct Claim {
    candidates: Vec<Candidate>,
    discovery_error: Option<String>,
    /// Set when the index's day quota is nearly spent.
    quota_low: Option<String>,
    /// Counts for status, when discovery ran (a stopped campaign keeps its last counts).
    counts: Option<WorkerCounts>,
    cheapest: Option<crate::usdc::Usdc>,
    assignments: Vec<(PendingExperiment, Candidate)>,
}

impl Engine {
    /// An engine appending results to `results`, keeping THINK's train.py sources in a
    /// `scripts` folder beside it.
    pub fn new(
        workers: Arc<dyn WorkerSource>,
        results: ResultsLog,
        metrics: Metrics,
        settings: Settings,
    ) -> Arc<Self> {
        let scripts_dir = results
            .path()
            .parent()
            .map_or_else(|| "scripts".into(), |dir| dir.join("scripts"));
        Arc::new(Self {
            scripts: crate::scripts::ScriptStore::new(scripts_dir),
            workers,
            board: WorkerBoard::with_cooldown(settings.worker_cooldown),
            results,
            metrics,
            settings,
            memory: Memory::default(),
            changed: tokio::sync::Notify::new(),
            chain: crate::chain::from_env_logged(),
            wallets: Default::default(),
            clients: Default::default(),
            signers: Default::default(),
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
        self.memory.running_tasks(key)
    }

    /// Campaigns this process remembers (for the memory benchmark and the deletion sweep).
    pub fn remembered(&self) -> usize {
        self.memory.len()
    }

    /// Stops every task of every campaign (leadership lost, shutdown). In-flight payments are in
    /// the ledgers; the next leader resumes them.
    pub fn abort_all(&self) {
        self.memory.abort_all();
    }

    /// Forgets a deleted campaign. Its running experiments are already paid: they finish and
    /// their results are appended to results.jsonl; their status writes find the campaign gone.
    pub fn forget(&self, key: &str) {
        self.memory.forget(key);
    }

    /// Forgets every campaign whose key `exists` says is gone.
    pub fn forget_missing(&self, exists: impl Fn(&str) -> bool) {
        self.memory.retain(exists);
    }

    /// A campaign being deleted: its ledger entries (paid experiments in flight) get a task
    /// if none runs them (after a restart); nothing new is proposed, claimed or started.
    /// The campaign is remembered first, as in a reconcile: after a restart, only its trust
    /// settings tell a resumed baseline run from an experiment that waits for one.
    pub fn drain(self: &Arc<Self>, handle: &CampaignHandle, campaign: &ExperimentCampaign) {
        let status = campaign.status.clone().unwrap_or_default();
        self.remember(handle, campaign, &status);
        self.resume_orphans(handle, &status);
    }

    /// The payment chain (`ERPC_URL`), when set.
    pub fn chain(&self) -> Option<&crate::chain::UsdcChain> {
        self.chain.as_deref()
    }

    /// Whether `campaign`'s payment chain can be read, shown as `ChainReadable` (see
    /// `settle::check_chain`); `Ok` without `ERPC_URL`.
    pub async fn check_chain(
        &self,
        handle: &CampaignHandle,
        campaign: &ExperimentCampaign,
    ) -> Result<(), crate::chain::ChainError> {
        let raised = status::is_false(campaign, status::ConditionType::ChainReadable);
        settle::check_chain(self, handle, campaign.spec.payment.network, raised).await
    }

    /// One step of a campaign: resume, THINK, CLAIM, PUBLISH the decision, spawn RUN tasks.
    pub async fn reconcile(self: &Arc<Self>, handle: &CampaignHandle) -> Result<Step, UpdateError> {
        let Some(campaign) = handle.store.get().await? else {
            self.forget(&handle.key);
            return Ok(Step {
                requeue: self.settings.idle_requeue,
                phase: None,
            });
        };
        let limits = match checked_limits(&campaign, &handle.train_py) {
            Ok(limits) => limits,
            Err(message) => return self.refuse(handle, &campaign, message).await,
        };
        let status = campaign.status.clone().unwrap_or_default();
        self.remember(handle, &campaign, &status);
        self.resume_orphans(handle, &status);
        let capacity = capacity(&campaign, &status, &limits);
        let thought = self.think(handle, &campaign, &status, capacity).await;
        let claim = self
            .claim(handle, &campaign, &status, &limits, &thought, capacity)
            .await;
        let stored = self
            .publish(handle, &thought, &claim, &status.strategy_state)
            .await?;
        let status = stored.status.clone().unwrap_or_default();
        self.spawn_runs(handle, Arc::new(stored), &status, claim.assignments);
        Ok(Step {
            requeue: self.requeue(&status, claim.candidates.is_empty()),
            phase: status.phase,
        })
    }

    async fn refuse(
        &self,
        handle: &CampaignHandle,
        campaign: &ExperimentCampaign,
        message: String,
    ) -> Result<Step, UpdateError> {
        publish::refuse_spec(handle, campaign.metadata.generation, message).await?;
        Ok(Step {
            requeue: self.settings.idle_requeue,
            phase: Some(Phase::Failed),
        })
    }

    /// Reads the campaign's past results once per process.
    fn remember(
        &self,
        handle: &CampaignHandle,
        campaign: &ExperimentCampaign,
        status: &ExperimentCampaignStatus,
    ) {
        let belongs = |r: &ResultRecord| belongs_to(r, handle);
        let noise_floor = campaign.spec.objective.noise_floor;
        self.memory
            .configure(&handle.key, think::trust_settings(handle, campaign));
        self.memory
            .load(&handle.key, belongs, &self.results, status, noise_floor);
        self.memory.set_noise_floor(&handle.key, noise_floor);
    }

    /// THINK: proposals for the free slots not already pending. Changed code is stored first:
    /// a proposal whose source could not be stored is dropped (it comes back next time).
    async fn think(
        self: &Arc<Self>,
        handle: &CampaignHandle,
        campaign: &ExperimentCampaign,
        status: &ExperimentCampaignStatus,
        capacity: Capacity,
    ) -> Thought {
        let ahead = ahead::wanted(self, handle, campaign, status, capacity.ahead);
        let wanted = (capacity.slots + ahead).saturating_sub(status.pending.len());
        if campaign.spec.search.strategy == crate::crd::Strategy::Llm {
            // A model call takes seconds: it runs in its own task, never in a reconcile.
            propose::maybe_start(self, handle, campaign, status, wanted);
            return Thought::none(status);
        }
        let mut thought = think::think(&self.memory, handle, campaign, status, wanted);
        for source in std::mem::take(&mut thought.scripts) {
            if let Err(e) = self.scripts.put(&source).await {
                tracing::error!(campaign = %handle.key, error = %e, "cannot store a proposed train.py");
                let hash = crate::experiment::train_hash(&source);
                thought
                    .proposals
                    .retain(|p| p.train_hash.as_deref() != Some(hash.as_str()));
            }
        }
        configs::park_all(&self.scripts, &handle.key, &mut thought.proposals).await;
        thought
    }

    /// CLAIM: the workers, and one per pending experiment that no task is starting yet.
    async fn claim(
        &self,
        handle: &CampaignHandle,
        campaign: &ExperimentCampaign,
        status: &ExperimentCampaignStatus,
        limits: &Limits,
        thought: &Thought,
        capacity: Capacity,
    ) -> Claim {
        // A stopped or suspended campaign needs no workers: it keeps its last counts, and a
        // thousand idle campaigns cost no discovery.
        let discover = capacity.active || status.workers.is_none();
        let spec = &campaign.spec.discovery;
        let (found, discovery_error) = if discover {
            self.discover(spec).await
        } else {
            (Found::default(), None)
        };
        let candidates = claim::eligible(spec, found.candidates);
        let candidates = self.memory.screen(&handle.key, candidates, discover);
        let (counts, cheapest) = claim::count(&self.board, &candidates, limits);
        let assignments = if capacity.active {
            let mut pending: Vec<PendingExperiment> = status
                .pending
                .iter()
                .filter(|p| !self.memory.has_live_task(&handle.key, &p.experiment_id))
                .cloned()
                .collect();
            pending.extend(thought.proposals.iter().cloned());
            // Tasks still pricing or signing hold a slot without a ledger entry yet.
            let starting = self
                .running_tasks(&handle.key)
                .saturating_sub(status.ledger.len());
            let slots = capacity.slots.saturating_sub(starting);
            // A worker known to cost more than what is left is not asked again.
            let left = ledger::budget_left(status, limits).unwrap_or(crate::usdc::Usdc::ZERO);
            let cap = limits.max_price.min(left);
            let avoid = self.memory.avoid_map(&handle.key);
            claim::assign(
                &self.board,
                &pending,
                slots,
                &candidates,
                cap,
                &spec.prefer,
                &avoid,
            )
        } else {
            Vec::new()
        };
        Claim {
            candidates,
            discovery_error,
            quota_low: found.quota_low,
            counts: discover.then_some(counts),
            cheapest,
            assignments,
        }
    }

    /// Workers from the source; on failure the static ones, and the error for the condition.
    async fn discover(&self, spec: &crate::crd::DiscoverySpec) -> (Found, Option<String>) {
        match self.workers.workers(spec).await {
            Ok(found) => (found, None),
            Err(e) => {
                self.metrics
                    .discovery_errors
                    .with_label_values(&["any"])
                    .inc();
                (static_candidates(spec).into(), Some(e.to_string()))
            }
        }
    }

    /// PUBLISH the decision in one write, and the best val_bpb as a metric.
    async fn publish(
        &self,
        handle: &CampaignHandle,
        thought: &Thought,
        claim: &Claim,
        base: &strategy::State,
    ) -> Result<ExperimentCampaign, UpdateError> {
        let decided = publish::ReconcileWrite {
            proposals: &thought.proposals,
            state: &thought.state,
            base,
            exhausted: thought.exhausted,
            counts: claim.counts.as_ref(),
            seen: Sighting {
                workers: claim.candidates.len(),
                cheapest: claim.cheapest,
                discovery_error: claim.discovery_error.as_deref(),
                quota_low: claim.quota_low.as_deref(),
                discovered: claim.counts.is_some(),
            },
            trust: &|s| {
                self.memory.publish(&handle.key, s, None);
            },
        };
        let started = std::time::Instant::now();
        let stored = publish::decision(handle, &decided).await?;
        self.metrics
            .step(crate::telemetry::StepLabel::Decide, started.elapsed());
        if let Some(best) = stored.status.as_ref().and_then(|s| s.best.as_ref()) {
            self.metrics
                .best_val_bpb
                .with_label_values(&[handle.namespace.as_deref().unwrap_or(""), &handle.name])
                .set(best.val_bpb);
        }
        Ok(stored)
    }

    /// RUN: a task per assignment whose experiment is still pending and whose worker is free.
    fn spawn_runs(
        self: &Arc<Self>,
        handle: &CampaignHandle,
        stored: Arc<ExperimentCampaign>,
        status: &ExperimentCampaignStatus,
        assignments: Vec<(PendingExperiment, Candidate)>,
    ) {
        for (experiment, worker) in assignments {
            let id = experiment.experiment_id.clone();
            if status.pending.iter().any(|p| p.experiment_id == id)
                && self
                    .board
                    .try_claim(worker.endpoint.as_str(), &board::holder(&handle.key, &id))
            {
                let task = run::start(
                    self.clone(),
                    handle.clone(),
                    stored.clone(),
                    experiment,
                    worker,
                );
                self.spawn(handle, id, task);
            }
        }
        ahead::spawn_all(self, handle, &stored, status);
    }

    /// RUN: ledger entries without a task in this process (after a restart) are resumed.
    fn resume_orphans(
        self: &Arc<Self>,
        handle: &CampaignHandle,
        status: &ExperimentCampaignStatus,
    ) {
        for entry in &status.ledger {
            if !self.memory.has_live_task(&handle.key, &entry.experiment_id) {
                let holder = board::holder(&handle.key, &entry.experiment_id);
                // A voucher signed ahead waits for its worker; and an entry read just before its
                // task ended must not take the worker from the experiment running there now.
                if !ledger::is_ahead(entry) {
                    self.board.hold_if_free(&entry.worker, &holder);
                }
                let id = entry.experiment_id.clone();
                let task = run::resume(self.clone(), handle.clone(), entry.clone());
                self.spawn(handle, id, task);
            }
        }
    }

    /// Runs an experiment's task. When it ends, it is forgotten *before* the next reconcile is
    /// woken: a JoinHandle reads as finished only after its future returned, so a reconcile woken
    /// from inside the task would still see the experiment as taken and wait for a requeue.
    fn spawn(
        self: &Arc<Self>,
        handle: &CampaignHandle,
        experiment_id: String,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let engine = Arc::downgrade(self);
        let (key, id) = (handle.key.clone(), experiment_id.clone());
        let join = tokio::spawn(async move {
            task.await;
            if let Some(engine) = engine.upgrade() {
                engine.memory.remove_task(&key, &id);
                // One stored permit: a `loop` busy in a reconcile right now wakes as soon as it
                // waits again, instead of missing the change and sleeping until its requeue.
                engine.changed.notify_one();
            }
        });
        self.memory.add_task(&handle.key, experiment_id, join);
    }

    fn requeue(&self, status: &ExperimentCampaignStatus, no_workers: bool) -> Duration {
        if no_workers {
            self.settings.no_worker_requeue
        } else if status.running > 0 || !status.pending.is_empty() {
            // Tasks write status when they finish, which triggers the next step; this is a
            // safety net (and how a cooled-down worker gets picked up again).
            Duration::from_secs(30).min(self.settings.idle_requeue)
        } else {
            self.settings.idle_requeue
        }
    }
}

/// The spec's limits, once the strategy has accepted the search too; the message says what to fix.
fn checked_limits(campaign: &ExperimentCampaign, train_py: &str) -> Result<Limits, String> {
    let spec = &campaign.spec;
    let limits = Limits::from_spec(spec).map_err(|e| e.to_string())?;
    strategy::validate(&spec.search, spec.base_config.as_ref(), train_py)
        .map_err(|e| e.to_string())?;
    Ok(limits)
}

fn capacity(
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    limits: &Limits,
) -> Capacity {
    let active = ledger::stop_reason(status, limits).is_none() && !campaign.spec.suspend;
    Capacity {
        active,
        slots: if active {
            ledger::free_slots(status, limits) as usize
        } else {
            0
        },
        ahead: if active && ahead::enabled() {
            ledger::ahead_slots(status, limits) as usize
        } else {
            0
        },
    }
}

fn belongs_to(record: &ResultRecord, handle: &CampaignHandle) -> bool {
    record.campaign_name.as_deref() == Some(handle.name.as_str())
        && record.campaign_namespace == handle.namespace
}
