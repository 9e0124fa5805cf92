//! A worker that fails in the middle of `loop` is replaced at once by a cached candidate, while
//! the discovery refresh (slow: anonymous, 10 requests a minute) runs in the background.

mod discovery_support;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use discovery_support::ScanServer;
use serde_json::json;
use support::testbed::Testbed;

/// The campaign `loop` runs: two rounds, discovery refreshed every 10 s, the index only.
const CAMPAIGN: &str = r#"
apiVersion: autoresearch.obol.org/v1alpha1
kind: ExperimentCampaign
metadata:
  name: failover
spec:
  trainScript:
    inline: "print('val_bpb: 1.0')"
  search:
    strategy: list
    experiments: [{"round": 1}, {"round": 2}]
  maxExperiments: 2
  budget:
    total: "0.1"
    maxPricePerExperiment: "0.02"
  discovery:
    refreshIntervalSeconds: 10
    onChain:
      mode: never
"#;

#[tokio::test]
async fn a_failed_worker_is_replaced_within_a_second_by_a_cached_candidate() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "a", "gate": "v2", "durationMs": 100, "faults": {"failBeforePayment": true}},
        {"name": "b", "gate": "v2", "durationMs": 100}
    ]}));
    let (a, b) = (
        tb.worker("a")["endpoint"].as_str().unwrap().to_string(),
        tb.worker("b")["endpoint"].as_str().unwrap().to_string(),
    );
    let listed = json!([{"name": "b", "endpoint": b}]).to_string();
    // The index lists b, at the real anonymous limits (one request every 6 s).
    let scan = ScanServer::start(&["--real-limits", "--fail-every", "0", "--workers", &listed]);
    let data = tempfile::tempdir().unwrap();
    warm_the_cache(&scan, data.path());
    // ... and it is now older than the refresh interval: stale, but a candidate all the same.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let before = scan.stats().await["api"].as_u64().unwrap();

    let (status, lines) = timed_loop(&tb, &scan, data.path(), &a);
    let log: String = lines
        .iter()
        .map(|(t, l)| format!("{:>6}ms {l}\n", t.as_millis()))
        .collect();
    assert!(status.success(), "{log}");

    let at = |pred: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .find(|(_, l)| pred(l))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("line not found in:\n{log}"))
    };
    // `--prefer` starts at once: the stale cache is refreshed in the background.
    let first = at(&|l: &str| l.contains("ExperimentStarted") && l.contains(&a));
    assert!(
        first < Duration::from_secs(2),
        "first start at {first:?}:\n{log}"
    );
    let failed = at(&|l: &str| l.contains("WorkerFailed") && l.contains(&a));
    let replaced = at(&|l: &str| l.contains("ExperimentStarted") && l.contains(&b));
    assert!(replaced > failed, "{log}");
    eprintln!("fail-over took {:?}", replaced - failed);
    assert!(
        replaced - failed < Duration::from_secs(1),
        "fail-over took {:?}:\n{log}",
        replaced - failed
    );
    let results = std::fs::read_to_string(data.path().join("autoresearch/results.jsonl")).unwrap();
    let on_b = results
        .lines()
        .filter(|l| l.contains(&b) && l.contains("\"completed\""))
        .count();
    assert_eq!(on_b, 2, "both rounds ran on b:\n{results}\n{log}");
    // The refresh went on in the background: the loop did not wait for it to finish (three
    // list requests at 6 s each).
    let during = scan.stats().await["api"].as_u64().unwrap() - before;
    assert!(
        during < 3,
        "{during} index requests during the loop:\n{log}"
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_autoresearch-coordinator");

/// An earlier `discover` (with a key, so it is quick) leaves its result in the cache.
fn warm_the_cache(scan: &ScanServer, data: &std::path::Path) {
    let warm = Command::new(BIN)
        .args(["discover", "--limit", "100", "--on-chain", "never"])
        .args(["--allow-private", "127.0.0.1/32"])
        .env("SCAN_API_URL", scan.api_url())
        .env("SCAN_API_KEY", "testbed-scan-key")
        .env("DATA_DIR", data)
        .output()
        .unwrap();
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
}

/// Runs `loop` on the campaign, preferring `prefer`, anonymous at the index; each line of its
/// progress with the time it was printed.
fn timed_loop(
    tb: &Testbed,
    scan: &ScanServer,
    data: &std::path::Path,
    prefer: &str,
) -> (std::process::ExitStatus, Vec<(Duration, String)>) {
    let campaign = data.join("campaign.yaml");
    std::fs::write(&campaign, CAMPAIGN).unwrap();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("loop")
        .arg("--campaign")
        .arg(&campaign)
        .args(["--rounds", "2", "--max-price", "0.02", "--prefer", prefer])
        .args(["--allow-private", "127.0.0.1/32"])
        .args(["--signer-url", tb.m["signer"]["url"].as_str().unwrap()])
        .env(
            "REMOTE_SIGNER_TOKEN",
            tb.m["signer"]["token"].as_str().unwrap(),
        )
        .env("SCAN_API_URL", scan.api_url())
        .env_remove("SCAN_API_KEY")
        .env("DATA_DIR", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .map(|line| (started.elapsed(), line))
        .collect();
    (child.wait().unwrap(), lines)
}
