//! Shared test harness: a real kube-apiserver (see scripts/cluster.sh).
//!
//! `scripts/test.sh` starts one cluster for the whole run and exports its kubeconfig as
//! `AUTORESEARCH_TEST_KUBECONFIG`. A test binary run on its own (`cargo test --test crd_api`)
//! starts its own cluster instead, which stops when the test process exits.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod controller;
pub mod onchain;
pub mod proxy;
pub mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

/// The train.py tests send when they search `config`: the workers run it, and it prints the
/// `val_bpb` of `strategy::landscape` for the config the worker hands it (see the script).
pub const TRAIN_LANDSCAPE: &str = include_str!("../../examples/train_landscape.py");

/// Asserts that every results.jsonl line records what [`TRAIN_LANDSCAPE`] prints for the line's
/// config: the worker ran the script and handed it that config.
pub fn assert_measured_by_landscape(lines: &[serde_json::Value]) {
    for l in lines {
        assert_eq!(
            l["val_bpb"].as_f64(),
            Some(autoresearch_coordinator::strategy::landscape::val_bpb(
                &l["config"]
            )),
            "not what train.py prints for this config: {l}"
        );
    }
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the test cluster's admin kubeconfig, starting a cluster if the run has none.
pub fn kubeconfig() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("AUTORESEARCH_TEST_KUBECONFIG") {
            return PathBuf::from(path);
        }
        let dir = std::env::temp_dir().join(format!("autoresearch-cluster-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(repo().join("scripts/cluster.sh"))
            .args(["start"])
            .arg(&dir)
            .args(["--owner-pid", &std::process::id().to_string()])
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "could not start the test API server:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("kubeconfig")
    })
}

/// An admin client for the test cluster.
pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    Client::try_from(config).expect("client")
}

/// Installs (or updates) the CRD from `crds/` and waits until it is Established.
pub async fn install_crd(client: &Client) -> CustomResourceDefinition {
    let text = std::fs::read_to_string(repo().join("crds/experimentcampaigns.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    let name = crd.metadata.name.clone().unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply("autoresearch-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD applies");
    let established = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30 s")
    .expect("watch CRD");
    // Established does not mean discoverable yet: wait until kubectl can find the resource.
    kubectl_eventually(&["get", "experimentcampaigns", "--all-namespaces"]);
    established.expect("CRD exists")
}

/// A fresh namespace for one test, so tests can run in parallel on one cluster.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", &uuid_like());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs kubectl against the test cluster; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("kubectl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl until it succeeds (for what the API server publishes asynchronously, such as a
/// new CRD's discovery and OpenAPI documents); panics with the last error after 30 s.
pub fn kubectl_eventually(args: &[&str]) -> (String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ok, out, err) = kubectl(args);
        if ok {
            return (out, err);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl {args:?} kept failing: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `autoresearch-coordinator loop`, paying through the testbed's remote signer, with
/// `$DATA_DIR` at `data`; add the loop's own arguments.
pub fn loop_command(tb: &testbed::Testbed, data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"));
    command
        .arg("loop")
        .args(["--signer-url", tb.m["signer"]["url"].as_str().unwrap()])
        .env(
            "REMOTE_SIGNER_TOKEN",
            tb.m["signer"]["token"].as_str().unwrap(),
        )
        .env("DATA_DIR", data);
    command
}
