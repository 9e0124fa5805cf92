//! Results you can trust, end to end: `loop --campaign` on stand-in workers that run
//! examples/train_landscape.py for real behind real x402 gates, paid on anvil. Two workers are
//! honest; one runs the script honestly and reports val_bpb lowered by 0.05 (`liar`).

mod support;

use serde_json::{Value, json};
use support::testbed::Testbed;

const LIE: f64 = 0.05;

fn manifest(train_py: &str) -> String {
    let indented: String = train_py.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "\
apiVersion: autoresearch.obol.org/v1alpha1
kind: ExperimentCampaign
metadata:
  name: trust
spec:
  trainScript:
    inline: |
{indented}  search:
    strategy: random
    seed: 7
    parameters:
      - {{name: lr, type: float, min: 0.001, max: 0.05, logScale: true}}
      - {{name: depth, type: int, min: 4, max: 12}}
  maxExperiments: 40
  maxFailedExperiments: 5
  budget: {{total: \"0.3\", maxPricePerExperiment: \"0.01\"}}
"
    )
}

#[tokio::test]
async fn a_liar_is_caught_by_replication_and_excluded_and_the_verified_best_is_honest() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "a", "gate": "v2", "price": "10000", "durationMs": 50},
        {"name": "b", "gate": "obol", "price": "10000", "durationMs": 50},
        {"name": "c", "gate": "v2", "price": "10000", "durationMs": 50, "faults": {"liar": LIE}}
    ]}));
    let payees = [tb.pay_to("a"), tb.pay_to("b"), tb.pay_to("c")];
    let mut before = alloy::primitives::U256::ZERO;
    for p in payees {
        before += tb.balance(p).await;
    }
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("campaign.yaml");
    std::fs::write(&file, manifest(support::TRAIN_LANDSCAPE)).unwrap();
    let endpoint = |name: &str| tb.worker(name)["endpoint"].as_str().unwrap().to_string();
    let liar = endpoint("c");
    let out = support::loop_command(&tb, data.path())
        .arg("--campaign")
        .arg(&file)
        .args(["--json", "--no-discovery", "--parallelism", "3"])
        .args(["--max-price", "0.01", "--budget", "0.3"])
        .args(["--prefer", &endpoint("a"), "--prefer", &endpoint("b")])
        .args(["--prefer", &liar])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let lines: Vec<Value> = support::controller::results(data.path());

    // The budget holds with replications, and the chain moved what results.jsonl says.
    let amount = |l: &Value| l["amount"].as_str().unwrap().parse::<u64>().unwrap();
    let paid: u64 = lines.iter().map(amount).sum();
    let mut after = alloy::primitives::U256::ZERO;
    for p in payees {
        after += tb.balance(p).await;
    }
    assert_eq!(after - before, alloy::primitives::U256::from(paid));
    assert!(paid <= 300_000);

    // Honest lines are what train.py prints; the liar's are 0.05 lower.
    let (lies, honest): (Vec<&Value>, Vec<&Value>) = lines
        .iter()
        .partition(|l| l["worker_endpoint"] == liar.as_str());
    support::assert_measured_by_landscape(&honest.into_iter().cloned().collect::<Vec<_>>());
    assert!(!lies.is_empty(), "the liar got work before it was caught");

    // The liar is excluded after two disputed claims.
    let workers = summary["workers"].as_array().unwrap();
    let row = workers
        .iter()
        .find(|w| w["endpoint"] == liar.as_str())
        .unwrap();
    assert_eq!(row["excluded"], true, "{summary}");
    assert!(row["disagreements"].as_u64().unwrap() >= 2);
    for w in workers.iter().filter(|w| w["endpoint"] != liar.as_str()) {
        assert_eq!(w["excluded"], false, "{w}");
        assert_eq!(w["disagreements"], 0, "{w}");
    }

    // The verified best is what honest workers measure for its config, never a lie.
    let best = &summary["best"];
    assert_eq!(best["verified"], true, "{summary}");
    let id = best["experiment_id"].as_str().unwrap();
    let config = &lines.iter().find(|l| l["experiment_id"] == id).unwrap()["config"];
    let honest_value = autoresearch_coordinator::strategy::landscape::val_bpb(config);
    assert!(
        (best["val_bpb"].as_f64().unwrap() - honest_value).abs() < 1e-9,
        "{summary}"
    );
    for r in best["replications"].as_array().unwrap() {
        let line = lines.iter().find(|l| l["experiment_id"] == *r).unwrap();
        assert_eq!(line["role"], "replication");
        assert_eq!(line["replicates"], id);
        assert_ne!(line["worker_endpoint"], liar.as_str());
    }

    let checks: u64 = lines
        .iter()
        .filter(|l| l.get("role").is_some())
        .map(amount)
        .sum();
    let disputed = stderr.matches("ClaimDisputed").count();
    let excluded_at = excluded_at(&lines, &liar, support::TRAIN_LANDSCAPE);
    eprintln!(
        "trust: {} paid runs, {} lies, {disputed} claims disputed, liar excluded after line {excluded_at:?}, baseline and replications {:.0} % of {} USDC spent",
        lines.len(),
        lies.len(),
        100.0 * checks as f64 / paid as f64,
        summary["spent"]
    );
}

/// The results.jsonl line (1-based) after which the liar is excluded, replaying the lines as the
/// engine does after a restart.
fn excluded_at(lines: &[Value], liar: &str, train_py: &str) -> Option<usize> {
    use autoresearch_coordinator::engine::trust::{Trust, TrustSettings};
    let mut trust = Trust::default();
    let base_id = autoresearch_coordinator::experiment::experiment_id(train_py, &json!({}));
    trust.set_settings(TrustSettings {
        base_id,
        ..TrustSettings::default()
    });
    for (i, line) in lines.iter().enumerate() {
        let record: autoresearch_coordinator::results::ResultRecord =
            serde_json::from_value(line.clone()).unwrap();
        trust.add_record(&record);
        if trust.is_excluded(liar) {
            return Some(i + 1);
        }
    }
    None
}

#[tokio::test]
async fn a_controller_killed_while_a_replication_is_in_flight_resumes_it_without_paying_twice() {
    use autoresearch_coordinator::crd::{ExperimentCampaign, Phase};
    use kube::api::{Api, PostParams};
    use support::controller::{Controller, campaign, results, signer_secret, wait_done};

    let client = support::client().await;
    support::install_crd(&client).await;
    let ns = support::namespace(&client, "trust-crash").await;
    let tb = Testbed::start(json!({"workers": [
        {"name": "a", "gate": "v2", "price": "10000", "durationMs": 300},
        {"name": "b", "gate": "v1", "price": "10000", "durationMs": 300},
        {"name": "c", "gate": "obol", "price": "10000", "durationMs": 300}
    ]}));
    signer_secret(&client, &ns, &tb).await;
    let api: Api<ExperimentCampaign> = Api::namespaced(client, &ns);
    let data = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let mut before = alloy::primitives::U256::ZERO;
    for n in names {
        before += tb.balance(tb.pay_to(n)).await;
    }
    // One at a time: two baseline runs, then an experiment that beats them (lr 0.004 at depth 8
    // is the landscape's optimum), then its replication: the fourth request sent.
    let spec = json!({
        "search": {"strategy": "list", "parameters": [], "experiments": [{"lr": 0.004}]},
        "maxExperiments": 4,
        "parallelism": 1,
    });
    let mut first = Controller::start_with(
        &ns,
        data.path(),
        "ctl-a",
        &[("FAILPOINTS", "run.after_send=3*off->return")],
    );
    api.create(&PostParams::default(), &campaign("crash", &tb, spec))
        .await
        .unwrap();
    for _ in 0..300 {
        if !first.is_running() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!first.is_running(), "the failpoint stopped the controller");
    let crashed = api.get("crash").await.unwrap().status.unwrap();
    assert_eq!(crashed.ledger.len(), 1, "{crashed:?}");
    let replication = crashed.ledger[0].experiment_id.clone();
    assert!(replication.ends_with("-r1"), "{replication}");

    let second = Controller::start(&ns, data.path(), "ctl-b");
    let status = wait_done(&api, "crash", 90, &[&second]).await;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let lines = results(data.path());
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["experiment_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(ids.iter().filter(|i| **i == replication).count(), 1);
    let mut after = alloy::primitives::U256::ZERO;
    for n in names {
        after += tb.balance(tb.pay_to(n)).await;
    }
    assert_eq!(
        after - before,
        alloy::primitives::U256::from(40_000),
        "four runs paid, the replication once"
    );
    let verification = status.verification.clone().unwrap();
    assert!(verification.verified, "{status:?}");
    assert_eq!(verification.replications, [replication]);
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Verified" && c.status == "True")
    );
}
