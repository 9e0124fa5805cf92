//! Where a campaign's spec and status live: the API server for the controller
//! (`controller::store::StatusStore`), memory for `loop`. The engine only reads the campaign and
//! applies transitions to its status through this trait.

use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus};
use crate::ledger::Refusal;

/// A status transition: pure, may refuse (then nothing is written), may be called more than once
/// (after a write conflict), so it reads everything it needs from its arguments.
pub type Transition<'a> = &'a mut (
            dyn FnMut(&ExperimentCampaign, &mut ExperimentCampaignStatus) -> Result<(), Refusal>
                + Send
        );

/// Why a status update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The transition refused; nothing was written.
    #[error(transparent)]
    Refused(Refusal),
    /// The campaign is gone (deleted): no further payments are made for it.
    #[error("campaign {0} no longer exists")]
    Gone(String),
    /// The API server refused the write as too large ("etcdserver: request is too large",
    /// 413, or gRPC ResourceExhausted): retrying the same write cannot help.
    #[error("the status of campaign {name} is too large for the API server: {message}")]
    TooLarge {
        /// Campaign name.
        name: String,
        /// What the API server said.
        message: String,
    },
    /// The store failed (the API server, or too many write conflicts).
    #[error("updating the status of campaign {name}: {source}")]
    Store {
        /// Campaign name.
        name: String,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A campaign's spec and status.
pub trait CampaignStore: Send + Sync {
    /// The campaign now, or `None` if it was deleted.
    fn get(&self) -> BoxFuture<'_, Result<Option<ExperimentCampaign>, UpdateError>>;

    /// Applies `transition` to the latest status and stores the result before returning.
    fn update<'a>(
        &'a self,
        transition: Transition<'a>,
    ) -> BoxFuture<'a, Result<ExperimentCampaign, UpdateError>>;
}

/// A campaign kept in memory (the `loop` command, and tests of the engine).
pub struct MemoryStore {
    campaign: Mutex<Option<ExperimentCampaign>>,
}

impl MemoryStore {
    /// A store holding `campaign`.
    pub fn new(campaign: ExperimentCampaign) -> Self {
        Self {
            campaign: Mutex::new(Some(campaign)),
        }
    }

    /// The campaign as stored now.
    pub fn snapshot(&self) -> Option<ExperimentCampaign> {
        self.campaign.lock().expect("store lock").clone()
    }

    /// Deletes the campaign (as `kubectl delete` would).
    pub fn delete(&self) {
        *self.campaign.lock().expect("store lock") = None;
    }

    /// Marks the campaign deleted while a finalizer keeps it (as `kubectl delete` would then;
    /// the finalizer itself is the controller's).
    #[cfg(test)]
    pub fn mark_deleted(&self) {
        if let Some(c) = self.campaign.lock().expect("store lock").as_mut() {
            let now = k8s_openapi::jiff::Timestamp::now();
            c.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        }
    }

    /// Replaces the spec (as `kubectl apply` would).
    pub fn set_spec(&self, spec: crate::crd::ExperimentCampaignSpec) {
        if let Some(c) = self.campaign.lock().expect("store lock").as_mut() {
            c.spec = spec;
        }
    }
}

impl CampaignStore for MemoryStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<ExperimentCampaign>, UpdateError>> {
        let campaign = self.snapshot();
        Box::pin(async move { Ok(campaign) })
    }

    fn update<'a>(
        &'a self,
        transition: Transition<'a>,
    ) -> BoxFuture<'a, Result<ExperimentCampaign, UpdateError>> {
        let result = (|| {
            let mut guard = self.campaign.lock().expect("store lock");
            let campaign = guard
                .as_mut()
                .ok_or_else(|| UpdateError::Gone("local".into()))?;
            let mut status = campaign.status.clone().unwrap_or_default();
            transition(campaign, &mut status).map_err(UpdateError::Refused)?;
            campaign.status = Some(status);
            Ok(campaign.clone())
        })();
        Box::pin(async move { result })
    }
}
