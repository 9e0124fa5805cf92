//! `leaderboard`: workers ranked by the val_bpb they publish, and the best local result.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::discover::{DiscoveryArgs, report_rejections, write_table};
use crate::discovery::{Worker, rank_by_published_bpb};
use crate::results::{ResultRecord, default_path, read_records};

/// Index rows read to rank workers, whatever `--limit` shows.
const LEADERBOARD_INDEX_ROWS: usize = 100;

/// `leaderboard` flags.
#[derive(Args, Debug)]
pub struct LeaderboardCmd {
    #[command(flatten)]
    discovery: DiscoveryArgs,
    /// Data directory; results are read from `<dir>/autoresearch/results.jsonl`.
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(cmd: LeaderboardCmd) -> anyhow::Result<()> {
    let path = default_path(&cmd.data_dir);
    let records = read_records(&path).map_err(|e| {
        anyhow::anyhow!(
            "reading {}: {e}; check DATA_DIR or --data-dir",
            path.display()
        )
    })?;
    let local_best = best_local(&records);
    // Ranking needs more of the index than the rows shown.
    let set = cmd
        .discovery
        .discover(
            (cmd.discovery.limit as usize).max(LEADERBOARD_INDEX_ROWS),
            Some(&cmd.data_dir),
        )
        .await?;
    let ranked: Vec<_> = rank_by_published_bpb(&set.workers)
        .into_iter()
        .take(cmd.discovery.limit as usize)
        .collect();
    let mut out = std::io::stdout().lock();
    if cmd.json {
        let value = json!({"workers": ranked, "local_best": local_best, "local_results": records.len(),
            "refused": set.refused, "warnings": set.warnings});
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        print_table(&mut out, &ranked, local_best.as_ref(), records.len(), &path)?;
    }
    report_rejections(&set);
    Ok(())
}

/// The ranking as a table, then the best local result.
fn print_table(
    out: &mut impl Write,
    ranked: &[Worker],
    local_best: Option<&ResultRecord>,
    local_results: usize,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let rows = ranked.iter().enumerate().map(|(i, w)| {
        vec![
            (i + 1).to_string(),
            w.best_val_bpb.map_or("-".into(), |b| format!("{b:.6}")),
            w.agent_id.map_or("-".into(), |a| a.to_string()),
            w.name.clone(),
            w.gpu.clone().unwrap_or_else(|| "-".into()),
            w.total_experiments.map_or("-".into(), |n| n.to_string()),
            w.endpoint.clone(),
        ]
    });
    write_table(
        out,
        &[
            "RANK",
            "BEST VAL_BPB",
            "AGENT",
            "NAME",
            "GPU",
            "EXPERIMENTS",
            "ENDPOINT",
        ],
        rows,
    )?;
    match local_best {
        Some(r) => writeln!(
            out,
            "\nbest local result: val_bpb {:.6}, experiment {}, worker {} ({} result(s) in {})",
            r.val_bpb.unwrap_or_default(),
            r.experiment_id,
            r.worker_endpoint,
            local_results,
            path.display()
        )?,
        None => writeln!(out, "\nno local results yet in {}", path.display())?,
    }
    Ok(())
}

/// The local record with the lowest val_bpb (failed runs have none).
fn best_local(records: &[ResultRecord]) -> Option<ResultRecord> {
    records
        .iter()
        .filter(|r| r.val_bpb.is_some_and(f64::is_finite))
        .min_by(|a, b| {
            a.val_bpb
                .unwrap_or(f64::MAX)
                .total_cmp(&b.val_bpb.unwrap_or(f64::MAX))
        })
        .cloned()
}
