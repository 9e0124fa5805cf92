//! The engine's unit layer: whole reconciles against a [`MemoryStore`], the campaign's static
//! workers, and in-process fakes of the remote signer and x402 workers (`crate::testkit`). No
//! cluster, no chain: each test runs in well under a second, and asserts per experiment what
//! each fake worker settled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::*;
use crate::crd::{ExperimentCampaignSpec, LedgerEntry};
use crate::payment::{
    ExperimentRequest, Policy, Quote, Voucher, VoucherTerms, WorkerClient, new_nonce, sign_voucher,
    unix_now, x402,
};
use crate::testkit::{FakeSigner, FakeWorker};
use crate::usdc::Usdc;

/// Collects notices.
#[derive(Default)]
struct Notices(Mutex<Vec<Notice>>);

impl Notify for Notices {
    fn notify(&self, notice: Notice) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap().push(notice);
        Box::pin(async {})
    }
}

impl Notices {
    fn reasons(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|n| n.reason).collect()
    }
}

/// Records the best train.py it is given.
#[derive(Default)]
struct Kept(Mutex<Vec<(String, String)>>);

impl KeepBest for Kept {
    fn keep<'a>(&'a self, train_py: &'a str, train_hash: &'a str) -> BoxFuture<'a, Option<String>> {
        self.0
            .lock()
            .unwrap()
            .push((train_py.into(), train_hash.into()));
        Box::pin(async { Some("kept".to_string()) })
    }
}

/// An engine with one campaign in memory, a fake signer and fake workers.
struct Harness {
    engine: Arc<Engine>,
    store: Arc<MemoryStore>,
    handle: CampaignHandle,
    notices: Arc<Notices>,
    signer: FakeSigner,
    workers: Vec<FakeWorker>,
    dir: tempfile::TempDir,
}

const TRAIN_PY: &str = "LR = 0.01\nprint('val_bpb: 1.0')\n";

fn spec(endpoints: &[String], extra: Value) -> ExperimentCampaignSpec {
    let mut spec = json!({
        "trainScript": {"inline": TRAIN_PY},
        "search": {"strategy": "list", "experiments": [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}, {"lr": 0.4}]},
        "maxExperiments": 4,
        "parallelism": 2,
        "budget": {"total": "1", "maxPricePerExperiment": "0.05"},
        "payment": {"network": "base-sepolia"},
        "discovery": {"workers": endpoints.iter().map(|e| json!({"endpoint": e})).collect::<Vec<_>>()},
    });
    merge(&mut spec, extra);
    serde_json::from_value(spec).expect("a valid spec")
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

impl Harness {
    async fn new(workers: usize, extra: Value) -> Self {
        let signer = FakeSigner::start().await;
        let mut fakes = Vec::new();
        for _ in 0..workers {
            fakes.push(FakeWorker::start().await);
        }
        let endpoints: Vec<String> = fakes.iter().map(FakeWorker::endpoint).collect();
        let dir = tempfile::tempdir().unwrap();
        Self::with(signer, fakes, dir, spec(&endpoints, extra), None)
    }

    /// A harness over an existing campaign (a restart: a fresh engine, same results file).
    fn with(
        signer: FakeSigner,
        workers: Vec<FakeWorker>,
        dir: tempfile::TempDir,
        spec: ExperimentCampaignSpec,
        status: Option<crate::crd::ExperimentCampaignStatus>,
    ) -> Self {
        let mut campaign = ExperimentCampaign::new("c", spec);
        campaign.metadata.namespace = Some("ns".into());
        campaign.metadata.generation = Some(1);
        campaign.status = status;
        let store = Arc::new(MemoryStore::new(campaign));
        let notices = Arc::new(Notices::default());
        let engine = Engine::new(
            Arc::new(StaticWorkers),
            ResultsLog::new(dir.path().join("results.jsonl")),
            Metrics::new(),
            Settings {
                job_poll: Duration::from_millis(50),
                worker_cooldown: Duration::from_millis(100),
                ..Settings::default()
            },
        );
        let handle = CampaignHandle {
            key: "ns/c".into(),
            namespace: Some("ns".into()),
            name: "c".into(),
            store: store.clone(),
            notify: notices.clone(),
            signer: Arc::new(signer.client()),
            train_py: TRAIN_PY.into(),
            best: None,
            proposer: None,
        };
        Self {
            engine,
            store,
            handle,
            notices,
            signer,
            workers,
            dir,
        }
    }

    /// A restart: a fresh engine over the same results file, signer and workers, with the
    /// campaign's status as the crash left it.
    fn restart(self, extra: Value, status: crate::crd::ExperimentCampaignStatus) -> Self {
        let spec = spec(&[self.workers[0].endpoint()], extra);
        Self::with(self.signer, self.workers, self.dir, spec, Some(status))
    }

    fn status(&self) -> crate::crd::ExperimentCampaignStatus {
        self.store.snapshot().unwrap().status.unwrap_or_default()
    }

    /// Reconciles until the campaign is final or `limit` passes; returns the last step.
    async fn run(&self, limit: Duration) -> Step {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let step = self
                .engine
                .reconcile(&self.handle)
                .await
                .expect("reconcile");
            let finished = step.phase.is_none_or(Phase::is_final)
                && self.engine.running_tasks(&self.handle.key) == 0;
            if finished || tokio::time::Instant::now() > deadline {
                return step;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.engine.changed.notified())
                    .await;
        }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("results.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Settlements of every worker, by experiment id.
    fn payments(&self, experiment_id: &str) -> usize {
        self.workers
            .iter()
            .map(|w| w.payments_for(experiment_id))
            .sum()
    }

    fn condition(&self, kind: &str) -> (String, String) {
        let status = self.status();
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind} condition in {:?}", status.conditions));
        (c.status.clone(), c.reason.clone())
    }

    /// A voucher for `experiment_id` on worker `w`, signed as the engine signs it.
    async fn voucher(&self, w: usize, experiment_id: &str) -> (Voucher, WorkerClient) {
        let client =
            WorkerClient::new(&self.workers[w].endpoint(), Duration::from_secs(30)).unwrap();
        let Quote::Priced(required) = client.quote().await.unwrap() else {
            panic!("the fake worker asks for payment");
        };
        let policy = Policy {
            networks: vec![crate::crd::Network::BaseSepolia],
            max_price: Usdc::from_atomic(50_000),
            extra_assets: Vec::new(),
        };
        let offer = x402::choose(&required, &policy).unwrap();
        let terms = VoucherTerms {
            experiment_id: experiment_id.into(),
            nonce: new_nonce(),
            from: None,
            run_timeout: Duration::from_secs(900),
        };
        let voucher = sign_voucher(&self.signer.client(), &offer, &terms, unix_now())
            .await
            .unwrap();
        (voucher, client)
    }
}

fn entry(experiment_id: &str, worker: &str, voucher: &Voucher, config: Value) -> LedgerEntry {
    LedgerEntry {
        experiment_id: experiment_id.into(),
        worker: worker.into(),
        agent_id: None,
        amount: voucher.amount.atomic().to_string(),
        nonce: voucher.nonce.to_string(),
        payment: serde_json::to_string(voucher).unwrap(),
        valid_before: voucher.valid_before,
        config: Some(config),
        attempt: 1,
        started_at: "2026-12-01T00:00:00Z".into(),
        ..LedgerEntry::default()
    }
}

#[tokio::test]
async fn a_campaign_runs_to_success_and_pays_each_experiment_exactly_once() {
    let h = Harness::new(2, json!({})).await;
    let step = h.run(Duration::from_secs(20)).await;
    assert_eq!(step.phase, Some(Phase::Succeeded));
    let status = h.status();
    assert_eq!((status.succeeded, status.failed, status.running), (4, 0, 0));
    assert_eq!(status.spent.as_deref(), Some("0.04"));
    assert_eq!(status.budget_left.as_deref(), Some("0.96"));
    let lines = h.lines();
    assert_eq!(lines.len(), 4);
    for line in &lines {
        let id = line["experiment_id"].as_str().unwrap();
        assert_eq!(h.payments(id), 1, "{id} paid once");
        assert_eq!(line["status"], "completed");
    }
    assert_eq!(
        h.condition("Succeeded"),
        ("True".into(), "MaxExperimentsReached".into())
    );
    assert_eq!(h.condition("Complete").0, "True");
    assert!(
        h.notices.reasons().contains(&"NewBest"),
        "{:?} {lines:#?}",
        h.notices.reasons()
    );
}

#[tokio::test]
async fn a_worker_failing_before_payment_is_retried_elsewhere_and_paid_once() {
    let h = Harness::new(2, json!({"parallelism": 1, "maxExperiments": 2})).await;
    // The failing worker is preferred, so every experiment is tried there first.
    let failing = h.workers[0].endpoint();
    let mut spec = h.store.snapshot().unwrap().spec;
    spec.discovery.prefer = vec![failing.clone()];
    h.store.set_spec(spec);
    h.workers[0].set(|k| k.fail_before_payment = u32::MAX);
    h.run(Duration::from_secs(20)).await;
    let status = h.status();
    assert!(status.worker_failures >= 1, "{status:?}");
    assert_eq!(status.succeeded, 2, "{status:?}");
    let lines = h.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(line["status"], "completed");
        assert_ne!(line["worker_endpoint"], failing.as_str());
        assert_eq!(h.payments(line["experiment_id"].as_str().unwrap()), 1);
    }
    assert_eq!(
        h.workers[0].total_paid(),
        Usdc::ZERO,
        "the failing worker was never paid"
    );
    assert!(h.notices.reasons().contains(&"WorkerFailed"));
}

#[tokio::test]
async fn a_lost_answer_after_payment_is_recovered_not_paid_again() {
    let h = Harness::new(1, json!({"parallelism": 1, "maxExperiments": 2})).await;
    h.workers[0].set(|k| k.fail_after_payment = 1);
    h.run(Duration::from_secs(20)).await;
    let status = h.status();
    assert_eq!(status.succeeded, 2, "{status:?}");
    for line in h.lines() {
        assert_eq!(h.payments(line["experiment_id"].as_str().unwrap()), 1);
    }
    assert_eq!(h.workers[0].runs().len(), 2, "nothing ran twice");
}

#[tokio::test]
async fn a_paid_failed_run_is_a_failed_experiment_never_retried() {
    let h = Harness::new(2, json!({"parallelism": 1, "maxExperiments": 1})).await;
    h.workers[0].set(|k| k.run_fails = u32::MAX);
    h.workers[1].set(|k| k.run_fails = u32::MAX);
    h.run(Duration::from_secs(20)).await;
    let status = h.status();
    assert_eq!((status.succeeded, status.failed), (0, 1));
    let lines = h.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], "failed");
    assert_eq!(h.payments(lines[0]["experiment_id"].as_str().unwrap()), 1);
    assert_eq!(
        status.spent.as_deref(),
        Some("0.01"),
        "a crashed run is paid"
    );
}

#[tokio::test]
async fn the_budget_stops_the_campaign_and_succeeded_stays_false() {
    let h = Harness::new(
        2,
        json!({"budget": {"total": "0.025", "maxPricePerExperiment": "0.01"}}),
    )
    .await;
    let step = h.run(Duration::from_secs(20)).await;
    assert_eq!(step.phase, Some(Phase::BudgetExhausted));
    let status = h.status();
    assert_eq!(status.succeeded, 2);
    assert_eq!(h.lines().len(), 2);
    assert_eq!(
        h.condition("Complete"),
        ("True".into(), "BudgetExhausted".into())
    );
    assert_eq!(
        h.condition("Succeeded"),
        ("False".into(), "BudgetExhausted".into())
    );
}

#[tokio::test]
async fn suspend_starts_nothing_and_unsuspending_resumes() {
    let h = Harness::new(1, json!({"suspend": true})).await;
    let step = h.run(Duration::from_millis(400)).await;
    assert_eq!(step.phase, Some(Phase::Suspended));
    assert_eq!(h.workers[0].total_paid(), Usdc::ZERO);
    assert_eq!(
        h.condition("Progressing"),
        ("False".into(), "Suspended".into())
    );
    let mut spec = h.store.snapshot().unwrap().spec;
    spec.suspend = false;
    h.store.set_spec(spec);
    assert_eq!(
        h.run(Duration::from_secs(20)).await.phase,
        Some(Phase::Succeeded)
    );
}

#[tokio::test]
async fn an_invalid_spec_is_refused_once_with_the_field_named_and_pays_nothing() {
    let h = Harness::new(
        1,
        json!({"search": {"strategy": "grid", "parameters": [{"name": "opt", "type": "choice"}]}}),
    )
    .await;
    for _ in 0..2 {
        let step = h.engine.reconcile(&h.handle).await.unwrap();
        assert_eq!(step.phase, Some(Phase::Failed));
    }
    let (ok, reason) = h.condition("SpecValid");
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    let message = &h.status().conditions[0].message;
    assert!(message.contains("opt"), "{message}");
    assert_eq!(
        h.notices.reasons(),
        ["InvalidSpec"],
        "one event, not one per reconcile"
    );
    assert_eq!(h.workers[0].total_paid(), Usdc::ZERO);
}

#[tokio::test]
async fn a_deleted_campaign_reports_no_phase_and_is_forgotten() {
    let h = Harness::new(1, json!({})).await;
    h.engine.reconcile(&h.handle).await.unwrap();
    assert_eq!(h.engine.remembered(), 1);
    h.store.delete();
    let step = h.engine.reconcile(&h.handle).await.unwrap();
    assert_eq!(step.phase, None);
    assert_eq!(h.engine.remembered(), 0);
}

/// After a restart a ledger entry is finished from what exists: a result already in
/// results.jsonl, a result stored at the worker, or the same voucher sent again; never a second
/// voucher.
#[tokio::test]
async fn each_ledger_state_is_resumed_without_paying_twice() {
    let h = Harness::new(1, json!({"parallelism": 3, "maxExperiments": 3})).await;
    let w = h.workers[0].endpoint();
    let config = |lr: f64| json!({"lr": lr});
    // (a) Recorded in results.jsonl before the crash, status not yet written.
    let (va, _) = h.voucher(0, "exp-a").await;
    let record = ResultRecord {
        experiment_id: "exp-a".into(),
        train_hash: crate::experiment::train_hash(TRAIN_PY),
        val_bpb: Some(0.9),
        worker_endpoint: w.clone(),
        status: Some("completed".into()),
        amount: Some("10000".into()),
        campaign_name: Some("c".into()),
        campaign_namespace: Some("ns".into()),
        ..ResultRecord::default()
    };
    h.engine.results().append(&record).await.unwrap();
    // (b) Sent, run and settled at the worker; the answer was lost with the crash.
    let (vb, client) = h.voucher(0, "exp-b").await;
    let request = ExperimentRequest {
        experiment_id: "exp-b".into(),
        train_py: TRAIN_PY.into(),
        config: config(0.2),
    };
    client.run(Some(&vb), &request).await.unwrap();
    // (c) Written to the ledger, never sent.
    let (vc, _) = h.voucher(0, "exp-c").await;
    let ledger = vec![
        entry("exp-a", &w, &va, config(0.1)),
        entry("exp-b", &w, &vb, config(0.2)),
        entry("exp-c", &w, &vc, config(0.3)),
    ];
    let status = crate::crd::ExperimentCampaignStatus {
        ledger,
        submitted: 3,
        ..Default::default()
    };
    let h = h.restart(json!({"parallelism": 3, "maxExperiments": 3}), status);
    h.run(Duration::from_secs(20)).await;
    let status = h.status();
    assert!(status.ledger.is_empty(), "{status:?}");
    assert_eq!(status.succeeded, 3, "{status:?}");
    assert_eq!(
        h.workers[0].payments_for("exp-a"),
        0,
        "(a) was never sent again"
    );
    assert_eq!(
        h.workers[0].payments_for("exp-b"),
        1,
        "(b) recovered, not paid again"
    );
    assert_eq!(
        h.workers[0].payments_for("exp-c"),
        1,
        "(c) sent once, with its voucher"
    );
    let settled_c: Vec<_> = h.workers[0]
        .settled()
        .into_iter()
        .filter(|s| s.2 == "exp-c")
        .collect();
    assert_eq!(
        settled_c[0].0, vc.nonce,
        "the stored voucher, not a new one"
    );
    let ids: Vec<String> = h
        .lines()
        .iter()
        .map(|l| l["experiment_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.iter().filter(|i| *i == "exp-a").count(),
        1,
        "(a) not appended twice: {ids:?}"
    );
    assert_eq!(ids.len(), 3);
    assert_eq!(status.spent.as_deref(), Some("0.03"));
    assert!(h.notices.reasons().contains(&"ExperimentResumed"));
}

#[tokio::test]
async fn an_unreadable_stored_voucher_counts_as_spent_and_is_never_signed_again() {
    let h = Harness::new(1, json!({"parallelism": 1, "maxExperiments": 1})).await;
    let w = h.workers[0].endpoint();
    let (v, _) = h.voucher(0, "exp-x").await;
    let mut broken = entry("exp-x", &w, &v, json!({"lr": 0.1}));
    broken.payment = "not a voucher".into();
    let status = crate::crd::ExperimentCampaignStatus {
        ledger: vec![broken],
        submitted: 1,
        ..Default::default()
    };
    let h = h.restart(json!({"parallelism": 1, "maxExperiments": 1}), status);
    let sign_calls = h.signer.sign_calls();
    h.run(Duration::from_secs(10)).await;
    let status = h.status();
    assert_eq!((status.failed, status.succeeded), (1, 0));
    assert_eq!(
        status.spent.as_deref(),
        Some("0.01"),
        "the reserved amount counts as spent"
    );
    assert_eq!(
        h.signer.sign_calls(),
        sign_calls,
        "nothing was signed again"
    );
    assert_eq!(h.workers[0].total_paid(), Usdc::ZERO);
}

/// An experiment whose code THINK changed is sent with that code (read from the script store by
/// its hash) and recorded under its hash, with the campaign's train.py as its parent.
#[tokio::test]
async fn an_experiment_runs_the_train_py_stored_under_its_hash() {
    let signer = FakeSigner::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let worker = FakeWorker::config()
        .run(move |s| {
            log.lock().unwrap().push(s.train_py.clone());
            crate::testkit::completed(s, 0.95)
        })
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let changed = "print('val_bpb: 0.95')  # DEPTH = 6\n";
    let hash = crate::scripts::ScriptStore::new(dir.path().join("scripts"))
        .put(changed)
        .await
        .unwrap();
    let pending = PendingExperiment {
        experiment_id: "exp-code".into(),
        config: Some(json!({})),
        train_hash: Some(hash.clone()),
        description: Some("DEPTH=6".into()),
        ..PendingExperiment::default()
    };
    let status = crate::crd::ExperimentCampaignStatus {
        pending: vec![pending],
        ..Default::default()
    };
    let spec = spec(
        &[worker.endpoint()],
        json!({"parallelism": 1, "maxExperiments": 1}),
    );
    let mut h = Harness::with(signer, vec![worker], dir, spec, Some(status));
    let kept = Arc::new(Kept::default());
    h.handle.best = Some(kept.clone());
    h.run(Duration::from_secs(10)).await;
    assert_eq!(seen.lock().unwrap().as_slice(), [changed.to_string()]);
    assert_eq!(
        kept.0.lock().unwrap().as_slice(),
        [(changed.to_string(), hash.clone())]
    );
    assert_eq!(h.status().best_train_script.as_deref(), Some("kept"));
    let lines = h.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["train_hash"], hash.as_str());
    assert_eq!(
        lines[0]["parent_train_hash"],
        crate::experiment::train_hash(TRAIN_PY).as_str()
    );
    assert_eq!(lines[0]["description"], "DEPTH=6");
    assert_eq!(h.workers[0].payments_for("exp-code"), 1);
}

#[tokio::test]
async fn an_experiment_whose_code_is_missing_is_never_signed_or_paid() {
    let h = Harness::new(1, json!({"parallelism": 1, "maxExperiments": 1})).await;
    let pending = PendingExperiment {
        experiment_id: "exp-lost".into(),
        train_hash: Some(crate::experiment::train_hash("never stored")),
        ..PendingExperiment::default()
    };
    h.store
        .update(&mut |_, s| {
            s.pending = vec![pending.clone()];
            Ok(())
        })
        .await
        .unwrap();
    let signed = h.signer.sign_calls();
    h.run(Duration::from_millis(500)).await;
    assert_eq!(h.signer.sign_calls(), signed);
    assert_eq!(h.workers[0].total_paid(), Usdc::ZERO);
    assert!(
        h.notices.reasons().contains(&"NotStarted"),
        "{:?}",
        h.notices.reasons()
    );
}

/// The 402 is reused for a short time; when the worker's terms change meanwhile, the stale
/// voucher is refused before the run (nothing settles) and the next attempt asks afresh.
#[tokio::test]
async fn a_stale_cached_price_costs_a_refusal_not_a_payment() {
    let h = Harness::new(1, json!({"parallelism": 1, "maxExperiments": 2})).await;
    // One experiment at the old price fills the cache.
    let mut spec = h.store.snapshot().unwrap().spec;
    spec.max_experiments = 1;
    h.store.set_spec(spec.clone());
    h.run(Duration::from_secs(10)).await;
    assert_eq!(h.workers[0].total_paid(), Usdc::from_atomic(10_000));
    h.workers[0].set(|k| k.price = Usdc::from_atomic(20_000));
    spec.max_experiments = 2;
    h.store.set_spec(spec);
    h.run(Duration::from_secs(10)).await;
    let status = h.status();
    assert_eq!(status.succeeded, 2, "{status:?}");
    assert_eq!(
        status.worker_failures, 1,
        "the stale voucher was refused once: {status:?}"
    );
    assert_eq!(
        h.workers[0].total_paid(),
        Usdc::from_atomic(30_000),
        "paid once, at the new price"
    );
    assert_eq!(status.spent.as_deref(), Some("0.03"));
}

/// Workers with their own payees (`pay_to` 0x…01, 0x…02, …) and runs.
async fn trust_harness(runs: Vec<crate::testkit::RunFn>, extra: Value) -> Harness {
    let signer = FakeSigner::start().await;
    let mut fakes = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        let pay_to = alloy::primitives::Address::with_last_byte(i as u8 + 1);
        let run = run.clone();
        fakes.push(
            FakeWorker::config()
                .pay_to(pay_to)
                .run(move |s| run(s))
                .start()
                .await,
        );
    }
    let endpoints: Vec<String> = fakes.iter().map(FakeWorker::endpoint).collect();
    let spec = trust_spec(&endpoints, extra);
    Harness::with(signer, fakes, tempfile::tempdir().unwrap(), spec, None)
}

/// A random search over two landscape parameters, three at a time, on `endpoints`.
fn trust_spec(endpoints: &[String], extra: Value) -> ExperimentCampaignSpec {
    let search = json!({
        "search": {"strategy": "random", "seed": 7, "parameters": [
            {"name": "lr", "type": "float", "min": 0.001, "max": 0.05, "logScale": true},
            {"name": "depth", "type": "int", "min": 4, "max": 12}
        ]},
        "maxExperiments": 40,
        "parallelism": 3,
    });
    let mut v = serde_json::to_value(spec(endpoints, search)).unwrap();
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn honest() -> crate::testkit::RunFn {
    Arc::new(crate::testkit::landscape_run)
}

/// What the liar test measures, for docs/trust.md.
#[derive(Debug)]
struct LiarReport {
    runs: usize,
    disputed: usize,
    excluded_at: Option<usize>,
    check_share: f64,
}

fn measure(h: &Harness, liar: &str) -> LiarReport {
    let lines = h.lines();
    let reasons = h.notices.0.lock().unwrap().clone();
    let disputed = reasons
        .iter()
        .filter(|n| n.reason == "ClaimDisputed" && n.message.contains(liar))
        .count();
    // The line (1-based) after which the liar is excluded, by replaying results.jsonl.
    let mut trust = super::trust::Trust::default();
    trust.set_settings(super::trust::TrustSettings {
        base_id: crate::experiment::experiment_id(TRAIN_PY, &json!({})),
        ..super::trust::TrustSettings::default()
    });
    let mut excluded_at = None;
    for (i, line) in lines.iter().enumerate() {
        let record: ResultRecord = serde_json::from_value(line.clone()).unwrap();
        trust.add_record(&record);
        if excluded_at.is_none() && trust.is_excluded(liar) {
            excluded_at = Some(i + 1);
        }
    }
    let amount = |l: &Value| l["amount"].as_str().unwrap().parse::<u64>().unwrap() as f64;
    let total: f64 = lines.iter().map(amount).sum();
    let checks: f64 = lines
        .iter()
        .filter(|l| l.get("role").is_some())
        .map(amount)
        .sum();
    LiarReport {
        runs: lines.len(),
        disputed,
        excluded_at,
        check_share: checks / total,
    }
}

#[tokio::test]
async fn a_liar_is_never_promoted_and_is_excluded_after_max_disagreements() {
    let h = trust_harness(
        vec![
            honest(),
            honest(),
            Arc::new(crate::testkit::lying_run(0.05)),
        ],
        json!({"budget": {"total": "0.3"}}),
    )
    .await;
    let liar = h.workers[2].endpoint();
    let step = h.run(Duration::from_secs(60)).await;
    assert_eq!(step.phase, Some(Phase::BudgetExhausted));
    let status = h.status();
    let lines = h.lines();

    // The budget holds with replications: every line paid once, on chain as in status.
    let paid: u128 = h.workers.iter().map(|w| w.total_paid().atomic()).sum();
    let spent: Usdc = status.spent.as_deref().unwrap().parse().unwrap();
    assert_eq!(spent.atomic(), paid);
    assert!(paid <= 300_000, "0.3 USDC at most");
    for line in &lines {
        assert_eq!(h.payments(line["experiment_id"].as_str().unwrap()), 1);
    }

    // Baseline first, on two different workers, before anything was proposed.
    assert_eq!(lines[0]["role"], "baseline");
    assert_eq!(lines[1]["role"], "baseline");
    assert_ne!(lines[0]["worker_endpoint"], lines[1]["worker_endpoint"]);

    // The liar is excluded, said once, and runs nothing after it.
    let record = status
        .reputation
        .iter()
        .find(|r| r.endpoint == liar)
        .expect("the liar has a row");
    assert!(record.excluded, "{record:?}");
    // Disputes of runs still in flight at the exclusion may add to the two that excluded it.
    assert!(record.disagreements >= 2, "{record:?}");
    assert!(record.mean_deviation.unwrap() > 0.04);
    let reasons = h.notices.reasons();
    assert_eq!(
        reasons.iter().filter(|r| **r == "WorkerExcluded").count(),
        1
    );
    let report = measure(&h, &liar);
    let excluded_at = report
        .excluded_at
        .expect("two claims of the liar were decided");
    let started_after = lines[excluded_at..]
        .iter()
        .filter(|l| l["worker_endpoint"] == liar.as_str())
        .count();
    assert!(
        started_after <= 2,
        "at most what was in flight finishes: {started_after}"
    );

    // The verified best is what honest workers measure for its config, never the liar's value.
    let best = status.best.clone().expect("a verified best");
    let verification = status.verification.clone().unwrap();
    assert!(verification.verified);
    // Status keeps a hash of the config; results.jsonl has the config itself.
    let best_line = lines
        .iter()
        .find(|l| l["experiment_id"] == best.experiment_id.as_str())
        .expect("the best is in results.jsonl");
    let honest_value = crate::strategy::landscape::val_bpb(&best_line["config"]);
    assert!((best.val_bpb - honest_value).abs() < 1e-9, "{best:?}");
    for id in &verification.replications {
        let line = lines
            .iter()
            .find(|l| l["experiment_id"] == id.as_str())
            .unwrap();
        assert_ne!(line["worker_endpoint"], liar.as_str());
    }
    assert_eq!(h.condition("Verified").0, "True");
    // A lower value reported but not verified is shown apart, as the best claim.
    assert!(
        status
            .best_claimed
            .iter()
            .all(|c| c.val_bpb < best.val_bpb && c.experiment_id != best.experiment_id)
    );
    assert!(report.disputed >= 1);
    eprintln!(
        "liar test: {} runs, {} claims disputed, excluded at line {excluded_at}, baseline runs and replications {:.0} % of spend",
        report.runs,
        report.disputed,
        report.check_share * 100.0
    );
}

#[tokio::test]
async fn a_noisy_workers_spread_is_measured() {
    // One worker whose runs vary by a seeded normal noise of 0.004, one honest: the baseline
    // runs and every replication measure σ.
    let spread = 0.004;
    let h = trust_harness(
        vec![
            Arc::new(crate::testkit::noisy_run(11, spread)),
            Arc::new(crate::testkit::noisy_run(12, spread)),
        ],
        json!({"objective": {"baselineRuns": 8, "noiseFloor": 0.0}, "maxExperiments": 8, "parallelism": 2}),
    )
    .await;
    h.run(Duration::from_secs(30)).await;
    let noise = h.status().noise.expect("noise in status");
    let sigma = noise.sigma.expect("σ measured");
    assert_eq!(noise.samples, 7);
    assert!(
        (sigma - spread).abs() < spread * 0.5,
        "σ {sigma} against a true spread of {spread}"
    );
    assert!((noise.effective_floor - 2.0 * sigma).abs() < 1e-12);
    eprintln!("noisy workers: σ {sigma:.6} measured over 8 runs, true spread {spread}");
}

#[tokio::test]
async fn with_a_single_worker_nothing_is_verified_and_status_says_so() {
    let h = trust_harness(vec![honest()], json!({"maxExperiments": 6})).await;
    h.run(Duration::from_secs(30)).await;
    let status = h.status();
    assert_eq!(
        h.condition("Verified"),
        ("False".into(), "SingleWorker".into())
    );
    assert!(!status.verification.unwrap().verified);
    assert!(h.lines().iter().all(|l| l["role"] != "replication"));
}

#[tokio::test]
async fn a_replication_cut_by_a_crash_is_resumed_without_paying_twice() {
    let h = trust_harness(vec![honest(), honest()], json!({})).await;
    let (w0, w1) = (h.workers[0].endpoint(), h.workers[1].endpoint());
    let base_id = crate::experiment::experiment_id(TRAIN_PY, &json!({}));
    let claim = json!({"lr": 0.004, "depth": 8});
    let claim_id = crate::experiment::experiment_id(TRAIN_PY, &claim);
    let landscape = crate::strategy::landscape::val_bpb;
    let line = |id: &str, worker: &str, config: &Value, role: Option<&str>| ResultRecord {
        experiment_id: id.into(),
        train_hash: crate::experiment::train_hash(TRAIN_PY),
        val_bpb: Some(landscape(config)),
        worker_endpoint: worker.into(),
        status: Some("completed".into()),
        decision: Some("keep".into()),
        amount: Some("10000".into()),
        config: Some(config.clone()),
        campaign_name: Some("c".into()),
        campaign_namespace: Some("ns".into()),
        role: role.map(str::to_string),
        ..ResultRecord::default()
    };
    // Baseline on both workers, then a claim on w0 that beats it.
    for record in [
        line(&base_id, &w0, &json!({}), Some("baseline")),
        line(&format!("{base_id}-b1"), &w1, &json!({}), Some("baseline")),
        line(&claim_id, &w0, &claim, None),
    ] {
        h.engine.results().append(&record).await.unwrap();
    }
    // Its replication was paid and run on w1; the answer was lost with the crash.
    let replication = format!("{claim_id}-r1");
    let (voucher, client) = h.voucher(1, &replication).await;
    let request = ExperimentRequest {
        experiment_id: replication.clone(),
        train_py: TRAIN_PY.into(),
        config: claim.clone(),
    };
    client.run(Some(&voucher), &request).await.unwrap();
    let status = crate::crd::ExperimentCampaignStatus {
        ledger: vec![entry(&replication, &w1, &voucher, claim.clone())],
        submitted: 4,
        succeeded: 3,
        spent: Some("0.03".into()),
        ..Default::default()
    };
    let spec = trust_spec(&[w0.clone(), w1.clone()], json!({"maxExperiments": 4}));
    let h = Harness::with(h.signer, h.workers, h.dir, spec, Some(status));
    h.run(Duration::from_secs(20)).await;

    assert_eq!(h.payments(&replication), 1, "recovered, not paid again");
    let status = h.status();
    assert_eq!(status.spent.as_deref(), Some("0.04"));
    let lines = h.lines();
    let recorded: Vec<&Value> = lines
        .iter()
        .filter(|l| l["experiment_id"] == replication.as_str())
        .collect();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["role"], "replication");
    assert_eq!(recorded[0]["replicates"], claim_id.as_str());
    let verification = status.verification.unwrap();
    assert!(verification.verified);
    assert_eq!(verification.experiment_id, claim_id);
    let best = status.best.unwrap();
    assert_eq!(best.val_bpb, landscape(&claim));
    assert_eq!(best.verified, Some(true));
    assert_eq!(best.replications, verification.replications);
    assert_eq!(verification.replications, [replication]);
}

/// A run where the unchanged config measures 1.0 and every searched one (with `lr`) 1.1.
fn worse_than_baseline() -> crate::testkit::RunFn {
    Arc::new(|s| {
        let v = if s.config.get("lr").is_some() {
            1.1
        } else {
            1.0
        };
        crate::testkit::completed(s, v)
    })
}

/// A parameter search does not wait for the baseline to propose: its first experiments run
/// beside the baseline runs. Their results wait for the baseline before they are judged, so an
/// experiment worse than the baseline is discarded even when it came back first.
#[tokio::test]
async fn experiments_run_beside_the_baseline_and_are_judged_against_it() {
    let extra = json!({"parallelism": 4, "maxExperiments": 8});
    let h = trust_harness(vec![worse_than_baseline(); 4], extra).await;
    // Workers 0 and 1, first in the list, take the two baseline runs; they are slow.
    for (i, w) in h.workers.iter().enumerate() {
        let delay = Duration::from_millis(if i < 2 { 1500 } else { 50 });
        w.set(|k| k.delay = delay);
    }
    // The first reconcile starts the baseline runs; the next, with both started, the search.
    h.engine.reconcile(&h.handle).await.expect("reconcile");
    let started = tokio::time::Instant::now();
    while h.status().ledger.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            h.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.engine.reconcile(&h.handle).await.expect("reconcile");
    while h.workers[2..].iter().any(|w| w.runs().is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            h.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Their answers came back while the baseline still runs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for w in &h.workers[2..] {
        assert_eq!(w.runs().len(), 1, "an experiment ran beside the baseline");
    }
    assert!(
        h.lines().is_empty(),
        "nothing is judged before the baseline"
    );
    let step = h.run(Duration::from_secs(30)).await;
    assert_eq!(step.phase, Some(Phase::Succeeded), "{:?}", h.status());
    let lines = h.lines();
    assert_eq!(lines.len(), 8);
    let roles: Vec<&Value> = lines.iter().map(|l| &l["role"]).collect();
    assert_eq!(
        roles[..2],
        [&json!("baseline"), &json!("baseline")],
        "{lines:?}"
    );
    for l in &lines[2..] {
        assert!(l["role"].is_null(), "{l}");
        assert_eq!(l["decision"], "discard", "judged against the baseline: {l}");
    }
    for l in &lines {
        assert_eq!(h.payments(l["experiment_id"].as_str().unwrap()), 1, "{l}");
    }
}

/// While a parameter search's baseline runs, the workers running experiments beside it get
/// their next voucher signed ahead (the round after the baseline kept every worker idle for a
/// reconcile before); a baseline worker never does, so a failed baseline run still finds its
/// slot and the next free worker.
#[tokio::test]
async fn experiments_beside_the_baseline_are_signed_ahead_but_never_for_a_baseline_worker() {
    let extra = json!({"parallelism": 4, "maxExperiments": 12});
    let h = trust_harness(vec![worse_than_baseline(); 4], extra).await;
    for (i, w) in h.workers.iter().enumerate() {
        let delay = Duration::from_millis(if i < 2 { 1500 } else { 600 });
        w.set(|k| k.delay = delay);
    }
    let baseline_workers = [h.workers[0].endpoint(), h.workers[1].endpoint()];
    let started = tokio::time::Instant::now();
    let wait = |what: &str, done: &dyn Fn(&crate::crd::ExperimentCampaignStatus) -> bool| {
        let status = h.status();
        for e in status.ledger.iter().filter(|e| ledger::is_ahead(e)) {
            assert!(
                !baseline_workers.contains(&e.worker),
                "signed ahead for a baseline worker: {status:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: {status:?}"
        );
        done(&status)
    };
    h.engine.reconcile(&h.handle).await.expect("reconcile");
    while !wait("baseline runs reserved", &|s| s.ledger.len() >= 2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.engine.reconcile(&h.handle).await.expect("reconcile");
    while !wait("experiments beside", &|s| ledger::running(s) >= 4) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The baseline still runs: the workers beside it get their next voucher now.
    h.engine.reconcile(&h.handle).await.expect("reconcile");
    h.engine.reconcile(&h.handle).await.expect("reconcile");
    let ahead = |s: &crate::crd::ExperimentCampaignStatus| {
        s.ledger.iter().filter(|e| ledger::is_ahead(e)).count()
    };
    while !wait("signed ahead beside the baseline", &|s| ahead(s) >= 2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        h.lines().is_empty(),
        "signed ahead before the baseline's result"
    );
    while !wait("the baseline is in", &|_| h.lines().len() >= 2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let step = h.run(Duration::from_secs(30)).await;
    assert_eq!(step.phase, Some(Phase::Succeeded), "{:?}", h.status());
    let lines = h.lines();
    assert_eq!(lines.len(), 12);
    for l in &lines {
        assert_eq!(h.payments(l["experiment_id"].as_str().unwrap()), 1, "{l}");
        if l["role"].is_null() {
            assert_eq!(l["decision"], "discard", "judged against the baseline: {l}");
        }
    }
}

/// With one worker the baseline runs one after the other, and no experiment takes the worker
/// the second one waits for: the worker runs both baseline runs first, and every experiment is
/// judged against them.
#[tokio::test]
async fn with_one_worker_both_baseline_runs_go_before_any_experiment() {
    let extra = json!({"parallelism": 2, "maxExperiments": 5});
    let h = trust_harness(vec![worse_than_baseline()], extra).await;
    h.workers[0].set(|k| k.delay = Duration::from_millis(100));
    let step = h.run(Duration::from_secs(30)).await;
    assert_eq!(step.phase, Some(Phase::Succeeded), "{:?}", h.status());
    let runs = h.workers[0].runs();
    assert_eq!(runs.len(), 5, "{runs:?}");
    let lines = h.lines();
    let role = |id: &str| {
        let line = lines.iter().find(|l| l["experiment_id"] == id);
        line.map(|l| l["role"].clone()).unwrap_or_default()
    };
    let roles: Vec<Value> = runs.iter().map(|id| role(id)).collect();
    assert_eq!(
        roles[..2],
        [json!("baseline"), json!("baseline")],
        "{runs:?}"
    );
    for l in lines.iter().filter(|l| l["role"].is_null()) {
        assert_eq!(l["decision"], "discard", "judged against the baseline: {l}");
    }
}

/// A baseline run that crashes is run again before anything is judged: nothing signed ahead for
/// a baseline worker takes the slot and the worker it needs, so the results waiting beside it
/// are judged against the full baseline, and the campaign does not stall.
#[tokio::test]
async fn a_crashed_baseline_run_is_run_again_before_any_result_is_judged() {
    let extra = json!({"parallelism": 2, "maxExperiments": 6, "maxFailedExperiments": 6});
    let h = trust_harness(vec![worse_than_baseline(); 2], extra).await;
    h.workers[1].set(|k| k.run_fails = 1);
    let step = h.run(Duration::from_secs(20)).await;
    assert_eq!(step.phase, Some(Phase::Succeeded), "{:?}", h.status());
    let lines = h.lines();
    let last_baseline = lines.iter().rposition(|l| l["role"] == "baseline").unwrap();
    let first_experiment = lines.iter().position(|l| l["role"].is_null()).unwrap();
    assert!(last_baseline < first_experiment, "{lines:#?}");
    for l in &lines[first_experiment..] {
        assert_eq!(l["decision"], "discard", "judged against the baseline: {l}");
    }
}

#[tokio::test]
async fn the_baseline_is_never_proposed_again_by_the_strategy() {
    // hillClimb over a constant of train.py starts at the unmodified script: the experiment the
    // first baseline run already is. It must not be paid for again.
    let h = trust_harness(
        vec![honest(), honest()],
        json!({
            "search": {"strategy": "hillClimb", "applyTo": "trainScript", "seed": 3, "experiments": [], "parameters": [
                {"name": "LR", "type": "float", "min": 0.001, "max": 0.1, "logScale": true}
            ]},
            "maxExperiments": 8,
            "parallelism": 2,
        }),
    )
    .await;
    let step = h.run(Duration::from_secs(30)).await;
    assert_eq!(step.phase, Some(Phase::Succeeded), "{:?}", h.status());
    let status = h.status();
    let lines = h.lines();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines.len() as u32, status.succeeded + status.failed);
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["experiment_id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert_eq!(h.payments(id), 1, "{id} paid once");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), lines.len(), "no experiment ran twice");
}

#[tokio::test]
async fn a_large_base_config_stays_out_of_status_and_every_result_line_keeps_it() {
    let notes = "x".repeat(40 * 1024);
    let h = Harness::new(2, json!({"baseConfig": {"notes": notes}})).await;
    h.engine.reconcile(&h.handle).await.expect("reconcile");
    let status = h.status();
    let size = serde_json::to_vec(&status).unwrap().len();
    assert!(size < 8 * 1024, "status holds {size} bytes");
    let entries: Vec<(Option<&Value>, Option<&String>)> = status
        .pending
        .iter()
        .map(|p| (p.config.as_ref(), p.config_hash.as_ref()))
        .chain(
            status
                .ledger
                .iter()
                .map(|e| (e.config.as_ref(), e.config_hash.as_ref())),
        )
        .collect();
    assert!(!entries.is_empty(), "the first reconcile proposes");
    for (config, hash) in entries {
        assert!(config.is_none() && hash.is_some(), "{status:?}");
    }

    let step = h.run(Duration::from_secs(20)).await;
    assert_eq!(step.phase, Some(Phase::Succeeded));
    let lines = h.lines();
    assert!(lines.len() >= 4);
    for line in &lines {
        assert_eq!(line["config"]["notes"].as_str(), Some(notes.as_str()));
        let id = line["experiment_id"].as_str().unwrap();
        assert_eq!(h.payments(id), 1, "{id} paid once");
    }
}

/// A campaign deleted with its baseline run and an experiment paid and run, and a controller
/// that crashed before their answers: the next one drains both at once, the baseline first and
/// the experiment judged against it. It does not wait an experiment timeout for a second
/// baseline run that nothing starts in a deleted campaign, nor take the resumed baseline run
/// for an experiment (its trust settings are only known once the campaign is remembered).
#[tokio::test]
async fn a_deleted_campaign_drains_its_baseline_and_experiment_after_a_restart() {
    let h = Harness::new(1, json!({})).await;
    let w = h.workers[0].endpoint();
    let base_id = crate::experiment::experiment_id(TRAIN_PY, &json!({}));
    let searched = json!({"lr": 0.1});
    let searched_id = crate::experiment::experiment_id(TRAIN_PY, &searched);
    let mut ledger = Vec::new();
    for (id, config) in [(&base_id, json!({})), (&searched_id, searched)] {
        let (voucher, client) = h.voucher(0, id).await;
        let request = ExperimentRequest {
            experiment_id: id.clone(),
            train_py: TRAIN_PY.into(),
            config: config.clone(),
        };
        client.run(Some(&voucher), &request).await.unwrap();
        ledger.push(entry(id, &w, &voucher, config));
    }
    let status = crate::crd::ExperimentCampaignStatus {
        ledger,
        submitted: 2,
        ..Default::default()
    };
    let h = h.restart(json!({}), status);
    h.store.mark_deleted();

    h.engine.drain(&h.handle, &h.store.snapshot().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.status().ledger.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {:?}",
            h.status().ledger
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = h.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0]["experiment_id"], base_id.as_str());
    assert_eq!(lines[0]["role"], "baseline");
    assert_eq!(lines[1]["experiment_id"], searched_id.as_str());
    assert!(lines[1]["decision"].is_string(), "{lines:#?}");
    for id in [&base_id, &searched_id] {
        assert_eq!(h.payments(id), 1, "{id} recovered, not paid again");
    }
    assert_eq!(h.engine.running_tasks(&h.handle.key), 0);
}
