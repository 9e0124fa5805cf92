//! The ExperimentCampaign CRD against a real kube-apiserver: it installs, the examples apply,
//! wrong manifests are refused with a message naming the field, `kubectl get campaigns` shows
//! the columns, and status changes only through the status subresource.

mod support;

use autoresearch_coordinator::crd::{
    ExperimentCampaign, ExperimentCampaignStatus, Phase, ResultSummary,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource};
use serde_json::{Value, json};

fn valid_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "autoresearch.obol.org/v1alpha1",
        "kind": "ExperimentCampaign",
        "metadata": {"name": name},
        "spec": {
            "trainScript": {"inline": "print('val_bpb: 1.0')"},
            "search": {
                "strategy": "random",
                "seed": 3,
                "parameters": [{"name": "lr", "type": "float", "min": 0.0001, "max": 0.1, "logScale": true}]
            },
            "maxExperiments": 12,
            "parallelism": 3,
            "budget": {"total": "1", "maxPricePerExperiment": "0.05"}
        }
    })
}

async fn dynamic_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<ExperimentCampaign>(&());
    Api::namespaced_with(client.clone(), ns, &ar)
}

async fn setup(prefix: &str) -> (Client, String) {
    let client = support::client().await;
    support::install_crd(&client).await;
    let ns = support::namespace(&client, prefix).await;
    (client, ns)
}

#[tokio::test]
async fn crd_installs_and_becomes_established() {
    let client = support::client().await;
    let crd = support::install_crd(&client).await;
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    // `kubectl explain` teaches the user from the schema descriptions.
    // The API server publishes a new CRD's OpenAPI a moment after it is Established.
    let (out, err) = support::kubectl_eventually(&["explain", "experimentcampaign.spec.budget"]);
    assert!(err.is_empty() || !out.is_empty(), "{err}");
    assert!(out.contains("maxPricePerExperiment"), "{out}");
    assert!(out.contains("Total USDC the campaign may spend"), "{out}");
}

#[tokio::test]
async fn every_example_applies_and_validates() {
    let (_client, ns) = setup("examples").await;
    let dir = support::repo().join("examples");
    let mut applied = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (ok, _, err) = support::kubectl(&["apply", "-n", &ns, "-f", path.to_str().unwrap()]);
        assert!(ok, "{} was refused: {err}", path.display());
        let text = std::fs::read_to_string(&path).unwrap();
        let campaign: ExperimentCampaign = serde_yaml::from_str(&text).unwrap();
        campaign
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("{} fails Rust validation: {e}", path.display()));
        applied += 1;
    }
    assert!(
        applied >= 5,
        "expected a quickstart and one example per strategy, found {applied}"
    );
}

/// Each case: a JSON pointer into the manifest, the wrong value (None removes the field), and the
/// field path the API server's message must name.
fn wrong_manifests() -> Vec<(&'static str, Option<Value>, &'static str)> {
    vec![
        ("/spec/parallelism", Some(json!(0)), "spec.parallelism"),
        (
            "/spec/maxExperiments",
            Some(json!(0)),
            "spec.maxExperiments",
        ),
        (
            "/spec/budget/total",
            Some(json!("ten")),
            "spec.budget.total",
        ),
        (
            "/spec/budget/total",
            Some(json!("1.1234567")),
            "spec.budget.total",
        ),
        (
            "/spec/budget/maxPricePerExperiment",
            Some(json!("2")),
            "spec.budget.maxPricePerExperiment",
        ),
        ("/spec/budget", None, "spec.budget"),
        (
            "/spec/search/strategy",
            Some(json!("annealing")),
            "spec.search.strategy",
        ),
        (
            "/spec/payment",
            Some(json!({"network": "ethereum"})),
            "spec.payment.network",
        ),
        (
            "/spec/payment",
            Some(json!({"signerAddress": "0x1234"})),
            "spec.payment.signerAddress",
        ),
        (
            "/spec/search/parameters/0/max",
            Some(json!(0.00001)),
            "spec.search.parameters[0].min",
        ),
        (
            "/spec/search/parameters/0/min",
            Some(json!(0.0)),
            "spec.search.parameters[0].min",
        ),
        (
            "/spec/search/parameters",
            Some(json!([])),
            "spec.search.parameters",
        ),
        (
            "/spec/search/strategy",
            Some(json!("list")),
            "spec.search.experiments",
        ),
        (
            "/spec/trainScript/inline",
            Some(json!("")),
            "spec.trainScript.inline",
        ),
        (
            "/spec/trainScript",
            Some(json!({"inline": "x", "configMapKeyRef": {"name": "cm"}})),
            "spec.trainScript",
        ),
        (
            "/spec/objective",
            Some(json!({"metric": "accuracy"})),
            "spec.objective.metric",
        ),
    ]
}

fn set_pointer(doc: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} exists"));
    match (parent, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(key.to_string(), v);
        }
        (Value::Object(map), None) => {
            map.remove(key);
        }
        (Value::Array(items), Some(v)) => items[key.parse::<usize>().unwrap()] = v,
        _ => panic!("cannot set {pointer}"),
    }
}

#[tokio::test]
async fn wrong_manifests_are_refused_with_the_field_named() {
    let (client, ns) = setup("refusals").await;
    let api = dynamic_api(&client, &ns).await;
    let cases = wrong_manifests();
    assert!(cases.len() >= 8);
    for (i, (pointer, value, field)) in cases.into_iter().enumerate() {
        let mut manifest = valid_manifest(&format!("wrong-{i}"));
        set_pointer(&mut manifest, pointer, value.clone());
        let object: DynamicObject = serde_json::from_value(manifest).unwrap();
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => panic!("{pointer} = {value:?} was accepted"),
            Err(kube::Error::Api(status)) => {
                eprintln!("{pointer}: {}", status.message);
                assert_eq!(status.code, 422, "{pointer}: {}", status.message);
                assert!(
                    status.message.contains(field),
                    "{pointer} = {value:?}: message does not name {field}: {}",
                    status.message
                );
            }
            Err(e) => panic!("unexpected error for {pointer}: {e}"),
        }
    }
    // The valid manifest itself is accepted, so the refusals above are about the change alone.
    let object: DynamicObject = serde_json::from_value(valid_manifest("right")).unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .expect("the valid manifest is accepted");
}

#[tokio::test]
async fn status_changes_only_through_the_status_subresource() {
    let (client, ns) = setup("status").await;
    let api: Api<ExperimentCampaign> = Api::namespaced(client.clone(), &ns);
    let campaign: ExperimentCampaign = serde_json::from_value(valid_manifest("s1")).unwrap();
    let created = api.create(&PostParams::default(), &campaign).await.unwrap();
    assert!(created.status.is_none());

    // Status written through the main resource is dropped by the API server.
    let patch = json!({"status": {"phase": "Running", "succeeded": 5}});
    let after = api
        .patch("s1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(
        after.status.is_none(),
        "status changed through the main resource: {:?}",
        after.status
    );

    // Through the status subresource it is kept, and a spec change there is dropped.
    let patch =
        json!({"status": {"phase": "Running", "succeeded": 5}, "spec": {"maxExperiments": 99}});
    let after = api
        .patch_status("s1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let status = after.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.succeeded, 5);
    assert_eq!(
        after.spec.max_experiments, 12,
        "spec changed through the status subresource"
    );
    assert_eq!(after.meta().generation, created.meta().generation);
}

#[tokio::test]
async fn kubectl_get_campaigns_shows_the_columns() {
    let (client, ns) = setup("columns").await;
    let api: Api<ExperimentCampaign> = Api::namespaced(client.clone(), &ns);
    let campaign: ExperimentCampaign = serde_json::from_value(valid_manifest("shown")).unwrap();
    api.create(&PostParams::default(), &campaign).await.unwrap();
    let status = ExperimentCampaignStatus {
        phase: Some(Phase::Running),
        progress: Some("3/12".into()),
        running: 2,
        succeeded: 3,
        spent: Some("0.25".into()),
        best: Some(ResultSummary {
            experiment_id: "exp-1".into(),
            val_bpb: 0.9712,
            worker: "http://127.0.0.1:1/services/w".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.patch_status(
        "shown",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap();

    for args in [
        vec!["get", "campaigns", "-n", &ns],
        vec!["get", "campaign", "shown", "-n", &ns],
    ] {
        let (ok, out, err) = support::kubectl(&args);
        assert!(ok, "{err}");
        let mut lines = out.lines();
        let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "PHASE", "DONE", "RUNNING", "BEST", "SPENT", "AGE"],
            "{out}"
        );
        let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            &row[..6],
            ["shown", "Running", "3/12", "2", "0.9712", "0.25"],
            "{out}"
        );
    }
}
