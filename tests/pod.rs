//! The chart on real nodes: the image from `scripts/image.sh`, imported into the containerd of
//! two kubelets (`scripts/cluster.sh start DIR --nodes 2`), installed with helm, and the
//! controller as a pod paying for a campaign against the testbed on the host.
//!
//! The node needs root (cgroups, mounts, a netdev): the tests fail, never skip, without it.
//! `scripts/test.sh` builds the images first (`scripts/image.sh`, two tags) and passes them in
//! `AUTORESEARCH_TEST_IMAGES` ("REFERENCE ARCHIVE" pairs): `bash scripts/test.sh --test pod`.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use autoresearch_coordinator::crd::{ExperimentCampaign, Phase};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use support::controller::{campaign, free_port, is_final, signer_secret, wait_for};
use support::testbed::Testbed;

const CHART: &str = "charts/autoresearch-coordinator";
/// Image tags the tests import: the first for installs, the second for `helm upgrade`.
const TAGS: [&str; 2] = ["pod-test-a", "pod-test-b"];
/// A pod must be Running and Ready this soon after `helm install`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The node cluster, started once for this test binary and stopped when it exits.
struct Nodes {
    dir: PathBuf,
    kubeconfig: PathBuf,
    /// The API server's loopback port: hostNetwork pods reach it there.
    api_port: String,
}

fn nodes() -> &'static Nodes {
    static NODES: OnceLock<Nodes> = OnceLock::new();
    NODES.get_or_init(start_nodes)
}

fn start_nodes() -> Nodes {
    let uid = run(Command::new("id").arg("-u"), "id -u");
    assert_eq!(
        uid.trim(),
        "0",
        "the test node needs root (cgroups, mounts, a netdev)"
    );
    let images = images();
    let dir = std::env::temp_dir().join(format!("autoresearch-node-{}", std::process::id()));
    let archives: Vec<&str> = images.iter().map(|(_, a)| a.to_str().unwrap()).collect();
    let started = Instant::now();
    run(
        Command::new("bash")
            .arg(support::repo().join("scripts/cluster.sh"))
            .arg("start")
            .arg(&dir)
            .args([
                "--owner-pid",
                &std::process::id().to_string(),
                "--remove-on-exit",
                "--nodes",
                "2",
            ])
            .env("NODE_IMAGES", archives.join(" "))
            .env("PATH", path_with_kubectl()),
        "scripts/cluster.sh start --nodes 2",
    );
    eprintln!(
        "pod tests: API server and 2 nodes Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let kubeconfig = dir.join("kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let api_port = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .expect("server in kubeconfig")
        .to_string();
    let nodes = Nodes {
        dir,
        kubeconfig,
        api_port,
    };
    let crd = support::repo().join("crds/experimentcampaigns.yaml");
    nodes.kubectl_ok(&["apply", "-f", crd.to_str().unwrap()]);
    nodes.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/experimentcampaigns.autoresearch.obol.org",
        "--timeout=30s",
    ]);
    nodes
}

/// The test images, built by scripts/test.sh. (Not built here: a cargo inside `cargo test`
/// would wait forever for the build folder lock the outer one holds.)
fn images() -> Vec<(String, PathBuf)> {
    let list = std::env::var("AUTORESEARCH_TEST_IMAGES").unwrap_or_else(|_| {
        panic!(
            "AUTORESEARCH_TEST_IMAGES is not set: run `bash scripts/test.sh --test pod`, or set it \
             to the \"REFERENCE ARCHIVE\" pairs `bash scripts/image.sh --tag {}` and `--tag {}` print",
            TAGS[0], TAGS[1]
        )
    });
    let words: Vec<&str> = list.split_whitespace().collect();
    assert_eq!(words.len(), 4, "AUTORESEARCH_TEST_IMAGES: {list}");
    words
        .chunks(2)
        .map(|p| (p[0].to_string(), PathBuf::from(p[1])))
        .collect()
}

/// PATH with the kubectl v1.35 that scripts/install-helm.sh puts beside helm.
fn path_with_kubectl() -> String {
    format!(
        "{}:{}",
        helm_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = run(
            Command::new("bash").arg(support::repo().join("scripts/install-helm.sh")),
            "scripts/install-helm.sh",
        );
        PathBuf::from(out.trim())
    })
}

#[track_caller]
fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Nodes {
    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(helm_bin().with_file_name("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl")
    }

    #[track_caller]
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}:\n{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&args)).unwrap()
    }

    #[track_caller]
    fn helm(&self, args: &[&str]) -> String {
        let home = support::repo().join(".cache/helm");
        run(
            Command::new(helm_bin())
                .args(args)
                .current_dir(support::repo())
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data")),
            &format!("helm {}", args[0]),
        )
    }

    async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        Client::try_from(config).unwrap()
    }
}

/// One release of the chart in its own namespace, with a testbed for its campaigns.
struct Release {
    nodes: &'static Nodes,
    ns: String,
    name: String,
    tb: Testbed,
    api: Api<ExperimentCampaign>,
    /// The test values and the test's own, in the order helm merges them.
    values: [tempfile::NamedTempFile; 2],
}

impl Release {
    /// `helm install` with the test values plus `extra` (helm merges it over them), after the
    /// signer's token Secret exists.
    async fn install(prefix: &str, workers: Value, extra: Value) -> Release {
        let nodes = nodes();
        let client = nodes.client().await;
        let ns = support::namespace(&client, prefix).await;
        let tb = Testbed::start(workers);
        signer_secret(&client, &ns, &tb).await;
        let values = [test_values(nodes, &ns, &tb), yaml_file(&extra)];
        let name = format!("{prefix}-arc");
        let mut args = vec!["install", &name, CHART, "--namespace", &ns];
        args.extend(values_args(&values));
        nodes.helm(&args);
        Release {
            nodes,
            api: Api::namespaced(client, &ns),
            ns,
            name,
            tb,
            values,
        }
    }

    fn fullname(&self) -> String {
        format!("{}-autoresearch-coordinator", self.name)
    }

    /// The release's pods that are not being deleted.
    fn pods(&self) -> Vec<Value> {
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let list = self
            .nodes
            .kubectl_json(&["get", "pods", "-n", &self.ns, "-l", &selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    }

    /// Waits until `count` pods are Running and Ready; returns them.
    async fn ready_pods(&self, count: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let pods = self.pods();
            let ready: Vec<Value> = pods.iter().filter(|p| is_ready(p)).cloned().collect();
            if ready.len() == count && pods.len() == count {
                return ready;
            }
            assert!(
                Instant::now() < deadline,
                "{count} Ready pods not reached in {within:?}:\n{}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `kubectl describe pods` and the controller logs, for failure messages.
    fn describe(&self) -> String {
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let describe = self
            .nodes
            .kubectl(&["describe", "pods", "-n", &self.ns, "-l", &selector]);
        let logs = self.nodes.kubectl(&[
            "logs", "-n", &self.ns, "-l", &selector, "--tail", "40", "--prefix",
        ]);
        format!("{}\n{}", text(&describe), text(&logs))
    }

    /// The Lease's holder, if any.
    fn leader(&self) -> Option<String> {
        let out = self.nodes.kubectl(&[
            "get",
            "lease",
            &self.fullname(),
            "-n",
            &self.ns,
            "-o",
            "json",
        ]);
        if !out.status.success() {
            return None;
        }
        let lease: Value = serde_json::from_slice(&out.stdout).unwrap();
        // A Lease released on shutdown has an empty holder.
        lease["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    async fn wait_leader(&self, check: impl Fn(&str) -> bool, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.leader().filter(|l| check(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "leader not as expected in {secs} s (now {:?}):\n{}",
                self.leader(),
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Host folder of the PersistentVolume bound to the release's claim.
    fn volume_dir(&self) -> PathBuf {
        let claim = format!("{}-data", self.fullname());
        let pvc = self
            .nodes
            .kubectl_json(&["get", "pvc", &claim, "-n", &self.ns]);
        let pv_name = pvc["spec"]["volumeName"].as_str().expect("claim is bound");
        let pv = self.nodes.kubectl_json(&["get", "pv", pv_name]);
        PathBuf::from(pv["spec"]["local"]["path"].as_str().unwrap())
    }

    fn results(&self) -> Vec<Value> {
        support::controller::results(&self.volume_dir())
    }

    async fn create_campaign(&self, name: &str, spec: Value) {
        self.api
            .create(&PostParams::default(), &campaign(name, &self.tb, spec))
            .await
            .unwrap();
    }

    async fn wait_done(&self, name: &str, secs: u64) -> ExperimentCampaign {
        let done = wait_for(&self.api, name, secs, "a final phase", &[], is_final).await;
        if done.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded) {
            panic!(
                "campaign {name} ended {:?}:\n{}",
                done.status,
                self.describe()
            );
        }
        done
    }

    /// Sum of USDC the testbed's workers received.
    async fn paid_to_workers(&self) -> U256 {
        let mut total = U256::ZERO;
        for w in self.tb.m["workers"].as_array().unwrap() {
            total += self
                .tb
                .balance(w["payTo"].as_str().unwrap().parse().unwrap())
                .await;
        }
        total
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        // Stop the pods before the testbed they pay goes away.
        let _ = self
            .nodes
            .kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
    }
}

/// The values every test installs with: the pod on the node's network (the API server and the
/// testbed listen on loopback), the imported image (never pulled), no 8004scan, a short Lease,
/// and a metrics port of its own (hostNetwork pods of different releases share the nodes).
fn test_values(nodes: &Nodes, ns: &str, tb: &Testbed) -> tempfile::NamedTempFile {
    yaml_file(&json!({
        "hostNetwork": true,
        "image": {"tag": TAGS[0], "pullPolicy": "Never"},
        "watchNamespace": ns,
        "scanApiUrl": "",
        "remoteSigner": {"url": tb.m["signer"]["url"]},
        // The chain that judges payments (eRPC in obol-stack): the testbed's anvil.
        "erpc": {"url": tb.m["rpcUrl"]},
        "metrics": {"port": free_port()},
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": nodes.api_port},
            {"name": "LEASE_SECONDS", "value": "4"}
        ]
    }))
}

fn yaml_file(values: &Value) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(serde_yaml::to_string(values).unwrap().as_bytes())
        .unwrap();
    file
}

/// `-f FILE` for each values file.
fn values_args(files: &[tempfile::NamedTempFile]) -> Vec<&str> {
    files
        .iter()
        .flat_map(|f| ["-f", f.path().to_str().unwrap()])
        .collect()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap().to_string()
}

/// The controller container's process on the host, found through the node's containerd.
fn container_pid(nodes: &Nodes, pod: &Value) -> u32 {
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let node = pod["spec"]["nodeName"].as_str().unwrap();
    let socket = nodes.dir.join(node).join("containerd.sock");
    let tasks = run(
        Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["-n", "k8s.io", "tasks", "ls"]),
        "ctr tasks ls",
    );
    tasks
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id.as_str())).then(|| f[1].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{tasks}"))
}

/// A field of /proc/PID/status, such as "Uid".
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mount options of the mount at `point` as the process sees it.
fn mount_options(pid: u32, point: &str) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[4] == point).then(|| f[5].to_string())
    })
}

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn two_workers(duration_ms: u64) -> Value {
    json!({"workers": [
        {"name": "w1", "gate": "v2", "price": "10000", "durationMs": duration_ms},
        {"name": "w2", "gate": "obol", "price": "10000", "durationMs": duration_ms}
    ]})
}

/// A campaign spec that takes its signer token from the controller's environment (the chart's
/// Secret reference), not from a Secret of its own: it is only paid if the token reached the pod.
fn with_default_token(experiments: u32) -> Value {
    json!({
        "maxExperiments": experiments,
        "parallelism": 2,
        "payment": {"tokenSecretRef": null}
    })
}

fn distinct_experiments(lines: &[Value]) -> usize {
    let ids: HashSet<&str> = lines
        .iter()
        .filter_map(|l| l["experiment_id"].as_str())
        .collect();
    ids.len()
}

#[tokio::test]
async fn a_helm_installed_pod_runs_hardened_and_completes_a_paid_campaign() {
    let installed = Instant::now();
    let r = Release::install("podrun", two_workers(200), json!({})).await;
    let pod = r.ready_pods(1, READY_WITHIN).await.remove(0);
    eprintln!(
        "pod tests: helm install to Ready in {:.1} s",
        installed.elapsed().as_secs_f64()
    );

    assert_hardened(&r, &pod);

    // A paid campaign, with the default token only.
    let paid_before = r.paid_to_workers().await;
    let spec = with_default_token(4);
    r.create_campaign("first", spec).await;
    let done = r.wait_done("first", 120).await;
    assert_eq!(done.status.unwrap().succeeded, 4);
    assert_eq!(r.paid_to_workers().await - paid_before, U256::from(40_000));

    // results.jsonl on the PVC, written by UID 65532 through the fsGroup.
    let lines = r.results();
    assert_eq!((lines.len(), distinct_experiments(&lines)), (4, 4));
    support::assert_measured_by_landscape(&lines);
    let file = r.volume_dir().join("autoresearch/results.jsonl");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file).unwrap());
    assert_eq!(owner, 65532, "results.jsonl owned by {owner}");

    assert_metrics_and_json_logs(&r, &pod);
}

/// The controller's process, as the host sees it: UID/GID 65532 with the fsGroup, a read-only
/// root, the PVC at /data read-write, the token from Secret remote-signer-keystore (authToken).
fn assert_hardened(r: &Release, pod: &Value) {
    let pid = container_pid(r.nodes, pod);
    assert_eq!(proc_status(pid, "Uid"), "65532 65532 65532 65532");
    assert_eq!(proc_status(pid, "Gid"), "65532 65532 65532 65532");
    assert!(proc_status(pid, "Groups").split(' ').any(|g| g == "65532"));
    let root = mount_options(pid, "/").expect("a root mount");
    assert!(root.split(',').any(|o| o == "ro"), "root mounted {root}");
    let data = mount_options(pid, "/data").expect("/data is mounted");
    assert!(data.split(',').any(|o| o == "rw"), "/data mounted {data}");
    let token = format!(
        "REMOTE_SIGNER_TOKEN={}",
        r.tb.m["signer"]["token"].as_str().unwrap()
    );
    assert!(
        environ(pid).contains(&token),
        "the signer token is not in the environment"
    );
}

/// /metrics through the metrics Service (the API server's service proxy to its endpoints)
/// counts the campaign's 4 payments; `kubectl logs` shows JSON lines.
fn assert_metrics_and_json_logs(r: &Release, pod: &Value) {
    let metrics = r.nodes.kubectl_ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/{}/services/http:{}-metrics:metrics/proxy/metrics",
            r.ns,
            r.fullname()
        ),
    ]);
    assert!(
        metrics.contains("autoresearch_payments_total{network=\"base-sepolia\"} 4"),
        "{metrics}"
    );

    let logs = r.nodes.kubectl_ok(&["logs", "-n", &r.ns, &pod_name(pod)]);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn deleting_the_pod_mid_campaign_resumes_without_paying_twice_or_losing_a_result() {
    let r = Release::install("poddel", two_workers(1500), json!({})).await;
    let first = pod_name(&r.ready_pods(1, READY_WITHIN).await[0]);
    let paid_before = r.paid_to_workers().await;
    let spec = with_default_token(8);
    r.create_campaign("resume", spec).await;
    wait_for(&r.api, "resume", 60, "2 results", &[], |c| {
        c.status.as_ref().is_some_and(|s| s.succeeded >= 2)
    })
    .await;
    r.nodes
        .kubectl_ok(&["delete", "pod", &first, "-n", &r.ns, "--wait=false"]);

    // The Deployment's next pod takes the Lease and finishes the campaign from its status and
    // the results already on the PVC.
    let second = r.wait_leader(|l| l != first, 60).await;
    let done = r.wait_done("resume", 120).await;
    let status = done.status.unwrap();
    assert_eq!((status.succeeded, status.failed), (8, 0), "{status:?}");
    assert_eq!(r.paid_to_workers().await - paid_before, U256::from(80_000));
    let lines = r.results();
    assert_eq!(
        (lines.len(), distinct_experiments(&lines)),
        (8, 8),
        "{lines:?}"
    );
    assert!(r.pods().iter().any(|p| pod_name(p) == second));
}

#[tokio::test]
async fn helm_upgrade_to_a_new_tag_recreates_the_pod_and_hands_over_the_lease() {
    let r = Release::install("podup", two_workers(200), json!({})).await;
    let old = pod_name(&r.ready_pods(1, READY_WITHIN).await[0]);
    r.wait_leader(|l| l == old, 30).await;

    // Watch the pods while helm upgrades: Recreate never runs an old and a new pod at once.
    let watcher = {
        let (ns, name, old) = (r.ns.clone(), r.name.clone(), old.clone());
        let kubeconfig = r.nodes.kubeconfig.clone();
        std::thread::spawn(move || most_pods_at_once(&kubeconfig, &ns, &name, &old))
    };
    let tag = format!("image.tag={}", TAGS[1]);
    let mut args = vec![
        "upgrade",
        &r.name,
        CHART,
        "--namespace",
        &r.ns,
        "--set",
        &tag,
    ];
    args.extend(values_args(&r.values));
    r.nodes.helm(&args);
    // `helm upgrade` returns before the Deployment has replaced the pod: the one Ready pod may
    // still be the old one. The watcher returns once the old pod is gone and a new one Ready.
    let (most, old_gone) = watcher.join().unwrap();
    assert!(old_gone, "the old pod never went away");
    assert_eq!(most, 1, "old and new pods ran at once");
    let new = r.ready_pods(1, READY_WITHIN).await.remove(0);
    assert_ne!(pod_name(&new), old);
    assert!(
        new["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with(TAGS[1])
    );
    let new = pod_name(&new);
    r.wait_leader(|l| l == new, 30).await;

    // The new pod works: a campaign completes.
    let spec = with_default_token(2);
    r.create_campaign("after-upgrade", spec).await;
    r.wait_done("after-upgrade", 120).await;
}

/// Polls the release's pods until the old one is gone and a new one is Ready (or 90 s pass):
/// the most pods that ran at once, and whether the old one went away.
fn most_pods_at_once(kubeconfig: &Path, ns: &str, release: &str, old: &str) -> (usize, bool) {
    let selector = format!("app.kubernetes.io/instance={release}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut most, mut old_gone) = (0, false);
    while Instant::now() < deadline {
        let out = Command::new(helm_bin().with_file_name("kubectl"))
            .args(["get", "pods", "-n", ns, "-l", &selector, "-o", "json"])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pods = list["items"].as_array().cloned().unwrap_or_default();
        // A pod whose containers have stopped (phase Succeeded or Failed) no longer runs,
        // though its object stays a moment.
        let running = pods
            .iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count();
        most = most.max(running);
        old_gone |= !pods.iter().any(|p| pod_name(p) == old);
        if old_gone && pods.iter().any(is_ready) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (most, old_gone)
}

#[tokio::test]
async fn two_replicas_one_leads_and_deleting_the_leaders_pod_moves_leadership() {
    // Both replicas share the claim from different nodes: ReadWriteMany, as the chart says.
    let extra = json!({"replicaCount": 2, "persistence": {"accessModes": ["ReadWriteMany"]}});
    let r = Release::install("podha", two_workers(200), extra).await;
    // Each replica listens on its node's address: the scheduler puts them on different nodes.
    let pods = r.ready_pods(2, READY_WITHIN).await;
    let on: HashSet<&str> = pods
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(on.len(), 2, "both replicas on one node");
    let names: Vec<String> = pods.iter().map(pod_name).collect();
    let leader = r.wait_leader(|l| names.iter().any(|n| n == l), 30).await;
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();

    r.nodes
        .kubectl_ok(&["delete", "pod", &leader, "-n", &r.ns, "--wait=false"]);
    // The standby, or the replacement pod if it starts first: a live pod, not the deleted one.
    let next = r.wait_leader(|l| l != leader, 30).await;
    let live: Vec<String> = r.pods().iter().map(pod_name).collect();
    assert!(live.contains(&next), "leader {next} is not one of {live:?}");
    eprintln!(
        "pod tests: leadership moved to the {}",
        if next == standby {
            "standby"
        } else {
            "replacement pod"
        }
    );

    // The new leader works.
    let spec = with_default_token(2);
    r.create_campaign("after-failover", spec).await;
    r.wait_done("after-failover", 120).await;
}

/// The test image and the Dockerfile agree on user, entrypoint, command and exposed port; the
/// image holds every library the binary loads; it is small.
#[test]
fn the_image_agrees_with_the_dockerfile_and_is_small() {
    let (_, archive) = &images()[0];
    let member = |name: &str| {
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg(format!("./{name}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} is not in {}",
            archive.display()
        );
        out.stdout
    };
    let blob = |digest: &Value| member(&format!("blobs/sha256/{}", &digest.as_str().unwrap()[7..]));
    let index: Value = serde_json::from_slice(&member("index.json")).unwrap();
    let manifest: Value = serde_json::from_slice(&blob(&index["manifests"][0]["digest"])).unwrap();
    let config: Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();

    let docker = dockerfile_last_stage();
    let c = &config["config"];
    assert_eq!(c["User"], json!(docker["USER"]));
    assert_eq!(
        c["Entrypoint"],
        serde_json::from_str::<Value>(&docker["ENTRYPOINT"]).unwrap()
    );
    assert_eq!(
        c["Cmd"],
        serde_json::from_str::<Value>(&docker["CMD"]).unwrap()
    );
    let mut ports = serde_json::Map::new();
    ports.insert(format!("{}/tcp", docker["EXPOSE"]), json!({}));
    assert_eq!(c["ExposedPorts"], Value::Object(ports));

    let size: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    eprintln!("controller image: {size} bytes compressed");
    assert!(size < 40 << 20, "image is {size} bytes");

    // The image's own binary finds every library it loads inside the image.
    let rootfs = tempfile::tempdir().unwrap();
    let mut untar = Command::new("tar")
        .arg("-xz")
        .arg("-C")
        .arg(rootfs.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    untar
        .stdin
        .take()
        .unwrap()
        .write_all(&blob(&manifest["layers"][0]["digest"]))
        .unwrap();
    assert!(untar.wait().unwrap().success());
    let entrypoint = c["Entrypoint"][0].as_str().unwrap();
    let binary = rootfs.path().join(entrypoint.trim_start_matches('/'));
    let ldd = run(Command::new("ldd").arg(&binary), "ldd");
    let libs: Vec<&str> = ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .collect();
    assert!(libs.iter().any(|l| l.contains("libc.so")), "{ldd}");
    for lib in libs {
        let inside = rootfs.path().join(lib.trim_start_matches('/'));
        assert!(inside.is_file(), "{lib} is not in the image");
    }
}

/// USER, EXPOSE, ENTRYPOINT and CMD of the Dockerfile's last stage.
fn dockerfile_last_stage() -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(support::repo().join("Dockerfile")).unwrap();
    let last = text.rsplit("\nFROM ").next().unwrap();
    last.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| ["USER", "EXPOSE", "ENTRYPOINT", "CMD"].contains(k))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}
