//! The controller end to end: a real API server, real payments on anvil through the reference
//! x402 gates, stand-in workers that run the submitted train.py (testbed/payments), and the controller
//! binary as a process — killed, restarted and doubled to check the invariants of design.md.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use alloy::primitives::U256;
use autoresearch_coordinator::crd::Phase;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::controller::{
    Controller, campaign, campaign_events, in_flight, is_final, paid_to_workers, results, setup,
    three_workers, unique_ids, wait_done, wait_for,
};
use support::testbed::Testbed;

#[tokio::test]
async fn twelve_experiments_over_three_workers_are_each_paid_once() {
    let s = setup("twelve", three_workers(300)).await;
    let payer_before = s.tb.balance(s.tb.payer()).await;
    let payees_before = paid_to_workers(&s.tb).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl-a");
    s.api
        .create(
            &PostParams::default(),
            &campaign("twelve", &s.tb, json!({})),
        )
        .await
        .unwrap();

    let status = wait_done(&s.api, "twelve", 120, &[&controller]).await;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(
        (status.succeeded, status.failed, status.running),
        (12, 0, 0)
    );
    assert_eq!(status.spent.as_deref(), Some("0.12"));
    assert_eq!(status.progress.as_deref(), Some("12/12"));
    assert!(status.ledger.is_empty() && status.pending.is_empty());
    assert_eq!(status.leaderboard.len(), 10);
    // The best is the verified result: one of the ten, at the mean of its agreeing runs, so
    // never below the lowest claim.
    let best = status.best.as_ref().unwrap();
    assert!(
        status
            .leaderboard
            .iter()
            .any(|r| r.experiment_id == best.experiment_id),
        "{status:?}"
    );
    assert!(best.val_bpb >= status.leaderboard[0].val_bpb, "{status:?}");

    // Exactly 12 × price left the payer and reached the payees, on chain.
    assert_eq!(
        paid_to_workers(&s.tb).await - payees_before,
        U256::from(120_000)
    );
    assert_eq!(
        payer_before - s.tb.balance(s.tb.payer()).await,
        U256::from(120_000)
    );

    let lines = results(s.data.path());
    assert_eq!(lines.len(), 12);
    assert_eq!(unique_ids(&lines), 12);
    assert!(
        lines
            .iter()
            .all(|l| l["campaign_name"] == "twelve" && l["campaign_namespace"] == s.ns.as_str())
    );
    assert!(lines.iter().all(|l| {
        l["payment_tx"]
            .as_str()
            .is_some_and(|t| t.starts_with("0x"))
    }));
    // Each result is what train.py printed for its config on the worker that ran it.
    support::assert_measured_by_landscape(&lines);

    // kubectl agrees with the status.
    let (out, _) = support::kubectl_eventually(&["get", "campaigns", "-n", &s.ns]);
    let row: Vec<_> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["twelve", "Succeeded", "12/12"], "{out}");
    assert_eq!(row[5], "0.12", "{out}");

    // Events and conditions for `kubectl describe`.
    let (events, _) = support::kubectl_eventually(&["get", "events", "-n", &s.ns, "-o", "json"]);
    let events: Value = serde_json::from_str(&events).unwrap();
    let reasons: HashSet<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains("ExperimentStarted") && reasons.contains("NewBest"),
        "{reasons:?}"
    );
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .unwrap();
    assert_eq!(
        (complete.status.as_str(), complete.reason.as_str()),
        ("True", "MaxExperimentsReached")
    );

    // Metrics count what happened.
    let (code, metrics) = controller.http_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("autoresearch_experiments_total{result=\"succeeded\"} 12"),
        "{metrics}"
    );
    assert!(
        metrics.contains("autoresearch_usdc_spent_atomic_total{network=\"base-sepolia\"} 120000"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_killed_controller_is_resumed_without_paying_twice_or_losing_a_result() {
    let s = setup("sigkill", three_workers(2500)).await;
    let payees_before = paid_to_workers(&s.tb).await;
    let mut first = Controller::start(&s.ns, s.data.path(), "ctl-first");
    let spec = json!({"maxExperiments": 9, "parallelism": 3});
    s.api
        .create(&PostParams::default(), &campaign("resume", &s.tb, spec))
        .await
        .unwrap();

    // Kill it while three experiments are paid and running.
    wait_for(&s.api, "resume", 60, "3 in flight", &[&first], |c| {
        c.status
            .as_ref()
            .is_some_and(|st| st.ledger.len() == 3 && st.succeeded >= 1)
    })
    .await;
    first.kill();
    // The ledger as the dead controller left it: nobody writes status until the next starts.
    let left_in_flight = in_flight(&s.api.get("resume").await.unwrap());
    assert!(!left_in_flight.is_empty());
    // An entry whose line was appended before the kill is finished from that line, not resumed.
    let appended: HashSet<String> = results(s.data.path())
        .iter()
        .map(|l| l["experiment_id"].as_str().unwrap().to_string())
        .collect();
    let second = Controller::start(&s.ns, s.data.path(), "ctl-second");
    let status = wait_done(&s.api, "resume", 180, &[&first, &second]).await;
    assert_eq!(
        (status.phase, status.succeeded, status.failed),
        (Some(Phase::Succeeded), 9, 0),
        "{status:?}"
    );
    // The second controller resumed each entry the first left in the ledger (Events from the
    // API server, not a log line).
    let resumed: HashSet<String> = campaign_events(&s.client, &s.ns, "resume")
        .await
        .into_iter()
        .filter(|e| e.reason == "ExperimentResumed" && e.instance == "ctl-second")
        .map(|e| {
            e.note
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let expected: HashSet<String> = left_in_flight.difference(&appended).cloned().collect();
    assert_eq!(resumed, expected, "resumed experiments");

    // Each of the 9 experiments was paid exactly once and recorded exactly once.
    assert_eq!(
        paid_to_workers(&s.tb).await - payees_before,
        U256::from(90_000)
    );
    assert_eq!(status.spent.as_deref(), Some("0.09"));
    let lines = results(s.data.path());
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert_eq!(unique_ids(&lines), 9);
}

#[tokio::test]
async fn only_the_leader_works_and_a_standby_takes_over() {
    let s = setup("leader", three_workers(1500)).await;
    let payees_before = paid_to_workers(&s.tb).await;
    let mut a = Controller::start(&s.ns, s.data.path(), "ctl-a");
    // Let `a` take the lease before `b` starts, so we know who leads.
    a.wait_leader(30).await;
    let b = Controller::start(&s.ns, s.data.path(), "ctl-b");
    s.api
        .create(
            &PostParams::default(),
            &campaign("ha", &s.tb, json!({"maxExperiments": 9, "parallelism": 3})),
        )
        .await
        .unwrap();
    wait_for(&s.api, "ha", 60, "2 finished", &[&a, &b], |c| {
        c.status.as_ref().is_some_and(|st| st.succeeded >= 2)
    })
    .await;
    let (_, ready_b) = b.http_get("/readyz").await.unwrap();
    assert!(ready_b.contains("standby"), "{ready_b}");
    let from_b: Vec<_> = campaign_events(&s.client, &s.ns, "ha")
        .await
        .into_iter()
        .filter(|e| e.instance == "ctl-b")
        .collect();
    assert!(from_b.is_empty(), "the standby published: {from_b:#?}");
    let from_a = campaign_events(&s.client, &s.ns, "ha").await;
    assert!(
        from_a
            .iter()
            .any(|e| e.reason == "ExperimentStarted" && e.instance == "ctl-a"),
        "{from_a:#?}"
    );

    a.kill();
    let status = wait_done(&s.api, "ha", 180, &[&a, &b]).await;
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), 9),
        "{status:?}"
    );
    assert!(b.http_get("/readyz").await.unwrap().1.contains("leader"));
    assert_eq!(
        paid_to_workers(&s.tb).await - payees_before,
        U256::from(90_000)
    );
    assert_eq!(unique_ids(&results(s.data.path())), 9);
}

#[tokio::test]
async fn the_budget_stops_the_campaign_exactly_with_parallel_experiments() {
    let s = setup("budget", three_workers(400)).await;
    let payees_before = paid_to_workers(&s.tb).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    // 0.055 USDC pays five 0.01 experiments, not six, whatever the parallelism.
    let spec = json!({"maxExperiments": 20, "parallelism": 3, "budget": {"total": "0.055", "maxPricePerExperiment": "0.01"}});
    s.api
        .create(&PostParams::default(), &campaign("budget", &s.tb, spec))
        .await
        .unwrap();
    let status = wait_done(&s.api, "budget", 120, &[&controller]).await;
    assert_eq!(status.phase, Some(Phase::BudgetExhausted), "{status:?}");
    assert_eq!(status.succeeded, 5);
    assert_eq!(status.spent.as_deref(), Some("0.05"));
    assert_eq!(
        paid_to_workers(&s.tb).await - payees_before,
        U256::from(50_000)
    );
    assert_eq!(results(s.data.path()).len(), 5);

    // Raising the budget resumes the campaign.
    let patch = json!({"spec": {"budget": {"total": "0.075", "maxPricePerExperiment": "0.01"}}});
    s.api
        .patch("budget", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let done = wait_for(&s.api, "budget", 120, "7 succeeded", &[&controller], |c| {
        is_final(c) && c.status.as_ref().is_some_and(|st| st.succeeded == 7)
    })
    .await;
    assert_eq!(done.status.unwrap().phase, Some(Phase::BudgetExhausted));
    assert_eq!(
        paid_to_workers(&s.tb).await - payees_before,
        U256::from(70_000)
    );
}

/// A campaign limited to some of the testbed's workers.
fn on_workers(tb: &Testbed, names: &[&str], mut spec: Value) -> Value {
    let workers: Vec<Value> = names
        .iter()
        .map(|n| json!({"endpoint": tb.worker(n)["endpoint"], "name": n}))
        .collect();
    spec["discovery"] = json!({"scanApiUrl": "", "onChain": {"mode": "never"}, "workers": workers});
    spec
}

fn endpoint(tb: &Testbed, name: &str) -> String {
    tb.worker(name)["endpoint"].as_str().unwrap().to_string()
}

async fn paid_to(tb: &Testbed, names: &[&str]) -> U256 {
    let mut total = U256::ZERO;
    for n in names {
        total += tb.balance(tb.pay_to(n)).await;
    }
    total
}

#[tokio::test]
async fn failing_and_lying_workers_fail_over_and_are_never_recorded_as_results() {
    let testbed = json!({"workers": [
        {"name": "good", "gate": "v2", "price": "10000", "durationMs": 200},
        {"name": "crash", "gate": "obol", "price": "10000", "durationMs": 100, "faults": {"failBeforePayment": true}},
        {"name": "busy", "gate": "v1", "price": "10000", "durationMs": 100, "faults": {"busy": true}},
        {"name": "liar", "gate": "v2", "price": "10000", "durationMs": 100, "faults": {"lie": "nan"}},
        {"name": "lost500", "gate": "obol", "price": "10000", "durationMs": 100, "faults": {"failAfterPayment": true, "lostAnswer": "500"}},
        {"name": "dropper", "gate": "v1", "price": "10000", "durationMs": 100, "faults": {"failAfterPayment": true, "lostAnswer": "drop"}}
    ]});
    let s = setup("faults", testbed).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    // Three experiments on three workers at once: every worker gets one in the first round.
    let base = json!({"maxExperiments": 3, "parallelism": 3, "maxFailedExperiments": 5});
    let failing = ["crash", "busy", "good"];
    let lossy = ["liar", "lost500", "dropper"];
    let paid_before = paid_to(&s.tb, &lossy).await;
    for (name, workers) in [("failover", &failing), ("lossy", &lossy)] {
        let spec = on_workers(&s.tb, workers.as_slice(), base.clone());
        s.api
            .create(&PostParams::default(), &campaign(name, &s.tb, spec))
            .await
            .unwrap();
    }

    // 500 before payment and 409: nothing paid, the experiments go to the good worker.
    let status = wait_done(&s.api, "failover", 120, &[&controller]).await;
    assert_eq!(
        (status.phase, status.succeeded, status.failed),
        (Some(Phase::Succeeded), 3, 0),
        "{status:?}"
    );
    assert!(status.worker_failures >= 2, "{status:?}");
    assert!(
        status
            .leaderboard
            .iter()
            .all(|r| r.worker == endpoint(&s.tb, "good")),
        "{status:?}"
    );
    assert_eq!(
        status.spent.as_deref(),
        Some("0.03"),
        "the failed attempts paid nothing"
    );
    assert_eq!(paid_to(&s.tb, &["crash", "busy"]).await, U256::ZERO);

    // A liar is paid (its gate settled on a 200) but its NaN is not a result; answers lost after
    // payment (a 500, a dropped connection) are recovered with GET /experiments/<id>: each
    // experiment is paid once and none is sent elsewhere.
    let status = wait_done(&s.api, "lossy", 120, &[&controller]).await;
    assert_eq!((status.succeeded, status.failed), (2, 1), "{status:?}");
    let liar = endpoint(&s.tb, "liar");
    assert!(status.leaderboard.iter().all(|r| r.worker != liar));
    assert_eq!(
        paid_to(&s.tb, &lossy).await - paid_before,
        U256::from(30_000)
    );
    assert_eq!(status.spent.as_deref(), Some("0.03"));

    // Both campaigns run the same train.py and seed, so they share experiment ids (an id is the
    // hash of train.py and config); each campaign records each of its experiments once.
    let lines = results(s.data.path());
    for name in ["failover", "lossy"] {
        let mine: Vec<Value> = lines
            .iter()
            .filter(|l| l["campaign_name"] == name)
            .cloned()
            .collect();
        assert_eq!((unique_ids(&mine), mine.len()), (3, 3), "{name}: {mine:#?}");
    }
    for l in lines
        .iter()
        .filter(|l| l["worker_endpoint"] == liar.as_str())
    {
        assert!(
            l["val_bpb"].is_null(),
            "a lying worker's answer was recorded: {l}"
        );
    }
    let lossy_lines: Vec<Value> = lines
        .iter()
        .filter(|l| l["campaign_name"] == "lossy")
        .cloned()
        .collect();
    assert_eq!(ledger_total(&lossy_lines), "0.03");
}

fn atomic_total(lines: &[Value]) -> u128 {
    lines
        .iter()
        .map(|l| l["amount"].as_str().unwrap().parse::<u128>().unwrap())
        .sum()
}

fn ledger_total(lines: &[Value]) -> String {
    autoresearch_coordinator::usdc::Usdc::from_atomic(atomic_total(lines)).to_string()
}

/// Experiments a campaign knows of (finished or in flight) in `status`.
/// Experiments finished or sent. A voucher signed ahead and not sent is left out: suspending
/// drops it unsent, and it never reaches a worker.
fn known(status: &autoresearch_coordinator::crd::ExperimentCampaignStatus) -> usize {
    (status.succeeded + status.failed) as usize + sent(status)
}

/// Ledger entries whose voucher was sent (not signed ahead and waiting).
fn sent(status: &autoresearch_coordinator::crd::ExperimentCampaignStatus) -> usize {
    status
        .ledger
        .iter()
        .filter(|e| !autoresearch_coordinator::ledger::is_ahead(e))
        .count()
}

/// Waits until results.jsonl holds `n` lines (in-flight experiments finishing), up to 30 s.
async fn wait_lines(data: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lines = results(data);
        if lines.len() >= n || tokio::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn suspend_pauses_and_deleting_a_campaign_stops_its_payments_but_keeps_its_results() {
    let s = setup("lifecycle", three_workers(700)).await;
    let payees_before = paid_to_workers(&s.tb).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    let spec = json!({"maxExperiments": 40, "parallelism": 2});
    s.api
        .create(&PostParams::default(), &campaign("life", &s.tb, spec))
        .await
        .unwrap();
    wait_for(&s.api, "life", 60, "2 finished", &[&controller], |c| {
        c.status.as_ref().is_some_and(|st| st.succeeded >= 2)
    })
    .await;

    // Suspend: in-flight experiments finish, nothing new starts. The baseline is the status
    // the patch itself stored: any experiment started after it would show up as one more.
    let patched = s
        .api
        .patch(
            "life",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    let at_suspend = known(&patched.status.unwrap());
    let suspended = wait_for(&s.api, "life", 60, "Suspended", &[&controller], |c| {
        c.status
            .as_ref()
            .is_some_and(|st| st.phase == Some(Phase::Suspended))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = s.api.get("life").await.unwrap().status.unwrap();
    assert_eq!(
        known(&status),
        at_suspend,
        "started while suspended: {status:?}"
    );
    assert_eq!(
        paid_to_workers(&s.tb).await - payees_before,
        U256::from(10_000 * at_suspend as u64),
        "paid while suspended"
    );
    let done_at_suspend = suspended.status.unwrap().succeeded;

    // Resume, then delete while experiments are in flight.
    s.api
        .patch(
            "life",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    wait_for(
        &s.api,
        "life",
        60,
        "more finished and 2 in flight",
        &[&controller],
        |c| {
            c.status
                .as_ref()
                .is_some_and(|st| st.succeeded >= done_at_suspend + 2 && sent(st) == 2)
        },
    )
    .await;
    // The baseline is the campaign as it was deleted: the delete carries its resourceVersion
    // as a precondition, so it only happens if nothing changed since this read.
    let at_delete = loop {
        let c = s.api.get("life").await.unwrap();
        let pre = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: c.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match s.api.delete("life", &pre).await {
            Ok(_) => break known(&c.status.unwrap()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("delete: {e}"),
        }
    };
    // What was in flight finishes (it is paid) and is recorded; nothing new is paid.
    let lines = wait_lines(s.data.path(), at_delete).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paid = paid_to_workers(&s.tb).await - payees_before;
    assert_eq!(
        paid,
        U256::from(10_000 * at_delete as u64),
        "paid after the campaign was deleted"
    );

    // Every experiment paid for has its line in results.jsonl, once.
    assert_eq!(lines.len(), at_delete, "{lines:#?}");
    assert_eq!(results(s.data.path()).len(), at_delete);
    assert_eq!(unique_ids(&lines), lines.len());
}

#[tokio::test]
async fn sigterm_stops_new_work_and_the_next_leader_resumes_at_once() {
    let s = setup("sigterm", three_workers(1500)).await;
    let payees_before = paid_to_workers(&s.tb).await;
    // A long lease: if SIGTERM did not release it, the next leader would wait 20 s.
    let long_lease = [("LEASE_SECONDS", "20")];
    let mut first = Controller::start_with(&s.ns, s.data.path(), "ctl-first", &long_lease);
    let spec = json!({"maxExperiments": 6, "parallelism": 3});
    s.api
        .create(&PostParams::default(), &campaign("term", &s.tb, spec))
        .await
        .unwrap();
    wait_for(
        &s.api,
        "term",
        60,
        "experiments in flight",
        &[&first],
        |c| c.status.as_ref().is_some_and(|st| !st.ledger.is_empty()),
    )
    .await;
    let status = first.terminate();
    assert!(status.success(), "exit {status:?}\n{}", first.log_text());
    assert!(first.log_text().contains("SIGTERM"), "{}", first.log_text());

    // The lease was released: a new controller leads well before the old lease would expire.
    let started = tokio::time::Instant::now();
    let second = Controller::start_with(&s.ns, s.data.path(), "ctl-second", &long_lease);
    while !second
        .http_get("/readyz")
        .await
        .is_some_and(|(_, b)| b.contains("leader"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lease was not released:\n{}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = wait_done(&s.api, "term", 120, &[&first, &second]).await;
    assert_eq!(
        (status.phase, status.succeeded),
        (Some(Phase::Succeeded), 6),
        "{status:?}"
    );
    assert_eq!(
        paid_to_workers(&s.tb).await - payees_before,
        U256::from(60_000)
    );
    assert_eq!(unique_ids(&results(s.data.path())), 6);
}

/// The controller watches the ConfigMaps campaigns read train.py from: a campaign waiting for
/// its ConfigMap starts as soon as the ConfigMap exists, not at its next retry (15 s after a
/// failed reconcile).
#[tokio::test]
async fn a_campaign_starts_as_soon_as_its_train_py_config_map_appears() {
    let s = setup("watch", three_workers(100)).await;
    let controller = Controller::start(&s.ns, s.data.path(), "ctl");
    let spec = json!({
        "trainScript": {"inline": null, "configMapKeyRef": {"name": "train", "key": "train.py"}},
        "maxExperiments": 2
    });
    s.api
        .create(&PostParams::default(), &campaign("watch", &s.tb, spec))
        .await
        .unwrap();
    // The first reconcile fails on the missing ConfigMap and is retried in 15 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = s.api.get("watch").await.unwrap();
    assert_eq!(waiting.status.as_ref().map_or(0, |st| st.submitted), 0);
    let client = support::client().await;
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, &s.ns);
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "train"},
        "data": {"train.py": support::TRAIN_LANDSCAPE}
    }))
    .unwrap();
    let created = std::time::Instant::now();
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    wait_for(
        &s.api,
        "watch",
        30,
        "an experiment started",
        &[&controller],
        |c| c.status.as_ref().is_some_and(|st| st.submitted > 0),
    )
    .await;
    let took = created.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "started {took:?} after the ConfigMap appeared: the watch did not trigger a reconcile"
    );
    let status = wait_done(&s.api, "watch", 60, &[&controller]).await;
    assert_eq!(status.succeeded, 2, "{status:?}");
}
