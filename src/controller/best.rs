//! The best train.py of a campaign whose THINK changes the code, as ConfigMap `<campaign>-best`
//! (key `train.py`), owned by the campaign so that deleting the campaign deletes it. Written with
//! server-side apply: one request, idempotent, no read-modify-write race between replicas.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};

use crate::crd::ExperimentCampaign;
use crate::engine::KeepBest;

/// Field manager of the apply.
const MANAGER: &str = "autoresearch-coordinator";

/// Writes `<campaign>-best` in the campaign's namespace.
pub struct BestConfigMap {
    api: Api<ConfigMap>,
    name: String,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

impl BestConfigMap {
    /// The sink of `campaign`.
    pub fn new(client: Client, campaign: &ExperimentCampaign) -> Self {
        let namespace = campaign
            .meta()
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = format!("{}-best", campaign.meta().name.clone().unwrap_or_default());
        Self {
            api: Api::namespaced(client, &namespace),
            name,
            owner: campaign.controller_owner_ref(&()),
        }
    }

    fn config_map(&self, train_py: &str, train_hash: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "labels": {"app.kubernetes.io/managed-by": MANAGER},
                "annotations": {"autoresearch.obol.org/train-hash": train_hash},
                "ownerReferences": self.owner.iter().collect::<Vec<_>>(),
            },
            "data": {"train.py": train_py},
        })
    }
}

impl KeepBest for BestConfigMap {
    fn keep<'a>(
        &'a self,
        train_py: &'a str,
        train_hash: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let patch = Patch::Apply(self.config_map(train_py, train_hash));
            match self
                .api
                .patch(&self.name, &PatchParams::apply(MANAGER).force(), &patch)
                .await
            {
                Ok(_) => Some(format!("configmap/{}", self.name)),
                Err(e) => {
                    tracing::warn!(configmap = %self.name, error = %e, "could not store the best train.py");
                    None
                }
            }
        })
    }
}
