//! THINK by a language model (`search.strategy: llm`). A model call can take many seconds, so
//! it never runs inside a reconcile: at most one proposer task per campaign asks the model
//! (`crate::strategy::llm::LlmProposer`) for one edit of the current base train.py — the best
//! kept one — stores the edited source in the script store, and adds it to `pending` in the same
//! status write that counts the model calls (`strategyState.llmCalls`). Every refused proposal
//! is an Event and a metric, and nothing is paid for it. Reaching `search.llm.maxCalls` stops
//! the campaign with `ProposerExhausted` once nothing is in flight.

use std::sync::Arc;

use super::{CampaignHandle, Engine, Notice, Severity};
use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus, PendingExperiment};
use crate::experiment;
use crate::strategy::llm::{LlmProposer, ProposalContext, ProposeOutcome};

use crate::ledger::{STATE_MODEL_CALLS, model_calls};

/// Starts the campaign's proposer task when a slot is free, nothing is pending and no proposer
/// runs yet.
pub fn maybe_start(
    engine: &Arc<Engine>,
    handle: &CampaignHandle,
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    wanted: usize,
) {
    let Some(llm) = campaign.spec.search.llm.as_ref() else {
        return;
    };
    let calls_left = llm.max_calls.saturating_sub(model_calls(status));
    if wanted == 0 || !status.pending.is_empty() || calls_left == 0 {
        return;
    }
    let Some(proposer) = handle.proposer.clone() else {
        return;
    };
    // Baseline runs before the first proposal, replications before new ones (docs/trust.md).
    let (mut checks, holds) = super::think::checks(&engine.memory, handle, campaign, status);
    if !checks.is_empty() {
        checks.truncate(wanted);
        tokio::spawn(propose_checks(engine.clone(), handle.clone(), checks));
        return;
    }
    if holds || !engine.memory.start_proposing(&handle.key) {
        return;
    }
    let base_config = campaign
        .spec
        .base_config
        .clone()
        .unwrap_or_else(|| serde_json::json!({}));
    if status.submitted == 0 && !engine.memory.has_results(&handle.key) {
        // As autoresearch does, the first run is the unmodified train.py: the baseline every
        // proposal is judged against. No model call is needed for it.
        tokio::spawn(propose_baseline(
            engine.clone(),
            handle.clone(),
            base_config,
        ));
        return;
    }
    let (engine2, handle2) = (engine.clone(), handle.clone());
    let noise_floor = engine.memory.noise_floor(&handle.key);
    tokio::spawn(async move {
        propose_once(
            &engine2,
            &handle2,
            &proposer,
            base_config,
            noise_floor,
            calls_left,
        )
        .await;
        engine2.memory.stop_proposing(&handle2.key);
        engine2.changed.notify_one();
    });
}

async fn propose_baseline(engine: Arc<Engine>, handle: CampaignHandle, config: serde_json::Value) {
    let baseline = PendingExperiment {
        experiment_id: experiment::experiment_id(&handle.train_py, &config),
        config: Some(config),
        description: Some("baseline".into()),
        ..PendingExperiment::default()
    };
    add_pending(&engine, &handle, vec![baseline]).await;
    engine.memory.stop_proposing(&handle.key);
    engine.changed.notify_one();
}

/// Adds baseline runs and replications to `pending` (a model call is not needed for them).
async fn propose_checks(
    engine: Arc<Engine>,
    handle: CampaignHandle,
    checks: Vec<PendingExperiment>,
) {
    add_pending(&engine, &handle, checks).await;
    engine.changed.notify_one();
}

/// Adds experiments that need no model call to `pending`.
async fn add_pending(
    engine: &Engine,
    handle: &CampaignHandle,
    mut proposals: Vec<PendingExperiment>,
) {
    super::configs::park_all(&engine.scripts, &handle.key, &mut proposals).await;
    let stored = handle
        .store
        .update(&mut |_, s| {
            crate::ledger::propose(s, proposals.clone());
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(campaign = %handle.key, error = %e, "could not propose the baseline, baseline runs or replications");
    }
}

/// One model call: a proposal from the best kept train.py, stored and added to `pending`.
async fn propose_once(
    engine: &Engine,
    handle: &CampaignHandle,
    proposer: &LlmProposer,
    base_config: serde_json::Value,
    noise_floor: f64,
    calls_left: u32,
) {
    let (base_hash, recent) = engine.memory.lineage(&handle.key);
    let base = match super::run::source_of(engine, handle, base_hash.as_deref()).await {
        Ok(source) => source,
        Err(e) => {
            tracing::warn!(campaign = %handle.key, error = %e, "the kept train.py is missing; proposing from the campaign's");
            handle.train_py.clone()
        }
    };
    let key = handle.key.clone();
    let tried = |hash: &str| engine.memory.tried(&key, hash);
    let ctx = ProposalContext {
        base_train_py: &base,
        recent: &recent,
        noise_floor,
        tried: &tried,
    };
    let outcome = proposer.propose(&ctx, calls_left).await;
    report(engine, handle, &outcome).await;
    let pending = match &outcome.proposal {
        Some(p) => pending_of(engine, handle, p, base_config).await,
        None => None,
    };
    store_proposal(handle, pending, outcome.calls).await;
}

/// The proposal as a `pending` entry: its train.py stored, a large config parked, its hash
/// noted as tried. None when the source cannot be stored.
async fn pending_of(
    engine: &Engine,
    handle: &CampaignHandle,
    proposal: &crate::strategy::llm::LlmProposal,
    base_config: serde_json::Value,
) -> Option<PendingExperiment> {
    let hash = match engine.scripts.put(&proposal.train_py).await {
        Ok(hash) => hash,
        Err(e) => {
            tracing::error!(campaign = %handle.key, error = %e, "cannot store the proposed train.py");
            return None;
        }
    };
    let mut parked = vec![PendingExperiment {
        experiment_id: experiment::experiment_id(&proposal.train_py, &base_config),
        config: Some(base_config),
        train_hash: Some(hash),
        description: Some(proposal.description.clone()),
        ..PendingExperiment::default()
    }];
    super::configs::park_all(&engine.scripts, &handle.key, &mut parked).await;
    let pending = parked.pop()?;
    engine.memory.note_tried(
        &handle.key,
        pending.train_hash.as_deref().unwrap_or_default(),
    );
    Some(pending)
}

/// Counts the model calls and adds the proposal, if any, in one status write.
async fn store_proposal(handle: &CampaignHandle, pending: Option<PendingExperiment>, calls: u32) {
    let stored = handle
        .store
        .update(&mut |_, s| {
            let made = model_calls(s).saturating_add(calls);
            s.strategy_state
                .insert(STATE_MODEL_CALLS.into(), made.to_string());
            if let Some(p) = &pending {
                crate::ledger::propose(s, vec![p.clone()]);
            }
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(campaign = %handle.key, error = %e, "could not store the proposal");
    }
}

/// Events and metrics for what the proposer did.
async fn report(engine: &Engine, handle: &CampaignHandle, outcome: &ProposeOutcome) {
    for refused in &outcome.refusals {
        engine
            .metrics
            .proposals_refused
            .with_label_values(&[refused.kind.as_str()])
            .inc();
        handle
            .notify
            .notify(Notice {
                severity: Severity::Warning,
                reason: "ProposalRefused",
                action: "Think",
                message: format!("{refused}; nothing was paid, the model is asked again"),
            })
            .await;
    }
    if let Some(e) = &outcome.error {
        handle
            .notify
            .notify(Notice {
                severity: Severity::Warning,
                reason: "ProposerFailed",
                action: "Think",
                message: format!("the model gave no usable proposal: {e}"),
            })
            .await;
    }
    if let Some(p) = &outcome.proposal {
        handle
            .notify
            .notify(Notice {
                severity: Severity::Normal,
                reason: "Proposed",
                action: "Think",
                message: format!("{} ({} model calls)", p.description, outcome.calls),
            })
            .await;
    }
}
