//! The report: chart data as values, results.tsv bytes, the summary's numbers, the diff, and the
//! `report` command end to end on a results file.

use std::process::Command;

use autoresearch_coordinator::experiment::train_hash;
use autoresearch_coordinator::report::chart::{Annotation, Mark};
use autoresearch_coordinator::report::history::read_rows;
use autoresearch_coordinator::report::{
    ChartData, Decision, Filter, ResultHistory, Row, Summary, tsv,
};
use serde_json::{Value, json};

const NF: f64 = 0.002;

fn row(v: Value) -> Row {
    serde_json::from_value(v).unwrap()
}

/// A new-style history: baseline, a kept change, a discard, a crash, a replication that agrees,
/// a second kept change, a worker failure.
fn history() -> ResultHistory {
    let w1 = "http://127.0.0.1:1/services/a";
    let w2 = "http://127.0.0.1:2/services/b";
    let rows = vec![
        json!({"experiment_id": "e0", "train_hash": train_hash("base"), "val_bpb": 1.0, "worker_endpoint": w1,
               "amount": "10000", "status": "keep", "run_status": "completed", "role": "baseline"}),
        json!({"experiment_id": "e1", "train_hash": train_hash("lr"), "val_bpb": 0.99, "worker_endpoint": w1,
               "amount": "10000", "status": "keep", "run_status": "completed", "description": "MATRIX_LR=0.03",
               "memory_gb": 44.25}),
        json!({"experiment_id": "e2", "train_hash": train_hash("gelu"), "val_bpb": 1.01, "worker_endpoint": w2,
               "amount": "20000", "status": "discard", "run_status": "completed", "description": "switch to\tGeLU"}),
        json!({"experiment_id": "e3", "train_hash": train_hash("wide"), "val_bpb": null, "worker_endpoint": w2,
               "amount": "20000", "status": "crash", "run_status": "failed", "description": "double the width (OOM)"}),
        json!({"experiment_id": "e1r", "train_hash": train_hash("lr"), "val_bpb": 0.9905, "worker_endpoint": w2,
               "amount": "20000", "status": "discard", "run_status": "completed", "role": "replication", "replicates": "e1"}),
        json!({"experiment_id": "e4", "train_hash": train_hash("depth"), "val_bpb": 0.985, "worker_endpoint": w1,
               "amount": "10000", "status": "keep", "run_status": "completed", "params": {"DEPTH": 10}}),
        json!({"experiment_id": "e5", "train_hash": train_hash("x"), "val_bpb": null, "worker_endpoint": w2,
               "status": "crash", "run_status": "worker_failure", "description": "<script>alert(1)</script>"}),
    ];
    ResultHistory::new(Some("ns/c".into()), rows.into_iter().map(row).collect(), NF)
}

#[test]
fn chart_data_has_every_point_the_staircase_and_a_label_per_kept_change() {
    let data = ChartData::new(&history());
    assert_eq!(data.title, "ns/c: 7 experiments, 2 kept improvements");
    let marks: Vec<(usize, Option<f64>, Mark)> =
        data.points.iter().map(|p| (p.x, p.y, p.mark)).collect();
    assert_eq!(
        marks,
        vec![
            (1, Some(1.0), Mark::Baseline),
            (2, Some(0.99), Mark::Kept),
            (3, Some(1.01), Mark::Discarded),
            (4, None, Mark::Failed),
            (5, Some(0.9905), Mark::Replication),
            (6, Some(0.985), Mark::Kept),
            (7, None, Mark::Failed),
        ]
    );
    assert_eq!(
        data.points[4].replicates,
        Some(2),
        "the replication points at e1"
    );
    assert_eq!(
        data.best_steps,
        vec![
            (1.0, 1.0),
            (2.0, 1.0),
            (2.0, 0.99),
            (6.0, 0.99),
            (6.0, 0.985),
            (7.0, 0.985)
        ]
    );
    assert_eq!(
        data.annotations,
        vec![
            Annotation {
                x: 1,
                y: 1.0,
                text: "baseline".into()
            },
            Annotation {
                x: 2,
                y: 0.99,
                text: "MATRIX_LR=0.03".into()
            },
            Annotation {
                x: 6,
                y: 0.985,
                text: "DEPTH=10".into()
            },
        ]
    );
    let (low, high) = data.y_range;
    assert!(low < 0.985 - NF && high > 1.01, "{low}..{high}");
}

#[test]
fn a_broken_change_far_above_the_baseline_does_not_flatten_the_chart() {
    let rows = [1.0, 0.99, 3.5]
        .iter()
        .enumerate()
        .map(|(i, v)| row(json!({"experiment_id": format!("e{i}"), "val_bpb": v})))
        .collect();
    let data = ChartData::new(&ResultHistory::new(None, rows, NF));
    let (_, high) = data.y_range;
    assert!(high < 1.1, "the top is capped near the baseline: {high}");
    assert_eq!(data.title, "3 experiments, 1 kept improvement");
}

#[test]
fn old_rows_are_replayed_with_the_keep_rule() {
    // Rows written before the engine recorded decisions: worker status only.
    let rows = vec![
        json!({"experiment_id": "a", "train_hash": "sha256:aa", "val_bpb": 1.0, "status": "completed"}),
        json!({"experiment_id": "b", "train_hash": "sha256:bb", "val_bpb": 0.999, "status": "completed"}),
        json!({"experiment_id": "c", "train_hash": "sha256:cc", "val_bpb": 0.99, "status": "completed"}),
        json!({"experiment_id": "d", "train_hash": "sha256:dd", "val_bpb": 0.5, "status": "failed"}),
        json!({"experiment_id": "e", "train_hash": "sha256:ee", "val_bpb": null, "status": "worker_failure"}),
    ];
    let h = ResultHistory::new(None, rows.into_iter().map(row).collect(), NF);
    let decisions: Vec<Decision> = h.entries.iter().map(|e| e.decision).collect();
    assert_eq!(
        decisions,
        [
            Decision::Keep,
            Decision::Discard, // within the noise floor
            Decision::Keep,
            Decision::Crash, // a failed run's number is not a result
            Decision::Crash
        ]
    );
    assert_eq!(h.best().unwrap().row.experiment_id, "c");
}

#[test]
fn a_recorded_decision_is_taken_as_it_is() {
    // The engine's rows: how the run ended in `status`, keep/discard/crash in `decision`.
    let rows = vec![
        json!({"experiment_id": "a", "val_bpb": 1.0, "status": "completed", "decision": "keep"}),
        // Better by far, but the engine did not keep it (say, a replication disagreed).
        json!({"experiment_id": "b", "val_bpb": 0.9, "status": "completed", "decision": "discard"}),
        json!({"experiment_id": "c", "val_bpb": 0.99, "status": "completed", "decision": "keep"}),
        json!({"experiment_id": "d", "val_bpb": null, "status": "timeout", "decision": "crash"}),
    ];
    let mut rows: Vec<Row> = rows.into_iter().map(row).collect();
    // A first row the engine did not keep is not the baseline: the staircase starts later.
    rows.insert(
        0,
        row(json!({"experiment_id": "z", "val_bpb": 2.0, "decision": "discard"})),
    );
    let h = ResultHistory::new(None, rows, NF);
    let decisions: Vec<Decision> = h.entries.iter().map(|e| e.decision).collect();
    assert_eq!(
        decisions,
        [
            Decision::Discard,
            Decision::Keep,
            Decision::Discard,
            Decision::Keep,
            Decision::Crash
        ]
    );
    assert_eq!(h.best().unwrap().row.experiment_id, "c");
    assert_eq!(h.baseline().unwrap().row.experiment_id, "a");
    assert_eq!(h.improvements().count(), 1, "c over the baseline a");
}

#[test]
fn results_tsv_is_autoresearchs_format_byte_for_byte() {
    let h = history();
    // The short hash: the first 7 hex digits after `sha256:`.
    let short = |s: &str| train_hash(s)[7..14].to_string();
    let expected = format!(
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n\
         {}\t1.000000\t0.0\tkeep\tbaseline\n\
         {}\t0.990000\t44.2\tkeep\tMATRIX_LR=0.03\n\
         {}\t1.010000\t0.0\tdiscard\tswitch to GeLU\n\
         {}\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n\
         {}\t0.990500\t0.0\tdiscard\treplication of e1: e1r\n\
         {}\t0.985000\t0.0\tkeep\tDEPTH=10\n\
         {}\t0.000000\t0.0\tcrash\t<script>alert(1)</script>\n",
        short("base"),
        short("lr"),
        short("gelu"),
        short("wide"),
        short("lr"),
        short("depth"),
        short("x"),
    );
    assert_eq!(tsv::render(&h), expected);
}

#[test]
fn summary_counts_money_workers_and_verification() {
    let h = history();
    let s = Summary::new(&h, None);
    assert_eq!(
        (
            s.experiments,
            s.failures,
            s.replications,
            s.kept_improvements
        ),
        (7, 2, 1, 2)
    );
    let best = s.best.as_ref().unwrap();
    assert_eq!((best.val_bpb, best.experiment_id.as_str()), (0.985, "e4"));
    assert!(!s.best_verified, "e4 has no replication");
    assert!(
        h.verified(&h.entries[1]),
        "e1 was replicated within the noise floor"
    );
    assert_eq!(s.baseline.as_ref().unwrap().experiment_id, "e0");
    assert!((s.improvement.unwrap() - 0.015).abs() < 1e-12);
    assert_eq!(s.spent_usdc, "0.09", "the worker failure cost nothing");
    assert_eq!(s.spent_per_improvement_usdc.as_deref(), Some("0.045"));
    let w: Vec<_> = s
        .workers
        .iter()
        .map(|w| {
            (
                w.runs,
                w.failures,
                w.price_usdc.clone(),
                w.agreements,
                w.disagreements,
            )
        })
        .collect();
    assert_eq!(
        w,
        vec![
            (3, 0, Some("0.01".into()), 1, 0),
            (4, 2, Some("0.02".into()), 1, 0)
        ]
    );
    let text = s.text();
    for line in [
        "best val_bpb: 0.985000 (not verified)",
        "experiments: 7, failures: 2, replications: 1, kept improvements: 2",
        "spent: 0.09 USDC, 0.045 USDC per kept improvement",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
}

/// Two runs of campaign `c` (the second a kept code change, both sources in `scripts/`), one of
/// another campaign, and a torn last line: `results.jsonl` and `scripts/` under `dir`.
fn two_runs_and_noise(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let base = "DEPTH = 8\nMATRIX_LR = 0.04\nprint('train')\n";
    let best = "DEPTH = 8\nMATRIX_LR = 0.03\nprint('train')\n";
    for src in [base, best] {
        let hex = &train_hash(src)["sha256:".len()..];
        std::fs::write(scripts.join(format!("{hex}.py")), src).unwrap();
    }
    let results = dir.join("results.jsonl");
    let lines = [
        json!({"experiment_id": "a", "train_hash": train_hash(base), "val_bpb": 1.0, "campaign_name": "c", "status": "completed", "amount": "10000"}),
        json!({"experiment_id": "b", "train_hash": train_hash(best), "val_bpb": 0.99, "campaign_name": "c", "status": "completed", "amount": "10000"}),
        json!({"experiment_id": "z", "train_hash": train_hash("other"), "val_bpb": 0.5, "campaign_name": "other"}),
    ];
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str("{\"experiment_id\": \"tor");
    std::fs::write(&results, text).unwrap();
    (results, scripts)
}

#[test]
fn the_command_writes_chart_tsv_and_json_with_the_diff_of_the_code_change() {
    let dir = tempfile::tempdir().unwrap();
    let (results, scripts) = two_runs_and_noise(dir.path());
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .args(["report", "--campaign", "c", "--json"])
        .arg("--results")
        .arg(&results)
        .arg("--scripts")
        .arg(&scripts)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["experiments"], 2,
        "the other campaign and the torn line are left out"
    );
    assert_eq!(summary["best"]["experiment_id"], "b");
    assert_eq!(summary["kept_improvements"], 1);
    let diff = summary["diff"].as_str().unwrap();
    assert!(
        diff.contains("-MATRIX_LR = 0.04\n+MATRIX_LR = 0.03\n"),
        "{diff}"
    );
    assert!(
        diff.starts_with("--- baseline/train.py\n+++ best/train.py\n"),
        "{diff}"
    );
    let png = std::fs::read(out_dir.join("progress.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(out_dir.join("progress.svg")).unwrap();
    assert!(
        svg.contains("2 experiments, 1 kept improvement"),
        "the title is text in the SVG"
    );
    let tsv = std::fs::read_to_string(out_dir.join("results.tsv")).unwrap();
    assert_eq!(tsv.lines().count(), 3);
    assert_eq!(
        summary["files"]["png"],
        out_dir.join("progress.png").to_str().unwrap()
    );

    // Rows filtered by read_rows are the same the command used.
    let filter = Filter {
        namespace: None,
        name: Some("c".into()),
    };
    assert_eq!(read_rows(&results, &filter).unwrap().len(), 2);
}

#[test]
fn a_claim_its_replications_contradict_is_not_drawn_as_kept() {
    // The coordinator's rows for a lie: the claim passed the floor (`keep`), two replications on
    // other workers measured 0.05 more, and it was disputed, never promoted.
    let rows = vec![
        json!({"experiment_id": "b", "val_bpb": 1.0, "status": "completed", "decision": "keep", "role": "baseline"}),
        json!({"experiment_id": "x", "val_bpb": 0.93, "status": "completed", "decision": "keep", "worker_endpoint": "liar"}),
        json!({"experiment_id": "x-r1", "val_bpb": 0.98, "status": "completed", "decision": "discard",
               "role": "replication", "replicates": "x"}),
        json!({"experiment_id": "x-r2", "val_bpb": 0.98, "status": "completed", "decision": "discard",
               "role": "replication", "replicates": "x"}),
        json!({"experiment_id": "y", "val_bpb": 0.99, "status": "completed", "decision": "keep"}),
        json!({"experiment_id": "y-r1", "val_bpb": 0.9905, "status": "completed", "decision": "discard",
               "role": "replication", "replicates": "y"}),
    ];
    let h = ResultHistory::new(None, rows.into_iter().map(row).collect(), NF);
    let x = h
        .entries
        .iter()
        .find(|e| e.row.experiment_id == "x")
        .unwrap();
    assert_eq!(x.decision, Decision::Discard);
    let best = h.best().unwrap();
    assert_eq!(best.row.experiment_id, "y");
    assert!(h.verified(best));
    assert_eq!(h.improvements().count(), 1);
}
