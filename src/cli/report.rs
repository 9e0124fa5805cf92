//! `report`: the progress chart (SVG and PNG), results.tsv and a summary of a campaign's history,
//! from a results file or from a live campaign.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kube::Api;

use crate::crd::ExperimentCampaign;
use crate::report::{self, Filter, ResultHistory, Summary, history};

/// `report` flags.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// results.jsonl to read (default: `$DATA_DIR/autoresearch/results.jsonl`).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Only the rows of this campaign name.
    #[arg(long, conflicts_with = "name")]
    campaign: Option<String>,
    /// Namespace of a live campaign (with --name), read through the API server.
    #[arg(long, requires = "name")]
    namespace: Option<String>,
    /// Name of a live campaign: its noise floor comes from the spec, its rows from the results.
    #[arg(long)]
    name: Option<String>,
    /// An improvement smaller than this is noise (default: the campaign's, else 0.002).
    #[arg(long)]
    noise_floor: Option<f64>,
    /// The engine's train.py store, for the diff of the best against the baseline
    /// (default: `$DATA_DIR/autoresearch/scripts`).
    #[arg(long)]
    scripts: Option<PathBuf>,
    /// Folder for progress.svg, progress.png and results.tsv.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Data directory.
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    data_dir: PathBuf,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The default noise floor (the CRD's `objective.noiseFloor` default).
const DEFAULT_NOISE_FLOOR: f64 = 0.002;

pub(super) async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let (filter, label, spec_noise) = match &args.name {
        Some(name) => live_campaign(args.namespace.as_deref(), name).await?,
        None => (
            Filter {
                namespace: None,
                name: args.campaign.clone(),
            },
            args.campaign.clone(),
            None,
        ),
    };
    let path = args
        .results
        .clone()
        .unwrap_or_else(|| crate::results::default_path(&args.data_dir));
    let rows = history::read_rows(&path, &filter)?;
    if rows.is_empty() {
        eprintln!(
            "report: no results in {} for this campaign yet",
            path.display()
        );
    }
    let noise = args
        .noise_floor
        .or(spec_noise)
        .unwrap_or(DEFAULT_NOISE_FLOOR);
    let history = ResultHistory::new(label, rows, noise);
    let files = report::write_files(&history, &args.out)?;
    let scripts = args
        .scripts
        .clone()
        .unwrap_or_else(|| args.data_dir.join("autoresearch").join("scripts"));
    let summary = Summary::new(&history, report::best_diff(&history, &scripts));
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["files"] = serde_json::to_value(&files)?;
        writeln!(out, "{}", serde_json::to_string(&value)?)?;
    } else {
        write!(out, "{}", summary.text())?;
        writeln!(
            out,
            "chart: {} (and {})\nresults.tsv: {}",
            files.png.display(),
            files.svg.display(),
            files.tsv.display()
        )?;
    }
    Ok(())
}

/// The filter, label and noise floor of a campaign read from the API server.
async fn live_campaign(
    namespace: Option<&str>,
    name: &str,
) -> anyhow::Result<(Filter, Option<String>, Option<f64>)> {
    let client = kube::Client::try_default().await.context(
        "cannot configure a Kubernetes client (in cluster or from KUBECONFIG) for --name",
    )?;
    let namespace = namespace.unwrap_or(client.default_namespace()).to_string();
    let campaign = Api::<ExperimentCampaign>::namespaced(client, &namespace)
        .get(name)
        .await
        .with_context(|| format!("reading campaign {namespace}/{name}"))?;
    Ok((
        Filter {
            namespace: Some(namespace.clone()),
            name: Some(name.to_string()),
        },
        Some(format!("{namespace}/{name}")),
        Some(crate::crd::effective_floor(&campaign)),
    ))
}
