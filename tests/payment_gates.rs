//! Paying real x402 gates on loopback: anvil with Circle's USDC, the reference facilitator, the
//! `@x402/express` (v2) and `x402-express` (v1) middlewares and an obol-stack verifier stand-in,
//! started by `testbed/payments/up.mjs` (see its README for the contract).
//!
//! Every test reads USDC balances on chain before and after: a payment moves exactly the price
//! from payer to payee, once; a refusal moves nothing.
//!
//! Needs Node.js and `scripts/testbed-install.sh` (scripts/test.sh runs it).

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use autoresearch_coordinator::crd::Network;
use autoresearch_coordinator::experiment;
use autoresearch_coordinator::payment::{
    self, ExperimentRequest, PaymentError, Policy, Prepared, RemoteSigner, Rule, SignerError,
    VoucherTerms, WorkerClient, WorkerError,
};
use autoresearch_coordinator::strategy::landscape;
use autoresearch_coordinator::usdc::Usdc;
use serde_json::{Value, json};
use support::testbed::Testbed;

fn policy() -> Policy {
    Policy {
        networks: vec![Network::BaseSepolia],
        max_price: payment::DEFAULT_MAX_PRICE,
        extra_assets: vec![],
    }
}

/// The workers run it: it prints the landscape's val_bpb of the config it is given.
const TRAIN_PY: &str = support::TRAIN_LANDSCAPE;

fn request(config: Value) -> ExperimentRequest {
    ExperimentRequest {
        experiment_id: experiment::experiment_id(TRAIN_PY, &config),
        train_py: TRAIN_PY.into(),
        config,
    }
}

fn terms(request: &ExperimentRequest) -> VoucherTerms {
    VoucherTerms {
        experiment_id: request.experiment_id.clone(),
        nonce: payment::new_nonce(),
        from: None,
        run_timeout: Duration::from_secs(60),
    }
}

fn price(n: u64) -> U256 {
    U256::from(n)
}

/// One paid experiment per gate kind: exactly the price moves once, the settlement hash is
/// reported, the voucher survives a serde round trip, and re-sending it moves nothing more.
#[tokio::test]
async fn each_gate_kind_is_paid_exactly_once() {
    let tb = Testbed::start(json!({
        "workers": [
            {"name": "v2", "gate": "v2", "price": "10000", "durationMs": 50},
            {"name": "v1", "gate": "v1", "price": "20000", "durationMs": 50},
            {"name": "obol", "gate": "obol", "price": "30000", "durationMs": 50},
        ],
        "extraSigners": [{"name": "v01", "token": "t0k", "mode": "vZeroOne"}],
    }));
    for (i, (name, amount)) in [("v2", 10_000u64), ("v1", 20_000), ("obol", 30_000)]
        .into_iter()
        .enumerate()
    {
        let req = request(json!({"lr": 0.004, "depth": 8 + i}));
        pay_once_then_replay(&tb, name, amount, &req).await;
    }

    // A signer answering v = 0/1 still yields a voucher the chain accepts.
    let before = tb.balances("v2").await;
    let req = request(json!({"lr": 0.01, "signer": "v01"}));
    let receipt = payment::pay_and_run(
        &tb.client("v2"),
        &tb.signer("v01"),
        &policy(),
        &req,
        &terms(&req),
    )
    .await
    .unwrap();
    assert_eq!(receipt.outcome.result.status, "completed");
    let after = tb.balances("v2").await;
    assert_eq!(before.0 - after.0, price(10_000));
    assert_eq!(after.1 - before.1, price(10_000));
}

/// Pays worker `name` for `req` with a voucher as the controller stores it: the result is what
/// train.py measured and `amount` moves once; the same voucher again moves nothing, and the
/// stored result can be recovered.
async fn pay_once_then_replay(tb: &Testbed, name: &str, amount: u64, req: &ExperimentRequest) {
    let worker = tb.client(name);
    let before = tb.balances(name).await;
    let prepared = payment::prepare(&worker, &tb.signer("default"), &policy(), &terms(req))
        .await
        .unwrap();
    let voucher = prepared.voucher().unwrap().clone();
    assert_eq!(voucher.amount, Usdc::from_atomic(amount.into()));
    // What the controller persists and would re-send after a crash.
    let stored: payment::Voucher =
        serde_json::from_str(&serde_json::to_string(&voucher).unwrap()).unwrap();

    let outcome = worker.run(Some(&stored), req).await.unwrap();
    assert_eq!(outcome.result.status, "completed", "{name}");
    assert_eq!(outcome.result.experiment_id, req.experiment_id);
    assert_eq!(
        outcome.result.val_bpb,
        Some(landscape::val_bpb(&req.config)),
        "{name}: what train.py measured"
    );
    let tx = outcome
        .transaction()
        .unwrap_or_else(|| panic!("{name}: no tx hash"));
    assert_eq!(tx.len(), 66);

    let after = tb.balances(name).await;
    assert_eq!(
        before.0 - after.0,
        price(amount),
        "{name}: payer paid the price"
    );
    assert_eq!(
        after.1 - before.1,
        price(amount),
        "{name}: payee got the price"
    );

    // Re-sending the same voucher never pays twice.
    let replay = worker.run(Some(&stored), req).await;
    assert!(
        matches!(replay, Err(WorkerError::PaymentRejected { .. })),
        "{name}: replay: {replay:?}"
    );
    assert_eq!(tb.balances(name).await, after, "{name}: replay moved money");

    // The lost-answer path finds the stored result.
    let recovered = worker.recover(req).await.unwrap().unwrap();
    assert_eq!(recovered.val_bpb, outcome.result.val_bpb);
}

/// Refusals before signing, signer failures and worker failures: nothing moves on chain.
#[tokio::test]
async fn refusals_and_failures_move_no_money() {
    let tb = Testbed::start(json!({
        "workers": [
            {"name": "dear", "gate": "v2", "price": "100001"},
            {"name": "ok", "gate": "obol", "price": "10000", "durationMs": 20},
            {"name": "busy", "gate": "v1", "price": "10000", "faults": {"busy": true}},
            {"name": "broken", "gate": "obol", "price": "10000", "faults": {"failBeforePayment": true}},
            {"name": "broken-v2", "gate": "v2", "price": "10000", "faults": {"failBeforePayment": true}},
        ],
        "extraSigners": [
            {"name": "wrong", "token": "t0k", "mode": "wrongKey"},
            {"name": "unauth", "token": "t0k", "mode": "unauthorized"},
        ],
    }));
    let settlements_before = tb.facilitator_transactions().await;
    let payer_before = tb.balance(tb.payer()).await;

    refused_without_asking_the_signer(&tb).await;
    signer_failures_are_named(&tb).await;
    worker_failures_settle_nothing(&tb).await;

    assert_eq!(
        tb.balance(tb.payer()).await,
        payer_before,
        "the payer paid nothing"
    );
    for name in ["dear", "ok", "busy", "broken", "broken-v2"] {
        assert_eq!(tb.balance(tb.pay_to(name)).await, U256::ZERO, "{name}");
    }
    assert_eq!(
        tb.facilitator_transactions().await,
        settlements_before,
        "the facilitator sent no transaction"
    );
}

/// How paying worker `name` with `signer` fails, for a request named by `case`.
async fn failure(tb: &Testbed, name: &str, signer: &RemoteSigner, case: &str) -> PaymentError {
    let req = request(json!({ "case": case }));
    payment::pay_and_run(&tb.client(name), signer, &policy(), &req, &terms(&req))
        .await
        .unwrap_err()
}

/// A price above the cap and a network not allowed: refused, the signer never contacted.
async fn refused_without_asking_the_signer(tb: &Testbed) {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let never_asked =
        RemoteSigner::new(&format!("http://{}", silent.local_addr().unwrap()), None).unwrap();
    let err = failure(tb, "dear", &never_asked, "dear").await;
    let PaymentError::Refused(refusal) = &err else {
        panic!("{err}")
    };
    assert!(refusal.failed(Rule::MaxPrice), "{err}");
    assert!(err.to_string().contains("0.100001 USDC"), "{err}");
    assert!(
        silent.accept().is_err(),
        "the signer was contacted for a refused price"
    );

    let base_only = Policy {
        networks: vec![Network::Base],
        ..policy()
    };
    let req = request(json!({"case": "dear"}));
    let err = payment::prepare(&tb.client("ok"), &never_asked, &base_only, &terms(&req))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PaymentError::Refused(r) if r.failed(Rule::Network)),
        "{err}"
    );
    assert!(silent.accept().is_err());
}

/// A signer with another key, one that refuses the token, and an unknown address: each error
/// says what to fix.
async fn signer_failures_are_named(tb: &Testbed) {
    // Signs with another key: refused before sending.
    let err = failure(tb, "ok", &tb.signer("wrong"), "wrong").await;
    assert!(
        matches!(err, PaymentError::Signer(SignerError::WrongSigner { .. })),
        "{err}"
    );

    // Answers 401: the message names REMOTE_SIGNER_TOKEN.
    let err = failure(tb, "ok", &tb.signer("unauth"), "wrong").await;
    assert!(
        matches!(
            err,
            PaymentError::Signer(SignerError::Unauthorized { status: 401, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("REMOTE_SIGNER_TOKEN"), "{err}");
    let req = request(json!({"case": "wrong"}));
    let url = tb.m["signer"]["url"].as_str().unwrap();
    for token in [None, Some("wrong-token".to_string())] {
        let bad = RemoteSigner::new(url, token).unwrap();
        let err = payment::prepare(&tb.client("ok"), &bad, &policy(), &terms(&req))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("REMOTE_SIGNER_TOKEN"), "{err}");
    }

    // SIGNER_NOT_FOUND names the address.
    let stranger: Address = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
        .parse()
        .unwrap();
    let mut t = terms(&req);
    t.from = Some(stranger);
    let err = payment::prepare(&tb.client("ok"), &tb.signer("default"), &policy(), &t)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PaymentError::Signer(SignerError::KeyNotFound { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(&stranger.to_string()), "{err}");
}

/// Worker busy (409) and worker error (500) behind each kind of gate: nothing settles.
async fn worker_failures_settle_nothing(tb: &Testbed) {
    let signer = tb.signer("default");
    for name in ["busy", "broken", "broken-v2"] {
        let err = failure(tb, name, &signer, name).await;
        match name {
            "busy" => assert!(
                matches!(err, PaymentError::Worker(WorkerError::Busy)),
                "{err}"
            ),
            _ => assert!(
                matches!(
                    err,
                    PaymentError::Worker(WorkerError::Http { status: 500, .. })
                ),
                "{name}: {err}"
            ),
        }
        assert_eq!(tb.balance(tb.pay_to(name)).await, U256::ZERO, "{name}");
    }
}

/// Answers that are lost, late, wrong or asynchronous.
#[tokio::test]
async fn lost_wrong_and_async_answers() {
    let tb = Testbed::start(json!({
        "workers": [
            {"name": "lost", "gate": "v2", "price": "10000", "durationMs": 20, "faults": {"failAfterPayment": 1}},
            {"name": "nan", "gate": "obol", "price": "10000", "durationMs": 20, "faults": {"lie": "nan"}},
            {"name": "negative", "gate": "v1", "price": "10000", "durationMs": 20, "faults": {"lie": "negative"}},
            {"name": "wrong-id", "gate": "v2", "price": "10000", "durationMs": 20, "faults": {"lie": "wrongId"}},
            {"name": "async", "gate": "obol", "price": "10000", "durationMs": 300, "faults": {"async": true}},
            {"name": "hang", "gate": "v2", "price": "10000", "faults": {"hang": true}},
        ],
    }));
    let signer = tb.signer("default");
    a_lost_answer_is_recovered(&tb, &signer).await;
    lies_are_invalid_answers(&tb, &signer).await;

    // 202: the job is polled and its result read with the job token.
    let req = request(json!({"case": "async"}));
    let receipt = payment::pay_and_run(&tb.client("async"), &signer, &policy(), &req, &terms(&req))
        .await
        .unwrap();
    assert!(receipt.outcome.job.is_some());
    assert_eq!(receipt.outcome.result.status, "completed");
    assert!(matches!(receipt.prepared, Prepared::Paid { .. }));
    assert_eq!(tb.balance(tb.pay_to("async")).await, price(10_000));

    // A worker that never answers: a timeout that says how to recover; nothing settles.
    let hang = WorkerClient::new(
        tb.worker("hang")["endpoint"].as_str().unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    let req = request(json!({"case": "hang"}));
    let err = payment::pay_and_run(&hang, &signer, &policy(), &req, &terms(&req))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PaymentError::Worker(WorkerError::Timeout { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("/experiments/"), "{err}");
    assert_eq!(tb.balance(tb.pay_to("hang")).await, U256::ZERO);
}

/// Answer lost after settlement: the stored result is recovered; paid once.
async fn a_lost_answer_is_recovered(tb: &Testbed, signer: &RemoteSigner) {
    let req = request(json!({"case": "lost"}));
    let prepared = payment::prepare(&tb.client("lost"), signer, &policy(), &terms(&req))
        .await
        .unwrap();
    let err = tb
        .client("lost")
        .run(prepared.voucher(), &req)
        .await
        .unwrap_err();
    // A connection cut after the request was sent is not "unreachable": money may have moved.
    assert!(
        matches!(
            err,
            WorkerError::Interrupted { .. } | WorkerError::Timeout { .. }
        ),
        "{err}"
    );
    let recovered = tb.client("lost").recover(&req).await.unwrap().unwrap();
    assert_eq!(recovered.experiment_id, req.experiment_id);
    assert_eq!(tb.balance(tb.pay_to("lost")).await, price(10_000));
}

/// Lies are invalid answers, never results (the gate did settle: money moved once).
async fn lies_are_invalid_answers(tb: &Testbed, signer: &RemoteSigner) {
    for name in ["nan", "negative", "wrong-id"] {
        let err = failure(tb, name, signer, name).await;
        assert!(
            matches!(err, PaymentError::Worker(WorkerError::InvalidAnswer(_))),
            "{name}: {err}"
        );
        assert_eq!(tb.balance(tb.pay_to(name)).await, price(10_000), "{name}");
    }
}

/// The real binary: `probe`, a paid `submit` that appends to results.jsonl, and a refused one.
#[tokio::test]
async fn the_binary_pays_records_and_refuses() {
    let tb = Testbed::start(json!({
        "workers": [{"name": "v1", "gate": "v1", "price": "20000", "durationMs": 20}],
    }));
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.py");
    std::fs::write(&train, TRAIN_PY).unwrap();
    let endpoint = tb.worker("v1")["endpoint"].as_str().unwrap().to_string();
    let bin = || binary(&tb, dir.path());

    // `probe` reads the price and the worker's health, and pays nothing.
    let probe = bin().args(["probe", &endpoint, "--json"]).output().unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert_probed(&serde_json::from_slice(&probe.stdout).unwrap());

    let before = tb.balances("v1").await;
    let out = bin()
        .args(["submit", &endpoint])
        .arg(&train)
        .args(["--config", r#"{"lr": 0.004}"#, "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("0.1 USDC"),
        "the default cap is printed: {stderr}"
    );
    let after = tb.balances("v1").await;
    assert_eq!(before.0 - after.0, price(20_000));
    assert_eq!(after.1 - before.1, price(20_000));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_recorded(dir.path(), &printed["record"]);

    let refused = bin()
        .args(["submit", &endpoint])
        .arg(&train)
        .args(["--config", r#"{"lr": 0.005}"#, "--max-price", "0.01"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("max price") && stderr.contains("--max-price"),
        "{stderr}"
    );
    assert_eq!(tb.balances("v1").await, after, "a refusal moved money");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("autoresearch/results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

/// The binary, paying with the testbed's signer and keeping results under `data_dir`.
fn binary(tb: &Testbed, data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"));
    c.env("REMOTE_SIGNER_URL", tb.m["signer"]["url"].as_str().unwrap())
        .env(
            "REMOTE_SIGNER_TOKEN",
            tb.m["signer"]["token"].as_str().unwrap(),
        )
        .env("DATA_DIR", data_dir)
        .env_remove("REMOTE_SIGNER_ADDRESS");
    c
}

/// What `probe --json` says of the v1 worker at 0.02 USDC.
fn assert_probed(p: &Value) {
    assert_eq!(p["x402Version"], 1);
    assert_eq!(p["chosen"]["amount"], "20000");
    assert_eq!(p["chosen"]["price"], "0.02");
    assert_eq!(p["free"], true);
}

/// results.jsonl holds the one record `submit` printed: the paid run of `{"lr": 0.004}`.
fn assert_recorded(data_dir: &std::path::Path, printed: &Value) {
    let lines = std::fs::read_to_string(data_dir.join("autoresearch/results.jsonl")).unwrap();
    let record: Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(&record, printed);
    assert_eq!(record["amount"], "20000");
    assert_eq!(record["network"], "base-sepolia");
    assert_eq!(record["status"], "completed");
    assert_eq!(record["train_hash"], experiment::train_hash(TRAIN_PY));
    assert_eq!(record["config"], json!({"lr": 0.004}));
    support::assert_measured_by_landscape(std::slice::from_ref(&record));
    assert!(record["payment_tx"].as_str().unwrap().starts_with("0x"));
}
