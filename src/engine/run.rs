//! RUN for one experiment, as a task: price, sign, reserve in the ledger (persisted before
//! anything is sent), send, and hand the outcome to PUBLISH ([`super::publish::complete`]).
//!
//! Money rules, each enforced here or in `ledger` (docs/design.md, invariants 1 and 2):
//! - the voucher is signed before the ledger entry is written, and is sent only after the write
//!   succeeded; a refused write drops the unsent voucher;
//! - after a restart a ledger entry is finished by reading the worker's stored result, or by
//!   re-sending the *same* voucher (its nonce settles at most once), never by signing again;
//! - an attempt is retried on another worker only when the gate proved nothing was paid.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;

use super::board;
use super::claim::{self, Candidate};
use super::configs;
use super::publish::{self, ResultLabel};
use super::store::UpdateError;
use super::{CampaignHandle, Engine, Notice, Severity};
use crate::chain::wallet::InsufficientBalance;
use crate::crd::{
    ExperimentCampaign, ExperimentCampaignSpec, LedgerEntry, PendingExperiment, ResultSummary,
};
use crate::endpoint::Endpoint;
use crate::failpoint::{self, Window};
use crate::ledger::{self, Ending, Limits, Refusal};
use crate::payment::clients::ClientPool;
use crate::payment::{
    ExperimentRequest, Offer, Policy, Quote, SignerError, Voucher, VoucherTerms, WorkerClient,
    WorkerError, new_nonce, sign_voucher, unix_now, x402,
};
use crate::results::ResultRecord;
use crate::scripts::ScriptError;
use crate::telemetry::StepLabel;
use crate::usdc::Usdc;

/// Why an experiment could not be started on a worker. Nothing was sent: the experiment stays
/// pending.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spec changed under the task and cannot be read.
    #[error(transparent)]
    Spec(#[from] crate::crd::SpecError),
    /// `discovery.allowPrivate` does not parse.
    #[error("spec.discovery.allowPrivate: {0}")]
    AllowPrivate(#[from] crate::discovery::policy::AllowEntryError),
    /// The worker cannot be reached, or did not quote a usable price.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The worker answered without asking for payment.
    #[error("answered without asking for payment; refusing an unpaid, unaccountable worker")]
    Free,
    /// No payment requirement fits the campaign's policy (price, network, asset).
    #[error(transparent)]
    Offer(#[from] x402::NoAcceptableOffer),
    /// The campaign's books cannot be read.
    #[error(transparent)]
    Books(#[from] Refusal),
    /// The experiment's train.py is not in the script store: nothing is signed for it.
    #[error(transparent)]
    Script(#[from] ScriptError),
    /// The remote signer refused or failed: the campaign's problem, not the worker's.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// The payer's balance cannot cover the voucher: nothing is signed.
    #[error(transparent)]
    Wallet(#[from] InsufficientBalance),
    /// The payment chain cannot be read (or is another chain): a voucher signed now could not
    /// be judged, so nothing is signed.
    #[error("nothing signed while the payment chain cannot be read: {0}")]
    Chain(#[from] crate::chain::ChainError),
}

impl StartError {
    /// Whether the worker is to blame (it cools down and the failure is counted).
    fn blames_worker(&self) -> bool {
        matches!(
            self,
            StartError::Worker(_) | StartError::Free | StartError::Offer(_)
        )
    }
}

/// A voucher reserved in the ledger, ready to send.
pub(super) struct Reserved {
    pub(super) entry: LedgerEntry,
    pub(super) voucher: Voucher,
    pub(super) client: WorkerClient,
}

/// Which reservation a prepared voucher gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reservation {
    /// Sent as soon as it is reserved: the worker is claimed.
    Now,
    /// Signed ahead for a busy worker, sent when it answers ([`super::ahead`]).
    Ahead,
}

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
    let endpoint = worker.endpoint.to_string();
    match prepare(
        &engine,
        &handle,
        &campaign,
        &pending,
        &worker,
        Reservation::Now,
    )
    .await
    {
        Ok(Ok(reserved)) => {
            announce(&handle, &reserved.entry, &reserved.voucher);
            send(&engine, &handle, reserved, false).await
        }
        Ok(Err(not_now)) => {
            tracing::info!(campaign = %handle.key, experiment = %id, reason = %not_now, "not started; the signed voucher, if any, is dropped unsent");
            let holder = board::holder(&handle.key, &id);
            engine.board.release(&endpoint, &holder, false);
        }
        Err(e) => skipped(&engine, &handle, &endpoint, &id, e).await,
    }
}

/// Reports a start that failed before anything was sent.
pub(super) async fn skipped(
    engine: &Engine,
    handle: &CampaignHandle,
    endpoint: &str,
    id: &str,
    e: StartError,
) {
    let blame = e.blames_worker();
    engine
        .board
        .release(endpoint, &board::holder(&handle.key, id), blame);
    let (reason, message) = if blame {
        engine
            .metrics
            .experiments
            .with_label_values(&[ResultLabel::WorkerFailure.as_str()])
            .inc();
        (
            "WorkerSkipped",
            format!("experiment {id}: worker {endpoint} skipped: {e}"),
        )
    } else if matches!(e, StartError::Signer(_)) {
        ("SignerFailed", e.to_string())
    } else if matches!(e, StartError::Wallet(_)) {
        ("InsufficientBalance", e.to_string())
    } else {
        ("NotStarted", format!("experiment {id}: {e}"))
    };
    handle
        .notify
        .notify(Notice {
            severity: Severity::Warning,
            reason,
            action: "Claim",
            message,
        })
        .await;
}

/// Price, sign and reserve. `Ok(Err(_))`: the campaign refused the reservation (budget, limits,
/// suspended, deleted); nothing was sent. `Err`: nothing was sent and the experiment waits.
pub(super) async fn prepare(
    engine: &Engine,
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
    pending: &PendingExperiment,
    worker: &Candidate,
    mode: Reservation,
) -> Result<Result<Reserved, UpdateError>, StartError> {
    let spec = &campaign.spec;
    let limits = Limits::from_spec(spec)?;
    let timeout = Duration::from_secs(spec.experiment_timeout_seconds.into());
    let client = worker_client(
        &engine.clients,
        spec,
        &worker.endpoint,
        timeout,
        engine.settings.job_poll,
    )?;
    source_of(engine, handle, pending.train_hash.as_deref()).await?;
    configs::config_of(
        &engine.scripts,
        pending.config.as_ref(),
        pending.config_hash.as_deref(),
    )
    .await?;
    let t0 = Instant::now();
    let offer = price(engine, &client, spec, &limits).await?;
    engine.metrics.step(StepLabel::Price, t0.elapsed());
    let left = ledger::budget_left(&campaign.status.clone().unwrap_or_default(), &limits)?;
    if offer.amount > left {
        let refusal = Refusal::OverBudget {
            asked: offer.amount,
            left,
        };
        return Ok(Err(UpdateError::Refused(refusal)));
    }
    let t0 = Instant::now();
    let funds = super::settle::wallet_check(engine, handle, spec, &offer).await?;
    let experiment = worker_id(campaign, pending);
    let now = super::settle::signing_time(engine).await;
    let voucher = sign(handle, spec, &offer, &experiment, timeout, now).await?;
    engine.metrics.step(StepLabel::Sign, t0.elapsed());
    failpoint::crash_at(Window::AfterSign);
    let entry = ledger_entry(pending, worker, &voucher);
    let t0 = Instant::now();
    if let Err(e) = reserve(handle, &entry, funds, mode).await {
        return Ok(Err(e));
    }
    engine.metrics.step(StepLabel::Reserve, t0.elapsed());
    failpoint::crash_at(match mode {
        Reservation::Now => Window::AfterReserve,
        Reservation::Ahead => Window::SignedAhead,
    });
    Ok(Ok(Reserved {
        entry,
        voucher,
        client,
    }))
}

/// Reads the worker's 402 and chooses the requirement the campaign accepts.
async fn price(
    engine: &Engine,
    client: &WorkerClient,
    spec: &ExperimentCampaignSpec,
    limits: &Limits,
) -> Result<Offer, StartError> {
    let required = match engine.board.quote(client.endpoint()) {
        Some(cached) => cached,
        None => match client.quote().await? {
            Quote::Priced(required) => {
                engine.board.note_quote(client.endpoint(), required.clone());
                required
            }
            Quote::Free => return Err(StartError::Free),
        },
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
    let offer = x402::choose(&required, &policy).inspect_err(|_| {
        if let Some(asked) = cheapest_asked(&required) {
            engine.board.note_price(client.endpoint(), asked);
        }
    })?;
    engine.board.note_price(client.endpoint(), offer.amount);
    Ok(offer)
}

/// The id the worker gets for `pending`: derived from the campaign's uid, so that it is unique
/// to the campaign. A campaign without a uid (one that lives only in memory) sends the content id.
fn worker_id(campaign: &ExperimentCampaign, pending: &PendingExperiment) -> String {
    match &campaign.metadata.uid {
        Some(uid) => crate::experiment::worker_id(uid, &pending.experiment_id),
        None => pending.experiment_id.clone(),
    }
}

/// The payer the spec names, if it names one.
pub(super) fn configured_payer(spec: &ExperimentCampaignSpec) -> Option<Address> {
    spec.payment
        .signer_address
        .as_deref()
        .and_then(|a| a.parse().ok())
}

/// Signs the voucher for `experiment` (the id the worker gets) through the remote signer;
/// nothing leaves this process yet. `now` is when the validity window starts.
async fn sign(
    handle: &CampaignHandle,
    spec: &ExperimentCampaignSpec,
    offer: &Offer,
    experiment: &str,
    timeout: Duration,
    now: u64,
) -> Result<Voucher, SignerError> {
    let terms = VoucherTerms {
        experiment_id: experiment.to_string(),
        nonce: new_nonce(),
        from: configured_payer(spec),
        run_timeout: timeout,
    };
    sign_voucher(&handle.signer, offer, &terms, now).await
}

fn ledger_entry(pending: &PendingExperiment, worker: &Candidate, voucher: &Voucher) -> LedgerEntry {
    LedgerEntry {
        experiment_id: pending.experiment_id.clone(),
        worker: worker.endpoint.to_string(),
        agent_id: worker.agent_id,
        amount: voucher.amount.atomic().to_string(),
        nonce: voucher.nonce.to_string(),
        payment: serde_json::to_string(voucher).expect("a voucher serialises"),
        valid_before: voucher.valid_before,
        config: pending.config.clone(),
        config_hash: pending.config_hash.clone(),
        params: pending.params.clone(),
        train_hash: pending.train_hash.clone(),
        description: pending.description.clone(),
        attempt: pending.attempts + 1,
        started_at: publish::now_rfc3339(),
        payment_state: None,
    }
}

/// Stores the ledger entry, with the voucher, before the voucher is sent. Re-checks suspend,
/// stop reasons and that the experiment is still pending, on the latest status. The payer's
/// balance, when it was read, is shown in the same write.
async fn reserve(
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    funds: Option<Usdc>,
    mode: Reservation,
) -> Result<(), UpdateError> {
    handle
        .store
        .update(&mut |c, s| {
            if let Some(balance) = funds {
                super::settle::show_funded(s, balance, c.metadata.generation);
            }
            if c.spec.suspend {
                return Err(Refusal::Suspended);
            }
            let limits = Limits::from_spec(&c.spec)?;
            if let Some(stop) = ledger::stop_reason(s, &limits) {
                return Err(Refusal::Stopped(stop));
            }
            if !s
                .pending
                .iter()
                .any(|p| p.experiment_id == entry.experiment_id)
            {
                return Err(Refusal::Duplicate(entry.experiment_id.clone()));
            }
            match mode {
                Reservation::Now => ledger::reserve(s, &limits, entry.clone()),
                Reservation::Ahead => ledger::reserve_ahead(s, &limits, entry.clone()),
            }
        })
        .await
        .map(|_| ())
}

/// The ExperimentStarted event, published beside the send: it is not on the critical path.
pub(super) fn announce(handle: &CampaignHandle, entry: &LedgerEntry, voucher: &Voucher) {
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
}

/// The train.py and config a ledger entry pays for, from status or the data volume's store.
async fn inputs_of(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
) -> Result<(Arc<str>, serde_json::Value), ScriptError> {
    let train_py = source_of(engine, handle, entry.train_hash.as_deref()).await?;
    let config = configs::config_of(
        &engine.scripts,
        entry.config.as_ref(),
        entry.config_hash.as_deref(),
    )
    .await?;
    Ok((train_py, config))
}

/// The train.py an experiment runs: the campaign's, or the one THINK stored under its hash.
pub async fn source_of(
    engine: &Engine,
    handle: &CampaignHandle,
    train_hash: Option<&str>,
) -> Result<Arc<str>, ScriptError> {
    match train_hash {
        None => Ok(handle.train_py.clone()),
        Some(hash) if hash == crate::experiment::train_hash(&handle.train_py) => {
            Ok(handle.train_py.clone())
        }
        Some(hash) => engine
            .scripts
            .get(hash)
            .await?
            .map(Arc::from)
            .ok_or_else(|| ScriptError::Missing(hash.to_string())),
    }
}

/// A client for a worker. A worker the campaign names in `discovery.workers` is the user's
/// choice and is used as given; any other endpoint was discovered, and is reached only at
/// addresses `discovery.allowPrivate` permits, checked at connect time.
fn worker_client(
    pool: &ClientPool,
    spec: &ExperimentCampaignSpec,
    endpoint: &Endpoint,
    timeout: Duration,
    poll: Duration,
) -> Result<WorkerClient, StartError> {
    let policy = if claim::is_named(&spec.discovery, endpoint) {
        None
    } else {
        Some(crate::discovery::AddressPolicy::with_allowlist(
            &spec.discovery.allow_private,
        )?)
    };
    Ok(pool
        .worker(endpoint.as_str(), timeout, policy.as_ref())?
        .with_poll_interval(poll))
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

/// Resumes a ledger entry found without a task (after a restart or a lost leadership). A
/// voucher signed ahead may have been sent just before the crash: it is finished the same way,
/// once its worker is free of the experiment before it.
pub async fn resume(engine: Arc<Engine>, handle: CampaignHandle, entry: LedgerEntry) {
    if !still_in_ledger(&handle, &entry).await {
        let holder = board::holder(&handle.key, &entry.experiment_id);
        engine.board.unkeep(&entry.worker, &holder);
        return;
    }
    if ledger::is_ahead(&entry) {
        super::ahead::wait_turn(&engine, &handle, &entry).await;
    }
    match resumable(&engine, &handle, &entry).await {
        Ok((voucher, client)) => {
            handle
                .notify
                .notify(Notice {
                    severity: Severity::Normal,
                    reason: "ExperimentResumed",
                    action: "Resume",
                    message: format!(
                        "experiment {} on {}: recovering its result or re-sending the same voucher",
                        entry.experiment_id, entry.worker
                    ),
                })
                .await;
            let reserved = Reserved {
                entry,
                voucher,
                client,
            };
            send(&engine, &handle, reserved, true).await;
        }
        Err(outcome) => {
            let outcome = outcome.for_entry(&entry);
            publish::complete(&engine, &handle, &entry, outcome, None).await
        }
    }
}

/// Whether the entry is still in the stored ledger. The reconcile that found it without a task
/// may have read the status just before its task counted it and ended: re-sending it then would
/// only meet a used nonce.
async fn still_in_ledger(handle: &CampaignHandle, entry: &LedgerEntry) -> bool {
    match handle.store.get().await {
        Ok(Some(c)) => c
            .status
            .unwrap_or_default()
            .ledger
            .iter()
            .any(|e| e.experiment_id == entry.experiment_id && e.nonce == entry.nonce),
        // Gone or unreadable: the resume decides as before.
        _ => true,
    }
}

/// What a resumed entry needs to be sent again, or the outcome that finishes it now: its result
/// is already in results.jsonl (the crash came between the two writes), or it cannot be sent
/// again (the amount then counts as spent: it must never be signed a second time).
async fn resumable(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
) -> Result<(Voucher, WorkerClient), Ending> {
    if let Some(record) = engine.memory.unconfirmed(&handle.key, &entry.experiment_id) {
        return Err(outcome_from_record(&record, entry));
    }
    let voucher: Voucher =
        serde_json::from_str(&entry.payment).map_err(|e| Ending::WorkerFailed {
            paid: Usdc::parse_atomic(&entry.amount).unwrap_or_default(),
            reason: format!("stored voucher unreadable: {e}"),
        })?;
    let gone = |reason: String| Ending::WorkerFailed {
        paid: voucher.amount,
        reason,
    };
    let spec = match handle.store.get().await {
        Ok(Some(c)) => c.spec,
        Ok(None) => return Err(gone("the campaign is gone".into())),
        Err(e) => return Err(gone(e.to_string())),
    };
    let timeout = Duration::from_secs(spec.experiment_timeout_seconds.into());
    let endpoint = Endpoint::new(&entry.worker);
    match worker_client(
        &engine.clients,
        &spec,
        &endpoint,
        timeout,
        engine.settings.job_poll,
    ) {
        Ok(client) => Ok((voucher, client)),
        Err(e) => Err(gone(e.to_string())),
    }
}

/// What one send is made of.
struct Sent<'a> {
    entry: &'a LedgerEntry,
    client: &'a WorkerClient,
    voucher: &'a Voucher,
    request: &'a ExperimentRequest,
}

/// The exchange with the worker and its ending: judged on chain when there is one, by the
/// gate's answer alone otherwise.
async fn answer(
    engine: &Engine,
    handle: &CampaignHandle,
    sent: Sent<'_>,
    resumed: bool,
) -> (Ending, Option<String>) {
    let Sent {
        entry,
        client,
        voucher,
        request,
    } = sent;
    match &engine.chain {
        Some(chain) => {
            let exchange = super::settle::exchange;
            exchange(
                chain, handle, entry, client, voucher, request, resumed, engine,
            )
            .await
        }
        None => {
            let started = Instant::now();
            let poll = engine.settings.job_poll;
            let (outcome, tx) = exchange(client, voucher, request, resumed, poll).await;
            engine.board.note_answered(client.endpoint());
            engine.metrics.step(StepLabel::Send, started.elapsed());
            (outcome, tx)
        }
    }
}

/// Sends (or re-sends) the voucher, classifies the answer, and hands it to PUBLISH.
pub(super) async fn send(
    engine: &Engine,
    handle: &CampaignHandle,
    reserved: Reserved,
    resumed: bool,
) {
    let Reserved {
        mut entry,
        voucher,
        client,
    } = reserved;
    let (train_py, config) = match inputs_of(engine, handle, &entry).await {
        Ok(inputs) => inputs,
        Err(e) => {
            // Signed and reserved, but the code or config it pays for is gone: it must not be
            // sent with others, nor signed again. The amount counts as spent.
            let ending = Ending::WorkerFailed {
                paid: voucher.amount,
                reason: e.to_string(),
            };
            return publish::complete(engine, handle, &entry, ending, None).await;
        }
    };
    // results.jsonl records the whole config, also when status kept only its hash.
    entry.config = Some(config.clone());
    // The id the voucher was signed for: unique to the campaign (older vouchers: the content id).
    let request = ExperimentRequest {
        experiment_id: voucher.experiment_id.clone(),
        train_py: train_py.to_string(),
        config,
    };
    if let Some(idle) = engine.board.take_idle(client.endpoint()) {
        engine
            .metrics
            .worker_idle_seconds
            .observe(idle.as_secs_f64());
    }
    // A reconcile now may sign the next experiment ahead for this worker. The controller's
    // watch sees the status write; `loop` has no watch and waits on this.
    engine.changed.notify_one();
    let started = Instant::now();
    let sent = Sent {
        entry: &entry,
        client: &client,
        voucher: &voucher,
        request: &request,
    };
    let (outcome, tx) = answer(engine, handle, sent, resumed).await;
    let outcome = outcome.for_entry(&entry);
    if matches!(outcome, Ending::Finished { .. }) {
        let holder = board::holder(&handle.key, &entry.experiment_id);
        engine.board.hand_over(&entry.worker, &holder);
    }
    failpoint::crash_at(Window::AfterAnswer);
    engine
        .metrics
        .experiment_duration
        .with_label_values(&[ResultLabel::of(&outcome).as_str()])
        .observe(started.elapsed().as_secs_f64());
    publish::complete(engine, handle, &entry, outcome, tx).await;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "recorded");
}

/// One send, with recovery when the answer was lost. Returns the outcome and the settlement tx.
async fn exchange(
    client: &WorkerClient,
    voucher: &Voucher,
    request: &ExperimentRequest,
    resumed: bool,
    poll: Duration,
) -> (Ending, Option<String>) {
    let paid = voucher.amount;
    if resumed {
        return (
            settle_uncertain(client, voucher, request, poll, None).await,
            None,
        );
    }
    match failpoint::crash_during(Window::AfterSend, client.run(Some(voucher), request)).await {
        Ok(run) => {
            let tx = run.transaction().map(str::to_string);
            (
                outcome_of(run.result, paid, client.endpoint(), &request.experiment_id),
                tx,
            )
        }
        // A refused connection sent nothing; a 409 is the worker declining before it runs.
        Err(e @ (WorkerError::Unreachable { .. } | WorkerError::Busy)) => (
            Ending::WorkerFailed {
                paid: Usdc::ZERO,
                reason: e.to_string(),
            },
            None,
        ),
        // Gates settle only after the worker answered below 400, and a worker that ran the
        // experiment stores its result.
        Err(e @ (WorkerError::Http { .. } | WorkerError::PaymentRejected { .. })) => {
            (after_error(client, request, paid, e).await, None)
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
            Ok(Some(result)) => (
                outcome_of(result, paid, client.endpoint(), &request.experiment_id),
                None,
            ),
            _ => (
                Ending::WorkerFailed {
                    paid,
                    reason: e.to_string(),
                },
                None,
            ),
        },
    }
}

/// The ending of a send the gate or worker answered with an error. A stored result means it ran
/// and was paid, even if the answer we got was an error; none means nothing was paid and the
/// experiment may go to another worker. If the worker cannot say, the amount counts as spent.
async fn after_error(
    client: &WorkerClient,
    request: &ExperimentRequest,
    paid: Usdc,
    e: WorkerError,
) -> Ending {
    match client.recover(request).await {
        Ok(Some(result)) => outcome_of(result, paid, client.endpoint(), &request.experiment_id),
        Ok(None) => Ending::WorkerFailed {
            paid: Usdc::ZERO,
            reason: e.to_string(),
        },
        Err(_) => Ending::WorkerFailed {
            paid,
            reason: e.to_string(),
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
) -> Ending {
    let paid = voucher.amount;
    let mut last = first_error.unwrap_or_else(|| "resumed after a restart".into());
    loop {
        match client.recover(request).await {
            Ok(Some(result)) => {
                return outcome_of(result, paid, client.endpoint(), &request.experiment_id);
            }
            Err(WorkerError::InvalidAnswer(e)) => return Ending::WorkerFailed { paid, reason: e },
            _ => {}
        }
        if !voucher.is_live(unix_now()) {
            return Ending::WorkerFailed {
                paid,
                reason: format!("{last}; the voucher expired with no result from the worker"),
            };
        }
        match client.run(Some(voucher), request).await {
            Ok(run) => {
                return outcome_of(run.result, paid, client.endpoint(), &request.experiment_id);
            }
            Err(WorkerError::InvalidAnswer(e)) => return Ending::WorkerFailed { paid, reason: e },
            // Busy (probably with this very experiment), refused (the nonce may be in use by the
            // first send), unreachable or cut: the stored result may still come.
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(poll).await;
    }
}

/// The outcome of a worker's result for the campaign's experiment `experiment_id` (the worker
/// knows it under the campaign-unique id it was sent).
pub(super) fn outcome_of(
    result: crate::payment::ExperimentResult,
    paid: Usdc,
    endpoint: &str,
    experiment_id: &str,
) -> Ending {
    let summary = match (result.status.as_str(), result.val_bpb) {
        ("completed", Some(v)) if ledger::is_valid_val_bpb(v) => Some(ResultSummary {
            experiment_id: experiment_id.to_string(),
            val_bpb: v,
            config: result.raw.get("config").cloned(),
            worker: endpoint.to_string(),
            train_hash: result.train_hash.clone(),
            ..ResultSummary::default()
        }),
        _ => None,
    };
    Ending::Finished {
        result: summary,
        paid,
    }
}

fn outcome_from_record(record: &ResultRecord, entry: &LedgerEntry) -> Ending {
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
            ..ResultSummary::default()
        }),
        _ => None,
    };
    Ending::Finished { result, paid }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::StaticWorker;

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

    fn client(spec: &ExperimentCampaignSpec, endpoint: &str) -> Result<WorkerClient, StartError> {
        worker_client(
            &ClientPool::new(),
            spec,
            &Endpoint::new(endpoint),
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn discovered_endpoints_are_held_to_the_address_policy_and_named_ones_are_not() {
        let loopback = "http://127.0.0.1:9/services/w";
        let err = client(&spec(&[], &[]), loopback).unwrap_err();
        assert!(matches!(err, StartError::Worker(_)), "{err}");
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
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
