//! RUN's send when the payment chain can be read: the chain, not the shape of the HTTP answer,
//! decides whether an uncertain voucher was paid ([`crate::chain::verdict`]). The ledger entry
//! shows where that stands (`paymentState`).

use super::CampaignHandle;
use crate::chain::UsdcChain;
use crate::chain::verdict::{self, Answered, Settled};
use crate::crd::{LedgerEntry, PaymentState};
use crate::failpoint::{self, Window};
use crate::ledger::{self, Ending, Refusal};
use crate::payment::{ExperimentRequest, Voucher, WorkerClient, unix_now};
use crate::usdc::Usdc;

/// One send (or, `resumed`, a re-send of the same voucher), judged on chain. Returns the
/// outcome and the settlement transaction.
// The send's inputs, plus the engine for its step timings and the worker board.
#[allow(clippy::too_many_arguments)]
pub(super) async fn exchange(
    chain: &UsdcChain,
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    client: &WorkerClient,
    voucher: &Voucher,
    request: &ExperimentRequest,
    resumed: bool,
    engine: &super::Engine,
) -> (Ending, Option<String>) {
    let started = std::time::Instant::now();
    let answer = failpoint::crash_during(Window::AfterSend, client.run(Some(voucher), request));
    let answer = answer.await;
    engine.board.note_answered(client.endpoint());
    engine
        .metrics
        .step(crate::telemetry::Step::Send, started.elapsed());
    let started = std::time::Instant::now();
    let (known, gate_tx, want_result) = match answer {
        Ok(run) => {
            let tx = run.transaction().map(str::to_string);
            (Some(run.result), tx, true)
        }
        // A re-send's refusal proves nothing: the first send may be running and settling.
        Err(e) if !resumed && verdict::classify(&e) == Answered::Refused => {
            let reason = e.to_string();
            return (unpaid(reason), None);
        }
        Err(e) => {
            tracing::warn!(campaign = %handle.key, experiment = %entry.experiment_id, error = %e, "uncertain answer; asking the chain");
            mark(handle, entry, PaymentState::Uncertain).await;
            // A worker that answered garbage has no result to wait for; one that was cut off may.
            let garbage = matches!(e, crate::payment::WorkerError::InvalidAnswer(_));
            (None, None, !garbage)
        }
    };
    let settled = verdict::settle(
        chain,
        client,
        voucher,
        request,
        known,
        want_result,
        unix_now,
    );
    let settled = settled.await;
    engine
        .metrics
        .step(crate::telemetry::Step::Judge, started.elapsed());
    ending_of(handle, entry, voucher, client, settled, gate_tx).await
}

async fn ending_of(
    handle: &CampaignHandle,
    entry: &LedgerEntry,
    voucher: &Voucher,
    client: &WorkerClient,
    settled: Settled,
    gate_tx: Option<String>,
) -> (Ending, Option<String>) {
    let paid = voucher.amount;
    match settled {
        Settled::Paid {
            result: Some(result),
            tx,
        } => (
            super::run::outcome_of(result, paid, client.endpoint(), &entry.experiment_id),
            tx.map(|t| t.to_string()).or(gate_tx),
        ),
        Settled::Paid { result: None, tx } => (
            Ending::WorkerFailed {
                paid,
                reason: "paid on chain, but the worker gave no valid result".into(),
            },
            tx.map(|t| t.to_string()).or(gate_tx),
        ),
        Settled::Unpaid => (unpaid("the voucher expired unused on chain".into()), None),
        Settled::Undecided { reason } => {
            mark(handle, entry, PaymentState::Undecided).await;
            (
                Ending::WorkerFailed {
                    paid,
                    reason: format!("the chain could not say whether it was paid: {reason}"),
                },
                gate_tx,
            )
        }
    }
}

fn unpaid(reason: String) -> Ending {
    Ending::WorkerFailed {
        paid: Usdc::ZERO,
        reason,
    }
}

/// Shows the entry's payment state in status. A failed write is logged: the judgement goes on,
/// and an undecided entry is still counted as possibly spent (its amount is in flight).
async fn mark(handle: &CampaignHandle, entry: &LedgerEntry, state: PaymentState) {
    let id = entry.experiment_id.clone();
    let stored = handle
        .store
        .update(&mut |_, s| {
            if ledger::mark_payment(s, &id, state) {
                Ok(())
            } else {
                Err(Refusal::Duplicate(id.clone()))
            }
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(campaign = %handle.key, experiment = %entry.experiment_id, error = %e, "payment state not shown in status");
    }
}

/// Reads the payer's balance before signing. `Ok(None)`: no chain, or it cannot be read now (the
/// facilitator refuses an unfunded voucher, so nothing moves). Too low: `WalletFunded` is False
/// with `InsufficientBalance` and nothing is signed; the next start after a top-up goes on.
pub(super) async fn wallet_check(
    engine: &super::Engine,
    handle: &CampaignHandle,
    spec: &crate::crd::ExperimentCampaignSpec,
    offer: &crate::payment::Offer,
) -> Result<Option<Usdc>, super::run::StartError> {
    let Some(chain) = &engine.chain else {
        return Ok(None);
    };
    let payer = handle
        .signer
        .payer(super::run::configured_payer(spec))
        .await?;
    let balance = match engine
        .wallets
        .balance(chain, offer.network, offer.asset, payer)
        .await
    {
        Ok(balance) => balance,
        Err(e) => {
            tracing::warn!(campaign = %handle.key, error = %e, "cannot read the payer's balance; signing anyway");
            return Ok(None);
        }
    };
    if let Err(low) = engine
        .wallets
        .take(offer.asset, payer, balance, offer.amount)
    {
        show_unfunded(handle, &low).await;
        return Err(low.into());
    }
    Ok(Some(balance))
}

/// `WalletFunded` True and the balance, in the reservation's write.
pub(super) fn show_funded(
    status: &mut crate::crd::ExperimentCampaignStatus,
    balance: Usdc,
    generation: Option<i64>,
) {
    status.wallet_balance = Some(balance.to_string());
    let update = super::status::ConditionUpdate {
        kind: super::status::ConditionType::WalletFunded,
        ok: true,
        reason: "Funded",
        message: format!("the payer holds {balance} USDC"),
    };
    super::status::set_condition(
        &mut status.conditions,
        super::status::condition(&update, generation),
    );
}

async fn show_unfunded(handle: &CampaignHandle, low: &crate::chain::wallet::InsufficientBalance) {
    let stored = handle
        .store
        .update(&mut |c, s| {
            s.wallet_balance = Some(low.balance.to_string());
            let update = super::status::ConditionUpdate {
                kind: super::status::ConditionType::WalletFunded,
                ok: false,
                reason: "InsufficientBalance",
                message: low.to_string(),
            };
            let generation = c.metadata.generation;
            super::status::set_condition(
                &mut s.conditions,
                super::status::condition(&update, generation),
            );
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(campaign = %handle.key, error = %e, "WalletFunded not shown in status");
    }
}

/// When a voucher's validity starts: the later of wall time and the chain's latest block (a
/// chain ahead of wall time would see a wall-clock `validBefore` as nearer than meant).
pub(super) async fn signing_time(engine: &super::Engine) -> u64 {
    let wall = unix_now();
    let Some(chain) = &engine.chain else {
        return wall;
    };
    match chain.head().await {
        Ok((_, time)) => wall.max(time),
        Err(_) => wall,
    }
}
