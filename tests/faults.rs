//! Faults around the controller, each against real peers (the API server, anvil, the reference
//! x402 gates, the testbed's signer and workers), each ending in the same money check as the
//! crash windows (tests/crash.rs): per nonce on chain, each experiment paid at most once and
//! recorded exactly once. docs/faults.md is the table of what each one shows.

mod support;

use std::time::Duration;

use autoresearch_coordinator::crd::{ExperimentCampaign, PaymentState, Phase};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::controller::{
    Controller, Setup, campaign, campaign_events, setup, three_workers, wait_done, wait_for,
};
use support::onchain::{assert_books_match_chain, assert_campaigns_match_chain, baseline};

/// Whether the campaign has condition `kind` with `status` and `reason`.
fn has_condition(c: &ExperimentCampaign, kind: &str, status: &str, reason: &str) -> bool {
    c.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|k| k.type_ == kind && k.status == status && k.reason == reason)
    })
}

/// Waits for a condition, then checks Progressing says the same and the API server holds an
/// Event with `event` as its reason.
async fn wait_stalled(
    s: &Setup,
    name: &str,
    (kind, status, reason): (&str, &str, &str),
    event: &str,
    controllers: &[&Controller],
) -> ExperimentCampaign {
    let what = format!("{kind}={status} ({reason})");
    let stalled = wait_for(&s.api, name, 60, &what, controllers, |c| {
        has_condition(c, kind, status, reason) && has_condition(c, "Progressing", "False", event)
    })
    .await;
    // The Event follows the condition's write (Events are sent after it, and not atomically
    // with it): give it a few seconds to arrive.
    let mut events = Vec::new();
    for _ in 0..50 {
        events = campaign_events(&s.client, &s.ns, name).await;
        if events.iter().any(|e| e.reason == event) {
            return stalled;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no {event} Event: {events:#?}");
}

/// Once the cause is fixed: the campaign finishes with `succeeded` results, condition `kind` is
/// back to `good`, and the books match the chain.
async fn assert_recovers(
    s: &Setup,
    (name, succeeded): (&str, u32),
    (kind, good): (&str, &str),
    before: &support::onchain::Baseline,
    controller: &Controller,
) {
    let status = wait_done(&s.api, name, 120, &[controller]).await;
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), succeeded),
        "{status:?}"
    );
    let condition = status.conditions.iter().find(|c| c.type_ == kind);
    assert_eq!(condition.map(|c| c.status.as_str()), Some(good), "{kind}");
    assert_books_match_chain(s, name, &status, before).await;
}

async fn set_token(s: &Setup, token: &str) {
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = json!({"stringData": {"authToken": token}});
    secrets
        .patch(
            "remote-signer-keystore",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_token_secret_is_a_condition_and_an_event_until_it_exists() {
    let s = setup("nosecret", three_workers(100)).await;
    let before = baseline(&s).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    let spec = json!({"maxExperiments": 2,
        "payment": {"tokenSecretRef": {"name": "absent", "key": "authToken"}}});
    s.api
        .create(&PostParams::default(), &campaign("nosecret", &s.tb, spec))
        .await
        .unwrap();
    let stalled = wait_stalled(
        &s,
        "nosecret",
        ("InputsReady", "False", "InputMissing"),
        "InputMissing",
        &[&controller],
    )
    .await;
    let message = &stalled.status.unwrap().conditions;
    assert!(
        message.iter().any(|c| c.message.contains("Secret absent")),
        "{message:?}"
    );
    // Naming the Secret that exists lets it run.
    let fix = json!({"spec": {"payment": {"tokenSecretRef": {"name": "remote-signer-keystore", "key": "authToken"}}}});
    s.api
        .patch("nosecret", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    assert_recovers(
        &s,
        ("nosecret", 2),
        ("InputsReady", "True"),
        &before,
        &controller,
    )
    .await;
}

#[tokio::test]
async fn a_signer_answering_401_mid_campaign_is_signer_failed_until_the_token_is_fixed() {
    signer_outage("signer401", Outage::WrongToken).await;
}

#[tokio::test]
async fn a_signer_down_mid_campaign_is_signer_failed_until_it_is_back() {
    signer_outage("signerdown", Outage::Down).await;
}

/// How the signer fails mid-campaign.
#[derive(Clone, Copy)]
enum Outage {
    /// The token Secret holds a wrong token: every request answers 401.
    WrongToken,
    /// Nothing listens at the signer's address (connection refused).
    Down,
}

impl Outage {
    async fn start(self, s: &Setup) {
        match self {
            Outage::WrongToken => set_token(s, "not-the-token").await,
            Outage::Down => set_signer_url(s, "http://127.0.0.1:9").await,
        }
    }

    async fn end(self, s: &Setup) {
        match self {
            Outage::WrongToken => set_token(s, s.tb.m["signer"]["token"].as_str().unwrap()).await,
            Outage::Down => set_signer_url(s, s.tb.m["signer"]["url"].as_str().unwrap()).await,
        }
    }
}

async fn set_signer_url(s: &Setup, url: &str) {
    let patch = json!({"spec": {"payment": {"remoteSignerUrl": url}}});
    s.api
        .patch("signer", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Two experiments in, the signer fails: SignerFailed (Event and condition), Progressing=False,
/// nothing paid meanwhile; once it is back the campaign finishes, each experiment paid once.
async fn signer_outage(prefix: &str, outage: Outage) {
    let s = setup(prefix, three_workers(300)).await;
    let before = baseline(&s).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    let spec = json!({"maxExperiments": 6, "parallelism": 1});
    s.api
        .create(&PostParams::default(), &campaign("signer", &s.tb, spec))
        .await
        .unwrap();
    wait_for(&s.api, "signer", 60, "2 finished", &[&controller], |c| {
        c.status.as_ref().is_some_and(|st| st.succeeded >= 2)
    })
    .await;
    outage.start(&s).await;
    wait_stalled(
        &s,
        "signer",
        ("SignerReady", "False", "SignerFailed"),
        "SignerFailed",
        &[&controller],
    )
    .await;
    // What was sent before the outage (a voucher signed ahead goes out as its worker answers)
    // finishes and is paid; a voucher signed ahead and not yet sent is dropped. Nothing new may be.
    let settled = wait_for(
        &s.api,
        "signer",
        30,
        "in flight done",
        &[&controller],
        |c| c.status.as_ref().is_some_and(|st| st.ledger.is_empty()),
    )
    .await;
    let paid = settled.status.unwrap().spent;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = s.api.get("signer").await.unwrap().status.unwrap();
    assert_eq!(later.spent, paid, "paid while the signer failed");

    outage.end(&s).await;
    assert_recovers(
        &s,
        ("signer", 6),
        ("SignerReady", "True"),
        &before,
        &controller,
    )
    .await;
}

#[tokio::test]
async fn an_unwritable_results_file_is_a_condition_and_loses_nothing() {
    let s = setup("unwritable", three_workers(200)).await;
    let before = baseline(&s).await;
    // A folder where results.jsonl should be: no append can open it, even as root.
    let path = s.data.path().join("autoresearch/results.jsonl");
    std::fs::create_dir_all(&path).unwrap();
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    let spec = json!({"maxExperiments": 3, "parallelism": 1});
    s.api
        .create(&PostParams::default(), &campaign("unwritable", &s.tb, spec))
        .await
        .unwrap();
    let stalled = wait_stalled(
        &s,
        "unwritable",
        ("ResultsWritable", "False", "ResultsUnwritable"),
        "ResultsUnwritable",
        &[&controller],
    )
    .await;
    let held = stalled.status.unwrap();
    assert_eq!((held.succeeded, held.ledger.len()), (0, 1), "{held:?}");

    std::fs::remove_dir(&path).unwrap();
    assert_recovers(
        &s,
        ("unwritable", 3),
        ("ResultsWritable", "True"),
        &before,
        &controller,
    )
    .await;
}

#[tokio::test]
async fn two_campaigns_sharing_one_worker_never_both_claim_it() {
    share_one_worker("shared", [11, 12]).await;
}

/// Both campaigns run the same train.py with the same seed, so their experiment ids are equal
/// (an id is train.py's and the config's hash): the worker board, keyed on the id, lets both
/// claim the worker at once. Campaign-unique ids (salted with the campaign's uid) fix it.
#[tokio::test]
async fn two_campaigns_with_the_same_experiment_ids_never_both_claim_one_worker() {
    share_one_worker("sameids", [11, 11]).await;
}

/// Two campaigns with search seeds `seeds` on one worker that runs one experiment at a time.
async fn share_one_worker(prefix: &str, seeds: [u64; 2]) {
    let testbed =
        json!({"workers": [{"name": "solo", "gate": "v2", "price": "10000", "durationMs": 600}]});
    let s = setup(prefix, testbed).await;
    let before = baseline(&s).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    for (name, seed) in ["left", "right"].into_iter().zip(seeds) {
        let spec = json!({"maxExperiments": 3, "parallelism": 2, "search": {"seed": seed}});
        s.api
            .create(&PostParams::default(), &campaign(name, &s.tb, spec))
            .await
            .unwrap();
    }
    // The worker runs one experiment at a time: at no moment do both ledgers hold it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let statuses: Vec<_> = loop {
        let both = [
            s.api.get("left").await.unwrap(),
            s.api.get("right").await.unwrap(),
        ];
        // A voucher signed ahead waits for the worker on the board; it is not a claim on it.
        let sent = |st: &autoresearch_coordinator::crd::ExperimentCampaignStatus| {
            st.ledger
                .iter()
                .filter(|e| e.payment_state != Some(PaymentState::SignedAhead))
                .count()
        };
        let holding: usize = both.iter().map(|c| c.status.as_ref().map_or(0, sent)).sum();
        assert!(holding <= 1, "two claims on one worker: {both:#?}");
        if both.iter().all(support::controller::is_final) {
            break both.into_iter().map(|c| c.status.unwrap()).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            controller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for st in &statuses {
        // A second claim would have met the worker's 409 busy.
        assert_eq!((st.succeeded, st.worker_failures), (3, 0), "{st:?}");
    }
    let pairs = [("left", &statuses[0]), ("right", &statuses[1])];
    assert_campaigns_match_chain(&s, &pairs, &before).await;
}

/// The controller's `autoresearch_status_conflicts_total`.
async fn conflicts(controller: &Controller) -> u64 {
    let (_, metrics) = controller.http_get("/metrics").await.unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("autoresearch_status_conflicts_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Another writer of the campaign's status (another tool, or a second controller) keeps its own
/// condition there while the controller works: the controller's writes meet 409 Conflict, are
/// applied again on the latest status, and neither side's change is lost.
#[tokio::test]
async fn a_second_status_writer_meets_conflicts_and_nothing_is_lost() {
    let s = setup("writers", three_workers(300)).await;
    let before = baseline(&s).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    let spec = json!({"maxExperiments": 6, "parallelism": 3});
    s.api
        .create(&PostParams::default(), &campaign("writers", &s.tb, spec))
        .await
        .unwrap();
    let api = s.api.clone();
    let writer = tokio::spawn(async move {
        let mut writes = 0u32;
        loop {
            let mut c = api.get("writers").await.unwrap();
            if support::controller::is_final(&c) {
                return writes;
            }
            let status = c.status.get_or_insert_with(Default::default);
            status.conditions.retain(|k| k.type_ != "ExternalNote");
            status.conditions.push(external_note(writes));
            if api
                .replace_status("writers", &PostParams::default(), &c)
                .await
                .is_ok()
            {
                writes += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let status = wait_done(&s.api, "writers", 120, &[&controller]).await;
    let writes = writer.await.unwrap();
    assert!(writes > 0);
    assert!(
        conflicts(&controller).await > 0,
        "no write conflict: the test did not test the conflict path"
    );
    let note = status.conditions.iter().find(|c| c.type_ == "ExternalNote");
    assert!(
        note.is_some(),
        "the controller dropped the other writer's condition"
    );
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), 6)
    );
    assert_books_match_chain(&s, "writers", &status, &before).await;
}

fn external_note(n: u32) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "ExternalNote".into(),
        status: "True".into(),
        reason: "Noted".into(),
        message: format!("write {n}"),
        observed_generation: None,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    }
}

/// Two leaders at once (two leases: a split brain). Status writes conflict and are applied
/// again, a result both finish is written once per nonce, and a decision built on a strategy
/// state the other moved on is dropped. Before THINK each leader reads the results.jsonl lines
/// appended since it last read, so it does not propose again what the other has finished; a
/// reservation needs the experiment still pending on the latest status, so only one of two
/// claims of one experiment is paid. One leader per campaign (the Lease) is still the design.
///
/// Ignored: it still fails in about 2 of 6 runs. Each leader resumes the other's live ledger
/// entries as orphans, and each board lets it send to a worker the other has busy, so one
/// leader can give an attempt up as unpaid (a 409) while the other's re-send of the same voucher
/// runs and is paid; the experiment is then retried and paid again, or more than
/// `maxExperiments` are paid (docs/faults.md).
#[tokio::test]
#[ignore = "two leaders at once can still pay twice (docs/faults.md)"]
async fn two_leaders_at_once_pay_each_experiment_once() {
    let s = setup("twoctl", three_workers(300)).await;
    let before = baseline(&s).await;
    let a = Controller::start_with(&s.ns, s.data.path(), "ctl-a", &[("LEASE_NAME", "lease-a")]);
    let b = Controller::start_with(&s.ns, s.data.path(), "ctl-b", &[("LEASE_NAME", "lease-b")]);
    let spec = json!({"maxExperiments": 6, "parallelism": 3});
    s.api
        .create(&PostParams::default(), &campaign("twoctl", &s.tb, spec))
        .await
        .unwrap();
    let status = wait_done(&s.api, "twoctl", 120, &[&a, &b]).await;
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), 6)
    );
    assert!(conflicts(&a).await + conflicts(&b).await > 0);
    assert_books_match_chain(&s, "twoctl", &status, &before).await;
}

fn signal(controller: &Controller, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &controller.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn a_leader_frozen_past_its_lease_pays_nothing_the_new_leader_pays() {
    let s = setup("frozen", three_workers(1500)).await;
    let before = baseline(&s).await;
    let a = Controller::start(&s.ns, s.data.path(), "ctl-a");
    a.wait_leader(30).await;
    let b = Controller::start(&s.ns, s.data.path(), "ctl-b");
    let spec = json!({"maxExperiments": 8, "parallelism": 2});
    s.api
        .create(&PostParams::default(), &campaign("frozen", &s.tb, spec))
        .await
        .unwrap();
    wait_for(
        &s.api,
        "frozen",
        60,
        "1 finished, 2 in flight",
        &[&a, &b],
        |c| {
            c.status
                .as_ref()
                .is_some_and(|st| st.succeeded >= 1 && st.ledger.len() == 2)
        },
    )
    .await;
    signal(&a, "-STOP");
    // Past the 4 s lease: the standby takes over and resumes what `a` had in flight.
    b.wait_leader(30).await;
    let progressed = s.api.get("frozen").await.unwrap().status.unwrap().succeeded;
    wait_for(
        &s.api,
        "frozen",
        60,
        "the new leader finished more",
        &[&a, &b],
        |c| {
            c.status
                .as_ref()
                .is_some_and(|st| st.succeeded >= progressed + 2)
        },
    )
    .await;
    signal(&a, "-CONT");
    let status = wait_done(&s.api, "frozen", 120, &[&a, &b]).await;
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), 8)
    );
    let (_, ready_a) = a.http_get("/readyz").await.unwrap();
    assert!(ready_a.contains("standby"), "{ready_a}");
    assert_books_match_chain(&s, "frozen", &status, &before).await;
}

/// The test API server's `host:port`.
fn api_server() -> String {
    std::fs::read_to_string(support::kubeconfig())
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server: https://")
                .map(str::to_string)
        })
        .expect("a server line in the kubeconfig")
}

/// A copy of the test cluster's kubeconfig that reaches the API server through `port`.
fn kubeconfig_through(port: u16, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(support::kubeconfig()).unwrap();
    let path = dir.join("through-proxy.kubeconfig");
    std::fs::write(
        &path,
        text.replace(&api_server(), &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_unreachable_for_20_s_mid_campaign() {
    let s = setup("partition", three_workers(800)).await;
    let before = baseline(&s).await;
    let proxy = support::proxy::Proxy::start(api_server()).await;
    let kubeconfig = kubeconfig_through(proxy.port, s.data.path());
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let controller = Controller::start_with(&s.ns, s.data.path(), "ctl", &env);
    let spec = json!({"maxExperiments": 8, "parallelism": 2});
    s.api
        .create(&PostParams::default(), &campaign("partition", &s.tb, spec))
        .await
        .unwrap();
    wait_for(
        &s.api,
        "partition",
        60,
        "2 in flight",
        &[&controller],
        |c| {
            c.status
                .as_ref()
                .is_some_and(|st| st.succeeded >= 1 && st.ledger.len() == 2)
        },
    )
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.restore();
    let status = wait_done(&s.api, "partition", 120, &[&controller]).await;
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), 8)
    );
    assert_books_match_chain(&s, "partition", &status, &before).await;
}

/// Three pending copies of a 600 KB baseConfig once passed etcd's 1.5 MiB limit and stalled the
/// campaign with StatusTooLarge. Configs over 2 KiB now live on the data volume by hash, so the
/// same campaign completes with a small status, and every result line keeps the whole config.
/// (The StatusTooLarge path itself: `controller::store::tests::size_refusals_are_told_from_other_errors`
/// and `publish::too_large`.)
#[tokio::test]
async fn a_600_kb_base_config_at_parallelism_3_keeps_status_small_and_completes() {
    let s = setup("toolarge", three_workers(100)).await;
    let before = baseline(&s).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    let blob = "x".repeat(600 * 1024);
    let spec =
        json!({"maxExperiments": 2, "parallelism": 3, "baseConfig": {"depth": 8, "blob": blob}});
    s.api
        .create(&PostParams::default(), &campaign("large", &s.tb, spec))
        .await
        .unwrap();
    let status = wait_done(&s.api, "large", 120, &[&controller]).await;
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "{:?}",
        status.conditions
    );
    let size = serde_json::to_vec(&status).unwrap().len();
    assert!(size < 64 * 1024, "status holds {size} bytes");
    assert!(
        !status
            .conditions
            .iter()
            .any(|c| c.type_ == "StatusTooLarge" && c.status == "True"),
        "{:?}",
        status.conditions
    );
    let lines = support::onchain::assert_lines_match_chain(&s, &["large"], &before).await;
    assert!(lines.len() >= 2, "{lines:#?}");
    for line in &lines {
        assert_eq!(
            line["config"]["blob"].as_str().map(str::len),
            Some(600 * 1024)
        );
    }
}
