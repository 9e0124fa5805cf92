//! The Grafana dashboard: its JSON, the chart's ConfigMap that ships it, and every panel's
//! query run against a real Prometheus (Debian's `prometheus`, scripts/install-prometheus.sh)
//! scraping a real controller that runs campaigns on the payments testbed.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use autoresearch_coordinator::crd::ExperimentCampaign;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use support::controller::{Controller, campaign, free_port, signer_secret, wait_done, wait_for};
use support::testbed::Testbed;

fn dashboard() -> Value {
    let path = support::repo().join("charts/autoresearch-coordinator/dashboards/autoresearch.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every (panel title, PromQL) of the dashboard.
fn queries(d: &Value) -> Vec<(String, String)> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| {
                (
                    p["title"].as_str().unwrap().to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn the_dashboard_has_the_panels_a_researcher_needs_and_the_chart_ships_it() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for needed in [
        "Best val_bpb per campaign",
        "Experiments per minute by result",
        "USDC spent per campaign and network",
        "Experiments in flight",
        "Worker failures per minute",
        "Discovery errors per minute",
        "Reconcile errors per minute",
    ] {
        assert!(titles.contains(&needed), "{needed} missing: {titles:?}");
    }
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
    }
    assert_eq!(d["templating"]["list"][0]["type"], "datasource");

    let helm = helm_bin();
    let chart = support::repo().join("charts/autoresearch-coordinator");
    let render = |set: &str| {
        let out = Command::new(&helm)
            .args(["template", "t"])
            .arg(&chart)
            .args(["--set", set])
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| Value::deserialize(doc).ok())
            .filter(|o| {
                o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1"
            })
            .collect::<Vec<_>>()
    };
    let shipped = render("metrics.dashboard.enabled=true");
    assert_eq!(shipped.len(), 1);
    let inner: Value =
        serde_json::from_str(shipped[0]["data"]["autoresearch.json"].as_str().unwrap()).unwrap();
    assert_eq!(inner, d, "the ConfigMap holds the dashboard file as it is");
    assert!(render("metrics.dashboard.enabled=false").is_empty());
}

/// `testbed/grafana`'s dashcheck: the Grafana Foundation SDK's strict dashboard decoder, built
/// once per checkout with Go (the module and its go.sum pin the SDK).
fn dashcheck() -> PathBuf {
    let out_dir = support::repo().join(".cache/grafana-dashcheck");
    let bin = out_dir.join("dashcheck");
    let build = Command::new("go")
        .args(["build", "-trimpath", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(support::repo().join("testbed/grafana"))
        .output()
        .expect("go is installed");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    bin
}

#[test]
fn the_dashboard_loads_with_grafanas_strict_schema_decoder() {
    let bin = dashcheck();
    let file = support::repo().join("charts/autoresearch-coordinator/dashboards/autoresearch.json");
    let out = Command::new(&bin).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "not a valid Grafana dashboard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The decoder does refuse what Grafana would: a wrong type and an unknown field.
    let mut broken = dashboard();
    broken["panels"][0]["gridPos"]["w"] = json!("wide");
    broken["panels"][1]["colour"] = json!("red");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let out = Command::new(&bin).arg(&bad).output().unwrap();
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        why.contains("panels[0].gridPos.w") && why.contains("colour"),
        "{why}"
    );
}

fn helm_bin() -> PathBuf {
    let out = Command::new("bash")
        .arg(support::repo().join("scripts/install-helm.sh"))
        .output()
        .expect("run scripts/install-helm.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A Prometheus server on loopback scraping one target every second; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: autoresearch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
            .expect("promtool is installed (scripts/install-prometheus.sh)");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus is installed (scripts/install-prometheus.sh)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// An instant query; the `data.result` array, or the error Prometheus gave.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url =
            url::Url::parse_with_params(&format!("{}/api/v1/query", self.url), [("query", expr)])
                .unwrap();
        let answer: Value = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Grafana's `$__rate_interval`, as Grafana would fill it in for 1 s scrapes.
fn as_grafana_would(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
}

/// An HTTP server on loopback that answers 404 to everything, as a mistyped index URL does.
async fn wrong_index() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/public", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such page") });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn campaigns_with_every_kind_of_event(client: &kube::Client, ns: &str, tb: &Testbed) {
    let api: Api<ExperimentCampaign> = Api::namespaced(client.clone(), ns);
    // A run with a worker that fails once before payment.
    let spec = json!({"maxExperiments": 6, "parallelism": 2});
    api.create(&PostParams::default(), &campaign("dash", tb, spec))
        .await
        .unwrap();
    // A campaign with no static workers and a wrong index URL (it answers 404, which discovery
    // does not retry): its discovery fails. (With static workers a failure is only a warning.)
    let spec = json!({"discovery": {"scanApiUrl": wrong_index().await, "workers": []}});
    api.create(&PostParams::default(), &campaign("lost", tb, spec))
        .await
        .unwrap();
    // A campaign whose train.py ConfigMap does not exist: every reconcile of it fails.
    let mut broken = campaign("broken", tb, json!({"maxExperiments": 1}));
    broken.spec.train_script.inline = None;
    broken.spec.train_script.config_map_key_ref =
        Some(autoresearch_coordinator::crd::ConfigMapKeyRef {
            name: "missing".into(),
            key: "train.py".into(),
        });
    api.create(&PostParams::default(), &broken).await.unwrap();
}

#[tokio::test]
async fn every_panel_query_returns_data_from_a_real_prometheus() {
    let client = support::client().await;
    support::install_crd(&client).await;
    let ns = support::namespace(&client, "dash").await;
    let tb = Testbed::start(json!({"workers": [
        {"name": "w-v2", "gate": "v2", "price": "10000", "durationMs": 300},
        {"name": "w-obol", "gate": "obol", "price": "10000", "durationMs": 300,
         "faults": {"failBeforePayment": 1}}
    ]}));
    signer_secret(&client, &ns, &tb).await;
    let data = tempfile::tempdir().unwrap();
    let controller = Controller::start(&ns, data.path(), "ctl-dash");
    let prometheus = Prometheus::start(&controller.metrics);
    campaigns_with_every_kind_of_event(&client, &ns, &tb).await;
    let api: Api<ExperimentCampaign> = Api::namespaced(client.clone(), &ns);
    let status = wait_done(&api, "dash", 120, &[&controller]).await;
    assert_eq!(status.succeeded + status.failed, 6, "{status:?}");
    assert!(
        status.worker_failures >= 1,
        "the fault happened: {status:?}"
    );
    wait_for(&api, "dash", 5, "status written", &[&controller], |_| true).await;

    let d = dashboard();
    let mut missing = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (title, expr) in queries(&d) {
        let expr = as_grafana_would(&expr);
        loop {
            match prometheus.query(&expr).await {
                Ok(result) if !result.is_empty() => break,
                Err(e) if e.contains("bad_data") => panic!("{title}: {expr} is not PromQL: {e}"),
                other if tokio::time::Instant::now() > deadline => {
                    missing.push(format!("{title}: {expr} -> {other:?}"));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    if !missing.is_empty() {
        let metrics = controller.http_get("/metrics").await.map(|(_, m)| m);
        panic!(
            "queries without data:\n{}\nconditions: {:?}\n/metrics:\n{}\nlog:\n{}",
            missing.join("\n"),
            api.get("dash").await.unwrap().status.unwrap().conditions,
            metrics.unwrap_or_default(),
            controller.log_text()
        );
    }

    // The spend panel shows what status says, per campaign: within a few scrapes (1 s apart)
    // of the last status write.
    let expected: f64 = status.spent.as_deref().unwrap().parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let spent = loop {
        let spent = prometheus
            .query(&format!(
                "autoresearch_campaign_spent_usdc{{namespace=\"{ns}\",campaign=\"dash\"}}"
            ))
            .await
            .unwrap();
        let value: f64 = spent[0]["value"][1].as_str().unwrap().parse().unwrap();
        if (value - expected).abs() < 1e-9 {
            break spent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{value} vs status {expected}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(spent[0]["metric"]["network"], "base-sepolia");
}
