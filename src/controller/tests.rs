//! The controller's unit layer: reconciles against the fake API server of [`super::fixtures`],
//! with the in-process fake signer and workers of `crate::testkit`. No cluster: the whole file
//! runs in a few seconds (`cargo test --lib controller::`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::fixtures::{FakeApi, object_path};
use super::*;
use crate::crd::{ExperimentCampaignStatus, LedgerEntry, Phase};
use crate::engine::StaticWorkers;
use crate::engine::store::UpdateError;
use crate::testkit::{FakeSigner, FakeWorker, TOKEN};

const NS: &str = "lab";
const TRAIN_PY: &str = "LR = 0.01\nprint('val_bpb: 1.0')\n";

/// A controller context over the fake API server, a fake signer, and a fresh data folder.
struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    signer: FakeSigner,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(finalizer: bool) -> Self {
        let (client, api) = FakeApi::start();
        let signer = FakeSigner::start().await;
        let dir = tempfile::tempdir().unwrap();
        let args = ControllerArgs {
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            lease_name: "lease".into(),
            lease_namespace: NS.into(),
            identity: None,
            lease_seconds: 15,
            namespace: None,
            signer_url: Some(signer.url()),
            signer_token: None,
            finalizer,
            job_poll_ms: 50,
        };
        let engine = engine_for(&args, Arc::new(StaticWorkers), Metrics::new());
        let ctx = Arc::new(Context::new(client, engine, &args, "test-replica"));
        Self {
            api,
            ctx,
            signer,
            _dir: dir,
        }
    }

    /// A harness whose API server holds the ConfigMap, the token Secret and `campaign`.
    async fn holding(finalizer: bool, campaign: ExperimentCampaign) -> Self {
        let h = Self::new(finalizer).await;
        h.api.put(&config_map());
        h.api.put(&token_secret());
        h.api.put(&campaign);
        h
    }

    /// Reconciles the stored campaign `name` once, as the controller would on its watch event.
    async fn reconcile(&self, name: &str) -> Result<Action, ReconcileError> {
        let campaign = self.api.campaign(NS, name).expect("the campaign is stored");
        reconcile(Arc::new(campaign), self.ctx.clone()).await
    }

    fn status(&self, name: &str) -> ExperimentCampaignStatus {
        self.api
            .campaign(NS, name)
            .and_then(|c| c.status)
            .unwrap_or_default()
    }

    /// The Events the controller posted, as (reason, note).
    fn events(&self) -> Vec<(String, String)> {
        self.api
            .seen()
            .iter()
            .filter(|s| s.method == Method::POST && s.path.ends_with("/events"))
            .map(|s| {
                let text = |k: &str| s.body[k].as_str().unwrap_or_default().to_string();
                (text("reason"), text("note"))
            })
            .collect()
    }
}

/// A campaign in [`NS`] reading train.py from ConfigMap `train` and the signer token from
/// Secret `signer-token`; `extra` is merged into the spec.
fn campaign(name: &str, extra: Value) -> ExperimentCampaign {
    let mut spec = json!({
        "trainScript": {"configMapKeyRef": {"name": "train", "key": "train.py"}},
        "search": {"strategy": "list", "experiments": [{"lr": 0.1}, {"lr": 0.2}]},
        "maxExperiments": 2,
        "parallelism": 1,
        "budget": {"total": "1", "maxPricePerExperiment": "0.05"},
        "payment": {"network": "base-sepolia", "tokenSecretRef": {"name": "signer-token", "key": "token"}},
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    let mut campaign = ExperimentCampaign::new(name, serde_json::from_value(spec).unwrap());
    campaign.metadata.namespace = Some(NS.into());
    campaign.metadata.uid = Some(format!("uid-{name}"));
    campaign.metadata.generation = Some(1);
    campaign
}

fn config_map() -> ConfigMap {
    ConfigMap {
        metadata: meta("train"),
        data: Some(BTreeMap::from([("train.py".into(), TRAIN_PY.into())])),
        ..ConfigMap::default()
    }
}

fn token_secret() -> Secret {
    Secret {
        metadata: meta("signer-token"),
        data: Some(BTreeMap::from([(
            "token".into(),
            ByteString(format!("{TOKEN}\n").into_bytes()),
        )])),
        ..Secret::default()
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        ..ObjectMeta::default()
    }
}

fn condition<'a>(status: &'a ExperimentCampaignStatus, kind: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == kind)
}

/// (status, reason) of condition `kind`.
fn state_of(status: &ExperimentCampaignStatus, kind: &str) -> Option<(String, String)> {
    condition(status, kind).map(|c| (c.status.clone(), c.reason.clone()))
}

fn is(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.into(), reason.into()))
}

fn campaign_path(name: &str) -> String {
    object_path::<ExperimentCampaign>(Some(NS), name)
}

#[tokio::test]
async fn a_new_campaign_reads_its_inputs_then_writes_its_decision_once() {
    let h = Harness::holding(false, campaign("c", json!({}))).await;

    let action = h.reconcile("c").await.expect("reconciles");

    // No workers: discovery is retried at the engine's no-worker requeue.
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let path = campaign_path("c");
    assert_eq!(
        h.api.lines(),
        [
            format!("GET {}", object_path::<ConfigMap>(Some(NS), "train")),
            format!("GET {}", object_path::<Secret>(Some(NS), "signer-token")),
            format!("GET {path}"),
            format!("PUT {path}/status"),
        ],
        "inputs first, then one read and one status write (from what the read returned)"
    );
    let status = h.status("c");
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(state_of(&status, "SpecValid"), is("True", "Valid"));
    assert_eq!(
        state_of(&status, "WorkersAvailable"),
        is("False", "NoWorkers")
    );
    assert_eq!(state_of(&status, "Progressing"), is("False", "NoWorkers"));
    assert!(
        condition(&status, "InputsReady").is_none(),
        "never raised, so not written"
    );
    assert_eq!(
        status.pending.len(),
        1,
        "THINK proposed the first experiment"
    );
    assert_eq!(h.signer.sign_calls(), 0);
}

#[tokio::test]
async fn a_campaign_with_its_token_pays_a_worker_with_it() {
    // The counterpart of the missing-Secret test below: with the Secret, the same campaign signs.
    let h = Harness::new(false).await;
    let worker = FakeWorker::start().await;
    h.api.put(&config_map());
    h.api.put(&token_secret());
    let workers = json!({"workers": [{"endpoint": worker.endpoint()}]});
    h.api.put(&campaign("c", json!({"discovery": workers})));

    h.reconcile("c").await.expect("reconciles");

    let paid = tokio::time::timeout(Duration::from_secs(10), async {
        while h.status("c").succeeded == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(paid.is_ok(), "no result within 10 s: {:?}", h.status("c"));
    assert_eq!(h.signer.sign_calls(), 1, "signed with the Secret's token");
    assert_eq!(worker.settled().len(), 1);
    h.ctx.engine.abort_all();
}

#[tokio::test]
async fn a_missing_token_secret_is_inputs_ready_false_with_an_event_and_nothing_signed() {
    let h = Harness::new(false).await;
    let worker = FakeWorker::start().await;
    h.api.put(&config_map());
    let workers = json!({"workers": [{"endpoint": worker.endpoint()}]});
    h.api.put(&campaign("c", json!({"discovery": workers})));

    let error = h.reconcile("c").await.expect_err("the Secret is missing");

    assert!(
        matches!(
            &error,
            ReconcileError::Missing { kind: "Secret", name, field: "spec.payment.tokenSecretRef" }
                if name == "signer-token"
        ),
        "{error:?}"
    );
    let status = h.status("c");
    assert_eq!(
        state_of(&status, "InputsReady"),
        is("False", "InputMissing")
    );
    assert_eq!(
        state_of(&status, "Progressing"),
        is("False", "InputMissing")
    );
    let events = h.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "InputMissing");
    assert!(events[0].1.contains("signer-token"), "{}", events[0].1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.signer.sign_calls() + h.signer.key_calls(), 0);
    assert!(status.ledger.is_empty() && worker.settled().is_empty());
    assert_eq!(
        error_policy(Arc::new(campaign("c", json!({}))), &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(15))
    );
}

#[tokio::test]
async fn a_missing_train_script_config_map_is_retried_and_clears_once_created() {
    let h = Harness::new(false).await;
    h.api.put(&token_secret());
    h.api.put(&campaign("c", json!({})));

    let error = h
        .reconcile("c")
        .await
        .expect_err("the ConfigMap is missing");
    assert!(
        matches!(
            &error,
            ReconcileError::Missing {
                kind: "ConfigMap",
                field: "spec.trainScript.configMapKeyRef",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        state_of(&h.status("c"), "InputsReady"),
        is("False", "InputMissing")
    );
    assert_eq!(h.events()[0].0, "InputMissing");
    let retry = error_policy(Arc::new(campaign("c", json!({}))), &error, h.ctx.clone());
    assert_eq!(retry, Action::requeue(Duration::from_secs(15)));

    // The retry after the user creates it: resolved, and the campaign goes on.
    h.api.put(&config_map());
    h.reconcile("c").await.expect("reconciles once it exists");
    let status = h.status("c");
    assert_eq!(state_of(&status, "InputsReady"), is("True", "Resolved"));
    assert_eq!(state_of(&status, "SpecValid"), is("True", "Valid"));
}

#[tokio::test]
async fn a_config_map_without_the_key_names_the_key() {
    let h = Harness::new(false).await;
    h.api.put(&token_secret());
    let mut cm = config_map();
    cm.data = Some(BTreeMap::from([("other.py".into(), TRAIN_PY.into())]));
    h.api.put(&cm);
    h.api.put(&campaign("c", json!({})));

    let error = h.reconcile("c").await.expect_err("no key train.py");
    assert!(
        matches!(&error, ReconcileError::MissingKey { kind: "ConfigMap", key, .. } if key == "train.py"),
        "{error:?}"
    );
    assert_eq!(
        state_of(&h.status("c"), "InputsReady"),
        is("False", "InputKeyMissing")
    );
}

/// A campaign being deleted with one paid experiment in its ledger.
fn deleted_with_ledger(entries: usize) -> ExperimentCampaign {
    let mut c = campaign("c", json!({}));
    c.metadata.finalizers = Some(vec![delete::FINALIZER.into()]);
    c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let entry = LedgerEntry {
        experiment_id: "exp-1".into(),
        // Nothing listens there: the resumed task cannot finish it during the test.
        worker: "http://127.0.0.1:9".into(),
        nonce: "0x01".into(),
        ..LedgerEntry::default()
    };
    c.status = Some(ExperimentCampaignStatus {
        ledger: vec![entry; entries],
        ..ExperimentCampaignStatus::default()
    });
    c
}

#[tokio::test]
async fn the_finalizer_is_added_to_a_live_campaign_before_anything_runs() {
    let h = Harness::holding(true, campaign("c", json!({}))).await;

    let action = h.reconcile("c").await.expect("adds the finalizer");

    // The patch is the change the next reconcile sees; nothing else is read or written first.
    assert_eq!(action, Action::await_change());
    assert_eq!(h.api.lines(), [format!("PATCH {}", campaign_path("c"))]);
    let stored = h.api.campaign(NS, "c").unwrap();
    assert_eq!(
        stored.metadata.finalizers,
        Some(vec![delete::FINALIZER.into()])
    );
    assert!(stored.status.is_none());
}

#[tokio::test]
async fn a_deleted_campaign_drains_then_its_finalizer_is_removed() {
    let h = Harness::holding(true, deleted_with_ledger(1)).await;

    let error = h.reconcile("c").await.expect_err("kept while draining");
    assert_eq!(
        h.ctx.engine.running_tasks("lab/c"),
        1,
        "its entry is resumed"
    );
    h.ctx.engine.abort_all();
    assert!(matches!(error, ReconcileError::Draining(1)), "{error:?}");
    assert_eq!(
        error_policy(Arc::new(deleted_with_ledger(1)), &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(2)),
        "a drain is looked at often, not at the error retry"
    );
    assert!(h.events().iter().any(|(reason, _)| reason == "Draining"));
    let stored = h.api.campaign(NS, "c").unwrap();
    assert_eq!(
        stored.metadata.finalizers,
        Some(vec![delete::FINALIZER.into()])
    );

    // The paid experiment is recorded: the ledger is empty, the finalizer goes.
    let mut done = stored;
    done.status = Some(ExperimentCampaignStatus::default());
    h.api.put(&done);
    h.api.clear_seen();
    let action = h.reconcile("c").await.expect("released");
    assert_eq!(action, Action::await_change());
    assert_eq!(h.api.lines(), [format!("PATCH {}", campaign_path("c"))]);
    let patch = &h.api.seen()[0].body;
    assert_eq!(patch[1]["op"], "remove", "{patch}");
    let stored = h.api.campaign(NS, "c").unwrap();
    assert_eq!(stored.metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn a_finalizer_patch_against_a_changed_list_is_a_finalizer_error() {
    let h = Harness::new(true).await;
    h.api.put(&config_map());
    h.api.put(&token_secret());
    let mut c = deleted_with_ledger(0);
    h.api.put(&c);
    // Another controller's finalizer was added after this reconcile's read: the patch's test
    // operation fails, and the finalizer is kept.
    c.metadata.finalizers = Some(vec!["other.example/keep".into(), delete::FINALIZER.into()]);
    h.api.put(&c);
    let stale = deleted_with_ledger(0);

    let error = reconcile(Arc::new(stale), h.ctx.clone())
        .await
        .expect_err("the test op fails");

    assert!(matches!(error, ReconcileError::Finalizer(_)), "{error:?}");
    let kept = h.api.campaign(NS, "c").unwrap().metadata.finalizers;
    assert_eq!(kept.map(|f| f.len()), Some(2));
}

#[tokio::test]
async fn api_errors_are_kept_typed_and_retried() {
    let h = Harness::holding(false, campaign("c", json!({}))).await;

    // 500 reading an input: a read error (transient or RBAC), not "not found".
    h.api.fail_next(
        Method::GET,
        "/configmaps/train",
        500,
        "etcdserver: leader changed",
    );
    let error = h.reconcile("c").await.expect_err("500");
    assert!(
        matches!(&error, ReconcileError::Read { kind: "ConfigMap", source: kube::Error::Api(s), .. } if s.code == 500),
        "{error:?}"
    );
    assert_eq!(
        state_of(&h.status("c"), "InputsReady"),
        is("False", "InputUnreadable")
    );
    assert_eq!(
        error_policy(Arc::new(campaign("c", json!({}))), &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(15))
    );

    // 500 writing status: an engine store error carrying the API error.
    h.api
        .fail_next(Method::PUT, "/status", 500, "etcdserver: leader changed");
    h.api
        .fail_next(Method::PUT, "/status", 500, "etcdserver: leader changed");
    let error = h.reconcile("c").await.expect_err("500 on the write");
    assert!(
        matches!(&error, ReconcileError::Engine(UpdateError::Store { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_conflict_is_applied_again_on_the_latest_status() {
    let h = Harness::holding(false, campaign("c", json!({}))).await;
    h.api
        .fail_next(Method::PUT, "/status", 409, "the object has been modified");

    h.reconcile("c")
        .await
        .expect("a conflict is retried, not an error");

    let puts = h
        .api
        .lines()
        .iter()
        .filter(|l| l.starts_with("PUT"))
        .count();
    assert_eq!(puts, 2, "{:?}", h.api.lines());
    assert_eq!(h.ctx.engine.metrics().status_conflicts.get(), 1, "counted");
    assert_eq!(h.status("c").phase, Some(Phase::Pending));
}

#[tokio::test]
async fn a_campaign_gone_from_the_api_server_is_forgotten_not_an_error() {
    let h = Harness::new(false).await;
    h.api.put(&config_map());
    h.api.put(&token_secret());
    let c = campaign("c", json!({}));
    // The watch saw it; by the time the engine reads it, it is deleted (404).
    let action = reconcile(Arc::new(c), h.ctx.clone())
        .await
        .expect("not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(!h.api.lines().iter().any(|l| l.starts_with("PUT")));
}

#[tokio::test]
async fn a_status_too_large_for_etcd_raises_status_too_large() {
    let h = Harness::holding(false, campaign("c", json!({}))).await;
    h.api.fail_next(
        Method::PUT,
        "/status",
        500,
        "etcdserver: request is too large",
    );

    let error = h.reconcile("c").await.expect_err("too large");

    assert!(
        matches!(&error, ReconcileError::Engine(UpdateError::TooLarge { .. })),
        "{error:?}"
    );
    let status = h.status("c");
    assert_eq!(
        state_of(&status, "StatusTooLarge"),
        is("True", "StatusTooLarge")
    );
    assert!(h.events().iter().any(|(r, _)| r == "StatusTooLarge"));
}

/// A reflector store holding `campaigns`, as the controller's watch fills it.
fn store_of(campaigns: Vec<ExperimentCampaign>) -> reflector::Store<ExperimentCampaign> {
    let mut writer = Writer::<ExperimentCampaign>::default();
    for c in campaigns {
        writer.apply_watcher_event(&watcher::Event::Apply(c));
    }
    writer.as_reader()
}

#[test]
fn a_changed_config_map_or_secret_maps_to_the_campaigns_naming_it() {
    let mut other_ns = campaign("elsewhere", json!({}));
    other_ns.metadata.namespace = Some("other".into());
    let inline = campaign(
        "inline",
        json!({"trainScript": {"inline": TRAIN_PY}, "payment": {"network": "base-sepolia"}}),
    );
    let llm = campaign(
        "llm",
        json!({"trainScript": {"inline": TRAIN_PY}, "search": {"strategy": "llm", "llm": {
            "endpoint": "http://127.0.0.1:9/v1", "model": "m",
            "apiKeySecretRef": {"name": "llm-key", "key": "k"},
            "programConfigMapKeyRef": {"name": "program", "key": "p"}}}}),
    );
    let store = store_of(vec![
        campaign("a", json!({})),
        campaign("b", json!({})),
        other_ns,
        inline,
        llm,
    ]);
    let names = |refs: Vec<ObjectRef<ExperimentCampaign>>| {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    };

    assert_eq!(names(campaigns_using(&store, &config_map())), ["a", "b"]);
    assert_eq!(
        names(campaigns_using(&store, &token_secret())),
        ["a", "b", "llm"]
    );
    let mut program = config_map();
    program.metadata.name = Some("program".into());
    assert_eq!(names(campaigns_using(&store, &program)), ["llm"]);
    let mut key = token_secret();
    key.metadata.name = Some("llm-key".into());
    assert_eq!(names(campaigns_using(&store, &key)), ["llm"]);
    // A Secret named like a ConfigMap a campaign uses is not that ConfigMap.
    let mut same_name = token_secret();
    same_name.metadata.name = Some("train".into());
    assert!(campaigns_using(&store, &same_name).is_empty());
    let mut unnamed = config_map();
    unnamed.metadata.namespace = None;
    assert!(campaigns_using(&store, &unnamed).is_empty());
}
