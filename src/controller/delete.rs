//! Deletion keeps paid work: with `--finalizer`, every campaign carries the finalizer
//! [`FINALIZER`], so a deleted campaign stays (with `deletionTimestamp` set) until each ledger
//! entry (a paid experiment in flight) is recorded in results.jsonl and status, or proven
//! unpaid. Nothing new starts meanwhile: the status store refuses a new ledger entry on a
//! campaign being deleted. A controller that crashes during the deletion finds the campaign
//! again on restart and resumes its entries, as it would for a live one.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};

use super::{Context, ReconcileError, campaign_key, handle_for};
use crate::crd::ExperimentCampaign;
use crate::engine::{Notice, Severity};
use crate::failpoint::{self, Window};

/// The finalizer's name.
pub const FINALIZER: &str = "autoresearch.obol.org/paid-experiments";

/// How often a draining campaign is looked at (its tasks' status writes also trigger it).
const DRAIN_POLL: Duration = Duration::from_secs(2);

/// Reconciles through the finalizer: adds it to a live campaign, then runs the normal step;
/// drains a deleted one and removes the finalizer once nothing paid is in flight.
pub(super) async fn with_finalizer(
    campaign: Arc<ExperimentCampaign>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = campaign.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ExperimentCampaign> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, campaign, |event| async {
        match event {
            Event::Apply(campaign) => super::reconcile_live(campaign, ctx.clone()).await,
            Event::Cleanup(campaign) => drain(campaign, &ctx, &namespace).await,
        }
    })
    .await
    .map_err(|e| match e {
        // Not an error of the finalizer: pass it on as it is, so error_policy sees it.
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(Box::new(other)),
    })
}

/// `Ok` (the finalizer goes) once the ledger is empty; until then resumes every entry no task
/// runs (after a crash) and waits.
async fn drain(
    campaign: Arc<ExperimentCampaign>,
    ctx: &Context,
    namespace: &str,
) -> Result<Action, ReconcileError> {
    let name = campaign.name_any();
    let status = campaign.status.clone().unwrap_or_default();
    let key = campaign_key(namespace, &name);
    if status.ledger.is_empty() {
        tracing::info!(campaign = %key, "deleted, nothing paid in flight: releasing it");
        ctx.engine.forget(&key);
        return Ok(Action::await_change());
    }
    failpoint::crash_at(Window::DeleteDraining);
    let handle = handle_for(ctx, &campaign, namespace, &name).await?;
    let in_flight = status.ledger.len();
    handle
        .notify
        .notify(Notice {
            severity: Severity::Normal,
            reason: "Draining",
            action: "Delete",
            message: format!(
                "deleted: kept until its {in_flight} paid experiments in flight are recorded; nothing new starts"
            ),
        })
        .await;
    ctx.engine.drain(&handle, &campaign);
    Err(ReconcileError::Draining(in_flight))
}

/// How soon to look again after `error`, when it is the finalizer waiting rather than a failure.
pub fn retry_after(error: &ReconcileError) -> Option<Duration> {
    matches!(error, ReconcileError::Draining(_)).then_some(DRAIN_POLL)
}
