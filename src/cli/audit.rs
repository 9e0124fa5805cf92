//! `audit`: compares results.jsonl and a campaign's ledger with the chain and exits non-zero on
//! any mismatch (docs/money.md).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::chain::UsdcChain;
use crate::chain::audit::{self, Finding, Report};
use crate::crd::{ExperimentCampaign, LedgerEntry};
use crate::results::{ResultRecord, default_path, read_records};

/// Arguments of `audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// A campaign as `kubectl get -o yaml` prints it (its status holds the ledger); only its
    /// lines of results.jsonl are audited.
    #[arg(long, conflicts_with_all = ["namespace", "name"])]
    pub campaign: Option<PathBuf>,
    /// Namespace of the campaign to read from the cluster (with --name).
    #[arg(long, requires = "name")]
    pub namespace: Option<String>,
    /// Name of the campaign to read from the cluster.
    #[arg(long)]
    pub name: Option<String>,
    /// results.jsonl (default: $DATA_DIR/autoresearch/results.jsonl).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Folder holding autoresearch/results.jsonl.
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,
    /// JSON-RPC endpoint of the payment chain.
    #[arg(long, env = "ERPC_URL")]
    pub rpc_url: String,
}

pub(super) async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let campaign = load_campaign(&args).await?;
    let path = args
        .results
        .clone()
        .unwrap_or_else(|| default_path(&args.data_dir));
    let records = read_records(&path).with_context(|| format!("reading {}", path.display()))?;
    let records: Vec<ResultRecord> = records
        .into_iter()
        .filter(|r| campaign.as_ref().is_none_or(|c| belongs(r, c)))
        .collect();
    let ledger: Vec<LedgerEntry> = campaign
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .map(|s| s.ledger.clone())
        .unwrap_or_default();
    let chain = UsdcChain::new(&args.rpc_url)?;
    let report = audit::audit(&chain, &records, &ledger).await?;
    print(&report)?;
    if report.has_mismatch() {
        anyhow::bail!("the books and the chain disagree");
    }
    Ok(())
}

async fn load_campaign(args: &AuditArgs) -> anyhow::Result<Option<ExperimentCampaign>> {
    if let Some(path) = &args.campaign {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not an ExperimentCampaign", path.display()))?;
        return Ok(Some(c));
    }
    let Some(name) = &args.name else {
        return Ok(None);
    };
    let client = kube::Client::try_default().await?;
    let api: kube::Api<ExperimentCampaign> = match &args.namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::default_namespaced(client),
    };
    Ok(Some(api.get(name).await?))
}

/// Whether a line is the campaign's (lines of `loop` name no namespace).
fn belongs(record: &ResultRecord, campaign: &ExperimentCampaign) -> bool {
    record.campaign_name.as_deref() == campaign.metadata.name.as_deref()
        && (record.campaign_namespace.is_none()
            || record.campaign_namespace == campaign.metadata.namespace)
}

fn print(report: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut counts = [0usize; 5];
    for l in &report.lines {
        let (index, word) = match &l.finding {
            Finding::Paid => (0, "paid".to_string()),
            Finding::Unpaid => (1, "unpaid".to_string()),
            Finding::Uncertain => (2, "uncertain".to_string()),
            Finding::Mismatch(why) => (3, format!("MISMATCH: {why}")),
            Finding::Unchecked => (4, "unchecked (no voucher in the line)".to_string()),
        };
        counts[index] += 1;
        let nonce = l.nonce.map_or("-".into(), |n| n.to_string());
        let tx = l.tx.map_or("-".into(), |t| t.to_string());
        writeln!(
            out,
            "{:<14} {:<28} {:>10} USDC  nonce {nonce}  tx {tx}  {word}",
            l.source, l.experiment_id, l.recorded
        )?;
    }
    writeln!(
        out,
        "paid {}, unpaid {}, uncertain {}, mismatches {}, unchecked {}",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    )?;
    if !report.unrecorded.is_empty() {
        writeln!(
            out,
            "{} authorization(s) of the payer used on chain are in no line or entry here (another campaign's, or a lost record): {}",
            report.unrecorded.len(),
            report
                .unrecorded
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    Ok(())
}
