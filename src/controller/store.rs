//! Campaign status in the API server, written with optimistic concurrency.
//!
//! Every change goes through [`StatusStore::update`]: read the latest object, apply a pure
//! transition (see `ledger`), replace the status with the read `resourceVersion` as a precondition,
//! and start over on a conflict. A transition that refuses (the budget, a duplicate) writes
//! nothing. This is what makes "written before it is sent" true: `update` returns only once the
//! API server has stored the change.

use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus};

/// Conflicts tolerated before giving up (each one means someone else wrote in between).
const MAX_CONFLICTS: usize = 8;

/// Why a status update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The transition refused; nothing was written.
    #[error(transparent)]
    Refused(E),
    /// The campaign is gone.
    #[error("campaign {0} no longer exists")]
    Gone(String),
    /// The store failed (the API server, or too many conflicts).
    #[error("updating the status of campaign {name}: {source}")]
    Store {
        /// Campaign name.
        name: String,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One campaign's status in the API server.
pub struct StatusStore {
    api: Api<ExperimentCampaign>,
    name: String,
    // Serialises this process's writes to one campaign, so that its own tasks do not make each
    // other conflict; conflicts with other writers are handled by the resourceVersion check.
    lock: Mutex<()>,
}

impl StatusStore {
    /// The store of campaign `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.to_string(), lock: Mutex::new(()) }
    }

    /// The campaign as the API server has it now.
    pub async fn get(&self) -> Result<Option<ExperimentCampaign>, kube::Error> {
        self.api.get_opt(&self.name).await
    }

    /// Applies `transition` to the latest status and stores it. Returns the transition's value
    /// and the stored campaign.
    pub async fn update<T, E>(
        &self,
        mut transition: impl FnMut(&ExperimentCampaign, &mut ExperimentCampaignStatus) -> Result<T, E>,
    ) -> Result<(T, ExperimentCampaign), UpdateError<E>> {
        let _guard = self.lock.lock().await;
        let mut conflicts = 0;
        loop {
            let api_error = |source: kube::Error| UpdateError::Store { name: self.name.clone(), source: source.into() };
            let Some(mut campaign) = self.api.get_opt(&self.name).await.map_err(api_error)? else {
                return Err(UpdateError::Gone(self.name.clone()));
            };
            let mut status = campaign.status.clone().unwrap_or_default();
            let value = transition(&campaign, &mut status).map_err(UpdateError::Refused)?;
            if campaign.status.as_ref() == Some(&status) {
                return Ok((value, campaign));
            }
            campaign.status = Some(status);
            // replace_status sends the resourceVersion we read: a concurrent write makes it fail
            // with 409 instead of being overwritten.
            match self.api.replace_status(&campaign.name_any(), &PostParams::default(), &campaign).await {
                Ok(stored) => return Ok((value, stored)),
                Err(kube::Error::Api(status)) if status.code == 409 && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    return Err(UpdateError::Gone(self.name.clone()));
                }
                Err(e) => return Err(api_error(e)),
            }
        }
    }
}
