//! `autoresearch-coordinator crd`: the CRD as YAML, identical to `crds/`.

use std::io::Write;

use kube::CustomResourceExt;

use crate::crd::ExperimentCampaign;

/// The CRD YAML that `crds/` holds.
pub fn yaml() -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&ExperimentCampaign::crd())?)
}

pub(super) fn run() -> anyhow::Result<()> {
    std::io::stdout().write_all(yaml()?.as_bytes())?;
    Ok(())
}
