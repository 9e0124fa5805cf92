//! PUBLISH: everything that makes a decision or a result visible and durable.
//!
//! - [`decision`]: the reconcile's one status write (new proposals, strategy state, worker
//!   counts, phase and conditions);
//! - [`complete`]: the end of an experiment. results.jsonl first (flushed), then the status write
//!   that removes its ledger entry and counts it (exactly once, see `ledger::complete`), then
//!   metrics and an Event;
//! - [`refuse_spec`]: SpecValid=False for a spec that cannot run.
//!
//! RUN calls [`complete`]; the reconcile calls [`decision`]. Neither calls back into the other.

use std::time::{Duration, Instant};

use super::board;
use super::status::{self, ConditionType, ConditionUpdate, Sighting};
use super::{CampaignHandle, Engine, Notice, Severity};
use crate::crd::{ExperimentCampaign, LedgerEntry, PendingExperiment, Phase, WorkerCounts};
use crate::experiment;
use crate::failpoint::{self, Window};
use crate::ledger::{self, Ending, Limits, Recorded, Refusal};
use crate::payment::Voucher;
use crate::results::{ResultRecord, RunStatus};
use crate::strategy::State;
use crate::telemetry::StepLabel;
use crate::usdc::Usdc;

use super::store::UpdateError;

/// The label of `autoresearch_experiments_total` (and of the duration histogram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultLabel {
    /// A valid result.
    Succeeded,
    /// A failed run, counted against `maxFailedExperiments`.
    Failed,
    /// The worker failed (retried elsewhere when nothing was paid).
    WorkerFailure,
}

impl ResultLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultLabel::Succeeded => "succeeded",
            ResultLabel::Failed => "failed",
            ResultLabel::WorkerFailure => "worker_failure",
        }
    }

    /// The label for an outcome.
    pub fn of(outcome: &Ending) -> Self {
        match outcome {
            Ending::Finished {
                result: Some(_), ..
            } => ResultLabel::Succeeded,
            Ending::Finished { .. } => ResultLabel::Failed,
            Ending::WorkerFailed { .. } => ResultLabel::WorkerFailure,
        }
    }
}

/// What a reconcile decided, to be written in one status update.
pub struct ReconcileWrite<'a> {
    /// New proposals for `pending`.
    pub proposals: &'a [PendingExperiment],
    /// The strategy's state after proposing.
    pub state: &'a State,
    /// The strategy's state THINK proposed from (the status the reconcile read).
    pub base: &'a State,
    /// Whether the strategy has nothing left to propose.
    pub exhausted: bool,
    /// Worker counts, when discovery ran.
    pub counts: Option<&'a WorkerCounts>,
    /// What CLAIM saw.
    pub seen: Sighting<'a>,
    /// Writes noise, reputation and the verified best ([`super::trust`]).
    pub trust: &'a (dyn Fn(&mut crate::crd::ExperimentCampaignStatus) + Sync),
}

/// Writes a reconcile's decision; returns the campaign as stored.
pub async fn decision(
    handle: &CampaignHandle,
    decided: &ReconcileWrite<'_>,
) -> Result<ExperimentCampaign, UpdateError> {
    handle
        .store
        .update(&mut |c, s| {
            let limits = Limits::from_spec(&c.spec)?;
            // THINK proposed from the state it read. If another writer moved the strategy on
            // meanwhile (a second controller, the model task), these proposals and this state
            // are stale: writing them would rewind the search and re-propose, and pay again
            // for, experiments already run. Keep what is stored; the next reconcile proposes.
            if s.strategy_state == *decided.base {
                ledger::propose(s, decided.proposals.to_vec());
                s.strategy_state = decided.state.clone();
            }
            if let Some(counts) = decided.counts {
                s.workers = Some(counts.clone());
            }
            s.observed_generation = c.metadata.generation;
            (decided.trust)(s);
            // With experiments in flight, only their completion proves the status fits again
            // (this write may succeed merely because it adds nothing).
            if s.ledger.is_empty() {
                clear(s, ConditionType::StatusTooLarge, "Fits", FITS);
            }
            ledger::refresh_derived(s, &limits);
            let verdict = status::verdict(c, s, &limits, decided.exhausted, &decided.seen);
            status::apply(s, verdict, c.metadata.generation);
            if s.ledger.is_empty() && s.phase.is_some_and(Phase::is_final) {
                // Done: what is still proposed will never start (a proposal made for a slot a
                // replication or a retry then took); status does not show it as waiting.
                s.pending.clear();
            }
            Ok(())
        })
        .await
}

/// Marks the spec invalid (phase Failed) and says why, once.
pub async fn refuse_spec(
    handle: &CampaignHandle,
    generation: Option<i64>,
    message: String,
) -> Result<(), UpdateError> {
    let mut changed = false;
    let update = ConditionUpdate {
        kind: ConditionType::SpecValid,
        ok: false,
        reason: "InvalidSpec",
        message: message.clone(),
    };
    handle
        .store
        .update(&mut |_, s| {
            let before = s.clone();
            s.phase = Some(crate::crd::Phase::Failed);
            s.observed_generation = generation;
            status::set_condition(&mut s.conditions, status::condition(&update, generation));
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
    Ok(())
}

/// Appends a result to results.jsonl once: a replayed completion finds it recorded.
pub async fn record(
    engine: &Engine,
    handle: &CampaignHandle,
    record: ResultRecord,
) -> std::io::Result<()> {
    if engine
        .memory
        .is_recorded(&handle.key, &record.experiment_id)
    {
        return Ok(());
    }
    // keep, discard or crash against the best kept so far, as autoresearch's results.tsv says.
    let mut record = record;
    (record.role, record.replicates) = engine
        .memory
        .role(&handle.key, &record.experiment_id)
        .fields();
    record.decision = Some(
        engine
            .memory
            .decide(&handle.key, &record)
            .as_str()
            .to_string(),
    );
    engine.results.append(&record).await?;
    engine.memory.recorded(&handle.key, record);
    Ok(())
}

/// Finishes an experiment: results.jsonl, then status, then metrics and an Event.
pub async fn complete(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: Ending,
    tx: Option<String>,
) {
    // An attempt that paid nothing and goes to another worker leaves no line.
    let retried = matches!(&outcome, Ending::WorkerFailed { paid, .. } if *paid == Usdc::ZERO && entry.attempt < ledger::MAX_ATTEMPTS);
    after_the_baseline(engine, handle, entry, &outcome).await;
    let started = std::time::Instant::now();
    if !retried && !append(engine, handle, entry, &outcome, tx.clone()).await {
        return;
    }
    engine.metrics.step(StepLabel::Record, started.elapsed());
    failpoint::crash_at(Window::AfterAppend);
    let started = std::time::Instant::now();
    let Some((recorded, running)) = count(engine, handle, entry, &outcome, retried).await else {
        return;
    };
    engine.metrics.step(StepLabel::Status, started.elapsed());
    failpoint::crash_at(Window::AfterStatus);
    engine.memory.confirm(&handle.key, &entry.experiment_id);
    engine
        .metrics
        .in_flight
        .with_label_values(&[handle.namespace.as_deref().unwrap_or(""), &handle.name])
        .set(running.into());
    if recorded != Recorded::AlreadyCounted {
        tell(engine, handle, entry, &outcome, &recorded, tx.as_deref()).await;
    }
}

/// How often a result waiting for the baseline looks again.
const BASELINE_POLL: Duration = Duration::from_millis(20);

/// How often a waiting result reads the campaign while no baseline run is in flight here.
const BASELINE_READ: Duration = Duration::from_millis(500);

/// THINK proposes experiments while the baseline runs go (docs/trust.md), but keep or discard
/// is decided against the baseline: a result that comes back first waits for it before it is
/// recorded. Its worker is free meanwhile (it answered). The ledger entry stays until the result
/// is recorded, so a crash meanwhile finishes it from the worker's stored result, unpaid again.
/// It waits while a baseline run is in flight, or pending and able to start; at most one
/// experiment timeout. Then it is recorded and judged as if there were no baseline, and the log
/// says so.
async fn after_the_baseline(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: &Ending,
) {
    let key = &handle.key;
    let valued = matches!(
        outcome,
        Ending::Finished {
            result: Some(_),
            ..
        }
    );
    let experiment =
        engine.memory.role(key, &entry.experiment_id) == super::trust::RunRole::Experiment;
    if !valued || !experiment || !engine.memory.holds(key) {
        return;
    }
    let holder = board::holder(key, &entry.experiment_id);
    engine.board.release(&entry.worker, &holder, false);
    // The worker is free: a baseline run waiting for one may start on it (`loop` reconciles
    // on this; the controller's requeue is the safety net).
    engine.changed.notify_one();
    // One read gives the timeout and the first look at whether a baseline run can come.
    let mut read = Some(handle.store.get().await);
    let timeout = match &read {
        Some(Ok(Some(c))) => c.spec.experiment_timeout_seconds,
        _ => 0,
    };
    let deadline = Instant::now() + Duration::from_secs(timeout.into());
    let mut read_at: Option<Instant> = None;
    while engine.memory.holds(key) {
        if Instant::now() >= deadline {
            tracing::warn!(campaign = %key, experiment = %entry.experiment_id, "no baseline after one experiment timeout; recorded and judged without one");
            return;
        }
        if engine.memory.baseline_running(key) {
            // What was read is stale by the time the run ends.
            read = None;
        } else {
            if read.is_none() && read_at.is_none_or(|at| at.elapsed() >= BASELINE_READ) {
                read_at = Some(Instant::now());
                read = Some(handle.store.get().await);
            }
            if let Some(read) = read.take()
                && !matches!(&read, Ok(Some(c)) if baseline_to_come(engine, handle, c))
            {
                tracing::info!(campaign = %key, experiment = %entry.experiment_id, "no baseline run can come; recorded and judged without a baseline");
                return;
            }
        }
        tokio::time::sleep(BASELINE_POLL).await;
    }
}

/// Whether a baseline run is still to come: in the ledger (running, here or resumed), or able
/// to start (room under `maxExperiments` in a campaign that is not deleted, suspended or
/// stopped: a deleted one only drains its ledger). Not
/// only when one is pending: after a failed baseline run, THINK proposes the next one at the
/// next reconcile, and a result judged in between would have no baseline.
fn baseline_to_come(engine: &Engine, handle: &CampaignHandle, c: &ExperimentCampaign) -> bool {
    let Ok(limits) = Limits::from_spec(&c.spec) else {
        return false;
    };
    let status = c.status.clone().unwrap_or_default();
    let baseline =
        |id: &str| engine.memory.role(&handle.key, id) == super::trust::RunRole::Baseline;
    let running = status.ledger.iter().any(|e| baseline(&e.experiment_id));
    let can_start = c.metadata.deletion_timestamp.is_none()
        && !c.spec.suspend
        && ledger::stop_reason(&status, &limits).is_none()
        && ledger::unstarted(&status, &limits) > 0;
    running || can_start
}

/// The durable line in results.jsonl. Without it the status must not count the experiment:
/// on failure the ledger entry stays, so the next resume tries again, and the condition says so.
async fn append(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: &Ending,
    tx: Option<String>,
) -> bool {
    let line = result_record(handle, entry, outcome, tx);
    let Err(e) = record(engine, handle, line).await else {
        return true;
    };
    tracing::error!(error = %e, experiment = %entry.experiment_id, "cannot append to results.jsonl; will retry");
    engine.board.release(
        &entry.worker,
        &board::holder(&handle.key, &entry.experiment_id),
        false,
    );
    let message = format!(
        "cannot append to {}: {e}; experiment {} stays in the ledger and is recorded when the file is writable again (check the volume: space, permissions)",
        engine.results.path().display(),
        entry.experiment_id
    );
    let update = ConditionUpdate {
        kind: ConditionType::ResultsWritable,
        ok: false,
        reason: "ResultsUnwritable",
        message,
    };
    raise(&*handle.store, &*handle.notify, &update, "Record").await;
    false
}

/// Counts the experiment in status (the ledger entry becomes a result) and frees its worker.
/// Returns how it was counted and how many experiments are still running, or None when the
/// status write failed (the entry stays; a resume finishes it from results.jsonl).
async fn count(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: &Ending,
    retried: bool,
) -> Option<(Recorded, u32)> {
    let mut recorded = None;
    let before = engine.memory.announced_best(&handle.key);
    let stored = handle
        .store
        .update(&mut |c, s| {
            let limits = Limits::from_spec(&c.spec)?;
            let counted = count_in(
                engine,
                handle,
                s,
                &limits,
                entry,
                outcome,
                before.as_deref(),
            );
            recorded = Some(counted?);
            if !retried {
                clear(
                    s,
                    ConditionType::ResultsWritable,
                    "Appended",
                    "results.jsonl takes appends",
                );
            }
            clear(s, ConditionType::StatusTooLarge, "Fits", FITS);
            Ok(())
        })
        .await;
    let worker_failed = matches!(outcome, Ending::WorkerFailed { .. });
    engine.board.release(
        &entry.worker,
        &board::holder(&handle.key, &entry.experiment_id),
        worker_failed,
    );
    match stored {
        Ok(stored) => {
            let mut recorded = recorded?;
            if let Recorded::Counted { new_best, .. } = &mut recorded
                && *new_best
            {
                let now = stored.status.as_ref().and_then(|s| s.best.as_ref());
                let now = now.map(|b| b.experiment_id.as_str());
                *new_best = engine
                    .memory
                    .announce_best(&handle.key, before.as_deref(), now);
            }
            Some((recorded, stored.status.map_or(0, |s| s.running)))
        }
        Err(e) => {
            tracing::warn!(campaign = %handle.key, experiment = %entry.experiment_id, error = %e, "result recorded in results.jsonl but not in status");
            if let UpdateError::TooLarge { message, .. } = &e {
                let update = too_large(message);
                raise(&*handle.store, &*handle.notify, &update, "Record").await;
            }
            None
        }
    }
}

/// The ledger transition for one completion, inside a status update.
fn count_in(
    engine: &Engine,
    handle: &CampaignHandle,
    s: &mut crate::crd::ExperimentCampaignStatus,
    limits: &Limits,
    entry: &LedgerEntry,
    outcome: &Ending,
    announced: Option<&str>,
) -> Result<Recorded, Refusal> {
    // The entry this task paid for, by its voucher: if the experiment's entry now holds another
    // voucher (it was retried meanwhile), this completion is not its. If another controller gave
    // this voucher up as unpaid and the experiment waits for a retry, a paid ending counts it.
    let own = s
        .ledger
        .iter()
        .any(|e| e.experiment_id == entry.experiment_id && e.nonce == entry.nonce);
    let mut recorded = if own {
        ledger::complete(s, limits, &entry.experiment_id, outcome.clone())?
    } else {
        ledger::complete_given_up(s, limits, entry, outcome.clone())?
    };
    if recorded == Recorded::AlreadyCounted {
        return Ok(recorded);
    }
    // The best is the verified one: "new best" means it changed since it was last announced.
    let changed = engine.memory.publish(&handle.key, s, announced);
    if let Recorded::Counted { new_best, .. } = &mut recorded
        && engine.memory.replicating(&handle.key)
    {
        *new_best = changed;
    }
    Ok(recorded)
}

/// Metrics, the best train.py, the Event, and what trust has to say.
async fn tell(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: &Ending,
    recorded: &Recorded,
    tx: Option<&str>,
) {
    let paid = outcome.paid();
    if paid > Usdc::ZERO {
        engine
            .metrics
            .paid(&network_of(entry).unwrap_or_default(), paid);
    }
    if matches!(recorded, Recorded::Counted { new_best: true, .. }) {
        keep_best(engine, handle, entry).await;
    }
    let (labels, notice) = describe(outcome, recorded, entry, paid, tx);
    for label in labels {
        engine
            .metrics
            .experiments
            .with_label_values(&[label.as_str()])
            .inc();
    }
    handle.notify.notify(notice).await;
    super::trust::announce(engine, handle).await;
}

/// Sets a condition that stops the campaign (see `status::blocked`) and, when it was not already
/// so, publishes it as a Warning Event with the condition's reason: every stall shows in
/// `kubectl describe`, not only in the log. Failures to write are logged: the caller retries.
/// Returns whether the condition changed (and the Event was published).
pub async fn raise(
    store: &dyn super::CampaignStore,
    notify: &dyn super::Notify,
    update: &ConditionUpdate,
    action: &'static str,
) -> bool {
    let mut changed = false;
    let stored = store
        .update(&mut |c, s| {
            let before = s.conditions.clone();
            let generation = c.metadata.generation;
            status::set_condition(&mut s.conditions, status::condition(update, generation));
            // Progressing says so in the same write: a reconcile that fails before its
            // decision (a missing Secret) would never update it.
            if let Some((reason, message)) = status::blocked(s) {
                let progressing = ConditionUpdate {
                    kind: ConditionType::Progressing,
                    ok: false,
                    reason,
                    message,
                };
                status::set_condition(
                    &mut s.conditions,
                    status::condition(&progressing, generation),
                );
            }
            changed = s.conditions != before;
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, condition = update.kind.as_str(), "could not write the condition");
    }
    if changed {
        notify
            .notify(Notice {
                severity: Severity::Warning,
                reason: update.reason,
                action,
                message: update.message.clone(),
            })
            .await;
    }
    changed
}

/// StatusTooLarge's message once a write fits again.
const FITS: &str = "the status fits the API server's limit";

/// StatusTooLarge=True for a status write the API server refused for its size, saying what to do.
pub fn too_large(message: &str) -> ConditionUpdate {
    ConditionUpdate {
        kind: ConditionType::StatusTooLarge,
        ok: true,
        reason: "StatusTooLarge",
        message: format!(
            "the API server refused the status write as too large ({message}); the object is near the API server's limit: move an inline train.py to spec.trainScript.configMapKeyRef and large data out of spec.baseConfig"
        ),
    }
}

/// Sets a blocking condition back to its good state, if it is in its bad one (see
/// `status::blocked`); a condition never raised is not added.
pub fn clear(
    s: &mut crate::crd::ExperimentCampaignStatus,
    kind: ConditionType,
    reason: &'static str,
    message: &str,
) {
    let Some(old) = s.conditions.iter().find(|c| c.type_ == kind.as_str()) else {
        return;
    };
    let good = if kind == ConditionType::StatusTooLarge {
        "False"
    } else {
        "True"
    };
    if old.status == good {
        return;
    }
    let update = ConditionUpdate {
        kind,
        ok: good == "True",
        reason,
        message: message.to_string(),
    };
    let generation = old.observed_generation;
    status::set_condition(&mut s.conditions, status::condition(&update, generation));
}

/// Publishes the code of a new best experiment (when THINK changed the code) and says where.
async fn keep_best(engine: &Engine, handle: &CampaignHandle, entry: &LedgerEntry) {
    let (Some(best), Some(hash)) = (&handle.best, entry.train_hash.as_deref()) else {
        return;
    };
    let source = match super::run::source_of(engine, handle, Some(hash)).await {
        Ok(source) => source,
        Err(e) => {
            tracing::warn!(campaign = %handle.key, error = %e, "best train.py not published");
            return;
        }
    };
    let Some(location) = best.keep(&source, hash).await else {
        return;
    };
    let stored = handle
        .store
        .update(&mut |_, s| {
            s.best_train_script = Some(location.clone());
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(campaign = %handle.key, error = %e, "could not say where the best train.py is");
    }
}

fn network_of(entry: &LedgerEntry) -> Option<String> {
    serde_json::from_str::<Voucher>(&entry.payment)
        .ok()
        .map(|v| v.network.to_string())
}

/// The metric labels to count and the event to publish for a recorded outcome. One match arm
/// per ending, read as a table: it runs past 60 lines by formatting alone.
fn describe(
    outcome: &Ending,
    recorded: &Recorded,
    entry: &LedgerEntry,
    paid: Usdc,
    tx: Option<&str>,
) -> (&'static [ResultLabel], Notice) {
    let (id, worker) = (&entry.experiment_id, &entry.worker);
    let tx = tx.map(|t| format!(", tx {t}")).unwrap_or_default();
    let notice = |severity, reason, action, message| Notice {
        severity,
        reason,
        action,
        message,
    };
    match (outcome, recorded) {
        (
            Ending::Finished {
                result: Some(r), ..
            },
            Recorded::Counted { new_best, .. },
        ) => (
            &[ResultLabel::Succeeded],
            notice(
                Severity::Normal,
                if *new_best {
                    "NewBest"
                } else {
                    "ExperimentSucceeded"
                },
                "Record",
                format!(
                    "experiment {id} on {worker}: val_bpb {} (paid {paid} USDC{tx})",
                    r.val_bpb
                ),
            ),
        ),
        (Ending::Finished { .. }, _) => (
            &[ResultLabel::Failed],
            notice(
                Severity::Warning,
                "ExperimentFailed",
                "Record",
                format!("experiment {id} on {worker}: the run failed (paid {paid} USDC{tx})"),
            ),
        ),
        (Ending::WorkerFailed { reason, .. }, Recorded::Retry) => (
            &[ResultLabel::WorkerFailure],
            notice(
                Severity::Warning,
                "WorkerFailed",
                "Retry",
                format!(
                    "experiment {id} on {worker}: {reason}; nothing was paid, trying another worker"
                ),
            ),
        ),
        (Ending::WorkerFailed { reason, .. }, _) => (
            &[ResultLabel::WorkerFailure, ResultLabel::Failed],
            notice(
                Severity::Warning,
                "ExperimentFailed",
                "Record",
                format!("experiment {id} on {worker}: {reason}; {paid} USDC counted as spent"),
            ),
        ),
    }
}

/// The results.jsonl line for an outcome.
fn result_record(
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: &Ending,
    tx: Option<String>,
) -> ResultRecord {
    let (val_bpb, status) = match outcome {
        Ending::Finished {
            result: Some(r), ..
        } => (Some(r.val_bpb), RunStatus::Completed),
        Ending::Finished { result: None, .. } => (None, RunStatus::Failed),
        Ending::WorkerFailed { .. } => (None, RunStatus::WorkerFailure),
    };
    let base = experiment::train_hash(&handle.train_py);
    ResultRecord {
        experiment_id: entry.experiment_id.clone(),
        train_hash: entry.train_hash.clone().unwrap_or_else(|| base.clone()),
        description: entry.description.clone(),
        parent_train_hash: entry.train_hash.is_some().then_some(base),
        val_bpb,
        worker_endpoint: entry.worker.clone(),
        worker_agent_id: entry.agent_id,
        timestamp: now_rfc3339(),
        payment_tx: tx,
        network: network_of(entry),
        amount: Some(outcome.paid().atomic().to_string()),
        status: Some(status.as_str().to_string()),
        config: entry.config.clone(),
        params: entry.params.clone(),
        campaign_namespace: handle.namespace.clone(),
        campaign_name: Some(handle.name.clone()),
        ..crate::chain::audit::voucher_fields(entry)
    }
}

/// Now, as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::BoxFuture;

    use super::*;
    use crate::engine::{MemoryStore, Notify};

    struct Silent;

    impl Notify for Silent {
        fn notify(&self, _: Notice) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn campaign_at(state: &[(&str, &str)]) -> CampaignHandle {
        let mut campaign: ExperimentCampaign = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoresearch.obol.org/v1alpha1",
            "kind": "ExperimentCampaign",
            "metadata": {"name": "c"},
            "spec": {
                "trainScript": {"inline": "x"},
                "search": {"strategy": "list", "experiments": [{}]},
                "maxExperiments": 4,
                "budget": {"total": "1", "maxPricePerExperiment": "0.1"}
            }
        }))
        .unwrap();
        let mut status = crate::crd::ExperimentCampaignStatus::default();
        for (k, v) in state {
            status.strategy_state.insert(k.to_string(), v.to_string());
        }
        campaign.status = Some(status);
        CampaignHandle {
            key: "local/c".into(),
            namespace: None,
            name: "c".into(),
            store: Arc::new(MemoryStore::new(campaign)),
            notify: Arc::new(Silent),
            signer: Arc::new(
                crate::payment::RemoteSigner::new("http://127.0.0.1:9", None).unwrap(),
            ),
            train_py: "x".into(),
            best: None,
            proposer: None,
        }
    }

    async fn decide(handle: &CampaignHandle, base: &State) -> crate::crd::ExperimentCampaignStatus {
        let proposal = PendingExperiment {
            experiment_id: "exp-1".into(),
            ..PendingExperiment::default()
        };
        let after: State = [("next".to_string(), "1".to_string())].into();
        let decided = ReconcileWrite {
            proposals: &[proposal],
            state: &after,
            base,
            exhausted: false,
            counts: None,
            seen: Sighting::default(),
            trust: &|_| {},
        };
        decision(handle, &decided).await.unwrap().status.unwrap()
    }

    #[tokio::test]
    async fn a_finished_campaign_keeps_no_proposal_waiting() {
        let handle = campaign_at(&[]);
        handle
            .store
            .update(&mut |_, s| {
                s.succeeded = 4;
                s.submitted = 4;
                Ok(())
            })
            .await
            .unwrap();
        let status = decide(&handle, &State::new()).await;
        assert_eq!(status.phase, Some(crate::crd::Phase::Succeeded));
        assert!(status.pending.is_empty(), "{:?}", status.pending);
    }

    #[tokio::test]
    async fn a_decision_from_a_stale_strategy_state_writes_neither_its_proposals_nor_its_state() {
        // Another writer moved the strategy to next=5 after this reconcile read next=0.
        let handle = campaign_at(&[("next", "5")]);
        let stale: State = [("next".to_string(), "0".to_string())].into();
        let status = decide(&handle, &stale).await;
        assert!(status.pending.is_empty(), "{status:?}");
        assert_eq!(status.strategy_state["next"], "5");

        // From the state as stored, the same decision is written.
        let handle = campaign_at(&[("next", "0")]);
        let status = decide(&handle, &stale).await;
        assert_eq!(status.pending.len(), 1);
        assert_eq!(status.strategy_state["next"], "1");
    }
}
