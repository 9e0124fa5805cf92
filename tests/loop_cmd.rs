//! `autoresearch-coordinator loop`: the controller's engine without Kubernetes, against the real
//! payment testbed.

mod support;

use std::process::Command;

use alloy::primitives::U256;
use serde_json::{Value, json};
use support::testbed::Testbed;

#[tokio::test]
async fn loop_runs_rounds_on_preferred_workers_pays_each_once_and_records_them() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "a", "gate": "v2", "price": "10000", "durationMs": 100},
        {"name": "b", "gate": "obol", "price": "20000", "durationMs": 100}
    ]}));
    let (payee_a, payee_b) = (tb.pay_to("a"), tb.pay_to("b"));
    let before = tb.balance(payee_a).await + tb.balance(payee_b).await;
    let data = tempfile::tempdir().unwrap();
    let train = data.path().join("train.py");
    std::fs::write(&train, support::TRAIN_LANDSCAPE).unwrap();
    let out = support::loop_command(&tb, data.path())
        .arg(&train)
        .args([
            "--rounds",
            "4",
            "--parallelism",
            "2",
            "--no-discovery",
            "--max-price",
            "0.02",
        ])
        .args(["--prefer", tb.worker("a")["endpoint"].as_str().unwrap()])
        .args(["--prefer", tb.worker("b")["endpoint"].as_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("at most 0.02 USDC each"),
        "the cap is printed: {stderr}"
    );
    assert!(stdout.contains("phase: Succeeded"), "{stdout}");
    assert!(stdout.contains("leaderboard:"), "{stdout}");

    let lines: Vec<Value> = support::controller::results(data.path());
    assert_eq!(lines.len(), 4);
    let paid: u64 = lines
        .iter()
        .map(|l| l["amount"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    let after = tb.balance(payee_a).await + tb.balance(payee_b).await;
    assert_eq!(
        after - before,
        U256::from(paid),
        "results.jsonl and the chain agree on what was paid"
    );
    assert!(lines.iter().all(|l| l["status"] == "completed"));
    // What the workers measured by running train.py on each round's config.
    support::assert_measured_by_landscape(&lines);
}

#[test]
fn loop_refuses_a_cap_above_the_budget_before_paying_anything() {
    let data = tempfile::tempdir().unwrap();
    let train = data.path().join("train.py");
    std::fs::write(&train, "print(1)\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .arg("loop")
        .arg(&train)
        .args(["--no-discovery", "--max-price", "0.5", "--budget", "0.1"])
        .args(["--prefer", "http://worker.invalid/services/w"])
        .env("DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("budget.maxPricePerExperiment"), "{stderr}");
    assert!(!data.path().join("autoresearch/results.jsonl").exists());
}
