//! `discover` and the discovery options shared with `leaderboard` (and later `loop`).

use std::io::Write;

use clap::{Args, ValueEnum};

use crate::crd::{DEFAULT_SCAN_API_URL, DEFAULT_SKILL, DiscoverySpec, OnChainMode};
use crate::discovery::cache::DiskCache;
use crate::discovery::{Discovery, DiscoverySettings, WorkerSet};

/// How to find workers, as on the campaign's `spec.discovery`.
#[derive(Args, Debug, Clone)]
pub struct DiscoveryArgs {
    /// Most agents to read from the index (and to show).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// A CIDR (10.42.0.0/16), address (127.0.0.1) or host pattern
    /// (*.autoresearch.svc.cluster.local) that discovered endpoints may resolve to although it is
    /// private, loopback or cluster-internal. Repeatable. Allowing one range allows nothing else.
    #[arg(long = "allow-private", value_name = "CIDR|HOST")]
    pub allow_private: Vec<String>,
    /// 8004scan public API base URL; empty disables the index.
    #[arg(long, env = "SCAN_API_URL", default_value = DEFAULT_SCAN_API_URL)]
    pub scan_api_url: String,
    /// OASF skill to look for (its other spellings match too).
    #[arg(long, default_value = DEFAULT_SKILL)]
    pub skill: String,
    /// When to read the ERC-8004 registry through ERPC_URL: when the index fails (fallback),
    /// every time (always), to confirm index results (confirm), or never (off).
    #[arg(long, value_enum, default_value_t = OnChainArg::Fallback)]
    pub on_chain: OnChainArg,
    /// Scan again even if the cache in $DATA_DIR/autoresearch/discovery/ is younger than the
    /// refresh interval.
    #[arg(long)]
    pub refresh: bool,
}

/// `--on-chain` values.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum OnChainArg {
    /// Only when the index fails.
    Fallback,
    /// Every time, merged with the index.
    Always,
    /// Keep only index results the chain confirms.
    Confirm,
    /// Never (`off` is accepted too).
    #[value(alias = "off")]
    Never,
}

impl DiscoveryArgs {
    /// The campaign-style spec these flags describe. The eRPC URL comes from the environment
    /// (ERPC_URL), through [`DiscoverySettings::from_env`].
    pub fn spec(&self) -> DiscoverySpec {
        let mut spec = DiscoverySpec {
            scan_api_url: self.scan_api_url.clone(),
            skill: self.skill.clone(),
            allow_private: self.allow_private.clone(),
            ..DiscoverySpec::default()
        };
        spec.on_chain.mode = match self.on_chain {
            OnChainArg::Fallback => OnChainMode::Fallback,
            OnChainArg::Always => OnChainMode::Always,
            OnChainArg::Confirm => OnChainMode::Confirm,
            OnChainArg::Never => OnChainMode::Never,
        };
        // Empty here means: use the settings' ERPC_URL.
        spec.on_chain.erpc_url = String::new();
        spec
    }

    /// Runs discovery once with these flags and the environment (SCAN_API_KEY, DATA_DIR for
    /// the cache...), reading at most `index_rows` agents from the index. A cached result
    /// younger than the refresh interval costs no request, unless `--refresh`.
    /// `data_dir` replaces DATA_DIR (leaderboard's `--data-dir`).
    pub async fn discover(
        &self,
        index_rows: usize,
        data_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<WorkerSet> {
        let mut settings = DiscoverySettings::from_env()?;
        settings.index_limit = index_rows;
        if let Some(dir) = data_dir {
            settings.cache_dir = Some(DiskCache::under_data_dir(dir).dir().to_path_buf());
        }
        let discovery = Discovery::new(settings);
        let started = std::time::SystemTime::now();
        let set = if self.refresh {
            discovery.refresh_allowing(&self.spec(), &[]).await?
        } else {
            discovery.workers(&self.spec()).await?
        };
        if let Ok(age) = started.duration_since(set.fetched_at) {
            tracing::info!(
                "discovery results from the cache, {}s old (--refresh scans again)",
                age.as_secs()
            );
        }
        if set.index_quota_low() {
            tracing::warn!(
                "the 8004scan day quota is down to its reserve: discovery reads the chain until it resets; set SCAN_API_KEY to raise it"
            );
        }
        Ok(set)
    }
}

/// `discover` flags.
#[derive(Args, Debug)]
pub struct DiscoverCmd {
    #[command(flatten)]
    discovery: DiscoveryArgs,
    /// Print JSON (workers, refused, skipped, warnings) instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(cmd: DiscoverCmd) -> anyhow::Result<()> {
    let set = cmd
        .discovery
        .discover(cmd.discovery.limit as usize, None)
        .await?;
    let shown: Vec<_> = set
        .workers
        .iter()
        .take(cmd.discovery.limit as usize)
        .collect();
    let mut out = std::io::stdout().lock();
    if cmd.json {
        let mut value = serde_json::to_value(&set)?;
        value["workers"] = serde_json::to_value(&shown)?;
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        let rows = shown.iter().map(|w| {
            vec![
                w.agent_id.map_or("-".into(), |a| a.to_string()),
                w.name.clone(),
                w.endpoint.clone(),
                if w.x402 { "yes" } else { "no" }.into(),
                w.best_val_bpb.map_or("-".into(), |b| format!("{b:.6}")),
                w.source.as_str().into(),
            ]
        });
        write_table(
            &mut out,
            &[
                "AGENT",
                "NAME",
                "ENDPOINT",
                "X402",
                "BEST VAL_BPB",
                "SOURCE",
            ],
            rows,
        )?;
    }
    report_rejections(&set);
    if set.workers.is_empty() {
        anyhow::bail!("{}", no_workers_hint(&set));
    }
    Ok(())
}

/// Refusals, skips and warnings go to stderr, so that stdout stays the answer.
pub(super) fn report_rejections(set: &WorkerSet) {
    for w in &set.warnings {
        tracing::warn!("{w}");
    }
    if !set.refused.is_empty() {
        eprintln!(
            "{} agent(s) refused by the address policy (discovered endpoints must be public unless allowed with --allow-private):",
            set.refused.len()
        );
        for r in &set.refused {
            eprintln!("  {} {}: {}", r.agent, r.target, r.reason);
        }
    }
    for s in &set.skipped {
        tracing::info!(agent = %s.agent, target = %s.target, "not a worker: {}", s.reason);
    }
}

/// What to say when nothing usable was found.
pub(super) fn no_workers_hint(set: &WorkerSet) -> String {
    if set.refused.is_empty() {
        format!(
            "no workers found ({} agent(s) were not workers); check SCAN_API_URL, --skill, or try --on-chain always with ERPC_URL",
            set.skipped.len()
        )
    } else {
        format!(
            "no usable workers: {} refused by the address policy; if they are yours, allow their range with --allow-private <CIDR|HOST>",
            set.refused.len()
        )
    }
}

/// A plain text table, columns padded to their widest cell.
pub(super) fn write_table(
    out: &mut impl Write,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}
