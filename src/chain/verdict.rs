//! Whether a voucher was paid, decided by the chain rather than by what an HTTP answer looked
//! like. A tunnel or CDN in front of a gate answers 502/504/524 on its own while the gate goes
//! on, runs the experiment and settles; only an answer that proves refusal means unpaid.

use std::time::Duration;

use alloy::primitives::B256;
use futures::future::BoxFuture;

use super::{ChainError, UsdcChain};
use crate::payment::{ExperimentRequest, ExperimentResult, Voucher, WorkerClient, WorkerError};

/// First wait between two looks at an uncertain voucher; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two looks.
pub const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// How long past `validBefore` an unreadable chain is waited for before the voucher is left
/// undecided (counted in `spentUncertain`, never retried).
pub const UNREADABLE_GRACE_SECS: u64 = 600;

/// What a failed send proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// Nothing was sent, or the gate or worker itself refused before running: unpaid.
    Refused,
    /// Anything else: the voucher may be settling. The chain decides.
    Uncertain,
}

/// Reads a send's error. Only the gate's or the worker's own refusal is proof: a 402 before the
/// run, a 409, a 400/422 with a JSON error; a refused connection sent nothing.
pub fn classify(error: &WorkerError) -> Answered {
    match error {
        WorkerError::Unreachable { .. }
        | WorkerError::Busy
        | WorkerError::VoucherMismatch { .. }
        | WorkerError::BadEndpoint(_)
        | WorkerError::Price(_)
        | WorkerError::NoPrice { .. } => Answered::Refused,
        // A settlement failure is a 402 after the run: the transaction may still land.
        WorkerError::PaymentRejected { reason } if !mentions_settlement(reason) => {
            Answered::Refused
        }
        WorkerError::Http { status, body }
            if matches!(status, 400 | 422) && is_json_error(body) =>
        {
            Answered::Refused
        }
        _ => Answered::Uncertain,
    }
}

fn mentions_settlement(reason: &str) -> bool {
    reason.to_ascii_lowercase().contains("settle")
}

/// A worker API error body (`{"error": ...}`), not an HTML page from something in between.
fn is_json_error(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some())
}

/// What the chain decided about one voucher.
#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    /// The nonce is used: the experiment is paid. The worker's stored result, when it gave one
    /// in time, and the settlement transaction from the logs.
    Paid {
        /// This experiment's result.
        result: Option<ExperimentResult>,
        /// The transaction that used the nonce.
        tx: Option<B256>,
    },
    /// `validBefore` passed on chain with the nonce unused: it can never settle.
    Unpaid,
    /// The chain could not be read for long enough past `validBefore`.
    Undecided {
        /// The last error.
        reason: String,
    },
}

/// Seconds since the Unix epoch, passed in so the wait is testable.
pub type Clock = fn() -> u64;

/// Told how each look at the chain went, so a wait on an unreadable chain shows in status
/// instead of only in the log.
pub trait ReadWatch: Sync {
    /// `Ok`: the chain answered; `Err`: why it could not be read.
    fn saw<'a>(&'a self, read: Result<(), &'a ChainError>) -> BoxFuture<'a, ()>;
}

/// Nobody watches.
impl ReadWatch for () {
    fn saw<'a>(&'a self, _: Result<(), &'a ChainError>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Waits with backoff until the chain decides `voucher`: used (then, with `want_result`, the
/// result is read from the worker until `validBefore`, which covers the run) or expired unused.
/// `known` is a result the answer already carried; otherwise the worker's stored one is read.
/// Never re-sends. `watch` is told how each look went.
#[allow(clippy::too_many_arguments)] // each is one fact about this wait; a struct would only wrap them
pub async fn settle(
    chain: &UsdcChain,
    client: &WorkerClient,
    voucher: &Voucher,
    request: &ExperimentRequest,
    known: Option<ExperimentResult>,
    mut want_result: bool,
    now: Clock,
    watch: &dyn ReadWatch,
) -> Settled {
    let mut result = known;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if result.is_none() && want_result {
            match client.recover(request).await {
                Ok(found) => result = found,
                // The stored answer is garbage: there is no result to wait for.
                Err(WorkerError::InvalidAnswer(_)) => want_result = false,
                Err(_) => {}
            }
        }
        let done_waiting = result.is_some() || !want_result || now() > voucher.valid_before;
        let looked = look(chain, voucher).await;
        watch.saw(looked.as_ref().map(|_| ())).await;
        match looked {
            Ok(Look::Used) if done_waiting => {
                let tx = chain
                    .settlement_tx(voucher.asset, voucher.from, voucher.nonce)
                    .await
                    .ok()
                    .flatten();
                return Settled::Paid { result, tx };
            }
            Ok(Look::Expired) => return Settled::Unpaid,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(nonce = %voucher.nonce, error = %e, "cannot read the voucher's state on chain; waiting");
                if now() > voucher.valid_before + UNREADABLE_GRACE_SECS {
                    return Settled::Undecided {
                        reason: e.to_string(),
                    };
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One look at the chain.
enum Look {
    /// The nonce is used.
    Used,
    /// Unused, and `validBefore` has passed on chain.
    Expired,
    /// Unused and still live.
    Live,
}

async fn look(chain: &UsdcChain, voucher: &Voucher) -> Result<Look, ChainError> {
    chain.check_network(voucher.network).await?;
    // The state as of the block whose time is read: a nonce unused in a block at or past
    // validBefore stays unused (a later block is never earlier).
    let (block, time) = chain.head().await?;
    if chain
        .authorization_used_at(voucher.asset, voucher.from, voucher.nonce, Some(block))
        .await?
    {
        return Ok(Look::Used);
    }
    Ok(if time >= voucher.valid_before {
        Look::Expired
    } else {
        Look::Live
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, body: &str) -> WorkerError {
        WorkerError::Http {
            status,
            body: body.into(),
        }
    }

    fn voucher(valid_before: u64) -> Voucher {
        Voucher {
            experiment_id: "exp-1".into(),
            version: crate::payment::X402Version::V2,
            network: crate::crd::Network::BaseSepolia,
            amount: crate::usdc::Usdc::from_atomic(10_000),
            asset: alloy::primitives::Address::repeat_byte(1),
            from: alloy::primitives::Address::repeat_byte(2),
            pay_to: alloy::primitives::Address::repeat_byte(3),
            nonce: B256::repeat_byte(4),
            valid_after: 0,
            valid_before,
            header: String::new(),
        }
    }

    /// Records the reason of each failed look.
    #[derive(Default)]
    struct Reads(std::sync::Mutex<Vec<&'static str>>);

    impl ReadWatch for Reads {
        fn saw<'a>(&'a self, read: Result<(), &'a ChainError>) -> BoxFuture<'a, ()> {
            if let Err(e) = read {
                self.0.lock().unwrap().push(e.reason());
            }
            Box::pin(async {})
        }
    }

    /// An unreadable chain is waited for until well past validBefore, then the voucher is left
    /// undecided (never called unpaid: that would pay twice if it settled); the watch is told.
    #[tokio::test]
    async fn an_unreadable_chain_past_valid_before_leaves_the_voucher_undecided() {
        // Port 9 (discard) on loopback: nothing listens, every read fails at once.
        let chain = UsdcChain::new("http://127.0.0.1:9").unwrap();
        let client = WorkerClient::new("http://127.0.0.1:9/w", Duration::from_secs(5)).unwrap();
        let request = ExperimentRequest {
            experiment_id: "exp-1".into(),
            train_py: String::new(),
            config: serde_json::json!({}),
        };
        let late = || 100 + UNREADABLE_GRACE_SECS + 1;
        let watch = Reads::default();
        let settled = tokio::time::timeout(
            Duration::from_secs(20),
            settle(
                &chain,
                &client,
                &voucher(100),
                &request,
                None,
                true,
                late,
                &watch,
            ),
        )
        .await
        .expect("gives up at once past the grace");
        assert_eq!(*watch.0.lock().unwrap(), ["Unreachable"], "the wait shows");
        assert!(
            matches!(&settled, Settled::Undecided { reason } if reason.contains("127.0.0.1:9")),
            "{settled:?}"
        );
    }

    #[test]
    fn only_a_refusal_from_the_gate_or_worker_proves_unpaid() {
        let refused = [
            WorkerError::Busy,
            http(400, r#"{"error": "no train_py"}"#),
            http(422, r#"{"error": "config is not an object"}"#),
            WorkerError::PaymentRejected {
                reason: "invalid_exact_evm_signature".into(),
            },
            WorkerError::Unreachable {
                url: "u".into(),
                reason: "connection refused".into(),
            },
        ];
        for e in &refused {
            assert_eq!(classify(e), Answered::Refused, "{e}");
        }
        let uncertain = [
            http(504, "<html>Gateway Timeout</html>"),
            http(502, r#"{"error": "bad gateway"}"#),
            http(500, r#"{"error": "boom"}"#),
            http(524, ""),
            http(400, "<html>Bad Request</html>"),
            WorkerError::PaymentRejected {
                reason: "Payment settlement failed: timeout".into(),
            },
            WorkerError::Timeout {
                url: "u".into(),
                secs: 1,
            },
            WorkerError::Interrupted {
                url: "u".into(),
                reason: "reset".into(),
            },
            WorkerError::InvalidAnswer("not JSON".into()),
        ];
        for e in &uncertain {
            assert_eq!(classify(e), Answered::Uncertain, "{e}");
        }
    }
}
