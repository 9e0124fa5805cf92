//! An `llm` campaign end to end: `loop` runs examples/train_tiny.py on the payment testbed's
//! workers (which really run the submitted code), with the real LiteLLM proxy in front of the
//! deterministic proposer. Its first reply of each proposal does not apply (`noapply`), so every
//! proposal is refused once before it is usable: nothing refused may ever be paid.

mod llm_support;
mod support;

use std::collections::HashSet;
use std::process::{Child, Command};

use alloy::primitives::U256;
use llm_support::{
    MASTER_KEY, UPSTREAM_KEY, install_litellm, repo, run_train_py, start_litellm, start_proposer,
    wait_until_live,
};
use serde_json::{Value, json};
use support::testbed::Testbed;

/// LiteLLM relaying every model name to the proposer; killed on drop.
struct Llm {
    url: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Llm {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .arg("--")
                .arg(format!("-{}", child.id()))
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_llm() -> Llm {
    let litellm = install_litellm();
    let dir = tempfile::tempdir().unwrap();
    let (proposer, upstream) = start_proposer(&dir.path().join("requests.jsonl"));
    let config = dir.path().join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: \"*\"\n    litellm_params: {{model: \"openai/*\", api_base: \"{upstream}\", api_key: \"{UPSTREAM_KEY}\", max_retries: 0}}\nlitellm_settings:\n  num_retries: 0\n  drop_params: true\ngeneral_settings:\n  master_key: {MASTER_KEY}\n"
        ),
    )
    .unwrap();
    let (server, url) = start_litellm(&litellm, &config, dir.path());
    // Owned before the wait: a LiteLLM that does not start is still ended on drop.
    let llm = Llm {
        url: format!("{url}/v1"),
        children: vec![proposer, server],
        dir,
    };
    wait_until_live(&url, llm.dir.path());
    llm
}

/// The first runs are the unmodified train.py (objective.baselineRuns, 2 by default: with one
/// worker both on it); every later one is a different, new train.py.
fn assert_baseline_then_new_code(lines: &[Value], tiny: &str, start: f64) {
    let n = lines.len();
    let base = autoresearch_coordinator::experiment::train_hash(tiny);
    let baseline = &lines[..2];
    for line in baseline {
        assert_eq!(line["train_hash"], base.as_str());
        assert_eq!(line["role"], "baseline");
        assert_eq!(line["description"], "baseline");
        // The worker measured what the code really gives: the baseline matches a local run.
        assert!((line["val_bpb"].as_f64().unwrap() - start).abs() < 1e-9);
    }
    let hashes: HashSet<&str> = lines[2..]
        .iter()
        .map(|l| l["train_hash"].as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), n - 2, "no proposed train.py ran twice");
    assert!(!hashes.contains(base.as_str()));
    for line in &lines[2..] {
        assert!(line["parent_train_hash"].as_str().is_some(), "{line}");
        assert!(["keep", "discard", "crash"].contains(&line["decision"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn an_llm_campaign_improves_train_tiny_and_pays_only_for_usable_proposals() {
    let llm = start_llm();
    let tb = Testbed::start(json!({"workers": [{"name": "a", "gate": "v2", "price": "10000"}]}));
    let payee = tb.pay_to("a");
    let before = tb.balance(payee).await;
    let tiny = std::fs::read_to_string(repo().join("examples/train_tiny.py")).unwrap();
    let start = run_train_py(&tiny).unwrap();
    let data = tempfile::tempdir().unwrap();
    let campaign = json!({
        "apiVersion": "autoresearch.obol.org/v1alpha1",
        "kind": "ExperimentCampaign",
        "metadata": {"name": "llm"},
        "spec": {
            "trainScript": {"inline": tiny},
            "search": {"strategy": "llm", "llm": {"endpoint": llm.url, "model": "noapply", "maxCalls": 40}},
            "maxExperiments": 7,
            "parallelism": 1,
            "budget": {"total": "1", "maxPricePerExperiment": "0.02"}
        }
    });
    let file = data.path().join("llm.yaml");
    std::fs::write(&file, serde_yaml::to_string(&campaign).unwrap()).unwrap();
    let out = support::loop_command(&tb, data.path())
        .arg("--campaign")
        .arg(&file)
        .args(["--no-discovery", "--max-price", "0.02"])
        .args(["--prefer", tb.worker("a")["endpoint"].as_str().unwrap()])
        .env("LLM_API_KEY", MASTER_KEY)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let lines: Vec<Value> = support::controller::results(data.path());
    // maxExperiments (7), or fewer when the model's calls (maxCalls) run out first: the
    // deterministic proposer repeats itself, and a repeat is refused, not paid.
    let n = lines.len();
    assert!((4..=7).contains(&n), "{stderr}");
    assert_baseline_then_new_code(&lines, &tiny, start);
    // Every reply was refused once (its edit did not apply) and none of those was paid: the
    // chain moved exactly one price per recorded experiment.
    let refused = stderr.matches("ProposalRefused").count();
    assert!(refused >= n - 2, "{stderr}");
    let paid = tb.balance(payee).await - before;
    assert_eq!(paid, U256::from(n as u64 * 10_000));
    let best = lines
        .iter()
        .filter_map(|l| l["val_bpb"].as_f64())
        .fold(f64::INFINITY, f64::min);
    eprintln!(
        "llm campaign: start {start:.6}, best {best:.6}, {} experiments, {} kept, {refused} refused replies",
        lines.len(),
        lines.iter().filter(|l| l["decision"] == "keep").count()
    );
    assert!(best < start - 0.002, "start {start}, best {best}\n{stderr}");
    // The best kept train.py is where the CLI says it is.
    let kept =
        std::fs::read_to_string(data.path().join("autoresearch/local/best_train.py")).unwrap();
    assert!((run_train_py(&kept).unwrap() - best).abs() < 1e-9);
}
