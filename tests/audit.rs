//! `audit` against the payment testbed's chain: a campaign whose payment went wrong (judged by
//! HTTP answers alone, behind an edge proxy that answers 504 while the gate settles) is caught,
//! and one judged by the chain passes.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use support::testbed::Testbed;

fn run_loop(tb: &Testbed, data: &Path, worker: &str, chain: bool) -> Output {
    let train = data.join("train.py");
    std::fs::write(&train, support::TRAIN_LANDSCAPE).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"));
    cmd.arg("loop")
        .arg(&train)
        .args(["--rounds", "1", "--no-discovery", "--max-price", "0.02"])
        .args(["--timeout", "60"])
        .args(["--prefer", tb.worker(worker)["endpoint"].as_str().unwrap()])
        .args(["--signer-url", tb.m["signer"]["url"].as_str().unwrap()])
        .env(
            "REMOTE_SIGNER_TOKEN",
            tb.m["signer"]["token"].as_str().unwrap(),
        )
        .env("DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .env_remove("ERPC_URL");
    if chain {
        cmd.env("ERPC_URL", tb.m["rpcUrl"].as_str().unwrap());
    }
    cmd.output().unwrap()
}

fn audit(tb: &Testbed, data: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .arg("audit")
        .arg("--results")
        .arg(data.join("autoresearch/results.jsonl"))
        .args(["--rpc-url", tb.m["rpcUrl"].as_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn audit_fails_on_a_campaign_whose_payment_went_wrong_and_passes_a_sound_one() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "edge", "gate": "v2", "price": "10000", "durationMs": 3000,
         "edge": {"timeoutMs": 1000}},
        {"name": "ok", "gate": "obol", "price": "10000", "durationMs": 100}
    ]}));
    let (wrong, sound) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Without the chain, the 504 reads as unpaid while the gate settles the first voucher.
    run_loop(&tb, wrong.path(), "edge", false);
    // Every voucher the books still call live is dead once the chain's clock passes validBefore.
    tb.advance_chain_time(2_000).await;
    let (ok, text) = audit(&tb, wrong.path());
    assert!(!ok, "a mismatch exits non-zero:\n{text}");
    // What the chaos run measured: a payment recorded that never reached the chain, and one
    // that reached it unrecorded.
    assert!(
        text.contains("MISMATCH: recorded as paid, but the voucher expired unused on chain"),
        "{text}"
    );
    assert!(
        text.contains("1 authorization(s) of the payer used on chain are in no line"),
        "{text}"
    );

    let out = run_loop(&tb, sound.path(), "ok", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, text) = audit(&tb, sound.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("paid 1, unpaid 0, uncertain 0, mismatches 0"),
        "{text}"
    );
}
