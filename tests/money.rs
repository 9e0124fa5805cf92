//! Money truth from the chain: `loop` against the payment testbed with `ERPC_URL` set, so the
//! engine asks anvil's USDC whether an uncertain voucher was used. Each test compares what
//! results.jsonl records with what moved on chain.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use alloy::primitives::U256;
use autoresearch_coordinator::crd::{ExperimentCampaign, PaymentState};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::controller;
use support::testbed::Testbed;

/// The `loop` command against the testbed's workers `prefer`, judged through the testbed's chain.
fn loop_cmd(tb: &Testbed, data: &Path, prefer: &[&str], rounds: u32) -> Command {
    let train = data.join("train.py");
    std::fs::write(&train, support::TRAIN_LANDSCAPE).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"));
    cmd.arg("loop")
        .arg(&train)
        .args(["--rounds", &rounds.to_string(), "--no-discovery"])
        .args(["--max-price", "0.02", "--timeout", "60"])
        .args(["--signer-url", tb.m["signer"]["url"].as_str().unwrap()])
        .env(
            "REMOTE_SIGNER_TOKEN",
            tb.m["signer"]["token"].as_str().unwrap(),
        )
        .env("ERPC_URL", tb.m["rpcUrl"].as_str().unwrap())
        .env("DATA_DIR", data)
        .env("RUST_LOG", "warn");
    for name in prefer {
        cmd.args(["--prefer", tb.worker(name)["endpoint"].as_str().unwrap()]);
    }
    cmd
}

fn lines(data: &Path) -> Vec<Value> {
    std::fs::read_to_string(data.join("autoresearch/results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn amount(line: &Value) -> U256 {
    U256::from(line["amount"].as_str().unwrap().parse::<u64>().unwrap())
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each line's `payment_tx` is a successful transaction on chain.
async fn assert_settled_on_chain(tb: &Testbed, lines: &[Value]) {
    for l in lines {
        let tx = l["payment_tx"]
            .as_str()
            .unwrap_or_else(|| panic!("no tx: {l}"));
        let receipt = tb.rpc("eth_getTransactionReceipt", json!([tx])).await;
        assert_eq!(receipt["status"], "0x1", "{tx}: {receipt}");
    }
}

async fn payer_spend(tb: &Testbed, before: U256) -> U256 {
    before - tb.balance(tb.payer()).await
}

/// A controller in a fresh namespace, judging payments through the testbed's chain.
struct Judged {
    ns: String,
    api: Api<ExperimentCampaign>,
    data: tempfile::TempDir,
    ctl: controller::Controller,
}

async fn judged_controller(prefix: &str, tb: &Testbed) -> Judged {
    let client = support::client().await;
    support::install_crd(&client).await;
    let ns = support::namespace(&client, prefix).await;
    controller::signer_secret(&client, &ns, tb).await;
    let data = tempfile::tempdir().unwrap();
    let rpc = tb.m["rpcUrl"].as_str().unwrap();
    let ctl = controller::Controller::start_with(&ns, data.path(), "c0", &[("ERPC_URL", rpc)]);
    Judged {
        api: Api::namespaced(client, &ns),
        ns,
        data,
        ctl,
    }
}

/// When a worker has answered, it is free, whatever the chain has still to say about that
/// payment. A voucher signed ahead for it goes out at once, not after the chain was asked. The
/// RPC node here answers 300 ms late, so each judgement takes longer than that. Between two
/// experiments of the search (each signed ahead during the one before), the worker's own clock
/// shows it waited far less (measured: 70-100 ms, and 1.3 s when the hand-over waited for
/// the judgement). `loop` signs ahead only because it reconciles when a voucher goes out.
#[tokio::test]
async fn a_voucher_signed_ahead_goes_out_while_the_answer_before_it_is_judged() {
    let worker_data = tempfile::tempdir().unwrap();
    let tb = Testbed::start(json!({"dataDir": worker_data.path(), "workers": [
        {"name": "w", "gate": "v2", "price": "10000", "durationMs": 3000}
    ]}));
    let rpc = tb.m["rpcUrl"].as_str().unwrap();
    let upstream = rpc.trim_start_matches("http://").trim_end_matches('/');
    let delay = Duration::from_millis(300);
    let slow = support::proxy::Proxy::start_slow(upstream.to_string(), delay).await;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = loop_cmd(&tb, data.path(), &["w"], 5);
    cmd.env("ERPC_URL", format!("http://127.0.0.1:{}", slow.port));
    // The proxy runs on this runtime: wait for the loop off it.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_ok(&out);
    assert_eq!(lines(data.path()).len(), 5);
    // The worker's own record of its runs (as the real worker keeps it): the search's rounds,
    // not the baseline runs of the unchanged config.
    let stored = worker_data
        .path()
        .join("w/autoresearch-worker/results.jsonl");
    let stored = std::fs::read_to_string(&stored).unwrap();
    let at = |run: &Value, k: &str| chrono::DateTime::parse_from_rfc3339(run[k].as_str().unwrap());
    let mut runs: Vec<_> = stored
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|run| run["config"].get("round").is_some())
        .map(|run| {
            (
                at(&run, "startedAt").unwrap(),
                at(&run, "finishedAt").unwrap(),
            )
        })
        .collect();
    runs.sort();
    assert_eq!(
        runs.len(),
        3,
        "two baseline runs, then the search: {stored}"
    );
    for pair in runs.windows(2) {
        let waited = (pair[1].0 - pair[0].1).to_std().unwrap();
        assert!(
            waited < 2 * delay,
            "the worker sat free {waited:?} between two experiments: it waited for the chain"
        );
    }
}

/// An edge proxy answers 504 after 1 s while the gate goes on, the worker runs for 3 s and the
/// gate settles. Without the chain the 504 read as "nothing paid" and the experiment was paid
/// again; now it is paid once, its result is recovered, and the settlement hash comes from the
/// chain's logs.
#[tokio::test]
async fn a_504_from_an_edge_proxy_is_settled_on_chain_paid_once_and_its_result_kept() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "edge", "gate": "v2", "price": "10000", "durationMs": 3000,
         "edge": {"timeoutMs": 1000, "status": 504}}
    ]}));
    let before = tb.balance(tb.payer()).await;
    let data = tempfile::tempdir().unwrap();
    let out = loop_cmd(&tb, data.path(), &["edge"], 2).output().unwrap();
    assert_ok(&out);
    let lines = lines(data.path());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["status"] == "completed"),
        "{lines:?}"
    );
    support::assert_measured_by_landscape(&lines);
    let recorded: U256 = lines.iter().map(amount).sum();
    assert_eq!(recorded, U256::from(20_000u64));
    assert_eq!(
        payer_spend(&tb, before).await,
        recorded,
        "the payer's spend on chain is the sum of the prices of the recorded experiments"
    );
    assert_settled_on_chain(&tb, &lines).await;
    let status = tb.worker_status("edge").await;
    assert_eq!(
        status["requests"], 2,
        "no experiment was sent twice: {status}"
    );
    assert_eq!(status["runs"], 2, "{status}");
}

/// A worker behind an edge proxy never answers and its gate never settles. The voucher is
/// uncertain (and status says so) until the chain's clock passes its `validBefore` (moved ahead
/// with `evm_increaseTime`): then it can never settle, is not counted as spent, and the
/// experiment goes to another worker, paid once there. Run by the controller.
#[tokio::test]
async fn a_voucher_that_expires_unused_is_not_spent_and_the_experiment_is_retried() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "hang", "gate": "v2", "price": "5000", "faults": {"hang": true},
         "edge": {"timeoutMs": 1000}},
        {"name": "good", "gate": "obol", "price": "10000", "durationMs": 100}
    ]}));
    let Judged { api, data, ctl, .. } = judged_controller("money-expiry", &tb).await;
    let before = tb.balance(tb.payer()).await;
    // The hanging worker is preferred, so it gets the experiment first; its edge gives up
    // after 1 s.
    let hang = tb.worker("hang")["endpoint"].clone();
    let spec = json!({"maxExperiments": 1, "parallelism": 1, "discovery": {"prefer": [hang]}});
    let c = controller::campaign("expiry", &tb, spec);
    api.create(&PostParams::default(), &c).await.unwrap();
    let waiting = controller::wait_for(&api, "expiry", 30, "an uncertain payment", &[&ctl], |c| {
        c.status.as_ref().is_some_and(|s| {
            s.ledger
                .first()
                .is_some_and(|e| e.payment_state == Some(PaymentState::Uncertain))
        })
    })
    .await;
    let status = waiting.status.unwrap();
    assert_eq!(
        status.ledger[0].worker,
        tb.worker("hang")["endpoint"].as_str().unwrap()
    );
    assert_eq!(
        status.spent.as_deref(),
        Some("0"),
        "nothing is spent while it can settle"
    );
    assert_eq!(
        status.in_flight.as_deref(),
        Some("0.005"),
        "but it is reserved"
    );
    tb.advance_chain_time(1_000).await;
    let status = controller::wait_done(&api, "expiry", 60, &[&ctl]).await;
    assert_eq!((status.succeeded, status.failed), (1, 0), "{status:?}");
    assert_eq!(status.spent.as_deref(), Some("0.01"));
    assert_eq!(status.spent_uncertain, None);
    // The balance before the second voucher was signed: the first moved nothing, but a balance
    // read less than 5 s earlier still has it taken off.
    let balance = status.wallet_balance.as_deref();
    assert!(matches!(balance, Some("1000" | "999.995")), "{balance:?}");
    let funded = status.conditions.iter().find(|c| c.type_ == "WalletFunded");
    assert_eq!(
        funded.map(|c| c.status.as_str()),
        Some("True"),
        "{status:?}"
    );
    let lines = controller::results(data.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0]["worker_endpoint"],
        tb.worker("good")["endpoint"],
        "retried on the other worker"
    );
    assert_eq!(amount(&lines[0]), U256::from(10_000u64));
    assert_eq!(payer_spend(&tb, before).await, U256::from(10_000u64));
    assert_eq!(tb.balance(tb.pay_to("hang")).await, U256::ZERO);
    assert_settled_on_chain(&tb, &lines).await;
}

/// Two campaigns (the controller, real uids) with the same train.py and seed on one worker: the
/// worker keeps the first one's result, and before the ids were unique per campaign it handed
/// that result to the second, which recorded it as paid while nothing moved. Now each is run and
/// paid on its own.
#[tokio::test]
async fn a_worker_never_hands_one_campaigns_result_to_another() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "w", "gate": "v2", "price": "10000", "durationMs": 100}
    ]}));
    let Judged {
        ns, api, data, ctl, ..
    } = judged_controller("money-scope", &tb).await;
    let before = tb.balance(tb.payer()).await;
    for name in ["first", "second"] {
        let c = controller::campaign(name, &tb, json!({"maxExperiments": 1, "parallelism": 1}));
        api.create(&PostParams::default(), &c).await.unwrap();
        let status = controller::wait_done(&api, name, 60, &[&ctl]).await;
        assert_eq!(status.succeeded, 1, "{name}: {status:?}");
        assert_eq!(status.spent.as_deref(), Some("0.01"), "{name}");
    }
    let lines = controller::results(data.path());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0]["experiment_id"], lines[1]["experiment_id"],
        "the same experiment by content"
    );
    assert_ne!(lines[0]["payment_tx"], lines[1]["payment_tx"]);
    assert_settled_on_chain(&tb, &lines).await;
    assert_eq!(
        payer_spend(&tb, before).await,
        amount(&lines[0]) + amount(&lines[1])
    );
    assert_eq!(tb.worker_status("w").await["runs"], 2);
    // `audit` reads the campaign from the cluster and checks its line only.
    let out = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .args(["audit", "--namespace", &ns, "--name", "second"])
        .arg("--results")
        .arg(data.path().join("autoresearch/results.jsonl"))
        .args(["--rpc-url", tb.m["rpcUrl"].as_str().unwrap()])
        .env("KUBECONFIG", support::kubeconfig())
        .output()
        .unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("paid 1, unpaid 0, uncertain 0, mismatches 0, unchecked 0"),
        "{text}"
    );
    assert!(
        text.contains("1 authorization(s) of the payer used on chain are in no line"),
        "the first campaign's payment is not this campaign's: {text}"
    );
}

async fn wait_for<F, Fut>(mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..150 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting");
}

/// The payer holds enough for one experiment only. The second is not signed: the loop says
/// `InsufficientBalance` and waits; after a top-up it goes on, and each experiment is paid once.
#[tokio::test]
async fn an_underfunded_wallet_signs_nothing_and_the_campaign_resumes_after_a_top_up() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let tb = Testbed::start(json!({
        "payerFunds": "15000",
        "workers": [{"name": "w", "gate": "v2", "price": "10000", "durationMs": 100}]
    }));
    let data = tempfile::tempdir().unwrap();
    let mut child = loop_cmd(&tb, data.path(), &["w"], 2)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = Arc::new(Mutex::new(String::new()));
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let copy = said.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            copy.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    wait_for(|| async { said.lock().unwrap().contains("InsufficientBalance") }).await;
    let requests = tb.worker_status("w").await["requests"].clone();
    assert_eq!(requests, 1, "nothing was sent for the unfunded experiment");
    assert_eq!(tb.balance(tb.payer()).await, U256::from(5_000u64));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines(data.path()).len(), 1, "the second waits");
    // The payee gives the money back: the payer can pay again.
    tb.transfer_usdc(tb.pay_to("w"), tb.payer(), 10_000).await;
    let out = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the loop goes on after the top-up")
        .unwrap()
        .unwrap();
    assert_ok(&out);
    let lines = lines(data.path());
    assert_eq!(lines.len(), 2);
    assert_settled_on_chain(&tb, &lines).await;
    assert_eq!(tb.balance(tb.payer()).await, U256::from(5_000u64));
    assert_eq!(tb.balance(tb.pay_to("w")).await, U256::from(10_000u64));
}
