//! `loop`'s progress: a bar on a terminal (a real pseudo-terminal from util-linux `script`),
//! plain lines when stderr is a pipe, against the payments testbed.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use support::testbed::Testbed;

/// The loop's command line for 4 rounds on the testbed's two workers.
fn loop_args(tb: &Testbed, train: &Path) -> Vec<String> {
    let mut args = vec![
        env!("CARGO_BIN_EXE_autoresearch-coordinator").to_string(),
        "loop".into(),
        train.display().to_string(),
    ];
    for a in ["--rounds", "4", "--parallelism", "2", "--no-discovery"] {
        args.push(a.into());
    }
    for w in ["a", "b"] {
        args.push("--prefer".into());
        args.push(tb.worker(w)["endpoint"].as_str().unwrap().into());
    }
    args.push("--signer-url".into());
    args.push(tb.m["signer"]["url"].as_str().unwrap().into());
    args
}

fn run(mut command: Command, tb: &Testbed, data: &Path) -> Output {
    command
        .env(
            "REMOTE_SIGNER_TOKEN",
            tb.m["signer"]["token"].as_str().unwrap(),
        )
        .env("DATA_DIR", data)
        .output()
        .unwrap()
}

#[test]
fn a_terminal_gets_a_bar_and_a_pipe_gets_lines() {
    let tb = Testbed::start(json!({"workers": [
        {"name": "a", "gate": "v2", "price": "10000", "durationMs": 300},
        {"name": "b", "gate": "v2", "price": "10000", "durationMs": 300}
    ]}));
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.py");
    std::fs::write(&train, "print('val_bpb: 1.0')\n").unwrap();
    let args = loop_args(&tb, &train);

    // A pipe: one line per change, ending with the final state; log lines beside them are
    // plain text too.
    let mut plain = Command::new(&args[0]);
    plain
        .args(&args[1..])
        .env("RUST_LOG", "autoresearch_coordinator=debug");
    let out = run(plain, &tb, &dir.path().join("plain"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("\n[0/4] "), "{stderr}");
    let last = stderr.lines().rfind(|l| l.starts_with('[')).unwrap();
    assert!(
        last.starts_with("[4/4] Succeeded: running 0, best "),
        "{last}"
    );
    assert!(last.ends_with("spent 0.04/0.4 USDC"), "{last}");
    assert!(stderr.contains(" DEBUG "), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal control codes in a pipe: {stderr:?}"
    );

    // A terminal: `script` runs the loop on a pseudo-terminal and records what it drew.
    let typescript = dir.path().join("typescript");
    let mut tty = Command::new("script");
    tty.args([
        "-qfec",
        &args
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" "),
    ])
    .arg(&typescript);
    let out = run(tty, &tb, &dir.path().join("tty"));
    let drawn = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(out.status.success(), "{drawn}");
    assert!(
        drawn.contains("\u{1b}["),
        "the bar redraws with control codes"
    );
    assert!(
        drawn.contains("] 4/4 Succeeded"),
        "the bar ends full: {drawn}"
    );
    assert!(
        !drawn.contains("\n[4/4]"),
        "no plain lines on a terminal: {drawn}"
    );
    assert!(
        drawn.contains("phase: Succeeded"),
        "the summary follows: {drawn}"
    );
}
