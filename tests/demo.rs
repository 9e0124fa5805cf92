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
    let results =
        std::fs::read_to_string(data.path().join("data/autoresearch/results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 12);
    assert!(stdout.contains("everything is stopped now"));
}
