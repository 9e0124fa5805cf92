//! THINK: the next experiments of a campaign, from its spec and everything it has started.
//!
//! The strategy (`crate::strategy`) is pure; this module gives it the campaign's history
//! (finished experiments from [`super::memory`], in arrival order, then those in flight or
//! pending in status) and turns its proposals into `pending` entries.

use serde_json::Value;

use super::CampaignHandle;
use super::memory::Memory;
use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus, PendingExperiment};
use crate::strategy::{self, History, Outcome, State, Trial};

/// What THINK decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thought {
    /// New experiments for `pending`.
    pub proposals: Vec<PendingExperiment>,
    /// Nothing is left to propose beyond these.
    pub exhausted: bool,
    /// The strategy's state to store.
    pub state: State,
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
    let history = history(memory, handle, status);
    let mut state = status.strategy_state.clone();
    let spec = &campaign.spec;
    match strategy::propose(
        &spec.search,
        &spec.objective,
        spec.base_config.as_ref(),
        &handle.train_py,
        &history,
        &mut state,
        n,
    ) {
        Ok(batch) => Thought {
            proposals: batch
                .proposals
                .into_iter()
                .map(|p| PendingExperiment {
                    experiment_id: p.experiment_id,
                    config: Some(p.config),
                    ..PendingExperiment::default()
                })
                .collect(),
            exhausted: batch.exhausted,
            state,
        },
        Err(e) => {
            tracing::warn!(campaign = %handle.key, error = %e, "strategy refused");
            Thought::none(status)
        }
    }
}

/// The strategy's view: finished experiments, then everything in flight or pending.
fn history(memory: &Memory, handle: &CampaignHandle, status: &ExperimentCampaignStatus) -> History {
    let mut history = memory.history(&handle.key);
    let in_flight = status
        .ledger
        .iter()
        .map(|e| (&e.experiment_id, &e.config))
        .chain(status.pending.iter().map(|p| (&p.experiment_id, &p.config)));
    for (id, config) in in_flight {
        // An entry whose result is already recorded (the crash window) stays finished.
        if !history.contains(id) {
            history.record(Trial {
                experiment_id: id.clone(),
                config: config.clone().unwrap_or(Value::Null),
                outcome: Outcome::InFlight,
            });
        }
    }
    history
}
