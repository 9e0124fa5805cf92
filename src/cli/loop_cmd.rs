//! `autoresearch-coordinator loop <train.py>`: the controller's engine without Kubernetes. The
//! campaign lives in memory; results go to `$DATA_DIR/autoresearch/results.jsonl` as with the
//! controller, and a line per event shows progress.
//!
//! `--campaign FILE` runs a manifest's spec. The file is read as strictly as the API server's
//! strict field validation reads it (`kubectl apply --validate=strict`): a field the types do
//! not know is an error naming its path, because a misspelt or newer field silently ignored
//! would make the loop pay for something else than the user wrote.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::probe::parse_network;
use crate::crd::{
    ApplyTo, BudgetSpec, DiscoverySpec, ExperimentCampaign, ExperimentCampaignSpec, Network,
    ObjectiveSpec, PaymentSpec, Phase, SearchSpec, StaticWorker, Strategy, TrainScript,
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
    /// Path of the train.py to run; optional with --campaign when the manifest has
    /// trainScript.inline (giving both with different contents is an error).
    pub train_py: Option<PathBuf>,
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
    /// A campaign manifest (ExperimentCampaign YAML) whose spec to run, read strictly (unknown
    /// fields are errors); --rounds replaces its maxExperiments.
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
    /// End with one JSON object on stdout (best, workers, spent, noise floor) instead of text.
    #[arg(long)]
    pub json: bool,
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
    let campaign = args.campaign.as_deref().map(read_campaign).transpose()?;
    let train_py = resolve_train_py(&args, campaign.as_ref())?;
    let spec = build_spec(&args, campaign, &train_py)?;
    check_and_announce(&args, &spec, &train_py)?;
    let local = LocalRun::new(&args, spec, train_py, workers)?;
    local.drive(args.json).await?;
    local.finish(args.json)
}

/// Refuses a spec the controller would refuse, then says what the loop may spend.
fn check_and_announce(
    args: &LoopArgs,
    spec: &ExperimentCampaignSpec,
    train_py: &str,
) -> anyhow::Result<()> {
    let (total, max_price) = spec.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::strategy::validate(&spec.search, spec.base_config.as_ref(), train_py)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
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
    Ok(())
}

/// One campaign run by the engine in this process, its status in memory.
struct LocalRun {
    engine: Arc<Engine>,
    handle: CampaignHandle,
    store: Arc<MemoryStore>,
    results_path: PathBuf,
}

impl LocalRun {
    fn new(
        args: &LoopArgs,
        spec: ExperimentCampaignSpec,
        train_py: String,
        workers: Arc<dyn WorkerSource>,
    ) -> anyhow::Result<Self> {
        let proposer = loop_proposer(&spec)?;
        let mut campaign = ExperimentCampaign::new("local", spec);
        campaign.metadata.uid = Some(run_uid());
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
            proposer,
        };
        Ok(Self {
            engine,
            handle,
            store,
            results_path,
        })
    }

    /// Reconciles until the campaign ends, or Ctrl-C aborts what is in flight.
    async fn drive(&self, json: bool) -> anyhow::Result<()> {
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let live = std::io::stderr().is_terminal();
        let mut progress = super::progress::Progress::start(super::progress::Mode::detect(json));
        loop {
            let step = self.engine.reconcile(&self.handle).await?;
            if let Some(campaign) = self.store.snapshot() {
                progress.update(&campaign);
            }
            if step.phase.is_none_or(Phase::is_final) {
                return Ok(());
            }
            tokio::select! {
                _ = self.engine.changed.notified() => {}
                _ = tokio::time::sleep(step.requeue.min(Duration::from_secs(if live { 2 } else { 10 }))) => {}
                _ = &mut interrupted => {
                    self.engine.abort_all();
                    bail!("interrupted; experiments in flight are in the ledger of this run only; their results, if any, are at the workers (GET <endpoint>/experiments/<id>)");
                }
            }
        }
    }

    /// Prints the summary; a failed campaign is an error.
    fn finish(&self, json: bool) -> anyhow::Result<()> {
        let status = || {
            self.store
                .snapshot()
                .and_then(|c| c.status)
                .unwrap_or_default()
        };
        if json {
            println!("{}", json_summary(&status(), &self.results_path));
        } else {
            print_summary(&self.store, &self.results_path);
        }
        let status = status();
        if status.phase == Some(Phase::Failed) {
            bail!(
                "the loop failed: {}",
                condition_message(&status, "Progressing")
            );
        }
        Ok(())
    }
}

/// The model proposer of an `llm` campaign: its key from `LLM_API_KEY`, its program inline or
/// the built-in default (a ConfigMap cannot be read without a cluster).
fn loop_proposer(
    spec: &ExperimentCampaignSpec,
) -> anyhow::Result<Option<Arc<crate::strategy::llm::LlmProposer>>> {
    let (Strategy::Llm, Some(llm)) = (spec.search.strategy, spec.search.llm.as_ref()) else {
        return Ok(None);
    };
    if llm.program_config_map_key_ref.is_some() {
        bail!(
            "search.llm.programConfigMapKeyRef needs a cluster; give search.llm.program inline for loop"
        );
    }
    let program = crate::strategy::llm::program_or_default(llm.program.as_deref());
    let proposer = crate::strategy::llm::LlmProposer::new(
        llm,
        crate::strategy::llm::api_key_from_env(),
        program,
    )
    .map_err(|e| anyhow::anyhow!("search.llm: {e}"))?;
    Ok(Some(Arc::new(proposer)))
}

/// Reads a campaign manifest, refusing every field the types do not know (all of them named).
pub fn read_campaign(path: &Path) -> anyhow::Result<ExperimentCampaign> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_campaign(&text)
        .with_context(|| format!("{} is not a valid ExperimentCampaign", path.display()))
}

/// [`read_campaign`] of a text. serde_ignored reports each key that deserialisation skipped,
/// with its path, so no mirror of the types is needed and `metadata` is checked too.
pub fn parse_campaign(text: &str) -> anyhow::Result<ExperimentCampaign> {
    let mut unknown = Vec::new();
    let manifest: Manifest =
        serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |path| {
            unknown.push(dotted(&path));
        })?;
    if !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|p| format!("unknown field \"{p}\""))
            .collect();
        bail!("strict decoding error: {}", fields.join(", "));
    }
    let expected = kube::core::ApiResource::erase::<ExperimentCampaign>(&());
    if manifest.kind != expected.kind || manifest.api_version != expected.api_version {
        bail!(
            "expected kind {} of apiVersion {}, found kind {:?} of apiVersion {:?}",
            expected.kind,
            expected.api_version,
            manifest.kind,
            manifest.api_version
        );
    }
    let mut campaign = ExperimentCampaign::new("local", manifest.spec);
    campaign.metadata = manifest.metadata;
    campaign.metadata.uid.get_or_insert_with(run_uid);
    Ok(campaign)
}

/// A uid for one `loop` run, which has no API server to give it one: the ids sent to workers
/// derive from it, so a worker cannot hand this run a result it stored for another.
fn run_uid() -> String {
    format!("loop-{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// `spec.search.parameters.0.step`: serde_ignored's path without its `?` steps for optional
/// fields, which a user never writes.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let join = |parent: &Path<'_>, leaf: String| match dotted(parent) {
        p if p.is_empty() => leaf,
        p => format!("{p}.{leaf}"),
    };
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(parent, index.to_string()),
        Path::Map { parent, key } => join(parent, key.clone()),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

/// A manifest as written: the derived resource type has no `apiVersion` and `kind` fields, so
/// they would count as unknown; `status` is accepted and dropped, as the API server does.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: kube::core::ObjectMeta,
    spec: ExperimentCampaignSpec,
    /// Accepted so that it is not an unknown field; never read.
    #[serde(default, rename = "status")]
    _status: Option<Value>,
}

/// The train.py to run: the positional file, or the manifest's `trainScript.inline`; both must
/// agree when both are given.
fn resolve_train_py(
    args: &LoopArgs,
    campaign: Option<&ExperimentCampaign>,
) -> anyhow::Result<String> {
    let from_file = args
        .train_py
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading train.py from {}", path.display()))
                .map(|text| (path, text))
        })
        .transpose()?;
    let script = campaign.map(|c| &c.spec.train_script);
    let inline = script.and_then(|s| s.inline.as_deref());
    match (from_file, inline) {
        (Some((path, text)), Some(inline)) if text != inline => bail!(
            "{} differs from trainScript.inline of the campaign file; give only one of them",
            path.display()
        ),
        (Some((_, text)), _) => Ok(text),
        (None, Some(inline)) => Ok(inline.to_string()),
        (None, None) if script.is_some_and(|s| s.config_map_key_ref.is_some()) => bail!(
            "the campaign's trainScript.configMapKeyRef cannot be read by loop; pass the train.py file"
        ),
        (None, None) => {
            bail!("give the train.py to run (or --campaign FILE with trainScript.inline)")
        }
    }
}

fn build_spec(
    args: &LoopArgs,
    campaign: Option<ExperimentCampaign>,
    train_py: &str,
) -> anyhow::Result<ExperimentCampaignSpec> {
    let base = base_config(&args.config)?;
    let mut spec = match campaign {
        Some(campaign) => campaign.spec,
        None => rounds_spec(args, base),
    };
    spec.train_script = TrainScript {
        inline: Some(train_py.to_string()),
        config_map_key_ref: None,
    };
    if let Some(rounds) = args.rounds {
        spec.max_experiments = rounds;
    }
    spec.parallelism = args.parallelism;
    apply_money(&mut spec, args);
    apply_discovery(&mut spec.discovery, args);
    Ok(spec)
}

/// `--config`, which must be a JSON object (checked with a manifest too, which does not use it).
fn base_config(text: &str) -> anyhow::Result<Value> {
    let base: Value = serde_json::from_str(text).context("--config is not JSON")?;
    if !base.is_object() {
        bail!("--config must be a JSON object");
    }
    Ok(base)
}

/// The spec without a manifest: `--rounds` runs of the train.py with `base` as its config.
fn rounds_spec(args: &LoopArgs, base: Value) -> ExperimentCampaignSpec {
    let rounds = args.rounds.unwrap_or(5);
    ExperimentCampaignSpec {
        train_script: TrainScript::default(),
        base_config: Some(base),
        // Each round is its own experiment (a distinct id), as the skill's loop resubmits.
        search: SearchSpec {
            strategy: Strategy::List,
            parameters: Vec::new(),
            experiments: (1..=rounds).map(|i| json!({ "round": i })).collect(),
            seed: 0,
            apply_to: ApplyTo::Config,
            llm: None,
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

/// The price cap, the budget (by default every experiment at the cap), and how to pay.
fn apply_money(spec: &mut ExperimentCampaignSpec, args: &LoopArgs) {
    let max_price = args.max_price.unwrap_or(payment::DEFAULT_MAX_PRICE);
    let budget = args.budget.unwrap_or(Usdc::from_atomic(
        max_price.atomic() * u128::from(spec.max_experiments),
    ));
    spec.budget = BudgetSpec {
        total: budget.to_string(),
        max_price_per_experiment: max_price.to_string(),
    };
    spec.payment.network = args.network;
    spec.payment.remote_signer_url = args.signer_url.clone();
}

/// The sources to search (none with `--no-discovery`) and the `--prefer` workers.
fn apply_discovery(discovery: &mut DiscoverySpec, args: &LoopArgs) {
    discovery.scan_api_url = if args.no_discovery {
        String::new()
    } else {
        args.scan_api_url.clone()
    };
    if args.no_discovery {
        discovery.on_chain.mode = crate::crd::OnChainMode::Never;
    }
    discovery
        .allow_private
        .extend(args.allow_private.iter().cloned());
    discovery.prefer.extend(args.prefer.iter().cloned());
    for endpoint in &args.prefer {
        discovery.workers.push(StaticWorker {
            endpoint: endpoint.clone(),
            name: None,
            agent_id: None,
        });
    }
}

fn condition_message(status: &crate::crd::ExperimentCampaignStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The `loop --json` summary: the (verified) best, each worker's record, spend and noise.
pub fn json_summary(status: &crate::crd::ExperimentCampaignStatus, results: &Path) -> Value {
    let verification = status.verification.as_ref();
    json!({
        "phase": status.phase,
        "best": status.best.as_ref().map(|b| json!({
            "experiment_id": b.experiment_id,
            "val_bpb": b.val_bpb,
            "train_hash": b.train_hash,
            "worker": b.worker,
            "verified": verification.is_some_and(|v| v.verified && v.experiment_id == b.experiment_id),
            "replications": verification.map(|v| v.replications.clone()).unwrap_or_default(),
        })),
        "best_claimed": status.best_claimed.as_ref().map(|b| json!({
            "experiment_id": b.experiment_id,
            "val_bpb": b.val_bpb,
            "worker": b.worker,
        })),
        "workers": status.reputation,
        "spent": status.spent.as_deref().unwrap_or("0"),
        "noise_floor": status.noise.as_ref().map(|n| n.effective_floor),
        "sigma": status.noise.as_ref().and_then(|n| n.sigma),
        "results": results.display().to_string(),
    })
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
    if let Some(v) = &status.verification {
        println!(
            "best {}: {}",
            v.experiment_id,
            if v.verified {
                format!("verified by {}", v.replications.join(", "))
            } else {
                "not verified by another worker".to_string()
            }
        );
    }
    if let Some(n) = &status.noise {
        println!(
            "noise floor: {:.6} (σ {})",
            n.effective_floor,
            n.sigma.map_or("not measured".into(), |s| format!(
                "{s:.6} over {} runs",
                n.samples
            ))
        );
    }
    for w in status.reputation.iter().filter(|w| w.disagreements > 0) {
        println!(
            "worker {}: {} disputed results{}",
            w.endpoint,
            w.disagreements,
            if w.excluded { ", excluded" } else { "" }
        );
    }
    println!("results: {}", results.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoopArgs,
    }

    /// A list campaign in flow style (the binary's tests use block style).
    const MANIFEST: &str = r#"{apiVersion: autoresearch.obol.org/v1alpha1, kind: ExperimentCampaign,
  metadata: {name: tiny},
  spec: {
    trainScript: {inline: "LR = 0.01  # learning rate\nprint('val_bpb: 1.0')\n"},
    search: {strategy: list, applyTo: trainScript,
      experiments: [{LR: 0.02}], parameters: [{name: LR, type: float, min: 0.001, max: 0.1, logScale: true}]},
    maxExperiments: 3,
    budget: {total: "1", maxPricePerExperiment: "0.1"}}}"#;

    #[test]
    fn a_valid_manifest_is_read() {
        let c = parse_campaign(MANIFEST).unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("tiny"));
        assert_eq!(c.spec.search.apply_to, ApplyTo::TrainScript);
    }

    #[test]
    fn unknown_fields_are_refused_by_path() {
        let typo = MANIFEST.replace("applyTo:", "applyto:");
        let e = format!("{:#}", parse_campaign(&typo).unwrap_err());
        assert!(e.contains("unknown field \"spec.search.applyto\""), "{e}");
        let two = MANIFEST
            .replace("{name: tiny}", "{name: tiny, labelz: {}}")
            .replace(
                "maxExperiments: 3,",
                "maxExperiments: 3, maxExperimentz: 4,",
            );
        let e = format!("{:#}", parse_campaign(&two).unwrap_err());
        assert!(
            e.contains("\"metadata.labelz\"") && e.contains("\"spec.maxExperimentz\""),
            "{e}"
        );
        let nested = MANIFEST.replace("logScale: true", "logScale: true, step: 2");
        let e = format!("{:#}", parse_campaign(&nested).unwrap_err());
        assert!(e.contains("spec.search.parameters.0.step"), "{e}");
        let kind = MANIFEST.replace("kind: ExperimentCampaign", "kind: Campaign");
        assert!(parse_campaign(&kind).is_err());
    }

    #[test]
    fn every_example_passes_strict_reading() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                read_campaign(&path).unwrap_or_else(|e| panic!("{e:#}"));
                read += 1;
            }
        }
        assert!(read >= 5, "examples read: {read}");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/llm.yaml");
        let llm = read_campaign(&example).unwrap_or_else(|e| panic!("{e:#}"));
        llm.spec.validate().unwrap();
    }

    fn args(argv: &[&str]) -> LoopArgs {
        Cli::parse_from(std::iter::once("loop").chain(argv.iter().copied())).args
    }

    #[test]
    fn train_py_comes_from_the_file_or_the_manifest_and_they_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let campaign = parse_campaign(MANIFEST).unwrap();
        let inline = campaign.spec.train_script.inline.clone().unwrap();
        let same = dir.path().join("same.py");
        std::fs::write(&same, &inline).unwrap();
        let other = dir.path().join("other.py");
        std::fs::write(&other, "print('val_bpb: 2.0')\n").unwrap();

        let from_manifest = resolve_train_py(&args(&["--campaign", "x.yaml"]), Some(&campaign));
        assert_eq!(from_manifest.unwrap(), inline);
        let both = resolve_train_py(&args(&[same.to_str().unwrap()]), Some(&campaign));
        assert_eq!(both.unwrap(), inline);
        let differ = resolve_train_py(&args(&[other.to_str().unwrap()]), Some(&campaign));
        assert!(format!("{:#}", differ.unwrap_err()).contains("differs from trainScript.inline"));
        assert!(resolve_train_py(&args(&[]), None).is_err());
        let plain = resolve_train_py(&args(&[other.to_str().unwrap()]), None).unwrap();
        assert_eq!(plain, "print('val_bpb: 2.0')\n");
    }
}
