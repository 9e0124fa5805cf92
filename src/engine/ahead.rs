//! Signing ahead: while a worker runs one experiment, the next one for it is priced, signed and
//! reserved in the ledger (`paymentState: SignedAhead`), and sent the moment the worker answers.
//! A start's overhead (the 402, the balance, the remote signer, the ledger write) then overlaps
//! the run instead of keeping the worker idle (docs/throughput.md).
//!
//! Money rules (docs/money.md, "Signed ahead"):
//! - a signed-ahead voucher is in the ledger, so it counts against the budget and
//!   `maxExperiments` like any entry; at most one per worker, so at most `parallelism`;
//! - it is sent only once its worker answered the experiment before it, and only if the campaign,
//!   read again, is not deleted, suspended or stopped; this task alone can send it, once;
//! - a voucher this task dropped (its worker failed, the campaign stopped, it would expire) was
//!   provably never sent: [`ledger::drop_ahead`] puts the experiment back in pending;
//! - after a restart nobody knows whether it was sent just before the crash: it is finished like
//!   any ledger entry, by the worker's stored result or by re-sending the *same* voucher (its
//!   nonce settles at most once), after waiting for its worker ([`wait_turn`]). It is never
//!   signed again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::board::{self, WorkerBoard};
use super::claim::Candidate;
use super::run::{self, Reservation};
use super::trust::RunRole;
use super::{CampaignHandle, Engine};
use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus, LedgerEntry, PendingExperiment};
use crate::endpoint::Endpoint;
use crate::ledger::{self, Limits, Refusal};
use crate::payment::{RemoteSigner, unix_now};

/// How often a waiting voucher looks at its worker again when no release woke it.
const RECHECK: Duration = Duration::from_secs(1);

/// `AUTORESEARCH_SIGN_AHEAD=off` turns signing ahead off (each start then waits for its worker
/// to be free before pricing and signing): the "before" of `scripts/bench.sh throughput`.
pub(super) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("AUTORESEARCH_SIGN_AHEAD").map_or(true, |v| v != "off"))
}

/// Each campaign's signer client as its latest reconcile built it. The controller keeps one
/// client per signer URL and token, so another client means the user changed either since a
/// voucher was signed ahead: that voucher is not sent (a revoked token stops spending).
#[derive(Default)]
pub(super) struct Signers(Mutex<HashMap<String, Arc<RemoteSigner>>>);

impl Signers {
    fn note(&self, handle: &CampaignHandle) {
        let mut map = self.0.lock().expect("signers lock");
        map.insert(handle.key.clone(), handle.signer.clone());
    }

    fn is_current(&self, handle: &CampaignHandle) -> bool {
        let map = self.0.lock().expect("signers lock");
        map.get(&handle.key)
            .is_none_or(|latest| Arc::ptr_eq(latest, &handle.signer))
    }
}

/// Signs ahead for the busy workers of this campaign that have nothing waiting yet: one pending
/// experiment each (not one a task already starts), within [`ledger::ahead_slots`].
pub(super) fn spawn_all(
    engine: &Arc<Engine>,
    handle: &CampaignHandle,
    stored: &Arc<ExperimentCampaign>,
    status: &ExperimentCampaignStatus,
) {
    engine.signers.note(handle);
    let Ok(limits) = Limits::from_spec(&stored.spec) else {
        return;
    };
    if !enabled() || stored.spec.suspend || ledger::stop_reason(status, &limits).is_some() {
        return;
    }
    let mut pending: Vec<&PendingExperiment> = status
        .pending
        .iter()
        .filter(|p| !engine.memory.has_live_task(&handle.key, &p.experiment_id))
        .collect();
    if checking(engine, handle, stored, status) {
        return;
    }
    let slots = ledger::ahead_slots(status, &limits) as usize;
    // The workers CLAIM would give work to: not excluded by the spec or by trust, and each
    // experiment kept off the workers it must avoid (a replication, a failed attempt).
    let workers =
        super::claim::eligible(&stored.spec.discovery, busy_workers(engine, handle, status));
    let workers = engine.memory.screen(&handle.key, workers, false);
    let avoid = engine.memory.avoid_map(&handle.key);
    let fits = |p: &PendingExperiment, endpoint: &String| {
        !p.avoid.contains(endpoint)
            && avoid
                .get(&p.experiment_id)
                .is_none_or(|away| !away.contains(endpoint))
    };
    for worker in workers.into_iter().take(slots) {
        let endpoint = worker.endpoint.to_string();
        let Some(at) = pending.iter().position(|p| fits(p, &endpoint)) else {
            continue;
        };
        let holder = board::holder(&handle.key, &pending[at].experiment_id);
        if !engine.board.try_keep_next(&endpoint, &holder) {
            continue;
        }
        let experiment = pending.remove(at).clone();
        let id = experiment.experiment_id.clone();
        let task = start(
            engine.clone(),
            handle.clone(),
            stored.clone(),
            experiment,
            worker,
        );
        engine.spawn(handle, id, task);
    }
}

/// How many experiments THINK may propose beyond the free slots, to be signed ahead: one per
/// worker busy with this campaign and without a voucher waiting for it (a proposal for a worker
/// that is not busy would only sit in `pending`), and none while a check holds signing ahead
/// back ([`checking`]).
pub(super) fn wanted(
    engine: &Engine,
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    slots: usize,
) -> usize {
    if checking(engine, handle, campaign, status) {
        0
    } else {
        slots.min(busy_workers(engine, handle, status).len())
    }
}

/// Whether a check holds signing ahead back: a baseline run or replication pending (it needs the
/// next free worker), a replication running (trust may exclude a worker or stop trusting a claim
/// on its result), or a baseline run running for a strategy that waits for its result. A
/// parameter search's experiments run beside its baseline runs (their results wait for the
/// baseline, `publish::after_the_baseline`), so they are signed ahead too, but never for a
/// baseline worker ([`busy_workers`]): a failed baseline run needs its slot and the next free
/// worker, not one kept for an experiment.
fn checking(
    engine: &Engine,
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
) -> bool {
    let role = |id: &str| engine.memory.role(&handle.key, id);
    let beside = super::think::proposes_during_baseline(campaign);
    let mut pending = status.pending.iter().map(|p| role(&p.experiment_id));
    let mut running = status.ledger.iter().map(|e| role(&e.experiment_id));
    pending.any(|r| r != RunRole::Experiment)
        || running.any(|r| match r {
            RunRole::Experiment => false,
            RunRole::Baseline => !beside,
            RunRole::Replication(_) => true,
        })
}

/// The workers running one of this campaign's experiments (not a baseline run) with no voucher
/// signed ahead for them.
fn busy_workers(
    engine: &Engine,
    handle: &CampaignHandle,
    status: &ExperimentCampaignStatus,
) -> Vec<Candidate> {
    let taken: Vec<&str> = status
        .ledger
        .iter()
        .filter(|e| {
            ledger::is_ahead(e)
                || engine.memory.role(&handle.key, &e.experiment_id) != RunRole::Experiment
        })
        .map(|e| e.worker.as_str())
        .collect();
    let mut busy: Vec<Candidate> = Vec::new();
    for entry in status.ledger.iter().filter(|e| !ledger::is_ahead(e)) {
        let endpoint = Endpoint::new(&entry.worker);
        if taken.contains(&entry.worker.as_str()) || busy.iter().any(|c| c.endpoint == endpoint) {
            continue;
        }
        busy.push(Candidate {
            endpoint,
            agent_id: entry.agent_id,
            name: None,
        });
    }
    busy
}

/// Gives the worker's keep back if the task ends (or is aborted) before it claimed the worker.
struct Keep<'a> {
    board: &'a WorkerBoard,
    endpoint: String,
    holder: String,
}

impl Drop for Keep<'_> {
    fn drop(&mut self) {
        // Only the keep: a claim taken by the task is released by PUBLISH as usual.
        self.board.forget_keep(&self.endpoint, &self.holder);
    }
}

/// The task of one experiment signed ahead for `worker`: reserve, wait for the worker, check the
/// campaign still wants it, send. Every early return leaves the experiment pending with nothing
/// sent.
async fn start(
    engine: Arc<Engine>,
    handle: CampaignHandle,
    campaign: Arc<ExperimentCampaign>,
    pending: PendingExperiment,
    worker: Candidate,
) {
    let id = pending.experiment_id.clone();
    let endpoint = worker.endpoint.to_string();
    let holder = board::holder(&handle.key, &id);
    let _keep = Keep {
        board: &engine.board,
        endpoint: endpoint.clone(),
        holder: holder.clone(),
    };
    let mode = Reservation::Ahead;
    let reserved = match run::prepare(&engine, &handle, &campaign, &pending, &worker, mode).await {
        Ok(Ok(reserved)) => reserved,
        Ok(Err(not_now)) => {
            tracing::debug!(campaign = %handle.key, experiment = %id, reason = %not_now, "not signed ahead; the voucher is dropped unsent");
            return;
        }
        Err(e) => return run::skipped(&engine, &handle, &endpoint, &id, e).await,
    };
    let timeout = Duration::from_secs(campaign.spec.experiment_timeout_seconds.into());
    let voucher = &reserved.voucher;
    if let Err(why) = wait_for_worker(&engine, &endpoint, &holder, voucher, timeout).await {
        return drop_unsent(&engine, &handle, &reserved.entry, why).await;
    }
    if let Err(refusal) = still_wanted(&engine, &handle, &reserved.entry).await {
        return drop_unsent(&engine, &handle, &reserved.entry, &refusal.to_string()).await;
    }
    // Shown as sent beside the send: a crash either side of this write resumes the entry the
    // same way (the same voucher, never a new one), so it is not on the worker's idle path.
    let shown = handle.clone();
    let entry = reserved.entry.clone();
    tokio::spawn(async move { mark_sent(&shown, &entry).await });
    run::announce(&handle, &reserved.entry, &reserved.voucher);
    run::send(&engine, &handle, reserved, false).await;
}

/// Before a resumed entry still marked `SignedAhead` is finished like any ledger entry (it may
/// have been sent just before the crash), it waits for its worker to answer the experiment
/// ahead of it. Gives up waiting when the worker failed or the voucher would expire: the resume
/// then goes on, and the voucher's expiry decides as for any entry.
pub(super) async fn wait_turn(engine: &Engine, handle: &CampaignHandle, entry: &LedgerEntry) {
    let Ok(voucher) = serde_json::from_str::<crate::payment::Voucher>(&entry.payment) else {
        return;
    };
    let holder = board::holder(&handle.key, &entry.experiment_id);
    if !engine.board.try_keep_next(&entry.worker, &holder) {
        engine.board.hold(&entry.worker, &holder);
        return;
    }
    let _keep = Keep {
        board: &engine.board,
        endpoint: entry.worker.clone(),
        holder: holder.clone(),
    };
    let timeout = match handle.store.get().await {
        Ok(Some(c)) => Duration::from_secs(c.spec.experiment_timeout_seconds.into()),
        _ => Duration::ZERO,
    };
    let waited = wait_for_worker(engine, &entry.worker, &holder, &voucher, timeout).await;
    if let Err(why) = waited {
        tracing::info!(campaign = %handle.key, experiment = %entry.experiment_id, reason = why, "resuming a voucher signed ahead without waiting for its worker");
        engine.board.forget_keep(&entry.worker, &holder);
        engine.board.hold(&entry.worker, &holder);
    }
}

/// Claims the worker as soon as its current experiment is answered. Gives up when the worker
/// failed (it cools down) or when the voucher would expire before a run could end.
async fn wait_for_worker(
    engine: &Engine,
    endpoint: &str,
    holder: &str,
    voucher: &crate::payment::Voucher,
    timeout: Duration,
) -> Result<(), &'static str> {
    loop {
        if !voucher.is_live(unix_now() + timeout.as_secs()) {
            return Err("the voucher would expire before a run could end");
        }
        if engine
            .board
            .claim_when_free(endpoint, holder, RECHECK)
            .await
        {
            return Ok(());
        }
        if !engine.board.is_busy(endpoint) && engine.board.is_cooling(endpoint) {
            return Err("its worker failed and cools down");
        }
    }
}

/// Whether the campaign, as stored now, still wants the voucher sent: not deleted, suspended,
/// stopped or blocked (a signer failure, say) meanwhile, its signer unchanged, and the entry
/// still this voucher's. (A read, not a write: the write before the send was the reservation.)
async fn still_wanted(
    engine: &Engine,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
) -> Result<(), Refusal> {
    if !engine.signers.is_current(handle) {
        return Err(Refusal::SignerChanged);
    }
    let stored = handle.store.get().await;
    let Ok(Some(c)) = stored else {
        return Err(Refusal::Deleting);
    };
    if c.metadata.deletion_timestamp.is_some() {
        return Err(Refusal::Deleting);
    }
    if c.spec.suspend {
        return Err(Refusal::Suspended);
    }
    let url = |u: &str| u.trim_end_matches('/').to_string();
    if url(&c.spec.payment.remote_signer_url) != url(handle.signer.url()) {
        return Err(Refusal::SignerChanged);
    }
    let status = c.status.unwrap_or_default();
    if let Some((_, why)) = super::status::blocked(&status) {
        return Err(Refusal::Blocked(why));
    }
    let limits = Limits::from_spec(&c.spec)?;
    if let Some(stop) = ledger::stop_reason(&status, &limits) {
        return Err(Refusal::Stopped(stop));
    }
    let mine = |e: &LedgerEntry| e.experiment_id == entry.experiment_id && e.nonce == entry.nonce;
    if !status.ledger.iter().any(|e| mine(e) && ledger::is_ahead(e)) {
        return Err(Refusal::Duplicate(entry.experiment_id.clone()));
    }
    Ok(())
}

/// Shows the entry as sent (running) in status. A failed write is logged: the entry stays
/// `SignedAhead` in status, which a resume handles like a sent one.
async fn mark_sent(handle: &CampaignHandle, entry: &LedgerEntry) {
    let stored = handle
        .store
        .update(&mut |c, s| {
            let limits = Limits::from_spec(&c.spec)?;
            ledger::promote(s, &limits, &entry.experiment_id, &entry.nonce)
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(campaign = %handle.key, experiment = %entry.experiment_id, error = %e, "a voucher signed ahead was sent but is not shown as sent");
    }
}

/// Drops a voucher signed ahead and never sent: the entry leaves the ledger and the experiment
/// is pending again. If the write fails the entry stays, and the next reconcile's resume drops it.
async fn drop_unsent(engine: &Engine, handle: &CampaignHandle, entry: &LedgerEntry, why: &str) {
    let id = entry.experiment_id.clone();
    let dropped = handle
        .store
        .update(&mut |c, s| {
            let limits = Limits::from_spec(&c.spec)?;
            if ledger::drop_ahead(s, &limits, &id, &entry.nonce) {
                Ok(())
            } else {
                Err(Refusal::Duplicate(id.clone()))
            }
        })
        .await;
    engine
        .board
        .unkeep(&entry.worker, &board::holder(&handle.key, &id));
    match dropped {
        Ok(_) => {
            tracing::info!(campaign = %handle.key, experiment = %id, reason = why, "voucher signed ahead dropped unsent; the experiment is pending again")
        }
        Err(e) => {
            tracing::warn!(campaign = %handle.key, experiment = %id, error = %e, "voucher signed ahead not dropped yet; it is never sent")
        }
    }
}
