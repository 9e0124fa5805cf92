//! `applyTo: trainScript` checked by CPython itself: the rewritten train.py runs, its constants
//! hold exactly the values the strategy chose, and each experiment of a grid runs a different
//! source whose val_bpb depends on the constants (a worker that runs the code sees the change).

use std::collections::HashSet;
use std::process::Command;

use autoresearch_coordinator::crd::{ObjectiveSpec, SearchSpec};
use autoresearch_coordinator::experiment::train_hash;
use autoresearch_coordinator::strategy::train_script::Template;
use autoresearch_coordinator::strategy::{History, State, propose};
use serde_json::{Value, json};

/// Runs a source with python3 and returns its stdout.
fn python(source: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", source])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 failed:\n{}\n{source}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cpython_reads_back_every_value_written() {
    let source = "\
import json
A = 1  # a comment that stays
B: float = 2.0
print(json.dumps([A, B]))
";
    let template = Template::new(source).unwrap();
    let values = [
        json!(3.0),
        json!(1e-7),
        json!(1e22),
        json!(-0.5),
        json!(0.1),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(true),
        json!(null),
        json!("quote \" backslash \\ newline \n tab \t nul \u{0} e-acute \u{e9} emoji \u{1f600}"),
        json!([1, "two", [3.5, false]]),
    ];
    for value in values {
        let out = template
            .render([("A", &value), ("B", &json!(2.5))])
            .unwrap();
        assert!(out.contains("  # a comment that stays\n"), "{out}");
        let printed: Value = serde_json::from_str(&python(&out)).unwrap();
        assert_eq!(printed, json!([value, 2.5]), "{out}");
    }
}

/// Gradient descent on a noisy line, printing `val_bpb: N` last.
const TINY: &str = "\
import random

LEARNING_RATE = 0.05  # step size
STEPS = 20  # optimisation steps

random.seed(42)
xs = [random.uniform(-1, 1) for _ in range(100)]
ys = [3.0 * x + 0.5 + random.gauss(0, 0.1) for x in xs]
w = b = 0.0
for _ in range(STEPS):
    gw = sum((w * x + b - y) * x for x, y in zip(xs, ys)) / len(xs)
    gb = sum((w * x + b - y) for x, y in zip(xs, ys)) / len(xs)
    w -= LEARNING_RATE * gw
    b -= LEARNING_RATE * gb
mse = sum((w * x + b - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
print(f\"val_bpb: {1.0 + mse:.6f}\")
";

#[test]
fn a_grid_over_two_constants_runs_a_different_train_py_per_experiment() {
    let search: SearchSpec = serde_json::from_value(json!({
        "strategy": "grid",
        "applyTo": "trainScript",
        "parameters": [
            {"name": "LEARNING_RATE", "type": "float", "min": 0.01, "max": 0.5, "logScale": true},
            {"name": "STEPS", "type": "int", "min": 5, "max": 40, "gridPoints": 3}
        ]
    }))
    .unwrap();
    let base = json!({"note": "sent as config, unchanged"});
    let batch = propose(
        &search,
        &ObjectiveSpec::default(),
        Some(&base),
        TINY,
        &History::new(),
        &mut State::new(),
        100,
    )
    .unwrap();
    assert!(batch.exhausted);
    assert_eq!(batch.proposals.len(), 9);
    let mut hashes = HashSet::new();
    let mut results = HashSet::new();
    for p in &batch.proposals {
        assert_eq!(p.config, base);
        assert!(
            hashes.insert(train_hash(&p.train_py)),
            "a new source each time"
        );
        let out = python(&p.train_py);
        let val_bpb = out.trim().strip_prefix("val_bpb: ").unwrap().to_string();
        results.insert(val_bpb);
        let printed = python(&format!(
            "{}\nimport json; print(json.dumps({{'LEARNING_RATE': LEARNING_RATE, 'STEPS': STEPS}}))",
            p.train_py.replace("print(f\"val_bpb", "_ = (f\"val_bpb")
        ));
        let constants: Value = serde_json::from_str(printed.trim()).unwrap();
        assert_eq!(constants, p.params, "{}", p.description);
    }
    assert_eq!(
        results.len(),
        9,
        "val_bpb depends on the constants: {results:?}"
    );
}
