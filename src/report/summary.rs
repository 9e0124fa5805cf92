//! The report's summary: best and baseline, counts, money, workers and the best code change, as
//! one value printed as text or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::history::{Decision, Entry, ResultHistory, RunKind, short_hash};
use crate::usdc::Usdc;

/// One experiment, as the summary names it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ReportedRun {
    /// val_bpb.
    pub val_bpb: f64,
    /// `sha256:<hex>` of its train.py.
    pub train_hash: String,
    /// Experiment id.
    pub experiment_id: String,
    /// What changed.
    pub description: String,
}

/// A worker's record in this history.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct WorkerTally {
    /// Service URL.
    pub endpoint: String,
    /// ERC-8004 agent id, if known.
    pub agent_id: Option<u64>,
    /// Experiments it ran.
    pub runs: usize,
    /// Runs without a result.
    pub failures: usize,
    /// USDC of its last paid run.
    pub price_usdc: Option<String>,
    /// Replications (its own or of its results) that agreed within the noise floor.
    pub agreements: usize,
    /// Replications that did not.
    pub disagreements: usize,
}

/// The summary of a history.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Summary {
    /// The campaign, if known.
    pub campaign: Option<String>,
    /// Every recorded run (baseline and replications included).
    pub experiments: usize,
    /// Runs without a result.
    pub failures: usize,
    /// Re-runs of earlier experiments.
    pub replications: usize,
    /// Kept improvements over the baseline.
    pub kept_improvements: usize,
    /// The best kept result.
    pub best: Option<ReportedRun>,
    /// Whether an independent re-run agreed with the best within the noise floor.
    pub best_verified: bool,
    /// The baseline run.
    pub baseline: Option<ReportedRun>,
    /// Baseline minus best (positive is better).
    pub improvement: Option<f64>,
    /// The noise floor used for keep/discard.
    pub noise_floor: f64,
    /// USDC paid for the history.
    pub spent_usdc: String,
    /// USDC spent per kept improvement.
    pub spent_per_improvement_usdc: Option<String>,
    /// Per worker, by endpoint.
    pub workers: Vec<WorkerTally>,
    /// The unified diff of the best train.py against the baseline, when the code changed.
    pub diff: Option<String>,
}

fn run(e: &Entry) -> ReportedRun {
    ReportedRun {
        val_bpb: e.value().unwrap_or_default(),
        train_hash: e.row.train_hash.clone(),
        experiment_id: e.row.experiment_id.clone(),
        description: e.label.clone(),
    }
}

impl Summary {
    /// Summarises `history`; `diff` is the code change of the best, if the caller found one.
    pub fn new(history: &ResultHistory, diff: Option<String>) -> Self {
        let best = history.best();
        let baseline = history.baseline();
        let kept = history.improvements().count();
        let spent = history.spent();
        let per_improvement =
            (kept > 0).then(|| Usdc::from_atomic(spent.atomic() / kept as u128).to_string());
        Summary {
            campaign: history.campaign.clone(),
            experiments: history.entries.len(),
            failures: count(history, |e| e.decision == Decision::Crash),
            replications: count(history, |e| e.role == RunKind::Replication),
            kept_improvements: kept,
            best_verified: best.is_some_and(|b| history.verified(b)),
            improvement: best
                .zip(baseline)
                .and_then(|(b, base)| Some(base.value()? - b.value()?)),
            best: best.map(run),
            baseline: baseline.map(run),
            noise_floor: history.noise_floor,
            spent_usdc: spent.to_string(),
            spent_per_improvement_usdc: per_improvement,
            workers: workers(history),
            diff: diff.filter(|d| !d.is_empty()),
        }
    }

    /// The summary as text for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        if let Some(c) = &self.campaign {
            writeln!(out, "campaign: {c}")?;
        }
        match &self.best {
            Some(b) => writeln!(
                out,
                "best val_bpb: {:.6} ({}), train {} ({}), {}",
                b.val_bpb,
                if self.best_verified {
                    "verified by a replication"
                } else {
                    "not verified"
                },
                short_hash(&b.train_hash),
                b.experiment_id,
                b.description
            )?,
            None => writeln!(out, "best val_bpb: none yet")?,
        }
        if let Some(base) = &self.baseline {
            writeln!(
                out,
                "baseline: {:.6} ({}); improvement {:.6} (noise floor {})",
                base.val_bpb,
                base.experiment_id,
                self.improvement.unwrap_or_default(),
                self.noise_floor
            )?;
        }
        writeln!(
            out,
            "experiments: {}, failures: {}, replications: {}, kept improvements: {}",
            self.experiments, self.failures, self.replications, self.kept_improvements
        )?;
        writeln!(
            out,
            "spent: {} USDC{}",
            self.spent_usdc,
            self.spent_per_improvement_usdc
                .as_ref()
                .map(|p| format!(", {p} USDC per kept improvement"))
                .unwrap_or_default()
        )?;
        self.write_workers(out)?;
        if let Some(diff) = &self.diff {
            writeln!(out, "best train.py against the baseline:\n{diff}")?;
        }
        Ok(())
    }

    fn write_workers(&self, out: &mut String) -> std::fmt::Result {
        if self.workers.is_empty() {
            return Ok(());
        }
        writeln!(out, "workers:")?;
        for w in &self.workers {
            writeln!(
                out,
                "  {}  runs {}, failures {}, price {} USDC, agreements {}/{}",
                w.endpoint,
                w.runs,
                w.failures,
                w.price_usdc.as_deref().unwrap_or("?"),
                w.agreements,
                w.agreements + w.disagreements
            )?;
        }
        Ok(())
    }
}

fn count(history: &ResultHistory, f: impl Fn(&Entry) -> bool) -> usize {
    history.entries.iter().filter(|e| f(e)).count()
}

fn workers(history: &ResultHistory) -> Vec<WorkerTally> {
    let mut by_endpoint: BTreeMap<&str, WorkerTally> = BTreeMap::new();
    for e in &history.entries {
        let w = by_endpoint
            .entry(&e.row.worker_endpoint)
            .or_insert_with(|| WorkerTally {
                endpoint: e.row.worker_endpoint.clone(),
                ..Default::default()
            });
        w.runs += 1;
        w.agent_id = e.row.worker_agent_id.or(w.agent_id);
        if e.decision == Decision::Crash {
            w.failures += 1;
        }
        if let Some(a) = e
            .row
            .amount
            .as_deref()
            .and_then(|a| Usdc::parse_atomic(a).ok())
        {
            w.price_usdc = Some(a.to_string());
        }
    }
    // A replication counts for both workers: the one that re-ran and the one it checked.
    for r in history
        .entries
        .iter()
        .filter(|e| e.role == RunKind::Replication)
    {
        let original = history.entries.iter().find(|e| {
            e.role != RunKind::Replication
                && Some(&e.row.experiment_id) == r.row.replicates.as_ref()
        });
        let (Some(o), Some(rv)) = (original, r.value()) else {
            continue;
        };
        let Some(ov) = o.value() else { continue };
        let agree = (rv - ov).abs() <= history.noise_floor;
        for endpoint in [&r.row.worker_endpoint, &o.row.worker_endpoint] {
            if let Some(w) = by_endpoint.get_mut(endpoint.as_str()) {
                if agree {
                    w.agreements += 1;
                } else {
                    w.disagreements += 1;
                }
            }
        }
    }
    by_endpoint.into_values().collect()
}
