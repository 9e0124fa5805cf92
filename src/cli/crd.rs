//! `autoresearch-coordinator crd`: the CRD as YAML, identical to `crds/`.

use std::io::Write;

use crate::crd;

/// The CRD YAML that `crds/` holds.
pub fn yaml() -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&crd::definition())?)
}

pub(super) fn run() -> anyhow::Result<()> {
    std::io::stdout().write_all(yaml()?.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `crds/` is what users and the Helm chart install: it must be what the code derives.
    #[test]
    fn crds_folder_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/experimentcampaigns.yaml");
        let on_disk = std::fs::read_to_string(path).expect("crds/experimentcampaigns.yaml exists");
        assert!(
            on_disk == super::yaml().unwrap(),
            "crds/experimentcampaigns.yaml is stale: run `cargo run -- crd > crds/experimentcampaigns.yaml`"
        );
    }
}
