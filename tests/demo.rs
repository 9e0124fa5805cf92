//! The README's main job, `scripts/demo.sh`, run headless: its end state is asserted.

use std::process::Command;

#[test]
fn the_demo_completes_a_paid_campaign_and_reports_it() {
    let root = env!("CARGO_MANIFEST_DIR");
    let data = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/demo.sh"))
        .env("DEMO_BIN", env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .env("DEMO_DATA", data.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    // The quickstart stops at maxExperiments (12) or earlier at its goal, whichever comes first:
    // with experiments finishing in parallel, the order (and so hillClimb's path) varies.
    let succeeded: u32 = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("phase Succeeded: ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no success line\n{stdout}"));
    assert!((1..=12).contains(&succeeded), "{stdout}");
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    assert!(stdout.contains("Succeeded         True"), "{stdout}");
    // The demo ends with the report: the chart and results.tsv, one row per experiment.
    let report = data.path().join("report");
    assert!(
        report
            .join("progress.png")
            .metadata()
            .is_ok_and(|m| m.len() > 10_000),
        "{stdout}"
    );
    let tsv = std::fs::read_to_string(report.join("results.tsv")).unwrap();
    assert_eq!(tsv.lines().count() as u32, succeeded + 1, "{tsv}");
    // The USDC each worker received, read from the chain, adds up to what status says was spent.
    let spent: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split(" failed, ")
                .nth(1)?
                .strip_suffix(" USDC spent")?
                .parse()
                .ok()
        })
        .expect("spent line");
    let received: f64 = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("gpu-") && l.ends_with(" USDC"))
        .map(|l| {
            l.split_whitespace()
                .rev()
                .nth(1)
                .unwrap()
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    assert!(
        (spent - received).abs() < 1e-9 && spent > 0.0,
        "spent {spent}, received {received}\n{stdout}"
    );
    // The quickstart searches two constants of train_tiny.py (applyTo: trainScript): each
    // experiment ran a train.py of its own, kept by hash in the script store, and the val_bpb
    // recorded is what that code really prints; results.jsonl's amounts are what the chain moved.
    let results =
        std::fs::read_to_string(data.path().join("data/autoresearch/results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u32, succeeded);
    // Baseline runs and replications re-run a train.py on purpose; every experiment is new.
    let experiments: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("role").is_none()).collect();
    let hashes: std::collections::HashSet<&str> = experiments
        .iter()
        .map(|l| l["train_hash"].as_str().unwrap())
        .collect();
    assert_eq!(
        hashes.len(),
        experiments.len(),
        "a different train.py per experiment"
    );
    for line in &lines {
        let hex = line["train_hash"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        // The campaign's own train.py is not copied into the store; every changed one is.
        let stored = data
            .path()
            .join(format!("data/autoresearch/scripts/{hex}.py"));
        let base = std::path::Path::new(root).join("examples/train_tiny.py");
        let script = if stored.exists() { stored } else { base };
        let run = Command::new("python3").arg(&script).output().unwrap();
        let printed = String::from_utf8_lossy(&run.stdout);
        let measured: f64 = printed
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("val_bpb: ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} printed no val_bpb", script.display()));
        assert_eq!(line["val_bpb"].as_f64(), Some(measured), "{line}");
    }
    let amounts: f64 = lines
        .iter()
        .map(|l| l["amount"].as_str().unwrap().parse::<f64>().unwrap() / 1e6)
        .sum();
    assert!(
        (amounts - received).abs() < 1e-9,
        "paid once per experiment: {amounts} vs {received}"
    );
    assert!(stdout.contains("everything is stopped now"));
}
