//! What this process remembers of each campaign between reconciles, bounded by the work in flight
//! rather than by history:
//! - the running tasks (finished ones are dropped on the next reconcile);
//! - the finished experiments as compact strategy trials (id, config, outcome), which THINK
//!   replays, and which make a replayed append a no-op;
//! - full result records only while their status write is unconfirmed (the crash window between
//!   the append to results.jsonl and the status write that removes the ledger entry).
//!
//! Everything here can be rebuilt from results.jsonl and status: a restart loses nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::crd::ExperimentCampaignStatus;
use crate::ledger;
use crate::results::{ResultRecord, ResultsLog};
use crate::strategy::llm::RecentResult;
use crate::strategy::{Decision, History, Outcome, Trial, decide};

/// Results a model is shown, newest last.
const RECENT: usize = 20;

/// One campaign's memory.
#[derive(Default)]
struct Campaign {
    tasks: HashMap<String, JoinHandle<()>>,
    finished: History,
    unconfirmed: HashMap<String, ResultRecord>,
    lineage: Lineage,
    proposing: bool,
}

/// Keep/discard as autoresearch does it: the best kept result is the base of what comes next.
#[derive(Default)]
struct Lineage {
    /// val_bpb and train hash of the best kept result.
    kept: Option<(f64, String)>,
    /// The last results, for a model's prompt.
    recent: std::collections::VecDeque<RecentResult>,
    /// Every train.py hash started or proposed (so a model is not paid to repeat one).
    tried: std::collections::HashSet<String>,
    noise_floor: f64,
}

impl Lineage {
    /// The decision for a result (the one recorded, for rows that have it) and its effect.
    fn add(&mut self, record: &ResultRecord) -> Decision {
        let val = record
            .val_bpb
            .filter(|v| ledger::is_valid_val_bpb(*v) && record.succeeded());
        let decision = record
            .decision
            .as_deref()
            .and_then(Decision::from_status)
            .unwrap_or_else(|| decide(self.kept.as_ref().map(|k| k.0), val, self.noise_floor));
        if let (Decision::Keep, Some(v)) = (decision, val) {
            self.kept = Some((v, record.train_hash.clone()));
        }
        self.tried.insert(record.train_hash.clone());
        self.recent.push_back(RecentResult {
            description: record
                .description
                .clone()
                .unwrap_or_else(|| "the campaign's train.py".into()),
            val_bpb: val,
            decision,
        });
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        decision
    }
}

/// Every campaign's memory, by campaign key.
#[derive(Default)]
pub struct Memory {
    campaigns: Mutex<HashMap<String, Campaign>>,
}

/// The strategy's view of a finished record.
pub fn trial_of(record: &ResultRecord) -> Trial {
    let outcome = match record.val_bpb {
        Some(v) if ledger::is_valid_val_bpb(v) && record.succeeded() => Outcome::Succeeded(v),
        _ => Outcome::Failed,
    };
    Trial {
        experiment_id: record.experiment_id.clone(),
        // Strategies read `params`, never `config` (docs/design.md): a finished trial does not
        // keep a second JSON map, which would double what history costs per experiment.
        config: Value::Null,
        // Rows without `params` (older files) vary the config itself.
        params: record
            .params
            .clone()
            .or_else(|| record.config.clone())
            .unwrap_or(Value::Null),
        outcome,
    }
}

impl Memory {
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Campaign) -> T) -> T {
        let mut map = self.campaigns.lock().expect("memory lock");
        f(map.entry(key.to_string()).or_default())
    }

    /// Reads a campaign's past results once per process, streaming results.jsonl. Records still
    /// in the ledger are kept whole: their status write may not have happened.
    pub fn load(
        &self,
        key: &str,
        belongs: impl Fn(&ResultRecord) -> bool,
        results: &ResultsLog,
        status: &ExperimentCampaignStatus,
        noise_floor: f64,
    ) {
        if self
            .campaigns
            .lock()
            .expect("memory lock")
            .contains_key(key)
        {
            return;
        }
        let mut campaign = Campaign::default();
        campaign.lineage.noise_floor = noise_floor;
        let read = results.read_each(|record| {
            if !belongs(&record) {
                return;
            }
            campaign.lineage.add(&record);
            campaign.finished.record(trial_of(&record));
            if status
                .ledger
                .iter()
                .any(|e| e.experiment_id == record.experiment_id)
            {
                campaign
                    .unconfirmed
                    .insert(record.experiment_id.clone(), record);
            }
        });
        if let Err(e) = read {
            tracing::warn!(error = %e, path = %results.path().display(), "cannot read results history");
        }
        self.campaigns
            .lock()
            .expect("memory lock")
            .entry(key.to_string())
            .or_insert(campaign);
    }

    /// The finished trials, in arrival order (a copy: THINK adds what is in flight).
    pub fn history(&self, key: &str) -> History {
        self.with(key, |c| c.finished.clone())
    }

    /// Whether results.jsonl has this experiment.
    pub fn is_recorded(&self, key: &str, experiment_id: &str) -> bool {
        // Only finished experiments are in `finished`: THINK adds in-flight ones to a copy.
        self.with(key, |c| {
            c.unconfirmed.contains_key(experiment_id) || c.finished.contains(experiment_id)
        })
    }

    /// The record of an experiment whose status write is not confirmed yet.
    pub fn unconfirmed(&self, key: &str, experiment_id: &str) -> Option<ResultRecord> {
        self.with(key, |c| c.unconfirmed.get(experiment_id).cloned())
    }

    /// Notes a record appended to results.jsonl; it stays whole until [`Memory::confirm`].
    pub fn recorded(&self, key: &str, record: ResultRecord) {
        self.with(key, |c| {
            c.lineage.add(&record);
            c.finished.record(trial_of(&record));
            c.unconfirmed.insert(record.experiment_id.clone(), record);
        })
    }

    /// The keep/discard decision a new result would get now.
    pub fn decide(&self, key: &str, record: &ResultRecord) -> Decision {
        self.with(key, |c| {
            let val = record
                .val_bpb
                .filter(|v| ledger::is_valid_val_bpb(*v) && record.succeeded());
            decide(
                c.lineage.kept.as_ref().map(|k| k.0),
                val,
                c.lineage.noise_floor,
            )
        })
    }

    /// The best kept train hash (none: the campaign's own) and the recent results.
    pub fn lineage(&self, key: &str) -> (Option<String>, Vec<RecentResult>) {
        self.with(key, |c| {
            (
                c.lineage.kept.as_ref().map(|k| k.1.clone()),
                c.lineage.recent.iter().cloned().collect(),
            )
        })
    }

    /// Whether the campaign has any result.
    pub fn has_results(&self, key: &str) -> bool {
        self.with(key, |c| !c.finished.is_empty())
    }

    /// The noise floor keep/discard decisions use (the spec may change it).
    pub fn set_noise_floor(&self, key: &str, noise_floor: f64) {
        self.with(key, |c| c.lineage.noise_floor = noise_floor)
    }

    /// Whether this train hash was already started or proposed in the campaign.
    pub fn tried(&self, key: &str, train_hash: &str) -> bool {
        self.with(key, |c| c.lineage.tried.contains(train_hash))
    }

    /// Notes a proposed train hash.
    pub fn note_tried(&self, key: &str, train_hash: &str) {
        self.with(key, |c| {
            c.lineage.tried.insert(train_hash.to_string());
        })
    }

    /// Marks the campaign's proposer as running; false when one already runs.
    pub fn start_proposing(&self, key: &str) -> bool {
        self.with(key, |c| !std::mem::replace(&mut c.proposing, true))
    }

    /// The campaign's proposer has ended.
    pub fn stop_proposing(&self, key: &str) {
        self.with(key, |c| c.proposing = false)
    }

    /// The status write for `experiment_id` succeeded: its full record is no longer needed.
    pub fn confirm(&self, key: &str, experiment_id: &str) {
        self.with(key, |c| {
            c.unconfirmed.remove(experiment_id);
        })
    }

    /// Whether a task for this experiment is running in this process.
    pub fn has_live_task(&self, key: &str, experiment_id: &str) -> bool {
        self.with(key, |c| {
            c.tasks.get(experiment_id).is_some_and(|t| !t.is_finished())
        })
    }

    /// Running tasks of a campaign; finished ones are dropped.
    pub fn running_tasks(&self, key: &str) -> usize {
        self.with(key, |c| {
            c.tasks.retain(|_, t| !t.is_finished());
            c.tasks.len()
        })
    }

    /// Registers a spawned task.
    pub fn add_task(&self, key: &str, experiment_id: String, task: JoinHandle<()>) {
        self.with(key, |c| {
            c.tasks.insert(experiment_id, task);
        })
    }

    /// Forgets a task that has ended.
    pub fn remove_task(&self, key: &str, experiment_id: &str) {
        let mut map = self.campaigns.lock().expect("memory lock");
        if let Some(c) = map.get_mut(key) {
            c.tasks.remove(experiment_id);
        }
    }

    /// Aborts every task of every campaign and forgets everything.
    pub fn abort_all(&self) {
        let mut map = self.campaigns.lock().expect("memory lock");
        for campaign in map.values_mut() {
            for (_, task) in campaign.tasks.drain() {
                task.abort();
            }
        }
        map.clear();
    }

    /// Forgets a deleted campaign. Its running tasks are not aborted: they are paid experiments
    /// that finish and append their results.
    pub fn forget(&self, key: &str) {
        self.campaigns.lock().expect("memory lock").remove(key);
    }

    /// Forgets every campaign for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.campaigns
            .lock()
            .expect("memory lock")
            .retain(|key, _| keep(key));
    }

    /// Campaigns remembered.
    pub fn len(&self) -> usize {
        self.campaigns.lock().expect("memory lock").len()
    }

    /// Whether no campaign is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
