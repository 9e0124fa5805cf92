//! The kit, exercised with the crate's real clients: what they send is accepted, what a real
//! gate or signer refuses is refused, and every knob does what it says.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};

use super::*;
use crate::crd::Network;
use crate::payment::eip712::Authorization;
use crate::payment::voucher::encode_payload;
use crate::payment::{
    DEFAULT_MAX_PRICE, ExperimentRequest, Offer, Policy, Quote, RemoteSigner, SignerError, Voucher,
    VoucherTerms, WorkerClient, WorkerError, new_nonce, sign_voucher, unix_now, x402,
};
use crate::strategy::landscape;
use crate::usdc::Usdc;

/// Anvil's well-known key #2: a key the signer does not hold.
const OTHER_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

fn policy() -> Policy {
    Policy {
        networks: vec![Network::BaseSepolia],
        max_price: DEFAULT_MAX_PRICE,
        extra_assets: vec![],
    }
}

fn request(id: &str) -> ExperimentRequest {
    ExperimentRequest {
        experiment_id: id.into(),
        train_py: "print('val_bpb: 0.99')".into(),
        config: json!({"lr": 0.004, "depth": 8}),
    }
}

fn client(worker: &FakeWorker) -> WorkerClient {
    WorkerClient::new(&worker.endpoint(), Duration::from_secs(5))
        .unwrap()
        .with_poll_interval(Duration::from_millis(20))
}

async fn offer(worker: &WorkerClient) -> Offer {
    let Quote::Priced(required) = worker.quote().await.unwrap() else {
        panic!("the fake worker is gated");
    };
    x402::choose(&required, &policy()).unwrap()
}

/// Prices, then signs a voucher for `id` through the signer, as the engine does.
async fn voucher(worker: &WorkerClient, signer: &RemoteSigner, id: &str) -> Voucher {
    let terms = VoucherTerms {
        experiment_id: id.into(),
        nonce: new_nonce(),
        from: None,
        run_timeout: worker.run_timeout(),
    };
    sign_voucher(signer, &offer(worker).await, &terms, unix_now())
        .await
        .unwrap()
}

/// A voucher built by hand from a real one: `change` edits the authorization, `key` signs it.
async fn hand_made(
    worker: &WorkerClient,
    id: &str,
    key: &str,
    change: impl FnOnce(&mut Authorization),
) -> Voucher {
    let signer = FakeSigner::start().await;
    let real = voucher(worker, &signer.client(), id).await;
    let offer = offer(worker).await;
    let mut auth = Authorization {
        from: real.from,
        to: real.pay_to,
        value: U256::from(real.amount.atomic()),
        valid_after: real.valid_after,
        valid_before: real.valid_before,
        nonce: new_nonce(),
    };
    change(&mut auth);
    let key: PrivateKeySigner = key.parse().unwrap();
    let signature = key
        .sign_hash_sync(&auth.signing_hash(&offer.domain))
        .unwrap();
    Voucher {
        nonce: auth.nonce,
        header: encode_payload(&offer, &auth, &signature),
        ..real
    }
}

fn refused(result: Result<crate::payment::RunOutcome, WorkerError>) -> String {
    match result {
        Err(WorkerError::PaymentRejected { reason }) => reason,
        other => panic!("expected a refused payment, got {other:?}"),
    }
}

#[tokio::test]
async fn the_signer_signs_the_golden_vector_for_real() {
    let signer = FakeSigner::start().await;
    let client = signer.client();
    assert_eq!(client.keys().await.unwrap(), vec![PAYER]);
    let auth = Authorization {
        from: PAYER,
        to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
            .parse()
            .unwrap(),
        value: U256::from(10_000u64),
        valid_after: 0,
        valid_before: 1_900_000_000,
        nonce: B256::repeat_byte(0x11),
    };
    let signature = client
        .sign_authorization(&usdc_domain(), &auth)
        .await
        .unwrap();
    // docs/protocols.md §4, Base Sepolia.
    assert_eq!(
        alloy::primitives::hex::encode_prefixed(signature.as_bytes()),
        "0x4c906a47a947ae0d3352d162c153374ae5a94ef8f09a948307cff212aaf893707462a82325b84e3a6fe23cd64944aa1cfd6fbb0addc004e4b369708ab0da17581c"
    );
    assert_eq!((signer.key_calls(), signer.sign_calls()), (1, 1));
}

#[tokio::test]
async fn the_signer_refuses_a_wrong_or_missing_token_with_401() {
    let signer = FakeSigner::start().await;
    for token in [Some("wrong"), None] {
        let err = signer.client_with_token(token).keys().await.unwrap_err();
        assert!(
            matches!(err, SignerError::Unauthorized { status: 401, .. }),
            "{err}"
        );
    }
    let client = signer.client();
    signer.set_unauthorized(true);
    let err = client.payer(None).await.unwrap_err();
    assert!(matches!(err, SignerError::Unauthorized { status: 401, .. }));
    assert!(err.to_string().contains("REMOTE_SIGNER_TOKEN"), "{err}");
    signer.set_unauthorized(false);
    assert_eq!(client.payer(None).await.unwrap(), PAYER);
    assert_eq!(signer.key_calls(), 4);
    let health = reqwest::get(format!("{}/healthz", signer.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "healthz needs no token");
}

#[tokio::test]
async fn the_signer_answers_its_error_codes() {
    let signer = FakeSigner::start().await;
    let client = signer.client();
    let stranger: Address = PrivateKeySigner::random().address();
    let err = client
        .sign_typed_data(stranger, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, SignerError::KeyNotFound { .. }), "{err}");
    let err = client
        .sign_typed_data(
            PAYER,
            &json!({"types": {}, "primaryType": "X", "domain": {}}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignerError::Api { status: 422, code, .. } if code == "MISSING_FIELD"),
        "{err}"
    );
    let typed = json!({"types": {"X": [{"name": "a", "type": "uint256"}]}, "primaryType": "X",
        "domain": {}, "message": {"a": "not a number"}});
    let err = client.sign_typed_data(PAYER, &typed).await.unwrap_err();
    assert!(
        matches!(&err, SignerError::Api { status: 500, code, .. } if code == "SIGNING_ERROR"),
        "{err}"
    );
    let bad = reqwest::Client::new()
        .post(format!("{}/api/v1/sign/nobody/typed-data", signer.url()))
        .bearer_auth(TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["address"].as_str()),
        (Some("BAD_REQUEST"), Some("nobody"))
    );
}

#[tokio::test]
async fn a_signer_that_is_down_refuses_connections_until_it_is_up() {
    let signer = FakeSigner::start().await;
    let client = signer.client();
    client.keys().await.unwrap();
    signer.down();
    // The pooled connection is cut, and a new one is refused.
    for _ in 0..2 {
        let err = client.keys().await.unwrap_err();
        assert!(matches!(err, SignerError::Unreachable { .. }), "{err}");
    }
    signer.up().await;
    assert_eq!(client.keys().await.unwrap(), vec![PAYER]);
}

#[tokio::test]
async fn a_voucher_from_the_real_client_pays_once_and_the_result_is_recovered() {
    let signer = FakeSigner::start().await;
    let worker = FakeWorker::config()
        .price(Usdc::from_atomic(20_000))
        .start()
        .await;
    let client = client(&worker);
    let offer = offer(&client).await;
    assert_eq!(
        (offer.amount, offer.pay_to),
        (Usdc::from_atomic(20_000), worker.pay_to())
    );
    assert_eq!(offer.domain, usdc_domain());
    let request = request("exp-paid");
    let voucher = voucher(&client, &signer.client(), "exp-paid").await;
    let outcome = client.run(Some(&voucher), &request).await.unwrap();
    let expected = landscape::val_bpb(&request.config);
    assert_eq!(outcome.result.val_bpb, Some(expected));
    assert_eq!(
        outcome.transaction(),
        Some(transaction_for(voucher.nonce).to_string().as_str())
    );
    assert_eq!(
        worker.settled(),
        vec![(
            voucher.nonce,
            Usdc::from_atomic(20_000),
            "exp-paid".to_string()
        )]
    );
    let recovered = client.recover(&request).await.unwrap().unwrap();
    assert_eq!(recovered.val_bpb, Some(expected));
    // The same voucher again: its nonce has settled, so the gate refuses it and nothing moves.
    let reason = refused(client.run(Some(&voucher), &request).await);
    assert!(reason.contains("used"), "{reason}");
    assert_eq!(worker.payments_for("exp-paid"), 1);
    assert_eq!(worker.runs(), ["exp-paid"]);
    assert!(
        client
            .recover(&self::request("exp-unknown"))
            .await
            .unwrap()
            .is_none()
    );
}

/// Vouchers for `exp-r` that a real gate refuses: signed by another key, or with a field of the
/// authorization changed from what the offer asks.
async fn tampered(client: &WorkerClient) -> Vec<(&'static str, Voucher)> {
    vec![
        (
            "wrong key",
            hand_made(client, "exp-r", OTHER_KEY, |_| {}).await,
        ),
        (
            "value",
            hand_made(client, "exp-r", PAYER_KEY, |a| a.value += U256::from(1)).await,
        ),
        (
            "recipient",
            hand_made(client, "exp-r", PAYER_KEY, |a| a.to = PAYER).await,
        ),
        (
            "expired",
            hand_made(client, "exp-r", PAYER_KEY, |a| {
                a.valid_before = unix_now() + 2
            })
            .await,
        ),
        (
            "not yet valid",
            hand_made(client, "exp-r", PAYER_KEY, |a| {
                a.valid_after = unix_now() + 60
            })
            .await,
        ),
    ]
}

/// `good` with the signature's `v` as 0/1: it recovers off-chain, but the token contract wants
/// 27 or 28.
fn with_low_v(good: &Voucher) -> Voucher {
    let mut payload = good.payload().unwrap();
    let sig = payload["payload"]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let v = u8::from_str_radix(&sig[130..], 16).unwrap() - 27;
    payload["payload"]["signature"] = json!(format!("{}{v:02x}", &sig[..130]));
    Voucher {
        header: gate::encode(&payload),
        ..good.clone()
    }
}

#[tokio::test]
async fn payments_a_real_gate_refuses_are_refused_and_settle_nothing() {
    let worker = FakeWorker::start().await;
    let client = client(&worker);
    let request = request("exp-r");
    for (case, voucher) in &tampered(&client).await {
        let reason = refused(client.run(Some(voucher), &request).await);
        assert!(
            reason.starts_with("Payment verification failed"),
            "{case}: {reason}"
        );
    }
    let good = hand_made(&client, "exp-r", PAYER_KEY, |_| {}).await;
    let low_v = with_low_v(&good);
    assert!(refused(client.run(Some(&low_v), &request).await).contains("27 or 28"));
    // A price change: the echoed requirement no longer matches the offer.
    worker.set(|k| k.price = Usdc::from_atomic(10_001));
    let reason = refused(client.run(Some(&good), &request).await);
    assert!(
        reason.contains("does not match the offer (amount)"),
        "{reason}"
    );
    // No payment at all, and a header that is not base64 JSON.
    refused(client.run(None, &request).await);
    let garbage = Voucher {
        header: "%%%".into(),
        ..good
    };
    let err = client.run(Some(&garbage), &request).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::Http { status: 400, .. }),
        "{err}"
    );
    assert!(worker.settled().is_empty());
    assert!(worker.runs().is_empty());
}

#[tokio::test]
async fn each_gate_header_is_read_and_the_402_is_in_header_and_body() {
    for header in [PaymentHeader::XPayment, PaymentHeader::PaymentSignature] {
        let signer = FakeSigner::start().await;
        let worker = FakeWorker::config().header(header).start().await;
        let client = client(&worker);
        let voucher = voucher(&client, &signer.client(), "exp-h").await;
        client.run(Some(&voucher), &request("exp-h")).await.unwrap();
        assert_eq!(worker.payments_for("exp-h"), 1, "{header:?}");
    }
    let worker = FakeWorker::start().await;
    let answer = reqwest::Client::new()
        .post(format!("{}/experiment", worker.endpoint()))
        .json(&json!({"probe": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 402);
    let header = answer.headers()["payment-required"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(gate::decode(&header).unwrap(), body);
    assert_eq!(body["accepts"][0]["network"], NETWORK);
    assert_eq!(
        body["resource"]["url"],
        format!("{}/experiment", worker.endpoint())
    );
}

#[tokio::test]
async fn busy_and_failure_before_payment_settle_nothing_and_the_voucher_still_pays_later() {
    let signer = FakeSigner::start().await;
    let worker = FakeWorker::start().await;
    let client = client(&worker);
    let request = request("exp-b");
    let voucher = voucher(&client, &signer.client(), "exp-b").await;
    worker.set(|k| k.busy = true);
    assert!(matches!(
        client.run(Some(&voucher), &request).await,
        Err(WorkerError::Busy)
    ));
    assert_eq!(client.health().await.unwrap().busy, Some(true));
    worker.set(|k| {
        k.busy = false;
        k.fail_before_payment = 1;
    });
    let err = client.run(Some(&voucher), &request).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::Http { status: 500, .. }),
        "{err}"
    );
    assert!(worker.settled().is_empty());
    assert!(client.recover(&request).await.unwrap().is_none());
    // The same voucher, re-sent: its nonce was never used, so it pays now, once.
    client.run(Some(&voucher), &request).await.unwrap();
    assert_eq!(worker.payments_for("exp-b"), 1);
}

#[tokio::test]
async fn a_lost_answer_after_payment_is_paid_once_and_recoverable() {
    let signer = FakeSigner::start().await;
    let worker = FakeWorker::start().await;
    let client = client(&worker);
    worker.set(|k| k.fail_after_payment = 1);
    let lost = request("exp-500");
    let v = voucher(&client, &signer.client(), "exp-500").await;
    let err = client.run(Some(&v), &lost).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::Http { status: 500, .. }),
        "{err}"
    );
    assert!(client.recover(&lost).await.unwrap().is_some());

    worker.set(|k| k.drop_after_settle = 1);
    let cut = request("exp-cut");
    let v = voucher(&client, &signer.client(), "exp-cut").await;
    let err = client.run(Some(&v), &cut).await.unwrap_err();
    assert!(matches!(err, WorkerError::Interrupted { .. }), "{err}");
    assert!(client.recover(&cut).await.unwrap().is_some());
    let ids: Vec<String> = worker.settled().into_iter().map(|(_, _, id)| id).collect();
    assert_eq!(ids, ["exp-500", "exp-cut"]);
    assert_eq!(worker.total_paid(), Usdc::from_atomic(20_000));
}

#[tokio::test]
async fn a_slow_run_goes_on_and_settles_after_the_client_timed_out() {
    let signer = FakeSigner::start().await;
    let worker = FakeWorker::start().await;
    worker.set(|k| k.delay = Duration::from_millis(1_500));
    let impatient = WorkerClient::new(&worker.endpoint(), Duration::from_secs(1)).unwrap();
    let request = request("exp-slow");
    let v = voucher(&impatient, &signer.client(), "exp-slow").await;
    let err = impatient.run(Some(&v), &request).await.unwrap_err();
    assert!(matches!(err, WorkerError::Timeout { .. }), "{err}");
    assert!(
        impatient.recover(&request).await.unwrap().is_none(),
        "still running"
    );
    // A second experiment while the first runs: single flight, 409, not paid.
    let other = voucher(&impatient, &signer.client(), "exp-other").await;
    let busy = impatient
        .run(Some(&other), &self::request("exp-other"))
        .await;
    assert!(matches!(busy, Err(WorkerError::Busy)), "{busy:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(impatient.recover(&request).await.unwrap().is_some());
    assert_eq!(
        worker.settled(),
        vec![(v.nonce, v.amount, "exp-slow".to_string())]
    );
}

#[tokio::test]
async fn invalid_results_are_paid_but_never_results() {
    let signer = FakeSigner::start().await;
    let worker = FakeWorker::start().await;
    let client = client(&worker);
    for (i, lie) in [Lie::NegativeValBpb, Lie::WrongId, Lie::NotJson]
        .into_iter()
        .enumerate()
    {
        worker.set(|k| {
            k.invalid_result = 1;
            k.lie = lie;
        });
        let id = format!("exp-lie-{i}");
        let v = voucher(&client, &signer.client(), &id).await;
        let err = client.run(Some(&v), &request(&id)).await.unwrap_err();
        assert!(
            matches!(err, WorkerError::InvalidAnswer(_)),
            "{lie:?}: {err}"
        );
        // The stored copy is the same lie.
        assert!(client.recover(&request(&id)).await.is_err(), "{lie:?}");
        assert_eq!(worker.payments_for(&id), 1, "{lie:?}");
    }
}

#[tokio::test]
async fn a_failed_run_answers_200_and_is_paid() {
    let signer = FakeSigner::start().await;
    let worker = FakeWorker::start().await;
    let client = client(&worker);
    worker.set(|k| k.run_fails = 1);
    let v = voucher(&client, &signer.client(), "exp-crash").await;
    let outcome = client.run(Some(&v), &request("exp-crash")).await.unwrap();
    assert_eq!(
        (
            outcome.result.status.as_str(),
            outcome.result.val_bpb,
            outcome.result.return_code
        ),
        ("failed", None, Some(1))
    );
    assert_eq!(worker.payments_for("exp-crash"), 1);
    // The knob was used up: the next run completes.
    let v = voucher(&client, &signer.client(), "exp-next").await;
    let next = client.run(Some(&v), &request("exp-next")).await.unwrap();
    assert_eq!(next.result.status, "completed");
}

#[tokio::test]
async fn a_test_supplies_the_run() {
    let signer = FakeSigner::start().await;
    // A worker that, like the real one, reads nothing but the source: val_bpb from train.py.
    let worker = FakeWorker::config()
        .run(|s| {
            completed(
                s,
                if s.train_py.contains("DEPTH = 12") {
                    0.97
                } else {
                    1.0
                },
            )
        })
        .start()
        .await;
    let client = client(&worker);
    let mut request = request("exp-src");
    request.train_py = "DEPTH = 12\n".into();
    let v = voucher(&client, &signer.client(), "exp-src").await;
    let outcome = client.run(Some(&v), &request).await.unwrap();
    assert_eq!(outcome.result.val_bpb, Some(0.97));
    let stored: Value = serde_json::from_slice(&worker.stored("exp-src").unwrap()).unwrap();
    assert_eq!(
        stored["train_hash"],
        crate::experiment::train_hash("DEPTH = 12\n")
    );
}
