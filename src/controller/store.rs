//! Campaign status in the API server, written with optimistic concurrency.
//!
//! Every change goes through [`StatusStore::update`]: read the latest object, apply a pure
//! transition (see `ledger`), replace the status with the read `resourceVersion` as a precondition,
//! and start over on a conflict. A transition that refuses (the budget, a duplicate) writes
//! nothing. This is what makes "written before it is sent" true: `update` returns only once the
//! API server has stored the change.
//!
//! The object read is, when this process has one, the campaign as it last read or wrote it:
//! most writes are this process's own, so the read before each write would return what it
//! already has. A stale copy costs nothing: the write carries its resourceVersion, so if anyone
//! wrote since (a spec edit, a delete, another process) the API server answers 409 and the
//! campaign is read again. A transition that refuses or changes nothing on the kept copy is
//! tried once more on a fresh read before that is believed.

use futures::future::BoxFuture;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::Mutex;

use crate::crd::ExperimentCampaign;
use crate::engine::store::{CampaignStore, Transition, UpdateError};

/// Conflicts tolerated in a row before giving up (each one means someone else wrote in between).
const MAX_CONFLICTS: usize = 16;

/// One campaign's status in the API server.
pub struct StatusStore {
    api: Api<ExperimentCampaign>,
    name: String,
    // Serialises this process's writes to one campaign, so that its own tasks do not make each
    // other conflict; conflicts with other writers are handled by the resourceVersion check.
    lock: Mutex<()>,
    /// The campaign as last read or written here (see the module documentation).
    last: std::sync::Mutex<Option<ExperimentCampaign>>,
    conflicts: Option<prometheus::IntCounter>,
}

impl StatusStore {
    /// The store of campaign `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            lock: Mutex::new(()),
            last: std::sync::Mutex::new(None),
            conflicts: None,
        }
    }

    /// Counts the write conflicts it meets on `counter`.
    pub fn counting_conflicts(mut self, counter: prometheus::IntCounter) -> Self {
        self.conflicts = Some(counter);
        self
    }

    fn failed(&self, source: kube::Error) -> UpdateError {
        UpdateError::Store {
            name: self.name.clone(),
            source: source.into(),
        }
    }

    async fn update_inner(
        &self,
        transition: Transition<'_>,
    ) -> Result<ExperimentCampaign, UpdateError> {
        let _guard = self.lock.lock().await;
        let mut conflicts = 0;
        let mut kept = self.last.lock().expect("store cache").take();
        loop {
            let fresh = kept.is_none();
            let mut campaign = match kept.take() {
                Some(c) => c,
                None => self.read().await?,
            };
            if is_deleting(&campaign) && !is_kept(&campaign) {
                return Err(UpdateError::Gone(self.name.clone()));
            }
            let mut status = campaign.status.clone().unwrap_or_default();
            let applied = transition(&campaign, &mut status);
            let unchanged = campaign.status.as_ref() == Some(&status);
            if !fresh && (applied.is_err() || unchanged) {
                // Decided on the kept copy: believe it only from a fresh read.
                continue;
            }
            applied.map_err(UpdateError::Refused)?;
            if is_deleting(&campaign) && adds_to_ledger(&campaign, &status) {
                // A campaign kept for its paid work finishes that work; it pays for nothing new.
                return Err(UpdateError::Gone(self.name.clone()));
            }
            if unchanged {
                self.keep(&campaign);
                return Ok(campaign);
            }
            campaign.status = Some(status);
            // replace_status sends the resourceVersion we read: a concurrent write makes it fail
            // with 409 Conflict instead of being overwritten.
            match self
                .api
                .replace_status(&self.name, &PostParams::default(), &campaign)
                .await
            {
                Ok(stored) => {
                    self.keep(&stored);
                    return Ok(stored);
                }
                Err(kube::Error::Api(s)) if s.code == 409 && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    if let Some(counter) = &self.conflicts {
                        counter.inc();
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(UpdateError::Gone(self.name.clone()));
                }
                Err(kube::Error::Api(s)) if is_too_large(s.code, &s.message) => {
                    return Err(UpdateError::TooLarge {
                        name: self.name.clone(),
                        message: s.message,
                    });
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
    }

    /// Reads the campaign; a missing one is gone.
    async fn read(&self) -> Result<ExperimentCampaign, UpdateError> {
        let campaign = self.api.get_opt(&self.name).await;
        let campaign = campaign.map_err(|e| self.failed(e))?;
        campaign.ok_or_else(|| UpdateError::Gone(self.name.clone()))
    }

    /// Keeps the campaign as just read or written, for the next update to start from.
    fn keep(&self, campaign: &ExperimentCampaign) {
        *self.last.lock().expect("store cache") = Some(campaign.clone());
    }
}

/// Whether the API server refused a write for its size: 413 from the API server itself, or
/// etcd's limit (`etcdserver: request is too large`, gRPC ResourceExhausted) passed on as 500.
pub fn is_too_large(code: u16, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    code == 413
        || message.contains("request is too large")
        || message.contains("resourceexhausted")
        || message.contains("larger than max")
}

fn is_deleting(campaign: &ExperimentCampaign) -> bool {
    campaign.metadata.deletion_timestamp.is_some()
}

/// Whether the finalizer keeps the (deleted) campaign until its paid work is recorded.
fn is_kept(campaign: &ExperimentCampaign) -> bool {
    campaign
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == super::delete::FINALIZER))
}

/// Whether `status` has a ledger entry (a voucher about to be sent) the stored one has not.
fn adds_to_ledger(
    campaign: &ExperimentCampaign,
    status: &crate::crd::ExperimentCampaignStatus,
) -> bool {
    let before = campaign.status.as_ref().map_or(&[][..], |s| &s.ledger[..]);
    status
        .ledger
        .iter()
        .any(|e| !before.iter().any(|b| b.nonce == e.nonce))
}

impl CampaignStore for StatusStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<ExperimentCampaign>, UpdateError>> {
        Box::pin(async move {
            let campaign = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.failed(e))?;
            if let Some(c) = &campaign {
                self.keep(c);
            }
            // A deleted campaign kept by the finalizer is still there for the tasks finishing
            // its paid experiments (they read its spec); any other deleted one is gone.
            Ok(campaign.filter(|c| !is_deleting(c) || is_kept(c)))
        })
    }

    fn update<'a>(
        &'a self,
        transition: Transition<'a>,
    ) -> BoxFuture<'a, Result<ExperimentCampaign, UpdateError>> {
        Box::pin(self.update_inner(transition))
    }
}

#[cfg(test)]
mod tests {
    use super::{adds_to_ledger, is_too_large};
    use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus, LedgerEntry};

    fn entry(nonce: &str) -> LedgerEntry {
        LedgerEntry {
            experiment_id: "exp-1".into(),
            nonce: nonce.into(),
            ..LedgerEntry::default()
        }
    }

    fn with_ledger(nonces: &[&str]) -> ExperimentCampaignStatus {
        ExperimentCampaignStatus {
            ledger: nonces.iter().map(|n| entry(n)).collect(),
            ..ExperimentCampaignStatus::default()
        }
    }

    #[test]
    fn a_deleted_campaign_may_finish_its_ledger_but_not_grow_it() {
        let mut campaign: ExperimentCampaign = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoresearch.obol.org/v1alpha1",
            "kind": "ExperimentCampaign",
            "metadata": {"name": "c"},
            "spec": {"trainScript": {"inline": "x"}, "search": {"strategy": "list", "experiments": [{}]},
                     "maxExperiments": 1, "budget": {"total": "1", "maxPricePerExperiment": "0.1"}}
        }))
        .unwrap();
        campaign.status = Some(with_ledger(&["0x01", "0x02"]));
        assert!(
            !adds_to_ledger(&campaign, &with_ledger(&["0x02"])),
            "finishing one"
        );
        assert!(!adds_to_ledger(&campaign, &with_ledger(&[])));
        // The same experiment with a new voucher is a new payment.
        assert!(adds_to_ledger(&campaign, &with_ledger(&["0x02", "0x03"])));
    }

    #[test]
    fn size_refusals_are_told_from_other_errors() {
        assert!(is_too_large(500, "etcdserver: request is too large"));
        assert!(is_too_large(
            413,
            "Request entity too large: limit is 3145728"
        ));
        assert!(is_too_large(
            500,
            "rpc error: code = ResourceExhausted desc = trying to send message larger than max"
        ));
        assert!(!is_too_large(500, "etcdserver: leader changed"));
        assert!(!is_too_large(422, "spec.maxExperiments: Invalid value"));
    }

    fn stored_campaign() -> ExperimentCampaign {
        let mut c: ExperimentCampaign = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoresearch.obol.org/v1alpha1",
            "kind": "ExperimentCampaign",
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {"trainScript": {"inline": "x"}, "search": {"strategy": "list", "experiments": [{}]},
                     "maxExperiments": 1, "budget": {"total": "1", "maxPricePerExperiment": "0.1"}}
        }))
        .unwrap();
        c.status = Some(ExperimentCampaignStatus::default());
        c
    }

    /// Another writer's change, stored behind this process's back.
    fn written_elsewhere(api: &super::super::fixtures::FakeApi, submitted: u32) {
        let mut c = api.campaign("ns", "c").unwrap();
        c.status.as_mut().unwrap().submitted = submitted;
        api.put(&c);
    }

    #[tokio::test]
    async fn a_write_starts_from_the_kept_copy_and_reads_again_after_someone_elses() {
        use crate::engine::store::CampaignStore;
        let (client, api) = super::super::fixtures::FakeApi::start();
        api.put(&stored_campaign());
        let store = super::StatusStore::new(client, "ns", "c");
        let bump = |s: &mut ExperimentCampaignStatus| {
            s.running += 1;
            Ok(())
        };
        store.update(&mut |_, s| bump(s)).await.unwrap();
        store.update(&mut |_, s| bump(s)).await.unwrap();
        let path = "/apis/autoresearch.obol.org/v1alpha1/namespaces/ns/experimentcampaigns/c";
        let status = format!("PUT {path}/status");
        let get = format!("GET {path}");
        assert_eq!(
            api.lines(),
            [get.clone(), status.clone(), status.clone()],
            "one read for two writes"
        );

        written_elsewhere(&api, 7);
        api.clear_seen();
        store.update(&mut |_, s| bump(s)).await.unwrap();
        assert_eq!(
            api.lines(),
            [status.clone(), get, status],
            "409, then the latest"
        );
        let s = api.campaign("ns", "c").unwrap().status.unwrap();
        assert_eq!((s.submitted, s.running), (7, 3), "both changes kept");
    }

    #[tokio::test]
    async fn a_refusal_on_the_kept_copy_is_believed_only_from_a_fresh_read() {
        use crate::engine::store::{CampaignStore, UpdateError};
        use crate::ledger::Refusal;
        let (client, api) = super::super::fixtures::FakeApi::start();
        api.put(&stored_campaign());
        let store = super::StatusStore::new(client, "ns", "c");
        let one = |_: &ExperimentCampaign, s: &mut ExperimentCampaignStatus| {
            s.running = 1;
            Ok(())
        };
        store.update(&mut { one }).await.unwrap();
        written_elsewhere(&api, 7);
        // Allowed only once seven were submitted, which the kept copy does not know yet.
        let mut after_seven = |_: &ExperimentCampaign, s: &mut ExperimentCampaignStatus| {
            if s.submitted < 7 {
                return Err(Refusal::Duplicate("exp-1".into()));
            }
            s.running = 2;
            Ok(())
        };
        store.update(&mut after_seven).await.unwrap();
        assert_eq!(api.campaign("ns", "c").unwrap().status.unwrap().running, 2);
        // A refusal on a fresh read stands, and writes nothing.
        let refused = store
            .update(&mut |_, _| Err(Refusal::Duplicate("exp-1".into())))
            .await;
        assert!(
            matches!(refused, Err(UpdateError::Refused(_))),
            "{refused:?}"
        );
    }
}
