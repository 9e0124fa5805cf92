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
use crate::strategy::{History, Outcome, Trial};

/// One campaign's memory.
#[derive(Default)]
struct Campaign {
    tasks: HashMap<String, JoinHandle<()>>,
    finished: History,
    unconfirmed: HashMap<String, ResultRecord>,
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
        config: record.config.clone().unwrap_or(Value::Null),
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
        let read = results.read_each(|record| {
            if !belongs(&record) {
                return;
            }
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
            c.finished.record(trial_of(&record));
            c.unconfirmed.insert(record.experiment_id.clone(), record);
        })
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
