//! The command line: one binary for the operator and for doing each step by hand.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod crd;
mod discover;
mod leaderboard;

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
    /// List GPU workers advertising the autoresearch skill (8004scan, chain, with address checks).
    Discover(discover::DiscoverCmd),
    /// Rank workers by the best val_bpb they publish; show the best local result.
    Leaderboard(leaderboard::LeaderboardCmd),
}

impl Cli {
    /// Logs go to stderr, so that `--json` output on stdout stays machine-readable.
    /// The level comes from `RUST_LOG` (default `info`).
    pub fn init_tracing(&self) {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
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
            Command::Discover(cmd) => discover::run(cmd).await,
            Command::Leaderboard(cmd) => leaderboard::run(cmd).await,
        }
    }
}
