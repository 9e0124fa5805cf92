//! THINK: the next experiments of a campaign, from its spec and everything it has started.
//!
//! The strategy (`crate::strategy`) is pure; this module gives it the campaign's history
//! (finished experiments from [`super::memory`], in arrival order, with those in flight or
//! pending in status added) and turns its proposals into `pending` entries.

use std::sync::Arc;

use serde_json::Value;

use super::CampaignHandle;
use super::memory::Memory;
use super::trust;
use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus, PendingExperiment};
use crate::strategy::{self, State};

/// What THINK decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thought {
    /// New experiments for `pending`.
    pub proposals: Vec<PendingExperiment>,
    /// Nothing is left to propose beyond these.
    pub exhausted: bool,
    /// The strategy's state to store.
    pub state: State,
    /// Sources of proposals whose code differs from the campaign's: stored in the script store
    /// before the proposals are (status carries only their hash).
    pub scripts: Vec<Arc<str>>,
}

impl Thought {
    /// No new proposals; the stored state is kept.
    pub fn none(status: &ExperimentCampaignStatus) -> Self {
        Self {
            state: status.strategy_state.clone(),
            ..Self::default()
        }
    }
}

/// Proposes up to `n` experiments. A strategy error (a spec the strategy refuses after it
/// passed validation) is logged and proposes nothing.
pub fn think(
    memory: &Memory,
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    n: usize,
) -> Thought {
    if n == 0 {
        return Thought::none(status);
    }
    let (mut checks, holds) = checks(memory, handle, campaign, status);
    checks.truncate(n);
    let n = n - checks.len();
    // Replications come before new proposals. Baseline runs come first too, but a parameter
    // search does not need their result to propose: once every baseline run has started, its
    // experiments run beside them, and each result waits for the baseline before it is judged
    // (`publish`). (Not before: an experiment must not take the worker a baseline run waits for.)
    let beside = proposes_during_baseline(campaign)
        && checks.is_empty()
        && !baseline_pending(memory, handle, status);
    if n == 0 || (holds && !beside) {
        return Thought {
            proposals: checks,
            ..Thought::none(status)
        };
    }
    let mut state = status.strategy_state.clone();
    let spec = &campaign.spec;
    // Every keep/discard decision uses the measured floor, the strategy's too.
    let objective = crate::crd::ObjectiveSpec {
        noise_floor: memory.noise_floor(&handle.key),
        ..spec.objective.clone()
    };
    let proposed = memory.with_history(&handle.key, in_flight(status), |history| {
        strategy::propose(
            &spec.search,
            &objective,
            spec.base_config.as_ref(),
            &handle.train_py,
            history,
            &mut state,
            n,
        )
    });
    match proposed {
        Ok(batch) => thought_of(handle, batch, state, checks),
        Err(e) => {
            tracing::warn!(campaign = %handle.key, error = %e, "strategy refused");
            Thought::none(status)
        }
    }
}

/// Whether the strategy may propose before the baseline's result is in: a parameter search
/// does (what it proposes first does not depend on results); the model reads the baseline's.
pub(super) fn proposes_during_baseline(campaign: &ExperimentCampaign) -> bool {
    campaign.spec.search.strategy != crate::crd::Strategy::Llm
}

/// Whether a baseline run waits in `pending`, not started yet.
pub(super) fn baseline_pending(
    memory: &Memory,
    handle: &CampaignHandle,
    status: &ExperimentCampaignStatus,
) -> bool {
    let baseline = |id: &str| memory.role(&handle.key, id) == trust::RunRole::Baseline;
    status.pending.iter().any(|p| baseline(&p.experiment_id))
}

/// The experiments in flight or pending: the strategy must not propose them again.
fn in_flight(status: &ExperimentCampaignStatus) -> impl Iterator<Item = &str> {
    let ledger = status.ledger.iter().map(|e| e.experiment_id.as_str());
    ledger.chain(status.pending.iter().map(|p| p.experiment_id.as_str()))
}

/// The strategy's batch as `pending` entries after the checks; changed code goes to `scripts`.
fn thought_of(
    handle: &CampaignHandle,
    batch: strategy::Batch,
    state: State,
    checks: Vec<PendingExperiment>,
) -> Thought {
    let mut thought = Thought {
        exhausted: batch.exhausted,
        state,
        proposals: checks,
        ..Thought::default()
    };
    for p in batch.proposals {
        let changed = *p.train_py != *handle.train_py;
        thought.proposals.push(PendingExperiment {
            experiment_id: p.experiment_id,
            config: Some(p.config),
            params: Some(p.params),
            train_hash: changed.then(|| crate::experiment::train_hash(&p.train_py)),
            description: Some(p.description),
            ..PendingExperiment::default()
        });
        if changed {
            thought.scripts.push(p.train_py);
        }
    }
    thought
}

/// The campaign's trust settings; its base id is that of its own (train.py, baseConfig).
pub fn trust_settings(
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
) -> trust::TrustSettings {
    trust::TrustSettings::of(
        &campaign.spec.objective,
        crate::experiment::experiment_id(&handle.train_py, &base_config(campaign)),
    )
}

fn base_config(campaign: &ExperimentCampaign) -> Value {
    campaign
        .spec
        .base_config
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// Baseline runs and replications to propose before anything else (not already pending or in
/// flight), and whether the strategy must wait for the baseline.
pub fn checks(
    memory: &Memory,
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
) -> (Vec<PendingExperiment>, bool) {
    let base = trust::TrustRun {
        config: Some(base_config(campaign)),
        ..trust::TrustRun::default()
    };
    let known = |id: &str| crate::ledger::knows(status, id);
    let (planned, holds) = memory.plan(&handle.key, &base, &known);
    let pending = planned
        .into_iter()
        .map(|p| PendingExperiment {
            experiment_id: p.experiment_id,
            config: p.run.config,
            params: p.run.params,
            train_hash: p.run.changed_code.then_some(p.run.train_hash),
            description: p.run.description,
            avoid: p.avoid,
            ..PendingExperiment::default()
        })
        .collect();
    (pending, holds)
}
