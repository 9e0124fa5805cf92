//! `loop --campaign FILE` refuses what it cannot run as written, before anything is paid: an
//! unknown field (as the API server's strict field validation does), a train.py that disagrees
//! with the manifest's, and a trainScript parameter that is not a top-level assignment. No
//! worker or signer is needed: every case stops before discovery.

use std::path::Path;
use std::process::{Command, Output};

const MANIFEST: &str = "\
apiVersion: autoresearch.obol.org/v1alpha1
kind: ExperimentCampaign
metadata:
  name: tiny
spec:
  trainScript:
    inline: |
      MATRIX_LR = 0.04  # learning rate
      DEPTH = 8  # layers
      print('val_bpb: 1.0')
  search:
    strategy: grid
    applyTo: trainScript
    parameters:
      - {name: MATRIX_LR, type: float, min: 0.01, max: 0.1, logScale: true}
      - {name: DEPTH, type: int, min: 4, max: 12}
  maxExperiments: 4
  budget: {total: \"1\", maxPricePerExperiment: \"0.1\"}
";

fn run_loop(dir: &Path, manifest: &str, extra: &[&str]) -> Output {
    let file = dir.join("campaign.yaml");
    std::fs::write(&file, manifest).unwrap();
    Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .arg("loop")
        .args(extra)
        .arg("--campaign")
        .arg(&file)
        .args([
            "--no-discovery",
            "--signer-url",
            "http://signer.invalid:9000",
        ])
        .env("DATA_DIR", dir)
        .output()
        .unwrap()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "loop should have refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_field_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let typo = MANIFEST.replace("    applyTo:", "    applyto:");
    let err = refused(&run_loop(dir.path(), &typo, &[]));
    assert!(
        err.contains("unknown field \"spec.search.applyto\""),
        "{err}"
    );
}

#[test]
fn a_parameter_that_is_not_a_constant_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = MANIFEST.replace("name: DEPTH", "name: N_LAYERS");
    let err = refused(&run_loop(dir.path(), &wrong, &[]));
    assert!(
        err.contains("spec.search.parameters[1].name")
            && err.contains("N_LAYERS is not a top-level assignment"),
        "{err}"
    );
}

#[test]
fn a_train_py_that_differs_from_the_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("train.py");
    std::fs::write(&other, "print('val_bpb: 2.0')\n").unwrap();
    let err = refused(&run_loop(dir.path(), MANIFEST, &[other.to_str().unwrap()]));
    assert!(err.contains("differs from trainScript.inline"), "{err}");
}
