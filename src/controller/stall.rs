//! No silent stall: what stops a campaign from the controller's side (a Secret or ConfigMap it
//! names is missing, the remote signer refuses) becomes a condition with a reason and an Event,
//! and the condition is set back once the cause is gone. `status::blocked` turns a raised one
//! into Progressing=False, so `kubectl get` and `describe` say why nothing moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;

use super::ReconcileError;
use super::events::EventSink;
use super::store::StatusStore;
use crate::crd::ExperimentCampaign;
use crate::engine::status::{ConditionType, ConditionUpdate};
use crate::engine::{CampaignStore, Notice, Notify, publish};

/// The condition a reconcile error raises, if it is one the user must act on.
pub fn input_condition(error: &ReconcileError) -> Option<ConditionUpdate> {
    let reason = match error {
        ReconcileError::Missing { .. } => "InputMissing",
        ReconcileError::MissingKey { .. } => "InputKeyMissing",
        ReconcileError::NotText { .. } => "InputNotText",
        ReconcileError::Read { .. } => "InputUnreadable",
        ReconcileError::SignerUrl(_) | ReconcileError::Proposer(_) => "InputInvalid",
        ReconcileError::Engine(_) | ReconcileError::Draining(_) | ReconcileError::Finalizer(_) => {
            return None;
        }
    };
    Some(ConditionUpdate {
        kind: ConditionType::InputsReady,
        ok: false,
        reason,
        message: format!(
            "{error}; nothing is signed or sent until it is fixed (retrying every 15 s)"
        ),
    })
}

/// Raises StatusTooLarge=True when the API server refused a status write for its size; the
/// message says what to do.
pub async fn status_too_large(store: &StatusStore, notify: &EventSink, error: &ReconcileError) {
    let ReconcileError::Engine(crate::engine::UpdateError::TooLarge { message, .. }) = error else {
        return;
    };
    let update = publish::too_large(message);
    publish::raise(store, notify, &update, "Publish").await;
}

/// Raises InputsReady=False for a reconcile that could not read what the spec names.
pub async fn inputs_failed(store: &StatusStore, notify: &EventSink, error: &ReconcileError) {
    if let Some(update) = input_condition(error) {
        publish::raise(store, notify, &update, "Resolve").await;
    }
}

/// Sets InputsReady back once the inputs resolve, writing only when it was raised.
pub async fn inputs_ok(store: &StatusStore, campaign: &ExperimentCampaign) {
    clear_if_raised(
        store,
        campaign,
        ConditionType::InputsReady,
        "Resolved",
        "the inputs the spec names are readable",
    )
    .await;
}

async fn clear_if_raised(
    store: &dyn CampaignStore,
    campaign: &ExperimentCampaign,
    kind: ConditionType,
    reason: &'static str,
    message: &'static str,
) {
    let raised = campaign.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == kind.as_str() && c.status == "False")
    });
    if !raised {
        return;
    }
    let stored = store
        .update(&mut |_, s| {
            publish::clear(s, kind, reason, message);
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, condition = kind.as_str(), "could not clear the condition");
    }
}

/// The campaign's event sink, watching what RUN reports about the signer: a `SignerFailed`
/// notice raises SignerReady=False, the next `ExperimentStarted` (a voucher was signed) sets it
/// back.
pub struct SignerWatch {
    events: Arc<EventSink>,
    store: Arc<StatusStore>,
    failing: AtomicBool,
}

impl SignerWatch {
    /// Watches the notices going to `events` for `campaign` (whose status may already say the
    /// signer failed, before a restart) in `store`.
    pub fn new(
        events: Arc<EventSink>,
        store: Arc<StatusStore>,
        campaign: &ExperimentCampaign,
    ) -> Self {
        let failing = campaign.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == ConditionType::SignerReady.as_str() && c.status == "False")
        });
        Self {
            events,
            store,
            failing: AtomicBool::new(failing),
        }
    }

    async fn observe(&self, notice: Notice) {
        match notice.reason {
            "SignerFailed" => {
                self.failing.store(true, Ordering::Relaxed);
                let update = ConditionUpdate {
                    kind: ConditionType::SignerReady,
                    ok: false,
                    reason: "SignerFailed",
                    message: format!(
                        "{}; check spec.payment.remoteSignerUrl and the token Secret",
                        notice.message
                    ),
                };
                // raise() publishes the Event when the condition changes; a repeat goes on as
                // the notice, folded into the Event's series by the sink.
                if publish::raise(&*self.store, &*self.events, &update, notice.action).await {
                    return;
                }
            }
            "ExperimentStarted" if self.failing.swap(false, Ordering::Relaxed) => {
                let stored = self
                    .store
                    .update(&mut |_, s| {
                        publish::clear(s, ConditionType::SignerReady, "Signed", "the signer signs");
                        Ok(())
                    })
                    .await;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "could not clear SignerReady");
                }
            }
            _ => {}
        }
        self.events.notify(notice).await
    }
}

impl Notify for SignerWatch {
    fn notify(&self, notice: Notice) -> BoxFuture<'_, ()> {
        Box::pin(self.observe(notice))
    }
}
