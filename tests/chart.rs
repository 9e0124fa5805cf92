//! The Helm chart (`charts/autoresearch-coordinator`) and the plain manifests (`deploy/`):
//! lint, schema, Kubernetes 1.35 manifest validation, and a real install into the test API
//! server whose ServiceAccount is checked against the least-privilege table below.
//!
//! helm v4 and kubectl v1.35 come from `scripts/install-helm.sh`; kubernetes-validate from
//! `tests/chart/kubernetes-validate.sh` (a pinned venv under `.cache/`).

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_yaml::Value;

const CHART: &str = "charts/autoresearch-coordinator";

/// Values files that must render, lint and validate (tests/chart/values/).
const GOOD_VALUES: &[&str] = &[
    "defaults.yaml",
    "existing-claim-monitor-replicas.yaml",
    "watch-namespace-base.yaml",
    "no-token.yaml",
    "host-network.yaml",
];

/// What the chart's ServiceAccount may do in any campaign namespace, as
/// "verb group/resource[resourceName]" ("core" is the empty API group).
const CAMPAIGN_NAMESPACE_RIGHTS: &[&str] = &[
    "get autoresearch.obol.org/experimentcampaigns",
    "list autoresearch.obol.org/experimentcampaigns",
    "watch autoresearch.obol.org/experimentcampaigns",
    "get autoresearch.obol.org/experimentcampaigns/status",
    "update autoresearch.obol.org/experimentcampaigns/status",
    "patch autoresearch.obol.org/experimentcampaigns/status",
    "create events.k8s.io/events",
    "patch events.k8s.io/events",
    "get core/configmaps",
    "list core/configmaps",
    "watch core/configmaps",
    "create core/configmaps",
    "patch core/configmaps",
    "list core/events",
    "get core/secrets[remote-signer-keystore]",
    "get core/secrets[campaign-token]",
];

/// What it may do on top of that in its own namespace (leader election).
const RELEASE_NAMESPACE_EXTRA_RIGHTS: &[&str] = &[
    "get coordination.k8s.io/leases",
    "create coordination.k8s.io/leases",
    "update coordination.k8s.io/leases",
    "patch coordination.k8s.io/leases",
];

// ---------------------------------------------------------------------------------------------
// Tools

fn repo_path(rel: &str) -> PathBuf {
    support::repo().join(rel)
}

/// helm from scripts/install-helm.sh (extracted once per checkout).
fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_path("scripts/install-helm.sh"))
            .output()
            .expect("run scripts/install-helm.sh");
        assert!(
            out.status.success(),
            "install-helm.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The kubectl installed beside helm (v1.35, matching the test API server).
fn kubectl_bin() -> PathBuf {
    helm_bin().with_file_name("kubectl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs helm with its settings and caches under .cache/helm (not the home folder), without a
/// cluster (lint, template).
fn helm(args: &[&str]) -> Output {
    helm_command(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm")
}

/// Runs helm against the test cluster.
fn helm_cluster(args: &[&str]) -> Output {
    helm_command(args)
        .env("KUBECONFIG", support::kubeconfig())
        .output()
        .expect("run helm")
}

fn helm_command(args: &[&str]) -> Command {
    let home = repo_path(".cache/helm");
    let mut command = Command::new(helm_bin());
    command
        .args(args)
        .current_dir(support::repo())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    command
}

/// Runs kubectl (v1.35) against the test cluster as admin, with optional stdin.
fn kubectl_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(kubectl_bin())
        .args(args)
        .current_dir(support::repo())
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn kubectl(args: &[&str]) -> Output {
    kubectl_with(support::kubeconfig(), args, None)
}

#[track_caller]
fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` of the chart with a values file from tests/chart/values and extra --set flags.
fn render(values: &str, sets: &[&str]) -> Output {
    let file = repo_path("tests/chart/values").join(values);
    let mut args = vec![
        "template",
        "arc",
        CHART,
        "--namespace",
        "autoresearch",
        "-f",
        file.to_str().unwrap(),
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn kinds<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[track_caller]
fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = kinds(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

fn rendered(values: &str) -> Vec<Value> {
    documents(&ok(
        render(values, &[]),
        &format!("helm template -f {values}"),
    ))
}

// ---------------------------------------------------------------------------------------------
// Static checks

#[test]
fn chart_crd_is_the_generated_crd() {
    let repo = std::fs::read(repo_path("crds/experimentcampaigns.yaml")).unwrap();
    for copy in [
        format!("{CHART}/crds/experimentcampaigns.yaml"),
        "deploy/crd.yaml".to_string(),
    ] {
        let chart = std::fs::read(repo_path(&copy)).unwrap();
        assert!(
            repo == chart,
            "{copy} differs from crds/experimentcampaigns.yaml: run deploy/generate.sh"
        );
    }
}

#[test]
fn deploy_manifests_are_current() {
    let out = Command::new("bash")
        .arg(repo_path("deploy/generate.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn helm_lint_is_clean_in_strict_mode() {
    for values in GOOD_VALUES {
        let file = repo_path("tests/chart/values").join(values);
        let out = helm(&["lint", "--strict", CHART, "-f", file.to_str().unwrap()]);
        let all = text(&out);
        assert!(
            out.status.success(),
            "helm lint --strict -f {values}:\n{all}"
        );
        assert!(
            !all.contains("[WARNING]") && !all.contains("[ERROR]"),
            "helm lint -f {values}:\n{all}"
        );
    }
}

/// Feeds manifests to kubernetes-validate (strict: unknown fields fail) for Kubernetes 1.35.
#[track_caller]
fn validate_1_35(yaml: &str, what: &str) {
    let mut child = Command::new("bash")
        .arg(repo_path("tests/chart/kubernetes-validate.sh"))
        .args(["--kubernetes-version", "1.35.0", "--strict", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "kubernetes-validate ({what}):\n{all}");
    // Only the Prometheus Operator's ServiceMonitor has no bundled schema.
    for line in all
        .lines()
        .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR"))
    {
        assert!(
            line.contains("kind ServiceMonitor"),
            "kubernetes-validate ({what}): {line}"
        );
    }
    let passed = all
        .lines()
        .filter(|l| l.contains("passed for resource"))
        .count();
    assert!(
        passed >= 7,
        "kubernetes-validate ({what}) checked only {passed} resources:\n{all}"
    );
}

#[test]
fn rendered_manifests_are_valid_kubernetes_1_35() {
    for values in GOOD_VALUES {
        let yaml = ok(render(values, &[]), &format!("helm template -f {values}"));
        let crd =
            std::fs::read_to_string(repo_path(&format!("{CHART}/crds/experimentcampaigns.yaml")))
                .unwrap();
        validate_1_35(&format!("{crd}\n---\n{yaml}"), values);
    }
    let plain = ok(
        kubectl_with(Path::new("/dev/null"), &["kustomize", "deploy"], None),
        "kubectl kustomize deploy",
    );
    validate_1_35(&plain, "deploy/");
}

#[test]
fn wrong_values_fail_on_the_schema_naming_the_value() {
    let out = render("bad.yaml", &[]);
    let all = text(&out);
    assert!(!out.status.success(), "bad.yaml rendered:\n{all}");
    for expected in [
        "at '/network': value must be one of 'base-sepolia', 'base'",
        "at '/replicaCount': minimum: got -1, want 0",
        "additional properties 'replicas' not allowed",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    for (set, path) in [
        ("remoteSigner.url=ftp://signer", "/remoteSigner/url"),
        ("erpc.url=erpc:4000", "/erpc/url"),
        ("watchNamespace=Research", "/watchNamespace"),
        ("metrics.port=80", "/metrics/port"),
        ("log.json=yes", "/log/json"),
        ("persistence.size=lots", "/persistence/size"),
        (
            "rbac.campaignTokenSecrets={Bad_Name}",
            "/rbac/campaignTokenSecrets/0",
        ),
        (
            "remoteSigner.tokenSecrett.name=x",
            "'tokenSecrett' not allowed",
        ),
    ] {
        let out = render("defaults.yaml", &[set]);
        let all = text(&out);
        assert!(!out.status.success(), "--set {set} rendered");
        assert!(
            all.contains("values don't meet the specifications of the schema"),
            "--set {set}:\n{all}"
        );
        assert!(
            all.contains(path),
            "--set {set}: no mention of {path}:\n{all}"
        );
    }
}

#[test]
fn deployment_is_hardened_and_wired_to_the_controller_settings() {
    let docs = rendered("defaults.yaml");
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], Value::from(1));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        Value::from("arc-autoresearch-coordinator")
    );
    assert_eq!(pod["securityContext"]["runAsUser"], Value::from(65532));
    assert_eq!(pod["securityContext"]["runAsGroup"], Value::from(65532));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::from(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        Value::from("RuntimeDefault")
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], Value::from(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::from(false));
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_yaml::from_str::<Value>("[ALL]").unwrap()
    );
    assert_eq!(sc["seccompProfile"]["type"], Value::from("RuntimeDefault"));
    assert_eq!(
        c["args"],
        serde_yaml::from_str::<Value>("[controller]").unwrap()
    );
    assert_eq!(
        c["image"],
        Value::from("ghcr.io/obolnetwork/autoresearch-coordinator:0.1.0")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"],
        Value::from("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"],
        Value::from("/readyz")
    );
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );

    let value =
        |name: &str| env_var(c, name).unwrap_or_else(|| panic!("no env {name}"))["value"].clone();
    assert_eq!(value("METRICS_ADDR"), Value::from("0.0.0.0:8080"));
    assert_eq!(value("DATA_DIR"), Value::from("/data"));
    assert_eq!(
        value("LEASE_NAME"),
        Value::from("arc-autoresearch-coordinator")
    );
    assert_eq!(
        value("REMOTE_SIGNER_URL"),
        Value::from("http://remote-signer:9000")
    );
    assert_eq!(
        value("ERPC_URL"),
        Value::from("http://erpc.erpc.svc.cluster.local:4000/rpc")
    );
    assert_eq!(value("ERPC_NETWORK"), Value::from("base-sepolia"));
    assert_eq!(
        value("SCAN_API_URL"),
        Value::from("https://www.8004scan.io/api/v1/public")
    );
    assert_eq!(value("LOG_JSON"), Value::from("true"));
    assert_eq!(value("RUST_LOG"), Value::from("info"));
    assert!(env_var(c, "WATCH_NAMESPACE").is_none());
    let field =
        |name: &str| env_var(c, name).unwrap()["valueFrom"]["fieldRef"]["fieldPath"].clone();
    assert_eq!(field("POD_NAME"), Value::from("metadata.name"));
    assert_eq!(field("POD_NAMESPACE"), Value::from("metadata.namespace"));
    let token = &env_var(c, "REMOTE_SIGNER_TOKEN").unwrap()["valueFrom"]["secretKeyRef"];
    assert_eq!(token["name"], Value::from("remote-signer-keystore"));
    assert_eq!(token["key"], Value::from("authToken"));
    assert_eq!(token["optional"], Value::from(true));

    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "data")
        .unwrap();
    assert_eq!(mount["mountPath"], Value::from("/data"));
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap();
    let pvc = one(&docs, "PersistentVolumeClaim");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        Value::from("keep")
    );

    let service = one(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], Value::from(8080));
    assert!(kinds(&docs, "ServiceMonitor").is_empty());
    assert_eq!(
        one(&docs, "ClusterRoleBinding")["subjects"][0]["namespace"],
        Value::from("autoresearch")
    );
    assert_eq!(
        one(&docs, "Role")["metadata"]["namespace"],
        Value::from("autoresearch")
    );
}

/// The secrets rule of the ClusterRole, if any.
/// On the node's network the controller listens on the pod IP (the node's address) only, and
/// extra environment comes after the chart's own.
#[test]
fn host_network_binds_the_metrics_port_to_the_pod_ip() {
    let docs = rendered("host-network.yaml");
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], Value::from(true));
    assert_eq!(pod["dnsPolicy"], Value::from("ClusterFirstWithHostNet"));
    let c = &pod["containers"][0];
    let env = c["env"].as_sequence().unwrap();
    let at = |name: &str| env.iter().position(|e| e["name"] == name).unwrap();
    assert_eq!(
        env_var(c, "POD_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        Value::from("status.podIP")
    );
    // $(POD_IP) expands only if POD_IP is defined earlier in the list.
    assert!(at("POD_IP") < at("METRICS_ADDR"));
    assert_eq!(
        env_var(c, "METRICS_ADDR").unwrap()["value"],
        Value::from("$(POD_IP):18080")
    );
    assert!(at("NODE_NAME") > at("RUST_LOG"));
    assert_eq!(
        env_var(c, "LEASE_SECONDS").unwrap()["value"],
        Value::from("4")
    );

    // The default: every interface of the pod's own network namespace, no POD_IP.
    let docs = rendered("defaults.yaml");
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert!(pod["hostNetwork"].is_null());
    let c = &pod["containers"][0];
    assert!(env_var(c, "POD_IP").is_none());
    assert_eq!(
        env_var(c, "METRICS_ADDR").unwrap()["value"],
        Value::from("0.0.0.0:8080")
    );
}

fn secret_rule(docs: &[Value]) -> Option<Value> {
    one(docs, "ClusterRole")["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| {
            r["resources"]
                .as_sequence()
                .unwrap()
                .contains(&Value::from("secrets"))
        })
        .cloned()
}

#[test]
fn values_variants_render_as_documented() {
    // existingClaim + ServiceMonitor + 2 replicas + a campaign token Secret.
    let docs = rendered("existing-claim-monitor-replicas.yaml");
    assert!(
        kinds(&docs, "PersistentVolumeClaim").is_empty(),
        "an existing claim needs no new PVC"
    );
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], Value::from(2));
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "autoresearch-results")
    );
    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        Value::from("metrics")
    );
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        Value::from("kube-prometheus-stack")
    );
    let names = &secret_rule(&docs).unwrap()["resourceNames"];
    assert_eq!(
        names,
        &serde_yaml::from_str::<Value>("[remote-signer-keystore, campaign-signer-token]").unwrap()
    );

    // watchNamespace: campaign rights bound in that namespace only; base network.
    let docs = rendered("watch-namespace-base.yaml");
    assert!(kinds(&docs, "ClusterRoleBinding").is_empty());
    let bindings = kinds(&docs, "RoleBinding");
    let campaign_binding = bindings
        .iter()
        .find(|b| b["roleRef"]["kind"] == "ClusterRole")
        .unwrap();
    assert_eq!(
        campaign_binding["metadata"]["namespace"],
        Value::from("research")
    );
    let c = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_var(c, "WATCH_NAMESPACE").unwrap()["value"],
        Value::from("research")
    );
    assert_eq!(
        env_var(c, "ERPC_NETWORK").unwrap()["value"],
        Value::from("base")
    );
    assert_eq!(
        env_var(c, "LOG_JSON").unwrap()["value"],
        Value::from("false")
    );

    // No token Secret at all: no secrets rule (an empty resourceNames would allow every Secret).
    let docs = rendered("no-token.yaml");
    assert!(secret_rule(&docs).is_none());
    let c = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(env_var(c, "REMOTE_SIGNER_TOKEN").is_none());
}

// ---------------------------------------------------------------------------------------------
// Against the real API server

/// helm install / kubectl apply of CRDs one at a time: two creators of one CRD could race.
static INSTALL: Mutex<()> = Mutex::new(());

struct Release {
    namespace: String,
    name: String,
    service_account: String,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

fn helm_install(name: &str, namespace: &str, sets: &[&str]) -> String {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = vec![
        "install",
        name,
        CHART,
        "--namespace",
        namespace,
        "--create-namespace",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    ok(helm_cluster(&args), &format!("helm install {name}"))
}

/// One release with default values plus a campaign token Secret name, shared by the RBAC tests.
fn release() -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| {
        let namespace = unique("chart");
        let name = unique("arc");
        helm_install(
            &name,
            &namespace,
            &["rbac.campaignTokenSecrets={campaign-token}"],
        );
        Release {
            service_account: format!("{name}-autoresearch-coordinator"),
            namespace,
            name,
        }
    })
}

fn create_namespace(name: &str) {
    let out = kubectl(&["create", "namespace", name]);
    assert!(
        out.status.success() || text(&out).contains("AlreadyExists"),
        "{}",
        text(&out)
    );
}

#[test]
fn helm_install_creates_every_object() {
    let r = release();
    let status = ok(
        helm_cluster(&["status", &r.name, "--namespace", &r.namespace, "-o", "json"]),
        "helm status",
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["info"]["status"], "deployed");
    let fullname = &r.service_account;
    for object in [
        format!("deployment/{fullname}"),
        format!("serviceaccount/{fullname}"),
        format!("service/{fullname}-metrics"),
        format!("persistentvolumeclaim/{fullname}-data"),
        format!("role/{fullname}-leader-election"),
        format!("rolebinding/{fullname}-leader-election"),
        format!("clusterrole/{fullname}"),
        format!("clusterrolebinding/{fullname}"),
    ] {
        ok(
            kubectl(&["get", "--namespace", &r.namespace, &object]),
            &format!("get {object}"),
        );
    }
    ok(
        kubectl(&["get", "crd", "experimentcampaigns.autoresearch.obol.org"]),
        "get crd",
    );
    // No kubelet here: the Deployment exists but its pod never runs.
    let ready = ok(
        kubectl(&[
            "get",
            "-n",
            &r.namespace,
            &format!("deployment/{fullname}"),
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]),
        "deployment status",
    );
    assert_eq!(ready, "");
}

/// The rules the API server reports for a user in a namespace (SelfSubjectRulesReview, as that
/// user), each expanded to "verb group/resource[name]"; the self-review rules every
/// authenticated user has are left out.
fn rules(kubeconfig: &Path, as_user: Option<&str>, namespace: &str) -> BTreeSet<String> {
    let review = format!(
        r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectRulesReview","spec":{{"namespace":"{namespace}"}}}}"#
    );
    let mut args = vec!["create", "--validate=false", "-f", "-", "-o", "json"];
    let as_flag;
    if let Some(user) = as_user {
        as_flag = format!("--as={user}");
        args.push(&as_flag);
    }
    let out = ok(
        kubectl_with(kubeconfig, &args, Some(&review)),
        "SelfSubjectRulesReview",
    );
    let review: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(review["status"]["incomplete"], false, "{review}");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut set = BTreeSet::new();
    for rule in review["status"]["resourceRules"].as_array().unwrap() {
        let names = strings(&rule["resourceNames"]);
        for verb in strings(&rule["verbs"]) {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    if resource.starts_with("selfsubject") {
                        continue;
                    }
                    let group = if group.is_empty() {
                        "core".to_string()
                    } else {
                        group.clone()
                    };
                    if names.is_empty() {
                        set.insert(format!("{verb} {group}/{resource}"));
                    }
                    for name in &names {
                        set.insert(format!("{verb} {group}/{resource}[{name}]"));
                    }
                }
            }
        }
    }
    set
}

fn table(parts: &[&[&str]]) -> BTreeSet<String> {
    parts
        .iter()
        .flat_map(|p| p.iter().map(|s| s.to_string()))
        .collect()
}

fn can_i(as_user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--quiet"];
    all.extend_from_slice(args);
    let as_flag = format!("--as={as_user}");
    all.push(&as_flag);
    let out = kubectl(&all);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("kubectl auth can-i {args:?}: {}", text(&out)),
    }
}

#[test]
fn service_account_has_exactly_the_least_privilege_rights() {
    let r = release();
    let sa = format!(
        "system:serviceaccount:{}:{}",
        r.namespace, r.service_account
    );
    let other = unique("chart-other");
    create_namespace(&other);

    let own = rules(support::kubeconfig(), Some(&sa), &r.namespace);
    assert_eq!(
        own,
        table(&[CAMPAIGN_NAMESPACE_RIGHTS, RELEASE_NAMESPACE_EXTRA_RIGHTS]),
        "in {}",
        r.namespace
    );
    let elsewhere = rules(support::kubeconfig(), Some(&sa), &other);
    assert_eq!(elsewhere, table(&[CAMPAIGN_NAMESPACE_RIGHTS]), "in {other}");

    let ns = r.namespace.as_str();
    let allowed: &[&[&str]] = &[
        &[
            "watch",
            "experimentcampaigns.autoresearch.obol.org",
            "--all-namespaces",
        ],
        &[
            "patch",
            "experimentcampaigns.autoresearch.obol.org",
            "--subresource=status",
            "-n",
            &other,
        ],
        &["create", "events.events.k8s.io", "-n", &other],
        &["get", "configmaps/train", "-n", &other],
        &["watch", "configmaps", "-n", &other],
        &["get", "secrets/remote-signer-keystore", "-n", &other],
        &["get", "secrets/campaign-token", "-n", ns],
        &["update", "leases.coordination.k8s.io/x", "-n", ns],
    ];
    let denied: &[&[&str]] = &[
        &["list", "secrets", "-n", ns],
        &["watch", "secrets", "--all-namespaces"],
        &["get", "secrets/other-secret", "-n", ns],
        &[
            "delete",
            "experimentcampaigns.autoresearch.obol.org",
            "-n",
            &other,
        ],
        &[
            "create",
            "experimentcampaigns.autoresearch.obol.org",
            "-n",
            &other,
        ],
        &[
            "patch",
            "experimentcampaigns.autoresearch.obol.org",
            "-n",
            &other,
        ],
        &["create", "pods", "-n", ns],
        &["create", "leases.coordination.k8s.io", "-n", &other],
        &["delete", "leases.coordination.k8s.io/x", "-n", ns],
        &["create", "events", "-n", ns],
        &["get", "deployments.apps", "-n", ns],
        &["create", "serviceaccounts/token", "-n", ns],
    ];
    for args in allowed {
        assert!(can_i(&sa, args), "{sa} should be allowed to {args:?}");
    }
    for args in denied {
        assert!(!can_i(&sa, args), "{sa} must not be allowed to {args:?}");
    }
}

/// A kubeconfig for the release's ServiceAccount with a TokenRequest token
/// (scripts/sa-kubeconfig.sh), written to a temporary file.
fn sa_kubeconfig(namespace: &str, sa: &str) -> tempfile::NamedTempFile {
    let out = Command::new("bash")
        .arg(repo_path("scripts/sa-kubeconfig.sh"))
        .args([namespace, sa, "10m"])
        .env("KUBECONFIG", support::kubeconfig())
        .env("KUBECTL", kubectl_bin())
        .output()
        .unwrap();
    let config = ok(out, "scripts/sa-kubeconfig.sh");
    assert!(!config.contains(&std::fs::read_to_string(support::kubeconfig()).unwrap()));
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    file
}

#[test]
fn service_account_token_can_watch_and_patch_status_but_not_list_secrets() {
    let r = release();
    let campaigns = unique("chart-campaigns");
    create_namespace(&campaigns);
    ok(
        kubectl(&["apply", "-n", &campaigns, "-f", "examples/quickstart.yaml"]),
        "apply quickstart",
    );
    // A generated signer token; the name is the one the chart may read.
    let token = format!("{:032x}", rand::random::<u128>());
    ok(
        kubectl(&[
            "create",
            "secret",
            "generic",
            "remote-signer-keystore",
            "-n",
            &campaigns,
            &format!("--from-literal=authToken={token}"),
        ]),
        "create token Secret",
    );
    ok(
        kubectl(&[
            "create",
            "secret",
            "generic",
            "unrelated",
            "-n",
            &campaigns,
            "--from-literal=k=v",
        ]),
        "create Secret",
    );

    let config = sa_kubeconfig(&r.namespace, &r.service_account);
    let sa = |args: &[&str]| kubectl_with(config.path(), args, None);

    let who = ok(
        sa(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]),
        "auth whoami",
    );
    assert_eq!(
        who,
        format!(
            "system:serviceaccount:{}:{}",
            r.namespace, r.service_account
        )
    );

    // Watch every namespace's campaigns (the controller's watcher), bounded by timeoutSeconds.
    let watch = ok(
        sa(&[
            "get",
            "--raw",
            "/apis/autoresearch.obol.org/v1alpha1/experimentcampaigns?watch=true&timeoutSeconds=1",
        ]),
        "watch campaigns with the SA token",
    );
    assert!(
        watch.contains(r#""type":"ADDED""#) && watch.contains("quickstart"),
        "{watch}"
    );

    ok(
        sa(&[
            "patch",
            "experimentcampaign",
            "quickstart",
            "-n",
            &campaigns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"progress":"0/12"}}"#,
        ]),
        "patch status with the SA token",
    );
    let progress = ok(
        kubectl(&[
            "get",
            "experimentcampaign",
            "quickstart",
            "-n",
            &campaigns,
            "-o",
            "jsonpath={.status.progress}",
        ]),
        "get",
    );
    assert_eq!(progress, "0/12");

    let got = ok(
        sa(&[
            "get",
            "secret",
            "remote-signer-keystore",
            "-n",
            &campaigns,
            "-o",
            "jsonpath={.data.authToken}",
        ]),
        "get the token Secret",
    );
    assert!(!got.is_empty());
    // Leader election: a Lease in the release namespace, and nowhere else.
    let lease = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"chart-test"}}"#;
    ok(
        kubectl_with(
            config.path(),
            &["create", "-n", &r.namespace, "-f", "-"],
            Some(lease),
        ),
        "create a Lease in the release namespace",
    );
    let out = kubectl_with(
        config.path(),
        &["create", "-n", &campaigns, "-f", "-"],
        Some(lease),
    );
    assert!(
        !out.status.success() && text(&out).contains("forbidden"),
        "Lease elsewhere: {}",
        text(&out)
    );

    for (args, what) in [
        (vec!["get", "secrets", "-n", &campaigns], "list secrets"),
        (
            vec!["get", "secrets", "--all-namespaces"],
            "list secrets cluster-wide",
        ),
        (
            vec!["get", "secret", "unrelated", "-n", &campaigns],
            "get another Secret",
        ),
        (
            vec![
                "delete",
                "experimentcampaign",
                "quickstart",
                "-n",
                &campaigns,
            ],
            "delete a campaign",
        ),
        (
            vec![
                "patch",
                "experimentcampaign",
                "quickstart",
                "-n",
                &campaigns,
                "--type=merge",
                "-p",
                r#"{"spec":{"suspend":true}}"#,
            ],
            "patch a campaign's spec",
        ),
        (vec!["get", "pods", "-n", &r.namespace], "list pods"),
    ] {
        let out = sa(&args);
        assert!(!out.status.success(), "the SA token could {what}");
        assert!(
            text(&out).contains("Forbidden") || text(&out).contains("forbidden"),
            "{what}: {}",
            text(&out)
        );
    }
}

#[test]
fn watch_namespace_release_is_bound_there_only_and_uninstall_keeps_results() {
    let namespace = unique("chart-watch");
    let watched = unique("chart-watched");
    let name = unique("arcw");
    create_namespace(&watched);
    helm_install(
        &name,
        &namespace,
        &[&format!("watchNamespace={watched}"), "network=base"],
    );
    let sa = format!("system:serviceaccount:{namespace}:{name}-autoresearch-coordinator");
    assert!(can_i(
        &sa,
        &[
            "watch",
            "experimentcampaigns.autoresearch.obol.org",
            "-n",
            &watched
        ]
    ));
    assert!(can_i(
        &sa,
        &[
            "patch",
            "experimentcampaigns.autoresearch.obol.org",
            "--subresource=status",
            "-n",
            &watched
        ]
    ));
    assert!(can_i(
        &sa,
        &["get", "secrets/remote-signer-keystore", "-n", &watched]
    ));
    assert!(!can_i(
        &sa,
        &[
            "watch",
            "experimentcampaigns.autoresearch.obol.org",
            "--all-namespaces"
        ]
    ));
    assert!(!can_i(
        &sa,
        &[
            "get",
            "experimentcampaigns.autoresearch.obol.org",
            "-n",
            "default"
        ]
    ));
    assert!(!can_i(
        &sa,
        &["get", "secrets/remote-signer-keystore", "-n", "default"]
    ));
    assert!(can_i(
        &sa,
        &["update", "leases.coordination.k8s.io/x", "-n", &namespace]
    ));

    // Uninstall removes the controller and its rights, and keeps the CRD and the results PVC.
    ok(
        helm_cluster(&["uninstall", &name, "--namespace", &namespace]),
        "helm uninstall",
    );
    let fullname = format!("{name}-autoresearch-coordinator");
    ok(
        kubectl(&[
            "get",
            "-n",
            &namespace,
            &format!("persistentvolumeclaim/{fullname}-data"),
        ]),
        "results PVC after uninstall",
    );
    ok(
        kubectl(&["get", "crd", "experimentcampaigns.autoresearch.obol.org"]),
        "CRD after uninstall",
    );
    for gone in [
        format!("deployment/{fullname}"),
        format!("clusterrole/{fullname}"),
        format!("rolebinding/{fullname}"),
    ] {
        let out = kubectl(&["get", "-n", &namespace, &gone]);
        assert!(
            !out.status.success() && text(&out).contains("NotFound"),
            "{gone} after uninstall: {}",
            text(&out)
        );
    }
    let out = kubectl(&["get", "-n", &watched, &format!("rolebinding/{fullname}")]);
    assert!(
        text(&out).contains("NotFound"),
        "binding in the watched namespace after uninstall: {}",
        text(&out)
    );
}

#[test]
fn plain_manifests_apply_with_kubectl_and_grant_the_same_rights() {
    {
        let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        ok(
            kubectl(&["apply", "-k", "deploy"]),
            "kubectl apply -k deploy",
        );
    }
    for object in [
        "deployment/autoresearch-coordinator",
        "persistentvolumeclaim/autoresearch-coordinator-data",
        "service/autoresearch-coordinator-metrics",
    ] {
        ok(kubectl(&["get", "-n", "autoresearch", object]), object);
    }
    let sa = "system:serviceaccount:autoresearch:autoresearch-coordinator";
    let expected: BTreeSet<String> =
        table(&[CAMPAIGN_NAMESPACE_RIGHTS, RELEASE_NAMESPACE_EXTRA_RIGHTS])
            .into_iter()
            .filter(|r| !r.ends_with("[campaign-token]"))
            .collect();
    assert_eq!(
        rules(support::kubeconfig(), Some(sa), "autoresearch"),
        expected
    );
}

/// The controller, authenticated with a token of the chart's ServiceAccount (not admin),
/// completes a paid campaign: the chart's RBAC is sufficient, not just narrow.
#[tokio::test]
async fn the_controller_completes_a_campaign_with_the_charts_service_account() {
    use support::controller::{Controller, campaign, signer_secret, wait_done};
    let ns = unique("chartrun");
    let name = unique("arcrun");
    helm_install(&name, &ns, &[&format!("watchNamespace={ns}")]);
    let sa = format!("{name}-autoresearch-coordinator");
    let out = Command::new("bash")
        .arg(repo_path("scripts/sa-kubeconfig.sh"))
        .args([ns.as_str(), sa.as_str()])
        .env("KUBECONFIG", support::kubeconfig())
        .env("KUBECTL", kubectl_bin())
        .output()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let sa_kubeconfig = data.path().join("sa.kubeconfig");
    std::fs::write(&sa_kubeconfig, ok(out, "sa-kubeconfig.sh")).unwrap();

    let tb = support::testbed::Testbed::start(serde_json::json!({"workers": [
        {"name": "w1", "gate": "v2", "price": "10000", "durationMs": 200},
        {"name": "w2", "gate": "obol", "price": "10000", "durationMs": 200}
    ]}));
    let admin = support::client().await;
    signer_secret(&admin, &ns, &tb).await;
    let api: kube::Api<autoresearch_coordinator::crd::ExperimentCampaign> =
        kube::Api::namespaced(admin, &ns);
    let lease = format!("{name}-autoresearch-coordinator");
    let controller = Controller::start_with(
        &ns,
        &data.path().join("run"),
        "ctl-sa",
        &[
            ("KUBECONFIG", sa_kubeconfig.to_str().unwrap()),
            ("LEASE_NAME", lease.as_str()),
        ],
    );
    let spec = serde_json::json!({"maxExperiments": 4, "parallelism": 2});
    api.create(&Default::default(), &campaign("with-sa", &tb, spec))
        .await
        .unwrap();
    let status = wait_done(&api, "with-sa", 120, &[&controller]).await;
    assert_eq!(status.succeeded, 4, "{status:?}\n{}", controller.log_text());
    let log = controller.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC refused something:\n{log}"
    );
}
