//! The command line: one binary for the operator and for doing each step by hand.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod audit;
mod best_file;
mod crd;
mod discover;
mod leaderboard;
mod loop_cmd;
mod probe;
mod progress;
mod report;
mod submit;

/// Run autoresearch campaigns on paid ERC-8004 GPU workers over x402.
#[derive(Parser, Debug)]
#[command(name = "autoresearch-coordinator", version, about)]
pub struct Cli {
    /// Log as JSON lines (for the controller in a cluster).
    #[arg(long, global = true, env = "LOG_JSON")]
    pub log_json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ExperimentCampaign CustomResourceDefinition as YAML.
    Crd,
    /// Show a worker's x402 price and whether it is free; pays nothing.
    Probe(probe::ProbeArgs),
    /// Pay one experiment over x402, run it, print and record the result.
    Submit(submit::SubmitArgs),
    /// Run a campaign locally without Kubernetes: the controller's engine, in memory.
    Loop(loop_cmd::LoopArgs),
    /// Run the operator: reconcile ExperimentCampaigns in the cluster.
    Controller(crate::controller::ControllerArgs),
    /// List GPU workers advertising the autoresearch skill (8004scan, chain, with address checks).
    Discover(discover::DiscoverCmd),
    /// Rank workers by the best val_bpb they publish; show the best local result.
    Leaderboard(leaderboard::LeaderboardCmd),
    /// Write the progress chart, results.tsv and a summary of a campaign's history.
    Report(report::ReportArgs),
    /// Compare results.jsonl and a campaign's ledger with the chain; exit 1 on any mismatch.
    Audit(audit::AuditArgs),
}

impl Cli {
    /// Logs go to stderr, so that `--json` output on stdout stays machine-readable.
    /// The level comes from `RUST_LOG` (default `info`). Colours only on a terminal: a log
    /// redirected to a file or read by a pipe gets plain text.
    pub fn init_tracing(&self) {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        if self.log_json {
            builder.json().init();
        } else {
            builder.init();
        }
    }

    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Crd => crd::run(),
            Command::Probe(args) => probe::run(args).await,
            Command::Submit(args) => submit::run(args).await,
            Command::Loop(args) => loop_cmd::run(args, worker_source()?).await,
            Command::Controller(args) => crate::controller::run(args, worker_source()?).await,
            Command::Discover(cmd) => discover::run(cmd).await,
            Command::Leaderboard(cmd) => leaderboard::run(cmd).await,
            Command::Report(args) => report::run(args).await,
            Command::Audit(args) => audit::run(args).await,
        }
    }
}

/// Where the engine finds workers: discovery configured from the environment (IPFS_GATEWAY,
/// ERPC_URL, ERPC_NETWORK, ...), one cache shared by every campaign.
fn worker_source() -> anyhow::Result<std::sync::Arc<dyn crate::engine::WorkerSource>> {
    let settings = crate::discovery::DiscoverySettings::from_env()?;
    let discovery = crate::discovery::Discovery::new(settings);
    Ok(std::sync::Arc::new(crate::engine::Discovered::new(
        discovery,
        std::time::Duration::from_secs(5),
    )))
}
