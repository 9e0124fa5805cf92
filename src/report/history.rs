//! A campaign's history as the report sees it: the rows of results.jsonl, read tolerantly, and
//! the keep/discard/crash decision of each one.
//!
//! The report reads rows with its own struct, every field beyond the seed ones optional, so that
//! old files (status `completed`/`failed`/`worker_failure`, no decision) and new ones
//! (`decision` = keep/discard/crash, `role`, `replicates`, `params`, `description`; or the
//! decision in `status` with `run_status` beside it) all work.

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::usdc::Usdc;

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The results file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One line of results.jsonl, every field optional except the experiment id. Not
/// `results::ResultRecord`: a report also reads lines that older versions wrote, or that were
/// written by hand, so every field has a default and the id is the only one required.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Row {
    /// Experiment id sent to the worker.
    pub experiment_id: String,
    /// `sha256:<hex>` of the train.py that ran.
    pub train_hash: String,
    /// The result; `None` when the run failed.
    pub val_bpb: Option<f64>,
    /// Worker service URL.
    pub worker_endpoint: String,
    /// ERC-8004 agent id of the worker.
    pub worker_agent_id: Option<u64>,
    /// RFC 3339 time of the record.
    pub timestamp: String,
    /// Settlement transaction.
    pub payment_tx: Option<String>,
    /// Payment network.
    pub network: Option<String>,
    /// Amount paid, in atomic USDC units.
    pub amount: Option<String>,
    /// How the run ended (completed, failed, timeout, worker_failure); in rows written to the
    /// THINK contract's first draft, the decision (keep, discard, crash).
    pub status: Option<String>,
    /// keep, discard or crash, as the engine decided.
    pub decision: Option<String>,
    /// How the run ended, in rows that carry the decision in `status`.
    pub run_status: Option<String>,
    /// experiment (absent), baseline or replication.
    pub role: Option<String>,
    /// For a replication: the experiment id it re-runs.
    pub replicates: Option<String>,
    /// What varies (parameter strategies).
    pub params: Option<Value>,
    /// One line for humans.
    pub description: Option<String>,
    /// The train.py this one was derived from.
    pub parent_train_hash: Option<String>,
    /// The config that ran.
    pub config: Option<Value>,
    /// Peak GPU memory, if a worker reports it.
    pub memory_gb: Option<f64>,
    /// Campaign namespace (controller rows).
    pub campaign_namespace: Option<String>,
    /// Campaign name (controller rows).
    pub campaign_name: Option<String>,
}

/// What a result meant for the campaign: one rule, the strategy's, for the engine and reports.
pub use crate::strategy::{Decision, decide};

/// Why an experiment ran: the `role` column of results.jsonl.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// A proposal.
    Experiment,
    /// The unchanged train.py, run to measure the start.
    Baseline,
    /// A re-run of an earlier experiment on another worker.
    Replication,
}

/// One experiment of the history, with its decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// 1-based position in the history.
    pub index: usize,
    /// The row as read.
    pub row: Row,
    /// Its role.
    pub role: RunKind,
    /// Keep, discard or crash.
    pub decision: Decision,
    /// What changed, for labels: the description, else the parameters.
    pub label: String,
}

impl Entry {
    /// The result, if the run produced a usable one.
    pub fn value(&self) -> Option<f64> {
        if self.decision == Decision::Crash {
            None
        } else {
            self.row.val_bpb.filter(|v| v.is_finite())
        }
    }
}

/// A campaign's recorded results, oldest first, each with its decision: what a report draws.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultHistory {
    /// The campaign, `namespace/name` or a name, if known.
    pub campaign: Option<String>,
    /// An improvement smaller than this is noise.
    pub noise_floor: f64,
    /// The experiments.
    pub entries: Vec<Entry>,
}

/// Which rows of a shared results file belong to the report.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Campaign namespace; `None` matches any.
    pub namespace: Option<String>,
    /// Campaign name; `None` matches every row.
    pub name: Option<String>,
}

impl Filter {
    fn matches(&self, row: &Row) -> bool {
        let name_ok = self
            .name
            .as_ref()
            .is_none_or(|n| row.campaign_name.as_ref() == Some(n));
        let ns_ok = self
            .namespace
            .as_ref()
            .is_none_or(|n| row.campaign_namespace.as_ref() == Some(n));
        name_ok && ns_ok
    }
}

/// Reads the rows of a results file that pass `filter`; a missing file is an empty history and
/// an unreadable line (torn by a crash, edited by hand) is skipped.
pub fn read_rows(path: &Path, filter: &Filter) -> Result<Vec<Row>, HistoryError> {
    let error = |source| HistoryError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(e)),
    };
    let mut rows = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(error)?;
        match serde_json::from_str::<Row>(&line) {
            Ok(row) if !row.experiment_id.is_empty() && filter.matches(&row) => rows.push(row),
            _ => {}
        }
    }
    Ok(rows)
}

fn role(row: &Row) -> RunKind {
    match row.role.as_deref() {
        Some("baseline") => RunKind::Baseline,
        Some("replication") => RunKind::Replication,
        _ => RunKind::Experiment,
    }
}

fn is_decision(word: &str) -> bool {
    matches!(word, "keep" | "discard" | "crash")
}

/// The recorded decision: `decision`, or `status` where it held one.
fn recorded_decision(row: &Row) -> Option<&str> {
    row.decision
        .as_deref()
        .or(row.status.as_deref().filter(|s| is_decision(s)))
}

/// Whether the run itself failed, whatever the file's vintage.
fn run_failed(row: &Row) -> bool {
    let run = row
        .run_status
        .as_deref()
        .or(row.status.as_deref().filter(|s| !is_decision(s)));
    matches!(run, Some(s) if s != "completed")
        || recorded_decision(row) == Some("crash")
        || !row.val_bpb.is_some_and(f64::is_finite)
}

/// A short label: the description, else the parameters as `K=V`, else the config.
pub fn label(row: &Row) -> String {
    if let Some(d) = row.description.as_deref().map(str::trim)
        && !d.is_empty()
    {
        return d.to_string();
    }
    let pairs = |v: &Value| match v {
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    };
    row.params
        .as_ref()
        .and_then(pairs)
        .or_else(|| row.config.as_ref().and_then(pairs))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| row.experiment_id.clone())
}

impl ResultHistory {
    /// Decides every row: a recorded keep/discard/crash is taken as it is; an older row is
    /// replayed against the running best. Replications never move the best.
    pub fn new(campaign: Option<String>, rows: Vec<Row>, noise_floor: f64) -> Self {
        let mut best: Option<f64> = None;
        let mut entries = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let role = role(&row);
            let value = row.val_bpb.filter(|v| v.is_finite());
            let decision = if run_failed(&row) {
                Decision::Crash
            } else {
                match (recorded_decision(&row), role) {
                    (Some("keep"), RunKind::Experiment | RunKind::Baseline) => Decision::Keep,
                    (Some("discard"), _) | (_, RunKind::Replication) => Decision::Discard,
                    _ => decide(best, value, noise_floor),
                }
            };
            if decision == Decision::Keep {
                best = value;
            }
            let label = match (role, row.description.as_deref()) {
                (RunKind::Baseline, None) => "baseline".to_string(),
                _ => label(&row),
            };
            entries.push(Entry {
                index: i + 1,
                label,
                row,
                role,
                decision,
            });
        }
        let mut history = ResultHistory {
            campaign,
            noise_floor,
            entries,
        };
        history.demote_disputed();
        history
    }

    /// A kept claim that its replications contradict (none agrees within the noise floor) was
    /// never promoted by the coordinator: it is a discard here too, so that a lie is not drawn
    /// as the best.
    fn demote_disputed(&mut self) {
        let disputed: Vec<usize> = self
            .entries
            .iter()
            .filter(|e| e.role == RunKind::Experiment && e.decision == Decision::Keep)
            .filter(|e| {
                self.replications_of(&e.row.experiment_id).next().is_some() && !self.verified(e)
            })
            .map(|e| e.index)
            .collect();
        for e in &mut self.entries {
            if disputed.contains(&e.index) {
                e.decision = Decision::Discard;
            }
        }
    }

    /// The baseline: the first baseline run, else where the staircase starts (the first kept
    /// experiment), else the first experiment with a result.
    pub fn baseline(&self) -> Option<&Entry> {
        let usable = || self.entries.iter().filter(|e| e.value().is_some());
        usable()
            .find(|e| e.role == RunKind::Baseline)
            .or_else(|| self.kept().next())
            .or_else(|| usable().find(|e| e.role != RunKind::Replication))
    }

    /// The kept experiments, oldest first (the baseline included if it was kept).
    pub fn kept(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.decision == Decision::Keep && e.value().is_some())
    }

    /// Kept improvements over the baseline (the baseline itself is not one).
    pub fn improvements(&self) -> impl Iterator<Item = &Entry> {
        let baseline = self.baseline().map(|b| b.index);
        self.kept().filter(move |e| Some(e.index) != baseline)
    }

    /// The current best: the last kept experiment.
    pub fn best(&self) -> Option<&Entry> {
        self.kept().last()
    }

    /// Replications of the experiment `id` that produced a value.
    pub fn replications_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| {
            e.role == RunKind::Replication
                && e.row.replicates.as_deref() == Some(id)
                && e.value().is_some()
        })
    }

    /// Whether an independent re-run agreed with the experiment within the noise floor.
    pub fn verified(&self, entry: &Entry) -> bool {
        let Some(v) = entry.value() else {
            return false;
        };
        self.replications_of(&entry.row.experiment_id)
            .filter_map(Entry::value)
            .any(|r| (r - v).abs() <= self.noise_floor)
    }

    /// USDC paid for every experiment of the history (amounts that do not parse count 0).
    pub fn spent(&self) -> Usdc {
        self.entries
            .iter()
            .filter_map(|e| e.row.amount.as_deref())
            .filter_map(|a| Usdc::parse_atomic(a).ok())
            .fold(Usdc::from_atomic(0), |sum, a| {
                sum.checked_add(a).unwrap_or(sum)
            })
    }
}

/// The first 7 hex digits of a `sha256:<hex>` train hash (a git short hash's length).
pub fn short_hash(train_hash: &str) -> String {
    let hex = train_hash.strip_prefix("sha256:").unwrap_or(train_hash);
    hex.chars().take(7).collect()
}
