//! `autoresearch-coordinator loop <train.py>`: the controller's engine without Kubernetes. The
//! campaign lives in memory; results go to `$DATA_DIR/autoresearch/results.jsonl` as with the
//! controller, and a line per event shows progress.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::probe::parse_network;
use crate::crd::{
    BudgetSpec, DiscoverySpec, ExperimentCampaign, ExperimentCampaignSpec, Network, ObjectiveSpec,
    PaymentSpec, Phase, SearchSpec, StaticWorker, Strategy, TrainScript,
};
use crate::engine::{
    CampaignHandle, Engine, MemoryStore, Notice, Notify, Settings, Severity, WorkerSource,
};
use crate::payment::{self, RemoteSigner};
use crate::results::{ResultsLog, default_path};
use crate::telemetry::Metrics;
use crate::usdc::Usdc;

/// Arguments of `loop`.
#[derive(Args, Debug)]
pub struct LoopArgs {
    /// Path of the train.py to run.
    pub train_py: PathBuf,
    /// Worker endpoints to use first (repeatable); with no discovery, the only ones used.
    #[arg(long)]
    pub prefer: Vec<String>,
    /// Experiments to run (maxExperiments; default 5, or the campaign manifest's).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Most USDC one experiment may cost; without it a default cap of 0.1 USDC applies.
    #[arg(long)]
    pub max_price: Option<Usdc>,
    /// Total USDC the loop may spend (default: rounds × max price).
    #[arg(long)]
    pub budget: Option<Usdc>,
    /// Experiments at once, each on its own worker.
    #[arg(long, default_value_t = 1)]
    pub parallelism: u32,
    /// A campaign manifest (ExperimentCampaign YAML) whose spec to run; train.py from the
    /// command line replaces its trainScript, and --rounds its maxExperiments.
    #[arg(long)]
    pub campaign: Option<PathBuf>,
    /// Base config (JSON object).
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Network to pay on.
    #[arg(long, value_parser = parse_network, default_value = "base-sepolia")]
    pub network: Network,
    /// CIDRs or host patterns that discovered endpoints may resolve to although private
    /// (repeatable), e.g. 10.42.0.0/16 or *.svc.cluster.local.
    #[arg(long = "allow-private")]
    pub allow_private: Vec<String>,
    /// Do not search 8004scan or the chain: use only --prefer workers.
    #[arg(long)]
    pub no_discovery: bool,
    /// Remote signer URL.
    #[arg(long, env = "REMOTE_SIGNER_URL", default_value = payment::signer::DEFAULT_SIGNER_URL)]
    pub signer_url: String,
    /// 8004scan API.
    #[arg(long, env = "SCAN_API_URL", default_value = crate::crd::DEFAULT_SCAN_API_URL)]
    pub scan_api_url: String,
    /// Folder holding autoresearch/results.jsonl.
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,
    /// Seconds one experiment may take.
    #[arg(long, default_value_t = 900)]
    pub timeout: u32,
}

/// Prints notices as lines.
struct Printer;

impl Notify for Printer {
    fn notify(&self, notice: Notice) -> BoxFuture<'_, ()> {
        let mark = match notice.severity {
            Severity::Normal => "  ",
            Severity::Warning => "! ",
        };
        super::progress::line(&format!("{mark}{:<20} {}", notice.reason, notice.message));
        Box::pin(async {})
    }
}

pub(super) async fn run(args: LoopArgs, workers: Arc<dyn WorkerSource>) -> anyhow::Result<()> {
    let train_py = std::fs::read_to_string(&args.train_py)
        .with_context(|| format!("reading train.py from {}", args.train_py.display()))?;
    let spec = build_spec(&args, &train_py)?;
    let (total, max_price) = spec.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "loop: {} experiments, at most {max_price} USDC each{}, {total} USDC in total, paying on {}",
        spec.max_experiments,
        if args.max_price.is_none() {
            " (default cap; pass --max-price to change it)"
        } else {
            ""
        },
        spec.payment.network
    );
    let campaign = ExperimentCampaign::new("local", spec);
    let store = Arc::new(MemoryStore::new(campaign));
    let signer = RemoteSigner::new(&args.signer_url, std::env::var("REMOTE_SIGNER_TOKEN").ok())
        .map_err(|e| anyhow::anyhow!("--signer-url: {e}"))?;
    let results = ResultsLog::new(default_path(&args.data_dir));
    let results_path = results.path().to_path_buf();
    let settings = Settings {
        idle_requeue: Duration::from_secs(5),
        no_worker_requeue: Duration::from_secs(10),
        ..Settings::default()
    };
    let engine = Engine::new(workers, results, Metrics::new(), settings);
    let handle = CampaignHandle {
        key: "local/local".into(),
        namespace: None,
        name: "local".into(),
        store: store.clone(),
        notify: Arc::new(Printer),
        signer: Arc::new(signer),
        train_py: train_py.into(),
        best: Some(Arc::new(super::best_file::BestFile::new(
            &args.data_dir,
            "local",
        ))),
    };

    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let live = std::io::stderr().is_terminal();
    let mut progress = super::progress::Progress::start(super::progress::Mode::detect(false));
    loop {
        let step = engine.reconcile(&handle).await?;
        if let Some(campaign) = store.snapshot() {
            progress.update(&campaign);
        }
        if matches!(
            step.phase,
            None | Some(Phase::Succeeded | Phase::Failed | Phase::BudgetExhausted)
        ) {
            break;
        }
        tokio::select! {
            _ = engine.changed.notified() => {}
            _ = tokio::time::sleep(step.requeue.min(Duration::from_secs(if live { 2 } else { 10 }))) => {}
            _ = &mut interrupted => {
                engine.abort_all();
                bail!("interrupted; experiments in flight are in the ledger of this run only; their results, if any, are at the workers (GET <endpoint>/experiments/<id>)");
            }
        }
    }
    drop(progress);
    print_summary(&store, &results_path);
    let status = store.snapshot().and_then(|c| c.status).unwrap_or_default();
    if status.phase == Some(Phase::Failed) {
        bail!(
            "the loop failed: {}",
            condition_message(&status, "Progressing")
        );
    }
    Ok(())
}

fn build_spec(args: &LoopArgs, train_py: &str) -> anyhow::Result<ExperimentCampaignSpec> {
    let max_price = args.max_price.unwrap_or(payment::DEFAULT_MAX_PRICE);
    let base: Value = serde_json::from_str(&args.config).context("--config is not JSON")?;
    if !base.is_object() {
        bail!("--config must be a JSON object");
    }
    let mut spec = match &args.campaign {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let campaign: ExperimentCampaign = serde_yaml::from_str(&text)
                .with_context(|| format!("{} is not an ExperimentCampaign", path.display()))?;
            campaign.spec
        }
        None => {
            let rounds = args.rounds.unwrap_or(5);
            ExperimentCampaignSpec {
                train_script: TrainScript::default(),
                base_config: Some(base.clone()),
                // Each round is its own experiment (a distinct id), as the skill's loop resubmits.
                search: SearchSpec {
                    strategy: Strategy::List,
                    parameters: Vec::new(),
                    experiments: (1..=rounds).map(|i| json!({ "round": i })).collect(),
                    seed: 0,
                },
                objective: ObjectiveSpec::default(),
                max_experiments: rounds,
                parallelism: args.parallelism,
                max_failed_experiments: rounds.max(1),
                experiment_timeout_seconds: args.timeout,
                budget: BudgetSpec {
                    total: String::new(),
                    max_price_per_experiment: String::new(),
                },
                payment: PaymentSpec::default(),
                discovery: DiscoverySpec::default(),
                suspend: false,
            }
        }
    };
    spec.train_script = TrainScript {
        inline: Some(train_py.to_string()),
        config_map_key_ref: None,
    };
    if let Some(rounds) = args.rounds {
        spec.max_experiments = rounds;
    }
    spec.parallelism = args.parallelism;
    let budget = args.budget.unwrap_or(Usdc::from_atomic(
        max_price.atomic() * u128::from(spec.max_experiments),
    ));
    spec.budget = BudgetSpec {
        total: budget.to_string(),
        max_price_per_experiment: max_price.to_string(),
    };
    spec.payment.network = args.network;
    spec.payment.remote_signer_url = args.signer_url.clone();
    spec.discovery.scan_api_url = if args.no_discovery {
        String::new()
    } else {
        args.scan_api_url.clone()
    };
    if args.no_discovery {
        spec.discovery.on_chain.mode = crate::crd::OnChainMode::Never;
    }
    spec.discovery
        .allow_private
        .extend(args.allow_private.iter().cloned());
    spec.discovery.prefer.extend(args.prefer.iter().cloned());
    for endpoint in &args.prefer {
        spec.discovery.workers.push(StaticWorker {
            endpoint: endpoint.clone(),
            name: None,
            agent_id: None,
        });
    }
    Ok(spec)
}

fn condition_message(status: &crate::crd::ExperimentCampaignStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

fn print_summary(store: &MemoryStore, results: &std::path::Path) {
    let status = store.snapshot().and_then(|c| c.status).unwrap_or_default();
    println!(
        "phase: {:?} ({})",
        status.phase.unwrap_or(Phase::Pending),
        condition_message(&status, "Progressing")
    );
    println!("spent: {} USDC", status.spent.as_deref().unwrap_or("0"));
    println!("leaderboard:");
    for (i, r) in status.leaderboard.iter().enumerate() {
        println!(
            "  {:>2}. {:.6}  {}  {}",
            i + 1,
            r.val_bpb,
            r.experiment_id,
            r.worker
        );
    }
    println!("results: {}", results.display());
}
