//! RUN's send when the payment chain can be read: the chain, not the shape of the HTTP answer,
//! decides whether an uncertain voucher was paid ([`crate::chain::verdict`]). The ledger entry
//! shows where that stands (`paymentState`).

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;

use super::CampaignHandle;
use super::status::{ConditionType, ConditionUpdate};
use crate::chain::verdict::{self, Answered, ReadWatch, Settled};
use crate::chain::{ChainError, UsdcChain};
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
    if answer.is_ok() {
        // The worker answered: it is free now, whatever the chain says of the payment, so a
        // voucher signed ahead for it goes out while this one is judged (docs/throughput.md).
        let holder = super::board::holder(&handle.key, &entry.experiment_id);
        engine.board.hand_over(&entry.worker, &holder);
    }
    engine
        .metrics
        .step(crate::telemetry::StepLabel::Send, started.elapsed());
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
    let watch = ChainWatch::new(handle, true);
    let settled = verdict::settle(
        chain,
        client,
        voucher,
        request,
        known,
        want_result,
        unix_now,
        &watch,
    );
    let settled = settled.await;
    engine
        .metrics
        .step(crate::telemetry::StepLabel::Judge, started.elapsed());
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

/// Reads the payer's balance before signing. `Ok(None)`: no chain (`ERPC_URL` unset). A chain
/// that cannot be read refuses the start (`StartError::Chain`, `ChainReadable` False): a voucher
/// signed now could not be judged if its answer were uncertain. Too low: `WalletFunded` is False
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
            tracing::warn!(campaign = %handle.key, error = %e, "cannot read the payer's balance; nothing is signed");
            ChainWatch::new(handle, false).saw(Err(&e)).await;
            return Err(e.into());
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
    clear_unreadable(status);
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

/// Shows in status whether the payment chain can be read: `ChainReadable` False (with an Event
/// and Progressing False) on a failed read, set back by the next read that works.
pub(super) struct ChainWatch<'a> {
    handle: &'a CampaignHandle,
    // Whether status may say the chain is unreadable: a good read then clears it, once.
    raised: AtomicBool,
}

impl<'a> ChainWatch<'a> {
    /// A watch for `handle`'s campaign; `raised` when its status may already show a failure.
    pub(super) fn new(handle: &'a CampaignHandle, raised: bool) -> Self {
        Self {
            handle,
            raised: AtomicBool::new(raised),
        }
    }

    async fn failed(&self, error: &ChainError) {
        self.raised.store(true, Ordering::Relaxed);
        let update = unreadable(error);
        let (store, notify) = (&*self.handle.store, &*self.handle.notify);
        super::publish::raise(store, notify, &update, "ReadChain").await;
    }

    async fn read(&self) {
        if !self.raised.swap(false, Ordering::Relaxed) {
            return;
        }
        let stored = self
            .handle
            .store
            .update(&mut |_, s| {
                clear_unreadable(s);
                Ok(())
            })
            .await;
        if let Err(e) = stored {
            tracing::warn!(campaign = %self.handle.key, error = %e, "could not clear ChainReadable");
        }
    }
}

impl ReadWatch for ChainWatch<'_> {
    fn saw<'a>(&'a self, read: Result<(), &'a ChainError>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match read {
                Ok(()) => self.read().await,
                Err(e) => self.failed(e).await,
            }
        })
    }
}

/// `ChainReadable` False: why, and what it holds up.
fn unreadable(error: &ChainError) -> ConditionUpdate {
    ConditionUpdate {
        kind: ConditionType::ChainReadable,
        ok: false,
        reason: error.reason(),
        message: format!(
            "{}; no voucher is signed until the payment chain can be read, and experiments already paid wait for its verdict (check ERPC_URL)",
            what_failed(error)
        ),
    }
}

/// The error without the JSON-RPC method: reads of different methods failing the same way give
/// the same message, so the condition (and its Event) does not change with each one.
fn what_failed(error: &ChainError) -> String {
    match error {
        ChainError::Transport { url, why, .. } => format!("{url} does not answer: {why}"),
        ChainError::Provider {
            url, code, message, ..
        } => format!("{url} answered error {code}: {message}"),
        other => other.to_string(),
    }
}

/// Sets `ChainReadable` back, if it was raised.
fn clear_unreadable(status: &mut crate::crd::ExperimentCampaignStatus) {
    super::publish::clear(
        status,
        ConditionType::ChainReadable,
        "Read",
        "the payment chain answers",
    );
}

/// The chain check of a campaign step: the endpoint must serve `network`'s chain (read once per
/// process: at a campaign's first use), and, while status says the chain was unreadable
/// (`raised`), must answer now. Raises or clears `ChainReadable`. `Ok` without `ERPC_URL`.
pub(super) async fn check_chain(
    engine: &super::Engine,
    handle: &CampaignHandle,
    network: crate::crd::Network,
    raised: bool,
) -> Result<(), ChainError> {
    let Some(chain) = &engine.chain else {
        return Ok(());
    };
    let read = match chain.check_network(network).await {
        Ok(()) if raised => chain.head().await.map(|_| ()),
        other => other,
    };
    ChainWatch::new(handle, raised)
        .saw(read.as_ref().map(|_| ()))
        .await;
    read
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::{Json, Router, routing::post};
    use serde_json::{Value, json};

    use super::*;
    use crate::chain::UsdcChain;
    use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus, Network};
    use crate::engine::{
        Engine, MemoryStore, Notice, Notify, Settings, StaticWorkers, status::is_false,
    };
    use crate::results::ResultsLog;
    use crate::telemetry::Metrics;
    use crate::testkit::{FakeSigner, FakeWorker};

    /// Collects the notices' reasons.
    #[derive(Default)]
    struct Reasons(Mutex<Vec<&'static str>>);

    impl Notify for Reasons {
        fn notify(&self, notice: Notice) -> BoxFuture<'_, ()> {
            self.0.lock().unwrap().push(notice.reason);
            Box::pin(async {})
        }
    }

    /// An engine reading the chain at `rpc`, with one campaign paying `worker`.
    struct Setup {
        engine: Arc<Engine>,
        store: Arc<MemoryStore>,
        handle: CampaignHandle,
        reasons: Arc<Reasons>,
        _dir: tempfile::TempDir,
    }

    fn setup(rpc: &str, worker: &str, signer: &FakeSigner) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let results = ResultsLog::new(dir.path().join("results.jsonl"));
        let mut engine = Engine::new(
            Arc::new(StaticWorkers),
            results,
            Metrics::new(),
            Settings::default(),
        );
        Arc::get_mut(&mut engine).unwrap().chain = Some(Arc::new(UsdcChain::new(rpc).unwrap()));
        let spec = serde_json::from_value(json!({
            "trainScript": {"inline": "print('val_bpb: 1.0')\n"},
            "search": {"strategy": "list", "experiments": [{"lr": 0.1}]},
            "maxExperiments": 1,
            "budget": {"total": "1", "maxPricePerExperiment": "0.05"},
            "payment": {"network": "base-sepolia"},
            "discovery": {"workers": [{"endpoint": worker}]},
        }))
        .unwrap();
        let mut campaign = ExperimentCampaign::new("c", spec);
        campaign.metadata.namespace = Some("ns".into());
        let store = Arc::new(MemoryStore::new(campaign));
        let reasons = Arc::new(Reasons::default());
        let handle = CampaignHandle {
            key: "ns/c".into(),
            namespace: Some("ns".into()),
            name: "c".into(),
            store: store.clone(),
            notify: reasons.clone(),
            signer: Arc::new(signer.client()),
            train_py: "print('val_bpb: 1.0')\n".into(),
            best: None,
            proposer: None,
        };
        Setup {
            engine,
            store,
            handle,
            reasons,
            _dir: dir,
        }
    }

    impl Setup {
        fn status(&self) -> ExperimentCampaignStatus {
            self.store.snapshot().unwrap().status.unwrap_or_default()
        }

        fn state_of(&self, kind: &str) -> Option<(String, String)> {
            let status = self.status();
            let c = status.conditions.iter().find(|c| c.type_ == kind)?;
            Some((c.status.clone(), c.reason.clone()))
        }
    }

    fn is(status: &str, reason: &str) -> Option<(String, String)> {
        Some((status.into(), reason.into()))
    }

    /// A JSON-RPC endpoint on loopback that says it is chain `id` and answers nothing else;
    /// its URL.
    async fn other_chain(id: u64) -> String {
        let answer = move |Json(call): Json<Value>| async move {
            Json(json!({"jsonrpc": "2.0", "id": call["id"], "result": format!("0x{id:x}")}))
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let router = Router::new().route("/", post(answer));
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    #[tokio::test]
    async fn an_unreachable_chain_signs_nothing_keeps_the_experiment_pending_and_says_so() {
        let signer = FakeSigner::start().await;
        let worker = FakeWorker::start().await;
        // Port 9 (discard) on loopback: nothing listens.
        let s = setup("http://127.0.0.1:9", &worker.endpoint(), &signer);

        s.engine.reconcile(&s.handle).await.unwrap();
        let raised = tokio::time::timeout(Duration::from_secs(10), async {
            while s.state_of("ChainReadable").is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(raised.is_ok(), "no ChainReadable in {:?}", s.status());
        tokio::time::sleep(Duration::from_millis(100)).await;

        assert_eq!(s.state_of("ChainReadable"), is("False", "Unreachable"));
        let status = s.status();
        let message = &status
            .conditions
            .iter()
            .find(|c| c.type_ == "ChainReadable")
            .unwrap()
            .message;
        assert!(
            message.starts_with("http://127.0.0.1:9/ does not answer"),
            "{message}"
        );
        assert_eq!(signer.sign_calls(), 0, "nothing signed");
        let status = s.status();
        assert!(status.ledger.is_empty());
        assert_eq!(status.pending.len(), 1, "the experiment waits");
        assert!(worker.settled().is_empty());
        assert!(s.reasons.0.lock().unwrap().contains(&"Unreachable"));
        // The next step shows why nothing moves.
        s.engine.reconcile(&s.handle).await.unwrap();
        assert_eq!(s.state_of("Progressing"), is("False", "ChainUnreadable"));
        s.engine.abort_all();
    }

    #[tokio::test]
    async fn an_endpoint_serving_another_chain_is_wrong_chain_until_a_good_read_clears_it() {
        let signer = FakeSigner::start().await;
        let mainnet = other_chain(1).await;
        let s = setup(&mainnet, "http://127.0.0.1:9", &signer);

        let checked = check_chain(&s.engine, &s.handle, Network::BaseSepolia, false).await;

        assert!(
            matches!(
                checked,
                Err(ChainError::WrongChain {
                    got: 1,
                    want: 84532,
                    ..
                })
            ),
            "{checked:?}"
        );
        assert_eq!(s.state_of("ChainReadable"), is("False", "WrongChain"));
        let campaign = s.store.snapshot().unwrap();
        assert!(is_false(&campaign, ConditionType::ChainReadable));

        // A read that works sets it back, once.
        ChainWatch::new(&s.handle, true).saw(Ok(())).await;
        assert_eq!(s.state_of("ChainReadable"), is("True", "Read"));
    }

    #[tokio::test]
    async fn without_a_failure_a_good_read_writes_nothing() {
        let signer = FakeSigner::start().await;
        let s = setup("http://127.0.0.1:9", "http://127.0.0.1:9", &signer);
        ChainWatch::new(&s.handle, true).saw(Ok(())).await;
        assert_eq!(s.state_of("ChainReadable"), None, "never raised, not added");
        assert!(s.reasons.0.lock().unwrap().is_empty());
    }
}
