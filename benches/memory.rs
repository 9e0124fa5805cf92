//! Memory is bounded by the work in flight, not by history: one campaign runs
//! `BENCH_MEMORY_EXPERIMENTS` (default 100,000) experiments on 8 fast in-process workers, and the
//! process's resident memory is printed every 10,000 experiments and after the campaign is
//! forgotten. Target: under 100 MiB at the end.
//!
//!   cargo bench --features testkit --bench memory
//!   BENCH_MEMORY_EXPERIMENTS=20000 cargo bench --features testkit --bench memory

use std::sync::Arc;
use std::time::{Duration, Instant};

use autoresearch_coordinator::crd::{ExperimentCampaign, Phase};
use autoresearch_coordinator::engine::{
    CampaignHandle, Engine, MemoryStore, Notice, Notify, Settings, StaticWorkers,
};
use autoresearch_coordinator::results::ResultsLog;
use autoresearch_coordinator::telemetry::Metrics;
use autoresearch_coordinator::testkit::{FakeSigner, FakeWorker};
use futures::future::BoxFuture;

struct Quiet;

impl Notify for Quiet {
    fn notify(&self, _: Notice) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() {
    let total: u32 = std::env::var("BENCH_MEMORY_EXPERIMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let signer = FakeSigner::start().await;
    let mut workers = Vec::new();
    for _ in 0..8 {
        workers.push(FakeWorker::start().await);
    }
    let endpoints: Vec<_> = workers
        .iter()
        .map(|w| serde_json::json!({"endpoint": w.endpoint()}))
        .collect();
    let spec = serde_json::from_value(serde_json::json!({
        "trainScript": {"inline": "print('val_bpb: 1.0')\n"},
        "search": {"strategy": "random", "seed": 7, "parameters": [
            {"name": "lr", "type": "float", "min": 0.0001, "max": 1.0, "logScale": true},
            {"name": "depth", "type": "int", "min": 1, "max": 64}]},
        "maxExperiments": total,
        "maxFailedExperiments": total,
        "parallelism": 8,
        "budget": {"total": "1000000", "maxPricePerExperiment": "0.01"},
        "discovery": {"workers": endpoints},
    }))
    .expect("a valid spec");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Arc::new(MemoryStore::new(ExperimentCampaign::new("bench", spec)));
    let engine = Engine::new(
        Arc::new(StaticWorkers),
        ResultsLog::new(dir.path().join("results.jsonl")),
        Metrics::new(),
        Settings::default(),
    );
    let handle = CampaignHandle {
        key: "bench/bench".into(),
        namespace: Some("bench".into()),
        name: "bench".into(),
        store: store.clone(),
        notify: Arc::new(Quiet),
        signer: Arc::new(signer.client()),
        train_py: "print('val_bpb: 1.0')\n".into(),
        best: None,
        proposer: None,
    };
    println!(
        "memory: {total} experiments, 8 workers; RSS at start {:.1} MiB",
        rss_mib()
    );
    let started = Instant::now();
    let mut next_mark = 10_000.min(total);
    loop {
        let step = engine.reconcile(&handle).await.expect("reconcile");
        // The fakes run in this process: keep their own records out of the measurement.
        workers.iter().for_each(FakeWorker::forget_history);
        let status = store.snapshot().and_then(|c| c.status).unwrap_or_default();
        let done = status.succeeded + status.failed;
        while done >= next_mark && next_mark <= total {
            println!(
                "memory: {next_mark:>7} experiments  RSS {:>6.1} MiB  {:>5.0} s",
                rss_mib(),
                started.elapsed().as_secs_f64()
            );
            next_mark += 10_000;
        }
        if matches!(
            step.phase,
            Some(Phase::Succeeded | Phase::Failed | Phase::BudgetExhausted)
        ) && engine.running_tasks(&handle.key) == 0
        {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), engine.changed.notified()).await;
    }
    store.delete();
    engine
        .reconcile(&handle)
        .await
        .expect("reconcile after deletion");
    println!(
        "memory: campaign deleted; {} campaigns remembered; RSS {:.1} MiB",
        engine.remembered(),
        rss_mib()
    );
}
