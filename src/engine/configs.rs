//! Large configs live on the data volume, not in status. A pending or in-flight experiment's
//! config is copied into status so a resume can re-send it; a large `baseConfig` times
//! `parallelism` would then outgrow the API server's limit on an object. Above
//! [`INLINE_LIMIT`] the config is stored once, content-addressed (its canonical JSON, in the
//! same store as THINK's train.py files), and status keeps its hash (`configHash`).

use serde_json::Value;

use crate::crd::PendingExperiment;
use crate::experiment::canonical_json;
use crate::scripts::{ScriptError, ScriptStore};

/// Canonical JSON bytes up to which a config stays inline in status.
pub const INLINE_LIMIT: usize = 2048;

/// Moves a large config of `pending` into the store; small ones stay inline.
pub async fn park(store: &ScriptStore, pending: &mut PendingExperiment) -> Result<(), ScriptError> {
    let Some(config) = &pending.config else {
        return Ok(());
    };
    let text = canonical_json(config);
    if text.len() > INLINE_LIMIT {
        pending.config_hash = Some(store.put(&text).await?);
        pending.config = None;
    }
    Ok(())
}

/// Parks every proposal's config; a proposal whose config cannot be stored is dropped (it is
/// proposed again later), since nothing could re-send it after a restart.
pub async fn park_all(store: &ScriptStore, key: &str, proposals: &mut Vec<PendingExperiment>) {
    let mut kept = Vec::with_capacity(proposals.len());
    for mut p in std::mem::take(proposals) {
        match park(store, &mut p).await {
            Ok(()) => kept.push(p),
            Err(e) => {
                tracing::error!(campaign = %key, experiment = %p.experiment_id, error = %e, "cannot store a large config; the proposal is dropped");
            }
        }
    }
    *proposals = kept;
}

/// The config an entry sends: inline, or read back from the store by its hash.
pub async fn config_of(
    store: &ScriptStore,
    inline: Option<&Value>,
    hash: Option<&str>,
) -> Result<Value, ScriptError> {
    match (inline, hash) {
        (Some(config), _) => Ok(config.clone()),
        (None, Some(hash)) => {
            let text = store
                .get(hash)
                .await?
                .ok_or_else(|| ScriptError::Missing(hash.to_string()))?;
            serde_json::from_str(&text).map_err(|_| ScriptError::Corrupt(hash.to_string()))
        }
        (None, None) => Ok(serde_json::json!({})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_config_is_parked_by_hash_and_read_back_and_a_small_one_stays_inline() {
        let dir = tempfile::tempdir().unwrap();
        let store = ScriptStore::new(dir.path());
        let big = serde_json::json!({"lr": 0.1, "notes": "x".repeat(40 * 1024)});
        let mut pending = PendingExperiment {
            experiment_id: "exp-1".into(),
            config: Some(big.clone()),
            ..PendingExperiment::default()
        };
        park(&store, &mut pending).await.unwrap();
        assert_eq!(pending.config, None);
        let hash = pending.config_hash.clone().unwrap();
        assert_eq!(hash, crate::experiment::config_hash(&big));
        assert!(serde_json::to_string(&pending).unwrap().len() < 256);
        let back = config_of(&store, None, Some(&hash)).await.unwrap();
        assert_eq!(back, big);

        let small = serde_json::json!({"lr": 0.1});
        let mut pending = PendingExperiment {
            config: Some(small.clone()),
            ..PendingExperiment::default()
        };
        park(&store, &mut pending).await.unwrap();
        assert_eq!(pending.config, Some(small));
        assert_eq!(pending.config_hash, None);
    }

    #[tokio::test]
    async fn a_missing_parked_config_is_an_error_not_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = ScriptStore::new(dir.path());
        let hash = crate::experiment::config_hash(&serde_json::json!({"a": 1}));
        let err = config_of(&store, None, Some(&hash)).await.unwrap_err();
        assert!(matches!(err, ScriptError::Missing(_)), "{err}");
    }
}
