//! RUN and PUBLISH for one experiment, as a task: price, sign, reserve in the ledger (persisted
//! before anything is sent), send, then record the result in results.jsonl and status.
//!
//! Money rules, each enforced here or in `ledger`:
//! - the voucher is signed before the ledger entry is written, and is sent only after the write
//!   succeeded; a refused write drops the unsent voucher;
//! - after a restart a ledger entry is finished by reading the worker's stored result, or by
//!   re-sending the *same* voucher (its nonce settles at most once), never by signing again;
//! - an attempt is retried on another worker only when the gate proved nothing was paid.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;

use super::{CampaignHandle, Candidate, Engine, Notice, Severity};
use crate::crd::{ExperimentCampaign, LedgerEntry, PendingExperiment, ResultSummary};
use crate::experiment;
use crate::ledger::{self, Limits, Outcome, Recorded, Refusal};
use crate::payment::{
    ExperimentRequest, Policy, Quote, Voucher, VoucherTerms, WorkerClient, WorkerError, new_nonce,
    sign_voucher, unix_now, x402,
};
use crate::results::ResultRecord;
use crate::usdc::Usdc;

/// Starts a pending experiment on `worker`. Every early return leaves the experiment pending.
/// `campaign` is the state the reconcile just stored; the reservation re-checks everything
/// against the latest state.
pub async fn start(
    engine: Arc<Engine>,
    handle: CampaignHandle,
    campaign: Arc<ExperimentCampaign>,
    pending: PendingExperiment,
    worker: Candidate,
) {
    let id = pending.experiment_id.clone();
    match prepare_and_reserve(&engine, &handle, &campaign, &pending, &worker).await {
        Ok(Some((entry, voucher, client))) => {
            finish(&engine, &handle, entry, voucher, client, false).await
        }
        Ok(None) => engine.board.release(&worker.endpoint, &id, false),
        Err(failure) => {
            engine.board.release(&worker.endpoint, &id, true);
            engine
                .metrics
                .experiments
                .with_label_values(&["worker_failure"])
                .inc();
            handle
                .notify
                .notify(Notice {
                    severity: Severity::Warning,
                    reason: "WorkerSkipped",
                    action: "Claim",
                    message: format!(
                        "experiment {id}: worker {} skipped: {failure}",
                        worker.endpoint
                    ),
                })
                .await;
        }
    }
    engine.changed.notify_waiters();
}

/// Price, sign and reserve. `Ok(None)`: the campaign refused the reservation (budget, limits,
/// suspended), nothing was sent. `Err`: the worker is unusable for now.
async fn prepare_and_reserve(
    engine: &Engine,
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
    pending: &PendingExperiment,
    worker: &Candidate,
) -> Result<Option<(LedgerEntry, Voucher, WorkerClient)>, String> {
    let spec = &campaign.spec;
    let limits = Limits::from_spec(spec).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(spec.experiment_timeout_seconds.into());
    let client = worker_client(spec, &worker.endpoint, timeout, engine.settings.job_poll)?;

    let t0 = Instant::now();
    // 1. Price.
    let required = match client.quote().await.map_err(|e| e.to_string())? {
        Quote::Priced(required) => required,
        Quote::Free => {
            return Err(
                "answered without asking for payment; refusing an unpaid, unaccountable worker"
                    .into(),
            );
        }
    };
    let policy = Policy {
        networks: vec![spec.payment.network],
        max_price: limits.max_price,
        extra_assets: spec
            .payment
            .extra_assets
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
    };
    let offer = x402::choose(&required, &policy).map_err(|e| {
        if let Some(asked) = cheapest_asked(&required) {
            engine.board.note_price(&worker.endpoint, asked);
        }
        e.to_string()
    })?;
    engine.board.note_price(&worker.endpoint, offer.amount);
    let left = ledger::budget_left(&campaign.status.clone().unwrap_or_default(), &limits)
        .map_err(|e| e.to_string())?;
    if offer.amount > left {
        return Ok(None);
    }

    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "priced");
    // 2. Sign (nothing leaves this process yet).
    let from: Option<Address> = spec
        .payment
        .signer_address
        .as_deref()
        .and_then(|a| a.parse().ok());
    let terms = VoucherTerms {
        experiment_id: pending.experiment_id.clone(),
        nonce: new_nonce(),
        from,
        run_timeout: timeout,
    };
    let voucher = match sign_voucher(&handle.signer, &offer, &terms, unix_now()).await {
        Ok(v) => v,
        Err(e) => {
            // The signer is the campaign's problem, not the worker's: no cooldown for the worker.
            handle
                .notify
                .notify(Notice {
                    severity: Severity::Warning,
                    reason: "SignerFailed",
                    action: "Sign",
                    message: e.to_string(),
                })
                .await;
            return Ok(None);
        }
    };

    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "signed");
    // 3. Reserve: the ledger entry, with the voucher, is stored before the voucher is sent.
    let entry = LedgerEntry {
        experiment_id: pending.experiment_id.clone(),
        worker: worker.endpoint.clone(),
        agent_id: worker.agent_id,
        amount: voucher.amount.atomic().to_string(),
        nonce: voucher.nonce.to_string(),
        payment: serde_json::to_string(&voucher).expect("a voucher serialises"),
        valid_before: voucher.valid_before,
        config: pending.config.clone(),
        attempt: pending.attempts + 1,
        started_at: now_rfc3339(),
    };
    let reserved = handle
        .store
        .update(&mut |c, s| {
            if c.spec.suspend {
                return Err(Refusal::NoSlot(0));
            }
            let limits =
                Limits::from_spec(&c.spec).map_err(|e| Refusal::Unreadable(e.to_string()))?;
            if let Some(stop) = ledger::stop_reason(s, &limits) {
                return Err(Refusal::Unreadable(stop.reason().into()));
            }
            if !s
                .pending
                .iter()
                .any(|p| p.experiment_id == entry.experiment_id)
            {
                return Err(Refusal::Duplicate(entry.experiment_id.clone()));
            }
            ledger::reserve(s, &limits, entry.clone())
        })
        .await;
    match reserved {
        Ok(_) => {}
        Err(e) => {
            tracing::info!(campaign = %handle.key, experiment = %entry.experiment_id, reason = %e, "not started; the signed voucher is dropped unsent");
            return Ok(None);
        }
    }
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "reserved");
    // The event is published beside the send, not before it: it is not on the critical path.
    let notify = handle.notify.clone();
    let started = Notice {
        severity: Severity::Normal,
        reason: "ExperimentStarted",
        action: "Pay",
        message: format!(
            "experiment {} on {} for {} USDC (nonce {})",
            entry.experiment_id, entry.worker, voucher.amount, entry.nonce
        ),
    };
    tokio::spawn(async move { notify.notify(started).await });

    Ok(Some((entry, voucher, client)))
}

/// A client for a worker. A worker the campaign names in `discovery.workers` is the user's
/// choice and is used as given; any other endpoint was discovered, and is reached only at
/// addresses `discovery.allowPrivate` permits, checked at connect time.
fn worker_client(
    spec: &crate::crd::ExperimentCampaignSpec,
    endpoint: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<WorkerClient, String> {
    let client = WorkerClient::new(endpoint, timeout)
        .map_err(|e| e.to_string())?
        .with_poll_interval(poll);
    let named = spec
        .discovery
        .workers
        .iter()
        .any(|w| w.endpoint.trim_end_matches('/') == endpoint.trim_end_matches('/'));
    if named {
        return Ok(client);
    }
    let policy = crate::discovery::AddressPolicy::with_allowlist(&spec.discovery.allow_private)
        .map_err(|e| format!("spec.discovery.allowPrivate: {e}"))?;
    client
        .with_address_policy(&policy)
        .map_err(|e| e.to_string())
}

fn cheapest_asked(required: &x402::PaymentRequired) -> Option<Usdc> {
    // v2 says `amount`, v1 `maxAmountRequired`; both are atomic units as strings.
    required
        .accepts
        .iter()
        .filter_map(|r| {
            r.get("amount")
                .or_else(|| r.get("maxAmountRequired"))?
                .as_str()
        })
        .filter_map(|a| Usdc::parse_atomic(a).ok())
        .min()
}

/// Resumes a ledger entry found without a task (after a restart or a lost leadership).
pub async fn resume(engine: Arc<Engine>, handle: CampaignHandle, entry: LedgerEntry) {
    let id = entry.experiment_id.clone();
    // Already in results.jsonl: the crash came between the two writes; finish the second.
    if let Some(record) = engine.recorded(&handle, &id) {
        let outcome = outcome_from_record(&record, &entry);
        complete(&engine, &handle, &entry, outcome, None).await;
        engine.changed.notify_waiters();
        return;
    }
    let voucher: Voucher = match serde_json::from_str(&entry.payment) {
        Ok(v) => v,
        Err(e) => {
            // Cannot re-send and must not sign again: count the reserved amount as spent.
            let amount = Usdc::parse_atomic(&entry.amount).unwrap_or_default();
            let outcome = Outcome::WorkerFailed {
                paid: amount,
                reason: format!("stored voucher unreadable: {e}"),
            };
            complete(&engine, &handle, &entry, outcome, None).await;
            engine.changed.notify_waiters();
            return;
        }
    };
    let spec = handle.store.get().await.ok().flatten().map(|c| c.spec);
    let client = match spec
        .as_ref()
        .ok_or_else(|| "the campaign is gone".to_string())
        .and_then(|spec| {
            let timeout = Duration::from_secs(spec.experiment_timeout_seconds.into());
            worker_client(spec, &entry.worker, timeout, engine.settings.job_poll)
        }) {
        Ok(c) => c,
        Err(e) => {
            let outcome = Outcome::WorkerFailed {
                paid: voucher.amount,
                reason: e.to_string(),
            };
            complete(&engine, &handle, &entry, outcome, None).await;
            return;
        }
    };
    handle
        .notify
        .notify(Notice {
            severity: Severity::Normal,
            reason: "ExperimentResumed",
            action: "Resume",
            message: format!(
                "experiment {id} on {}: recovering its result or re-sending the same voucher",
                entry.worker
            ),
        })
        .await;
    finish(&engine, &handle, entry, voucher, client, true).await;
    engine.changed.notify_waiters();
}

/// Sends (or re-sends) the voucher, classifies the answer, and records it.
async fn finish(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: LedgerEntry,
    voucher: Voucher,
    client: WorkerClient,
    resumed: bool,
) {
    let request = ExperimentRequest {
        experiment_id: entry.experiment_id.clone(),
        train_py: handle.train_py.to_string(),
        config: entry
            .config
            .clone()
            .unwrap_or_else(|| serde_json::json!({})),
    };
    let started = Instant::now();
    let (outcome, tx) = attempt(
        &client,
        &voucher,
        &request,
        resumed,
        engine.settings.job_poll,
    )
    .await;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "answered");
    let label = match &outcome {
        Outcome::Finished {
            result: Some(_), ..
        } => "succeeded",
        Outcome::Finished { .. } => "failed",
        Outcome::WorkerFailed { .. } => "worker_failure",
    };
    engine
        .metrics
        .experiment_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    complete(engine, handle, &entry, outcome, tx).await;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "recorded");
}

/// One send, with recovery when the answer was lost. Returns the outcome and the settlement tx.
async fn attempt(
    client: &WorkerClient,
    voucher: &Voucher,
    request: &ExperimentRequest,
    resumed: bool,
    poll: Duration,
) -> (Outcome, Option<String>) {
    let paid = voucher.amount;
    if resumed {
        return (
            settle_uncertain(client, voucher, request, poll, None).await,
            None,
        );
    }
    match client.run(Some(voucher), request).await {
        Ok(run) => {
            let tx = run.transaction().map(str::to_string);
            (finished(run.result, paid, client.endpoint()), tx)
        }
        // A refused connection sent nothing; a 409 is the worker declining before it runs.
        Err(e @ (WorkerError::Unreachable { .. } | WorkerError::Busy)) => (
            Outcome::WorkerFailed {
                paid: Usdc::ZERO,
                reason: e.to_string(),
            },
            None,
        ),
        // Gates settle only after the worker answered below 400, and a worker that ran the
        // experiment stores its result. So a stored result means it ran and was paid, even if
        // the answer we got was an error; none means nothing was paid and the experiment may go
        // to another worker. If the worker cannot say, the amount counts as spent.
        Err(e @ (WorkerError::Http { .. } | WorkerError::PaymentRejected { .. })) => {
            match client.recover(request).await {
                Ok(Some(result)) => (finished(result, paid, client.endpoint()), None),
                Ok(None) => (
                    Outcome::WorkerFailed {
                        paid: Usdc::ZERO,
                        reason: e.to_string(),
                    },
                    None,
                ),
                Err(_) => (
                    Outcome::WorkerFailed {
                        paid,
                        reason: e.to_string(),
                    },
                    None,
                ),
            }
        }
        // The request may be running at the worker: its gate settles when it answers. Wait for
        // the stored result; never send the experiment elsewhere meanwhile.
        Err(e @ (WorkerError::Timeout { .. } | WorkerError::Interrupted { .. })) => (
            settle_uncertain(client, voucher, request, poll, Some(e.to_string())).await,
            None,
        ),
        // A 200 that is not a valid result (a lying worker): the gate settled, the answer is not
        // recorded as a result, and the experiment is not paid for again.
        Err(e) => match client.recover(request).await {
            Ok(Some(result)) => (finished(result, paid, client.endpoint()), None),
            _ => (
                Outcome::WorkerFailed {
                    paid,
                    reason: e.to_string(),
                },
                None,
            ),
        },
    }
}

/// Finishes an experiment whose voucher may be in use at the worker: polls its stored result,
/// re-sending the *same* voucher while it is live (it settles at most once). When the voucher
/// expires with no result, its amount is counted as spent: the budget errs on the safe side.
async fn settle_uncertain(
    client: &WorkerClient,
    voucher: &Voucher,
    request: &ExperimentRequest,
    poll: Duration,
    first_error: Option<String>,
) -> Outcome {
    let paid = voucher.amount;
    let mut last = first_error.unwrap_or_else(|| "resumed after a restart".into());
    loop {
        match client.recover(request).await {
            Ok(Some(result)) => return finished(result, paid, client.endpoint()),
            Err(WorkerError::InvalidAnswer(e)) => return Outcome::WorkerFailed { paid, reason: e },
            _ => {}
        }
        if !voucher.is_live(unix_now()) {
            return Outcome::WorkerFailed {
                paid,
                reason: format!("{last}; the voucher expired with no result from the worker"),
            };
        }
        match client.run(Some(voucher), request).await {
            Ok(run) => return finished(run.result, paid, client.endpoint()),
            Err(WorkerError::InvalidAnswer(e)) => return Outcome::WorkerFailed { paid, reason: e },
            // Busy (probably with this very experiment), refused (the nonce may be in use by the
            // first send), unreachable or cut: the stored result may still come.
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(poll).await;
    }
}

fn finished(result: crate::payment::ExperimentResult, paid: Usdc, endpoint: &str) -> Outcome {
    let summary = match (result.status.as_str(), result.val_bpb) {
        ("completed", Some(v)) if ledger::is_valid_val_bpb(v) => Some(ResultSummary {
            experiment_id: result.experiment_id.clone(),
            val_bpb: v,
            config: result.raw.get("config").cloned(),
            worker: endpoint.to_string(),
            train_hash: result.train_hash.clone(),
        }),
        _ => None,
    };
    Outcome::Finished {
        result: summary,
        paid,
    }
}

fn outcome_from_record(record: &ResultRecord, entry: &LedgerEntry) -> Outcome {
    let paid = record
        .amount
        .as_deref()
        .and_then(|a| Usdc::parse_atomic(a).ok())
        .unwrap_or_else(|| Usdc::parse_atomic(&entry.amount).unwrap_or_default());
    let result = match (record.status.as_deref(), record.val_bpb) {
        (Some("completed"), Some(v)) if ledger::is_valid_val_bpb(v) => Some(ResultSummary {
            experiment_id: record.experiment_id.clone(),
            val_bpb: v,
            config: record.config.clone(),
            worker: record.worker_endpoint.clone(),
            train_hash: Some(record.train_hash.clone()),
        }),
        _ => None,
    };
    Outcome::Finished { result, paid }
}

/// PUBLISH: results.jsonl first (flushed), then status (which removes the ledger entry), then
/// events and metrics.
async fn complete(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: Outcome,
    tx: Option<String>,
) {
    let counted = !matches!(&outcome, Outcome::WorkerFailed { paid, .. } if *paid == Usdc::ZERO && entry.attempt < ledger::MAX_ATTEMPTS);
    if counted {
        let record = result_record(handle, entry, &outcome, tx.clone());
        if let Err(e) = engine.record(handle, record).await {
            // Without the durable line the status must not count it: leave the ledger entry so
            // the next resume tries again.
            tracing::error!(error = %e, experiment = %entry.experiment_id, "cannot append to results.jsonl; will retry");
            engine
                .board
                .release(&entry.worker, &entry.experiment_id, false);
            return;
        }
    }
    let mut recorded = None;
    let network = serde_json::from_str::<Voucher>(&entry.payment)
        .map(|v| v.network.to_string())
        .unwrap_or_default();
    let result = handle
        .store
        .update(&mut |c, s| {
            let limits =
                Limits::from_spec(&c.spec).map_err(|e| Refusal::Unreadable(e.to_string()))?;
            recorded = Some(ledger::complete(
                s,
                &limits,
                &entry.experiment_id,
                outcome.clone(),
            )?);
            Ok(())
        })
        .await;
    let worker_failed = matches!(outcome, Outcome::WorkerFailed { .. });
    engine
        .board
        .release(&entry.worker, &entry.experiment_id, worker_failed);
    let ns = handle.namespace.clone().unwrap_or_default();
    let running = match result {
        Ok(stored) => stored.status.map_or(0, |s| s.running),
        Err(e) => {
            tracing::warn!(campaign = %handle.key, experiment = %entry.experiment_id, error = %e, "result recorded in results.jsonl but not in status");
            return;
        }
    };
    let paid = match &outcome {
        Outcome::Finished { paid, .. } | Outcome::WorkerFailed { paid, .. } => *paid,
    };
    if paid > Usdc::ZERO && recorded != Some(Recorded::AlreadyCounted) {
        engine.metrics.paid(&network, paid);
    }
    engine
        .metrics
        .in_flight
        .with_label_values(&[&ns, &handle.name])
        .set(running.into());
    let Some(recorded) = recorded.filter(|r| *r != Recorded::AlreadyCounted) else {
        return;
    };
    let (results, notice) = describe(&outcome, &recorded, entry, paid, &tx);
    for result in results {
        engine
            .metrics
            .experiments
            .with_label_values(&[result])
            .inc();
    }
    handle.notify.notify(notice).await;
}

/// The metric results to count and the event to publish for a recorded outcome.
fn describe(
    outcome: &Outcome,
    recorded: &Recorded,
    entry: &LedgerEntry,
    paid: Usdc,
    tx: &Option<String>,
) -> (&'static [&'static str], Notice) {
    let (id, worker) = (&entry.experiment_id, &entry.worker);
    let notice = |severity, reason, action, message| Notice {
        severity,
        reason,
        action,
        message,
    };
    match (outcome, recorded) {
        (
            Outcome::Finished {
                result: Some(r), ..
            },
            Recorded::Counted { new_best, .. },
        ) => (
            &["succeeded"],
            notice(
                Severity::Normal,
                if *new_best {
                    "NewBest"
                } else {
                    "ExperimentSucceeded"
                },
                "Record",
                format!(
                    "experiment {id} on {worker}: val_bpb {} (paid {paid} USDC{})",
                    r.val_bpb,
                    tx_note(tx)
                ),
            ),
        ),
        (Outcome::Finished { .. }, _) => (
            &["failed"],
            notice(
                Severity::Warning,
                "ExperimentFailed",
                "Record",
                format!(
                    "experiment {id} on {worker}: the run failed (paid {paid} USDC{})",
                    tx_note(tx)
                ),
            ),
        ),
        (Outcome::WorkerFailed { reason, .. }, Recorded::Retry) => (
            &["worker_failure"],
            notice(
                Severity::Warning,
                "WorkerFailed",
                "Retry",
                format!(
                    "experiment {id} on {worker}: {reason}; nothing was paid, trying another worker"
                ),
            ),
        ),
        (Outcome::WorkerFailed { reason, .. }, _) => (
            &["worker_failure", "failed"],
            notice(
                Severity::Warning,
                "ExperimentFailed",
                "Record",
                format!("experiment {id} on {worker}: {reason}; {paid} USDC counted as spent"),
            ),
        ),
    }
}

fn tx_note(tx: &Option<String>) -> String {
    tx.as_ref().map(|t| format!(", tx {t}")).unwrap_or_default()
}

fn result_record(
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    outcome: &Outcome,
    tx: Option<String>,
) -> ResultRecord {
    let (val_bpb, status, paid) = match outcome {
        Outcome::Finished {
            result: Some(r),
            paid,
        } => (Some(r.val_bpb), "completed", *paid),
        Outcome::Finished { result: None, paid } => (None, "failed", *paid),
        Outcome::WorkerFailed { paid, .. } => (None, "worker_failure", *paid),
    };
    let network = serde_json::from_str::<Voucher>(&entry.payment)
        .ok()
        .map(|v| v.network.to_string());
    ResultRecord {
        experiment_id: entry.experiment_id.clone(),
        train_hash: experiment::train_hash(&handle.train_py),
        val_bpb,
        worker_endpoint: entry.worker.clone(),
        worker_agent_id: entry.agent_id,
        timestamp: now_rfc3339(),
        payment_tx: tx,
        network,
        amount: Some(paid.atomic().to_string()),
        status: Some(status.to_string()),
        config: entry.config.clone(),
        campaign_namespace: handle.namespace.clone(),
        campaign_name: Some(handle.name.clone()),
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExperimentCampaignSpec, StaticWorker};

    fn spec(allow: &[&str], named: &[&str]) -> ExperimentCampaignSpec {
        let mut spec: ExperimentCampaignSpec = serde_json::from_value(serde_json::json!({
            "trainScript": {"inline": "x"},
            "search": {"strategy": "list", "experiments": [{}]},
            "maxExperiments": 1,
            "budget": {"total": "1", "maxPricePerExperiment": "0.1"}
        }))
        .unwrap();
        spec.discovery.allow_private = allow.iter().map(|s| s.to_string()).collect();
        spec.discovery.workers = named
            .iter()
            .map(|e| StaticWorker {
                endpoint: e.to_string(),
                name: None,
                agent_id: None,
            })
            .collect();
        spec
    }

    fn client(spec: &ExperimentCampaignSpec, endpoint: &str) -> Result<WorkerClient, String> {
        worker_client(
            spec,
            endpoint,
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn discovered_endpoints_are_held_to_the_address_policy_and_named_ones_are_not() {
        let loopback = "http://127.0.0.1:9/services/w";
        let err = client(&spec(&[], &[]), loopback).unwrap_err();
        assert!(err.contains("127.0.0.1"), "{err}");
        assert!(client(&spec(&["127.0.0.1/32"], &[]), loopback).is_ok());
        assert!(
            client(&spec(&[], &[loopback]), loopback).is_ok(),
            "a named worker is the user's choice"
        );
        // Allowing one range allows nothing else.
        for other in [
            "http://[::1]:9/w",
            "http://0.0.0.0:9/w",
            "http://169.254.169.254/latest",
            "http://10.1.2.3/w",
        ] {
            assert!(
                client(&spec(&["127.0.0.0/8"], &[]), other).is_err(),
                "{other}"
            );
        }
    }
}
