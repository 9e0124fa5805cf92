//! The controller as a real process against the test API server, and campaigns for it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use autoresearch_coordinator::crd::{ExperimentCampaign, Phase};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::testbed::Testbed;

/// One test's world: a namespace with the signer's Secret, a testbed, a data folder.
pub struct Setup {
    pub ns: String,
    pub client: Client,
    pub api: Api<ExperimentCampaign>,
    pub tb: Testbed,
    pub data: tempfile::TempDir,
}

/// A fresh namespace (with the signer Secret) and testbed `testbed` (its config).
pub async fn setup(prefix: &str, testbed: Value) -> Setup {
    let client = super::client().await;
    super::install_crd(&client).await;
    let ns = super::namespace(&client, prefix).await;
    let tb = Testbed::start(testbed);
    signer_secret(&client, &ns, &tb).await;
    let api = Api::namespaced(client.clone(), &ns);
    Setup {
        ns,
        client,
        api,
        tb,
        data: tempfile::tempdir().unwrap(),
    }
}

/// Three workers, one per gate kind, at 0.01 USDC, each run taking `duration_ms`.
pub fn three_workers(duration_ms: u64) -> Value {
    json!({"workers": [
        {"name": "w-v2", "gate": "v2", "price": "10000", "durationMs": duration_ms},
        {"name": "w-v1", "gate": "v1", "price": "10000", "durationMs": duration_ms},
        {"name": "w-obol", "gate": "obol", "price": "10000", "durationMs": duration_ms}
    ]})
}

/// Sum of USDC received by every worker's payee.
pub async fn paid_to_workers(tb: &Testbed) -> alloy::primitives::U256 {
    let mut total = alloy::primitives::U256::ZERO;
    for w in tb.m["workers"].as_array().unwrap() {
        total += tb
            .balance(w["payTo"].as_str().unwrap().parse().unwrap())
            .await;
    }
    total
}

/// The experiment ids in a campaign's ledger (paid, in flight).
pub fn in_flight(campaign: &ExperimentCampaign) -> std::collections::HashSet<String> {
    campaign
        .status
        .iter()
        .flat_map(|s| s.ledger.iter().map(|e| e.experiment_id.clone()))
        .collect()
}

/// How many distinct experiment ids the result lines hold.
pub fn unique_ids(lines: &[Value]) -> usize {
    lines
        .iter()
        .map(|l| l["experiment_id"].as_str().unwrap().to_string())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// One Event the API server holds about a campaign.
#[derive(Clone, Debug)]
pub struct SeenEvent {
    pub reason: String,
    /// The controller replica that published it.
    pub instance: String,
    pub note: String,
}

/// The Events the API server holds about campaign `name` (not what any log says).
pub async fn campaign_events(client: &Client, namespace: &str, name: &str) -> Vec<SeenEvent> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
        })
        .map(|e| SeenEvent {
            reason: e.reason.unwrap_or_default(),
            instance: e.reporting_instance.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
        })
        .collect()
}

/// A running `autoresearch-coordinator controller`; killed when dropped.
pub struct Controller {
    child: Child,
    /// Address of /metrics, /healthz, /readyz.
    pub metrics: String,
    /// Its log file.
    pub log: PathBuf,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Controller {
    /// Starts a controller watching `namespace` only (tests run in parallel), holding its Lease
    /// there, writing results under `data_dir`.
    pub fn start(namespace: &str, data_dir: &Path, identity: &str) -> Self {
        Self::start_with(namespace, data_dir, identity, &[])
    }

    /// As [`Controller::start`], with extra environment.
    pub fn start_with(
        namespace: &str,
        data_dir: &Path,
        identity: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let log = data_dir.join(format!("{identity}.log"));
        std::fs::create_dir_all(data_dir).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
            .arg("controller")
            .env("LEASE_SECONDS", "4")
            .env("KUBECONFIG", super::kubeconfig())
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("DATA_DIR", data_dir)
            .env("POD_NAMESPACE", namespace)
            .env("WATCH_NAMESPACE", namespace)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,kube=warn")
            // Resumed and uncertain experiments poll the testbed's fast workers quickly.
            .env("JOB_POLL_MS", "200")
            .env_remove("REMOTE_SIGNER_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the controller");
        Controller {
            child,
            metrics: format!("127.0.0.1:{port}"),
            log,
        }
    }

    /// SIGKILL: no chance to clean up, as in a node failure.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "controller did not stop within 10 s of SIGTERM; log:\n{}",
            self.log_text()
        );
    }

    /// Waits up to `secs` for the process to exit by itself (a failpoint aborting it); panics
    /// with the log otherwise.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "controller still running after {secs} s; log:\n{}",
            self.log_text()
        );
    }

    /// Waits until /readyz says this controller leads; panics with its log after `secs`.
    pub async fn wait_leader(&self, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !self
            .http_get("/readyz")
            .await
            .is_some_and(|(_, b)| b.contains("leader"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never led:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the metrics server.
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.metrics))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let code = response.status().as_u16();
        Some((code, response.text().await.ok()?))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stores the testbed signer's token in a Secret, as obol-stack does.
pub async fn signer_secret(client: &Client, namespace: &str, tb: &Testbed) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "remote-signer-keystore"},
        "stringData": {"authToken": tb.m["signer"]["token"]}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A campaign over the testbed's workers (named statically) and its signer.
pub fn campaign(name: &str, tb: &Testbed, spec: Value) -> ExperimentCampaign {
    let workers: Vec<Value> = tb.m["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| json!({"endpoint": w["endpoint"], "name": w["name"]}))
        .collect();
    let mut manifest = json!({
        "apiVersion": "autoresearch.obol.org/v1alpha1",
        "kind": "ExperimentCampaign",
        "metadata": {"name": name},
        "spec": {
            "trainScript": {"inline": super::TRAIN_LANDSCAPE},
            "baseConfig": {"depth": 8},
            "search": {
                "strategy": "random",
                "seed": 11,
                "parameters": [{"name": "lr", "type": "float", "min": 0.0001, "max": 0.1, "logScale": true}]
            },
            "maxExperiments": 12,
            "parallelism": 3,
            "experimentTimeoutSeconds": 60,
            "budget": {"total": "1", "maxPricePerExperiment": "0.02"},
            "payment": {
                "network": "base-sepolia",
                "remoteSignerUrl": tb.m["signer"]["url"],
                "tokenSecretRef": {"name": "remote-signer-keystore", "key": "authToken"}
            },
            "discovery": {"scanApiUrl": "", "onChain": {"mode": "never"}, "workers": workers}
        }
    });
    merge(&mut manifest["spec"], spec);
    serde_json::from_value(manifest).unwrap()
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Waits until `check` holds for the campaign, or panics after `secs` with its status and the log.
pub async fn wait_for(
    api: &Api<ExperimentCampaign>,
    name: &str,
    secs: u64,
    what: &str,
    controllers: &[&Controller],
    check: impl Fn(&ExperimentCampaign) -> bool,
) -> ExperimentCampaign {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let c = api.get(name).await.unwrap();
        if check(&c) {
            return c;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = controllers.iter().map(|c| c.log_text()).collect();
            panic!(
                "campaign {name}: {what} not reached in {secs} s\nstatus: {}\nlogs:\n{}",
                serde_json::to_string_pretty(&c.status).unwrap(),
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a final phase and returns the campaign's status.
pub async fn wait_done(
    api: &Api<ExperimentCampaign>,
    name: &str,
    secs: u64,
    controllers: &[&Controller],
) -> autoresearch_coordinator::crd::ExperimentCampaignStatus {
    let done = wait_for(api, name, secs, "a final phase", controllers, is_final).await;
    done.status.expect("a final phase is a status")
}

/// Whether the campaign is in a final phase.
pub fn is_final(c: &ExperimentCampaign) -> bool {
    matches!(
        c.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Succeeded | Phase::Failed | Phase::BudgetExhausted)
    )
}

/// Lines of results.jsonl under `data_dir`.
pub fn results(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("autoresearch/results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
