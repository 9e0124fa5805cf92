//! The spec fields of THINK (`search.applyTo`, `search.llm`, `strategy: llm`) against a real
//! kube-apiserver: defaults apply, rules that span fields refuse wrong manifests naming the
//! field, and `kubectl explain` teaches every new field.
//!
//! The CRD is installed from the code (`crd::definition()`), not from `crds/`, so these tests
//! check the schema the code generates.

mod support;

use autoresearch_coordinator::crd::{self, ExperimentCampaign};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

async fn setup() -> (Api<DynamicObject>, String) {
    let client = support::client().await;
    let crd = crd::definition();
    let name = crd.metadata.name.clone().unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &name,
        &PatchParams::apply("autoresearch-think-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the generated CRD applies (its CEL rules compile)");
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("established within 30 s")
    .expect("watch the CRD");
    support::kubectl_eventually(&["get", "experimentcampaigns", "--all-namespaces"]);
    let ns = support::namespace(&client, "think").await;
    let ar = ApiResource::erase::<ExperimentCampaign>(&());
    (Api::namespaced_with(client, &ns, &ar), ns)
}

fn manifest(name: &str, search: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "autoresearch.obol.org/v1alpha1",
        "kind": "ExperimentCampaign",
        "metadata": {"name": name},
        "spec": {
            "trainScript": {"inline": "LR = 0.01  # lr\nprint('val_bpb: 1.0')\n"},
            "search": search,
            "maxExperiments": 3,
            "budget": {"total": "1", "maxPricePerExperiment": "0.1"}
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn llm_and_apply_to_manifests_are_checked_by_the_api_server() {
    let (api, _ns) = setup().await;
    let pp = PostParams::default();

    // Valid: the llm defaults are filled in by the API server.
    let llm = api
        .create(
            &pp,
            &manifest(
                "llm",
                json!({"strategy": "llm", "llm": {"model": "qwen3.5:9b"}}),
            ),
        )
        .await
        .expect("a minimal llm campaign is accepted");
    let stored = &llm.data["spec"]["search"]["llm"];
    assert_eq!(stored["endpoint"], crd::DEFAULT_LLM_ENDPOINT);
    assert_eq!(stored["maxCalls"], crd::DEFAULT_LLM_MAX_CALLS);
    let script = json!({"strategy": "grid", "applyTo": "trainScript",
        "parameters": [{"name": "LR", "type": "float", "min": 0.001, "max": 0.1}]});
    api.create(&pp, &manifest("script", script))
        .await
        .expect("applyTo trainScript is accepted");

    let wrong = [
        (json!({"strategy": "llm"}), "spec.search.llm"),
        (
            json!({"strategy": "llm", "llm": {"model": "m"},
                   "parameters": [{"name": "LR", "type": "float", "min": 0.0, "max": 1.0}]}),
            "spec.search.parameters",
        ),
        (
            json!({"strategy": "llm", "llm": {}}),
            "spec.search.llm.model",
        ),
        (
            json!({"strategy": "llm", "llm": {"model": "m", "program": "p",
                   "programConfigMapKeyRef": {"name": "cm", "key": "program.md"}}}),
            "spec.search.llm.program",
        ),
        (
            json!({"strategy": "llm", "llm": {"model": "m", "endpoint": "ftp://x"}}),
            "spec.search.llm.endpoint",
        ),
        (
            json!({"strategy": "llm", "llm": {"model": "m", "maxCalls": 0}}),
            "spec.search.llm.maxCalls",
        ),
        (
            json!({"strategy": "llm", "llm": {"model": "m", "apiKeySecretRef": {"name": "s"}}}),
            "spec.search.llm.apiKeySecretRef.key",
        ),
        (
            json!({"strategy": "grid", "applyTo": "code",
                   "parameters": [{"name": "LR", "type": "float", "min": 0.0, "max": 1.0}]}),
            "spec.search.applyTo",
        ),
    ];
    for (i, (search, field)) in wrong.into_iter().enumerate() {
        match api
            .create(&pp, &manifest(&format!("wrong-{i}"), search.clone()))
            .await
        {
            Ok(_) => panic!("{search} was accepted"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{search}: {}", status.message);
                assert!(
                    status.message.contains(field),
                    "{search}: {field} not in {}",
                    status.message
                );
            }
            Err(e) => panic!("{search}: {e}"),
        }
    }
}

#[tokio::test]
async fn kubectl_explain_teaches_the_new_fields() {
    let _ = setup().await;
    let (out, _) =
        support::kubectl_eventually(&["explain", "experimentcampaign.spec.search.applyTo"]);
    assert!(
        out.contains("AUTORESEARCH_EXPERIMENT_CONFIG") && out.contains("trainScript"),
        "{out}"
    );
    let (out, _) = support::kubectl_eventually(&["explain", "experimentcampaign.spec.search.llm"]);
    for field in [
        "endpoint",
        "model",
        "apiKeySecretRef",
        "program",
        "programConfigMapKeyRef",
        "temperature",
        "maxTokens",
        "maxCalls",
    ] {
        assert!(out.contains(field), "{field} missing:\n{out}");
    }
    let (out, _) =
        support::kubectl_eventually(&["explain", "experimentcampaign.spec.search.llm.maxCalls"]);
    assert!(out.contains("ProposerExhausted"), "{out}");
}
