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

use super::status::{self, ConditionType, ConditionUpdate, Sighting};
use super::{CampaignHandle, Engine, Notice, Severity};
use crate::crd::{ExperimentCampaign, LedgerEntry, PendingExperiment, WorkerCounts};
use crate::experiment;
use crate::failpoint::{self, Window};
use crate::ledger::{self, Ending, Limits, Recorded};
use crate::payment::Voucher;
use crate::results::{ResultRecord, RunStatus};
use crate::strategy::State;
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
pub struct Decision<'a> {
    /// New proposals for `pending`.
    pub proposals: &'a [PendingExperiment],
    /// The strategy's state after proposing.
    pub state: &'a State,
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
    decided: &Decision<'_>,
) -> Result<ExperimentCampaign, UpdateError> {
    handle
        .store
        .update(&mut |c, s| {
            let limits = Limits::from_spec(&c.spec)?;
            ledger::propose(s, decided.proposals.to_vec());
            s.strategy_state = decided.state.clone();
            if let Some(counts) = decided.counts {
                s.workers = Some(counts.clone());
            }
            s.observed_generation = c.metadata.generation;
            (decided.trust)(s);
            ledger::refresh_derived(s, &limits);
            let verdict = status::verdict(c, s, &limits, decided.exhausted, &decided.seen);
            status::apply(s, verdict, c.metadata.generation);
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
    let retried = matches!(&outcome, Ending::WorkerFailed { paid, .. } if *paid == Usdc::ZERO && entry.attempt < ledger::MAX_ATTEMPTS);
    if !retried
        && let Err(e) = record(
            engine,
            handle,
            result_record(handle, entry, &outcome, tx.clone()),
        )
        .await
    {
        // Without the durable line the status must not count it: leave the ledger entry so
        // the next resume tries again.
        tracing::error!(error = %e, experiment = %entry.experiment_id, "cannot append to results.jsonl; will retry");
        engine
            .board
            .release(&entry.worker, &entry.experiment_id, false);
        return;
    }
    failpoint::crash_at(Window::AfterAppend);
    let mut recorded = None;
    let stored = handle
        .store
        .update(&mut |c, s| {
            let limits = Limits::from_spec(&c.spec)?;
            let before = s.best.as_ref().map(|b| b.experiment_id.clone());
            recorded = Some(ledger::complete(
                s,
                &limits,
                &entry.experiment_id,
                outcome.clone(),
            )?);
            // The best is the verified one: "new best" means it changed.
            let changed = engine.memory.publish(&handle.key, s, before.as_deref());
            if let Some(Recorded::Counted { new_best, .. }) = recorded.as_mut()
                && engine.memory.replicating(&handle.key)
            {
                *new_best = changed;
            }
            Ok(())
        })
        .await;
    let worker_failed = matches!(outcome, Ending::WorkerFailed { .. });
    engine
        .board
        .release(&entry.worker, &entry.experiment_id, worker_failed);
    let running = match stored {
        Ok(stored) => stored.status.map_or(0, |s| s.running),
        Err(e) => {
            tracing::warn!(campaign = %handle.key, experiment = %entry.experiment_id, error = %e, "result recorded in results.jsonl but not in status");
            return;
        }
    };
    failpoint::crash_at(Window::AfterStatus);
    engine.memory.confirm(&handle.key, &entry.experiment_id);
    engine
        .metrics
        .in_flight
        .with_label_values(&[handle.namespace.as_deref().unwrap_or(""), &handle.name])
        .set(running.into());
    let Some(recorded) = recorded.filter(|r| *r != Recorded::AlreadyCounted) else {
        return;
    };
    let paid = outcome.paid();
    if paid > Usdc::ZERO {
        engine
            .metrics
            .paid(&network_of(entry).unwrap_or_default(), paid);
    }
    if matches!(recorded, Recorded::Counted { new_best: true, .. }) {
        keep_best(engine, handle, entry).await;
    }
    let (labels, notice) = describe(&outcome, &recorded, entry, paid, tx.as_deref());
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

/// The metric labels to count and the event to publish for a recorded outcome.
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
        pay_to: serde_json::from_str::<Voucher>(&entry.payment)
            .ok()
            .map(|v| v.pay_to.to_string()),
        ..crate::chain::audit::voucher_fields(entry)
    }
}

/// Now, as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
